//! Fetch: reading records (checksums verified by the log), long polls
//! that wait on a partition's high watermark, subscriptions, and offsets
//! by position or time.

use super::*;

/// How much one read returns, and whether only committed records.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadLimits {
    max_records: usize,
    max_bytes: usize,
    committed: bool,
}

impl ReadLimits {
    pub(super) fn committed(max_records: usize, max_bytes: usize) -> Self {
        Self {
            max_records,
            max_bytes,
            committed: true,
        }
    }
}

/// The error of a failed read: damage on disk is logged with its file and
/// reported to the client by its offsets only.
fn read_error(topic: &Topic, part: &Partition, e: StorageError) -> BrokerError {
    match e {
        StorageError::DamagedBatch {
            path,
            from,
            to,
            reason,
        } => {
            tracing::error!(topic = %topic.name, partition = part.id, path = %path.display(), from, to, %reason, "damaged batch on disk");
            BrokerError::DamagedRecords {
                topic: topic.name.to_string(),
                partition: part.id,
                from,
                to,
                reason: "checksum or framing mismatch".into(),
            }
        }
        e => BrokerError::Storage(e),
    }
}

/// A read from one partition.
#[derive(Debug, Clone, Copy)]
pub struct FetchRequest<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// First offset.
    pub offset: i64,
    /// Records at most (0: default).
    pub max_records: i32,
    /// Bytes about (0: default).
    pub max_bytes: i32,
    /// Long-poll wait, ms.
    pub max_wait_ms: i32,
}

/// A record read back. Key, value and header values share the log's
/// memory (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecord {
    /// Offset.
    pub offset: i64,
    /// Timestamp, ms.
    pub timestamp: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<Header>,
}

impl FetchedRecord {
    /// Copies the keys, values and header values of `records` out of the
    /// log's mappings into one buffer they then share, so that holding
    /// them for long (a work queue's window) does not keep segment files
    /// mapped, nor the disk space of segments deleted since.
    pub fn detach_all(records: &mut [FetchedRecord]) {
        let fields = |r: &FetchedRecord| {
            let headers = r.headers.iter().filter_map(|h| h.value.as_ref());
            r.key
                .iter()
                .chain(r.value.iter())
                .chain(headers)
                .map(Bytes::len)
                .sum::<usize>()
        };
        let total: usize = records.iter().map(fields).sum();
        let mut buf = Vec::with_capacity(total);
        for r in records.iter() {
            let headers = r.headers.iter().filter_map(|h| h.value.as_ref());
            for b in r.key.iter().chain(r.value.iter()).chain(headers) {
                buf.extend_from_slice(b);
            }
        }
        let buf = Bytes::from(buf);
        let mut at = 0;
        let mut take = |b: &mut Bytes| {
            let n = b.len();
            *b = buf.slice(at..at + n);
            at += n;
        };
        for r in records.iter_mut() {
            if let Some(k) = r.key.as_mut() {
                take(k);
            }
            if let Some(v) = r.value.as_mut() {
                take(v);
            }
            for h in r.headers.iter_mut() {
                if let Some(v) = h.value.as_mut() {
                    take(v);
                }
            }
        }
    }
}

/// Records read from one partition.
#[derive(Debug, Clone, Default)]
pub struct FetchResult {
    /// The records, in offset order.
    pub records: Vec<FetchedRecord>,
    /// Offset to read next.
    pub next_offset: i64,
    /// Log start offset.
    pub log_start_offset: i64,
    /// High watermark.
    pub high_watermark: i64,
}

/// Records read from one partition, left in their stored batches
/// (checksum-verified, each record in range decoded once already):
/// transports encode replies straight from these bytes, with no
/// allocation per record.
#[derive(Debug, Clone, Default)]
pub struct StoredRecords {
    /// Whole batches, from the one holding `from` to the one holding the
    /// last record of the read; the log's mapped memory, not a copy.
    data: Bytes,
    from: i64,
    count: usize,
    /// Offset to read next.
    pub next_offset: i64,
    /// Log start offset.
    pub log_start_offset: i64,
    /// High watermark.
    pub high_watermark: i64,
}

impl StoredRecords {
    /// Records in the read.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No records.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the batches the records are in.
    pub fn stored_bytes(&self) -> usize {
        self.data.len()
    }

