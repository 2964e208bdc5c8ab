//! Rate-limited log lines for events that can repeat once per transaction
//! or once per retry.
//!
//! Rule (issue 13, "logs stay proportionate"): at the default level the
//! log's volume must not grow with the transaction rate. One line per
//! committed transaction was ~1 MB/s at full rate (~90 GB a day) and cost
//! throughput. So routine per-transaction events log at `debug`, and an
//! event that is worth seeing at `info`/`warn` but can repeat per tid (a
//! resent commit, an in-doubt question, an expired tid) goes through a
//! [`Throttle`]: the first event of each window is logged, carrying how
//! many like it were not logged since the last one; the others only count.
//! The metrics still count every event.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One log site's limit: at most one line per `every`.
///
/// Declare one per site as a `static` (`Throttle::new` is `const`):
/// ```
/// # use std::time::Duration;
/// # use twopc_proto::throttle::Throttle;
/// static RESENT: Throttle = Throttle::new(Duration::from_secs(10));
/// if let Some(suppressed) = RESENT.allow() {
///     // tracing::warn!(suppressed, "commit not acknowledged; resending");
/// #   let _ = suppressed;
/// }
/// ```
pub struct Throttle {
    every: Duration,
    state: Mutex<State>,
}

struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// A site that logs at most once per `every`.
    pub const fn new(every: Duration) -> Self {
        Throttle { every, state: Mutex::new(State { last: None, suppressed: 0 }) }
    }

    /// Called at each event: `Some(n)` when this one should be logged, `n`
    /// being the events not logged since the last logged one; `None` when
    /// it should not (it is counted for the next line).
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        // A panic elsewhere while holding this lock cannot leave the two
        // fields inconsistent in a way that matters for logging.
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_carrying_the_count_it_left_out() {
        let t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.allow_at(t0), Some(0));
        for i in 1..=99 {
            assert_eq!(t.allow_at(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(t.allow_at(t0 + Duration::from_secs(10)), Some(99));
        assert_eq!(t.allow_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(t.allow_at(t0 + Duration::from_secs(25)), Some(1));
    }
}
