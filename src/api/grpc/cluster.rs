//! `sluice.v1.Cluster` (metadata for smart clients, cluster status,
//! decommissioning) and [`ClusterLink`]: what the other services use to
//! route a request to the broker that leads its partition, or to the
//! active controller.
//!
//! Forwarding goes over the internal listener, which serves the public
//! services too. A forwarded request carries the `sluice-forwarded`
//! header with its hop count and the metadata index of the broker that
//! sent it; the receiver first applies as much metadata, so each hop
//! routes on a view at least as new as the one before. A broker whose
//! newer view names another leader forwards once more; the second hop
//! serves locally or answers UNAVAILABLE with the leader it knows, so
//! stale metadata can cost a retry but never a loop.

use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::security::{Operation, ResourceType};
use parking_lot::Mutex;
use tonic::{metadata::MetadataValue, transport::Channel, Request, Response, Status};

use super::pb::{self, cluster_server::Cluster as ClusterApi};
use super::{status, timed};
use crate::broker::Broker;
use crate::cluster::{Cluster, ClusterError, NodeId, Route};
use crate::dial;

/// Header that marks a request forwarded by another broker; its value is
/// the number of brokers that forwarded it.
pub const FORWARDED_HEADER: &str = "sluice-forwarded";
/// The most times a request is forwarded: once by the broker the client
/// picked, once more by a leader-to-be whose newer metadata moved the
/// partition on (a broker that lagged behind a leader change).
const MAX_HOPS: u8 = 2;
/// Header with the metadata index the forwarding broker had applied: the
/// receiver serves the request only once it has applied as much (a topic
/// just created through one broker is known to the leader it forwards to).
pub const METADATA_INDEX_HEADER: &str = "sluice-metadata-index";
/// How long a forwarded request waits for the receiver to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// Trailer naming the leader a NOT_LEADER reply points to (`id@address`).
pub const LEADER_HEADER: &str = "sluice-leader";

/// Deadline of a coordinator request relayed to its coordinator.
const RELAY_TIMEOUT: Duration = Duration::from_secs(60);

/// Node id a single-node server reports.
pub const STANDALONE_NODE_ID: NodeId = 1;

/// The services' handle on the cluster.
#[derive(Clone)]
pub struct ClusterLink {
    /// This node's cluster membership.
    pub cluster: Arc<Cluster>,
    /// Channels to the other nodes' internal listeners, by address. Held
    /// only to look up or insert.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Spreads keyless records over partitions, request by request.
    keyless: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("node", &self.cluster.node_id())
            .finish_non_exhaustive()
    }
}

