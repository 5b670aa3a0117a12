//! Work queues (share groups) as a pure state machine: time is passed in,
//! records are handed in by the caller, and every change that must survive
//! a restart comes back as a [`Delta`] for the caller to persist (and every
//! record given up on as a [`DeadLetter`] to append).
//!
//! Per topic partition the group keeps a window of offsets from `start`
//! (everything below is finished) to `cursor` (the next offset to read from
//! the log). Each record in the window is available, locked to one
//! delivery, or finished (accepted, rejected, dead-lettered). The window is
//! bounded (`MAX_WINDOW` records), so memory stays bounded however far
//! behind the group is: a record locked for long holds the window at its
//! offset, as in Kafka's share groups.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use crate::broker::FetchedRecord;

/// Records a partition's window holds at most.
pub const MAX_WINDOW: i64 = 20_000;
/// Longest RELEASE delay, ms.
pub const MAX_RELEASE_DELAY_MS: i32 = 86_400_000;

/// A group's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Lock time of a delivery, ms.
    pub lock_timeout_ms: i64,
    /// Deliveries after which a record is given up on.
    pub max_deliveries: u32,
    /// Where records given up on go.
    pub dead_letter_topic: Option<String>,
    /// One in-flight record per key, in offset order.
    pub key_ordered: bool,
    /// Silence after which a Pull member is gone, ms.
    pub session_timeout_ms: i64,
    /// New partitions start at the log end.
    pub start_at_latest: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            lock_timeout_ms: 30_000,
            max_deliveries: 5,
            dead_letter_topic: None,
            key_ordered: false,
            session_timeout_ms: 45_000,
            start_at_latest: false,
        }
    }
}

/// How an acknowledgement ends (or extends) a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// Done.
    Accept,
    /// Back to the queue, after `delay_ms`.
    Release {
        /// Not delivered again before this, ms.
        delay_ms: i64,
    },
    /// Poison: never delivered again.
    Reject,
    /// Keep the lock for another lock timeout.
    Extend,
}

/// How a record was finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Accepted by a worker.
    Accepted = 1,
    /// Rejected by a worker.
    Rejected = 2,
    /// Delivered `max_deliveries` times without being accepted.
    DeadLettered = 3,
}

impl Finished {
    /// From the persisted number.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Accepted),
            2 => Some(Self::Rejected),
            3 => Some(Self::DeadLettered),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Available,
    Locked {
        member: Arc<str>,
        delivery_id: u64,
        deadline: i64,
    },
    Finished(Finished),
}

#[derive(Debug, Clone)]
struct Rec {
    /// `None` until read from the log (replayed state beyond the cursor).
    record: Option<FetchedRecord>,
    state: State,
    deliveries: u32,
    not_before: i64,
    reason: Option<String>,
    /// Given up on (rejected or out of deliveries), but its dead letter is
    /// not written yet: it is never delivered again, and the dead letter
    /// is retried.
    dead_letter: Option<Finished>,
}

impl Rec {
    fn new() -> Self {
        Self {
            record: None,
            state: State::Available,
            deliveries: 0,
            not_before: 0,
            reason: None,
            dead_letter: None,
        }
    }
}

/// One partition's queue state.
#[derive(Debug, Clone, Default)]
pub struct Partition {
    /// Every offset below is finished.
    pub start: i64,
    /// Next offset to read from the log.
    pub cursor: i64,
    recs: BTreeMap<i64, Rec>,
    /// Read, available, due now.
    ready: BTreeSet<i64>,
    /// Released with a delay: (not before, offset).
    delayed: BTreeSet<(i64, i64)>,
    /// Locked: (deadline, offset).
    locks: BTreeSet<(i64, i64)>,
    /// Totals since the group began.
    pub accepted: i64,
    /// Totals since the group began.
    pub rejected: i64,
    /// Totals since the group began.
    pub dead_lettered: i64,
    /// Set once `start` and `cursor` are placed in the log.
    pub placed: bool,
}

impl Partition {
    /// Records locked now.
    pub fn in_flight(&self) -> usize {
        self.locks.len()
    }

    /// Read records waiting (ready or delayed).
    pub fn waiting(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }

    /// Timestamp of the oldest record read and not finished.
    pub fn oldest_unfinished_timestamp(&self) -> Option<i64> {
        self.recs
            .values()
            .filter(|r| !matches!(r.state, State::Finished(_)))
            .find_map(|r| r.record.as_ref().map(|r| r.timestamp))
    }

    /// Whether more records should be read from the log, and how many.
    pub fn room(&self) -> i64 {
        (self.start + MAX_WINDOW - self.cursor).max(0)
    }

    /// Adds records read from the log at the cursor. Finished ones (known
    /// from replayed state) stay finished.
    pub fn load(&mut self, records: Vec<FetchedRecord>, next_offset: i64) {
        for r in records {
            if r.offset < self.cursor.max(self.start) {
                continue;
            }
            let offset = r.offset;
            let rec = self.recs.entry(offset).or_insert_with(Rec::new);
            rec.record = Some(r);
            if rec.state == State::Available {
                self.ready.insert(offset);
            }
        }
        self.cursor = self.cursor.max(next_offset);
        self.advance();
    }

