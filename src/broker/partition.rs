//! One partition of a topic: its log, opened on first use and closed again
//! when idle to bound open files, and the high watermark that waiting
//! readers watch.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::error::{BrokerError, Result};
use crate::storage::{Flusher, Log, LogConfig};

/// A partition. The broker owns it; handlers hold `Arc`s for the length of
/// a call.
pub struct Partition {
    pub(crate) topic: Arc<str>,
    pub(crate) id: i32,
    pub(crate) dir: PathBuf,
    /// The open log, or `None` while closed. Locked to open, close or clone
    /// the handle, never across I/O on the log itself, except open and
    /// close, so that one directory never has two `Log`s.
    log: Mutex<Option<Arc<Log>>>,
    /// Broker tick of the last use, for closing the least recently used.
    last_used: AtomicU64,
    /// The high watermark (log end offset). Readers waiting for records
    /// subscribe to it; every append publishes the new end.
    end: watch::Sender<i64>,
    deleted: AtomicBool,
    /// Size and segment count as last seen, for metrics of closed logs.
    pub(crate) last_size: AtomicU64,
    pub(crate) last_segments: AtomicU64,
}

impl Partition {
    pub(crate) fn new(topic: Arc<str>, id: i32, dir: PathBuf) -> Self {
        Self {
            topic,
            id,
            dir,
            log: Mutex::new(None),
            last_used: AtomicU64::new(0),
            end: watch::Sender::new(-1),
            deleted: AtomicBool::new(false),
            last_size: AtomicU64::new(0),
            last_segments: AtomicU64::new(0),
        }
    }

    /// The log, opening it if needed. Returns whether it was opened now.
    pub(crate) fn log(
        &self,
        config: &LogConfig,
        flusher: &Flusher,
        tick: u64,
    ) -> Result<(Arc<Log>, bool)> {
        self.last_used.store(tick, Ordering::Relaxed);
        let mut slot = self.log.lock();
        if let Some(log) = slot.as_ref() {
            return Ok((log.clone(), false));
        }
        if self.is_deleted() {
            return Err(BrokerError::TopicDeleted {
                topic: self.topic.to_string(),
            });
        }
        let log = Arc::new(Log::open(&self.dir, config.clone())?);
        let report = log.recovery_report();
        // A new partition has no checkpoint yet; only real recovery work
        // is worth a warning.
        if !report.clean
            && (report.batches_scanned > 0
                || report.truncated_bytes > 0
                || report.dropped_segments > 0)
        {
            tracing::warn!(
                topic = %self.topic, partition = self.id,
                batches_scanned = report.batches_scanned,
                truncated_bytes = report.truncated_bytes,
                "recovered partition after unclean shutdown"
            );
        }
        flusher.register(&log);
        self.end.send_replace(log.end_offset());
        *slot = Some(log.clone());
        Ok((log, true))
    }

    /// The open log, if any, without opening it.
    pub(crate) fn open_log(&self) -> Option<Arc<Log>> {
        self.log.lock().clone()
    }

    /// Records a use, for least-recently-used closing.
    pub(crate) fn touch(&self, tick: u64) {
        self.last_used.store(tick, Ordering::Relaxed);
    }

    pub(crate) fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Closes the log if nobody holds it. Returns whether it closed.
    pub(crate) fn close_if_idle(&self) -> bool {
        let mut slot = self.log.lock();
        match slot.as_ref() {
            Some(log) if Arc::strong_count(log) == 1 => {}
            _ => return false,
        }
        if let Some(log) = slot.take() {
            self.close_log(&log);
        }
        true
    }

    /// Closes the log even if calls hold it (their appends then fail).
    /// Returns whether it was open.
    pub(crate) fn close(&self) -> bool {
        let mut slot = self.log.lock();
        match slot.take() {
            Some(log) => {
                self.close_log(&log);
                true
            }
            None => false,
        }
    }

    fn close_log(&self, log: &Log) {
        self.note_size(log);
        if let Err(e) = log.close() {
            tracing::error!(topic = %self.topic, partition = self.id, error = %e, "closing partition log failed");
        }
    }

    pub(crate) fn note_size(&self, log: &Log) {
        self.last_size.store(log.size_bytes(), Ordering::Relaxed);
        self.last_segments
            .store(log.segment_count() as u64, Ordering::Relaxed);
    }

    /// Publishes a new high watermark to waiting readers.
    pub(crate) fn publish_end(&self, end: i64) {
        self.end.send_if_modified(|e| {
            if end > *e {
                *e = end;
                true
            } else {
                false
            }
        });
    }

    /// A receiver of high-watermark changes.
    pub(crate) fn watch_end(&self) -> watch::Receiver<i64> {
        self.end.subscribe()
    }

    /// Marks the partition deleted and wakes its waiting readers.
    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.end.send_modify(|_| {});
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }
}
