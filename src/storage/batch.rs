//! The record batch: Sluice's unit of storage and transfer.
//!
//! The layout mirrors Kafka's RecordBatch v2 so that idempotent producers,
//! replication and a Kafka-protocol listener can use it unchanged. All
//! integers are big-endian.
//!
//! ```text
//! offset  size  field
//!      0     8  base offset            (assigned by the log)
//!      8     4  batch length           (bytes after this field)
//!     12     4  partition leader epoch (assigned by the log)
//!     16     1  magic                  (format version, = MAGIC)
//!     17     4  crc                    (CRC-32C of bytes 21..end)
//!     21     2  attributes             (bits 0-2 compression, 4 transactional, 5 control)
//!     23     4  last offset delta
//!     27     8  first timestamp        (ms since the epoch)
//!     35     8  max timestamp
//!     43     8  producer id            (-1: none)
//!     51     2  producer epoch
//!     53     4  base sequence
//!     57     4  record count
//!     61        records
//! ```
//!
//! Each record: varint length, then attributes (i8), varlong timestamp delta,
//! varint offset delta, varint key length (-1: null) and key, varint value
//! length (-1: null) and value, varint header count, and per header a varint
//! key length and key, varint value length (-1: null) and value.
//!
//! The checksum covers everything after itself, so the log can stamp base
//! offset and leader epoch into a batch without recomputing it. It is
//! CRC-32C (Castagnoli), as Kafka's, so stored batches are byte for byte
//! what a Kafka client reads and writes: the Kafka listener serves them
//! from the mapped segment as they are. (Sluice's other files, indexes,
//! checkpoints and snapshots, keep crc32fast's CRC-32.)

use super::varint::{get_varint, get_varlong, put_varint, put_varlong, varint_len, varlong_len};

/// Format version written in the magic byte.
pub const MAGIC: u8 = 2;
/// Bytes of a batch header, up to the first record.
pub const HEADER_LEN: usize = 61;
/// Bytes before the batch-length field's coverage starts (offset + length).
pub const LOG_OVERHEAD: usize = 12;
/// First byte covered by the checksum.
pub const CRC_START: usize = 21;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const LEADER_EPOCH: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const FIRST_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORD_COUNT: usize = 57;

/// Attribute bits that select a compression codec.
pub const COMPRESSION_MASK: u16 = 0x07;
/// Attribute bit: the batch belongs to a transaction (reserved).
pub const TRANSACTIONAL_FLAG: u16 = 0x10;
/// Attribute bit: the batch is a control batch (reserved).
pub const CONTROL_FLAG: u16 = 0x20;

/// No producer id: the batch was not written by an idempotent producer.
pub const NO_PRODUCER_ID: i64 = -1;

/// Why a batch's bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than a header.
    #[error("batch of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort {
        /// Bytes available.
        len: usize,
    },
    /// The length field disagrees with the bytes given.
    #[error("batch length field says {declared} bytes follow, but {actual} do")]
    LengthMismatch {
        /// Bytes the header declares after the length field.
        declared: i64,
        /// Bytes actually present after the length field.
        actual: usize,
    },
    /// Unknown format version.
    #[error("unsupported batch format (magic byte {0}, expected {MAGIC})")]
    BadMagic(u8),
    /// Checksum mismatch: the bytes were damaged.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the bytes.
        computed: u32,
    },
    /// Compressed batches are not supported yet.
    #[error("compression codec {0} is not supported (only 0, none)")]
    UnsupportedCompression(u16),
    /// A batch must hold at least one record.
    #[error("batch holds no records")]
    Empty,
    /// The header's record count or last offset delta disagree with the records.
    #[error("header declares {declared} records (last offset delta {last_offset_delta}), but the batch holds {actual}")]
    CountMismatch {
        /// Record count in the header.
        declared: i32,
        /// Last offset delta in the header.
        last_offset_delta: i32,
        /// Records found.
        actual: i32,
    },
    /// The header's max timestamp is not the records' maximum.
    #[error("header max timestamp {declared} differs from the records' maximum {actual}")]
    MaxTimestampMismatch {
        /// Max timestamp in the header.
        declared: i64,
        /// Maximum over the records.
        actual: i64,
    },
    /// A record would take the batch past the format's limits.
    #[error("batch would exceed 2 GiB or i32::MAX records (it holds {records} records)")]
    TooLarge {
        /// Records already in the batch.
        records: i32,
    },
    /// A record could not be decoded.
    #[error("record {index}: {reason}")]
    MalformedRecord {
        /// Position of the record in the batch.
        index: i32,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A batch's checksum of `bytes` (the bytes from [`CRC_START`] on):
/// CRC-32C, hardware-accelerated where the CPU has it.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads the batch length field of a header at the start of `buf`, as the
/// total size of the batch in bytes. `None` if `buf` is too short to hold it.
pub fn framed_len(buf: &[u8]) -> Option<i64> {
    if buf.len() < LOG_OVERHEAD {
        return None;
    }
    Some(i64::from(be_i32(buf, BATCH_LENGTH)) + LOG_OVERHEAD as i64)
}

/// A borrowed, header-checked batch. Its header fields can be read without
/// further checks; [`BatchView::verify_crc`] and [`BatchView::records`] check
/// the rest.
#[derive(Clone, Copy)]
pub struct BatchView<'a> {
    buf: &'a [u8],
}

