//! `twopc bench` end to end, briefly: it starts its own cluster, runs each
//! workload for two seconds, exits 0 and writes a JSON report with commits
//! (and, for transfer, a conserved total).

use std::process::{Command, Stdio};

fn bench(workload: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("r.json");
    let out = Command::new(env!("CARGO_BIN_EXE_twopc"))
        .args(["bench", "--workload", workload, "--duration-secs", "2", "--warmup-secs", "0"])
        .args(["--concurrency", "4", "--keys", "200", "--json"])
        .arg(&json)
        .arg("--dir")
        .arg(dir.path().join("cluster"))
        .stdin(Stdio::null())
        .output()
        .expect("run twopc bench");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "bench {workload} failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    let report: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(report["workload"], workload, "{text}");
    assert!(report["committed"].as_u64().unwrap_or(0) > 0, "nothing committed: {text}\nstderr:\n{stderr}");
    assert!(report["floor"]["floor_us"].as_f64().unwrap_or(0.0) > 0.0, "no floor: {text}");
    report
}

#[test]
fn bench_transfer_conserves_money() {
    let report = bench("transfer");
    assert_eq!(report["conserved"], true, "{report:#}");
}

#[test]
fn bench_spread_commits() {
    let report = bench("spread");
    assert!(report["conserved"].is_null(), "{report:#}");
}
