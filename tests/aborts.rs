//! Abort paths: a client abort, a participant voting NO, and lock conflicts
//! that resolve without deadlock (PROTOCOL.md rules 3, 4, 10, 12).

mod common;

use std::time::Duration;

use common::*;
use twopc::cluster::ClusterOptions;
use twopc_client::{Decision, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_abort_discards_writes_everywhere() {
    let tc = TestCluster::three().await;
    let (a, b) = (tc.key_on(0, "abort"), tc.key_on(1, "abort"));
    let txn = tc.client.begin(None).await.unwrap();
    txn.put(a.as_bytes(), b"1").await.unwrap();
    txn.put(b.as_bytes(), b"1").await.unwrap();
    txn.abort().await.unwrap();
    assert!(matches!(tc.client.status(txn.tid()).await.unwrap(), Decision::Aborted { .. }));
    // Commit after abort reports the abort; abort again is a no-op.
    assert!(matches!(txn.commit().await.unwrap(), Outcome::Aborted { .. }));
    txn.abort().await.unwrap();
    tc.wait_settled().await;
    assert_eq!(tc.read(&a).await, None);
    assert_eq!(tc.read(&b).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_vote_aborts_the_transaction_everywhere() {
    // Partition 1 restarts after the writes: it lost the unprepared tid
    // (rule 9) and votes NO; partition 0 prepared and must abort.
    let mut tc = TestCluster::three().await;
    let (a, b) = (tc.key_on(0, "no"), tc.key_on(1, "no"));
    let txn = tc.client.begin(None).await.unwrap();
    txn.put(a.as_bytes(), b"1").await.unwrap();
    txn.put(b.as_bytes(), b"1").await.unwrap();
    tc.cluster.restart_participant(1, &[]).unwrap();
    tc.cluster.wait_registered(SETTLE).await.unwrap();
    match txn.commit().await.unwrap() {
        Outcome::Aborted { reason, .. } => assert!(reason.contains("partition 1"), "reason names the voter: {reason}"),
        o => panic!("expected ABORTED, got {o:?}"),
    }
    tc.reconnect().await;
    tc.wait_settled().await;
    assert_eq!(tc.read(&a).await, None);
    assert_eq!(tc.read(&b).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_aborts_an_abandoned_commit_everywhere() {
    let tc = TestCluster::three().await;
    let (a, b) = (tc.key_on(0, "late"), tc.key_on(2, "late"));
    let txn = tc.client.begin(Some(Duration::from_millis(300))).await.unwrap();
    txn.put(a.as_bytes(), b"1").await.unwrap();
    txn.put(b.as_bytes(), b"1").await.unwrap();
    // Wait until the coordinator itself has aborted the tid at its deadline.
    tc.wait_decision(txn.tid(), |d| matches!(d, Decision::Aborted { .. })).await;
    assert!(matches!(txn.commit().await.unwrap(), Outcome::Aborted { .. }));
    tc.wait_settled().await;
    assert_eq!(tc.read(&a).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_conflicts_resolve_by_wait_die_without_deadlock() {
    let tc = TestCluster::start(ClusterOptions::default()).await;
    let (a, b) = (tc.key_on(0, "lock"), tc.key_on(1, "lock"));
    // The classic deadlock shape: old holds a and wants b, young holds b and wants a.
    let old = tc.client.begin(None).await.unwrap();
    let young = tc.client.begin(None).await.unwrap();
    old.put(a.as_bytes(), b"old").await.unwrap();
    young.put(b.as_bytes(), b"young").await.unwrap();
    // The older tid waits for b...
    let waiting = {
        let (old, b) = (old.clone(), b.clone());
        tokio::spawn(async move { old.put(b.as_bytes(), b"old").await })
    };
    // ...and the younger one asking for a dies at once, releasing b. (If
    // the younger request arrives first the outcome is the same: the older
    // then finds b free.)
    let err = young.put(a.as_bytes(), b"young").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted, "{err}");
    assert!(err.to_string().contains("lock conflict"), "{err}");
    waiting.await.unwrap().expect("the older tid gets the lock once the younger one is gone");
    assert_eq!(old.commit().await.unwrap(), Outcome::Committed);
    assert!(matches!(young.commit().await.unwrap(), Outcome::Aborted { .. }));
    tc.wait_value(&a, Some("old")).await;
    tc.wait_value(&b, Some("old")).await;
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_for_update_queues_read_modify_writes_instead_of_aborting() {
    let tc = TestCluster::three().await;
    let a = tc.key_on(0, "rmw");
    let (_, o) = tc.write_txn(&[(&a, "0")]).await;
    assert_eq!(o, Outcome::Committed);
    // Twenty concurrent increments of one key, each read-for-update then
    // write: they queue on the exclusive lock (older ones wait), so the
    // young ones die only when they arrive after an older one; retry those.
    let mut handles = vec![];
    for _ in 0..20 {
        let (client, a) = (tc.client.clone(), a.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let txn = client.begin(None).await.unwrap();
                let step = async {
                    let v: i64 =
                        String::from_utf8(txn.get_for_update(a.as_bytes()).await?.unwrap()).unwrap().parse().unwrap();
                    txn.put(a.as_bytes(), (v + 1).to_string().as_bytes()).await?;
                    txn.commit().await
                };
                match step.await {
                    Ok(Outcome::Committed) => return,
                    Ok(Outcome::Aborted { .. }) => continue,
                    Ok(o @ Outcome::Forgotten { .. }) => panic!("a tid just begun: {o:?}"),
                    Err(e) if e.is_retryable_abort() => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    tc.wait_value(&a, Some("20")).await;
    tc.wait_settled().await;
}

/// Rule 10: the locks of an unprepared tid whose coordinator restarted are
/// released as soon as the participant hears the new coordinator's term
/// (here: the next enlistment there), not at the tid's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinators_unprepared_tids_release_their_locks_at_once() {
    let mut tc = TestCluster::three().await;
    let k = tc.key_on(0, "term");
    let old = tc.client.begin(Some(Duration::from_secs(120))).await.unwrap();
    old.put(k.as_bytes(), b"old").await.unwrap();
    tc.cluster.coordinator.kill();
    tc.cluster.restart_coordinator(&[]).unwrap();
    tc.reconnect().await;
    tc.cluster.wait_registered(SETTLE).await.unwrap();
    let restarted = std::time::Instant::now();
    // A new writer of the same key: without the term it would be refused
    // (wait-die: it is younger) for the old tid's 120 s. An enlist-first
    // (shared) writer hears the new term in its enlistment's answer before
    // its operation runs. (A declared writer can keep dying on the stale
    // lock: its operation runs before any enlistment brings the term; a
    // known gap, see the issue 10 note.)
    let new = tc.client.begin_shared(None).await.unwrap();
    new.put(k.as_bytes(), b"new").await.expect("the replaced coordinator's lock is released");
    assert_eq!(new.commit().await.unwrap(), Outcome::Committed);
    let released = restarted.elapsed();
    eprintln!("coordinator restart -> the old tid's lock released and a new writer committed: {released:?}");
    assert!(released < Duration::from_secs(10), "{released:?}");
    assert_eq!(tc.read(&k).await.as_deref(), Some("new"));
    // The old tid is aborted for its client too, and status and a
    // repeated commit (CLI `commit --tid` included) agree on why.
    let status = tc.client.status(old.tid()).await.unwrap();
    assert!(
        matches!(&status, Decision::Aborted { kind: twopc_client::AbortKind::CoordinatorRestarted, .. }),
        "{status:?}"
    );
    let attached = tc.client.txn(old.tid(), 0);
    let commit = attached.commit().await.unwrap();
    assert!(
        matches!(&commit, Outcome::Aborted { kind: twopc_client::AbortKind::CoordinatorRestarted, .. }),
        "{commit:?}"
    );
    tc.wait_settled().await;
}
