//! The two-phase-commit protocol as plain state machines, with no I/O.
//!
//! [`coordinator::Coordinator`] holds the coordinator's per-transaction state
//! and [`participant::Participant`] a participant's per-tid state and locks.
//! Each takes events (an operation, a vote, a timeout, an acknowledgement, a
//! record recovered from disk) and returns [`coordinator::Action`]s or
//! answers, which the process shells (tonic services, SQLite logs, timers)
//! execute in order. Nothing here touches a disk, a socket or a clock: time
//! comes in as an argument. That is what makes the protocol cheap to test and
//! to model-check.
//!
//! The rules implemented are those of `shared/PROTOCOL.md`; each module says
//! which ones it keeps.

pub mod coordinator;
pub mod locks;
pub mod model;
pub mod participant;
pub mod reason;

pub use uuid::Uuid as Tid;

/// A partition number, fixed when the cluster is created; it is also the
/// participant's identity in the protocol.
pub type PartitionId = u32;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// When `tid` was allocated (its UUIDv7 timestamp), in Unix milliseconds;
/// `None` for a UUID without one. Tids are time-ordered, so this is a tid's
/// age: wait-die, presumed-abort reasons and the forgotten mark use it.
pub fn tid_millis(tid: Tid) -> Option<Millis> {
    let (secs, nanos) = tid.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}
