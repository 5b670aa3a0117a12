//! `sluice.v1.Broker`: produce, fetch, subscribe, list offsets.

use std::{pin::Pin, sync::Arc};

use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::auth::{caller, produce_bytes, require, throttled, Require};
use super::cluster::{is_forwarded, ClusterLink, Hops, UntilShutdown};
use super::pb::{self, broker_client::BrokerClient};
use super::pb_broker_server::broker_server::Broker as BrokerApi;
use super::reply::{FetchReply, SubscribeReply};
use super::routing::{self, Target};
use super::{convert, status, timed};
use crate::broker::{Acks, Broker, FetchRequest, ProduceResult, RecordFailure};
use crate::cluster::Route;
use crate::security::quota::QuotaKind;
use crate::security::{Operation, ResourceType};

/// Replies of one `ProduceStream` queued for the client at most: when the
/// client does not read them, the server stops reading its requests
/// (backpressure on pipelining clients). Replies that wait for a flush are
/// bounded apart, by `PRODUCE_STREAM_DURABLE_IN_FLIGHT`.
const PRODUCE_STREAM_BUFFER: usize = 64;
/// Requests of one `ProduceStream` waiting for their flush at once; the
/// stream stops reading further requests while this many wait.
const PRODUCE_STREAM_DURABLE_IN_FLIGHT: usize = 64;
/// Messages a subscription may have read ahead of its reader. Small: a
/// slow reader holds the server to this much, plus the message being sent.
const SUBSCRIBE_BUFFER: usize = 1;

/// Serves `sluice.v1.Broker`.
#[derive(Debug, Clone)]
pub struct BrokerService {
    broker: Arc<Broker>,
    replies: super::conn::ReplyBudget,
    /// In a cluster: routes each partition's requests to its leader.
    link: Option<ClusterLink>,
}

impl BrokerService {
    /// A service over `broker`; fetch replies share `replies`; in a
    /// cluster when `link` is given.
    pub fn new(
        broker: Arc<Broker>,
        replies: super::conn::ReplyBudget,
        link: Option<ClusterLink>,
    ) -> Self {
        Self {
            broker,
            replies,
            link,
        }
    }

    /// For a one-partition request: catches up with the forwarding
    /// broker's metadata (if forwarded), then the leader's internal
    /// address if another broker leads the partition.
    pub(super) async fn remote_leader<T>(
        link: &ClusterLink,
        request: &Request<T>,
        topic: &str,
        partition: i32,
    ) -> Result<Option<String>, Status> {
        let hops = Hops::of(request);
        if hops.forwarded() {
            link.catch_up(request).await?;
        }
        Ok(match link.route(topic, partition, hops)? {
            Route::Remote { internal, .. } => Some(internal),
            Route::Local => None,
        })
    }

    /// A one-partition read: the request back if this broker leads the
    /// partition (or there is no cluster), else a client for the leader
    /// and the request to send it (deadline and hops carried over).
    async fn to_leader<T>(
        &self,
        request: Request<T>,
        partition: impl Fn(&T) -> (&str, i32),
        method: &'static str,
    ) -> Result<ToLeader<T>, Status> {
        let Some(link) = &self.link else {
            return Ok(ToLeader::Local(request));
        };
        let (topic, p) = partition(request.get_ref());
        let Some(internal) = Self::remote_leader(link, &request, topic, p).await? else {
            return Ok(ToLeader::Local(request));
        };
        let timeout = super::wait_budget(&request);
        let hops = Hops::of(&request);
        let client = Self::remote_client(link, &internal, method)?;
        Ok(ToLeader::Remote(
            client,
            link.forwarded(request.into_inner(), timeout, hops),
        ))
    }

    fn remote_client(
        link: &ClusterLink,
        internal: &str,
        method: &'static str,
    ) -> Result<BrokerClient<tonic::transport::Channel>, Status> {
        ClusterLink::count_forward(method);
        Ok(BrokerClient::new(link.channel(internal)?)
            .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(super::MAX_MESSAGE_BYTES))
    }
}

