//! Composition root: opens the broker, builds the services and runs them on
//! bound listeners until the shutdown future completes, then drains.
//!
//! Shutdown order: the broker ends long polls and subscriptions (so no
//! stream keeps the drain waiting), tonic stops accepting and finishes
//! in-flight calls, then every partition log is flushed and closed.

use std::{future::Future, sync::Arc, sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tracing::info;

use crate::api::grpc::auth::AuthLayer;
use crate::api::grpc::pb::security_server::SecurityServer;
use crate::api::grpc::pb_broker_server::broker_server::BrokerServer;
use crate::api::grpc::remote::LeaderReads;
use crate::api::grpc::replication::{ReplicationService, Replicator};
use crate::api::grpc::security::{SecurityBackend, SecurityService};
use crate::api::grpc::{
    batches::ZeroCopyBatches,
    conn,
    pb::{
        admin_server::AdminServer, group_admin_server::GroupAdminServer,
        groups_server::GroupsServer, queues_server::QueuesServer,
        server_info_server::ServerInfoServer,
    },
    AdminService, BrokerService, GroupAdminService, GroupsService, InfoService, QueuesService,
    FILE_DESCRIPTOR_SET, HTTP2_CONNECTION_WINDOW, HTTP2_MAX_FRAME, HTTP2_STREAM_WINDOW,
    MAX_HEADER_LIST_BYTES, MAX_MESSAGE_BYTES, SMALL_REQUEST_BYTES,
};
use crate::api::grpc::{pb::cluster_server::ClusterServer, ClusterLink, ClusterService};
use crate::broker::Broker;
use crate::cluster::{transport::InternalService, Cluster};
use crate::config::{LimitSettings, ServerConfig};
use crate::coordinator::{queues::Queues, Coordinator};
use crate::error::Error;
mod security;

use crate::security::store::LocalStore;
use crate::security::tls::Reload;
use crate::security::Access;
use security::{import_bootstrap_tokens, load_tls, reload_tls, warn_if_exposed, NodeTls};

/// The process-wide Prometheus recorder (metrics macros record into it).
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("sluice_request_duration_seconds".into()),
                &buckets,
            )
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        handle
    })
}

/// The bound listeners of one node.
pub struct Listeners {
    /// The public gRPC API.
    pub client: TcpListener,
    /// Prometheus `/metrics`, `/healthz`, `/readyz`.
    pub metrics: Option<TcpListener>,
    /// The internal service (cluster mode only).
    pub internal: Option<TcpListener>,
    /// The Kafka wire protocol.
    pub kafka: Option<TcpListener>,
}

/// Serves the gRPC API on `listener` (and metrics on `metrics`, if given)
/// until `shutdown` completes; then drains and closes the broker.
///
/// Taking bound listeners (instead of addresses) lets callers bind port 0
/// and learn the real port before the server starts.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let listeners = Listeners {
        client: listener,
        metrics,
        internal: None,
        kafka: None,
    };
    run_node(config, listeners, shutdown).await
}

/// Follows the committed metadata: applies each new image to the broker's
/// topics (on the blocking pool) and reports how far it got.
async fn follow_metadata(cluster: Arc<Cluster>, broker: Arc<Broker>, access: Arc<Access>) {
    let mut rx = cluster.subscribe();
    let mut registration = cluster.watch_registration();
    let mut security_seen: Option<crate::security::SecurityState> = None;
    loop {
        let applied = rx.borrow_and_update().clone();
        registration.borrow_and_update();
        let index = applied.last.map_or(0, |l| l.index);
        let b = broker.clone();
        let image = applied.image.clone();
        // Roles only once this process has registered (and is not fenced).
        let registered = cluster.registered_in(&image);
        // Users, tokens and ACLs are enforced before the call that changed
        // them returns (it waits for this node's sync below).
        if security_seen.as_ref() != Some(&image.security) {
            access.update(&image.security);
            security_seen = Some(image.security.clone());
        }
        match tokio::task::spawn_blocking(move || b.apply_metadata(&image, registered)).await {
            Ok(Ok(())) => cluster.mark_synced(index),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, index, "metadata not applied yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => tracing::error!(error = %e, "metadata follower task failed"),
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            changed = registration.changed() => if changed.is_err() { return },
        }
    }
}

