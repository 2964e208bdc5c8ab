//! Trying to break issue 10's capabilities (declared operations, joined
//! futures and `Txn::run`, the tid pool) as a user would, on real
//! processes. Each test is a defect found, or a property that held.

mod common;

use std::time::Duration;

use common::*;
use twopc_client::Outcome;

/// Joined futures on one `Txn` (documented: every method takes `&self`)
/// include `commit`: `join!(txn.put(k), txn.commit())`. A put that was
/// sent before the commit and answered OK must then be committed with the
/// rest, or the commit must not answer COMMITTED. With declared
/// operations the commit's declaration was taken while the put was in
/// flight: its partition was left out, the coordinator committed the
/// declared partitions before that participant's background enlistment
/// landed, and the put's write was dropped there (enlistment refused):
/// put OK + COMMITTED, yet the key was never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_answered_ok_while_commit_runs_is_committed_or_the_commit_is_not() {
    let tc = TestCluster::three().await;
    let mut lost = Vec::new();
    for i in 0..40 {
        let (a, b) = (tc.key_on(0, &format!("race-a{i}")), tc.key_on(1, &format!("race-b{i}")));
        let txn = tc.client.begin(Some(Duration::from_secs(30))).await.unwrap();
        txn.put(a.as_bytes(), b"v").await.unwrap();
        let (put, commit) = tokio::join!(txn.put(b.as_bytes(), b"v"), txn.commit());
        let commit = commit.expect("commit answers");
        if put.is_ok() && commit == Outcome::Committed {
            tc.wait_value(&a, Some("v")).await;
            if tc.read(&b).await.as_deref() != Some("v") {
                lost.push(txn.tid());
            }
        }
    }
    assert!(lost.is_empty(), "put answered OK and commit COMMITTED, but the put's key was never written: {lost:?}");
    tc.wait_settled().await;
}

// ---------------------------------------------------------------- a raw
// client lying in its declaration (helpers as in tests/declared_commit.rs)

use twopc_proto::pb;

async fn raw_put(
    tc: &TestCluster,
    p: u32,
    tid: &str,
    key: &str,
    value: &str,
    remaining_ms: u64,
) -> Result<(), tonic::Status> {
    let req = pb::PutRequest { tid: tid.into(), key: key.into(), value: value.into(), declared: true, remaining_ms };
    tc.raw_participant(p).await.put(req).await.map(drop)
}

async fn begin_declaring(tc: &TestCluster) -> (String, u64) {
    let b = tc.raw_coordinator().await.begin(pb::BeginRequest { timeout_ms: 30_000, declares: true }).await.unwrap();
    let b = b.into_inner();
    (b.tid, b.remaining_ms.expect("remaining_ms"))
}

async fn raw_commit(
    tc: &TestCluster,
    tid: &str,
    wrote: bool,
    declaration: &[(u32, u64)],
) -> Result<pb::CommitResponse, tonic::Status> {
    let declaration =
        declaration.iter().map(|&(partition, operations)| pb::DeclaredPartition { partition, operations }).collect();
    let req = pb::CommitRequest { tid: tid.into(), wrote, declared: true, declaration };
    tc.raw_coordinator().await.commit(req).await.map(|r| r.into_inner())
}

