//! Message sizes (issue 13, kind 2; `twopc_proto::limits`): one
//! transaction's large value never fails another's. Values at the limit
//! travel in batches bounded by bytes, both ways, and whatever is over a
//! limit (a key or value, a whole request, on any server, from the library,
//! the CLI or a raw gRPC client) is answered RESOURCE_EXHAUSTED naming the
//! limit. The bench exits non-zero when transactions fail with errors.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::*;
use futures::future::join_all;
use tonic::Code;
use twopc::cluster::ClusterOptions;
use twopc_client::{ConnectOptions, Outcome};
use twopc_proto::limits::{DEFAULT_MAX_VALUE_BYTES, SizeLimits};
use twopc_proto::pb;

const MIB: usize = 1 << 20;

fn twopc(coordinator: &str, args: &[&str], env: &[(&str, String)], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twopc"));
    cmd.args(args)
        .env("TWOPC_COORDINATOR", coordinator)
        .env_remove("TWOPC_MAX_KEY_BYTES")
        .env_remove("TWOPC_MAX_VALUE_BYTES")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run twopc");
    let mut input = child.stdin.take().unwrap();
    // The CLI only reads its statements after connecting: write from a
    // thread so a large script cannot block this one on a full pipe.
    let stdin = stdin.map(<[u8]>::to_vec);
    let writer = std::thread::spawn(move || {
        if let Some(bytes) = stdin {
            let _ = input.write_all(&bytes);
        }
    });
    let out = child.wait_with_output().expect("twopc output");
    writer.join().unwrap();
    out
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Polls a committed read of `key` until it is `want` (phase 2 is applied
/// after the client hears COMMITTED).
async fn wait_bytes(tc: &TestCluster, key: &str, want: &[u8]) {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let got = tc.client.read(key.as_bytes()).await.expect("a committed read");
        if got.as_deref() == Some(want) {
            return;
        }
        let len = got.map(|v| v.len());
        assert!(std::time::Instant::now() < deadline, "{key}: still {len:?} bytes, want {}", want.len());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A raw gRPC answer that must be RESOURCE_EXHAUSTED saying every one of `words`.
fn expect<T>(r: Result<tonic::Response<T>, tonic::Status>, words: &[&str]) {
    let s = r.map(drop).expect_err("over a limit");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    for w in words {
        assert!(s.message().contains(w), "{:?} should say {w:?}", s.message());
    }
}

/// `twopc bench` against `coordinator`; its exit code, report (JSON) and output.
fn bench(coordinator: &str, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("r.json");
    let out = Command::new(env!("CARGO_BIN_EXE_twopc"))
        .args(["bench", "--coordinator", coordinator, "--warmup-secs", "0", "--json"])
        .arg(&json)
        .args(args)
        .env_remove("TWOPC_MAX_KEY_BYTES")
        .env_remove("TWOPC_MAX_VALUE_BYTES")
        .stdin(Stdio::null())
        .output()
        .expect("run twopc bench");
    let report = std::fs::read_to_string(&json).map(|t| serde_json::from_str(&t).expect("valid JSON"));
    (out.status.code(), report.unwrap_or(serde_json::Value::Null), text(&out))
}

/// The example: ten keys holding values at the 1 MiB limit, read
/// by 16 concurrent spread transactions (every Get answer alone is ~1 MiB,
/// together far over the 4 MiB message limit): every one commits, and the
/// bench exits 0. Before: most failed with OUT_OF_RANGE "decoded message
/// length too large". The load itself is the write side: ten concurrent
/// puts of 1 MiB in one transaction, then eight transactions each writing
/// 1 MiB concurrently and committing at once (their operations, prepares
/// and commits share batches), and the bench writing 1 MiB values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_at_the_limit_never_fail_other_transactions() {
    let tc = TestCluster::three().await;
    let keys: Vec<String> = (0..10).map(|i| format!("key-{i}")).collect();
    let value = |i: usize| vec![b'a' + i as u8; DEFAULT_MAX_VALUE_BYTES];

    // Ten 1 MiB puts at once in one transaction: ~10 MiB of operations
    // over three participants, so batches to each must be split by bytes.
    let txn = tc.client.begin(None).await.unwrap();
    let puts = keys.iter().enumerate().map(|(i, k)| {
        let (txn, v) = (txn.clone(), value(i));
        async move { txn.put(k.as_bytes(), &v).await }
    });
    for r in join_all(puts).await {
        r.expect("a put at the value limit");
    }
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    for (i, k) in keys.iter().enumerate() {
        wait_bytes(&tc, k, &value(i)).await;
    }

    // Eight writers of 1 MiB each, committing concurrently.
    let big: Vec<String> = (0..8).map(|i| format!("big-{i}")).collect();
    let writers = big.iter().map(|k| {
        let client = tc.client.clone();
        async move {
            let txn = client.begin(None).await?;
            txn.put(k.as_bytes(), &vec![b'z'; DEFAULT_MAX_VALUE_BYTES]).await?;
            txn.commit().await
        }
    });
    for r in join_all(writers).await {
        assert_eq!(r.expect("a concurrent large write"), Outcome::Committed);
    }

    // Sixteen readers of the ten keys, each reading one per partition.
    let readers = (0..16).map(|_| {
        let client = tc.client.clone();
        let keys = keys.clone();
        async move {
            let txn = client.begin(None).await?;
            let mut got = 0;
            for k in &keys {
                got += txn.get(k.as_bytes()).await?.map_or(0, |v| v.len());
            }
            txn.commit().await.map(|o| (o, got))
        }
    });
    for r in join_all(readers).await {
        let (outcome, got) = r.expect("a concurrent large read");
        assert_eq!(outcome, Outcome::Committed);
        assert_eq!(got, 10 * DEFAULT_MAX_VALUE_BYTES);
    }

    let addr = tc.cluster.coordinator_addr();
    let args = ["--workload", "spread", "--read-ratio", "1", "--keys", "10", "--concurrency", "16"];
    let (code, report, out) = bench(&addr, &[&args[..], &["--duration-secs", "3"]].concat());
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(report["errors"], 0, "{out}");
    assert!(report["committed"].as_u64().unwrap_or(0) > 0, "{out}");
    eprintln!("reads of 1 MiB values: {}", out.lines().find(|l| l.starts_with("committed ")).unwrap_or(""));
    // And writes of 1 MiB values by 8 concurrent transactions (conflicts
    // abort, and are counted apart; no errors).
    let args = ["--workload", "spread", "--keys", "10", "--concurrency", "8", "--value-bytes", "1048576"];
    let (code, report, out) = bench(&addr, &[&args[..], &["--duration-secs", "2"]].concat());
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(report["errors"], 0, "{out}");
    assert!(report["committed"].as_u64().unwrap_or(0) > 0, "{out}");
    eprintln!("writes of 1 MiB values: {}", out.lines().find(|l| l.starts_with("committed ")).unwrap_or(""));
    tc.wait_settled().await;
}

/// A key or value over its limit, or a whole request over a server's
/// message limit, is RESOURCE_EXHAUSTED naming the limit: on the raw wire
/// (participant and coordinator, unary and batch RPCs), from the library
/// and from the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_limit_is_resource_exhausted_naming_it() {
    let tc = TestCluster::three().await;
    let key = tc.key_on(0, "k");
    let participant = format!("http://{}", tc.cluster.participants[0].addr);
    // A raw client: tonic's defaults (4 MiB to read, no limit to send).
    let mut raw = pb::participant_client::ParticipantClient::connect(participant).await.unwrap();
    let txn = tc.client.begin(None).await.unwrap();
    let tid = txn.tid().to_string();

    // A value one byte over the limit: unary and batched.
    let over = vec![b'v'; DEFAULT_MAX_VALUE_BYTES + 1];
    let put =
        pb::PutRequest { tid: tid.clone(), key: key.clone().into_bytes(), value: over.clone(), ..Default::default() };
    expect(raw.put(put).await, &["value is 1048577 bytes", "limit of 1048576 bytes (--max-value-bytes)"]);
    let op = |value: Vec<u8>| pb::Operation {
        tid: tid.clone(),
        kind: pb::operation::Kind::Put as i32,
        key: key.clone().into_bytes(),
        value,
        ..Default::default()
    };
    let r = raw.operate_batch(pb::OperationBatch { operations: vec![op(over.clone())] }).await.unwrap();
    let item = &r.get_ref().results[0];
    assert_eq!(item.code, Code::ResourceExhausted as i32, "{item:?}");
    assert!(item.message.contains("(--max-value-bytes)"), "{item:?}");
    // A key over its limit.
    let get = pb::GetRequest { tid: tid.clone(), key: vec![b'k'; 1025], for_update: false, ..Default::default() };
    expect(raw.get(get).await, &["key is 1025 bytes", "limit of 1024 bytes (--max-key-bytes)"]);
    expect(raw.read(pb::ReadRequest { key: vec![b'k'; 1025] }).await, &["(--max-key-bytes)"]);

    // Whole requests over the message limit (4 MiB): refused before the
    // service runs, RESOURCE_EXHAUSTED naming the limit, not OUT_OF_RANGE.
    let limit = "the limit is: 4194304 bytes";
    let huge = vec![b'h'; 5 * MIB];
    let put =
        pb::PutRequest { tid: tid.clone(), key: key.clone().into_bytes(), value: huge.clone(), ..Default::default() };
    expect(raw.put(put).await, &["request is too large for this server", limit, "--max-value-bytes"]);
    let ops = (0..5).map(|_| op(vec![b'v'; MIB])).collect();
    expect(raw.operate_batch(pb::OperationBatch { operations: ops }).await, &[limit]);
    let mut coordinator =
        pb::coordinator_client::CoordinatorClient::connect(format!("http://{}", tc.cluster.coordinator_addr()))
            .await
            .unwrap();
    let commit = pb::CommitRequest { tid: "x".repeat(5 * MIB), ..Default::default() };
    expect(coordinator.commit(commit).await, &["request is too large for this server", limit]);
    let begins =
        pb::BeginBatchRequest { requests: vec![pb::BeginRequest { timeout_ms: 1, declares: false }; 1_500_000] };
    expect(coordinator.begin_batch(begins).await, &[limit]);
    // Siblings on other RPCs of both services, each with one 5 MiB field.
    let long = "x".repeat(5 * MIB);
    expect(
        coordinator.get_decision(pb::GetDecisionRequest { tid: long.clone(), ..Default::default() }).await,
        &[limit],
    );
    expect(coordinator.abort(pb::AbortRequest { tid: long.clone(), ..Default::default() }).await, &[limit]);
    let enlist = pb::EnlistRequest { tid: long.clone(), partition: 0, incarnation: 1, ..Default::default() };
    expect(coordinator.enlist_batch(pb::EnlistBatchRequest { requests: vec![enlist] }).await, &[limit]);
    let register = pb::RegisterRequest { partition: 0, address: long.clone(), incarnation: 1, ..Default::default() };
    expect(coordinator.register(register).await, &[limit]);
    expect(
        raw.get(pb::GetRequest { tid: tid.clone(), key: huge.clone(), for_update: false, ..Default::default() }).await,
        &[limit],
    );
    expect(raw.read(pb::ReadRequest { key: huge.clone() }).await, &[limit]);
    expect(raw.delete(pb::DeleteRequest { tid: tid.clone(), key: huge.clone(), ..Default::default() }).await, &[limit]);
    expect(raw.prepare_batch(pb::TidBatch { tids: vec![long.clone()], ..Default::default() }).await, &[limit]);
    expect(raw.commit_batch(pb::TidBatch { tids: vec![long.clone()], ..Default::default() }).await, &[limit]);
    let resolve = pb::ResolveHeuristicallyRequest { tid: tid.clone(), reason: long.clone(), ..Default::default() };
    expect(raw.resolve_heuristically(resolve).await, &[limit]);

    // The library: a value over the limit, and one over the client's own
    // message limit (refused before it is sent).
    let e = txn.put(key.as_bytes(), &over).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.to_string().contains("(--max-value-bytes)"), "{e}");
    let t2 = tc.client.begin(None).await.unwrap();
    let e = t2.put(key.as_bytes(), &huge).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.to_string().contains(limit), "{e}");
    let _ = txn.abort().await;
    let _ = t2.abort().await;

    // The CLI (statements on stdin: a value this long is no argument).
    let addr = tc.cluster.coordinator_addr();
    let script = |n: usize| {
        let mut s = format!("put {key} ").into_bytes();
        s.extend(std::iter::repeat_n(b'v', n));
        s.push(b'\n');
        s
    };
    let o = twopc(&addr, &["run"], &[], Some(&script(DEFAULT_MAX_VALUE_BYTES + 1)));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("RESOURCE_EXHAUSTED: value is 1048577 bytes"), "{}", text(&o));
    assert!(text(&o).contains("(--max-value-bytes)"), "{}", text(&o));
    let o = twopc(&addr, &["run"], &[], Some(&script(5 * MIB)));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("RESOURCE_EXHAUSTED: the message is too large to send"), "{}", text(&o));
    assert!(text(&o).contains(limit), "{}", text(&o));
    // A CLI told of a larger limit than the participants': the server refuses.
    let o = twopc(&addr, &["run"], &[("TWOPC_MAX_VALUE_BYTES", (8 * MIB).to_string())], Some(&script(5 * MIB)));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("RESOURCE_EXHAUSTED: the request is too large for this server"), "{}", text(&o));
    assert!(text(&o).contains(limit), "{}", text(&o));

    // Nothing of it stuck: a value at the limit still commits.
    let (_, o) = tc.write_txn(&[(&key, &"v".repeat(DEFAULT_MAX_VALUE_BYTES))]).await;
    assert_eq!(o, Outcome::Committed);
    tc.wait_settled().await;
}

