//! `FetchBatches` with no copy of record bytes on the server.
//!
//! tonic encodes every reply into a buffer of its own, which would copy
//! the batches once. [`ZeroCopyBatches`] wraps the generated Broker
//! service and answers a `FetchBatches` call for a partition led here
//! itself: it decodes the request, reads through the same broker call as
//! the generated handler, and sends the reply as two HTTP/2 data chunks:
//! the message's few framing bytes and scalar fields, then the stored
//! batches as the log's mapped memory (h2 hands chunks of that size to
//! the socket by reference, a vectored write). Every other call, a
//! forwarded one and a compressed request go to the generated service.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::{BoxFuture, Either};
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::Status;

use super::cluster::ClusterLink;
use super::{pb, status, timed, BrokerService};
use crate::broker::{BatchRead, Broker};

/// The method this serves.
pub const PATH: &str = "/sluice.v1.Broker/FetchBatches";

/// Largest `FetchBatchesRequest` accepted (a topic name and four numbers).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The reply as a generated message (the copying path).
pub fn response(read: BatchRead) -> pb::FetchBatchesResponse {
    pb::FetchBatchesResponse {
        batches: read.data,
        next_offset: read.next_offset,
        log_start_offset: read.log_start_offset,
        high_watermark: read.high_watermark,
    }
}

/// The generated Broker service, with local `FetchBatches` calls answered
/// without a copy.
#[derive(Debug, Clone)]
pub struct ZeroCopyBatches<S> {
    inner: S,
    broker: Arc<Broker>,
    link: Option<ClusterLink>,
}

impl<S> ZeroCopyBatches<S> {
    /// Wraps `inner`, the generated Broker server.
    pub fn new(inner: S, broker: Arc<Broker>, link: Option<ClusterLink>) -> Self {
        Self {
            inner,
            broker,
            link,
        }
    }
}

impl<S: NamedService> NamedService for ZeroCopyBatches<S> {
    const NAME: &'static str = S::NAME;
}

type Reply = http::Response<Body>;

/// What the wrapped service must be: the generated Broker server.
pub trait Inner:
    tower_service::Service<
        http::Request<Body>,
        Response = Reply,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Inner for S where
    S: tower_service::Service<
            http::Request<Body>,
            Response = Reply,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

impl<S: Inner> tower_service::Service<http::Request<Body>> for ZeroCopyBatches<S> {
    type Response = Reply;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Reply, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != PATH {
            return Either::Left(self.inner.call(req));
        }
        let this = self.clone();
        Either::Right(Box::pin(async move { Ok(this.serve(req).await) }))
    }
}

/// A gRPC request message as it arrived.
enum Arrived {
    Plain(Bytes),
    Compressed,
}

/// The one message of a unary call: a flag byte, a big-endian length, the
/// bytes.
fn message(raw: &Bytes) -> Result<Arrived, Status> {
    let bad = || Status::invalid_argument("the request is not one gRPC message");
    let (&flag, rest) = raw.split_first().ok_or_else(bad)?;
    let len = rest.get(..4).ok_or_else(bad)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if raw.len() != 5 + len {
        return Err(bad());
    }
    match flag {
        0 => Ok(Arrived::Plain(raw.slice(5..))),
        1 => Ok(Arrived::Compressed),
        f => Err(Status::invalid_argument(format!(
            "the request's compression flag is {f}; it must be 0 or 1"
        ))),
    }
}

