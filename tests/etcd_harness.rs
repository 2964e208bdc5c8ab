//! The etcd harness itself, on real etcd (`twopc::etcd_cluster`): three
//! members on run-time loopback ports, a key written through one member's v3
//! JSON gateway and read back through another's, a member SIGKILLed (the
//! other two keep a quorum and stay healthy) and restarted on its data (it
//! rejoins and is healthy again), a paused member, the database size from
//! `/metrics`, and nothing left behind on drop: no process, no directory.
//!
//! Every wait polls against a deadline. etcd must be installed (`./test`
//! installs it): these tests fail without it, they never skip.

use std::time::Duration;

use twopc::etcd_cluster::EtcdCluster;

const HEALTHY: Duration = Duration::from_secs(30);

/// Standard base64 (the v3 gateway's encoding of keys and values).
fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `POST path body` through `member` until it answers 200 (an election under
/// load can fail a request: "leader changed"), against a deadline.
fn post(etcd: &EtcdCluster, member: usize, path: &str, body: &str) -> String {
    let deadline = std::time::Instant::now() + HEALTHY;
    loop {
        let answer = etcd.http(member, "POST", path, Some(body));
        match answer {
            Ok((200, text)) => return text,
            _ if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("{path} through member {member}: {other:?}"),
        }
    }
}

fn put(etcd: &EtcdCluster, member: usize, key: &str, value: &str) {
    let body = serde_json::json!({ "key": b64(key.as_bytes()), "value": b64(value.as_bytes()) }).to_string();
    post(etcd, member, "/v3/kv/put", &body);
}

/// The value of `key` (base64, as the gateway returns it), read through `member`.
fn get(etcd: &EtcdCluster, member: usize, key: &str) -> Option<String> {
    let body = serde_json::json!({ "key": b64(key.as_bytes()) }).to_string();
    let v: serde_json::Value = serde_json::from_str(&post(etcd, member, "/v3/kv/range", &body)).unwrap();
    v["kvs"][0]["value"].as_str().map(str::to_string)
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[test]
fn b64_matches_the_standard_alphabet() {
    assert_eq!(b64(b""), "");
    assert_eq!(b64(b"f"), "Zg==");
    assert_eq!(b64(b"fo"), "Zm8=");
    assert_eq!(b64(b"foo"), "Zm9v");
    assert_eq!(b64(b"foobar"), "Zm9vYmFy");
}

#[test]
fn three_members_survive_a_killed_member_and_take_it_back() {
    let mut etcd = EtcdCluster::start_in_temp(3).expect("etcd starts");
    assert_eq!(etcd.len(), 3);
    let endpoints = etcd.endpoints();
    let addrs: Vec<&str> = endpoints.split(',').collect();
    assert_eq!(addrs.len(), 3, "{endpoints}");
    for (i, a) in addrs.iter().enumerate() {
        assert!(a.starts_with("127.0.0.1:"), "{a}");
        assert_eq!(*a, etcd.client_addr(i).to_string());
    }
    // `start` returned: every member answered /health true.

    // Replicated: written through member 0, read through member 2.
    put(&etcd, 0, "/twopc/harness/k", "v1");
    assert_eq!(get(&etcd, 2, "/twopc/harness/k"), Some(b64(b"v1")));
    assert_eq!(get(&etcd, 1, "/twopc/harness/absent"), None);
    assert!(etcd.db_size_bytes(1).unwrap() > 0);

    // One member down: the other two keep a quorum, stay healthy and take writes.
    etcd.kill(1);
    assert!(!etcd.is_running(1));
    assert!(etcd.health(1).is_err(), "a killed member answers nothing");
    // Polls members 0 and 2 (the killed one is skipped) until both say healthy.
    etcd.wait_healthy(HEALTHY).expect("two of three stay healthy");
    put(&etcd, 2, "/twopc/harness/k", "v2");

    // Restarted on its data and ports, it rejoins as the same member and catches up.
    etcd.restart(1).unwrap();
    etcd.wait_healthy(HEALTHY).expect("healthy again after the restart (member 1 included)");
    // The gateway's range is linearizable (ReadIndex): the restarted member
    // answers only once it has applied everything committed before the read.
    assert_eq!(get(&etcd, 1, "/twopc/harness/k"), Some(b64(b"v2")));
    let log = std::fs::read_to_string(etcd.log_path(1)).unwrap();
    assert!(log.contains("restarting local member"), "a restart on existing data rejoins as the same member");
}

#[test]
fn a_paused_member_is_skipped_and_resumes() {
    let mut etcd = EtcdCluster::start_in_temp(3).expect("etcd starts");
    etcd.pause(0);
    // Frozen: it accepts the TCP connection (kernel backlog) but never answers.
    assert!(etcd.health(0).is_err());
    etcd.wait_healthy(HEALTHY).expect("the two others stay healthy");
    put(&etcd, 1, "/twopc/harness/p", "x");
    etcd.resume(0);
    etcd.wait_healthy(HEALTHY).expect("healthy again after SIGCONT (member 0 included)");
}

#[test]
fn dropping_the_cluster_kills_every_member_and_removes_its_directory() {
    let etcd = EtcdCluster::start_in_temp(3).expect("etcd starts");
    let dir = etcd.dir().to_path_buf();
    let pids: Vec<u32> = (0..3).map(|i| etcd.pid(i).unwrap()).collect();
    assert!(dir.join("etcd-0").is_dir() && dir.join("etcd-2.log").is_file());
    assert!(pids.iter().all(|&p| process_exists(p)));
    drop(etcd);
    // SIGKILL and reap happen inside drop: nothing to wait for.
    for p in pids {
        assert!(!process_exists(p), "etcd member pid {p} survived the drop");
    }
    assert!(!dir.exists(), "{} survived the drop", dir.display());
}

#[test]
fn a_given_directory_is_kept_and_not_reused_for_a_new_cluster() {
    let tmp = tempfile::Builder::new().prefix("twopc-etcd-given-").tempdir().unwrap();
    let etcd = EtcdCluster::start(tmp.path(), 1).expect("a one-member cluster starts");
    drop(etcd);
    // The caller's directory (the demo's --dir) keeps the data and logs...
    assert!(tmp.path().join("etcd-0").is_dir());
    // ...and a new cluster refuses to start on it rather than mix clusters.
    let err = EtcdCluster::start(tmp.path(), 1).err().expect("refused").to_string();
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn without_etcd_on_path_the_start_fails_with_the_install_hint() {
    // Run in a child test process so PATH is changed for it alone.
    if std::env::var_os("TWOPC_ETCD_HARNESS_NO_PATH").is_some() {
        let err = EtcdCluster::start_in_temp(1).err().expect("must fail without etcd").to_string();
        assert_eq!(err, twopc::etcd_cluster::ETCD_NOT_FOUND);
        return;
    }
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "without_etcd_on_path_the_start_fails_with_the_install_hint", "--nocapture"])
        .env("TWOPC_ETCD_HARNESS_NO_PATH", "1")
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 passed"), "{stdout}");
}

/// The launcher's coordinator handling that HA mode builds on, checked on a
/// single coordinator (whose health is SERVING): `leader()` finds it by
/// polling gRPC health, a paused coordinator really answers nothing and is
/// not taken for a leader, and one killed and restarted by index leads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launcher_finds_pauses_kills_and_restarts_a_coordinator_by_index() {
    use twopc::cluster::{ClusterOptions, CoordinatorHealth, LocalCluster};
    let dir = tempfile::Builder::new().prefix("twopc-test-").tempdir().unwrap();
    let opts = ClusterOptions { partitions: 1, ..Default::default() };
    let mut cluster = tokio::task::block_in_place(|| {
        LocalCluster::start(env!("CARGO_BIN_EXE_twopc").as_ref(), dir.path(), opts).expect("cluster")
    });
    cluster.wait_registered(HEALTHY).await.unwrap();
    assert!(!cluster.is_ha());
    assert_eq!(cluster.coordinator_count(), 1);
    assert_eq!(cluster.coordinator_addrs(), vec![cluster.coordinator_addr()]);
    assert_eq!(cluster.leader(HEALTHY).await.unwrap(), 0);

    cluster.pause_coordinator(0);
    assert_eq!(cluster.coordinator_health(0).await, CoordinatorHealth::Down);
    // Frozen for real: a health check straight at it gets no answer.
    let frozen = tokio::time::timeout(Duration::from_millis(500), async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.coordinator_addr()))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest { service: "twopc.v1.Coordinator".into() })
            .await
            .map(|r| r.into_inner().status())
            .map_err(|s| s.to_string())
    })
    .await;
    assert!(frozen.is_err(), "a SIGSTOPped coordinator answered: {frozen:?}");
    let err = cluster.leader(Duration::from_millis(300)).await.unwrap_err().to_string();
    assert!(err.contains("no single leading coordinator"), "{err}");
    cluster.resume_coordinator(0);
    assert_eq!(cluster.leader(HEALTHY).await.unwrap(), 0);

    let addr = cluster.coordinator_addr();
    cluster.kill_coordinator(0);
    assert_eq!(cluster.coordinator_health(0).await, CoordinatorHealth::Down);
    tokio::task::block_in_place(|| cluster.restart_coordinator_i(0, &[])).unwrap();
    assert_eq!(cluster.coordinator_addr(), addr, "a restarted coordinator keeps its address");
    assert_eq!(cluster.leader(HEALTHY).await.unwrap(), 0);
    assert!(cluster.coordinator_log(0).ends_with("coordinator.log"));
}
