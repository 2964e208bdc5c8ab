//! The web console in a real browser (issue 11): headless Chromium from
//! Debian's packages (`./test` installs `chromium` when missing), driven over
//! the DevTools protocol (tests/common/browser.rs), against a real local
//! cluster whose coordinator serves the console (`--console-addr`).
//!
//! What an operator would see is checked through the page's stable DOM
//! contract (ids and data attributes listed in coordinator/console/index.html):
//! - the page loads and polls without console errors or uncaught exceptions;
//! - a transaction begun from the CLI appears in the live list and leaves
//!   it when committed from the CLI, and the tid lookup answers COMMITTED;
//! - the throughput chart plots a short workload's commits;
//! - a tid held prepared by a failpoint (the coordinator sleeping before
//!   its decision), armed and disarmed from the page's own form, is listed
//!   in the in-doubt view at every participant it wrote to, and leaves it
//!   once the decision is made;
//! - a participant killed by a failpoint armed from the page is shown
//!   unreachable (topology, in-doubt view), and reachable again with
//!   nothing in doubt once restarted;
//! - with an admin token, an abort clicked without the token is refused and
//!   the tid stays undecided; with the token typed in, a dismissed confirm
//!   does nothing and an accepted one aborts it.
//!
//! Each test saves screenshots (PNG) in its cluster's temporary directory,
//! beside the processes' logs and Chromium's profile and log, and prints
//! their paths (`TWOPC_KEEP_TEST_DATA=1` keeps the directory). The first test
//! checks the harness itself on a small static page: that it does see
//! console errors, uncaught exceptions and dialogs, so that "no problems"
//! in the others means something.
//!
//! Every wait polls the page against a deadline; the page polls its API
//! every 1.5 s, so the waits allow several cycles on a loaded machine.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::time::{Duration, Instant};

use browser::{Chromium, STEP};
use common::*;
use twopc::cluster::ClusterOptions;
use twopc_client::{AdminToken, ConnectOptions, Decision};

/// How long the page may take to show a change: many of its 1.5 s poll
/// cycles, on a loaded 2-core machine.
const SHOW: Duration = Duration::from_secs(20);

const TOKEN: &str = "console-admin-t0ken";

/// A cluster of two partitions whose coordinator serves the console, with
/// `token` as the admin token if given; returns it and the console's URL.
async fn console_cluster(token: Option<&str>) -> (TestCluster, String) {
    let mut opts = ClusterOptions { partitions: 2, console: true, ..ClusterOptions::default() };
    if let Some(token) = token {
        opts.env.push(("TWOPC_ADMIN_TOKEN".into(), token.into()));
        opts.client = ConnectOptions { admin_token: AdminToken::new(Some(token)).unwrap(), ..Default::default() };
    }
    let tc = TestCluster::start(opts).await;
    let url = tc.cluster.console_url().expect("the coordinator prints its console's URL");
    (tc, url)
}

/// A temporary directory (for the harness's own test, which has no
/// cluster directory), kept when `TWOPC_KEEP_TEST_DATA` is set.
struct KeepDir(Option<tempfile::TempDir>);

