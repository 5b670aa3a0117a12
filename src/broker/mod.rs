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
//! the maintenance thread), so a broker with tens of thousands of
//! partitions holds a bounded number of files and mappings. The
//! maintenance thread also applies retention and scrubs sealed segments.
//!
//! Files: `produce.rs` (requests, batching, appends, durability),
//! `fetch.rs` (reads, long polls, subscriptions, offsets), `admin.rs`
//! (topics), `internal.rs` (the coordinators' internal topics),
//! `journal.rs` (state kept in an internal topic: append, replay, snapshot
//! and purge, shared by the coordinators and producer ids), `logs.rs`
//! (opening, eviction, maintenance), `replication/` (roles, the high
//! watermark, both sides of followers' fetches, ISR changes),
//! `cluster_sync.rs` (applying the cluster's metadata), `partition.rs`,
//! `topic.rs`, `producer_ids.rs`, `partitioner.rs`, `error.rs`.

mod admin;
mod cluster_sync;
mod error;
mod fetch;
mod internal;
pub(crate) mod journal;
mod logs;
mod partition;
pub mod partitioner;
mod produce;
mod producer_ids;
mod replication;
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
    is_internal_topic, validate_topic_name, TimestampPolicy, TimestampType, Topic, TopicConfig,
    INTERNAL_TOPIC_PREFIX, MAX_PARTITIONS, MAX_TOPIC_NAME_LEN,
};
use topic::{TopicMeta, TopicMetrics};

pub use admin::{PartitionInfo, TopicInfo};
pub use fetch::{
    BatchRead, FetchRequest, FetchResult, FetchedRecord, PartitionOffsets, Position, StoredRecords,
    Subscription,
};
pub(crate) use internal::Leadership;
pub use internal::RemoteReads;
use logs::{blocking_section, Maintenance, MaintenanceState};
pub use produce::{
    Acks, Appended, Header, IdempotentBatch, NewRecord, PartitionAppend, ProduceRequest,
    ProduceResult, RecordFailure, MAX_HEADERS_PER_RECORD, MAX_HEADER_BYTES_PER_RECORD,
    MAX_RECORDS_PER_REQUEST,
};
use replication::Role;
pub use replication::{
    min_insync_replicas, FollowerFetch, IsrChange, ReplicaFetchData, ReplicaFetchPartition,
    ReplicaRecords, ReplicaRefusal, ReplicationConfig,
};

use crate::storage::{
    batch::HEADER_LEN, BatchBuilder, BatchIter, FlushPolicy, Flusher, HeaderRef, IoPool, Log,
    LogConfig, ProducerFields, RecordView, StorageError,
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
/// Record bytes per `Subscribe` message when the request sets none.
pub const DEFAULT_SUBSCRIBE_BYTES: usize = 256 * 1024;
/// Record bytes per `Subscribe` message at most (larger asks are capped).
pub const MAX_SUBSCRIBE_BYTES: usize = 1024 * 1024;

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
    /// Largest `max_message_bytes` a topic may set (what one request can
    /// carry).
    pub max_message_limit: usize,
    /// How topics that set nothing stamp records.
    pub timestamps: TimestampPolicy,
    /// In a cluster: this broker hands out only producer ids `n * stride +
    /// node`, so brokers never hand out the same id, and it accepts ids of
    /// other brokers (each partition's own producer state fences stale
    /// epochs).
    pub producer_id_stripe: Option<ProducerIdStripe>,
    /// In a cluster: this broker's node id. Its user topics' partitions
    /// then serve only as the metadata's leader says (see
    /// `replication/`); without it every partition is standalone.
    pub node_id: Option<u64>,
    /// Replication settings (in a cluster).
    pub replication: ReplicationConfig,
}

/// Which producer ids a broker of a cluster hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdStripe {
    /// This broker's node id, below `stride`.
    pub node: i64,
    /// Ids per round (the largest node id + 1).
    pub stride: i64,
}

impl ProducerIdStripe {
    /// The broker that handed out `id`.
    pub fn owner(&self, id: i64) -> i64 {
        id.rem_euclid(self.stride)
    }
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
            max_message_limit: 4 * 1024 * 1024 - 64 * 1024,
            timestamps: TimestampPolicy::default(),
            producer_id_stripe: None,
            node_id: None,
            replication: ReplicationConfig::default(),
        }
    }
}