    /// Moves `start` past finished records (and past offsets the log no
    /// longer has, when `log_start` is above it).
    fn advance(&mut self) {
        while let Some(e) = self.recs.first_entry() {
            if *e.key() < self.start {
                e.remove();
                continue;
            }
            if *e.key() != self.start || !matches!(e.get().state, State::Finished(_)) {
                break;
            }
            e.remove();
            self.start += 1;
        }
        if self
            .recs
            .first_key_value()
            .is_none_or(|(&o, _)| o >= self.cursor)
        {
            self.start = self.start.max(self.cursor);
        }
        self.cursor = self.cursor.max(self.start);
    }

    /// The log starts above the window (retention deleted records): skip
    /// to it. Returns the locks that went with the records (delivery id
    /// and member), for [`ShareGroup::forget_deliveries`].
    #[must_use]
    pub fn skip_to(&mut self, log_start: i64) -> Vec<(u64, Arc<str>)> {
        let mut dropped = Vec::new();
        if log_start <= self.start {
            return dropped;
        }
        let gone: Vec<i64> = self.recs.range(..log_start).map(|(&o, _)| o).collect();
        for o in gone {
            self.ready.remove(&o);
            if let Some(r) = self.recs.remove(&o) {
                if let State::Locked {
                    deadline,
                    member,
                    delivery_id,
                } = r.state
                {
                    self.locks.remove(&(deadline, o));
                    dropped.push((delivery_id, member));
                }
                if r.not_before > 0 {
                    self.delayed.remove(&(r.not_before, o));
                }
            }
        }
        self.start = log_start;
        self.cursor = self.cursor.max(log_start);
        dropped
    }

    /// The log ends below the cursor (a tail lost to a power failure):
    /// what the window held at or past `log_end` no longer exists, and new
    /// records will take those offsets again. Returns the dropped locks.
    #[must_use]
    pub fn truncate_to(&mut self, log_end: i64) -> Vec<(u64, Arc<str>)> {
        let mut dropped = Vec::new();
        if log_end >= self.cursor {
            return dropped;
        }
        let gone: Vec<i64> = self.recs.range(log_end..).map(|(&o, _)| o).collect();
        for o in gone {
            self.ready.remove(&o);
            if let Some(r) = self.recs.remove(&o) {
                if let State::Locked {
                    deadline,
                    member,
                    delivery_id,
                } = r.state
                {
                    self.locks.remove(&(deadline, o));
                    dropped.push((delivery_id, member));
                }
                if r.not_before > 0 {
                    self.delayed.remove(&(r.not_before, o));
                }
            }
        }
        self.cursor = log_end;
        self.start = self.start.min(log_end);
        dropped
    }
}

/// A partition's persisted state: start offset, (offset, delivery count)
/// of records delivered but not finished, (offset, how) of finished ones.
pub type PartitionSnapshot = (i64, Vec<(i64, u32)>, Vec<(i64, Finished)>);

/// A delivery to hand to a worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// The record.
    pub record: FetchedRecord,
    /// Receipt handle.
    pub delivery_id: u64,
    /// 1 on the first delivery.
    pub deliveries: u32,
    /// Lock end, ms.
    pub deadline: i64,
}

/// A change to persist: per partition, offsets whose delivery count or
/// finished state changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Where the group starts in a partition it has not read before.
    pub start: Option<i64>,
    /// (offset, delivery count) after acquisitions.
    pub delivered: Vec<(i64, u32)>,
    /// (offset, how) for finished records.
    pub finished: Vec<(i64, Finished)>,
}

/// A record given up on, for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The dead-letter topic.
    pub to: String,
    /// Source topic.
    pub topic: Arc<str>,
    /// Source partition.
    pub partition: i32,
    /// The record.
    pub record: FetchedRecord,
    /// Deliveries so far.
    pub deliveries: u32,
    /// Why.
    pub reason: String,
    /// How the record finishes once the dead letter is written.
    pub how: Finished,
}

/// What an operation asks the caller to do.
#[derive(Debug, Default)]
pub struct Effects {
    /// Persist these (before answering).
    pub deltas: Vec<Delta>,
    /// Append these to their dead-letter topics.
    pub dead_letters: Vec<DeadLetter>,
    /// Records became available: wake waiting workers.
    pub released: bool,
    /// Locks that expired, per topic (for metrics).
    pub expired: Vec<(Arc<str>, u64)>,
}

impl Effects {
    fn delta(&mut self, topic: &str, partition: i32) -> &mut Delta {
        let found = self
            .deltas
            .iter()
            .position(|d| d.partition == partition && d.topic == topic);
        let i = found.unwrap_or_else(|| {
            self.deltas.push(Delta {
                topic: topic.to_string(),
                partition,
                ..Default::default()
            });
            self.deltas.len() - 1
        });
        &mut self.deltas[i]
    }
}

