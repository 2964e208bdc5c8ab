//! The participant's error enum, mapped once to gRPC statuses.

use tonic::Status;
use twopc_core::Tid;
use twopc_core::participant::{HeuristicError, OpError, ResolveError};

#[derive(Debug, thiserror::Error)]
pub enum ParticipantError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("tid {tid} aborted here: {reason}; retry the transaction")]
    Aborted { tid: Tid, reason: String },
    #[error("unknown tid {0}: begin a transaction first and use the tid it returns")]
    UnknownTid(Tid),
    #[error("tid {tid}: {why}")]
    FailedPrecondition { tid: Tid, why: String },
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("coordinator unreachable: {0}")]
    CoordinatorUnavailable(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error(
        "tid {0} is not prepared at this participant (unknown, already resolved, or not voted yet): only an \
         in-doubt tid can be resolved by hand (twopc in-doubt lists them)"
    )]
    NotInDoubt(Tid),
    #[error(
        "this participant is fenced: tids prepared here voted under cluster {ours}, but the coordinator's \
         decision log is cluster {theirs} (lost or replaced); no new transactions until the original log is \
         back or those tids are resolved by hand (twopc in-doubt, twopc resolve-heuristic)"
    )]
    Fenced { ours: String, theirs: String },
    /// The operation must wait for a lock and the caller asked not to.
    #[error("the operation must wait for a lock")]
    WouldWait,
}

impl From<ParticipantError> for Status {
    fn from(e: ParticipantError) -> Status {
        let msg = e.to_string();
        match e {
            ParticipantError::InvalidArgument(_) => Status::invalid_argument(msg),
            ParticipantError::Aborted { .. } => Status::aborted(msg),
            ParticipantError::UnknownTid(_) | ParticipantError::NotInDoubt(_) => Status::not_found(msg),
            ParticipantError::Fenced { .. } => Status::failed_precondition(msg),
            ParticipantError::FailedPrecondition { .. } => Status::failed_precondition(msg),
            ParticipantError::ResourceExhausted(_) => Status::resource_exhausted(msg),
            ParticipantError::CoordinatorUnavailable(_) | ParticipantError::Unavailable(_) => Status::unavailable(msg),
            ParticipantError::Internal(_) | ParticipantError::WouldWait => Status::internal(msg),
        }
    }
}

impl ParticipantError {
    pub fn from_op(tid: Tid, e: OpError, key: &[u8]) -> Self {
        let key = twopc_core::reason::key_in_words(key);
        match e {
            OpError::UnknownTid => Self::FailedPrecondition { tid, why: "not enlisted at this participant".into() },
            OpError::NotActive(state) => Self::FailedPrecondition {
                tid,
                why: format!("is {state}: no more operations are accepted after commit was asked"),
            },
            OpError::DeadlinePassed => Self::Aborted { tid, reason: "its deadline passed".into() },
            OpError::AlreadyAborted(why) => Self::Aborted { tid, reason: format!("it was aborted earlier: {why}") },
            OpError::CoordinatorReplaced => Self::Aborted {
                tid,
                reason: "the coordinator that began it was restarted or replaced by another leader".into(),
            },
            OpError::MustWait { holder } => Self::Internal(format!("lock wait on tid {holder} escaped the wait loop")),
            OpError::LockConflict { holder } => {
                Self::Aborted { tid, reason: format!("lock conflict on key {key} with older tid {holder} (wait-die)") }
            }
            OpError::TooManyOps(n) => {
                Self::ResourceExhausted(format!("tid {tid} reached the limit of {n} operations at this participant"))
            }
            OpError::TooManyTids(n) => Self::ResourceExhausted(format!(
                "this participant already holds {n} open transactions; retry later or raise --max-open-tids"
            )),
        }
    }

    pub fn from_resolve(tid: Tid, e: ResolveError) -> Self {
        let why = match e {
            ResolveError::NotPrepared => "commit asked for a tid that has not prepared here",
            ResolveError::Committing => "abort asked for a tid whose commit is being applied",
            // Retryable: the repeat is acknowledged once the outcome is durable.
            ResolveError::Heuristic => {
                return Self::Unavailable(format!(
                    "tid {tid}: an operator's heuristic outcome is being applied to it; ask again"
                ));
            }
        };
        Self::FailedPrecondition { tid, why: why.into() }
    }

    pub fn from_heuristic(tid: Tid, e: HeuristicError) -> Self {
        match e {
            HeuristicError::NotPrepared(_) => Self::NotInDoubt(tid),
            HeuristicError::Busy(what) => {
                Self::FailedPrecondition { tid, why: format!("{what} is being applied to it") }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heuristic_being_applied_is_retryable() {
        let tid = Tid::now_v7();
        let s = Status::from(ParticipantError::from_resolve(tid, ResolveError::Heuristic));
        assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
        let s = Status::from(ParticipantError::from_resolve(tid, ResolveError::Committing));
        assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    }
}
