//! Every error status of the gRPC API, and extreme values in requests,
//! against a real in-process server on an ephemeral port.

mod common;

use bytes::Bytes;
use common::api::{code, fetch_all, produce_req, P};
use common::server::{test_config, TestServer};
use sluice::client::{pb, record};
use tonic::Code;

#[tokio::test]
async fn every_error_has_its_status_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.storage.max_message_bytes = 2048;
    let server = TestServer::start_with(config, false).await;
    let c = server.client().await;
    c.create_topic("t", 2, Default::default()).await.unwrap();
    c.produce(produce_req(
        "t",
        Some(0),
        vec![record(None, "a"), record(None, "b")],
    ))
    .await
    .unwrap();

    // NOT_FOUND
    let (k, m) = code(c.describe_topic("missing").await.unwrap_err());
    assert_eq!(k, Code::NotFound);
    assert!(m.contains("missing"), "{m}");
    let (k, _) = code(
        c.produce(produce_req("missing", None, vec![record(None, "x")]))
            .await
            .unwrap_err(),
    );
    assert_eq!(k, Code::NotFound);
    let (k, m) = code(
        c.produce(produce_req("t", Some(2), vec![record(None, "x")]))
            .await
            .unwrap_err(),
    );
    assert_eq!(k, Code::NotFound);
    assert!(m.contains("[0, 2)"), "{m}");
    let (k, _) = code(
        c.fetch(pb::FetchRequest {
            topic: "t".into(),
            partition: -1,
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(k, Code::NotFound);
    let (k, _) = code(c.subscribe("t", 9, P::Earliest(())).await.unwrap_err());
    assert_eq!(k, Code::NotFound);
    let (k, _) = code(c.delete_topic("missing").await.unwrap_err());
    assert_eq!(k, Code::NotFound);

    // OUT_OF_RANGE, naming the range.
    let (k, m) = code(
        c.fetch(pb::FetchRequest {
            topic: "t".into(),
            partition: 0,
            offset: 3,
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(k, Code::OutOfRange);
    assert!(m.contains("[0, 2]"), "{m}");
    let (k, _) = code(
        c.fetch(pb::FetchRequest {
            topic: "t".into(),
            partition: 0,
            offset: -1,
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(k, Code::OutOfRange);
    let (k, m) = code(c.subscribe("t", 0, P::Offset(10)).await.unwrap_err());
    assert_eq!(k, Code::OutOfRange);
    assert!(m.contains("[0, 2]"), "{m}");

    // INVALID_ARGUMENT
    for (name, parts) in [
        ("bad name", 1),
        ("", 1),
        ("..", 1),
        ("ok", 0),
        ("ok", 100_001),
    ] {
        let (k, m) = code(
            c.create_topic(name, parts, Default::default())
                .await
                .unwrap_err(),
        );
        assert_eq!(k, Code::InvalidArgument, "{name} {parts}: {m}");
    }
    let (k, m) = code(
        c.create_topic(
            "x",
            1,
            pb::TopicConfig {
                segment_bytes: Some(10),
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(k, Code::InvalidArgument);
    assert!(m.contains("[1024,"), "{m}");
    let (k, m) = code(
        c.fetch(pb::FetchRequest {
            topic: "t".into(),
            max_records: 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(k, Code::InvalidArgument);
    assert!(m.contains("max_records"), "{m}");
    let (k, _) = code(
        c.fetch(pb::FetchRequest {
            topic: "t".into(),
            max_wait_ms: -5,
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(k, Code::InvalidArgument);
    let mut bad_acks = produce_req("t", None, vec![record(None, "x")]);
    bad_acks.acks = 42;
    let (k, m) = code(c.produce(bad_acks).await.unwrap_err());
    assert_eq!(k, Code::InvalidArgument);
    assert!(m.contains("acks"), "{m}");
    let (k, _) = code(c.create_partitions("t", 1).await.unwrap_err());
    assert_eq!(k, Code::InvalidArgument);

    // ALREADY_EXISTS
    let (k, _) = code(
        c.create_topic("t", 1, Default::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(k, Code::AlreadyExists);

    // RESOURCE_EXHAUSTED, per record: the others are appended.
    let big = Bytes::from(vec![b'x'; 4096]);
    let r = c
        .produce(produce_req(
            "t",
            Some(1),
            vec![
                record(None, "small"),
                record(None, big),
                record(None, "small2"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(r.record_errors.len(), 1);
    assert_eq!(r.record_errors[0].index, 1);
    assert_eq!(r.record_errors[0].code, Code::ResourceExhausted as i32);
    assert!(
        r.record_errors[0].message.contains("max_message_bytes"),
        "{}",
        r.record_errors[0].message
    );
    assert_eq!(r.partitions[0].record_count, 2);
    // Per-record bad partition.
    let mut wrong = record(None, "w");
    wrong.partition = Some(5);
    let r = c
        .produce(produce_req("t", None, vec![record(None, "ok"), wrong]))
        .await
        .unwrap();
    assert_eq!(r.record_errors.len(), 1);
    assert_eq!(r.record_errors[0].code, Code::NotFound as i32);

    // The server still serves everyone after all that.
    assert_eq!(fetch_all(&c, "t", 1).await.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn extreme_values_get_answers_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    // No bound on skew: only negative timestamps are refused.
    let unbounded = pb::TopicConfig {
        timestamp_before_max_ms: Some(-1),
        timestamp_after_max_ms: Some(-1),
        ..Default::default()
    };
    c.create_topic("edge", 1, unbounded).await.unwrap();
    let stamped = |ts: &[i64]| -> Vec<pb::ProduceRecord> {
        ts.iter()
            .map(|&t| pb::ProduceRecord {
                value: Some(Bytes::from(t.to_string())),
                timestamp_ms: Some(t),
                ..Default::default()
            })
            .collect()
    };
    let r = c
        .produce(produce_req("edge", None, stamped(&[i64::MIN, -1])))
        .await
        .unwrap();
    assert!(r.partitions.is_empty(), "{r:?}");
    assert_eq!(r.record_errors.len(), 2, "{r:?}");
    for e in &r.record_errors {
        assert_eq!(e.code, Code::InvalidArgument as i32);
        assert!(e.message.contains("negative"), "{e:?}");
    }
    let r = c
        .produce(produce_req("edge", None, stamped(&[0, 1, 2, i64::MAX])))
        .await
        .unwrap();
    assert!(r.record_errors.is_empty());
    let got = fetch_all(&c, "edge", 0).await;
    assert_eq!(
        got.iter().map(|r| r.timestamp_ms).collect::<Vec<_>>(),
        vec![0, 1, 2, i64::MAX]
    );
    // An empty request appends nothing and fails nothing.
    let r = c.produce(produce_req("edge", None, vec![])).await.unwrap();
    assert!(r.partitions.is_empty() && r.record_errors.is_empty());

    for t in [i64::MIN, 0, i64::MAX] {
        let o = c.list_offsets("edge", Some(t)).await.unwrap();
        assert_eq!(o[0].latest_offset, 4);
    }
    let mut sub = c
        .subscribe("edge", 0, P::TimestampMs(i64::MAX))
        .await
        .unwrap();
    c.produce(produce_req("edge", None, vec![record(None, "after")]))
        .await
        .unwrap();
    // The record stamped i64::MAX is the first at or after i64::MAX.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.extend(sub.message().await.unwrap().unwrap().records);
    }
    assert_eq!(seen[0].offset, 3);
    assert_eq!(seen[1].value.as_deref(), Some(&b"after"[..]));

    let fetch = |offset, partition, max_records, max_bytes, max_wait_ms| pb::FetchRequest {
        topic: "edge".into(),
        partition,
        offset,
        max_records,
        max_bytes,
        max_wait_ms,
    };
    for (req, want) in [
        (fetch(i64::MAX, 0, 0, 0, 0), Code::OutOfRange),
        (fetch(i64::MIN, 0, 0, 0, 0), Code::OutOfRange),
        (fetch(0, i32::MAX, 0, 0, 0), Code::NotFound),
        (fetch(0, i32::MIN, 0, 0, 0), Code::NotFound),
        (fetch(0, 0, i32::MIN, 0, 0), Code::InvalidArgument),
        (fetch(0, 0, 0, i32::MIN, 0), Code::InvalidArgument),
        (fetch(0, 0, 0, i32::MAX, 0), Code::InvalidArgument),
        (fetch(0, 0, 0, 0, i32::MAX), Code::InvalidArgument),
    ] {
        let (k, m) = code(c.fetch(req.clone()).await.unwrap_err());
        assert_eq!(k, want, "{req:?}: {m}");
    }
    let (k, _) = code(c.create_partitions("edge", i32::MAX).await.unwrap_err());
    assert_eq!(k, Code::InvalidArgument);
    let (k, _) = code(c.create_partitions("edge", i32::MIN).await.unwrap_err());
    assert_eq!(k, Code::InvalidArgument);
    let (k, _) = code(
        c.create_topic("neg", i32::MIN, Default::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(k, Code::InvalidArgument);
    let (k, _) = code(
        c.create_topic(
            "neg",
            1,
            pb::TopicConfig {
                retention_ms: Some(i64::MIN),
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(k, Code::InvalidArgument);
    // Still serving.
    assert_eq!(
        c.list_offsets("edge", None).await.unwrap()[0].latest_offset,
        5
    );
    server.stop().await;
}
