//! Store identity: one owner per partition store (PROTOCOL.md rule 13).
//!
//! Every participant store gets a random id (a UUID) when it is created,
//! kept in the store and sent with every registration
//! (`RegisterRequest.store_id`). The coordinator records the id with the
//! partition's address and refuses a registration of that partition from
//! another store: a participant started on an empty or wrong data
//! directory would otherwise take the partition over silently, serving
//! none of its committed data and orphaning its prepared tids. The refusal
//! is FAILED_PRECONDITION with the metadata [`REFUSAL_METADATA`]:
//! [`OTHER_STORE`], so the participant can tell it from any other refusal.

use tonic::Status;

/// The metadata key of a registration refused for its store.
pub const REFUSAL_METADATA: &str = "x-twopc-refusal";
/// Its value: the partition is recorded with another store.
pub const OTHER_STORE: &str = "other-store";

/// The refusal of a registration from another store than the recorded one.
pub fn other_store_status(message: String) -> Status {
    let mut status = Status::failed_precondition(message);
    status.metadata_mut().insert(REFUSAL_METADATA, tonic::metadata::MetadataValue::from_static(OTHER_STORE));
    status
}

/// Whether `status` is [`other_store_status`]'s refusal.
pub fn is_other_store(status: &Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && status.metadata().get(REFUSAL_METADATA).is_some_and(|v| v.as_bytes() == OTHER_STORE.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_told_apart_from_other_failed_preconditions() {
        assert!(is_other_store(&other_store_status("x".into())));
        assert!(!is_other_store(&Status::failed_precondition("x")));
    }
}
