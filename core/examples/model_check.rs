//! Runs the exhaustive model check of the protocol cores with budgets from
//! the command line and prints the state space explored:
//!
//! `cargo run --release -p twopc-core --example model_check -- WRITERS READERS COORD_CRASHES PART_CRASHES LOSSES DUPS FAILOVERS [MAX_STATES] [unguarded] [dishonest] [no-forgetting]`
//!
//! `unguarded` turns on the bug the checker must catch (decision-log writes
//! without the leadership guard) and prints the trace it finds; `dishonest`
//! another (a forgotten commit answered ABORTED); `no-forgetting` keeps
//! every finished outcome (no `ForgetInMemory`/`TrimLog` transitions).

use twopc_core::model::{Config, check};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let unguarded_writes = args.iter().any(|a| a == "unguarded");
    let a: Vec<u64> = args
        .iter()
        .filter(|a| !["unguarded", "dishonest", "no-forgetting"].contains(&a.as_str()))
        .map(|s| s.parse().expect("numbers, `unguarded` or `dishonest`"))
        .collect();
    let get = |i: usize, d: u64| a.get(i).copied().unwrap_or(d);
    let cfg = Config {
        writers: get(0, 2) as u32,
        readers: get(1, 0) as u32,
        coordinator_crashes: get(2, 1) as u8,
        participant_crashes: get(3, 1) as u8,
        losses: get(4, 1) as u8,
        duplicates: get(5, 0) as u8,
        failovers: get(6, 0) as u8,
        unguarded_writes,
        dishonest_forgotten: args.iter().any(|a| a == "dishonest"),
        volatile_mark: false,
        forgetting: !args.iter().any(|a| a == "no-forgetting"),
        max_states: get(7, 20_000_000) as usize,
        declared: None,
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
