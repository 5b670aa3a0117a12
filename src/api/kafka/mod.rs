//! The Kafka wire protocol: a listener beside the gRPC API that lets
//! unchanged Kafka clients (librdkafka, the Java client, franz-go, ...)
//! produce, fetch, join groups and commit offsets.
//!
//! Requests and responses are encoded by the `kafka-protocol` crate (the
//! message schemas are generated from Kafka's own); this module frames
//! them, checks the API version against what it advertises, and calls the
//! same broker and coordinator the gRPC services call:
//!
//! * `data`: Metadata, Produce, Fetch, ListOffsets, InitProducerId.
//! * `admin`: CreateTopics, DeleteTopics, CreatePartitions,
//!   DescribeConfigs, DescribeCluster (through the gRPC admin service's
//!   logic, so a cluster's changes go through its quorum).
//! * `groups`: FindCoordinator, OffsetCommit, OffsetFetch, ListGroups,
//!   DescribeGroups, and the classic group protocol (JoinGroup, SyncGroup,
//!   Heartbeat, LeaveGroup) with client-side assignors.
//! * `auth`: SASL (SCRAM-SHA-256/512, PLAIN over TLS) and the principal
//!   of a TLS client certificate; every handler checks the caller's ACLs
//!   and answers Kafka's authorization error codes.
//! * `wire`: framing, and responses that send stored record batches from
//!   the mapped segments without copying them.
//!
//! Each connection handles its requests one at a time, in order (Kafka
//! clients may pipeline, and expect answers in request order). A frame
//! that cannot be decoded, an unknown API or an unsupported version
//! (other than ApiVersions, which answers with the versions it supports)
//! closes that connection and no other.

mod admin;
mod auth;
mod data;
mod groups;
pub mod wire;

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    api_versions_response::ApiVersion, ApiKey, ApiVersionsResponse, RequestHeader, RequestKind,
    ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::ResponseError;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::api::grpc::{AdminService, ClusterLink};
use crate::broker::{Broker, BrokerError};
use crate::coordinator::{Coordinator, CoordinatorError};
use crate::security::quota::QuotaKind;
use crate::security::tls::ReloadingConfig;
use crate::security::{Access, Caller, Principal};
use crate::storage::StorageError;
use auth::Session;

/// The APIs served, with the versions advertised in ApiVersions. Each is
/// the range whose fields this listener honours; APIs not listed
/// (transactions, Kafka's ACL and quota admin APIs) are absent, so clients that need
/// them fail at once rather than half-way.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    // v0 is listed because clients look for it (librdkafka checks that
    // the range starts at 0); a v0 handshake, which sends its tokens
    // unframed (clients before Kafka 1.0), is refused.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

fn supported(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, lo, hi)| (lo, hi))
}

/// Where Kafka clients reach a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Node id.
    pub id: i32,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: i32,
}

impl Endpoint {
    /// Parses `host:port` (`[v6]:port` too).
    pub fn parse(id: i32, address: &str) -> Option<Self> {
        let (host, port) = address.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Some(Self {
            id,
            host: host.to_string(),
            port: port.parse().ok()?,
        })
    }
}

/// Who may connect and do what.
#[derive(Debug, Clone)]
pub struct KafkaSecurity {
    /// ACLs, users, tokens.
    pub access: Arc<Access>,
    /// TLS, if on.
    pub tls: Option<Arc<ReloadingConfig>>,
}

/// What every connection's handlers share.
pub struct Kafka {
    broker: Arc<Broker>,
    coordinator: Arc<Coordinator>,
    link: Option<ClusterLink>,
    admin: AdminService,
    subscriptions: Subscriptions,
    /// This broker, as Kafka clients reach it.
    me: Endpoint,
    /// Largest request frame.
    max_frame: usize,
    /// Connections open at once; more are closed at accept.
    connections: Arc<tokio::sync::Semaphore>,
    /// Who may do what.
    access: Arc<Access>,
    /// TLS, if on.
    tls: Option<Arc<ReloadingConfig>>,
}

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka").field("me", &self.me).finish()
    }
}

