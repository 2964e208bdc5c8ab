//! One transaction, by tid.
//!
//! The participants hold the locks and writes; the coordinator must know
//! every one of them before it decides (PROTOCOL.md rule 2). Two ways, and
//! a `Txn` takes one for its whole life:
//! - **Declared** (a `Txn` from [`crate::Client::begin`], unless
//!   [`crate::ConnectOptions::declare`] is off): the library is part of the
//!   protocol. Every operation is sent `declared`, with the time left until
//!   the deadline, and its participant answers without waiting to enlist
//!   (it enlists in the background). The library counts, per partition,
//!   the operations that succeeded, in one place (`operate_once`, which
//!   every operation goes through, alone or several at once), and
//!   `commit` declares those counts: the coordinator prepares every
//!   declared partition and every enlisted one, aborts if one enlisted was
//!   not declared, and each participant votes NO if it applied another
//!   number (e.g. it restarted between two operations). Clones share the
//!   counts; another process cannot commit such a tid (`twopc commit
//!   --tid` is refused: it could not know the counts), only abort it.
//! - **Enlist first** (a `Txn` attached by tid with [`crate::Client::txn`],
//!   e.g. the CLI's `put --tid`): each participant enlists with the
//!   coordinator before it answers the tid's first operation there, so
//!   commit needs no list of touched partitions and another process
//!   attached by the same tid is the same transaction. Slower: the first
//!   operation at each participant waits for the enlistment's round trip.
//!
//! `commit` is safe to repeat.
//!
//! **A failed operation aborts the transaction.** The caller meant the whole
//! write set; committing what is left after one operation failed would
//! commit part of it. So when a get, put or delete fails, the library
//! aborts the tid at the coordinator at once, with
//! [`AbortKind::OperationFailed`] and the operation's error as the reason
//! (a participant that aborted the tid itself, e.g. on a wait-die
//! conflict, has already told the coordinator its own reason, which is kept:
//! the first reason a tid aborts for is the one everyone hears). Later
//! operations on the handle are refused (ABORTED), and `commit` answers
//! [`Outcome::Aborted`] with that reason, never COMMITTED. "Failed" is any
//! error except a validation error (INVALID_ARGUMENT: raised by the library
//! before anything was sent, or by the participant's input checks, which
//! run before the operation does anything: no enlistment, no lock, nothing
//! buffered; the caller can correct the input and go on). So an error
//! status from a participant (ABORTED, FAILED_PRECONDITION, NOT_FOUND,
//! RESOURCE_EXHAUSTED, INTERNAL, ...), a participant that cannot be reached
//! or routed to, and a transport error where the operation may or may not
//! have been applied all abort the transaction. The last is why the abort
//! is needed at all: the participant may hold the write, and only the
//! coordinator's abort (it knows every enlisted participant) makes sure it
//! is never committed. If that abort cannot be delivered, this
//! handle still never commits (`commit` retries the abort and answers
//! ABORTED); the coordinator aborts the tid at its deadline. Another
//! handle or process attached to the same tid (the CLI's step-by-step
//! `put --tid`, `commit --tid`) learns it from the coordinator: the abort
//! was sent before the failed operation's error was returned.
//!
//! **Operations in flight at once.** Every method takes `&self`, so one
//! transaction's operations can run concurrently: join their futures, and
//! operations on different partitions travel in parallel (a participant's
//! concurrent operations share one OperateBatch RPC). The rules above hold
//! for each: the first to fail aborts the transaction, and the others are
//! then refused or their writes never commit. What runs concurrently has no
//! order between them, so join only operations on different keys (on one
//! key, e.g. a put and a get of it, await them in order).
//!
//! ```no_run
//! # async fn f(client: twopc_client::Client) -> Result<(), twopc_client::ClientError> {
//! let txn = client.begin(None).await?;
//! // Three partitions written at once: one round trip, not three.
//! let (a, b, c) = tokio::join!(txn.put(b"a", b"1"), txn.put(b"b", b"2"), txn.put(b"c", b"3"));
//! a?;
//! b?;
//! c?;
//! // Or as one call, answers in the caller's order (see `Txn::run`).
//! use twopc_client::{Op, OpResult};
//! let results = txn.run(&[Op::get_for_update(b"a"), Op::put(b"d", b"4"), Op::get(b"a")]).await?;
//! assert_eq!(results[2], OpResult::Value(Some(b"1".to_vec())));
//! txn.commit().await?;
//! # Ok(()) }
//! ```
//!
//! [`Txn::run`] takes a list of operations: those on the same key run one
//! after another in the list's order (each waits for the one before), the
//! chains of different keys run concurrently, so each participant gets its
//! share in one OperateBatch (two at most while an earlier batch is still
//! in flight) and the partitions are reached in parallel. Every operation
//! goes through the same per-operation path as `get`/`put`/`delete`
//! (`Txn::operate`: failure handling, the resend alone of an operation that
//! must wait for a lock), so a run is exactly the same transaction as its
//! operations awaited one by one, minus the waiting.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use twopc_leader::follow::{FollowError, Policy, Retry};
use twopc_proto::Backoff;
use twopc_proto::pb;
use twopc_proto::pb::operation::Kind;
use twopc_proto::reason;
use uuid::Uuid;

