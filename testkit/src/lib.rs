//! Crash tests for applications built on twopc.
//!
//! Add this crate as a dev-dependency, start a [`Cluster`] of real `twopc`
//! processes (a coordinator and N participants on loopback ports chosen at
//! run time, data in a temporary directory), run your application against
//! its connected [`Client`], and crash it where it hurts: SIGKILL, pause
//! (SIGSTOP) and resume, graceful termination and restart of any process
//! ([`Target`]); a process killed exactly at a protocol step by a typed
//! [`Failpoint`] armed with an [`Action`]. Then wait until the cluster is
//! [settled](Cluster::settle) and check what your application's user sees.
//!
//! Everything is cleaned up when the [`Cluster`] drops, also when the test
//! panics (then the end of every process's log is printed); processes also
//! die with the test process. Tests may run in parallel: each cluster has
//! its own ports and directory. Set `TWOPC_KEEP_TEST_DATA=1` to keep the
//! directory (logs included).
//!
//! The `twopc` binary is found through the `TWOPC_BIN` environment
//! variable, else on `PATH`, else next to the test executable's target
//! directory (`target/debug/twopc`, for a workspace that builds it), or
//! is given with [`ClusterBuilder::binary`] (twopc's own tests pass
//! `env!("CARGO_BIN_EXE_twopc")`). It must be built with failpoints (the
//! default features) to arm them.
//!
//! ```no_run
//! use std::time::Duration;
//! use twopc_testkit::{Action, Cluster, Failpoint, Target};
//!
//! #[tokio::test]
//! async fn a_commit_survives_a_coordinator_crash_after_its_decision() {
//!     let mut cluster = Cluster::builder().partitions(2).start().await.unwrap();
//!     let (a, b) = (cluster.key_on(0, "alice"), cluster.key_on(1, "bob"));
//!     cluster.arm(Target::Coordinator, Failpoint::AfterDecisionForced, Action::Kill).await.unwrap();
//!
//!     let txn = cluster.client().begin(None).await.unwrap();
//!     txn.put(a.as_bytes(), b"90").await.unwrap();
//!     txn.put(b.as_bytes(), b"10").await.unwrap();
//!     let _lost = txn.commit().await; // the coordinator dies before it answers
//!
//!     cluster.wait_exit(Target::Coordinator, Duration::from_secs(20)).await.unwrap();
//!     cluster.restart(Target::Coordinator).await.unwrap();
//!     cluster.settle(Duration::from_secs(30)).await.unwrap();
//!     assert_eq!(cluster.client().status(txn.tid()).await.unwrap(), twopc_client::Decision::Committed);
//!     assert_eq!(cluster.client().read(b.as_bytes()).await.unwrap().as_deref(), Some(&b"10"[..]));
//! }
//! ```
//!
//! Two things to know: a commit is answered once decided while its phase 2
//! may still run, so **settle before arming a failpoint** (or the previous
//! transaction's phase 2 may hit it); and a transaction touching **one
//! partition commits in one phase**, so the two-phase failpoints need keys
//! on two partitions ([`Cluster::key_on`]) or the one-phase ones
//! ([`Failpoint::AfterDelegationForced`], ...).
//!
//! From other languages, `twopc cluster start|kill|pause|resume|restart|settle|stop`
//! does the same from the command line (README: "Testing your application
//! under crashes").
//!
//! Modules: [`cluster`] (the processes themselves: [`cluster::LocalCluster`],
//! [`cluster::Proc`]), [`etcd_cluster`] (a local etcd for the
//! high-availability mode), [`failpoint`], [`settle`].

pub mod cluster;
pub mod etcd_cluster;
pub mod failpoint;
pub mod settle;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

pub use failpoint::{Action, Failpoint, Role};
pub use settle::{Pending, Unsettled};
pub use twopc_client::{Client, ConnectOptions, Decision, Outcome};

use cluster::{ClusterOptions, HaOptions, LocalCluster};
use etcd_cluster::EtcdCluster;
use twopc_client::{AdminToken, FailpointTarget, TlsArgs};

/// How long processes may take to start and register, and a restarted
/// client to connect.
const READY: Duration = Duration::from_secs(30);

/// How long arming or disarming a failpoint may take.
const ARM_TIMEOUT: Duration = Duration::from_secs(10);

