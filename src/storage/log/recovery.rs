//! Opening a log: listing its directory, trusting what the checkpoint
//! vouches for, walking and verifying the rest, cutting it at the first
//! damage, and rebuilding indexes and producer state.

use super::*;

/// The segment files found in a log directory.
#[derive(Debug, Default)]
pub(super) struct Found {
    log: bool,
    index: bool,
    time: bool,
}

/// Lists a log directory: segment files by base offset, and the offsets of
/// producer-state snapshots. Leftover temporary files and index files
/// without data are removed; anything else is an error.
pub(super) fn list_dir(
    fs: &dyn FileSystem,
    dir: &Path,
) -> Result<(BTreeMap<i64, Found>, Vec<i64>)> {
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
        if name == checkpoint::FILE_NAME || name == crate::storage::epochs::FILE_NAME {
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

pub(super) fn file_len(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| StorageError::io("reading metadata of", path, e))
}

/// Creation time of a file in ms since the epoch (its modification time
/// where the file system keeps no creation time).
pub(super) fn created_ms(path: &Path, fallback: i64) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.created().or_else(|_| m.modified()))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(fallback, |d| d.as_millis() as i64)
}

pub(super) fn remove_segment_files(fs: &dyn FileSystem, dir: &Path, base: i64) {
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
        // Epochs whose batches a crash lost are dropped. A log from before
        // the cache existed has only epoch-0 batches.
        let mut epochs = match LeaderEpochs::read(&dir)? {
            Some(e) => e,
            None => {
                let mut e = LeaderEpochs::default();
                if end > segments[0].base_offset() {
                    e.assign(0, segments[0].base_offset())?;
                }
                e
            }
        };
        epochs.truncate_from(end + 1);
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
                epochs,
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
    pub(super) fn load_producers(
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
                        last_seq: crate::storage::producer_state::seq_add(
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

    /// The tail segment of a cleanly closed log, trusted as it is: its files
    /// were synced and trimmed. Only the batches after the last index entry
    /// are read, to find the end offset. `None` if anything disagrees.
    pub(super) fn open_clean_tail(
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
    pub(super) fn recover_tail(
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
    pub(super) fn rebuild_sealed_indexes(
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
}