impl Kafka {
    /// The handlers over the domain facades; `me` is this broker's
    /// advertised Kafka address.
    pub fn new(
        broker: Arc<Broker>,
        coordinator: Arc<Coordinator>,
        link: Option<ClusterLink>,
        me: Endpoint,
        max_frame: usize,
        max_connections: usize,
        security: KafkaSecurity,
    ) -> Arc<Self> {
        let KafkaSecurity { access, tls } = security;
        let admin = AdminService::new(broker.clone(), link.clone());
        Arc::new(Self {
            broker,
            coordinator,
            link,
            admin,
            subscriptions: Default::default(),
            me,
            max_frame,
            connections: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            access,
            tls,
        })
    }
}

/// Accepts connections on `listener` until `shutdown` turns true; then each
/// connection finishes the request it is serving and closes.
pub async fn serve(kafka: Arc<Kafka>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, advertised = %format!("{}:{}", kafka.me.host, kafka.me.port), "kafka listening");
    }
    let mut stop = shutdown.clone();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = kafka.connections.clone().try_acquire_owned() else {
                        metrics::counter!("sluice_kafka_connections_refused_total").increment(1);
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let k = kafka.clone();
                    let s = shutdown.clone();
                    tasks.spawn(async move {
                        metrics::gauge!("sluice_kafka_connections").increment(1.0);
                        match k.tls.clone() {
                            None => {
                                let session = Session::new(false, None);
                                connection(k, stream, peer.to_string(), s, session).await;
                            }
                            Some(tls) => {
                                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                                let shaken = tokio::time::timeout(
                                    crate::api::grpc::conn::TLS_HANDSHAKE_TIMEOUT,
                                    acceptor.accept(stream),
                                );
                                match shaken.await {
                                    Ok(Ok(io)) => {
                                        let cert = io
                                            .get_ref()
                                            .1
                                            .peer_certificates()
                                            .and_then(|c| c.first())
                                            .and_then(crate::security::tls::principal_of);
                                        let session = Session::new(true, cert);
                                        connection(k, io, peer.to_string(), s, session).await;
                                    }
                                    Ok(Err(e)) => {
                                        metrics::counter!("sluice_tls_handshake_failures_total").increment(1);
                                        debug!(%peer, error = %e, "kafka TLS handshake failed");
                                    }
                                    Err(_) => {
                                        metrics::counter!("sluice_tls_handshake_failures_total").increment(1);
                                        debug!(%peer, "kafka TLS handshake timed out");
                                    }
                                }
                            }
                        }
                        drop(permit);
                        metrics::gauge!("sluice_kafka_connections").decrement(1.0);
                        debug!(%peer, "kafka connection closed");
                    });
                }
                Err(e) => {
                    // Out of descriptors, say: back off rather than spin.
                    tracing::warn!(error = %e, "kafka accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = stopped(&mut stop) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// Completes once `rx` turns true (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Serves one connection's requests in order.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    kafka: Arc<Kafka>,
    stream: S,
    peer: String,
    mut shutdown: watch::Receiver<bool>,
    mut session: Session,
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    loop {
        let frame = tokio::select! {
            f = wire::read_frame(&mut rd, kafka.max_frame) => f,
            _ = stopped(&mut shutdown) => return,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(wire::ReadError::Closed) => return,
            Err(e) => {
                debug!(error = ?e, "kafka connection closed: bad frame");
                return;
            }
        };
        // A request in flight when the drain begins gets a moment to
        // finish (an append to be acknowledged); a long poll or a join
        // waiting for a rebalance is cut off.
        let handled = tokio::select! {
            h = kafka.handle(frame, &peer, &mut session) => h,
            _ = async {
                stopped(&mut shutdown).await;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            } => return,
        };
        match handled {
            Ok(Some(chunks)) => {
                if wire::write_chunks(&mut wr, &chunks).await.is_err() {
                    return;
                }
                if session.close {
                    let _ = wr.shutdown().await;
                    return;
                }
            }
            Ok(None) => {}
            Err(why) => {
                debug!(%why, "kafka connection closed");
                let _ = wr.shutdown().await;
                return;
            }
        }
        // Over a quota: the next request is read after the throttle (the
        // client, told the time, waits too).
        let throttle = std::mem::take(&mut session.throttle);
        if !throttle.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(throttle) => {}
                _ = stopped(&mut shutdown) => return,
            }
        }
    }
}

