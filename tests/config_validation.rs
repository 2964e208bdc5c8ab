//! Start-up validation on the real binary: a coordinator or participant
//! with a bad setting exits non-zero at once with one clear `error:` line
//! naming what is wrong, and writes nothing (a refused data directory is
//! left as it was). Also: settings given only through the environment-
//! variable twins start a working process.
//!
//! Every wait has a deadline; a process that does not exit in time is
//! killed and the test fails with what it printed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_twopc");
/// Generous for a loaded 2-core machine; a refusal normally takes milliseconds.
const BOUND: Duration = Duration::from_secs(30);

/// A command for the binary with no inherited twopc settings, so the
/// environment of whoever runs the tests cannot change their outcome.
fn twopc(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TWOPC_") || k == "FAILPOINTS" {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().copied());
    cmd
}

/// Runs the binary, expects it to exit non-zero within [`BOUND`] without
/// serving, and returns its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let child = twopc(args, env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn twopc");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(BOUND) {
        Ok(out) => out.expect("wait for twopc"),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid; it is not reaped yet
            // (the waiting thread has not returned), so the pid is still ours.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let out = rx.recv().expect("waiter").expect("wait for twopc");
            panic!(
                "twopc {args:?} still running after {BOUND:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "twopc {args:?} should exit non-zero, got {:?}\nstderr:\n{stderr}",
        out.status
    );
    assert!(!stdout.contains("listening on"), "twopc {args:?} served before refusing:\n{stdout}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "not a clean error:\n{stderr}");
    assert!(stderr.contains("error"), "no error line:\n{stderr}");
    stderr
}

fn assert_says(stderr: &str, parts: &[&str]) {
    for p in parts {
        assert!(stderr.contains(p), "expected {p:?} in:\n{stderr}");
    }
}

/// A server started by a test; SIGKILLed when dropped.
struct Running {
    child: Child,
    addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary and waits (up to [`BOUND`]) for its `listening on` line.
fn start(args: &[&str], env: &[(&str, &str)], log: &Path) -> Running {
    let mut child = twopc(args, env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn twopc");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keeps draining stdout so the child never blocks on it.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx.recv_timeout(BOUND).unwrap_or_else(|_| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("twopc {args:?} did not start:\n{}", std::fs::read_to_string(log).unwrap_or_default())
    });
    Running { child, addr }
}

/// Every file of `dir` with its bytes, except SQLite's `-shm` index, which
/// any reader may rewrite and which holds no data.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| !p.to_string_lossy().ends_with("-shm"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).expect("read file")))
        .collect()
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("twopc-cfg-").tempdir().expect("temp dir")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[derive(Clone, Copy)]
enum Role {
    Coordinator,
    Participant,
}

impl Role {
    /// A valid command line, which each case changes with [`with`].
    fn args(self, dir: &str) -> Vec<&str> {
        match self {
            Role::Coordinator => {
                vec!["coordinator", "--listen", "127.0.0.1:0", "--partitions", "2", "--data-dir", dir]
            }
            Role::Participant => vec![
                "participant",
                "--listen",
                "127.0.0.1:0",
                "--partition",
                "0",
                "--coordinator",
                "127.0.0.1:9",
                "--data-dir",
                dir,
            ],
        }
    }

    fn db(self) -> &'static str {
        match self {
            Role::Coordinator => "decisions.db",
            Role::Participant => "partition.db",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Role::Coordinator => "cannot open the decision log in",
            Role::Participant => "cannot open the partition store in",
        }
    }
}

const ROLES: [Role; 2] = [Role::Coordinator, Role::Participant];

/// `base` with each `--flag value` pair of `extra` replacing the same flag
/// or added (clap takes each flag once).
fn with<'a>(mut base: Vec<&'a str>, extra: &[&'a str]) -> Vec<&'a str> {
    for pair in extra.chunks(2) {
        match base.iter().position(|a| *a == pair[0]) {
            Some(i) => base[i + 1] = pair[1],
            None => base.extend_from_slice(pair),
        }
    }
    base
}

#[test]
fn bad_listen_addresses_name_the_flag() {
    for role in ROLES {
        let t = tmp();
        let dir = t.path().join("data");
        for (flag, value) in [("--listen", "localhost:7000"), ("--listen", "127.0.0.1"), ("--metrics-listen", "nope")] {
            let err = refused(&with(role.args(s(&dir)), &[flag, value]), &[]);
            assert_says(&err, &["error: ", &format!("{flag} {value:?} is not HOST:PORT"), "e.g."]);
            assert!(!dir.exists(), "a refused start created its data directory");
        }
    }
}

#[test]
fn a_port_in_use_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for role in ROLES {
        let t = tmp();
        let dir = t.path().join("data");
        for flag in ["--listen", "--metrics-listen"] {
            let err = refused(&with(role.args(s(&dir)), &[flag, &addr]), &[]);
            assert_says(&err, &[&format!("{flag} {addr}"), "already in use"]);
            assert!(!dir.exists(), "a refused start created its data directory");
        }
    }
}

