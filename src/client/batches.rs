//! Walking the stored record batches that `FetchBatches` returns (Kafka's
//! RecordBatch v2, described in `proto/sluice/v1/broker.proto`), without
//! an allocation per record.

use bytes::Bytes;

use super::{pb, ClientError};
use crate::storage::{BatchIter, RecordIter, RecordView};

/// The records of `data` (whole batches) at or after offset `from`, in
/// order. Each batch's checksum is checked before its records are read;
/// a batch that fails it, or a record that does not decode, ends the walk
/// with [`ClientError::Damaged`].
pub fn records(data: &[u8], from: i64) -> Records<'_> {
    Records {
        batches: BatchIter::new(data),
        records: None,
        from,
        failed: false,
    }
}

/// Iterator of [`records`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    batches: BatchIter<'a>,
    records: Option<RecordIter<'a>>,
    from: i64,
    failed: bool,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RecordView<'a>, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(records) = self.records.as_mut() {
                match records.next() {
                    Some(Ok(r)) if r.offset < self.from => continue,
                    Some(Ok(r)) => return Some(Ok(r)),
                    Some(Err(e)) => {
                        self.failed = true;
                        return Some(Err(ClientError::Damaged(e.to_string())));
                    }
                    None => self.records = None,
                }
            }
            let batch = match self.batches.next()? {
                Ok(b) => b,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(ClientError::Damaged(e.to_string())));
                }
            };
            if batch.next_offset() <= self.from {
                continue;
            }
            if let Err(e) = batch.verify_crc() {
                self.failed = true;
                return Some(Err(ClientError::Damaged(format!(
                    "batch at offset {}: {e}",
                    batch.base_offset()
                ))));
            }
            self.records = Some(batch.records());
        }
    }
}

/// The records of a `FetchBatches` reply as the messages `Fetch` returns
/// (keys and values share `reply.batches`, no copy).
pub fn consumed_records(
    reply: &pb::FetchBatchesResponse,
    from: i64,
) -> Result<Vec<pb::ConsumedRecord>, ClientError> {
    let data: &Bytes = &reply.batches;
    records(data, from)
        .map(|r| {
            r.map(|r| pb::ConsumedRecord {
                offset: r.offset,
                timestamp_ms: r.timestamp,
                key: r.key.map(|k| data.slice_ref(k)),
                value: r.value.map(|v| data.slice_ref(v)),
                headers: r
                    .headers()
                    .map(|h| pb::Header {
                        key: String::from_utf8_lossy(h.key).into_owned(),
                        value: h.value.map(|v| data.slice_ref(v)),
                    })
                    .collect(),
            })
        })
        .collect()
}
