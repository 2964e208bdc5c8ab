//! The twopc coordinator: allocates tids, drives prepare and resolve
//! against the participants, and keeps the durable decision log.
//!
//! Layout: the protocol itself is `twopc_core::coordinator` (no I/O);
//! [`driver`] executes its actions (RPCs, forced log writes, retries);
//! [`decision_log`] is the SQLite log with group commit; [`service`] is the
//! gRPC face; [`peers`] the partition map.
//!
//! Start-up order keeps rule 7: the log is read back and every unfinished
//! COMMIT re-entered into the core *before* the socket serves, so no
//! question about a committed tid can be answered "aborted". Phase 2 for
//! those tids is re-driven as soon as the runtime runs.

pub mod decision_log;
pub mod driver;
pub mod error;
pub mod peers;
pub mod preflight;
pub mod service;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use twopc_core::coordinator::Coordinator;
use twopc_proto::pb::coordinator_server::CoordinatorServer;
use twopc_proto::token::{self, AdminToken, PeerToken};
use twopc_proto::{now_unix_ms, runtime};

use crate::decision_log::DecisionLog;
use crate::driver::{Driver, Timeouts};
use crate::peers::Peers;
use crate::service::{CoordinatorService, Limits};

/// Coordinator settings; every flag has an environment-variable twin.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100); off when absent.
    #[arg(long, env = "TWOPC_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Tokio worker threads (1: a single-threaded runtime). On a small
    /// machine shared with the other processes, 1 measured fastest (no
    /// cross-thread wake-ups); the SQLite writer is a thread of its own.
    #[arg(long, env = "TWOPC_WORKER_THREADS", default_value_t = 1, value_parser = preflight::count())]
    pub worker_threads: usize,
    /// Address to serve on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, env = "TWOPC_COORDINATOR_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: String,
    /// Directory of the decision log (created if missing).
    #[arg(long, env = "TWOPC_COORDINATOR_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Number of partitions of the key space, fixed when the cluster is created.
    #[arg(long, env = "TWOPC_PARTITIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Transaction timeout when the client asks for none.
    #[arg(long, env = "TWOPC_DEFAULT_TIMEOUT_MS", default_value_t = 10_000, value_parser = preflight::millis())]
    pub default_timeout_ms: u64,
    /// Longest transaction timeout a client may ask for.
    #[arg(long, env = "TWOPC_MAX_TIMEOUT_MS", default_value_t = 300_000, value_parser = preflight::millis())]
    pub max_timeout_ms: u64,
    /// How long the coordinator waits for a vote before aborting.
    #[arg(long, env = "TWOPC_PREPARE_TIMEOUT_MS", default_value_t = 2_000, value_parser = preflight::millis())]
    pub prepare_timeout_ms: u64,
    /// Open transactions allowed at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "TWOPC_MAX_OPEN_TXNS", default_value_t = 10_000, value_parser = preflight::count())]
    pub max_open_txns: usize,
    /// Prepare/commit calls in flight per participant (bulkhead): a slow
    /// participant holds at most this many.
    #[arg(long, env = "TWOPC_MAX_INFLIGHT_PER_PARTICIPANT", default_value_t = 256, value_parser = preflight::count())]
    pub max_inflight_per_participant: usize,
    /// Commit a transaction that touched one participant in one phase (the
    /// participant decides, after a forced DELEGATED record); `false` makes
    /// every transaction vote.
    #[arg(long, env = "TWOPC_ONE_PHASE", default_value_t = true, action = clap::ArgAction::Set)]
    pub one_phase: bool,
    /// Finished commits remembered (in memory and in the log) to answer repeated questions.
    #[arg(long, env = "TWOPC_KEEP_FINISHED", default_value_t = 100_000, value_parser = preflight::count())]
    pub keep_finished: usize,
    #[command(flatten)]
    pub tls: twopc_proto::tls::ServerTlsArgs,
    /// Require this token (`authorization: Bearer TOKEN`) on admin RPCs
    /// (ListTransactions, SetFailpoint); open to all when absent.
    #[arg(long, env = "TWOPC_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Shared secret of the cluster's processes: when set, Register, Enlist
    /// and EnlistBatch (the participants' calls) require it
    /// (`x-twopc-peer-token`), and it is sent on every call to participants,
    /// which must have the same one. Set it on every process whenever
    /// clients can reach them; open to all when absent.
    #[arg(long, env = "TWOPC_PEER_TOKEN", hide_env_values = true)]
    pub peer_token: Option<String>,
}

