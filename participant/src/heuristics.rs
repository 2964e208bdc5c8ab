//! Manual (heuristic) resolution of an in-doubt tid, for disaster recovery
//! when the coordinator's decision log is lost.
//!
//! Rules, in the order they are checked:
//! 1. Only with the operator's explicit `override_lost_log`: without it the
//!    request is refused (FAILED_PRECONDITION). An outcome chosen here may
//!    differ from what other participants of the tid did, which breaks
//!    atomicity; while the coordinator's log exists, restarting the
//!    coordinator resolves every in-doubt tid correctly by itself.
//! 2. Only for a tid prepared here (NOT_FOUND otherwise): anything else has
//!    no write set waiting for a decision.
//! 3. Nothing contradicts the coordinator's decision. The coordinator is
//!    asked first, and these answers bind, override or not:
//!    - COMMITTED, with any cluster id (`crate::fence`): a COMMIT record
//!      binds whatever log holds it, since tids are unique UUIDv7s (e.g. a
//!      restored backup that was given a new id, README "Backup");
//!    - ABORTED with *our* cluster id, remembered or presumed: a log that is
//!      the one this tid voted under cannot have forgotten its COMMIT (a
//!      COMMIT record stays until every YES participant acknowledged, and
//!      this one has not), and a restored backup must get a new id unless
//!      nothing committed since it was taken.
//!
//!    A binding answer with the same outcome is applied as an ordinary
//!    decision and nothing heuristic is recorded; the opposite outcome is
//!    refused (FAILED_PRECONDITION, quoting the answer). While the
//!    coordinator is still deciding (PENDING) the request is refused as
//!    UNAVAILABLE: its decision comes within the prepare timeout.
//! 4. Otherwise (coordinator unreachable, or ABORTED from another cluster
//!    id) the outcome is applied heuristically: the write set is applied
//!    (commit) or dropped (abort), the prepared row deleted and the
//!    heuristic recorded, in one forced SQLite transaction (`crate::store`);
//!    then the locks are released. That durable part runs in a task of its
//!    own, so a dropped request cannot leave it half-way; a repeat of the
//!    same outcome meanwhile waits for it (the tid is no longer listed in
//!    doubt, and the coordinator's Commit/Abort are answered UNAVAILABLE,
//!    retryable); if the write fails, the tid is prepared and in doubt again.
//!    Heuristics are listed by `ListInDoubt` (the newest
//!    [`crate::store::KEEP_HEURISTICS`]) and counted in
//!    `twopc_participant_heuristic_outcomes_total{outcome}`.
//! 5. A decision that arrives later from the coordinator and contradicts a
//!    heuristic is acknowledged (the outcome cannot be undone here, and the
//!    coordinator must stop resending), logged as an error, marked
//!    `contradicted` in the listing and counted once in
//!    `twopc_participant_heuristic_mismatches_total`. Only what arrives is
//!    compared; nothing is asked after a heuristic. So a heuristic ABORT
//!    against a logged COMMIT is always detected once the coordinator is
//!    back on that log (it resends the COMMIT until acknowledged), but a
//!    heuristic COMMIT against an ABORT is detected only if an Abort reaches
//!    this participant afterwards (aborts are sent once, best effort). By
//!    rule 3 that case needs the heuristic to have been taken while the
//!    coordinator was unreachable; an operator who is unsure asks it
//!    (`twopc status TID`) once it is back.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tracing::Instrument;
use twopc_core::Tid;
use twopc_core::participant::{HeuristicError, WriteSet};
use twopc_proto::{clock, failpoint, now_unix_ms, pb};

use crate::error::ParticipantError;
use crate::node::Node;

/// One outcome imposed by an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heuristic {
    pub tid: Tid,
    pub committed: bool,
    pub reason: String,
    pub at_unix_ms: u64,
    /// A decision from the coordinator said the opposite later.
    pub contradicted: bool,
}

/// The recorded heuristics, in memory: the newest `cap`, by tid.
#[derive(Debug, Default)]
pub struct Heuristics {
    by_tid: HashMap<Tid, Heuristic>,
    order: VecDeque<Tid>,
    cap: usize,
}

impl Heuristics {
    /// From the records read back at start, oldest first.
    pub fn new(records: Vec<Heuristic>, cap: usize) -> Self {
        let mut h = Heuristics { cap, ..Default::default() };
        for r in records {
            h.push(r);
        }
        h
    }

