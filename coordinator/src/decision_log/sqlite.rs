//! The decision log in SQLite: the default backend, one file on this
//! machine's disk (see the parent module for the rules every backend keeps).
//!
//! What is on disk, and why:
//! - `decisions`: one row per COMMIT decision, naming the partitions that
//!   voted YES. A row is written and **fsynced** (WAL, `synchronous=FULL`)
//!   before any commit message is sent and before the client hears COMMITTED
//!   (rule 4). Aborts are never written: an absent tid is presumed aborted.
//!   When every YES partition has acknowledged, the row is marked finished
//!   without a force (rule 5): if that mark is lost in a crash, recovery
//!   just re-drives phase 2 and participants acknowledge again (rule 11).
//!   Finished rows are kept for a bounded number of newer decisions so a
//!   client asking about its commit after a restart still hears COMMITTED,
//!   then deleted.
//! - `decisions` rows with `one_phase = 1` are DELEGATED records: a tid
//!   that touched one participant hands it the decision (one-phase commit).
//!   The row is forced before CommitOnePhase is sent, so recovery asks that
//!   participant again instead of presuming abort. When the participant
//!   answers, the row is marked finished (it committed) or deleted (it
//!   aborted), unforced: a lost mark only makes recovery ask again.
//! - `members`: the partition map (partition to address and store id),
//!   forced on registration so phase 2 can reach participants after a
//!   restart and another store is still refused (`crate::store_ids`). The
//!   `store_id` column is added to logs from before it, empty: no store id
//!   recorded, the partition's next registration records one.
//! - `meta`: the number of partitions the log was created for (opening it
//!   with another number is refused), and the **cluster id**: a random UUID
//!   made when the log is created (or first opened by a version that has
//!   it). The coordinator hands it to participants with every registration
//!   and decision; a participant whose prepared tids voted under another id
//!   knows this log is not the one they voted under (it was lost and the
//!   coordinator started afresh) and does not take its presumed aborts.
//! - `meta` `forgotten_through`: the **low-water mark** of forgotten
//!   decisions (PROTOCOL.md rule 6): the newest tid whose finished row was
//!   trimmed. It is raised in the same SQLite transaction as the trim's
//!   deletes, so it is on disk whenever they are, and it only grows (the
//!   canonical text of a tid orders as the tid does, so SQLite compares
//!   the text). A log created, or first opened by a version that keeps
//!   the mark, starts it at the tid just before that moment: it remembers
//!   nothing older. A client asking about an unknown tid no newer than the
//!   mark hears that its outcome is forgotten, never a presumed ABORTED.
//!
//! Writes go through one writer thread that drains every queued request
//! into a single SQLite transaction: concurrent forced records share one
//! fsync (group commit) and nobody is answered before that commit returns.
//! At concurrency 1 the queue holds one request, so batching adds no wait.
//! Unforced requests alone are held back (up to 50 ms) to ride along with
//! the next forced batch, and the trim of old finished rows and the WAL
//! checkpoints run after a batch is answered, never inside a forced commit
//! (issue 10: they were the busiest work on the writer thread, and made
//! the tail).
//!
//! A batch that fails for lack of space (`SQLITE_FULL`) is answered
//! [`LogError::DiskFull`], naming the file: SQLite rolled it back, so none
//! of its records is on disk and the driver aborts their tids instead of
//! stopping (`twopc_proto::disk_full` says why that is safe and a failed
//! fsync is not). The writer's test hook `decision_log::max_page_count`
//! (a failpoint armed with `return(PAGES)`) caps the file's size to make
//! that happen without a full disk.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use twopc_core::{PartitionId, Tid};
use twopc_proto::disk_full::{PageLimit, is_disk_full};

use super::{DecisionLog, LogError, Recovered, Request, Stats};

/// Most requests one group commit takes.
pub(super) const MAX_BATCH: usize = 1024;

/// Finished rows beyond `keep_finished` before they are trimmed: the table
/// holds fewer than `keep_finished + TRIM_EVERY` finished rows.
pub(super) const TRIM_EVERY: usize = 256;

