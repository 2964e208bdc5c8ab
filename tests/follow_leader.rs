//! Following the leader (PROTOCOL.md rule 16) on real processes: a real
//! coordinator and participants, plus an in-test standby (a tiny tonic
//! Coordinator server on a loopback port that answers every RPC with
//! UNAVAILABLE naming the real coordinator) and a dead address. Clients,
//! the `twopc` CLI and a participant given `STANDBY,REAL` or `DEAD,REAL`
//! reach the leader and commit; a list where nobody leads fails naming
//! every address; a commit cut off by the coordinator's crash learns its
//! outcome once a coordinator leads again.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{EXIT, KILL, SETTLE, TestCluster, arm};
use twopc::cluster::ClusterOptions;
use twopc_client::{Client, ConnectOptions, Decision, FailpointTarget, Outcome};
use twopc_leader::fake_coordinator::FakeCoordinator;

/// A loopback address nobody listens on (bound, then released).
fn dead_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

fn twopc(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twopc"));
    cmd.args(args).env_remove("TWOPC_COORDINATOR").env_remove("TWOPC_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run twopc")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Two partitions: p0 started as usual (given the real coordinator), p1
/// given `STANDBY,REAL`, so it registers by following the standby's hint.
async fn cluster_with_standby() -> (TestCluster, FakeCoordinator) {
    let opts = ClusterOptions { partitions: 2, start_partitions: Some(1), ..ClusterOptions::default() };
    let mut tc = TestCluster::start(opts).await;
    let real = tc.cluster.coordinator_addr();
    let standby = FakeCoordinator::standby(Some(real.clone())).await;
    let p1 = tc.cluster.spawn_participant_with(1, &format!("{},{real}", standby.addr), &[]).expect("participant 1");
    tc.cluster.participants.push(p1);
    tc.reconnect().await;
    assert!(standby.calls("Register") >= 1, "participant 1 asked the standby first");
    (tc, standby)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cli_and_a_participant_follow_a_standby_and_skip_a_dead_address() {
    let (tc, standby) = cluster_with_standby().await;
    let real = tc.cluster.coordinator_addr();
    let (a, b) = (tc.key_on(0, "follow"), tc.key_on(1, "follow"));

    for (i, list) in [format!("{},{real}", standby.addr), format!("{},{real}", dead_addr())].iter().enumerate() {
        let client = Client::connect(list).await.unwrap_or_else(|e| panic!("connect to {list}: {e}"));
        assert_eq!(client.coordinator_address(), real);
        let value = format!("v{i}");
        let txn = client.begin(Some(Duration::from_secs(30))).await.expect("begin");
        txn.put(a.as_bytes(), value.as_bytes()).await.expect("put on partition 0");
        txn.put(b.as_bytes(), value.as_bytes()).await.expect("put on partition 1 (registered via the standby)");
        assert_eq!(txn.commit().await.expect("commit"), Outcome::Committed);
        assert_eq!(client.status(txn.tid()).await.unwrap(), Decision::Committed);
        // Phase 2 runs after the answer: poll for the value.
        tc.wait_value(&b, Some(&value)).await;
        assert!(client.transactions().await.is_ok());
    }
    assert!(standby.calls("GetTopology") >= 1, "the first client asked the standby first");

    // The CLI: --coordinator and TWOPC_COORDINATOR take the list.
    let list = format!("{},{real}", standby.addr);
    let put = format!("put {a} cli");
    let o = twopc(&["run", "--coordinator", &list, &put, &format!("put {b} cli")], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("COMMITTED"), "{}", text(&o));
    tc.wait_value(&b, Some("cli")).await;
    let dead_list = format!("{},{real}", dead_addr());
    let o = twopc(&["topology"], &[("TWOPC_COORDINATOR", &dead_list)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("partitions: 2") && !out.contains("not registered"), "{}", text(&o));
    let o = twopc(&["begin", "--coordinator", &list], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let tid = String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_string();
    for cmd in [&["commit", "--tid", &tid][..], &["status", &tid][..]] {
        let o = twopc(&[cmd, &["--coordinator", &dead_list]].concat(), &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("COMMITTED"), "{}", text(&o));
    }
    let o = twopc(&["transactions", "--coordinator", &list], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = twopc(&["begin", "--coordinator", &dead_list], &[]);
    let tid = String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_string();
    let o = twopc(&["abort", "--tid", &tid, "--coordinator", &list], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = twopc(&["status", &tid, "--coordinator", &list], &[]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ABORTED"), "{}", text(&o));
    let o = twopc(
        &["failpoint", "--coordinator", &list, "--target", "coordinator", "coordinator::after_commit_acked", ""],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // twopc bench against the running cluster, given the list.
    let json = tc.cluster.dir.join("bench.json");
    let o = twopc(
        &[
            "bench",
            "--coordinator",
            &list,
            "--workload",
            "spread",
            "--duration-secs",
            "1",
            "--warmup-secs",
            "0",
            "--concurrency",
            "2",
            "--keys",
            "50",
            "--json",
            &json.display().to_string(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["committed"].as_u64().unwrap_or(0) > 0, "{report:#}");
    assert_eq!(report["external_cluster"], true, "{report:#}");

    // Nobody leads: the error names every address and what it said, within the budget.
    let (dead, lost) = (dead_addr(), FakeCoordinator::standby(None).await);
    let nobody = format!("{dead},{}", lost.addr);
    let started = Instant::now();
    let o = twopc(&["topology", "--coordinator", &nobody, "--call-budget-ms", "800"], &[]);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no coordinator answered as leader within 800ms"), "{}", text(&o));
    assert!(err.contains(&dead) && err.contains(&lost.addr.to_string()), "{}", text(&o));
    assert!(err.contains("no leader is elected"), "{}", text(&o));
    let o = twopc(&["topology", "--coordinator", "127.0.0.1:1,,127.0.0.1:2"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("empty address"), "{}", text(&o));

    tc.wait_settled().await;
}

/// A commit cut off by the coordinator's crash after its COMMIT record is
/// durable: the client, given `STANDBY,REAL`, keeps asking (the dead
/// leader refuses connections, the standby still names it) and hears
/// COMMITTED once the coordinator is back, within the call budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cut_off_by_a_crash_learns_committed_from_the_leader_once_back() {
    let (mut tc, standby) = cluster_with_standby().await;
    let real = tc.cluster.coordinator_addr();
    let (a, b) = (tc.key_on(0, "cut"), tc.key_on(1, "cut"));
    let options = ConnectOptions { call_budget: Duration::from_secs(60), ..ConnectOptions::default() };
    let client = Client::connect_with(&format!("{},{real}", standby.addr), options).await.unwrap();
    let txn = client.begin(Some(Duration::from_secs(60))).await.unwrap();
    txn.put(a.as_bytes(), b"1").await.unwrap();
    txn.put(b.as_bytes(), b"1").await.unwrap();
    let asked_before = standby.calls("GetDecision");
    arm(&tc, FailpointTarget::Coordinator, "coordinator::after_decision_forced", KILL).await;
    let commit = tokio::spawn({
        let txn = txn.clone();
        async move { txn.commit().await }
    });
    assert!(tc.cluster.coordinator.wait_exit(EXIT), "the failpoint should have killed the coordinator");
    tc.cluster.restart_coordinator(&[]).expect("coordinator restarts on its address");
    let outcome = tokio::time::timeout(SETTLE, commit).await.expect("commit answers in time").unwrap();
    assert_eq!(outcome.expect("the outcome was learned"), Outcome::Committed);
    assert!(standby.calls("GetDecision") > asked_before, "asked the standby while the leader was down");
    tc.reconnect().await;
    tc.wait_settled().await;
    tc.wait_value(&a, Some("1")).await;
    tc.wait_value(&b, Some("1")).await;
}
