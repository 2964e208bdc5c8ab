//! One process per data directory (PROTOCOL.md rule 13).
//!
//! A decision log or a partition's store is used by one live process at a
//! time. Two coordinators on one decision log would each keep their own
//! view in memory and answer from it: the second one, not knowing the
//! first one's tids, would presume a committed tid aborted. So every
//! process that owns a data directory holds an exclusive lock on it for
//! its whole life, taken at start before the data is read, and a second
//! process on the same directory is refused at start with the holder's pid.
//!
//! How: `flock(LOCK_EX | LOCK_NB)` on the directory itself (a read-only
//! descriptor of it), and, once the process's start-up checks passed, its
//! pid in the file `LOCK` there, for the refusal message only (the lock,
//! not the file's content, decides). Rules kept, and why:
//! - the kernel releases a `flock` when its holder's last descriptor
//!   closes, whatever way the process ended (SIGKILL included), so a crash
//!   never leaves a stale lock behind that would block the restart (the
//!   `LOCK` file then names a dead pid until the next holder rewrites it,
//!   so a refusal names a recorded pid only if it is running);
//! - locking the directory, not a file in it, creates nothing: a process
//!   refused at start (the directory in use, or its data file damaged or
//!   another cluster's) leaves the directory byte for byte as it was;
//! - the pid is written only by the holder, after its checks passed
//!   ([`DataDirLock::record_holder`]);
//! - the descriptor is opened close-on-exec (Rust's default), so a child
//!   process never inherits, and outlives us with, the lock;
//! - `flock` locks belong to an open file description, so even a second
//!   open within one process is refused (the unit tests rely on that).
//!
//! Limit: on some network filesystems `flock` is local to one client
//! machine; keep data directories on local disks.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The file naming the holder's pid, inside a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the directory.
    #[error(
        "data directory {} is in use by another process ({}): only one process may use a data \
         directory at a time; stop that process first, or pass another --data-dir",
        dir.display(),
        match holder { Some(pid) => format!("pid {pid}"), None => "pid not yet recorded: it is starting".to_string() }
    )]
    Held { dir: PathBuf, holder: Option<u32> },
    /// The directory could not be opened or locked, or the pid file written.
    #[error("cannot lock data directory {}: {what}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The exclusive lock of a data directory, held until dropped (or the
/// process ends, however it ends).
#[derive(Debug)]
pub struct DataDirLock {
    // Held open: closing it releases the lock.
    _file: File,
    dir: PathBuf,
}

impl DataDirLock {
    /// Takes the lock of `dir` (which must exist) without waiting. Writes
    /// nothing: see [`DataDirLock::record_holder`].
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let io = |what| move |source| LockError::Io { dir: dir.to_path_buf(), what, source };
        let file = File::open(dir).map_err(io("opening it"))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(LockError::Held { dir: dir.to_path_buf(), holder: holder_pid(dir) });
            }
            return Err(io("locking it")(e));
        }
        Ok(Self { _file: file, dir: dir.to_path_buf() })
    }

    /// Records this process's pid in the directory's `LOCK` file (replacing
    /// a crashed holder's), for the message a refused process prints. Call
    /// once the start-up checks of the directory passed.
    pub fn record_holder(&self) -> Result<(), LockError> {
        std::fs::write(self.dir.join(LOCK_FILE), format!("{}\n", std::process::id())).map_err(|source| LockError::Io {
            dir: self.dir.clone(),
            what: "writing its LOCK file",
            source,
        })
    }

    /// The directory this lock holds.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The pid the current holder recorded, if it has yet. The file outlives
/// a crashed holder: until the next holder, still in its start-up checks
/// (seconds for a large data file), rewrites it, it names the dead pid. A
/// pid that is no longer running is therefore not the holder, and naming
/// it would send the operator after a process that does not exist (or, the
/// number reused, after an unrelated one).
fn holder_pid(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(LOCK_FILE)).ok()?.trim().parse().ok()?;
    running(pid).then_some(pid)
}

/// Whether a process `pid` exists (signal 0 checks without sending).
fn running(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only looks the pid up.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    // EPERM: it exists, owned by another user.
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile_dir();
        let first = DataDirLock::acquire(&dir).unwrap();
        assert_eq!(first.dir(), dir);
        // Nothing written yet: the holder is refused without a pid.
        assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "acquire wrote into the directory");
        let e = DataDirLock::acquire(&dir).unwrap_err();
        assert!(matches!(e, LockError::Held { holder: None, .. }), "{e:?}");
        assert!(e.to_string().contains("it is starting"), "{e}");
        first.record_holder().unwrap();
        let e = DataDirLock::acquire(&dir).unwrap_err();
        let pid = std::process::id();
        assert!(matches!(e, LockError::Held { holder: Some(p), .. } if p == pid), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&format!("pid {pid}")) && text.contains(&dir.display().to_string()), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
        drop(first);
        // Released: the next process takes it. (A child forked meanwhile by
        // another test of this process shares the descriptor until its exec
        // closes it: poll briefly.)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let again = loop {
            match DataDirLock::acquire(&dir) {
                Ok(lock) => break lock,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("the released lock was not free again: {e}"),
            }
        };
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("twopc-no-such-dir-{}", std::process::id()));
        let e = DataDirLock::acquire(&dir).unwrap_err();
        assert!(matches!(e, LockError::Io { what: "opening it", .. }), "{e:?}");
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
    }

    #[test]
    fn only_a_running_pid_counts_as_the_holder() {
        assert!(running(std::process::id()));
        assert!(!running(0));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert!(!running(dead));
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("twopc-lock-test-{}-{}", std::process::id(), line!()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
