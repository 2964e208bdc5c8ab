//! The bank under crashes, with twopc-testkit: what the bank's user sees
//! must be true whatever dies when. After each crash, recovery and settle:
//! no money created or lost (the total is unchanged), and the transfer's
//! reported outcome is what happened (Done: moved exactly once; Unknown:
//! resolved later by asking; InsufficientFunds/errors: nothing moved).
//!
//! The `twopc` binary is found by the kit: `TWOPC_BIN`, `PATH`, or this
//! workspace's `target/debug/twopc` (built by `cargo test --workspace`;
//! run `cargo build` first when testing this package alone).

use std::time::Duration;

use twopc_client::{Client, ConnectOptions, Decision, partition_for};
use twopc_example_bank::{Bank, Patience, Transfer};
use twopc_testkit::{Action, Cluster, Failpoint, Target};

const SETTLE: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(20);

/// An account name whose balance lives on partition `p`.
fn account_on(cluster: &Cluster, p: u32, name: &str) -> String {
    (0..)
        .map(|i| format!("{name}{i}"))
        .find(|a| partition_for(&Bank::account_key(a), cluster.partitions()) == p)
        .unwrap()
}

/// A two-partition cluster with alice (100, partition 0) and bob (0, partition 1).
async fn bank_cluster(builder: twopc_testkit::ClusterBuilder) -> (Cluster, String, String) {
    let cluster = builder.partitions(2).start().await.expect("cluster starts");
    let (alice, bob) = (account_on(&cluster, 0, "alice"), account_on(&cluster, 1, "bob"));
    Bank::new(cluster.client().clone()).open(&[(&alice, 100), (&bob, 0)]).await.unwrap();
    // A commit is answered once decided; its phase 2 may still run. Settle
    // before arming a failpoint, or the opening itself may hit it.
    cluster.settle(SETTLE).await.unwrap();
    (cluster, alice, bob)
}

async fn balances(cluster: &Cluster, accounts: [&str; 2]) -> [u64; 2] {
    let bank = Bank::new(cluster.client().clone());
    [bank.balance(accounts[0]).await.unwrap(), bank.balance(accounts[1]).await.unwrap()]
}

/// A client whose calls give up after `budget`: its commit's reply is lost
/// as soon as the coordinator is gone that long.
async fn impatient_client(cluster: &Cluster, budget: Duration) -> Client {
    let options = ConnectOptions { call_budget: budget, ..cluster.connect_options().clone() };
    Client::connect_with(&cluster.coordinator_addr(), options).await.unwrap()
}

async fn wait_exit(cluster: &mut Cluster, target: Target) {
    cluster.wait_exit(target, EXIT).await.expect("the failpoint kills it");
}

/// C2: the coordinator dies right after its COMMIT record is durable, so
/// the bank's commit gets no reply. It asks for the outcome (or the
/// library's commit does) while the coordinator restarts: the transfer is
/// reported Done after one attempt, and the money moved exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_after_decision_is_reported_done_and_moves_money_once() {
    let (mut cluster, alice, bob) = bank_cluster(Cluster::builder()).await;
    cluster.arm(Target::Coordinator, Failpoint::AfterDecisionForced, Action::Kill).await.unwrap();
    let bank = Bank::new(impatient_client(&cluster, Duration::from_secs(1)).await);
    let transfer = tokio::spawn({
        let (alice, bob) = (alice.clone(), bob.clone());
        async move { bank.transfer(&alice, &bob, 30).await }
    });
    wait_exit(&mut cluster, Target::Coordinator).await;
    cluster.restart(Target::Coordinator).await.unwrap();
    let outcome = transfer.await.unwrap().unwrap();
    assert!(matches!(outcome, Transfer::Done { attempts: 1, .. }), "{outcome:?}");
    cluster.settle(SETTLE).await.unwrap();
    assert_eq!(balances(&cluster, [&alice, &bob]).await, [70, 30]);
}

/// The lost reply when no coordinator comes back in time: the bank tells
/// its user "unknown" (with the tid), never a false "failed"; once the
/// coordinator is back, asking about that tid says COMMITTED and the money
/// moved exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_reply_is_reported_unknown_then_resolved_by_status() {
    let (mut cluster, alice, bob) = bank_cluster(Cluster::builder()).await;
    cluster.arm(Target::Coordinator, Failpoint::AfterDecisionForced, Action::Kill).await.unwrap();
    let patience = Patience { outcome_wait: Duration::from_millis(500), ..Patience::default() };
    let bank = Bank::with_patience(impatient_client(&cluster, Duration::from_millis(500)).await, patience);
    let outcome = bank.transfer(&alice, &bob, 30).await.unwrap();
    let Transfer::Unknown { tid } = outcome else { panic!("the coordinator is down: {outcome:?}") };

    wait_exit(&mut cluster, Target::Coordinator).await;
    cluster.restart(Target::Coordinator).await.unwrap();
    cluster.settle(SETTLE).await.unwrap();
    let bank = Bank::new(cluster.client().clone());
    assert_eq!(bank.transfer_status(tid).await.unwrap(), Decision::Committed);
    assert_eq!(balances(&cluster, [&alice, &bob]).await, [70, 30]);
}