/// A member (worker).
#[derive(Debug, Clone)]
pub struct Member {
    /// Topic it consumes.
    pub topic: Arc<str>,
    /// Unacknowledged deliveries it may hold.
    pub prefetch: u32,
    /// Held now.
    pub held: u32,
    /// Pull members: gone after this (ms). Streams: `None`.
    pub session_deadline: Option<i64>,
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckRefusal {
    /// No such live delivery (unknown id, or its lock expired and the
    /// record was released).
    NotFound(String),
    /// The record is locked by a newer delivery.
    Superseded(String),
    /// Bad request.
    Invalid(String),
}

/// A share group.
#[derive(Debug, Default)]
pub struct ShareGroup {
    /// Settings in force.
    pub settings: Settings,
    /// Per topic partition.
    pub partitions: BTreeMap<(Arc<str>, i32), Partition>,
    /// Members by id.
    pub members: HashMap<Arc<str>, Member>,
    /// Live deliveries: id → (topic, partition, offset).
    deliveries: HashMap<u64, ((Arc<str>, i32), i64)>,
    /// Round-robin start over partitions.
    rotate: usize,
    /// The incarnation of each topic the state refers to (see
    /// [`crate::broker::Topic::incarnation`]).
    pub incarnations: HashMap<Arc<str>, u64>,
}

impl ShareGroup {
    /// Forgets every partition of `topic` (it was deleted and created
    /// again: its offsets mean other records now); what members held of
    /// it no longer counts against their prefetch.
    pub fn reset_topic(&mut self, topic: &str) {
        let ids: Vec<u64> = self
            .deliveries
            .iter()
            .filter(|(_, ((t, _), _))| &**t == topic)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.deliveries.remove(&id);
        }
        self.partitions.retain(|(t, _), _| &**t != topic);
        for m in self.members.values_mut() {
            if &*m.topic == topic {
                m.held = 0;
            }
        }
    }

    /// Adds or refreshes a member.
    pub fn join(&mut self, id: Arc<str>, topic: Arc<str>, prefetch: u32, stream: bool, now: i64) {
        let deadline = (!stream).then_some(now + self.settings.session_timeout_ms);
        let m = self.members.entry(id).or_insert(Member {
            topic: topic.clone(),
            prefetch,
            held: 0,
            session_deadline: deadline,
        });
        m.topic = topic;
        m.prefetch = prefetch;
        m.session_deadline = deadline;
    }

    /// Forgets deliveries whose records left the window (see
    /// [`Partition::skip_to`]): their members' prefetch slots come back.
    pub fn forget_deliveries(&mut self, dropped: Vec<(u64, Arc<str>)>) {
        for (id, member) in dropped {
            self.deliveries.remove(&id);
            if let Some(m) = self.members.get_mut(&member) {
                m.held = m.held.saturating_sub(1);
            }
        }
    }

