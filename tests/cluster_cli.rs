//! `twopc cluster ...`: a background cluster driven from the command line,
//! as a shell script or a test in another language would. Every process is
//! stopped at the end, also when a test fails (a guard runs `cluster stop`
//! and SIGKILLs any pid it printed).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use twopc_client::partition_for;

fn twopc(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twopc"));
    cmd.args(args).stdin(Stdio::null()).env_remove("TWOPC_CLUSTER_DIR").env_remove("FAILPOINTS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run twopc")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A cluster started with `twopc cluster start`, stopped on drop.
struct Bg {
    dir: tempfile::TempDir,
    pids: Vec<u32>,
    coordinator: String,
}

impl Bg {
    fn start(partitions: u32, extra: &[&str]) -> Bg {
        Bg::start_with_env(partitions, extra, &[])
    }

    fn start_with_env(partitions: u32, extra: &[&str], env: &[(&str, &str)]) -> Bg {
        let dir = tempfile::Builder::new().prefix("twopc-cli-cluster-").tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let n = partitions.to_string();
        let args = [&["cluster", "start", "--dir", &d, "--partitions", &n][..], extra].concat();
        let o = twopc(&args, env);
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        let v: serde_json::Value = serde_json::from_str(out(&o).trim()).expect("start prints JSON");
        let mut bg = Bg { dir, pids: vec![], coordinator: v["coordinator"]["addr"].as_str().unwrap().to_string() };
        bg.pids = pids(&v);
        assert_eq!(bg.pids.len(), partitions as usize + 1, "{v}");
        assert_eq!(v["participants"][0]["name"], "p0");
        assert_eq!(v["coordinator"]["running"], true);
        bg
    }

    fn dir(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// `twopc cluster CMD ... --dir D`.
    fn cluster(&self, args: &[&str]) -> Output {
        let args = [&["cluster"][..], args, &["--dir", self.dir()]].concat();
        twopc(&args, &[])
    }

    /// A client command against this cluster.
    fn client(&self, args: &[&str]) -> Output {
        twopc(args, &[("TWOPC_COORDINATOR", &self.coordinator)])
    }

    fn status(&self) -> serde_json::Value {
        let o = self.cluster(&["status"]);
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        serde_json::from_str(out(&o).trim()).unwrap()
    }
}

fn pids(v: &serde_json::Value) -> Vec<u32> {
    let mut pids = vec![v["coordinator"]["pid"].as_u64().unwrap() as u32];
    pids.extend(v["participants"].as_array().unwrap().iter().map(|p| p["pid"].as_u64().unwrap() as u32));
    pids
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !matches!(s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()), Some('Z')))
}

fn proc_state(pid: u32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    s.rsplit_once(')').unwrap().1.trim_start().chars().next().unwrap()
}

