//! PROTOCOL.md's crash matrix for the replicated decision log (rules
//! 14-16, rows C11 to C15), on real processes: a 3-member etcd, three
//! coordinators sharing their decision log in it (one leads, two stand
//! by), three participants and a client given every coordinator's address
//! ([`TestCluster::start_ha`]). The leader is found by its gRPC health,
//! never assumed; failpoints armed on "the coordinator" go, through the
//! client, to whoever leads. The lease TTL is the coordinators' default,
//! 3 s.
//!
//! Each test checks what the crash matrix checks: atomicity (every key of
//! a tid or none), durability of what a client heard COMMITTED, honest
//! answers (every tid a client saw is asked again of whoever leads at the
//! end, and the answer must agree with what the client heard: no tid is
//! COMMITTED for one leader and ABORTED for another), and liveness (no
//! prepared tid, open tid or lock at any participant, no unfinished
//! transaction at the leader). `failover_time_is_bounded` prints its
//! measured figures (`cargo test --test ha -- --nocapture` shows them).
//!
//! Every wait polls a condition against a deadline; processes die with the
//! harness, also when a test fails.

mod common;

use std::collections::HashSet;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use twopc::cluster::{ClusterOptions, CoordinatorHealth};
use twopc_client::{Client, ClientError, ConnectOptions, Decision, FailpointTarget, Outcome, Txn, partition_for};
use twopc_coordinator::leadership::EXIT_DEPOSED;
use twopc_proto::pb;
use uuid::Uuid;

/// The coordinators' lease TTL (their default).
const TTL: Duration = Duration::from_secs(3);
/// A generous bound on a failover (the coordinator documents at most
/// 2 × TTL + 1 s): room for a loaded test machine, tight enough to catch a
/// takeover that waits for something it should not.
const FAILOVER: Duration = Duration::from_secs(2 * 3 + 10);

async fn start() -> TestCluster {
    TestCluster::start_ha(ClusterOptions::default()).await
}

/// The index of the coordinator that leads now.
async fn leader(tc: &TestCluster) -> usize {
    tc.cluster.leader(SETTLE).await.expect("one leading coordinator")
}

/// Waits until a coordinator other than `old` (dead or paused) leads; its index.
async fn takeover(tc: &TestCluster, old: usize) -> usize {
    let new = tc.cluster.leader(FAILOVER).await.expect("a standby takes over");
    assert_ne!(new, old, "coordinator {old} was dead or paused, yet reported as leading");
    new
}

