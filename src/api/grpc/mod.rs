//! gRPC transport (tonic): generated code for `proto/` and the services.

/// Code generated from `proto/sluice/v1/*.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("sluice.v1");
}

/// Encoded `FileDescriptorSet` of the public API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sluice_descriptor.bin"));

mod info;
pub use info::InfoService;
