//! Crash recovery: damage a crash image of the log at every byte of its
//! last batches, and kill a real appending process with SIGKILL.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{batch_of, crash_image, read_all, restore, small_config, snapshot};
use sluice::storage::{segment::segment_path, FlushPolicy, Log, LogConfig};

/// A crash image of a log with several segments, plus the byte positions
/// (within the tail segment) of its batches and their end offsets.
struct Image {
    files: Vec<(String, Vec<u8>)>,
    tail_name: String,
    /// (position, length, next offset) of each batch in the tail segment.
    tail_batches: Vec<(usize, usize, i64)>,
    tail_base: i64,
}

fn build_image(root: &Path) -> Image {
    let live = root.join("live");
    let image = root.join("image");
    std::fs::create_dir_all(&image).expect("mkdir");
    // The tail lies past the recovery point, as it does between two
    // checkpoints: recovery verifies it batch by batch.
    let config = LogConfig {
        checkpoint_interval_ms: u64::MAX,
        ..small_config()
    };
    let log = Log::open(&live, config).expect("open");
    for i in 0..60u8 {
        let values: Vec<Vec<u8>> = (0..3)
            .map(|j| vec![i.wrapping_mul(7).wrapping_add(j); 20 + (i as usize % 40)])
            .collect();
        log.append(&batch_of(&values, 1_000 + i64::from(i)))
            .expect("append");
    }
    assert!(log.segment_count() >= 3, "want several segments");
    crash_image(&log, &image);
    let tail_base = *log.segment_bases().last().expect("segments");
    let r = log.read(tail_base, usize::MAX).expect("read tail");
    let mut tail_batches = Vec::new();
    let mut pos = 0;
    for b in sluice::storage::BatchIter::new(&r.data) {
        let b = b.expect("batch");
        tail_batches.push((pos, b.len(), b.next_offset()));
        pos += b.len();
    }
    assert!(tail_batches.len() >= 3, "want several batches in the tail");
    let tail_name = segment_path(Path::new(""), tail_base, "log")
        .display()
        .to_string();
    Image {
        files: snapshot(&image),
        tail_name,
        tail_batches,
        tail_base,
    }
}

/// Opens the damaged image, checks that exactly the batches before the
/// damage survive, and that appends continue from there.
fn check_recovery(dir: &Path, expect_end: i64, intact: &[common::Rec], what: &str) {
    let log = Log::open(dir, small_config()).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    assert_eq!(log.end_offset(), expect_end, "{what}: wrong end offset");
    let got = read_all(&log);
    assert_eq!(
        got.len(),
        intact.iter().filter(|r| r.offset < expect_end).count(),
        "{what}: wrong record count"
    );
    assert!(
        got.iter().zip(intact).all(|(a, b)| a == b),
        "{what}: records differ"
    );
    let info = log
        .append(&batch_of(&[b"after".to_vec()], 5))
        .unwrap_or_else(|e| panic!("{what}: append failed: {e}"));
    assert_eq!(
        info.base_offset, expect_end,
        "{what}: append got the wrong offset"
    );
}

