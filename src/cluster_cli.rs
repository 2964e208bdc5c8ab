//! `twopc cluster ...`: the test kit for users of other languages. A local
//! cluster of real processes started in the background, whose processes a
//! shell script or any test framework can crash, restart and check:
//!
//! ```text
//! twopc cluster start --dir D --partitions N   # prints addresses and pids as JSON
//! twopc cluster kill|pause|resume|restart TARGET --dir D   # TARGET: coordinator, p0, p1, ...
//! twopc cluster settle --dir D --timeout-ms 30000   # exit 0 settled, 1 not settled
//! twopc cluster status --dir D                 # the JSON again, with what runs
//! twopc cluster stop --dir D
//! ```
//!
//! The processes are detached (their own session, no parent-death signal,
//! output in `D/*.log`), so they outlive `start`. What the other commands
//! need is in the state file `D/cluster.json` (mode 0600: it holds the
//! `TWOPC_*` environment the processes were started with, tokens included,
//! which a restart passes on). A pid is trusted only while `/proc/PID`
//! is a live process whose command line names `D`, so a pid reused by
//! another program is never signalled. Errors are one line on stderr, exit 2:
//! a directory without `cluster.json` ("no cluster"), one whose processes
//! are all gone ("stale"), a target that is not running or not in the cluster.
//! `start`, `restart` and `stop` hold an exclusive lock on `D/cluster.lock`
//! while they run, so concurrent ones on one directory take turns (a second
//! `start` then finds the first's cluster running and is refused).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use twopc_client::{AdminToken, Client, ConnectOptions, TlsArgs};
use twopc_testkit::Target;
use twopc_testkit::cluster::{self, ClusterOptions, LocalCluster, Proc};

/// The state file's name in the cluster directory.
const STATE_FILE: &str = "cluster.json";
/// How long processes may take to register (start, restart).
const READY: Duration = Duration::from_secs(30);
/// How long a terminated process may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    cmd: ClusterCmd,
}

#[derive(Debug, clap::Args)]
struct DirArg {
    /// The cluster's directory (data, logs, and its state file cluster.json).
    #[arg(long, env = "TWOPC_CLUSTER_DIR")]
    dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct TargetArgs {
    /// `coordinator`, or `pN`: the participant of partition N.
    #[arg(value_parser = parse_target)]
    target: Target,
    #[command(flatten)]
    dir: DirArg,
}

fn parse_target(s: &str) -> Result<Target, String> {
    s.parse()
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCmd {
    /// Start a coordinator and N participants in the background; prints
    /// their addresses and pids as JSON. They inherit this command's
    /// environment (TWOPC_TLS_*, TWOPC_ADMIN_TOKEN, TWOPC_PEER_TOKEN,
    /// FAILPOINTS...).
    Start(StartArgs),
    /// SIGKILL a process (like a crash: nothing is flushed).
    Kill(TargetArgs),
    /// Freeze a process (SIGSTOP): it keeps its sockets but answers nothing.
    Pause(TargetArgs),
    /// Let a paused process run again (SIGCONT).
    Resume(TargetArgs),
    /// Restart a process on its own data (killing it first if it runs);
    /// prints its new pid and address as JSON. The coordinator keeps its
    /// address; a participant takes a new port and re-registers.
    Restart(TargetArgs),
    /// Wait until nothing is in doubt, no tid is open, no lock is held and
    /// the coordinator has nothing unfinished: exit 0, or 1 saying what is not.
    Settle {
        #[command(flatten)]
        dir: DirArg,
        /// Give up after this long.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
    /// Print the cluster's processes as JSON, each with whether it runs and whether it is paused.
    Status(DirArg),
    /// Stop every process (SIGTERM, then SIGKILL after 10 s) and remove the
    /// state file; data and logs stay.
    Stop(DirArg),
}

#[derive(Debug, clap::Args)]
struct StartArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Number of partitions (one participant each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    partitions: u32,
    /// The coordinator's --prepare-timeout-ms (how long it waits for votes).
    #[arg(long)]
    prepare_timeout_ms: Option<u64>,
    /// The coordinator's --default-timeout-ms (a transaction's timeout when its client sets none).
    #[arg(long)]
    default_timeout_ms: Option<u64>,
    /// The coordinator's --one-phase (true by default).
    #[arg(long)]
    one_phase: Option<bool>,
    /// One more raw coordinator argument (repeat it: `--coordinator-arg=--max-open-txns --coordinator-arg=100`).
    #[arg(long = "coordinator-arg", allow_hyphen_values = true)]
    coordinator_args: Vec<String>,
    /// One more raw participant argument.
    #[arg(long = "participant-arg", allow_hyphen_values = true)]
    participant_args: Vec<String>,
}

/// One process as the state file and the JSON output show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProcState {
    /// Its TARGET name: `coordinator`, `p0`, `p1`, ...
    name: String,
    pid: u32,
    addr: String,
    log: PathBuf,
    /// Filled in when printed, not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    running: Option<bool>,
    /// Filled in when printed: running but frozen (SIGSTOP, `cluster pause`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    paused: Option<bool>,
}

/// The state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    dir: PathBuf,
    binary: PathBuf,
    partitions: u32,
    coordinator_args: Vec<String>,
    participant_args: Vec<String>,
    /// The `TWOPC_*` variables the processes were started with.
    env: Vec<(String, String)>,
    coordinator: ProcState,
    participants: Vec<ProcState>,
}

/// What `start` and `status` print.
#[derive(Serialize)]
struct View<'a> {
    dir: &'a Path,
    coordinator: &'a ProcState,
    participants: &'a [ProcState],
}

