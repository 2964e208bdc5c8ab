//! Named crash points for crash-injection tests and demos.
//!
//! Built on tikv's `fail` crate. With the `failpoints` feature off (a
//! production build), [`hit`] compiles to nothing and nothing can arm a
//! point. With it on, points are armed at process start from the
//! `FAILPOINTS` environment variable (`name=action;name=action`) or at run
//! time through the `SetFailpoint` admin RPC.
//!
//! Actions are fail-rs actions. `return(abort)` (or bare `return`) kills the
//! process at once with SIGKILL, exactly like an external `kill -9`: no
//! destructor runs and nothing is flushed. `return(error)` makes the step
//! fail with an error. Counts (`1*return(abort)`), probabilities
//! (`20%return(abort)`) and chains (`1*sleep(100)->return(abort)`) come
//! from fail-rs.
//!
//! Rule: a failpoint pauses **the step, not the process**. fail-rs runs
//! `sleep(ms)` and `delay(ms)` as a blocking `thread::sleep` (or a busy
//! loop) and `pause` as a blocking wait, on the thread that reached the
//! point: with a single-threaded runtime that froze the whole process, so
//! other requests, health checks, and even the `SetFailpoint` call that
//! would disarm the point waited behind it. So [`configure`] rewrites those
//! three actions into `return` actions carrying a marker, and [`hit`] (an
//! `async fn`) awaits a tokio timer instead: only the step that reached
//! the point waits. A `sleep`/`delay` ends after its time or as soon as
//! the point is disarmed or re-armed, whichever comes first; a `pause`
//! ends when the point is disarmed or re-armed (as in fail-rs).
//!
//! Rule: **no `panic` action.** A panic unwinds only the tokio task that
//! reached the point and the process keeps serving with that step half
//! done (at `coordinator::after_commit_acked` a committed transaction stays
//! `committing` in memory for ever, its acknowledgement never recorded):
//! neither a crash nor a fault the protocol knows. [`configure`] refuses it
//! and names `return`, which kills the process as a crash does.

// Without failpoints nothing is armed: the rewriting and waiting below go unused.
#![cfg_attr(not(feature = "failpoints"), allow(dead_code, unused_imports))]

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// The `return` argument a `sleep(ms)` or `delay(ms)` action is rewritten to,
/// followed by the milliseconds.
const SLEEP_MARKER: &str = "twopc-sleep-ms:";
/// The `return` argument a `pause` action is rewritten to.
const PAUSE_MARKER: &str = "twopc-pause";

/// How many times each point was (re)configured: a sleeping or paused step
/// ends when its point's count changes. Every change is announced on
/// [`CHANGED`].
static GENERATIONS: LazyLock<Mutex<HashMap<String, u64>>> = LazyLock::new(Default::default);
static CHANGED: LazyLock<tokio::sync::watch::Sender<()>> = LazyLock::new(|| tokio::sync::watch::channel(()).0);

/// Whether any point was ever configured in this process. [`hit`] and
/// [`value`] return at once while it is false, which is always in a
/// process nobody arms: the commit path passes several points per
/// transaction, and each evaluation took two global locks (the generation
/// map's mutex and fail-rs's registry) and a string hash. Set before a
/// point is armed, so a hit that reads `false` ran before the arming.
static EVER_CONFIGURED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn generation(name: &str) -> u64 {
    GENERATIONS.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied().unwrap_or(0)
}

fn bump(name: &str) {
    *GENERATIONS.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_string()).or_default() += 1;
    CHANGED.send_replace(());
}

/// Resolves once failpoint `name` is configured again (disarmed or re-armed)
/// after `since` (its generation when the step reached it).
async fn reconfigured(name: &str, since: u64) {
    let mut changed = CHANGED.subscribe();
    while generation(name) == since {
        if changed.changed().await.is_err() {
            // The sender is a static: never dropped.
            std::future::pending::<()>().await;
        }
    }
}

