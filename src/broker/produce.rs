//! Produce: requests and results, splitting a partition's records into
//! batches, appending them, and waiting for durability without holding a
//! thread.

use super::*;

/// Most records in one produce request (the gRPC codec refuses more before
/// decoding them).
pub const MAX_RECORDS_PER_REQUEST: usize = 100_000;
/// Most headers on one record.
pub const MAX_HEADERS_PER_RECORD: usize = 128;
/// Most bytes of header keys and values (with their framing) on one record.
pub const MAX_HEADER_BYTES_PER_RECORD: usize = 64 * 1024;

/// Durability a producer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// No acknowledgement: offsets and append errors are not reported.
    None,
    /// Appended to the log.
    #[default]
    Leader,
    /// Flushed to disk.
    All,
}

/// A header of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Key.
    pub key: String,
    /// Value; `None` for null.
    pub value: Option<Bytes>,
}

/// A record to append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRecord {
    /// Key; `None` for null.
    pub key: Option<Bytes>,
    /// Value; `None` for null.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<Header>,
    /// Timestamp (ms); `None` takes the broker's clock.
    pub timestamp: Option<i64>,
    /// Explicit partition, overriding the request's.
    pub partition: Option<i32>,
}

/// Records to append to one topic.
#[derive(Debug, Clone, Default)]
pub struct ProduceRequest {
    /// Topic name.
    pub topic: String,
    /// Partition for records that name none.
    pub partition: Option<i32>,
    /// The records.
    pub records: Vec<NewRecord>,
    /// Durability asked for.
    pub acks: Acks,
    /// Set by an idempotent producer: the request's records all go to
    /// `partition` and are numbered from `base_sequence`.
    pub producer: Option<IdempotentBatch>,
}

/// An idempotent producer's numbering of one request's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotentBatch {
    /// From [`Broker::init_producer`].
    pub producer_id: i64,
    /// From [`Broker::init_producer`].
    pub producer_epoch: i16,
    /// Sequence of the request's first record in its partition, counted
    /// from 0 per partition and producer epoch.
    pub base_sequence: i32,
}

/// Records a request appended to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionAppend {
    /// Partition.
    pub partition: i32,
    /// Offset of the first record; the others follow in request order.
    pub base_offset: i64,
    /// Records appended.
    pub record_count: i32,
    /// An idempotent producer's retry: the records had been appended
    /// before, and the offsets are theirs.
    pub duplicate: bool,
}

/// A record that was not appended.
#[derive(Debug, Clone)]
pub struct RecordFailure {
    /// Index in the request.
    pub index: usize,
    /// Why (shared by all records of a failed batch).
    pub error: Arc<BrokerError>,
}

/// Outcome of a produce.
#[derive(Debug, Clone, Default)]
pub struct ProduceResult {
    /// Per partition, in partition order.
    pub partitions: Vec<PartitionAppend>,
    /// Records that failed.
    pub failures: Vec<RecordFailure>,
}

/// Records appended but not yet as durable as asked: call
/// [`Appended::durable`].
#[must_use]
pub struct Appended {
    result: ProduceResult,
    /// Partitions to make durable before answering (acks=ALL, or a flush
    /// the policy wants): the partition, its log, the end to flush to, and
    /// the request indices of its records (to fail them if the flush fails).
    flush: Vec<PendingFlush>,
    io: Arc<IoPool>,
    replication: ReplicationConfig,
}

pub(super) struct PendingFlush {
    part: Arc<Partition>,
    log: Arc<Log>,
    end: i64,
    indices: Vec<usize>,
    /// acks=ALL: wait for the in-sync replicas too.
    replicate: bool,
    /// The leader epoch the records were appended in (`None`: standalone).
    epoch: Option<i32>,
}

impl Appended {
    /// Whether answering must wait for a flush ([`Appended::durable`]).
    pub fn needs_flush(&self) -> bool {
        !self.flush.is_empty()
    }

