//! `twopc bench`: throughput and latency of distributed transactions, and how
//! far the latency is from the floor the protocol allows.
//!
//! By default it starts its own local cluster (a coordinator and
//! `--partitions` participants, child processes of this binary, data under a
//! temporary directory or `--dir`); with `--coordinator HOST:PORT` (or a
//! list `A,B,C` of coordinators, one leading) it runs against processes
//! that are already up and starts nothing. `--ha` makes
//! the local cluster highly available: a three-member etcd and three
//! coordinators keeping their decision log in it (one leads), so the
//! forced COMMIT record costs an etcd write (a raft round and etcd's own
//! fsync) instead of a local fsync.
//!
//! # Workloads
//!
//! - `transfer`: the bank of `twopc demo` at scale. `--keys` accounts
//!   (`acct-{i}`) are first loaded with 1000 each (500 per transaction); each
//!   transaction then picks two accounts on two *different* partitions, gets
//!   both and puts both (-1 / +1). At the end one transaction reads every
//!   balance (retried while it conflicts with phase 2 still being applied) and
//!   the report says whether the total was conserved.
//! - `spread`: each transaction touches one random key on every partition:
//!   a `get` with probability `--read-ratio`, else a `put`.
//! - `local`: each transaction puts one random key, so it has a single
//!   participant and commits in one phase (compare with `--one-phase false`
//!   on a local cluster, where the same transaction votes first).
//!
//! `--concurrency` tasks share one [`Client`] and run transactions back to
//! back until `--warmup-secs` + `--duration-secs` have passed; only
//! transactions finishing after the warm-up count. An abort (ABORTED from an
//! operation, or an ABORTED outcome) is counted and not retried: the task
//! starts a new transaction. Other errors are counted by kind (their gRPC
//! code) and the first few printed; the bench then exits non-zero (2) after
//! its report, since a transaction that failed with an error (not a
//! conflict's abort) is a fault of the cluster or of its configuration.
//! Progress goes to stderr once a second.
//!
//! **How operations are issued.** By default a transaction issues its
//! independent operations the way a user writing fast code would
//! (`Txn::run`): `spread` writes (or reads) its key on every partition at
//! once; `transfer` reads both accounts for update at once, then writes both
//! at once. And its tid comes from the client's pool of tids reserved in
//! blocks (`--tid-pool`, the block size; `ConnectOptions::tid_pool`), so
//! `begin` usually costs no round trip. `--sequential-ops` awaits every
//! operation before the next, and `--tid-pool 0` calls Begin for every
//! transaction (with the bench's own 5 s timeout; a pooled tid has the
//! coordinator's default): both together are how the bench ran before, so
//! old and new can be compared from one binary.
//!
//! `--value-bytes N` makes every value written N bytes long (default: a few
//! bytes), to measure large values; the client's message limit follows
//! `--max-key-bytes`/`--max-value-bytes` (`TWOPC_MAX_KEY_BYTES`,
//! `TWOPC_MAX_VALUE_BYTES`, the participants' own variables).
//!
//! # What is measured
//!
//! For committed transactions, with [`Instant`] and an HDR histogram in
//! microseconds: the **whole transaction** (from `begin` to the answer of
//! `commit`) and **the commit call alone** (p50, p90, p99, p99.9, max).
//!
//! # The floor
//!
//! In the same run the bench measures the median loopback gRPC round trip to
//! the coordinator (sequential `GetTopology` calls, which touch no disk) and
//! the median `fdatasync` of a 4 KiB append on the data directory's disk (in
//! a temporary directory when the cluster is external; the report says
//! which). The least a commit can cost is
//!
//! ```text
//! floor = 2 × RTT + 2 × fsync
//! ```
//!
//! - one RTT for the client's `Commit` call to the coordinator and its answer;
//! - one RTT for phase 1: the coordinator sends `Prepare` to every
//!   participant at once and waits for the votes;
//! - one fsync for the prepares: each participant forces its write set before
//!   voting YES, all of them in parallel, so together they cost one fsync;
//! - one fsync for the coordinator's forced COMMIT record, which must be
//!   durable before anyone hears COMMITTED;
//! - phase 2 (sending COMMIT, participants applying it) runs after the client
//!   hears COMMITTED, so it is not on the client's path.
//!
//! A whole transaction also pays for `begin` and every get/put round trip, so
//! its ratio to the floor is larger than the commit call's; both are printed.
//! Under load, group commit lets many transactions share one fsync, so
//! throughput can exceed `concurrency / floor`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use twopc_client::{Client, ClientError, Op, Outcome, partition_for};

