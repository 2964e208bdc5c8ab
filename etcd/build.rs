//! Generates the etcd v3 client stubs from `proto/etcd.proto` with
//! `protox` (pure Rust): no system `protoc`, unlike the etcd client crates
//! whose build scripts run it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/etcd.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    Ok(())
}
