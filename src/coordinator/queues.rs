//! Work queues: the shell around [`super::share`]. It reads records from
//! the broker into each group's window, persists every change to the
//! internal topic [`SHARE_STATE_TOPIC`] before answering, appends records
//! given up on to dead-letter topics, expires locks and sessions on a
//! timer, and wakes waiting workers when records arrive or come back.
//!
//! State is replayed from the topic on start. After
//! `SNAPSHOT_EVERY` records the shell rewrites every group's state and
//! deletes the segments before it, so the topic stays bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;

use super::error::{CoordinatorError, Result};
use super::share::{
    AckKind, AckRefusal, Delivery, Effects, Finished, Partition, Settings, ShareGroup,
};
use super::{resume_after_failure, RETRY_AFTER_FAILURE};
use crate::broker::{
    is_internal_topic, Acks, Broker, Header, NewRecord, ProduceRequest, TopicConfig,
};
use crate::storage::Clock;

mod admin;
mod records;
pub use admin::{
    metric_labels, QueueDescription, QueueListing, QueueMemberInfo, QueuePartitionInfo, QueueReset,
    MAX_METRIC_QUEUES,
};
use records::{
    incarnation_record, key, partition_record, partition_value, settings_value, PartitionValue,
    SettingsValue, StateKey,
};

/// Internal topic of work-queue state.
pub const SHARE_STATE_TOPIC: &str = "__share_group_state";
/// Records after which the state topic is rewritten and trimmed.
const SNAPSHOT_EVERY: u64 = 200_000;
/// Longest Pull wait, ms.
pub const MAX_PULL_WAIT_MS: i32 = 300_000;
/// Largest prefetch.
pub const MAX_PREFETCH: i32 = 100_000;

/// A settings change asked for (unset fields keep their value).
#[derive(Debug, Clone, Default)]
pub struct SettingsUpdate {
    /// Lock time, ms.
    pub lock_timeout_ms: Option<i32>,
    /// Deliveries before giving up.
    pub max_deliveries: Option<i32>,
    /// Dead-letter topic ("" for none).
    pub dead_letter_topic: Option<String>,
    /// Key-ordered delivery.
    pub key_ordered: Option<bool>,
    /// Pull session timeout, ms.
    pub session_timeout_ms: Option<i32>,
    /// New partitions start at the end.
    pub start_at_latest: Option<bool>,
}

/// One acknowledgement.
#[derive(Debug, Clone)]
pub struct AckRequest {
    /// Receipt handle.
    pub delivery_id: u64,
    /// What to do.
    pub kind: AckKind,
    /// Reason kept with the record.
    pub reason: Option<String>,
}

/// The outcome of a batch of acknowledgements.
#[derive(Debug, Clone, Default)]
pub struct AckOutcome {
    /// Ids that took effect.
    pub accepted: Vec<u64>,
    /// Refused ids and why.
    pub refused: Vec<(u64, AckRefusal)>,
}

#[derive(Default)]
struct State {
    groups: HashMap<String, ShareGroup>,
    next_delivery_id: u64,
    since_snapshot: u64,
    /// A failed append: the in-memory state may be ahead of the log, so
    /// calls fail until the state is replayed from the log again (tried at
    /// most once per [`RETRY_AFTER_FAILURE`], e.g. once a full disk has room).
    failed: Option<(String, Instant)>,
}

/// The work-queue coordinator.
pub struct Queues {
    broker: Arc<Broker>,
    /// Wall time: shown to workers as lock deadlines, and the base of
    /// delivery ids.
    clock: Clock,
    /// Monotonic time for locks, sessions and delays, so that a step of
    /// the wall clock never expires every lock at once.
    timer: Clock,
    /// All groups. Held for a change *and* the append that records it, so
    /// the topic's order is the order of the changes; never across
    /// `.await`. Calls run on blocking threads (`spawn_blocking`): an
    /// append may wait for the disk, and a snapshot syncs the log.
    state: Mutex<State>,
    /// Woken when records come back (release, expiry) or prefetch frees up.
    /// Per group: woken when records come back or prefetch frees up, so
    /// only that group's workers wake. Locked only to look up or add one.
    wakers: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    members: AtomicU64,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues").finish_non_exhaustive()
    }
}

