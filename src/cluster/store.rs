//! openraft's storage, on Sluice's own: the metadata log is a partition
//! log (`__cluster_metadata/log`, one record batch per Raft entry, the
//! record offset equal to the Raft index), and the state machine is the
//! [`MetadataImage`] with its snapshot in `__cluster_metadata/snapshot.json`.
//!
//! Every file operation runs on the blocking pool, never on a tokio
//! worker. Durability order: an entry is fsynced before openraft is told it
//! is written; the vote and the committed id are written atomically (temp
//! file, fsync, rename, directory fsync) before they are acknowledged; a
//! snapshot is durable before openraft purges the entries it replaces.

// openraft's traits fix the error type (`StorageError`, large); the
// helpers here return it as they must.
#![allow(clippy::result_large_err)]

use std::{
    fmt::Debug,
    io::Cursor,
    ops::{Bound, RangeBounds},
    path::{Path, PathBuf},
    sync::Arc,
};

use openraft::{
    storage::{LogFlushed, RaftLogStorage, RaftStateMachine},
    AnyError, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    Vote,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::metadata::{MetadataImage, NodeId, Outcome};
use super::TypeConfig;
use crate::storage::{
    checkpoint::Checkpoint, os_fs, write_file_atomic, BatchBuilder, BatchIter, FlushPolicy, Log,
    LogConfig,
};

type SResult<T> = Result<T, StorageError<NodeId>>;

const STATE_FILE: &str = "raft_state.json";
const SNAPSHOT_FILE: &str = "snapshot.json";

fn io_error<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn read_error(msg: String) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::error(msg)).into()
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> SResult<T> + Send + 'static,
) -> SResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| read_error(format!("metadata storage task failed: {e}")))?
}

/// The small durable state beside the log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RaftState {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 32 << 20,
        segment_ms: None,
        retention_ms: None,
        retention_bytes: None,
        initial_preallocate_bytes: 1 << 20,
        // Each append is synced explicitly before openraft hears of it.
        flush: FlushPolicy::Manual,
        max_batch_bytes: 8 << 20,
        ..LogConfig::default()
    }
}

struct LogInner {
    dir: PathBuf,
    state_path: PathBuf,
    /// Replaced whole when a snapshot skips the log past its end (see
    /// `reset_at`); readers clone the `Arc` under a brief read lock.
    log: RwLock<Arc<Log>>,
    /// Vote, committed and purged ids. Held only to read or swap the
    /// value, never across I/O or an await.
    state: Mutex<RaftState>,
    /// Serializes writers (append, truncate, purge, reset): openraft calls
    /// them one at a time already; this keeps blocking tasks in order.
    writer: Mutex<()>,
}

impl LogInner {
    fn log(&self) -> Arc<Log> {
        self.log.read().clone()
    }

    fn write_state(&self, state: &RaftState) -> SResult<()> {
        let bytes = serde_json::to_vec(state).map_err(io_error)?;
        write_file_atomic(&*os_fs(), &self.state_path, &bytes).map_err(io_error)
    }

    /// Restarts the log empty at `base` (a snapshot now stands for
    /// everything before it): the old files go only after the new log is
    /// durable.
    fn reset_at(&self, base: u64) -> SResult<()> {
        let old = self.log();
        old.close().map_err(io_error)?;
        let aside = self.dir.with_extension("old");
        let fs = os_fs();
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(io_error)?;
        }
        std::fs::rename(&self.dir, &aside).map_err(io_error)?;
        std::fs::create_dir_all(&self.dir).map_err(io_error)?;
        Checkpoint {
            recovery_point: base as i64,
            clean: false,
            leader_epoch: 0,
        }
        .write(&*fs, &self.dir)
        .map_err(io_error)?;
        if let Some(parent) = self.dir.parent() {
            crate::storage::sync_dir(&*fs, parent).map_err(io_error)?;
        }
        let log = Log::open(&self.dir, log_config()).map_err(io_error)?;
        *self.log.write() = Arc::new(log);
        std::fs::remove_dir_all(&aside).map_err(io_error)?;
        Ok(())
    }

    /// Entries with index in `[from, to)`.
    fn read_range(&self, from: u64, to: u64) -> SResult<Vec<Entry<TypeConfig>>> {
        let log = self.log();
        let mut out = Vec::new();
        let mut offset = from.max(log.start_offset() as u64);
        let end = to.min(log.end_offset() as u64);
        while offset < end {
            let read = log.read(offset as i64, 1 << 20).map_err(io_error)?;
            if read.data.is_empty() {
                break;
            }
            for batch in BatchIter::new(&read.data) {
                let batch = batch.map_err(|e| read_error(format!("metadata log: {e}")))?;
                for rec in batch.records() {
                    let rec = rec.map_err(|e| read_error(format!("metadata log: {e}")))?;
                    let at = rec.offset as u64;
                    if at < offset || at >= end {
                        continue;
                    }
                    let value = rec.value.unwrap_or_default();
                    let entry: Entry<TypeConfig> = serde_json::from_slice(value)
                        .map_err(|e| read_error(format!("metadata entry {at}: {e}")))?;
                    out.push(entry);
                    offset = at + 1;
                }
                offset = offset.max(batch.next_offset() as u64);
            }
        }
        Ok(out)
    }
}

