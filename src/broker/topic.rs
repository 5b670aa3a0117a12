//! Topics: names, per-topic settings and their metadata file.

use std::{
    path::{Path, PathBuf},
    sync::{atomic::AtomicU32, Arc},
};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::error::{BrokerError, Result};
use super::partition::Partition;
use crate::storage::{LogConfig, MAX_SEGMENT_BYTES};

/// Longest topic name (Kafka's limit).
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// Most partitions one topic may have.
pub const MAX_PARTITIONS: i32 = 100_000;
/// Name of the metadata file in a topic's directory.
pub const TOPIC_FILE: &str = "topic.json";

/// Names starting with this are the broker's internal topics.
pub const INTERNAL_TOPIC_PREFIX: &str = "__";

/// Whether `name` is an internal topic's name.
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with(INTERNAL_TOPIC_PREFIX)
}

/// Checks a topic name against Kafka's rule: 1 to 249 characters of
/// `[A-Za-z0-9._-]`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_TOPIC_NAME_LEN {
        return Err(BrokerError::invalid(format!(
            "topic name must be 1 to {MAX_TOPIC_NAME_LEN} characters, got {}",
            name.len()
        )));
    }
    if name == "." || name == ".." {
        return Err(BrokerError::invalid(format!(
            "topic name cannot be '{name}'"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(BrokerError::invalid(format!(
            "topic name '{}' has the character {c:?}: only [A-Za-z0-9._-] are allowed",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// Settings a topic overrides; `None` takes the server's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Retention by age in ms; `Some(-1)` keeps forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<i64>,
    /// Retention by size per partition; `Some(-1)` has no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<i64>,
    /// Segment size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<i64>,
    /// Largest batch accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<i32>,
    /// Whose clock stamps records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_type: Option<TimestampType>,
    /// With create time: how far in the past a record's timestamp may be,
    /// ms; `Some(-1)` no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_before_max_ms: Option<i64>,
    /// With create time: how far in the future a record's timestamp may
    /// be, ms; `Some(-1)` no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_after_max_ms: Option<i64>,
    /// In a cluster: the fewest in-sync replicas that take acks=ALL
    /// writes (default 2 at replication factor 3 or more, else 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_insync_replicas: Option<i32>,
    /// In a cluster: elect an out-of-sync replica when no in-sync one is
    /// live (acknowledged records may be lost). Off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unclean_leader_election: Option<bool>,
}

/// Whose clock stamps a topic's records (Kafka's `message.timestamp.type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TimestampType {
    /// The producer's timestamp, if it sets one (within the skew bounds);
    /// else the broker's clock.
    #[default]
    CreateTime,
    /// Always the broker's clock when it appends: client timestamps are
    /// replaced, so retention and time lookups follow arrival.
    LogAppendTime,
}

/// How a topic stamps records: its settings over the server's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampPolicy {
    /// Whose clock.
    pub kind: TimestampType,
    /// Largest distance into the past, ms (create time only).
    pub before_max_ms: Option<u64>,
    /// Largest distance into the future, ms (create time only).
    pub after_max_ms: Option<u64>,
}

impl Default for TimestampPolicy {
    /// Kafka 4's defaults: create time, no bound into the past, one hour
    /// into the future (a record stamped years ahead would keep its
    /// segment, and every later one, from time-based retention).
    fn default() -> Self {
        Self {
            kind: TimestampType::CreateTime,
            before_max_ms: None,
            after_max_ms: Some(3_600_000),
        }
    }
}

impl TimestampPolicy {
    /// The timestamp a record gets, or why it is refused.
    pub fn stamp(&self, client: Option<i64>, now: i64) -> std::result::Result<i64, String> {
        let Some(ts) = client.filter(|_| self.kind == TimestampType::CreateTime) else {
            return Ok(now);
        };
        if ts < 0 {
            return Err(format!(
                "timestamp_ms {ts} is negative: leave it unset for the broker's clock"
            ));
        }
        if let Some(max) = self.before_max_ms {
            if now.saturating_sub(ts) > max as i64 {
                return Err(format!(
                    "timestamp_ms {ts} is more than timestamp_before_max_ms = {max} before the broker's clock ({now})"
                ));
            }
        }
        if let Some(max) = self.after_max_ms {
            if ts.saturating_sub(now) > max as i64 {
                return Err(format!(
                    "timestamp_ms {ts} is more than timestamp_after_max_ms = {max} after the broker's clock ({now})"
                ));
            }
        }
        Ok(ts)
    }
}

impl TopicConfig {
    /// Checks each set value against its valid range; `max_message_bytes`
    /// against the segment size in force and `max_message_limit` (what a
    /// request can carry).
    pub fn validate(&self, defaults: &LogConfig, max_message_limit: usize) -> Result<()> {
        if let Some(v) = self.retention_ms {
            if v < -1 || v == 0 {
                return Err(BrokerError::invalid(format!(
                    "retention_ms {v} must be -1 (forever) or at least 1"
                )));
            }
        }
        if let Some(v) = self.retention_bytes {
            if v < -1 || v == 0 {
                return Err(BrokerError::invalid(format!(
                    "retention_bytes {v} must be -1 (no limit) or at least 1"
                )));
            }
        }
        if let Some(v) = self.segment_bytes {
            if !(1024..=MAX_SEGMENT_BYTES as i64).contains(&v) {
                return Err(BrokerError::invalid(format!(
                    "segment_bytes {v} must be in [1024, {MAX_SEGMENT_BYTES}]"
                )));
            }
        }
        if let Some(v) = self.max_message_bytes {
            let seg = self
                .segment_bytes
                .unwrap_or(defaults.segment_bytes as i64)
                .min(max_message_limit as i64);
            if v < 128 || i64::from(v) > seg {
                return Err(BrokerError::invalid(format!(
                    "max_message_bytes {v} must be in [128, {seg}] (at most the segment size in force, and at most the server's max_request_bytes less 64 KiB)"
                )));
            }
        }
        if let Some(v) = self.min_insync_replicas {
            if !(1..=16).contains(&v) {
                return Err(BrokerError::invalid(format!(
                    "min_insync_replicas {v} must be in [1, replication factor]"
                )));
            }
        }
        for (name, v) in [
            ("timestamp_before_max_ms", self.timestamp_before_max_ms),
            ("timestamp_after_max_ms", self.timestamp_after_max_ms),
        ] {
            if let Some(v) = v {
                if v < -1 {
                    return Err(BrokerError::invalid(format!(
                        "{name} {v} must be -1 (no limit) or at least 0"
                    )));
                }
            }
        }
        Ok(())
    }

    /// How this topic stamps records, over the server's `defaults`.
    pub fn timestamps(&self, defaults: &TimestampPolicy) -> TimestampPolicy {
        let bound = |v: Option<i64>, d: Option<u64>| match v {
            Some(v) if v >= 0 => Some(v as u64),
            Some(_) => None,
            None => d,
        };
        TimestampPolicy {
            kind: self.timestamp_type.unwrap_or(defaults.kind),
            before_max_ms: bound(self.timestamp_before_max_ms, defaults.before_max_ms),
            after_max_ms: bound(self.timestamp_after_max_ms, defaults.after_max_ms),
        }
    }

    /// The settings in force: these overrides on top of `defaults`.
    pub fn effective(&self, defaults: &LogConfig, stamps: &TimestampPolicy) -> TopicConfig {
        let opt = |v: Option<u64>| v.map_or(-1, |v| v.min(i64::MAX as u64) as i64);
        let t = self.timestamps(stamps);
        let c = self.log_config(defaults);
        TopicConfig {
            timestamp_type: Some(t.kind),
            timestamp_before_max_ms: Some(opt(t.before_max_ms)),
            timestamp_after_max_ms: Some(opt(t.after_max_ms)),
            retention_ms: Some(self.retention_ms.unwrap_or(opt(defaults.retention_ms))),
            retention_bytes: Some(
                self.retention_bytes
                    .unwrap_or(opt(defaults.retention_bytes)),
            ),
            segment_bytes: Some(self.segment_bytes.unwrap_or(defaults.segment_bytes as i64)),
            max_message_bytes: Some(c.max_batch_bytes.min(i32::MAX as usize) as i32),
            // Its default depends on the replication factor, which the
            // cluster's metadata holds.
            min_insync_replicas: self.min_insync_replicas,
            unclean_leader_election: Some(self.unclean_leader_election.unwrap_or(false)),
        }
    }

    /// The log settings for this topic's partitions.
    pub fn log_config(&self, defaults: &LogConfig) -> LogConfig {
        let mut c = defaults.clone();
        let pos = |v: i64| (v > 0).then_some(v as u64);
        if let Some(v) = self.retention_ms {
            c.retention_ms = pos(v);
        }
        if let Some(v) = self.retention_bytes {
            c.retention_bytes = pos(v);
        }
        if let Some(v) = self.segment_bytes {
            c.segment_bytes = v as u64;
            c.max_batch_bytes = c.max_batch_bytes.min(v as usize);
        }
        if let Some(v) = self.max_message_bytes {
            c.max_batch_bytes = v as usize;
        }
        c
    }
}

/// What `topic.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TopicMeta {
    pub name: String,
    pub partitions: i32,
    #[serde(default)]
    pub config: TopicConfig,
    /// Creation time, ms since the epoch.
    #[serde(default)]
    pub created_ms: i64,
    /// Tells this topic apart from an earlier one of the same name
    /// (deleted, then created again): random, set at create. 0 in topics
    /// created before it existed (their creation time stands in).
    #[serde(default)]
    pub incarnation: u64,
}

impl TopicMeta {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(TOPIC_FILE);
        let bytes = std::fs::read(&path).map_err(|e| BrokerError::Metadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let meta: TopicMeta =
            serde_json::from_slice(&bytes).map_err(|e| BrokerError::Metadata {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if meta.partitions < 1 || meta.partitions > MAX_PARTITIONS {
            return Err(BrokerError::Metadata {
                path,
                reason: format!("partition count {} out of range", meta.partitions),
            });
        }
        Ok(meta)
    }

    /// Writes the file atomically (temp file, sync, rename, sync dir).
    pub fn write(&self, fs: &dyn crate::storage::FileSystem, dir: &Path) -> Result<()> {
        let path = dir.join(TOPIC_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| BrokerError::Metadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        crate::storage::write_file_atomic(fs, &path, &bytes)?;
        Ok(())
    }
}

/// A topic and its partitions.
pub struct Topic {
    pub(crate) name: Arc<str>,
    pub(crate) dir: PathBuf,
    pub(crate) config: TopicConfig,
    pub(crate) log_config: LogConfig,
    pub(crate) timestamps: TimestampPolicy,
    /// Grows when partitions are added; readers clone the `Arc` under a
    /// brief read lock.
    pub(crate) partitions: RwLock<Arc<Vec<Arc<Partition>>>>,
    /// Round-robin cursor for keyless records.
    pub(crate) next_keyless: AtomicU32,
    pub(crate) created_ms: i64,
    pub(crate) incarnation: u64,
    pub(crate) metrics: TopicMetrics,
    /// Woken after every append to any partition (work-queue deliverers
    /// wait on it).
    pub(crate) appended: tokio::sync::Notify,
}

/// Metric handles of one topic, registered once.
pub(crate) struct TopicMetrics {
    pub produce_records: metrics::Counter,
    pub produce_bytes: metrics::Counter,
    pub fetch_records: metrics::Counter,
    pub fetch_bytes: metrics::Counter,
}

impl TopicMetrics {
    pub fn new(topic: &str) -> Self {
        let t = topic.to_string();
        Self {
            produce_records: metrics::counter!("sluice_produce_records_total", "topic" => t.clone()),
            produce_bytes: metrics::counter!("sluice_produce_bytes_total", "topic" => t.clone()),
            fetch_records: metrics::counter!("sluice_fetch_records_total", "topic" => t.clone()),
            fetch_bytes: metrics::counter!("sluice_fetch_bytes_total", "topic" => t),
        }
    }
}

impl Topic {
    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Completes after the next append to any partition. Create it (and
    /// `enable` it) before looking for records, so an append in between
    /// is not missed.
    pub fn appended(&self) -> tokio::sync::futures::Notified<'_> {
        self.appended.notified()
    }

    /// The partitions (a snapshot).
    pub(crate) fn partitions(&self) -> Arc<Vec<Arc<Partition>>> {
        self.partitions.read().clone()
    }

    /// Partition `id`, or `PartitionNotFound` naming the valid range.
    pub(crate) fn partition(&self, id: i32) -> Result<Arc<Partition>> {
        let parts = self.partitions();
        usize::try_from(id)
            .ok()
            .and_then(|i| parts.get(i).cloned())
            .ok_or_else(|| BrokerError::PartitionNotFound {
                topic: self.name.to_string(),
                partition: id,
                count: parts.len() as i32,
            })
    }

    pub(crate) fn meta(&self) -> TopicMeta {
        TopicMeta {
            name: self.name.to_string(),
            partitions: self.partitions.read().len() as i32,
            config: self.config,
            created_ms: self.created_ms,
            incarnation: self.incarnation,
        }
    }

    /// This incarnation of the topic's name: differs from that of any
    /// earlier topic of the same name.
    pub fn incarnation(&self) -> u64 {
        if self.incarnation != 0 {
            self.incarnation
        } else {
            self.created_ms as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["a", "orders", "my.topic-1_x", &"x".repeat(249)] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "é", &"x".repeat(250)] {
            let e = validate_topic_name(bad).unwrap_err();
            assert!(matches!(e, BrokerError::InvalidArgument(_)), "{bad}");
        }
    }

    #[test]
    fn timestamps_follow_the_policy() {
        let p = TimestampPolicy::default();
        assert_eq!(p.stamp(None, 1_000), Ok(1_000));
        assert_eq!(p.stamp(Some(5), 1_000), Ok(5));
        assert!(p.stamp(Some(1_000 + 3_600_001), 1_000).is_err());
        assert!(p.stamp(Some(-1), 1_000).is_err());
        let append = TopicConfig {
            timestamp_type: Some(TimestampType::LogAppendTime),
            ..Default::default()
        }
        .timestamps(&p);
        assert_eq!(append.stamp(Some(i64::MAX), 7), Ok(7));
        let before = TopicConfig {
            timestamp_before_max_ms: Some(10),
            timestamp_after_max_ms: Some(-1),
            ..Default::default()
        }
        .timestamps(&p);
        assert!(before.stamp(Some(989), 1_000).is_err());
        assert_eq!(before.stamp(Some(990), 1_000), Ok(990));
        assert_eq!(before.stamp(Some(i64::MAX), 1_000), Ok(i64::MAX));
    }

    #[test]
    fn config_ranges_are_checked() {
        let bad = [
            TopicConfig {
                retention_ms: Some(0),
                ..Default::default()
            },
            TopicConfig {
                retention_bytes: Some(-2),
                ..Default::default()
            },
            TopicConfig {
                segment_bytes: Some(100),
                ..Default::default()
            },
            TopicConfig {
                max_message_bytes: Some(10),
                ..Default::default()
            },
            TopicConfig {
                segment_bytes: Some(4096),
                max_message_bytes: Some(8192),
                ..Default::default()
            },
        ];
        let defaults = LogConfig::default();
        for c in bad {
            assert!(c.validate(&defaults, 8 << 20).is_err(), "{c:?}");
        }
        // Checked against the segment size in force, not only the topic's
        // own: defaults of 64 KiB segments refuse a 1 MiB message.
        let small = LogConfig {
            segment_bytes: 64 * 1024,
            ..LogConfig::default()
        };
        let big = TopicConfig {
            max_message_bytes: Some(1 << 20),
            ..Default::default()
        };
        assert!(big.validate(&defaults, 8 << 20).is_ok());
        assert!(big.validate(&small, 8 << 20).is_err());
        assert!(big.validate(&defaults, 512 * 1024).is_err());
        let forever = TopicConfig {
            retention_ms: Some(-1),
            ..Default::default()
        };
        forever.validate(&defaults, 8 << 20).unwrap();
        assert_eq!(forever.log_config(&LogConfig::default()).retention_ms, None);
    }
}
