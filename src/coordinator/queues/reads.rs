//! Reads of record data for the work queues' windows, done outside the
//! shard lock: planned under it ([`plan_reads`]), run unlocked
//! ([`read_partition`]), and loaded under it again where the window has not
//! moved meanwhile ([`load_reads`]).

use std::sync::Arc;

use crate::broker::Broker;
use crate::coordinator::share::ShareGroup;

/// A read of one partition's next records, planned under the shard lock.
pub(super) struct Read {
    pub(super) partition: i32,
    /// The window's cursor when planned.
    pub(super) from: i64,
    pub(super) room: usize,
}

pub(super) enum ReadOutcome {
    Records(crate::broker::FetchResult),
    /// The log is `[start, end)` and the cursor is outside it.
    OutOfRange {
        start: i64,
        end: i64,
    },
    Failed,
}

/// A read for each placed window of `topic` with room, unless its cursor
/// is known to be at the log end already.
pub(super) fn plan_reads(g: &ShareGroup, topic: &Arc<str>) -> Vec<Read> {
    g.partitions
        .range((topic.clone(), 0)..)
        .take_while(|((t, _), _)| t == topic)
        .filter(|(_, part)| part.placed && part.room() > 0)
        .map(|((_, p), part)| Read {
            partition: *p,
            from: part.cursor,
            room: part.room() as usize,
        })
        .collect()
}

/// Reads one partition (no lock held); the records are copied out of the
/// log's mappings (see [`crate::broker::FetchedRecord::detach_all`]).
pub(super) fn read_partition(broker: &Broker, topic: &str, r: &Read) -> ReadOutcome {
    if broker.known_end(topic, r.partition) == Some(r.from) {
        return ReadOutcome::Records(crate::broker::FetchResult {
            next_offset: r.from,
            ..Default::default()
        });
    }
    match broker.read_records(topic, r.partition, r.from, r.room, 1 << 20) {
        Ok(mut read) => {
            // The window may hold records for long: not from the log's
            // mappings, which would keep deleted segments on disk.
            crate::broker::FetchedRecord::detach_all(&mut read.records);
            ReadOutcome::Records(read)
        }
        Err(crate::broker::BrokerError::Storage(
            crate::storage::StorageError::OffsetOutOfRange { start, end, .. },
        )) => ReadOutcome::OutOfRange { start, end },
        Err(e) => {
            tracing::warn!(topic, partition = r.partition, error = %e, "work-queue read failed");
            ReadOutcome::Failed
        }
    }
}

/// Loads reads into their windows (shard locked), each only if its window
/// still ends where the read began (another call may have loaded, or an
/// operator reset the cursor, meanwhile). Returns the locks of records
/// that left the log (retention, or a lost tail).
pub(super) fn load_reads(
    g: &mut ShareGroup,
    topic: &Arc<str>,
    reads: Vec<(Read, ReadOutcome)>,
) -> Vec<(u64, Arc<str>)> {
    let mut dropped = Vec::new();
    for (r, outcome) in reads {
        let Some(part) = g.partitions.get_mut(&(topic.clone(), r.partition)) else {
            continue;
        };
        if !part.placed || part.cursor != r.from {
            continue;
        }
        match outcome {
            ReadOutcome::Records(read) => part.load(read.records, read.next_offset),
            ReadOutcome::OutOfRange { start, end } if part.cursor > end => {
                // The log is shorter than the queue's cursor (a tail lost
                // to a power failure): records appended from here on would
                // never be delivered. Go back to the log's end.
                tracing::warn!(
                    topic = %topic,
                    partition = r.partition,
                    cursor = part.cursor,
                    log_end = end,
                    log_start = start,
                    "work-queue cursor is past the end of the log; moving it back"
                );
                metrics::counter!("sluice_queue_cursor_resets_total", "topic" => topic.to_string())
                    .increment(1);
                dropped.extend(part.truncate_to(end));
            }
            ReadOutcome::OutOfRange { start, .. } => dropped.extend(part.skip_to(start)),
            ReadOutcome::Failed => {}
        }
    }
    dropped
}
