//! One partition's window of a share group: which records are available,
//! locked or finished, and the indexes that keep acquire and expiry
//! proportional to the work.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use super::{Finished, MAX_WINDOW};
use crate::broker::FetchedRecord;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum State {
    Available,
    Locked {
        member: Arc<str>,
        delivery_id: u64,
        deadline: i64,
    },
    Finished(Finished),
}

#[derive(Debug, Clone)]
pub(super) struct Rec {
    /// `None` until read from the log (replayed state beyond the cursor).
    pub(super) record: Option<FetchedRecord>,
    pub(super) state: State,
    pub(super) deliveries: u32,
    pub(super) not_before: i64,
    pub(super) reason: Option<String>,
    /// Given up on (rejected or out of deliveries), but its dead letter is
    /// not written yet: it is never delivered again, and the dead letter
    /// is retried.
    pub(super) dead_letter: Option<Finished>,
}

impl Rec {
    pub(super) fn new() -> Self {
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
    pub(super) recs: BTreeMap<i64, Rec>,
    /// Read, available, due now.
    pub(super) ready: BTreeSet<i64>,
    /// Released with a delay: (not before, offset).
    pub(super) delayed: BTreeSet<(i64, i64)>,
    /// Locked: (deadline, offset).
    pub(super) locks: BTreeSet<(i64, i64)>,
    /// Unfinished read records by key (records with a key only): the first
    /// of each is its key's head, the only one key-ordered delivery may
    /// hand out.
    keys: HashMap<Bytes, BTreeSet<i64>>,
    /// Ready records a key-ordered acquire may hand out: those without a
    /// key, and those at their key's head. Acquire takes from the front,
    /// never scanning past the records it hands out.
    pub(super) eligible: BTreeSet<i64>,
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
            let key = r.key.clone();
            let rec = self.recs.entry(offset).or_insert_with(Rec::new);
            rec.record = Some(r);
            let available = rec.state == State::Available;
            let finished = matches!(rec.state, State::Finished(_));
            if let (Some(k), false) = (key, finished) {
                self.keys.entry(k).or_default().insert(offset);
            }
            if available {
                self.mark_ready(offset);
            }
        }
        self.cursor = self.cursor.max(next_offset);
        self.advance();
    }

    fn key_of(&self, offset: i64) -> Option<&Bytes> {
        self.recs.get(&offset)?.record.as_ref()?.key.as_ref()
    }

    /// `offset` is ready to be handed out.
    pub(super) fn mark_ready(&mut self, offset: i64) {
        self.ready.insert(offset);
        let head = match self.key_of(offset) {
            None => true,
            Some(k) => self.keys.get(k).and_then(|s| s.first()) == Some(&offset),
        };
        if head {
            self.eligible.insert(offset);
        }
    }

    /// `offset` is no longer ready (handed out, or gone).
    pub(super) fn unmark_ready(&mut self, offset: i64) {
        self.ready.remove(&offset);
        self.eligible.remove(&offset);
    }

    /// `offset` is finished or gone: its key's next record may become the
    /// head. Call before its record is dropped.
    pub(super) fn untrack(&mut self, offset: i64) {
        let Some(k) = self.key_of(offset).cloned() else {
            return;
        };
        let Some(set) = self.keys.get_mut(&k) else {
            return;
        };
        let was_head = set.first() == Some(&offset);
        set.remove(&offset);
        let next = set.first().copied();
        if set.is_empty() {
            self.keys.remove(&k);
        }
        if let (true, Some(n)) = (was_head, next) {
            if self.ready.contains(&n) {
                self.eligible.insert(n);
            }
        }
    }

    /// Forgets every record (the window restarts at a new start).
    pub(super) fn clear(&mut self) {
        self.recs.clear();
        self.ready.clear();
        self.delayed.clear();
        self.locks.clear();
        self.keys.clear();
        self.eligible.clear();
    }

    /// Moves `start` past finished records (and past offsets the log no
    /// longer has, when `log_start` is above it).
    pub(super) fn advance(&mut self) {
        while let Some(e) = self.recs.first_entry() {
            let o = *e.key();
            if o < self.start {
                self.unmark_ready(o);
                self.untrack(o);
                self.recs.remove(&o);
                continue;
            }
            if o != self.start || !matches!(e.get().state, State::Finished(_)) {
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
        if log_start <= self.start {
            return Vec::new();
        }
        let dropped = self.remove_records(..log_start);
        self.start = log_start;
        self.cursor = self.cursor.max(log_start);
        dropped
    }

    /// The log ends below the cursor (a tail lost to a power failure):
    /// what the window held at or past `log_end` no longer exists, and new
    /// records will take those offsets again. Returns the dropped locks.
    #[must_use]
    pub fn truncate_to(&mut self, log_end: i64) -> Vec<(u64, Arc<str>)> {
        if log_end >= self.cursor {
            return Vec::new();
        }
        let dropped = self.remove_records(log_end..);
        self.cursor = log_end;
        self.start = self.start.min(log_end);
        dropped
    }

    /// Removes the records at `offsets` from the window and its indexes;
    /// returns the locks they had (delivery id and member).
    fn remove_records(&mut self, offsets: impl std::ops::RangeBounds<i64>) -> Vec<(u64, Arc<str>)> {
        let mut dropped = Vec::new();
        let gone: Vec<i64> = self.recs.range(offsets).map(|(&o, _)| o).collect();
        for o in gone {
            self.unmark_ready(o);
            self.untrack(o);
            let Some(r) = self.recs.remove(&o) else {
                continue;
            };
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
        dropped
    }
}
