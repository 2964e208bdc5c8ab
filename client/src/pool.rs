//! A small pool of tids reserved in blocks (the coordinator's BeginBlock),
//! so that [`crate::Client::begin`] usually takes a tid without a round
//! trip (issue 10, item 3).
//!
//! The coordinator still allocates every tid: a block's tids are known to
//! it at once, count against its open-transaction bound, and each starts
//! its deadline at its first use (see `twopc_core::coordinator`, "Reserved
//! tids"). What the client keeps (rules, in the order they matter):
//! - **Bounded.** A block is [`crate::ConnectOptions::tid_pool`] tids (at
//!   most `MAX_BLOCK`, 64) and the pool holds at most two blocks. When it
//!   falls below one block, one refill (never two at once) is sent in the
//!   background; a `begin` that finds the pool empty while a refill is under
//!   way does not wait for it: it begins as before (Begin, batched).
//! - **Fresh.** A pooled tid is drawn only while younger than half the
//!   coordinator's unused bound (`unused_ms`, 30 s), timed from when the
//!   block was asked for: older ones are discarded, so a tid is never drawn
//!   just as the coordinator drops it.
//! - **Same coordinator.** Reserved tids are only in the coordinator's
//!   memory: after a restart or a failover they are presumed aborted. So the
//!   pool is emptied when the client learns anything that may mean another
//!   coordinator: a block from a different term, a coordinator call that
//!   failed in a way that may mean another coordinator (no answer, a
//!   transport error, UNAVAILABLE; not a definite refusal such as
//!   FAILED_PRECONDITION or RESOURCE_EXHAUSTED), calls that go to another
//!   coordinator address now (the leader changed), or a tid the coordinator did not
//!   know (a presumed abort, an operation refused NOT_FOUND). A tid drawn
//!   before that is not unsafe, only doomed: its operations fail or its
//!   commit is answered ABORTED, never half-committed (the coordinator that
//!   would commit it does not know it).
//! - **Deadline from the draw.** The transaction's local deadline starts
//!   when its tid is drawn; the coordinator's starts at the first use, which
//!   is later, so the client never works past the coordinator's deadline.
//! - **Refused or unsupported.** A block refused (RESOURCE_EXHAUSTED at the
//!   open bound, UNIMPLEMENTED from an older coordinator, or any error)
//!   turns the pool off for [`OFF_AFTER_ERROR`]; `begin` goes on as before.
//!
//! Only [`crate::Client::begin`] with the default timeout draws from the
//! pool; a caller asking for another timeout gets a Begin of its own.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// How long the pool stays off after a refill failed.
pub(crate) const OFF_AFTER_ERROR: Duration = Duration::from_secs(5);

/// One pooled tid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pooled {
    pub tid: Uuid,
    /// The timeout the coordinator granted (from the first use).
    pub timeout: Duration,
    /// Drawn only before this (half the unused bound after the request).
    fresh_until: Instant,
}

#[derive(Debug, Default)]
struct State {
    tids: VecDeque<Pooled>,
    /// The term of the coordinator that reserved the pooled tids.
    term: Option<u64>,
    /// The address of that coordinator: when calls go elsewhere now (the
    /// leader changed), the pool is emptied.
    from: Option<String>,
    refilling: bool,
    off_until: Option<Instant>,
    /// Bumped whenever the pool is emptied, so that a refill asked before
    /// is not added after.
    generation: u64,
}

/// The pool; empty and inert when its block size is 0.
#[derive(Debug)]
pub(crate) struct TidPool {
    block: usize,
    state: Mutex<State>,
}

/// What [`TidPool::draw`] tells `begin` to do.
pub(crate) enum Draw {
    /// A pooled tid, and whether a refill should be started.
    Tid(Pooled, Option<Refill>),
    /// None pooled: begin as before; start this refill (if any) first and
    /// take a tid from it.
    Empty(Option<Refill>),
}

/// A BeginBlock's answer, for [`TidPool::add`].
pub(crate) struct Block {
    /// When the request was sent.
    pub asked: Instant,
    pub tids: Vec<Uuid>,
    /// Each tid's timeout (from its first use).
    pub timeout: Duration,
    /// How long a tid may stay unused at the coordinator.
    pub unused: Duration,
    /// The term and address of the coordinator that answered.
    pub term: u64,
    pub from: String,
}

/// A refill to send: `count` tids, to add with [`TidPool::add`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refill {
    pub count: u32,
    generation: u64,
}

