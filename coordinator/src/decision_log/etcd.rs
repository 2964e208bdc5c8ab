//! The decision log in etcd: the replicated backend, for several
//! coordinators of which one leads (PROTOCOL.md rules 14-16; the parent
//! module has the rules every backend keeps).
//!
//! Keys, under the cluster's prefix `P` (`/twopc/NAME/`, so several
//! clusters can share one etcd):
//! - `P/leader`: the leader's address, attached to its lease (see
//!   [`crate::leadership`]); its create revision is the leader's epoch.
//! - `P/meta/partitions`, `P/meta/cluster_id`: the log's identity, written
//!   once by the first leader.
//! - `P/members/NNNNN`: the partition map.
//! - `P/stores/NNNNN`: the partition's store id (`crate::store_ids`),
//!   written in the same batch as its member key. A separate key, so the
//!   member value keeps its format for older versions.
//! - `P/log/TID`: one record per tid: `C p,q,..` (COMMIT naming the YES
//!   partitions), `D p` (DELEGATED to partition p), `F` (finished). Tids are
//!   UUIDv7, so key order is age order.
//! - `P/forgotten_through`: the low-water mark of forgotten decisions
//!   (PROTOCOL.md rule 6): the newest tid whose finished record was
//!   trimmed. It is put, guarded like every write, in the first
//!   transaction of the trim, before any of its deletes (so it is in etcd
//!   whenever they are, also when a trim spans several transactions), and
//!   only raised. The first leader of a log (or the first of a version that
//!   keeps the mark) starts it at the tid just before that moment: the log
//!   remembers nothing older, for whatever reason (trimmed by an older
//!   version, or a log created afresh).
//!
//! **Fencing.** Every write is one etcd transaction whose only comparison
//! is "`P/leader` still has the create revision of my election". etcd
//! evaluates it atomically with the writes, so a leader that was paused,
//! partitioned or slow past its lease can never write after a successor
//! was elected: etcd deleted its key when the lease expired and the
//! successor's key has another create revision. A refused write makes the
//! writer step down at once (the process exits, see `leadership`).
//!
//! **Durability.** A request is answered only after etcd acknowledged the
//! transaction holding it, which etcd does once a quorum of members has it
//! in their Raft logs (fsynced). A transaction that fails or times out may
//! or may not have been applied, so it is sent again until etcd answers
//! (UNAVAILABLE while etcd has no quorum: the caller keeps waiting, and the
//! leader, unable to renew its lease, refuses new work meanwhile). Every
//! write is idempotent (a put of the same value, a delete), so repeating
//! one is safe.
//!
//! **Group commit and etcd's limits.** The writer takes every queued
//! forced request into one batch (unforced marks go to a second writer, so
//! a record never waits behind a mark: each etcd write is a Raft round) and
//! writes it in as few transactions as etcd's default limits allow: at most [`MAX_OPS`] operations (etcd refuses more
//! than 128 per transaction by default) and [`MAX_TXN_BYTES`] of keys and
//! values (its default request limit is 1.5 MiB). A key written twice in one
//! batch is written once, with its last value (etcd refuses duplicate keys
//! in a transaction).
//!
//! **Bounded keyspace and history.** Finished records beyond
//! `keep_finished` are deleted, oldest first, as in SQLite. etcd also keeps
//! every key's history until it is compacted: the leader compacts it when
//! it starts serving and every `compact_every`, keeping the last
//! [`KEEP_REVISIONS`] (set `compact_every` to zero when etcd runs its own
//! `--auto-compaction-*`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use twopc_core::{PartitionId, Tid};
use twopc_etcd::{Etcd, EtcdError, op, pb, prefix_end};
use twopc_proto::Backoff;

use super::sqlite::{MAX_BATCH, TRIM_EVERY};
use super::{DecisionLog, LogError, Queue, Recovered, Request, Stats};

/// Most operations in one etcd transaction (etcd's default `--max-txn-ops`
/// is 128).
pub const MAX_OPS: usize = 128;
/// Most bytes of keys and values in one transaction (etcd's default
/// `--max-request-bytes` is 1.5 MiB; the rest is headroom for framing).
pub const MAX_TXN_BYTES: usize = 1024 * 1024;
/// Records read per page at recovery.
const PAGE: i64 = 1000;

/// Where a leader's log lives and what guards its writes.
#[derive(Clone)]
pub struct EtcdLog {
    pub etcd: Arc<Etcd>,
    /// The cluster's key prefix, ending in `/`.
    pub prefix: String,
    /// The leadership key and the create revision of this leader's election.
    pub leader_key: Vec<u8>,
    pub epoch: i64,
    /// Called when etcd refuses a write because leadership moved on; it
    /// must stop the process acting as leader (it does not return).
    pub on_deposed: Arc<dyn Fn(String) + Send + Sync>,
    /// How often the leader compacts etcd's history (zero: never).
    pub compact_every: Duration,
}

