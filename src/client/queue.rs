//! Work-queue workers: [`Worker`] holds one `Consume` stream. Deliveries
//! arrive up to the prefetch; acknowledgements go back on the same stream
//! and are confirmed in order.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice::client::ClientError> {
//! use sluice::client::{pb, Client, QueueConfig};
//! let client = Client::connect("http://127.0.0.1:9400").await?;
//! let mut worker = client.worker(QueueConfig::new("jobs", "tasks")).await?;
//! while let Some(d) = worker.next().await? {
//!     // ... do the work, then:
//!     worker.ack(vec![QueueConfig::accept(d.delivery_id)]).await?;
//! }
//! # Ok(()) }
//! ```

use std::collections::VecDeque;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{pb, Client, ClientError};

/// Settings of a [`Worker`].
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Share group.
    pub group: String,
    /// Topic consumed as a queue.
    pub topic: String,
    /// Unacknowledged deliveries held at most.
    pub prefetch: i32,
    /// Group settings to apply (unset fields keep the group's values).
    pub settings: Option<pb::QueueSettings>,
    /// Empty: the broker makes one up.
    pub member_id: String,
}

impl QueueConfig {
    /// Prefetch 100, group settings unchanged.
    pub fn new(group: &str, topic: &str) -> Self {
        Self {
            group: group.into(),
            topic: topic.into(),
            prefetch: 100,
            settings: None,
            member_id: String::new(),
        }
    }

    /// An ACCEPT of `delivery_id`.
    pub fn accept(delivery_id: u64) -> pb::Ack {
        Self::ack(delivery_id, pb::AckType::Accept)
    }

    /// An acknowledgement of any type.
    pub fn ack(delivery_id: u64, t: pb::AckType) -> pb::Ack {
        pb::Ack {
            delivery_id,
            r#type: t as i32,
            ..Default::default()
        }
    }
}

/// One worker: a `Consume` stream.
pub struct Worker {
    tx: mpsc::Sender<pb::ConsumeRequest>,
    inbound: Streaming<pb::ConsumeResponse>,
    member_id: String,
    deliveries: VecDeque<pb::Delivery>,
    results: VecDeque<pb::AckResult>,
    unconfirmed: usize,
}

impl Worker {
    pub(crate) async fn open(client: &Client, config: QueueConfig) -> Result<Self, ClientError> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::ConsumeRequest {
            request: Some(pb::consume_request::Request::Open(pb::OpenQueue {
                group: config.group,
                topic: config.topic,
                member_id: config.member_id,
                prefetch: config.prefetch,
                settings: config.settings,
            })),
        })
        .await
        .map_err(|_| ClientError::Closed("consume stream".into()))?;
        let mut inbound = client
            .queues()
            .consume(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| ClientError::Closed("the broker ended the consume stream".into()))?;
        Ok(Self {
            tx,
            inbound,
            member_id: first.member_id,
            deliveries: first.deliveries.into(),
            results: VecDeque::new(),
            unconfirmed: 0,
        })
    }

    /// This worker's member id.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    async fn receive(&mut self) -> Result<bool, ClientError> {
        match self.inbound.message().await? {
            Some(m) => {
                self.deliveries.extend(m.deliveries);
                if let Some(r) = m.ack_result {
                    self.unconfirmed = self.unconfirmed.saturating_sub(1);
                    self.results.push_back(r);
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The next delivery, waiting for one; `None` when the broker ends the
    /// stream.
    pub async fn next(&mut self) -> Result<Option<pb::Delivery>, ClientError> {
        loop {
            if let Some(d) = self.deliveries.pop_front() {
                return Ok(Some(d));
            }
            if !self.receive().await? {
                return Ok(None);
            }
        }
    }

    /// Deliveries already received, without waiting.
    pub fn ready(&mut self) -> Vec<pb::Delivery> {
        self.deliveries.drain(..).collect()
    }

    /// Sends acknowledgements without waiting for their confirmation
    /// (collect it with [`Worker::take_results`] or [`Worker::confirm`]).
    pub async fn ack(&mut self, acks: Vec<pb::Ack>) -> Result<(), ClientError> {
        if acks.is_empty() {
            return Ok(());
        }
        self.tx
            .send(pb::ConsumeRequest {
                request: Some(pb::consume_request::Request::Acks(pb::AckBatch { acks })),
            })
            .await
            .map_err(|_| ClientError::Closed("the consume stream ended".into()))?;
        self.unconfirmed += 1;
        Ok(())
    }

    /// Sends acknowledgements and waits for their confirmation (deliveries
    /// that arrive meanwhile are kept for [`Worker::next`]).
    pub async fn ack_confirmed(
        &mut self,
        acks: Vec<pb::Ack>,
    ) -> Result<pb::AckResult, ClientError> {
        self.confirm().await?;
        self.results.clear();
        self.ack(acks).await?;
        self.confirm().await?;
        Ok(self.results.pop_back().unwrap_or_default())
    }

    /// Waits until every acknowledgement sent so far is confirmed.
    pub async fn confirm(&mut self) -> Result<(), ClientError> {
        while self.unconfirmed > 0 {
            if !self.receive().await? {
                return Err(ClientError::Closed("the consume stream ended".into()));
            }
        }
        Ok(())
    }

    /// Confirmations received so far, oldest first.
    pub fn take_results(&mut self) -> Vec<pb::AckResult> {
        self.results.drain(..).collect()
    }
}
