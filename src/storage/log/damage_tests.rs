//! Tests of the log against damage and power loss: snapshots never
//! durable before their data, a failed roll, damaged batches and indexes,
//! the scrubber, and the recovery point following flushes.

use super::tests::{all_records, batch, idempotent, small_config};
use super::*;
use crate::storage::BatchIter;

/// Every record in the log, or the first read error.
fn try_all_records(log: &Log) -> Result<Vec<(i64, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut offset = log.start_offset();
    while offset < log.end_offset() {
        let r = log.read(offset, 1 << 20)?;
        if r.data.is_empty() {
            break;
        }
        for b in BatchIter::new(&r.data) {
            for rec in b.expect("batch").records() {
                let rec = rec.expect("record");
                if rec.offset >= offset {
                    out.push((rec.offset, rec.value.unwrap_or_default().to_vec()));
                    offset = rec.offset + 1;
                }
            }
        }
    }
    Ok(out)
}

#[test]
fn producer_snapshots_never_become_durable_before_their_data() {
    let root = tempfile::tempdir().expect("tempdir");
    let fs = crate::storage::CrashFs::new(root.path().join("live")).expect("fs");
    let config = LogConfig {
        fs: fs.clone(),
        ..small_config()
    };
    let log = Log::open(root.path().join("live/log"), config.clone()).expect("open");
    let mut seq = 0;
    while log.segment_count() < 3 {
        log.append(&idempotent(7, 0, seq, 4)).expect("append");
        seq += 4;
    }
    let snapshots = || {
        std::fs::read_dir(log.dir())
            .expect("list")
            .filter(|e| {
                let name = e.as_ref().expect("entry").file_name();
                name.to_string_lossy().ends_with(".snapshot")
            })
            .count()
    };
    assert_eq!(
        snapshots(),
        0,
        "no snapshot before the rolled data is synced"
    );
    for s in 0..64 {
        let image = fs.crash_image(s).expect("image");
        let dir = root.path().join(format!("crash-{s}"));
        image.write_to(&dir).expect("write");
        let recovered = Log::open(dir.join("log"), small_config()).expect("recover");
        let end = recovered.end_offset();
        // A retry of every batch: duplicates must point at their records.
        for k in 0..seq / 4 {
            let info = match recovered.append(&idempotent(7, 0, k * 4, 4)) {
                Ok(info) => info,
                // Older than the batches the log remembers: refused.
                Err(StorageError::DuplicateSequence { .. }) => continue,
                Err(e) => panic!("seed {s}: retry failed: {e}"),
            };
            if info.duplicate {
                assert!(info.last_offset < end, "seed {s}: duplicate past the end");
                let got = recovered.read(info.base_offset, 1 << 20).expect("read");
                let first = BatchIter::new(&got.data)
                    .next()
                    .expect("batch")
                    .expect("ok");
                let rec = first.records().next().expect("record").expect("ok");
                assert_eq!(
                    rec.value,
                    Some(format!("7-{}-0", k * 4).as_bytes()),
                    "seed {s}"
                );
            }
        }
    }
    log.flush().expect("flush");
    assert!(snapshots() > 0, "snapshots follow the flush");
}

#[test]
fn a_failed_snapshot_at_a_roll_leaves_every_append_readable() {
    let root = tempfile::tempdir().expect("tempdir");
    let fs = crate::storage::CrashFs::new(root.path()).expect("fs");
    fs.set_fault(Some(Box::new(|op, path| {
        op == crate::storage::fs::Op::Create && path.to_string_lossy().contains(".snapshot")
    })));
    let config = LogConfig {
        fs: fs.clone(),
        ..small_config()
    };
    let log = Log::open(root.path().join("log"), config).expect("open");
    let mut seq = 0;
    let mut last = 0;
    while log.segment_count() < 4 {
        last = log
            .append(&idempotent(7, 0, seq, 4))
            .expect("append")
            .last_offset;
        seq += 4;
        log.flush()
            .expect("a failed snapshot does not fail the flush");
    }
    let got = try_all_records(&log).expect("read");
    assert_eq!(
        got.len() as i64,
        last + 1,
        "every appended record is readable"
    );
    assert_eq!(got.last().map(|r| r.0), Some(last));
}

#[test]
fn a_damaged_batch_fails_alone_and_names_its_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    // Enough batches that the damaged one lies below the last index entry
    // (trusted after a clean close, so only the read path can catch it).
    for i in 0..16 {
        log.append(&batch(&format!("b{i}"), 2, 20, 1000))
            .expect("append");
    }
    log.close().expect("close");
    drop(log);
    // Flip one bit inside the value of the fourth batch (offsets 6..8).
    let path = segment_path(dir.path(), 0, LOG_EXT);
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes
        .windows(4)
        .position(|w| w == b"b3-0")
        .expect("value present");
    bytes[at + 1] ^= 0x01;
    std::fs::write(&path, &bytes).expect("damage");

    let log = Log::open(dir.path(), small_config()).expect("reopen");
    // The read from the start stops before the damage...
    let r = log.read(0, 1 << 20).expect("good batches first");
    let offsets: Vec<i64> = BatchIter::new(&r.data)
        .flat_map(|b| {
            b.expect("batch")
                .records()
                .map(|r| r.expect("rec").offset)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4, 5]);
    // ...a read of the damaged batch names it...
    match log.read(6, 1 << 20) {
        Err(StorageError::DamagedBatch { from, to, .. }) => assert_eq!((from, to), (6, 8)),
        other => panic!("expected a damaged batch, got {other:?}"),
    }
    // ...and reading past it works.
    let r = log.read(8, 1 << 20).expect("after the damage");
    assert!(!r.data.is_empty());
}

