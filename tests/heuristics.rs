//! Manual resolution and its limits (issue 5, item 4), on real processes:
//!
//! - a coordinator whose decision log is lost (its data directory deleted
//!   after it forced a COMMIT) comes back with another cluster id; the
//!   participants keep the tid in doubt instead of taking its presumed
//!   abort, report the mismatch, and take no new transactions; an operator
//!   resolves the tid by hand (refused without the override flag), the
//!   outcome is applied, listed and counted, and the participants join the
//!   new cluster;
//! - with the log intact, nothing contradicts its COMMIT: a heuristic ABORT
//!   is refused even with the override, and so is the coordinator's own
//!   force-abort (`twopc abort`), before and after a restart that reads the
//!   decision back from the log; an undecided tid is force-aborted;
//! - what the override risks: a heuristic taken while the coordinator was
//!   only down is contradicted by its logged COMMIT when it comes back; the
//!   participant acknowledges, flags the heuristic, logs and counts it. The
//!   heuristic's durable write finishes even when the request gives up, a
//!   repeat waits for it, and a failed write leaves the tid in doubt again;
//! - a restored backup under a new cluster id: its COMMIT binds (refusing a
//!   heuristic ABORT, and applied when delivered) while the tids it lacks
//!   stay in doubt; a participant that has not heard the new id yet is
//!   fenced by its first enlistment's answer; under the same id even a
//!   presumed ABORT binds (a heuristic COMMIT is refused).

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use twopc_client::{FailpointTarget, Outcome, PartitionInDoubt};

/// Runs the `twopc` CLI; returns (exit code, stdout, stderr).
fn twopc(tc: &TestCluster, args: &[&str]) -> (i32, String, String) {
    let o: Output = Command::new(env!("CARGO_BIN_EXE_twopc"))
        .args(args)
        .env("TWOPC_COORDINATOR", tc.cluster.coordinator_addr())
        .output()
        .expect("run twopc");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (o.status.code().unwrap_or(-1), text(&o.stdout), text(&o.stderr))
}

fn addr(tc: &TestCluster, p: usize) -> String {
    tc.cluster.participants[p].addr.to_string()
}

async fn listing(tc: &TestCluster, p: usize) -> PartitionInDoubt {
    twopc_client::in_doubt_at_address(&addr(tc, p), &Default::default()).await.expect("ListInDoubt")
}