/// Runs a `twopc cluster` command; the exit code (0, 1: not settled, 2: error).
pub fn run(args: ClusterArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow!(e)),
    };
    match rt.block_on(run_cmd(args.cmd)) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

fn fail(e: anyhow::Error) -> i32 {
    eprintln!("error: {e:#}");
    2
}

async fn run_cmd(cmd: ClusterCmd) -> anyhow::Result<i32> {
    // Commands that start processes or rewrite the state file run one at a
    // time per directory: two starts at once would read each other's
    // "listening on" lines from the shared logs and record dead pids.
    let _lock = match &cmd {
        ClusterCmd::Start(a) => {
            std::fs::create_dir_all(&a.dir.dir)
                .with_context(|| format!("cannot create the cluster directory {}", a.dir.dir.display()))?;
            Some(lock_dir(&a.dir.dir)?)
        }
        ClusterCmd::Restart(t) if t.dir.dir.join(STATE_FILE).exists() => Some(lock_dir(&t.dir.dir)?),
        ClusterCmd::Stop(d) if d.dir.join(STATE_FILE).exists() => Some(lock_dir(&d.dir)?),
        _ => None,
    };
    match cmd {
        ClusterCmd::Start(args) => start(args).await,
        ClusterCmd::Kill(t) => signal(t, libc::SIGKILL),
        ClusterCmd::Pause(t) => signal(t, libc::SIGSTOP),
        ClusterCmd::Resume(t) => signal(t, libc::SIGCONT),
        ClusterCmd::Restart(t) => restart(t).await,
        ClusterCmd::Settle { dir, timeout_ms } => settle(&dir.dir, Duration::from_millis(timeout_ms)).await,
        ClusterCmd::Status(dir) => {
            let mut state = load(&dir.dir)?;
            print_view(&mut state);
            Ok(0)
        }
        ClusterCmd::Stop(dir) => stop(&dir.dir),
    }
}

