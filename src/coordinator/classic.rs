//! Kafka's classic group protocol (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup): members join, the coordinator picks a leader that computes
//! the assignment on the client side, and hands each member its share.
//!
//! [`Groups`] is the pure state machine, with time passed in; it answers
//! calls at once or records [`Event`]s for calls that wait (a join waits
//! for the rebalance to complete, a follower's sync for the leader's).
//! [`ClassicGroups`] is the thin shell: one lock, and a waiter per waiting
//! call.
//!
//! Membership lives in memory on the coordinator; committed offsets are
//! the coordinator's (durable, shared with every protocol). After a
//! coordinator restart or move, members get UNKNOWN_MEMBER_ID and join
//! again, as Kafka clients do after a coordinator failover.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Longest a rebalance waits for members to rejoin, whatever they ask.
pub const MAX_REBALANCE_TIMEOUT_MS: i64 = 300_000;
/// Session timeouts a member may ask for.
pub const SESSION_TIMEOUT_RANGE_MS: (i32, i32) = (1_000, 300_000);
/// Most members in one group.
pub const MAX_MEMBERS: usize = 1_000;

/// Why a classic-protocol call failed (each is a Kafka error code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassicError {
    /// The member is not in the group.
    #[error("member is not in the group")]
    UnknownMember,
    /// The member is of another generation.
    #[error("generation {0} is not the group's")]
    IllegalGeneration(i32),
    /// A rebalance is under way: join again.
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    /// The member's protocol type or assignors do not match the group's.
    #[error("protocol type or assignors do not match the group's")]
    InconsistentProtocol,
    /// A new member must join again with this id (JoinGroup v4+).
    #[error("rejoin with member id {0}")]
    MemberIdRequired(String),
    /// Session timeout out of range.
    #[error("session timeout {0} ms is outside [1000, 300000]")]
    InvalidSessionTimeout(i32),
    /// The group is full.
    #[error("the group has {MAX_MEMBERS} members already")]
    GroupFull,
    /// The group is in use by the server-side (gRPC / KIP-848) protocol.
    #[error("the group is used by members of the server-side protocol")]
    OtherProtocol,
}

/// Where a classic group is in its rebalance cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassicState {
    /// No members.
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
}

impl ClassicState {
    /// Kafka's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            ClassicState::Empty => "Empty",
            ClassicState::PreparingRebalance => "PreparingRebalance",
            ClassicState::CompletingRebalance => "CompletingRebalance",
            ClassicState::Stable => "Stable",
        }
    }
}

/// A JoinGroup call.
#[derive(Debug, Clone)]
pub struct Join {
    /// Empty for a new member.
    pub member_id: String,
    /// Client's id.
    pub client_id: String,
    /// Client's address.
    pub client_host: String,
    /// Session timeout, ms.
    pub session_timeout_ms: i32,
    /// Rebalance timeout, ms (v0: the session timeout).
    pub rebalance_timeout_ms: i32,
    /// "consumer" for consumers.
    pub protocol_type: String,
    /// Assignors with their metadata, in preference order.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member gets its id first (MEMBER_ID_REQUIRED).
    pub id_round_trip: bool,
}

/// A completed join, for one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The member's id.
    pub member_id: String,
    /// The new generation.
    pub generation: i32,
    /// The chosen assignor.
    pub protocol: String,
    /// The leader's member id.
    pub leader: String,
    /// For the leader only: every member and its metadata.
    pub members: Vec<(String, Bytes)>,
}

/// Answers to waiting calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A join completed (or failed).
    Joined(String, String, Result<Joined, ClassicError>),
    /// A sync completed (or failed): the member's assignment.
    Synced(String, String, Result<Bytes, ClassicError>),
}

/// A member as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicMember {
    /// Member id.
    pub member_id: String,
    /// Client id.
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    /// Metadata of the chosen assignor.
    pub metadata: Bytes,
    /// Assignment.
    pub assignment: Bytes,
}

