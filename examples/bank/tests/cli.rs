//! The `bank` command against a kit cluster: its answers, and a transfer
//! whose coordinator dies after deciding, seen from the command's exit
//! status and output.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use twopc_testkit::{Action, Cluster, Failpoint, Target};

fn bank(cluster: &Cluster, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bank"));
    cmd.args(args).env("TWOPC_COORDINATOR", cluster.coordinator_addr()).stdin(Stdio::null());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn run(cluster: &Cluster, args: &[&str]) -> Output {
    bank(cluster, args).output().expect("run bank")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_command_transfers_and_survives_a_coordinator_crash() {
    let mut cluster = Cluster::builder().partitions(2).start().await.unwrap();
    assert_eq!(out(&run(&cluster, &["open", "alice=100", "carol=0"])), "opened 2");
    let o = run(&cluster, &["transfer", "alice", "carol", "30"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out(&o).starts_with("done tid="), "{}", out(&o));
    let o = run(&cluster, &["transfer", "alice", "carol", "1000"]);
    assert_eq!((o.status.code(), out(&o)), (Some(1), "insufficient funds: alice holds 70".to_string()));
    let o = run(&cluster, &["balance", "nobody"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no account \"nobody\""));

    // The coordinator dies right after deciding; the command, still
    // running, learns the outcome once it is back and reports it.
    cluster.settle(Duration::from_secs(30)).await.unwrap();
    cluster.arm(Target::Coordinator, Failpoint::AfterDecisionForced, Action::Kill).await.unwrap();
    let child = bank(&cluster, &["transfer", "alice", "carol", "20"]).spawn().unwrap();
    cluster.wait_exit(Target::Coordinator, Duration::from_secs(20)).await.unwrap();
    cluster.restart(Target::Coordinator).await.unwrap();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{} {}", out(&o), String::from_utf8_lossy(&o.stderr));
    assert!(out(&o).starts_with("done tid="), "{}", out(&o));
    cluster.settle(Duration::from_secs(30)).await.unwrap();
    assert_eq!(out(&run(&cluster, &["balance", "alice"])), "50");
    assert_eq!(out(&run(&cluster, &["balance", "carol"])), "50");
}
