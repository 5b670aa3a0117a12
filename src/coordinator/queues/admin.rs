//! The work queues' admin surface: describe, list, delete, reset the
//! cursor, change settings while running, and the numbers and label sets
//! for metrics.

use std::collections::BTreeSet;

use super::records::{group_tombstone, settings_record, QueueShard};
use super::Queues;
use crate::coordinator::share::{Delta, Effects, Settings, ShareGroup};
use crate::coordinator::{CoordinatorError, ResetTo, Result};

/// A partition as described.
#[derive(Debug, Clone)]
pub struct QueuePartitionInfo {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Every offset below is finished.
    pub start: i64,
    /// Log end.
    pub high_watermark: i64,
    /// Locked now.
    pub in_flight: i64,
    /// Waiting (read or not yet read).
    pub available: i64,
    /// Totals.
    pub accepted: i64,
    /// Totals.
    pub rejected: i64,
    /// Totals.
    pub dead_lettered: i64,
}

/// A member as described.
#[derive(Debug, Clone)]
pub struct QueueMemberInfo {
    /// Id.
    pub member_id: String,
    /// Topic.
    pub topic: String,
    /// Prefetch.
    pub prefetch: u32,
    /// Held now.
    pub held: u32,
    /// Stream or Pull.
    pub streaming: bool,
}

/// A queue group as described.
#[derive(Debug, Clone)]
pub struct QueueDescription {
    /// Settings in force.
    pub settings: Settings,
    /// Per partition.
    pub partitions: Vec<QueuePartitionInfo>,
    /// Members.
    pub members: Vec<QueueMemberInfo>,
}

/// A queue in a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueListing {
    /// Share group.
    pub group: String,
    /// Topics it has read.
    pub topics: Vec<String>,
    /// Connected workers.
    pub members: usize,
    /// Locked to workers now.
    pub in_flight: i64,
    /// Waiting for a worker (read, or still in the log).
    pub available: i64,
    /// Given up on, since the queue began.
    pub dead_lettered: i64,
    /// Age of the oldest unfinished record (by its timestamp), ms.
    pub oldest_unacked_age_ms: i64,
}

/// A partition's position after a reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueReset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Start offset before (`None`: the queue had not read it).
    pub previous: Option<i64>,
    /// Start offset now.
    pub offset: i64,
}

/// Distinct (group, topic) label pairs the queue metrics use at most;
/// beyond, counts go to `group="_other"` (Prometheus series stay bounded).
pub const MAX_METRIC_QUEUES: usize = 1000;

