//! `twopc demo`: a newcomer's first run. Starts a coordinator and N
//! participants as child processes on free loopback ports, then runs a small
//! bank: accounts spread over the partitions, concurrent transfers between
//! them (each a distributed transaction), and a check that the total is
//! unchanged. With `--keep-running` the cluster stays up for the CLI and
//! the coordinator serves its web console on a loopback port (the URL is
//! printed first): a trickle of transfers keeps the charts moving, and a
//! process that dies (e.g. a failpoint armed from the page) is restarted,
//! so its crash and recovery show on the page.
//!
//! `twopc demo --ha` shows coordinator failover (PROTOCOL.md rules 14-16):
//! a three-member etcd, three coordinators sharing their decision log in it
//! (one leads), the participants given all three addresses. Halfway through
//! the transfers the leader is SIGKILLed; the demo reports who took over
//! and how fast (kill → first commit served by the new leader), how long
//! the workload stalled, how each transfer ended (committed, aborted, or
//! unknown to its client because the commit call failed during the
//! failover, then asked again afterwards), and checks that the total is
//! unchanged. It exits non-zero if money was created or lost.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::Rng;
use twopc_client::{Client, Outcome};

use crate::cluster::{ClusterOptions, LocalCluster};

mod ha;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Directory for data and logs (default: a new temporary directory, removed at exit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    pub partitions: u32,
    #[arg(long, default_value_t = 100)]
    pub accounts: u32,
    #[arg(long, default_value_t = 200)]
    pub transfers: u32,
    #[arg(long, default_value_t = 8)]
    pub concurrency: u32,
    /// Keep the cluster running after the workload until Ctrl-C, with the
    /// coordinator's web console on a loopback port (its URL is printed).
    #[arg(long)]
    pub keep_running: bool,
    /// With --keep-running: transfers per second run in the background
    /// (0: none), so the console has something to show.
    #[arg(long, default_value_t = 5)]
    pub trickle_per_sec: u32,
    /// High availability: a 3-member etcd, 3 coordinators on it, and the
    /// leader SIGKILLed halfway through the transfers (needs `etcd` on PATH).
    #[arg(long)]
    pub ha: bool,
    /// With --ha: the leader's lease TTL (a dead leader is replaced after about this long).
    #[arg(long, default_value_t = 3, requires = "ha")]
    pub lease_ttl_secs: u64,
}

pub(crate) const INITIAL_BALANCE: i64 = 100;

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.accounts >= 2, "--accounts must be at least 2");
    anyhow::ensure!(args.partitions >= 1, "--partitions must be at least 1");
    let exe = std::env::current_exe().context("cannot find the twopc binary")?;
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("twopc-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    if args.ha {
        return ha::run(&args, &dir).await;
    }
    println!("starting a coordinator and {} participants under {}", args.partitions, dir.display());
    let opts = ClusterOptions { partitions: args.partitions, console: args.keep_running, ..ClusterOptions::default() };
    let cluster = LocalCluster::start(&exe, &dir, opts)?;
    cluster.wait_registered(Duration::from_secs(30)).await?;
    if let Some(url) = cluster.console_url() {
        println!("  web console   {url}   (open it in a browser now and watch the transfers)");
    }
    println!("  coordinator   {}", cluster.coordinator_addr());
    for (p, proc) in cluster.participants.iter().enumerate() {
        println!("  partition {p}   {}", proc.addr);
    }

    let client = Client::connect(&cluster.coordinator_addr()).await?;
    open_accounts(&client, args.accounts).await?;

    let started = Instant::now();
    let committed = Arc::new(AtomicU64::new(0));
    let aborted = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = vec![];
    for _ in 0..args.concurrency {
        let (client, committed, aborted, next) = (client.clone(), committed.clone(), aborted.clone(), next.clone());
        let (accounts, transfers) = (args.accounts, args.transfers as u64);
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < transfers {
                let (from, to, amount) = {
                    let mut rng = rand::rng();
                    let from = rng.random_range(0..accounts);
                    let to = (from + rng.random_range(1..accounts)) % accounts;
                    (from, to, rng.random_range(1..=10i64))
                };
                match transfer(&client, from, to, amount).await {
                    Ok(true) => committed.fetch_add(1, Ordering::Relaxed),
                    Ok(false) => aborted.fetch_add(1, Ordering::Relaxed),
                    Err(e) => return Err(e),
                };
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let elapsed = started.elapsed();
    let (c, a) = (committed.load(Ordering::Relaxed), aborted.load(Ordering::Relaxed));
    println!(
        "ran {} transfers with {} clients in {:.2}s: {c} committed, {a} aborted (lock conflicts; aborted transfers move nothing)",
        c + a,
        args.concurrency,
        elapsed.as_secs_f64()
    );

    check_conserved(&client, args.accounts, "").await?;

    if args.keep_running {
        let coord = cluster.coordinator_addr();
        println!("\nthe cluster keeps running; try, in another terminal:");
        println!("  twopc run --coordinator {coord} \"put greeting hello\" \"get acct-1\"");
        println!("  twopc read --coordinator {coord} greeting");
        println!("  twopc transactions --coordinator {coord}");
        println!("  twopc in-doubt --coordinator {coord}");
        if let Some(url) = cluster.console_url() {
            println!("or open the web console: {url}");
            println!(
                "  (arm e.g. coordinator::after_decision_forced with `return` (kills it) there: the demo restarts what crashes)"
            );
        }
        println!("press Ctrl-C to stop");
        keep_running(cluster, client, args.accounts, args.trickle_per_sec).await?;
    }
    Ok(())
}

/// Until Ctrl-C: `per_sec` transfers a second in the background, and any
/// process of `cluster` that exited (a failpoint's crash) restarted on its
/// data, its address kept for the coordinator and its console.
async fn keep_running(mut cluster: LocalCluster, client: Client, accounts: u32, per_sec: u32) -> anyhow::Result<()> {
    let trickle = tokio::spawn(async move {
        if per_sec == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (from, to, amount) = {
                let mut rng = rand::rng();
                let from = rng.random_range(0..accounts);
                (from, (from + rng.random_range(1..accounts)) % accounts, rng.random_range(1..=10i64))
            };
            // Errors are expected while a process is down: the next tick tries again.
            let _ = tokio::time::timeout(Duration::from_secs(15), transfer(&client, from, to, amount)).await;
        }
    });
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            r = &mut ctrl_c => { r?; break; }
            _ = check.tick() => {}
        }
        if !cluster.coordinator.is_running() {
            let how = cluster.coordinator.exit_status().map(|s| s.to_string()).unwrap_or_default();
            println!(
                "the coordinator exited ({how}); restarting it: it reads its decision log back and finishes what it decided"
            );
            cluster.restart_coordinator(&[])?;
        }
        for p in 0..cluster.participants.len() {
            if !cluster.participants[p].is_running() {
                let how = cluster.participants[p].exit_status().map(|s| s.to_string()).unwrap_or_default();
                println!("participant {p} exited ({how}); restarting it on its data (it asks about its in-doubt tids)");
                cluster.restart_participant(p as u32, &[])?;
            }
        }
    }
    trickle.abort();
    Ok(())
}

