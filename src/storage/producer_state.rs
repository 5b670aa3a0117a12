//! Idempotent-producer state of one partition log.
//!
//! An idempotent producer stamps every batch with its producer id, epoch and
//! the sequence number of the batch's first record, counted per partition
//! from 0 (Kafka's RecordBatch v2 fields). For each producer the log keeps
//! its epoch and the sequence ranges and offsets of its last
//! [`RETAINED_BATCHES`] batches, so that:
//! - a retried batch that was already appended is answered with its
//!   original offsets and not written twice;
//! - a batch that skips sequence numbers (a lost batch in between) is
//!   refused with the sequence the log expected;
//! - a batch of an older epoch than the log has seen is refused (fenced).
//!
//! The state lives beside the segments: a snapshot file
//! `<20-digit offset>.snapshot` holds the state after every batch below its
//! offset. The log writes one when it rolls a segment and when it closes;
//! on open it loads the newest snapshot and replays the batch headers after
//! it, so a retry after a restart (or a crash) is still recognised.

use std::collections::{HashMap, VecDeque};

use super::error::{Result, StorageError};

/// Batches remembered per producer: a retry of any of them is answered with
/// its original offsets.
pub const RETAINED_BATCHES: usize = 8;

/// File extension of producer-state snapshots.
pub const SNAPSHOT_EXT: &str = "snapshot";

const MAGIC: &[u8; 4] = b"SLPS";
const VERSION: u8 = 1;

/// Sequence numbers wrap to 0 after `i32::MAX`, as in Kafka.
pub fn seq_add(seq: i32, n: i64) -> i32 {
    ((i64::from(seq) + n).rem_euclid(i64::from(i32::MAX) + 1)) as i32
}

/// One appended batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    /// Sequence of the first record.
    pub first_seq: i32,
    /// Sequence of the last record.
    pub last_seq: i32,
    /// Offset of the first record.
    pub base_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    epoch: i16,
    /// Broker clock of the last append, for expiry.
    last_append_ms: i64,
    /// Newest last.
    batches: VecDeque<BatchMeta>,
}

/// What to do with an idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Next in sequence: append it.
    Append,
    /// Already appended: these are its offsets.
    Duplicate(BatchMeta),
}

/// Producer state of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, Entry>,
}

impl ProducerStates {
    /// Producers known.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// No producer known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The largest producer id known, if any.
    pub fn max_producer_id(&self) -> Option<i64> {
        self.producers.keys().copied().max()
    }

