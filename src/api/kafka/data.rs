//! Metadata, Produce, Fetch, ListOffsets and InitProducerId.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    fetch_response::{FetchableTopicResponse, PartitionData},
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
    produce_response::{PartitionProduceResponse, TopicProduceResponse},
    BrokerId, FetchRequest, FetchResponse, InitProducerIdRequest, InitProducerIdResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, ProducerId, TopicName,
};
use kafka_protocol::ResponseError;
use tokio::time::Instant;

use super::{broker_error, text, Call, Endpoint, Kafka};
use crate::api::grpc::cluster::STANDALONE_NODE_ID;
use crate::broker::{
    is_internal_topic, Acks, BrokerError, Header, IdempotentBatch, NewRecord,
    ProduceRequest as Produce, MAX_WAIT_MS,
};
use crate::security::{Operation, ResourceType};
use crate::storage::batch::{framed_len, CONTROL_FLAG, TRANSACTIONAL_FLAG};
use crate::storage::BatchView;

/// The cluster id reported to Kafka clients of a single node.
const STANDALONE_CLUSTER_ID: &str = "sluice-standalone";

/// One partition's placement, as Metadata reports it.
struct Placement {
    leader: i32,
    epoch: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
}

/// A topic's name and, if it exists, its id and partitions' placement.
type TopicPlacement = (String, Option<(u64, Vec<Placement>)>);

fn id32(id: u64) -> i32 {
    i32::try_from(id).unwrap_or(i32::MAX)
}

impl Kafka {
    /// The live brokers' Kafka endpoints (brokers without a Kafka listener
    /// are left out).
    pub(crate) fn brokers(&self) -> Vec<Endpoint> {
        let Some(link) = self.link() else {
            return vec![self.me.clone()];
        };
        let image = link.cluster.image();
        image
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .filter_map(|b| Endpoint::parse(id32(b.id), b.kafka.as_deref()?))
            .collect()
    }

    /// The Kafka endpoint of broker `id`.
    pub(crate) fn endpoint_of(&self, id: u64) -> Option<Endpoint> {
        let Some(link) = self.link() else {
            return (id == STANDALONE_NODE_ID).then(|| self.me.clone());
        };
        let image = link.cluster.image();
        let b = image.brokers.get(&id)?;
        Endpoint::parse(id32(id), b.kafka.as_deref()?)
    }

    /// The cluster's id and its controller, for Metadata and
    /// DescribeCluster.
    pub(crate) fn cluster_identity(&self) -> (String, i32) {
        match self.link() {
            None => (STANDALONE_CLUSTER_ID.into(), self.me.id),
            Some(link) => (
                format!("sluice-{}", link.cluster.config().voters.len()),
                link.cluster.controller().map_or(-1, id32),
            ),
        }
    }

    /// The name of the topic whose Kafka topic id is `id`.
    pub(crate) fn topic_named_by(&self, id: uuid::Uuid) -> Option<String> {
        let (incarnation, _) = id.as_u64_pair();
        if incarnation == 0 {
            return None;
        }
        self.broker
            .list_topics()
            .into_iter()
            .map(|(n, _)| n)
            .find(|n| {
                self.broker
                    .topic(n)
                    .is_ok_and(|t| t.incarnation() == incarnation)
            })
    }

    /// Topics (name, id, partitions' placement), the named ones or every
    /// user topic.
    fn placements(&self, names: Option<&[String]>) -> Vec<TopicPlacement> {
        let wanted = |all: Vec<String>| -> Vec<String> {
            match names {
                Some(n) => n.to_vec(),
                None => all.into_iter().filter(|t| !is_internal_topic(t)).collect(),
            }
        };
        match self.link() {
            None => {
                let me = self.me.id;
                let all = self.broker.list_topics();
                let counts: BTreeMap<String, i32> = all.iter().cloned().collect();
                wanted(all.into_iter().map(|(n, _)| n).collect())
                    .into_iter()
                    .map(|name| {
                        let found = counts.get(&name).map(|&n| {
                            let id = self.broker.topic(&name).map_or(0, |t| t.incarnation());
                            let parts = (0..n)
                                .map(|_| Placement {
                                    leader: me,
                                    epoch: 0,
                                    replicas: vec![me],
                                    isr: vec![me],
                                })
                                .collect();
                            (id, parts)
                        });
                        (name, found)
                    })
                    .collect()
            }
            Some(link) => {
                let image = link.cluster.image();
                wanted(image.topics.keys().cloned().collect())
                    .into_iter()
                    .map(|name| {
                        let found = image.topics.get(&name).map(|t| {
                            let parts = t
                                .partitions
                                .iter()
                                .map(|a| Placement {
                                    leader: a.leader.map_or(-1, id32),
                                    epoch: a.leader_epoch,
                                    replicas: a.replicas.iter().copied().map(id32).collect(),
                                    isr: a.isr.iter().copied().map(id32).collect(),
                                })
                                .collect();
                            (t.id, parts)
                        });
                        (name, found)
                    })
                    .collect()
            }
        }
    }

