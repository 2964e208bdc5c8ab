//! The shell around the participant core: it enlists with the coordinator,
//! runs the store's durable writes between core events, and runs the timers
//! (deadline expiry, in-doubt questions).
//!
//! Ordering that the protocol depends on:
//! - enlist (an RPC to the coordinator) completes before the first
//!   operation of a tid is applied or acknowledged (rule 2), unless the
//!   operation is *declared* (the client will declare this participant and
//!   its count of operations at commit; rule 2's second design, see
//!   `twopc_core::participant`): then the tid's state is created at once
//!   with the request's deadline, the operation is applied and answered,
//!   and the enlistment goes in the background ([`Node::get`],
//!   [`Node::write`] with `declared`). Its answer is checked exactly as a
//!   foreground one (the cluster id against the fence, the term); a
//!   refusal, or no answer within [`ENLIST_BUDGET`], aborts the tid here
//!   (it has not voted: rule 10), releases its locks, and tells the
//!   coordinator when the enlistment may have landed. A prepare or
//!   one-phase commit of a tid whose enlistment is still in flight waits
//!   for its answer first, so no vote is ever given before those checks;
//! - the YES vote is returned only after `Store::prepare` has fsynced
//!   (rule 3); failpoints sit on both sides of that write;
//! - a commit is acknowledged only after `Store::commit` has fsynced, and
//!   locks are released only after that too (rule 12);
//! - a one-phase commit is answered COMMITTED only after
//!   `Store::commit_one_phase` has fsynced the data with its record; a tid
//!   the core no longer has is answered from that record, and if absent,
//!   aborted here first (remembered), so the answer can never change;
//! - a prepared tid is only ever ended by a decision: from the
//!   coordinator's Commit/Abort, or from its answer to GetDecision (rule 8):
//!   a COMMITTED answer from any coordinator, an ABORTED one only from a
//!   coordinator whose decision log is the one the tid voted under
//!   (`crate::fence`); or, in disaster recovery, by an operator's explicit
//!   heuristic outcome (`crate::heuristics`);
//! - a prepare whose write fails for lack of space (`StoreError::DiskFull`:
//!   certainly not written) votes NO with a reason naming this partition's
//!   full disk (rule 10: no YES was sent), counted and logged once per
//!   episode by [`Node::disk`]; reads and everything already prepared are
//!   served on, and the next prepare that fits ends the episode. A
//!   phase-2 commit that cannot be written for lack of space is refused
//!   with RESOURCE_EXHAUSTED and stays pending: its tid must still commit,
//!   so the coordinator's resends apply it once space returns. A one-phase
//!   commit that cannot be written is decided ABORT here (this answer is
//!   the decision, and nothing landed), with the same reason; one write
//!   per tid at a time, so no repeat can land after that answer;
//! - a tid is enlisted only under the decision log the prepared tids here
//!   voted under: the enlistment's answer carries the coordinator's cluster
//!   id and is checked (`crate::fence`) before the operation is applied.
//!
//! Every call to the coordinator goes through one [`Follower`] over the
//! `--coordinator` list (PROTOCOL.md rule 16, `twopc_leader::follow`): a
//! standby's answer names the leader and the call goes there, a failure
//! without a hint moves to the next address, all with the peer token and
//! TLS on every channel. Every attempt is cut at [`COORDINATOR_ATTEMPT`]
//! (a frozen coordinator is a failed attempt: the call moves on), and
//! each kind of call has its own bound:
//! - Register retries until some leader accepts: each round is bounded
//!   ([`REGISTER_ROUND`]), rounds repeat with capped backoff forever;
//!   except a refusal of this store (`twopc_proto::store_id`: the
//!   coordinator has another store recorded for this partition): the
//!   participant logs one error line naming both stores and what to do,
//!   and exits with code 2. That refusal is certain: it comes from the
//!   leader's durable record, which only an operator's `--replace-store`
//!   changes, so retrying would only leave a process that looks alive while
//!   serving nothing (its partition is the other store's); a supervisor
//!   restarting it asks again, which is all a retry could do;
//! - Enlist is on a client's operation path: bounded ([`ENLIST_BUDGET`]),
//!   then the operation fails with UNAVAILABLE;
//! - GetDecision for an in-doubt tid is bounded per question
//!   ([`QUESTION_BUDGET`]), and the core asks again with capped backoff,
//!   forever (rules 8, 16), of whoever leads by then;
//! - telling the coordinator of a unilateral abort (the abort notice: an
//!   Abort carrying this participant's reason, PROTOCOL.md rule 4) is best
//!   effort, bounded like a question (the coordinator aborts the tid at
//!   prepare anyway, with the same reason in the NO vote). When the abort
//!   answers a client's operation (a wait-die conflict, a deadline), the
//!   operation's error waits for the notice, up to [`NOTICE_WAIT`], so that
//!   the coordinator holds the real reason before the client can abort the
//!   tid itself: the first reason a tid aborts for is the one everyone
//!   hears.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::Instrument;
use twopc_core::participant::{
    AbortStep, CommitStep, OnePhaseStep, OpError, Participant, PrepareStep, ReadPlan, WriteSet,
};
use twopc_core::reason::{AbortKind, AbortReason};
use twopc_core::{PartitionId, Tid};
use twopc_leader::follow::{FollowError, Follower, Policy, Retry};
use twopc_proto::batch::{self, Batcher};
use twopc_proto::clock::{self, Skew};
use twopc_proto::disk_full::DiskFull;
use twopc_proto::pb;
use twopc_proto::throttle::Throttle;
use twopc_proto::{failpoint, now_unix_ms};

use crate::error::ParticipantError;
use crate::fence::Fence;
use crate::heuristics::InFlight;
use crate::store::{Store, StoreError};

/// Holds a tid's one-phase write slot; released when dropped.
struct OnePhaseSlot<'a> {
    set: &'a Mutex<std::collections::HashSet<Tid>>,
    tid: Tid,
}

impl<'a> OnePhaseSlot<'a> {
    fn take(set: &'a Mutex<std::collections::HashSet<Tid>>, tid: Tid) -> Option<Self> {
        set.lock().unwrap_or_else(|e| e.into_inner()).insert(tid).then_some(Self { set, tid })
    }
}

