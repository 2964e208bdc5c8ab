//! WAL checkpoints off the commit path, for a SQLite writer thread (the
//! decision log's and every participant store's).
//!
//! SQLite's automatic checkpoint runs inside the commit that pushes the WAL
//! past 1000 pages: that commit, and every request queued behind it in the
//! writer thread, waits while ~1000 pages are copied into the database file
//! and it is fsynced. Under load that was one group-commit batch every few
//! hundred milliseconds paying several milliseconds more: the tail.
//!
//! Here the writer's connection reports its WAL size through SQLite's WAL
//! hook (which replaces the automatic checkpoint) and:
//!
//! 1. once the WAL holds [`START_PAGES`], a checkpointer thread with a
//!    connection of its own runs a `PASSIVE` checkpoint: it copies what is
//!    in the WAL and fsyncs the database file while the writer keeps
//!    committing (a passive checkpoint never blocks a writer);
//! 2. when that pass is over and the WAL has [`RESIDUE_PAGES`] (else
//!    another pass follows), the writer, after answering its batch,
//!    checkpoints the few pages written during the pass itself (so the WAL
//!    is fully copied and its next commit starts the WAL from the beginning:
//!    only the writer can bring that about without waiting, since it is the
//!    only one that appends). The file stays bounded as before
//!    (`journal_size_limit` truncates it at that restart).
//! 3. If the checkpointer falls behind (the WAL reaches [`MAX_PAGES`]), the
//!    writer waits for its pass and checkpoints inline, as SQLite's
//!    automatic checkpoint did: the WAL stays bounded.
//!
//! Rules kept: a checkpoint never changes what is durable (the WAL is
//! synced before any page is copied, and the database file before the WAL
//! is reused: SQLite's own ordering), and nobody is answered before their
//! batch's commit returned: the writer checkpoints only after answering.

use std::cell::Cell;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use rusqlite::Connection;

/// WAL pages from which the checkpointer runs passes, one after another
/// while the WAL stays this long (SQLite's automatic threshold).
pub const START_PAGES: u64 = 1000;
/// WAL pages from which the writer, once a pass is over, copies the rest
/// itself so the WAL starts over (step 2). That costs the writer a
/// database fsync whatever the number of pages (measured under load: the
/// fsync's latency, not the copying, is the stall), so it waits for a WAL
/// ten times SQLite's threshold. A writer that pauses during a pass (any
/// load but a heavy one) never gets there: the WAL starts over by itself
/// after that pass, every ~1000 pages as before, and its file stays small
/// (a WAL that grows makes every fsync also commit the file system's
/// journal: measured +100-200 µs per fsync while it grows).
pub const RESIDUE_PAGES: u64 = 10 * START_PAGES;
/// WAL pages at which the writer waits for the checkpointer and
/// checkpoints inline: a bound on the WAL's size.
pub const MAX_PAGES: u64 = 40 * START_PAGES;

/// The `journal_size_limit` for a database whose checkpoints this module
/// runs: above a cycle of [`RESIDUE_PAGES`], so the file is reused, not
/// truncated and grown again every cycle (an fsync of a growing file also
/// commits the file system's journal). It was 4 MiB before.
pub fn journal_size_limit() -> i64 {
    64 * 1024 * 1024
}

thread_local! {
    /// Pages in the WAL after the last commit on this thread's connection
    /// (set by the WAL hook, which runs in the committing thread).
    static WAL_PAGES: Cell<u64> = const { Cell::new(0) };
}

unsafe extern "C" fn wal_hook(
    _arg: *mut std::ffi::c_void,
    _db: *mut rusqlite::ffi::sqlite3,
    _name: *const std::ffi::c_char,
    pages: std::ffi::c_int,
) -> std::ffi::c_int {
    WAL_PAGES.with(|p| p.set(pages.max(0) as u64));
    rusqlite::ffi::SQLITE_OK
}

#[derive(Default)]
struct State {
    requested: bool,
    done: bool,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Held while a checkpoint runs on either connection.
    running: Mutex<()>,
}

/// The writer thread's side; see the module doc. Dropping it stops the
/// checkpointer thread.
pub struct WalCheckpoints {
    shared: Option<Arc<Shared>>,
    start_pages: u64,
    residue_pages: u64,
    max_pages: u64,
}

