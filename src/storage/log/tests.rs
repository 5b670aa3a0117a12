//! Tests of the log on real files in temporary directories.

use std::sync::{atomic::AtomicI64, Arc};

use super::*;
use crate::storage::{BatchBuilder, BatchIter, HeaderRef};

/// A clock the test moves by hand.
pub(super) fn manual_clock(start: i64) -> (Arc<AtomicI64>, super::super::Clock) {
    let now = Arc::new(AtomicI64::new(start));
    let n = now.clone();
    (now, Arc::new(move || n.load(Ordering::SeqCst)))
}

pub(super) fn small_config() -> LogConfig {
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

/// A batch of `n` records whose values are `tag-i` padded to `size` bytes.
pub(super) fn batch(tag: &str, n: usize, size: usize, ts: i64) -> RecordBatch {
    let mut b = BatchBuilder::default();
    for i in 0..n {
        let mut v = format!("{tag}-{i}").into_bytes();
        v.resize(size.max(v.len()), b'.');
        b.push(
            ts + i as i64,
            Some(tag.as_bytes()),
            Some(&v),
            &[HeaderRef {
                key: b"i",
                value: Some(&[i as u8]),
            }],
        )
        .expect("push");
    }
    b.build().expect("non-empty")
}

/// Every record in the log as (offset, timestamp, value).
pub(super) fn all_records(log: &Log) -> Vec<(i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = log.start_offset();
    loop {
        let r = log.read(offset, 1 << 20).expect("read");
        if r.data.is_empty() {
            return out;
        }
        for b in BatchIter::new(&r.data) {
            for rec in b.expect("batch").records() {
                let rec = rec.expect("record");
                if rec.offset >= offset {
                    out.push((
                        rec.offset,
                        rec.timestamp,
                        rec.value.unwrap_or_default().to_vec(),
                    ));
                    offset = rec.offset + 1;
                }
            }
        }
    }
}

/// Copies a live log's files: what a crash right now would leave on disk
/// (everything flushed is in it; the checkpoint is not marked clean).
fn crash_image(log: &Log, to: &std::path::Path) {
    log.flush().expect("flush");
    for e in std::fs::read_dir(log.dir()).expect("list") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

#[test]
fn appends_get_consecutive_offsets_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    assert_eq!((log.start_offset(), log.end_offset()), (0, 0));
    let a = log.append(&batch("a", 3, 10, 100)).expect("append");
    let b = log.append(&batch("b", 2, 10, 200)).expect("append");
    assert_eq!(
        (a.base_offset, a.last_offset, b.base_offset, b.last_offset),
        (0, 2, 3, 4)
    );
    assert_eq!(log.end_offset(), 5);

    // A read from the middle of a batch returns the whole batch.
    let r = log.read(1, 1 << 20).expect("read");
    let batches: Vec<_> = BatchIter::new(&r.data)
        .collect::<Result<_, _>>()
        .expect("batches");
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].base_offset(), 0);
    assert_eq!((r.log_start_offset, r.log_end_offset), (0, 5));
    // max_bytes smaller than a batch still returns one whole batch.
    let r = log.read(3, 1).expect("read");
    assert_eq!(BatchIter::new(&r.data).count(), 1);
    assert!(log.read(5, 100).expect("read at end").data.is_empty());

    let err = log.read(6, 100).expect_err("past end");
    assert!(
        matches!(
            err,
            StorageError::OffsetOutOfRange {
                offset: 6,
                start: 0,
                end: 5
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("[0, 5]"), "{err}");
    assert!(log.read(-1, 100).is_err());

    let values: Vec<_> = all_records(&log)
        .into_iter()
        .map(|(o, _, v)| (o, String::from_utf8(v).expect("utf8")))
        .collect();
    assert_eq!(values[3], (3, "b-0.......".to_string()));
}

#[test]
fn a_record_limit_stops_the_read_at_the_batch_holding_the_last_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    for i in 0..6 {
        log.append(&batch(&format!("b{i}"), 2, 10, 100))
            .expect("append");
    }
    let bases = |r: &ReadResult| -> Vec<i64> {
        BatchIter::new(&r.data)
            .map(|b| b.expect("batch").base_offset())
            .collect()
    };
    // From offset 1: records 1 and 2 end in the second batch.
    let r = log.read_records(1, 1 << 20, 2).expect("read");
    assert_eq!(bases(&r), vec![0, 2]);
    // One record: the batch holding it.
    assert_eq!(
        bases(&log.read_records(4, 1 << 20, 1).expect("read")),
        vec![4]
    );
    // Unlimited: to the end of the log; the byte budget still applies.
    assert_eq!(bases(&log.read(0, 1 << 20).expect("read")).len(), 6);
    assert_eq!(bases(&log.read_records(0, 1, 100).expect("read")), vec![0]);
}

