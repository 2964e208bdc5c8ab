//! A participant's protocol state: per-tid write sets and the lock table.
//!
//! Rules kept here (PROTOCOL.md):
//! 2. Enlistment, in one of the two designs PROTOCOL.md allows, chosen per
//!    operation by the client:
//!    - enlist first: the shell enlists with the coordinator before the
//!      first operation of a tid is acknowledged; [`Participant::enlisted`]
//!      records it;
//!    - declared: the client will declare this participant and its count of
//!      operations in its commit. [`Participant::begin_declared`] creates the
//!      tid's state at once, with the deadline the request carries (capped
//!      at [`Limits::max_timeout_ms`]), marked *enlisting*; the shell sends
//!      the enlistment in the background and reports its answer:
//!      [`Participant::enlist_confirmed`] (under the term it was answered
//!      in: an older one than heard of is a refusal), or
//!      [`Participant::enlist_refused`] (tid unknown, aborted or decided at
//!      the coordinator, another cluster, no answer), which aborts the tid
//!      here if it has not voted (rule 10; it cannot have voted YES: a
//!      prepare waits, [`PrepareStep::AwaitEnlistment`]). An enlisting tid
//!      is not swept by a newer term ([`Participant::coordinator_term`]):
//!      its term is the one its enlistment is answered in.
//!
//!    Either way every operation applied (a lock granted; an operation
//!    refused, or told to wait, applied nothing) counts once per tid, and a
//!    prepare or one-phase commit that carries the client's declared count
//!    compares it: a different count aborts the tid here and votes NO
//!    ([`AbortKind::DeclarationMismatch`]): e.g. this participant restarted
//!    between two operations and holds only the later ones, or an operation
//!    was sent by another process the declaring client knows nothing of. A
//!    tid with a declared operation needs a count: without one (a one-phase
//!    commit re-driven by a coordinator recovered from its log, whose
//!    record holds no counts) it aborts too, never commits unchecked. A
//!    read whose answer did not fit its batch answer is un-counted
//!    ([`Participant::op_not_answered`]): the client repeats it alone, and
//!    that repeat counts.
//! 3. `prepare` of a tid with writes asks the shell to persist the write set
//!    ([`PrepareStep::Persist`]); the vote is YES only after the shell
//!    reports it durable ([`Participant::prepared_durable`]). A tid that only
//!    read votes READ_ONLY and releases its locks at once. An unknown tid
//!    (lost in a crash, or already aborted) or one past its deadline votes NO.
//! 4. Every abort here keeps its real cause ([`AbortReason`]): a wait-die
//!    conflict (the key and the older tid), the deadline, a failed write of
//!    the prepared state, a restart that lost the tid (an unknown tid begun
//!    before this process started, [`Participant::with_start`]), a
//!    replaced coordinator, a shutdown. It is remembered with the aborted
//!    tid (the first reason wins) and given in the NO vote, the one-phase
//!    answer and the shell's abort notice to the coordinator.
//! 8. A prepared tid with no decision is in doubt: [`Participant::due_questions`]
//!    says when to ask the coordinator, with backoff, forever. Nothing here
//!    ever decides a prepared tid on its own.
//! 9. [`Participant::recover_prepared`] reloads a prepared tid at start and
//!    takes its write locks again before anything else is served.
//! 10. Before prepare, a tid may be aborted at any time (deadline, conflict);
//!    after its prepare is persisted only the coordinator's decision ends it.
//! 10. (continued) A tid enlisted under a coordinator *term* older than the
//!    newest this participant has heard of ([`Participant::coordinator_term`])
//!    was begun by a coordinator that restarted or was replaced (a failover
//!    to another leader of a replicated log): the new one does not know it
//!    and presumes it aborted, so it is aborted here at once, releasing its
//!    locks, instead of at its deadline. Terms only grow: the SQLite log
//!    counts its starts, the replicated log uses the leader's epoch.
//! 11. Commit and abort are idempotent; a commit for an unknown tid is
//!    acknowledged (it was committed and forgotten, or never prepared here
//!    and so has nothing to apply).
//! Manual resolution (disaster recovery, when the coordinator's log is
//! lost): [`Participant::resolve_heuristically`] ends a *prepared* tid with
//! an outcome an operator chose. This is the one exception to rule 8 and it
//! is never taken on the participant's own initiative; the shell checks the
//! operator's override and the coordinator's log first. While the outcome is
//! being made durable the tid holds its locks and refuses the coordinator's
//! Commit/Abort as retryable (they are acknowledged, and compared, once it
//! is applied); if that write fails, [`Participant::heuristic_failed`] makes
//! the tid prepared and in doubt again, so it is never stuck in between.
//! 12. Strict 2PL with wait-die on tid age ([`crate::locks`]): on a
//!    conflict an older tid waits ([`OpError::MustWait`]) and a younger one
//!    is aborted, so there is never a deadlock. Locks are released only when
//!    the decision has been applied.
//!
//! One-phase commit: when the coordinator delegates the decision (the tid
//! touched only this participant), [`Participant::commit_one_phase`]
//! commits an active tid at once: the shell applies the write set and
//! records the tid as committed in one forced transaction, and that
//! record is the decision. A tid that is unknown here and not in that
//! record is answered ABORTED and remembered as aborted: its unprepared
//! state is gone (restart, deadline, conflict), so it can never commit.

