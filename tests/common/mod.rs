//! Shared harness of the integration tests: a real cluster of `twopc`
//! processes on loopback ports chosen at run time, data in a temporary
//! directory, a client, and the checks of PROTOCOL.md's invariants. Clusters
//! are started and settled by the test kit (`twopc-testkit`), so every
//! test exercises it.
//!
//! Every wait polls a condition against a deadline; nothing sleeps and
//! hopes. Processes die with their handles (and with the test process), and
//! the temporary directory goes with the harness, also when a test fails.
//! Set `TWOPC_KEEP_TEST_DATA=1` to keep the directory (logs included).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use twopc::cluster::{ClusterOptions, HaOptions, LocalCluster};
use twopc::etcd_cluster::EtcdCluster;
use twopc_client::{Client, ConnectOptions, Decision, FailpointTarget, Outcome, partition_for};

pub const SETTLE: Duration = Duration::from_secs(30);

pub struct TestCluster {
    pub cluster: LocalCluster,
    pub client: Client,
    /// HA mode ([`TestCluster::start_ha`]): the etcd holding the decision
    /// log. Dropped after the cluster (coordinators first), before the directory.
    pub etcd: Option<EtcdCluster>,
    dir: Option<tempfile::TempDir>,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::env::var_os("TWOPC_KEEP_TEST_DATA").is_some() {
            if let Some(d) = self.dir.take() {
                eprintln!("test data kept in {}", d.keep().display());
            }
        } else if std::thread::panicking() {
            // Show the processes' logs of a failing test.
            print_logs(&self.cluster, self.etcd.as_ref());
        }
    }
}

/// The end of every process's log (coordinators, participants, etcd members).
pub fn print_logs(cluster: &LocalCluster, etcd: Option<&EtcdCluster>) {
    let mut logs: Vec<std::path::PathBuf> = vec![cluster.dir.join("coordinator.log")];
    if cluster.is_ha() {
        logs = (0..cluster.coordinator_count()).map(|i| cluster.coordinator_log(i)).collect();
    }
    logs.extend((0..cluster.partitions()).map(|p| cluster.dir.join(format!("p{p}.log"))));
    if let Some(etcd) = etcd {
        logs.extend((0..etcd.len()).map(|i| etcd.log_path(i).to_path_buf()));
    }
    for path in logs {
        if let Ok(log) = std::fs::read_to_string(&path) {
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            eprintln!("---- {name} (last {} lines)\n{}", tail.len(), tail.join("\n"));
        }
    }
}

/// The failpoint action that SIGKILLs the process at that step.
pub const KILL: &str = "return(abort)";
/// How long a process armed with [`KILL`] may take to reach the step and die.
pub const EXIT: Duration = Duration::from_secs(20);

/// Arms (or with `""` disarms) a failpoint over the admin RPC.
pub async fn arm(tc: &TestCluster, target: FailpointTarget, name: &str, actions: &str) {
    tc.client.set_failpoint(target, name, actions).await.unwrap();
}

/// Waits for the coordinator a failpoint killed, restarts it on its data.
pub async fn restart_coordinator(tc: &mut TestCluster) {
    assert!(tc.cluster.coordinator.wait_exit(EXIT), "the failpoint should have killed the coordinator");
    tc.cluster.restart_coordinator(&[]).unwrap();
    tc.reconnect().await;
}

/// Waits for the participant a failpoint killed, restarts it on its data.
pub async fn restart_participant(tc: &mut TestCluster, p: u32) {
    assert!(tc.cluster.participants[p as usize].wait_exit(EXIT), "the failpoint should have killed partition {p}");
    tc.cluster.restart_participant(p, &[]).unwrap();
    tc.reconnect().await;
}

pub fn fp(spec: &str) -> Vec<(String, String)> {
    vec![("FAILPOINTS".to_string(), spec.to_string())]
}

impl TestCluster {
    /// A raw gRPC client of the coordinator (for requests the library
    /// never sends, e.g. a lying declaration), with the cluster's TLS.
    pub async fn raw_coordinator(
        &self,
    ) -> twopc_proto::pb::coordinator_client::CoordinatorClient<tonic::transport::Channel> {
        let addr = self.cluster.coordinator_addr();
        let channel = self.cluster.connect_options().tls.endpoint(&addr).unwrap().connect().await.unwrap();
        twopc_proto::pb::coordinator_client::CoordinatorClient::new(channel)
    }

    /// A raw gRPC client of partition `p`'s participant, with the cluster's TLS.
    pub async fn raw_participant(
        &self,
        p: u32,
    ) -> twopc_proto::pb::participant_client::ParticipantClient<tonic::transport::Channel> {
        let addr = self.cluster.participants[p as usize].addr.to_string();
        let channel = self.cluster.connect_options().tls.endpoint(&addr).unwrap().connect().await.unwrap();
        twopc_proto::pb::participant_client::ParticipantClient::new(channel)
    }

    /// A cluster started by the test kit (`twopc_testkit::Cluster`) from
    /// `opts`, taken apart into this harness's fields.
    pub async fn start(opts: ClusterOptions) -> Self {
        assert!(opts.ha.is_none(), "HA mode: use TestCluster::start_ha");
        Self::from_kit(opts).await
    }

