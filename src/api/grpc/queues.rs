//! `sluice.v1.Queues`: work queues (share groups).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::auth::{caller, require, Require};
use crate::security::{Operation, ResourceType};
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{transport::Channel, Request, Response, Status, Streaming};

use super::cluster::{ClusterLink, UntilShutdown};
use super::pb::{self, queues_client::QueuesClient, queues_server::Queues as QueuesApi};
use super::MAX_MESSAGE_BYTES;
use super::{convert, timed};
use crate::coordinator::queues::{
    AckOutcome, AckRequest, Queues, SettingsUpdate, MAX_PULL_WAIT_MS, SHARE_STATE_TOPIC,
};
use crate::coordinator::share::{AckKind, AckRefusal, Delivery};
use crate::coordinator::{CoordinatorError, ResetTo};

/// Most deliveries in one Pull response.
const MAX_PULL_RECORDS: i32 = 10_000;
/// Most deliveries in one stream message.
const STREAM_BATCH: u32 = 500;
/// Record bytes in one Pull response or stream message, about (always at
/// least one record): far below the encode limit, whatever the records'
/// sizes.
pub const MAX_DELIVERY_BYTES: usize = 4 * 1024 * 1024;

/// Serves `sluice.v1.Queues`.
#[derive(Debug, Clone)]
pub struct QueuesService {
    queues: Arc<Queues>,
    /// How long a `Consume` stream may take to send its `open` request.
    open_timeout: Duration,
    /// In a cluster: queues other brokers coordinate are forwarded there.
    link: Option<ClusterLink>,
}

impl QueuesService {
    /// A service over `queues`; `open_timeout` bounds the wait for a
    /// `Consume` stream's first message. In a cluster, requests for queues
    /// another broker coordinates (the leader of the queue's state
    /// partition) are forwarded there.
    pub fn new(queues: Arc<Queues>, open_timeout: Duration, link: Option<ClusterLink>) -> Self {
        Self {
            queues,
            open_timeout,
            link,
        }
    }

    /// A client of the broker coordinating `group`, or `None` for this one.
    async fn coordinator_of<T>(
        &self,
        request: &Request<T>,
        group: &str,
        method: &'static str,
    ) -> Result<Option<(ClusterLink, QueuesClient<Channel>)>, Status> {
        let Some(link) = &self.link else {
            return Ok(None);
        };
        let partition = self.queues.shard_of(group);
        let channel = link
            .coordinator_channel(request, SHARE_STATE_TOPIC, partition)
            .await?;
        Ok(channel.map(|c| {
            ClusterLink::count_forward(method);
            (
                link.clone(),
                QueuesClient::new(c).max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
        }))
    }
}

/// What a call gets when the server shuts down under it.
fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down: reconnect to another broker or retry")
}

fn settings_in(s: Option<pb::QueueSettings>) -> Option<SettingsUpdate> {
    s.map(|s| SettingsUpdate {
        lock_timeout_ms: s.lock_timeout_ms,
        max_deliveries: s.max_deliveries,
        dead_letter_topic: s.dead_letter_topic,
        key_ordered: s.key_ordered,
        session_timeout_ms: s.session_timeout_ms,
        start_at_latest: s.start_at_latest,
    })
}

/// Settings as the API shows them.
fn settings_out(s: crate::coordinator::share::Settings) -> pb::QueueSettings {
    pb::QueueSettings {
        lock_timeout_ms: Some(s.lock_timeout_ms as i32),
        max_deliveries: Some(s.max_deliveries as i32),
        dead_letter_topic: Some(s.dead_letter_topic.unwrap_or_default()),
        key_ordered: Some(s.key_ordered),
        session_timeout_ms: Some(s.session_timeout_ms as i32),
        start_at_latest: Some(s.start_at_latest),
    }
}

