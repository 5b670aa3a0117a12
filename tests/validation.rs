//! Valid but extreme input and the rules a client cannot break: producer
//! ids and epochs only as the broker hands them out, timestamps within the
//! topic's bounds, topic settings that leave the topic usable, deletion of
//! topics with the longest names, no server paths in messages, and no
//! group created by a typo.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::server::{test_config, TestServer};
use sluice::client::{pb, record, Client};
use tonic::Code;

async fn start(
    config: impl FnOnce(&mut sluice::config::ServerConfig),
) -> (tempfile::TempDir, TestServer, Client) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    config(&mut c);
    let server = TestServer::start_with(c, false).await;
    let client = server.client().await;
    (dir, server, client)
}

fn code(e: sluice::client::ClientError) -> (Code, String) {
    match e {
        sluice::client::ClientError::Status(s) => (s.code(), s.message().to_string()),
        other => (Code::Unknown, other.to_string()),
    }
}

async fn init(client: &Client, bump: Option<(i64, i32)>) -> Result<(i64, i32), (Code, String)> {
    client
        .broker()
        .init_producer(pb::InitProducerRequest {
            producer_id: bump.map(|b| b.0),
            producer_epoch: bump.map_or(0, |b| b.1),
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.producer_id, r.producer_epoch)
        })
        .map_err(|s| (s.code(), s.message().to_string()))
}

fn idempotent(topic: &str, p: (i64, i32), base_sequence: i32, n: usize) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: topic.into(),
        partition: Some(0),
        records: (0..n)
            .map(|i| record(None, format!("v{}", base_sequence as usize + i)))
            .collect(),
        producer_id: Some(p.0),
        producer_epoch: p.1,
        base_sequence,
        ..Default::default()
    }
}

