//! A segment: one data file of consecutive batches plus its offset and time
//! indexes, named by the base offset (`00000000000000001234.log`,
//! `.index`, `.timeindex`).
//!
//! [`Segment`] is the shared, read-side handle; the log's writer owns the
//! one [`ActiveSegment`] that appends go to. A sealed segment is mapped
//! lazily on first read and holds no file descriptor.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use parking_lot::RwLock;

use super::batch::{stamp_header, BatchView, HEADER_LEN};
use super::config::LogConfig;
use super::error::{Result, StorageError};
use super::fs::Fs;
use super::index::{
    indexes_consistent, lookup_position, lookup_time, time_entry_at, IndexBuilder, PlannedEntries,
    OFFSET_ENTRY_LEN, TIME_ENTRY_LEN,
};
use super::mmap::{map_sealed, GrowableFile, Published};

/// Extension of data files.
pub const LOG_EXT: &str = "log";
/// Extension of offset index files.
pub const INDEX_EXT: &str = "index";
/// Extension of time index files.
pub const TIME_INDEX_EXT: &str = "timeindex";

/// Path of a segment file: the base offset zero-padded to 20 digits.
pub fn segment_path(dir: &Path, base_offset: i64, ext: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{ext}"))
}

/// What a reader can see of a segment.
enum State {
    /// Being appended to: lengths come from the segment's atomics.
    Active {
        data: Arc<memmap2::MmapRaw>,
        index: Arc<memmap2::MmapRaw>,
        time: Arc<memmap2::MmapRaw>,
    },
    /// Immutable and loaded.
    Sealed {
        data: Bytes,
        index: Bytes,
        time: Bytes,
    },
    /// Immutable, not mapped yet.
    Unloaded,
}

/// Shared handle to a segment.
pub struct Segment {
    base_offset: i64,
    dir: PathBuf,
    interval: u64,
    /// Current mappings. Readers take the read lock for a few clones; the
    /// writer takes the write lock only to grow, seal or lazily load.
    state: RwLock<State>,
    /// Bytes of data readers may see. Stored (Release) after the bytes.
    data_len: AtomicU64,
    /// Bytes of offset-index entries readers may see (active segment).
    /// Stored after `data_len`, so entries never point past visible data.
    index_len: AtomicUsize,
    /// Bytes of time-index entries readers may see (active segment).
    time_len: AtomicUsize,
    /// Largest record timestamp; `i64::MIN` while unknown or empty.
    max_timestamp: AtomicI64,
    /// A range of the data, `[start, end)` packed as two u32s, whose
    /// batches passed their checksum since this process mapped the segment:
    /// reads verify only batches outside it and extend it, so a large batch
    /// read in many small fetches is checked once. (Bytes never change once
    /// published; the scrubber re-verifies cold segments from the disk.)
    verified: Arc<AtomicU64>,
}

/// A verified byte range `[start, end)` of a segment, packed in a u64
/// (segment positions fit in 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VerifiedRange {
    start: usize,
    end: usize,
}

impl VerifiedRange {
    fn load(a: &AtomicU64) -> Self {
        let v = a.load(Ordering::Acquire);
        Self {
            start: (v >> 32) as usize,
            end: (v & 0xffff_ffff) as usize,
        }
    }

    fn store(self, a: &AtomicU64) {
        a.store(
            ((self.start as u64) << 32) | self.end as u64,
            Ordering::Release,
        );
    }

    fn covers(&self, from: usize, to: usize) -> bool {
        self.start <= from && to <= self.end
    }

    /// Adds the verified batch `[from, to)`: extends the range when they
    /// touch, else the batch becomes the range (ranges only ever hold
    /// verified bytes).
    fn add(&mut self, from: usize, to: usize) {
        if from <= self.end && to >= self.start && self.end > self.start {
            self.start = self.start.min(from);
            self.end = self.end.max(to);
        } else {
            *self = Self {
                start: from,
                end: to,
            };
        }
    }
}

