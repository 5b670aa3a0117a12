//! Removing data: retention, deletion below a snapshot, truncation of a
//! diverged tail, and the scrubber that re-verifies sealed segments.

use super::*;

impl Log {
    /// Deletes the first `n` (sealed) segments: out of the list under the
    /// writer lock, then their files after it. Returns the new start offset.
    pub(super) fn drop_head(
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
    pub(super) fn drop_snapshots_below(&self, w: &mut Writer, start: i64) {
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

    pub(super) fn truncate_locked(&self, offset: i64) -> Result<i64> {
        let mut w = self.writer.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        let end = w.active.next_offset();
        let segments = self.segments();
        let start = segments[0].base_offset();
        if offset >= end {
            // No batch to cut, but an epoch that starts here has none
            // either (a leader that wrote nothing in it): it goes, so the
            // log's newest epoch is its last batch's.
            let mut epochs = w.epochs.clone();
            if epochs.truncate_from(offset) {
                epochs.write(&*self.config.fs, &self.dir)?;
                w.epochs = epochs;
            }
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
        let mut epochs = w.epochs.clone();
        if epochs.truncate_from(new_end) {
            epochs.write(fs, &self.dir)?;
            w.epochs = epochs;
        }
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
}