impl DecisionLog {
    /// Opens (or creates) `dir/decisions.db`, checks it belongs to a cluster
    /// of `partitions`, reads back what it holds, and starts the writer.
    pub fn open(dir: &Path, partitions: u32, keep_finished: usize) -> Result<(Self, Recovered), LogError> {
        let path = dir.join("decisions.db");
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
             CREATE TABLE IF NOT EXISTS decisions (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 tid TEXT NOT NULL UNIQUE,
                 partitions TEXT NOT NULL,
                 finished INTEGER NOT NULL DEFAULT 0,
                 one_phase INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS members (partition INTEGER PRIMARY KEY, address TEXT NOT NULL);",
        )?;
        add_one_phase_column(&conn)?;
        add_store_id_column(&conn)?;
        check_partitions(&conn, partitions)?;
        let mut recovered = read_back(&conn)?;
        recovered.cluster_id = cluster_id(&conn)?;
        recovered.forgotten_through = Some(forgotten_through(&conn)?);
        recovered.term = next_term(&conn)?;
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let writer_stats = stats.clone();
        thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || writer(conn, rx, keep_finished, &writer_stats, &path))
            .map_err(|e| LogError::Invalid(format!("cannot start writer thread: {e}")))?;
        Ok((Self { tx: super::Queue::Thread(tx), stats }, recovered))
    }
}

/// Logs written before one-phase commit existed lack the column.
fn add_one_phase_column(conn: &Connection) -> Result<(), LogError> {
    let has: bool =
        conn.query_row("SELECT COUNT(*) > 0 FROM pragma_table_info('decisions') WHERE name = 'one_phase'", [], |r| {
            r.get(0)
        })?;
    if !has {
        conn.execute_batch("ALTER TABLE decisions ADD COLUMN one_phase INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

/// Logs written before store ids lack the column (`crate::store_ids`).
fn add_store_id_column(conn: &Connection) -> Result<(), LogError> {
    let has: bool =
        conn.query_row("SELECT COUNT(*) > 0 FROM pragma_table_info('members') WHERE name = 'store_id'", [], |r| {
            r.get(0)
        })?;
    if !has {
        conn.execute_batch("ALTER TABLE members ADD COLUMN store_id TEXT NOT NULL DEFAULT ''")?;
    }
    Ok(())
}

/// Checks an existing `dir/decisions.db` before anything is written to it
/// (see `twopc_proto::data_file`): sound, and made for a cluster of
/// `partitions`.
pub fn check_existing(dir: &Path, partitions: u32) -> Result<(), LogError> {
    match twopc_proto::data_file::check_existing(&dir.join("decisions.db"), "partitions").map_err(LogError::Invalid)? {
        Some(Some(stored)) if stored != partitions.to_string() => Err(other_cluster(&stored, partitions)),
        _ => Ok(()),
    }
}

fn other_cluster(stored: &str, partitions: u32) -> LogError {
    LogError::Invalid(format!(
        "this data directory belongs to a cluster of {stored} partitions, not {partitions}: \
         pass --partitions {stored} or use another data directory"
    ))
}

fn check_partitions(conn: &Connection, partitions: u32) -> Result<(), LogError> {
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'partitions'", [], |r| r.get(0))
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
    match stored {
        None => {
            conn.execute("INSERT INTO meta (key, value) VALUES ('partitions', ?1)", params![partitions.to_string()])?;
            Ok(())
        }
        Some(s) if s == partitions.to_string() => Ok(()),
        Some(s) => Err(other_cluster(&s, partitions)),
    }
}

/// The log's cluster id, created (durably: the connection runs with
/// `synchronous=FULL`) if the log has none yet.
fn cluster_id(conn: &Connection) -> Result<String, LogError> {
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'cluster_id'", [], |r| r.get(0))
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
    if let Some(id) = stored {
        return Ok(id);
    }
    // UUIDv7: 74 random bits, plenty to tell two logs apart.
    let id = uuid::Uuid::now_v7().to_string();
    conn.execute("INSERT INTO meta (key, value) VALUES ('cluster_id', ?1)", params![id])?;
    Ok(id)
}

/// The log's low-water mark of forgotten decisions, started (durably) at
/// the tid just before now if the log has none yet: it remembers nothing
/// from before it was created, or first opened by a version that keeps
/// the mark (an older version trimmed without one).
fn forgotten_through(conn: &Connection) -> Result<Tid, LogError> {
    let start = twopc_proto::tid::newest_before_now().to_string();
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('forgotten_through', ?1)", params![start])?;
    let stored: String = conn.query_row("SELECT value FROM meta WHERE key = 'forgotten_through'", [], |r| r.get(0))?;
    Tid::parse_str(&stored).map_err(|e| LogError::Invalid(format!("corrupt forgotten_through {stored:?}: {e}")))
}

/// Counts this open of the log, durably (the connection runs with
/// `synchronous=FULL`): the coordinator's term.
fn next_term(conn: &Connection) -> Result<u64, LogError> {
    let term: i64 = conn.query_row(
        "INSERT INTO meta (key, value) VALUES ('term', '1')
         ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1
         RETURNING CAST(value AS INTEGER)",
        [],
        |r| r.get(0),
    )?;
    Ok(term as u64)
}

fn read_back(conn: &Connection) -> Result<Recovered, LogError> {
    let mut out = Recovered::default();
    let mut stmt = conn.prepare("SELECT tid, partitions, finished, one_phase FROM decisions ORDER BY seq")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, bool>(2)?, r.get::<_, bool>(3)?))
    })?;
    for row in rows {
        let (tid, parts, finished, one_phase) = row?;
        let tid = Tid::parse_str(&tid).map_err(|e| LogError::Invalid(format!("corrupt tid {tid:?}: {e}")))?;
        let parts = decode_partitions(&parts)?;
        match (finished, one_phase, parts.as_slice()) {
            (true, _, _) => out.finished.push(tid),
            (false, false, _) => out.unfinished.push((tid, parts)),
            (false, true, &[p]) => out.delegated.push((tid, p)),
            (false, true, &[p, n]) => {
                out.delegated.push((tid, p));
                out.delegated_counts.push((tid, n.into()));
            }
            (false, true, _) => return Err(LogError::Invalid(format!("DELEGATED record {tid} names {parts:?}"))),
        }
    }
    let mut stmt = conn.prepare("SELECT partition, address FROM members ORDER BY partition")?;
    out.members = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare("SELECT partition, store_id FROM members WHERE store_id != '' ORDER BY partition")?;
    out.store_ids = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
    Ok(out)
}

