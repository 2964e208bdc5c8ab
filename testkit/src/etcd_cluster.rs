//! A real etcd cluster on loopback, as child processes: the replicated
//! store behind the coordinators' decision log in HA mode (PROTOCOL.md rules
//! 14-16), for the tests, `twopc demo --ha` and `twopc bench`.
//!
//! Rules kept:
//! - **Real etcd, never a fake, never skipped.** The `etcd` binary must be on
//!   `PATH` (Debian's `etcd-server`, which `./test` installs); without it
//!   [`EtcdCluster::start`] fails with [`ETCD_NOT_FOUND`], so a machine
//!   lacking etcd fails loudly instead of passing by skipping.
//! - **Loopback only, ports chosen at run time.** Each member gets a client
//!   and a peer port on 127.0.0.1, found free by binding port 0 just before
//!   the start. Another process may grab a port in that window: if a member
//!   then dies on "address already in use", the whole start is retried on
//!   fresh ports (a bounded number of times).
//! - **A new cluster per start.** `--initial-cluster-token` is unique per
//!   start, so members of an earlier cluster (say, a leftover process on a
//!   reused port) can never join this one. The member data directories must
//!   not exist yet: starting "new" on old data would silently mix clusters.
//! - **A restart keeps the member's identity**: same name, data directory
//!   and ports, same flags. etcd 3.4 ignores `--initial-cluster*` when the
//!   data directory already holds a WAL ("restarting local member" in its
//!   log) and rejoins with the membership stored there, so
//!   `--initial-cluster-state existing` is not needed (it is only for a
//!   member *added* to a running cluster on an empty directory).
//! - **etcd's default timing**: heartbeat 100 ms, election timeout 1000 ms,
//!   spelled out so a change of etcd's defaults does not silently change
//!   the tests' failover times.
//! - **Readiness is observed, never assumed**: [`EtcdCluster::wait_healthy`]
//!   polls every live member's `GET /health` (which in etcd 3.4 answers
//!   true only after a quorum read went through) against a deadline.
//! - **Nothing outlives the handle**: every member is a [`Proc`], SIGKILLed
//!   when the handle drops and when this process dies (`PR_SET_PDEATHSIG`).
//!   [`EtcdCluster::start_in_temp`] also removes its data directory, after
//!   the members are dead.
//!
//! The HTTP probes use a plain `std::net::TcpStream` and HTTP/1.0 (no TLS,
//! no client library): etcd serves `/health`, `/metrics` and the v3 JSON
//! gateway (`/v3/kv/...`) on its client URL.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};

use crate::cluster::{Proc, log_tail};

/// The error when there is no etcd to run.
pub const ETCD_NOT_FOUND: &str = "etcd not found on PATH: install Debian's etcd-server package (./test installs it)";

/// How long a fresh cluster may take to elect a leader and answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at a start whose ports were taken by someone else meanwhile.
const START_ATTEMPTS: usize = 3;
/// Time limit of one HTTP probe (connect, send, read the whole answer).
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// etcd's defaults, spelled out (see the module doc).
const HEARTBEAT_MS: u64 = 100;
const ELECTION_MS: u64 = 1000;

/// One member: its fixed identity, and its process while it runs.
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    data: PathBuf,
    log: PathBuf,
    proc: Proc,
}

/// N etcd members on loopback, as child processes.
pub struct EtcdCluster {
    exe: PathBuf,
    dir: PathBuf,
    token: String,
    members: Vec<Member>,
    /// Set by [`EtcdCluster::start_in_temp`]; dropped after the members.
    tmp: Option<tempfile::TempDir>,
}

