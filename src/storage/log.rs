//! The partition log: a directory of segments with one writer and any number
//! of lock-free readers.
//!
//! Concurrency: appends, rolls, truncation and retention take the writer
//! lock (one owner of the tail at a time). Readers never take it: they load
//! the published end offset, clone the segment list under a brief read lock,
//! and read mapped bytes that are never changed once published, so a reader
//! always sees a consistent prefix and never blocks an append.

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

use super::batch::RecordBatch;
use super::batch::{BatchIter, BatchView, NO_PRODUCER_ID};
use super::checkpoint::{self, Checkpoint};
use super::config::{FlushPolicy, LogConfig};
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

/// The segment files found in a log directory.
#[derive(Debug, Default)]
struct Found {
    log: bool,
    index: bool,
    time: bool,
}

/// Lists a log directory: segment files by base offset, and the offsets of
/// producer-state snapshots. Leftover temporary files and index files
/// without data are removed; anything else is an error.
fn list_dir(fs: &dyn FileSystem, dir: &Path) -> Result<(BTreeMap<i64, Found>, Vec<i64>)> {
    let mut found: BTreeMap<i64, Found> = BTreeMap::new();
    let mut snapshots = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("listing", dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| StorageError::UnknownFile { path: path.clone() })?;
        if name == checkpoint::FILE_NAME {
            continue;
        }
        if name.ends_with(".tmp") || name.ends_with(".truncating") {
            warn!(path = %path.display(), "removing a temporary file left by an interrupted write");
            fs.remove_file(&path)
                .map_err(|e| StorageError::io("removing", &path, e))?;
            continue;
        }
        let parsed = name.split_once('.').and_then(|(stem, ext)| {
            let base = (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
                .then(|| stem.parse::<i64>().ok())??;
            Some((base, ext))
        });
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        let slot = match parsed {
            Some((base, SNAPSHOT_EXT)) if is_file => {
                snapshots.push(base);
                continue;
            }
            Some((base, ext)) if is_file && [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT].contains(&ext) => {
                let f = found.entry(base).or_default();
                match ext {
                    LOG_EXT => &mut f.log,
                    INDEX_EXT => &mut f.index,
                    _ => &mut f.time,
                }
            }
            _ => return Err(StorageError::UnknownFile { path }),
        };
        *slot = true;
    }
    found.retain(|&base, f| {
        if !f.log {
            warn!(
                base,
                "removing index files of a segment whose data file is gone"
            );
            for ext in [INDEX_EXT, TIME_INDEX_EXT] {
                let _ = fs.remove_file(&segment_path(dir, base, ext));
            }
        }
        f.log
    });
    snapshots.sort_unstable();
    Ok((found, snapshots))
}

fn file_len(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| StorageError::io("reading metadata of", path, e))
}

/// Creation time of a file in ms since the epoch (its modification time
/// where the file system keeps no creation time).
fn created_ms(path: &Path, fallback: i64) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.created().or_else(|_| m.modified()))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(fallback, |d| d.as_millis() as i64)
}

fn remove_segment_files(fs: &dyn FileSystem, dir: &Path, base: i64) {
    // Data first: index files without data are cleaned up on open.
    for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
        let path = segment_path(dir, base, ext);
        if let Err(e) = fs.remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %path.display(), error = %e, "could not remove segment file");
            }
        }
    }
}