/// A decoded request.
pub(crate) struct Call {
    /// API version.
    pub version: i16,
    /// The client's id, for group membership.
    pub client_id: String,
    /// The client's address, for group descriptions.
    pub peer: String,
    /// Who is calling, and what it may do.
    pub caller: Caller,
}

/// KIP-848 members' subscriptions, as last sent: a heartbeat that leaves
/// them out (null) keeps them. Held only to look up or replace one entry.
type Subscriptions = parking_lot::Mutex<std::collections::HashMap<(String, String), Vec<String>>>;

impl Kafka {
    /// Decodes one request, calls its handler, and encodes the response.
    /// `Ok(None)`: no response (acks=0 produce). `Err`: close the
    /// connection.
    async fn handle(
        &self,
        mut frame: Bytes,
        peer: &str,
        session: &mut Session,
    ) -> Result<Option<Vec<Bytes>>, String> {
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let api = ApiKey::try_from(key).map_err(|_| format!("unknown API key {key}"))?;
        let Some((lo, hi)) = supported(api) else {
            return Err(format!("API {api:?} is not supported"));
        };
        if !(lo..=hi).contains(&version) {
            if api == ApiKey::ApiVersions {
                // KIP-511: answer in v0 with the versions supported, so the
                // client can pick one.
                metrics::counter!("sluice_kafka_requests_total", "api" => "ApiVersions")
                    .increment(1);
                let body = self
                    .api_versions()
                    .with_error_code(ResponseError::UnsupportedVersion.code());
                return encode(correlation, api, 0, &body, &[]).map(Some);
            }
            return Err(format!(
                "{api:?} version {version} is not supported (versions {lo} to {hi} are)"
            ));
        }
        let sasl = matches!(
            api,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        );
        let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
            .map_err(|e| format!("request header: {e}"))?;
        let client_id = header
            .client_id
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default();
        let caller = match self.caller_of(session) {
            Some(c) => c.with_client_id(&client_id),
            // Only these three before authentication; the caller is unused.
            None if sasl => Caller::checked(Principal::anonymous(), self.access.clone()),
            None => {
                metrics::counter!("sluice_authentication_failures_total").increment(1);
                return Err(format!(
                    "{api:?} before authentication: this listener requires SASL (SCRAM-SHA-256, SCRAM-SHA-512, or PLAIN over TLS) or a client certificate"
                ));
            }
        };
        let request = RequestKind::decode(api, &mut frame, version)
            .map_err(|e| format!("{api:?} v{version}: {e}"))?;
        // Every request counts against the request-rate quota; a throttle
        // mutes the connection after the response (KIP-219).
        session.throttle = session
            .throttle
            .max(caller.throttle(QuotaKind::Request, 1.0));
        let call = Call {
            version,
            client_id,
            peer: format!("/{}", peer.rsplit_once(':').map_or(peer, |(h, _)| h)),
            caller,
        };
        let name: &'static str = api_name(api);
        metrics::counter!("sluice_kafka_requests_total", "api" => name).increment(1);
        let _t = crate::api::grpc::timed(name);
        let mut shared: Vec<Bytes> = Vec::new();
        macro_rules! reply {
            ($body:expr) => {
                encode(correlation, api, version, &$body, &shared).map(Some)
            };
        }
        match request {
            RequestKind::ApiVersions(_) => reply!(self.api_versions()),
            RequestKind::SaslHandshake(r) => reply!(self.sasl_handshake(session, version, r)),
            RequestKind::SaslAuthenticate(r) => reply!(self.sasl_authenticate(session, r).await),
            RequestKind::Metadata(r) => reply!(self.metadata(&call, r)),
            RequestKind::Produce(r) => {
                let acks = r.acks;
                let bytes: usize = r
                    .topic_data
                    .iter()
                    .flat_map(|t| &t.partition_data)
                    .map(|p| p.records.as_ref().map_or(0, |b| b.len()))
                    .sum();
                let mut body = self.produce(&call, r).await;
                let t = call.caller.throttle(QuotaKind::Produce, bytes as f64);
                session.throttle = session.throttle.max(t);
                body.throttle_time_ms = throttle_ms(session.throttle);
                if acks == 0 {
                    return Ok(None);
                }
                reply!(body)
            }
            RequestKind::Fetch(r) => {
                let mut body = self.fetch(&call, r).await;
                for t in &body.responses {
                    for p in &t.partitions {
                        if let Some(r) = &p.records {
                            shared.push(r.clone());
                        }
                    }
                }
                let bytes: usize = shared.iter().map(|b| b.len()).sum();
                let t = call.caller.throttle(QuotaKind::Fetch, bytes as f64);
                session.throttle = session.throttle.max(t);
                body.throttle_time_ms = throttle_ms(session.throttle);
                reply!(body)
            }
            RequestKind::ListOffsets(r) => reply!(self.list_offsets(&call, r)),
            RequestKind::InitProducerId(r) => reply!(self.init_producer_id(&call, r).await),
            RequestKind::CreateTopics(r) => reply!(self.create_topics(&call, r).await),
            RequestKind::DeleteTopics(r) => reply!(self.delete_topics(&call, r).await),
            RequestKind::CreatePartitions(r) => reply!(self.create_partitions(&call, r).await),
            RequestKind::DescribeConfigs(r) => reply!(self.describe_configs(&call, r)),
            RequestKind::DescribeCluster(r) => reply!(self.describe_cluster(&call, r)),
            RequestKind::FindCoordinator(r) => reply!(self.find_coordinator(&call, r)),
            RequestKind::OffsetCommit(r) => reply!(self.offset_commit(&call, r).await),
            RequestKind::OffsetFetch(r) => reply!(self.offset_fetch(&call, r).await),
            RequestKind::ListGroups(r) => reply!(self.list_groups(&call, r)),
            RequestKind::DescribeGroups(r) => reply!(self.describe_groups(&call, r)),
            RequestKind::JoinGroup(r) => reply!(self.join_group(&call, r).await),
            RequestKind::SyncGroup(r) => reply!(self.sync_group(&call, r).await),
            RequestKind::Heartbeat(r) => reply!(self.heartbeat(&call, r)),
            RequestKind::LeaveGroup(r) => reply!(self.leave_group(&call, r)),
            RequestKind::ConsumerGroupHeartbeat(r) => {
                reply!(self.consumer_group_heartbeat(&call, r).await)
            }
            _ => Err(format!("{api:?} is not supported")),
        }
    }

