//! The one-phase path (a transaction that touched a single participant)
//! under crashes, on real processes. The coordinator forces a DELEGATED
//! record and hands the decision to the participant, whose durable commit
//! (recorded with its data) is the decision. Each test kills a process at
//! a step of that path, restarts it on its data directory, and checks what
//! the crash matrix checks: the write is applied or not, matching what the
//! client heard and what the coordinator answers when asked, and the
//! cluster settles (no open tid, lock or unfinished transaction).

mod common;

use std::time::Duration;

use common::*;
use twopc_client::{Decision, FailpointTarget, Outcome, Txn};

/// Starts a tid that wrote "v" on one key of partition 1 only.
async fn one_write(tc: &TestCluster, name: &str, timeout: Duration) -> (Txn, String) {
    let key = tc.key_on(1, name);
    let txn = tc.client.begin(Some(timeout)).await.unwrap();
    txn.put(key.as_bytes(), b"v").await.unwrap();
    (txn, key)
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_participant_commits_without_a_prepare_round() {
    let tc = TestCluster::three().await;
    let (txn, key) = one_write(&tc, "o0", LONG).await;
    // Any prepare at partition 1 would kill it: one phase never prepares.
    arm(&tc, FailpointTarget::Partition(1), "participant::before_prepare_durable", KILL).await;
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    assert_eq!(tc.read(&key).await.as_deref(), Some("v"));
    assert_eq!(tc.client.status(txn.tid()).await.unwrap(), Decision::Committed);
    // A repeated commit gets the same answer.
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    arm(&tc, FailpointTarget::Partition(1), "participant::before_prepare_durable", "").await;
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_before_the_delegation_is_durable_aborts() {
    let mut tc = TestCluster::three().await;
    // A short deadline: the participant holds an active (unprepared) tid
    // that nobody will ask about, and releases it at the deadline.
    let (txn, key) = one_write(&tc, "o1", Duration::from_secs(3)).await;
    arm(&tc, FailpointTarget::Coordinator, "coordinator::before_delegation_forced", KILL).await;
    assert!(txn.commit().await.is_err(), "the coordinator died: the client cannot have an outcome");
    restart_coordinator(&mut tc).await;
    assert!(matches!(tc.client.status(txn.tid()).await.unwrap(), Decision::Aborted { .. }));
    tc.wait_settled().await;
    assert_eq!(tc.read(&key).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_after_the_delegation_is_durable_asks_again_and_commits() {
    let mut tc = TestCluster::three().await;
    let (txn, key) = one_write(&tc, "o2", LONG).await;
    arm(&tc, FailpointTarget::Coordinator, "coordinator::after_delegation_forced", KILL).await;
    assert!(txn.commit().await.is_err());
    restart_coordinator(&mut tc).await;
    // Recovery found the record and handed the decision over again.
    tc.wait_decision(txn.tid(), |d| *d == Decision::Committed).await;
    tc.wait_settled().await;
    assert_eq!(tc.read(&key).await.as_deref(), Some("v"));
    // The outcome survives another coordinator crash (the finished record).
    tc.cluster.coordinator.kill();
    tc.cluster.restart_coordinator(&[]).unwrap();
    tc.reconnect().await;
    assert_eq!(tc.client.status(txn.tid()).await.unwrap(), Decision::Committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crash_before_its_commit_is_durable_aborts() {
    let mut tc = TestCluster::three().await;
    let (txn, key) = one_write(&tc, "o3", LONG).await;
    arm(&tc, FailpointTarget::Partition(1), "participant::before_one_phase_applied", KILL).await;
    // The coordinator keeps asking until the participant is back; the
    // restarted participant lost the unprepared tid, which is an abort.
    let commit = tokio::spawn(async move { txn.commit().await.map(|o| (txn.tid(), o)) });
    restart_participant(&mut tc, 1).await;
    let (tid, outcome) = commit.await.unwrap().unwrap();
    assert!(matches!(outcome, Outcome::Aborted { ref reason, .. } if reason.contains("partition 1")), "{outcome:?}");
    assert!(matches!(tc.client.status(tid).await.unwrap(), Decision::Aborted { .. }));
    tc.wait_settled().await;
    assert_eq!(tc.read(&key).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crash_after_its_commit_is_durable_answers_committed_from_its_record() {
    let mut tc = TestCluster::three().await;
    let (txn, key) = one_write(&tc, "o4", LONG).await;
    arm(&tc, FailpointTarget::Partition(1), "participant::after_one_phase_applied", KILL).await;
    let commit = tokio::spawn(async move { txn.commit().await.map(|o| (txn.tid(), o)) });
    restart_participant(&mut tc, 1).await;
    let (tid, outcome) = commit.await.unwrap().unwrap();
    assert_eq!(outcome, Outcome::Committed);
    assert_eq!(tc.client.status(tid).await.unwrap(), Decision::Committed);
    tc.wait_settled().await;
    assert_eq!(tc.read(&key).await.as_deref(), Some("v"));
    // Applied once: a later write is not undone by a repeat of the old one.
    let (_, o) = tc.write_txn(&[(&key, "w")]).await;
    assert_eq!(o, Outcome::Committed);
    tc.wait_settled().await;
    assert_eq!(tc.read(&key).await.as_deref(), Some("w"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_and_participant_crash_together_after_the_delegation_aborts() {
    let mut tc = TestCluster::three().await;
    let (txn, key) = one_write(&tc, "o5", LONG).await;
    arm(&tc, FailpointTarget::Coordinator, "coordinator::after_delegation_forced", KILL).await;
    assert!(txn.commit().await.is_err());
    assert!(tc.cluster.coordinator.wait_exit(EXIT));
    // The participant dies too, losing the unprepared tid before it got
    // the decision: the coordinator's repeat then hears it aborted.
    tc.cluster.participants[1].kill();
    tc.cluster.restart_participant(1, &[]).unwrap();
    tc.cluster.restart_coordinator(&[]).unwrap();
    tc.reconnect().await;
    tc.wait_decision(txn.tid(), |d| matches!(d, Decision::Aborted { .. })).await;
    tc.wait_settled().await;
    assert_eq!(tc.read(&key).await, None);
    // And the tid can never commit later: a repeated commit hears ABORTED.
    assert!(matches!(txn.commit().await.unwrap(), Outcome::Aborted { .. }));
}
