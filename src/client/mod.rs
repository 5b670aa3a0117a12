//! The Rust client: admin calls, fetch and subscribe, and producers (a
//! pipelined [`Pipeline`] of whole requests, and a batching [`Producer`]
//! of single records on top of it).
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice::client::ClientError> {
//! use sluice::client::{Client, ProducerConfig};
//! let client = Client::connect("http://127.0.0.1:9400").await?;
//! client.create_topic("orders", 3, Default::default()).await?;
//! let producer = client.producer("orders", ProducerConfig::default());
//! producer.send(sluice::client::record(Some("k"), "hello")).await?;
//! let stats = producer.close().await?;
//! assert_eq!(stats.acked, 1);
//! # Ok(()) }
//! ```

pub mod batches;
mod bootstrap;
pub mod connect;
mod consumer;
mod idempotent;
mod producer;
mod queue;
pub mod raw;
mod routes;

use std::time::Duration;

use bytes::Bytes;
use tonic::transport::Channel;

pub use connect::{Conn, ConnectOptions};

pub use crate::api::grpc::pb;
use crate::api::grpc::MAX_MESSAGE_BYTES;
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, OffsetReset};
use pb::{
    admin_client::AdminClient, broker_client::BrokerClient, cluster_client::ClusterClient,
    group_admin_client::GroupAdminClient, groups_client::GroupsClient, queues_client::QueuesClient,
};
pub use producer::{Pipeline, Producer, ProducerConfig, ProducerStats, Reply};
pub use queue::{QueueConfig, Worker};

/// Default broker address of the CLI.
pub const DEFAULT_BROKER: &str = "http://127.0.0.1:9400";

/// What went wrong in a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker address is not a valid URI.
    #[error("invalid broker address '{0}': {1}")]
    Address(String, String),
    /// Could not connect.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// The broker answered with an error.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
    /// The producer or pipeline stopped (its stream ended).
    #[error("the produce stream closed: {0}")]
    Closed(String),
    /// Record batches from `FetchBatches` failed their checksum or did
    /// not decode.
    #[error("damaged record batch: {0}")]
    Damaged(String),
}

/// A connection to a broker, or to the first live one of several. Cheap
/// to clone (clones share connections and routes).
#[derive(Debug, Clone)]
pub struct Client {
    /// The brokers given, one in use (shared by clones).
    bootstrap: std::sync::Arc<bootstrap::Bootstrap>,
    /// Partition leaders from `Metadata` (shared by clones).
    routes: std::sync::Arc<routes::Routes>,
}