impl Drop for OnePhaseSlot<'_> {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.tid);
    }
}

/// Log sites that can fire once per tid (`twopc_proto::throttle`): at most
/// one line per 10 s each at the default level; debug has every one.
static EXPIRED: Throttle = Throttle::new(Duration::from_secs(10));
static UNANSWERED: Throttle = Throttle::new(Duration::from_secs(10));
static LEARNED: Throttle = Throttle::new(Duration::from_secs(10));
static APPLY_FAILED: Throttle = Throttle::new(Duration::from_secs(10));
/// Registration retries: a participant waiting for its coordinator retries
/// every couple of seconds, forever; one line per retry was 43,200 a day.
static REGISTER_RETRY: Throttle = Throttle::new(Duration::from_secs(10));
static REGISTER_REFUSED: Throttle = Throttle::new(Duration::from_secs(10));

/// A participant's vote, as returned on the wire.
pub enum VoteReply {
    Yes,
    ReadOnly,
    No(AbortReason),
}

/// This participant's decision for a one-phase commit.
pub enum OnePhaseReply {
    Committed,
    Aborted(AbortReason),
}

/// How long one enlistment may spend finding the leader: it holds up a
/// client's operation, and a failover loses the open tids of the old leader
/// anyway (the new one does not know them).
pub const ENLIST_BUDGET: Duration = Duration::from_secs(3);
/// One question about an in-doubt tid (or a manual resolution's check, or
/// an abort notice): the core asks again later, of whoever leads then.
pub const QUESTION_BUDGET: Duration = Duration::from_secs(3);
/// One attempt of any call to the coordinator (a question, an enlistment,
/// a registration) is cut at this, and the call moves on to the next
/// address: a wedged coordinator (SIGSTOPped, or hung: it accepts
/// connections and never answers), which stays the one calls go to first,
/// must not take every call's whole budget, or no call would ever reach
/// the leader that replaced it.
pub const COORDINATOR_ATTEMPT: Duration = Duration::from_secs(2);
/// One round of registration; rounds repeat until a leader accepts.
pub const REGISTER_ROUND: Duration = Duration::from_secs(5);
/// How long a client's failed operation waits for the abort notice to
/// reach the coordinator before it answers (the notice goes on after).
pub const NOTICE_WAIT: Duration = Duration::from_secs(1);

pub struct Node {
    core: Mutex<Participant>,
    pub store: Store,
    /// The coordinators of `--coordinator`, following the leader.
    pub(crate) coordinator: Arc<Follower>,
    /// Set while the coordinator's log is not the one our prepared tids voted under.
    pub fence: Fence,
    /// Heuristic outcomes being made durable (`crate::heuristics`).
    pub(crate) resolving: InFlight,
    pub partition: PartitionId,
    /// Which keys are ours: the partition count is learned at registration.
    pub ownership: crate::ownership::Ownership,
    /// Random per process start: tells the coordinator when this
    /// participant restarted and lost unprepared tids.
    pub incarnation: u64,
    /// Signalled whenever locks may have been released (wait-die waiters).
    released: tokio::sync::Notify,
    /// Enlistments batched into EnlistBatch calls under load.
    /// Each answer: the tid's deadline and the coordinator's cluster id.
    enlists: Arc<Batcher<pb::EnlistRequest, (u64, String, u64)>>,
    /// Whether this partition's store is out of space (see module docs).
    pub disk: DiskFull,
    /// Signalled whenever a background enlistment was answered (prepares
    /// waiting for one, see the module docs).
    enlisted: tokio::sync::Notify,
    /// Tids whose one-phase commit is being written (see `apply_one_phase`).
    one_phase_writing: Mutex<std::collections::HashSet<Tid>>,
    /// Tids of which an earlier one-phase write failed with an unknown
    /// outcome (not out of space): it may have landed, so a later write
    /// that is out of space must not decide ABORT. Only tids still being
    /// committed here; removed when they end.
    one_phase_uncertain: Mutex<std::collections::HashSet<Tid>>,
    /// The coordinator's clock offset from ours, as last measured
    /// (`twopc_proto::clock`): reported, never used for timing.
    pub clock: Arc<Skew>,
}

impl Node {
    pub fn new(core: Participant, store: Store, coordinator: Follower) -> Arc<Self> {
        let partition = core.partition();
        let store_path = store.path().to_path_buf();
        let recorded_partitions = store.partition_count();
        Arc::new(Self {
            core: Mutex::new(core),
            store,
            coordinator: Arc::new(coordinator),
            fence: Fence::default(),
            resolving: InFlight::default(),
            partition,
            ownership: {
                // The count recorded at the last registration: keys are
                // checked (and plain reads served) before this start's
                // registration, e.g. while the coordinator is down.
                let ownership = crate::ownership::Ownership::new(partition);
                if let Some(n) = recorded_partitions {
                    ownership.learn(n);
                }
                ownership
            },
            incarnation: {
                let (time, random) = uuid::Uuid::now_v7().as_u64_pair();
                time ^ random
            },
            released: tokio::sync::Notify::new(),
            // Enlist requests carry a tid each: the coordinator's default
            // message limit bounds their batches (`twopc_proto::limits`).
            enlists: Batcher::new(256, twopc_proto::limits::SizeLimits::default().batch_budget(), 2),
            one_phase_writing: Mutex::default(),
            one_phase_uncertain: Mutex::default(),
            enlisted: tokio::sync::Notify::new(),
            clock: Arc::new(Skew::new(
                "the coordinator".into(),
                format!("partition {partition}"),
                "twopc_coordinator_clock_offset_ms",
            )),
            disk: DiskFull::new(
                format!("partition {partition}'s disk (store {})", store_path.display()),
                "twopc_store_disk_full",
                "twopc_store_disk_full_total",
                // Every prepare tries its write: the first that fits resumes.
                Duration::ZERO,
            ),
        })
    }

