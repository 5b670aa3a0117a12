//! Replication's transport, over the broker's replication calls (see
//! `broker/replication.rs`):
//!
//! - [`ReplicationService`], on the internal listener: a leader answers
//!   followers' fetches, waiting up to `max_wait_ms` for records.
//! - [`Replicator`], on every broker of a cluster: one fetcher task per
//!   leader this broker follows partitions of, each one request at a time
//!   over its own HTTP/2 connection carrying every partition the pair
//!   shares (Kafka's replica fetcher), and a task that proposes the ISR
//!   changes this broker's led partitions need to the controller.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use tonic::{transport::Channel, Request, Response, Status};

use crate::broker::{
    Broker, IsrChange, ReplicaFetchData, ReplicaFetchPartition, ReplicaRecords, ReplicaRefusal,
};
use crate::cluster::transport::pb;
use crate::cluster::{Cluster, Command, NodeId, Outcome};
use pb::replication_client::ReplicationClient;
use pb::replication_server::{Replication, ReplicationServer};

/// Largest replication response.
const MAX_MESSAGE: usize = 64 << 20;
/// Record bytes per response at most.
const MAX_RESPONSE_RECORDS: usize = 16 << 20;
/// Longest wait a fetch may ask for.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Pause after a failed fetch (leader down or unreachable).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often led partitions are checked for ISR changes.
const ISR_CHECK: Duration = Duration::from_millis(200);

/// The leader side: answers followers' fetches.
pub struct ReplicationService {
    broker: Arc<Broker>,
}

impl ReplicationService {
    /// The service for the internal listener.
    pub fn server(broker: Arc<Broker>) -> ReplicationServer<Self> {
        ReplicationServer::new(Self { broker })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn fetch(
        &self,
        request: Request<pb::ReplicaFetchRequest>,
    ) -> Result<Response<pb::ReplicaFetchResponse>, Status> {
        let req = request.into_inner();
        let parts: Arc<Vec<ReplicaFetchPartition>> =
            Arc::new(req.partitions.into_iter().map(partition_in).collect());
        let per_partition = (req.max_bytes_per_partition as usize).clamp(1, MAX_MESSAGE / 4);
        let budget = (req.max_bytes as usize).clamp(1, MAX_RESPONSE_RECORDS);
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(u64::from(req.max_wait_ms)).min(MAX_WAIT);
        let follower = req.follower_id;
        loop {
            // Registered before the fetch looks, so an append in between
            // still wakes this wait.
            let appended = self.broker.leader_appends().notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let broker = self.broker.clone();
            let p = parts.clone();
            let data = tokio::task::spawn_blocking(move || {
                broker.replica_fetch(follower, &p, per_partition, budget)
            })
            .await
            .map_err(|e| Status::internal(format!("replica fetch failed: {e}")))?;
            let idle = data.iter().all(
                |d| matches!(&d.outcome, Ok(r) if r.records.is_empty() && r.diverging.is_none()),
            );
            if !idle || tokio::time::Instant::now() >= deadline || self.broker.is_shutting_down() {
                return Ok(Response::new(pb::ReplicaFetchResponse {
                    partitions: data.into_iter().map(data_out).collect(),
                }));
            }
            tokio::select! {
                _ = &mut appended => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.broker.shutting_down() => {}
            }
        }
    }
}

fn partition_in(p: pb::ReplicaFetchPartition) -> ReplicaFetchPartition {
    ReplicaFetchPartition {
        topic: p.topic,
        topic_id: p.topic_id,
        partition: p.partition,
        leader_epoch: p.leader_epoch,
        fetch_offset: p.fetch_offset,
        last_fetched_epoch: p.last_fetched_epoch,
        durable_offset: p.durable_offset,
    }
}

fn partition_out(p: &ReplicaFetchPartition) -> pb::ReplicaFetchPartition {
    pb::ReplicaFetchPartition {
        topic: p.topic.clone(),
        topic_id: p.topic_id,
        partition: p.partition,
        leader_epoch: p.leader_epoch,
        fetch_offset: p.fetch_offset,
        last_fetched_epoch: p.last_fetched_epoch,
        durable_offset: p.durable_offset,
    }
}

fn data_out(d: ReplicaFetchData) -> pb::ReplicaPartitionData {
    let mut out = pb::ReplicaPartitionData {
        topic: d.topic,
        partition: d.partition,
        ..Default::default()
    };
    match d.outcome {
        Ok(r) => {
            out.records = r.records;
            out.high_watermark = r.high_watermark;
            out.log_start = r.log_start;
            out.log_end = r.log_end;
            out.diverging = r
                .diverging
                .map(|(epoch, end_offset)| pb::DivergingEpoch { epoch, end_offset });
        }
        Err(e) => {
            out.message = e.to_string();
            out.error = match e {
                ReplicaRefusal::NotLeader { .. } => pb::ReplicaError::NotLeader,
                ReplicaRefusal::UnknownPartition => pb::ReplicaError::UnknownPartition,
                ReplicaRefusal::OffsetOutOfRange { start, .. } => {
                    out.log_start = start;
                    pb::ReplicaError::OffsetOutOfRange
                }
                ReplicaRefusal::Storage(_) => pb::ReplicaError::Storage,
            } as i32;
        }
    }
    out
}

fn data_in(d: pb::ReplicaPartitionData, asked: &ReplicaFetchPartition) -> ReplicaFetchData {
    let outcome = match pb::ReplicaError::try_from(d.error).unwrap_or(pb::ReplicaError::Storage) {
        pb::ReplicaError::None => Ok(ReplicaRecords {
            records: d.records,
            high_watermark: d.high_watermark,
            log_start: d.log_start,
            log_end: d.log_end,
            diverging: d.diverging.map(|x| (x.epoch, x.end_offset)),
        }),
        pb::ReplicaError::NotLeader => Err(ReplicaRefusal::NotLeader {
            asked: asked.leader_epoch,
            here: d.message,
        }),
        pb::ReplicaError::UnknownPartition => Err(ReplicaRefusal::UnknownPartition),
        pb::ReplicaError::OffsetOutOfRange => Err(ReplicaRefusal::OffsetOutOfRange {
            offset: asked.fetch_offset,
            start: d.log_start,
        }),
        pb::ReplicaError::Storage => Err(ReplicaRefusal::Storage(d.message)),
    };
    ReplicaFetchData {
        topic: d.topic,
        partition: d.partition,
        outcome,
    }
}

/// The follower side and the leader's ISR proposals, for one broker.
pub struct Replicator {
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
    /// Running fetchers by leader. Held to look up, insert or remove.
    fetchers: Mutex<HashMap<NodeId, tokio::task::JoinHandle<()>>>,
}

impl Replicator {
    /// Starts the replication tasks of this broker; they end when the
    /// broker shuts down.
    pub fn start(broker: Arc<Broker>, cluster: Arc<Cluster>) -> Arc<Self> {
        let r = Arc::new(Self {
            broker,
            cluster,
            fetchers: Mutex::new(HashMap::new()),
        });
        tokio::spawn(r.clone().manage_fetchers());
        tokio::spawn(r.clone().propose_isr_changes());
        r
    }

