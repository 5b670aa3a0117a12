//! The coordinator's admin surface: listing, describing and deleting
//! groups, resetting their offsets, and the numbers for metrics.

use super::*;

/// A group in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// Name.
    pub name: String,
    /// State.
    pub state: GroupState,
    /// Live members.
    pub members: usize,
}

/// A member as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Client id.
    pub client_id: String,
    /// Confirmed epoch.
    pub member_epoch: i32,
    /// Subscribed topics.
    pub subscriptions: Vec<String>,
    /// Confirmed partitions.
    pub assignment: Assignment,
    /// Sent, not yet confirmed partitions (with the confirmed ones, what it
    /// may be consuming).
    pub pending: Option<Assignment>,
    /// What the assignor wants it to own.
    pub target: Assignment,
}

/// One partition's progress in a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Partition.
    pub tp: Tp,
    /// Member that may be consuming it.
    pub owner: Option<String>,
    /// Committed offset.
    pub committed: Option<Committed>,
    /// Log start offset.
    pub log_start: i64,
    /// High watermark.
    pub end: i64,
    /// `end - committed` (or `end - log_start` if nothing is committed).
    pub lag: i64,
}

/// A group as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Name.
    pub name: String,
    /// State.
    pub state: GroupState,
    /// Target assignment version.
    pub epoch: i32,
    /// Members.
    pub members: Vec<MemberDescription>,
    /// Partitions subscribed to or with a committed offset.
    pub partitions: Vec<PartitionLag>,
}

/// Where a reset moves a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// Log start.
    Earliest,
    /// High watermark.
    Latest,
    /// This offset (clamped to the partition's range).
    Offset(i64),
    /// First offset at or after this time (ms), or the end if none.
    Timestamp(i64),
}

impl ResetTo {
    /// The offset this names in a partition with offsets `o` (listed
    /// with the timestamp, for [`ResetTo::Timestamp`]).
    pub fn offset_in(&self, o: &crate::broker::PartitionOffsets) -> i64 {
        match *self {
            ResetTo::Earliest => o.earliest,
            ResetTo::Latest => o.latest,
            ResetTo::Offset(n) => n.clamp(o.earliest, o.latest),
            ResetTo::Timestamp(_) => match o.for_timestamp {
                Some(t) if t >= 0 => t,
                _ => o.latest,
            },
        }
    }
}

/// A partition's offset after a reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetResult {
    /// Partition.
    pub tp: Tp,
    /// Committed before.
    pub previous: Option<i64>,
    /// Committed now.
    pub offset: i64,
}

/// Gauges for metrics.
/// Groups whose lag the metrics report at most (label cardinality).
pub const MAX_METRIC_GROUPS: usize = 1000;

#[derive(Debug, Clone, Copy, Default)]
pub struct CoordinatorStats {
    /// Groups.
    pub groups: usize,
    /// Live members.
    pub members: usize,
}

