//! The cluster peer token (`--peer-token` / `TWOPC_PEER_TOKEN`) over real
//! processes: the cluster commits with it, while a client calling the
//! protocol RPCs meant for the coordinator (participant Prepare, Commit,
//! Abort, their batch forms, CommitOnePhaseBatch) or for participants
//! (coordinator Register, Enlist, EnlistBatch) without it is refused and
//! changes nothing, the admin token included.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use tonic::{Code, Request, Status};
use twopc::cluster::ClusterOptions;
use twopc_client::{AdminToken, ConnectOptions, Outcome};
use twopc_proto::pb::{self, coordinator_client::CoordinatorClient, participant_client::ParticipantClient};

const PEER: &str = "cluster-only-s3cret";
const ADMIN: &str = "operator-t0ken";

fn options() -> ClusterOptions {
    ClusterOptions {
        partitions: 2,
        env: vec![("TWOPC_PEER_TOKEN".into(), PEER.into()), ("TWOPC_ADMIN_TOKEN".into(), ADMIN.into())],
        client: ConnectOptions { admin_token: AdminToken::new(Some(ADMIN)).unwrap(), ..Default::default() },
        ..ClusterOptions::default()
    }
}

/// The ways a client may try without the peer token: nothing, the admin
/// token (as admin calls send it), the peer token's text as a bearer token,
/// and a wrong peer token.
fn forged<T: Clone>(message: &T) -> Vec<(&'static str, Request<T>)> {
    let with = |key: &'static str, value: &str| {
        let mut r = Request::new(message.clone());
        r.metadata_mut().insert(key, value.parse().unwrap());
        r
    };
    vec![
        ("no token", Request::new(message.clone())),
        ("the admin token", with("authorization", &format!("Bearer {ADMIN}"))),
        ("the peer token as a bearer token", with("authorization", &format!("Bearer {PEER}"))),
        ("the admin token as peer token", with("x-twopc-peer-token", ADMIN)),
    ]
}

fn peer<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert("x-twopc-peer-token", PEER.parse().unwrap());
    r
}

fn assert_unauthenticated<T: std::fmt::Debug>(r: Result<T, Status>, what: &str) {
    match r {
        Ok(v) => panic!("{what}: accepted without the peer token: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), Code::Unauthenticated, "{what}: {s:?}");
            assert!(s.message().contains("--peer-token"), "{what}: unhelpful message {:?}", s.message());
        }
    }
}

async fn participant(tc: &TestCluster, p: u32) -> ParticipantClient<tonic::transport::Channel> {
    ParticipantClient::connect(format!("http://{}", tc.cluster.participants[p as usize].addr)).await.unwrap()
}