/// Every failure of the kit. Its `Debug` is its message, so the
/// `.unwrap()` of a test prints the actionable sentence.
#[derive(thiserror::Error)]
pub enum KitError {
    /// No `twopc` binary: set `TWOPC_BIN` or put it on `PATH`.
    #[error(
        "the twopc binary was not found: set TWOPC_BIN to its path, put it on PATH (`cargo install --path .` in \
         twopc's repository), or pass ClusterBuilder::binary"
    )]
    BinaryNotFound,
    /// A setting, target or action the kit cannot use (TLS files that do
    /// not load, a process the cluster does not have, an [`Action`] fail-rs
    /// cannot express).
    #[error("invalid: {0}")]
    Invalid(String),
    /// A process did not start, register or restart in time.
    #[error("{0}")]
    Process(String),
    /// A call to the cluster failed.
    #[error(transparent)]
    Client(#[from] twopc_client::ClientError),
    /// A failpoint armed in a process of the wrong role.
    #[error("failpoint {failpoint} lives in the {role:?}, not in {target}")]
    WrongRole { failpoint: Failpoint, role: Role, target: Target },
    /// [`Cluster::settle`] ran out of time.
    #[error(transparent)]
    Unsettled(#[from] Unsettled),
    /// A deadline passed waiting for something else.
    #[error("{0}")]
    Timeout(String),
}

impl fmt::Debug for KitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn process_error(e: anyhow::Error) -> KitError {
    KitError::Process(format!("{e:#}"))
}

/// One process of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The coordinator (in HA mode coordinator 0; failpoints go to the leader).
    Coordinator,
    /// Coordinator `i` of an HA cluster (0 is [`Target::Coordinator`]).
    CoordinatorAt(usize),
    /// The participant serving partition `p`.
    Participant(u32),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Coordinator | Target::CoordinatorAt(0) => f.write_str("coordinator"),
            Target::CoordinatorAt(i) => write!(f, "coordinator{i}"),
            Target::Participant(p) => write!(f, "p{p}"),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    /// `coordinator`, `coordinatorI` (HA), or `pN` (the participant of partition N).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a process: use `coordinator` or `p0`, `p1`, ... (a partition)");
        if s == "coordinator" {
            return Ok(Target::Coordinator);
        }
        if let Some(i) = s.strip_prefix("coordinator") {
            return i.parse().map(Target::CoordinatorAt).map_err(|_| bad());
        }
        s.strip_prefix('p').and_then(|p| p.parse().ok()).map(Target::Participant).ok_or_else(bad)
    }
}

/// The TLS files of a cluster (PEM): every process serves TLS with
/// `cert`/`key` and requires peers' certificates signed by `ca` (mutual
/// TLS); the kit's client presents the same certificate.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The name in the certificates, when it is not the host dialled (`127.0.0.1`).
    pub domain: Option<String>,
}

/// Settings of a [`Cluster`]: start with [`Cluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    binary: Option<PathBuf>,
    dir: Option<PathBuf>,
    opts: ClusterOptions,
    tls: Option<TlsFiles>,
    admin_token: Option<String>,
}

impl ClusterBuilder {
    /// Number of partitions (one participant each); 3 by default.
    pub fn partitions(mut self, n: u32) -> Self {
        self.opts.partitions = n;
        self
    }

    /// The `twopc` binary to run (default: `TWOPC_BIN`, else `PATH`).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Keep data and logs in `dir` (created if missing, left in place);
    /// by default a temporary directory removed on drop.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// How long the coordinator waits for votes before aborting (its
    /// `--prepare-timeout-ms`, 2 s by default): shorten it to see a lost
    /// vote (C5) abort sooner.
    pub fn prepare_timeout(self, d: Duration) -> Self {
        self.coordinator_arg("--prepare-timeout-ms").coordinator_arg(d.as_millis().to_string())
    }

    /// A transaction's timeout when the client asks for none (the
    /// coordinator's `--default-timeout-ms`, 10 s by default): after it a
    /// transaction whose client vanished (C8) is aborted.
    pub fn default_txn_timeout(self, d: Duration) -> Self {
        self.coordinator_arg("--default-timeout-ms").coordinator_arg(d.as_millis().to_string())
    }

    /// Whether a transaction that touched one partition commits in one
    /// phase (the coordinator's `--one-phase`, on by default).
    pub fn one_phase(self, on: bool) -> Self {
        self.coordinator_arg("--one-phase").coordinator_arg(on.to_string())
    }