    fn api_versions(&self) -> ApiVersionsResponse {
        ApiVersionsResponse::default().with_api_keys(
            SUPPORTED
                .iter()
                .map(|&(k, lo, hi)| {
                    ApiVersion::default()
                        .with_api_key(k as i16)
                        .with_min_version(lo)
                        .with_max_version(hi)
                })
                .collect(),
        )
    }

    /// The broker's handle on the cluster, if in one.
    pub(crate) fn link(&self) -> Option<&ClusterLink> {
        self.link.as_ref()
    }
}

/// A throttle as Kafka's `throttle_time_ms`.
fn throttle_ms(d: std::time::Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "kafka.Produce",
        ApiKey::Fetch => "kafka.Fetch",
        ApiKey::ListOffsets => "kafka.ListOffsets",
        ApiKey::Metadata => "kafka.Metadata",
        ApiKey::OffsetCommit => "kafka.OffsetCommit",
        ApiKey::OffsetFetch => "kafka.OffsetFetch",
        ApiKey::FindCoordinator => "kafka.FindCoordinator",
        ApiKey::JoinGroup => "kafka.JoinGroup",
        ApiKey::Heartbeat => "kafka.Heartbeat",
        ApiKey::LeaveGroup => "kafka.LeaveGroup",
        ApiKey::SyncGroup => "kafka.SyncGroup",
        ApiKey::DescribeGroups => "kafka.DescribeGroups",
        ApiKey::ListGroups => "kafka.ListGroups",
        ApiKey::ApiVersions => "kafka.ApiVersions",
        ApiKey::CreateTopics => "kafka.CreateTopics",
        ApiKey::DeleteTopics => "kafka.DeleteTopics",
        ApiKey::InitProducerId => "kafka.InitProducerId",
        ApiKey::DescribeConfigs => "kafka.DescribeConfigs",
        ApiKey::CreatePartitions => "kafka.CreatePartitions",
        ApiKey::DescribeCluster => "kafka.DescribeCluster",
        ApiKey::ConsumerGroupHeartbeat => "kafka.ConsumerGroupHeartbeat",
        ApiKey::SaslHandshake => "kafka.SaslHandshake",
        ApiKey::SaslAuthenticate => "kafka.SaslAuthenticate",
        _ => "kafka.other",
    }
}

