//! `twopc-participant`: a participant on its own (the same code as `twopc participant`).

use clap::Parser;

#[derive(Parser)]
#[command(name = "twopc-participant", about = "A twopc participant owning one partition", version)]
struct Cli {
    #[command(flatten)]
    config: twopc_participant::Config,
}

fn main() -> anyhow::Result<()> {
    twopc_participant::main_with(Cli::parse().config)
}
