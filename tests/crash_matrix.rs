//! PROTOCOL.md's crash matrix, one test per row, on real processes: a
//! failpoint (armed over the admin RPC) kills the coordinator or a
//! participant with SIGKILL at the named step, the test restarts it on the
//! same data directory and checks the invariants: atomicity (all keys of
//! the tid or none), durability of what the client heard COMMITTED, and
//! liveness after recovery (no prepared tid, open tid or lock left, no
//! unfinished transaction at the coordinator).

mod common;

use std::time::Duration;

use common::*;
use twopc::cluster::ClusterOptions;
use twopc_client::{Decision, FailpointTarget, Outcome, Txn};

/// Starts a tid that wrote "v" on partitions 0, 1 and 2.
async fn three_writes(tc: &TestCluster, name: &str) -> (Txn, Vec<String>) {
    let keys: Vec<String> = (0..3).map(|p| tc.key_on(p, name)).collect();
    let txn = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    for k in &keys {
        txn.put(k.as_bytes(), b"v").await.unwrap();
    }
    (txn, keys)
}

fn refs(keys: &[String]) -> Vec<&str> {
    keys.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_coordinator_crash_before_commit_record_is_durable_aborts() {
    let mut tc = TestCluster::three().await;
    let (txn, keys) = three_writes(&tc, "c1").await;
    arm(&tc, FailpointTarget::Coordinator, "coordinator::before_decision_forced", KILL).await;
    assert!(txn.commit().await.is_err(), "the coordinator died: the client cannot have an outcome");
    restart_coordinator(&mut tc).await;
    assert!(matches!(tc.client.status(txn.tid()).await.unwrap(), Decision::Aborted { .. }));
    tc.wait_settled().await;
    assert!(!all_or_nothing(&tc, &refs(&keys), "v").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_coordinator_crash_after_commit_record_is_durable_commits_everywhere() {
    let mut tc = TestCluster::three().await;
    let (txn, keys) = three_writes(&tc, "c2").await;
    arm(&tc, FailpointTarget::Coordinator, "coordinator::after_decision_forced", KILL).await;
    assert!(txn.commit().await.is_err());
    restart_coordinator(&mut tc).await;
    assert_eq!(tc.client.status(txn.tid()).await.unwrap(), Decision::Committed);
    tc.wait_settled().await;
    assert!(all_or_nothing(&tc, &refs(&keys), "v").await);
    // The client asking again after everything finished still hears COMMITTED.
    assert_eq!(tc.client.status(txn.tid()).await.unwrap(), Decision::Committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_coordinator_crash_after_some_commits_sent_commits_the_rest() {
    let mut tc = TestCluster::three().await;
    let (txn, keys) = three_writes(&tc, "c3").await;
    arm(&tc, FailpointTarget::Coordinator, "coordinator::after_commit_acked", KILL).await;
    // COMMITTED may reach the client before the crash, or not; never ABORTED.
    if let Ok(outcome) = txn.commit().await {
        assert_eq!(outcome, Outcome::Committed);
    }
    restart_coordinator(&mut tc).await;
    assert_eq!(tc.client.status(txn.tid()).await.unwrap(), Decision::Committed);
    tc.wait_settled().await;
    assert!(all_or_nothing(&tc, &refs(&keys), "v").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_participant_crash_before_prepared_state_is_durable_aborts() {
    let mut tc = TestCluster::three().await;
    let (txn, keys) = three_writes(&tc, "c4").await;
    arm(&tc, FailpointTarget::Partition(1), "participant::before_prepare_durable", KILL).await;
    match txn.commit().await.unwrap() {
        Outcome::Aborted { reason, .. } => assert!(reason.contains("partition 1"), "{reason}"),
        o => panic!("expected ABORTED, got {o:?}"),
    }
    restart_participant(&mut tc, 1).await;
    tc.wait_settled().await;
    assert!(!all_or_nothing(&tc, &refs(&keys), "v").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c5_participant_crash_after_prepare_before_vote_aborts_and_it_learns_abort() {
    let mut tc = TestCluster::three().await;
    let (txn, keys) = three_writes(&tc, "c5").await;
    arm(&tc, FailpointTarget::Partition(1), "participant::after_prepare_durable", KILL).await;
    assert!(matches!(txn.commit().await.unwrap(), Outcome::Aborted { .. }));
    restart_participant(&mut tc, 1).await;
    // It came back prepared (in doubt), asked, and dropped the write set.
    tc.wait_settled().await;
    assert!(!all_or_nothing(&tc, &refs(&keys), "v").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c6_participant_crash_after_yes_retakes_locks_and_applies_commit() {
    let mut tc = TestCluster::three().await;
    let (txn, keys) = three_writes(&tc, "c6").await;
    arm(&tc, FailpointTarget::Partition(1), "participant::before_commit_applied", KILL).await;
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    assert!(tc.cluster.participants[1].wait_exit(EXIT));
    // Restart it with the commit step failing, so it stays in doubt and we
    // can see it holding the tid's lock.
    tc.cluster.restart_participant(1, &fp("participant::before_commit_applied=return(error)")).unwrap();
    tc.reconnect().await;
    let in_doubt = tc.client.in_doubt().await.unwrap();
    let p1 = in_doubt.iter().find(|p| p.partition == 1).unwrap();
    let tids: Vec<String> = p1.tids.as_ref().unwrap().iter().map(|t| t.tid.clone()).collect();
    assert_eq!(tids, vec![txn.tid().to_string()]);
    // A newcomer waits for the in-doubt tid's lock until its own deadline.
    let other = tc.client.begin(Some(Duration::from_millis(500))).await.unwrap();
    let err = other.put(keys[1].as_bytes(), b"w").await.unwrap_err();
    // It waited until its deadline aborted it (by the timer or on its next try).
    assert_eq!(err.code(), tonic::Code::Aborted, "the in-doubt tid must hold its lock: {err}");
    // Let the commit through: it learns COMMIT and applies it.
    arm(&tc, FailpointTarget::Partition(1), "participant::before_commit_applied", "").await;
    tc.wait_settled().await;
    assert!(all_or_nothing(&tc, &refs(&keys), "v").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c7_participant_crash_after_apply_before_ack_acks_without_applying_twice() {
    let mut tc = TestCluster::three().await;
    let (txn, keys) = three_writes(&tc, "c7").await;
    arm(&tc, FailpointTarget::Partition(1), "participant::after_commit_applied", KILL).await;
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    assert!(tc.cluster.participants[1].wait_exit(EXIT));
    // While it is down the coordinator keeps the tid unfinished, resending.
    let listed = tc.client.transactions().await.unwrap();
    assert!(listed.iter().any(|t| t.tid == txn.tid().to_string() && t.state == "committing"), "{listed:?}");
    tc.cluster.restart_participant(1, &[]).unwrap();
    tc.reconnect().await;
    tc.wait_settled().await;
    assert!(all_or_nothing(&tc, &refs(&keys), "v").await);
    // A later write is not undone by any late re-application of the old one.
    let (_, o) = tc.write_txn(&[(&keys[1], "w")]).await;
    assert_eq!(o, Outcome::Committed);
    tc.wait_value(&keys[1], Some("w")).await;
    tc.wait_settled().await;
    assert_eq!(tc.read(&keys[1]).await.as_deref(), Some("w"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c8_client_vanishes_after_writes_locks_released_at_deadline() {
    let tc = TestCluster::three().await;
    let keys: Vec<String> = (0..3).map(|p| tc.key_on(p, "c8")).collect();
    let tid = {
        let txn = tc.client.begin(Some(Duration::from_millis(500))).await.unwrap();
        for k in &keys {
            txn.put(k.as_bytes(), b"v").await.unwrap();
        }
        txn.tid()
        // The client drops the transaction without commit or abort.
    };
    tc.wait_decision(tid, |d| matches!(d, Decision::Aborted { .. })).await;
    tc.wait_settled().await;
    // The keys are free again.
    let (_, o) = tc.write_txn(&[(&keys[0], "w"), (&keys[1], "w"), (&keys[2], "w")]).await;
    assert_eq!(o, Outcome::Committed);
    tc.wait_settled().await;
    assert!(all_or_nothing(&tc, &refs(&keys), "w").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c9_coordinator_and_participant_crash_together_commit_once_both_are_back() {
    let mut tc = TestCluster::three().await;
    let (txn, keys) = three_writes(&tc, "c9").await;
    arm(&tc, FailpointTarget::Coordinator, "coordinator::after_decision_forced", KILL).await;
    assert!(txn.commit().await.is_err());
    assert!(tc.cluster.coordinator.wait_exit(EXIT));
    // Partition 2 voted YES and dies as well, before any decision reached it.
    tc.cluster.participants[2].kill();
    tc.cluster.restart_participant(2, &[]).unwrap();
    tc.cluster.restart_coordinator(&[]).unwrap();
    tc.reconnect().await;
    assert_eq!(tc.client.status(txn.tid()).await.unwrap(), Decision::Committed);
    tc.wait_settled().await;
    assert!(all_or_nothing(&tc, &refs(&keys), "v").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c10_slow_participant_during_prepare_times_out_and_learns_abort() {
    let opts =
        ClusterOptions { coordinator_args: vec!["--prepare-timeout-ms".into(), "500".into()], ..Default::default() };
    let tc = TestCluster::start(opts).await;
    let (txn, keys) = three_writes(&tc, "c10").await;
    arm(&tc, FailpointTarget::Partition(1), "participant::before_prepare_durable", "sleep(2000)").await;
    match txn.commit().await.unwrap() {
        Outcome::Aborted { reason, kind } => {
            assert!(reason.contains("partition 1") && reason.contains("500 ms"), "{reason}");
            assert_eq!(kind, twopc_client::AbortKind::ParticipantUnreachable, "{reason}");
        }
        o => panic!("expected ABORTED, got {o:?}"),
    }
    arm(&tc, FailpointTarget::Partition(1), "participant::before_prepare_durable", "").await;
    tc.wait_settled().await;
    assert!(!all_or_nothing(&tc, &refs(&keys), "v").await);
}