impl std::fmt::Debug for BatchView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchView")
            .field("base_offset", &self.base_offset())
            .field("len", &self.buf.len())
            .field("records", &self.record_count())
            .finish()
    }
}

impl<'a> BatchView<'a> {
    /// Reads the batch at the start of `buf`: checks that a header and the
    /// declared length fit and that the magic byte is known. The view covers
    /// exactly the batch; bytes after it are ignored.
    pub fn parse(buf: &'a [u8]) -> Result<Self, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::TooShort { len: buf.len() });
        }
        let total = framed_len(buf).unwrap_or(0);
        if total < HEADER_LEN as i64 || total > buf.len() as i64 {
            return Err(BatchError::LengthMismatch {
                declared: total - LOG_OVERHEAD as i64,
                actual: buf.len() - LOG_OVERHEAD,
            });
        }
        let view = BatchView {
            buf: &buf[..total as usize],
        };
        if view.magic() != MAGIC {
            return Err(BatchError::BadMagic(view.magic()));
        }
        Ok(view)
    }

    /// The batch's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
    /// Total size in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Never true: a view holds at least a header.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Offset of the first record.
    pub fn base_offset(&self) -> i64 {
        be_i64(self.buf, BASE_OFFSET)
    }
    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset() + i64::from(self.last_offset_delta())
    }
    /// Offset after the last record.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
    /// Leader epoch of the broker that appended the batch.
    pub fn leader_epoch(&self) -> i32 {
        be_i32(self.buf, LEADER_EPOCH)
    }
    /// Format version.
    pub fn magic(&self) -> u8 {
        self.buf[MAGIC_AT]
    }
    /// Stored checksum.
    pub fn crc(&self) -> u32 {
        be_i32(self.buf, CRC_AT) as u32
    }
    /// Attribute bits.
    pub fn attributes(&self) -> u16 {
        be_i16(self.buf, ATTRIBUTES) as u16
    }
    /// Last record's offset minus the base offset.
    pub fn last_offset_delta(&self) -> i32 {
        be_i32(self.buf, LAST_OFFSET_DELTA)
    }
    /// Timestamp that record timestamp deltas are relative to.
    pub fn first_timestamp(&self) -> i64 {
        be_i64(self.buf, FIRST_TIMESTAMP)
    }
    /// Largest record timestamp.
    pub fn max_timestamp(&self) -> i64 {
        be_i64(self.buf, MAX_TIMESTAMP)
    }
    /// Idempotent producer id, or [`NO_PRODUCER_ID`].
    pub fn producer_id(&self) -> i64 {
        be_i64(self.buf, PRODUCER_ID)
    }
    /// Idempotent producer epoch.
    pub fn producer_epoch(&self) -> i16 {
        be_i16(self.buf, PRODUCER_EPOCH)
    }
    /// Sequence number of the first record, for idempotent producers.
    pub fn base_sequence(&self) -> i32 {
        be_i32(self.buf, BASE_SEQUENCE)
    }
    /// Number of records.
    pub fn record_count(&self) -> i32 {
        be_i32(self.buf, RECORD_COUNT)
    }
    /// Checksum of the bytes the stored checksum covers.
    pub fn computed_crc(&self) -> u32 {
        checksum(&self.buf[CRC_START..])
    }
    /// Checks the stored checksum against the bytes.
    pub fn verify_crc(&self) -> Result<(), BatchError> {
        let (stored, computed) = (self.crc(), self.computed_crc());
        if stored != computed {
            return Err(BatchError::CrcMismatch { stored, computed });
        }
        Ok(())
    }
    /// The records, decoded lazily; each item borrows from the batch.
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter {
            buf: self.buf,
            pos: HEADER_LEN,
            index: 0,
            count: self.record_count().max(0),
            base_offset: self.base_offset(),
            first_timestamp: self.first_timestamp(),
        }
    }

    /// Full check of a batch from outside: checksum, attributes, counts,
    /// timestamps and every record's structure.
    pub fn validate(&self) -> Result<(), BatchError> {
        self.verify_crc()?;
        let codec = self.attributes() & COMPRESSION_MASK;
        if codec != 0 {
            return Err(BatchError::UnsupportedCompression(codec));
        }
        let declared = self.record_count();
        if declared <= 0 {
            return Err(BatchError::Empty);
        }
        let mut actual = 0i32;
        let mut max_ts = i64::MIN;
        let mut end = HEADER_LEN;
        for r in self.records() {
            let r = r?;
            if r.offset != self.base_offset() + i64::from(actual) {
                return Err(BatchError::MalformedRecord {
                    index: actual,
                    reason: "offset delta is not the record's position in the batch",
                });
            }
            max_ts = max_ts.max(r.timestamp);
            end = r.end;
            actual += 1;
        }
        if actual != declared || self.last_offset_delta() != declared - 1 {
            return Err(BatchError::CountMismatch {
                declared,
                last_offset_delta: self.last_offset_delta(),
                actual,
            });
        }
        if end != self.buf.len() {
            return Err(BatchError::MalformedRecord {
                index: actual,
                reason: "bytes left over after the last record",
            });
        }
        if max_ts != self.max_timestamp() {
            return Err(BatchError::MaxTimestampMismatch {
                declared: self.max_timestamp(),
                actual: max_ts,
            });
        }
        Ok(())
    }
}