impl WalCheckpoints {
    /// Takes over checkpoints of `conn` (the writer's connection, to be used
    /// on the calling thread from now on) of the database at `path`, with a
    /// checkpointer thread named `name`. Without a thread (it could not be
    /// started, or the baseline is asked for) SQLite's automatic checkpoint
    /// stays on.
    pub fn start(conn: &Connection, path: &Path, name: &str) -> Self {
        Self::with_threshold(conn, path, name, START_PAGES)
    }

    /// [`WalCheckpoints::start`] with passes from `start_pages` (and the
    /// other thresholds in the same proportion as the defaults).
    pub fn with_threshold(conn: &Connection, path: &Path, name: &str, start_pages: u64) -> Self {
        let none = Self {
            shared: None,
            start_pages,
            residue_pages: RESIDUE_PAGES / START_PAGES * start_pages,
            max_pages: MAX_PAGES / START_PAGES * start_pages,
        };
        let checkpointer = match Connection::open(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "no checkpointer connection: SQLite checkpoints inline");
                return none;
            }
        };
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        if let Err(e) = thread::Builder::new().name(name.into()).spawn(move || checkpointer_loop(checkpointer, &theirs))
        {
            tracing::warn!(error = %e, "no checkpointer thread: SQLite checkpoints inline");
            return none;
        }
        // SAFETY: the handle is this live connection's; the hook is a plain
        // function that touches only a thread-local, with no argument.
        unsafe {
            rusqlite::ffi::sqlite3_wal_hook(conn.handle(), Some(wal_hook), std::ptr::null_mut());
        }
        Self { shared: Some(shared), ..none }
    }

    /// Called by the writer after a commit, once its batch is answered.
    pub fn after_commit(&self, conn: &Connection) {
        let Some(shared) = &self.shared else { return };
        let pages = WAL_PAGES.with(Cell::get);
        if pages < self.start_pages {
            // Below the threshold again: the WAL started over by itself (a
            // pass copied everything while nothing was written). A pass
            // that ended before that is of no use to the next cycle, whose
            // residue would then be the whole WAL.
            let mut st = lock(&shared.state);
            if st.done && !st.requested {
                st.done = false;
            }
            return;
        }
        let finish = {
            let mut st = lock(&shared.state);
            let pass_over = std::mem::take(&mut st.done);
            if pass_over && pages >= self.residue_pages {
                true
            } else {
                if !st.requested {
                    st.requested = true;
                    shared.wake.notify_one();
                }
                false
            }
        };
        if pages >= self.max_pages {
            // The checkpointer fell behind: wait for its pass, then
            // checkpoint here, so the WAL is bounded.
            let _running = lock(&shared.running);
            checkpoint(conn);
        } else if finish {
            // Skipped if the checkpointer is in a pass (the next commit
            // asks again).
            if let Ok(_running) = shared.running.try_lock() {
                checkpoint(conn);
            }
        }
    }
}

impl Drop for WalCheckpoints {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            lock(&shared.state).stop = true;
            shared.wake.notify_one();
        }
    }
}

fn checkpointer_loop(conn: Connection, shared: &Shared) {
    loop {
        {
            let mut st = lock(&shared.state);
            while !st.requested && !st.stop {
                st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.stop {
                return;
            }
        }
        {
            let _running = lock(&shared.running);
            checkpoint(&conn);
        }
        let mut st = lock(&shared.state);
        st.requested = false;
        st.done = true;
    }
}

/// A passive checkpoint: copies what it can without waiting for anyone.
/// A failure only leaves the WAL longer; the next one tries again.
fn checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::debug!(error = %e, "WAL checkpoint failed; retried later");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The WAL stays bounded under a writer that never pauses, and every
    /// committed row is there.
    #[test]
    fn the_wal_is_checkpointed_and_restarted_under_constant_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "OFF").unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)").unwrap();
        let ckpt = WalCheckpoints::with_threshold(&conn, &path, "test-checkpointer", 100);
        let (mut most, mut last, mut restarts) = (0, 0, 0);
        for i in 0..12_000i64 {
            // ~1 page per commit: the WAL would pass the cap unchecked.
            conn.execute("INSERT INTO t (k, v) VALUES (?1, zeroblob(3000))", [i]).unwrap();
            ckpt.after_commit(&conn);
            let pages = WAL_PAGES.with(Cell::get);
            restarts += usize::from(pages < last);
            (most, last) = (most.max(pages), pages);
        }
        assert!(restarts >= 2, "the WAL restarted {restarts} times");
        assert!(most <= 4_000 + 8, "the WAL reached {most} pages");
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 12_000);
    }
}
