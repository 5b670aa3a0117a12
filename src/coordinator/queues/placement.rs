//! Where a queue starts reading a topic: a topic's incarnation (a topic
//! deleted and created again starts afresh) and the placement of its
//! partitions, without I/O under the shard lock.

use std::collections::HashMap;
use std::sync::Arc;

use super::records::incarnation_record;
use super::Queues;
use crate::broker::NewRecord;
use crate::coordinator::share::{Delta, Effects, ShareGroup};

impl Queues {
    /// Compares the incarnation of `topic` the group's state refers to
    /// with the topic's: a topic deleted and created again under the same
    /// name starts afresh (its offsets are other records now). Returns the
    /// record to persist, if anything changed.
    pub(super) fn check_incarnation(
        g: &mut ShareGroup,
        group: &str,
        topic: &Arc<str>,
        incarnation: u64,
    ) -> Option<NewRecord> {
        match g.incarnations.get(topic) {
            Some(&known) if known == incarnation => return None,
            Some(_) => {
                tracing::warn!(
                    group,
                    topic = %topic,
                    "the topic was deleted and created again: the queue starts afresh on it"
                );
                metrics::counter!("sluice_queue_topic_resets_total", "topic" => topic.to_string())
                    .increment(1);
                g.reset_topic(topic);
            }
            // State from before incarnations were recorded: adopt.
            None => {}
        }
        g.incarnations.insert(topic.clone(), incarnation);
        Some(incarnation_record(group, topic, incarnation))
    }

    /// Places the group in partitions of `topic` it has not read before:
    /// at offset 0 (the first read moves up to where the log starts), or,
    /// with `start_at_latest`, at the log end given in `ends` (looked up
    /// outside the shard lock; a partition without one stays unplaced until
    /// the next call). No I/O: a topic with many partitions costs no
    /// offset lookups under the lock.
    pub(super) fn place(
        g: &mut ShareGroup,
        topic: &Arc<str>,
        partitions: i32,
        ends: &HashMap<i32, i64>,
        fx: &mut Effects,
    ) {
        for p in 0..partitions {
            let tp = (topic.clone(), p);
            if g.partitions.get(&tp).is_some_and(|p| p.placed) {
                continue;
            }
            let o = if g.settings.start_at_latest {
                match ends.get(&p) {
                    Some(&end) => end,
                    None => continue,
                }
            } else {
                0
            };
            g.apply(tp, Some(o), &[], &[]);
            fx.deltas.push(Delta {
                topic: topic.to_string(),
                partition: p,
                start: Some(o),
                ..Default::default()
            });
        }
    }

    /// Partitions of `topic` (of `count`) the group has not placed.
    pub(super) fn unplaced(g: &ShareGroup, topic: &Arc<str>, count: i32) -> Vec<i32> {
        (0..count)
            .filter(|&p| {
                !g.partitions
                    .get(&(topic.clone(), p))
                    .is_some_and(|p| p.placed)
            })
            .collect()
    }

    /// The log ends of `partitions` (empty on failure: they stay unplaced).
    pub(super) fn log_ends(&self, topic: &str, partitions: &[i32]) -> HashMap<i32, i64> {
        if partitions.is_empty() {
            return HashMap::new();
        }
        match self.broker.offsets_anywhere(topic, partitions, None) {
            Ok(o) => o.iter().map(|o| (o.partition, o.latest)).collect(),
            Err(e) => {
                tracing::warn!(topic, error = %e, "work-queue placement lookup failed");
                HashMap::new()
            }
        }
    }
}
