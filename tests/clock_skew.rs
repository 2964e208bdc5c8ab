//! Issue 13, kind 7: clock skew is not a silent failure.
//!
//! Participants whose wall clocks are 30 s ahead and 30 s behind the
//! coordinator's (the test hook `TWOPC_TEST_CLOCK_OFFSET_MS`, see
//! `twopc_proto::clock`; libfaketime is not needed) still commit every
//! transaction, because deadlines travel as remaining time; each reports
//! the skew once in its log, naming both clocks, and in a gauge.

mod common;

use std::time::Duration;

use common::*;
use twopc::cluster::ClusterOptions;
use twopc_client::Outcome;

/// The value of the sample `name` (no labels).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_30s_ahead_and_behind_still_commit_and_report_the_skew() {
    let mut tc = TestCluster::start(ClusterOptions { partitions: 2, ..Default::default() }).await;
    // Partition 0 runs 30 s behind the coordinator, partition 1 30 s ahead.
    let offsets = [-30_000i64, 30_000];
    let mut ports = vec![];
    for (p, offset) in offsets.iter().enumerate() {
        let port = free_port();
        let env = [
            ("TWOPC_TEST_CLOCK_OFFSET_MS".to_string(), offset.to_string()),
            ("TWOPC_METRICS_LISTEN".to_string(), format!("127.0.0.1:{port}")),
        ];
        tokio::task::block_in_place(|| tc.cluster.restart_participant(p as u32, &env).unwrap());
        ports.push(port);
    }
    tc.reconnect().await;

    // Short timeouts: with absolute deadlines, partition 1 (30 s ahead)
    // found every one of them passed at once, and partition 0 held an
    // abandoned tid's locks 30 s past it.
    for i in 0..20 {
        let (a, b) = (tc.key_on(0, &format!("k{i}")), tc.key_on(1, &format!("k{i}")));
        let t = tc.client.begin(Some(Duration::from_secs(5))).await.unwrap();
        t.put(a.as_bytes(), b"v").await.unwrap_or_else(|e| panic!("put at partition 0: {e}"));
        t.put(b.as_bytes(), b"v").await.unwrap_or_else(|e| panic!("put at partition 1: {e}"));
        assert_eq!(t.commit().await.unwrap(), Outcome::Committed, "transaction {i}");
    }
    tc.wait_settled().await;

    for (p, offset) in offsets.iter().enumerate() {
        // The gauge: how far the coordinator's clock is ahead of this one.
        let text = scrape(ports[p]);
        let measured = metric(&text, "twopc_coordinator_clock_offset_ms")
            .unwrap_or_else(|| panic!("partition {p}: no clock offset gauge in\n{text}"));
        assert!(
            (measured + *offset as f64).abs() < 1_000.0,
            "partition {p}: offset {measured} for a clock {offset} off"
        );
        // One warning (rate-limited), naming both clocks and the offset.
        let log = std::fs::read_to_string(tc.cluster.dir.join(format!("p{p}.log"))).unwrap();
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("clock skew")).collect();
        assert_eq!(warnings.len(), 1, "partition {p}: {warnings:#?}");
        let w = warnings[0];
        let side = if *offset > 0 { "behind" } else { "ahead" };
        assert!(
            w.contains("the coordinator's clock reads")
                && w.contains(&format!("partition {p}'s reads"))
                && w.contains(&format!("ms {side}")),
            "partition {p}: {w}"
        );
    }
}