    /// The records, in offset order. They decoded when read, so this
    /// yields exactly [`StoredRecords::len`] of them.
    pub fn iter(&self) -> impl Iterator<Item = RecordView<'_>> + '_ {
        let from = self.from;
        BatchIter::new(&self.data)
            .map_while(|b| b.ok())
            .flat_map(|b| b.records().map_while(|r| r.ok()))
            .filter(move |r| r.offset >= from)
            .take(self.count)
    }

    /// The records of `data` (whole batches) from offset `from` below
    /// `end`, at most `max_records`: one pass decodes each of them, to
    /// count them and to find damage a checksum cannot (an error gives
    /// the offsets it covers, `i64::MAX` for "to the end"). The batches
    /// after the last record taken are dropped.
    pub(crate) fn select(
        data: Bytes,
        from: i64,
        max_records: usize,
        end: i64,
    ) -> std::result::Result<Self, (i64, i64, crate::storage::BatchError)> {
        let mut count = 0usize;
        let mut next_offset = from;
        // End of the last batch that holds a record of the read.
        let mut used = 0usize;
        let mut iter = BatchIter::new(&data);
        'batches: while let Some(batch) = iter.next() {
            let batch = batch.map_err(|e| (from, i64::MAX, e))?;
            if batch.next_offset() <= from {
                continue;
            }
            for rec in batch.records() {
                let rec = rec.map_err(|e| (batch.base_offset(), batch.next_offset(), e))?;
                if rec.offset < from {
                    continue;
                }
                if count >= max_records || rec.offset >= end {
                    break 'batches;
                }
                count += 1;
                next_offset = rec.offset + 1;
                used = iter.position();
            }
        }
        Ok(Self {
            data: data.slice(..used),
            from,
            count,
            next_offset,
            log_start_offset: 0,
            high_watermark: end,
        })
    }

    /// Shares a part of the batches (a key or a value) without a copy.
    pub fn share(&self, part: &[u8]) -> Bytes {
        self.data.slice_ref(part)
    }

    /// The records as owned values (sharing the log's memory).
    pub fn into_result(self) -> FetchResult {
        let records = self
            .iter()
            .map(|rec| FetchedRecord {
                offset: rec.offset,
                timestamp: rec.timestamp,
                key: rec.key.map(|k| self.share(k)),
                value: rec.value.map(|v| self.share(v)),
                headers: rec
                    .headers()
                    .map(|h| Header {
                        key: String::from_utf8_lossy(h.key).into_owned(),
                        value: h.value.map(|v| self.share(v)),
                    })
                    .collect(),
            })
            .collect();
        FetchResult {
            records,
            next_offset: self.next_offset,
            log_start_offset: self.log_start_offset,
            high_watermark: self.high_watermark,
        }
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// This offset.
    Offset(i64),
    /// First record at or after this timestamp (ms).
    Timestamp(i64),
    /// Oldest record held.
    Earliest,
    /// Records appended from now on.
    Latest,
}

/// Offsets of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// Partition.
    pub partition: i32,
    /// Log start offset.
    pub earliest: i64,
    /// High watermark.
    pub latest: i64,
    /// First offset at or after the timestamp asked for (`Some(-1)` if
    /// none); `None` if none was asked for.
    pub for_timestamp: Option<i64>,
}

/// A live read of one partition; see [`Broker::subscribe`].
pub struct Subscription {
    broker: Arc<Broker>,
    topic: Arc<Topic>,
    part: Arc<Partition>,
    next: i64,
    max_records: usize,
    max_bytes: usize,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic.name)
            .field("partition", &self.part.id)
            .field("next", &self.next)
            .finish()
    }
}

impl Subscription {
    /// Offset of the next record to deliver.
    pub fn position(&self) -> i64 {
        self.next
    }

    /// The next records: at once if there are any, else as soon as some
    /// are appended. Fails when the topic is deleted, the server shuts down,
    /// or retention removed the position.
    pub async fn next(&mut self) -> Result<StoredRecords> {
        loop {
            if self.part.is_deleted() {
                return Err(BrokerError::TopicDeleted {
                    topic: self.topic.name.to_string(),
                });
            }
            self.broker.check_running()?;
            let out = self.broker.read_stored_visible(
                &self.topic,
                &self.part,
                self.next,
                ReadLimits::committed(self.max_records, self.max_bytes),
            )?;
            if !out.is_empty() {
                self.next = out.next_offset;
                return Ok(out);
            }
            self.broker.wait_beyond(&self.part, self.next, None).await?;
        }
    }
}

