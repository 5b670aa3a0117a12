//! Consumer groups: membership, partition assignment, committed offsets.
//!
//! * [`group`]: one group as a pure state machine (time is a parameter).
//! * [`assignor`]: the sticky, balanced assignor.
//! * [`records`]: how state is written to the offsets topic.
//! * [`classic`]: Kafka's classic group protocol (client-side assignment)
//!   for Kafka clients; its groups share the name space and committed
//!   offsets, one protocol per group at a time.
//! * This module: the shell. Groups are spread over the partitions of the
//!   internal topic [`OFFSETS_TOPIC`] by a hash of their name (as Kafka
//!   spreads `__consumer_offsets`); each partition has one [`Shard`] that
//!   owns its groups, appends every change to its partition before
//!   answering, and replays the partition on start. When a shard has
//!   written many more records than it has live keys it writes a snapshot
//!   (every live key again) and deletes the segments before it, so the
//!   topic stays bounded however many commits happen.
//!
//! Replication later: a shard is what a partition's leader runs; the
//! offsets topic replicates like any other.

mod admin;
pub mod assignor;
pub mod classic;
pub mod error;
pub mod group;
pub mod queues;
pub mod records;
pub mod share;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

pub use admin::{
    CoordinatorStats, GroupDescription, GroupSummary, MemberDescription, PartitionLag, ResetResult,
    ResetTo,
};
pub use assignor::{Assignment, Tp};
pub use error::{CoordinatorError, Result};
pub use group::{
    Committed, GroupState, HeartbeatRequest, HeartbeatResponse, Limits, JOIN_EPOCH, LEAVE_EPOCH,
};

use crate::broker::journal::{
    journal_topic_config, Journal, JournalConfig, JournalGuard, Journaled,
};
use crate::broker::{
    is_internal_topic, murmur2, validate_topic_name, Broker, BrokerError, NewRecord,
};
use crate::storage::Clock;
use group::{Dirty, Group};
use records::Encoded;

/// The internal topic holding groups and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Longest group name, member id or client id.
pub const MAX_NAME_LEN: usize = 255;
/// Longest offset metadata string (Kafka's default).
pub const MAX_METADATA_BYTES: usize = 4096;
/// Most topics one member may subscribe to.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;

/// Settings of the coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Session and heartbeat limits.
    pub limits: Limits,
    /// Partitions of the offsets topic when it is created (later starts
    /// keep the count it has).
    pub offsets_partitions: i32,
    /// Segment size of the offsets topic.
    pub offsets_segment_bytes: i64,
    /// A shard snapshots once it has written more than this many records
    /// and more than twice its live keys since the last snapshot.
    pub snapshot_min_records: u64,
    /// How often sessions are checked for expiry.
    pub expiry_check_interval: Duration,
}

pub use crate::broker::journal::RETRY_AFTER_FAILURE;

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            offsets_partitions: 4,
            offsets_segment_bytes: 16 * 1024 * 1024,
            snapshot_min_records: 100_000,
            expiry_check_interval: Duration::from_millis(100),
        }
    }
}

/// One committed offset to write.
#[derive(Debug, Clone)]
pub struct OffsetCommit {
    /// Partition.
    pub tp: Tp,
    /// Next offset to consume.
    pub offset: i64,
    /// Client's metadata.
    pub metadata: String,
}