/// One header of a record: a byte-string key and an optional value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRef<'a> {
    /// Header key.
    pub key: &'a [u8],
    /// Header value, `None` for null.
    pub value: Option<&'a [u8]>,
}

/// A decoded record borrowing its bytes from a batch.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    /// Absolute offset.
    pub offset: i64,
    /// Absolute timestamp, ms since the epoch.
    pub timestamp: i64,
    /// Key, `None` for null.
    pub key: Option<&'a [u8]>,
    /// Value, `None` for null.
    pub value: Option<&'a [u8]>,
    headers: &'a [u8],
    header_count: i32,
    end: usize,
}

impl<'a> RecordView<'a> {
    /// The record's headers.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            buf: self.headers,
            pos: 0,
            left: self.header_count,
        }
    }
    /// Number of headers.
    pub fn header_count(&self) -> usize {
        self.header_count as usize
    }
}

/// Iterator over a record's headers. Headers were checked when the record
/// was decoded, so this yields no errors.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    buf: &'a [u8],
    pos: usize,
    left: i32,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = HeaderRef<'a>;
    fn next(&mut self) -> Option<HeaderRef<'a>> {
        if self.left <= 0 {
            return None;
        }
        self.left -= 1;
        let key = read_bytes(self.buf, &mut self.pos)?.unwrap_or(&[]);
        let value = read_bytes(self.buf, &mut self.pos)?;
        Some(HeaderRef { key, value })
    }
}

/// Reads a varint length and that many bytes; `Some(None)` for length -1.
fn read_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> Option<Option<&'a [u8]>> {
    let len = get_varint(buf, pos)?;
    if len == -1 {
        return Some(None);
    }
    let len = usize::try_from(len).ok()?;
    let end = pos.checked_add(len)?;
    let bytes = buf.get(*pos..end)?;
    *pos = end;
    Some(Some(bytes))
}

/// Iterator over a batch's records.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    buf: &'a [u8],
    pos: usize,
    index: i32,
    count: i32,
    base_offset: i64,
    first_timestamp: i64,
}

