//! The `twopc.v1.Participant` gRPC service: validates requests and hands
//! them to the [`Node`].

use std::sync::Arc;

use futures::future::join_all;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use twopc_core::Tid;
use twopc_proto::admin_token::AdminToken;
use twopc_proto::limits::SizeLimits;
use twopc_proto::pb::{self, participant_server::Participant as ParticipantRpc};
use twopc_proto::token::PeerToken;
use twopc_proto::{clock, failpoint, tid};

use crate::error::ParticipantError;
use crate::heuristics::Resolution;
use crate::node::{Node, OnePhaseReply, VoteReply};

/// Input limits, checked before anything else.
#[derive(Debug, Clone)]
pub struct InputLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl InputLimits {
    /// The limits the message limit and batch budget derive from.
    pub fn sizes(&self) -> SizeLimits {
        SizeLimits { max_key_bytes: self.max_key_bytes, max_value_bytes: self.max_value_bytes }
    }
}

/// Bounds an OperateBatch answer by bytes (`twopc_proto::limits`, rule 3):
/// results are kept in order while they fit `budget`; a Get result that
/// would not fit is replaced by `must_wait`, so the client repeats that
/// Get with its unary call (the read was done and its lock is held, so the
/// repeat reads the same value), whose answer carries one value and always
/// fits. Other results carry no value and are always kept. Returns the
/// indices of the results replaced: those reads were done but not answered,
/// so they are not counted (the repeat is; `twopc_core::participant`, rule 2).
pub fn fit_operation_results(results: &mut [pb::OperationResult], budget: usize) -> Vec<usize> {
    let mut used = 0usize;
    let mut replaced = vec![];
    for (i, r) in results.iter_mut().enumerate() {
        let size = twopc_proto::limits::wire_size(r);
        if used.saturating_add(size) > budget && r.code == 0 && !r.value.is_empty() {
            *r = pb::OperationResult { must_wait: true, ..Default::default() };
            replaced.push(i);
            used = used.saturating_add(twopc_proto::limits::wire_size(r));
        } else {
            used = used.saturating_add(size);
        }
    }
    replaced
}

/// A declared operation's remaining time (`Operation.declared`, rule 2):
/// `None` for an operation that is not declared.
fn declared(declared: bool, remaining_ms: u64) -> Result<Option<u64>, Status> {
    match (declared, remaining_ms) {
        (false, _) => Ok(None),
        (true, 0) => Err(Status::invalid_argument(
            "a declared operation needs remaining_ms, the time left until the transaction's deadline (from Begin)",
        )),
        (true, left) => Ok(Some(left)),
    }
}

/// The declared count of each tid of a batch (`TidBatch.declared_operations`):
/// empty means none declared; 0 means not declared.
fn declared_counts(batch: &pb::TidBatch) -> Result<Vec<Option<u64>>, Status> {
    if batch.declared_operations.is_empty() {
        return Ok(vec![None; batch.tids.len()]);
    }
    if batch.declared_operations.len() != batch.tids.len() {
        return Err(Status::invalid_argument(format!(
            "declared_operations has {} counts for {} tids: send one per tid, or none",
            batch.declared_operations.len(),
            batch.tids.len()
        )));
    }
    Ok(batch.declared_operations.iter().map(|&n| (n > 0).then_some(n)).collect())
}

pub struct ParticipantService {
    pub node: Arc<Node>,
    /// Guards the admin RPCs (ListInDoubt, SetFailpoint).
    pub admin_token: AdminToken,
    /// Guards the coordinator's calls (Prepare, Commit, Abort, their batch
    /// forms, CommitOnePhaseBatch): a client calling Abort on a prepared tid,
    /// or a one-phase commit on one participant of a multi-partition tid,
    /// would break atomicity.
    pub peer_token: PeerToken,
    pub limits: InputLimits,
}

type Reply<T> = Result<Response<T>, Status>;

impl ParticipantService {
    fn check_key(&self, key: &[u8]) -> Result<(), Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("key is empty: keys must be 1 or more bytes"));
        }
        if key.len() > self.limits.max_key_bytes {
            // Over a size limit: RESOURCE_EXHAUSTED, gRPC's convention (`twopc_proto::limits`, rule 4).
            return Err(Status::resource_exhausted(format!(
                "key is {} bytes, over the limit of {} bytes (--max-key-bytes)",
                key.len(),
                self.limits.max_key_bytes
            )));
        }
        // Rule 12: only this partition's keys (`crate::ownership`).
        self.node.ownership.check(key)?;
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Status> {
        if value.len() > self.limits.max_value_bytes {
            return Err(Status::resource_exhausted(format!(
                "value is {} bytes, over the limit of {} bytes (--max-value-bytes)",
                value.len(),
                self.limits.max_value_bytes
            )));
        }
        Ok(())
    }
}