/// A reader's consistent snapshot of a segment.
pub struct SegmentView {
    /// The segment's base offset.
    pub base_offset: i64,
    /// Published data: whole batches.
    pub data: Bytes,
    index: Bytes,
    time: Bytes,
    /// Largest record timestamp in `data`, `i64::MIN` if empty.
    pub max_timestamp: i64,
    path: PathBuf,
    verified: Arc<AtomicU64>,
}

impl Segment {
    /// A sealed segment on disk, mapped on first use.
    pub fn unloaded(dir: &Path, base_offset: i64, data_len: u64, config: &LogConfig) -> Arc<Self> {
        Arc::new(Self {
            base_offset,
            dir: dir.to_path_buf(),
            interval: config.index_interval_bytes,
            state: RwLock::new(State::Unloaded),
            data_len: AtomicU64::new(data_len),
            index_len: AtomicUsize::new(0),
            time_len: AtomicUsize::new(0),
            max_timestamp: AtomicI64::new(i64::MIN),
            verified: Arc::default(),
        })
    }

    /// Base offset.
    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// Bytes of data.
    pub fn size(&self) -> u64 {
        self.data_len.load(Ordering::Acquire)
    }

    /// Path of one of the segment's files.
    pub fn path(&self, ext: &str) -> PathBuf {
        segment_path(&self.dir, self.base_offset, ext)
    }

    /// A consistent snapshot for reading. `next_offset` is the offset after
    /// the segment (the next segment's base, or the log end) and is used to
    /// check a lazily loaded segment's indexes.
    pub fn view(&self, next_offset: i64) -> Result<SegmentView> {
        // Index lengths first: the writer stores them after the data length,
        // so every entry seen points into data this snapshot also sees.
        let index_len = self.index_len.load(Ordering::Acquire);
        let time_len = self.time_len.load(Ordering::Acquire);
        let data_len = self.data_len.load(Ordering::Acquire) as usize;
        let max_timestamp = self.max_timestamp.load(Ordering::Acquire);
        {
            let state = self.state.read();
            match &*state {
                State::Active { data, index, time } => {
                    let window = |map: &Arc<memmap2::MmapRaw>, len| {
                        Published::new(map.clone(), len)
                            .map(Published::into_bytes)
                            .ok_or_else(|| self.corrupt("published length exceeds the mapping"))
                    };
                    return Ok(SegmentView {
                        base_offset: self.base_offset,
                        data: window(data, data_len)?,
                        index: window(index, index_len)?,
                        time: window(time, time_len)?,
                        max_timestamp,
                        path: self.path(LOG_EXT),
                        verified: self.verified.clone(),
                    });
                }
                State::Sealed { data, index, time } => {
                    return Ok(self.sealed_view(data, index, time));
                }
                State::Unloaded => {}
            }
        }
        let mut state = self.state.write();
        if matches!(*state, State::Unloaded) {
            *state = self.load(next_offset)?;
        }
        match &*state {
            State::Sealed { data, index, time } => Ok(self.sealed_view(data, index, time)),
            _ => Err(self.corrupt("segment state changed while loading")),
        }
    }

    fn sealed_view(&self, data: &Bytes, index: &Bytes, time: &Bytes) -> SegmentView {
        SegmentView {
            base_offset: self.base_offset,
            data: data.clone(),
            index: index.clone(),
            time: time.clone(),
            max_timestamp: self.max_timestamp.load(Ordering::Acquire),
            path: self.path(LOG_EXT),
            verified: self.verified.clone(),
        }
    }

