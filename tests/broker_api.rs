//! The gRPC API against a real in-process server on an ephemeral port:
//! produce, fetch, subscribe, offsets, admin, retention and restarts.
//! (Error statuses and extreme values: `tests/errors.rs`.)

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::api::{code, fetch_all, produce_req, P};
use common::server::{test_config, TestServer};
use sluice::client::{pb, record};
use tonic::Code;

#[tokio::test]
async fn round_trip_keeps_every_field_and_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    c.create_topic("events", 1, Default::default())
        .await
        .unwrap();

    let mut sent = Vec::new();
    for batch in 0..5 {
        let records: Vec<_> = (0..20)
            .map(|i| pb::ProduceRecord {
                key: (i % 3 != 0).then(|| Bytes::from(format!("key-{i}"))),
                value: (i != 7).then(|| Bytes::from(format!("value-{batch}-{i}"))),
                headers: vec![
                    pb::Header {
                        key: "trace".into(),
                        value: Some(Bytes::from_static(b"\x00\xff")),
                    },
                    pb::Header {
                        key: "null".into(),
                        value: None,
                    },
                ],
                timestamp_ms: Some(1_700_000_000_000 + i),
                partition: None,
            })
            .collect();
        sent.extend(records.clone());
        let r = c
            .produce(produce_req("events", None, records))
            .await
            .unwrap();
        assert_eq!(r.sequence, 7);
        assert!(r.record_errors.is_empty());
        assert_eq!(r.partitions.len(), 1);
        assert_eq!(r.partitions[0].base_offset, batch * 20);
        assert_eq!(r.partitions[0].record_count, 20);
    }
    let got = fetch_all(&c, "events", 0).await;
    assert_eq!(got.len(), sent.len());
    for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(g.offset, i as i64);
        assert_eq!(g.key, s.key);
        assert_eq!(g.value, s.value);
        assert_eq!(Some(g.timestamp_ms), s.timestamp_ms);
        assert_eq!(g.headers, s.headers);
    }
    // max_records and the lag figures.
    let r = c
        .fetch(pb::FetchRequest {
            topic: "events".into(),
            partition: 0,
            offset: 33,
            max_records: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        r.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![33, 34, 35, 36, 37]
    );
    assert_eq!(r.next_offset, 38);
    assert_eq!(r.high_watermark, 100);
    assert_eq!(r.log_start_offset, 0);
    server.stop().await;
}

