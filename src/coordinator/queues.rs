//! Work queues: the shell around [`super::share`]. It reads records from
//! the broker into each group's window, persists every change to the
//! internal topic [`SHARE_STATE_TOPIC`] before answering, appends records
//! given up on to dead-letter topics, expires locks and sessions, and wakes
//! waiting workers when records arrive or come back.
//!
//! Groups are spread over the partitions of [`SHARE_STATE_TOPIC`] by a hash
//! of their name, as consumer groups are over `__consumer_offsets`: each
//! partition is one shard (a [`Journal`]: its lock, its appends, its
//! snapshots, its replay), so queues in different shards never wait for
//! each other. Expiry visits a shard only when one of its locks, sessions
//! or delays is due.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;

use super::error::{CoordinatorError, Result};
use super::share::{AckKind, AckRefusal, Delivery, Effects, Settings, ShareGroup};
use super::RETRY_AFTER_FAILURE;
use crate::broker::journal::{journal_topic_config, Journal, JournalConfig, JournalGuard};
use crate::broker::{is_internal_topic, murmur2, Acks, Broker, Header, NewRecord, ProduceRequest};
use crate::storage::Clock;

mod admin;
mod placement;
mod reads;
mod records;
pub use admin::{
    metric_labels, QueueDescription, QueueListing, QueueMemberInfo, QueuePartitionInfo, QueueReset,
    MAX_METRIC_QUEUES,
};
use reads::{load_reads, plan_reads, read_partition, Read, ReadOutcome};
use records::{
    group_records, group_tombstone, partition_record, partition_value, settings_record,
    PartitionValue, QueueShard,
};

/// Internal topic of work-queue state.
pub const SHARE_STATE_TOPIC: &str = "__share_group_state";
/// Longest Pull wait, ms.
pub const MAX_PULL_WAIT_MS: i32 = 300_000;
/// Largest prefetch.
pub const MAX_PREFETCH: i32 = 100_000;

/// How work-queue state is kept.
#[derive(Debug, Clone, Copy)]
pub struct QueueStateConfig {
    /// Partitions (shards) of [`SHARE_STATE_TOPIC`]. A topic created with
    /// fewer (an older data directory) grows to this many at open, and its
    /// groups move to their new shards.
    pub partitions: i32,
    /// A shard snapshots after this many records (and more than twice its
    /// live keys).
    pub snapshot_min_records: u64,
}

impl Default for QueueStateConfig {
    fn default() -> Self {
        Self {
            partitions: 4,
            snapshot_min_records: 100_000,
        }
    }
}

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

type Shard = Journal<QueueShard>;
type Guard<'a> = JournalGuard<'a, QueueShard>;

/// The work-queue coordinator.
pub struct Queues {
    broker: Arc<Broker>,
    /// Wall time: shown to workers as lock deadlines, and the base of
    /// delivery ids.
    clock: Clock,
    /// Monotonic time for locks, sessions and delays, so that a step of
    /// the wall clock never expires every lock at once.
    timer: Clock,
    /// One per partition of [`SHARE_STATE_TOPIC`]; a group lives in the
    /// shard its name hashes to. A shard's lock is held for a change *and*
    /// the append that records it, never across `.await`: calls run on
    /// blocking threads (`spawn_blocking`), as an append may wait for the
    /// disk and a snapshot syncs the log.
    shards: Vec<Shard>,
    /// Receipt handles, unique across groups and restarts (they start
    /// from the wall clock in µs-like units).
    next_delivery_id: AtomicU64,
    /// Per group: woken when records come back or prefetch frees up, so
    /// only that group's workers wake. Locked only to look up or add one.
    wakers: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    members: AtomicU64,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
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
    /// The broker the queues live on.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Completes once the broker begins shutting down (streams and long
    /// polls end then).
    pub async fn shutting_down(&self) {
        self.broker.shutting_down().await
    }

    /// Opens the coordinator with the default [`QueueStateConfig`].
    /// Blocking.
    pub fn open(broker: Arc<Broker>, clock: Clock) -> Result<Arc<Self>> {
        Self::open_with(broker, clock, QueueStateConfig::default())
    }

