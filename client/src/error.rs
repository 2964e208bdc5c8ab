//! The library's one error type.
//!
//! A gRPC status is kept whole so callers can branch on its code: ABORTED
//! means "this transaction is gone, retry it from begin", which is the one
//! error a well-behaved application expects to see under contention. Every
//! error displays as `CODE: message` so a person reading it knows both the
//! category and what to do next.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A service answered with this status.
    #[error("{}", describe_status(.0))]
    Status(#[from] Status),
    /// A process could not be reached, or a partition has nobody serving it.
    #[error("UNAVAILABLE: {0}")]
    Unavailable(String),
    /// The caller passed something unusable (an address, a statement).
    #[error("INVALID_ARGUMENT: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// The gRPC code this error corresponds to, whatever its variant.
    pub fn code(&self) -> Code {
        match self {
            ClientError::Status(s) => s.code(),
            ClientError::Unavailable(_) => Code::Unavailable,
            ClientError::InvalidArgument(_) => Code::InvalidArgument,
        }
    }

    /// True when the coordinator refused because the tid's outcome is
    /// forgotten (it is older than the oldest decision the log keeps; e.g.
    /// an abort of such a tid): it may have committed, check the data
    /// (PROTOCOL.md rule 6). The coordinator marks the refusal with the
    /// metadata `x-twopc-outcome: forgotten`.
    pub fn is_forgotten(&self) -> bool {
        matches!(self, ClientError::Status(s)
            if s.metadata().get("x-twopc-outcome").is_some_and(|v| v.as_bytes() == b"forgotten"))
    }

    /// True when the transaction was aborted (e.g. a lock conflict) and the
    /// whole transaction should be retried from `begin`.
    pub fn is_retryable_abort(&self) -> bool {
        self.code() == Code::Aborted
    }

    /// Turns an RPC failure into an error naming the peer when it could not
    /// be reached: tonic's own transport messages never say where they went.
    pub(crate) fn from_rpc(status: Status, peer: impl FnOnce() -> String) -> Self {
        // A peer that dies mid-call shows up as UNKNOWN "transport error"
        // (the HTTP/2 stream was reset), not UNAVAILABLE.
        let lost = status.code() == Code::Unknown && status.message().contains("transport error");
        // A status with a source error was made on this side from a broken
        // connection, never sent by the peer: a refused TLS handshake (no or
        // wrong client certificate) or TLS on one side only ends up as
        // CANCELLED, INTERNAL "h2 protocol error" or UNKNOWN.
        let broken = std::error::Error::source(&status).is_some()
            && matches!(status.code(), Code::Unknown | Code::Cancelled | Code::Internal);
        if broken {
            ClientError::Unavailable(format!(
                "the connection to {} failed ({}); is it running, with the same TLS settings as this client \
                 (plaintext, or TLS with --tls-ca and, for mutual TLS, --tls-cert/--tls-key)?",
                peer(),
                transport_detail(&status)
            ))
        } else if status.code() == Code::Unavailable || lost {
            ClientError::Unavailable(format!(
                "{} is unavailable ({}); is it running?",
                peer(),
                transport_detail(&status)
            ))
        } else {
            ClientError::Status(status)
        }
    }
}

fn describe_status(s: &Status) -> String {
    let name = code_name(s.code());
    let mut out = match s.message() {
        "" => name.to_string(),
        msg => format!("{name}: {msg}"),
    };
    if s.code() == Code::Aborted && !s.message().contains("retry") {
        out.push_str(": retry the transaction");
    }
    out
}

/// The canonical UPPER_SNAKE name of a gRPC code.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A status's message followed by its source chain, if it was made
/// locally from a transport error (tonic's message alone often says only
/// "transport error").
fn transport_detail(status: &Status) -> String {
    let mut out = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        let chain = error_chain(source);
        if !out.contains(&chain) {
            out.push_str(": ");
            out.push_str(&chain);
        }
    }
    out
}

/// Renders an error with its whole source chain: tonic's transport errors
/// say only "transport error" at the top and the cause underneath.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aborted_status_says_to_retry() {
        let e = ClientError::Status(Status::aborted("lock conflict on key \"a\" with tid 0190"));
        assert_eq!(e.to_string(), "ABORTED: lock conflict on key \"a\" with tid 0190: retry the transaction");
        assert!(e.is_retryable_abort());
    }

    #[test]
    fn aborted_status_that_already_says_retry_is_not_repeated() {
        let e = ClientError::Status(Status::aborted("conflict: retry the transaction"));
        assert_eq!(e.to_string(), "ABORTED: conflict: retry the transaction");
    }

    #[test]
    fn other_statuses_show_code_and_message() {
        let e = ClientError::Status(Status::failed_precondition("tid already committed"));
        assert_eq!(e.to_string(), "FAILED_PRECONDITION: tid already committed");
        assert!(!e.is_retryable_abort());
        let e = ClientError::Status(Status::not_found(""));
        assert_eq!(e.to_string(), "NOT_FOUND");
    }

    #[test]
    fn own_variants_show_their_code() {
        let e = ClientError::Unavailable("partition 2 has no registered participant; is it running?".into());
        assert_eq!(e.to_string(), "UNAVAILABLE: partition 2 has no registered participant; is it running?");
        assert_eq!(e.code(), Code::Unavailable);
        let e = ClientError::InvalidArgument("bad".into());
        assert_eq!(e.to_string(), "INVALID_ARGUMENT: bad");
    }

    #[test]
    fn unavailable_rpc_names_the_peer() {
        let e =
            ClientError::from_rpc(Status::unavailable("tcp connect error"), || "partition 1 at 127.0.0.1:7101".into());
        assert_eq!(
            e.to_string(),
            "UNAVAILABLE: partition 1 at 127.0.0.1:7101 is unavailable (tcp connect error); is it running?"
        );
        let e = ClientError::from_rpc(Status::aborted("x"), || unreachable!());
        assert!(e.is_retryable_abort());
    }
}
