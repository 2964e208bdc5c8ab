//! Runs the exhaustive model check of the protocol cores with budgets from
//! the command line and prints the state space explored:
//!
//! `cargo run --release -p twopc-core --example model_check -- WRITERS READERS COORD_CRASHES PART_CRASHES LOSSES DUPS`

use twopc_core::model::{Config, check};

fn main() {
    let a: Vec<u64> = std::env::args().skip(1).map(|s| s.parse().expect("numbers")).collect();
    let get = |i: usize, d: u64| a.get(i).copied().unwrap_or(d);
    let cfg = Config {
        writers: get(0, 2) as u32,
        readers: get(1, 0) as u32,
        coordinator_crashes: get(2, 1) as u8,
        participant_crashes: get(3, 1) as u8,
        losses: get(4, 1) as u8,
        duplicates: get(5, 0) as u8,
        max_states: get(6, 20_000_000) as usize,
    };
    let r = check(&cfg);
    println!(
        "{cfg:?}\n  {} states, {} transitions, max depth {}, {:.2?}{}",
        r.states,
        r.transitions,
        r.max_depth,
        r.elapsed,
        if r.truncated { " (TRUNCATED)" } else { "" }
    );
    match r.violation {
        None => println!("  no invariant violated"),
        Some((why, trace)) => {
            println!("  VIOLATION: {why}\n  trace:\n    {}", trace.join("\n    "));
            std::process::exit(1);
        }
    }
}
