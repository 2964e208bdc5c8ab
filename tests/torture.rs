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
//! `torture_ha` runs the same workload on an HA cluster (PROTOCOL.md rules
//! 14-16, crash rows C11-C15): a 3-member etcd, three coordinators with a
//! 2 s lease, three participants. Its chaos also SIGKILLs the leader,
//! pauses it (SIGSTOP) past its lease and resumes it once another leads
//! (it must then exit 75 by itself), kills standbys, kills one etcd member
//! at a time, and once per run takes two members (the quorum) away for a
//! few seconds. On top of the invariants above it checks honest answers
//! across leaders: every definite answer a client got (commit replies,
//! successful aborts, status answers asked during the chaos) agrees with
//! the final leader's, which agrees with what the participants applied. It
//! prints etcd's database size at the start and the end (the leaders
//! compact etcd's history, so it must stay bounded).
//!
//! Seeded: `TWOPC_TORTURE_SEED` replays a run's choices (the seed is
//! printed; process timing still varies). Bounded: `TWOPC_TORTURE_SECS`
//! (default 20) of chaos; a soak run sets it higher.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use twopc::cluster::{ClusterOptions, HaOptions};
use twopc_client::{Client, ClientError, Decision, FailpointTarget, Outcome, partition_for};
use twopc_coordinator::leadership::EXIT_DEPOSED;

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
    /// For an unknown outcome: which step failed and with what code, and
    /// the error's text.
    why: Option<(String, String)>,
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
///
/// Also returns the coordinator's definite answer, if one came: `Some(true)`
/// for a Commit answered COMMITTED, `Some(false)` for a Commit answered
/// ABORTED or an Abort that succeeded (it fails once the tid committed).
async fn transfer(
    client: &Client,
    rng: &mut StdRng,
    partitions: u32,
) -> Option<(uuid::Uuid, Transfer, Option<(bool, &'static str)>)> {
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
    let why = |step: &str, e: &ClientError| Some((format!("{step} {:?}", e.code()), e.to_string()));
    let (seen, answer, why) = match ops {
        // An operation failed: the tid cannot commit without the client's
        // Commit, but say "unknown" unless the failure was a clean abort.
        Err(e) => {
            let answer = txn.abort().await.ok().map(|()| (false, "abort"));
            if e.is_retryable_abort() {
                (Seen::Aborted, answer, None)
            } else {
                (Seen::Unknown, answer, why("operation", &e))
            }
        }
        Ok(()) => match txn.commit().await {
            Ok(Outcome::Committed) => (Seen::Committed, Some((true, "commit")), None),
            Ok(Outcome::Aborted { .. }) => (Seen::Aborted, Some((false, "commit")), None),
            // Not for a tid just begun (newer than any forgotten one); says nothing either way.
            Ok(Outcome::Forgotten { reason }) => (Seen::Unknown, None, Some(("commit FORGOTTEN".into(), reason))),
            Err(e) => (Seen::Unknown, None, why("commit", &e)),
        },
    };
    Some((tid, Transfer { markers, seen, why }, answer))
}

/// The run's seed (`TWOPC_TORTURE_SEED`, else random) and chaos duration
/// in seconds (`TWOPC_TORTURE_SECS`, 20 by default), printed for replay.
fn seed_and_duration(name: &str) -> (u64, u64) {
    let seed: u64 =
        std::env::var("TWOPC_TORTURE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::rng().random());
    let secs: u64 = std::env::var("TWOPC_TORTURE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    eprintln!("{name}: seed {seed} (replay with TWOPC_TORTURE_SEED={seed}), {secs}s of chaos");
    (seed, secs)
}

/// Short prepare timeout and in-doubt interval, so the chaos settles fast.
fn cluster_options() -> ClusterOptions {
    ClusterOptions {
        coordinator_args: vec!["--prepare-timeout-ms".into(), "1000".into()],
        participant_args: vec!["--in-doubt-after-ms".into(), "200".into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_transfers_survive_random_crashes() {
    let (seed, secs) = seed_and_duration("torture");
    let opts = cluster_options();
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
                    Some((tid, t, _)) => {
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

// ---------------------------------------------------------------------------
// HA mode: the same bank workload on three coordinators sharing a decision
// log in a 3-member etcd (PROTOCOL.md rules 14-16, crash rows C11-C15).
// ---------------------------------------------------------------------------

/// The leader's lease: short, so that failovers happen often in a short run.
const HA_LEASE_TTL_SECS: u64 = 2;
/// How long a leader paused past its lease may take, once resumed, to see
/// that it was replaced and exit with `EXIT_DEPOSED`.
const DEPOSED_EXIT_WITHIN: Duration = Duration::from_secs(15);
/// How long after a leader was paused another must be leading.
const NEW_LEADER_WITHIN: Duration = Duration::from_secs(30);
/// How long the chaos loop gives a leader probe (none while electing).
const LEADER_PROBE: Duration = Duration::from_secs(2);

/// A definite answer (COMMITTED or ABORTED) a coordinator gave about a tid.
#[derive(Debug, Clone)]
struct Answer {
    committed: bool,
    /// Which call answered: "commit", "abort" or "status".
    how: &'static str,
    /// The coordinator the client was following then (a hint: calls share it).
    following: String,
    /// When, since the start of the chaos.
    at: Duration,
}

type Answers = Arc<Mutex<BTreeMap<uuid::Uuid, Vec<Answer>>>>;

fn record(answers: &Answers, tid: uuid::Uuid, answer: Answer) {
    answers.lock().unwrap().entry(tid).or_default().push(answer);
}

/// What the HA chaos did (printed at the end).
#[derive(Debug, Default)]
struct HaCounts {
    leader_kills: u32,
    standby_kills: u32,
    participant_kills: u32,
    etcd_member_kills: u32,
    pauses: u32,
    /// Paused leaders that, resumed, exited with `EXIT_DEPOSED` on their own.
    deposed_after_pause: u32,
    /// Other coordinators that exited with `EXIT_DEPOSED` on their own.
    deposed_exits: u32,
    /// Processes a failpoint killed (SIGKILL from inside).
    failpoint_deaths: u32,
    /// Coordinators that ended any other way (reported with their log).
    other_exits: u32,
    failpoints: u32,
    restarts: u32,
    quorum_windows: u32,
}

/// The HA chaos loop's state: what it paused or killed and must undo.
struct HaChaos {
    rng: StdRng,
    started: Instant,
    /// A leader we paused (SIGSTOP), and when.
    paused: Option<(usize, Instant)>,
    /// A paused leader we resumed (SIGCONT), and when: it must exit 75.
    resumed: Option<(usize, Instant)>,
    /// The one etcd member we killed, and when to restart it.
    etcd_down: Option<(usize, Instant)>,
    /// The HA blows still to come once each (see [`HaChaos::strike`]).
    first_blows: Vec<u32>,
    n: HaCounts,
}

fn etcd(tc: &mut TestCluster) -> &mut twopc::etcd_cluster::EtcdCluster {
    tc.etcd.as_mut().expect("an HA cluster has its etcd")
}

/// What etcd's database holds, from one member's `/metrics`.
#[derive(Debug, Clone, Copy)]
struct EtcdDb {
    /// `EtcdCluster::db_size_bytes`: the database file's size.
    total: u64,
    in_use: u64,
    /// Keys (all of them: twopc keeps only its own in this etcd).
    keys: u64,
    /// The store's revision, and the one its history is compacted to.
    revision: u64,
    compacted: u64,
}

/// etcd's database as the first member that answers sees it.
fn etcd_db(tc: &TestCluster) -> Option<EtcdDb> {
    let etcd = tc.etcd.as_ref()?;
    (0..etcd.len()).find_map(|i| {
        let total = etcd.db_size_bytes(i).ok()?;
        let (_, metrics) = etcd.http(i, "GET", "/metrics", None).ok()?;
        let gauge = |name: &str| {
            metrics.lines().find_map(|l| {
                let v = l.strip_prefix(name)?.strip_prefix(' ')?;
                v.trim().parse::<f64>().ok().map(|v| v as u64)
            })
        };
        Some(EtcdDb {
            total,
            in_use: gauge("etcd_mvcc_db_total_size_in_use_in_bytes")?,
            keys: gauge("etcd_debugging_mvcc_keys_total")?,
            revision: gauge("etcd_debugging_mvcc_current_revision")?,
            compacted: gauge("etcd_debugging_mvcc_compact_revision")?,
        })
    })
}

fn show_db(db: Option<EtcdDb>) -> String {
    match db {
        Some(d) => format!(
            "{} bytes ({} in use; {} keys, revision {}, history compacted to {})",
            d.total, d.in_use, d.keys, d.revision, d.compacted
        ),
        None => "unknown (no member answered /metrics)".into(),
    }
}

impl HaChaos {
    fn at(&self) -> Duration {
        self.started.elapsed()
    }

    /// Restarts coordinator `i` (it comes back as a standby unless nobody leads).
    fn restart_coordinator(&mut self, tc: &mut TestCluster, i: usize) {
        tokio::task::block_in_place(|| tc.cluster.restart_coordinator_i(i, &[]))
            .unwrap_or_else(|e| panic!("coordinator {i} does not restart: {e:#}"));
        self.n.restarts += 1;
    }

    /// Undoes what is due: resumes a paused leader once another leads,
    /// checks that a resumed one exits 75, restarts the etcd member and
    /// every process that is down.
    async fn tend(&mut self, tc: &mut TestCluster) {
        if let Some((i, since)) = self.resumed {
            assert!(tc.cluster.coordinator_proc(i).pid().is_some(), "the chaos must leave a resumed leader alone");
            match tc.cluster.coordinator_proc(i).exit_status() {
                Some(status) => {
                    assert_eq!(
                        status.code(),
                        Some(EXIT_DEPOSED),
                        "coordinator {i}, paused past its lease and resumed, ended with {status}: a deposed leader \
                         must exit with {EXIT_DEPOSED}"
                    );
                    self.n.deposed_after_pause += 1;
                    self.resumed = None;
                    self.restart_coordinator(tc, i);
                }
                None if since.elapsed() < DEPOSED_EXIT_WITHIN => {}
                None => {
                    let pid = tc.cluster.coordinator_proc(i).pid();
                    panic!(
                        "coordinator {i} was paused past its lease and replaced, yet still runs {:?} after it was \
                         resumed: a deposed leader must exit with {EXIT_DEPOSED}\n{}",
                        since.elapsed(),
                        pid.map(stuck_report).unwrap_or_default()
                    )
                }
            }
        }
        if let Some((i, since)) = self.paused {
            let lease = Duration::from_secs(HA_LEASE_TTL_SECS);
            // `leader` skips a paused coordinator: a leader found is another one.
            if since.elapsed() > lease + Duration::from_secs(1)
                && let Ok(leader) = tc.cluster.leader(LEADER_PROBE).await
            {
                assert_ne!(leader, i, "a paused coordinator cannot be found leading");
                tc.cluster.resume_coordinator(i);
                eprintln!(
                    "torture-ha: {:?}: coordinator {i} resumed after {:?}; {leader} leads",
                    self.at(),
                    since.elapsed()
                );
                self.paused = None;
                self.resumed = Some((i, Instant::now()));
            } else {
                assert!(
                    since.elapsed() < NEW_LEADER_WITHIN,
                    "no other coordinator leads {:?} after leader {i} was paused",
                    since.elapsed()
                );
            }
        }
        if let Some((m, when)) = self.etcd_down
            && Instant::now() >= when
        {
            tokio::task::block_in_place(|| etcd(tc).restart(m)).expect("etcd member restarts");
            self.etcd_down = None;
            self.n.restarts += 1;
        }
        for i in 0..tc.cluster.coordinator_count() {
            if self.resumed.is_some_and(|(r, _)| r == i) {
                continue; // its exit is checked above, next round
            }
            let proc = tc.cluster.coordinator_proc(i);
            if proc.is_running() {
                continue; // paused, or fine
            }
            // None: killed (and reaped) by this test.
            if let Some(status) = proc.exit_status() {
                use std::os::unix::process::ExitStatusExt;
                if status.code() == Some(EXIT_DEPOSED) {
                    self.n.deposed_exits += 1;
                } else if status.signal() == Some(libc::SIGKILL) {
                    self.n.failpoint_deaths += 1;
                } else {
                    self.n.other_exits += 1;
                    let log = twopc::cluster::log_tail(&tc.cluster.coordinator_log(i), 30);
                    eprintln!("torture-ha: {:?}: coordinator {i} ended with {status}; its log ends:\n{log}", self.at());
                }
            }
            self.restart_coordinator(tc, i);
        }
        for p in 0..tc.partitions() {
            if !tc.cluster.participants[p as usize].is_running() {
                self.n.failpoint_deaths += 1;
                tokio::task::block_in_place(|| tc.cluster.restart_participant(p, &[])).unwrap();
                self.n.restarts += 1;
            }
        }
    }

    /// One random blow.
    ///
    /// The HA blows (0-3) come first once each, in a random order (one that
    /// cannot be dealt now, say for want of a leader, is tried again next
    /// round), so that even a short run has each of them; then every blow
    /// is drawn at random.
    async fn strike(&mut self, tc: &mut TestCluster) {
        let partitions = tc.partitions();
        let (blow, first) = match self.first_blows.pop() {
            Some(b) => (b, true),
            None => (self.rng.random_range(0..11), false),
        };
        let dealt = match blow {
            // SIGKILL the leader; `tend` restarts it (as a standby) next round.
            0 | 5 => match tc.cluster.leader(LEADER_PROBE).await {
                // Not a resumed old leader that has not exited yet: it still
                // reports SERVING on gRPC health until it exits, and the
                // check of its exit needs it left alone.
                Ok(l) if self.resumed.is_none_or(|(r, _)| r != l) => {
                    tc.cluster.kill_coordinator(l);
                    self.n.leader_kills += 1;
                    true
                }
                _ => false,
            },
            // SIGSTOP the leader past its lease; `tend` resumes it once another leads.
            1 | 6 => self.paused.is_none() && self.resumed.is_none() && self.pause_leader(tc).await,
            // SIGKILL a standby.
            2 => {
                let l = match tc.cluster.leader(LEADER_PROBE).await {
                    Ok(l) if self.resumed.is_none_or(|(r, _)| r != l) => l,
                    _ => return self.again(blow, first),
                };
                let standbys: Vec<usize> = (0..tc.cluster.coordinator_count())
                    .filter(|&i| {
                        i != l
                            && Some(i) != self.paused.map(|p| p.0)
                            && Some(i) != self.resumed.map(|p| p.0)
                            && tc.cluster.coordinator_proc(i).is_running()
                    })
                    .collect();
                if !standbys.is_empty() {
                    tc.cluster.kill_coordinator(standbys[self.rng.random_range(0..standbys.len())]);
                    self.n.standby_kills += 1;
                }
                !standbys.is_empty()
            }
            // SIGKILL one etcd member (a minority) for 1-4 s.
            3 | 7 if self.etcd_down.is_none() => {
                let m = self.rng.random_range(0..3);
                etcd(tc).kill(m);
                self.etcd_down = Some((m, Instant::now() + Duration::from_millis(self.rng.random_range(1000..4000))));
                self.n.etcd_member_kills += 1;
                true
            }
            3 | 7 => false,
            // SIGKILL a participant and restart it at once.
            4 => {
                let p = self.rng.random_range(0..partitions);
                tokio::task::block_in_place(|| tc.cluster.restart_participant(p, &[])).unwrap();
                self.n.participant_kills += 1;
                self.n.restarts += 1;
                true
            }
            // Arm a crash failpoint in the leader or a participant.
            _ => {
                let (target, name) = if self.rng.random_bool(0.4) {
                    (
                        FailpointTarget::Coordinator,
                        COORDINATOR_POINTS[self.rng.random_range(0..COORDINATOR_POINTS.len())],
                    )
                } else {
                    let p = self.rng.random_range(0..partitions);
                    (
                        FailpointTarget::Partition(p),
                        PARTICIPANT_POINTS[self.rng.random_range(0..PARTICIPANT_POINTS.len())],
                    )
                };
                if tc.client.set_failpoint(target, name, "1*return(abort)").await.is_ok() {
                    self.n.failpoints += 1;
                }
                true
            }
        };
        if !dealt {
            self.again(blow, first);
        }
    }

    /// A first blow that could not be dealt comes again next round.
    fn again(&mut self, blow: u32, first: bool) {
        if first {
            self.first_blows.push(blow);
        }
    }

    /// Pauses the leader, after disarming its failpoints: once resumed it
    /// must end by exiting 75, not by a failpoint armed earlier.
    async fn pause_leader(&mut self, tc: &mut TestCluster) -> bool {
        let Ok(l) = tc.cluster.leader(LEADER_PROBE).await else {
            eprintln!("torture-ha: {:?}: no pause: no single leader", self.at());
            return false;
        };
        let pid = tc.cluster.coordinator_proc(l).pid();
        for name in COORDINATOR_POINTS {
            if let Err(e) = tc.client.set_failpoint(FailpointTarget::Coordinator, name, "").await {
                eprintln!("torture-ha: {:?}: no pause: cannot disarm {name}: {e}", self.at());
                return false;
            }
        }
        // Still the same process leading: the disarming reached it (a
        // leader that lost the lead exits, so leadership cannot have gone
        // away and come back to the same process).
        if tc.cluster.leader(LEADER_PROBE).await.ok() != Some(l) || tc.cluster.coordinator_proc(l).pid() != pid {
            eprintln!("torture-ha: {:?}: no pause: the leader changed while disarming", self.at());
            return false;
        }
        tc.cluster.pause_coordinator(l);
        self.paused = Some((l, Instant::now()));
        self.n.pauses += 1;
        eprintln!("torture-ha: {:?}: leader {l} paused", self.at());
        true
    }

    /// The run's one window without an etcd quorum: two of three members
    /// SIGKILLed for 3-5 s, then restarted. Every member runs before it
    /// (never more than one down otherwise) and is healthy after it.
    async fn quorum_window(&mut self, tc: &mut TestCluster) {
        if let Some((m, _)) = self.etcd_down.take() {
            tokio::task::block_in_place(|| etcd(tc).restart(m)).expect("etcd member restarts");
            self.n.restarts += 1;
        }
        tokio::task::block_in_place(|| etcd(tc).wait_healthy(SETTLE)).expect("etcd healthy before the quorum window");
        let a = self.rng.random_range(0..3);
        let b = (a + self.rng.random_range(1..3)) % 3;
        let hold = Duration::from_millis(self.rng.random_range(3000..5000));
        eprintln!("torture-ha: {:?}: quorum lost for {hold:?} (etcd members {a} and {b} down)", self.at());
        etcd(tc).kill(a);
        etcd(tc).kill(b);
        self.n.etcd_member_kills += 2;
        tokio::time::sleep(hold).await;
        tokio::task::block_in_place(|| {
            let etcd = etcd(tc);
            etcd.restart(a).expect("etcd member restarts");
            etcd.restart(b).expect("etcd member restarts");
            etcd.wait_healthy(SETTLE).expect("etcd healthy after the quorum window");
        });
        self.n.restarts += 2;
        self.n.quorum_windows += 1;
        eprintln!("torture-ha: {:?}: quorum back", self.at());
    }
}

/// What a process that should have exited is doing: its threads' states
/// and, when gdb is installed, their stacks (bounded in time).
fn stuck_report(pid: u32) -> String {
    let mut out = String::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let path = task.path();
            let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
            let wchan = std::fs::read_to_string(path.join("wchan")).unwrap_or_default();
            // "pid (comm) S ...": the state follows the command name.
            let state = stat.rsplit_once(") ").map(|(head, rest)| (head, rest.split(' ').next().unwrap_or("?")));
            out.push_str(&format!("thread {:?}: {state:?}, wchan {wchan}\n", task.file_name()));
        }
    }
    let gdb = std::process::Command::new("timeout")
        .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt 30"])
        .output();
    if let Ok(gdb) = gdb {
        out.push_str(&String::from_utf8_lossy(&gdb.stdout));
    }
    out
}

/// How many elections the coordinators' logs show (every restart appends).
fn elections(tc: &TestCluster) -> usize {
    (0..tc.cluster.coordinator_count())
        .map(|i| std::fs::read_to_string(tc.cluster.coordinator_log(i)).unwrap_or_default())
        .map(|log| log.lines().filter(|l| l.contains("elected leader")).count())
        .sum()
}

/// The bank torture on an HA cluster: 3 etcd members, 3 coordinators with a
/// 2 s lease, 3 participants. Besides participant kills and failpoints, the
/// chaos SIGKILLs the leader, pauses it past its lease (once resumed it must
/// exit 75 on its own), kills standbys and single etcd members, and once per
/// run takes etcd's quorum away for a few seconds. The invariants are the
/// single-coordinator torture's plus honest answers across leaders: every
/// definite answer a client got (commit replies, successful aborts, status
/// answers asked while the chaos ran) agrees with what the final leader
/// answers, which agrees with what the participants applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_ha() {
    let (seed, secs) = seed_and_duration("torture-ha");
    let opts = ClusterOptions {
        ha: Some(HaOptions { lease_ttl_secs: HA_LEASE_TTL_SECS, ..HaOptions::new("") }),
        ..cluster_options()
    };
    let mut tc = TestCluster::start_ha(opts).await;
    let partitions = tc.partitions();
    let opening: Vec<(String, String)> = (0..ACCOUNTS).map(|a| (account(a), INITIAL.to_string())).collect();
    let opening: Vec<(&str, &str)> = opening.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(tc.write_txn(&opening).await.1, Outcome::Committed);
    let db_start = etcd_db(&tc);
    eprintln!("torture-ha: etcd database at the start: {}", show_db(db_start));

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<BTreeMap<uuid::Uuid, Transfer>>> = Arc::default();
    // Finished tids in the order they finished, for the auditor.
    let finished: Arc<Mutex<Vec<uuid::Uuid>>> = Arc::default();
    let answers: Answers = Arc::default();
    let mut tasks = vec![];
    for w in 0..WORKERS {
        let (client, stop, log, finished, answers) =
            (tc.client.clone(), stop.clone(), log.clone(), finished.clone(), answers.clone());
        let mut rng = StdRng::seed_from_u64(seed ^ (w as u64 + 1));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match transfer(&client, &mut rng, partitions).await {
                    Some((tid, t, answer)) => {
                        if let Some((committed, how)) = answer {
                            let following = client.coordinator_address();
                            record(&answers, tid, Answer { committed, how, following, at: started.elapsed() });
                        }
                        log.lock().unwrap().insert(tid, t);
                        finished.lock().unwrap().push(tid);
                    }
                    // Begin failed: no leader, or etcd without quorum; wait.
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    // The auditor asks whoever leads about finished tids while the chaos
    // runs (mostly recent ones, whose fate a failover may still be
    // settling) and records every definite answer.
    {
        let (client, stop, finished, answers) = (tc.client.clone(), stop.clone(), finished.clone(), answers.clone());
        let mut rng = StdRng::seed_from_u64(seed ^ 0xa0d1_7000);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(rng.random_range(20..100))).await;
                let tid = {
                    let finished = finished.lock().unwrap();
                    let n = finished.len();
                    if n == 0 {
                        continue;
                    }
                    let back =
                        if rng.random_bool(0.7) { rng.random_range(0..n.min(20)) } else { rng.random_range(0..n) };
                    finished[n - 1 - back]
                };
                let committed = match client.status(tid).await {
                    Ok(Decision::Committed) => true,
                    Ok(Decision::Aborted { .. }) => false,
                    // FORGOTTEN says nothing either way (rule 6): not an answer.
                    Ok(Decision::Pending | Decision::Forgotten { .. }) | Err(_) => continue,
                };
                let following = client.coordinator_address();
                record(&answers, tid, Answer { committed, how: "status", following, at: started.elapsed() });
            }
        }));
    }

    // The chaos loop. The quorum window comes once, somewhere in the middle
    // (postponed while a pause plays out; the loop runs on until it came).
    let mut chaos = HaChaos {
        rng: StdRng::seed_from_u64(seed),
        started,
        paused: None,
        resumed: None,
        etcd_down: None,
        first_blows: vec![0, 1, 2, 3],
        n: HaCounts::default(),
    };
    chaos.first_blows.shuffle(&mut chaos.rng);
    let end = started + Duration::from_secs(secs);
    let window_at = started + Duration::from_secs(secs).mul_f64(chaos.rng.random_range(0.3..0.6));
    let mut next_sample = started + Duration::from_secs(60);
    let mut db_max = db_start.map_or(0, |d| d.total);
    while Instant::now() < end || chaos.n.quorum_windows == 0 {
        tokio::time::sleep(Duration::from_millis(chaos.rng.random_range(200..1200))).await;
        chaos.tend(&mut tc).await;
        if chaos.n.quorum_windows == 0
            && Instant::now() >= window_at
            && chaos.paused.is_none()
            && chaos.resumed.is_none()
        {
            chaos.quorum_window(&mut tc).await;
        } else {
            chaos.strike(&mut tc).await;
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(60);
            let size = etcd_db(&tc);
            db_max = db_max.max(size.map_or(0, |d| d.total));
            eprintln!(
                "torture-ha: {:?}: {} transactions so far; etcd database {}",
                chaos.at(),
                log.lock().unwrap().len(),
                show_db(size)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    // A pause still playing out runs its course: resumed once another
    // leads, the old leader must exit 75.
    let deadline = Instant::now() + NEW_LEADER_WITHIN + DEPOSED_EXIT_WITHIN;
    while chaos.paused.is_some() || chaos.resumed.is_some() {
        assert!(Instant::now() < deadline, "the last pause did not play out");
        chaos.tend(&mut tc).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Bring everything back without armed failpoints: a fresh start of
    // every process clears them.
    if let Some((m, _)) = chaos.etcd_down.take() {
        tokio::task::block_in_place(|| etcd(&mut tc).restart(m)).expect("etcd member restarts");
    }
    tokio::task::block_in_place(|| {
        etcd(&mut tc).wait_healthy(SETTLE).expect("etcd healthy at the end");
        for i in 0..tc.cluster.coordinator_count() {
            tc.cluster.restart_coordinator_i(i, &[]).unwrap();
        }
        for p in 0..partitions {
            tc.cluster.restart_participant(p, &[]).unwrap();
        }
    });
    tc.reconnect().await;
    let leader = tc.cluster.leader(SETTLE).await.expect("a leader at the end");
    tc.wait_settled().await;
    let db_end = etcd_db(&tc);
    db_max = db_max.max(db_end.map_or(0, |d| d.total));

    // The final leader alone answers the last questions.
    let final_leader = connect_until(&tc.cluster.coordinator_addrs()[leader], tc.cluster.connect_options()).await;
    let log = log.lock().unwrap().clone();
    let answers = answers.lock().unwrap().clone();
    let mut total = 0i64;
    for a in 0..ACCOUNTS {
        total += parse(tc.client.read(account(a).as_bytes()).await.unwrap());
    }
    let checks = futures::stream::iter(log.iter().map(|(tid, t)| {
        let (tc, final_leader) = (&tc, &final_leader);
        async move {
            let from = tc.read(&t.markers[0]).await.is_some();
            let to = tc.read(&t.markers[1]).await.is_some();
            let deadline = Instant::now() + SETTLE;
            let decision = loop {
                match final_leader.status(*tid).await {
                    Ok(d) => break d,
                    Err(e) => assert!(Instant::now() < deadline, "the final leader does not answer about {tid}: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            (*tid, t.seen, from, to, decision)
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    let (mut committed, mut aborted, mut unknown, mut applied, mut answered) = (0, 0, 0, 0, 0);
    for (tid, seen, from, to, decision) in checks {
        assert_eq!(from, to, "transfer {tid} ({seen:?}) applied on one side only");
        let final_committed = match decision {
            Decision::Committed => true,
            Decision::Aborted { .. } => false,
            Decision::Pending => panic!("transfer {tid}: the final leader says PENDING after the cluster settled"),
            // Older than the oldest decision kept: nothing to compare, and
            // nothing contradicted (rule 6); atomicity was checked above.
            Decision::Forgotten { .. } => from,
        };
        assert_eq!(
            final_committed, from,
            "transfer {tid} ({seen:?}): the final leader says {decision:?}, applied {from}"
        );
        match seen {
            Seen::Committed => {
                committed += 1;
                assert!(from, "transfer {tid} was acknowledged COMMITTED but is not applied");
            }
            Seen::Aborted => {
                aborted += 1;
                assert!(!from, "transfer {tid} was reported ABORTED but is applied");
            }
            Seen::Unknown => unknown += 1,
        }
        for a in answers.get(&tid).into_iter().flatten() {
            answered += 1;
            assert_eq!(
                a.committed,
                final_committed,
                "transfer {tid}: {} answered {} at {:?} (client following {}), the final leader answers {decision:?}",
                a.how,
                if a.committed { "COMMITTED" } else { "ABORTED" },
                a.at,
                a.following
            );
        }
        applied += from as usize;
    }
    assert_eq!(tc.cluster.leader(SETTLE).await.ok(), Some(leader), "the leader changed during the final questions");
    let leader_changes = elections(&tc).saturating_sub(1);
    let n = &chaos.n;
    eprintln!(
        "torture-ha: seed {seed}: {} transactions: {committed} committed, {aborted} aborted, {unknown} unknown \
         ({applied} applied in all); {answered} definite answers checked against the final leader; \
         kills: {} leader, {} standby, {} participant, {} etcd member; {} pauses ({} resumed leaders exited 75), \
         {} other deposed exits, {} failpoint deaths, {} other exits; {} failpoints armed, {} restarts; \
         {} quorum windows; {leader_changes} leader changes",
        log.len(),
        n.leader_kills,
        n.standby_kills,
        n.participant_kills,
        n.etcd_member_kills,
        n.pauses,
        n.deposed_after_pause,
        n.deposed_exits,
        n.failpoint_deaths,
        n.other_exits,
        n.failpoints,
        n.restarts,
        n.quorum_windows,
    );
    // Why outcomes were unknown to the client (all resolved above).
    let mut unknown_why: BTreeMap<&str, (u32, &str)> = BTreeMap::new();
    for (kind, text) in log.values().filter_map(|t| t.why.as_ref()) {
        unknown_why.entry(kind.as_str()).or_insert((0, text.as_str())).0 += 1;
    }
    for (kind, (count, example)) in &unknown_why {
        let example: String = example.chars().take(240).collect();
        eprintln!("torture-ha: unknown outcomes: {count} x {kind}, e.g. {example}");
    }
    eprintln!(
        "torture-ha: etcd database: {} at the start, {} at the end, largest seen {db_max} bytes",
        show_db(db_start),
        show_db(db_end)
    );
    assert_eq!(total, INITIAL * ACCOUNTS as i64, "money was created or destroyed (seed {seed})");
    assert!(committed > 0, "no transfer committed at all: the workload did not run");
    assert_eq!(n.quorum_windows, 1, "the run had its quorum window");
}