/// Encodes a response frame: size, header, body. Record data in `shared`
/// is sent by reference.
fn encode<M: Encodable + HeaderVersion>(
    correlation: i32,
    api: ApiKey,
    version: i16,
    body: &M,
    shared: &[Bytes],
) -> Result<Vec<Bytes>, String> {
    let mut frame = wire::Frame::new();
    for s in shared {
        frame.share(s);
    }
    ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(&mut frame, api.response_header_version(version))
        .map_err(|e| format!("encoding the response header: {e}"))?;
    body.encode(&mut frame, version)
        .map_err(|e| format!("encoding the {api:?} v{version} response: {e}"))?;
    Ok(frame.finish())
}

/// A Kafka error code and message for a broker error.
pub(crate) fn broker_error(e: &BrokerError) -> (ResponseError, String) {
    use ResponseError as K;
    let code = match e {
        BrokerError::TopicNotFound { .. }
        | BrokerError::PartitionNotFound { .. }
        | BrokerError::TopicDeleted { .. } => K::UnknownTopicOrPartition,
        BrokerError::TopicExists { .. } => K::TopicAlreadyExists,
        BrokerError::InvalidArgument(_) => K::InvalidRequest,
        BrokerError::RecordTooLarge { .. } => K::MessageTooLarge,
        BrokerError::ShuttingDown | BrokerError::NotLeader { .. } => K::NotLeaderOrFollower,
        BrokerError::NotEnoughReplicas { .. } => K::NotEnoughReplicas,
        BrokerError::NotEnoughReplicasAfterAppend { .. } => K::NotEnoughReplicasAfterAppend,
        BrokerError::ReplicationTimeout { .. } => K::RequestTimedOut,
        BrokerError::Remote { .. } => K::LeaderNotAvailable,
        BrokerError::DamagedRecords { .. } => K::KafkaStorageError,
        BrokerError::DataFormat { .. } | BrokerError::Metadata { .. } => K::KafkaStorageError,
        BrokerError::Storage(s) => match s {
            StorageError::OffsetOutOfRange { .. } => K::OffsetOutOfRange,
            StorageError::BatchTooLarge { .. } => K::MessageTooLarge,
            StorageError::InvalidBatch(_) => K::CorruptMessage,
            StorageError::OutOfOrderSequence { .. } => K::OutOfOrderSequenceNumber,
            StorageError::DuplicateSequence { .. } => K::DuplicateSequenceNumber,
            StorageError::ProducerFenced { .. } => K::InvalidProducerEpoch,
            StorageError::InvalidProducer(_) => K::UnknownProducerId,
            StorageError::TooManyProducers { .. } => K::PolicyViolation,
            StorageError::InvalidConfig(_) => K::InvalidConfig,
            StorageError::Closed => K::NotLeaderOrFollower,
            _ => K::KafkaStorageError,
        },
    };
    (code, e.client_message())
}

/// A Kafka error code and message for a coordinator error.
pub(crate) fn coordinator_error(e: &CoordinatorError) -> (ResponseError, String) {
    use ResponseError as K;
    let code = match e {
        CoordinatorError::InvalidArgument(_) => K::InvalidRequest,
        CoordinatorError::GroupNotFound { .. } => K::GroupIdNotFound,
        CoordinatorError::UnknownMember { .. } => K::UnknownMemberId,
        CoordinatorError::FencedEpoch { .. } => K::FencedMemberEpoch,
        CoordinatorError::NotOwned { .. } => K::IllegalGeneration,
        CoordinatorError::GroupNotEmpty { .. } => K::NonEmptyGroup,
        CoordinatorError::Failed { .. } => K::CoordinatorNotAvailable,
        CoordinatorError::NotCoordinator { .. } => K::NotCoordinator,
        CoordinatorError::Broker(b) => match b {
            BrokerError::ShuttingDown | BrokerError::NotLeader { .. } => K::NotCoordinator,
            other => broker_error(other).0,
        },
    };
    (code, e.to_string())
}

/// A string for Kafka's `StrBytes`.
pub(crate) fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