impl KeepDir {
    fn new(name: &str) -> Self {
        KeepDir(Some(tempfile::Builder::new().prefix(&format!("twopc-browser-{name}-")).tempdir().unwrap()))
    }
    fn path(&self) -> &std::path::Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for KeepDir {
    fn drop(&mut self) {
        if std::env::var_os("TWOPC_KEEP_TEST_DATA").is_some()
            && let Some(d) = self.0.take()
        {
            eprintln!("browser data kept in {}", d.keep().display());
        }
    }
}

/// A CSS attribute-value selector's quoted value.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The CLI's `twopc begin`: a new tid.
fn cli_begin(tc: &TestCluster) -> String {
    let o = twopc_cli(tc, &["begin"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let tid = String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().trim().to_string();
    assert!(uuid::Uuid::parse_str(&tid).is_ok(), "{}", output_text(&o));
    tid
}

fn cli_ok(tc: &TestCluster, args: &[&str]) -> String {
    let o = twopc_cli(tc, args);
    assert_eq!(o.status.code(), Some(0), "twopc {args:?}: {}", output_text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Opens the console and waits for a first successful poll.
async fn open_console(b: &Chromium, url: &str) {
    b.open(url).await;
    b.wait_for(
        "the console's first poll",
        "Number(document.body.dataset.polls) >= 1 && document.getElementById('status').dataset.state === 'ok'",
        "document.getElementById('status').textContent",
        SHOW,
    )
    .await;
}

/// Asserts the page reported no console error, uncaught exception or error log entry.
fn assert_no_problems(b: &Chromium) {
    let problems = b.problems();
    assert!(problems.is_empty(), "the page reported problems: {problems:#?}");
}

/// A row of the live list for `tid`, as a JS expression (null when absent).
fn live_row(tid: &str) -> String {
    format!("document.querySelector('#live-txns tbody tr[data-tid={}]')", q(tid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_sees_console_errors_exceptions_and_answers_dialogs() {
    let page = r#"<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body>
<input id="name"><button id="ask">ask</button><div id="out"></div>
<script>
console.log("an ordinary log line");
console.error("boom-console", 42);
setTimeout(() => { throw new Error("boom-uncaught"); }, 10);
setTimeout(() => { Promise.reject(new Error("boom-rejected")); }, 20);
document.getElementById("ask").addEventListener("click", () => {
  document.getElementById("out").textContent = window.confirm("sure, " + document.getElementById("name").value + "?") ? "yes" : "no";
});
</script></body></html>"#;
    let server = StaticServer::start(page).await;
    let dir = KeepDir::new("harness");
    let b = Chromium::start(dir.path()).await;
    let pgid = b.pid();
    b.open(&server.url).await;

    // The three problems are seen, and only those (the log line is not one).
    let deadline = Instant::now() + STEP;
    while b.problems().len() < 3 {
        assert!(Instant::now() < deadline, "problems seen: {:?}", b.problems());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let problems = b.problems();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems.iter().any(|p| p.contains("console.Error") && p.contains("boom-console") && p.contains("42")));
    assert!(problems.iter().any(|p| p.contains("uncaught exception") && p.contains("boom-uncaught")));
    assert!(problems.iter().any(|p| p.contains("uncaught exception") && p.contains("boom-rejected")));

    // Typing, clicking, and the confirm dialog answered both ways.
    b.type_into("#name", "Ada").await;
    b.click("#ask").await;
    b.wait_for(
        "an accepted confirm",
        "document.getElementById('out').textContent === 'yes'",
        "document.getElementById('out').textContent",
        STEP,
    )
    .await;
    b.answer_dialogs(false);
    b.click("#ask").await;
    b.wait_for(
        "a dismissed confirm",
        "document.getElementById('out').textContent === 'no'",
        "document.getElementById('out').textContent",
        STEP,
    )
    .await;
    assert_eq!(b.dialogs(), ["sure, Ada?", "sure, Ada?"]);
    assert_eq!(b.eval::<String>("document.getElementById('name').value").await, "Ada");

    let png = dir.path().join("harness.png");
    assert!(b.screenshot(&png).await > 1000);
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG\r\n\x1a\n"));

    // Dropping the browser kills its whole process group.
    drop(b);
    // SAFETY: kill with signal 0 only checks whether the group exists.
    let alive = unsafe { libc::kill(-(pgid as libc::pid_t), 0) } == 0;
    assert!(!alive, "Chromium's process group {pgid} survived the drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_loads_cleanly_follows_a_cli_transaction_and_charts_a_workload() {
    let (tc, url) = console_cluster(None).await;
    let b = Chromium::start(&tc.cluster.dir).await;
    open_console(&b, &url).await;
    assert_eq!(b.eval::<String>("document.body.dataset.role").await, "single");
    b.wait_for(
        "both partitions reachable in the topology",
        "document.querySelectorAll('#topology tbody tr[data-reachable=\"true\"]').length === 2",
        "document.getElementById('topology').innerText",
        SHOW,
    )
    .await;

    // A transaction begun from the CLI appears in the live list...
    let tid = cli_begin(&tc);
    let key = tc.key_on(1, "browser");
    cli_ok(&tc, &["put", "--tid", &tid, &key, "v"]);
    b.wait_for(
        "the CLI's transaction in the live list",
        &format!("{} !== null", live_row(&tid)),
        "document.getElementById('live-txns').innerText",
        SHOW,
    )
    .await;
    assert_eq!(b.eval::<String>(&format!("{}.dataset.state", live_row(&tid))).await, "active");
    assert!(b.eval::<u64>("Number(document.getElementById('live-count').textContent)").await >= 1);
    b.screenshot(&tc.cluster.dir.join("live.png")).await;

    // ...and leaves it when committed.
    assert!(cli_ok(&tc, &["commit", "--tid", &tid]).starts_with("COMMITTED"));
    b.wait_for(
        "the committed transaction gone from the live list",
        &format!("{} === null", live_row(&tid)),
        "document.getElementById('live-txns').innerText",
        SHOW,
    )
    .await;

    // The tid lookup gives the decision a client would hear.
    b.type_into("#tid-lookup-input", &tid).await;
    b.click("#tid-lookup-button").await;
    b.wait_for(
        "the lookup's answer",
        "document.getElementById('tid-lookup-result').dataset.decision === 'COMMITTED'",
        "document.getElementById('tid-lookup-result').textContent",
        SHOW,
    )
    .await;

    // A short workload: the throughput chart plots its commits (the
    // sampler takes one sample a second; the page sums what it plotted).
    const COMMITS: u64 = 50;
    for i in 0..COMMITS {
        let k = tc.key_on((i % 2) as u32, &format!("w{i}"));
        let (_, outcome) = tc.write_txn(&[(&k, "x")]).await;
        assert!(matches!(outcome, twopc_client::Outcome::Committed), "{outcome:?}");
    }
    b.wait_for(
        "the workload's commits in the throughput chart",
        &format!("Number(document.getElementById('chart-throughput').dataset.committedTotal) >= {}", COMMITS + 1),
        "JSON.stringify(document.getElementById('chart-throughput').dataset)",
        SHOW,
    )
    .await;
    let points: u64 = b.eval("Number(document.getElementById('chart-throughput').dataset.points)").await;
    assert!(points >= 1, "{points}");
    // uPlot drew it: a canvas inside the chart's element.
    assert!(b.eval::<bool>("document.querySelector('#chart-throughput canvas') !== null").await);
    b.wait_for(
        "the latency chart's points",
        "Number(document.getElementById('chart-latency').dataset.points) >= 1",
        "JSON.stringify(document.getElementById('chart-latency').dataset)",
        SHOW,
    )
    .await;

    // Several poll cycles later, still nothing wrong on the page.
    let polls: u64 = b.eval("Number(document.body.dataset.polls)").await;
    b.wait_for(
        "two more polls",
        &format!("Number(document.body.dataset.polls) >= {}", polls + 2),
        "document.body.dataset.polls",
        SHOW,
    )
    .await;
    assert_eq!(b.eval::<String>("document.getElementById('status').dataset.state").await, "ok");
    b.screenshot(&tc.cluster.dir.join("overview.png")).await;
    assert_no_problems(&b);
}

/// The coordinator's step between the participants' YES votes and its forced decision.
const HOLD: &str = "coordinator::before_decision_forced";

/// Arms (or with empty `actions` disarms) failpoint `name` at `target`
/// (`coordinator` or a partition number) with the page's failpoint form,
/// accepting its confirm, and waits for the page to report success.
async fn page_failpoint(b: &Chromium, target: &str, name: &str, actions: &str) {
    let dialogs = b.dialogs().len();
    b.run(&format!(
        "(() => {{ const t = document.getElementById('fp-target'); t.value = {}; \
         t.dispatchEvent(new Event('change')); document.getElementById('fp-name').value = {}; \
         document.getElementById('action-result').textContent = ''; }})()",
        q(target),
        q(name)
    ))
    .await;
    assert_eq!(
        b.eval::<String>("document.getElementById('fp-name').value").await,
        name,
        "no such failpoint in the menu"
    );
    let button = if actions.is_empty() {
        "#fp-disarm"
    } else {
        b.type_into("#fp-actions", actions).await;
        "#fp-arm"
    };
    b.click(button).await;
    let want = if actions.is_empty() { "disarmed " } else { "armed " };
    b.wait_for(
        &format!("the page's {want}{name}"),
        &format!(
            "document.getElementById('action-result').dataset.state === 'ok' && \
             document.getElementById('action-result').textContent.startsWith({})",
            q(&format!("{want}{name}"))
        ),
        "document.getElementById('action-result').textContent",
        SHOW,
    )
    .await;
    assert_eq!(b.dialogs().len(), dialogs + 1, "the action was confirmed once: {:?}", b.dialogs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tid_held_prepared_by_a_failpoint_is_in_the_in_doubt_view() {
    let (tc, url) = console_cluster(None).await;
    let b = Chromium::start(&tc.cluster.dir).await;
    open_console(&b, &url).await;
    b.wait_for(
        "an empty in-doubt view",
        "document.querySelector('#in-doubt tbody tr.empty') !== null",
        "document.getElementById('in-doubt').innerText",
        SHOW,
    )
    .await;

    // Some history for the charts (and the README's screenshot): commits
    // and a few aborts by the application, in rounds that each land in a
    // later sample than the one before (the page plots one more point).
    for round in 0..3u32 {
        let points: u64 = b.eval("Number(document.getElementById('chart-throughput').dataset.points)").await;
        for i in round * 20..round * 20 + 10 + 5 * round {
            let txn = tc.client.begin(Some(Duration::from_secs(30))).await.unwrap();
            txn.put(tc.key_on(i % 2, &format!("bg{i}")).as_bytes(), b"x").await.unwrap();
            if i % 6 == 5 {
                txn.abort().await.unwrap()
            } else {
                txn.commit().await.unwrap();
            }
        }
        b.wait_for(
            "a new point in the throughput chart",
            &format!("Number(document.getElementById('chart-throughput').dataset.points) > {points}"),
            "JSON.stringify(document.getElementById('chart-throughput').dataset)",
            SHOW,
        )
        .await;
    }

    // Both participants prepare, then the coordinator's step sleeps before
    // it forces the decision: the tid is in doubt at both.
    let keys = [tc.key_on(0, "held"), tc.key_on(1, "held")];
    let txn = tc.client.begin(Some(Duration::from_secs(120))).await.unwrap();
    for k in &keys {
        txn.put(k.as_bytes(), b"v").await.unwrap();
    }
    let tid = txn.tid().to_string();
    // Armed from the page's own form (its confirm accepted).
    page_failpoint(&b, "coordinator", HOLD, "sleep(60000)").await;
    let commit = tokio::spawn(async move { txn.commit().await });
    for p in 0..2 {
        b.wait_for(
            &format!("the held tid in doubt at partition {p}"),
            &format!(
                "document.querySelector('#in-doubt tbody tr[data-tid={}][data-partition=\"{p}\"]') !== null",
                q(&tid)
            ),
            "document.getElementById('in-doubt').innerText",
            SHOW,
        )
        .await;
    }
    // The live list shows it too, past its prepare (no abort button: the
    // coordinator may already be deciding).
    b.wait_for(
        "the held tid in the live list",
        &format!("{} !== null", live_row(&tid)),
        "document.getElementById('live-txns').innerText",
        SHOW,
    )
    .await;
    b.screenshot(&tc.cluster.dir.join("in-doubt.png")).await;
    assert_no_problems(&b);

    // Disarming ends the sleep: the tid commits and leaves the view.
    page_failpoint(&b, "coordinator", HOLD, "").await;
    let outcome = tokio::time::timeout(SETTLE, commit).await.expect("the commit finishes").unwrap().unwrap();
    assert!(matches!(outcome, twopc_client::Outcome::Committed), "{outcome:?}");
    b.wait_for(
        "the decided tid gone from the in-doubt view",
        &format!("document.querySelector('#in-doubt tbody tr[data-tid={}]') === null", q(&tid)),
        "document.getElementById('in-doubt').innerText",
        SHOW,
    )
    .await;
    assert_no_problems(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_without_the_admin_token_is_refused_and_with_it_needs_a_confirm() {
    let (tc, url) = console_cluster(Some(TOKEN)).await;
    let b = Chromium::start(&tc.cluster.dir).await;
    let tid = cli_begin(&tc);
    let key = tc.key_on(0, "tok");
    cli_ok(&tc, &["put", "--tid", &tid, &key, "v"]);
    let uuid = uuid::Uuid::parse_str(&tid).unwrap();

    // Without the token the page asks for it and shows no data.
    b.open(&url).await;
    b.wait_for(
        "the page asking for the token",
        "document.getElementById('status').dataset.state === 'auth' && !document.getElementById('token-form').hidden",
        "document.getElementById('status').textContent",
        SHOW,
    )
    .await;
    assert!(b.eval::<bool>(&format!("{} === null", live_row(&tid))).await);

    // An abort confirmed without the token is refused, and changes nothing.
    b.type_into("#abort-tid", &tid).await;
    b.click("#abort-button").await;
    b.wait_for(
        "the refusal",
        "document.getElementById('action-result').dataset.state === 'error'",
        "document.getElementById('action-result').textContent",
        SHOW,
    )
    .await;
    let refusal: String = b.eval("document.getElementById('action-result').textContent").await;
    assert!(refusal.contains("refused") && refusal.contains("401"), "{refusal}");
    assert!(b.dialogs().iter().any(|d| d.contains(&tid)), "{:?}", b.dialogs());
    assert_eq!(tc.client.status(uuid).await.unwrap(), Decision::Pending, "a refused abort decided nothing");
    b.screenshot(&tc.cluster.dir.join("refused.png")).await;
    // The refusals were expected (401s): nothing else went wrong.
    let others: Vec<String> = b.problems().into_iter().filter(|p| !p.contains("401")).collect();
    assert!(others.is_empty(), "{others:#?}");
    b.clear_problems();

    // With the token typed in, the page shows the tid.
    b.type_into("#token", TOKEN).await;
    b.click("#token-save").await;
    b.wait_for(
        "the tid in the live list once the token is in",
        &format!("{} !== null && document.getElementById('status').dataset.state === 'ok'", live_row(&tid)),
        "document.getElementById('status').textContent",
        SHOW,
    )
    .await;
    let button = format!("#live-txns button[data-action=\"abort\"][data-tid={}]", q(&tid));

    // A dismissed confirm sends nothing.
    b.answer_dialogs(false);
    let dialogs = b.dialogs().len();
    b.click(&button).await;
    let deadline = Instant::now() + STEP;
    while b.dialogs().len() == dialogs {
        assert!(Instant::now() < deadline, "no confirm dialog for the abort");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tc.client.status(uuid).await.unwrap(), Decision::Pending, "a dismissed confirm aborted");

    // An accepted one aborts it.
    b.answer_dialogs(true);
    b.click(&button).await;
    b.wait_for(
        "the abort's success",
        "document.getElementById('action-result').dataset.state === 'ok' && document.getElementById('action-result').textContent.startsWith('aborted')",
        "document.getElementById('action-result').textContent",
        SHOW,
    )
    .await;
    match tc.client.status(uuid).await.unwrap() {
        Decision::Aborted { kind, reason } => {
            assert_eq!(kind, twopc_client::AbortKind::Operator, "{reason}")
        }
        d => panic!("the abort clicked with the token did not abort: {d:?}"),
    }
    b.wait_for(
        "the aborted tid gone from the live list",
        &format!("{} === null", live_row(&tid)),
        "document.getElementById('live-txns').innerText",
        SHOW,
    )
    .await;
    b.screenshot(&tc.cluster.dir.join("aborted.png")).await;
    assert_no_problems(&b);
}

/// A tiny HTTP server on loopback answering every request with one page.
struct StaticServer {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl StaticServer {
    async fn start(page: &'static str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    // Read the request head, then answer and close.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                        page.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        StaticServer { url, task }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_injected_from_the_page_and_its_recovery_show_in_the_topology() {
    let (mut tc, url) = console_cluster(None).await;
    let b = Chromium::start(&tc.cluster.dir).await;
    open_console(&b, &url).await;
    let reachable = |p: u32, yes: bool| {
        format!(
            "document.querySelector('#topology tbody tr[data-partition=\"{p}\"][data-reachable=\"{yes}\"]') !== null"
        )
    };
    b.wait_for("partition 1 reachable", &reachable(1, true), "document.getElementById('topology').innerText", SHOW)
        .await;

    // Partition 1 is killed by a failpoint armed from the page, once it has
    // made its vote durable.
    page_failpoint(&b, "1", "participant::after_prepare_durable", "return").await;
    let keys = [tc.key_on(0, "crash"), tc.key_on(1, "crash")];
    let txn = tc.client.begin(Some(Duration::from_secs(60))).await.unwrap();
    for k in &keys {
        txn.put(k.as_bytes(), b"v").await.unwrap();
    }
    let commit = tokio::spawn(async move { txn.commit().await });
    b.wait_for(
        "partition 1 shown unreachable",
        &reachable(1, false),
        "document.getElementById('topology').innerText",
        SHOW,
    )
    .await;
    assert!(b.eval::<bool>(&reachable(0, true)).await, "partition 0 stays reachable");
    b.wait_for(
        "partition 1's in-doubt listing shown as unreachable",
        "document.querySelector('#in-doubt tbody tr.error[data-partition=\"1\"]') !== null",
        "document.getElementById('in-doubt').innerText",
        SHOW,
    )
    .await;
    b.screenshot(&tc.cluster.dir.join("crash.png")).await;

    // Restarted on its data, it registers again: the page shows it back
    // and, once the tid is decided everywhere, nothing in doubt.
    restart_participant(&mut tc, 1).await;
    b.wait_for(
        "partition 1 reachable again",
        &reachable(1, true),
        "document.getElementById('topology').innerText",
        SHOW,
    )
    .await;
    let outcome = tokio::time::timeout(SETTLE, commit).await.expect("the commit answers");
    tc.wait_settled().await;
    let applied = all_or_nothing(&tc, &[&keys[0], &keys[1]], "v").await;
    eprintln!("the crashed tid: {outcome:?}, applied: {applied}");
    // Whatever the client heard is what happened.
    match outcome {
        Ok(Ok(twopc_client::Outcome::Committed)) => assert!(applied, "COMMITTED but not applied"),
        Ok(Ok(twopc_client::Outcome::Aborted { .. })) => assert!(!applied, "ABORTED but applied"),
        _ => {}
    }
    b.wait_for(
        "an empty in-doubt view after the recovery",
        "document.querySelector('#in-doubt tbody tr.empty') !== null",
        "document.getElementById('in-doubt').innerText",
        SHOW,
    )
    .await;
    b.screenshot(&tc.cluster.dir.join("recovered.png")).await;
    assert_no_problems(&b);
}