impl ClusterLink {
    /// A link for `cluster`.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self {
            cluster,
            channels: Arc::default(),
            keyless: Arc::default(),
        }
    }

    /// The next keyless-record spin.
    pub fn next_keyless(&self) -> u64 {
        self.keyless
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// A (lazily connected) channel to a node's internal listener.
    pub fn channel(&self, address: &str) -> Result<Channel, Status> {
        if let Some(c) = self.channels.lock().get(address) {
            return Ok(c.clone());
        }
        let c = dial::endpoint(address, self.cluster.config().internal_tls.as_deref())
            .map_err(|e| Status::internal(format!("bad internal address: {e}")))?
            .initial_stream_window_size(super::HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(super::HTTP2_CONNECTION_WINDOW)
            .connect_with_connector_lazy(dial::Dialer);
        self.channels.lock().insert(address.to_string(), c.clone());
        Ok(c)
    }

    /// Where a partition's requests go; NOT_LEADER when the leader is
    /// elsewhere and the request has been forwarded as often as it may.
    pub fn route(&self, topic: &str, partition: i32, hops: Hops) -> Result<Route, Status> {
        let route = self
            .cluster
            .route(topic, partition)
            .map_err(cluster_status)?;
        match route {
            Route::Remote { id, advertised, .. } if !hops.may_forward() => {
                Err(cluster_status(ClusterError::NotLeader {
                    here: self.cluster.node_id(),
                    topic: topic.to_string(),
                    partition,
                    leader: Some((id, advertised)),
                }))
            }
            r => Ok(r),
        }
    }

    /// `msg`, which reached this broker after `hops` forwards, as a
    /// request forwarded from this broker: marked, with the metadata index
    /// this broker has applied and the caller's deadline.
    pub fn forwarded<T>(&self, msg: T, timeout: Option<Duration>, hops: Hops) -> Request<T> {
        let mut r = forwarded(msg, timeout, hops);
        if let Ok(v) = self.cluster.synced_index().to_string().parse() {
            r.metadata_mut().insert(METADATA_INDEX_HEADER, v);
        }
        r
    }

    /// For a forwarded request: waits until this broker has applied the
    /// metadata the forwarding broker had.
    pub async fn catch_up<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(index) = request
            .metadata()
            .get(METADATA_INDEX_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return Ok(());
        };
        self.cluster
            .wait_synced(index, CATCH_UP_TIMEOUT)
            .await
            .map_err(cluster_status)
    }

    /// The internal channel of the broker that leads `topic`'s
    /// `partition` (a coordinator's shard), or `None` when this broker
    /// does; a request forwarded as often as it may be is answered
    /// NOT_LEADER instead.
    pub async fn coordinator_channel<T>(
        &self,
        request: &Request<T>,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Channel>, Status> {
        let hops = Hops::of(request);
        if hops.forwarded() {
            self.catch_up(request).await?;
        }
        match self.route(topic, partition, hops)? {
            Route::Local => Ok(None),
            Route::Remote { internal, .. } => Ok(Some(self.channel(&internal)?)),
        }
    }

    /// `request` relayed to another broker as a forwarded request.
    pub fn relay<T>(&self, request: Request<T>) -> Request<T> {
        let hops = Hops::of(&request);
        self.forwarded(request.into_inner(), Some(RELAY_TIMEOUT), hops)
    }

    /// Counts a request forwarded to another broker.
    pub fn count_forward(method: &'static str) {
        metrics::counter!("sluice_forwarded_requests_total", "method" => method).increment(1);
    }
}

/// How many brokers forwarded a request: 0 for one from a client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hops(u8);

impl Hops {
    /// The hop count `request` carries.
    pub fn of<T>(request: &Request<T>) -> Self {
        match request.metadata().get(FORWARDED_HEADER) {
            None => Hops(0),
            Some(v) => Hops(
                v.to_str()
                    .ok()
                    .and_then(|v| v.parse::<u8>().ok())
                    // Unreadable: treat it as forwarded as often as it may be.
                    .unwrap_or(MAX_HOPS)
                    .max(1),
            ),
        }
    }

    /// Whether another broker forwarded the request.
    pub fn forwarded(self) -> bool {
        self.0 > 0
    }

    /// Whether the request may be forwarded once more.
    pub fn may_forward(self) -> bool {
        self.0 < MAX_HOPS
    }
}

/// Whether `request` was forwarded by another broker.
pub fn is_forwarded<T>(request: &Request<T>) -> bool {
    Hops::of(request).forwarded()
}

/// `msg`, which reached this broker after `hops` forwards, as a forwarded
/// request, keeping the caller's deadline.
pub fn forwarded<T>(msg: T, timeout: Option<Duration>, hops: Hops) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(FORWARDED_HEADER, MetadataValue::from(u32::from(hops.0) + 1));
    if let Some(t) = timeout {
        r.set_timeout(t);
    }
    r
}

/// The status for a cluster error (see `status.rs` for the codes).
pub fn cluster_status(e: ClusterError) -> Status {
    let mut s = Status::new(status::cluster_code(&e), e.to_string());
    if let ClusterError::NotLeader {
        leader: Some((id, addr)),
        ..
    } = &e
    {
        if let Ok(v) = format!("{id}@{addr}").parse() {
            s.metadata_mut().insert(LEADER_HEADER, v);
        }
    }
    s
}

/// Serves `sluice.v1.Cluster`.
#[derive(Debug, Clone)]
pub struct ClusterService {
    broker: Arc<Broker>,
    link: Option<ClusterLink>,
    /// Client address of a single-node server (what `Metadata` hands out).
    advertised: String,
}

impl ClusterService {
    /// A service over `broker`, in a cluster when `link` is given.
    pub fn new(broker: Arc<Broker>, link: Option<ClusterLink>, advertised: String) -> Self {
        Self {
            broker,
            link,
            advertised,
        }
    }
}

fn id32(id: NodeId) -> i32 {
    i32::try_from(id).unwrap_or(i32::MAX)
}