    /// Hands up to `max` records, and about `max_bytes` of record data
    /// (always at least one record), to `member` (capped by its
    /// prefetch). `next_id` numbers the deliveries. A record already
    /// delivered `max_deliveries` times (its last lock was lost in a
    /// restart) is dead-lettered instead of delivered again.
    pub fn acquire(
        &mut self,
        member: &Arc<str>,
        max: u32,
        max_bytes: usize,
        now: i64,
        next_id: &mut u64,
        fx: &mut Effects,
    ) -> Vec<Delivery> {
        let Some(m) = self.members.get(member) else {
            return Vec::new();
        };
        let mut want = max.min(m.prefetch.saturating_sub(m.held)) as usize;
        let topic = m.topic.clone();
        let mut out = Vec::new();
        let keys: Vec<(Arc<str>, i32)> = self
            .partitions
            .keys()
            .filter(|(t, _)| *t == topic)
            .cloned()
            .collect();
        if keys.is_empty() || want == 0 {
            return out;
        }
        let n = keys.len();
        self.rotate = (self.rotate + 1) % n;
        let max_deliveries = self.settings.max_deliveries;
        let mut exhausted = Vec::new();
        let mut bytes = 0usize;
        'partitions: for k in 0..n {
            if want == 0 {
                break;
            }
            let tp = &keys[(self.rotate + k) % n];
            let lock = self.settings.lock_timeout_ms;
            let key_ordered = self.settings.key_ordered;
            let Some(p) = self.partitions.get_mut(tp) else {
                continue;
            };
            let chosen = if key_ordered {
                key_ordered_pick(p, want)
            } else {
                p.ready.iter().take(want).copied().collect::<Vec<_>>()
            };
            for offset in chosen {
                let Some(rec) = p.recs.get_mut(&offset) else {
                    continue;
                };
                let Some(record) = rec.record.clone() else {
                    continue;
                };
                if rec.deliveries >= max_deliveries || rec.dead_letter.is_some() {
                    p.ready.remove(&offset);
                    let how = rec.dead_letter.unwrap_or(Finished::DeadLettered);
                    exhausted.push((tp.clone(), offset, how));
                    continue;
                }
                let size = record_bytes(&record);
                if !out.is_empty() && bytes + size > max_bytes {
                    break 'partitions;
                }
                bytes += size;
                p.ready.remove(&offset);
                *next_id += 1;
                let id = *next_id;
                rec.deliveries += 1;
                rec.state = State::Locked {
                    member: member.clone(),
                    delivery_id: id,
                    deadline: now + lock,
                };
                p.locks.insert((now + lock, offset));
                self.deliveries.insert(id, (tp.clone(), offset));
                fx.delta(&tp.0, tp.1)
                    .delivered
                    .push((offset, rec.deliveries));
                out.push(Delivery {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    record,
                    delivery_id: id,
                    deliveries: rec.deliveries,
                    deadline: now + lock,
                });
                want -= 1;
            }
        }
        if let Some(m) = self.members.get_mut(member) {
            m.held += out.len() as u32;
        }
        for (tp, offset, how) in exhausted {
            if let Some(rec) = self
                .partitions
                .get_mut(&tp)
                .and_then(|p| p.recs.get_mut(&offset))
            {
                if rec.reason.is_none() {
                    rec.reason = Some(format!(
                        "delivered {} times (max_deliveries {max_deliveries}); the last lock ended with a restart",
                        rec.deliveries
                    ));
                }
            }
            self.finish(&tp, offset, how, fx);
        }
        out
    }

    /// Applies one acknowledgement from `member`.
    pub fn ack(
        &mut self,
        member: &str,
        delivery_id: u64,
        kind: AckKind,
        reason: Option<String>,
        now: i64,
        fx: &mut Effects,
    ) -> Result<(), AckRefusal> {
        let Some((tp, offset)) = self.deliveries.get(&delivery_id).cloned() else {
            return Err(AckRefusal::NotFound(format!(
                "delivery {delivery_id} is not live: unknown, already acknowledged, or its lock expired and the record was released"
            )));
        };
        let lock = self.settings.lock_timeout_ms;
        let p = self.partitions.get_mut(&tp).ok_or_else(|| {
            AckRefusal::NotFound(format!("delivery {delivery_id}: partition gone"))
        })?;
        let rec = p
            .recs
            .get_mut(&offset)
            .ok_or_else(|| AckRefusal::NotFound(format!("delivery {delivery_id}: record gone")))?;
        let (holder, deadline) = match &rec.state {
            State::Locked {
                member: m,
                delivery_id: d,
                deadline,
            } if *d == delivery_id => (m.clone(), *deadline),
            _ => {
                return Err(AckRefusal::Superseded(format!(
                    "delivery {delivery_id} of {}/{} offset {offset} is stale: the record was delivered again",
                    tp.0, tp.1
                )))
            }
        };
        if &*holder != member {
            return Err(AckRefusal::Superseded(format!(
                "delivery {delivery_id} belongs to member {holder}, not {member}"
            )));
        }
        if reason.is_some() {
            rec.reason = reason;
        }
        match kind {
            AckKind::Extend => {
                p.locks.remove(&(deadline, offset));
                rec.state = State::Locked {
                    member: holder,
                    delivery_id,
                    deadline: now + lock,
                };
                p.locks.insert((now + lock, offset));
                return Ok(());
            }
            AckKind::Release { delay_ms }
                if !(0..=i64::from(MAX_RELEASE_DELAY_MS)).contains(&delay_ms) =>
            {
                return Err(AckRefusal::Invalid(format!(
                    "delay_ms {delay_ms} is out of range [0, {MAX_RELEASE_DELAY_MS}]"
                )));
            }
            _ => {}
        }
        p.locks.remove(&(deadline, offset));
        self.deliveries.remove(&delivery_id);
        if let Some(m) = self.members.get_mut(member) {
            m.held = m.held.saturating_sub(1);
        }
        match kind {
            AckKind::Accept => self.finish(&tp, offset, Finished::Accepted, fx),
            AckKind::Reject => self.finish(&tp, offset, Finished::Rejected, fx),
            AckKind::Release { delay_ms } => self.release(&tp, offset, now + delay_ms, now, fx),
            AckKind::Extend => {}
        }
        Ok(())
    }

    /// Finishes a record. A record given up on, with a dead-letter topic
    /// set, finishes only once its dead letter is written: the caller
    /// appends `fx.dead_letters` and reports each with
    /// [`ShareGroup::dead_letter_written`] or
    /// [`ShareGroup::dead_letter_failed`].
    fn finish(&mut self, tp: &(Arc<str>, i32), offset: i64, how: Finished, fx: &mut Effects) {
        let dlq = self.settings.dead_letter_topic.clone();
        let Some(p) = self.partitions.get_mut(tp) else {
            return;
        };
        let Some(rec) = p.recs.get_mut(&offset) else {
            return;
        };
        if how != Finished::Accepted {
            if let (Some(to), Some(record)) = (dlq, rec.record.clone()) {
                rec.state = State::Available;
                rec.dead_letter = Some(how);
                fx.dead_letters.push(DeadLetter {
                    to,
                    topic: tp.0.clone(),
                    partition: tp.1,
                    record,
                    deliveries: rec.deliveries,
                    reason: rec.reason.clone().unwrap_or_else(|| match how {
                        Finished::Rejected => "rejected".into(),
                        _ => format!("delivered {} times", rec.deliveries),
                    }),
                    how,
                });
                return;
            }
        }
        self.finish_now(tp, offset, how, fx);
    }

    fn finish_now(&mut self, tp: &(Arc<str>, i32), offset: i64, how: Finished, fx: &mut Effects) {
        let Some(p) = self.partitions.get_mut(tp) else {
            return;
        };
        let Some(rec) = p.recs.get_mut(&offset) else {
            return;
        };
        rec.state = State::Finished(how);
        rec.dead_letter = None;
        match how {
            Finished::Accepted => p.accepted += 1,
            Finished::Rejected => p.rejected += 1,
            Finished::DeadLettered => p.dead_lettered += 1,
        }
        rec.record = None;
        fx.delta(&tp.0, tp.1).finished.push((offset, how));
        p.advance();
    }

    /// A dead letter was written: its record finishes.
    pub fn dead_letter_written(&mut self, d: &DeadLetter, fx: &mut Effects) {
        let tp = (d.topic.clone(), d.partition);
        if self
            .partitions
            .get(&tp)
            .and_then(|p| p.recs.get(&d.record.offset))
            .is_some_and(|r| r.dead_letter.is_some())
        {
            self.finish_now(&tp, d.record.offset, d.how, fx);
        }
    }

    /// A dead letter could not be written: its record stays unfinished,
    /// is never delivered again, and the dead letter is tried again from
    /// `retry_at`.
    pub fn dead_letter_failed(&mut self, d: &DeadLetter, retry_at: i64) {
        let tp = (d.topic.clone(), d.partition);
        let Some(p) = self.partitions.get_mut(&tp) else {
            return;
        };
        let offset = d.record.offset;
        if let Some(rec) = p.recs.get_mut(&offset) {
            rec.state = State::Available;
            rec.not_before = retry_at;
            p.delayed.insert((retry_at, offset));
        }
    }

    /// A locked record goes back to the queue, or is given up on after
    /// `max_deliveries`.
    fn release(
        &mut self,
        tp: &(Arc<str>, i32),
        offset: i64,
        not_before: i64,
        now: i64,
        fx: &mut Effects,
    ) {
        let max = self.settings.max_deliveries;
        let Some(p) = self.partitions.get_mut(tp) else {
            return;
        };
        let Some(rec) = p.recs.get_mut(&offset) else {
            return;
        };
        if rec.deliveries >= max {
            self.finish(tp, offset, Finished::DeadLettered, fx);
            return;
        }
        rec.state = State::Available;
        if not_before > now {
            rec.not_before = not_before;
            p.delayed.insert((not_before, offset));
        } else {
            rec.not_before = 0;
            p.ready.insert(offset);
        }
        fx.released = true;
    }

    /// Releases everything `member` holds and forgets it.
    pub fn leave(&mut self, member: &str, now: i64, fx: &mut Effects) {
        if self.members.remove(member).is_none() {
            return;
        }
        let held: Vec<(u64, (Arc<str>, i32), i64)> = self
            .deliveries
            .iter()
            .map(|(&id, (tp, o))| (id, tp.clone(), *o))
            .filter(|(_, tp, o)| {
                self.partitions
                    .get(tp)
                    .and_then(|p| p.recs.get(o))
                    .is_some_and(
                        |r| matches!(&r.state, State::Locked { member: m, .. } if &**m == member),
                    )
            })
            .collect();
        for (id, tp, offset) in held {
            self.unlock(id, &tp, offset, now, fx);
        }
    }

    fn unlock(&mut self, id: u64, tp: &(Arc<str>, i32), offset: i64, now: i64, fx: &mut Effects) {
        self.deliveries.remove(&id);
        let Some(p) = self.partitions.get_mut(tp) else {
            return;
        };
        let Some(rec) = p.recs.get(&offset) else {
            return;
        };
        if let State::Locked {
            member, deadline, ..
        } = &rec.state
        {
            p.locks.remove(&(*deadline, offset));
            if let Some(m) = self.members.get_mut(member) {
                m.held = m.held.saturating_sub(1);
            }
        }
        self.release(tp, offset, 0, now, fx);
    }

    /// Expires locks and Pull sessions, and makes delayed records due.
    pub fn tick(&mut self, now: i64, fx: &mut Effects) {
        let gone: Vec<Arc<str>> = self
            .members
            .iter()
            .filter(|(_, m)| m.session_deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            tracing::info!(member = %id, "queue member session expired; releasing its records");
            self.leave(&id, now, fx);
        }
        let keys: Vec<(Arc<str>, i32)> = self.partitions.keys().cloned().collect();
        for tp in keys {
            let Some(p) = self.partitions.get_mut(&tp) else {
                continue;
            };
            let expired: Vec<i64> = p
                .locks
                .iter()
                .take_while(|(d, _)| *d <= now)
                .map(|(_, o)| *o)
                .collect();
            while let Some(&(t, o)) = p.delayed.first() {
                if t > now {
                    break;
                }
                p.delayed.remove(&(t, o));
                if let Some(r) = p.recs.get_mut(&o) {
                    r.not_before = 0;
                    p.ready.insert(o);
                    fx.released = true;
                }
            }
            if !expired.is_empty() {
                fx.expired.push((tp.0.clone(), expired.len() as u64));
            }
            for o in expired {
                let id = match self.partitions.get(&tp).and_then(|p| p.recs.get(&o)) {
                    Some(Rec {
                        state: State::Locked { delivery_id, .. },
                        ..
                    }) => *delivery_id,
                    _ => continue,
                };
                self.unlock(id, &tp, o, now, fx);
            }
        }
    }

    /// Applies persisted changes (replay).
    pub fn apply(
        &mut self,
        tp: (Arc<str>, i32),
        start: Option<i64>,
        delivered: &[(i64, u32)],
        finished: &[(i64, Finished)],
    ) {
        let p = self.partitions.entry(tp).or_default();
        if let Some(s) = start {
            p.start = s;
            p.cursor = s;
            p.recs.clear();
            p.ready.clear();
            p.delayed.clear();
            p.locks.clear();
            p.placed = true;
        }
        for &(o, n) in delivered {
            if o >= p.start {
                p.recs.entry(o).or_insert_with(Rec::new).deliveries = n;
            }
        }
        for &(o, how) in finished {
            if o >= p.start {
                p.recs.entry(o).or_insert_with(Rec::new).state = State::Finished(how);
                match how {
                    Finished::Accepted => p.accepted += 1,
                    Finished::Rejected => p.rejected += 1,
                    Finished::DeadLettered => p.dead_lettered += 1,
                }
            }
        }
        p.advance();
    }

    /// The persisted state of one partition: its start offset and every
    /// offset with a delivery count or a finished state.
    pub fn snapshot_of(p: &Partition) -> PartitionSnapshot {
        let mut delivered = Vec::new();
        let mut finished = Vec::new();
        for (&o, r) in &p.recs {
            match r.state {
                State::Finished(f) => finished.push((o, f)),
                _ if r.deliveries > 0 => delivered.push((o, r.deliveries)),
                _ => {}
            }
        }
        (p.start, delivered, finished)
    }
}

