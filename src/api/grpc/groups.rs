//! `sluice.v1.Groups` and `sluice.v1.GroupAdmin`: consumer groups.

use std::sync::Arc;

use tonic::{transport::Channel, Request, Response, Status};

use super::auth::{caller, require, Require};
use super::cluster::ClusterLink;
use super::pb::{
    self, group_admin_client::GroupAdminClient, group_admin_server::GroupAdmin,
    groups_client::GroupsClient, groups_server::Groups,
};
use super::timed;
use crate::coordinator::{
    Assignment, Coordinator, CoordinatorError, GroupState, HeartbeatRequest, OffsetCommit, ResetTo,
    Tp, OFFSETS_TOPIC,
};
use crate::security::{Operation, ResourceType};

fn assignment_out(a: &Assignment) -> Vec<pb::TopicPartitions> {
    crate::coordinator::records::to_topic_partitions(a)
        .into_iter()
        .map(|t| pb::TopicPartitions {
            topic: t.topic,
            partitions: t.partitions,
        })
        .collect()
}

fn state_out(s: GroupState) -> pb::GroupState {
    match s {
        GroupState::Empty => pb::GroupState::Empty,
        GroupState::Reconciling => pb::GroupState::Reconciling,
        GroupState::Stable => pb::GroupState::Stable,
    }
}

/// Runs coordinator work off the async workers: every call may append to
/// (or replay) an offsets partition, and a snapshot syncs it.
async fn blocking<T: Send + 'static>(
    c: &Arc<Coordinator>,
    f: impl FnOnce(&Coordinator) -> Result<T, CoordinatorError> + Send + 'static,
) -> Result<T, Status> {
    let c = c.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .map_err(|e| Status::internal(format!("group task failed: {e}")))?
        .map_err(Status::from)
}

/// In a cluster: a client of the broker that coordinates `group` (the
/// leader of its offsets partition), or `None` when this broker does.
async fn coordinator_of<T>(
    link: &Option<ClusterLink>,
    coordinator: &Coordinator,
    request: &Request<T>,
    group: &str,
    method: &'static str,
) -> Result<Option<(ClusterLink, Channel)>, Status> {
    let Some(link) = link else { return Ok(None) };
    let partition = coordinator.shard_of(group);
    let channel = link
        .coordinator_channel(request, OFFSETS_TOPIC, partition)
        .await?;
    Ok(channel.map(|c| {
        ClusterLink::count_forward(method);
        (link.clone(), c)
    }))
}

/// Serves `sluice.v1.Groups`.
#[derive(Debug, Clone)]
pub struct GroupsService {
    coordinator: Arc<Coordinator>,
    link: Option<ClusterLink>,
}

impl GroupsService {
    /// A service over `coordinator`; in a cluster, requests for groups
    /// another broker coordinates are forwarded there.
    pub fn new(coordinator: Arc<Coordinator>, link: Option<ClusterLink>) -> Self {
        Self { coordinator, link }
    }
}

