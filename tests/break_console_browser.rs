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
