//! The `twopc.v1.Coordinator` gRPC service: validates requests, turns them
//! into core events through the [`Driver`], and maps refusals to statuses.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use twopc_core::coordinator::{Action, DecisionAnswer, FORGOTTEN, Outcome, Phase, Refusal};
use twopc_proto::admin_token::AdminToken;
use twopc_proto::pb::{self, coordinator_server::Coordinator as CoordinatorRpc};
use twopc_proto::reason::{self, AbortKind, AbortReason};
use twopc_proto::token::PeerToken;
use twopc_proto::{clock, failpoint, now_unix_ms, tid};

use crate::clock_watch;
use crate::decision_log::LogError;
use crate::driver::{Driver, disk_full_reason};
use crate::error::CoordinatorError;

/// Limits on what clients may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    pub partitions: u32,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    /// How long a Commit call waits for the outcome before answering
    /// UNAVAILABLE (the client can then ask with GetDecision).
    pub commit_wait: Duration,
}

pub struct CoordinatorService {
    pub driver: Arc<Driver>,
    /// Guards the admin RPCs (ListTransactions, SetFailpoint).
    pub admin_token: AdminToken,
    /// Guards the participants' calls (Register, Enlist, EnlistBatch): a
    /// client must not be able to redirect a partition or enlist for one.
    pub peer_token: PeerToken,
    pub limits: Limits,
    /// The decision log's cluster id, sent with registrations and decisions
    /// so participants can tell a lost log from theirs.
    pub cluster_id: String,
    /// This coordinator's term (see `Recovered::term`), sent with the same
    /// answers so participants release tids of a replaced coordinator.
    pub term: u64,
    /// The store each partition belongs to (`crate::store_ids`).
    pub store_ids: crate::store_ids::StoreIds,
}

type Reply<T> = Result<Response<T>, Status>;

/// Registrations refused for their store: one line per 10 s (a refused
/// participant exits, but a supervisor may restart it in a loop).
static OTHER_STORE: twopc_proto::throttle::Throttle = twopc_proto::throttle::Throttle::new(Duration::from_secs(10));

impl CoordinatorService {
    fn check_partition(&self, partition: u32) -> Result<(), CoordinatorError> {
        if partition >= self.limits.partitions {
            return Err(CoordinatorError::InvalidArgument(format!(
                "partition {partition} is out of range: this cluster has partitions 0..{}",
                self.limits.partitions
            )));
        }
        Ok(())
    }
}

impl CoordinatorService {
    /// Rule 1, for one Begin (unary or inside a batch).
    fn begin_one(&self, req: pb::BeginRequest) -> Result<pb::BeginResponse, Status> {
        let asked = req.timeout_ms;
        let timeout = if asked == 0 { self.limits.default_timeout } else { Duration::from_millis(asked) };
        let timeout = timeout.min(self.limits.max_timeout);
        let tid = tid::new_tid();
        // On this process's deadline clock (`twopc_proto::clock`).
        let now = clock::now_ms();
        let deadline = now + timeout.as_millis() as u64;
        self.driver.state().core.begin(tid, now, deadline).map_err(|r| CoordinatorError::from_refusal(tid, r))?;
        tracing::debug!(%tid, deadline, "begun");
        metrics::counter!("twopc_transactions_begun_total").increment(1);
        Ok(pb::BeginResponse {
            tid: tid.to_string(),
            deadline_unix_ms: deadline,
            remaining_ms: Some(clock::remaining(deadline, now)),
            sent_unix_ms: now_unix_ms(),
        })
    }

    /// While the decision log is out of space (`Driver::disk`), a new
    /// commit of a tid that wrote is refused before anything is prepared
    /// (its record could not be written): the tid is aborted, so its locks
    /// go at once, and the answer is RESOURCE_EXHAUSTED naming the disk.
    /// One commit per probe interval goes through as the probe. A repeated
    /// commit of a tid already underway is not refused: it waits for the
    /// outcome as usual.
    fn refuse_if_disk_full(&self, tid: twopc_core::Tid) -> Result<(), CoordinatorError> {
        if self.driver.state().core.phase(tid) != Some(Phase::Active) {
            return Ok(());
        }
        let Some(detail) = self.driver.disk.should_refuse() else {
            return Ok(());
        };
        let reason = disk_full_reason(&detail);
        self.driver.apply(|c| ((), c.abort_requested(tid, reason.clone()).unwrap_or_default()));
        self.driver.disk.refused();
        Err(CoordinatorError::DiskFull { tid, reason: reason.detail })
    }

