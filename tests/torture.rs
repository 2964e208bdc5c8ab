//! Randomized crash torture: a bank workload (accounts over three
//! participants, concurrent transfers between accounts on different
//! partitions) while a chaos loop SIGKILLs and restarts random processes and
//! arms random crash failpoints.
//!
//! Every transfer also writes a marker key next to each of its two accounts,
//! so each side's fate is visible on its own. At the end, with every process
//! back and the cluster settled, the test checks PROTOCOL.md's invariants:
//! - conservation: the sum of the balances is unchanged;
//! - durability: every transfer the client saw COMMITTED has both markers;
//! - atomicity: no transfer has one marker without the other, and none the
//!   client saw ABORTED has any;
//! - liveness: no prepared tid, open tid or lock remains (`wait_settled`).
//!
//! Seeded: `TWOPC_TORTURE_SEED` replays a run (the seed is printed).
//! Bounded: `TWOPC_TORTURE_SECS` (default 20) of chaos; a soak run sets it
//! higher.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use twopc::cluster::ClusterOptions;
use twopc_client::{Client, ClientError, Decision, FailpointTarget, Outcome, partition_for};

const ACCOUNTS: u32 = 24;
const INITIAL: i64 = 1_000;
const WORKERS: usize = 4;

const COORDINATOR_POINTS: &[&str] = &[
    "coordinator::before_decision_forced",
    "coordinator::after_decision_forced",
    "coordinator::after_commit_acked",
    "coordinator::before_delegation_forced",
    "coordinator::after_delegation_forced",
];
const PARTICIPANT_POINTS: &[&str] = &[
    "participant::before_prepare_durable",
    "participant::after_prepare_durable",
    "participant::before_commit_applied",
    "participant::after_commit_applied",
    "participant::before_one_phase_applied",
    "participant::after_one_phase_applied",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Committed,
    Aborted,
    Unknown,
}

#[derive(Debug, Clone)]
struct Transfer {
    markers: [String; 2],
    seen: Seen,
}

fn account(a: u32) -> String {
    format!("acct-{a}")
}

/// A marker key for `tid` on partition `p`.
fn marker(tid: uuid::Uuid, side: &str, p: u32, partitions: u32) -> String {
    (0..).map(|i| format!("m-{tid}-{side}-{i}")).find(|k| partition_for(k.as_bytes(), partitions) == p).unwrap()
}

fn parse(v: Option<Vec<u8>>) -> i64 {
    v.map(|v| String::from_utf8_lossy(&v).parse().expect("balance is a number")).unwrap_or(0)
}

