//! One consumer group as a pure state machine: membership, the target
//! assignment, reconciliation, fencing and committed offsets.
//!
//! Time is a parameter (ms since the epoch), never read here, and nothing
//! here does I/O: each call reports in a [`Dirty`] what changed, and the
//! async shell in [`super`] persists exactly that before answering.
//!
//! # Protocol (in the spirit of Kafka's KIP-848)
//!
//! A member heartbeats with its member epoch: 0 to join, -1 to leave, and
//! otherwise the epoch of the last assignment it has *applied*. The
//! coordinator answers with an epoch and an assignment. When the answer
//! changes the assignment it carries a new epoch, and the member's next
//! heartbeat with that epoch confirms it has stopped consuming every
//! partition the new assignment no longer holds.
//!
//! The coordinator keeps, per member, the last confirmed assignment and at
//! most one sent but unconfirmed one (`pending`). The member may be
//! consuming either, so both count as its partitions; a partition goes to a
//! new owner only once it is in no other live member's confirmed or pending
//! assignment. Hence no two live members ever own one partition. Eviction
//! (session timeout, or a revocation unconfirmed past the rebalance
//! timeout) frees a member's partitions at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::assignor::{assign, Assignment, Tp};
use super::error::{CoordinatorError, Result};

/// Member epoch that joins (or rejoins) a group.
pub const JOIN_EPOCH: i32 = 0;
/// Member epoch that leaves a group.
pub const LEAVE_EPOCH: i32 = -1;

/// Broker-wide limits and defaults of groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Session timeout of members that ask for none.
    pub default_session_timeout_ms: i32,
    /// Smallest session timeout a member may ask for.
    pub min_session_timeout_ms: i32,
    /// Largest session timeout a member may ask for.
    pub max_session_timeout_ms: i32,
    /// Heartbeat interval (a member's is at most a third of its session
    /// timeout).
    pub heartbeat_interval_ms: i32,
    /// Rebalance timeout of members that ask for none: how long a member
    /// may take to confirm a revocation before it is evicted.
    pub default_rebalance_timeout_ms: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_session_timeout_ms: 10_000,
            min_session_timeout_ms: 1_000,
            max_session_timeout_ms: 300_000,
            heartbeat_interval_ms: 3_000,
            default_rebalance_timeout_ms: 60_000,
        }
    }
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Next offset to consume.
    pub offset: i64,
    /// Client's metadata string.
    pub metadata: String,
    /// When it was committed (ms).
    pub commit_ms: i64,
    /// The topic's id (incarnation) when it was committed: an offset of a
    /// deleted topic never applies to a new topic of the same name. 0 in
    /// offsets committed before ids were recorded.
    pub topic_id: u64,
}

/// An assignment sent to a member and not yet confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its member epoch.
    pub epoch: i32,
    /// The partitions.
    pub assignment: Assignment,
    /// When it was sent (ms).
    pub sent_ms: i64,
}

/// A live member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Member id.
    pub id: String,
    /// Client's self-description.
    pub client_id: String,
    /// Topics subscribed to.
    pub subscriptions: BTreeSet<Arc<str>>,
    /// Evicted this long after its last heartbeat.
    pub session_timeout_ms: i32,
    /// Evicted if a revocation stays unconfirmed this long.
    pub rebalance_timeout_ms: i32,
    /// Epoch of the last confirmed assignment (0 right after joining).
    pub epoch: i32,
    /// The last confirmed assignment.
    pub owned: Assignment,
    /// Sent, not yet confirmed.
    pub pending: Option<Pending>,
    /// What the assignor wants this member to own.
    pub target: Assignment,
    /// Evicted after this (ms); not persisted.
    pub deadline_ms: i64,
}

impl Member {
    /// Whether the member may be consuming `tp` (confirmed or pending).
    pub fn may_own(&self, tp: &Tp) -> bool {
        self.owned.contains(tp)
            || self
                .pending
                .as_ref()
                .is_some_and(|p| p.assignment.contains(tp))
    }

