//! `sluice.v1.Broker`: produce, fetch, subscribe, list offsets.

use std::{pin::Pin, sync::Arc};

use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::pb::{self, broker_server::Broker as BrokerApi};
use super::{convert, status, timed};
use crate::broker::{Acks, Broker, FetchRequest, ProduceResult, RecordFailure};

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
}

impl BrokerService {
    /// A service over `broker`; fetch replies share `replies`.
    pub fn new(broker: Arc<Broker>, replies: super::conn::ReplyBudget) -> Self {
        Self { broker, replies }
    }
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

#[tonic::async_trait]
impl BrokerApi for BrokerService {
    async fn produce(
        &self,
        request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let _t = timed("Produce");
        let r = request.into_inner();
        let sequence = r.sequence;
        let req = convert::produce_request(r)?;
        let acks = req.acks;
        let appended = self.broker.append(req)?;
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
        Ok(Response::new(convert::produce_response(sequence, result)))
    }

    async fn init_producer(
        &self,
        request: Request<pb::InitProducerRequest>,
    ) -> Result<Response<pb::InitProducerResponse>, Status> {
        let _t = timed("InitProducer");
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
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(PRODUCE_STREAM_BUFFER);
        let broker = self.broker.clone();
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
                let t = timed("ProduceStream");
                let sequence = r.sequence;
                let records = r.records.len();
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
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let _t = timed("Fetch");
        let max_wait_ms = super::capped_wait(&request, request.get_ref().max_wait_ms);
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
        let bytes: usize = result
            .records
            .iter()
            .map(|r| {
                32 + r.key.as_ref().map_or(0, |k| k.len())
                    + r.value.as_ref().map_or(0, |v| v.len())
                    + r.headers
                        .iter()
                        .map(|h| 8 + h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
                        .sum::<usize>()
            })
            .sum();
        let permit = self.replies.reserve(bytes).await;
        let mut response = Response::new(convert::fetch_response(result));
        if let Some(p) = permit {
            response.extensions_mut().insert(p);
        }
        Ok(response)
    }

    type SubscribeStream = BoxStream<pb::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
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
                let msg = next
                    .map(convert::subscribe_response)
                    .map_err(|e| status::status(&e));
                let end = msg.is_err();
                if tx.send(msg).await.is_err() || end {
                    break;
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
        let r = request.into_inner();
        let offsets = self
            .broker
            .list_offsets(&r.topic, &r.partitions, r.timestamp_ms)?;
        Ok(Response::new(pb::ListOffsetsResponse {
            partitions: offsets.into_iter().map(convert::offsets_out).collect(),
        }))
    }
}
