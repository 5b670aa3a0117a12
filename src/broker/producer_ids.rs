//! Producer ids for idempotent producers.
//!
//! Ids are handed out from blocks: the broker appends the end of each new
//! block to the internal topic `__producer_ids` (flushed before any id of
//! the block is used), so ids are never reused across restarts, and one
//! durable write serves [`PRODUCER_ID_BLOCK`] producers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;

use super::{Acks, Broker, BrokerError, NewRecord, ProduceRequest, Result, TopicConfig};
use crate::storage::StorageError;

/// Internal topic holding the allocated producer-id blocks.
pub const PRODUCER_IDS_TOPIC: &str = "__producer_ids";
/// Ids per block.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// The current block: ids in `[next, limit)` are free.
#[derive(Debug, Default)]
pub(crate) struct IdBlock {
    next: i64,
    limit: i64,
    loaded: bool,
}

/// What the broker handed out, read on every idempotent produce: which
/// ids exist and each id's current epoch. A produce naming an id never
/// handed out, or an epoch newer than the current one, is refused (no
/// client can invent an id, or fence a producer by guessing epoch + 1); an
/// older epoch is fenced even on partitions the new epoch has not written
/// to yet.
#[derive(Debug, Default)]
pub(crate) struct ProducerRegistry {
    /// Ids below this may have been handed out (the end of the newest
    /// block after a restart, `next` while running).
    handed_out: AtomicI64,
    /// Current epoch of every id whose epoch was bumped (others are at 0).
    /// Written only by bumps (rare); read by every idempotent produce.
    epochs: RwLock<HashMap<i64, i16>>,
}

/// A bump record in `__producer_ids`: key the id, value the new epoch.
/// Block records have no key and an 8-byte value (the block's end).
fn bump_record(id: i64, epoch: i16) -> NewRecord {
    NewRecord {
        key: Some(Bytes::copy_from_slice(&id.to_be_bytes())),
        value: Some(Bytes::copy_from_slice(&epoch.to_be_bytes())),
        ..Default::default()
    }
}

impl Broker {
    /// A producer id and epoch for an idempotent producer. With `bump`
    /// (an id and its current epoch, as this broker handed them out), the
    /// same id with the next epoch: batches of older epochs are then
    /// fenced everywhere. A bump naming an epoch that is not the current
    /// one is refused (the caller is a stale instance: another one holds
    /// the id now). When the epoch is exhausted (32767), a new id with
    /// epoch 0 is handed out instead. Blocking (a durable write per bump,
    /// and once per block of new ids).
    pub fn init_producer(&self, bump: Option<(i64, i16)>) -> Result<(i64, i16)> {
        self.check_running()?;
        // Held across the durable appends: allocation and bumps are rare
        // (once per block, once per bump) and must not interleave.
        let mut ids = self.producer_ids.lock();
        self.load_producer_ids(&mut ids)?;
        if let Some((id, epoch)) = bump {
            let current = self.check_producer_id(id, epoch)?;
            if current < i16::MAX {
                self.durable_internal(bump_record(id, current + 1))?;
                self.producers.epochs.write().insert(id, current + 1);
                return Ok((id, current + 1));
            }
            tracing::info!(
                producer_id = id,
                "producer epoch exhausted; handing out a new producer id"
            );
        }
        if ids.next == ids.limit {
            let limit = ids.limit + PRODUCER_ID_BLOCK;
            self.durable_internal(NewRecord {
                value: Some(Bytes::copy_from_slice(&limit.to_be_bytes())),
                ..Default::default()
            })?;
            ids.limit = limit;
        }
        let id = ids.next;
        ids.next += 1;
        self.producers.handed_out.store(ids.next, Ordering::Release);
        Ok((id, 0))
    }

    /// Checks an idempotent producer's id and epoch against what was
    /// handed out; returns the id's current epoch.
    pub(super) fn check_producer_id(&self, id: i64, epoch: i16) -> Result<i16> {
        let handed_out = self.producers.handed_out.load(Ordering::Acquire);
        if id < 0 || id >= handed_out {
            return Err(BrokerError::invalid(format!(
                "producer id {id} was never handed out by this broker (ids so far are in [0, {handed_out})): call InitProducer"
            )));
        }
        let current = self.producers.epochs.read().get(&id).copied().unwrap_or(0);
        if epoch > current {
            return Err(BrokerError::invalid(format!(
                "producer {id}: epoch {epoch} was never handed out (the current epoch is {current}): epochs come from InitProducer"
            )));
        }
        if epoch < current {
            return Err(BrokerError::Storage(StorageError::ProducerFenced {
                producer_id: id,
                epoch,
                current,
            }));
        }
        Ok(current)
    }

    /// Appends one record to `__producer_ids` and waits until it is on disk.
    fn durable_internal(&self, record: NewRecord) -> Result<()> {
        let appended = self.append_internal(ProduceRequest {
            topic: PRODUCER_IDS_TOPIC.to_string(),
            partition: Some(0),
            records: vec![record],
            acks: Acks::All,
            producer: None,
        })?;
        let result = appended.durable_blocking();
        if let Some(f) = result.failures.first() {
            tracing::error!(error = %f.error, "recording producer ids failed");
            return Err(BrokerError::Storage(StorageError::Io {
                op: "recording producer ids in",
                path: PRODUCER_IDS_TOPIC.into(),
                source: std::io::Error::other(f.error.client_message()),
            }));
        }
        Ok(())
    }

