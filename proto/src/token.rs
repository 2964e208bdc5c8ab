//! The optional shared secrets that guard RPCs: the admin token and the
//! cluster's peer token.
//!
//! - **Admin token** (`--admin-token`, sent as `authorization: Bearer <token>`):
//!   admin RPCs (failpoints, listings of live and in-doubt transactions,
//!   heuristic resolution) can crash a process, reveal the whole workload or
//!   override a decision, so a server started with it answers them only to
//!   callers that send it. Every admin handler starts with
//!   [`AdminToken::check`]; a new admin RPC must do the same (the proto file
//!   marks admin RPCs with "Admin:").
//! - **Peer token** (`--peer-token`, sent as `x-twopc-peer-token: <token>`):
//!   the protocol RPCs the cluster's processes call on each other carry the
//!   coordinator's authority, and atomicity rests on nobody else calling
//!   them. A client that could call a participant's `Abort` on a prepared
//!   tid, or `CommitOnePhaseBatch` on one participant of a multi-partition
//!   tid, would make that participant disagree with the others; one that
//!   could `Register` at the coordinator would redirect a partition to
//!   itself. Mutual TLS does not prevent that (the same CA signs client
//!   certificates), so these RPCs take a secret only the processes hold:
//!   participants check it on Prepare, Commit, Abort, their batch forms and
//!   CommitOnePhaseBatch; the coordinator on Register, Enlist and
//!   EnlistBatch. The calling side sends it on every call through the
//!   [`PeerToken`] interceptor on its client ([`PeerChannel`]).
//!
//! The two are distinct types with distinct headers, and a process refuses
//! to start with both set to the same value ([`ensure_distinct`]), so an
//! operator's admin token never lets its holder act as a peer. Without a
//! configured token a server lets every call through (the default, and how
//! clusters without one keep working). Tokens travel in the clear unless
//! the link uses TLS; they are compared in constant time and never printed.

use std::marker::PhantomData;
use std::sync::Arc;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// What a token is for: its flag, environment variable, header and the
/// messages a refused caller gets.
pub trait Role: 'static {
    /// The flag that sets it, e.g. `--admin-token`.
    const FLAG: &'static str;
    /// The metadata key carrying it.
    const KEY: &'static str;
    /// Put before the token in the header value (`Bearer ` or nothing).
    const SCHEME: &'static str;
    /// The message for a caller that sent no token to `rpc`.
    fn missing(rpc: &str) -> String;
    /// The message for a caller that sent a wrong token to `rpc`.
    fn wrong(rpc: &str) -> String;
}

/// The admin token's role.
pub enum Admin {}

impl Role for Admin {
    const FLAG: &'static str = "--admin-token";
    const KEY: &'static str = "authorization";
    const SCHEME: &'static str = "Bearer ";
    fn missing(rpc: &str) -> String {
        format!(
            "{rpc} is an admin RPC and this server requires the admin token: \
             pass --admin-token (or TWOPC_ADMIN_TOKEN), sent as `authorization: Bearer <token>`"
        )
    }
    fn wrong(rpc: &str) -> String {
        format!("{rpc}: wrong admin token; use the server's --admin-token (TWOPC_ADMIN_TOKEN)")
    }
}

/// The cluster peer token's role.
pub enum Peer {}

impl Role for Peer {
    const FLAG: &'static str = "--peer-token";
    const KEY: &'static str = "x-twopc-peer-token";
    const SCHEME: &'static str = "";
    fn missing(rpc: &str) -> String {
        format!(
            "{rpc} is for the cluster's own processes (coordinator and participants), not for clients; \
             this server requires the peer token: they must share --peer-token (TWOPC_PEER_TOKEN), \
             sent as `x-twopc-peer-token: <token>`"
        )
    }
    fn wrong(rpc: &str) -> String {
        format!(
            "{rpc}: wrong peer token; this RPC is for the cluster's own processes, and they must share \
             --peer-token (TWOPC_PEER_TOKEN): start every coordinator and participant with the same one"
        )
    }
}

/// A configured token (or none: the RPCs it guards are open to all, the
/// default). Holds the header value ready to send or compare; never printed.
pub struct Token<R: Role> {
    secret: Option<Arc<Secret>>,
    role: PhantomData<fn() -> R>,
}

struct Secret {
    raw: String,
    header: AsciiMetadataValue,
}

/// Guards admin RPCs.
pub type AdminToken = Token<Admin>;
/// Guards the protocol RPCs the cluster's processes call on each other.
pub type PeerToken = Token<Peer>;
/// A channel that sends the peer token (if any) on every call.
pub type PeerChannel = InterceptedService<Channel, PeerToken>;

impl<R: Role> Clone for Token<R> {
    fn clone(&self) -> Self {
        Self { secret: self.secret.clone(), role: PhantomData }
    }
}

impl<R: Role> Default for Token<R> {
    fn default() -> Self {
        Self { secret: None, role: PhantomData }
    }
}

impl<R: Role> std::fmt::Debug for Token<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({} {})", R::FLAG, if self.secret.is_some() { "set" } else { "none" })
    }
}

