//! Reads of partitions led by other brokers, for this broker's
//! coordinators ([`crate::broker::RemoteReads`]): a work queue coordinated
//! here may read a partition this broker holds no copy of. Each call asks
//! the partition's leader over its internal listener, with `Fetch` or
//! `ListOffsets` marked as forwarded. Calls block the (blocking) thread
//! that makes them, inside the runtime.

use std::time::Duration;

use tonic::Status;

use super::cluster::{ClusterLink, Hops};
use super::pb::{self, broker_client::BrokerClient};
use super::MAX_MESSAGE_BYTES;
use crate::broker::{
    BrokerError, FetchResult, FetchedRecord, Header, PartitionOffsets, RemoteReads, Result,
};
use crate::cluster::Route;
use crate::storage::StorageError;

/// Longest a remote read waits for its leader.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(5);

/// [`RemoteReads`] over the cluster's internal channels.
pub struct LeaderReads {
    link: ClusterLink,
    runtime: tokio::runtime::Handle,
}

impl LeaderReads {
    /// Reads through `link`, driven by `runtime`.
    pub fn new(link: ClusterLink, runtime: tokio::runtime::Handle) -> Self {
        Self { link, runtime }
    }

    fn client(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<BrokerClient<tonic::transport::Channel>> {
        let unavailable = |reason: String| BrokerError::Remote {
            topic: topic.to_string(),
            partition,
            reason,
        };
        match self.link.cluster.route(topic, partition) {
            Ok(Route::Remote { internal, .. }) => {
                let channel = self
                    .link
                    .channel(&internal)
                    .map_err(|s| unavailable(s.message().to_string()))?;
                Ok(BrokerClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
            }
            Ok(Route::Local) => Err(unavailable("led here".into())),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }
}

fn status_error(topic: &str, partition: i32, s: Status) -> BrokerError {
    BrokerError::Remote {
        topic: topic.to_string(),
        partition,
        reason: format!("{}: {}", s.code(), s.message()),
    }
}

impl RemoteReads for LeaderReads {
    fn read(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<FetchResult> {
        let mut client = self.client(topic, partition)?;
        let req = self.link.forwarded(
            pb::FetchRequest {
                topic: topic.to_string(),
                partition,
                offset,
                max_records: max_records.min(crate::broker::MAX_FETCH_RECORDS as usize) as i32,
                max_bytes: max_bytes.min(crate::broker::MAX_FETCH_BYTES as usize) as i32,
                max_wait_ms: 0,
            },
            Some(REMOTE_TIMEOUT),
            Hops::default(),
        );
        let reply = self.runtime.block_on(client.fetch(req));
        let r = match reply {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::OutOfRange => {
                let o = self.offsets(topic, partition, None)?;
                return Err(BrokerError::Storage(StorageError::OffsetOutOfRange {
                    offset,
                    start: o.earliest,
                    end: o.latest,
                }));
            }
            Err(s) => return Err(status_error(topic, partition, s)),
        };
        Ok(FetchResult {
            records: r
                .records
                .into_iter()
                .map(|c| FetchedRecord {
                    offset: c.offset,
                    timestamp: c.timestamp_ms,
                    key: c.key,
                    value: c.value,
                    headers: c
                        .headers
                        .into_iter()
                        .map(|h| Header {
                            key: h.key,
                            value: h.value,
                        })
                        .collect(),
                })
                .collect(),
            next_offset: r.next_offset,
            log_start_offset: r.log_start_offset,
            high_watermark: r.high_watermark,
        })
    }

    fn offsets(
        &self,
        topic: &str,
        partition: i32,
        timestamp: Option<i64>,
    ) -> Result<PartitionOffsets> {
        let mut client = self.client(topic, partition)?;
        let req = self.link.forwarded(
            pb::ListOffsetsRequest {
                topic: topic.to_string(),
                partitions: vec![partition],
                timestamp_ms: timestamp,
            },
            Some(REMOTE_TIMEOUT),
            Hops::default(),
        );
        let r = self
            .runtime
            .block_on(client.list_offsets(req))
            .map_err(|s| status_error(topic, partition, s))?
            .into_inner();
        let p = r
            .partitions
            .into_iter()
            .find(|p| p.partition == partition)
            .ok_or_else(|| {
                status_error(topic, partition, Status::internal("no offsets returned"))
            })?;
        Ok(PartitionOffsets {
            partition,
            earliest: p.earliest_offset,
            latest: p.latest_offset,
            for_timestamp: p.timestamp_offset,
        })
    }
}