/// The coordinator of every group on this broker.
pub struct Coordinator {
    broker: Arc<Broker>,
    config: CoordinatorConfig,
    /// Wall time, for commit timestamps.
    clock: Clock,
    /// Monotonic time, for session and rebalance deadlines.
    timer: Clock,
    shards: Vec<Shard>,
    /// Groups of Kafka's classic protocol (membership in memory).
    classic: Arc<classic::ClassicGroups>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// The groups of one offsets-topic partition (a shard), kept in that
/// partition by [`Journal`].
type Shard = Journal<ShardState>;

struct ShardState {
    groups: BTreeMap<String, Group>,
    /// Monotonic time of the replay (restored members' deadlines start
    /// from it).
    replayed_at: i64,
}

impl Journaled for ShardState {
    fn replay(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> std::result::Result<(), String> {
        let key = key.ok_or("a record without a key")?;
        records::apply(&mut self.groups, key, value, self.replayed_at).map_err(|e| e.to_string())
    }

    fn snapshot(&self) -> Vec<NewRecord> {
        let mut recs = Vec::new();
        for g in self.groups.values() {
            records::snapshot_of(g, &mut recs);
        }
        recs.into_iter().map(to_record).collect()
    }
}

fn to_record((key, value): Encoded) -> NewRecord {
    NewRecord {
        key: Some(key),
        value,
        ..NewRecord::default()
    }
}

fn validate_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(CoordinatorError::invalid(format!(
            "{what} must be 1 to {MAX_NAME_LEN} bytes, got {}",
            s.len()
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(CoordinatorError::invalid(format!(
            "{what} '{}' has a control character",
            s.escape_debug()
        )));
    }
    Ok(())
}

fn validate_user_topic(topic: &str) -> Result<()> {
    validate_topic_name(topic)?;
    if is_internal_topic(topic) {
        return Err(CoordinatorError::invalid(format!(
            "topic '{topic}' is internal to the broker"
        )));
    }
    Ok(())
}

impl Coordinator {
    /// Opens the coordinator on `broker`: creates the offsets topic if
    /// needed and replays it. Blocking.
    pub fn open(broker: Arc<Broker>, config: CoordinatorConfig) -> Result<Arc<Self>> {
        let topic_config = journal_topic_config(config.offsets_segment_bytes);
        let count =
            broker.internal_partitions(OFFSETS_TOPIC, config.offsets_partitions, topic_config)?;
        if count != config.offsets_partitions {
            tracing::info!(
                partitions = count,
                configured = config.offsets_partitions,
                "offsets topic keeps the partition count it was created with"
            );
        }
        let clock = broker.config().log.clock.clone();
        let timer = crate::storage::monotonic_clock();
        let mut shards = Vec::with_capacity(count as usize);
        for partition in 0..count {
            let timer = timer.clone();
            let journal = JournalConfig {
                topic: OFFSETS_TOPIC,
                partition,
                snapshot_min_records: config.snapshot_min_records,
                durable: false,
            };
            shards.push(Journal::open(&broker, journal, move || ShardState {
                groups: BTreeMap::new(),
                replayed_at: timer(),
            })?);
        }
        let groups: usize = shards.iter().map(|s| s.peek(|st| st.groups.len())).sum();
        tracing::info!(groups, partitions = count, "group coordinator loaded");
        let classic = classic::ClassicGroups::new(timer.clone());
        Ok(Arc::new(Self {
            broker,
            config,
            clock,
            timer,
            shards,
            classic,
        }))
    }

    /// Runs session expiry every `expiry_check_interval` until the broker
    /// shuts down. Call once, inside a tokio runtime.
    pub fn start(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let interval = self.config.expiry_check_interval;
        let broker = self.broker.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = broker.shutting_down() => return,
                }
                let Some(c) = weak.upgrade() else { return };
                c.classic.tick();
                // Evictions append to the offsets log: off the runtime.
                let _ = tokio::task::spawn_blocking(move || c.expire_all()).await;
            }
        });
    }

    /// The classic-protocol groups (Kafka clients).
    pub fn classic(&self) -> &Arc<classic::ClassicGroups> {
        &self.classic
    }

    /// True if `group` has live members of the server-side protocol.
    pub fn has_live_members(&self, group: &str) -> bool {
        self.shard(group)
            .peek(|st| st.groups.get(group).is_some_and(|g| !g.members.is_empty()))
    }

    /// Fails unless this broker coordinates `group` now (in a cluster, it
    /// leads the group's offsets partition).
    pub fn check_coordinates(&self, group: &str) -> Result<()> {
        validate_name("group", group)?;
        self.lock_shard(group).map(|_| ())
    }

    /// The settings.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    fn shard(&self, group: &str) -> &Shard {
        &self.shards[self.shard_of(group) as usize]
    }

    /// The partition of the offsets topic that holds `group` (in a
    /// cluster, its leader coordinates the group).
    pub fn shard_of(&self, group: &str) -> i32 {
        let h = murmur2(group.as_bytes()) & 0x7fff_ffff;
        (h as usize % self.shards.len()) as i32
    }

    fn partition_count(&self, topic: &str) -> i32 {
        self.broker
            .topic(topic)
            .map(|t| t.partitions().len() as i32)
            .unwrap_or(0)
    }

    /// Appends `records` to the shard's partition. A failure stops the
    /// shard (its memory may now be ahead of its log).
    fn persist(st: &mut JournalGuard<'_, ShardState>, records: Vec<Encoded>) -> Result<()> {
        st.append(records.into_iter().map(to_record).collect())
            .map(|_| ())
            .map_err(|reason| CoordinatorError::Failed {
                partition: st.partition(),
                reason,
            })
    }

    /// Locks `group`'s shard, failing while it cannot serve (see
    /// [`Journal::lock`]).
    fn lock_shard(&self, group: &str) -> Result<JournalGuard<'_, ShardState>> {
        let shard = self.shard(group);
        shard
            .lock(&self.broker)
            .map_err(|e| CoordinatorError::from_journal(OFFSETS_TOPIC, shard.partition(), e))
    }

    /// Records of what `dirty` names in `group` (or the group's deletion
    /// if it is vacant, which also drops it from `groups`).
    fn dirty_records(
        groups: &mut BTreeMap<String, Group>,
        name: &str,
        dirty: &Dirty,
    ) -> Vec<Encoded> {
        let mut recs = Vec::new();
        let Some(g) = groups.get(name) else {
            return recs;
        };
        if g.is_vacant() {
            groups.remove(name);
            recs.push(records::group_tombstone(name));
            return recs;
        }
        if dirty.group {
            recs.push(records::group_record(g));
        }
        for id in &dirty.removed {
            recs.push(records::member_tombstone(name, id));
        }
        for id in &dirty.members {
            if let Some(m) = g.members.get(id) {
                recs.push(records::member_record(name, m));
            }
        }
        recs
    }

    // ----- members -----

    /// Handles a member's heartbeat (join with epoch 0, leave with -1).
    pub fn heartbeat(&self, group: &str, mut req: HeartbeatRequest) -> Result<HeartbeatResponse> {
        validate_name("group", group)?;
        if req.member_id.is_empty() {
            if req.member_epoch != JOIN_EPOCH {
                return Err(CoordinatorError::invalid(
                    "member_id may be empty only when joining (member_epoch 0)",
                ));
            }
            req.member_id = uuid::Uuid::new_v4().to_string();
        }
        validate_name("member_id", &req.member_id)?;
        if req.client_id.len() > MAX_NAME_LEN {
            return Err(CoordinatorError::invalid(format!(
                "client_id must be at most {MAX_NAME_LEN} bytes, got {}",
                req.client_id.len()
            )));
        }
        if req.subscriptions.len() > MAX_SUBSCRIPTIONS {
            return Err(CoordinatorError::invalid(format!(
                "at most {MAX_SUBSCRIPTIONS} subscribed topics, got {}",
                req.subscriptions.len()
            )));
        }
        for t in &req.subscriptions {
            validate_user_topic(t)?;
        }
        if req.member_epoch == JOIN_EPOCH && req.subscriptions.is_empty() {
            return Err(CoordinatorError::invalid(
                "a joining member must subscribe to at least one topic",
            ));
        }
        if req.member_epoch == JOIN_EPOCH && self.classic.has_members(group) {
            return Err(CoordinatorError::invalid(format!(
                "group '{group}' has members of Kafka's classic group protocol; a group is used by one protocol at a time"
            )));
        }
        metrics::counter!("sluice_group_heartbeats_total").increment(1);
        let now = (self.timer)();
        let mut st = self.lock_shard(group)?;
        if !st.groups.contains_key(group) {
            match req.member_epoch {
                JOIN_EPOCH => {
                    st.groups.insert(group.to_string(), Group::new(group));
                }
                LEAVE_EPOCH => {
                    return Ok(HeartbeatResponse {
                        member_id: req.member_id,
                        member_epoch: LEAVE_EPOCH,
                        assignment: Assignment::new(),
                        heartbeat_interval_ms: 0,
                    })
                }
                _ => {
                    return Err(CoordinatorError::UnknownMember {
                        group: group.to_string(),
                        member: req.member_id,
                    })
                }
            }
        }
        let g = st.groups.get_mut(group).expect("group present");
        let mut dirty = Dirty::default();
        let count = |t: &str| self.partition_count(t);
        let result = g.heartbeat(req, now, &count, &self.config.limits, &mut dirty);
        let recs = Self::dirty_records(&mut st.groups, group, &dirty);
        Self::persist(&mut st, recs)?;
        result
    }

    /// Commits offsets for `member_id` at `member_epoch` (an empty member
    /// id commits for a group without live members).
    pub fn commit(
        &self,
        group: &str,
        member_id: &str,
        member_epoch: i32,
        offsets: Vec<OffsetCommit>,
    ) -> Result<()> {
        validate_name("group", group)?;
        for c in &offsets {
            if c.offset < 0 {
                return Err(CoordinatorError::invalid(format!(
                    "offset {} for {} must be at least 0",
                    c.offset, c.tp
                )));
            }
            if c.metadata.len() > MAX_METADATA_BYTES {
                return Err(CoordinatorError::invalid(format!(
                    "metadata for {} is {} bytes; at most {MAX_METADATA_BYTES}",
                    c.tp,
                    c.metadata.len()
                )));
            }
        }
        if member_id.is_empty() {
            // No member vouches for these partitions: check they exist.
            for c in &offsets {
                let t = self.broker.topic(&c.tp.topic)?;
                let n = t.partitions().len() as i32;
                if !(0..n).contains(&c.tp.partition) {
                    return Err(BrokerError::PartitionNotFound {
                        topic: c.tp.topic.to_string(),
                        partition: c.tp.partition,
                        count: n,
                    }
                    .into());
                }
            }
        }
        metrics::counter!("sluice_offset_commits_total").increment(offsets.len() as u64);
        let now = (self.clock)();
        let mut st = self.lock_shard(group)?;
        match st.groups.get(group) {
            Some(g) => g.check_commit(member_id, member_epoch, offsets.iter().map(|c| &c.tp))?,
            None if member_id.is_empty() => {}
            None => {
                return Err(CoordinatorError::UnknownMember {
                    group: group.to_string(),
                    member: member_id.to_string(),
                })
            }
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let committed = offsets
            .into_iter()
            .map(|c| (c.tp, c.offset, c.metadata))
            .collect();
        let ids = |t: &str| self.topic_id(t);
        Self::write_offsets(&mut st, group, now, committed, &ids)
    }

    /// The current id (incarnation) of `topic`, 0 if it does not exist.
    pub(crate) fn topic_id(&self, topic: &str) -> u64 {
        self.broker.topic(topic).map_or(0, |t| t.incarnation())
    }

    /// Appends committed offsets (`tp`, offset, metadata) of `group`, then
    /// applies them, creating the group if needed.
    fn write_offsets(
        st: &mut JournalGuard<'_, ShardState>,
        group: &str,
        now: i64,
        offsets: Vec<(Tp, i64, String)>,
        topic_id: &dyn Fn(&str) -> u64,
    ) -> Result<()> {
        let committed: Vec<(Tp, Committed)> = offsets
            .into_iter()
            .map(|(tp, offset, metadata)| {
                let c = Committed {
                    offset,
                    metadata,
                    commit_ms: now,
                    topic_id: topic_id(&tp.topic),
                };
                (tp, c)
            })
            .collect();
        let recs = committed
            .iter()
            .map(|(tp, c)| records::offset_record(group, tp, c))
            .collect();
        Self::persist(st, recs)?;
        st.groups
            .entry(group.to_string())
            .or_insert_with(|| Group::new(group))
            .offsets
            .extend(committed);
        Ok(())
    }

    /// Committed offsets of `group`, of the given topics (all if empty).
    /// A group that does not exist has none.
    pub fn fetch_offsets(&self, group: &str, topics: &[String]) -> Result<Vec<(Tp, Committed)>> {
        validate_name("group", group)?;
        let st = self.lock_shard(group)?;
        let Some(g) = st.groups.get(group) else {
            return Ok(Vec::new());
        };
        Ok(g.offsets
            .iter()
            .filter(|(tp, _)| topics.is_empty() || topics.iter().any(|t| **t == *tp.topic))
            // An offset committed for an earlier topic of the same name
            // (deleted, then created again) does not apply.
            .filter(|(tp, c)| c.topic_id == 0 || c.topic_id == self.topic_id(&tp.topic))
            .map(|(tp, c)| (tp.clone(), c.clone()))
            .collect())
    }

    /// Evicts expired members of every group.
    pub fn expire_all(&self) {
        let now = (self.timer)();
        for shard in &self.shards {
            let Ok(mut st) = shard.lock(&self.broker) else {
                continue;
            };
            let mut recs = Vec::new();
            let names: Vec<String> = st
                .groups
                .iter()
                .filter(|(_, g)| {
                    g.members
                        .values()
                        .any(|m| now > m.deadline_ms || m.pending.is_some())
                })
                .map(|(n, _)| n.clone())
                .collect();
            for name in names {
                let Some(g) = st.groups.get_mut(&name) else {
                    continue;
                };
                let mut dirty = Dirty::default();
                let count = |t: &str| self.partition_count(t);
                let gone = g.expire(now, &count, &mut dirty);
                if !gone.is_empty() {
                    metrics::counter!("sluice_group_evictions_total").increment(gone.len() as u64);
                    tracing::info!(group = %name, members = ?gone, "evicted members after their session or rebalance timeout");
                    recs.extend(Self::dirty_records(&mut st.groups, &name, &dirty));
                }
            }
            // A failure marks the shard failed; nothing else to do here.
            let _ = Self::persist(&mut st, recs);
        }
    }
}
