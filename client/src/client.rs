//! The shared client handle: a coordinator channel, the topology, and one
//! cached channel per participant address.
//!
//! The topology is only a routing hint. A participant that restarts may come
//! back at a new address, so an UNAVAILABLE from a participant (or a
//! partition with no address) triggers one refresh from the coordinator.
//! Only a committed `read` is retried after that: an operation inside a
//! transaction may have hit a participant that lost the tid, and repeating
//! it elsewhere could not bring that state back; the coordinator will abort
//! the tid, so the error goes to the caller.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Response, Status};
use twopc_proto::admin_token::AdminToken;
use twopc_proto::pb;
use twopc_proto::pb::coordinator_client::CoordinatorClient;
use twopc_proto::pb::participant_client::ParticipantClient;
use twopc_proto::tls::ClientTls;
use uuid::Uuid;

use crate::error::error_chain;
use crate::routing::{endpoint, partition_for};
use crate::{ClientError, Txn};
use twopc_proto::batch::{self, Batcher};

/// A handle to a twopc cluster. Cheap to clone; clones share channels.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("coordinator", &self.inner.coordinator_addr).finish_non_exhaustive()
    }
}

struct Inner {
    coordinator_addr: String,
    options: ConnectOptions,
    coordinator: CoordinatorClient<Channel>,
    routes: Mutex<Routes>,
    /// Begin calls of concurrent transactions share BeginBatch RPCs.
    begins: Arc<Batcher<pb::BeginRequest, pb::BeginResponse>>,
    /// Operations of concurrent transactions share OperateBatch RPCs, per
    /// participant address.
    operations: Mutex<HashMap<String, Arc<Batcher<pb::Operation, pb::OperationResult>>>>,
}

/// How to reach a cluster beyond its address: TLS (plaintext by default)
/// and the admin token sent with admin calls (none by default).
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub tls: ClientTls,
    pub admin_token: AdminToken,
}

/// Most items in one batch RPC, and batch RPCs in flight per peer.
const MAX_BATCH: usize = 256;
const BATCHES_IN_FLIGHT: usize = 2;

#[derive(Default)]
struct Routes {
    topology: Topology,
    /// Keyed by address, so a partition that moves gets a new channel and
    /// one that stays keeps its connection.
    channels: HashMap<String, ParticipantClient<Channel>>,
}

/// The partition map as the coordinator last reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub partitions: u32,
    /// Indexed by partition; `None` where no participant has registered.
    pub addresses: Vec<Option<String>>,
}

impl Topology {
    /// The registered address of partition `p`, if any.
    pub fn address(&self, p: u32) -> Option<&str> {
        self.addresses.get(p as usize)?.as_deref()
    }

    fn from_pb(t: pb::Topology) -> Self {
        let mut addresses = vec![None; t.partitions as usize];
        for m in t.members {
            if let Some(slot) = addresses.get_mut(m.partition as usize)
                && !m.address.is_empty()
            {
                *slot = Some(m.address);
            }
        }
        Topology { partitions: t.partitions, addresses }
    }
}

/// What the coordinator knows about a tid (PROTOCOL.md rule 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Committed,
    /// Also the answer for a tid the coordinator never heard of.
    Aborted {
        reason: String,
    },
    /// Still deciding: ask again later.
    Pending,
}

/// How long a committed read or an admin call may go unanswered before the
/// peer is reported as stuck: none of them waits for locks.
pub(crate) const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs an RPC future, giving up after `limit` with DEADLINE_EXCEEDED naming
/// `peer`: a wedged process must not hang the caller forever.
pub(crate) async fn within<T>(
    limit: Option<Duration>,
    peer: impl FnOnce() -> String,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let Some(limit) = limit else {
        return fut.await;
    };
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(Status::deadline_exceeded(format!("{} did not answer within {}ms", peer(), limit.as_millis())))
    })
}

/// One participant, resolved for one call.
pub(crate) struct Route {
    pub partition: u32,
    pub address: String,
    pub client: ParticipantClient<Channel>,
}

impl Route {
    pub(crate) fn peer(&self) -> String {
        format!("partition {} at {}", self.partition, self.address)
    }

    pub(crate) fn error(&self, status: Status) -> ClientError {
        ClientError::from_rpc(status, || self.peer())
    }

    /// Calls `call` on this participant within `limit`.
    pub(crate) async fn call<T, F, Fut>(&self, limit: Option<Duration>, call: &F) -> Result<Response<T>, Status>
    where
        F: Fn(ParticipantClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        within(limit, || self.peer(), call(self.client.clone())).await
    }
}