/// One transfer of 1 between two accounts: on different partitions (two
/// phases), or a third of the time on the same one (one phase).
async fn transfer(client: &Client, rng: &mut StdRng, partitions: u32) -> Option<(uuid::Uuid, Transfer)> {
    let from = rng.random_range(0..ACCOUNTS);
    let same_partition = rng.random_bool(1.0 / 3.0);
    let to = loop {
        let to = rng.random_range(0..ACCOUNTS);
        let same =
            partition_for(account(to).as_bytes(), partitions) == partition_for(account(from).as_bytes(), partitions);
        if to != from && same == same_partition {
            break to;
        }
    };
    let txn = client.begin(Some(Duration::from_secs(2))).await.ok()?;
    let tid = txn.tid();
    let markers = [
        marker(tid, "from", partition_for(account(from).as_bytes(), partitions), partitions),
        marker(tid, "to", partition_for(account(to).as_bytes(), partitions), partitions),
    ];
    let ops: Result<(), ClientError> = async {
        let a = parse(txn.get(account(from).as_bytes()).await?);
        let b = parse(txn.get(account(to).as_bytes()).await?);
        txn.put(account(from).as_bytes(), (a - 1).to_string().as_bytes()).await?;
        txn.put(markers[0].as_bytes(), b"x").await?;
        txn.put(account(to).as_bytes(), (b + 1).to_string().as_bytes()).await?;
        txn.put(markers[1].as_bytes(), b"x").await?;
        Ok(())
    }
    .await;
    let seen = match ops {
        // An operation failed: the tid cannot commit without the client's
        // Commit, but say "unknown" unless the failure was a clean abort.
        Err(e) => {
            let _ = txn.abort().await;
            if e.is_retryable_abort() { Seen::Aborted } else { Seen::Unknown }
        }
        Ok(()) => match txn.commit().await {
            Ok(Outcome::Committed) => Seen::Committed,
            Ok(Outcome::Aborted { .. }) => Seen::Aborted,
            Err(_) => Seen::Unknown,
        },
    };
    Some((tid, Transfer { markers, seen }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_transfers_survive_random_crashes() {
    let seed: u64 =
        std::env::var("TWOPC_TORTURE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::rng().random());
    let secs: u64 = std::env::var("TWOPC_TORTURE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    eprintln!("torture: seed {seed} (replay with TWOPC_TORTURE_SEED={seed}), {secs}s of chaos");

    let opts = ClusterOptions {
        coordinator_args: vec!["--prepare-timeout-ms".into(), "1000".into()],
        participant_args: vec!["--in-doubt-after-ms".into(), "200".into()],
        ..Default::default()
    };
    let mut tc = TestCluster::start(opts).await;
    let partitions = tc.partitions();
    let opening: Vec<(String, String)> = (0..ACCOUNTS).map(|a| (account(a), INITIAL.to_string())).collect();
    let opening: Vec<(&str, &str)> = opening.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(tc.write_txn(&opening).await.1, Outcome::Committed);

    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<BTreeMap<uuid::Uuid, Transfer>>> = Arc::default();
    let mut workers = vec![];
    for w in 0..WORKERS {
        let (client, stop, log) = (tc.client.clone(), stop.clone(), log.clone());
        let mut rng = StdRng::seed_from_u64(seed ^ (w as u64 + 1));
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match transfer(&client, &mut rng, partitions).await {
                    Some((tid, t)) => {
                        log.lock().unwrap().insert(tid, t);
                    }
                    // Begin failed: the coordinator is down; wait for it.
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }

    // The chaos loop.
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut kills, mut failpoints, mut restarts) = (0u32, 0u32, 0u32);
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
        restarts += restart_dead(&mut tc).await;
        match rng.random_range(0..4) {
            0 => {
                kills += 1;
                tokio::task::block_in_place(|| tc.cluster.restart_coordinator(&[])).unwrap();
                restarts += 1;
            }
            1 => {
                kills += 1;
                let p = rng.random_range(0..partitions);
                tokio::task::block_in_place(|| tc.cluster.restart_participant(p, &[])).unwrap();
                restarts += 1;
            }
            _ => {
                let (target, name) = if rng.random_bool(0.4) {
                    (FailpointTarget::Coordinator, COORDINATOR_POINTS[rng.random_range(0..COORDINATOR_POINTS.len())])
                } else {
                    let p = rng.random_range(0..partitions);
                    (FailpointTarget::Partition(p), PARTICIPANT_POINTS[rng.random_range(0..PARTICIPANT_POINTS.len())])
                };
                if tc.client.set_failpoint(target, name, "1*return(abort)").await.is_ok() {
                    failpoints += 1;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    // Bring everything back without armed failpoints: a fresh start of
    // every process clears them.
    tokio::task::block_in_place(|| {
        tc.cluster.restart_coordinator(&[]).unwrap();
        for p in 0..partitions {
            tc.cluster.restart_participant(p, &[]).unwrap();
        }
    });
    tc.reconnect().await;
    tc.wait_settled().await;

    let log = log.lock().unwrap().clone();
    let mut total = 0i64;
    for a in 0..ACCOUNTS {
        total += parse(tc.client.read(account(a).as_bytes()).await.unwrap());
    }
    let (mut committed, mut aborted, mut unknown, mut applied) = (0, 0, 0, 0);
    for (tid, t) in &log {
        let from = tc.read(&t.markers[0]).await.is_some();
        let to = tc.read(&t.markers[1]).await.is_some();
        assert_eq!(from, to, "transfer {tid} ({:?}) applied on one side only", t.seen);
        match t.seen {
            Seen::Committed => {
                committed += 1;
                assert!(from, "transfer {tid} was acknowledged COMMITTED but is not applied");
            }
            Seen::Aborted => {
                aborted += 1;
                assert!(!from, "transfer {tid} was reported ABORTED but is applied");
            }
            Seen::Unknown => {
                unknown += 1;
                // The coordinator's answer now must match what happened.
                let d = tc.client.status(*tid).await.unwrap();
                assert_eq!(d == Decision::Committed, from, "transfer {tid}: decision {d:?}, applied {from}");
            }
        }
        applied += from as usize;
    }
    eprintln!(
        "torture: seed {seed}: {} transactions: {committed} committed, {aborted} aborted, {unknown} unknown \
         ({applied} applied in all); {kills} SIGKILLs, {failpoints} failpoints armed, {restarts} restarts",
        log.len()
    );
    assert_eq!(total, INITIAL * ACCOUNTS as i64, "money was created or destroyed (seed {seed})");
    assert!(committed > 0, "no transfer committed at all: the workload did not run");
}

/// Restarts every process that died (a fired failpoint); returns how many.
async fn restart_dead(tc: &mut TestCluster) -> u32 {
    let mut n = 0;
    if !tc.cluster.coordinator.is_running() {
        tokio::task::block_in_place(|| tc.cluster.restart_coordinator(&[])).unwrap();
        n += 1;
    }
    for p in 0..tc.partitions() {
        if !tc.cluster.participants[p as usize].is_running() {
            tokio::task::block_in_place(|| tc.cluster.restart_participant(p, &[])).unwrap();
            n += 1;
        }
    }
    n
}