#[test]
fn every_cut_and_bit_flip_in_the_last_batches_is_recovered() {
    let root = tempfile::tempdir().expect("tempdir");
    let image = build_image(root.path());
    let work = root.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    restore(&work, &image.files);
    let intact = read_all(&Log::open(&work, small_config()).expect("intact image opens"));

    let damaged_from = image.tail_batches[image.tail_batches.len() - 3].0;
    let real_len = image
        .tail_batches
        .last()
        .map(|b| b.0 + b.1)
        .expect("batches");
    // Where the log should end if the damage is at `pos`.
    let end_if_damaged_at = |pos: usize| {
        image
            .tail_batches
            .iter()
            .take_while(|(p, l, _)| p + l <= pos)
            .last()
            .map_or(image.tail_base, |b| b.2)
    };
    let tail = image
        .files
        .iter()
        .position(|(n, _)| *n == image.tail_name)
        .expect("tail file");

    let mut cases = 0;
    for cut in damaged_from..=real_len {
        let mut files = image.files.clone();
        files[tail].1.truncate(cut);
        restore(&work, &files);
        check_recovery(
            &work,
            end_if_damaged_at(cut),
            &intact,
            &format!("cut at byte {cut}"),
        );
        cases += 1;
    }
    for pos in damaged_from..real_len {
        let mut files = image.files.clone();
        files[tail].1[pos] ^= 1 << (pos % 8);
        restore(&work, &files);
        // The batch holding `pos` and everything after it must go.
        let batch_start = image
            .tail_batches
            .iter()
            .rev()
            .find(|b| b.0 <= pos)
            .expect("batch")
            .0;
        check_recovery(
            &work,
            end_if_damaged_at(batch_start),
            &intact,
            &format!("bit flip at byte {pos}"),
        );
        cases += 1;
    }
    assert!(cases > 300, "only {cases} damage cases");
}

#[test]
fn damage_in_a_middle_segment_drops_everything_after_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let image = build_image(root.path());
    let work = root.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    // Without a checkpoint every segment is verified.
    let mut files: Vec<_> = image
        .files
        .iter()
        .filter(|(n, _)| n != "recovery-point")
        .cloned()
        .collect();
    let first_log = files
        .iter()
        .position(|(n, _)| n.ends_with(".log"))
        .expect("log");
    files[first_log].1[100] ^= 0x40;
    restore(&work, &files);
    let log = Log::open(&work, small_config()).expect("open");
    let report = log.recovery_report();
    assert!(report.dropped_segments >= 2, "{report:?}");
    assert!(report.truncated_bytes > 0);
    assert_eq!(log.segment_count(), 1);
    assert!(log.end_offset() < 10);
}

/// Child side of `sigkill_never_loses_an_acknowledged_append`: when
/// `SLUICE_KILL_TEST_DIR` is set, appends durably forever, printing each
/// acknowledged end offset. Without it this does nothing.
#[test]
fn kill_test_child() {
    let Some(dir) = std::env::var_os("SLUICE_KILL_TEST_DIR") else {
        return;
    };
    let config = LogConfig {
        flush: FlushPolicy::EveryAppend,
        segment_bytes: 256 * 1024,
        ..small_config()
    };
    let log = Log::open(&dir, config).expect("child open");
    let mut next = log.end_offset();
    loop {
        // Values name their own offsets, so the parent can check them.
        let values: Vec<Vec<u8>> = (0..5)
            .map(|i| format!("value-{}", next + i).into_bytes())
            .collect();
        let info = log.append(&batch_of(&values, next)).expect("child append");
        next = info.last_offset + 1;
        println!("acked {next}");
    }
}

#[test]
fn sigkill_never_loses_an_acknowledged_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .subsec_nanos() as u64;
    let mut acked_total = 0;
    for round in 0..6 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill_test_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SLUICE_KILL_TEST_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut acked = 0i64;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("acked ") {
                    acked = n.trim().parse().expect("offset");
                }
            }
            acked
        });
        // A pseudo-random moment between 80 and 400 ms.
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(80 + (seed >> 33) % 320));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let acked = reader.join().expect("reader");

        let log = Log::open(dir.path(), small_config()).expect("reopen after kill");
        assert!(
            log.end_offset() >= acked,
            "round {round}: acknowledged up to {acked}, log ends at {}",
            log.end_offset()
        );
        for (i, r) in read_all(&log).iter().enumerate() {
            assert_eq!(r.offset, i as i64);
            assert_eq!(
                r.value.as_deref(),
                Some(format!("value-{}", r.offset).as_bytes()),
                "round {round}"
            );
        }
        acked_total = acked;
    }
    assert!(acked_total > 0, "the child never acknowledged an append");
}