#[test]
fn bad_peer_addresses_of_a_participant() {
    let t = tmp();
    let dir = t.path().join("data");
    for (flag, value) in
        [("--coordinator", "http://127.0.0.1:7000"), ("--coordinator", "127.0.0.1"), ("--advertise", "host:0")]
    {
        let err = refused(&with(Role::Participant.args(s(&dir)), &[flag, value]), &[]);
        assert_says(&err, &[&format!("{flag} {value:?} is not HOST:PORT")]);
        assert!(!dir.exists());
    }
}

#[test]
fn an_unwritable_data_directory_is_refused() {
    for role in ROLES {
        let t = tmp();
        // A parent that is a regular file stops everyone, root included.
        std::fs::write(t.path().join("file"), b"not a directory").unwrap();
        let dir = t.path().join("file/data");
        let err = refused(&role.args(s(&dir)), &[]);
        assert_says(&err, &["--data-dir", &format!("cannot create data directory {}", dir.display()), "os error"]);

        // Permission bits do not stop root, so that case only runs unprivileged.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let dir = t.path().join("read-only");
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).unwrap();
            let err = refused(&role.args(s(&dir)), &[]);
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            assert_says(&err, &[&format!("data directory {} is not writable", dir.display()), "os error 13"]);
            assert!(snapshot(&dir).is_empty(), "something was written into the refused directory");
        }
    }
}

#[test]
fn a_file_that_is_not_a_database_is_refused_untouched() {
    for role in ROLES {
        let t = tmp();
        let dir = t.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let garbage: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(dir.join(role.db()), &garbage).unwrap();
        let before = snapshot(&dir);
        let err = refused(&role.args(s(&dir)), &[]);
        assert_says(
            &err,
            &[
                &format!("{} {}", role.what(), dir.display()),
                &dir.join(role.db()).display().to_string(),
                "file is not a database",
                "refusing to start: restore it from backup",
            ],
        );
        assert_eq!(snapshot(&dir), before, "the refused file or its directory changed");
    }
}

#[test]
fn a_damaged_database_is_refused_untouched() {
    for role in ROLES {
        let t = tmp();
        let dir = t.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join(role.db());
        // A real SQLite file (rollback journal, so all of it is in the one
        // file) with an index, then one of its pages overwritten: the
        // header is fine, the content is not.
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch("PRAGMA page_size = 4096; CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT);").unwrap();
            for i in 0..2000 {
                conn.execute("INSERT INTO t VALUES (?1, ?2)", (format!("key-{i}"), "v".repeat(50))).unwrap();
            }
        }
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 8 * 4096);
        bytes[4 * 4096..5 * 4096].fill(0xA5);
        std::fs::write(&path, &bytes).unwrap();
        let before = snapshot(&dir);
        let err = refused(&role.args(s(&dir)), &[]);
        assert_says(&err, &[role.what(), "refusing to start: restore it from backup"]);
        assert_eq!(snapshot(&dir), before, "the refused file changed");
    }
}

/// Starts `args` once so it creates its data directory, then kills it.
fn make_data_dir(args: &[&str], log: &Path) {
    let running = start(args, &[], log);
    drop(running);
}

#[test]
fn a_data_directory_of_another_cluster_is_refused_untouched() {
    let t = tmp();
    let dir = t.path().join("coord");
    make_data_dir(&Role::Coordinator.args(s(&dir)), &t.path().join("c.log"));
    let before = snapshot(&dir);
    let err = refused(&with(Role::Coordinator.args(s(&dir)), &["--partitions", "3"]), &[]);
    assert_says(&err, &["belongs to a cluster of 2 partitions, not 3", "--partitions 2"]);
    assert_eq!(snapshot(&dir), before, "the refused decision log changed");
}

#[test]
fn a_data_directory_of_another_partition_is_refused_untouched() {
    let t = tmp();
    let dir = t.path().join("p0");
    make_data_dir(&Role::Participant.args(s(&dir)), &t.path().join("p.log"));
    let before = snapshot(&dir);
    let err = refused(&with(Role::Participant.args(s(&dir)), &["--partition", "1"]), &[]);
    assert_says(&err, &["holds partition 0, not 1", "--partition 0"]);
    assert_eq!(snapshot(&dir), before, "the refused store changed");
}

