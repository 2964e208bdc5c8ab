//! The `twopc` CLI against a real cluster: outcomes and errors are printed
//! clearly, and the exit code says what happened (0 ok/COMMITTED, 1
//! ABORTED, 2 error; 3 FORGOTTEN is covered by tests/honest_answers.rs).

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::*;

fn twopc(tc: &TestCluster, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twopc"));
    cmd.args(args)
        .env("TWOPC_COORDINATOR", tc.cluster.coordinator_addr())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run twopc");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("twopc output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_runs_transactions_and_reports_errors() {
    let tc = TestCluster::three().await;
    let (a, b) = (tc.key_on(0, "cli"), tc.key_on(2, "cli"));

    // One transaction from arguments.
    let put_a = format!("put {a} 1");
    let put_b = format!("put {b} 2");
    let get_a = format!("get {a}");
    let o = twopc(&tc, &["run", &put_a, &put_b, &get_a], None);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("COMMITTED"), "{}", stdout(&o));
    assert!(stdout(&o).contains(&format!("{a} = 1")), "{}", stdout(&o));
    tc.wait_value(&b, Some("2")).await;

    // One transaction from a script on stdin.
    let script = format!("# move one\nput {a} 0\n\nput {b} 3\n");
    let o = twopc(&tc, &["run"], Some(&script));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    tc.wait_value(&a, Some("0")).await;

    // Step by step across invocations: the tid is all the state there is.
    let o = twopc(&tc, &["begin"], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let tid = stdout(&o).lines().next().unwrap().trim().to_string();
    assert_eq!(twopc(&tc, &["put", "--tid", &tid, &a, "9"], None).status.code(), Some(0));
    let o = twopc(&tc, &["get", "--tid", &tid, &a], None);
    assert!(stdout(&o).contains('9'), "{}", stdout(&o));
    let o = twopc(&tc, &["commit", "--tid", &tid], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("COMMITTED"));
    let o = twopc(&tc, &["status", &tid], None);
    assert!(stdout(&o).contains("COMMITTED"), "{}", stdout(&o));
    tc.wait_value(&a, Some("9")).await;
    let o = twopc(&tc, &["read", &a], None);
    assert_eq!(stdout(&o).trim(), "9");

    // An aborted transaction exits 1 and says so.
    let o = twopc(&tc, &["begin"], None);
    let tid = stdout(&o).lines().next().unwrap().trim().to_string();
    assert_eq!(twopc(&tc, &["abort", "--tid", &tid], None).status.code(), Some(0));
    let o = twopc(&tc, &["commit", "--tid", &tid], None);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("ABORTED"), "{}", stdout(&o));

    // Errors exit 2 with the status code and an actionable message.
    let o = twopc(&tc, &["commit", "--tid", "not-a-uuid"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not-a-uuid"), "{}", stderr(&o));
    let ghost = uuid::Uuid::now_v7().to_string();
    let o = twopc(&tc, &["put", "--tid", &ghost, &a, "1"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("NOT_FOUND") && stderr(&o).contains("unknown tid"), "{}", stderr(&o));
    let o = twopc(&tc, &["run", "frobnicate x"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("frobnicate"), "{}", stderr(&o));

    // Admin listings.
    let o = twopc(&tc, &["topology"], None);
    assert!(stdout(&o).contains("partitions: 3"), "{}", stdout(&o));
    let o = twopc(&tc, &["in-doubt"], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = twopc(&tc, &["transactions"], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    tc.wait_settled().await;
}

/// A failpoint name the target process does not have (a typo, or the
/// other role's point) is refused with INVALID_ARGUMENT listing the
/// process's names, on the wire and in the CLI (exit 2), and at start
/// (`FAILPOINTS=`); before, it answered ok and armed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_failpoint_names_are_refused_listing_the_known_ones() {
    let tc = TestCluster::three().await;
    for (target, name) in [
        ("coordinator", "coordinator::before_decision_force"),
        ("coordinator", "participant::after_prepare_durable"),
        ("1", "coordinator::after_decision_forced"),
        ("1", "participant::before_prepare_durabl"),
    ] {
        let o = twopc(&tc, &["failpoint", "--target", target, name, "pause"], None);
        assert_eq!(o.status.code(), Some(2), "{target} {name}: {}{}", stdout(&o), stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("INVALID_ARGUMENT") && err.contains("unknown failpoint"), "{err}");
        let right = if target == "coordinator" {
            "coordinator::after_decision_forced"
        } else {
            "participant::after_prepare_durable"
        };
        assert!(err.contains(right), "the known names are listed: {err}");
    }
    // The right names in the right places are accepted (and disarmed).
    for (target, name) in
        [("coordinator", "coordinator::after_decision_forced"), ("1", "participant::after_prepare_durable")]
    {
        let o = twopc(&tc, &["failpoint", "--target", target, name, "pause"], None);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = twopc(&tc, &["failpoint", "--target", target, name, ""], None);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    // At start: a typo in FAILPOINTS stops the process with the list.
    let o = Command::new(env!("CARGO_BIN_EXE_twopc"))
        .args(["coordinator", "--listen", "127.0.0.1:0", "--partitions", "1", "--data-dir"])
        .arg(tc.cluster.dir.join("never-started"))
        .env("FAILPOINTS", "coordinator::after_decision_force=return(abort)")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown failpoint"), "{}", String::from_utf8_lossy(&o.stderr));
}