    /// Loads what was handed out, once: at open, or at the first
    /// `InitProducer` if that failed.
    pub(super) fn load_producer_ids(&self, ids: &mut IdBlock) -> Result<()> {
        if ids.loaded {
            return Ok(());
        }
        let (end, epochs) = self.first_free_producer_id()?;
        ids.next = end;
        ids.limit = end;
        ids.loaded = true;
        self.producers.handed_out.store(end, Ordering::Release);
        *self.producers.epochs.write() = epochs;
        Ok(())
    }

    /// Where allocation goes on after a start, and each bumped id's
    /// epoch: from `__producer_ids`. If that topic is empty or unreadable
    /// (lost or damaged), the partition logs' producer state says which
    /// ids and epochs live producers hold, and allocation goes on past the
    /// largest id, so no id is handed out twice.
    fn first_free_producer_id(&self) -> Result<(i64, HashMap<i64, i16>)> {
        let logged = self.read_producer_ids();
        if let Ok((end, epochs)) = &logged {
            if *end > 0 {
                return Ok((*end, epochs.clone()));
            }
        }
        let mut max_seen: Option<i64> = None;
        let mut epochs: HashMap<i64, i16> = HashMap::new();
        let topics: Vec<_> = self.topics.read().values().cloned().collect();
        for topic in topics.iter().filter(|t| !super::is_internal_topic(&t.name)) {
            for part in topic.partitions().iter() {
                let log = self.log_of(topic, part)?;
                max_seen = max_seen.max(log.max_producer_id());
                for (id, epoch) in log.producer_epochs() {
                    let e = epochs.entry(id).or_insert(epoch);
                    *e = (*e).max(epoch);
                }
            }
        }
        epochs.retain(|_, e| *e > 0);
        let Some(max) = max_seen else {
            return logged;
        };
        // The block after the one holding the largest id in use.
        let next = (max / PRODUCER_ID_BLOCK + 1) * PRODUCER_ID_BLOCK;
        match &logged {
            Ok(_) => tracing::warn!(next, "__producer_ids is empty but partition logs hold producer ids; allocating after the largest"),
            Err(e) => tracing::warn!(next, error = %e, "__producer_ids is unreadable; allocating after the largest producer id in the partition logs"),
        }
        Ok((next, epochs))
    }

    /// The end of the newest allocated block (0 if none), and the epochs
    /// of bumped ids, from `__producer_ids`.
    fn read_producer_ids(&self) -> Result<(i64, HashMap<i64, i16>)> {
        let topic = self.ensure_internal_topic(
            PRODUCER_IDS_TOPIC,
            1,
            TopicConfig {
                // Bumps are kept for as long as the ids they name.
                retention_ms: Some(-1),
                retention_bytes: Some(-1),
                segment_bytes: Some(64 * 1024 * 1024),
                ..TopicConfig::default()
            },
        )?;
        let mut end = 0i64;
        let mut epochs = HashMap::new();
        let mut bad: Option<i64> = None;
        self.replay_internal(&topic.name, 0, |r| {
            let value = r.value.as_deref().unwrap_or_default();
            match (r.key.as_deref(), value.len()) {
                (None, 8) => {
                    let v = i64::from_be_bytes(value.try_into().unwrap_or_default());
                    end = end.max(v);
                }
                (Some(k), 2) if k.len() == 8 => {
                    let id = i64::from_be_bytes(k.try_into().unwrap_or_default());
                    let epoch = i16::from_be_bytes(value.try_into().unwrap_or_default());
                    let e = epochs.entry(id).or_insert(epoch);
                    *e = (*e).max(epoch);
                }
                _ => bad = bad.or(Some(r.offset)),
            }
        })?;
        if let Some(offset) = bad {
            return Err(BrokerError::Metadata {
                path: PRODUCER_IDS_TOPIC.into(),
                reason: format!("the record at offset {offset} is not a producer-id record"),
            });
        }
        Ok((end, epochs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exhausted_epoch_hands_out_a_new_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Broker::open(super::super::BrokerConfig::new(dir.path())).expect("open");
        let (id, epoch) = broker.init_producer(None).expect("init");
        assert_eq!(epoch, 0);
        assert_eq!(broker.init_producer(Some((id, 0))).expect("bump"), (id, 1));
        // Skip ahead to the last epoch (32,767 bumps would take a while).
        broker.producers.epochs.write().insert(id, i16::MAX - 1);
        assert_eq!(
            broker
                .init_producer(Some((id, i16::MAX - 1)))
                .expect("bump"),
            (id, i16::MAX)
        );
        let (next, e) = broker.init_producer(Some((id, i16::MAX))).expect("new id");
        assert_ne!(next, id);
        assert_eq!(e, 0);
        // The exhausted id stays fenced at its last epoch.
        assert!(broker.check_producer_id(id, i16::MAX).is_ok());
        assert!(broker.check_producer_id(id, 0).is_err());
        broker.close();
    }
}
