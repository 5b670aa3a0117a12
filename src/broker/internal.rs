//! Internal topics: how the coordinators append, read, replay and compact
//! their state.

use super::replication::Role;
use super::*;

/// Reads of partitions led by other brokers, from their leaders: what the
/// coordinators need of partitions this broker holds no readable copy of.
/// The cluster's transport implements it; calls block (they run on
/// blocking threads).
pub trait RemoteReads: Send + Sync {
    /// Committed records of `topic`'s `partition` from `offset`.
    fn read(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<FetchResult>;
    /// The partition's offsets.
    fn offsets(
        &self,
        topic: &str,
        partition: i32,
        timestamp: Option<i64>,
    ) -> Result<PartitionOffsets>;
}

/// Who serves a partition, as this broker knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leadership {
    /// A single node: this broker, always.
    Standalone,
    /// This broker, in this leader epoch.
    Leader(i32),
    /// Another broker (if known).
    Elsewhere(Option<u64>),
}

fn part_not_led(part: &Partition) -> BrokerError {
    BrokerError::NotLeader {
        topic: part.topic.to_string(),
        partition: part.id,
        leader: None,
    }
}

impl Broker {
    /// Appends to an internal topic (the coordinator's state).
    pub(crate) fn append_internal(&self, req: ProduceRequest) -> Result<Appended> {
        debug_assert!(is_internal_topic(&req.topic));
        self.append_unchecked(req)
    }

    /// Reads an internal topic's partition from `offset` without waiting.
    pub(crate) fn read_internal(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<FetchResult> {
        let topic = self.topic(topic)?;
        let part = topic.partition(partition)?;
        // A new leader's whole log is the truth from now on (followers
        // cut theirs to it): replay it all, committed or not.
        self.read_visible(&topic, &part, offset, usize::MAX, max_bytes, false)
    }

    /// Calls `f` with every record of an internal partition, from where the
    /// log starts now (snapshots delete older segments) to its end: how the
    /// coordinators rebuild their state on start.
    pub(crate) fn replay_internal(
        &self,
        topic: &str,
        partition: i32,
        mut f: impl FnMut(&FetchedRecord),
    ) -> Result<()> {
        let mut offset = {
            let t = self.topic(topic)?;
            let p = t.partition(partition)?;
            self.log_of(&t, &p)?.start_offset()
        };
        loop {
            let read = self.read_internal(topic, partition, offset, 4 << 20)?;
            if read.records.is_empty() {
                return Ok(());
            }
            read.records.iter().for_each(&mut f);
            offset = read.next_offset;
            if offset >= read.high_watermark {
                return Ok(());
            }
        }
    }

    /// Reads any topic's partition from `offset` without waiting (the
    /// work-queue coordinator's reads).
    pub(crate) fn read_records(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<FetchResult> {
        let t = self.topic(topic)?;
        let part = t.partition(partition)?;
        match part.replica.role() {
            Role::Standalone | Role::Leader(_) => {
                self.read(&t, &part, offset, max_records, max_bytes)
            }
            // A follower's copy below its high watermark is committed.
            Role::Follower { .. } => self.read_follower(&t, &part, offset, max_records, max_bytes),
            Role::Offline { .. } => self
                .remote_reads()
                .ok_or_else(|| part_not_led(&part))?
                .read(topic, partition, offset, max_records, max_bytes),
        }
    }

    /// The offsets of `partitions` of `topic` (all if empty) wherever they
    /// are led: this broker's copy when it has a readable one, else the
    /// leader's (the coordinators' view of any partition).
    pub(crate) fn offsets_anywhere(
        &self,
        topic: &str,
        partitions: &[i32],
        timestamp: Option<i64>,
    ) -> Result<Vec<PartitionOffsets>> {
        let t = self.topic(topic)?;
        let ids: Vec<i32> = if partitions.is_empty() {
            (0..t.partitions().len() as i32).collect()
        } else {
            partitions.to_vec()
        };
        ids.iter()
            .map(|&p| {
                let part = t.partition(p)?;
                match part.replica.role() {
                    Role::Standalone | Role::Leader(_) => self
                        .list_offsets(topic, &[p], timestamp)?
                        .pop()
                        .ok_or_else(|| part_not_led(&part)),
                    _ => self
                        .remote_reads()
                        .ok_or_else(|| part_not_led(&part))?
                        .offsets(topic, p, timestamp),
                }
            })
            .collect()
    }

    /// The partitions' leaders' reads, in a cluster.
    fn remote_reads(&self) -> Option<Arc<dyn RemoteReads>> {
        self.remote.read().clone()
    }

    /// Installs the reader of partitions led by other brokers (the
    /// cluster's transport).
    pub fn set_remote_reads(&self, remote: Arc<dyn RemoteReads>) {
        *self.remote.write() = Some(remote);
    }

    /// Whether this broker leads `topic`'s `partition` now (or runs alone),
    /// and in which leader epoch; otherwise the leader, if known.
    pub(crate) fn leadership(&self, topic: &str, partition: i32) -> Leadership {
        let Ok(part) = self.topic(topic).and_then(|t| t.partition(partition)) else {
            return Leadership::Elsewhere(None);
        };
        match part.replica.role() {
            Role::Standalone => Leadership::Standalone,
            Role::Leader(l) => Leadership::Leader(l.epoch()),
            Role::Follower { leader, .. } => Leadership::Elsewhere(Some(leader)),
            Role::Offline { leader } => Leadership::Elsewhere(leader),
        }
    }

    /// A partition's high watermark as last published, without opening
    /// its log (`None` if unknown): lets a reader skip a read that would
    /// find nothing.
    pub(crate) fn known_end(&self, topic: &str, partition: i32) -> Option<i64> {
        self.topic(topic)
            .ok()?
            .partition(partition)
            .ok()?
            .known_end()
    }

    /// Deletes an internal partition's sealed segments wholly below
    /// `offset` (compaction by snapshot). Returns the new start offset.
    pub(crate) fn delete_internal_before(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<i64> {
        let topic = self.topic(topic)?;
        let part = topic.partition(partition)?;
        let log = self.log_of(&topic, &part)?;
        Ok(log.delete_before(offset)?)
    }
}
