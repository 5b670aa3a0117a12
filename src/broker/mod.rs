//! The broker: topics and partitions over the storage layer, produce and
//! fetch, readers waiting for new records, and Kafka's partitioner.
//!
//! [`Broker`] is the one domain facade every transport calls (gRPC today).
//! It speaks in domain types ([`ProduceRequest`], [`FetchRequest`], ...) and
//! [`BrokerError`]; it knows nothing of protobuf or status codes.
//!
//! On disk, under the data directory:
//!
//! ```text
//! .lock                       held (flock) while a broker runs
//! topics/<name>/topic.json    partition count and settings (the commit point)
//! topics/<name>/<partition>/  one partition log (see storage)
//! trash/                      deleted topics, removed in the background
//! ```
//!
//! Partition logs open on first use and close again when more than
//! `max_open_logs` are open (least recently used idle ones first, closed by
//! the call that opened one too many), so a broker with tens of thousands
//! of partitions holds a bounded number of files and mappings. A
//! maintenance thread applies retention.

mod error;
mod partition;
pub mod partitioner;
mod producer_ids;
mod topic;

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use tokio::{sync::watch, time::Instant};

pub use error::{BrokerError, Result};
use partition::Partition;
pub use partitioner::{murmur2, partition_for_key};
pub use producer_ids::{PRODUCER_IDS_TOPIC, PRODUCER_ID_BLOCK};
pub use topic::{
    is_internal_topic, validate_topic_name, Topic, TopicConfig, INTERNAL_TOPIC_PREFIX,
    MAX_PARTITIONS, MAX_TOPIC_NAME_LEN,
};
use topic::{TopicMeta, TopicMetrics};

use crate::storage::{
    batch::HEADER_LEN, BatchBuilder, BatchIter, FlushPolicy, Flusher, HeaderRef, IoPool, Log,
    LogConfig, ProducerFields, StorageError,
};

/// How often the scrubber verifies a round of sealed segments.
pub const SCRUB_INTERVAL: Duration = Duration::from_secs(60);
/// Bytes of sealed segments the scrubber verifies per round (at most a
/// quarter of it per partition).
pub const SCRUB_BYTES_PER_ROUND: u64 = 256 * 1024 * 1024;

/// Largest `max_records` of a fetch.
pub const MAX_FETCH_RECORDS: i32 = 100_000;
/// Largest `max_bytes` of a fetch.
pub const MAX_FETCH_BYTES: i32 = 64 * 1024 * 1024;
/// Longest long-poll wait, ms.
pub const MAX_WAIT_MS: i32 = 300_000;
/// `max_records` when a request gives 0.
pub const DEFAULT_FETCH_RECORDS: i32 = 10_000;
/// `max_bytes` when a request gives 0.
pub const DEFAULT_FETCH_BYTES: i32 = 1024 * 1024;

/// Settings of a broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Root of all data.
    pub data_dir: PathBuf,
    /// Log settings that topics do not override.
    pub log: LogConfig,
    /// Partition logs kept open at most (each holds three files and their
    /// mappings); the least recently used idle ones close beyond this.
    pub max_open_logs: usize,
    /// How often retention runs over open logs.
    pub retention_check_interval: Duration,
    /// Threads that run syncs (and other blocking log work), several
    /// partitions at a time, off the async runtime.
    pub io_threads: usize,
}

impl BrokerConfig {
    /// Embedded defaults with data under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            log: LogConfig {
                // Many partitions: preallocate little up front; files still
                // grow in doubling steps.
                initial_preallocate_bytes: 1024 * 1024,
                ..LogConfig::default()
            },
            max_open_logs: 4096,
            retention_check_interval: Duration::from_secs(300),
            io_threads: 4,
        }
    }
}

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
}