impl ParticipantService {
    /// The span of one transaction's work here. At debug level, so the
    /// default `info` pays nothing for it (measured: info-level spans on the
    /// protocol steps cost about 17% of throughput); `RUST_LOG=debug` shows
    /// every line of a tid under `txn{tid=.. partition=..}`.
    fn span(&self, tid: Tid) -> tracing::Span {
        tracing::debug_span!("txn", %tid, partition = self.node.partition)
    }

    async fn prepare_one(&self, tid: &str, declared: Option<u64>) -> Result<pb::PrepareResponse, Status> {
        let tid = tid::parse(tid)?;
        let (vote, (abort_kind, reason)) = match self.node.prepare(tid, declared).instrument(self.span(tid)).await? {
            VoteReply::Yes => (pb::Vote::Yes, (0, String::new())),
            VoteReply::ReadOnly => (pb::Vote::ReadOnly, (0, String::new())),
            VoteReply::No(why) => (pb::Vote::No, twopc_proto::reason::fields(&why)),
        };
        if vote != pb::Vote::Yes {
            let label = if vote == pb::Vote::No { "no" } else { "read_only" };
            metrics::counter!("twopc_votes_total", "vote" => label).increment(1);
        }
        Ok(pb::PrepareResponse { vote: vote as i32, reason, abort_kind })
    }

    /// One operation of a batch, as its unary twin runs it except that it
    /// never waits for a lock.
    async fn operate_one(&self, op: pb::Operation) -> Result<pb::OperationResult, Status> {
        use pb::operation::Kind;
        let tid = tid::parse(&op.tid)?;
        self.check_key(&op.key)?;
        let declared = declared(op.declared, op.remaining_ms)?;
        let found = |v: Option<Vec<u8>>| pb::OperationResult {
            found: v.is_some(),
            value: v.unwrap_or_default(),
            ..Default::default()
        };
        // Inside a batch an operation never waits for a lock (see OperationResult.must_wait).
        let done = match op.kind() {
            Kind::Get => {
                self.node.get(tid, &op.key, false, false, declared).instrument(self.span(tid)).await.map(found)
            }
            Kind::GetForUpdate => {
                self.node.get(tid, &op.key, true, false, declared).instrument(self.span(tid)).await.map(found)
            }
            Kind::Put => {
                self.check_value(&op.value)?;
                self.node
                    .write(tid, &op.key, Some(op.value), false, declared)
                    .instrument(self.span(tid))
                    .await
                    .map(|()| pb::OperationResult::default())
            }
            Kind::Delete => self
                .node
                .write(tid, &op.key, None, false, declared)
                .instrument(self.span(tid))
                .await
                .map(|()| pb::OperationResult::default()),
            Kind::Unspecified => {
                return Err(Status::invalid_argument("operation kind is missing: GET, GET_FOR_UPDATE, PUT or DELETE"));
            }
        };
        match done {
            Err(ParticipantError::WouldWait) => Ok(pb::OperationResult { must_wait: true, ..Default::default() }),
            other => Ok(other?),
        }
    }

    async fn resolve_one(&self, tid: &str, commit: bool) -> Result<(), Status> {
        let tid = tid::parse(tid)?;
        if commit {
            self.node.commit(tid).instrument(self.span(tid)).await?
        } else {
            self.node.abort(tid).instrument(self.span(tid)).await?
        }
        Ok(())
    }

    async fn one_phase_one(&self, tid: &str, declared: Option<u64>) -> Result<pb::OnePhaseResult, Status> {
        let tid = tid::parse(tid)?;
        Ok(match self.node.commit_one_phase(tid, declared).instrument(self.span(tid)).await? {
            OnePhaseReply::Committed => pb::OnePhaseResult { committed: true, ..Default::default() },
            OnePhaseReply::Aborted(why) => {
                let (abort_kind, reason) = twopc_proto::reason::fields(&why);
                pb::OnePhaseResult { committed: false, reason, abort_kind, ..Default::default() }
            }
        })
    }

    async fn resolve_batch(&self, batch: pb::TidBatch, commit: bool) -> pb::ResolveBatchResponse {
        let answers = join_all(batch.tids.iter().map(|t| self.resolve_one(t, commit))).await;
        let results = answers
            .into_iter()
            .map(|r| match r {
                Ok(()) => pb::ResolveResult { code: 0, message: String::new() },
                Err(s) => pb::ResolveResult { code: s.code() as i32, message: s.message().to_string() },
            })
            .collect();
        pb::ResolveBatchResponse { results }
    }
}