impl Client {
    /// Connects to the coordinator at `host:port` over plaintext and
    /// fetches the topology.
    pub async fn connect(coordinator_addr: &str) -> Result<Client, ClientError> {
        Self::connect_with(coordinator_addr, ConnectOptions::default()).await
    }

    /// Connects to the coordinator at `host:port` with `options` (TLS, admin
    /// token; the participants are reached the same way) and fetches the
    /// topology.
    pub async fn connect_with(coordinator_addr: &str, options: ConnectOptions) -> Result<Client, ClientError> {
        let channel = endpoint(coordinator_addr, &options.tls)?.connect().await.map_err(|e| {
            ClientError::Unavailable(format!(
                "cannot reach the coordinator at {coordinator_addr} ({}); is it running?",
                error_chain(&e)
            ))
        })?;
        let client = Client {
            inner: Arc::new(Inner {
                coordinator_addr: coordinator_addr.to_string(),
                options,
                coordinator: CoordinatorClient::new(channel),
                routes: Mutex::new(Routes::default()),
                begins: Batcher::new(MAX_BATCH, BATCHES_IN_FLIGHT),
                operations: Mutex::default(),
            }),
        };
        client.topology().await?;
        Ok(client)
    }

    /// Starts a transaction. `None` (or zero) takes the server's default
    /// timeout; the server caps it at its maximum.
    pub async fn begin(&self, timeout: Option<Duration>) -> Result<Txn, ClientError> {
        let timeout_ms = timeout.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let coordinator = self.coordinator();
        let send = move |requests: Vec<pb::BeginRequest>| {
            let mut c = coordinator.clone();
            async move {
                let resp = c.begin_batch(pb::BeginBatchRequest { requests }).await?.into_inner();
                Ok(resp
                    .results
                    .into_iter()
                    .map(|r| {
                        let (tid, deadline_unix_ms) = (r.tid, r.deadline_unix_ms);
                        batch::item(r.code, r.message, || pb::BeginResponse { tid, deadline_unix_ms })
                    })
                    .collect())
            }
        };
        let resp = self
            .inner
            .begins
            .call(pb::BeginRequest { timeout_ms }, send)
            .await
            .map_err(|s| self.coordinator_error(s))?;
        let tid = Uuid::parse_str(&resp.tid)
            .map_err(|e| Status::unknown(format!("the coordinator returned a malformed tid {:?}: {e}", resp.tid)))?;
        Ok(self.txn(tid, resp.deadline_unix_ms))
    }

    /// Attaches to an existing transaction; `deadline_unix_ms` may be 0 when
    /// unknown (it is informational only).
    pub fn txn(&self, tid: Uuid, deadline_unix_ms: u64) -> Txn {
        Txn::new(self.clone(), tid, deadline_unix_ms)
    }

