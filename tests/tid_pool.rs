//! Begin off the critical path (issue 10, item 3): tids reserved in blocks
//! (BeginBlock) and drawn from the client's pool. A pooled tid commits and
//! aborts like a begun one, its deadline (from its first use) still aborts
//! it, blocks count against the open bound, `twopc transactions` shows them
//! as a count, and after a coordinator restart a tid from the old pool is
//! answered ABORTED, never committed in part.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use twopc::cluster::ClusterOptions;
use twopc_client::{AbortKind, Client, ConnectOptions, Decision, Outcome};
use twopc_proto::pb;

/// The value of `name`'s first sample, 0 when it was never recorded.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn pooled_client(tc: &TestCluster, block: usize) -> Client {
    let options = ConnectOptions { tid_pool: block, ..tc.cluster.connect_options().clone() };
    Client::connect_with(&tc.cluster.coordinator_addr(), options).await.unwrap()
}

/// Polls the coordinator's listing until its reserved count is what the
/// client's pool holds plus `drawn_unused` tids drawn and not used yet (no
/// refill in flight), and returns it.
async fn reserved_settles(client: &Client, drawn_unused: usize) -> u32 {
    let deadline = Instant::now() + SETTLE;
    loop {
        let listed = client.transaction_listing().await.unwrap().reserved;
        if listed as usize == client.pooled_tids() + drawn_unused {
            return listed;
        }
        assert!(Instant::now() < deadline, "reserved {listed}, pooled {}", client.pooled_tids());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_tids_share_few_block_rpcs_commit_abort_and_are_listed_as_a_count() {
    let port = free_port();
    let opts = ClusterOptions {
        coordinator_args: vec!["--metrics-listen".into(), format!("127.0.0.1:{port}")],
        ..Default::default()
    };
    let tc = TestCluster::start(opts).await;
    let client = pooled_client(&tc, 16).await;
    let (a, b) = (tc.key_on(0, "pool"), tc.key_on(2, "pool"));
    const TXNS: usize = 40;
    let mut tids = vec![];
    for i in 0..TXNS {
        let txn = client.begin(None).await.unwrap();
        assert!(txn.deadline_unix_ms() > 0);
        let v = i.to_string();
        txn.put(a.as_bytes(), v.as_bytes()).await.unwrap();
        txn.put(b.as_bytes(), v.as_bytes()).await.unwrap();
        assert_eq!(txn.commit().await.unwrap(), Outcome::Committed, "transaction {i}");
        tids.push(txn.tid());
    }
    tc.wait_value(&a, Some(&(TXNS - 1).to_string())).await;
    tc.wait_value(&b, Some(&(TXNS - 1).to_string())).await;
    assert_eq!(tc.client.status(tids[0]).await.unwrap(), Decision::Committed);
    // A pooled tid aborts normally too, with its reason.
    let txn = client.begin(None).await.unwrap();
    txn.put(a.as_bytes(), b"never").await.unwrap();
    txn.abort().await.unwrap();
    assert!(matches!(txn.commit().await.unwrap(), Outcome::Aborted { kind: AbortKind::Client, .. }));

    let m = scrape(port);
    let blocks = counter(&m, "twopc_begin_blocks_total");
    let reserved = counter(&m, "twopc_tids_reserved_total");
    eprintln!("{blocks} BeginBlock RPCs ({reserved} tids) for {} transactions", TXNS + 1);
    // 41 transactions from blocks of 16: the pool keeps up to two blocks, so
    // about 4 BeginBlock RPCs, and not one Begin.
    assert!((1.0..=5.0).contains(&blocks), "{blocks} block RPCs for {} transactions:\n{m}", TXNS + 1);
    assert_eq!(reserved, blocks * 16.0, "{m}");
    assert_eq!(counter(&m, "twopc_transactions_begun_total"), 0.0, "no Begin at all:\n{m}");

    // The listing: the unused pooled tids as a count, not as transactions;
    // a drawn and used one as an active transaction.
    let pooled = reserved_settles(&client, 0).await;
    assert!(pooled > 0);
    let open = client.begin(None).await.unwrap();
    open.put(a.as_bytes(), b"open").await.unwrap();
    // Its first use reaches the coordinator with the participant's
    // enlistment, in the background for a declared operation: poll.
    let give_up = std::time::Instant::now() + SETTLE;
    let listing = loop {
        let listing = client.transaction_listing().await.unwrap();
        if !listing.transactions.is_empty() || std::time::Instant::now() > give_up {
            break listing;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(listing.transactions.len(), 1, "{listing:?}");
    assert_eq!(listing.transactions[0].tid, open.tid().to_string());
    assert_eq!(listing.transactions[0].state, "active");
    let reserved_now = reserved_settles(&client, 0).await;
    let o = twopc_cli(&tc, &["transactions"]);
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains(&open.tid().to_string()), "{text}");
    assert!(text.contains(&format!("{reserved_now} reserved tids not used yet")), "{text}");
    // A drawn tid not used yet is known: PENDING, not presumed aborted.
    let unused = client.begin(None).await.unwrap();
    assert_eq!(tc.client.status(unused.tid()).await.unwrap(), Decision::Pending);
    assert_eq!(unused.commit().await.unwrap(), Outcome::Committed, "nothing written: trivially committed");
    assert_eq!(open.commit().await.unwrap(), Outcome::Committed);
    tc.wait_settled().await;
}

/// The deadline of a pooled tid runs from its first use, with the
/// coordinator's timeout: an open one is aborted at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_still_aborts_an_open_pooled_tid() {
    let opts =
        ClusterOptions { coordinator_args: vec!["--default-timeout-ms".into(), "1500".into()], ..Default::default() };
    let tc = TestCluster::start(opts).await;
    let client = pooled_client(&tc, 4).await;
    let key = tc.key_on(1, "late");
    let txn = client.begin(None).await.unwrap();
    txn.put(key.as_bytes(), b"late").await.unwrap();
    let d = tc.wait_decision(txn.tid(), |d| matches!(d, Decision::Aborted { kind: AbortKind::Deadline, .. })).await;
    assert!(matches!(d, Decision::Aborted { .. }));
    assert!(matches!(txn.commit().await.unwrap(), Outcome::Aborted { kind: AbortKind::Deadline, .. }));
    tc.wait_settled().await;
    assert_eq!(tc.read(&key).await, None);
    // The tids still pooled were reserved before that first use, and their
    // deadlines have not started: one drawn now commits.
    let txn = client.begin(None).await.unwrap();
    txn.put(key.as_bytes(), b"on time").await.unwrap();
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    tc.wait_value(&key, Some("on time")).await;
}

/// Reserved tids count against --max-open-txns: a block that does not fit
/// is refused RESOURCE_EXHAUSTED, as Begin is; a bad count is refused
/// INVALID_ARGUMENT; a pooled client falls back to Begin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_count_against_the_open_bound() {
    let opts = ClusterOptions { coordinator_args: vec!["--max-open-txns".into(), "10".into()], ..Default::default() };
    let tc = TestCluster::start(opts).await;
    let mut raw =
        pb::coordinator_client::CoordinatorClient::connect(format!("http://{}", tc.cluster.coordinator_addr()))
            .await
            .unwrap();
    for bad in [0, 65] {
        let s =
            raw.begin_block(pb::BeginBlockRequest { timeout_ms: 0, count: bad, declares: false }).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("1 to 64"), "{s:?}");
    }
    let s = raw.begin_block(pb::BeginBlockRequest { timeout_ms: 0, count: 11, declares: false }).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("--max-open-txns"), "{s:?}");
    let block = raw
        .begin_block(pb::BeginBlockRequest { timeout_ms: 60_000, count: 8, declares: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((block.tids.len(), block.timeout_ms, block.unused_ms), (8, 60_000, 30_000));
    // 8 reserved: two Begins fit, the third does not.
    tc.client.begin(None).await.unwrap();
    tc.client.begin(None).await.unwrap();
    let e = tc.client.begin(None).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    // Using the reserved tids frees nothing until they finish; aborting them does.
    for tid in &block.tids {
        raw.abort(pb::AbortRequest { tid: tid.clone(), ..Default::default() }).await.unwrap();
    }
    // A pooled client whose block (16) cannot fit still begins, by Begin.
    let client = pooled_client(&tc, 16).await;
    let key = tc.key_on(0, "bound");
    let txn = client.begin(None).await.unwrap();
    txn.put(key.as_bytes(), b"v").await.unwrap();
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    assert_eq!(client.pooled_tids(), 0);
}

/// A coordinator restart forgets reserved tids (presumed abort): a tid
/// drawn from the old pool, written before or after the restart, is never
/// committed, and the pool then refills from the new coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restart_never_commits_a_tid_of_the_old_pool() {
    let mut tc = TestCluster::three().await;
    let client = pooled_client(&tc, 8).await;
    let (a, b) = (tc.key_on(0, "restart"), tc.key_on(1, "restart"));
    let before = client.begin(None).await.unwrap();
    before.put(a.as_bytes(), b"before").await.unwrap();
    let drawn_unused = client.begin(None).await.unwrap();
    reserved_settles(&client, 1).await;
    assert!(client.pooled_tids() > 0);

    tokio::task::block_in_place(|| tc.cluster.restart_coordinator(&[]).unwrap());
    tc.reconnect().await;

    // Drawn after the restart from the old pool (the client has not
    // learned anything yet): its commit is ABORTED. Its operation is
    // declared (pooled tids declare as their client does), so the
    // participant may answer it before its enlistment is refused; enlist
    // first, it fails NOT_FOUND (the new coordinator does not know it).
    let stale = client.begin(None).await.unwrap();
    if let Err(e) = stale.put(b.as_bytes(), b"stale").await {
        assert_eq!(e.code(), Code::NotFound, "the new coordinator does not know the tid: {e}");
    }
    assert!(matches!(stale.commit().await.unwrap(), Outcome::Aborted { .. }));

    // Written before the restart: ABORTED (the new coordinator does not
    // know it), never COMMITTED.
    match before.commit().await.unwrap() {
        Outcome::Aborted { kind, .. } => assert_eq!(kind, AbortKind::CoordinatorRestarted),
        o => panic!("a tid of the old coordinator committed: {o:?}"),
    }
    // Drawn before, used after: its operation fails (or, declared, is
    // answered and dropped at the participant), its commit is ABORTED.
    if let Err(e) = drawn_unused.put(b.as_bytes(), b"after").await {
        assert!(!e.to_string().is_empty());
    }
    assert!(matches!(drawn_unused.commit().await.unwrap(), Outcome::Aborted { .. }));
    // The pool was dropped on learning it; new tids come from the new coordinator.
    // (Another key: the stale tids' declared puts may still hold `b`'s
    // lock until their enlistment is refused, and this younger tid would
    // die on it.)
    let fresh = tc.key_on(1, "fresh");
    let after = client.begin(None).await.unwrap();
    after.put(fresh.as_bytes(), b"fresh").await.unwrap();
    assert_eq!(after.commit().await.unwrap(), Outcome::Committed);
    tc.wait_value(&fresh, Some("fresh")).await;
    assert_eq!(tc.read(&b).await, None, "nothing of the stale tids is committed");
    tc.wait_settled().await;
    assert_eq!(tc.read(&a).await, None, "nothing of the old tid is committed");
}