impl Broker {
    pub(super) fn fetch_limits(max_records: i32, max_bytes: i32) -> Result<(usize, usize)> {
        let records = match max_records {
            0 => DEFAULT_FETCH_RECORDS,
            n if (1..=MAX_FETCH_RECORDS).contains(&n) => n,
            n => {
                return Err(BrokerError::invalid(format!(
                "max_records {n} must be in [0, {MAX_FETCH_RECORDS}] (0: {DEFAULT_FETCH_RECORDS})"
            )))
            }
        };
        let bytes = match max_bytes {
            0 => DEFAULT_FETCH_BYTES,
            n if (1..=MAX_FETCH_BYTES).contains(&n) => n,
            n => {
                return Err(BrokerError::invalid(format!(
                    "max_bytes {n} must be in [0, {MAX_FETCH_BYTES}] (0: {DEFAULT_FETCH_BYTES})"
                )))
            }
        };
        Ok((records as usize, bytes as usize))
    }

    /// Reads committed records at `offset` without waiting.
    pub(super) fn read(
        &self,
        topic: &Topic,
        part: &Partition,
        offset: i64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<FetchResult> {
        self.read_visible(topic, part, offset, max_records, max_bytes, true)
    }

    /// Reads records at `offset` without waiting: committed ones only, or
    /// (`committed` false, for a new leader replaying its own log) up to
    /// the log end.
    pub(super) fn read_visible(
        &self,
        topic: &Topic,
        part: &Partition,
        offset: i64,
        max_records: usize,
        max_bytes: usize,
        committed: bool,
    ) -> Result<FetchResult> {
        let limits = ReadLimits {
            max_records,
            max_bytes,
            committed,
        };
        self.read_stored_visible(topic, part, offset, limits)
            .map(StoredRecords::into_result)
    }

    /// [`Broker::read_visible`], the records left in their batches.
    pub(super) fn read_stored_visible(
        &self,
        topic: &Topic,
        part: &Partition,
        offset: i64,
        limits: ReadLimits,
    ) -> Result<StoredRecords> {
        part.check_readable()?;
        let log = self.log_of(topic, part)?;
        // Sealed segments are likely cold: their page faults block the
        // thread, so the runtime moves its other tasks elsewhere.
        if offset < log.active_segment_base() {
            return blocking_section(|| self.read_stored(topic, part, &log, offset, limits));
        }
        self.read_stored(topic, part, &log, offset, limits)
    }

    pub(super) fn read_log(
        &self,
        topic: &Topic,
        part: &Partition,
        log: &Log,
        offset: i64,
        limits: ReadLimits,
    ) -> Result<FetchResult> {
        self.read_stored(topic, part, log, offset, limits)
            .map(StoredRecords::into_result)
    }

    /// Reads records at `offset` as they are stored: one pass decodes
    /// each record in range once (to count them and to find damage the
    /// checksum cannot), and nothing is copied or allocated per record.
    pub(super) fn read_stored(
        &self,
        topic: &Topic,
        part: &Partition,
        log: &Log,
        offset: i64,
        limits: ReadLimits,
    ) -> Result<StoredRecords> {
        let ReadLimits {
            max_records,
            max_bytes,
            committed,
        } = limits;
        let read = log
            .read_records(offset, max_bytes, max_records)
            .map_err(|e| read_error(topic, part, e))?;
        // Only committed records are served: those below the high
        // watermark (every in-sync replica has them).
        let hwm = if committed {
            part.known_end()
                .unwrap_or(read.log_start_offset)
                .clamp(read.log_start_offset, read.log_end_offset)
        } else {
            read.log_end_offset
        };
        // Batches come checksum-verified; a record that still fails to
        // decode is reported like any damage, without server paths.
        let mut out = StoredRecords::select(read.data, offset, max_records, hwm).map_err(
            |(from, to, e)| BrokerError::DamagedRecords {
                topic: topic.name.to_string(),
                partition: part.id,
                from,
                to: if to == i64::MAX {
                    read.log_end_offset
                } else {
                    to
                },
                reason: e.to_string(),
            },
        )?;
        out.log_start_offset = read.log_start_offset;
        if !out.is_empty() {
            topic.metrics.fetch_records.increment(out.count as u64);
            topic.metrics.fetch_bytes.increment(out.data.len() as u64);
        }
        Ok(out)
    }

    /// Waits until the partition's high watermark passes `offset`. Returns
    /// false if `deadline` passed first.
    pub(super) async fn wait_beyond(
        &self,
        part: &Partition,
        offset: i64,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        let mut end = part.watch_end();
        let mut shutdown = self.shutdown.subscribe();
        let arrived =
            end.wait_for(|e| *e > offset || part.is_deleted() || part.check_readable().is_err());
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = arrived => {
                if r.is_err() || part.is_deleted() {
                    return Err(BrokerError::TopicDeleted { topic: part.topic.to_string() });
                }
                part.check_readable()?;
                Ok(true)
            }
            _ = shutdown.wait_for(|s| *s) => Err(BrokerError::ShuttingDown),
            _ = sleep => Ok(false),
        }
    }

