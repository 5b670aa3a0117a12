//! Internal topics: how the coordinators append, read, replay and compact
//! their state.

use super::*;

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
        self.read(&topic, &part, offset, usize::MAX, max_bytes)
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
        let mut offset = self
            .list_offsets(topic, &[partition], None)?
            .first()
            .map_or(0, |o| o.earliest);
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
        let topic = self.topic(topic)?;
        let part = topic.partition(partition)?;
        self.read(&topic, &part, offset, max_records, max_bytes)
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