/// Runs the coordinator until the process is stopped.
pub async fn run(config: Config) -> anyhow::Result<()> {
    preflight::check(&config)?;
    anyhow::ensure!(config.partitions > 0, "--partitions must be at least 1");
    anyhow::ensure!(config.prepare_timeout_ms > 0, "--prepare-timeout-ms must be positive");
    twopc_proto::failpoint::setup_from_env().map_err(anyhow::Error::msg)?;
    let (server_tls, client_tls) = config.tls.load().map_err(anyhow::Error::msg)?;
    let admin_token = AdminToken::new(config.admin_token.as_deref()).map_err(anyhow::Error::msg)?;
    let peer_token = PeerToken::new(config.peer_token.as_deref()).map_err(anyhow::Error::msg)?;
    token::ensure_distinct(&admin_token, &peer_token).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let (log, recovered) = DecisionLog::open(&config.data_dir, config.partitions, config.keep_finished)
        .with_context(|| format!("cannot open the decision log in {}", config.data_dir.display()))?;

    let peers = Peers::new(config.max_inflight_per_participant, client_tls, peer_token.clone());
    for (partition, address) in &recovered.members {
        if let Err(e) = peers.set(*partition, address) {
            tracing::warn!(partition, "ignoring recorded address: {e}");
        }
    }
    let mut core = Coordinator::new(config.max_open_txns, config.keep_finished).with_one_phase(config.one_phase);
    for tid in &recovered.finished {
        core.recover_finished(*tid);
    }
    let mut redo = vec![];
    let now = now_unix_ms();
    for (tid, partitions) in &recovered.unfinished {
        tracing::info!(%tid, ?partitions, "recovery: re-driving phase 2 of a logged COMMIT");
        redo.extend(core.recover_commit(*tid, partitions, now));
    }
    for &(tid, partition) in &recovered.delegated {
        tracing::info!(%tid, partition, "recovery: asking the participant a one-phase commit was delegated to");
        redo.extend(core.recover_delegated(tid, partition, now));
    }
    tracing::info!(
        unfinished = recovered.unfinished.len(),
        delegated = recovered.delegated.len(),
        finished = recovered.finished.len(),
        members = recovered.members.len(),
        cluster_id = %recovered.cluster_id,
        "recovery: decision log read back"
    );

    let timeouts = Timeouts {
        prepare: Duration::from_millis(config.prepare_timeout_ms),
        resolve_rpc: Duration::from_secs(2),
        max_resend_interval: Duration::from_secs(2),
    };
    let driver = Driver::new(core, log, peers, timeouts);
    let service = CoordinatorService {
        driver: driver.clone(),
        admin_token,
        peer_token: peer_token.clone(),
        limits: Limits {
            partitions: config.partitions,
            default_timeout: Duration::from_millis(config.default_timeout_ms),
            max_timeout: Duration::from_millis(config.max_timeout_ms),
            commit_wait: Duration::from_millis(config.prepare_timeout_ms) + Duration::from_secs(30),
        },
        cluster_id: recovered.cluster_id.clone(),
    };

    runtime::serve_metrics(config.metrics_listen.as_deref()).map_err(anyhow::Error::msg)?;
    let (listener, local) =
        runtime::bind(&config.listen, server_tls.is_some(), peer_token.is_set()).await.map_err(anyhow::Error::msg)?;
    driver.execute(redo);
    tokio::spawn(driver.clone().expiry_loop(Duration::from_millis(100)));
    tracing::info!(%local, partitions = config.partitions, tls = server_tls.is_some(), peer_token = peer_token.is_set(), "coordinator serving");
    let routes = tonic::service::Routes::new(CoordinatorServer::new(service));
    runtime::serve("twopc.v1.Coordinator", routes, listener, local, server_tls).await.map_err(anyhow::Error::msg)
}

/// Entry point of the `twopc-coordinator` binary.
pub fn main_with(config: Config) -> anyhow::Result<()> {
    runtime::init_tracing();
    runtime::build_runtime(config.worker_threads)?.block_on(run(config))
}