struct PendingFlush {
    part: Arc<Partition>,
    log: Arc<Log>,
    end: i64,
    indices: Vec<usize>,
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
        for f in &self.flush {
            self.io.flush(&f.log);
        }
        for f in self.flush {
            if let Err(e) = f.part.wait_durable(&self.io, &f.log, f.end).await {
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
fn fail_partition(
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

/// A topic and its partitions' state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Settings in force.
    pub config: TopicConfig,
    /// Per partition.
    pub partitions: Vec<PartitionInfo>,
}

/// State of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition.
    pub partition: i32,
    /// Log start offset.
    pub log_start_offset: i64,
    /// High watermark.
    pub high_watermark: i64,
    /// Data bytes.
    pub size_bytes: u64,
    /// Segment files.
    pub segments: usize,
}

/// Gauges for metrics.
#[derive(Debug, Clone, Default)]
pub struct BrokerStats {
    /// Per topic: name, partitions, bytes, segments (closed logs as last
    /// seen).
    pub topics: Vec<(String, usize, u64, u64)>,
    /// Partition logs open now.
    pub open_logs: usize,
}

/// The broker. Always used through an `Arc`.
pub struct Broker {
    config: BrokerConfig,
    topics_dir: PathBuf,
    trash_dir: PathBuf,
    /// Topics by name. Read on every call (briefly, to clone an `Arc`);
    /// written only by admin calls.
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes admin calls (create, delete, add partitions), which do
    /// file-system work; held across that work but never across `.await`.
    admin: Mutex<()>,
    flusher: Flusher,
    /// Where flushes run (acks=ALL waiters, the interval policy).
    io: Arc<IoPool>,
    open_logs: AtomicUsize,
    tick: AtomicU64,
    maintenance: Arc<Maintenance>,
    maintenance_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
    trash_seq: AtomicU64,
    /// Producer-id allocation (see `producer_ids`).
    producer_ids: Mutex<producer_ids::IdBlock>,
    /// Held (flock) so two brokers never share a data directory.
    _lock: File,
}

struct Maintenance {
    /// Set to stop the thread (which otherwise sleeps until retention).
    state: Mutex<MaintenanceState>,
    wake: Condvar,
}

#[derive(Default)]
struct MaintenanceState {
    stop: bool,
    /// More logs are open than `max_open_logs`: close idle ones.
    evict: bool,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("data_dir", &self.config.data_dir)
            .field("topics", &self.topics.read().len())
            .finish_non_exhaustive()
    }
}

fn io_err(op: &'static str, path: &Path, e: std::io::Error) -> BrokerError {
    BrokerError::Storage(StorageError::io(op, path, e))
}

fn now_ms(config: &LogConfig) -> i64 {
    (config.clock)()
}

impl Broker {
    /// Opens the broker on `config.data_dir`: takes the directory lock and
    /// loads every topic's metadata. Partition logs open on first use.
    pub fn open(config: BrokerConfig) -> Result<Arc<Self>> {
        config.log.validate()?;
        if config.max_open_logs == 0 {
            return Err(BrokerError::invalid("max_open_logs must be at least 1"));
        }
        let data = &config.data_dir;
        std::fs::create_dir_all(data).map_err(|e| io_err("creating", data, e))?;
        let lock_path = data.join(".lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("opening", &lock_path, e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| BrokerError::Metadata {
                path: lock_path.clone(),
                reason: "the data directory is in use by another sluice process".into(),
            },
        )?;
        let topics_dir = data.join("topics");
        let trash_dir = data.join("trash");
        for d in [&topics_dir, &trash_dir] {
            std::fs::create_dir_all(d).map_err(|e| io_err("creating", d, e))?;
        }
        // Deletions that a crash interrupted.
        if let Ok(entries) = std::fs::read_dir(&trash_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }

        let flush_tick = match config.log.flush {
            FlushPolicy::Interval(d) => {
                (d / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
            }
            _ => Duration::from_secs(1),
        };
        let io = IoPool::start(config.io_threads)
            .map_err(|e| io_err("starting I/O threads for", data, e))?;
        let flusher = Flusher::start(flush_tick, io.clone())
            .map_err(|e| io_err("starting flusher for", data, e))?;
        let broker = Arc::new(Broker {
            topics_dir,
            trash_dir,
            topics: RwLock::new(BTreeMap::new()),
            admin: Mutex::new(()),
            flusher,
            io,
            open_logs: AtomicUsize::new(0),
            tick: AtomicU64::new(1),
            maintenance: Arc::new(Maintenance {
                state: Mutex::new(MaintenanceState::default()),
                wake: Condvar::new(),
            }),
            maintenance_thread: Mutex::new(None),
            shutdown: watch::Sender::new(false),
            trash_seq: AtomicU64::new(0),
            producer_ids: Mutex::new(Default::default()),
            _lock: lock,
            config,
        });
        broker.load_topics()?;
        broker.start_maintenance()?;
        Ok(broker)
    }

