//! The shared client handle: the coordinators it follows, the topology, and
//! one cached channel per participant address.
//!
//! Coordinator calls go through one [`Follower`] over the addresses given
//! (`A,B,C`; PROTOCOL.md rule 16, `twopc_leader::follow`): a standby's
//! answer names the leader and the call goes there; a connection failure
//! or an UNAVAILABLE without a hint moves to the next address, with a
//! short capped backoff when it comes back to one already tried. Each
//! call is bounded by [`ConnectOptions::call_budget`] (15 s by default,
//! enough to ride out an election at the default 3 s lease) and a number
//! of hops, and each attempt by [`COORDINATOR_ATTEMPT`] (a frozen
//! coordinator counts as a failed attempt, not as the whole call); when
//! they run out the error names every address tried and its last error. Begin (batched), GetDecision, GetTopology, Abort and the
//! admin calls are retried anywhere: a standby changed nothing and these
//! are idempotent (rule 11). Commit is resent only where it certainly did
//! nothing; a Commit cut off mid-flight has an unknown outcome, which
//! [`crate::Txn::commit`] then learns from whoever leads. With one
//! address, a failure without a hint is returned at once, as before lists
//! existed.
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
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Response, Status};
use twopc_leader::follow::{Coordinator, FollowError, Follower, Policy, Retry};
use twopc_proto::admin_token::AdminToken;
use twopc_proto::limits::SizeLimits;
use twopc_proto::pb;
use twopc_proto::pb::participant_client::ParticipantClient;
use twopc_proto::tls::ClientTls;
use twopc_proto::token::PeerToken;
use uuid::Uuid;

use crate::routing::{CONNECT_TIMEOUT, participant_client, partition_for};
use crate::{AbortKind, ClientError, Txn};
use twopc_proto::batch::{self, Batcher};
use twopc_proto::reason;

/// A handle to a twopc cluster. Cheap to clone; clones share channels.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("coordinators", &self.inner.follower).finish_non_exhaustive()
    }
}

struct Inner {
    options: ConnectOptions,
    /// The coordinators given, and the one followed now.
    follower: Follower,
    routes: Mutex<Routes>,
    /// Begin calls of concurrent transactions share BeginBatch RPCs.
    begins: Arc<Batcher<pb::BeginRequest, pb::BeginResponse>>,
    /// Operations of concurrent transactions share OperateBatch RPCs, per
    /// participant address.
    operations: Mutex<HashMap<String, Arc<Batcher<pb::Operation, pb::OperationResult>>>>,
    /// Tids reserved in blocks, drawn by `begin` (`crate::pool`).
    pool: crate::pool::TidPool,
}

/// How to reach a cluster beyond its addresses: TLS (plaintext by
/// default), the admin token sent with admin calls (none by default), and
/// how long one coordinator call may spend following the leader.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub tls: ClientTls,
    pub admin_token: AdminToken,
    /// The most one coordinator call (hops, backoff and the outcome
    /// question after a cut-off Commit included) may take; 15 s by default,
    /// which covers a failover at the default 3 s lease. Keep it above the
    /// coordinator's --prepare-timeout-ms, which a Commit may take.
    pub call_budget: Duration,
    /// The participants' key and value limits (their --max-key-bytes and
    /// --max-value-bytes; the defaults by default): the message limit of
    /// the channels to them and the byte bound of batched operations derive
    /// from these (`twopc_proto::limits`). Keep them equal to the
    /// participants'.
    pub sizes: SizeLimits,
    /// How many tids one BeginBlock reserves for this client's pool
    /// (`crate::pool`: [`Client::begin`] then usually takes a tid without a
    /// round trip); at most 64, and the pool keeps at most two blocks.
    /// 0 (the default) turns the pool off: every begin is a Begin call. A
    /// pool suits a long-lived client that begins many transactions; a
    /// short-lived one (a CLI command) would only leave reserved tids
    /// behind, counted against the coordinator's open bound until they are
    /// dropped unused (30 s).
    pub tid_pool: usize,
    /// Whether a transaction begun by this client declares its operations
    /// (PROTOCOL.md rule 2's second design, [`crate::Txn`]): its operations
    /// are answered without waiting for their participant to enlist, and
    /// its commit declares them. On by default; the environment variable
    /// `TWOPC_DECLARE=0` turns it off (every first operation at a
    /// participant then waits for its enlistment, as a transaction attached
    /// by tid always does), e.g. to compare the two in `twopc bench`.
    pub declare: bool,
}