    /// Everything the member may be consuming.
    pub fn may_own_all(&self) -> Assignment {
        let mut all = self.owned.clone();
        if let Some(p) = &self.pending {
            all.extend(p.assignment.iter().cloned());
        }
        all
    }

    /// The newest epoch handed to the member.
    pub fn latest_epoch(&self) -> i32 {
        self.pending.as_ref().map_or(self.epoch, |p| p.epoch)
    }

    /// Whether the member owns exactly its target, with nothing pending.
    pub fn reconciled(&self) -> bool {
        self.pending.is_none() && self.owned == self.target
    }

    /// The heartbeat interval this member is told.
    fn interval(&self, limits: &Limits) -> i32 {
        limits
            .heartbeat_interval_ms
            .min(self.session_timeout_ms / 3)
            .max(1)
    }
}

/// A heartbeat, already decoded and with a member id (the shell makes one
/// up for a joining member that brings none).
#[derive(Debug, Clone, Default)]
pub struct HeartbeatRequest {
    /// Member id.
    pub member_id: String,
    /// 0 join, -1 leave, else the epoch of the applied assignment.
    pub member_epoch: i32,
    /// Client's self-description (kept from the join).
    pub client_id: String,
    /// Topics (validated names).
    pub subscriptions: Vec<String>,
    /// Session timeout asked for at join.
    pub session_timeout_ms: Option<i32>,
    /// Rebalance timeout asked for at join.
    pub rebalance_timeout_ms: Option<i32>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatResponse {
    /// Member id.
    pub member_id: String,
    /// Epoch of `assignment` (-1 after leaving).
    pub member_epoch: i32,
    /// Partitions the member owns now.
    pub assignment: Assignment,
    /// When to heartbeat next (ms).
    pub heartbeat_interval_ms: i32,
}

/// What a call changed, to persist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// The group's own record.
    pub group: bool,
    /// Members whose record changed.
    pub members: BTreeSet<String>,
    /// Members gone.
    pub removed: BTreeSet<String>,
}

/// Overall state, as described to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members.
    Empty,
    /// Some member does not yet own exactly its target.
    Reconciling,
    /// Every member owns its target.
    Stable,
}

impl GroupState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::Reconciling => "reconciling",
            GroupState::Stable => "stable",
        }
    }
}

/// A consumer group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    /// Name.
    pub name: String,
    /// Version of the target assignment.
    pub epoch: i32,
    /// Last member epoch handed out (member epochs are unique in a group,
    /// so a zombie's epoch never matches a later assignment).
    pub last_member_epoch: i32,
    /// Live members by id.
    pub members: BTreeMap<String, Member>,
    /// Partition counts the target was computed with; not persisted.
    pub counts: BTreeMap<Arc<str>, i32>,
    /// Committed offsets.
    pub offsets: BTreeMap<Tp, Committed>,
}

impl Group {
    /// An empty group.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Overall state.
    pub fn state(&self) -> GroupState {
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.members.values().all(Member::reconciled) {
            GroupState::Stable
        } else {
            GroupState::Reconciling
        }
    }

