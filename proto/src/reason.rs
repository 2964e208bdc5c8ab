//! Abort reasons on the wire: the one mapping between
//! [`twopc_core::reason::AbortKind`] and `twopc.v1.AbortKind`. Every process
//! and the client library go through it, so a kind added in the core is
//! added here (the match is exhaustive) and in the proto, nowhere else.

pub use twopc_core::reason::{AbortKind, AbortReason};

use crate::pb;

/// The wire value of `kind`.
pub fn to_wire(kind: AbortKind) -> pb::AbortKind {
    match kind {
        AbortKind::Conflict => pb::AbortKind::Conflict,
        AbortKind::Deadline => pb::AbortKind::Deadline,
        AbortKind::WriteFailed => pb::AbortKind::WriteFailed,
        AbortKind::ParticipantRestarted => pb::AbortKind::ParticipantRestarted,
        AbortKind::Shutdown => pb::AbortKind::Shutdown,
        AbortKind::Client => pb::AbortKind::Client,
        AbortKind::OperationFailed => pb::AbortKind::OperationFailed,
        AbortKind::Operator => pb::AbortKind::Operator,
        AbortKind::CoordinatorRestarted => pb::AbortKind::CoordinatorRestarted,
        AbortKind::ParticipantUnreachable => pb::AbortKind::ParticipantUnreachable,
        AbortKind::Unknown => pb::AbortKind::Unknown,
        AbortKind::Other => pb::AbortKind::Other,
        AbortKind::DiskFull => pb::AbortKind::DiskFull,
        AbortKind::DeclarationMismatch => pb::AbortKind::DeclarationMismatch,
    }
}

/// The kind of a wire value; unset or unknown to this version reads as
/// [`AbortKind::Other`].
pub fn from_wire(value: i32) -> AbortKind {
    from_wire_or(value, AbortKind::Other)
}

/// As [`from_wire`], but an unset value reads as `unset` (e.g. an
/// AbortRequest without a kind is the client's own abort).
pub fn from_wire_or(value: i32, unset: AbortKind) -> AbortKind {
    match pb::AbortKind::try_from(value) {
        Ok(pb::AbortKind::Unspecified) => unset,
        Ok(pb::AbortKind::Conflict) => AbortKind::Conflict,
        Ok(pb::AbortKind::Deadline) => AbortKind::Deadline,
        Ok(pb::AbortKind::WriteFailed) => AbortKind::WriteFailed,
        Ok(pb::AbortKind::ParticipantRestarted) => AbortKind::ParticipantRestarted,
        Ok(pb::AbortKind::Shutdown) => AbortKind::Shutdown,
        Ok(pb::AbortKind::Client) => AbortKind::Client,
        Ok(pb::AbortKind::OperationFailed) => AbortKind::OperationFailed,
        Ok(pb::AbortKind::Operator) => AbortKind::Operator,
        Ok(pb::AbortKind::CoordinatorRestarted) => AbortKind::CoordinatorRestarted,
        Ok(pb::AbortKind::ParticipantUnreachable) => AbortKind::ParticipantUnreachable,
        Ok(pb::AbortKind::Unknown) => AbortKind::Unknown,
        Ok(pb::AbortKind::DiskFull) => AbortKind::DiskFull,
        Ok(pb::AbortKind::DeclarationMismatch) => AbortKind::DeclarationMismatch,
        Ok(pb::AbortKind::Other) | Err(_) => AbortKind::Other,
    }
}

/// The `(abort_kind, reason)` fields of a message for `reason`.
pub fn fields(reason: &AbortReason) -> (i32, String) {
    (to_wire(reason.kind) as i32, reason.detail.clone())
}

/// A reason from its `(abort_kind, reason)` fields.
pub fn from_fields(kind: i32, words: String) -> AbortReason {
    AbortReason::new(from_wire(kind), words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_unset_is_other() {
        for kind in AbortKind::ALL {
            assert_eq!(from_wire(to_wire(kind) as i32), kind);
            // The wire names are the labels, upper-cased.
            assert_eq!(to_wire(kind).as_str_name(), format!("ABORT_KIND_{}", kind.label().to_uppercase()));
        }
        assert_eq!(from_wire(0), AbortKind::Other);
        assert_eq!(from_wire(999), AbortKind::Other);
        assert_eq!(from_wire_or(0, AbortKind::Client), AbortKind::Client);
    }
}