    /// Reads records from one partition, waiting up to `max_wait_ms` for
    /// records at `offset` if there are none yet.
    pub async fn fetch(&self, req: FetchRequest<'_>) -> Result<StoredRecords> {
        let (max_records, max_bytes) = Self::fetch_limits(req.max_records, req.max_bytes)?;
        if !(0..=MAX_WAIT_MS).contains(&req.max_wait_ms) {
            return Err(BrokerError::invalid(format!(
                "max_wait_ms {} must be in [0, {MAX_WAIT_MS}]",
                req.max_wait_ms
            )));
        }
        let topic = self.topic(req.topic)?;
        let part = topic.partition(req.partition)?;
        let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms as u64);
        loop {
            let limits = ReadLimits::committed(max_records, max_bytes);
            let out = self.read_stored_visible(&topic, &part, req.offset, limits)?;
            if !out.is_empty() || req.max_wait_ms == 0 {
                return Ok(out);
            }
            if !self.wait_beyond(&part, req.offset, Some(deadline)).await? {
                return Ok(out);
            }
        }
    }

    pub(super) fn resolve(
        &self,
        topic: &Topic,
        part: &Partition,
        position: Position,
    ) -> Result<i64> {
        part.check_readable()?;
        let log = self.log_of(topic, part)?;
        let (start, end) = (log.start_offset(), log.end_offset());
        let hwm = part.known_end().unwrap_or(start).clamp(start, end);
        Ok(match position {
            Position::Offset(o) => {
                if o < start || o > end {
                    return Err(StorageError::OffsetOutOfRange {
                        offset: o,
                        start,
                        end,
                    }
                    .into());
                }
                o
            }
            Position::Earliest => start,
            Position::Latest => hwm,
            Position::Timestamp(t) => log.offset_for_timestamp(t)?.unwrap_or(hwm).min(hwm),
        })
    }

    /// A subscription to one partition from `start`: history first, then
    /// live records.
    pub fn subscribe(
        self: &Arc<Self>,
        topic: &str,
        partition: i32,
        start: Position,
        max_records: i32,
        max_bytes: i32,
    ) -> Result<Subscription> {
        self.check_running()?;
        let asked = max_bytes;
        let (max_records, max_bytes) = Self::fetch_limits(max_records, max_bytes)?;
        // A subscription's messages wait in memory for a reader that may
        // be slow: keep them small.
        let max_bytes = if asked == 0 {
            DEFAULT_SUBSCRIBE_BYTES
        } else {
            max_bytes.min(MAX_SUBSCRIBE_BYTES)
        };
        let topic = self.topic(topic)?;
        let part = topic.partition(partition)?;
        let next = self.resolve(&topic, &part, start)?;
        Ok(Subscription {
            broker: self.clone(),
            topic,
            part,
            next,
            max_records,
            max_bytes,
        })
    }

    /// Earliest and latest offsets (and the offset for `timestamp`) of the
    /// given partitions (all if empty).
    pub fn list_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
        timestamp: Option<i64>,
    ) -> Result<Vec<PartitionOffsets>> {
        let topic = self.topic(topic)?;
        let parts: Vec<Arc<Partition>> = if partitions.is_empty() {
            topic.partitions().iter().cloned().collect()
        } else {
            partitions
                .iter()
                .map(|&p| topic.partition(p))
                .collect::<Result<_>>()?
        };
        parts
            .iter()
            .map(|p| {
                p.check_readable()?;
                let log = self.log_of(&topic, p)?;
                let (start, end) = (log.start_offset(), log.end_offset());
                Ok(PartitionOffsets {
                    partition: p.id,
                    earliest: start,
                    latest: p.known_end().unwrap_or(start).clamp(start, end),
                    for_timestamp: match timestamp {
                        Some(t) => Some(log.offset_for_timestamp(t)?.unwrap_or(-1)),
                        None => None,
                    },
                })
            })
            .collect()
    }
}