/// A group as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicDescription {
    /// State.
    pub state: ClassicState,
    /// Generation.
    pub generation: i32,
    /// Protocol type.
    pub protocol_type: String,
    /// Chosen assignor.
    pub protocol: String,
    /// Members.
    pub members: Vec<ClassicMember>,
}

#[derive(Debug, Clone)]
struct Member {
    client_id: String,
    client_host: String,
    session_timeout_ms: i64,
    rebalance_timeout_ms: i64,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: i64,
    /// Joined in the rebalance under way.
    joined: bool,
    /// Waiting for the leader's assignment.
    syncing: bool,
}

#[derive(Debug, Clone)]
struct Group {
    state: ClassicState,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Ids handed out by MEMBER_ID_REQUIRED, until they join (or expire).
    pending: BTreeMap<String, i64>,
    /// When the rebalance under way gives up on members not rejoined.
    deadline: i64,
}

impl Group {
    fn new() -> Self {
        Self {
            state: ClassicState::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            deadline: 0,
        }
    }

    /// Assignors every member supports.
    fn common_protocols(&self) -> Option<Vec<String>> {
        let mut it = self.members.values();
        let first = it.next()?;
        let mut names: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in it {
            names.retain(|n| m.protocols.iter().any(|(p, _)| p == n));
        }
        Some(names)
    }
}

/// Every classic group of one coordinator.
#[derive(Debug, Default)]
pub struct Groups {
    groups: BTreeMap<String, Group>,
    events: Vec<Event>,
    next_id: u64,
}

