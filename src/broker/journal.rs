//! State kept in an internal topic: the one mechanism behind consumer
//! groups, work queues and producer ids.
//!
//! A [`Journal`] owns the state of one partition of an internal topic (a
//! shard). Every change is appended before it is answered; on start (and
//! after a failed append) the state is rebuilt by replaying the partition;
//! once the shard has written more than `snapshot_min_records` records
//! and more than twice its live keys, it appends every live key again (a
//! snapshot) and deletes the segments wholly before it, so the topic stays
//! bounded. The purge comes after the snapshot is on disk:
//! [`crate::storage::Log::delete_before`] syncs the log before it unlinks.
//!
//! A failed append may leave memory ahead of the log, so the shard refuses
//! calls until it has replayed its partition again (tried at most once per
//! [`RETRY_AFTER_FAILURE`], e.g. once a full disk has room): what the log
//! holds is the truth.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use super::{Acks, Broker, Leadership, NewRecord, ProduceRequest, Result, TopicConfig};

/// Why a journal cannot take a call here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JournalError {
    /// A write failed and the shard has not replayed its log yet.
    Failed(String),
    /// In a cluster: another broker leads the journal's partition (the one
    /// named, if known), so it serves the shard.
    NotLeader(Option<u64>),
}

/// How long after a failed write a shard first tries to resume.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The settings of an internal topic holding journals: nothing is ever
/// deleted by retention (snapshots compact it), in segments of
/// `segment_bytes`.
pub(crate) fn journal_topic_config(segment_bytes: i64) -> TopicConfig {
    TopicConfig {
        retention_ms: Some(-1),
        retention_bytes: Some(-1),
        segment_bytes: Some(segment_bytes),
        ..TopicConfig::default()
    }
}

/// State that lives in one partition of an internal topic.
pub(crate) trait Journaled: Send {
    /// Applies one record read back from the log (replay). An error skips
    /// the record (counted and logged).
    fn replay(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> std::result::Result<(), String>;
    /// Every live key of the state, as the records a snapshot writes.
    fn snapshot(&self) -> Vec<NewRecord>;
}

/// Where a journal lives and how it is written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JournalConfig {
    /// The internal topic.
    pub topic: &'static str,
    /// Its partition (the shard).
    pub partition: i32,
    /// A snapshot is written after at least this many records (and more
    /// than twice the live keys) since the last one; 0: never.
    pub snapshot_min_records: u64,
    /// Every append waits until it is on disk (acks ALL), for state whose
    /// loss on power failure would be unsafe (producer ids).
    pub durable: bool,
}

/// The bookkeeping beside the state.
struct Inner<S> {
    state: S,
    /// Records written since the last snapshot (or replayed on start).
    since_snapshot: u64,
    /// Live keys at the last snapshot.
    live_keys: u64,
    /// Set when a write failed: why, and when to replay and try again.
    failed: Option<(String, Instant)>,
    /// The leadership the state was loaded under (`None`: not loaded; in
    /// a cluster, while another broker leads the partition). A change of
    /// leader epoch replays the log again.
    loaded: Option<Leadership>,
}

/// The state of one internal partition and its writer.
pub(crate) struct Journal<S> {
    config: JournalConfig,
    /// A new empty state (what replay starts from).
    fresh: Box<dyn Fn() -> S + Send + Sync>,
    /// Held for a change *and* the append that records it, so the
    /// partition's order is the order of the changes. Never held across
    /// `.await`: callers run on blocking threads (an append may wait for
    /// the disk, and a snapshot syncs the log).
    inner: Mutex<Inner<S>>,
}

impl<S> std::fmt::Debug for Journal<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("topic", &self.config.topic)
            .field("partition", &self.config.partition)
            .finish_non_exhaustive()
    }
}

/// A locked journal: the state (through `Deref`) and the means to record
/// changes to it. A snapshot that came due is written when the guard is
/// dropped, after the caller has applied every change it appended (a
/// caller may append first and change its state after, e.g. delete a
/// group once its tombstone is written; a snapshot in between would write
/// the old state after the tombstone).
pub(crate) struct JournalGuard<'a, S: Journaled> {
    journal: &'a Journal<S>,
    broker: &'a Broker,
    inner: MutexGuard<'a, Inner<S>>,
    snapshot_due: bool,
}