impl<S: Inner> ZeroCopyBatches<S> {
    async fn serve(mut self, req: http::Request<Body>) -> Reply {
        let (parts, body) = req.into_parts();
        let raw = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Status::resource_exhausted(format!(
                    "the request is over {MAX_REQUEST_BYTES} bytes, the most a FetchBatchesRequest may take"
                ))
                .into_http()
            }
            Err(e) => {
                return Status::invalid_argument(format!("the request could not be read: {e}"))
                    .into_http()
            }
        };
        let msg = match message(&raw) {
            Ok(Arrived::Plain(m)) => m,
            Ok(Arrived::Compressed) => return self.delegate(parts, raw).await,
            Err(s) => return s.into_http(),
        };
        let r = match pb::FetchBatchesRequest::decode(msg) {
            Ok(r) => r,
            Err(e) => {
                return Status::invalid_argument(format!(
                    "the request is not a valid FetchBatchesRequest: {e}"
                ))
                .into_http()
            }
        };
        if let Some(c) = parts.extensions.get::<super::auth::Caller>() {
            use crate::security::{Operation, ResourceType};
            if let Err(s) =
                super::auth::Require::require(c, Operation::Read, ResourceType::Topic, &r.topic)
            {
                return s.into_http();
            }
        }
        let request = tonic::Request::from_parts(
            MetadataMap::from_headers(parts.headers.clone()),
            Default::default(),
            (),
        );
        if let Some(link) = &self.link {
            match BrokerService::remote_leader(link, &request, &r.topic, r.partition).await {
                Err(s) => return s.into_http(),
                Ok(Some(_)) => return self.delegate(parts, raw).await,
                Ok(None) => {}
            }
        }
        let _t = timed("FetchBatches");
        let max_wait_ms = super::capped_wait(&request, r.max_wait_ms);
        match self
            .broker
            .fetch_batches(&r.topic, r.partition, r.offset, r.max_bytes, max_wait_ms)
            .await
        {
            Ok(read) => {
                let size = read.data.len();
                let mut response = reply(read);
                // Over the fetch quota: the reply waits out the throttle.
                if let Some(c) = parts.extensions.get::<super::auth::Caller>() {
                    let d = c.throttle(crate::security::quota::QuotaKind::Fetch, size as f64);
                    if !d.is_zero() {
                        tokio::time::sleep(d).await;
                        if let Ok(v) = d.as_millis().to_string().parse() {
                            response
                                .headers_mut()
                                .insert(super::auth::THROTTLE_HEADER, v);
                        }
                    }
                }
                response
            }
            Err(e) => status::status(&e).into_http(),
        }
    }

    /// Hands the call, as it arrived, to the generated service.
    async fn delegate(&mut self, parts: http::request::Parts, raw: Bytes) -> Reply {
        let req = http::Request::from_parts(parts, Body::new(Full::new(raw)));
        match self.inner.call(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

/// The reply: gRPC framing and the scalar fields in one small chunk, then
/// the batches by reference (protobuf fields may come in any order).
fn reply(read: BatchRead) -> Reply {
    let data = read.data;
    let scalars = [
        (2u8, read.next_offset),
        (3, read.log_start_offset),
        (4, read.high_watermark),
    ];
    let mut len = 0usize;
    for (_, v) in scalars {
        if v != 0 {
            len += 1 + encoded_len_varint(v as u64);
        }
    }
    if !data.is_empty() {
        len += 1 + encoded_len_varint(data.len() as u64) + data.len();
    }
    let mut head = BytesMut::with_capacity(5 + 3 * 11 + 11);
    head.put_u8(0);
    // At most 64 MiB of batches (the fetch limits), far below u32::MAX.
    head.put_u32(len as u32);
    for (field, v) in scalars {
        if v != 0 {
            head.put_u8(field << 3);
            encode_varint(v as u64, &mut head);
        }
    }
    if !data.is_empty() {
        head.put_u8(1 << 3 | 2);
        encode_varint(data.len() as u64, &mut head);
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![Ok(Frame::data(head.freeze()))];
    if !data.is_empty() {
        frames.push(Ok(Frame::data(data)));
    }
    frames.push(Ok(Frame::trailers(trailers)));
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let mut response = http::Response::new(Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written reply decodes as the generated message, and its
    /// batches chunk is the very memory that was read (no copy).
    #[tokio::test]
    async fn reply_is_the_generated_message_and_shares_the_batches() {
        let data = Bytes::from(vec![7u8; 300]);
        let read = BatchRead {
            data: data.clone(),
            high_watermark: 12,
            log_start_offset: 0,
            next_offset: 10,
        };
        let response = reply(read);
        let mut body = response.into_body();
        let mut chunks = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("frame");
            match frame.into_data() {
                Ok(d) => chunks.push(d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1].as_ptr(), data.as_ptr(), "the batches were copied");
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(all[0], 0);
        let len = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
        assert_eq!(len, all.len() - 5);
        let m = pb::FetchBatchesResponse::decode(&all[5..]).expect("decodes");
        assert_eq!(m.batches, data);
        assert_eq!(
            (m.next_offset, m.log_start_offset, m.high_watermark),
            (10, 0, 12)
        );
        let trailers = trailers.expect("trailers");
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
    }
}
