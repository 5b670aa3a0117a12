//! The records of `__share_group_state`: keys (settings, a partition's
//! state, a topic's incarnation) and their prost-encoded values.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use crate::broker::journal::Journaled;
use crate::broker::NewRecord;
use crate::coordinator::share::{Finished, Settings, ShareGroup};

#[derive(Clone, PartialEq, Message)]
pub(super) struct StateKey {
    #[prost(uint32, tag = "1")]
    pub(super) version: u32,
    /// 1: settings; 2: a partition's state; 3: the incarnation of a topic
    /// the group's state refers to (value: 8 bytes, big-endian).
    #[prost(uint32, tag = "2")]
    pub(super) kind: u32,
    #[prost(string, tag = "3")]
    pub(super) group: String,
    #[prost(string, tag = "4")]
    pub(super) topic: String,
    #[prost(int32, tag = "5")]
    pub(super) partition: i32,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct SettingsValue {
    #[prost(int64, tag = "1")]
    pub(super) lock_timeout_ms: i64,
    #[prost(uint32, tag = "2")]
    pub(super) max_deliveries: u32,
    #[prost(string, optional, tag = "3")]
    pub(super) dead_letter_topic: Option<String>,
    #[prost(bool, tag = "4")]
    pub(super) key_ordered: bool,
    #[prost(int64, tag = "5")]
    pub(super) session_timeout_ms: i64,
    #[prost(bool, tag = "6")]
    pub(super) start_at_latest: bool,
}

/// A change to one partition's state, or (with `snapshot`) all of it.
#[derive(Clone, PartialEq, Message)]
pub(super) struct PartitionValue {
    #[prost(int64, optional, tag = "1")]
    pub(super) start: Option<i64>,
    #[prost(int64, repeated, tag = "2")]
    pub(super) delivered_offsets: Vec<i64>,
    #[prost(uint32, repeated, tag = "3")]
    pub(super) delivered_counts: Vec<u32>,
    #[prost(int64, repeated, tag = "4")]
    pub(super) finished_offsets: Vec<i64>,
    #[prost(uint32, repeated, tag = "5")]
    pub(super) finished_kinds: Vec<u32>,
    #[prost(bool, tag = "6")]
    pub(super) snapshot: bool,
    #[prost(int64, tag = "7")]
    pub(super) accepted: i64,
    #[prost(int64, tag = "8")]
    pub(super) rejected: i64,
    #[prost(int64, tag = "9")]
    pub(super) dead_lettered: i64,
}

pub(super) fn settings_value(s: &Settings) -> SettingsValue {
    SettingsValue {
        lock_timeout_ms: s.lock_timeout_ms,
        max_deliveries: s.max_deliveries,
        dead_letter_topic: s.dead_letter_topic.clone(),
        key_ordered: s.key_ordered,
        session_timeout_ms: s.session_timeout_ms,
        start_at_latest: s.start_at_latest,
    }
}

pub(super) fn key(kind: u32, group: &str, topic: &str, partition: i32) -> Bytes {
    Bytes::from(
        StateKey {
            version: 1,
            kind,
            group: group.into(),
            topic: topic.into(),
            partition,
        }
        .encode_to_vec(),
    )
}

/// A partition-state value holding these delivery counts and finished
/// offsets (the other fields for the caller to set).
pub(super) fn partition_value(
    delivered: Vec<(i64, u32)>,
    finished: Vec<(i64, Finished)>,
) -> PartitionValue {
    let (delivered_offsets, delivered_counts) = delivered.into_iter().unzip();
    let (finished_offsets, kinds): (Vec<i64>, Vec<Finished>) = finished.into_iter().unzip();
    PartitionValue {
        delivered_offsets,
        delivered_counts,
        finished_offsets,
        finished_kinds: kinds.into_iter().map(|k| k as u32).collect(),
        ..Default::default()
    }
}

/// The record of one partition's state change.
pub(super) fn partition_record(
    group: &str,
    topic: &str,
    partition: i32,
    v: PartitionValue,
) -> NewRecord {
    NewRecord {
        key: Some(key(2, group, topic, partition)),
        value: Some(Bytes::from(v.encode_to_vec())),
        ..NewRecord::default()
    }
}

/// The record naming the incarnation of `topic` that `group`'s state
/// refers to.
pub(super) fn incarnation_record(group: &str, topic: &str, incarnation: u64) -> NewRecord {
    NewRecord {
        key: Some(key(3, group, topic, 0)),
        value: Some(Bytes::copy_from_slice(&incarnation.to_be_bytes())),
        ..NewRecord::default()
    }
}

/// The record of the settings of `group`.
pub(super) fn settings_record(group: &str, s: &Settings) -> NewRecord {
    NewRecord {
        key: Some(key(1, group, "", 0)),
        value: Some(Bytes::from(settings_value(s).encode_to_vec())),
        ..NewRecord::default()
    }
}

/// The record deleting `group` (a settings key without a value).
pub(super) fn group_tombstone(group: &str) -> NewRecord {
    NewRecord {
        key: Some(key(1, group, "", 0)),
        value: None,
        ..NewRecord::default()
    }
}

/// Every record of `group`'s state (a snapshot of it).
pub(super) fn group_records(name: &str, g: &ShareGroup, out: &mut Vec<NewRecord>) {
    out.push(settings_record(name, &g.settings));
    for (topic, inc) in &g.incarnations {
        out.push(incarnation_record(name, topic, *inc));
    }
    for ((topic, partition), p) in &g.partitions {
        let (start, delivered, finished) = ShareGroup::snapshot_of(p);
        out.push(partition_record(
            name,
            topic,
            *partition,
            PartitionValue {
                start: Some(start),
                snapshot: true,
                accepted: p.accepted,
                rejected: p.rejected,
                dead_lettered: p.dead_lettered,
                ..partition_value(delivered, finished)
            },
        ));
    }
}

/// The groups of one partition of `__share_group_state` (a shard).
#[derive(Debug, Default)]
pub(super) struct QueueShard {
    pub(super) groups: HashMap<String, ShareGroup>,
    /// No group's [`ShareGroup::due`] is before this: expiry skips the
    /// shard until then.
    pub(super) next_due: i64,
}

impl Journaled for QueueShard {
    fn replay(&mut self, k: Option<&[u8]>, v: Option<&[u8]>) -> Result<(), String> {
        let k = StateKey::decode(k.ok_or("a record without a key")?).map_err(|e| e.to_string())?;
        let Some(v) = v else {
            // A settings key without a value: the group was deleted.
            if k.kind == 1 {
                self.groups.remove(&k.group);
                return Ok(());
            }
            return Err(format!("kind {} without a value", k.kind));
        };
        let g = self.groups.entry(k.group).or_default();
        match k.kind {
            1 => {
                let s = SettingsValue::decode(v).map_err(|e| e.to_string())?;
                g.settings = Settings {
                    lock_timeout_ms: s.lock_timeout_ms,
                    max_deliveries: s.max_deliveries,
                    dead_letter_topic: s.dead_letter_topic,
                    key_ordered: s.key_ordered,
                    session_timeout_ms: s.session_timeout_ms,
                    start_at_latest: s.start_at_latest,
                };
            }
            2 => {
                let p = PartitionValue::decode(v).map_err(|e| e.to_string())?;
                let delivered: Vec<(i64, u32)> = p
                    .delivered_offsets
                    .iter()
                    .copied()
                    .zip(p.delivered_counts.iter().copied())
                    .collect();
                let finished: Vec<(i64, Finished)> = p
                    .finished_offsets
                    .iter()
                    .copied()
                    .zip(
                        p.finished_kinds
                            .iter()
                            .filter_map(|&f| Finished::from_u32(f)),
                    )
                    .collect();
                let tp = (Arc::<str>::from(k.topic), k.partition);
                g.apply(tp.clone(), p.start, &delivered, &finished);
                if p.snapshot {
                    if let Some(part) = g.partitions.get_mut(&tp) {
                        part.accepted = p.accepted;
                        part.rejected = p.rejected;
                        part.dead_lettered = p.dead_lettered;
                    }
                }
            }
            3 => {
                let inc = u64::from_be_bytes(
                    <[u8; 8]>::try_from(v).map_err(|_| "an incarnation is 8 bytes")?,
                );
                let topic: Arc<str> = Arc::from(k.topic);
                // A new incarnation: the state recorded before it is of
                // the earlier topic of that name.
                if g.incarnations.get(&topic).is_some_and(|&old| old != inc) {
                    g.reset_topic(&topic);
                }
                g.incarnations.insert(topic, inc);
            }
            kind => return Err(format!("unknown kind {kind}")),
        }
        Ok(())
    }

    fn snapshot(&self) -> Vec<NewRecord> {
        let mut out = Vec::new();
        for (name, g) in &self.groups {
            group_records(name, g, &mut out);
        }
        out
    }
}
