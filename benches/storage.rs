//! Storage engine benchmarks (criterion).
//!
//! ```text
//! cargo bench --bench storage                 # everything
//! cargo bench --bench storage -- append       # one group
//! SLUICE_BENCH_OPEN_GIB=4 cargo bench --bench storage -- open   # smaller open test
//! ```
//!
//! Logs live in a temporary directory under `$SLUICE_BENCH_DIR` (default:
//! the system temp dir), so the figures are for that disk's page cache.

use std::{
    hint::black_box,
    path::PathBuf,
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::storage::{BatchBuilder, BatchIter, FlushPolicy, Log, LogConfig, RecordBatch};

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("SLUICE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(base).expect("bench dir")
}

/// A batch of `count` records, each with an 8-byte key and a `size`-byte value.
fn batch(count: usize, size: usize) -> RecordBatch {
    let value = vec![0x5au8; size];
    let mut b = BatchBuilder::with_capacity(count * (size + 32) + 64);
    for i in 0..count {
        b.push(
            1_700_000_000_000 + i as i64,
            Some(&(i as u64).to_be_bytes()),
            Some(&value),
            &[],
        )
        .expect("push");
    }
    b.build().expect("records")
}

fn config(flush: FlushPolicy) -> LogConfig {
    LogConfig {
        flush,
        segment_bytes: 1 << 30,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// Appends `iters` copies of `batch` to a fresh log and times only the appends.
fn timed_appends(batch: &RecordBatch, flush: FlushPolicy, iters: u64) -> Duration {
    let dir = bench_dir();
    let log = Log::open(dir.path(), config(flush)).expect("open");
    let start = Instant::now();
    for _ in 0..iters {
        black_box(log.append(batch).expect("append"));
    }
    let elapsed = start.elapsed();
    drop(log);
    elapsed
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    for (count, size) in [(100usize, 1024usize), (100, 100)] {
        let b = batch(count, size);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(
            BenchmarkId::new("page_cache_bytes", format!("{count}x{size}B")),
            |bencher| bencher.iter_custom(|iters| timed_appends(&b, FlushPolicy::Manual, iters)),
        );
        g.throughput(Throughput::Elements(count as u64));
        g.bench_function(
            BenchmarkId::new("page_cache_records", format!("{count}x{size}B")),
            |bencher| bencher.iter_custom(|iters| timed_appends(&b, FlushPolicy::Manual, iters)),
        );
    }
    let b = batch(100, 1024);
    g.throughput(Throughput::Bytes(b.len() as u64));
    g.bench_function(
        BenchmarkId::new("durable_every_append", "100x1024B"),
        |bencher| bencher.iter_custom(|iters| timed_appends(&b, FlushPolicy::EveryAppend, iters)),
    );
    g.finish();
}

fn read(c: &mut Criterion) {
    let dir = bench_dir();
    let log = Log::open(dir.path(), config(FlushPolicy::Manual)).expect("open");
    let b = batch(100, 1024);
    let total_batches = (1u64 << 30) / b.len() as u64; // about 1 GiB
    for _ in 0..total_batches {
        log.append(&b).expect("append");
    }
    let end = log.end_offset();
    const MAX_BYTES: usize = 1 << 20;
    let mut g = c.benchmark_group("read");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    // Bytes per read: every read returns as many whole batches as fit.
    let per_read = (MAX_BYTES / b.len() * b.len()) as u64;
    g.throughput(Throughput::Bytes(per_read));

    let mut offset = 0;
    g.bench_function("sequential_decode_1MiB", |bencher| {
        bencher.iter(|| {
            if offset >= end {
                offset = 0;
            }
            let r = log.read(offset, MAX_BYTES).expect("read");
            let mut value_bytes = 0usize;
            for batch in BatchIter::new(&r.data) {
                for rec in batch.expect("batch").records() {
                    let rec = rec.expect("record");
                    value_bytes += rec.value.map_or(0, <[u8]>::len);
                    offset = rec.offset + 1;
                }
            }
            black_box(value_bytes)
        })
    });
    let mut offset = 0;
    let mut sink = vec![0u8; MAX_BYTES];
    g.bench_function("sequential_copy_1MiB", |bencher| {
        bencher.iter(|| {
            if offset >= end {
                offset = 0;
            }
            let r = log.read(offset, MAX_BYTES).expect("read");
            sink[..r.data.len()].copy_from_slice(&r.data);
            let last = BatchIter::new(&r.data)
                .last()
                .expect("batch")
                .expect("whole");
            offset = last.next_offset();
            black_box(&sink);
        })
    });
    g.finish();
}

fn open(c: &mut Criterion) {
    let gib: u64 = std::env::var("SLUICE_BENCH_OPEN_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = bench_dir();
    {
        let log = Log::open(dir.path(), config(FlushPolicy::Manual)).expect("open");
        let b = batch(100, 1024);
        let batches = (gib << 30) / b.len() as u64;
        let started = Instant::now();
        for _ in 0..batches {
            log.append(&b).expect("append");
        }
        log.close().expect("close");
        eprintln!(
            "open: built a {gib} GiB log of {} segments in {:.1?}",
            log.segment_count(),
            started.elapsed()
        );
    }
    let mut g = c.benchmark_group("open");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.bench_function(BenchmarkId::new("clean", format!("{gib}GiB")), |bencher| {
        bencher.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let log = Log::open(dir.path(), config(FlushPolicy::Manual)).expect("open");
                total += start.elapsed();
                assert!(log.recovery_report().clean);
                drop(log);
            }
            total
        })
    });
    g.finish();
}

/// What the broker pays per batch before appending: encoding records into a
/// batch, or validating a batch that arrived as bytes.
fn batch_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    g.sample_size(30).measurement_time(Duration::from_secs(4));
    let value = vec![0x5au8; 1024];
    let built = batch(100, 1024);
    g.throughput(Throughput::Bytes(built.len() as u64));
    g.bench_function("build_100x1024B", |bencher| {
        bencher.iter(|| {
            let mut b = BatchBuilder::with_capacity(built.len());
            for i in 0..100u64 {
                b.push(
                    1_700_000_000_000 + i as i64,
                    Some(&i.to_be_bytes()),
                    Some(&value),
                    &[],
                )
                .expect("push");
            }
            black_box(b.build())
        })
    });
    let bytes = built.as_bytes().to_vec();
    g.bench_function("validate_100x1024B", |bencher| {
        bencher.iter_batched(
            || bytes.clone(),
            |b| black_box(RecordBatch::from_bytes(b).expect("valid")),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The batch checksum before (crc32fast's CRC-32) and since Kafka's
/// format (CRC-32C) was adopted, over 1 MiB.
fn checksums(c: &mut Criterion) {
    let mut g = c.benchmark_group("checksum");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    let data = vec![0xa5u8; 1 << 20];
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("crc32_ieee_1MiB", |bencher| {
        bencher.iter(|| black_box(crc32fast::hash(black_box(&data))))
    });
    g.bench_function("crc32c_1MiB", |bencher| {
        bencher.iter(|| black_box(sluice::storage::batch::checksum(black_box(&data))))
    });
    g.finish();
}

criterion_group!(benches, append, read, open, batch_codec, checksums);
criterion_main!(benches);
