//! The Broker service's read replies, encoded straight from the stored
//! batches into the reply buffer.
//!
//! `FetchResponse` and `SubscribeResponse` carry one `ConsumedRecord`
//! message per record. Building those as prost structs first costs an
//! allocation per record (and per header), a reference count per key and
//! value, a pass to compute lengths and a pass to encode. [`FetchReply`]
//! and [`SubscribeReply`] stand in for the generated types on the server
//! side (`build.rs` maps them in): they hold the read as
//! [`StoredRecords`] and write the protobuf encoding of each record as
//! they walk the batches, which is the one copy of record bytes the
//! per-record form needs. A reply forwarded from another broker arrives
//! decoded and is encoded as it is.
//!
//! Clients decode these bytes with the generated types: the encoding is
//! field for field what prost would produce (tests below compare them).

use std::borrow::Cow;

use bytes::{Buf, BufMut};
use prost::encoding::{encode_varint, encoded_len_varint, skip_field, DecodeContext, WireType};
use prost::{DecodeError, Message};

use super::pb;
use crate::broker::StoredRecords;
use crate::storage::RecordView;

/// A `FetchResponse`.
#[derive(Debug, Clone)]
pub enum FetchReply {
    /// Read here.
    Stored(StoredRecords),
    /// Read by the partition's leader and forwarded.
    Forwarded(pb::FetchResponse),
}

impl Default for FetchReply {
    fn default() -> Self {
        Self::Forwarded(pb::FetchResponse::default())
    }
}

/// A `SubscribeResponse`.
#[derive(Debug, Clone)]
pub enum SubscribeReply {
    /// Read here.
    Stored(StoredRecords),
    /// Read by the partition's leader and forwarded.
    Forwarded(pb::SubscribeResponse),
}

impl Default for SubscribeReply {
    fn default() -> Self {
        Self::Forwarded(pb::SubscribeResponse::default())
    }
}

/// Bytes to reserve before encoding: an upper bound for stored records
/// (a record's protobuf framing is at most 24 bytes more than its stored
/// framing, and batch headers are not sent), so the buffer is sized once.
pub(crate) fn size_hint(s: &StoredRecords) -> usize {
    s.stored_bytes() + 24 * s.len() + 3 * 11
}

/// Field numbers and wire types of the messages written here.
const RECORDS: u8 = 1 << 3 | 2; // records = 1, length-delimited
const fn varint_tag(field: u8) -> u8 {
    field << 3
}
const fn bytes_tag(field: u8) -> u8 {
    field << 3 | 2
}

/// A header key as a protobuf string: stored keys came from gRPC (UTF-8)
/// or Kafka clients (UTF-8 by contract); anything else is replaced
/// lossily, as the decoded path does.
fn header_key(key: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(key)
}

fn int64_len(field_value: i64) -> usize {
    if field_value == 0 {
        0
    } else {
        1 + encoded_len_varint(field_value as u64)
    }
}

fn bytes_len(v: usize) -> usize {
    1 + encoded_len_varint(v as u64) + v
}

fn header_len(key: &str, value: Option<&[u8]>) -> usize {
    let k = if key.is_empty() {
        0
    } else {
        bytes_len(key.len())
    };
    k + value.map_or(0, |v| bytes_len(v.len()))
}

/// Length of a `ConsumedRecord` message's body.
fn record_len(rec: &RecordView<'_>) -> usize {
    let mut n = int64_len(rec.offset) + int64_len(rec.timestamp);
    n += rec.key.map_or(0, |k| bytes_len(k.len()));
    n += rec.value.map_or(0, |v| bytes_len(v.len()));
    for h in rec.headers() {
        n += bytes_len(header_len(&header_key(h.key), h.value));
    }
    n
}

fn put_int64(buf: &mut impl BufMut, field: u8, v: i64) {
    if v != 0 {
        buf.put_u8(varint_tag(field));
        encode_varint(v as u64, buf);
    }
}

fn put_bytes(buf: &mut impl BufMut, field: u8, v: &[u8]) {
    buf.put_u8(bytes_tag(field));
    encode_varint(v.len() as u64, buf);
    buf.put_slice(v);
}

/// Framing bytes gathered on the stack, so that a record costs a few
/// `put_slice` calls on the reply buffer rather than one call per byte.
struct Head {
    buf: [u8; 64],
    len: usize,
}

