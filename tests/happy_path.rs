//! Transactions over one, two and three partitions commit, and their values
//! are visible afterwards through plain reads (PROTOCOL.md rules 1-5).

mod common;

use common::*;
use twopc_client::{Decision, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_over_one_two_and_three_partitions() {
    let tc = TestCluster::three().await;
    let k: Vec<String> = (0..3).map(|p| tc.key_on(p, "happy")).collect();

    for span in 1..=3usize {
        let value = format!("v{span}");
        let writes: Vec<(&str, &str)> = k[..span].iter().map(|k| (k.as_str(), value.as_str())).collect();
        let (tid, outcome) = tc.write_txn(&writes).await;
        assert_eq!(outcome, Outcome::Committed, "span {span}");
        assert_eq!(tc.client.status(tid).await.unwrap(), Decision::Committed);
        for key in &k[..span] {
            tc.wait_value(key, Some(&value)).await;
        }
    }
    // Reads inside a transaction see committed data and the tid's own writes.
    let txn = tc.client.begin(None).await.unwrap();
    assert_eq!(txn.get(k[2].as_bytes()).await.unwrap(), Some(b"v3".to_vec()));
    txn.delete(k[0].as_bytes()).await.unwrap();
    assert_eq!(txn.get(k[0].as_bytes()).await.unwrap(), None);
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    tc.wait_value(&k[0], None).await;
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_and_empty_transactions_commit_without_phase_two() {
    let tc = TestCluster::three().await;
    let a = tc.key_on(0, "ro");
    tc.write_txn(&[(&a, "x")]).await;
    tc.wait_value(&a, Some("x")).await;
    let txn = tc.client.begin(None).await.unwrap();
    assert_eq!(txn.get(a.as_bytes()).await.unwrap(), Some(b"x".to_vec()));
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    let empty = tc.client.begin(None).await.unwrap();
    assert_eq!(empty.commit().await.unwrap(), Outcome::Committed);
    // Repeating a commit gets the same answer (rule 11).
    assert_eq!(empty.commit().await.unwrap(), Outcome::Committed);
    tc.wait_settled().await;
}
