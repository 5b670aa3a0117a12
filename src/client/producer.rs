//! Producers: [`Pipeline`] sends whole requests over one `ProduceStream`
//! without waiting for replies; [`Producer`] batches single records (by
//! size and linger time) into requests on a pipeline.
//!
//! By default a [`Producer`] is idempotent: it gets a producer id from the
//! broker, partitions records itself (Kafka's murmur2 for keyed records,
//! one partition per batch for keyless ones), numbers each partition's
//! records, and after a lost connection, a broker restart or an UNAVAILABLE
//! reply resends every unconfirmed request in order with the same numbers.
//! The broker appends each request once, so every record lands exactly once
//! as long as retries succeed within `delivery_timeout`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::Conn;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

use super::pb::{self, broker_client::BrokerClient};
use super::{Client, ClientError};

/// The reply to one pipelined request.
pub type Reply = oneshot::Receiver<Result<pb::ProduceResponse, ClientError>>;

type Pending = HashMap<
    u64,
    (
        oneshot::Sender<Result<pb::ProduceResponse, ClientError>>,
        OwnedSemaphorePermit,
    ),
>;

/// One `ProduceStream`: requests go out in order without waiting; replies
/// are matched back by sequence number.
pub struct Pipeline {
    tx: mpsc::Sender<pb::ProduceRequest>,
    /// Unanswered requests. Shared by the sender (inserts) and the task
    /// reading replies (removes); held only to insert or remove.
    pending: Arc<Mutex<Option<Pending>>>,
    permits: Arc<Semaphore>,
    next_sequence: u64,
}

impl Pipeline {
    pub(crate) async fn open(
        mut broker: BrokerClient<Conn>,
        max_in_flight: usize,
    ) -> Result<Self, ClientError> {
        let max_in_flight = max_in_flight.max(1);
        let (tx, rx) = mpsc::channel(max_in_flight);
        let mut replies = broker
            .produce_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let pending: Arc<Mutex<Option<Pending>>> = Arc::new(Mutex::new(Some(HashMap::new())));
        let p = pending.clone();
        tokio::spawn(async move {
            let end = loop {
                match replies.message().await {
                    Ok(Some(r)) => {
                        let waiter = p.lock().as_mut().and_then(|m| m.remove(&r.sequence));
                        if let Some((w, _permit)) = waiter {
                            let _ = w.send(Ok(r));
                        }
                    }
                    Ok(None) => break "the broker ended the stream".to_string(),
                    Err(s) => break format!("{}: {}", s.code(), s.message()),
                }
            };
            // Fail everything still waiting, and refuse later requests.
            if let Some(m) = p.lock().take() {
                for (_, (w, _)) in m {
                    let _ = w.send(Err(ClientError::Closed(end.clone())));
                }
            }
        });
        Ok(Self {
            tx,
            pending,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            next_sequence: 0,
        })
    }

    /// Sends a request, waiting only if `max_in_flight` requests are
    /// unanswered. The returned receiver yields the reply (requests with
    /// acks=NONE get none: their receiver yields an empty response at once).
    pub async fn send(&mut self, mut req: pb::ProduceRequest) -> Result<Reply, ClientError> {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        req.sequence = sequence;
        let (w, r) = oneshot::channel();
        if req.acks == pb::Acks::None as i32 {
            self.tx
                .send(req)
                .await
                .map_err(|_| ClientError::Closed("stream ended".into()))?;
            let _ = w.send(Ok(pb::ProduceResponse {
                sequence,
                ..Default::default()
            }));
            return Ok(r);
        }
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed("pipeline closed".into()))?;
        match self.pending.lock().as_mut() {
            Some(m) => {
                m.insert(sequence, (w, permit));
            }
            None => return Err(ClientError::Closed("the produce stream ended".into())),
        }
        if self.tx.send(req).await.is_err() {
            self.pending.lock().as_mut().map(|m| m.remove(&sequence));
            return Err(ClientError::Closed("the produce stream ended".into()));
        }
        Ok(r)
    }
}

/// Settings of a [`Producer`].
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Durability asked for.
    pub acks: pb::Acks,
    /// How long a record may wait for its batch to fill.
    pub linger: Duration,
    /// Send a batch once its records reach about this many bytes.
    pub max_batch_bytes: usize,
    /// Unanswered requests at most.
    pub max_in_flight: usize,
    /// Explicit partition for every record (`None`: by key / round-robin).
    pub partition: Option<i32>,
    /// Idempotent producing with safe retries (see the module docs).
    /// Ignored with acks=NONE, which cannot be retried safely.
    pub idempotent: bool,
    /// How long an idempotent producer keeps retrying a request before
    /// counting its records as failed.
    pub delivery_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: pb::Acks::Leader,
            linger: Duration::from_millis(5),
            max_batch_bytes: 256 * 1024,
            max_in_flight: 8,
            partition: None,
            idempotent: true,
            delivery_timeout: Duration::from_secs(120),
        }
    }
}