impl EtcdLog {
    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.prefix).into_bytes()
    }

    fn guard(&self) -> pb::Compare {
        op::created_at(self.leader_key.clone(), self.epoch)
    }

    /// One guarded transaction, sent until etcd answers; a refused guard
    /// deposes this leader.
    async fn write(&self, ops: Vec<pb::RequestOp>) -> Result<(), LogError> {
        let req = pb::TxnRequest { compare: vec![self.guard()], success: ops, failure: vec![] };
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            let started = Instant::now();
            match self.etcd.txn(req.clone()).await {
                Ok(r) if r.succeeded => {
                    metrics::histogram!("twopc_decision_log_write_seconds").record(started.elapsed().as_secs_f64());
                    return Ok(());
                }
                Ok(_) => {
                    (self.on_deposed)(format!(
                        "etcd refused a decision-log write: {} no longer has this leader's create revision {}",
                        String::from_utf8_lossy(&self.leader_key),
                        self.epoch
                    ));
                    return Err(LogError::Invalid("deposed: leadership moved to another coordinator".into()));
                }
                Err(e) if e.is_transient() => {
                    metrics::counter!("twopc_decision_log_write_retries_total").increment(1);
                    if backoff.attempts().is_multiple_of(10) {
                        tracing::warn!(error = %e, retry = backoff.attempts(), "decision-log write to etcd failed; resending (the record is durable only once etcd answers)");
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(LogError::Invalid(format!("etcd refused a decision-log write: {e}"))),
            }
        }
    }

    /// Every key under `P/rest` (paged), in key order.
    async fn scan(&self, rest: &str) -> Result<Vec<pb::KeyValue>, LogError> {
        let start = self.key(rest);
        let end = prefix_end(&start);
        let mut from = start;
        let mut out = vec![];
        loop {
            let r = self.etcd.range(&from, &end, PAGE).await.map_err(etcd_error)?;
            let more = r.more;
            if let Some(last) = r.kvs.last() {
                from = last.key.clone();
                from.push(0);
            }
            out.extend(r.kvs);
            if !more {
                return Ok(out);
            }
        }
    }
}

fn etcd_error(e: EtcdError) -> LogError {
    LogError::Invalid(e.to_string())
}

