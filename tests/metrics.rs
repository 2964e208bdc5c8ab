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
        assert!(std::time::Instant::now() < deadline, "participant metrics incomplete or still in doubt:\n{p}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(value(&p, "twopc_store_fsyncs_total") >= 5.0, "{p}");
    assert!(value(&p, "twopc_votes_total") >= 5.0, "{p}");
    assert_eq!(value(&p, "twopc_in_doubt_tids"), 0.0, "{p}");
}

/// The value of the sample `line_start` (name and labels exactly), 0 when
/// absent.
fn sample(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Outcomes are counted per transaction, never per reply: repeating the
/// commit, the abort and the status question of finished tids (by the
/// library and by the CLI, each invocation a process of its own) leaves
/// every outcome counter exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_commits_aborts_and_questions_count_each_transaction_once() {
    let coord_port = free_port();
    let opts = ClusterOptions {
        coordinator_args: vec!["--metrics-listen".into(), format!("127.0.0.1:{coord_port}")],
        ..Default::default()
    };
    let tc = TestCluster::start(opts).await;
    let (a, b) = (tc.key_on(0, "once"), tc.key_on(1, "once"));
    // Two-phase, one-phase and read-only commits, a client's abort.
    let (two, o) = tc.write_txn(&[(&a, "1"), (&b, "1")]).await;
    assert_eq!(o, Outcome::Committed);
    let (one, o) = tc.write_txn(&[(&a, "2")]).await;
    assert_eq!(o, Outcome::Committed);
    let reader = tc.client.begin(None).await.unwrap();
    reader.get(b.as_bytes()).await.unwrap();
    assert_eq!(reader.commit().await.unwrap(), Outcome::Committed);
    let aborted = tc.client.begin(None).await.unwrap();
    aborted.put(a.as_bytes(), b"x").await.unwrap();
    aborted.abort().await.unwrap();
    tc.wait_settled().await;

    for _ in 0..3 {
        for tid in [two, one, reader.tid()] {
            let txn = tc.client.txn(tid, 0);
            assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
            assert!(matches!(tc.client.status(tid).await.unwrap(), twopc_client::Decision::Committed));
            let tid = tid.to_string();
            let o = std::process::Command::new(env!("CARGO_BIN_EXE_twopc"))
                .args(["commit", "--tid", &tid, "--coordinator", &tc.cluster.coordinator_addr()])
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(0), "{o:?}");
        }
        aborted.abort().await.unwrap();
        assert!(matches!(aborted.commit().await.unwrap(), Outcome::Aborted { .. }));
        assert!(matches!(tc.client.status(aborted.tid()).await.unwrap(), twopc_client::Decision::Aborted { .. }));
    }

    let c = scrape(coord_port);
    assert_eq!(sample(&c, "twopc_transactions_begun_total"), 4.0, "{c}");
    assert_eq!(sample(&c, "twopc_transactions_committed_total"), 3.0, "{c}");
    assert_eq!(sample(&c, "twopc_transactions_aborted_total{reason=\"client\"}"), 1.0, "{c}");
    let aborted_total: f64 = c
        .lines()
        .filter(|l| l.starts_with("twopc_transactions_aborted_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(aborted_total, 1.0, "{c}");
    // The commit latency summary has one sample per transaction that asked
    // to commit before it was decided (3: the aborted one was aborted
    // first), not one per reply.
    assert_eq!(sample(&c, "twopc_commit_latency_seconds_count"), 3.0, "{c}");
}
