//! Declared operations (PROTOCOL.md rule 2, second design) on real
//! processes: a participant answers a declared operation before it has
//! enlisted, and the client's commit declares its participants and its
//! count of operations at each. What must hold:
//! - a commit that under-declares (a partition left out, or a count lower
//!   than what was sent) commits nowhere: ABORTED with the reason, data
//!   unchanged everywhere, locks released;
//! - a participant SIGKILLed and restarted between an operation and the
//!   commit makes the tid abort;
//! - a client that never commits: the participants release the locks at
//!   the deadline;
//! - `commit --tid` of a declared tid (from another process) is refused,
//!   and the tid still commits from the process that began it;
//! - the CLI's attach-by-tid flow (enlist first) still commits.

mod common;

use std::time::{Duration, Instant};

use common::*;
use twopc_client::{AbortKind, Outcome};
use twopc_proto::pb;

/// A declared put of `key` at partition `p`, as the library sends it.
async fn declared_put(tc: &TestCluster, p: u32, tid: &str, key: &str, remaining_ms: u64) {
    let req = pb::PutRequest { tid: tid.into(), key: key.into(), value: b"new".to_vec(), declared: true, remaining_ms };
    tc.raw_participant(p).await.put(req).await.unwrap_or_else(|e| panic!("declared put at partition {p}: {e}"));
}

/// Polls the coordinator's listing until `tid` has `parts` enlisted: the
/// background enlistments have landed.
async fn wait_enlisted(tc: &TestCluster, tid: &str, parts: &[u32]) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let listing = tc.client.transactions().await.unwrap();
        let enlisted: Vec<u32> = listing
            .iter()
            .find(|t| t.tid == tid)
            .map(|t| t.participants.iter().map(|p| p.partition).collect())
            .unwrap_or_default();
        if parts.iter().all(|p| enlisted.contains(p)) {
            return;
        }
        assert!(Instant::now() < deadline, "tid {tid}: enlisted {enlisted:?}, want {parts:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn begin_declaring(tc: &TestCluster) -> (String, u64) {
    let b = tc.raw_coordinator().await.begin(pb::BeginRequest { timeout_ms: 30_000, declares: true }).await.unwrap();
    let b = b.into_inner();
    (b.tid, b.remaining_ms.expect("remaining_ms"))
}