impl EtcdCluster {
    /// Starts `n` members (3 is the usual size: it survives one failure)
    /// with data and logs under `dir` (`etcd-<i>/` and `etcd-<i>.log`), and
    /// waits until every member reports healthy.
    pub fn start(dir: &Path, n: usize) -> anyhow::Result<EtcdCluster> {
        anyhow::ensure!(n >= 1, "an etcd cluster needs at least one member");
        let exe = find_etcd()?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for i in 0..n {
            let data = member_data(dir, i);
            anyhow::ensure!(
                !data.exists(),
                "{} already exists: EtcdCluster::start creates a new cluster, give it a directory without etcd data",
                data.display()
            );
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut cluster = EtcdCluster::spawn_all(&exe, dir, n)?;
            match cluster.wait_healthy(START_TIMEOUT) {
                Ok(()) => return Ok(cluster),
                Err(e) if attempt < START_ATTEMPTS && cluster.lost_a_port() => {
                    tracing::warn!("etcd start attempt {attempt} lost a port to another process, retrying: {e:#}");
                    cluster.kill_all();
                    for m in &cluster.members {
                        // Only what this attempt created (the data directories did not
                        // exist before), logs included: the next attempt's failure must
                        // be judged on its own log.
                        let _ = std::fs::remove_dir_all(&m.data);
                        let _ = std::fs::remove_file(&m.log);
                    }
                }
                Err(e) => return Err(e.context(format!("the etcd cluster under {} did not start", dir.display()))),
            }
        }
    }

    /// Like [`EtcdCluster::start`], in a new temporary directory that is
    /// removed when the cluster drops (kept, and its path printed, when
    /// `TWOPC_KEEP_TEST_DATA` is set).
    pub fn start_in_temp(n: usize) -> anyhow::Result<EtcdCluster> {
        let tmp = tempfile::Builder::new().prefix("twopc-etcd-").tempdir()?;
        let mut cluster = EtcdCluster::start(tmp.path(), n)?;
        cluster.tmp = Some(tmp);
        Ok(cluster)
    }

