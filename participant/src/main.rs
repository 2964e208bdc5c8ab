//! `twopc-participant`: a participant on its own (the same code as `twopc participant`).

use clap::Parser;

#[derive(Parser)]
#[command(name = "twopc-participant", about = "A twopc participant owning one partition", version)]
struct Cli {
    #[command(flatten)]
    config: twopc_participant::Config,
}

fn main() {
    // One `error: ...` line with the cause chain, like `twopc participant`,
    // rather than the Debug form a returned error would print.
    if let Err(e) = twopc_participant::main_with(Cli::parse().config) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
