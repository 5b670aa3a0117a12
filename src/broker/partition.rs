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
use super::replication::{ReplicaCell, Role};
use crate::storage::{Flusher, Log, LogConfig, StorageError};

/// How far a partition's log is durable, as its syncs report it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Durable {
    /// Every offset below this is on disk.
    offset: i64,
    /// Failed syncs so far, and the last one's error.
    failures: u64,
    error: Option<Arc<BrokerError>>,
}

/// Waits, without blocking a thread, for a partition to be durable up to
/// an offset (see [`Partition::durable_waiter`]).
pub(crate) struct DurableWaiter {
    rx: watch::Receiver<Durable>,
    /// Failed syncs when the waiter was taken.
    failures: u64,
    end: i64,
}

impl DurableWaiter {
    /// Returns once everything below the offset is durable; fails with the
    /// error of a sync that failed meanwhile.
    pub(crate) async fn wait(mut self) -> std::result::Result<(), Arc<BrokerError>> {
        loop {
            {
                let d = self.rx.borrow_and_update();
                if d.offset >= self.end {
                    return Ok(());
                }
                if d.failures > self.failures {
                    return Err(d
                        .error
                        .clone()
                        .unwrap_or_else(|| Arc::new(BrokerError::ShuttingDown)));
                }
            }
            if self.rx.changed().await.is_err() {
                return Err(Arc::new(BrokerError::ShuttingDown));
            }
        }
    }
}

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
    /// How far the log is durable. acks=ALL producers wait on it (async);
    /// the log's syncs, on I/O threads, publish to it.
    durable: Arc<watch::Sender<Durable>>,
    deleted: AtomicBool,
    /// Size and segment count as last seen, for metrics of closed logs.
    pub(crate) last_size: AtomicU64,
    pub(crate) last_segments: AtomicU64,
    /// Leader, follower or standalone, and what acks=ALL waiters watch
    /// (see `replication/`).
    pub(crate) replica: ReplicaCell,
}

impl Partition {
    pub(crate) fn new(topic: Arc<str>, id: i32, dir: PathBuf, role: Role) -> Self {
        Self {
            topic,
            id,
            dir,
            log: Mutex::new(None),
            last_used: AtomicU64::new(0),
            end: watch::Sender::new(-1),
            durable: Arc::new(watch::Sender::new(Durable::default())),
            deleted: AtomicBool::new(false),
            last_size: AtomicU64::new(0),
            last_segments: AtomicU64::new(0),
            replica: ReplicaCell::new(role),
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
        let durable = self.durable.clone();
        log.set_durable_hook(Arc::new(move |offset, error: Option<&StorageError>| {
            durable.send_modify(|d| {
                d.offset = d.offset.max(offset);
                if let Some(e) = error {
                    d.failures += 1;
                    d.error = Some(Arc::new(BrokerError::Storage(e.duplicate())));
                }
            });
        }));
        if self.replica.is_standalone() {
            self.end.send_replace(log.end_offset());
        }
        *slot = Some(log.clone());
        Ok((log, true))
    }

    /// The open log, if any, without opening it.
    pub(crate) fn open_log(&self) -> Option<Arc<Log>> {
        self.log.lock().clone()
    }

    /// The open log, if it is open and nobody is opening or closing it
    /// right now (which can take a recovery's time): never waits.
    pub(crate) fn try_open_log(&self) -> Option<Arc<Log>> {
        self.log.try_lock().and_then(|slot| slot.clone())
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

    /// A waiter for everything below `end` to be durable, or `None` if it
    /// is already. Take it before asking for the flush, so a failure of
    /// that flush is seen by [`DurableWaiter::wait`].
    pub(crate) fn durable_waiter(&self, end: i64) -> Option<DurableWaiter> {
        let mut rx = self.durable.subscribe();
        let failures = {
            let d = rx.borrow_and_update();
            if d.offset >= end {
                return None;
            }
            d.failures
        };
        Some(DurableWaiter { rx, failures, end })
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

    /// The high watermark as last published (`None` before the log was
    /// first opened).
    pub(crate) fn known_end(&self) -> Option<i64> {
        let end = *self.end.borrow();
        (end >= 0).then_some(end)
    }

    /// A receiver of high-watermark changes.
    pub(crate) fn watch_end(&self) -> watch::Receiver<i64> {
        self.end.subscribe()
    }

    /// Marks the partition deleted and wakes its waiting readers.
    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.wake_readers();
    }

    /// Wakes readers waiting on the high watermark, so they look again
    /// (the partition was deleted, or its role changed).
    pub(crate) fn wake_readers(&self) {
        self.end.send_modify(|_| {});
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }
}
