//! One transaction's large write set must never fail another's (issue 13,
//! kind 2). Every value within `--max-value-bytes` and every tid within
//! `--max-ops-per-tid` still allows a write set at one partition larger than
//! one prepared record can hold (SQLite's 10^9-byte blob limit). That tid
//! must abort alone, saying why, while transactions preparing at the same
//! partition meanwhile (group commit shares one SQLite transaction between
//! them) commit.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use futures::future::join_all;
use twopc::cluster::ClusterOptions;
use twopc_client::{Decision, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_write_set_aborts_alone_naming_the_limit() {
    // The big prepare takes a while to encode and check in a debug build:
    // only the limit, not the prepare timeout, may decide this test.
    let opts = ClusterOptions {
        partitions: 2,
        coordinator_args: vec!["--prepare-timeout-ms".into(), "120000".into()],
        ..ClusterOptions::default()
    };
    let tc = Arc::new(TestCluster::start(opts).await);
    const MIB: usize = 1 << 20;
    let value = vec![b'v'; MIB];
    // Just over 10^9 bytes at partition 0, each value at the 1 MiB limit.
    let n = 1_000_000_000 / MIB + 2;
    let big = tc.client.begin(Some(Duration::from_secs(280))).await.unwrap();
    let keys: Vec<String> = (0..n).map(|i| tc.key_on(0, &format!("big-{i}"))).collect();
    for chunk in keys.chunks(16) {
        for r in join_all(chunk.iter().map(|k| big.put(k.as_bytes(), &value))).await {
            r.unwrap();
        }
    }
    big.put(tc.key_on(1, "big-other").as_bytes(), b"x").await.unwrap();

    // Two-partition transactions (so they prepare at partition 0) run until
    // the big one has its answer. None may fail for the big one's sake: the
    // group commit that carried its record used to fail them all with
    // "persisting the prepared state failed: string or blob too big". (An
    // operation may still time out while partition 0 copies a gigabyte on a
    // loaded machine; that is counted, not a failure of this test.)
    let stop = Arc::new(AtomicBool::new(false));
    let small = {
        let (tc, stop) = (tc.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut outcomes, mut unavailable) = (vec![], 0);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) || outcomes.is_empty() {
                let (a, b) = (tc.key_on(0, &format!("small-{i}")), tc.key_on(1, &format!("small-{i}")));
                i += 1;
                let txn = tc.client.begin(Some(Duration::from_secs(30))).await.unwrap();
                let (ra, rb) = tokio::join!(txn.put(a.as_bytes(), b"1"), txn.put(b.as_bytes(), b"1"));
                if ra.is_err() || rb.is_err() {
                    unavailable += 1;
                    let _ = txn.abort().await;
                    continue;
                }
                outcomes.push(txn.commit().await.unwrap());
            }
            (outcomes, unavailable)
        })
    };
    let reason = match big.commit().await {
        Ok(Outcome::Aborted { reason, .. }) => reason,
        Ok(o @ (Outcome::Committed | Outcome::Forgotten { .. })) => panic!("the oversized write set: {o:?}"),
        // The commit call's budget may run out while the big write set is
        // encoded (a debug build): then ask for the decision.
        Err(_) => match tc.wait_decision(big.tid(), |d| !matches!(d, Decision::Pending)).await {
            Decision::Aborted { reason, .. } => reason,
            d => panic!("the oversized write set: {d:?}"),
        },
    };
    stop.store(true, Ordering::Relaxed);
    let (small, unavailable) = small.await.unwrap();
    eprintln!("small transactions meanwhile: {} answered, {unavailable} cut off by a timeout", small.len());

    // The participant's reason (its vote, or its abort notice: either way
    // the real cause, kind 5), never SQLite's refusal of the record, which
    // failed the whole batch.
    assert!(reason.contains("over the 1000000000 bytes one prepared record can hold"), "{reason}");
    let p0_log = std::fs::read_to_string(tc.cluster.dir.join("p0.log")).unwrap();
    assert!(!p0_log.contains("too big"), "the oversized record reached SQLite:\n{p0_log}");
    for o in &small {
        if let Outcome::Aborted { reason, .. } = o {
            assert!(!reason.contains("persisting the prepared state failed"), "failed with the big one: {reason}");
        }
    }
    assert!(small.contains(&Outcome::Committed), "{small:?}");
    // Nothing of the big one is anywhere; the partition still serves.
    assert_eq!(tc.read(&keys[0]).await, None);
    let (_, o) = tc.write_txn(&[(&keys[0], "after"), (&tc.key_on(1, "after"), "after")]).await;
    assert_eq!(o, Outcome::Committed);
    tc.wait_settled().await;
}
