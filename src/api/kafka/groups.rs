//! FindCoordinator, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups,
//! and the classic group protocol (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup) over the coordinator's [`ClassicGroups`].
//!
//! [`ClassicGroups`]: crate::coordinator::classic::ClassicGroups

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    describe_groups_response::{DescribedGroup, DescribedGroupMember},
    find_coordinator_response::Coordinator as KafkaCoordinator,
    join_group_response::JoinGroupResponseMember,
    leave_group_response::MemberResponse,
    list_groups_response::ListedGroup,
    offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic},
    offset_fetch_response::{OffsetFetchResponsePartition, OffsetFetchResponseTopic},
    BrokerId, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::ResponseError;

use super::{coordinator_error, text, Call, Endpoint, Kafka};
use crate::coordinator::classic::{ClassicError, Join};
use crate::coordinator::{
    CoordinatorError, HeartbeatRequest as GroupHeartbeat, OffsetCommit, Tp, OFFSETS_TOPIC,
};
use crate::security::{Operation, ResourceType};
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment as HeartbeatAssignment, TopicPartitions as HeartbeatTopicPartitions,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartitions, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};

/// FindCoordinator key type of a consumer group.
const KEY_GROUP: i8 = 0;

fn classic_code(e: &ClassicError) -> ResponseError {
    match e {
        ClassicError::UnknownMember => ResponseError::UnknownMemberId,
        ClassicError::IllegalGeneration(_) => ResponseError::IllegalGeneration,
        ClassicError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        ClassicError::InconsistentProtocol | ClassicError::OtherProtocol => {
            ResponseError::InconsistentGroupProtocol
        }
        ClassicError::MemberIdRequired(_) => ResponseError::MemberIdRequired,
        ClassicError::InvalidSessionTimeout(_) => ResponseError::InvalidSessionTimeout,
        ClassicError::GroupFull => ResponseError::GroupMaxSizeReached,
    }
}

impl Kafka {
    /// The broker coordinating `group`: the leader of its offsets
    /// partition.
    fn coordinator_of(&self, group: &str) -> Result<Endpoint, ResponseError> {
        let Some(link) = self.link() else {
            return Ok(self.me.clone());
        };
        let shard = self.coordinator.shard_of(group);
        let image = link.cluster.image();
        let leader = image
            .topics
            .get(OFFSETS_TOPIC)
            .and_then(|t| t.partitions.get(shard as usize))
            .and_then(|a| a.leader)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        self.endpoint_of(leader)
            .ok_or(ResponseError::CoordinatorNotAvailable)
    }

    pub(crate) fn find_coordinator(
        &self,
        call: &Call,
        r: FindCoordinatorRequest,
    ) -> FindCoordinatorResponse {
        let keys: Vec<String> = if call.version >= 4 {
            r.coordinator_keys.iter().map(|k| k.to_string()).collect()
        } else {
            vec![r.key.to_string()]
        };
        type Found = (String, Result<Endpoint, (ResponseError, String)>);
        let found: Vec<Found> = keys
            .into_iter()
            .map(|k| {
                let e = if r.key_type == KEY_GROUP
                    && !call.caller.allows(Operation::Describe, ResourceType::Group, &k)
                {
                    Err((
                        ResponseError::GroupAuthorizationFailed,
                        format!("{} may not describe group '{k}'", call.caller.principal),
                    ))
                } else if r.key_type != KEY_GROUP {
                    Err((
                        ResponseError::InvalidRequest,
                        "only consumer groups have coordinators here: transactions are not supported".to_string(),
                    ))
                } else {
                    self.coordinator_of(&k)
                        .map_err(|c| (c, "the group's coordinator is not available yet".to_string()))
                };
                (k, e)
            })
            .collect();
        if call.version >= 4 {
            return FindCoordinatorResponse::default().with_coordinators(
                found
                    .into_iter()
                    .map(|(k, e)| {
                        let c = KafkaCoordinator::default().with_key(text(k));
                        match e {
                            Ok(ep) => c
                                .with_node_id(BrokerId(ep.id))
                                .with_host(text(ep.host))
                                .with_port(ep.port),
                            Err((code, why)) => c
                                .with_node_id(BrokerId(-1))
                                .with_port(-1)
                                .with_error_code(code.code())
                                .with_error_message(Some(text(why))),
                        }
                    })
                    .collect(),
            );
        }
        match found.into_iter().next().map(|(_, e)| e) {
            Some(Ok(ep)) => FindCoordinatorResponse::default()
                .with_node_id(BrokerId(ep.id))
                .with_host(text(ep.host))
                .with_port(ep.port),
            Some(Err((code, why))) => FindCoordinatorResponse::default()
                .with_error_code(code.code())
                .with_error_message(Some(text(why)))
                .with_node_id(BrokerId(-1))
                .with_port(-1),
            None => FindCoordinatorResponse::default()
                .with_error_code(ResponseError::InvalidRequest.code()),
        }
    }