use crate::cluster::{ClusterOptions, HaOptions, LocalCluster};
use crate::etcd_cluster::EtcdCluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Move 1 between two accounts on different partitions; checks the total at the end.
    Transfer,
    /// Touch one random key on every partition (get or put, see --read-ratio).
    Spread,
    /// Put one random key: a single participant, committed in one phase.
    Local,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Run against this running coordinator (HOST:PORT, or a list HOST:PORT,HOST:PORT
    /// of coordinators, one leading) instead of starting a local cluster.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// How to reach a cluster given with --coordinator (the local cluster is plaintext).
    #[command(flatten)]
    pub tls: twopc_client::TlsArgs,
    /// Directory for the local cluster's data and logs (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Workload::Transfer)]
    pub workload: Workload,
    /// Partitions of the local cluster (with --coordinator: taken from its topology).
    #[arg(long, default_value_t = 3)]
    pub partitions: u32,
    /// Concurrent transactions (tasks sharing one client).
    #[arg(long, default_value_t = 16)]
    pub concurrency: u32,
    /// Measured time, after the warm-up.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Time run but not measured, first.
    #[arg(long, default_value_t = 1)]
    pub warmup_secs: u64,
    /// Size of the key space (number of accounts for transfer); small means contention.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u32,
    /// spread: fraction of the per-partition operations that are gets instead of puts.
    #[arg(long, default_value_t = 0.0)]
    pub read_ratio: f64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Local cluster only: whether the coordinator commits single-participant
    /// transactions in one phase (its `--one-phase`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub one_phase: bool,
    /// Local cluster only: three coordinators on a local three-member etcd
    /// (the decision log in etcd, needs `etcd` on PATH) instead of one on SQLite.
    #[arg(long, conflicts_with = "coordinator")]
    pub ha: bool,
    /// Tokio worker threads of the bench client (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    pub runtime_threads: usize,
    /// Length of every value written (spread and local puts; 0: the tid, 32 bytes).
    #[arg(long, default_value_t = 0)]
    pub value_bytes: usize,
    /// The participants' --max-key-bytes (same variable): with
    /// --max-value-bytes it sets the client's gRPC message limit.
    #[arg(long, env = "TWOPC_MAX_KEY_BYTES", default_value_t = twopc_proto::limits::DEFAULT_MAX_KEY_BYTES)]
    pub max_key_bytes: usize,
    /// The participants' --max-value-bytes (same variable).
    #[arg(long, env = "TWOPC_MAX_VALUE_BYTES", default_value_t = twopc_proto::limits::DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,
    /// Await every operation of a transaction before sending the next (how
    /// the bench ran before `Txn::run`), instead of sending independent ones at once.
    #[arg(long)]
    pub sequential_ops: bool,
    /// Tids per block of the client's tid pool (at most 64); 0: a Begin per transaction.
    #[arg(long, default_value_t = 64)]
    pub tid_pool: usize,
}

const INITIAL_BALANCE: i64 = 1000;
const LOAD_BATCH: u32 = 500;
const TXN_TIMEOUT: Duration = Duration::from_secs(5);
const RTT_SAMPLES: usize = 2000;
const FSYNC_SAMPLES: usize = 200;
const MAX_ERRORS_KEPT: usize = 5;

/// Builds the runtime `--runtime-threads` asks for and runs the bench.
pub fn main_with(args: BenchArgs) -> anyhow::Result<()> {
    let rt = if args.runtime_threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.runtime_threads).enable_all().build()?
    };
    rt.block_on(run(args))
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles { p50: 0, p90: 0, p99: 0, p999: 0, max: 0, mean: 0.0 };
        }
        Percentiles {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }

    fn named(&self) -> [(&'static str, u64); 5] {
        [("p50", self.p50), ("p90", self.p90), ("p99", self.p99), ("p999", self.p999), ("max", self.max)]
    }
}

#[derive(Debug, Serialize)]
pub struct Floor {
    pub rtt_median_us: f64,
    pub fsync_median_us: f64,
    /// Where the fsync was measured.
    pub fsync_dir: String,
    /// True when measured in a temporary directory (external cluster), not the cluster's data directory.
    pub fsync_in_temp_dir: bool,
    /// 2 × RTT + 2 × fsync.
    pub floor_us: f64,
    /// Median time for one round of N concurrent fsyncs (N = partitions,
    /// each on its own file in the same directory), as the participants'
    /// prepares do when they share one disk.
    pub parallel_fsync_median_us: f64,
    /// 2 × RTT + (N concurrent fsyncs) + fsync: the floor on this machine,
    /// where every process shares one disk whose flushes serialize.
    pub shared_disk_floor_us: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub workload: Workload,
    pub partitions: u32,
    pub concurrency: u32,
    pub duration_secs: u64,
    pub warmup_secs: u64,
    pub keys: u32,
    pub read_ratio: f64,
    /// `--sequential-ops`: operations awaited one by one.
    pub sequential_ops: bool,
    /// `--tid-pool`: tids per block of the client's pool (0: a Begin per transaction).
    pub tid_pool: usize,
    pub runtime_threads: usize,
    pub coordinator: String,
    pub external_cluster: bool,
    /// Local cluster only: three coordinators with their decision log on etcd (`--ha`).
    pub ha: bool,
    /// `--ha`: the median of one etcd write (a one-key transaction, sent
    /// alone), measured in the same run: what the COMMIT record costs
    /// instead of a local fsync.
    pub etcd_write_median_us: Option<f64>,
    pub committed: u64,
    pub committed_per_sec: f64,
    pub aborted: u64,
    /// aborted / (committed + aborted), in the measured window.
    pub abort_rate: f64,
    pub errors: u64,
    /// Errors by kind (their gRPC code, e.g. UNAVAILABLE), over the whole run.
    pub error_kinds: std::collections::BTreeMap<String, u64>,
    pub first_errors: Vec<String>,
    /// begin → commit answer, committed transactions, microseconds.
    pub txn_latency_us: Percentiles,
    /// The commit call alone, committed transactions, microseconds.
    pub commit_latency_us: Percentiles,
    pub floor: Floor,
    /// transfer only: the sum of balances at the end and whether it equals the loaded total.
    pub total_balance: Option<i64>,
    pub expected_total: Option<i64>,
    pub conserved: Option<bool>,
    /// Committed transactions in each second of the measured window.
    pub per_second_committed: Vec<u64>,
    /// Throughput of the window's first and last stretch (30 s, or half of
    /// a shorter run): whether it decays as data grows.
    pub decay: Option<Decay>,
}

