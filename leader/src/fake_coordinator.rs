//! A scripted Coordinator server on a loopback port, for tests of the
//! coordinator's callers (the [`crate::follow`] follower, the client, the
//! participants): it answers each RPC as its script says (e.g. a standby
//! naming the leader) and counts the calls. Never used by the binaries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use twopc_proto::pb;
use twopc_proto::pb::coordinator_server::{Coordinator, CoordinatorServer};

/// What the fake does with one call.
pub enum Act {
    /// Answer with a success: COMMITTED for Commit and GetDecision, the
    /// message's defaults otherwise (a tid for Begin).
    Answer,
    /// Answer ABORTED (Commit, GetDecision); like `Answer` elsewhere.
    Aborted,
    /// Answer PENDING (GetDecision); like `Answer` elsewhere.
    Pending,
    /// Answer with this status.
    Fail(Status),
    /// Never answer (a wedged coordinator).
    Hang,
}

/// Decides the answer to the `n`th call (from 1) of RPC `rpc`.
pub type Script = Box<dyn Fn(&'static str, u32) -> Act + Send + Sync>;

/// A running fake; stops when dropped.
pub struct FakeCoordinator {
    pub addr: SocketAddr,
    calls: Arc<Mutex<HashMap<&'static str, u32>>>,
    /// The peer token each call carried (`None`: none), in order.
    peer_tokens: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeCoordinator {
    /// Serves `script` on a free loopback port.
    pub async fn start(script: Script) -> FakeCoordinator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let calls = Arc::new(Mutex::new(HashMap::new()));
        let peer_tokens = Arc::new(Mutex::new(vec![]));
        let service = Fake { script: Arc::new(script), calls: calls.clone(), peer_tokens: peer_tokens.clone() };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(CoordinatorServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        FakeCoordinator { addr, calls, peer_tokens, task }
    }

    /// A standby that names `leader` (or no one) on every call.
    pub async fn standby(leader: Option<String>) -> FakeCoordinator {
        Self::start(Box::new(move |_, _| Act::Fail(crate::standby_status(leader.as_deref())))).await
    }

    /// The peer token (`x-twopc-peer-token`) of every call so far, in order.
    pub fn peer_tokens(&self) -> Vec<Option<String>> {
        self.peer_tokens.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many calls of `rpc` arrived.
    pub fn calls(&self, rpc: &str) -> u32 {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).get(rpc).copied().unwrap_or(0)
    }
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy)]
enum Success {
    Committed,
    Aborted,
    Pending,
}

struct Fake {
    script: Arc<Script>,
    calls: Arc<Mutex<HashMap<&'static str, u32>>>,
    peer_tokens: Arc<Mutex<Vec<Option<String>>>>,
}

impl Fake {
    async fn act<R, T>(
        &self,
        rpc: &'static str,
        req: &Request<R>,
        ok: impl FnOnce() -> T,
    ) -> Result<Response<T>, Status> {
        self.act_as(rpc, req, |_| ok()).await
    }

    /// As `act`, `ok` told which success was asked for.
    async fn act_as<R, T>(
        &self,
        rpc: &'static str,
        req: &Request<R>,
        ok: impl FnOnce(Success) -> T,
    ) -> Result<Response<T>, Status> {
        let token = req.metadata().get("x-twopc-peer-token").and_then(|v| v.to_str().ok()).map(str::to_string);
        self.peer_tokens.lock().unwrap_or_else(|p| p.into_inner()).push(token);
        let n = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            let n = calls.entry(rpc).or_insert(0);
            *n += 1;
            *n
        };
        match (self.script)(rpc, n) {
            Act::Answer => Ok(Response::new(ok(Success::Committed))),
            Act::Aborted => Ok(Response::new(ok(Success::Aborted))),
            Act::Pending => Ok(Response::new(ok(Success::Pending))),
            Act::Fail(s) => Err(s),
            Act::Hang => std::future::pending().await,
        }
    }
}