/// Totals of a closed [`Producer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Records the broker acknowledged (with acks=NONE: records sent).
    pub acked: u64,
    /// Records the broker refused.
    pub failed: u64,
    /// Requests sent.
    pub requests: u64,
    /// The first refusal's message.
    pub first_error: Option<String>,
    /// Requests sent again after a connection loss or a transient error.
    pub retries: u64,
    /// Retried requests the broker had already appended (answered with
    /// their original offsets, not written again).
    pub duplicates: u64,
}

/// Batches single records into pipelined requests. Records to one
/// partition keep their order.
pub struct Producer {
    tx: mpsc::Sender<pb::ProduceRecord>,
    task: tokio::task::JoinHandle<Result<ProducerStats, ClientError>>,
}

impl Producer {
    pub(crate) fn start(client: Client, topic: String, config: ProducerConfig) -> Self {
        let (tx, rx) = mpsc::channel(8192);
        let task = if config.idempotent && config.acks != pb::Acks::None {
            tokio::spawn(super::idempotent::run(client, topic, config, rx))
        } else {
            tokio::spawn(run_producer(client, topic, config, rx))
        };
        Self { tx, task }
    }

    /// Queues a record; waits only when the producer is backed up.
    pub async fn send(&self, record: pb::ProduceRecord) -> Result<(), ClientError> {
        self.tx
            .send(record)
            .await
            .map_err(|_| ClientError::Closed("producer stopped".into()))
    }

    /// Sends what is queued, waits for every reply and returns the totals.
    pub async fn close(self) -> Result<ProducerStats, ClientError> {
        drop(self.tx);
        self.task
            .await
            .map_err(|e| ClientError::Closed(format!("producer task failed: {e}")))?
    }
}

async fn run_producer(
    client: Client,
    topic: String,
    config: ProducerConfig,
    mut rx: mpsc::Receiver<pb::ProduceRecord>,
) -> Result<ProducerStats, ClientError> {
    let mut pipeline = client.pipeline(config.max_in_flight).await?;
    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<(usize, Reply)>();
    let acks_none = config.acks == pb::Acks::None;
    let tally = tokio::spawn(async move {
        let mut stats = ProducerStats::default();
        while let Some((n, reply)) = reply_rx.recv().await {
            stats.requests += 1;
            let r = reply
                .await
                .map_err(|_| ClientError::Closed("reply lost".into()))??;
            if acks_none {
                stats.acked += n as u64;
                continue;
            }
            stats.acked += r
                .partitions
                .iter()
                .map(|p| p.record_count as u64)
                .sum::<u64>();
            stats.failed += r
                .record_errors
                .iter()
                .map(|e| e.count.max(1) as u64)
                .sum::<u64>();
            if stats.first_error.is_none() {
                stats.first_error = r.record_errors.first().map(|e| e.message.clone());
            }
        }
        Ok::<_, ClientError>(stats)
    });

    let mut batch: Vec<pb::ProduceRecord> = Vec::new();
    let mut bytes = 0usize;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let record = match deadline {
            Some(d) => tokio::select! {
                r = rx.recv() => r,
                _ = tokio::time::sleep_until(d) => {
                    flush(&mut pipeline, &topic, &config, &mut batch, &reply_tx).await?;
                    bytes = 0;
                    deadline = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(record) = record else { break };
        bytes += 16
            + record.key.as_ref().map_or(0, |k| k.len())
            + record.value.as_ref().map_or(0, |v| v.len());
        batch.push(record);
        if deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + config.linger);
        }
        if bytes >= config.max_batch_bytes {
            flush(&mut pipeline, &topic, &config, &mut batch, &reply_tx).await?;
            bytes = 0;
            deadline = None;
        }
    }
    flush(&mut pipeline, &topic, &config, &mut batch, &reply_tx).await?;
    drop(reply_tx);
    tally
        .await
        .map_err(|e| ClientError::Closed(format!("producer task failed: {e}")))?
}

async fn flush(
    pipeline: &mut Pipeline,
    topic: &str,
    config: &ProducerConfig,
    batch: &mut Vec<pb::ProduceRecord>,
    replies: &mpsc::UnboundedSender<(usize, Reply)>,
) -> Result<(), ClientError> {
    if batch.is_empty() {
        return Ok(());
    }
    let records = std::mem::take(batch);
    let n = records.len();
    let reply = pipeline
        .send(pb::ProduceRequest {
            sequence: 0,
            topic: topic.to_string(),
            partition: config.partition,
            records,
            acks: config.acks as i32,
            ..Default::default()
        })
        .await?;
    let _ = replies.send((n, reply));
    Ok(())
}
