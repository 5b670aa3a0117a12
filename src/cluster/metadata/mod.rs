//! The cluster's metadata image and the commands that change it: a pure
//! state machine. The Raft glue (`store.rs`, `node.rs`) applies committed
//! commands in log order on every node, so every node holds the same image;
//! nothing here does I/O or reads a clock.
//!
//! Placement (which brokers hold a partition's replicas, and which of them
//! is the preferred leader) is computed inside `apply` from the image alone,
//! so it is the same on every node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node's id (`--node-id`): a voter, a broker, or both.
pub type NodeId = u64;

/// Largest node id: ids travel as `int32` in the public API.
pub const MAX_NODE_ID: NodeId = i32::MAX as NodeId;

/// Most partitions a topic may have (as the broker allows).
pub const MAX_PARTITIONS: i32 = 100_000;

/// A broker as registered with the controller.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BrokerRegistration {
    /// Node id.
    pub id: NodeId,
    /// Address clients are given (`--advertise`).
    pub advertised: String,
    /// Address of the internal listener (`--internal-listen`).
    pub internal: String,
    /// Address Kafka clients are given (`--kafka-advertise`), if the
    /// broker has a Kafka listener.
    #[serde(default)]
    pub kafka: Option<String>,
    /// Failure domain; replicas of a partition go to different racks first.
    pub rack: Option<String>,
    /// Raised by every registration (the log index that made it): a
    /// heartbeat or fence that names an older epoch is stale.
    pub epoch: u64,
    /// Missed its session: leads nothing and gets no new replicas.
    pub fenced: bool,
}

/// One partition's replica set and leadership.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionAssignment {
    /// Brokers holding a replica; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// The broker serving the partition, `None` while no in-sync replica
    /// is live.
    pub leader: Option<NodeId>,
    /// Raised on every leader change.
    pub leader_epoch: i32,
    /// In-sync replicas: those with every committed record (every
    /// replica at creation, when all are empty). Only they may be elected.
    pub isr: Vec<NodeId>,
    /// Raised on every change of leader or ISR: an ISR change proposed
    /// from an older state is refused.
    #[serde(default)]
    pub partition_epoch: i32,
    /// A reassignment in progress: replicas being added (they follow the
    /// leader and join the ISR once caught up) ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding: Vec<NodeId>,
    /// ... and replicas to drop once every added one is in sync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing: Vec<NodeId>,
}

impl PartitionAssignment {
    /// Completes a reassignment whose added replicas are all in sync: the
    /// replicas become the target, the removed ones leave the ISR, and a
    /// leader being removed hands over to an in-sync target replica.
    fn finish_reassignment(&mut self, live: &[NodeId]) {
        if self.adding.iter().any(|r| !self.isr.contains(r))
            || (self.adding.is_empty() && self.removing.is_empty())
        {
            return;
        }
        let removing = std::mem::take(&mut self.removing);
        self.adding.clear();
        self.replicas.retain(|r| !removing.contains(r));
        if self.isr.iter().any(|r| !removing.contains(r)) {
            self.isr.retain(|r| !removing.contains(r));
        }
        self.partition_epoch += 1;
        if self.leader.is_some_and(|l| removing.contains(&l)) {
            self.elect(live, false, None);
        }
    }

    /// Whether the preferred leader (the first replica) could take over:
    /// live, in sync, and not leading already.
    pub fn preferred_leader_eligible(&self, live: &[NodeId]) -> bool {
        match self.replicas.first() {
            Some(p) => self.leader != Some(*p) && live.contains(p) && self.isr.contains(p),
            None => false,
        }
    }

    /// Elects a new leader among the live in-sync replicas (the first in
    /// replica order that is live), else, if `unclean` allows it, among the
    /// live replicas (which may lack committed records), else none.
    /// Raises the leader epoch.
    fn elect(&mut self, live: &[NodeId], unclean: bool, exclude: Option<NodeId>) {
        let usable = |r: &&NodeId| live.contains(r) && Some(**r) != exclude;
        let clean = self
            .replicas
            .iter()
            .filter(|r| self.isr.contains(r))
            .find(usable)
            .copied();
        self.leader = match clean {
            Some(l) => Some(l),
            None if unclean => {
                let l = self.replicas.iter().find(usable).copied();
                if let Some(l) = l {
                    tracing::warn!(
                        leader = l,
                        "unclean leader election: committed records may be lost"
                    );
                    self.isr = vec![l];
                }
                l
            }
            None => None,
        };
        self.leader_epoch += 1;
        self.partition_epoch += 1;
    }
}

