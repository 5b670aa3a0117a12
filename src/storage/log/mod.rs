//! The partition log: a directory of segments with one writer and any number
//! of lock-free readers.
//!
//! Concurrency: appends, rolls, truncation and retention take the writer
//! lock (one owner of the tail at a time). Readers never take it: they load
//! the published end offset, clone the segment list under a brief read lock,
//! and read mapped bytes that are never changed once published, so a reader
//! always sees a consistent prefix and never blocks an append.
//!
//! Files: this one (the log, appends, rolls, reads), `recovery.rs`
//! (open), `flush.rs` (durability), `retention.rs` (removing data, and the
//! scrubber), `tests.rs`, `replica_tests.rs` and `damage_tests.rs`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use tracing::{debug, info, warn};

mod flush;
mod recovery;
mod retention;

use recovery::remove_segment_files;

use super::batch::RecordBatch;
use super::batch::{BatchIter, BatchView, NO_PRODUCER_ID};
use super::checkpoint::{self, Checkpoint};
use super::config::{FlushPolicy, LogConfig};
use super::epochs::LeaderEpochs;
use super::error::{Result, StorageError};
use super::fs::FileSystem;
use super::index::{
    indexes_sane, offset_entry_at, time_entry_at, IndexBuilder, OFFSET_ENTRY_LEN, TIME_ENTRY_LEN,
};
use super::mmap::{map_sealed, sync_dir, write_file_atomic};
use super::producer_state::{BatchMeta, Check, ProducerStates, SNAPSHOT_EXT};
use super::segment::{
    scan, segment_path, ActiveSegment, RecoveredSegment, ScanOutcome, SealedFiles, Segment, Verify,
    INDEX_EXT, LOG_EXT, TIME_INDEX_EXT,
};

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the batch's first record.
    pub base_offset: i64,
    /// Offset of its last record.
    pub last_offset: i64,
    /// Its largest record timestamp.
    pub max_timestamp: i64,
    /// An idempotent producer's retry of a batch appended earlier: nothing
    /// was written, and the offsets are the earlier append's.
    pub duplicate: bool,
}

/// Whole batches read from the log.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Concatenated batches (see [`crate::storage::BatchIter`]). Empty when
    /// the offset was the log end. The first batch may start before the
    /// offset asked for: batches are never split.
    pub data: Bytes,
    /// Log start offset when the read began.
    pub log_start_offset: i64,
    /// Log end offset when the read began.
    pub log_end_offset: i64,
}

/// What opening the log found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The log had been closed cleanly; nothing was scanned.
    pub clean: bool,
    /// Segments in the log after opening.
    pub segments: usize,
    /// Segments whose batches were scanned and verified.
    pub segments_scanned: usize,
    /// Batches verified.
    pub batches_scanned: u64,
    /// Bytes of torn or corrupt data cut off (not counting unused
    /// preallocated zeros), including dropped segments.
    pub truncated_bytes: u64,
    /// Whole segments dropped because they followed damage.
    pub dropped_segments: usize,
    /// Sealed segments whose missing or damaged index files were rebuilt.
    pub rebuilt_indexes: usize,
}

/// What a scrub of sealed segments found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubOutcome {
    /// Bytes of data verified.
    pub bytes: u64,
    /// Batches verified.
    pub batches: u64,
    /// Damaged offset ranges `[from, to)` found.
    pub damaged: Vec<(i64, i64)>,
}

/// What retention deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Segments deleted.
    pub deleted_segments: usize,
    /// Bytes of data deleted.
    pub deleted_bytes: u64,
}

struct Writer {
    active: ActiveSegment,
    leader_epoch: i32,
    records_since_flush: u64,
    /// Rolled segments whose files are not yet synced; the recovery point
    /// advances past them once they are.
    pending: Vec<SealedFiles>,
    /// Producer-state snapshots taken at rolls (offset, encoded state),
    /// written once every batch below their offset is synced: a snapshot
    /// must never be durable before the data it describes.
    pending_snapshots: Vec<(i64, Vec<u8>)>,
    /// The on-disk checkpoint no longer claims a clean close.
    marked_unclean: bool,
    /// Idempotent producers' sequences; checked and updated with each
    /// append under this lock, so check and append are one step.
    producers: ProducerStates,
    /// Offsets of the producer-state snapshots on disk, ascending.
    snapshots: Vec<i64>,
    /// Where each leader epoch starts (see `storage::epochs`); written
    /// before the first batch of a new epoch.
    epochs: LeaderEpochs,
}

struct FlushState {
    /// Every offset below this is durable.
    flushed: i64,
    /// A thread is syncing; others wait for it and then share the next one.
    in_progress: bool,
    last_flush_ms: i64,
}

