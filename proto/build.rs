//! Generates the gRPC code from `twopc/v1/twopc.proto` with `protox`, a pure
//! Rust protobuf compiler, so a fresh machine needs nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "twopc/v1/twopc.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
