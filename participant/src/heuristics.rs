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
//! 3. Nothing contradicts a logged decision. The coordinator is asked
//!    first; if it answers with *our* cluster id (`crate::fence`) and a
//!    decision it holds (COMMITTED, or an ABORTED it remembers), that
//!    decision wins: the same outcome is applied as an ordinary decision and
//!    nothing heuristic is recorded; the opposite is refused
//!    (FAILED_PRECONDITION, quoting the decision), override or not. While it
//!    is still deciding (PENDING) the request is refused as UNAVAILABLE: its
//!    decision comes within the prepare timeout.
//! 4. Otherwise (coordinator unreachable, another cluster id, or only a
//!    presumed abort) the outcome is applied heuristically: the write set is
//!    applied (commit) or dropped (abort), the prepared row deleted and the
//!    heuristic recorded, in one forced SQLite transaction (`crate::store`);
//!    then the locks are released. Heuristics are listed by `ListInDoubt`
//!    (the newest [`crate::store::KEEP_HEURISTICS`]) and counted in
//!    `twopc_participant_heuristic_outcomes_total{outcome}`.
//! 5. A decision that arrives later from the coordinator and contradicts a
//!    heuristic is acknowledged (the outcome cannot be undone here, and the
//!    coordinator must stop resending), logged as an error, marked
//!    `contradicted` in the listing and counted once in
//!    `twopc_participant_heuristic_mismatches_total`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use twopc_core::Tid;
use twopc_proto::{now_unix_ms, pb};

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

impl Node {
    /// Rules 1 to 4 of the module docs.
    pub async fn resolve_heuristically(
        &self,
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
        if !self.core().in_doubt().iter().any(|d| d.tid == tid) {
            return Err(ParticipantError::NotInDoubt(tid));
        }
        match self.logged_decision(tid).await? {
            Some(logged) if logged == commit => {
                tracing::info!(%tid, outcome, "manual resolution: the coordinator's log holds this outcome; applying it as its decision");
                if commit {
                    self.commit(tid).await?
                } else {
                    self.abort(tid).await?
                }
                return Ok(Resolution::Decision);
            }
            Some(logged) => {
                return Err(ParticipantError::FailedPrecondition {
                    tid,
                    why: format!(
                        "the coordinator's decision log records {} for this tid; a heuristic {outcome} would \
                         contradict it and is refused, override or not. The coordinator delivers its decision \
                         by itself (it retries until this participant acknowledges)",
                        word(logged)
                    ),
                });
            }
            None => {}
        }
        let writes =
            self.core().resolve_heuristically(tid, commit).map_err(|e| ParticipantError::from_heuristic(tid, e))?;
        let record = Heuristic {
            tid,
            committed: commit,
            reason: reason.clone(),
            at_unix_ms: now_unix_ms(),
            contradicted: false,
        };
        self.store.apply_heuristic(record, writes).await.map_err(|e| ParticipantError::Internal(e.to_string()))?;
        self.core().heuristic_applied(tid);
        self.locks_released();
        let label = if commit { "commit" } else { "abort" };
        metrics::counter!("twopc_participant_heuristic_outcomes_total", "outcome" => label).increment(1);
        tracing::warn!(%tid, outcome, %reason, "heuristic outcome applied by an operator and recorded");
        // The last in-doubt tid may have been what kept this participant fenced.
        self.recheck_fence().await;
        Ok(Resolution::Heuristic)
    }

    /// The coordinator's decision for `tid` if it is one to obey (rule 3):
    /// `Some(true)` COMMIT, `Some(false)` ABORT; `None` when there is none
    /// to obey (unreachable, another cluster's log, presumed abort).
    async fn logged_decision(&self, tid: Tid) -> Result<Option<bool>, ParticipantError> {
        let req = pb::GetDecisionRequest { tid: tid.to_string() };
        let mut coordinator = self.coordinator.clone();
        let resp = match tokio::time::timeout(Duration::from_secs(2), coordinator.get_decision(req)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                tracing::warn!(%tid, error = %s.message(), "manual resolution: no answer from the coordinator");
                return Ok(None);
            }
            Err(_) => {
                tracing::warn!(%tid, "manual resolution: the coordinator did not answer in time");
                return Ok(None);
            }
        };
        if self.check_cluster(&resp.cluster_id).await.is_err() {
            return Ok(None);
        }
        match pb::Decision::try_from(resp.decision) {
            Ok(pb::Decision::Committed) => Ok(Some(true)),
            Ok(pb::Decision::Aborted) if !resp.presumed => Ok(Some(false)),
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
