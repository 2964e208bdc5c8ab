//! Exhaustive model checking of reserved tids (blocks; see the
//! `coordinator` module docs, "Reserved tids").
//!
//! A [`World`] is the coordinator core, the one participant's state per tid
//! (a write it holds after an enlistment the coordinator accepted, and
//! whether it applied or dropped it), the coordinator's clock, and what the
//! client was told about each tid. [`check`] explores **every**
//! interleaving, breadth-first, of: asking for a block of tids (a block of
//! two and one of one; the open bound is two, so a block is refused while
//! the other's tids are open), the
//! participant enlisting a tid for a client's write, the client committing,
//! aborting or asking about any tid (used or not, reserved or not), time
//! passing in steps, the expiry sweep, and the coordinator restarting
//! (forgetting every reserved and begun tid, rule 1, and reading its
//! finished records back from the decision log). The shell's
//! two-phase commit runs synchronously inside a commit step (the full
//! protocol's interleavings are `model::check`'s); what is explored here is
//! where a tid's life as a reserved tid can go wrong.
//!
//! Checked in every reachable state:
//! - **the open bound**: live and reserved tids together never exceed it;
//! - **deadline from first use**: every active tid's deadline is its
//!   timeout after its first use (not after its reservation);
//! - **unused tids go**: after an expiry sweep no reserved tid is older
//!   than the unused bound, and dropping one makes no action (no abort sent,
//!   no decision counted);
//! - **never half-committed**: a tid the client was told COMMITTED has
//!   every write the participant held for it applied (a write enlisted at
//!   a coordinator that restarted is never part of a later commit: the
//!   commit is answered ABORTED), and no write is both applied and dropped;
//! - **no contradiction**: the client is never told both outcomes of a tid
//!   that wrote something. (A tid with nothing enlisted commits trivially
//!   with no record, so after a restart a repeated Commit of it hears the
//!   presumed ABORTED: true of nothing, and so for begun tids too since
//!   before blocks existed; not a contradiction about any data.)

use std::collections::{BTreeMap, HashSet, VecDeque};

use crate::coordinator::{Action, Coordinator, DecisionAnswer, Outcome, Vote};
use crate::reason::{AbortKind, AbortReason};
use crate::{Millis, Tid};

const MAX_OPEN: usize = 2;
const TIMEOUT: Millis = 15_000;
/// Time passes in steps of this, up to [`END`]: enough to cross a
/// deadline and the unused bound.
const STEP: Millis = 10_000;
const END: Millis = 4 * STEP;
const BLOCKS: [&[u128]; 2] = [&[1, 2], &[3]];

fn tid(n: u128) -> Tid {
    // UUIDv7-shaped, at Unix ms 1 (before any restart's start time).
    Tid::from_u128((1u128 << 80) | (0x7u128 << 76) | (0x8u128 << 60) | n)
}

/// The participant's state for one tid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Held {
    applied: bool,
    dropped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct World {
    core: Coordinator,
    now: Millis,
    restarts: u8,
    asked: [bool; 2],
    held: BTreeMap<Tid, Held>,
    /// The decision log: tids with a durable COMMIT or DELEGATED record
    /// (read back by a restart; the synchronous shell always finishes
    /// phase 2, so every record is finished).
    log: std::collections::BTreeSet<Tid>,
    told: BTreeMap<Tid, Vec<bool>>,
    /// Set when a step broke a rule that only the step itself can see.
    broken: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Reserve(usize),
    Enlist(Tid),
    Commit(Tid),
    Abort(Tid),
    Ask(Tid),
    Tick,
    Expire,
    Restart,
}

impl World {
    fn initial() -> World {
        World {
            core: Coordinator::new(MAX_OPEN, 100),
            now: 0,
            restarts: 0,
            asked: [false; 2],
            held: BTreeMap::new(),
            log: Default::default(),
            told: BTreeMap::new(),
            broken: None,
        }
    }