/// The acks of a request: the valid ones to apply, and the refusals of
/// the others (one bad ack does not fail the batch).
fn acks_in(acks: Vec<pb::Ack>) -> (Vec<AckRequest>, Vec<(u64, AckRefusal)>) {
    let mut good = Vec::with_capacity(acks.len());
    let mut bad = Vec::new();
    for a in acks {
        let kind = match pb::AckType::try_from(a.r#type) {
            Ok(pb::AckType::Accept) => AckKind::Accept,
            Ok(pb::AckType::Release) => AckKind::Release {
                delay_ms: i64::from(a.delay_ms),
            },
            Ok(pb::AckType::Reject) => AckKind::Reject,
            Ok(pb::AckType::Extend) => AckKind::Extend,
            _ => {
                bad.push((
                    a.delivery_id,
                    AckRefusal::Invalid(format!(
                        "ack type {} of delivery {} is not one of 1 (ACCEPT), 2 (RELEASE), 3 (REJECT), 4 (EXTEND)",
                        a.r#type, a.delivery_id
                    )),
                ));
                continue;
            }
        };
        good.push(AckRequest {
            delivery_id: a.delivery_id,
            kind,
            reason: (!a.reason.is_empty()).then_some(a.reason),
        });
    }
    (good, bad)
}

/// Applies `acks` (and reports `refused` with them).
async fn apply_acks(
    queues: &Arc<Queues>,
    group: String,
    member: String,
    acks: Vec<AckRequest>,
    refused: Vec<(u64, AckRefusal)>,
) -> Result<AckOutcome, Status> {
    let mut out = if acks.is_empty() {
        AckOutcome::default()
    } else {
        blocking(queues, move |q| q.ack(&group, &member, acks)).await?
    };
    out.refused.extend(refused);
    Ok(out)
}

fn ack_result(o: AckOutcome) -> pb::AckResult {
    pb::AckResult {
        accepted: o.accepted,
        refused: o
            .refused
            .into_iter()
            .map(|(id, r)| {
                let (code, message) = match r {
                    AckRefusal::NotFound(m) => (tonic::Code::NotFound, m),
                    AckRefusal::Superseded(m) => (tonic::Code::FailedPrecondition, m),
                    AckRefusal::Invalid(m) => (tonic::Code::InvalidArgument, m),
                };
                pb::AckError {
                    delivery_id: id,
                    code: code as i32,
                    message,
                }
            })
            .collect(),
    }
}

fn delivery_out(d: Delivery) -> pb::Delivery {
    pb::Delivery {
        topic: d.topic.to_string(),
        partition: d.partition,
        record: Some(convert::record_out(d.record)),
        delivery_id: d.delivery_id,
        delivery_count: d.deliveries as i32,
        lock_deadline_ms: d.deadline,
    }
}