    /// Rule 2, for one enlistment (unary or inside a batch).
    fn enlist_one(&self, req: pb::EnlistRequest) -> Result<u64, Status> {
        let tid = tid::parse(&req.tid)?;
        self.check_partition(req.partition)?;
        clock_watch::heard_from(req.partition, req.sent_unix_ms);
        if !self.driver.peers.contains(req.partition) {
            return Err(CoordinatorError::NotRegistered(req.partition).into());
        }
        let deadline = self
            .driver
            .apply(|c| c.enlist(tid, req.partition, req.incarnation, clock::now_ms()))
            .map_err(|r| CoordinatorError::from_refusal(tid, r))?;
        Ok(deadline)
    }
}

#[tonic::async_trait]
impl CoordinatorRpc for CoordinatorService {
    async fn begin(&self, req: Request<pb::BeginRequest>) -> Reply<pb::BeginResponse> {
        Ok(Response::new(self.begin_one(req.into_inner())?))
    }

    async fn begin_batch(&self, req: Request<pb::BeginBatchRequest>) -> Reply<pb::BeginBatchResponse> {
        let results = req
            .into_inner()
            .requests
            .into_iter()
            .map(|r| match self.begin_one(r) {
                Ok(b) => pb::BeginResult {
                    code: 0,
                    message: String::new(),
                    tid: b.tid,
                    deadline_unix_ms: b.deadline_unix_ms,
                    remaining_ms: b.remaining_ms,
                    sent_unix_ms: b.sent_unix_ms,
                },
                Err(s) => {
                    pb::BeginResult { code: s.code() as i32, message: s.message().to_string(), ..Default::default() }
                }
            })
            .collect();
        Ok(Response::new(pb::BeginBatchResponse { results }))
    }

    async fn enlist(&self, req: Request<pb::EnlistRequest>) -> Reply<pb::EnlistResponse> {
        self.peer_token.check(&req, "Enlist")?;
        let deadline = self.enlist_one(req.into_inner())?;
        let now = clock::now_ms();
        Ok(Response::new(pb::EnlistResponse {
            deadline_unix_ms: deadline,
            cluster_id: self.cluster_id.clone(),
            coordinator_term: self.term,
            remaining_ms: Some(clock::remaining(deadline, now)),
            sent_unix_ms: now_unix_ms(),
        }))
    }

    async fn enlist_batch(&self, req: Request<pb::EnlistBatchRequest>) -> Reply<pb::EnlistBatchResponse> {
        self.peer_token.check(&req, "EnlistBatch")?;
        let (now, wall) = (clock::now_ms(), now_unix_ms());
        let results = req
            .into_inner()
            .requests
            .into_iter()
            .map(|r| match self.enlist_one(r) {
                Ok(deadline) => pb::EnlistResult {
                    code: 0,
                    message: String::new(),
                    deadline_unix_ms: deadline,
                    cluster_id: self.cluster_id.clone(),
                    coordinator_term: self.term,
                    remaining_ms: Some(clock::remaining(deadline, now)),
                    sent_unix_ms: wall,
                },
                Err(s) => {
                    pb::EnlistResult { code: s.code() as i32, message: s.message().to_string(), ..Default::default() }
                }
            })
            .collect();
        Ok(Response::new(pb::EnlistBatchResponse { results }))
    }

    async fn commit(&self, req: Request<pb::CommitRequest>) -> Reply<pb::CommitResponse> {
        let started = std::time::Instant::now();
        let req = req.into_inner();
        let tid = tid::parse(&req.tid)?;
        if req.wrote {
            self.refuse_if_disk_full(tid)?;
        }
        // A repeat answered from memory (a Reply, no decision now) is not a
        // commit's latency: the histogram counts transactions, not replies.
        let mut repeat = false;
        let rx = match self.driver.apply_and_wait(tid, |c| {
            let actions = c.commit_requested(tid, clock::now_ms(), req.wrote)?;
            repeat = actions.iter().any(|a| matches!(a, Action::Reply(..)))
                && !actions.iter().any(|a| matches!(a, Action::Decided(..)));
            Ok(actions)
        }) {
            Ok(rx) => rx,
            // Rule 6: an outcome, not an error (GetDecision answers the same).
            Err(Refusal::Forgotten) => {
                return Ok(Response::new(pb::CommitResponse {
                    outcome: pb::Outcome::Forgotten as i32,
                    reason: FORGOTTEN.to_string(),
                    ..Default::default()
                }));
            }
            Err(r) => return Err(CoordinatorError::from_refusal(tid, r).into()),
        };
        let outcome = match tokio::time::timeout(self.limits.commit_wait, rx).await {
            Ok(Ok(o)) => o,
            _ => {
                return Err(CoordinatorError::Unavailable(format!(
                    "the outcome of tid {tid} is not known yet: ask again with GetDecision (twopc status {tid})"
                ))
                .into());
            }
        };
        if !repeat {
            metrics::histogram!("twopc_commit_latency_seconds").record(started.elapsed().as_secs_f64());
            crate::console::history::commit_latency(started.elapsed());
        }
        let (outcome, (abort_kind, reason)) = match outcome {
            Outcome::Committed => (pb::Outcome::Committed, (0, String::new())),
            Outcome::Aborted(why) => (pb::Outcome::Aborted, reason::fields(&why)),
        };
        Ok(Response::new(pb::CommitResponse { outcome: outcome as i32, reason, abort_kind }))
    }