/// Gauges for metrics.
#[derive(Debug, Clone, Default)]
pub struct BrokerStats {
    /// Per topic: name, partitions, bytes, segments (closed logs as last
    /// seen).
    pub topics: Vec<(String, usize, u64, u64)>,
    /// Partition logs open now.
    pub open_logs: usize,
    /// Partitions this broker leads.
    pub led: usize,
    /// Of those, partitions whose ISR lacks a replica.
    pub under_replicated: usize,
    /// Of those, partitions whose ISR is below `min_insync_replicas`
    /// (acks=ALL is refused on them).
    pub under_min_isr: usize,
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
    /// Ids and epochs handed out (see `producer_ids`).
    producers: producer_ids::ProducerRegistry,
    /// Notified on appends to partitions this broker leads: followers'
    /// fetches waiting for records.
    leader_appended: tokio::sync::Notify,
    /// Bumped when the metadata was applied to partition roles.
    roles_changed: watch::Sender<u64>,
    /// Reads from other brokers' partitions (in a cluster). Set once at
    /// start; read (cloned) per remote read.
    remote: RwLock<Option<Arc<dyn RemoteReads>>>,
    /// Held (flock) so two brokers never share a data directory.
    _lock: File,
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

/// The file naming the data directory's format.
const FORMAT_FILE: &str = "format";
/// The data directory format this build writes and reads: 2 since record
/// batches carry Kafka's CRC-32C (1, unmarked, had crc32fast's CRC-32).
pub const DATA_FORMAT: u32 = 2;

/// Checks that `data` holds no data of another format, and marks a new
/// directory with this one. Runs before anything in it is opened, so an
/// older directory is refused whole rather than read as damage.
fn check_data_format(fs: &dyn crate::storage::FileSystem, data: &Path) -> Result<()> {
    let path = data.join(FORMAT_FILE);
    let refuse = |reason: String| BrokerError::DataFormat {
        path: data.to_path_buf(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let version = text
                .trim()
                .strip_prefix("sluice data format ")
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| refuse(format!("{FORMAT_FILE} does not name a format: {text:?}")))?;
            if version != DATA_FORMAT {
                return Err(refuse(format!(
                    "written in data format {version}; this build reads format {DATA_FORMAT} only"
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let holds_data = std::fs::read_dir(data)
                .map_err(|e| io_err("listing", data, e))?
                .flatten()
                .any(|e| match e.file_name().to_str() {
                    Some(".lock") | Some("trash") => false,
                    // A bootstrap token may be left before the first start.
                    Some(crate::security::store::BOOTSTRAP_DIR) => false,
                    Some("topics") => std::fs::read_dir(e.path())
                        .map(|mut d| d.next().is_some())
                        .unwrap_or(true),
                    _ => true,
                });
            if holds_data {
                return Err(refuse(format!(
                    "holds data written by an earlier Sluice (data format 1, record batches checksummed with CRC-32); this build writes Kafka's CRC-32C (format {DATA_FORMAT}) and does not read format 1: start it on an empty directory"
                )));
            }
            crate::storage::write_file_atomic(
                fs,
                &path,
                format!("sluice data format {DATA_FORMAT}\n").as_bytes(),
            )?;
            Ok(())
        }
        Err(e) => Err(io_err("reading", &path, e)),
    }
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
        check_data_format(&*config.log.fs, data)?;
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
            producers: Default::default(),
            leader_appended: tokio::sync::Notify::new(),
            roles_changed: watch::Sender::new(0),
            remote: RwLock::new(None),
            _lock: lock,
            config,
        });
        broker.load_topics()?;
        {
            let mut ids = broker.producer_ids.lock();
            if let Err(e) = broker.load_producer_ids(&mut ids) {
                // Idempotent produces are refused until InitProducer
                // manages to load them.
                tracing::error!(error = %e, "loading producer ids failed");
            }
        }
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
            .map(|i| {
                Arc::new(Partition::new(
                    name.clone(),
                    i,
                    dir.join(i.to_string()),
                    self.initial_role(&name),
                ))
            })
            .collect();
        Topic {
            metrics: TopicMetrics::new(&name),
            appended: tokio::sync::Notify::new(),
            log_config: meta.config.log_config(&self.config.log),
            timestamps: meta.config.timestamps(&self.config.timestamps),
            config: meta.config,
            name,
            dir,
            partitions: RwLock::new(Arc::new(partitions)),
            next_keyless: Default::default(),
            created_ms: meta.created_ms,
            incarnation: meta.incarnation,
        }
    }

    /// The role a partition of `topic` has until the metadata says more:
    /// in a cluster, a user topic's partition serves nothing yet.
    fn initial_role(&self, topic: &str) -> Role {
        if self.follows_metadata(topic) {
            Role::Offline { leader: None }
        } else {
            Role::Standalone
        }
    }

    /// Whether `topic` is a cluster topic here (in the metadata,
    /// replicated, led by one broker): in a cluster every topic is, user or
    /// internal, except the broker's own producer-id journal.
    pub fn follows_metadata(&self, topic: &str) -> bool {
        self.config.node_id.is_some() && topic != PRODUCER_IDS_TOPIC
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

    /// Numbers for the metrics endpoint.
    pub fn stats(&self) -> BrokerStats {
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        let mut out = BrokerStats {
            topics: Vec::with_capacity(topics.len()),
            open_logs: self.open_logs.load(Ordering::Relaxed),
            ..Default::default()
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
                if let Some((isr, replicas, min_isr)) = p.replica.leader_isr() {
                    out.led += 1;
                    out.under_replicated += usize::from(isr < replicas);
                    out.under_min_isr += usize::from(isr < min_isr);
                }
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

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn a_new_directory_is_marked_and_an_unmarked_one_with_data_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh = dir.path().join("fresh");
        let b = Broker::open(BrokerConfig::new(&fresh)).expect("open fresh");
        b.close();
        drop(b);
        let marker = std::fs::read_to_string(fresh.join(FORMAT_FILE)).expect("marker");
        assert_eq!(marker.trim(), format!("sluice data format {DATA_FORMAT}"));
        Broker::open(BrokerConfig::new(&fresh))
            .expect("reopen")
            .close();

        // A directory an earlier build wrote: topics, no marker.
        let old = dir.path().join("old");
        std::fs::create_dir_all(old.join("topics/orders")).expect("mkdir");
        let err = Broker::open(BrokerConfig::new(&old)).expect_err("old format refused");
        let msg = err.to_string();
        assert!(
            msg.contains("data format 1") && msg.contains("CRC-32C"),
            "{msg}"
        );
        assert!(
            !old.join(FORMAT_FILE).exists(),
            "an old directory is not marked"
        );

        // A marker of another format.
        std::fs::write(fresh.join(FORMAT_FILE), "sluice data format 3\n").expect("write");
        let msg = Broker::open(BrokerConfig::new(&fresh))
            .expect_err("newer format refused")
            .to_string();
        assert!(
            msg.contains("format 3") && msg.contains("format 2 only"),
            "{msg}"
        );
    }
}
