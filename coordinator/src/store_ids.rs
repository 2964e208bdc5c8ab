//! One store per partition (PROTOCOL.md rule 13, `twopc_proto::store_id`):
//! the coordinator's side.
//!
//! The store id of each partition is recorded durably with its address in
//! the decision log's partition map (both backends), read back at start
//! (also by each new leader), and kept here in memory. Registration rules:
//! - No store id recorded for the partition (its first registration, or a
//!   log from before store ids): the registering store's id is recorded.
//! - The same id: accepted, whatever the address (a restart on its own data,
//!   possibly elsewhere).
//! - Another id: **refused** (FAILED_PRECONDITION, metadata
//!   `x-twopc-refusal: other-store`), naming both ids and what to do. The
//!   partition's committed data and prepared tids are in the recorded store;
//!   a participant on an empty or wrong data directory must not take the
//!   partition over (reads would answer "not found" for committed keys, the
//!   COMMIT records of its prepared tids could never be applied). The
//!   running participant keeps the partition.
//! - Another id, and the request names the recorded id as the one it
//!   replaces (`--replace-store RECORDED_ID`: the operator says that store
//!   is lost for good): the new id is recorded and the partition moves to
//!   it. Naming the recorded id, not a bare yes, makes the replacement
//!   happen once: a flag left in a service file replaces nothing later,
//!   since the id it names is no longer the recorded one.
//! - No store id sent (a participant from before store ids): accepted and
//!   nothing recorded; it cannot be checked.
//!
//! Registrations are checked and recorded one at a time (the lock is held
//! across the log write): two stores registering at once for a partition
//! with none recorded cannot both be accepted.

use std::collections::HashMap;

use tokio::sync::{Mutex, MutexGuard};
use twopc_core::PartitionId;

/// The recorded store id of each partition.
#[derive(Debug, Default)]
pub struct StoreIds {
    recorded: Mutex<HashMap<PartitionId, String>>,
}

/// What a registration's store id means for its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The recorded store (or nothing to check): nothing new to record.
    Same,
    /// The partition's first store id: to be recorded.
    First,
    /// The operator replaces `old`, the recorded store, with this one.
    Replaces { old: String },
}

/// A registration refused for its store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreRefusal {
    #[error(
        "partition {partition} belongs to store {recorded} (recorded by the coordinator), but this participant's \
         store is {theirs}: refused, so that the partition's committed data and prepared transactions are not \
         silently replaced by another store (a new or wrong data directory?). The participant serving store \
         {recorded} keeps the partition. Start partition {partition} on its own data directory; or, only if \
         that store is lost for good, replace it deliberately with `twopc participant --partition {partition} \
         --replace-store {recorded} ...` (its prepared transactions are lost; see the README, Ownership)"
    )]
    OtherStore { partition: PartitionId, recorded: String, theirs: String },
    #[error(
        "--replace-store {named} does not name partition {partition}'s recorded store, which is {recorded} \
         (this participant's store is {theirs}): refused. Check which store you mean to replace (the \
         coordinator's refusal names the recorded one)"
    )]
    WrongReplacement { partition: PartitionId, named: String, recorded: String, theirs: String },
}

impl From<StoreRefusal> for tonic::Status {
    fn from(e: StoreRefusal) -> Self {
        twopc_proto::store_id::other_store_status(e.to_string())
    }
}

impl StoreIds {
    pub fn new(recovered: &[(PartitionId, String)]) -> Self {
        Self { recorded: Mutex::new(recovered.iter().cloned().collect()) }
    }

    /// Takes the registration lock: held across checking and recording.
    pub async fn lock(&self) -> Registering<'_> {
        Registering(self.recorded.lock().await)
    }
}

/// The recorded ids, locked for one registration.
pub struct Registering<'a>(MutexGuard<'a, HashMap<PartitionId, String>>);

impl Registering<'_> {
    /// Checks `theirs` (with the id `replace` names, empty if none) against
    /// the recorded store of `partition` (see module docs).
    pub fn admit(&self, partition: PartitionId, theirs: &str, replace: &str) -> Result<Admission, StoreRefusal> {
        if theirs.is_empty() {
            return Ok(Admission::Same);
        }
        match self.0.get(&partition) {
            None => Ok(Admission::First),
            Some(recorded) if recorded == theirs => Ok(Admission::Same),
            Some(recorded) if replace == recorded => Ok(Admission::Replaces { old: recorded.clone() }),
            Some(recorded) if replace.is_empty() => {
                Err(StoreRefusal::OtherStore { partition, recorded: recorded.clone(), theirs: theirs.into() })
            }
            Some(recorded) => Err(StoreRefusal::WrongReplacement {
                partition,
                named: replace.into(),
                recorded: recorded.clone(),
                theirs: theirs.into(),
            }),
        }
    }

    /// After the log recorded it: `store_id` is `partition`'s store.
    pub fn recorded(&mut self, partition: PartitionId, store_id: &str) {
        if !store_id.is_empty() {
            self.0.insert(partition, store_id.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_same_other_and_replacement() {
        let ids = StoreIds::new(&[(1, "a".into())]);
        let mut r = ids.lock().await;
        assert_eq!(r.admit(0, "x", ""), Ok(Admission::First));
        assert_eq!(r.admit(1, "a", ""), Ok(Admission::Same));
        assert_eq!(r.admit(1, "", ""), Ok(Admission::Same), "a participant from before store ids");
        let refused = r.admit(1, "b", "").unwrap_err();
        let msg = refused.to_string();
        assert!(msg.contains("store a") && msg.contains("store is b") && msg.contains("--replace-store a"), "{msg}");
        assert!(matches!(r.admit(1, "b", "c"), Err(StoreRefusal::WrongReplacement { .. })));
        assert_eq!(r.admit(1, "b", "a"), Ok(Admission::Replaces { old: "a".into() }));
        r.recorded(1, "b");
        // The flag left set replaces nothing more: it names the old store.
        assert!(matches!(r.admit(1, "c", "a"), Err(StoreRefusal::WrongReplacement { .. })));
        assert_eq!(r.admit(1, "b", "a"), Ok(Admission::Same));
        let status = tonic::Status::from(refused);
        assert!(twopc_proto::store_id::is_other_store(&status));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    }
}