    /// Opens the coordinator: creates the state topic if needed (or grows
    /// it to `config.partitions`) and replays each shard. Blocking.
    pub fn open_with(
        broker: Arc<Broker>,
        clock: Clock,
        config: QueueStateConfig,
    ) -> Result<Arc<Self>> {
        let mut count = broker.internal_partitions(
            SHARE_STATE_TOPIC,
            config.partitions,
            journal_topic_config(64 * 1024 * 1024),
        )?;
        if count < config.partitions && !broker.follows_metadata(SHARE_STATE_TOPIC) {
            broker.grow_internal_topic(SHARE_STATE_TOPIC, config.partitions)?;
            tracing::info!(
                from = count,
                to = config.partitions,
                "work-queue state topic grown; moving groups to their shards"
            );
            count = config.partitions;
        } else if count > config.partitions {
            tracing::info!(
                partitions = count,
                configured = config.partitions,
                "work-queue state topic keeps the partition count it has"
            );
        }
        let mut shards = Vec::with_capacity(count as usize);
        for partition in 0..count {
            let journal = JournalConfig {
                topic: SHARE_STATE_TOPIC,
                partition,
                snapshot_min_records: config.snapshot_min_records,
                durable: false,
            };
            shards.push(Journal::open(&broker, journal, QueueShard::default)?);
        }
        // Unique across restarts: a worker's old receipt handle never
        // matches a new delivery.
        let next_delivery_id = AtomicU64::new((clock)().max(0) as u64 * 1_000_000);
        let q = Self {
            broker,
            clock,
            timer: crate::storage::monotonic_clock(),
            shards,
            next_delivery_id,
            wakers: Default::default(),
            members: AtomicU64::new(0),
        };
        q.move_strays()?;
        let groups: usize = q.shards.iter().map(|s| s.peek(|st| st.groups.len())).sum();
        tracing::info!(groups, shards = count, "work-queue coordinator loaded");
        Ok(Arc::new(q))
    }

    /// Moves groups found in a shard that is not the one their name
    /// hashes to (the topic has grown) to their shard: their state is
    /// written there first, then deleted where it was, so a crash in
    /// between leaves a complete copy in the right shard, which wins.
    fn move_strays(&self) -> Result<()> {
        for (i, shard) in self.shards.iter().enumerate() {
            let strays: Vec<String> = shard.peek(|st| {
                st.groups
                    .keys()
                    .filter(|g| self.shard_index(g) != i)
                    .cloned()
                    .collect()
            });
            for name in strays {
                let mut from = self.lock_shard(shard)?;
                let Some(g) = from.groups.remove(&name) else {
                    continue;
                };
                let home = &self.shards[self.shard_index(&name)];
                let mut to = self.lock_shard(home)?;
                if !to.groups.contains_key(&name) {
                    let mut recs = Vec::new();
                    group_records(&name, &g, &mut recs);
                    Self::append(&mut to, recs)?;
                    to.groups.insert(name.clone(), g);
                }
                drop(to);
                Self::append(&mut from, vec![group_tombstone(&name)])?;
                tracing::info!(group = %name, from = i, "work queue moved to its shard");
            }
        }
        Ok(())
    }

    fn shard_index(&self, group: &str) -> usize {
        let h = murmur2(group.as_bytes()) & 0x7fff_ffff;
        h as usize % self.shards.len()
    }

    fn shard(&self, group: &str) -> &Shard {
        &self.shards[self.shard_index(group)]
    }

    /// The partition of the state topic that holds `group` (in a cluster,
    /// its leader coordinates the queue).
    pub fn shard_of(&self, group: &str) -> i32 {
        self.shard_index(group) as i32
    }