/// The first and last `window_secs` of the measured window compared.
#[derive(Debug, Serialize)]
pub struct Decay {
    pub window_secs: u64,
    pub first_per_sec: f64,
    pub last_per_sec: f64,
    /// last / first: 1.0 is no decay.
    pub last_to_first: f64,
}

impl Decay {
    /// Compares the first and last 30 s (or halves, if shorter) of `per_second`.
    fn of(per_second: &[u64]) -> Option<Self> {
        let window = (per_second.len() / 2).min(30);
        if window == 0 {
            return None;
        }
        let mean = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len() as f64;
        let (first, last) = (mean(&per_second[..window]), mean(&per_second[per_second.len() - window..]));
        Some(Decay {
            window_secs: window as u64,
            first_per_sec: first,
            last_per_sec: last,
            last_to_first: if first > 0.0 { last / first } else { 0.0 },
        })
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(args.keys >= 2, "--keys must be at least 2");
    anyhow::ensure!((0.0..=1.0).contains(&args.read_ratio), "--read-ratio must be between 0.0 and 1.0");

    // `tmp` outlives `etcd`, which outlives `cluster` (declared first, dropped last).
    let mut tmp = None;
    let mut etcd = None;
    let mut cluster = None;
    let tls = args.tls.client().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.coordinator.is_some() || !tls.is_enabled(),
        "--tls-ca is for a cluster given with --coordinator: the local cluster runs plaintext"
    );
    // `coordinator` is what clients are given (every address in HA mode).
    let (coordinator, data_dir) = match &args.coordinator {
        Some(addr) => (addr.clone(), None),
        None => {
            anyhow::ensure!(args.partitions >= 1, "--partitions must be at least 1");
            let exe = std::env::current_exe().context("cannot find the twopc binary")?;
            let dir = match &args.dir {
                Some(d) => d.clone(),
                None => {
                    let t = tempfile::Builder::new().prefix("twopc-bench-").tempdir()?;
                    let p = t.path().to_path_buf();
                    tmp = Some(t);
                    p
                }
            };
            let mut opts = ClusterOptions {
                partitions: args.partitions,
                coordinator_args: vec!["--one-phase".into(), args.one_phase.to_string()],
                ..ClusterOptions::default()
            };
            if args.ha {
                eprintln!(
                    "starting a 3-member etcd, 3 coordinators and {} participants under {}",
                    args.partitions,
                    dir.display()
                );
                let e = EtcdCluster::start(&dir.join("etcd"), 3)?;
                opts.ha = Some(HaOptions { cluster_name: "bench".into(), ..HaOptions::new(e.endpoints()) });
                etcd = Some(e);
            } else {
                eprintln!("starting a coordinator and {} participants under {}", args.partitions, dir.display());
            }
            let c = LocalCluster::start(&exe, &dir, opts)?;
            c.leader(Duration::from_secs(30)).await?;
            c.wait_registered(Duration::from_secs(30)).await?;
            let addr = c.coordinator_addr();
            cluster = Some(c);
            (addr, Some(dir))
        }
    };

    let sizes =
        twopc_proto::limits::SizeLimits { max_key_bytes: args.max_key_bytes, max_value_bytes: args.max_value_bytes };
    let options =
        twopc_client::ConnectOptions { tls: tls.clone(), sizes, tid_pool: args.tid_pool, ..Default::default() };
    let client = Client::connect_with(&coordinator, options).await?;
    let partitions = client.topology().await?.partitions;
    anyhow::ensure!(partitions >= 1, "the coordinator at {coordinator} reports no partitions");
    if args.coordinator.is_some() && partitions != args.partitions {
        eprintln!("note: the cluster at {coordinator} has {partitions} partitions (--partitions ignored)");
    }