#[test]
fn rolls_at_the_size_limit_and_reopens_cleanly_without_scanning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    for i in 0..40 {
        log.append(&batch("r", 4, 50, i * 10)).expect("append");
    }
    let segments = log.segment_count();
    assert!(segments > 3, "only {segments} segments");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .filter(|n| n.ends_with(".log"))
        .collect();
    assert!(
        names.contains(&"00000000000000000000.log".to_string()),
        "{names:?}"
    );
    assert!(names.iter().all(|n| n.len() == 24), "{names:?}");
    let before = all_records(&log);
    let bases = log.segment_bases();
    drop(log);

    let log = Log::open(dir.path(), small_config()).expect("reopen");
    let report = log.recovery_report();
    assert!(report.clean, "{report:?}");
    assert_eq!(report.segments_scanned, 0);
    assert_eq!(log.segment_bases(), bases);
    assert_eq!(all_records(&log), before);
    let next = log.append(&batch("after", 1, 5, 9999)).expect("append");
    assert_eq!(next.base_offset, 160);
    // Every sealed file was trimmed to its real length.
    for b in &bases[..bases.len() - 1] {
        let len = std::fs::metadata(segment_path(dir.path(), *b, LOG_EXT))
            .expect("meta")
            .len();
        assert!(len <= 4096, "segment {b} is {len} bytes");
    }
}

#[test]
fn rolls_at_the_age_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (now, clock) = manual_clock(1_000_000);
    let log = Log::open(
        dir.path(),
        LogConfig {
            segment_ms: Some(60_000),
            clock,
            ..small_config()
        },
    )
    .expect("open");
    log.append(&batch("x", 1, 10, 1)).expect("append");
    log.append(&batch("x", 1, 10, 2)).expect("append");
    assert_eq!(log.segment_count(), 1);
    now.fetch_add(60_000, Ordering::SeqCst);
    log.append(&batch("x", 1, 10, 3)).expect("append");
    assert_eq!(log.segment_bases(), vec![0, 2]);
}

#[test]
fn reopen_after_a_crash_verifies_and_keeps_flushed_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = tempfile::tempdir().expect("tempdir");
    // The recovery point stays where it is: the flushed tail is verified.
    let config = LogConfig {
        checkpoint_interval_ms: u64::MAX,
        ..small_config()
    };
    let log = Log::open(dir.path(), config).expect("open");
    for i in 0..30 {
        log.append(&batch("c", 3, 40, i)).expect("append");
    }
    crash_image(&log, image.path());
    let expected = all_records(&log);
    let reopened = Log::open(image.path(), small_config()).expect("recover");
    let report = reopened.recovery_report().clone();
    assert!(!report.clean);
    assert!(
        report.segments_scanned >= 1 && report.batches_scanned >= 1,
        "{report:?}"
    );
    assert_eq!(report.truncated_bytes, 0, "{report:?}");
    assert_eq!(all_records(&reopened), expected);
    assert_eq!(
        reopened
            .append(&batch("d", 1, 1, 0))
            .expect("append")
            .base_offset,
        90
    );
}

#[test]
fn finds_offsets_by_timestamp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    // Timestamps rise by 10 per batch, 3 records each at ts, ts+1, ts+2.
    for i in 0..60 {
        log.append(&batch("t", 3, 30, 1000 + i * 10))
            .expect("append");
    }
    assert!(log.segment_count() > 2);
    assert_eq!(log.offset_for_timestamp(0).expect("lookup"), Some(0));
    assert_eq!(log.offset_for_timestamp(1000).expect("lookup"), Some(0));
    assert_eq!(log.offset_for_timestamp(1001).expect("lookup"), Some(1));
    assert_eq!(log.offset_for_timestamp(1003).expect("lookup"), Some(3));
    assert_eq!(log.offset_for_timestamp(1255).expect("lookup"), Some(78));
    assert_eq!(log.offset_for_timestamp(1592).expect("lookup"), Some(179));
    assert_eq!(log.offset_for_timestamp(1593).expect("lookup"), None);
    // The same answers from a reopened (lazily mapped) log.
    drop(log);
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    for ts in [0, 1001, 1255, 1400, 1592] {
        let brute = all_records(&log)
            .into_iter()
            .find(|r| r.1 >= ts)
            .map(|r| r.0);
        assert_eq!(
            log.offset_for_timestamp(ts).expect("lookup"),
            brute,
            "ts {ts}"
        );
    }
}