fn encode_partitions(p: &[PartitionId]) -> String {
    p.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
}

fn decode_partitions(s: &str) -> Result<Vec<PartitionId>, LogError> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|_| LogError::Invalid(format!("corrupt partition list {s:?}"))))
        .collect()
}

/// The writer thread: one SQLite transaction per batch of queued requests.
///
/// It also keeps the seqs of the finished rows, oldest mark first, so that
/// trimming them is a few rowid deletes instead of a scan of the table
/// (the scan, every 256 marks over 100,000 kept rows, was the busiest
/// thread of a profile under load).
fn writer(mut conn: Connection, rx: mpsc::Receiver<Request>, keep_finished: usize, stats: &Stats, path: &Path) {
    let mut finished = match finished_seqs(&conn) {
        Ok(f) => f,
        Err(e) => {
            // Only the trim depends on it; the rows stay until a restart reads them.
            tracing::error!(error = %e, "cannot list finished decision rows; old ones are not trimmed until a restart");
            VecDeque::new()
        }
    };
    let mut synchronous_full = true;
    let mut page_limit = PageLimit::new("decision_log::max_page_count", &conn);
    // WAL checkpoints run after a batch is answered, mostly in a thread of
    // their own (`twopc_proto::wal_checkpoint`), not inside a commit.
    let checkpoints = twopc_proto::wal_checkpoint::WalCheckpoints::start(&conn, path, "decision-log-ckpt");
    let mut deferred = vec![];
    while let Some(batch) = next_group(&rx, &mut deferred) {
        let forced = batch.iter().any(Request::forced);
        page_limit.apply(&conn);
        // Trimming in the batch made the batch that crossed the threshold,
        // forced records and all, wait for 256 deletes: it is done after
        // the answer instead.
        let result = write_batch(&mut conn, &batch, forced, &mut synchronous_full);
        if forced && result.is_ok() {
            metrics::counter!("twopc_decision_log_fsyncs_total").increment(1);
            metrics::histogram!("twopc_decision_log_batch_size").record(batch.len() as f64);
            stats.forced_batches.fetch_add(1, Ordering::Relaxed);
            stats.forced_records.fetch_add(batch.iter().filter(|r| r.forced()).count() as u64, Ordering::Relaxed);
        }
        let result = match result {
            Ok(newly_finished) => {
                finished.extend(newly_finished);
                Ok(())
            }
            Err(e) => Err(write_failed(&conn, e, path)),
        };
        for req in batch {
            let r = result.as_ref().map(|_| ()).map_err(|e| match e {
                LogError::DiskFull(m) => LogError::DiskFull(m.clone()),
                LogError::Invalid(m) => LogError::Invalid(m.clone()),
                e => LogError::Invalid(e.to_string()),
            });
            match req {
                Request::Commit { done, .. } | Request::Register { done, .. } => {
                    let _ = done.send(r);
                }
                Request::Finished { .. } | Request::Forget { .. } => {}
            }
        }
        // Old finished rows go in a transaction of their own, unforced,
        // after the batch is answered: never inside a forced commit.
        if finished.len() >= keep_finished + TRIM_EVERY {
            match trim(&mut conn, &mut synchronous_full, &finished, keep_finished) {
                Ok(trimmed) => drop(finished.drain(..trimmed.min(finished.len()))),
                Err(e) => drop(write_failed(&conn, e, path)),
            }
        }
        checkpoints.after_commit(&conn);
    }
}