    /// Waits, without blocking a thread, until the records are as durable
    /// as asked (flushes run on the broker's I/O threads, shared by every
    /// waiter of the same partition). Partitions whose flush fails move to
    /// the failures.
    pub async fn durable(self) -> ProduceResult {
        let mut result = self.result;
        // Waiters first, then one flush request per partition not yet
        // durable, then the waits: every partition syncs in parallel.
        let waiters: Vec<_> = self
            .flush
            .iter()
            .map(|f| f.part.durable_waiter(f.end))
            .collect();
        for (f, w) in self.flush.iter().zip(&waiters) {
            if w.is_some() {
                self.io.flush(&f.log);
            }
        }
        let mut replicate = Vec::new();
        for (f, w) in self.flush.into_iter().zip(waiters) {
            if let Some(w) = w {
                if let Err(e) = w.wait().await {
                    fail_partition(&mut result, f.part.id, f.indices, e);
                    continue;
                }
            }
            if f.replicate {
                replicate.push(f);
            }
        }
        // Then every in-sync replica (each partition replicates on its
        // own meanwhile, so waiting in turn costs nothing).
        let fsync = self.replication.ack_requires_fsync;
        for f in replicate {
            // The local sync may have moved what the ISR has synced.
            f.part.appended(&f.log, f.log.end_offset());
            if let Err(e) = f
                .part
                .wait_replicated(f.end, f.epoch, fsync, self.replication.ack_timeout)
                .await
            {
                fail_partition(&mut result, f.part.id, f.indices, e);
            }
        }
        result.failures.sort_by_key(|f| f.index);
        result
    }

    /// Like [`Appended::durable`], blocking the thread (for blocking
    /// callers such as the producer-id allocator).
    pub fn durable_blocking(self) -> ProduceResult {
        let mut result = self.result;
        for f in self.flush {
            if let Err(e) = f.log.flush_until(f.end) {
                fail_partition(&mut result, f.part.id, f.indices, Arc::new(e.into()));
                continue;
            }
            // A cluster's leader (so inside the runtime, on a blocking
            // thread): wait for the in-sync replicas too.
            if f.replicate && f.epoch.is_some() {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    continue;
                };
                f.part.appended(&f.log, f.log.end_offset());
                let waited = rt.block_on(f.part.wait_replicated(
                    f.end,
                    f.epoch,
                    self.replication.ack_requires_fsync,
                    self.replication.ack_timeout,
                ));
                if let Err(e) = waited {
                    fail_partition(&mut result, f.part.id, f.indices, e);
                }
            }
        }
        result.failures.sort_by_key(|f| f.index);
        result
    }

    /// The result without waiting for durability; flushes the policy wants
    /// are started on the I/O threads.
    pub fn result(self) -> ProduceResult {
        for f in &self.flush {
            self.io.flush(&f.log);
        }
        self.result
    }
}

/// Moves a partition whose flush failed from the appended to the failed.
pub(super) fn fail_partition(
    result: &mut ProduceResult,
    partition: i32,
    indices: Vec<usize>,
    err: Arc<BrokerError>,
) {
    result.partitions.retain(|p| p.partition != partition);
    result
        .failures
        .extend(indices.into_iter().map(|index| RecordFailure {
            index,
            error: err.clone(),
        }));
}

/// Splits one partition's records into batches no larger than the topic's
/// limit.
pub(super) struct BatchPlan<'a> {
    limit: usize,
    /// Idempotent numbering: producer fields and the next batch's base
    /// sequence.
    producer: Option<IdempotentBatch>,
    current: Option<BatchBuilder>,
    current_indices: Vec<usize>,
    done: Vec<(crate::storage::RecordBatch, Vec<usize>)>,
    headers: Vec<HeaderRef<'a>>,
}

impl<'a> BatchPlan<'a> {
    fn new(limit: usize, producer: Option<IdempotentBatch>) -> Self {
        Self {
            limit,
            producer,
            current: None,
            current_indices: Vec::new(),
            done: Vec::new(),
            headers: Vec::new(),
        }
    }

