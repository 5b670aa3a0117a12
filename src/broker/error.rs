//! Errors of the broker layer.

use crate::storage::StorageError;

/// What went wrong in a broker call.
///
/// Request errors (unknown names, bad arguments, offsets out of range) leave
/// the broker as it was; [`BrokerError::is_fatal`] picks out the ones that
/// mean the disk or the data directory needs an operator.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No topic of that name.
    #[error("topic '{topic}' does not exist")]
    TopicNotFound {
        /// The name asked for.
        topic: String,
    },
    /// The topic has no such partition.
    #[error("topic '{topic}' has no partition {partition}: valid partitions are [0, {count})")]
    PartitionNotFound {
        /// Topic name.
        topic: String,
        /// Partition asked for.
        partition: i32,
        /// The topic's partition count.
        count: i32,
    },
    /// A topic of that name exists already.
    #[error("topic '{topic}' already exists")]
    TopicExists {
        /// The name.
        topic: String,
    },
    /// A request field breaks a rule; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// One record is too large for any batch the topic accepts.
    #[error("record of {size} bytes (with batch header) exceeds the topic's max_message_bytes of {limit}")]
    RecordTooLarge {
        /// Batch size this record alone needs.
        size: usize,
        /// The topic's limit.
        limit: usize,
    },
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The topic was deleted while the call ran.
    #[error("topic '{topic}' was deleted")]
    TopicDeleted {
        /// The name.
        topic: String,
    },
    /// The storage layer failed (or refused the request).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Stored records failed their checksum or framing when read. Records
    /// before them were served; reading from `to` on skips them.
    #[error("records at offsets [{from}, {to}) of partition {partition} of topic '{topic}' are damaged on disk ({reason}); fetch from offset {to} to skip them")]
    DamagedRecords {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// First damaged offset.
        from: i64,
        /// First readable offset after the damage.
        to: i64,
        /// What is wrong (no server paths).
        reason: String,
    },
    /// This broker does not lead the partition (in a cluster).
    #[error("this broker does not lead partition {partition} of topic '{topic}' ({}): refresh metadata and retry", match leader { Some(l) => format!("broker {l} does"), None => "it has no leader right now".to_string() })]
    NotLeader {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The leader, if known.
        leader: Option<u64>,
    },
    /// acks=ALL with fewer in-sync replicas than the topic requires:
    /// nothing was appended.
    #[error("partition {partition} of topic '{topic}' has {isr} in-sync replicas, fewer than min_insync_replicas = {min}: nothing was appended; retry once replicas catch up")]
    NotEnoughReplicas {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// In-sync replicas now.
        isr: usize,
        /// Required.
        min: usize,
    },
    /// The ISR fell below its minimum after the records were appended:
    /// they may or may not survive (an idempotent retry is safe).
    #[error("partition {partition} of topic '{topic}' fell to {isr} in-sync replicas (min_insync_replicas = {min}) after the records were appended: they are not acknowledged; retry (idempotent producers without duplicates)")]
    NotEnoughReplicasAfterAppend {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// In-sync replicas now.
        isr: usize,
        /// Required.
        min: usize,
    },
    /// acks=ALL: the in-sync replicas did not confirm in time.
    #[error("partition {partition} of topic '{topic}': the in-sync replicas did not confirm the records within {waited_ms} ms; they are not acknowledged; retry (idempotent producers without duplicates)")]
    ReplicationTimeout {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// How long it waited.
        waited_ms: u64,
    },
    /// Reading a partition from its leader on another broker failed.
    #[error("reading partition {partition} of topic '{topic}' from its leader failed: {reason}")]
    Remote {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Why.
        reason: String,
    },
    /// The data directory was written in a format this build does not
    /// read.
    #[error("data directory {path}: {reason}")]
    DataFormat {
        /// The directory.
        path: std::path::PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// Topic metadata could not be read or written.
    #[error("topic metadata {path}: {reason}")]
    Metadata {
        /// File concerned.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl BrokerError {
    /// True for errors that need an operator (I/O failures, damage), false
    /// for errors in the request.
    pub fn is_fatal(&self) -> bool {
        match self {
            BrokerError::Storage(e) => e.is_fatal(),
            BrokerError::Metadata { .. }
            | BrokerError::DataFormat { .. }
            | BrokerError::DamagedRecords { .. } => true,
            _ => false,
        }
    }

    /// The error as a client may see it: without the server's file paths
    /// (those go to the server's log).
    pub fn client_message(&self) -> String {
        match self {
            BrokerError::Metadata { reason, .. } => {
                format!("server-side error reading or writing topic metadata: {reason}")
            }
            BrokerError::Storage(s) => match s {
                StorageError::Io { op, source, .. } => {
                    format!("server-side I/O error while {op}: {source}")
                }
                StorageError::DiskFull { .. } => {
                    "no space left on the server's disk: retry after an operator frees space".into()
                }
                StorageError::Corrupt { reason, .. } => {
                    format!("server-side data is corrupt: {reason}")
                }
                StorageError::DamagedBatch {
                    from, to, reason, ..
                } => format!("stored records at offsets [{from}, {to}) are damaged: {reason}"),
                StorageError::UnknownFile { .. } => {
                    "an unexpected file is in a partition's log directory (see the server's log)"
                        .into()
                }
                other => other.to_string(),
            },
            other => other.to_string(),
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        BrokerError::InvalidArgument(msg.into())
    }
}

/// Result of broker calls.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
