//! The optional shared token that guards admin RPCs.
//!
//! Admin RPCs (failpoints, listings of live and in-doubt transactions) can
//! crash a process or reveal the whole workload, so a server started with
//! `--admin-token` answers them only to callers that send the metadata
//! `authorization: Bearer <token>`; everything else is UNAUTHENTICATED.
//! Transaction traffic and the coordinator's own calls to participants are
//! not admin calls and never need it. The token travels in the clear unless
//! the link uses TLS.
//!
//! Every admin handler starts with [`AdminToken::check`]; a new admin RPC
//! must do the same (the proto file marks admin RPCs with "Admin:").

use std::sync::Arc;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::{Request, Status};

/// The metadata key carrying the token.
pub const METADATA_KEY: &str = "authorization";

/// A configured token (or none: admin RPCs open to all, the default).
/// Holds `Bearer <token>` ready to send or compare; never printed.
#[derive(Clone, Default)]
pub struct AdminToken(Option<Arc<AsciiMetadataValue>>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "AdminToken(set)" } else { "AdminToken(none)" })
    }
}

impl AdminToken {
    /// Validates `token` (from `--admin-token` or `TWOPC_ADMIN_TOKEN`):
    /// printable ASCII without spaces, since it travels as a header value.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        let Some(token) = token else { return Ok(Self(None)) };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("--admin-token must be non-empty printable ASCII without spaces".into());
        }
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|e| format!("--admin-token cannot be sent as gRPC metadata: {e}"))?;
        Ok(Self(Some(Arc::new(value))))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Server side: lets `req` through if no token is configured or if it
    /// carries the right one; otherwise UNAUTHENTICATED saying what to do.
    pub fn check<T>(&self, req: &Request<T>, rpc: &str) -> Result<(), Status> {
        let Some(want) = &self.0 else { return Ok(()) };
        let Some(got) = req.metadata().get(METADATA_KEY) else {
            return Err(Status::unauthenticated(format!(
                "{rpc} is an admin RPC and this server requires the admin token: \
                 pass --admin-token (or TWOPC_ADMIN_TOKEN), sent as `authorization: Bearer <token>`"
            )));
        };
        if !constant_time_eq(got.as_bytes(), want.as_bytes()) {
            return Err(Status::unauthenticated(format!(
                "{rpc}: wrong admin token; use the server's --admin-token (TWOPC_ADMIN_TOKEN)"
            )));
        }
        Ok(())
    }

    /// Client side: adds the token (if any) to an outgoing request.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        if let Some(value) = &self.0 {
            req.metadata_mut().insert(METADATA_KEY, AsciiMetadataValue::clone(value));
        }
        req
    }
}

/// Compares without an early exit, so the time taken does not tell an
/// attacker how many leading bytes of a guess were right. (The length is
/// not secret enough to hide.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn no_token_lets_everything_through() {
        let t = AdminToken::new(None).unwrap();
        assert!(t.check(&Request::new(()), "X").is_ok());
        assert!(t.request(()).metadata().get(METADATA_KEY).is_none());
    }

    #[test]
    fn token_is_required_and_compared() {
        let t = AdminToken::new(Some("s3cret")).unwrap();
        let e = t.check(&Request::new(()), "ListTransactions").unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("--admin-token"), "{}", e.message());
        assert!(t.check(&t.request(()), "X").is_ok());
        let wrong = AdminToken::new(Some("s3cres")).unwrap();
        assert_eq!(t.check(&wrong.request(()), "X").unwrap_err().code(), Code::Unauthenticated);
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn bad_tokens_are_refused() {
        assert!(AdminToken::new(Some("")).is_err());
        assert!(AdminToken::new(Some("with space")).is_err());
        assert!(AdminToken::new(Some("é")).is_err());
    }

    #[test]
    fn comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
