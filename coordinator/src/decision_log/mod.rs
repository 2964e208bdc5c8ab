//! The coordinator's durable decision log, behind one interface with two
//! places to live:
//!
//! - [`sqlite`] (the default): one file on this machine's disk, fsynced.
//! - [`etcd`]: a Raft-replicated etcd cluster, for several coordinators of
//!   which one leads (PROTOCOL.md rules 14-16). A record there is durable
//!   once a quorum of etcd members has it, and every write is conditional
//!   on the writer's leadership.
//!
//! The interface is the queue of [`Request`]s behind the [`DecisionLog`]
//! handle, what a backend's writer answers (a forced request is answered
//! only once durable: then and only then may the caller act on it), and
//! what it reads back at start ([`Recovered`]). Both backends keep the
//! same rules:
//! - **Forced** records: COMMIT (naming the partitions that voted YES,
//!   rule 4), DELEGATED (one-phase commit handed to one partition), the
//!   partition map (so phase 2 reaches participants after a restart; with
//!   each partition's store id, so a registration from another store is
//!   refused after a restart too: `crate::store_ids`), and
//!   the log's identity (its partition count and cluster id). Aborts are
//!   never written: an absent tid is presumed aborted.
//! - **Unforced** marks: a COMMIT whose phase 2 finished, a DELEGATED
//!   record whose participant answered. If a mark is lost in a crash,
//!   recovery re-drives the tid and participants answer again (rule 11).
//! - **Group commit**: a writer takes every queued request into one write
//!   (one fsync, or one etcd transaction split at etcd's limits), so
//!   concurrent forced records share it; a lone record never waits for
//!   company.
//! - **Bounded**: finished records are kept for the newest
//!   `keep_finished` (to answer a client asking about its commit after a
//!   restart), then deleted.
//! - **Low-water mark** (rule 6): the newest tid whose finished record was
//!   deleted, written in the same write as the deletes (never after them)
//!   and only raised. A log starts it at its creation (or at the first
//!   open by a version that keeps it): nothing older is remembered. The
//!   coordinator answers an unknown tid no newer than the mark "forgotten"
//!   to clients, never a presumed ABORTED: it may have committed.
//!
//! Another store could be added as a third writer of the same queue.

pub mod etcd;
pub mod sqlite;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::oneshot;
use twopc_core::{PartitionId, Tid};

pub use sqlite::check_existing;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("decision log: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("decision log: {0}")]
    Invalid(String),
    #[error("decision log writer stopped")]
    Stopped,
    /// The write failed for lack of space (`SQLITE_FULL`): it certainly did
    /// not take effect, so the caller may act on "not written" (see
    /// `twopc_proto::disk_full`), unlike every other error here.
    #[error("{0}")]
    DiskFull(String),
}

/// What the log held at start (rule 7).
#[derive(Debug, Default)]
pub struct Recovered {
    /// COMMIT records whose phase 2 did not finish.
    pub unfinished: Vec<(Tid, Vec<PartitionId>)>,
    /// COMMIT records that finished (kept to answer repeated questions),
    /// and one-phase commits the participant confirmed.
    pub finished: Vec<Tid>,
    /// DELEGATED records whose participant has not answered.
    pub delegated: Vec<(Tid, PartitionId)>,
    /// The declared count of operations of those DELEGATED records that
    /// carry one (a declared commit, `twopc_core::coordinator`): recorded
    /// after the partition in the record's partition list (`p,n`), which an
    /// older log's records never have.
    pub delegated_counts: Vec<(Tid, u64)>,
    pub members: Vec<(PartitionId, String)>,
    /// The store id recorded per partition (`crate::store_ids`); a
    /// partition last registered without one (a participant or log from
    /// before store ids) has none.
    pub store_ids: Vec<(PartitionId, String)>,
    /// The log's cluster id (see module docs).
    pub cluster_id: String,
    /// The low-water mark of forgotten decisions (see module docs): every
    /// unknown tid no newer than it may have committed. `None` only from a
    /// backend that keeps none.
    pub forgotten_through: Option<Tid>,
    /// This coordinator's term: larger than that of every coordinator that
    /// used this log before (the SQLite log counts its opens, durably; the
    /// replicated log uses the leader's epoch). Participants abort the
    /// unprepared tids of older terms when they hear it (rule 10).
    pub term: u64,
}