    /// Handles a heartbeat at `now`. `count` gives a topic's partition
    /// count (0 if it does not exist).
    pub fn heartbeat(
        &mut self,
        req: HeartbeatRequest,
        now: i64,
        count: &dyn Fn(&str) -> i32,
        limits: &Limits,
        dirty: &mut Dirty,
    ) -> Result<HeartbeatResponse> {
        let id = req.member_id.clone();
        let mut recompute = false;
        match req.member_epoch {
            LEAVE_EPOCH => {
                if self.members.remove(&id).is_some() {
                    dirty.removed.insert(id.clone());
                    self.recompute(count, dirty);
                }
                return Ok(HeartbeatResponse {
                    member_id: id,
                    member_epoch: LEAVE_EPOCH,
                    assignment: Assignment::new(),
                    heartbeat_interval_ms: 0,
                });
            }
            JOIN_EPOCH => {
                let session = match req.session_timeout_ms {
                    None | Some(0) => limits.default_session_timeout_ms,
                    Some(ms) => {
                        if !(limits.min_session_timeout_ms..=limits.max_session_timeout_ms)
                            .contains(&ms)
                        {
                            return Err(CoordinatorError::invalid(format!(
                                "session_timeout_ms {ms} must be in [{}, {}] (0: the broker's default {})",
                                limits.min_session_timeout_ms,
                                limits.max_session_timeout_ms,
                                limits.default_session_timeout_ms
                            )));
                        }
                        ms
                    }
                };
                let rebalance = match req.rebalance_timeout_ms {
                    None | Some(0) => limits.default_rebalance_timeout_ms,
                    Some(ms) if (1..=3_600_000).contains(&ms) => ms,
                    Some(ms) => {
                        return Err(CoordinatorError::invalid(format!(
                            "rebalance_timeout_ms {ms} must be in [1, 3600000] (0: the broker's default {})",
                            limits.default_rebalance_timeout_ms
                        )))
                    }
                };
                // A rejoin (after being fenced) owns nothing any more; its
                // old target is kept so the assignor hands it back.
                let target = self
                    .members
                    .get(&id)
                    .map(|m| m.target.clone())
                    .unwrap_or_default();
                self.members.insert(
                    id.clone(),
                    Member {
                        id: id.clone(),
                        client_id: req.client_id.clone(),
                        subscriptions: BTreeSet::new(),
                        session_timeout_ms: session,
                        rebalance_timeout_ms: rebalance,
                        epoch: JOIN_EPOCH,
                        owned: Assignment::new(),
                        pending: None,
                        target,
                        deadline_ms: 0,
                    },
                );
                dirty.members.insert(id.clone());
                recompute = true;
            }
            epoch if epoch > 0 => {
                let member = self.members.get_mut(&id).ok_or_else(|| {
                    CoordinatorError::UnknownMember {
                        group: self.name.clone(),
                        member: id.clone(),
                    }
                })?;
                if epoch != member.epoch {
                    match member.pending.take() {
                        Some(p) if p.epoch == epoch => {
                            member.epoch = p.epoch;
                            member.owned = p.assignment;
                            dirty.members.insert(id.clone());
                        }
                        other => {
                            member.pending = other;
                            return Err(CoordinatorError::FencedEpoch {
                                group: self.name.clone(),
                                member: id.clone(),
                                epoch,
                                current: member.latest_epoch(),
                            });
                        }
                    }
                }
            }
            epoch => {
                return Err(CoordinatorError::invalid(format!(
                    "member_epoch {epoch} must be 0 (join), -1 (leave) or an epoch the coordinator gave"
                )))
            }
        }

        let member = self.members.get_mut(&id).expect("member present");
        let subs: BTreeSet<Arc<str>> = req
            .subscriptions
            .iter()
            .map(|t| Arc::from(t.as_str()))
            .collect();
        if subs != member.subscriptions {
            member.subscriptions = subs;
            dirty.members.insert(id.clone());
            recompute = true;
        }
        member.deadline_ms = now.saturating_add(i64::from(member.session_timeout_ms));
        if recompute || self.counts_changed(count) {
            self.recompute(count, dirty);
        }
        Ok(self.reconcile(&id, now, limits, dirty))
    }

    /// Whether a subscribed topic's partition count differs from the one
    /// the target was computed with.
    fn counts_changed(&self, count: &dyn Fn(&str) -> i32) -> bool {
        let topics: BTreeSet<&Arc<str>> = self
            .members
            .values()
            .flat_map(|m| m.subscriptions.iter())
            .collect();
        topics
            .into_iter()
            .any(|t| self.counts.get(t).copied().unwrap_or(0) != count(t))
    }

