//! Graceful shutdown: SIGTERM in the middle of load stops a process within
//! a bounded time, and nothing a client was told COMMITTED is lost.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use twopc_client::Outcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_committed() {
    let mut tc = TestCluster::three().await;
    let stop = Arc::new(AtomicBool::new(false));
    let committed: Arc<Mutex<Vec<[String; 3]>>> = Arc::default();
    let mut workers = vec![];
    for w in 0..4 {
        let keys: Vec<Vec<String>> =
            (0..10_000).map(|i| (0..3).map(|p| tc.key_on(p, &format!("w{w}-{i}"))).collect()).take(400).collect();
        let (client, stop, committed) = (tc.client.clone(), stop.clone(), committed.clone());
        workers.push(tokio::spawn(async move {
            for k in keys {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(txn) = client.begin(Some(Duration::from_secs(5))).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let mut ok = true;
                for key in &k {
                    ok &= txn.put(key.as_bytes(), b"v").await.is_ok();
                }
                if ok && matches!(txn.commit().await, Ok(Outcome::Committed)) {
                    committed.lock().unwrap().push([k[0].clone(), k[1].clone(), k[2].clone()]);
                }
            }
        }));
    }
    // Let some commits happen, then SIGTERM the coordinator and a participant.
    let deadline = Instant::now() + SETTLE;
    while committed.lock().unwrap().len() < 20 {
        assert!(Instant::now() < deadline, "no load");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tc.cluster.coordinator.terminate();
    tc.cluster.participants[1].terminate();
    assert!(tc.cluster.coordinator.wait_exit(Duration::from_secs(15)), "coordinator did not stop within 15 s");
    assert!(tc.cluster.participants[1].wait_exit(Duration::from_secs(15)), "participant did not stop within 15 s");
    tokio::task::block_in_place(|| {
        tc.cluster.restart_coordinator(&[]).unwrap();
        tc.cluster.restart_participant(1, &[]).unwrap();
    });
    tc.reconnect().await;
    // The load resumes against the restarted processes.
    let before = committed.lock().unwrap().len();
    let deadline = Instant::now() + SETTLE;
    while committed.lock().unwrap().len() < before + 20 {
        assert!(Instant::now() < deadline, "the load did not resume after the restart");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    tc.wait_settled().await;
    let committed = committed.lock().unwrap().clone();
    for keys in &committed {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert!(all_or_nothing(&tc, &refs, "v").await, "committed transaction lost: {keys:?}");
    }
    eprintln!("{} transactions committed around the shutdown, all present", committed.len());
}
