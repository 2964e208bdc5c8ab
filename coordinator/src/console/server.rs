//! The console's HTTP/1.1 server (hyper, optionally over rustls): static
//! files embedded in the binary, the token and origin checks, and the
//! routing to [`super::api`]. See the module docs of [`super`] for the rules.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use super::Console;
use super::api;

/// Connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections one client (IP address) may hold at once: half the slots.
/// One client must not be able to hold every slot (before any token check)
/// and keep the console from everyone else; a browser opens at most 6 per
/// site, so half still serves several browsers behind one NAT or reverse
/// proxy. More are closed at once.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = MAX_CONNECTIONS / 2;
/// Largest request body accepted (actions are a few dozen bytes).
const MAX_BODY: usize = 16 * 1024;
/// How long a request body may take to arrive. The header timeout does not
/// cover the body: without this, a client that declares a body and never
/// sends it holds a connection slot for ever, and [`MAX_CONNECTIONS`] such
/// clients starve the console.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The header every action must carry (see the module docs: CSRF).
pub const ACTION_HEADER: &str = "x-twopc-console";

type Body = Full<Bytes>;

/// The page and its files, embedded (no build step: plain files in
/// `coordinator/console/`).
const STATIC: &[(&str, &str, &[u8])] = &[
    ("/", "text/html; charset=utf-8", include_bytes!("../../console/index.html")),
    ("/index.html", "text/html; charset=utf-8", include_bytes!("../../console/index.html")),
    ("/app.js", "text/javascript; charset=utf-8", include_bytes!("../../console/app.js")),
    ("/app.css", "text/css; charset=utf-8", include_bytes!("../../console/app.css")),
    (
        "/vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/vendor/uPlot.iife.min.js"),
    ),
    ("/vendor/uPlot.min.css", "text/css; charset=utf-8", include_bytes!("../../console/vendor/uPlot.min.css")),
    ("/vendor/LICENSE", "text/plain; charset=utf-8", include_bytes!("../../console/vendor/LICENSE")),
];