#[tonic::async_trait]
impl Groups for GroupsService {
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let _t = timed("Heartbeat");
        let c = caller(&request);
        let r = request.get_ref();
        c.require(Operation::Read, ResourceType::Group, &r.group)?;
        for t in &r.topics {
            c.require(Operation::Read, ResourceType::Topic, t)?;
        }
        if let Some((link, channel)) = coordinator_of(
            &self.link,
            &self.coordinator,
            &request,
            &request.get_ref().group,
            "Heartbeat",
        )
        .await?
        {
            return GroupsClient::new(channel)
                .heartbeat(link.relay(request))
                .await;
        }
        let r = request.into_inner();
        let opt = |v: i32| (v != 0).then_some(v);
        let req = HeartbeatRequest {
            member_id: r.member_id,
            member_epoch: r.member_epoch,
            client_id: r.client_id,
            subscriptions: r.topics,
            session_timeout_ms: opt(r.session_timeout_ms),
            rebalance_timeout_ms: opt(r.rebalance_timeout_ms),
        };
        let group = r.group;
        let resp = blocking(&self.coordinator, move |c| c.heartbeat(&group, req)).await?;
        Ok(Response::new(pb::HeartbeatResponse {
            member_id: resp.member_id,
            member_epoch: resp.member_epoch,
            assignment: assignment_out(&resp.assignment),
            heartbeat_interval_ms: resp.heartbeat_interval_ms,
        }))
    }

    async fn commit_offsets(
        &self,
        request: Request<pb::CommitOffsetsRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        let _t = timed("CommitOffsets");
        let c = caller(&request);
        let r = request.get_ref();
        c.require(Operation::Read, ResourceType::Group, &r.group)?;
        for o in &r.offsets {
            c.require(Operation::Read, ResourceType::Topic, &o.topic)?;
        }
        if let Some((link, channel)) = coordinator_of(
            &self.link,
            &self.coordinator,
            &request,
            &request.get_ref().group,
            "CommitOffsets",
        )
        .await?
        {
            return GroupsClient::new(channel)
                .commit_offsets(link.relay(request))
                .await;
        }
        let r = request.into_inner();
        let offsets = r
            .offsets
            .into_iter()
            .map(|o| OffsetCommit {
                tp: Tp::new(o.topic, o.partition),
                offset: o.offset,
                metadata: o.metadata,
            })
            .collect();
        blocking(&self.coordinator, move |c| {
            c.commit(&r.group, &r.member_id, r.member_epoch, offsets)
        })
        .await?;
        Ok(Response::new(pb::CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<pb::FetchOffsetsRequest>,
    ) -> Result<Response<pb::FetchOffsetsResponse>, Status> {
        let _t = timed("FetchOffsets");
        require(
            &request,
            Operation::Describe,
            ResourceType::Group,
            &request.get_ref().group,
        )?;
        if let Some((link, channel)) = coordinator_of(
            &self.link,
            &self.coordinator,
            &request,
            &request.get_ref().group,
            "FetchOffsets",
        )
        .await?
        {
            return GroupsClient::new(channel)
                .fetch_offsets(link.relay(request))
                .await;
        }
        let r = request.into_inner();
        let offsets = blocking(&self.coordinator, move |c| {
            c.fetch_offsets(&r.group, &r.topics)
        })
        .await?;
        Ok(Response::new(pb::FetchOffsetsResponse {
            offsets: offsets
                .into_iter()
                .map(|(tp, c)| pb::CommittedOffset {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    offset: c.offset,
                    metadata: c.metadata,
                    commit_timestamp_ms: c.commit_ms,
                })
                .collect(),
        }))
    }
}

/// Serves `sluice.v1.GroupAdmin`.
#[derive(Debug, Clone)]
pub struct GroupAdminService {
    coordinator: Arc<Coordinator>,
    link: Option<ClusterLink>,
}

impl GroupAdminService {
    /// A service over `coordinator`; in a cluster, requests for groups
    /// another broker coordinates are forwarded there.
    pub fn new(coordinator: Arc<Coordinator>, link: Option<ClusterLink>) -> Self {
        Self { coordinator, link }
    }
}

#[tonic::async_trait]
impl GroupAdmin for GroupAdminService {
    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let _t = timed("ListGroups");
        let c = caller(&request);
        let groups = self
            .coordinator
            .list_groups()
            .into_iter()
            .filter(|g| c.allows(Operation::Describe, ResourceType::Group, &g.name))
            .map(|g| pb::GroupListing {
                group: g.name,
                state: state_out(g.state) as i32,
                members: g.members as i32,
            })
            .collect();
        Ok(Response::new(pb::ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        request: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::DescribeGroupResponse>, Status> {
        let _t = timed("DescribeGroup");
        require(
            &request,
            Operation::Describe,
            ResourceType::Group,
            &request.get_ref().group,
        )?;
        if let Some((link, channel)) = coordinator_of(
            &self.link,
            &self.coordinator,
            &request,
            &request.get_ref().group,
            "DescribeGroup",
        )
        .await?
        {
            return GroupAdminClient::new(channel)
                .describe_group(link.relay(request))
                .await;
        }
        let group = request.into_inner().group;
        let d = blocking(&self.coordinator, move |c| c.describe_group(&group)).await?;
        Ok(Response::new(pb::DescribeGroupResponse {
            group: d.name,
            state: state_out(d.state) as i32,
            group_epoch: d.epoch,
            members: d
                .members
                .iter()
                .map(|m| pb::MemberDescription {
                    member_id: m.member_id.clone(),
                    client_id: m.client_id.clone(),
                    member_epoch: m.member_epoch,
                    topics: m.subscriptions.clone(),
                    assignment: assignment_out(&m.assignment),
                    pending: m.pending.as_ref().map(assignment_out).unwrap_or_default(),
                    target: assignment_out(&m.target),
                })
                .collect(),
            partitions: d
                .partitions
                .into_iter()
                .map(|p| pb::PartitionLag {
                    topic: p.tp.topic.to_string(),
                    partition: p.tp.partition,
                    owner: p.owner.unwrap_or_default(),
                    committed_offset: p.committed.as_ref().map_or(-1, |c| c.offset),
                    metadata: p.committed.map(|c| c.metadata).unwrap_or_default(),
                    log_start_offset: p.log_start,
                    high_watermark: p.end,
                    lag: p.lag,
                })
                .collect(),
        }))
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let _t = timed("DeleteGroup");
        require(
            &request,
            Operation::Delete,
            ResourceType::Group,
            &request.get_ref().group,
        )?;
        if let Some((link, channel)) = coordinator_of(
            &self.link,
            &self.coordinator,
            &request,
            &request.get_ref().group,
            "DeleteGroup",
        )
        .await?
        {
            return GroupAdminClient::new(channel)
                .delete_group(link.relay(request))
                .await;
        }
        let group = request.into_inner().group;
        blocking(&self.coordinator, move |c| c.delete_group(&group)).await?;
        Ok(Response::new(pb::DeleteGroupResponse {}))
    }

    async fn reset_offsets(
        &self,
        request: Request<pb::ResetOffsetsRequest>,
    ) -> Result<Response<pb::ResetOffsetsResponse>, Status> {
        let _t = timed("ResetOffsets");
        let c = caller(&request);
        c.require(
            Operation::Read,
            ResourceType::Group,
            &request.get_ref().group,
        )?;
        c.require(
            Operation::Read,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        if let Some((link, channel)) = coordinator_of(
            &self.link,
            &self.coordinator,
            &request,
            &request.get_ref().group,
            "ResetOffsets",
        )
        .await?
        {
            return GroupAdminClient::new(channel)
                .reset_offsets(link.relay(request))
                .await;
        }
        let r = request.into_inner();
        let to = match r.to {
            Some(pb::reset_offsets_request::To::Earliest(())) => ResetTo::Earliest,
            Some(pb::reset_offsets_request::To::Latest(())) => ResetTo::Latest,
            Some(pb::reset_offsets_request::To::Offset(o)) => {
                if o < 0 {
                    return Err(Status::invalid_argument(format!(
                        "offset {o} must be at least 0"
                    )));
                }
                ResetTo::Offset(o)
            }
            Some(pb::reset_offsets_request::To::TimestampMs(t)) => ResetTo::Timestamp(t),
            None => {
                return Err(Status::invalid_argument(
                    "reset needs one of earliest, latest, offset or timestamp_ms",
                ))
            }
        };
        let results = blocking(&self.coordinator, move |c| {
            c.reset_offsets(&r.group, &r.topic, &r.partitions, to, r.dry_run, r.create)
        })
        .await?;
        Ok(Response::new(pb::ResetOffsetsResponse {
            offsets: results
                .into_iter()
                .map(|x| pb::ResetOffset {
                    topic: x.tp.topic.to_string(),
                    partition: x.tp.partition,
                    previous_offset: x.previous.unwrap_or(-1),
                    offset: x.offset,
                })
                .collect(),
        }))
    }
}
