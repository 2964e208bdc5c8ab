//! `twopc-coordinator`: the coordinator on its own (the same code as `twopc coordinator`).

use clap::Parser;

#[derive(Parser)]
#[command(name = "twopc-coordinator", about = "The twopc two-phase-commit coordinator", version)]
struct Cli {
    #[command(flatten)]
    config: twopc_coordinator::Config,
}

fn main() {
    // One `error: ...` line with the cause chain, like `twopc coordinator`,
    // rather than the Debug form a returned error would print.
    if let Err(e) = twopc_coordinator::main_with(Cli::parse().config) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