#[test]
fn timestamp_lookup_handles_out_of_order_timestamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    let stamps = [50i64, 10, 70, 20, 90, 30, 60, 5, 100, 40];
    for (i, ts) in stamps.iter().cycle().take(120).enumerate() {
        log.append(&batch("o", 1, 60, ts + (i as i64 / 10) * 3))
            .expect("append");
    }
    let records = all_records(&log);
    for ts in [0, 11, 55, 71, 95, 120, 133, 134] {
        let brute = records.iter().find(|r| r.1 >= ts).map(|r| r.0);
        assert_eq!(
            log.offset_for_timestamp(ts).expect("lookup"),
            brute,
            "ts {ts}"
        );
    }
}

#[test]
fn truncation_drops_the_tail_and_keeps_what_readers_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    for i in 0..40 {
        log.append(&batch("u", 2, 60, i)).expect("append");
    }
    assert!(log.segment_count() >= 3);
    let held = log.read(0, 1 << 20).expect("read");
    let held_copy = held.data.to_vec();
    let before = all_records(&log);

    // Batches hold two records at even offsets: an odd offset inside the
    // second segment cuts at the start of its batch.
    let bases = log.segment_bases();
    let second = bases[1];
    let cut_at = second + 3;
    assert_eq!(log.truncate_to(cut_at).expect("truncate"), second + 2);
    assert_eq!(log.end_offset(), second + 2);
    assert_eq!(log.segment_bases(), vec![0, second]);
    assert_eq!(all_records(&log), before[..second as usize + 2].to_vec());
    assert_eq!(
        held.data.to_vec(),
        held_copy,
        "bytes a reader holds changed"
    );
    assert_eq!(
        log.append(&batch("v", 1, 5, 0))
            .expect("append")
            .base_offset,
        second + 2
    );

    // Truncating exactly at a segment base leaves that segment empty.
    assert_eq!(log.truncate_to(second).expect("truncate"), second);
    assert_eq!(log.segment_bases(), vec![0, second]);
    assert!(log.truncate_to(-1).is_err());
    assert_eq!(log.truncate_to(1000).expect("no-op"), second);
    // Into the first segment.
    assert_eq!(log.truncate_to(7).expect("truncate"), 6);
    assert_eq!(log.segment_bases(), vec![0]);
    assert_eq!(
        held.data.to_vec(),
        held_copy,
        "bytes a reader holds changed"
    );
    for i in 0..4 {
        log.append(&batch("u", 2, 60, i)).expect("append");
    }
    let after = all_records(&log);
    assert_eq!(after[..6], before[..6]);
    assert_eq!(after.len(), 14);

    drop(log);
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    assert_eq!(all_records(&log), after);
}

#[test]
fn truncation_survives_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    for i in 0..20 {
        log.append(&batch("w", 2, 60, i)).expect("append");
    }
    log.truncate_to(9).expect("truncate");
    crash_image(&log, image.path());
    let log = Log::open(image.path(), small_config()).expect("recover");
    assert_eq!(log.end_offset(), 8);
}