impl Groups {
    /// Answers for waiting calls since the last take.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// True if the group has members.
    pub fn has_members(&self, group: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| !g.members.is_empty())
    }

    /// Joins `group`. `Ok(id)`: the join waits for an [`Event::Joined`]
    /// for member `id`.
    pub fn join(&mut self, group: &str, j: Join, now: i64) -> Result<String, ClassicError> {
        let (lo, hi) = SESSION_TIMEOUT_RANGE_MS;
        if !(lo..=hi).contains(&j.session_timeout_ms) {
            return Err(ClassicError::InvalidSessionTimeout(j.session_timeout_ms));
        }
        let g = self
            .groups
            .entry(group.to_string())
            .or_insert_with(Group::new);
        g.pending.retain(|_, expires| *expires > now);
        if j.protocols.is_empty() {
            return Err(ClassicError::InconsistentProtocol);
        }
        if !g.members.is_empty() {
            let common = g.common_protocols().unwrap_or_default();
            let fits = j.protocols.iter().any(|(n, _)| common.contains(n));
            if j.protocol_type != g.protocol_type || !fits {
                return Err(ClassicError::InconsistentProtocol);
            }
        }
        let id = if j.member_id.is_empty() {
            self.next_id += 1;
            let id = format!(
                "{}-{}-{}",
                j.client_id,
                self.next_id,
                uuid::Uuid::new_v4().simple()
            );
            if j.id_round_trip {
                g.pending
                    .insert(id.clone(), now + i64::from(j.session_timeout_ms));
                return Err(ClassicError::MemberIdRequired(id));
            }
            id
        } else {
            if !g.members.contains_key(&j.member_id) && g.pending.remove(&j.member_id).is_none() {
                return Err(ClassicError::UnknownMember);
            }
            j.member_id.clone()
        };
        if !g.members.contains_key(&id) && g.members.len() >= MAX_MEMBERS {
            return Err(ClassicError::GroupFull);
        }
        if g.members.is_empty() {
            g.protocol_type = j.protocol_type.clone();
        }
        let m = g.members.entry(id.clone()).or_insert_with(|| Member {
            client_id: String::new(),
            client_host: String::new(),
            session_timeout_ms: 0,
            rebalance_timeout_ms: 0,
            protocols: Vec::new(),
            assignment: Bytes::new(),
            last_seen: now,
            joined: false,
            syncing: false,
        });
        m.client_id = j.client_id;
        m.client_host = j.client_host;
        m.session_timeout_ms = i64::from(j.session_timeout_ms);
        m.rebalance_timeout_ms = i64::from(j.rebalance_timeout_ms.max(j.session_timeout_ms))
            .min(MAX_REBALANCE_TIMEOUT_MS);
        m.protocols = j.protocols;
        m.last_seen = now;
        m.joined = true;
        if g.state != ClassicState::PreparingRebalance {
            Self::prepare(g, group, now, &mut self.events);
        }
        Self::maybe_complete(g, group, now, false, &mut self.events);
        Ok(id)
    }

    /// Starts a rebalance: waiting syncs fail, members must rejoin.
    fn prepare(g: &mut Group, name: &str, now: i64, events: &mut Vec<Event>) {
        for (id, m) in g.members.iter_mut() {
            if m.syncing {
                m.syncing = false;
                events.push(Event::Synced(
                    name.to_string(),
                    id.clone(),
                    Err(ClassicError::RebalanceInProgress),
                ));
            }
        }
        g.state = ClassicState::PreparingRebalance;
        let longest = g
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0);
        g.deadline = now + longest;
    }

    /// Completes the rebalance once every member has joined (or, when
    /// `deadline_passed`, with those that did).
    fn maybe_complete(
        g: &mut Group,
        name: &str,
        now: i64,
        deadline_passed: bool,
        events: &mut Vec<Event>,
    ) {
        if g.state != ClassicState::PreparingRebalance {
            return;
        }
        let all = g.members.values().all(|m| m.joined);
        if !all && !deadline_passed && now < g.deadline {
            return;
        }
        g.members.retain(|_, m| m.joined);
        g.generation += 1;
        if g.members.is_empty() {
            g.state = ClassicState::Empty;
            g.leader = None;
            g.protocol.clear();
            return;
        }
        let common = g.common_protocols().unwrap_or_default();
        if g.leader.as_ref().is_none_or(|l| !g.members.contains_key(l)) {
            g.leader = g.members.keys().next().cloned();
        }
        let leader = g.leader.clone().unwrap_or_default();
        // The leader's most preferred assignor that every member has.
        let protocol = g
            .members
            .get(&leader)
            .and_then(|m| {
                m.protocols
                    .iter()
                    .map(|(n, _)| n)
                    .find(|n| common.contains(n))
            })
            .cloned();
        let Some(protocol) = protocol else {
            for id in g.members.keys() {
                events.push(Event::Joined(
                    name.to_string(),
                    id.clone(),
                    Err(ClassicError::InconsistentProtocol),
                ));
            }
            g.members.clear();
            g.state = ClassicState::Empty;
            return;
        };
        g.protocol = protocol.clone();
        g.state = ClassicState::CompletingRebalance;
        let everyone: Vec<(String, Bytes)> = g
            .members
            .iter()
            .map(|(id, m)| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                (id.clone(), meta)
            })
            .collect();
        for (id, m) in g.members.iter_mut() {
            m.joined = false;
            m.last_seen = now;
            m.assignment = Bytes::new();
            events.push(Event::Joined(
                name.to_string(),
                id.clone(),
                Ok(Joined {
                    member_id: id.clone(),
                    generation: g.generation,
                    protocol: protocol.clone(),
                    leader: leader.clone(),
                    members: if *id == leader {
                        everyone.clone()
                    } else {
                        Vec::new()
                    },
                }),
            ));
        }
    }

    fn member<'a>(
        &'a mut self,
        group: &str,
        member: &str,
        generation: i32,
    ) -> Result<(&'a mut Group, &'a mut Vec<Event>), ClassicError> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or(ClassicError::UnknownMember)?;
        if !g.members.contains_key(member) {
            return Err(ClassicError::UnknownMember);
        }
        if generation != g.generation {
            return Err(ClassicError::IllegalGeneration(generation));
        }
        Ok((g, &mut self.events))
    }

    /// A SyncGroup call. `Ok(Some(a))`: the member's assignment now;
    /// `Ok(None)`: wait for [`Event::Synced`].
    pub fn sync(
        &mut self,
        group: &str,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: i64,
    ) -> Result<Option<Bytes>, ClassicError> {
        let (g, events) = self.member(group, member, generation)?;
        if let Some(m) = g.members.get_mut(member) {
            m.last_seen = now;
        }
        match g.state {
            ClassicState::PreparingRebalance | ClassicState::Empty => {
                Err(ClassicError::RebalanceInProgress)
            }
            ClassicState::Stable => Ok(g.members.get(member).map(|m| m.assignment.clone())),
            ClassicState::CompletingRebalance => {
                if g.leader.as_deref() != Some(member) {
                    if let Some(m) = g.members.get_mut(member) {
                        m.syncing = true;
                    }
                    return Ok(None);
                }
                let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                for (id, m) in g.members.iter_mut() {
                    m.assignment = given.remove(id).unwrap_or_default();
                    if m.syncing && id != member {
                        m.syncing = false;
                        events.push(Event::Synced(
                            group.to_string(),
                            id.clone(),
                            Ok(m.assignment.clone()),
                        ));
                    }
                }
                g.state = ClassicState::Stable;
                Ok(g.members.get(member).map(|m| m.assignment.clone()))
            }
        }
    }

    /// A Heartbeat call.
    pub fn heartbeat(
        &mut self,
        group: &str,
        member: &str,
        generation: i32,
        now: i64,
    ) -> Result<(), ClassicError> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or(ClassicError::UnknownMember)?;
        let Some(m) = g.members.get_mut(member) else {
            return Err(ClassicError::UnknownMember);
        };
        m.last_seen = now;
        if g.state == ClassicState::PreparingRebalance {
            return Err(ClassicError::RebalanceInProgress);
        }
        if generation != g.generation {
            return Err(ClassicError::IllegalGeneration(generation));
        }
        Ok(())
    }

    /// A member leaves; the others rebalance.
    pub fn leave(&mut self, group: &str, member: &str, now: i64) -> Result<(), ClassicError> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or(ClassicError::UnknownMember)?;
        let Some(m) = g.members.remove(member) else {
            return Err(ClassicError::UnknownMember);
        };
        if m.joined {
            self.events.push(Event::Joined(
                group.to_string(),
                member.to_string(),
                Err(ClassicError::UnknownMember),
            ));
        }
        if m.syncing {
            self.events.push(Event::Synced(
                group.to_string(),
                member.to_string(),
                Err(ClassicError::UnknownMember),
            ));
        }
        Self::removed(g, group, now, &mut self.events);
        Ok(())
    }

    /// After members left: a rebalance of the rest, or an empty group.
    fn removed(g: &mut Group, name: &str, now: i64, events: &mut Vec<Event>) {
        if g.members.is_empty() {
            g.state = ClassicState::Empty;
            g.generation += 1;
            g.leader = None;
            return;
        }
        if g.state != ClassicState::PreparingRebalance {
            Self::prepare(g, name, now, events);
        }
        Self::maybe_complete(g, name, now, false, events);
    }

    /// Expires members whose session lapsed and completes rebalances whose
    /// deadline passed.
    pub fn tick(&mut self, now: i64) {
        let mut empty = Vec::new();
        for (name, g) in self.groups.iter_mut() {
            g.pending.retain(|_, expires| *expires > now);
            // A member waiting in a join is alive; the rebalance deadline
            // bounds it instead.
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| !m.joined && now - m.last_seen > m.session_timeout_ms)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                if let Some(m) = g.members.remove(id) {
                    if m.syncing {
                        self.events.push(Event::Synced(
                            name.clone(),
                            id.clone(),
                            Err(ClassicError::UnknownMember),
                        ));
                    }
                }
            }
            if !expired.is_empty() {
                Self::removed(g, name, now, &mut self.events);
            }
            if g.state == ClassicState::PreparingRebalance && now >= g.deadline {
                Self::maybe_complete(g, name, now, true, &mut self.events);
            }
            if g.state == ClassicState::Empty && g.pending.is_empty() {
                empty.push(name.clone());
            }
        }
        for name in empty {
            self.groups.remove(&name);
        }
    }

    /// Checks an offset commit's member and generation. A commit with no
    /// member (generation -1) is allowed while the group has none.
    pub fn check_commit(
        &self,
        group: &str,
        member: &str,
        generation: i32,
    ) -> Result<(), ClassicError> {
        let g = match self.groups.get(group) {
            Some(g) if !g.members.is_empty() => g,
            _ if member.is_empty() && generation < 0 => return Ok(()),
            _ => return Err(ClassicError::UnknownMember),
        };
        if member.is_empty() && generation < 0 {
            return Err(ClassicError::IllegalGeneration(generation));
        }
        if !g.members.contains_key(member) {
            return Err(ClassicError::UnknownMember);
        }
        if g.state == ClassicState::PreparingRebalance {
            return Err(ClassicError::RebalanceInProgress);
        }
        if generation != g.generation {
            return Err(ClassicError::IllegalGeneration(generation));
        }
        Ok(())
    }

    /// A group's state and members.
    pub fn describe(&self, group: &str) -> Option<ClassicDescription> {
        let g = self.groups.get(group)?;
        Some(ClassicDescription {
            state: g.state,
            generation: g.generation,
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone(),
            members: g
                .members
                .iter()
                .map(|(id, m)| ClassicMember {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == g.protocol)
                        .or(m.protocols.first())
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Every group's name, state and member count.
    pub fn list(&self) -> Vec<(String, ClassicState, usize)> {
        self.groups
            .iter()
            .map(|(n, g)| (n.clone(), g.state, g.members.len()))
            .collect()
    }
}

type JoinReply = oneshot::Sender<Result<Joined, ClassicError>>;
type SyncReply = oneshot::Sender<Result<Bytes, ClassicError>>;

#[derive(Default)]
struct Shell {
    groups: Groups,
    joins: HashMap<(String, String), JoinReply>,
    syncs: HashMap<(String, String), SyncReply>,
}

impl Shell {
    fn deliver(&mut self) {
        for e in self.groups.take_events() {
            match e {
                Event::Joined(g, m, r) => {
                    if let Some(tx) = self.joins.remove(&(g, m)) {
                        let _ = tx.send(r);
                    }
                }
                Event::Synced(g, m, r) => {
                    if let Some(tx) = self.syncs.remove(&(g, m)) {
                        let _ = tx.send(r);
                    }
                }
            }
        }
    }
}

/// The async shell over [`Groups`]: calls that wait get a receiver.
pub struct ClassicGroups {
    /// Held only for one state-machine step and its deliveries; never
    /// across an await.
    inner: Mutex<Shell>,
    clock: crate::storage::Clock,
}

impl std::fmt::Debug for ClassicGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassicGroups").finish_non_exhaustive()
    }
}

impl ClassicGroups {
    /// Groups timed by `clock` (monotonic ms).
    pub fn new(clock: crate::storage::Clock) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Shell::default()),
            clock,
        })
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Joins; the receiver answers when the rebalance completes.
    pub fn join(
        &self,
        group: &str,
        j: Join,
    ) -> Result<oneshot::Receiver<Result<Joined, ClassicError>>, ClassicError> {
        let now = self.now();
        let mut s = self.inner.lock();
        let (tx, rx) = oneshot::channel();
        let id = s.groups.join(group, j, now)?;
        // A join replacing an earlier one of the same member answers the
        // earlier one as superseded.
        if let Some(old) = s.joins.insert((group.to_string(), id), tx) {
            let _ = old.send(Err(ClassicError::RebalanceInProgress));
        }
        s.deliver();
        Ok(rx)
    }

    /// Syncs; the receiver answers with the member's assignment.
    pub fn sync(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> oneshot::Receiver<Result<Bytes, ClassicError>> {
        let now = self.now();
        let mut s = self.inner.lock();
        let (tx, rx) = oneshot::channel();
        match s.groups.sync(group, member, generation, assignments, now) {
            Ok(Some(a)) => {
                let _ = tx.send(Ok(a));
            }
            Ok(None) => {
                s.syncs.insert((group.to_string(), member.to_string()), tx);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
        s.deliver();
        rx
    }

    /// A heartbeat.
    pub fn heartbeat(
        &self,
        group: &str,
        member: &str,
        generation: i32,
    ) -> Result<(), ClassicError> {
        let now = self.now();
        self.inner
            .lock()
            .groups
            .heartbeat(group, member, generation, now)
    }

    /// A member leaves.
    pub fn leave(&self, group: &str, member: &str) -> Result<(), ClassicError> {
        let now = self.now();
        let mut s = self.inner.lock();
        let r = s.groups.leave(group, member, now);
        s.deliver();
        r
    }

    /// Expires sessions and overdue rebalances.
    pub fn tick(&self) {
        let now = self.now();
        let mut s = self.inner.lock();
        s.groups.tick(now);
        s.deliver();
    }

    /// See [`Groups::check_commit`].
    pub fn check_commit(
        &self,
        group: &str,
        member: &str,
        generation: i32,
    ) -> Result<(), ClassicError> {
        self.inner
            .lock()
            .groups
            .check_commit(group, member, generation)
    }

    /// See [`Groups::has_members`].
    pub fn has_members(&self, group: &str) -> bool {
        self.inner.lock().groups.has_members(group)
    }

    /// See [`Groups::describe`].
    pub fn describe(&self, group: &str) -> Option<ClassicDescription> {
        self.inner.lock().groups.describe(group)
    }

    /// See [`Groups::list`].
    pub fn list(&self) -> Vec<(String, ClassicState, usize)> {
        self.inner.lock().groups.list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(id: &str, protocols: &[&str]) -> Join {
        Join {
            member_id: id.to_string(),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
                .collect(),
            id_round_trip: true,
        }
    }

    /// A member's id after the MEMBER_ID_REQUIRED round trip.
    fn new_member(g: &mut Groups, now: i64) -> String {
        match g.join("g", join("", &["range"]), now) {
            Err(ClassicError::MemberIdRequired(id)) => id,
            other => panic!("expected MEMBER_ID_REQUIRED, got {other:?}"),
        }
    }

    fn joined(events: &[Event]) -> Vec<Joined> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Joined(_, _, Ok(j)) => Some(j.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_lone_member_joins_leads_and_gets_its_assignment() {
        let mut g = Groups::default();
        let a = new_member(&mut g, 0);
        assert_eq!(g.join("g", join(&a, &["range"]), 1), Ok(a.clone()));
        let j = joined(&g.take_events());
        assert_eq!(j.len(), 1);
        assert_eq!((j[0].generation, j[0].leader.as_str()), (1, a.as_str()));
        assert_eq!(j[0].members.len(), 1, "the leader sees every member");
        let out = g.sync("g", &a, 1, vec![(a.clone(), Bytes::from_static(b"p0"))], 2);
        assert_eq!(out, Ok(Some(Bytes::from_static(b"p0"))));
        assert_eq!(g.heartbeat("g", &a, 1, 3), Ok(()));
        assert_eq!(g.check_commit("g", &a, 1), Ok(()));
        assert_eq!(
            g.check_commit("g", &a, 0),
            Err(ClassicError::IllegalGeneration(0))
        );
    }

    #[test]
    fn a_second_member_makes_the_first_rejoin_and_both_get_shares() {
        let mut g = Groups::default();
        let a = new_member(&mut g, 0);
        g.join("g", join(&a, &["range"]), 0).expect("join a");
        g.take_events();
        g.sync("g", &a, 1, vec![(a.clone(), Bytes::from_static(b"all"))], 0)
            .expect("sync");
        let b = new_member(&mut g, 10);
        g.join("g", join(&b, &["range"]), 10).expect("join b");
        assert!(joined(&g.take_events()).is_empty(), "waits for a to rejoin");
        assert_eq!(
            g.heartbeat("g", &a, 1, 20),
            Err(ClassicError::RebalanceInProgress)
        );
        assert_eq!(
            g.check_commit("g", &a, 1),
            Err(ClassicError::RebalanceInProgress)
        );
        g.join("g", join(&a, &["range"]), 30).expect("rejoin a");
        let j = joined(&g.take_events());
        assert_eq!(j.len(), 2);
        assert!(j.iter().all(|j| j.generation == 2 && j.leader == a));
        // The follower's sync waits for the leader's.
        assert_eq!(g.sync("g", &b, 2, vec![], 40), Ok(None));
        let given = vec![
            (a.clone(), Bytes::from_static(b"p0")),
            (b.clone(), Bytes::from_static(b"p1")),
        ];
        assert_eq!(
            g.sync("g", &a, 2, given, 50),
            Ok(Some(Bytes::from_static(b"p0")))
        );
        assert_eq!(
            g.take_events(),
            vec![Event::Synced(
                "g".into(),
                b.clone(),
                Ok(Bytes::from_static(b"p1"))
            )]
        );
    }

    #[test]
    fn a_silent_member_is_expired_and_the_rest_rebalance() {
        let mut g = Groups::default();
        let a = new_member(&mut g, 0);
        let b = new_member(&mut g, 0);
        g.join("g", join(&a, &["range"]), 0).expect("a");
        g.join("g", join(&b, &["range"]), 0).expect("b");
        // a joined alone first (generation 1); b's join started generation 2.
        g.join("g", join(&a, &["range"]), 1).expect("a again");
        let j = joined(&g.take_events());
        let generation = j.last().expect("joined").generation;
        g.sync("g", &a, generation, vec![], 2).expect("sync a");
        // b stays silent past its session; a heartbeats.
        g.heartbeat("g", &a, generation, 9_000).expect("hb");
        g.tick(10_500);
        assert_eq!(g.describe("g").map(|d| d.members.len()), Some(1));
        assert_eq!(
            g.heartbeat("g", &a, generation, 10_600),
            Err(ClassicError::RebalanceInProgress)
        );
        g.join("g", join(&a, &["range"]), 10_700).expect("rejoin");
        let j = joined(&g.take_events());
        assert_eq!(j.len(), 1);
        assert_eq!(j[0].generation, generation + 1);
    }

    #[test]
    fn members_that_do_not_rejoin_by_the_deadline_are_dropped() {
        let mut g = Groups::default();
        let a = new_member(&mut g, 0);
        g.join("g", join(&a, &["range"]), 0).expect("a");
        g.take_events();
        g.sync("g", &a, 1, vec![], 0).expect("sync");
        let b = new_member(&mut g, 0);
        g.join("g", join(&b, &["range"]), 0).expect("b");
        // a keeps heartbeating (told to rejoin) but never does.
        for t in (1_000..31_000).step_by(1_000) {
            let _ = g.heartbeat("g", &a, 1, t);
            g.tick(t);
        }
        let j = joined(&g.take_events());
        assert_eq!(j.len(), 1);
        assert_eq!(j[0].member_id, b);
        assert_eq!(j[0].leader, b, "the new leader is a member that rejoined");
    }

    #[test]
    fn incompatible_members_and_unknown_ids_are_refused() {
        let mut g = Groups::default();
        let a = new_member(&mut g, 0);
        g.join("g", join(&a, &["range"]), 0).expect("a");
        assert_eq!(
            g.join("g", join("", &["cooperative-sticky"]), 0)
                .map(|_| ()),
            Err(ClassicError::InconsistentProtocol)
        );
        assert_eq!(
            g.join("g", join("made-up", &["range"]), 0),
            Err(ClassicError::UnknownMember)
        );
        let mut bad = join("", &["range"]);
        bad.session_timeout_ms = 10;
        assert_eq!(
            g.join("g", bad, 0),
            Err(ClassicError::InvalidSessionTimeout(10))
        );
    }

    #[test]
    fn leaving_empties_the_group_and_allows_memberless_commits() {
        let mut g = Groups::default();
        let a = new_member(&mut g, 0);
        g.join("g", join(&a, &["range"]), 0).expect("a");
        g.take_events();
        assert_eq!(
            g.check_commit("g", "", -1),
            Err(ClassicError::IllegalGeneration(-1))
        );
        g.leave("g", &a, 1).expect("leave");
        assert!(!g.has_members("g"));
        assert_eq!(g.check_commit("g", "", -1), Ok(()));
        g.tick(2);
        assert!(g.list().is_empty(), "an empty group is forgotten");
    }
}