impl Head {
    fn new() -> Self {
        Self {
            buf: [0; 64],
            len: 0,
        }
    }

    fn byte(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    fn int64(&mut self, field: u8, v: i64) {
        if v != 0 {
            self.byte(varint_tag(field));
            self.varint(v as u64);
        }
    }

    /// Tag and length of a bytes field whose bytes follow.
    fn bytes_prefix(&mut self, field: u8, len: usize) {
        self.byte(bytes_tag(field));
        self.varint(len as u64);
    }

    fn flush(&mut self, buf: &mut impl BufMut) {
        buf.put_slice(&self.buf[..self.len]);
        self.len = 0;
    }
}

/// Writes a `ConsumedRecord` (as field `records` of its parent). The
/// framing before the key (at most 1 + 3 + 2 × 11 + 11 bytes) and before
/// the value (at most 11) fits a [`Head`].
fn put_record(buf: &mut impl BufMut, rec: &RecordView<'_>) {
    let mut head = Head::new();
    head.byte(RECORDS);
    head.varint(record_len(rec) as u64);
    head.int64(1, rec.offset);
    head.int64(2, rec.timestamp);
    if let Some(k) = rec.key {
        head.bytes_prefix(3, k.len());
        head.flush(buf);
        buf.put_slice(k);
    }
    if let Some(v) = rec.value {
        head.bytes_prefix(4, v.len());
        head.flush(buf);
        buf.put_slice(v);
    }
    head.flush(buf);
    for h in rec.headers() {
        let key = header_key(h.key);
        buf.put_u8(bytes_tag(5));
        encode_varint(header_len(&key, h.value) as u64, buf);
        if !key.is_empty() {
            put_bytes(buf, 1, key.as_bytes());
        }
        if let Some(v) = h.value {
            put_bytes(buf, 2, v);
        }
    }
}

/// Encodes stored records, then the message's scalar fields (field number
/// and value; zeros are left out, as prost does).
fn put_stored(buf: &mut impl BufMut, s: &StoredRecords, scalars: &[(u8, i64)]) {
    for rec in s.iter() {
        put_record(buf, &rec);
    }
    for &(field, v) in scalars {
        put_int64(buf, field, v);
    }
}

fn stored_len(s: &StoredRecords, scalars: &[(u8, i64)]) -> usize {
    let records: usize = s.iter().map(|r| bytes_len(record_len(&r))).sum();
    records + scalars.iter().map(|&(_, v)| int64_len(v)).sum::<usize>()
}

/// The two replies: stored records and their scalar fields, or a forwarded
/// message.
macro_rules! stored_reply {
    ($reply:ident, $forwarded:ty, |$s:ident| $scalars:expr) => {
        impl $reply {
            fn parts(&self) -> Result<(&StoredRecords, Vec<(u8, i64)>), &$forwarded> {
                match self {
                    Self::Stored($s) => Ok(($s, $scalars.to_vec())),
                    Self::Forwarded(m) => Err(m),
                }
            }

            /// Bytes to reserve before encoding.
            pub(crate) fn size_hint(&self) -> usize {
                match self.parts() {
                    Ok((s, _)) => size_hint(s),
                    Err(m) => m.encoded_len(),
                }
            }
        }

        impl Message for $reply {
            fn encode_raw(&self, buf: &mut impl BufMut) {
                match self.parts() {
                    Ok((s, scalars)) => put_stored(buf, s, &scalars),
                    Err(m) => m.encode_raw(buf),
                }
            }

            fn encoded_len(&self) -> usize {
                match self.parts() {
                    Ok((s, scalars)) => stored_len(s, &scalars),
                    Err(m) => m.encoded_len(),
                }
            }

            /// Replies are only encoded here (clients use the generated
            /// type).
            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: WireType,
                buf: &mut impl Buf,
                ctx: DecodeContext,
            ) -> Result<(), DecodeError> {
                skip_field(wire_type, tag, buf, ctx)
            }

            fn clear(&mut self) {
                *self = Self::default();
            }
        }
    };
}