async fn coordinator(tc: &TestCluster) -> CoordinatorClient<tonic::transport::Channel> {
    CoordinatorClient::connect(format!("http://{}", tc.cluster.coordinator_addr())).await.unwrap()
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_twopc"))
        .args(args)
        .env_remove("TWOPC_ADMIN_TOKEN")
        .env_remove("TWOPC_PEER_TOKEN")
        .output()
        .expect("run twopc")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_act_as_the_coordinator_or_a_participant() {
    let tc = TestCluster::start(options()).await;
    let (a, b) = (tc.key_on(0, "peer"), tc.key_on(1, "peer"));

    // The cluster's own calls carry the token: a two-partition commit works.
    let (_, outcome) = tc.write_txn(&[(&a, "1"), (&b, "1")]).await;
    assert_eq!(outcome, Outcome::Committed);
    tc.wait_value(&a, Some("1")).await;
    tc.wait_value(&b, Some("1")).await;

    // An active transaction on both partitions.
    let txn = tc.client.begin(Some(Duration::from_secs(30))).await.unwrap();
    txn.put(a.as_bytes(), b"2").await.unwrap();
    txn.put(b.as_bytes(), b"2").await.unwrap();
    let tid = txn.tid().to_string();
    let one = pb::ResolveRequest { tid: tid.clone() };
    let batch = pb::TidBatch { tids: vec![tid.clone()], ..Default::default() };

    // Every coordinator-only RPC at both participants is refused, however the token is forged.
    for p in 0..2 {
        let mut c = participant(&tc, p).await;
        for (how, r) in forged(&one) {
            assert_unauthenticated(c.abort(r).await, &format!("p{p} Abort with {how}"));
        }
        for (how, r) in forged(&one) {
            assert_unauthenticated(c.commit(r).await, &format!("p{p} Commit with {how}"));
        }
        for (how, r) in forged(&pb::PrepareRequest { tid: tid.clone(), ..Default::default() }) {
            assert_unauthenticated(c.prepare(r).await, &format!("p{p} Prepare with {how}"));
        }
        for (how, r) in forged(&batch) {
            assert_unauthenticated(c.abort_batch(r).await, &format!("p{p} AbortBatch with {how}"));
        }
        for (how, r) in forged(&batch) {
            assert_unauthenticated(c.commit_batch(r).await, &format!("p{p} CommitBatch with {how}"));
        }
        for (how, r) in forged(&batch) {
            assert_unauthenticated(c.prepare_batch(r).await, &format!("p{p} PrepareBatch with {how}"));
        }
        for (how, r) in forged(&batch) {
            assert_unauthenticated(c.commit_one_phase_batch(r).await, &format!("p{p} CommitOnePhaseBatch with {how}"));
        }
    }

    // Nothing was touched: the transaction commits on both partitions.
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    tc.wait_value(&a, Some("2")).await;
    tc.wait_value(&b, Some("2")).await;

    // The coordinator: Register (redirecting partition 0), Enlist and EnlistBatch are refused...
    let mut coord = coordinator(&tc).await;
    let fake =
        pb::RegisterRequest { partition: 0, address: "127.0.0.1:1".into(), incarnation: 7, ..Default::default() };
    for (how, r) in forged(&fake) {
        assert_unauthenticated(coord.register(r).await, &format!("Register with {how}"));
    }
    let late = tc.client.begin(None).await.unwrap();
    let enlist = pb::EnlistRequest { tid: late.tid().to_string(), partition: 1, incarnation: 7, ..Default::default() };
    for (how, r) in forged(&enlist) {
        assert_unauthenticated(coord.enlist(r).await, &format!("Enlist with {how}"));
    }
    for (how, r) in forged(&pb::EnlistBatchRequest { requests: vec![enlist.clone()] }) {
        assert_unauthenticated(coord.enlist_batch(r).await, &format!("EnlistBatch with {how}"));
    }
    late.abort().await.unwrap();
    // ... so the topology still shows the real addresses.
    let addr = tc.cluster.coordinator_addr();
    let o = cli(&["topology", "--coordinator", &addr]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&tc.cluster.participants[0].addr.to_string()), "{}", text(&o));
    assert!(!out.contains("127.0.0.1:1\n"), "{}", text(&o));
    // GetDecision stays open to clients.
    let d = coord
        .get_decision(pb::GetDecisionRequest { tid: tid.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.decision(), pb::Decision::Committed);
    // ... but only a peer may ask as a YES voter (rule 6's exception).
    let voter = pb::GetDecisionRequest { tid: tid.clone(), asking_partition: Some(0) };
    assert_unauthenticated(coord.get_decision(voter).await, "GetDecision with asking_partition");

    // It is the token that is checked: with it, a caller is a peer (here
    // aborting a fresh transaction at partition 0, as the coordinator would).
    let txn = tc.client.begin(Some(Duration::from_secs(30))).await.unwrap();
    txn.put(a.as_bytes(), b"3").await.unwrap();
    participant(&tc, 0).await.abort(peer(pb::ResolveRequest { tid: txn.tid().to_string() })).await.unwrap();
    assert!(matches!(txn.commit().await, Ok(Outcome::Aborted { .. }) | Err(_)));
    assert_eq!(tc.read(&a).await.as_deref(), Some("2"));
    tc.wait_settled().await;
}

/// A participant with another peer token cannot register (it says why in
/// its log) and the coordinator keeps the old address; with the right one it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_with_the_wrong_peer_token_is_not_registered() {
    let mut tc = TestCluster::start(options()).await;
    let before = tc.cluster.participants[1].addr.to_string();
    tc.cluster.restart_participant(1, &[("TWOPC_PEER_TOKEN".into(), "not-the-cluster's".into())]).unwrap();
    let log = tc.cluster.dir.join("p1.log");
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("refused our registration") && text.contains("--peer-token") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "p1 never logged the refusal:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let topology = tc.client.topology().await.unwrap();
    assert_eq!(topology.address(1), Some(before.as_str()));

    tc.cluster.restart_participant(1, &[]).unwrap();
    tc.reconnect().await;
    let (_, outcome) = tc.write_txn(&[(&tc.key_on(0, "again"), "1"), (&tc.key_on(1, "again"), "1")]).await;
    assert_eq!(outcome, Outcome::Committed);
    tc.wait_settled().await;
}

#[test]
fn the_peer_token_must_differ_from_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c").display().to_string();
    let o = cli(&[
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--partitions",
        "1",
        "--data-dir",
        &data,
        "--admin-token",
        "same",
        "--peer-token",
        "same",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--peer-token must differ from --admin-token"), "{}", text(&o));
    let o = cli(&[
        "participant",
        "--partition",
        "0",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--peer-token",
        "has space",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--peer-token"), "{}", text(&o));
}
