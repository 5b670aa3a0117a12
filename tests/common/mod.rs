//! Shared harness for the integration tests: batch builders, whole-log
//! reads, crash images, and a server on an ephemeral port.
#![allow(dead_code)] // each test binary uses its own subset

pub mod api;
pub mod certs;
pub mod cluster;
pub mod kcat;
pub mod python;
pub mod server;

use std::path::Path;

use bytes::Bytes;
use sluice::broker::NewRecord;
use sluice::coordinator::queues::AckRequest;
use sluice::coordinator::share::{AckKind, Delivery};

use sluice::storage::{
    BatchBuilder, BatchIter, FlushPolicy, HeaderRef, Log, LogConfig, RecordBatch,
};

/// One record as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Small segments and a dense index, so a few kilobytes exercise rolls and
/// index lookups.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        initial_preallocate_bytes: 1024,
        max_batch_bytes: 4096,
        flush: FlushPolicy::Manual,
        retention_ms: None,
        segment_ms: None,
        ..LogConfig::default()
    }
}

/// A batch of records with the given values; keys are `k<i>`, one header.
pub fn batch_of(values: &[Vec<u8>], timestamp: i64) -> RecordBatch {
    let mut b = BatchBuilder::default();
    for (i, v) in values.iter().enumerate() {
        let key = format!("k{i}");
        b.push(
            timestamp + i as i64,
            Some(key.as_bytes()),
            Some(v),
            &[HeaderRef {
                key: b"n",
                value: Some(&[i as u8]),
            }],
        )
        .expect("push");
    }
    b.build().expect("at least one value")
}

/// Decodes every record in `data` (whole batches) at or after `from`.
pub fn decode(data: &[u8], from: i64) -> Vec<Rec> {
    let mut out = Vec::new();
    for b in BatchIter::new(data) {
        for r in b.expect("whole batch").records() {
            let r = r.expect("record");
            if r.offset >= from {
                out.push(Rec {
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key.map(<[u8]>::to_vec),
                    value: r.value.map(<[u8]>::to_vec),
                    headers: r
                        .headers()
                        .map(|h| (h.key.to_vec(), h.value.map(<[u8]>::to_vec)))
                        .collect(),
                });
            }
        }
    }
    out
}

/// Every record from the log start to its end.
pub fn read_all(log: &Log) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut offset = log.start_offset();
    loop {
        let r = log.read(offset, 64 * 1024).expect("read");
        let recs = decode(&r.data, offset);
        match recs.last() {
            None => return out,
            Some(last) => offset = last.offset + 1,
        }
        out.extend(recs);
    }
}

/// Copies every file of a live log into `to`, after a flush: what a crash
/// at this moment would leave on disk.
pub fn crash_image(log: &Log, to: &Path) {
    log.flush().expect("flush");
    for e in std::fs::read_dir(log.dir()).expect("list") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

/// Reads a directory's files into memory, by name.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().into_string().expect("utf8"),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    files.sort();
    files
}

/// Replaces the contents of `dir` with `files`.
pub fn restore(dir: &Path, files: &[(String, Vec<u8>)]) {
    for e in std::fs::read_dir(dir).expect("list") {
        std::fs::remove_file(e.expect("entry").path()).expect("rm");
    }
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write");
    }
}

/// `n` task records for a work queue, valued `job-<i>`.
pub fn job_records(n: usize) -> Vec<NewRecord> {
    (0..n)
        .map(|i| NewRecord {
            value: Some(Bytes::from(format!("job-{i}"))),
            ..NewRecord::default()
        })
        .collect()
}

/// An ACCEPT for each delivery.
pub fn accept_all(deliveries: &[Delivery]) -> Vec<AckRequest> {
    deliveries
        .iter()
        .map(|d| AckRequest {
            delivery_id: d.delivery_id,
            kind: AckKind::Accept,
            reason: None,
        })
        .collect()
}