/// [`ConnectOptions::call_budget`]'s default.
pub const DEFAULT_CALL_BUDGET: Duration = Duration::from_secs(15);

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            tls: ClientTls::default(),
            admin_token: AdminToken::default(),
            call_budget: DEFAULT_CALL_BUDGET,
            sizes: SizeLimits::default(),
            tid_pool: 0,
            declare: std::env::var("TWOPC_DECLARE").map_or(true, |v| v.trim() != "0"),
        }
    }
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
    /// Also the answer for a tid the coordinator never heard of and that
    /// is newer than the oldest decision it keeps (presumed abort:
    /// [`AbortKind::Unknown`], or [`AbortKind::CoordinatorRestarted`] for a
    /// tid begun before it started).
    Aborted {
        /// Why, in words: the real cause, as the process that aborted it saw
        /// it (which partition, what happened).
        reason: String,
        /// The kind of that cause.
        kind: AbortKind,
    },
    /// Still deciding: ask again later.
    Pending,
    /// The coordinator no longer knows the outcome: the tid is older than
    /// the oldest decision its log keeps (`--keep-finished`), so it may
    /// have committed or aborted; check the data. Never said of a tid the
    /// log still keeps (PROTOCOL.md rule 6).
    Forgotten {
        reason: String,
    },
}

/// One attempt of a coordinator call is cut at this, and the call moves on
/// to the next address (an idempotent call) or asks for the outcome (a
/// Commit, see [`crate::Txn::commit`]). Without it a frozen coordinator
/// (SIGSTOPped, or hung: it accepts connections and never answers), which
/// stays the one calls go to first, would take every call's whole budget,
/// and the client would never reach the leader that replaced it.
/// Begin, GetDecision, GetTopology and Abort answer in milliseconds from a
/// live leader, so theirs are cut sooner ([`QUICK_ATTEMPT`]): a CLI command
/// whose first listed coordinator is frozen loses 2 s to it, not 5.
pub(crate) const COORDINATOR_ATTEMPT: Duration = Duration::from_secs(5);