#[test]
fn retention_deletes_old_sealed_segments_by_size_and_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (now, clock) = manual_clock(1_000_000);
    let config = LogConfig {
        retention_bytes: Some(8000),
        retention_ms: Some(100_000),
        clock,
        ..small_config()
    };
    let log = Log::open(dir.path(), config).expect("open");
    for i in 0..80 {
        log.append(&batch("z", 2, 60, 900_000 + i)).expect("append");
    }
    let before = log.segment_count();
    assert!(log.size_bytes() > 8000);
    let by_size = log.apply_retention().expect("retention");
    assert!(by_size.deleted_segments > 0);
    assert!(
        log.size_bytes() >= 8000,
        "deleted too much: {}",
        log.size_bytes()
    );
    assert_eq!(log.segment_count(), before - by_size.deleted_segments);
    let start = log.start_offset();
    assert!(start > 0);
    assert!(
        matches!(log.read(0, 10), Err(StorageError::OffsetOutOfRange { start: s, .. }) if s == start)
    );
    assert!(!log.read(start, 10).expect("read").data.is_empty());

    // All records are now older than retention_ms, but the active segment stays.
    now.fetch_add(1_000_000, Ordering::SeqCst);
    log.apply_retention().expect("retention");
    assert_eq!(log.segment_count(), 1);
    assert_eq!(
        log.start_offset(),
        *log.segment_bases().last().expect("one")
    );
    // Snapshots are written once the data below them is synced.
    log.flush().expect("flush");
    let files = std::fs::read_dir(dir.path()).expect("list").count();
    assert_eq!(
        files, 6,
        "active segment's three files, the producer-state snapshot at its base, the checkpoint and the epoch cache"
    );
}

#[test]
fn delete_before_drops_only_whole_segments_below_the_offset_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    for i in 0..80 {
        log.append(&batch("d", 2, 60, i)).expect("append");
    }
    let bases = log.segment_bases();
    assert!(bases.len() > 3, "need several segments, got {bases:?}");
    // An offset inside the third segment keeps that segment whole.
    let cut = bases[2] + 1;
    assert_eq!(log.delete_before(cut).expect("delete"), bases[2]);
    assert_eq!(log.start_offset(), bases[2]);
    assert!(log.read(bases[2], 1 << 20).is_ok());
    assert!(matches!(
        log.read(bases[1], 10),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    // Below the start: nothing to do. Beyond the end: the active segment stays.
    assert_eq!(log.delete_before(0).expect("noop"), bases[2]);
    let end = log.end_offset();
    let last = *log.segment_bases().last().expect("active");
    assert_eq!(log.delete_before(end + 100).expect("all sealed"), last);
    log.close().expect("close");
    drop(log);
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    assert_eq!(log.start_offset(), last);
    assert_eq!(log.end_offset(), end);
    log.append(&batch("e", 1, 60, 99)).expect("append after");
    assert_eq!(log.end_offset(), end + 1);
}

#[test]
fn rejects_bad_input_with_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    let big = batch("big", 1, 5000, 0);
    let err = log.append(&big).expect_err("too big");
    assert!(
        matches!(err, StorageError::BatchTooLarge { limit: 4096, .. }),
        "{err}"
    );
    assert_eq!(log.end_offset(), 0);
    drop(log);

    std::fs::write(dir.path().join("notes.txt"), "hi").expect("write");
    let err = Log::open(dir.path(), small_config()).expect_err("unknown file");
    assert!(matches!(err, StorageError::UnknownFile { .. }), "{err}");
    std::fs::remove_file(dir.path().join("notes.txt")).expect("rm");
    std::fs::write(dir.path().join("00000000000000000007.log.truncating"), "x").expect("write");
    Log::open(dir.path(), small_config()).expect("leftover temporary files are cleaned");
    assert!(!dir
        .path()
        .join("00000000000000000007.log.truncating")
        .exists());

    let bad = LogConfig {
        segment_bytes: 10,
        ..small_config()
    };
    assert!(
        matches!(Log::open(dir.path(), bad), Err(StorageError::InvalidConfig(m)) if m.contains("segment_bytes"))
    );
}

#[test]
fn rebuilds_missing_and_damaged_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    for i in 0..40 {
        log.append(&batch("i", 4, 50, i * 10)).expect("append");
    }
    let expected = all_records(&log);
    let bases = log.segment_bases();
    drop(log);
    // Missing index files: rebuilt on open.
    std::fs::remove_file(segment_path(dir.path(), bases[0], INDEX_EXT)).expect("rm");
    // Damaged entries (right size): found when the segment is first read.
    let ti = segment_path(dir.path(), bases[1], INDEX_EXT);
    let len = std::fs::metadata(&ti).expect("meta").len() as usize;
    std::fs::write(&ti, vec![0xab; len]).expect("damage");
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    assert_eq!(log.recovery_report().rebuilt_indexes, 1);
    assert!(segment_path(dir.path(), bases[0], INDEX_EXT).exists());
    assert_eq!(all_records(&log), expected);
    let brute = expected.iter().find(|r| r.1 >= 555).map(|r| r.0);
    assert_eq!(log.offset_for_timestamp(555).expect("lookup"), brute);
}