impl<R: Role> Token<R> {
    /// Validates `token` (from the flag or its environment variable):
    /// printable ASCII without spaces, since it travels as a header value.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        let Some(token) = token else { return Ok(Self::default()) };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("{} must be non-empty printable ASCII without spaces", R::FLAG));
        }
        let header = MetadataValue::try_from(format!("{}{token}", R::SCHEME))
            .map_err(|e| format!("{} cannot be sent as gRPC metadata: {e}", R::FLAG))?;
        Ok(Self { secret: Some(Arc::new(Secret { raw: token.to_string(), header })), role: PhantomData })
    }

    pub fn is_set(&self) -> bool {
        self.secret.is_some()
    }

    /// Server side: lets `req` through if no token is configured or if it
    /// carries the right one; otherwise UNAUTHENTICATED saying what to do.
    pub fn check<T>(&self, req: &Request<T>, rpc: &str) -> Result<(), Status> {
        let Some(want) = &self.secret else { return Ok(()) };
        let Some(got) = req.metadata().get(R::KEY) else {
            return Err(Status::unauthenticated(R::missing(rpc)));
        };
        if !constant_time_eq(got.as_bytes(), want.header.as_bytes()) {
            return Err(Status::unauthenticated(R::wrong(rpc)));
        }
        Ok(())
    }

    /// [`Token::check`] for a plain HTTP request (the coordinator's web
    /// console): `header` is the request's value of [`Role::KEY`]
    /// (`Authorization` for the admin token), compared in constant time.
    pub fn check_header(&self, header: Option<&[u8]>, what: &str) -> Result<(), Status> {
        let Some(want) = &self.secret else { return Ok(()) };
        let Some(got) = header else {
            return Err(Status::unauthenticated(R::missing(what)));
        };
        if !constant_time_eq(got, want.header.as_bytes()) {
            return Err(Status::unauthenticated(R::wrong(what)));
        }
        Ok(())
    }

    /// Client side: adds the token (if any) to an outgoing request.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        self.attach(&mut req);
        req
    }

    fn attach<T>(&self, req: &mut Request<T>) {
        if let Some(secret) = &self.secret {
            req.metadata_mut().insert(R::KEY, secret.header.clone());
        }
    }
}

/// Client side, on every call of a client built with
/// `XClient::with_interceptor(channel, token)`.
impl<R: Role> Interceptor for Token<R> {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        self.attach(&mut req);
        Ok(req)
    }
}

/// Refuses the same secret as admin and peer token: whoever holds the admin
/// token (an operator, a script) would then also be able to act as the
/// coordinator or a participant, which the peer token exists to prevent.
pub fn ensure_distinct(admin: &AdminToken, peer: &PeerToken) -> Result<(), String> {
    match (&admin.secret, &peer.secret) {
        (Some(a), Some(p)) if constant_time_eq(a.raw.as_bytes(), p.raw.as_bytes()) => {
            Err("--peer-token must differ from --admin-token: the peer token lets its holder act as the \
             coordinator or a participant, and operators holding the admin token must not be able to"
                .into())
        }
        _ => Ok(()),
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
        assert!(t.request(()).metadata().get(Admin::KEY).is_none());
        let p = PeerToken::new(None).unwrap();
        assert!(p.check(&Request::new(()), "X").is_ok());
        assert!(p.clone().call(Request::new(())).unwrap().metadata().is_empty());
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
    fn peer_token_is_sent_by_the_interceptor_and_distinct_from_the_admin_token() {
        let p = PeerToken::new(Some("p33r")).unwrap();
        let e = p.check(&Request::new(()), "Abort").unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("cluster's own processes") && e.message().contains("--peer-token"), "{e:?}");
        let sent = p.clone().call(Request::new(())).unwrap();
        assert_eq!(sent.metadata().get("x-twopc-peer-token").unwrap(), "p33r");
        assert!(p.check(&sent, "Abort").is_ok());
        let e = p.check(&PeerToken::new(Some("p33R")).unwrap().request(()), "Abort").unwrap_err();
        assert!(e.message().contains("wrong peer token"), "{e:?}");
        // The admin token with the same text, sent as the admin header, is no peer token.
        assert!(p.check(&AdminToken::new(Some("p33r")).unwrap().request(()), "Abort").is_err());
        assert!(!format!("{p:?}").contains("p33r"));
        assert!(ensure_distinct(&AdminToken::new(Some("p33r")).unwrap(), &p).is_err());
        assert!(ensure_distinct(&AdminToken::new(Some("admin")).unwrap(), &p).is_ok());
        assert!(ensure_distinct(&AdminToken::default(), &p).is_ok());
    }

    #[test]
    fn a_plain_header_is_checked_like_metadata() {
        let t = AdminToken::new(Some("s3cret")).unwrap();
        assert_eq!(t.check_header(None, "GET /api/status").unwrap_err().code(), Code::Unauthenticated);
        assert!(t.check_header(Some(b"Bearer s3cret"), "X").is_ok());
        assert!(t.check_header(Some(b"Bearer s3cres"), "X").unwrap_err().message().contains("wrong admin token"));
        assert!(t.check_header(Some(b"s3cret"), "X").is_err());
        assert!(AdminToken::default().check_header(None, "X").is_ok());
    }

    #[test]
    fn bad_tokens_are_refused() {
        assert!(AdminToken::new(Some("")).is_err());
        assert!(AdminToken::new(Some("with space")).is_err());
        assert!(AdminToken::new(Some("é")).is_err());
        assert!(PeerToken::new(Some("with space")).unwrap_err().contains("--peer-token"));
    }

    #[test]
    fn comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