/// HTTPS settings from the coordinator's TLS flags (same certificate and
/// key), or `None` when the process serves plaintext. No client
/// certificate is requested: browsers authenticate with the admin token.
pub fn tls_config(args: &twopc_proto::tls::ServerTlsArgs) -> Result<Option<TlsAcceptor>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&args.tls.tls_cert, &args.tls.tls_key) else { return Ok(None) };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("web console: TLS certificate file {}: {e}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("web console: TLS key file {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("web console: TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("web console: {} and its key: {e}", cert.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Accepts connections until the process ends.
pub async fn serve(console: Arc<Console>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let clients = Arc::new(Clients::default());
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (stream, client) = match listener.accept().await {
            Ok((stream, peer)) => match clients.enter(peer.ip()) {
                Some(client) => (stream, client),
                None => {
                    tracing::debug!(%peer, "web console: closing a connection over the per-client limit");
                    continue;
                }
            },
            Err(e) => {
                // E.g. out of file descriptors: try again shortly rather than spin.
                tracing::warn!("web console: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (console, tls) = (console.clone(), tls.clone());
        tokio::spawn(async move {
            let _slots = (permit, client);
            let service = hyper::service::service_fn(move |req| {
                let console = console.clone();
                async move { Ok::<_, Infallible>(handle(&console, req).await) }
            });
            let http = {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
                b
            };
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(acceptor) => {
                    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

/// Open connections per client address ([`MAX_CONNECTIONS_PER_CLIENT`]).
#[derive(Default)]
struct Clients {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection of a client, counted until dropped.
struct ClientSlot {
    clients: Arc<Clients>,
    ip: std::net::IpAddr,
}

impl Clients {
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= MAX_CONNECTIONS_PER_CLIENT {
            return None;
        }
        *n += 1;
        Some(ClientSlot { clients: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

async fn handle(console: &Console, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if !path.starts_with("/api/") {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return error(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "static files are GET only");
        }
        return match STATIC.iter().find(|(p, _, _)| *p == path) {
            Some((_, mime, bytes)) => with_headers(Response::builder().header(header::CONTENT_TYPE, *mime), bytes),
            None => error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("no page {path}")),
        };
    }
    let what = format!("{} {path}", req.method());
    if !console.admin_token.is_set() && !host_is_literal(req.headers().get(header::HOST)) {
        return error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "without --admin-token the console answers only requests addressed to an IP address or localhost \
             (Host header); open it as http://127.0.0.1:PORT/",
        );
    }
    let auth = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if let Err(status) = console.admin_token.check_header(auth, &what) {
        return from_status(&status);
    }
    let method = req.method().clone();
    if method == Method::POST && req.headers().get(ACTION_HEADER).is_none_or(|v| v.as_bytes() != b"1") {
        return error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            &format!("{what}: actions need the header `{ACTION_HEADER}: 1` (the page sends it; see the console docs)"),
        );
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let body = if method == Method::POST {
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    &format!("{what}: cannot read the body ({e}); at most {MAX_BODY} bytes"),
                );
            }
            Err(_) => {
                // Answered and closed (the unread rest of the body makes
                // hyper drop the connection), freeing the slot.
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "DEADLINE_EXCEEDED",
                    &format!("{what}: the body did not arrive within {BODY_TIMEOUT:?}"),
                );
            }
        }
    } else {
        Bytes::new()
    };
    let answer = match (&method, path.as_str()) {
        (&Method::GET, "/api/status") => Ok(api::status(console)),
        (&Method::GET, "/api/history") => Ok(api::history(console, &query)),
        (&Method::GET, "/api/transactions") => api::transactions(console),
        (&Method::GET, "/api/in-doubt") => api::in_doubt(console).await,
        (&Method::GET, "/api/topology") => api::topology(console).await,
        (&Method::GET, p) if p.starts_with("/api/decision/") => api::decision(console, &p["/api/decision/".len()..]),
        (&Method::POST, "/api/abort") => api::abort(console, &body),
        (&Method::POST, "/api/failpoint") => api::failpoint(console, &body).await,
        (_, "/api/status" | "/api/history" | "/api/transactions" | "/api/in-doubt" | "/api/topology") => {
            return error(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", &format!("{what}: use GET"));
        }
        (_, "/api/abort" | "/api/failpoint") => {
            return error(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", &format!("{what}: use POST"));
        }
        _ => return error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("no API {what}")),
    };
    match answer {
        Ok(value) => json(StatusCode::OK, &value),
        Err(status) => from_status(&status),
    }
}

/// Whether `Host` names the console by an IP literal or `localhost` (not a
/// domain that could be rebound to a loopback address).
fn host_is_literal(host: Option<&http::HeaderValue>) -> bool {
    let Some(host) = host.and_then(|h| h.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(rest) => return rest.split(']').next().is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

fn with_headers(builder: http::response::Builder, bytes: &'static [u8]) -> Response<Body> {
    builder
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        )
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Full::new(Bytes::from_static(bytes)))
        .expect("static response")
}

pub(super) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("json response")
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message, "code": code }))
}

/// A gRPC status as the HTTP answer an HTTP client expects (the same
/// message; `code` names the gRPC code).
fn from_status(status: &tonic::Status) -> Response<Body> {
    let code = status.code();
    let http = http_status(code);
    let mut body = serde_json::json!({ "error": status.message(), "code": format!("{code:?}").to_uppercase_snake() });
    if let Some(leader) = status.metadata().get(api::LEADER_METADATA).and_then(|v| v.to_str().ok()) {
        body["leader"] = leader.into();
    }
    json(http, &body)
}

/// The HTTP status for a gRPC code (the usual gateway mapping).
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled | Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

trait UpperSnake {
    fn to_uppercase_snake(&self) -> String;
}

impl UpperSnake for String {
    /// `FailedPrecondition` → `FAILED_PRECONDITION` (gRPC's own spelling).
    fn to_uppercase_snake(&self) -> String {
        let mut out = String::with_capacity(self.len() + 4);
        for (i, c) in self.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_by_ip_or_localhost_only() {
        let h = |s: &str| host_is_literal(Some(&http::HeaderValue::from_str(s).unwrap()));
        assert!(h("127.0.0.1:7080") && h("localhost:1") && h("LOCALHOST") && h("[::1]:80") && h("10.1.2.3"));
        assert!(!h("evil.example:7080") && !h("127.0.0.1.nip.io:80") && !h("[nope]:1"));
        assert!(!host_is_literal(None));
    }

    #[test]
    fn grpc_codes_map_to_http() {
        assert_eq!(http_status(tonic::Code::FailedPrecondition), StatusCode::CONFLICT);
        assert_eq!(http_status(tonic::Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(tonic::Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(tonic::Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(format!("{:?}", tonic::Code::FailedPrecondition).to_uppercase_snake(), "FAILED_PRECONDITION");
    }

    #[test]
    fn every_static_file_is_embedded() {
        for (path, _, bytes) in STATIC {
            assert!(!bytes.is_empty(), "{path}");
        }
    }
}
