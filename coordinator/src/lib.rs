//! The twopc coordinator: allocates tids, drives prepare and resolve
//! against the participants, and keeps the durable decision log.
//!
//! Layout: the protocol itself is `twopc_core::coordinator` (no I/O);
//! [`driver`] executes its actions (RPCs, forced log writes, retries);
//! [`decision_log`] is the SQLite log with group commit; [`service`] is the
//! gRPC face; [`peers`] the partition map; [`store_ids`] the store each
//! partition belongs to (a registration from another store is refused);
//! [`console`] the optional web console (`--console-addr`).
//!
//! Start-up order keeps rule 7: the log is read back and every unfinished
//! COMMIT re-entered into the core *before* the socket serves, so no
//! question about a committed tid can be answered "aborted". Phase 2 for
//! those tids is re-driven as soon as the runtime runs. The log's
//! low-water mark of forgotten decisions is read back at the same time
//! (rule 6): a tid the log has forgotten is answered FORGOTTEN to clients,
//! never presumed aborted.
//!
//! With `--decision-log etcd` ([`decision_log::etcd`], [`leadership`]) the
//! socket serves at once, but behind the [`gate`]: a standby answers every
//! call with the leader's address; the process that wins the election reads
//! the log back (rule 15, the same recovery) and only then opens the gate.

pub mod clock_watch;
pub mod console;
pub mod decision_log;
pub mod driver;
pub mod error;
pub mod gate;
pub mod leadership;
pub mod peers;
pub mod preflight;
pub mod service;
pub mod store_ids;

/// Every failpoint this process has (`twopc_proto::failpoint`): its
/// protocol steps (crash-matrix rows C1-C3) and the decision log's test
/// hook. `SetFailpoint` and `FAILPOINTS=` refuse any other name.
pub const FAILPOINTS: &[&str] = &[
    "coordinator::before_decision_forced",
    "coordinator::after_decision_forced",
    "coordinator::before_delegation_forced",
    "coordinator::after_delegation_forced",
    "coordinator::after_commit_acked",
    "decision_log::max_page_count",
];

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use twopc_core::coordinator::{Action, Coordinator};
use twopc_proto::pb::coordinator_server::CoordinatorServer;
use twopc_proto::tls::ClientTls;
use twopc_proto::token::{self, AdminToken, PeerToken};
use twopc_proto::{clock, runtime};

use crate::decision_log::etcd::EtcdLog;
use crate::decision_log::{DecisionLog, Recovered};
use crate::driver::{Driver, Timeouts};
use crate::gate::Gate;
use crate::leadership::Leadership;
use crate::peers::Peers;
use crate::service::{CoordinatorService, Limits};

/// Where the decision log lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogBackend {
    /// A SQLite file in --data-dir (one coordinator).
    Sqlite,
    /// An etcd cluster (--etcd-endpoints): several coordinators, one leads.
    Etcd,
}

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
    /// Directory of the decision log (created if missing); required with
    /// the SQLite log, unused with etcd.
    #[arg(long, env = "TWOPC_COORDINATOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the decision log lives: `sqlite` (a file in --data-dir, one
    /// coordinator) or `etcd` (replicated; several coordinators with the
    /// same --etcd-endpoints and --cluster-name elect one leader).
    #[arg(long, env = "TWOPC_DECISION_LOG", value_enum, default_value_t = LogBackend::Sqlite)]
    pub decision_log: LogBackend,
    /// etcd client endpoints, HOST:PORT[,HOST:PORT...] (with --decision-log etcd).
    #[arg(long, env = "TWOPC_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Option<String>,
    /// The cluster's name: its keys live under /twopc/NAME/ in etcd, so
    /// several clusters can share one etcd.
    #[arg(long, env = "TWOPC_CLUSTER_NAME", default_value = "default")]
    pub cluster_name: String,
    /// Leader lease in seconds: a leader that stops renewing it is replaced
    /// after about this long (failover takes at most twice it plus a second).
    #[arg(long, env = "TWOPC_LEASE_TTL_SECS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=60))]
    pub lease_ttl_secs: u64,
    /// The address standbys hand out for this coordinator when it leads
    /// (default: the bound --listen address).
    #[arg(long, env = "TWOPC_COORDINATOR_ADVERTISE")]
    pub advertise: Option<String>,
    /// How often the leader compacts etcd's history to what it saw one
    /// period earlier, in seconds (0: never, when etcd runs its own
    /// --auto-compaction-*).
    #[arg(long, env = "TWOPC_ETCD_COMPACT_EVERY_SECS", default_value_t = 60)]
    pub etcd_compact_every_secs: u64,
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
    /// Serve the web console on this address (e.g. 127.0.0.1:7080; port 0
    /// picks one, printed as `console on URL`); off when absent. A
    /// non-loopback address needs --admin-token. HTTPS when the
    /// coordinator has TLS (same certificate); with --admin-token every API
    /// call needs it (the page asks for it once).
    #[arg(long, env = "TWOPC_CONSOLE_ADDR")]
    pub console_addr: Option<String>,
    /// Failpoint names the participants know, for the console's menu (set
    /// by the `twopc` binary, which links the participant; not a flag).
    #[arg(skip)]
    pub participant_failpoints: Vec<String>,
}