/// FetchBatches serves the same records as Fetch, as stored batches, from
/// the batch holding the offset; waits like Fetch; refuses like Fetch.
#[tokio::test]
async fn fetch_batches_serves_the_records_fetch_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    c.create_topic("raw", 1, Default::default()).await.unwrap();
    for batch in 0..4 {
        let records: Vec<_> = (0..10)
            .map(|i| pb::ProduceRecord {
                key: (i % 2 == 0).then(|| Bytes::from(format!("k{i}"))),
                value: (i != 3).then(|| Bytes::from(format!("v-{batch}-{i}"))),
                headers: vec![pb::Header {
                    key: "h".into(),
                    value: (i % 3 == 0).then(|| Bytes::from_static(b"\x00")),
                }],
                timestamp_ms: Some(1_700_000_000_000 + batch * 10 + i),
                partition: None,
            })
            .collect();
        c.produce(produce_req("raw", None, records)).await.unwrap();
    }
    let fetched = fetch_all(&c, "raw", 0).await;
    assert_eq!(fetched.len(), 40);

    // From the middle of the second batch, the whole log.
    let mut offset = 15;
    let mut got = Vec::new();
    loop {
        let r = c
            .fetch_batches(pb::FetchBatchesRequest {
                topic: "raw".into(),
                partition: 0,
                offset,
                max_bytes: 1,
                max_wait_ms: 0,
            })
            .await
            .unwrap();
        assert_eq!((r.high_watermark, r.log_start_offset), (40, 0));
        if r.batches.is_empty() {
            assert_eq!(r.next_offset, offset);
            break;
        }
        // max_bytes 1: one whole batch each time, starting before the
        // offset asked for the first time.
        let first = sluice::client::batches::records(&r.batches, 0)
            .next()
            .unwrap()
            .unwrap()
            .offset;
        assert_eq!(first, offset / 10 * 10);
        let records = sluice::client::batches::consumed_records(&r, offset).unwrap();
        assert_eq!(r.next_offset, records.last().unwrap().offset + 1);
        offset = r.next_offset;
        got.extend(records);
    }
    assert_eq!(got, fetched[15..].to_vec());

    // A long poll at the end wakes when a record arrives.
    let c2 = c.clone();
    let poll = async move {
        c2.fetch_batches(pb::FetchBatchesRequest {
            topic: "raw".into(),
            partition: 0,
            offset: 40,
            max_bytes: 0,
            max_wait_ms: 60_000,
        })
        .await
    };
    let r = wakes_on_append(&c, "raw", "late", poll).await;
    let late = sluice::client::batches::consumed_records(&r, 40).unwrap();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].value.as_deref(), Some(&b"late"[..]));

    // Refusals name the rule.
    let req = |topic: &str, offset, max_bytes| pb::FetchBatchesRequest {
        topic: topic.into(),
        partition: 0,
        offset,
        max_bytes,
        max_wait_ms: 0,
    };
    let (status, msg) = code(c.fetch_batches(req("raw", 99, 0)).await.unwrap_err());
    assert_eq!(status, Code::OutOfRange, "{msg}");
    assert!(msg.contains("[0, 41]"), "{msg}");
    let (status, msg) = code(c.fetch_batches(req("raw", 0, -1)).await.unwrap_err());
    assert_eq!(status, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("max_bytes"), "{msg}");
    let (status, _) = code(c.fetch_batches(req("nope", 0, 0)).await.unwrap_err());
    assert_eq!(status, Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn keyed_records_land_where_kafka_puts_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    c.create_topic("keyed", 7, Default::default())
        .await
        .unwrap();
    // murmur2 values from Kafka's own tests (UtilsTest.testMurmur2).
    let kafka: [(&str, i32); 3] = [
        ("21", -973932308),
        ("foobar", -790332482),
        ("abc", 479470107),
    ];
    for (key, hash) in kafka {
        let expected = (hash & 0x7fff_ffff) % 7;
        let r = c
            .produce(produce_req("keyed", None, vec![record(Some(key), "v")]))
            .await
            .unwrap();
        assert_eq!(r.partitions[0].partition, expected, "key {key}");
        // The same key always goes to the same partition.
        let again = c
            .produce(produce_req("keyed", None, vec![record(Some(key), "w")]))
            .await
            .unwrap();
        assert_eq!(again.partitions[0].partition, expected);
    }

    // Keyless requests rotate over the partitions.
    c.create_topic("spread", 4, Default::default())
        .await
        .unwrap();
    for _ in 0..8 {
        c.produce(produce_req(
            "spread",
            None,
            vec![record(None, "a"), record(None, "b")],
        ))
        .await
        .unwrap();
    }
    let offsets = c.list_offsets("spread", None).await.unwrap();
    assert_eq!(offsets.len(), 4);
    for p in offsets {
        assert_eq!(p.latest_offset, 4, "partition {}", p.partition);
    }
    server.stop().await;
}