/// A topic as the cluster knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopicMetadata {
    /// Unique per creation: a topic deleted and created again under the
    /// same name gets a new id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// The topic's settings, as the broker layer encodes them (opaque here).
    pub config: serde_json::Value,
    /// Per partition, indexed by partition number.
    pub partitions: Vec<PartitionAssignment>,
}

/// Everything the quorum agrees on.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MetadataImage {
    /// Registered brokers by id.
    pub brokers: BTreeMap<NodeId, BrokerRegistration>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMetadata>,
    /// Next idempotent-producer id not yet handed to any broker.
    pub next_producer_id: i64,
    /// Users, tokens, ACLs and quotas, which every broker enforces.
    #[serde(default)]
    pub security: crate::security::SecurityState,
}

/// A change to the image, proposed to the quorum.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Command {
    /// Changes users, tokens, ACLs or quotas.
    Security(crate::security::SecurityCommand),
    /// A broker (re)starts: registers its addresses, gets a new epoch and
    /// is unfenced; partitions whose only in-sync replica it is get it back
    /// as leader.
    RegisterBroker {
        /// Node id.
        id: NodeId,
        /// Client address.
        advertised: String,
        /// Internal address.
        internal: String,
        /// Kafka address.
        #[serde(default)]
        kafka: Option<String>,
        /// Rack.
        rack: Option<String>,
    },
    /// The controller saw no heartbeat for a session: the broker leads
    /// nothing until it registers again.
    FenceBroker {
        /// Node id.
        id: NodeId,
        /// The epoch the controller saw; a newer registration wins.
        epoch: u64,
    },
    /// Removes a broker that holds no replicas.
    UnregisterBroker {
        /// Node id.
        id: NodeId,
    },
    /// Creates a topic and places its replicas.
    CreateTopic {
        /// Name.
        name: String,
        /// New unique id (chosen by the proposer).
        id: u64,
        /// Partition count.
        partitions: i32,
        /// Replicas per partition.
        replication_factor: i32,
        /// The replication factor is a default, not asked for: at most the
        /// live brokers when the command applies (the proposer's view of
        /// liveness may be behind the controller's).
        #[serde(default)]
        at_most_live: bool,
        /// Settings (opaque).
        config: serde_json::Value,
    },
    /// Deletes a topic.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// Raises a topic's partition count.
    CreatePartitions {
        /// Name.
        name: String,
        /// New total.
        total: i32,
    },
    /// A partition leader changes its ISR (a follower fell behind, or
    /// caught up). Only the current leader, in its current epoch and from
    /// the current partition epoch, may do so; the leader stays a member.
    AlterIsr {
        /// Topic.
        topic: String,
        /// The topic's id (a topic created again is another one).
        topic_id: u64,
        /// Partition.
        partition: i32,
        /// The proposing leader.
        leader: NodeId,
        /// Its leader epoch.
        leader_epoch: i32,
        /// The partition epoch the change is based on.
        partition_epoch: i32,
        /// The new ISR.
        isr: Vec<NodeId>,
    },
    /// Moves a partition to other brokers (Kafka's KIP-455): the new
    /// replicas are added and follow the leader; once all of them are in
    /// sync, the replicas become exactly `replicas` (first: the preferred
    /// leader) and the others are dropped.
    ReassignPartition {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The target replicas.
        replicas: Vec<NodeId>,
    },
    /// Gives each partition (of `topic`, or of every topic) back to its
    /// preferred leader, the first replica, where that broker is live, in
    /// the ISR and not leading it now.
    ElectPreferredLeaders {
        /// One topic, or all.
        topic: Option<String>,
    },
    /// Hands a block of producer ids to a broker.
    AllocateProducerIds {
        /// Ids in the block.
        count: i64,
    },
}