use std::collections::{BTreeMap, VecDeque};

use crate::locks::{Acquired, LockTable, Mode};
use crate::reason::{AbortKind, AbortReason};
use crate::{Millis, PartitionId, Tid};

/// Buffered writes of a tid: key to new value, `None` for a delete.
pub type WriteSet = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Limits a participant enforces per tid and overall.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Limits {
    pub max_ops_per_tid: usize,
    pub max_open_tids: usize,
    /// How long a prepared tid waits for its decision before asking.
    pub in_doubt_after_ms: Millis,
    /// Cap of the backoff between questions.
    pub max_ask_interval_ms: Millis,
    /// The longest a declared operation's deadline may be from now (its
    /// request says how long the tid has left; this bounds a wrong one).
    pub max_timeout_ms: Millis,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_ops_per_tid: 10_000,
            max_open_tids: 10_000,
            in_doubt_after_ms: 1_000,
            max_ask_interval_ms: 5_000,
            max_timeout_ms: 300_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum State {
    Active {
        deadline: Millis,
        /// Operations applied (see the module docs, rule 2).
        ops: usize,
        /// The coordinator term the enlistment was answered under.
        term: u64,
        /// Declared: the enlistment was sent in the background and has not
        /// been answered yet.
        enlisting: bool,
        /// A declared operation of it was applied here: its prepare or
        /// one-phase commit must carry a declared count (module docs).
        declared: bool,
    },
    /// Prepare asked; the write set is being made durable. `aborted`: an
    /// abort arrived meanwhile; the locks stay until the record, if it
    /// landed, is deleted again (see `prepare_failed`).
    Preparing { aborted: bool },
    /// Voted (or about to vote) YES: only the coordinator's decision ends it.
    Prepared { since: Millis, asked: u32, next_ask: Millis },
    /// Commit received; the write set is being applied durably.
    Committing,
    /// An operator's outcome is being made durable (commit: the write set
    /// applied; abort: dropped). Locks are held until then. `since` and
    /// `asked` are the prepared state's, restored if the write fails.
    Heuristic { commit: bool, since: Millis, asked: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TidEntry {
    state: State,
    writes: WriteSet,
    /// Keys this tid holds a lock on.
    locked: Vec<Vec<u8>>,
}

impl TidEntry {
    /// Past its operations: it will take no more locks, only release them.
    fn done_operating(&self) -> bool {
        !matches!(self.state, State::Active { .. })
    }
}

/// Why an operation inside a tid failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OpError {
    /// Not enlisted here (the shell enlists before the first operation).
    UnknownTid,
    /// The tid is past its operations phase.
    NotActive(&'static str),
    /// The deadline passed: the tid was aborted here.
    DeadlinePassed,
    /// Lock conflict with `holder`: the tid was aborted here (no-wait).
    LockConflict {
        holder: Tid,
    },
    /// The tid was aborted here earlier (conflict, deadline, abort), for
    /// this reason.
    AlreadyAborted(AbortReason),
    /// Enlisted by a coordinator that was since restarted or replaced.
    CoordinatorReplaced,
    /// Not a failure: the key is locked by a younger tid, and the requester
    /// (older) waits. The shell retries when a lock is released; nothing
    /// changed here.
    MustWait {
        holder: Tid,
    },
    TooManyOps(usize),
    TooManyTids(usize),
}

/// What a read inside a tid should return.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReadPlan {
    /// The tid wrote the key itself: this is its value.
    Own(Option<Vec<u8>>),
    /// Read the committed value from the store (the shared lock is held).
    Store,
}

/// What to do with a Prepare.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PrepareStep {
    /// Persist this write set durably, then call `prepared_durable` (or
    /// `prepare_failed` if the write fails).
    Persist(WriteSet),
    /// This tid's prepared record is being persisted by an earlier Prepare:
    /// ask again later.
    InProgress,
    /// The tid's background enlistment has not been answered yet: wait for
    /// it (the fence and term checks come with its answer), then prepare
    /// again. Nothing changed.
    AwaitEnlistment,
    Yes,
    ReadOnly,
    No(AbortReason),
}

/// What to do with a Commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CommitStep {
    /// Apply this write set and drop the prepared record in one durable
    /// transaction, then call `commit_applied`.
    Apply(WriteSet),
    /// Nothing to apply: acknowledge.
    Ack,
}

/// What to do with a one-phase commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OnePhaseStep {
    /// Apply this write set and record the tid as committed in one durable
    /// transaction that does nothing if the record exists (so a repeat
    /// never applies twice), then call `commit_applied` and answer COMMITTED.
    Apply(WriteSet),
    /// The tid is not here: if the store records it as committed in one
    /// phase, answer COMMITTED; otherwise call `abort` (which remembers it)
    /// and answer ABORTED.
    Unknown,
    /// Aborted here, for this reason.
    Aborted(AbortReason),
    /// The tid voted in two-phase commit here: a protocol error.
    Refused(&'static str),
    /// As [`PrepareStep::AwaitEnlistment`].
    AwaitEnlistment,
}

