//! Attacks on the web console's page in headless Chromium, against a real
//! cluster (what an operator sees when something goes wrong).

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::time::Duration;

use browser::Chromium;
use common::*;
use twopc::cluster::ClusterOptions;

const SHOW: Duration = Duration::from_secs(20);
const STATUS: &str =
    "document.getElementById('status').dataset.state + ': ' + document.getElementById('status').textContent";

/// A hung coordinator (frozen: it keeps its sockets, answers nothing) is
/// what an operator opens the console for. The page's requests had no
/// time limit, so its poll waited for ever and the page kept saying
/// `updated HH:MM:SS` (state ok) over stale data. Now a request that gets
/// no answer within a few seconds is given up on and the page says so; when
/// the coordinator answers again the page recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_when_the_coordinator_stops_answering() {
    let opts = ClusterOptions { partitions: 1, console: true, ..ClusterOptions::default() };
    let mut tc = TestCluster::start(opts).await;
    let url = tc.cluster.console_url().expect("the console's URL");
    let b = Chromium::start(&tc.cluster.dir).await;
    b.open(&url).await;
    let ok = "Number(document.body.dataset.polls) >= 1 && document.getElementById('status').dataset.state === 'ok'";
    b.wait_for("the console's first poll", ok, STATUS, SHOW).await;

    tc.cluster.coordinator.pause();
    let said = "document.getElementById('status').dataset.state === 'error' \
                && document.getElementById('status').textContent.includes('did not answer')";
    b.wait_for("the page to say the coordinator does not answer", said, STATUS, SHOW).await;
    let png = tc.cluster.dir.join("hung.png");
    b.screenshot(&png).await;
    eprintln!("screenshot: {}", png.display());

    tc.cluster.coordinator.resume();
    let polls: u64 = b.eval("Number(document.body.dataset.polls)").await;
    let again = format!("{ok} && Number(document.body.dataset.polls) > {polls}");
    b.wait_for("the page to recover once the coordinator answers", &again, STATUS, SHOW).await;
    tc.wait_settled().await;
}

/// Bytes a client chose (an abort reason) shown in the page stay text: a
/// reason holding markup is displayed as written and runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_in_an_abort_reason_is_shown_as_text() {
    let opts = ClusterOptions { partitions: 1, console: true, ..ClusterOptions::default() };
    let tc = TestCluster::start(opts).await;
    let url = tc.cluster.console_url().expect("the console's URL");
    let evil =
        r#"<img src=x onerror="document.body.dataset.pwned='1'"><script>document.body.dataset.pwned='2'</script>"#;
    let txn = tc.client.begin(None).await.unwrap();
    txn.put(tc.key_on(0, "<b>x</b>").as_bytes(), b"<i>v</i>").await.unwrap();
    txn.abort_because(twopc_client::AbortKind::OperationFailed, evil).await.unwrap();
    let tid = txn.tid().to_string();

    let b = Chromium::start(&tc.cluster.dir).await;
    b.open(&url).await;
    let ok = "Number(document.body.dataset.polls) >= 1 && document.getElementById('status').dataset.state === 'ok'";
    b.wait_for("the console's first poll", ok, STATUS, SHOW).await;
    b.type_into("#tid-lookup-input", &tid).await;
    b.run("document.getElementById('tid-lookup').requestSubmit()").await;
    let out = "document.getElementById('tid-lookup-result')";
    b.wait_for(
        "the lookup's answer",
        &format!("{out}.dataset.decision === 'ABORTED'"),
        &format!("{out}.textContent"),
        SHOW,
    )
    .await;
    let text: String = b.eval(&format!("{out}.textContent")).await;
    assert!(text.contains(evil), "the reason is shown as written: {text}");
    let children: u64 = b.eval(&format!("{out}.children.length")).await;
    let pwned: bool =
        b.eval("document.body.dataset.pwned !== undefined || document.querySelector('img') !== null").await;
    assert_eq!((children, pwned), (0, false), "markup in the reason became elements");
    assert!(b.problems().is_empty(), "{:?}", b.problems());
}
