//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and feeds the
//! descriptors to tonic's code generator.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/sluice/v1/server.proto",
        "proto/sluice/v1/broker.proto",
        "proto/sluice/v1/groups.proto",
        "proto/sluice/v1/queues.proto",
        "proto/sluice/v1/cluster.proto",
        "proto/sluice/v1/security.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(protos)?;

    // The encoded descriptor set is kept for gRPC server reflection.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("sluice_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .bytes(".")
        // prost plus a check of request sizes before decoding.
        .codec_path("crate::api::grpc::codec::LimitedCodec")
        .compile_fds(compiler.file_descriptor_set())?;

    // The Broker service's server side, generated once more: its read
    // replies are types of our own (api/grpc/reply.rs) that encode
    // records straight from the stored batches; every other message is
    // the one generated above.
    let server_out = out_dir.join("broker_server");
    fs::create_dir_all(&server_out)?;
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.open_files(["proto/sluice/v1/broker.proto"])?;
    tonic_prost_build::configure()
        .bytes(".")
        .build_client(false)
        .out_dir(&server_out)
        .extern_path(
            ".sluice.v1.FetchResponse",
            "crate::api::grpc::reply::FetchReply",
        )
        .extern_path(
            ".sluice.v1.SubscribeResponse",
            "crate::api::grpc::reply::SubscribeReply",
        )
        .extern_path(".sluice.v1", "crate::api::grpc::pb")
        .codec_path("crate::api::grpc::codec::LimitedCodec")
        .compile_fds(compiler.file_descriptor_set())?;

    // The nodes' internal service: generated apart, so reflection on the
    // client listener never lists it.
    let internal = [
        "proto/sluice/internal/v1/cluster.proto",
        "proto/sluice/internal/v1/replication.proto",
    ];
    for p in internal {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.open_files(internal)?;
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
