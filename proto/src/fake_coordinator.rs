//! A scripted Coordinator server on a loopback port, for tests of the
//! coordinator's callers (the [`crate::follow`] follower, the client, the
//! participants): it answers each RPC as its script says (e.g. a standby
//! naming the leader) and counts the calls. Never used by the binaries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::pb;
use crate::pb::coordinator_server::{Coordinator, CoordinatorServer};

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
    task: tokio::task::JoinHandle<()>,
}

impl FakeCoordinator {
    /// Serves `script` on a free loopback port.
    pub async fn start(script: Script) -> FakeCoordinator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let calls = Arc::new(Mutex::new(HashMap::new()));
        let service = Fake { script: Arc::new(script), calls: calls.clone() };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(CoordinatorServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        FakeCoordinator { addr, calls, task }
    }

    /// A standby that names `leader` (or no one) on every call.
    pub async fn standby(leader: Option<String>) -> FakeCoordinator {
        Self::start(Box::new(move |_, _| Act::Fail(crate::leader::standby_status(leader.as_deref())))).await
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
}

impl Fake {
    async fn act<T>(&self, rpc: &'static str, ok: impl FnOnce() -> T) -> Result<Response<T>, Status> {
        self.act_as(rpc, |_| ok()).await
    }

    /// As `act`, `ok` told which success was asked for.
    async fn act_as<T>(&self, rpc: &'static str, ok: impl FnOnce(Success) -> T) -> Result<Response<T>, Status> {
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
    async fn begin(&self, _: Request<pb::BeginRequest>) -> Result<Response<pb::BeginResponse>, Status> {
        self.act("Begin", || pb::BeginResponse { tid: uuid::Uuid::now_v7().to_string(), deadline_unix_ms: 0 }).await
    }
    async fn enlist(&self, _: Request<pb::EnlistRequest>) -> Result<Response<pb::EnlistResponse>, Status> {
        self.act("Enlist", pb::EnlistResponse::default).await
    }
    async fn commit(&self, _: Request<pb::CommitRequest>) -> Result<Response<pb::CommitResponse>, Status> {
        self.act_as("Commit", |s| match s {
            Success::Aborted => pb::CommitResponse { outcome: pb::Outcome::Aborted as i32, reason: "scripted".into() },
            _ => pb::CommitResponse { outcome: pb::Outcome::Committed as i32, reason: String::new() },
        })
        .await
    }
    async fn abort(&self, _: Request<pb::AbortRequest>) -> Result<Response<pb::AbortResponse>, Status> {
        self.act("Abort", pb::AbortResponse::default).await
    }
    async fn get_decision(
        &self,
        _: Request<pb::GetDecisionRequest>,
    ) -> Result<Response<pb::GetDecisionResponse>, Status> {
        self.act_as("GetDecision", |s| {
            let decision = match s {
                Success::Committed => pb::Decision::Committed,
                Success::Aborted => pb::Decision::Aborted,
                Success::Pending => pb::Decision::Pending,
            };
            pb::GetDecisionResponse { decision: decision as i32, reason: "scripted".into(), ..Default::default() }
        })
        .await
    }
    async fn register(&self, _: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        self.act("Register", pb::RegisterResponse::default).await
    }
    async fn get_topology(&self, _: Request<pb::GetTopologyRequest>) -> Result<Response<pb::Topology>, Status> {
        self.act("GetTopology", || pb::Topology { partitions: 1, members: vec![] }).await
    }
    async fn list_transactions(
        &self,
        _: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        self.act("ListTransactions", pb::ListTransactionsResponse::default).await
    }
    async fn set_failpoint(
        &self,
        _: Request<pb::SetFailpointRequest>,
    ) -> Result<Response<pb::SetFailpointResponse>, Status> {
        self.act("SetFailpoint", pb::SetFailpointResponse::default).await
    }
    async fn enlist_batch(
        &self,
        r: Request<pb::EnlistBatchRequest>,
    ) -> Result<Response<pb::EnlistBatchResponse>, Status> {
        let n = r.into_inner().requests.len();
        self.act("EnlistBatch", || pb::EnlistBatchResponse { results: vec![pb::EnlistResult::default(); n] }).await
    }
    async fn begin_batch(&self, r: Request<pb::BeginBatchRequest>) -> Result<Response<pb::BeginBatchResponse>, Status> {
        let n = r.into_inner().requests.len();
        self.act("BeginBatch", || pb::BeginBatchResponse {
            results: (0..n)
                .map(|_| pb::BeginResult { tid: uuid::Uuid::now_v7().to_string(), ..Default::default() })
                .collect(),
        })
        .await
    }
}
