//! A coordinator that is alive but does not answer for a while (a long
//! GC-like stall, SIGSTOP, an overloaded host): with one address, a CLI
//! call waits for it within its call budget (`--call-budget-ms`) instead of
//! failing after the first attempt's cut (2 s), and when the budget runs
//! out the error names the coordinator and the likely cause (not
//! answering: paused, hung or overloaded), never a bare
//! "DEADLINE_EXCEEDED: no answer within 2000ms" and never a TLS hint.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use twopc_client::Outcome;

fn cli(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_twopc"));
    c.args(args)
        .env_remove("TWOPC_COORDINATOR")
        .env_remove("TWOPC_CALL_BUDGET_MS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_coordinator_is_waited_for_within_the_budget_and_named_when_it_runs_out() {
    let mut tc = TestCluster::three().await;
    let addr = tc.cluster.coordinator_addr();
    let (tid, outcome) = tc.write_txn(&[(&tc.key_on(0, "paused"), "1"), (&tc.key_on(1, "paused"), "1")]).await;
    assert!(matches!(outcome, Outcome::Committed), "{outcome:?}");
    let tid = tid.to_string();

    // Frozen for 3 s, longer than one attempt (2 s) and well within the
    // 20 s budget: the status call waits and answers.
    tc.cluster.coordinator.pause();
    let started = Instant::now();
    let child = cli(&["status", &tid, "--coordinator", &addr, "--call-budget-ms", "20000"]).spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    tc.cluster.coordinator.resume();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "stdout {out} stderr {err}");
    assert!(out.contains("COMMITTED"), "{out}");
    assert!(started.elapsed() >= Duration::from_secs(3), "answered while frozen?");

    // Frozen past the budget: the error names the coordinator and says it
    // did not answer, with no TLS hint.
    tc.cluster.coordinator.pause();
    let started = Instant::now();
    let o = cli(&["status", &tid, "--coordinator", &addr, "--call-budget-ms", "3000"]).output().unwrap();
    let elapsed = started.elapsed();
    tc.cluster.coordinator.resume();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(elapsed >= Duration::from_millis(2900), "gave up after {elapsed:?}, before the budget: {err}");
    assert!(err.contains(&addr) && err.contains("did not answer"), "{err}");
    assert!(err.contains("paused") || err.contains("hung"), "{err}");
    assert!(!err.contains("TLS"), "{err}");
}

/// The CLI's step-by-step `put --tid` (a handle attached by tid, which does
/// not know the deadline) at a participant that is frozen: it fails within
/// a bounded time naming the partition, rather than hang forever, and the
/// transaction then aborts (a failed operation aborts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_by_step_put_at_a_frozen_participant_fails_in_bounded_time() {
    let mut tc = TestCluster::three().await;
    let addr = tc.cluster.coordinator_addr();
    let txn = tc.client.begin(Some(Duration::from_secs(120))).await.unwrap();
    let tid = txn.tid().to_string();
    let (k0, k1) = (tc.key_on(0, "frozen"), tc.key_on(1, "frozen"));
    let o = cli(&["put", "--tid", &tid, &k0, "1", "--coordinator", &addr]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));

    tc.cluster.participants[1].pause();
    let started = Instant::now();
    let child = cli(&["put", "--tid", &tid, &k1, "1", "--coordinator", &addr]).spawn().unwrap();
    let id = child.id();
    let waited = tokio::task::spawn_blocking(move || {
        let mut child = child;
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(_status) = child.try_wait().unwrap() {
                return Some(child.wait_with_output().unwrap());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    tc.cluster.participants[1].resume();
    let o = waited.unwrap_or_else(|| panic!("`twopc put --tid` (pid {id}) still waiting after 40 s"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    assert!(err.contains("partition 1") && err.contains("did not answer"), "{err}");

    let o = cli(&["commit", "--tid", &tid, "--coordinator", &addr]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out} {}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("ABORTED"), "{out}");
    assert_eq!(tc.read(&k0).await, None, "nothing of the aborted transaction is committed");
}
