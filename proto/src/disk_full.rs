//! A full disk under a SQLite file: a clean failure to degrade on, not to
//! stop for.
//!
//! **The rule.** When SQLite cannot get space (ENOSPC from the file
//! system, or its own page limit) it answers `SQLITE_FULL`, and the
//! statement or the COMMIT that hit it did not take effect: the
//! transaction is rolled back (in WAL mode the commit frame is never
//! completed, so a reader or a recovery cannot see it). The record is
//! therefore *certainly not written*, and the writer may act on that:
//! abort the tids whose records it was (no one was told COMMITTED, no
//! commit was sent), keep serving everything that needs no new space, and
//! try again later. A failed **fsync** (`SQLITE_IOERR_FSYNC`, or any other
//! I/O error) is different: the data may or may not be on disk, and the
//! kernel may have dropped the dirty pages, so neither "written" nor "not
//! written" can be acted on; that stays fail-stop (restart and read the
//! file back).
//!
//! [`is_disk_full`] tells the two apart, [`DiskFull`] tracks one store's
//! out-of-space episodes (one log line when it starts and one when it
//! ends, a 0/1 gauge, a counter of what was refused or failed), and
//! [`PageLimit`] is the test hook that makes SQLite behave exactly as on a
//! full disk.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// Whether `e` is SQLite's "database or disk is full" (`SQLITE_FULL`):
/// the write certainly did not take effect (see the module docs).
pub fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// One store's out-of-space state: whether it is full now, since when, and
/// when a write was last tried.
pub struct DiskFull {
    /// What is out of space, for log lines and reasons (e.g. "the decision
    /// log's disk (data dir /var/lib/twopc)").
    what: String,
    gauge: &'static str,
    counter: &'static str,
    /// While full, a write is tried again (a probe) at most this often.
    probe_every: Duration,
    episode: Mutex<Option<Episode>>,
}

/// An episode ends at a successful write only when no write failed for
/// this long: near full, writes that fit in freed pages succeed between
/// ones that do not, and the episode (its gauge, its two log lines) must
/// not flap with them.
pub const SETTLE: Duration = Duration::from_secs(1);

struct Episode {
    since: Instant,
    last_try: Instant,
    last_failure: Instant,
    failures: u64,
    /// The last failure's error, quoted in refusals.
    detail: String,
}

impl DiskFull {
    /// `gauge` (0/1: full now) and `counter` (writes failed or refused for
    /// lack of space) are the metric names.
    pub fn new(what: String, gauge: &'static str, counter: &'static str, probe_every: Duration) -> Self {
        metrics::gauge!(gauge).set(0.0);
        metrics::counter!(counter).absolute(0);
        Self { what, gauge, counter, probe_every, episode: Mutex::new(None) }
    }

    /// What is out of space, as named in reasons.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// A write failed for lack of space (`detail`: SQLite's error). Starts
    /// an episode (logged once, gauge 1) or continues it; counts it.
    pub fn failed(&self, detail: &str) {
        metrics::counter!(self.counter).increment(1);
        let now = Instant::now();
        let mut ep = self.lock();
        match ep.as_mut() {
            Some(e) => {
                e.last_try = now;
                e.last_failure = now;
                e.failures += 1;
                e.detail = detail.to_string();
            }
            None => {
                *ep = Some(Episode {
                    since: now,
                    last_try: now,
                    last_failure: now,
                    failures: 1,
                    detail: detail.to_string(),
                });
                metrics::gauge!(self.gauge).set(1.0);
                // A store without a probe period tries every write.
                let retry = match self.probe_every.as_millis() {
                    0 => "will try every write".to_string(),
                    ms => format!("will retry a write every {ms} ms"),
                };
                tracing::error!(
                    error = detail,
                    "{} is full: refusing what needs new space, serving the rest; {retry} and resume by itself when \
                     space is freed",
                    self.what,
                );
            }
        }
    }

    /// Something was refused without trying, for lack of space: counted.
    pub fn refused(&self) {
        metrics::counter!(self.counter).increment(1);
        if let Some(e) = self.lock().as_mut() {
            e.failures += 1;
        }
    }

    /// A write succeeded: ends an episode (logged once, gauge 0) if no
    /// write failed for [`SETTLE`].
    pub fn succeeded(&self) {
        let mut ep = self.lock();
        if ep.as_ref().is_some_and(|e| e.last_failure.elapsed() >= SETTLE)
            && let Some(e) = ep.take()
        {
            metrics::gauge!(self.gauge).set(0.0);
            tracing::warn!(
                after_ms = e.since.elapsed().as_millis() as u64,
                failed_or_refused = e.failures,
                "{} has space again: resuming",
                self.what
            );
        }
    }

    /// Whether the store is full now.
    pub fn is_full(&self) -> bool {
        self.lock().is_some()
    }