    /// Maps a sealed segment and checks its indexes; damaged or missing
    /// indexes are rebuilt in memory from the data (and on disk at the next
    /// recovery).
    fn load(&self, next_offset: i64) -> Result<State> {
        let data = map_sealed(&self.path(LOG_EXT))?;
        let optional = |ext| match map_sealed(&self.path(ext)) {
            Ok(b) => Ok(Some(b)),
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        };
        let (index, time) = (optional(INDEX_EXT)?, optional(TIME_INDEX_EXT)?);
        let span = (next_offset - self.base_offset).max(0) as u64;
        let (index, time) = match (index, time) {
            (Some(i), Some(t)) if indexes_consistent(&i, &t, data.len() as u64, span) => (i, t),
            _ => {
                tracing::warn!(segment = %self.path(LOG_EXT).display(), "index missing or inconsistent; rebuilt from the data");
                let scan = scan(&data, self.base_offset, self.interval, None);
                if scan.error.is_some() || scan.valid_len != data.len() as u64 {
                    return Err(self.corrupt("sealed segment does not hold whole valid batches"));
                }
                let (index, time) = scan.sealed_indexes();
                (Bytes::from(index), Bytes::from(time))
            }
        };
        if let Some(last) = time.len().checked_sub(TIME_ENTRY_LEN) {
            self.max_timestamp
                .store(time_entry_at(&time[last..], 0).0, Ordering::Release);
        }
        self.data_len.store(data.len() as u64, Ordering::Release);
        Ok(State::Sealed { data, index, time })
    }

    fn corrupt(&self, reason: &str) -> StorageError {
        StorageError::Corrupt {
            path: self.path(LOG_EXT),
            reason: reason.to_string(),
        }
    }
}

impl SegmentView {
    fn corrupt(&self, position: usize, reason: impl std::fmt::Display) -> StorageError {
        StorageError::Corrupt {
            path: self.path.clone(),
            reason: format!("at byte {position}: {reason}"),
        }
    }