    pub fn core(&self) -> MutexGuard<'_, Participant> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rule 2: make sure the coordinator knows we hold state for `tid`.
    async fn ensure_enlisted(&self, tid: Tid) -> Result<(), ParticipantError> {
        {
            let core = self.core();
            if core.knows(tid) {
                return Ok(());
            }
            if let Some(why) = core.abort_reason(tid) {
                return Err(ParticipantError::Aborted { tid, reason: format!("it was aborted earlier: {why}") });
            }
        }
        self.refuse_if_fenced().await?;
        let (deadline, cluster_id, term) = self.send_enlistment(tid).await?;
        // The coordinator's log must be the one our prepared tids voted
        // under (`crate::fence`): a participant that restarted, or that has
        // not asked anything since the coordinator's log was replaced, may
        // not have heard its id yet. (The enlistment stays at the
        // coordinator; the tid aborts there at prepare, having no vote here.)
        if self.check_cluster(&cluster_id).await.is_err() {
            let theirs = self.fence.mismatched().unwrap_or(cluster_id);
            return Err(ParticipantError::Fenced { ours: self.store.cluster_id().unwrap_or_default(), theirs });
        }
        self.heard_term(term);
        self.core().enlisted_under(tid, deadline, term).map_err(|e| ParticipantError::from_op(tid, e, b""))
    }

    /// A new tid is refused while a fence is known (`crate::fence`), after
    /// lifting it if no prepared tid is left.
    async fn refuse_if_fenced(&self) -> Result<(), ParticipantError> {
        if self.fence.mismatched().is_some() {
            self.recheck_fence().await;
            if let Some(theirs) = self.fence.mismatched() {
                return Err(ParticipantError::Fenced { ours: self.store.cluster_id().unwrap_or_default(), theirs });
            }
        }
        Ok(())
    }

