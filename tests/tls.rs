//! Mutual TLS on every link, TLS without client certificates, and the
//! admin token, over real processes.
//!
//! Certificates are generated here with rcgen into the test's temporary
//! directory (a CA, one certificate shared by the coordinator and the
//! participants for `localhost`/127.0.0.1 with both server and client
//! usages, and a client certificate), so no key is ever committed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa, Issuer, KeyPair};
use tonic::Code;
use twopc::cluster::ClusterOptions;
use twopc_client::{AdminToken, Client, ClientError, ConnectOptions, Outcome, TlsArgs};

/// PEM files of a CA and of certificates it signed.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    /// Coordinator and participants: serverAuth and clientAuth.
    node: (PathBuf, PathBuf),
    /// A client: clientAuth.
    client: (PathBuf, PathBuf),
    /// A client signed by another CA.
    rogue: (PathBuf, PathBuf),
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn write_leaf(dir: &Path, name: &str, sans: &[&str], usages: &[Eku], ca: &Issuer<'_, KeyPair>) -> (PathBuf, PathBuf) {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = usages.to_vec();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn pki() -> Pki {
    let dir = tempfile::Builder::new().prefix("twopc-pki-").tempdir().unwrap();
    let (ca_pem, ca) = new_ca("twopc test CA");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let node = write_leaf(dir.path(), "node", &["localhost", "127.0.0.1"], &[Eku::ServerAuth, Eku::ClientAuth], &ca);
    let client = write_leaf(dir.path(), "client", &["client"], &[Eku::ClientAuth], &ca);
    let (_, rogue_ca) = new_ca("rogue CA");
    let rogue = write_leaf(dir.path(), "rogue", &["client"], &[Eku::ClientAuth], &rogue_ca);
    Pki { _dir: dir, ca: ca_path, node, client, rogue }
}

fn tls_args(ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> TlsArgs {
    TlsArgs {
        tls_ca: Some(ca.to_path_buf()),
        tls_cert: identity.map(|i| i.0.clone()),
        tls_key: identity.map(|i| i.1.clone()),
        tls_domain: None,
    }
}

fn env(pairs: &[(&str, &Path)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.display().to_string())).collect()
}