    /// The admin token every process requires on admin calls; the kit's
    /// client sends it.
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.admin_token = Some(token.clone());
        self.env("TWOPC_ADMIN_TOKEN", token)
    }

    /// The cluster's shared secret on the calls between its processes.
    pub fn peer_token(self, token: impl Into<String>) -> Self {
        self.env("TWOPC_PEER_TOKEN", token)
    }

    /// Mutual TLS everywhere (see [`TlsFiles`]).
    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.tls = Some(files);
        self
    }

    /// High availability: `coordinators` coordinators on a 3-member etcd
    /// started in the cluster's directory (etcd on `PATH`).
    pub fn ha(mut self, coordinators: usize) -> Self {
        self.opts.ha = Some(HaOptions { coordinators, ..HaOptions::new("") });
        self
    }

    /// The coordinators' web console on a loopback port each (`--console-addr
    /// 127.0.0.1:0`): [`Cluster::console_url`] gives its URL (`https://...`
    /// with [`ClusterBuilder::tls`]; with [`ClusterBuilder::admin_token`] the
    /// API needs that token as `Authorization: Bearer`).
    pub fn console(mut self, on: bool) -> Self {
        self.opts.console = on;
        self
    }

    /// Replaces every setting by raw [`ClusterOptions`] (what the typed
    /// setters change; call them after this). An `ha` with empty
    /// `etcd_endpoints` gets a 3-member etcd started by the kit; with
    /// endpoints, that etcd is used.
    pub fn options(mut self, opts: ClusterOptions) -> Self {
        self.opts = opts;
        self
    }

    /// One more raw coordinator flag or value (`--max-open-txns`, `100`).
    pub fn coordinator_arg(mut self, arg: impl Into<String>) -> Self {
        self.opts.coordinator_args.push(arg.into());
        self
    }

    /// One more raw participant flag or value (`--max-value-bytes`, `4096`).
    pub fn participant_arg(mut self, arg: impl Into<String>) -> Self {
        self.opts.participant_args.push(arg.into());
        self
    }

    /// An environment variable of every process (e.g. `FAILPOINTS` armed from the start).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.opts.env.push((key.into(), value.into()));
        self
    }

    /// Starts the processes, waits until every participant has registered
    /// (and in HA mode a coordinator leads), and connects a client.
    pub async fn start(mut self) -> Result<Cluster, KitError> {
        let exe = match self.binary.take() {
            Some(b) => b,
            None => find_binary().ok_or(KitError::BinaryNotFound)?,
        };
        if let Some(files) = &self.tls {
            let args = TlsArgs {
                tls_cert: Some(files.cert.clone()),
                tls_key: Some(files.key.clone()),
                tls_ca: Some(files.ca.clone()),
                tls_domain: files.domain.clone(),
            };
            self.opts.client.tls = args.client().map_err(KitError::Invalid)?;
            for (k, v) in [("TWOPC_TLS_CA", &files.ca), ("TWOPC_TLS_CERT", &files.cert), ("TWOPC_TLS_KEY", &files.key)]
            {
                self.opts.env.push((k.into(), v.display().to_string()));
            }
            if let Some(d) = &files.domain {
                self.opts.env.push(("TWOPC_TLS_DOMAIN".into(), d.clone()));
            }
        }
        if let Some(token) = &self.admin_token {
            self.opts.client.admin_token =
                AdminToken::new(Some(token.as_str())).map_err(|e| KitError::Invalid(e.to_string()))?;
        }
        let (tmp, dir) = match self.dir.take() {
            Some(d) => (None, d),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("twopc-kit-")
                    .tempdir()
                    .map_err(|e| KitError::Process(format!("cannot create a temporary directory: {e}")))?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let etcd = match self.opts.ha.as_mut() {
            Some(ha) if ha.etcd_endpoints.trim().is_empty() => {
                let etcd = EtcdCluster::start(&dir.join("etcd"), 3).map_err(process_error)?;
                ha.etcd_endpoints = etcd.endpoints();
                Some(etcd)
            }
            _ => None,
        };
        let local = LocalCluster::start(&exe, &dir, self.opts).map_err(process_error)?;
        let mut cluster = Cluster { local: Some(local), etcd, client: None, tmp };
        let ready = async {
            if cluster.local().is_ha() {
                cluster.local().leader(READY).await?;
            }
            cluster.local().wait_registered(READY).await
        };
        if let Err(e) = ready.await {
            return Err(KitError::Process(format!("the cluster did not come up: {e:#}\n{}", cluster.log_tails(20))));
        }
        cluster.reconnect().await?;
        Ok(cluster)
    }
}