    pub fn push(&mut self, h: Heuristic) {
        let tid = h.tid;
        if self.by_tid.insert(tid, h).is_none() {
            self.order.push_back(tid);
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.by_tid.remove(&old);
            }
        }
    }

    pub fn get(&self, tid: Tid) -> Option<&Heuristic> {
        self.by_tid.get(&tid)
    }

    /// Oldest first.
    pub fn list(&self) -> Vec<Heuristic> {
        self.order.iter().filter_map(|t| self.by_tid.get(t).cloned()).collect()
    }

    /// Marks `tid`'s heuristic contradicted; true if it was not before.
    pub fn mark_contradicted(&mut self, tid: Tid) -> bool {
        match self.by_tid.get_mut(&tid) {
            Some(h) if !h.contradicted => {
                h.contradicted = true;
                true
            }
            _ => false,
        }
    }
}

/// How a manual resolution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Applied and recorded as a heuristic outcome.
    Heuristic,
    /// The coordinator's log held the same outcome: applied as its decision.
    Decision,
}

fn word(commit: bool) -> &'static str {
    if commit { "COMMIT" } else { "ABORT" }
}

/// A heuristic outcome being made durable: its task's result, shared by a
/// repeated request.
type Task = Shared<BoxFuture<'static, Result<(), String>>>;

/// The heuristic outcomes being made durable right now, by tid (rule 4).
#[derive(Default)]
pub struct InFlight {
    tasks: Mutex<HashMap<Tid, (bool, Task)>>,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Tid, (bool, Task)>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A decision the coordinator answered with that binds a manual resolution
/// (rule 3).
struct Logged {
    commit: bool,
    /// How the coordinator put it, for the refusal.
    quote: String,
}

/// The answer to a manual resolution whose outcome was being made durable.
fn heuristic_done(written: Result<(), String>) -> Result<Resolution, ParticipantError> {
    written.map(|()| Resolution::Heuristic).map_err(|e| {
        ParticipantError::Internal(format!(
            "making the heuristic outcome durable failed ({e}): the tid is in doubt again, its prepared \
             state kept; retry"
        ))
    })
}

impl Node {
    /// Rules 1 to 4 of the module docs.
    pub async fn resolve_heuristically(
        self: &Arc<Self>,
        tid: Tid,
        commit: bool,
        override_lost_log: bool,
        reason: String,
    ) -> Result<Resolution, ParticipantError> {
        let outcome = word(commit);
        if !override_lost_log {
            return Err(ParticipantError::FailedPrecondition {
                tid,
                why: format!(
                    "a heuristic {outcome} needs the override flag (--override-lost-log): it is only for when the \
                     coordinator's decision log is lost, and it may break atomicity (other participants of this \
                     tid may apply the opposite outcome). While the log exists, restart the coordinator on it \
                     instead: it resolves every in-doubt tid by itself"
                ),
            });
        }
        // A repeat while this outcome is being made durable waits for it.
        if let Some(task) = self.heuristic_in_flight(tid, commit)? {
            return heuristic_done(task.await);
        }
        if !self.core().in_doubt().iter().any(|d| d.tid == tid) {
            return Err(ParticipantError::NotInDoubt(tid));
        }
        match self.logged_decision(tid).await? {
            Some(logged) if logged.commit == commit => {
                tracing::info!(%tid, outcome, "manual resolution: the coordinator's log holds this outcome; applying it as its decision");
                if commit {
                    self.commit(tid).await?
                } else {
                    self.abort(tid).await?
                }
                self.recheck_fence().await;
                return Ok(Resolution::Decision);
            }
            Some(logged) => {
                return Err(ParticipantError::FailedPrecondition {
                    tid,
                    why: format!(
                        "{}; a heuristic {outcome} would contradict it and is refused, override or not. The \
                         coordinator's decision is applied here by itself (it resends a COMMIT until this \
                         participant acknowledges; an ABORT is learned by asking)",
                        logged.quote
                    ),
                });
            }
            None => {}
        }
        let task = self.start_heuristic(tid, commit, reason)?;
        heuristic_done(task.await)
    }

    /// The task making `tid`'s heuristic outcome durable, if one runs:
    /// `commit` must be its outcome.
    fn heuristic_in_flight(&self, tid: Tid, commit: bool) -> Result<Option<Task>, ParticipantError> {
        match self.resolving.lock().get(&tid) {
            Some((c, task)) if *c == commit => Ok(Some(task.clone())),
            Some(_) => {
                Err(ParticipantError::from_heuristic(tid, HeuristicError::Busy("the opposite heuristic outcome")))
            }
            None => Ok(None),
        }
    }

