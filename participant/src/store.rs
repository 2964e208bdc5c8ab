//! A participant's durable state, in one SQLite file (`partition.db`).
//!
//! - `kv`: committed data. Changed only by applying a prepared write set.
//! - `prepared`: the write set of every tid that voted YES and has not had
//!   its decision applied. Written and **fsynced** before the YES vote is
//!   sent (rule 3); read back at start to re-take locks (rule 9).
//! - `one_phase`: tids this participant committed in one phase (the
//!   coordinator delegated the decision). Inserted in the same forced
//!   transaction that applies the write set, and only if absent, so the
//!   record is the decision, a repeat never applies twice, and after a
//!   crash of either side the coordinator asking again hears COMMITTED.
//!   Bounded: the newest [`KEEP_ONE_PHASE`] are kept. The coordinator marks
//!   its DELEGATED record finished as soon as it hears the answer, so only
//!   a coordinator that crashes before it writes that mark, while this many
//!   newer one-phase commits land here, could ask about a forgotten one.
//! - `meta`: the partition number this file belongs to; opening it as
//!   another partition is refused.
//!
//! Applying a commit deletes the prepared row and writes the data in one
//! forced transaction, and only if the row was still there: a repeated
//! commit therefore never applies twice (rule 11), and after the
//! acknowledgement nothing depends on memory. Deleting a prepared row on
//! abort is not forced: if it survives a crash the participant asks, and
//! hears ABORTED.
//!
//! All writes go through one writer thread that takes every queued request
//! into one SQLite transaction (group commit: concurrent prepares and
//! commits share one fsync; nobody is answered before it returns). Reads of
//! committed data use a second connection (WAL readers do not block the
//! writer).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use twopc_core::participant::WriteSet;
use twopc_core::{PartitionId, Tid};
use twopc_proto::pb;

const MAX_BATCH: usize = 1024;

/// One-phase commit records kept (newest first); older ones are trimmed.
pub const KEEP_ONE_PHASE: i64 = 100_000;

/// One-phase commits between two trims of old records.
const TRIM_EVERY: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Invalid(String),
    #[error("store writer stopped")]
    Stopped,
}

enum Write {
    Prepare { tid: Tid, writes: Vec<u8> },
    Commit { tid: Tid, writes: WriteSet },
    CommitOnePhase { tid: Tid, writes: WriteSet },
    DeletePrepared { tid: Tid },
}

impl Write {
    fn forced(&self) -> bool {
        !matches!(self, Write::DeletePrepared { .. })
    }
}

type Done = oneshot::Sender<Result<(), String>>;

pub struct Store {
    tx: mpsc::Sender<(Write, Done)>,
    reader: Mutex<Connection>,
    stats: Arc<Stats>,
}

/// Counters of the writer thread: how well group commit batches.
#[derive(Debug, Default)]
pub struct Stats {
    /// SQLite transactions that were forced (one fsync each).
    pub forced_batches: AtomicU64,
    /// Forced writes (prepares and commits) they carried.
    pub forced_writes: AtomicU64,
}

impl Store {
    /// Opens (or creates) `dir/partition.db` for `partition` and returns the
    /// prepared write sets it holds.
    pub fn open(dir: &Path, partition: PartitionId) -> Result<(Self, Vec<(Tid, WriteSet)>), StoreError> {
        let path = dir.join("partition.db");
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Bounded files: SQLite checkpoints the WAL every 1000 pages and,
        // with this limit, truncates it back to 4 MiB after a checkpoint.
        conn.pragma_update(None, "journal_size_limit", 4 * 1024 * 1024)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS prepared (tid TEXT PRIMARY KEY, writes BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS one_phase (seq INTEGER PRIMARY KEY AUTOINCREMENT, tid TEXT NOT NULL UNIQUE);",
        )?;
        check_partition(&conn, partition)?;
        let prepared = read_prepared(&conn)?;
        let reader = Connection::open(&path)?;
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let writer_stats = stats.clone();
        thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(conn, rx, &writer_stats))
            .map_err(|e| StoreError::Invalid(format!("cannot start writer thread: {e}")))?;
        Ok((Self { tx, reader: Mutex::new(reader), stats }, prepared))
    }

    /// Makes `tid`'s write set durable. Returns once fsynced.
    pub async fn prepare(&self, tid: Tid, writes: &WriteSet) -> Result<(), StoreError> {
        self.submit(Write::Prepare { tid, writes: encode(writes) }).await
    }

    /// Applies `tid`'s write set and drops its prepared row, durably; a no-op
    /// if the row is already gone.
    pub async fn commit(&self, tid: Tid, writes: WriteSet) -> Result<(), StoreError> {
        self.submit(Write::Commit { tid, writes }).await
    }

    /// One-phase commit: applies `tid`'s write set and records the tid as
    /// committed, durably; a no-op if the record already exists.
    pub async fn commit_one_phase(&self, tid: Tid, writes: WriteSet) -> Result<(), StoreError> {
        self.submit(Write::CommitOnePhase { tid, writes }).await
    }

    /// Whether `tid` committed here in one phase (and is still remembered).
    pub fn committed_one_phase(&self, tid: Tid) -> Result<bool, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached("SELECT 1 FROM one_phase WHERE tid = ?1")?;
        Ok(stmt.query_row(params![tid.to_string()], |_| Ok(())).optional()?.is_some())
    }

    /// Drops `tid`'s prepared row (not forced).
    pub async fn delete_prepared(&self, tid: Tid) -> Result<(), StoreError> {
        self.submit(Write::DeletePrepared { tid }).await
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The committed value of `key`.
    pub fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached("SELECT value FROM kv WHERE key = ?1")?;
        Ok(stmt.query_row(params![key], |r| r.get(0)).optional()?)
    }

    async fn submit(&self, w: Write) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx.send((w, done)).map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?.map_err(StoreError::Invalid)
    }
}

