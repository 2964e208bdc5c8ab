//! Transaction ids. A tid is a UUIDv7 allocated by the coordinator: unique,
//! and time-ordered, so comparing two tids compares their ages.

use uuid::Uuid;

pub type Tid = Uuid;

/// The bounds of a block of reserved tids (BeginBlock), for clients.
pub use twopc_core::coordinator::{MAX_BLOCK, RESERVED_UNUSED_MS};

/// A fresh tid (UUIDv7: millisecond timestamp plus random bits).
pub fn new_tid() -> Tid {
    Uuid::now_v7()
}

/// The newest tid any coordinator could have allocated before the
/// millisecond `ms` (Unix epoch) began: the UUIDv7 of millisecond `ms - 1`
/// with every other bit set. Every tid allocated at `ms` or later is newer.
/// A decision log that starts remembering at `ms` uses it as its first
/// low-water mark of forgotten decisions (PROTOCOL.md rule 6).
pub fn newest_before(ms: u64) -> Tid {
    let ts = ms.saturating_sub(1) & ((1 << 48) - 1);
    Uuid::from_u128(((ts as u128) << 80) | ((1u128 << 80) - 1))
}

/// The first mark of a log that starts remembering now: [`newest_before`]
/// the millisecond of a tid allocated now, read from the clock tids come
/// from (not a process clock a test hook may shift), so that every tid
/// allocated from now on is newer.
pub fn newest_before_now() -> Tid {
    newest_before(twopc_core::tid_millis(new_tid()).unwrap_or(0))
}

/// Parses a tid from the wire, with an error message a person can act on.
pub fn parse(s: &str) -> Result<Tid, tonic::Status> {
    if s.is_empty() {
        return Err(tonic::Status::invalid_argument("tid is empty: pass the tid that Begin returned"));
    }
    let tid = Uuid::parse_str(s).map_err(|e| {
        tonic::Status::invalid_argument(format!("tid {s:?} is not a UUID ({e}): pass the tid that Begin returned"))
    })?;
    // Only a UUIDv7 can be a tid: its age (which decides presumed abort
    // versus a forgotten outcome, and wait-die) is its timestamp, and any
    // other version's bits would be read as a made-up age.
    if tid.get_version_num() != 7 {
        return Err(tonic::Status::invalid_argument(format!(
            "tid {s:?} is a version {} UUID, not a tid (tids are the UUIDv7 that Begin returns)",
            tid.get_version_num()
        )));
    }
    Ok(tid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_uuid_v7_is_a_tid() {
        assert!(parse(&new_tid().to_string()).is_ok());
        let e = parse("550e8400-e29b-41d4-a716-446655440000").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("version 4 UUID, not a tid"), "{}", e.message());
        assert!(parse("").is_err() && parse("nope").is_err());
    }

    #[test]
    fn newest_before_orders_below_every_later_tid_and_above_earlier_ones() {
        let now = crate::now_unix_ms();
        let mark = newest_before(now);
        assert!(new_tid() > mark, "a tid allocated now is newer than the mark");
        assert!(new_tid() > newest_before_now());
        let earlier = Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, (now - 1) / 1000, 0));
        assert!(earlier < mark);
        // The canonical text form orders as the value does (the SQLite log compares text).
        assert!(mark.to_string() < new_tid().to_string());
    }
}
