//! Durability: flushes with group commit, the durable hook, the
//! recovery point moving with flushes, and producer-state snapshots
//! written only once the data below them is synced.

use super::*;

impl Log {
    /// The producer state as of `offset` (every batch below it), encoded
    /// for a snapshot. Idle producers expire first.
    pub(super) fn producer_snapshot(&self, w: &mut Writer, now: i64) -> Vec<u8> {
        let idle_before = now.saturating_sub(self.config.producer_expiration_ms as i64);
        w.producers.expire(idle_before);
        w.producers.encode()
    }

    /// Writes a producer-state snapshot at `offset`, whose batches below it
    /// must already be durable, and keeps the newest two snapshots.
    pub(super) fn write_producer_snapshot(&self, offset: i64, encoded: &[u8]) -> Result<()> {
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

    pub(super) fn tell_durable(&self, flushed: i64, error: Option<&StorageError>) {
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
    pub(super) fn sync_now(&self) -> Result<i64> {
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
}
