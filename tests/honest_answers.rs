//! Honest answers (PROTOCOL.md rule 6 and the "honest answers" invariant),
//! on real processes: a committed tid is never reported ABORTED, also once
//! the coordinator has forgotten it. With `--keep-finished 1` a committed
//! tid is soon forgotten; every way of asking about it (`twopc status`,
//! `commit --tid`, `abort --tid`, the library, the wire) then says its
//! outcome is FORGOTTEN (the CLI's exit code 3), never ABORTED, and an
//! abort of it is refused. A tid newer than the low-water mark that the
//! coordinator does not know is presumed aborted, and Commit and
//! GetDecision agree on it. The mark is durable (it survives a restart
//! after the log trimmed the record, and a leader failover with the etcd
//! log), and a participant in doubt about an old tid still hears ABORTED.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use twopc::cluster::ClusterOptions;
use twopc_client::{Decision, FailpointTarget, Outcome};
use twopc_proto::pb;
use uuid::Uuid;

/// The CLI's exit code of a forgotten outcome.
const FORGOTTEN_EXIT: i32 = 3;

fn keep_finished(n: usize) -> ClusterOptions {
    ClusterOptions { coordinator_args: vec!["--keep-finished".into(), n.to_string()], ..Default::default() }
}

/// The example: `twopc run` of three puts; returns its tid and keys.
fn run_three_puts(tc: &TestCluster, name: &str) -> (Uuid, Vec<String>) {
    let keys: Vec<String> = (0..3).map(|p| tc.key_on(p, name)).collect();
    let puts: Vec<String> = keys.iter().map(|k| format!("put {k} 1")).collect();
    let mut args = vec!["run"];
    args.extend(puts.iter().map(String::as_str));
    let o = twopc_cli(tc, &args);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let tid = out.lines().find_map(|l| l.strip_prefix("tid ")).expect("run prints the tid");
    (tid.trim().parse().unwrap(), keys)
}

/// `n` more committed transactions, `width` at a time, each on two partitions.
async fn commit_more(tc: &TestCluster, name: &str, n: usize, width: usize) {
    let results: Vec<Outcome> = futures::stream::iter(0..n)
        .map(|i| {
            // Partitions 1 and 2 only: partition 0 may be down.
            let (a, b) = (tc.key_on(1, &format!("{name}{i}")), tc.key_on(2, &format!("{name}{i}")));
            async move { tc.write_txn(&[(&a, "x"), (&b, "x")]).await.1 }
        })
        .buffer_unordered(width)
        .collect()
        .await;
    assert!(results.iter().all(|o| *o == Outcome::Committed), "{results:?}");
}

async fn coordinator(tc: &TestCluster) -> pb::coordinator_client::CoordinatorClient<tonic::transport::Channel> {
    // The leader in HA mode; the one coordinator otherwise.
    let i = tc.cluster.leader(SETTLE).await.unwrap_or(0);
    let addr = tc.cluster.coordinator_addrs()[i].clone();
    let channel = tc.cluster.connect_options().tls.endpoint(&addr).unwrap().connect().await.unwrap();
    pb::coordinator_client::CoordinatorClient::new(channel)
}