#[test]
fn zero_and_out_of_range_numbers_name_the_flag() {
    let cases: [(Role, &[&str]); 2] = [
        (
            Role::Coordinator,
            &[
                "--worker-threads",
                "--partitions",
                "--default-timeout-ms",
                "--max-timeout-ms",
                "--prepare-timeout-ms",
                "--max-open-txns",
                "--max-inflight-per-participant",
                "--keep-finished",
            ],
        ),
        (
            Role::Participant,
            &[
                "--worker-threads",
                "--max-key-bytes",
                "--max-value-bytes",
                "--max-ops-per-tid",
                "--max-open-tids",
                "--in-doubt-after-ms",
            ],
        ),
    ];
    for (role, flags) in cases {
        let t = tmp();
        let dir = t.path().join("data");
        for flag in flags {
            let err = refused(&with(role.args(s(&dir)), &[flag, "0"]), &[]);
            assert_says(&err, &[&format!("invalid value '0' for '{flag} ")]);
        }
        // The environment-variable twin is checked the same way.
        let err = refused(&role.args(s(&dir)), &[("TWOPC_WORKER_THREADS", "0")]);
        assert_says(&err, &["invalid value '0' for '--worker-threads "]);
        assert!(!dir.exists(), "a refused start created its data directory");
    }
    let t = tmp();
    let dir = t.path().join("data");
    let err = refused(&with(Role::Coordinator.args(s(&dir)), &["--prepare-timeout-ms", "99999999999"]), &[]);
    assert_says(&err, &["invalid value '99999999999' for '--prepare-timeout-ms "]);
    let args = with(Role::Coordinator.args(s(&dir)), &["--default-timeout-ms", "5000", "--max-timeout-ms", "1000"]);
    assert_says(&refused(&args, &[]), &["--default-timeout-ms 5000 is above --max-timeout-ms 1000"]);
    assert!(!dir.exists());
}

#[test]
fn settings_from_environment_variables_alone() {
    let t = tmp();
    let cdir: PathBuf = t.path().join("coord");
    let coordinator = start(
        &["coordinator"],
        &[
            ("TWOPC_COORDINATOR_LISTEN", "127.0.0.1:0"),
            ("TWOPC_COORDINATOR_DATA_DIR", s(&cdir)),
            ("TWOPC_PARTITIONS", "1"),
            ("TWOPC_WORKER_THREADS", "1"),
            ("TWOPC_PREPARE_TIMEOUT_MS", "1500"),
        ],
        &t.path().join("c.log"),
    );
    assert!(cdir.join("decisions.db").exists(), "the coordinator did not use TWOPC_COORDINATOR_DATA_DIR");
    let pdir = t.path().join("p0");
    let participant = start(
        &["participant"],
        &[
            ("TWOPC_PARTICIPANT_LISTEN", "127.0.0.1:0"),
            ("TWOPC_PARTICIPANT_DATA_DIR", s(&pdir)),
            ("TWOPC_PARTITION", "0"),
            ("TWOPC_COORDINATOR", &coordinator.addr),
            ("TWOPC_IN_DOUBT_AFTER_MS", "300"),
        ],
        &t.path().join("p.log"),
    );
    assert!(pdir.join("partition.db").exists(), "the participant did not use TWOPC_PARTICIPANT_DATA_DIR");

    // The participant found the coordinator through TWOPC_COORDINATOR, and
    // so does the CLI: the topology shows the participant's address.
    let deadline = std::time::Instant::now() + BOUND;
    loop {
        let out = twopc(&["topology"], &[("TWOPC_COORDINATOR", &coordinator.addr)]).output().expect("twopc topology");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if stdout.contains(&format!("0  {}", participant.addr)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "participant never registered:\n{stdout}");
        // A poll interval, not a guess: registration retries with backoff.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_replicated_log_is_refused_without_a_reachable_etcd() {
    // Nothing listens on a port we just freed: etcd is unreachable there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("127.0.0.1:{port}");
    let base = ["coordinator", "--partitions", "2", "--listen", "127.0.0.1:0", "--decision-log", "etcd"];
    let err = refused(&base, &[]);
    assert_says(&err, &["error: ", "--etcd-endpoints"]);
    let err = refused(&with(base.to_vec(), &["--etcd-endpoints", &endpoint]), &[]);
    assert_says(&err, &["error: ", "cannot reach etcd at", &endpoint]);
    let err = refused(&with(base.to_vec(), &["--etcd-endpoints", "127.0.0.1:1,,127.0.0.1:2"]), &[]);
    assert_says(&err, &["error: ", "--etcd-endpoints", "empty address"]);
    let err = refused(&with(base.to_vec(), &["--etcd-endpoints", &endpoint, "--cluster-name", "a/b"]), &[]);
    assert_says(&err, &["error: ", "--cluster-name"]);
    let err = refused(&with(base.to_vec(), &["--etcd-endpoints", &endpoint, "--lease-ttl-secs", "1"]), &[]);
    assert_says(&err, &["error: ", "--lease-ttl-secs"]);
    // The same through the environment twins.
    let err = refused(
        &["coordinator", "--partitions", "2", "--listen", "127.0.0.1:0"],
        &[("TWOPC_DECISION_LOG", "etcd"), ("TWOPC_ETCD_ENDPOINTS", &endpoint)],
    );
    assert_says(&err, &["error: ", "cannot reach etcd at"]);
    // The SQLite log still needs its directory.
    let err = refused(&["coordinator", "--partitions", "2", "--listen", "127.0.0.1:0"], &[]);
    assert_says(&err, &["error: ", "--data-dir"]);
}
