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

/// The `twopc` CLI with its wall clock shifted by `offset_ms`.
fn twopc(tc: &TestCluster, offset_ms: i64, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_twopc"))
        .args(args)
        .env("TWOPC_COORDINATOR", tc.cluster.coordinator_addr())
        .env("TWOPC_TEST_CLOCK_OFFSET_MS", offset_ms.to_string())
        .output()
        .expect("run twopc")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_30s_ahead_and_behind_still_commit_and_report_the_skew() {
    let coord_port = free_port();
    let opts = ClusterOptions {
        partitions: 2,
        coordinator_args: vec!["--metrics-listen".into(), format!("127.0.0.1:{coord_port}")],
        ..Default::default()
    };
    let mut tc = TestCluster::start(opts).await;
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
    // Siblings: one partition (one-phase commit) on either side, a
    // transaction that only reads, and the CLI on a clock 30 s off either way.
    for p in 0..2 {
        let k = tc.key_on(p, "solo");
        let (_, outcome) = tc.write_txn(&[(&k, "1")]).await;
        assert_eq!(outcome, Outcome::Committed, "one-phase at partition {p}");
        let t = tc.client.begin(Some(Duration::from_secs(5))).await.unwrap();
        assert_eq!(t.get(k.as_bytes()).await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(t.commit().await.unwrap(), Outcome::Committed, "read-only at partition {p}");
    }
    for cli_offset in [-30_000i64, 30_000] {
        let (a, b) = (tc.key_on(0, "cli"), tc.key_on(1, "cli"));
        let (put_a, put_b) = (format!("put {a} {cli_offset}"), format!("put {b} {cli_offset}"));
        let o = twopc(&tc, cli_offset, &["run", &put_a, &put_b]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "CLI {cli_offset} ms off: {out}");
    }
    // The listing counts the time left on the coordinator's clock, not the reader's.
    let open = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    open.put(tc.key_on(0, "open").as_bytes(), b"x").await.unwrap();
    let o = twopc(&tc, 120_000, &["transactions"]);
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    let line = listing.lines().find(|l| l.contains(&open.tid().to_string())).unwrap_or_else(|| panic!("{listing}"));
    assert!(line.contains("deadline in"), "a reader 2 min ahead sees the deadline as still ahead: {line}");
    open.abort().await.unwrap();
    tc.wait_settled().await;

    // The coordinator reports each skewed partition too.
    let text = scrape(coord_port);
    let log = std::fs::read_to_string(tc.cluster.dir.join("coordinator.log")).unwrap();
    for (p, offset) in offsets.iter().enumerate() {
        let sample = format!("twopc_participant_clock_offset_ms{{partition=\"{p}\"}}");
        let measured: f64 = text
            .lines()
            .find(|l| l.starts_with(&sample))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {sample} in\n{text}"));
        assert!(
            (measured - *offset as f64).abs() < 1_000.0,
            "partition {p}: offset {measured} for a clock {offset} off"
        );
        let warnings = log.lines().filter(|l| l.contains(&format!("partition {p}'s clock reads"))).count();
        assert_eq!(warnings, 1, "one warning per partition (rate-limited):\n{log}");
    }

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