/// Polls participant `p`'s listing until `ok` holds.
async fn wait_listing(
    tc: &TestCluster,
    p: usize,
    what: &str,
    ok: impl Fn(&PartitionInDoubt) -> bool,
) -> PartitionInDoubt {
    let deadline = Instant::now() + SETTLE;
    loop {
        let l = listing(tc, p).await;
        if ok(&l) {
            return l;
        }
        assert!(Instant::now() < deadline, "partition {p}: never {what}: {l:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn asked(l: &PartitionInDoubt, tid: &str) -> Option<u32> {
    l.tids.as_ref().ok()?.iter().find(|t| t.tid == tid).map(|t| t.asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_decision_log_is_detected_and_resolved_by_hand() {
    let mut tc = TestCluster::three().await;
    let old_cluster = wait_listing(&tc, 0, "registered", |l| !l.cluster_id.is_empty()).await.cluster_id;
    let (k0, k1) = (tc.key_on(0, "h"), tc.key_on(1, "h"));
    let txn = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    txn.put(k0.as_bytes(), b"v").await.unwrap();
    txn.put(k1.as_bytes(), b"v").await.unwrap();
    let tid = txn.tid().to_string();
    tc.client
        .set_failpoint(FailpointTarget::Coordinator, "coordinator::after_decision_forced", "return(abort)")
        .await
        .unwrap();
    assert!(txn.commit().await.is_err(), "the coordinator died after forcing COMMIT");
    assert!(tc.cluster.coordinator.wait_exit(EXIT));

    // The disaster: the decision log, COMMIT record included, is gone; the
    // coordinator starts afresh on an empty directory, and the participants
    // are restarted so that they register with it (port 0 gets metrics).
    std::fs::remove_dir_all(tc.cluster.dir.join("coordinator")).unwrap();
    let port = free_port();
    tokio::task::block_in_place(|| {
        tc.cluster.restart_coordinator(&[]).unwrap();
        let metrics = [("TWOPC_METRICS_LISTEN".to_string(), format!("127.0.0.1:{port}"))];
        tc.cluster.restart_participant(0, &metrics).unwrap();
        tc.cluster.restart_participant(1, &[]).unwrap();
        tc.cluster.restart_participant(2, &[]).unwrap();
    });
    tc.reconnect().await;
    // The new coordinator does not presume the tid aborted to a client: it
    // is older than its log, so its outcome is forgotten (rule 6)...
    assert!(matches!(tc.client.status(txn.tid()).await.unwrap(), twopc_client::Decision::Forgotten { .. }));
    // ...but the participants do not take that: the tid stays in doubt while
    // they keep asking, and they report the mismatch.
    for p in [0, 1] {
        let l = wait_listing(&tc, p, "fenced and still asking", |l| {
            l.mismatched_cluster_id.is_some() && asked(l, &tid).is_some_and(|n| n >= 3)
        })
        .await;
        assert_eq!(l.cluster_id, old_cluster);
        let line = format!("partition {p}:");
        let (code, out, _) = twopc(&tc, &["in-doubt", "--participant", &addr(&tc, p)]);
        assert_eq!(code, 0);
        assert!(out.contains(&line) && out.contains(&tid) && out.contains("cluster mismatch"), "{out}");
    }
    assert_eq!(tc.read(&k0).await, None);
    let log = std::fs::read_to_string(tc.cluster.dir.join("p0.log")).unwrap();
    assert!(log.contains("is not the one the tids prepared here voted under"), "{log}");
    // A fenced participant takes no new transactions.
    let t2 = tc.client.begin(None).await.unwrap();
    let err = t2.put(k0.as_bytes(), b"w").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("fenced"), "{err}");
    // Partition 2 held nothing prepared: it adopted the new id at once.
    let new_cluster = listing(&tc, 2).await.cluster_id;
    assert_ne!(new_cluster, old_cluster);

    // By hand: refused without the override flag.
    let (code, _, err) = twopc(&tc, &["resolve-heuristic", "--participant", &addr(&tc, 0), &tid, "commit"]);
    assert_eq!(code, 2);
    assert!(err.contains("FAILED_PRECONDITION") && err.contains("--override-lost-log"), "{err}");
    assert!(asked(&listing(&tc, 0).await, &tid).is_some(), "still in doubt");
    // With it, COMMIT at both participants that hold the tid.
    for p in [0, 1] {
        let args = ["resolve-heuristic", "--participant", &addr(&tc, p), &tid, "commit", "--override-lost-log"];
        let (code, out, err) = twopc(&tc, &[&args[..], &["--reason", "decision log lost"]].concat());
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("COMMIT applied heuristically"), "{out}");
    }
    tc.wait_value(&k0, Some("v")).await;
    tc.wait_value(&k1, Some("v")).await;
    // Nothing left to resolve.
    let (code, _, err) =
        twopc(&tc, &["resolve-heuristic", "--participant", &addr(&tc, 0), &tid, "commit", "--override-lost-log"]);
    assert_eq!(code, 2);
    assert!(err.contains("NOT_FOUND"), "{err}");

    // Listed, counted, and the fence is lifted: both joined the new cluster.
    for p in [0, 1] {
        let l = wait_listing(&tc, p, "unfenced", |l| l.mismatched_cluster_id.is_none()).await;
        assert_eq!(l.cluster_id, new_cluster);
        let h = &l.heuristics[0];
        assert!(h.tid == tid && h.committed && h.reason == "decision log lost" && !h.contradicted, "{h:?}");
        let (_, out, _) = twopc(&tc, &["in-doubt", "--participant", &addr(&tc, p)]);
        assert!(out.contains(&format!("heuristic COMMIT  {tid}")), "{out}");
    }
    let m = scrape(port);
    assert!(m.contains("twopc_participant_heuristic_outcomes_total{outcome=\"commit\"} 1"), "{m}");
    assert_eq!(tc.write_txn(&[(&k0, "w"), (&k1, "w")]).await.1, Outcome::Committed);
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_contradicts_a_logged_commit_and_undecided_tids_can_be_force_aborted() {
    let mut tc = TestCluster::three().await;
    let (k0, k1) = (tc.key_on(0, "l"), tc.key_on(1, "l"));
    let txn = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    txn.put(k0.as_bytes(), b"v").await.unwrap();
    txn.put(k1.as_bytes(), b"v").await.unwrap();
    let tid = txn.tid().to_string();
    // Partition 0 fails to apply the commit: it stays prepared, in doubt,
    // while the COMMIT record sits in the coordinator's log.
    let fp = "participant::before_commit_applied";
    tc.client.set_failpoint(FailpointTarget::Partition(0), fp, "return(error)").await.unwrap();
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    wait_listing(&tc, 0, "in doubt", |l| asked(l, &tid).is_some()).await;

    for round in ["live", "after a restart that reads the log back"] {
        let args = ["resolve-heuristic", "--participant", &addr(&tc, 0), &tid, "abort", "--override-lost-log"];
        let (code, out, err) = twopc(&tc, &args);
        assert_eq!(code, 2, "{round}: {out}");
        assert!(err.contains("FAILED_PRECONDITION") && err.contains("records COMMIT"), "{round}: {err}");
        let (code, _, err) = twopc(&tc, &["abort", "--tid", &tid]);
        assert_eq!(code, 2, "{round}");
        assert!(err.contains("FAILED_PRECONDITION") && err.contains("committed"), "{round}: {err}");
        if round == "live" {
            tokio::task::block_in_place(|| tc.cluster.restart_coordinator(&[]).unwrap());
            tc.reconnect().await;
        }
    }
    assert!(listing(&tc, 0).await.heuristics.is_empty());
    assert_eq!(tc.read(&k0).await, None, "not applied at partition 0 yet");
    // The same outcome as the log's is applied as its decision, not as a
    // heuristic (unless the coordinator's own resend gets there first).
    tc.client.set_failpoint(FailpointTarget::Partition(0), fp, "").await.unwrap();
    let args = ["resolve-heuristic", "--participant", &addr(&tc, 0), &tid, "commit", "--override-lost-log"];
    let (code, out, err) = twopc(&tc, &args);
    assert!(code == 0 && out.contains("as its decision") || err.contains("NOT_FOUND"), "{out}{err}");
    tc.wait_settled().await;
    assert!(all_or_nothing(&tc, &[k0.as_str(), k1.as_str()], "v").await);
    assert!(listing(&tc, 0).await.heuristics.is_empty(), "nothing heuristic was recorded");

    // The operator's force-abort of an undecided tid: it aborts, and the
    // participant releases its locks.
    let undecided = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    undecided.put(k0.as_bytes(), b"x").await.unwrap();
    let (code, out, err) = twopc(&tc, &["abort", "--tid", &undecided.tid().to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ABORTED"), "{out}");
    assert!(matches!(undecided.commit().await.unwrap(), Outcome::Aborted { .. }));
    tc.wait_settled().await;
    assert_eq!(tc.read(&k0).await.as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heuristic_the_log_later_contradicts_is_acknowledged_flagged_and_counted() {
    let mut tc = TestCluster::three().await;
    let port = free_port();
    tokio::task::block_in_place(|| {
        // The heuristic's durable write fails once, then is slow once.
        let env = [
            ("TWOPC_METRICS_LISTEN".to_string(), format!("127.0.0.1:{port}")),
            ("FAILPOINTS".to_string(), "participant::before_heuristic_durable=1*return(error)->1*sleep(2000)".into()),
        ];
        tc.cluster.restart_participant(0, &env).unwrap();
    });
    tc.reconnect().await;
    let (k0, k1) = (tc.key_on(0, "x"), tc.key_on(1, "x"));
    let txn = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    txn.put(k0.as_bytes(), b"v").await.unwrap();
    txn.put(k1.as_bytes(), b"v").await.unwrap();
    let tid = txn.tid().to_string();
    tc.client
        .set_failpoint(FailpointTarget::Coordinator, "coordinator::after_decision_forced", "return(abort)")
        .await
        .unwrap();
    assert!(txn.commit().await.is_err());
    assert!(tc.cluster.coordinator.wait_exit(EXIT));

    // The operator wrongly believes the log lost while the coordinator is
    // merely down: unreachable, so the override is taken.
    let args = ["resolve-heuristic", "--participant", &addr(&tc, 0), &tid, "abort", "--override-lost-log"];
    // The write fails: the tid is not stuck half-way, it is in doubt again.
    let (code, _, err) = twopc(&tc, &args);
    assert_eq!(code, 2);
    assert!(err.contains("INTERNAL") && err.contains("in doubt again"), "{err}");
    let l = wait_listing(&tc, 0, "in doubt again", |l| asked(l, &tid).is_some()).await;
    assert!(l.heuristics.is_empty(), "{l:?}");
    // The write is slow and the request gives up (it is dropped): the write
    // still finishes, and a repeat meanwhile waits for it.
    let uuid = txn.tid();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        twopc_client::resolve_heuristically(&addr(&tc, 0), uuid, false, true, "lost", &Default::default()),
    )
    .await;
    assert!(gave_up.is_err(), "the request should still be waiting: {gave_up:?}");
    let (code, out, err) = twopc(&tc, &args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ABORT applied heuristically"), "{out}");
    let l = listing(&tc, 0).await;
    assert!(l.heuristics.len() == 1 && asked(&l, &tid).is_none(), "{l:?}");

    // The coordinator comes back with its log and re-drives the COMMIT: the
    // participant acknowledges (the coordinator settles), and flags, logs
    // and counts the contradiction.
    tokio::task::block_in_place(|| tc.cluster.restart_coordinator(&[]).unwrap());
    tc.reconnect().await;
    tc.wait_settled().await;
    let l = wait_listing(&tc, 0, "flagged", |l| l.heuristics.iter().any(|h| h.contradicted)).await;
    assert!(l.heuristics[0].tid == tid && !l.heuristics[0].committed);
    let (_, out, _) = twopc(&tc, &["in-doubt", "--participant", &addr(&tc, 0)]);
    assert!(out.contains("CONTRADICTED"), "{out}");
    let m = scrape(port);
    assert!(m.contains("twopc_participant_heuristic_mismatches_total 1"), "{m}");
    assert!(m.contains("twopc_participant_heuristic_outcomes_total{outcome=\"abort\"} 1"), "{m}");
    let log = std::fs::read_to_string(tc.cluster.dir.join("p0.log")).unwrap();
    assert!(log.contains("HEURISTIC MISMATCH"), "{log}");
    // This is what the override risks: the tid is half-committed.
    assert_eq!(tc.read(&k1).await.as_deref(), Some("v"));
    assert_eq!(tc.read(&k0).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_bind_under_any_cluster_id_and_aborts_under_ours() {
    let mut tc = TestCluster::three().await;
    // Partition 0 never asks about its in-doubt tids here: it hears the
    // coordinator only through its Commit resends, enlistments and the
    // operator's requests.
    tokio::task::block_in_place(|| {
        let env = [("TWOPC_IN_DOUBT_AFTER_MS".to_string(), "600000".to_string())];
        tc.cluster.restart_participant(0, &env).unwrap();
    });
    tc.reconnect().await;
    let old_cluster = wait_listing(&tc, 0, "registered", |l| !l.cluster_id.is_empty()).await.cluster_id;
    let resolve = |tc: &TestCluster, tid: &str, outcome: &str| {
        twopc(tc, &["resolve-heuristic", "--participant", &addr(tc, 0), tid, outcome, "--override-lost-log"])
    };

    // A: committed, but partition 0 fails to apply it: in doubt there while
    // its COMMIT record is in the log.
    let (a0, a1) = (tc.key_on(0, "a"), tc.key_on(1, "a"));
    let fp = "participant::before_commit_applied";
    tc.client.set_failpoint(FailpointTarget::Partition(0), fp, "return(error)").await.unwrap();
    let a = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    a.put(a0.as_bytes(), b"v").await.unwrap();
    a.put(a1.as_bytes(), b"v").await.unwrap();
    assert_eq!(a.commit().await.unwrap(), Outcome::Committed);
    let a_tid = a.tid().to_string();
    // B: prepared at partitions 0 and 1; the coordinator dies before its
    // decision is durable.
    let (b0, b1) = (tc.key_on(0, "b"), tc.key_on(1, "b"));
    let b = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    b.put(b0.as_bytes(), b"v").await.unwrap();
    b.put(b1.as_bytes(), b"v").await.unwrap();
    let b_tid = b.tid().to_string();
    tc.client
        .set_failpoint(FailpointTarget::Coordinator, "coordinator::before_decision_forced", "return(abort)")
        .await
        .unwrap();
    assert!(b.commit().await.is_err());
    assert!(tc.cluster.coordinator.wait_exit(EXIT));

    // Back on its own log (same id), the coordinator presumes B aborted, and
    // that binds: a heuristic COMMIT is refused, quoting the answer.
    tokio::task::block_in_place(|| tc.cluster.restart_coordinator(&[]).unwrap());
    tc.reconnect().await;
    let l = listing(&tc, 0).await;
    assert!(asked(&l, &a_tid).is_some() && asked(&l, &b_tid).is_some(), "{l:?}");
    let (code, out, err) = resolve(&tc, &b_tid, "commit");
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("FAILED_PRECONDITION") && err.contains("presumed abort"), "{err}");
    assert_eq!(listing(&tc, 0).await.cluster_id, old_cluster);
    // Partition 1, which asks, takes that ABORT by itself.
    wait_listing(&tc, 1, "B aborted", |l| asked(l, &b_tid).is_none()).await;

    // The log is replaced by a backup under a new id (README "Backup"): here
    // the same file with its id deleted, holding A's COMMIT, unaware of B.
    tc.cluster.coordinator.kill();
    let db = tc.cluster.dir.join("coordinator").join("decisions.db");
    rusqlite::Connection::open(&db).unwrap().execute("DELETE FROM meta WHERE key = 'cluster_id'", []).unwrap();
    tokio::task::block_in_place(|| tc.cluster.restart_coordinator(&[]).unwrap());
    tc.reconnect().await;
    // Partition 0 has not heard the new id (Commit resends carry none): its
    // next enlistment's answer does, and the enlistment is refused (an
    // enlist-first operation shows it; a declared one's background
    // enlistment would abort its tid instead).
    let c = tc.client.begin_shared(None).await.unwrap();
    let err = c.put(tc.key_on(0, "c").as_bytes(), b"c").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("fenced"), "{err}");
    let _ = c.abort().await;
    let new_cluster = listing(&tc, 0).await.mismatched_cluster_id.expect("fenced");
    assert_ne!(new_cluster, old_cluster);

    // A's COMMIT binds under the new id: a heuristic ABORT is refused.
    let (code, out, err) = resolve(&tc, &a_tid, "abort");
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("FAILED_PRECONDITION") && err.contains("records COMMIT"), "{err}");
    // An ABORTED from another log binds nothing: B is resolved by hand.
    let (code, out, err) = resolve(&tc, &b_tid, "abort");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ABORT applied heuristically"), "{out}");
    // Once partition 0 can apply A, it takes the resent COMMIT; with nothing
    // prepared left the fence lifts, and it joins the new cluster.
    tc.client.set_failpoint(FailpointTarget::Partition(0), fp, "").await.unwrap();
    tc.wait_value(&a0, Some("v")).await;
    let l = wait_listing(&tc, 0, "unfenced", |l| l.mismatched_cluster_id.is_none()).await;
    assert_eq!(l.cluster_id, new_cluster);
    assert!(l.heuristics.len() == 1 && l.heuristics[0].tid == b_tid && !l.heuristics[0].contradicted, "{l:?}");
    assert_eq!(tc.read(&b0).await, None);
    assert_eq!(tc.write_txn(&[(&a0, "w"), (&b0, "w"), (&b1, "w")]).await.1, Outcome::Committed);
    tc.wait_settled().await;
}
