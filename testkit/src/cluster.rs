//! Real processes on loopback: a coordinator and N participants started from
//! the `twopc` binary, each on a port it picks itself (port 0) and reports
//! on its `listening on ADDR` line, with data under one directory.
//!
//! Used by `twopc demo` and by the integration tests, so both exercise the
//! very binaries an operator runs. Every child is killed (SIGKILL) when its
//! handle drops, and also when the process that started it dies
//! (`PR_SET_PDEATHSIG`), so a failing or killed test leaves nothing behind.
//! That signal follows the forking *thread*, so children are forked by one
//! thread that lives as long as the process: a cluster outlives the thread
//! (a test's, a runtime worker's) that started it.
//! A restarted coordinator reuses its address (participants are configured
//! with it); a restarted participant takes a new port and re-registers,
//! keeping its partition and data.
//!
//! **HA mode** ([`ClusterOptions::ha`], PROTOCOL.md rules 14-16): several
//! coordinators share a decision log on etcd (started separately, e.g. with
//! [`crate::etcd_cluster::EtcdCluster`]); one leads, the others stand by and
//! point callers at the leader. Each coordinator keeps its address across
//! restarts, and participants are given the whole list (`--coordinator
//! A,B,C`), so they find whoever leads. The leader is observed, never
//! assumed: [`LocalCluster::leader`] polls the coordinators' standard gRPC
//! health (`twopc.v1.Coordinator` is SERVING only on the leader).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

/// How long a process may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One running child process of the `twopc` binary.
pub struct Proc {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub name: String,
    paused: bool,
    /// How the last child exited, once a wait or [`Proc::kill`] reaped it.
    exit: Option<std::process::ExitStatus>,
    /// Started with [`Proc::start_detached`]: dropping the handle leaves it running.
    detached: bool,
    /// The web console's URL, when the process printed a `console on URL`
    /// line before its readiness line (a coordinator with `--console-addr`).
    pub console: Option<String>,
}