/// The attempt limit of the calls that never wait for a transaction (see
/// [`COORDINATOR_ATTEMPT`]).
pub(crate) const QUICK_ATTEMPT: Duration = Duration::from_secs(2);

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
    /// Connects to the coordinators at `host:port[,host:port...]` over
    /// plaintext and fetches the topology.
    pub async fn connect(coordinators: &str) -> Result<Client, ClientError> {
        Self::connect_with(coordinators, ConnectOptions::default()).await
    }

    /// Connects to the coordinators at `host:port[,host:port...]` (one
    /// leads, the others are standbys; see the module docs) with `options`
    /// (TLS, admin token, call budget; the participants are reached the same
    /// way) and fetches the topology.
    pub async fn connect_with(coordinators: &str, options: ConnectOptions) -> Result<Client, ClientError> {
        let follower = Follower::new(coordinators, options.tls.clone(), PeerToken::default(), CONNECT_TIMEOUT)
            .map_err(ClientError::InvalidArgument)?;
        let pool = crate::pool::TidPool::new(options.tid_pool);
        let client = Client {
            inner: Arc::new(Inner {
                pool,
                options,
                follower,
                routes: Mutex::new(Routes::default()),
                // Begin requests are a few bytes: the coordinator's (default)
                // message limit bounds their batches.
                begins: Batcher::new(MAX_BATCH, SizeLimits::default().batch_budget(), BATCHES_IN_FLIGHT),
                operations: Mutex::default(),
            }),
        };
        if let Err(e) = client.topology().await {
            // The first call: where a TLS mismatch shows (see the probe).
            let (tls, addr) = (client.inner.options.tls.is_enabled(), client.inner.follower.current());
            let peer = format!("the coordinator at {addr}");
            return Err(crate::error::tls_mismatch_probed(e, &peer, &addr, tls).await);
        }
        Ok(client)
    }

    /// Starts a transaction. `None` (or zero) takes the server's default
    /// timeout; the server caps it at its maximum.
    ///
    /// Its operations are declared at commit ([`ConnectOptions::declare`],
    /// see [`Txn`]): only this process (this `Txn` and its clones) can
    /// commit it. For a tid other processes will work on and commit by tid
    /// (the CLI's `begin`, then `put --tid`, `commit --tid`), use
    /// [`Client::begin_shared`].
    ///
    /// With a pool ([`ConnectOptions::tid_pool`]) and the default timeout,
    /// the tid usually comes from the pool, without a round trip; its local
    /// deadline starts now (see `crate::pool`).
    pub async fn begin(&self, timeout: Option<Duration>) -> Result<Txn, ClientError> {
        if timeout.is_none_or(|t| t.is_zero())
            && self.inner.pool.enabled()
            && let Some(txn) = self.begin_pooled().await
        {
            return Ok(txn);
        }
        self.begin_with(timeout, self.inner.options.declare).await
    }

    /// Starts a transaction that any process may attach to by tid and
    /// commit: its participants enlist before answering (see [`Txn`]), so
    /// nothing needs declaring. Slower than [`Client::begin`]'s. (Never
    /// from the pool: the pool's tids declare as this client does.)
    pub async fn begin_shared(&self, timeout: Option<Duration>) -> Result<Txn, ClientError> {
        self.begin_with(timeout, false).await
    }

    async fn begin_with(&self, timeout: Option<Duration>, declares: bool) -> Result<Txn, ClientError> {
        let timeout_ms = timeout.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let client = self.clone();
        let send = move |requests: Vec<pb::BeginRequest>| {
            let client = client.clone();
            async move {
                let resp = client
                    .inner
                    .follower
                    .call("BeginBatch", client.policy(), Retry::Idempotent, |mut c| {
                        let requests = requests.clone();
                        async move { c.begin_batch(pb::BeginBatchRequest { requests }).await }
                    })
                    .await
                    // Carried through the batcher as a status, restored below.
                    .map_err(FollowError::into_status)?
                    .into_inner();
                Ok(resp
                    .results
                    .into_iter()
                    .map(|r| {
                        let (tid, deadline_unix_ms, remaining_ms) = (r.tid, r.deadline_unix_ms, r.remaining_ms);
                        let sent_unix_ms = r.sent_unix_ms;
                        batch::item(r.code, r.message, || pb::BeginResponse {
                            tid,
                            deadline_unix_ms,
                            remaining_ms,
                            sent_unix_ms,
                        })
                    })
                    .collect())
            }
        };
        // The deadline is timed on this machine's monotonic clock from here
        // (see `twopc_proto::clock`): the coordinator's clock may differ.
        let asked = std::time::Instant::now();
        let resp = self.inner.begins.call(pb::BeginRequest { timeout_ms, declares }, send).await.map_err(|s| {
            match FollowError::from_status(s) {
                Ok(e) => self.follow_error(e),
                // An item's own refusal, or the batcher's.
                Err(s) => self.coordinator_error(s),
            }
        })?;
        let tid = Uuid::parse_str(&resp.tid)
            .map_err(|e| Status::unknown(format!("the coordinator returned a malformed tid {:?}: {e}", resp.tid)))?;
        let mut txn = self.txn(tid, resp.deadline_unix_ms);
        txn.expires = resp.remaining_ms.map(|left| asked + Duration::from_millis(left));
        // Declared operations need the time left, which only a coordinator
        // that sends remaining_ms gives; an older one gets enlist-first.
        txn.declaring = declares && txn.expires.is_some();
        Ok(txn)
    }

    /// A transaction on a tid from the pool, refilling it as needed; `None`
    /// when the pool has none to give (then `begin` calls Begin).
    async fn begin_pooled(&self) -> Option<Txn> {
        use crate::pool::Draw;
        let leader = self.inner.follower.current();
        let pooled = match self.inner.pool.draw(&leader) {
            Draw::Tid(p, refill) => {
                if let Some(r) = refill {
                    let client = self.clone();
                    tokio::spawn(async move { client.refill(r).await });
                }
                p
            }
            // Empty and idle: this caller fills it and takes the first tid.
            Draw::Empty(Some(r)) => {
                self.refill(r).await;
                match self.inner.pool.draw(&self.inner.follower.current()) {
                    Draw::Tid(p, refill) => {
                        if let Some(r) = refill {
                            let client = self.clone();
                            tokio::spawn(async move { client.refill(r).await });
                        }
                        p
                    }
                    Draw::Empty(_) => return None,
                }
            }
            // A refill is under way, or the pool is off: do not wait.
            Draw::Empty(None) => return None,
        };
        let mut txn = self.txn(pooled.tid, twopc_proto::now_unix_ms() + pooled.timeout.as_millis() as u64);
        txn.expires = Some(Instant::now() + pooled.timeout);
        // The block was reserved declaring as this client does (see
        // `refill`), and the pooled tid knows its time left.
        txn.declaring = self.inner.options.declare;
        Some(txn)
    }

    /// One BeginBlock for the pool. Resent only where it certainly did
    /// nothing: a block whose answer was lost stays reserved at the
    /// coordinator until it is dropped unused.
    async fn refill(&self, refill: crate::pool::Refill) {
        let asked = Instant::now();
        let req = pb::BeginBlockRequest { timeout_ms: 0, count: refill.count, declares: self.inner.options.declare };
        let resp = self
            .coordinator_call("BeginBlock", self.policy(), Retry::UntouchedOnly, |mut c| async move {
                c.begin_block(req).await
            })
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "reserving a block of tids failed: the pool is off for a while");
                self.inner.pool.refill_failed();
                return;
            }
        };
        let tids: Result<Vec<Uuid>, _> = resp.tids.iter().map(|t| Uuid::parse_str(t)).collect();
        let Ok(tids) = tids else {
            tracing::debug!("the coordinator answered BeginBlock with a malformed tid");
            self.inner.pool.refill_failed();
            return;
        };
        let block = crate::pool::Block {
            asked,
            tids,
            timeout: Duration::from_millis(resp.timeout_ms),
            unused: Duration::from_millis(resp.unused_ms),
            term: resp.coordinator_term,
            from: self.inner.follower.current(),
        };
        self.inner.pool.add(refill, block);
    }

    /// How many tids the pool holds now.
    pub fn pooled_tids(&self) -> usize {
        self.inner.pool.len()
    }

    /// Empties the tid pool: something suggests the coordinator that
    /// reserved its tids is gone (see `crate::pool`).
    pub(crate) fn drop_pool(&self) {
        self.inner.pool.drop_all();
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

    /// The coordinator's decision for `tid`, from whoever leads.
    pub async fn status(&self, tid: Uuid) -> Result<Decision, ClientError> {
        self.decision(tid, self.policy()).await.map_err(|e| self.follow_error(e))
    }

    /// GetDecision for `tid` within `policy`, following the leader.
    pub(crate) async fn decision(&self, tid: Uuid, policy: Policy) -> Result<Decision, FollowError> {
        let resp = self
            .coordinator_call("GetDecision", policy, Retry::Idempotent, |mut c| async move {
                // A client: a forgotten tid is answered FORGOTTEN (rule 6).
                c.get_decision(pb::GetDecisionRequest { tid: tid.to_string(), asking_partition: None }).await
            })
            .await?;
        match resp.decision() {
            pb::Decision::Committed => Ok(Decision::Committed),
            pb::Decision::Aborted => {
                Ok(Decision::Aborted { kind: reason::from_wire(resp.abort_kind), reason: resp.reason })
            }
            pb::Decision::Pending => Ok(Decision::Pending),
            pb::Decision::Forgotten => Ok(Decision::Forgotten { reason: resp.reason }),
            pb::Decision::Unspecified => Err(FollowError::Status {
                address: self.inner.follower.current(),
                status: Status::unknown("the coordinator answered GetDecision without a decision"),
            }),
        }
    }

    /// Fetches the topology afresh from the coordinator and routes by it
    /// from now on.
    pub async fn topology(&self) -> Result<Topology, ClientError> {
        let resp = self
            .coordinator_call("GetTopology", self.policy(), Retry::Idempotent, |mut c| async move {
                c.get_topology(pb::GetTopologyRequest {}).await
            })
            .await
            .map_err(|e| self.follow_error(e))?;
        let topology = Topology::from_pb(resp);
        tracing::debug!(?topology, "topology refreshed");
        let mut routes = self.routes();
        routes.channels.retain(|addr, _| topology.addresses.iter().flatten().any(|a| a == addr));
        routes.topology = topology.clone();
        Ok(topology)
    }

    /// One coordinator RPC, following the leader within `policy`.
    pub(crate) async fn coordinator_call<T, F, Fut>(
        &self,
        rpc: &'static str,
        policy: Policy,
        retry: Retry,
        call: F,
    ) -> Result<T, FollowError>
    where
        F: Fn(Coordinator) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let call = &call;
        self.inner.follower.call(rpc, policy, retry, |c| async move { call(c).await.map(Response::into_inner) }).await
    }

    /// The address of the coordinator calls go to now: the one that
    /// answered last (the leader, once one has answered).
    pub fn coordinator_address(&self) -> String {
        self.inner.follower.current()
    }

    /// The bounds of one coordinator call that never waits for a
    /// transaction: the whole budget, each attempt cut at [`QUICK_ATTEMPT`].
    pub(crate) fn policy(&self) -> Policy {
        Policy::within(self.inner.options.call_budget).attempts_within(QUICK_ATTEMPT)
    }

    /// The bounds of what is left of a call's budget begun at `started`
    /// (attempts cut at [`QUICK_ATTEMPT`]).
    pub(crate) fn policy_since(&self, started: Instant) -> Policy {
        Policy::within(self.inner.options.call_budget.saturating_sub(started.elapsed())).attempts_within(QUICK_ATTEMPT)
    }

    /// The bounds of a Commit, which waits for the votes and the forced
    /// record: what is left of the budget begun at `started`, each attempt
    /// cut at [`COORDINATOR_ATTEMPT`].
    pub(crate) fn commit_policy_since(&self, started: Instant) -> Policy {
        Policy::within(self.inner.options.call_budget.saturating_sub(started.elapsed()))
            .attempts_within(COORDINATOR_ATTEMPT)
    }

    pub(crate) fn options(&self) -> &ConnectOptions {
        &self.inner.options
    }

    /// A failed coordinator call as the caller sees it: an unreachable
    /// coordinator named by its address, every address when none led.
    pub(crate) fn follow_error(&self, e: FollowError) -> ClientError {
        // The coordinator may have changed: pooled tids may be unknown
        // there. Not for a definite refusal about the request itself (a
        // committed tid's abort, the open bound...): the coordinator that
        // answered it is the one that reserved them.
        let definite = matches!(&e, FollowError::Status { status, .. } if matches!(
            status.code(),
            Code::FailedPrecondition | Code::InvalidArgument | Code::ResourceExhausted | Code::Aborted
                | Code::PermissionDenied | Code::Unauthenticated
        ));
        if !definite {
            self.drop_pool();
        }
        match e {
            FollowError::Status { address, status } | FollowError::Uncertain { address, status } => {
                ClientError::from_rpc(status, || format!("the coordinator at {address}"))
            }
            e @ FollowError::Exhausted { .. } => ClientError::Unavailable(e.to_string()),
        }
    }

    /// A coordinator's status that did not come through the follower (a
    /// batch item's own refusal).
    fn coordinator_error(&self, status: Status) -> ClientError {
        ClientError::from_rpc(status, || format!("the coordinator at {}", self.inner.follower.current()))
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
                let c = participant_client(&address, &self.inner.options.tls, self.inner.options.sizes)?;
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

    /// The partition that owns `key` (None before any topology is known).
    pub(crate) fn partition_of(&self, key: &[u8]) -> Option<u32> {
        let partitions = self.routes().topology.partitions;
        (partitions > 0).then(|| partition_for(key, partitions))
    }

    async fn route_key(&self, key: &[u8]) -> Result<Route, ClientError> {
        let partitions = self.routes().topology.partitions;
        if partitions == 0 {
            return Err(ClientError::Unavailable(format!(
                "the coordinator at {} reports no partitions; is the cluster set up?",
                self.inner.follower.current()
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
        // An operation over the message limit would go alone and fail in
        // tonic's encoder as a reset stream: refuse it here, naming the limit.
        let (len, max) = (twopc_proto::limits::wire_size(&op), self.inner.options.sizes.message_limit());
        if len > max {
            return Err(ClientError::Status(twopc_proto::limits::too_large_to_send(len, max)));
        }
        let route = self.route_key(key).await?;
        let batcher = {
            let mut m = self.inner.operations.lock().unwrap_or_else(|p| p.into_inner());
            // Bounded by bytes too: large values share no batch past the
            // message limit (`twopc_proto::limits`, rule 2).
            let budget = self.inner.options.sizes.batch_budget();
            m.entry(route.address.clone()).or_insert_with(|| Batcher::new(MAX_BATCH, budget, BATCHES_IN_FLIGHT)).clone()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FailpointTarget, Outcome};
    use twopc_leader::fake_coordinator::{Act, FakeCoordinator};
    use twopc_leader::{standby_status, uncertain_status};

    fn dead_addr() -> String {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
    }

    fn budget(ms: u64) -> ConnectOptions {
        ConnectOptions { call_budget: Duration::from_millis(ms), ..ConnectOptions::default() }
    }

    #[tokio::test]
    async fn begin_status_and_abort_follow_a_standby_and_skip_a_dead_address() {
        let leader = FakeCoordinator::start(Box::new(|_, _| Act::Answer)).await;
        let standby = FakeCoordinator::standby(Some(leader.addr.to_string())).await;
        for list in [standby.addr.to_string(), format!("{},{}", dead_addr(), leader.addr)] {
            let client = Client::connect(&list).await.unwrap();
            let txn = client.begin(None).await.unwrap();
            assert_eq!(client.status(txn.tid()).await.unwrap(), Decision::Committed);
            txn.abort().await.unwrap();
            client.transactions().await.unwrap();
            client.set_failpoint(FailpointTarget::Coordinator, "x", "").await.unwrap();
        }
        assert_eq!(leader.calls("BeginBatch"), 2);
        assert_eq!(standby.calls("GetTopology"), 1);
        assert_eq!(standby.calls("BeginBatch"), 0, "after the first hop the leader is called directly");
    }

    #[tokio::test]
    async fn no_leader_anywhere_names_every_address_tried() {
        let (dead1, dead2) = (dead_addr(), dead_addr());
        let e = Client::connect_with(&format!("{dead1},{dead2}"), budget(400)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        let text = e.to_string();
        assert!(text.contains("GetTopology: no coordinator answered as leader"), "{text}");
        assert!(text.contains(&dead1) && text.contains(&dead2), "{text}");
        // Through the Begin batcher too.
        let script = || -> twopc_leader::fake_coordinator::Script {
            Box::new(|rpc, _| if rpc == "GetTopology" { Act::Answer } else { Act::Fail(uncertain_status()) })
        };
        let (a, b) = (FakeCoordinator::start(script()).await, FakeCoordinator::start(script()).await);
        let client = Client::connect_with(&format!("{},{}", a.addr, b.addr), budget(400)).await.unwrap();
        let text = client.begin(None).await.unwrap_err().to_string();
        assert!(text.starts_with("UNAVAILABLE: BeginBatch: no coordinator answered as leader"), "{text}");
        assert!(text.contains(&a.addr.to_string()) && text.contains(&b.addr.to_string()), "{text}");
        assert!(text.contains("cannot confirm its leadership"), "{text}");
        // One address, dead: at once, as before lists existed.
        let e = Client::connect(&dead1).await.unwrap_err();
        assert!(e.to_string().contains(&format!("the coordinator at {dead1} refused the connection")), "{e}");
        assert!(!e.to_string().contains("TLS"), "{e}");
        let e = Client::connect("a:1,,b:2").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    }

    /// A Commit cut off at the old leader, which is now a standby naming
    /// the new one: the outcome comes from GetDecision there.
    #[tokio::test]
    async fn a_commit_cut_off_learns_its_outcome_from_the_new_leader() {
        for (answer, want) in [
            ((|| Act::Answer) as fn() -> Act, Outcome::Committed),
            (|| Act::Aborted, Outcome::Aborted { reason: "scripted".into(), kind: AbortKind::Other }),
        ] {
            let new =
                FakeCoordinator::start(Box::new(move |rpc, _| if rpc == "Commit" { Act::Hang } else { answer() }))
                    .await;
            let to = new.addr.to_string();
            let old = FakeCoordinator::start(Box::new(move |rpc, n| match (rpc, n) {
                ("GetTopology" | "BeginBatch", _) => Act::Answer,
                ("Commit", 1) => Act::Fail(uncertain_status()),
                _ => Act::Fail(standby_status(Some(&to))),
            }))
            .await;
            let client = Client::connect_with(&old.addr.to_string(), budget(5_000)).await.unwrap();
            let txn = client.begin(None).await.unwrap();
            assert_eq!(txn.commit().await.unwrap(), want);
            assert_eq!((old.calls("Commit"), new.calls("Commit")), (1, 0), "never resent blindly");
            assert_eq!((old.calls("GetDecision"), new.calls("GetDecision")), (1, 1));
        }
    }

    /// PENDING: the leader holds the tid live; the Commit is repeated there
    /// (rule 11) and its answer is the outcome.
    #[tokio::test]
    async fn a_pending_tid_gets_its_commit_repeated() {
        let f = FakeCoordinator::start(Box::new(|rpc, n| match (rpc, n) {
            ("Commit", 1) => Act::Fail(tonic::Status::unknown("transport error")),
            ("GetDecision", _) => Act::Pending,
            _ => Act::Answer,
        }))
        .await;
        let client = Client::connect(&f.addr.to_string()).await.unwrap();
        let txn = client.begin(None).await.unwrap();
        assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
        assert_eq!((f.calls("Commit"), f.calls("GetDecision")), (2, 1));
    }

    #[tokio::test]
    async fn a_commit_whose_outcome_stays_unknown_says_so_within_the_budget() {
        let f = FakeCoordinator::start(Box::new(|rpc, _| match rpc {
            "Commit" => Act::Fail(uncertain_status()),
            "GetDecision" => Act::Pending,
            _ => Act::Answer,
        }))
        .await;
        let client = Client::connect_with(&f.addr.to_string(), budget(600)).await.unwrap();
        let txn = client.begin(None).await.unwrap();
        let started = Instant::now();
        let e = txn.commit().await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        assert_eq!(e.code(), tonic::Code::Unavailable);
        let text = e.to_string();
        assert!(text.contains(&format!("the outcome of tid {} is unknown", txn.tid())), "{text}");
        assert!(text.contains("the call budget ran out before a leader said"), "{text}");
        assert!(f.calls("GetDecision") >= 2, "kept asking");
        // The only coordinator gone: asking fails at once, and says so.
        let dead = dead_addr();
        let g = FakeCoordinator::start(Box::new(|rpc, _| match rpc {
            "Commit" => Act::Fail(uncertain_status()),
            "GetDecision" => Act::Fail(tonic::Status::unavailable("gone")),
            _ => Act::Answer,
        }))
        .await;
        let client = Client::connect(&g.addr.to_string()).await.unwrap();
        let txn = client.begin(None).await.unwrap();
        let text = txn.commit().await.unwrap_err().to_string();
        assert!(text.contains("asking for its outcome failed") && text.contains("is unknown"), "{text}");
        drop(dead);
    }
}