/// Polls until coordinator `i` exits by itself (killed by a failpoint, or
/// stepping down) and returns how it exited; `None` if it still runs after
/// `limit`. Polls on the runtime (no blocking sleep), so tasks running
/// meanwhile keep both worker threads.
async fn wait_exit(tc: &mut TestCluster, i: usize, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        let proc = tc.cluster.coordinator_proc(i);
        if !proc.is_running() {
            proc.kill(); // reaps it, keeping its own exit status
            return proc.exit_status();
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A key named after `name` on partition `p` of `partitions`.
fn key_on(partitions: u32, p: u32, name: &str) -> String {
    (0..).map(|i| format!("{name}-{i}")).find(|k| partition_for(k.as_bytes(), partitions) == p).unwrap()
}

/// Starts a tid that wrote "v" on partitions 0, 1 and 2.
async fn three_writes(tc: &TestCluster, name: &str) -> (Txn, Vec<String>) {
    let keys: Vec<String> = (0..3).map(|p| tc.key_on(p, name)).collect();
    let txn = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    for k in &keys {
        txn.put(k.as_bytes(), b"v").await.unwrap();
    }
    (txn, keys)
}

/// Starts a tid that wrote "v" on one key of partition 1 only (the one-phase path).
async fn one_write(tc: &TestCluster, name: &str, timeout: Duration) -> (Txn, String) {
    let key = tc.key_on(1, name);
    let txn = tc.client.begin(Some(timeout)).await.unwrap();
    txn.put(key.as_bytes(), b"v").await.unwrap();
    (txn, key)
}

fn refs(keys: &[String]) -> Vec<&str> {
    keys.iter().map(String::as_str).collect()
}

/// What a client heard about a commit cut off by a failover: the
/// outcome (learned from whoever leads next), or UNAVAILABLE saying the
/// outcome is unknown. Anything else is a wrong kind of answer.
fn cut_off_commit(heard: &Result<Outcome, ClientError>) {
    if let Err(e) = heard {
        assert_eq!(e.code(), tonic::Code::Unavailable, "a commit cut off by a failover: {e}");
    }
}

/// Whoever leads answers COMMITTED or ABORTED for `tid` (polled past PENDING).
async fn final_decision(tc: &TestCluster, tid: Uuid) -> Decision {
    tc.wait_decision(tid, |d| *d != Decision::Pending).await
}

/// The tids prepared and undecided at any participant, asked of each directly.
async fn in_doubt(tc: &TestCluster) -> Result<HashSet<String>, String> {
    let options = tc.cluster.connect_options();
    let mut tids = HashSet::new();
    for (p, proc) in tc.cluster.participants.iter().enumerate() {
        let endpoint = options.tls.endpoint(&proc.addr.to_string()).map_err(|e| e.to_string())?;
        let channel = endpoint.connect().await.map_err(|e| format!("partition {p}: {e}"))?;
        let mut c = pb::participant_client::ParticipantClient::new(channel);
        let r = c
            .list_in_doubt(options.admin_token.request(pb::ListInDoubtRequest {}))
            .await
            .map_err(|e| format!("partition {p}: {e}"))?;
        tids.extend(r.into_inner().tids.into_iter().map(|t| t.tid));
    }
    Ok(tids)
}

/// An etcd client on the test's etcd (to look at the coordinators' keys).
fn etcd_client(tc: &TestCluster) -> twopc_etcd::Etcd {
    let endpoints: Vec<String> = tc.etcd.as_ref().unwrap().endpoints().split(',').map(str::to_string).collect();
    twopc_etcd::Etcd::new(&endpoints, Duration::from_secs(2)).unwrap()
}

/// The index of the etcd member that is etcd's own (Raft) leader now.
async fn etcd_leader(tc: &TestCluster) -> usize {
    let etcd = etcd_client(tc);
    let n = tc.etcd.as_ref().unwrap().len();
    let deadline = Instant::now() + SETTLE;
    loop {
        for i in 0..n {
            if let Ok(s) = etcd.status_of(i).await
                && s.leader != 0
                && s.header.as_ref().is_some_and(|h| h.member_id == s.leader)
            {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no etcd member reports being etcd's leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every coordinator's process id (None: not running).
fn coordinator_pids(tc: &mut TestCluster) -> Vec<Option<u32>> {
    (0..tc.cluster.coordinator_count()).map(|i| tc.cluster.coordinator_proc(i).pid()).collect()
}

/// One transaction attempted by a workload or while etcd is down, and what
/// its client heard.
#[derive(Debug)]
struct Attempt {
    tid: Option<Uuid>,
    keys: Vec<String>,
    heard: Heard,
    began: Instant,
    done: Instant,
}

#[derive(Debug)]
enum Heard {
    /// Begin failed: there is no tid.
    BeginFailed(ClientError),
    /// An operation failed, so Commit was never sent: the tid must abort.
    WriteFailed(ClientError),
    /// The commit call's answer.
    Commit(Result<Outcome, ClientError>),
}

/// Begins, writes "v" to every key, commits; records what was heard.
async fn attempt(client: &Client, keys: Vec<String>) -> Attempt {
    let began = Instant::now();
    let txn = match client.begin(Some(Duration::from_secs(20))).await {
        Ok(t) => t,
        Err(e) => return Attempt { tid: None, keys, heard: Heard::BeginFailed(e), began, done: Instant::now() },
    };
    for k in &keys {
        if let Err(e) = txn.put(k.as_bytes(), b"v").await {
            let _ = txn.abort().await;
            let heard = Heard::WriteFailed(e);
            return Attempt { tid: Some(txn.tid()), keys, heard, began, done: Instant::now() };
        }
    }
    let heard = Heard::Commit(txn.commit().await);
    Attempt { tid: Some(txn.tid()), keys, heard, began, done: Instant::now() }
}

/// Honest answers, durability and atomicity for every attempt, once the
/// cluster has settled (phase 2 done everywhere): whoever
/// leads now answers each tid as its client heard it (a tid whose commit
/// was never sent aborted; an unknown outcome may be either), and its keys
/// are all written if it committed, none if it aborted. Returns (committed,
/// aborted) counts.
async fn check_attempts(tc: &TestCluster, attempts: &[Attempt]) -> (usize, usize) {
    let (mut committed, mut aborted) = (0, 0);
    for a in attempts {
        let Some(tid) = a.tid else { continue };
        let decision = final_decision(tc, tid).await;
        match &a.heard {
            Heard::Commit(Ok(Outcome::Committed)) => {
                assert_eq!(decision, Decision::Committed, "tid {tid}: the client heard COMMITTED")
            }
            Heard::Commit(Ok(Outcome::Aborted { reason, .. })) => {
                assert!(matches!(decision, Decision::Aborted { .. }), "tid {tid}: the client heard ABORTED ({reason})")
            }
            Heard::WriteFailed(e) => {
                assert!(matches!(decision, Decision::Aborted { .. }), "tid {tid} never sent Commit ({e}): {decision:?}")
            }
            Heard::Commit(Ok(o @ Outcome::Forgotten { .. })) => panic!("tid {tid}, just begun: {o:?}"),
            Heard::Commit(Err(_)) | Heard::BeginFailed(_) => {}
        }
        let applied = all_or_nothing(tc, &refs(&a.keys), "v").await;
        assert_eq!(applied, decision == Decision::Committed, "tid {tid}: {decision:?}, keys applied: {applied}");
        if applied {
            committed += 1;
        } else {
            aborted += 1;
        }
    }
    (committed, aborted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c11_leader_killed_before_the_commit_record_is_replicated() {
    let mut tc = start().await;
    let old = leader(&tc).await;
    let (txn, keys) = three_writes(&tc, "c11").await;
    arm(&tc, FailpointTarget::Coordinator, "coordinator::before_decision_forced", KILL).await;
    // Cut off, the client asks whoever leads next (within its 15 s budget):
    // no record, so ABORTED.
    let heard = txn.commit().await;
    assert!(matches!(heard, Ok(Outcome::Aborted { .. })), "no record was replicated: {heard:?}");
    assert!(wait_exit(&mut tc, old, EXIT).await.is_some(), "the failpoint should have killed the leader");
    takeover(&tc, old).await;
    // The new leader has no record: presumed abort, for good.
    assert!(matches!(tc.client.status(txn.tid()).await.unwrap(), Decision::Aborted { .. }));
    tc.wait_settled().await;
    assert!(!all_or_nothing(&tc, &refs(&keys), "v").await);
    assert!(matches!(tc.client.status(txn.tid()).await.unwrap(), Decision::Aborted { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c12_leader_killed_after_the_commit_record_is_replicated() {
    let mut tc = start().await;
    let old = leader(&tc).await;
    let (txn, keys) = three_writes(&tc, "c12").await;
    arm(&tc, FailpointTarget::Coordinator, "coordinator::after_decision_forced", KILL).await;
    // Cut off, the client asks whoever leads next: the record says COMMITTED.
    let heard = txn.commit().await;
    assert_eq!(heard.unwrap(), Outcome::Committed, "the COMMIT record was replicated");
    assert!(wait_exit(&mut tc, old, EXIT).await.is_some(), "the failpoint should have killed the leader");
    let new = takeover(&tc, old).await;
    // The new leader read the record and re-drove phase 2.
    tc.wait_decision(txn.tid(), |d| *d == Decision::Committed).await;
    tc.wait_settled().await;
    assert!(all_or_nothing(&tc, &refs(&keys), "v").await);
    // Restarted, the old leader rejoins as a standby; the answer stands.
    tokio::task::block_in_place(|| tc.cluster.restart_coordinator_i(old, &[])).unwrap();
    let deadline = Instant::now() + SETTLE;
    while tc.cluster.coordinator_health(old).await != CoordinatorHealth::NotServing("NOT_SERVING".into()) {
        assert!(Instant::now() < deadline, "the restarted coordinator {old} never stood by");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(leader(&tc).await, new);
    assert_eq!(tc.client.status(txn.tid()).await.unwrap(), Decision::Committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c11_one_phase_leader_killed_before_the_delegation_is_replicated() {
    let mut tc = start().await;
    let old = leader(&tc).await;
    // A short deadline: partition 1 holds an active (unprepared) tid that
    // nobody will commit, and releases it at the deadline.
    let (txn, key) = one_write(&tc, "c11o", Duration::from_secs(5)).await;
    arm(&tc, FailpointTarget::Coordinator, "coordinator::before_delegation_forced", KILL).await;
    // Cut off, the client asks whoever leads next (within its 15 s budget):
    // no record, so ABORTED.
    let heard = txn.commit().await;
    assert!(matches!(heard, Ok(Outcome::Aborted { .. })), "no record was replicated: {heard:?}");
    assert!(wait_exit(&mut tc, old, EXIT).await.is_some(), "the failpoint should have killed the leader");
    takeover(&tc, old).await;
    assert!(matches!(tc.client.status(txn.tid()).await.unwrap(), Decision::Aborted { .. }));
    tc.wait_settled().await;
    assert_eq!(tc.read(&key).await, None);
    assert!(matches!(tc.client.status(txn.tid()).await.unwrap(), Decision::Aborted { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c12_one_phase_leader_killed_after_the_delegation_is_replicated() {
    let mut tc = start().await;
    let old = leader(&tc).await;
    let (txn, key) = one_write(&tc, "c12o", Duration::from_secs(60)).await;
    arm(&tc, FailpointTarget::Coordinator, "coordinator::after_delegation_forced", KILL).await;
    // Cut off, the client asks whoever leads next, which asks partition 1.
    let heard = txn.commit().await;
    assert_eq!(heard.unwrap(), Outcome::Committed, "the DELEGATED record was replicated");
    assert!(wait_exit(&mut tc, old, EXIT).await.is_some(), "the failpoint should have killed the leader");
    takeover(&tc, old).await;
    // The new leader found the DELEGATED record and asked partition 1 again.
    tc.wait_decision(txn.tid(), |d| *d == Decision::Committed).await;
    tc.wait_settled().await;
    assert_eq!(tc.read(&key).await.as_deref(), Some("v"));
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c13_paused_leader_is_fenced_and_steps_down() {
    // A prepare timeout longer than partition 1's stall below, so that A
    // is still in prepare when the test looks, however slow the machine.
    let opts =
        ClusterOptions { coordinator_args: vec!["--prepare-timeout-ms".into(), "10000".into()], ..Default::default() };
    let mut tc = TestCluster::start_ha(opts).await;
    let old = leader(&tc).await;
    // A is written first: partition 2 will be busy soon.
    let (a, a_keys) = three_writes(&tc, "c13a").await;
    let a_tid = a.tid();
    // B reaches phase 2 and stays there: partition 2 takes 6 s to apply
    // its first commit. The leader answers COMMITTED once the record is
    // replicated, before phase 2 ends.
    arm(&tc, FailpointTarget::Partition(2), "participant::before_commit_applied", "1*sleep(6000)").await;
    let (b, b_keys) = three_writes(&tc, "c13b").await;
    assert_eq!(b.commit().await.unwrap(), Outcome::Committed);
    // A stays in prepare: partition 1 takes 6 s to make its first prepared
    // state durable (armed after B prepared, so A is the one that waits).
    arm(&tc, FailpointTarget::Partition(1), "participant::before_prepare_durable", "1*sleep(6000)").await;
    let a_commit = tokio::spawn(async move { a.commit().await });
    // Seen at the leader in one listing: A preparing, B in phase 2. Then it is frozen.
    let deadline = Instant::now() + SETTLE;
    loop {
        let listed = tc.client.transactions().await.unwrap();
        let state = |tid: Uuid| listed.iter().find(|t| t.tid == tid.to_string()).map(|t| t.state.clone());
        if state(a_tid).as_deref() == Some("preparing") && state(b.tid()).as_deref() == Some("committing") {
            break;
        }
        assert!(Instant::now() < deadline, "A not preparing and B not committing at the leader: {listed:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tc.cluster.pause_coordinator(old);
    let paused_at = Instant::now();

    // A standby takes over once the paused leader's lease expires, and serves.
    let new = takeover(&tc, old).await;
    let took_over = paused_at.elapsed();
    // The client and the participants still call the frozen leader first:
    // each attempt there is cut short and they move on to the new leader.
    let (c_tid, c_heard) = tc.write_txn(&[(&tc.key_on(0, "c13c"), "v"), (&tc.key_on(2, "c13c"), "v")]).await;
    assert_eq!(c_heard, Outcome::Committed, "the new leader serves");
    eprintln!(
        "c13: coordinator {new} leads {:.2} s after the pause; a new commit through it done {:.2} s after the pause",
        took_over.as_secs_f64(),
        paused_at.elapsed().as_secs_f64()
    );
    // The new leader's decisions: B's record stands, A had none.
    assert_eq!(final_decision(&tc, b.tid()).await, Decision::Committed);
    assert!(matches!(final_decision(&tc, a_tid).await, Decision::Aborted { .. }));

    // Resumed, the old leader finds its lease gone (or its write refused)
    // and exits with EXIT_DEPOSED, in bounded time.
    tc.cluster.resume_coordinator(old);
    let resumed_at = Instant::now();
    let exit = wait_exit(&mut tc, old, FAILOVER).await;
    let exit = exit.unwrap_or_else(|| panic!("the resumed old leader still runs after {FAILOVER:?}"));
    assert_eq!(exit.code(), Some(EXIT_DEPOSED), "the deposed leader's exit: {exit:?}");
    eprintln!("c13: the resumed old leader exited ({exit}) {:.2} s after SIGCONT", resumed_at.elapsed().as_secs_f64());

    // What A's client heard (from the old leader, or from the new one after
    // the old one was gone) is not COMMITTED.
    let a_heard = a_commit.await.unwrap();
    cut_off_commit(&a_heard);
    assert!(!matches!(a_heard, Ok(Outcome::Committed)), "A was presumed aborted by the new leader: {a_heard:?}");
    // One outcome per tid, the new leader's, everywhere.
    assert!(matches!(final_decision(&tc, a_tid).await, Decision::Aborted { .. }));
    assert_eq!(final_decision(&tc, b.tid()).await, Decision::Committed);
    assert_eq!(final_decision(&tc, c_tid).await, Decision::Committed);
    tc.wait_settled().await;
    assert!(!all_or_nothing(&tc, &refs(&a_keys), "v").await);
    assert!(all_or_nothing(&tc, &refs(&b_keys), "v").await);
    assert_eq!(tc.read(&tc.key_on(0, "c13c")).await.as_deref(), Some("v"));

    // The old leader wrote nothing for A: no COMMIT record in etcd, none
    // forced according to its own log.
    let record = etcd_client(&tc).range(format!("/twopc/default/log/{a_tid}").as_bytes(), &[], 1).await.unwrap();
    assert!(
        record.kvs.iter().all(|kv| !kv.value.starts_with(b"C")),
        "a COMMIT record for A: {:?}",
        record.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.value).to_string()).collect::<Vec<_>>()
    );
    let log = std::fs::read_to_string(tc.cluster.coordinator_log(old)).unwrap();
    let a_str = a_tid.to_string();
    assert!(
        !log.lines().any(|l| l.contains(&a_str) && l.contains("COMMIT forced")),
        "the old leader forced a COMMIT for A"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c14_one_etcd_member_killed_commits_continue() {
    let mut tc = start().await;
    let pids = coordinator_pids(&mut tc);
    let first_leader = leader(&tc).await;
    // First etcd's own leader (forcing an etcd election), then another
    // member (the first endpoint, if it is not the same one).
    let etcd_leader = etcd_leader(&tc).await;
    let victims = [etcd_leader, if etcd_leader == 0 { 1 } else { 0 }];
    let mut attempts = vec![];
    for (round, victim) in victims.into_iter().enumerate() {
        tc.etcd.as_mut().unwrap().kill(victim);
        let killed_at = Instant::now();
        for n in 0..5 {
            let keys: Vec<String> = (0..3).map(|p| tc.key_on(p, &format!("c14-{round}-{n}"))).collect();
            let a = attempt(&tc.client, keys).await;
            assert!(matches!(a.heard, Heard::Commit(Ok(Outcome::Committed))), "etcd member {victim} down: {a:?}");
            attempts.push(a);
        }
        eprintln!(
            "c14: 5 commits with etcd member {victim} down{} in {:.2} s",
            if victim == etcd_leader { " (it was etcd's leader)" } else { "" },
            killed_at.elapsed().as_secs_f64()
        );
        let etcd = tc.etcd.as_mut().unwrap();
        etcd.restart(victim).unwrap();
        tokio::task::block_in_place(|| etcd.wait_healthy(SETTLE)).unwrap();
    }
    tc.wait_settled().await;
    let (committed, _) = check_attempts(&tc, &attempts).await;
    assert_eq!(committed, attempts.len());
    // No coordinator lost its leadership or its process over it.
    assert_eq!(coordinator_pids(&mut tc), pids);
    assert_eq!(leader(&tc).await, first_leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c15_etcd_quorum_lost_then_back() {
    let mut tc = start().await;
    let pids = coordinator_pids(&mut tc);
    let first_leader = leader(&tc).await;
    // A client that gives up on a call after 4 s (the default is 15 s).
    let budget = Duration::from_secs(4);
    let options = ConnectOptions { call_budget: budget, ..tc.cluster.connect_options().clone() };
    let short = connect_until(&tc.cluster.coordinator_addr(), &options).await;
    let partitions = tc.partitions();
    let keys = |n: usize| -> Vec<String> { (0..3).map(|p| key_on(partitions, p, &format!("c15-{n}"))).collect() };
    let mut attempts = vec![attempt(&short, keys(0)).await];
    assert!(matches!(attempts[0].heard, Heard::Commit(Ok(Outcome::Committed))), "{:?}", attempts[0]);

    // Two of three members gone: no quorum, no write can be replicated.
    let etcd = tc.etcd.as_mut().unwrap();
    etcd.kill(1);
    etcd.kill(2);
    let lost_at = Instant::now();
    // Attempts for longer than the lease (so the leader can no longer be
    // certain of it), each bounded by the client's budget.
    let mut unavailable_commits = 0;
    while lost_at.elapsed() < 3 * TTL || unavailable_commits == 0 {
        assert!(lost_at.elapsed() < SETTLE, "no commit failed with UNAVAILABLE without quorum: {attempts:#?}");
        let a = attempt(&short, keys(attempts.len())).await;
        let took = a.done - a.began;
        match &a.heard {
            Heard::Commit(Ok(Outcome::Committed)) => panic!("COMMITTED without an etcd quorum: {a:?}"),
            Heard::Commit(Ok(Outcome::Aborted { .. })) => {}
            Heard::Commit(Ok(o @ Outcome::Forgotten { .. })) => panic!("a tid just begun: {o:?}"),
            Heard::Commit(Err(e)) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
                unavailable_commits += 1;
            }
            Heard::BeginFailed(e) | Heard::WriteFailed(e) => {
                assert!(matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Aborted), "{e}")
            }
        }
        // Begin, the writes (each enlisting) and the commit, each within a budget.
        assert!(took < 3 * budget + Duration::from_secs(5), "one attempt took {took:?}: {a:?}");
        eprintln!("c15: without quorum, attempt {} took {:.2} s: {:?}", attempts.len(), took.as_secs_f64(), a.heard);
        attempts.push(a);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The leader that cannot confirm its lease reports NOT_SERVING, so a
    // load balancer does not send traffic to a coordinator refusing it.
    let health = tc.cluster.coordinator_health(first_leader).await;
    assert!(matches!(health, twopc::cluster::CoordinatorHealth::NotServing(_)), "uncertain leader reports {health:?}");

    // Quorum back: service resumes by itself, same coordinator processes.
    let etcd = tc.etcd.as_mut().unwrap();
    etcd.restart(1).unwrap();
    etcd.restart(2).unwrap();
    let back_at = Instant::now();
    tokio::task::block_in_place(|| etcd.wait_healthy(SETTLE)).unwrap();
    loop {
        let a = attempt(&tc.client, keys(attempts.len())).await;
        let committed = matches!(a.heard, Heard::Commit(Ok(Outcome::Committed)));
        assert!(committed || back_at.elapsed() < SETTLE, "no commit {SETTLE:?} after the quorum came back: {a:?}");
        attempts.push(a);
        if committed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("c15: first commit {:.2} s after the quorum came back", back_at.elapsed().as_secs_f64());
    assert_eq!(coordinator_pids(&mut tc), pids, "a coordinator exited or was restarted");
    assert_eq!(leader(&tc).await, first_leader);
    tc.wait_settled().await;
    // Every tid tried meanwhile ended as its client heard it, applied or not accordingly.
    let (committed, aborted) = check_attempts(&tc, &attempts).await;
    eprintln!("c15: {} attempts, {committed} committed, {aborted} aborted", attempts.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_time_is_bounded() {
    let mut tc = start().await;
    let old = leader(&tc).await;
    let partitions = tc.partitions();
    // The workload: 4 clients, each committing transactions over two partitions, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let committed = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..4u32 {
        let (client, stop, records, committed) = (tc.client.clone(), stop.clone(), records.clone(), committed.clone());
        workers.spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("f{w}-{n}");
                let keys = vec![key_on(partitions, n % 3, &name), key_on(partitions, (n + 1) % 3, &name)];
                let a = attempt(&client, keys).await;
                if matches!(a.heard, Heard::Commit(Ok(Outcome::Committed))) {
                    committed.fetch_add(1, Ordering::Relaxed);
                }
                records.lock().unwrap().push(a);
                n += 1;
            }
        });
    }
    let deadline = Instant::now() + SETTLE;
    while committed.load(Ordering::Relaxed) < 20 {
        assert!(Instant::now() < deadline, "the workload does not commit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The next COMMIT record replicated kills the leader before phase 2:
    // that tid's participants are in doubt at the kill.
    arm(&tc, FailpointTarget::Coordinator, "coordinator::after_decision_forced", KILL).await;
    assert!(wait_exit(&mut tc, old, EXIT).await.is_some(), "the failpoint should have killed the leader");
    let killed_at = Instant::now();
    let doubtful = in_doubt(&tc).await.unwrap();
    assert!(!doubtful.is_empty(), "the tid whose record was replicated should be in doubt");

    let (mut serving, mut first_commit, mut resolved) = (None, None, None);
    while serving.is_none() || first_commit.is_none() || resolved.is_none() {
        assert!(
            killed_at.elapsed() < FAILOVER,
            "failover not done within {FAILOVER:?}: serving {serving:?}, first commit {first_commit:?}, \
             in doubt resolved {resolved:?}"
        );
        if serving.is_none() {
            for i in (0..tc.cluster.coordinator_count()).filter(|&i| i != old) {
                if tc.cluster.coordinator_health(i).await == CoordinatorHealth::Serving {
                    serving = Some((i, killed_at.elapsed()));
                }
            }
        }
        if first_commit.is_none() {
            // Only a transaction begun after the kill proves the new leader served it.
            first_commit = records
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.began > killed_at && matches!(a.heard, Heard::Commit(Ok(Outcome::Committed))))
                .map(|a| a.done - killed_at)
                .min();
        }
        if resolved.is_none() && in_doubt(&tc).await.is_ok_and(|now| now.is_disjoint(&doubtful)) {
            resolved = Some(killed_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    let (new, serving) = serving.unwrap();
    let (first_commit, resolved) = (first_commit.unwrap(), resolved.unwrap());
    eprintln!(
        "failover (lease TTL {} s): coordinator {old} SIGKILLed (failpoint after a COMMIT record), \
         coordinator {new} reported SERVING after {:.2} s, served its first commit {:.2} s after the kill; \
         the {} tids in doubt at the kill were resolved after {:.2} s",
        TTL.as_secs(),
        serving.as_secs_f64(),
        first_commit.as_secs_f64(),
        doubtful.len(),
        resolved.as_secs_f64()
    );
    assert_eq!(leader(&tc).await, new);
    let attempts = std::mem::take(&mut *records.lock().unwrap());
    tc.wait_settled().await;
    let (c, a) = check_attempts(&tc, &attempts).await;
    eprintln!("failover workload: {} transactions, {c} committed, {a} aborted", attempts.len());
}

/// A coordinator configured for another partition count than the cluster's
/// log in etcd is refused at start, before it can win an election it could
/// not use (which would leave the cluster leaderless for a lease TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_of_another_partition_count_is_refused_at_start() {
    let tc = start().await;
    let endpoints = tc.etcd.as_ref().unwrap().endpoints();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_twopc"))
            .args(["coordinator", "--decision-log", "etcd", "--etcd-endpoints", &endpoints])
            .args(["--partitions", "5", "--listen", "127.0.0.1:0"])
            .env_remove("TWOPC_COORDINATOR")
            .output()
    });
    let out = tokio::time::timeout(SETTLE, out).await.expect("refused in time").unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("created with 3 partitions, not 5"), "{stderr}");
    // The cluster still has its leader and commits.
    let (_, outcome) = tc.write_txn(&[(&tc.key_on(0, "shape"), "1"), (&tc.key_on(1, "shape"), "1")]).await;
    assert_eq!(outcome, Outcome::Committed);
}