    fn push(&mut self, index: usize, r: &'a NewRecord, ts: i64) -> Result<()> {
        self.headers.clear();
        self.headers.extend(r.headers.iter().map(|h| HeaderRef {
            key: h.key.as_bytes(),
            value: h.value.as_deref(),
        }));
        let key = r.key.as_deref();
        let value = r.value.as_deref();
        let b = self
            .current
            .get_or_insert_with(|| BatchBuilder::with_capacity(16 * 1024));
        let size = b.record_size(ts, key, value, &self.headers);
        if HEADER_LEN + size > self.limit {
            return Err(BrokerError::RecordTooLarge {
                size: HEADER_LEN + size,
                limit: self.limit,
            });
        }
        if b.size_bytes() + size > self.limit {
            self.seal();
        }
        let b = self
            .current
            .get_or_insert_with(|| BatchBuilder::with_capacity(16 * 1024));
        b.push(ts, key, value, &self.headers)
            .map_err(|e| BrokerError::Storage(StorageError::InvalidBatch(e)))?;
        self.current_indices.push(index);
        Ok(())
    }

    fn seal(&mut self) {
        let mut builder = self.current.take();
        if let Some(p) = self.producer.as_mut() {
            builder = builder.map(|b| {
                let count = b.record_count();
                let fields = ProducerFields {
                    producer_id: p.producer_id,
                    producer_epoch: p.producer_epoch,
                    base_sequence: p.base_sequence,
                };
                p.base_sequence =
                    crate::storage::producer_state::seq_add(p.base_sequence, i64::from(count));
                b.producer(fields)
            });
        }
        if let Some(batch) = builder.and_then(BatchBuilder::build) {
            self.done
                .push((batch, std::mem::take(&mut self.current_indices)));
        }
    }

    fn finish(mut self) -> Vec<(crate::storage::RecordBatch, Vec<usize>)> {
        self.seal();
        self.done
    }
}

impl Broker {
    /// Appends records; returns once they are appended (acks=LEADER). For
    /// acks=ALL, await [`Appended::durable`] on the result.
    ///
    /// Request-level errors (unknown topic, bad explicit partition) fail the
    /// call; errors of single records or partitions are reported per record.
    pub fn append(&self, req: ProduceRequest) -> Result<Appended> {
        Self::refuse_internal(&req.topic)?;
        self.append_unchecked(req)
    }

    pub(super) fn refuse_internal(topic: &str) -> Result<()> {
        if is_internal_topic(topic) {
            return Err(BrokerError::invalid(format!(
                "topic '{topic}' is internal to the broker: only the broker writes, deletes or resizes it"
            )));
        }
        Ok(())
    }