/// Rewrites the blocking fail-rs tasks of an action chain
/// (`[p%][cnt*]task[(arg)]` joined by `->`) into `return` tasks that
/// [`hit`] awaits; everything else is passed through unchanged. A bad
/// duration is refused here, as fail-rs would, and so is `panic` (see the
/// module docs).
fn rewrite(actions: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for action in actions.split("->") {
        let action = action.trim();
        let (head, args) = match action.split_once('(') {
            Some((head, rest)) => (head, rest.strip_suffix(')')),
            None => (action, None),
        };
        // The task is what follows the optional `p%` and `cnt*` prefixes.
        let task_at = head.rfind(['%', '*']).map_or(0, |i| i + 1);
        let (prefix, task) = head.split_at(task_at);
        let rewritten = match task.trim() {
            "sleep" | "delay" => {
                let ms = args
                    .and_then(|a| a.trim().parse::<u64>().ok())
                    .ok_or_else(|| format!("{task}(MS) needs a whole number of milliseconds, got {action:?}"))?;
                format!("{prefix}return({SLEEP_MARKER}{ms})")
            }
            "pause" => format!("{prefix}return({PAUSE_MARKER})"),
            "panic" => {
                return Err(format!(
                    "{action:?}: panic would unwind only the task at that step and leave the process serving \
                     with the step half done; use return to kill the process (a crash)"
                ));
            }
            _ => action.to_string(),
        };
        out.push(rewritten);
    }
    Ok(out.join("->"))
}

/// What a failpoint asks its step to do when it does not kill the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected(pub String);

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failpoint {} injected an error", self.0)
    }
}

/// Evaluates the failpoint `name`: kills the process, waits (only this
/// step: see the module doc), or returns an injected error, as armed.
/// Unarmed (or in a build without failpoints) it returns `Ok(())` at once.
#[allow(unused_variables)]
pub async fn hit(name: &'static str) -> Result<(), Injected> {
    #[cfg(feature = "failpoints")]
    {
        if !EVER_CONFIGURED.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let since = generation(name);
        let Some(arg) = fail::eval(name, |arg| arg) else { return Ok(()) };
        match arg.as_deref() {
            None | Some("") | Some("abort") | Some("kill") => kill_self(name),
            Some(PAUSE_MARKER) => {
                tracing::info!(failpoint = name, "failpoint paused this step until it is disarmed");
                reconfigured(name, since).await;
            }
            Some(a) if a.starts_with(SLEEP_MARKER) => {
                let ms = a[SLEEP_MARKER.len()..].parse::<u64>().unwrap_or(0);
                tracing::info!(failpoint = name, ms, "failpoint: this step waits; the process keeps serving");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    _ = reconfigured(name, since) => {}
                }
            }
            Some(_) => return Err(Injected(name.to_string())),
        }
    }
    Ok(())
}

/// The argument the failpoint `name` is armed with (`return(ARG)`), without
/// acting on it: for test hooks that take a value (e.g.
/// [`crate::disk_full::PageLimit`]). `None` when unarmed, and always in a
/// build without failpoints.
#[allow(unused_variables)]
pub fn value(name: &'static str) -> Option<String> {
    #[cfg(feature = "failpoints")]
    {
        if !EVER_CONFIGURED.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        fail::fail_point!(name, |arg: Option<String>| arg);
    }
    None
}

