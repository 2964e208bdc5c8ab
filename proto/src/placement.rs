//! Key placement: which partition owns a key. Shared by the client (to
//! route) and the participant (to refuse keys it does not own, PROTOCOL.md
//! rule 12), so both sides always agree.
//!
//! The function, for a client in any language:
//!
//! ```text
//! partition(key, partitions) = XXH3_64bits(key, seed = 0) mod partitions
//! ```
//!
//! - `key` is the key's raw bytes exactly as sent in the request (no
//!   encoding, no terminator, no length prefix);
//! - the hash is XXH3 64-bit (xxHash v0.8 `XXH3_64bits`, default secret,
//!   seed 0), taken as an unsigned 64-bit integer (the library's native
//!   return value; its internal reads of the input are little-endian on
//!   every platform, so the value does not depend on the machine);
//! - `mod` is the unsigned remainder by `partitions`, the cluster's
//!   partition count (`Topology.partitions` from GetTopology), giving a
//!   partition number in `0..partitions`.
//!
//! Example: `XXH3_64bits("") = 0x2D06800538D394C2`, so the empty key would
//! go to partition 1 of 3 (keys are never empty, but it is the published
//! test vector). `"account-17"` goes to partition 2 of 3.
//!
//! It must never change: a different hash or modulus would send reads of
//! existing keys to partitions that never stored them.

use xxhash_rust::xxh3::xxh3_64;

/// The partition that owns `key`: `xxh3_64(key) % partitions` (see the
/// module doc).
///
/// # Panics
/// If `partitions` is 0.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "partition_for: a cluster has at least one partition");
    (xxh3_64(key) % u64::from(partitions)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_examples_hold() {
        assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(partition_for(b"", 3), 1);
        assert_eq!(partition_for(b"account-17", 3), 2);
    }
}