/// Where a one-partition read goes.
enum ToLeader<T> {
    /// Served here.
    Local(Request<T>),
    /// Forwarded with this client.
    Remote(BrokerClient<tonic::transport::Channel>, Request<T>),
}

/// Appends a request whose partitions this broker leads.
async fn produce_local(
    broker: &Broker,
    r: pb::ProduceRequest,
) -> Result<pb::ProduceResponse, Status> {
    let sequence = r.sequence;
    let req = convert::produce_request(r)?;
    let acks = req.acks;
    let appended = broker.append(req)?;
    let result = match acks {
        Acks::None => {
            // Starts any flush the policy wants; nobody waits for it.
            let _ = appended.result();
            ProduceResult::default()
        }
        // acks=LEADER waits only for a flush the policy wants (e.g.
        // flush every append); acks=ALL always waits for one.
        Acks::Leader | Acks::All => appended.durable().await,
    };
    Ok(convert::produce_response(sequence, result))
}

/// Serves the parts of a split produce request: the local part here, the
/// others at their leaders (concurrently), and merges the replies.
async fn produce_parts(
    broker: &Broker,
    link: &ClusterLink,
    sequence: u64,
    parts: Vec<routing::ProducePart>,
    timeout: Option<std::time::Duration>,
    hops: Hops,
) -> pb::ProduceResponse {
    let mut remote = Vec::new();
    let mut replies = Vec::new();
    for part in parts {
        match part.target {
            Target::Remote { internal, .. } => {
                let link = link.clone();
                let request = part.request;
                remote.push((
                    part.indices,
                    tokio::spawn(async move {
                        routing::forward_produce(&link, &internal, request, timeout, hops).await
                    }),
                ));
            }
            Target::Local => {
                let reply = produce_local(broker, part.request).await;
                replies.push((part.indices, reply));
            }
            Target::Failed(s) => replies.push((part.indices, Err(s))),
        }
    }
    for (indices, task) in remote {
        let reply = task
            .await
            .unwrap_or_else(|e| Err(Status::internal(format!("forwarding failed: {e}"))));
        replies.push((indices, reply));
    }
    routing::merge_produce(sequence, replies)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A whole request failed: on a stream, answer with that error for each
/// of its records so the stream stays open.
fn failed_request(
    sequence: u64,
    records: usize,
    e: crate::broker::BrokerError,
) -> pb::ProduceResponse {
    let error = Arc::new(e);
    convert::produce_response(
        sequence,
        ProduceResult {
            partitions: Vec::new(),
            failures: (0..records)
                .map(|index| RecordFailure {
                    index,
                    error: error.clone(),
                })
                .collect(),
        },
    )
}

impl BrokerService {
    /// A produce request, appended here or forwarded to the leaders.
    async fn produce_routed(
        &self,
        r: pb::ProduceRequest,
        hops: Hops,
        timeout: Option<std::time::Duration>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let Some(link) = &self.link else {
            return Ok(Response::new(produce_local(&self.broker, r).await?));
        };
        let sequence = r.sequence;
        let mut parts = routing::split_produce(link, r, hops)?;
        if parts.len() == 1 && matches!(parts[0].target, Target::Local) {
            let part = parts.remove(0);
            return Ok(Response::new(
                produce_local(&self.broker, part.request).await?,
            ));
        }
        Ok(Response::new(
            produce_parts(&self.broker, link, sequence, parts, timeout, hops).await,
        ))
    }
}

#[tonic::async_trait]
impl BrokerApi for BrokerService {
    async fn produce(
        &self,
        request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let _t = timed("Produce");
        require(
            &request,
            Operation::Write,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        let hops = Hops::of(&request);
        if let (Some(link), true) = (&self.link, hops.forwarded()) {
            link.catch_up(&request).await?;
        }
        let timeout = super::wait_budget(&request);
        let who = caller(&request);
        let bytes = produce_bytes(request.get_ref());
        let r = request.into_inner();
        let reply = self.produce_routed(r, hops, timeout).await?;
        Ok(throttled(&who, QuotaKind::Produce, bytes, reply).await)
    }

    async fn init_producer(
        &self,
        request: Request<pb::InitProducerRequest>,
    ) -> Result<Response<pb::InitProducerResponse>, Status> {
        let _t = timed("InitProducer");
        // Idempotent-write on the cluster, or write on any topic (Kafka's
        // rule).
        let who = caller(&request);
        if !who.may_write_idempotently() {
            return Err(super::auth::denied(
                &who.principal,
                Operation::IdempotentWrite,
                ResourceType::Cluster,
                crate::security::acl::CLUSTER_RESOURCE,
            ));
        }
        if let (Some(link), true) = (&self.link, is_forwarded(&request)) {
            link.catch_up(&request).await?;
        }
        // In a cluster an epoch bump goes to the broker that handed the id
        // out (ids are striped by node id).
        if let (Some(link), Some(id)) = (&self.link, request.get_ref().producer_id) {
            let stride = crate::config::MAX_CLUSTER_NODE_ID as i64 + 1;
            let owner = id.rem_euclid(stride) as u64;
            if id >= 0 && owner != link.cluster.node_id() && !is_forwarded(&request) {
                let image = link.cluster.image();
                let Some(b) = image.brokers.get(&owner) else {
                    return Err(Status::failed_precondition(format!(
                        "producer id {id} was handed out by broker {owner}, which is not registered; call InitProducer without an id for a new one"
                    )));
                };
                let mut client = Self::remote_client(link, &b.internal, "InitProducer")?;
                return client
                    .init_producer(link.forwarded(request.into_inner(), None, Hops::default()))
                    .await;
            }
        }
        let r = request.into_inner();
        let bump = match r.producer_id {
            None => None,
            Some(id) => Some((
                id,
                i16::try_from(r.producer_epoch).map_err(|_| {
                    Status::invalid_argument(format!(
                        "producer_epoch {} is out of range [0, {}]",
                        r.producer_epoch,
                        i16::MAX
                    ))
                })?,
            )),
        };
        let broker = self.broker.clone();
        let (producer_id, epoch) = tokio::task::spawn_blocking(move || broker.init_producer(bump))
            .await
            .map_err(|e| Status::internal(format!("producer id allocation failed: {e}")))??;
        Ok(Response::new(pb::InitProducerResponse {
            producer_id,
            producer_epoch: i32::from(epoch),
        }))
    }

    type ProduceStreamStream = BoxStream<pb::ProduceResponse>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<pb::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let hops = Hops::of(&request);
        let who = caller(&request);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(PRODUCE_STREAM_BUFFER);
        let broker = self.broker.clone();
        let link = self.link.clone();
        let durable_slots = Arc::new(tokio::sync::Semaphore::new(
            PRODUCE_STREAM_DURABLE_IN_FLIGHT,
        ));
        tokio::spawn(async move {
            loop {
                // On shutdown, stop reading: replies still owed are sent,
                // then the stream ends and the drain can finish.
                let msg = tokio::select! {
                    msg = inbound.next() => msg,
                    _ = broker.shutting_down() => break,
                };
                let Some(msg) = msg else { break };
                let r = match msg {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "produce stream ended by client");
                        break;
                    }
                };
                // Over the produce quota: the next request is read only
                // after the throttle (the stream's flow control holds the
                // producer back).
                let throttle = who.throttle(QuotaKind::Produce, produce_bytes(&r) as f64);
                if !throttle.is_zero() {
                    tokio::time::sleep(throttle).await;
                }
                let t = timed("ProduceStream");
                if let Err(s) = who.require(Operation::Write, ResourceType::Topic, &r.topic) {
                    if tx.send(Err(s)).await.is_err() {
                        break;
                    }
                    continue;
                }
                let sequence = r.sequence;
                let records = r.records.len();
                // In a cluster, records for partitions led elsewhere are
                // forwarded; such a message is answered in turn (its
                // local part too), so replies keep the stream's order.
                let r = match &link {
                    None => r,
                    Some(link) => match routing::split_produce(link, r, hops) {
                        Err(s) => {
                            if tx.send(Err(s)).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        Ok(mut parts) => {
                            if parts.len() == 1 && matches!(parts[0].target, Target::Local) {
                                parts.remove(0).request
                            } else {
                                let reply =
                                    produce_parts(&broker, link, sequence, parts, None, hops).await;
                                drop(t);
                                if tx.send(Ok(reply)).await.is_err() {
                                    break;
                                }
                                continue;
                            }
                        }
                    },
                };
                let req = match convert::produce_request(r) {
                    Ok(req) => req,
                    Err(s) => {
                        if tx.send(Err(s)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                let acks = req.acks;
                let reply = match broker.append(req) {
                    Err(e) if acks == Acks::None => {
                        tracing::debug!(error = %e, "acks=NONE produce failed");
                        continue;
                    }
                    Err(e) => failed_request(sequence, records, e),
                    Ok(a) if acks == Acks::None => {
                        let _ = a.result();
                        continue;
                    }
                    Ok(a) if !a.needs_flush() => convert::produce_response(sequence, a.result()),
                    Ok(a) => {
                        // Durable replies wait for their flush without
                        // holding up later requests, which then share it;
                        // a bounded number at a time (backpressure).
                        let Ok(slot) = durable_slots.clone().acquire_owned().await else {
                            break;
                        };
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let _slot = slot;
                            let _t = t;
                            let result = a.durable().await;
                            let _ = tx
                                .send(Ok(convert::produce_response(sequence, result)))
                                .await;
                        });
                        continue;
                    }
                };
                drop(t);
                if tx.send(Ok(reply)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<FetchReply>, Status> {
        let _t = timed("Fetch");
        require(
            &request,
            Operation::Read,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        let request = match self
            .to_leader(request, |r| (&r.topic, r.partition), "Fetch")
            .await?
        {
            ToLeader::Local(r) => r,
            ToLeader::Remote(mut client, r) => {
                return Ok(client.fetch(r).await?.map(FetchReply::Forwarded))
            }
        };
        let max_wait_ms = super::capped_wait(&request, request.get_ref().max_wait_ms);
        let who = caller(&request);
        let r = request.into_inner();
        let result = self
            .broker
            .fetch(FetchRequest {
                topic: &r.topic,
                partition: r.partition,
                offset: r.offset,
                max_records: r.max_records,
                max_bytes: r.max_bytes,
                max_wait_ms,
            })
            .await?;
        // The reply is held until sent: take its share of the budget.
        let size = super::reply::size_hint(&result);
        let permit = self.replies.reserve(size).await;
        let mut response = Response::new(FetchReply::Stored(result));
        if let Some(p) = permit {
            response.extensions_mut().insert(p);
        }
        Ok(throttled(&who, QuotaKind::Fetch, size, response).await)
    }

    /// Reached for a partition led elsewhere (forwarded) or a compressed
    /// request; a local read is answered without copying by
    /// [`super::batches::ZeroCopyBatches`] before it gets here, and here
    /// with one copy.
    async fn fetch_batches(
        &self,
        request: Request<pb::FetchBatchesRequest>,
    ) -> Result<Response<pb::FetchBatchesResponse>, Status> {
        let _t = timed("FetchBatches");
        require(
            &request,
            Operation::Read,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        let request = match self
            .to_leader(request, |r| (&r.topic, r.partition), "FetchBatches")
            .await?
        {
            ToLeader::Local(r) => r,
            ToLeader::Remote(mut client, r) => return client.fetch_batches(r).await,
        };
        let max_wait_ms = super::capped_wait(&request, request.get_ref().max_wait_ms);
        let who = caller(&request);
        let r = request.into_inner();
        let read = self
            .broker
            .fetch_batches(&r.topic, r.partition, r.offset, r.max_bytes, max_wait_ms)
            .await?;
        let size = read.data.len();
        let response = Response::new(super::batches::response(read));
        Ok(throttled(&who, QuotaKind::Fetch, size, response).await)
    }

    type SubscribeStream = BoxStream<SubscribeReply>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        require(
            &request,
            Operation::Read,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        if let Some(link) = &self.link {
            let r = request.get_ref();
            if let Some(internal) =
                Self::remote_leader(link, &request, &r.topic, r.partition).await?
            {
                let hops = Hops::of(&request);
                let mut client = Self::remote_client(link, &internal, "Subscribe")?;
                let stream = client
                    .subscribe(link.forwarded(request.into_inner(), None, hops))
                    .await?
                    .into_inner();
                let ended = status::status(&crate::broker::BrokerError::ShuttingDown);
                let stream = UntilShutdown::new(stream, self.broker.clone(), ended)
                    .map(|m| m.map(SubscribeReply::Forwarded));
                return Ok(Response::new(Box::pin(stream)));
            }
        }
        let who = caller(&request);
        let r = request.into_inner();
        let mut sub = self.broker.subscribe(
            &r.topic,
            r.partition,
            convert::position(r.start),
            r.max_records,
            r.max_bytes,
        )?;
        let (tx, rx) = mpsc::channel(SUBSCRIBE_BUFFER);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = sub.next() => next,
                    _ = tx.closed() => break,
                };
                let size = next.as_ref().map_or(0, super::reply::size_hint);
                let msg = next
                    .map(SubscribeReply::Stored)
                    .map_err(|e| status::status(&e));
                let end = msg.is_err();
                if tx.send(msg).await.is_err() || end {
                    break;
                }
                // Over the fetch quota: the next batch waits.
                let throttle = who.throttle(QuotaKind::Fetch, size as f64);
                if !throttle.is_zero() {
                    tokio::time::sleep(throttle).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_offsets(
        &self,
        request: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        let _t = timed("ListOffsets");
        require(
            &request,
            Operation::Describe,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        let hops = Hops::of(&request);
        if let (Some(link), true) = (&self.link, hops.forwarded()) {
            link.catch_up(&request).await?;
        }
        let r = request.into_inner();
        let split = match &self.link {
            Some(link) => {
                routing::split_partitions(link, &r.topic, &r.partitions, hops)?.map(|s| (link, s))
            }
            None => None,
        };
        let Some((link, split)) = split else {
            let offsets = self
                .broker
                .list_offsets(&r.topic, &r.partitions, r.timestamp_ms)?;
            return Ok(Response::new(pb::ListOffsetsResponse {
                partitions: offsets.into_iter().map(convert::offsets_out).collect(),
            }));
        };
        let mut partitions = Vec::new();
        for (target, parts) in split {
            match target {
                None => {
                    let offsets = self.broker.list_offsets(&r.topic, &parts, r.timestamp_ms)?;
                    partitions.extend(offsets.into_iter().map(convert::offsets_out));
                }
                Some((_, internal)) => {
                    let mut client = Self::remote_client(link, &internal, "ListOffsets")?;
                    let reply = client
                        .list_offsets(link.forwarded(
                            pb::ListOffsetsRequest {
                                topic: r.topic.clone(),
                                partitions: parts,
                                timestamp_ms: r.timestamp_ms,
                            },
                            None,
                            hops,
                        ))
                        .await?;
                    partitions.extend(reply.into_inner().partitions);
                }
            }
        }
        partitions.sort_by_key(|p| p.partition);
        Ok(Response::new(pb::ListOffsetsResponse { partitions }))
    }
}