#[tonic::async_trait]
impl ClusterApi for ClusterService {
    async fn metadata(
        &self,
        request: Request<pb::MetadataRequest>,
    ) -> Result<Response<pb::MetadataResponse>, Status> {
        let _t = timed("Metadata");
        // Topics named must be describable; listing all shows only those.
        let who = super::auth::caller(&request);
        use super::auth::Require;
        for t in &request.get_ref().topics {
            who.require(Operation::Describe, ResourceType::Topic, t)?;
        }
        let visible = |name: &str| who.allows(Operation::Describe, ResourceType::Topic, name);
        let wanted = request.into_inner().topics;
        let Some(link) = &self.link else {
            // A single node leads everything.
            let me = id32(STANDALONE_NODE_ID);
            let mut topics = Vec::new();
            for (name, n) in self.broker.list_topics() {
                if !wanted.is_empty() && !wanted.contains(&name) || !visible(&name) {
                    continue;
                }
                let id = self.broker.topic(&name).map_or(0, |t| t.incarnation());
                topics.push(pb::TopicMetadata {
                    name,
                    topic_id: id,
                    partitions: (0..n)
                        .map(|partition| pb::PartitionMetadata {
                            partition,
                            leader: me,
                            leader_epoch: 0,
                            replicas: vec![me],
                            isr: vec![me],
                            ..Default::default()
                        })
                        .collect(),
                });
            }
            return Ok(Response::new(pb::MetadataResponse {
                brokers: vec![pb::BrokerAddress {
                    id: me,
                    address: self.advertised.clone(),
                    rack: None,
                }],
                topics,
                answered_by: me,
                controller: me,
            }));
        };
        let image = link.cluster.image();
        for name in &wanted {
            if !image.topics.contains_key(name) {
                return Err(Status::not_found(format!("topic '{name}' does not exist")));
            }
        }
        Ok(Response::new(pb::MetadataResponse {
            brokers: image
                .brokers
                .values()
                .filter(|b| !b.fenced)
                .map(|b| pb::BrokerAddress {
                    id: id32(b.id),
                    address: b.advertised.clone(),
                    rack: b.rack.clone(),
                })
                .collect(),
            topics: image
                .topics
                .values()
                .filter(|t| {
                    if wanted.is_empty() {
                        !crate::broker::is_internal_topic(&t.name) && visible(&t.name)
                    } else {
                        wanted.contains(&t.name)
                    }
                })
                .map(|t| pb::TopicMetadata {
                    name: t.name.clone(),
                    topic_id: t.id,
                    partitions: t
                        .partitions
                        .iter()
                        .enumerate()
                        .map(|(i, p)| pb::PartitionMetadata {
                            partition: i as i32,
                            leader: p.leader.map_or(-1, id32),
                            leader_epoch: p.leader_epoch,
                            replicas: p.replicas.iter().copied().map(id32).collect(),
                            isr: p.isr.iter().copied().map(id32).collect(),
                            adding: p.adding.iter().copied().map(id32).collect(),
                            removing: p.removing.iter().copied().map(id32).collect(),
                        })
                        .collect(),
                })
                .collect(),
            answered_by: id32(link.cluster.node_id()),
            controller: link.cluster.controller().map_or(-1, id32),
        }))
    }

    async fn describe_cluster(
        &self,
        _request: Request<pb::DescribeClusterRequest>,
    ) -> Result<Response<pb::DescribeClusterResponse>, Status> {
        let _t = timed("DescribeCluster");
        let Some(link) = &self.link else {
            let me = id32(STANDALONE_NODE_ID);
            let partitions: i32 = self.broker.list_topics().iter().map(|(_, n)| *n).sum();
            return Ok(Response::new(pb::DescribeClusterResponse {
                nodes: vec![pb::NodeStatus {
                    id: me,
                    address: self.advertised.clone(),
                    internal_address: String::new(),
                    rack: None,
                    role: "standalone".into(),
                    live: true,
                    leader_partitions: partitions,
                    replica_partitions: partitions,
                    broker_epoch: 0,
                    matched_index: -1,
                }],
                controller: me,
                term: 0,
                committed_index: -1,
                applied_index: -1,
                answered_by: me,
                mode: "standalone".into(),
            }));
        };
        let c = &link.cluster;
        let (term, applied) = c.raft_position();
        let nodes = c
            .nodes()
            .into_iter()
            .map(|n| pb::NodeStatus {
                id: id32(n.id),
                address: n.advertised,
                internal_address: n.internal,
                rack: n.rack,
                role: n.role.into(),
                live: n.live,
                leader_partitions: n.leader_partitions.min(i32::MAX as usize) as i32,
                replica_partitions: n.replica_partitions.min(i32::MAX as usize) as i32,
                broker_epoch: n.epoch,
                matched_index: n.matched.map_or(-1, |m| m as i64),
            })
            .collect();
        Ok(Response::new(pb::DescribeClusterResponse {
            nodes,
            controller: c.controller().map_or(-1, id32),
            term,
            committed_index: applied.map_or(-1, |a| a as i64),
            applied_index: applied.map_or(-1, |a| a as i64),
            answered_by: id32(c.node_id()),
            mode: "cluster".into(),
        }))
    }

