//! The gRPC codec: prost, plus a pass over the wire bytes of the requests
//! whose decoded form can be far larger than their encoding, before prost
//! allocates anything.
//!
//! An empty `ProduceRecord` is 2 bytes on the wire and about 110 bytes
//! decoded; an empty `Header` or `Ack` about 50. Counting the repeated
//! fields first (a scan of tags and lengths, no allocation) refuses a
//! request over [`MAX_RECORDS_PER_REQUEST`], [`MAX_HEADERS_PER_RECORD`],
//! [`MAX_HEADER_BYTES_PER_RECORD`] or [`MAX_ACKS_PER_REQUEST`] with
//! `INVALID_ARGUMENT` before it is decoded. Bytes that are not protobuf are
//! `INVALID_ARGUMENT` too (prost's own codec calls them `INTERNAL`).

use std::any::{Any, TypeId};
use std::marker::PhantomData;

use bytes::Buf;
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use super::pb;
use super::reply::{FetchReply, SubscribeReply};
pub use crate::broker::{
    MAX_HEADERS_PER_RECORD, MAX_HEADER_BYTES_PER_RECORD, MAX_RECORDS_PER_REQUEST,
};

/// Most acknowledgements in one `Pull`, `Acknowledge` or `Consume` message.
pub const MAX_ACKS_PER_REQUEST: usize = 10_000;

/// prost's codec with the request checks above; named in `build.rs`.
#[derive(Debug, Clone)]
pub struct LimitedCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for LimitedCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for LimitedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReplyEncoder<T>;
    type Decoder = LimitedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ReplyEncoder { _pd: PhantomData }
    }

    fn decoder(&mut self) -> Self::Decoder {
        LimitedDecoder { _pd: PhantomData }
    }
}

/// Encodes with prost into a buffer reserved once, at the size the
/// message reports (the read replies of [`super::reply`] give an upper
/// bound instead of walking their records twice).
#[derive(Debug, Clone)]
pub struct ReplyEncoder<T> {
    _pd: PhantomData<T>,
}

