//! `twopc demo --ha`: the bank workload across a leader failover.
//!
//! A three-member etcd and three coordinators sharing their decision log in
//! it start under the demo's directory; the participants and the client are
//! given all three coordinator addresses and follow whoever leads. Once half
//! the transfers have finished, the leader (found by its gRPC health, never
//! assumed) is SIGKILLed. What the demo measures, and how:
//! - **who took over**: the coordinator whose health turns SERVING next;
//! - **takeover time**: from the kill to the first commit *served by the new
//!   leader*, i.e. the first committed transfer whose `begin` was sent after
//!   the kill (the old leader was dead by then, so nobody else served it);
//! - **stall**: the longest gap between two consecutive commits of the run;
//! - **outcomes**: committed, aborted (lock conflicts, or transactions the
//!   failover cut), and *unknown*: the commit call itself failed, so the
//!   client cannot tell. Those are asked again (`GetDecision`) once a leader
//!   serves, which must answer from the replicated log (rule 14).
//!
//! An attempt cut off before its commit call (no coordinator reachable for
//! `begin` or an enlist) has committed nothing, so it is retried as a fresh
//! transaction; a worker that gets no outcome at all for [`STALL_LIMIT`]
//! gives up with its last error. The sum of all balances must be unchanged:
//! otherwise the demo exits non-zero.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::Rng;
use twopc_client::{Client, ClientError, Decision, Outcome};

use super::{DemoArgs, account, balance, check_conserved, open_accounts};
use crate::cluster::{ClusterOptions, HaOptions, LocalCluster};
use crate::etcd_cluster::EtcdCluster;

const ETCD_MEMBERS: usize = 3;
const COORDINATORS: usize = 3;
/// How long a worker may go without any transfer outcome before it gives up.
const STALL_LIMIT: Duration = Duration::from_secs(60);
/// How long the cluster may take to start, elect, register, and re-elect.
const SETTLE: Duration = Duration::from_secs(60);

/// How one transfer attempt ended.
enum Attempt {
    Committed,
    /// Aborted: nothing moved.
    Aborted,
    /// The commit call failed: the outcome is unknown to the client.
    Unknown(uuid::Uuid),
    /// Cut off before the commit call: nothing can have committed.
    Interrupted(ClientError),
}

/// What the workers record; times are offsets from the workload's start.
#[derive(Default)]
struct Record {
    finished: AtomicU64,
    committed: AtomicU64,
    aborted: AtomicU64,
    interrupted: AtomicU64,
    unknown: Mutex<Vec<uuid::Uuid>>,
    /// (begin sent, commit answered) of every committed transfer.
    commits: Mutex<Vec<(Duration, Duration)>>,
}