fn check_name(what: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.len() > 249 {
        return Err(CoordinatorError::InvalidArgument(format!(
            "{what} must be 1 to 249 bytes, got {}",
            v.len()
        )));
    }
    Ok(())
}

impl Queues {
    /// Completes once the broker begins shutting down (streams and long
    /// polls end then).
    pub async fn shutting_down(&self) {
        self.broker.shutting_down().await
    }

    /// Opens the coordinator: creates the state topic if needed and
    /// replays it. Blocking.
    pub fn open(broker: Arc<Broker>, clock: Clock) -> Result<Arc<Self>> {
        broker.ensure_internal_topic(
            SHARE_STATE_TOPIC,
            1,
            TopicConfig {
                retention_ms: Some(-1),
                segment_bytes: Some(64 * 1024 * 1024),
                ..TopicConfig::default()
            },
        )?;
        // Unique across restarts: a worker's old receipt handle never
        // matches a new delivery.
        let st = Self::load(&broker, (clock)().max(0) as u64 * 1_000_000)?;
        Ok(Arc::new(Self {
            broker,
            clock,
            timer: crate::storage::monotonic_clock(),
            state: Mutex::new(st),
            wakers: Default::default(),
            members: AtomicU64::new(0),
        }))
    }

    /// The state as the log records it; delivery ids continue from
    /// `next_delivery_id`.
    fn load(broker: &Broker, next_delivery_id: u64) -> Result<State> {
        let mut st = State {
            next_delivery_id,
            ..State::default()
        };
        let mut bad = 0u64;
        broker.replay_internal(SHARE_STATE_TOPIC, 0, |r| {
            st.since_snapshot += 1;
            if Self::replay(&mut st, r.key.as_deref(), r.value.as_deref()).is_err() {
                bad += 1;
            }
        })?;
        if bad > 0 {
            tracing::warn!(
                skipped = bad,
                "work-queue state records skipped during replay"
            );
        }
        Ok(st)
    }

    fn replay(st: &mut State, k: Option<&[u8]>, v: Option<&[u8]>) -> std::result::Result<(), ()> {
        let k = StateKey::decode(k.ok_or(())?).map_err(|_| ())?;
        let Some(v) = v else {
            // A settings key without a value: the group was deleted.
            if k.kind == 1 {
                st.groups.remove(&k.group);
                return Ok(());
            }
            return Err(());
        };
        let g = st.groups.entry(k.group).or_default();
        match k.kind {
            1 => {
                let s = SettingsValue::decode(v).map_err(|_| ())?;
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
                let p = PartitionValue::decode(v).map_err(|_| ())?;
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
                let inc = u64::from_be_bytes(<[u8; 8]>::try_from(v).map_err(|_| ())?);
                let topic: Arc<str> = Arc::from(k.topic);
                // A new incarnation: the state recorded before it is of
                // the earlier topic of that name.
                if g.incarnations.get(&topic).is_some_and(|&old| old != inc) {
                    g.reset_topic(&topic);
                }
                g.incarnations.insert(topic, inc);
            }
            _ => return Err(()),
        }
        Ok(())
    }