impl<S: Journaled> Journal<S> {
    /// Replays the partition into a fresh state. Blocking.
    pub fn open(
        broker: &Broker,
        config: JournalConfig,
        fresh: impl Fn() -> S + Send + Sync + 'static,
    ) -> Result<Self> {
        let fresh: Box<dyn Fn() -> S + Send + Sync> = Box::new(fresh);
        let inner = match broker.leadership(config.topic, config.partition) {
            // Loaded by the first call once this broker leads it.
            Leadership::Elsewhere(_) => Self::unloaded(&fresh),
            lead => {
                let mut inner = Self::replay(broker, &config, &fresh)?;
                inner.loaded = Some(lead);
                inner
            }
        };
        Ok(Self {
            config,
            fresh,
            inner: Mutex::new(inner),
        })
    }

    fn unloaded(fresh: &(dyn Fn() -> S + Send + Sync)) -> Inner<S> {
        Inner {
            state: fresh(),
            since_snapshot: 0,
            live_keys: 0,
            failed: None,
            loaded: None,
        }
    }

    fn replay(
        broker: &Broker,
        config: &JournalConfig,
        fresh: &(dyn Fn() -> S + Send + Sync),
    ) -> Result<Inner<S>> {
        let mut inner = Self::unloaded(fresh);
        let mut bad = 0u64;
        broker.replay_internal(config.topic, config.partition, |r| {
            inner.since_snapshot += 1;
            if let Err(e) = inner.state.replay(r.key.as_deref(), r.value.as_deref()) {
                bad += 1;
                tracing::warn!(topic = config.topic, partition = config.partition, offset = r.offset, error = %e, "skipping internal record");
            }
        })?;
        if bad > 0 {
            tracing::warn!(
                topic = config.topic,
                partition = config.partition,
                skipped = bad,
                "internal records skipped during replay"
            );
        }
        Ok(inner)
    }

    /// The partition this journal owns.
    pub fn partition(&self) -> i32 {
        self.config.partition
    }

    /// Locks the state for a change. Fails with the reason while a failed
    /// write has left memory possibly ahead of the log; once the retry
    /// time has come, replays the log first.
    pub fn lock<'a>(
        &'a self,
        broker: &'a Broker,
    ) -> std::result::Result<JournalGuard<'a, S>, JournalError> {
        let mut inner = self.inner.lock();
        match broker.leadership(self.config.topic, self.config.partition) {
            Leadership::Elsewhere(leader) => {
                if inner.loaded.is_some() {
                    tracing::info!(
                        topic = self.config.topic,
                        partition = self.config.partition,
                        ?leader,
                        "another broker leads this shard now; state dropped"
                    );
                    *inner = Self::unloaded(&*self.fresh);
                }
                return Err(JournalError::NotLeader(leader));
            }
            lead if inner.loaded != Some(lead) => {
                // Newly led here (or in a new epoch): the log as this
                // leader holds it is the state.
                match Self::replay(broker, &self.config, &*self.fresh) {
                    Ok(mut fresh) => {
                        fresh.loaded = Some(lead);
                        tracing::info!(
                            topic = self.config.topic,
                            partition = self.config.partition,
                            ?lead,
                            "shard loaded"
                        );
                        *inner = fresh;
                    }
                    Err(e) => {
                        return Err(JournalError::Failed(format!(
                            "loading the shard failed: {}",
                            e.client_message()
                        )))
                    }
                }
            }
            _ => {}
        }
        if let Some((reason, retry_at)) = &inner.failed {
            if Instant::now() < *retry_at {
                return Err(JournalError::Failed(reason.clone()));
            }
            match Self::replay(broker, &self.config, &*self.fresh) {
                Ok(mut fresh) => {
                    tracing::info!(
                        topic = self.config.topic,
                        partition = self.config.partition,
                        "state replayed from the log after a failed write; serving again"
                    );
                    fresh.loaded = inner.loaded;
                    *inner = fresh;
                }
                Err(e) => {
                    tracing::error!(topic = self.config.topic, partition = self.config.partition, error = %e, "replaying the log after a failed write failed");
                    let reason =
                        format!("{reason}; replaying the log failed too (see the server's log)");
                    inner.failed = Some((reason.clone(), Instant::now() + RETRY_AFTER_FAILURE));
                    return Err(JournalError::Failed(reason));
                }
            }
        }
        Ok(JournalGuard {
            journal: self,
            broker,
            inner,
            snapshot_due: false,
        })
    }

    /// Reads the state as it is in memory (even after a failed write):
    /// for descriptions and metrics.
    pub fn peek<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        f(&self.inner.lock().state)
    }
}

