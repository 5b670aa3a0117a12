//! Property test: random appends, rolls, reads, truncations, retention and
//! reopens (clean and after a crash) give the same records as a plain
//! in-memory model of the log.

mod common;

use common::{batch_of, crash_image, decode, read_all, small_config, Rec};
use proptest::prelude::*;
use sluice::storage::{Log, LogConfig, StorageError};

#[derive(Debug, Clone)]
enum Op {
    /// Append a batch of values with this timestamp.
    Append(Vec<Vec<u8>>, i64),
    /// Read from a point in the log (a fraction of its range) with a byte limit.
    Read(f64, usize),
    /// Truncate at a point in the log (a fraction of its range).
    Truncate(f64),
    /// Look up the first offset at or after a timestamp.
    Timestamp(i64),
    /// Delete old segments down to this many bytes.
    Retain(u64),
    /// Close cleanly and reopen.
    Reopen,
    /// Reopen from a copy taken while the log was open (a crash).
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..6), 0i64..10_000).prop_map(|(v, t)| Op::Append(v, t)),
        3 => (0.0..1.0f64, 1usize..5000).prop_map(|(f, m)| Op::Read(f, m)),
        1 => (0.0..1.0f64).prop_map(Op::Truncate),
        2 => (0i64..10_010).prop_map(Op::Timestamp),
        1 => (2000u64..20_000).prop_map(Op::Retain),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

/// The model: batches as (base offset, records), oldest first.
#[derive(Default)]
struct Model {
    batches: Vec<(i64, Vec<Rec>)>,
    end: i64,
}

impl Model {
    fn records(&self, from: i64) -> Vec<Rec> {
        self.batches
            .iter()
            .flat_map(|(_, r)| r.iter())
            .filter(|r| r.offset >= from)
            .cloned()
            .collect()
    }
    fn start(&self) -> i64 {
        self.batches.first().map_or(self.end, |b| b.0)
    }
}

/// Segment size, index interval and first preallocation vary per case, so
/// rolls, index density and preallocation growth are all exercised.
#[derive(Debug, Clone, Copy)]
struct Shape {
    segment_bytes: u64,
    index_interval_bytes: u64,
    initial_preallocate_bytes: u64,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        prop::sample::select(vec![2048u64, 4096, 65536]),
        prop::sample::select(vec![1u64, 64, 256, 4096]),
        prop::sample::select(vec![512u64, 1024, 8192]),
    )
        .prop_map(
            |(segment_bytes, index_interval_bytes, initial_preallocate_bytes)| Shape {
                segment_bytes,
                index_interval_bytes,
                initial_preallocate_bytes,
            },
        )
}

fn config(shape: Shape, retention: Option<u64>) -> LogConfig {
    LogConfig {
        retention_bytes: retention,
        segment_bytes: shape.segment_bytes,
        index_interval_bytes: shape.index_interval_bytes,
        initial_preallocate_bytes: shape.initial_preallocate_bytes,
        max_batch_bytes: 2048,
        ..small_config()
    }
}

fn point(start: i64, end: i64, f: f64) -> i64 {
    start + ((end - start) as f64 * f) as i64
}

fn run(shape: Shape, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let root = tempfile::tempdir().expect("tempdir");
    let mut generation = 0;
    let mut dir = root.path().join("0");
    let mut log = Log::open(&dir, config(shape, None)).expect("open");
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Append(values, ts) => {
                let batch = batch_of(&values, ts);
                let info = log.append(&batch).expect("append");
                prop_assert_eq!(info.base_offset, model.end);
                let recs = decode(batch.as_bytes(), 0)
                    .into_iter()
                    .map(|r| Rec {
                        offset: r.offset + model.end,
                        ..r
                    })
                    .collect::<Vec<_>>();
                model.batches.push((model.end, recs));
                model.end = info.last_offset + 1;
            }
            Op::Read(f, max) => {
                let offset = point(model.start(), model.end, f);
                let r = log.read(offset, max).expect("read");
                let got = decode(&r.data, offset);
                let want = model.records(offset);
                prop_assert!(
                    want.starts_with(&got),
                    "read at {} is not a prefix of the model",
                    offset
                );
                prop_assert_eq!(got.is_empty(), offset == model.end);
            }
            Op::Truncate(f) => {
                let offset = point(model.start(), model.end, f);
                let new_end = log.truncate_to(offset).expect("truncate");
                if offset < model.end {
                    let start = model.start();
                    let keep = model
                        .batches
                        .iter()
                        .position(|(_, r)| r.last().is_some_and(|l| l.offset >= offset))
                        .unwrap_or(model.batches.len());
                    model.batches.truncate(keep);
                    model.end = model
                        .batches
                        .last()
                        .and_then(|(_, r)| r.last())
                        .map_or(start, |l| l.offset + 1);
                }
                prop_assert_eq!(new_end, model.end);
            }
            Op::Timestamp(ts) => {
                let want = model
                    .records(model.start())
                    .into_iter()
                    .find(|r| r.timestamp >= ts)
                    .map(|r| r.offset);
                prop_assert_eq!(log.offset_for_timestamp(ts).expect("lookup"), want);
            }
            Op::Retain(bytes) => {
                drop(log);
                log = Log::open(&dir, config(shape, Some(bytes))).expect("reopen");
                let deleted = log.apply_retention().expect("retention");
                let start = log.start_offset();
                model.batches.retain(|(b, _)| *b >= start);
                // Retention never takes the log below its byte limit.
                prop_assert!(deleted.deleted_segments == 0 || log.size_bytes() >= bytes);
                let below_is_out_of_range = matches!(
                    log.read(start - 1, 100),
                    Err(StorageError::OffsetOutOfRange { .. })
                );
                prop_assert!(start == 0 || below_is_out_of_range);
            }
            Op::Reopen => {
                drop(log);
                log = Log::open(&dir, config(shape, None)).expect("reopen");
                prop_assert!(log.recovery_report().clean);
            }
            Op::Crash => {
                generation += 1;
                let image = root.path().join(generation.to_string());
                std::fs::create_dir(&image).expect("mkdir");
                crash_image(&log, &image);
                drop(log);
                dir = image;
                log = Log::open(&dir, config(shape, None)).expect("recover");
                prop_assert_eq!(log.recovery_report().truncated_bytes, 0);
            }
        }
        prop_assert_eq!(log.end_offset(), model.end);
        prop_assert_eq!(log.start_offset(), model.start());
    }
    prop_assert_eq!(read_all(&log), model.records(model.start()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_an_in_memory_model(shape in shape(), ops in prop::collection::vec(op(), 1..60)) {
        run(shape, ops)?;
    }
}