    fn load_topics(&self) -> Result<()> {
        let entries = std::fs::read_dir(&self.topics_dir)
            .map_err(|e| io_err("listing", &self.topics_dir, e))?;
        let mut topics = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("listing", &self.topics_dir, e))?;
            let dir = entry.path();
            if !dir.join(topic::TOPIC_FILE).exists() {
                // A creation that crashed before its commit point.
                tracing::warn!(dir = %dir.display(), "removing topic directory without topic.json (interrupted create)");
                self.move_to_trash(&dir)?;
                continue;
            }
            let meta = TopicMeta::read(&dir)?;
            if dir.file_name().and_then(|n| n.to_str()) != Some(meta.name.as_str()) {
                return Err(BrokerError::Metadata {
                    path: dir.join(topic::TOPIC_FILE),
                    reason: format!("names topic '{}' but lives in another directory", meta.name),
                });
            }
            let t = self.topic_from_meta(meta, dir);
            topics.insert(t.name.to_string(), Arc::new(t));
        }
        tracing::info!(topics = topics.len(), "topics loaded");
        *self.topics.write() = topics;
        Ok(())
    }

    fn topic_from_meta(&self, meta: TopicMeta, dir: PathBuf) -> Topic {
        let name: Arc<str> = Arc::from(meta.name.as_str());
        let partitions = (0..meta.partitions)
            .map(|i| Arc::new(Partition::new(name.clone(), i, dir.join(i.to_string()))))
            .collect();
        Topic {
            metrics: TopicMetrics::new(&name),
            appended: tokio::sync::Notify::new(),
            log_config: meta.config.log_config(&self.config.log),
            config: meta.config,
            name,
            dir,
            partitions: RwLock::new(Arc::new(partitions)),
            next_keyless: Default::default(),
            created_ms: meta.created_ms,
        }
    }

    fn start_maintenance(self: &Arc<Self>) -> Result<()> {
        let weak: Weak<Broker> = Arc::downgrade(self);
        let m = self.maintenance.clone();
        let interval = self.config.retention_check_interval;
        let handle = std::thread::Builder::new()
            .name("sluice-maintenance".into())
            .spawn(move || {
                let mut next_retention = std::time::Instant::now() + interval;
                let mut next_scrub = std::time::Instant::now() + SCRUB_INTERVAL;
                loop {
                    let evict = {
                        let mut s = m.state.lock();
                        if !s.stop && !s.evict {
                            m.wake.wait_until(&mut s, next_retention.min(next_scrub));
                        }
                        if s.stop {
                            return;
                        }
                        std::mem::take(&mut s.evict)
                    };
                    let Some(broker) = weak.upgrade() else { return };
                    if evict {
                        broker.evict_idle();
                    }
                    if std::time::Instant::now() >= next_scrub {
                        broker.scrub(SCRUB_BYTES_PER_ROUND);
                        next_scrub = std::time::Instant::now() + SCRUB_INTERVAL;
                    }
                    if std::time::Instant::now() >= next_retention {
                        broker.apply_retention();
                        next_retention = std::time::Instant::now() + interval;
                    }
                }
            })
            .map_err(|e| io_err("starting maintenance thread for", &self.config.data_dir, e))?;
        *self.maintenance_thread.lock() = Some(handle);
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The file system every log and metadata file goes through.
    fn fs(&self) -> &dyn crate::storage::FileSystem {
        &*self.config.log.fs
    }

    fn check_running(&self) -> Result<()> {
        if *self.shutdown.borrow() {
            Err(BrokerError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// The topic `name`.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::TopicNotFound {
                topic: name.to_string(),
            })
    }

    /// The open log of a partition, opening it if needed.
    fn log_of(&self, topic: &Topic, part: &Partition) -> Result<Arc<Log>> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        if let Some(log) = part.try_open_log() {
            part.touch(tick);
            return Ok(log);
        }
        // Opening (and perhaps recovering) a log, waiting for another
        // caller that is opening or closing it, and closing idle ones are
        // file-system work: let the runtime move its other tasks off this
        // thread meanwhile.
        blocking_section(|| self.open_log(topic, part, tick))
    }

    fn open_log(&self, topic: &Topic, part: &Partition, tick: u64) -> Result<Arc<Log>> {
        let (log, opened) = part.log(&topic.log_config, &self.flusher, tick)?;
        if opened {
            let open = self.open_logs.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::gauge!("sluice_open_partition_logs").set(open as f64);
            let cap = self.config.max_open_logs;
            if open > cap.saturating_add((cap / 8).max(16)) {
                // Far over the limit (a burst of opens outran the
                // background): close idle logs here, so files stay bounded.
                self.evict_idle();
            } else if open > cap {
                // Closing syncs files: the maintenance thread does it.
                self.maintenance.state.lock().evict = true;
                self.maintenance.wake.notify_all();
            }
        }
        Ok(log)
    }

    /// Closes the least recently used idle logs until 1% (at least one)
    /// below `max_open_logs` are open: few closes per call, each a sync, so
    /// the caller that pays for them waits milliseconds, not seconds.
    fn evict_idle(&self) {
        let cap = self.config.max_open_logs;
        let target = cap - (cap / 100).max(1).min(cap);
        if self.open_logs.load(Ordering::Relaxed) <= self.config.max_open_logs {
            return;
        }
        let mut candidates: Vec<(u64, Arc<Partition>)> = Vec::new();
        // Internal topics' logs (group and queue state) stay open.
        for topic in self
            .topics
            .read()
            .values()
            .filter(|t| !is_internal_topic(&t.name))
        {
            for p in topic.partitions().iter() {
                if p.open_log().is_some() {
                    candidates.push((p.last_used(), p.clone()));
                }
            }
        }
        candidates.sort_by_key(|(t, _)| *t);
        let mut closed = 0usize;
        for (_, p) in candidates {
            if self.open_logs.load(Ordering::Relaxed) <= target {
                break;
            }
            if p.close_if_idle() {
                self.open_logs.fetch_sub(1, Ordering::Relaxed);
                closed += 1;
            }
        }
        metrics::gauge!("sluice_open_partition_logs")
            .set(self.open_logs.load(Ordering::Relaxed) as f64);
        tracing::debug!(closed, "closed idle partition logs");
    }

    /// Verifies about `budget` bytes of sealed segments of open logs,
    /// going round them (see [`Log::scrub`]); damage is logged and counted
    /// in `sluice_scrub_damaged_batches_total`.
    fn scrub(&self, budget: u64) {
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        let mut left = budget;
        for topic in topics {
            for p in topic.partitions().iter() {
                if left == 0 {
                    return;
                }
                let Some(log) = p.open_log() else { continue };
                match log.scrub(left.min(SCRUB_BYTES_PER_ROUND / 4)) {
                    Ok(out) => {
                        left = left.saturating_sub(out.bytes.max(1));
                        metrics::counter!("sluice_scrubbed_bytes_total").increment(out.bytes);
                        for (from, to) in &out.damaged {
                            metrics::counter!("sluice_scrub_damaged_batches_total").increment(1);
                            tracing::error!(topic = %topic.name, partition = p.id, dir = %p.dir.display(), from, to, "scrub found damaged records on disk");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(topic = %topic.name, partition = p.id, error = %e, "scrub failed")
                    }
                }
            }
        }
    }

    /// Applies retention to every open log.
    fn apply_retention(&self) {
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        for topic in topics {
            for p in topic.partitions().iter() {
                if let Some(log) = p.open_log() {
                    match log.apply_retention() {
                        Ok(out) if out.deleted_segments > 0 => tracing::info!(
                            topic = %topic.name, partition = p.id,
                            segments = out.deleted_segments, bytes = out.deleted_bytes,
                            "retention deleted segments"
                        ),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(topic = %topic.name, partition = p.id, error = %e, "retention failed")
                        }
                    }
                }
            }
        }
    }

    fn move_to_trash(&self, dir: &Path) -> Result<PathBuf> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let seq = self.trash_seq.fetch_add(1, Ordering::Relaxed);
        let to = self
            .trash_dir
            .join(format!("{name}.{}.{seq}", now_ms(&self.config.log)));
        self.fs()
            .rename(dir, &to)
            .map_err(|e| io_err("moving to trash", dir, e))?;
        crate::storage::sync_dir(self.fs(), &self.topics_dir)?;
        Ok(to)
    }

    // ----- admin -----

    /// Creates a topic. Blocking (file-system work): call it off the async
    /// runtime's worker threads.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        config: TopicConfig,
    ) -> Result<TopicInfo> {
        validate_topic_name(name)?;
        if is_internal_topic(name) {
            return Err(BrokerError::invalid(format!(
                "topic name '{name}' starts with '{INTERNAL_TOPIC_PREFIX}', which is reserved for the broker's internal topics"
            )));
        }
        self.create_topic_unchecked(name, partitions, config)
    }

    /// Creates the internal topic `name` unless it exists; returns it.
    /// Blocking.
    pub(crate) fn ensure_internal_topic(
        &self,
        name: &str,
        partitions: i32,
        config: TopicConfig,
    ) -> Result<Arc<Topic>> {
        debug_assert!(is_internal_topic(name));
        if let Ok(t) = self.topic(name) {
            return Ok(t);
        }
        self.create_topic_unchecked(name, partitions, config)?;
        self.topic(name)
    }

    fn create_topic_unchecked(
        &self,
        name: &str,
        partitions: i32,
        config: TopicConfig,
    ) -> Result<TopicInfo> {
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(BrokerError::invalid(format!(
                "partition count {partitions} must be in [1, {MAX_PARTITIONS}]"
            )));
        }
        config.validate()?;
        self.check_running()?;
        let _admin = self.admin.lock();
        if self.topics.read().contains_key(name) {
            return Err(BrokerError::TopicExists {
                topic: name.to_string(),
            });
        }
        let dir = self.topics_dir.join(name);
        if dir.exists() {
            self.move_to_trash(&dir)?;
        }
        for i in 0..partitions {
            let p = dir.join(i.to_string());
            self.fs()
                .create_dir_all(&p)
                .map_err(|e| io_err("creating", &p, e))?;
        }
        let meta = TopicMeta {
            name: name.to_string(),
            partitions,
            config,
            created_ms: now_ms(&self.config.log),
        };
        meta.write(self.fs(), &dir)?;
        crate::storage::sync_dir(self.fs(), &self.topics_dir)?;
        let topic = Arc::new(self.topic_from_meta(meta, dir));
        self.topics.write().insert(name.to_string(), topic.clone());
        tracing::info!(topic = name, partitions, "topic created");
        Ok(TopicInfo {
            name: name.to_string(),
            config: config.effective(&self.config.log),
            partitions: (0..partitions)
                .map(|partition| PartitionInfo {
                    partition,
                    log_start_offset: 0,
                    high_watermark: 0,
                    size_bytes: 0,
                    segments: 1,
                })
                .collect(),
        })
    }

    /// Deletes a topic and its data. Blocking.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        Self::refuse_internal(name)?;
        let _admin = self.admin.lock();
        let topic = self
            .topics
            .write()
            .remove(name)
            .ok_or_else(|| BrokerError::TopicNotFound {
                topic: name.to_string(),
            })?;
        for p in topic.partitions().iter() {
            p.mark_deleted();
            if p.close() {
                self.open_logs.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let trash = self.move_to_trash(&topic.dir)?;
        if let Err(e) = std::fs::remove_dir_all(&trash) {
            tracing::warn!(dir = %trash.display(), error = %e, "could not remove deleted topic's files; they go on the next start");
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Topics with their partition counts, sorted by name. Internal topics
    /// (the broker's own state) are left out.
    pub fn list_topics(&self) -> Vec<(String, i32)> {
        self.topics
            .read()
            .values()
            .filter(|t| !is_internal_topic(&t.name))
            .map(|t| (t.name.to_string(), t.partitions.read().len() as i32))
            .collect()
    }

    /// A topic's settings and partitions' state. Opens closed partition
    /// logs (blocking).
    pub fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let topic = self.topic(name)?;
        let mut partitions = Vec::new();
        for p in topic.partitions().iter() {
            let log = self.log_of(&topic, p)?;
            p.note_size(&log);
            partitions.push(PartitionInfo {
                partition: p.id,
                log_start_offset: log.start_offset(),
                high_watermark: log.end_offset(),
                size_bytes: log.size_bytes(),
                segments: log.segment_count(),
            });
        }
        Ok(TopicInfo {
            name: topic.name.to_string(),
            config: topic.config.effective(&self.config.log),
            partitions,
        })
    }

    /// Raises a topic's partition count to `total`. Blocking.
    pub fn create_partitions(&self, name: &str, total: i32) -> Result<TopicInfo> {
        Self::refuse_internal(name)?;
        {
            let _admin = self.admin.lock();
            let topic = self.topic(name)?;
            let current = topic.partitions();
            let count = current.len() as i32;
            if total <= count || total > MAX_PARTITIONS {
                return Err(BrokerError::invalid(format!(
                    "total_partitions {total} must be in [{}, {MAX_PARTITIONS}] (topic '{name}' has {count})",
                    count + 1
                )));
            }
            let mut parts = Vec::clone(&current);
            for i in count..total {
                let dir = topic.dir.join(i.to_string());
                if !dir.exists() {
                    self.fs()
                        .create_dir_all(&dir)
                        .map_err(|e| io_err("creating", &dir, e))?;
                }
                parts.push(Arc::new(Partition::new(topic.name.clone(), i, dir)));
            }
            let mut meta = topic.meta();
            meta.partitions = total;
            meta.write(self.fs(), &topic.dir)?;
            *topic.partitions.write() = Arc::new(parts);
            tracing::info!(topic = name, from = count, to = total, "partitions added");
        }
        self.describe_topic(name)
    }

    // ----- produce -----

    /// Appends records; returns once they are appended (acks=LEADER). For
    /// acks=ALL, await [`Appended::durable`] on the result.
    ///
    /// Request-level errors (unknown topic, bad explicit partition) fail the
    /// call; errors of single records or partitions are reported per record.
    pub fn append(&self, req: ProduceRequest) -> Result<Appended> {
        Self::refuse_internal(&req.topic)?;
        self.append_unchecked(req)
    }

    fn refuse_internal(topic: &str) -> Result<()> {
        if is_internal_topic(topic) {
            return Err(BrokerError::invalid(format!(
                "topic '{topic}' is internal to the broker: only the broker writes, deletes or resizes it"
            )));
        }
        Ok(())
    }

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

    fn append_unchecked(&self, req: ProduceRequest) -> Result<Appended> {
        self.check_running()?;
        let topic = self.topic(&req.topic)?;
        let parts = topic.partitions();
        let n = parts.len() as i32;
        if let Some(p) = req.partition {
            topic.partition(p)?;
        }
        if let Some(producer) = &req.producer {
            Self::check_idempotent(&req, producer)?;
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
            let log = match self.log_of(&topic, part) {
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
            let mut appended_indices = Vec::new();
            let mut bytes = 0u64;
            let mut last_end = -1;
            let mut policy_flush = false;
            let mut batches = BatchPlan::new(limit, req.producer);
            for &i in &indices {
                let r = &req.records[i];
                if let Err(e) = batches.push(i, r, now) {
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
                        if appended.base_offset < 0 {
                            appended.base_offset = info.base_offset;
                        }
                        appended.record_count += batch.record_count();
                        appended.duplicate |= info.duplicate;
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
                part.publish_end(last_end);
                topic.appended.notify_waiters();
                topic
                    .metrics
                    .produce_records
                    .increment(appended.record_count as u64);
                topic.metrics.produce_bytes.increment(bytes);
                result.partitions.push(appended);
                if req.acks == Acks::All || policy_flush {
                    flush.push(PendingFlush {
                        part: part.clone(),
                        log,
                        end: last_end,
                        indices: appended_indices,
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
        })
    }

    /// Checks that an idempotent request targets one partition.
    fn check_idempotent(req: &ProduceRequest, producer: &IdempotentBatch) -> Result<()> {
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

    // ----- fetch -----

    fn fetch_limits(max_records: i32, max_bytes: i32) -> Result<(usize, usize)> {
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

    /// Reads records at `offset` without waiting.
    fn read(
        &self,
        topic: &Topic,
        part: &Partition,
        offset: i64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<FetchResult> {
        let log = self.log_of(topic, part)?;
        if offset < log.active_segment_base() {
            // Sealed segments are likely cold: their page faults block the
            // thread, so the runtime moves its other tasks elsewhere.
            return blocking_section(|| {
                self.read_log(topic, part, &log, offset, max_records, max_bytes)
            });
        }
        self.read_log(topic, part, &log, offset, max_records, max_bytes)
    }

    fn read_log(
        &self,
        topic: &Topic,
        part: &Partition,
        log: &Log,
        offset: i64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<FetchResult> {
        let read = log.read(offset, max_bytes).map_err(|e| match e {
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
        })?;
        let mut out = FetchResult {
            records: Vec::new(),
            next_offset: offset,
            log_start_offset: read.log_start_offset,
            high_watermark: read.log_end_offset,
        };
        let data = &read.data;
        // Batches come checksum-verified; a record that still fails to
        // decode is reported like any damage, without server paths.
        let corrupt = |from: i64, to: i64| {
            move |e: crate::storage::BatchError| BrokerError::DamagedRecords {
                topic: topic.name.to_string(),
                partition: part.id,
                from,
                to,
                reason: e.to_string(),
            }
        };
        let share = |s: &[u8]| data.slice_ref(s);
        let mut bytes = 0u64;
        'batches: for batch in BatchIter::new(data) {
            let batch = batch.map_err(corrupt(offset, read.log_end_offset))?;
            if batch.next_offset() <= offset {
                continue;
            }
            if out.records.is_empty() {
                out.records
                    .reserve((batch.record_count() as usize).min(max_records));
            }
            bytes += batch.len() as u64;
            for rec in batch.records() {
                let rec = rec.map_err(corrupt(batch.base_offset(), batch.next_offset()))?;
                if rec.offset < offset {
                    continue;
                }
                if out.records.len() >= max_records {
                    break 'batches;
                }
                let mut headers = Vec::new();
                if rec.header_count() > 0 {
                    headers.reserve(rec.header_count());
                    for h in rec.headers() {
                        headers.push(Header {
                            key: String::from_utf8_lossy(h.key).into_owned(),
                            value: h.value.map(share),
                        });
                    }
                }
                out.next_offset = rec.offset + 1;
                out.records.push(FetchedRecord {
                    offset: rec.offset,
                    timestamp: rec.timestamp,
                    key: rec.key.map(share),
                    value: rec.value.map(share),
                    headers,
                });
            }
        }
        if !out.records.is_empty() {
            topic
                .metrics
                .fetch_records
                .increment(out.records.len() as u64);
            topic.metrics.fetch_bytes.increment(bytes);
        }
        Ok(out)
    }

    /// Waits until the partition's high watermark passes `offset`. Returns
    /// false if `deadline` passed first.
    async fn wait_beyond(
        &self,
        part: &Partition,
        offset: i64,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        let mut end = part.watch_end();
        let mut shutdown = self.shutdown.subscribe();
        let arrived = end.wait_for(|e| *e > offset || part.is_deleted());
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
                Ok(true)
            }
            _ = shutdown.wait_for(|s| *s) => Err(BrokerError::ShuttingDown),
            _ = sleep => Ok(false),
        }
    }

    /// Reads records from one partition, waiting up to `max_wait_ms` for
    /// records at `offset` if there are none yet.
    pub async fn fetch(&self, req: FetchRequest<'_>) -> Result<FetchResult> {
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
            let out = self.read(&topic, &part, req.offset, max_records, max_bytes)?;
            if !out.records.is_empty() || req.max_wait_ms == 0 {
                return Ok(out);
            }
            if !self.wait_beyond(&part, req.offset, Some(deadline)).await? {
                return Ok(out);
            }
        }
    }

    fn resolve(&self, topic: &Topic, part: &Partition, position: Position) -> Result<i64> {
        let log = self.log_of(topic, part)?;
        let (start, end) = (log.start_offset(), log.end_offset());
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
            Position::Latest => end,
            Position::Timestamp(t) => log.offset_for_timestamp(t)?.unwrap_or(end),
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
        let (max_records, max_bytes) = Self::fetch_limits(max_records, max_bytes)?;
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
                let log = self.log_of(&topic, p)?;
                Ok(PartitionOffsets {
                    partition: p.id,
                    earliest: log.start_offset(),
                    latest: log.end_offset(),
                    for_timestamp: match timestamp {
                        Some(t) => Some(log.offset_for_timestamp(t)?.unwrap_or(-1)),
                        None => None,
                    },
                })
            })
            .collect()
    }

    /// Numbers for the metrics endpoint.
    pub fn stats(&self) -> BrokerStats {
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        let mut out = BrokerStats {
            topics: Vec::with_capacity(topics.len()),
            open_logs: self.open_logs.load(Ordering::Relaxed),
        };
        for t in topics {
            let parts = t.partitions();
            let (mut size, mut segments) = (0u64, 0u64);
            for p in parts.iter() {
                if let Some(log) = p.open_log() {
                    p.note_size(&log);
                }
                size += p.last_size.load(Ordering::Relaxed);
                segments += p.last_segments.load(Ordering::Relaxed);
            }
            out.topics
                .push((t.name.to_string(), parts.len(), size, segments));
        }
        out
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Completes once shutdown has begun; transports end their streams.
    pub async fn shutting_down(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Ends long polls and subscriptions with `ShuttingDown` and refuses new
    /// produce calls. Call before draining the transports.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Makes everything appended so far to open logs durable. Blocking.
    pub fn flush_all(&self) -> Result<()> {
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        for t in topics {
            for p in t.partitions().iter() {
                if let Some(log) = p.open_log() {
                    log.flush()?;
                }
            }
        }
        Ok(())
    }

    /// Closes every open log cleanly (sync, clean checkpoint) and stops the
    /// background threads. Blocking.
    pub fn close(&self) {
        self.begin_shutdown();
        {
            let mut s = self.maintenance.state.lock();
            s.stop = true;
            self.maintenance.wake.notify_all();
        }
        if let Some(t) = self.maintenance_thread.lock().take() {
            let _ = t.join();
        }
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        let mut closed = 0;
        for t in topics {
            for p in t.partitions().iter() {
                if p.close() {
                    closed += 1;
                    self.open_logs.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        tracing::info!(logs = closed, "partition logs closed");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let mut s = self.maintenance.state.lock();
        s.stop = true;
        self.maintenance.wake.notify_all();
    }
}

/// Runs blocking work from async code: on a multi-threaded tokio runtime
/// the worker hands its other tasks to another thread first; elsewhere
/// (plain threads, blocking pool, current-thread runtimes) it just runs.
fn blocking_section<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Splits one partition's records into batches no larger than the topic's
/// limit.
struct BatchPlan<'a> {
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

    fn push(&mut self, index: usize, r: &'a NewRecord, now: i64) -> Result<()> {
        let ts = r.timestamp.unwrap_or(now);
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
    pub async fn next(&mut self) -> Result<FetchResult> {
        loop {
            if self.part.is_deleted() {
                return Err(BrokerError::TopicDeleted {
                    topic: self.topic.name.to_string(),
                });
            }
            self.broker.check_running()?;
            let out = self.broker.read(
                &self.topic,
                &self.part,
                self.next,
                self.max_records,
                self.max_bytes,
            )?;
            if !out.records.is_empty() {
                self.next = out.next_offset;
                return Ok(out);
            }
            self.broker.wait_beyond(&self.part, self.next, None).await?;
        }
    }
}