/// The metric labels of `group` reading `topic` (see [`MAX_METRIC_QUEUES`]).
pub fn metric_labels(group: &str, topic: &str) -> [(&'static str, String); 2] {
    static SEEN: std::sync::OnceLock<
        parking_lot::Mutex<std::collections::HashSet<(String, String)>>,
    > = std::sync::OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    // Held only for a set lookup or insert.
    let mut seen = seen.lock();
    let key = (group.to_string(), topic.to_string());
    let group = if seen.contains(&key) || seen.len() < MAX_METRIC_QUEUES {
        seen.insert(key);
        group.to_string()
    } else {
        "_other".to_string()
    };
    [("group", group), ("topic", topic.to_string())]
}

impl Queues {
    /// Describes a group.
    pub fn describe(&self, group: &str) -> Result<QueueDescription> {
        self.shard(group).peek(|st| self.describe_in(st, group))
    }

    fn describe_in(&self, st: &QueueShard, group: &str) -> Result<QueueDescription> {
        let g = st
            .groups
            .get(group)
            .ok_or_else(|| CoordinatorError::GroupNotFound {
                group: group.into(),
            })?;
        let mut partitions = Vec::new();
        for ((t, p), part) in &g.partitions {
            // Partitions of a deleted topic are gone, whatever the state
            // says (it is reset if the topic comes back).
            let Some(current) = self.broker.topic(t).ok().map(|t| t.incarnation()) else {
                continue;
            };
            if g.incarnations.get(t).is_some_and(|&known| known != current) {
                continue;
            }
            let hw = self
                .broker
                .list_offsets(t, &[*p], None)
                .ok()
                .and_then(|o| o.first().map(|o| o.latest))
                .unwrap_or(part.cursor);
            partitions.push(QueuePartitionInfo {
                topic: t.to_string(),
                partition: *p,
                start: part.start,
                high_watermark: hw,
                in_flight: part.in_flight() as i64,
                available: part.waiting() as i64 + (hw - part.cursor).max(0),
                accepted: part.accepted,
                rejected: part.rejected,
                dead_lettered: part.dead_lettered,
            });
        }
        let mut members: Vec<QueueMemberInfo> = g
            .members
            .iter()
            .map(|(id, m)| QueueMemberInfo {
                member_id: id.to_string(),
                topic: m.topic.to_string(),
                prefetch: m.prefetch,
                held: m.held,
                streaming: m.session_deadline.is_none(),
            })
            .collect();
        members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        Ok(QueueDescription {
            settings: g.settings.clone(),
            partitions,
            members,
        })
    }

    /// Groups and members, for metrics.
    pub fn stats(&self) -> (usize, usize) {
        let (mut groups, mut members) = (0, 0);
        for shard in &self.shards {
            shard.peek(|st| {
                groups += st.groups.len();
                members += st.groups.values().map(|g| g.members.len()).sum::<usize>();
            });
        }
        (groups, members)
    }

    /// Every queue with its totals, sorted by name. Blocking (reads each
    /// partition's end offset).
    pub fn list(&self) -> Vec<QueueListing> {
        let now_wall = (self.clock)();
        let mut out: Vec<QueueListing> = Vec::new();
        for shard in &self.shards {
            shard.peek(|st| {
                out.extend(
                    st.groups
                        .iter()
                        .map(|(name, g)| self.listing(name, g, now_wall)),
                )
            });
        }
        out.sort_by(|a, b| a.group.cmp(&b.group));
        out
    }

    fn listing(&self, name: &str, g: &ShareGroup, now_wall: i64) -> QueueListing {
        let mut l = QueueListing {
            group: name.to_string(),
            members: g.members.len(),
            ..Default::default()
        };
        let mut topics = BTreeSet::new();
        let mut oldest: Option<i64> = None;
        for ((t, p), part) in &g.partitions {
            let Ok(topic) = self.broker.topic(t) else {
                continue;
            };
            topics.insert(t.to_string());
            let hw = topic
                .partition(*p)
                .ok()
                .and_then(|_| self.broker.offsets_anywhere(t, &[*p], None).ok())
                .and_then(|o| o.first().map(|o| o.latest))
                .unwrap_or(part.cursor);
            l.in_flight += part.in_flight() as i64;
            l.available += part.waiting() as i64 + (hw - part.cursor).max(0);
            l.dead_lettered += part.dead_lettered;
            if let Some(ts) = part.oldest_unfinished_timestamp() {
                oldest = Some(oldest.map_or(ts, |o| o.min(ts)));
            }
        }
        l.topics = topics.into_iter().collect();
        l.oldest_unacked_age_ms = oldest.map_or(0, |ts| now_wall.saturating_sub(ts).max(0));
        l
    }

    /// Deletes a queue's state; refused while workers are connected.
    pub fn delete(&self, group: &str) -> Result<()> {
        let mut st = self.lock(group)?;
        let g = Self::group_mut(&mut st, group)?;
        if !g.members.is_empty() {
            return Err(CoordinatorError::GroupNotEmpty {
                group: group.into(),
                members: g.members.len(),
                action: "delete",
            });
        }
        // A settings key without a value deletes the group on replay.
        Self::append(&mut st, vec![group_tombstone(group)])?;
        st.groups.remove(group);
        tracing::info!(group, "work queue deleted");
        Ok(())
    }

    /// Moves the queue's cursor in `topic`'s `partitions` (all if empty):
    /// everything before the new position counts as done. Refused while
    /// workers are connected. Blocking (reads offsets).
    pub fn reset(
        &self,
        group: &str,
        topic: &str,
        partitions: &[i32],
        to: ResetTo,
        dry_run: bool,
    ) -> Result<Vec<QueueReset>> {
        let timestamp = match to {
            ResetTo::Timestamp(t) => Some(t),
            _ => None,
        };
        let t = self.broker.topic(topic)?;
        let offsets = self.broker.offsets_anywhere(topic, partitions, timestamp)?;
        let mut st = self.lock(group)?;
        let g = Self::group_mut(&mut st, group)?;
        if !g.members.is_empty() {
            return Err(CoordinatorError::GroupNotEmpty {
                group: group.into(),
                members: g.members.len(),
                action: "reset",
            });
        }
        let topic_arc: std::sync::Arc<str> = std::sync::Arc::from(topic);
        let mut records = Vec::new();
        if !dry_run {
            if let Some(r) = Self::check_incarnation(g, group, &topic_arc, t.incarnation()) {
                records.push(r);
            }
        }
        let mut out = Vec::new();
        let mut fx = Effects::default();
        for o in offsets {
            let offset = to.offset_in(&o);
            let tp = (topic_arc.clone(), o.partition);
            let previous = g.partitions.get(&tp).map(|p| p.start);
            if !dry_run {
                g.apply(tp, Some(offset), &[], &[]);
                fx.deltas.push(Delta {
                    topic: topic.to_string(),
                    partition: o.partition,
                    start: Some(offset),
                    ..Default::default()
                });
            }
            out.push(QueueReset {
                topic: topic.to_string(),
                partition: o.partition,
                previous,
                offset,
            });
        }
        if !dry_run {
            if !records.is_empty() {
                Self::append(&mut st, records)?;
            }
            self.effects(&mut st, group, fx)?;
            tracing::info!(group, topic, partitions = out.len(), "work queue reset");
        }
        Ok(out)
    }

    /// Changes a queue's settings while it runs; returns those in force.
    pub fn alter(&self, group: &str, update: super::SettingsUpdate) -> Result<Settings> {
        let mut st = self.lock(group)?;
        let g = Self::group_mut(&mut st, group)?;
        let mut s = g.settings.clone();
        self.apply_settings(&mut s, update)?;
        if s != g.settings {
            g.settings = s.clone();
            Self::append(&mut st, vec![settings_record(group, &s)])?;
            tracing::info!(group, "work queue settings changed");
        }
        Ok(s)
    }
}