    fn tids() -> impl Iterator<Item = Tid> {
        BLOCKS.iter().copied().flatten().map(|&n| tid(n))
    }

    fn events(&self) -> Vec<Event> {
        let mut e = vec![];
        for (i, asked) in self.asked.iter().enumerate() {
            if !asked {
                e.push(Event::Reserve(i));
            }
        }
        for (block, tids) in BLOCKS.iter().enumerate() {
            if !self.asked[block] {
                continue;
            }
            for t in tids.iter().map(|&n| tid(n)) {
                e.extend([Event::Enlist(t), Event::Commit(t), Event::Abort(t), Event::Ask(t)]);
            }
        }
        if self.now < END {
            e.push(Event::Tick);
        }
        e.push(Event::Expire);
        if self.restarts < 1 {
            e.push(Event::Restart);
        }
        e
    }

    fn tell(&mut self, t: Tid, committed: bool) {
        let told = self.told.entry(t).or_default();
        if !told.contains(&committed) {
            told.push(committed);
        }
    }

    /// The shell, synchronously: every prepare votes YES, every record is
    /// forced, every message is delivered.
    fn run(&mut self, mut actions: Vec<Action>) {
        while !actions.is_empty() {
            let mut next = vec![];
            for a in actions {
                match a {
                    Action::SendPrepare(t, p) => next.extend(self.core.vote(t, p, Vote::Yes)),
                    Action::ForceCommit(t, _) => {
                        self.log.insert(t);
                        next.extend(self.core.commit_durable(t));
                    }
                    Action::ForceDelegation(t, _) => {
                        self.log.insert(t);
                        next.extend(self.core.delegation_durable(t));
                    }
                    Action::LogForget(t) => {
                        self.log.remove(&t);
                    }
                    Action::SendCommitOnePhase(t, _) => {
                        self.held.entry(t).or_default().applied = true;
                        next.extend(self.core.one_phase_outcome(t, Outcome::Committed));
                    }
                    Action::SendCommit(t, p) => {
                        self.held.entry(t).or_default().applied = true;
                        next.extend(self.core.commit_acked(t, p));
                    }
                    Action::SendAbort(t, _) => {
                        if let Some(h) = self.held.get_mut(&t) {
                            h.dropped = true;
                        }
                    }
                    Action::Reply(t, o) => self.tell(t, o == Outcome::Committed),
                    Action::Decided(..) | Action::LogFinished(_) => {}
                }
            }
            actions = next;
        }
    }

    fn apply(&mut self, e: Event) {
        match e {
            Event::Reserve(i) => {
                self.asked[i] = true;
                let block: Vec<Tid> = BLOCKS[i].iter().map(|&n| tid(n)).collect();
                // Refused when it does not fit: the client's pool stays
                // empty and it begins one by one (not modelled further).
                if self.core.reserve(&block, self.now, TIMEOUT, false).is_err() {
                    for t in block {
                        if self.core.is_reserved(t) {
                            self.broken = Some(format!("a refused block left {t} reserved"));
                        }
                    }
                }
            }
            Event::Enlist(t) => {
                let (accepted, actions) = self.core.enlist(t, 0, 1, self.now);
                if accepted.is_ok() {
                    self.held.entry(t).or_default();
                }
                self.run(actions);
            }
            Event::Commit(t) => {
                if let Ok(actions) = self.core.commit_requested(t, self.now, true) {
                    self.run(actions);
                }
            }
            Event::Abort(t) => {
                if let Ok(actions) =
                    self.core.abort_requested(t, AbortReason::new(AbortKind::Client, "aborted by the client"))
                {
                    self.run(actions);
                    // The abort was accepted: the tid never commits.
                    self.tell(t, false);
                }
            }
            Event::Ask(t) => match self.core.decision(t) {
                DecisionAnswer::Committed => self.tell(t, true),
                DecisionAnswer::Aborted(_) => self.tell(t, false),
                DecisionAnswer::Pending | DecisionAnswer::Forgotten => {}
            },
            Event::Tick => self.now += STEP,
            Event::Expire => {
                let was_reserved: Vec<Tid> = Self::tids().filter(|&t| self.core.is_reserved(t)).collect();
                let actions = self.core.expire(self.now);
                if let Some(a) = actions.iter().find(|a| {
                    let t = match a {
                        Action::SendAbort(t, _) | Action::Reply(t, _) | Action::Decided(t, _) => *t,
                        _ => return false,
                    };
                    was_reserved.contains(&t)
                }) {
                    self.broken = Some(format!("dropping an unused reserved tid made an action: {a:?}"));
                }
                self.run(actions);
                if let Some((t, r)) = self.core.reserved().find(|(_, r)| self.now >= r.unused_until()) {
                    self.broken = Some(format!("{t} reserved at {} outlived the sweep at {}", r.reserved_at, self.now));
                }
            }
            Event::Restart => {
                // Everything in memory is gone (rule 1); the participant
                // keeps what it holds.
                self.restarts += 1;
                self.core = Coordinator::new(MAX_OPEN, 100).with_start(self.now + 2);
                for &t in &self.log {
                    self.core.recover_finished(t);
                }
            }
        }
    }

