//! A participant serves only its own partition's keys (PROTOCOL.md rule 12).
//!
//! A key is owned by partition `xxh3_64(key) % partitions`
//! (`twopc_proto::placement`, where the function is documented for
//! clients in other languages). A request for a key of another partition
//! (a client that routed with a stale or wrong partition count, or with
//! its own bug) would otherwise be stored here, where no correctly routed
//! read ever looks: committed, yet "not found". So every keyed operation
//! (Get, Put, Delete, Read, and each operation of an OperateBatch) checks
//! the key's owner before anything is locked, enlisted or written, and a
//! key owned elsewhere is answered FAILED_PRECONDITION naming its owner.
//!
//! The partition number is this process's `--partition`; the partition
//! count is the coordinator's, learned from its answer to Register (the
//! same number GetTopology gives clients), and kept in the store's `meta`
//! so that a restarted participant checks keys (and serves committed
//! reads) before it can register again, e.g. while the coordinator is
//! down. Until a store's first registration succeeds the count is unknown,
//! and keyed operations are answered UNAVAILABLE (retryable): they could
//! not have been routed here by a topology that lists this participant
//! anyway, and transactional ones need the coordinator to enlist in any
//! case.

use std::sync::atomic::{AtomicU32, Ordering};

use tonic::Status;
use twopc_core::PartitionId;
use twopc_proto::placement::partition_for;

/// Why a key is not served here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotOwned {
    #[error(
        "key belongs to partition {owner}, not to partition {here} served here (partition = xxh3_64(key) % \
         {partitions}; see the README, Key placement): send it to partition {owner}'s participant (GetTopology)"
    )]
    Elsewhere { owner: PartitionId, here: PartitionId, partitions: u32 },
    #[error(
        "partition {here} has not registered with the coordinator yet, so it does not know the partition count \
         to check key ownership with; retry shortly"
    )]
    CountUnknown { here: PartitionId },
}

impl From<NotOwned> for Status {
    fn from(e: NotOwned) -> Status {
        match e {
            NotOwned::Elsewhere { .. } => Status::failed_precondition(e.to_string()),
            NotOwned::CountUnknown { .. } => Status::unavailable(e.to_string()),
        }
    }
}

/// This participant's partition and the cluster's partition count.
#[derive(Debug)]
pub struct Ownership {
    here: PartitionId,
    /// 0 until learned from the coordinator.
    partitions: AtomicU32,
}

impl Ownership {
    pub fn new(here: PartitionId) -> Self {
        Self { here, partitions: AtomicU32::new(0) }
    }

    /// Takes the partition count from the coordinator's answer to Register.
    /// A count that does not cover our own partition (the coordinator
    /// refuses such a registration, so only a foreign or broken one could
    /// send it) is ignored and logged.
    pub fn learn(&self, partitions: u32) {
        if partitions <= self.here {
            tracing::error!(
                partitions,
                partition = self.here,
                "the coordinator's partition count does not include this partition; ignored"
            );
            return;
        }
        let before = self.partitions.swap(partitions, Ordering::Relaxed);
        if before != 0 && before != partitions {
            tracing::error!(
                before,
                now = partitions,
                "the cluster's partition count changed: keys now route differently"
            );
        }
    }

    /// The cluster's partition count, once learned.
    pub fn partitions(&self) -> Option<u32> {
        Some(self.partitions.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }

    /// Whether `key` is this partition's.
    pub fn check(&self, key: &[u8]) -> Result<(), NotOwned> {
        let partitions = self.partitions().ok_or(NotOwned::CountUnknown { here: self.here })?;
        let owner = partition_for(key, partitions);
        if owner != self.here {
            metrics::counter!("twopc_participant_misrouted_keys_total").increment(1);
            return Err(NotOwned::Elsewhere { owner, here: self.here, partitions });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_own_keys_pass_once_the_count_is_known() {
        let o = Ownership::new(1);
        assert_eq!(o.check(b"b"), Err(NotOwned::CountUnknown { here: 1 }));
        assert_eq!(Status::from(NotOwned::CountUnknown { here: 1 }).code(), tonic::Code::Unavailable);
        o.learn(1); // does not cover partition 1: ignored
        assert_eq!(o.partitions(), None);
        o.learn(3);
        // "a" is partition 1's and "b" partition 2's (pinned in client::routing's tests).
        assert_eq!(o.check(b"a"), Ok(()));
        let e = o.check(b"b").unwrap_err();
        assert_eq!(e, NotOwned::Elsewhere { owner: 2, here: 1, partitions: 3 });
        let status = Status::from(e);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().starts_with("key belongs to partition 2, not to partition 1"), "{}", status.message());
    }
}