    async fn decommission_broker(
        &self,
        request: Request<pb::DecommissionBrokerRequest>,
    ) -> Result<Response<pb::DecommissionBrokerResponse>, Status> {
        let _t = timed("DecommissionBroker");
        let id = request.into_inner().id;
        let Some(link) = &self.link else {
            return Err(Status::failed_precondition(
                "a single-node server has no other broker to move data to",
            ));
        };
        let id = NodeId::try_from(id)
            .map_err(|_| Status::invalid_argument(format!("broker id {id} must be >= 0")))?;
        link.cluster
            .decommission(id)
            .await
            .map_err(cluster_status)?;
        Ok(Response::new(pb::DecommissionBrokerResponse {}))
    }

    async fn reassign_partition(
        &self,
        request: Request<pb::ReassignPartitionRequest>,
    ) -> Result<Response<pb::ReassignPartitionResponse>, Status> {
        let _t = timed("ReassignPartition");
        let r = request.into_inner();
        let Some(link) = &self.link else {
            return Err(Status::failed_precondition(
                "a single-node server has no other broker to move a partition to",
            ));
        };
        let replicas = r
            .replicas
            .iter()
            .map(|&id| {
                NodeId::try_from(id)
                    .map_err(|_| Status::invalid_argument(format!("broker id {id} must be >= 0")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (outcome, index) = link
            .cluster
            .propose(crate::cluster::Command::ReassignPartition {
                topic: r.topic,
                partition: r.partition,
                replicas,
            })
            .await
            .map_err(cluster_status)?;
        if let crate::cluster::Outcome::Refused(refusal) = outcome {
            return Err(cluster_status(crate::cluster::ClusterError::Refused(
                refusal,
            )));
        }
        link.cluster
            .wait_synced(index, Duration::from_secs(10))
            .await
            .map_err(cluster_status)?;
        Ok(Response::new(pb::ReassignPartitionResponse {}))
    }

    async fn elect_preferred_leaders(
        &self,
        request: Request<pb::ElectPreferredLeadersRequest>,
    ) -> Result<Response<pb::ElectPreferredLeadersResponse>, Status> {
        let _t = timed("ElectPreferredLeaders");
        let topic = request.into_inner().topic;
        let Some(link) = &self.link else {
            if let Some(t) = &topic {
                self.broker.topic(t)?;
            }
            // A single node leads everything already.
            return Ok(Response::new(pb::ElectPreferredLeadersResponse {
                partitions: 0,
            }));
        };
        let (outcome, index) = link
            .cluster
            .propose(crate::cluster::Command::ElectPreferredLeaders { topic })
            .await
            .map_err(cluster_status)?;
        let partitions = match outcome {
            crate::cluster::Outcome::Elected { partitions } => partitions,
            crate::cluster::Outcome::Refused(r) => {
                return Err(cluster_status(crate::cluster::ClusterError::Refused(r)))
            }
            _ => 0,
        };
        link.cluster
            .wait_synced(index, Duration::from_secs(10))
            .await
            .map_err(cluster_status)?;
        Ok(Response::new(pb::ElectPreferredLeadersResponse {
            partitions: partitions.min(i32::MAX as usize) as i32,
        }))
    }
}

/// A stream relayed from another broker, cut when this broker begins
/// shutting down: the relay must not keep the drain waiting (the client
/// reconnects, through another broker, on the status it ends with).
pub(crate) struct UntilShutdown<S> {
    inner: Option<S>,
    stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    ended: Status,
}

impl<S> UntilShutdown<S> {
    /// Relays `inner` until `broker` begins shutting down, then ends with
    /// `ended`.
    pub(crate) fn new(inner: S, broker: Arc<Broker>, ended: Status) -> Self {
        Self {
            inner: Some(inner),
            stop: Box::pin(async move { broker.shutting_down().await }),
            ended,
        }
    }
}

impl<S, T> tokio_stream::Stream for UntilShutdown<S>
where
    S: tokio_stream::Stream<Item = Result<T, Status>> + Unpin,
{
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.inner.is_none() {
            return Poll::Ready(None);
        }
        if self.stop.as_mut().poll(cx).is_ready() {
            self.inner = None;
            return Poll::Ready(Some(Err(self.ended.clone())));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match std::pin::Pin::new(inner).poll_next(cx) {
            Poll::Ready(None) => {
                self.inner = None;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}