    /// Locks `group`'s shard for a change (see [`Journal::lock`]).
    fn lock(&self, group: &str) -> Result<Guard<'_>> {
        self.lock_shard(self.shard(group))
    }

    fn lock_shard<'a>(&'a self, shard: &'a Shard) -> Result<Guard<'a>> {
        shard
            .lock(&self.broker)
            .map_err(|e| CoordinatorError::from_journal(SHARE_STATE_TOPIC, shard.partition(), e))
    }

    /// Runs lock and session expiry every 100 ms until the broker shuts
    /// down; a shard with nothing due is skipped at the cost of one
    /// comparison. Call once, inside a tokio runtime.
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

    /// Expires due locks, sessions and delays now.
    pub fn tick(&self) {
        let now = self.now();
        for shard in &self.shards {
            if shard.peek(|st| st.next_due > now) {
                continue;
            }
            let Ok(mut st) = self.lock_shard(shard) else {
                continue;
            };
            let mut woken = Vec::new();
            let names: Vec<String> = st
                .groups
                .iter()
                .filter(|(_, g)| g.due <= now)
                .map(|(n, _)| n.clone())
                .collect();
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
                    woken.push(name.clone());
                }
                if let Err(e) = self.effects(&mut st, &name, fx) {
                    tracing::error!(error = %e, "work-queue expiry could not be recorded");
                    break;
                }
            }
            st.next_due = st.groups.values().map(|g| g.due).min().unwrap_or(i64::MAX);
            drop(st);
            for name in woken {
                self.wake(&name);
            }
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

    /// Appends dead letters, then persists deltas (shard locked). A record
    /// whose dead letter could not be written is not finished: it waits
    /// and its dead letter is tried again (never delivered again).
    fn effects(&self, st: &mut Guard<'_>, group: &str, mut fx: Effects) -> Result<()> {
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
        if let Some(due) = st.groups.get(group).map(|g| g.due) {
            st.next_due = st.next_due.min(due);
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
        Self::append(st, records)?;
        Ok(())
    }

    /// Appends records of changes to the shard (see [`JournalGuard::append`]).
    fn append(st: &mut Guard<'_>, records: Vec<NewRecord>) -> Result<i64> {
        st.append(records)
            .map_err(|reason| CoordinatorError::Failed {
                partition: st.partition(),
                reason,
            })
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
        let topic_arc: Arc<str> = Arc::from(topic);
        // Log ends for `start_at_latest` placement, looked up before the
        // shard is locked.
        let at_latest = settings.as_ref().and_then(|u| u.start_at_latest);
        let unplaced = self.shard(group).peek(|st| {
            let g = st.groups.get(group);
            let latest = at_latest.unwrap_or_else(|| g.is_some_and(|g| g.settings.start_at_latest));
            match g {
                _ if !latest => Vec::new(),
                Some(g) => Self::unplaced(g, &topic_arc, partitions),
                None => (0..partitions).collect(),
            }
        });
        let ends = self.log_ends(topic, &unplaced);
        let now = self.now();
        let mut st = self.lock(group)?;
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
        let mut fx = Effects::default();
        if let Some(r) = Self::check_incarnation(g, group, &topic_arc, t.incarnation()) {
            Self::append(&mut st, vec![r])?;
        }
        let g = st.groups.entry(group.to_string()).or_default();
        Self::place(g, &topic_arc, partitions, &ends, &mut fx);
        g.join(member.clone(), topic_arc, prefetch as u32, stream, now);
        if let Some(s) = changed {
            Self::append(&mut st, vec![settings_record(group, &s)])?;
        }
        self.effects(&mut st, group, fx)?;
        Ok(member)
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

    /// Up to `max` deliveries, and about `max_bytes` of record data
    /// (always at least one record), for `member` (fewer if its prefetch is
    /// nearly used up); none if nothing is available now.
    ///
    /// Records are read from the log outside the shard lock: the first
    /// hold plans the reads (each window with room, from its cursor), the
    /// reads run unlocked, and the second hold loads each one whose window
    /// still ends where its read began, then hands records out.
    pub fn acquire(
        &self,
        group: &str,
        member: &Arc<str>,
        max: u32,
        max_bytes: usize,
    ) -> Result<Vec<Delivery>> {
        self.acquire_more(group, member, max, max_bytes)
            .map(|(out, _)| out)
    }

    /// [`Queues::acquire`], and whether another call could hand out more
    /// right away (records left ready, or not yet read from the log, and
    /// prefetch room). When it says no, only an ack, a release, an expiry
    /// or an append (all of which wake the group or the topic) can change
    /// that, so a stream waits for one of those instead of asking again.
    pub fn acquire_more(
        &self,
        group: &str,
        member: &Arc<str>,
        max: u32,
        max_bytes: usize,
    ) -> Result<(Vec<Delivery>, bool)> {
        let now = self.now();
        let mut st = self.lock(group)?;
        let (topic, count) = self.refresh(&mut st, group, member, now)?;
        let g = Self::group_mut(&mut st, group)?;
        let incarnation = g.incarnations.get(&topic).copied();
        let reads = plan_reads(g, &topic);
        let unplaced = if g.settings.start_at_latest {
            Self::unplaced(g, &topic, count)
        } else {
            Vec::new()
        };
        let mut fx = Effects::default();
        if !reads.is_empty() || !unplaced.is_empty() {
            drop(st);
            let ends = self.log_ends(&topic, &unplaced);
            let done: Vec<(Read, ReadOutcome)> = reads
                .into_iter()
                .map(|r| {
                    let outcome = read_partition(&self.broker, &topic, &r);
                    (r, outcome)
                })
                .collect();
            st = self.lock(group)?;
            let g = Self::group_mut(&mut st, group)?;
            if !g.members.contains_key(member) {
                return Err(CoordinatorError::UnknownMember {
                    group: group.into(),
                    member: member.to_string(),
                });
            }
            // Reads of an earlier incarnation of the topic are dropped.
            if g.incarnations.get(&topic).copied() == incarnation {
                Self::place(g, &topic, count, &ends, &mut fx);
                let dropped = load_reads(g, &topic, done);
                g.forget_deliveries(dropped);
            }
        }
        let g = Self::group_mut(&mut st, group)?;
        // Ids for up to `max` deliveries (those left unused are skipped).
        let mut id = self
            .next_delivery_id
            .fetch_add(u64::from(max) + 1, Ordering::Relaxed);
        let out = g.acquire(member, max, max_bytes, now, &mut id, &mut fx);
        // Published log ends, from one look at the topic's partitions.
        let parts = self.broker.topic(&topic).map(|t| t.partitions()).ok();
        let behind = |p: i32, cursor: i64| {
            let end = parts
                .as_ref()
                .and_then(|ps| ps.get(usize::try_from(p).ok()?)?.known_end());
            end != Some(cursor)
        };
        let more = g.could_deliver(member, behind);
        self.effects(&mut st, group, fx)?;
        drop(st);
        if !out.is_empty() {
            metrics::counter!(
                "sluice_queue_deliveries_total",
                &metric_labels(group, &topic)
            )
            .increment(out.len() as u64);
        }
        let out = out
            .into_iter()
            .map(|mut d| {
                d.deadline = self.wall_deadline(d.deadline);
                d
            })
            .collect();
        Ok((out, more))
    }

    /// The first part of an acquire (shard locked): the member's session
    /// is refreshed, a deleted topic ends its workers (NOT_FOUND), a topic
    /// created again starts afresh, and partitions added since the last
    /// call are placed. Returns the topic and its partition count.
    fn refresh(
        &self,
        st: &mut Guard<'_>,
        group: &str,
        member: &Arc<str>,
        now: i64,
    ) -> Result<(Arc<str>, i32)> {
        let g = Self::group_mut(st, group)?;
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
        let t = self.broker.topic(&topic)?;
        let count = t.partitions().len() as i32;
        if let Some(r) = Self::check_incarnation(g, group, &topic, t.incarnation()) {
            Self::append(st, vec![r])?;
        }
        let g = Self::group_mut(st, group)?;
        let known = g
            .partitions
            .range((topic.clone(), 0)..)
            .take_while(|((t, _), _)| *t == topic)
            .count();
        if known < count as usize {
            let mut fx = Effects::default();
            Self::place(g, &topic, count, &HashMap::new(), &mut fx);
            self.effects(st, group, fx)?;
        }
        Ok((topic, count))
    }

    fn group_mut<'a>(st: &'a mut QueueShard, group: &str) -> Result<&'a mut ShareGroup> {
        st.groups
            .get_mut(group)
            .ok_or_else(|| CoordinatorError::GroupNotFound {
                group: group.into(),
            })
    }

    /// Applies acknowledgements from `member`.
    pub fn ack(&self, group: &str, member: &str, acks: Vec<AckRequest>) -> Result<AckOutcome> {
        let now = self.now();
        let mut st = self.lock(group)?;
        let g = Self::group_mut(&mut st, group)?;
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
        let Ok(mut st) = self.lock(group) else {
            return;
        };
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

#[cfg(test)]
mod tests;