    /// Stops every fetcher (at shutdown).
    pub fn stop(&self) {
        for (_, t) in self.fetchers.lock().drain() {
            t.abort();
        }
    }

    /// Starts a fetcher for every leader this broker follows partitions
    /// of, whenever roles change (and every second, to restart any that
    /// ended).
    async fn manage_fetchers(self: Arc<Self>) {
        let mut roles = self.broker.watch_roles();
        loop {
            if self.broker.is_shutting_down() {
                self.stop();
                return;
            }
            let broker = self.broker.clone();
            let leaders = tokio::task::spawn_blocking(move || broker.followed_leaders())
                .await
                .unwrap_or_default();
            {
                let mut fetchers = self.fetchers.lock();
                fetchers.retain(|_, t| !t.is_finished());
                for leader in leaders {
                    fetchers
                        .entry(leader)
                        .or_insert_with(|| tokio::spawn(self.clone().fetch_from(leader)));
                }
            }
            tokio::select! {
                _ = roles.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.broker.shutting_down() => {}
            }
        }
    }

    /// Fetches from `leader` until this broker follows none of its
    /// partitions, one request at a time over one connection.
    async fn fetch_from(self: Arc<Self>, leader: NodeId) {
        let me = self.cluster.node_id();
        let config = self.broker.config().replication.clone();
        let mut client: Option<(String, ReplicationClient<Channel>)> = None;
        let mut rotate = 0usize;
        loop {
            if self.broker.is_shutting_down() {
                return;
            }
            let broker = self.broker.clone();
            let Ok(mut parts) =
                tokio::task::spawn_blocking(move || broker.follower_fetches(leader)).await
            else {
                return;
            };
            if parts.is_empty() {
                return;
            }
            // Later partitions may get no bytes when a response is full:
            // start elsewhere each time.
            rotate = rotate.wrapping_add(1);
            let n = parts.len();
            parts.rotate_left(rotate % n);
            let Some(address) = self.cluster.address_of(leader) else {
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            };
            if client.as_ref().is_none_or(|(a, _)| *a != address) {
                match connect(&address, self.cluster.config().internal_tls.as_deref()) {
                    Ok(c) => client = Some((address.clone(), c)),
                    Err(e) => {
                        tracing::warn!(leader, %address, error = %e, "bad leader address");
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                }
            }
            let Some((_, c)) = client.as_mut() else {
                continue;
            };
            let wait = config.fetch_wait;
            let mut request = Request::new(pb::ReplicaFetchRequest {
                follower_id: me,
                max_wait_ms: wait.as_millis() as u32,
                max_bytes_per_partition: config.fetch_max_bytes as u32,
                max_bytes: MAX_RESPONSE_RECORDS as u32,
                partitions: parts.iter().map(partition_out).collect(),
            });
            // A leader that cannot answer within 2 s past the long poll is
            // reported (below) and dialed afresh.
            request.set_timeout(wait + Duration::from_secs(2));
            let started = Instant::now();
            let reply = c.fetch(request).await;
            metrics::counter!("sluice_replica_fetches_total").increment(1);
            let reply = match reply {
                Ok(r) => {
                    self.cluster.report_reachable(leader);
                    r.into_inner()
                }
                Err(s) => {
                    tracing::debug!(leader, code = ?s.code(), message = s.message(), "replica fetch failed");
                    // The connection failed (refused, reset, no name, or
                    // no answer in time: a killed container sends no
                    // reset): the controller fences the leader sooner if
                    // it has also stopped heartbeating.
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Unknown
                            | tonic::Code::Cancelled
                    ) {
                        self.cluster.report_unreachable(leader);
                        // Dial afresh: the leader may be back at a new
                        // address behind the same name.
                        client = None;
                    }
                    metrics::counter!("sluice_replica_fetch_errors_total").increment(1);
                    let pause = RETRY_PAUSE.saturating_sub(started.elapsed());
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            let asked: HashMap<(String, i32), ReplicaFetchPartition> = parts
                .into_iter()
                .map(|p| ((p.topic.clone(), p.partition), p))
                .collect();
            let data: Vec<ReplicaFetchData> = reply
                .partitions
                .into_iter()
                .filter_map(|d| {
                    let a = asked.get(&(d.topic.clone(), d.partition))?;
                    Some(data_in(d, a))
                })
                .collect();
            let refused = data
                .iter()
                .filter(|d| matches!(d.outcome, Err(ReplicaRefusal::NotLeader { .. })))
                .count();
            let bytes: usize = data
                .iter()
                .map(|d| d.outcome.as_ref().map_or(0, |r| r.records.len()))
                .sum();
            metrics::counter!("sluice_replica_fetch_bytes_total").increment(bytes as u64);
            let broker = self.broker.clone();
            let _ =
                tokio::task::spawn_blocking(move || broker.apply_replica_data(leader, data)).await;
            if refused > 0 && bytes == 0 {
                // The leader has not caught up with the metadata (or this
                // broker has not): give it a moment.
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Proposes the ISR changes this broker's led partitions need.
    async fn propose_isr_changes(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ISR_CHECK) => {}
                _ = self.broker.shutting_down() => return,
            }
            let broker = self.broker.clone();
            let Ok(changes) = tokio::task::spawn_blocking(move || broker.isr_changes()).await
            else {
                continue;
            };
            for change in changes {
                let me = self.clone();
                tokio::spawn(async move { me.propose_isr(change).await });
            }
        }
    }

    async fn propose_isr(&self, change: IsrChange) {
        tracing::info!(topic = %change.topic, partition = change.partition, isr = ?change.isr, "proposing an ISR change");
        let cmd = Command::AlterIsr {
            topic: change.topic.clone(),
            topic_id: change.topic_id,
            partition: change.partition,
            leader: change.leader,
            leader_epoch: change.leader_epoch,
            partition_epoch: change.partition_epoch,
            isr: change.isr.clone(),
        };
        match self.cluster.propose(cmd).await {
            Ok((Outcome::Done, index)) => {
                metrics::counter!("sluice_isr_changes_total").increment(1);
                // Until this broker applied it, the change stays proposed
                // (and is not proposed again).
                let _ = self
                    .cluster
                    .wait_synced(index, Duration::from_secs(10))
                    .await;
            }
            Ok((outcome, _)) => {
                tracing::info!(topic = %change.topic, partition = change.partition, ?outcome, "ISR change not made");
                self.broker.isr_change_failed(&change);
            }
            Err(e) => {
                tracing::warn!(topic = %change.topic, partition = change.partition, error = %e, "ISR change not proposed");
                self.broker.isr_change_failed(&change);
            }
        }
    }
}

fn connect(
    address: &str,
    tls: Option<&crate::dial::InternalTls>,
) -> Result<ReplicationClient<Channel>, String> {
    let channel = crate::dial::channel(address, tls)?;
    Ok(ReplicationClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}