/// Runs `poll` (a long poll of `topic`'s partition 0 at its end), checks
/// that it waits, appends `value`, and returns what the poll got.
async fn wakes_on_append<T: Send + 'static>(
    c: &sluice::client::Client,
    topic: &str,
    value: &'static str,
    poll: impl std::future::Future<Output = Result<T, sluice::client::ClientError>> + Send + 'static,
) -> T {
    let poll = tokio::spawn(poll);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!poll.is_finished(), "the poll must wait for data");
    c.produce(produce_req(topic, None, vec![record(None, value)]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .expect("the poll woke up")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn long_poll_waits_and_wakes_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    c.create_topic("poll", 1, Default::default()).await.unwrap();

    // Nothing arrives: the poll returns empty when its wait ends.
    let r = c
        .fetch(pb::FetchRequest {
            topic: "poll".into(),
            partition: 0,
            offset: 0,
            max_wait_ms: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.records.is_empty());
    assert_eq!(r.next_offset, 0);

    // A record arrives during a long wait: the poll returns it.
    let c2 = c.clone();
    let poll = async move {
        c2.fetch(pb::FetchRequest {
            topic: "poll".into(),
            partition: 0,
            offset: 0,
            max_wait_ms: 60_000,
            ..Default::default()
        })
        .await
    };
    let r = wakes_on_append(&c, "poll", "hello", poll).await;
    assert_eq!(r.records.len(), 1);
    assert_eq!(r.records[0].value.as_deref(), Some(&b"hello"[..]));
    server.stop().await;
}

#[tokio::test]
async fn subscribe_delivers_history_then_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    c.create_topic("live", 2, Default::default()).await.unwrap();
    for i in 0..3 {
        c.produce(produce_req(
            "live",
            Some(1),
            vec![record(None, format!("old-{i}"))],
        ))
        .await
        .unwrap();
    }
    let mut from_start = c.subscribe("live", 1, P::Earliest(())).await.unwrap();
    let mut from_now = c.subscribe("live", 1, P::Latest(())).await.unwrap();
    let mut from_two = c.subscribe("live", 1, P::Offset(2)).await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = from_start.message().await.unwrap().unwrap();
        seen.extend(m.records);
    }
    assert_eq!(
        seen.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );

    for i in 0..3 {
        c.produce(produce_req(
            "live",
            Some(1),
            vec![record(None, format!("new-{i}"))],
        ))
        .await
        .unwrap();
    }
    let mut live = Vec::new();
    while live.len() < 3 {
        let m = from_start.message().await.unwrap().unwrap();
        live.extend(m.records);
    }
    assert_eq!(
        live.iter()
            .map(|r| r.value.clone().unwrap())
            .collect::<Vec<_>>(),
        vec!["new-0", "new-1", "new-2"]
    );
    let mut now = Vec::new();
    while now.len() < 3 {
        now.extend(from_now.message().await.unwrap().unwrap().records);
    }
    assert_eq!(now[0].offset, 3, "latest starts after the history");
    let first = from_two.message().await.unwrap().unwrap();
    assert_eq!(first.records[0].offset, 2);
    server.stop().await;
}

#[tokio::test]
async fn replay_from_offset_and_from_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    c.create_topic("history", 1, Default::default())
        .await
        .unwrap();
    let records = (0..10)
        .map(|i| pb::ProduceRecord {
            value: Some(Bytes::from(format!("r{i}"))),
            timestamp_ms: Some(1_000 * (i + 1)),
            ..Default::default()
        })
        .collect();
    c.produce(produce_req("history", None, records))
        .await
        .unwrap();

    let offsets = c.list_offsets("history", Some(4_500)).await.unwrap();
    assert_eq!(offsets[0].earliest_offset, 0);
    assert_eq!(offsets[0].latest_offset, 10);
    assert_eq!(offsets[0].timestamp_offset, Some(4));
    let none = c.list_offsets("history", Some(99_000)).await.unwrap();
    assert_eq!(none[0].timestamp_offset, Some(-1));

    let mut by_time = c
        .subscribe("history", 0, P::TimestampMs(7_000))
        .await
        .unwrap();
    let m = by_time.message().await.unwrap().unwrap();
    assert_eq!(m.records[0].offset, 6);
    assert_eq!(m.records[0].timestamp_ms, 7_000);

    let r = c
        .fetch(pb::FetchRequest {
            topic: "history".into(),
            partition: 0,
            offset: 8,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        r.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![8, 9]
    );
    server.stop().await;
}