/// What applying a command did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Outcome {
    /// Applied.
    Done,
    /// The broker's new epoch.
    Registered {
        /// Epoch.
        epoch: u64,
    },
    /// Partitions whose leadership moved.
    Elected {
        /// How many.
        partitions: usize,
    },
    /// The first id of the block handed out.
    ProducerIds {
        /// First id.
        first: i64,
    },
    /// How many entries a security command changed.
    Changed {
        /// Count.
        count: usize,
    },
    /// Not applied: the rule it breaks.
    Refused(Refusal),
}

/// Why a command was not applied. Deterministic, so every node refuses
/// the same commands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A security command breaks a rule.
    #[error(transparent)]
    Security(#[from] crate::security::SecurityRefusal),
    /// Name taken.
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    /// No such topic.
    #[error("topic '{0}' does not exist")]
    TopicNotFound(String),
    /// Too few live brokers for the replication factor.
    #[error("replication factor {asked} must be in [1, {live}]: the cluster has {live} live (unfenced) brokers")]
    ReplicationFactor {
        /// Asked for.
        asked: i32,
        /// Live brokers.
        live: usize,
    },
    /// Partition count out of range.
    #[error("partition count {asked} must be in [{min}, {MAX_PARTITIONS}]")]
    PartitionCount {
        /// Asked for.
        asked: i32,
        /// Smallest allowed.
        min: i32,
    },
    /// No such broker.
    #[error("broker {0} is not registered")]
    UnknownBroker(NodeId),
    /// The broker still holds replicas.
    #[error("broker {id} still holds {replicas} partition replicas; they must be moved to other brokers before it is removed")]
    BrokerHasReplicas {
        /// Broker.
        id: NodeId,
        /// Replicas it holds.
        replicas: usize,
    },
    /// A request from a broker's older incarnation.
    #[error("broker {id} epoch {asked} is stale (current {current})")]
    StaleBrokerEpoch {
        /// Broker.
        id: NodeId,
        /// Epoch named.
        asked: u64,
        /// Epoch registered.
        current: u64,
    },
    /// The producer-id space is used up.
    #[error("producer ids are exhausted")]
    ProducerIdsExhausted,
    /// No such partition.
    #[error("topic '{topic}' has no partition {partition}")]
    PartitionNotFound {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// A reassignment that breaks a rule.
    #[error("reassigning {topic}-{partition}: {reason}")]
    Reassignment {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The rule.
        reason: String,
    },
    /// An ISR change from a leader that is no longer current, or based on
    /// an older state of the partition.
    #[error("ISR change for {topic}-{partition} is stale: {reason}")]
    StaleIsrChange {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// What differs.
        reason: String,
    },
}

impl MetadataImage {
    /// Applies `cmd`, committed at log `index`.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Outcome {
        match self.try_apply(index, cmd) {
            Ok(o) => o,
            Err(r) => Outcome::Refused(r),
        }
    }

    fn try_apply(&mut self, index: u64, cmd: &Command) -> Result<Outcome, Refusal> {
        match cmd {
            Command::Security(c) => Ok(Outcome::Changed {
                count: self.security.apply(c)?,
            }),
            Command::RegisterBroker {
                id,
                advertised,
                internal,
                kafka,
                rack,
            } => {
                let epoch = index.max(1);
                if self.brokers.get(id).is_some_and(|b| !b.fenced) {
                    // A restart within its session: the old incarnation
                    // may have lost an unsynced tail, so it leads nothing
                    // and leaves the ISR like a fenced broker, and comes
                    // back as a follower that catches up.
                    if let Some(b) = self.brokers.get_mut(id) {
                        b.fenced = true;
                    }
                    self.fence(*id);
                }
                self.brokers.insert(
                    *id,
                    BrokerRegistration {
                        id: *id,
                        advertised: advertised.clone(),
                        internal: internal.clone(),
                        kafka: kafka.clone(),
                        rack: rack.clone(),
                        epoch,
                        fenced: false,
                    },
                );
                // Partitions left leaderless whose in-sync replicas include
                // this broker (or, where the topic allows an unclean
                // election, whose replicas do) get it as leader again.
                for t in self.topics.values_mut() {
                    let unclean = unclean_allowed(&t.config);
                    for p in &mut t.partitions {
                        if p.leader.is_none()
                            && (p.isr.contains(id) || (unclean && p.replicas.contains(id)))
                        {
                            p.elect(&[*id], unclean, None);
                        }
                    }
                }
                Ok(Outcome::Registered { epoch })
            }
            Command::FenceBroker { id, epoch } => {
                let b = self
                    .brokers
                    .get_mut(id)
                    .ok_or(Refusal::UnknownBroker(*id))?;
                if b.epoch != *epoch {
                    return Err(Refusal::StaleBrokerEpoch {
                        id: *id,
                        asked: *epoch,
                        current: b.epoch,
                    });
                }
                b.fenced = true;
                self.fence(*id);
                Ok(Outcome::Done)
            }
            Command::UnregisterBroker { id } => {
                if !self.brokers.contains_key(id) {
                    return Err(Refusal::UnknownBroker(*id));
                }
                let replicas = self.replica_count(*id);
                if replicas > 0 {
                    return Err(Refusal::BrokerHasReplicas { id: *id, replicas });
                }
                self.brokers.remove(id);
                Ok(Outcome::Done)
            }
            Command::CreateTopic {
                name,
                id,
                partitions,
                replication_factor,
                at_most_live,
                config,
            } => {
                if self.topics.contains_key(name) {
                    return Err(Refusal::TopicExists(name.clone()));
                }
                if !(1..=MAX_PARTITIONS).contains(partitions) {
                    return Err(Refusal::PartitionCount {
                        asked: *partitions,
                        min: 1,
                    });
                }
                let order = self.placement_order();
                let replication_factor = &if *at_most_live {
                    (*replication_factor).min(order.len() as i32).max(1)
                } else {
                    *replication_factor
                };
                if *replication_factor < 1 || *replication_factor as usize > order.len() {
                    return Err(Refusal::ReplicationFactor {
                        asked: *replication_factor,
                        live: order.len(),
                    });
                }
                let start = (*id % order.len() as u64) as usize;
                let racks = self.racks();
                let assignments = (0..*partitions)
                    .map(|p| {
                        place(
                            &order,
                            &racks,
                            start,
                            p as usize,
                            *replication_factor as usize,
                        )
                    })
                    .collect();
                self.topics.insert(
                    name.clone(),
                    TopicMetadata {
                        id: *id,
                        name: name.clone(),
                        config: config.clone(),
                        partitions: assignments,
                    },
                );
                Ok(Outcome::Done)
            }
            Command::DeleteTopic { name } => {
                self.topics
                    .remove(name)
                    .ok_or_else(|| Refusal::TopicNotFound(name.clone()))?;
                Ok(Outcome::Done)
            }
            Command::CreatePartitions { name, total } => {
                let order = self.placement_order();
                let racks = self.racks();
                let t = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| Refusal::TopicNotFound(name.clone()))?;
                let count = t.partitions.len() as i32;
                if *total <= count || *total > MAX_PARTITIONS {
                    return Err(Refusal::PartitionCount {
                        asked: *total,
                        min: count + 1,
                    });
                }
                let rf = t.partitions.first().map_or(1, |p| p.replicas.len());
                if rf > order.len() {
                    return Err(Refusal::ReplicationFactor {
                        asked: rf as i32,
                        live: order.len(),
                    });
                }
                let start = (t.id % order.len() as u64) as usize;
                for p in count..*total {
                    t.partitions
                        .push(place(&order, &racks, start, p as usize, rf));
                }
                Ok(Outcome::Done)
            }
            Command::AlterIsr {
                topic,
                topic_id,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => {
                let stale = |reason: String| Refusal::StaleIsrChange {
                    topic: topic.clone(),
                    partition: *partition,
                    reason,
                };
                let live = self.live_set();
                let t = self
                    .topics
                    .get_mut(topic)
                    .filter(|t| t.id == *topic_id)
                    .ok_or_else(|| Refusal::TopicNotFound(topic.clone()))?;
                let p = usize::try_from(*partition)
                    .ok()
                    .and_then(|i| t.partitions.get_mut(i))
                    .ok_or_else(|| Refusal::PartitionNotFound {
                        topic: topic.clone(),
                        partition: *partition,
                    })?;
                if p.leader != Some(*leader) || p.leader_epoch != *leader_epoch {
                    return Err(stale(format!(
                        "proposed by {leader} in leader epoch {leader_epoch}, but the leader is {:?} in epoch {}",
                        p.leader, p.leader_epoch
                    )));
                }
                if p.partition_epoch != *partition_epoch {
                    return Err(stale(format!(
                        "based on partition epoch {partition_epoch}, now {}",
                        p.partition_epoch
                    )));
                }
                if !isr.contains(leader) || isr.iter().any(|r| !p.replicas.contains(r)) {
                    return Err(stale(format!(
                        "ISR {isr:?} must hold the leader and only replicas {:?}",
                        p.replicas
                    )));
                }
                // Replica order, no repeats.
                p.isr = p
                    .replicas
                    .iter()
                    .filter(|r| isr.contains(r))
                    .copied()
                    .collect();
                p.partition_epoch += 1;
                p.finish_reassignment(&live);
                Ok(Outcome::Done)
            }
            Command::ReassignPartition {
                topic,
                partition,
                replicas,
            } => {
                let refuse = |reason: String| Refusal::Reassignment {
                    topic: topic.clone(),
                    partition: *partition,
                    reason,
                };
                let mut distinct = replicas.clone();
                distinct.sort_unstable();
                distinct.dedup();
                if replicas.is_empty() || distinct.len() != replicas.len() {
                    return Err(refuse(format!(
                        "replicas {replicas:?} must be distinct broker ids, at least one"
                    )));
                }
                if let Some(b) = replicas.iter().find(|b| !self.brokers.contains_key(b)) {
                    return Err(Refusal::UnknownBroker(*b));
                }
                let live = self.live_set();
                let t = self
                    .topics
                    .get_mut(topic)
                    .ok_or_else(|| Refusal::TopicNotFound(topic.clone()))?;
                let p = usize::try_from(*partition)
                    .ok()
                    .and_then(|i| t.partitions.get_mut(i))
                    .ok_or_else(|| Refusal::PartitionNotFound {
                        topic: topic.clone(),
                        partition: *partition,
                    })?;
                if !p.adding.is_empty() || !p.removing.is_empty() {
                    return Err(refuse(format!(
                        "a reassignment is in progress (adding {:?}, removing {:?})",
                        p.adding, p.removing
                    )));
                }
                if let Some(b) = replicas
                    .iter()
                    .find(|b| !p.replicas.contains(b) && !live.contains(b))
                {
                    return Err(refuse(format!("broker {b} is fenced: it cannot catch up")));
                }
                p.adding = replicas
                    .iter()
                    .filter(|r| !p.replicas.contains(r))
                    .copied()
                    .collect();
                p.removing = p
                    .replicas
                    .iter()
                    .filter(|r| !replicas.contains(r))
                    .copied()
                    .collect();
                let mut all = replicas.clone();
                all.extend(p.removing.iter().copied());
                p.replicas = all;
                p.partition_epoch += 1;
                p.finish_reassignment(&live);
                Ok(Outcome::Done)
            }
            Command::ElectPreferredLeaders { topic } => {
                if let Some(t) = topic {
                    if !self.topics.contains_key(t) {
                        return Err(Refusal::TopicNotFound(t.clone()));
                    }
                }
                let live = self.live_set();
                let mut moved = 0;
                for t in self.topics.values_mut() {
                    if topic.as_ref().is_some_and(|name| *name != t.name) {
                        continue;
                    }
                    for p in &mut t.partitions {
                        if p.preferred_leader_eligible(&live) {
                            p.leader = p.replicas.first().copied();
                            p.leader_epoch += 1;
                            p.partition_epoch += 1;
                            moved += 1;
                        }
                    }
                }
                Ok(Outcome::Elected { partitions: moved })
            }
            Command::AllocateProducerIds { count } => {
                let first = self.next_producer_id;
                self.next_producer_id = first
                    .checked_add((*count).max(1))
                    .ok_or(Refusal::ProducerIdsExhausted)?;
                Ok(Outcome::ProducerIds { first })
            }
        }
    }

    /// Moves leadership away from the (already marked) fenced broker `id`
    /// to live in-sync replicas, and takes it out of every ISR it is not
    /// the last member of (the last one is who to come back to).
    fn fence(&mut self, id: NodeId) {
        let live = self.live_set();
        for t in self.topics.values_mut() {
            let unclean = unclean_allowed(&t.config);
            for p in &mut t.partitions {
                if !p.replicas.contains(&id) {
                    continue;
                }
                if p.isr.len() > 1 && p.isr.contains(&id) {
                    p.isr.retain(|r| *r != id);
                    p.partition_epoch += 1;
                }
                if p.leader == Some(id) {
                    p.elect(&live, unclean, Some(id));
                }
            }
        }
    }

    fn racks(&self) -> BTreeMap<NodeId, Option<String>> {
        self.brokers
            .values()
            .map(|b| (b.id, b.rack.clone()))
            .collect()
    }

    /// Partitions whose preferred leader could take over now.
    pub fn preferred_imbalance(&self) -> usize {
        let live = self.live_set();
        self.topics
            .values()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.preferred_leader_eligible(&live))
            .count()
    }

    fn live_set(&self) -> Vec<NodeId> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.id)
            .collect()
    }

    /// Live brokers in placement order: racks interleaved (one broker of
    /// each rack in turn, racks and brokers by id), as Kafka's rack-aware
    /// assignment orders them, so consecutive replicas land in different
    /// racks whenever there are several.
    fn placement_order(&self) -> Vec<NodeId> {
        let mut racks: BTreeMap<Option<&str>, Vec<NodeId>> = BTreeMap::new();
        for b in self.brokers.values().filter(|b| !b.fenced) {
            racks.entry(b.rack.as_deref()).or_default().push(b.id);
        }
        let mut order = Vec::new();
        let mut i = 0;
        loop {
            let before = order.len();
            for ids in racks.values() {
                if let Some(id) = ids.get(i) {
                    order.push(*id);
                }
            }
            if order.len() == before {
                return order;
            }
            i += 1;
        }
    }

    /// Replicas `id` holds, over all topics.
    pub fn replica_count(&self, id: NodeId) -> usize {
        self.topics
            .values()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.replicas.contains(&id))
            .count()
    }

    /// Partitions `id` leads, over all topics.
    pub fn leader_count(&self, id: NodeId) -> usize {
        self.topics
            .values()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.leader == Some(id))
            .count()
    }
}

