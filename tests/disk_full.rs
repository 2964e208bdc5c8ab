//! Issue 13, kind 14: a full disk degrades service; it does not end it.
//!
//! The disk is made "full" with the test hook of `twopc_proto::disk_full`:
//! the failpoints `decision_log::max_page_count` (coordinator) and
//! `store::max_page_count` (participant) armed with `return(1)` cap the
//! SQLite file at its current size, and SQLite then answers exactly as on
//! a full disk (`SQLITE_FULL`, write rolled back); disarming them is space
//! coming back. (That real ENOSPC gives the same `SQLITE_FULL` is checked
//! on a small tmpfs in `twopc_proto::disk_full`'s tests, where mounting is
//! permitted.) No process is restarted in these tests.

mod common;

use std::time::{Duration, Instant};

use common::*;
use twopc::cluster::ClusterOptions;
use twopc_client::{AbortKind, ClientError, Decision, FailpointTarget, Outcome};

/// At most this many transactions to fill the capped file.
const FILL: usize = 400;

/// A value big enough that a few hundred transactions fill pages quickly.
fn value(i: usize) -> String {
    format!("{i:04}-{}", "x".repeat(600))
}

/// How one two-key transaction ended.
#[derive(Debug)]
enum End {
    Committed,
    Aborted(String),
    /// Commit refused with this status code and message.
    Refused(tonic::Code, String),
}

async fn txn(tc: &TestCluster, writes: &[(&str, &str)]) -> (uuid::Uuid, End) {
    let t = tc.client.begin(Some(Duration::from_secs(30))).await.expect("begin");
    for (k, v) in writes {
        t.put(k.as_bytes(), v.as_bytes()).await.expect("put");
    }
    let end = match t.commit().await {
        Ok(Outcome::Committed) => End::Committed,
        Ok(Outcome::Aborted { reason, kind }) => {
            // Every abort in these scenarios is the full disk's, and says so.
            assert_eq!(kind, AbortKind::DiskFull, "{reason}");
            End::Aborted(reason)
        }
        Ok(Outcome::Forgotten { reason }) => panic!("a tid just begun cannot be forgotten: {reason}"),
        Err(ClientError::Status(s)) => End::Refused(s.code(), s.message().to_string()),
        Err(e) => panic!("commit of {} failed with neither an outcome nor a status: {e}", t.tid()),
    };
    (t.tid(), end)
}