    // The floor, measured on an idle cluster.
    // At the leader, which the client found (it answered the topology).
    let rtt = measure_rtt(&client.coordinator_address(), &tls).await?;
    let (fsync_dir, fsync_in_temp_dir, fsync_tmp) = match &data_dir {
        Some(d) => (d.clone(), false, None),
        None => {
            let t = tempfile::Builder::new().prefix("twopc-bench-fsync-").tempdir()?;
            (t.path().to_path_buf(), true, Some(t))
        }
    };
    let fsync = {
        let dir = fsync_dir.clone();
        tokio::task::spawn_blocking(move || measure_fsync(&dir)).await??
    };
    let parallel_fsync = {
        let dir = fsync_dir.clone();
        tokio::task::spawn_blocking(move || measure_parallel_fsync(&dir, partitions as usize)).await??
    };
    drop(fsync_tmp);
    let etcd_write = match &etcd {
        Some(e) => Some(measure_etcd_write(&e.endpoints()).await?),
        None => None,
    };
    let floor = Floor {
        rtt_median_us: micros(rtt),
        fsync_median_us: micros(fsync),
        fsync_dir: fsync_dir.display().to_string(),
        fsync_in_temp_dir,
        floor_us: micros(2 * rtt + 2 * fsync),
        parallel_fsync_median_us: micros(parallel_fsync),
        shared_disk_floor_us: micros(2 * rtt + parallel_fsync + fsync),
    };
    eprintln!(
        "floor: RTT {:.1} µs, fsync {:.1} µs{} → 2×RTT + 2×fsync = {:.1} µs",
        floor.rtt_median_us,
        floor.fsync_median_us,
        if fsync_in_temp_dir { format!(" (in temp dir {})", floor.fsync_dir) } else { String::new() },
        floor.floor_us
    );

    let keys = Keys::new(args.workload, args.keys, partitions);
    if args.workload == Workload::Transfer {
        let started = Instant::now();
        load(&client, args.keys, args.concurrency.min(8)).await?;
        eprintln!(
            "loaded {} accounts with {INITIAL_BALANCE} each in {:.2}s",
            args.keys,
            started.elapsed().as_secs_f64()
        );
    }

    let per_second = (0..args.duration_secs.max(1)).map(|_| AtomicU64::new(0)).collect();
    let shared = Arc::new(Shared { per_second, ..Shared::default() });
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_secs);
    let end = measure_from + Duration::from_secs(args.duration_secs);
    let progress = tokio::spawn(progress(shared.clone(), start, measure_from));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let w = Worker {
            client: client.clone(),
            keys: keys.clone(),
            shared: shared.clone(),
            read_ratio: args.read_ratio,
            value_bytes: args.value_bytes,
            sequential_ops: args.sequential_ops,
            pooled_begin: args.tid_pool > 0,
            measure_from,
            end,
        };
        workers.spawn(w.run());
    }
    let mut stats = Stats::new();
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(s) => stats.merge(s),
            Err(e) => shared.error("worker task failed", format!("a worker task failed: {e}")),
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let _ = progress.await;

    let (mut total_balance, mut expected_total, mut conserved) = (None, None, None);
    let mut audit_error = None;
    if args.workload == Workload::Transfer {
        let expected = INITIAL_BALANCE * i64::from(args.keys);
        expected_total = Some(expected);
        match audit(&client, &keys).await {
            Ok(total) => {
                total_balance = Some(total);
                conserved = Some(total == expected);
            }
            Err(e) => audit_error = Some(format!("{e:#}")),
        }
    }

    let per_second_committed: Vec<u64> = shared.per_second.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    let decay = Decay::of(&per_second_committed);
    let committed = stats.committed;
    let finished = committed + stats.aborted;
    let report = Report {
        workload: args.workload,
        partitions,
        concurrency: args.concurrency,
        duration_secs: args.duration_secs,
        warmup_secs: args.warmup_secs,
        keys: args.keys,
        read_ratio: args.read_ratio,
        sequential_ops: args.sequential_ops,
        tid_pool: args.tid_pool,
        runtime_threads: args.runtime_threads.max(1),
        coordinator,
        external_cluster: args.coordinator.is_some(),
        ha: args.ha,
        etcd_write_median_us: etcd_write.map(micros),
        committed,
        committed_per_sec: if args.duration_secs > 0 { committed as f64 / args.duration_secs as f64 } else { 0.0 },
        aborted: stats.aborted,
        abort_rate: if finished > 0 { stats.aborted as f64 / finished as f64 } else { 0.0 },
        errors: shared.errors.load(Ordering::Relaxed),
        error_kinds: shared.kinds.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        first_errors: shared.first_errors.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        txn_latency_us: Percentiles::of(&stats.txn),
        commit_latency_us: Percentiles::of(&stats.commit),
        floor,
        total_balance,
        expected_total,
        conserved,
        per_second_committed,
        decay,
    };
    print_report(&report);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    drop(cluster);
    drop(etcd);
    drop(tmp);
    if let Some(e) = audit_error {
        bail!("the final audit failed: {e}");
    }
    if conserved == Some(false) {
        bail!("money was created or lost: {} != {}", total_balance.unwrap_or(0), expected_total.unwrap_or(0));
    }
    if report.errors > 0 {
        bail!(
            "{} transactions failed with errors (not conflicts' aborts): {}",
            report.errors,
            kinds_line(&report.error_kinds)
        );
    }
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Median of sequential `GetTopology` round trips on a connection of its own.
async fn measure_rtt(coordinator: &str, tls: &twopc_client::ClientTls) -> anyhow::Result<Duration> {
    use twopc_proto::pb::{GetTopologyRequest, coordinator_client::CoordinatorClient};
    let endpoint = tls.endpoint(coordinator).map_err(anyhow::Error::msg)?.tcp_nodelay(true);
    let channel = endpoint.connect().await.with_context(|| format!("cannot reach {coordinator}"))?;
    let mut c = CoordinatorClient::new(channel);
    for _ in 0..50 {
        c.get_topology(GetTopologyRequest {}).await?;
    }
    let mut samples = Vec::with_capacity(RTT_SAMPLES);
    for _ in 0..RTT_SAMPLES {
        let t = Instant::now();
        c.get_topology(GetTopologyRequest {}).await?;
        samples.push(t.elapsed());
    }
    Ok(median(samples))
}