impl<'a> RecordIter<'a> {
    fn decode(&mut self) -> Result<RecordView<'a>, BatchError> {
        let index = self.index;
        let bad = |reason| BatchError::MalformedRecord { index, reason };
        let mut pos = self.pos;
        let len = get_varint(self.buf, &mut pos).ok_or(bad("bad length varint"))?;
        let len = usize::try_from(len).map_err(|_| bad("negative length"))?;
        let end = pos.checked_add(len).ok_or(bad("length overflows"))?;
        let rec = self
            .buf
            .get(..end)
            .ok_or(bad("record runs past the batch end"))?;
        // Attributes byte (unused, reserved).
        rec.get(pos).ok_or(bad("missing attributes"))?;
        pos += 1;
        let ts_delta = get_varlong(rec, &mut pos).ok_or(bad("bad timestamp delta"))?;
        let off_delta = get_varint(rec, &mut pos).ok_or(bad("bad offset delta"))?;
        let key = read_bytes(rec, &mut pos).ok_or(bad("bad key"))?;
        let value = read_bytes(rec, &mut pos).ok_or(bad("bad value"))?;
        let header_count = get_varint(rec, &mut pos).ok_or(bad("bad header count"))?;
        if header_count < 0 {
            return Err(bad("negative header count"));
        }
        let headers_start = pos;
        for _ in 0..header_count {
            match read_bytes(rec, &mut pos) {
                Some(Some(_)) => {}
                _ => return Err(bad("bad header key")),
            }
            read_bytes(rec, &mut pos).ok_or(bad("bad header value"))?;
        }
        if pos != end {
            return Err(bad("record length disagrees with its fields"));
        }
        self.pos = end;
        Ok(RecordView {
            offset: self.base_offset + i64::from(off_delta),
            timestamp: self.first_timestamp.wrapping_add(ts_delta),
            key,
            value,
            headers: &rec[headers_start..end],
            header_count,
            end,
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, BatchError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count || self.pos >= self.buf.len() {
            return None;
        }
        let item = self.decode();
        match item {
            Ok(_) => self.index += 1,
            Err(_) => self.index = self.count, // stop after the first error
        }
        Some(item)
    }
}

/// Iterator over consecutive whole batches in a byte slice (a read result,
/// or a segment's data).
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> BatchIter<'a> {
    /// Iterates the batches in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    /// Byte position of the next batch.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<BatchView<'a>, BatchError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        match BatchView::parse(&self.buf[self.pos..]) {
            Ok(b) => {
                self.pos += b.len();
                Some(Ok(b))
            }
            Err(e) => {
                self.pos = self.buf.len();
                Some(Err(e))
            }
        }
    }
}

/// A complete batch that has passed validation (or was built here), ready to
/// append. Base offset and leader epoch are assigned by the log.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordBatch {
    buf: Vec<u8>,
}

impl std::fmt::Debug for RecordBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.view().fmt(f)
    }
}

impl RecordBatch {
    /// Validates bytes from outside (a client or a replica) as one batch.
    pub fn from_bytes(buf: Vec<u8>) -> Result<Self, BatchError> {
        let view = BatchView::parse(&buf)?;
        if view.len() != buf.len() {
            return Err(BatchError::LengthMismatch {
                declared: view.len() as i64 - LOG_OVERHEAD as i64,
                actual: buf.len() - LOG_OVERHEAD,
            });
        }
        view.validate()?;
        Ok(Self { buf })
    }
    /// A header view of this batch.
    pub fn view(&self) -> BatchView<'_> {
        BatchView { buf: &self.buf }
    }
    /// The batch's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Never true: a batch holds at least one record.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Number of records.
    pub fn record_count(&self) -> i32 {
        self.view().record_count()
    }
    /// Largest record timestamp.
    pub fn max_timestamp(&self) -> i64 {
        self.view().max_timestamp()
    }
    /// The bytes, consumed.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Idempotent-producer fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerFields {
    /// Producer id, or [`NO_PRODUCER_ID`].
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Sequence number of the first record.
    pub base_sequence: i32,
}

impl Default for ProducerFields {
    fn default() -> Self {
        Self {
            producer_id: NO_PRODUCER_ID,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }
}

/// Builds a [`RecordBatch`] record by record, encoding straight into the
/// batch's buffer.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: i32,
    first_timestamp: i64,
    max_timestamp: i64,
    producer: ProducerFields,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::with_capacity(4096)
    }
}

