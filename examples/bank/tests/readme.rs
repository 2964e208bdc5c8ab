// The example crash test of README.md's "Testing your application under crashes", verbatim.
use std::time::Duration;
use twopc_example_bank::{Bank, Transfer};
use twopc_testkit::{Action, Cluster, Failpoint, Target};

#[tokio::test(flavor = "multi_thread")]
async fn transfer_survives_a_coordinator_crash() {
    let mut cluster = Cluster::builder().partitions(2).start().await.unwrap();
    let bank = Bank::new(cluster.client().clone());
    bank.open(&[("alice", 100), ("carol", 0)]).await.unwrap(); // on partitions 0 and 1
    cluster.settle(Duration::from_secs(30)).await.unwrap();
    cluster.arm(Target::Coordinator, Failpoint::AfterDecisionForced, Action::Kill).await.unwrap();
    let transfer = tokio::spawn(async move { bank.transfer("alice", "carol", 30).await });
    cluster.wait_exit(Target::Coordinator, Duration::from_secs(20)).await.unwrap();
    cluster.restart(Target::Coordinator).await.unwrap();
    assert!(matches!(transfer.await.unwrap().unwrap(), Transfer::Done { .. }));
    cluster.settle(Duration::from_secs(30)).await.unwrap();
    let bank = Bank::new(cluster.client().clone());
    assert_eq!((bank.balance("alice").await.unwrap(), bank.balance("carol").await.unwrap()), (70, 30));
}