#[tonic::async_trait]
impl ParticipantRpc for ParticipantService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Reply<pb::GetResponse> {
        let req = req.into_inner();
        let tid = tid::parse(&req.tid)?;
        self.check_key(&req.key)?;
        let declared = declared(req.declared, req.remaining_ms)?;
        let value = self.node.get(tid, &req.key, req.for_update, true, declared).instrument(self.span(tid)).await?;
        Ok(Response::new(pb::GetResponse { found: value.is_some(), value: value.unwrap_or_default() }))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Reply<pb::PutResponse> {
        let req = req.into_inner();
        let tid = tid::parse(&req.tid)?;
        self.check_key(&req.key)?;
        self.check_value(&req.value)?;
        let declared = declared(req.declared, req.remaining_ms)?;
        self.node.write(tid, &req.key, Some(req.value), true, declared).instrument(self.span(tid)).await?;
        Ok(Response::new(pb::PutResponse {}))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Reply<pb::DeleteResponse> {
        let req = req.into_inner();
        let tid = tid::parse(&req.tid)?;
        self.check_key(&req.key)?;
        let declared = declared(req.declared, req.remaining_ms)?;
        self.node.write(tid, &req.key, None, true, declared).instrument(self.span(tid)).await?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn read(&self, req: Request<pb::ReadRequest>) -> Reply<pb::GetResponse> {
        let req = req.into_inner();
        self.check_key(&req.key)?;
        let value = self.node.read(&req.key)?;
        Ok(Response::new(pb::GetResponse { found: value.is_some(), value: value.unwrap_or_default() }))
    }

    async fn prepare(&self, req: Request<pb::PrepareRequest>) -> Reply<pb::PrepareResponse> {
        self.peer_token.check(&req, "Prepare")?;
        let req = req.into_inner();
        let declared = (req.declared_operations > 0).then_some(req.declared_operations);
        Ok(Response::new(self.prepare_one(&req.tid, declared).await?))
    }

    async fn commit(&self, req: Request<pb::ResolveRequest>) -> Reply<pb::ResolveResponse> {
        self.peer_token.check(&req, "Commit")?;
        self.resolve_one(&req.into_inner().tid, true).await?;
        Ok(Response::new(pb::ResolveResponse {}))
    }

    async fn abort(&self, req: Request<pb::ResolveRequest>) -> Reply<pb::ResolveResponse> {
        self.peer_token.check(&req, "Abort")?;
        self.resolve_one(&req.into_inner().tid, false).await?;
        Ok(Response::new(pb::ResolveResponse {}))
    }

    async fn prepare_batch(&self, req: Request<pb::TidBatch>) -> Reply<pb::PrepareBatchResponse> {
        self.peer_token.check(&req, "PrepareBatch")?;
        // Every tid is handled concurrently, so their durable writes share
        // the store's group commit.
        let batch = req.into_inner();
        let counts = declared_counts(&batch)?;
        let answers = join_all(batch.tids.iter().zip(counts).map(|(t, n)| self.prepare_one(t, n))).await;
        let results = answers
            .into_iter()
            .map(|r| match r {
                Ok(v) => pb::PrepareResult {
                    code: 0,
                    message: String::new(),
                    vote: v.vote,
                    reason: v.reason,
                    abort_kind: v.abort_kind,
                },
                Err(s) => {
                    pb::PrepareResult { code: s.code() as i32, message: s.message().to_string(), ..Default::default() }
                }
            })
            .collect();
        Ok(Response::new(pb::PrepareBatchResponse { results }))
    }

    async fn operate_batch(&self, req: Request<pb::OperationBatch>) -> Reply<pb::OperationBatchResponse> {
        let operations = req.into_inner().operations;
        let tids: Vec<String> = operations.iter().map(|op| op.tid.clone()).collect();
        let answers = join_all(operations.into_iter().map(|op| self.operate_one(op))).await;
        let mut results: Vec<_> = answers
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|s| pb::OperationResult {
                    code: s.code() as i32,
                    message: s.message().to_string(),
                    ..Default::default()
                })
            })
            .collect();
        for i in fit_operation_results(&mut results, self.limits.sizes().batch_budget()) {
            if let Ok(tid) = tid::parse(&tids[i]) {
                self.node.core().op_not_answered(tid);
            }
        }
        Ok(Response::new(pb::OperationBatchResponse { results }))
    }

    async fn commit_batch(&self, req: Request<pb::TidBatch>) -> Reply<pb::ResolveBatchResponse> {
        self.peer_token.check(&req, "CommitBatch")?;
        Ok(Response::new(self.resolve_batch(req.into_inner(), true).await))
    }

    async fn abort_batch(&self, req: Request<pb::TidBatch>) -> Reply<pb::ResolveBatchResponse> {
        self.peer_token.check(&req, "AbortBatch")?;
        Ok(Response::new(self.resolve_batch(req.into_inner(), false).await))
    }

    async fn commit_one_phase_batch(&self, req: Request<pb::TidBatch>) -> Reply<pb::OnePhaseBatchResponse> {
        self.peer_token.check(&req, "CommitOnePhaseBatch")?;
        // Concurrently, so the durable writes share the store's group commit.
        let batch = req.into_inner();
        let counts = declared_counts(&batch)?;
        let answers = join_all(batch.tids.iter().zip(counts).map(|(t, n)| self.one_phase_one(t, n))).await;
        let results = answers
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|s| pb::OnePhaseResult {
                    code: s.code() as i32,
                    message: s.message().to_string(),
                    ..Default::default()
                })
            })
            .collect();
        Ok(Response::new(pb::OnePhaseBatchResponse { results }))
    }

    async fn list_in_doubt(&self, req: Request<pb::ListInDoubtRequest>) -> Reply<pb::ListInDoubtResponse> {
        self.admin_token.check(&req, "ListInDoubt")?;
        let now = clock::now_ms();
        let heuristics: Vec<pb::HeuristicOutcome> = self
            .node
            .store
            .heuristics()
            .into_iter()
            .map(|h| pb::HeuristicOutcome {
                tid: h.tid.to_string(),
                outcome: if h.committed { pb::Outcome::Committed } else { pb::Outcome::Aborted } as i32,
                reason: h.reason,
                at_unix_ms: h.at_unix_ms,
                contradicted: h.contradicted,
            })
            .collect();
        let cluster_id = self.node.store.cluster_id().unwrap_or_default();
        let mismatched_cluster_id = self.node.fence.mismatched().unwrap_or_default();
        let core = self.node.core();
        let mut tids: Vec<_> = core
            .in_doubt()
            .into_iter()
            .map(|d| pb::InDoubtTid {
                tid: d.tid.to_string(),
                prepared_for_ms: now.saturating_sub(d.since),
                asked: d.asked,
            })
            .collect();
        // The listing stops at the message limit (`twopc_proto::limits`,
        // rule 3), leaving room for the other fields.
        let others: usize = heuristics.iter().map(twopc_proto::limits::wire_size).sum();
        let budget = self.limits.sizes().batch_budget().saturating_sub(others + twopc_proto::limits::ITEM_OVERHEAD);
        let omitted_tids = twopc_proto::limits::fit(&mut tids, budget) as u32;
        Ok(Response::new(pb::ListInDoubtResponse {
            omitted_tids,
            partition: self.node.partition,
            tids,
            open_tids: core.open_tids() as u32,
            locked_keys: core.locked_keys() as u32,
            heuristics,
            cluster_id,
            mismatched_cluster_id,
        }))
    }

    async fn resolve_heuristically(
        &self,
        req: Request<pb::ResolveHeuristicallyRequest>,
    ) -> Reply<pb::ResolveHeuristicallyResponse> {
        self.admin_token.check(&req, "ResolveHeuristically")?;
        let req = req.into_inner();
        let tid = tid::parse(&req.tid)?;
        let outcome = if req.commit { "COMMIT" } else { "ABORT" };
        let partition = self.node.partition;
        let resolution = self.node.resolve_heuristically(tid, req.commit, req.override_lost_log, req.reason).await?;
        let detail = match resolution {
            Resolution::Heuristic => format!(
                "tid {tid}: {outcome} applied heuristically at partition {partition} and recorded; resolve the \
                 tid the same way at every other participant that holds it in doubt"
            ),
            Resolution::Decision => format!(
                "tid {tid}: the coordinator's decision log records {outcome}; applied at partition {partition} \
                 as its decision (nothing heuristic recorded)"
            ),
        };
        Ok(Response::new(pb::ResolveHeuristicallyResponse { heuristic: resolution == Resolution::Heuristic, detail }))
    }

    async fn set_failpoint(&self, req: Request<pb::SetFailpointRequest>) -> Reply<pb::SetFailpointResponse> {
        self.admin_token.check(&req, "SetFailpoint")?;
        failpoint::set_from_rpc(req.into_inner(), crate::FAILPOINTS)?;
        Ok(Response::new(pb::SetFailpointResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operate_batch_answer_stays_within_the_budget() {
        let get = |n: usize| pb::OperationResult { found: true, value: vec![7; n], ..Default::default() };
        let err = pb::OperationResult { code: 10, message: "lock conflict".into(), ..Default::default() };
        let mut results = vec![get(400), err.clone(), get(400), get(400), pb::OperationResult::default(), get(10)];
        fit_operation_results(&mut results, 1_000);
        let total: usize = results.iter().map(twopc_proto::limits::wire_size).sum();
        assert!(total <= 1_000, "{total}");
        assert_eq!(results[0], get(400));
        assert_eq!(results[1], err, "errors are kept");
        assert_eq!(results[2], get(400));
        assert!(results[3].must_wait && results[3].value.is_empty(), "did not fit: repeated alone");
        assert_eq!(results[5], get(10), "a later small one still fits");
    }
}