async fn commit(tc: &TestCluster, tid: &str, declaration: &[(u32, u64)]) -> pb::CommitResponse {
    let declaration =
        declaration.iter().map(|&(partition, operations)| pb::DeclaredPartition { partition, operations }).collect();
    let req = pb::CommitRequest { tid: tid.into(), wrote: true, declared: true, declaration };
    tc.raw_coordinator().await.commit(req).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_under_declared_commit_is_committed_nowhere() {
    let tc = TestCluster::three().await;
    let (a, b, a2) = (tc.key_on(0, "under"), tc.key_on(1, "under"), tc.key_on(0, "under-2"));
    // Each case its own keys: an aborted tid's locks go a moment after its
    // answer, and a younger tid on the same key would die on them (wait-die).
    let (c, d, c2) = (tc.key_on(0, "lower"), tc.key_on(1, "lower"), tc.key_on(0, "lower-2"));
    let (e, e2) = (tc.key_on(0, "one-phase"), tc.key_on(0, "one-phase-2"));

    // Operations on partitions 0 and 1, the commit declares only 0. (Once
    // partition 1's enlistment has landed, as it has within milliseconds:
    // the coordinator can abort only for a partition it knows; one it does
    // not know is never prepared, so it never commits the tid either.)
    let (tid, left) = begin_declaring(&tc).await;
    declared_put(&tc, 0, &tid, &a, left).await;
    declared_put(&tc, 1, &tid, &b, left).await;
    wait_enlisted(&tc, &tid, &[0, 1]).await;
    let r = commit(&tc, &tid, &[(0, 1)]).await;
    assert_eq!(r.outcome(), pb::Outcome::Aborted, "{r:?}");
    assert_eq!(r.abort_kind(), pb::AbortKind::DeclarationMismatch, "{r:?}");
    assert!(r.reason.contains("[1]") && r.reason.contains("did not declare"), "{}", r.reason);
    eprintln!("partition left out: {}", r.reason);

    // A count lower than what was sent: two puts at partition 0, one declared.
    let (tid2, left) = begin_declaring(&tc).await;
    declared_put(&tc, 0, &tid2, &c, left).await;
    declared_put(&tc, 0, &tid2, &c2, left).await;
    declared_put(&tc, 1, &tid2, &d, left).await;
    let r = commit(&tc, &tid2, &[(0, 1), (1, 1)]).await;
    assert_eq!(r.outcome(), pb::Outcome::Aborted, "{r:?}");
    assert_eq!(r.abort_kind(), pb::AbortKind::DeclarationMismatch, "{r:?}");
    assert!(r.reason.contains("partition 0 voted NO") && r.reason.contains("declared 1"), "{}", r.reason);
    assert!(r.reason.contains("applied 2"), "{}", r.reason);
    eprintln!("count too low: {}", r.reason);

    // The same count lower in one phase (one partition).
    let (tid3, left) = begin_declaring(&tc).await;
    declared_put(&tc, 0, &tid3, &e, left).await;
    declared_put(&tc, 0, &tid3, &e2, left).await;
    let r = commit(&tc, &tid3, &[(0, 1)]).await;
    assert_eq!(r.outcome(), pb::Outcome::Aborted, "{r:?}");
    assert_eq!(r.abort_kind(), pb::AbortKind::DeclarationMismatch, "{r:?}");

    // Nothing committed anywhere, every lock released, and the status agrees.
    for key in [&a, &b, &a2, &c, &d, &c2, &e, &e2] {
        assert_eq!(tc.read(key).await, None, "{key}");
    }
    for t in [&tid, &tid2, &tid3] {
        let d = tc.client.status(t.parse().unwrap()).await.unwrap();
        assert!(matches!(d, twopc_client::Decision::Aborted { kind: AbortKind::DeclarationMismatch, .. }), "{d:?}");
    }
    tc.wait_settled().await;

    // Bad declarations are refused before anything happens.
    let (tid4, left) = begin_declaring(&tc).await;
    let e = tc
        .raw_participant(0)
        .await
        .put(pb::PutRequest { tid: tid4.clone(), key: a.clone().into(), declared: true, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("remaining_ms"), "{e:?}");
    declared_put(&tc, 0, &tid4, &a, left).await;
    let req = pb::CommitRequest {
        tid: tid4.clone(),
        wrote: true,
        declared: true,
        declaration: vec![
            pb::DeclaredPartition { partition: 0, operations: 1 },
            pb::DeclaredPartition { partition: 0, operations: 1 },
        ],
    };
    let e = tc.raw_coordinator().await.commit(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("declared twice"), "{e:?}");
    // The right declaration then commits it.
    assert_eq!(commit(&tc, &tid4, &[(0, 1)]).await.outcome(), pb::Outcome::Committed);
    tc.wait_value(&a, Some("new")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_killed_and_restarted_between_an_operation_and_commit_aborts() {
    let mut tc = TestCluster::three().await;
    let (a, b, b2) = (tc.key_on(0, "restart"), tc.key_on(1, "restart"), tc.key_on(1, "restart-2"));
    let txn = tc.client.begin(Some(Duration::from_secs(30))).await.unwrap();
    assert!(txn.declares());
    txn.put(a.as_bytes(), b"new").await.unwrap();
    txn.put(b.as_bytes(), b"new").await.unwrap();
    // SIGKILL partition 1 and restart it on its data: its unprepared
    // operation is gone.
    tc.cluster.participants[1].kill();
    tc.cluster.restart_participant(1, &[]).unwrap();
    tc.cluster.wait_registered(SETTLE).await.unwrap();
    // The transaction's client routes to partition 1's new address.
    tc.client.topology().await.unwrap();
    // A later declared operation there is answered (a new state, counted
    // from zero); the commit must still abort.
    match txn.put(b2.as_bytes(), b"new").await {
        Ok(()) => eprintln!("put after the restart: answered"),
        // The old connection may be gone: the library then aborts the tid.
        Err(e) => eprintln!("put after the restart: {e}"),
    }
    let outcome = txn.commit().await.unwrap();
    let Outcome::Aborted { reason, kind } = &outcome else { panic!("{outcome:?}") };
    eprintln!("after the restart: {kind}: {reason}");
    // Either cause is the real one, depending on whether the first
    // incarnation's background enlistment reached the coordinator before
    // the SIGKILL: if it did, the new incarnation's enlistment tells the
    // coordinator the partition restarted; if not, the coordinator first
    // hears of partition 1 from the new incarnation, and the count check
    // at prepare finds the lost operation.
    assert!(matches!(kind, AbortKind::ParticipantRestarted | AbortKind::DeclarationMismatch), "{kind}: {reason}");
    for key in [&a, &b, &b2] {
        assert_eq!(tc.read(key).await, None, "{key}");
    }
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_commits_has_its_locks_released_at_the_deadline() {
    let tc = TestCluster::three().await;
    let (a, b) = (tc.key_on(0, "abandoned"), tc.key_on(2, "abandoned"));
    let txn = tc.client.begin(Some(Duration::from_secs(2))).await.unwrap();
    assert!(txn.declares());
    txn.put(a.as_bytes(), b"never").await.unwrap();
    txn.put(b.as_bytes(), b"never").await.unwrap();
    let tid = txn.tid();
    let began = Instant::now();
    drop(txn); // the client "crashes": no commit, no abort.
    // The participants abort at the deadline and release the locks: a
    // later writer of the same keys commits.
    tc.wait_settled().await;
    let (_, outcome) = tc.write_txn(&[(&a, "after"), (&b, "after")]).await;
    assert_eq!(outcome, Outcome::Committed);
    eprintln!("locks free {:?} after the abandoned client's last operation", began.elapsed());
    let d = tc.client.status(tid).await.unwrap();
    assert!(matches!(d, twopc_client::Decision::Aborted { kind: AbortKind::Deadline, .. }), "{d:?}");
    tc.wait_value(&a, Some("after")).await;
    tc.wait_value(&b, Some("after")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_by_tid_of_a_declared_tid_is_refused_and_the_attached_cli_flow_still_commits() {
    let tc = TestCluster::three().await;
    let (a, b) = (tc.key_on(0, "by-tid"), tc.key_on(1, "by-tid"));

    // Begun and written by this process, with declared operations.
    let txn = tc.client.begin(Some(Duration::from_secs(30))).await.unwrap();
    txn.put(a.as_bytes(), b"mine").await.unwrap();
    txn.put(b.as_bytes(), b"mine").await.unwrap();
    let tid = txn.tid().to_string();
    let o = twopc_cli(&tc, &["commit", "--tid", &tid]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("FAILED_PRECONDITION"), "{}", output_text(&o));
    assert!(err.contains("commit it from the process that began it, or abort it"), "{}", output_text(&o));
    // Refused, not aborted: the process that began it commits it.
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    tc.wait_value(&a, Some("mine")).await;
    tc.wait_value(&b, Some("mine")).await;

    // The CLI step by step, each command a process of its own: its tid is
    // shared (enlist first), so any process may commit it.
    let o = twopc_cli(&tc, &["begin"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let tid = String::from_utf8_lossy(&o.stdout).lines().next().unwrap().trim().to_string();
    assert_eq!(twopc_cli(&tc, &["put", "--tid", &tid, &a, "cli"]).status.code(), Some(0));
    assert_eq!(twopc_cli(&tc, &["put", "--tid", &tid, &b, "cli"]).status.code(), Some(0));
    let o = twopc_cli(&tc, &["commit", "--tid", &tid]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("COMMITTED"), "{}", output_text(&o));
    tc.wait_value(&a, Some("cli")).await;
    tc.wait_value(&b, Some("cli")).await;
    tc.wait_settled().await;
}
