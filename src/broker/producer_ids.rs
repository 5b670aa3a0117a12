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
            ids.allocated = self.first_free_producer_id()?;
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

    /// Where allocation goes on after a start: the end of the newest block
    /// in `__producer_ids`. If that topic is empty or unreadable (lost or
    /// damaged), the partition logs' producer state says which ids live
    /// producers hold, and allocation goes on past the largest, so no id is
    /// handed out twice.
    fn first_free_producer_id(&self) -> Result<i64> {
        let logged = self.last_producer_block();
        if let Ok(end) = logged {
            if end > 0 {
                return Ok(end);
            }
        }
        let mut max_seen: Option<i64> = None;
        let topics: Vec<_> = self.topics.read().values().cloned().collect();
        for topic in topics.iter().filter(|t| !super::is_internal_topic(&t.name)) {
            for part in topic.partitions().iter() {
                let log = self.log_of(topic, part)?;
                max_seen = max_seen.max(log.max_producer_id());
            }
        }
        let Some(max) = max_seen else {
            return logged;
        };
        // The block after the one holding the largest id in use.
        let next = (max / PRODUCER_ID_BLOCK + 1) * PRODUCER_ID_BLOCK;
        match &logged {
            Ok(_) => tracing::warn!(next, "__producer_ids is empty but partition logs hold producer ids; allocating after the largest"),
            Err(e) => tracing::warn!(next, error = %e, "__producer_ids is unreadable; allocating after the largest producer id in the partition logs"),
        }
        Ok(next)
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