#[cfg(feature = "failpoints")]
fn kill_self(name: &str) -> ! {
    eprintln!("failpoint {name}: killing the process (SIGKILL)");
    // SAFETY: getpid and kill have no preconditions; SIGKILL cannot be caught.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// Whether this build carries failpoints at all.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Arms failpoints from the `FAILPOINTS` environment variable. Call once at
/// process start with the names this process has (`known`). Returns an
/// error for a malformed spec, a name this process does not have (a typo
/// or the other role's point would otherwise arm nothing, silently), and
/// when failpoints are requested from a build that has none.
pub fn setup_from_env(known: &[&str]) -> Result<(), String> {
    let spec = std::env::var("FAILPOINTS").unwrap_or_default();
    if spec.trim().is_empty() {
        return Ok(());
    }
    for item in spec.split(';').filter(|s| !s.trim().is_empty()) {
        let (name, actions) =
            item.split_once('=').ok_or_else(|| format!("FAILPOINTS entry {item:?} is not name=action"))?;
        check_known(name.trim(), known)?;
        configure(name.trim(), actions.trim())?;
    }
    Ok(())
}

/// The failpoint names a crate's code uses: every string literal that
/// starts with one of `prefixes` (e.g. `coordinator::`) in the `.rs` files
/// under `dir`, except `lib.rs` (where the crate lists them). For each
/// server's test that its list of failpoints is exactly what its code hits.
#[doc(hidden)]
pub fn names_in_sources(dir: &std::path::Path, prefixes: &[&str]) -> std::collections::BTreeSet<String> {
    fn read_rs(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).expect("a source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                read_rs(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("lib.rs") {
                out.push_str(&std::fs::read_to_string(path).expect("a source file"));
            }
        }
    }
    let mut sources = String::new();
    read_rs(dir, &mut sources);
    let mut names = std::collections::BTreeSet::new();
    for prefix in prefixes {
        for (at, _) in sources.match_indices(&format!("\"{prefix}")) {
            let rest = &sources[at + 1..];
            let name = &rest[..rest.find('"').unwrap_or(0)];
            if name.len() > prefix.len() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == ':') {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// Refuses a name that is not one of this process's failpoints, listing them.
fn check_known(name: &str, known: &[&str]) -> Result<(), String> {
    if known.contains(&name) {
        return Ok(());
    }
    Err(format!("unknown failpoint {name:?}: this process has {}", known.join(", ")))
}

/// Arms (or with empty `actions`, disarms) one failpoint.
#[allow(unused_variables)]
pub fn configure(name: &str, actions: &str) -> Result<(), String> {
    #[cfg(feature = "failpoints")]
    {
        let bad = |e: String| format!("failpoint {name}: bad action {actions:?}: {e}");
        EVER_CONFIGURED.store(true, std::sync::atomic::Ordering::Release);
        if actions.is_empty() {
            fail::remove(name);
        } else {
            fail::cfg(name, &rewrite(actions).map_err(bad)?).map_err(bad)?;
        }
        // Ends a sleep or pause in progress at this point.
        bump(name);
        Ok(())
    }
    #[cfg(not(feature = "failpoints"))]
    {
        Err("this build has no failpoints: rebuild with the `failpoints` feature".to_string())
    }
}

/// `SetFailpoint` RPC body shared by both services; `known` are the
/// process's failpoints (an unknown name is INVALID_ARGUMENT listing them).
pub fn set_from_rpc(req: crate::pb::SetFailpointRequest, known: &[&str]) -> Result<(), tonic::Status> {
    if req.name.is_empty() {
        return Err(tonic::Status::invalid_argument("failpoint name is empty"));
    }
    check_known(&req.name, known).map_err(tonic::Status::invalid_argument)?;
    configure(&req.name, &req.actions)
        .map_err(|e| if ENABLED { tonic::Status::invalid_argument(e) } else { tonic::Status::failed_precondition(e) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_tasks_become_awaitable_returns() {
        assert_eq!(rewrite("sleep(5000)").unwrap(), "return(twopc-sleep-ms:5000)");
        assert_eq!(rewrite("delay(7)").unwrap(), "return(twopc-sleep-ms:7)");
        assert_eq!(rewrite("pause").unwrap(), "return(twopc-pause)");
        assert_eq!(rewrite("1*sleep(100)->return(abort)").unwrap(), "1*return(twopc-sleep-ms:100)->return(abort)");
        assert_eq!(rewrite("20%2*pause->off").unwrap(), "20%2*return(twopc-pause)->off");
        assert_eq!(rewrite("return(error)").unwrap(), "return(error)");
        assert!(rewrite("sleep").is_err());
        assert!(rewrite("sleep(soon)").is_err());
        for panics in ["panic", "panic(boom)", "50%panic", "1*return(error)->panic"] {
            assert!(rewrite(panics).unwrap_err().contains("use return to kill the process"), "{panics}");
        }
    }

    #[cfg(feature = "failpoints")]
    #[tokio::test(flavor = "current_thread")]
    async fn a_sleep_waits_in_its_task_only_and_ends_when_disarmed() {
        const NAME: &str = "failpoint::test::sleep";
        configure(NAME, "sleep(60000)").unwrap();
        let started = std::time::Instant::now();
        let step = tokio::spawn(hit(NAME));
        // The (single) runtime thread is free while the step sleeps.
        tokio::task::yield_now().await;
        assert!(!step.is_finished());
        configure(NAME, "").unwrap();
        assert_eq!(step.await.unwrap(), Ok(()));
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        // Disarmed: no wait at all.
        assert_eq!(hit(NAME).await, Ok(()));
    }

    #[cfg(feature = "failpoints")]
    #[tokio::test(flavor = "current_thread")]
    async fn a_pause_ends_when_rearmed_and_errors_still_inject() {
        const NAME: &str = "failpoint::test::pause";
        configure(NAME, "pause").unwrap();
        let step = tokio::spawn(hit(NAME));
        tokio::task::yield_now().await;
        assert!(!step.is_finished());
        configure(NAME, "return(error)").unwrap();
        assert_eq!(step.await.unwrap(), Ok(()));
        assert_eq!(hit(NAME).await, Err(Injected(NAME.to_string())));
        configure(NAME, "").unwrap();
    }
}