/// Stored record batches of one partition, as they are on disk.
#[derive(Debug, Clone, Default)]
pub struct BatchRead {
    /// Whole batches from the one holding the offset asked for, up to the
    /// high watermark and about the byte budget (at least one batch);
    /// the log's mapped memory, not a copy.
    pub data: Bytes,
    /// High watermark: batches at or past it are not served.
    pub high_watermark: i64,
    /// Log start offset.
    pub log_start_offset: i64,
    /// Offset after the last batch (the offset asked for if none).
    pub next_offset: i64,
}

impl Broker {
    /// Reads stored batches of one partition at `offset` without waiting,
    /// committed ones only (below the high watermark), for transports
    /// that send batches as they are (the Kafka listener). An offset
    /// between the high watermark and the log end reads nothing; one
    /// outside the log is out of range.
    pub fn read_batches(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<BatchRead> {
        let topic = self.topic(topic)?;
        let part = topic.partition(partition)?;
        part.check_readable()?;
        let log = self.log_of(&topic, &part)?;
        let (start, end) = (log.start_offset(), log.end_offset());
        let hwm = part.known_end().unwrap_or(start).clamp(start, end);
        if offset < start || offset > end {
            return Err(StorageError::OffsetOutOfRange { offset, start, end }.into());
        }
        let mut out = BatchRead {
            data: Bytes::new(),
            high_watermark: hwm,
            log_start_offset: start,
            next_offset: offset,
        };
        if offset >= hwm {
            return Ok(out);
        }
        let read = |l: &Log| l.read(offset, max_bytes.max(1));
        let read = if offset < log.active_segment_base() {
            blocking_section(|| read(&log))
        } else {
            read(&log)
        };
        let data = read.map_err(|e| read_error(&topic, &part, e))?.data;
        // Whole batches below the high watermark.
        let mut keep = 0usize;
        while let Some(len) = crate::storage::batch::framed_len(&data[keep..]) {
            let Ok(len) = usize::try_from(len) else { break };
            let Some(batch) = data.get(keep..keep + len) else {
                break;
            };
            let Ok(view) = crate::storage::BatchView::parse(batch) else {
                break;
            };
            if view.next_offset() > hwm {
                break;
            }
            out.next_offset = view.next_offset();
            keep += len;
        }
        if keep > 0 {
            topic.metrics.fetch_bytes.increment(keep as u64);
        }
        out.data = data.slice(..keep);
        Ok(out)
    }

    /// Reads stored batches of one partition (see
    /// [`Broker::read_batches`]), waiting up to `max_wait_ms` for records
    /// at `offset` if there are none yet.
    pub async fn fetch_batches(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<BatchRead> {
        let (_, max_bytes) = Self::fetch_limits(0, max_bytes)?;
        if !(0..=MAX_WAIT_MS).contains(&max_wait_ms) {
            return Err(BrokerError::invalid(format!(
                "max_wait_ms {max_wait_ms} must be in [0, {MAX_WAIT_MS}]"
            )));
        }
        let deadline = Instant::now() + Duration::from_millis(max_wait_ms as u64);
        loop {
            let out = self.read_batches(topic, partition, offset, max_bytes)?;
            if !out.data.is_empty() || max_wait_ms == 0 {
                return Ok(out);
            }
            let part = self.topic(topic)?.partition(partition)?;
            if !self.wait_beyond(&part, offset, Some(deadline)).await? {
                return Ok(out);
            }
        }
    }

    /// Waits until the high watermark of any of `wanted` (topic, partition,
    /// offset) passes its offset, or `deadline`. False if the deadline
    /// came first (or nothing could be waited on).
    pub async fn wait_for_any(&self, wanted: &[(&str, i32, i64)], deadline: Instant) -> bool {
        let mut waits = Vec::new();
        for &(t, p, offset) in wanted {
            let Ok(topic) = self.topic(t) else { continue };
            let Ok(part) = topic.partition(p) else {
                continue;
            };
            waits.push(async move {
                matches!(
                    self.wait_beyond(&part, offset, Some(deadline)).await,
                    Ok(true)
                )
            });
        }
        if waits.is_empty() {
            tokio::time::sleep_until(deadline).await;
            return false;
        }
        let waits = waits.into_iter().map(Box::pin);
        futures_util::future::select_all(waits).await.0
    }
}