stored_reply!(FetchReply, pb::FetchResponse, |s| [
    (2, s.next_offset),
    (3, s.log_start_offset),
    (4, s.high_watermark),
]);
stored_reply!(SubscribeReply, pb::SubscribeResponse, |s| [
    (2, s.next_offset),
    (3, s.high_watermark),
]);

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::api::grpc::convert;
    use crate::storage::batch::stamp_header;
    use crate::storage::{BatchBuilder, HeaderRef};

    type Rec = (
        i64,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(Vec<u8>, Option<Vec<u8>>)>,
    );

    /// Batches of `per_batch` records each, numbered from offset 0.
    fn batches(records: &[Rec], per_batch: usize) -> Bytes {
        let mut out = Vec::new();
        let mut base = 0i64;
        for chunk in records.chunks(per_batch.max(1)) {
            let mut b = BatchBuilder::default();
            for (ts, key, value, headers) in chunk {
                let headers: Vec<HeaderRef<'_>> = headers
                    .iter()
                    .map(|(k, v)| HeaderRef {
                        key: k,
                        value: v.as_deref(),
                    })
                    .collect();
                b.push(*ts, key.as_deref(), value.as_deref(), &headers)
                    .expect("push");
            }
            let mut bytes = b.build().expect("batch").into_bytes();
            stamp_header(&mut bytes, base, 0);
            base += chunk.len() as i64;
            out.extend_from_slice(&bytes);
        }
        Bytes::from(out)
    }

    fn both(s: &StoredRecords) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let ours = FetchReply::Stored(s.clone()).encode_to_vec();
        let prost = convert::fetch_response(s.clone().into_result()).encode_to_vec();
        let ours_sub = SubscribeReply::Stored(s.clone()).encode_to_vec();
        let prost_sub = convert::subscribe_response(s.clone().into_result()).encode_to_vec();
        (ours, prost, ours_sub, prost_sub)
    }

    fn record() -> impl Strategy<Value = Rec> {
        let bytes = || proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300));
        let header = (
            prop_oneof![
                Just(Vec::new()),
                "[a-z]{1,8}".prop_map(String::into_bytes),
                // Not UTF-8: replaced lossily, as the decoded path does.
                Just(vec![0xff, 0xfe, b'x']),
            ],
            bytes(),
        );
        (
            prop_oneof![Just(0i64), Just(-5i64), 0i64..2_000_000_000_000],
            bytes(),
            bytes(),
            proptest::collection::vec(header, 0..3),
        )
    }

    proptest! {
        /// The hand-written encoding is byte for byte prost's, for any
        /// records, start offset, record limit and end.
        #[test]
        fn encodes_exactly_as_prost_would(
            records in proptest::collection::vec(record(), 0..40),
            per_batch in 1usize..8,
            from in 0i64..45,
            max in 1usize..50,
            end in 0i64..45,
        ) {
            let data = batches(&records, per_batch);
            let mut s = StoredRecords::select(data, from, max, end).expect("select");
            s.log_start_offset = 3;
            let expected = records.len().min(end.max(0) as usize).saturating_sub(from as usize).min(max);
            prop_assert_eq!(s.len(), expected);
            prop_assert_eq!(s.iter().count(), expected);
            let (ours, prost, ours_sub, prost_sub) = both(&s);
            prop_assert_eq!(&ours, &prost);
            prop_assert_eq!(&ours_sub, &prost_sub);
            prop_assert_eq!(FetchReply::Stored(s.clone()).encoded_len(), ours.len());
            prop_assert!(size_hint(&s) >= ours.len());
        }
    }

    #[test]
    fn clients_decode_the_reply_with_the_generated_type() {
        let records: Vec<Rec> = vec![
            (10, Some(b"k".to_vec()), Some(b"v".to_vec()), vec![]),
            (
                11,
                None,
                None,
                vec![(b"h".to_vec(), None), (Vec::new(), Some(b"x".to_vec()))],
            ),
        ];
        let s = StoredRecords::select(batches(&records, 1), 0, 10, 2).expect("select");
        let bytes = FetchReply::Stored(s).encode_to_vec();
        let m = pb::FetchResponse::decode(&bytes[..]).expect("decodes");
        assert_eq!(m.records.len(), 2);
        assert_eq!(m.records[0].offset, 0);
        assert_eq!(m.records[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(m.records[1].key, None);
        assert_eq!(m.records[1].headers[0].key, "h");
        assert_eq!(m.records[1].headers[0].value, None);
        assert_eq!(m.next_offset, 2);
        assert_eq!(m.high_watermark, 2);
    }
}
