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
//! - `meta`: the partition number this file belongs to (opening it as
//!   another partition is refused), and the cluster id of the coordinator's
//!   decision log the prepared tids vote under (forced when first learned;
//!   see `crate::fence`), and the **store id**: a random UUID made when
//!   the file is created (or first opened by a version that has it) and
//!   never changed, sent with every registration so the coordinator can
//!   refuse another store for a partition it knows (PROTOCOL.md rule 13,
//!   `twopc_proto::store_id`).
//! - `heuristics`: outcomes an operator imposed on prepared tids (see
//!   `crate::heuristics`), the newest [`KEEP_HEURISTICS`]. A heuristic is
//!   written in the same forced transaction that applies (or drops) the
//!   write set and deletes the prepared row, so it is recorded exactly when
//!   it took effect.
//!
//! Applying a commit deletes the prepared row and writes the data in one
//! forced transaction, and only if the row was still there: a repeated
//! commit therefore never applies twice (rule 11), and after the
//! acknowledgement nothing depends on memory. Deleting a prepared row on
//! abort is not forced: if it survives a crash the participant asks, and
//! hears ABORTED.
//!
//! Out of space (`SQLITE_FULL`), a batch is rolled back by SQLite and
//! answered [`StoreError::DiskFull`]: certainly not written, so a prepare
//! that hit it can vote NO (rule 10) and the participant serves on
//! (`twopc_proto::disk_full` says why that is safe and a failed fsync is
//! not). The test hook `store::max_page_count` (a failpoint armed with
//! `return(PAGES)`) caps the file's size to make that happen without a
//! full disk.
//!
//! All writes go through one writer thread that takes every queued request
//! into one SQLite transaction (group commit: concurrent prepares and
//! commits share one fsync; nobody is answered before it returns). Reads of
//! committed data use a second connection (WAL readers do not block the
//! writer). WAL checkpoints run after a batch is answered, mostly on a
//! thread of their own (`twopc_proto::wal_checkpoint`), never inside a
//! commit; a small write set is encoded on the runtime's thread instead of
//! a blocking one (two thread hand-offs fewer on the prepare's path).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use twopc_core::participant::WriteSet;
use twopc_core::{PartitionId, Tid};
use twopc_proto::disk_full::{PageLimit, is_disk_full};
use twopc_proto::pb;

use crate::heuristics::{Heuristic, Heuristics};

const MAX_BATCH: usize = 1024;

/// One-phase commit records kept (newest first); older ones are trimmed.
pub const KEEP_ONE_PHASE: i64 = 100_000;

/// One-phase commits between two trims of old records.
const TRIM_EVERY: usize = 256;
/// Heuristic records kept (older ones are deleted as new ones come).
pub const KEEP_HEURISTICS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Invalid(String),
    #[error("store writer stopped")]
    Stopped,
    /// Out of space: the write certainly did not take effect.
    #[error("store: {0}")]
    DiskFull(String),
    /// A write set too large for one prepared record (see [`MAX_PREPARED_BYTES`]).
    #[error(
        "the write set of tid {tid} here is {bytes} bytes encoded, over the {limit} bytes one prepared record \
         can hold (SQLite's blob limit): write less in one transaction at this partition"
    )]
    WriteSetTooLarge { tid: Tid, bytes: usize, limit: usize },
}

/// How a batch failed, as its writers are told.
#[derive(Debug, Clone)]
struct Failed {
    disk_full: bool,
    message: String,
}

/// The largest prepared record (a tid's encoded write set) the store takes:
/// SQLite refuses a blob over `SQLITE_MAX_LENGTH` (10^9 bytes in the bundled
/// build), and the per-key and per-tid limits allow more (10,000 values of
/// 1 MiB). Checked before the record reaches the writer thread because
/// group commit runs every queued write in one SQLite transaction: the one
/// refused statement used to fail the whole batch, so one transaction's
/// oversized write set made other transactions' prepares and commits at
/// this partition fail with it (issue 13, kind 2). Refused here, the tid
/// alone fails to prepare and aborts, with this reason.
pub const MAX_PREPARED_BYTES: usize = 1_000_000_000;