/// Median of one etcd write (a put in a transaction, like the decision
/// log's), sent alone, after a warm-up.
async fn measure_etcd_write(endpoints: &str) -> anyhow::Result<Duration> {
    let list: Vec<String> = endpoints.split(',').map(str::to_string).collect();
    let etcd = twopc_etcd::Etcd::new(&list, Duration::from_secs(2))?;
    let write = || {
        let req = twopc_etcd::pb::TxnRequest {
            compare: vec![],
            success: vec![twopc_etcd::op::put(b"/twopc-bench/probe".to_vec(), b"x".to_vec(), 0)],
            failure: vec![],
        };
        etcd.txn(req)
    };
    for _ in 0..20 {
        write().await?;
    }
    let mut samples = Vec::with_capacity(RTT_SAMPLES);
    for _ in 0..RTT_SAMPLES {
        let t = Instant::now();
        write().await?;
        samples.push(t.elapsed());
    }
    Ok(median(samples))
}

/// Median of `sync_data` after a 4 KiB append, in `dir`.
fn measure_fsync(dir: &Path) -> anyhow::Result<Duration> {
    use std::io::Write;
    let path = dir.join(format!("bench-fsync-{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let block = [0x5au8; 4096];
    let mut samples = Vec::with_capacity(FSYNC_SAMPLES);
    let result = (|| {
        for _ in 0..FSYNC_SAMPLES {
            let t = Instant::now();
            f.write_all(&block)?;
            f.sync_data()?;
            samples.push(t.elapsed());
        }
        Ok::<_, std::io::Error>(())
    })();
    drop(f);
    let _ = std::fs::remove_file(&path);
    result.with_context(|| format!("fsync measurement in {}", dir.display()))?;
    Ok(median(samples))
}

/// Median time of a round of `n` threads each appending 4 KiB to its own
/// file and syncing it, all at once.
fn measure_parallel_fsync(dir: &Path, n: usize) -> anyhow::Result<Duration> {
    use std::io::Write;
    use std::sync::Barrier;
    let n = n.max(1);
    let start = Arc::new(Barrier::new(n + 1));
    let done = Arc::new(Barrier::new(n + 1));
    let mut threads = vec![];
    for i in 0..n {
        let path = dir.join(format!("bench-pfsync-{}-{i}.tmp", std::process::id()));
        let (start, done) = (start.clone(), done.clone());
        threads.push(std::thread::spawn(move || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
            let block = [0x5au8; 4096];
            let mut result = Ok(());
            for _ in 0..FSYNC_SAMPLES {
                start.wait();
                if result.is_ok() {
                    result = f.write_all(&block).and_then(|()| f.sync_data());
                }
                done.wait();
            }
            drop(f);
            let _ = std::fs::remove_file(&path);
            result
        }));
    }
    let mut samples = Vec::with_capacity(FSYNC_SAMPLES);
    for _ in 0..FSYNC_SAMPLES {
        let t = Instant::now();
        start.wait();
        done.wait();
        samples.push(t.elapsed());
    }
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("fsync thread panicked"))?.context("parallel fsync measurement")?;
    }
    Ok(median(samples))
}

/// The key space, grouped by owning partition.
#[derive(Clone)]
struct Keys {
    workload: Workload,
    /// Per partition, the key indexes it owns (empty partitions dropped).
    by_partition: Arc<Vec<Vec<u32>>>,
    count: u32,
}

impl Keys {
    fn new(workload: Workload, count: u32, partitions: u32) -> Self {
        let mut by_partition = vec![Vec::new(); partitions as usize];
        for i in 0..count {
            let p = partition_for(key_name(workload, i).as_bytes(), partitions);
            by_partition[p as usize].push(i);
        }
        by_partition.retain(|v| !v.is_empty());
        Keys { workload, by_partition: Arc::new(by_partition), count }
    }

    fn name(&self, i: u32) -> String {
        key_name(self.workload, i)
    }

    /// Two distinct accounts, on different partitions when there are two.
    fn transfer_pair(&self) -> (u32, u32) {
        let mut rng = rand::rng();
        let parts = &self.by_partition;
        if parts.len() >= 2 {
            let a = rng.random_range(0..parts.len());
            let b = (a + rng.random_range(1..parts.len())) % parts.len();
            let from = parts[a][rng.random_range(0..parts[a].len())];
            let to = parts[b][rng.random_range(0..parts[b].len())];
            (from, to)
        } else {
            let from = rng.random_range(0..self.count);
            let to = (from + rng.random_range(1..self.count)) % self.count;
            (from, to)
        }
    }

    /// One random key per partition, each with "is a read".
    fn spread(&self, read_ratio: f64) -> Vec<(u32, bool)> {
        let mut rng = rand::rng();
        self.by_partition
            .iter()
            .map(|keys| (keys[rng.random_range(0..keys.len())], rng.random_bool(read_ratio)))
            .collect()
    }
}

