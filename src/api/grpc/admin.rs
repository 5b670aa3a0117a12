//! `sluice.v1.Admin`: topic administration.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tonic::{Request, Response, Status};

use super::auth::{caller, require, Require};
use super::cluster::{cluster_status, is_forwarded, ClusterLink, Hops, STANDALONE_NODE_ID};
use super::pb::{self, admin_client::AdminClient, admin_server::Admin};
use super::{convert, timed};
use crate::broker::{is_internal_topic, Broker, BrokerError, INTERNAL_TOPIC_PREFIX};
use crate::cluster::{Command, NodeId};
use crate::security::acl::CLUSTER_RESOURCE;
use crate::security::{Operation, ResourceType};

/// How long an admin call waits for this node to apply what it committed.
const SYNC_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves `sluice.v1.Admin`.
#[derive(Debug, Clone)]
pub struct AdminService {
    broker: Arc<Broker>,
    /// In a cluster: topic changes go through the metadata quorum.
    link: Option<ClusterLink>,
}

fn id32(id: NodeId) -> i32 {
    i32::try_from(id).unwrap_or(i32::MAX)
}

fn refuse_internal(name: &str) -> Result<(), Status> {
    if is_internal_topic(name) {
        return Err(Status::invalid_argument(format!(
            "topic '{name}' is internal (names starting with '{INTERNAL_TOPIC_PREFIX}' are the broker's own state)"
        )));
    }
    Ok(())
}

impl AdminService {
    /// A service over `broker`, in a cluster when `link` is given.
    pub fn new(broker: Arc<Broker>, link: Option<ClusterLink>) -> Self {
        Self { broker, link }
    }

    /// Proposes `cmd`, then waits until this node's broker has applied it
    /// (so the caller's next request here sees the change).
    async fn commit(&self, link: &ClusterLink, cmd: Command) -> Result<(), Status> {
        let (_, index) = link.cluster.propose(cmd).await.map_err(cluster_status)?;
        link.cluster
            .wait_synced(index, SYNC_TIMEOUT)
            .await
            .map_err(cluster_status)
    }

    /// Fills in placement: from the metadata, or this node alone.
    /// Returns the leaders elsewhere and the partitions each leads.
    fn annotate(&self, out: &mut pb::TopicDescription) -> BTreeMap<NodeId, Vec<usize>> {
        let mut remote: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
        let Some(link) = &self.link else {
            let me = id32(STANDALONE_NODE_ID);
            for p in &mut out.partitions {
                p.leader = me;
                p.replicas = vec![me];
                p.isr = vec![me];
            }
            return remote;
        };
        let image = link.cluster.image();
        let Some(t) = image.topics.get(&out.name) else {
            return remote;
        };
        let me = link.cluster.node_id();
        for (i, p) in out.partitions.iter_mut().enumerate() {
            let Some(a) = t.partitions.get(i) else {
                continue;
            };
            p.leader = a.leader.map_or(-1, id32);
            p.leader_epoch = a.leader_epoch;
            p.replicas = a.replicas.iter().copied().map(id32).collect();
            p.isr = a.isr.iter().copied().map(id32).collect();
            match a.leader {
                Some(l) if l != me => remote.entry(l).or_default().push(i),
                _ => {}
            }
        }
        remote
    }