#[test]
fn readers_see_a_consistent_prefix_while_appends_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(
        Log::open(
            dir.path(),
            LogConfig {
                segment_bytes: 64 * 1024,
                ..small_config()
            },
        )
        .expect("open"),
    );
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..2000 {
                log.append(&batch("p", 3, 20, i)).expect("append");
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let r = log.read(0, 1 << 20).expect("read");
        let mut next = 0;
        for b in BatchIter::new(&r.data) {
            let b = b.expect("whole batch");
            assert_eq!(b.base_offset(), next, "gap or overlap");
            b.validate().expect("intact batch");
            next = b.next_offset();
        }
        reads += 1;
    }
    writer.join().expect("writer");
    assert_eq!(all_records(&log).len(), 6000);
}

#[test]
fn concurrent_durable_appends_share_syncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        flush: FlushPolicy::EveryAppend,
        segment_bytes: 1 << 20,
        ..small_config()
    };
    let log = Arc::new(Log::open(dir.path(), config).expect("open"));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let info = log
                        .append(&batch("g", 1, 100, t * 1000 + i))
                        .expect("append");
                    assert!(
                        log.flushed_offset() > info.last_offset,
                        "returned before durable"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(log.end_offset(), 400);
    assert!(
        log.sync_count() < 400,
        "{} syncs for 400 appends: no group commit",
        log.sync_count()
    );
}

#[test]
fn interval_policy_flushes_when_due() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (now, clock) = manual_clock(0);
    let config = LogConfig {
        flush: FlushPolicy::Interval(std::time::Duration::from_millis(500)),
        clock,
        ..small_config()
    };
    let log = Log::open(dir.path(), config).expect("open");
    log.append(&batch("f", 1, 10, 0)).expect("append");
    assert!(!log.flush_if_due().expect("check"));
    assert_eq!(log.flushed_offset(), 0);
    now.store(600, Ordering::SeqCst);
    assert!(log.flush_if_due().expect("check"));
    assert_eq!(log.flushed_offset(), 1);
    let records = LogConfig {
        flush: FlushPolicy::EveryRecords(3),
        ..small_config()
    };
    let dir2 = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir2.path(), records).expect("open");
    log.append(&batch("f", 2, 10, 0)).expect("append");
    assert_eq!(log.flushed_offset(), 0);
    log.append(&batch("f", 1, 10, 0)).expect("append");
    assert_eq!(log.flushed_offset(), 3);
}

#[test]
fn leader_epochs_rise_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    log.append(&batch("e", 1, 10, 0)).expect("append");
    log.set_leader_epoch(3).expect("raise");
    log.append(&batch("e", 1, 10, 0)).expect("append");
    assert!(log.set_leader_epoch(2).is_err());
    let r = log.read(0, 1 << 20).expect("read");
    let epochs: Vec<i32> = BatchIter::new(&r.data)
        .map(|b| b.expect("batch").leader_epoch())
        .collect();
    assert_eq!(epochs, [0, 3]);
    drop(log);
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    assert_eq!(log.leader_epoch(), 3);
}

#[test]
fn a_recovered_tail_with_a_large_time_index_closes_cleanly() {
    // One index entry per batch, so the tail's time index outgrows the
    // first preallocation; recovery must leave room for the sealing entry.
    let config = || LogConfig {
        index_interval_bytes: 1,
        segment_bytes: 1 << 20,
        ..small_config()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let image = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config()).expect("open");
    for i in 0..1500 {
        log.append(&batch("big-index", 1, 10, i)).expect("append");
    }
    crash_image(&log, image.path());
    let recovered = Log::open(image.path(), config()).expect("recover");
    assert!(!recovered.recovery_report().clean);
    recovered.close().expect("clean close after recovery");
    drop(recovered);
    let reopened = Log::open(image.path(), config()).expect("reopen");
    assert!(reopened.recovery_report().clean);
    assert_eq!(
        reopened.offset_for_timestamp(1499).expect("lookup"),
        Some(1499)
    );
    assert_eq!(all_records(&reopened).len(), 1500);
}