    fn violation(&self) -> Option<String> {
        if let Some(why) = &self.broken {
            return Some(why.clone());
        }
        let open = self.core.live_count() + self.core.reserved_count();
        if open > MAX_OPEN {
            return Some(format!("{open} tids open, over the bound {MAX_OPEN}"));
        }
        for (t, txn) in self.core.live() {
            if txn.deadline != txn.begun_at + TIMEOUT {
                return Some(format!(
                    "{t}: deadline {} is not {TIMEOUT} after its first use {}",
                    txn.deadline, txn.begun_at
                ));
            }
        }
        for (t, told) in &self.told {
            if told.len() > 1 && self.held.contains_key(t) {
                return Some(format!("{t}: the client was told both COMMITTED and ABORTED"));
            }
            if told == &[true] && self.held.get(t).is_some_and(|h| !h.applied) {
                return Some(format!("{t}: told COMMITTED but the participant's write was not applied"));
            }
        }
        for (t, h) in &self.held {
            if h.applied && h.dropped {
                return Some(format!("{t}: the participant both applied and dropped its write"));
            }
        }
        None
    }
}

/// What [`check`] found.
#[derive(Debug)]
pub struct Report {
    pub states: usize,
    /// The broken invariant and the steps that led to it.
    pub violation: Option<(String, Vec<String>)>,
}

/// Explores every interleaving (see the module docs).
pub fn check() -> Report {
    let init = World::initial();
    let mut seen: HashSet<World> = HashSet::new();
    let mut trail: Vec<(usize, Option<Event>)> = vec![(usize::MAX, None)];
    let mut queue: VecDeque<(World, usize)> = VecDeque::new();
    seen.insert(init.clone());
    queue.push_back((init, 0));
    while let Some((world, at)) = queue.pop_front() {
        if let Some(why) = world.violation() {
            let mut steps = vec![];
            let mut i = at;
            while i != usize::MAX {
                steps.push(trail[i].1.map_or("start".to_string(), |e| format!("{e:?}")));
                i = trail[i].0;
            }
            steps.reverse();
            return Report { states: seen.len(), violation: Some((why, steps)) };
        }
        for e in world.events() {
            let mut next = world.clone();
            next.apply(e);
            if seen.insert(next.clone()) {
                trail.push((at, Some(e)));
                queue.push_back((next, trail.len() - 1));
            }
        }
    }
    Report { states: seen.len(), violation: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_tids_through_first_use_expiry_and_a_restart() {
        let r = check();
        eprintln!("reserved-tid model: {} states", r.states);
        if let Some((why, trace)) = &r.violation {
            panic!("invariant violated: {why}\ntrace:\n  {}", trace.join("\n  "));
        }
        assert!(r.states > 1_000, "suspiciously small state space: {}", r.states);
    }
}