/// Runs the coordinator until the process is stopped.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Held until the process ends (PROTOCOL.md rule 13).
    let _data_dir_lock = preflight::check(&config)?;
    anyhow::ensure!(config.partitions > 0, "--partitions must be at least 1");
    anyhow::ensure!(config.prepare_timeout_ms > 0, "--prepare-timeout-ms must be positive");
    twopc_proto::failpoint::setup_from_env(FAILPOINTS).map_err(anyhow::Error::msg)?;
    let (server_tls, client_tls) = config.tls.load().map_err(anyhow::Error::msg)?;
    let admin_token = AdminToken::new(config.admin_token.as_deref()).map_err(anyhow::Error::msg)?;
    let peer_token = PeerToken::new(config.peer_token.as_deref()).map_err(anyhow::Error::msg)?;
    token::ensure_distinct(&admin_token, &peer_token).map_err(anyhow::Error::msg)?;
    let shell = Shell { config: config.clone(), client_tls, admin_token, peer_token: peer_token.clone() };

    if config.decision_log == LogBackend::Etcd {
        return run_replicated(shell, server_tls).await;
    }
    let data_dir = config.data_dir.clone().context("--data-dir is required with the SQLite decision log")?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let (log, recovered) = DecisionLog::open(&data_dir, config.partitions, config.keep_finished)
        .with_context(|| format!("cannot open the decision log in {}", data_dir.display()))?;
    let (driver, service, redo) = shell.recover(log, recovered, None);

    runtime::serve_metrics(config.metrics_listen.as_deref()).map_err(anyhow::Error::msg)?;
    let (listener, local) =
        runtime::bind(&config.listen, server_tls.is_some(), peer_token.is_set()).await.map_err(anyhow::Error::msg)?;
    if let Some(console) = shell.start_console(&local.to_string(), None).await? {
        console.set_driver(driver.clone());
    }
    driver.execute(redo);
    tokio::spawn(driver.clone().expiry_loop(Duration::from_millis(100)));
    tracing::info!(%local, partitions = config.partitions, tls = server_tls.is_some(), peer_token = peer_token.is_set(), "coordinator serving");
    let routes = tonic::service::Routes::new(Gate::open(limited(CoordinatorServer::new(service))));
    runtime::serve("twopc.v1.Coordinator", routes, listener, local, server_tls).await.map_err(anyhow::Error::msg)
}

/// What every leader term is built from.
struct Shell {
    config: Config,
    client_tls: ClientTls,
    admin_token: AdminToken,
    peer_token: PeerToken,
}

impl Shell {
    /// Starts the web console if `--console-addr` is given (before the
    /// `listening on` line, so its `console on URL` line comes first).
    async fn start_console(
        &self,
        coordinator_addr: &str,
        leadership: Option<Arc<Leadership>>,
    ) -> anyhow::Result<Option<Arc<console::Console>>> {
        let Some(addr) = &self.config.console_addr else { return Ok(None) };
        let settings = console::Settings {
            addr: addr.clone(),
            coordinator_addr: coordinator_addr.to_string(),
            partitions: self.config.partitions,
            admin_token: self.admin_token.clone(),
            participant_failpoints: self.config.participant_failpoints.clone(),
            tls: self.config.tls.clone(),
        };
        let (console, _) = console::start(settings, leadership).await.map_err(anyhow::Error::msg)?;
        Ok(Some(console))
    }