impl TidPool {
    pub(crate) fn new(block: usize) -> Self {
        TidPool { block: block.min(twopc_proto::tid::MAX_BLOCK), state: Mutex::default() }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.block > 0
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Only a cache of tids: a panic elsewhere cannot make it unsafe.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a fresh tid if there is one, and says whether to refill.
    /// `leader` is the coordinator calls go to now.
    pub(crate) fn draw(&self, leader: &str) -> Draw {
        let now = Instant::now();
        let mut st = self.state();
        if st.from.as_deref().is_some_and(|from| from != leader) {
            Self::empty(&mut st);
        }
        while st.tids.front().is_some_and(|p| p.fresh_until <= now) {
            st.tids.pop_front();
        }
        let taken = st.tids.pop_front();
        let refill = if st.tids.len() < self.block && !st.refilling && st.off_until.is_none_or(|until| until <= now) {
            st.refilling = true;
            st.off_until = None;
            Some(Refill { count: self.block as u32, generation: st.generation })
        } else {
            None
        };
        match taken {
            Some(p) => Draw::Tid(p, refill),
            None => Draw::Empty(refill),
        }
    }

    /// A block arrived for `refill`: kept unless the pool was emptied since
    /// it was asked for; a block of another term replaces what is pooled.
    pub(crate) fn add(&self, refill: Refill, block: Block) {
        let mut st = self.state();
        st.refilling = false;
        if st.generation != refill.generation {
            return;
        }
        if st.term.is_some_and(|t| t != block.term) || st.from.as_ref().is_some_and(|f| *f != block.from) {
            st.tids.clear();
        }
        st.term = Some(block.term);
        st.from = Some(block.from);
        let fresh_until = block.asked + block.unused / 2;
        let room = (2 * self.block).saturating_sub(st.tids.len());
        let timeout = block.timeout;
        st.tids.extend(block.tids.into_iter().take(room).map(|tid| Pooled { tid, timeout, fresh_until }));
    }

    /// A refill failed: the pool is emptied and off for a while.
    pub(crate) fn refill_failed(&self) {
        let mut st = self.state();
        st.refilling = false;
        st.off_until = Some(Instant::now() + OFF_AFTER_ERROR);
        Self::empty(&mut st);
    }

    /// The client learned something that may mean another coordinator
    /// (see the module docs): every pooled tid is dropped.
    pub(crate) fn drop_all(&self) {
        if self.enabled() {
            Self::empty(&mut self.state());
        }
    }

    fn empty(st: &mut State) {
        st.tids.clear();
        st.term = None;
        st.from = None;
        st.generation += 1;
    }

    /// How many tids are pooled now (for tests and the bench).
    pub(crate) fn len(&self) -> usize {
        self.state().tids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::now_v7()).collect()
    }

    const T: Duration = Duration::from_secs(10);
    const U: Duration = Duration::from_secs(30);

    #[test]
    fn draws_refill_once_and_stay_bounded() {
        let pool = TidPool::new(4);
        let Draw::Empty(Some(r)) = pool.draw("a") else { panic!("an empty pool asks for a refill") };
        assert!(matches!(pool.draw("a"), Draw::Empty(None)), "one refill at a time");
        pool.add(r, Block { asked: Instant::now(), tids: tids(4), timeout: T, unused: U, term: 1, from: "a".into() });
        assert_eq!(pool.len(), 4);
        // Below one block after a draw: the next refill is asked for.
        let Draw::Tid(_, Some(r)) = pool.draw("a") else { panic!("a draw below one block refills") };
        pool.add(r, Block { asked: Instant::now(), tids: tids(64), timeout: T, unused: U, term: 1, from: "a".into() });
        assert_eq!(pool.len(), 8, "at most two blocks");
        let Draw::Tid(_, None) = pool.draw("a") else { panic!("no refill while above one block") };
    }

    #[test]
    fn stale_tids_another_term_and_errors_empty_the_pool() {
        let pool = TidPool::new(2);
        let Draw::Empty(Some(r)) = pool.draw("a") else { panic!() };
        // Asked long enough ago that half the unused bound has passed.
        pool.add(
            r,
            Block { asked: Instant::now() - U / 2, tids: tids(2), timeout: T, unused: U, term: 1, from: "a".into() },
        );
        assert!(matches!(pool.draw("a"), Draw::Empty(Some(_))), "stale tids are never drawn");
        let pool = TidPool::new(2);
        let Draw::Empty(Some(r)) = pool.draw("a") else { panic!() };
        pool.add(r, Block { asked: Instant::now(), tids: tids(2), timeout: T, unused: U, term: 1, from: "a".into() });
        let Draw::Tid(_, Some(r)) = pool.draw("a") else { panic!() };
        let old = pool.state().tids[0].tid;
        pool.add(r, Block { asked: Instant::now(), tids: tids(2), timeout: T, unused: U, term: 2, from: "a".into() });
        assert!(pool.state().tids.iter().all(|p| p.tid != old), "a new term replaces the pool");
        // A refill asked before the pool was emptied is not added after.
        let Draw::Tid(_, Some(r)) = pool.draw("a") else { panic!() };
        pool.drop_all();
        pool.add(r, Block { asked: Instant::now(), tids: tids(2), timeout: T, unused: U, term: 2, from: "a".into() });
        assert_eq!(pool.len(), 0);
        // Calls that go to another coordinator now empty it too.
        let Draw::Empty(Some(r)) = pool.draw("a") else { panic!() };
        pool.add(r, Block { asked: Instant::now(), tids: tids(2), timeout: T, unused: U, term: 2, from: "a".into() });
        assert!(matches!(pool.draw("b"), Draw::Empty(Some(_))), "the leader changed");
        pool.refill_failed();
        let pool = TidPool::new(2);
        // A failed refill turns the pool off for a while.
        let Draw::Empty(Some(_)) = pool.draw("a") else { panic!() };
        pool.refill_failed();
        assert!(matches!(pool.draw("a"), Draw::Empty(None)));
    }
}
