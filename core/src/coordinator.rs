//! The coordinator's protocol state: one [`Txn`] per live tid.
//!
//! Rules kept here (PROTOCOL.md):
//! 1. `begin` allocates nothing durable: an undecided tid is presumed aborted
//!    after a crash, which is why recovery only ever sees COMMIT records.
//! 2. `enlist` is accepted only while the tid is active; a participant that
//!    enlists again with a different incarnation lost the tid's state, so the
//!    tid aborts. Exception (the declared design, below): a partition the
//!    client's commit declared is already in the tid when its background
//!    enlistment lands; that enlistment is accepted during prepare (and a
//!    delegated one-phase commit) too, so the participant does not abort
//!    an operation it is about to vote on.
//! 3. `commit_requested` sends Prepare to every enlisted partition.
//! 4. The votes decide. All YES/READ_ONLY gives [`Action::ForceCommit`]: the
//!    decision is COMMIT only once the shell reports the record durable
//!    (`commit_durable`), and only then are the client told and the commit
//!    messages sent. Any NO, timeout or error aborts at once, unforced.
//!    An abort carries its real cause ([`AbortReason`]: a kind and words):
//!    a NO vote keeps the participant's own reason (prefixed with its
//!    partition), a failed or late prepare is `ParticipantUnreachable`, the
//!    deadline `Deadline`, a participant's abort notice or a client's or
//!    operator's abort what they say. The first reason a tid aborts for is
//!    kept for every later answer: a client that aborts after a
//!    participant refused its operation does not replace the participant's
//!    cause. [`Action::Decided`] marks the decision once per tid, so the
//!    shell counts outcomes per transaction, never per reply.
//! 5. After COMMIT is durable every YES partition gets Commit, resent by the
//!    shell until acknowledged; when the last acknowledges the tid is
//!    finished ([`Action::LogFinished`]) and forgotten.
//! 6. `decision` answers COMMITTED, ABORTED (also for unknown tids: the
//!    reason says `CoordinatorRestarted` for a tid begun before this
//!    coordinator started, `Unknown` otherwise) or
//!    PENDING while voting or forcing. Active tids answer PENDING too: a
//!    client may still be working on them. Recovery never resurrects an
//!    undecided tid, so ABORTED for an unknown tid can never be contradicted.
//!    **Honest answers** (the low-water mark): presumed abort is honest only
//!    for a tid the coordinator could still remember. Finished commits are
//!    forgotten (here beyond `finished_cap`, in the log beyond
//!    `keep_finished`), and the newest tid forgotten so far is kept as
//!    [`Coordinator::forgotten_through`]: it only grows, the log keeps it
//!    durably with every trim, and recovery starts from it. A tid that is
//!    neither live nor remembered and no newer than the mark (tids are
//!    UUIDv7, time-ordered) may have committed, so clients hear
//!    [`DecisionAnswer::Forgotten`] (the commit of it is refused with
//!    [`Refusal::Forgotten`], and so is an abort), never ABORTED. A commit
//!    kept in memory or in the log is always newer than the mark or
//!    remembered, so an unknown tid newer than the mark never committed:
//!    ABORTED (presumed abort) for it is honest, for GetDecision and Commit
//!    alike. A participant asking about a tid it voted YES on is answered
//!    by [`Coordinator::decision_for_voter`]: ABORTED however old the tid,
//!    because a COMMIT record is forgotten only once every YES voter
//!    acknowledged it, so that voter cannot be in doubt about a forgotten
//!    commit. Forgetting an abort moves no mark: ABORTED stays true of it.
//! 7. `recover_commit` re-drives phase 2 for every unfinished COMMIT record.
//! 11. Every event is idempotent: repeating it repeats the answer.
//!
//! **Reserved tids (blocks).** So that a client need not pay a round trip
//! per Begin, it may ask for a block of tids at once ([`Coordinator::reserve`],
//! at most [`MAX_BLOCK`]) and draw from it locally. A tid of a block is
//! *reserved*: known to the coordinator like a begun tid (GetDecision
//! answers PENDING, an abort marks it aborted, a commit commits it),
//! counted against the open-transaction bound (a block that does not fit
//! whole is refused, [`Refusal::TooManyOpen`], as a Begin is), but not
//! live: it has no deadline running and is not listed as a transaction.
//! Its deadline starts at its **first use** (the first enlistment, commit
//! or abort of it), `timeout` after that moment, with the timeout given
//! when the block was asked for (capped by the shell). A reserved tid never
//! used within [`RESERVED_UNUSED_MS`] of its reservation (or half of it
//! plus its timeout, when longer: [`Reserved::unused_until`]) is dropped by
//! `expire` silently: no action, no decision, nothing remembered (it never
//! held anything anywhere, and an unknown tid is presumed aborted, which is
//! true of it). Like every begun tid, reserved ones are only in memory: a
//! restarted coordinator does not know them and presumes them aborted
//! (rule 1; the client's pool must not keep handing them out, see the
//! client's docs). A reserved tid never commits unless it was used: a
//! commit of it is its first use.
//!
//! A COMMIT with no YES voter (nothing written, or every vote READ_ONLY)
//! needs neither a record nor phase 2.
//!
//! **One-phase commit.** A tid with exactly one enlisted participant, whose
//! client says it wrote, skips the vote: the decision is delegated to that participant, whose own
//! durable commit is the decision. The coordinator first forces a
//! DELEGATED record naming the participant ([`Action::ForceDelegation`]),
//! and only then sends CommitOnePhase, resent until the participant gives
//! a definite answer: COMMITTED (applied durably, and remembered there), or
//! ABORTED (it aborted the tid, or no longer has it: its unprepared state
//! was lost in a restart, which is an abort that it then remembers). The
//! record is why rule 6 still holds: after a coordinator crash, recovery
//! finds the delegation and asks again instead of presuming abort, so a
//! client asking never hears ABORTED for a tid the participant committed.
//! While delegated, the tid answers PENDING and refuses an abort. The
//! record is marked finished (commit) or dropped (abort) unforced: if that
//! is lost, recovery asks again and gets the same answer (rule 11).
//!
//! **Declared commits** (PROTOCOL.md rule 2's second design): a client that
//! begins a tid with `declares` ([`Coordinator::begin_declaring`]) sends its
//! operations without waiting for the participants to enlist, and its
//! commit declares every partition it had operations acknowledged by, with
//! its count of them ([`Coordinator::commit_declared`]). Then:
//! - the prepare set is the declared partitions ∪ the enlisted ones; a
//!   declared partition that has not enlisted yet is added (the
//!   declaration is the authority; its participant, not knowing the tid,
//!   votes NO);
//! - a partition enlisted but not declared aborts the tid at once
//!   ([`AbortKind::DeclarationMismatch`]): it holds operations the client
//!   did not count, and committing without them would commit part of the
//!   transaction;
//! - each Prepare (or CommitOnePhase) carries the declared count
//!   ([`Coordinator::declared_count`]), and the participant votes NO if it
//!   applied a different number;
//! - a commit without a declaration of a tid begun with `declares` is
//!   refused ([`Refusal::MustDeclare`]): another process (e.g. `twopc
//!   commit --tid`) cannot know the operations whose enlistment has not
//!   landed yet, so it could commit part of the transaction.
//!
//! A client that under-declares breaks the protocol; a partition it left
//! out never commits the tid (it is never prepared), and the tid aborts if
//! that partition's enlistment landed before the decision, as it nearly
//! always has; an enlistment that lands after the decision is refused and
//! the participant aborts its part.