/// Runs the `twopc` CLI with `args` and `env`.
fn cli(args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twopc"));
    cmd.args(args).env_remove("TWOPC_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run twopc")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A refused connection must fail at the transport (handshake, reset),
/// never succeed or look like an application error.
fn assert_refused(result: Result<Client, ClientError>, who: &str) {
    match result {
        Ok(_) => panic!("{who}: connected to a mutual-TLS coordinator"),
        Err(e) => assert_eq!(e.code(), Code::Unavailable, "{who}: unexpected error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_commits_and_refuses_clients_without_a_certificate() {
    let pki = pki();
    let (node_cert, node_key) = (&pki.node.0, &pki.node.1);
    let opts = ClusterOptions {
        partitions: 2,
        env: env(&[("TWOPC_TLS_CERT", node_cert), ("TWOPC_TLS_KEY", node_key), ("TWOPC_TLS_CA", &pki.ca)]),
        client: ConnectOptions {
            tls: tls_args(&pki.ca, Some(&pki.client)).client().expect("client TLS settings"),
            admin_token: AdminToken::default(),
            ..Default::default()
        },
        ..ClusterOptions::default()
    };
    // Participants register over mutual TLS; the client connects with its certificate.
    let tc = TestCluster::start(opts).await;
    let (a, b) = (tc.key_on(0, "tls"), tc.key_on(1, "tls"));
    let (_, outcome) = tc.write_txn(&[(&a, "1"), (&b, "2")]).await;
    assert_eq!(outcome, Outcome::Committed);
    tc.wait_value(&a, Some("1")).await;
    tc.wait_value(&b, Some("2")).await;
    let txn = tc.client.begin(None).await.unwrap();
    assert_eq!(txn.get(b.as_bytes()).await.unwrap(), Some(b"2".to_vec()));
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);

    // The CLI takes the same flags.
    let addr = tc.cluster.coordinator_addr();
    let (ca, (cert, key)) = (pki.ca.display().to_string(), (pki.client.0.display(), pki.client.1.display()));
    let (cert, key) = (cert.to_string(), key.to_string());
    let put = format!("put {a} 3");
    let tls_flags = ["--coordinator", &addr, "--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
    let o = cli(&[&["run"][..], &tls_flags, &[&put]].concat(), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("COMMITTED"), "{}", text(&o));
    tc.wait_value(&a, Some("3")).await;

    // TLS without a client certificate, a certificate from another CA, and
    // plaintext are all refused.
    assert_refused(
        Client::connect_with(
            &addr,
            ConnectOptions { tls: tls_args(&pki.ca, None).client().unwrap(), ..Default::default() },
        )
        .await,
        "TLS client without a certificate",
    );
    assert_refused(
        Client::connect_with(
            &addr,
            ConnectOptions { tls: tls_args(&pki.ca, Some(&pki.rogue)).client().unwrap(), ..Default::default() },
        )
        .await,
        "client with a certificate from another CA",
    );
    assert_refused(Client::connect(&addr).await, "plaintext client");
    let o = cli(&["read", "--coordinator", &addr, "--tls-ca", &ca, &a], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = cli(&["read", "--coordinator", &addr, &a], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    tc.wait_settled().await;
}

/// The token over TLS without client certificates (`--tls-client-cert-optional`):
/// the clients here verify the servers but present no certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_admin_rpcs() {
    let pki = pki();
    let token = "let-me-in";
    let mut env = env(&[("TWOPC_TLS_CERT", &pki.node.0), ("TWOPC_TLS_KEY", &pki.node.1), ("TWOPC_TLS_CA", &pki.ca)]);
    env.push(("TWOPC_TLS_CLIENT_CERT_OPTIONAL".into(), "1".into()));
    env.push(("TWOPC_ADMIN_TOKEN".into(), token.into()));
    let tls = tls_args(&pki.ca, None).client().unwrap();
    let opts = ClusterOptions {
        partitions: 2,
        env,
        client: ConnectOptions {
            tls: tls.clone(),
            admin_token: AdminToken::new(Some(token)).unwrap(),
            ..Default::default()
        },
        ..ClusterOptions::default()
    };
    let tc = TestCluster::start(opts).await;
    let addr = tc.cluster.coordinator_addr();
    let ca = [("TWOPC_TLS_CA".to_string(), pki.ca.display().to_string())];
    // With the token: admin calls work (and transactions never need it).
    assert!(tc.client.transactions().await.unwrap().is_empty());
    assert!(tc.client.in_doubt().await.unwrap().iter().all(|p| p.tids.is_ok()));
    let (_, outcome) = tc.write_txn(&[(&tc.key_on(0, "tok"), "1"), (&tc.key_on(1, "tok"), "1")]).await;
    assert_eq!(outcome, Outcome::Committed);

    // Without it, or with a wrong one: UNAUTHENTICATED, saying what to do.
    for bad in [None, Some("wrong")] {
        let options =
            ConnectOptions { tls: tls.clone(), admin_token: AdminToken::new(bad).unwrap(), ..Default::default() };
        let client = Client::connect_with(&addr, options.clone()).await.expect("transaction calls need no token");
        let e = client.transactions().await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        assert!(e.to_string().contains("--admin-token"), "{e}");
        let e = client.set_failpoint("0".parse().unwrap(), "participant::before_prepare_durable", "").await;
        assert_eq!(e.unwrap_err().code(), Code::Unauthenticated);
        let parts = client.in_doubt().await.unwrap();
        assert!(parts.iter().all(|p| p.tids.as_ref().is_err_and(|e| e.contains("UNAUTHENTICATED"))), "{parts:?}");
        let p0 = tc.cluster.participants[0].addr.to_string();
        let e = twopc_client::resolve_heuristically(&p0, uuid::Uuid::now_v7(), false, true, "test", &options).await;
        assert_eq!(e.unwrap_err().code(), Code::Unauthenticated, "heuristic resolution is an admin call");
    }
    // With the token it gets past the check (to NOT_FOUND: nothing is in doubt).
    let p0 = tc.cluster.participants[0].addr.to_string();
    let with_token =
        ConnectOptions { tls: tls.clone(), admin_token: AdminToken::new(Some(token)).unwrap(), ..Default::default() };
    let e = twopc_client::resolve_heuristically(&p0, uuid::Uuid::now_v7(), false, true, "test", &with_token).await;
    assert_eq!(e.unwrap_err().code(), Code::NotFound);

    // The CLI sends it from --admin-token or TWOPC_ADMIN_TOKEN.
    let o = cli(&["transactions", "--coordinator", &addr], &ca);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("UNAUTHENTICATED"), "{}", text(&o));
    let o = cli(&["transactions", "--coordinator", &addr, "--admin-token", token], &ca);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = cli(&["in-doubt", "--coordinator", &addr], &[ca[0].clone(), ("TWOPC_ADMIN_TOKEN".into(), token.into())]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("error"), "{}", text(&o));
    tc.wait_settled().await;
}

#[test]
fn bad_tls_files_stop_the_process_with_their_name() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let (cert, key, ca) = (pki.node.0.display().to_string(), pki.node.1.display().to_string(), pki.ca.display());
    let ca = ca.to_string();
    let base = ["coordinator", "--listen", "127.0.0.1:0", "--partitions", "1", "--data-dir", &data];
    let other_key = pki.client.1.display().to_string();
    let cases: [(&[&str], &str); 5] = [
        (&["--tls-cert", "/nonexistent/node.pem", "--tls-key", &key, "--tls-ca", &ca], "/nonexistent/node.pem"),
        (&["--tls-cert", &cert, "--tls-key", &other_key, "--tls-ca", &ca], "client-key.pem"),
        (&["--tls-cert", &cert, "--tls-key", &cert, "--tls-ca", &ca], "node.pem"),
        (&["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &key], "node-key.pem"),
        (&["--tls-cert", &cert, "--tls-key", &key], "--tls-ca"),
    ];
    for (flags, named) in cases {
        let o = cli(&[&base[..], flags].concat(), &[]);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains(named), "{flags:?} should name {named}: {}", text(&o));
    }
    let o = cli(&["read", "--tls-ca", "/nonexistent/ca.pem", "k"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/ca.pem"), "{}", text(&o));
}
