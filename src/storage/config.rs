//! Per-log settings.

use std::{sync::Arc, time::Duration};

use super::error::{Result, StorageError};
use super::fs::{os_fs, Fs};
use super::index::{OFFSET_ENTRY_LEN, TIME_ENTRY_LEN};

/// When appended data is forced to disk (beyond explicit [`crate::storage::Log::flush`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every append returns only once it is durable. Concurrent appenders
    /// share one flush (group commit).
    EveryAppend,
    /// Flush once this many records have been appended since the last flush.
    EveryRecords(u64),
    /// Flush when this much time has passed since the last flush (checked on
    /// append and by a [`crate::storage::Flusher`]).
    Interval(Duration),
    /// Only explicit flushes (and the operating system's own write-back).
    Manual,
}

/// A source of wall-clock time in milliseconds since the epoch. Injected so
/// that tests can drive time-based roll and retention.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    })
}

/// A monotonic clock in milliseconds since a fixed point in this process:
/// for time-outs (sessions, locks), which a step of the wall clock must
/// never fire or stall. Not a wall time: never store or show it.
pub fn monotonic_clock() -> Clock {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    Arc::new(move || start.elapsed().as_millis() as i64 + 1)
}

/// Settings of one partition log. Defaults follow Kafka's.
#[derive(Clone)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would grow past this.
    pub segment_bytes: u64,
    /// Roll when the active segment's first append is this old (None: never).
    pub segment_ms: Option<u64>,
    /// Largest batch accepted, in bytes.
    pub max_batch_bytes: usize,
    /// Bytes of data between two sparse index entries.
    pub index_interval_bytes: u64,
    /// Largest offset index file; a segment rolls when it is full.
    pub max_index_bytes: u64,
    /// First preallocation of a new segment's data file; it then grows in
    /// steps (doubling, at most 64 MiB each) up to `segment_bytes`.
    pub initial_preallocate_bytes: u64,
    /// Delete sealed segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// When appends are forced to disk.
    pub flush: FlushPolicy,
    /// Forget an idempotent producer's sequences once it has not appended
    /// for this long (Kafka's producer.id.expiration.ms).
    pub producer_expiration_ms: u64,
    /// Idempotent producers the log remembers at most: a new producer
    /// beyond this is refused (RESOURCE_EXHAUSTED) until idle ones expire.
    pub max_producers: usize,
    /// A flush moves the recovery point up to what it synced at most this
    /// often (each move writes the checkpoint, and a producer-state
    /// snapshot if the log has idempotent producers): after a crash,
    /// checksums are verified only past it.
    pub checkpoint_interval_ms: u64,
    /// Wall clock, ms since the epoch.
    pub clock: Clock,
    /// The file system that creates, renames, unlinks and syncs the log's
    /// files: the real one, or a simulated-crash one in tests.
    pub fs: Fs,
}

impl std::fmt::Debug for LogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogConfig")
            .field("segment_bytes", &self.segment_bytes)
            .field("segment_ms", &self.segment_ms)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("index_interval_bytes", &self.index_interval_bytes)
            .field("max_index_bytes", &self.max_index_bytes)
            .field("initial_preallocate_bytes", &self.initial_preallocate_bytes)
            .field("retention_ms", &self.retention_ms)
            .field("retention_bytes", &self.retention_bytes)
            .field("flush", &self.flush)
            .finish_non_exhaustive()
    }
}

/// Largest segment: positions in the offset index are 32-bit.
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            max_batch_bytes: 1024 * 1024 + 12 * 1024,
            index_interval_bytes: 4096,
            max_index_bytes: 10 * 1024 * 1024,
            initial_preallocate_bytes: 4 * 1024 * 1024,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            flush: FlushPolicy::Interval(Duration::from_secs(1)),
            producer_expiration_ms: 24 * 3600 * 1000,
            max_producers: 10_000,
            checkpoint_interval_ms: 10_000,
            clock: system_clock(),
            fs: os_fs(),
        }
    }
}

impl LogConfig {
    /// Checks every value against its valid range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StorageError::InvalidConfig(m));
        if self.segment_bytes < 1024 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return bad(format!(
                "segment_bytes {} must be in [1024, {MAX_SEGMENT_BYTES}]",
                self.segment_bytes
            ));
        }
        if self.max_batch_bytes < 128 || self.max_batch_bytes as u64 > self.segment_bytes {
            return bad(format!(
                "max_batch_bytes {} must be in [128, segment_bytes = {}]",
                self.max_batch_bytes, self.segment_bytes
            ));
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be at least 1".into());
        }
        let min_index = 4 * TIME_ENTRY_LEN.max(OFFSET_ENTRY_LEN) as u64;
        if self.max_index_bytes < min_index || self.max_index_bytes > u32::MAX as u64 {
            return bad(format!(
                "max_index_bytes {} must be in [{min_index}, {}]",
                self.max_index_bytes,
                u32::MAX
            ));
        }
        if self.initial_preallocate_bytes == 0 {
            return bad("initial_preallocate_bytes must be at least 1".into());
        }
        match self.flush {
            FlushPolicy::EveryRecords(0) => {
                return bad("flush every 0 records: use at least 1".into())
            }
            FlushPolicy::Interval(d) if d.is_zero() => {
                return bad("flush interval must be above 0 ms".into())
            }
            _ => {}
        }
        Ok(())
    }
}
