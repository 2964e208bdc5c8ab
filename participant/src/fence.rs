//! Cluster identity fencing: what makes a lost decision log detectable.
//!
//! The coordinator's decision log carries a random cluster id, made with
//! the log. The participant records the id durably in its store the first
//! time it hears one (at registration, enlistment or in a decision; a store
//! from before cluster ids adopts the first one it sees the same way). From
//! then on every answer from the coordinator is checked against it:
//!
//! - Same id (or an empty one, from a coordinator that predates ids): as
//!   before, the answer is taken.
//! - Another id while tids prepared here are not over: the coordinator's log
//!   is not the one those tids voted under (it was lost and the coordinator
//!   started on an empty directory, a backup was restored under a new id,
//!   or it is another cluster's). Its ABORTED answers are **not** taken: a
//!   presumed abort from a log that never saw the tid's COMMIT would break
//!   atomicity. Its COMMITTED answers are: a COMMIT record binds whatever
//!   log holds it, since tids are unique (UUIDv7), e.g. one a restored
//!   backup holds. The participant is *fenced*: the other prepared tids stay
//!   in doubt; it logs one error line; `ListInDoubt` reports the mismatch;
//!   it takes no new transactions (enlisting is refused with
//!   FAILED_PRECONDITION, also when the enlistment's own answer is the first
//!   to carry the other id), because their prepared state would be bound to
//!   the other id; it keeps registering every few seconds, so its address is
//!   known and the fence is re-examined. Plain reads of committed data and
//!   the admin calls keep working.
//! - The fence lifts when the ids match again (the original log was
//!   restored), or when no prepared tid is left here (every one resolved by
//!   a COMMIT or by hand, see `crate::heuristics`): then nothing here
//!   depends on the old log, and the participant adopts the new id durably
//!   and joins.
//!
//! Phase-2 Commit/Abort calls carry no id: only a coordinator holding a
//! tid's COMMIT record sends a Commit, which binds as above; an Abort comes
//! only from the coordinator that began the tid (a log without the tid
//! sends none).

use std::sync::Mutex;

use crate::node::Node;

/// The cluster id the coordinator answered with, while it differs from ours
/// and tids prepared here are bound to ours.
#[derive(Debug, Default)]
pub struct Fence {
    theirs: Mutex<Option<String>>,
}

impl Fence {
    /// The coordinator's differing id, while fenced.
    pub fn mismatched(&self) -> Option<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.theirs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The coordinator's log is not the one this participant's prepared tids
/// voted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMismatch {
    pub ours: String,
    pub theirs: String,
}

impl Node {
    /// Checks the cluster id in an answer of the coordinator (see module docs).
    pub(crate) async fn check_cluster(&self, theirs: &str) -> Result<(), ClusterMismatch> {
        if theirs.is_empty() {
            return Ok(());
        }
        let ours = self.store.cluster_id();
        let previous_id = ours.clone();
        if ours.as_deref() == Some(theirs) {
            self.unfence("the coordinator's decision log is ours again");
            return Ok(());
        }
        if let Some(ours) = ours
            && self.core().has_prepared()
        {
            let previous = self.fence.lock().replace(theirs.to_string());
            if previous.as_deref() != Some(theirs) {
                tracing::error!(
                    cluster_id = %ours,
                    coordinator_cluster_id = %theirs,
                    "the coordinator's decision log is not the one the tids prepared here voted under (it was \
                     lost or replaced): its answers are not taken, those tids stay in doubt and no new \
                     transactions are accepted. Restart the coordinator on its original log, or resolve each \
                     in-doubt tid by hand (twopc in-doubt / twopc resolve-heuristic --override-lost-log; see \
                     the README, Manual resolution)"
                );
            }
            return Err(ClusterMismatch { ours, theirs: theirs.to_string() });
        }
        // First id ever, or nothing prepared depends on the old one.
        if let Err(e) = self.store.set_cluster_id(theirs).await {
            tracing::warn!(error = %e, "cannot record the cluster id; will try again");
            return Err(ClusterMismatch { ours: self.store.cluster_id().unwrap_or_default(), theirs: theirs.into() });
        }
        match previous_id {
            None => tracing::info!(cluster_id = %theirs, "cluster id recorded"),
            // Legitimate after a lost decision log was started afresh; a
            // mistake if this data directory belongs to another cluster
            // (e.g. two clusters sharing one etcd): say so loudly.
            Some(previous) => tracing::warn!(
                previous_cluster_id = %previous,
                cluster_id = %theirs,
                "this partition's store was last used with another decision log: it now follows this one. \
                 Expected only when the coordinator's log was lost and started afresh; if this data \
                 directory belongs to another cluster, stop this participant now: its data is being served \
                 as this cluster's partition"
            ),
        }
        self.unfence("no prepared tid depends on the old decision log any more");
        Ok(())
    }

    /// After a tid was resolved by hand: if that lifted the reason for the
    /// fence, adopt the coordinator's id now rather than at the next
    /// registration.
    pub(crate) async fn recheck_fence(&self) {
        if let Some(theirs) = self.fence.mismatched() {
            let _ = self.check_cluster(&theirs).await;
        }
    }

    fn unfence(&self, why: &str) {
        if self.fence.lock().take().is_some() {
            tracing::warn!("fence lifted: {why}; taking transactions again");
        }
    }
}