    /// Decides whether a batch of `count` records from `producer_id` at
    /// `epoch`, starting at sequence `first_seq`, is appended, answered as a
    /// duplicate, or refused.
    pub fn check(
        &self,
        producer_id: i64,
        epoch: i16,
        first_seq: i32,
        count: i32,
        max_producers: usize,
    ) -> Result<Check> {
        if first_seq < 0 || epoch < 0 {
            return Err(StorageError::InvalidProducer(format!(
                "producer {producer_id}: epoch {epoch} and base sequence {first_seq} must not be negative"
            )));
        }
        let out_of_order = |expected: i32| {
            Err(StorageError::OutOfOrderSequence {
                producer_id,
                expected,
                received: first_seq,
            })
        };
        let Some(e) = self.producers.get(&producer_id) else {
            if self.producers.len() >= max_producers {
                return Err(StorageError::TooManyProducers {
                    limit: max_producers,
                });
            }
            // A producer new to this partition (or whose state expired)
            // starts at 0.
            return if first_seq == 0 {
                Ok(Check::Append)
            } else {
                out_of_order(0)
            };
        };
        if epoch < e.epoch {
            return Err(StorageError::ProducerFenced {
                producer_id,
                epoch,
                current: e.epoch,
            });
        }
        if epoch > e.epoch {
            return if first_seq == 0 {
                Ok(Check::Append)
            } else {
                out_of_order(0)
            };
        }
        let last_seq = seq_add(first_seq, i64::from(count) - 1);
        if let Some(b) = e
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Ok(Check::Duplicate(*b));
        }
        let expected = e.batches.back().map_or(0, |b| seq_add(b.last_seq, 1));
        if first_seq == expected {
            return Ok(Check::Append);
        }
        // Behind the expected sequence (within half the number space):
        // a retry of a batch older than the ones remembered.
        let behind =
            (i64::from(expected) - i64::from(first_seq)).rem_euclid(i64::from(i32::MAX) + 1);
        if behind > 0 && behind < (1 << 30) {
            return Err(StorageError::DuplicateSequence {
                producer_id,
                received: first_seq,
                expected,
            });
        }
        out_of_order(expected)
    }

    /// Records an appended batch (or one replayed from the log).
    pub fn record(&mut self, producer_id: i64, epoch: i16, batch: BatchMeta, now_ms: i64) {
        let e = self.producers.entry(producer_id).or_insert_with(|| Entry {
            epoch,
            last_append_ms: now_ms,
            batches: VecDeque::new(),
        });
        if epoch != e.epoch {
            e.epoch = epoch;
            e.batches.clear();
        }
        e.last_append_ms = e.last_append_ms.max(now_ms);
        if e.batches.len() == RETAINED_BATCHES {
            e.batches.pop_front();
        }
        e.batches.push_back(batch);
    }

    /// Each producer with its current epoch.
    pub fn epochs(&self) -> Vec<(i64, i16)> {
        self.producers
            .iter()
            .map(|(id, e)| (*id, e.epoch))
            .collect()
    }

    /// Forgets producers that have not appended since `before_ms`.
    pub fn expire(&mut self, before_ms: i64) -> usize {
        let n = self.producers.len();
        self.producers.retain(|_, e| e.last_append_ms >= before_ms);
        n - self.producers.len()
    }

    /// The snapshot file's bytes: magic, version, entries, CRC-32 of all
    /// before it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.producers.len() * 64);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort();
        for id in ids {
            let e = &self.producers[id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.last_append_ms.to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses a snapshot file; the error says what is wrong.
    pub fn decode(buf: &[u8]) -> std::result::Result<Self, String> {
        let body_len = buf
            .len()
            .checked_sub(4)
            .ok_or("shorter than its checksum")?;
        let (body, crc) = buf.split_at(body_len);
        let crc = u32::from_be_bytes(crc.try_into().map_err(|_| "bad checksum field")?);
        if crc32fast::hash(body) != crc {
            return Err("checksum mismatch".into());
        }
        let mut r = Reader(body);
        if r.take(4)? != MAGIC {
            return Err("not a producer-state snapshot (bad magic)".into());
        }
        let version = r.take(1)?[0];
        if version != VERSION {
            return Err(format!("unknown snapshot version {version}"));
        }
        let n = r.u32()?;
        let mut producers = HashMap::with_capacity(n.min(1 << 20) as usize);
        for _ in 0..n {
            let id = r.i64()?;
            let epoch = r.i16()?;
            let last_append_ms = r.i64()?;
            let k = r.take(1)?[0] as usize;
            let mut batches = VecDeque::with_capacity(k);
            for _ in 0..k {
                batches.push_back(BatchMeta {
                    first_seq: r.i32()?,
                    last_seq: r.i32()?,
                    base_offset: r.i64()?,
                    last_offset: r.i64()?,
                });
            }
            producers.insert(
                id,
                Entry {
                    epoch,
                    last_append_ms,
                    batches,
                },
            );
        }
        if !r.0.is_empty() {
            return Err(format!("{} bytes after the last entry", r.0.len()));
        }
        Ok(Self { producers })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn arr<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        self.take(N)?
            .try_into()
            .map_err(|_| "truncated".to_string())
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        self.arr().map(u32::from_be_bytes)
    }
    fn i16(&mut self) -> std::result::Result<i16, String> {
        self.arr().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> std::result::Result<i32, String> {
        self.arr().map(i32::from_be_bytes)
    }
    fn i64(&mut self) -> std::result::Result<i64, String> {
        self.arr().map(i64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(first: i32, last: i32, base: i64) -> BatchMeta {
        BatchMeta {
            first_seq: first,
            last_seq: last,
            base_offset: base,
            last_offset: base + i64::from(last - first),
        }
    }

    #[test]
    fn sequences_duplicates_gaps_and_fencing() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(7, 0, 0, 10, 100).unwrap(), Check::Append);
        assert!(matches!(
            s.check(7, 0, 5, 1, 100),
            Err(StorageError::OutOfOrderSequence { expected: 0, .. })
        ));
        s.record(7, 0, meta(0, 9, 100), 1);
        assert_eq!(
            s.check(7, 0, 0, 10, 100).unwrap(),
            Check::Duplicate(meta(0, 9, 100))
        );
        assert_eq!(s.check(7, 0, 10, 5, 100).unwrap(), Check::Append);
        assert!(matches!(
            s.check(7, 0, 12, 5, 100),
            Err(StorageError::OutOfOrderSequence {
                expected: 10,
                received: 12,
                ..
            })
        ));
        // Overlapping but not a remembered batch: an old duplicate.
        assert!(matches!(
            s.check(7, 0, 3, 2, 100),
            Err(StorageError::DuplicateSequence { expected: 10, .. })
        ));
        // A new epoch restarts at 0 and fences the old one.
        assert!(s.check(7, 1, 10, 1, 100).is_err());
        assert_eq!(s.check(7, 1, 0, 1, 100).unwrap(), Check::Append);
        s.record(7, 1, meta(0, 0, 110), 2);
        assert!(matches!(
            s.check(7, 0, 10, 1, 100),
            Err(StorageError::ProducerFenced { current: 1, .. })
        ));
    }

    #[test]
    fn remembers_only_the_last_batches() {
        let mut s = ProducerStates::default();
        for i in 0..20 {
            s.record(1, 0, meta(i, i, i64::from(i)), 0);
        }
        assert_eq!(
            s.check(1, 0, 19, 1, 100).unwrap(),
            Check::Duplicate(meta(19, 19, 19))
        );
        assert_eq!(
            s.check(1, 0, 12, 1, 100).unwrap(),
            Check::Duplicate(meta(12, 12, 12))
        );
        assert!(matches!(
            s.check(1, 0, 11, 1, 100),
            Err(StorageError::DuplicateSequence { .. })
        ));
        assert_eq!(s.check(1, 0, 20, 1, 100).unwrap(), Check::Append);
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        let mut s = ProducerStates::default();
        s.record(1, 0, meta(i32::MAX - 1, i32::MAX, 0), 0);
        assert_eq!(s.check(1, 0, 0, 3, 100).unwrap(), Check::Append);
        assert_eq!(seq_add(i32::MAX, 1), 0);
        assert_eq!(seq_add(i32::MAX - 1, 4), 2);
    }

    #[test]
    fn snapshot_round_trip_and_damage() {
        let mut s = ProducerStates::default();
        s.record(1, 0, meta(0, 4, 0), 10);
        s.record(1, 0, meta(5, 9, 5), 11);
        s.record(-5, 3, meta(0, 0, 10), 12);
        let bytes = s.encode();
        assert_eq!(ProducerStates::decode(&bytes).unwrap(), s);
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        assert!(ProducerStates::decode(&bad)
            .unwrap_err()
            .contains("checksum"));
        assert!(ProducerStates::decode(&bytes[..bytes.len() - 5]).is_err());
        assert!(ProducerStates::decode(&[]).is_err());
    }

    #[test]
    fn new_producers_beyond_the_limit_are_refused() {
        let mut s = ProducerStates::default();
        for id in 0..3 {
            assert_eq!(s.check(id, 0, 0, 1, 3).unwrap(), Check::Append);
            s.record(id, 0, meta(0, 0, id), 10);
        }
        assert!(matches!(
            s.check(9, 0, 0, 1, 3),
            Err(StorageError::TooManyProducers { limit: 3 })
        ));
        // Known producers go on; expiry makes room.
        assert_eq!(s.check(1, 0, 1, 1, 3).unwrap(), Check::Append);
        assert_eq!(s.expire(11), 3);
        assert_eq!(s.check(9, 0, 0, 1, 3).unwrap(), Check::Append);
    }

    #[test]
    fn expiry_forgets_idle_producers() {
        let mut s = ProducerStates::default();
        s.record(1, 0, meta(0, 0, 0), 100);
        s.record(2, 0, meta(0, 0, 1), 200);
        assert_eq!(s.expire(150), 1);
        assert_eq!(s.len(), 1);
        assert!(matches!(
            s.check(1, 0, 1, 1, 100),
            Err(StorageError::OutOfOrderSequence { expected: 0, .. })
        ));
    }
}