/// Creates the internal topics the coordinators keep their state in, as
/// cluster topics, unless the metadata has them: replication factor 3 (or
/// the number of voters, if fewer), retried until enough brokers are live.
async fn ensure_cluster_topics(
    cluster: Arc<Cluster>,
    topics: Vec<(&'static str, i32, crate::broker::TopicConfig)>,
) {
    let rf = cluster.config().voters.len().clamp(1, 3) as i32;
    for (name, partitions, config) in topics {
        loop {
            if cluster.image().topics.contains_key(name) {
                break;
            }
            let Ok(config) = serde_json::to_value(config) else {
                return;
            };
            let cmd = crate::cluster::Command::CreateTopic {
                name: name.to_string(),
                id: uuid::Uuid::new_v4().as_u64_pair().0 | 1,
                partitions,
                replication_factor: rf,
                at_most_live: false,
                config,
            };
            match cluster.propose(cmd).await {
                Ok((crate::cluster::Outcome::Done, _)) => {
                    info!(
                        topic = name,
                        partitions,
                        replication_factor = rf,
                        "internal topic created"
                    );
                    break;
                }
                Ok((
                    crate::cluster::Outcome::Refused(crate::cluster::Refusal::TopicExists(_)),
                    _,
                )) => break,
                Ok((o, _)) => {
                    tracing::debug!(topic = name, outcome = ?o, "internal topic not created yet")
                }
                Err(e) => {
                    tracing::debug!(topic = name, error = %e, "internal topic not created yet")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = cluster.stopped_signal() => return,
            }
        }
    }
}

/// Like [`run`], with every listener a node may have; in cluster mode
/// (`config.cluster.controller_voters` set) the internal listener is
/// required.
pub async fn run_node(
    config: ServerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let handle = prometheus();
    let mut broker_config = config.broker_config()?;
    let coordinator_config = config.coordinator_config()?;
    let mut cluster_config = config.cluster_config()?;
    // The address Kafka clients are told to dial this broker at.
    let kafka_advertised = match &listeners.kafka {
        None => None,
        Some(l) => match &config.kafka_advertise {
            Some(a) => Some(a.clone()),
            None => {
                let a = l.local_addr()?;
                if a.ip().is_unspecified() && cluster_config.is_some() {
                    return Err(Error::Config(format!(
                        "--kafka-listen {a} is a wildcard address, which Kafka clients cannot dial: set --kafka-advertise HOST:PORT"
                    )));
                }
                Some(a.to_string())
            }
        },
    };
    if let Some(cc) = &mut cluster_config {
        cc.kafka_advertise = kafka_advertised.clone();
    }
    if let Some(cc) = &cluster_config {
        broker_config.producer_id_stripe = Some(crate::broker::ProducerIdStripe {
            node: cc.node_id as i64,
            stride: crate::config::MAX_CLUSTER_NODE_ID as i64 + 1,
        });
        broker_config.node_id = Some(cc.node_id);
    }
    if cluster_config.is_some() && listeners.internal.is_none() {
        return Err(Error::Config(
            "a cluster node needs an internal listener (--internal-listen)".into(),
        ));
    }
    let tls = load_tls(&config).await?;
    if let Some(cc) = &mut cluster_config {
        cc.internal_tls = tls.internal_client.clone();
    }
    let broker = tokio::task::spawn_blocking(move || Broker::open(broker_config))
        .await
        .map_err(|e| Error::Config(format!("opening broker: {e}")))??;
    let cluster = match cluster_config {
        None => None,
        Some(mut cc) => {
            if config.cluster.advertise.is_none() {
                // The bound address (the configured one may name port 0).
                if let Ok(a) = listeners.client.local_addr() {
                    if a.ip().is_unspecified() {
                        let b = broker.clone();
                        let _ = tokio::task::spawn_blocking(move || b.close()).await;
                        return Err(Error::Config(format!(
                            "--listen {a} is a wildcard address, which other brokers and clients cannot dial: set --advertise HOST:PORT"
                        )));
                    }
                    cc.advertise = a.to_string();
                }
            }
            let fresh = !cc.dir.exists();
            if fresh && broker.has_user_topics() {
                let b = broker.clone();
                let _ = tokio::task::spawn_blocking(move || b.close()).await;
                return Err(Error::Config(format!(
                    "{} holds topics created by a single-node server; a cluster node keeps its topics in the cluster metadata and starts from an empty data directory (start this one without --controller-voters, or move its topics out)",
                    config.data_dir.display()
                )));
            }
            match Cluster::open(cc).await {
                Ok(c) => Some(c),
                Err(e) => {
                    let b = broker.clone();
                    let _ = tokio::task::spawn_blocking(move || b.close()).await;
                    return Err(Error::Config(format!("joining the cluster: {e}")));
                }
            }
        }
    };
    let access = Access::new(config.security.access_settings()?);
    let security = match &cluster {
        Some(c) => SecurityBackend::Cluster(ClusterLink::new(c.clone())),
        None => {
            let dir = config.data_dir.clone();
            let opened = tokio::task::spawn_blocking(move || {
                LocalStore::open(crate::storage::os_fs(), &dir)
            })
            .await
            .map_err(|e| Error::Config(format!("opening the security state: {e}")))?;
            match opened {
                Ok(store) => {
                    access.update(&store.state());
                    SecurityBackend::Local(Arc::new(store))
                }
                Err(e) => {
                    let b = broker.clone();
                    let _ = tokio::task::spawn_blocking(move || b.close()).await;
                    return Err(Error::Config(format!("opening the security state: {e}")));
                }
            }
        }
    };
    warn_if_exposed(
        &config,
        &listeners,
        tls.client.is_some(),
        tls.internal.is_some(),
    );
    let follower = cluster.as_ref().map(|c| {
        c.start_tasks();
        tokio::spawn(follow_metadata(c.clone(), broker.clone(), access.clone()))
    });
    let replicator = cluster
        .as_ref()
        .map(|c| Replicator::start(broker.clone(), c.clone()));
    if let Some(c) = &cluster {
        broker.set_remote_reads(Arc::new(LeaderReads::new(
            ClusterLink::new(c.clone()),
            tokio::runtime::Handle::current(),
        )));
        // The coordinators' state topics are cluster topics, replicated
        // like any other.
        let journal = crate::broker::journal::journal_topic_config;
        tokio::spawn(ensure_cluster_topics(
            c.clone(),
            vec![
                (
                    crate::coordinator::OFFSETS_TOPIC,
                    coordinator_config.offsets_partitions,
                    journal(coordinator_config.offsets_segment_bytes),
                ),
                (
                    crate::coordinator::queues::SHARE_STATE_TOPIC,
                    config.queue_state_config().partitions,
                    journal(64 * 1024 * 1024),
                ),
            ],
        ));
    }
    let opened = {
        let broker = broker.clone();
        tokio::task::spawn_blocking(move || Coordinator::open(broker, coordinator_config))
            .await
            .map_err(|e| Error::Config(format!("opening group coordinator: {e}")))?
    };
    let coordinator = match opened {
        Ok(c) => c,
        Err(e) => {
            let b = broker.clone();
            let _ = tokio::task::spawn_blocking(move || b.close()).await;
            return Err(e.into());
        }
    };
    coordinator.start();
    let opened = {
        let broker = broker.clone();
        let clock = broker.config().log.clock.clone();
        let queue_config = config.queue_state_config();
        tokio::task::spawn_blocking(move || Queues::open_with(broker, clock, queue_config))
            .await
            .map_err(|e| Error::Config(format!("opening work-queue coordinator: {e}")))?
    };
    let queues = match opened {
        Ok(q) => q,
        Err(e) => {
            let b = broker.clone();
            let _ = tokio::task::spawn_blocking(move || b.close()).await;
            return Err(e.into());
        }
    };
    queues.start();
    let advertised = config.cluster.advertise.clone().unwrap_or_else(|| {
        listeners
            .client
            .local_addr()
            .map_or_else(|_| config.listen.to_string(), |a| a.to_string())
    });
    let domain = Domain {
        broker: broker.clone(),
        coordinator,
        queues,
        link: cluster.clone().map(ClusterLink::new),
        advertised,
        kafka_advertised,
        access,
        security,
        tls,
        data_dir: config.data_dir.clone(),
    };
    // Controlled shutdown: leadership moves to other in-sync replicas
    // before this broker stops serving.
    let resigning = cluster.clone();
    let shutdown = async move {
        shutdown.await;
        if let Some(c) = resigning {
            c.resign(Duration::from_secs(5)).await;
        }
    };
    let result = serve(&config.limits, domain, handle, listeners, shutdown).await;
    if let Some(r) = &replicator {
        r.stop();
    }
    if let Some(c) = &cluster {
        c.shutdown().await;
    }
    if let Some(f) = follower {
        f.abort();
    }
    tokio::task::spawn_blocking(move || broker.close())
        .await
        .map_err(|e| Error::Config(format!("closing broker: {e}")))?;
    info!("sluice stopped");
    result
}

/// Connections the internal listener takes at once (other brokers' Raft,
/// forwarding and replica fetches: a few per broker).
const INTERNAL_MAX_CONNECTIONS: usize = 4096;

/// The domain facades every transport calls.
struct Domain {
    broker: Arc<Broker>,
    coordinator: Arc<Coordinator>,
    queues: Arc<Queues>,
    /// In a cluster.
    link: Option<ClusterLink>,
    /// The client address handed out in metadata.
    advertised: String,
    /// The Kafka address handed out in Kafka metadata.
    kafka_advertised: Option<String>,
    /// Who may do what.
    access: Arc<Access>,
    /// Where users, tokens and ACLs are stored.
    security: SecurityBackend,
    /// TLS of the listeners.
    tls: NodeTls,
    /// Where bootstrap tokens are left for this node.
    data_dir: std::path::PathBuf,
}

async fn serve(
    config_limits: &LimitSettings,
    domain: Domain,
    prometheus: &'static PrometheusHandle,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let Domain {
        broker,
        coordinator,
        queues,
        link,
        advertised,
        kafka_advertised,
        access,
        security,
        tls,
        data_dir,
    } = domain;
    let Listeners {
        client: listener,
        metrics,
        internal,
        kafka,
    } = listeners;
    let addr = listener.local_addr()?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ServerInfoServer<InfoService>>()
        .await;
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
        .await;
    health_reporter
        .set_serving::<BrokerServer<BrokerService>>()
        .await;
    health_reporter
        .set_serving::<GroupsServer<GroupsService>>()
        .await;
    health_reporter
        .set_serving::<GroupAdminServer<GroupAdminService>>()
        .await;
    health_reporter
        .set_serving::<QueuesServer<QueuesService>>()
        .await;
    health_reporter
        .set_serving::<SecurityServer<SecurityService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;

    // Stops the metrics endpoint after the gRPC drain.
    let (stop_metrics, mut metrics_stopped) = tokio::sync::watch::channel(false);
    let metrics_task = match metrics {
        Some(l) => {
            info!(addr = %l.local_addr()?, "metrics listening");
            let app = metrics_router(
                broker.clone(),
                coordinator.clone(),
                queues.clone(),
                link.as_ref().map(|l| l.cluster.clone()),
                prometheus,
            );
            Some(tokio::spawn(async move {
                let stop = async move {
                    let _ = metrics_stopped.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stop).await {
                    tracing::error!(error = %e, "metrics endpoint failed");
                }
            }))
        }
        None => None,
    };

    let limits = config_limits.clone();
    let replies = conn::ReplyBudget::new(limits.max_reply_bytes_in_flight);
    // Set when shutdown begins, so the drain can be timed.
    let (draining_tx, mut draining_rx) = tokio::sync::watch::channel(false);
    let shutting_down = {
        let broker = broker.clone();
        async move {
            shutdown.await;
            info!("draining");
            health_reporter
                .set_not_serving::<BrokerServer<BrokerService>>()
                .await;
            broker.begin_shutdown();
            let _ = draining_tx.send(true);
        }
    };
    // The Kafka listener stops taking requests when the drain begins.
    let kafka_task = match (kafka, kafka_advertised) {
        (Some(l), Some(advertised)) => {
            let me_id = link
                .as_ref()
                .map_or(crate::api::grpc::cluster::STANDALONE_NODE_ID, |l| {
                    l.cluster.node_id()
                });
            let me = crate::api::kafka::Endpoint::parse(
                i32::try_from(me_id).unwrap_or(i32::MAX),
                &advertised,
            )
            .ok_or_else(|| {
                Error::Config(format!("--kafka-advertise '{advertised}' is not HOST:PORT"))
            })?;
            let k = crate::api::kafka::Kafka::new(
                broker.clone(),
                coordinator.clone(),
                link.clone(),
                me,
                limits.max_request_bytes,
                limits.max_connections,
                crate::api::kafka::KafkaSecurity {
                    access: access.clone(),
                    tls: tls.kafka.clone(),
                },
            );
            Some(tokio::spawn(crate::api::kafka::serve(
                k,
                l,
                draining_rx.clone(),
            )))
        }
        _ => None,
    };
    let idle = LimitSettings::optional(limits.idle_timeout_ms);
    let mut reloads: Vec<Arc<dyn Reload>> = [&tls.client, &tls.kafka, &tls.internal]
        .into_iter()
        .flatten()
        .map(|c| c.clone() as Arc<dyn Reload>)
        .collect();
    if let Some(c) = &tls.internal_client {
        reloads.push(c.clone());
    }
    let reload_task =
        (!reloads.is_empty()).then(|| tokio::spawn(reload_tls(reloads, tls.reload_every)));
    let incoming = conn::incoming(
        listener,
        limits.max_connections,
        idle,
        draining_rx.clone(),
        tls.client.clone(),
    );
    info!(%addr, version = crate::VERSION, "sluice listening");
    // Requests are decoded whole: each service takes what its largest
    // valid request needs, and no more.
    let small = SMALL_REQUEST_BYTES;
    let security_service = SecurityService::new(access.clone(), security);
    let importer = tokio::spawn(import_bootstrap_tokens(data_dir, security_service.clone()));
    let routes = |auth: AuthLayer| {
        Server::builder()
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
            .max_frame_size(HTTP2_MAX_FRAME)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .concurrency_limit_per_connection(limits.max_calls_per_connection)
            .http2_keepalive_interval(LimitSettings::optional(limits.keepalive_interval_ms))
            .http2_keepalive_timeout(Some(Duration::from_millis(limits.keepalive_timeout_ms)))
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .layer(conn::TrackCallsLayer)
            .layer(auth)
            .add_service(health_service.clone())
            .add_service(reflection.clone())
            .add_service(reflection_alpha.clone())
            .add_service(ServerInfoServer::new(InfoService))
            .add_service(
                AdminServer::new(AdminService::new(broker.clone(), link.clone()))
                    .max_decoding_message_size(small)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(ZeroCopyBatches::new(
                BrokerServer::new(BrokerService::new(
                    broker.clone(),
                    replies.clone(),
                    link.clone(),
                ))
                .max_decoding_message_size(limits.max_request_bytes)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
                broker.clone(),
                link.clone(),
            ))
            .add_service(
                ClusterServer::new(ClusterService::new(
                    broker.clone(),
                    link.clone(),
                    advertised.clone(),
                ))
                .max_decoding_message_size(small)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                GroupsServer::new(GroupsService::new(coordinator.clone(), link.clone()))
                    .max_decoding_message_size(small),
            )
            .add_service(
                GroupAdminServer::new(GroupAdminService::new(coordinator.clone(), link.clone()))
                    .max_decoding_message_size(small)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                QueuesServer::new(QueuesService::new(
                    queues.clone(),
                    Duration::from_millis(limits.consume_open_timeout_ms),
                    link.clone(),
                ))
                .max_decoding_message_size(small)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                SecurityServer::new(security_service.clone())
                    .max_decoding_message_size(small)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
    };
    // The internal listener serves the public services too (forwarded
    // requests arrive there) plus the nodes' own service. It stops after
    // the client listener has drained.
    let (stop_internal, mut internal_stopped) = tokio::sync::watch::channel(false);
    let internal_task = match (internal, &link) {
        (Some(l), Some(link)) => {
            info!(addr = %l.local_addr()?, node = link.cluster.node_id(), "internal listener up");
            let router = routes(AuthLayer::trusted(access.clone()))
                .add_service(InternalService::server(link.cluster.clone()))
                .add_service(ReplicationService::server(broker.clone()));
            let conns_stop = internal_stopped.clone();
            let stop = async move {
                let _ = internal_stopped.wait_for(|s| *s).await;
            };
            // Every broker's connections (a few each), with mutual TLS when
            // it is on; closed when this listener stops, not at the drain.
            // Small replies (a follower's fetch, a Raft heartbeat) must not
            // wait for Nagle's algorithm (conn sets TCP_NODELAY).
            let incoming = conn::incoming(
                l,
                INTERNAL_MAX_CONNECTIONS,
                None,
                conns_stop,
                tls.internal.clone(),
            );
            Some(tokio::spawn(async move {
                if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
                    tracing::error!(error = %e, "internal listener failed");
                }
            }))
        }
        _ => None,
    };
    let served = routes(AuthLayer::new(access.clone()))
        .serve_with_incoming_shutdown(incoming, shutting_down);
    // After the signal, calls get the drain timeout to finish; then the
    // logs are closed cleanly and the process exits anyway.
    let drain = Duration::from_millis(limits.drain_timeout_ms);
    let drain_expired = async move {
        let _ = draining_rx.wait_for(|d| *d).await;
        tokio::time::sleep(drain).await;
    };
    let served = tokio::select! {
        r = served => r,
        _ = drain_expired => {
            tracing::warn!(drain_timeout_ms = limits.drain_timeout_ms, open = ?conn::open_calls(), "calls still open after the drain timeout; closing anyway");
            Ok(())
        }
    };
    if let Some(t) = kafka_task {
        if tokio::time::timeout(drain, t).await.is_err() {
            tracing::warn!("kafka connections still busy after the drain timeout");
        }
    }
    let _ = stop_metrics.send(true);
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let _ = stop_internal.send(true);
    if let Some(t) = internal_task {
        if tokio::time::timeout(drain, t).await.is_err() {
            tracing::warn!("internal listener still busy after the drain timeout");
        }
    }
    if let Some(t) = reload_task {
        t.abort();
    }
    importer.abort();
    served?;
    Ok(())
}

fn metrics_router(
    broker: Arc<Broker>,
    coordinator: Arc<Coordinator>,
    queues: Arc<Queues>,
    cluster: Option<Arc<Cluster>>,
    prometheus: &'static PrometheusHandle,
) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let broker = broker.clone();
                let coordinator = coordinator.clone();
                let queues = queues.clone();
                async move {
                    let listed = tokio::task::spawn_blocking(move || queues.list())
                        .await
                        .unwrap_or_default();
                    for q in listed
                        .iter()
                        .take(crate::coordinator::queues::MAX_METRIC_QUEUES)
                    {
                        let g = q.group.clone();
                        metrics::gauge!("sluice_queue_in_flight", "group" => g.clone())
                            .set(q.in_flight as f64);
                        metrics::gauge!("sluice_queue_available", "group" => g.clone())
                            .set(q.available as f64);
                        metrics::gauge!("sluice_queue_members", "group" => g.clone())
                            .set(q.members as f64);
                        metrics::gauge!("sluice_queue_oldest_unacked_age_seconds", "group" => g)
                            .set(q.oldest_unacked_age_ms as f64 / 1000.0);
                    }
                    // Both read the group shards, whose locks a write holds
                    // while it waits for the in-sync replicas: never on a
                    // runtime worker.
                    let c = coordinator.clone();
                    let (groups, lags) =
                        tokio::task::spawn_blocking(move || (c.stats(), c.lag_by_topic()))
                            .await
                            .unwrap_or_default();
                    for (group, topic, lag) in lags {
                        metrics::gauge!("sluice_group_lag", "group" => group, "topic" => topic)
                            .set(lag as f64);
                    }
                    metrics::gauge!("sluice_groups").set(groups.groups as f64);
                    metrics::gauge!("sluice_group_members").set(groups.members as f64);
                    let stats = tokio::task::spawn_blocking(move || broker.stats())
                        .await
                        .unwrap_or_default();
                    metrics::gauge!("sluice_open_partition_logs").set(stats.open_logs as f64);
                    metrics::gauge!("sluice_partitions_led").set(stats.led as f64);
                    metrics::gauge!("sluice_partitions_under_replicated")
                        .set(stats.under_replicated as f64);
                    metrics::gauge!("sluice_partitions_under_min_isr")
                        .set(stats.under_min_isr as f64);
                    for (topic, partitions, size, segments) in stats.topics {
                        metrics::gauge!("sluice_topic_partitions", "topic" => topic.clone())
                            .set(partitions as f64);
                        metrics::gauge!("sluice_topic_size_bytes", "topic" => topic.clone())
                            .set(size as f64);
                        metrics::gauge!("sluice_topic_segments", "topic" => topic)
                            .set(segments as f64);
                    }
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        prometheus.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                // Ready once this node has applied the committed metadata
                // (a single node always is).
                let ready = cluster.as_ref().is_none_or(|c| c.ready());
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "catching up with the cluster metadata\n",
                        )
                    }
                }
            }),
        )
}
