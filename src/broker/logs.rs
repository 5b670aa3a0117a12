//! Partition logs: opening on first use, closing idle ones, and the
//! maintenance thread (retention, eviction, scrubbing).

use super::*;

pub(super) struct Maintenance {
    /// Set to stop the thread (which otherwise sleeps until retention).
    pub(super) state: Mutex<MaintenanceState>,
    pub(super) wake: Condvar,
}

#[derive(Default)]
pub(super) struct MaintenanceState {
    pub(super) stop: bool,
    /// More logs are open than `max_open_logs`: close idle ones.
    pub(super) evict: bool,
}

/// Runs blocking work from async code: on a multi-threaded tokio runtime
/// the worker hands its other tasks to another thread first; elsewhere
/// (plain threads, blocking pool, current-thread runtimes) it just runs.
pub(super) fn blocking_section<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Broker {
    pub(super) fn start_maintenance(self: &Arc<Self>) -> Result<()> {
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

    /// The open log of a partition, opening it if needed.
    pub(super) fn log_of(&self, topic: &Topic, part: &Partition) -> Result<Arc<Log>> {
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

    pub(super) fn open_log(&self, topic: &Topic, part: &Partition, tick: u64) -> Result<Arc<Log>> {
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
    pub(super) fn evict_idle(&self) {
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
    pub(super) fn scrub(&self, budget: u64) {
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

    /// Applies retention to every open log, and forgets idempotent
    /// producers idle for `producer_expiration_ms` (Kafka does both on a
    /// timer, not only when a segment rolls).
    pub(super) fn apply_retention(&self) {
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        for topic in topics {
            for p in topic.partitions().iter() {
                if let Some(log) = p.open_log() {
                    let expired = log.expire_producers();
                    if expired > 0 {
                        tracing::debug!(topic = %topic.name, partition = p.id, expired, "idle idempotent producers expired");
                    }
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
}
