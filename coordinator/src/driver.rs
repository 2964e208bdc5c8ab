//! The shell around the coordinator core: it feeds events into
//! [`twopc_core::coordinator::Coordinator`] and executes the actions that
//! come out, in order.
//!
//! - `SendPrepare`: a Prepare RPC bounded by the prepare timeout; the answer
//!   (or the timeout) goes back in as a vote.
//! - `ForceCommit`: the decision log's forced write; only when it returns is
//!   `commit_durable` fed in, which is what lets anyone hear COMMITTED. A
//!   failed forced write stops the process (fail-stop): the record may or may
//!   not be on disk, and only recovery can tell. Except out of space
//!   (`LogError::DiskFull`): then the record is certainly not on disk, so
//!   the tid aborts with a reason naming the full disk and the process
//!   goes on (see [`Driver::disk`] and `twopc_proto::disk_full`).
//! - `SendCommit`: resent with capped exponential backoff until the
//!   participant acknowledges (rule 5). The count of retries is unbounded by
//!   design (the protocol requires it); their rate is bounded by the cap.
//! - `SendAbort`: a few best-effort attempts; a participant that misses them
//!   asks and hears ABORTED (presumed abort).
//! - `ForceDelegation`: the forced DELEGATED record of a one-phase commit;
//!   only when it returns is CommitOnePhase sent (fail-stop on error).
//! - `SendCommitOnePhase`: resent with capped backoff until the participant
//!   answers COMMITTED or ABORTED; that answer is the decision.
//! - `Reply`: wakes every client waiting in Commit for this tid.
//! - `Decided`: counts the outcome and logs an abort with its reason. The
//!   core emits it once per tid, at the decision, so every outcome counter
//!   counts transactions, never replies (a Commit or GetDecision repeated
//!   after the decision counts nothing). The aborted counter's `reason`
//!   label is the reason's kind (`twopc_core::reason::AbortKind::label`):
//!   conflict, deadline, write_failed, participant_restarted, shutdown,
//!   client, operation_failed, operator, coordinator_restarted,
//!   participant_unreachable, unknown, other.
//!
//! The core sits behind a std mutex that is never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::Status;
use tracing::Instrument;
use twopc_core::coordinator::{Action, Coordinator, Outcome, Vote};
use twopc_core::reason::{AbortKind, AbortReason};
use twopc_core::{PartitionId, Tid};
use twopc_proto::batch::{self, Batcher};
use twopc_proto::disk_full::DiskFull;
use twopc_proto::pb;
use twopc_proto::pb::participant_client::ParticipantClient;
use twopc_proto::throttle::Throttle;
use twopc_proto::token::PeerChannel;
use twopc_proto::{Backoff, clock, failpoint};

use crate::decision_log::{DecisionLog, LogError};
use crate::leadership::Leadership;
use crate::peers::Peers;

/// Timeouts the driver uses.
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub prepare: Duration,
    pub resolve_rpc: Duration,
    pub max_resend_interval: Duration,
}

pub struct Driver {
    state: Mutex<State>,
    pub log: DecisionLog,
    pub peers: Arc<Peers>,
    timeouts: Timeouts,
    /// With a replicated log: no message is sent while leadership is not
    /// certain (rule 14).
    leadership: Option<Arc<Leadership>>,
    /// Whether the decision log is out of space: while it is, commits that
    /// need a record are refused (`CoordinatorService::commit`), but for
    /// one probe per [`DISK_PROBE_EVERY`], whose success resumes service.
    pub disk: DiskFull,
}

/// While the decision log is full, one commit is let through this often to
/// find out whether space came back.
pub const DISK_PROBE_EVERY: Duration = Duration::from_secs(1);

pub struct State {
    pub core: Coordinator,
    waiters: HashMap<Tid, Vec<oneshot::Sender<Outcome>>>,
    /// Phase-2 resend counts, for the admin listing.
    pub retries: HashMap<(Tid, PartitionId), u32>,
}