/// Where the `twopc` binary is: `TWOPC_BIN`, else the first `twopc` on
/// `PATH`, else `twopc` in the target directory the running executable was
/// built in (`target/debug/deps/test-HASH` -> `target/debug/twopc`).
pub fn find_binary() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("TWOPC_BIN").filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(b));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("twopc"))
        .find(|c| is_executable(c));
    on_path.or_else(|| {
        let exe = std::env::current_exe().ok()?;
        exe.ancestors().skip(1).take(3).map(|d| d.join("twopc")).find(|c| is_executable(c))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running local cluster of real `twopc` processes, a connected client,
/// and the handles to crash them. See the [crate docs](crate) for an example.
pub struct Cluster {
    /// `Some` until drop (processes go before etcd and the directory).
    local: Option<LocalCluster>,
    etcd: Option<EtcdCluster>,
    client: Option<Client>,
    tmp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Settings, from the defaults: 3 partitions, plaintext, no tokens.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder { binary: None, dir: None, opts: ClusterOptions::default(), tls: None, admin_token: None }
    }

    /// The processes themselves, for what the kit does not wrap.
    pub fn local(&self) -> &LocalCluster {
        self.local.as_ref().expect("running")
    }

    /// The processes themselves, mutably.
    pub fn local_mut(&mut self) -> &mut LocalCluster {
        self.local.as_mut().expect("running")
    }

    /// The etcd of an HA cluster.
    pub fn etcd(&mut self) -> Option<&mut EtcdCluster> {
        self.etcd.as_mut()
    }

    /// A client connected to the cluster (reconnected after each restart).
    /// Clone it to keep it across restarts.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("connected")
    }

    /// The directory with the processes' data and logs.
    pub fn dir(&self) -> &Path {
        &self.local().dir
    }

    /// What a client's `--coordinator` takes (`A` or `A,B,C`).
    pub fn coordinator_addr(&self) -> String {
        self.local().coordinator_addr()
    }

    /// The web console's URL (`http://127.0.0.1:PORT/`) of the coordinator
    /// (coordinator 0 in HA mode), when started with [`ClusterBuilder::console`].
    /// A restarted coordinator keeps it.
    pub fn console_url(&self) -> Option<String> {
        self.local().console_url()
    }

    /// How the kit's client connects (TLS, admin token): for more clients.
    pub fn connect_options(&self) -> &ConnectOptions {
        self.local().connect_options()
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.local().partitions()
    }

    /// A key named after `name` that lives on partition `p` (`name-0`, `name-1`, ...).
    pub fn key_on(&self, p: u32, name: &str) -> String {
        assert!(p < self.partitions(), "no partition {p}");
        (0..)
            .map(|i| format!("{name}-{i}"))
            .find(|k| twopc_client::partition_for(k.as_bytes(), self.partitions()) == p)
            .expect("some key lands on every partition")
    }

    /// Refuses a target this cluster does not have, naming what it has.
    fn check_target(&self, target: Target) -> Result<(), String> {
        let local = self.local();
        let exists = match target {
            Target::Coordinator => true,
            Target::CoordinatorAt(i) => i < local.coordinator_count(),
            Target::Participant(p) => p < local.partitions(),
        };
        if exists {
            return Ok(());
        }
        Err(format!(
            "no {target} in this cluster: it has {} coordinator(s) and partitions 0..={}",
            local.coordinator_count(),
            local.partitions().saturating_sub(1)
        ))
    }

    fn proc_mut(&mut self, target: Target) -> &mut cluster::Proc {
        if let Err(e) = self.check_target(target) {
            panic!("{e}");
        }
        let local = self.local_mut();
        match target {
            Target::Coordinator => local.coordinator_proc(0),
            Target::CoordinatorAt(i) => local.coordinator_proc(i),
            Target::Participant(p) => &mut local.participants[p as usize],
        }
    }

    /// The process id of `target` (None once killed).
    pub fn pid(&mut self, target: Target) -> Option<u32> {
        self.proc_mut(target).pid()
    }

    /// SIGKILL `target` (idempotent): no destructor runs, nothing is flushed.
    pub fn kill(&mut self, target: Target) {
        self.proc_mut(target).kill();
    }

    /// Freeze `target` (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn pause(&mut self, target: Target) {
        self.proc_mut(target).pause();
    }

    /// Let a paused `target` run again (SIGCONT).
    pub fn resume(&mut self, target: Target) {
        self.proc_mut(target).resume();
    }

    /// Ask `target` to stop gracefully (SIGTERM) and wait up to `timeout`
    /// for it to exit.
    pub async fn terminate(&mut self, target: Target, timeout: Duration) -> Result<std::process::ExitStatus, KitError> {
        self.proc_mut(target).terminate();
        self.wait_exit(target, timeout).await
    }

    /// Whether `target` runs.
    pub fn is_running(&mut self, target: Target) -> bool {
        self.proc_mut(target).is_running()
    }

    /// Waits (polling, without blocking the runtime) until `target` exits
    /// by itself, e.g. killed by a failpoint; returns how it ended.
    pub async fn wait_exit(&mut self, target: Target, timeout: Duration) -> Result<std::process::ExitStatus, KitError> {
        let deadline = Instant::now() + timeout;
        loop {
            let proc = self.proc_mut(target);
            if let Some(status) = proc.exit_status() {
                proc.kill(); // reaps it; its status stays
                return Ok(status);
            }
            if proc.pid().is_none() {
                return Err(KitError::Process(format!("{target} was already killed and reaped")));
            }
            if Instant::now() >= deadline {
                return Err(KitError::Timeout(format!("{target} still runs after {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Restarts `target` on its own data (killing it first if it still
    /// runs); a coordinator keeps its address, a participant takes a new
    /// port and re-registers. Waits until it is back and reconnects the
    /// client; while no coordinator runs (a participant restarted first,
    /// C9) there is nothing to register with, so it only starts it.
    pub async fn restart(&mut self, target: Target) -> Result<(), KitError> {
        let local = self.local_mut();
        match target {
            Target::Coordinator => local.restart_coordinator_i(0, &[]),
            Target::CoordinatorAt(i) => local.restart_coordinator_i(i, &[]),
            Target::Participant(p) => local.restart_participant(p, &[]),
        }
        .map_err(process_error)?;
        let local = self.local_mut();
        if !(0..local.coordinator_count()).any(|i| local.coordinator_proc(i).is_running()) {
            return Ok(());
        }
        if self.local().is_ha() {
            self.local().leader(READY).await.map_err(process_error)?;
        }
        self.local().wait_registered(READY).await.map_err(process_error)?;
        self.reconnect().await
    }

    /// A fresh client (retrying while a coordinator restarts).
    pub async fn reconnect(&mut self) -> Result<(), KitError> {
        let addr = self.coordinator_addr();
        let options = self.connect_options().clone();
        let deadline = Instant::now() + READY;
        loop {
            match Client::connect_with(&addr, options.clone()).await {
                Ok(c) => {
                    self.client = Some(c);
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Arms `failpoint` with `action` in `target` (a coordinator failpoint
    /// in [`Target::Coordinator`], which in HA mode means the leader, as
    /// does any [`Target::CoordinatorAt`]; a participant's in
    /// [`Target::Participant`]). Refused with [`KitError::Invalid`]: a target
    /// the cluster does not have, an action fail-rs cannot express
    /// ([`Action::check`]).
    pub async fn arm(&self, target: Target, failpoint: Failpoint, action: Action) -> Result<(), KitError> {
        action.check().map_err(KitError::Invalid)?;
        self.set_failpoint(target, failpoint, &action.spec()).await
    }

    /// Disarms `failpoint` in `target` (a paused step goes on).
    pub async fn disarm(&self, target: Target, failpoint: Failpoint) -> Result<(), KitError> {
        self.set_failpoint(target, failpoint, "").await
    }

    async fn set_failpoint(&self, target: Target, failpoint: Failpoint, spec: &str) -> Result<(), KitError> {
        self.check_target(target).map_err(KitError::Invalid)?;
        let to = match (target, failpoint.role()) {
            (Target::Coordinator | Target::CoordinatorAt(_), Role::Coordinator) => FailpointTarget::Coordinator,
            (Target::Participant(p), Role::Participant) => FailpointTarget::Partition(p),
            (target, role) => return Err(KitError::WrongRole { failpoint, role, target }),
        };
        // A frozen process (SIGSTOPped) answers nothing: the client's own
        // admin deadline, or this one, ends the wait; either is a timeout.
        let timeout = || {
            KitError::Timeout(format!(
                "setting failpoint {failpoint} in {target}: no answer within {ARM_TIMEOUT:?} (is it paused with \
                 SIGSTOP?)"
            ))
        };
        match tokio::time::timeout(ARM_TIMEOUT, self.client().set_failpoint(to, failpoint.name(), spec)).await {
            Ok(Err(e)) if e.code() == tonic::Code::DeadlineExceeded => Err(timeout()),
            Ok(answer) => Ok(answer?),
            Err(_) => Err(timeout()),
        }
    }

    /// What keeps the cluster unsettled right now (empty: settled).
    pub async fn pending(&self) -> Vec<Pending> {
        let addrs: Vec<String> = self.local().participants.iter().map(|p| p.addr.to_string()).collect();
        settle::pending(self.client(), &addrs, self.connect_options()).await
    }

    /// Waits until nothing is in doubt, no tid is open, no lock is held
    /// and the coordinator has no unfinished transaction; fails at
    /// `timeout` saying what is still unsettled ([`Unsettled`]).
    pub async fn settle(&self, timeout: Duration) -> Result<(), Unsettled> {
        let addrs: Vec<String> = self.local().participants.iter().map(|p| p.addr.to_string()).collect();
        settle::settle(self.client(), &addrs, self.connect_options(), timeout).await
    }

    /// The log file of `target`.
    pub fn log_path(&self, target: Target) -> PathBuf {
        match target {
            Target::Coordinator => self.local().coordinator_log(0),
            Target::CoordinatorAt(i) => self.local().coordinator_log(i),
            Target::Participant(p) => self.dir().join(format!("p{p}.log")),
        }
    }

    /// The last `lines` lines of every process's log, named.
    pub fn log_tails(&self, lines: usize) -> String {
        let local = self.local();
        let mut logs: Vec<PathBuf> = (0..local.coordinator_count()).map(|i| local.coordinator_log(i)).collect();
        logs.extend((0..local.partitions()).map(|p| self.dir().join(format!("p{p}.log"))));
        if let Some(etcd) = &self.etcd {
            logs.extend((0..etcd.len()).map(|i| etcd.log_path(i).to_path_buf()));
        }
        let mut out = String::new();
        for path in logs {
            let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
            out.push_str(&format!("---- {name}\n{}\n", cluster::log_tail(&path, lines)));
        }
        out
    }
}

/// A [`Cluster`] taken apart ([`Cluster::into_parts`]): whoever holds the
/// parts owns the cleanup (processes die with `local`, then `etcd`; the
/// directory goes with `temp_dir`, if the kit created it).
pub struct ClusterParts {
    pub local: LocalCluster,
    pub etcd: Option<EtcdCluster>,
    pub client: Client,
    pub temp_dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// The processes, etcd, client and temporary directory, for a harness
    /// of its own (twopc's own tests keep their `TestCluster` this way).
    pub fn into_parts(mut self) -> ClusterParts {
        ClusterParts {
            local: self.local.take().expect("running"),
            etcd: self.etcd.take(),
            client: self.client.take().expect("connected"),
            temp_dir: self.tmp.take(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() && self.local.is_some() {
            eprintln!("{}", self.log_tails(40));
        }
        // Processes first (they hold files in the directory), then etcd, then the directory.
        self.client = None;
        self.local = None;
        self.etcd = None;
        if let Some(tmp) = self.tmp.take()
            && std::env::var_os("TWOPC_KEEP_TEST_DATA").is_some()
        {
            eprintln!("test data kept in {}", tmp.keep().display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        for (s, t) in [
            ("coordinator", Target::Coordinator),
            ("coordinator2", Target::CoordinatorAt(2)),
            ("p0", Target::Participant(0)),
            ("p12", Target::Participant(12)),
        ] {
            assert_eq!(s.parse::<Target>().unwrap(), t);
            assert_eq!(t.to_string(), s);
        }
        for bad in ["", "p", "px", "coord", "participant1", "coordinatorx"] {
            let e = bad.parse::<Target>().unwrap_err();
            assert!(e.contains("use `coordinator` or `p0`"), "{e}");
        }
    }

    /// `.unwrap()` and `?` in a test print an error with `{:?}`: it must
    /// carry the same actionable sentence as `{}`, not `BinaryNotFound`.
    #[test]
    fn debug_of_an_error_is_its_message() {
        let e = KitError::BinaryNotFound;
        assert_eq!(format!("{e:?}"), e.to_string());
        assert!(format!("{e:?}").contains("TWOPC_BIN"));
        let e = KitError::Process("p0 exited before it was ready; its log ends:\nboom".into());
        assert_eq!(format!("{e:?}"), "p0 exited before it was ready; its log ends:\nboom");
    }
}