/// Write sets up to this size (encoded) are encoded on the runtime's
/// thread; larger ones on a blocking thread (see [`Store::prepare`]).
const ENCODE_IN_PLACE_BYTES: usize = 64 * 1024;

enum Write {
    Prepare {
        tid: Tid,
        writes: Vec<u8>,
    },
    Commit {
        tid: Tid,
        writes: WriteSet,
    },
    CommitOnePhase {
        tid: Tid,
        writes: WriteSet,
    },
    DeletePrepared {
        tid: Tid,
    },
    ClusterId {
        id: String,
    },
    /// The cluster's partition count, as the coordinator last said.
    PartitionCount {
        n: u32,
    },
    /// `writes`: `Some` applies them (heuristic commit), `None` drops them.
    Heuristic {
        record: Heuristic,
        writes: Option<WriteSet>,
    },
    Contradicted {
        tid: Tid,
    },
}

impl Write {
    fn forced(&self) -> bool {
        !matches!(self, Write::DeletePrepared { .. } | Write::Contradicted { .. })
    }
}

type Done = oneshot::Sender<Result<(), Failed>>;

pub struct Store {
    tx: mpsc::Sender<(Write, Done)>,
    reader: Mutex<Connection>,
    stats: Arc<Stats>,
    /// In-memory copies of what is durable in `meta` and `heuristics`.
    cluster_id: Mutex<Option<String>>,
    /// The cluster's partition count as last learned (`crate::ownership`),
    /// kept so a restarted participant can check keys before it registers.
    partition_count: Mutex<Option<u32>>,
    /// This store's identity (see module docs); fixed for the file's life.
    store_id: String,
    heuristics: Mutex<Heuristics>,
    path: std::path::PathBuf,
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
        // Bounded files: the WAL is checkpointed from 1000 pages and starts
        // over by 10,000 at most (after the batch is answered:
        // `twopc_proto::wal_checkpoint`); with this limit its file is
        // truncated back to 64 MiB when it starts over.
        conn.pragma_update(None, "journal_size_limit", twopc_proto::wal_checkpoint::journal_size_limit())?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS prepared (tid TEXT PRIMARY KEY, writes BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS one_phase (seq INTEGER PRIMARY KEY AUTOINCREMENT, tid TEXT NOT NULL UNIQUE);

             CREATE TABLE IF NOT EXISTS heuristics (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 tid TEXT NOT NULL UNIQUE,
                 committed INTEGER NOT NULL,
                 reason TEXT NOT NULL,
                 at_unix_ms INTEGER NOT NULL,
                 contradicted INTEGER NOT NULL DEFAULT 0);",
        )?;
        check_partition(&conn, partition)?;
        let store_id = store_id(&conn)?;
        let prepared = read_prepared(&conn)?;
        let cluster_id =
            conn.query_row("SELECT value FROM meta WHERE key = 'cluster_id'", [], |r| r.get(0)).optional()?;
        let partition_count = conn
            .query_row("SELECT value FROM meta WHERE key = 'partitions'", [], |r| r.get::<_, String>(0))
            .optional()?
            .and_then(|v| v.parse::<u32>().ok());
        let heuristics = Heuristics::new(read_heuristics(&conn)?, KEEP_HEURISTICS);
        let reader = Connection::open(&path)?;
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let writer_stats = stats.clone();
        thread::Builder::new()
            .name("store-writer".into())
            .spawn({
                let path = path.clone();
                move || writer(conn, rx, &writer_stats, &path)
            })
            .map_err(|e| StoreError::Invalid(format!("cannot start writer thread: {e}")))?;
        let store = Self {
            tx,
            reader: Mutex::new(reader),
            stats,
            cluster_id: Mutex::new(cluster_id),
            partition_count: Mutex::new(partition_count),
            store_id,
            heuristics: Mutex::new(heuristics),
            path,
        };
        Ok((store, prepared))
    }

    /// Makes `tid`'s write set durable. Returns once fsynced.
    pub async fn prepare(&self, tid: Tid, writes: WriteSet) -> Result<(), StoreError> {
        let bytes = encoded_len(&writes);
        if bytes > MAX_PREPARED_BYTES {
            return Err(StoreError::WriteSetTooLarge { tid, bytes, limit: MAX_PREPARED_BYTES });
        }
        // Encoding up to a gigabyte takes seconds: off the runtime's
        // threads, so the process keeps answering everyone else meanwhile.
        // A small write set (the usual one) is encoded in place: it takes
        // microseconds, less than the two thread hand-offs a blocking task
        // costs on the prepare's path.
        let writes = if bytes <= ENCODE_IN_PLACE_BYTES {
            encode(&writes)
        } else {
            tokio::task::spawn_blocking(move || encode(&writes))
                .await
                .map_err(|e| StoreError::Invalid(format!("encoding the write set failed: {e}")))?
        };
        self.submit(Write::Prepare { tid, writes }).await
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

    /// The cluster id the prepared tids vote under, once learned.
    pub fn cluster_id(&self) -> Option<String> {
        lock(&self.cluster_id).clone()
    }

    /// The cluster's partition count as last recorded, if ever.
    pub fn partition_count(&self) -> Option<u32> {
        *lock(&self.partition_count)
    }

    /// Records the cluster's partition count (when it is new). Returns once fsynced.
    pub async fn set_partition_count(&self, n: u32) -> Result<(), StoreError> {
        if self.partition_count() == Some(n) {
            return Ok(());
        }
        self.submit(Write::PartitionCount { n }).await?;
        *lock(&self.partition_count) = Some(n);
        Ok(())
    }

    /// This store's id (see module docs).
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// Records the cluster id the prepared tids vote under. Returns once fsynced.
    pub async fn set_cluster_id(&self, id: &str) -> Result<(), StoreError> {
        self.submit(Write::ClusterId { id: id.to_string() }).await?;
        *lock(&self.cluster_id) = Some(id.to_string());
        Ok(())
    }

    /// In one forced transaction: drops the prepared row of `record.tid`,
    /// applies `writes` if `Some` (commit) and records the heuristic; does
    /// nothing if the row is already gone (its outcome was applied before;
    /// the caller's core state rules that out).
    pub async fn apply_heuristic(&self, record: Heuristic, writes: Option<WriteSet>) -> Result<(), StoreError> {
        self.submit(Write::Heuristic { record: record.clone(), writes }).await?;
        lock(&self.heuristics).push(record);
        Ok(())
    }

    /// The recorded heuristic of `tid`, if any.
    pub fn heuristic(&self, tid: Tid) -> Option<Heuristic> {
        lock(&self.heuristics).get(tid).cloned()
    }

    /// Every recorded heuristic, oldest first.
    pub fn heuristics(&self) -> Vec<Heuristic> {
        lock(&self.heuristics).list()
    }

    /// Marks `tid`'s heuristic as contradicted by the coordinator's decision
    /// (not forced: the mark is informational). Returns whether it was not
    /// marked before.
    pub async fn mark_contradicted(&self, tid: Tid) -> Result<bool, StoreError> {
        if !lock(&self.heuristics).mark_contradicted(tid) {
            return Ok(false);
        }
        self.submit(Write::Contradicted { tid }).await?;
        Ok(true)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
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
        rx.await
            .map_err(|_| StoreError::Stopped)?
            .map_err(|f| if f.disk_full { StoreError::DiskFull(f.message) } else { StoreError::Invalid(f.message) })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn encode(writes: &WriteSet) -> Vec<u8> {
    pb::WriteSet { writes: writes.iter().map(|(k, v)| pb::Write { key: k.clone(), value: v.clone() }).collect() }
        .encode_to_vec()
}

/// `encode(writes).len()`, computed without encoding (see [`MAX_PREPARED_BYTES`]).
fn encoded_len(writes: &WriteSet) -> usize {
    use prost::encoding::encoded_len_varint as varint;
    let field = |len: usize| 1 + varint(len as u64) + len;
    writes
        .iter()
        .map(|(k, v)| {
            // proto3: an empty `bytes` is not encoded; `optional` is, when present.
            let inner = if k.is_empty() { 0 } else { field(k.len()) } + v.as_ref().map_or(0, |v| field(v.len()));
            field(inner)
        })
        .sum()
}

fn decode(bytes: &[u8]) -> Result<WriteSet, StoreError> {
    let ws =
        pb::WriteSet::decode(bytes).map_err(|e| StoreError::Invalid(format!("corrupt prepared write set: {e}")))?;
    Ok(ws.writes.into_iter().map(|w| (w.key, w.value)).collect())
}

/// Checks an existing `dir/partition.db` before anything is written to it
/// (see `twopc_proto::data_file`): sound, and holding `partition`.
pub fn check_existing(dir: &Path, partition: PartitionId) -> Result<(), StoreError> {
    match twopc_proto::data_file::check_existing(&dir.join("partition.db"), "partition").map_err(StoreError::Invalid)? {
        Some(Some(stored)) if stored != partition.to_string() => Err(other_partition(&stored, partition)),
        _ => Ok(()),
    }
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

/// The store's id, made (and committed, `synchronous=FULL`) at the first
/// open: before the first registration can send it.
fn store_id(conn: &Connection) -> Result<String, StoreError> {
    let made = uuid::Uuid::now_v7().to_string();
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?1)", params![made])?;
    Ok(conn.query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| r.get(0))?)
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

fn read_heuristics(conn: &Connection) -> Result<Vec<Heuristic>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT tid, committed, reason, at_unix_ms, contradicted FROM heuristics ORDER BY seq")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get(4)?))
    })?;
    let mut out = vec![];
    for row in rows {
        let (tid, committed, reason, at, contradicted) = row?;
        let tid = Tid::parse_str(&tid).map_err(|e| StoreError::Invalid(format!("corrupt tid {tid:?}: {e}")))?;
        out.push(Heuristic { tid, committed, reason, at_unix_ms: at.max(0) as u64, contradicted });
    }
    Ok(out)
}

