//! Errors of the storage layer.

use std::{io, path::PathBuf};

use super::batch::BatchError;

/// What went wrong in the storage layer.
///
/// Request errors (bad input, offsets out of range) leave the log intact and
/// usable; [`StorageError::is_fatal`] tells them apart from I/O failures and
/// on-disk damage that need an operator.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A batch is larger than the configured limit.
    #[error("batch of {size} bytes exceeds the limit of {limit} bytes (max_batch_bytes)")]
    BatchTooLarge {
        /// Size of the batch.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The offset is outside the log.
    #[error("offset {offset} is out of range: valid offsets are [{start}, {end}]")]
    OffsetOutOfRange {
        /// Offset asked for.
        offset: i64,
        /// Log start offset.
        start: i64,
        /// Log end offset (the next offset to be written).
        end: i64,
    },
    /// A caller handed in bytes that are not a valid batch.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// The log directory holds a file the log does not know.
    #[error("unexpected file {path} in log directory: expected only <20-digit offset>.log/.index/.timeindex/.snapshot and the recovery-point checkpoint")]
    UnknownFile {
        /// The file.
        path: PathBuf,
    },
    /// The disk is full.
    #[error("no space left on device while writing {path}")]
    DiskFull {
        /// File being written.
        path: PathBuf,
    },
    /// Data on disk that should be intact is not.
    #[error("corrupt data in {path}: {reason}")]
    Corrupt {
        /// File holding the damage.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A stored batch failed its checksum or framing when it was read.
    /// Batches before it are still served; reading from `to` on skips it.
    #[error("damaged data in {path} at offsets [{from}, {to}): {reason}")]
    DamagedBatch {
        /// File holding the damage (for the server's log, not for clients).
        path: PathBuf,
        /// First offset the damage may hold.
        from: i64,
        /// First offset after it that can be read.
        to: i64,
        /// What is wrong.
        reason: String,
    },
    /// An operating-system I/O call failed.
    #[error("I/O error while {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// File or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A configuration value is out of its valid range.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
    /// An idempotent batch's producer fields are malformed.
    #[error("invalid producer fields: {0}")]
    InvalidProducer(String),
    /// An idempotent batch does not continue its producer's sequence: a
    /// batch in between was lost.
    #[error("producer {producer_id}: out-of-order sequence {received}, expected {expected} (a batch in between was not appended)")]
    OutOfOrderSequence {
        /// Producer.
        producer_id: i64,
        /// The sequence the partition expected next.
        expected: i32,
        /// The batch's base sequence.
        received: i32,
    },
    /// An idempotent batch was appended earlier, but longer ago than the
    /// log remembers its offsets.
    #[error("producer {producer_id}: sequence {received} was already appended (the partition expects {expected} next)")]
    DuplicateSequence {
        /// Producer.
        producer_id: i64,
        /// The batch's base sequence.
        received: i32,
        /// The sequence the partition expects next.
        expected: i32,
    },
    /// A producer new to the log, when it already remembers its limit.
    #[error("partition already tracks {limit} idempotent producers (max_producers_per_partition); a new one is refused until idle ones expire")]
    TooManyProducers {
        /// The limit.
        limit: usize,
    },
    /// A batch of an older producer epoch than the partition has seen.
    #[error("producer {producer_id}: epoch {epoch} is fenced by epoch {current}")]
    ProducerFenced {
        /// Producer.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The newest epoch the partition has seen.
        current: i16,
    },
}

impl StorageError {
    /// Wraps an I/O error, telling a full disk apart from other failures.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        // ENOSPC (28) and EDQUOT (122) on Linux both mean "no room to write".
        if source.kind() == io::ErrorKind::StorageFull
            || matches!(source.raw_os_error(), Some(28) | Some(122))
        {
            return StorageError::DiskFull { path };
        }
        StorageError::Io { op, path, source }
    }

    /// A copy to report to several waiters (an I/O error keeps its kind and
    /// message).
    pub fn duplicate(&self) -> Self {
        match self {
            StorageError::DiskFull { path } => StorageError::DiskFull { path: path.clone() },
            StorageError::Io { op, path, source } => StorageError::Io {
                op,
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            StorageError::Closed => StorageError::Closed,
            other => StorageError::Io {
                op: "flushing",
                path: PathBuf::new(),
                source: io::Error::other(other.to_string()),
            },
        }
    }

    /// True for errors that mean the log or the machine is in trouble, as
    /// opposed to a bad request that leaves the log serving.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StorageError::Io { .. }
                | StorageError::Corrupt { .. }
                | StorageError::DamagedBatch { .. }
        )
    }
}

/// Result type of the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