use std::collections::{BTreeMap, VecDeque};

use crate::reason::{AbortKind, AbortReason};
use crate::{Millis, PartitionId, Tid};

/// A participant's vote in phase 1, or why it has none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Vote {
    Yes,
    ReadOnly,
    /// NO, and why the participant aborted (its own reason, kind kept).
    No(AbortReason),
    /// The prepare call failed or timed out: counts as NO.
    Failed(String),
}

/// The outcome of a transaction as the client hears it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    Committed,
    Aborted(AbortReason),
}

/// What the coordinator answers when asked for a decision (rule 6).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DecisionAnswer {
    Committed,
    Aborted(AbortReason),
    Pending,
    /// The tid is unknown and no newer than the mark of forgotten
    /// decisions: it may have committed, so the outcome is not known any
    /// more (never said to a participant asking about its YES vote).
    Forgotten,
}

/// Why a forgotten tid has no answer, in words a person can act on.
pub const FORGOTTEN: &str = "the tid is older than the oldest decision the log keeps (--keep-finished), \
     so it may have committed or aborted; check the data";

/// Why an unknown tid newer than the mark is aborted (rule 6).
pub const PRESUMED: &str = "unknown tid: presumed aborted";

/// Work the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send Prepare to this partition (with the prepare timeout); report the
    /// answer with [`Coordinator::vote`].
    SendPrepare(Tid, PartitionId),
    /// Force a COMMIT record naming these partitions to the decision log;
    /// report with [`Coordinator::commit_durable`]. If the write fails the
    /// record's fate is unknown and the shell must stop (fail-stop):
    /// recovery reads the log back and settles the tid; unless it certainly
    /// was not written (out of space): then [`Coordinator::record_not_written`].
    ForceCommit(Tid, Vec<PartitionId>),
    /// Send Commit to this partition until it acknowledges; report with
    /// [`Coordinator::commit_acked`].
    SendCommit(Tid, PartitionId),
    /// Tell this partition the tid aborted. Best effort: a participant that
    /// misses it asks, and hears ABORTED (presumed abort).
    SendAbort(Tid, PartitionId),
    /// Answer every client waiting on this tid's commit.
    Reply(Tid, Outcome),
    /// The tid's outcome was decided just now: emitted exactly once per
    /// tid, at the transition (COMMIT durable, or the abort), never for a
    /// repeated question, so the shell counts and logs outcomes here and
    /// never per reply (a Commit repeated after the decision gets a
    /// `Reply` again, not a `Decided`). Outcomes recovered from the log
    /// were decided by an earlier run and are not decided again.
    Decided(Tid, Outcome),
    /// Every YES partition acknowledged the commit: mark the record finished
    /// (no force needed: a lost mark only means phase 2 is re-driven).
    /// Also ends a one-phase commit that committed.
    LogFinished(Tid),
    /// One-phase: force a DELEGATED record naming the one participant;
    /// report with [`Coordinator::delegation_durable`]. Fail-stop on error,
    /// as for `ForceCommit`.
    ForceDelegation(Tid, PartitionId),
    /// One-phase: send CommitOnePhase until the participant answers
    /// COMMITTED or ABORTED; report with [`Coordinator::one_phase_outcome`].
    SendCommitOnePhase(Tid, PartitionId),
    /// A one-phase commit aborted: drop its DELEGATED record (unforced: a
    /// surviving record only makes recovery ask again, and hear ABORTED).
    LogForget(Tid),
}