    /// Whether a write that needs new space should be refused without
    /// trying, and if so the last failure's error: refused while full,
    /// except once every `probe_every`, when one write is let through as
    /// the probe (its success ends the episode).
    pub fn should_refuse(&self) -> Option<String> {
        let mut ep = self.lock();
        match ep.as_mut() {
            None => None,
            Some(e) if e.last_try.elapsed() >= self.probe_every => {
                e.last_try = Instant::now();
                None
            }
            Some(e) => Some(e.detail.clone()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Episode>> {
        self.episode.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// **Test hook**: caps a SQLite file's size in pages so that it runs "out
/// of space" exactly as on a full disk (`PRAGMA max_page_count`: SQLite
/// then answers `SQLITE_FULL`, with the same rollback), on any machine and
/// without root. Armed through the failpoint named by the caller with
/// `return(PAGES)` (at start from `FAILPOINTS`, or at run time with the
/// `SetFailpoint` admin RPC); a cap below the file's current size holds it
/// at its current size. Disarming restores the limit the connection had,
/// which is how a test makes "space return". A build without failpoints
/// compiles [`PageLimit::apply`] to nothing.
pub struct PageLimit {
    name: &'static str,
    /// The limit the connection had at open, restored when disarmed.
    default: Option<i64>,
    applied: Option<i64>,
}

impl PageLimit {
    pub fn new(name: &'static str, conn: &Connection) -> Self {
        let default = conn.query_row("PRAGMA max_page_count", [], |r| r.get(0)).ok();
        Self { name, default, applied: None }
    }

    /// Call before each write: applies the armed cap, or restores the
    /// default once disarmed.
    pub fn apply(&mut self, conn: &Connection) {
        let want = crate::failpoint::value(self.name).and_then(|v| v.trim().parse::<i64>().ok());
        if want == self.applied {
            return;
        }
        let Some(pages) = want.or(self.default) else { return };
        match conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| r.get::<_, i64>(0)) {
            Ok(now) => tracing::warn!(failpoint = self.name, pages = now, "test hook: SQLite page limit set"),
            Err(e) => tracing::warn!(failpoint = self.name, error = %e, "test hook: cannot set the page limit"),
        }
        self.applied = want;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_limit_fails_a_write_as_disk_full_and_rolls_it_back() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| r.get::<_, i64>(0)).unwrap();
        let err = conn.execute("INSERT INTO t VALUES (zeroblob(100000))", []).unwrap_err();
        assert!(is_disk_full(&err), "{err:?}");
        let rows: i64 = conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 0, "the failed write left nothing");
        assert!(conn.is_autocommit(), "no transaction is left open");
    }

    /// A real full file system (a 512 KiB tmpfs): SQLite answers
    /// `SQLITE_FULL`, the failed write is not there when the file is read
    /// back, and writes work again once space is freed. Mounting needs
    /// root (or CAP_SYS_ADMIN): elsewhere the test says so and skips.
    #[test]
    fn a_real_full_file_system_is_sqlite_full_and_the_write_is_not_there() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let why = String::from_utf8_lossy(&out.stderr);
                return eprintln!("SKIPPED: cannot mount a tmpfs here ({}): {why}", out.status);
            }
            Err(e) => return eprintln!("SKIPPED: cannot run mount: {e}"),
        }
        struct Unmount<'a>(&'a std::path::Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(dir.path());
        let db = dir.path().join("t.db");
        let conn = Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
        // Fill the file system but for a little.
        let filler = dir.path().join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            while f.write_all(&[0u8; 4096]).is_ok() {}
            let _ = f.sync_all();
        }
        let mut written = 0;
        let err = loop {
            match conn.execute("INSERT INTO t VALUES (zeroblob(8192))", []) {
                Ok(_) => written += 1,
                Err(e) => break e,
            }
            assert!(written < 1000, "a 512 KiB file system never filled");
        };
        assert!(is_disk_full(&err), "ENOSPC must be SQLITE_FULL, not an I/O error: {err:?}");
        assert!(conn.is_autocommit(), "no transaction is left open");
        let count = |c: &Connection| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count(&Connection::open(&db).unwrap()), written, "read back: the failed write is not there");
        std::fs::remove_file(&filler).unwrap();
        conn.execute("INSERT INTO t VALUES (zeroblob(8192))", []).unwrap();
        assert_eq!(count(&conn), written + 1);
    }

    #[test]
    fn an_episode_refuses_between_probes_and_ends_on_success() {
        let full = DiskFull::new("test disk".into(), "t_full", "t_full_total", Duration::from_millis(50));
        assert_eq!(full.should_refuse(), None);
        full.failed("SQLITE_FULL");
        assert!(full.is_full());
        assert_eq!(full.should_refuse().as_deref(), Some("SQLITE_FULL"), "right after a failure, writes are refused");
        let start = Instant::now();
        while full.should_refuse().is_some() {
            assert!(start.elapsed() < Duration::from_secs(5), "no probe was let through");
            std::thread::yield_now();
        }
        assert!(full.should_refuse().is_some(), "one probe per interval");
        full.succeeded();
        assert!(full.is_full(), "a success right after a failure does not end the episode (no flapping)");
        let full = DiskFull::new("test disk".into(), "t_full", "t_full_total", Duration::ZERO);
        full.failed("SQLITE_FULL");
        std::thread::sleep(SETTLE);
        full.succeeded();
        assert!(!full.is_full() && full.should_refuse().is_none());
    }
}