/// The value of the sample `name` (no labels), 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn count_in(path: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_decision_log_aborts_and_refuses_commits_serves_the_rest_and_resumes() {
    let port = free_port();
    let opts = ClusterOptions {
        partitions: 2,
        coordinator_args: vec!["--metrics-listen".into(), format!("127.0.0.1:{port}")],
        ..Default::default()
    };
    let tc = TestCluster::start(opts).await;
    let log = tc.cluster.dir.join("coordinator.log");
    let (a0, b0) = (tc.key_on(0, "before"), tc.key_on(1, "before"));
    let (before, end) = txn(&tc, &[(&a0, "1"), (&b0, "1")]).await;
    assert!(matches!(end, End::Committed), "{end:?}");

    arm(&tc, FailpointTarget::Coordinator, "decision_log::max_page_count", "return(1)").await;
    let mut outcomes = vec![];
    let mut full_at = None;
    for i in 0..FILL {
        let (a, b) = (tc.key_on(0, &format!("k{i}")), tc.key_on(1, &format!("k{i}")));
        let v = value(i);
        let (tid, end) = txn(&tc, &[(&a, &v), (&b, &v)]).await;
        let stop = !matches!(end, End::Committed);
        outcomes.push((tid, a, b, v, end));
        // A few more after the first failure: all of them must fail the same way.
        if stop && full_at.is_none() {
            full_at = Some(i);
        }
        if full_at.is_some_and(|f| i >= f + 10) {
            break;
        }
    }
    let full_at = full_at.unwrap_or_else(|| panic!("{FILL} transactions never filled the capped decision log"));
    // Phase 2 of the last commits may still be under way.
    tc.wait_settled().await;
    let (mut committed, mut aborted, mut refused) = (0, 0, 0);
    for (tid, a, b, v, end) in &outcomes {
        let applied = all_or_nothing(&tc, &[a, b], v).await;
        match end {
            End::Committed => {
                committed += 1;
                assert!(applied, "{tid} committed but is not applied");
            }
            End::Aborted(reason) => {
                aborted += 1;
                assert!(reason.contains("out of disk space") && reason.contains("decisions.db"), "{tid}: {reason}");
                assert!(!applied, "{tid} aborted but applied");
            }
            End::Refused(code, msg) => {
                refused += 1;
                assert_eq!(*code, tonic::Code::ResourceExhausted, "{tid}: {msg}");
                assert!(msg.contains("out of disk space") && msg.contains("decisions.db"), "{tid}: {msg}");
                assert!(!applied, "{tid} refused but applied");
                // The refused tid was aborted, with the same reason.
                let d = tc.client.status(*tid).await.unwrap();
                assert!(
                    matches!(&d, Decision::Aborted { reason, kind: AbortKind::DiskFull } if reason.contains("out of disk space")),
                    "{d:?}"
                );
            }
        }
    }
    eprintln!("log full after {full_at} commits: {committed} committed, {aborted} aborted, {refused} refused");
    assert!(committed >= full_at && aborted + refused >= 11, "{committed} {aborted} {refused}");
    assert!(refused >= 1, "while full, new commits are refused before anything is prepared");

    // One partition (one-phase commit: a DELEGATED record) fails the same
    // way, and a transaction that only read still commits (no record).
    let solo = tc.key_on(0, "solo");
    let (tid, end) = txn(&tc, &[(&solo, "1")]).await;
    match &end {
        End::Refused(tonic::Code::ResourceExhausted, r) | End::Aborted(r) => {
            assert!(r.contains("out of disk space"), "{tid}: {r}")
        }
        e => panic!("one-phase commit while the log is full: {e:?}"),
    }
    let t = tc.client.begin(Some(Duration::from_secs(30))).await.unwrap();
    assert_eq!(t.get(a0.as_bytes()).await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(t.commit().await.unwrap(), Outcome::Committed, "a read-only commit needs no record");
    tc.wait_settled().await;
    assert_eq!(tc.read(&solo).await, None, "the refused one-phase write is not applied");

    // Reads and decisions are still answered; the process never stopped.
    assert_eq!(tc.client.status(before).await.unwrap(), Decision::Committed);
    assert_eq!(tc.read(&a0).await.as_deref(), Some("1"));
    let text = scrape(port);
    assert_eq!(metric(&text, "twopc_decision_log_disk_full"), 1.0, "{text}");
    assert!(metric(&text, "twopc_decision_log_disk_full_total") >= (aborted + refused) as f64, "{text}");
    assert!(text.contains("twopc_transactions_aborted_total{reason=\"disk_full\"}"), "{text}");
    // One log line for the episode, not one per transaction.
    assert_eq!(count_in(&log, "decision log's disk is full"), 1, "{}", std::fs::read_to_string(&log).unwrap());

    // Space returns: commits succeed again, with no restart.
    arm(&tc, FailpointTarget::Coordinator, "decision_log::max_page_count", "").await;
    let deadline = Instant::now() + SETTLE;
    let (a1, b1) = (tc.key_on(0, "after"), tc.key_on(1, "after"));
    let mut tries = 0;
    loop {
        tries += 1;
        let (_, end) = txn(&tc, &[(&a1, "2"), (&b1, "2")]).await;
        match end {
            End::Committed => break,
            End::Aborted(r) | End::Refused(_, r) => assert!(r.contains("out of disk space"), "{r}"),
        }
        assert!(Instant::now() < deadline, "commits did not resume after space returned ({tries} tries)");
        // The refusal holds only until the next probe (1 s): wait for it.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tc.wait_value(&a1, Some("2")).await;
    tc.wait_value(&b1, Some("2")).await;
    assert_eq!(metric(&scrape(port), "twopc_decision_log_disk_full"), 0.0);
    assert_eq!(count_in(&log, "decision log's disk has space again"), 1);
    for i in 0..5 {
        let (_, end) = txn(&tc, &[(&a1, &i.to_string()), (&b1, &i.to_string())]).await;
        assert!(matches!(end, End::Committed), "{end:?}");
    }
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_out_of_space_votes_no_naming_its_partition_serves_reads_and_resumes() {
    let mut tc = TestCluster::start(ClusterOptions { partitions: 2, ..Default::default() }).await;
    let port = free_port();
    tokio::task::block_in_place(|| {
        tc.cluster.restart_participant(1, &[("TWOPC_METRICS_LISTEN".into(), format!("127.0.0.1:{port}"))]).unwrap()
    });
    tc.reconnect().await;
    let log = tc.cluster.dir.join("p1.log");
    let (a0, b0) = (tc.key_on(0, "before"), tc.key_on(1, "before"));
    let (_, end) = txn(&tc, &[(&a0, "1"), (&b0, "1")]).await;
    assert!(matches!(end, End::Committed), "{end:?}");

    arm(&tc, FailpointTarget::Partition(1), "store::max_page_count", "return(1)").await;
    let mut outcomes = vec![];
    let mut no_votes = 0;
    for i in 0..FILL {
        let (a, b) = (tc.key_on(0, &format!("k{i}")), tc.key_on(1, &format!("k{i}")));
        let v = value(i);
        let (tid, end) = txn(&tc, &[(&a, &v), (&b, &v)]).await;
        match &end {
            End::Committed => {}
            End::Aborted(reason) => {
                assert!(reason.contains("partition 1 is out of disk space"), "{tid}: {reason}");
                assert!(reason.contains("partition.db"), "{tid}: {reason}");
                no_votes += 1;
            }
            End::Refused(code, msg) => panic!("{tid}: refused {code:?}: {msg}"),
        }
        outcomes.push((tid, a, b, v, end));
        if no_votes >= 5 {
            break;
        }
    }
    assert!(no_votes >= 5, "{FILL} transactions never filled partition 1's capped store");
    // One partition: the participant's answer is the decision (one-phase);
    // out of space it decides ABORT, naming itself. (A value needing a page
    // of its own: no page is left.)
    let solo = tc.key_on(1, "solo");
    let big = "y".repeat(5000);
    let (tid, end) = txn(&tc, &[(&solo, &big)]).await;
    match &end {
        End::Aborted(r) => assert!(r.contains("partition 1 is out of disk space"), "{tid}: {r}"),
        e => panic!("one-phase commit at a full partition: {e:?}"),
    }
    assert_eq!(tc.read(&solo).await, None);
    // Reads at the full partition are served; partition 0 was never full.
    assert_eq!(tc.read(&b0).await.as_deref(), Some("1"));
    let text = scrape(port);
    assert_eq!(metric(&text, "twopc_store_disk_full"), 1.0, "{text}");
    assert!(metric(&text, "twopc_store_disk_full_total") >= no_votes as f64, "{text}");
    // One line per episode, not per failure (near full, a write that fits
    // may succeed between failures; an episode ends only after a second
    // without one, which a very slow machine could reach once).
    let starts = count_in(&log, "partition.db) is full: refusing");
    // A participant tries every write (no probe period): its line says so.
    assert_eq!(count_in(&log, "every 0 ms"), 0, "the episode's line names no 0 ms retry period");
    assert_eq!(count_in(&log, "will try every write"), starts, "the episode's line says every write is tried");
    assert!(starts == 1 || (starts == 2 && no_votes > 2), "{starts} episodes logged for {no_votes} failures");

    // Space returns: prepares succeed again, without a restart; commits
    // that were waiting for space are applied too.
    arm(&tc, FailpointTarget::Partition(1), "store::max_page_count", "").await;
    let (a1, b1) = (tc.key_on(0, "after"), tc.key_on(1, "after"));
    let (_, end) = txn(&tc, &[(&a1, "2"), (&b1, "2")]).await;
    assert!(matches!(end, End::Committed), "{end:?}");
    tc.wait_settled().await;
    for (tid, a, b, v, end) in &outcomes {
        let applied = all_or_nothing(&tc, &[a, b], v).await;
        assert_eq!(applied, matches!(end, End::Committed), "{tid}: {end:?}");
    }
    // The episode ends at the first write a second after the last failure.
    let deadline = Instant::now() + SETTLE;
    let mut i = 0;
    while metric(&scrape(port), "twopc_store_disk_full") != 0.0 {
        assert!(Instant::now() < deadline, "the disk-full gauge stayed up after space returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
        i += 1;
        let (_, end) = txn(&tc, &[(&a1, &i.to_string()), (&b1, &i.to_string())]).await;
        assert!(matches!(end, End::Committed), "{end:?}");
    }
    assert_eq!(count_in(&log, "partition.db) has space again"), starts, "one line when each episode ends");
}

/// Unmounts (lazily: the coordinator may still hold its files) on drop.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The scenario on a real full file system: the coordinator's data
/// directory on a small tmpfs that a filler file fills up. Needs root (or
/// CAP_SYS_ADMIN) to mount; elsewhere it says so and skips (the tests
/// above cover the same paths through the page-limit hook).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_really_full_file_system_under_the_coordinator_degrades_and_recovers_by_itself() {
    let mut tc = TestCluster::start(ClusterOptions { partitions: 2, ..Default::default() }).await;
    let (a0, b0) = (tc.key_on(0, "before"), tc.key_on(1, "before"));
    let (before, end) = txn(&tc, &[(&a0, "1"), (&b0, "1")]).await;
    assert!(matches!(end, End::Committed), "{end:?}");

    // Move the decision log onto a 2 MiB tmpfs.
    tc.cluster.kill_coordinator(0);
    let data = tc.cluster.dir.join("coordinator");
    let saved = tc.cluster.dir.join("coordinator-saved");
    std::fs::rename(&data, &saved).unwrap();
    std::fs::create_dir(&data).unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&data)
        .output()
        .expect("run mount");
    if !mount.status.success() {
        eprintln!("SKIPPED: cannot mount a tmpfs here: {}", String::from_utf8_lossy(&mount.stderr));
        return;
    }
    let _mounted = Mounted(data.clone());
    for f in std::fs::read_dir(&saved).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), data.join(f.file_name())).unwrap();
    }
    tokio::task::block_in_place(|| tc.cluster.restart_coordinator(&[]).unwrap());
    tc.reconnect().await;
    let (_, end) = txn(&tc, &[(&a0, "2"), (&b0, "2")]).await;
    assert!(matches!(end, End::Committed), "{end:?}");

    // Fill the file system.
    let filler = data.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }
    let mut full = None;
    for i in 0..2000 {
        let (a, b) = (tc.key_on(0, &format!("k{i}")), tc.key_on(1, &format!("k{i}")));
        let v = value(i);
        let (tid, end) = txn(&tc, &[(&a, &v), (&b, &v)]).await;
        match end {
            End::Committed => {}
            End::Aborted(r) | End::Refused(tonic::Code::ResourceExhausted, r) => {
                assert!(r.contains("out of disk space") && r.contains("decisions.db"), "{tid}: {r}");
                full = Some(i);
                break;
            }
            End::Refused(code, m) => panic!("{tid}: {code:?}: {m}"),
        }
    }
    let full = full.expect("2000 transactions never filled a 2 MiB file system");
    // The run (300 two-partition transactions: 12 committed, 288
    // UNAVAILABLE until a restart), smaller: every later one is answered
    // at once, ABORTED or RESOURCE_EXHAUSTED naming the disk.
    let (mut aborted, mut refused) = (0, 0);
    for i in 0..40 {
        let (a, b) = (tc.key_on(0, &format!("f{i}")), tc.key_on(1, &format!("f{i}")));
        let (tid, end) = txn(&tc, &[(&a, "x"), (&b, "x")]).await;
        match end {
            End::Aborted(r) if r.contains("out of disk space") => aborted += 1,
            End::Refused(tonic::Code::ResourceExhausted, r) if r.contains("out of disk space") => refused += 1,
            e => panic!("{tid} while the disk is full: {e:?}"),
        }
        assert!(!all_or_nothing(&tc, &[&a, &b], "x").await, "{tid} applied");
    }
    eprintln!("ENOSPC after {full} transactions; then 40 more: {aborted} aborted, {refused} refused");
    assert!(tc.cluster.coordinator.is_running(), "the coordinator must not stop on ENOSPC");
    assert_eq!(tc.client.status(before).await.unwrap(), Decision::Committed);
    assert_eq!(tc.read(&a0).await.as_deref(), Some("2"));

    // Free the space: commits succeed again, no restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + SETTLE;
    let (a1, b1) = (tc.key_on(0, "after"), tc.key_on(1, "after"));
    loop {
        let (_, end) = txn(&tc, &[(&a1, "3"), (&b1, "3")]).await;
        match end {
            End::Committed => break,
            End::Aborted(r) | End::Refused(_, r) => assert!(r.contains("out of disk space"), "{r}"),
        }
        assert!(Instant::now() < deadline, "commits did not resume after space was freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tc.wait_settled().await;
    assert!(tc.cluster.coordinator.is_running());
}