/// Applies a write set to the committed data.
fn apply(txn: &rusqlite::Transaction<'_>, writes: &WriteSet) -> Result<(), rusqlite::Error> {
    for (key, value) in writes {
        match value {
            Some(v) => exec(
                txn,
                "INSERT INTO kv (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, v],
            )?,
            None => exec(txn, "DELETE FROM kv WHERE key = ?1", params![key])?,
        };
    }
    Ok(())
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<(Write, Done)>, stats: &Stats, path: &Path) {
    // WAL checkpoints run after a batch is answered, mostly in a thread of
    // their own (`twopc_proto::wal_checkpoint`), not inside a commit.
    let checkpoints = twopc_proto::wal_checkpoint::WalCheckpoints::start(&conn, path, "store-checkpoint");
    let mut one_phase_since_trim = 0usize;
    let mut synchronous_full = true;
    let mut page_limit = PageLimit::new("store::max_page_count", &conn);
    while let Some(batch) = twopc_proto::batch::next_batch(&rx, MAX_BATCH) {
        page_limit.apply(&conn);
        one_phase_since_trim += batch.iter().filter(|(w, _)| matches!(w, Write::CommitOnePhase { .. })).count();
        let trim = one_phase_since_trim >= TRIM_EVERY;
        if trim {
            one_phase_since_trim = 0;
        }
        let result = write_batch(&mut conn, &batch, trim, &mut synchronous_full).map_err(|e| write_failed(&conn, &e));
        let forced = batch.iter().filter(|(w, _)| w.forced()).count() as u64;
        if forced > 0 && result.is_ok() {
            metrics::counter!("twopc_store_fsyncs_total").increment(1);
            metrics::histogram!("twopc_store_batch_size").record(batch.len() as f64);
            stats.forced_batches.fetch_add(1, Ordering::Relaxed);
            stats.forced_writes.fetch_add(forced, Ordering::Relaxed);
        }
        // Out of space is logged once per episode by the node, not per batch.
        if let Err(e) = &result
            && !e.disk_full
        {
            tracing::error!(error = %e.message, "store write failed");
        }
        for (_, done) in batch {
            let _ = done.send(result.clone());
        }
        checkpoints.after_commit(&conn);
    }
}