async fn start(args: StartArgs) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&args.dir.dir)
        .with_context(|| format!("cannot create the cluster directory {}", args.dir.dir.display()))?;
    let dir = args.dir.dir.canonicalize()?;
    if let Ok(state) = load(&dir) {
        let running: Vec<String> = all(&state).filter(|p| alive(p.pid, &dir)).map(|p| p.name.clone()).collect();
        if !running.is_empty() {
            bail!(
                "a cluster already runs in {} ({} running): stop it first with `twopc cluster stop --dir {0}`",
                dir.display(),
                running.join(", ")
            );
        }
    }
    let mut coordinator_args = vec![];
    for (flag, value) in [
        ("--prepare-timeout-ms", args.prepare_timeout_ms.map(|v| v.to_string())),
        ("--default-timeout-ms", args.default_timeout_ms.map(|v| v.to_string())),
        ("--one-phase", args.one_phase.map(|v| v.to_string())),
    ] {
        if let Some(v) = value {
            coordinator_args.extend([flag.to_string(), v]);
        }
    }
    coordinator_args.extend(args.coordinator_args);
    let env: Vec<(String, String)> =
        std::env::vars().filter(|(k, _)| k.starts_with("TWOPC_") && k != "TWOPC_CLUSTER_DIR").collect();
    let opts = ClusterOptions {
        partitions: args.partitions,
        coordinator_args,
        participant_args: args.participant_args,
        env: env.clone(),
        client: connect_options(&env)?,
        detach: true,
        ..ClusterOptions::default()
    };
    let binary = std::env::current_exe().context("cannot find the twopc binary itself")?;
    let mut local = LocalCluster::start(&binary, &dir, opts.clone())?;
    if let Err(e) = local.wait_registered(READY).await {
        local.kill_all();
        return Err(e);
    }
    let proc_state = |p: &Proc, target: Target, log: PathBuf| ProcState {
        name: target.to_string(),
        pid: p.pid().unwrap_or_default(),
        addr: p.addr.to_string(),
        log,
        running: None,
        paused: None,
    };
    let mut state = State {
        dir: dir.clone(),
        binary,
        partitions: opts.partitions,
        coordinator_args: opts.coordinator_args,
        participant_args: opts.participant_args,
        env,
        coordinator: proc_state(&local.coordinator, Target::Coordinator, local.coordinator_log(0)),
        participants: (0..)
            .zip(&local.participants)
            .map(|(p, proc)| proc_state(proc, Target::Participant(p), dir.join(format!("p{p}.log"))))
            .collect(),
    };
    if let Err(e) = save(&state) {
        local.kill_all();
        return Err(e);
    }
    // The handles are detached: dropping them leaves the processes running.
    drop(local);
    print_view(&mut state);
    Ok(0)
}

fn print_view(state: &mut State) {
    let dir = state.dir.clone();
    for p in std::iter::once(&mut state.coordinator).chain(&mut state.participants) {
        p.running = Some(alive(p.pid, &dir));
        p.paused = Some(p.running == Some(true) && matches!(proc_state(p.pid), Some('T' | 't')));
    }
    let view = View { dir: &state.dir, coordinator: &state.coordinator, participants: &state.participants };
    println!("{}", serde_json::to_string(&view).expect("serializable"));
}

fn all(state: &State) -> impl Iterator<Item = &ProcState> {
    std::iter::once(&state.coordinator).chain(&state.participants)
}

/// The cluster's options, as the state file recorded them (for a restart).
fn options(state: &State) -> anyhow::Result<ClusterOptions> {
    Ok(ClusterOptions {
        partitions: state.partitions,
        coordinator_args: state.coordinator_args.clone(),
        participant_args: state.participant_args.clone(),
        env: state.env.clone(),
        client: connect_options(&state.env)?,
        detach: true,
        ..ClusterOptions::default()
    })
}

/// How to reach the cluster: its TLS files and admin token, from its `TWOPC_*` variables.
fn connect_options(env: &[(String, String)]) -> anyhow::Result<ConnectOptions> {
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let tls = TlsArgs {
        tls_cert: get("TWOPC_TLS_CERT").map(PathBuf::from),
        tls_key: get("TWOPC_TLS_KEY").map(PathBuf::from),
        tls_ca: get("TWOPC_TLS_CA").map(PathBuf::from),
        tls_domain: get("TWOPC_TLS_DOMAIN"),
    };
    Ok(ConnectOptions {
        tls: tls.client().map_err(|e| anyhow!(e))?,
        admin_token: AdminToken::new(get("TWOPC_ADMIN_TOKEN").as_deref()).map_err(|e| anyhow!(e))?,
        ..ConnectOptions::default()
    })
}

/// How long a command waits for another one on the same directory.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// An exclusive `flock` on `D/cluster.lock`, held until dropped (and
/// released by the kernel if the command dies). The descriptor is
/// close-on-exec, so the cluster's processes never inherit it.
fn lock_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("cluster.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let deadline = Instant::now() + LOCK_WAIT;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "another `twopc cluster` command has been running in {} for {LOCK_WAIT:?} (it holds {})",
            dir.display(),
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(file)
}

fn load(dir: &Path) -> anyhow::Result<State> {
    let file = dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no cluster in {} (no {STATE_FILE} there): start one with `twopc cluster start --dir {0}`",
            dir.display()
        ),
        Err(e) => bail!("cannot read {}: {e}", file.display()),
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not a twopc cluster state file", file.display()))
}