impl BatchBuilder {
    /// A builder whose buffer starts with room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes.max(HEADER_LEN));
        buf.resize(HEADER_LEN, 0);
        Self {
            buf,
            count: 0,
            first_timestamp: 0,
            max_timestamp: i64::MIN,
            producer: ProducerFields::default(),
        }
    }

    /// Sets the idempotent-producer fields.
    pub fn producer(mut self, producer: ProducerFields) -> Self {
        self.producer = producer;
        self
    }

    /// Number of records so far.
    pub fn record_count(&self) -> i32 {
        self.count
    }

    /// Bytes the batch would take if built now.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Bytes that [`BatchBuilder::push`] would add for this record.
    pub fn record_size(
        &self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[HeaderRef<'_>],
    ) -> usize {
        let body = self.body_len(timestamp, key, value, headers);
        varint_len(body as i32) + body
    }

    fn body_len(
        &self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[HeaderRef<'_>],
    ) -> usize {
        let ts_delta = if self.count == 0 {
            0
        } else {
            timestamp.wrapping_sub(self.first_timestamp)
        };
        let bytes_len = |b: Option<&[u8]>| match b {
            None => 1,
            Some(b) => varint_len(b.len() as i32) + b.len(),
        };
        let mut len =
            1 + varlong_len(ts_delta) + varint_len(self.count) + bytes_len(key) + bytes_len(value);
        len += varint_len(headers.len() as i32);
        for h in headers {
            len += bytes_len(Some(h.key)) + bytes_len(h.value);
        }
        len
    }

    /// Appends a record with timestamp `timestamp` (ms since the epoch).
    /// Fails, leaving the builder as it was, if the batch would reach 2 GiB
    /// or `i32::MAX` records (the format's limits).
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[HeaderRef<'_>],
    ) -> Result<(), BatchError> {
        let body = self.body_len(timestamp, key, value, headers);
        let fits = body
            .checked_add(self.buf.len() + 5)
            .is_some_and(|total| total <= i32::MAX as usize);
        if !fits || self.count == i32::MAX {
            return Err(BatchError::TooLarge {
                records: self.count,
            });
        }
        if self.count == 0 {
            self.first_timestamp = timestamp;
        }
        // Every length below fits in an i32: the whole batch does.
        let put_bytes = |buf: &mut Vec<u8>, b: Option<&[u8]>| match b {
            None => put_varint(buf, -1),
            Some(b) => {
                put_varint(buf, b.len() as i32);
                buf.extend_from_slice(b);
            }
        };
        let buf = &mut self.buf;
        buf.reserve(body + 5);
        put_varint(buf, body as i32);
        buf.push(0); // record attributes: none defined
        put_varlong(buf, timestamp.wrapping_sub(self.first_timestamp));
        put_varint(buf, self.count);
        put_bytes(buf, key);
        put_bytes(buf, value);
        put_varint(buf, headers.len() as i32);
        for h in headers {
            put_bytes(buf, Some(h.key));
            put_bytes(buf, h.value);
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        self.count += 1;
        Ok(())
    }

    /// Finishes the batch; `None` if no record was pushed.
    pub fn build(mut self) -> Option<RecordBatch> {
        if self.count == 0 {
            return None;
        }
        let total = self.buf.len();
        let h = &mut self.buf[..HEADER_LEN];
        h[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&0i64.to_be_bytes());
        h[BATCH_LENGTH..BATCH_LENGTH + 4]
            .copy_from_slice(&((total - LOG_OVERHEAD) as i32).to_be_bytes());
        h[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&0i32.to_be_bytes());
        h[MAGIC_AT] = MAGIC;
        h[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&0u16.to_be_bytes());
        h[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4]
            .copy_from_slice(&(self.count - 1).to_be_bytes());
        h[FIRST_TIMESTAMP..FIRST_TIMESTAMP + 8]
            .copy_from_slice(&self.first_timestamp.to_be_bytes());
        h[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&self.max_timestamp.to_be_bytes());
        h[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&self.producer.producer_id.to_be_bytes());
        h[PRODUCER_EPOCH..PRODUCER_EPOCH + 2]
            .copy_from_slice(&self.producer.producer_epoch.to_be_bytes());
        h[BASE_SEQUENCE..BASE_SEQUENCE + 4]
            .copy_from_slice(&self.producer.base_sequence.to_be_bytes());
        h[RECORD_COUNT..RECORD_COUNT + 4].copy_from_slice(&self.count.to_be_bytes());
        let crc = checksum(&self.buf[CRC_START..]);
        self.buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        Some(RecordBatch { buf: self.buf })
    }
}

/// Writes the log-assigned fields (not covered by the checksum) into a
/// batch's header in place.
pub(crate) fn stamp_header(header: &mut [u8], base_offset: i64, leader_epoch: i32) {
    header[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    header[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