    /// Rule 2, declared: the tid's state is created at once with the
    /// deadline the request carries, and the enlistment is sent in the
    /// background (see the module docs). A known fence refuses it first.
    async fn ensure_declared(self: &Arc<Self>, tid: Tid, remaining_ms: u64) -> Result<(), ParticipantError> {
        {
            let mut core = self.core();
            if core.knows(tid) {
                // Marks it declared (its prepare then needs a count).
                return core
                    .begin_declared(tid, remaining_ms, clock::now_ms())
                    .map(drop)
                    .map_err(|e| ParticipantError::from_op(tid, e, b""));
            }
            if let Some(why) = core.abort_reason(tid) {
                return Err(ParticipantError::Aborted { tid, reason: format!("it was aborted earlier: {why}") });
            }
        }
        self.refuse_if_fenced().await?;
        let start = self
            .core()
            .begin_declared(tid, remaining_ms, clock::now_ms())
            .map_err(|e| ParticipantError::from_op(tid, e, b""))?;
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.enlist_in_background(tid).await }.in_current_span());
        }
        Ok(())
    }

    /// The background enlistment of a declared tid, and what its answer
    /// does (see the module docs).
    async fn enlist_in_background(&self, tid: Tid) {
        let refused = match self.send_enlistment(tid).await {
            Ok((deadline, cluster_id, term)) => {
                if self.check_cluster(&cluster_id).await.is_err() {
                    let theirs = self.fence.mismatched().unwrap_or(cluster_id);
                    let e = ParticipantError::Fenced { ours: self.store.cluster_id().unwrap_or_default(), theirs };
                    Some((AbortReason::new(AbortKind::Other, format!("its enlistment was refused: {e}")), false))
                } else {
                    self.heard_term(term);
                    match self.core().enlist_confirmed(tid, deadline, term) {
                        Ok(()) => None,
                        // Aborted by the core already (a replaced coordinator).
                        Err(_) => {
                            self.locks_released();
                            None
                        }
                    }
                }
            }
            Err(e) => {
                let kind = match &e {
                    ParticipantError::UnknownTid(_) => AbortKind::Unknown,
                    _ => AbortKind::Other,
                };
                // Only an enlistment without an answer may have landed.
                let tell = matches!(e, ParticipantError::CoordinatorUnavailable(_));
                Some((AbortReason::new(kind, format!("its enlistment was refused: {e}")), tell))
            }
        };
        if let Some((why, tell)) = refused
            && self.core().enlist_refused(tid, why.clone())
        {
            self.locks_released();
            metrics::counter!("twopc_participant_enlist_refused_aborts_total").increment(1);
            tracing::debug!(%tid, reason = %why, "background enlistment refused: aborted here");
            if tell {
                self.tell_coordinator_aborted(tid, &why);
            }
        }
        self.enlisted.notify_waiters();
    }

    /// Waits until `tid`'s background enlistment is answered (or its state
    /// is gone). Bounded: the enlistment itself is ([`ENLIST_BUDGET`]).
    async fn await_enlistment(&self, tid: Tid) {
        loop {
            let answered = self.enlisted.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if !self.core().enlisting(tid) {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), answered).await;
        }
    }

    /// One enlistment of `tid`, batched with others (EnlistBatch): the
    /// tid's deadline on this clock, the coordinator's cluster id and term.
    async fn send_enlistment(&self, tid: Tid) -> Result<(u64, String, u64), ParticipantError> {
        let req = pb::EnlistRequest {
            tid: tid.to_string(),
            partition: self.partition,
            incarnation: self.incarnation,
            sent_unix_ms: now_unix_ms(),
        };
        let coordinator = self.coordinator.clone();
        let skew = self.clock.clone();
        let send = move |requests: Vec<pb::EnlistRequest>| {
            let (coordinator, skew) = (coordinator.clone(), skew.clone());
            async move {
                // The tid's deadline here is its remaining time counted from
                // now, on this clock (`twopc_proto::clock`).
                let (asked, asked_wall) = (clock::now_ms(), now_unix_ms());
                let resp = coordinator
                    .call(
                        "EnlistBatch",
                        Policy::within(ENLIST_BUDGET).attempts_within(COORDINATOR_ATTEMPT),
                        Retry::Idempotent,
                        |mut c| {
                            let requests = requests.clone();
                            async move { c.enlist_batch(pb::EnlistBatchRequest { requests }).await }
                        },
                    )
                    .await
                    .map_err(FollowError::into_status)?
                    .into_inner();
                let answered = now_unix_ms();
                if let Some(r) = resp.results.iter().find(|r| r.sent_unix_ms > 0) {
                    skew.observe(r.sent_unix_ms, asked_wall, answered);
                }
                Ok(resp
                    .results
                    .into_iter()
                    .map(|r| {
                        let deadline = clock::local_deadline(r.remaining_ms, r.deadline_unix_ms, asked);
                        batch::item(r.code, r.message, || (deadline, r.cluster_id, r.coordinator_term))
                    })
                    .collect())
            }
        };
        let (deadline, cluster_id, term) = self.enlists.call(req, send).await.map_err(|s| match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                ParticipantError::CoordinatorUnavailable(s.message().to_string())
            }
            tonic::Code::Aborted => ParticipantError::Aborted { tid, reason: s.message().to_string() },
            tonic::Code::NotFound => ParticipantError::UnknownTid(tid),
            _ => ParticipantError::FailedPrecondition { tid, why: format!("enlist refused: {}", s.message()) },
        })?;
        Ok((deadline, cluster_id, term))
    }

    /// Rule 10: a coordinator of a newer term (it restarted, or another
    /// leader took over) does not know the unprepared tids enlisted under
    /// older terms and presumes them aborted: abort them here now, so their
    /// locks do not wait for the deadline. Only terms of our own cluster's
    /// log are taken (the caller checked the cluster id).
    fn heard_term(&self, term: u64) {
        let stale = self.core().coordinator_term(term);
        if stale.is_empty() {
            return;
        }
        self.locks_released();
        metrics::counter!("twopc_participant_replaced_coordinator_aborts_total").increment(stale.len() as u64);
        tracing::info!(
            count = stale.len(),
            term,
            "a newer coordinator term: aborted the unprepared tids the replaced coordinator began"
        );
    }

    /// Rule 2: enlisted before the operation (`declared` is `None`), or a
    /// declared operation with this much time left until its deadline.
    async fn ensure_known(self: &Arc<Self>, tid: Tid, declared: Option<u64>) -> Result<(), ParticipantError> {
        match declared {
            Some(remaining_ms) => self.ensure_declared(tid, remaining_ms).await,
            None => self.ensure_enlisted(tid).await,
        }
    }

    /// A read inside `tid` (`declared`: see [`Node::ensure_known`]).
    pub async fn get(
        self: &Arc<Self>,
        tid: Tid,
        key: &[u8],
        for_update: bool,
        wait: bool,
        declared: Option<u64>,
    ) -> Result<Option<Vec<u8>>, ParticipantError> {
        self.ensure_known(tid, declared).await?;
        let plan = self
            .until_granted(tid, key, wait, |core| {
                if for_update {
                    core.get_for_update(tid, key, clock::now_ms())
                } else {
                    core.get(tid, key, clock::now_ms())
                }
            })
            .await?;
        match plan {
            ReadPlan::Own(v) => Ok(v),
            ReadPlan::Store => self.read(key),
        }
    }

    /// A write or delete inside `tid` (`declared`: see [`Node::ensure_known`]).
    pub async fn write(
        self: &Arc<Self>,
        tid: Tid,
        key: &[u8],
        value: Option<Vec<u8>>,
        wait: bool,
        declared: Option<u64>,
    ) -> Result<(), ParticipantError> {
        self.ensure_known(tid, declared).await?;
        self.until_granted(tid, key, wait, |core| core.write(tid, key, value.clone(), clock::now_ms())).await?;
        // The write is buffered, but the client hears an error: the case of
        // an operation that failed on the client's side after it was applied
        // here (the library then aborts the tid; nothing of it may commit).
        self.failpoint("participant::after_write_applied").await
    }

    /// Runs a locking operation, waiting while wait-die says the tid must
    /// wait (or, without `wait`, failing with `WouldWait`, nothing done).
    /// Each release of any lock wakes the waiters to try again; the tid's
    /// deadline bounds the wait (the core aborts it then).
    async fn until_granted<T>(
        &self,
        tid: Tid,
        key: &[u8],
        wait: bool,
        mut op: impl FnMut(&mut Participant) -> Result<T, OpError>,
    ) -> Result<T, ParticipantError> {
        let mut waited = false;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let result = op(&mut self.core());
            match result {
                Ok(v) => return Ok(v),
                Err(OpError::MustWait { .. }) if !wait => {
                    metrics::counter!("twopc_lock_waits_total").increment(1);
                    return Err(ParticipantError::WouldWait);
                }
                Err(OpError::MustWait { .. }) => {
                    if !waited {
                        metrics::counter!("twopc_lock_waits_total").increment(1);
                        waited = true;
                    }
                    // Re-check at least every 100 ms so the deadline is noticed.
                    let _ = tokio::time::timeout(Duration::from_millis(100), released).await;
                }
                Err(e) => return Err(self.op_failed(tid, e, key).await),
            }
        }
    }

    /// Wakes operations waiting for a lock; called after anything that may
    /// have released locks.
    pub(crate) fn locks_released(&self) {
        self.released.notify_waiters();
    }

    pub fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ParticipantError> {
        self.store.read(key).map_err(|e| ParticipantError::Internal(e.to_string()))
    }

    /// An operation failed in the core; if that aborted the tid here (just
    /// now: a conflict or the deadline), tell the coordinator why, and wait
    /// for that notice (up to [`NOTICE_WAIT`]) before the client hears the
    /// error: the client's own abort, which may follow, then finds the tid
    /// already aborted for the real cause. Must be called without the core
    /// lock held.
    async fn op_failed(&self, tid: Tid, e: OpError, key: &[u8]) -> ParticipantError {
        if matches!(e, OpError::LockConflict { .. }) {
            metrics::counter!("twopc_lock_conflicts_total").increment(1);
        }
        if matches!(e, OpError::LockConflict { .. } | OpError::DeadlinePassed) {
            let why = self.core().abort_reason(tid).cloned();
            if let Some(why) = why {
                self.locks_released();
                let notice = self.tell_coordinator_aborted(tid, &why);
                let _ = tokio::time::timeout(NOTICE_WAIT, notice).await;
            }
        } else if let OpError::AlreadyAborted(why) = &e {
            // Told when it aborted; again, in case that notice was lost.
            self.tell_coordinator_aborted(tid, why);
        }
        // By the error's kind, not its words (a key may contain "deadline").
        let deadline = match &e {
            OpError::DeadlinePassed => true,
            OpError::AlreadyAborted(why) => why.kind == AbortKind::Deadline,
            _ => false,
        };
        match ParticipantError::from_op(tid, e, key) {
            ParticipantError::Aborted { tid, reason } if deadline => {
                ParticipantError::Aborted { tid, reason: self.deadline_reason(reason) }
            }
            e => e,
        }
    }

    /// A deadline's abort reason, with a note when this participant's
    /// clock and the coordinator's disagree beyond the bound (deadlines
    /// travel as remaining time, but an older coordinator sends none).
    pub(crate) fn deadline_reason(&self, reason: String) -> String {
        match self.clock.hint() {
            Some(hint) => format!("{reason} ({hint})"),
            None => reason,
        }
    }

    /// The abort notice: tells the coordinator that `tid` aborted here and
    /// why, in a task of its own (best effort, bounded). The handle may be
    /// awaited for the notice to have been answered.
    pub(crate) fn tell_coordinator_aborted(&self, tid: Tid, why: &AbortReason) -> tokio::task::JoinHandle<()> {
        let coordinator = self.coordinator.clone();
        let (abort_kind, reason) =
            twopc_proto::reason::fields(&why.within(format_args!("partition {} aborted it", self.partition)));
        tokio::spawn(
            async move {
                let policy = Policy::within(QUESTION_BUDGET).attempts_within(COORDINATOR_ATTEMPT);
                let answer = coordinator
                    .call("Abort", policy, Retry::Idempotent, |mut c| {
                        let reason = reason.clone();
                        async move { c.abort(pb::AbortRequest { tid: tid.to_string(), abort_kind, reason }).await }
                    })
                    .await;
                if let Err(e) = answer {
                    tracing::debug!(%tid, error = %e, "abort notice not delivered; the tid aborts at prepare anyway");
                }
            }
            .in_current_span(),
        )
    }

    /// A graceful shutdown (rule 10): every tid that has not voted is
    /// aborted here for that reason, its locks released, and the
    /// coordinator told (bounded by `within` in all); prepared tids stay
    /// prepared on disk and are recovered at the next start.
    pub async fn shutting_down(&self, within: Duration) {
        let why = AbortReason::new(AbortKind::Shutdown, "the participant was shutting down");
        let aborted = self.core().abort_unprepared(&why);
        if aborted.is_empty() {
            return;
        }
        self.locks_released();
        tracing::info!(count = aborted.len(), "shutting down: aborted the tids that had not voted");
        let notices: Vec<_> = aborted.iter().map(|&tid| self.tell_coordinator_aborted(tid, &why)).collect();
        let _ = tokio::time::timeout(within, futures::future::join_all(notices)).await;
    }

    /// GetDecision for `tid`, of whoever leads, bounded as one question.
    /// Asked only about tids prepared here (in doubt, or resolved by an
    /// operator), so it names this partition as a YES voter: the answer is
    /// then never FORGOTTEN (rule 6).
    pub(crate) async fn get_decision(&self, tid: Tid) -> Result<pb::GetDecisionResponse, FollowError> {
        let policy = Policy::within(QUESTION_BUDGET).attempts_within(COORDINATOR_ATTEMPT);
        let asked = now_unix_ms();
        let partition = self.partition;
        let resp = self
            .coordinator
            .call("GetDecision", policy, Retry::Idempotent, |mut c| async move {
                // Rule 6: it asks only about tids prepared here (it voted YES).
                let req = pb::GetDecisionRequest { tid: tid.to_string(), asking_partition: Some(partition) };
                c.get_decision(req).await.map(tonic::Response::into_inner)
            })
            .await?;
        self.clock.observe(resp.sent_unix_ms, asked, now_unix_ms());
        Ok(resp)
    }

    /// Phase 1 (rule 3). The durable part runs in a task of its own, so a
    /// dropped call (the coordinator's connection closing) cannot leave the
    /// tid half-way in "preparing" with its locks held.
    /// `declared`: the client's count of operations here (rule 2), `None`
    /// when not declared.
    pub async fn prepare(self: &Arc<Self>, tid: Tid, declared: Option<u64>) -> Result<VoteReply, ParticipantError> {
        let step = loop {
            let step = self.core().prepare_declared(tid, clock::now_ms(), declared);
            match step {
                PrepareStep::AwaitEnlistment => self.await_enlistment(tid).await,
                step => break step,
            }
        };
        let writes = match step {
            PrepareStep::Yes => return Ok(VoteReply::Yes),
            PrepareStep::ReadOnly => {
                self.locks_released();
                return Ok(VoteReply::ReadOnly);
            }
            PrepareStep::No(why) => {
                self.locks_released();
                let why = if why.kind == AbortKind::Deadline {
                    AbortReason::new(why.kind, self.deadline_reason(why.detail))
                } else {
                    why
                };
                return Ok(VoteReply::No(why));
            }
            PrepareStep::InProgress => {
                return Err(ParticipantError::Unavailable(format!(
                    "tid {tid} is being prepared by an earlier call; ask again for its vote"
                )));
            }
            PrepareStep::Persist(writes) => writes,
            PrepareStep::AwaitEnlistment => unreachable!("waited for above"),
        };
        let this = self.clone();
        tokio::spawn(async move { this.persist_prepared(tid, writes).await }.in_current_span())
            .await
            .map_err(|e| ParticipantError::Internal(format!("prepare task failed: {e}")))?
    }

    async fn persist_prepared(&self, tid: Tid, writes: WriteSet) -> Result<VoteReply, ParticipantError> {
        // C4: a crash before the prepared state is durable.
        let written = match failpoint::hit("participant::before_prepare_durable").await {
            Err(e) => Err(e.to_string()),
            Ok(()) => match self.store.prepare(tid, writes).await {
                Err(StoreError::DiskFull(detail)) => return Ok(self.prepare_out_of_space(tid, &detail)),
                r => r.map_err(|e| e.to_string()),
            },
        };
        if let Err(e) = written {
            // Not durable (or unknown): abort here; the record, if it landed
            // after all, goes too. No YES was sent, so this is allowed (rule
            // 10), and the vote is NO with the cause (rule 4).
            let _ = self.store.delete_prepared(tid).await;
            let why = AbortReason::new(AbortKind::WriteFailed, format!("persisting the prepared state failed: {e}"));
            self.core().prepare_failed(tid, why.clone());
            self.locks_released();
            tracing::warn!(%tid, reason = %why, "prepare failed: voting NO");
            return Ok(VoteReply::No(why));
        }
        self.disk.succeeded();
        let durable = self.core().prepared_durable(tid, clock::now_ms());
        if let Err(why) = durable {
            // Aborted while the record was being written: delete it, and only
            // then release the locks (prepare_failed).
            let _ = self.store.delete_prepared(tid).await;
            self.core().prepare_failed(tid, why.clone());
            self.locks_released();
            return Ok(VoteReply::No(why));
        }
        // C5: prepared and durable, but the vote is never sent (with
        // `return(error)` the tid stays prepared, in doubt, and asks).
        self.failpoint("participant::after_prepare_durable").await?;
        tracing::debug!(%tid, "prepared, voting YES");
        metrics::counter!("twopc_votes_total", "vote" => "yes").increment(1);
        Ok(VoteReply::Yes)
    }

    /// A prepare's write failed for lack of space: it certainly did not
    /// land, so the tid aborts here (no YES was sent, rule 10) and votes NO
    /// with a reason naming this partition's full disk.
    fn prepare_out_of_space(&self, tid: Tid, detail: &str) -> VoteReply {
        self.disk.failed(detail);
        let why = AbortReason::new(
            AbortKind::DiskFull,
            format!(
                "partition {} is out of disk space (store {}: {detail}): its prepared state could not be written; \
                 free space there and retry (the participant resumes by itself)",
                self.partition,
                self.store.path().display()
            ),
        );
        self.core().prepare_failed(tid, why.clone());
        self.locks_released();
        tracing::debug!(%tid, "prepare not written: out of space; voting NO");
        VoteReply::No(why)
    }

    /// A commit's write failed: out of space it stays pending and is refused RESOURCE_EXHAUSTED, naming the
    /// partition (the coordinator resends until space returns); any other
    /// failure is internal.
    fn commit_write_failed(&self, e: StoreError) -> ParticipantError {
        match e {
            StoreError::DiskFull(detail) => {
                self.disk.failed(&detail);
                ParticipantError::ResourceExhausted(format!(
                    "partition {} is out of disk space (store {}: {detail}): the commit will be applied once space \
                     is freed",
                    self.partition,
                    self.store.path().display()
                ))
            }
            e => ParticipantError::Internal(e.to_string()),
        }
    }

    /// Phase 2, commit (from the coordinator, or learned by asking).
    pub async fn commit(&self, tid: Tid) -> Result<(), ParticipantError> {
        // C6: voted YES, the decision never arrives.
        self.failpoint("participant::before_commit_applied").await?;
        let step = self.core().commit(tid).map_err(|e| ParticipantError::from_resolve(tid, e))?;
        match step {
            CommitStep::Apply(writes) => {
                self.store.commit(tid, writes).await.map_err(|e| self.commit_write_failed(e))?;
                self.disk.succeeded();
                self.core().commit_applied(tid);
                self.locks_released();
                tracing::debug!(%tid, "commit applied");
            }
            CommitStep::Ack => self.note_late_decision(tid, true).await,
        }
        // C7: applied, but the acknowledgement is never sent.
        self.failpoint("participant::after_commit_applied").await?;
        Ok(())
    }

    /// One-phase commit: the coordinator delegated the decision here.
    /// `declared`: as for [`Node::prepare`].
    pub async fn commit_one_phase(
        self: &Arc<Self>,
        tid: Tid,
        declared: Option<u64>,
    ) -> Result<OnePhaseReply, ParticipantError> {
        let step = loop {
            let step = self.core().commit_one_phase_declared(tid, clock::now_ms(), declared);
            match step {
                OnePhaseStep::AwaitEnlistment => self.await_enlistment(tid).await,
                step => break step,
            }
        };
        let writes = match step {
            OnePhaseStep::Apply(writes) => writes,
            OnePhaseStep::Aborted(why) => {
                self.locks_released();
                return Ok(OnePhaseReply::Aborted(why));
            }
            OnePhaseStep::Refused(why) => return Err(ParticipantError::FailedPrecondition { tid, why: why.into() }),
            OnePhaseStep::AwaitEnlistment => unreachable!("waited for above"),
            OnePhaseStep::Unknown => {
                if self.store.committed_one_phase(tid).map_err(|e| ParticipantError::Internal(e.to_string()))? {
                    return Ok(OnePhaseReply::Committed);
                }
                // Remembered as aborted before answering, so it can never
                // be started afresh and committed after this answer.
                let why = self.core().lost(tid);
                return Ok(OnePhaseReply::Aborted(why));
            }
        };
        // In a task of its own, like a prepare: a dropped call (the
        // coordinator's connection closing) must not leave the tid
        // committing, with its locks, after its commit is durable.
        let this = self.clone();
        tokio::spawn(async move { this.apply_one_phase(tid, writes).await }.in_current_span())
            .await
            .map_err(|e| ParticipantError::Internal(format!("one-phase commit task failed: {e}")))?
    }

    fn one_phase_uncertain(&self) -> MutexGuard<'_, std::collections::HashSet<Tid>> {
        self.one_phase_uncertain.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn apply_one_phase(&self, tid: Tid, writes: WriteSet) -> Result<OnePhaseReply, ParticipantError> {
        // One write of a tid's one-phase commit at a time, so that one
        // certainly not written (out of space) can be decided ABORT: no
        // other write of it can land afterwards.
        let Some(_slot) = OnePhaseSlot::take(&self.one_phase_writing, tid) else {
            return Err(ParticipantError::Unavailable(format!(
                "tid {tid} is being committed by an earlier call; ask again for its outcome"
            )));
        };
        if !self.core().committing(tid) {
            // An earlier call finished it while this one waited for the
            // slot: the repeat then finds its answer (rule 11).
            return Err(ParticipantError::Unavailable(format!(
                "tid {tid} was just decided by an earlier call; ask again for its outcome"
            )));
        }
        // Crash before the one-phase commit is durable: the tid is lost, an abort.
        self.failpoint("participant::before_one_phase_applied").await?;
        // A failed write leaves the tid committing: its fate on disk is
        // unknown, and the coordinator's repeat applies it (once) or finds it.
        // Except out of space: certainly not written, so this participant,
        // whose answer is the decision, aborts it, unless an earlier write
        // of it failed with an unknown outcome (it may have landed: then
        // the tid waits for space like a phase-2 commit).
        match self.store.commit_one_phase(tid, writes).await {
            Ok(()) => {
                self.disk.succeeded();
                self.one_phase_uncertain().remove(&tid);
            }
            Err(StoreError::DiskFull(detail)) if self.one_phase_uncertain().contains(&tid) => {
                return Err(self.commit_write_failed(StoreError::DiskFull(detail)));
            }
            Err(StoreError::DiskFull(detail)) => {
                let why = AbortReason::new(
                    AbortKind::DiskFull,
                    format!(
                        "partition {} is out of disk space (store {}: {detail}): nothing was committed; free space \
                         there and retry (the participant resumes by itself)",
                        self.partition,
                        self.store.path().display()
                    ),
                );
                if !self.core().one_phase_not_written(tid, why.clone()) {
                    return Err(self.commit_write_failed(StoreError::DiskFull(detail)));
                }
                self.disk.failed(&detail);
                self.locks_released();
                return Ok(OnePhaseReply::Aborted(why));
            }
            Err(e) => {
                self.one_phase_uncertain().insert(tid);
                return Err(self.commit_write_failed(e));
            }
        }
        // Counted once per tid: a repeat applied meanwhile (a no-op in the
        // store) finds the tid already ended.
        if self.core().commit_applied(tid) {
            metrics::counter!("twopc_one_phase_commits_total").increment(1);
        }
        self.locks_released();
        tracing::debug!(%tid, "committed in one phase");
        // Crash after it is durable, before the answer: the repeat finds the record.
        self.failpoint("participant::after_one_phase_applied").await?;
        Ok(OnePhaseReply::Committed)
    }

    /// Phase 2 abort, or an abort before prepare.
    pub async fn abort(&self, tid: Tid) -> Result<(), ParticipantError> {
        let step = self.core().abort(tid).map_err(|e| ParticipantError::from_resolve(tid, e))?;
        self.locks_released();
        match step {
            AbortStep::DeletePrepared => {
                self.store.delete_prepared(tid).await.map_err(|e| ParticipantError::Internal(e.to_string()))?;
                tracing::debug!(%tid, "prepared tid aborted");
            }
            AbortStep::Ack => self.note_late_decision(tid, false).await,
        }
        Ok(())
    }

    async fn failpoint(&self, name: &'static str) -> Result<(), ParticipantError> {
        failpoint::hit(name).await.map_err(|e| ParticipantError::Internal(e.to_string()))
    }

    /// Rule 8/10 timers: aborts expired tids and asks about in-doubt ones.
    pub async fn timer_loop(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = clock::now_ms();
            let (expired, due) = {
                let mut core = self.core();
                metrics::gauge!("twopc_in_doubt_tids").set(core.in_doubt().len() as f64);
                metrics::gauge!("twopc_participant_open_tids").set(core.open_tids() as f64);
                metrics::gauge!("twopc_locked_keys").set(core.locked_keys() as f64);
                (core.expire(now), core.due_questions(now))
            };
            // Every expired tid's reason (the core's own), with the clock
            // note when the clocks disagree.
            let why = twopc_core::participant::deadline_passed();
            let why = AbortReason::new(why.kind, self.deadline_reason(why.detail));
            if !expired.is_empty() {
                self.locks_released();
            }
            // The last prepared tid may have ended (e.g. by a Commit from
            // the coordinator): then the fence lifts (`crate::fence`).
            if self.fence.mismatched().is_some() && !self.core().has_prepared() {
                self.recheck_fence().await;
            }
            for tid in expired {
                tracing::debug!(%tid, "deadline passed before prepare: aborted here");
                if let Some(suppressed) = EXPIRED.allow() {
                    tracing::info!(%tid, suppressed, "deadline passed before prepare: aborted here (one line per 10 s)");
                }
                self.tell_coordinator_aborted(tid, &why);
            }
            for tid in due {
                let this = self.clone();
                let span = tracing::debug_span!("txn", %tid, partition = self.partition);
                tokio::spawn(async move { this.ask_decision(tid).await }.instrument(span));
            }
        }
    }

    /// Asks the coordinator for `tid`'s decision and applies it if known.
    async fn ask_decision(&self, tid: Tid) {
        let resp = match self.get_decision(tid).await {
            Ok(r) => r,
            Err(e) => {
                if let Some(suppressed) = UNANSWERED.allow() {
                    tracing::warn!(%tid, error = %e, suppressed, "in doubt: no coordinator answered; will ask again");
                }
                return;
            }
        };
        let ours = self.check_cluster(&resp.cluster_id).await.is_ok();
        if ours {
            self.heard_term(resp.coordinator_term);
        }
        let result = match pb::Decision::try_from(resp.decision) {
            // A COMMIT record binds whatever log holds it: tids are unique
            // (e.g. a restored backup that was given a new cluster id).
            Ok(pb::Decision::Committed) => {
                tracing::debug!(%tid, same_cluster = ours, "in doubt: learned COMMIT");
                if let Some(suppressed) = LEARNED.allow() {
                    tracing::info!(%tid, suppressed, "in doubt: learned the decision COMMIT (one line per 10 s)");
                }
                let done = self.commit(tid).await;
                if !ours && done.is_ok() {
                    // That may have been the last tid bound to our id.
                    self.recheck_fence().await;
                }
                done
            }
            _ if !ours => {
                // Logged once by check_cluster; the tid stays in doubt.
                return tracing::debug!(%tid, "in doubt: answer from another cluster's decision log not taken");
            }
            Ok(pb::Decision::Aborted) => {
                tracing::debug!(%tid, reason = %resp.reason, "in doubt: learned ABORT");
                if let Some(suppressed) = LEARNED.allow() {
                    tracing::info!(%tid, reason = %resp.reason, suppressed, "in doubt: learned the decision ABORT (one line per 10 s)");
                }
                self.abort(tid).await
            }
            _ => {
                tracing::debug!(%tid, "in doubt: decision still pending");
                Ok(())
            }
        };
        if let Err(e) = result
            && let Some(suppressed) = APPLY_FAILED.allow()
        {
            tracing::warn!(%tid, error = %e, suppressed, "applying the learned decision failed; will ask again");
        }
    }

    /// Registers with the leading coordinator, retrying with backoff until
    /// one accepts. `replace_store`: the id of a lost store this one
    /// replaces (`--replace-store`), empty if none.
    pub async fn register_loop(self: Arc<Self>, address: String, replace_store: String) {
        let mut backoff = twopc_proto::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let asked = now_unix_ms();
            let req = pb::RegisterRequest {
                partition: self.partition,
                address: address.clone(),
                incarnation: self.incarnation,
                sent_unix_ms: asked,
                store_id: self.store.store_id().to_string(),
                replace_store: replace_store.clone(),
            };
            let answer = self
                .coordinator
                .call(
                    "Register",
                    Policy::within(REGISTER_ROUND).attempts_within(COORDINATOR_ATTEMPT),
                    Retry::Idempotent,
                    |mut c| {
                        let req = req.clone();
                        async move { c.register(req).await }
                    },
                )
                .await;
            if let Ok(resp) = &answer {
                // The partition count clients route by (`crate::ownership`),
                // also while fenced; kept for the next start.
                let partitions = resp.get_ref().partitions;
                self.ownership.learn(partitions);
                if self.ownership.partitions() == Some(partitions)
                    && let Err(e) = self.store.set_partition_count(partitions).await
                {
                    tracing::warn!(error = %e, "cannot record the partition count; will try at the next registration");
                }
                self.clock.observe(resp.get_ref().sent_unix_ms, asked, now_unix_ms());
            }
            match answer {
                Ok(resp) => match self.check_cluster(&resp.get_ref().cluster_id).await {
                    Ok(()) => {
                        self.heard_term(resp.get_ref().coordinator_term);
                        let leader = self.coordinator.current();
                        tracing::info!(partition = self.partition, %address, coordinator = %leader, "registered with the coordinator");
                        return;
                    }
                    // Fenced (crate::fence): register again in a while; the
                    // fence is re-examined with each answer.
                    Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
                },
                Err(e) if e.code() == tonic::Code::Unauthenticated => {
                    if let Some(suppressed) = REGISTER_REFUSED.allow() {
                        tracing::error!(
                            suppressed,
                            "the coordinator refused our registration (check --peer-token): {e}"
                        );
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(FollowError::Status { address: at, status }) if twopc_proto::store_id::is_other_store(&status) => {
                    tracing::error!(
                        partition = self.partition,
                        store_id = %self.store.store_id(),
                        data_dir = %self.store.path().parent().unwrap_or(self.store.path()).display(),
                        coordinator = %at,
                        "the coordinator refused this participant's store for the partition; exiting: {}",
                        status.message()
                    );
                    std::process::exit(2);
                }
                Err(e) if e.code() == tonic::Code::InvalidArgument => {
                    tracing::error!("the coordinator refused our registration: {e}");
                    std::process::exit(2);
                }
                Err(e) => {
                    if let Some(suppressed) = REGISTER_RETRY.allow() {
                        tracing::warn!(
                            error = %e,
                            suppressed,
                            "coordinator not reachable; retrying registration (one line per 10 s)"
                        );
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twopc_core::participant::Limits;
    use twopc_leader::fake_coordinator::{Act, FakeCoordinator};
    use twopc_proto::tls::ClientTls;
    use twopc_proto::token::PeerToken;

    fn dead_addr() -> String {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
    }

    /// Register, Enlist, GetDecision and abort notices all reach the leader
    /// through a dead address and a standby, with the peer token on every
    /// channel.
    #[tokio::test]
    async fn calls_to_the_coordinator_follow_the_leader_with_the_peer_token() {
        let leader = FakeCoordinator::start(Box::new(|_, _| Act::Answer)).await;
        let standby = FakeCoordinator::standby(Some(leader.addr.to_string())).await;
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 0).unwrap();
        let token = PeerToken::new(Some("p33r")).unwrap();
        let list = format!("{},{}", dead_addr(), standby.addr);
        let follower = Follower::new(&list, ClientTls::plaintext(), token, Duration::from_secs(1)).unwrap();
        let node = Node::new(Participant::new(0, Limits::default()), store, follower);

        tokio::time::timeout(
            Duration::from_secs(10),
            node.clone().register_loop("127.0.0.1:7100".into(), String::new()),
        )
        .await
        .expect("registered through the standby");
        assert_eq!((standby.calls("Register"), leader.calls("Register")), (1, 1));
        assert_eq!(node.coordinator.current(), leader.addr.to_string());

        let tid = Tid::now_v7();
        node.ensure_enlisted(tid).await.expect("enlisted at the leader");
        assert_eq!(leader.calls("EnlistBatch"), 1);
        let resp = node.get_decision(tid).await.unwrap();
        assert_eq!(resp.decision(), pb::Decision::Committed);

        node.tell_coordinator_aborted(tid, &AbortReason::new(AbortKind::Deadline, "its deadline passed"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while leader.calls("Abort") == 0 {
            assert!(std::time::Instant::now() < deadline, "the abort notice never reached the leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let tokens = [standby.peer_tokens(), leader.peer_tokens()].concat();
        assert_eq!(tokens.len(), 5);
        assert!(tokens.iter().all(|t| t.as_deref() == Some("p33r")), "{tokens:?}");
    }

    /// An enlistment that finds no leader fails the operation with
    /// UNAVAILABLE naming the addresses, within its budget.
    #[tokio::test]
    async fn an_enlistment_without_a_leader_fails_within_its_budget() {
        let lost = FakeCoordinator::standby(None).await;
        let dead = dead_addr();
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 0).unwrap();
        let list = format!("{dead},{}", lost.addr);
        let follower = Follower::new(&list, ClientTls::plaintext(), PeerToken::default(), Duration::from_secs(1));
        let node = Node::new(Participant::new(0, Limits::default()), store, follower.unwrap());
        let started = std::time::Instant::now();
        let e = node.ensure_enlisted(Tid::now_v7()).await.unwrap_err();
        assert!(started.elapsed() < ENLIST_BUDGET + Duration::from_secs(2), "took {:?}", started.elapsed());
        assert!(matches!(e, ParticipantError::CoordinatorUnavailable(_)), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&dead) && text.contains(&lost.addr.to_string()), "{text}");
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
    }
}
