//! Work queues against a real in-process server: large records within a
//! byte budget, workers that outlive their topic or see it grow, and
//! acknowledgement batches with a bad ack in them.

mod common;

use std::time::Duration;

use common::server::TestServer;
use sluice::client::{pb, record, Client, QueueConfig};
use tonic::Code;

async fn start() -> (tempfile::TempDir, TestServer, Client) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    (dir, server, client)
}

async fn pull(
    client: &Client,
    topic: &str,
    member: &str,
    max: i32,
    acks: Vec<pb::Ack>,
) -> Result<pb::PullResponse, tonic::Status> {
    client
        .queues()
        .pull(pb::PullRequest {
            group: "g".into(),
            topic: topic.into(),
            member_id: member.into(),
            max_records: max,
            max_wait_ms: 200,
            acks,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// 100 records of ~1 MB asked for in one Pull: the answer would be 100 MB,
/// over the 96 MiB encode limit. Before deliveries had a byte budget the
/// reply failed, and the records went back with a higher delivery count
/// until they were dead-lettered, never delivered.
#[tokio::test]
async fn large_records_are_delivered_within_a_byte_budget() {
    let (_dir, server, client) = start().await;
    client
        .create_topic("big", 1, pb::TopicConfig::default())
        .await
        .expect("create");
    let value = vec![b'x'; 1_000_000];
    for _ in 0..34 {
        let r = client
            .produce(pb::ProduceRequest {
                topic: "big".into(),
                partition: Some(0),
                records: vec![record(None, value.clone()); 3],
                ..Default::default()
            })
            .await
            .expect("produce");
        assert!(r.record_errors.is_empty(), "{:?}", r.record_errors);
    }
    let mut member = String::new();
    let mut acks = Vec::new();
    let mut seen = 0;
    while seen < 102 {
        let r = pull(&client, "big", &member, 100, std::mem::take(&mut acks))
            .await
            .expect("a reply within the encode limit");
        member = r.member_id;
        assert!(
            r.deliveries.len() <= 5,
            "about 4 MiB per reply: {}",
            r.deliveries.len()
        );
        for d in &r.deliveries {
            assert_eq!(d.delivery_count, 1, "delivered once, not retried");
            acks.push(QueueConfig::accept(d.delivery_id));
        }
        seen += r.deliveries.len();
        assert!(!r.deliveries.is_empty(), "progress");
    }
    pull(&client, "big", &member, 1, acks).await.expect("ack");
    server.stop().await;
}

#[tokio::test]
async fn a_worker_on_a_deleted_topic_ends_with_not_found() {
    let (_dir, server, client) = start().await;
    client
        .create_topic("t", 2, pb::TopicConfig::default())
        .await
        .expect("create");
    let mut worker = client
        .worker(QueueConfig::new("g", "t"))
        .await
        .expect("worker");
    let waiting = tokio::spawn(async move { worker.next().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.delete_topic("t").await.expect("delete");
    let end = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the stream ends")
        .expect("join");
    let e = end.expect_err("an error, not a quiet end");
    assert!(e.to_string().contains("NOT_FOUND"), "{e}");
    let e = pull(&client, "t", "", 1, vec![])
        .await
        .expect_err("pull on a deleted topic");
    assert_eq!(e.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn a_long_lived_worker_picks_up_added_partitions() {
    let (_dir, server, client) = start().await;
    client
        .create_topic("t", 2, pb::TopicConfig::default())
        .await
        .expect("create");
    let mut worker = client
        .worker(QueueConfig::new("g", "t"))
        .await
        .expect("worker");
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.create_partitions("t", 3).await.expect("grow");
    client
        .produce(pb::ProduceRequest {
            topic: "t".into(),
            partition: Some(2),
            records: vec![record(None, "on the new partition")],
            ..Default::default()
        })
        .await
        .expect("produce");
    let d = tokio::time::timeout(Duration::from_secs(5), worker.next())
        .await
        .expect("delivered promptly")
        .expect("stream")
        .expect("a delivery");
    assert_eq!(d.partition, 2);
    server.stop().await;
}

/// A Pull long-poll that starts on an empty queue is woken by the record
/// appended while it waits, however the append and the Pull's first
/// attempt interleave: the Pull registers for appends before it looks.
/// A missed wake-up is a liveness failure, not a loss (the Pull looks
/// again at the end of its 30 s wait and finds the record then), so what
/// this asserts is that no Pull sleeps through an append. A round takes
/// milliseconds; with registration after the first attempt, one of the
/// 200 rounds slept the full 30 s in each of three runs.
#[tokio::test]
async fn a_pull_long_poll_never_misses_an_append() {
    let (_dir, server, client) = start().await;
    client
        .create_topic("t", 1, pb::TopicConfig::default())
        .await
        .expect("create");
    let member = pull(&client, "t", "", 1, vec![])
        .await
        .expect("join")
        .member_id;
    let mut acks = Vec::new();
    for round in 0..200u64 {
        let (c, m) = (client.clone(), member.clone());
        // The previous round's record is accepted with this Pull.
        let previous = std::mem::take(&mut acks);
        let started = std::time::Instant::now();
        let waiting = tokio::spawn(async move {
            c.queues()
                .pull(pb::PullRequest {
                    group: "g".into(),
                    topic: "t".into(),
                    member_id: m,
                    max_records: 1,
                    max_wait_ms: 30_000,
                    acks: previous,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        });
        // Spread the append over the Pull's first attempt.
        tokio::time::sleep(Duration::from_micros(round * 10)).await;
        client
            .produce(pb::ProduceRequest {
                topic: "t".into(),
                records: vec![record(None, format!("task {round}"))],
                ..Default::default()
            })
            .await
            .expect("produce");
        let r = waiting.await.expect("task").expect("pull");
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(10),
            "round {round}: the Pull slept through the append for {waited:?}"
        );
        assert_eq!(r.deliveries.len(), 1, "round {round}");
        acks.push(QueueConfig::accept(r.deliveries[0].delivery_id));
    }
    server.stop().await;
}

#[tokio::test]
async fn one_bad_ack_does_not_fail_the_batch() {
    let (_dir, server, client) = start().await;
    client
        .create_topic("t", 1, pb::TopicConfig::default())
        .await
        .expect("create");
    client
        .produce(pb::ProduceRequest {
            topic: "t".into(),
            partition: Some(0),
            records: vec![record(None, "a"), record(None, "b")],
            ..Default::default()
        })
        .await
        .expect("produce");
    let r = pull(&client, "t", "", 10, vec![]).await.expect("pull");
    assert_eq!(r.deliveries.len(), 2);
    let member = r.member_id.clone();
    let good = QueueConfig::accept(r.deliveries[0].delivery_id);
    let bad = pb::Ack {
        delivery_id: r.deliveries[1].delivery_id,
        r#type: 99,
        ..Default::default()
    };
    let out = client
        .queues()
        .acknowledge(pb::AcknowledgeRequest {
            group: "g".into(),
            member_id: member.clone(),
            acks: vec![good.clone(), bad],
        })
        .await
        .expect("the call succeeds")
        .into_inner()
        .ack_result
        .expect("result");
    assert_eq!(out.accepted, vec![good.delivery_id]);
    assert_eq!(out.refused.len(), 1);
    assert_eq!(out.refused[0].code, Code::InvalidArgument as i32);
    let d = client.describe_queue("g").await.expect("describe");
    assert_eq!(d.partitions[0].accepted, 1, "the good ack was applied");
    server.stop().await;
}

/// A dead letter that cannot be written (its topic was deleted) does not
/// lose the record: it stays unfinished, is never delivered again, and
/// lands in the dead-letter topic once that exists again.
#[tokio::test]
async fn a_failed_dead_letter_keeps_the_record_until_it_is_written() {
    let (_dir, server, client) = start().await;
    for t in ["t", "dlq"] {
        client
            .create_topic(t, 1, pb::TopicConfig::default())
            .await
            .expect("create");
    }
    client
        .produce(pb::ProduceRequest {
            topic: "t".into(),
            partition: Some(0),
            records: vec![record(None, "poison"), record(None, "fine")],
            ..Default::default()
        })
        .await
        .expect("produce");
    let settings = pb::QueueSettings {
        dead_letter_topic: Some("dlq".into()),
        ..Default::default()
    };
    let r = client
        .queues()
        .pull(pb::PullRequest {
            group: "g".into(),
            topic: "t".into(),
            max_records: 1,
            settings: Some(settings),
            ..Default::default()
        })
        .await
        .expect("pull")
        .into_inner();
    let member = r.member_id.clone();
    let poison = r.deliveries[0].delivery_id;
    client.delete_topic("dlq").await.expect("delete dlq");
    let reject = pb::Ack {
        delivery_id: poison,
        r#type: pb::AckType::Reject as i32,
        reason: "bad input".into(),
        ..Default::default()
    };
    let r = pull(&client, "t", &member, 10, vec![reject])
        .await
        .expect("reject");
    let values: Vec<_> = r
        .deliveries
        .iter()
        .filter_map(|d| d.record.as_ref().and_then(|r| r.value.clone()))
        .collect();
    assert_eq!(
        values,
        vec![bytes::Bytes::from("fine")],
        "poison is not redelivered"
    );
    let fine = r.deliveries[0].delivery_id;
    pull(&client, "t", &member, 1, vec![QueueConfig::accept(fine)])
        .await
        .expect("accept");
    let d = client.describe_queue("g").await.expect("describe");
    assert_eq!(
        d.partitions[0].rejected, 0,
        "not finished without its dead letter"
    );
    assert_eq!(d.partitions[0].start_offset, 0);

    client
        .create_topic("dlq", 1, pb::TopicConfig::default())
        .await
        .expect("recreate dlq");
    let mut landed = false;
    for _ in 0..100 {
        let _ = pull(&client, "t", &member, 10, vec![]).await.expect("pull");
        let d = client.describe_queue("g").await.expect("describe");
        if d.partitions[0].rejected == 1 {
            landed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(landed, "the dead letter was written on a retry");
    let f = client
        .fetch(pb::FetchRequest {
            topic: "dlq".into(),
            partition: 0,
            offset: 0,
            ..Default::default()
        })
        .await
        .expect("fetch dlq");
    assert_eq!(f.records.len(), 1);
    assert_eq!(f.records[0].value.as_deref(), Some(&b"poison"[..]));
    server.stop().await;
}

/// The outside test's case: a group accepted offsets 0-2 and held 3-4;
/// the topic was deleted and created again with 5 new records. The queue
/// must deliver the new records (not treat 0-2 as done, nor wait for the
/// old cursor), also after a broker restart.
#[tokio::test]
async fn a_topic_created_again_starts_its_queue_afresh() {
    let (dir, server, client) = start().await;
    let produce = async |client: &Client, prefix: &str| {
        client
            .produce(pb::ProduceRequest {
                topic: "t".into(),
                partition: Some(0),
                records: (0..5)
                    .map(|i| record(None, format!("{prefix}{i}")))
                    .collect(),
                ..Default::default()
            })
            .await
            .expect("produce");
    };
    client
        .create_topic("t", 1, pb::TopicConfig::default())
        .await
        .expect("create");
    produce(&client, "old").await;
    let r = pull(&client, "t", "", 5, vec![]).await.expect("pull");
    let member = r.member_id.clone();
    let acks: Vec<_> = r.deliveries[..3]
        .iter()
        .map(|d| QueueConfig::accept(d.delivery_id))
        .collect();
    pull(&client, "t", &member, 1, acks)
        .await
        .expect("accept 0-2");

    client.delete_topic("t").await.expect("delete");
    client
        .create_topic("t", 1, pb::TopicConfig::default())
        .await
        .expect("create again");
    produce(&client, "new").await;
    let d = client.describe_queue("g").await.expect("describe");
    assert!(
        d.partitions.iter().all(|p| p.in_flight == 0),
        "nothing of the old topic is in flight: {d:?}"
    );
    let values = |r: &pb::PullResponse| -> Vec<String> {
        r.deliveries
            .iter()
            .map(|d| {
                String::from_utf8_lossy(
                    d.record
                        .as_ref()
                        .and_then(|r| r.value.as_deref())
                        .unwrap_or_default(),
                )
                .into_owned()
            })
            .collect()
    };
    let r = pull(&client, "t", &member, 2, vec![]).await.expect("pull");
    assert_eq!(values(&r), ["new0", "new1"]);
    let acks: Vec<_> = r
        .deliveries
        .iter()
        .map(|d| QueueConfig::accept(d.delivery_id))
        .collect();
    pull(&client, "t", &member, 1, acks).await.expect("accept");

    // After a restart the state (replayed) refers to the new topic.
    server.stop().await;
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let r = pull(&client, "t", "", 10, vec![]).await.expect("pull");
    assert_eq!(values(&r), ["new2", "new3", "new4"]);
    server.stop().await;
}

/// Operations: list queues with their totals, change settings while
/// running, reset the cursor (refused with workers connected), delete
/// (refused with workers connected); deletions and settings survive a
/// restart.
#[tokio::test]
async fn queues_are_listed_altered_reset_and_deleted() {
    let (dir, server, client) = start().await;
    client
        .create_topic("t", 2, pb::TopicConfig::default())
        .await
        .expect("create");
    for p in 0..2 {
        client
            .produce(pb::ProduceRequest {
                topic: "t".into(),
                partition: Some(p),
                records: (0..5).map(|i| record(None, format!("r{i}"))).collect(),
                ..Default::default()
            })
            .await
            .expect("produce");
    }
    let mut q = client.queues();
    let e = q
        .delete_queue(pb::DeleteQueueRequest { group: "g".into() })
        .await
        .expect_err("unknown queue");
    assert_eq!(e.code(), Code::NotFound);

    let r = pull(&client, "t", "", 3, vec![]).await.expect("pull");
    let member = r.member_id.clone();
    assert_eq!(r.deliveries.len(), 3);
    let listed = q
        .list_queues(pb::ListQueuesRequest {})
        .await
        .expect("list")
        .into_inner()
        .queues;
    assert_eq!(listed.len(), 1);
    let l = &listed[0];
    assert_eq!((l.group.as_str(), l.members), ("g", 1));
    assert_eq!(l.topics, vec!["t".to_string()]);
    assert_eq!((l.in_flight, l.available), (3, 7));
    assert!(l.oldest_unacked_age_ms >= 0);

    // Settings change while the worker is connected.
    let s = q
        .alter_queue(pb::AlterQueueRequest {
            group: "g".into(),
            settings: Some(pb::QueueSettings {
                max_deliveries: Some(9),
                lock_timeout_ms: Some(60_000),
                ..Default::default()
            }),
        })
        .await
        .expect("alter")
        .into_inner()
        .settings
        .expect("settings");
    assert_eq!(
        (s.max_deliveries, s.lock_timeout_ms),
        (Some(9), Some(60_000))
    );

    // Reset and delete wait for the workers to go.
    let reset = |dry_run: bool| pb::ResetQueueRequest {
        group: "g".into(),
        topic: "t".into(),
        partitions: vec![],
        to: Some(pb::reset_queue_request::To::Offset(4)),
        dry_run,
    };
    let e = q
        .reset_queue(reset(false))
        .await
        .expect_err("worker connected");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = q
        .delete_queue(pb::DeleteQueueRequest { group: "g".into() })
        .await
        .expect_err("worker connected");
    assert_eq!(e.code(), Code::FailedPrecondition);
    // The Pull worker leaves when its session ends; a short one here.
    q.alter_queue(pb::AlterQueueRequest {
        group: "g".into(),
        settings: Some(pb::QueueSettings {
            session_timeout_ms: Some(1_000),
            ..Default::default()
        }),
    })
    .await
    .expect("alter");
    pull(&client, "t", &member, 1, vec![]).await.ok();
    let mut gone = false;
    for _ in 0..100 {
        let d = client.describe_queue("g").await.expect("describe");
        if d.members.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the Pull worker's session ended");

    let dry = q
        .reset_queue(reset(true))
        .await
        .expect("dry run")
        .into_inner()
        .partitions;
    assert_eq!(dry.len(), 2);
    assert!(dry.iter().all(|p| p.offset == 4 && p.previous_offset == 0));
    q.reset_queue(reset(false)).await.expect("reset");
    let r = pull(&client, "t", "", 10, vec![]).await.expect("pull");
    let mut offsets: Vec<i64> = r
        .deliveries
        .iter()
        .filter_map(|d| d.record.as_ref().map(|r| r.offset))
        .collect();
    offsets.sort();
    assert_eq!(
        offsets,
        vec![4, 4],
        "only offset 4 of each partition is left"
    );

    // After a restart the settings are still in force.
    server.stop().await;
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let d = client.describe_queue("g").await.expect("describe");
    assert_eq!(d.settings.and_then(|s| s.max_deliveries), Some(9));
    let mut q = client.queues();
    q.delete_queue(pb::DeleteQueueRequest { group: "g".into() })
        .await
        .expect("delete without workers");
    assert!(q
        .list_queues(pb::ListQueuesRequest {})
        .await
        .expect("list")
        .into_inner()
        .queues
        .is_empty());
    server.stop().await;
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let e = client
        .describe_queue("g")
        .await
        .expect_err("deleted for good");
    assert!(e.to_string().contains("NOT_FOUND"), "{e}");
    server.stop().await;
}

#[tokio::test]
async fn queue_metrics_are_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(common::server::test_config(dir.path()), true).await;
    let client = server.client().await;
    client
        .create_topic("mt", 1, pb::TopicConfig::default())
        .await
        .expect("create");
    client
        .produce(pb::ProduceRequest {
            topic: "mt".into(),
            partition: Some(0),
            records: vec![record(None, "a"), record(None, "b")],
            ..Default::default()
        })
        .await
        .expect("produce");
    let r = client
        .queues()
        .pull(pb::PullRequest {
            group: "mg".into(),
            topic: "mt".into(),
            max_records: 2,
            ..Default::default()
        })
        .await
        .expect("pull")
        .into_inner();
    let accept = QueueConfig::accept(r.deliveries[0].delivery_id);
    client
        .queues()
        .acknowledge(pb::AcknowledgeRequest {
            group: "mg".into(),
            member_id: r.member_id.clone(),
            acks: vec![accept],
        })
        .await
        .expect("ack");
    let addr = server.metrics_addr.expect("metrics address");
    let (status, body) = common::server::http_get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    for want in [
        "sluice_queue_deliveries_total{group=\"mg\",topic=\"mt\"} 2",
        "sluice_queue_accepts_total{group=\"mg\",topic=\"mt\"} 1",
        "sluice_queue_in_flight{group=\"mg\"} 1",
        "sluice_queue_members{group=\"mg\"} 1",
    ] {
        assert!(body.contains(want), "missing {want}:\n{body}");
    }
    assert!(body.contains("sluice_queue_oldest_unacked_age_seconds{group=\"mg\"}"));
    server.stop().await;
}
