//! Attacks on the web console at the HTTP level, against a real cluster:
//! what a hostile (or merely broken) client on the console's address can
//! do to the console's availability.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twopc::cluster::ClusterOptions;
use twopc_coordinator::console::server::MAX_CONNECTIONS;

/// One `GET /api/status` on a fresh connection: the HTTP status line, or
/// `None` when no answer came within `within`.
async fn status_line(addr: &str, within: Duration) -> Option<String> {
    let call = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET /api/status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        String::from_utf8_lossy(&buf).lines().next().map(str::to_string)
    };
    tokio::time::timeout(within, call).await.ok().flatten()
}

/// A client that declares a request body and never sends it must not hold
/// one of the console's [`MAX_CONNECTIONS`] slots for ever: with every slot
/// it may hold taken that way (MAX_CONNECTIONS tried, the per-client share
/// accepted), the console still answers that address again within a
/// bounded time (the stalled bodies are given up on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_do_not_starve_the_console() {
    let opts = ClusterOptions { partitions: 1, console: true, ..ClusterOptions::default() };
    let tc = TestCluster::start(opts).await;
    let url = tc.cluster.console_url().expect("the console's URL");
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    assert_eq!(status_line(&addr, Duration::from_secs(10)).await.as_deref(), Some("HTTP/1.1 200 OK"));

    // Every slot: an action's headers, then one byte of a 1000-byte body.
    let mut stalled = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /api/abort HTTP/1.1\r\nHost: {addr}\r\nX-Twopc-Console: 1\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    // The console answers again within a bound (it gives up on the bodies),
    // although the stalled clients keep their sockets open.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    let answered = loop {
        if let Some(line) = status_line(&addr, Duration::from_secs(2)).await {
            break Some(line);
        }
        if Instant::now() > deadline {
            break None;
        }
    };
    assert_eq!(
        answered.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "{MAX_CONNECTIONS} clients that never send their declared bodies starve the console ({:?} waited)",
        started.elapsed()
    );
    // Each stalled client was answered (or dropped), not kept waiting.
    for mut s in stalled {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a stalled client's connection is still held");
        let text = String::from_utf8_lossy(&buf);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    drop(tc);
}

/// One action as the page sends it: the status code and the body.
async fn post(addr: &str, path: &str, body: &serde_json::Value) -> (u16, String) {
    let body = body.to_string();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-Twopc-Console: 1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text)
}

/// A `panic` failpoint action unwinds only the task at that step and the
/// process keeps serving with the step half done: armed at
/// `coordinator::after_commit_acked` from the console, it left every
/// transaction committed meanwhile `committing` in the live list for ever
/// (its acknowledgement never recorded), with a deadline minutes in the
/// past. The console (like every other way to arm a point) refuses it and
/// names `return`, which kills the process as a crash does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_failpoint_action_is_refused() {
    let opts = ClusterOptions { partitions: 2, console: true, ..ClusterOptions::default() };
    let tc = TestCluster::start(opts).await;
    let url = tc.cluster.console_url().expect("the console's URL");
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    for (target, name) in
        [(json!("coordinator"), "coordinator::after_commit_acked"), (json!(1), "participant::after_commit_applied")]
    {
        for actions in ["panic", "panic(boom)", "50%panic", "1*sleep(1)->panic"] {
            let arm = json!({ "target": target, "name": name, "actions": actions });
            let (code, text) = post(&addr, "/api/failpoint", &arm).await;
            assert!(code == 400 && text.contains("use return to kill the process"), "{arm}: {text}");
        }
    }
    // Nothing was armed: a transaction over both partitions commits and leaves the live list.
    let (_, outcome) = tc.write_txn(&[(&tc.key_on(0, "p"), "1"), (&tc.key_on(1, "p"), "1")]).await;
    assert_eq!(outcome, twopc_client::Outcome::Committed);
    tc.wait_settled().await;
}

/// `twopc demo --keep-running` promises the web console's URL; with `--ha`
/// it started no console at all and printed none, so a newcomer trying the
/// replicated log had no page (and the "which coordinator leads" view was
/// unreachable). Now every coordinator serves one and the survivors' URLs
/// are printed; one of them leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ha_demo_prints_its_consoles() {
    use tokio::io::AsyncBufReadExt;
    let mut demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_twopc"))
        .args(["demo", "--ha", "--keep-running", "--partitions", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = demo.id().unwrap().to_string();
    // Ctrl-C on every exit path: the demo then stops its processes and removes its directory.
    struct Interrupt(String);
    impl Drop for Interrupt {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill").args(["-INT", &self.0]).status();
        }
    }
    let interrupt = Interrupt(pid);
    let mut lines = tokio::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("press Ctrl-C");
            printed.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    let text = printed.join("\n");
    assert!(matches!(ready, Ok(true)), "the demo did not reach its keep-running state:\n{text}");
    let urls: Vec<String> = printed
        .iter()
        .filter(|l| l.starts_with("or open the web console"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("http://")).map(str::to_string))
        .collect();
    assert_eq!(urls.len(), 2, "the two surviving coordinators' console URLs:\n{text}");
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut roles = Vec::new();
        for url in &urls {
            let addr = url.trim_start_matches("http://").trim_end_matches('/');
            let body = tokio::time::timeout(Duration::from_secs(5), async {
                let mut s = TcpStream::connect(addr).await.ok()?;
                let req = format!("GET /api/status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                s.write_all(req.as_bytes()).await.ok()?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.ok()?;
                Some(String::from_utf8_lossy(&buf).to_string())
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
            roles.push(body);
        }
        if roles.iter().any(|b| b.contains("\"role\":\"leader\""))
            && roles.iter().any(|b| b.contains("\"role\":\"standby\""))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no leader and standby among the printed consoles: {roles:?}\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(interrupt);
    let _ = tokio::time::timeout(Duration::from_secs(30), demo.wait()).await;
}

/// One client (one IP address) that keeps every connection slot busy
/// with requests whose headers never end (each is dropped after the 10 s
/// header timeout, and reopened at once) kept the console from everyone
/// else for as long as it liked, before any token check. A client now gets
/// at most a share of the slots: another address is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_connection_slot() {
    let opts = ClusterOptions { partitions: 1, console: true, ..ClusterOptions::default() };
    let tc = TestCluster::start(opts).await;
    let url = tc.cluster.console_url().expect("the console's URL");
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    // The attacker: from 127.0.0.1, always MAX_CONNECTIONS connections
    // sending a request line and no more (reopened when closed).
    let attacker = tokio::spawn(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        loop {
            held.retain(|s| {
                let mut b = [0u8; 1];
                matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            });
            while held.len() < MAX_CONNECTIONS {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
                let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_millis(200), socket.connect(addr)).await else {
                    break;
                };
                let _ = s.write_all(b"GET /api/status HTTP/1.1\r\n").await;
                held.push(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Another client, from 127.0.0.2, over the next 15 s (past one header timeout).
    let (mut answered, mut refused) = (0, 0);
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let call = async {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind("127.0.0.2:0".parse().unwrap()).ok()?;
            let mut s = socket.connect(addr).await.ok()?;
            s.write_all(format!("GET /api/status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .ok()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.ok()?;
            String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200").then_some(())
        };
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Some(())) => answered += 1,
            _ => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    attacker.abort();
    assert_eq!(
        refused, 0,
        "another client was kept out {refused} times (answered {answered}) by one client's stalled connections"
    );
    drop(tc);
}
