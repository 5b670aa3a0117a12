//! Producer ids for idempotent producers.
//!
//! Ids are handed out from blocks: the broker appends the end of each new
//! block to the internal topic `__producer_ids` (flushed before any id of
//! the block is used), so ids are never reused across restarts, and one
//! durable write serves [`PRODUCER_ID_BLOCK`] producers. Epoch bumps are
//! recorded there too. The topic is a [`Journal`] like the coordinators'
//! state: replayed at open, compacted by snapshot (the newest block end
//! and every bumped epoch).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;

use super::journal::{journal_topic_config, Journal, JournalConfig, JournalError, Journaled};
use super::{Broker, BrokerError, NewRecord, Result};
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
    /// `__producer_ids`, once loaded.
    journal: Option<Journal<IdLog>>,
}

/// What `__producer_ids` records: the end of the newest block, and the
/// epoch of every id whose epoch was bumped.
#[derive(Debug, Default)]
pub(crate) struct IdLog {
    end: i64,
    epochs: HashMap<i64, i16>,
    /// Records replayed.
    records: u64,
    /// The first record that is not a producer-id record (the log is
    /// damaged: allocation then also looks at the partition logs).
    bad: Option<String>,
}

impl Journaled for IdLog {
    fn replay(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> std::result::Result<(), String> {
        self.records += 1;
        let value = value.unwrap_or_default();
        match (key, value.len()) {
            (None, 8) => {
                let v = i64::from_be_bytes(value.try_into().unwrap_or_default());
                self.end = self.end.max(v);
            }
            (Some(k), 2) if k.len() == 8 => {
                let id = i64::from_be_bytes(k.try_into().unwrap_or_default());
                let epoch = i16::from_be_bytes(value.try_into().unwrap_or_default());
                let e = self.epochs.entry(id).or_insert(epoch);
                *e = (*e).max(epoch);
            }
            _ => {
                let reason = "not a producer-id record".to_string();
                self.bad.get_or_insert(reason.clone());
                return Err(reason);
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Vec<NewRecord> {
        let mut out = vec![block_record(self.end)];
        out.extend(self.epochs.iter().map(|(&id, &e)| bump_record(id, e)));
        out
    }
}

/// A failure to write `__producer_ids` (memory may be ahead of it).
/// Why `__producer_ids` cannot be written (it is every broker's own, so
/// never led elsewhere in practice).
fn journal_reason(e: JournalError) -> String {
    match e {
        JournalError::Failed(reason) => reason,
        JournalError::NotLeader(_) => "producer ids are kept by another broker".into(),
    }
}

fn journal_error(e: JournalError) -> BrokerError {
    ids_error(journal_reason(e))
}

fn ids_error(reason: String) -> BrokerError {
    BrokerError::Storage(StorageError::Io {
        op: "recording producer ids in",
        path: PRODUCER_IDS_TOPIC.into(),
        source: std::io::Error::other(reason),
    })
}

/// A block record: no key, the block's end as an 8-byte value.
fn block_record(end: i64) -> NewRecord {
    NewRecord {
        value: Some(Bytes::copy_from_slice(&end.to_be_bytes())),
        ..Default::default()
    }
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
            if let Some(s) = self.config.producer_id_stripe {
                if id < 0 || s.owner(id) != s.node {
                    return Err(BrokerError::invalid(format!(
                        "producer id {id} was handed out by broker {}: bump its epoch there",
                        s.owner(id)
                    )));
                }
            }
            let current = self.check_producer_id(id, epoch)?;
            if current < i16::MAX {
                self.record_ids(&ids, bump_record(id, current + 1), |l| {
                    l.epochs.insert(id, current + 1);
                })?;
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
            self.record_ids(&ids, block_record(limit), |l| l.end = limit)?;
            ids.limit = limit;
        }
        let id = ids.next;
        ids.next += 1;
        self.producers.handed_out.store(ids.next, Ordering::Release);
        Ok((
            self.config
                .producer_id_stripe
                .map_or(id, |s| id * s.stride + s.node),
            0,
        ))
    }

    /// Checks an idempotent producer's id and epoch against what was
    /// handed out; returns the id's current epoch.
    pub(super) fn check_producer_id(&self, id: i64, epoch: i16) -> Result<i16> {
        let handed_out = self.producers.handed_out.load(Ordering::Acquire);
        let local = match self.config.producer_id_stripe {
            None => id,
            Some(s) if id >= 0 && s.owner(id) == s.node => id / s.stride,
            // Another broker's id: that broker checked it when it handed
            // it out; the partition's producer state fences older epochs.
            Some(_) if id >= 0 => return Ok(epoch),
            Some(_) => -1,
        };
        if local < 0 || local >= handed_out {
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

    /// Appends one record to `__producer_ids`, waits until it is on disk,
    /// then applies it to the journal's state with `apply`.
    fn record_ids(
        &self,
        ids: &IdBlock,
        record: NewRecord,
        apply: impl FnOnce(&mut IdLog),
    ) -> Result<()> {
        let failed = |reason: String| {
            tracing::error!(error = %reason, "recording producer ids failed");
            ids_error(reason)
        };
        let journal = ids
            .journal
            .as_ref()
            .ok_or_else(|| failed("producer ids are not loaded".into()))?;
        let mut log = journal.lock(self).map_err(|e| failed(journal_reason(e)))?;
        log.append(vec![record]).map_err(failed)?;
        apply(&mut log);
        Ok(())
    }

    /// Loads what was handed out, once: at open, or at the first
    /// `InitProducer` if that failed.
    pub(super) fn load_producer_ids(&self, ids: &mut IdBlock) -> Result<()> {
        if ids.journal.is_some() {
            return Ok(());
        }
        self.ensure_internal_topic(
            PRODUCER_IDS_TOPIC,
            1,
            journal_topic_config(64 * 1024 * 1024),
        )?;
        let config = JournalConfig {
            topic: PRODUCER_IDS_TOPIC,
            partition: 0,
            snapshot_min_records: 10_000,
            durable: true,
        };
        let journal = Journal::open(self, config, IdLog::default)?;
        let (end, epochs, trusted) =
            journal.peek(|l| (l.end, l.epochs.clone(), l.bad.is_none() && l.records > 0));
        let (end, epochs) = if trusted {
            (end, epochs)
        } else {
            let found = self.producer_ids_in_logs(end, epochs)?;
            // Recorded, so that later starts trust the topic again instead
            // of opening every partition log.
            let mut log = journal.lock(self).map_err(journal_error)?;
            let mut recs = vec![block_record(found.0)];
            recs.extend(found.1.iter().map(|(&id, &e)| bump_record(id, e)));
            if let Err(reason) = log.append(recs) {
                tracing::warn!(error = %reason, "recording the producer ids found in the partition logs failed; the next start looks again");
            } else {
                log.end = found.0;
                log.epochs.clone_from(&found.1);
            }
            found
        };
        ids.next = end;
        ids.limit = end;
        ids.journal = Some(journal);
        self.producers.handed_out.store(end, Ordering::Release);
        *self.producers.epochs.write() = epochs;
        Ok(())
    }

    /// Where allocation goes on when `__producer_ids` is empty or damaged
    /// (lost, or from before it existed), and each bumped id's epoch: the
    /// partition logs' producer state says which ids and epochs live
    /// producers hold, and allocation goes on past the largest id (and past
    /// `logged_end`), so no id is handed out twice. Opens every partition
    /// log, once: the outcome is recorded.
    fn producer_ids_in_logs(
        &self,
        logged_end: i64,
        logged: HashMap<i64, i16>,
    ) -> Result<(i64, HashMap<i64, i16>)> {
        let mut max_seen: Option<i64> = None;
        let mut epochs = logged;
        let topics: Vec<_> = self.topics.read().values().cloned().collect();
        for topic in topics.iter().filter(|t| !super::is_internal_topic(&t.name)) {
            for part in topic.partitions().iter() {
                // An unreadable log fails the load (idempotent produces are
                // refused until it succeeds): an id it holds could be
                // handed out again otherwise.
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
            return Ok((logged_end, epochs));
        };
        // The block after the one holding the largest id in use.
        let next = ((max / PRODUCER_ID_BLOCK + 1) * PRODUCER_ID_BLOCK).max(logged_end);
        tracing::warn!(
            next,
            "__producer_ids is empty or damaged but partition logs hold producer ids; allocating after the largest"
        );
        Ok((next, epochs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::TopicConfig;

    /// A broker that never had an idempotent producer records that, so a
    /// restart does not open every partition log to look for producer ids.
    #[test]
    fn a_start_does_not_open_every_partition_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Broker::open(super::super::BrokerConfig::new(dir.path())).expect("open");
        broker
            .create_topic("wide", 50, TopicConfig::default())
            .expect("topic");
        broker.close();
        drop(broker);
        let broker = Broker::open(super::super::BrokerConfig::new(dir.path())).expect("open");
        let wide = broker.topic("wide").expect("topic");
        let open = wide
            .partitions()
            .iter()
            .filter(|p| p.open_log().is_some())
            .count();
        assert_eq!(open, 0, "partition logs opened at start");
        // Ids still continue past what was handed out.
        let (id, _) = broker.init_producer(None).expect("init");
        broker.close();
        drop(broker);
        let broker = Broker::open(super::super::BrokerConfig::new(dir.path())).expect("open");
        let (next, _) = broker.init_producer(None).expect("init");
        assert!(next > id, "{next} after {id}");
        broker.close();
    }

    /// Bumps past the snapshot threshold: `__producer_ids` is compacted
    /// and a restart still knows every epoch.
    #[test]
    fn epochs_survive_snapshots_and_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Broker::open(super::super::BrokerConfig::new(dir.path())).expect("open");
        let (a, _) = broker.init_producer(None).expect("init");
        let (b, _) = broker.init_producer(None).expect("init");
        let mut epoch = 0;
        for _ in 0..10_050 {
            epoch = broker.init_producer(Some((a, epoch))).expect("bump").1;
        }
        broker.init_producer(Some((b, 0))).expect("bump");
        broker.close();
        drop(broker);
        let broker = Broker::open(super::super::BrokerConfig::new(dir.path())).expect("open");
        assert_eq!(broker.check_producer_id(a, epoch).expect("a"), epoch);
        assert!(broker.check_producer_id(a, epoch - 1).is_err(), "fenced");
        assert_eq!(broker.check_producer_id(b, 1).expect("b"), 1);
        let records = broker
            .list_offsets(PRODUCER_IDS_TOPIC, &[0], None)
            .expect("offsets")[0]
            .latest;
        assert!(records > 10_000, "every bump was recorded: {records}");
        broker.close();
    }

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