/// What to do with an Abort.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AbortStep {
    /// Delete the prepared record (no force needed: a surviving record only
    /// makes the participant ask, and hear ABORTED), then acknowledge.
    DeletePrepared,
    Ack,
}

/// Why a Commit or Abort was refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResolveError {
    /// Commit for a tid that never prepared here.
    NotPrepared,
    /// Abort for a tid whose commit is being applied.
    Committing,
    /// An operator's heuristic outcome is being applied; ask again (the
    /// answer will then be an acknowledgement).
    Heuristic,
}

/// Why a heuristic outcome was refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HeuristicError {
    /// The tid is not prepared here (unknown, resolved, or still operating):
    /// only an in-doubt tid has anything to resolve.
    NotPrepared(&'static str),
    /// The coordinator's decision, or the opposite heuristic, is being
    /// applied to it right now.
    Busy(&'static str),
}

/// One in-doubt tid, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InDoubt {
    pub tid: Tid,
    pub since: Millis,
    pub asked: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Participant {
    partition: PartitionId,
    limits: Limits,
    tids: BTreeMap<Tid, TidEntry>,
    locks: LockTable,
    /// Tids aborted here before prepare, remembered (bounded) with why, so
    /// that a later operation on one is refused instead of silently
    /// starting it afresh without the writes it lost, and so that its vote
    /// or answer carries the real cause (rule 4).
    aborted: BTreeMap<Tid, AbortReason>,
    aborted_order: VecDeque<Tid>,
    /// The newest coordinator term heard of (0: none yet).
    term: u64,
    /// When this process started: an unknown tid begun before it was lost
    /// in a restart (0: unknown).
    started_at: Millis,
    /// `false` only to re-inject the bug the declared count check prevents
    /// (the model checker's mutation test).
    check_counts: bool,
}

/// How many locally aborted tids are remembered.
const ABORTED_MEMORY: usize = 100_000;

impl Participant {
    pub fn new(partition: PartitionId, limits: Limits) -> Self {
        Self {
            partition,
            limits,
            tids: BTreeMap::new(),
            locks: LockTable::default(),
            aborted: BTreeMap::new(),
            aborted_order: VecDeque::new(),
            term: 0,
            started_at: 0,
            check_counts: true,
        }
    }

    /// For the model checker's test only: skip the declared count check
    /// (the bug it must catch).
    #[doc(hidden)]
    pub fn without_count_check(mut self) -> Self {
        self.check_counts = false;
        self
    }

    /// Records when this process started (its state before that is gone):
    /// a tid unknown here that was begun earlier was lost in a restart, and
    /// its abort says so ([`AbortKind::ParticipantRestarted`]).
    pub fn with_start(mut self, started_at: Millis) -> Self {
        self.started_at = started_at;
        self
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// Whether the tid has state here (if not, the shell must enlist first).
    pub fn knows(&self, tid: Tid) -> bool {
        self.tids.contains_key(&tid)
    }

    /// Whether the tid was aborted here (and is still remembered).
    pub fn aborted_here(&self, tid: Tid) -> bool {
        self.aborted.contains_key(&tid)
    }

    /// Why the tid was aborted here, if it was (and is still remembered).
    pub fn abort_reason(&self, tid: Tid) -> Option<&AbortReason> {
        self.aborted.get(&tid)
    }

    /// A tid this participant has no state for and no memory of aborting:
    /// its unprepared state was lost in a restart (it was begun before
    /// this process started), or it was aborted long ago and forgotten.
    /// Remembered as aborted with that reason, which is returned.
    pub fn lost(&mut self, tid: Tid) -> AbortReason {
        if let Some(why) = self.aborted.get(&tid) {
            return why.clone();
        }
        let why = if crate::tid_millis(tid).is_some_and(|t| t < self.started_at) {
            AbortReason::new(
                AbortKind::ParticipantRestarted,
                "it restarted and lost the transaction's unprepared operations",
            )
        } else {
            AbortReason::new(
                AbortKind::Other,
                "it does not know the transaction (never enlisted there, or aborted and forgotten)",
            )
        };
        if !self.tids.contains_key(&tid) {
            self.remember_aborted(tid, why.clone());
        }
        why
    }

    /// The coordinator accepted our enlistment (rule 2), under the newest
    /// term heard of.
    pub fn enlisted(&mut self, tid: Tid, deadline: Millis) -> Result<(), OpError> {
        self.enlisted_under(tid, deadline, self.term)
    }

    /// The coordinator of `term` accepted our enlistment (rule 2). Call
    /// [`Participant::coordinator_term`] with the term first. An
    /// enlistment answered by an older term than one already heard of
    /// comes from a replaced coordinator: refused, and the tid aborted.
    pub fn enlisted_under(&mut self, tid: Tid, deadline: Millis, term: u64) -> Result<(), OpError> {
        if self.tids.contains_key(&tid) {
            return Ok(());
        }
        if let Some(why) = self.aborted.get(&tid) {
            return Err(OpError::AlreadyAborted(why.clone()));
        }
        if term < self.term {
            self.remember_aborted(tid, self.coordinator_replaced());
            return Err(OpError::CoordinatorReplaced);
        }
        if self.tids.len() >= self.limits.max_open_tids {
            return Err(OpError::TooManyTids(self.limits.max_open_tids));
        }
        self.tids.insert(
            tid,
            TidEntry {
                state: State::Active { deadline, ops: 0, term, enlisting: false, declared: false },
                writes: WriteSet::new(),
                locked: vec![],
            },
        );
        Ok(())
    }

    /// Rule 2, declared: a declared operation of `tid` arrived, with
    /// `remaining_ms` left until its deadline. Returns whether the shell
    /// must now send the enlistment in the background (the tid was new
    /// here); a known tid needs nothing. An aborted tid is refused, as is
    /// one that would pass `max_open_tids`.
    pub fn begin_declared(&mut self, tid: Tid, remaining_ms: Millis, now: Millis) -> Result<bool, OpError> {
        if let Some(entry) = self.tids.get_mut(&tid) {
            if let State::Active { declared, .. } = &mut entry.state {
                *declared = true;
            }
            return Ok(false);
        }
        if let Some(why) = self.aborted.get(&tid) {
            return Err(OpError::AlreadyAborted(why.clone()));
        }
        if self.tids.len() >= self.limits.max_open_tids {
            return Err(OpError::TooManyTids(self.limits.max_open_tids));
        }
        let deadline = now + remaining_ms.min(self.limits.max_timeout_ms);
        let state = State::Active { deadline, ops: 0, term: self.term, enlisting: true, declared: true };
        self.tids.insert(tid, TidEntry { state, writes: WriteSet::new(), locked: vec![] });
        Ok(true)
    }

    /// Whether `tid`'s background enlistment is still unanswered.
    pub fn enlisting(&self, tid: Tid) -> bool {
        matches!(self.tids.get(&tid).map(|e| &e.state), Some(State::Active { enlisting: true, .. }))
    }

    /// The coordinator of `term` accepted `tid`'s background enlistment,
    /// with `deadline` (on this clock): the earlier of it and the one the
    /// request carried holds. Call [`Participant::coordinator_term`] with
    /// the term first. An older term than heard of is a replaced
    /// coordinator's answer: the tid aborts here (returned `Err`).
    pub fn enlist_confirmed(&mut self, tid: Tid, deadline: Millis, term: u64) -> Result<(), OpError> {
        if term < self.term {
            let why = self.coordinator_replaced();
            if self.enlisting(tid) {
                self.abort_locally(tid, why);
            }
            return Err(OpError::CoordinatorReplaced);
        }
        if let Some(entry) = self.tids.get_mut(&tid)
            && let State::Active { deadline: d, term: t, enlisting, .. } = &mut entry.state
            && *enlisting
        {
            *d = (*d).min(deadline);
            *t = term;
            *enlisting = false;
        }
        Ok(())
    }

    /// `tid`'s background enlistment was refused, or never answered: if the
    /// tid is still active here it aborts for `why` (rule 10: it has not
    /// voted; a prepare waits for the answer). True if it did (the shell
    /// releases its locks).
    pub fn enlist_refused(&mut self, tid: Tid, why: AbortReason) -> bool {
        if self.enlisting(tid) {
            self.abort_locally(tid, why);
            return true;
        }
        false
    }

    /// A counted read of `tid` whose answer did not fit its batch answer
    /// (`OperationResult.must_wait`): the client repeats it alone, and the
    /// repeat is the one that counts (rule 2, declared).
    pub fn op_not_answered(&mut self, tid: Tid) {
        if let Some(entry) = self.tids.get_mut(&tid)
            && let State::Active { ops, .. } = &mut entry.state
        {
            *ops = ops.saturating_sub(1);
        }
    }

    /// The operations applied for an active `tid` (rule 2), for tests and listings.
    pub fn applied_ops(&self, tid: Tid) -> Option<usize> {
        match self.tids.get(&tid).map(|e| &e.state) {
            Some(State::Active { ops, .. }) => Some(*ops),
            _ => None,
        }
    }

    /// The declared count check (rule 2): `Some(why)` when the client
    /// declared `declared` operations and `applied` differs, or when a tid
    /// with declared operations (`was_declared`) comes without a count: a
    /// coordinator that recovered a one-phase commit from its log (the
    /// record has no counts), or one too old to send them. Aborting it then
    /// is allowed (no YES was given; a one-phase answer is the decision),
    /// and committing it unchecked is not.
    fn declaration_mismatch(&self, declared: Option<u64>, applied: usize, was_declared: bool) -> Option<AbortReason> {
        let Some(declared) = declared else {
            return (was_declared && self.check_counts).then(|| {
                AbortReason::new(
                    AbortKind::DeclarationMismatch,
                    "its operations were declared, but the commit carries no declared count to check them against (a \
                     coordinator that restarted during a one-phase commit, or one too old to send counts)",
                )
            });
        };
        (declared != applied as u64 && self.check_counts).then(|| {
            AbortReason::new(
                AbortKind::DeclarationMismatch,
                format!(
                    "the client declared {declared} operation(s) here, but it applied {applied} (it restarted and \
                     lost some, or another process sent operations the committing client did not count)"
                ),
            )
        })
    }

    /// A read inside `tid`: takes a shared lock.
    pub fn get(&mut self, tid: Tid, key: &[u8], now: Millis) -> Result<ReadPlan, OpError> {
        self.read(tid, key, Mode::Shared, now)
    }

    /// A read inside `tid` that takes the exclusive lock at once, for a key
    /// the tid is about to write.
    pub fn get_for_update(&mut self, tid: Tid, key: &[u8], now: Millis) -> Result<ReadPlan, OpError> {
        self.read(tid, key, Mode::Exclusive, now)
    }

    fn read(&mut self, tid: Tid, key: &[u8], mode: Mode, now: Millis) -> Result<ReadPlan, OpError> {
        self.operate(tid, key, mode, now)?;
        let entry = &self.tids[&tid];
        Ok(match entry.writes.get(key) {
            Some(v) => ReadPlan::Own(v.clone()),
            None => ReadPlan::Store,
        })
    }

    /// A write (`Some`) or delete (`None`) inside `tid`: takes an exclusive
    /// lock and buffers the write until prepare.
    pub fn write(&mut self, tid: Tid, key: &[u8], value: Option<Vec<u8>>, now: Millis) -> Result<(), OpError> {
        self.operate(tid, key, Mode::Exclusive, now)?;
        self.tids.get_mut(&tid).expect("checked by operate").writes.insert(key.to_vec(), value);
        Ok(())
    }

    fn operate(&mut self, tid: Tid, key: &[u8], mode: Mode, now: Millis) -> Result<(), OpError> {
        if let Some(why) = self.aborted.get(&tid) {
            return Err(OpError::AlreadyAborted(why.clone()));
        }
        let entry = self.tids.get_mut(&tid).ok_or(OpError::UnknownTid)?;
        let State::Active { deadline, ops, .. } = &mut entry.state else {
            return Err(OpError::NotActive(state_name(&entry.state)));
        };
        if now >= *deadline {
            self.abort_locally(tid, deadline_passed());
            return Err(OpError::DeadlinePassed);
        }
        if *ops >= self.limits.max_ops_per_tid {
            return Err(OpError::TooManyOps(self.limits.max_ops_per_tid));
        }
        match self.locks.acquire(key, tid, mode) {
            Ok(granted) => {
                *ops += 1;
                if granted == Acquired::Granted {
                    entry.locked.push(key.to_vec());
                }
                Ok(())
            }
            // Wait-die: an older tid (smaller UUIDv7) waits for younger
            // holders; a younger one dies. Waits only ever point from old to
            // young, so they cannot form a cycle. Exception: a holder that
            // has finished its operations (preparing, prepared, committing)
            // never waits for anything again, so waiting for it cannot be
            // part of a cycle either: anyone may wait for it. This keeps
            // transactions from dying on locks that phase 2 is about to free.
            Err(holders) => match holders.iter().min() {
                _ if holders.iter().all(|h| self.tids.get(h).is_some_and(|e| e.done_operating())) => {
                    Err(OpError::MustWait { holder: holders[0] })
                }
                Some(&oldest) if oldest < tid => {
                    let why = AbortReason::new(
                        AbortKind::Conflict,
                        format!(
                            "lock conflict on key {} with older tid {oldest} (wait-die)",
                            crate::reason::key_in_words(key)
                        ),
                    );
                    self.abort_locally(tid, why);
                    Err(OpError::LockConflict { holder: oldest })
                }
                Some(&holder) => Err(OpError::MustWait { holder }),
                None => unreachable!("a refused lock has holders"),
            },
        }
    }

    /// Phase 1 (rule 3), without a declared count.
    pub fn prepare(&mut self, tid: Tid, now: Millis) -> PrepareStep {
        self.prepare_declared(tid, now, None)
    }

    /// Phase 1 (rule 3), with the client's declared count of operations
    /// here (`None`: not declared, nothing to compare; rule 2).
    pub fn prepare_declared(&mut self, tid: Tid, now: Millis, declared: Option<u64>) -> PrepareStep {
        let Some(entry) = self.tids.get_mut(&tid) else {
            return PrepareStep::No(self.lost(tid));
        };
        match entry.state {
            State::Active { enlisting: true, .. } => PrepareStep::AwaitEnlistment,
            State::Active { deadline, ops, declared: was_declared, .. } => {
                if now >= deadline {
                    let why = deadline_passed();
                    self.abort_locally(tid, why.clone());
                    return PrepareStep::No(why);
                }
                if let Some(why) = self.declaration_mismatch(declared, ops, was_declared) {
                    self.abort_locally(tid, why.clone());
                    return PrepareStep::No(why);
                }
                let entry = self.tids.get_mut(&tid).expect("checked above");
                if entry.writes.is_empty() {
                    self.drop_tid(tid);
                    return PrepareStep::ReadOnly;
                }
                entry.state = State::Preparing { aborted: false };
                PrepareStep::Persist(entry.writes.clone())
            }
            // A repeated prepare while the first is being persisted must not
            // write the record a second time: that write could land after the
            // commit has deleted the record and bring it back.
            State::Preparing { aborted: false } => PrepareStep::InProgress,
            State::Preparing { aborted: true } => PrepareStep::No(aborted_while_preparing()),
            State::Prepared { .. } | State::Committing | State::Heuristic { commit: true, .. } => PrepareStep::Yes,
            State::Heuristic { commit: false, .. } => PrepareStep::No(heuristic_abort()),
        }
    }

    /// The prepared record of `tid` is durable. `Ok` means vote YES; `Err`
    /// means the tid was aborted while it was being persisted: the shell must
    /// delete the record again and vote NO.
    pub fn prepared_durable(&mut self, tid: Tid, now: Millis) -> Result<(), AbortReason> {
        match self.tids.get_mut(&tid) {
            Some(entry) if matches!(entry.state, State::Preparing { aborted: false }) => {
                entry.state = State::Prepared { since: now, asked: 0, next_ask: now + self.limits.in_doubt_after_ms };
                Ok(())
            }
            Some(entry) if matches!(entry.state, State::Prepared { .. } | State::Committing) => Ok(()),
            _ => Err(aborted_while_preparing()),
        }
    }

    /// Persisting `tid`'s prepared record failed, or it succeeded after an
    /// abort and the record has been deleted again (`prepared_durable` said
    /// `Err`): the tid is aborted here and its locks are released. Holding
    /// them until now means no other tid can prepare the same keys before
    /// the stale record is gone, so recovery never sees overlapping records.
    /// `why` is remembered as the reason (e.g. [`AbortKind::WriteFailed`]).
    pub fn prepare_failed(&mut self, tid: Tid, why: AbortReason) {
        if matches!(self.tids.get(&tid).map(|e| &e.state), Some(State::Preparing { .. })) {
            self.abort_locally(tid, why);
        }
    }

    /// Phase 2, commit (rules 11, 12).
    pub fn commit(&mut self, tid: Tid) -> Result<CommitStep, ResolveError> {
        let Some(entry) = self.tids.get_mut(&tid) else {
            return Ok(CommitStep::Ack);
        };
        match entry.state {
            State::Prepared { .. } | State::Committing => {
                entry.state = State::Committing;
                Ok(CommitStep::Apply(entry.writes.clone()))
            }
            State::Active { .. } | State::Preparing { .. } => Err(ResolveError::NotPrepared),
            State::Heuristic { .. } => Err(ResolveError::Heuristic),
        }
    }

    /// One-phase commit: the coordinator delegated the decision here.
    pub fn commit_one_phase(&mut self, tid: Tid, now: Millis) -> OnePhaseStep {
        self.commit_one_phase_declared(tid, now, None)
    }

    /// One-phase commit with the client's declared count of operations
    /// here (`None`: not declared; rule 2): a different count aborts.
    pub fn commit_one_phase_declared(&mut self, tid: Tid, now: Millis, declared: Option<u64>) -> OnePhaseStep {
        if self.enlisting(tid) {
            return OnePhaseStep::AwaitEnlistment;
        }
        if let Some(State::Active { ops, declared: was_declared, .. }) = self.tids.get(&tid).map(|e| &e.state)
            && let Some(why) = self.declaration_mismatch(declared, *ops, *was_declared)
        {
            self.abort_locally(tid, why.clone());
            return OnePhaseStep::Aborted(why);
        }
        let Some(entry) = self.tids.get_mut(&tid) else {
            if let Some(why) = self.aborted.get(&tid) {
                return OnePhaseStep::Aborted(why.clone());
            }
            return OnePhaseStep::Unknown;
        };
        match entry.state {
            State::Active { deadline, .. } if now >= deadline => {
                let why = deadline_passed();
                self.abort_locally(tid, why.clone());
                OnePhaseStep::Aborted(why)
            }
            // Committing: an earlier request is applying it; the store makes
            // the repeat a no-op, and answering only after it is durable
            // keeps the answer honest. (A tid takes one path or the other,
            // fixed by the coordinator when the client commits, so this is
            // never a two-phase commit being applied.)
            State::Active { .. } | State::Committing => {
                entry.state = State::Committing;
                OnePhaseStep::Apply(entry.writes.clone())
            }
            State::Preparing { .. } | State::Prepared { .. } | State::Heuristic { .. } => {
                OnePhaseStep::Refused("the tid is preparing or prepared here: it commits in two phases")
            }
        }
    }

    /// Whether `tid` is being committed (its write set is being applied).
    pub fn committing(&self, tid: Tid) -> bool {
        matches!(self.tids.get(&tid).map(|e| &e.state), Some(State::Committing))
    }

    /// One-phase: the commit's write **certainly did not land** (the store
    /// was out of space and rolled it back), and no other write of it is
    /// in flight (the shell lets one at a time). This participant's answer
    /// is the decision, and nothing was applied, so it decides ABORT: the
    /// tid is aborted here, remembered, and its locks go. Returns false if
    /// the tid is not being committed in one phase (then nothing changes).
    pub fn one_phase_not_written(&mut self, tid: Tid, why: AbortReason) -> bool {
        if !self.committing(tid) {
            return false;
        }
        self.abort_locally(tid, why);
        true
    }

    /// The commit of `tid` is applied durably: release its locks. True for
    /// the call that ended it (a repeat applied concurrently finds it gone),
    /// so the shell counts each commit once.
    pub fn commit_applied(&mut self, tid: Tid) -> bool {
        if matches!(self.tids.get(&tid).map(|e| &e.state), Some(State::Committing)) {
            self.drop_tid(tid);
            return true;
        }
        false
    }

    /// Phase 2 abort, or an abort before prepare (rules 10, 11).
    pub fn abort(&mut self, tid: Tid) -> Result<AbortStep, ResolveError> {
        let Some(entry) = self.tids.get_mut(&tid) else {
            // Remember it: an enlistment for this tid may still be on its way
            // back from the coordinator, and must not start it afresh.
            self.remember_aborted(tid, self.aborted_by_coordinator());
            return Ok(AbortStep::Ack);
        };
        let step = match entry.state {
            State::Committing => return Err(ResolveError::Committing),
            State::Heuristic { .. } => return Err(ResolveError::Heuristic),
            State::Prepared { .. } => AbortStep::DeletePrepared,
            // The record may still land: keep the locks until the shell has
            // deleted it (prepared_durable says Err, then prepare_failed).
            State::Preparing { .. } => {
                entry.state = State::Preparing { aborted: true };
                return Ok(AbortStep::Ack);
            }
            State::Active { .. } => AbortStep::Ack,
        };
        self.abort_locally(tid, self.aborted_by_coordinator());
        Ok(step)
    }

    /// An operator's outcome for a prepared tid (see module docs). The shell
    /// must then, in one durable transaction, drop the prepared record,
    /// apply the returned write set (`Some`: commit; `None`: abort, nothing
    /// to apply) and record the heuristic, and then call `heuristic_applied`.
    /// If that write fails, the shell calls `heuristic_failed` (the tid is
    /// prepared again, in doubt). Repeating the same outcome while it is
    /// being made durable gives the same answer again.
    pub fn resolve_heuristically(&mut self, tid: Tid, commit: bool) -> Result<Option<WriteSet>, HeuristicError> {
        let Some(entry) = self.tids.get_mut(&tid) else {
            return Err(HeuristicError::NotPrepared("unknown"));
        };
        match entry.state {
            State::Prepared { since, asked, .. } => entry.state = State::Heuristic { commit, since, asked },
            State::Heuristic { commit: c, .. } if c == commit => {}
            State::Heuristic { .. } => return Err(HeuristicError::Busy("the opposite heuristic outcome")),
            State::Committing => return Err(HeuristicError::Busy("the coordinator's COMMIT")),
            ref s @ (State::Active { .. } | State::Preparing { .. }) => {
                return Err(HeuristicError::NotPrepared(state_name(s)));
            }
        }
        Ok(commit.then(|| entry.writes.clone()))
    }

    /// The heuristic outcome of `tid` is durable: forget it and release its
    /// locks (an abort is remembered like any local abort).
    pub fn heuristic_applied(&mut self, tid: Tid) {
        match self.tids.get(&tid).map(|e| &e.state) {
            Some(State::Heuristic { commit: true, .. }) => self.drop_tid(tid),
            Some(State::Heuristic { commit: false, .. }) => self.abort_locally(tid, heuristic_abort()),
            _ => {}
        }
    }

    /// Making the heuristic outcome of `tid` durable failed: the tid is
    /// prepared again, in doubt (listed, asking the coordinator at once,
    /// open to the coordinator's decision or another manual resolution),
    /// and keeps its locks.
    pub fn heuristic_failed(&mut self, tid: Tid, now: Millis) {
        if let Some(entry) = self.tids.get_mut(&tid)
            && let State::Heuristic { since, asked, .. } = entry.state
        {
            entry.state = State::Prepared { since, asked, next_ask: now };
        }
    }

    /// Whether any tid here voted (or is voting) YES and is not yet over:
    /// such tids are bound to the decision log they voted under.
    pub fn has_prepared(&self) -> bool {
        self.tids.values().any(|e| !matches!(e.state, State::Active { .. }))
    }

    /// A coordinator of `term` answered (an enlistment, a registration, a
    /// decision). If it is newer than any heard of, every active tid
    /// enlisted under an older term is aborted here (rule 10: its
    /// coordinator restarted or was replaced and presumes it aborted).
    /// Returns them, for the shell to release and report.
    pub fn coordinator_term(&mut self, term: u64) -> Vec<Tid> {
        if term <= self.term {
            return vec![];
        }
        self.term = term;
        let why = self.coordinator_replaced();
        let stale: Vec<Tid> = self
            .tids
            .iter()
            // An enlisting tid's term is the one its answer comes in.
            .filter(|(_, e)| matches!(e.state, State::Active { term: t, enlisting: false, .. } if t < term))
            .map(|(&t, _)| t)
            .collect();
        for &t in &stale {
            self.abort_locally(t, why.clone());
        }
        stale
    }

    /// Aborts every active tid past its deadline (rule 10, C8). Returns them.
    pub fn expire(&mut self, now: Millis) -> Vec<Tid> {
        let expired: Vec<Tid> = self
            .tids
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Active { deadline, .. } if now >= deadline))
            .map(|(&t, _)| t)
            .collect();
        let why = deadline_passed();
        for &t in &expired {
            self.abort_locally(t, why.clone());
        }
        expired
    }

    /// Rule 9: a prepared record read back at start. Takes its write locks.
    pub fn recover_prepared(&mut self, tid: Tid, writes: WriteSet, now: Millis) {
        let mut locked = Vec::with_capacity(writes.len());
        for key in writes.keys() {
            // Prepared write sets never overlap (they held exclusive locks
            // together before the crash), so this cannot conflict.
            if let Ok(Acquired::Granted) = self.locks.acquire(key, tid, Mode::Exclusive) {
                locked.push(key.clone());
            }
        }
        // Ask at once: after a restart the decision may have been made long ago.
        let state = State::Prepared { since: now, asked: 0, next_ask: now };
        self.tids.insert(tid, TidEntry { state, writes, locked });
    }

    /// Rule 8: prepared tids whose next question to the coordinator is due.
    /// Each returned tid is rescheduled with exponential backoff.
    pub fn due_questions(&mut self, now: Millis) -> Vec<Tid> {
        let mut due = vec![];
        for (&tid, entry) in self.tids.iter_mut() {
            if let State::Prepared { asked, next_ask, .. } = &mut entry.state
                && now >= *next_ask
            {
                due.push(tid);
                let backoff = (200u64 << (*asked).min(10)).min(self.limits.max_ask_interval_ms);
                *asked += 1;
                *next_ask = now + backoff;
            }
        }
        due
    }

    /// Prepared tids still waiting for their decision.
    pub fn in_doubt(&self) -> Vec<InDoubt> {
        let mut v: Vec<InDoubt> = self
            .tids
            .iter()
            .filter_map(|(&tid, e)| match e.state {
                State::Prepared { since, asked, .. } => Some(InDoubt { tid, since, asked }),
                _ => None,
            })
            .collect();
        v.sort_by_key(|d| d.tid);
        v
    }

    pub fn open_tids(&self) -> usize {
        self.tids.len()
    }

    pub fn locked_keys(&self) -> usize {
        self.locks.len()
    }

    /// Aborts every tid that has not voted (active), for `why` (e.g. a
    /// shutdown: rule 10); prepared tids are kept (only a decision ends
    /// them). Returns them, for the shell to release and report.
    pub fn abort_unprepared(&mut self, why: &AbortReason) -> Vec<Tid> {
        let active: Vec<Tid> =
            self.tids.iter().filter(|(_, e)| matches!(e.state, State::Active { .. })).map(|(&t, _)| t).collect();
        for &t in &active {
            self.abort_locally(t, why.clone());
        }
        active
    }

    /// Drops `tid` as aborted, and remembers that it was, and why.
    fn abort_locally(&mut self, tid: Tid, why: AbortReason) {
        self.drop_tid(tid);
        self.remember_aborted(tid, why);
    }

    fn aborted_by_coordinator(&self) -> AbortReason {
        AbortReason::new(AbortKind::Other, "aborted by the coordinator")
    }

    fn coordinator_replaced(&self) -> AbortReason {
        AbortReason::new(
            AbortKind::CoordinatorRestarted,
            "the coordinator that began it restarted or was replaced by another leader, and no longer knows it",
        )
    }

    /// Remembers the first reason only: a later abort (the coordinator's,
    /// after our notice) must not hide the real cause.
    fn remember_aborted(&mut self, tid: Tid, why: AbortReason) {
        if let std::collections::btree_map::Entry::Vacant(slot) = self.aborted.entry(tid) {
            slot.insert(why);
            self.aborted_order.push_back(tid);
            if self.aborted_order.len() > ABORTED_MEMORY
                && let Some(old) = self.aborted_order.pop_front()
            {
                self.aborted.remove(&old);
            }
        }
    }

    /// Forgets `tid` and releases every lock it holds.
    fn drop_tid(&mut self, tid: Tid) {
        if let Some(entry) = self.tids.remove(&tid) {
            for key in &entry.locked {
                self.locks.release(key, tid);
            }
        }
    }
}

// The reasons below are in the participant's words, without its partition:
// whoever carries one on (a vote, an answer, an abort notice) names the
// partition it came from.

/// Why a tid [`Participant::expire`] aborted: its deadline passed.
pub fn deadline_passed() -> AbortReason {
    AbortReason::new(AbortKind::Deadline, "its deadline passed before prepare")
}

fn aborted_while_preparing() -> AbortReason {
    AbortReason::new(AbortKind::Other, "aborted while its prepared state was being written")
}

fn heuristic_abort() -> AbortReason {
    AbortReason::new(AbortKind::Operator, "aborted heuristically by an operator")
}

/// The time a tid (a UUIDv7) was allocated, in Unix milliseconds.
fn state_name(s: &State) -> &'static str {
    match s {
        State::Active { .. } => "active",
        State::Preparing { .. } => "preparing",
        State::Prepared { .. } => "prepared",
        State::Committing => "committing",
        State::Heuristic { .. } => "resolving heuristically",
    }
}

#[cfg(test)]
mod tests;
