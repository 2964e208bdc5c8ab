//! Prometheus metrics on the coordinator and on a participant: a scrape
//! after some transactions shows the protocol's counters moving.

mod common;

use common::*;
use twopc::cluster::ClusterOptions;
use twopc_client::Outcome;

/// The value of the first sample of `name` (any labels).
fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_show_the_protocol_at_work() {
    let coord_port = free_port();
    let opts = ClusterOptions {
        coordinator_args: vec!["--metrics-listen".into(), format!("127.0.0.1:{coord_port}")],
        ..Default::default()
    };
    let mut tc = TestCluster::start(opts).await;
    // The environment-variable twin of the flag, on participant 0.
    let part_port = free_port();
    tokio::task::block_in_place(|| {
        tc.cluster.restart_participant(0, &[("TWOPC_METRICS_LISTEN".into(), format!("127.0.0.1:{part_port}"))]).unwrap()
    });
    tc.reconnect().await;
    let (a, b) = (tc.key_on(0, "m"), tc.key_on(1, "m"));
    for i in 0..5 {
        let v = i.to_string();
        assert_eq!(tc.write_txn(&[(&a, &v), (&b, &v)]).await.1, Outcome::Committed);
    }
    let t = tc.client.begin(None).await.unwrap();
    t.put(a.as_bytes(), b"x").await.unwrap();
    t.abort().await.unwrap();
    tc.wait_settled().await;

    let c = scrape(coord_port);
    assert!(value(&c, "twopc_transactions_begun_total") >= 6.0, "{c}");
    assert!(value(&c, "twopc_transactions_committed_total") >= 5.0, "{c}");
    assert!(c.contains("twopc_transactions_aborted_total{reason=\"client\"} 1"), "{c}");
    assert!(value(&c, "twopc_decision_log_fsyncs_total") >= 1.0, "{c}");
    assert!(c.contains("twopc_commit_latency_seconds"), "{c}");
    assert!(c.contains("twopc_prepare_latency_seconds"), "{c}");
    assert!(c.contains("twopc_decision_log_batch_size"), "{c}");

    // Gauges are refreshed by the participant's timer (every 100 ms): poll.
    let deadline = std::time::Instant::now() + SETTLE;
    let p = loop {
        let p = scrape(part_port);
        // The gauge may still show the last transaction prepared until the
        // timer's next refresh after its commit: wait for that refresh.
        if p.contains("twopc_in_doubt_tids")
            && p.contains("twopc_store_fsyncs_total")
            && value(&p, "twopc_in_doubt_tids") == 0.0
        {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "participant metrics incomplete or still in doubt:\n{p}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(value(&p, "twopc_store_fsyncs_total") >= 5.0, "{p}");
    assert!(value(&p, "twopc_votes_total") >= 5.0, "{p}");
    assert_eq!(value(&p, "twopc_in_doubt_tids"), 0.0, "{p}");
}