/// Whatever a raw client declares, the answer is honest: COMMITTED only
/// when every write it had acknowledged is committed, ABORTED (or a
/// refusal) with nothing of it committed anywhere.
async fn honest(
    tc: &TestCluster,
    what: &str,
    answer: Result<pb::CommitResponse, tonic::Status>,
    writes: &[(&str, &str)],
) {
    match answer {
        Ok(r) if r.outcome() == pb::Outcome::Committed => {
            for (k, v) in writes {
                tc.wait_value(k, Some(v)).await;
            }
            eprintln!("{what}: COMMITTED, every write there");
        }
        other => {
            eprintln!("{what}: {other:?}");
            let t = std::time::Instant::now();
            tc.wait_settled().await;
            eprintln!("{what}: settled in {:?}", t.elapsed());
            for (k, _) in writes {
                assert_eq!(tc.read(k).await, None, "{what}: {k} written, yet the commit answered {other:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_client_lying_in_its_declaration_gets_an_honest_answer() {
    let tc = TestCluster::three().await;

    // Over-declared count.
    let (tid, left) = begin_declaring(&tc).await;
    let a = tc.key_on(0, "over");
    raw_put(&tc, 0, &tid, &a, "v", left).await.unwrap();
    let r = raw_commit(&tc, &tid, true, &[(0, 2)]).await;
    assert!(matches!(&r, Ok(r) if r.outcome() == pb::Outcome::Aborted), "{r:?}");
    honest(&tc, "over-declared count", r, &[(&a, "v")]).await;

    // A partition declared that was never touched.
    let (tid, left) = begin_declaring(&tc).await;
    let (a, b) = (tc.key_on(0, "untouched"), tc.key_on(1, "untouched"));
    raw_put(&tc, 0, &tid, &a, "v", left).await.unwrap();
    raw_put(&tc, 1, &tid, &b, "v", left).await.unwrap();
    let r = raw_commit(&tc, &tid, true, &[(0, 1), (1, 1), (2, 1)]).await;
    assert!(matches!(&r, Ok(r) if r.outcome() == pb::Outcome::Aborted), "{r:?}");
    honest(&tc, "untouched partition declared", r, &[(&a, "v"), (&b, "v")]).await;

    // A partition that does not exist.
    let (tid, left) = begin_declaring(&tc).await;
    let a = tc.key_on(0, "nopart");
    raw_put(&tc, 0, &tid, &a, "v", left).await.unwrap();
    let e = raw_commit(&tc, &tid, true, &[(0, 1), (7, 1)]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // Refused before anything happened: the tid is still open (a corrected
    // commit could follow); the client gives up and aborts it.
    let abort = pb::AbortRequest { tid: tid.clone(), ..Default::default() };
    tc.raw_coordinator().await.abort(abort).await.unwrap();
    let r = raw_commit(&tc, &tid, true, &[(0, 1)]).await;
    assert!(matches!(&r, Ok(r) if r.outcome() == pb::Outcome::Aborted), "{r:?}");
    honest(&tc, "a partition that does not exist", r, &[(&a, "v")]).await;

    // wrote = false with writes, on one partition (the fast path's hint).
    let (tid, left) = begin_declaring(&tc).await;
    let a = tc.key_on(0, "wrote-false");
    raw_put(&tc, 0, &tid, &a, "v", left).await.unwrap();
    let r = raw_commit(&tc, &tid, false, &[(0, 1)]).await;
    honest(&tc, "wrote=false with a write", r, &[(&a, "v")]).await;

    // A declared put after the tid was decided, at a partition that took
    // part (finished and forgot it) and at one that did not: never
    // committed, the key keeps its committed value, nothing is left.
    let (tid, left) = begin_declaring(&tc).await;
    let (a, b) = (tc.key_on(0, "late"), tc.key_on(1, "late"));
    raw_put(&tc, 0, &tid, &a, "committed", left).await.unwrap();
    let r = raw_commit(&tc, &tid, true, &[(0, 1)]).await.unwrap();
    assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
    tc.wait_value(&a, Some("committed")).await;
    let late0 = raw_put(&tc, 0, &tid, &a, "late", left).await;
    let late1 = raw_put(&tc, 1, &tid, &b, "late", left).await;
    eprintln!("late puts: {late0:?} {late1:?}");
    let again = raw_commit(&tc, &tid, true, &[(0, 2), (1, 1)]).await;
    eprintln!("commit again: {again:?}");
    tc.wait_settled().await;
    assert_eq!(tc.read(&a).await.as_deref(), Some("committed"));
    assert_eq!(tc.read(&b).await, None);
    let d = tc.client.status(tid.parse().unwrap()).await.unwrap();
    assert!(matches!(d, twopc_client::Decision::Committed), "{d:?}");
}

/// The proto says a client that under-declares breaks the protocol and the
/// tid then aborts everywhere only if the left-out partition's enlistment
/// reached the coordinator first; issue 10 item 6 asks that an
/// under-declared commit is committed nowhere. Sent at once (as a buggy or
/// hostile client would), without waiting for the enlistment to land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "design limit, not a contained fix: with the commit sent right after the puts (no wait for the \
            background enlistment), about 1 in 5 under-declared commits (puts at partitions 0 and 1, declared \
            [(0, 1)] or [(0, 1), (1, 0)]; or one put and an empty declaration) answer COMMITTED with partition 1's write dropped (its enlistment is refused after the \
            decision). The proto's top comment documents this; issue 10 item 6 asks that an under-declared commit \
            commits nowhere, and tests/declared_commit.rs only shows it after waiting for the enlistment. A fix \
            needs the coordinator to learn of undeclared holders before deciding (e.g. prepare every registered \
            partition of a declared tid, an undeclared one voting NO if it holds the tid)"]
async fn an_under_declared_commit_sent_at_once_is_committed_nowhere() {
    let tc = TestCluster::three().await;
    let mut partial = Vec::new();
    for i in 0..20 {
        let (tid, left) = begin_declaring(&tc).await;
        let (a, b) = (tc.key_on(0, &format!("under-{i}")), tc.key_on(1, &format!("under-{i}")));
        let (ra, rb) = tokio::join!(raw_put(&tc, 0, &tid, &a, "v", left), raw_put(&tc, 1, &tid, &b, "v", left));
        ra.unwrap();
        rb.unwrap();
        let r = raw_commit(&tc, &tid, true, &[(0, 1)]).await.unwrap();
        if r.outcome() == pb::Outcome::Committed {
            partial.push(tid);
        }
        // Count 0 for a partition that applied one: the same.
        let (tid, left) = begin_declaring(&tc).await;
        let (a, b) = (tc.key_on(0, &format!("zero-{i}")), tc.key_on(1, &format!("zero-{i}")));
        raw_put(&tc, 0, &tid, &a, "v", left).await.unwrap();
        raw_put(&tc, 1, &tid, &b, "v", left).await.unwrap();
        if raw_commit(&tc, &tid, true, &[(0, 1), (1, 0)]).await.unwrap().outcome() == pb::Outcome::Committed {
            partial.push(tid);
        }
        // The extreme: an empty declaration after a write answers
        // COMMITTED and the write is dropped.
        let (tid, left) = begin_declaring(&tc).await;
        let a = tc.key_on(0, &format!("empty-{i}"));
        raw_put(&tc, 0, &tid, &a, "v", left).await.unwrap();
        if raw_commit(&tc, &tid, true, &[]).await.unwrap().outcome() == pb::Outcome::Committed {
            partial.push(tid);
        }
    }
    tc.wait_settled().await;
    assert!(partial.is_empty(), "under-declared commits answered COMMITTED (partition 1's write dropped): {partial:?}");
}

/// Another process attached by tid (the CLI's enlist-first `put --tid`)
/// writes into a tid the library begun and declares: the library's commit
/// (which did not count those writes) is honest: all or nothing. And
/// `abort --tid` / `status` from the CLI work on a declaring tid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_attached_to_a_declaring_tid_gets_all_or_nothing() {
    let tc = TestCluster::three().await;
    for (case, extra_partition) in [("same", 0u32), ("other", 1u32)] {
        let a = tc.key_on(0, &format!("lib-{case}"));
        let b = tc.key_on(extra_partition, &format!("cli-{case}"));
        let txn = tc.client.begin(Some(Duration::from_secs(30))).await.unwrap();
        assert!(txn.declares());
        txn.put(a.as_bytes(), b"v").await.unwrap();
        let tid = txn.tid().to_string();
        let o = twopc_cli(&tc, &["put", "--tid", &tid, &b, "v"]);
        eprintln!("{case}: cli put: {}", output_text(&o));
        let outcome = txn.commit().await.unwrap();
        eprintln!("{case}: {outcome:?}");
        tc.wait_settled().await;
        let (ra, rb) = (tc.read(&a).await, tc.read(&b).await);
        if o.status.code() == Some(0) {
            match outcome {
                Outcome::Committed => assert_eq!((ra.as_deref(), rb.as_deref()), (Some("v"), Some("v")), "{case}"),
                _ => assert_eq!((ra, rb), (None, None), "{case}"),
            }
        } else {
            assert_eq!(rb, None, "{case}: a refused put is not written");
        }
    }

    // abort --tid and status of a declaring tid.
    let a = tc.key_on(0, "cli-abort");
    let txn = tc.client.begin(Some(Duration::from_secs(30))).await.unwrap();
    txn.put(a.as_bytes(), b"v").await.unwrap();
    let tid = txn.tid().to_string();
    let o = twopc_cli(&tc, &["status", &tid]);
    eprintln!("status open: {}", output_text(&o));
    let o = twopc_cli(&tc, &["abort", "--tid", &tid]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    match txn.commit().await.unwrap() {
        Outcome::Aborted { .. } => {}
        o => panic!("aborted from the CLI, then {o:?}"),
    }
    let o = twopc_cli(&tc, &["status", &tid]);
    assert!(output_text(&o).to_lowercase().contains("abort"), "{}", output_text(&o));
    tc.wait_settled().await;
    assert_eq!(tc.read(&a).await, None);
}

/// `Txn::run` edge cases: one key put twice then read, a delete between,
/// get_for_update after a put, and a large run (2,000 operations on three
/// partitions): answers in order, the last write of each key commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_repeated_keys_and_a_large_run_commits_the_last_write_of_each_key() {
    use twopc_client::{Op, OpResult};
    let tc = TestCluster::three().await;
    let (a, b) = (tc.key_on(0, "dup"), tc.key_on(1, "dup"));
    let txn = tc.client.begin(None).await.unwrap();
    let ops = [
        Op::put(a.as_bytes(), b"1"),
        Op::get(b.as_bytes()),
        Op::put(a.as_bytes(), b"2"),
        Op::get(a.as_bytes()),
        Op::delete(a.as_bytes()),
        Op::get_for_update(a.as_bytes()),
        Op::put(b.as_bytes(), b"b"),
        Op::put(a.as_bytes(), b"3"),
        Op::get_for_update(a.as_bytes()),
    ];
    let r = txn.run(&ops).await.unwrap();
    assert_eq!(
        r,
        vec![
            OpResult::Done,
            OpResult::Value(None),
            OpResult::Done,
            OpResult::Value(Some(b"2".to_vec())),
            OpResult::Done,
            OpResult::Value(None),
            OpResult::Done,
            OpResult::Done,
            OpResult::Value(Some(b"3".to_vec())),
        ]
    );
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    tc.wait_value(&a, Some("3")).await;
    tc.wait_value(&b, Some("b")).await;

    let txn = tc.client.begin(None).await.unwrap();
    let keys: Vec<String> = (0..1000).map(|i| format!("big-{i}")).collect();
    let mut ops: Vec<Op> = keys.iter().map(|k| Op::put(k.as_bytes(), b"x")).collect();
    ops.extend(keys.iter().map(|k| Op::put(k.as_bytes(), k.as_bytes())));
    let r = txn.run(&ops).await.unwrap();
    assert_eq!(r.len(), 2000);
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    for k in keys.iter().step_by(97) {
        tc.wait_value(k, Some(k)).await;
    }
    tc.wait_settled().await;
}

/// A pooled tid drawn fresh and used within its timeout commits, whatever
/// the coordinator's default timeout. With `--default-timeout-ms 60000`
/// a tid drawn at once and first used 31 s later (well within its 60 s)
/// had been dropped by the coordinator as "reserved, unused for 30 s": the
/// declared put was answered OK, then dropped at the participant, and the
/// commit answered ABORTED as if the coordinator had restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_tid_used_late_within_its_timeout_commits() {
    let tc = TestCluster::start(twopc::cluster::ClusterOptions {
        coordinator_args: vec!["--default-timeout-ms".into(), "60000".into()],
        ..Default::default()
    })
    .await;
    let options = twopc_client::ConnectOptions { tid_pool: 4, ..tc.cluster.connect_options().clone() };
    let client = twopc_client::Client::connect_with(&tc.cluster.coordinator_addr(), options).await.unwrap();
    let txn = client.begin(None).await.unwrap();
    assert!(client.pooled_tids() > 0 || txn.deadline_unix_ms() > 0);
    let a = tc.key_on(0, "late-use");
    // The user's own work before the first operation: 31 s of the 60 s.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let put = txn.put(a.as_bytes(), b"v").await;
    let outcome = txn.commit().await;
    assert!(
        matches!((&put, &outcome), (Ok(()), Ok(Outcome::Committed))),
        "used 31 s into a 60 s timeout: put {put:?}, commit {outcome:?}"
    );
    tc.wait_value(&a, Some("v")).await;
}

/// The bank under crashes with everything issue 10 added on: a pooled,
/// declaring client beside an old-style one (enlist first) on the same
/// accounts, both reads at once and both writes at once
/// (`Txn::run`), while the coordinator is SIGKILLed right after a COMMIT
/// record (the crash matrix's C2 step), restarted, and a participant is
/// SIGKILLed and restarted. Money is conserved, every tid a client heard
/// COMMITTED is COMMITTED after the restarts, and the cluster settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_with_pooled_declared_runs_conserve_money_across_crashes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use twopc_client::{FailpointTarget, Op};
    const ACCOUNTS: usize = 60;
    let mut tc = TestCluster::three().await;
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("acct-{i}")).collect();
    for chunk in accounts.chunks(20) {
        let txn = tc.client.begin(None).await.unwrap();
        let ops: Vec<Op> = chunk.iter().map(|k| Op::put(k.as_bytes(), b"1000")).collect();
        txn.run(&ops).await.unwrap();
        assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    }
    let options = twopc_client::ConnectOptions { tid_pool: 16, ..tc.cluster.connect_options().clone() };
    let client = twopc_client::Client::connect_with(&tc.cluster.coordinator_addr(), options.clone()).await.unwrap();
    // Half the tasks on an old-style client (TWOPC_DECLARE=0: enlist first),
    // on the same accounts.
    let options = twopc_client::ConnectOptions { declare: false, tid_pool: 0, ..options };
    let old = twopc_client::Client::connect_with(&tc.cluster.coordinator_addr(), options).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let client = if t % 2 == 0 { client.clone() } else { old.clone() };
        let (stop, accounts) = (stop.clone(), accounts.clone());
        tasks.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            let mut n = t;
            while !stop.load(Ordering::Relaxed) {
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let (i, j) = ((n >> 33) as usize % ACCOUNTS, (n >> 17) as usize % ACCOUNTS);
                if i == j {
                    continue;
                }
                let (a, b) = (&accounts[i], &accounts[j]);
                let Ok(txn) = client.begin(None).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let reads = txn.run(&[Op::get_for_update(a.as_bytes()), Op::get_for_update(b.as_bytes())]).await;
                let Ok(reads) = reads else {
                    let _ = txn.commit().await;
                    continue;
                };
                let bal = |r: &twopc_client::OpResult| -> i64 {
                    std::str::from_utf8(r.value().unwrap()).unwrap().parse().unwrap()
                };
                let (x, y) = (bal(&reads[0]) - 1, bal(&reads[1]) + 1);
                let writes =
                    [Op::put(a.as_bytes(), x.to_string().as_bytes()), Op::put(b.as_bytes(), y.to_string().as_bytes())];
                if txn.run(&writes).await.is_err() {
                    let _ = txn.commit().await;
                    continue;
                }
                if let Ok(Outcome::Committed) = txn.commit().await {
                    committed.push(txn.tid());
                }
            }
            committed
        }));
    }
    // Some transfers first, then the coordinator dies right after a COMMIT
    // record is durable.
    tokio::time::sleep(Duration::from_millis(500)).await;
    arm(&tc, FailpointTarget::Coordinator, "coordinator::after_decision_forced", KILL).await;
    restart_coordinator(&mut tc).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // A participant SIGKILLed between operations and restarted.
    tokio::task::block_in_place(|| tc.cluster.restart_participant(1, &[]).unwrap());
    tc.reconnect().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = Vec::new();
    for t in tasks {
        committed.extend(tokio::time::timeout(Duration::from_secs(60), t).await.expect("task ends").unwrap());
    }
    eprintln!("{} transfers heard COMMITTED", committed.len());
    tc.wait_settled().await;
    let mut total = 0i64;
    for k in &accounts {
        total += tc.read(k).await.expect("balance").parse::<i64>().unwrap();
    }
    assert_eq!(total, 1000 * ACCOUNTS as i64, "money not conserved");
    for tid in committed {
        assert_eq!(tc.client.status(tid).await.unwrap(), twopc_client::Decision::Committed, "{tid}");
    }
}

/// A pooled tid drawn and left idle past its timeout: its next operation
/// is refused (ABORTED, the deadline) and its commit is ABORTED; nothing
/// of it is left anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_tid_idle_past_its_timeout_aborts_honestly() {
    let tc = TestCluster::start(twopc::cluster::ClusterOptions {
        coordinator_args: vec!["--default-timeout-ms".into(), "1500".into()],
        ..Default::default()
    })
    .await;
    let options = twopc_client::ConnectOptions { tid_pool: 4, ..tc.cluster.connect_options().clone() };
    let client = twopc_client::Client::connect_with(&tc.cluster.coordinator_addr(), options).await.unwrap();
    let (a, b) = (tc.key_on(0, "idle"), tc.key_on(1, "idle"));
    let txn = client.begin(None).await.unwrap();
    txn.put(a.as_bytes(), b"v").await.unwrap();
    // Idle past the 1.5 s timeout (the scenario itself, not a wait for a condition).
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let e = txn.put(b.as_bytes(), b"v").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Aborted, "{e}");
    assert!(matches!(txn.commit().await.unwrap(), Outcome::Aborted { .. }));
    tc.wait_settled().await;
    assert_eq!((tc.read(&a).await, tc.read(&b).await), (None, None));
}