    /// Rule 7 (and 15): the core rebuilt from what the log holds, the
    /// service around it, and the actions that re-drive unfinished tids.
    fn recover(
        &self,
        log: DecisionLog,
        recovered: Recovered,
        leadership: Option<Arc<Leadership>>,
    ) -> (Arc<Driver>, CoordinatorService, Vec<Action>) {
        let config = &self.config;
        let peers = Peers::new(config.max_inflight_per_participant, self.client_tls.clone(), self.peer_token.clone());
        for (partition, address) in &recovered.members {
            if let Err(e) = peers.set(*partition, address) {
                tracing::warn!(partition, "ignoring recorded address: {e}");
            }
        }
        let now = clock::now_ms();
        let mut core = Coordinator::new(config.max_open_txns, config.keep_finished)
            .with_one_phase(config.one_phase)
            .with_start(now);
        for tid in &recovered.finished {
            core.recover_finished(*tid);
        }
        // Rule 6: what the log forgot stays forgotten (never presumed aborted).
        if let Some(mark) = recovered.forgotten_through {
            core.forgot_through(mark);
        }
        let mut redo = vec![];
        for (tid, partitions) in &recovered.unfinished {
            // One line per tid at debug: a restart may find thousands; the
            // summary below counts them at info.
            tracing::debug!(%tid, ?partitions, "recovery: re-driving phase 2 of a logged COMMIT");
            redo.extend(core.recover_commit(*tid, partitions, now));
        }
        for &(tid, partition) in &recovered.delegated {
            tracing::debug!(%tid, partition, "recovery: asking the participant a one-phase commit was delegated to");
            redo.extend(core.recover_delegated(tid, partition, now));
        }
        tracing::info!(
            unfinished = recovered.unfinished.len(),
            delegated = recovered.delegated.len(),
            finished = recovered.finished.len(),
            members = recovered.members.len(),
            cluster_id = %recovered.cluster_id,
            term = recovered.term,
            forgotten_through = ?core.forgotten_through(),
            "recovery: decision log read back"
        );
        let timeouts = Timeouts {
            prepare: Duration::from_millis(config.prepare_timeout_ms),
            resolve_rpc: Duration::from_secs(2),
            max_resend_interval: Duration::from_secs(2),
        };
        let driver = Driver::new(core, log, peers, timeouts, leadership);
        let service = CoordinatorService {
            driver: driver.clone(),
            admin_token: self.admin_token.clone(),
            peer_token: self.peer_token.clone(),
            limits: Limits {
                partitions: config.partitions,
                default_timeout: Duration::from_millis(config.default_timeout_ms),
                max_timeout: Duration::from_millis(config.max_timeout_ms),
                commit_wait: Duration::from_millis(config.prepare_timeout_ms) + Duration::from_secs(30),
            },
            cluster_id: recovered.cluster_id.clone(),
            term: recovered.term,
            store_ids: store_ids::StoreIds::new(&recovered.store_ids),
        };
        (driver, service, redo)
    }
}

