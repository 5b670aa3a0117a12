//! Protobuf messages to domain types and back. Byte fields move as
//! `Bytes` (reference-counted), never copied.

use crate::broker::{
    Acks, FetchedRecord, Header, IdempotentBatch, NewRecord, PartitionInfo, PartitionOffsets,
    Position, ProduceRequest, ProduceResult, TimestampType, TopicConfig, TopicInfo,
};

use super::pb;
use super::status::code;

pub fn acks(a: i32) -> Result<Acks, tonic::Status> {
    match pb::Acks::try_from(a) {
        Ok(pb::Acks::Unspecified) | Ok(pb::Acks::Leader) => Ok(Acks::Leader),
        Ok(pb::Acks::None) => Ok(Acks::None),
        Ok(pb::Acks::All) => Ok(Acks::All),
        Err(_) => Err(tonic::Status::invalid_argument(format!(
            "acks {a} is not one of 0 (unspecified), 1 (NONE), 2 (LEADER), 3 (ALL)"
        ))),
    }
}

pub fn produce_request(r: pb::ProduceRequest) -> Result<ProduceRequest, tonic::Status> {
    let producer = match r.producer_id {
        None => None,
        Some(producer_id) => Some(IdempotentBatch {
            producer_id,
            producer_epoch: i16::try_from(r.producer_epoch).map_err(|_| {
                tonic::Status::invalid_argument(format!(
                    "producer_epoch {} is out of range [0, {}]",
                    r.producer_epoch,
                    i16::MAX
                ))
            })?,
            base_sequence: r.base_sequence,
        }),
    };
    Ok(ProduceRequest {
        producer,
        acks: acks(r.acks)?,
        topic: r.topic,
        partition: r.partition,
        records: r
            .records
            .into_iter()
            .map(|r| NewRecord {
                key: r.key,
                value: r.value,
                headers: r.headers.into_iter().map(header_in).collect(),
                timestamp: r.timestamp_ms,
                partition: r.partition,
            })
            .collect(),
    })
}

fn header_in(h: pb::Header) -> Header {
    Header {
        key: h.key,
        value: h.value,
    }
}

fn header_out(h: Header) -> pb::Header {
    pb::Header {
        key: h.key,
        value: h.value,
    }
}

pub fn produce_response(sequence: u64, r: ProduceResult) -> pb::ProduceResponse {
    pb::ProduceResponse {
        sequence,
        partitions: r
            .partitions
            .into_iter()
            .map(|p| pb::PartitionProduceResult {
                partition: p.partition,
                base_offset: p.base_offset,
                record_count: p.record_count,
                duplicate: p.duplicate,
            })
            .collect(),
        record_errors: record_errors(r.failures),
    }
}

/// Failures as runs: consecutive records that share one error are one
/// `RecordError` (one message string, not one per record).
fn record_errors(failures: Vec<crate::broker::RecordFailure>) -> Vec<pb::RecordError> {
    let mut out: Vec<pb::RecordError> = Vec::new();
    let mut last: Option<(usize, std::sync::Arc<crate::broker::BrokerError>)> = None;
    for f in failures {
        if let (Some((end, e)), Some(run)) = (&last, out.last_mut()) {
            if *end == f.index && std::sync::Arc::ptr_eq(e, &f.error) {
                run.count += 1;
                last = Some((f.index + 1, f.error));
                continue;
            }
        }
        out.push(pb::RecordError {
            index: f.index as i32,
            code: code(&f.error) as i32,
            message: super::status::client_message(&f.error),
            count: 1,
        });
        last = Some((f.index + 1, f.error));
    }
    out
}

pub fn record_out(r: FetchedRecord) -> pb::ConsumedRecord {
    pb::ConsumedRecord {
        offset: r.offset,
        timestamp_ms: r.timestamp,
        key: r.key,
        value: r.value,
        headers: r.headers.into_iter().map(header_out).collect(),
    }
}

/// A read as the generated message: what `reply.rs` encodes without
/// building it (its tests compare the bytes).
#[cfg(test)]
pub fn fetch_response(r: crate::broker::FetchResult) -> pb::FetchResponse {
    pb::FetchResponse {
        records: r.records.into_iter().map(record_out).collect(),
        next_offset: r.next_offset,
        log_start_offset: r.log_start_offset,
        high_watermark: r.high_watermark,
    }
}

