//! The coordinator's web console at the HTTP level (no browser): every API
//! answers JSON of the expected shape, a tid begun from the CLI shows in the
//! live list, actions are refused as the CLI refuses them (same words, the
//! HTTP equivalent of the gRPC status), the admin token guards every API
//! call (401 with a JSON body without it), actions need the console's
//! header, and the console serves HTTPS when the coordinator has TLS.
//! (Browser tests of the page itself are in another file.)

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;
use twopc::cluster::ClusterOptions;
use twopc_client::{AdminToken, ConnectOptions, TlsArgs};

/// A tiny HTTP/1.1 client for one console (one connection per request:
/// simple, and what a polling page costs at worst).
struct Console {
    /// `HOST:PORT`.
    addr: String,
    tls: Option<tokio_rustls::TlsConnector>,
    token: Option<String>,
}

/// One answer: status and body (JSON when it parses, else a string).
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: Value,
    bytes: usize,
}

impl Console {
    fn new(url: &str, tls: Option<tokio_rustls::TlsConnector>) -> Console {
        let addr = url.split_once("://").expect("a URL").1.trim_end_matches('/').to_string();
        assert_eq!(url.starts_with("https://"), tls.is_some(), "{url}");
        Console { addr, tls, token: None }
    }

    fn with_token(&self, token: Option<&str>) -> Console {
        Console { addr: self.addr.clone(), tls: self.tls.clone(), token: token.map(str::to_string) }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None, &[]).await
    }

    /// An action as the page sends it (JSON body and the console's header).
    async fn post(&self, path: &str, body: Value) -> Answer {
        self.send("POST", path, Some(body.to_string()), &[("x-twopc-console", "1")]).await
    }

    async fn send(&self, method: &str, path: &str, body: Option<String>, headers: &[(&str, &str)]) -> Answer {
        let mut req = http::Request::builder().method(method).uri(path).header("host", &self.addr);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
        let tcp = tokio::net::TcpStream::connect(&self.addr).await.expect("connect to the console");
        let call = async {
            match &self.tls {
                None => exchange(tcp, req).await,
                Some(tls) => {
                    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                    exchange(tls.connect(name, tcp).await.expect("TLS handshake with the console"), req).await
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), call).await.expect("the console answers within 10 s")
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
    req: http::Request<Full<Bytes>>,
) -> Answer {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer { status, content_type, body, bytes: bytes.len() }
}

/// Polls `f` until it returns `Some`, for at most `SETTLE`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_error_body(a: &Answer, status: u16, words: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert!(a.content_type.starts_with("application/json"), "{a:?}");
    let message = a.body["error"].as_str().unwrap_or_else(|| panic!("no JSON error in {a:?}"));
    assert!(message.contains(words), "{message:?} lacks {words:?}");
    assert!(a.body["code"].is_string(), "{a:?}");
}

