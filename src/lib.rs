//! The `twopc` binary's library side: starting local clusters of real
//! processes ([`cluster`], and the etcd behind an HA cluster:
//! [`etcd_cluster`]) for `twopc demo` and for the integration tests, and the
//! demo workload ([`demo`]).

pub mod bench;
pub mod cluster;
pub mod demo;
pub mod etcd_cluster;
