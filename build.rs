//! Compiles proto/ into Rust at build time: protox parses the files (pure Rust, so no
//! `protoc` binary is needed), tonic-prost-build writes the messages and the gRPC
//! services. To add a file, add it to `PROTOS`.

/// The .proto files, relative to `INCLUDE`.
const PROTOS: &[&str] = &["podscore/v1/score.proto", "inference/grpc_predict_v2.proto"];
/// The import root of every file in `PROTOS`.
const INCLUDE: &str = "proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={INCLUDE}");
    let descriptors = protox::compile(PROTOS, [INCLUDE])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