impl<T: Message + 'static> Encoder for ReplyEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let any = &item as &dyn Any;
        let size = if let Some(r) = any.downcast_ref::<FetchReply>() {
            r.size_hint()
        } else if let Some(r) = any.downcast_ref::<SubscribeReply>() {
            r.size_hint()
        } else {
            item.encoded_len()
        };
        buf.reserve(size);
        item.encode_raw(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Checks, then decodes with prost.
#[derive(Debug, Clone)]
pub struct LimitedDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default + 'static> Decoder for LimitedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // A DecodeBuf is one contiguous chunk of the whole message.
        check::<U>(buf.chunk())?;
        // Decoded from a `Bytes` (taking it from tonic's buffer is no
        // copy): each bytes field is then a cheap slice of it, where from
        // the `BytesMut` each was a split, a promotion to shared and an
        // advance (a sixth of a Fetch reply's decode in the client).
        let message = buf.copy_to_bytes(buf.remaining());
        U::decode(message).map(Some).map_err(|e| {
            Status::invalid_argument(format!(
                "the request is not a valid {}: {e}",
                short_name::<U>()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

fn short_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

/// The wire checks for message type `U` (nothing for most types).
fn check<U: 'static>(buf: &[u8]) -> Result<(), Status> {
    let t = TypeId::of::<U>();
    if t == TypeId::of::<pb::ProduceRequest>() {
        check_produce(buf)
    } else if t == TypeId::of::<pb::PullRequest>() {
        check_count(buf, 7, MAX_ACKS_PER_REQUEST, "acks")
    } else if t == TypeId::of::<pb::AcknowledgeRequest>() {
        check_count(buf, 3, MAX_ACKS_PER_REQUEST, "acks")
    } else if t == TypeId::of::<pb::ConsumeRequest>() {
        // ConsumeRequest.acks (2) is an AckBatch whose acks are field 1.
        for_each_field(buf, |field, value| {
            if let (2, Value::Len(batch)) = (field, value) {
                check_count(batch, 1, MAX_ACKS_PER_REQUEST, "acks")?;
            }
            Ok(())
        })
    } else {
        Ok(())
    }
}

fn check_produce(buf: &[u8]) -> Result<(), Status> {
    let mut records = 0usize;
    for_each_field(buf, |field, value| {
        let (4, Value::Len(record)) = (field, value) else {
            return Ok(());
        };
        if records == MAX_RECORDS_PER_REQUEST {
            return Err(Status::invalid_argument(format!(
                "a produce request holds at most {MAX_RECORDS_PER_REQUEST} records: split it"
            )));
        }
        let index = records;
        records += 1;
        let (mut headers, mut header_bytes) = (0usize, 0usize);
        for_each_field(record, |field, value| {
            let (3, Value::Len(h)) = (field, value) else {
                return Ok(());
            };
            headers += 1;
            header_bytes += h.len();
            if headers > MAX_HEADERS_PER_RECORD {
                return Err(Status::invalid_argument(format!(
                    "record {index} has more than {MAX_HEADERS_PER_RECORD} headers"
                )));
            }
            if header_bytes > MAX_HEADER_BYTES_PER_RECORD {
                return Err(Status::invalid_argument(format!(
                    "the headers of record {index} take more than {MAX_HEADER_BYTES_PER_RECORD} bytes"
                )));
            }
            Ok(())
        })
    })
}

/// Refuses more than `max` occurrences of length-delimited field `field`.
fn check_count(buf: &[u8], field: u32, max: usize, what: &str) -> Result<(), Status> {
    let mut n = 0usize;
    for_each_field(buf, |f, value| {
        if f == field && matches!(value, Value::Len(_)) {
            n += 1;
            if n > max {
                return Err(Status::invalid_argument(format!(
                    "a request holds at most {max} {what}"
                )));
            }
        }
        Ok(())
    })
}

enum Value<'a> {
    Scalar,
    Len(&'a [u8]),
}

/// Walks the top-level fields of an encoded message. Malformed bytes end
/// the walk without an error: prost's decode then names the fault.
fn for_each_field<'a>(
    mut buf: &'a [u8],
    mut f: impl FnMut(u32, Value<'a>) -> Result<(), Status>,
) -> Result<(), Status> {
    while !buf.is_empty() {
        let Some(key) = varint(&mut buf) else {
            return Ok(());
        };
        let field = (key >> 3) as u32;
        let value = match key & 7 {
            0 => match varint(&mut buf) {
                Some(_) => Value::Scalar,
                None => return Ok(()),
            },
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                if buf.len() < n {
                    return Ok(());
                }
                buf = &buf[n..];
                Value::Scalar
            }
            2 => {
                let Some(len) = varint(&mut buf) else {
                    return Ok(());
                };
                let Ok(len) = usize::try_from(len) else {
                    return Ok(());
                };
                if buf.len() < len {
                    return Ok(());
                }
                let (v, rest) = buf.split_at(len);
                buf = rest;
                Value::Len(v)
            }
            // Groups (3, 4) and unknown wire types: prost refuses them.
            _ => return Ok(()),
        };
        f(field, value)?;
    }
    Ok(())
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce(records: usize, headers: usize, header_value: usize) -> Vec<u8> {
        pb::ProduceRequest {
            topic: "t".into(),
            records: (0..records)
                .map(|_| pb::ProduceRecord {
                    headers: (0..headers)
                        .map(|_| pb::Header {
                            key: "k".into(),
                            value: Some(vec![0u8; header_value].into()),
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn counts_records_headers_and_header_bytes() {
        assert!(check::<pb::ProduceRequest>(&produce(MAX_RECORDS_PER_REQUEST, 0, 0)).is_ok());
        let e =
            check::<pb::ProduceRequest>(&produce(MAX_RECORDS_PER_REQUEST + 1, 0, 0)).unwrap_err();
        assert!(e.message().contains("at most"), "{e:?}");
        assert!(check::<pb::ProduceRequest>(&produce(1, MAX_HEADERS_PER_RECORD, 0)).is_ok());
        assert!(check::<pb::ProduceRequest>(&produce(1, MAX_HEADERS_PER_RECORD + 1, 0)).is_err());
        assert!(
            check::<pb::ProduceRequest>(&produce(1, 1, MAX_HEADER_BYTES_PER_RECORD + 1)).is_err()
        );
        // Other types are not inspected.
        assert!(check::<pb::FetchRequest>(&produce(MAX_RECORDS_PER_REQUEST + 1, 0, 0)).is_ok());
    }

    #[test]
    fn counts_acks_nested_in_a_consume_request() {
        let acks = |n: usize| pb::ConsumeRequest {
            request: Some(pb::consume_request::Request::Acks(pb::AckBatch {
                acks: (0..n).map(|_| pb::Ack::default()).collect(),
            })),
        };
        assert!(check::<pb::ConsumeRequest>(&acks(MAX_ACKS_PER_REQUEST).encode_to_vec()).is_ok());
        assert!(
            check::<pb::ConsumeRequest>(&acks(MAX_ACKS_PER_REQUEST + 1).encode_to_vec()).is_err()
        );
    }

    #[test]
    fn malformed_bytes_are_left_to_prost() {
        for garbage in [&[0xffu8; 11][..], &[0x22, 0x7f], &[0x0b], &[]] {
            assert!(check::<pb::ProduceRequest>(garbage).is_ok());
        }
    }
}
