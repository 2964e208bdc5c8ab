//! The console's history: per-second samples of what the coordinator did,
//! kept in the process (no Prometheus server needed) for the overview's
//! charts.
//!
//! The hot path only bumps atomics ([`committed`], [`aborted`],
//! [`phase2_retry`], [`commit_latency`]): no lock, no allocation, whether a
//! console is configured or not. A sampler task (started only with a
//! console) reads and resets them once a second into a ring buffer of the
//! last [`KEEP_SECS`] seconds, so the memory is fixed (600 samples of a few
//! dozen bytes) and the page asks only for the samples it has not seen yet.
//!
//! Latency percentiles come from a log-scaled histogram of the second's
//! commit latencies (4 buckets per power of two, so a percentile is within
//! about 19% of the true value), drained by the sampler each second.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use twopc_proto::reason::AbortKind;

/// Seconds of history kept (10 minutes).
pub const KEEP_SECS: usize = 600;

const KINDS: usize = AbortKind::ALL.len();
/// Latency buckets: bucket `b` holds latencies of about `2^(b/4)` microseconds
/// (bucket 0: under 1 µs; the last: everything above ~2^31 µs, half an hour).
const BUCKETS: usize = 128;

struct Counters {
    committed: AtomicU64,
    aborted: [AtomicU64; KINDS],
    retries: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

static COUNTERS: Counters = Counters {
    committed: AtomicU64::new(0),
    aborted: [const { AtomicU64::new(0) }; KINDS],
    retries: AtomicU64::new(0),
    latency: [const { AtomicU64::new(0) }; BUCKETS],
};

/// A transaction was decided COMMIT.
pub fn committed() {
    COUNTERS.committed.fetch_add(1, Ordering::Relaxed);
}

/// A transaction was decided ABORT for a reason of `kind`.
pub fn aborted(kind: AbortKind) {
    let i = AbortKind::ALL.iter().position(|k| *k == kind).unwrap_or(KINDS - 1);
    COUNTERS.aborted[i].fetch_add(1, Ordering::Relaxed);
}

/// Phase 2 (or a one-phase commit) was resent to a participant.
pub fn phase2_retry() {
    COUNTERS.retries.fetch_add(1, Ordering::Relaxed);
}

/// A Commit call took `took` to answer (a decision, not a repeat).
pub fn commit_latency(took: Duration) {
    COUNTERS.latency[bucket(took.as_micros() as u64)].fetch_add(1, Ordering::Relaxed);
}

fn bucket(micros: u64) -> usize {
    if micros == 0 {
        return 0;
    }
    // 4 * log2(micros), from the bit length and the two bits after the top one.
    let top = 63 - micros.leading_zeros() as u64;
    let frac = if top >= 2 { (micros >> (top - 2)) & 0b11 } else { (micros << (2 - top)) & 0b11 };
    ((top * 4 + frac) as usize + 1).min(BUCKETS - 1)
}

/// The upper bound of bucket `b`, in milliseconds (what a percentile reports).
fn bucket_upper_ms(b: usize) -> f64 {
    if b == 0 {
        return 0.001;
    }
    let (top, frac) = ((b - 1) / 4, (b - 1) % 4);
    // Bucket covers [2^top * (1 + frac/4), 2^top * (1 + (frac+1)/4)) µs.
    (2f64.powi(top as i32) * (1.0 + (frac as f64 + 1.0) / 4.0)) / 1000.0
}

/// One second of activity.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// The second's end, Unix milliseconds (the x axis).
    pub t: u64,
    pub committed: u64,
    /// Aborts by reason kind, only the kinds that occurred (label → count).
    pub aborted: Vec<(&'static str, u64)>,
    /// Commit latency percentiles over the second, milliseconds (absent
    /// when nothing committed or aborted through a Commit call).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Phase-2 (and one-phase) resends.
    pub retries: u64,
}

/// The ring buffer of the last [`KEEP_SECS`] samples.
#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Takes one sample: the counters since the last one, reset.
    pub fn sample(&self, t: u64) {
        let committed = COUNTERS.committed.swap(0, Ordering::Relaxed);
        let aborted = AbortKind::ALL
            .iter()
            .zip(&COUNTERS.aborted)
            .filter_map(|(k, c)| Some((k.label(), c.swap(0, Ordering::Relaxed))).filter(|(_, n)| *n > 0))
            .collect();
        let latency: Vec<u64> = COUNTERS.latency.iter().map(|c| c.swap(0, Ordering::Relaxed)).collect();
        let retries = COUNTERS.retries.swap(0, Ordering::Relaxed);
        let sample = Sample {
            t,
            committed,
            aborted,
            p50_ms: percentile(&latency, 0.50),
            p99_ms: percentile(&latency, 0.99),
            retries,
        };
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEEP_SECS {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples taken after `since` (Unix ms; 0: all kept).
    pub fn since(&self, since: u64) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.iter().filter(|s| s.t > since).cloned().collect()
    }

    /// Samples once a second until the process ends.
    pub async fn run(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // Whatever was counted before the console started is not this second's.
        self.sample(0);
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).clear();
        loop {
            tick.tick().await;
            self.sample(twopc_proto::now_unix_ms());
        }
    }
}

/// The `q` quantile of a bucket histogram (the bucket's upper bound), or
/// `None` when it is empty.
fn percentile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (b, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_upper_ms(b));
        }
    }
    Some(bucket_upper_ms(buckets.len() - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bounds_cover_their_values() {
        let mut last = 0;
        for us in [1u64, 2, 3, 4, 5, 7, 8, 100, 1_000, 1_500, 10_000, 123_456, u64::MAX / 2] {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            last = b;
            if b < BUCKETS - 1 {
                assert!(bucket_upper_ms(b) * 1000.0 >= us as f64, "{us} above its bucket's bound");
                assert!(bucket_upper_ms(b) * 1000.0 <= us as f64 * 1.25 + 1.0, "{us}: bound too loose");
            }
        }
    }

    #[test]
    fn percentiles_of_a_histogram() {
        let mut h = vec![0u64; BUCKETS];
        assert_eq!(percentile(&h, 0.5), None);
        for _ in 0..99 {
            h[bucket(1_000)] += 1;
        }
        h[bucket(100_000)] += 1;
        let p50 = percentile(&h, 0.5).unwrap();
        assert!((1.0..1.25).contains(&p50), "{p50}");
        let p99 = percentile(&h, 0.99).unwrap();
        assert!((1.0..1.25).contains(&p99), "{p99}");
        assert!(percentile(&h, 1.0).unwrap() >= 100.0);
    }

    #[test]
    fn the_ring_keeps_the_last_ten_minutes_and_answers_since() {
        let h = History::default();
        for t in 1..=(KEEP_SECS as u64 + 5) {
            h.sample(t * 1000);
        }
        let all = h.since(0);
        assert_eq!(all.len(), KEEP_SECS);
        assert_eq!(all[0].t, 6_000);
        assert_eq!(h.since(KEEP_SECS as u64 * 1000 + 3_000).len(), 2);
    }
}