    pub(super) fn append_unchecked(&self, req: ProduceRequest) -> Result<Appended> {
        self.check_running()?;
        let topic = self.topic(&req.topic)?;
        let parts = topic.partitions();
        let n = parts.len() as i32;
        if let Some(p) = req.partition {
            topic.partition(p)?;
        }
        Self::check_sizes(&req)?;
        if let Some(producer) = &req.producer {
            Self::check_idempotent(&req, producer)?;
            match self.check_producer_id(producer.producer_id, producer.producer_epoch) {
                Ok(_) => {}
                // Fencing is answered per record, like the partition's own
                // sequence refusals (see broker.proto).
                Err(e @ BrokerError::Storage(StorageError::ProducerFenced { .. })) => {
                    let error = Arc::new(e);
                    return Ok(Appended {
                        result: ProduceResult {
                            partitions: Vec::new(),
                            failures: (0..req.records.len())
                                .map(|index| RecordFailure {
                                    index,
                                    error: error.clone(),
                                })
                                .collect(),
                        },
                        flush: Vec::new(),
                        io: self.io.clone(),
                        replication: self.config.replication.clone(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        let now = now_ms(&topic.log_config);
        let mut failures: Vec<RecordFailure> = Vec::new();
        let mut keyless: Option<i32> = None;
        let mut assigned: Vec<(i32, usize)> = Vec::with_capacity(req.records.len());
        for (i, r) in req.records.iter().enumerate() {
            let p = match r.partition.or(req.partition) {
                Some(p) if (0..n).contains(&p) => p,
                Some(p) => {
                    failures.push(RecordFailure {
                        index: i,
                        error: Arc::new(BrokerError::PartitionNotFound {
                            topic: req.topic.clone(),
                            partition: p,
                            count: n,
                        }),
                    });
                    continue;
                }
                None => match &r.key {
                    Some(k) => partition_for_key(k, n),
                    None => *keyless.get_or_insert_with(|| {
                        (topic.next_keyless.fetch_add(1, Ordering::Relaxed) % n as u32) as i32
                    }),
                },
            };
            assigned.push((p, i));
        }
        // Stable: records keep request order within a partition.
        if assigned.windows(2).any(|w| w[0].0 > w[1].0) {
            assigned.sort_by_key(|(p, _)| *p);
        }

        let mut result = ProduceResult::default();
        let mut flush = Vec::new();
        let limit = topic.log_config.max_batch_bytes;
        let mut start = 0;
        while start < assigned.len() {
            let p = assigned[start].0;
            let end = start + assigned[start..].partition_point(|(q, _)| *q == p);
            let indices: Vec<usize> = assigned[start..end].iter().map(|(_, i)| *i).collect();
            start = end;
            let part = &parts[p as usize];
            let (log, epoch) = match part
                .check_writable(req.acks)
                .and_then(|epoch| Ok((self.log_of(&topic, part)?, epoch)))
            {
                Ok(l) => l,
                Err(e) => {
                    let e = Arc::new(e);
                    failures.extend(indices.iter().map(|&index| RecordFailure {
                        index,
                        error: e.clone(),
                    }));
                    continue;
                }
            };
            let mut appended = PartitionAppend {
                partition: p,
                base_offset: -1,
                record_count: 0,
                duplicate: false,
            };
            let mut runs: Vec<PartitionAppend> = Vec::new();
            let mut appended_indices = Vec::new();
            let mut bytes = 0u64;
            let mut last_end = -1;
            let mut policy_flush = false;
            let mut batches = BatchPlan::new(limit, req.producer);
            for &i in &indices {
                let r = &req.records[i];
                let pushed = match topic.timestamps.stamp(r.timestamp, now) {
                    Ok(ts) => batches.push(i, r, ts),
                    Err(why) => Err(BrokerError::invalid(why)),
                };
                if let Err(e) = pushed {
                    if req.producer.is_some() {
                        // Sequence numbers count every record: refuse the
                        // whole request rather than leave a gap.
                        return Err(e);
                    }
                    failures.push(RecordFailure {
                        index: i,
                        error: Arc::new(e),
                    });
                }
            }
            let mut failed: Option<Arc<BrokerError>> = None;
            for (batch, batch_indices) in batches.finish() {
                if let Some(e) = &failed {
                    failures.extend(batch_indices.iter().map(|&index| RecordFailure {
                        index,
                        error: e.clone(),
                    }));
                    continue;
                }
                // Rolls, file growth and checkpoint rewrites are file work:
                // let the runtime move its other tasks off this thread.
                let appended_now = if log.append_needs_file_work(&batch) {
                    blocking_section(|| log.append_deferred(&batch))
                } else {
                    log.append_deferred(&batch)
                };
                match appended_now {
                    Ok((info, due)) => {
                        policy_flush |= due;
                        // One entry per contiguous run of offsets: another
                        // producer's batch may land between two of this
                        // request's, and a retry's duplicates keep their
                        // first offsets.
                        let continues = appended.base_offset >= 0
                            && appended.duplicate == info.duplicate
                            && appended.base_offset + i64::from(appended.record_count)
                                == info.base_offset;
                        if appended.base_offset >= 0 && !continues {
                            runs.push(appended);
                            appended.record_count = 0;
                        }
                        if appended.record_count == 0 {
                            appended.base_offset = info.base_offset;
                            appended.duplicate = info.duplicate;
                        }
                        appended.record_count += batch.record_count();
                        bytes += batch.len() as u64;
                        last_end = info.last_offset + 1;
                        appended_indices.extend_from_slice(&batch_indices);
                    }
                    Err(e) => {
                        let e = match e {
                            StorageError::Closed if part.is_deleted() => {
                                BrokerError::TopicDeleted {
                                    topic: req.topic.clone(),
                                }
                            }
                            e => BrokerError::Storage(e),
                        };
                        if e.is_fatal() {
                            tracing::error!(topic = %req.topic, partition = p, error = %e, "append failed");
                        }
                        let e = Arc::new(e);
                        failures.extend(batch_indices.iter().map(|&index| RecordFailure {
                            index,
                            error: e.clone(),
                        }));
                        failed = Some(e);
                    }
                }
            }
            if appended.record_count > 0 {
                let records: i32 =
                    runs.iter().map(|r| r.record_count).sum::<i32>() + appended.record_count;
                part.appended(&log, last_end);
                if self.config.node_id.is_some() {
                    self.leader_appended.notify_waiters();
                }
                topic.appended.notify_waiters();
                topic.metrics.produce_records.increment(records as u64);
                topic.metrics.produce_bytes.increment(bytes);
                result.partitions.extend(runs);
                result.partitions.push(appended);
                if req.acks == Acks::All || policy_flush {
                    flush.push(PendingFlush {
                        part: part.clone(),
                        log,
                        end: last_end,
                        indices: appended_indices,
                        replicate: req.acks == Acks::All,
                        epoch,
                    });
                }
            }
        }
        failures.sort_by_key(|f| f.index);
        result.failures = failures;
        Ok(Appended {
            result,
            flush,
            io: self.io.clone(),
            replication: self.config.replication.clone(),
        })
    }

    /// Refuses requests over the count limits (the gRPC codec checks the
    /// same on the wire; other callers are checked here).
    fn check_sizes(req: &ProduceRequest) -> Result<()> {
        if req.records.len() > MAX_RECORDS_PER_REQUEST {
            return Err(BrokerError::invalid(format!(
                "a produce request holds at most {MAX_RECORDS_PER_REQUEST} records, not {}: split it",
                req.records.len()
            )));
        }
        for (i, r) in req.records.iter().enumerate() {
            if r.headers.len() > MAX_HEADERS_PER_RECORD {
                return Err(BrokerError::invalid(format!(
                    "record {i} has {} headers; at most {MAX_HEADERS_PER_RECORD} are allowed",
                    r.headers.len()
                )));
            }
            let bytes: usize = r
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()) + 4)
                .sum();
            if bytes > MAX_HEADER_BYTES_PER_RECORD {
                return Err(BrokerError::invalid(format!(
                    "the headers of record {i} take {bytes} bytes; at most {MAX_HEADER_BYTES_PER_RECORD} are allowed"
                )));
            }
        }
        Ok(())
    }

    /// Checks that an idempotent request targets one partition.
    pub(super) fn check_idempotent(req: &ProduceRequest, producer: &IdempotentBatch) -> Result<()> {
        let Some(p) = req.partition else {
            return Err(BrokerError::invalid(
                "an idempotent produce request (producer_id set) must name its partition: sequences are counted per partition",
            ));
        };
        if let Some(r) = req
            .records
            .iter()
            .find(|r| r.partition.is_some_and(|q| q != p))
        {
            return Err(BrokerError::invalid(format!(
                "an idempotent produce request goes to one partition: it names partition {p}, but a record names partition {}",
                r.partition.unwrap_or(p)
            )));
        }
        if producer.producer_id < 0 || producer.producer_epoch < 0 || producer.base_sequence < 0 {
            return Err(BrokerError::invalid(format!(
                "producer_id {}, producer_epoch {} and base_sequence {} must not be negative (get an id and epoch from InitProducer)",
                producer.producer_id, producer.producer_epoch, producer.base_sequence
            )));
        }
        if req.acks == Acks::None {
            return Err(BrokerError::invalid(
                "an idempotent produce request needs acks LEADER or ALL: with acks NONE a retry cannot be told apart",
            ));
        }
        Ok(())
    }

    /// Appends and waits for the durability the request asks for.
    pub async fn produce(&self, req: ProduceRequest) -> Result<ProduceResult> {
        let appended = self.append(req)?;
        Ok(appended.durable().await)
    }
}
