//! Why a transaction aborted: the real cause, as the process that aborted it
//! saw it (PROTOCOL.md rule 4: "which participant, why ... never a generic
//! one").
//!
//! An [`AbortReason`] is a [`AbortKind`] (a small fixed set, for programs and
//! for the `reason` label of `twopc_transactions_aborted_total`) and the
//! words (which partition, which conflicting tid, which error). It travels
//! from where the abort happened to everyone who asks:
//! - a participant that aborts a tid on its own (wait-die conflict,
//!   deadline, a failed write, a restart that lost the tid, shutdown, a
//!   replaced coordinator) remembers the reason with the tid, votes NO with
//!   it, answers a one-phase commit with it, and tells the coordinator with
//!   it (the abort notice: an Abort carrying the reason and its partition);
//! - the coordinator keeps the first reason a tid aborted for, and answers
//!   it to Commit and GetDecision and logs it;
//! - a client that aborts because one of its operations failed says so
//!   ([`AbortKind::OperationFailed`], with the operation's error), an
//!   operator's `twopc abort` is [`AbortKind::Operator`], a client's own
//!   abort [`AbortKind::Client`].
//!
//! The wire form (`twopc.v1.AbortReason`) is mapped in one place,
//! `twopc_proto::reason`.

use std::fmt;

/// The kind of an abort: a small fixed set (each is a metric label value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AbortKind {
    /// A lock conflict at a participant: wait-die aborted the younger tid.
    Conflict,
    /// The tid's deadline passed (at the coordinator or at a participant).
    Deadline,
    /// A participant could not make the tid's writes durable (its prepared
    /// state, e.g. a full disk or an I/O error).
    WriteFailed,
    /// A participant restarted and lost the tid's unprepared state.
    ParticipantRestarted,
    /// A participant was shutting down.
    Shutdown,
    /// The client asked to abort.
    Client,
    /// The client aborted because one of its operations failed (the words
    /// hold the operation's error).
    OperationFailed,
    /// An operator aborted it (`twopc abort`).
    Operator,
    /// The coordinator that began it restarted or was replaced (a new
    /// leader): the new one does not know it (presumed abort).
    CoordinatorRestarted,
    /// A participant did not vote: unreachable, timed out, or its prepare
    /// failed in transit.
    ParticipantUnreachable,
    /// The coordinator has no record of the tid: presumed aborted.
    Unknown,
    /// Anything else (e.g. a peer of an older version that sends no kind).
    Other,
    /// A disk is out of space: the coordinator's decision log could not
    /// take the tid's record, or a participant's store its prepared state
    /// or one-phase commit (the words say which). SQLite rolled the write
    /// back, so nothing of the tid was committed (`twopc_proto::disk_full`).
    DiskFull,
    /// The client's commit declared other operations than the participants
    /// hold (PROTOCOL.md rule 2, the declared design): a partition holds
    /// operations it did not declare, or a participant applied a different
    /// number than declared (e.g. it restarted between operations).
    DeclarationMismatch,
}

impl AbortKind {
    /// Every kind, in a fixed order (documentation, tests).
    pub const ALL: [AbortKind; 14] = [
        AbortKind::Conflict,
        AbortKind::Deadline,
        AbortKind::WriteFailed,
        AbortKind::ParticipantRestarted,
        AbortKind::Shutdown,
        AbortKind::Client,
        AbortKind::OperationFailed,
        AbortKind::Operator,
        AbortKind::CoordinatorRestarted,
        AbortKind::ParticipantUnreachable,
        AbortKind::Unknown,
        AbortKind::Other,
        AbortKind::DiskFull,
        AbortKind::DeclarationMismatch,
    ];

    /// The label value (`reason="..."`) and the name printed by the CLI.
    pub fn label(self) -> &'static str {
        match self {
            AbortKind::Conflict => "conflict",
            AbortKind::Deadline => "deadline",
            AbortKind::WriteFailed => "write_failed",
            AbortKind::ParticipantRestarted => "participant_restarted",
            AbortKind::Shutdown => "shutdown",
            AbortKind::Client => "client",
            AbortKind::OperationFailed => "operation_failed",
            AbortKind::Operator => "operator",
            AbortKind::CoordinatorRestarted => "coordinator_restarted",
            AbortKind::ParticipantUnreachable => "participant_unreachable",
            AbortKind::Unknown => "unknown",
            AbortKind::Other => "other",
            AbortKind::DiskFull => "disk_full",
            AbortKind::DeclarationMismatch => "declaration_mismatch",
        }
    }
}

impl fmt::Display for AbortKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why a tid aborted: its kind and, in words, what happened where.
///
/// It reads as its words (`Display`, and `Deref` to `str`), so code that
/// only shows or searches the reason treats it as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AbortReason {
    pub kind: AbortKind,
    pub detail: String,
}

impl AbortReason {
    pub fn new(kind: AbortKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into() }
    }

    /// The same reason, its words prefixed with `context` (e.g. which
    /// partition voted NO), its kind kept.
    pub fn within(&self, context: impl fmt::Display) -> Self {
        Self { kind: self.kind, detail: format!("{context}: {}", self.detail) }
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::ops::Deref for AbortReason {
    type Target = str;
    fn deref(&self) -> &str {
        &self.detail
    }
}

/// How many bytes of a key a reason shows.
pub const KEY_SHOWN: usize = 64;

/// A key as the words of a reason or error show it: quoted, and cut to its
/// first [`KEY_SHOWN`] bytes with its length when longer. A reason travels
/// in votes, abort notices and answers (and is logged); keys may be up to
/// `--max-key-bytes` (1 KiB by default, more when raised), so repeating
/// them whole could make an answer about a conflict larger than the
/// operation that caused it.
pub fn key_in_words(key: &[u8]) -> String {
    if key.len() <= KEY_SHOWN {
        return format!("{:?}", String::from_utf8_lossy(key));
    }
    format!("{:?}... ({} bytes)", String::from_utf8_lossy(&key[..KEY_SHOWN]), key.len())
}

/// Words without a known cause: [`AbortKind::Other`].
impl From<&str> for AbortReason {
    fn from(detail: &str) -> Self {
        Self::new(AbortKind::Other, detail)
    }
}

/// Words without a known cause: [`AbortKind::Other`].
impl From<String> for AbortReason {
    fn from(detail: String) -> Self {
        Self::new(AbortKind::Other, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_snake_case() {
        let labels: std::collections::BTreeSet<&str> = AbortKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), AbortKind::ALL.len());
        assert!(labels.iter().all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }

    #[test]
    fn long_keys_are_cut_in_words() {
        assert_eq!(key_in_words(b"k"), "\"k\"");
        let long = vec![b'x'; 100_000];
        let words = key_in_words(&long);
        assert!(words.len() < KEY_SHOWN + 32 && words.ends_with("... (100000 bytes)"), "{words}");
    }

    #[test]
    fn within_keeps_the_kind() {
        let r = AbortReason::new(AbortKind::Conflict, "lock conflict").within("partition 0 voted NO");
        assert_eq!(r.kind, AbortKind::Conflict);
        assert_eq!(r.to_string(), "partition 0 voted NO: lock conflict");
        assert!(r.contains("partition 0"));
    }
}
