//! The idempotent [`super::Producer`]: client-side partitioning, per
//! partition sequence numbers, and in-order resends after failures.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::producer::{Pipeline, ProducerConfig, ProducerStats, Reply};
use super::{pb, Client, ClientError};
use crate::broker::partition_for_key;

/// A sent request kept until the broker confirms it, to resend it as is.
struct Sent {
    req: pb::ProduceRequest,
    records: usize,
    reply: Option<Reply>,
}

/// Records waiting for their partition's batch to fill.
#[derive(Default)]
struct Buffer {
    records: Vec<pb::ProduceRecord>,
    bytes: usize,
    deadline: Option<Instant>,
}

/// How a reply ends a request.
enum Outcome {
    Done {
        duplicate: bool,
    },
    /// Worth resending: the connection broke, the broker was unavailable,
    /// or an earlier request's loss left a gap.
    Retry(String),
    /// A gap: the broker expected an earlier sequence. Expected after an
    /// earlier request failed (then resent in order); otherwise records
    /// were lost and this is a failure.
    OutOfOrder(String),
    Failed(String),
}

fn outcome(reply: Result<pb::ProduceResponse, ClientError>) -> Outcome {
    let r = match reply {
        Ok(r) => r,
        Err(ClientError::Status(s)) if !retriable(s.code()) => {
            return Outcome::Failed(format!("{}: {}", s.code(), s.message()))
        }
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let Some(e) = r.record_errors.first() else {
        return Outcome::Done {
            duplicate: r.partitions.iter().any(|p| p.duplicate),
        };
    };
    let code = tonic::Code::from_i32(e.code);
    match code {
        // A full disk on the broker passes when an operator frees space.
        tonic::Code::ResourceExhausted if e.message.starts_with("no space left") => {
            Outcome::Retry(e.message.clone())
        }
        // Appended before, longer ago than the broker remembers offsets.
        tonic::Code::AlreadyExists => Outcome::Done { duplicate: true },
        tonic::Code::FailedPrecondition => Outcome::OutOfOrder(e.message.clone()),
        c if retriable(c) => Outcome::Retry(e.message.clone()),
        _ => Outcome::Failed(e.message.clone()),
    }
}

fn retriable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Internal
    )
}

struct State {
    client: Client,
    config: ProducerConfig,
    topic: String,
    producer_id: i64,
    epoch: i32,
    partitions: i32,
    /// One pipeline per partition leader (`None`: the broker the client
    /// was given), opened on first use.
    pipelines: HashMap<Option<String>, Pipeline>,
    next_seq: HashMap<i32, i32>,
    in_flight: VecDeque<Sent>,
    stats: ProducerStats,
    sticky: i32,
    /// A request failed for good: its partition's sequence has a gap that
    /// no later request can fill. Before sending more, the producer bumps
    /// its epoch and numbers again from 0 (Kafka's KIP-360).
    broken: bool,
}