#[test]
fn the_background_flusher_applies_the_interval_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (now, clock) = manual_clock(0);
    let config = LogConfig {
        flush: FlushPolicy::Interval(std::time::Duration::from_millis(50)),
        clock,
        ..small_config()
    };
    let log = Arc::new(Log::open(dir.path(), config).expect("open"));
    let told = Arc::new(AtomicI64::new(-1));
    let t = told.clone();
    log.set_durable_hook(Arc::new(move |offset, error| {
        assert!(error.is_none(), "{error:?}");
        t.fetch_max(offset, Ordering::SeqCst);
    }));
    assert_eq!(
        told.load(Ordering::SeqCst),
        0,
        "told the durable offset at once"
    );
    let pool = crate::storage::IoPool::start(2).expect("pool");
    let flusher =
        crate::storage::Flusher::start(std::time::Duration::from_millis(5), pool).expect("start");
    flusher.register(&log);
    // The clock stands still: nothing is due, by the append or the flusher.
    log.append(&batch("bg", 2, 10, 0)).expect("append");
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert_eq!(log.flushed_offset(), 0);
    // Time passes; only the flusher thread can make the records durable now.
    now.store(100, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.flushed_offset() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flusher never flushed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(flusher);
    // The hook hears of the flush right after it is recorded.
    while told.load(Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the hook never heard of the flush"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A batch from idempotent producer `pid` starting at sequence `seq`.
pub(super) fn idempotent(pid: i64, epoch: i16, seq: i32, n: usize) -> RecordBatch {
    let mut b = BatchBuilder::default().producer(crate::storage::ProducerFields {
        producer_id: pid,
        producer_epoch: epoch,
        base_sequence: seq,
    });
    for i in 0..n {
        b.push(100, None, Some(format!("{pid}-{seq}-{i}").as_bytes()), &[])
            .expect("push");
    }
    b.build().expect("non-empty")
}

#[test]
fn idempotent_retries_are_deduplicated_across_reopen_crash_and_roll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config();
    let log = Log::open(dir.path(), config.clone()).expect("open");
    let first = log.append(&idempotent(7, 0, 0, 3)).expect("append");
    assert!(!first.duplicate);
    let again = log.append(&idempotent(7, 0, 0, 3)).expect("retry");
    assert!(again.duplicate);
    assert_eq!((again.base_offset, again.last_offset), (0, 2));
    assert_eq!(log.end_offset(), 3, "the retry wrote nothing");
    let gap = log.append(&idempotent(7, 0, 5, 1)).expect_err("gap");
    assert!(gap.to_string().contains("expected 3"), "{gap}");
    log.close().expect("close");
    drop(log);

    // Clean reopen: the snapshot written on close holds the state.
    let log = Log::open(dir.path(), config.clone()).expect("reopen");
    assert!(log.recovery_report().clean);
    assert!(
        log.append(&idempotent(7, 0, 0, 3))
            .expect("retry")
            .duplicate
    );
    // Enough batches to roll several segments (snapshots at each roll).
    for k in 0..120 {
        let info = log.append(&idempotent(7, 0, 3 + k * 4, 4)).expect("append");
        assert!(!info.duplicate);
    }
    assert!(log.segment_count() > 2, "{}", log.segment_count());
    let end = log.end_offset();

    // Crash: no clean close; state comes from the last roll's snapshot
    // plus the active segment's batches.
    let crashed = tempfile::tempdir().expect("tempdir");
    crash_image(&log, crashed.path());
    drop(log);
    let log = Log::open(crashed.path(), config.clone()).expect("recover");
    assert!(!log.recovery_report().clean);
    assert_eq!(log.end_offset(), end);
    let retry = log
        .append(&idempotent(7, 0, 3 + 119 * 4, 4))
        .expect("retry");
    assert!(retry.duplicate);
    assert_eq!(retry.last_offset, end - 1);
    assert_eq!(log.end_offset(), end);
    // A newer epoch fences the old one.
    log.append(&idempotent(7, 1, 0, 1)).expect("new epoch");
    let fenced = log.append(&idempotent(7, 0, 483, 1)).expect_err("fenced");
    assert!(
        matches!(fenced, StorageError::ProducerFenced { .. }),
        "{fenced}"
    );

    // Truncation forgets the cut batches' sequences.
    let cut_to = log.end_offset() - 1;
    log.truncate_to(cut_to).expect("truncate");
    let again = log.append(&idempotent(7, 1, 0, 1)).expect("re-append");
    assert!(!again.duplicate, "the truncated batch is appended anew");
}
