//! Splitting requests by partition leader, in a cluster: the records of a
//! produce and the partitions of a list-offsets that this broker leads are
//! served here, the rest are forwarded to their leaders, and the replies
//! are merged back into one, in the caller's record order.

use std::{collections::BTreeMap, time::Duration};

use tonic::Status;

use super::cluster::{ClusterLink, Hops};
use super::pb::{self, broker_client::BrokerClient};
use crate::broker::partition_for_key;
use crate::cluster::{NodeId, Route};

/// Where one part of a split request goes.
#[derive(Debug)]
pub(super) enum Target {
    /// This broker.
    Local,
    /// The leader `id` at `internal`.
    Remote { internal: String },
    /// Nowhere: its records fail with this status.
    Failed(Status),
}

/// One leader's share of a produce request.
#[derive(Debug)]
pub(super) struct ProducePart {
    pub target: Target,
    pub request: pb::ProduceRequest,
    /// Each record's index in the caller's request.
    pub indices: Vec<usize>,
}

/// Gives every record of `r` an explicit partition (keyed: Kafka's hash,
/// as the broker would; keyless: one partition per request, one this
/// broker leads when it leads any) and splits the request by leader.
/// A request forwarded as often as it may be whose partition is led
/// elsewhere, or a forwarded one whose partition has no leader, is
/// refused whole (NOT_LEADER, UNAVAILABLE). A topic the metadata does not know stays whole and local
/// (the broker answers with its usual error).
pub(super) fn split_produce(
    link: &ClusterLink,
    mut r: pb::ProduceRequest,
    hops: Hops,
) -> Result<Vec<ProducePart>, Status> {
    let image = link.cluster.image();
    let whole = |r: pb::ProduceRequest| {
        let indices = (0..r.records.len()).collect();
        vec![ProducePart {
            target: Target::Local,
            request: r,
            indices,
        }]
    };
    let Some(topic) = image.topics.get(&r.topic) else {
        return Ok(whole(r));
    };
    let n = topic.partitions.len() as i32;
    let me = link.cluster.node_id();
    let mut keyless: Option<i32> = None;
    let mut choose_keyless = || {
        *keyless.get_or_insert_with(|| {
            let local: Vec<i32> = topic
                .partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| p.leader == Some(me))
                .map(|(i, _)| i as i32)
                .collect();
            let spin = link.next_keyless();
            if local.is_empty() {
                (spin % n as u64) as i32
            } else {
                local[(spin % local.len() as u64) as usize]
            }
        })
    };
    for rec in r.records.iter_mut() {
        let p = match rec.partition.or(r.partition) {
            Some(p) => p,
            None => match &rec.key {
                Some(k) => partition_for_key(k, n),
                None => choose_keyless(),
            },
        };
        rec.partition = Some(p);
    }
    // Parts by destination; out-of-range partitions stay local, where the
    // broker reports them per record.
    let mut parts: BTreeMap<Option<NodeId>, ProducePart> = BTreeMap::new();
    let mut failed: BTreeMap<i32, ProducePart> = BTreeMap::new();
    let records = std::mem::take(&mut r.records);
    let template = |records: Vec<pb::ProduceRecord>| pb::ProduceRequest {
        sequence: r.sequence,
        topic: r.topic.clone(),
        partition: None,
        records,
        acks: r.acks,
        producer_id: r.producer_id,
        producer_epoch: r.producer_epoch,
        base_sequence: r.base_sequence,
    };
    for (i, rec) in records.into_iter().enumerate() {
        let p = rec.partition.unwrap_or_default();
        let route = if (0..n).contains(&p) {
            match link.route(&r.topic, p, hops) {
                Ok(route) => route,
                Err(s) if hops.forwarded() => return Err(s),
                Err(s) => {
                    let part = failed.entry(p).or_insert_with(|| ProducePart {
                        target: Target::Failed(s),
                        request: template(Vec::new()),
                        indices: Vec::new(),
                    });
                    part.request.records.push(rec);
                    part.indices.push(i);
                    continue;
                }
            }
        } else {
            Route::Local
        };
        let (key, target) = match route {
            Route::Local => (None, Target::Local),
            Route::Remote { id, internal, .. } => (Some(id), Target::Remote { internal }),
        };
        let part = parts.entry(key).or_insert_with(|| ProducePart {
            target,
            request: template(Vec::new()),
            indices: Vec::new(),
        });
        part.request.records.push(rec);
        part.indices.push(i);
    }
    let mut parts: Vec<ProducePart> = parts.into_values().chain(failed.into_values()).collect();
    // A part for one partition names it (idempotent requests must).
    for part in &mut parts {
        let first = part.request.records.first().and_then(|r| r.partition);
        if part.request.records.iter().all(|r| r.partition == first) {
            part.request.partition = first;
        }
    }
    Ok(parts)
}

