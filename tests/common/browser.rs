//! A real browser for the web console's tests: Debian's headless Chromium
//! (`/usr/bin/chromium`, package `chromium`, which `./test` installs when
//! missing), driven over the DevTools protocol by `chromiumoxide` (built
//! without its `fetcher`: nothing here downloads a browser).
//!
//! - Chromium runs with the flags this machine needs (headless, no sandbox
//!   as root, no GPU, no QUIC, none of its background connections to
//!   Google's hosts) on a fresh profile in the test's directory, in a
//!   process group of its own: dropping [`Chromium`] SIGKILLs the whole
//!   group (renderers, zygotes, the GPU process) and reaps it, on a panic
//!   too; the parent-death signal kills the browser if the test process dies.
//! - Every step has a time limit ([`STEP`]); waits poll the page's DOM
//!   against a deadline ([`Chromium::wait_for`]), never a fixed sleep.
//! - Everything the page reports as wrong is collected from the moment it
//!   starts loading ([`Chromium::problems`]): `console.error`/`console.assert`
//!   calls (`Runtime.consoleAPICalled`), uncaught exceptions and unhandled
//!   rejections (`Runtime.exceptionThrown`) and the browser's own error
//!   entries such as a failed resource load (`Log.entryAdded`).
//! - JavaScript dialogs (`window.confirm`) are answered as
//!   [`Chromium::answer_dialogs`] says (`Page.handleJavaScriptDialog`) and
//!   their messages recorded ([`Chromium::dialogs`]).
//!
//! If Chromium is not installed the test fails and says how to get it:
//! CI installs it, so a missing browser is an error, never a skip.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chromiumoxide::cdp::browser_protocol::log::{EventEntryAdded, LogEntryLevel};
use chromiumoxide::cdp::browser_protocol::page::{
    CaptureScreenshotFormat, EventJavascriptDialogOpening, HandleJavaScriptDialogParams,
};
use chromiumoxide::cdp::js_protocol::runtime::{ConsoleApiCalledType, EventConsoleApiCalled, EventExceptionThrown};
use chromiumoxide::handler::HandlerConfig;
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::{Browser, Page};
use futures::StreamExt;

/// The longest any one browser step (start, navigation, a script, a click,
/// a screenshot) may take, and the default for [`Chromium::wait_for`].
/// Generous for a loaded 2-core machine; a step normally takes milliseconds.
pub const STEP: Duration = Duration::from_secs(20);

/// The flags Chromium needs here (see the machine notes): as root it needs
/// `--no-sandbox`; without the background-networking flags it keeps trying
/// to reach Google's hosts, which this machine's closed network refuses.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--window-size=1280,960",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
];

/// The Chromium binary: `TWOPC_CHROMIUM` if set, else `chromium` on `PATH`
/// (Debian's `/usr/bin/chromium`). Panics with what to do when there is none.
pub fn chromium_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TWOPC_CHROMIUM") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "Chromium is not installed, and the web console's browser tests need it. Run ./test \
             (it installs Debian's `chromium` package when missing), or `sudo apt-get install chromium`, \
             or set TWOPC_CHROMIUM to a Chromium binary"
        )
    })
}

/// What the page has reported as wrong, and the dialogs it opened.
#[derive(Default)]
struct Seen {
    problems: Vec<String>,
    dialogs: Vec<String>,
}

/// A headless Chromium with one page (tab), killed with its whole process
/// group when dropped.
pub struct Chromium {
    child: Child,
    browser: Browser,
    page: Page,
    seen: Arc<Mutex<Seen>>,
    accept_dialogs: Arc<Mutex<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    log: PathBuf,
}

