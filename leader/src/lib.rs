//! How a coordinator that does not lead says so, and how callers follow it
//! (PROTOCOL.md rule 16).
//!
//! With a replicated decision log several coordinators run and one leads.
//! The others (standbys) answer every Coordinator RPC with
//! [`tonic::Code::Unavailable`] and, when they know who leads, the leader's
//! address in the ASCII metadata entry [`LEADER_HEADER`] (also spelled out
//! in the message, for people). Unavailable is the status gRPC clients
//! already treat as "try again, possibly elsewhere": a standby has changed
//! nothing. A client or participant given a list of coordinator addresses
//! ([`parse_addresses`]) follows the hint, or else tries the next address,
//! within a bounded number of attempts.
//!
//! A leader that can no longer confirm its leadership (its lease in the
//! store could not be renewed in time) answers the same way, without a
//! hint: it must not answer from memory (rule 14).
//!
//! [`follow`] is the follower every caller of the coordinator uses (the
//! client library and the participants); [`fake_coordinator`] a scripted
//! Coordinator for their tests.

#[doc(hidden)]
pub mod fake_coordinator;
pub mod follow;

use tonic::Status;

/// Metadata key carrying the leader's address on a standby's answer.
pub const LEADER_HEADER: &str = "x-twopc-leader";

/// The status a standby answers with. `leader` is the leader's address,
/// when one is known.
pub fn standby_status(leader: Option<&str>) -> Status {
    match leader {
        Some(addr) => {
            let mut status = Status::unavailable(format!(
                "this coordinator is a standby: the leader is at {addr}; send coordinator calls there"
            ));
            if let Ok(v) = addr.parse() {
                status.metadata_mut().insert(LEADER_HEADER, v);
            }
            status
        }
        None => Status::unavailable(
            "this coordinator is a standby and no leader is elected right now (an election takes up to the lease TTL); retry shortly",
        ),
    }
}

/// The status of a leader that cannot confirm its leadership in time.
pub fn uncertain_status() -> Status {
    Status::unavailable(
        "this coordinator cannot confirm its leadership right now (its lease in the replicated decision log could not be renewed in time: is etcd reachable and has it a quorum?); retry shortly",
    )
}

/// The leader's address a standby named in `status`, if any.
pub fn leader_hint(status: &Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let v = status.metadata().get(LEADER_HEADER)?.to_str().ok()?.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Splits a comma-separated list of coordinator addresses (`A,B,C`, as
/// `--coordinator` and `TWOPC_COORDINATOR` take it): trimmed, empty items
/// refused, duplicates dropped in order.
pub fn parse_addresses(list: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("empty address in the list {list:?}: expected HOST:PORT[,HOST:PORT...]"));
        }
        if !out.iter().any(|a| a == item) {
            out.push(item.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_names_the_leader_and_the_hint_reads_it_back() {
        let s = standby_status(Some("127.0.0.1:7001"));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains("127.0.0.1:7001"));
        assert_eq!(leader_hint(&s).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(leader_hint(&standby_status(None)), None);
        assert_eq!(leader_hint(&uncertain_status()), None);
        assert_eq!(leader_hint(&Status::unavailable("x")), None);
    }

    #[test]
    fn address_lists_are_split_trimmed_and_checked() {
        assert_eq!(parse_addresses("a:1, b:2,a:1").unwrap(), vec!["a:1", "b:2"]);
        assert_eq!(parse_addresses("a:1").unwrap(), vec!["a:1"]);
        assert!(parse_addresses("a:1,,b:2").unwrap_err().contains("empty address"));
        assert!(parse_addresses("").is_err());
    }
}