/// Deletes the oldest finished rows beyond the newest `keep_finished`, and
/// raises the forgotten mark over them, in one unforced transaction.
/// Returns how many it deleted (those first in `finished`).
fn trim(
    conn: &mut Connection,
    synchronous_full: &mut bool,
    finished: &VecDeque<i64>,
    keep_finished: usize,
) -> Result<usize, rusqlite::Error> {
    if *synchronous_full {
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        *synchronous_full = false;
    }
    let txn = conn.transaction()?;
    let trimmed = trim_rows(&txn, finished.iter(), finished.len().saturating_sub(keep_finished))?;
    txn.commit()?;
    Ok(trimmed)
}

/// Deletes the first `n` rows of `seqs` and raises the forgotten mark over
/// them (rule 6: in the same transaction). Returns `n`.
fn trim_rows<'a>(
    txn: &rusqlite::Transaction<'_>,
    seqs: impl Iterator<Item = &'a i64>,
    n: usize,
) -> Result<usize, rusqlite::Error> {
    let mut newest_trimmed: Option<String> = None;
    for seq in seqs.take(n) {
        let tid: Option<String> = txn
            .prepare_cached("DELETE FROM decisions WHERE seq = ?1 RETURNING tid")?
            .query_row(params![seq], |r| r.get(0))
            .optional()?;
        newest_trimmed = newest_trimmed.max(tid);
    }
    if let Some(tid) = newest_trimmed {
        // Rule 6: the mark covers every trimmed tid, in the same commit.
        txn.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('forgotten_through', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value WHERE excluded.value > meta.value",
        )?
        .execute(params![tid])?;
    }
    Ok(n)
}

/// How long unforced requests (finished marks, forgets) wait for a forced
/// batch to ride along with before they are written alone.
const DEFER_UNFORCED: Duration = Duration::from_millis(50);

/// The next batch to write, like `twopc_proto::batch::next_batch`, except
/// that a batch of unforced requests only is held back in `deferred` (up
/// to [`DEFER_UNFORCED`], or [`MAX_BATCH`] requests) and written with the
/// next forced batch: it then costs no SQLite transaction of its own (at
/// concurrency 1 every transaction's finished mark used to be one, with
/// two `synchronous` switches, a thread wake-up and WAL writes). Nobody
/// waits for an unforced request, and a lost one only re-drives phase 2
/// (see the module doc), so holding it back is safe. `None` once every
/// sender is gone and nothing is deferred.
fn next_group(rx: &mpsc::Receiver<Request>, deferred: &mut Vec<Request>) -> Option<Vec<Request>> {
    loop {
        let batch = if deferred.is_empty() {
            twopc_proto::batch::next_batch(rx, MAX_BATCH)?
        } else {
            match rx.recv_timeout(DEFER_UNFORCED) {
                Ok(first) => {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter().take(MAX_BATCH - 1));
                    batch
                }
                Err(_) => return Some(std::mem::take(deferred)),
            }
        };
        let forced = batch.iter().any(Request::forced);
        if !forced && deferred.len() + batch.len() < MAX_BATCH {
            deferred.extend(batch);
            continue;
        }
        if deferred.is_empty() {
            return Some(batch);
        }
        let mut all = std::mem::take(deferred);
        all.extend(batch);
        return Some(all);
    }
}