impl Proc {
    /// Starts `exe args` with `env`, stderr appended to `log`, and waits for
    /// its readiness line.
    pub fn start(
        exe: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
        name: &str,
    ) -> anyhow::Result<Proc> {
        let mut child = spawn(exe, args, env, log, false)?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        let (console_tx, console_rx) = mpsc::channel();
        // Reads the readiness line (and the console's, printed before it),
        // then keeps draining stdout so the child never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                } else if let Some(url) = line.strip_prefix("console on ") {
                    let _ = console_tx.send(url.trim().to_string());
                }
            }
        });
        let mut proc = Proc::new(child, "0.0.0.0:0".parse().unwrap(), name);
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => {
                proc.console = console_rx.try_iter().last();
                proc.addr = addr.parse().with_context(|| format!("{name} printed a bad address {addr:?}"))?;
                Ok(proc)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                proc.kill();
                bail!("{name} did not become ready within {START_TIMEOUT:?}; its log ends:\n{}", log_tail(log, 20))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                proc.kill();
                bail!("{name} exited before it was ready; its log ends:\n{}", log_tail(log, 20))
            }
        }
    }

    /// Like [`Proc::start`], but the process outlives this handle and the
    /// process that started it: it runs in its own session (`setsid`), with
    /// no parent-death signal, stdout and stderr appended to `log`, where
    /// its readiness line is read. Dropping the handle leaves it running;
    /// [`Proc::kill`] still kills it.
    pub fn start_detached(
        exe: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
        name: &str,
    ) -> anyhow::Result<Proc> {
        // Only what the process prints from now on counts (a restart appends to the old log).
        let from = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let child = spawn_with(exe, args, env, log, true, true)?;
        let mut proc = Proc::new(child, "0.0.0.0:0".parse().unwrap(), name);
        proc.detached = true;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read(log).unwrap_or_default();
            let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
            if let Some(addr) = text.lines().find_map(|l| l.strip_prefix("listening on ")) {
                proc.addr = addr.trim().parse().with_context(|| format!("{name} printed a bad address {addr:?}"))?;
                proc.console = text.lines().find_map(|l| l.strip_prefix("console on ")).map(|u| u.trim().to_string());
                return Ok(proc);
            }
            if !proc.is_running() {
                proc.kill();
                bail!("{name} exited before it was ready; its log ends:\n{}", log_tail(log, 20))
            }
            if Instant::now() >= deadline {
                proc.kill();
                bail!("{name} did not become ready within {START_TIMEOUT:?}; its log ends:\n{}", log_tail(log, 20))
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `exe args` with stdout and stderr appended to `log`, without
    /// waiting for anything: for programs that print no readiness line (etcd),
    /// whose readiness the caller checks itself. `addr` is where it serves.
    pub fn spawn(exe: &Path, args: &[String], log: &Path, name: &str, addr: SocketAddr) -> anyhow::Result<Proc> {
        let child = spawn(exe, args, &[], log, true)?;
        Ok(Proc::new(child, addr, name))
    }

    fn new(child: Child, addr: SocketAddr, name: &str) -> Proc {
        Proc {
            child: Some(child),
            addr,
            name: name.to_string(),
            paused: false,
            exit: None,
            detached: false,
            console: None,
        }
    }

    /// The process id, until [`Proc::kill`] (or a wait that saw it exit) reaped it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets and state but
    /// answers nothing, like a process stuck in a long GC pause or swapped out.
    pub fn pause(&mut self) {
        if self.send_signal(libc::SIGSTOP) {
            self.paused = true;
        }
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&mut self) {
        if self.send_signal(libc::SIGCONT) {
            self.paused = false;
        }
    }

    /// Whether [`Proc::pause`] froze it and it was not resumed (or killed) since.
    pub fn is_paused(&self) -> bool {
        self.paused && self.child.is_some()
    }

    /// Sends `signal` if the child has not been reaped (so its pid cannot
    /// have been reused by another process).
    fn send_signal(&mut self, signal: libc::c_int) -> bool {
        let Some(child) = self.child.as_mut() else { return false };
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // child's, alive or a zombie, not reaped (checked above).
        unsafe { libc::kill(child.id() as libc::pid_t, signal) == 0 }
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // A child that had already exited keeps its own status.
            self.exit = child.wait().ok();
        }
        self.paused = false;
    }

    /// Asks the process to stop gracefully (SIGTERM). A paused process
    /// would act on it only once resumed, so it is resumed too.
    pub fn terminate(&mut self) {
        if self.send_signal(libc::SIGTERM) && self.paused {
            self.resume();
        }
    }

    /// Whether the process is still running (false once it exited or was killed).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// How the process ended (its code, or the signal that killed it):
    /// `None` while it runs. Known once it exited by itself (e.g. a deposed
    /// HA leader's exit code 75, or SIGABRT from a failpoint) or was reaped
    /// by [`Proc::wait_exit`] or [`Proc::kill`] (then SIGKILL, unless it had
    /// exited already).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten(),
            None => self.exit,
        }
    }

    /// Waits until the process exits by itself (e.g. killed by a failpoint).
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                self.kill();
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// Spawns `exe args` with `env`, stderr (and stdout too when
/// `stdout_to_log`, else piped) appended to `log`, killed with SIGKILL when
/// this process dies.
fn spawn(
    exe: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
    stdout_to_log: bool,
) -> anyhow::Result<Child> {
    spawn_with(exe, args, env, log, stdout_to_log, false)
}

/// [`spawn`]; `detach`: in its own session, without the parent-death signal.
fn spawn_with(
    exe: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
    stdout_to_log: bool,
    detach: bool,
) -> anyhow::Result<Child> {
    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open log {}", log.display()))
    };
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stderr(open_log()?);
    if stdout_to_log {
        cmd.stdout(open_log()?);
    } else {
        cmd.stdout(Stdio::piped());
    }
    // Logs are files (and tails printed on failure): no terminal colors,
    // unless the caller's `env` says otherwise.
    cmd.env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid, setsid and _exit are async-signal-safe; they only change the child.
    unsafe {
        cmd.pre_exec(move || {
            if detach {
                libc::setsid();
            } else {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The parent died before the signal was set up: nobody would kill this child.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
            }
            Ok(())
        });
    }
    if detach {
        return cmd.spawn().with_context(|| format!("cannot start {}", exe.display()));
    }
    spawn_from_forker(cmd).with_context(|| format!("cannot start {}", exe.display()))
}

