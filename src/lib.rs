//! The `twopc` binary's library side: the demo workload ([`demo`]), the
//! benchmark ([`bench`]) and the `twopc cluster` commands ([`cluster_cli`]).
//! Local clusters of real processes ([`cluster`], and the etcd behind an
//! HA cluster: [`etcd_cluster`]) live in the `twopc-testkit` crate, re-exported
//! here under their old paths.

pub mod bench;
pub mod cluster_cli;
pub mod demo;

pub use twopc_testkit::{cluster, etcd_cluster};
