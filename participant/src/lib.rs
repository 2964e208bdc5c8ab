//! A twopc participant: owns one partition of the key space, stores its
//! committed data and prepared write sets in SQLite, holds the locks of the
//! transactions that touch it, and votes in two-phase commit.
//!
//! Layout: the protocol is `twopc_core::participant` (no I/O); [`node`] is
//! the shell that enlists, persists and runs the timers; [`store`] the
//! SQLite file with group commit; [`service`] the gRPC face; [`fence`] the
//! cluster-id check that detects a coordinator whose decision log was lost;
//! [`ownership`] the check that a key belongs to this partition;
//! [`heuristics`] the operator's manual resolution for that case.
//!
//! Start-up order keeps rule 9: prepared write sets are read back and their
//! locks re-taken *before* the socket serves, so no new transaction can
//! touch a key an in-doubt tid wrote. Then the participant registers with
//! the coordinator (at its possibly new address) and asks about every
//! recovered tid at once. It registers with its store's id
//! ([`store::Store::store_id`]): the coordinator refuses another store for a
//! partition it knows, and the participant then exits with code 2
//! ([`node`], `twopc_proto::store_id`). With several coordinators (`--coordinator A,B,C`)
//! it registers with, enlists at and asks whichever leads (see [`node`]).

pub mod error;
pub mod fence;
pub mod heuristics;
pub mod node;
pub mod ownership;
pub mod preflight;
pub mod service;
pub mod store;

/// Every failpoint this process has (`twopc_proto::failpoint`): its
/// protocol steps (crash-matrix rows C4-C7), manual resolution, a write
/// applied before its answer, and the store's test hook. `SetFailpoint`
/// and `FAILPOINTS=` refuse any other name.
pub const FAILPOINTS: &[&str] = &[
    "participant::before_prepare_durable",
    "participant::after_prepare_durable",
    "participant::before_commit_applied",
    "participant::after_commit_applied",
    "participant::before_one_phase_applied",
    "participant::after_one_phase_applied",
    "participant::before_heuristic_durable",
    "participant::after_write_applied",
    "store::max_page_count",
];

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use twopc_core::participant::{Limits, Participant};
use twopc_leader::follow::Follower;
use twopc_proto::pb::participant_server::ParticipantServer;
use twopc_proto::token::{self, AdminToken, PeerToken};
use twopc_proto::{clock, runtime};

use crate::node::Node;
use crate::service::{InputLimits, ParticipantService};
use crate::store::Store;

/// Participant settings; every flag has an environment-variable twin.
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
    /// The partition this participant owns (0-based), fixed for its data directory.
    #[arg(long, env = "TWOPC_PARTITION")]
    pub partition: u32,
    /// Address to serve on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, env = "TWOPC_PARTICIPANT_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: String,
    /// Address to register with the coordinator (default: the bound address).
    #[arg(long, env = "TWOPC_ADVERTISE")]
    pub advertise: Option<String>,
    /// The coordinators, HOST:PORT[,HOST:PORT...]: with several (one leads, the
    /// others are standbys) every call to them follows the leader.
    #[arg(long, env = "TWOPC_COORDINATOR", default_value = "127.0.0.1:7000")]
    pub coordinator: String,
    /// Directory of this partition's data (created if missing).
    #[arg(long, env = "TWOPC_PARTICIPANT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Longest key accepted (RESOURCE_EXHAUSTED over it). With
    /// --max-value-bytes it sets this process's gRPC message limit,
    /// max(4 MiB, key + value + 64 KiB); clients must use the same values
    /// (the same environment variables; README, Message sizes).
    #[arg(long, env = "TWOPC_MAX_KEY_BYTES", default_value_t = twopc_proto::limits::DEFAULT_MAX_KEY_BYTES, value_parser = preflight::count())]
    pub max_key_bytes: usize,
    /// Largest value accepted (RESOURCE_EXHAUSTED over it); see --max-key-bytes.
    #[arg(long, env = "TWOPC_MAX_VALUE_BYTES", default_value_t = twopc_proto::limits::DEFAULT_MAX_VALUE_BYTES, value_parser = preflight::count())]
    pub max_value_bytes: usize,
    #[arg(long, env = "TWOPC_MAX_OPS_PER_TID", default_value_t = 10_000, value_parser = preflight::count())]
    pub max_ops_per_tid: usize,
    #[arg(long, env = "TWOPC_MAX_OPEN_TIDS", default_value_t = 10_000, value_parser = preflight::count())]
    pub max_open_tids: usize,
    /// Longest deadline a declared operation may give a tid this
    /// participant does not know yet (its request carries the time left;
    /// PROTOCOL.md rule 2): keep it at the coordinator's --max-timeout-ms.
    #[arg(long, env = "TWOPC_MAX_TIMEOUT_MS", default_value_t = 300_000, value_parser = preflight::millis())]
    pub max_timeout_ms: u64,
    /// How long a prepared tid waits for its decision before asking the coordinator.
    #[arg(long, env = "TWOPC_IN_DOUBT_AFTER_MS", default_value_t = 1_000, value_parser = preflight::millis())]
    pub in_doubt_after_ms: u64,
    #[command(flatten)]
    pub tls: twopc_proto::tls::ServerTlsArgs,
    /// Require this token (`authorization: Bearer TOKEN`) on admin RPCs
    /// (ListInDoubt, SetFailpoint, ResolveHeuristically); open to all when absent.
    #[arg(long, env = "TWOPC_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Shared secret of the cluster's processes: when set, Prepare, Commit,
    /// Abort, their batch forms and CommitOnePhaseBatch (the coordinator's
    /// calls) require it (`x-twopc-peer-token`), and it is sent on every
    /// call to the coordinator, which must have the same one. Set it on
    /// every process whenever clients can reach them; open to all when absent.
    #[arg(long, env = "TWOPC_PEER_TOKEN", hide_env_values = true)]
    pub peer_token: Option<String>,
    /// Only when this partition's store is lost for good: the id of that
    /// store (the one the coordinator's refusal names), which this data
    /// directory's store replaces. The coordinator then records this store
    /// for the partition; tids prepared only in the lost store can never be
    /// committed here (README, Ownership). A replacement happens once: the
    /// flag left set replaces nothing later.
    #[arg(long, env = "TWOPC_REPLACE_STORE", value_name = "LOST_STORE_ID")]
    pub replace_store: Option<String>,
}

