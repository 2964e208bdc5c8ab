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
    /// be reached (tonic's own transport messages never say where they
    /// went), with a hint that fits the likely cause ([`Broken`]) and
    /// nothing else: a refused connection is not a TLS problem, and a
    /// connection cut mid-call is not one either.
    pub(crate) fn from_rpc(status: Status, peer: impl FnOnce() -> String) -> Self {
        // tonic's own OUT_OF_RANGE for a message over this client's limit:
        // RESOURCE_EXHAUSTED naming the limit (`twopc_proto::limits`, rule 4).
        let status = twopc_proto::limits::size_status(status);
        // A status with a source error was made on this side from a broken
        // connection, never sent by the peer; a peer that dies mid-call
        // shows up as UNKNOWN "transport error" (the HTTP/2 stream was
        // reset); TLS on one side only ends up as CANCELLED, INTERNAL "h2
        // protocol error" or UNKNOWN.
        let made_here = std::error::Error::source(&status).is_some();
        let lost = status.code() == Code::Unknown && status.message().contains("transport error");
        let transport = status.code() == Code::Unavailable
            || lost
            || (made_here && matches!(status.code(), Code::Unknown | Code::Cancelled | Code::Internal));
        if !transport {
            return ClientError::Status(status);
        }
        let detail = transport_detail(&status);
        let peer = peer();
        ClientError::Unavailable(match Broken::classify(&detail) {
            Broken::Refused => {
                format!(
                    "{peer} refused the connection ({detail}): nothing listens there; is it running, at that address?"
                )
            }
            Broken::Tls => format!(
                "the TLS handshake with {peer} failed ({detail}); does it use the same TLS settings as this client \
                 (plaintext, or TLS with --tls-ca and, for mutual TLS, --tls-cert/--tls-key)?"
            ),
            Broken::Closed => format!(
                "the connection to {peer} {CLOSED_HINT} ({detail}): it may have stopped or crashed; is it running?"
            ),
            Broken::Other => format!("{peer} is unavailable ({detail}); is it running?"),
        })
    }
}

/// The hint of an error from a client's first call to `addr` that says
/// the connection closed. The transport cannot always tell a crash from a
/// server that closes the connection on purpose (it may report only a
/// broken pipe): a TLS server closes a plaintext client's connection, and
/// a mutual-TLS server that of a client whose certificate it refuses
/// (after the handshake, in TLS 1.3). A short probe asks the server
/// itself: a plaintext HTTP/2 preface sent to a live TLS server is
/// answered with a TLS alert record. If it is, the server did not crash,
/// and the error becomes the TLS hint (`client_tls`: this client used TLS,
/// so its certificate was refused); otherwise it stays as it was.
/// `peer` names the process (e.g. "the coordinator at ADDR").
pub(crate) async fn tls_mismatch_probed(e: ClientError, peer: &str, addr: &str, client_tls: bool) -> ClientError {
    let ClientError::Unavailable(why) = &e else { return e };
    if !why.contains(CLOSED_HINT) || speaks_tls(addr).await != Some(true) {
        return e;
    }
    ClientError::Unavailable(if client_tls {
        format!(
            "{peer} closed the TLS connection after the handshake: it likely refused this \
             client's certificate (mutual TLS needs --tls-cert/--tls-key signed by the cluster's CA, --tls-ca)"
        )
    } else {
        format!(
            "{peer} speaks TLS and this client does not (it closed the plaintext connection); \
             use the same TLS settings as the cluster: --tls-ca and, for mutual TLS, --tls-cert/--tls-key"
        )
    })
}

/// Whether the server at `addr` answers a plaintext HTTP/2 preface with a
/// TLS record (alert, content type 21): `Some(true)`; with anything else
/// (an HTTP/2 frame): `Some(false)`; no answer within a second: `None`.
async fn speaks_tls(addr: &str) -> Option<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.ok()?;
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.ok()?;
        Some(first[0] == 0x15)
    };
    tokio::time::timeout(std::time::Duration::from_secs(1), probe).await.ok().flatten()
}