    /// Reads the committed value of `key`, outside any transaction.
    pub async fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let req = pb::ReadRequest { key: key.to_vec() };
        let resp = self
            .on_key(key, true, Some(ADMIN_TIMEOUT), move |mut c| {
                let req = req.clone();
                async move { c.read(req).await }
            })
            .await?;
        Ok(resp.found.then_some(resp.value))
    }

    /// The coordinator's decision for `tid`.
    pub async fn status(&self, tid: Uuid) -> Result<Decision, ClientError> {
        let resp = self
            .coordinator()
            .get_decision(pb::GetDecisionRequest { tid: tid.to_string() })
            .await
            .map_err(|s| self.coordinator_error(s))?
            .into_inner();
        match resp.decision() {
            pb::Decision::Committed => Ok(Decision::Committed),
            pb::Decision::Aborted => Ok(Decision::Aborted { reason: resp.reason }),
            pb::Decision::Pending => Ok(Decision::Pending),
            pb::Decision::Unspecified => {
                Err(Status::unknown("the coordinator answered GetDecision without a decision").into())
            }
        }
    }

    /// Fetches the topology afresh from the coordinator and routes by it
    /// from now on.
    pub async fn topology(&self) -> Result<Topology, ClientError> {
        let resp = self
            .coordinator()
            .get_topology(pb::GetTopologyRequest {})
            .await
            .map_err(|s| self.coordinator_error(s))?
            .into_inner();
        let topology = Topology::from_pb(resp);
        tracing::debug!(?topology, "topology refreshed");
        let mut routes = self.routes();
        routes.channels.retain(|addr, _| topology.addresses.iter().flatten().any(|a| a == addr));
        routes.topology = topology.clone();
        Ok(topology)
    }

    pub(crate) fn coordinator(&self) -> CoordinatorClient<Channel> {
        self.inner.coordinator.clone()
    }

    pub(crate) fn options(&self) -> &ConnectOptions {
        &self.inner.options
    }

    pub(crate) fn coordinator_peer(&self) -> String {
        format!("the coordinator at {}", self.inner.coordinator_addr)
    }

    pub(crate) fn coordinator_error(&self, status: Status) -> ClientError {
        ClientError::from_rpc(status, || self.coordinator_peer())
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        // A panic while holding the lock cannot leave Routes half-updated in
        // a harmful way: it is only a cache.
        self.inner.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached route to partition `p`, or `None` if it has no address.
    fn lookup(&self, p: u32) -> Result<Option<Route>, ClientError> {
        let mut routes = self.routes();
        let Some(address) = routes.topology.address(p).map(str::to_string) else {
            return Ok(None);
        };
        let client = match routes.channels.get(&address) {
            Some(c) => c.clone(),
            None => {
                let c = ParticipantClient::new(endpoint(&address, &self.inner.options.tls)?.connect_lazy());
                routes.channels.insert(address.clone(), c.clone());
                c
            }
        };
        Ok(Some(Route { partition: p, address, client }))
    }

    /// The route to partition `p`, refreshing the topology once if it has
    /// no address yet (its participant may have registered since).
    pub(crate) async fn route_partition(&self, p: u32) -> Result<Route, ClientError> {
        if let Some(r) = self.lookup(p)? {
            return Ok(r);
        }
        let topology = self.topology().await?;
        if p >= topology.partitions {
            return Err(ClientError::InvalidArgument(format!(
                "partition {p} does not exist: the cluster has {} partitions",
                topology.partitions
            )));
        }
        self.lookup(p)?.ok_or_else(|| {
            ClientError::Unavailable(format!("partition {p} has no registered participant; is it running?"))
        })
    }

    async fn route_key(&self, key: &[u8]) -> Result<Route, ClientError> {
        let partitions = self.routes().topology.partitions;
        if partitions == 0 {
            return Err(ClientError::Unavailable(format!(
                "the coordinator at {} reports no partitions; is the cluster set up?",
                self.inner.coordinator_addr
            )));
        }
        self.route_partition(partition_for(key, partitions)).await
    }

    /// Runs one operation of a transaction on the partition owning `key`,
    /// within `limit`, batched with the concurrent operations of other
    /// transactions on the same participant. On UNAVAILABLE it refreshes the
    /// topology (the participant may have moved) and fails: the participant
    /// may have lost the transaction.
    pub(crate) async fn operate(
        &self,
        key: &[u8],
        op: pb::Operation,
        limit: Option<Duration>,
    ) -> Result<pb::OperationResult, ClientError> {
        let route = self.route_key(key).await?;
        let batcher = {
            let mut m = self.inner.operations.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(route.address.clone()).or_insert_with(|| Batcher::new(MAX_BATCH, BATCHES_IN_FLIGHT)).clone()
        };
        let client = route.client.clone();
        let send = move |operations: Vec<pb::Operation>| {
            let mut c = client.clone();
            async move {
                let resp = c.operate_batch(pb::OperationBatch { operations }).await?.into_inner();
                Ok(resp
                    .results
                    .into_iter()
                    .map(|r| {
                        let (code, message) = (r.code, r.message.clone());
                        batch::item(code, message, || r)
                    })
                    .collect())
            }
        };
        match within(limit, || route.peer(), batcher.call(op, send)).await {
            Ok(r) => Ok(r),
            Err(s) => {
                if s.code() == Code::Unavailable
                    && let Err(e) = self.topology().await
                {
                    tracing::debug!(error = %e, "topology refresh failed");
                }
                Err(route.error(s))
            }
        }
    }

    /// Runs one participant RPC on the partition owning `key`, within
    /// `limit`. On UNAVAILABLE it refreshes the topology, and repeats the
    /// call once only if `retry` (safe for committed reads alone; see the
    /// module doc).
    pub(crate) async fn on_key<T, F, Fut>(
        &self,
        key: &[u8],
        retry: bool,
        limit: Option<Duration>,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(ParticipantClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let route = self.route_key(key).await?;
        match route.call(limit, &call).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) if s.code() == Code::Unavailable => {
                if let Err(e) = self.topology().await {
                    tracing::debug!(error = %e, "topology refresh failed");
                }
                if !retry {
                    return Err(route.error(s));
                }
                let route = self.route_key(key).await?;
                route.call(limit, &call).await.map(Response::into_inner).map_err(|s| route.error(s))
            }
            Err(s) => Err(route.error(s)),
        }
    }
}
