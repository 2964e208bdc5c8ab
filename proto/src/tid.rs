//! Transaction ids. A tid is a UUIDv7 allocated by the coordinator: unique,
//! and time-ordered, so comparing two tids compares their ages.

use uuid::Uuid;

pub type Tid = Uuid;

/// A fresh tid (UUIDv7: millisecond timestamp plus random bits).
pub fn new_tid() -> Tid {
    Uuid::now_v7()
}

/// Parses a tid from the wire, with an error message a person can act on.
pub fn parse(s: &str) -> Result<Tid, tonic::Status> {
    if s.is_empty() {
        return Err(tonic::Status::invalid_argument("tid is empty: pass the tid that Begin returned"));
    }
    Uuid::parse_str(s).map_err(|e| {
        tonic::Status::invalid_argument(format!("tid {s:?} is not a UUID ({e}): pass the tid that Begin returned"))
    })
}
