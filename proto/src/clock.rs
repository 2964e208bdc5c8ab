//! Clocks of different machines: deadlines must not depend on them
//! agreeing, and a disagreement is reported, not silent.
//!
//! **The rule.** A deadline crosses the wire as the time *remaining* when
//! the message was sent (`remaining_ms`, beside the absolute
//! `deadline_unix_ms` kept for display and for older peers). The receiver
//! turns it into a deadline on its own clock: remaining time added to the
//! moment *it sent the request* (so the local deadline is never later than
//! the sender's: the round trip only shortens it). Both ends then compare
//! deadlines with their own clocks only, and a receiver whose clock is
//! ahead or behind by any amount still gets the full timeout.
//!
//! Each process counts deadlines on its **deadline clock** ([`now_ms`]):
//! the Unix time when the process first read it, advanced by the monotonic
//! clock, so a step of the wall clock (an NTP correction, a VM resumed)
//! does not move a deadline either. Its values are close to Unix time (the
//! absolute `deadline_unix_ms` on the wire is on it), but only the process
//! itself compares them.
//!
//! **Reporting.** Messages that carry a deadline also carry the sender's
//! wall clock when it answered (`sent_unix_ms`). The receiver estimates the
//! sender's offset from its own clock as `sent - (asked + answered) / 2`
//! (the midpoint of the call, error at most half a round trip) and keeps
//! it in a gauge; beyond [`SKEW_BOUND_MS`] (by more than that error; an
//! answer slower than twice the bound is not taken) it logs a warning
//! naming both clocks (at most one per [`WARN_EVERY`]), and an error caused by a
//! deadline gets a note naming the offset ([`Skew::hint`]).
//!
//! **Test hook.** `TWOPC_TEST_CLOCK_OFFSET_MS` (a signed number of
//! milliseconds, read once at first use) shifts this process's wall clock
//! ([`crate::now_unix_ms`]) as a skewed machine's would be, to test the
//! above without libfaketime or root. It is for tests only.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// An offset beyond this (either way) is reported.
pub const SKEW_BOUND_MS: i64 = 1_000;
/// At most one warning per peer this often.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// The test hook's offset of this process's wall clock (see module docs).
pub fn test_offset_ms() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        let raw = std::env::var("TWOPC_TEST_CLOCK_OFFSET_MS").unwrap_or_default();
        let offset = raw.trim().parse().unwrap_or(0);
        if offset != 0 {
            eprintln!("TWOPC_TEST_CLOCK_OFFSET_MS: this process's wall clock is shifted by {offset} ms (test hook)");
        }
        offset
    })
}

/// This process's deadline clock, in ms (see the module docs): every
/// deadline and every `now` fed to a protocol core is on it.
pub fn now_ms() -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let (at, unix) = *ANCHOR.get_or_init(|| (Instant::now(), crate::now_unix_ms()));
    unix.saturating_add(at.elapsed().as_millis() as u64)
}

/// The local deadline of a received deadline: `remaining_ms` counted from
/// `asked_at` (this process's deadline clock when it sent the request), or, from a
/// peer that sends no remaining time, its absolute deadline as is.
pub fn local_deadline(remaining_ms: Option<u64>, deadline_unix_ms: u64, asked_at: u64) -> u64 {
    match remaining_ms {
        Some(left) => asked_at.saturating_add(left),
        None => deadline_unix_ms,
    }
}

/// The remaining time of `deadline` at `now` (both this process's clock).
pub fn remaining(deadline: u64, now: u64) -> u64 {
    deadline.saturating_sub(now)
}

/// The measured offset of one peer's clock from this process's.
pub struct Skew {
    /// Who the peer is, for log lines ("the coordinator").
    peer: String,
    /// Who we are, for log lines ("this participant").
    me: String,
    gauge: &'static str,
    labels: Vec<metrics::Label>,
    /// Milliseconds the peer's clock is ahead of ours (negative: behind);
    /// `i64::MIN` until measured.
    offset: AtomicI64,
    last_warn: Mutex<Option<Instant>>,
}

impl Skew {
    /// `gauge`: the metric that shows the last measured offset, in ms.
    pub fn new(peer: String, me: String, gauge: &'static str) -> Self {
        Self::labelled(peer, me, gauge, vec![])
    }

    /// As [`Skew::new`], the gauge with these labels (one gauge per peer).
    pub fn labelled(peer: String, me: String, gauge: &'static str, labels: Vec<metrics::Label>) -> Self {
        Self { peer, me, gauge, labels, offset: AtomicI64::new(i64::MIN), last_warn: Mutex::new(None) }
    }