fn encode(writes: &WriteSet) -> Vec<u8> {
    pb::WriteSet { writes: writes.iter().map(|(k, v)| pb::Write { key: k.clone(), value: v.clone() }).collect() }
        .encode_to_vec()
}

fn decode(bytes: &[u8]) -> Result<WriteSet, StoreError> {
    let ws =
        pb::WriteSet::decode(bytes).map_err(|e| StoreError::Invalid(format!("corrupt prepared write set: {e}")))?;
    Ok(ws.writes.into_iter().map(|w| (w.key, w.value)).collect())
}

/// Checks an existing `dir/partition.db` before anything is written to it:
/// it must be a sound SQLite file (`PRAGMA quick_check`, which reads the
/// whole file once) holding `partition`. Starting on a damaged store could
/// lose a prepared write set after voting YES, so a damaged file is
/// refused, not repaired. Only reads, and the close-time checkpoint is
/// turned off, so a refused file is left byte for byte as it was.
pub fn check_existing(dir: &Path, partition: PartitionId) -> Result<(), StoreError> {
    let path = dir.join("partition.db");
    if !path.exists() {
        return Ok(());
    }
    let damaged = |e: &dyn std::fmt::Display| {
        StoreError::Invalid(format!("{}: {e}; refusing to start: restore it from backup", path.display()))
    };
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| StoreError::Invalid(format!("cannot open {}: {e}", path.display())))?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
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
    if has_meta {
        let stored: Option<String> =
            conn.query_row("SELECT value FROM meta WHERE key = 'partition'", [], |r| r.get(0)).optional()?;
        if let Some(s) = stored.filter(|s| *s != partition.to_string()) {
            return Err(other_partition(&s, partition));
        }
    }
    Ok(())
}

fn other_partition(stored: &str, partition: PartitionId) -> StoreError {
    StoreError::Invalid(format!(
        "this data directory holds partition {stored}, not {partition}: pass --partition {stored} or use another directory"
    ))
}

fn check_partition(conn: &Connection, partition: PartitionId) -> Result<(), StoreError> {
    let stored: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'partition'", [], |r| r.get(0)).optional()?;
    match stored {
        None => {
            conn.execute("INSERT INTO meta (key, value) VALUES ('partition', ?1)", params![partition.to_string()])?;
            Ok(())
        }
        Some(s) if s == partition.to_string() => Ok(()),
        Some(s) => Err(other_partition(&s, partition)),
    }
}

fn read_prepared(conn: &Connection) -> Result<Vec<(Tid, WriteSet)>, StoreError> {
    let mut stmt = conn.prepare("SELECT tid, writes FROM prepared")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
    let mut out = vec![];
    for row in rows {
        let (tid, writes) = row?;
        let tid = Tid::parse_str(&tid).map_err(|e| StoreError::Invalid(format!("corrupt tid {tid:?}: {e}")))?;
        out.push((tid, decode(&writes)?));
    }
    Ok(out)
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<(Write, Done)>, stats: &Stats) {
    let mut one_phase_since_trim = 0usize;
    while let Some(batch) = twopc_proto::batch::next_batch(&rx, MAX_BATCH) {
        one_phase_since_trim += batch.iter().filter(|(w, _)| matches!(w, Write::CommitOnePhase { .. })).count();
        let trim = one_phase_since_trim >= TRIM_EVERY;
        if trim {
            one_phase_since_trim = 0;
        }
        let result = write_batch(&mut conn, &batch, trim).map_err(|e| e.to_string());
        let forced = batch.iter().filter(|(w, _)| w.forced()).count() as u64;
        if forced > 0 && result.is_ok() {
            metrics::counter!("twopc_store_fsyncs_total").increment(1);
            metrics::histogram!("twopc_store_batch_size").record(batch.len() as f64);
            stats.forced_batches.fetch_add(1, Ordering::Relaxed);
            stats.forced_writes.fetch_add(forced, Ordering::Relaxed);
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "store write failed");
        }
        for (_, done) in batch {
            let _ = done.send(result.clone());
        }
    }
}