    async fn abort(&self, req: Request<pb::AbortRequest>) -> Reply<pb::AbortResponse> {
        let req = req.into_inner();
        let tid = tid::parse(&req.tid)?;
        let why = abort_request_reason(req.abort_kind, req.reason);
        self.driver
            .apply(|c| match c.abort_requested(tid, why) {
                Ok(actions) => (Ok(()), actions),
                Err(r) => (Err(r), vec![]),
            })
            .map_err(|r| CoordinatorError::from_refusal(tid, r))?;
        Ok(Response::new(pb::AbortResponse {}))
    }

    async fn get_decision(&self, req: Request<pb::GetDecisionRequest>) -> Reply<pb::GetDecisionResponse> {
        // Rule 6's exception is for participants only: the peer token
        // (when set) vouches that the asker is one.
        if req.get_ref().asking_partition.is_some() {
            self.peer_token.check(&req, "GetDecision with asking_partition")?;
        }
        let req = req.into_inner();
        let tid = tid::parse(&req.tid)?;
        let (answer, remembered) = {
            let st = self.driver.state();
            let answer = match req.asking_partition {
                Some(_) => st.core.decision_for_voter(tid),
                None => st.core.decision(tid),
            };
            (answer, st.core.remembers(tid))
        };
        let (decision, (abort_kind, reason)) = match answer {
            DecisionAnswer::Committed => (pb::Decision::Committed, (0, String::new())),
            DecisionAnswer::Aborted(why) => (pb::Decision::Aborted, reason::fields(&why)),
            DecisionAnswer::Pending => (pb::Decision::Pending, (0, String::new())),
            DecisionAnswer::Forgotten => (pb::Decision::Forgotten, (0, FORGOTTEN.to_string())),
        };
        Ok(Response::new(pb::GetDecisionResponse {
            decision: decision as i32,
            reason,
            abort_kind,
            cluster_id: self.cluster_id.clone(),
            coordinator_term: self.term,
            presumed: decision == pb::Decision::Aborted && !remembered,
            sent_unix_ms: now_unix_ms(),
        }))
    }

    async fn register(&self, req: Request<pb::RegisterRequest>) -> Reply<pb::RegisterResponse> {
        self.peer_token.check(&req, "Register")?;
        let req = req.into_inner();
        self.check_partition(req.partition)?;
        clock_watch::heard_from(req.partition, req.sent_unix_ms);
        if req.address.is_empty() {
            return Err(Status::invalid_argument("address is empty: pass the host:port the participant serves on"));
        }
        // Validated before it is recorded: a recorded address is dialled
        // again after every restart.
        self.driver.peers.check_address(&req.address).map_err(Status::invalid_argument)?;
        // Checked and recorded under one lock (`crate::store_ids`).
        let mut stores = self.store_ids.lock().await;
        let admission = stores.admit(req.partition, &req.store_id, &req.replace_store).inspect_err(|refusal| {
            if let Some(suppressed) = OTHER_STORE.allow() {
                tracing::error!(address = %req.address, suppressed, "registration refused: {refusal}");
            }
        })?;
        let store_id = match admission {
            crate::store_ids::Admission::Same => String::new(),
            _ => req.store_id.clone(),
        };
        let recorded = self.driver.log.register_store(req.partition, req.address.clone(), store_id.clone()).await;
        match recorded {
            Ok(()) => self.driver.disk.succeeded(),
            Err(LogError::DiskFull(detail)) => {
                self.driver.disk.failed(&detail);
                return Err(Status::resource_exhausted(format!(
                    "cannot record the registration: the decision log is out of disk space ({detail})"
                )));
            }
            Err(e) => return Err(Status::unavailable(format!("cannot record the registration: {e}"))),
        }
        stores.recorded(req.partition, &store_id);
        drop(stores);
        self.driver.peers.set(req.partition, &req.address).map_err(Status::invalid_argument)?;
        if let crate::store_ids::Admission::Replaces { old } = &admission {
            tracing::warn!(
                partition = req.partition,
                old_store_id = %old,
                store_id = %req.store_id,
                "partition's store replaced by the operator (--replace-store): tids prepared only in the old \
                 store can no longer be committed at this partition"
            );
        }
        tracing::info!(partition = req.partition, address = %req.address, incarnation = req.incarnation, store_id = %req.store_id, "participant registered");
        Ok(Response::new(pb::RegisterResponse {
            partitions: self.limits.partitions,
            cluster_id: self.cluster_id.clone(),
            coordinator_term: self.term,
            sent_unix_ms: now_unix_ms(),
        }))
    }

