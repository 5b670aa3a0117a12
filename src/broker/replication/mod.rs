//! Partition replication, Kafka's design: one leader per partition (named
//! by the cluster's metadata), followers that fetch from it and append its
//! batches byte for byte, a high watermark that only moves once every
//! in-sync replica has a record, and ISR changes proposed by the leader and
//! decided by the controller.
//!
//! This file holds each partition's replica state and the broker's calls
//! for both sides: the leader answers [`Broker::replica_fetch`] and lists
//! the ISR changes it wants ([`Broker::isr_changes`]); a follower lists what
//! to fetch ([`Broker::follower_fetches`]) and applies the answers
//! ([`Broker::apply_replica_data`]). The transport (gRPC, fetcher tasks)
//! lives above the broker.
//!
//! Safety rests on three rules: a leader counts a record committed (high
//! watermark, acks=ALL) only when every member of the ISR it knows has it,
//! and the ISR it knows is never smaller than the committed one (a shrink
//! takes effect only once the controller committed it); only an in-sync
//! replica is elected; and a replica that follows a new leader first cuts
//! its log where it diverges, found by leader epoch.

use std::collections::HashMap;
use std::time::Instant;

mod follower;

use super::partition::Partition;
use super::*;
use crate::cluster::{MetadataImage, NodeId, PartitionAssignment};

/// Replication settings of a broker.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// A follower that has not caught up with the leader's log end for
    /// this long leaves the ISR (Kafka's `replica.lag.time.max.ms`).
    pub replica_lag_time_max: Duration,
    /// Longest wait of a follower's fetch for new records.
    pub fetch_wait: Duration,
    /// Bytes per partition per replica fetch at most.
    pub fetch_max_bytes: usize,
    /// Longest an acks=ALL produce waits for the ISR.
    pub ack_timeout: Duration,
    /// acks=ALL waits for every in-sync replica to have synced the records
    /// to disk (not only to hold them in memory).
    pub ack_requires_fsync: bool,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            replica_lag_time_max: Duration::from_secs(10),
            fetch_wait: Duration::from_millis(500),
            fetch_max_bytes: 1024 * 1024,
            ack_timeout: Duration::from_secs(30),
            ack_requires_fsync: false,
        }
    }
}

/// A partition's place in replication.
#[derive(Debug, Clone)]
pub(crate) enum Role {
    /// A single broker's partition (or an internal topic): nothing to
    /// replicate; the high watermark is the log end.
    Standalone,
    /// This broker leads.
    Leader(LeaderState),
    /// This broker copies `leader`'s log.
    Follower {
        /// The leader.
        leader: NodeId,
        /// Its epoch.
        leader_epoch: i32,
    },
    /// No leader now, or not a replica here: serves nothing.
    Offline {
        /// The leader elsewhere, if any.
        leader: Option<NodeId>,
    },
}

/// What a leader knows of its partition.
#[derive(Debug, Clone)]
pub(crate) struct LeaderState {
    me: NodeId,
    epoch: i32,
    partition_epoch: i32,
    replicas: Vec<NodeId>,
    /// The ISR as committed; the high watermark waits for all of it.
    isr: Vec<NodeId>,
    min_isr: usize,
    /// Followers' progress as their fetches report it.
    followers: HashMap<NodeId, Progress>,
    /// An ISR change proposed and not yet decided: (partition epoch it
    /// was based on, the ISR proposed).
    proposed: Option<(i32, Vec<NodeId>)>,
    /// Where this leader's epoch starts: a follower below it cannot join
    /// the ISR yet.
    epoch_start: i64,
    /// When this broker became leader.
    since: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The follower's log end (its fetch offset).
    leo: i64,
    /// How far its log is synced.
    durable: i64,
    /// Last time it was caught up with the leader's log end.
    caught_up: Instant,
    /// Leader's log end at the follower's previous fetch, and when.
    prev_fetch_leo: i64,
    prev_fetch: Instant,
}

impl LeaderState {
    /// The leader epoch.
    pub(crate) fn epoch(&self) -> i32 {
        self.epoch
    }