/// Writes the state file atomically, readable by its owner only.
fn save(state: &State) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = state.dir.join(format!("{STATE_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, state.dir.join(STATE_FILE))?;
    Ok(())
}

/// Whether `pid` is a live (not zombie) process whose command line names
/// `dir`: a process of this cluster, not another that reused the pid.
fn alive(pid: u32, dir: &Path) -> bool {
    if matches!(proc_state(pid), None | Some('Z' | 'X' | 'x')) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let dir = dir.as_os_str().as_encoded_bytes();
    cmdline.windows(dir.len()).any(|w| w == dir)
}

/// The state of `target`, or an error naming the processes the cluster has.
fn proc_of(state: &State, target: Target) -> anyhow::Result<&ProcState> {
    match target {
        Target::Coordinator | Target::CoordinatorAt(0) => Ok(&state.coordinator),
        Target::Participant(p) if p < state.partitions => Ok(&state.participants[p as usize]),
        Target::Participant(_) => bail!(
            "no {target} in the cluster in {}: its processes are coordinator and p0..p{}",
            state.dir.display(),
            state.partitions - 1
        ),
        Target::CoordinatorAt(_) => bail!("the cluster in {} has one coordinator: `coordinator`", state.dir.display()),
    }
}

/// Fails with "stale" when no process of the cluster runs any more.
fn ensure_not_stale(state: &State) -> anyhow::Result<()> {
    if all(state).any(|p| alive(p.pid, &state.dir)) {
        return Ok(());
    }
    let gone: Vec<String> = all(state).map(|p| format!("{} pid {}", p.name, p.pid)).collect();
    bail!(
        "the cluster in {} is stale: none of its processes runs ({} gone); `twopc cluster stop --dir {0}` clears \
         it, `twopc cluster start --dir {0}` starts it again on its data",
        state.dir.display(),
        gone.join(", ")
    )
}

fn send(pid: u32, signal: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: kill has no memory-safety preconditions; `alive` checked the pid is ours.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
        bail!("cannot signal pid {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Polls until `pid` (checked to be ours before it was signalled) has exited.
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    // Called for a pid just checked to be ours, so its state alone tells:
    // an exiting process drops its command line (its memory) before it
    // becomes a zombie, so `alive`'s command-line check would call it gone
    // while it still exits (and may still hold its port and files).
    while !matches!(proc_state(pid), None | Some('Z' | 'X' | 'x')) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn signal(t: TargetArgs, signal: libc::c_int) -> anyhow::Result<i32> {
    let state = load(&t.dir.dir)?;
    let proc = proc_of(&state, t.target)?;
    if !alive(proc.pid, &state.dir) {
        ensure_not_stale(&state)?;
        bail!(
            "{} (pid {}) is not running: start it again with `twopc cluster restart {} --dir {}`",
            t.target,
            proc.pid,
            t.target,
            state.dir.display()
        );
    }
    send(proc.pid, signal)?;
    // Signals are delivered asynchronously: return once they took effect.
    let done = match signal {
        libc::SIGKILL => wait_gone(proc.pid, Duration::from_secs(5)),
        libc::SIGSTOP => wait_state(proc.pid, |s| s == 'T', Duration::from_secs(5)),
        _ => wait_state(proc.pid, |s| s != 'T', Duration::from_secs(5)),
    };
    anyhow::ensure!(done, "{} (pid {}) did not act on the signal within 5 s", t.target, proc.pid);
    Ok(0)
}

/// The state letter of `pid` in /proc (`R`, `S`, `T` stopped, `Z`...).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state letter follows the command name in parentheses.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next())
}

/// Polls until `pid`'s state satisfies `want`.
fn wait_state(pid: u32, want: impl Fn(char) -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if proc_state(pid).is_some_and(&want) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn restart(t: TargetArgs) -> anyhow::Result<i32> {
    let mut state = load(&t.dir.dir)?;
    let old = proc_of(&state, t.target)?.clone();
    let dir = state.dir.clone();
    if alive(old.pid, &dir) {
        send(old.pid, libc::SIGKILL)?;
        anyhow::ensure!(wait_gone(old.pid, Duration::from_secs(5)), "{} still runs after SIGKILL", t.target);
    }
    let opts = options(&state)?;
    let (args, name) = match t.target {
        Target::Participant(p) => {
            (cluster::participant_args(&dir, &opts, p, &state.coordinator.addr), format!("participant {p}"))
        }
        _ => (cluster::coordinator_args(&dir, &opts, &state.coordinator.addr), "coordinator".to_string()),
    };
    // A coordinator rebinds its address, which the kernel may hold for a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let proc = loop {
        match Proc::start_detached(&state.binary, &args, &opts.env, &old.log, &name) {
            Ok(p) => break p,
            Err(e) if Instant::now() >= deadline || matches!(t.target, Target::Participant(_)) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let new = ProcState {
        name: t.target.to_string(),
        pid: proc.pid().unwrap_or_default(),
        addr: proc.addr.to_string(),
        log: old.log,
        running: None,
        paused: None,
    };
    drop(proc);
    match t.target {
        Target::Participant(p) => state.participants[p as usize] = new.clone(),
        _ => state.coordinator = new.clone(),
    }
    save(&state)?;
    wait_registered(&state, &opts.client).await?;
    println!("{}", serde_json::to_string(&new)?);
    Ok(0)
}

/// Waits until the coordinator (if it runs) lists every running
/// participant at its address.
async fn wait_registered(state: &State, options: &ConnectOptions) -> anyhow::Result<()> {
    if !alive(state.coordinator.pid, &state.dir) {
        return Ok(());
    }
    let want: Vec<(u32, &str)> = (0..)
        .zip(&state.participants)
        .filter(|(_, p)| alive(p.pid, &state.dir))
        .map(|(i, p)| (i, p.addr.as_str()))
        .collect();
    let deadline = Instant::now() + READY;
    let mut last = String::new();
    while Instant::now() < deadline {
        match Client::connect_with(&state.coordinator.addr, options.clone()).await {
            Ok(client) => match client.topology().await {
                Ok(t) if want.iter().all(|(p, a)| t.address(*p) == Some(*a)) => return Ok(()),
                Ok(t) => last = format!("the coordinator lists {t:?}"),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the participants did not register within {READY:?}: {last}")
}

async fn settle(dir: &Path, timeout: Duration) -> anyhow::Result<i32> {
    let state = load(dir)?;
    ensure_not_stale(&state)?;
    let down: Vec<String> = all(&state).filter(|p| !alive(p.pid, &state.dir)).map(|p| p.name.clone()).collect();
    if !down.is_empty() {
        let restart: Vec<String> =
            down.iter().map(|t| format!("`twopc cluster restart {t} --dir {}`", state.dir.display())).collect();
        eprintln!("not settled: {} not running (start again with {})", down.join(", "), restart.join(", "));
        return Ok(1);
    }
    let options = connect_options(&state.env)?;
    let started = Instant::now();
    // A paused or busy coordinator may refuse the first connections.
    let client = loop {
        match Client::connect_with(&state.coordinator.addr, options.clone()).await {
            Ok(c) => break c,
            Err(e) if started.elapsed() >= timeout => {
                eprintln!("not settled: the coordinator at {} is unreachable: {e}", state.coordinator.addr);
                return Ok(1);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let addrs: Vec<String> = state.participants.iter().map(|p| p.addr.clone()).collect();
    let left = timeout.saturating_sub(started.elapsed());
    match twopc_testkit::settle::settle(&client, &addrs, &options, left).await {
        Ok(()) => {
            println!("settled");
            Ok(0)
        }
        Err(unsettled) => {
            eprintln!("not settled: {unsettled}");
            Ok(1)
        }
    }
}

fn stop(dir: &Path) -> anyhow::Result<i32> {
    let state = load(dir)?;
    let running: Vec<&ProcState> = all(&state).filter(|p| alive(p.pid, &state.dir)).collect();
    for p in &running {
        // A paused process must run again to act on SIGTERM.
        send(p.pid, libc::SIGTERM)?;
        let _ = send(p.pid, libc::SIGCONT);
    }
    for p in &running {
        if !wait_gone(p.pid, STOP_GRACE) {
            let _ = send(p.pid, libc::SIGKILL);
            wait_gone(p.pid, Duration::from_secs(5));
        }
    }
    std::fs::remove_file(state.dir.join(STATE_FILE))?;
    Ok(0)
}
