//! Logs stay proportionate (issue 13, kind 9) while a participant waits for
//! its coordinator: it retries registration every couple of seconds,
//! forever, and used to log one warning per retry (43,200 lines a day). At
//! most one line per 10 s, carrying how many retries it stands for.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LINE: &str = "coordinator not reachable; retrying registration";

#[test]
fn registration_retries_log_at_most_one_line_per_10_s() {
    let dir = tempfile::Builder::new().prefix("twopc-register-logs-").tempdir().unwrap();
    // A coordinator address where nobody listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let coordinator = dead.local_addr().unwrap().to_string();
    drop(dead);
    let log = dir.path().join("p0.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twopc"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TWOPC_") || k == "FAILPOINTS" || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .args(["participant", "--partition", "0", "--listen", "127.0.0.1:0", "--coordinator", &coordinator])
        .arg("--data-dir")
        .arg(dir.path().join("p0"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on"), "{line:?}");

    // Wait (polling, bounded) for the second retry line; the retries run
    // every 2 s or so, so 15 s hold several of them.
    let started = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<String> = text.lines().filter(|l| l.contains(LINE)).map(String::from).collect();
        if lines.len() >= 2 || started.elapsed() > Duration::from_secs(15) {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(child);
    assert!(!lines.is_empty(), "no retry logged at all");
    // Within the first 15 s: at most the first line and the one 10 s later,
    // which stands for the retries in between.
    assert!(lines.len() <= 2, "one line per retry:\n{}", lines.join("\n"));
    if let Some(second) = lines.get(1) {
        assert!(!second.contains("suppressed=0"), "{second}");
        assert!(second.contains("suppressed="), "{second}");
    }
}
