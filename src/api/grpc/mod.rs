//! gRPC transport (tonic): generated code for `proto/` and the services.
//! Each handler decodes, validates, calls the [`crate::broker::Broker`]
//! facade and encodes; [`status`] is the one map from errors to codes.

/// Code generated from `proto/sluice/v1/*.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("sluice.v1");
}

/// Encoded `FileDescriptorSet` of the public API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sluice_descriptor.bin"));

/// Largest gRPC message either way (a fetch may return up to 64 MiB of
/// records, plus framing).
pub const MAX_MESSAGE_BYTES: usize = 96 * 1024 * 1024;

/// HTTP/2 flow-control window per stream: large enough that a produce
/// request or fetch reply of a few MiB needs no window updates on the way.
pub const HTTP2_STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// HTTP/2 flow-control window per connection.
pub const HTTP2_CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

mod admin;
mod broker;
pub mod convert;
mod groups;
mod info;
mod queues;
pub mod status;

pub use admin::AdminService;
pub use broker::BrokerService;
pub use groups::{GroupAdminService, GroupsService};
pub use info::InfoService;
pub use queues::QueuesService;

/// Records a request's duration in the latency histogram when dropped.
pub(crate) struct Timer {
    method: &'static str,
    start: std::time::Instant,
}

pub(crate) fn timed(method: &'static str) -> Timer {
    Timer {
        method,
        start: std::time::Instant::now(),
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        metrics::histogram!("sluice_request_duration_seconds", "method" => self.method)
            .record(self.start.elapsed().as_secs_f64());
    }
}
