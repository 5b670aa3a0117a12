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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::broker::FetchedRecord;

mod partition;
pub use partition::Partition;
use partition::{Rec, State};

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
    /// No lock, Pull session or delay ends before this (monotonic ms):
    /// [`ShareGroup::tick`] has nothing to do until then. Lowered whenever
    /// one is set; may be early (a lock acked since), never late.
    pub due: i64,
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
        if let Some(d) = deadline {
            self.due = self.due.min(d);
        }
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
        self.due = self.due.min(now + self.settings.lock_timeout_ms);
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
                    // (`unmark_ready`, with `rec` borrowed)
                    p.ready.remove(&offset);
                    p.eligible.remove(&offset);
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
                p.eligible.remove(&offset);
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
        if p.recs.contains_key(&offset) {
            p.unmark_ready(offset);
            p.untrack(offset);
        }
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
            self.due = self.due.min(retry_at);
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
            self.due = self.due.min(not_before);
        } else {
            rec.not_before = 0;
            p.mark_ready(offset);
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

    /// Whether `member` could be handed a record now: it has prefetch room
    /// and a partition of its topic has one ready (key-ordered: at its
    /// key's head). Partitions whose windows end at `cursor_behind` (a
    /// predicate on topic partition and cursor: the log has records past
    /// it) count too.
    pub fn could_deliver(&self, member: &str, cursor_behind: impl Fn(i32, i64) -> bool) -> bool {
        let Some(m) = self.members.get(member) else {
            return false;
        };
        if m.held >= m.prefetch {
            return false;
        }
        let key_ordered = self.settings.key_ordered;
        self.partitions
            .range((m.topic.clone(), 0)..)
            .take_while(|((t, _), _)| *t == m.topic)
            .any(|((_, p), part)| {
                let ready = if key_ordered {
                    !part.eligible.is_empty()
                } else {
                    !part.ready.is_empty()
                };
                ready || (part.room() > 0 && cursor_behind(*p, part.cursor))
            })
    }

    /// The earliest time a lock, Pull session or delay ends (`i64::MAX`
    /// if none).
    pub fn next_due(&self) -> i64 {
        let sessions = self.members.values().filter_map(|m| m.session_deadline);
        let partitions = self.partitions.values().flat_map(|p| {
            let lock = p.locks.first().map(|l| l.0);
            let delay = p.delayed.first().map(|d| d.0);
            lock.into_iter().chain(delay)
        });
        sessions.chain(partitions).min().unwrap_or(i64::MAX)
    }

    /// Expires locks and Pull sessions, and makes delayed records due;
    /// then sets [`ShareGroup::due`] to when there is work again.
    pub fn tick(&mut self, now: i64, fx: &mut Effects) {
        self.expire(now, fx);
        self.due = self.next_due();
    }

    fn expire(&mut self, now: i64, fx: &mut Effects) {
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
                    p.mark_ready(o);
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
            p.clear();
            p.placed = true;
        }
        for &(o, n) in delivered {
            if o >= p.start {
                p.recs.entry(o).or_insert_with(Rec::new).deliveries = n;
            }
        }
        for &(o, how) in finished {
            if o >= p.start {
                p.unmark_ready(o);
                p.untrack(o);
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

/// Bytes a delivery of `r` carries (key, value, headers, framing).
fn record_bytes(r: &FetchedRecord) -> usize {
    32 + r.key.as_ref().map_or(0, |k| k.len())
        + r.value.as_ref().map_or(0, |v| v.len())
        + r.headers
            .iter()
            .map(|h| 8 + h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>()
}

/// Key-ordered choice: in offset order, ready records without a key or at
/// their key's head (no earlier unfinished record of the key, which would
/// be locked or delayed). Kept as an index, so this is O(want).
fn key_ordered_pick(p: &Partition, want: usize) -> Vec<i64> {
    p.eligible.iter().take(want).copied().collect()
}

#[cfg(test)]
mod tests;