/// Runs blocking queue work (opening logs, reading) off the async workers.
async fn blocking<T: Send + 'static>(
    q: &Arc<Queues>,
    f: impl FnOnce(&Queues) -> Result<T, CoordinatorError> + Send + 'static,
) -> Result<T, Status> {
    let q = q.clone();
    tokio::task::spawn_blocking(move || f(&q))
        .await
        .map_err(|e| Status::internal(format!("queue task failed: {e}")))?
        .map_err(Status::from)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl QueuesApi for QueuesService {
    type ConsumeStream = BoxStream<pb::ConsumeResponse>;

    async fn consume(
        &self,
        request: Request<Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        // The request's headers, to route by once the body is taken.
        let mut probe = Request::new(());
        *probe.metadata_mut() = request.metadata().clone();
        let who = caller(&request);
        let mut inbound = request.into_inner();
        let first = tokio::select! {
            first = tokio::time::timeout(self.open_timeout, inbound.message()) => first,
            _ = self.queues.shutting_down() => return Err(shutting_down()),
        };
        let first = first
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no open request within consume_open_timeout_ms = {}",
                    self.open_timeout.as_millis()
                ))
            })??
            .ok_or_else(|| Status::invalid_argument("the stream ended before its open request"))?;
        let Some(pb::consume_request::Request::Open(open)) = first.request.clone() else {
            return Err(Status::invalid_argument(
                "the first Consume request must be `open` (group, topic, prefetch)",
            ));
        };
        who.require(Operation::Read, ResourceType::Queue, &open.group)?;
        who.require(Operation::Read, ResourceType::Topic, &open.topic)?;
        if let Some((link, mut c)) = self.coordinator_of(&probe, &open.group, "Consume").await? {
            // The whole stream goes to the coordinator: its open request,
            // then every later one as it comes.
            let rest = inbound.map_while(|r| r.ok());
            let outbound = tokio_stream::once(first).chain(rest);
            let replies = c
                .consume(link.relay(Request::new(outbound)))
                .await?
                .into_inner();
            let replies =
                UntilShutdown::new(replies, self.queues.broker().clone(), shutting_down());
            return Ok(Response::new(Box::pin(replies) as Self::ConsumeStream));
        }
        let (group, topic) = (open.group.clone(), open.topic.clone());
        let member = blocking(&self.queues, move |q| {
            q.join(
                &open.group,
                &open.topic,
                &open.member_id,
                open.prefetch,
                settings_in(open.settings),
                true,
            )
        })
        .await?;
        let (tx, rx) = mpsc::channel::<Result<pb::ConsumeResponse, Status>>(4);
        let queues = self.queues.clone();
        let _ = tx
            .send(Ok(pb::ConsumeResponse {
                member_id: member.to_string(),
                ..Default::default()
            }))
            .await;
        tokio::spawn(async move {
            let end = serve_stream(&queues, &group, &topic, &member, &mut inbound, &tx).await;
            if let Err(s) = end {
                let _ = tx.send(Err(s)).await;
            }
            // The worker is gone (stream closed, connection lost, process
            // killed): what it holds goes back to the queue at once.
            let q = queues.clone();
            let _ = tokio::task::spawn_blocking(move || q.leave(&group, &member)).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pull(
        &self,
        request: Request<pb::PullRequest>,
    ) -> Result<Response<pb::PullResponse>, Status> {
        let _t = timed("QueuePull");
        let who = caller(&request);
        who.require(
            Operation::Read,
            ResourceType::Queue,
            &request.get_ref().group,
        )?;
        who.require(
            Operation::Read,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        if let Some((link, mut c)) = self
            .coordinator_of(&request, &request.get_ref().group, "Pull")
            .await?
        {
            return c.pull(link.relay(request)).await;
        }
        let budget = super::wait_budget(&request);
        let r = request.into_inner();
        if !(1..=MAX_PULL_RECORDS).contains(&r.max_records) {
            return Err(Status::invalid_argument(format!(
                "max_records {} is out of range [1, {MAX_PULL_RECORDS}]",
                r.max_records
            )));
        }
        if !(0..=MAX_PULL_WAIT_MS).contains(&r.max_wait_ms) {
            return Err(Status::invalid_argument(format!(
                "max_wait_ms {} is out of range [0, {MAX_PULL_WAIT_MS}]",
                r.max_wait_ms
            )));
        }
        let (acks, refused) = acks_in(r.acks);
        let prefetch = if r.prefetch == 0 {
            r.max_records
        } else {
            r.prefetch
        };
        let (group, topic, member_id, settings) = (r.group, r.topic, r.member_id, r.settings);
        let g = group.clone();
        let t = topic.clone();
        let member = blocking(&self.queues, move |q| {
            q.join(&g, &t, &member_id, prefetch, settings_in(settings), false)
        })
        .await?;
        let ack_result = if acks.is_empty() && refused.is_empty() {
            None
        } else {
            let (g, m) = (group.clone(), member.to_string());
            Some(ack_result(
                apply_acks(&self.queues, g, m, acks, refused).await?,
            ))
        };
        let mut wait = Duration::from_millis(r.max_wait_ms as u64);
        if let Some(b) = budget {
            wait = wait.min(b);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let handle = self.queues.topic_handle(&topic);
        let waker = self.queues.waker(&group);
        let deliveries = loop {
            // Registered before the attempt: a release or an append in
            // between wakes the wait below.
            let woken = waker.notified();
            let appended = handle.as_ref().map(|t| t.appended());
            tokio::pin!(woken);
            woken.as_mut().enable();
            let mut appended = std::pin::pin!(appended);
            if let Some(a) = appended.as_mut().as_pin_mut() {
                a.enable();
            }
            let (g, m) = (group.clone(), member.clone());
            let max = r.max_records as u32;
            let got = blocking(&self.queues, move |q| {
                q.acquire(&g, &m, max, MAX_DELIVERY_BYTES)
            })
            .await?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                break got;
            }
            tokio::select! {
                _ = woken => {}
                _ = async {
                    match appended.as_mut().as_pin_mut() {
                        Some(a) => a.await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = tokio::time::sleep(deadline - now) => {}
                _ = self.queues.shutting_down() => return Err(shutting_down()),
            }
        };
        Ok(Response::new(pb::PullResponse {
            member_id: member.to_string(),
            deliveries: deliveries.into_iter().map(delivery_out).collect(),
            ack_result,
        }))
    }

    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        let _t = timed("QueueAcknowledge");
        require(
            &request,
            Operation::Read,
            ResourceType::Queue,
            &request.get_ref().group,
        )?;
        if let Some((link, mut c)) = self
            .coordinator_of(&request, &request.get_ref().group, "Acknowledge")
            .await?
        {
            return c.acknowledge(link.relay(request)).await;
        }
        let r = request.into_inner();
        let (acks, refused) = acks_in(r.acks);
        let out = apply_acks(&self.queues, r.group, r.member_id, acks, refused).await?;
        Ok(Response::new(pb::AcknowledgeResponse {
            ack_result: Some(ack_result(out)),
        }))
    }

    async fn describe_queue(
        &self,
        request: Request<pb::DescribeQueueRequest>,
    ) -> Result<Response<pb::DescribeQueueResponse>, Status> {
        require(
            &request,
            Operation::Describe,
            ResourceType::Queue,
            &request.get_ref().group,
        )?;
        if let Some((link, mut c)) = self
            .coordinator_of(&request, &request.get_ref().group, "DescribeQueue")
            .await?
        {
            return c.describe_queue(link.relay(request)).await;
        }
        let group = request.into_inner().group;
        let g = group.clone();
        let d = blocking(&self.queues, move |q| q.describe(&g)).await?;
        Ok(Response::new(pb::DescribeQueueResponse {
            group,
            settings: Some(settings_out(d.settings)),
            partitions: d
                .partitions
                .into_iter()
                .map(|p| pb::QueuePartition {
                    topic: p.topic,
                    partition: p.partition,
                    start_offset: p.start,
                    high_watermark: p.high_watermark,
                    in_flight: p.in_flight,
                    available: p.available,
                    accepted: p.accepted,
                    rejected: p.rejected,
                    dead_lettered: p.dead_lettered,
                })
                .collect(),
            members: d
                .members
                .into_iter()
                .map(|m| pb::QueueMember {
                    member_id: m.member_id,
                    topic: m.topic,
                    prefetch: m.prefetch as i32,
                    held: m.held as i32,
                    streaming: m.streaming,
                })
                .collect(),
        }))
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let who = caller(&request);
        let queues = blocking(&self.queues, |q| Ok(q.list())).await?;
        Ok(Response::new(pb::ListQueuesResponse {
            queues: queues
                .into_iter()
                .filter(|l| who.allows(Operation::Describe, ResourceType::Queue, &l.group))
                .map(|l| pb::QueueListing {
                    group: l.group,
                    topics: l.topics,
                    members: l.members as i32,
                    in_flight: l.in_flight,
                    available: l.available,
                    dead_lettered: l.dead_lettered,
                    oldest_unacked_age_ms: l.oldest_unacked_age_ms,
                })
                .collect(),
        }))
    }

    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        require(
            &request,
            Operation::Delete,
            ResourceType::Queue,
            &request.get_ref().group,
        )?;
        if let Some((link, mut c)) = self
            .coordinator_of(&request, &request.get_ref().group, "DeleteQueue")
            .await?
        {
            return c.delete_queue(link.relay(request)).await;
        }
        let group = request.into_inner().group;
        blocking(&self.queues, move |q| q.delete(&group)).await?;
        Ok(Response::new(pb::DeleteQueueResponse {}))
    }

    async fn reset_queue(
        &self,
        request: Request<pb::ResetQueueRequest>,
    ) -> Result<Response<pb::ResetQueueResponse>, Status> {
        require(
            &request,
            Operation::Alter,
            ResourceType::Queue,
            &request.get_ref().group,
        )?;
        if let Some((link, mut c)) = self
            .coordinator_of(&request, &request.get_ref().group, "ResetQueue")
            .await?
        {
            return c.reset_queue(link.relay(request)).await;
        }
        use pb::reset_queue_request::To;
        let r = request.into_inner();
        let to = match r.to {
            Some(To::Earliest(())) => ResetTo::Earliest,
            Some(To::Latest(())) => ResetTo::Latest,
            Some(To::Offset(o)) if o >= 0 => ResetTo::Offset(o),
            Some(To::Offset(o)) => {
                return Err(Status::invalid_argument(format!(
                    "offset {o} must not be negative"
                )))
            }
            Some(To::TimestampMs(t)) => ResetTo::Timestamp(t),
            None => {
                return Err(Status::invalid_argument(
                    "`to` is required: earliest, latest, offset or timestamp_ms",
                ))
            }
        };
        let resets = blocking(&self.queues, move |q| {
            q.reset(&r.group, &r.topic, &r.partitions, to, r.dry_run)
        })
        .await?;
        Ok(Response::new(pb::ResetQueueResponse {
            partitions: resets
                .into_iter()
                .map(|x| pb::QueueReset {
                    topic: x.topic,
                    partition: x.partition,
                    previous_offset: x.previous.unwrap_or(-1),
                    offset: x.offset,
                })
                .collect(),
        }))
    }

    async fn alter_queue(
        &self,
        request: Request<pb::AlterQueueRequest>,
    ) -> Result<Response<pb::AlterQueueResponse>, Status> {
        require(
            &request,
            Operation::AlterConfigs,
            ResourceType::Queue,
            &request.get_ref().group,
        )?;
        if let Some((link, mut c)) = self
            .coordinator_of(&request, &request.get_ref().group, "AlterQueue")
            .await?
        {
            return c.alter_queue(link.relay(request)).await;
        }
        let r = request.into_inner();
        let Some(update) = settings_in(r.settings) else {
            return Err(Status::invalid_argument("settings are required"));
        };
        let s = blocking(&self.queues, move |q| q.alter(&r.group, update)).await?;
        Ok(Response::new(pb::AlterQueueResponse {
            settings: Some(settings_out(s)),
        }))
    }
}

/// Delivers to one stream member and applies its acknowledgements until
/// the stream ends.
async fn serve_stream(
    queues: &Arc<Queues>,
    group: &str,
    topic: &str,
    member: &Arc<str>,
    inbound: &mut Streaming<pb::ConsumeRequest>,
    tx: &mpsc::Sender<Result<pb::ConsumeResponse, Status>>,
) -> Result<(), Status> {
    let topic_handle = queues.topic_handle(topic);
    let waker = queues.waker(group);
    loop {
        // Registered before the attempt, so a release or an append in
        // between is not missed.
        let woken = waker.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let appended = topic_handle.as_ref().map(|t| t.appended());
        let mut appended = std::pin::pin!(appended);
        if let Some(a) = appended.as_mut().as_pin_mut() {
            a.enable();
        }
        let (g, m) = (group.to_string(), member.clone());
        let (got, more) = blocking(queues, move |q| {
            q.acquire_more(&g, &m, STREAM_BATCH, MAX_DELIVERY_BYTES)
        })
        .await?;
        if !got.is_empty() {
            let msg = pb::ConsumeResponse {
                deliveries: got.into_iter().map(delivery_out).collect(),
                ..Default::default()
            };
            if tx.send(Ok(msg)).await.is_err() {
                return Ok(());
            }
            // Ask again at once only if more could come now (an empty
            // attempt never loops, so a failing read cannot spin).
            if more {
                continue;
            }
        }
        // Nothing more to deliver now (or prefetch used up): wait for an
        // acknowledgement, a release, or new records (registered before
        // the attempt, so none since is missed).
        tokio::select! {
            msg = inbound.next() => {
                if !handle(queues, group, member, msg, tx).await? {
                    return Ok(());
                }
            }
            _ = &mut woken => {}
            _ = async {
                match appended.as_mut().as_pin_mut() {
                    Some(a) => a.await,
                    None => std::future::pending().await,
                }
            } => {}
            // Expired locks and delayed releases wake the group (the
            // expiry task); this only bounds a wait nothing else ends.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = tx.closed() => return Ok(()),
            _ = queues.shutting_down() => return Err(shutting_down()),
        }
    }
}

/// Applies one inbound message; false when the stream has ended.
async fn handle(
    queues: &Arc<Queues>,
    group: &str,
    member: &Arc<str>,
    msg: Option<Result<pb::ConsumeRequest, Status>>,
    tx: &mpsc::Sender<Result<pb::ConsumeResponse, Status>>,
) -> Result<bool, Status> {
    let Some(Ok(req)) = msg else {
        return Ok(false);
    };
    let _t = timed("QueueConsumeAck");
    let (acks, refused) = match req.request {
        Some(pb::consume_request::Request::Acks(a)) => acks_in(a.acks),
        Some(pb::consume_request::Request::Open(_)) => {
            return Err(Status::invalid_argument(
                "a Consume stream is opened once: later requests carry acks",
            ))
        }
        None => return Ok(true),
    };
    let out = apply_acks(queues, group.to_string(), member.to_string(), acks, refused).await?;
    let msg = pb::ConsumeResponse {
        ack_result: Some(ack_result(out)),
        ..Default::default()
    };
    Ok(tx.send(Ok(msg)).await.is_ok())
}