/// The replicated log: serve at once as a standby, campaign, and open the
/// gate once elected and recovered (rules 14-16).
async fn run_replicated(shell: Shell, server_tls: Option<tonic::transport::ServerTlsConfig>) -> anyhow::Result<()> {
    let config = shell.config.clone();
    let list =
        config.etcd_endpoints.as_deref().context("--decision-log etcd needs --etcd-endpoints HOST:PORT[,...]")?;
    let endpoints = twopc_leader::parse_addresses(list).map_err(|e| anyhow::anyhow!("--etcd-endpoints: {e}"))?;
    anyhow::ensure!(
        !config.cluster_name.is_empty() && !config.cluster_name.contains('/'),
        "--cluster-name {:?} must be non-empty and contain no '/'",
        config.cluster_name
    );
    let etcd = Arc::new(twopc_etcd::Etcd::new(&endpoints, Duration::from_secs(2))?);
    let status = etcd
        .status()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach etcd at {list}: {e}; is etcd running there (and with a quorum)?"))?;
    tracing::info!(etcd_version = %status.version, endpoints = list, "etcd reachable");
    let prefix = format!("/twopc/{}/", config.cluster_name);

    runtime::serve_metrics(config.metrics_listen.as_deref()).map_err(anyhow::Error::msg)?;
    let (listener, local) = runtime::bind(&config.listen, server_tls.is_some(), shell.peer_token.is_set())
        .await
        .map_err(anyhow::Error::msg)?;
    let me = config.advertise.clone().unwrap_or_else(|| local.to_string());
    let ttl = Duration::from_secs(config.lease_ttl_secs);
    let leadership = Arc::new(Leadership::new(etcd.clone(), &prefix, me.clone(), ttl));
    let stored =
        leadership.stored_partitions(&prefix).await.map_err(|e| anyhow::anyhow!("cannot read etcd at {list}: {e}"))?;
    if let Some(stored) = stored
        && stored != config.partitions.to_string()
    {
        anyhow::bail!(
            "cluster {:?} in etcd was created with {stored} partitions, not {}: pass --partitions {stored} or another --cluster-name",
            config.cluster_name,
            config.partitions
        );
    }
    if config.advertise.is_some() {
        // A wrong advertised address makes a leader nobody can follow to.
        let probe = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(&me)).await;
        if !matches!(probe, Ok(Ok(_))) {
            tracing::warn!(advertise = %me, "cannot connect to the --advertise address from here: if it is wrong, standbys will send every client and participant to an address where nothing answers");
        }
    }
    leadership.start().await.map_err(|e| anyhow::anyhow!("cannot take a lease in etcd at {list}: {e}"))?;
    tokio::spawn(leadership.clone().keep_alive());
    metrics::gauge!("twopc_coordinator_is_leader").set(0.0);
    metrics::counter!("twopc_leader_elections_total").absolute(0);
    metrics::counter!("twopc_leader_failovers_total").absolute(0);

    let console = shell.start_console(&me, Some(leadership.clone())).await?;
    let gate = Gate::standby(leadership.clone());
    let serving_rx = leadership.serving();
    let term = {
        let (gate, leadership) = (gate.clone(), leadership.clone());
        async move {
            let epoch = leadership.campaign().await;
            tracing::info!(epoch, address = %me, "elected leader: running recovery before serving");
            metrics::counter!("twopc_leader_elections_total").increment(1);
            let deposer = leadership.clone();
            let log = EtcdLog {
                etcd,
                prefix,
                leader_key: leadership.key().to_vec(),
                epoch,
                on_deposed: Arc::new(move |why: String| deposer.step_down(&why)),
                compact_every: Duration::from_secs(config.etcd_compact_every_secs),
            };
            let (log, recovered) = match DecisionLog::open_etcd(log, config.partitions, config.keep_finished).await {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the decision log in etcd");
                    // Hand the election on at once rather than after a TTL.
                    leadership.resign().await;
                    std::process::exit(2);
                }
            };
            let (driver, service, redo) = shell.recover(log, recovered, Some(leadership.clone()));
            gate.lead(limited(CoordinatorServer::new(service)));
            if let Some(console) = &console {
                console.set_driver(driver.clone());
            }
            leadership.opened();
            if leadership.took_over() {
                metrics::counter!("twopc_leader_failovers_total").increment(1);
            }
            driver.execute(redo);
            tokio::spawn(driver.clone().expiry_loop(Duration::from_millis(100)));
            tracing::info!("leader serving");
        }
    };
    tokio::spawn(term);
    tracing::info!(%local, partitions = config.partitions, cluster = %config.cluster_name, "coordinator up (standing by until elected)");
    let routes = tonic::service::Routes::new(gate);
    let served =
        runtime::serve_reporting("twopc.v1.Coordinator", routes, listener, local, server_tls, Some(serving_rx))
            .await
            .map_err(anyhow::Error::msg);
    if leadership.leads() {
        leadership.resign().await;
    }
    served
}

/// Entry point of the `twopc-coordinator` binary.
pub fn main_with(config: Config) -> anyhow::Result<()> {
    runtime::init_tracing();
    runtime::build_runtime(config.worker_threads)?.block_on(run(config))
}

/// The coordinator's server with its message limit (`twopc_proto::limits`,
/// rule 1). It carries no keys or values (tids, decisions, listings), so it
/// takes the default limits: the 4 MiB floor, which ListTransactions also
/// stops at.
fn limited<S>(server: CoordinatorServer<S>) -> CoordinatorServer<S> {
    let limit = twopc_proto::limits::SizeLimits::default().message_limit();
    server.max_decoding_message_size(limit).max_encoding_message_size(limit)
}

#[cfg(test)]
mod failpoint_names {
    /// [`super::FAILPOINTS`] is exactly the names this crate's code hits:
    /// a listed name that nothing hits would arm nothing.
    #[test]
    fn the_list_matches_the_sources() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let used = twopc_proto::failpoint::names_in_sources(&src, &["coordinator::", "decision_log::"]);
        let listed: std::collections::BTreeSet<String> = super::FAILPOINTS.iter().map(|n| n.to_string()).collect();
        assert_eq!(used, listed);
    }
}