/// Spawns `cmd` from one thread that lives as long as this process.
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
/// not the process: a child forked by a test's own thread (or a runtime's
/// worker, or a thread that set up a cluster shared by several tests) would
/// be SIGKILLed when that thread ends, while its handle still exists.
fn spawn_from_forker(cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static FORKER: std::sync::OnceLock<std::sync::Mutex<mpsc::Sender<Job>>> = std::sync::OnceLock::new();
    let forker = FORKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("twopc-testkit-forker".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the testkit's forker thread");
        std::sync::Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    let sent = forker.lock().unwrap_or_else(|e| e.into_inner()).send((cmd, reply));
    sent.map_err(|_| std::io::Error::other("the testkit's forker thread is gone"))?;
    answer.recv().map_err(|_| std::io::Error::other("the testkit's forker thread is gone"))?
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.detached {
            self.kill();
        }
    }
}

/// Settings of a local cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub partitions: u32,
    /// Extra coordinator flags (e.g. `--prepare-timeout-ms 500`), given to
    /// every coordinator.
    pub coordinator_args: Vec<String>,
    /// Extra participant flags.
    pub participant_args: Vec<String>,
    /// Start participants only for partitions below this (default: all).
    pub start_partitions: Option<u32>,
    /// Processes outlive their handles and the process that started them
    /// (`twopc cluster start`): each runs in its own session with no
    /// parent-death signal, its stdout goes to its log (where its
    /// readiness line is read), and dropping a handle does not kill it.
    pub detach: bool,
    /// Environment of every process, e.g. `TWOPC_TLS_CERT` and the other
    /// TLS files, `TWOPC_ADMIN_TOKEN` or `TWOPC_PEER_TOKEN` (the cluster's
    /// shared secret: the launcher itself never needs it); a restart's own
    /// variables come after.
    pub env: Vec<(String, String)>,
    /// How the launcher itself reaches the cluster (to wait for the
    /// participants to register): must match `env` when it turns on TLS or a token.
    pub client: twopc_client::ConnectOptions,
    /// Several coordinators on a replicated decision log in etcd (None: one
    /// coordinator with its SQLite decision log, as always).
    pub ha: Option<HaOptions>,
    /// Serve the web console on every coordinator (`--console-addr
    /// 127.0.0.1:0`; a restart keeps its address): see
    /// [`LocalCluster::console_url`].
    pub console: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            partitions: 3,
            coordinator_args: vec![],
            participant_args: vec![],
            start_partitions: None,
            detach: false,
            env: vec![],
            client: twopc_client::ConnectOptions::default(),
            ha: None,
            console: false,
        }
    }
}

/// The HA mode of a local cluster: `coordinators` coordinators started with
/// `--decision-log etcd --etcd-endpoints E --cluster-name N --lease-ttl-secs T`.
#[derive(Debug, Clone)]
pub struct HaOptions {
    /// How many coordinators (one leads, the others stand by).
    pub coordinators: usize,
    /// etcd client addresses, `HOST:PORT,HOST:PORT` (see
    /// [`crate::etcd_cluster::EtcdCluster::endpoints`]).
    pub etcd_endpoints: String,
    /// The coordinators' keys live under `/twopc/NAME/` in etcd: clusters
    /// sharing one etcd need different names.
    pub cluster_name: String,
    /// The leader's lease TTL: a dead leader is replaced after about this long.
    pub lease_ttl_secs: u64,
}

impl HaOptions {
    /// Three coordinators on `etcd_endpoints`, cluster name `default`, a 3 s lease
    /// (the coordinator's defaults).
    pub fn new(etcd_endpoints: impl Into<String>) -> HaOptions {
        HaOptions {
            coordinators: 3,
            etcd_endpoints: etcd_endpoints.into(),
            cluster_name: "default".into(),
            lease_ttl_secs: 3,
        }
    }
}

/// A coordinator (or, in HA mode, several) and its participants, as child processes.
pub struct LocalCluster {
    pub dir: PathBuf,
    exe: PathBuf,
    opts: ClusterOptions,
    /// The coordinator; in HA mode coordinator 0 (leading or not: see
    /// [`LocalCluster::leader`]).
    pub coordinator: Proc,
    /// HA mode: coordinators 1.. (empty otherwise). Reach any coordinator
    /// by index with [`LocalCluster::coordinator_proc`].
    pub extra_coordinators: Vec<Proc>,
    /// Each coordinator's address, fixed for the cluster's life (index = coordinator).
    coordinator_addrs: Vec<SocketAddr>,
    pub participants: Vec<Proc>,
}

