//! Operations of one transaction in flight at once (issue 10, item 1):
//! joined futures on one `Txn`, and `Txn::run` (several operations, one
//! request per partition in parallel, answers in the caller's order), with
//! the semantics of operations awaited one by one: a failed operation
//! aborts the transaction and nothing of it commits.

mod common;

use common::*;
use twopc_client::{AbortKind, Op, OpResult, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_ops_and_a_run_on_three_partitions_commit_and_read_back() {
    let tc = TestCluster::three().await;
    let keys: Vec<String> = (0..3).map(|p| tc.key_on(p, "joined")).collect();

    // Joined futures on one handle.
    let txn = tc.client.begin(None).await.unwrap();
    let (a, b, c) = tokio::join!(
        txn.put(keys[0].as_bytes(), b"j0"),
        txn.put(keys[1].as_bytes(), b"j1"),
        txn.put(keys[2].as_bytes(), b"j2")
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    let (x, y) = tokio::join!(txn.get(keys[0].as_bytes()), txn.get(keys[2].as_bytes()));
    assert_eq!((x.unwrap(), y.unwrap()), (Some(b"j0".to_vec()), Some(b"j2".to_vec())));
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    for (p, k) in keys.iter().enumerate() {
        tc.wait_value(k, Some(&format!("j{p}"))).await;
    }

    // One run: a put on every partition, and reads of them.
    let txn = tc.client.begin(None).await.unwrap();
    let mut ops: Vec<Op> =
        keys.iter().enumerate().map(|(p, k)| Op::put(k.as_bytes(), format!("r{p}").as_bytes())).collect();
    ops.extend(keys.iter().map(|k| Op::get(k.as_bytes())));
    let results = txn.run(&ops).await.unwrap();
    assert_eq!(&results[..3], &[OpResult::Done, OpResult::Done, OpResult::Done]);
    for (p, r) in results[3..].iter().enumerate() {
        assert_eq!(r.value(), Some(format!("r{p}").as_bytes()), "the get after its key's put sees it");
    }
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    for (p, k) in keys.iter().enumerate() {
        tc.wait_value(k, Some(&format!("r{p}"))).await;
    }
    tc.wait_settled().await;
}

/// The answers come in the order asked, and operations on one key run in
/// that order (each sees the one before), while other keys run beside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_answers_in_order_and_keeps_the_order_of_one_key() {
    let tc = TestCluster::three().await;
    let (a, b, c) = (tc.key_on(0, "order"), tc.key_on(1, "order"), tc.key_on(0, "order-other"));
    assert_eq!(tc.write_txn(&[(&b, "old")]).await.1, Outcome::Committed);
    let txn = tc.client.begin(None).await.unwrap();
    let ops = [
        Op::put(a.as_bytes(), b"1"),
        Op::get(b.as_bytes()),
        Op::get(a.as_bytes()),
        Op::put(c.as_bytes(), b"c"),
        Op::put(a.as_bytes(), b"2"),
        Op::get_for_update(a.as_bytes()),
        Op::delete(b.as_bytes()),
        Op::get(b.as_bytes()),
        Op::get(c.as_bytes()),
        Op::delete(a.as_bytes()),
        Op::get(a.as_bytes()),
        Op::put(a.as_bytes(), b"3"),
    ];
    let results = txn.run(&ops).await.unwrap();
    let v = |s: &[u8]| OpResult::Value(Some(s.to_vec()));
    assert_eq!(
        results,
        vec![
            OpResult::Done,
            v(b"old"),
            v(b"1"),
            OpResult::Done,
            OpResult::Done,
            v(b"2"),
            OpResult::Done,
            OpResult::Value(None),
            v(b"c"),
            OpResult::Done,
            OpResult::Value(None),
            OpResult::Done,
        ]
    );
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    tc.wait_value(&a, Some("3")).await;
    tc.wait_value(&b, None).await;
    tc.wait_value(&c, Some("c")).await;
    // An empty run is nothing.
    let txn = tc.client.begin(None).await.unwrap();
    assert_eq!(txn.run(&[]).await.unwrap(), vec![]);
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    tc.wait_settled().await;
}

/// One operation of a run fails: the transaction aborts, the run answers
/// that operation's error (not the refusals it caused), and nothing of it
/// commits, on any partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_operation_in_a_run_aborts_the_transaction_and_nothing_commits() {
    let tc = TestCluster::three().await;
    let keys: Vec<String> = (0..3).map(|p| tc.key_on(p, "fails")).collect();

    // A key over the participants' limit (1 KiB): RESOURCE_EXHAUSTED from
    // partition 1's participant while the others' puts are applied.
    let too_long = format!("{}{}", keys[1], "k".repeat(2_000));
    let txn = tc.client.begin(None).await.unwrap();
    let ops = [
        Op::put(keys[0].as_bytes(), b"x"),
        Op::put(too_long.as_bytes(), b"x"),
        Op::put(keys[2].as_bytes(), b"x"),
        Op::get(keys[0].as_bytes()),
    ];
    let e = txn.run(&ops).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    assert!(txn.failed_operation().is_some_and(|f| f.contains("put of key")), "{:?}", txn.failed_operation());
    match txn.commit().await.unwrap() {
        Outcome::Aborted { kind, .. } => assert_eq!(kind, AbortKind::OperationFailed),
        o => panic!("a run with a failed operation must not commit: {o:?}"),
    }
    // Later operations on the handle are refused.
    assert_eq!(txn.put(keys[0].as_bytes(), b"y").await.unwrap_err().code(), tonic::Code::Aborted);
    tc.wait_settled().await;
    for k in &keys {
        assert_eq!(tc.read(k).await, None, "{k}: nothing of the aborted run is committed");
    }

    // A wait-die conflict: an older transaction holds keys[1]; the younger
    // run dies on it (ABORTED) and none of its writes commit.
    let older = tc.client.begin(None).await.unwrap();
    older.put(keys[1].as_bytes(), b"older").await.unwrap();
    let younger = tc.client.begin(None).await.unwrap();
    let ops = [
        Op::put(keys[0].as_bytes(), b"young"),
        Op::put(keys[1].as_bytes(), b"young"),
        Op::put(keys[2].as_bytes(), b"young"),
    ];
    let e = younger.run(&ops).await.unwrap_err();
    assert!(e.is_retryable_abort(), "{e}");
    assert!(matches!(younger.commit().await.unwrap(), Outcome::Aborted { .. }));
    assert_eq!(older.commit().await.unwrap(), Outcome::Committed);
    tc.wait_value(&keys[1], Some("older")).await;
    tc.wait_settled().await;
    assert_eq!(tc.read(&keys[0]).await, None);
    assert_eq!(tc.read(&keys[2]).await, None);
}