/// How a failed batch is reported; SQLite may leave the transaction open
/// after some errors: it is ended here so the next batch starts clean.
fn write_failed(conn: &Connection, e: &rusqlite::Error) -> Failed {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    Failed { disk_full: is_disk_full(e), message: e.to_string() }
}

fn write_batch(
    conn: &mut Connection,
    batch: &[(Write, Done)],
    trim: bool,
    synchronous_full: &mut bool,
) -> Result<(), rusqlite::Error> {
    let forced = batch.iter().any(|(w, _)| w.forced());
    if *synchronous_full != forced {
        conn.pragma_update(None, "synchronous", if forced { "FULL" } else { "NORMAL" })?;
        *synchronous_full = forced;
    }
    let txn = conn.transaction()?;
    for (w, _) in batch {
        match w {
            Write::Prepare { tid, writes } => {
                exec(
                    &txn,
                    "INSERT OR REPLACE INTO prepared (tid, writes) VALUES (?1, ?2)",
                    params![tid.to_string(), writes],
                )?;
            }
            Write::Commit { tid, writes } => {
                let was_prepared = exec(&txn, "DELETE FROM prepared WHERE tid = ?1", params![tid.to_string()])? > 0;
                if was_prepared {
                    apply(&txn, writes)?;
                }
            }
            Write::CommitOnePhase { tid, writes } => {
                let first =
                    exec(&txn, "INSERT OR IGNORE INTO one_phase (tid) VALUES (?1)", params![tid.to_string()])? > 0;
                if first {
                    apply(&txn, writes)?;
                }
            }
            Write::DeletePrepared { tid } => {
                exec(&txn, "DELETE FROM prepared WHERE tid = ?1", params![tid.to_string()])?;
            }
            Write::ClusterId { id } => {
                exec(
                    &txn,
                    "INSERT INTO meta (key, value) VALUES ('cluster_id', ?1)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![id],
                )?;
            }
            Write::PartitionCount { n } => {
                exec(
                    &txn,
                    "INSERT INTO meta (key, value) VALUES ('partitions', ?1)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![n.to_string()],
                )?;
            }
            Write::Heuristic { record: h, writes } => {
                let was_prepared = exec(&txn, "DELETE FROM prepared WHERE tid = ?1", params![h.tid.to_string()])? > 0;
                if was_prepared {
                    if let Some(writes) = writes {
                        apply(&txn, writes)?;
                    }
                    exec(
                        &txn,
                        "INSERT OR REPLACE INTO heuristics (tid, committed, reason, at_unix_ms) VALUES (?1, ?2, ?3, ?4)",
                        params![h.tid.to_string(), h.committed, h.reason, h.at_unix_ms as i64],
                    )?;
                    exec(
                        &txn,
                        "DELETE FROM heuristics WHERE seq <= (SELECT MAX(seq) FROM heuristics) - ?1",
                        params![KEEP_HEURISTICS as i64],
                    )?;
                }
            }
            Write::Contradicted { tid } => {
                exec(&txn, "UPDATE heuristics SET contradicted = 1 WHERE tid = ?1", params![tid.to_string()])?;
            }
        }
    }
    if trim {
        exec(
            &txn,
            "DELETE FROM one_phase WHERE seq <= (SELECT MAX(seq) FROM one_phase) - ?1",
            params![KEEP_ONE_PHASE],
        )?;
    }
    txn.commit()
}