#[tokio::test]
async fn restart_keeps_topics_settings_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    c.create_topic(
        "durable",
        3,
        pb::TopicConfig {
            retention_ms: Some(-1),
            segment_bytes: Some(16 * 1024),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for p in 0..3 {
        for chunk in 0..10 {
            let records = (chunk * 50..chunk * 50 + 50)
                .map(|i| record(None, format!("p{p}-{i:04}-{}", "x".repeat(100))))
                .collect();
            c.produce(produce_req("durable", Some(p), records))
                .await
                .unwrap();
        }
    }
    let before = c.describe_topic("durable").await.unwrap();
    assert!(before.partitions[0].segments > 1, "small segments rolled");
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    let after = c.describe_topic("durable").await.unwrap();
    assert_eq!(after, before);
    assert_eq!(after.config.unwrap().retention_ms, Some(-1));
    for p in 0..3 {
        let got = fetch_all(&c, "durable", p).await;
        assert_eq!(got.len(), 500);
        assert!(got[499]
            .value
            .as_ref()
            .unwrap()
            .starts_with(format!("p{p}-0499").as_bytes()));
    }
    // Appends continue at the old end.
    let r = c
        .produce(produce_req("durable", Some(0), vec![record(None, "next")]))
        .await
        .unwrap();
    assert_eq!(r.partitions[0].base_offset, 500);
    server.stop().await;
}

#[tokio::test]
async fn a_damaged_batch_on_disk_is_data_loss_for_its_offsets_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    c.create_topic("rot", 1, Default::default()).await.unwrap();
    // Enough batches that the damaged one lies below the last index entry,
    // where a clean restart trusts the data without reading it.
    for i in 0..16 {
        let records = (0..2)
            .map(|j| record(None, format!("b{i}-{j}-{}", "x".repeat(600))))
            .collect();
        c.produce(produce_req("rot", Some(0), records))
            .await
            .unwrap();
    }
    server.stop().await;
    // Flip one bit inside a value of the fourth batch (offsets 6 and 7).
    let path = dir.path().join("topics/rot/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(4).position(|w| w == b"b3-0").unwrap();
    bytes[at + 1] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    let fetch = |offset| pb::FetchRequest {
        topic: "rot".into(),
        partition: 0,
        offset,
        ..Default::default()
    };
    // The intact batches before the damage come back...
    let r = c.fetch(fetch(0)).await.unwrap();
    assert_eq!(r.records.len(), 6);
    assert_eq!(r.next_offset, 6);
    // ...a fetch at the damage names it, without server paths...
    let e = match c.fetch(fetch(6)).await {
        Err(sluice::client::ClientError::Status(s)) => s,
        other => panic!("expected DATA_LOSS, got {other:?}"),
    };
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e:?}");
    assert!(e.message().contains("[6, 8)"), "{}", e.message());
    assert!(
        e.message().contains("fetch from offset 8"),
        "{}",
        e.message()
    );
    let data_dir = dir.path().to_string_lossy().to_string();
    assert!(!e.message().contains(&data_dir), "{}", e.message());
    // ...and reading from its end goes on.
    let r = c.fetch(fetch(8)).await.unwrap();
    assert_eq!(r.records.first().map(|r| r.offset), Some(8));
    assert_eq!(r.records.len(), 24);
    server.stop().await;
}