impl Log {
    /// Opens the log in `dir` (creating it if needed) and recovers it.
    ///
    /// After a clean close nothing is scanned. Otherwise every segment from
    /// the one holding the recovery point on is verified batch by batch;
    /// everything from the first torn or corrupt batch on is cut off and
    /// reported in a warning. Missing or damaged indexes are rebuilt.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Self> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let fs = &*config.fs;
        fs.create_dir_all(&dir)
            .map_err(|e| StorageError::io("creating", &dir, e))?;
        let (found, snapshots) = list_dir(fs, &dir)?;
        let saved = Checkpoint::read(&dir)?;
        let now = (config.clock)();
        let bases: Vec<i64> = found.keys().copied().collect();
        let mut report = RecoveryReport::default();

        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len().max(1));
        let active;
        let mut leader_epoch = saved.map_or(0, |c| c.leader_epoch);
        let mut checkpoint = saved.unwrap_or(Checkpoint {
            recovery_point: i64::MIN,
            clean: false,
            leader_epoch: 0,
        });

        if bases.is_empty() {
            let base = saved.map_or(0, |c| c.recovery_point.max(0));
            active = ActiveSegment::create(&dir, base, &config, now)?;
            sync_dir(fs, &dir)?;
            checkpoint = Checkpoint {
                recovery_point: base,
                clean: false,
                leader_epoch,
            };
            checkpoint.write(fs, &dir)?;
        } else {
            let last = bases.len() - 1;
            let clean = saved.is_some_and(|c| c.clean);
            let first_untrusted = if clean {
                last
            } else {
                bases
                    .iter()
                    // A segment that ends exactly at the recovery point
                    // may have been sealed after it was written (its files
                    // then unsynced): walked again, with no checksums.
                    .rposition(|&b| b < checkpoint.recovery_point)
                    .unwrap_or(0)
            };
            for (i, &base) in bases[..first_untrusted].iter().enumerate() {
                let f = &found[&base];
                let data_len = file_len(&segment_path(&dir, base, LOG_EXT))?;
                let index_ok = |ext, entry| {
                    file_len(&segment_path(&dir, base, ext))
                        .map(|l| l.is_multiple_of(entry as u64))
                        .unwrap_or(false)
                };
                if !(f.index
                    && f.time
                    && index_ok(INDEX_EXT, OFFSET_ENTRY_LEN)
                    && index_ok(TIME_INDEX_EXT, TIME_ENTRY_LEN))
                {
                    Self::rebuild_sealed_indexes(&dir, base, bases[i + 1], &config)?;
                    report.rebuilt_indexes += 1;
                }
                segments.push(Segment::unloaded(&dir, base, data_len, &config));
            }
            let trusted_tail = if clean {
                Self::open_clean_tail(&dir, bases[last], &config)?
            } else {
                None
            };
            match trusted_tail {
                Some(state) => {
                    report.clean = true;
                    let created = created_ms(&segment_path(&dir, bases[last], LOG_EXT), now);
                    active =
                        ActiveSegment::open(&dir, bases[last], &state, &config, created, false)?;
                }
                None => {
                    if clean {
                        warn!(dir = %dir.display(), "log was closed cleanly but its last segment does not match; verifying it");
                    }
                    let min_epoch = 0;
                    let (tail, epoch) = Self::recover_tail(
                        &dir,
                        &bases[first_untrusted..],
                        &config,
                        Verify {
                            max_epoch: if saved.is_some() {
                                leader_epoch
                            } else {
                                i32::MAX
                            },
                            min_epoch,
                            // Batches below the recovery point were synced
                            // before it was written: walked, not checked.
                            crc_from: saved.map_or(i64::MIN, |c| c.recovery_point),
                        },
                        &mut segments,
                        &mut report,
                    )?;
                    if saved.is_none() {
                        leader_epoch = epoch.unwrap_or(0).max(0);
                    }
                    let created = created_ms(&segment_path(&dir, tail.0, LOG_EXT), now);
                    active = ActiveSegment::open(&dir, tail.0, &tail.1, &config, created, false)?;
                    sync_dir(fs, &dir)?;
                    // Everything before the tail segment is now verified and
                    // synced, and the tail up to the old recovery point was
                    // synced before it was written.
                    checkpoint = Checkpoint {
                        recovery_point: saved.map_or(tail.0, |c| {
                            c.recovery_point.clamp(tail.0, tail.1.next_offset)
                        }),
                        clean: false,
                        leader_epoch,
                    };
                    checkpoint.write(fs, &dir)?;
                }
            }
        }
        segments.push(active.segment().clone());
        report.segments = segments.len();
        let end = active.next_offset();
        // Debug: a broker with many partitions opens and closes logs often.
        tracing::debug!(
            dir = %dir.display(),
            start = segments[0].base_offset(),
            end,
            segments = segments.len(),
            clean = report.clean,
            scanned = report.segments_scanned,
            "log opened"
        );
        let marked_unclean = !checkpoint.clean;
        let (producers, snapshots) =
            Self::load_producers(fs, &dir, &segments, end, report.clean, snapshots, now)?;
        // After a crash the recovered tail may exist only in the page cache
        // (a process crash keeps it there): it is durable only once synced.
        let flushed = if report.clean {
            end
        } else {
            checkpoint
                .recovery_point
                .clamp(segments[0].base_offset(), end)
        };
        Ok(Self {
            dir,
            segments: RwLock::new(Arc::new(segments)),
            end_offset: AtomicI64::new(end),
            writer: Mutex::new(Writer {
                active,
                leader_epoch,
                records_since_flush: 0,
                pending: Vec::new(),
                pending_snapshots: Vec::new(),
                marked_unclean,
                producers,
                snapshots,
            }),
            flush: Mutex::new(FlushState {
                flushed,
                in_progress: false,
                last_flush_ms: now,
            }),
            flush_done: Condvar::new(),
            checkpoint: Mutex::new(checkpoint),
            closed: AtomicBool::new(false),
            flush_queued: AtomicBool::new(false),
            durable_hook: RwLock::new(None),
            recovery: report,
            syncs: AtomicU64::new(0),
            scrub_cursor: AtomicI64::new(i64::MIN),
            last_checkpoint_ms: AtomicI64::new(0),
            config,
        })
    }

    /// Rebuilds the producer state: the newest readable snapshot at or
    /// below `end`, then the headers of every batch after it. After a clean
    /// close the snapshot at `end` is the whole state (none: no producers).
    /// Returns the state and the snapshots kept.
    fn load_producers(
        fs: &dyn FileSystem,
        dir: &Path,
        segments: &[Arc<Segment>],
        end: i64,
        clean: bool,
        mut snapshots: Vec<i64>,
        now: i64,
    ) -> Result<(ProducerStates, Vec<i64>)> {
        // Snapshots past the end describe batches recovery cut off.
        for &s in snapshots.iter().filter(|&&s| s > end) {
            let _ = fs.remove_file(&segment_path(dir, s, SNAPSHOT_EXT));
        }
        snapshots.retain(|&s| s <= end);
        if clean && snapshots.is_empty() {
            return Ok((ProducerStates::default(), snapshots));
        }
        let start = segments.first().map_or(end, |s| s.base_offset());
        let mut state = ProducerStates::default();
        let mut from = start;
        for &s in snapshots.iter().rev() {
            let path = segment_path(dir, s, SNAPSHOT_EXT);
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| ProducerStates::decode(&b))
            {
                Ok(st) => {
                    state = st;
                    from = s.max(start);
                    break;
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "unreadable producer-state snapshot; using an older one or the log")
                }
            }
        }
        if clean && from == end {
            return Ok((state, snapshots));
        }
        let mut replayed = 0u64;
        for (i, seg) in segments.iter().enumerate() {
            let next = segments.get(i + 1).map_or(end, |s| s.base_offset());
            if next <= from {
                continue;
            }
            let view = seg.view(next)?;
            for b in BatchIter::new(&view.data) {
                let b = b.map_err(|e| StorageError::Corrupt {
                    path: seg.path(LOG_EXT),
                    reason: format!("rebuilding producer state: {e}"),
                })?;
                if b.base_offset() < from || b.producer_id() == NO_PRODUCER_ID {
                    continue;
                }
                replayed += 1;
                state.record(
                    b.producer_id(),
                    b.producer_epoch(),
                    BatchMeta {
                        first_seq: b.base_sequence(),
                        last_seq: super::producer_state::seq_add(
                            b.base_sequence(),
                            i64::from(b.last_offset_delta()),
                        ),
                        base_offset: b.base_offset(),
                        last_offset: b.last_offset(),
                    },
                    now,
                );
            }
        }
        if replayed > 0 {
            debug!(dir = %dir.display(), from, batches = replayed, producers = state.len(), "rebuilt producer state from the log");
        }
        Ok((state, snapshots))
    }

    /// The producer state as of `offset` (every batch below it), encoded
    /// for a snapshot. Idle producers expire first.
    fn producer_snapshot(&self, w: &mut Writer, now: i64) -> Vec<u8> {
        let idle_before = now.saturating_sub(self.config.producer_expiration_ms as i64);
        w.producers.expire(idle_before);
        w.producers.encode()
    }

    /// Writes a producer-state snapshot at `offset`, whose batches below it
    /// must already be durable, and keeps the newest two snapshots.
    fn write_producer_snapshot(&self, offset: i64, encoded: &[u8]) -> Result<()> {
        let fs = &*self.config.fs;
        write_file_atomic(fs, &segment_path(&self.dir, offset, SNAPSHOT_EXT), encoded)?;
        let mut w = self.writer.lock();
        if let Err(at) = w.snapshots.binary_search(&offset) {
            w.snapshots.insert(at, offset);
        }
        let mut removed = Vec::new();
        while w.snapshots.len() > 2 {
            removed.push(w.snapshots.remove(0));
        }
        drop(w);
        for old in removed {
            let _ = fs.remove_file(&segment_path(&self.dir, old, SNAPSHOT_EXT));
        }
        Ok(())
    }

    /// Deletes the first `n` (sealed) segments: out of the list under the
    /// writer lock, then their files after it. Returns the new start offset.
    fn drop_head(
        &self,
        mut w: parking_lot::MutexGuard<'_, Writer>,
        segments: &[Arc<Segment>],
        n: usize,
    ) -> i64 {
        let new_start = segments[n].base_offset();
        *self.segments.write() = Arc::new(segments[n..].to_vec());
        w.pending.retain(|p| p.base_offset >= new_start);
        // The newest pending snapshot is at or above the active segment's
        // base, so it stays.
        w.pending_snapshots.retain(|(o, _)| *o >= new_start);
        self.drop_snapshots_below(&mut w, new_start);
        drop(w);
        let fs = &*self.config.fs;
        for s in &segments[..n] {
            remove_segment_files(fs, &self.dir, s.base_offset());
        }
        // The unlinks become durable now, not at some later sync: callers
        // may only delete history whose replacement is already durable.
        if let Err(e) = sync_dir(fs, &self.dir) {
            warn!(dir = %self.dir.display(), error = %e, "syncing the directory after deleting segments failed");
        }
        new_start
    }

    /// Removes producer-state snapshots of deleted segments, keeping the
    /// newest one whatever its offset (it still holds producers whose
    /// batches are gone).
    fn drop_snapshots_below(&self, w: &mut Writer, start: i64) {
        let keep_from = w.snapshots.len().saturating_sub(1);
        let mut i = 0;
        w.snapshots.retain(|&s| {
            let keep = s >= start || i >= keep_from;
            i += 1;
            if !keep {
                let _ = self
                    .config
                    .fs
                    .remove_file(&segment_path(&self.dir, s, SNAPSHOT_EXT));
            }
            keep
        });
    }

    /// Idempotent producers this partition knows.
    pub fn producer_count(&self) -> usize {
        self.writer.lock().producers.len()
    }

    /// The largest idempotent producer id this partition knows.
    pub fn max_producer_id(&self) -> Option<i64> {
        self.writer.lock().producers.max_producer_id()
    }

    /// The tail segment of a cleanly closed log, trusted as it is: its files
    /// were synced and trimmed. Only the batches after the last index entry
    /// are read, to find the end offset. `None` if anything disagrees.
    fn open_clean_tail(
        dir: &Path,
        base: i64,
        config: &LogConfig,
    ) -> Result<Option<RecoveredSegment>> {
        let read = |ext| std::fs::read(segment_path(dir, base, ext)).ok();
        let (Some(index), Some(time)) = (read(INDEX_EXT), read(TIME_INDEX_EXT)) else {
            return Ok(None);
        };
        if !index.len().is_multiple_of(OFFSET_ENTRY_LEN)
            || !time.len().is_multiple_of(TIME_ENTRY_LEN)
        {
            return Ok(None);
        }
        let data = map_sealed(&segment_path(dir, base, LOG_EXT))?;
        if !indexes_sane(&index, &time, data.len() as u64) {
            warn!(segment = %segment_path(dir, base, LOG_EXT).display(), "index of the last segment is damaged; rebuilding it");
            return Ok(None);
        }
        let last_entry = index
            .len()
            .checked_sub(OFFSET_ENTRY_LEN)
            .map(|at| offset_entry_at(&index[at..], 0));
        let (from_rel, from_pos) = last_entry.unwrap_or((0, 0));
        let Some(tail) = data.get(from_pos as usize..) else {
            return Ok(None);
        };
        let walked = scan(
            tail,
            base + i64::from(from_rel),
            1,
            Some(Verify {
                max_epoch: i32::MAX,
                min_epoch: 0,
                crc_from: i64::MIN,
            }),
        );
        if walked.error.is_some() || from_pos as u64 + walked.valid_len != data.len() as u64 {
            return Ok(None);
        }
        let last_time = time
            .len()
            .checked_sub(TIME_ENTRY_LEN)
            .map(|at| time_entry_at(&time[at..], 0).0);
        if data.is_empty() != last_time.is_none() {
            return Ok(None);
        }
        let builder = IndexBuilder::resume(
            config.index_interval_bytes,
            data.len() as u64,
            last_entry.map(|e| e.1),
            last_time,
        );
        Ok(Some(RecoveredSegment {
            valid_len: data.len() as u64,
            next_offset: walked.next_offset,
            index,
            time,
            builder,
        }))
    }

    /// Verifies the segments `bases` (in order) batch by batch. Sealed ones
    /// that survive get fresh, synced indexes and join `segments`; the first
    /// damage cuts its segment there and drops all later ones. Returns the
    /// tail segment's base and state, and the last batch's leader epoch.
    fn recover_tail(
        dir: &Path,
        bases: &[i64],
        config: &LogConfig,
        mut verify: Verify,
        segments: &mut Vec<Arc<Segment>>,
        report: &mut RecoveryReport,
    ) -> Result<((i64, RecoveredSegment), Option<i32>)> {
        let mut expected = bases[0];
        let mut epoch = None;
        // The last sealed segment verified here, which becomes the tail
        // again if the segment after it does not continue it.
        let mut previous: Option<(i64, ScanOutcome)> = None;
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(dir, base, LOG_EXT);
            if base != expected && i > 0 {
                // A segment whose predecessor's end went missing (its last
                // batches, or a whole segment, were never made durable):
                // keeping it would leave a gap. Everything from it on goes,
                // and the previous segment is the tail again.
                let mut cut = 0;
                for &b in &bases[i..] {
                    cut += file_len(&segment_path(dir, b, LOG_EXT)).unwrap_or(0);
                    remove_segment_files(&*config.fs, dir, b);
                }
                warn!(
                    segment = %path.display(),
                    expected,
                    dropped_segments = bases.len() - i,
                    dropped_bytes = cut,
                    "recovery dropped segments that do not continue the log"
                );
                report.truncated_bytes += cut;
                report.dropped_segments += bases.len() - i;
                let (prev_base, outcome) =
                    previous.take().ok_or_else(|| StorageError::Corrupt {
                        path: path.clone(),
                        reason: "no segment before a misplaced one".into(),
                    })?;
                segments.pop();
                return Ok(((prev_base, RecoveredSegment::from(&outcome)), epoch));
            }
            let data = map_sealed(&path)?;
            let outcome = scan(&data, base, config.index_interval_bytes, Some(verify));
            report.segments_scanned += 1;
            report.batches_scanned += outcome.verified;
            let written = data
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |p| p as u64 + 1);
            let is_last = i + 1 == bases.len();
            let damaged = outcome.error.is_some() || (outcome.batches == 0 && !is_last && i > 0);
            epoch = outcome.last_epoch.or(epoch);
            if let Some(e) = outcome.last_epoch {
                verify.min_epoch = e;
            }
            drop(data);
            if damaged || is_last {
                let dropped = &bases[i + 1..];
                let mut cut = written.saturating_sub(outcome.valid_len);
                for &b in dropped {
                    cut += file_len(&segment_path(dir, b, LOG_EXT)).unwrap_or(0);
                    remove_segment_files(&*config.fs, dir, b);
                }
                if cut > 0 || !dropped.is_empty() {
                    warn!(
                        segment = %path.display(),
                        position = outcome.valid_len,
                        kept_batches = outcome.batches,
                        truncated_bytes = cut,
                        dropped_segments = dropped.len(),
                        reason = outcome.error.as_deref().unwrap_or("torn write"),
                        "recovery cut the log at the first damaged batch"
                    );
                }
                report.truncated_bytes += cut;
                report.dropped_segments += dropped.len();
                return Ok(((base, RecoveredSegment::from(&outcome)), epoch));
            }
            // A verified sealed segment: exact, synced files before the
            // recovery point may move past it.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| StorageError::io("opening", &path, e))?;
            f.set_len(outcome.valid_len)
                .map_err(|e| StorageError::io("trimming", &path, e))?;
            config
                .fs
                .sync_data(&f)
                .map_err(|e| StorageError::io("syncing", &path, e))?;
            let (index, time) = outcome.sealed_indexes();
            let fs = &*config.fs;
            write_file_atomic(fs, &segment_path(dir, base, INDEX_EXT), &index)?;
            write_file_atomic(fs, &segment_path(dir, base, TIME_INDEX_EXT), &time)?;
            segments.push(Segment::unloaded(dir, base, outcome.valid_len, config));
            expected = outcome.next_offset;
            previous = Some((base, outcome));
        }
        // `bases` is never empty, and its last segment returns above.
        Err(StorageError::Corrupt {
            path: dir.to_path_buf(),
            reason: "no segment to recover".into(),
        })
    }

    /// Rewrites a trusted sealed segment's index files from its data.
    fn rebuild_sealed_indexes(
        dir: &Path,
        base: i64,
        next_base: i64,
        config: &LogConfig,
    ) -> Result<()> {
        let path = segment_path(dir, base, LOG_EXT);
        warn!(segment = %path.display(), "index files missing or damaged; rebuilding them");
        let data = map_sealed(&path)?;
        let outcome = scan(&data, base, config.index_interval_bytes, None);
        if outcome.error.is_some()
            || outcome.valid_len != data.len() as u64
            || outcome.next_offset != next_base
        {
            return Err(StorageError::Corrupt {
                path,
                reason: format!(
                    "sealed segment below the recovery point is damaged at byte {}: {}",
                    outcome.valid_len,
                    outcome
                        .error
                        .as_deref()
                        .unwrap_or("offsets do not reach the next segment")
                ),
            });
        }
        let (index, time) = outcome.sealed_indexes();
        let fs = &*config.fs;
        write_file_atomic(fs, &segment_path(dir, base, INDEX_EXT), &index)?;
        write_file_atomic(fs, &segment_path(dir, base, TIME_INDEX_EXT), &time)
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
        self.update_checkpoint(|c| c.leader_epoch = epoch)?;
        w.leader_epoch = epoch;
        Ok(())
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
            let (base_offset, last_offset) = w.active.append(batch, epoch)?;
            if producer_id != NO_PRODUCER_ID {
                w.producers.record(
                    producer_id,
                    view.producer_epoch(),
                    BatchMeta {
                        first_seq: view.base_sequence(),
                        last_seq: super::producer_state::seq_add(
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
            w.records_since_flush += batch.record_count() as u64;
            let due = match self.config.flush {
                FlushPolicy::EveryAppend => true,
                FlushPolicy::EveryRecords(n) => w.records_since_flush >= n,
                FlushPolicy::Interval(d) => {
                    now - self.flush.lock().last_flush_ms >= d.as_millis() as i64
                }
                FlushPolicy::Manual => false,
            };
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
            if let Some(data) = view.read(offset, max_bytes, end, next)? {
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

    /// Verifies the checksums of sealed segments, about `budget` bytes of
    /// them, from where the last call stopped (going round the log), so
    /// damage in data nobody reads is found too. The active segment is left
    /// to recovery and to readers, which verify what they serve.
    pub fn scrub(&self, budget: u64) -> Result<ScrubOutcome> {
        let segments = self.segments();
        let mut out = ScrubOutcome::default();
        let sealed = segments.len().saturating_sub(1);
        if sealed == 0 {
            return Ok(out);
        }
        let cursor = self.scrub_cursor.load(Ordering::Relaxed);
        let mut i = segments.partition_point(|s| s.base_offset() < cursor);
        if i >= sealed {
            i = 0;
        }
        let first = i;
        loop {
            let seg = &segments[i];
            let next = segments[i + 1].base_offset();
            let view = seg
                .view(next)
                .map_err(|e| self.deleted_or(e, seg.base_offset()))?;
            let data = &view.data;
            let mut pos = 0;
            let mut expected = seg.base_offset();
            while pos < data.len() {
                let batch = match BatchView::parse(&data[pos..]) {
                    Ok(b) => b,
                    Err(_) => {
                        out.damaged.push((expected, next));
                        break;
                    }
                };
                if batch.verify_crc().is_err() {
                    out.damaged.push((batch.base_offset(), batch.next_offset()));
                }
                out.batches += 1;
                expected = batch.next_offset();
                pos += batch.len();
            }
            out.bytes += data.len() as u64;
            i = (i + 1) % sealed;
            self.scrub_cursor
                .store(segments[i].base_offset(), Ordering::Relaxed);
            if out.bytes >= budget || i == first {
                return Ok(out);
            }
        }
    }

    /// Forces everything appended so far to disk.
    pub fn flush(&self) -> Result<()> {
        self.flush_until(self.end_offset())
    }

    /// Returns once every offset below `offset` is durable. Callers that
    /// arrive while a sync runs wait for it and then share one sync (group
    /// commit).
    pub fn flush_until(&self, offset: i64) -> Result<()> {
        let target = offset.min(self.end_offset());
        let mut st = self.flush.lock();
        loop {
            if st.flushed >= target {
                return Ok(());
            }
            if st.in_progress {
                self.flush_done.wait(&mut st);
                continue;
            }
            st.in_progress = true;
            let result = parking_lot::MutexGuard::unlocked(&mut st, || self.sync_now());
            st.in_progress = false;
            self.flush_done.notify_all();
            if let Ok(synced) = &result {
                st.flushed = st.flushed.max(*synced);
                st.last_flush_ms = (self.config.clock)();
            }
            let flushed = st.flushed;
            parking_lot::MutexGuard::unlocked(&mut st, || {
                self.tell_durable(flushed, result.as_ref().err())
            });
            result?;
        }
    }

    fn tell_durable(&self, flushed: i64, error: Option<&StorageError>) {
        if let Some(hook) = self.durable_hook.read().as_ref() {
            hook(flushed, error);
        }
    }

    /// Sets the hook told, after every sync, the offset below which
    /// everything is durable (and the error of a failed sync). It is told
    /// the current durable offset at once.
    pub fn set_durable_hook(&self, hook: DurableHook) {
        let flushed = self.flushed_offset();
        *self.durable_hook.write() = Some(hook);
        self.tell_durable(flushed, None);
    }

    /// Claims the right to queue a flush of this log; false if one is
    /// queued already.
    pub(crate) fn claim_flush(&self) -> bool {
        !self.flush_queued.swap(true, Ordering::AcqRel)
    }

    /// A queued flush starts: appends from now on need another one.
    pub(crate) fn release_flush(&self) {
        self.flush_queued.store(false, Ordering::Release);
    }

    /// Syncs rolled segments and the active data file; returns the offset
    /// below which everything is now durable. Called by the one flushing
    /// thread, without the writer lock (appends go on meanwhile).
    fn sync_now(&self) -> Result<i64> {
        let now = (self.config.clock)();
        let checkpoint_due = now.saturating_sub(self.last_checkpoint_ms.load(Ordering::Relaxed))
            >= i64::try_from(self.config.checkpoint_interval_ms).unwrap_or(i64::MAX);
        let (pending, snapshots, data_file, active_base, end) = {
            let mut w = self.writer.lock();
            let end = w.active.next_offset();
            let mut snapshots = std::mem::take(&mut w.pending_snapshots);
            if checkpoint_due && !w.producers.is_empty() && w.snapshots.last() < Some(&end) {
                // The producer state as of `end`, written once `end` is
                // durable: recovery then replays nothing before it.
                let encoded = self.producer_snapshot(&mut w, now);
                snapshots.push((end, encoded));
            }
            (
                std::mem::take(&mut w.pending),
                snapshots,
                w.active.data_file().clone(),
                w.active.segment().base_offset(),
                end,
            )
        };
        let fs = &*self.config.fs;
        let result = (|| {
            for sealed in &pending {
                sealed.sync()?;
            }
            fs.sync_data(&data_file).map_err(|e| {
                StorageError::io("syncing", segment_path(&self.dir, active_base, LOG_EXT), e)
            })?;
            if !pending.is_empty() {
                // New segment files' directory entries, then the recovery point.
                sync_dir(fs, &self.dir)?;
                self.update_checkpoint(|c| c.recovery_point = c.recovery_point.max(active_base))?;
            }
            Ok(end)
        })();
        if result.is_ok() && checkpoint_due {
            // Everything below `end` is synced, and the active segment's
            // directory entry too (at open, or by the flush after its roll).
            self.last_checkpoint_ms.store(now, Ordering::Relaxed);
            if let Err(e) = self.update_checkpoint(|c| c.recovery_point = c.recovery_point.max(end))
            {
                warn!(dir = %self.dir.display(), error = %e, "moving the recovery point failed; recovery will verify more");
            }
        }
        match &result {
            Ok(_) => {
                // Every batch below `end` is durable: snapshots of the
                // producer state at or below it may follow. A failed one
                // only makes the next recovery replay more of the log.
                for (offset, encoded) in &snapshots {
                    if let Err(e) = self.write_producer_snapshot(*offset, encoded) {
                        warn!(dir = %self.dir.display(), offset, error = %e, "writing a producer-state snapshot failed; recovery will replay the log instead");
                    }
                }
            }
            Err(_) => {
                let mut w = self.writer.lock();
                let later = std::mem::replace(&mut w.pending, pending);
                w.pending.extend(later);
                let later = std::mem::replace(&mut w.pending_snapshots, snapshots);
                w.pending_snapshots.extend(later);
            }
        }
        result
    }

    /// Whether the policy says it is time to flush, or rolled segments wait
    /// to be synced. For a periodic caller such as [`crate::storage::Flusher`].
    pub fn flush_due(&self) -> bool {
        let pending = {
            let w = self.writer.lock();
            !w.pending.is_empty() || !w.pending_snapshots.is_empty()
        };
        pending
            || match self.config.flush {
                FlushPolicy::Interval(d) => {
                    let st = self.flush.lock();
                    st.flushed < self.end_offset()
                        && (self.config.clock)() - st.last_flush_ms >= d.as_millis() as i64
                }
                _ => false,
            }
    }

    /// Flushes if [`Log::flush_due`] says so. Returns whether it flushed.
    pub fn flush_if_due(&self) -> Result<bool> {
        if self.flush_due() {
            self.flush()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Removes every record at or after `offset`, cutting at the start of
    /// the batch that holds it (batches are never split), and returns the
    /// new end offset (at most `offset`). Used by replication to drop a
    /// diverged tail. The cut segment's kept prefix is written to a new file,
    /// so bytes already handed to readers are never changed.
    pub fn truncate_to(&self, offset: i64) -> Result<i64> {
        // Exclusive against syncs, so none records an offset past the cut.
        let mut st = self.flush.lock();
        while st.in_progress {
            self.flush_done.wait(&mut st);
        }
        st.in_progress = true;
        let result = parking_lot::MutexGuard::unlocked(&mut st, || self.truncate_locked(offset));
        st.in_progress = false;
        if let Ok(end) = result {
            st.flushed = st.flushed.min(end);
        }
        self.flush_done.notify_all();
        result
    }

    fn truncate_locked(&self, offset: i64) -> Result<i64> {
        let mut w = self.writer.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        let end = w.active.next_offset();
        let segments = self.segments();
        let start = segments[0].base_offset();
        if offset >= end {
            return Ok(end);
        }
        if offset < start {
            return Err(StorageError::OffsetOutOfRange { offset, start, end });
        }
        self.mark_unclean(&mut w)?;
        let k = segments.partition_point(|s| s.base_offset() <= offset) - 1;
        let seg = &segments[k];
        let base = seg.base_offset();
        let next = segments.get(k + 1).map_or(end, |s| s.base_offset());
        let view = seg.view(next)?;
        let (cut, new_end) =
            view.batch_start(offset, end)?
                .ok_or_else(|| StorageError::Corrupt {
                    path: seg.path(LOG_EXT),
                    reason: format!("no batch holds offset {offset} below the segment end {next}"),
                })?;
        let now = (self.config.clock)();
        let fs = &*self.config.fs;
        let new_active = if cut == 0 {
            ActiveSegment::create(&self.dir, base, &self.config, now)?
        } else {
            let kept = &view.data[..cut];
            let tmp = segment_path(&self.dir, base, "log.truncating");
            write_file_atomic(fs, &tmp, kept)?;
            let path = seg.path(LOG_EXT);
            fs.rename(&tmp, &path)
                .map_err(|e| StorageError::io("renaming", &tmp, e))?;
            let outcome = scan(kept, base, self.config.index_interval_bytes, None);
            ActiveSegment::open(
                &self.dir,
                base,
                &RecoveredSegment::from(&outcome),
                &self.config,
                now,
                false,
            )?
        };
        drop(view);
        for s in &segments[k + 1..] {
            remove_segment_files(fs, &self.dir, s.base_offset());
        }
        for f in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
            let path = segment_path(&self.dir, base, f);
            std::fs::File::open(&path)
                .and_then(|f| fs.sync_data(&f))
                .map_err(|e| StorageError::io("syncing", &path, e))?;
        }
        sync_dir(fs, &self.dir)?;
        let mut kept: Vec<Arc<Segment>> = segments[..k].to_vec();
        kept.push(new_active.segment().clone());
        w.pending.retain(|p| p.base_offset < base);
        w.pending_snapshots.retain(|(o, _)| *o <= new_end);
        w.active = new_active;
        w.records_since_flush = 0;
        let kept = Arc::new(kept);
        let now = (self.config.clock)();
        let (producers, snapshots) = Self::load_producers(
            fs,
            &self.dir,
            &kept,
            new_end,
            false,
            std::mem::take(&mut w.snapshots),
            now,
        )?;
        w.producers = producers;
        w.snapshots = snapshots;
        *self.segments.write() = kept;
        self.end_offset.store(new_end, Ordering::Release);
        self.update_checkpoint(|c| c.recovery_point = c.recovery_point.min(base))?;
        info!(dir = %self.dir.display(), offset, new_end, "log truncated");
        Ok(new_end)
    }

    /// Deletes the oldest sealed segments that retention no longer keeps:
    /// those whose newest record is older than `retention_ms`, and those
    /// whose removal keeps the log at or above `retention_bytes`. The active
    /// segment is never deleted. Readers holding deleted data keep it.
    pub fn apply_retention(&self) -> Result<RetentionOutcome> {
        let w = self.writer.lock();
        let segments = self.segments();
        let now = (self.config.clock)();
        let mut remaining: u64 = segments.iter().map(|s| s.size()).sum();
        let mut n = 0;
        for (i, seg) in segments[..segments.len() - 1].iter().enumerate() {
            let by_size = self
                .config
                .retention_bytes
                .is_some_and(|r| remaining - seg.size() >= r);
            let by_time = match self.config.retention_ms {
                Some(ms) => {
                    let view = seg.view(segments[i + 1].base_offset())?;
                    view.max_timestamp != i64::MIN
                        && view.max_timestamp < now.saturating_sub(ms as i64)
                }
                None => false,
            };
            if !(by_size || by_time) {
                break;
            }
            remaining -= seg.size();
            n += 1;
        }
        if n == 0 {
            return Ok(RetentionOutcome::default());
        }
        let outcome = RetentionOutcome {
            deleted_segments: n,
            deleted_bytes: segments[..n].iter().map(|s| s.size()).sum(),
        };
        let new_start = self.drop_head(w, &segments, n);
        info!(dir = %self.dir.display(), deleted = n, bytes = outcome.deleted_bytes, new_start, "retention deleted segments");
        Ok(outcome)
    }

    /// Deletes the sealed segments that hold only offsets below `offset`
    /// (a log's owner compacting by snapshot: everything it still needs is
    /// at or after `offset`). The active segment is never deleted, so the
    /// new start offset may be below `offset`. Returns the new start offset.
    ///
    /// The log is flushed first: what replaces the deleted history (the
    /// snapshot at or after `offset`) is durable before any of it goes, and
    /// the unlinks are made durable before this returns.
    pub fn delete_before(&self, offset: i64) -> Result<i64> {
        self.flush()?;
        let w = self.writer.lock();
        let segments = self.segments();
        let n = segments
            .windows(2)
            .take_while(|pair| pair[1].base_offset() <= offset)
            .count();
        if n == 0 {
            return Ok(segments[0].base_offset());
        }
        let new_start = self.drop_head(w, &segments, n);
        debug!(dir = %self.dir.display(), deleted = n, new_start, "deleted segments below a snapshot");
        Ok(new_start)
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
#[path = "log_tests.rs"]
mod tests;