    pub(crate) fn metadata(&self, call: &Call, r: MetadataRequest) -> MetadataResponse {
        // v0: an empty list means every topic; v1+: null does.
        // Topics asked for by id only (v10+, as KIP-848 consumers do)
        // are looked up by name.
        let names: Option<Vec<String>> = match r.topics {
            None => None,
            Some(t) if t.is_empty() && call.version == 0 => None,
            Some(t) => Some(
                t.into_iter()
                    .filter_map(|t| match t.name {
                        Some(n) => Some(n.0.to_string()),
                        None => self.topic_named_by(t.topic_id),
                    })
                    .collect(),
            ),
        };
        // Named topics the caller may not describe get an authorization
        // error (whether or not they exist); a listing of all shows only
        // those it may describe.
        let visible = |name: &str| {
            call.caller
                .allows(Operation::Describe, ResourceType::Topic, name)
        };
        let (denied, names): (Vec<String>, Option<Vec<String>>) = match names {
            None => (Vec::new(), None),
            Some(n) => {
                let (ok, denied): (Vec<String>, Vec<String>) =
                    n.into_iter().partition(|t| visible(t));
                (denied, Some(ok))
            }
        };
        let (cluster_id, controller) = self.cluster_identity();
        let brokers = self
            .brokers()
            .into_iter()
            .map(|b| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.id))
                    .with_host(text(b.host))
                    .with_port(b.port)
            })
            .collect();
        let listing_all = names.is_none();
        let mut topics: Vec<MetadataResponseTopic> = self
            .placements(names.as_deref())
            .into_iter()
            .filter(|(name, _)| !listing_all || visible(name))
            .map(|(name, found)| {
                let t = MetadataResponseTopic::default()
                    .with_name(Some(TopicName(text(name.clone()))))
                    .with_is_internal(is_internal_topic(&name));
                let Some((id, parts)) = found else {
                    return t.with_error_code(ResponseError::UnknownTopicOrPartition.code());
                };
                t.with_topic_id(uuid::Uuid::from_u64_pair(id, 0))
                    .with_partitions(
                        parts
                            .into_iter()
                            .enumerate()
                            .map(|(i, p)| {
                                let error = if p.leader < 0 {
                                    ResponseError::LeaderNotAvailable.code()
                                } else {
                                    0
                                };
                                MetadataResponsePartition::default()
                                    .with_error_code(error)
                                    .with_partition_index(i as i32)
                                    .with_leader_id(BrokerId(p.leader))
                                    .with_leader_epoch(p.epoch)
                                    .with_replica_nodes(
                                        p.replicas.into_iter().map(BrokerId).collect(),
                                    )
                                    .with_isr_nodes(p.isr.into_iter().map(BrokerId).collect())
                            })
                            .collect(),
                    )
            })
            .collect();
        topics.extend(denied.into_iter().map(|name| {
            MetadataResponseTopic::default()
                .with_name(Some(TopicName(text(name))))
                .with_error_code(ResponseError::TopicAuthorizationFailed.code())
        }));
        MetadataResponse::default()
            .with_brokers(brokers)
            .with_cluster_id(Some(text(cluster_id)))
            .with_controller_id(BrokerId(controller))
            .with_topics(topics)
    }

    pub(crate) async fn produce(&self, call: &Call, r: ProduceRequest) -> ProduceResponse {
        let acks = match r.acks {
            0 => Some(Acks::None),
            1 => Some(Acks::Leader),
            -1 => Some(Acks::All),
            _ => None,
        };
        // Appends run in request order; the waits for durability (acks=-1)
        // then run together.
        let mut topics: Vec<(String, Vec<PartitionProduceResponse>)> = Vec::new();
        let mut waiting = Vec::new();
        for t in r.topic_data {
            let topic = t.name.0.to_string();
            let allowed = call
                .caller
                .allows(Operation::Write, ResourceType::Topic, &topic);
            let mut parts = Vec::new();
            for p in t.partition_data {
                let resp = PartitionProduceResponse::default().with_index(p.index);
                if !allowed {
                    let why = format!("{} may not write to topic '{topic}'", call.caller.principal);
                    parts.push(refuse(resp, ResponseError::TopicAuthorizationFailed, why));
                    continue;
                }
                let Some(acks) = acks else {
                    let why = format!("acks {} must be 0, 1 or -1", r.acks);
                    parts.push(refuse(resp, ResponseError::InvalidRequiredAcks, why));
                    continue;
                };
                if r.transactional_id.is_some() {
                    let why = "transactions are not supported".to_string();
                    parts.push(refuse(
                        resp,
                        ResponseError::TransactionalIdAuthorizationFailed,
                        why,
                    ));
                    continue;
                }
                let records = p.records.unwrap_or_default();
                let request = match to_produce(&topic, p.index, records, acks) {
                    Ok(req) => req,
                    Err((code, why)) => {
                        parts.push(refuse(resp, code, why));
                        continue;
                    }
                };
                match self.broker.append(request) {
                    Ok(appended) => {
                        waiting.push(((topics.len(), parts.len()), appended.durable()));
                        parts.push(resp);
                    }
                    Err(e) => {
                        let (code, why) = broker_error(&e);
                        parts.push(refuse(resp, code, why));
                    }
                }
            }
            topics.push((topic, parts));
        }
        let (at, waits): (Vec<_>, Vec<_>) = waiting.into_iter().unzip();
        let results = futures_util::future::join_all(waits).await;
        for ((ti, pi), result) in at.into_iter().zip(results) {
            let resp = &mut topics[ti].1[pi];
            if let Some(f) = result.failures.first() {
                let (code, why) = broker_error(&f.error);
                *resp = refuse(resp.clone(), code, why);
            } else if let Some(first) = result.partitions.first() {
                resp.base_offset = first.base_offset;
                resp.log_append_time_ms = -1;
                resp.log_start_offset = -1;
            }
        }
        ProduceResponse::default().with_responses(
            topics
                .into_iter()
                .map(|(name, parts)| {
                    TopicProduceResponse::default()
                        .with_name(TopicName(text(name)))
                        .with_partition_responses(parts)
                })
                .collect(),
        )
    }

    pub(crate) async fn fetch(&self, call: &Call, r: FetchRequest) -> FetchResponse {
        if r.session_id != 0 {
            // No fetch session is ever handed out.
            return FetchResponse::default()
                .with_error_code(ResponseError::FetchSessionIdNotFound.code());
        }
        let wait = Duration::from_millis(r.max_wait_ms.clamp(0, MAX_WAIT_MS) as u64);
        let deadline = Instant::now() + wait;
        let min_bytes = r.min_bytes.max(0) as usize;
        let max_bytes = if r.max_bytes <= 0 {
            50 * 1024 * 1024
        } else {
            r.max_bytes as usize
        };
        let read_committed = r.isolation_level == 1;
        loop {
            let mut budget = max_bytes;
            let mut total = 0usize;
            let mut failed = false;
            let mut wanted: Vec<(&str, i32, i64)> = Vec::new();
            let mut responses = Vec::with_capacity(r.topics.len());
            for t in &r.topics {
                let topic: &str = &t.topic.0;
                let allowed = call
                    .caller
                    .allows(Operation::Read, ResourceType::Topic, topic);
                let mut parts = Vec::with_capacity(t.partitions.len());
                for p in &t.partitions {
                    if !allowed {
                        failed = true;
                        parts.push(
                            PartitionData::default()
                                .with_partition_index(p.partition)
                                .with_high_watermark(-1)
                                .with_last_stable_offset(-1)
                                .with_log_start_offset(-1)
                                .with_error_code(ResponseError::TopicAuthorizationFailed.code()),
                        );
                        continue;
                    }
                    let mut d = PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_log_start_offset(-1);
                    if read_committed {
                        d.aborted_transactions = Some(Vec::new());
                    }
                    let limit = (p.partition_max_bytes.max(0) as usize).min(budget);
                    match self
                        .broker
                        .read_batches(topic, p.partition, p.fetch_offset, limit.max(1))
                    {
                        Ok(read) => {
                            d.high_watermark = read.high_watermark;
                            d.last_stable_offset = read.high_watermark;
                            d.log_start_offset = read.log_start_offset;
                            // The first batch goes out even past the budget
                            // (so a large one is never stuck); then the
                            // budget holds.
                            let n = read.data.len();
                            if n > 0 && (budget > 0 || total == 0) {
                                budget = budget.saturating_sub(n);
                                total += n;
                                d.records = Some(read.data);
                            } else {
                                d.records = Some(Bytes::new());
                                wanted.push((topic, p.partition, p.fetch_offset));
                            }
                        }
                        Err(e) => {
                            failed = true;
                            d.error_code = broker_error(&e).0.code();
                        }
                    }
                    parts.push(d);
                }
                responses.push(
                    FetchableTopicResponse::default()
                        .with_topic(t.topic.clone())
                        .with_partitions(parts),
                );
            }
            let enough = total >= min_bytes.max(1) || failed;
            if enough || Instant::now() >= deadline || wanted.is_empty() {
                return FetchResponse::default().with_responses(responses);
            }
            let woken = self.broker.wait_for_any(&wanted, deadline).await;
            if !woken && (Instant::now() >= deadline || self.broker.is_shutting_down()) {
                // Answer with what there is (nothing).
                return FetchResponse::default().with_responses(responses);
            }
        }
    }

    pub(crate) fn list_offsets(&self, call: &Call, r: ListOffsetsRequest) -> ListOffsetsResponse {
        let topics = r
            .topics
            .into_iter()
            .map(|t| {
                let topic = t.name.0.to_string();
                let allowed = call
                    .caller
                    .allows(Operation::Describe, ResourceType::Topic, &topic);
                let parts = t
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let resp = ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index)
                            .with_timestamp(-1)
                            .with_offset(-1);
                        if !allowed {
                            return resp
                                .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                        }
                        match self.offset_for(&topic, p.partition_index, p.timestamp) {
                            Ok((offset, timestamp)) => {
                                resp.with_offset(offset).with_timestamp(timestamp)
                            }
                            Err(e) => resp.with_error_code(broker_error(&e).0.code()),
                        }
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(t.name)
                    .with_partitions(parts)
            })
            .collect();
        ListOffsetsResponse::default().with_topics(topics)
    }

    /// The offset (and its record's timestamp) for a ListOffsets
    /// timestamp: -1 the high watermark, -2 the log start, else the first
    /// record stamped at or after it (-1 if none is).
    fn offset_for(
        &self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<(i64, i64), BrokerError> {
        let at = if timestamp >= 0 {
            Some(timestamp)
        } else {
            None
        };
        let o = self
            .broker
            .list_offsets(topic, &[partition], at)?
            .into_iter()
            .next()
            .ok_or_else(|| BrokerError::invalid("no such partition"))?;
        match timestamp {
            -1 => Ok((o.latest, -1)),
            -2 => Ok((o.earliest, -1)),
            t if t >= 0 => {
                let offset = o.for_timestamp.unwrap_or(-1);
                if offset < 0 || offset >= o.latest {
                    return Ok((-1, -1));
                }
                // The record's own timestamp (clients such as Java's
                // offsetsForTimes need one).
                let read = self.broker.read_batches(topic, partition, offset, 1)?;
                let stamp = crate::storage::BatchIter::new(&read.data)
                    .flatten()
                    .flat_map(|b| b.records().flatten().collect::<Vec<_>>())
                    .find(|r| r.offset == offset)
                    .map_or(t, |r| r.timestamp);
                Ok((offset, stamp))
            }
            t => Err(BrokerError::invalid(format!(
                "timestamp {t} is not supported: use -1 (latest), -2 (earliest) or a time in ms"
            ))),
        }
    }

    pub(crate) async fn init_producer_id(
        &self,
        call: &Call,
        r: InitProducerIdRequest,
    ) -> InitProducerIdResponse {
        let fail = |e: ResponseError| {
            InitProducerIdResponse::default()
                .with_error_code(e.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        };
        if r.transactional_id.is_some() {
            return fail(ResponseError::TransactionalIdAuthorizationFailed);
        }
        if !call.caller.may_write_idempotently() {
            return fail(ResponseError::ClusterAuthorizationFailed);
        }
        // An epoch bump of an id this broker handed out; any other id gets
        // a new one (its sequences start afresh either way).
        let bump = (r.producer_id.0 >= 0 && r.producer_epoch >= 0)
            .then_some((r.producer_id.0, r.producer_epoch))
            .filter(|&(id, _)| self.owns_producer_id(id));
        let broker = self.broker.clone();
        match tokio::task::spawn_blocking(move || broker.init_producer(bump)).await {
            Ok(Ok((id, epoch))) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch),
            Ok(Err(e)) => fail(broker_error(&e).0),
            Err(_) => fail(ResponseError::UnknownServerError),
        }
    }

    fn owns_producer_id(&self, id: i64) -> bool {
        match self.broker.config().producer_id_stripe {
            None => true,
            Some(s) => s.owner(id) == s.node,
        }
    }
}

