//! One store per partition (PROTOCOL.md rule 13; issue 13 kinds 3/4): a
//! participant for a partition the coordinator knows, started on another
//! store (an empty or wrong data directory), is refused at registration
//! (FAILED_PRECONDITION, `x-twopc-refusal: other-store`) and exits with
//! code 2, naming both store ids and what to do; the running participant
//! keeps the partition and its committed data stays readable. A restart on
//! its own data re-registers; `--replace-store LOST_ID` replaces a lost
//! store deliberately, once; the recorded ids survive a coordinator restart
//! (SQLite log) and a change of leader (etcd log).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use twopc::cluster::{ClusterOptions, Proc};
use twopc_client::Outcome;

const BIN: &str = env!("CARGO_BIN_EXE_twopc");
/// Generous for a loaded machine; a refusal takes milliseconds once registered.
const BOUND: Duration = Duration::from_secs(30);

/// Starts a participant for `p` on `data` reaching `coordinators`, with
/// `extra` arguments; its log is `log`. Waits for it to serve.
fn start_participant(tc: &TestCluster, p: u32, data: &Path, extra: &[&str], log: &str) -> Proc {
    let mut args: Vec<String> = [
        "participant",
        "--partition",
        &p.to_string(),
        "--listen",
        "127.0.0.1:0",
        "--coordinator",
        &tc.cluster.coordinator_addr(),
        "--data-dir",
        &data.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::start(Path::new(BIN), &args, &[], &tc.cluster.dir.join(log), log).expect("participant starts")
}

/// Waits for `proc` to exit by itself; asserts exit code 2 and returns its log.
fn assert_refused(tc: &TestCluster, mut proc: Proc, log: &str) -> String {
    assert!(proc.wait_exit(BOUND), "{log}: the refused participant should exit");
    let text = std::fs::read_to_string(tc.cluster.dir.join(log)).unwrap();
    assert_eq!(proc.exit_status().and_then(|s| s.code()), Some(2), "exit code; log:\n{text}");
    assert!(!text.contains("panicked"), "{text}");
    text
}

/// The store id kept in a participant's data directory.
fn store_id(data: &Path) -> String {
    let conn = rusqlite::Connection::open_with_flags(
        data.join("partition.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    conn.query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| r.get(0)).unwrap()
}

fn p1_dir(tc: &TestCluster) -> PathBuf {
    tc.cluster.dir.join("p1")
}

/// A committed transaction on partitions 0 and 1; returns the key on 1.
async fn commit_on_both(tc: &TestCluster, name: &str) -> String {
    let (a, b) = (tc.key_on(0, &format!("{name}-a")), tc.key_on(1, &format!("{name}-b")));
    let (_, outcome) = tc.write_txn(&[(&a, "1"), (&b, "1")]).await;
    assert_eq!(outcome, Outcome::Committed);
    b
}

/// The refused participant's log names both stores and the way out; the
/// coordinator logged the refusal.
fn assert_names_both(tc: &TestCluster, text: &str, recorded: &str, theirs: &str) {
    let line = text.lines().find(|l| l.contains("refused this participant's store")).unwrap_or_else(|| {
        panic!("no refusal line in:\n{text}");
    });
    assert!(line.contains(recorded) && line.contains(theirs), "both ids: {line}");
    assert!(line.contains(&format!("--replace-store {recorded}")), "what to do: {line}");
    let coordinator = std::fs::read_to_string(tc.cluster.coordinator_log(0)).unwrap();
    assert!(coordinator.contains("registration refused"), "the coordinator says so too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_participant_on_an_empty_dir_is_refused_and_the_first_keeps_the_partition() {
    let tc = TestCluster::three().await;
    let key = commit_on_both(&tc, "empty").await;
    let recorded = store_id(&p1_dir(&tc));

    let empty = tc.cluster.dir.join("p1-empty");
    let second = start_participant(&tc, 1, &empty, &[], "p1-empty.log");
    let text = assert_refused(&tc, second, "p1-empty.log");
    assert_names_both(&tc, &text, &recorded, &store_id(&empty));

    // The first participant still owns partition 1, and serves it.
    tc.cluster.wait_registered(SETTLE).await.expect("partition 1 still at the first participant");
    tc.wait_value(&key, Some("1")).await;
    let key2 = commit_on_both(&tc, "after").await;
    tc.wait_value(&key2, Some("1")).await;
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_on_own_data_re_register_and_the_coordinator_keeps_the_ids() {
    let mut tc = TestCluster::three().await;
    let key = commit_on_both(&tc, "restart").await;
    let recorded = store_id(&p1_dir(&tc));

    // Partition 1 on its own data, at a new port: accepted.
    tc.cluster.restart_participant(1, &[]).unwrap();
    tc.reconnect().await;
    assert_eq!(store_id(&p1_dir(&tc)), recorded, "the id is kept across restarts");
    tc.wait_value(&key, Some("1")).await;

    // The coordinator restarted on its (SQLite) log still knows the store.
    tc.cluster.restart_coordinator(&[]).unwrap();
    tc.reconnect().await;
    let empty = tc.cluster.dir.join("p1-empty");
    let second = start_participant(&tc, 1, &empty, &[], "p1-empty.log");
    let text = assert_refused(&tc, second, "p1-empty.log");
    assert_names_both(&tc, &text, &recorded, &store_id(&empty));
    tc.cluster.wait_registered(SETTLE).await.expect("partition 1 still at its participant");

    // And the participant restarted on its data after that: accepted again.
    tc.cluster.restart_participant(1, &[]).unwrap();
    tc.reconnect().await;
    let key2 = commit_on_both(&tc, "restart2").await;
    tc.wait_value(&key2, Some("1")).await;
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_store_takes_over_a_lost_partition_once() {
    let mut tc = TestCluster::three().await;
    let key = commit_on_both(&tc, "lost").await;
    let lost = store_id(&p1_dir(&tc));
    tc.cluster.participants[1].kill();

    // Naming another store than the recorded one is refused.
    let fresh = tc.cluster.dir.join("p1-new");
    let wrong = start_participant(&tc, 1, &fresh, &["--replace-store", "not-the-recorded-store"], "p1-wrong.log");
    let text = assert_refused(&tc, wrong, "p1-wrong.log");
    assert!(text.contains("does not name partition 1's recorded store") && text.contains(&lost), "{text}");

    // Naming the lost store: accepted, and it serves partition 1.
    let new = start_participant(&tc, 1, &fresh, &["--replace-store", &lost], "p1-new.log");
    let new_id = store_id(&fresh);
    tc.cluster.participants[1] = new;
    tc.reconnect().await;
    let coordinator = std::fs::read_to_string(tc.cluster.coordinator_log(0)).unwrap();
    assert!(coordinator.contains("store replaced by the operator") && coordinator.contains(&new_id));
    // The cost: the lost store's committed data is gone with it.
    assert_eq!(tc.read(&key).await, None);
    let key2 = commit_on_both(&tc, "replaced").await;
    tc.wait_value(&key2, Some("1")).await;

    // The old store coming back is now the other store: refused.
    let old = start_participant(&tc, 1, &p1_dir(&tc), &[], "p1-old.log");
    let text = assert_refused(&tc, old, "p1-old.log");
    assert_names_both(&tc, &text, &new_id, &lost);
    // The flag left set replaces nothing more (it names the old store),
    // and a restart of the new store with it is still accepted.
    let again =
        start_participant(&tc, 1, &tc.cluster.dir.join("p1-other"), &["--replace-store", &lost], "p1-again.log");
    assert_refused(&tc, again, "p1-again.log");
    tc.cluster.participants[1].kill();
    tc.cluster.participants[1] = start_participant(&tc, 1, &fresh, &["--replace-store", &lost], "p1-new.log");
    tc.reconnect().await;
    tc.wait_value(&key2, Some("1")).await;
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_log_keeps_the_ids_across_a_change_of_leader() {
    let mut tc = TestCluster::start_ha(ClusterOptions::default()).await;
    let key = commit_on_both(&tc, "ha").await;
    let recorded = store_id(&p1_dir(&tc));
    let empty = tc.cluster.dir.join("p1-empty");
    let second = start_participant(&tc, 1, &empty, &[], "p1-empty.log");
    let text = assert_refused(&tc, second, "p1-empty.log");
    assert!(text.contains(&recorded) && text.contains(&format!("--replace-store {recorded}")), "{text}");

    // A new leader reads the recorded ids back from etcd.
    let leader = tc.cluster.leader(SETTLE).await.unwrap();
    tc.cluster.kill_coordinator(leader);
    let next = tc.cluster.leader(SETTLE).await.unwrap();
    assert_ne!(next, leader);
    let second = start_participant(&tc, 1, &empty, &[], "p1-empty2.log");
    let text = assert_refused(&tc, second, "p1-empty2.log");
    assert!(text.contains(&recorded), "{text}");
    tc.reconnect().await;
    tc.wait_value(&key, Some("1")).await;
}