/// Runs the participant until the process is stopped.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Held until the process ends (PROTOCOL.md rule 13).
    let _data_dir_lock = preflight::check(&config)?;
    twopc_proto::failpoint::setup_from_env(FAILPOINTS).map_err(anyhow::Error::msg)?;
    let (server_tls, client_tls) = config.tls.load().map_err(anyhow::Error::msg)?;
    let admin_token = AdminToken::new(config.admin_token.as_deref()).map_err(anyhow::Error::msg)?;
    let peer_token = PeerToken::new(config.peer_token.as_deref()).map_err(anyhow::Error::msg)?;
    token::ensure_distinct(&admin_token, &peer_token).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let (store, prepared) = Store::open(&config.data_dir, config.partition)
        .with_context(|| format!("cannot open the partition store in {}", config.data_dir.display()))?;
    let limits = Limits {
        max_ops_per_tid: config.max_ops_per_tid,
        max_open_tids: config.max_open_tids,
        in_doubt_after_ms: config.in_doubt_after_ms,
        max_timeout_ms: config.max_timeout_ms,
        ..Limits::default()
    };
    let now = clock::now_ms();
    // Tids begun before now that are unknown here were lost in this restart.
    let mut core = Participant::new(config.partition, limits).with_start(now);
    // One line per tid at debug (a restart may find thousands), a count at info.
    let in_doubt = prepared.len();
    for (tid, writes) in prepared {
        tracing::debug!(%tid, keys = writes.len(), "recovery: prepared tid reloaded, locks re-taken; in doubt");
        core.recover_prepared(tid, writes, now);
    }
    if in_doubt > 0 {
        tracing::info!(in_doubt, "recovery: prepared tids reloaded, their locks re-taken; asking the coordinator");
    }
    // Every call to the coordinator carries the peer token (Register and
    // Enlist require it there when it is configured), on every channel the
    // follower opens.
    let coordinator = Follower::new(&config.coordinator, client_tls, peer_token.clone(), Duration::from_secs(1))
        .map_err(|e| anyhow::anyhow!("--coordinator: {e}"))?;
    let node = Node::new(core, store, coordinator);
    let service = ParticipantService {
        node: node.clone(),
        admin_token,
        peer_token: peer_token.clone(),
        limits: InputLimits { max_key_bytes: config.max_key_bytes, max_value_bytes: config.max_value_bytes },
    };

    runtime::serve_metrics(config.metrics_listen.as_deref()).map_err(anyhow::Error::msg)?;
    let (listener, local) =
        runtime::bind(&config.listen, server_tls.is_some(), peer_token.is_set()).await.map_err(anyhow::Error::msg)?;
    let advertise = config.advertise.clone().unwrap_or_else(|| local.to_string());
    tokio::spawn(node.clone().register_loop(advertise, config.replace_store.clone().unwrap_or_default()));
    tokio::spawn(node.clone().timer_loop(Duration::from_millis(100)));
    tracing::info!(%local, partition = config.partition, tls = server_tls.is_some(), peer_token = peer_token.is_set(), "participant serving");
    // One message limit for requests and answers, from the key and value
    // limits (`twopc_proto::limits`, rule 1).
    let message_limit = service.limits.sizes().message_limit();
    let routes = tonic::service::Routes::new(
        ParticipantServer::new(service)
            .max_decoding_message_size(message_limit)
            .max_encoding_message_size(message_limit),
    );
    let served =
        runtime::serve("twopc.v1.Participant", routes, listener, local, server_tls).await.map_err(anyhow::Error::msg);
    // Calls in flight are done: abort what has not voted, with the reason.
    node.shutting_down(Duration::from_secs(2)).await;
    served
}

/// Entry point of the `twopc-participant` binary.
pub fn main_with(config: Config) -> anyhow::Result<()> {
    runtime::init_tracing();
    runtime::build_runtime(config.worker_threads)?.block_on(run(config))
}

#[cfg(test)]
mod failpoint_names {
    /// [`super::FAILPOINTS`] is exactly the names this crate's code hits:
    /// a listed name that nothing hits would arm nothing.
    #[test]
    fn the_list_matches_the_sources() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let used = twopc_proto::failpoint::names_in_sources(&src, &["participant::", "store::"]);
        let listed: std::collections::BTreeSet<String> = super::FAILPOINTS.iter().map(|n| n.to_string()).collect();
        assert_eq!(used, listed);
    }
}