    async fn get_topology(&self, _req: Request<pb::GetTopologyRequest>) -> Reply<pb::Topology> {
        let members = self
            .driver
            .peers
            .addresses()
            .into_iter()
            .map(|(partition, address)| pb::PartitionAddress { partition, address })
            .collect();
        Ok(Response::new(pb::Topology { partitions: self.limits.partitions, members }))
    }

    async fn list_transactions(
        &self,
        req: Request<pb::ListTransactionsRequest>,
    ) -> Reply<pb::ListTransactionsResponse> {
        self.admin_token.check(&req, "ListTransactions")?;
        let now = clock::now_ms();
        let st = self.driver.state();
        let mut transactions: Vec<pb::TransactionInfo> = st
            .core
            .live()
            .map(|(tid, txn)| pb::TransactionInfo {
                tid: tid.to_string(),
                state: txn.phase.name().to_string(),
                age_ms: now.saturating_sub(txn.begun_at),
                deadline_unix_ms: txn.deadline,
                remaining_ms: Some(txn.deadline as i64 - now as i64),
                participants: txn
                    .parts
                    .iter()
                    .map(|(&partition, p)| pb::ParticipantInfo {
                        partition,
                        state: p.state.name().to_string(),
                        retries: st.retries.get(&(*tid, partition)).copied().unwrap_or(0),
                    })
                    .collect(),
            })
            .collect();
        transactions.sort_by(|a, b| a.tid.cmp(&b.tid));
        // Oldest first, up to the message limit (`twopc_proto::limits`, rule 3).
        let limits = twopc_proto::limits::SizeLimits::default();
        let budget = limits.batch_budget().saturating_sub(twopc_proto::limits::ITEM_OVERHEAD);
        let omitted = twopc_proto::limits::fit(&mut transactions, budget) as u32;
        Ok(Response::new(pb::ListTransactionsResponse { transactions, omitted }))
    }

    async fn set_failpoint(&self, req: Request<pb::SetFailpointRequest>) -> Reply<pb::SetFailpointResponse> {
        self.admin_token.check(&req, "SetFailpoint")?;
        failpoint::set_from_rpc(req.into_inner(), crate::FAILPOINTS)?;
        Ok(Response::new(pb::SetFailpointResponse {}))
    }
}

/// The reason an Abort call gives (PROTOCOL.md rule 4): a participant's
/// abort notice or a client whose operation failed sends its own; without
/// one it is the client's abort. Words are always there for the log and for
/// whoever asks later. Bounded: the words come from a caller.
fn abort_request_reason(kind: i32, words: String) -> AbortReason {
    const MAX_WORDS: usize = 1024;
    let kind = reason::from_wire_or(kind, AbortKind::Client);
    let mut words = words.trim().to_string();
    if words.len() > MAX_WORDS {
        let mut end = MAX_WORDS;
        while !words.is_char_boundary(end) {
            end -= 1;
        }
        words.truncate(end);
        words.push_str("...");
    }
    if words.is_empty() {
        words = match kind {
            AbortKind::Operator => "aborted by an operator".into(),
            _ => "aborted by the client".into(),
        };
    }
    AbortReason::new(kind, words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abort_request_without_a_reason_is_the_clients() {
        let why = abort_request_reason(0, String::new());
        assert_eq!((why.kind, why.detail.as_str()), (AbortKind::Client, "aborted by the client"));
        let why = abort_request_reason(pb::AbortKind::Conflict as i32, "partition 0 aborted it: lock conflict".into());
        assert_eq!(why.kind, AbortKind::Conflict);
        assert_eq!(
            abort_request_reason(pb::AbortKind::Operator as i32, String::new()).detail,
            "aborted by an operator"
        );
        let long = abort_request_reason(0, "é".repeat(2_000));
        assert!(long.detail.len() <= 1_027 && long.detail.ends_with("..."));
    }
}