    /// A topic's description: partition state from each partition's
    /// leader (this node's only, if `local_only`), placement from the
    /// metadata.
    async fn describe(
        &self,
        name: String,
        local_only: bool,
    ) -> Result<pb::TopicDescription, Status> {
        let info = self
            .blocking({
                let name = name.clone();
                move |b| b.describe_topic(&name)
            })
            .await?;
        let mut out = convert::topic_out(info);
        let remote = self.annotate(&mut out);
        let Some(link) = &self.link else {
            return Ok(out);
        };
        if local_only {
            return Ok(out);
        }
        let image = link.cluster.image();
        // The leaders hold the partitions' data: ask each for its share.
        for (leader, indices) in remote {
            let Some(b) = image.brokers.get(&leader) else {
                continue;
            };
            ClusterLink::count_forward("DescribeTopic");
            let reply = async {
                let mut client = AdminClient::new(link.channel(&b.internal)?);
                client
                    .describe_topic(link.forwarded(
                        pb::DescribeTopicRequest { name: name.clone() },
                        Some(Duration::from_secs(5)),
                        Hops::default(),
                    ))
                    .await
            }
            .await;
            match reply {
                Ok(r) => {
                    let theirs = r.into_inner().topic.unwrap_or_default().partitions;
                    for i in indices {
                        if let (Some(src), Some(dst)) = (theirs.get(i), out.partitions.get_mut(i)) {
                            dst.log_start_offset = src.log_start_offset;
                            dst.high_watermark = src.high_watermark;
                            dst.log_end_offset = src.log_end_offset;
                            dst.size_bytes = src.size_bytes;
                            dst.segments = src.segments;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(broker = leader, error = %e, "describing partitions at their leader failed")
                }
            }
        }
        Ok(out)
    }

    /// Runs blocking admin work (file-system calls) off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Broker) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, Status> {
        let broker = self.broker.clone();
        tokio::task::spawn_blocking(move || f(&broker))
            .await
            .map_err(|e| Status::internal(format!("admin task failed: {e}")))?
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let _t = timed("CreateTopic");
        // Kafka's rule: create on the cluster, or on the topic's name.
        let c = caller(&request);
        let name = &request.get_ref().name;
        if !c.allows(Operation::Create, ResourceType::Cluster, CLUSTER_RESOURCE) {
            c.require(Operation::Create, ResourceType::Topic, name)?;
        }
        let r = request.into_inner();
        let config = convert::topic_config_in(r.config)?;
        let Some(link) = &self.link else {
            if let Some(rf) = r.replication_factor {
                if rf != 1 {
                    return Err(Status::invalid_argument(format!(
                        "replication factor {rf} must be in [1, 1]: a single-node server has one broker"
                    )));
                }
            }
            if let Some(m) = config.min_insync_replicas.filter(|m| *m != 1) {
                return Err(Status::invalid_argument(format!(
                    "min_insync_replicas {m} must be in [1, 1]: a single-node server has one replica"
                )));
            }
            let info = self
                .blocking(move |b| b.create_topic(&r.name, r.partitions, config))
                .await?;
            let mut out = convert::topic_out(info);
            self.annotate(&mut out);
            return Ok(Response::new(pb::CreateTopicResponse { topic: Some(out) }));
        };
        self.broker
            .validate_new_topic(&r.name, r.partitions, &config)?;
        let configured = link.cluster.config().default_replication_factor;
        let rf = match r.replication_factor {
            Some(rf) => rf,
            None => configured.unwrap_or_else(|| link.cluster.live_brokers().clamp(1, 3) as i32),
        };
        // min(3, live brokers) is applied by the controller, whose view of
        // liveness is the one that counts.
        let at_most_live = r.replication_factor.is_none() && configured.is_none();
        if let Some(m) = config.min_insync_replicas {
            if m > rf {
                return Err(Status::invalid_argument(format!(
                    "min_insync_replicas {m} must be in [1, {rf}] (the replication factor): a larger minimum would refuse every acks=ALL write"
                )));
            }
        }
        let id = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
        let config = serde_json::to_value(config)
            .map_err(|e| Status::internal(format!("encoding topic settings: {e}")))?;
        let cmd = Command::CreateTopic {
            name: r.name.clone(),
            id,
            partitions: r.partitions,
            replication_factor: rf,
            at_most_live,
            config,
        };
        match self.commit(link, cmd).await {
            Ok(()) => {}
            // A retried proposal that had committed: the topic is ours.
            Err(s)
                if s.code() == tonic::Code::AlreadyExists
                    && link.cluster.image().topics.get(&r.name).map(|t| t.id) == Some(id) =>
            {
                let (_, applied) = link.cluster.raft_position();
                link.cluster
                    .wait_synced(applied.unwrap_or(0), SYNC_TIMEOUT)
                    .await
                    .map_err(cluster_status)?;
            }
            Err(s) => return Err(s),
        }
        let info = self.blocking(move |b| b.new_topic_info(&r.name)).await?;
        let mut out = convert::topic_out(info);
        self.annotate(&mut out);
        Ok(Response::new(pb::CreateTopicResponse { topic: Some(out) }))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let _t = timed("DeleteTopic");
        require(
            &request,
            Operation::Delete,
            ResourceType::Topic,
            &request.get_ref().name,
        )?;
        let name = request.into_inner().name;
        if let Some(link) = &self.link {
            refuse_internal(&name)?;
            self.commit(link, Command::DeleteTopic { name }).await?;
            return Ok(Response::new(pb::DeleteTopicResponse {}));
        }
        self.blocking(move |b| b.delete_topic(&name)).await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let _t = timed("ListTopics");
        // Only the topics the caller may describe.
        let c = caller(&request);
        let visible = |name: &str| c.allows(Operation::Describe, ResourceType::Topic, name);
        if let Some(link) = &self.link {
            let topics = link
                .cluster
                .image()
                .topics
                .values()
                .filter(|t| visible(&t.name))
                .map(|t| pb::TopicSummary {
                    name: t.name.clone(),
                    partitions: t.partitions.len() as i32,
                })
                .collect();
            return Ok(Response::new(pb::ListTopicsResponse { topics }));
        }
        let topics = self
            .broker
            .list_topics()
            .into_iter()
            .filter(|(name, _)| visible(name))
            .map(|(name, partitions)| pb::TopicSummary { name, partitions })
            .collect();
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let _t = timed("DescribeTopic");
        require(
            &request,
            Operation::Describe,
            ResourceType::Topic,
            &request.get_ref().name,
        )?;
        let local_only = is_forwarded(&request);
        if let (Some(link), true) = (&self.link, local_only) {
            link.catch_up(&request).await?;
        }
        let name = request.into_inner().name;
        Ok(Response::new(pb::DescribeTopicResponse {
            topic: Some(self.describe(name, local_only).await?),
        }))
    }

    async fn create_partitions(
        &self,
        request: Request<pb::CreatePartitionsRequest>,
    ) -> Result<Response<pb::CreatePartitionsResponse>, Status> {
        let _t = timed("CreatePartitions");
        require(
            &request,
            Operation::Alter,
            ResourceType::Topic,
            &request.get_ref().name,
        )?;
        let r = request.into_inner();
        if let Some(link) = &self.link {
            refuse_internal(&r.name)?;
            let cmd = Command::CreatePartitions {
                name: r.name.clone(),
                total: r.total_partitions,
            };
            self.commit(link, cmd).await?;
        } else {
            let name = r.name.clone();
            self.blocking(move |b| b.create_partitions(&name, r.total_partitions))
                .await?;
        }
        Ok(Response::new(pb::CreatePartitionsResponse {
            topic: Some(self.describe(r.name, false).await?),
        }))
    }
}