#[tokio::test]
async fn producer_ids_and_epochs_come_only_from_the_broker() {
    let (_dir, server, client) = start(|_| {}).await;
    client
        .create_topic("t", 1, pb::TopicConfig::default())
        .await
        .expect("create");
    let a = init(&client, None).await.expect("init");

    // An id never handed out, even at sequence 0.
    let (c, m) = code(
        client
            .produce(idempotent("t", (a.0 + 5_000, 0), 0, 1))
            .await
            .expect_err("unknown id"),
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("never handed out"), "{m}");

    // Another producer's id with epoch + 1 does not fence it.
    let (c, m) = code(
        client
            .produce(idempotent("t", (a.0, a.1 + 1), 0, 1))
            .await
            .expect_err("epoch never handed out"),
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    let r = client
        .produce(idempotent("t", a, 0, 2))
        .await
        .expect("the real producer goes on");
    assert!(r.record_errors.is_empty(), "{r:?}");

    // Bumping needs the current epoch: two instances that both ask with
    // epoch 0 do not both get epoch 1.
    assert_eq!(init(&client, Some(a)).await, Ok((a.0, 1)));
    let (c, m) = init(&client, Some(a)).await.expect_err("stale bump");
    assert_eq!(c, Code::Aborted, "{m}");
    assert!(m.contains("fenced"), "{m}");
    // The fenced epoch is refused per record, even on a partition the new
    // epoch has not written to.
    let r = client
        .produce(idempotent("t", a, 2, 1))
        .await
        .expect("answered");
    assert_eq!(r.record_errors.len(), 1, "{r:?}");
    assert_eq!(r.record_errors[0].code, Code::Aborted as i32);
    assert_eq!(init(&client, Some((a.0, 1))).await, Ok((a.0, 2)));

    // What was handed out survives a restart.
    let dir = server.dir.clone();
    server.stop().await;
    let server = TestServer::start_with(test_config(&dir), false).await;
    let client = server.client().await;
    let (c, _) = init(&client, Some((a.0, 1)))
        .await
        .expect_err("still stale");
    assert_eq!(c, Code::Aborted);
    let r = client
        .produce(idempotent("t", (a.0, 2), 0, 1))
        .await
        .expect("current epoch");
    assert!(r.record_errors.is_empty(), "{r:?}");
    server.stop().await;
}

#[tokio::test]
async fn idle_producers_expire_on_a_timer_and_partitions_cap_them() {
    let (_dir, server, client) = start(|c| {
        c.storage.retention_check_interval_ms = 50;
        c.storage.producer_expiration_ms = 300;
        c.storage.max_producers_per_partition = 2;
    })
    .await;
    client
        .create_topic("t", 1, pb::TopicConfig::default())
        .await
        .expect("create");
    let a = init(&client, None).await.expect("a");
    let b = init(&client, None).await.expect("b");
    let c3 = init(&client, None).await.expect("c");
    for p in [a, b] {
        let r = client.produce(idempotent("t", p, 0, 1)).await.expect("p");
        assert!(r.record_errors.is_empty(), "{r:?}");
    }
    let r = client.produce(idempotent("t", c3, 0, 1)).await.expect("c");
    assert_eq!(r.record_errors.len(), 1, "{r:?}");
    assert_eq!(r.record_errors[0].code, Code::ResourceExhausted as i32);
    assert!(
        r.record_errors[0]
            .message
            .contains("max_producers_per_partition"),
        "{r:?}"
    );
    // No segment rolls, yet once `a` and `b` have been idle for the
    // expiration time they are forgotten: the third producer fits.
    let mut admitted = false;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let r = client.produce(idempotent("t", c3, 0, 1)).await.expect("c");
        if r.record_errors.is_empty() {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "idle producers expired and made room");
    // `a` was forgotten: its next sequence is a gap (it must start at 0).
    // `a` and `b` went idle a few ms apart, so an expiry pass may have
    // forgotten `a` (making room for `c`) before `b`: until `b` goes too,
    // the partition is full and `a` is refused for that instead.
    let mut r = client.produce(idempotent("t", a, 1, 1)).await.expect("a");
    for _ in 0..400 {
        let full = r.record_errors.first().map(|e| e.code) == Some(Code::ResourceExhausted as i32);
        if !full {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        r = client.produce(idempotent("t", a, 1, 1)).await.expect("a");
    }
    assert_eq!(
        r.record_errors.first().map(|e| e.code),
        Some(Code::FailedPrecondition as i32),
        "{r:?}"
    );
    server.stop().await;
}

fn stamped(ts: Option<i64>) -> pb::ProduceRecord {
    pb::ProduceRecord {
        value: Some(Bytes::from_static(b"x")),
        timestamp_ms: ts,
        ..Default::default()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[tokio::test]
async fn timestamps_are_bounded_or_replaced() {
    let (_dir, server, client) = start(|_| {}).await;
    client
        .create_topic("create", 1, pb::TopicConfig::default())
        .await
        .expect("create");
    let d = client.describe_topic("create").await.expect("describe");
    let cfg = d.config.expect("config");
    assert_eq!(
        cfg.timestamp_type,
        Some(pb::TimestampType::CreateTime as i32)
    );
    assert_eq!(cfg.timestamp_after_max_ms, Some(3_600_000));
    assert_eq!(cfg.timestamp_before_max_ms, Some(-1));

    // Two hours ahead is refused per record; the others go in.
    let now = now_ms();
    let r = client
        .produce(pb::ProduceRequest {
            topic: "create".into(),
            partition: Some(0),
            records: vec![
                stamped(Some(now)),
                stamped(Some(now + 7_200_000)),
                stamped(None),
            ],
            ..Default::default()
        })
        .await
        .expect("produce");
    assert_eq!(r.record_errors.len(), 1, "{r:?}");
    assert_eq!(r.record_errors[0].index, 1);
    assert_eq!(r.record_errors[0].code, Code::InvalidArgument as i32);
    assert!(
        r.record_errors[0]
            .message
            .contains("timestamp_after_max_ms"),
        "{r:?}"
    );

    // Log-append time: the broker's clock, whatever the client says.
    client
        .create_topic(
            "append",
            1,
            pb::TopicConfig {
                timestamp_type: Some(pb::TimestampType::LogAppendTime as i32),
                ..Default::default()
            },
        )
        .await
        .expect("create");
    let before = now_ms();
    let r = client
        .produce(pb::ProduceRequest {
            topic: "append".into(),
            partition: Some(0),
            records: vec![stamped(Some(i64::MAX)), stamped(Some(0))],
            ..Default::default()
        })
        .await
        .expect("produce");
    assert!(r.record_errors.is_empty(), "{r:?}");
    let f = client
        .fetch(pb::FetchRequest {
            topic: "append".into(),
            partition: 0,
            offset: 0,
            ..Default::default()
        })
        .await
        .expect("fetch");
    for rec in &f.records {
        assert!(
            rec.timestamp_ms >= before && rec.timestamp_ms <= now_ms(),
            "{rec:?}"
        );
    }

    // A bound into the past, per topic.
    client
        .create_topic(
            "recent",
            1,
            pb::TopicConfig {
                timestamp_before_max_ms: Some(60_000),
                ..Default::default()
            },
        )
        .await
        .expect("create");
    let r = client
        .produce(pb::ProduceRequest {
            topic: "recent".into(),
            partition: Some(0),
            records: vec![stamped(Some(now_ms() - 3_600_000))],
            ..Default::default()
        })
        .await
        .expect("produce");
    assert_eq!(r.record_errors.len(), 1, "{r:?}");
    assert!(
        r.record_errors[0]
            .message
            .contains("timestamp_before_max_ms"),
        "{r:?}"
    );
    let (c, _) = code(
        client
            .create_topic(
                "bad",
                1,
                pb::TopicConfig {
                    timestamp_type: Some(7),
                    ..Default::default()
                },
            )
            .await
            .expect_err("unknown type"),
    );
    assert_eq!(c, Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn max_message_bytes_is_checked_against_the_segment_size_in_force() {
    let (_dir, server, client) = start(|c| {
        c.storage.segment_bytes = 64 * 1024;
        c.storage.max_message_bytes = 16 * 1024;
    })
    .await;
    let (c, m) = code(
        client
            .create_topic(
                "big",
                1,
                pb::TopicConfig {
                    max_message_bytes: Some(1 << 20),
                    ..Default::default()
                },
            )
            .await
            .expect_err("larger than the default segment"),
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("65536"), "{m}");
    // Larger than a request can carry.
    let (c, _) = code(
        client
            .create_topic(
                "huge",
                1,
                pb::TopicConfig {
                    segment_bytes: Some(1 << 30),
                    max_message_bytes: Some(64 << 20),
                    ..Default::default()
                },
            )
            .await
            .expect_err("larger than max_request_bytes"),
    );
    assert_eq!(c, Code::InvalidArgument);
    // Within both: accepted, and a record of that size goes in.
    client
        .create_topic(
            "fits",
            1,
            pb::TopicConfig {
                max_message_bytes: Some(60 * 1024),
                ..Default::default()
            },
        )
        .await
        .expect("within the segment size");
    let r = client
        .produce(pb::ProduceRequest {
            topic: "fits".into(),
            partition: Some(0),
            records: vec![record(None, vec![7u8; 50 * 1024])],
            ..Default::default()
        })
        .await
        .expect("produce");
    assert!(r.record_errors.is_empty(), "{r:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_retry_split_across_batches_reports_each_run_of_offsets() {
    let (_dir, server, client) = start(|_| {}).await;
    // Three 200-byte records fit in one batch, four do not.
    client
        .create_topic(
            "t",
            1,
            pb::TopicConfig {
                max_message_bytes: Some(800),
                ..Default::default()
            },
        )
        .await
        .expect("create");
    let p = init(&client, None).await.expect("init");
    let rec = |i: usize| record(None, vec![i as u8; 200]);
    let first = pb::ProduceRequest {
        topic: "t".into(),
        partition: Some(0),
        records: (0..3).map(rec).collect(),
        producer_id: Some(p.0),
        producer_epoch: p.1,
        base_sequence: 0,
        ..Default::default()
    };
    let r = client.produce(first).await.expect("first");
    assert_eq!(r.partitions[0].record_count, 3);
    // Another client's records land after them.
    client
        .produce(pb::ProduceRequest {
            topic: "t".into(),
            partition: Some(0),
            records: vec![record(None, "other"); 2],
            ..Default::default()
        })
        .await
        .expect("other");
    // A "retry" holding the first three and three more: the first batch
    // is a duplicate at offsets 0-2, the second is new at 5-7.
    let retry = pb::ProduceRequest {
        topic: "t".into(),
        partition: Some(0),
        records: (0..6).map(rec).collect(),
        producer_id: Some(p.0),
        producer_epoch: p.1,
        base_sequence: 0,
        ..Default::default()
    };
    let r = client.produce(retry).await.expect("retry");
    assert!(r.record_errors.is_empty(), "{r:?}");
    let runs: Vec<_> = r
        .partitions
        .iter()
        .map(|p| (p.partition, p.base_offset, p.record_count, p.duplicate))
        .collect();
    assert_eq!(runs, vec![(0, 0, 3, true), (0, 5, 3, false)]);
    server.stop().await;
}

#[tokio::test]
async fn topics_with_the_longest_names_delete_atomically() {
    let (_dir, server, client) = start(|_| {}).await;
    for len in [240, 245, 249] {
        let name = "n".repeat(len);
        client
            .create_topic(&name, 2, pb::TopicConfig::default())
            .await
            .expect("create");
        client
            .produce(pb::ProduceRequest {
                topic: name.clone(),
                partition: Some(1),
                records: vec![record(None, "old")],
                ..Default::default()
            })
            .await
            .expect("produce");
        client.delete_topic(&name).await.expect("delete");
        let listed = client.list_topics().await.expect("list");
        assert!(listed.iter().all(|t| t.name != name));
        client
            .create_topic(&name, 1, pb::TopicConfig::default())
            .await
            .expect("recreate");
        let d = client.describe_topic(&name).await.expect("describe");
        assert_eq!(d.partitions.len(), 1);
        assert_eq!(d.partitions[0].high_watermark, 0, "no old records");
        client.delete_topic(&name).await.expect("delete again");
    }
    // After a restart nothing comes back.
    let dir = server.dir.clone();
    server.stop().await;
    let server = TestServer::start_with(test_config(&dir), false).await;
    let client = server.client().await;
    assert!(client.list_topics().await.expect("list").is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("topics"))
        .expect("topics dir")
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with("__"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    server.stop().await;
}

#[tokio::test]
async fn server_errors_never_show_server_paths() {
    let (dir, server, client) = start(|_| {}).await;
    client
        .create_topic("t", 1, pb::TopicConfig::default())
        .await
        .expect("create");
    // The partition's directory becomes a file before its log is first
    // opened: opening it fails with an I/O error on that path.
    let part = dir.path().join("topics/t/0");
    std::fs::remove_dir_all(&part).expect("remove");
    std::fs::write(&part, b"not a directory").expect("write");
    let e = client
        .produce(pb::ProduceRequest {
            topic: "t".into(),
            partition: Some(0),
            records: vec![record(None, "x")],
            ..Default::default()
        })
        .await;
    let message = match e {
        Ok(r) => r
            .record_errors
            .first()
            .map(|e| e.message.clone())
            .expect("the record failed"),
        Err(e) => code(e).1,
    };
    let root = dir.path().to_string_lossy().into_owned();
    assert!(message.contains("server-side I/O error"), "{message}");
    assert!(!message.contains(&root), "{message}");
    assert!(!message.contains("/topics/"), "{message}");
    server.stop().await;
}

#[tokio::test]
async fn reset_offsets_does_not_create_a_group_by_accident() {
    use pb::reset_offsets_request::To;
    let (_dir, server, client) = start(|_| {}).await;
    client
        .create_topic("t", 1, pb::TopicConfig::default())
        .await
        .expect("create");
    let (c, m) = code(
        client
            .reset_offsets("typo", "t", vec![], To::Earliest(()), false, false)
            .await
            .expect_err("no such group"),
    );
    assert_eq!(c, Code::NotFound, "{m}");
    assert!(client.list_groups().await.expect("list").is_empty());
    let r = client
        .reset_offsets("new", "t", vec![], To::Earliest(()), false, true)
        .await
        .expect("explicit creation");
    assert_eq!(r.len(), 1);
    let groups = client.list_groups().await.expect("list");
    assert_eq!(groups.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_failed_run_of_records_is_one_error() {
    let (_dir, server, client) = start(|_| {}).await;
    client
        .create_topic("t", 1, pb::TopicConfig::default())
        .await
        .expect("create");
    let p = init(&client, None).await.expect("init");
    // A gap: all 50 records fail with one shared error.
    let r = client
        .produce(idempotent("t", p, 7, 50))
        .await
        .expect("answered");
    assert_eq!(r.record_errors.len(), 1, "{r:?}");
    let e = &r.record_errors[0];
    assert_eq!((e.index, e.count), (0, 50));
    assert_eq!(e.code, Code::FailedPrecondition as i32);
    server.stop().await;
}