    /// Recomputes the target assignment.
    fn recompute(&mut self, count: &dyn Fn(&str) -> i32, dirty: &mut Dirty) {
        let subs: BTreeMap<String, BTreeSet<Arc<str>>> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.subscriptions.clone()))
            .collect();
        let counts: BTreeMap<Arc<str>, i32> = subs
            .values()
            .flatten()
            .map(|t| (t.clone(), count(t).max(0)))
            .collect();
        let previous: BTreeMap<String, Assignment> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.target.clone()))
            .collect();
        let targets = assign(&subs, &counts, &previous);
        for (id, target) in targets {
            if let Some(m) = self.members.get_mut(&id) {
                if m.target != target {
                    m.target = target;
                    dirty.members.insert(id);
                }
            }
        }
        self.counts = counts;
        self.epoch += 1;
        dirty.group = true;
    }

    /// Moves member `id` towards its target as far as the others allow and
    /// answers it.
    fn reconcile(
        &mut self,
        id: &str,
        now: i64,
        limits: &Limits,
        dirty: &mut Dirty,
    ) -> HeartbeatResponse {
        let member = &self.members[id];
        let interval = member.interval(limits);
        if let Some(p) = &member.pending {
            // One unconfirmed assignment at a time: repeat it.
            return HeartbeatResponse {
                member_id: id.to_string(),
                member_epoch: p.epoch,
                assignment: p.assignment.clone(),
                heartbeat_interval_ms: interval,
            };
        }
        let mut next: Assignment = member.owned.intersection(&member.target).cloned().collect();
        let mut blocked = false;
        for tp in member.target.difference(&member.owned) {
            let held = self.members.values().any(|o| o.id != id && o.may_own(tp));
            if held {
                blocked = true;
            } else {
                next.insert(tp.clone());
            }
        }
        // While waiting for another member to give partitions up, look
        // again sooner than the interval.
        let interval = if blocked {
            (interval / 4).clamp(1, 500)
        } else {
            interval
        };
        if next == member.owned && member.epoch != JOIN_EPOCH {
            return HeartbeatResponse {
                member_id: id.to_string(),
                member_epoch: member.epoch,
                assignment: next,
                heartbeat_interval_ms: interval,
            };
        }
        self.last_member_epoch += 1;
        let epoch = self.last_member_epoch;
        dirty.group = true;
        dirty.members.insert(id.to_string());
        let member = self.members.get_mut(id).expect("member present");
        member.pending = Some(Pending {
            epoch,
            assignment: next.clone(),
            sent_ms: now,
        });
        HeartbeatResponse {
            member_id: id.to_string(),
            member_epoch: epoch,
            assignment: next,
            heartbeat_interval_ms: interval,
        }
    }

    /// Evicts members whose session expired, or whose revocation stayed
    /// unconfirmed past their rebalance timeout. Returns their ids.
    pub fn expire(
        &mut self,
        now: i64,
        count: &dyn Fn(&str) -> i32,
        dirty: &mut Dirty,
    ) -> Vec<String> {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                let revoking_too_long = m.pending.as_ref().is_some_and(|p| {
                    !m.owned.is_subset(&p.assignment)
                        && now.saturating_sub(p.sent_ms) > i64::from(m.rebalance_timeout_ms)
                });
                now > m.deadline_ms || revoking_too_long
            })
            .map(|m| m.id.clone())
            .collect();
        if !gone.is_empty() {
            for id in &gone {
                self.members.remove(id);
                dirty.members.remove(id);
                dirty.removed.insert(id.clone());
            }
            self.recompute(count, dirty);
        }
        gone
    }

    /// Checks that member `member_id` at `epoch` may commit offsets of
    /// `tps`. An empty member id commits for a group without live members
    /// (tools, or consumers that assign partitions themselves).
    pub fn check_commit<'a>(
        &self,
        member_id: &str,
        epoch: i32,
        mut tps: impl Iterator<Item = &'a Tp>,
    ) -> Result<()> {
        if member_id.is_empty() {
            if !self.members.is_empty() {
                return Err(CoordinatorError::GroupNotEmpty {
                    group: self.name.clone(),
                    members: self.members.len(),
                    action: "commit without a member id",
                });
            }
            return Ok(());
        }
        let member =
            self.members
                .get(member_id)
                .ok_or_else(|| CoordinatorError::UnknownMember {
                    group: self.name.clone(),
                    member: member_id.to_string(),
                })?;
        if epoch != member.epoch && member.pending.as_ref().is_none_or(|p| p.epoch != epoch) {
            return Err(CoordinatorError::FencedEpoch {
                group: self.name.clone(),
                member: member_id.to_string(),
                epoch,
                current: member.latest_epoch(),
            });
        }
        if let Some(tp) = tps.find(|tp| !member.may_own(tp)) {
            return Err(CoordinatorError::NotOwned {
                group: self.name.clone(),
                member: member_id.to_string(),
                partition: tp.to_string(),
            });
        }
        Ok(())
    }

    /// Whether the group holds nothing worth keeping.
    pub fn is_vacant(&self) -> bool {
        self.members.is_empty() && self.offsets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        default_session_timeout_ms: 10_000,
        min_session_timeout_ms: 1_000,
        max_session_timeout_ms: 300_000,
        heartbeat_interval_ms: 3_000,
        default_rebalance_timeout_ms: 60_000,
    };

    fn six(_: &str) -> i32 {
        6
    }

    fn hb(g: &mut Group, id: &str, epoch: i32, now: i64) -> Result<HeartbeatResponse> {
        g.heartbeat(
            HeartbeatRequest {
                member_id: id.into(),
                member_epoch: epoch,
                subscriptions: vec!["t".into()],
                ..Default::default()
            },
            now,
            &six,
            &LIMITS,
            &mut Dirty::default(),
        )
    }

    /// No partition in two members' confirmed-or-pending sets.
    fn assert_exclusive(g: &Group) {
        let mut seen = BTreeMap::new();
        for m in g.members.values() {
            for tp in m.may_own_all() {
                if let Some(other) = seen.insert(tp.clone(), m.id.clone()) {
                    panic!("{tp} owned by {other} and {}", m.id);
                }
            }
        }
    }

    /// Heartbeats every member, each acking what it got, until stable.
    fn settle(g: &mut Group, epochs: &mut BTreeMap<String, i32>, now: i64) {
        for _ in 0..20 {
            let ids: Vec<String> = epochs.keys().cloned().collect();
            for id in ids {
                let r = hb(g, &id, epochs[&id], now).expect("heartbeat");
                epochs.insert(id, r.member_epoch);
                assert_exclusive(g);
            }
            if g.state() == GroupState::Stable {
                return;
            }
        }
        panic!("group did not settle: {g:#?}");
    }

    #[test]
    fn join_ack_rebalance_and_revocation_order() {
        let mut g = Group::new("g");
        let mut epochs = BTreeMap::new();
        for id in ["a", "b", "c"] {
            let r = hb(&mut g, id, JOIN_EPOCH, 0).expect("join");
            epochs.insert(id.to_string(), r.member_epoch);
        }
        settle(&mut g, &mut epochs, 0);
        for m in g.members.values() {
            assert_eq!(m.owned.len(), 2);
        }
        let before: BTreeMap<String, Assignment> = g
            .members
            .iter()
            .map(|(k, m)| (k.clone(), m.owned.clone()))
            .collect();

        // d joins: it gets nothing until the loser confirms its revocation.
        let r = hb(&mut g, "d", JOIN_EPOCH, 10).expect("join d");
        assert!(r.assignment.is_empty(), "{r:?}");
        assert!(
            r.heartbeat_interval_ms <= 500,
            "waiting member polls sooner"
        );
        epochs.insert("d".into(), r.member_epoch);
        settle(&mut g, &mut epochs, 10);
        let moved: usize = before
            .iter()
            .map(|(k, p)| p.difference(&g.members[k].owned).count())
            .sum();
        assert_eq!(moved, 1);
        assert_eq!(g.members["d"].owned.len(), 1);
    }

    #[test]
    fn stale_epochs_and_unknown_members_are_fenced() {
        let mut g = Group::new("g");
        let r = hb(&mut g, "a", JOIN_EPOCH, 0).expect("join");
        let e1 = r.member_epoch;
        hb(&mut g, "a", e1, 0).expect("ack");
        // b joins; a must give up 3 partitions and gets a new epoch.
        hb(&mut g, "b", JOIN_EPOCH, 0).expect("join b");
        let r = hb(&mut g, "a", e1, 0).expect("a told to revoke");
        let e2 = r.member_epoch;
        assert!(e2 > e1);
        assert_eq!(r.assignment.len(), 3);
        // Commits: a may still commit a partition it is giving up (before
        // confirming), at either epoch.
        let revoked: Vec<Tp> = g.members["a"]
            .owned
            .difference(&r.assignment)
            .cloned()
            .collect();
        g.check_commit("a", e1, revoked.iter())
            .expect("final commit before ack");
        hb(&mut g, "a", e2, 0).expect("ack revocation");
        let err = g
            .check_commit("a", e2, revoked.iter())
            .expect_err("no longer owned");
        assert!(matches!(err, CoordinatorError::NotOwned { .. }), "{err}");
        let err = g
            .check_commit("a", e1, r.assignment.iter())
            .expect_err("stale");
        assert!(
            matches!(err, CoordinatorError::FencedEpoch { current, .. } if current == e2),
            "{err}"
        );
        let err = hb(&mut g, "a", e1, 0).expect_err("stale heartbeat");
        assert!(matches!(err, CoordinatorError::FencedEpoch { .. }));
        let err = hb(&mut g, "zombie", 7, 0).expect_err("unknown");
        assert!(matches!(err, CoordinatorError::UnknownMember { .. }));
        let err = g
            .check_commit("", -1, r.assignment.iter())
            .expect_err("group has members");
        assert!(matches!(err, CoordinatorError::GroupNotEmpty { .. }));
    }

    #[test]
    fn session_timeout_evicts_and_frees_partitions_at_once() {
        let mut g = Group::new("g");
        let mut epochs = BTreeMap::new();
        for id in ["a", "b"] {
            let r = hb(&mut g, id, JOIN_EPOCH, 0).expect("join");
            epochs.insert(id.to_string(), r.member_epoch);
        }
        settle(&mut g, &mut epochs, 0);
        // b keeps heartbeating; a goes silent.
        let r = hb(&mut g, "b", epochs["b"], 9_000).expect("b");
        assert_eq!(r.assignment.len(), 3);
        let mut dirty = Dirty::default();
        assert!(g.expire(10_000, &six, &mut dirty).is_empty());
        assert_eq!(g.expire(10_001, &six, &mut dirty), vec!["a".to_string()]);
        assert!(dirty.removed.contains("a"));
        let r = hb(&mut g, "b", epochs["b"], 10_002).expect("b after eviction");
        assert_eq!(
            r.assignment.len(),
            6,
            "all partitions at the next heartbeat"
        );
        assert!(matches!(
            hb(&mut g, "a", epochs["a"], 10_003),
            Err(CoordinatorError::UnknownMember { .. })
        ));
    }

    #[test]
    fn unconfirmed_revocation_is_evicted_after_the_rebalance_timeout() {
        let mut g = Group::new("g");
        let r = hb(&mut g, "a", JOIN_EPOCH, 0).expect("join");
        hb(&mut g, "a", r.member_epoch, 0).expect("ack");
        let e = g.members["a"].epoch;
        hb(&mut g, "b", JOIN_EPOCH, 0).expect("join b");
        hb(&mut g, "a", e, 0).expect("revocation sent");
        // a keeps heartbeating with its old epoch but never confirms.
        hb(&mut g, "a", e, 59_000).expect("still old epoch");
        let eb = g.members["b"].latest_epoch();
        hb(&mut g, "b", eb, 59_000).expect("b");
        let mut dirty = Dirty::default();
        assert_eq!(g.expire(60_001, &six, &mut dirty), vec!["a".to_string()]);
    }

    #[test]
    fn session_timeout_outside_limits_is_refused_with_the_range() {
        let mut g = Group::new("g");
        let err = g
            .heartbeat(
                HeartbeatRequest {
                    member_id: "a".into(),
                    session_timeout_ms: Some(10),
                    ..Default::default()
                },
                0,
                &six,
                &LIMITS,
                &mut Dirty::default(),
            )
            .expect_err("too short");
        assert!(err.to_string().contains("[1000, 300000]"), "{err}");
    }

    #[test]
    fn partition_count_growth_rebalances() {
        let mut g = Group::new("g");
        let r = hb(&mut g, "a", JOIN_EPOCH, 0).expect("join");
        hb(&mut g, "a", r.member_epoch, 0).expect("ack");
        let epoch = g.members["a"].epoch;
        let eight = |_: &str| 8;
        let r = g
            .heartbeat(
                HeartbeatRequest {
                    member_id: "a".into(),
                    member_epoch: epoch,
                    subscriptions: vec!["t".into()],
                    ..Default::default()
                },
                1,
                &eight,
                &LIMITS,
                &mut Dirty::default(),
            )
            .expect("hb");
        assert_eq!(r.assignment.len(), 8);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join(u8),
        Beat(u8),
        Ack(u8),
        Leave(u8),
        Tick(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..5).prop_map(Op::Join),
            (0u8..5).prop_map(Op::Beat),
            (0u8..5).prop_map(Op::Ack),
            (0u8..5).prop_map(Op::Leave),
            (0u16..12_000).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Through any interleaving of joins, heartbeats (acking or not),
        /// leaves and evictions, no partition ever has two possible owners,
        /// and a member only ever consumes what the coordinator allows.
        #[test]
        fn never_two_owners(ops in prop::collection::vec(op(), 1..200)) {
            let mut g = Group::new("g");
            let mut now = 0i64;
            // Per member: the epoch it has applied, and the last response.
            let mut applied: BTreeMap<String, i32> = BTreeMap::new();
            let mut last: BTreeMap<String, HeartbeatResponse> = BTreeMap::new();
            for op in ops {
                let mut dirty = Dirty::default();
                match op {
                    Op::Join(m) => {
                        let id = format!("m{m}");
                        let r = hb(&mut g, &id, JOIN_EPOCH, now).expect("join");
                        applied.insert(id.clone(), JOIN_EPOCH);
                        last.insert(id, r);
                    }
                    Op::Beat(m) | Op::Ack(m) => {
                        let id = format!("m{m}");
                        let Some(&epoch) = applied.get(&id) else { continue };
                        // Ack: apply the last response first.
                        let epoch = match (&op, last.get(&id)) {
                            (Op::Ack(_), Some(r)) => r.member_epoch,
                            _ => epoch,
                        };
                        match hb(&mut g, &id, epoch, now) {
                            Ok(r) => {
                                applied.insert(id.clone(), epoch);
                                last.insert(id, r);
                            }
                            Err(CoordinatorError::UnknownMember { .. })
                            | Err(CoordinatorError::FencedEpoch { .. }) => {
                                applied.remove(&id);
                                last.remove(&id);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    Op::Leave(m) => {
                        let id = format!("m{m}");
                        hb(&mut g, &id, LEAVE_EPOCH, now).expect("leave");
                        applied.remove(&id);
                        last.remove(&id);
                    }
                    Op::Tick(ms) => {
                        now += i64::from(ms);
                        for id in g.expire(now, &six, &mut dirty) {
                            applied.remove(&id);
                            last.remove(&id);
                        }
                    }
                }
                assert_exclusive(&g);
                // What each live member has applied is within what the
                // coordinator thinks it may own.
                for (id, epoch) in &applied {
                    let m = &g.members[id];
                    if *epoch == m.epoch {
                        prop_assert!(m.may_own_all().is_superset(&m.owned));
                    } else {
                        prop_assert_eq!(Some(*epoch), m.pending.as_ref().map(|p| p.epoch));
                    }
                }
            }
            // Once everyone acks repeatedly, the group settles on a
            // complete, balanced assignment.
            let mut epochs: BTreeMap<String, i32> = g
                .members
                .keys()
                .map(|id| (id.clone(), last.get(id).map_or(g.members[id].epoch, |r| r.member_epoch)))
                .collect();
            if !epochs.is_empty() {
                settle(&mut g, &mut epochs, now);
                let total: usize = g.members.values().map(|m| m.owned.len()).sum();
                prop_assert_eq!(total, 6);
            }
        }
    }
}