/// Limits above the 4 MiB floor: participants with --max-value-bytes of
/// 6 MiB (by the variable every process and client reads) take, store and
/// answer a 6 MiB value; a client and CLI with the same setting send and
/// read it, one byte more is RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raised_limits_fit_the_largest_value() {
    let max = 6 * MIB;
    let sizes = SizeLimits { max_value_bytes: max, ..SizeLimits::default() };
    let opts = ClusterOptions {
        partitions: 2,
        env: vec![("TWOPC_MAX_VALUE_BYTES".into(), max.to_string())],
        client: ConnectOptions { sizes, ..ConnectOptions::default() },
        ..ClusterOptions::default()
    };
    let tc = TestCluster::start(opts).await;
    let (a, b) = (tc.key_on(0, "a"), tc.key_on(1, "b"));
    let txn = tc.client.begin(None).await.unwrap();
    let (va, vb) = (vec![b'a'; max], vec![b'b'; max]);
    let (ra, rb) = tokio::join!(txn.put(a.as_bytes(), &va), txn.put(b.as_bytes(), &vb));
    ra.unwrap();
    rb.unwrap();
    assert!(txn.get(a.as_bytes()).await.unwrap().as_deref() == Some(&va[..]), "read back within the txn");
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    wait_bytes(&tc, &b, &vb).await;
    let t2 = tc.client.begin(None).await.unwrap();
    let e = t2.put(a.as_bytes(), &vec![b'x'; max + 1]).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.to_string().contains(&format!("limit of {max} bytes (--max-value-bytes)")), "{e}");
    let _ = t2.abort().await;

    // A client left at the default limits: its Get of the 6 MiB value
    // fails alone (over its own limit, saying so), while a concurrent small
    // Get of another transaction to the same participant succeeds.
    let small = twopc_client::Client::connect(&tc.cluster.coordinator_addr()).await.unwrap();
    let (t3, t4) = (small.begin(None).await.unwrap(), small.begin(None).await.unwrap());
    let other = tc.key_on(0, "other");
    let (big, little) = tokio::join!(t3.get(a.as_bytes()), t4.get(other.as_bytes()));
    let e = big.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.to_string().contains("the answer is too large for this client"), "{e}");
    assert_eq!(little.expect("the small read is not failed by the large one"), None);
    let _ = (t3.abort().await, t4.abort().await);

    // The CLI with the same variable reads the 6 MiB value back.
    let env = [("TWOPC_MAX_VALUE_BYTES", max.to_string())];
    let o = twopc(&tc.cluster.coordinator_addr(), &["read", &a], &env, None);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.len() >= max, "{} bytes", o.stdout.len());
    // Without it, the answer is over the CLI's own limit: it says which.
    let o = twopc(&tc.cluster.coordinator_addr(), &["read", &a], &[], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("RESOURCE_EXHAUSTED: the answer is too large for this client"), "{}", text(&o));
    assert!(text(&o).contains("TWOPC_MAX_VALUE_BYTES"), "{}", text(&o));
    tc.wait_settled().await;
}

/// The bench exits non-zero (2) when transactions fail with errors, and
/// says which kinds: here a participant is gone (SIGKILL), so every
/// transaction touching it fails with UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_exits_non_zero_when_transactions_fail_with_errors() {
    let mut tc = TestCluster::three().await;
    tc.cluster.participants[1].kill();
    let addr = tc.cluster.coordinator_addr();
    let args = ["--workload", "spread", "--keys", "30", "--concurrency", "2", "--duration-secs", "1"];
    let (code, report, out) = bench(&addr, &args);
    assert_eq!(code, Some(2), "{out}");
    assert!(report["errors"].as_u64().unwrap_or(0) > 0, "{out}");
    assert!(report["error_kinds"]["UNAVAILABLE"].as_u64().unwrap_or(0) > 0, "{out}");
    assert!(out.contains("errors by kind: UNAVAILABLE"), "{out}");
    assert!(out.contains("transactions failed with errors"), "{out}");
}
