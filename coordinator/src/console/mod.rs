//! The web console: a page for operators, served by the coordinator on its
//! own HTTP address (`--console-addr`, off by default).
//!
//! Role: show what the coordinator knows (live transactions, the history
//! of commits and aborts, the topology, the participants' in-doubt tids,
//! which coordinator leads) and offer two actions (abort an undecided tid,
//! arm or disarm a failpoint). Heuristic resolution stays CLI-only.
//!
//! Rules kept (each for the reason given):
//! - **Off unless asked; loopback unless said otherwise.** No console runs
//!   without `--console-addr`. A non-loopback address is served only with
//!   `--admin-token` (the console can abort transactions and crash
//!   processes), and a warning is logged when it has no TLS.
//! - **Same TLS as the process.** When the coordinator serves TLS, the
//!   console serves HTTPS with the same certificate and key. It does not ask
//!   browsers for client certificates (the admin token authenticates).
//! - **The token on every API call, never in a URL.** With `--admin-token`
//!   every `/api/...` call needs `Authorization: Bearer TOKEN` (401 with a
//!   JSON error body otherwise). The static files (the page, its script,
//!   styles and the vendored chart library) hold no data and are served
//!   without it: the page asks for the token once, keeps it in the tab's
//!   `sessionStorage` (gone when the tab closes) and sends it as that
//!   header. It never travels in a URL, so it never lands in a log.
//! - **No cross-site actions.** Actions are `POST` with a JSON body and
//!   need the header `X-Twopc-Console: 1` as well as the token: a form on
//!   another site can send neither, and a script there cannot without a
//!   CORS preflight, which the console never grants. Without a token, API
//!   calls must name the console by an IP address or `localhost` in `Host`
//!   (a DNS-rebinding page names its own domain).
//! - **Bounded cost.** The API answers from memory; the only calls it makes
//!   are the in-doubt fan-out (one `ListInDoubt` per participant, 1 s
//!   timeout each, in parallel, the answer shared for 1 s by every open
//!   page, [`api::IN_DOUBT_TTL`]) and a failpoint action. Listings are
//!   capped ([`api::MAX_LISTED`]); the history is a fixed ring
//!   ([`history`]) and the page fetches only samples it has not seen;
//!   connections are capped ([`server::MAX_CONNECTIONS`], and
//!   [`server::MAX_CONNECTIONS_PER_CLIENT`] per IP address, so that one
//!   client cannot hold every slot before any token check), so each is
//!   bounded in time too: request headers must arrive within 10 s (idle
//!   keep-alive included) and a body within 10 s more, or the connection
//!   is closed (else a few dozen stalled clients would hold every slot);
//!   request bodies are limited in size.
//! - **A standby says so.** With a replicated log, a standby's console
//!   answers its status (role `standby`, the leader's address) and refuses
//!   the rest with 503 naming the leader, as its gRPC gate does.

pub mod api;
pub mod history;
pub mod server;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use twopc_proto::token::AdminToken;

use crate::driver::Driver;
use crate::leadership::Leadership;

/// What the console is started with.
pub struct Settings {
    /// `--console-addr`.
    pub addr: String,
    /// The coordinator's own gRPC address (shown on the page).
    pub coordinator_addr: String,
    pub partitions: u32,
    pub admin_token: AdminToken,
    /// Failpoint names a participant knows (for the page's menu; empty when
    /// unknown to this binary: the participant still checks the name).
    pub participant_failpoints: Vec<String>,
    /// The coordinator's TLS flags: HTTPS with its certificate when set.
    pub tls: twopc_proto::tls::ServerTlsArgs,
}

/// The console's shared state.
pub struct Console {
    /// The serving term's driver: set at once with the SQLite log, when
    /// elected and recovered with etcd (`None` while standing by).
    driver: RwLock<Option<Arc<Driver>>>,
    /// With the replicated log: who leads.
    leadership: Option<Arc<Leadership>>,
    admin_token: AdminToken,
    coordinator_addr: String,
    partitions: u32,
    tls: bool,
    participant_failpoints: Vec<String>,
    history: Arc<history::History>,
    in_doubt: api::InDoubtCache,
}

impl Console {
    /// The driver of the term being served, if any.
    pub fn driver(&self) -> Option<Arc<Driver>> {
        self.driver.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Called when a term starts serving (the gate opened).
    pub fn set_driver(&self, driver: Arc<Driver>) {
        *self.driver.write().unwrap_or_else(|e| e.into_inner()) = Some(driver);
    }
}

/// Checks the settings, binds the console's address, prints
/// `console on URL` on stdout (before the coordinator's `listening on`
/// line, so tools reading stdout learn both), and serves in the
/// background. Errors name the flag.
pub async fn start(
    settings: Settings,
    leadership: Option<Arc<Leadership>>,
) -> Result<(Arc<Console>, SocketAddr), String> {
    let parsed: SocketAddr = settings.addr.parse().map_err(|e| {
        format!("--console-addr {:?} is not host:port with a numeric IP ({e}), e.g. 127.0.0.1:7080", settings.addr)
    })?;
    if !parsed.ip().is_loopback() && !settings.admin_token.is_set() {
        return Err(format!(
            "--console-addr {parsed} is not a loopback address and there is no --admin-token: the console \
             can abort transactions and crash processes, so off loopback it needs the admin token \
             (pass --admin-token, and TLS with --tls-cert), or serve it on 127.0.0.1"
        ));
    }
    let tls = server::tls_config(&settings.tls)?;
    if !parsed.ip().is_loopback() && tls.is_none() {
        tracing::warn!(addr = %parsed, "web console on a non-loopback address without TLS: the admin token travels in the clear (see --tls-cert)");
    }
    let listener = tokio::net::TcpListener::bind(parsed)
        .await
        .map_err(|e| format!("--console-addr: cannot listen on {parsed}: {e}"))?;
    let local = listener.local_addr().map_err(|e| format!("--console-addr: cannot read the bound address: {e}"))?;
    let history = Arc::new(history::History::default());
    let console = Arc::new(Console {
        driver: RwLock::new(None),
        leadership,
        admin_token: settings.admin_token,
        coordinator_addr: settings.coordinator_addr,
        partitions: settings.partitions,
        tls: tls.is_some(),
        participant_failpoints: settings.participant_failpoints,
        history: history.clone(),
        in_doubt: api::InDoubtCache::default(),
    });
    tokio::spawn(history.run());
    let scheme = if tls.is_some() { "https" } else { "http" };
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "console on {scheme}://{local}/");
        let _ = out.flush();
    }
    tracing::info!(url = %format!("{scheme}://{local}/"), token = console.admin_token.is_set(), "web console serving");
    tokio::spawn(server::serve(console.clone(), listener, tls));
    Ok((console, local))
}