/// Every way a client or an operator can ask about a forgotten tid says so,
/// and nothing changes the data.
async fn assert_forgotten_everywhere(tc: &TestCluster, tid: Uuid, keys: &[String]) {
    let t = tid.to_string();
    // The CLI: status, commit --tid, abort --tid (refused).
    let o = twopc_cli(tc, &["status", &t]);
    assert_eq!(o.status.code(), Some(FORGOTTEN_EXIT), "{}", output_text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("FORGOTTEN: "), "{}", output_text(&o));
    assert!(out.contains("older than the oldest decision the log keeps") && out.contains("check the data"), "{out}");
    assert!(!out.contains("ABORTED"), "{out}");
    let o = twopc_cli(tc, &["commit", "--tid", &t]);
    assert_eq!(o.status.code(), Some(FORGOTTEN_EXIT), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("FORGOTTEN: "), "{}", output_text(&o));
    let o = twopc_cli(tc, &["abort", "--tid", &t]);
    assert_eq!(o.status.code(), Some(FORGOTTEN_EXIT), "{}", output_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("FAILED_PRECONDITION") && err.contains("forgotten"), "{}", output_text(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("ABORTED"), "{}", output_text(&o));

    // The library.
    assert!(matches!(tc.client.status(tid).await.unwrap(), Decision::Forgotten { .. }));
    let txn = tc.client.txn(tid, 0);
    assert!(matches!(txn.commit().await.unwrap(), Outcome::Forgotten { .. }));
    let e = txn.abort().await.unwrap_err();
    assert!(e.is_forgotten() && e.code() == tonic::Code::FailedPrecondition, "{e}");

    // The wire: a client's GetDecision, Commit and Abort.
    let mut c = coordinator(tc).await;
    let d = c.get_decision(pb::GetDecisionRequest { tid: t.clone(), asking_partition: None }).await.unwrap();
    assert_eq!(d.get_ref().decision(), pb::Decision::Forgotten, "{d:?}");
    let r = c.commit(pb::CommitRequest { tid: t.clone(), wrote: true, ..Default::default() }).await.unwrap();
    assert_eq!(r.get_ref().outcome(), pb::Outcome::Forgotten, "{r:?}");
    let s = c.abort(pb::AbortRequest { tid: t.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    assert_eq!(s.metadata().get("x-twopc-outcome").map(|v| v.to_str().unwrap()), Some("forgotten"), "{s:?}");
    // Rule 6's exception: a participant asking about its YES vote hears
    // presumed abort (it cannot be in doubt about a forgotten commit).
    let d = c.get_decision(pb::GetDecisionRequest { tid: t.clone(), asking_partition: Some(0) }).await.unwrap();
    assert_eq!(d.get_ref().decision(), pb::Decision::Aborted, "{d:?}");
    assert!(d.get_ref().presumed, "{d:?}");

    // A write under it is refused too (the participant cannot enlist it).
    let o = twopc_cli(tc, &["put", "--tid", &t, &keys[0], "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("forgotten"), "{}", output_text(&o));

    // The writes are there, untouched by the refused abort.
    for k in keys {
        assert_eq!(tc.read(k).await.as_deref(), Some("1"), "{k}");
    }
}

/// A tid newer than the mark that the coordinator never heard of is
/// presumed aborted, and every question agrees (rule 6).
async fn assert_unknown_new_tid_is_aborted_everywhere(tc: &TestCluster) {
    let tid = Uuid::now_v7();
    let t = tid.to_string();
    let o = twopc_cli(tc, &["status", &t]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("ABORTED (unknown): unknown tid: presumed aborted"),
        "{}",
        output_text(&o)
    );
    let o = twopc_cli(tc, &["commit", "--tid", &t]);
    assert_eq!(o.status.code(), Some(1), "Commit agrees with GetDecision: {}", output_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("ABORTED (unknown): unknown tid: presumed aborted"),
        "{}",
        output_text(&o)
    );
    let o = twopc_cli(tc, &["abort", "--tid", &t]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let mut c = coordinator(tc).await;
    let r = c.commit(pb::CommitRequest { tid: t.clone(), wrote: false, ..Default::default() }).await.unwrap();
    assert_eq!(r.get_ref().outcome(), pb::Outcome::Aborted, "{r:?}");
    let d = c.get_decision(pb::GetDecisionRequest { tid: t.clone(), asking_partition: None }).await.unwrap();
    assert_eq!(d.get_ref().decision(), pb::Decision::Aborted, "{d:?}");
    assert!(d.get_ref().presumed, "{d:?}");
    assert!(matches!(tc.client.txn(tid, 0).commit().await.unwrap(), Outcome::Aborted { .. }));
    assert!(matches!(tc.client.status(tid).await.unwrap(), Decision::Aborted { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_commit_is_reported_forgotten_never_aborted() {
    let tc = TestCluster::start(keep_finished(1)).await;
    // The example: T1, then two more; T1 is no longer remembered.
    let (t1, keys) = run_three_puts(&tc, "honest");
    commit_more(&tc, "more", 2, 1).await;
    // Forgotten once the second one finished (its phase 2 acknowledged).
    tc.wait_decision(t1, |d| matches!(d, Decision::Forgotten { .. })).await;
    assert_forgotten_everywhere(&tc, t1, &keys).await;
    // The newest commit is still remembered.
    let (t3, _) = tc.write_txn(&[(&tc.key_on(0, "newest"), "1"), (&tc.key_on(1, "newest"), "1")]).await;
    assert_eq!(tc.client.status(t3).await.unwrap(), Decision::Committed);
    let o = twopc_cli(&tc, &["status", &t3.to_string()]);
    assert_eq!(
        (o.status.code(), String::from_utf8_lossy(&o.stdout).trim()),
        (Some(0), "COMMITTED"),
        "{}",
        output_text(&o)
    );
    assert_unknown_new_tid_is_aborted_everywhere(&tc).await;
    // A tid from before the log existed is forgotten too: the log's memory
    // starts at its creation.
    let an_hour_ago = twopc_proto::now_unix_ms() / 1000 - 3600;
    let ancient = Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, an_hour_ago, 0));
    let o = twopc_cli(&tc, &["status", &ancient.to_string()]);
    assert_eq!(o.status.code(), Some(FORGOTTEN_EXIT), "{}", output_text(&o));
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mark_survives_a_restart_after_the_log_trimmed_the_record() {
    let mut tc = TestCluster::start(keep_finished(1)).await;
    let (t1, keys) = run_three_puts(&tc, "durable");
    // Enough finished records for the log to trim (it keeps 1, trims in
    // steps of 256): T1's row is deleted, the mark raised in the same write.
    commit_more(&tc, "fill", 300, 16).await;
    tc.wait_settled().await;
    let db = tc.cluster.dir.join("coordinator").join("decisions.db");
    let (row, mark) = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let row: i64 =
            conn.query_row("SELECT COUNT(*) FROM decisions WHERE tid = ?1", [t1.to_string()], |r| r.get(0)).unwrap();
        let mark: String =
            conn.query_row("SELECT value FROM meta WHERE key = 'forgotten_through'", [], |r| r.get(0)).unwrap();
        (row, mark.parse::<Uuid>().unwrap())
    };
    assert_eq!(row, 0, "T1's finished record was trimmed");
    assert!(t1 <= mark, "the durable mark {mark} covers T1 {t1}");
    tc.cluster.coordinator.kill();
    tc.cluster.restart_coordinator(&[]).unwrap();
    tc.reconnect().await;
    // Only the durable mark tells the restarted coordinator about T1.
    assert_forgotten_everywhere(&tc, t1, &keys).await;
    assert_unknown_new_tid_is_aborted_everywhere(&tc).await;
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_in_doubt_about_a_forgotten_tid_still_hears_aborted() {
    let mut opts = keep_finished(1);
    opts.coordinator_args.extend(["--prepare-timeout-ms".into(), "1000".into()]);
    let mut tc = TestCluster::start(opts).await;
    // T prepares at partition 0, which dies before its vote: the
    // coordinator aborts T at its prepare timeout.
    let keys: Vec<String> = (0..2).map(|p| tc.key_on(p, "doubt")).collect();
    let txn = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    for k in &keys {
        txn.put(k.as_bytes(), b"1").await.unwrap();
    }
    arm(&tc, FailpointTarget::Partition(0), "participant::after_prepare_durable", KILL).await;
    assert!(matches!(txn.commit().await.unwrap(), Outcome::Aborted { .. }));
    assert!(tc.cluster.participants[0].wait_exit(EXIT));
    // The coordinator forgets T (one more abort pushes its outcome out) and
    // the mark moves past it (two newer commits, one pushed out).
    let other = tc.client.begin(None).await.unwrap();
    other.abort().await.unwrap();
    commit_more(&tc, "past", 2, 1).await;
    tc.wait_decision(txn.tid(), |d| matches!(d, Decision::Forgotten { .. })).await;
    // Partition 0 comes back in doubt about T, asks as its YES voter, hears
    // ABORTED and drops T's write set: nothing stays in doubt or locked.
    tc.cluster.restart_participant(0, &[]).unwrap();
    tc.reconnect().await;
    tc.wait_settled().await;
    for k in &keys {
        assert_eq!(tc.read(k).await, None, "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_log_keeps_the_mark_across_a_failover() {
    let mut tc = TestCluster::start_ha(keep_finished(1)).await;
    let (t1, keys) = run_three_puts(&tc, "ha");
    commit_more(&tc, "more", 2, 1).await;
    // Forgotten once the second one finished (its phase 2 acknowledged).
    tc.wait_decision(t1, |d| matches!(d, Decision::Forgotten { .. })).await;
    assert_forgotten_everywhere(&tc, t1, &keys).await;
    // Enough for the log to trim T1's record, with the mark in etcd.
    commit_more(&tc, "fill", 300, 16).await;
    let endpoints: Vec<String> = tc.etcd.as_ref().unwrap().endpoints().split(',').map(str::to_string).collect();
    let etcd = twopc_etcd::Etcd::new(&endpoints, Duration::from_secs(2)).unwrap();
    let record = format!("/twopc/default/log/{t1}");
    let deadline = Instant::now() + SETTLE;
    while !etcd.range(record.as_bytes(), &[], 1).await.unwrap().kvs.is_empty() {
        assert!(Instant::now() < deadline, "T1's finished record was never trimmed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mark = etcd.range(b"/twopc/default/forgotten_through", &[], 1).await.unwrap();
    let mark: Uuid = String::from_utf8_lossy(&mark.kvs[0].value).parse().unwrap();
    assert!(t1 <= mark, "the mark {mark} covers T1 {t1}");
    // A new leader knows T1 only through the mark.
    let old = tc.cluster.leader(SETTLE).await.unwrap();
    tc.cluster.kill_coordinator(old);
    let new = tc.cluster.leader(SETTLE).await.expect("a standby takes over");
    assert_ne!(new, old);
    assert_forgotten_everywhere(&tc, t1, &keys).await;
    assert_unknown_new_tid_is_aborted_everywhere(&tc).await;
}
