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
//! fail with an error. `sleep(ms)`, counts (`1*return(abort)`) and
//! probabilities (`20%return(abort)`) come from fail-rs.

/// What a failpoint asks its step to do when it does not kill the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected(pub String);

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failpoint {} injected an error", self.0)
    }
}

/// Evaluates the failpoint `name`: kills the process, sleeps, or returns an
/// injected error, as armed. Unarmed (or in a build without failpoints) it
/// returns `Ok(())`.
#[allow(unused_variables)]
pub fn hit(name: &'static str) -> Result<(), Injected> {
    #[cfg(feature = "failpoints")]
    {
        fail::fail_point!(name, |arg: Option<String>| {
            match arg.as_deref() {
                None | Some("") | Some("abort") | Some("kill") => kill_self(name),
                Some(_) => Err(Injected(name.to_string())),
            }
        });
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
/// process start. Returns an error for a malformed spec, and when failpoints
/// are requested from a build that has none.
pub fn setup_from_env() -> Result<(), String> {
    let spec = std::env::var("FAILPOINTS").unwrap_or_default();
    if spec.trim().is_empty() {
        return Ok(());
    }
    for item in spec.split(';').filter(|s| !s.trim().is_empty()) {
        let (name, actions) =
            item.split_once('=').ok_or_else(|| format!("FAILPOINTS entry {item:?} is not name=action"))?;
        configure(name.trim(), actions.trim())?;
    }
    Ok(())
}

/// Arms (or with empty `actions`, disarms) one failpoint.
#[allow(unused_variables)]
pub fn configure(name: &str, actions: &str) -> Result<(), String> {
    #[cfg(feature = "failpoints")]
    {
        if actions.is_empty() {
            fail::remove(name);
            Ok(())
        } else {
            fail::cfg(name, actions).map_err(|e| format!("failpoint {name}: bad action {actions:?}: {e}"))
        }
    }
    #[cfg(not(feature = "failpoints"))]
    {
        Err("this build has no failpoints: rebuild with the `failpoints` feature".to_string())
    }
}

/// `SetFailpoint` RPC body shared by both services.
pub fn set_from_rpc(req: crate::pb::SetFailpointRequest) -> Result<(), tonic::Status> {
    if req.name.is_empty() {
        return Err(tonic::Status::invalid_argument("failpoint name is empty"));
    }
    configure(&req.name, &req.actions)
        .map_err(|e| if ENABLED { tonic::Status::invalid_argument(e) } else { tonic::Status::failed_precondition(e) })
}