/// How long one health or topology probe of a coordinator may take: a
/// paused (SIGSTOPped) coordinator accepts connections but never answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl LocalCluster {
    /// Starts a coordinator (or `ha.coordinators` of them) and
    /// `opts.partitions` participants of binary `exe`, with data and logs
    /// under `dir`.
    pub fn start(exe: &Path, dir: &Path, opts: ClusterOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let count = match &opts.ha {
            None => 1,
            Some(ha) => {
                anyhow::ensure!(ha.coordinators >= 1, "HA mode needs at least one coordinator");
                anyhow::ensure!(!ha.etcd_endpoints.trim().is_empty(), "HA mode needs etcd endpoints");
                ha.coordinators
            }
        };
        let mut procs: Vec<Proc> = Vec::with_capacity(count);
        for i in 0..count {
            match start_coordinator(exe, dir, &opts, i, "127.0.0.1:0", None, &[]) {
                Ok(p) => procs.push(p),
                Err(e) => {
                    // Detached processes would outlive their handles: kill them.
                    procs.iter_mut().for_each(Proc::kill);
                    return Err(e);
                }
            }
        }
        let coordinator_addrs = procs.iter().map(|p| p.addr).collect();
        let mut procs = procs.into_iter();
        let coordinator = procs.next().expect("at least one coordinator");
        let mut cluster = LocalCluster {
            dir: dir.to_path_buf(),
            exe: exe.to_path_buf(),
            opts,
            coordinator,
            extra_coordinators: procs.collect(),
            coordinator_addrs,
            participants: vec![],
        };
        for p in 0..cluster.opts.start_partitions.unwrap_or(cluster.opts.partitions) {
            match cluster.spawn_participant(p, &[]) {
                Ok(proc) => cluster.participants.push(proc),
                Err(e) => {
                    cluster.kill_all();
                    return Err(e);
                }
            }
        }
        Ok(cluster)
    }

    /// SIGKILLs every process of the cluster (detached ones too).
    pub fn kill_all(&mut self) {
        self.participants.iter_mut().for_each(Proc::kill);
        self.extra_coordinators.iter_mut().for_each(Proc::kill);
        self.coordinator.kill();
    }

    /// How to reach this cluster (TLS, admin token), as configured.
    pub fn connect_options(&self) -> &twopc_client::ConnectOptions {
        &self.opts.client
    }

    /// Number of partitions of the cluster (participants may be fewer).
    pub fn partitions(&self) -> u32 {
        self.opts.partitions
    }

    /// Whether this cluster runs in HA mode.
    pub fn is_ha(&self) -> bool {
        self.opts.ha.is_some()
    }

    /// What `--coordinator` takes: the coordinator's address, or in HA mode
    /// every coordinator's, comma-separated (`A,B,C`).
    pub fn coordinator_addr(&self) -> String {
        self.coordinator_addrs().join(",")
    }

    /// Every coordinator's address (one outside HA mode), by index.
    pub fn coordinator_addrs(&self) -> Vec<String> {
        self.coordinator_addrs.iter().map(SocketAddr::to_string).collect()
    }

    /// Number of coordinators (1 outside HA mode).
    pub fn coordinator_count(&self) -> usize {
        self.coordinator_addrs.len()
    }

    /// Coordinator `i`'s process.
    pub fn coordinator_proc(&mut self, i: usize) -> &mut Proc {
        match i {
            0 => &mut self.coordinator,
            _ => &mut self.extra_coordinators[i - 1],
        }
    }

    fn coordinator_ref(&self, i: usize) -> &Proc {
        match i {
            0 => &self.coordinator,
            _ => &self.extra_coordinators[i - 1],
        }
    }

    /// Restarts the coordinator (coordinator 0 in HA mode) on the same
    /// address and data.
    pub fn restart_coordinator(&mut self, env: &[(String, String)]) -> anyhow::Result<()> {
        self.restart_coordinator_i(0, env)
    }

    /// SIGKILLs coordinator `i` (idempotent).
    pub fn kill_coordinator(&mut self, i: usize) {
        self.coordinator_proc(i).kill();
    }

    /// Freezes coordinator `i` (SIGSTOP): it holds its connections and
    /// lease state but answers nothing, as in a long stall.
    pub fn pause_coordinator(&mut self, i: usize) {
        self.coordinator_proc(i).pause();
    }

    /// Lets a paused coordinator `i` run again (SIGCONT).
    pub fn resume_coordinator(&mut self, i: usize) {
        self.coordinator_proc(i).resume();
    }

    /// Restarts coordinator `i` (killing it first if it still runs) on its
    /// address and data, with `env` added to its environment. In HA mode it
    /// comes back as a standby unless nobody else leads.
    pub fn restart_coordinator_i(&mut self, i: usize, env: &[(String, String)]) -> anyhow::Result<()> {
        self.coordinator_proc(i).kill();
        let addr = self.coordinator_addrs[i].to_string();
        // The console keeps its address too (a page left open reconnects).
        let console = self.coordinator_ref(i).console.as_deref().and_then(console_addr_of).map(str::to_string);
        // The port was ours a moment ago; retry briefly in case the kernel
        // has not released it yet.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match start_coordinator(&self.exe, &self.dir, &self.opts, i, &addr, console.as_deref(), env) {
                Ok(p) => {
                    *self.coordinator_proc(i) = p;
                    return Ok(());
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!("coordinator {i} restart failed, retrying: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Restarts participant `p` on its data directory (at a new port).
    pub fn restart_participant(&mut self, p: u32, env: &[(String, String)]) -> anyhow::Result<()> {
        self.participants[p as usize].kill();
        let proc = self.spawn_participant(p, env)?;
        self.participants[p as usize] = proc;
        Ok(())
    }

    fn spawn_participant(&self, p: u32, env: &[(String, String)]) -> anyhow::Result<Proc> {
        self.spawn_participant_with(p, &self.coordinator_addr(), env)
    }

    /// Starts participant `p` on its data directory (at a new port) with
    /// `--coordinator coordinators` (one address, or a list `A,B,C` to
    /// follow the leader among), and returns it; the caller puts it in
    /// `participants` (index `p`) to have it waited for and cleaned up.
    pub fn spawn_participant_with(&self, p: u32, coordinators: &str, env: &[(String, String)]) -> anyhow::Result<Proc> {
        let args = participant_args(&self.dir, &self.opts, p, coordinators);
        let env = [&self.opts.env[..], env].concat();
        let log = self.dir.join(format!("p{p}.log"));
        start_proc(&self.opts, &self.exe, &args, &env, &log, &format!("participant {p}"))
    }

    /// The web console's URL of the coordinator (coordinator 0 in HA mode),
    /// e.g. `http://127.0.0.1:PORT/` (`https` with TLS), when started with
    /// [`ClusterOptions::console`].
    pub fn console_url(&self) -> Option<String> {
        self.console_url_i(0)
    }

    /// The web console's URL of coordinator `i`.
    pub fn console_url_i(&self, i: usize) -> Option<String> {
        self.coordinator_ref(i).console.clone()
    }

    /// Coordinator `i`'s log file (`coordinator.log`, or in HA mode `coordinator-<i>.log`).
    pub fn coordinator_log(&self, i: usize) -> PathBuf {
        coordinator_log(&self.dir, &self.opts, i)
    }
}

/// Coordinator `i`'s log file of a cluster in `dir`.
pub fn coordinator_log(dir: &Path, opts: &ClusterOptions, i: usize) -> PathBuf {
    match opts.ha {
        None => dir.join("coordinator.log"),
        Some(_) => dir.join(format!("coordinator-{i}.log")),
    }
}

/// The command line of participant `p` of a cluster in `dir`, on a port it
/// picks, with its data in `dir/pP`, reaching the coordinator(s) at `coordinators`.
pub fn participant_args(dir: &Path, opts: &ClusterOptions, p: u32, coordinators: &str) -> Vec<String> {
    let data = dir.join(format!("p{p}"));
    let mut args: Vec<String> = vec![
        "participant".into(),
        "--partition".into(),
        p.to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--coordinator".into(),
        coordinators.to_string(),
        "--data-dir".into(),
        data.display().to_string(),
    ];
    args.extend(opts.participant_args.iter().cloned());
    args
}

/// The command line of a coordinator of a cluster in `dir` listening on `listen`.
pub fn coordinator_args(dir: &Path, opts: &ClusterOptions, listen: &str) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "coordinator".into(),
        "--listen".into(),
        listen.into(),
        "--partitions".into(),
        opts.partitions.to_string(),
    ];
    match &opts.ha {
        None => args.extend(["--data-dir".into(), dir.join("coordinator").display().to_string()]),
        // No data directory: the decision log is in etcd. The advertised
        // address defaults to the bound one, which a restart keeps.
        Some(ha) => args.extend([
            "--decision-log".into(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            ha.etcd_endpoints.clone(),
            "--cluster-name".into(),
            ha.cluster_name.clone(),
            "--lease-ttl-secs".into(),
            ha.lease_ttl_secs.to_string(),
        ]),
    }
    if opts.console {
        args.extend(["--console-addr".into(), "127.0.0.1:0".into()]);
    }
    args.extend(opts.coordinator_args.iter().cloned());
    args
}

/// `HOST:PORT` of a console URL (`http://HOST:PORT/`).
fn console_addr_of(url: &str) -> Option<&str> {
    url.split_once("://").map(|(_, rest)| rest.trim_end_matches('/'))
}

fn start_coordinator(
    exe: &Path,
    dir: &Path,
    opts: &ClusterOptions,
    i: usize,
    listen: &str,
    console: Option<&str>,
    env: &[(String, String)],
) -> anyhow::Result<Proc> {
    let mut args = coordinator_args(dir, opts, listen);
    if let (Some(console), Some(at)) = (console, args.iter().position(|a| a == "--console-addr")) {
        args[at + 1] = console.to_string();
    }
    let env = [&opts.env[..], env].concat();
    let name = if opts.ha.is_some() { format!("coordinator {i}") } else { "coordinator".to_string() };
    start_proc(opts, exe, &args, &env, &coordinator_log(dir, opts, i), &name)
}

/// [`Proc::start`], or [`Proc::start_detached`] when `opts.detach`.
fn start_proc(
    opts: &ClusterOptions,
    exe: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
    name: &str,
) -> anyhow::Result<Proc> {
    if opts.detach { Proc::start_detached(exe, args, env, log, name) } else { Proc::start(exe, args, env, log, name) }
}

/// What one health probe of a coordinator found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorHealth {
    /// `twopc.v1.Coordinator` SERVING: it leads.
    Serving,
    /// NOT_SERVING (a standby) or another status.
    NotServing(String),
    /// Killed by the launcher or paused: not probed.
    Down,
    /// No answer within the probe's time limit, or an error.
    Unreachable(String),
}