impl DecisionLog {
    /// Opens the log of a cluster of `partitions` in etcd as its leader
    /// (after winning the election): writes the log's identity if this is
    /// the first leader ever, checks it otherwise, reads back what the log
    /// holds (rule 15), and starts the writer task.
    pub async fn open_etcd(log: EtcdLog, partitions: u32, keep_finished: usize) -> Result<(Self, Recovered), LogError> {
        let (parts_key, id_key) = (log.key("meta/partitions"), log.key("meta/cluster_id"));
        let mut meta = BTreeMap::new();
        for _ in 0..2 {
            meta = log.scan("meta/").await?.into_iter().map(|kv| (kv.key, kv.value)).collect();
            if meta.contains_key(&parts_key) {
                break;
            }
            // The first leader of this cluster: its identity, once.
            let id = uuid::Uuid::now_v7().to_string();
            let req = pb::TxnRequest {
                compare: vec![log.guard(), op::created_at(parts_key.clone(), 0)],
                success: vec![op::put(parts_key.clone(), partitions.to_string(), 0), op::put(id_key.clone(), id, 0)],
                failure: vec![],
            };
            log.etcd.txn(req).await.map_err(etcd_error)?;
        }
        let stored = meta.get(&parts_key).map(|v| String::from_utf8_lossy(v).to_string());
        match stored {
            Some(s) if s == partitions.to_string() => {}
            Some(s) => {
                return Err(LogError::Invalid(format!(
                    "the decision log under {} in etcd belongs to a cluster of {s} partitions, not {partitions}: \
                     pass --partitions {s} or use another --cluster-name",
                    log.prefix
                )));
            }
            None => {
                return Err(LogError::Invalid(
                    "could not write the log's identity to etcd (no longer the leader?)".into(),
                ));
            }
        }
        let cluster_id = meta
            .get(&id_key)
            .map(|v| String::from_utf8_lossy(v).to_string())
            .ok_or_else(|| LogError::Invalid(format!("{}meta/cluster_id is missing in etcd", log.prefix)))?;
        let forgotten_through = read_or_start_mark(&log).await?;

        // The epoch is the leadership key's create revision: each new
        // leader's is larger than every earlier one's.
        let mut rec = Recovered {
            cluster_id,
            term: log.epoch as u64,
            forgotten_through: Some(forgotten_through),
            ..Default::default()
        };
        for kv in log.scan("members/").await? {
            let key = String::from_utf8_lossy(&kv.key).to_string();
            let p = key.rsplit('/').next().and_then(|p| p.parse().ok());
            let p = p.ok_or_else(|| LogError::Invalid(format!("corrupt member key {key:?}")))?;
            rec.members.push((p, String::from_utf8_lossy(&kv.value).to_string()));
        }
        for kv in log.scan("stores/").await? {
            let key = String::from_utf8_lossy(&kv.key).to_string();
            let p = key.rsplit('/').next().and_then(|p| p.parse().ok());
            let p = p.ok_or_else(|| LogError::Invalid(format!("corrupt store id key {key:?}")))?;
            rec.store_ids.push((p, String::from_utf8_lossy(&kv.value).to_string()));
        }
        for kv in log.scan("log/").await? {
            let key = String::from_utf8_lossy(&kv.key).to_string();
            let tid = key.rsplit('/').next().unwrap_or_default();
            let tid = Tid::parse_str(tid).map_err(|e| LogError::Invalid(format!("corrupt tid in {key:?}: {e}")))?;
            match decode(&kv.value)? {
                Record::Commit(parts) => rec.unfinished.push((tid, parts)),
                Record::Delegated(p, declared) => {
                    rec.delegated.push((tid, p));
                    rec.delegated_counts.extend(declared.map(|n| (tid, n)));
                }
                Record::Finished => rec.finished.push(tid),
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let finished: VecDeque<Tid> = rec.finished.iter().copied().collect();
        let marks = MarkState { finished, keep_finished, forgotten_through };
        tokio::spawn(writer(log.clone(), rx, marks, stats.clone()));
        if !log.compact_every.is_zero() {
            tokio::spawn(compactor(log));
        }
        Ok((Self { tx: Queue::Task(tx), stats }, rec))
    }
}

/// The log's low-water mark (see module docs), put at the tid just before
/// now if the log has none yet. Guarded: only this leader may start it.
async fn read_or_start_mark(log: &EtcdLog) -> Result<Tid, LogError> {
    let key = log.key(MARK);
    for _ in 0..2 {
        let r = log.etcd.range(&key, &[], 1).await.map_err(etcd_error)?;
        if let Some(kv) = r.kvs.first() {
            let v = String::from_utf8_lossy(&kv.value);
            return Tid::parse_str(&v)
                .map_err(|e| LogError::Invalid(format!("corrupt {}{MARK} {v:?}: {e}", log.prefix)));
        }
        let start = twopc_proto::tid::newest_before_now().to_string();
        let req = pb::TxnRequest {
            compare: vec![log.guard(), op::created_at(key.clone(), 0)],
            success: vec![op::put(key.clone(), start, 0)],
            failure: vec![],
        };
        log.etcd.txn(req).await.map_err(etcd_error)?;
    }
    Err(LogError::Invalid(format!("could not start {}{MARK} in etcd (no longer the leader?)", log.prefix)))
}

/// The mark's key under the prefix.
const MARK: &str = "forgotten_through";

/// What the mark writer keeps: the finished records, oldest mark first,
/// and the low-water mark written so far.
struct MarkState {
    finished: VecDeque<Tid>,
    keep_finished: usize,
    forgotten_through: Tid,
}

enum Record {
    Commit(Vec<PartitionId>),
    /// The partition, and the declared count when the record holds one
    /// (`Recovered::delegated_counts`).
    Delegated(PartitionId, Option<u64>),
    Finished,
}

fn encode_parts(parts: &[PartitionId]) -> String {
    parts.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
}

fn decode(v: &[u8]) -> Result<Record, LogError> {
    let s = String::from_utf8_lossy(v);
    let bad = || LogError::Invalid(format!("corrupt decision record {s:?}"));
    let parts = |rest: &str| -> Result<Vec<PartitionId>, LogError> {
        rest.split(',').filter(|p| !p.is_empty()).map(|p| p.parse().map_err(|_| bad())).collect()
    };
    match s.split_once(' ') {
        _ if s == "F" => Ok(Record::Finished),
        Some(("C", rest)) => Ok(Record::Commit(parts(rest)?)),
        Some(("D", rest)) => match parts(rest)?.as_slice() {
            [p] => Ok(Record::Delegated(*p, None)),
            [p, n] => Ok(Record::Delegated(*p, Some((*n).into()))),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// The writer task: group commit of forced records into guarded etcd
/// transactions. Unforced marks go to a task of their own ([`mark_writer`]):
/// with etcd every write is a full Raft round (unlike SQLite, where a mark
/// costs no fsync), and a COMMIT record must not queue behind the previous
/// transaction's "finished" mark. That is safe because a mark is only ever
/// sent after its record was acknowledged, so the two never race on a key.
async fn writer(log: EtcdLog, mut rx: mpsc::UnboundedReceiver<Request>, state: MarkState, stats: Arc<Stats>) {
    let (marks, marks_rx) = mpsc::unbounded_channel();
    tokio::spawn(mark_writer(log.clone(), marks_rx, state));
    while let Some(batch) = next_batch(&mut rx).await {
        let (forced, unforced): (Vec<Request>, Vec<Request>) = batch.into_iter().partition(Request::forced);
        for mark in unforced {
            let _ = marks.send(mark);
        }
        if forced.is_empty() {
            continue;
        }
        // Last write of each key wins (etcd refuses a key twice in a txn).
        let mut writes: BTreeMap<Vec<u8>, Option<String>> = BTreeMap::new();
        for req in &forced {
            match req {
                Request::Commit { tid, partitions, one_phase, .. } => {
                    let kind = if *one_phase { "D" } else { "C" };
                    writes.insert(log.key(&format!("log/{tid}")), Some(format!("{kind} {}", encode_parts(partitions))));
                }
                Request::Register { partition, address, store_id, .. } => {
                    writes.insert(log.key(&format!("members/{partition:05}")), Some(address.clone()));
                    if !store_id.is_empty() {
                        writes.insert(log.key(&format!("stores/{partition:05}")), Some(store_id.clone()));
                    }
                }
                Request::Finished { .. } | Request::Forget { .. } => {}
            }
        }
        let result = write_all(&log, writes).await;
        if result.is_ok() {
            metrics::counter!("twopc_decision_log_fsyncs_total").increment(1);
            metrics::histogram!("twopc_decision_log_batch_size").record(forced.len() as f64);
            stats.forced_batches.fetch_add(1, Ordering::Relaxed);
            stats.forced_records.fetch_add(forced.len() as u64, Ordering::Relaxed);
        }
        for req in forced {
            if let Request::Commit { done, .. } | Request::Register { done, .. } = req {
                let _ = done.send(result.as_ref().map(|_| ()).map_err(|e| LogError::Invalid(e.to_string())));
            }
        }
    }
}

/// How long the mark writer gathers marks before writing them: marks are
/// unforced, so waiting costs nothing but a few more tids re-driven after a
/// failover, and it saves etcd (and the disks it shares) a Raft round per
/// transaction at low concurrency.
const MARK_GATHER: Duration = Duration::from_millis(50);

/// The unforced marks: "finished" and "forget", gathered for
/// [`MARK_GATHER`] and batched the same way, and the trim of finished
/// records beyond `keep_finished`, with the low-water mark raised in the
/// trim's first transaction.
async fn mark_writer(log: EtcdLog, mut rx: mpsc::UnboundedReceiver<Request>, state: MarkState) {
    let MarkState { mut finished, keep_finished, mut forgotten_through } = state;
    loop {
        let Some(first) = rx.recv().await else { return };
        tokio::time::sleep(MARK_GATHER).await;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut writes: BTreeMap<Vec<u8>, Option<String>> = BTreeMap::new();
        for req in &batch {
            match req {
                Request::Finished { tid } => {
                    writes.insert(log.key(&format!("log/{tid}")), Some("F".into()));
                    finished.push_back(*tid);
                }
                Request::Forget { tid } => {
                    writes.insert(log.key(&format!("log/{tid}")), None);
                }
                Request::Commit { .. } | Request::Register { .. } => {}
            }
        }
        let mut first = None;
        if finished.len() >= keep_finished + TRIM_EVERY {
            let n = finished.len() - keep_finished;
            for tid in finished.drain(..n) {
                writes.insert(log.key(&format!("log/{tid}")), None);
                forgotten_through = forgotten_through.max(tid);
            }
            // Rule 6: the mark goes first, so no delete lands without it.
            first = Some((log.key(MARK), Some(forgotten_through.to_string())));
        }
        // A lost "finished" mark only makes a later leader re-drive the
        // tid (rule 11); a lost trim leaves its records and the old
        // low-water mark, which still covers nothing the log keeps.
        let _ = write_all(&log, first.into_iter().chain(writes)).await;
    }
}

/// Every queued request, up to [`MAX_BATCH`], once at least one is there.
async fn next_batch(rx: &mut mpsc::UnboundedReceiver<Request>) -> Option<Vec<Request>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Writes `writes` as guarded transactions within etcd's limits, in order.
async fn write_all(log: &EtcdLog, writes: impl IntoIterator<Item = (Vec<u8>, Option<String>)>) -> Result<(), LogError> {
    for ops in chunks(writes) {
        if let Err(e) = log.write(ops).await {
            tracing::error!(error = %e, "decision log write failed");
            return Err(e);
        }
    }
    Ok(())
}

/// Splits writes into transactions within etcd's default limits, in order
/// (the first write lands in the first transaction).
fn chunks(writes: impl IntoIterator<Item = (Vec<u8>, Option<String>)>) -> Vec<Vec<pb::RequestOp>> {
    let mut out = vec![];
    let (mut cur, mut bytes) = (vec![], 0);
    for (key, value) in writes {
        let size = key.len() + value.as_ref().map_or(0, |v| v.len()) + 16;
        if !cur.is_empty() && (cur.len() >= MAX_OPS || bytes + size > MAX_TXN_BYTES) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += size;
        cur.push(match value {
            Some(v) => op::put(key, v, 0),
            None => op::delete(key),
        });
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Revisions of history the leader leaves uncompacted. twopc reads no
/// history (no watches); a revision can hold a whole group commit (up to
/// 128 records), so measured at concurrency 64: 10,000 kept revisions held
/// etcd's database near 115 MB, 1,000 near 25 MB.
const KEEP_REVISIONS: i64 = 1_000;

/// Compacts etcd's history at once and then every `compact_every`, to
/// [`KEEP_REVISIONS`] before the current revision, so the database stays
/// bounded under constant writes, also when leaders change often (each new
/// leader compacts as soon as it serves; nothing depends on a leader
/// living a whole period).
async fn compactor(log: EtcdLog) {
    let mut tick = tokio::time::interval(log.compact_every);
    let mut done = 0;
    loop {
        tick.tick().await;
        let now = match log.etcd.range(&log.leader_key, &[], 1).await {
            Ok(r) => r.header.map_or(0, |h| h.revision),
            Err(_) => continue,
        };
        let to = now - KEEP_REVISIONS;
        if to > done {
            match log.etcd.compact(to).await {
                Ok(()) => tracing::debug!(revision = to, "compacted etcd history"),
                // Compacted already (by another leader, or etcd's own
                // auto-compaction): fine.
                Err(e) => tracing::debug!(error = %e, "etcd compaction skipped"),
            }
            done = to;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_stay_within_etcds_default_limits() {
        let mut writes = BTreeMap::new();
        for i in 0..1000 {
            writes.insert(format!("/twopc/x/log/{i:05}").into_bytes(), Some("C 0,1,2".to_string()));
        }
        let c = chunks(writes);
        assert_eq!(c.len(), 1000usize.div_ceil(MAX_OPS));
        assert!(c.iter().all(|t| t.len() <= MAX_OPS));
        // Large values split by bytes.
        let mut big = BTreeMap::new();
        for i in 0..5 {
            big.insert(format!("k{i}").into_bytes(), Some("x".repeat(400 * 1024)));
        }
        let c = chunks(big);
        assert!(c.len() >= 2, "5 x 400 KiB must not go in one 1 MiB transaction");
    }

    #[test]
    fn the_mark_lands_in_the_first_transaction_before_any_delete() {
        let deletes: BTreeMap<Vec<u8>, Option<String>> =
            (0..300).map(|i| (format!("/twopc/x/log/{i:05}").into_bytes(), None)).collect();
        let mark = (b"/twopc/x/forgotten_through".to_vec(), Some("01900000-0000-7000-8000-000000000001".to_string()));
        let c = chunks(std::iter::once(mark).chain(deletes));
        assert!(c.len() >= 3 && c.iter().all(|t| t.len() <= MAX_OPS));
        match &c[0][0].request {
            Some(pb::request_op::Request::RequestPut(p)) => assert_eq!(p.key, b"/twopc/x/forgotten_through"),
            other => panic!("the first write must be the mark: {other:?}"),
        }
    }

    #[test]
    fn records_decode_as_written() {
        assert!(matches!(decode(b"C 0,2").unwrap(), Record::Commit(p) if p == vec![0, 2]));
        assert!(matches!(decode(b"D 1").unwrap(), Record::Delegated(1, None)));
        assert!(matches!(decode(b"D 1,4").unwrap(), Record::Delegated(1, Some(4))));
        assert!(matches!(decode(b"F").unwrap(), Record::Finished));
        assert!(decode(b"D 1,2,3").is_err());
        assert!(decode(b"X").is_err());
    }
}
