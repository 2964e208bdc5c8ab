//! `twopc`: one binary for every role. `twopc coordinator` and
//! `twopc participant` run the servers; `twopc demo` starts a local cluster
//! and runs a sample workload; every other subcommand is the client CLI.

use clap::{Parser, Subcommand};

// Every RPC allocates many small buffers; mimalloc's thread-local free
// lists measured clearly faster than glibc malloc on this workload.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "twopc",
    version,
    about = "twopc: a two-phase-commit transaction coordinator, its participants and client",
    after_help = twopc_client::cli::EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the coordinator (transaction ids, two-phase commit, decision log).
    Coordinator(twopc_coordinator::Config),
    /// Run a participant owning one partition of the key space.
    Participant(twopc_participant::Config),
    /// Start a local cluster (coordinator + participants) and run a sample workload
    /// (`--ha`: three coordinators on a local etcd, the leader killed midway).
    Demo(twopc::demo::DemoArgs),
    /// Benchmark transactions (throughput, latency, and its distance from the 2×RTT + 2×fsync floor).
    Bench(twopc::bench::BenchArgs),
    /// A local cluster in the background for crash tests from any language:
    /// start, kill|pause|resume|restart TARGET, settle, status, stop.
    Cluster(twopc::cluster_cli::ClusterArgs),
    #[command(flatten)]
    Client(twopc_client::cli::ClientCommand),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Coordinator(mut config) => {
            // The console's failpoint menu lists the participants' names too.
            config.participant_failpoints = twopc_participant::FAILPOINTS.iter().map(|n| n.to_string()).collect();
            report(twopc_coordinator::main_with(config))
        }
        Cmd::Participant(config) => report(twopc_participant::main_with(config)),
        Cmd::Demo(args) => report(runtime().and_then(|rt| rt.block_on(twopc::demo::run(args)))),
        Cmd::Bench(args) => report(twopc::bench::main_with(args)),
        Cmd::Cluster(args) => twopc::cluster_cli::run(args),
        Cmd::Client(cmd) => match runtime() {
            Ok(rt) => rt.block_on(twopc_client::cli::run(cmd)),
            Err(e) => report(Err(e)),
        },
    };
    std::process::exit(code);
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn report(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}
