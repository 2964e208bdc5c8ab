//! One process per data directory (PROTOCOL.md rule 13): a second
//! coordinator or participant started on a data directory a running one
//! uses is refused at start, with one `error:` line naming the holder's
//! pid and exit code 2, before it reads the data or serves; the first
//! keeps serving correctly. A holder that was SIGKILLed leaves no stale
//! lock: the restart on the same directory starts (the kernel released
//! the `flock`), although the `LOCK` file still names the dead pid.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use twopc_client::{Decision, Outcome};

const BIN: &str = env!("CARGO_BIN_EXE_twopc");
/// Generous for a loaded machine; a refusal takes milliseconds.
const BOUND: Duration = Duration::from_secs(30);

/// Runs `twopc args` (no inherited twopc settings), expects it to exit by
/// itself within [`BOUND`] without serving, and returns its exit code and
/// stderr.
fn run_refused(args: &[String]) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TWOPC_") || k == "FAILPOINTS" {
            cmd.env_remove(k);
        }
    }
    let child =
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn twopc");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(BOUND) {
        Ok(out) => out.expect("wait for twopc"),
        Err(_) => {
            // SAFETY: kill(2) on our own child, not reaped yet (its waiter has not returned).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let out = rx.recv().expect("waiter").expect("wait for twopc");
            panic!("twopc {args:?} was not refused: still running after {BOUND:?}: {out:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listening on"), "twopc {args:?} served:\n{stdout}");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_refused_naming(code: Option<i32>, stderr: &str, dir: &Path, holder: u32) {
    assert_eq!(code, Some(2), "exit code; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    let line = lines[0];
    assert!(line.starts_with("error:"), "{line}");
    assert!(line.contains(&format!("pid {holder}")), "the holder's pid {holder}: {line}");
    assert!(line.contains(&dir.display().to_string()) && line.contains("in use"), "{line}");
    assert!(!line.contains("panicked"), "{line}");
}

fn recorded_pid(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("LOCK")).unwrap().trim().parse().unwrap()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_on_the_same_data_dir_is_refused_and_the_first_keeps_serving() {
    let tc = TestCluster::three().await;
    let (a, b) = (tc.key_on(0, "lock-a"), tc.key_on(1, "lock-b"));
    let (t1, outcome) = tc.write_txn(&[(&a, "1"), (&b, "1")]).await;
    assert_eq!(outcome, Outcome::Committed);

    let dir = tc.cluster.dir.join("coordinator");
    let holder = tc.cluster.coordinator.pid().unwrap();
    assert_eq!(recorded_pid(&dir), holder);
    let args: Vec<String> = ["coordinator", "--listen", "127.0.0.1:0", "--partitions", "3", "--data-dir", &s(&dir)]
        .map(String::from)
        .into();
    let (code, stderr) = run_refused(&args);
    assert_refused_naming(code, &stderr, &dir, holder);
    // The refused process did not take the lock over.
    assert_eq!(recorded_pid(&dir), holder);

    // The first coordinator still answers T1 right and commits new work.
    assert_eq!(tc.client.status(t1).await.unwrap(), Decision::Committed);
    let (t2, outcome) = tc.write_txn(&[(&a, "2"), (&b, "2")]).await;
    assert_eq!(outcome, Outcome::Committed);
    assert_eq!(tc.client.status(t2).await.unwrap(), Decision::Committed);
    tc.wait_value(&a, Some("2")).await;
    tc.wait_value(&b, Some("2")).await;
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_participant_on_the_same_data_dir_is_refused_and_the_first_keeps_serving() {
    let tc = TestCluster::three().await;
    let key = tc.key_on(1, "lock-p");
    let dir = tc.cluster.dir.join("p1");
    let holder = tc.cluster.participants[1].pid().unwrap();
    assert_eq!(recorded_pid(&dir), holder);
    let args: Vec<String> = [
        "participant",
        "--partition",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--coordinator",
        &tc.cluster.coordinator_addr(),
        "--data-dir",
        &s(&dir),
    ]
    .map(String::from)
    .into();
    let (code, stderr) = run_refused(&args);
    assert_refused_naming(code, &stderr, &dir, holder);

    // Partition 1 still serves, registered at its own address.
    let (_, outcome) = tc.write_txn(&[(&key, "v"), (&tc.key_on(2, "lock-p"), "v")]).await;
    assert_eq!(outcome, Outcome::Committed);
    tc.wait_value(&key, Some("v")).await;
    let topology = tc.client.topology().await.unwrap();
    assert_eq!(topology.address(1), Some(tc.cluster.participants[1].addr.to_string().as_str()));
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_holder_leaves_no_stale_lock() {
    let mut tc = TestCluster::three().await;
    let (a, b) = (tc.key_on(0, "stale-a"), tc.key_on(1, "stale-b"));
    let (t1, outcome) = tc.write_txn(&[(&a, "1"), (&b, "1")]).await;
    assert_eq!(outcome, Outcome::Committed);

    // Coordinator: SIGKILL (no destructor runs), then restart on the same data.
    let dir = tc.cluster.dir.join("coordinator");
    let old = tc.cluster.coordinator.pid().unwrap();
    tc.cluster.coordinator.kill();
    assert_eq!(recorded_pid(&dir), old, "the LOCK file still names the dead holder");
    tc.cluster.restart_coordinator(&[]).expect("restart on the data of a SIGKILLed coordinator");
    tc.reconnect().await;
    let new = tc.cluster.coordinator.pid().unwrap();
    assert_ne!(new, old);
    assert_eq!(recorded_pid(&dir), new);
    assert_eq!(tc.client.status(t1).await.unwrap(), Decision::Committed);

    // Participant: the same.
    let dir = tc.cluster.dir.join("p1");
    let old = tc.cluster.participants[1].pid().unwrap();
    tc.cluster.participants[1].kill();
    assert_eq!(recorded_pid(&dir), old);
    tc.cluster.restart_participant(1, &[]).expect("restart on the data of a SIGKILLed participant");
    tc.reconnect().await;
    assert_eq!(recorded_pid(&dir), tc.cluster.participants[1].pid().unwrap());
    tc.wait_value(&b, Some("1")).await;
    let (_, outcome) = tc.write_txn(&[(&a, "2"), (&b, "2")]).await;
    assert_eq!(outcome, Outcome::Committed);
    tc.wait_settled().await;
}

/// A restarted holder takes the lock before its start-up checks (which read
/// the whole data file once, seconds for a large one) and records its pid
/// only after them; meanwhile the `LOCK` file still names the crashed
/// holder. A process refused in that window must not name the dead pid as
/// the one to stop (there is no such process, or by then an unrelated one
/// reusing the number): it says the holder is starting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_never_names_a_dead_holder() {
    let mut tc = TestCluster::three().await;
    let dir = tc.cluster.dir.join("p1");
    let dead = tc.cluster.participants[1].pid().unwrap();
    tc.cluster.participants[1].kill();
    assert_eq!(recorded_pid(&dir), dead);
    // The restarted holder in its checks: the lock held, nothing recorded.
    let starting = twopc_proto::data_dir_lock::DataDirLock::acquire(&dir).expect("the dead holder's lock is free");
    let args: Vec<String> = [
        "participant",
        "--partition",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--coordinator",
        &tc.cluster.coordinator_addr(),
        "--data-dir",
        &s(&dir),
    ]
    .map(String::from)
    .into();
    let (code, stderr) = run_refused(&args);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(!stderr.contains(&format!("pid {dead}")), "names the dead holder: {stderr}");
    assert!(stderr.contains("in use by another process") && stderr.contains("it is starting"), "{stderr}");
    assert_eq!(recorded_pid(&dir), dead, "the refused process wrote nothing");

    drop(starting);
    tc.cluster.restart_participant(1, &[]).expect("restart");
    tc.reconnect().await;
    assert_eq!(recorded_pid(&dir), tc.cluster.participants[1].pid().unwrap());
    tc.wait_settled().await;
}
