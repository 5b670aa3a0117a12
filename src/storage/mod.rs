//! The partition log: Sluice's storage engine.
//!
//! A partition is a directory of segments. Each segment is a data file of
//! record batches ([`batch`], Kafka's RecordBatch v2 layout) plus a sparse
//! offset index and a time index ([`index`]), all memory-mapped. Appends go
//! to the active segment through a preallocated, growing mapping; readers
//! see a consistent prefix without ever blocking the writer. Segments roll
//! at a size or age limit; retention deletes whole old segments.
//!
//! Durability follows a [`FlushPolicy`]; concurrent appenders waiting for
//! durability share one sync (group commit). A recovery-point checkpoint
//! ([`checkpoint`]) bounds the work on open: segments below it are trusted,
//! later batches are verified (checksum, offsets, leader epoch) and the log
//! is cut at the first damaged one. After a clean close nothing is scanned,
//! so open time does not grow with the log.
//!
//! This layer is synchronous and knows nothing of tokio or gRPC; it reports
//! failures as [`StorageError`].

pub mod batch;
pub mod checkpoint;
mod config;
pub mod epochs;
mod error;
mod flusher;
pub mod fs;
pub mod index;
mod log;
mod mmap;
pub mod producer_state;
pub mod segment;
mod varint;

pub use batch::{
    BatchBuilder, BatchError, BatchIter, BatchView, HeaderRef, ProducerFields, RecordBatch,
    RecordIter, RecordView,
};
pub use config::{monotonic_clock, system_clock, Clock, FlushPolicy, LogConfig, MAX_SEGMENT_BYTES};
pub use error::{Result, StorageError};
pub use flusher::{Flusher, IoPool};
pub use fs::{os_fs, CrashFs, FileSystem, Fs, OsFs};
pub use log::{
    AppendInfo, DurableHook, Log, ReadResult, RecoveryReport, RetentionOutcome, ScrubOutcome,
};
pub use mmap::{sync_dir, write_file_atomic};
pub use producer_state::ProducerStates;
