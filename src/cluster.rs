//! Real processes on loopback: a coordinator and N participants started from
//! the `twopc` binary, each on a port it picks itself (port 0) and reports
//! on its `listening on ADDR` line, with data under one directory.
//!
//! Used by `twopc demo` and by the integration tests, so both exercise the
//! very binaries an operator runs. Every child is killed (SIGKILL) when its
//! handle drops, and also when the process that started it dies
//! (`PR_SET_PDEATHSIG`), so a failing or killed test leaves nothing behind.
//! A restarted coordinator reuses its address (participants are configured
//! with it); a restarted participant takes a new port and re-registers,
//! keeping its partition and data.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

/// How long a process may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One running child process of the `twopc` binary.
pub struct Proc {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub name: String,
}

impl Proc {
    /// Starts `exe args` with `env`, stderr appended to `log`, and waits for
    /// its readiness line.
    pub fn start(
        exe: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
        name: &str,
    ) -> anyhow::Result<Proc> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open log {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: prctl is async-signal-safe; it only sets a flag on the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("cannot start {}", exe.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        // Reads the readiness line, then keeps draining stdout so the child never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let mut proc = Proc { child: Some(child), addr: "0.0.0.0:0".parse().unwrap(), name: name.to_string() };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => {
                proc.addr = addr.parse().with_context(|| format!("{name} printed a bad address {addr:?}"))?;
                Ok(proc)
            }
            Err(_) => {
                proc.kill();
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                let tail: String =
                    tail.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                bail!("{name} did not become ready within {START_TIMEOUT:?}; its log ends:\n{tail}")
            }
        }
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the process to stop gracefully (SIGTERM).
    pub fn terminate(&mut self) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// Whether the process is still running (false once it exited or was killed).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits until the process exits by itself (e.g. killed by a failpoint).
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                self.kill();
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Settings of a local cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub partitions: u32,
    /// Extra coordinator flags (e.g. `--prepare-timeout-ms 500`).
    pub coordinator_args: Vec<String>,
    /// Extra participant flags.
    pub participant_args: Vec<String>,
    /// Start participants only for partitions below this (default: all).
    pub start_partitions: Option<u32>,
    /// Environment of every process, e.g. `TWOPC_TLS_CERT` and the other
    /// TLS files, `TWOPC_ADMIN_TOKEN` or `TWOPC_PEER_TOKEN` (the cluster's
    /// shared secret: the launcher itself never needs it); a restart's own
    /// variables come after.
    pub env: Vec<(String, String)>,
    /// How the launcher itself reaches the cluster (to wait for the
    /// participants to register): must match `env` when it turns on TLS or a token.
    pub client: twopc_client::ConnectOptions,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            partitions: 3,
            coordinator_args: vec![],
            participant_args: vec![],
            start_partitions: None,
            env: vec![],
            client: twopc_client::ConnectOptions::default(),
        }
    }
}

/// A coordinator and its participants, as child processes.
pub struct LocalCluster {
    pub dir: PathBuf,
    exe: PathBuf,
    opts: ClusterOptions,
    pub coordinator: Proc,
    pub participants: Vec<Proc>,
}

impl LocalCluster {
    /// Starts a coordinator and `opts.partitions` participants of binary
    /// `exe`, with data and logs under `dir`.
    pub fn start(exe: &Path, dir: &Path, opts: ClusterOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let coordinator = start_coordinator(exe, dir, &opts, "127.0.0.1:0", &[])?;
        let mut cluster =
            LocalCluster { dir: dir.to_path_buf(), exe: exe.to_path_buf(), opts, coordinator, participants: vec![] };
        for p in 0..cluster.opts.start_partitions.unwrap_or(cluster.opts.partitions) {
            let proc = cluster.spawn_participant(p, &[])?;
            cluster.participants.push(proc);
        }
        Ok(cluster)
    }

    /// How to reach this cluster (TLS, admin token), as configured.
    pub fn connect_options(&self) -> &twopc_client::ConnectOptions {
        &self.opts.client
    }

    /// Number of partitions of the cluster (participants may be fewer).
    pub fn partitions(&self) -> u32 {
        self.opts.partitions
    }