#[tonic::async_trait]
impl Coordinator for Fake {
    async fn begin(&self, r: Request<pb::BeginRequest>) -> Result<Response<pb::BeginResponse>, Status> {
        self.act("Begin", &r, || pb::BeginResponse { tid: uuid::Uuid::now_v7().to_string(), ..Default::default() })
            .await
    }
    async fn enlist(&self, r: Request<pb::EnlistRequest>) -> Result<Response<pb::EnlistResponse>, Status> {
        self.act("Enlist", &r, pb::EnlistResponse::default).await
    }
    async fn commit(&self, r: Request<pb::CommitRequest>) -> Result<Response<pb::CommitResponse>, Status> {
        self.act_as("Commit", &r, |s| match s {
            Success::Aborted => pb::CommitResponse {
                outcome: pb::Outcome::Aborted as i32,
                reason: "scripted".into(),
                ..Default::default()
            },
            _ => pb::CommitResponse {
                outcome: pb::Outcome::Committed as i32,
                reason: String::new(),
                ..Default::default()
            },
        })
        .await
    }
    async fn abort(&self, r: Request<pb::AbortRequest>) -> Result<Response<pb::AbortResponse>, Status> {
        self.act("Abort", &r, pb::AbortResponse::default).await
    }
    async fn get_decision(
        &self,
        r: Request<pb::GetDecisionRequest>,
    ) -> Result<Response<pb::GetDecisionResponse>, Status> {
        self.act_as("GetDecision", &r, |s| {
            let decision = match s {
                Success::Committed => pb::Decision::Committed,
                Success::Aborted => pb::Decision::Aborted,
                Success::Pending => pb::Decision::Pending,
            };
            pb::GetDecisionResponse { decision: decision as i32, reason: "scripted".into(), ..Default::default() }
        })
        .await
    }
    async fn register(&self, r: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        self.act("Register", &r, pb::RegisterResponse::default).await
    }
    async fn get_topology(&self, r: Request<pb::GetTopologyRequest>) -> Result<Response<pb::Topology>, Status> {
        self.act("GetTopology", &r, || pb::Topology { partitions: 1, members: vec![] }).await
    }
    async fn list_transactions(
        &self,
        r: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        self.act("ListTransactions", &r, pb::ListTransactionsResponse::default).await
    }
    async fn set_failpoint(
        &self,
        r: Request<pb::SetFailpointRequest>,
    ) -> Result<Response<pb::SetFailpointResponse>, Status> {
        self.act("SetFailpoint", &r, pb::SetFailpointResponse::default).await
    }
    async fn enlist_batch(
        &self,
        r: Request<pb::EnlistBatchRequest>,
    ) -> Result<Response<pb::EnlistBatchResponse>, Status> {
        let n = r.get_ref().requests.len();
        // A deadline a minute away, so an enlistment can be applied.
        let result = pb::EnlistResult { deadline_unix_ms: twopc_proto::now_unix_ms() + 60_000, ..Default::default() };
        self.act("EnlistBatch", &r, || pb::EnlistBatchResponse { results: vec![result; n] }).await
    }
    async fn begin_batch(&self, r: Request<pb::BeginBatchRequest>) -> Result<Response<pb::BeginBatchResponse>, Status> {
        let n = r.get_ref().requests.len();
        self.act("BeginBatch", &r, || pb::BeginBatchResponse {
            results: (0..n)
                .map(|_| pb::BeginResult { tid: uuid::Uuid::now_v7().to_string(), ..Default::default() })
                .collect(),
        })
        .await
    }
    async fn begin_block(&self, r: Request<pb::BeginBlockRequest>) -> Result<Response<pb::BeginBlockResponse>, Status> {
        let n = r.get_ref().count;
        self.act("BeginBlock", &r, || pb::BeginBlockResponse {
            tids: (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect(),
            timeout_ms: 60_000,
            unused_ms: 30_000,
            coordinator_term: 1,
        })
        .await
    }
}