impl Coordinator {
    /// Every group, sorted by name.
    pub fn list_groups(&self) -> Vec<GroupSummary> {
        let mut out = Vec::new();
        for shard in &self.shards {
            shard.peek(|st| {
                out.extend(st.groups.values().map(|g| GroupSummary {
                    name: g.name.clone(),
                    state: g.state(),
                    members: g.members.len(),
                }))
            });
        }
        // Kafka classic-protocol groups: their members live apart.
        for (name, state, members) in self.classic().list() {
            let state = classic_state(state);
            match out.iter_mut().find(|g| g.name == name) {
                Some(g) => {
                    g.members += members;
                    g.state = state;
                }
                None => out.push(GroupSummary {
                    name,
                    state,
                    members,
                }),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Lag (records committed offsets are behind the high watermark) of
    /// the groups coordinated here, per group and topic, for metrics: at
    /// most [`MAX_METRIC_GROUPS`] groups. Blocking, like
    /// [`Coordinator::describe_group`].
    pub fn lag_by_topic(&self) -> Vec<(String, String, i64)> {
        let mut out = Vec::new();
        for g in self.list_groups().into_iter().take(MAX_METRIC_GROUPS) {
            let Ok(d) = self.describe_group(&g.name) else {
                continue;
            };
            let mut by_topic: std::collections::BTreeMap<&str, i64> = Default::default();
            for p in &d.partitions {
                *by_topic.entry(&p.tp.topic).or_default() += p.lag;
            }
            out.extend(
                by_topic
                    .into_iter()
                    .map(|(t, lag)| (g.name.clone(), t.to_string(), lag)),
            );
        }
        out
    }

    /// A group's state, members and per-partition lag. Blocking (opens
    /// partition logs for their end offsets).
    pub fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        validate_name("group", group)?;
        let classic = self.classic().describe(group);
        let (g, state) = {
            let st = self.lock_shard(group)?;
            let g = match (st.groups.get(group), &classic) {
                (Some(g), _) => g.clone(),
                (None, Some(_)) => Group::new(group),
                (None, None) => {
                    return Err(CoordinatorError::GroupNotFound {
                        group: group.to_string(),
                    })
                }
            };
            let state = match &classic {
                Some(c) if !c.members.is_empty() => classic_state(c.state),
                _ => g.state(),
            };
            (g, state)
        };
        let mut members: Vec<MemberDescription> = g
            .members
            .values()
            .map(|m| MemberDescription {
                member_id: m.id.clone(),
                client_id: m.client_id.clone(),
                member_epoch: m.epoch,
                subscriptions: m.subscriptions.iter().map(|s| s.to_string()).collect(),
                assignment: m.owned.clone(),
                pending: m.pending.as_ref().map(|p| p.assignment.clone()),
                target: m.target.clone(),
            })
            .collect();
        // Every partition of subscribed topics, and every committed one.
        let mut topics: BTreeSet<Arc<str>> = g
            .members
            .values()
            .flat_map(|m| m.subscriptions.iter().cloned())
            .collect();
        let classic_members: Vec<MemberDescription> = classic
            .iter()
            .flat_map(|c| c.members.iter().map(move |m| (c.generation, m)))
            .map(|(generation, m)| {
                let (subscriptions, assignment) = classic_member_view(&m.metadata, &m.assignment);
                MemberDescription {
                    member_id: m.member_id.clone(),
                    client_id: m.client_id.clone(),
                    member_epoch: generation,
                    subscriptions,
                    target: assignment.clone(),
                    assignment,
                    pending: None,
                }
            })
            .collect();
        topics.extend(
            classic_members
                .iter()
                .flat_map(|m| m.subscriptions.iter().map(|s| Arc::from(s.as_str()))),
        );
        members.extend(classic_members.iter().cloned());
        topics.extend(g.offsets.keys().map(|tp| tp.topic.clone()));
        let mut partitions = Vec::new();
        for topic in topics {
            let offsets = match self.broker.offsets_anywhere(&topic, &[], None) {
                Ok(o) => o,
                Err(BrokerError::TopicNotFound { .. }) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            let mut seen = BTreeSet::new();
            for o in offsets {
                let tp = Tp::new(topic.clone(), o.partition);
                seen.insert(o.partition);
                let committed = g
                    .offsets
                    .get(&tp)
                    .filter(|c| c.topic_id == 0 || c.topic_id == self.topic_id(&topic))
                    .cloned();
                let from = committed.as_ref().map_or(o.earliest, |c| c.offset);
                let classic_owner = classic_members
                    .iter()
                    .find(|m| m.assignment.contains(&tp))
                    .map(|m| m.member_id.clone());
                partitions.push(PartitionLag {
                    owner: g
                        .members
                        .values()
                        .find(|m| m.may_own(&tp))
                        .map(|m| m.id.clone())
                        .or(classic_owner),
                    lag: (o.latest - from).max(0),
                    committed,
                    log_start: o.earliest,
                    end: o.latest,
                    tp,
                });
            }
            // Committed offsets of partitions (or topics) that are gone.
            for (tp, c) in g.offsets.range(Tp::new(topic.clone(), i32::MIN)..) {
                if tp.topic != topic {
                    break;
                }
                if !seen.contains(&tp.partition) {
                    partitions.push(PartitionLag {
                        tp: tp.clone(),
                        owner: None,
                        committed: Some(c.clone()),
                        log_start: 0,
                        end: 0,
                        lag: 0,
                    });
                }
            }
        }
        Ok(GroupDescription {
            name: g.name.clone(),
            state,
            epoch: g.epoch,
            members,
            partitions,
        })
    }

    /// Deletes a group without live members, with its offsets.
    pub fn delete_group(&self, group: &str) -> Result<()> {
        validate_name("group", group)?;
        let mut st = self.lock_shard(group)?;
        let g = st
            .groups
            .get(group)
            .ok_or_else(|| CoordinatorError::GroupNotFound {
                group: group.to_string(),
            })?;
        if !g.members.is_empty() {
            return Err(CoordinatorError::GroupNotEmpty {
                group: group.to_string(),
                members: g.members.len(),
                action: "delete",
            });
        }
        Self::persist(&mut st, vec![records::group_tombstone(group)])?;
        st.groups.remove(group);
        tracing::info!(group, "group deleted");
        Ok(())
    }

    /// Moves a group's committed offsets for `topic` (the given partitions,
    /// or all) to `to`. The group must have no live members. With
    /// `dry_run`, computes without writing. Blocking.
    pub fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: &[i32],
        to: ResetTo,
        dry_run: bool,
        create: bool,
    ) -> Result<Vec<ResetResult>> {
        validate_name("group", group)?;
        validate_user_topic(topic)?;
        let timestamp = match to {
            ResetTo::Timestamp(t) => Some(t),
            _ => None,
        };
        let offsets = self.broker.offsets_anywhere(topic, partitions, timestamp)?;
        let now = (self.clock)();
        let mut st = self.lock_shard(group)?;
        match st.groups.get(group) {
            Some(g) if !g.members.is_empty() => {
                return Err(CoordinatorError::GroupNotEmpty {
                    group: group.to_string(),
                    members: g.members.len(),
                    action: "reset-offsets",
                });
            }
            Some(_) => {}
            None if create => {}
            None => {
                return Err(CoordinatorError::GroupNotFound {
                    group: group.to_string(),
                })
            }
        }
        let topic: Arc<str> = Arc::from(topic);
        let mut results = Vec::new();
        for o in offsets {
            let offset = to.offset_in(&o);
            let tp = Tp::new(topic.clone(), o.partition);
            let previous = st
                .groups
                .get(group)
                .and_then(|g| g.offsets.get(&tp))
                .map(|c| c.offset);
            results.push(ResetResult {
                tp,
                previous,
                offset,
            });
        }
        if dry_run || results.is_empty() {
            return Ok(results);
        }
        let committed = results
            .iter()
            .map(|r| (r.tp.clone(), r.offset, String::new()))
            .collect();
        let ids = |t: &str| self.topic_id(t);
        Self::write_offsets(&mut st, group, now, committed, &ids)?;
        tracing::info!(group, topic = %topic, partitions = results.len(), "group offsets reset");
        Ok(results)
    }

    /// Numbers for the metrics endpoint.
    pub fn stats(&self) -> CoordinatorStats {
        let mut s = CoordinatorStats::default();
        for shard in &self.shards {
            shard.peek(|st| {
                s.groups += st.groups.len();
                s.members += st.groups.values().map(|g| g.members.len()).sum::<usize>();
            });
        }
        s
    }
}

/// A classic group's state in the server-side protocol's terms.
fn classic_state(s: super::classic::ClassicState) -> GroupState {
    use super::classic::ClassicState as C;
    match s {
        C::Empty => GroupState::Empty,
        C::Stable => GroupState::Stable,
        C::PreparingRebalance | C::CompletingRebalance => GroupState::Reconciling,
    }
}

/// A Kafka consumer's subscription and assignment, from the opaque bytes
/// of the "consumer" protocol type (empty if they are something else).
fn classic_member_view(
    metadata: &bytes::Bytes,
    assignment: &bytes::Bytes,
) -> (Vec<String>, Assignment) {
    use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
    use kafka_protocol::protocol::Decodable;
    let versioned = |b: &bytes::Bytes| -> Option<(i16, bytes::Bytes)> {
        if b.len() < 2 {
            return None;
        }
        Some((i16::from_be_bytes([b[0], b[1]]), b.slice(2..)))
    };
    let subscriptions = versioned(metadata)
        .and_then(|(v, mut b)| ConsumerProtocolSubscription::decode(&mut b, v.clamp(0, 3)).ok())
        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default();
    let mut owned = Assignment::new();
    if let Some(a) = versioned(assignment)
        .and_then(|(v, mut b)| ConsumerProtocolAssignment::decode(&mut b, v.clamp(0, 3)).ok())
    {
        for t in a.assigned_partitions {
            let topic: Arc<str> = Arc::from(t.topic.0.as_str());
            for p in t.partitions {
                owned.insert(Tp::new(topic.clone(), p));
            }
        }
    }
    (subscriptions, owned)
}
