//! Start-up check of an existing SQLite data file (the coordinator's
//! decision log, a participant's store), shared by both processes.
//!
//! A damaged file is refused, never repaired: starting on a damaged log
//! could forget a COMMIT and then answer "aborted" for it, and starting on
//! a damaged store could lose a prepared write set after voting YES. The
//! check only reads (`PRAGMA quick_check`, then one `meta` value), and the
//! close-time checkpoint is turned off, so a refused file is left byte for
//! byte as it was.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// Checks the SQLite file at `path`, if there is one, and returns what its
/// `meta` table holds under `meta_key`: `Ok(None)` when there is no file,
/// `Ok(Some(None))` when the file has no such value yet. The error is a
/// message for the operator naming the file.
pub fn check_existing(path: &Path, meta_key: &str) -> Result<Option<Option<String>>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let damaged =
        |e: &dyn std::fmt::Display| format!("{}: {e}; refusing to start: restore it from backup", path.display());
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).map_err(|e| damaged(&e))?;
    let problems: Vec<String> = conn
        .prepare("PRAGMA quick_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| damaged(&e))?;
    if problems != ["ok"] {
        return Err(damaged(&format!("corrupt ({})", problems.join("; "))));
    }
    let has_meta: bool = conn
        .query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'", [], |r| r.get(0))
        .map_err(|e| damaged(&e))?;
    if !has_meta {
        return Ok(Some(None));
    }
    let value = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [meta_key], |r| r.get(0))
        .optional()
        .map_err(|e| damaged(&e))?;
    Ok(Some(value))
}