pub enum Request {
    Commit {
        tid: Tid,
        partitions: Vec<PartitionId>,
        one_phase: bool,
        done: oneshot::Sender<Result<(), LogError>>,
    },
    Finished {
        tid: Tid,
    },
    Forget {
        tid: Tid,
    },
    /// `store_id`: empty keeps the recorded one (a participant that sends none).
    Register {
        partition: PartitionId,
        address: String,
        store_id: String,
        done: Done,
    },
}

/// Answers a forced request once it is durable.
pub type Done = oneshot::Sender<Result<(), LogError>>;

impl Request {
    /// Whether the caller waits for this request to be durable.
    pub fn forced(&self) -> bool {
        !matches!(self, Request::Finished { .. } | Request::Forget { .. })
    }
}

/// Handle to the log's writer thread. Cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    tx: Queue,
    stats: Arc<Stats>,
}

/// The writer's queue: the SQLite writer is a thread of its own, the etcd
/// writer a task.
#[derive(Clone)]
enum Queue {
    Thread(std::sync::mpsc::Sender<Request>),
    Task(tokio::sync::mpsc::UnboundedSender<Request>),
}

impl Queue {
    fn send(&self, req: Request) -> Result<(), LogError> {
        match self {
            Queue::Thread(tx) => tx.send(req).map_err(|_| LogError::Stopped),
            Queue::Task(tx) => tx.send(req).map_err(|_| LogError::Stopped),
        }
    }
}

/// Counters of the writer thread: how well group commit batches.
#[derive(Debug, Default)]
pub struct Stats {
    /// SQLite transactions that were forced (one fsync each).
    pub forced_batches: AtomicU64,
    /// Forced records written (COMMIT records, registrations).
    pub forced_records: AtomicU64,
}

impl DecisionLog {
    /// Forces a COMMIT record. Returns once it is durable.
    pub async fn force_commit(&self, tid: Tid, partitions: Vec<PartitionId>) -> Result<(), LogError> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Request::Commit { tid, partitions, one_phase: false, done })?;
        rx.await.map_err(|_| LogError::Stopped)?
    }

    /// Forces a DELEGATED record (one-phase commit by `partition`).
    /// Returns once it is durable.
    pub async fn force_delegation(&self, tid: Tid, partition: PartitionId) -> Result<(), LogError> {
        self.force_delegation_declared(tid, partition, None).await
    }

    /// Forces a DELEGATED record that also holds the client's declared
    /// count of operations at `partition` (see [`Recovered::delegated_counts`]):
    /// a coordinator that recovers the record re-sends CommitOnePhase with
    /// it, and the participant, which aborts a declared tid it is asked to
    /// commit without a count, can still commit it.
    pub async fn force_delegation_declared(
        &self,
        tid: Tid,
        partition: PartitionId,
        declared: Option<u64>,
    ) -> Result<(), LogError> {
        let (done, rx) = oneshot::channel();
        let mut partitions = vec![partition];
        // Bounded by the participants' --max-ops-per-tid, far below u32::MAX.
        partitions.extend(declared.map(|n| PartitionId::try_from(n).unwrap_or(PartitionId::MAX)));
        let req = Request::Commit { tid, partitions, one_phase: true, done };
        self.tx.send(req)?;
        rx.await.map_err(|_| LogError::Stopped)?
    }

    /// Drops the DELEGATED record of a one-phase commit that aborted (not
    /// forced: presumed abort needs no record).
    pub fn forget(&self, tid: Tid) {
        let _ = self.tx.send(Request::Forget { tid });
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Marks a COMMIT finished (not forced; see module docs).
    pub fn finished(&self, tid: Tid) {
        let _ = self.tx.send(Request::Finished { tid });
    }

    /// Records a participant's address durably (its store id unchanged).
    pub async fn register(&self, partition: PartitionId, address: String) -> Result<(), LogError> {
        self.register_store(partition, address, String::new()).await
    }

    /// Records a participant's address and its store's id durably, in one
    /// write (an empty `store_id` keeps the recorded one).
    pub async fn register_store(
        &self,
        partition: PartitionId,
        address: String,
        store_id: String,
    ) -> Result<(), LogError> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Request::Register { partition, address, store_id, done })?;
        rx.await.map_err(|_| LogError::Stopped)?
    }
}
