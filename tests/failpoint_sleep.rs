//! A failpoint pauses the step, not the process: while one protocol step
//! of a participant or of the coordinator sleeps at an armed
//! `sleep(5000)` failpoint (each process runs a single runtime thread, as
//! by default), every other request to that process is answered at once:
//! health checks, reads, admin listings, other transactions' calls, and the
//! `SetFailpoint` that disarms it; disarming ends the sleep, and the
//! paused transaction then finishes normally.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use twopc::cluster::ClusterOptions;
use twopc_client::{Decision, FailpointTarget, Outcome};
use twopc_proto::pb;

/// The sleep armed: long enough that a frozen process could not answer
/// within [`PROMPT`].
const SLEEP_MS: u64 = 5000;
/// An answer within this is prompt (it takes milliseconds; this leaves
/// room for a loaded machine and stays well under the sleep).
const PROMPT: Duration = Duration::from_millis(1500);

/// Polls `log` until a step is sleeping at failpoint `name`.
async fn wait_sleeping(log: &Path, name: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|l| l.contains("this step waits") && l.contains(name)) {
            return;
        }
        assert!(Instant::now() < deadline, "no step reached failpoint {name} (log {})", log.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `call`, asserting it is answered within [`PROMPT`]; returns its result.
async fn prompt<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = tokio::time::timeout(PROMPT * 4, call).await.unwrap_or_else(|_| panic!("{what}: no answer"));
    let took = started.elapsed();
    eprintln!("{what}: answered in {took:?} while a step sleeps");
    assert!(took < PROMPT, "{what} took {took:?}: the process froze with the sleeping step");
    out
}

async fn healthy(addr: &str, service: &str) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let status = HealthClient::new(channel).check(HealthCheckRequest { service: service.into() }).await.unwrap();
    assert_eq!(status.into_inner().status(), ServingStatus::Serving);
}

fn long_prepare() -> ClusterOptions {
    // The coordinator waits out the sleeping prepare instead of aborting.
    ClusterOptions { coordinator_args: vec!["--prepare-timeout-ms".into(), "30000".into()], ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_participant_step_leaves_the_participant_serving() {
    let tc = TestCluster::start(long_prepare()).await;
    const FP: &str = "participant::before_prepare_durable";
    let (a, b) = (tc.key_on(1, "fp-a"), tc.key_on(2, "fp-b"));
    let (other, _) = tc.write_txn(&[(&tc.key_on(1, "fp-other"), "old")]).await;
    tc.wait_decision(other, |d| *d == Decision::Committed).await;

    let txn = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    txn.put(a.as_bytes(), b"v").await.unwrap();
    txn.put(b.as_bytes(), b"v").await.unwrap();
    arm(&tc, FailpointTarget::Partition(1), FP, &format!("sleep({SLEEP_MS})")).await;
    let armed = Instant::now();
    let commit = tokio::spawn(async move { txn.commit().await });
    wait_sleeping(&tc.cluster.dir.join("p1.log"), FP).await;

    let addr = tc.cluster.participants[1].addr.to_string();
    prompt("health check of partition 1", healthy(&addr, "twopc.v1.Participant")).await;
    let got = prompt("read at partition 1", tc.client.read(tc.key_on(1, "fp-other").as_bytes())).await;
    assert_eq!(got.unwrap().as_deref(), Some(&b"old"[..]));
    let channel = tc.cluster.connect_options().tls.endpoint(&addr).unwrap().connect().await.unwrap();
    let mut raw = pb::participant_client::ParticipantClient::new(channel);
    let listing = prompt("ListInDoubt at partition 1", raw.list_in_doubt(pb::ListInDoubtRequest {})).await.unwrap();
    assert!(listing.into_inner().locked_keys >= 1, "the sleeping transaction still holds its lock");
    // Another transaction through partition 1 is served too (up to its own prepare).
    let other_txn = tc.client.begin(Some(Duration::from_secs(30))).await.unwrap();
    prompt("put of another transaction at partition 1", other_txn.put(tc.key_on(1, "fp-x").as_bytes(), b"x"))
        .await
        .unwrap();
    assert!(!commit.is_finished(), "the sleeping step should still be waiting");

    prompt("SetFailpoint (disarm) at partition 1", tc.client.set_failpoint(FailpointTarget::Partition(1), FP, ""))
        .await
        .unwrap();
    // Disarming ended the sleep: the transaction finishes, before the
    // sleep would have ended by itself.
    let outcome = tokio::time::timeout(SETTLE, commit).await.expect("commit answers").unwrap().unwrap();
    assert_eq!(outcome, Outcome::Committed);
    let took = armed.elapsed();
    eprintln!("commit finished {took:?} after arming a {SLEEP_MS} ms sleep");
    assert!(took < Duration::from_millis(SLEEP_MS), "the disarmed sleep ran its full {SLEEP_MS} ms ({took:?})");
    assert_eq!(other_txn.commit().await.unwrap(), Outcome::Committed);
    tc.wait_value(&a, Some("v")).await;
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_coordinator_step_leaves_the_coordinator_serving() {
    let tc = TestCluster::start(long_prepare()).await;
    const FP: &str = "coordinator::before_decision_forced";
    let (a, b) = (tc.key_on(0, "fpc-a"), tc.key_on(1, "fpc-b"));
    let (done, _) = tc.write_txn(&[(&a, "old"), (&b, "old")]).await;
    tc.wait_decision(done, |d| *d == Decision::Committed).await;

    let txn = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    txn.put(a.as_bytes(), b"new").await.unwrap();
    txn.put(b.as_bytes(), b"new").await.unwrap();
    arm(&tc, FailpointTarget::Coordinator, FP, &format!("sleep({SLEEP_MS})")).await;
    let armed = Instant::now();
    let tid = txn.tid();
    let commit = tokio::spawn(async move { txn.commit().await });
    wait_sleeping(&tc.cluster.dir.join("coordinator.log"), FP).await;

    prompt("health check of the coordinator", healthy(&tc.cluster.coordinator_addr(), "twopc.v1.Coordinator")).await;
    let status = prompt("status of a committed tid", tc.client.status(done)).await.unwrap();
    assert_eq!(status, Decision::Committed);
    let status = prompt("status of the sleeping tid", tc.client.status(tid)).await.unwrap();
    assert_eq!(status, Decision::Pending);
    prompt("ListTransactions", tc.client.transactions()).await.unwrap();
    let begun = prompt("begin of another transaction", tc.client.begin(Some(Duration::from_secs(30)))).await.unwrap();
    begun.abort().await.unwrap();
    assert!(!commit.is_finished(), "the sleeping step should still be waiting");

    prompt("SetFailpoint (disarm) at the coordinator", tc.client.set_failpoint(FailpointTarget::Coordinator, FP, ""))
        .await
        .unwrap();
    let outcome = tokio::time::timeout(SETTLE, commit).await.expect("commit answers").unwrap().unwrap();
    assert_eq!(outcome, Outcome::Committed);
    let took = armed.elapsed();
    eprintln!("commit finished {took:?} after arming a {SLEEP_MS} ms sleep");
    assert!(took < Duration::from_millis(SLEEP_MS), "the disarmed sleep ran its full {SLEEP_MS} ms ({took:?})");
    tc.wait_value(&a, Some("new")).await;
    tc.wait_settled().await;
}
