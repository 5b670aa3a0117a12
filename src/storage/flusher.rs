//! One background thread that applies time-based flushing (and syncs rolled
//! segments) for any number of logs.

use std::{
    sync::{Arc, Weak},
    thread::JoinHandle,
    time::Duration,
};

use parking_lot::{Condvar, Mutex};

use super::log::Log;

/// Calls [`Log::flush_if_due`] on every registered log once per tick.
/// Logs are held weakly: dropping a log unregisters it.
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
    /// Starts the thread, ticking every `tick`.
    pub fn start(tick: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            logs: Mutex::new(Vec::new()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("sluice-flusher".into()).spawn(move || loop {
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
            for log in logs {
                if let Err(e) = log.flush_if_due() {
                    tracing::error!(dir = %log.dir().display(), error = %e, "background flush failed");
                }
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