/// The most tids one block may reserve ([`Coordinator::reserve`]).
pub const MAX_BLOCK: usize = 64;

/// How long a reserved tid may stay unused before `expire` drops it
/// silently (see the module docs). Long enough for a client's pool to draw
/// it (clients discard pooled tids older than half of this, so a tid drawn
/// from a pool is never one the coordinator is about to drop); short enough
/// that a client that vanished with a full pool returns its share of the
/// open-transaction bound soon.
pub const RESERVED_UNUSED_MS: Millis = 30_000;

/// A tid handed out in a block and not used yet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reserved {
    /// When the block was reserved (on the coordinator's clock).
    pub reserved_at: Millis,
    /// The tid's timeout, started at its first use.
    pub timeout: Millis,
    /// Whether the client that asked for the block declares its
    /// operations at commit (as `begin_declaring`'s `declares`).
    pub declares: bool,
}

impl Reserved {
    /// When `expire` drops it if still unused: [`RESERVED_UNUSED_MS`]
    /// after its reservation, or later for a long timeout. A client's pool
    /// draws a tid up to half of that bound after the reservation and may
    /// use it until `timeout` after the draw (its local deadline), so the
    /// tid is kept at least that long: otherwise a tid drawn fresh and
    /// first used within its timeout (e.g. `--default-timeout-ms 60000`,
    /// first use 31 s after the draw) would be unknown here by then, its
    /// declared operations answered and then dropped, and its commit
    /// ABORTED as unknown.
    pub fn unused_until(&self) -> Millis {
        let bound = RESERVED_UNUSED_MS.max((RESERVED_UNUSED_MS / 2).saturating_add(self.timeout));
        self.reserved_at.saturating_add(bound)
    }
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The tid is not known (never begun, or from before a crash) and is
    /// newer than the mark of forgotten decisions.
    UnknownTid,
    /// The tid exists but is no longer accepting enlistments/operations.
    NotActive(&'static str),
    /// The tid aborted; the reason says why.
    Aborted(AbortReason),
    /// The tid committed: an abort cannot be honoured.
    AlreadyCommitted,
    /// Too many open transactions.
    TooManyOpen(usize),
    /// The decision was handed to this partition (one-phase commit): an
    /// abort cannot be honoured, the participant's answer is the outcome.
    Delegated(PartitionId),
    /// The tid is unknown and no newer than the mark of forgotten
    /// decisions (rule 6): it may have committed, so neither a commit nor
    /// an abort of it can be answered.
    Forgotten,
    /// A commit without a declaration of a tid begun by a client that
    /// declares its operations (see the module docs).
    MustDeclare,
}

/// Per-partition progress inside one tid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartState {
    Enlisted,
    VotedYes,
    VotedReadOnly,
    VotedNo,
    Acked,
}

impl PartState {
    pub fn name(self) -> &'static str {
        match self {
            PartState::Enlisted => "enlisted",
            PartState::VotedYes => "voted-yes",
            PartState::VotedReadOnly => "voted-read-only",
            PartState::VotedNo => "voted-no",
            PartState::Acked => "acked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Accepting operations and enlistments.
    Active,
    /// Prepare sent, collecting votes.
    Preparing,
    /// Every vote was YES/READ_ONLY; the COMMIT record is being forced.
    Deciding,
    /// COMMIT is durable; resending Commit until every YES partition acks.
    Committing,
    /// One-phase: the DELEGATED record is being forced.
    Delegating,
    /// One-phase: the record is durable; the participant decides.
    Delegated,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Active => "active",
            Phase::Preparing => "preparing",
            Phase::Deciding => "deciding",
            Phase::Committing => "committing",
            Phase::Delegating => "delegating",
            Phase::Delegated => "delegated",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Part {
    /// The participant's incarnation (0: not enlisted yet, only declared,
    /// or read back from the log).
    pub incarnation: u64,
    pub state: PartState,
    /// The client's declared count of operations here (`None`: not declared).
    pub declared: Option<u64>,
}

impl Part {
    fn enlisted(incarnation: u64) -> Self {
        Part { incarnation, state: PartState::Enlisted, declared: None }
    }
}

/// One live transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Txn {
    pub phase: Phase,
    pub deadline: Millis,
    pub begun_at: Millis,
    pub parts: BTreeMap<PartitionId, Part>,
    /// Begun by a client that declares its operations: its commit must
    /// carry a declaration (see the module docs).
    pub declares: bool,
}

/// The coordinator's protocol state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Coordinator {
    live: BTreeMap<Tid, Txn>,
    /// Tids of blocks not used yet (see the module docs).
    reserved: BTreeMap<Tid, Reserved>,
    /// Outcomes of finished tids, kept so a repeated Commit or GetDecision
    /// gets the same answer (rule 11). Bounded: oldest forgotten first.
    finished: BTreeMap<Tid, Outcome>,
    /// Eviction order, one queue per outcome, so that a flood of aborts
    /// never pushes out the commits a client may still ask about (the
    /// decision log keeps the same number of finished commits).
    committed_order: VecDeque<Tid>,
    aborted_order: VecDeque<Tid>,
    finished_cap: usize,
    max_open: usize,
    /// Whether a tid with one participant commits in one phase.
    one_phase: bool,
    /// When this coordinator started (or took over as leader): an unknown
    /// tid begun before is one its predecessor began (0: unknown).
    started_at: Millis,
    /// The newest tid whose outcome was forgotten (rule 6's low-water
    /// mark): every commit evicted from `finished`, and the log's durable
    /// mark read back at start. Only grows.
    forgotten_through: Option<Tid>,
    /// `false` only to re-inject the bug the mark fixes (the model
    /// checker's test): forgotten tids are then answered ABORTED.
    honest_forgotten: bool,
    /// `false` only to re-inject a bug for the model checker's test: a
    /// partition enlisted but not declared does not abort the commit.
    check_undeclared: bool,
}

