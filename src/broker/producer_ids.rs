//! Producer ids for idempotent producers.
//!
//! Ids are handed out from blocks: the broker appends the end of each new
//! block to the internal topic `__producer_ids` (flushed before any id of
//! the block is used), so ids are never reused across restarts, and one
//! durable write serves [`PRODUCER_ID_BLOCK`] producers.

use bytes::Bytes;

use super::{Acks, Broker, BrokerError, NewRecord, ProduceRequest, Result, TopicConfig};

/// Internal topic holding the allocated producer-id blocks.
pub const PRODUCER_IDS_TOPIC: &str = "__producer_ids";
/// Ids per block.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// The current block: ids in `[next, limit)` are free.
#[derive(Debug, Default)]
pub(crate) struct IdBlock {
    next: i64,
    limit: i64,
    /// Every id below this was handed out at some time (the newest block's
    /// end as read from the log).
    allocated: i64,
}

impl Broker {
    /// A producer id and epoch for an idempotent producer. With `bump`
    /// (an id and epoch this broker handed out), the same id with the next
    /// epoch: batches of older epochs are then fenced on every partition
    /// the new epoch writes to. Blocking (a durable write once per block).
    pub fn init_producer(&self, bump: Option<(i64, i16)>) -> Result<(i64, i16)> {
        self.check_running()?;
        // Held across the block's append: allocation is rare (once per
        // block) and must not hand out one block twice.
        let mut ids = self.producer_ids.lock();
        if ids.limit == 0 {
            ids.allocated = self.last_producer_block()?;
            ids.next = ids.allocated;
            ids.limit = ids.allocated;
        }
        if let Some((id, epoch)) = bump {
            if id < 0 || id >= ids.allocated.max(ids.limit) {
                return Err(BrokerError::invalid(format!(
                    "producer id {id} was never handed out by this broker (ids so far are in [0, {}))",
                    ids.allocated.max(ids.limit)
                )));
            }
            if !(0..i16::MAX).contains(&epoch) {
                return Err(BrokerError::invalid(format!(
                    "producer epoch {epoch} cannot be bumped: it must be in [0, {}]",
                    i16::MAX - 1
                )));
            }
            return Ok((id, epoch + 1));
        }
        if ids.next == ids.limit {
            let limit = ids.limit + PRODUCER_ID_BLOCK;
            let appended = self.append_internal(ProduceRequest {
                topic: PRODUCER_IDS_TOPIC.to_string(),
                partition: Some(0),
                records: vec![NewRecord {
                    value: Some(Bytes::copy_from_slice(&limit.to_be_bytes())),
                    ..Default::default()
                }],
                acks: Acks::All,
                producer: None,
            })?;
            let result = appended.durable_blocking();
            if let Some(f) = result.failures.first() {
                return Err(BrokerError::Storage(crate::storage::StorageError::Io {
                    op: "recording a producer-id block in",
                    path: PRODUCER_IDS_TOPIC.into(),
                    source: std::io::Error::other(f.error.to_string()),
                }));
            }
            ids.limit = limit;
            ids.allocated = limit;
        }
        let id = ids.next;
        ids.next += 1;
        Ok((id, 0))
    }

    /// The end of the newest allocated block (0 if none).
    fn last_producer_block(&self) -> Result<i64> {
        let topic = self.ensure_internal_topic(PRODUCER_IDS_TOPIC, 1, TopicConfig::default())?;
        let part = topic.partition(0)?;
        let log = self.log_of(&topic, &part)?;
        let end = log.end_offset();
        if end <= log.start_offset() {
            return Ok(0);
        }
        let read = self.read_internal(PRODUCER_IDS_TOPIC, 0, end - 1, 4096)?;
        let last = read
            .records
            .last()
            .and_then(|r| r.value.as_deref())
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map(i64::from_be_bytes);
        last.ok_or_else(|| BrokerError::Metadata {
            path: PRODUCER_IDS_TOPIC.into(),
            reason: format!(
                "the record at offset {} is not a producer-id block",
                end - 1
            ),
        })
    }
}