#[tokio::test]
async fn pipelined_stream_and_acks_levels() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    c.create_topic("pipe", 1, Default::default()).await.unwrap();

    let mut pipeline = c.pipeline(16).await.unwrap();
    let mut replies = Vec::new();
    for i in 0..200 {
        let mut req = produce_req("pipe", None, vec![record(None, format!("{i}")); 5]);
        req.acks = if i % 2 == 0 {
            pb::Acks::All
        } else {
            pb::Acks::Leader
        } as i32;
        replies.push(pipeline.send(req).await.unwrap());
    }
    let mut bases = Vec::new();
    for (i, r) in replies.into_iter().enumerate() {
        let r = r.await.unwrap().unwrap();
        assert_eq!(r.sequence, i as u64);
        bases.push(r.partitions[0].base_offset);
    }
    // Appended in the order sent.
    assert_eq!(bases, (0..200).map(|i| i * 5).collect::<Vec<i64>>());

    // A failing request does not end the stream.
    let bad = pipeline
        .send(produce_req("nope", None, vec![record(None, "x"); 2]))
        .await
        .unwrap();
    let bad = bad.await.unwrap().unwrap();
    // One error for the run of two records that failed together.
    assert_eq!(bad.record_errors.len(), 1);
    assert_eq!(
        (bad.record_errors[0].index, bad.record_errors[0].count),
        (0, 2)
    );
    assert_eq!(bad.record_errors[0].code, Code::NotFound as i32);
    let after = pipeline
        .send(produce_req("pipe", None, vec![record(None, "y")]))
        .await
        .unwrap();
    assert_eq!(
        after.await.unwrap().unwrap().partitions[0].base_offset,
        1000
    );

    // acks=NONE: no offsets back, but appended.
    let mut none = produce_req("pipe", None, vec![record(None, "z")]);
    none.acks = pb::Acks::None as i32;
    let r = c.produce(none).await.unwrap();
    assert!(r.partitions.is_empty());
    let offsets = c.list_offsets("pipe", None).await.unwrap();
    assert_eq!(offsets[0].latest_offset, 1002);
    server.stop().await;
}

#[tokio::test]
async fn admin_add_partitions_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    c.create_topic("b", 1, Default::default()).await.unwrap();
    c.create_topic("a", 2, Default::default()).await.unwrap();
    let names: Vec<_> = c
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.partitions))
        .collect();
    assert_eq!(names, vec![("a".to_string(), 2), ("b".to_string(), 1)]);

    let t = c.create_partitions("a", 4).await.unwrap();
    assert_eq!(t.partitions.len(), 4);
    c.produce(produce_req("a", Some(3), vec![record(None, "p3")]))
        .await
        .unwrap();

    c.produce(produce_req("b", None, vec![record(None, "gone")]))
        .await
        .unwrap();
    let mut sub = c.subscribe("b", 0, P::Latest(())).await.unwrap();
    c.delete_topic("b").await.unwrap();
    let err = loop {
        match sub.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without an error"),
            Err(s) => break s,
        }
    };
    assert_eq!(err.code(), Code::NotFound);
    let (k, _) = code(c.describe_topic("b").await.unwrap_err());
    assert_eq!(k, Code::NotFound);
    // The name can be reused, empty.
    c.create_topic("b", 1, Default::default()).await.unwrap();
    assert_eq!(c.list_offsets("b", None).await.unwrap()[0].latest_offset, 0);
    server.stop().await;

    // Both survive a restart; the deleted data is gone.
    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    assert_eq!(c.describe_topic("a").await.unwrap().partitions.len(), 4);
    assert_eq!(c.list_offsets("b", None).await.unwrap()[0].latest_offset, 0);
    assert_eq!(
        std::fs::read_dir(dir.path().join("trash")).unwrap().count(),
        0
    );
    server.stop().await;
}

