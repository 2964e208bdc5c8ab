//! Client library for twopc, plus the client half of the `twopc` CLI.
//!
//! Transaction control (begin, commit, abort, decisions) goes to the
//! coordinator; reads and writes go straight to the participant that owns the
//! key, found with [`partition_for`] over the coordinator's topology. The
//! client never decides anything itself: the coordinator's answer to
//! `Commit` (or `GetDecision`) is the only source of truth about a tid, and a
//! participant enlists itself, so a client that forgets a participant or
//! crashes cannot break atomicity (PROTOCOL.md rules 2 and 6).
//!
//! - [`Client`]: a cheap-to-clone handle, safe to share between tasks.
//! - [`Txn`]: one transaction's operations, by tid.
//! - [`ClientError`]: every failure, printable as an actionable sentence.
//! - [`AbortKind`]: why a transaction aborted, as a small fixed set (with
//!   the words in [`Outcome::Aborted`] and [`Decision::Aborted`]).
//! - [`ConnectOptions`]: TLS ([`ClientTls`], built from [`TlsArgs`]), the
//!   [`AdminToken`] sent with admin calls, and the time budget of one
//!   coordinator call.
//!
//! A client is given one coordinator address or several (`A,B,C`): with a
//! replicated decision log one coordinator leads and the others are
//! standbys that name it; every coordinator call follows the leader within
//! a bounded budget (PROTOCOL.md rule 16; the rules, and what any other
//! client must do too, are in the `client` module docs and
//! [`Txn::commit`]).
//! - [`cli`]: the `twopc` client subcommands.

mod admin;
pub mod cli;
mod client;
mod error;
mod pool;
mod routing;
mod txn;

pub use admin::{
    FailpointTarget, HeuristicOutcome, InDoubtTid, PartitionInDoubt, Resolution, TransactionListing,
    in_doubt_at_address, resolve_heuristically,
};
pub use client::{Client, ConnectOptions, DEFAULT_CALL_BUDGET, Decision, Topology};
pub use error::ClientError;
pub use routing::partition_for;
pub use twopc_proto::admin_token::AdminToken;
pub use twopc_proto::pb::{ParticipantInfo, TransactionInfo};
pub use twopc_proto::reason::AbortKind;
pub use twopc_proto::tls::{ClientTls, TlsArgs};
pub use txn::{Op, OpResult, Outcome, Txn};