    /// Runs lock and session expiry every 100 ms until the broker shuts
    /// down. Call once, inside a tokio runtime.
    pub fn start(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(q) = weak.upgrade() else { return };
                if q.broker_closing() {
                    return;
                }
                // Expiry appends to the state log: off the runtime.
                let _ = tokio::task::spawn_blocking(move || q.tick()).await;
            }
        });
    }

    fn broker_closing(&self) -> bool {
        self.broker.is_shutting_down()
    }

    fn now(&self) -> i64 {
        (self.timer)()
    }

    /// A monotonic deadline as wall-clock ms, to show a worker.
    fn wall_deadline(&self, deadline: i64) -> i64 {
        (self.clock)().saturating_add(deadline - self.now())
    }

    /// Expires locks and sessions now.
    pub fn tick(&self) {
        let now = self.now();
        let mut st = self.state.lock();
        if self.check(&mut st).is_err() {
            return;
        }
        let mut released = Vec::new();
        let names: Vec<String> = st.groups.keys().cloned().collect();
        for name in names {
            let mut fx = Effects::default();
            if let Some(g) = st.groups.get_mut(&name) {
                g.tick(now, &mut fx);
            }
            for (topic, n) in std::mem::take(&mut fx.expired) {
                metrics::counter!(
                    "sluice_queue_lock_expiries_total",
                    &metric_labels(&name, &topic)
                )
                .increment(n);
            }
            if fx.released || !fx.deltas.is_empty() {
                released.push(name.clone());
            }
            if let Err(e) = self.effects(&mut st, &name, fx) {
                tracing::error!(error = %e, "work-queue expiry could not be recorded");
                return;
            }
        }
        drop(st);
        for name in released {
            self.wake(&name);
        }
    }

    /// This group's waker (see [`Queues::wake`]).
    pub fn waker(&self, group: &str) -> Arc<tokio::sync::Notify> {
        self.wakers
            .lock()
            .entry(group.to_string())
            .or_default()
            .clone()
    }

    /// Wakes the workers of `group` waiting for records.
    fn wake(&self, group: &str) {
        let w = self.wakers.lock().get(group).cloned();
        if let Some(w) = w {
            w.notify_waiters();
        }
    }

    /// Appends dead letters, then persists deltas (lock held). A record
    /// whose dead letter could not be written is not finished: it waits
    /// and its dead letter is tried again (never delivered again).
    fn effects(&self, st: &mut State, group: &str, mut fx: Effects) -> Result<()> {
        let dead_letters = std::mem::take(&mut fx.dead_letters);
        let retry_at = self.now() + RETRY_AFTER_FAILURE.as_millis() as i64;
        for d in &dead_letters {
            let mut headers = d.record.headers.clone();
            for (k, v) in [
                ("sluice-dlq-topic", d.topic.to_string()),
                ("sluice-dlq-partition", d.partition.to_string()),
                ("sluice-dlq-offset", d.record.offset.to_string()),
                ("sluice-dlq-delivery-count", d.deliveries.to_string()),
                ("sluice-dlq-reason", d.reason.clone()),
            ] {
                headers.push(Header {
                    key: k.into(),
                    value: Some(Bytes::from(v)),
                });
            }
            let r = self.broker.append(ProduceRequest {
                topic: d.to.clone(),
                partition: None,
                records: vec![NewRecord {
                    key: d.record.key.clone(),
                    value: d.record.value.clone(),
                    headers,
                    timestamp: None,
                    partition: None,
                }],
                acks: Acks::Leader,
                producer: None,
            });
            let failure = match r.map(|a| a.result()) {
                Ok(res) if res.failures.is_empty() => None,
                Ok(res) => Some(res.failures[0].error.to_string()),
                Err(e) => Some(e.to_string()),
            };
            let Some(g) = st.groups.get_mut(group) else {
                continue;
            };
            match failure {
                None => {
                    metrics::counter!(
                        "sluice_queue_dead_letters_total",
                        &metric_labels(group, &d.topic)
                    )
                    .increment(1);
                    g.dead_letter_written(d, &mut fx)
                }
                Some(e) => {
                    tracing::error!(topic = %d.to, source = %d.topic, partition = d.partition, offset = d.record.offset, error = %e, "dead-letter append failed; the record stays unfinished and is tried again");
                    metrics::counter!("sluice_queue_dead_letter_failures_total").increment(1);
                    g.dead_letter_failed(d, retry_at);
                }
            }
        }
        if fx.deltas.is_empty() {
            return Ok(());
        }
        let records = fx
            .deltas
            .into_iter()
            .map(|d| {
                partition_record(
                    group,
                    &d.topic,
                    d.partition,
                    PartitionValue {
                        start: d.start,
                        ..partition_value(d.delivered, d.finished)
                    },
                )
            })
            .collect();
        self.append(st, records)?;
        if st.since_snapshot > SNAPSHOT_EVERY {
            self.snapshot(st)?;
        }
        Ok(())
    }

    fn append(&self, st: &mut State, records: Vec<NewRecord>) -> Result<i64> {
        let n = records.len() as u64;
        let r = self
            .broker
            .append_internal(ProduceRequest {
                topic: SHARE_STATE_TOPIC.into(),
                partition: Some(0),
                records,
                acks: Acks::Leader,
                producer: None,
            })
            .map(|a| a.result());
        let failure = match r {
            Ok(res) if res.failures.is_empty() => {
                st.since_snapshot += n;
                return Ok(res.partitions.first().map_or(-1, |p| p.base_offset));
            }
            Ok(res) => res.failures[0].error.client_message(),
            Err(e) => e.client_message(),
        };
        tracing::error!(error = %failure, "work-queue state append failed; queues refuse calls until the state can be replayed from the log");
        st.failed = Some((failure.clone(), Instant::now() + RETRY_AFTER_FAILURE));
        Err(CoordinatorError::Failed {
            partition: 0,
            reason: failure,
        })
    }

    /// Rewrites every group's state and deletes the segments before it.
    fn snapshot(&self, st: &mut State) -> Result<()> {
        let mut records = Vec::new();
        for (name, g) in &st.groups {
            records.push(NewRecord {
                key: Some(key(1, name, "", 0)),
                value: Some(Bytes::from(settings_value(&g.settings).encode_to_vec())),
                ..NewRecord::default()
            });
            for (topic, inc) in &g.incarnations {
                records.push(incarnation_record(name, topic, *inc));
            }
            for ((topic, partition), p) in &g.partitions {
                let (start, delivered, finished) = ShareGroup::snapshot_of(p);
                records.push(partition_record(
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
        let mut first = None;
        for chunk in records.chunks(1000) {
            let base = self.append(st, chunk.to_vec())?;
            first.get_or_insert(base);
        }
        st.since_snapshot = 0;
        if let Some(first) = first {
            self.broker
                .delete_internal_before(SHARE_STATE_TOPIC, 0, first)?;
        }
        Ok(())
    }

    /// Fails while a failed append has left memory possibly ahead of the
    /// log; once the retry time has come, replays the log (what it holds is
    /// the truth) and goes on. Members and their locks are not in the log:
    /// workers join again, and what they held is delivered again.
    fn check(&self, st: &mut State) -> Result<()> {
        let next_delivery_id = st.next_delivery_id;
        let replay = || Self::load(&self.broker, next_delivery_id);
        match resume_after_failure(&mut st.failed, replay) {
            Ok(None) => Ok(()),
            Ok(Some(fresh)) => {
                tracing::info!(
                    "work-queue state replayed from the log after a failed append; queues resume"
                );
                *st = fresh;
                Ok(())
            }
            Err(reason) => Err(CoordinatorError::Failed {
                partition: 0,
                reason,
            }),
        }
    }

    /// Adds (or refreshes) a member of `group` consuming `topic`, applying
    /// `settings` to the group. Returns the member id (made up if empty).
    pub fn join(
        &self,
        group: &str,
        topic: &str,
        member: &str,
        prefetch: i32,
        settings: Option<SettingsUpdate>,
        stream: bool,
    ) -> Result<Arc<str>> {
        check_name("group", group)?;
        if is_internal_topic(topic) {
            return Err(CoordinatorError::InvalidArgument(format!(
                "topic '{topic}' is internal to the broker and cannot be consumed as a queue"
            )));
        }
        if !(1..=MAX_PREFETCH).contains(&prefetch) {
            return Err(CoordinatorError::InvalidArgument(format!(
                "prefetch {prefetch} is out of range [1, {MAX_PREFETCH}]"
            )));
        }
        let t = self.broker.topic(topic)?;
        let partitions = t.partitions().len() as i32;
        let member: Arc<str> = if member.is_empty() {
            let n = self.members.fetch_add(1, Ordering::Relaxed);
            Arc::from(format!("{group}-{}-{n}", uuid::Uuid::new_v4().simple()))
        } else {
            check_name("member_id", member)?;
            Arc::from(member)
        };
        let now = self.now();
        let mut st = self.state.lock();
        self.check(&mut st)?;
        let g = st.groups.entry(group.to_string()).or_default();
        let mut changed = None;
        if let Some(u) = settings {
            let mut s = g.settings.clone();
            self.apply_settings(&mut s, u)?;
            if s != g.settings {
                g.settings = s.clone();
                changed = Some(s);
            }
        }
        let topic_arc: Arc<str> = Arc::from(topic);
        let mut fx = Effects::default();
        if let Some(r) = Self::check_incarnation(g, group, &topic_arc, t.incarnation()) {
            self.append(&mut st, vec![r])?;
        }
        let g = st.groups.entry(group.to_string()).or_default();
        self.place(g, &topic_arc, partitions, &mut fx)?;
        g.join(member.clone(), topic_arc, prefetch as u32, stream, now);
        if let Some(s) = changed {
            self.append(
                &mut st,
                vec![NewRecord {
                    key: Some(key(1, group, "", 0)),
                    value: Some(Bytes::from(settings_value(&s).encode_to_vec())),
                    ..NewRecord::default()
                }],
            )?;
        }
        self.effects(&mut st, group, fx)?;
        Ok(member)
    }

    /// Compares the incarnation of `topic` the group's state refers to
    /// with the topic's: a topic deleted and created again under the same
    /// name starts afresh (its offsets are other records now). Returns the
    /// record to persist, if anything changed.
    fn check_incarnation(
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

    /// Places the group in partitions of `topic` it has not read before
    /// (at their start, or their end with `start_at_latest`): at join, and
    /// when partitions are added while members consume.
    fn place(
        &self,
        g: &mut ShareGroup,
        topic: &Arc<str>,
        partitions: i32,
        fx: &mut Effects,
    ) -> Result<()> {
        for p in 0..partitions {
            let tp = (topic.clone(), p);
            if g.partitions.get(&tp).is_some_and(|p| p.placed) {
                continue;
            }
            let offsets = self.broker.list_offsets(topic, &[p], None)?;
            let o = offsets.first().map_or(0, |o| {
                if g.settings.start_at_latest {
                    o.latest
                } else {
                    o.earliest
                }
            });
            g.apply(tp, Some(o), &[], &[]);
            fx.deltas.push(super::share::Delta {
                topic: topic.to_string(),
                partition: p,
                start: Some(o),
                ..Default::default()
            });
        }
        Ok(())
    }

    fn apply_settings(&self, s: &mut Settings, u: SettingsUpdate) -> Result<()> {
        let range = |what: &str, v: i32, lo: i32, hi: i32| {
            if (lo..=hi).contains(&v) {
                Ok(i64::from(v))
            } else {
                Err(CoordinatorError::InvalidArgument(format!(
                    "{what} {v} is out of range [{lo}, {hi}]"
                )))
            }
        };
        if let Some(v) = u.lock_timeout_ms {
            s.lock_timeout_ms = range("lock_timeout_ms", v, 1000, 3_600_000)?;
        }
        if let Some(v) = u.session_timeout_ms {
            s.session_timeout_ms = range("session_timeout_ms", v, 1000, 3_600_000)?;
        }
        if let Some(v) = u.max_deliveries {
            s.max_deliveries = range("max_deliveries", v, 1, 1000)? as u32;
        }
        if let Some(v) = u.key_ordered {
            s.key_ordered = v;
        }
        if let Some(v) = u.start_at_latest {
            s.start_at_latest = v;
        }
        if let Some(t) = u.dead_letter_topic {
            if t.is_empty() {
                s.dead_letter_topic = None;
            } else {
                if is_internal_topic(&t) {
                    return Err(CoordinatorError::InvalidArgument(format!(
                        "dead_letter_topic '{t}' is internal to the broker"
                    )));
                }
                self.broker.topic(&t)?;
                s.dead_letter_topic = Some(t);
            }
        }
        Ok(())
    }

    /// Reads records into the windows of `group`'s partitions of `topic`.
    fn fill(&self, g: &mut ShareGroup, topic: &Arc<str>) {
        let mut dropped = Vec::new();
        for ((t, p), part) in g.partitions.iter_mut() {
            if t != topic {
                continue;
            }
            dropped.extend(fill_partition(&self.broker, t, *p, part));
        }
        g.forget_deliveries(dropped);
    }

    /// Up to `max` deliveries, and about `max_bytes` of record data
    /// (always at least one record), for `member` (fewer if its prefetch is
    /// nearly used up); none if nothing is available now.
    pub fn acquire(
        &self,
        group: &str,
        member: &Arc<str>,
        max: u32,
        max_bytes: usize,
    ) -> Result<Vec<Delivery>> {
        let now = self.now();
        let mut guard = self.state.lock();
        let st = &mut *guard;
        self.check(st)?;
        let g = self.group_mut(st, group)?;
        let Some(m) = g.members.get_mut(member) else {
            return Err(CoordinatorError::UnknownMember {
                group: group.into(),
                member: member.to_string(),
            });
        };
        if let Some(d) = m.session_deadline.as_mut() {
            *d = now + g.settings.session_timeout_ms;
        }
        let topic = m.topic.clone();
        // A deleted topic ends its workers (NOT_FOUND); partitions added
        // since the last call are picked up.
        let t = self.broker.topic(&topic)?;
        let count = t.partitions().len();
        let mut fx = Effects::default();
        if let Some(r) = Self::check_incarnation(g, group, &topic, t.incarnation()) {
            self.append(st, vec![r])?;
        }
        let g = self.group_mut(st, group)?;
        let known = g
            .partitions
            .range((topic.clone(), 0)..)
            .take_while(|((t, _), _)| *t == topic)
            .count();
        if known < count {
            self.place(g, &topic, count as i32, &mut fx)?;
        }
        self.fill(g, &topic);
        let mut id = st.next_delivery_id;
        let out = match st.groups.get_mut(group) {
            Some(g) => g.acquire(member, max, max_bytes, now, &mut id, &mut fx),
            None => Vec::new(),
        };
        st.next_delivery_id = id;
        self.effects(st, group, fx)?;
        if !out.is_empty() {
            metrics::counter!(
                "sluice_queue_deliveries_total",
                &metric_labels(group, &topic)
            )
            .increment(out.len() as u64);
        }
        Ok(out
            .into_iter()
            .map(|mut d| {
                d.deadline = self.wall_deadline(d.deadline);
                d
            })
            .collect())
    }

    fn group_mut<'a>(&self, st: &'a mut State, group: &str) -> Result<&'a mut ShareGroup> {
        st.groups
            .get_mut(group)
            .ok_or_else(|| CoordinatorError::GroupNotFound {
                group: group.into(),
            })
    }

    /// Applies acknowledgements from `member`.
    pub fn ack(&self, group: &str, member: &str, acks: Vec<AckRequest>) -> Result<AckOutcome> {
        let now = self.now();
        let mut st = self.state.lock();
        self.check(&mut st)?;
        let g = self.group_mut(&mut st, group)?;
        if let Some(m) = g.members.get_mut(member) {
            if let Some(d) = m.session_deadline.as_mut() {
                *d = now + g.settings.session_timeout_ms;
            }
        }
        let mut fx = Effects::default();
        let mut out = AckOutcome::default();
        let topic = g.members.get(member).map(|m| m.topic.clone());
        let mut counts = [0u64; 4];
        for a in acks {
            let kind = match a.kind {
                AckKind::Accept => 0,
                AckKind::Release { .. } => 1,
                AckKind::Reject => 2,
                AckKind::Extend => 3,
            };
            match g.ack(member, a.delivery_id, a.kind, a.reason, now, &mut fx) {
                Ok(()) => {
                    out.accepted.push(a.delivery_id);
                    counts[kind] += 1;
                }
                Err(e) => out.refused.push((a.delivery_id, e)),
            }
        }
        if let Some(topic) = topic {
            let labels = metric_labels(group, &topic);
            for (n, name) in counts.into_iter().zip([
                "sluice_queue_accepts_total",
                "sluice_queue_releases_total",
                "sluice_queue_rejects_total",
                "sluice_queue_extends_total",
            ]) {
                if n > 0 {
                    metrics::counter!(name, &labels).increment(n);
                }
            }
        }
        let wake = fx.released || !out.accepted.is_empty();
        self.effects(&mut st, group, fx)?;
        drop(st);
        if wake {
            self.wake(group);
        }
        Ok(out)
    }

    /// Removes a member; what it holds goes back to the queue.
    pub fn leave(&self, group: &str, member: &str) {
        let now = self.now();
        let mut st = self.state.lock();
        if self.check(&mut st).is_err() {
            return;
        }
        let mut fx = Effects::default();
        if let Some(g) = st.groups.get_mut(group) {
            g.leave(member, now, &mut fx);
        }
        let released = fx.released || !fx.dead_letters.is_empty();
        if let Err(e) = self.effects(&mut st, group, fx) {
            tracing::error!(error = %e, "recording a queue member's departure failed");
        }
        drop(st);
        if released {
            self.wake(group);
        }
    }

    /// The topic whose appends wake `topic`'s workers (see
    /// [`crate::broker::Topic::appended`]); `None` if it does not exist.
    pub fn topic_handle(&self, topic: &str) -> Option<Arc<crate::broker::Topic>> {
        self.broker.topic(topic).ok()
    }
}

/// Reads the next records of one partition into its window. Returns the
/// locks of records that left the log (retention, or a lost tail).
fn fill_partition(
    broker: &Broker,
    topic: &str,
    partition: i32,
    part: &mut Partition,
) -> Vec<(u64, Arc<str>)> {
    let room = part.room();
    if room == 0 {
        return Vec::new();
    }
    match broker.read_records(topic, partition, part.cursor, room as usize, 1 << 20) {
        Ok(r) => {
            part.load(r.records, r.next_offset);
            Vec::new()
        }
        Err(crate::broker::BrokerError::Storage(
            crate::storage::StorageError::OffsetOutOfRange { start, end, .. },
        )) => {
            if part.cursor > end {
                // The log is shorter than the queue's cursor (a tail lost
                // to a power failure): records appended from here on would
                // never be delivered. Go back to the log's end.
                tracing::warn!(
                    topic,
                    partition,
                    cursor = part.cursor,
                    log_end = end,
                    "work-queue cursor is past the end of the log; moving it back"
                );
                metrics::counter!("sluice_queue_cursor_resets_total", "topic" => topic.to_string())
                    .increment(1);
                part.truncate_to(end)
            } else {
                part.skip_to(start)
            }
        }
        Err(e) => {
            tracing::warn!(topic, partition, error = %e, "work-queue read failed");
            Vec::new()
        }
    }
}