/// The error a failed batch is answered with. Out of space, the batch was
/// rolled back: [`LogError::DiskFull`], naming the file, and no log line
/// (the driver logs once per episode). Anything else is logged here.
fn write_failed(conn: &Connection, e: rusqlite::Error, path: &Path) -> LogError {
    // SQLite may leave the transaction open after some errors; end it, so
    // the next batch starts clean (a no-op when it was rolled back).
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    if is_disk_full(&e) {
        return LogError::DiskFull(format!("decision log {}: {e}", path.display()));
    }
    tracing::error!(error = %e, "decision log write failed");
    LogError::Invalid(e.to_string())
}

fn finished_seqs(conn: &Connection) -> Result<VecDeque<i64>, rusqlite::Error> {
    let mut stmt = conn.prepare("SELECT seq FROM decisions WHERE finished = 1 ORDER BY seq")?;
    stmt.query_map([], |r| r.get(0))?.collect()
}

/// Writes one batch in one SQLite transaction. Returns the seqs of the rows
/// it marked finished. (Old finished rows are trimmed by the writer in a
/// transaction of its own after the batch is answered, see [`trim`]: in
/// the batch, the forced records that crossed the threshold waited for
/// the deletes.)
fn write_batch(
    conn: &mut Connection,
    batch: &[Request],
    forced: bool,
    synchronous_full: &mut bool,
) -> Result<Vec<i64>, rusqlite::Error> {
    // A batch with a forced record is fsynced at commit; one with only
    // "finished" marks is not (WAL with synchronous=NORMAL).
    if *synchronous_full != forced {
        conn.pragma_update(None, "synchronous", if forced { "FULL" } else { "NORMAL" })?;
        *synchronous_full = forced;
    }
    let txn = conn.transaction()?;
    let mut newly_finished = vec![];
    for req in batch {
        match req {
            Request::Commit { tid, partitions, one_phase, .. } => {
                txn.prepare_cached("INSERT OR IGNORE INTO decisions (tid, partitions, one_phase) VALUES (?1, ?2, ?3)")?
                    .execute(params![tid.to_string(), encode_partitions(partitions), one_phase])?;
            }
            Request::Forget { tid } => {
                txn.prepare_cached("DELETE FROM decisions WHERE tid = ?1 AND one_phase = 1")?
                    .execute(params![tid.to_string()])?;
            }
            Request::Finished { tid } => {
                let seq: Option<i64> = txn
                    .prepare_cached("UPDATE decisions SET finished = 1 WHERE tid = ?1 AND finished = 0 RETURNING seq")?
                    .query_row(params![tid.to_string()], |r| r.get(0))
                    .optional()?;
                newly_finished.extend(seq);
            }
            Request::Register { partition, address, store_id, .. } => {
                txn.prepare_cached(
                    "INSERT INTO members (partition, address, store_id) VALUES (?1, ?2, ?3)
                     ON CONFLICT(partition) DO UPDATE SET address = excluded.address,
                         store_id = CASE WHEN excluded.store_id = '' THEN store_id ELSE excluded.store_id END",
                )?
                .execute(params![partition, address, store_id])?;
            }
        }
    }
    txn.commit()?;
    Ok(newly_finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_reopen_and_finished_marks_apply() {
        let dir = tempfile::tempdir().unwrap();
        let (t1, t2) = (Tid::now_v7(), Tid::now_v7());
        {
            let (log, rec) = DecisionLog::open(dir.path(), 3, 10).unwrap();
            assert!(rec.unfinished.is_empty());
            log.force_commit(t1, vec![0, 2]).await.unwrap();
            log.force_commit(t2, vec![1]).await.unwrap();
            log.register(1, "127.0.0.1:9".into()).await.unwrap();
            log.finished(t2);
            // A forced write after the mark orders it before the reopen.
            log.register(2, "127.0.0.1:10".into()).await.unwrap();
        }
        let (_log, rec) = DecisionLog::open(dir.path(), 3, 10).unwrap();
        assert_eq!(rec.unfinished, vec![(t1, vec![0, 2])]);
        assert_eq!(rec.finished, vec![t2]);
        assert_eq!(rec.members, vec![(1, "127.0.0.1:9".to_string()), (2, "127.0.0.1:10".to_string())]);
    }

    #[tokio::test]
    async fn store_ids_are_recorded_with_the_members_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = DecisionLog::open(dir.path(), 3, 10).unwrap();
            log.register_store(1, "127.0.0.1:9".into(), "s1".into()).await.unwrap();
            log.register(2, "127.0.0.1:10".into()).await.unwrap();
            // A registration without a store id keeps the recorded one.
            log.register(1, "127.0.0.1:11".into()).await.unwrap();
        }
        let (log, rec) = DecisionLog::open(dir.path(), 3, 10).unwrap();
        assert_eq!(rec.members, vec![(1, "127.0.0.1:11".to_string()), (2, "127.0.0.1:10".to_string())]);
        assert_eq!(rec.store_ids, vec![(1, "s1".to_string())]);
        log.register_store(1, "127.0.0.1:12".into(), "s2".into()).await.unwrap();
        drop(log);
        assert_eq!(DecisionLog::open(dir.path(), 3, 10).unwrap().1.store_ids, vec![(1, "s2".to_string())]);
    }

    #[test]
    fn a_log_from_before_store_ids_gets_the_column() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("decisions.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE members (partition INTEGER PRIMARY KEY, address TEXT NOT NULL);
                 INSERT INTO members VALUES (0, '127.0.0.1:9');",
            )
            .unwrap();
        }
        let (_log, rec) = DecisionLog::open(dir.path(), 1, 10).unwrap();
        assert_eq!(rec.members, vec![(0, "127.0.0.1:9".to_string())]);
        assert!(rec.store_ids.is_empty(), "none recorded yet");
    }

    #[test]
    fn each_open_has_a_larger_term() {
        let dir = tempfile::tempdir().unwrap();
        let a = DecisionLog::open(dir.path(), 1, 10).unwrap().1.term;
        let b = DecisionLog::open(dir.path(), 1, 10).unwrap().1.term;
        assert!(a >= 1 && b == a + 1, "{a} then {b}");
    }

    #[test]
    fn cluster_id_is_made_once_and_kept() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = DecisionLog::open(a.path(), 1, 10).unwrap().1.cluster_id;
        assert_eq!(DecisionLog::open(a.path(), 1, 10).unwrap().1.cluster_id, first);
        // Another (e.g. empty, after the first was lost) directory is another cluster.
        assert_ne!(DecisionLog::open(b.path(), 1, 10).unwrap().1.cluster_id, first);
        assert_eq!(uuid::Uuid::parse_str(&first).unwrap().get_version_num(), 7);
    }

    #[tokio::test]
    async fn finished_rows_are_trimmed_to_the_newest_and_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        // Created first: the log remembers nothing from before (rule 6).
        drop(DecisionLog::open(dir.path(), 1, 10).unwrap());
        let tids: Vec<Tid> = (0..600).map(|_| Tid::now_v7()).collect();
        {
            let (log, _) = DecisionLog::open(dir.path(), 1, 10).unwrap();
            for &t in &tids[..300] {
                log.force_commit(t, vec![0]).await.unwrap();
                log.finished(t);
            }
            log.register(0, "127.0.0.1:9".into()).await.unwrap();
        }
        let (log, rec) = DecisionLog::open(dir.path(), 1, 10).unwrap();
        assert!(rec.finished.len() >= 10 && rec.finished.len() < 10 + TRIM_EVERY, "{}", rec.finished.len());
        assert_eq!(rec.finished.last(), Some(&tids[299]), "the newest finished rows are the ones kept");
        // The reopened writer knows the rows it found, and trims them too.
        for &t in &tids[300..] {
            log.force_commit(t, vec![0]).await.unwrap();
            log.finished(t);
        }
        log.register(0, "127.0.0.1:9".into()).await.unwrap();
        drop(log);
        let (_log, rec) = DecisionLog::open(dir.path(), 1, 10).unwrap();
        assert!(rec.finished.len() >= 10 && rec.finished.len() < 10 + TRIM_EVERY, "{}", rec.finished.len());
        assert!(!rec.finished.contains(&tids[299]), "rows from before the restart were trimmed as well");
        assert!(rec.unfinished.is_empty());
        // The mark covers every trimmed tid and no kept one.
        let mark = rec.forgotten_through.unwrap();
        assert!(tids[299] <= mark, "{mark}");
        assert!(rec.finished.iter().all(|t| *t > mark), "{mark} {:?}", rec.finished.first());
    }

    #[tokio::test]
    async fn the_mark_starts_at_the_logs_creation_and_only_grows() {
        let dir = tempfile::tempdir().unwrap();
        let before = Tid::now_v7();
        let first = DecisionLog::open(dir.path(), 1, 10).unwrap().1.forgotten_through.unwrap();
        assert!(before <= first && first < Tid::now_v7(), "{before} {first}");
        // Reopening keeps it: later tids stay newer than the mark.
        let (log, rec) = DecisionLog::open(dir.path(), 1, 10).unwrap();
        assert_eq!(rec.forgotten_through, Some(first));
        // A trim raises it to the newest trimmed tid, whatever order the
        // rows finished in (the first is older than the mark).
        let mut tids: Vec<Tid> = (0..300).map(|_| Tid::now_v7()).collect();
        tids[0] = Tid::from_u128(1);
        for &t in &tids {
            log.force_commit(t, vec![0]).await.unwrap();
            log.finished(t);
        }
        log.register(0, "127.0.0.1:9".into()).await.unwrap();
        drop(log);
        let mark = DecisionLog::open(dir.path(), 1, 10).unwrap().1.forgotten_through.unwrap();
        assert!(mark > first && mark < tids[299], "{first} {mark}");
    }

    #[tokio::test]
    async fn delegations_survive_reopen_until_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (t1, t2, t3, t4) = (Tid::now_v7(), Tid::now_v7(), Tid::now_v7(), Tid::now_v7());
        {
            let (log, _) = DecisionLog::open(dir.path(), 3, 10).unwrap();
            for t in [t1, t2, t3] {
                log.force_delegation(t, 2).await.unwrap();
            }
            // A declared commit's record keeps its count.
            log.force_delegation_declared(t4, 1, Some(7)).await.unwrap();
            log.finished(t2);
            log.forget(t3);
            log.register(0, "127.0.0.1:9".into()).await.unwrap();
        }
        let (_log, rec) = DecisionLog::open(dir.path(), 3, 10).unwrap();
        assert_eq!(rec.delegated, vec![(t1, 2), (t4, 1)]);
        assert_eq!(rec.delegated_counts, vec![(t4, 7)]);
        assert_eq!(rec.finished, vec![t2], "a committed one-phase tid still answers COMMITTED");
        assert!(rec.unfinished.is_empty());
    }

    #[tokio::test]
    async fn concurrent_forced_records_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = DecisionLog::open(dir.path(), 1, 10).unwrap();
        let tids: Vec<Tid> = (0..200).map(|_| Tid::now_v7()).collect();
        // join_all enqueues all 200 before any completes: the writer takes
        // the first alone and the rest in very few batches.
        let writes = tids.iter().map(|&t| log.force_commit(t, vec![0]));
        for r in futures::future::join_all(writes).await {
            r.unwrap();
        }
        let batches = log.stats().forced_batches.load(Ordering::Relaxed);
        assert_eq!(log.stats().forced_records.load(Ordering::Relaxed), 200);
        assert!(batches <= 10, "200 concurrent forced records took {batches} fsyncs");
        // Each record is on disk.
        drop(log);
        let (_log, rec) = DecisionLog::open(dir.path(), 1, 10).unwrap();
        assert_eq!(rec.unfinished.len(), 200);
    }

    /// A finished mark with no forced record to ride along with is still
    /// written, alone, once the deferral is over.
    #[tokio::test]
    async fn a_lone_finished_mark_is_written_after_the_deferral() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = DecisionLog::open(dir.path(), 1, 10).unwrap();
        let t = Tid::now_v7();
        log.force_commit(t, vec![0]).await.unwrap();
        log.finished(t);
        let reader = Connection::open(dir.path().join("decisions.db")).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let finished: bool = reader
                .query_row("SELECT finished FROM decisions WHERE tid = ?1", params![t.to_string()], |r| r.get(0))
                .unwrap();
            if finished {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the finished mark was never written");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_lone_forced_record_is_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = DecisionLog::open(dir.path(), 1, 10).unwrap();
        for _ in 0..3 {
            log.force_commit(Tid::now_v7(), vec![0]).await.unwrap();
        }
        // Sequential callers never wait for company: one batch each.
        assert_eq!(log.stats().forced_batches.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn refuses_a_log_of_another_cluster_shape() {
        let dir = tempfile::tempdir().unwrap();
        drop(DecisionLog::open(dir.path(), 3, 10).unwrap());
        let err = DecisionLog::open(dir.path(), 4, 10).err().unwrap().to_string();
        assert!(err.contains("cluster of 3 partitions"), "{err}");
    }
}