    /// HA mode: a 3-member etcd in the test's directory, then the cluster
    /// with `opts.ha` (default [`HaOptions::new`]: 3 coordinators) pointed
    /// at it (its `etcd_endpoints` are replaced by this etcd's); waits for a
    /// leader and for the participants to register, and connects a client
    /// given every coordinator's address.
    pub async fn start_ha(mut opts: ClusterOptions) -> Self {
        let mut ha = opts.ha.take().unwrap_or_else(|| HaOptions::new(""));
        // Empty: the kit starts the etcd.
        ha.etcd_endpoints = String::new();
        opts.ha = Some(ha);
        Self::from_kit(opts).await
    }

    async fn from_kit(opts: ClusterOptions) -> Self {
        let kit = twopc_testkit::Cluster::builder()
            .binary(env!("CARGO_BIN_EXE_twopc"))
            .options(opts)
            .start()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let parts = kit.into_parts();
        TestCluster { cluster: parts.local, client: parts.client, etcd: parts.etcd, dir: parts.temp_dir }
    }

    pub async fn three() -> Self {
        Self::start(ClusterOptions::default()).await
    }

    pub fn partitions(&self) -> u32 {
        self.cluster.partitions()
    }

    /// A key named after `name` that lives on partition `p`.
    pub fn key_on(&self, p: u32, name: &str) -> String {
        assert!(p < self.partitions(), "no partition {p}");
        (0..).map(|i| format!("{name}-{i}")).find(|k| partition_for(k.as_bytes(), self.partitions()) == p).unwrap()
    }

    /// A fresh client (after restarts, so it sees the new topology).
    pub async fn reconnect(&mut self) {
        self.cluster.wait_registered(SETTLE).await.expect("participants register again");
        self.client = connect_until(&self.cluster.coordinator_addr(), self.cluster.connect_options()).await;
    }

    pub async fn read(&self, key: &str) -> Option<String> {
        self.client.read(key.as_bytes()).await.expect("plain read").map(|v| String::from_utf8(v).unwrap())
    }

    /// Polls a plain read until it returns `want`.
    pub async fn wait_value(&self, key: &str, want: Option<&str>) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let got = self.client.read(key.as_bytes()).await.ok().flatten();
            let got = got.map(|v| String::from_utf8(v).unwrap());
            if got.as_deref() == want {
                return;
            }
            assert!(Instant::now() < deadline, "key {key}: wanted {want:?}, still {got:?} after {SETTLE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the coordinator answers `want` about `tid`.
    pub async fn wait_decision(&self, tid: uuid::Uuid, want: fn(&Decision) -> bool) -> Decision {
        let deadline = Instant::now() + SETTLE;
        loop {
            if let Ok(d) = self.client.status(tid).await {
                if want(&d) {
                    return d;
                }
                assert!(Instant::now() < deadline, "tid {tid}: decision still {d:?}");
            }
            assert!(Instant::now() < deadline, "tid {tid}: coordinator not answering");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Liveness after recovery (PROTOCOL.md): polls until no participant
    /// holds a prepared tid, an open tid or a lock, and the coordinator has
    /// no unfinished transaction (the kit's settle).
    pub async fn wait_settled(&self) {
        let addrs: Vec<String> = self.cluster.participants.iter().map(|p| p.addr.to_string()).collect();
        let options = self.cluster.connect_options();
        if let Err(e) = twopc_testkit::settle::settle(&self.client, &addrs, options, SETTLE).await {
            panic!("{e}");
        }
    }

    /// Begins, writes every `(key, value)`, commits; returns the tid and outcome.
    pub async fn write_txn(&self, writes: &[(&str, &str)]) -> (uuid::Uuid, Outcome) {
        let txn = self.client.begin(Some(Duration::from_secs(30))).await.expect("begin");
        for (k, v) in writes {
            txn.put(k.as_bytes(), v.as_bytes()).await.expect("put");
        }
        let outcome = txn.commit().await.expect("commit answers");
        (txn.tid(), outcome)
    }
}

/// A loopback port free right now (for `--metrics-listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The Prometheus text a process serves on `port`: a plain HTTP/1.0 GET
/// (the exporter answers any path).
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Connects, retrying while the coordinator is restarting.
pub async fn connect_until(addr: &str, options: &ConnectOptions) -> Client {
    let deadline = Instant::now() + SETTLE;
    loop {
        match Client::connect_with(addr, options.clone()).await {
            Ok(c) => return c,
            Err(e) => assert!(Instant::now() < deadline, "cannot connect to {addr}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Atomicity check: the values of `keys` are all `Some(value)` or all absent.
pub async fn all_or_nothing(tc: &TestCluster, keys: &[&str], value: &str) -> bool {
    let mut seen = vec![];
    for k in keys {
        seen.push(tc.read(k).await);
    }
    let all = seen.iter().all(|v| v.as_deref() == Some(value));
    let none = seen.iter().all(|v| v.is_none());
    assert!(all || none, "half-committed: {keys:?} = {seen:?}");
    all
}

/// Runs the `twopc` CLI with `args` against `tc`'s coordinator.
pub fn twopc_cli(tc: &TestCluster, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_twopc"))
        .args(args)
        .env("TWOPC_COORDINATOR", tc.cluster.coordinator_addr())
        .output()
        .expect("run twopc")
}

/// A CLI run's exit code, stdout and stderr, for assertion messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A test PKI written to `dir`: a CA and one certificate for `localhost`
/// and 127.0.0.1, usable as server and client (mutual TLS).
pub struct Pki {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

pub fn pki(dir: &std::path::Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa, Issuer, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "twopc test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(params, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let pki = Pki { ca: dir.join("ca.pem"), cert: dir.join("node.pem"), key: dir.join("node-key.pem"), ca_pem };
    std::fs::write(&pki.ca, &pki.ca_pem).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}