    /// One exchange: we asked at `asked_at` and had the answer at
    /// `answered_at` (our clock); the peer's clock read `peer_sent` when it
    /// answered (0: a peer that does not say).
    pub fn observe(&self, peer_sent: u64, asked_at: u64, answered_at: u64) {
        if peer_sent == 0 {
            return;
        }
        let mid = (asked_at / 2 + answered_at / 2) as i64;
        let offset = peer_sent as i64 - mid;
        // The estimate is off by up to half the round trip (the peer read
        // its clock somewhere in it): an answer slower than twice the
        // bound (a loaded host, a queued call) cannot tell a skew from a
        // delay, so it is not taken; a faster one is reported only when
        // even its least possible offset is beyond the bound, so a slow
        // answer never raises a false alarm.
        let uncertainty = (answered_at.saturating_sub(asked_at) / 2) as i64;
        if uncertainty > SKEW_BOUND_MS {
            return;
        }
        self.offset.store(offset, Ordering::Relaxed);
        metrics::gauge!(self.gauge, self.labels.clone()).set(offset as f64);
        if !beyond_bound(offset, uncertainty) {
            return;
        }
        let mut last = self.last_warn.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(
            peer_clock_unix_ms = peer_sent,
            our_clock_unix_ms = mid,
            offset_ms = offset,
            "clock skew: {}'s clock reads {peer_sent} while {}'s reads {mid} (unix ms): {} is {} ms {}, beyond the \
             {SKEW_BOUND_MS} ms bound. Deadlines travel as remaining time, so transactions are not cut short, but \
             timestamps in logs and listings disagree: check time synchronisation (NTP/chrony) on both machines",
            self.peer,
            self.me,
            self.peer,
            offset.abs(),
            if offset > 0 { "ahead" } else { "behind" },
        );
    }

    /// The last measured offset (ms the peer is ahead of us), if any.
    pub fn offset_ms(&self) -> Option<i64> {
        Some(self.offset.load(Ordering::Relaxed)).filter(|&o| o != i64::MIN)
    }

    /// A note for an error caused by a deadline, when the clocks disagree
    /// beyond the bound (the likely cause if the peer still uses absolute
    /// deadlines).
    pub fn hint(&self) -> Option<String> {
        let o = self.offset_ms().filter(|o| o.abs() > SKEW_BOUND_MS)?;
        Some(format!(
            "note: {}'s clock is {} ms {} {}'s; deadlines travel as remaining time, so this cuts one short only \
             with a peer that sends absolute deadlines (an older version); check time synchronisation on both \
             machines",
            self.me,
            o.abs(),
            if o > 0 { "behind" } else { "ahead of" },
            self.peer,
        ))
    }
}

/// Whether a measured `offset` (ms) is certainly beyond [`SKEW_BOUND_MS`],
/// given that the measurement may be off by `uncertainty` (ms) either way.
fn beyond_bound(offset: i64, uncertainty: i64) -> bool {
    offset.abs() - uncertainty > SKEW_BOUND_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_answer_is_not_reported_as_skew() {
        let skew = Skew::new("the coordinator".into(), "this participant".into(), "t_slow_clock_offset_ms");
        // Clocks agree, but the answer took 2.7 s (a loaded host): the
        // midpoint estimate reads 1.3 s, which says nothing.
        skew.observe(1_001_350 + 1_308, 1_000_000, 1_002_700);
        assert_eq!(skew.offset_ms(), None, "a sample slower than twice the bound is not taken");
        assert_eq!(skew.hint(), None);
        // 600 ms round trip: an estimate of 1.2 s may be 0.9 s: not reported.
        assert!(!beyond_bound(1_200, 300));
        assert!(!beyond_bound(-1_200, 300));
        // 30 s is, whatever the round trip.
        assert!(beyond_bound(30_000, 300) && beyond_bound(-30_000, 1_000));
        assert!(beyond_bound(1_200, 5));
    }

    #[test]
    fn the_deadline_clock_starts_at_unix_time_and_never_goes_back() {
        let (a, wall) = (now_ms(), crate::now_unix_ms());
        assert!(a.abs_diff(wall) < 1_000, "{a} vs {wall}");
        assert!(now_ms() >= a);
    }

    #[test]
    fn remaining_time_makes_the_deadline_local() {
        // The peer (30 s behind us) set its deadline 10 s after its now.
        let peer_now = 1_000_000;
        let (deadline, left) = (peer_now + 10_000, remaining(peer_now + 10_000, peer_now));
        let our_asked = peer_now + 30_000;
        assert_eq!(local_deadline(Some(left), deadline, our_asked), our_asked + 10_000);
        // An older peer: its absolute deadline, as before.
        assert_eq!(local_deadline(None, deadline, our_asked), deadline);
    }

    #[test]
    fn an_offset_beyond_the_bound_is_measured_and_hinted() {
        let skew = Skew::new("the coordinator".into(), "this participant".into(), "t_clock_offset_ms");
        assert_eq!(skew.offset_ms(), None);
        skew.observe(1_000_500, 1_000_000, 1_001_000);
        assert_eq!(skew.offset_ms(), Some(0));
        assert_eq!(skew.hint(), None);
        // We are 30 s ahead: the peer reads 30 s less.
        skew.observe(970_000, 1_000_000, 1_000_010);
        assert_eq!(skew.offset_ms(), Some(-30_005));
        let hint = skew.hint().unwrap();
        assert!(hint.contains("this participant's clock is 30005 ms ahead of the coordinator's"), "{hint}");
    }
}