/// The metadata log, as openraft's [`RaftLogStorage`].
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<LogInner>,
}

impl LogStore {
    /// Opens (recovering) the log under `dir`. Blocking.
    pub fn open(dir: &Path) -> crate::storage::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| crate::storage::StorageError::io("creating", dir, e))?;
        let state_path = dir.join(STATE_FILE);
        let state: RaftState = match std::fs::read(&state_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                crate::storage::StorageError::InvalidConfig(format!(
                    "{} is damaged: {e}",
                    state_path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RaftState::default(),
            Err(e) => return Err(crate::storage::StorageError::io("reading", &state_path, e)),
        };
        let log_dir = dir.join("log");
        // A reset that died between its renames left the new log complete
        // (it was written first) or the old one aside; either way the
        // directory `log` is the one to use, and the aside copy is stale.
        let aside = log_dir.with_extension("old");
        if aside.exists() && log_dir.exists() {
            let _ = std::fs::remove_dir_all(&aside);
        } else if aside.exists() {
            std::fs::rename(&aside, &log_dir)
                .map_err(|e| crate::storage::StorageError::io("renaming", &aside, e))?;
        }
        let log = Log::open(&log_dir, log_config())?;
        Ok(Self {
            inner: Arc::new(LogInner {
                dir: log_dir,
                state_path,
                log: RwLock::new(Arc::new(log)),
                state: Mutex::new(state),
                writer: Mutex::new(()),
            }),
        })
    }

    /// Flushes and closes the log. Blocking.
    pub fn close(&self) {
        if let Err(e) = self.inner.log().close() {
            tracing::warn!(error = %e, "closing the metadata log failed");
        }
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i + 1,
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&i) => i + 1,
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry<TypeConfig>>> {
        let (from, to) = bounds(&range);
        let inner = self.inner.clone();
        blocking(move || inner.read_range(from, to)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let inner = self.inner.clone();
        blocking(move || {
            let last_purged = inner.state.lock().last_purged;
            let log = inner.log();
            let end = log.end_offset() as u64;
            let purged_next = last_purged.map_or(0, |l| l.index + 1);
            let last = if end > purged_next && end > log.start_offset() as u64 {
                inner.read_range(end - 1, end)?.pop().map(|e| e.log_id)
            } else {
                None
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last.or(last_purged),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> SResult<()> {
        let inner = self.inner.clone();
        let vote = *vote;
        blocking(move || {
            let _w = inner.writer.lock();
            let mut next = inner.state.lock().clone();
            next.vote = Some(vote);
            inner.write_state(&next)?;
            *inner.state.lock() = next;
            Ok(())
        })
        .await
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<NodeId>>> {
        Ok(self.inner.state.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> SResult<()> {
        let inner = self.inner.clone();
        blocking(move || {
            let _w = inner.writer.lock();
            let mut next = inner.state.lock().clone();
            next.committed = committed;
            inner.write_state(&next)?;
            *inner.state.lock() = next;
            Ok(())
        })
        .await
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<NodeId>>> {
        Ok(self.inner.state.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let inner = self.inner.clone();
        let result = blocking(move || {
            let _w = inner.writer.lock();
            let Some(first) = entries.first() else {
                return Ok(());
            };
            let end = inner.log().end_offset() as u64;
            if first.log_id.index > end {
                inner.reset_at(first.log_id.index)?;
            } else if first.log_id.index < end {
                return Err(read_error(format!(
                    "metadata log append at {} below its end {end} (not truncated first)",
                    first.log_id.index
                )));
            }
            let log = inner.log();
            for e in &entries {
                let bytes = serde_json::to_vec(e).map_err(io_error)?;
                let mut b = BatchBuilder::with_capacity(bytes.len() + 128);
                b.push(0, None, Some(&bytes), &[]).map_err(io_error)?;
                let batch = b
                    .build()
                    .ok_or_else(|| read_error("empty metadata batch".into()))?;
                let info = log.append(&batch).map_err(io_error)?;
                if info.base_offset as u64 != e.log_id.index {
                    return Err(read_error(format!(
                        "metadata entry {} landed at offset {}",
                        e.log_id.index, info.base_offset
                    )));
                }
            }
            log.flush().map_err(io_error)
        })
        .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        let inner = self.inner.clone();
        blocking(move || {
            let _w = inner.writer.lock();
            inner
                .log()
                .truncate_to(log_id.index as i64)
                .map_err(io_error)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        let inner = self.inner.clone();
        blocking(move || {
            let _w = inner.writer.lock();
            // The purge point is recorded first: an entry at or below it is
            // never served again, even if its segment outlives this call.
            let mut next = inner.state.lock().clone();
            next.last_purged = Some(log_id);
            inner.write_state(&next)?;
            *inner.state.lock() = next;
            let log = inner.log();
            if log_id.index + 1 > log.end_offset() as u64 {
                // A snapshot installed from the leader reaches past
                // everything here.
                inner.reset_at(log_id.index + 1)
            } else {
                log.delete_before(log_id.index as i64 + 1)
                    .map_err(io_error)?;
                Ok(())
            }
        })
        .await
    }
}

/// What `snapshot.json` holds.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    image: MetadataImage,
}

/// The applied state: the image and where it stands in the log.
#[derive(Clone, Default)]
pub struct Applied {
    /// Last entry applied.
    pub last: Option<LogId<NodeId>>,
    /// Membership as of `last`.
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    /// The image; cloned cheaply by readers.
    pub image: Arc<MetadataImage>,
}

/// The metadata image, as openraft's [`RaftStateMachine`].
#[derive(Clone)]
pub struct StateMachine {
    dir: PathBuf,
    /// Published after every apply and install: readers (routing, the
    /// broker's reconciler) take the newest image from it.
    applied: watch::Sender<Applied>,
    /// Snapshots built, for unique snapshot ids.
    built: Arc<Mutex<u64>>,
}

impl StateMachine {
    /// Loads the last snapshot under `dir`, if any. Blocking.
    pub fn open(dir: &Path) -> crate::storage::Result<Self> {
        let path = dir.join(SNAPSHOT_FILE);
        let applied = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| {
                    crate::storage::StorageError::InvalidConfig(format!(
                        "{} is damaged: {e}",
                        path.display()
                    ))
                })?;
                Applied {
                    last: file.meta.last_log_id,
                    membership: file.meta.last_membership,
                    image: Arc::new(file.image),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Applied::default(),
            Err(e) => return Err(crate::storage::StorageError::io("reading", &path, e)),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            applied: watch::Sender::new(applied),
            built: Arc::new(Mutex::new(0)),
        })
    }

    /// Follows the applied state.
    pub fn subscribe(&self) -> watch::Receiver<Applied> {
        self.applied.subscribe()
    }

    /// The applied state now.
    pub fn current(&self) -> Applied {
        self.applied.borrow().clone()
    }

    /// The applied image now (a reference count, no copy: routing reads
    /// it on every request).
    pub fn image(&self) -> Arc<MetadataImage> {
        self.applied.borrow().image.clone()
    }

    fn encode(applied: &Applied, snapshot_id: String) -> SResult<(SnapshotFile, Vec<u8>)> {
        let meta = SnapshotMeta {
            last_log_id: applied.last,
            last_membership: applied.membership.clone(),
            snapshot_id,
        };
        let image = serde_json::to_vec(&*applied.image).map_err(io_error)?;
        Ok((
            SnapshotFile {
                meta,
                image: MetadataImage::clone(&applied.image),
            },
            image,
        ))
    }

    fn write_file(dir: &Path, file: &SnapshotFile) -> SResult<()> {
        let bytes = serde_json::to_vec(file).map_err(io_error)?;
        write_file_atomic(&*os_fs(), &dir.join(SNAPSHOT_FILE), &bytes).map_err(io_error)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        let applied = self.current();
        let id = {
            let mut n = self.built.lock();
            *n += 1;
            format!("{}-{}", applied.last.map_or(0, |l| l.index), *n)
        };
        let dir = self.dir.clone();
        blocking(move || {
            let (file, image) = Self::encode(&applied, id)?;
            // Durable before openraft purges the entries it replaces.
            Self::write_file(&dir, &file)?;
            Ok(Snapshot {
                meta: file.meta,
                snapshot: Box::new(Cursor::new(image)),
            })
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> SResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        let a = self.applied.borrow();
        Ok((a.last, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<Outcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut next = self.current();
        let mut out = Vec::new();
        {
            let image = Arc::make_mut(&mut next.image);
            for e in entries {
                next.last = Some(e.log_id);
                let outcome = match &e.payload {
                    EntryPayload::Blank => Outcome::Done,
                    EntryPayload::Normal(cmd) => image.apply(e.log_id.index, cmd),
                    EntryPayload::Membership(m) => {
                        next.membership = StoredMembership::new(Some(e.log_id), m.clone());
                        Outcome::Done
                    }
                };
                out.push(outcome);
            }
        }
        self.applied.send_replace(next);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> SResult<()> {
        let image: MetadataImage = serde_json::from_slice(snapshot.get_ref())
            .map_err(|e| read_error(format!("received metadata snapshot: {e}")))?;
        let file = SnapshotFile {
            meta: meta.clone(),
            image,
        };
        let dir = self.dir.clone();
        let file = blocking(move || {
            Self::write_file(&dir, &file)?;
            Ok(file)
        })
        .await?;
        self.applied.send_replace(Applied {
            last: file.meta.last_log_id,
            membership: file.meta.last_membership,
            image: Arc::new(file.image),
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        let path = self.dir.join(SNAPSHOT_FILE);
        blocking(move || {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_error(e)),
            };
            let file: SnapshotFile = serde_json::from_slice(&bytes)
                .map_err(|e| read_error(format!("{}: {e}", path.display())))?;
            let image = serde_json::to_vec(&file.image).map_err(io_error)?;
            Ok(Some(Snapshot {
                meta: file.meta,
                snapshot: Box::new(Cursor::new(image)),
            }))
        })
        .await
    }
}