/// Runs `sql` through the connection's statement cache: the same few
/// statements run thousands of times a second under load, and parsing them
/// each time showed in profiles.
fn exec(txn: &rusqlite::Transaction<'_>, sql: &str, params: impl rusqlite::Params) -> Result<usize, rusqlite::Error> {
    txn.prepare_cached(sql)?.execute(params)
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
            s.prepare(t, writes.clone()).await.unwrap();
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
        let prepares = tids.iter().zip(&sets).map(|(&t, w)| s.prepare(t, w.clone()));
        futures::future::join_all(prepares).await.into_iter().collect::<Result<Vec<_>, _>>().unwrap();
        let commits = tids.iter().zip(&sets).map(|(&t, w)| s.commit(t, w.clone()));
        futures::future::join_all(commits).await.into_iter().collect::<Result<Vec<_>, _>>().unwrap();
        let batches = s.stats().forced_batches.load(Ordering::Relaxed);
        assert_eq!(s.stats().forced_writes.load(Ordering::Relaxed), 200);
        // Each write set is encoded off the runtime thread before it is
        // queued, so writes reach the writer staggered, not all at once:
        // sharing is what is checked (at least 5 writes per fsync), not a
        // perfect batch.
        assert!(batches <= 40, "200 concurrent forced writes took {batches} fsyncs");
        assert_eq!(s.read(b"k99").unwrap(), Some(b"v".to_vec()));
    }

    #[tokio::test]
    async fn heuristics_and_cluster_id_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (c, a) = (Tid::now_v7(), Tid::now_v7());
        let h = |tid, committed| Heuristic { tid, committed, reason: "r".into(), at_unix_ms: 5, contradicted: false };
        {
            let (s, _) = Store::open(dir.path(), 0).unwrap();
            assert_eq!(s.cluster_id(), None);
            s.set_cluster_id("c1").await.unwrap();
            s.prepare(c, ws(&[("a", Some("1"))])).await.unwrap();
            s.prepare(a, ws(&[("b", Some("1"))])).await.unwrap();
            s.apply_heuristic(h(c, true), Some(ws(&[("a", Some("1"))]))).await.unwrap();
            s.apply_heuristic(h(a, false), None).await.unwrap();
            // A tid that is not prepared (any more) gets no record.
            s.apply_heuristic(h(Tid::now_v7(), true), Some(ws(&[("z", Some("1"))]))).await.unwrap();
            assert!(s.mark_contradicted(a).await.unwrap());
            assert!(!s.mark_contradicted(a).await.unwrap(), "marked once");
        }
        let (s, prepared) = Store::open(dir.path(), 0).unwrap();
        assert_eq!(s.cluster_id().as_deref(), Some("c1"));
        assert!(prepared.is_empty());
        assert_eq!(s.heuristics(), vec![h(c, true), Heuristic { contradicted: true, ..h(a, false) }]);
        assert_eq!(s.heuristic(c), Some(h(c, true)));
        assert_eq!(s.read(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.read(b"b").unwrap(), None);
        assert_eq!(s.read(b"z").unwrap(), None);
    }

    #[test]
    fn the_store_id_is_made_once_and_kept() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = Store::open(one.path(), 1).unwrap().0.store_id().to_string();
        assert_eq!(uuid::Uuid::parse_str(&first).unwrap().get_version_num(), 7);
        assert_eq!(Store::open(one.path(), 1).unwrap().0.store_id(), first, "read back on open");
        assert_ne!(Store::open(two.path(), 1).unwrap().0.store_id(), first, "another store, another id");
    }

    #[test]
    fn refuses_another_partitions_directory() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), 1).unwrap());
        let err = Store::open(dir.path(), 2).err().unwrap().to_string();
        assert!(err.contains("holds partition 1"), "{err}");
    }

    #[test]
    fn encoded_len_is_the_encoding_s_length() {
        let mut writes = WriteSet::new();
        assert_eq!(encoded_len(&writes), encode(&writes).len());
        writes.insert(b"k".to_vec(), Some(b"v".to_vec()));
        writes.insert(b"deleted".to_vec(), None);
        writes.insert(b"empty".to_vec(), Some(vec![]));
        writes.insert(vec![b'k'; 300], Some(vec![b'v'; 70_000]));
        writes.insert(vec![], Some(vec![b'x'; 200]));
        assert_eq!(encoded_len(&writes), encode(&writes).len());
    }
}
