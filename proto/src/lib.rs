//! The twopc wire protocol and the few runtime helpers every process shares.
//!
//! - [`pb`]: the code generated from `twopc/v1/twopc.proto` (messages, the
//!   `Coordinator` and `Participant` services, clients and servers).
//! - [`tid`]: parsing and creating transaction ids (UUIDv7, so a tid also
//!   tells its age, which the lock manager uses).
//! - [`failpoint`]: named crash points, compiled in only with the
//!   `failpoints` feature.
//! - [`batch`]: natural batching of calls to one peer (many items, one RPC).
//! - [`runtime`]: logging set-up and the listening socket every server uses.
//! - [`preflight`]: the start-up checks of addresses and data directories.
//! - [`tls`]: the TLS flags and the client/server TLS settings built from them.
//! - [`token`]: the optional shared secrets that guard RPCs: the admin token
//!   (admin RPCs) and the cluster's peer token (the protocol RPCs the
//!   processes call on each other); [`admin_token`] re-exports the former.
//! - [`reason`]: abort reasons (`twopc_core::reason`) to and from their
//!   wire form, in one place.
//! - [`data_file`]: the start-up check of an existing SQLite data file.
//! - [`Backoff`]: the bounded exponential backoff used for every retry loop.

pub mod admin_token;
pub mod batch;
pub mod data_file;
pub mod failpoint;
#[doc(hidden)]
pub mod preflight;
pub mod reason;
pub mod runtime;
pub mod tid;
pub mod tls;
pub mod token;

mod backoff;
pub use backoff::Backoff;

/// Generated protobuf and gRPC code for package `twopc.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("twopc.v1");
}

/// The encoded protobuf descriptors of `twopc.v1`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/twopc_descriptor.bin"));

/// Milliseconds since the Unix epoch: the clock deadlines are expressed in.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