    fn spawn_all(exe: &Path, dir: &Path, n: usize) -> anyhow::Result<EtcdCluster> {
        let ports = free_ports(2 * n)?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let token = format!("twopc-{}-{nanos}", std::process::id());
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let client = SocketAddr::from(([127, 0, 0, 1], ports[2 * i]));
            let peer = SocketAddr::from(([127, 0, 0, 1], ports[2 * i + 1]));
            let name = format!("etcd-{i}");
            let log = dir.join(format!("etcd-{i}.log"));
            members.push((name, client, peer, member_data(dir, i), log));
        }
        let initial: Vec<String> =
            members.iter().map(|(name, _, peer, _, _)| format!("{name}=http://{peer}")).collect();
        let initial = initial.join(",");
        let mut cluster =
            EtcdCluster { exe: exe.to_path_buf(), dir: dir.to_path_buf(), token, members: vec![], tmp: None };
        for (name, client, peer, data, log) in members {
            let args = member_args(&name, client, peer, &data, &initial, &cluster.token);
            let proc = Proc::spawn(exe, &args, &log, &name, client)?;
            cluster.members.push(Member { name, client, peer, data, log, proc });
        }
        Ok(cluster)
    }

    /// Number of members (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The directory holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every member's client address, comma-separated, as
    /// `--etcd-endpoints` takes them: `127.0.0.1:P0,127.0.0.1:P1,...`.
    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.client.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Member `i`'s client address.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.members[i].client
    }

    /// Member `i`'s peer (raft) address.
    pub fn peer_addr(&self, i: usize) -> SocketAddr {
        self.members[i].peer
    }

    /// Member `i`'s process id while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].proc.pid()
    }

    /// Member `i`'s log file.
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log
    }

    /// Whether member `i` runs (paused counts as running).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i].proc.is_running()
    }

    /// SIGKILLs member `i` (idempotent).
    pub fn kill(&mut self, i: usize) {
        self.members[i].proc.kill();
    }

    /// Restarts member `i` on its data directory and ports (killing it
    /// first if it still runs). It rejoins as the same member; call
    /// [`EtcdCluster::wait_healthy`] to wait until it has caught up.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.members[i].proc.kill();
        let initial: Vec<String> = self.members.iter().map(|m| format!("{}=http://{}", m.name, m.peer)).collect();
        let m = &self.members[i];
        let args = member_args(&m.name, m.client, m.peer, &m.data, &initial.join(","), &self.token);
        let proc = Proc::spawn(&self.exe, &args, &m.log, &m.name, m.client)?;
        self.members[i].proc = proc;
        Ok(())
    }

    /// Freezes member `i` (SIGSTOP): it keeps its sockets but answers
    /// nothing, as in a long stall; [`EtcdCluster::wait_healthy`] skips it.
    pub fn pause(&mut self, i: usize) {
        self.members[i].proc.pause();
    }

    /// Lets a paused member `i` run again (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        self.members[i].proc.resume();
    }

    /// Waits until every running, unpaused member answers `GET /health`
    /// with `"health":"true"`, polling against `timeout`. Fails at once,
    /// with its log's end, if a member that should run has exited.
    pub fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut unhealthy = Vec::new();
            for i in 0..self.members.len() {
                let m = &mut self.members[i];
                if m.proc.pid().is_none() || m.proc.is_paused() {
                    continue; // killed or paused on purpose
                }
                if !m.proc.is_running() {
                    bail!("{} ({}) exited; its log ends:\n{}", m.name, m.client, log_tail(&m.log, 20));
                }
                match self.health(i) {
                    Ok(true) => {}
                    Ok(false) => unhealthy.push(format!("{}: /health says false", self.members[i].name)),
                    Err(e) => unhealthy.push(format!("{}: {e:#}", self.members[i].name)),
                }
            }
            if unhealthy.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("etcd not healthy within {timeout:?}: {}", unhealthy.join("; "));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One `GET /health` of member `i`: whether it says `"health":"true"`.
    pub fn health(&self, i: usize) -> anyhow::Result<bool> {
        let (status, body) = self.http(i, "GET", "/health", None)?;
        // etcd answers 503 with "false" when unhealthy: that is an answer, not an error.
        Ok(status == 200 && body.replace(' ', "").contains(r#""health":"true""#))
    }

    /// The size of member `i`'s database file, from its `/metrics`
    /// (`etcd_mvcc_db_total_size_in_bytes`).
    pub fn db_size_bytes(&self, i: usize) -> anyhow::Result<u64> {
        let (status, body) = self.http(i, "GET", "/metrics", None)?;
        anyhow::ensure!(status == 200, "{} answered /metrics with HTTP {status}", self.members[i].name);
        metric_value(&body, "etcd_mvcc_db_total_size_in_bytes")
            .ok_or_else(|| anyhow!("{} has no etcd_mvcc_db_total_size_in_bytes in /metrics", self.members[i].name))
    }

    /// One plain-HTTP request to member `i`'s client URL: `(status, body)`.
    /// For `/health`, `/metrics` and the v3 JSON gateway (`POST /v3/kv/put`
    /// with `{"key": base64, "value": base64}`, `POST /v3/kv/range`, ...).
    pub fn http(&self, i: usize, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
        let m = &self.members[i];
        http_request(m.client, method, path, body)
            .with_context(|| format!("{} at {}: {method} {path}", m.name, m.client))
    }

    fn kill_all(&mut self) {
        for m in &mut self.members {
            m.proc.kill();
        }
    }

    /// Whether a member died because a port was taken meanwhile.
    fn lost_a_port(&mut self) -> bool {
        self.members.iter_mut().any(|m| {
            !m.proc.is_running()
                && std::fs::read_to_string(&m.log).unwrap_or_default().contains("address already in use")
        })
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // The members first: nothing may write into the directory being removed.
        self.kill_all();
        if let Some(tmp) = self.tmp.take() {
            if std::env::var_os("TWOPC_KEEP_TEST_DATA").is_some() {
                eprintln!("etcd data kept in {}", tmp.keep().display());
            } else if std::thread::panicking() {
                for m in &self.members {
                    eprintln!("---- {}.log (last 20 lines)\n{}", m.name, log_tail(&m.log, 20));
                }
            }
        }
    }
}

fn member_data(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("etcd-{i}"))
}

