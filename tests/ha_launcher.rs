//! `LocalCluster`'s HA mode, end to end on its own side: N coordinators
//! launched with the etcd flags, one log each, the leader found by gRPC
//! health, a killed leader replaced, a paused one not mistaken for a
//! leader, a coordinator restarted by index on its address.
//!
//! The coordinators here are a stand-in, not the real coordinator: this
//! test binary itself (`harness = false`), run as `<exe> coordinator ...`.
//! It checks that it was given the HA flags, checks that the etcd it was
//! pointed at is healthy, prints `listening on ADDR` and serves the
//! standard health service, reporting `twopc.v1.Coordinator` SERVING only
//! while it holds an exclusive `flock` on `<dir>/<cluster-name>.lock`
//! (NOT_SERVING before). The kernel drops the lock when the holder dies,
//! so a killed leader is replaced by a standby, as the lease does for the
//! real coordinators. What the stand-in cannot show (the real election,
//! fencing, standbys' leader hints, participants following the leader) is
//! tested against the real coordinator elsewhere.
//!
//! Every wait polls against a deadline; processes die with their handles.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use tonic_health::ServingStatus;
use twopc::cluster::{ClusterOptions, CoordinatorHealth, HaOptions, LocalCluster};
use twopc::etcd_cluster::EtcdCluster;

const SETTLE: Duration = Duration::from_secs(30);
const LOCK_DIR_ENV: &str = "TWOPC_FAKE_COORDINATOR_LOCK_DIR";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("coordinator") {
        return fake_coordinator(&args[2..]);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("running 1 test");
    rt.block_on(ha_cluster_follows_the_leader());
    println!("test ha_cluster_follows_the_leader ... ok");
}

async fn ha_cluster_follows_the_leader() {
    let dir = tempfile::Builder::new().prefix("twopc-test-").tempdir().unwrap();
    let etcd = tokio::task::block_in_place(|| EtcdCluster::start(&dir.path().join("etcd"), 1)).expect("etcd");
    let opts = ClusterOptions {
        partitions: 2,
        // No participants: the stand-in serves no Coordinator service to register with.
        start_partitions: Some(0),
        env: vec![(LOCK_DIR_ENV.into(), dir.path().display().to_string())],
        ha: Some(HaOptions { cluster_name: "launcher".into(), ..HaOptions::new(etcd.endpoints()) }),
        ..ClusterOptions::default()
    };
    let exe = std::env::current_exe().unwrap();
    let mut cluster = tokio::task::block_in_place(|| LocalCluster::start(&exe, dir.path(), opts)).expect("cluster");
    assert!(cluster.is_ha());
    assert_eq!(cluster.coordinator_count(), 3);
    let addrs = cluster.coordinator_addrs();
    assert_eq!(cluster.coordinator_addr(), addrs.join(","), "participants and clients get the whole list");
    for i in 0..3 {
        assert!(cluster.coordinator_log(i).ends_with(format!("coordinator-{i}.log")));
        assert!(cluster.coordinator_log(i).is_file());
    }

    let first = cluster.leader(SETTLE).await.expect("one leader");
    let standbys: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    for &i in &standbys {
        assert_eq!(cluster.coordinator_health(i).await, CoordinatorHealth::NotServing("NOT_SERVING".into()));
    }

    // A paused leader is neither a leader nor replaced (it still holds the lock).
    cluster.pause_coordinator(first);
    assert_eq!(cluster.coordinator_health(first).await, CoordinatorHealth::Down);
    let err = cluster.leader(Duration::from_millis(300)).await.unwrap_err().to_string();
    assert!(err.contains("no single leading coordinator"), "{err}");
    cluster.resume_coordinator(first);
    assert_eq!(cluster.leader(SETTLE).await.unwrap(), first);

    // A killed leader is replaced by a standby.
    cluster.kill_coordinator(first);
    let second = cluster.leader(SETTLE).await.expect("a standby takes over");
    assert!(standbys.contains(&second), "{second} not in {standbys:?}");

    // Restarted by index on its address, the old leader comes back as a standby.
    tokio::task::block_in_place(|| cluster.restart_coordinator_i(first, &[])).unwrap();
    assert_eq!(cluster.coordinator_addrs(), addrs, "addresses survive restarts");
    let deadline = std::time::Instant::now() + SETTLE;
    while cluster.coordinator_health(first).await != CoordinatorHealth::NotServing("NOT_SERVING".into()) {
        assert!(std::time::Instant::now() < deadline, "the restarted coordinator never answered health");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cluster.leader(SETTLE).await.unwrap(), second);
    drop(cluster);
    drop(etcd);
}

/// The stand-in coordinator (see the module doc).
fn fake_coordinator(args: &[String]) {
    let flag = |name: &str| -> String {
        let i = args.iter().position(|a| a == name).unwrap_or_else(|| panic!("{name} missing from {args:?}"));
        args[i + 1].clone()
    };
    assert_eq!(flag("--decision-log"), "etcd");
    let name = flag("--cluster-name");
    let ttl: u64 = flag("--lease-ttl-secs").parse().unwrap();
    assert!(ttl >= 2);
    assert!(!args.contains(&"--data-dir".to_string()), "HA mode keeps the decision log in etcd: {args:?}");
    let endpoints = flag("--etcd-endpoints");
    let first: std::net::SocketAddr = endpoints.split(',').next().unwrap().parse().unwrap();
    let (status, body) = twopc::etcd_cluster::http_request(first, "GET", "/health", None).unwrap();
    assert!(status == 200 && body.contains("true"), "etcd at {first} unhealthy: {body}");

    let lock_path = PathBuf::from(std::env::var(LOCK_DIR_ENV).unwrap()).join(format!("{name}.lock"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(flag("--listen")).await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_service_status("twopc.v1.Coordinator", ServingStatus::NotServing).await;
        tokio::spawn(async move {
            let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).unwrap();
            // Blocks until the current holder dies; the lock is then ours until we do.
            tokio::task::spawn_blocking(move || {
                // SAFETY: flock on a file descriptor we own, kept open (leaked) for the process's life.
                assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
                std::mem::forget(file);
            })
            .await
            .unwrap();
            reporter.set_service_status("twopc.v1.Coordinator", ServingStatus::Serving).await;
        });
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
}