/// A partition's answer with an error.
fn refuse(
    resp: PartitionProduceResponse,
    code: ResponseError,
    why: String,
) -> PartitionProduceResponse {
    resp.with_error_code(code.code())
        .with_error_message(Some(text(why)))
        .with_base_offset(-1)
}

/// Decodes a Produce request's batches for one partition into the
/// broker's request: checks each batch whole (CRC-32C, structure) and
/// takes the producer's numbering from it.
fn to_produce(
    topic: &str,
    partition: i32,
    records: Bytes,
    acks: Acks,
) -> Result<Produce, (ResponseError, String)> {
    let mut out = Produce {
        topic: topic.to_string(),
        partition: Some(partition),
        records: Vec::new(),
        acks,
        producer: None,
    };
    let mut at = 0usize;
    let mut batches = 0;
    while at < records.len() {
        let bad = |why: String| (ResponseError::CorruptMessage, why);
        let len = framed_len(&records[at..])
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| bad(format!("a record batch is cut short at byte {at}")))?;
        let slice = records.get(at..at + len).ok_or_else(|| {
            bad(format!(
                "a record batch at byte {at} declares {len} bytes, more than the request holds"
            ))
        })?;
        if slice.len() > 16 && slice[16] != crate::storage::batch::MAGIC {
            return Err((
                ResponseError::UnsupportedForMessageFormat,
                format!("record batch format (magic) {} is not supported: only v2 (Kafka 0.11 and later)", slice[16]),
            ));
        }
        let view = BatchView::parse(slice).map_err(|e| bad(e.to_string()))?;
        if view.attributes() & (TRANSACTIONAL_FLAG | CONTROL_FLAG) != 0 {
            return Err((
                ResponseError::InvalidRecord,
                "transactional and control batches are not supported".into(),
            ));
        }
        if let Err(e) = view.validate() {
            return Err(match e {
                crate::storage::BatchError::UnsupportedCompression(c) => (
                    ResponseError::UnsupportedCompressionType,
                    format!("compression codec {c} is not supported: produce uncompressed batches (compression.type=none)"),
                ),
                e => bad(e.to_string()),
            });
        }
        if view.producer_id() >= 0 {
            if batches > 0 || out.producer.is_some() {
                return Err((
                    ResponseError::InvalidRecord,
                    "an idempotent producer sends one batch per partition per request".into(),
                ));
            }
            out.producer = Some(IdempotentBatch {
                producer_id: view.producer_id(),
                producer_epoch: view.producer_epoch(),
                base_sequence: view.base_sequence(),
            });
        }
        for rec in view.records() {
            let rec = rec.map_err(|e| bad(e.to_string()))?;
            let share = |s: &[u8]| records.slice_ref(s);
            out.records.push(NewRecord {
                key: rec.key.map(share),
                value: rec.value.map(share),
                headers: rec
                    .headers()
                    .map(|h| Header {
                        key: String::from_utf8_lossy(h.key).into_owned(),
                        value: h.value.map(share),
                    })
                    .collect(),
                timestamp: Some(rec.timestamp),
                partition: None,
            });
        }
        batches += 1;
        at += len;
    }
    if out.records.is_empty() {
        return Err((
            ResponseError::InvalidRecord,
            "the request holds no records for this partition".into(),
        ));
    }
    Ok(out)
}