use crate::{AbortKind, Client, ClientError, Decision};

/// How a commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Aborted {
        /// Why, in words: the real cause, as the process that aborted it
        /// saw it (which participant, what happened; or the error of the
        /// operation that failed).
        reason: String,
        /// The kind of that cause.
        kind: AbortKind,
    },
    /// The coordinator no longer knows the outcome: the tid is older than
    /// the oldest decision its log keeps, so it may have committed or
    /// aborted; check the data (PROTOCOL.md rule 6). Only a commit of an
    /// old tid by tid (e.g. `twopc commit --tid`) can hear it.
    Forgotten {
        reason: String,
    },
}

/// One operation of [`Txn::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// [`Txn::get`].
    Get { key: Vec<u8> },
    /// [`Txn::get_for_update`].
    GetForUpdate { key: Vec<u8> },
    /// [`Txn::put`].
    Put { key: Vec<u8>, value: Vec<u8> },
    /// [`Txn::delete`].
    Delete { key: Vec<u8> },
}

impl Op {
    pub fn get(key: &[u8]) -> Op {
        Op::Get { key: key.to_vec() }
    }

    pub fn get_for_update(key: &[u8]) -> Op {
        Op::GetForUpdate { key: key.to_vec() }
    }

    pub fn put(key: &[u8], value: &[u8]) -> Op {
        Op::Put { key: key.to_vec(), value: value.to_vec() }
    }

    pub fn delete(key: &[u8]) -> Op {
        Op::Delete { key: key.to_vec() }
    }

    /// The key the operation is on.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Get { key } | Op::GetForUpdate { key } | Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// What one operation of [`Txn::run`] answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// A get's value (`None`: the key has none).
    Value(Option<Vec<u8>>),
    /// A put or delete was applied (buffered under its lock).
    Done,
}

impl OpResult {
    /// The value read, for a get; `None` for a put or delete.
    pub fn value(&self) -> Option<&[u8]> {
        match self {
            OpResult::Value(v) => v.as_deref(),
            OpResult::Done => None,
        }
    }
}