/// A record with an optional UTF-8 key and a value.
pub fn record(key: Option<&str>, value: impl Into<Bytes>) -> pb::ProduceRecord {
    pb::ProduceRecord {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// A `Position` for subscriptions.
pub fn position(p: pb::position::Position) -> Option<pb::Position> {
    Some(pb::Position { position: Some(p) })
}

impl Client {
    /// Connects to `url` (e.g. `http://127.0.0.1:9400`), or to the first
    /// broker that answers of a comma-separated list
    /// (`http://a:9400,http://b:9400`). With a list, a broker that stops
    /// answering is replaced by the next (see [`Client::broker_failed`]).
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, &ConnectOptions::default()).await
    }

    /// Like [`Client::connect`], with TLS and a bearer token.
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Self, ClientError> {
        let prepared = options.prepare()?;
        Ok(Self {
            bootstrap: std::sync::Arc::new(bootstrap::Bootstrap::connect(url, &prepared).await?),
            routes: std::sync::Arc::new(routes::Routes::new(prepared)),
        })
    }

    /// A client over an existing channel.
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            bootstrap: std::sync::Arc::new(bootstrap::Bootstrap::single(Conn::plain(channel))),
            routes: Default::default(),
        }
    }

    /// A call to the broker in use (not a routed call to a leader) failed
    /// with `s`: if that says the broker is unreachable or going away, the
    /// next broker of the list given to [`Client::connect`] is used from
    /// now on. The client's own retrying calls do this themselves.
    pub fn broker_failed(&self, s: &tonic::Status) {
        self.bootstrap.failed(s);
    }

    /// Runs `call` (against the broker in use), retrying for up to
    /// `budget` while it fails in a way a moment or another broker may fix
    /// (the broker unreachable, stopping, or a coordinator moving), with
    /// backoff, switching brokers as it goes.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        budget: Duration,
        mut call: F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + budget;
        let mut backoff = Duration::from_millis(50);
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(s)
                    if (bootstrap::switch_worthy(&s) || s.code() == tonic::Code::Unavailable)
                        && tokio::time::Instant::now() + backoff < deadline =>
                {
                    self.bootstrap.failed(&s);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(s) => return Err(s),
            }
        }
    }

    /// The generated group member client (heartbeats, commits).
    pub fn groups(&self) -> GroupsClient<Conn> {
        GroupsClient::new(self.bootstrap.channel())
    }

    /// The generated work-queue client.
    pub fn queues(&self) -> QueuesClient<Conn> {
        QueuesClient::new(self.bootstrap.channel())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Opens a work-queue worker (a `Consume` stream).
    pub async fn worker(&self, config: QueueConfig) -> Result<Worker, ClientError> {
        Worker::open(self, config).await
    }

    /// Describes a work queue (share group).
    pub async fn describe_queue(
        &self,
        group: &str,
    ) -> Result<pb::DescribeQueueResponse, ClientError> {
        Ok(self
            .queues()
            .describe_queue(pb::DescribeQueueRequest {
                group: group.into(),
            })
            .await?
            .into_inner())
    }

    /// The generated group admin client.
    pub fn group_admin(&self) -> GroupAdminClient<Conn> {
        GroupAdminClient::new(self.bootstrap.channel())
    }

    /// Joins `config.group` as a new member; see [`Consumer`].
    pub fn consumer(&self, config: ConsumerConfig) -> Consumer {
        Consumer::start(self.clone(), config)
    }

    /// Lists groups.
    pub async fn list_groups(&self) -> Result<Vec<pb::GroupListing>, ClientError> {
        Ok(self
            .group_admin()
            .list_groups(pb::ListGroupsRequest {})
            .await?
            .into_inner()
            .groups)
    }

    /// Describes a group.
    pub async fn describe_group(
        &self,
        group: &str,
    ) -> Result<pb::DescribeGroupResponse, ClientError> {
        Ok(self
            .group_admin()
            .describe_group(pb::DescribeGroupRequest {
                group: group.into(),
            })
            .await?
            .into_inner())
    }

    /// Deletes a group without live members.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        self.group_admin()
            .delete_group(pb::DeleteGroupRequest {
                group: group.into(),
            })
            .await?;
        Ok(())
    }

    /// Resets a group's offsets for `topic` (all partitions if
    /// `partitions` is empty).
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: Vec<i32>,
        to: pb::reset_offsets_request::To,
        dry_run: bool,
        create: bool,
    ) -> Result<Vec<pb::ResetOffset>, ClientError> {
        Ok(self
            .group_admin()
            .reset_offsets(pb::ResetOffsetsRequest {
                group: group.into(),
                topic: topic.into(),
                partitions,
                to: Some(to),
                dry_run,
                create,
            })
            .await?
            .into_inner()
            .offsets)
    }

    /// Committed offsets of a group (of `topics`, or all).
    pub async fn fetch_offsets(
        &self,
        group: &str,
        topics: Vec<String>,
    ) -> Result<Vec<pb::CommittedOffset>, ClientError> {
        Ok(self
            .groups()
            .fetch_offsets(pb::FetchOffsetsRequest {
                group: group.into(),
                topics,
            })
            .await?
            .into_inner()
            .offsets)
    }

    /// The generated admin client, for calls this type does not wrap.
    pub fn admin(&self) -> AdminClient<Conn> {
        AdminClient::new(self.bootstrap.channel())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The generated server-info client (version, batch format).
    pub fn server_info(&self) -> pb::server_info_client::ServerInfoClient<Conn> {
        pb::server_info_client::ServerInfoClient::new(self.bootstrap.channel())
    }

    /// The generated security client (users, tokens, ACLs, quotas).
    pub fn security(&self) -> pb::security_client::SecurityClient<Conn> {
        pb::security_client::SecurityClient::new(self.bootstrap.channel())
    }

    /// The generated cluster client (metadata, cluster status).
    pub fn cluster(&self) -> ClusterClient<Conn> {
        ClusterClient::new(self.bootstrap.channel()).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Brokers and, per partition, leader and replicas.
    pub async fn metadata(&self, topics: &[&str]) -> Result<pb::MetadataResponse, ClientError> {
        Ok(self
            .cluster()
            .metadata(pb::MetadataRequest {
                topics: topics.iter().map(|t| t.to_string()).collect(),
            })
            .await?
            .into_inner())
    }

    /// Nodes, roles, the controller and liveness.
    pub async fn describe_cluster(&self) -> Result<pb::DescribeClusterResponse, ClientError> {
        Ok(self
            .cluster()
            .describe_cluster(pb::DescribeClusterRequest {})
            .await?
            .into_inner())
    }

    /// The generated broker client.
    pub fn broker(&self) -> BrokerClient<Conn> {
        BrokerClient::new(self.bootstrap.channel())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Creates a topic (replication factor: the cluster's default).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        config: pb::TopicConfig,
    ) -> Result<pb::TopicDescription, ClientError> {
        self.create_replicated_topic(name, partitions, None, config)
            .await
    }

    /// Creates a topic with `replication_factor` replicas per partition
    /// (None: the cluster's default).
    pub async fn create_replicated_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: Option<i32>,
        config: pb::TopicConfig,
    ) -> Result<pb::TopicDescription, ClientError> {
        let r = self
            .admin()
            .create_topic(pb::CreateTopicRequest {
                name: name.into(),
                partitions,
                config: Some(config),
                replication_factor,
            })
            .await?;
        Ok(r.into_inner().topic.unwrap_or_default())
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        self.admin()
            .delete_topic(pb::DeleteTopicRequest { name: name.into() })
            .await?;
        Ok(())
    }

    /// Lists topics.
    pub async fn list_topics(&self) -> Result<Vec<pb::TopicSummary>, ClientError> {
        Ok(self
            .admin()
            .list_topics(pb::ListTopicsRequest {})
            .await?
            .into_inner()
            .topics)
    }

    /// A topic's partition count, from the topic list: unlike
    /// [`Client::describe_topic`] the broker opens no partition for it.
    /// `NOT_FOUND` if there is no such topic.
    pub async fn partition_count(&self, topic: &str) -> Result<i32, ClientError> {
        self.list_topics()
            .await?
            .into_iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions)
            .ok_or_else(|| {
                ClientError::Status(tonic::Status::not_found(format!(
                    "topic '{topic}' does not exist"
                )))
            })
    }

    /// Describes a topic.
    pub async fn describe_topic(&self, name: &str) -> Result<pb::TopicDescription, ClientError> {
        Ok(self
            .admin()
            .describe_topic(pb::DescribeTopicRequest { name: name.into() })
            .await?
            .into_inner()
            .topic
            .unwrap_or_default())
    }

    /// Raises a topic's partition count.
    pub async fn create_partitions(
        &self,
        name: &str,
        total: i32,
    ) -> Result<pb::TopicDescription, ClientError> {
        Ok(self
            .admin()
            .create_partitions(pb::CreatePartitionsRequest {
                name: name.into(),
                total_partitions: total,
            })
            .await?
            .into_inner()
            .topic
            .unwrap_or_default())
    }

    /// One produce request.
    pub async fn produce(
        &self,
        req: pb::ProduceRequest,
    ) -> Result<pb::ProduceResponse, ClientError> {
        Ok(self.broker().produce(req).await?.into_inner())
    }

    /// Looks up the leaders of `topic`'s partitions again (at most every
    /// 100 ms). A server without the `Cluster` service, or one broker, means
    /// no routing: everything goes to the broker this client was given.
    pub async fn refresh_routes(&self, topic: &str) {
        if self.routes.fresh(topic) {
            return;
        }
        self.routes.clear_unreachable();
        let m = self
            .cluster()
            .metadata(pb::MetadataRequest {
                topics: vec![topic.to_string()],
            })
            .await;
        match m {
            Ok(m) => self.routes.update(topic, &m.into_inner()),
            // An unknown topic, or a server without the service: its
            // requests go to the broker this client was given (or, if that
            // one is gone, the next of its list).
            Err(s) => {
                self.bootstrap.failed(&s);
                self.routes.mark_refreshed(topic);
            }
        }
    }

    /// The broker client for a partition's leader (the leader's address,
    /// if it is not the broker this client was given).
    pub(crate) async fn broker_for(
        &self,
        topic: &str,
        partition: i32,
    ) -> (BrokerClient<Conn>, Option<String>) {
        if !self.routes.known(topic) {
            self.refresh_routes(topic).await;
        }
        let routed = self
            .routes
            .leader_address(topic, partition)
            .and_then(|a| self.routes.channel(&a).map(|c| (a, c)));
        match routed {
            Some((a, c)) => (
                BrokerClient::new(c)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                Some(a),
            ),
            None => (self.broker(), None),
        }
    }

    /// Routes `address`'s partitions through the broker this client was
    /// given until the next refresh (it did not answer).
    pub(crate) fn mark_unreachable(&self, address: &str) {
        self.routes.mark_unreachable(address);
    }

    /// After a call routed to `address` failed with `s`: a broker that does
    /// not answer is skipped until the next refresh; any UNAVAILABLE
    /// refreshes the routes. Returns whether a retry may go elsewhere.
    pub(crate) async fn route_failed(
        &self,
        topic: &str,
        address: Option<&str>,
        s: &tonic::Status,
    ) -> bool {
        if !routes::is_stale_route(s) {
            return false;
        }
        let not_leader = s
            .metadata()
            .contains_key(crate::api::grpc::cluster::LEADER_HEADER);
        match (address, not_leader) {
            (Some(a), false) => self.routes.mark_unreachable(a),
            (None, _) => self.bootstrap.failed(s),
            _ => {}
        }
        self.refresh_routes(topic).await;
        true
    }

    /// A call to a partition's leader, made once more (to the leader
    /// looked up again) if the first went to a broker that is gone or no
    /// longer leads.
    async fn on_leader<T, F, Fut>(
        &self,
        topic: &str,
        partition: i32,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(BrokerClient<Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (b, addr) = self.broker_for(topic, partition).await;
        match call(b).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) if self.route_failed(topic, addr.as_deref(), &s).await => {
                let (b, _) = self.broker_for(topic, partition).await;
                Ok(call(b).await?.into_inner())
            }
            Err(s) => Err(s.into()),
        }
    }

    /// One fetch, from the partition's leader.
    pub async fn fetch(&self, req: pb::FetchRequest) -> Result<pb::FetchResponse, ClientError> {
        self.on_leader(&req.topic, req.partition, |mut b| {
            let req = req.clone();
            async move { b.fetch(req).await }
        })
        .await
    }

    /// Reads stored record batches of one partition (`FetchBatches`):
    /// the fastest read, no per-record work on the broker. Walk the
    /// records with [`batches::records`] (from the offset asked for: the
    /// first batch may start before it).
    pub async fn fetch_batches(
        &self,
        req: pb::FetchBatchesRequest,
    ) -> Result<pb::FetchBatchesResponse, ClientError> {
        self.on_leader(&req.topic, req.partition, |mut b| {
            let req = req.clone();
            async move { b.fetch_batches(req).await }
        })
        .await
    }

    /// Subscribes to one partition.
    pub async fn subscribe(
        &self,
        topic: &str,
        partition: i32,
        start: pb::position::Position,
    ) -> Result<tonic::Streaming<pb::SubscribeResponse>, ClientError> {
        let req = pb::SubscribeRequest {
            topic: topic.into(),
            partition,
            start: position(start),
            ..Default::default()
        };
        let (mut b, addr) = self.broker_for(topic, partition).await;
        match b.subscribe(req.clone()).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) if self.route_failed(topic, addr.as_deref(), &s).await => {
                let (mut b, _) = self.broker_for(topic, partition).await;
                Ok(b.subscribe(req).await?.into_inner())
            }
            Err(s) => Err(s.into()),
        }
    }

    /// Earliest/latest offsets (and the offset for `timestamp_ms`).
    pub async fn list_offsets(
        &self,
        topic: &str,
        timestamp_ms: Option<i64>,
    ) -> Result<Vec<pb::PartitionOffsets>, ClientError> {
        Ok(self
            .broker()
            .list_offsets(pb::ListOffsetsRequest {
                topic: topic.into(),
                partitions: Vec::new(),
                timestamp_ms,
            })
            .await?
            .into_inner()
            .partitions)
    }

    /// A pipelined produce stream with at most `max_in_flight` unanswered
    /// requests.
    pub async fn pipeline(&self, max_in_flight: usize) -> Result<Pipeline, ClientError> {
        Pipeline::open(self.broker(), max_in_flight).await
    }

    /// A pipeline to the leader of `topic`'s `partition` (or to the broker
    /// this client was given); returns the leader's address too.
    pub async fn pipeline_for(
        &self,
        topic: &str,
        partition: i32,
        max_in_flight: usize,
    ) -> Result<(Pipeline, Option<String>), ClientError> {
        let (b, addr) = self.broker_for(topic, partition).await;
        Ok((Pipeline::open(b, max_in_flight).await?, addr))
    }

    /// A batching producer for `topic`.
    pub fn producer(&self, topic: &str, config: ProducerConfig) -> Producer {
        Producer::start(self.clone(), topic.to_string(), config)
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The canonical name of a gRPC status code (`NOT_FOUND`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
