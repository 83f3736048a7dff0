//! Generates the gRPC code from `proto/` and writes the descriptor set that
//! server reflection serves. The build needs no system `protoc`: the
//! vendored binary from `protoc-bin-vendored` is used.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `embed_migrations!` reads this folder at compile time; without this
    // line a changed migration would not rebuild the binary.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=proto");

    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded.
    unsafe { env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    tonic_prost_build::configure()
        // Invalid protobuf is the client's input: INVALID_ARGUMENT, decided
        // where decoding fails (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::ContractCodec")
        .file_descriptor_set_path(out_dir.join("pulse_descriptor.bin"))
        .compile_protos(
            &[
                "proto/pulse/v1/common.proto",
                "proto/pulse/v1/ingest.proto",
                "proto/pulse/v1/query.proto",
                "proto/pulse/v1/alerts.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
