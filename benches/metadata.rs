//! Cluster metadata benchmarks (criterion): the cost of the metadata
//! image at 10,000 partitions, the size the issue's figures ask for.
//!
//! ```text
//! cargo bench --bench metadata
//! ```
//!
//! * `apply_create`: applying the commands that build the image (10
//!   topics of 1,024 partitions, replication factor 3, 5 brokers);
//! * `snapshot_encode` / `snapshot_decode`: the snapshot body (the
//!   image's JSON) written by a leader and read by a node installing it.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::cluster::{Command, MetadataImage};

fn build() -> MetadataImage {
    let mut img = MetadataImage::default();
    for id in 1..=5u64 {
        img.apply(
            id,
            &Command::RegisterBroker {
                id,
                advertised: format!("broker-{id}:9400"),
                internal: format!("broker-{id}:9500"),
                kafka: None,
                rack: Some(format!("rack-{}", id % 3)),
            },
        );
    }
    for t in 0..10u64 {
        img.apply(
            100 + t,
            &Command::CreateTopic {
                name: format!("topic-{t}"),
                id: 0x5eed + t,
                partitions: 1024,
                replication_factor: 3,
                at_most_live: false,
                config: serde_json::json!({"retention_ms": 604800000}),
            },
        );
    }
    img
}

fn metadata(c: &mut Criterion) {
    let mut g = c.benchmark_group("metadata_10k_partitions");
    g.sample_size(20);
    g.bench_function("apply_create", |b| b.iter(|| black_box(build())));
    let img = build();
    let bytes = serde_json::to_vec(&img).expect("encode");
    println!(
        "snapshot body: {} bytes for {} partitions",
        bytes.len(),
        10 * 1024
    );
    g.bench_function("snapshot_encode", |b| {
        b.iter(|| black_box(serde_json::to_vec(&img).expect("encode")))
    });
    g.bench_function("snapshot_decode", |b| {
        b.iter(|| black_box(serde_json::from_slice::<MetadataImage>(&bytes).expect("decode")))
    });
    g.finish();
}

criterion_group!(benches, metadata);
criterion_main!(benches);