    /// The ISR whose members must hold a record before it is committed:
    /// the committed one plus members being added (Kafka's maximal ISR).
    fn maximal_isr(&self) -> impl Iterator<Item = NodeId> + '_ {
        let adding = self
            .proposed
            .iter()
            .flat_map(|(_, isr)| isr.iter().filter(|r| !self.isr.contains(r)));
        self.isr.iter().chain(adding).copied()
    }

    /// The high watermark and how far the ISR has synced, given the
    /// leader's own log end and durable offset.
    fn watermarks(&self, leo: i64, durable: i64) -> (i64, i64) {
        let mut hwm = leo;
        let mut synced = durable.min(leo);
        for r in self.maximal_isr().filter(|r| *r != self.me) {
            match self.followers.get(&r) {
                Some(p) => {
                    hwm = hwm.min(p.leo);
                    synced = synced.min(p.durable);
                }
                // Not heard from since this broker became leader.
                None => return (-1, -1),
            }
        }
        (hwm, synced.min(hwm))
    }
}

/// The state an acks=ALL waiter watches.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Replicated {
    /// Committed: every in-sync replica has the records below it.
    pub(crate) hwm: i64,
    /// Every in-sync replica has synced the records below it.
    pub(crate) synced: i64,
    /// Raised on every change of role or ISR.
    pub(crate) generation: u64,
}

/// Replica state kept in each [`Partition`].
pub(crate) struct ReplicaCell {
    /// Held briefly to read or change the role (never across I/O or
    /// `.await`): produce, fetch and the replication tasks take it.
    role: Mutex<Role>,
    /// Watched by acks=ALL waiters.
    replicated: watch::Sender<Replicated>,
}

impl ReplicaCell {
    pub(crate) fn new(role: Role) -> Self {
        Self {
            role: Mutex::new(role),
            replicated: watch::Sender::new(Replicated::default()),
        }
    }

    pub(crate) fn role(&self) -> Role {
        self.role.lock().clone()
    }

    pub(crate) fn is_standalone(&self) -> bool {
        matches!(*self.role.lock(), Role::Standalone)
    }

    /// Where this broker leads the partition: the ISR's size, the replica
    /// count and `min_insync_replicas`.
    pub(crate) fn leader_isr(&self) -> Option<(usize, usize, usize)> {
        match &*self.role.lock() {
            Role::Leader(l) => Some((l.isr.len(), l.replicas.len(), l.min_isr)),
            _ => None,
        }
    }
}

/// One partition a follower asks its leader for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFetchPartition {
    /// Topic.
    pub topic: String,
    /// The topic's id.
    pub topic_id: u64,
    /// Partition.
    pub partition: i32,
    /// The leader epoch the follower follows.
    pub leader_epoch: i32,
    /// The follower's log end: it holds everything below.
    pub fetch_offset: i64,
    /// Epoch of the follower's last batch (-1: empty log).
    pub last_fetched_epoch: i32,
    /// How far the follower's log is synced.
    pub durable_offset: i64,
}

/// The leader's answer for one partition.
#[derive(Debug, Clone)]
pub struct ReplicaFetchData {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// What happened.
    pub outcome: std::result::Result<ReplicaRecords, ReplicaRefusal>,
}

/// Batches for a follower.
#[derive(Debug, Clone, Default)]
pub struct ReplicaRecords {
    /// Whole batches from the fetch offset, as stored.
    pub records: Bytes,
    /// The leader's high watermark.
    pub high_watermark: i64,
    /// The leader's log start.
    pub log_start: i64,
    /// The leader's log end.
    pub log_end: i64,
    /// The follower's log diverges: cut it at the end of this epoch
    /// (epoch, end offset) and fetch again.
    pub diverging: Option<(i32, i64)>,
}

/// Why a leader does not serve a partition to a follower.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaRefusal {
    /// This broker does not lead the partition in that epoch.
    #[error("not the leader in epoch {asked} (this broker: {here})")]
    NotLeader {
        /// Epoch asked for.
        asked: i32,
        /// What this broker knows.
        here: String,
    },
    /// No such topic (or another incarnation of the name).
    #[error("unknown topic or partition")]
    UnknownPartition,
    /// The follower's offset is below the leader's log start.
    #[error("offset {offset} is below the log start {start}")]
    OffsetOutOfRange {
        /// Asked.
        offset: i64,
        /// Leader's log start.
        start: i64,
    },
    /// Reading failed.
    #[error("{0}")]
    Storage(String),
}

/// An ISR change a leader wants the controller to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    /// Topic.
    pub topic: String,
    /// The topic's id.
    pub topic_id: u64,
    /// Partition.
    pub partition: i32,
    /// The leader (this broker).
    pub leader: NodeId,
    /// Its epoch.
    pub leader_epoch: i32,
    /// The partition epoch the change is based on.
    pub partition_epoch: i32,
    /// The ISR wanted.
    pub isr: Vec<NodeId>,
}