/// Kafka's round-robin assignment: partition `p`'s first replica (the
/// preferred leader) walks the order from `start`, so leaders are spread
/// evenly; each follower starts from a shift that changes every full
/// round, so followers are spread too, and takes the next broker of a rack
/// the partition does not use yet (while there is one).
fn place(
    order: &[NodeId],
    racks: &BTreeMap<NodeId, Option<String>>,
    start: usize,
    p: usize,
    rf: usize,
) -> PartitionAssignment {
    let n = order.len();
    let rack = |id: &NodeId| racks.get(id).cloned().flatten();
    let rack_count = order
        .iter()
        .map(rack)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let first = (start + p) % n;
    let mut replicas = vec![order[first]];
    let mut used = std::collections::BTreeSet::from([rack(&order[first])]);
    if n > 1 {
        let shift_base = p / n;
        for j in 0..rf.saturating_sub(1) {
            let shift = 1 + (shift_base + j) % (n - 1);
            let from = (first + shift) % n;
            let candidates: Vec<NodeId> = (0..n)
                .map(|k| order[(from + k) % n])
                .filter(|b| !replicas.contains(b))
                .collect();
            let pick = candidates
                .iter()
                .find(|b| used.len() >= rack_count || !used.contains(&rack(b)))
                .or(candidates.first());
            if let Some(&b) = pick {
                used.insert(rack(&b));
                replicas.push(b);
            }
        }
    }
    PartitionAssignment {
        leader: Some(replicas[0]),
        leader_epoch: 0,
        isr: replicas.clone(),
        replicas,
        partition_epoch: 0,
        adding: Vec::new(),
        removing: Vec::new(),
    }
}

/// Whether a topic's settings allow electing a replica outside the ISR
/// when no in-sync replica is live (`unclean_leader_election`; off unless
/// set).
fn unclean_allowed(config: &serde_json::Value) -> bool {
    config
        .get("unclean_leader_election")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests;
