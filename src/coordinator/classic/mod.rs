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

use bytes::Bytes;

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

mod shell;
pub use shell::ClassicGroups;

#[cfg(test)]
mod tests;