impl LocalCluster {
    /// Waits (polling against a deadline) until the coordinator's topology
    /// lists every participant at its current address. In HA mode the
    /// topology is read from whichever coordinator answers (standbys refuse).
    pub async fn wait_registered(&self, timeout: Duration) -> anyhow::Result<()> {
        use twopc_proto::pb::{GetTopologyRequest, coordinator_client::CoordinatorClient};
        let want: Vec<(u32, String)> =
            self.participants.iter().enumerate().map(|(p, proc)| (p as u32, proc.addr.to_string())).collect();
        let deadline = Instant::now() + timeout;
        let mut last = String::from("coordinator not reachable");
        while Instant::now() < deadline {
            for i in 0..self.coordinator_count() {
                if self.coordinator_ref(i).pid().is_none() || self.coordinator_ref(i).is_paused() {
                    continue;
                }
                let addr = self.coordinator_addrs[i].to_string();
                let endpoint = self.opts.client.tls.endpoint(&addr).map_err(|e| anyhow!(e))?;
                let topology = tokio::time::timeout(PROBE_TIMEOUT, async {
                    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
                    CoordinatorClient::new(channel)
                        .get_topology(GetTopologyRequest {})
                        .await
                        .map_err(|s| format!("{}: {}", s.code(), s.message()))
                })
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")));
                match topology {
                    Ok(t) => {
                        let got: Vec<(u32, String)> =
                            t.into_inner().members.into_iter().map(|m| (m.partition, m.address)).collect();
                        if want.iter().all(|w| got.contains(w)) {
                            return Ok(());
                        }
                        last = format!("registered at {addr}: {got:?}, expected {want:?}");
                        break;
                    }
                    Err(e) => last = format!("coordinator {addr} not reachable: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("participants did not register within {timeout:?}: {last}")
    }

    /// One health probe of coordinator `i` (service `twopc.v1.Coordinator`).
    pub async fn coordinator_health(&self, i: usize) -> CoordinatorHealth {
        use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
        let proc = self.coordinator_ref(i);
        if proc.pid().is_none() || proc.is_paused() {
            return CoordinatorHealth::Down;
        }
        let addr = self.coordinator_addrs[i].to_string();
        let endpoint = match self.opts.client.tls.endpoint(&addr) {
            Ok(e) => e,
            Err(e) => return CoordinatorHealth::Unreachable(e),
        };
        let probe = async {
            let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
            HealthClient::new(channel)
                .check(HealthCheckRequest { service: "twopc.v1.Coordinator".into() })
                .await
                .map(|r| r.into_inner().status())
                .map_err(|s| format!("{}: {}", s.code(), s.message()))
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(ServingStatus::Serving)) => CoordinatorHealth::Serving,
            Ok(Ok(other)) => CoordinatorHealth::NotServing(other.as_str_name().to_string()),
            Ok(Err(e)) => CoordinatorHealth::Unreachable(e),
            Err(_) => CoordinatorHealth::Unreachable(format!("no answer within {PROBE_TIMEOUT:?}")),
        }
    }

    /// The index of the leading coordinator: polls every coordinator that
    /// runs and is not paused until exactly one reports
    /// `twopc.v1.Coordinator` SERVING (standbys report NOT_SERVING). Two
    /// SERVING at once (an old leader that has not noticed yet) is not an
    /// answer: it keeps polling.
    pub async fn leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::with_capacity(self.coordinator_count());
            for i in 0..self.coordinator_count() {
                seen.push(self.coordinator_health(i).await);
            }
            let serving: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] == CoordinatorHealth::Serving).collect();
            if let [one] = serving[..] {
                return Ok(one);
            }
            if Instant::now() >= deadline {
                let report: Vec<String> =
                    seen.iter().enumerate().map(|(i, h)| format!("{} {h:?}", self.coordinator_addrs[i])).collect();
                bail!("no single leading coordinator within {timeout:?}: {}", report.join("; "));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ha_opts() -> ClusterOptions {
        ClusterOptions {
            partitions: 2,
            coordinator_args: vec!["--prepare-timeout-ms".into(), "500".into()],
            ha: Some(HaOptions {
                cluster_name: "t1".into(),
                lease_ttl_secs: 4,
                ..HaOptions::new("127.0.0.1:1,127.0.0.1:2")
            }),
            ..ClusterOptions::default()
        }
    }

    #[test]
    fn single_mode_command_line_is_unchanged() {
        let opts = ClusterOptions::default();
        let args = coordinator_args(Path::new("/d"), &opts, "127.0.0.1:0");
        assert_eq!(
            args,
            ["coordinator", "--listen", "127.0.0.1:0", "--partitions", "3", "--data-dir", "/d/coordinator"]
        );
        assert_eq!(coordinator_log(Path::new("/d"), &opts, 0), Path::new("/d/coordinator.log"));
        let opts = ClusterOptions { console: true, ..ClusterOptions::default() };
        let args = coordinator_args(Path::new("/d"), &opts, "127.0.0.1:0");
        assert_eq!(args[args.len() - 2..], ["--console-addr", "127.0.0.1:0"]);
        assert_eq!(console_addr_of("https://127.0.0.1:7080/"), Some("127.0.0.1:7080"));
    }

    #[test]
    fn ha_mode_command_line_names_etcd_and_the_cluster() {
        let opts = ha_opts();
        let args = coordinator_args(Path::new("/d"), &opts, "127.0.0.1:7002");
        assert_eq!(
            args,
            [
                "coordinator",
                "--listen",
                "127.0.0.1:7002",
                "--partitions",
                "2",
                "--decision-log",
                "etcd",
                "--etcd-endpoints",
                "127.0.0.1:1,127.0.0.1:2",
                "--cluster-name",
                "t1",
                "--lease-ttl-secs",
                "4",
                "--prepare-timeout-ms",
                "500"
            ]
        );
        assert_eq!(coordinator_log(Path::new("/d"), &opts, 2), Path::new("/d/coordinator-2.log"));
    }

    #[test]
    fn ha_mode_needs_coordinators_and_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        let exe = Path::new("/nonexistent/twopc");
        let mut opts = ha_opts();
        opts.ha.as_mut().unwrap().coordinators = 0;
        let err = LocalCluster::start(exe, dir.path(), opts).err().unwrap().to_string();
        assert!(err.contains("at least one coordinator"), "{err}");
        let mut opts = ha_opts();
        opts.ha.as_mut().unwrap().etcd_endpoints = " ".into();
        let err = LocalCluster::start(exe, dir.path(), opts).err().unwrap().to_string();
        assert!(err.contains("etcd endpoints"), "{err}");
    }
}