impl Chromium {
    /// Starts Chromium with its profile and log (`chromium.log`) under
    /// `dir`, connects to it and opens a blank page whose problems and
    /// dialogs are watched from now on.
    pub async fn start(dir: &Path) -> Chromium {
        let exe = chromium_binary();
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).unwrap();
        let log = dir.join("chromium.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(&exe);
        cmd.args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            // Its own process group, so that Drop kills every process it forks.
            .process_group(0);
        // The parent-death signal follows the forking thread: a test's
        // runtime threads live as long as the test, and so as the browser.
        // SAFETY: prctl is async-signal-safe and only changes the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let mut starting = Starting { child: Some(child) };

        // Chromium writes its DevTools port and path to this file once it listens.
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + STEP;
        let ws = loop {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                break format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
            }
            let child = starting.child.as_mut().unwrap();
            if let Ok(Some(status)) = child.try_wait() {
                panic!("Chromium exited ({status}) before it listened; {}:\n{}", log.display(), tail(&log));
            }
            assert!(
                Instant::now() < deadline,
                "Chromium did not open its DevTools port within {STEP:?}; {}:\n{}",
                log.display(),
                tail(&log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        let config = HandlerConfig { request_timeout: STEP, viewport: None, ..HandlerConfig::default() };
        let (browser, mut handler) = step("connect to Chromium", Browser::connect_with_config(ws, config)).await;
        // The connection's event loop; its errors are messages this
        // client version does not know (a newer Chromium), not failures.
        let mut tasks = vec![tokio::spawn(async move { while handler.next().await.is_some() {} })];
        let page = step("open a page", browser.new_page("about:blank")).await;

        let seen = Arc::new(Mutex::new(Seen::default()));
        let accept_dialogs = Arc::new(Mutex::new(true));
        let mut console = step("watch the console", page.event_listener::<EventConsoleApiCalled>()).await;
        let s = seen.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(e) = console.next().await {
                if matches!(e.r#type, ConsoleApiCalledType::Error | ConsoleApiCalledType::Assert) {
                    let args: Vec<String> = e
                        .args
                        .iter()
                        .map(|a| {
                            a.value
                                .as_ref()
                                .map(|v| v.to_string())
                                .or_else(|| a.description.clone())
                                .unwrap_or_default()
                        })
                        .collect();
                    s.lock().unwrap().problems.push(format!("console.{:?}: {}", e.r#type, args.join(" ")));
                }
            }
        }));
        let mut exceptions = step("watch exceptions", page.event_listener::<EventExceptionThrown>()).await;
        let s = seen.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(e) = exceptions.next().await {
                let d = &e.exception_details;
                let what = d.exception.as_ref().and_then(|x| x.description.clone()).unwrap_or_default();
                let at = d.url.clone().unwrap_or_default();
                s.lock().unwrap().problems.push(format!(
                    "uncaught exception: {} {what} (at {at}:{}:{})",
                    d.text,
                    d.line_number + 1,
                    d.column_number + 1
                ));
            }
        }));
        let mut entries = step("watch the log", page.event_listener::<EventEntryAdded>()).await;
        let s = seen.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(e) = entries.next().await {
                if matches!(e.entry.level, LogEntryLevel::Error) {
                    let url = e.entry.url.clone().unwrap_or_default();
                    s.lock().unwrap().problems.push(format!("log ({:?}): {} {url}", e.entry.source, e.entry.text));
                }
            }
        }));
        let mut dialogs = step("watch dialogs", page.event_listener::<EventJavascriptDialogOpening>()).await;
        let (s, accept, p) = (seen.clone(), accept_dialogs.clone(), page.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(e) = dialogs.next().await {
                s.lock().unwrap().dialogs.push(e.message.clone());
                let yes = *accept.lock().unwrap();
                // The page is blocked until the dialog is answered.
                let _ = p.execute(HandleJavaScriptDialogParams::new(yes)).await;
            }
        }));

        let child = starting.child.take().unwrap();
        Chromium { child, browser, page, seen, accept_dialogs, tasks, log }
    }

    /// Opens `url` and waits until it has loaded.
    pub async fn open(&self, url: &str) {
        step(&format!("open {url}"), self.page.goto(url)).await;
    }

    /// Runs `js` (an expression; a promise is awaited) in the page and
    /// returns its value.
    pub async fn eval<T: serde::de::DeserializeOwned>(&self, js: &str) -> T {
        let result = step(&format!("run `{js}`"), self.page.evaluate(js)).await;
        result.into_value().unwrap_or_else(|e| panic!("`{js}` returned an unexpected value: {e}"))
    }

    /// Runs `js` for its effects.
    pub async fn run(&self, js: &str) {
        step(&format!("run `{js}`"), self.page.evaluate(js)).await;
    }

    /// Polls the boolean expression `js` until it is true, within
    /// `timeout`; `what` names the condition in the failure, which also
    /// shows what `show` evaluates to and the page's problems.
    pub async fn wait_for(&self, what: &str, js: &str, show: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now: Result<bool, String> = match tokio::time::timeout(STEP, self.page.evaluate(js)).await {
                Ok(Ok(v)) => v.into_value::<bool>().map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {STEP:?}")),
            };
            if now == Ok(true) {
                return;
            }
            if Instant::now() >= deadline {
                let shown: String = match tokio::time::timeout(STEP, self.page.evaluate(show)).await {
                    Ok(Ok(v)) => v.value().map(|v| v.to_string()).unwrap_or_default(),
                    _ => "?".into(),
                };
                panic!(
                    "{what}: `{js}` still {now:?} after {timeout:?}; `{show}` = {shown}; page problems: {:?}",
                    self.problems()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element `selector` matches (waiting for it to exist) with
    /// a real mouse click at its centre. A page that re-renders may replace
    /// the element between finding and clicking it: then it is found again,
    /// within [`STEP`].
    pub async fn click(&self, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let exists = format!("document.querySelector({sel}) !== null");
        let deadline = Instant::now() + STEP;
        loop {
            self.wait_for(&format!("{selector} to click"), &exists, "null", STEP).await;
            let clicked = tokio::time::timeout(STEP, async {
                let element = self.page.find_element(selector).await?;
                element.click().await.map(|_| ())
            })
            .await;
            match clicked {
                Ok(Ok(())) => return,
                Ok(Err(e)) if Instant::now() < deadline => {
                    eprintln!("browser: click {selector}: {e}; trying again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(e)) => panic!("browser: click {selector}: {e}"),
                Err(_) => panic!("browser: click {selector}: no answer within {STEP:?}"),
            }
        }
    }

    /// Clicks the input `selector` matches and types `text` with key events.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let element = step(&format!("find {selector}"), self.page.find_element(selector)).await;
        step(&format!("focus {selector}"), element.click()).await;
        step(&format!("type into {selector}"), element.type_str(text)).await;
    }

    /// Whether JavaScript dialogs (confirm, alert) are accepted (the
    /// default) or dismissed from now on.
    pub fn answer_dialogs(&self, accept: bool) {
        *self.accept_dialogs.lock().unwrap() = accept;
    }

    /// The messages of the dialogs the page opened so far.
    pub fn dialogs(&self) -> Vec<String> {
        self.seen.lock().unwrap().dialogs.clone()
    }

    /// What the page reported as wrong so far: console errors, uncaught
    /// exceptions, error log entries (e.g. a resource that failed to load).
    pub fn problems(&self) -> Vec<String> {
        self.seen.lock().unwrap().problems.clone()
    }

    /// Forgets the problems seen so far (e.g. the expected refusals of a
    /// page used without its token).
    pub fn clear_problems(&self) {
        self.seen.lock().unwrap().problems.clear();
    }

    /// Saves a PNG of the whole page at `path` (printed) and returns its size in bytes.
    pub async fn screenshot(&self, path: &Path) -> usize {
        let params = ScreenshotParams::builder().format(CaptureScreenshotFormat::Png).full_page(true).build();
        let png = step("take a screenshot", self.page.screenshot(params)).await;
        std::fs::write(path, &png).unwrap();
        println!("screenshot: {} ({} bytes)", path.display(), png.len());
        png.len()
    }

    /// Chromium's process id, which is also its process group's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Chromium's own log (for failure messages).
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        kill_group(&mut self.child);
        let _ = &self.browser;
    }
}

/// The browser while it starts: killed if the start fails.
struct Starting {
    child: Option<Child>,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_group(child);
        }
    }
}

/// SIGKILLs `child`'s process group (it leads its own) and reaps it.
fn kill_group(child: &mut Child) {
    // SAFETY: kill has no memory-safety preconditions. The child is not
    // reaped yet (we reap it below), so its pid, which is the group's id,
    // cannot have been reused.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
    // Its children die as orphans, reaped by init: wait (bounded) until
    // the group is gone, so nothing of it outlives the test.
    let deadline = Instant::now() + Duration::from_secs(5);
    // SAFETY: as above; signal 0 only checks whether the group exists.
    while unsafe { libc::kill(-(child.id() as libc::pid_t), 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Awaits one browser step within [`STEP`], panicking with `what` if it
/// fails or takes longer.
async fn step<T, E: std::fmt::Display>(what: &str, f: impl std::future::Future<Output = Result<T, E>>) -> T {
    match tokio::time::timeout(STEP, f).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("browser: {what}: {e}"),
        Err(_) => panic!("browser: {what}: no answer within {STEP:?}"),
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