impl<S: Journaled> Drop for JournalGuard<'_, S> {
    fn drop(&mut self) {
        if self.snapshot_due && self.inner.failed.is_none() {
            self.snapshot();
        }
    }
}

impl<S: Journaled> Deref for JournalGuard<'_, S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.inner.state
    }
}

impl<S: Journaled> DerefMut for JournalGuard<'_, S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.inner.state
    }
}

impl<S: Journaled> JournalGuard<'_, S> {
    /// The partition of the journal.
    pub fn partition(&self) -> i32 {
        self.journal.config.partition
    }

    /// Appends `records` (the changes just made, or about to be made
    /// before the guard is dropped); returns the offset of the first. A
    /// failure stops the shard until it replays its log (memory may now be
    /// ahead of it). A snapshot that comes due is written at drop.
    pub fn append(&mut self, records: Vec<NewRecord>) -> std::result::Result<i64, String> {
        if records.is_empty() {
            return Ok(-1);
        }
        let n = records.len() as u64;
        let base = match self.write(records) {
            Ok(base) => base,
            Err(reason) => {
                tracing::error!(topic = self.journal.config.topic, partition = self.journal.config.partition, error = %reason, "internal state write failed; the shard refuses calls until it has replayed its log");
                self.inner.failed = Some((reason.clone(), Instant::now() + RETRY_AFTER_FAILURE));
                return Err(reason);
            }
        };
        self.inner.since_snapshot += n;
        let min = self.journal.config.snapshot_min_records;
        if min > 0 && self.inner.since_snapshot > min.max(2 * self.inner.live_keys) {
            self.snapshot_due = true;
        }
        Ok(base)
    }

    /// One append; the error is the first failure's message.
    fn write(&self, records: Vec<NewRecord>) -> std::result::Result<i64, String> {
        let c = &self.journal.config;
        // In a cluster a change is answered once every in-sync replica
        // has it, so it survives the leader's loss.
        let all = c.durable
            || self
                .inner
                .loaded
                .is_some_and(|l| l != Leadership::Standalone);
        let appended = self
            .broker
            .append_internal(ProduceRequest {
                topic: c.topic.to_string(),
                partition: Some(c.partition),
                records,
                acks: if all { Acks::All } else { Acks::Leader },
                producer: None,
            })
            .map_err(|e| e.client_message())?;
        let result = if all {
            appended.durable_blocking()
        } else {
            appended.result()
        };
        match result.failures.first() {
            Some(f) => Err(f.error.client_message()),
            None => Ok(result.partitions.first().map_or(-1, |p| p.base_offset)),
        }
    }

    /// Rewrites every live key, then deletes the segments wholly before
    /// the snapshot (after syncing it). A failure here leaves the log
    /// longer, never wrong: replay applies the old records and then the
    /// snapshot's.
    fn snapshot(&mut self) {
        let c = self.journal.config;
        let recs = self.inner.state.snapshot();
        let live = recs.len() as u64;
        let anchor = match self.broker.list_offsets(c.topic, &[c.partition], None) {
            Ok(o) => o.first().map_or(0, |o| o.latest),
            Err(e) => {
                tracing::warn!(topic = c.topic, partition = c.partition, error = %e, "snapshot skipped");
                return;
            }
        };
        let mut chunk = Vec::with_capacity(1000);
        for r in recs {
            chunk.push(r);
            if chunk.len() == 1000 {
                if let Err(e) = self.write(std::mem::take(&mut chunk)) {
                    tracing::warn!(topic = c.topic, partition = c.partition, error = %e, "snapshot write failed");
                    return;
                }
            }
        }
        if let Err(e) = (!chunk.is_empty()).then(|| self.write(chunk)).transpose() {
            tracing::warn!(topic = c.topic, partition = c.partition, error = %e, "snapshot write failed");
            return;
        }
        self.inner.since_snapshot = 0;
        self.inner.live_keys = live;
        match self
            .broker
            .delete_internal_before(c.topic, c.partition, anchor)
        {
            Ok(new_start) => tracing::debug!(
                topic = c.topic,
                partition = c.partition,
                live,
                snapshot_at = anchor,
                new_start,
                "internal snapshot written"
            ),
            Err(e) => {
                tracing::warn!(topic = c.topic, partition = c.partition, error = %e, "deleting segments before a snapshot failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::*;
    use crate::broker::BrokerConfig;

    /// Keys and values; a record without a value deletes its key.
    #[derive(Default)]
    struct Kv(BTreeMap<Vec<u8>, Vec<u8>>);

    impl Journaled for Kv {
        fn replay(
            &mut self,
            key: Option<&[u8]>,
            value: Option<&[u8]>,
        ) -> std::result::Result<(), String> {
            let key = key.ok_or("no key")?.to_vec();
            match value {
                Some(v) => self.0.insert(key, v.to_vec()),
                None => self.0.remove(&key),
            };
            Ok(())
        }

        fn snapshot(&self) -> Vec<NewRecord> {
            self.0.iter().map(|(k, v)| record(k, Some(v))).collect()
        }
    }

    fn record(k: &[u8], v: Option<&[u8]>) -> NewRecord {
        NewRecord {
            key: Some(Bytes::copy_from_slice(k)),
            value: v.map(Bytes::copy_from_slice),
            ..NewRecord::default()
        }
    }

    const TOPIC: &str = "__journal_test";

    const CONFIG: JournalConfig = JournalConfig {
        topic: TOPIC,
        partition: 0,
        snapshot_min_records: 4,
        durable: false,
    };

    fn open(broker: &Broker) -> Journal<Kv> {
        broker
            .ensure_internal_topic(TOPIC, 1, journal_topic_config(64 * 1024))
            .expect("topic");
        Journal::open(broker, CONFIG, Kv::default).expect("journal")
    }

    /// What a replay of the log gives now.
    fn replayed(broker: &Broker) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let fresh: &(dyn Fn() -> Kv + Send + Sync) = &Kv::default;
        Journal::replay(broker, &CONFIG, fresh)
            .expect("replay")
            .state
            .0
    }

    /// Callers append a change and then apply it (a deletion most of
    /// all). A snapshot between the two would write the deleted key again
    /// after its tombstone; snapshots wait for the guard's drop.
    #[test]
    fn a_snapshot_never_resurrects_what_the_same_call_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Broker::open(BrokerConfig::new(dir.path())).expect("broker");
        let journal = open(&broker);
        for round in 0..3000u32 {
            let key = format!("k{}", round % 7).into_bytes();
            let mut g = journal.lock(&broker).expect("lock");
            if round % 3 == 2 {
                g.append(vec![record(&key, None)]).expect("append");
                g.0.remove(&key);
            } else {
                let v = round.to_be_bytes();
                g.append(vec![record(&key, Some(&v))]).expect("append");
                g.0.insert(key, v.to_vec());
            }
            drop(g);
            let live = journal.peek(|s| s.0.clone());
            assert_eq!(replayed(&broker), live, "after round {round}");
        }
        let live: BTreeMap<Vec<u8>, Vec<u8>> = journal.peek(|s| s.0.clone());
        let start = broker.list_offsets(TOPIC, &[0], None).expect("offsets")[0].earliest;
        drop(journal);
        broker.close();
        drop(broker);
        let broker = Broker::open(BrokerConfig::new(dir.path())).expect("broker");
        let journal = open(&broker);
        assert_eq!(journal.peek(|s| s.0.clone()), live);
        assert!(start > 0, "snapshots purged the history before them");
        drop(journal);
        broker.close();
    }
}
