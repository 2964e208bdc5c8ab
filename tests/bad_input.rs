//! Bad input gets a precise gRPC status and a message a person can act on,
//! never a panic or a silent default; and the servers keep working after.

mod common;

use std::time::Duration;

use common::*;
use tonic::Code;
use twopc::cluster::ClusterOptions;
use twopc_client::Outcome;
use twopc_proto::pb;

fn expect_code<T: std::fmt::Debug>(r: Result<T, twopc_client::ClientError>, code: Code, words: &str) {
    let err = r.expect_err("expected an error");
    assert_eq!(err.code(), code, "{err}");
    assert!(err.to_string().contains(words), "message {:?} should mention {words:?}", err.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_precise_statuses() {
    let opts = ClusterOptions {
        participant_args: vec!["--max-key-bytes".into(), "16".into(), "--max-value-bytes".into(), "32".into()],
        ..Default::default()
    };
    let tc = TestCluster::start(opts).await;
    let key = tc.key_on(0, "k");

    // Unknown tid: a well-formed UUID that was never begun.
    let ghost = tc.client.txn(uuid::Uuid::now_v7(), 0);
    expect_code(ghost.put(key.as_bytes(), b"v").await, Code::NotFound, "unknown tid");
    // Commit agrees with GetDecision: unknown and newer than the oldest
    // decision kept, so presumed aborted (PROTOCOL.md rule 6).
    match ghost.commit().await.unwrap() {
        Outcome::Aborted { reason, .. } => assert!(reason.contains("unknown tid"), "{reason}"),
        o => panic!("{o:?}"),
    }

    // Empty and oversized keys and values.
    let txn = tc.client.begin(None).await.unwrap();
    expect_code(txn.put(b"", b"v").await, Code::InvalidArgument, "key is empty");
    // Over a size limit: RESOURCE_EXHAUSTED naming it (gRPC's convention).
    // Unlike a validation error (above), it aborts its transaction (issue
    // 13 kind 12: a failed operation never leaves a partial write set to
    // commit), so each is tried in a transaction of its own.
    for (k, v, words) in [
        (vec![b'k'; 17], vec![b'v'], "over the limit of 16 bytes (--max-key-bytes)"),
        (key.as_bytes().to_vec(), vec![b'v'; 33], "over the limit of 32 bytes (--max-value-bytes)"),
    ] {
        let over = tc.client.begin(None).await.unwrap();
        expect_code(over.put(&k, &v).await, Code::ResourceExhausted, words);
        match over.commit().await.unwrap() {
            Outcome::Aborted { kind, reason } => {
                assert_eq!(kind, twopc_client::AbortKind::OperationFailed, "{reason}");
                assert!(reason.contains(words), "{reason}");
            }
            other => panic!("a transaction whose put failed must not commit: {other:?}"),
        }
    }
    expect_code(tc.client.read(b"").await, Code::InvalidArgument, "key is empty");

    // Operation after commit, and abort after commit.
    txn.put(key.as_bytes(), b"v").await.unwrap();
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    expect_code(txn.put(key.as_bytes(), b"w").await, Code::FailedPrecondition, "operations");
    expect_code(txn.abort().await, Code::FailedPrecondition, "already committed");

    // A tid past its deadline.
    let late = tc.client.begin(Some(Duration::from_millis(200))).await.unwrap();
    let deadline = late.deadline_unix_ms();
    while twopc_proto::now_unix_ms() <= deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    expect_code(late.put(key.as_bytes(), b"v").await, Code::Aborted, "deadline");

    // Lock conflict.
    let t1 = tc.client.begin(None).await.unwrap();
    let t2 = tc.client.begin(None).await.unwrap();
    t1.put(key.as_bytes(), b"1").await.unwrap();
    expect_code(t2.get(key.as_bytes()).await, Code::Aborted, "lock conflict");
    t1.abort().await.unwrap();

    // Malformed tids and partitions on the raw wire.
    let mut raw =
        pb::coordinator_client::CoordinatorClient::connect(format!("http://{}", tc.cluster.coordinator_addr()))
            .await
            .unwrap();
    let s = raw.commit(pb::CommitRequest { tid: "not-a-uuid".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("not a UUID"), "{s:?}");
    // A UUID of another version is not a tid: its bits would be read as a
    // made-up age (presumed abort or forgotten, wait-die).
    let s = raw
        .get_decision(pb::GetDecisionRequest {
            tid: "550e8400-e29b-41d4-a716-446655440000".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("version 4 UUID, not a tid"), "{s:?}");
    let s = raw
        .enlist(pb::EnlistRequest { tid: late.tid().to_string(), partition: 7, incarnation: 1, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("out of range"), "{s:?}");

    // Everything still works afterwards.
    let (_, o) = tc.write_txn(&[(&key, "after")]).await;
    assert_eq!(o, Outcome::Committed);
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_participant_and_open_transaction_limit() {
    let opts = ClusterOptions {
        start_partitions: Some(2),
        coordinator_args: vec!["--max-open-txns".into(), "2".into()],
        ..Default::default()
    };
    let tc = TestCluster::start(opts).await;
    let t1 = tc.client.begin(None).await.unwrap();
    // Partition 2 never started, so nobody is registered for it.
    let key = tc.key_on(2, "nobody");
    expect_code(t1.put(key.as_bytes(), b"v").await, Code::Unavailable, "partition 2");
    let mut raw =
        pb::coordinator_client::CoordinatorClient::connect(format!("http://{}", tc.cluster.coordinator_addr()))
            .await
            .unwrap();
    let s = raw
        .enlist(pb::EnlistRequest { tid: t1.tid().to_string(), partition: 2, incarnation: 1, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("no registered participant"), "{s:?}");
    // A registration with an address that cannot be dialled is refused
    // before anything is recorded (a recorded address is dialled again at
    // every restart).
    let req =
        pb::RegisterRequest { partition: 2, address: "no such host:7100".into(), incarnation: 1, ..Default::default() };
    let s = raw.register(req).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("not a host:port address"), "{s:?}");
    let db = tc.cluster.dir.join("coordinator").join("decisions.db");
    let recorded: i64 = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM members WHERE partition = 2", [], |r| r.get(0))
        .unwrap();
    assert_eq!(recorded, 0, "the refused address was recorded");

    // t1's failed put aborted it (a failed operation aborts its
    // transaction), which freed its slot.
    assert!(matches!(tc.client.status(t1.tid()).await.unwrap(), twopc_client::Decision::Aborted { .. }));
    let t1 = tc.client.begin(None).await.unwrap();
    let _t2 = tc.client.begin(None).await.unwrap();
    expect_code(tc.client.begin(None).await, Code::ResourceExhausted, "too many open transactions");
    t1.abort().await.unwrap();
    tc.client.begin(None).await.expect("a slot is free again");
}