/// Polls until `pid` is gone (or a zombie), failing after 10 s.
fn wait_gone(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while running(pid) {
        assert!(std::time::Instant::now() < deadline, "pid {pid} still runs");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.cluster(&["stop"]);
        for &pid in &self.pids {
            if running(pid) {
                // SAFETY: plain kill of a pid this test started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

fn key_on(p: u32, partitions: u32, name: &str) -> String {
    (0..).map(|i| format!("{name}-{i}")).find(|k| partition_for(k.as_bytes(), partitions) == p).unwrap()
}

/// Start, kill, restart, pause and resume, settle and stop, with the
/// processes' pids and states checked in /proc; the processes outlive `start`.
#[test]
fn start_crash_restart_settle_stop() {
    let mut bg = Bg::start(2, &["--prepare-timeout-ms", "500"]);
    for &pid in &bg.pids {
        assert!(running(pid), "pid {pid} outlives `cluster start`");
    }
    let o = bg.cluster(&["settle", "--timeout-ms", "30000"]);
    assert_eq!((o.status.code(), out(&o).trim()), (Some(0), "settled"), "{}", err(&o));

    // A second start in the same directory is refused while it runs.
    let o = twopc(&["cluster", "start", "--dir", bg.dir()], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("a cluster already runs in") && err(&o).contains("twopc cluster stop"), "{}", err(&o));

    // Kill p1: gone; settle says so; restart brings it back on a new pid.
    let p1 = bg.pids[2];
    let o = bg.cluster(&["kill", "p1"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(!running(p1));
    let o = bg.cluster(&["kill", "p1"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));
    assert!(
        err(&o).contains("p1 (pid") && err(&o).contains("is not running") && err(&o).contains("cluster restart p1")
    );
    let o = bg.cluster(&["settle", "--timeout-ms", "1000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("not settled: p1 not running"), "{}", err(&o));
    let o = bg.cluster(&["restart", "p1"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let new: serde_json::Value = serde_json::from_str(out(&o).trim()).unwrap();
    let new_p1 = new["pid"].as_u64().unwrap() as u32;
    bg.pids.push(new_p1);
    assert!(running(new_p1) && new_p1 != p1);
    assert_eq!(bg.status()["participants"][1]["pid"], new["pid"]);

    // Pause the coordinator: stopped (T) in /proc, a settle times out naming it; resume.
    let coordinator = bg.pids[0];
    assert_eq!(bg.cluster(&["pause", "coordinator"]).status.code(), Some(0));
    assert_eq!(proc_state(coordinator), 'T');
    // `status` tells a frozen process from a running one.
    let v = bg.status();
    assert_eq!((&v["coordinator"]["running"], &v["coordinator"]["paused"]), (&true.into(), &true.into()), "{v}");
    assert_eq!(v["participants"][0]["paused"], false, "{v}");
    let o = bg.cluster(&["settle", "--timeout-ms", "300"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("not settled"), "{}", err(&o));
    assert_eq!(bg.cluster(&["resume", "coordinator"]).status.code(), Some(0));
    assert_ne!(proc_state(coordinator), 'T');
    assert_eq!(bg.status()["coordinator"]["paused"], false);

    // A transaction through the restarted participant commits.
    let (a, b) = (key_on(0, 2, "k"), key_on(1, 2, "k"));
    let o = bg.client(&["run", &format!("put {a} 1"), &format!("put {b} 2")]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    let o = bg.cluster(&["settle"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));

    // Stop: every process gone, state file removed; then "no cluster".
    let all = pids(&bg.status());
    assert_eq!(bg.cluster(&["stop"]).status.code(), Some(0));
    for pid in all {
        assert!(!running(pid), "pid {pid} survived stop");
    }
    assert!(!Path::new(bg.dir()).join("cluster.json").exists());
    let o = bg.cluster(&["settle"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        err(&o).trim(),
        format!(
            "error: no cluster in {0} (no cluster.json there): start one with `twopc cluster start --dir {0}`",
            bg.dir()
        )
    );
}

/// C2 from a shell: a failpoint kills the coordinator after its decision;
/// `cluster restart coordinator` recovers it and the commit lands.
#[test]
fn coordinator_crash_after_decision_from_the_command_line() {
    let bg = Bg::start(2, &[]);
    let (a, b) = (key_on(0, 2, "c2"), key_on(1, 2, "c2"));
    let o = bg.client(&["failpoint", "--target", "coordinator", "coordinator::after_decision_forced", "return(abort)"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = bg.client(&["run", &format!("put {a} 1"), &format!("put {b} 2")]);
    assert_ne!(o.status.code(), Some(0), "the coordinator died before answering: {}", out(&o));
    wait_gone(bg.pids[0]);
    assert_eq!(bg.status()["coordinator"]["running"], false);
    let o = bg.cluster(&["settle", "--timeout-ms", "100"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("coordinator not running"), "{}", err(&o));
    let o = bg.cluster(&["restart", "coordinator"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = bg.cluster(&["settle", "--timeout-ms", "30000"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = bg.client(&["read", &b]);
    assert_eq!(out(&o).trim(), "2", "{}", err(&o));
}

/// A directory whose processes are all gone is "stale": one line, exit 2,
/// saying how to clear it; `stop` clears it. Missing directories and
/// unknown targets are one-line errors too.
#[test]
fn missing_and_stale_directories_are_clear_errors() {
    let missing = PathBuf::from("/nonexistent/twopc-cluster");
    for cmd in [&["settle"][..], &["stop"], &["status"], &["kill", "p0"], &["restart", "coordinator"]] {
        let args = [&["cluster"][..], cmd, &["--dir", missing.to_str().unwrap()]].concat();
        let o = twopc(&args, &[]);
        assert_eq!(o.status.code(), Some(2), "{cmd:?}");
        assert_eq!(err(&o).lines().count(), 1, "{cmd:?}: {}", err(&o));
        assert!(err(&o).contains("no cluster in /nonexistent/twopc-cluster"), "{}", err(&o));
    }

    let bg = Bg::start(1, &[]);
    let o = bg.cluster(&["kill", "p3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("no p3 in the cluster") && err(&o).contains("coordinator and p0..p0"), "{}", err(&o));
    for &pid in &bg.pids {
        // SAFETY: plain kill of a pid this test started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    bg.pids.iter().for_each(|&pid| wait_gone(pid));
    for cmd in [&["settle"][..], &["kill", "p0"], &["pause", "coordinator"]] {
        let o = bg.cluster(cmd);
        assert_eq!(o.status.code(), Some(2), "{cmd:?}");
        assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));
        assert!(err(&o).contains("is stale: none of its processes runs"), "{cmd:?}: {}", err(&o));
        assert!(err(&o).contains("twopc cluster stop --dir"), "{}", err(&o));
    }
    assert_eq!(bg.cluster(&["stop"]).status.code(), Some(0));
    assert!(!Path::new(bg.dir()).join("cluster.json").exists());
}

/// The cluster's `TWOPC_*` environment (here an admin token) is recorded at
/// start (state file readable by its owner only) and used by later
/// commands run without it: `settle` sends the token, a restarted process
/// gets it again.
#[test]
fn start_environment_is_recorded_for_settle_and_restart() {
    let token = "kit-admin-token";
    let mut bg = Bg::start_with_env(1, &[], &[("TWOPC_ADMIN_TOKEN", token)]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(Path::new(bg.dir()).join("cluster.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // The token is in force: an admin call without it is refused ...
    let o = bg.client(&["transactions"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("UNAUTHENTICATED"), "{}", err(&o));
    // ... and settle, run without it, sends the recorded one.
    let o = bg.cluster(&["settle", "--timeout-ms", "30000"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));

    let o = bg.cluster(&["restart", "p0"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let new: serde_json::Value = serde_json::from_str(out(&o).trim()).unwrap();
    let pid = new["pid"].as_u64().unwrap() as u32;
    bg.pids.push(pid);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let want = format!("TWOPC_ADMIN_TOKEN={token}");
    assert!(environ.split(|&b| b == 0).any(|v| v == want.as_bytes()), "the restarted participant has the token");
    let o = bg.cluster(&["settle", "--timeout-ms", "30000"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
}

/// Processes whose command line names `dir` (what the CLI itself trusts).
fn procs_naming(dir: &str) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(dir) && cmd.contains(" --data-dir ") && running(pid) {
            out.push(pid);
        }
    }
    out
}

/// Two `cluster start` on one directory at the same moment: exactly one
/// starts (the other is refused as "already runs"), the state file names
/// the processes that run, and `stop` leaves nothing behind. (Both used to
/// exit 0: the loser read the winner's "listening on" from the shared log,
/// recorded its own dead pids, and `stop` orphaned the winner's processes.)
#[test]
fn concurrent_starts_on_one_directory_start_one_cluster() {
    struct Reap(String);
    impl Drop for Reap {
        fn drop(&mut self) {
            for pid in procs_naming(&self.0) {
                // SAFETY: plain kill of a process this test started (its command line names our temp dir).
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
    let tmp = tempfile::Builder::new().prefix("twopc-cli-race-").tempdir().unwrap();
    let d = tmp.path().to_str().unwrap().to_string();
    let _reap = Reap(d.clone());
    let starts: Vec<_> = (0..2)
        .map(|_| {
            let d = d.clone();
            std::thread::spawn(move || twopc(&["cluster", "start", "--dir", &d, "--partitions", "1"], &[]))
        })
        .collect();
    let outs: Vec<Output> = starts.into_iter().map(|t| t.join().unwrap()).collect();
    let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
    assert!(
        codes.contains(&Some(0)) && codes.contains(&Some(2)),
        "{codes:?}: {}",
        outs.iter().map(err).collect::<String>()
    );
    let log = std::fs::read_to_string(tmp.path().join("coordinator.log")).unwrap();
    assert!(log.contains("listening on") && !log.contains('\u{1b}'), "plain text, no color codes: {log:?}");
    let loser = outs.iter().find(|o| o.status.code() == Some(2)).unwrap();
    assert!(err(loser).contains("already runs"), "{}", err(loser));
    let o = twopc(&["cluster", "status", "--dir", &d], &[]);
    let v: serde_json::Value = serde_json::from_str(out(&o).trim()).unwrap();
    let mut recorded = pids(&v);
    let mut live = procs_naming(&d);
    recorded.sort();
    live.sort();
    assert_eq!(recorded, live, "the state file names exactly the processes that run: {v}");
    let o = twopc(&["cluster", "stop", "--dir", &d], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !procs_naming(&d).is_empty() {
        assert!(std::time::Instant::now() < deadline, "left running after stop: {:?}", procs_naming(&d));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