/// Opens `accounts` accounts with [`INITIAL_BALANCE`] each, in one transaction.
pub(crate) async fn open_accounts(client: &Client, accounts: u32) -> anyhow::Result<()> {
    let txn = client.begin(None).await?;
    for a in 0..accounts {
        txn.put(account(a).as_bytes(), INITIAL_BALANCE.to_string().as_bytes()).await?;
    }
    match txn.commit().await? {
        Outcome::Committed => {
            println!("opened {accounts} accounts with {INITIAL_BALANCE} each in one transaction ({})", txn.tid());
            Ok(())
        }
        Outcome::Aborted { reason, .. } => bail!("opening the accounts aborted: {reason}"),
        Outcome::Forgotten { reason } => bail!("opening the accounts: outcome forgotten: {reason}"),
    }
}

/// The sum of all balances, read in one transaction so it sees a
/// consistent state. (Plain reads could see a transfer applied on one
/// partition and not yet on the other: phase 2 runs after the client has
/// heard COMMITTED.) Retried while a lock conflict aborts it.
/// Reads every balance and fails unless the sum is the opening total;
/// `during` says what the workload went through (e.g. " across the failover").
pub(crate) async fn check_conserved(client: &Client, accounts: u32, during: &str) -> anyhow::Result<()> {
    let total = audit(client, accounts).await?;
    let expected = INITIAL_BALANCE * i64::from(accounts);
    println!("sum of all balances: {total} (expected {expected})");
    if total != expected {
        bail!("money was created or lost{during}: {total} != {expected}");
    }
    println!("atomicity held{during}: every transfer moved money on both partitions or on neither");
    Ok(())
}

pub(crate) async fn audit(client: &Client, accounts: u32) -> anyhow::Result<i64> {
    for attempt in 0..50u64 {
        let txn = client.begin(Some(Duration::from_secs(10))).await?;
        let mut total = 0i64;
        let mut conflict = false;
        for a in 0..accounts {
            match txn.get(account(a).as_bytes()).await {
                Ok(v) => total += balance(v),
                Err(e) if e.is_retryable_abort() => {
                    conflict = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !conflict && matches!(txn.commit().await?, Outcome::Committed) {
            return Ok(total);
        }
        let _ = txn.abort().await;
        tokio::time::sleep(Duration::from_millis(10 * (attempt + 1))).await;
    }
    bail!("the audit kept conflicting with transfers still being applied")
}

pub(crate) fn account(a: u32) -> String {
    format!("acct-{a}")
}

/// One transfer; `Ok(false)` when it aborted (its effects are then nowhere).
async fn transfer(client: &Client, from: u32, to: u32, amount: i64) -> anyhow::Result<bool> {
    let txn = client.begin(Some(Duration::from_secs(10))).await?;
    let result: Result<(), twopc_client::ClientError> = async {
        let a = balance(txn.get_for_update(account(from).as_bytes()).await?);
        let b = balance(txn.get_for_update(account(to).as_bytes()).await?);
        txn.put(account(from).as_bytes(), (a - amount).to_string().as_bytes()).await?;
        txn.put(account(to).as_bytes(), (b + amount).to_string().as_bytes()).await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(matches!(txn.commit().await?, Outcome::Committed)),
        Err(e) if e.is_retryable_abort() => {
            let _ = txn.abort().await;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn balance(v: Option<Vec<u8>>) -> i64 {
    v.and_then(|v| String::from_utf8_lossy(&v).parse().ok()).unwrap_or(0)
}
