//! Abort reasons are the real cause (PROTOCOL.md rule 4), everywhere a tid's
//! abort is reported: the client's commit answer, the status (GetDecision)
//! answer and the CLI, the coordinator's log line, and the `reason` label
//! of `twopc_transactions_aborted_total` (a small fixed set: the
//! `AbortKind` labels). The example (a wait-die conflict reported
//! as "aborted by the client") and its siblings: a deadline, a participant
//! restart that lost the tid's unprepared state (two-phase and one-phase),
//! a participant's shutdown, an operator's abort.

mod common;

use std::time::{Duration, Instant};

use common::*;
use twopc::cluster::ClusterOptions;
use twopc_client::{AbortKind, Decision, Outcome};

fn with_metrics() -> (ClusterOptions, u16) {
    let port = free_port();
    let opts = ClusterOptions {
        coordinator_args: vec!["--metrics-listen".into(), format!("127.0.0.1:{port}")],
        ..Default::default()
    };
    (opts, port)
}

/// The aborted counter's samples, `reason label -> value`.
fn aborted_by_reason(port: u16) -> std::collections::BTreeMap<String, f64> {
    scrape(port)
        .lines()
        .filter_map(|l| l.strip_prefix("twopc_transactions_aborted_total{reason=\""))
        .filter_map(|l| {
            let (label, rest) = l.split_once("\"}")?;
            Some((label.to_string(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// Polls until the coordinator's status of `tid` is ABORTED, and returns it.
async fn aborted(tc: &TestCluster, tid: uuid::Uuid) -> (String, AbortKind) {
    match tc.wait_decision(tid, |d| matches!(d, Decision::Aborted { .. })).await {
        Decision::Aborted { reason, kind } => (reason, kind),
        d => panic!("not aborted: {d:?}"),
    }
}

/// The example: A (older) holds K at partition 0, B (younger) asks
/// for it and is refused by wait-die. B's status, its commit, the CLI, the
/// coordinator's log and the metric all say conflict at partition 0 with
/// A, never "aborted by the client" (the library aborts B after its failed
/// put, with the operation's error, but the participant's reason came first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_die_conflict_is_the_reason_everywhere() {
    let (opts, port) = with_metrics();
    let tc = TestCluster::start(opts).await;
    let k = tc.key_on(0, "conflict");
    let a = tc.client.begin(None).await.unwrap();
    let b = tc.client.begin(None).await.unwrap();
    a.put(k.as_bytes(), b"a").await.unwrap();
    let err = b.put(k.as_bytes(), b"b").await.unwrap_err();
    assert!(err.is_retryable_abort(), "{err}");

    let (reason, kind) = aborted(&tc, b.tid()).await;
    assert_eq!(kind, AbortKind::Conflict, "{reason}");
    assert!(reason.contains("partition 0") && reason.contains(&a.tid().to_string()), "{reason}");
    assert!(reason.contains("lock conflict") && !reason.contains("by the client"), "{reason}");
    // The commit answer gives the same (the handle saw its put fail).
    match b.commit().await.unwrap() {
        Outcome::Aborted { reason: r, kind } => assert_eq!((r, kind), (reason.clone(), AbortKind::Conflict)),
        o => panic!("{o:?}"),
    }
    // So does a handle attached by tid, and the CLI's commit and status.
    let attached = tc.client.txn(b.tid(), 0);
    assert!(matches!(attached.commit().await.unwrap(), Outcome::Aborted { kind: AbortKind::Conflict, .. }));
    let tid = b.tid().to_string();
    let o = twopc_cli(&tc, &["status", &tid]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("ABORTED (conflict): {reason}"),
        "{}",
        output_text(&o)
    );
    let o = twopc_cli(&tc, &["commit", "--tid", &tid]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ABORTED (conflict): "), "{}", output_text(&o));

    // The CLI's `run` refused the same way: its tid's status is the conflict too.
    let put = format!("put {k} c");
    let o = twopc_cli(&tc, &["run", &put]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let run_tid: uuid::Uuid = out.lines().find_map(|l| l.strip_prefix("tid ")).expect("tid printed").parse().unwrap();
    assert_eq!(aborted(&tc, run_tid).await.1, AbortKind::Conflict);
    // And it says so as commit and status do: `ABORTED (kind): reason`,
    // the reason naming the partition.
    assert!(
        out.lines().any(|l| l.starts_with("ABORTED (conflict): partition ") && l.contains("lock conflict")),
        "{}",
        output_text(&o)
    );

    // An operator's abort is the operator's.
    let c = tc.client.begin(None).await.unwrap();
    let o = twopc_cli(&tc, &["abort", "--tid", &c.tid().to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ABORTED (operator): "), "{}", output_text(&o));
    assert_eq!(aborted(&tc, c.tid()).await.1, AbortKind::Operator);

    assert_eq!(a.commit().await.unwrap(), Outcome::Committed);
    tc.wait_value(&k, Some("a")).await;

    // The coordinator's log line names the cause.
    let log = std::fs::read_to_string(tc.cluster.dir.join("coordinator.log")).unwrap();
    let line = log.lines().find(|l| l.contains(&tid) && l.contains("aborted")).expect("an abort line for B");
    assert!(line.contains("conflict") && line.contains("partition 0"), "{line}");
    assert!(!log.contains("aborted by the client"), "{log}");
    // The metric: each tid once, by its real cause.
    let by_reason = aborted_by_reason(port);
    assert_eq!(by_reason.get("conflict"), Some(&2.0), "{by_reason:?}");
    assert_eq!(by_reason.get("operator"), Some(&1.0), "{by_reason:?}");
    assert_eq!(by_reason.len(), 2, "{by_reason:?}");
    tc.wait_settled().await;
}

/// The siblings: a deadline that passed, a participant that restarted and
/// lost the tid's unprepared state (two-phase: its NO vote; one-phase: its
/// answer), and a participant shut down while holding an unprepared tid.
/// Each is the reason the client and status hear, and the metric's label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_restart_and_shutdown_are_the_real_reasons() {
    let (opts, port) = with_metrics();
    let mut tc = TestCluster::start(opts).await;
    let (a, b, c) = (tc.key_on(0, "sib"), tc.key_on(1, "sib"), tc.key_on(2, "sib"));

    // Deadline: nobody commits within the timeout.
    let late = tc.client.begin(Some(Duration::from_millis(500))).await.unwrap();
    // On a slow machine the put itself may come too late: the same cause.
    let _ = late.put(a.as_bytes(), b"late").await;
    let (reason, kind) = aborted(&tc, late.tid()).await;
    assert_eq!(kind, AbortKind::Deadline, "{reason}");
    assert!(matches!(late.commit().await.unwrap(), Outcome::Aborted { kind: AbortKind::Deadline, .. }));

    // A participant restart loses the unprepared writes of two tids: one
    // on partitions 0 and 1 (two-phase), one on partition 1 only (one-phase).
    let two = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    two.put(a.as_bytes(), b"two").await.unwrap();
    two.put(b.as_bytes(), b"two").await.unwrap();
    let one = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    one.put(c.as_bytes(), b"one").await.unwrap();
    let one_b = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    let d = tc.key_on(1, "sib-one");
    one_b.put(d.as_bytes(), b"one").await.unwrap();
    tc.cluster.participants[1].kill();
    tc.cluster.restart_participant(1, &[]).unwrap();
    tc.reconnect().await;
    match two.commit().await.unwrap() {
        Outcome::Aborted { reason, kind } => {
            assert_eq!(kind, AbortKind::ParticipantRestarted, "{reason}");
            assert!(reason.contains("partition 1") && reason.contains("restarted"), "{reason}");
        }
        o => panic!("{o:?}"),
    }
    match one_b.commit().await.unwrap() {
        Outcome::Aborted { reason, kind } => {
            assert_eq!(kind, AbortKind::ParticipantRestarted, "{reason}");
            assert!(reason.contains("partition 1") && reason.contains("restarted"), "{reason}");
        }
        o => panic!("{o:?}"),
    }
    let tid = two.tid().to_string();
    let o = twopc_cli(&tc, &["status", &tid]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ABORTED (participant_restarted): "), "{}", output_text(&o));

    // Shutdown: partition 2 stops (SIGTERM) while `one` holds c there.
    tc.cluster.participants[2].terminate();
    assert!(tc.cluster.participants[2].wait_exit(EXIT), "partition 2 did not stop");
    let (reason, kind) = aborted(&tc, one.tid()).await;
    assert_eq!(kind, AbortKind::Shutdown, "{reason}");
    assert!(reason.contains("partition 2"), "{reason}");
    tc.cluster.restart_participant(2, &[]).unwrap();
    tc.reconnect().await;

    for k in [&a, &b, &c, &d] {
        assert_eq!(tc.read(k).await, None, "{k}");
    }
    let by_reason = aborted_by_reason(port);
    let want: std::collections::BTreeMap<String, f64> =
        [("deadline", 1.0), ("participant_restarted", 2.0), ("shutdown", 1.0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    assert_eq!(by_reason, want);
    tc.wait_settled().await;
}

/// Item 12: an operation that fails leaves the transaction aborted, with the
/// operation's error as the reason, and none of its writes visible: a put
/// that failed at the participant after it was buffered there (failpoint),
/// in the library and step by step with the CLI, and a put to a
/// participant killed mid-transaction (then restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_operation_aborts_the_transaction() {
    let (opts, port) = with_metrics();
    let mut tc = TestCluster::start(opts).await;
    let (a, b) = (tc.key_on(0, "fail"), tc.key_on(1, "fail"));

    // Library: the put of b fails after partition 1 buffered it.
    let txn = tc.client.begin(None).await.unwrap();
    txn.put(a.as_bytes(), b"1").await.unwrap();
    arm(&tc, twopc_client::FailpointTarget::Partition(1), "participant::after_write_applied", "1*return(error)").await;
    let err = txn.put(b.as_bytes(), b"1").await.unwrap_err();
    assert!(err.to_string().contains("after_write_applied"), "{err}");
    // Later operations are refused; the commit answers ABORTED with the error.
    let later = txn.put(a.as_bytes(), b"2").await.unwrap_err();
    assert!(later.is_retryable_abort() && later.to_string().contains("earlier operation failed"), "{later}");
    match txn.commit().await.unwrap() {
        Outcome::Aborted { reason, kind } => {
            assert_eq!(kind, AbortKind::OperationFailed, "{reason}");
            assert!(reason.contains("put of key") && reason.contains("after_write_applied"), "{reason}");
        }
        o => panic!("{o:?}"),
    }

    // CLI, step by step: each command a process of its own.
    let o = twopc_cli(&tc, &["begin"]);
    let tid = String::from_utf8_lossy(&o.stdout).lines().next().unwrap().trim().to_string();
    assert_eq!(twopc_cli(&tc, &["put", "--tid", &tid, &a, "3"]).status.code(), Some(0));
    arm(&tc, twopc_client::FailpointTarget::Partition(1), "participant::after_write_applied", "1*return(error)").await;
    let o = twopc_cli(&tc, &["put", "--tid", &tid, &b, "3"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("transaction {tid} is aborted")),
        "{}",
        output_text(&o)
    );
    let o = twopc_cli(&tc, &["commit", "--tid", &tid]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.starts_with("ABORTED (operation_failed): put of key"), "{}", output_text(&o));

    // A participant killed mid-transaction: the put there fails, the
    // commit (after it is back) answers ABORTED, nothing is applied.
    let txn = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    txn.put(a.as_bytes(), b"4").await.unwrap();
    tc.cluster.participants[1].kill();
    let err = txn.put(b.as_bytes(), b"4").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    tc.cluster.restart_participant(1, &[]).unwrap();
    tc.reconnect().await;
    match txn.commit().await.unwrap() {
        Outcome::Aborted { reason, kind } => {
            assert_eq!(kind, AbortKind::OperationFailed, "{reason}");
            assert!(reason.contains("put of key"), "{reason}");
        }
        o => panic!("{o:?}"),
    }
    let settle = Instant::now();
    tc.wait_settled().await;
    assert!(settle.elapsed() < SETTLE);
    assert_eq!(tc.read(&a).await, None);
    assert_eq!(tc.read(&b).await, None);
    assert_eq!(aborted_by_reason(port).get("operation_failed"), Some(&3.0));
}

/// More siblings: a participant whose prepared state cannot be written
/// (a failed write: it votes NO with the cause, `write_failed`), and a tid
/// whose coordinator restarted (presumed aborted: `coordinator_restarted`
/// in the status answer and the CLI, not just "unknown").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_and_a_restarted_coordinator_are_the_real_reasons() {
    let (opts, port) = with_metrics();
    let mut tc = TestCluster::start(opts).await;
    let (a, b) = (tc.key_on(0, "wf"), tc.key_on(1, "wf"));

    let txn = tc.client.begin(None).await.unwrap();
    txn.put(a.as_bytes(), b"1").await.unwrap();
    txn.put(b.as_bytes(), b"1").await.unwrap();
    arm(&tc, twopc_client::FailpointTarget::Partition(1), "participant::before_prepare_durable", "1*return(error)")
        .await;
    match txn.commit().await.unwrap() {
        Outcome::Aborted { reason, kind } => {
            assert_eq!(kind, AbortKind::WriteFailed, "{reason}");
            assert!(reason.contains("partition 1 voted NO") && reason.contains("persisting"), "{reason}");
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(aborted_by_reason(port).get("write_failed"), Some(&1.0));

    let old = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    old.put(a.as_bytes(), b"old").await.unwrap();
    tc.cluster.coordinator.kill();
    tc.cluster.restart_coordinator(&[]).unwrap();
    tc.reconnect().await;
    let (reason, kind) = aborted(&tc, old.tid()).await;
    assert_eq!(kind, AbortKind::CoordinatorRestarted, "{reason}");
    let o = twopc_cli(&tc, &["status", &old.tid().to_string()]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ABORTED (coordinator_restarted): "), "{}", output_text(&o));
    // A tid nobody ever began (after the restart) is only unknown.
    let ghost = uuid::Uuid::now_v7();
    assert_eq!(aborted(&tc, ghost).await.1, AbortKind::Unknown);
    // Partition 0 learns of the new coordinator at its next enlistment and
    // releases the old tid's lock (rule 10).
    let c = tc.key_on(0, "wf-next");
    assert_eq!(tc.write_txn(&[(&c, "1")]).await.1, Outcome::Committed);
    tc.wait_settled().await;
    assert_eq!(tc.read(&a).await, None);
    assert_eq!(tc.read(&b).await, None);
}