    /// Position from which to scan for `offset`.
    fn scan_start(&self, offset: i64) -> usize {
        let rel = (offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        lookup_position(&self.index, rel) as usize
    }

    /// Calls `f` with each batch from `position` on, with its position,
    /// until `f` returns `false`. Batches at or past `end` are not visited.
    fn for_each_batch(
        &self,
        mut position: usize,
        end: i64,
        mut f: impl FnMut(usize, BatchView<'_>) -> Result<bool>,
    ) -> Result<()> {
        while position < self.data.len() {
            let batch =
                BatchView::parse(&self.data[position..]).map_err(|e| self.corrupt(position, e))?;
            if batch.base_offset() >= end {
                break;
            }
            let len = batch.len();
            if !f(position, batch)? {
                break;
            }
            position += len;
        }
        Ok(())
    }

    /// Whole batches from the one holding `offset`, up to `max_bytes` (at
    /// least one batch, however large), none at or past `end`. `None` if the
    /// segment holds nothing at or after `offset`. `next_base` is where the
    /// next segment (or the log end) starts.
    ///
    /// Every batch returned has passed its checksum. At the first damaged
    /// batch the read stops: the batches before it are returned; if there
    /// are none, the error names the damaged offsets and where reading can
    /// go on past them.
    pub fn read(
        &self,
        offset: i64,
        (max_bytes, max_records): (usize, usize),
        end: i64,
        next_base: i64,
    ) -> Result<Option<Bytes>> {
        let mut range: Option<(usize, usize)> = None;
        let mut position = self.checked_scan_start(offset);
        // The offset where the batch at `position` should start.
        let mut expected = offset.max(self.base_offset);
        let before = VerifiedRange::load(&self.verified);
        let mut verified = before;
        while position < self.data.len() {
            let damaged = |from: i64, to: i64, reason: String| StorageError::DamagedBatch {
                path: self.path.clone(),
                from,
                to: to.max(from + 1),
                reason: format!("at byte {position}: {reason}"),
            };
            let batch = match BatchView::parse(&self.data[position..]) {
                Ok(b) => b,
                Err(e) if range.is_none() => {
                    return Err(damaged(expected.min(offset), next_base, e.to_string()))
                }
                Err(_) => break,
            };
            if batch.base_offset() >= end {
                break;
            }
            let len = batch.len();
            if batch.last_offset() < offset {
                expected = batch.next_offset();
                position += len;
                continue;
            }
            let check = if verified.covers(position, position + len) {
                Ok(())
            } else {
                batch.verify_crc()
            };
            if let Err(e) = check {
                if range.is_some() {
                    break;
                }
                let (from, to) = if batch.next_offset() > batch.base_offset()
                    && batch.base_offset() >= self.base_offset
                    && batch.next_offset() <= next_base
                {
                    (batch.base_offset(), batch.next_offset())
                } else {
                    (expected.min(offset), next_base)
                };
                return Err(damaged(from, to, e.to_string()));
            }
            verified.add(position, position + len);
            // Records from `offset` through this batch.
            let records = batch.next_offset().saturating_sub(offset).max(0) as usize;
            match &mut range {
                None => {
                    range = Some((position, position + len));
                    if len >= max_bytes || records >= max_records {
                        break;
                    }
                }
                Some((start, stop)) => {
                    if *stop - *start + len > max_bytes {
                        break;
                    }
                    *stop += len;
                    if records >= max_records {
                        break;
                    }
                }
            }
            expected = batch.next_offset();
            position += len;
        }
        if verified != before {
            verified.store(&self.verified);
        }
        Ok(range.map(|(start, stop)| self.data.slice(start..stop)))
    }

    /// Where to start scanning for `offset`: the offset index's answer if it
    /// leads to a batch at or before `offset`, else the segment start. A
    /// damaged index then costs a longer scan, never a wrong or empty read.
    fn checked_scan_start(&self, offset: i64) -> usize {
        let pos = self.scan_start(offset);
        if pos == 0 {
            return 0;
        }
        let sane = self
            .data
            .get(pos..)
            .and_then(|rest| BatchView::parse(rest).ok())
            .is_some_and(|b| b.base_offset() <= offset && b.base_offset() >= self.base_offset);
        if sane {
            pos
        } else {
            tracing::warn!(segment = %self.path.display(), offset, position = pos, "offset index entry does not match the data; scanning the segment from its start");
            0
        }
    }

    /// Position and base offset of the batch holding `offset`, if the
    /// segment has one below `end`.
    pub fn batch_start(&self, offset: i64, end: i64) -> Result<Option<(usize, i64)>> {
        let mut found = None;
        self.for_each_batch(self.checked_scan_start(offset), end, |pos, batch| {
            if batch.last_offset() >= offset {
                found = Some((pos, batch.base_offset()));
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(found)
    }

    /// First offset below `end` whose record timestamp is at least
    /// `timestamp`, if the segment holds one.
    pub fn offset_for_timestamp(&self, timestamp: i64, end: i64) -> Result<Option<i64>> {
        if self.max_timestamp < timestamp && self.max_timestamp != i64::MIN {
            return Ok(None);
        }
        let from = self.base_offset + i64::from(lookup_time(&self.time, timestamp));
        let mut found = None;
        self.for_each_batch(self.checked_scan_start(from), end, |pos, batch| {
            if batch.max_timestamp() < timestamp {
                return Ok(true);
            }
            for r in batch.records() {
                let r = r.map_err(|e| self.corrupt(pos, e))?;
                if r.timestamp >= timestamp && r.offset < end {
                    found = Some(r.offset);
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        Ok(found)
    }
}

/// What [`scan`] found in a segment's data.
#[derive(Debug)]
pub struct ScanOutcome {
    /// Bytes of whole, valid batches from the start.
    pub valid_len: u64,
    /// Offset after the last valid batch.
    pub next_offset: i64,
    /// Valid batches.
    pub batches: u64,
    /// Valid batches whose checksum was checked.
    pub verified: u64,
    /// Offset index entries for the valid batches.
    pub index: Vec<u8>,
    /// Time index entries for the valid batches (without a sealing entry).
    pub time: Vec<u8>,
    /// Index builder state after the last valid batch.
    pub builder: IndexBuilder,
    /// Leader epoch of the last valid batch.
    pub last_epoch: Option<i32>,
    /// Why the scan stopped before the end of the data, if it did; `None`
    /// when the rest is absent or only zeros (unused preallocation).
    pub error: Option<String>,
    /// Base offset of the scanned segment.
    pub base: i64,
}

impl ScanOutcome {
    /// The indexes of the scanned segment as a sealed segment: the time
    /// index gets its covering last entry.
    pub fn sealed_indexes(&self) -> (Vec<u8>, Vec<u8>) {
        let mut time = self.time.clone();
        let span = (self.next_offset - self.base) as u32;
        if let Some(e) = self.builder.final_time_entry(span) {
            time.extend_from_slice(&e);
        }
        (self.index.clone(), time)
    }
}

/// Checks applied to each batch by [`scan`] beyond framing and offsets.
#[derive(Debug, Clone, Copy)]
pub struct Verify {
    /// Largest leader epoch a batch may carry.
    pub max_epoch: i32,
    /// Smallest leader epoch the first batch may carry.
    pub min_epoch: i32,
    /// Checksums are checked from the batch holding this offset on; batches
    /// wholly below it are known durable (the recovery point) and only
    /// walked.
    pub crc_from: i64,
}

/// Walks the batches of a segment with base offset `base`, rebuilding its
/// indexes. Each batch must start at the expected offset, have a known magic
/// byte, fit the data, and keep offsets and positions in 32-bit range. With
/// `verify`, checksums and leader epochs are checked too. Stops at the first
/// batch that fails.
pub fn scan(data: &[u8], base: i64, interval: u64, verify: Option<Verify>) -> ScanOutcome {
    let mut builder = IndexBuilder::new(interval);
    let (mut index, mut time) = (Vec::new(), Vec::new());
    let mut pos = 0usize;
    let mut next = base;
    let mut batches = 0;
    let mut verified = 0;
    let mut last_epoch: Option<i32> = None;
    let mut error = None;
    while pos < data.len() {
        let check = || -> std::result::Result<BatchView<'_>, String> {
            let b = BatchView::parse(&data[pos..]).map_err(|e| e.to_string())?;
            if b.base_offset() != next {
                return Err(format!(
                    "batch base offset {} where {next} was expected",
                    b.base_offset()
                ));
            }
            if b.last_offset_delta() < 0 || b.record_count() <= 0 {
                return Err("batch with no records".into());
            }
            if b.last_offset() - base > i64::from(u32::MAX) || pos + b.len() > u32::MAX as usize {
                return Err("batch beyond the 32-bit range of a segment".into());
            }
            if let Some(v) = verify {
                if b.last_offset() >= v.crc_from {
                    b.verify_crc().map_err(|e| e.to_string())?;
                }
                let floor = last_epoch.unwrap_or(v.min_epoch);
                if b.leader_epoch() < floor || b.leader_epoch() > v.max_epoch {
                    return Err(format!(
                        "leader epoch {} outside [{floor}, {}]",
                        b.leader_epoch(),
                        v.max_epoch
                    ));
                }
            }
            Ok(b)
        };
        match check() {
            Ok(b) => {
                if verify.is_some_and(|v| b.last_offset() >= v.crc_from) {
                    verified += 1;
                }
                let planned = builder.plan(pos as u32, (b.base_offset() - base) as u32);
                index.extend(planned.offset.iter().flatten());
                time.extend(planned.time.iter().flatten());
                builder.commit(&planned, b.len() as u64, b.max_timestamp());
                last_epoch = Some(b.leader_epoch());
                next = b.next_offset();
                pos += b.len();
                batches += 1;
            }
            Err(reason) => {
                if data[pos..].iter().any(|&x| x != 0) {
                    error = Some(reason);
                }
                break;
            }
        }
    }
    ScanOutcome {
        valid_len: pos as u64,
        next_offset: next,
        batches,
        verified,
        index,
        time,
        builder,
        last_epoch,
        error,
        base,
    }
}

/// The segment appends go to, owned by the log's writer.
pub struct ActiveSegment {
    seg: Arc<Segment>,
    data: GrowableFile,
    index: GrowableFile,
    time: GrowableFile,
    size: u64,
    index_len: usize,
    time_len: usize,
    builder: IndexBuilder,
    next_offset: i64,
    created_ms: i64,
    index_limit: usize,
    time_limit: usize,
    fs: Fs,
}

/// The files of a sealed segment that still need syncing.
pub struct SealedFiles {
    /// Data, offset index and time index files, with their paths.
    files: [(Arc<std::fs::File>, PathBuf); 3],
    fs: Fs,
    /// Base offset of the sealed segment.
    pub base_offset: i64,
}

impl SealedFiles {
    /// Makes the three files durable.
    pub fn sync(&self) -> Result<()> {
        for (file, path) in &self.files {
            self.fs
                .sync_data(file)
                .map_err(|e| StorageError::io("syncing", path, e))?;
        }
        Ok(())
    }
}

impl ActiveSegment {
    /// Creates a new, empty segment at `base`.
    pub fn create(dir: &Path, base: i64, config: &LogConfig, now_ms: i64) -> Result<Self> {
        Self::open(
            dir,
            base,
            &RecoveredSegment::empty(base, config.index_interval_bytes),
            config,
            now_ms,
            true,
        )
    }

    /// Opens the segment at `base` for appending, with state found by
    /// recovery. With `fresh`, the data file is created empty; otherwise
    /// it is cut to `found.valid_len`. Index files are rewritten from
    /// `found`.
    pub fn open(
        dir: &Path,
        base: i64,
        found: &RecoveredSegment,
        config: &LogConfig,
        created_ms: i64,
        fresh: bool,
    ) -> Result<Self> {
        let data_path = segment_path(dir, base, LOG_EXT);
        let initial = config.initial_preallocate_bytes;
        let data = if fresh {
            GrowableFile::create(&*config.fs, &data_path, &[], initial, config.segment_bytes)?
        } else {
            GrowableFile::open(&data_path, found.valid_len, initial, config.segment_bytes)?
        };
        let index_limit = (config.max_index_bytes as usize / OFFSET_ENTRY_LEN) * OFFSET_ENTRY_LEN;
        let time_limit = (config.max_index_bytes as usize / TIME_ENTRY_LEN) * TIME_ENTRY_LEN;
        let index_initial = (initial / 256).clamp(4096, index_limit as u64);
        let index = GrowableFile::create(
            &*config.fs,
            &segment_path(dir, base, INDEX_EXT),
            &found.index,
            index_initial,
            index_limit as u64,
        )?;
        let time = GrowableFile::create(
            &*config.fs,
            &segment_path(dir, base, TIME_INDEX_EXT),
            &found.time,
            index_initial,
            time_limit as u64,
        )?;
        let seg = Arc::new(Segment {
            base_offset: base,
            dir: dir.to_path_buf(),
            interval: config.index_interval_bytes,
            state: RwLock::new(State::Active {
                data: data.map().clone(),
                index: index.map().clone(),
                time: time.map().clone(),
            }),
            data_len: AtomicU64::new(found.valid_len),
            index_len: AtomicUsize::new(found.index.len()),
            time_len: AtomicUsize::new(found.time.len()),
            max_timestamp: AtomicI64::new(found.builder.max_timestamp().unwrap_or(i64::MIN)),
            verified: Arc::default(),
        });
        let mut active = Self {
            seg,
            data,
            index,
            time,
            size: found.valid_len,
            index_len: found.index.len(),
            time_len: found.time.len(),
            builder: found.builder,
            next_offset: found.next_offset,
            created_ms,
            index_limit,
            time_limit,
            fs: config.fs.clone(),
        };
        // The room every append keeps (above all for the sealing time entry),
        // even when recovered entries filled a file to its first size.
        active.grow(active.size, PlannedEntries::default())?;
        Ok(active)
    }

    /// The shared handle.
    pub fn segment(&self) -> &Arc<Segment> {
        &self.seg
    }

    /// Offset the next batch gets.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Bytes of data.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The data file, for syncing.
    pub fn data_file(&self) -> &Arc<std::fs::File> {
        self.data.file()
    }

    /// Whether a batch of `len` bytes whose last offset is `delta` above its
    /// base must go to a new segment.
    pub fn must_roll(&self, len: usize, delta: i32, config: &LogConfig, now_ms: i64) -> bool {
        if self.size == 0 {
            return false;
        }
        let full = self.size + len as u64 > config.segment_bytes;
        let old = config
            .segment_ms
            .is_some_and(|ms| now_ms.saturating_sub(self.created_ms) >= ms as i64);
        let index_full = self.index_len + 2 * OFFSET_ENTRY_LEN > self.index_limit
            || self.time_len + 2 * TIME_ENTRY_LEN > self.time_limit;
        let rel_overflow =
            self.next_offset + i64::from(delta) - self.seg.base_offset > i64::from(u32::MAX);
        full || old || index_full || rel_overflow
    }

    /// Whether appending `len` more bytes must first grow a file
    /// (`fallocate` and a new mapping).
    pub fn needs_room(&self, len: usize) -> bool {
        self.size + len as u64 > self.data.capacity()
            || (self.index_len + OFFSET_ENTRY_LEN) as u64 > self.index.capacity()
            || (self.time_len + 2 * TIME_ENTRY_LEN) as u64 > self.time.capacity()
    }

    /// Appends `batch` with the next offsets and `epoch`, and publishes it.
    /// On error (disk full, I/O) nothing is published and the segment is as
    /// it was.
    pub fn append(&mut self, batch: &BatchView<'_>, epoch: i32) -> Result<(i64, i64)> {
        let bytes = batch.as_bytes();
        let base = self.next_offset;
        let pos = self.size;
        let rel = (base - self.seg.base_offset) as u32;
        let planned = self.builder.plan(pos as u32, rel);
        // Make room everywhere first, so a failure leaves nothing half done.
        self.grow(pos + bytes.len() as u64, planned)?;

        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&bytes[..HEADER_LEN]);
        stamp_header(&mut header, base, epoch);
        self.data.write_at(pos, [&header, &bytes[HEADER_LEN..]])?;
        self.write_entries(&planned);
        self.builder
            .commit(&planned, bytes.len() as u64, batch.max_timestamp());

        self.size = pos + bytes.len() as u64;
        self.next_offset = base + i64::from(batch.last_offset_delta()) + 1;
        self.publish();
        Ok((base, self.next_offset - 1))
    }

    fn grow(&mut self, data_needed: u64, planned: PlannedEntries) -> Result<()> {
        let grown_data = self.data.ensure(data_needed)?;
        let grown_index = match planned.offset {
            Some(_) => self
                .index
                .ensure((self.index_len + OFFSET_ENTRY_LEN) as u64)?,
            None => None,
        };
        let grown_time = self
            .time
            .ensure((self.time_len + 2 * TIME_ENTRY_LEN) as u64)?;
        if grown_data.is_some() || grown_index.is_some() || grown_time.is_some() {
            // New mappings must be visible before any length that needs them.
            *self.seg.state.write() = State::Active {
                data: self.data.map().clone(),
                index: self.index.map().clone(),
                time: self.time.map().clone(),
            };
        }
        Ok(())
    }

    fn write_entries(&mut self, planned: &PlannedEntries) {
        if let Some(e) = planned.offset {
            self.index.write(self.index_len as u64, &e);
            self.index_len += e.len();
        }
        if let Some(e) = planned.time {
            self.time.write(self.time_len as u64, &e);
            self.time_len += e.len();
        }
    }

    fn publish(&self) {
        // Data before index lengths: see `Segment::view`.
        self.seg.data_len.store(self.size, Ordering::Release);
        self.seg.index_len.store(self.index_len, Ordering::Release);
        self.seg.time_len.store(self.time_len, Ordering::Release);
        if let Some(ts) = self.builder.max_timestamp() {
            self.seg.max_timestamp.store(ts, Ordering::Release);
        }
    }

    /// Writes the sealing time entry (room for it is always kept) and
    /// publishes it.
    fn write_final_time_entry(&mut self) {
        let span = (self.next_offset - self.seg.base_offset) as u32;
        if let Some(e) = self.builder.final_time_entry(span) {
            self.time.write(self.time_len as u64, &e);
            self.time_len += e.len();
            self.builder.commit_final(&e);
            self.publish();
        }
    }

    /// Seals the segment: writes its covering time entry, trims the files to
    /// their real lengths and makes it immutable. Returns its files, which
    /// the caller syncs before advancing the recovery point.
    pub fn seal(&mut self) -> Result<SealedFiles> {
        self.write_final_time_entry();
        self.data.trim(self.size)?;
        self.index.trim(self.index_len as u64)?;
        self.time.trim(self.time_len as u64)?;
        let window = |map: &Arc<memmap2::MmapRaw>, len: usize| {
            Published::new(map.clone(), len)
                .map(Published::into_bytes)
                .unwrap_or_default()
        };
        *self.seg.state.write() = State::Sealed {
            data: window(self.data.map(), self.size as usize),
            index: window(self.index.map(), self.index_len),
            time: window(self.time.map(), self.time_len),
        };
        let entry = |f: &GrowableFile| (f.file().clone(), f.path().to_path_buf());
        Ok(SealedFiles {
            files: [entry(&self.data), entry(&self.index), entry(&self.time)],
            fs: self.fs.clone(),
            base_offset: self.seg.base_offset,
        })
    }

    /// Prepares the segment for a clean close: sealing time entry, all three
    /// files synced and trimmed, so the next open trusts them as they are.
    /// The segment stays readable.
    pub fn close(&mut self) -> Result<()> {
        self.write_final_time_entry();
        self.data.trim(self.size)?;
        self.index.trim(self.index_len as u64)?;
        self.time.trim(self.time_len as u64)?;
        for f in [&self.data, &self.index, &self.time] {
            self.fs
                .sync_data(f.file())
                .map_err(|e| StorageError::io("syncing", f.path(), e))?;
        }
        Ok(())
    }
}

/// The state of a segment to reopen for appending.
#[derive(Debug, Clone)]
pub struct RecoveredSegment {
    /// Bytes of valid data.
    pub valid_len: u64,
    /// Offset after the last batch.
    pub next_offset: i64,
    /// Offset index entries.
    pub index: Vec<u8>,
    /// Time index entries.
    pub time: Vec<u8>,
    /// Index builder state after the last batch.
    pub builder: IndexBuilder,
}

impl RecoveredSegment {
    /// An empty segment.
    pub fn empty(base: i64, interval: u64) -> Self {
        Self {
            valid_len: 0,
            next_offset: base,
            index: Vec::new(),
            time: Vec::new(),
            builder: IndexBuilder::new(interval),
        }
    }
}

impl From<&ScanOutcome> for RecoveredSegment {
    fn from(s: &ScanOutcome) -> Self {
        Self {
            valid_len: s.valid_len,
            next_offset: s.next_offset,
            index: s.index.clone(),
            time: s.time.clone(),
            builder: s.builder,
        }
    }
}
