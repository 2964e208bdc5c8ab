//! Error hints fit the cause: the CLI's error names the likely cause of a
//! failed connection (refused, closed mid-call, TLS handshake) and nothing
//! else. A dead port is not a TLS problem, and neither is a coordinator
//! that died in the middle of a call; a TLS mismatch (either way round) is.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use twopc::cluster::{ClusterOptions, Proc};
use twopc_client::FailpointTarget;

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_twopc"))
        .args(args)
        .env_remove("TWOPC_COORDINATOR")
        .env_remove("TWOPC_TLS_CA")
        .env_remove("TWOPC_TLS_CERT")
        .env_remove("TWOPC_TLS_KEY")
        .output()
        .expect("run twopc")
}

fn stderr(o: &Output) -> String {
    let e = format!("exit {:?}: {}", o.status.code(), String::from_utf8_lossy(&o.stderr));
    eprintln!("{e}");
    e
}

/// A dead port: refused, never a TLS hint.
#[test]
fn a_dead_port_is_refused_not_a_tls_problem() {
    let dead = format!("127.0.0.1:{}", free_port());
    let tid = uuid::Uuid::now_v7().to_string();
    for args in [vec!["status", tid.as_str()], vec!["commit", "--tid", tid.as_str()], vec!["read", "k"]] {
        let mut args = args.clone();
        args.extend(["--coordinator", dead.as_str()]);
        let o = cli(&args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains("refused the connection") && e.contains(&dead), "{args:?}: {e}");
        assert!(!e.contains("TLS"), "{args:?}: {e}");
    }
}

/// A coordinator SIGKILLed while a commit waits for a vote (held by a
/// sleeping failpoint at a participant): the hint says the connection
/// closed mid-call (and then that nothing listens), not TLS. A TLS client
/// at this plaintext coordinator, a plaintext client at a TLS one and a
/// client without a certificate at a mutual-TLS one get a TLS hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_call_is_not_a_tls_problem_but_a_tls_mismatch_is() {
    let opts = ClusterOptions {
        partitions: 2,
        coordinator_args: vec!["--prepare-timeout-ms".into(), "60000".into()],
        ..Default::default()
    };
    let mut tc = TestCluster::start(opts).await;
    let addr = tc.cluster.coordinator_addr();
    let certs = tempfile::tempdir().unwrap();
    let pki = common::pki(certs.path());
    let [ca, cert, key] = [&pki.ca, &pki.cert, &pki.key].map(|p| p.display().to_string());

    // TLS client, plaintext server.
    let tid = uuid::Uuid::now_v7().to_string();
    let o = cli(&["status", &tid, "--coordinator", &addr, "--tls-ca", &ca]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("TLS handshake") && e.contains("--tls-ca"), "{e}");

    // Plaintext client, TLS server (a coordinator of its own).
    let tls_dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--partitions",
        "1",
        "--data-dir",
        &tls_dir.path().join("c").display().to_string(),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-ca",
        &ca,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let exe = Path::new(env!("CARGO_BIN_EXE_twopc"));
    let mut tls_coordinator = Proc::start(exe, &args, &[], &tls_dir.path().join("c.log"), "tls coordinator").unwrap();
    let tls_addr = tls_coordinator.addr.to_string();
    // A TLS client without a certificate at this mutual-TLS coordinator.
    let o = cli(&["status", &tid, "--coordinator", &tls_addr, "--tls-ca", &ca]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    // (The transport reports the server's alert, or only a closed
    // connection, which the client then probes.)
    assert!(e.contains("TLS") && e.contains("--tls-cert") && !e.contains("crashed"), "{e}");
    // A process asked directly (in-doubt --participant) is probed the same way.
    let o = cli(&["in-doubt", "--participant", &tls_addr]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("TLS") && out.contains("--tls-ca") && !out.contains("crashed"), "{out}");
    // A participant that could not be asked is an error, not "(none)".
    assert_eq!(o.status.code(), Some(2), "{out}");
    let o = cli(&["status", &tid, "--coordinator", &tls_addr]);
    let e = stderr(&o);
    tls_coordinator.kill();
    assert_eq!(o.status.code(), Some(2), "{e}");
    // The transport reports a failed handshake, or only a closed
    // connection, which the client then probes (the server answers a
    // plaintext preface with a TLS alert).
    assert!(e.contains("TLS") && e.contains("--tls-ca") && !e.contains("crashed"), "{e}");

    // Killed mid-call: the commit waits for partition 1's vote.
    let (a, b) = (tc.key_on(0, "hint"), tc.key_on(1, "hint"));
    // Shared: the CLI commits it by tid (a declaring tid refuses that).
    let txn = tc.client.begin_shared(Some(Duration::from_secs(120))).await.unwrap();
    txn.put(a.as_bytes(), b"1").await.unwrap();
    txn.put(b.as_bytes(), b"1").await.unwrap();
    arm(&tc, FailpointTarget::Partition(1), "participant::before_prepare_durable", "1*sleep(30000)").await;
    let tid = txn.tid().to_string();
    let child = Command::new(env!("CARGO_BIN_EXE_twopc"))
        .args(["commit", "--tid", &tid, "--coordinator", &addr, "--call-budget-ms", "20000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the coordinator is preparing the tid: the Commit is in flight.
    let deadline = Instant::now() + SETTLE;
    loop {
        let txns = tc.client.transactions().await.unwrap();
        if txns.iter().any(|t| t.tid == tid && t.state == "preparing") {
            break;
        }
        assert!(Instant::now() < deadline, "the commit never reached prepare: {txns:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tc.cluster.coordinator.kill();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("closed during the call") && e.contains("outcome of tid"), "{e}");
    assert!(!e.contains("TLS"), "{e}");
    // The data is consistent once the coordinator is back (it presumes abort).
    tc.cluster.restart_coordinator(&[]).unwrap();
    tc.reconnect().await;
    assert!(matches!(tc.client.status(txn.tid()).await.unwrap(), twopc_client::Decision::Aborted { .. }));
}
