//! Bulkhead: a slow participant ties up only its own bounded share of the
//! coordinator; transactions on the other participants keep committing.

mod common;

use std::time::Duration;

use common::*;
use twopc::cluster::ClusterOptions;
use twopc_client::{FailpointTarget, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_participant_does_not_stall_the_others() {
    let opts = ClusterOptions {
        coordinator_args: vec![
            "--prepare-timeout-ms".into(),
            "3000".into(),
            "--max-inflight-per-participant".into(),
            "2".into(),
        ],
        ..Default::default()
    };
    let tc = TestCluster::start(opts).await;
    // Six transactions through partition 1, more than its two slots.
    let mut txns = vec![];
    for i in 0..6 {
        let (a, b) = (tc.key_on(1, &format!("slow{i}")), tc.key_on(0, &format!("slow{i}")));
        let txn = tc.client.begin(Some(Duration::from_secs(30))).await.unwrap();
        txn.put(a.as_bytes(), b"v").await.unwrap();
        txn.put(b.as_bytes(), b"v").await.unwrap();
        txns.push(txn);
    }
    // Partition 1 stalls in prepare (each prepare waits 5 s at the failpoint).
    tc.client
        .set_failpoint(FailpointTarget::Partition(1), "participant::before_prepare_durable", "sleep(5000)")
        .await
        .unwrap();
    let slow: Vec<_> = txns.into_iter().map(|txn| tokio::spawn(async move { txn.commit().await })).collect();
    // Meanwhile transactions on partitions 0 and 2 commit, before any of
    // the slow ones has even timed out.
    let started = std::time::Instant::now();
    for i in 0..5 {
        let (a, b) = (tc.key_on(0, &format!("fast{i}")), tc.key_on(2, &format!("fast{i}")));
        let (_, outcome) = tc.write_txn(&[(&a, "v"), (&b, "v")]).await;
        assert_eq!(outcome, Outcome::Committed);
    }
    let finished = slow.iter().filter(|h| h.is_finished()).count();
    assert_eq!(finished, 0, "slow transactions finished before the fast ones ({:?})", started.elapsed());
    for h in slow {
        match h.await.unwrap().unwrap() {
            Outcome::Aborted { reason, .. } => assert!(reason.contains("partition 1"), "{reason}"),
            o => panic!("a transaction through the stalled partition committed: {o:?}"),
        }
    }
    tc.client.set_failpoint(FailpointTarget::Partition(1), "participant::before_prepare_durable", "").await.unwrap();
    tc.wait_settled().await;
}