/// See [`fetch_response`].
#[cfg(test)]
pub fn subscribe_response(r: crate::broker::FetchResult) -> pb::SubscribeResponse {
    pb::SubscribeResponse {
        records: r.records.into_iter().map(record_out).collect(),
        next_offset: r.next_offset,
        high_watermark: r.high_watermark,
    }
}

pub fn position(p: Option<pb::Position>) -> Position {
    use pb::position::Position as P;
    match p.and_then(|p| p.position) {
        Some(P::Offset(o)) => Position::Offset(o),
        Some(P::TimestampMs(t)) => Position::Timestamp(t),
        Some(P::Earliest(())) => Position::Earliest,
        Some(P::Latest(())) | None => Position::Latest,
    }
}

pub fn topic_config_in(c: Option<pb::TopicConfig>) -> Result<TopicConfig, tonic::Status> {
    let c = c.unwrap_or_default();
    let timestamp_type = match c.timestamp_type.map(pb::TimestampType::try_from) {
        None | Some(Ok(pb::TimestampType::Unspecified)) => None,
        Some(Ok(pb::TimestampType::CreateTime)) => Some(TimestampType::CreateTime),
        Some(Ok(pb::TimestampType::LogAppendTime)) => Some(TimestampType::LogAppendTime),
        Some(Err(_)) => {
            return Err(tonic::Status::invalid_argument(format!(
            "timestamp_type {} is not one of 0 (unspecified), 1 (CREATE_TIME), 2 (LOG_APPEND_TIME)",
            c.timestamp_type.unwrap_or_default()
        )))
        }
    };
    Ok(TopicConfig {
        retention_ms: c.retention_ms,
        retention_bytes: c.retention_bytes,
        segment_bytes: c.segment_bytes,
        max_message_bytes: c.max_message_bytes,
        timestamp_type,
        timestamp_before_max_ms: c.timestamp_before_max_ms,
        timestamp_after_max_ms: c.timestamp_after_max_ms,
        min_insync_replicas: c.min_insync_replicas,
        unclean_leader_election: c.unclean_leader_election,
    })
}

pub(crate) fn topic_config_out(c: TopicConfig) -> pb::TopicConfig {
    pb::TopicConfig {
        retention_ms: c.retention_ms,
        retention_bytes: c.retention_bytes,
        segment_bytes: c.segment_bytes,
        max_message_bytes: c.max_message_bytes,
        timestamp_type: c.timestamp_type.map(|t| match t {
            TimestampType::CreateTime => pb::TimestampType::CreateTime as i32,
            TimestampType::LogAppendTime => pb::TimestampType::LogAppendTime as i32,
        }),
        timestamp_before_max_ms: c.timestamp_before_max_ms,
        timestamp_after_max_ms: c.timestamp_after_max_ms,
        min_insync_replicas: c.min_insync_replicas,
        unclean_leader_election: c.unclean_leader_election,
    }
}

fn partition_out(p: PartitionInfo) -> pb::PartitionDescription {
    pb::PartitionDescription {
        partition: p.partition,
        log_start_offset: p.log_start_offset,
        high_watermark: p.high_watermark,
        log_end_offset: p.log_end_offset,
        size_bytes: p.size_bytes.min(i64::MAX as u64) as i64,
        segments: p.segments.min(i32::MAX as usize) as i32,
        leader: -1,
        replicas: Vec::new(),
        isr: Vec::new(),
        leader_epoch: 0,
    }
}

pub fn topic_out(t: TopicInfo) -> pb::TopicDescription {
    pb::TopicDescription {
        name: t.name,
        topic_id: t.topic_id,
        config: Some(topic_config_out(t.config)),
        partitions: t.partitions.into_iter().map(partition_out).collect(),
    }
}

pub fn offsets_out(o: PartitionOffsets) -> pb::PartitionOffsets {
    pb::PartitionOffsets {
        partition: o.partition,
        earliest_offset: o.earliest,
        latest_offset: o.latest,
        timestamp_offset: o.for_timestamp,
    }
}