/// A partition log. See the module docs for its concurrency rules.
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    /// Segments in offset order. Readers clone the `Arc` under a brief read
    /// lock; the writer swaps in a new list on roll, truncation, retention.
    segments: RwLock<Arc<Vec<Arc<Segment>>>>,
    /// Next offset to assign. Stored (Release) after the batch is published
    /// in its segment.
    end_offset: AtomicI64,
    /// The tail: only one thread changes the log at a time.
    writer: Mutex<Writer>,
    /// Group commit: who is flushing and how far the log is durable. Held
    /// only for bookkeeping, never across a sync.
    flush: Mutex<FlushState>,
    flush_done: Condvar,
    /// The checkpoint as last written. Held across its (small) write so
    /// writes are never reordered.
    checkpoint: Mutex<Checkpoint>,
    closed: AtomicBool,
    /// A flush of this log is queued on an [`crate::storage::IoPool`] and
    /// has not started yet.
    flush_queued: AtomicBool,
    /// Told how far the log is durable after every sync, and of failed
    /// syncs (see [`Log::set_durable_hook`]).
    durable_hook: RwLock<Option<DurableHook>>,
    recovery: RecoveryReport,
    /// Syncs of the active segment so far (for metrics and tests).
    syncs: AtomicU64,
    /// Base offset of the next sealed segment the scrubber verifies.
    scrub_cursor: AtomicI64,
    /// When a flush last moved the recovery point (ms, the log's clock).
    last_checkpoint_ms: AtomicI64,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("start_offset", &self.start_offset())
            .field("end_offset", &self.end_offset())
            .finish_non_exhaustive()
    }
}

/// Told, after each sync, the offset below which everything is durable,
/// and the error if the sync failed.
pub type DurableHook = Arc<dyn Fn(i64, Option<&StorageError>) + Send + Sync>;

impl Log {
    /// Idempotent producers this partition knows.
    pub fn producer_count(&self) -> usize {
        self.writer.lock().producers.len()
    }

    /// Forgets idempotent producers idle for `producer_expiration_ms`
    /// (also done at each roll); returns how many.
    pub fn expire_producers(&self) -> usize {
        let now = (self.config.clock)();
        let idle_before = now.saturating_sub(self.config.producer_expiration_ms as i64);
        self.writer.lock().producers.expire(idle_before)
    }

    /// Each idempotent producer this partition knows, with its epoch.
    pub fn producer_epochs(&self) -> Vec<(i64, i16)> {
        self.writer.lock().producers.epochs()
    }

    /// The largest idempotent producer id this partition knows.
    pub fn max_producer_id(&self) -> Option<i64> {
        self.writer.lock().producers.max_producer_id()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's settings.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// What opening the log found.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    fn segments(&self) -> Arc<Vec<Arc<Segment>>> {
        self.segments.read().clone()
    }

    /// First offset still in the log.
    pub fn start_offset(&self) -> i64 {
        self.segments.read()[0].base_offset()
    }

    /// Offset the next appended record gets.
    pub fn end_offset(&self) -> i64 {
        self.end_offset.load(Ordering::Acquire)
    }

    /// Every offset below this is on disk.
    pub fn flushed_offset(&self) -> i64 {
        self.flush.lock().flushed
    }

