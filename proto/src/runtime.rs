//! Process plumbing shared by the coordinator and participant binaries.
//!
//! A server binds its socket first, then prints exactly one line
//! `listening on <addr>` on stdout, after recovery and just before it
//! serves: tools and tests wait for that line (and learn the port when they
//! asked for port 0). Logs go to stderr, so stdout stays machine-readable.

use std::io::Write;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

/// Installs the `tracing` subscriber: levels from `RUST_LOG` (default
/// `info`), human-readable lines on stderr, or JSON lines with
/// `TWOPC_LOG_FORMAT=json`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if std::env::var("TWOPC_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Binds `addr` (port 0 picks a free port). Warns when it is not loopback
/// and `tls` is off (anyone who can reach it could then read and forge
/// traffic, admin calls included) or `peer_token` is off (anyone who can
/// reach it could call the protocol RPCs meant for the cluster's own
/// processes and break atomicity, TLS or not; see [`crate::token`]).
pub async fn bind(addr: &str, tls: bool, peer_token: bool) -> Result<(TcpListener, SocketAddr), String> {
    let parsed: SocketAddr = addr.parse().map_err(|e| {
        format!("listen address {addr:?} is not host:port with a numeric IP ({e}), e.g. 127.0.0.1:7000")
    })?;
    let listener = TcpListener::bind(parsed).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| format!("cannot read the bound address: {e}"))?;
    for warning in exposure_warnings(local, tls, peer_token) {
        tracing::warn!(%local, "{warning}");
    }
    Ok((listener, local))
}

/// The start-up warnings for serving on `local` with or without TLS and a peer token.
fn exposure_warnings(local: SocketAddr, tls: bool, peer_token: bool) -> Vec<&'static str> {
    let mut warnings = vec![];
    if local.ip().is_loopback() {
        return warnings;
    }
    if !tls {
        warnings.push("listening on a non-loopback address without TLS (see --tls-cert)");
    }
    if !peer_token {
        warnings.push(
            "listening on a non-loopback address without a peer token: any client that reaches this \
             process can call the RPCs meant for the coordinator and participants and break atomicity \
             (set the same --peer-token on every process)",
        );
    }
    warnings
}

/// Prints the readiness line and turns the listener into a tonic incoming
/// stream. Accepted sockets get TCP_NODELAY: every message is a small
/// request on the commit path, and Nagle would hold it back.
pub fn announce(
    listener: TcpListener,
    local: SocketAddr,
) -> impl tokio_stream::Stream<Item = std::io::Result<TcpStream>> {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {local}");
    let _ = out.flush();
    TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

/// The standard gRPC health service (reporting `service` as SERVING) and
/// server reflection of `service` (and of health and reflection; nothing
/// else, see [`crate::reflection`]), so stock tools (grpcurl,
/// grpc-health-probe) and clients in other languages need no .proto file.
pub async fn standard_services(
    service: &str,
) -> Result<
    (
        tonic_health::server::HealthReporter,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    ),
    String,
> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status(service, tonic_health::ServingStatus::Serving).await;
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    // Lists exactly what this process serves (`crate::reflection`).
    let reflection = crate::reflection::service(service)?;
    Ok((reporter, health, reflection))
}

/// Resolves on SIGTERM or Ctrl-C: the server then stops accepting new
/// calls and lets the ones in flight finish (a commit in flight still gets
/// its answer; a decision already forced is re-driven after the restart).
/// A watchdog exits the process `grace` after the signal even if some call
/// never finishes, so shutdown is bounded.
pub async fn shutdown_signal(grace: std::time::Duration) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops gracefully");
            let _ = tokio::signal::ctrl_c().await;
            return arm_watchdog(grace);
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    arm_watchdog(grace);
}

fn arm_watchdog(grace: std::time::Duration) {
    tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down: no new calls; finishing those in flight");
    std::thread::spawn(move || {
        std::thread::sleep(grace);
        tracing::warn!("calls still in flight after the grace period; exiting anyway");
        std::process::exit(0);
    });
}

/// Builds the process's tokio runtime: `threads == 1` gives a
/// current-thread runtime (no cross-thread wake-ups: on a small machine
/// shared with other processes that is usually fastest), more gives a
/// multi-thread runtime with that many workers.
pub fn build_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
}

/// Serves Prometheus metrics (text format, any path) on `addr`, if given.
/// Each process records its own series through the `metrics` facade; the
/// README lists them.
pub fn serve_metrics(addr: Option<&str>) -> Result<(), String> {
    let Some(addr) = addr else { return Ok(()) };
    let parsed: SocketAddr =
        addr.parse().map_err(|e| format!("metrics address {addr:?} is not host:port with a numeric IP ({e})"))?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(parsed)
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

/// How long a graceful shutdown waits for calls in flight.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `routes` (the process's own gRPC service) together with the
/// health and reflection services on `listener`, over TLS if `tls` is
/// given, announces readiness, and returns after a graceful shutdown
/// (SIGTERM or Ctrl-C).
pub async fn serve(
    service_name: &str,
    routes: tonic::service::Routes,
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<(), String> {
    serve_reporting(service_name, routes, listener, local, tls, None).await
}

/// [`serve`], with the health of `service_name` following `serving`
/// (SERVING while it holds `true`, NOT_SERVING otherwise) instead of
/// SERVING throughout: a standby coordinator is up but does not serve.
pub async fn serve_reporting(
    service_name: &str,
    routes: tonic::service::Routes,
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<tonic::transport::ServerTlsConfig>,
    serving: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<(), String> {
    let (reporter, health, reflection) = standard_services(service_name).await?;
    if let Some(mut serving) = serving {
        let name = service_name.to_string();
        tokio::spawn(async move {
            loop {
                let status = if *serving.borrow_and_update() {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                reporter.set_service_status(&name, status).await;
                if serving.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    // Every answer passes the size layer: a request over the message limit
    // is answered RESOURCE_EXHAUSTED naming the limit (`limits`, rule 4).
    let mut server = tonic::transport::Server::builder().layer(crate::limits::size_status_layer());
    if let Some(tls) = tls {
        server = server.tls_config(tls).map_err(|e| format!("cannot serve TLS: {e}"))?;
    }
    server
        .add_routes(routes)
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(announce(listener, local), shutdown_signal(SHUTDOWN_GRACE))
        .await
        .map_err(|e| format!("gRPC server failed: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_warnings_only_off_loopback() {
        let lo: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let public: SocketAddr = "10.0.0.1:7000".parse().unwrap();
        assert!(exposure_warnings(lo, false, false).is_empty());
        assert!(exposure_warnings(public, true, true).is_empty());
        let w = exposure_warnings(public, true, false);
        assert!(w.len() == 1 && w[0].contains("peer token"), "{w:?}");
        assert_eq!(exposure_warnings(public, false, false).len(), 2);
        assert!(exposure_warnings(public, false, true)[0].contains("TLS"));
    }
}