/// Sends a part to its leader.
pub(super) async fn forward_produce(
    link: &ClusterLink,
    internal: &str,
    request: pb::ProduceRequest,
    timeout: Option<Duration>,
    hops: Hops,
) -> Result<pb::ProduceResponse, Status> {
    ClusterLink::count_forward("Produce");
    let mut client = BrokerClient::new(link.channel(internal)?)
        .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(super::MAX_MESSAGE_BYTES);
    Ok(client
        .produce(link.forwarded(request, timeout, hops))
        .await?
        .into_inner())
}

/// Merges the parts' replies into one reply for the caller's request:
/// partition results side by side, record errors at the caller's indices.
pub(super) fn merge_produce(
    sequence: u64,
    replies: Vec<(Vec<usize>, Result<pb::ProduceResponse, Status>)>,
) -> pb::ProduceResponse {
    let mut out = pb::ProduceResponse {
        sequence,
        partitions: Vec::new(),
        record_errors: Vec::new(),
    };
    for (indices, reply) in replies {
        match reply {
            Ok(r) => {
                out.partitions.extend(r.partitions);
                for e in r.record_errors {
                    for k in 0..e.count.max(1) {
                        let Some(&orig) = usize::try_from(e.index + k)
                            .ok()
                            .and_then(|j| indices.get(j))
                        else {
                            continue;
                        };
                        out.record_errors.push(pb::RecordError {
                            index: orig as i32,
                            code: e.code,
                            message: e.message.clone(),
                            count: 1,
                        });
                    }
                }
            }
            Err(s) => {
                for orig in indices {
                    out.record_errors.push(pb::RecordError {
                        index: orig as i32,
                        code: s.code() as i32,
                        message: s.message().to_string(),
                        count: 1,
                    });
                }
            }
        }
    }
    out.record_errors.sort_by_key(|e| e.index);
    // Consecutive records with one error are one run, as the broker
    // reports them.
    let mut runs: Vec<pb::RecordError> = Vec::new();
    for e in out.record_errors {
        if let Some(last) = runs.last_mut() {
            if last.index + last.count == e.index
                && last.code == e.code
                && last.message == e.message
            {
                last.count += 1;
                continue;
            }
        }
        runs.push(e);
    }
    out.record_errors = runs;
    out
}

/// Partitions by destination: `None` here, else a leader's id and
/// internal address.
pub(super) type PartitionsByLeader = BTreeMap<Option<(NodeId, String)>, Vec<i32>>;

/// The partitions of a list-offsets request, by destination.
pub(super) fn split_partitions(
    link: &ClusterLink,
    topic: &str,
    partitions: &[i32],
    hops: Hops,
) -> Result<Option<PartitionsByLeader>, Status> {
    let image = link.cluster.image();
    let Some(t) = image.topics.get(topic) else {
        return Ok(None);
    };
    let all: Vec<i32> = if partitions.is_empty() {
        (0..t.partitions.len() as i32).collect()
    } else {
        partitions.to_vec()
    };
    let mut out = PartitionsByLeader::new();
    for p in all {
        let key = match link.route(topic, p, hops)? {
            Route::Local => None,
            Route::Remote { id, internal, .. } => Some((id, internal)),
        };
        out.entry(key).or_default().push(p);
    }
    Ok(Some(out))
}