fn member_args(
    name: &str,
    client: SocketAddr,
    peer: SocketAddr,
    data: &Path,
    initial_cluster: &str,
    token: &str,
) -> Vec<String> {
    [
        "--name",
        name,
        "--data-dir",
        &data.display().to_string(),
        "--listen-client-urls",
        &format!("http://{client}"),
        "--advertise-client-urls",
        &format!("http://{client}"),
        "--listen-peer-urls",
        &format!("http://{peer}"),
        "--initial-advertise-peer-urls",
        &format!("http://{peer}"),
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-token",
        token,
        // Ignored by etcd 3.4 when the data directory has a WAL (a restart).
        "--initial-cluster-state",
        "new",
        "--heartbeat-interval",
        &HEARTBEAT_MS.to_string(),
        "--election-timeout",
        &ELECTION_MS.to_string(),
        // Structured logs on stderr (the default capnslog logger is deprecated in 3.4).
        "--logger",
        "zap",
        "--log-outputs",
        "stderr",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The `etcd` executable on `PATH`.
fn find_etcd() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or_else(|| anyhow!(ETCD_NOT_FOUND))
}

/// `n` distinct loopback ports free right now (all bound at once, so distinct).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("cannot bind a free port")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// The value of an unlabelled metric in Prometheus text format.
fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        // Gauges may be printed as floats ("2.048e+04").
        rest.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).map(|v| v as u64)
    })
}

/// A minimal HTTP/1.0 client for loopback probes: one request per
/// connection, the whole answer read until the server closes.
fn http_request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
    anyhow::ensure!(addr.ip().is_loopback(), "refusing a non-loopback address {addr}: this client is for local probes");
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let deadline = Instant::now() + HTTP_TIMEOUT;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        anyhow::ensure!(Instant::now() < deadline, "no complete answer within {HTTP_TIMEOUT:?}");
        match stream.read(&mut buf)? {
            0 => break,
            k => answer.extend_from_slice(&buf[..k]),
        }
    }
    parse_response(&answer)
}

/// Splits an HTTP/1.x answer into status and body (dechunked if chunked).
fn parse_response(answer: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("truncated HTTP answer: {text:?}"))?;
    let status_line = head.lines().next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP status line {status_line:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_string() };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or_else(|| anyhow!("truncated chunked body"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| anyhow!("bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        anyhow::ensure!(rest.len() >= size, "truncated chunk");
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_exact_name() {
        let text = "# HELP x\n\
                    etcd_debugging_mvcc_db_total_size_in_bytes 1\n\
                    etcd_mvcc_db_total_size_in_bytes 20480\n\
                    etcd_mvcc_db_total_size_in_use_in_bytes 16384\n";
        assert_eq!(metric_value(text, "etcd_mvcc_db_total_size_in_bytes"), Some(20480));
        assert_eq!(metric_value("m 2.048e+04\n", "m"), Some(20480));
        assert_eq!(metric_value("m_other 3\n", "m"), None);
    }

    #[test]
    fn http_answers_are_parsed_plain_and_chunked() {
        let plain = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{\"health\":\"true\"}";
        assert_eq!(parse_response(plain).unwrap(), (200, "{\"health\":\"true\"}".to_string()));
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (503, "abcdef".to_string()));
        assert!(parse_response(b"HTTP/1.0 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn probes_refuse_non_loopback_addresses() {
        let err = http_request("192.0.2.1:2379".parse().unwrap(), "GET", "/health", None).unwrap_err();
        assert!(err.to_string().contains("non-loopback"), "{err}");
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut ports = free_ports(6).unwrap();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 6);
    }
}
