//! The twopc wire protocol and the few runtime helpers every process shares.
//!
//! - [`pb`]: the code generated from `twopc/v1/twopc.proto` (messages, the
//!   `Coordinator` and `Participant` services, clients and servers).
//! - [`tid`]: parsing and creating transaction ids (UUIDv7, so a tid also
//!   tells its age, which the lock manager uses).
//! - [`failpoint`]: named crash points, compiled in only with the
//!   `failpoints` feature.
//! - [`batch`]: natural batching of calls to one peer (many items, one RPC).
//! - [`limits`]: message sizes: the gRPC message limit every server and
//!   client uses, derived from the key and value limits, and the
//!   RESOURCE_EXHAUSTED answer to anything over a limit.
//! - [`reflection`]: gRPC reflection listing exactly the process's own services.
//! - [`placement`]: which partition owns a key (the client routes by it,
//!   a participant refuses keys it does not own).
//! - [`clock`]: deadlines as remaining time, and clock skew measured and
//!   reported.
//! - [`runtime`]: logging set-up and the listening socket every server uses.
//! - [`preflight`]: the start-up checks of addresses and data directories.
//! - [`tls`]: the TLS flags and the client/server TLS settings built from them.
//! - [`token`]: the optional shared secrets that guard RPCs: the admin token
//!   (admin RPCs) and the cluster's peer token (the protocol RPCs the
//!   processes call on each other); [`admin_token`] re-exports the former.
//! - [`data_dir_lock`]: the exclusive lock a process holds on its data
//!   directory (one process per decision log or partition store).
//! - [`reason`]: abort reasons (`twopc_core::reason`) to and from their
//!   wire form, in one place.
//! - [`data_file`]: the start-up check of an existing SQLite data file.
//! - [`throttle`]: rate-limited log lines for events that repeat per tid.
//! - [`disk_full`]: a full disk under a SQLite file, told apart from a
//!   failed fsync, and degraded on instead of stopped for.
//! - [`store_id`]: the identity of a participant's store, and the
//!   coordinator's refusal of a registration from another store.
//! - [`wal_checkpoint`]: SQLite WAL checkpoints off a writer thread's
//!   commit path.
//! - [`Backoff`]: the bounded exponential backoff used for every retry loop.

pub mod admin_token;
pub mod batch;
pub mod clock;
pub mod data_dir_lock;
pub mod data_file;
pub mod disk_full;
pub mod failpoint;
pub mod limits;
pub mod placement;
#[doc(hidden)]
pub mod preflight;
pub mod reason;
pub mod reflection;
pub mod runtime;
pub mod store_id;
pub mod throttle;
pub mod tid;
pub mod tls;
pub mod token;
pub mod wal_checkpoint;

mod backoff;
pub use backoff::Backoff;

/// Generated protobuf and gRPC code for package `twopc.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("twopc.v1");
}

/// The encoded protobuf descriptors of `twopc.v1`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/twopc_descriptor.bin"));

/// Milliseconds since the Unix epoch: the clock deadlines are expressed in
/// (shifted by the test hook `TWOPC_TEST_CLOCK_OFFSET_MS`, see [`clock`]).
pub fn now_unix_ms() -> u64 {
    let wall =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    wall.saturating_add_signed(clock::test_offset_ms())
}