#[tokio::test]
async fn ten_thousand_partitions_with_bounded_open_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.storage.max_open_logs = 200;
    config.storage.preallocate_bytes = 4096;
    let server = TestServer::start_with(config, false).await;
    let c = server.client().await;
    const N: i32 = 10_000;
    c.create_topic("wide", N, Default::default()).await.unwrap();
    let records: Vec<_> = (0..N)
        .map(|p| pb::ProduceRecord {
            value: Some(Bytes::from(format!("to-{p}"))),
            partition: Some(p),
            ..Default::default()
        })
        .collect();
    let r = c.produce(produce_req("wide", None, records)).await.unwrap();
    assert!(r.record_errors.is_empty(), "{:?}", r.record_errors.first());
    assert_eq!(r.partitions.len(), N as usize);

    // Idle logs are closed as others open: never more than the hard
    // ceiling of 225 logs (three files each) of this topic, and at most 200
    // once the background eviction has caught up. Only descriptors under
    // this test's directory count (other tests share the process).
    let open_files = || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir.path().join("topics")))
            })
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let open = loop {
        let open = open_files();
        assert!(open <= 3 * 225, "{open} files of the topic open");
        if open <= 3 * 200 || std::time::Instant::now() > deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(open <= 3 * 200, "{open} files of the topic open");
    assert!(open >= 3, "the count sees the open logs");

    // Every partition holds its record, closed or not.
    for p in [0, 1, 4_999, 9_999] {
        let got = fetch_all(&c, "wide", p).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].value.as_deref(), Some(format!("to-{p}").as_bytes()));
    }
    let offsets = c.list_offsets("wide", None).await.unwrap();
    assert_eq!(offsets.len(), N as usize);
    assert!(offsets.iter().all(|o| o.latest_offset == 1));
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    assert_eq!(fetch_all(&c, "wide", 7_777).await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn retention_by_size_and_time_advances_the_start_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.storage.retention_check_interval_ms = 50;
    let server = TestServer::start_with(config, false).await;
    let c = server.client().await;
    c.create_topic(
        "by-size",
        1,
        pb::TopicConfig {
            segment_bytes: Some(4096),
            retention_bytes: Some(8192),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.create_topic(
        "by-time",
        1,
        pb::TopicConfig {
            segment_bytes: Some(4096),
            retention_ms: Some(60_000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.create_topic(
        "kept",
        1,
        pb::TopicConfig {
            segment_bytes: Some(4096),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // 100 requests of ~500 bytes: about 12 segments per topic. The by-time
    // records are stamped an hour ago.
    let old = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    for i in 0..100 {
        for topic in ["by-size", "by-time", "kept"] {
            let mut r = record(None, format!("{i:03}-{}", "x".repeat(480)));
            r.timestamp_ms = Some(old + i);
            c.produce(produce_req(topic, None, vec![r])).await.unwrap();
        }
    }
    let start = |topic: &'static str| {
        let c = c.clone();
        async move { c.list_offsets(topic, None).await.unwrap()[0].earliest_offset }
    };
    let size_of = |topic: &'static str| {
        let c = c.clone();
        async move { c.describe_topic(topic).await.unwrap().partitions[0].size_bytes }
    };
    // Retention runs on a timer: it may first run while records are still
    // arriving, so wait for its outcome, not its first run.
    let mut waited = 0;
    while (start("by-size").await == 0
        || size_of("by-size").await > 8192 + 4096
        || start("by-time").await < 90)
        && waited < 400
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    let size = &c.describe_topic("by-size").await.unwrap().partitions[0];
    assert!(size.log_start_offset > 0, "{size:?}");
    assert!(size.size_bytes <= 8192 + 4096, "{size:?}");
    // Everything older than a minute goes, except the active segment.
    let time = &c.describe_topic("by-time").await.unwrap().partitions[0];
    assert!(time.log_start_offset >= 90, "{time:?}");
    assert_eq!(
        start("kept").await,
        0,
        "default retention (7 days) keeps it all"
    );
    // Reading below the new start is OUT_OF_RANGE, naming the range.
    let (k, m) = code(
        c.fetch(pb::FetchRequest {
            topic: "by-size".into(),
            partition: 0,
            offset: 0,
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(k, Code::OutOfRange);
    assert!(
        m.contains(&format!("[{}, 100]", size.log_start_offset)),
        "{m}"
    );
    server.stop().await;
}