impl Coordinator {
    /// `max_open` bounds live transactions; `finished_cap` bounds how many
    /// finished commits, and separately how many aborts, are remembered for
    /// repeated questions.
    pub fn new(max_open: usize, finished_cap: usize) -> Self {
        Self {
            live: BTreeMap::new(),
            reserved: BTreeMap::new(),
            finished: BTreeMap::new(),
            committed_order: VecDeque::new(),
            aborted_order: VecDeque::new(),
            finished_cap: finished_cap.max(1),
            max_open,
            one_phase: true,
            started_at: 0,
            forgotten_through: None,
            honest_forgotten: true,
            check_undeclared: true,
        }
    }

    /// For the model checker's test only: ignore enlisted partitions that a
    /// declared commit left out (the bug it must catch).
    #[doc(hidden)]
    pub fn without_undeclared_check(mut self) -> Self {
        self.check_undeclared = false;
        self
    }

    /// For the model checker's test only: answer a forgotten tid ABORTED,
    /// as before the mark existed (the bug it must catch).
    #[doc(hidden)]
    pub fn with_dishonest_forgotten_answers(mut self) -> Self {
        self.honest_forgotten = false;
        self
    }

    /// The newest tid whose outcome is forgotten, if any (rule 6).
    pub fn forgotten_through(&self) -> Option<Tid> {
        self.forgotten_through
    }

    /// Raises the mark of forgotten decisions to at least `tid`: the log's
    /// durable mark at start, or a tid the log trimmed.
    pub fn forgot_through(&mut self, tid: Tid) {
        if self.forgotten_through < Some(tid) {
            self.forgotten_through = Some(tid);
        }
    }

    /// Whether `tid` is unknown and no newer than the mark: its outcome is
    /// forgotten (rule 6).
    pub fn is_forgotten(&self, tid: Tid) -> bool {
        self.honest_forgotten && Some(tid) <= self.forgotten_through && !self.remembers(tid)
    }

    /// Forgets a finished tid now, as eviction beyond `finished_cap` does
    /// (the model checker forgets at any moment with it). A forgotten
    /// commit raises the mark; a live tid is kept.
    pub fn forget_finished(&mut self, tid: Tid) {
        if let Some(outcome) = self.finished.remove(&tid) {
            self.committed_order.retain(|t| *t != tid);
            self.aborted_order.retain(|t| *t != tid);
            if outcome == Outcome::Committed {
                self.forgot_through(tid);
            }
        }
    }

    /// Records when this coordinator started, or took over as leader: an
    /// unknown tid begun before that was begun by a predecessor that
    /// restarted or was replaced, and its presumed abort says so
    /// ([`AbortKind::CoordinatorRestarted`]) instead of only "unknown".
    pub fn with_start(mut self, started_at: Millis) -> Self {
        self.started_at = started_at;
        self
    }

    /// Turns the one-phase path on (the default) or off (every tid votes).
    pub fn with_one_phase(mut self, on: bool) -> Self {
        self.one_phase = on;
        self
    }

