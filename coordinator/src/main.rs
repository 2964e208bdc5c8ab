//! `twopc-coordinator`: the coordinator on its own (the same code as `twopc coordinator`).

use clap::Parser;

#[derive(Parser)]
#[command(name = "twopc-coordinator", about = "The twopc two-phase-commit coordinator", version)]
struct Cli {
    #[command(flatten)]
    config: twopc_coordinator::Config,
}

fn main() -> anyhow::Result<()> {
    twopc_coordinator::main_with(Cli::parse().config)
}