fn write_batch(conn: &mut Connection, batch: &[(Write, Done)], trim: bool) -> Result<(), rusqlite::Error> {
    let forced = batch.iter().any(|(w, _)| w.forced());
    conn.pragma_update(None, "synchronous", if forced { "FULL" } else { "NORMAL" })?;
    let txn = conn.transaction()?;
    for (w, _) in batch {
        match w {
            Write::Prepare { tid, writes } => {
                txn.execute(
                    "INSERT OR REPLACE INTO prepared (tid, writes) VALUES (?1, ?2)",
                    params![tid.to_string(), writes],
                )?;
            }
            Write::Commit { tid, writes } => {
                let was_prepared = txn.execute("DELETE FROM prepared WHERE tid = ?1", params![tid.to_string()])? > 0;
                if was_prepared {
                    apply(&txn, writes)?;
                }
            }
            Write::CommitOnePhase { tid, writes } => {
                let first =
                    txn.execute("INSERT OR IGNORE INTO one_phase (tid) VALUES (?1)", params![tid.to_string()])? > 0;
                if first {
                    apply(&txn, writes)?;
                }
            }
            Write::DeletePrepared { tid } => {
                txn.execute("DELETE FROM prepared WHERE tid = ?1", params![tid.to_string()])?;
            }
        }
    }
    if trim {
        txn.execute(
            "DELETE FROM one_phase WHERE seq <= (SELECT MAX(seq) FROM one_phase) - ?1",
            params![KEEP_ONE_PHASE],
        )?;
    }
    txn.commit()
}

fn apply(txn: &rusqlite::Transaction<'_>, writes: &WriteSet) -> Result<(), rusqlite::Error> {
    for (key, value) in writes {
        match value {
            Some(v) => txn.execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, v],
            )?,
            None => txn.execute("DELETE FROM kv WHERE key = ?1", params![key])?,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(pairs: &[(&str, Option<&str>)]) -> WriteSet {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()))).collect()
    }

    #[tokio::test]
    async fn prepared_survives_reopen_and_commit_applies_once() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tid::now_v7();
        let writes = ws(&[("a", Some("1")), ("b", None)]);
        {
            let (s, prepared) = Store::open(dir.path(), 0).unwrap();
            assert!(prepared.is_empty());
            s.prepare(t, &writes).await.unwrap();
        }
        let (s, prepared) = Store::open(dir.path(), 0).unwrap();
        assert_eq!(prepared, vec![(t, writes.clone())]);
        s.commit(t, writes.clone()).await.unwrap();
        assert_eq!(s.read(b"a").unwrap(), Some(b"1".to_vec()));
        // A second commit of the same tid finds no prepared row and changes nothing.
        let other = ws(&[("a", Some("2"))]);
        s.commit(t, other).await.unwrap();
        assert_eq!(s.read(b"a").unwrap(), Some(b"1".to_vec()));
        drop(s);
        let (s, prepared) = Store::open(dir.path(), 0).unwrap();
        assert!(prepared.is_empty());
        assert_eq!(s.read(b"a").unwrap(), Some(b"1".to_vec()));
    }

    #[tokio::test]
    async fn one_phase_commit_is_recorded_with_its_data_and_never_applied_twice() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tid::now_v7();
        {
            let (s, _) = Store::open(dir.path(), 0).unwrap();
            assert!(!s.committed_one_phase(t).unwrap());
            s.commit_one_phase(t, ws(&[("a", Some("1"))])).await.unwrap();
            // A repeat (the coordinator asking again) changes nothing.
            s.commit_one_phase(t, ws(&[("a", Some("2"))])).await.unwrap();
        }
        let (s, prepared) = Store::open(dir.path(), 0).unwrap();
        assert!(prepared.is_empty());
        assert!(s.committed_one_phase(t).unwrap(), "the record survives a restart");
        assert!(!s.committed_one_phase(Tid::now_v7()).unwrap());
        assert_eq!(s.read(b"a").unwrap(), Some(b"1".to_vec()));
    }

    #[tokio::test]
    async fn concurrent_prepares_and_commits_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path(), 0).unwrap();
        let tids: Vec<Tid> = (0..100).map(|_| Tid::now_v7()).collect();
        let sets: Vec<WriteSet> = (0..100).map(|i| ws(&[(&format!("k{i}"), Some("v"))])).collect();
        // join_all enqueues every write before any completes.
        let prepares = tids.iter().zip(&sets).map(|(&t, w)| s.prepare(t, w));
        futures::future::join_all(prepares).await.into_iter().collect::<Result<Vec<_>, _>>().unwrap();
        let commits = tids.iter().zip(&sets).map(|(&t, w)| s.commit(t, w.clone()));
        futures::future::join_all(commits).await.into_iter().collect::<Result<Vec<_>, _>>().unwrap();
        let batches = s.stats().forced_batches.load(Ordering::Relaxed);
        assert_eq!(s.stats().forced_writes.load(Ordering::Relaxed), 200);
        assert!(batches <= 10, "200 concurrent forced writes took {batches} fsyncs");
        assert_eq!(s.read(b"k99").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn refuses_another_partitions_directory() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), 1).unwrap());
        let err = Store::open(dir.path(), 2).err().unwrap().to_string();
        assert!(err.contains("holds partition 1"), "{err}");
    }
}
