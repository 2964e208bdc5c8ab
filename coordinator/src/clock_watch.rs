//! The coordinator's view of its participants' clocks (issue 13, kind 7;
//! `twopc_proto::clock` has the rule): deadlines go out as remaining time,
//! so no participant depends on agreeing with this clock, but a clock off
//! by more than the bound is reported here too: participants stamp their
//! Register and Enlist requests with their wall clock, and the difference
//! from this clock at receipt (one-way: off by at most the transit time)
//! goes to the gauge `twopc_participant_clock_offset_ms{partition}` and,
//! beyond the bound, to one warning per partition per minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use twopc_proto::clock::Skew;
use twopc_proto::now_unix_ms;

/// A request from `partition` stamped `sent_unix_ms` (0: not stamped) has
/// just arrived.
pub fn heard_from(partition: u32, sent_unix_ms: u64) {
    if sent_unix_ms == 0 {
        return;
    }
    static SKEWS: OnceLock<Mutex<HashMap<u32, Arc<Skew>>>> = OnceLock::new();
    let skew = {
        let mut skews = SKEWS.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner());
        skews
            .entry(partition)
            .or_insert_with(|| {
                Arc::new(Skew::labelled(
                    format!("partition {partition}"),
                    "the coordinator".into(),
                    "twopc_participant_clock_offset_ms",
                    vec![metrics::Label::new("partition", partition.to_string())],
                ))
            })
            .clone()
    };
    let now = now_unix_ms();
    skew.observe(sent_unix_ms, now, now);
}