impl Driver {
    pub fn new(
        core: Coordinator,
        log: DecisionLog,
        peers: Peers,
        timeouts: Timeouts,
        leadership: Option<Arc<Leadership>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State { core, waiters: HashMap::new(), retries: HashMap::new() }),
            log,
            peers: Arc::new(peers),
            timeouts,
            leadership,
            disk: DiskFull::new(
                "the decision log's disk".into(),
                "twopc_decision_log_disk_full",
                "twopc_decision_log_disk_full_total",
                DISK_PROBE_EVERY,
            ),
        })
    }

    /// The core and its side tables. Never hold this across an await.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the core and executes the actions it returns.
    pub fn apply<T>(self: &Arc<Self>, f: impl FnOnce(&mut Coordinator) -> (T, Vec<Action>)) -> T {
        let (out, actions) = f(&mut self.state().core);
        self.execute(actions);
        out
    }

    /// Registers a waiter for `tid`'s outcome, then runs `f`; both under
    /// one lock so a `Reply` produced by `f` cannot be missed.
    pub fn apply_and_wait<E>(
        self: &Arc<Self>,
        tid: Tid,
        f: impl FnOnce(&mut Coordinator) -> Result<Vec<Action>, E>,
    ) -> Result<oneshot::Receiver<Outcome>, E> {
        let (tx, rx) = oneshot::channel();
        let actions = {
            let mut st = self.state();
            let actions = f(&mut st.core)?;
            st.waiters.entry(tid).or_default().push(tx);
            actions
        };
        self.execute(actions);
        Ok(rx)
    }

    pub fn execute(self: &Arc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::SendPrepare(tid, p) => {
                    let this = self.clone();
                    spawn_for(tid, Some(p), async move {
                        let vote = this.prepare(tid, p).await;
                        tracing::debug!(?vote, "vote received");
                        this.apply(|c| ((), c.vote(tid, p, vote)));
                    });
                }
                Action::ForceCommit(tid, parts) => {
                    let this = self.clone();
                    spawn_for(tid, None, async move { this.force(tid, Record::Commit(parts)).await });
                }
                Action::SendCommit(tid, p) => {
                    let this = self.clone();
                    spawn_for(tid, Some(p), async move { this.resend_commit(tid, p).await });
                }
                Action::SendAbort(tid, p) => {
                    let this = self.clone();
                    spawn_for(tid, Some(p), async move { this.send_abort(tid, p).await });
                }
                Action::Decided(tid, outcome) => match &outcome {
                    Outcome::Committed => {
                        tracing::debug!(%tid, "committed");
                        metrics::counter!("twopc_transactions_committed_total").increment(1);
                        crate::console::history::committed();
                    }
                    Outcome::Aborted(why) => {
                        // Aborts are routine (conflicts, clients): one line
                        // per tid at debug, a sample at info.
                        tracing::debug!(%tid, kind = why.kind.label(), reason = %why, "aborted");
                        if let Some(suppressed) = ABORTED.allow() {
                            tracing::info!(%tid, kind = why.kind.label(), reason = %why, suppressed, "aborted (one line per 10 s; `suppressed` counts the others)");
                        }
                        metrics::counter!("twopc_transactions_aborted_total", "reason" => why.kind.label())
                            .increment(1);
                        crate::console::history::aborted(why.kind);
                    }
                },
                Action::Reply(tid, outcome) => {
                    let waiters = self.state().waiters.remove(&tid).unwrap_or_default();
                    for w in waiters {
                        let _ = w.send(outcome.clone());
                    }
                }
                Action::LogFinished(tid) => {
                    self.state().retries.retain(|(t, _), _| *t != tid);
                    self.log.finished(tid);
                }
                Action::ForceDelegation(tid, p) => {
                    let this = self.clone();
                    spawn_for(tid, Some(p), async move { this.force(tid, Record::Delegated(p)).await });
                }
                Action::SendCommitOnePhase(tid, p) => {
                    let this = self.clone();
                    spawn_for(tid, Some(p), async move { this.resend_one_phase(tid, p).await });
                }
                Action::LogForget(tid) => {
                    self.state().retries.retain(|(t, _), _| *t != tid);
                    self.log.forget(tid);
                }
            }
        }
    }

    async fn prepare(&self, tid: Tid, p: PartitionId) -> Vote {
        let started = std::time::Instant::now();
        let vote = self.prepare_call(tid, p).await;
        metrics::histogram!("twopc_prepare_latency_seconds", "partition" => p.to_string())
            .record(started.elapsed().as_secs_f64());
        vote
    }

    async fn prepare_call(&self, tid: Tid, p: PartitionId) -> Vote {
        let batcher = self.peers.batchers(p).prepare.clone();
        let rpc = |mut c: ParticipantClient<PeerChannel>, tids| async move {
            let resp = c.prepare_batch(tids).await?.into_inner();
            Ok(resp
                .results
                .into_iter()
                .map(|r| {
                    batch::item(r.code, r.message, || pb::PrepareResponse {
                        vote: r.vote,
                        reason: r.reason,
                        abort_kind: r.abort_kind,
                    })
                })
                .collect())
        };
        match self.peer_call(tid, p, batcher, self.timeouts.prepare, rpc).await {
            Err(e) => Vote::Failed(e),
            Ok(resp) => match pb::Vote::try_from(resp.vote) {
                Ok(pb::Vote::Yes) => Vote::Yes,
                Ok(pb::Vote::ReadOnly) => Vote::ReadOnly,
                Ok(pb::Vote::No) => Vote::No(twopc_proto::reason::from_fields(resp.abort_kind, resp.reason)),
                _ => Vote::Failed(format!("invalid vote {}", resp.vote)),
            },
        }
    }

    /// One tid's call to partition `p` through `batcher` (one RPC carries
    /// every tid queued meanwhile), inside the participant's bulkhead and
    /// within `limit`, which the wait for a slot counts against too. `rpc`
    /// sends one batch and returns one result per tid, in order.
    async fn peer_call<T, F, Fut>(
        &self,
        tid: Tid,
        p: PartitionId,
        batcher: Arc<Batcher<String, T>>,
        limit: Duration,
        rpc: F,
    ) -> Result<T, String>
    where
        T: Send + 'static,
        F: Fn(ParticipantClient<PeerChannel>, pb::TidBatch) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Vec<Result<T, Status>>, Status>> + Send + 'static,
    {
        if !self.peers.contains(p) {
            return Err(format!("partition {p} is not registered"));
        }
        // Rule 14: a leader that may have been replaced sends nothing (a
        // commit resend waits and tries again; a prepare fails: abort).
        if self.leadership.as_ref().is_some_and(|l| !l.certain()) {
            return Err("leadership is not certain right now; not sending".into());
        }
        let slots = self.peers.slots(p);
        let peers = self.peers.clone();
        let call = async {
            let _slot = slots.acquire().await;
            // The participant is looked up at each send: a batch loop may
            // outlive a re-registration at a new address.
            let send = move |tids: Vec<String>| {
                let (client, rpc) = (peers.client(p), rpc.clone());
                async move {
                    let c = client.ok_or_else(|| Status::unavailable(format!("partition {p} is not registered")))?;
                    rpc(c, pb::TidBatch { tids }).await
                }
            };
            batcher.call(tid.to_string(), send).await
        };
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(s)) => Err(format!("{}: {}", s.code(), s.message())),
            Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
        }
    }

    /// Forces a COMMIT or a DELEGATED record, then feeds its durability
    /// into the core; fail-stop if the write fails.
    async fn force(self: &Arc<Self>, tid: Tid, record: Record) {
        let (before, after, what) = match record {
            Record::Commit(_) => {
                ("coordinator::before_decision_forced", "coordinator::after_decision_forced", "COMMIT")
            }
            Record::Delegated(_) => {
                ("coordinator::before_delegation_forced", "coordinator::after_delegation_forced", "DELEGATED")
            }
        };
        // C1 (and its one-phase twin): a crash here leaves no record;
        // recovery presumes abort.
        if let Err(e) = failpoint::hit(before).await {
            tracing::warn!(%tid, "{e}: treating the forced write as failed");
            return self.log_failed(tid);
        }
        let written = match &record {
            Record::Commit(parts) => self.log.force_commit(tid, parts.clone()).await,
            Record::Delegated(p) => self.log.force_delegation(tid, *p).await,
        };
        match written {
            Ok(()) => self.disk.succeeded(),
            Err(LogError::DiskFull(detail)) => return self.record_not_written(tid, &detail),
            Err(e) => {
                tracing::error!(%tid, error = %e, "forcing the {what} record failed");
                return self.log_failed(tid);
            }
        }
        // C2 (and its twin): a crash here must still finish the tid after
        // restart: phase 2 is re-driven, or the participant is asked again.
        match record {
            Record::Commit(_) => {
                tracing::debug!(%tid, "decision COMMIT forced to the log");
                let _ = failpoint::hit(after).await;
                self.apply(|c| ((), c.commit_durable(tid)));
            }
            Record::Delegated(p) => {
                tracing::debug!(%tid, partition = p, "DELEGATED forced: one-phase commit");
                let _ = failpoint::hit(after).await;
                self.apply(|c| ((), c.delegation_durable(tid)));
            }
        }
    }

    /// Sends CommitOnePhase until the participant decides. Unbounded in
    /// count like phase 2 (a participant that is down must be asked again
    /// when it is back), bounded in rate by the backoff cap.
    async fn resend_one_phase(self: &Arc<Self>, tid: Tid, p: PartitionId) {
        let mut backoff = Backoff::new(Duration::from_millis(50), self.timeouts.max_resend_interval);
        let outcome = loop {
            match self.one_phase_call(tid, p).await {
                Ok(outcome) => break outcome,
                Err(e) => {
                    let n = backoff.attempts() + 1;
                    self.state().retries.insert((tid, p), n);
                    metrics::counter!("twopc_phase2_retries_total").increment(1);
                    crate::console::history::phase2_retry();
                    if let Some(suppressed) = RESENT.allow() {
                        tracing::warn!(%tid, partition = p, retry = n, error = %e, suppressed, "one-phase commit unanswered; resending");
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        };
        self.apply(|c| ((), c.one_phase_outcome(tid, outcome)));
    }

    async fn one_phase_call(&self, tid: Tid, p: PartitionId) -> Result<Outcome, String> {
        let batcher = self.peers.batchers(p).one_phase.clone();
        let rpc = |mut c: ParticipantClient<PeerChannel>, tids| async move {
            let resp = c.commit_one_phase_batch(tids).await?.into_inner();
            Ok(resp.results.into_iter().map(|r| batch::item(r.code, r.message.clone(), || r)).collect())
        };
        let r = self.peer_call(tid, p, batcher, self.timeouts.resolve_rpc, rpc).await?;
        Ok(if r.committed {
            Outcome::Committed
        } else {
            let why = twopc_proto::reason::from_fields(r.abort_kind, r.reason);
            Outcome::Aborted(why.within(format_args!("partition {p} aborted it")))
        })
    }

    /// The forced record of `tid` failed for lack of space: SQLite rolled
    /// it back, so it is certainly not on disk and nobody was told
    /// COMMITTED. The tid aborts (its YES voters are told) with a reason
    /// naming the full disk; the process serves on. Logged once per
    /// episode by [`Driver::disk`], not per tid.
    fn record_not_written(self: &Arc<Self>, tid: Tid, detail: &str) {
        self.disk.failed(detail);
        let why = disk_full_reason(detail);
        tracing::debug!(%tid, reason = %why, "record not written: out of space");
        self.apply(|c| ((), c.record_not_written(tid, why)));
    }

    /// Fail-stop: after a failed forced write the record's fate is unknown,
    /// so the process must not answer anything about this tid; restarting
    /// and reading the log back is the only safe way on.
    fn log_failed(&self, tid: Tid) {
        tracing::error!(%tid, "stopping: the decision log could not be written; restart to recover");
        std::process::exit(70);
    }

    async fn resend_commit(self: &Arc<Self>, tid: Tid, p: PartitionId) {
        let mut backoff = Backoff::new(Duration::from_millis(50), self.timeouts.max_resend_interval);
        loop {
            match self.send_resolve(tid, p, true).await {
                Ok(()) => break,
                Err(e) => {
                    let n = backoff.attempts() + 1;
                    self.state().retries.insert((tid, p), n);
                    metrics::counter!("twopc_phase2_retries_total").increment(1);
                    crate::console::history::phase2_retry();
                    if let Some(suppressed) = RESENT.allow() {
                        tracing::warn!(%tid, partition = p, retry = n, error = %e, suppressed, "commit not acknowledged; resending");
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        tracing::debug!("commit acknowledged");
        // C3: a crash after some partitions acknowledged.
        let _ = failpoint::hit("coordinator::after_commit_acked").await;
        self.apply(|c| ((), c.commit_acked(tid, p)));
    }

    async fn send_abort(&self, tid: Tid, p: PartitionId) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        for _ in 0..3 {
            if self.send_resolve(tid, p, false).await.is_ok() {
                return;
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
        tracing::debug!(%tid, partition = p, "abort not delivered; the participant will ask");
    }

    async fn send_resolve(&self, tid: Tid, p: PartitionId, commit: bool) -> Result<(), String> {
        let batchers = self.peers.batchers(p);
        let batcher = if commit { batchers.commit.clone() } else { batchers.abort.clone() };
        let rpc = move |mut c: ParticipantClient<PeerChannel>, tids| async move {
            let resp = if commit { c.commit_batch(tids).await? } else { c.abort_batch(tids).await? };
            Ok(resp.into_inner().results.into_iter().map(|r| batch::item(r.code, r.message, || ())).collect())
        };
        self.peer_call(tid, p, batcher, self.timeouts.resolve_rpc, rpc).await
    }

    /// Aborts abandoned transactions at their deadline, forever.
    pub async fn expiry_loop(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let open = self.apply(|c| (c.live_count(), c.expire(clock::now_ms())));
            metrics::gauge!("twopc_open_transactions").set(open as f64);
        }
    }
}

/// A record the driver forces to the decision log.
enum Record {
    /// COMMIT, naming the partitions that voted YES.
    Commit(Vec<PartitionId>),
    /// One-phase commit handed to this partition.
    Delegated(PartitionId),
}

/// Log sites that can fire once per tid or per retry (`twopc_proto::throttle`):
/// at most one line per 10 s each; the metrics count every event.
static ABORTED: Throttle = Throttle::new(Duration::from_secs(10));
static RESENT: Throttle = Throttle::new(Duration::from_secs(10));

/// Runs one protocol step of `tid` as a task of its own, inside the
/// transaction's span. The span is at debug level, so the default `info`
/// pays nothing for it (info-level spans on every step cost about 17% of
/// throughput when measured); `RUST_LOG=debug` shows each line of a tid
/// under `txn{tid=.. partition=..}`.
fn spawn_for(tid: Tid, partition: Option<PartitionId>, step: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(step.instrument(tracing::debug_span!("txn", %tid, partition)));
}

/// The abort reason of a tid whose record could not be written, or whose
/// commit was refused, because the decision log is out of space.
pub fn disk_full_reason(detail: &str) -> AbortReason {
    AbortReason::new(
        AbortKind::DiskFull,
        format!(
            "the decision log is out of disk space ({detail}): nothing was committed; free space in the \
             coordinator's data directory and retry (the coordinator resumes by itself)"
        ),
    )
}