fn cli_tid(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", output_text(o));
    String::from_utf8_lossy(&o.stdout).lines().next().unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_answers_json_and_actions_are_refused_like_the_cli() {
    let opts = ClusterOptions { partitions: 2, console: true, ..ClusterOptions::default() };
    let tc = TestCluster::start(opts).await;
    let url = tc.cluster.console_url().expect("the coordinator printed its console URL");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let console = Console::new(&url, None);

    // The page and its files, embedded.
    let page = console.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"), "{page:?}");
    let html = page.body.as_str().unwrap();
    for id in ["live-txns", "in-doubt", "chart-throughput", "tid-lookup", "leader", "topology", "status", "fp-arm"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "the page lacks #{id}");
    }
    for file in ["/app.js", "/app.css", "/vendor/uPlot.iife.min.js", "/vendor/uPlot.min.css", "/vendor/LICENSE"] {
        let a = console.get(file).await;
        assert!(a.status == 200 && a.bytes > 100, "{file}: {a:?}");
    }
    assert_eq!(console.get("/nope").await.status, 404);

    // Shapes.
    let status = console.get("/api/status").await;
    assert_eq!(status.status, 200, "{status:?}");
    assert_eq!(status.body["role"], "single");
    assert_eq!(status.body["leader"], json!(tc.cluster.coordinator_addr()));
    assert_eq!(status.body["partitions"], 2);
    assert_eq!(status.body["token_required"], false);
    assert_eq!(status.body["tls"], false);
    let fps = &status.body["failpoints"];
    assert!(fps["coordinator"].as_array().unwrap().contains(&json!("coordinator::after_decision_forced")));
    assert!(fps["participant"].as_array().unwrap().contains(&json!("participant::after_prepare_durable")));
    let topology = console.get("/api/topology").await;
    let members = topology.body["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{topology:?}");
    for (p, m) in members.iter().enumerate() {
        assert_eq!(m["address"], json!(tc.cluster.participants[p].addr.to_string()), "{m}");
        assert_eq!(m["reachable"], true, "{m}");
    }
    let in_doubt = console.get("/api/in-doubt").await;
    let parts = in_doubt.body["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{in_doubt:?}");
    assert!(parts.iter().all(|p| p["reachable"] == true && p["tids"].as_array().unwrap().is_empty()), "{in_doubt:?}");

    // A tid begun from the CLI shows in the live list, with its participant.
    let tid = cli_tid(&twopc_cli(&tc, &["begin", "--timeout-ms", "60000"]));
    let key = tc.key_on(1, "console");
    let o = twopc_cli(&tc, &["put", "--tid", &tid, &key, "v"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let row = eventually("the CLI's tid in /api/transactions", || async {
        let live = console.get("/api/transactions").await;
        assert_eq!(live.status, 200, "{live:?}");
        live.body["transactions"].as_array().unwrap().iter().find(|t| t["tid"] == json!(tid)).cloned()
    })
    .await;
    assert_eq!(row["state"], "active", "{row}");
    assert!(row["age_ms"].as_u64().is_some() && row["remaining_ms"].as_i64().unwrap() > 0, "{row}");
    assert_eq!(row["participants"], json!([{ "partition": 1, "state": "enlisted", "retries": 0 }]), "{row}");
    let d = console.get(&format!("/api/decision/{tid}")).await;
    assert_eq!(
        (d.status, d.body["decision"].clone(), d.body["phase"].clone()),
        (200, json!("PENDING"), json!("active"))
    );

    // Committed from the CLI: gone from the list, decided COMMITTED, and an
    // abort is refused as the CLI's is (409 for FAILED_PRECONDITION, same words).
    let o = twopc_cli(&tc, &["commit", "--tid", &tid]);
    assert!(o.status.success(), "{}", output_text(&o));
    eventually("the committed tid to leave the live list", || async {
        let live = console.get("/api/transactions").await;
        (!live.body["transactions"].as_array().unwrap().iter().any(|t| t["tid"] == json!(tid))).then_some(())
    })
    .await;
    let d = console.get(&format!("/api/decision/{tid}")).await;
    assert_eq!(d.body["decision"], "COMMITTED", "{d:?}");
    let refused = console.post("/api/abort", json!({ "tid": tid })).await;
    assert_error_body(&refused, 409, "already committed");
    assert_eq!(refused.body["code"], "FAILED_PRECONDITION");
    let cli = twopc_cli(&tc, &["abort", "--tid", &tid]);
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains(refused.body["error"].as_str().unwrap()),
        "the CLI and the console give the same reason: {}\n{refused:?}",
        output_text(&cli)
    );

    // An undecided tid is aborted by the operator.
    let tid2 = cli_tid(&twopc_cli(&tc, &["begin"]));
    let ok = console.post("/api/abort", json!({ "tid": tid2 })).await;
    assert_eq!((ok.status, ok.body["ok"].clone()), (200, json!(true)), "{ok:?}");
    let d = console.get(&format!("/api/decision/{tid2}")).await;
    assert_eq!((d.body["decision"].clone(), d.body["abort_kind"].clone()), (json!("ABORTED"), json!("operator")));

    // Bad input: precise statuses with JSON bodies.
    assert_error_body(&console.get("/api/decision/not-a-tid").await, 400, "not a UUID");
    assert_error_body(&console.post("/api/abort", json!({ "nope": 1 })).await, 400, "not the expected JSON");
    let unknown = json!({ "target": "coordinator", "name": "coordinator::nope", "actions": "return" });
    assert_error_body(&console.post("/api/failpoint", unknown).await, 400, "unknown failpoint");
    let unknown = json!({ "target": 0, "name": "participant::nope", "actions": "return" });
    assert_error_body(&console.post("/api/failpoint", unknown).await, 400, "unknown failpoint");
    let far = json!({ "target": 7, "name": "participant::after_prepare_durable", "actions": "" });
    assert_error_body(&console.post("/api/failpoint", far).await, 400, "out of range");
    assert_error_body(&console.get("/api/nothing").await, 404, "no API");
    assert_error_body(&console.post("/api/status", json!({})).await, 405, "use GET");
    // An action without the console's header (what a cross-site form sends) is refused.
    let form = console
        .send("POST", "/api/abort", Some(format!("{{\"tid\":\"{tid2}\"}}")), &[("content-type", "text/plain")])
        .await;
    assert_error_body(&form, 403, "x-twopc-console");
    // Without a token, only an IP or localhost may name the console (DNS rebinding).
    let rebound = console.send("GET", "/api/status", None, &[]).await;
    assert_eq!(rebound.status, 200);
    let rebound = {
        let req = http::Request::builder().uri("/api/status").header("host", "evil.example").body(Full::default());
        let tcp = tokio::net::TcpStream::connect(&console.addr).await.unwrap();
        exchange(tcp, req.unwrap()).await
    };
    assert_error_body(&rebound, 403, "Host");

    // Arm and disarm a participant's failpoint (nothing reaches it meanwhile).
    let arm = json!({ "target": "1", "name": "participant::after_prepare_durable", "actions": "return" });
    assert_eq!(console.post("/api/failpoint", arm).await.status, 200);
    let disarm = json!({ "target": 1, "name": "participant::after_prepare_durable", "actions": "" });
    assert_eq!(console.post("/api/failpoint", disarm).await.status, 200);

    // A tid held prepared (the coordinator's decision step paused by a
    // failpoint) shows in doubt at both participants, then leaves.
    let arm =
        json!({ "target": "coordinator", "name": "coordinator::before_decision_forced", "actions": "sleep(20000)" });
    assert_eq!(console.post("/api/failpoint", arm).await.status, 200);
    let txn = tc.client.begin(None).await.unwrap();
    txn.put(tc.key_on(0, "doubt").as_bytes(), b"1").await.unwrap();
    txn.put(tc.key_on(1, "doubt").as_bytes(), b"1").await.unwrap();
    let held = txn.tid().to_string();
    let commit = tokio::spawn(async move { txn.commit().await });
    let rows = eventually("the held tid in doubt at both partitions", || async {
        let d = console.get("/api/in-doubt").await;
        let rows: Vec<Value> = d.body["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["tids"].as_array().unwrap().clone())
            .filter(|t| t["tid"] == json!(held))
            .collect();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    assert!(rows.iter().all(|r| r["prepared_for_ms"].is_u64() && r["asked"].is_u64()), "{rows:?}");
    let disarm = json!({ "target": "coordinator", "name": "coordinator::before_decision_forced", "actions": "" });
    assert_eq!(console.post("/api/failpoint", disarm).await.status, 200);
    assert_eq!(commit.await.unwrap().unwrap(), twopc_client::Outcome::Committed);
    eventually("the decided tid to leave the in-doubt view", || async {
        let d = console.get("/api/in-doubt").await;
        (!d.body.to_string().contains(&held)).then_some(())
    })
    .await;

    // The history has this workload's commits (sampled once a second).
    tc.write_txn(&[(&tc.key_on(0, "h"), "1"), (&tc.key_on(1, "h"), "1")]).await;
    let samples = eventually("a committed transaction in /api/history", || async {
        let h = console.get("/api/history").await;
        let samples = h.body["samples"].as_array().unwrap().clone();
        (samples.iter().map(|s| s["committed"].as_u64().unwrap()).sum::<u64>() >= 2).then_some(samples)
    })
    .await;
    let s = samples.iter().find(|s| s["committed"].as_u64().unwrap() > 0).unwrap();
    assert!(s["t"].as_u64().unwrap() > 0 && s["p50_ms"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["p99_ms"].as_f64().unwrap() >= s["p50_ms"].as_f64().unwrap(), "{s}");
    let aborted = eventually("the operator's abort in /api/history", || async {
        let h = console.get("/api/history").await;
        h.body["samples"].as_array().unwrap().iter().find(|s| !s["aborted"].as_array().unwrap().is_empty()).cloned()
    })
    .await;
    assert_eq!(aborted["aborted"], json!([["operator", 1]]), "{aborted}");
    // `since` returns only newer samples.
    let last = samples.last().unwrap()["t"].as_u64().unwrap();
    let newer = console.get(&format!("/api/history?since={last}")).await;
    assert!(newer.body["samples"].as_array().unwrap().iter().all(|s| s["t"].as_u64().unwrap() > last), "{newer:?}");
    tc.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_every_api_call_and_the_console_serves_https_with_tls() {
    let dir = tempfile::Builder::new().prefix("twopc-console-pki-").tempdir().unwrap();
    let common::Pki { ca, cert, key, ca_pem } = common::pki(dir.path());
    let token = "console-secret";
    let env: Vec<(String, String)> = [
        ("TWOPC_TLS_CERT", cert.display().to_string()),
        ("TWOPC_TLS_KEY", key.display().to_string()),
        ("TWOPC_TLS_CA", ca.display().to_string()),
        ("TWOPC_TLS_CLIENT_CERT_OPTIONAL", "1".into()),
        ("TWOPC_ADMIN_TOKEN", token.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let tls = TlsArgs { tls_ca: Some(ca.clone()), ..Default::default() }.client().unwrap();
    let opts = ClusterOptions {
        partitions: 2,
        console: true,
        env,
        client: ConnectOptions { tls, admin_token: AdminToken::new(Some(token)).unwrap(), ..Default::default() },
        ..ClusterOptions::default()
    };
    let tc = TestCluster::start(opts).await;
    let url = tc.cluster.console_url().unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "with TLS the console serves HTTPS: {url}");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let anonymous = Console::new(&url, Some(tokio_rustls::TlsConnector::from(Arc::new(config))));

    // The page's files hold no data: served without the token.
    assert_eq!(anonymous.get("/").await.status, 200);
    assert_eq!(anonymous.get("/app.js").await.status, 200);
    // Every API call needs it: 401 with a JSON error without it or with a wrong one.
    for path in ["/api/status", "/api/history", "/api/transactions", "/api/in-doubt", "/api/topology"] {
        assert_error_body(&anonymous.get(path).await, 401, "admin token");
        assert_error_body(&anonymous.with_token(Some("wrong")).get(path).await, 401, "wrong admin token");
    }
    let action = json!({ "target": "coordinator", "name": "coordinator::after_commit_acked", "actions": "" });
    assert_error_body(&anonymous.post("/api/failpoint", action.clone()).await, 401, "admin token");
    assert_error_body(&anonymous.post("/api/abort", json!({ "tid": "x" })).await, 401, "admin token");

    let console = anonymous.with_token(Some(token));
    let status = console.get("/api/status").await;
    assert_eq!(status.status, 200, "{status:?}");
    assert_eq!((status.body["tls"].clone(), status.body["token_required"].clone()), (json!(true), json!(true)));
    // The in-doubt fan-out carries the coordinator's admin token to the participants.
    let in_doubt = console.get("/api/in-doubt").await;
    let parts = in_doubt.body["partitions"].as_array().unwrap();
    assert!(parts.iter().all(|p| p["reachable"] == true), "{in_doubt:?}");
    assert_eq!(console.post("/api/failpoint", action).await.status, 200);
    // The token is no CSRF pass: an action still needs the console's header.
    let no_header = console.send("POST", "/api/abort", Some("{\"tid\":\"x\"}".into()), &[]).await;
    assert_error_body(&no_header, 403, "x-twopc-console");
    let (_, outcome) = tc.write_txn(&[(&tc.key_on(0, "t"), "1"), (&tc.key_on(1, "t"), "1")]).await;
    assert_eq!(outcome, twopc_client::Outcome::Committed);
    tc.wait_settled().await;
}

#[test]
fn a_console_off_loopback_needs_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_twopc"))
        .args(["coordinator", "--listen", "127.0.0.1:0", "--partitions", "1", "--console-addr", "0.0.0.0:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("TWOPC_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", output_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--console-addr 0.0.0.0:0 is not a loopback address") && err.contains("--admin-token"),
        "{err}"
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_twopc"))
        .args(["coordinator", "--listen", "127.0.0.1:0", "--partitions", "1", "--console-addr", "localhost:80"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("not host:port with a numeric IP"), "{}", output_text(&o));
}

/// With a replicated log, a standby's console says it is a standby and
/// names the leader (its other answers are 503 naming it too); after a
/// failover the new leader's console says it leads, and a restarted
/// coordinator serves its console at the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_console_names_the_leader() {
    use twopc_testkit::{Cluster, Target};
    let mut c =
        Cluster::builder().binary(env!("CARGO_BIN_EXE_twopc")).partitions(1).ha(2).console(true).start().await.unwrap();
    let leader = c.local().leader(SETTLE).await.unwrap();
    let standby = 1 - leader;
    let addrs = c.local().coordinator_addrs();
    let leader_console = Console::new(&c.local().console_url_i(leader).unwrap(), None);
    let standby_url = c.local().console_url_i(standby).unwrap();
    let standby_console = Console::new(&standby_url, None);
    let s = leader_console.get("/api/status").await;
    assert_eq!((s.body["role"].clone(), s.body["leader"].clone()), (json!("leader"), json!(addrs[leader])), "{s:?}");
    let s = eventually("the standby to learn the leader", || async {
        let s = standby_console.get("/api/status").await;
        (s.body["leader"] == json!(addrs[leader])).then_some(s)
    })
    .await;
    assert_eq!(s.body["role"], "standby", "{s:?}");
    assert_eq!(s.body["open_transactions"], Value::Null, "{s:?}");
    let refused = standby_console.get("/api/transactions").await;
    assert_error_body(&refused, 503, "standby");
    assert_eq!(refused.body["leader"], json!(addrs[leader]), "{refused:?}");

    c.kill(Target::CoordinatorAt(leader));
    eventually("the standby's console to say it leads", || async {
        let s = standby_console.get("/api/status").await;
        (s.body["role"] == "leader").then_some(())
    })
    .await;
    assert_eq!(standby_console.get("/api/transactions").await.status, 200);
    let old_url = c.local().console_url_i(leader).unwrap();
    c.restart(Target::CoordinatorAt(leader)).await.unwrap();
    assert_eq!(c.local().console_url_i(leader).unwrap(), old_url, "a restart keeps the console's address");
    let back = Console::new(&old_url, None);
    let s = eventually("the restarted coordinator to stand by", || async {
        let s = back.get("/api/status").await;
        (s.body["role"] == "standby" && s.body["leader"] == json!(addrs[standby])).then_some(s)
    })
    .await;
    assert_eq!(s.status, 200);
    c.settle(SETTLE).await.unwrap();
}