/// A follower's fetch for one leader: partitions and where they stand.
pub type FollowerFetch = Vec<ReplicaFetchPartition>;

/// The smallest ISR that still takes acks=ALL writes for a topic.
pub fn min_insync_replicas(config: &TopicConfig, replication_factor: usize) -> usize {
    match config.min_insync_replicas {
        Some(n) => (n.max(1) as usize).min(replication_factor.max(1)),
        None if replication_factor >= 3 => 2,
        None => 1,
    }
}

impl Partition {
    /// Checks that this broker may append to the partition now: the leader
    /// (or a standalone broker), with enough in-sync replicas for acks=ALL.
    /// Returns the leader epoch (`None` standalone): an acks=ALL answer
    /// waits for the ISR in that epoch, and fails if leadership moved.
    pub(crate) fn check_writable(&self, acks: Acks) -> Result<Option<i32>> {
        match &*self.replica.role.lock() {
            Role::Standalone => Ok(None),
            Role::Leader(l) => {
                if acks == Acks::All && l.isr.len() < l.min_isr {
                    return Err(BrokerError::NotEnoughReplicas {
                        topic: self.topic.to_string(),
                        partition: self.id,
                        isr: l.isr.len(),
                        min: l.min_isr,
                    });
                }
                Ok(Some(l.epoch))
            }
            Role::Follower { leader, .. } => Err(self.not_leader(Some(*leader))),
            Role::Offline { leader } => Err(self.not_leader(*leader)),
        }
    }

    /// Checks that this broker serves reads of the partition.
    pub(crate) fn check_readable(&self) -> Result<()> {
        match &*self.replica.role.lock() {
            Role::Standalone | Role::Leader(_) => Ok(()),
            Role::Follower { leader, .. } => Err(self.not_leader(Some(*leader))),
            Role::Offline { leader } => Err(self.not_leader(*leader)),
        }
    }

    fn not_leader(&self, leader: Option<NodeId>) -> BrokerError {
        BrokerError::NotLeader {
            topic: self.topic.to_string(),
            partition: self.id,
            leader,
        }
    }

    /// After an append of records below `end`: publishes the new high
    /// watermark (at once when nobody else must have them).
    pub(crate) fn appended(&self, log: &Log, end: i64) {
        let role = self.replica.role.lock();
        match &*role {
            Role::Leader(l) => {
                let (hwm, synced) = l.watermarks(end, log.flushed_offset());
                drop(role);
                self.advance(hwm, synced);
            }
            _ => {
                drop(role);
                self.publish_end(end);
            }
        }
    }

    /// Publishes a new high watermark (and synced offset) to readers and
    /// acks=ALL waiters.
    fn advance(&self, hwm: i64, synced: i64) {
        if hwm >= 0 {
            self.publish_end(hwm);
        }
        self.replica.replicated.send_if_modified(|r| {
            let changed = hwm > r.hwm || synced > r.synced;
            r.hwm = r.hwm.max(hwm);
            r.synced = r.synced.max(synced);
            changed
        });
    }

    /// Waits until every in-sync replica holds (and, if asked, has synced)
    /// the records below `end`, appended as leader in `epoch` (`None`: a
    /// standalone broker, nothing to wait for); fails if this broker no
    /// longer leads in that epoch (even before the wait begins: records
    /// appended just before a leadership change may never reach the new
    /// leader), the ISR falls below its minimum, or `timeout` passes.
    pub(crate) async fn wait_replicated(
        &self,
        end: i64,
        epoch: Option<i32>,
        fsync: bool,
        timeout: Duration,
    ) -> std::result::Result<(), Arc<BrokerError>> {
        let Some(epoch) = epoch else {
            return Ok(());
        };
        let mut rx = self.replica.replicated.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let r = *rx.borrow_and_update();
                let role = self.replica.role.lock();
                match &*role {
                    Role::Leader(l) if l.epoch == epoch => {
                        let reached = if fsync { r.synced } else { r.hwm };
                        if reached >= end {
                            return Ok(());
                        }
                        if l.isr.len() < l.min_isr {
                            return Err(Arc::new(BrokerError::NotEnoughReplicasAfterAppend {
                                topic: self.topic.to_string(),
                                partition: self.id,
                                isr: l.isr.len(),
                                min: l.min_isr,
                            }));
                        }
                    }
                    Role::Follower { leader, .. } => {
                        return Err(Arc::new(self.not_leader(Some(*leader))))
                    }
                    Role::Offline { leader } => return Err(Arc::new(self.not_leader(*leader))),
                    // Led again in a later epoch: whether these records
                    // survived the change is unknown.
                    Role::Leader(_) | Role::Standalone => {
                        return Err(Arc::new(self.not_leader(None)))
                    }
                }
            }
            if self.is_deleted() {
                return Err(Arc::new(BrokerError::TopicDeleted {
                    topic: self.topic.to_string(),
                }));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Arc::new(BrokerError::ShuttingDown)),
                Err(_) => {
                    return Err(Arc::new(BrokerError::ReplicationTimeout {
                        topic: self.topic.to_string(),
                        partition: self.id,
                        waited_ms: timeout.as_millis() as u64,
                    }))
                }
            }
        }
    }

    /// Sets the role (from the metadata) and wakes everyone who watches it.
    fn set_role(&self, role: Role) {
        *self.replica.role.lock() = role;
        self.replica.replicated.send_modify(|r| r.generation += 1);
        // Long polls re-check whether they may still read here.
        self.wake_readers();
    }
}