fn workload_name(workload: Workload) -> &'static str {
    match workload {
        Workload::Transfer => "transfer",
        Workload::Spread => "spread",
        Workload::Local => "local",
    }
}

fn key_name(workload: Workload, i: u32) -> String {
    match workload {
        Workload::Transfer => format!("acct-{i}"),
        Workload::Spread | Workload::Local => format!("key-{i}"),
    }
}

fn balance(v: Option<Vec<u8>>) -> i64 {
    v.and_then(|v| String::from_utf8_lossy(&v).parse().ok()).unwrap_or(0)
}

/// Loads every account with [`INITIAL_BALANCE`], [`LOAD_BATCH`] per transaction.
async fn load(client: &Client, accounts: u32, parallel: u32) -> anyhow::Result<()> {
    let batches: Vec<(u32, u32)> =
        (0..accounts).step_by(LOAD_BATCH as usize).map(|s| (s, (s + LOAD_BATCH).min(accounts))).collect();
    let batches = Arc::new(Mutex::new(batches));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel.max(1) {
        let (client, batches) = (client.clone(), batches.clone());
        tasks.spawn(async move {
            loop {
                let Some((lo, hi)) = batches.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                    return Ok::<_, anyhow::Error>(());
                };
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match load_batch(&client, lo, hi).await {
                        Ok(true) => break,
                        Ok(false) if attempt < 10 => {}
                        Ok(false) => bail!("loading accounts {lo}..{hi} kept aborting"),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

async fn load_batch(client: &Client, lo: u32, hi: u32) -> Result<bool, ClientError> {
    let txn = client.begin(Some(Duration::from_secs(60))).await?;
    let value = INITIAL_BALANCE.to_string();
    for i in lo..hi {
        match txn.put(format!("acct-{i}").as_bytes(), value.as_bytes()).await {
            Ok(()) => {}
            Err(e) if e.is_retryable_abort() => {
                let _ = txn.abort().await;
                return Ok(false);
            }
            Err(e) => {
                let _ = txn.abort().await;
                return Err(e);
            }
        }
    }
    Ok(matches!(txn.commit().await?, Outcome::Committed))
}

/// The sum of every balance in one transaction (one reading task per
/// partition), retried while it conflicts with transfers whose phase 2 is
/// still being applied.
async fn audit(client: &Client, keys: &Keys) -> anyhow::Result<i64> {
    let mut last = String::new();
    for attempt in 0..50u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(20 * attempt.min(10))).await;
        }
        let txn = client.begin(Some(Duration::from_secs(120))).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for part in keys.by_partition.iter() {
            let (txn, part, keys) = (txn.clone(), part.clone(), keys.clone());
            tasks.spawn(async move {
                let mut sum = 0i64;
                for i in part {
                    sum += balance(txn.get(keys.name(i).as_bytes()).await?);
                }
                Ok::<_, ClientError>(sum)
            });
        }
        let mut total = 0i64;
        let mut failure: Option<ClientError> = None;
        while let Some(r) = tasks.join_next().await {
            match r? {
                Ok(s) => total += s,
                Err(e) => {
                    if failure.as_ref().is_none_or(|f| f.is_retryable_abort()) {
                        failure = Some(e);
                    }
                }
            }
        }
        match failure {
            None => match txn.commit().await? {
                Outcome::Committed => return Ok(total),
                Outcome::Aborted { reason, .. } => last = reason,
                // Not for a tid just begun: it is newer than any forgotten one.
                Outcome::Forgotten { reason } => anyhow::bail!("the sum's outcome is forgotten: {reason}"),
            },
            Some(e) if e.is_retryable_abort() => {
                last = e.to_string();
                let _ = txn.abort().await;
            }
            Some(e) => {
                let _ = txn.abort().await;
                return Err(e.into());
            }
        }
    }
    bail!("the audit kept aborting ({last})")
}

/// Counters the progress printer reads, and the errors every worker reports.
#[derive(Default)]
struct Shared {
    committed: AtomicU64,
    aborted: AtomicU64,
    errors: AtomicU64,
    kinds: Mutex<std::collections::BTreeMap<String, u64>>,
    first_errors: Mutex<Vec<String>>,
    stop: AtomicBool,
    /// Committed transactions per second of the measured window.
    per_second: Vec<AtomicU64>,
}

impl Shared {
    fn error(&self, kind: &str, msg: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.kinds.lock().unwrap_or_else(|p| p.into_inner()).entry(kind.to_string()).or_default() += 1;
        let mut first = self.first_errors.lock().unwrap_or_else(|p| p.into_inner());
        if first.len() < MAX_ERRORS_KEPT {
            eprintln!("error: {msg}");
            first.push(msg);
        }
    }
}

async fn progress(shared: Arc<Shared>, start: Instant, measure_from: Instant) {
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = 0u64;
    let mut since = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        // An interval that began before the measured window is warm-up.
        let warmup = since < measure_from;
        since = Instant::now();
        let now = shared.committed.load(Ordering::Relaxed);
        eprintln!(
            "[{:6.1}s]{} {:>8} committed/s   aborts {:>8}   errors {}",
            start.elapsed().as_secs_f64(),
            if warmup { " warmup" } else { "       " },
            now - last,
            shared.aborted.load(Ordering::Relaxed),
            shared.errors.load(Ordering::Relaxed),
        );
        last = now;
    }
}

/// What one worker measured in the window.
struct Stats {
    committed: u64,
    aborted: u64,
    txn: Histogram<u64>,
    commit: Histogram<u64>,
}

impl Stats {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        Stats { committed: 0, aborted: 0, txn: h(), commit: h() }
    }

    fn merge(&mut self, o: Stats) {
        self.committed += o.committed;
        self.aborted += o.aborted;
        // Same bounds everywhere: adding cannot fail.
        let _ = self.txn.add(&o.txn);
        let _ = self.commit.add(&o.commit);
    }
}

