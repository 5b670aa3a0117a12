//! Where syncs run: a small pool of I/O threads ([`IoPool`]) that flushes
//! many logs in parallel, and one ticker thread ([`Flusher`]) that hands
//! the logs whose interval flush is due to the pool.
//!
//! Nobody waits for a flush on a thread of their own: a log publishes how
//! far it is durable through its durable hook ([`Log::set_durable_hook`]),
//! so an async caller asks the pool for a flush ([`IoPool::flush`]) and
//! waits for the hook's news.

use std::{
    collections::VecDeque,
    sync::{Arc, Weak},
    thread::JoinHandle,
    time::Duration,
};

use parking_lot::{Condvar, Mutex};

use super::log::Log;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads running blocking storage work (flushes first of
/// all) off the async runtime, several logs at a time.
pub struct IoPool {
    shared: Arc<PoolShared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct PoolShared {
    /// Jobs waiting, and whether the pool stops. Locked only to push or
    /// pop a job.
    queue: Mutex<PoolQueue>,
    ready: Condvar,
}

#[derive(Default)]
struct PoolQueue {
    jobs: VecDeque<Job>,
    stop: bool,
}

impl std::fmt::Debug for IoPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoPool")
            .field("threads", &self.threads.lock().len())
            .finish_non_exhaustive()
    }
}

impl IoPool {
    /// Starts `threads` threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<Arc<Self>> {
        let shared = Arc::new(PoolShared {
            queue: Mutex::new(PoolQueue::default()),
            ready: Condvar::new(),
        });
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let s = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("sluice-io-{i}"))
                    .spawn(move || loop {
                        let job = {
                            let mut q = s.queue.lock();
                            loop {
                                if let Some(job) = q.jobs.pop_front() {
                                    break job;
                                }
                                if q.stop {
                                    return;
                                }
                                s.ready.wait(&mut q);
                            }
                        };
                        job();
                    })?,
            );
        }
        Ok(Arc::new(Self {
            shared,
            threads: Mutex::new(handles),
        }))
    }

    /// Runs `job` on a pool thread.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        self.shared.queue.lock().jobs.push_back(Box::new(job));
        self.shared.ready.notify_one();
    }

    /// Flushes `log` on a pool thread, unless a flush of it is already
    /// queued and not started (that one will cover everything appended by
    /// now). The outcome reaches the log's durable hook.
    pub fn flush(&self, log: &Arc<Log>) {
        if !log.claim_flush() {
            return;
        }
        let log = log.clone();
        self.spawn(move || {
            log.release_flush();
            if let Err(e) = log.flush() {
                tracing::error!(dir = %log.dir().display(), error = %e, "flush failed");
            }
        });
    }

    /// Finishes the queued jobs and stops the threads.
    pub fn stop(&self) {
        self.shared.queue.lock().stop = true;
        self.shared.ready.notify_all();
        for t in std::mem::take(&mut *self.threads.lock()) {
            let _ = t.join();
        }
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Hands every registered log whose flush is due ([`Log::flush_due`]) to
/// an [`IoPool`] once per tick. Logs are held weakly: dropping a log
/// unregisters it.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// Registered logs; locked briefly to register or to copy the list.
    logs: Mutex<Vec<Weak<Log>>>,
    /// Set to stop the thread; the condvar wakes it early.
    stop: Mutex<bool>,
    wake: Condvar,
}

impl Flusher {
    /// Starts the ticker, every `tick`, flushing on `pool`.
    pub fn start(tick: Duration, pool: Arc<IoPool>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            logs: Mutex::new(Vec::new()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-flusher".into())
            .spawn(move || loop {
                {
                    let mut stop = s.stop.lock();
                    if !*stop {
                        s.wake.wait_for(&mut stop, tick);
                    }
                    if *stop {
                        return;
                    }
                }
                let logs: Vec<Arc<Log>> = {
                    let mut logs = s.logs.lock();
                    logs.retain(|l| l.strong_count() > 0);
                    logs.iter().filter_map(Weak::upgrade).collect()
                };
                for log in logs.iter().filter(|l| l.flush_due()) {
                    pool.flush(log);
                }
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Adds a log to flush.
    pub fn register(&self, log: &Arc<Log>) {
        self.shared.logs.lock().push(Arc::downgrade(log));
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