impl Broker {
    /// This broker's node id in a cluster.
    pub fn node_id(&self) -> Option<NodeId> {
        self.config.node_id
    }

    /// Brings every local partition's role in line with `image` (called by
    /// [`Broker::apply_metadata`] after topics exist). Blocking: a new
    /// leader records its epoch in the log.
    pub(super) fn apply_roles(&self, image: &MetadataImage, registered: bool) -> Result<()> {
        let Some(me) = self.config.node_id else {
            return Ok(());
        };
        let mut first = None;
        for t in image.topics.values() {
            let Ok(topic) = self.topic(&t.name) else {
                continue;
            };
            if topic.incarnation() != t.id {
                continue;
            }
            let parts = topic.partitions();
            for (i, a) in t.partitions.iter().enumerate() {
                let Some(part) = parts.get(i) else { continue };
                if !registered {
                    // Not serving yet: neither leader nor follower.
                    if !matches!(part.replica.role(), Role::Offline { leader } if leader == a.leader)
                    {
                        part.set_role(Role::Offline { leader: a.leader });
                    }
                    continue;
                }
                if let Err(e) = self.apply_role(&topic, part, a, me) {
                    tracing::error!(topic = %t.name, partition = i, error = %e, "taking a partition role failed");
                    first.get_or_insert(e);
                }
            }
        }
        self.roles_changed.send_modify(|n| *n += 1);
        match first {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    fn apply_role(
        &self,
        topic: &Topic,
        part: &Partition,
        a: &PartitionAssignment,
        me: NodeId,
    ) -> Result<()> {
        let current = part.replica.role();
        if a.leader == Some(me) {
            let min_isr = min_insync_replicas(&topic.config, a.replicas.len());
            if let Role::Leader(l) = &current {
                if l.epoch == a.leader_epoch {
                    // Same leadership: the ISR or replicas changed.
                    let mut role = part.replica.role.lock();
                    if let Role::Leader(l) = &mut *role {
                        l.isr = a.isr.clone();
                        l.replicas = a.replicas.clone();
                        l.min_isr = min_isr;
                        if l.partition_epoch != a.partition_epoch {
                            l.partition_epoch = a.partition_epoch;
                            l.proposed = None;
                        }
                        l.followers.retain(|f, _| a.replicas.contains(f));
                    }
                    drop(role);
                    part.replica.replicated.send_modify(|r| r.generation += 1);
                    self.recompute_hwm(topic, part);
                    return Ok(());
                }
            }
            // Becoming leader: the epoch is durable in the log before any
            // batch carries it.
            let log = self.log_of(topic, part)?;
            if log.leader_epoch() < a.leader_epoch || log.latest_epoch() != Some(a.leader_epoch) {
                log.set_leader_epoch(a.leader_epoch.max(log.leader_epoch()))?;
            }
            let now = Instant::now();
            part.set_role(Role::Leader(LeaderState {
                me,
                epoch: a.leader_epoch,
                partition_epoch: a.partition_epoch,
                replicas: a.replicas.clone(),
                isr: a.isr.clone(),
                min_isr,
                followers: HashMap::new(),
                proposed: None,
                epoch_start: log.end_offset(),
                since: now,
            }));
            tracing::info!(topic = %topic.name, partition = part.id, epoch = a.leader_epoch, isr = ?a.isr, "leading partition");
            self.recompute_hwm(topic, part);
        } else if a.replicas.contains(&me) {
            match (a.leader, &current) {
                (
                    Some(l),
                    Role::Follower {
                        leader,
                        leader_epoch,
                    },
                ) if *leader == l && *leader_epoch == a.leader_epoch => {}
                (Some(l), _) => {
                    part.set_role(Role::Follower {
                        leader: l,
                        leader_epoch: a.leader_epoch,
                    });
                    tracing::debug!(topic = %topic.name, partition = part.id, leader = l, epoch = a.leader_epoch, "following partition");
                }
                (None, Role::Offline { leader: None }) => {}
                (None, _) => part.set_role(Role::Offline { leader: None }),
            }
        } else {
            match &current {
                Role::Offline { leader } if *leader == a.leader => {}
                _ => part.set_role(Role::Offline { leader: a.leader }),
            }
        }
        Ok(())
    }

    /// Recomputes a led partition's high watermark (after an ISR change).
    fn recompute_hwm(&self, topic: &Topic, part: &Partition) {
        let Some(log) = part.open_log().or_else(|| self.log_of(topic, part).ok()) else {
            return;
        };
        part.appended(&log, log.end_offset());
    }

    /// Answers a follower's fetch: for each partition, checks leadership
    /// and divergence, records the follower's progress (moving the high
    /// watermark), and reads whole batches from its offset. Blocking
    /// (reads may touch cold segments).
    /// `max_bytes` bounds each partition's records, `budget` the whole
    /// answer's (partitions past it get none, but their progress counts).
    pub fn replica_fetch(
        &self,
        follower: NodeId,
        parts: &[ReplicaFetchPartition],
        max_bytes: usize,
        budget: usize,
    ) -> Vec<ReplicaFetchData> {
        let now = Instant::now();
        let mut left = budget;
        parts
            .iter()
            .map(|p| {
                let outcome =
                    self.replica_fetch_one(follower, p, max_bytes.min(left), left > 0, now);
                if let Ok(r) = &outcome {
                    left = left.saturating_sub(r.records.len());
                }
                ReplicaFetchData {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    outcome,
                }
            })
            .collect()
    }

    fn replica_fetch_one(
        &self,
        follower: NodeId,
        req: &ReplicaFetchPartition,
        max_bytes: usize,
        read: bool,
        now: Instant,
    ) -> std::result::Result<ReplicaRecords, ReplicaRefusal> {
        let topic = self
            .topic(&req.topic)
            .ok()
            .filter(|t| t.incarnation() == req.topic_id)
            .ok_or(ReplicaRefusal::UnknownPartition)?;
        let part = topic
            .partition(req.partition)
            .map_err(|_| ReplicaRefusal::UnknownPartition)?;
        let not_leader = |here: String| ReplicaRefusal::NotLeader {
            asked: req.leader_epoch,
            here,
        };
        match &*part.replica.role.lock() {
            Role::Leader(l) if l.epoch == req.leader_epoch => {}
            Role::Leader(l) => return Err(not_leader(format!("leader in epoch {}", l.epoch))),
            other => return Err(not_leader(format!("{other:?}"))),
        }
        let log = self
            .log_of(&topic, &part)
            .map_err(|e| ReplicaRefusal::Storage(e.client_message()))?;
        let (start, leo) = (log.start_offset(), log.end_offset());
        let mut out = ReplicaRecords {
            records: Bytes::new(),
            high_watermark: part.known_end().unwrap_or(-1),
            log_start: start,
            log_end: leo,
            diverging: None,
        };
        // Divergence (KIP-320): does the follower's last epoch end where
        // its log ends, in this log?
        if req.last_fetched_epoch >= 0 && req.fetch_offset > start {
            match log.end_offset_for_epoch(req.last_fetched_epoch) {
                Some((e, end)) if e == req.last_fetched_epoch && end >= req.fetch_offset => {}
                Some((e, end)) => {
                    out.diverging = Some((e, end.min(req.fetch_offset)));
                    return Ok(out);
                }
                None => {
                    out.diverging = Some((-1, start));
                    return Ok(out);
                }
            }
        } else if req.fetch_offset > leo {
            out.diverging = Some((log.latest_epoch().unwrap_or(-1), leo));
            return Ok(out);
        }
        if req.fetch_offset < start {
            return Err(ReplicaRefusal::OffsetOutOfRange {
                offset: req.fetch_offset,
                start,
            });
        }
        // The follower holds everything below its fetch offset.
        let (hwm, synced) = {
            let mut role = part.replica.role.lock();
            let Role::Leader(l) = &mut *role else {
                return Err(not_leader("no longer leader".into()));
            };
            let p = l.followers.entry(follower).or_insert(Progress {
                leo: req.fetch_offset,
                durable: req.durable_offset,
                caught_up: l.since,
                prev_fetch_leo: -1,
                prev_fetch: now,
            });
            p.leo = req.fetch_offset;
            p.durable = req.durable_offset.min(req.fetch_offset);
            if req.fetch_offset >= leo {
                p.caught_up = now;
            } else if p.prev_fetch_leo >= 0 && req.fetch_offset >= p.prev_fetch_leo {
                p.caught_up = p.caught_up.max(p.prev_fetch);
            }
            p.prev_fetch_leo = leo;
            p.prev_fetch = now;
            l.watermarks(leo, log.flushed_offset())
        };
        part.advance(hwm, synced);
        out.high_watermark = part.known_end().unwrap_or(-1);
        if read && req.fetch_offset < leo {
            let read = log
                .read(req.fetch_offset, max_bytes)
                .map_err(|e| ReplicaRefusal::Storage(BrokerError::Storage(e).client_message()))?;
            out.records = read.data;
        }
        Ok(out)
    }

    /// A notification of appends to led partitions, for followers' fetches
    /// waiting for records.
    pub fn leader_appends(&self) -> &tokio::sync::Notify {
        &self.leader_appended
    }

    /// A receiver that changes whenever the metadata changed partition
    /// roles here.
    pub fn watch_roles(&self) -> watch::Receiver<u64> {
        self.roles_changed.subscribe()
    }

    /// The ISR changes this broker's led partitions need: followers that
    /// lagged past `replica_lag_time_max` out, followers caught up to the
    /// high watermark (in this leader's epoch) in. Each change is handed
    /// out once per partition epoch; [`Broker::isr_change_failed`] allows
    /// it again.
    pub fn isr_changes(&self) -> Vec<IsrChange> {
        let now = Instant::now();
        let lag_max = self.config.replication.replica_lag_time_max;
        let mut out = Vec::new();
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        for topic in topics {
            for part in topic.partitions().iter() {
                let hwm = part.known_end().unwrap_or(-1);
                let mut role = part.replica.role.lock();
                let Role::Leader(l) = &mut *role else {
                    continue;
                };
                if l.proposed.is_some() {
                    continue;
                }
                let mut isr: Vec<NodeId> = l
                    .isr
                    .iter()
                    .copied()
                    .filter(|r| {
                        *r == l.me
                            || l.followers.get(r).map_or_else(
                                || now.duration_since(l.since) <= lag_max,
                                |p| now.duration_since(p.caught_up) <= lag_max,
                            )
                    })
                    .collect();
                for (r, p) in &l.followers {
                    if !isr.contains(r)
                        && l.replicas.contains(r)
                        && p.leo >= hwm.max(l.epoch_start)
                        && now.duration_since(p.caught_up) <= lag_max
                    {
                        isr.push(*r);
                    }
                }
                let mut sorted = isr.clone();
                sorted.sort_unstable();
                let mut current = l.isr.clone();
                current.sort_unstable();
                if sorted == current {
                    continue;
                }
                let isr: Vec<NodeId> = l
                    .replicas
                    .iter()
                    .filter(|r| isr.contains(r))
                    .copied()
                    .collect();
                l.proposed = Some((l.partition_epoch, isr.clone()));
                out.push(IsrChange {
                    topic: topic.name.to_string(),
                    topic_id: topic.incarnation(),
                    partition: part.id,
                    leader: l.me,
                    leader_epoch: l.epoch,
                    partition_epoch: l.partition_epoch,
                    isr,
                });
            }
        }
        out
    }

    /// An ISR change was refused or lost: it may be proposed again.
    pub fn isr_change_failed(&self, change: &IsrChange) {
        let Ok(part) = self
            .topic(&change.topic)
            .and_then(|t| t.partition(change.partition))
        else {
            return;
        };
        let mut role = part.replica.role.lock();
        if let Role::Leader(l) = &mut *role {
            if l.proposed.as_ref().map(|p| p.0) == Some(change.partition_epoch) {
                l.proposed = None;
            }
        }
    }
}

#[cfg(test)]
mod tests;