/// A transaction handle; clones refer to the same transaction.
#[derive(Debug, Clone)]
pub struct Txn {
    client: Client,
    tid: Uuid,
    deadline_unix_ms: u64,
    /// The deadline on this machine's monotonic clock, from the remaining
    /// time the coordinator sent (`None`: attached by tid, or an older
    /// coordinator; then `deadline_unix_ms` on this machine's wall clock).
    pub(crate) expires: Option<std::time::Instant>,
    /// Whether a put or delete was sent: tells the coordinator whether a
    /// transaction on one participant may commit in one phase (see
    /// `CommitRequest.wrote`; a handle attached by tid does not know).
    wrote: Arc<AtomicBool>,
    /// The first operation that failed, in words: the transaction is
    /// aborted (see the module docs), and this is its reason.
    failed: Arc<Mutex<Option<String>>>,
    /// Whether its operations are declared (see the module docs): begun by
    /// this client with declaration on, and the deadline's time left known.
    pub(crate) declaring: bool,
    /// Declared: the operations that succeeded, per partition (see the
    /// module docs). Shared by clones.
    counts: Arc<Mutex<BTreeMap<u32, u64>>>,
    /// `commit` was called: later operations are refused here. (A declared
    /// operation of a tid its participant has finished and forgotten
    /// would be taken there as a new one, answered, and only then dropped
    /// when its enlistment is refused.)
    commit_asked: Arc<AtomicBool>,
    /// Held shared by every operation from its check of `commit_asked`
    /// until its count is taken; `commit` takes it exclusively after
    /// setting `commit_asked`, so its declaration includes every operation
    /// that was let through (one joined with the commit, e.g.
    /// `join!(txn.put(k, v), txn.commit())`, would otherwise be answered
    /// OK at a partition the declaration left out, and dropped there when
    /// its enlistment is refused after the decision).
    in_flight: Arc<tokio::sync::RwLock<()>>,
}

impl Txn {
    pub(crate) fn new(client: Client, tid: Uuid, deadline_unix_ms: u64) -> Self {
        Txn {
            client,
            tid,
            deadline_unix_ms,
            expires: None,
            wrote: Arc::default(),
            failed: Arc::default(),
            declaring: false,
            counts: Arc::default(),
            commit_asked: Arc::default(),
            in_flight: Arc::default(),
        }
    }

    /// Whether this transaction's operations are declared at commit (see
    /// the module docs): false for one attached by tid.
    pub fn declares(&self) -> bool {
        self.declaring
    }

    /// The failed operation that aborted this transaction, if one did.
    pub fn failed_operation(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn tid(&self) -> Uuid {
        self.tid
    }

    /// When the coordinator will abort this transaction if it is still
    /// open; 0 when unknown (attached by tid).
    pub fn deadline_unix_ms(&self) -> u64 {
        self.deadline_unix_ms
    }

    /// How long an operation may wait (e.g. for a lock): until a little
    /// after the deadline, when the coordinator aborts the tid anyway.
    /// Unlimited when the deadline is unknown.
    fn limit(&self) -> Option<Duration> {
        const GRACE: Duration = Duration::from_secs(2);
        if let Some(expires) = self.expires {
            return Some(expires.saturating_duration_since(std::time::Instant::now()) + GRACE);
        }
        (self.deadline_unix_ms > 0).then(|| {
            let left = self.deadline_unix_ms.saturating_sub(twopc_proto::now_unix_ms());
            Duration::from_millis(left) + GRACE
        })
    }

    /// Reads `key` under a shared lock.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.read(key, false).await
    }

    /// Reads `key` under an exclusive lock, for a key this transaction is
    /// about to write (read-modify-write): two transactions doing the same
    /// then queue instead of both taking shared locks and one dying on the
    /// upgrade.
    pub async fn get_for_update(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.read(key, true).await
    }

    async fn read(&self, key: &[u8], for_update: bool) -> Result<Option<Vec<u8>>, ClientError> {
        let kind = if for_update { Kind::GetForUpdate } else { Kind::Get };
        let resp = self.operate(kind, key, vec![]).await?;
        Ok(resp.found.then_some(resp.value))
    }

