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