pub(crate) async fn run(
    client: Client,
    topic: String,
    config: ProducerConfig,
    mut rx: mpsc::Receiver<pb::ProduceRecord>,
) -> Result<ProducerStats, ClientError> {
    let init = client
        .broker()
        .init_producer(pb::InitProducerRequest::default())
        .await?
        .into_inner();
    let partitions = client.partition_count(&topic).await?;
    let mut st = State {
        client,
        topic,
        producer_id: init.producer_id,
        epoch: init.producer_epoch,
        partitions,
        pipelines: HashMap::new(),
        next_seq: HashMap::new(),
        in_flight: VecDeque::new(),
        stats: ProducerStats::default(),
        sticky: 0,
        broken: false,
        config,
    };
    // Fails fast when no broker answers.
    st.pipeline_for(0).await?;
    let mut buffers: HashMap<i32, Buffer> = HashMap::new();
    let mut open = true;
    while open || !buffers.is_empty() {
        let deadline = buffers.values().filter_map(|b| b.deadline).min();
        tokio::select! {
            r = rx.recv(), if open => match r {
                Some(record) => {
                    let p = st.route(&record);
                    let b = buffers.entry(p).or_default();
                    b.bytes += 16
                        + record.key.as_ref().map_or(0, |k| k.len())
                        + record.value.as_ref().map_or(0, |v| v.len());
                    b.records.push(record);
                    b.deadline.get_or_insert_with(|| Instant::now() + st.config.linger);
                    if b.bytes >= st.config.max_batch_bytes {
                        if let Some(b) = buffers.remove(&p) {
                            st.send(p, b.records).await;
                        }
                    }
                }
                None => {
                    open = false;
                    for (p, b) in std::mem::take(&mut buffers) {
                        st.send(p, b.records).await;
                    }
                }
            },
            _ = sleep_until(deadline) => {
                let now = Instant::now();
                let due: Vec<i32> = buffers
                    .iter()
                    .filter(|(_, b)| b.deadline.is_some_and(|d| d <= now))
                    .map(|(p, _)| *p)
                    .collect();
                for p in due {
                    if let Some(b) = buffers.remove(&p) {
                        st.send(p, b.records).await;
                    }
                }
            }
        }
    }
    while !st.in_flight.is_empty() {
        st.settle_head().await;
    }
    if st.broken {
        st.recover().await;
    }
    Ok(st.stats)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl State {
    /// The pipeline to `partition`'s leader, opened if needed; returns the
    /// key it is kept under. A leader that cannot be reached is skipped
    /// (the bootstrap broker forwards) until the routes are refreshed.
    async fn pipeline_for(&mut self, partition: i32) -> Result<Option<String>, ClientError> {
        let (broker, key) = self.client.broker_for(&self.topic, partition).await;
        if !self.pipelines.contains_key(&key) {
            match Pipeline::open(broker, self.config.max_in_flight).await {
                Ok(p) => {
                    self.pipelines.insert(key.clone(), p);
                }
                Err(e) => {
                    if let Some(addr) = &key {
                        self.client.mark_unreachable(addr);
                    }
                    return Err(e);
                }
            }
        }
        Ok(key)
    }

    fn route(&mut self, r: &pb::ProduceRecord) -> i32 {
        if let Some(p) = r.partition.or(self.config.partition) {
            return p;
        }
        match &r.key {
            Some(k) => partition_for_key(k, self.partitions),
            None => self.sticky,
        }
    }

    /// Numbers and sends one partition's batch; waits for the oldest reply
    /// first when `max_in_flight` requests are unconfirmed.
    async fn send(&mut self, partition: i32, records: Vec<pb::ProduceRecord>) {
        if records.is_empty() {
            return;
        }
        if self.config.partition.is_none() {
            // Keyless records stick to a partition per batch.
            self.sticky = (self.sticky + 1) % self.partitions.max(1);
        }
        while self.in_flight.len() >= self.config.max_in_flight.max(1) {
            self.settle_head().await;
        }
        if self.broken {
            self.recover().await;
        }
        let seq = self.next_seq.entry(partition).or_insert(0);
        let base_sequence = *seq;
        *seq = crate::storage::producer_state::seq_add(*seq, records.len() as i64);
        let n = records.len();
        let req = pb::ProduceRequest {
            sequence: 0,
            topic: self.topic.clone(),
            partition: Some(partition),
            records,
            acks: self.config.acks as i32,
            producer_id: Some(self.producer_id),
            producer_epoch: self.epoch,
            base_sequence,
        };
        self.stats.requests += 1;
        let reply = match self.pipeline_for(partition).await {
            Ok(key) => {
                let sent = match self.pipelines.get_mut(&key) {
                    Some(p) => p.send(req.clone()).await.ok(),
                    None => None,
                };
                if sent.is_none() {
                    self.pipelines.remove(&key);
                }
                sent
            }
            Err(_) => None,
        };
        self.in_flight.push_back(Sent {
            req,
            records: n,
            reply,
        });
    }

    /// Waits for the oldest request's reply; on a transient failure
    /// resends it and every later one, in order, until they are confirmed
    /// or the delivery timeout passes.
    async fn settle_head(&mut self) {
        let Some(head) = self.in_flight.pop_front() else {
            return;
        };
        let first = self.wait(head.reply).await;
        let head = Sent {
            reply: None,
            ..head
        };
        match first {
            Outcome::Done { duplicate } => self.done(&head, duplicate),
            Outcome::Failed(m) | Outcome::OutOfOrder(m) => {
                self.failed(&head, m);
                // Requests behind it would be refused for the gap: bump
                // now and send them again, numbered afresh.
                self.recover().await;
            }
            Outcome::Retry(why) => {
                tracing::debug!(reason = %why, "produce failed transiently; resending unconfirmed requests in order");
                let mut resend = vec![head];
                // Later requests were sent behind the failed one: collect
                // their fate; any not appended is resent after it.
                while let Some(s) = self.in_flight.pop_front() {
                    let o = self.wait(s.reply).await;
                    let s = Sent { reply: None, ..s };
                    match o {
                        Outcome::Done { duplicate } => self.done(&s, duplicate),
                        Outcome::Failed(m) => self.failed(&s, m),
                        Outcome::Retry(_) | Outcome::OutOfOrder(_) => resend.push(s),
                    }
                }
                self.resend(resend, why).await;
            }
        }
    }

    async fn wait(&mut self, reply: Option<Reply>) -> Outcome {
        match reply {
            Some(r) => match r.await {
                Ok(reply) => outcome(reply),
                Err(_) => Outcome::Retry("reply lost".into()),
            },
            None => Outcome::Retry("the produce stream was down".into()),
        }
    }

    fn done(&mut self, s: &Sent, duplicate: bool) {
        self.stats.acked += s.records as u64;
        if duplicate {
            self.stats.duplicates += 1;
        }
    }

    fn failed(&mut self, s: &Sent, message: String) {
        self.stats.failed += s.records as u64;
        self.stats.first_error.get_or_insert(message);
        self.broken = true;
    }

    /// After a request failed for good: settles what is in flight, bumps
    /// the epoch, and sends again, numbered from 0 under the new epoch, the
    /// requests that were refused only because of the gap. (Requests whose
    /// fate is unknown are retried under the old numbering first: they may
    /// have been appended, and only the old numbering finds that out.)
    async fn recover(&mut self) {
        let mut unknown = Vec::new();
        let mut refused = Vec::new();
        while let Some(s) = self.in_flight.pop_front() {
            let o = self.wait(s.reply).await;
            let s = Sent { reply: None, ..s };
            match o {
                Outcome::Done { duplicate } => self.done(&s, duplicate),
                Outcome::Failed(m) => self.failed(&s, m),
                Outcome::OutOfOrder(_) => refused.push(s),
                Outcome::Retry(_) => unknown.push(s),
            }
        }
        if !unknown.is_empty() {
            self.resend(unknown, "resending before an epoch bump".into())
                .await;
        }
        let bumped = self
            .client
            .broker()
            .init_producer(pb::InitProducerRequest {
                producer_id: Some(self.producer_id),
                producer_epoch: self.epoch,
            })
            .await;
        let init = match bumped {
            Ok(r) => r.into_inner(),
            Err(e) => {
                // Another instance took the id over (or the broker is
                // gone): nothing more can be sent without a gap.
                let m = format!("could not bump the producer epoch: {}", e.message());
                for s in refused {
                    self.failed(&s, m.clone());
                }
                return;
            }
        };
        tracing::info!(
            producer_id = init.producer_id,
            epoch = init.producer_epoch,
            "a request failed for good; producer epoch bumped and sequences reset"
        );
        self.producer_id = init.producer_id;
        self.epoch = init.producer_epoch;
        self.next_seq.clear();
        self.broken = false;
        let mut renumbered = Vec::with_capacity(refused.len());
        for mut s in refused {
            let p = s.req.partition.unwrap_or(0);
            let seq = self.next_seq.entry(p).or_insert(0);
            s.req.producer_id = Some(self.producer_id);
            s.req.producer_epoch = self.epoch;
            s.req.base_sequence = *seq;
            *seq = crate::storage::producer_state::seq_add(*seq, s.records as i64);
            renumbered.push(s);
        }
        if !renumbered.is_empty() {
            self.resend(renumbered, "resending after an epoch bump".into())
                .await;
        }
    }

    /// Resends `requests` one at a time over a fresh stream, backing off
    /// between attempts.
    async fn resend(&mut self, requests: Vec<Sent>, mut why: String) {
        let deadline = Instant::now() + self.config.delivery_timeout;
        let mut backoff = Duration::from_millis(50);
        let mut queue: VecDeque<Sent> = requests.into();
        // A leader may have moved: look again before resending.
        self.client.refresh_routes(&self.topic).await;
        while let Some(s) = queue.front() {
            if Instant::now() >= deadline {
                let message = format!(
                    "gave up after {:?} of retries: {why}",
                    self.config.delivery_timeout
                );
                for s in std::mem::take(&mut queue) {
                    self.failed(&s, message.clone());
                }
                return;
            }
            let partition = s.req.partition.unwrap_or(0);
            let key = match self.pipeline_for(partition).await {
                Ok(k) => k,
                Err(e) => {
                    why = e.to_string();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let Some(mut pipeline) = self.pipelines.remove(&key) else {
                continue;
            };
            self.stats.retries += 1;
            let o = match pipeline.send(s.req.clone()).await {
                Ok(r) => self.wait(Some(r)).await,
                Err(e) => Outcome::Retry(e.to_string()),
            };
            match o {
                // Out of order: an earlier request of this partition has
                // not landed yet (sent on a stream that broke while this
                // one was resent). It may still land, so this one waits
                // and goes again, until the delivery timeout: a gap that
                // never fills fails it then.
                Outcome::Retry(w) | Outcome::OutOfOrder(w) => {
                    why = w;
                    self.client.refresh_routes(&self.topic).await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                o => {
                    if let Some(s) = queue.pop_front() {
                        match o {
                            Outcome::Done { duplicate } => self.done(&s, duplicate),
                            Outcome::Failed(m) => self.failed(&s, m),
                            Outcome::Retry(_) | Outcome::OutOfOrder(_) => {}
                        }
                    }
                    backoff = Duration::from_millis(50);
                    self.pipelines.insert(key, pipeline);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: tonic::Code, message: &str) -> Outcome {
        outcome(Ok(pb::ProduceResponse {
            record_errors: vec![pb::RecordError {
                index: 0,
                code: code as i32,
                message: message.into(),
                count: 3,
            }],
            ..Default::default()
        }))
    }

    #[test]
    fn a_full_disk_is_retried_and_an_oversized_record_is_not() {
        assert!(matches!(
            refused(
                tonic::Code::ResourceExhausted,
                "no space left on the server's disk: retry after an operator frees space"
            ),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            refused(
                tonic::Code::ResourceExhausted,
                "record of 5000 bytes (with batch header) exceeds the topic's max_message_bytes of 1024"
            ),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            refused(tonic::Code::FailedPrecondition, "gap"),
            Outcome::OutOfOrder(_)
        ));
    }
}
