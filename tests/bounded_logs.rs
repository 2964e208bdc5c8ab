//! Bounded logs: a long stream of transactions leaves the decision log
//! holding only a bounded number of finished rows, the participants no
//! prepared rows, and the SQLite files (WAL included) stop growing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use twopc::cluster::ClusterOptions;
use twopc_client::Outcome;

const KEEP: u64 = 50;
/// TRIM_EVERY in the decision log, plus the transactions in flight.
const SLACK: u64 = 256 + 8;

fn count(db: &Path, sql: &str) -> u64 {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64
}

/// The size of database `db` once what its WAL holds is copied in (a
/// passive checkpoint, which waits for nobody): under load a WAL may hold
/// up to 10,000 pages before it starts over (`twopc_proto::wal_checkpoint`),
/// so the file alone would not show what the stream wrote.
fn db_size(db: &Path) -> u64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).unwrap();
    size(db)
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Runs `n` transactions over the same 3 × 8 keys, 8 at a time.
async fn stream(tc: &TestCluster, n: usize) {
    let keys: Vec<Vec<String>> = (0..8).map(|w| (0..3).map(|p| tc.key_on(p, &format!("b{w}"))).collect()).collect();
    let mut tasks = vec![];
    for k in keys {
        let client = tc.client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..n / 8 {
                let txn = client.begin(Some(Duration::from_secs(10))).await.unwrap();
                for key in &k {
                    txn.put(key.as_bytes(), i.to_string().as_bytes()).await.unwrap();
                }
                assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_stay_bounded_under_a_long_stream() {
    let opts =
        ClusterOptions { coordinator_args: vec!["--keep-finished".into(), KEEP.to_string()], ..Default::default() };
    let tc = TestCluster::start(opts).await;
    let log = tc.cluster.dir.join("coordinator/decisions.db");
    let wal = tc.cluster.dir.join("coordinator/decisions.db-wal");
    let p0 = tc.cluster.dir.join("p0/partition.db");

    stream(&tc, 800).await;
    tc.wait_settled().await;
    let first = (db_size(&log), db_size(&p0));
    stream(&tc, 800).await;
    tc.wait_settled().await;
    let rows = count(&log, "SELECT count(*) FROM decisions");
    assert!(rows <= KEEP + SLACK, "decision log holds {rows} rows after 1600 transactions");
    // Finished marks ride with the next forced write, or are written
    // alone within 50 ms (`decision_log::sqlite`): polled, not read once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count(&log, "SELECT count(*) FROM decisions WHERE finished = 0") > 0 {
        assert!(std::time::Instant::now() < deadline, "finished marks were never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&p0, "SELECT count(*) FROM prepared"), 0);
    // The second 800 transactions did not grow the databases (pages are
    // reused) and the WAL stays under its bound: a cycle of checkpoints
    // (`twopc_proto::wal_checkpoint`, at most 10,000 pages) within the
    // 64 MiB limit.
    let second = (db_size(&log), db_size(&p0));
    assert!(second.0 <= first.0 + 64 * 1024, "decision log grew from {} to {} bytes", first.0, second.0);
    assert!(second.1 <= first.1 + 64 * 1024, "partition file grew from {} to {} bytes", first.1, second.1);
    let limit = twopc_proto::wal_checkpoint::journal_size_limit() as u64;
    assert!(size(&wal) <= limit + 1024 * 1024, "decision log WAL is {} bytes", size(&wal));
}

/// Issue 13, "logs stay proportionate": at the default level, committing
/// and aborting transactions writes no line per transaction. 1,000
/// three-partition commits and 100 client aborts may add at most a few
/// lines per process (the throttled samples, at most one per 10 s per
/// site); one line per transaction would be ~100 KB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_level_log_volume_does_not_grow_with_transactions() {
    let tc = TestCluster::three().await;
    let logs: Vec<_> = std::iter::once(tc.cluster.coordinator_log(0))
        .chain((0..3).map(|p| tc.cluster.dir.join(format!("p{p}.log"))))
        .collect();
    let before: Vec<u64> = logs.iter().map(|l| size(l)).collect();

    stream(&tc, 1000).await;
    for i in 0..100 {
        let txn = tc.client.begin(Some(Duration::from_secs(10))).await.unwrap();
        txn.put(tc.key_on(i % 3, "aborted").as_bytes(), b"x").await.unwrap();
        txn.abort().await.unwrap();
    }
    tc.wait_settled().await;

    let grown: Vec<u64> = logs.iter().zip(&before).map(|(l, b)| size(l) - b).collect();
    let total: u64 = grown.iter().sum();
    println!(
        "default-level log bytes for 1,000 commits + 100 aborts: {grown:?} (coordinator, p0, p1, p2), {total} total"
    );
    assert!(total <= 4 * 1024, "default-level logs grew {grown:?} bytes for 1,000 transactions:\n{}", {
        let mut tails = String::new();
        for l in &logs {
            tails.push_str(&twopc::cluster::log_tail(l, 10));
        }
        tails
    });
}
