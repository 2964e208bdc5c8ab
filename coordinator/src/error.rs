//! The coordinator's error enum, mapped once to gRPC statuses.

use tonic::Status;
use twopc_core::Tid;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error(
        "unknown tid {0}: it was never begun here, or it is from before the coordinator's restart (presumed aborted)"
    )]
    UnknownTid(Tid),
    /// Rule 6: unknown and no newer than the log's mark of forgotten
    /// decisions; it may have committed.
    #[error(
        "the outcome of tid {0} is forgotten: it is older than the oldest decision the decision log keeps \
         (--keep-finished), so it may have committed; check the data (it cannot be aborted or committed now)"
    )]
    Forgotten(Tid),
    #[error("tid {tid} is {state}: it no longer accepts operations")]
    NotActive { tid: Tid, state: &'static str },
    #[error("tid {tid} aborted: {reason}")]
    Aborted { tid: Tid, reason: String },
    #[error("tid {0} already committed (its COMMIT decision is recorded or being recorded): it cannot be aborted")]
    AlreadyCommitted(Tid),
    #[error(
        "tid {tid} is being committed in one phase by partition {partition}, whose answer is the decision: \
         it cannot be aborted now; ask for its outcome (twopc status {tid})"
    )]
    Delegated { tid: Tid, partition: u32 },
    #[error("too many open transactions ({0}): commit or abort some, or raise --max-open-txns")]
    TooManyOpen(usize),
    #[error("partition {0} has no registered participant: start it (it registers itself)")]
    NotRegistered(u32),
    #[error("{0}")]
    Unavailable(String),
    /// A commit refused because the decision log is out of space; the tid
    /// was aborted (its reason says so too).
    #[error("tid {tid} aborted: {reason}")]
    DiskFull { tid: Tid, reason: String },
    /// A commit without a declaration of a tid whose client declares its
    /// operations (`twopc_core::coordinator`, declared commits).
    #[error(
        "tid {0} was begun by a client that declares its operations at commit, and this commit declares none: \
         operations acknowledged before their participant enlisted could be left out; commit it from the process \
         that began it, or abort it (twopc abort {0})"
    )]
    MustDeclare(Tid),
}

/// The metadata key of a refusal that is an outcome (`forgotten`), see
/// `AbortRequest` in the proto.
pub const OUTCOME_METADATA: &str = "x-twopc-outcome";

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Status {
        let msg = e.to_string();
        match e {
            CoordinatorError::InvalidArgument(_) => Status::invalid_argument(msg),
            CoordinatorError::UnknownTid(_) => Status::not_found(msg),
            CoordinatorError::Forgotten(_) => {
                let mut status = Status::failed_precondition(msg);
                // Machine-readable, for clients that branch on it (the CLI's exit code).
                status
                    .metadata_mut()
                    .insert(OUTCOME_METADATA, tonic::metadata::MetadataValue::from_static("forgotten"));
                status
            }
            CoordinatorError::NotActive { .. } => Status::failed_precondition(msg),
            CoordinatorError::Aborted { .. } => Status::aborted(msg),
            CoordinatorError::AlreadyCommitted(_) => Status::failed_precondition(msg),
            CoordinatorError::Delegated { .. } => Status::failed_precondition(msg),
            CoordinatorError::TooManyOpen(_) => Status::resource_exhausted(msg),
            CoordinatorError::NotRegistered(_) => Status::failed_precondition(msg),
            CoordinatorError::Unavailable(_) => Status::unavailable(msg),
            CoordinatorError::DiskFull { .. } => Status::resource_exhausted(msg),
            CoordinatorError::MustDeclare(_) => Status::failed_precondition(msg),
        }
    }
}

impl CoordinatorError {
    pub fn from_refusal(tid: Tid, r: twopc_core::coordinator::Refusal) -> Self {
        use twopc_core::coordinator::Refusal;
        match r {
            Refusal::UnknownTid => CoordinatorError::UnknownTid(tid),
            Refusal::Forgotten => CoordinatorError::Forgotten(tid),
            Refusal::NotActive(state) => CoordinatorError::NotActive { tid, state },
            Refusal::Aborted(reason) => CoordinatorError::Aborted { tid, reason: reason.detail },
            Refusal::AlreadyCommitted => CoordinatorError::AlreadyCommitted(tid),
            Refusal::TooManyOpen(n) => CoordinatorError::TooManyOpen(n),
            Refusal::Delegated(partition) => CoordinatorError::Delegated { tid, partition },
            Refusal::MustDeclare => CoordinatorError::MustDeclare(tid),
        }
    }
}