    /// Runs blocking coordinator work (shard locks, durable appends) off
    /// the runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<crate::coordinator::Coordinator>) -> Result<T, CoordinatorError>
            + Send
            + 'static,
    ) -> Result<T, ResponseError> {
        let c = self.coordinator.clone();
        match tokio::task::spawn_blocking(move || f(c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(coordinator_error(&e).0),
            Err(_) => Err(ResponseError::UnknownServerError),
        }
    }

    pub(crate) async fn offset_commit(
        &self,
        call: &Call,
        r: OffsetCommitRequest,
    ) -> OffsetCommitResponse {
        let group = r.group_id.0.to_string();
        let member = r.member_id.to_string();
        let generation = r.generation_id_or_member_epoch;
        let mut offsets = Vec::new();
        // Topics the caller may not read are not committed.
        let readable = |topic: &str| {
            call.caller
                .allows(Operation::Read, ResourceType::Topic, topic)
        };
        for t in &r.topics {
            if !readable(&t.name) {
                continue;
            }
            let topic: Arc<str> = Arc::from(t.name.0.as_str());
            for p in &t.partitions {
                offsets.push(OffsetCommit {
                    tp: Tp::new(topic.clone(), p.partition_index),
                    offset: p.committed_offset,
                    metadata: p.committed_metadata.as_deref().unwrap_or("").to_string(),
                });
            }
        }
        // A classic member's commit is checked against its generation; a
        // KIP-848 member's (v9) against its member epoch by the group.
        let classic = self.coordinator.classic().has_members(&group) || member.is_empty();
        let checked = self.classic_guard(call, &group, false).and_then(|()| {
            if !classic {
                return Ok(());
            }
            self.coordinator
                .classic()
                .check_commit(&group, &member, generation)
                .map_err(|e| classic_code(&e))
        });
        let result = match checked {
            Err(e) => Err(e),
            Ok(()) => {
                let g = group.clone();
                let (m, epoch) = if classic {
                    (String::new(), 0)
                } else {
                    (member, generation)
                };
                self.blocking(move |c| c.commit(&g, &m, epoch, offsets))
                    .await
            }
        };
        let code = result.err().map_or(0, |e| e.code());
        OffsetCommitResponse::default().with_topics(
            r.topics
                .into_iter()
                .map(|t| {
                    let code = if code == 0 && !readable(&t.name) {
                        ResponseError::TopicAuthorizationFailed.code()
                    } else {
                        code
                    };
                    OffsetCommitResponseTopic::default()
                        .with_name(t.name)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }

    pub(crate) async fn offset_fetch(
        &self,
        call: &Call,
        r: OffsetFetchRequest,
    ) -> OffsetFetchResponse {
        let describable = |g: &str| {
            call.caller
                .allows(Operation::Describe, ResourceType::Group, g)
        };
        if call.version < 8 {
            if !describable(&r.group_id) {
                return OffsetFetchResponse::default()
                    .with_error_code(ResponseError::GroupAuthorizationFailed.code());
            }
            let topics = r.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect()
            });
            return match self
                .committed_offsets(r.group_id.0.to_string(), topics)
                .await
            {
                Ok(topics) => OffsetFetchResponse::default().with_topics(topics),
                Err(e) => OffsetFetchResponse::default().with_error_code(e.code()),
            };
        }
        // v8+: several groups per request.
        let mut groups = Vec::with_capacity(r.groups.len());
        for g in r.groups {
            let topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect()
            });
            let out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            if !describable(&g.group_id) {
                groups.push(out.with_error_code(ResponseError::GroupAuthorizationFailed.code()));
                continue;
            }
            groups.push(
                match self
                    .committed_offsets(g.group_id.0.to_string(), topics)
                    .await
                {
                    Err(e) => out.with_error_code(e.code()),
                    Ok(topics) => out.with_topics(
                        topics
                            .into_iter()
                            .map(|t| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(t.name)
                                    .with_partitions(
                                        t.partitions
                                            .into_iter()
                                            .map(|p| {
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(p.partition_index)
                                                    .with_committed_offset(p.committed_offset)
                                                    .with_committed_leader_epoch(
                                                        p.committed_leader_epoch,
                                                    )
                                                    .with_metadata(p.metadata)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
                },
            );
        }
        OffsetFetchResponse::default().with_groups(groups)
    }

    /// A group's committed offsets: of the partitions asked for (-1 where
    /// none is committed), or every committed one.
    async fn committed_offsets(
        &self,
        group: String,
        topics: Option<Vec<(TopicName, Vec<i32>)>>,
    ) -> Result<Vec<OffsetFetchResponseTopic>, ResponseError> {
        let names: Vec<String> = topics
            .iter()
            .flatten()
            .map(|(n, _)| n.0.to_string())
            .collect();
        let committed = self
            .blocking(move |c| c.fetch_offsets(&group, &names))
            .await?;
        let entry = |p: i32, c: Option<&crate::coordinator::Committed>| {
            OffsetFetchResponsePartition::default()
                .with_partition_index(p)
                .with_committed_offset(c.map_or(-1, |c| c.offset))
                .with_committed_leader_epoch(-1)
                .with_metadata(Some(text(c.map_or("", |c| c.metadata.as_str()))))
        };
        Ok(match topics {
            Some(ts) => ts
                .into_iter()
                .map(|(name, parts)| {
                    let partitions = parts
                        .into_iter()
                        .map(|p| {
                            let c = committed
                                .iter()
                                .find(|(tp, _)| *tp.topic == *name.0 && tp.partition == p)
                                .map(|(_, c)| c);
                            entry(p, c)
                        })
                        .collect();
                    OffsetFetchResponseTopic::default()
                        .with_name(name)
                        .with_partitions(partitions)
                })
                .collect(),
            None => {
                let mut by_topic: std::collections::BTreeMap<
                    String,
                    Vec<OffsetFetchResponsePartition>,
                > = Default::default();
                for (tp, c) in &committed {
                    by_topic
                        .entry(tp.topic.to_string())
                        .or_default()
                        .push(entry(tp.partition, Some(c)));
                }
                by_topic
                    .into_iter()
                    .map(|(n, parts)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(text(n)))
                            .with_partitions(parts)
                    })
                    .collect()
            }
        })
    }

    pub(crate) fn list_groups(&self, call: &Call, r: ListGroupsRequest) -> ListGroupsResponse {
        let groups = self
            .coordinator
            .list_groups()
            .into_iter()
            .filter(|g| {
                call.caller
                    .allows(Operation::Describe, ResourceType::Group, &g.name)
            })
            .filter(|g| match self.link() {
                // In a cluster each coordinator lists the groups it leads.
                Some(_) => self.coordinator.check_coordinates(&g.name).is_ok(),
                None => true,
            })
            .map(|g| {
                let state = match self.coordinator.classic().describe(&g.name) {
                    Some(c) => c.state.as_str().to_string(),
                    None => kafka_state(g.state).to_string(),
                };
                (g.name, state)
            })
            .filter(|(_, state)| {
                r.states_filter.is_empty() || r.states_filter.iter().any(|s| s.as_str() == state)
            })
            .map(|(name, state)| {
                ListedGroup::default()
                    .with_group_id(GroupId(text(name)))
                    .with_protocol_type(text("consumer"))
                    .with_group_state(text(state))
                    .with_group_type(text("classic"))
            })
            .collect();
        ListGroupsResponse::default().with_groups(groups)
    }

    pub(crate) fn describe_groups(
        &self,
        call: &Call,
        r: DescribeGroupsRequest,
    ) -> DescribeGroupsResponse {
        let groups = r
            .groups
            .into_iter()
            .map(|id| {
                let name = id.0.to_string();
                let out = DescribedGroup::default().with_group_id(id);
                if !call
                    .caller
                    .allows(Operation::Describe, ResourceType::Group, &name)
                {
                    return out.with_error_code(ResponseError::GroupAuthorizationFailed.code());
                }
                if let Err(e) = self.coordinator.check_coordinates(&name) {
                    return out.with_error_code(coordinator_error(&e).0.code());
                }
                if let Some(c) = self.coordinator.classic().describe(&name) {
                    return out
                        .with_group_state(text(c.state.as_str()))
                        .with_protocol_type(text(c.protocol_type))
                        .with_protocol_data(text(c.protocol))
                        .with_members(
                            c.members
                                .into_iter()
                                .map(|m| {
                                    DescribedGroupMember::default()
                                        .with_member_id(text(m.member_id))
                                        .with_client_id(text(m.client_id))
                                        .with_client_host(text(m.client_host))
                                        .with_member_metadata(m.metadata)
                                        .with_member_assignment(m.assignment)
                                })
                                .collect(),
                        );
                }
                // A group of the server-side protocol, or one that only has
                // committed offsets: Kafka's "Dead" if unknown.
                let state = self
                    .coordinator
                    .list_groups()
                    .into_iter()
                    .find(|g| g.name == name)
                    .map_or("Dead", |g| kafka_state(g.state));
                out.with_group_state(text(state))
                    .with_protocol_type(text(if state == "Dead" { "" } else { "consumer" }))
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(groups)
    }

    /// Refuses a classic call on a broker that does not coordinate the
    /// group, or a join into a group of the other protocol.
    fn classic_guard(&self, call: &Call, group: &str, joining: bool) -> Result<(), ResponseError> {
        if !call
            .caller
            .allows(Operation::Read, ResourceType::Group, group)
        {
            return Err(ResponseError::GroupAuthorizationFailed);
        }
        self.coordinator
            .check_coordinates(group)
            .map_err(|e| coordinator_error(&e).0)?;
        if joining && self.coordinator.has_live_members(group) {
            return Err(ResponseError::InconsistentGroupProtocol);
        }
        Ok(())
    }

    pub(crate) async fn join_group(&self, call: &Call, r: JoinGroupRequest) -> JoinGroupResponse {
        let group = r.group_id.0.to_string();
        let fail = |code: ResponseError, member: String| {
            JoinGroupResponse::default()
                .with_error_code(code.code())
                .with_generation_id(-1)
                .with_member_id(text(member))
        };
        if let Err(e) = self.classic_guard(call, &group, true) {
            return fail(e, r.member_id.to_string());
        }
        let join = Join {
            member_id: r.member_id.to_string(),
            client_id: call.client_id.clone(),
            client_host: call.peer.clone(),
            session_timeout_ms: r.session_timeout_ms,
            rebalance_timeout_ms: if call.version >= 1 {
                r.rebalance_timeout_ms
            } else {
                r.session_timeout_ms
            },
            protocol_type: r.protocol_type.to_string(),
            protocols: r
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
            id_round_trip: call.version >= 4,
        };
        let rx = match self.coordinator.classic().join(&group, join) {
            Ok(rx) => rx,
            Err(ClassicError::MemberIdRequired(id)) => {
                return fail(ResponseError::MemberIdRequired, id);
            }
            Err(e) => return fail(classic_code(&e), r.member_id.to_string()),
        };
        match rx.await {
            Ok(Ok(j)) => JoinGroupResponse::default()
                .with_generation_id(j.generation)
                .with_protocol_type(Some(text(r.protocol_type.to_string())))
                .with_protocol_name(Some(text(j.protocol)))
                .with_leader(text(j.leader))
                .with_member_id(text(j.member_id))
                .with_members(
                    j.members
                        .into_iter()
                        .map(|(id, meta)| {
                            JoinGroupResponseMember::default()
                                .with_member_id(text(id))
                                .with_metadata(meta)
                        })
                        .collect(),
                ),
            Ok(Err(e)) => fail(classic_code(&e), r.member_id.to_string()),
            Err(_) => fail(ResponseError::RebalanceInProgress, r.member_id.to_string()),
        }
    }

    pub(crate) async fn sync_group(&self, call: &Call, r: SyncGroupRequest) -> SyncGroupResponse {
        let group = r.group_id.0.to_string();
        if let Err(e) = self.classic_guard(call, &group, false) {
            return SyncGroupResponse::default().with_error_code(e.code());
        }
        let assignments: Vec<(String, Bytes)> = r
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect();
        let rx =
            self.coordinator
                .classic()
                .sync(&group, &r.member_id, r.generation_id, assignments);
        let protocol = self
            .coordinator
            .classic()
            .describe(&group)
            .map(|d| d.protocol);
        match rx.await {
            Ok(Ok(a)) => SyncGroupResponse::default()
                .with_assignment(a)
                .with_protocol_type(r.protocol_type)
                .with_protocol_name(protocol.map(text)),
            Ok(Err(e)) => SyncGroupResponse::default().with_error_code(classic_code(&e).code()),
            Err(_) => SyncGroupResponse::default()
                .with_error_code(ResponseError::RebalanceInProgress.code()),
        }
    }

    pub(crate) fn heartbeat(&self, call: &Call, r: HeartbeatRequest) -> HeartbeatResponse {
        let group = r.group_id.0.to_string();
        let code =
            match self.classic_guard(call, &group, false) {
                Err(e) => e.code(),
                Ok(()) => match self.coordinator.classic().heartbeat(
                    &group,
                    &r.member_id,
                    r.generation_id,
                ) {
                    Ok(()) => 0,
                    Err(e) => classic_code(&e).code(),
                },
            };
        HeartbeatResponse::default().with_error_code(code)
    }

    pub(crate) fn leave_group(&self, call: &Call, r: LeaveGroupRequest) -> LeaveGroupResponse {
        let group = r.group_id.0.to_string();
        if let Err(e) = self.classic_guard(call, &group, false) {
            return LeaveGroupResponse::default().with_error_code(e.code());
        }
        let ids: Vec<String> = if call.version >= 3 {
            r.members.iter().map(|m| m.member_id.to_string()).collect()
        } else {
            vec![r.member_id.to_string()]
        };
        let results: Vec<(String, i16)> = ids
            .into_iter()
            .map(|id| {
                let code = match self.coordinator.classic().leave(&group, &id) {
                    Ok(()) => 0,
                    Err(e) => classic_code(&e).code(),
                };
                (id, code)
            })
            .collect();
        if call.version >= 3 {
            LeaveGroupResponse::default().with_members(
                results
                    .into_iter()
                    .map(|(id, code)| {
                        MemberResponse::default()
                            .with_member_id(text(id))
                            .with_error_code(code)
                    })
                    .collect(),
            )
        } else {
            LeaveGroupResponse::default().with_error_code(results.first().map_or(0, |r| r.1))
        }
    }
}

/// Kafka's name for a server-side group's state.
fn kafka_state(s: crate::coordinator::GroupState) -> &'static str {
    match s {
        crate::coordinator::GroupState::Empty => "Empty",
        crate::coordinator::GroupState::Reconciling => "CompletingRebalance",
        crate::coordinator::GroupState::Stable => "Stable",
    }
}

impl Kafka {
    /// KIP-848: the server-side consumer protocol, which is Sluice's own
    /// group protocol (the one gRPC members speak), so Kafka and gRPC
    /// members can share a group.
    pub(crate) async fn consumer_group_heartbeat(
        &self,
        call: &Call,
        r: ConsumerGroupHeartbeatRequest,
    ) -> ConsumerGroupHeartbeatResponse {
        let group = r.group_id.0.to_string();
        let fail = |code: ResponseError, why: String| {
            ConsumerGroupHeartbeatResponse::default()
                .with_error_code(code.code())
                .with_error_message(Some(text(why)))
        };
        if !call
            .caller
            .allows(Operation::Read, ResourceType::Group, &group)
        {
            return fail(
                ResponseError::GroupAuthorizationFailed,
                format!("{} may not read group '{group}'", call.caller.principal),
            );
        }
        if self.coordinator.classic().has_members(&group) {
            return fail(
                ResponseError::GroupIdNotFound,
                format!("group '{group}' has members of the classic protocol; a group is used by one protocol at a time"),
            );
        }
        if r.subscribed_topic_regex
            .as_ref()
            .is_some_and(|re| !re.is_empty())
        {
            return fail(
                ResponseError::InvalidRequest,
                "subscribing by regular expression is not supported: name the topics".into(),
            );
        }
        let member = r.member_id.to_string();
        let key = (group.clone(), member.clone());
        let subscriptions = match r.subscribed_topic_names {
            Some(names) => names.into_iter().map(|n| n.0.to_string()).collect(),
            None => self
                .subscriptions
                .lock()
                .get(&key)
                .cloned()
                .unwrap_or_default(),
        };
        let req = GroupHeartbeat {
            member_id: member,
            member_epoch: r.member_epoch,
            client_id: call.client_id.clone(),
            subscriptions: subscriptions.clone(),
            session_timeout_ms: None,
            rebalance_timeout_ms: (r.rebalance_timeout_ms > 0).then_some(r.rebalance_timeout_ms),
        };
        let g = group.clone();
        let answer = match self.blocking(move |c| c.heartbeat(&g, req)).await {
            Ok(a) => a,
            Err(code) => return fail(code, format!("heartbeat refused: {code}")),
        };
        {
            // Short section: one map entry.
            let mut subs = self.subscriptions.lock();
            subs.remove(&key);
            if answer.member_epoch >= 0 {
                subs.insert((group, answer.member_id.clone()), subscriptions);
            }
        }
        let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
        for tp in &answer.assignment {
            by_topic.entry(&tp.topic).or_default().push(tp.partition);
        }
        let topic_partitions = by_topic
            .into_iter()
            .filter_map(|(t, parts)| {
                let id = self.broker.topic(t).ok()?.incarnation();
                Some(
                    HeartbeatTopicPartitions::default()
                        .with_topic_id(uuid::Uuid::from_u64_pair(id, 0))
                        .with_partitions(parts),
                )
            })
            .collect();
        ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(text(answer.member_id)))
            .with_member_epoch(answer.member_epoch)
            .with_heartbeat_interval_ms(answer.heartbeat_interval_ms)
            .with_assignment(
                (answer.member_epoch >= 0).then(|| {
                    HeartbeatAssignment::default().with_topic_partitions(topic_partitions)
                }),
            )
    }
}