/// Key-ordered choice: in offset order, a record whose key has no earlier
/// unfinished record and none locked.
/// Bytes a delivery of `r` carries (key, value, headers, framing).
fn record_bytes(r: &FetchedRecord) -> usize {
    32 + r.key.as_ref().map_or(0, |k| k.len())
        + r.value.as_ref().map_or(0, |v| v.len())
        + r.headers
            .iter()
            .map(|h| 8 + h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>()
}

fn key_ordered_pick(p: &Partition, want: usize) -> Vec<i64> {
    let mut blocked: HashSet<Option<&Bytes>> = HashSet::new();
    let mut out = Vec::new();
    for (&o, r) in &p.recs {
        if out.len() >= want || o >= p.cursor {
            break;
        }
        let key = r.record.as_ref().and_then(|x| x.key.as_ref());
        match &r.state {
            State::Finished(_) => continue,
            State::Locked { .. } => {
                blocked.insert(key);
            }
            State::Available => {
                // Null keys are independent of each other.
                if key.is_some() && !blocked.insert(key) {
                    continue;
                }
                if p.ready.contains(&o) {
                    out.push(o);
                } else if key.is_some() {
                    // Delayed: it still holds back later records of its key.
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: i64, key: Option<&str>) -> FetchedRecord {
        FetchedRecord {
            offset,
            timestamp: 0,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::from(format!("v{offset}"))),
            headers: Vec::new(),
        }
    }

    fn group(n: i64, settings: Settings, keys: &[Option<&str>]) -> (ShareGroup, (Arc<str>, i32)) {
        let mut g = ShareGroup {
            settings,
            ..Default::default()
        };
        let tp: (Arc<str>, i32) = (Arc::from("t"), 0);
        let p = g.partitions.entry(tp.clone()).or_default();
        p.placed = true;
        p.load(
            (0..n)
                .map(|o| rec(o, keys.get(o as usize).copied().flatten()))
                .collect(),
            n,
        );
        (g, tp)
    }

    #[test]
    fn prefetch_locks_accept_release_and_redelivery_counts() {
        let (mut g, tp) = group(10, Settings::default(), &[]);
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        g.join(a.clone(), tp.0.clone(), 3, true, 0);
        g.join(b.clone(), tp.0.clone(), 100, true, 0);
        let mut id = 0;
        let mut fx = Effects::default();
        let got = g.acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx);
        assert_eq!(got.len(), 3, "prefetch caps the member");
        assert!(g
            .acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx)
            .is_empty());
        assert_eq!(fx.deltas[0].delivered, [(0, 1), (1, 1), (2, 1)]);
        g.ack("a", got[0].delivery_id, AckKind::Accept, None, 1, &mut fx)
            .expect("accept");
        assert_eq!(g.partitions[&tp].start, 1);
        // b may not acknowledge a's delivery.
        assert!(matches!(
            g.ack("b", got[1].delivery_id, AckKind::Accept, None, 1, &mut fx),
            Err(AckRefusal::Superseded(_))
        ));
        g.ack(
            "a",
            got[1].delivery_id,
            AckKind::Release { delay_ms: 0 },
            None,
            1,
            &mut fx,
        )
        .expect("release");
        // Lock expiry: offset 2 goes back with its count kept.
        g.tick(30_001, &mut fx);
        assert!(matches!(
            g.ack(
                "a",
                got[2].delivery_id,
                AckKind::Accept,
                None,
                30_002,
                &mut fx
            ),
            Err(AckRefusal::NotFound(_))
        ));
        let again = g.acquire(&b, 2, usize::MAX, 30_002, &mut id, &mut fx);
        assert_eq!(
            again
                .iter()
                .map(|d| (d.record.offset, d.deliveries))
                .collect::<Vec<_>>(),
            [(1, 2), (2, 2)]
        );
        assert_eq!(g.members["a"].held, 0);
    }

    #[test]
    fn extend_keeps_the_lock_and_leave_releases() {
        let (mut g, tp) = group(2, Settings::default(), &[]);
        let a: Arc<str> = Arc::from("a");
        g.join(a.clone(), tp.0.clone(), 10, false, 0);
        let (mut id, mut fx) = (0, Effects::default());
        let got = g.acquire(&a, 1, usize::MAX, 0, &mut id, &mut fx);
        g.ack(
            "a",
            got[0].delivery_id,
            AckKind::Extend,
            None,
            20_000,
            &mut fx,
        )
        .expect("extend");
        g.tick(45_000 - 1, &mut fx);
        assert_eq!(
            g.partitions[&tp].in_flight(),
            1,
            "extended past the first deadline"
        );
        // The Pull session (45 s) ends: everything it held is released.
        g.tick(45_000, &mut fx);
        assert!(g.members.is_empty());
        assert_eq!(g.partitions[&tp].in_flight(), 0);
        assert_eq!(g.partitions[&tp].waiting(), 2);
    }

    #[test]
    fn dead_letter_after_max_deliveries_and_on_reject() {
        let settings = Settings {
            max_deliveries: 2,
            dead_letter_topic: Some("dlq".into()),
            ..Settings::default()
        };
        let (mut g, tp) = group(2, settings, &[]);
        let a: Arc<str> = Arc::from("a");
        g.join(a.clone(), tp.0.clone(), 1, true, 0);
        let (mut id, mut fx) = (0, Effects::default());
        for round in 0..2 {
            let d = g.acquire(&a, 1, usize::MAX, 0, &mut id, &mut fx);
            assert_eq!((d[0].record.offset, d[0].deliveries), (0, round + 1));
            g.ack(
                "a",
                d[0].delivery_id,
                AckKind::Release { delay_ms: 0 },
                Some("boom".into()),
                0,
                &mut fx,
            )
            .expect("release");
        }
        assert_eq!(fx.dead_letters.len(), 1);
        assert_eq!(fx.dead_letters[0].reason, "boom");
        assert_eq!(fx.dead_letters[0].deliveries, 2);
        let d = g.acquire(&a, 1, usize::MAX, 0, &mut id, &mut fx);
        assert_eq!(d[0].record.offset, 1);
        g.ack("a", d[0].delivery_id, AckKind::Reject, None, 0, &mut fx)
            .expect("reject");
        assert_eq!(fx.dead_letters.len(), 2);
        // Not finished until the dead letters are written.
        let p = &g.partitions[&tp];
        assert_eq!((p.start, p.dead_lettered, p.rejected), (0, 0, 0));
        let written = std::mem::take(&mut fx.dead_letters);
        for d in &written {
            g.dead_letter_written(d, &mut fx);
        }
        let p = &g.partitions[&tp];
        assert_eq!((p.start, p.dead_lettered, p.rejected), (2, 1, 1));
    }

    #[test]
    fn a_dead_letter_that_fails_keeps_its_record_and_is_tried_again() {
        let settings = Settings {
            dead_letter_topic: Some("dlq".into()),
            ..Settings::default()
        };
        let (mut g, tp) = group(2, settings, &[]);
        let a: Arc<str> = Arc::from("a");
        g.join(a.clone(), tp.0.clone(), 10, true, 0);
        let (mut id, mut fx) = (0, Effects::default());
        let d = g.acquire(&a, 1, usize::MAX, 0, &mut id, &mut fx);
        g.ack("a", d[0].delivery_id, AckKind::Reject, None, 0, &mut fx)
            .expect("reject");
        let failed = std::mem::take(&mut fx.dead_letters);
        assert_eq!(failed.len(), 1);
        g.dead_letter_failed(&failed[0], 1_000);
        assert!(
            !fx.deltas.iter().any(|d| !d.finished.is_empty()),
            "nothing finished: {:?}",
            fx.deltas
        );
        assert_eq!(g.partitions[&tp].start, 0);
        // Before the retry time the rejected record is not delivered, and
        // it is never delivered to a worker again.
        let d = g.acquire(&a, 10, usize::MAX, 500, &mut id, &mut fx);
        assert_eq!(d.iter().map(|d| d.record.offset).collect::<Vec<_>>(), [1]);
        g.tick(1_000, &mut fx);
        let d = g.acquire(&a, 10, usize::MAX, 1_000, &mut id, &mut fx);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(fx.dead_letters.len(), 1, "the dead letter is tried again");
        assert_eq!(fx.dead_letters[0].how, Finished::Rejected);
        let retry = std::mem::take(&mut fx.dead_letters);
        g.dead_letter_written(&retry[0], &mut fx);
        assert_eq!(g.partitions[&tp].rejected, 1);
    }

    #[test]
    fn delayed_release_waits() {
        let (mut g, tp) = group(1, Settings::default(), &[]);
        let a: Arc<str> = Arc::from("a");
        g.join(a.clone(), tp.0.clone(), 5, true, 0);
        let (mut id, mut fx) = (0, Effects::default());
        let d = g.acquire(&a, 1, usize::MAX, 0, &mut id, &mut fx);
        g.ack(
            "a",
            d[0].delivery_id,
            AckKind::Release { delay_ms: 500 },
            None,
            100,
            &mut fx,
        )
        .expect("release");
        assert!(g
            .acquire(&a, 1, usize::MAX, 200, &mut id, &mut fx)
            .is_empty());
        g.tick(600, &mut fx);
        assert_eq!(g.acquire(&a, 1, usize::MAX, 600, &mut id, &mut fx).len(), 1);
    }

    #[test]
    fn key_ordered_never_has_two_of_a_key_in_flight() {
        let settings = Settings {
            key_ordered: true,
            ..Settings::default()
        };
        let keys = [Some("x"), Some("x"), Some("y"), None, None, Some("x")];
        let (mut g, _) = group(6, settings, &keys);
        let a: Arc<str> = Arc::from("a");
        g.join(a.clone(), Arc::from("t"), 100, true, 0);
        let (mut id, mut fx) = (0, Effects::default());
        let d = g.acquire(&a, 100, usize::MAX, 0, &mut id, &mut fx);
        let offsets: Vec<i64> = d.iter().map(|d| d.record.offset).collect();
        assert_eq!(offsets, [0, 2, 3, 4]);
        g.ack("a", d[0].delivery_id, AckKind::Accept, None, 0, &mut fx)
            .expect("accept");
        let d = g.acquire(&a, 100, usize::MAX, 0, &mut id, &mut fx);
        assert_eq!(d.iter().map(|d| d.record.offset).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn replayed_state_skips_finished_and_keeps_counts() {
        let (mut g, tp) = group(0, Settings::default(), &[]);
        g.apply(
            tp.clone(),
            Some(0),
            &[(1, 3)],
            &[(0, Finished::Accepted), (2, Finished::Accepted)],
        );
        let p = g.partitions.get_mut(&tp).expect("partition");
        assert_eq!(p.start, 1);
        p.load((0..4).map(|o| rec(o, None)).collect(), 4);
        let a: Arc<str> = Arc::from("a");
        g.join(a.clone(), tp.0.clone(), 10, true, 0);
        let (mut id, mut fx) = (0, Effects::default());
        let d = g.acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx);
        assert_eq!(
            d.iter()
                .map(|d| (d.record.offset, d.deliveries))
                .collect::<Vec<_>>(),
            [(1, 4), (3, 1)]
        );
    }

    #[test]
    fn a_record_at_its_last_delivery_after_a_restart_is_dead_lettered() {
        let settings = Settings {
            dead_letter_topic: Some("dlq".into()),
            ..Settings::default()
        };
        let max = settings.max_deliveries;
        let (mut g, tp) = group(0, settings, &[]);
        // Replayed: offset 1 was delivered `max` times, its lock lost.
        g.apply(tp.clone(), Some(0), &[(1, max)], &[]);
        let p = g.partitions.get_mut(&tp).expect("partition");
        p.load((0..3).map(|o| rec(o, None)).collect(), 3);
        let a: Arc<str> = Arc::from("a");
        g.join(a.clone(), tp.0.clone(), 10, true, 0);
        let (mut id, mut fx) = (0, Effects::default());
        let d = g.acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx);
        let offsets: Vec<i64> = d.iter().map(|d| d.record.offset).collect();
        assert_eq!(offsets, [0, 2], "offset 1 is not delivered a sixth time");
        assert_eq!(fx.dead_letters.len(), 1);
        assert_eq!(fx.dead_letters[0].record.offset, 1);
        assert!(fx.dead_letters[0].reason.contains("max_deliveries"));
        let written = std::mem::take(&mut fx.dead_letters);
        g.dead_letter_written(&written[0], &mut fx);
        assert!(fx
            .deltas
            .iter()
            .any(|d| d.finished.contains(&(1, Finished::DeadLettered))));
    }

    #[test]
    fn deliveries_stop_at_the_byte_budget_but_take_at_least_one() {
        let (mut g, tp) = group(10, Settings::default(), &[]);
        let a: Arc<str> = Arc::from("a");
        g.join(a.clone(), tp.0.clone(), 100, true, 0);
        let (mut id, mut fx) = (0, Effects::default());
        // Each record here is 34 bytes as a delivery.
        let d = g.acquire(&a, 10, 100, 0, &mut id, &mut fx);
        assert_eq!(d.len(), 2);
        let d = g.acquire(&a, 10, 1, 0, &mut id, &mut fx);
        assert_eq!(d.len(), 1, "at least one record, whatever its size");
    }

    #[test]
    fn records_skipped_by_retention_free_their_prefetch_slots() {
        let (mut g, tp) = group(10, Settings::default(), &[]);
        let a: Arc<str> = Arc::from("a");
        g.join(a.clone(), tp.0.clone(), 2, true, 0);
        let (mut id, mut fx) = (0, Effects::default());
        assert_eq!(g.acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx).len(), 2);
        assert!(g
            .acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx)
            .is_empty());
        // Retention deletes offsets 0-4, two of them held by `a`.
        let dropped = g.partitions.get_mut(&tp).expect("partition").skip_to(5);
        assert_eq!(dropped.len(), 2);
        g.forget_deliveries(dropped);
        assert_eq!(g.members[&a].held, 0);
        let d = g.acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx);
        let offsets: Vec<i64> = d.iter().map(|d| d.record.offset).collect();
        assert_eq!(offsets, [5, 6]);
    }

    #[test]
    fn a_lost_tail_moves_the_cursor_back() {
        let (mut g, tp) = group(10, Settings::default(), &[]);
        let a: Arc<str> = Arc::from("a");
        g.join(a.clone(), tp.0.clone(), 20, true, 0);
        let (mut id, mut fx) = (0, Effects::default());
        assert_eq!(g.acquire(&a, 3, usize::MAX, 0, &mut id, &mut fx).len(), 3);
        // The log now ends at 6: offsets 6-9 are gone (none held).
        let p = g.partitions.get_mut(&tp).expect("partition");
        assert!(p.truncate_to(6).is_empty());
        assert_eq!(p.cursor, 6);
        // New records take offsets 6.. again and are delivered.
        p.load((6..8).map(|o| rec(o, None)).collect(), 8);
        let d = g.acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx);
        let offsets: Vec<i64> = d.iter().map(|d| d.record.offset).collect();
        assert_eq!(offsets, [3, 4, 5, 6, 7]);
    }
}