    /// Rule 4: the durable part runs in a task of its own (as a prepare's
    /// does), so a dropped call cannot leave the tid half-way, locked and
    /// neither in doubt nor resolved; a repeat of the same outcome meanwhile
    /// waits for that task.
    fn start_heuristic(self: &Arc<Self>, tid: Tid, commit: bool, reason: String) -> Result<Task, ParticipantError> {
        let mut resolving = self.resolving.lock();
        if let Some((c, task)) = resolving.get(&tid) {
            if *c == commit {
                return Ok(task.clone());
            }
            return Err(ParticipantError::from_heuristic(tid, HeuristicError::Busy("the opposite heuristic outcome")));
        }
        let writes =
            self.core().resolve_heuristically(tid, commit).map_err(|e| ParticipantError::from_heuristic(tid, e))?;
        let record = Heuristic { tid, committed: commit, reason, at_unix_ms: now_unix_ms(), contradicted: false };
        let this = self.clone();
        let handle = tokio::spawn(async move { this.persist_heuristic(record, writes).await }.in_current_span());
        let task =
            async move { handle.await.unwrap_or_else(|e| Err(format!("the task failed: {e}"))) }.boxed().shared();
        resolving.insert(tid, (commit, task.clone()));
        Ok(task)
    }

    async fn persist_heuristic(self: Arc<Self>, record: Heuristic, writes: Option<WriteSet>) -> Result<(), String> {
        let (tid, commit, reason) = (record.tid, record.committed, record.reason.clone());
        let written = match failpoint::hit("participant::before_heuristic_durable").await {
            Err(e) => Err(e.to_string()),
            Ok(()) => self.store.apply_heuristic(record, writes).await.map_err(|e| e.to_string()),
        };
        match &written {
            Ok(()) => {
                self.core().heuristic_applied(tid);
                self.locks_released();
                let label = if commit { "commit" } else { "abort" };
                metrics::counter!("twopc_participant_heuristic_outcomes_total", "outcome" => label).increment(1);
                tracing::warn!(%tid, outcome = word(commit), %reason, "heuristic outcome applied by an operator and recorded");
            }
            Err(e) => {
                // Prepared and in doubt again: open to the coordinator's
                // decision or another manual resolution.
                self.core().heuristic_failed(tid, clock::now_ms());
                tracing::error!(%tid, outcome = word(commit), error = %e, "making the heuristic outcome durable failed; the tid is in doubt again");
            }
        }
        self.resolving.lock().remove(&tid);
        if written.is_ok() {
            // The last in-doubt tid may have been what kept this participant fenced.
            self.recheck_fence().await;
        }
        written
    }

    /// The coordinator's answer for `tid` if it binds a manual resolution
    /// (rule 3); `None` when nothing binds (unreachable, or an ABORTED from
    /// another decision log).
    async fn logged_decision(&self, tid: Tid) -> Result<Option<Logged>, ParticipantError> {
        let resp = match self.get_decision(tid).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%tid, error = %e, "manual resolution: no answer from the coordinator");
                return Ok(None);
            }
        };
        let ours = self.check_cluster(&resp.cluster_id).await.is_ok();
        let log = if ours { "the coordinator's decision log" } else { "the coordinator's (other) decision log" };
        let cluster = &resp.cluster_id;
        match pb::Decision::try_from(resp.decision) {
            // A COMMIT record binds whatever log holds it: tids are unique.
            Ok(pb::Decision::Committed) => Ok(Some(Logged {
                commit: true,
                quote: format!("{log} (cluster {cluster}) records COMMIT for this tid"),
            })),
            Ok(pb::Decision::Aborted) if ours => {
                let how = if resp.presumed {
                    "answers ABORTED for this tid (presumed abort: no COMMIT for it, and a tid prepared here \
                     keeps its COMMIT record until this participant acknowledges)"
                        .to_string()
                } else {
                    format!("records ABORT for this tid ({})", resp.reason)
                };
                Ok(Some(Logged { commit: false, quote: format!("{log} (cluster {cluster}) {how}") }))
            }
            Ok(pb::Decision::Pending) => Err(ParticipantError::Unavailable(format!(
                "the coordinator is deciding tid {tid} right now (PENDING); its decision follows within its \
                 prepare timeout: check again whether the tid is still in doubt"
            ))),
            _ => Ok(None),
        }
    }

    /// Rule 5: a decision for `tid` arrived after the tid was forgotten here.
    pub(crate) async fn note_late_decision(&self, tid: Tid, committed: bool) {
        let Some(h) = self.store.heuristic(tid) else { return };
        if h.committed == committed {
            return;
        }
        match self.store.mark_contradicted(tid).await {
            Ok(false) => {}
            marked => {
                metrics::counter!("twopc_participant_heuristic_mismatches_total").increment(1);
                tracing::error!(
                    %tid,
                    heuristic = word(h.committed),
                    decision = word(committed),
                    mark_failed = marked.is_err(),
                    "HEURISTIC MISMATCH: the coordinator decided the opposite of the heuristic outcome applied \
                     here; this tid's atomicity is broken and its data must be repaired by hand"
                );
            }
        }
    }
}