enum TxnResult {
    Committed {
        commit: Duration,
    },
    Aborted,
    /// Failed with an error other than ABORTED: its kind (gRPC code) and text.
    Error(String, String),
}

/// A failed transaction's error: its kind (the gRPC code, which every
/// [`ClientError`] displays first) and the whole text, prefixed with `step`.
fn error(step: &str, e: &ClientError) -> TxnResult {
    let text = e.to_string();
    let kind = text.split(':').next().unwrap_or("UNKNOWN").to_string();
    TxnResult::Error(kind, format!("{step}: {text}"))
}

/// `KIND count, KIND count` for the report.
fn kinds_line(kinds: &std::collections::BTreeMap<String, u64>) -> String {
    kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

struct Worker {
    client: Client,
    keys: Keys,
    shared: Arc<Shared>,
    read_ratio: f64,
    value_bytes: usize,
    sequential_ops: bool,
    /// Begin with the default timeout, so the tid comes from the pool.
    pooled_begin: bool,
    measure_from: Instant,
    end: Instant,
}

impl Worker {
    async fn run(self) -> Stats {
        let mut stats = Stats::new();
        while Instant::now() < self.end {
            let started = Instant::now();
            let result = self.one().await;
            let done = Instant::now();
            let counted = done >= self.measure_from && done <= self.end;
            match result {
                TxnResult::Committed { commit } => {
                    self.shared.committed.fetch_add(1, Ordering::Relaxed);
                    if counted {
                        let second =
                            ((done - self.measure_from).as_secs() as usize).min(self.shared.per_second.len() - 1);
                        self.shared.per_second[second].fetch_add(1, Ordering::Relaxed);
                        stats.committed += 1;
                        stats.txn.saturating_record(as_us(done - started));
                        stats.commit.saturating_record(as_us(commit));
                    }
                }
                TxnResult::Aborted => {
                    self.shared.aborted.fetch_add(1, Ordering::Relaxed);
                    if counted {
                        stats.aborted += 1;
                    }
                }
                TxnResult::Error(kind, msg) => {
                    self.shared.error(&kind, msg);
                    // Do not spin on a dead cluster.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        stats
    }

    /// One transaction, from begin to the commit answer.
    async fn one(&self) -> TxnResult {
        let timeout = if self.pooled_begin { None } else { Some(TXN_TIMEOUT) };
        let txn = match self.client.begin(timeout).await {
            Ok(t) => t,
            Err(e) if e.is_retryable_abort() => return TxnResult::Aborted,
            Err(e) => return error("begin", &e),
        };
        let ops: Result<(), ClientError> = async {
            match self.keys.workload {
                Workload::Transfer if self.sequential_ops => {
                    let (from, to) = self.keys.transfer_pair();
                    let (from, to) = (self.keys.name(from), self.keys.name(to));
                    let a = balance(txn.get_for_update(from.as_bytes()).await?);
                    let b = balance(txn.get_for_update(to.as_bytes()).await?);
                    txn.put(from.as_bytes(), (a - 1).to_string().as_bytes()).await?;
                    txn.put(to.as_bytes(), (b + 1).to_string().as_bytes()).await?;
                }
                Workload::Transfer => {
                    let (from, to) = self.keys.transfer_pair();
                    let (from, to) = (self.keys.name(from), self.keys.name(to));
                    // Both reads at once, then both writes at once.
                    let read =
                        txn.run(&[Op::get_for_update(from.as_bytes()), Op::get_for_update(to.as_bytes())]).await?;
                    let (a, b) =
                        (balance(read[0].value().map(<[u8]>::to_vec)), balance(read[1].value().map(<[u8]>::to_vec)));
                    txn.run(&[
                        Op::put(from.as_bytes(), (a - 1).to_string().as_bytes()),
                        Op::put(to.as_bytes(), (b + 1).to_string().as_bytes()),
                    ])
                    .await?;
                }
                Workload::Local => {
                    let key = self.keys.name(rand::rng().random_range(0..self.keys.count));
                    txn.put(key.as_bytes(), &self.value(&txn)).await?;
                }
                Workload::Spread if self.sequential_ops => {
                    for (i, read) in self.keys.spread(self.read_ratio) {
                        let key = self.keys.name(i);
                        if read {
                            txn.get(key.as_bytes()).await?;
                        } else {
                            txn.put(key.as_bytes(), &self.value(&txn)).await?;
                        }
                    }
                }
                Workload::Spread => {
                    // Every partition's key at once.
                    let ops: Vec<Op> = self
                        .keys
                        .spread(self.read_ratio)
                        .into_iter()
                        .map(|(i, read)| {
                            let key = self.keys.name(i);
                            if read { Op::get(key.as_bytes()) } else { Op::put(key.as_bytes(), &self.value(&txn)) }
                        })
                        .collect();
                    txn.run(&ops).await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = ops {
            let _ = txn.abort().await;
            return if e.is_retryable_abort() { TxnResult::Aborted } else { error("operation", &e) };
        }
        let t = Instant::now();
        match txn.commit().await {
            Ok(Outcome::Committed) => TxnResult::Committed { commit: t.elapsed() },
            Ok(Outcome::Aborted { .. }) => TxnResult::Aborted,
            Ok(Outcome::Forgotten { reason }) => {
                TxnResult::Error("FORGOTTEN".into(), format!("commit: outcome forgotten: {reason}"))
            }
            Err(e) if e.is_retryable_abort() => TxnResult::Aborted,
            Err(e) => error("commit", &e),
        }
    }

    /// The value a put writes: the tid, padded to `--value-bytes` if given.
    fn value(&self, txn: &twopc_client::Txn) -> Vec<u8> {
        let mut v = txn.tid().as_simple().to_string().into_bytes();
        if self.value_bytes > 0 {
            v.resize(self.value_bytes, b'.');
        }
        v
    }
}

fn as_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn fmt_us(us: u64) -> String {
    if us >= 1000 { format!("{:.2} ms", us as f64 / 1000.0) } else { format!("{us} µs") }
}

fn print_report(r: &Report) {
    println!();
    println!(
        "workload {}, {} partitions, concurrency {}, {}s measured after {}s warm-up, {} keys{}",
        workload_name(r.workload),
        r.partitions,
        r.concurrency,
        r.duration_secs,
        r.warmup_secs,
        r.keys,
        if r.workload == Workload::Spread { format!(", read ratio {}", r.read_ratio) } else { String::new() }
    );
    println!(
        "client: operations {}, {}",
        if r.sequential_ops { "one after another (--sequential-ops)" } else { "independent ones at once (Txn::run)" },
        if r.tid_pool > 0 {
            format!("tids from a pool reserved in blocks of {}", r.tid_pool)
        } else {
            "a Begin per transaction (--tid-pool 0)".to_string()
        }
    );
    println!(
        "cluster: {} at {}",
        if r.external_cluster {
            "external"
        } else if r.ha {
            "local, started by the bench: 3 coordinators, decision log on a 3-member etcd (the floor below counts a local fsync for the COMMIT record; etcd's write costs more)"
        } else {
            "local, started by the bench"
        },
        r.coordinator
    );
    println!(
        "committed {} ({:.1} txn/s), aborted {} (abort rate {:.2}%), errors {}",
        r.committed,
        r.committed_per_sec,
        r.aborted,
        r.abort_rate * 100.0,
        r.errors
    );
    if !r.error_kinds.is_empty() {
        println!("errors by kind: {}", kinds_line(&r.error_kinds));
    }
    for e in &r.first_errors {
        println!("  error: {e}");
    }
    let f = &r.floor;
    println!(
        "floor: 2 × RTT {:.1} µs + 2 × fsync {:.1} µs = {} (fsync measured in {}{})",
        f.rtt_median_us,
        f.fsync_median_us,
        fmt_us(f.floor_us.round() as u64),
        f.fsync_dir,
        if f.fsync_in_temp_dir { ", a temporary directory: the cluster is external" } else { "" }
    );
    println!(
        "shared-disk floor: 2 × RTT + {} concurrent fsyncs {:.1} µs + fsync = {} (this machine's processes share one disk)",
        r.partitions,
        f.parallel_fsync_median_us,
        fmt_us(f.shared_disk_floor_us.round() as u64)
    );
    if let Some(w) = r.etcd_write_median_us {
        println!(
            "etcd write (one transaction, alone): median {} — what the COMMIT record costs here instead of an fsync",
            fmt_us(w.round() as u64)
        );
    }
    let ratio = |us: u64| if f.floor_us > 0.0 { us as f64 / f.floor_us } else { 0.0 };
    for (title, p) in
        [("transaction (begin → commit answer)", &r.txn_latency_us), ("commit call", &r.commit_latency_us)]
    {
        println!("latency, {title}:");
        for (name, us) in p.named() {
            println!("  {name:<5} {:>10}  ({:.1}× floor)", fmt_us(us), ratio(us));
        }
    }
    if let Some(d) = &r.decay {
        println!(
            "throughput, first {w} s: {:.1} txn/s, last {w} s: {:.1} txn/s (last/first {:.2})",
            d.first_per_sec,
            d.last_per_sec,
            d.last_to_first,
            w = d.window_secs
        );
    }
    if let (Some(expected), Some(conserved)) = (r.expected_total, r.conserved) {
        println!(
            "sum of all balances: {} (expected {expected}): {}",
            r.total_balance.unwrap_or(0),
            if conserved { "conserved" } else { "NOT CONSERVED" }
        );
    }
}