#[test]
fn a_damaged_index_after_a_clean_close_costs_a_scan_not_the_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 1 << 20,
        max_batch_bytes: 4096,
        ..small_config()
    };
    let log = Log::open(dir.path(), config.clone()).expect("open");
    for i in 0..40 {
        log.append(&batch(&format!("b{i}"), 2, 100, 1000))
            .expect("append");
    }
    let want = all_records(&log);
    log.close().expect("close");
    drop(log);
    let index = segment_path(dir.path(), 0, INDEX_EXT);
    let mut bytes = std::fs::read(&index).expect("index");
    assert!(bytes.len() >= 3 * OFFSET_ENTRY_LEN, "want several entries");
    // Point the second entry far past the data, and the third at the
    // wrong batch.
    bytes[OFFSET_ENTRY_LEN + 4..2 * OFFSET_ENTRY_LEN].copy_from_slice(&u32::MAX.to_be_bytes());
    bytes[2 * OFFSET_ENTRY_LEN..2 * OFFSET_ENTRY_LEN + 4].copy_from_slice(&1u32.to_be_bytes());
    std::fs::write(&index, &bytes).expect("damage");
    let log = Log::open(dir.path(), config.clone()).expect("reopen");
    assert_eq!(all_records(&log), want);

    // The same damage while the log is open (read path check only).
    drop(log);
    std::fs::write(&index, &bytes).expect("damage again");
    let log = Log::open(dir.path(), config).expect("reopen");
    for (offset, _, value) in &want {
        let r = log.read(*offset, 1).expect("read");
        let found = BatchIter::new(&r.data)
            .flat_map(|b| {
                b.expect("batch")
                    .records()
                    .map(|r| r.expect("rec"))
                    .filter(|r| r.offset == *offset)
                    .map(|r| r.value.unwrap_or_default().to_vec())
                    .collect::<Vec<_>>()
            })
            .next();
        assert_eq!(found.as_ref(), Some(value), "offset {offset}");
    }
}

#[test]
fn the_scrubber_finds_damage_in_sealed_segments_nobody_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    for i in 0..60 {
        log.append(&batch(&format!("s{i}"), 2, 60, 1000))
            .expect("append");
    }
    assert!(log.segment_count() >= 3);
    let clean = log.scrub(u64::MAX).expect("scrub");
    assert!(clean.damaged.is_empty(), "{clean:?}");
    assert!(clean.batches > 0);
    log.close().expect("close");
    drop(log);
    // Flip a bit inside a value in the first (sealed) segment.
    let path = segment_path(dir.path(), 0, LOG_EXT);
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes.windows(4).position(|w| w == b"s2-1").expect("value");
    bytes[at] ^= 0x04;
    std::fs::write(&path, &bytes).expect("damage");
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    // A small budget: one segment per call, going round the log.
    let mut found = Vec::new();
    for _ in 0..log.segment_count() - 1 {
        found.extend(log.scrub(1).expect("scrub").damaged);
    }
    assert_eq!(
        found,
        vec![(4, 6)],
        "the batch holding s2-1 (offsets 4 and 5)"
    );
}

#[test]
fn the_recovery_point_follows_flushes_so_a_crash_verifies_only_the_rest() {
    let root = tempfile::tempdir().expect("tempdir");
    let fs = crate::storage::CrashFs::new(root.path().join("live")).expect("fs");
    let config = LogConfig {
        fs: fs.clone(),
        segment_bytes: 1 << 20,
        checkpoint_interval_ms: 0,
        ..small_config()
    };
    let log = Log::open(root.path().join("live/log"), config).expect("open");
    for i in 0..100 {
        log.append(&batch(&format!("f{i}"), 2, 50, 1000))
            .expect("append");
    }
    log.flush().expect("flush");
    let flushed = log.end_offset();
    for i in 0..5 {
        log.append(&batch(&format!("u{i}"), 2, 50, 1000))
            .expect("append");
    }
    assert_eq!(log.segment_count(), 1, "all in the active segment");
    for seed in 0..16 {
        let dir = root.path().join(format!("crash-{seed}"));
        fs.crash_image(seed)
            .expect("image")
            .write_to(&dir)
            .expect("write");
        let recovered = Log::open(dir.join("log"), small_config()).expect("recover");
        let report = recovered.recovery_report();
        assert!(
            recovered.end_offset() >= flushed,
            "seed {seed}: flushed records lost"
        );
        assert!(
            report.batches_scanned <= 5,
            "seed {seed}: only batches past the recovery point are verified: {report:?}"
        );
        assert_eq!(all_records(&recovered).len() as i64, recovered.end_offset());
    }
}