    pub fn live(&self) -> impl Iterator<Item = (&Tid, &Txn)> {
        self.live.iter()
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// How many reserved tids wait for their first use.
    pub fn reserved_count(&self) -> usize {
        self.reserved.len()
    }

    /// The reserved tids not used yet.
    pub fn reserved(&self) -> impl Iterator<Item = (&Tid, &Reserved)> {
        self.reserved.iter()
    }

    /// Whether `tid` is reserved and not used yet.
    pub fn is_reserved(&self, tid: Tid) -> bool {
        self.reserved.contains_key(&tid)
    }

    /// Reserves a block of new tids (see the module docs): all of them, or
    /// none when they do not fit the open-transaction bound (live and
    /// reserved tids count alike) or the block is over [`MAX_BLOCK`].
    /// Each gets `timeout` from its first use; `declares` as in
    /// [`Coordinator::begin_declaring`].
    pub fn reserve(&mut self, tids: &[Tid], now: Millis, timeout: Millis, declares: bool) -> Result<(), Refusal> {
        if tids.len() > MAX_BLOCK || self.open_count() + tids.len() > self.max_open {
            return Err(Refusal::TooManyOpen(self.max_open));
        }
        for &tid in tids {
            if !self.live.contains_key(&tid) {
                self.reserved.insert(tid, Reserved { reserved_at: now, timeout, declares });
            }
        }
        Ok(())
    }

    /// Live and reserved tids: what the open-transaction bound counts.
    fn open_count(&self) -> usize {
        self.live.len() + self.reserved.len()
    }

    /// The first use of a reserved tid: it becomes an active transaction
    /// whose deadline starts now. A tid that is not reserved is untouched.
    fn first_use(&mut self, tid: Tid, now: Millis) {
        if let Some(r) = self.reserved.remove(&tid) {
            let deadline = now.saturating_add(r.timeout);
            let declares = r.declares;
            self.live
                .insert(tid, Txn { phase: Phase::Active, deadline, begun_at: now, parts: BTreeMap::new(), declares });
        }
    }

    /// Rule 1: a new tid, active until `deadline`.
    pub fn begin(&mut self, tid: Tid, now: Millis, deadline: Millis) -> Result<(), Refusal> {
        self.begin_declaring(tid, now, deadline, false)
    }

    /// Rule 1, for a client that says whether it `declares` its operations
    /// at commit (see the module docs).
    pub fn begin_declaring(&mut self, tid: Tid, now: Millis, deadline: Millis, declares: bool) -> Result<(), Refusal> {
        if self.open_count() >= self.max_open {
            return Err(Refusal::TooManyOpen(self.max_open));
        }
        self.live.insert(tid, Txn { phase: Phase::Active, deadline, begun_at: now, parts: BTreeMap::new(), declares });
        Ok(())
    }

    /// The client's declared count of operations at `partition` for `tid`
    /// (`None`: not declared), for the Prepare or CommitOnePhase to carry.
    pub fn declared_count(&self, tid: Tid, partition: PartitionId) -> Option<u64> {
        self.live.get(&tid)?.parts.get(&partition)?.declared
    }

    /// Rule 2: a participant holds state for `tid`. Returns the deadline, and
    /// the actions of an abort this enlistment caused (a participant that
    /// restarted and lost the tid).
    pub fn enlist(
        &mut self,
        tid: Tid,
        partition: PartitionId,
        incarnation: u64,
        now: Millis,
    ) -> (Result<Millis, Refusal>, Vec<Action>) {
        self.first_use(tid, now);
        let txn = match self.live.get_mut(&tid) {
            Some(t) => t,
            None => return (Err(self.refusal_for_unknown(tid)), vec![]),
        };
        if txn.phase != Phase::Active {
            // A declared partition's background enlistment landing after the
            // commit began: it is already in the prepare set (module docs).
            if let (Phase::Preparing | Phase::Delegating | Phase::Delegated, Some(p)) =
                (txn.phase, txn.parts.get_mut(&partition))
                && p.declared.is_some()
                && (p.incarnation == 0 || p.incarnation == incarnation)
            {
                p.incarnation = incarnation;
                return (Ok(txn.deadline), vec![]);
            }
            // Another incarnation of a partition in the prepare set lost the
            // tid's earlier operations: while preparing, that aborts it now
            // (with the real cause) rather than at its vote. (A repeat of
            // the same incarnation's enlistment is refused as before.)
            if txn.phase == Phase::Preparing
                && txn.parts.get(&partition).is_some_and(|p| p.incarnation != 0 && p.incarnation != incarnation)
            {
                return self.restarted(tid, partition);
            }
            return (Err(Refusal::NotActive(txn.phase.name())), vec![]);
        }
        if now >= txn.deadline {
            let why = deadline_passed();
            let actions = self.abort(tid, why.clone());
            return (Err(Refusal::Aborted(why)), actions);
        }
        match txn.parts.get(&partition) {
            Some(p) if p.incarnation != incarnation => self.restarted(tid, partition),
            Some(_) => (Ok(txn.deadline), vec![]),
            None => {
                txn.parts.insert(partition, Part::enlisted(incarnation));
                (Ok(txn.deadline), vec![])
            }
        }
    }

    /// `partition` enlisted `tid` again under another incarnation: it
    /// restarted and lost the tid's earlier operations, so the tid aborts.
    fn restarted(&mut self, tid: Tid, partition: PartitionId) -> (Result<Millis, Refusal>, Vec<Action>) {
        let why = AbortReason::new(
            AbortKind::ParticipantRestarted,
            format!("partition {partition} restarted and lost this transaction's earlier operations"),
        );
        let actions = self.abort(tid, why.clone());
        (Err(Refusal::Aborted(why)), actions)
    }

    /// The client asks to commit (rules 3, 4, 11). `client_wrote` is the
    /// client's word that it wrote something: only then does a tid with one
    /// participant commit in one phase (one that only read votes READ_ONLY,
    /// which needs no fsync at all). It is only a hint: a wrong `false`
    /// takes the two-phase path, where the participant votes YES; a wrong
    /// `true` commits an empty write set in one phase. Both are correct.
    ///
    /// `Ok(actions)` with no `Reply` means the outcome is not known yet: the
    /// shell waits for a later `Reply` for this tid.
    pub fn commit_requested(&mut self, tid: Tid, now: Millis, client_wrote: bool) -> Result<Vec<Action>, Refusal> {
        self.commit_declared(tid, now, client_wrote, None)
    }

    /// The client asks to commit, as [`Coordinator::commit_requested`],
    /// declaring (`Some`) the partitions it had operations acknowledged by
    /// and its count of them (see the module docs; counts of 0 are
    /// ignored), or not (`None`).
    pub fn commit_declared(
        &mut self,
        tid: Tid,
        now: Millis,
        client_wrote: bool,
        declaration: Option<&BTreeMap<PartitionId, u64>>,
    ) -> Result<Vec<Action>, Refusal> {
        self.first_use(tid, now);
        let Some(txn) = self.live.get_mut(&tid) else {
            return match self.finished.get(&tid) {
                Some(o) => Ok(vec![Action::Reply(tid, o.clone())]),
                None if self.is_forgotten(tid) => Err(Refusal::Forgotten),
                // Rule 6, as GetDecision answers: an unknown tid newer than
                // the mark never committed (presumed abort). Nothing is
                // recorded: no Begin hands out this tid again and recovery
                // only revives logged tids, so no one can commit it later.
                None => Ok(vec![Action::Reply(tid, Outcome::Aborted(self.presumed(tid)))]),
            };
        };
        match txn.phase {
            Phase::Active => {}
            // Already underway: the repeated request waits for the same outcome.
            Phase::Preparing | Phase::Deciding | Phase::Delegating | Phase::Delegated => return Ok(vec![]),
            Phase::Committing => return Ok(vec![Action::Reply(tid, Outcome::Committed)]),
        }
        if now >= txn.deadline {
            return Ok(self.abort(tid, deadline_passed()));
        }
        match declaration {
            None if txn.declares => return Err(Refusal::MustDeclare),
            None => {}
            Some(declared) => {
                let declared: BTreeMap<PartitionId, u64> =
                    declared.iter().filter(|(_, n)| **n > 0).map(|(&p, &n)| (p, n)).collect();
                let undeclared: Vec<PartitionId> =
                    txn.parts.keys().filter(|p| !declared.contains_key(p)).copied().collect();
                if !undeclared.is_empty() && self.check_undeclared {
                    let why = AbortReason::new(
                        AbortKind::DeclarationMismatch,
                        format!(
                            "partition(s) {undeclared:?} hold operations of this transaction that the commit did \
                             not declare (the committing client's count of its participants is wrong)"
                        ),
                    );
                    return Ok(self.abort(tid, why));
                }
                for (p, n) in declared {
                    txn.parts.entry(p).or_insert_with(|| Part::enlisted(0)).declared = Some(n);
                }
            }
        }
        if txn.parts.is_empty() {
            // Nothing was written anywhere: trivially committed, nothing to force.
            self.finish(tid, Outcome::Committed);
            return Ok(vec![Action::Reply(tid, Outcome::Committed), Action::Decided(tid, Outcome::Committed)]);
        }
        if self.one_phase && client_wrote && txn.parts.len() == 1 {
            let &p = txn.parts.keys().next().expect("one part");
            txn.phase = Phase::Delegating;
            return Ok(vec![Action::ForceDelegation(tid, p)]);
        }
        txn.phase = Phase::Preparing;
        Ok(txn.parts.keys().map(|&p| Action::SendPrepare(tid, p)).collect())
    }

    /// One-phase: the DELEGATED record is durable; hand the decision over.
    pub fn delegation_durable(&mut self, tid: Tid) -> Vec<Action> {
        let Some(txn) = self.live.get_mut(&tid) else {
            return vec![];
        };
        if txn.phase != Phase::Delegating {
            return vec![];
        }
        txn.phase = Phase::Delegated;
        txn.parts.keys().map(|&p| Action::SendCommitOnePhase(tid, p)).collect()
    }

    /// One-phase: the participant's answer, which is the decision.
    pub fn one_phase_outcome(&mut self, tid: Tid, outcome: Outcome) -> Vec<Action> {
        if self.live.get(&tid).map(|t| t.phase) != Some(Phase::Delegated) {
            return vec![];
        }
        let log = match outcome {
            Outcome::Committed => Action::LogFinished(tid),
            Outcome::Aborted(_) => Action::LogForget(tid),
        };
        self.finish(tid, outcome.clone());
        vec![Action::Reply(tid, outcome.clone()), log, Action::Decided(tid, outcome)]
    }

    /// Rule 7 for one-phase: an unfinished DELEGATED record read back at
    /// start. The participant is asked again; it answers what it did.
    pub fn recover_delegated(&mut self, tid: Tid, partition: PartitionId, now: Millis) -> Vec<Action> {
        self.recover_delegated_declared(tid, partition, now, None)
    }

    /// As [`Coordinator::recover_delegated`], for a record that holds the
    /// client's declared count (`Some`), which CommitOnePhase carries again.
    pub fn recover_delegated_declared(
        &mut self,
        tid: Tid,
        partition: PartitionId,
        now: Millis,
        declared: Option<u64>,
    ) -> Vec<Action> {
        let parts = BTreeMap::from([(partition, Part { declared, ..Part::enlisted(0) })]);
        self.live.insert(tid, Txn { phase: Phase::Delegated, deadline: now, begun_at: now, parts, declares: false });
        vec![Action::SendCommitOnePhase(tid, partition)]
    }

    /// A vote (or a failed prepare) arrived from `partition` (rule 4).
    pub fn vote(&mut self, tid: Tid, partition: PartitionId, vote: Vote) -> Vec<Action> {
        let Some(txn) = self.live.get_mut(&tid) else {
            return vec![];
        };
        if txn.phase != Phase::Preparing {
            // A late or duplicate vote: the decision does not change.
            return vec![];
        }
        let Some(part) = txn.parts.get_mut(&partition) else {
            return vec![];
        };
        if part.state != PartState::Enlisted {
            return vec![];
        }
        match vote {
            Vote::Yes => part.state = PartState::VotedYes,
            Vote::ReadOnly => part.state = PartState::VotedReadOnly,
            Vote::No(why) => {
                part.state = PartState::VotedNo;
                return self.abort(tid, why.within(format_args!("partition {partition} voted NO")));
            }
            Vote::Failed(why) => {
                let why = format!("partition {partition} did not vote: {why}");
                return self.abort(tid, AbortReason::new(AbortKind::ParticipantUnreachable, why));
            }
        }
        if txn.parts.values().any(|p| p.state == PartState::Enlisted) {
            return vec![];
        }
        let yes: Vec<PartitionId> =
            txn.parts.iter().filter(|(_, p)| p.state == PartState::VotedYes).map(|(&id, _)| id).collect();
        if yes.is_empty() {
            // Every participant only read: nothing to force, no phase 2.
            self.finish(tid, Outcome::Committed);
            return vec![Action::Reply(tid, Outcome::Committed), Action::Decided(tid, Outcome::Committed)];
        }
        txn.phase = Phase::Deciding;
        vec![Action::ForceCommit(tid, yes)]
    }

    /// The COMMIT record is durable: the decision is made (rules 4, 5).
    pub fn commit_durable(&mut self, tid: Tid) -> Vec<Action> {
        let Some(txn) = self.live.get_mut(&tid) else {
            return vec![];
        };
        if txn.phase != Phase::Deciding {
            return vec![];
        }
        txn.phase = Phase::Committing;
        let mut actions = vec![Action::Reply(tid, Outcome::Committed)];
        actions.extend(
            txn.parts
                .iter()
                .filter(|(_, p)| p.state == PartState::VotedYes)
                .map(|(&id, _)| Action::SendCommit(tid, id)),
        );
        actions.push(Action::Decided(tid, Outcome::Committed));
        actions
    }

    /// The forced COMMIT or DELEGATED record of `tid` was **certainly not
    /// written** (the log was out of space and rolled the write back): no
    /// one heard COMMITTED and no commit was sent, so the tid aborts like
    /// any undecided one (YES voters are told; the client hears `why`).
    /// Only for that certainty: a write whose outcome is unknown (a failed
    /// fsync) must not come here; the shell stops instead (fail-stop).
    pub fn record_not_written(&mut self, tid: Tid, why: AbortReason) -> Vec<Action> {
        match self.live.get(&tid).map(|t| t.phase) {
            Some(Phase::Deciding | Phase::Delegating) => self.abort(tid, why),
            _ => vec![],
        }
    }

    /// `partition` acknowledged the commit (rule 5).
    pub fn commit_acked(&mut self, tid: Tid, partition: PartitionId) -> Vec<Action> {
        let Some(txn) = self.live.get_mut(&tid) else {
            return vec![];
        };
        if txn.phase != Phase::Committing {
            return vec![];
        }
        if let Some(p) = txn.parts.get_mut(&partition)
            && p.state == PartState::VotedYes
        {
            p.state = PartState::Acked;
        }
        if txn.parts.values().any(|p| p.state == PartState::VotedYes) {
            return vec![];
        }
        self.finish(tid, Outcome::Committed);
        vec![Action::LogFinished(tid)]
    }

    /// The client, an operator, or a participant that aborted the tid on
    /// its own (its abort notice) asks to abort a tid with no decision.
    /// The first reason wins: a tid already aborted keeps the reason it
    /// aborted for (the real cause), whoever asks again later.
    pub fn abort_requested(&mut self, tid: Tid, why: impl Into<AbortReason>) -> Result<Vec<Action>, Refusal> {
        // A reserved tid's first use: aborted like a begun one (its time
        // does not matter, it is decided at once).
        self.first_use(tid, 0);
        match self.live.get(&tid).map(|t| t.phase) {
            Some(Phase::Active | Phase::Preparing) => Ok(self.abort(tid, why.into())),
            Some(Phase::Deciding | Phase::Committing) => Err(Refusal::AlreadyCommitted),
            // The participant decides now; its answer will be the outcome.
            Some(Phase::Delegating | Phase::Delegated) => {
                let p = self.live[&tid].parts.keys().next().copied().unwrap_or_default();
                Err(Refusal::Delegated(p))
            }
            None => match self.finished.get(&tid) {
                Some(Outcome::Committed) => Err(Refusal::AlreadyCommitted),
                // It may have committed: an abort would be a guess (rule 6).
                None if self.is_forgotten(tid) => Err(Refusal::Forgotten),
                // Aborted or unknown (presumed abort): aborting again is a no-op.
                _ => Ok(vec![]),
            },
        }
    }

    /// A prepare did not answer in time (rule 4: a timeout means ABORT).
    pub fn prepare_timed_out(&mut self, tid: Tid, partition: PartitionId) -> Vec<Action> {
        self.vote(tid, partition, Vote::Failed("prepare timed out".into()))
    }

    /// Aborts every active tid whose deadline has passed (abandoned clients,
    /// C8), and drops, silently, every reserved tid unused for
    /// [`RESERVED_UNUSED_MS`] (see the module docs).
    pub fn expire(&mut self, now: Millis) -> Vec<Action> {
        self.reserved.retain(|_, r| now < r.unused_until());
        let expired: Vec<Tid> = self
            .live
            .iter()
            .filter(|(_, t)| t.phase == Phase::Active && now >= t.deadline)
            .map(|(&tid, _)| tid)
            .collect();
        expired.into_iter().flat_map(|tid| self.abort(tid, deadline_passed())).collect()
    }

    /// Rule 6: the decision for `tid`, as a client or an operator hears it.
    pub fn decision(&self, tid: Tid) -> DecisionAnswer {
        match self.live.get(&tid).map(|t| t.phase) {
            Some(Phase::Committing) => DecisionAnswer::Committed,
            Some(_) => DecisionAnswer::Pending,
            // Reserved: a client may be about to use it, as an active tid.
            None if self.reserved.contains_key(&tid) => DecisionAnswer::Pending,
            None => match self.finished.get(&tid) {
                Some(Outcome::Committed) => DecisionAnswer::Committed,
                Some(Outcome::Aborted(why)) => DecisionAnswer::Aborted(why.clone()),
                None if self.is_forgotten(tid) => DecisionAnswer::Forgotten,
                None => DecisionAnswer::Aborted(self.presumed(tid)),
            },
        }
    }

    /// The phase of a live tid (`None`: not live).
    pub fn phase(&self, tid: Tid) -> Option<Phase> {
        self.live.get(&tid).map(|t| t.phase)
    }

    /// Rule 6's exception: the decision for `tid` as a participant that
    /// voted YES on it hears it: never [`DecisionAnswer::Forgotten`]. A
    /// COMMIT record is forgotten only after every YES voter acknowledged
    /// it, so a voter still asking was not part of a forgotten commit:
    /// presumed abort is honest for it however old the tid (and it must
    /// hear an answer, or it would stay in doubt forever).
    pub fn decision_for_voter(&self, tid: Tid) -> DecisionAnswer {
        match self.decision(tid) {
            DecisionAnswer::Forgotten => DecisionAnswer::Aborted(self.presumed(tid)),
            answer => answer,
        }
    }

    /// Whether `tid` is live or remembered as finished: when not, an ABORTED
    /// answer about it is only presumed (it may have been forgotten, or the
    /// log that knew it may be gone).
    pub fn remembers(&self, tid: Tid) -> bool {
        self.live.contains_key(&tid) || self.reserved.contains_key(&tid) || self.finished.contains_key(&tid)
    }

    /// Rule 7: an unfinished COMMIT record read back at start.
    pub fn recover_commit(&mut self, tid: Tid, partitions: &[PartitionId], now: Millis) -> Vec<Action> {
        let parts = partitions
            .iter()
            .map(|&p| (p, Part { incarnation: 0, state: PartState::VotedYes, declared: None }))
            .collect();
        self.live.insert(tid, Txn { phase: Phase::Committing, deadline: now, begun_at: now, parts, declares: false });
        partitions.iter().map(|&p| Action::SendCommit(tid, p)).collect()
    }

    /// A finished COMMIT record read back at start: remembered so a client
    /// asking again still hears COMMITTED.
    pub fn recover_finished(&mut self, tid: Tid) {
        self.finish(tid, Outcome::Committed);
    }

    fn abort(&mut self, tid: Tid, why: AbortReason) -> Vec<Action> {
        let Some(txn) = self.live.get(&tid) else {
            return vec![];
        };
        let mut actions: Vec<Action> = txn
            .parts
            .iter()
            .filter(|(_, p)| p.state != PartState::VotedNo && p.state != PartState::VotedReadOnly)
            .map(|(&id, _)| Action::SendAbort(tid, id))
            .collect();
        actions.push(Action::Reply(tid, Outcome::Aborted(why.clone())));
        actions.push(Action::Decided(tid, Outcome::Aborted(why.clone())));
        self.finish(tid, Outcome::Aborted(why));
        actions
    }

    fn finish(&mut self, tid: Tid, outcome: Outcome) {
        self.live.remove(&tid);
        let committed = outcome == Outcome::Committed;
        if self.finished.insert(tid, outcome).is_none() {
            let order = if committed { &mut self.committed_order } else { &mut self.aborted_order };
            order.push_back(tid);
            let mut forgot = None;
            while order.len() > self.finished_cap {
                if let Some(old) = order.pop_front() {
                    self.finished.remove(&old);
                    // A forgotten commit moves the mark (rule 6).
                    forgot = forgot.max(committed.then_some(old));
                }
            }
            if let Some(old) = forgot {
                self.forgot_through(old);
            }
        }
    }

    /// The reason of a presumed abort (rule 6): a tid begun before this
    /// coordinator started was its predecessor's (it restarted, or another
    /// leader took over); otherwise it is simply unknown here.
    fn presumed(&self, tid: Tid) -> AbortReason {
        if crate::tid_millis(tid).is_some_and(|b| b < self.started_at) {
            AbortReason::new(
                AbortKind::CoordinatorRestarted,
                "unknown tid, begun before this coordinator started (it restarted, or another leader took over): \
                 presumed aborted",
            )
        } else {
            AbortReason::new(AbortKind::Unknown, PRESUMED)
        }
    }

    fn refusal_for_unknown(&self, tid: Tid) -> Refusal {
        match self.finished.get(&tid) {
            Some(Outcome::Aborted(why)) => Refusal::Aborted(why.clone()),
            Some(Outcome::Committed) => Refusal::NotActive("committed"),
            None if self.is_forgotten(tid) => Refusal::Forgotten,
            None => Refusal::UnknownTid,
        }
    }
}

/// The coordinator's own deadline abort.
fn deadline_passed() -> AbortReason {
    AbortReason::new(AbortKind::Deadline, "deadline passed before commit")
}

#[cfg(test)]
mod tests;