    /// Bytes of data in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments().iter().map(|s| s.size()).sum()
    }

    /// Base offset of the active segment (everything below it is sealed).
    pub fn active_segment_base(&self) -> i64 {
        self.segments.read().last().map_or(0, |s| s.base_offset())
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.read().len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<i64> {
        self.segments().iter().map(|s| s.base_offset()).collect()
    }

    /// Number of syncs done so far. Under group commit it grows more slowly
    /// than the number of durable appends.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Leader epoch stamped on appended batches.
    pub fn leader_epoch(&self) -> i32 {
        self.writer.lock().leader_epoch
    }

    fn update_checkpoint(&self, f: impl FnOnce(&mut Checkpoint)) -> Result<()> {
        let mut saved = self.checkpoint.lock();
        let mut next = *saved;
        f(&mut next);
        if next != *saved {
            next.write(&*self.config.fs, &self.dir)?;
            *saved = next;
        }
        Ok(())
    }

    /// Before the first change after a clean open: the checkpoint must stop
    /// vouching for files that are about to change.
    fn mark_unclean(&self, w: &mut Writer) -> Result<()> {
        if !w.marked_unclean {
            self.update_checkpoint(|c| c.clean = false)?;
            w.marked_unclean = true;
        }
        Ok(())
    }

    /// Sets the leader epoch stamped on batches from now on. It may only
    /// rise; it is made durable before any batch carries it.
    pub fn set_leader_epoch(&self, epoch: i32) -> Result<()> {
        let mut w = self.writer.lock();
        if epoch < w.leader_epoch {
            return Err(StorageError::InvalidConfig(format!(
                "leader epoch {epoch} is below the current epoch {}; epochs only rise",
                w.leader_epoch
            )));
        }
        self.mark_unclean(&mut w)?;
        let end = w.active.next_offset();
        self.assign_epoch(&mut w, epoch, end)?;
        Ok(())
    }

    /// Records that `epoch` starts at `offset` (durably, in the epoch cache
    /// and the checkpoint's largest epoch) before any batch carries it.
    fn assign_epoch(&self, w: &mut Writer, epoch: i32, offset: i64) -> Result<()> {
        let mut next = w.epochs.clone();
        if next.assign(epoch, offset)? {
            next.write(&*self.config.fs, &self.dir)?;
            w.epochs = next;
        }
        if epoch > w.leader_epoch {
            self.update_checkpoint(|c| c.leader_epoch = epoch)?;
            w.leader_epoch = epoch;
        }
        Ok(())
    }

    /// The newest leader epoch in the epoch cache (`None` for a log that
    /// never had one assigned and holds no batch).
    pub fn latest_epoch(&self) -> Option<i32> {
        self.writer.lock().epochs.latest()
    }

    /// The epoch cache's entries: (epoch, start offset), ascending.
    pub fn epochs(&self) -> Vec<(i32, i64)> {
        self.writer.lock().epochs.entries().to_vec()
    }

    /// The largest epoch at most `epoch` and the offset where it ends in
    /// this log (Kafka's `OffsetsForLeaderEpoch`); `None` if every epoch
    /// here is newer.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        let w = self.writer.lock();
        w.epochs.end_offset_for(epoch, w.active.next_offset())
    }

    /// Appends batches copied from a replication leader, keeping their
    /// offsets and leader epochs byte for byte. `data` holds whole
    /// batches; the first must start at this log's end and each follow
    /// the previous one. Every checksum is verified first; idempotent
    /// producers' state is recorded as on the leader (no checks: the
    /// leader made them). Returns the new end offset and whether the flush
    /// policy wants a sync.
    pub fn append_replicated(&self, data: &[u8]) -> Result<(i64, bool)> {
        let now = (self.config.clock)();
        let mut w = self.writer.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        let mut due = false;
        for batch in BatchIter::new(data) {
            let view = batch.map_err(StorageError::InvalidBatch)?;
            view.verify_crc().map_err(StorageError::InvalidBatch)?;
            if view.len() > self.config.max_batch_bytes {
                return Err(StorageError::BatchTooLarge {
                    size: view.len(),
                    limit: self.config.max_batch_bytes,
                });
            }
            let next = w.active.next_offset();
            if view.base_offset() != next {
                return Err(StorageError::InvalidConfig(format!(
                    "replicated batch starts at offset {}, but the log ends at {next}",
                    view.base_offset()
                )));
            }
            let epoch = view.leader_epoch();
            // Epochs only rise along a log. An older one here is a stale
            // leader's batch arriving after this replica moved on (became
            // leader itself, or cut its tail to a newer leader's log):
            // appended, it would sit past the newer epoch's start and make
            // every later divergence check cut the log there again.
            if let Some(latest) = w.epochs.latest().filter(|e| *e > epoch) {
                return Err(StorageError::InvalidConfig(format!(
                    "replicated batch at offset {next} is in leader epoch {epoch}, below this log's epoch {latest}"
                )));
            }
            self.mark_unclean(&mut w)?;
            if w.epochs.latest().is_none_or(|e| e < epoch) {
                self.assign_epoch(&mut w, epoch, next)?;
            }
            if w.active
                .must_roll(view.len(), view.last_offset_delta(), &self.config, now)
            {
                self.roll(&mut w, now)?;
            }
            let (base_offset, last_offset) = w.active.append(&view, epoch)?;
            due |= self.appended(&mut w, &view, base_offset, last_offset, now);
        }
        if due {
            w.records_since_flush = 0;
        }
        Ok((w.active.next_offset(), due))
    }

    /// Appends a batch: assigns it the next offsets and the current leader
    /// epoch. Returns once the batch is visible to readers, and, under
    /// [`FlushPolicy::EveryAppend`], once it is durable (sharing one sync
    /// with concurrent appenders).
    pub fn append(&self, batch: &RecordBatch) -> Result<AppendInfo> {
        let (info, flush_due) = self.append_deferred(batch)?;
        if flush_due {
            self.flush_until(info.last_offset + 1)?;
        }
        Ok(info)
    }

    /// Whether appending `batch` now would touch the file system beyond
    /// writing into preallocated room: a roll (new files), growing a file,
    /// or the first change after a clean open (a checkpoint rewrite). An
    /// async caller then appends off its runtime's workers.
    pub fn append_needs_file_work(&self, batch: &RecordBatch) -> bool {
        let now = (self.config.clock)();
        let w = self.writer.lock();
        !w.marked_unclean
            || w.epochs.latest().is_none_or(|e| e < w.leader_epoch)
            || w.active.needs_room(batch.len())
            || w.active.must_roll(
                batch.len(),
                batch.view().last_offset_delta(),
                &self.config,
                now,
            )
    }

    /// Appends like [`Log::append`] but never syncs: the second value says
    /// whether the flush policy wants the batch durable before the append
    /// is answered, which the caller then arranges (on an I/O thread).
    pub fn append_deferred(&self, batch: &RecordBatch) -> Result<(AppendInfo, bool)> {
        if batch.len() > self.config.max_batch_bytes {
            return Err(StorageError::BatchTooLarge {
                size: batch.len(),
                limit: self.config.max_batch_bytes,
            });
        }
        let now = (self.config.clock)();
        let (info, flush_due) = {
            let mut w = self.writer.lock();
            if self.closed.load(Ordering::Acquire) {
                return Err(StorageError::Closed);
            }
            let view = batch.view();
            let producer_id = view.producer_id();
            if producer_id != NO_PRODUCER_ID {
                let check = w.producers.check(
                    producer_id,
                    view.producer_epoch(),
                    view.base_sequence(),
                    view.record_count(),
                    self.config.max_producers,
                )?;
                if let Check::Duplicate(b) = check {
                    let info = AppendInfo {
                        base_offset: b.base_offset,
                        last_offset: b.last_offset,
                        max_timestamp: batch.max_timestamp(),
                        duplicate: true,
                    };
                    return Ok((info, false));
                }
            }
            self.mark_unclean(&mut w)?;
            if w.active.must_roll(
                batch.len(),
                batch.view().last_offset_delta(),
                &self.config,
                now,
            ) {
                self.roll(&mut w, now)?;
            }
            let epoch = w.leader_epoch;
            if w.epochs.latest().is_none_or(|e| e < epoch) {
                // The log's first batch (or a log from before the cache).
                let next = w.active.next_offset();
                self.assign_epoch(&mut w, epoch, next)?;
            }
            let (base_offset, last_offset) = w.active.append(&view, epoch)?;
            let due = self.appended(&mut w, &view, base_offset, last_offset, now);
            if due {
                w.records_since_flush = 0;
            }
            (
                AppendInfo {
                    base_offset,
                    last_offset,
                    max_timestamp: batch.max_timestamp(),
                    duplicate: false,
                },
                due,
            )
        };
        Ok((info, flush_due))
    }

    /// After a batch is written at `[base_offset, last_offset]`: records
    /// an idempotent producer's sequences, publishes the new end, and says
    /// whether the flush policy wants a sync now.
    fn appended(
        &self,
        w: &mut Writer,
        view: &BatchView<'_>,
        base_offset: i64,
        last_offset: i64,
        now: i64,
    ) -> bool {
        let producer_id = view.producer_id();
        if producer_id != NO_PRODUCER_ID {
            w.producers.record(
                producer_id,
                view.producer_epoch(),
                BatchMeta {
                    first_seq: view.base_sequence(),
                    last_seq: crate::storage::producer_state::seq_add(
                        view.base_sequence(),
                        i64::from(view.last_offset_delta()),
                    ),
                    base_offset,
                    last_offset,
                },
                now,
            );
        }
        self.end_offset.store(last_offset + 1, Ordering::Release);
        w.records_since_flush += view.record_count() as u64;
        match self.config.flush {
            FlushPolicy::EveryAppend => true,
            FlushPolicy::EveryRecords(n) => w.records_since_flush >= n,
            FlushPolicy::Interval(d) => {
                now - self.flush.lock().last_flush_ms >= d.as_millis() as i64
            }
            FlushPolicy::Manual => false,
        }
    }

    /// Seals the active segment and starts a new one at the end offset.
    fn roll(&self, w: &mut Writer, now: i64) -> Result<()> {
        let base = w.active.next_offset();
        let next = ActiveSegment::create(&self.dir, base, &self.config, now)?;
        let sealed = match w.active.seal() {
            Ok(files) => files,
            Err(e) => {
                drop(next);
                remove_segment_files(&*self.config.fs, &self.dir, base);
                return Err(e);
            }
        };
        // From here nothing can fail: readers see the new segment as soon
        // as appends go to it.
        let new_segment = next.segment().clone();
        {
            let mut list = self.segments.write();
            let mut segments = Vec::clone(&list);
            segments.push(new_segment);
            *list = Arc::new(segments);
        }
        w.pending.push(sealed);
        w.active = next;
        // Recovery after a crash replays producer state from the newest
        // snapshot, so it never scans more than the active segment. The
        // snapshot is written by the flush that makes the sealed segment
        // durable, never before.
        let encoded = self.producer_snapshot(w, now);
        w.pending_snapshots.push((base, encoded));
        Ok(())
    }

    /// Reads whole batches starting with the one that holds `offset`, up to
    /// `max_bytes` (but always at least one batch). Reading at the end
    /// offset returns no data; outside `[start, end]` is an error that names
    /// the range.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult> {
        self.read_records(offset, max_bytes, usize::MAX)
    }

    /// [`Log::read`], stopping also at the batch that holds the
    /// `max_records`th record from `offset`: a small read of a large
    /// segment walks (and checksums) only the batches it returns.
    pub fn read_records(
        &self,
        offset: i64,
        max_bytes: usize,
        max_records: usize,
    ) -> Result<ReadResult> {
        let end = self.end_offset();
        let segments = self.segments();
        let start = segments[0].base_offset();
        let result = |data| {
            Ok(ReadResult {
                data,
                log_start_offset: start,
                log_end_offset: end,
            })
        };
        if offset < start || offset > end {
            return Err(StorageError::OffsetOutOfRange { offset, start, end });
        }
        let first = segments
            .partition_point(|s| s.base_offset() <= offset)
            .saturating_sub(1);
        for (i, seg) in segments.iter().enumerate().skip(first) {
            if seg.base_offset() >= end {
                break;
            }
            let next = segments.get(i + 1).map_or(end, |s| s.base_offset());
            let view = match seg.view(next) {
                Ok(v) => v,
                Err(e) => return Err(self.deleted_or(e, offset)),
            };
            if let Some(data) = view.read(offset, (max_bytes, max_records), end, next)? {
                return result(data);
            }
        }
        result(Bytes::new())
    }

    /// A segment that vanished under a reader was deleted by retention: the
    /// offset is now below the log start.
    fn deleted_or(&self, e: StorageError, offset: i64) -> StorageError {
        match &e {
            StorageError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                StorageError::OffsetOutOfRange {
                    offset,
                    start: self.start_offset(),
                    end: self.end_offset(),
                }
            }
            _ => e,
        }
    }

    /// First offset whose record timestamp is at least `timestamp`; `None`
    /// if every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<i64>> {
        let end = self.end_offset();
        let segments = self.segments();
        for (i, seg) in segments.iter().enumerate() {
            let next = segments.get(i + 1).map_or(end, |s| s.base_offset());
            let view = seg
                .view(next)
                .map_err(|e| self.deleted_or(e, seg.base_offset()))?;
            if let Some(offset) = view.offset_for_timestamp(timestamp, end)? {
                return Ok(Some(offset));
            }
        }
        Ok(None)
    }

    /// Closes the log cleanly: syncs and trims every file and records a
    /// clean checkpoint, so the next open scans nothing. Appends fail
    /// afterwards; reads still work. Idempotent.
    pub fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut w = self.writer.lock();
        for sealed in std::mem::take(&mut w.pending) {
            sealed.sync()?;
        }
        w.active.close()?;
        sync_dir(&*self.config.fs, &self.dir)?;
        let end = w.active.next_offset();
        let epoch = w.leader_epoch;
        // Everything is synced: the snapshot at the end supersedes those
        // still waiting for a flush.
        w.pending_snapshots.clear();
        if !w.producers.is_empty() || !w.snapshots.is_empty() {
            let now = (self.config.clock)();
            let encoded = self.producer_snapshot(&mut w, now);
            drop(w);
            self.write_producer_snapshot(end, &encoded)?;
        }
        self.update_checkpoint(|c| {
            *c = Checkpoint {
                recovery_point: end,
                clean: true,
                leader_epoch: epoch,
            }
        })?;
        self.flush.lock().flushed = end;
        self.tell_durable(end, None);
        Ok(())
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            warn!(dir = %self.dir.display(), error = %e, "log was not closed cleanly; the next open will verify it");
        }
    }
}

#[cfg(test)]
mod damage_tests;
#[cfg(test)]
mod replica_tests;
#[cfg(test)]
mod tests;