/// C6: bob's participant voted YES and dies before applying the COMMIT.
/// The decision stands: the transfer is reported Done, and once bob's
/// participant is back (it re-takes its locks and learns COMMIT) both
/// balances show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crash_after_its_yes_vote_commits_after_restart() {
    let (mut cluster, alice, bob) = bank_cluster(Cluster::builder()).await;
    cluster.arm(Target::Participant(1), Failpoint::BeforeCommitApplied, Action::Kill).await.unwrap();
    let bank = Bank::new(cluster.client().clone());
    let transfer = tokio::spawn({
        let (alice, bob) = (alice.clone(), bob.clone());
        async move { bank.transfer(&alice, &bob, 30).await }
    });
    wait_exit(&mut cluster, Target::Participant(1)).await;
    cluster.restart(Target::Participant(1)).await.unwrap();
    let outcome = transfer.await.unwrap().unwrap();
    assert!(matches!(outcome, Transfer::Done { attempts: 1, .. }), "{outcome:?}");
    cluster.settle(SETTLE).await.unwrap();
    assert_eq!(balances(&cluster, [&alice, &bob]).await, [70, 30]);
}

/// C5: bob's participant dies after its prepared state is durable, before
/// its vote is sent. The coordinator aborts at its prepare timeout; the bank
/// retries (ABORTED, then UNAVAILABLE while bob's participant is down) and
/// the transfer is done once it is back: moved exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crash_before_its_vote_aborts_and_the_retry_moves_money_once() {
    let builder = Cluster::builder().prepare_timeout(Duration::from_millis(500));
    let (mut cluster, alice, bob) = bank_cluster(builder).await;
    cluster.arm(Target::Participant(1), Failpoint::AfterPrepareDurable, Action::Kill).await.unwrap();
    let bank = Bank::new(cluster.client().clone());
    let transfer = tokio::spawn({
        let (alice, bob) = (alice.clone(), bob.clone());
        async move { bank.transfer(&alice, &bob, 30).await }
    });
    wait_exit(&mut cluster, Target::Participant(1)).await;
    cluster.restart(Target::Participant(1)).await.unwrap();
    let outcome = transfer.await.unwrap().unwrap();
    assert!(matches!(outcome, Transfer::Done { attempts: 2.., .. }), "{outcome:?}");
    cluster.settle(SETTLE).await.unwrap();
    assert_eq!(balances(&cluster, [&alice, &bob]).await, [70, 30]);
}

/// C8: a client dies mid-transfer, after debiting alice and before
/// committing (its client is dropped without a word, as a crashed process
/// would be silent). The coordinator aborts it at its deadline, releasing
/// alice's lock: the next transfer waits for it, then succeeds, and the
/// half-done debit never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_crash_mid_transfer_leaves_no_trace() {
    let (cluster, alice, bob) = bank_cluster(Cluster::builder()).await;
    let crashed = impatient_client(&cluster, Duration::from_secs(5)).await;
    let txn = crashed.begin(Some(Duration::from_secs(1))).await.unwrap();
    txn.get_for_update(&Bank::account_key(&alice)).await.unwrap();
    txn.put(&Bank::account_key(&alice), b"0").await.unwrap();
    let abandoned = txn.tid();
    drop((txn, crashed));

    let bank = Bank::new(cluster.client().clone());
    let outcome = bank.transfer(&alice, &bob, 30).await.unwrap();
    assert!(matches!(outcome, Transfer::Done { .. }), "{outcome:?}");
    assert!(matches!(bank.transfer_status(abandoned).await.unwrap(), Decision::Aborted { .. }));
    cluster.settle(SETTLE).await.unwrap();
    assert_eq!(balances(&cluster, [&alice, &bob]).await, [70, 30]);

    // An overdraft is refused and moves nothing.
    let outcome = bank.transfer(&alice, &bob, 1000).await.unwrap();
    assert_eq!(outcome, Transfer::InsufficientFunds { balance: 70 });
    cluster.settle(SETTLE).await.unwrap();
    assert_eq!(balances(&cluster, [&alice, &bob]).await, [70, 30]);
}