    /// Writes `key` under an exclusive lock.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        self.wrote.store(true, Ordering::Relaxed);
        self.operate(Kind::Put, key, value.to_vec()).await.map(drop)
    }

    /// Deletes `key` under an exclusive lock.
    pub async fn delete(&self, key: &[u8]) -> Result<(), ClientError> {
        self.wrote.store(true, Ordering::Relaxed);
        self.operate(Kind::Delete, key, vec![]).await.map(drop)
    }

    /// Runs `ops` with as much in flight at once as their keys allow (see
    /// the module docs): those on one key in the given order, each chain of
    /// another key concurrently, so one request per participant travels in
    /// parallel instead of one round trip per operation. The answers come
    /// back in the order of `ops`.
    ///
    /// The semantics of its operations awaited one by one are kept: each
    /// goes through the same path as [`Txn::get`], [`Txn::put`]... (an
    /// operation that must wait for a lock is resent alone and waits), and
    /// the first one that fails aborts the transaction (module docs); the
    /// chains still running are then refused at their next operation.
    /// The error returned is the first failure in the order of `ops`,
    /// preferring a real cause over the refusals it caused ("an earlier
    /// operation failed"). A validation error (INVALID_ARGUMENT) aborts
    /// nothing, as for one operation, but the other operations of the run
    /// may have been applied: correct the input and run the failed ones
    /// again, or abort.
    pub async fn run(&self, ops: &[Op]) -> Result<Vec<OpResult>, ClientError> {
        // One chain per key, in the caller's order within it.
        let mut chains: Vec<Vec<usize>> = Vec::new();
        let mut by_key: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            let chain = *by_key.entry(op.key()).or_insert_with(|| {
                chains.push(Vec::new());
                chains.len() - 1
            });
            chains[chain].push(i);
        }
        let runs = chains.into_iter().map(|chain| async move {
            let mut done = Vec::with_capacity(chain.len());
            for i in chain {
                let result = self.run_one(&ops[i]).await;
                let failed = result.is_err();
                done.push((i, result));
                if failed {
                    break;
                }
            }
            done
        });
        let mut results: Vec<Option<Result<OpResult, ClientError>>> =
            std::iter::repeat_with(|| None).take(ops.len()).collect();
        for (i, r) in futures::future::join_all(runs).await.into_iter().flatten() {
            results[i] = Some(r);
        }
        let mut first_error: Option<ClientError> = None;
        let mut answers = Vec::with_capacity(ops.len());
        // `None`: not run, an earlier operation of its key failed.
        for r in results.into_iter().flatten() {
            match r {
                Ok(a) => answers.push(a),
                // A refusal caused by another chain's failure is not the
                // cause: keep looking for the real one.
                Err(e) if first_error.as_ref().is_none_or(|f| caused_by_earlier(f) && !caused_by_earlier(&e)) => {
                    first_error = Some(e);
                }
                Err(_) => {}
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(answers),
        }
    }

    /// One operation of [`Txn::run`], through its method (so through
    /// [`Txn::operate`], the one path every operation takes).
    async fn run_one(&self, op: &Op) -> Result<OpResult, ClientError> {
        Ok(match op {
            Op::Get { key } => OpResult::Value(self.get(key).await?),
            Op::GetForUpdate { key } => OpResult::Value(self.get_for_update(key).await?),
            Op::Put { key, value } => {
                self.put(key, value).await?;
                OpResult::Done
            }
            Op::Delete { key } => {
                self.delete(key).await?;
                OpResult::Done
            }
        })
    }

    /// Runs one operation; if it fails (see the module docs for what
    /// counts), the transaction is aborted before the error is returned.
    async fn operate(&self, kind: Kind, key: &[u8], value: Vec<u8>) -> Result<pb::OperationResult, ClientError> {
        // Taken before `commit_asked` is read (see `in_flight`).
        let _in_flight = self.in_flight.read().await;
        if let Some(first) = self.failed_operation() {
            let mut marks = tonic::metadata::MetadataMap::new();
            marks.insert(EARLIER_FAILED_MARK, tonic::metadata::MetadataValue::from_static("1"));
            return Err(tonic::Status::with_metadata(
                tonic::Code::Aborted,
                format!("tid {} was aborted because an earlier operation failed ({first})", self.tid),
                marks,
            )
            .into());
        }
        if self.commit_asked.load(Ordering::SeqCst) {
            return Err(tonic::Status::failed_precondition(format!(
                "tid {}: commit was asked on this handle: no more operations are accepted after commit",
                self.tid
            ))
            .into());
        }
        let result = self.operate_once(kind, key, value).await;
        if let Err(e) = &result
            && e.code() != tonic::Code::InvalidArgument
        {
            let what = match kind {
                Kind::Put => "put",
                Kind::Delete => "delete",
                Kind::Get | Kind::GetForUpdate => "get",
                Kind::Unspecified => "operation",
            };
            if e.code() == tonic::Code::NotFound {
                // The coordinator did not know the tid: pooled tids may be
                // from one it replaced (`crate::pool`).
                self.client.drop_pool();
            }
            let why = format!("{what} of key {:?} failed: {e}", String::from_utf8_lossy(key));
            self.failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(why.clone());
            // The participant may hold the write (a transport error after
            // it was applied): only the coordinator's abort makes sure it
            // is never committed. Best effort here; `commit` tries again.
            if let Err(abort) = self.abort_because(AbortKind::OperationFailed, &why).await {
                tracing::debug!(tid = %self.tid, error = %abort, "aborting after a failed operation failed");
            }
        }
        result
    }

    /// Runs one operation ([`Txn::send_once`]) and, for a declared
    /// transaction, counts it for its partition if it succeeded: the one
    /// place operations are counted (see the module docs), so every path
    /// that runs operations must come through here.
    async fn operate_once(&self, kind: Kind, key: &[u8], value: Vec<u8>) -> Result<pb::OperationResult, ClientError> {
        let done = self.send_once(kind, key, value).await;
        if done.is_ok()
            && self.declaring
            && let Some(p) = self.client.partition_of(key)
        {
            *self.counts.lock().unwrap_or_else(|e| e.into_inner()).entry(p).or_default() += 1;
        }
        done
    }

    /// What a declared operation carries: `(declared, remaining_ms)`.
    fn declaration_fields(&self) -> (bool, u64) {
        match (self.declaring, self.expires) {
            (true, Some(expires)) => {
                let left = expires.saturating_duration_since(Instant::now()).as_millis();
                // At least 1: 0 means "not said"; a tid that is out of time
                // is then aborted at the participant for its deadline.
                (true, u64::try_from(left).unwrap_or(u64::MAX).max(1))
            }
            _ => (false, 0),
        }
    }

    /// Sends the operation batched with other transactions' operations; if
    /// it has to wait for a lock (a batch never waits), resends it alone
    /// with its unary call, which waits.
    async fn send_once(&self, kind: Kind, key: &[u8], value: Vec<u8>) -> Result<pb::OperationResult, ClientError> {
        let tid = self.tid.to_string();
        // A declared operation carries the time left: once it has run out
        // the participant could not tell (it would take a fresh tid with
        // the 1 ms we would send), so the library says it, as a
        // participant would.
        if self.declaring && self.expires.is_some_and(|e| Instant::now() >= e) {
            return Err(tonic::Status::aborted(format!(
                "tid {tid} aborted: its deadline passed (the timeout given at begin ran out); retry the transaction"
            ))
            .into());
        }
        let (declared, remaining_ms) = self.declaration_fields();
        let op = pb::Operation {
            tid: tid.clone(),
            kind: kind as i32,
            key: key.to_vec(),
            value: value.clone(),
            declared,
            remaining_ms,
        };
        // A batch never waits for a lock, so its answer is prompt even when
        // this handle does not know the deadline (attached by tid, e.g. the
        // CLI's `put --tid`): bounded then too, so that a frozen participant
        // fails the operation instead of hanging it forever.
        let batch_limit = self.limit().unwrap_or(crate::client::ADMIN_TIMEOUT);
        let done = self.client.operate(key, op, Some(batch_limit)).await?;
        if !done.must_wait {
            return Ok(done);
        }
        let limit = self.limit();
        let key_vec = key.to_vec();
        // The repeat's own time left (it may be later than the batch's).
        let (declared, remaining_ms) = self.declaration_fields();
        match kind {
            Kind::Get | Kind::GetForUpdate => {
                let req = pb::GetRequest {
                    tid,
                    key: key_vec,
                    for_update: kind == Kind::GetForUpdate,
                    declared,
                    remaining_ms,
                };
                let r = self
                    .client
                    .on_key(key, false, limit, move |mut c| {
                        let req = req.clone();
                        async move { c.get(req).await }
                    })
                    .await?;
                Ok(pb::OperationResult { found: r.found, value: r.value, ..Default::default() })
            }
            Kind::Unspecified => Err(ClientError::InvalidArgument("operation kind is missing".into())),
            Kind::Put | Kind::Delete => {
                let (put, del) = (
                    pb::PutRequest { tid: tid.clone(), key: key_vec.clone(), value, declared, remaining_ms },
                    pb::DeleteRequest { tid, key: key_vec, declared, remaining_ms },
                );
                self.client
                    .on_key(key, false, limit, move |mut c| {
                        let (put, del) = (put.clone(), del.clone());
                        async move {
                            if kind == Kind::Put {
                                c.put(put).await.map(|r| r.map(drop))
                            } else {
                                c.delete(del).await.map(|r| r.map(drop))
                            }
                        }
                    })
                    .await?;
                Ok(pb::OperationResult::default())
            }
        }
    }

    /// Asks the coordinator to run two-phase commit. COMMITTED is only
    /// answered once the decision is durable.
    ///
    /// Following the leader (PROTOCOL.md rule 16; what any other client
    /// must do too): a Commit is resent only where it certainly did
    /// nothing (a standby's answer, a connection never made). When it was
    /// cut off mid-flight (a transport error after it left, an UNAVAILABLE
    /// without a leader's address, no answer in time) its outcome is
    /// unknown: then the leader, whoever it is now, is asked GetDecision
    /// until it says COMMITTED or ABORTED. A new leader answers ABORTED for
    /// a tid it has no record of, which is honest because the old leader is
    /// fenced (rule 14) and can no longer write one; COMMITTED if the
    /// record was replicated; FORGOTTEN (returned as [`Outcome::Forgotten`])
    /// only for a tid older than the oldest decision its log keeps. While the answer is PENDING the leader holds
    /// the tid live: either deciding it (a repeated Commit joins and waits
    /// for the same outcome, rule 11) or it never received the Commit (the
    /// repeat starts it), so the Commit is repeated there. All of it within
    /// [`crate::ConnectOptions::call_budget`]; if that runs out the error is
    /// UNAVAILABLE saying the outcome is unknown: ask [`Client::status`].
    ///
    /// Operations of this handle (or its clones) already in flight when
    /// `commit` is called are waited for, so the commit declares them;
    /// those started after it are refused (FAILED_PRECONDITION).
    ///
    /// After a failed operation (see the module docs) nothing is committed:
    /// the abort is sent again and the answer is ABORTED with the
    /// coordinator's reason (the operation's error, or the participant's
    /// own cause when it aborted the tid first).
    pub async fn commit(&self) -> Result<Outcome, ClientError> {
        self.commit_asked.store(true, Ordering::SeqCst);
        // Every operation let through before that has been answered and
        // counted (see `in_flight`); later ones are refused.
        drop(self.in_flight.write().await);
        if let Some(why) = self.failed_operation() {
            return self.aborted_after_failure(why).await;
        }
        self.commit_now().await
    }

    /// The Commit call, following the leader (see [`Txn::commit`]).
    async fn commit_now(&self) -> Result<Outcome, ClientError> {
        let started = Instant::now();
        let declaration: Vec<pb::DeclaredPartition> = if self.declaring {
            let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            counts.iter().map(|(&partition, &operations)| pb::DeclaredPartition { partition, operations }).collect()
        } else {
            vec![]
        };
        let req = pb::CommitRequest {
            tid: self.tid.to_string(),
            wrote: self.wrote.load(Ordering::Relaxed),
            declared: self.declaring,
            declaration,
        };
        let mut cut_off = match self.commit_once(&req, self.client.commit_policy_since(started)).await {
            Ok(outcome) => return outcome,
            Err(e @ FollowError::Uncertain { .. }) => self.client.follow_error(e),
            Err(e) => return Err(self.client.follow_error(e)),
        };
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        // Why the last round learned nothing, for the final error.
        let mut last = String::from("no answer");
        loop {
            tracing::debug!(tid = %self.tid, error = %cut_off, "commit cut off: asking the leader for the outcome");
            let asked = if self.client.options().call_budget <= started.elapsed() {
                Some(format!("the call budget ran out before a leader said COMMITTED or ABORTED (last: {last})"))
            } else {
                match self.client.decision(self.tid, self.client.policy_since(started)).await {
                    Ok(Decision::Committed) => return Ok(Outcome::Committed),
                    Ok(Decision::Aborted { reason, kind }) => return Ok(Outcome::Aborted { reason, kind }),
                    Ok(Decision::Forgotten { reason }) => return Ok(Outcome::Forgotten { reason }),
                    Ok(Decision::Pending) => {
                        match self.commit_once(&req, self.client.commit_policy_since(started)).await {
                            Ok(outcome) => return outcome,
                            Err(e @ FollowError::Uncertain { .. }) => {
                                cut_off = self.client.follow_error(e);
                                last = "the leader said PENDING".into();
                                None
                            }
                            // A coordinator of an older version that has no
                            // record of the tid (today's answer ABORTED, as
                            // GetDecision): it answers GetDecision ABORTED,
                            // asked next round.
                            Err(FollowError::Status { status, .. }) if status.code() == tonic::Code::NotFound => None,
                            Err(e @ FollowError::Exhausted { .. }) => {
                                last = e.to_string();
                                None
                            }
                            Err(e) => Some(format!("repeating the commit failed: {}", self.client.follow_error(e))),
                        }
                    }
                    // No leader answered within that call's hops; the
                    // budget decides when to give up.
                    Err(e @ FollowError::Exhausted { .. }) => {
                        last = e.to_string();
                        None
                    }
                    Err(e) => Some(format!("asking for its outcome failed: {}", self.client.follow_error(e))),
                }
            };
            let Some(why) = asked else {
                let left = self.client.options().call_budget.saturating_sub(started.elapsed());
                tokio::time::sleep(backoff.next_delay().min(left)).await;
                continue;
            };
            let cut_off = match cut_off {
                ClientError::Unavailable(why) => why,
                e => e.to_string(),
            };
            return Err(ClientError::Unavailable(format!(
                "{cut_off}; {why}; the outcome of tid {tid} is unknown: ask with `twopc status {tid}` once a \
                 coordinator leads",
                tid = self.tid
            )));
        }
    }

    /// One Commit call, resent only where it did nothing; the outcome, or
    /// an error (`Uncertain`: cut off, outcome unknown).
    async fn commit_once(
        &self,
        req: &pb::CommitRequest,
        policy: Policy,
    ) -> Result<Result<Outcome, ClientError>, FollowError> {
        let resp = self
            .client
            .coordinator_call("Commit", policy, Retry::UntouchedOnly, |mut c| {
                let req = req.clone();
                async move { c.commit(req).await }
            })
            .await?;
        Ok(match resp.outcome() {
            pb::Outcome::Committed => Ok(Outcome::Committed),
            pb::Outcome::Aborted => {
                let kind = reason::from_wire(resp.abort_kind);
                if matches!(kind, AbortKind::CoordinatorRestarted | AbortKind::Unknown) {
                    // The coordinator did not know the tid: pooled tids may
                    // be from one it replaced (`crate::pool`).
                    self.client.drop_pool();
                }
                Ok(Outcome::Aborted { kind, reason: resp.reason })
            }
            pb::Outcome::Forgotten => Ok(Outcome::Forgotten { reason: resp.reason }),
            pb::Outcome::Unspecified => {
                Err(tonic::Status::unknown("the coordinator answered Commit without an outcome").into())
            }
        })
    }

    /// Aborts the transaction, at whoever leads ([`AbortKind::Client`]).
    /// Fails with FAILED_PRECONDITION if it already committed, or if its
    /// outcome is forgotten (older than the oldest decision the log keeps:
    /// it may have committed; [`ClientError::is_forgotten`] tells).
    pub async fn abort(&self) -> Result<(), ClientError> {
        self.abort_because(AbortKind::Client, "aborted by the client").await
    }

    /// Aborts the transaction, at whoever leads, giving why: the reason
    /// every later Commit and status answer gives, unless the tid already
    /// aborted for another (the first reason is kept). Fails with
    /// FAILED_PRECONDITION if it already committed.
    pub async fn abort_because(&self, kind: AbortKind, reason: &str) -> Result<(), ClientError> {
        let tid = self.tid.to_string();
        let abort_kind = reason::to_wire(kind) as i32;
        self.client
            .coordinator_call("Abort", self.client.policy(), Retry::Idempotent, |mut c| {
                let (tid, reason) = (tid.clone(), reason.to_string());
                async move { c.abort(pb::AbortRequest { tid, abort_kind, reason }).await }
            })
            .await
            .map_err(|e| self.client.follow_error(e))?;
        Ok(())
    }

    /// `commit` after a failed operation: the abort first (again:
    /// idempotent), and only once the coordinator has it, the Commit, which
    /// then answers the abort and its first reason (or, for a tid another
    /// handle committed meanwhile, which refuses the abort, COMMITTED: the
    /// truth). If the abort cannot be delivered, no Commit is sent.
    async fn aborted_after_failure(&self, why: String) -> Result<Outcome, ClientError> {
        match self.abort_because(AbortKind::OperationFailed, &why).await {
            Ok(()) => self.commit_now().await,
            Err(e) if e.code() == tonic::Code::FailedPrecondition => self.commit_now().await,
            Err(e) => Ok(Outcome::Aborted {
                reason: format!(
                    "{why}; the abort could not be delivered ({e}): this handle never commits it, and the \
                     coordinator aborts it at its deadline"
                ),
                kind: AbortKind::OperationFailed,
            }),
        }
    }
}

/// Marks (as local metadata, never sent) the refusal of an operation after
/// an earlier one failed, so [`Txn::run`] tells a cause from its
/// consequences.
const EARLIER_FAILED_MARK: &str = "x-twopc-earlier-failed";

/// Whether `e` is only the refusal caused by an earlier failed operation.
fn caused_by_earlier(e: &ClientError) -> bool {
    matches!(e, ClientError::Status(s) if s.metadata().contains_key(EARLIER_FAILED_MARK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Callers spawn transactions on tokio tasks, so the futures must be Send.
    #[allow(dead_code, clippy::let_underscore_future)]
    fn futures_are_send(t: Txn, c: Client) {
        assert_send(&t.get(b"k"));
        assert_send(&t.put(b"k", b"v"));
        assert_send(&t.commit());
        assert_send(&t.run(&[]));
        assert_send(&c.read(b"k"));
        assert_send(&c.in_doubt());
        assert_send(&c.begin(None));
    }
}