    pub fn coordinator_addr(&self) -> String {
        self.coordinator.addr.to_string()
    }

    /// Restarts the coordinator on the same address and data directory.
    pub fn restart_coordinator(&mut self, env: &[(String, String)]) -> anyhow::Result<()> {
        self.coordinator.kill();
        let addr = self.coordinator_addr();
        // The port was ours a moment ago; retry briefly in case the kernel
        // has not released it yet.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match start_coordinator(&self.exe, &self.dir, &self.opts, &addr, env) {
                Ok(p) => {
                    self.coordinator = p;
                    return Ok(());
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!("coordinator restart failed, retrying: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Restarts participant `p` on its data directory (at a new port).
    pub fn restart_participant(&mut self, p: u32, env: &[(String, String)]) -> anyhow::Result<()> {
        self.participants[p as usize].kill();
        let proc = self.spawn_participant(p, env)?;
        self.participants[p as usize] = proc;
        Ok(())
    }

    fn spawn_participant(&self, p: u32, env: &[(String, String)]) -> anyhow::Result<Proc> {
        self.spawn_participant_with(p, &self.coordinator_addr(), env)
    }

    /// Starts participant `p` on its data directory (at a new port) with
    /// `--coordinator coordinators` (one address, or a list `A,B,C` to
    /// follow the leader among), and returns it; the caller puts it in
    /// `participants` (index `p`) to have it waited for and cleaned up.
    pub fn spawn_participant_with(&self, p: u32, coordinators: &str, env: &[(String, String)]) -> anyhow::Result<Proc> {
        let data = self.dir.join(format!("p{p}"));
        let mut args: Vec<String> = vec![
            "participant".into(),
            "--partition".into(),
            p.to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--coordinator".into(),
            coordinators.to_string(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        args.extend(self.opts.participant_args.iter().cloned());
        let env = [&self.opts.env[..], env].concat();
        Proc::start(&self.exe, &args, &env, &self.dir.join(format!("p{p}.log")), &format!("participant {p}"))
    }
}

fn start_coordinator(
    exe: &Path,
    dir: &Path,
    opts: &ClusterOptions,
    listen: &str,
    env: &[(String, String)],
) -> anyhow::Result<Proc> {
    let mut args: Vec<String> = vec![
        "coordinator".into(),
        "--listen".into(),
        listen.into(),
        "--partitions".into(),
        opts.partitions.to_string(),
        "--data-dir".into(),
        dir.join("coordinator").display().to_string(),
    ];
    args.extend(opts.coordinator_args.iter().cloned());
    let env = [&opts.env[..], env].concat();
    Proc::start(exe, &args, &env, &dir.join("coordinator.log"), "coordinator")
}

impl LocalCluster {
    /// Waits (polling against a deadline) until the coordinator's topology
    /// lists every participant at its current address.
    pub async fn wait_registered(&self, timeout: Duration) -> anyhow::Result<()> {
        use twopc_proto::pb::{GetTopologyRequest, coordinator_client::CoordinatorClient};
        let want: Vec<(u32, String)> =
            self.participants.iter().enumerate().map(|(p, proc)| (p as u32, proc.addr.to_string())).collect();
        let deadline = Instant::now() + timeout;
        let mut last = String::from("coordinator not reachable");
        let endpoint = self.opts.client.tls.endpoint(&self.coordinator_addr()).map_err(|e| anyhow!(e))?;
        while Instant::now() < deadline {
            let topology = match endpoint.connect().await {
                Ok(channel) => CoordinatorClient::new(channel)
                    .get_topology(GetTopologyRequest {})
                    .await
                    .map_err(|s| format!("{}: {}", s.code(), s.message())),
                Err(e) => Err(format!("{e:?}")),
            };
            match topology {
                Ok(t) => {
                    let got: Vec<(u32, String)> =
                        t.into_inner().members.into_iter().map(|m| (m.partition, m.address)).collect();
                    if want.iter().all(|w| got.contains(w)) {
                        return Ok(());
                    }
                    last = format!("registered: {got:?}, expected {want:?}");
                }
                Err(e) => last = format!("coordinator not reachable: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("participants did not register within {timeout:?}: {last}")
    }
}
