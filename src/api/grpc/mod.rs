//! gRPC transport (tonic): generated code for `proto/` and the services.
//! Each handler decodes, validates, calls the [`crate::broker::Broker`]
//! facade and encodes; [`status`] is the one map from errors to codes.

/// Code generated from `proto/sluice/v1/*.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("sluice.v1");
}

/// The server side of the Broker service, generated with the read
/// replies of [`reply`] in place of `FetchResponse` and
/// `SubscribeResponse`.
#[allow(clippy::all, missing_docs)]
pub mod pb_broker_server {
    include!(concat!(env!("OUT_DIR"), "/broker_server/sluice.v1.rs"));
}

/// Encoded `FileDescriptorSet` of the public API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sluice_descriptor.bin"));

/// Largest gRPC message either way (a fetch may return up to 64 MiB of
/// records, plus framing).
pub const MAX_MESSAGE_BYTES: usize = 96 * 1024 * 1024;

/// Largest request of the services other than `Broker` (admin calls,
/// heartbeats, commits, acknowledgements).
pub const SMALL_REQUEST_BYTES: usize = 1024 * 1024;

/// Largest block of request headers (gRPC metadata) a client may send.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// HTTP/2 flow-control window per stream: large enough that a produce
/// request or fetch reply of a few MiB needs no window updates on the way.
pub const HTTP2_STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// Largest HTTP/2 frame this side accepts (HTTP/2's default is 16 KiB).
/// The peer sends a fetch reply or produce request of a few hundred KiB
/// in one frame, so in one write, where 16 KiB frames take a system
/// call (and on loopback a wakeup) each: a fetch of 1,000 records of
/// 100 bytes went from 7 writes to 1. Larger frames would make a big
/// reply hold up the other calls on its connection for longer.
pub const HTTP2_MAX_FRAME: u32 = 256 * 1024;
/// HTTP/2 flow-control window per connection.
pub const HTTP2_CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

mod admin;
pub mod auth;
pub mod batches;
mod broker;
pub mod cluster;
pub mod codec;
pub mod conn;
pub mod convert;
mod groups;
mod info;
mod queues;
pub mod remote;
pub mod replication;
pub mod reply;
mod routing;
pub mod security;
pub mod status;

pub use admin::AdminService;
pub use broker::BrokerService;
pub use cluster::{ClusterLink, ClusterService};
pub use groups::{GroupAdminService, GroupsService};
pub use info::InfoService;
pub use queues::QueuesService;

/// How long a call may wait before answering, from its `grpc-timeout`
/// header (the client's deadline), less a margin for the reply to travel:
/// long polls answer (empty) before the deadline instead of failing with
/// DEADLINE_EXCEEDED.
pub(crate) fn wait_budget<T>(request: &tonic::Request<T>) -> Option<std::time::Duration> {
    let v = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        "M" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    };
    Some(
        d.saturating_sub(d / 10)
            .saturating_sub(std::time::Duration::from_millis(5)),
    )
}

/// `max_wait_ms` capped by the call's deadline.
pub(crate) fn capped_wait<T>(request: &tonic::Request<T>, max_wait_ms: i32) -> i32 {
    match wait_budget(request) {
        Some(b) => max_wait_ms.min(b.as_millis().min(i32::MAX as u128) as i32),
        None => max_wait_ms,
    }
}

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