/// Words of the hint for [`Broken::Closed`], recognised by
/// [`tls_mismatch_probed`].
const CLOSED_HINT: &str = "was closed during the call";

/// The likely cause of a broken connection, read from the transport's
/// error chain (tonic, hyper, h2, rustls and the OS say it in words only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broken {
    /// Nothing listens there (connection refused).
    Refused,
    /// TLS on one side only, or a refused certificate: the handshake
    /// failed, or a TLS record was read as HTTP/2 (a plaintext client at
    /// a TLS server sees the server's alert as a frame "with invalid size").
    Tls,
    /// The connection was reset or closed mid-call (the peer stopped,
    /// crashed or restarted).
    Closed,
    /// Anything else (no answer, name resolution, ...).
    Other,
}

impl Broken {
    pub(crate) fn classify(detail: &str) -> Broken {
        let d = detail.to_ascii_lowercase();
        let any = |words: &[&str]| words.iter().any(|w| d.contains(w));
        if any(&["connection refused", "os error 111"]) {
            Broken::Refused
        } else if any(&[
            "tls",
            "certificate",
            "handshake",
            "invalidcontenttype",
            "corrupt message",
            "alert",
            "frame with invalid size",
            "invalid http version",
            "unknownissuer",
            "peer is incompatible",
        ]) {
            Broken::Tls
        } else if any(&[
            "connection reset",
            "os error 104",
            "broken pipe",
            "os error 32",
            "connection closed",
            "connection aborted",
            "unexpected eof",
            "unexpected end of file",
            "stream closed",
            "stream no longer needed",
            "error reading a body from connection",
            "connection error",
            "not connected",
            "operation was canceled",
            "transport error",
        ]) {
            Broken::Closed
        } else {
            Broken::Other
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
    fn hints_fit_the_cause() {
        let cases = [
            ("transport error: tcp connect error: Connection refused (os error 111)", Broken::Refused),
            ("transport error: connection error: Connection reset by peer (os error 104)", Broken::Closed),
            ("transport error: error reading a body from connection: connection closed", Broken::Closed),
            (
                "h2 protocol error: error reading a body from connection: stream closed because of a broken pipe",
                Broken::Closed,
            ),
            ("transport error", Broken::Closed),
            ("transport error: received corrupt message of type InvalidContentType", Broken::Tls),
            ("h2 protocol error: frame with invalid size", Broken::Tls),
            ("transport error: received fatal alert: CertificateRequired", Broken::Tls),
            ("transport error: invalid peer certificate: UnknownIssuer", Broken::Tls),
            ("did not answer within 2000ms", Broken::Other),
        ];
        for (detail, want) in cases {
            assert_eq!(Broken::classify(detail), want, "{detail}");
        }
        let refused = ClientError::from_rpc(Status::unavailable("tcp connect error: Connection refused"), || {
            "the coordinator at 127.0.0.1:1".into()
        });
        let text = refused.to_string();
        assert!(text.contains("refused the connection") && !text.contains("TLS"), "{text}");
        let reset = ClientError::from_rpc(Status::unknown("transport error"), || "the coordinator at h:1".into());
        let text = reset.to_string();
        assert!(text.contains("closed during the call") && !text.contains("TLS"), "{text}");
    }

    #[test]
    fn unavailable_rpc_names_the_peer() {
        let e =
            ClientError::from_rpc(Status::unavailable("tcp connect error"), || "partition 1 at 127.0.0.1:7101".into());
        assert_eq!(
            e.to_string(),
            "UNAVAILABLE: partition 1 at 127.0.0.1:7101 is unavailable (tcp connect error); is it running?"
        );
        let e =
            ClientError::from_rpc(Status::unavailable("tcp connect error: Connection refused (os error 111)"), || {
                "partition 1 at 127.0.0.1:7101".into()
            });
        assert_eq!(
            e.to_string(),
            "UNAVAILABLE: partition 1 at 127.0.0.1:7101 refused the connection (tcp connect error: Connection \
             refused (os error 111)): nothing listens there; is it running, at that address?"
        );
        let e = ClientError::from_rpc(Status::aborted("x"), || unreachable!());
        assert!(e.is_retryable_abort());
    }
}
