//! Optional TLS and mutual TLS (rustls) on every gRPC link, from PEM files.
//!
//! One set of flags ([`TlsArgs`]) serves every process:
//! - `--tls-cert`/`--tls-key`: this process's certificate chain and key. A
//!   coordinator or participant serves TLS with it and also presents it as
//!   its client certificate when it calls another process, so in a mutual
//!   TLS cluster it needs both the serverAuth and clientAuth usages (or no
//!   extended key usage at all). A client presents it to prove who it is.
//! - `--tls-ca`: the CA bundle that peers' certificates must chain to. A
//!   client verifies servers with it; a server requires client
//!   certificates signed by it (mutual TLS) unless
//!   `--tls-client-cert-optional` is given.
//! - `--tls-domain`: the name expected in servers' certificates, by default
//!   the host part of the address dialled (an IP address must then be an IP
//!   SAN of the certificate). Handy when every process shares one
//!   certificate name but is reached by IP.
//!
//! Files are read and parsed once at start-up, so a missing, unreadable or
//! malformed file stops the process with an error that names it, instead of
//! failing handshakes later. A cluster is either all TLS or all plaintext:
//! a coordinator or participant with TLS also uses TLS on the links it opens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// TLS flags shared by every process (clients included).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate (chain) of this process: a server serves TLS with it, and it is
    /// presented as the client certificate on the connections this process opens.
    #[arg(long, env = "TWOPC_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TWOPC_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle that peers' certificates must chain to: turns TLS on for a client;
    /// on a server it requires client certificates signed by it (mutual TLS).
    #[arg(long, env = "TWOPC_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Name to verify in servers' certificates (default: the host of the address dialled).
    #[arg(long, env = "TWOPC_TLS_DOMAIN", value_name = "NAME")]
    pub tls_domain: Option<String>,
}

/// The TLS flags of a coordinator or participant: [`TlsArgs`] plus the
/// server-only switch.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    #[command(flatten)]
    pub tls: TlsArgs,
    /// With --tls-ca: also accept clients that present no certificate (TLS without
    /// client authentication); a certificate that is presented must still be valid.
    #[arg(
        long,
        env = "TWOPC_TLS_CLIENT_CERT_OPTIONAL",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub tls_client_cert_optional: bool,
}

/// A handshake that takes longer than this is abandoned, so a silent peer
/// cannot hold a connection attempt forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a process opens connections: plaintext, or TLS with a verified
/// server (and optionally a client certificate). Loaded once; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    config: Option<ClientTlsConfig>,
}

impl ClientTls {
    /// Plaintext connections.
    pub fn plaintext() -> Self {
        Self::default()
    }

    pub fn is_enabled(&self) -> bool {
        self.config.is_some()
    }

    /// An endpoint for `addr` (`host:port`; a leading `http://` or
    /// `https://` is ignored: the TLS settings alone choose the scheme, so
    /// one address works in either kind of cluster).
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        let addr = addr.trim();
        let bare = addr.strip_prefix("https://").or_else(|| addr.strip_prefix("http://")).unwrap_or(addr);
        if bare.is_empty() {
            return Err("empty address: expected host:port".into());
        }
        let scheme = if self.config.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{bare}"))
            .map_err(|e| format!("{addr:?} is not a host:port address ({e})"))?;
        match &self.config {
            None => Ok(endpoint),
            Some(c) => endpoint.tls_config(c.clone()).map_err(|e| format!("cannot set up TLS for {addr}: {e}")),
        }
    }
}

impl TlsArgs {
    /// Client-side settings for a process that only calls others (the CLI,
    /// the client library): TLS is on when `--tls-ca` is given.
    pub fn client(&self) -> Result<ClientTls, String> {
        let identity = self.identity()?;
        let Some(ca) = &self.tls_ca else {
            if identity.is_some() || self.tls_domain.is_some() {
                return Err("--tls-cert/--tls-key/--tls-domain need --tls-ca: TLS verifies the server \
                            against that CA bundle"
                    .into());
            }
            return Ok(ClientTls::plaintext());
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_ca(ca)?))
            .assume_http2(true)
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(domain) = &self.tls_domain {
            config = config.domain_name(domain.clone());
        }
        if let Some(id) = identity {
            config = config.identity(id);
        }
        // Builds the rustls client once now, so a key that does not match its
        // certificate is reported at start-up rather than at the first call.
        let probe = ClientTls { config: Some(config) };
        probe
            .endpoint("localhost:1")
            .map_err(|e| format!("{} and {}: {e}", show(self.tls_cert.as_deref()), show(self.tls_key.as_deref())))?;
        Ok(probe)
    }

    /// This process's certificate and key, if given (both or neither).
    fn identity(&self) -> Result<Option<Identity>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(_), None) => Err("--tls-cert needs --tls-key (the certificate's private key)".into()),
            (None, Some(_)) => Err("--tls-key needs --tls-cert (the certificate it belongs to)".into()),
            (Some(cert), Some(key)) => Ok(Some(Identity::from_pem(read_certs(cert)?, read_key(key)?))),
        }
    }
}