pub(super) async fn run(args: &DemoArgs, dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(args.transfers >= 2, "--transfers must be at least 2 with --ha (the leader dies halfway)");
    let exe = std::env::current_exe().context("cannot find the twopc binary")?;
    println!(
        "starting a {ETCD_MEMBERS}-member etcd, {COORDINATORS} coordinators and {} participants under {}",
        args.partitions,
        dir.display()
    );
    // Declared before the cluster, so dropped after it: the coordinators die first.
    let etcd = EtcdCluster::start(&dir.join("etcd"), ETCD_MEMBERS)?;
    let ha = HaOptions {
        coordinators: COORDINATORS,
        etcd_endpoints: etcd.endpoints(),
        cluster_name: "demo".into(),
        lease_ttl_secs: args.lease_ttl_secs,
    };
    // With --keep-running every coordinator serves its web console (as
    // without --ha): a standby's page names the leader.
    let opts = ClusterOptions {
        partitions: args.partitions,
        ha: Some(ha),
        console: args.keep_running,
        ..ClusterOptions::default()
    };
    let mut cluster = LocalCluster::start(&exe, dir, opts)?;
    let leader = cluster.leader(SETTLE).await?;
    cluster.wait_registered(SETTLE).await?;
    let addrs = cluster.coordinator_addrs();
    println!("  etcd          {}", etcd.endpoints());
    for (i, a) in addrs.iter().enumerate() {
        let console = cluster.console_url_i(i).map(|u| format!(", web console {u}")).unwrap_or_default();
        println!("  coordinator {i} {a} ({}{console})", if i == leader { "leader" } else { "standby" });
    }
    for (p, proc) in cluster.participants.iter().enumerate() {
        println!("  partition {p}   {}", proc.addr);
    }

    let client = Client::connect(&cluster.coordinator_addr()).await?;
    open_accounts(&client, args.accounts).await?;

    let kill_after = u64::from(args.transfers / 2);
    println!(
        "running {} transfers with {} clients; the leader is SIGKILLed once {kill_after} have finished",
        args.transfers, args.concurrency
    );
    let started = Instant::now();
    let record = Arc::new(Record::default());
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, record, next) = (client.clone(), record.clone(), next.clone());
        let (accounts, transfers) = (args.accounts, u64::from(args.transfers));
        workers.spawn(worker(client, record, next, accounts, transfers, started));
    }

    // Halfway: kill the leader.
    let deadline = Instant::now() + STALL_LIMIT;
    while record.finished.load(Ordering::Relaxed) < kill_after {
        if workers.is_empty() || Instant::now() >= deadline {
            break;
        }
        if let Some(done) = workers.try_join_next() {
            done??;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    anyhow::ensure!(
        record.finished.load(Ordering::Relaxed) >= kill_after,
        "only {} of {} transfers finished within {STALL_LIMIT:?} before the kill",
        record.finished.load(Ordering::Relaxed),
        args.transfers
    );
    let killed_at = started.elapsed();
    cluster.kill_coordinator(leader);
    let committed_before = record.committed.load(Ordering::Relaxed);
    println!(
        "SIGKILLed the leader, coordinator {leader} ({}), after {} transfers ({committed_before} committed)",
        addrs[leader],
        record.finished.load(Ordering::Relaxed)
    );
    let new_leader = cluster.leader(SETTLE).await.context("no coordinator took over")?;
    let seen_leading = started.elapsed().saturating_sub(killed_at);

    while let Some(done) = workers.join_next().await {
        done??;
    }
    let elapsed = started.elapsed();

    let commits = record.commits.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(took_over) = first_commit_begun_after(&commits, killed_at) else {
        bail!("the new leader, coordinator {new_leader}, served no commit after the kill");
    };
    println!(
        "coordinator {new_leader} ({}) took over: first commit served by it {:.2}s after the kill \
         (it reported SERVING {:.2}s after the kill; lease TTL {}s)",
        addrs[new_leader],
        took_over.as_secs_f64(),
        seen_leading.as_secs_f64(),
        args.lease_ttl_secs
    );
    if let Some((from, gap)) = longest_gap(&commits) {
        println!(
            "the workload stalled for {:.2}s (the longest gap between two commits, from {:.2}s into the run; the kill was at {:.2}s)",
            gap.as_secs_f64(),
            from.as_secs_f64(),
            killed_at.as_secs_f64()
        );
    }

    let (c, a, i) = (
        record.committed.load(Ordering::Relaxed),
        record.aborted.load(Ordering::Relaxed),
        record.interrupted.load(Ordering::Relaxed),
    );
    let unknown = record.unknown.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!(
        "ran {} transfers with {} clients in {:.2}s: {c} committed, {a} aborted, {} unknown to their clients \
         (the commit call failed during the failover)",
        c + a + unknown.len() as u64,
        args.concurrency,
        elapsed.as_secs_f64(),
        unknown.len()
    );
    if i > 0 {
        println!("  {i} attempts were cut off before their commit call (nothing committed) and retried");
    }
    if !unknown.is_empty() {
        let (uc, ua, still) = resolve(&client, &unknown).await;
        println!(
            "  the {} unknown outcomes, asked again: {uc} committed, {ua} aborted, {still} still undecided",
            unknown.len()
        );
    }

    check_conserved(&client, args.accounts, " across the failover").await?;

    if args.keep_running {
        let coord = cluster.coordinator_addr();
        println!("\nthe cluster keeps running (coordinator {leader} stays dead); try, in another terminal:");
        println!("  twopc run --coordinator {coord} \"put greeting hello\" \"get acct-1\"");
        println!("  twopc transactions --coordinator {coord}");
        for i in (0..COORDINATORS).filter(|&i| i != leader) {
            if let Some(url) = cluster.console_url_i(i) {
                println!("or open the web console of coordinator {i}: {url}");
            }
        }
        println!("press Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    drop(cluster);
    drop(etcd);
    Ok(())
}

async fn worker(
    client: Client,
    record: Arc<Record>,
    next: Arc<AtomicU64>,
    accounts: u32,
    transfers: u64,
    started: Instant,
) -> anyhow::Result<()> {
    let mut last_outcome = Instant::now();
    while next.fetch_add(1, Ordering::Relaxed) < transfers {
        let mut backoff = Duration::from_millis(20);
        loop {
            let (from, to, amount) = {
                let mut rng = rand::rng();
                let from = rng.random_range(0..accounts);
                let to = (from + rng.random_range(1..accounts)) % accounts;
                (from, to, rng.random_range(1..=10i64))
            };
            let began = started.elapsed();
            match transfer(&client, from, to, amount).await {
                Attempt::Committed => {
                    let done = started.elapsed();
                    record.commits.lock().unwrap_or_else(|p| p.into_inner()).push((began, done));
                    record.committed.fetch_add(1, Ordering::Relaxed);
                }
                Attempt::Aborted => {
                    record.aborted.fetch_add(1, Ordering::Relaxed);
                }
                Attempt::Unknown(tid) => record.unknown.lock().unwrap_or_else(|p| p.into_inner()).push(tid),
                Attempt::Interrupted(e) => {
                    record.interrupted.fetch_add(1, Ordering::Relaxed);
                    if last_outcome.elapsed() >= STALL_LIMIT {
                        bail!("no transfer outcome for {STALL_LIMIT:?}; last error: {e}");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            }
            record.finished.fetch_add(1, Ordering::Relaxed);
            last_outcome = Instant::now();
            break;
        }
    }
    Ok(())
}

/// One transfer, classified for the failover report.
async fn transfer(client: &Client, from: u32, to: u32, amount: i64) -> Attempt {
    let txn = match client.begin(Some(Duration::from_secs(10))).await {
        Ok(t) => t,
        Err(e) => return Attempt::Interrupted(e),
    };
    let result: Result<(), ClientError> = async {
        let a = balance(txn.get_for_update(account(from).as_bytes()).await?);
        let b = balance(txn.get_for_update(account(to).as_bytes()).await?);
        txn.put(account(from).as_bytes(), (a - amount).to_string().as_bytes()).await?;
        txn.put(account(to).as_bytes(), (b + amount).to_string().as_bytes()).await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => match txn.commit().await {
            Ok(Outcome::Committed) => Attempt::Committed,
            Ok(Outcome::Aborted { .. }) => Attempt::Aborted,
            Ok(Outcome::Forgotten { .. }) | Err(_) => Attempt::Unknown(txn.tid()),
        },
        Err(e) => {
            // Best effort: releases the locks sooner than the deadline would.
            let _ = txn.abort().await;
            if e.is_retryable_abort() { Attempt::Aborted } else { Attempt::Interrupted(e) }
        }
    }
}

/// Asks the (new) leader for each unknown outcome until it answers or
/// [`SETTLE`] passes: (committed, aborted, still undecided).
async fn resolve(client: &Client, tids: &[uuid::Uuid]) -> (usize, usize, usize) {
    let deadline = Instant::now() + SETTLE;
    let (mut committed, mut aborted, mut undecided) = (0, 0, 0);
    for &tid in tids {
        loop {
            match client.status(tid).await {
                Ok(Decision::Committed) => committed += 1,
                Ok(Decision::Aborted { .. }) => aborted += 1,
                Ok(Decision::Pending) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Ok(Decision::Pending | Decision::Forgotten { .. }) | Err(_) => undecided += 1,
            }
            break;
        }
    }
    (committed, aborted, undecided)
}

/// Time from `killed_at` to the first commit answered for a transfer whose
/// begin was sent after `killed_at`: one only the new leader can have served.
fn first_commit_begun_after(commits: &[(Duration, Duration)], killed_at: Duration) -> Option<Duration> {
    commits.iter().filter(|(began, _)| *began > killed_at).map(|(_, done)| done.saturating_sub(killed_at)).min()
}

/// The longest gap between two consecutive commit answers: (start of the gap, its length).
fn longest_gap(commits: &[(Duration, Duration)]) -> Option<(Duration, Duration)> {
    let mut done: Vec<Duration> = commits.iter().map(|&(_, d)| d).collect();
    done.sort_unstable();
    done.windows(2).map(|w| (w[0], w[1] - w[0])).max_by_key(|&(_, gap)| gap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn takeover_counts_only_transfers_begun_after_the_kill() {
        // Begun before the kill (1000 ms) and answered after it: not the new leader's proof.
        let commits = [(ms(900), ms(1100)), (ms(990), ms(3500)), (ms(1200), ms(4200)), (ms(3000), ms(4100))];
        assert_eq!(first_commit_begun_after(&commits, ms(1000)), Some(ms(3100)));
        assert_eq!(first_commit_begun_after(&commits[..2], ms(1000)), None);
    }

    #[test]
    fn the_stall_is_the_longest_gap_between_commits() {
        let commits = [(ms(0), ms(100)), (ms(0), ms(4000)), (ms(0), ms(150)), (ms(0), ms(4010))];
        assert_eq!(longest_gap(&commits), Some((ms(150), ms(3850))));
        assert_eq!(longest_gap(&commits[..1]), None);
    }
}