impl ServerTlsArgs {
    /// The settings of a coordinator or participant: how it serves (`None`:
    /// plaintext) and how it calls the other processes. TLS needs the
    /// certificate, its key and the CA (which verifies the processes it
    /// calls); the CA also requires client certificates unless
    /// `--tls-client-cert-optional`.
    pub fn load(&self) -> Result<(Option<ServerTlsConfig>, ClientTls), String> {
        let t = &self.tls;
        let Some(identity) = t.identity()? else {
            if t.tls_ca.is_some() || t.tls_domain.is_some() || self.tls_client_cert_optional {
                return Err("TLS flags given without --tls-cert and --tls-key: a coordinator or participant \
                            serves TLS with its own certificate"
                    .into());
            }
            return Ok((None, ClientTls::plaintext()));
        };
        let Some(ca) = &t.tls_ca else {
            return Err("--tls-cert needs --tls-ca on a coordinator or participant: it verifies the \
                        certificates of the processes it calls"
                .into());
        };
        let server = ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(Certificate::from_pem(read_ca(ca)?))
            .client_auth_optional(self.tls_client_cert_optional)
            .timeout(HANDSHAKE_TIMEOUT);
        // Builds the rustls server once now, so a key that does not match its
        // certificate is reported at start-up with both file names.
        tonic::transport::Server::builder().tls_config(server.clone()).map_err(|e| {
            format!("{} and {}: cannot serve TLS: {e}", show(t.tls_cert.as_deref()), show(t.tls_key.as_deref()))
        })?;
        Ok((Some(server), t.client()?))
    }
}

fn show(path: Option<&Path>) -> String {
    path.map_or_else(|| "(none)".into(), |p| p.display().to_string())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// The PEM certificates of `path`, checked to parse; the file's bytes.
fn read_certs(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read(path, "TLS certificate file")?;
    let certs = parse_certs(&pem).map_err(|e| format!("TLS certificate file {}: {e}", path.display()))?;
    for cert in &certs {
        webpki::EndEntityCert::try_from(cert)
            .map_err(|e| format!("TLS certificate file {}: not a valid X.509 certificate ({e})", path.display()))?;
    }
    Ok(pem)
}

/// A CA bundle: every certificate in it must be usable as a trust anchor
/// (rustls would otherwise skip a bad one silently, and every handshake
/// would fail later with "unknown issuer").
fn read_ca(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read(path, "TLS CA file")?;
    let certs = parse_certs(&pem).map_err(|e| format!("TLS CA file {}: {e}", path.display()))?;
    for cert in &certs {
        webpki::anchor_from_trusted_cert(cert)
            .map_err(|e| format!("TLS CA file {}: not a valid CA certificate ({e})", path.display()))?;
    }
    Ok(pem)
}

fn read_key(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read(path, "TLS key file")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!("TLS key file {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found ({e})", path.display())
    })?;
    Ok(pem)
}

fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> =
        CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(|e| format!("malformed PEM ({e})"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) found".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cert: Option<&str>, key: Option<&str>, ca: Option<&str>) -> TlsArgs {
        TlsArgs {
            tls_cert: cert.map(PathBuf::from),
            tls_key: key.map(PathBuf::from),
            tls_ca: ca.map(PathBuf::from),
            tls_domain: None,
        }
    }

    #[test]
    fn no_flags_is_plaintext() {
        let tls = args(None, None, None).client().unwrap();
        assert!(!tls.is_enabled());
        assert_eq!(tls.endpoint("127.0.0.1:7000").unwrap().uri().to_string(), "http://127.0.0.1:7000/");
        assert_eq!(tls.endpoint("http://h:1").unwrap().uri().to_string(), "http://h:1/");
        assert!(tls.endpoint(" ").is_err());
        let (server, client) = ServerTlsArgs::default().load().unwrap();
        assert!(server.is_none() && !client.is_enabled());
    }

    #[test]
    fn missing_files_are_named() {
        let e = args(None, None, Some("/nonexistent/ca.pem")).client().unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let e = args(Some("/nonexistent/c.pem"), Some("/nonexistent/k.pem"), Some("/x")).client().unwrap_err();
        assert!(e.contains("/nonexistent/c.pem"), "{e}");
    }

    #[test]
    fn incomplete_flags_are_refused() {
        assert!(args(Some("c"), None, Some("ca")).client().unwrap_err().contains("--tls-key"));
        assert!(args(None, Some("k"), Some("ca")).client().unwrap_err().contains("--tls-cert"));
        let server = ServerTlsArgs { tls: args(None, None, Some("ca")), tls_client_cert_optional: false };
        assert!(server.load().unwrap_err().contains("--tls-cert"));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let dir = std::env::temp_dir().join(format!("twopc-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.pem");
        std::fs::write(&bad, "not pem at all").unwrap();
        let e = args(None, None, bad.to_str()).client().unwrap_err();
        assert!(e.contains("bad.pem") && e.contains("no PEM certificate"), "{e}");
        std::fs::write(&bad, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let e = args(None, None, bad.to_str()).client().unwrap_err();
        assert!(e.contains("bad.pem") && e.contains("not a valid CA certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
