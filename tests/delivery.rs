//! Delivery guarantees end to end: idempotent producers (raw protocol and
//! the Rust producer through broker SIGKILLs), and work queues (share
//! groups) with real worker processes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::server::ChildServer;
use sluice::client::{pb, Client, ProducerConfig};
use tonic::Code;

fn idempotent_request(
    partition: i32,
    producer: &pb::InitProducerResponse,
    base_sequence: i32,
    values: &[&str],
) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: "t".into(),
        partition: Some(partition),
        records: values
            .iter()
            .map(|v| sluice::client::record(None, v.to_string()))
            .collect(),
        acks: pb::Acks::Leader as i32,
        producer_id: Some(producer.producer_id),
        producer_epoch: producer.producer_epoch,
        base_sequence,
        ..Default::default()
    }
}

async fn init(
    client: &Client,
    bump: Option<&pb::InitProducerResponse>,
) -> pb::InitProducerResponse {
    client
        .broker()
        .init_producer(pb::InitProducerRequest {
            producer_id: bump.map(|b| b.producer_id),
            producer_epoch: bump.map_or(0, |b| b.producer_epoch),
        })
        .await
        .expect("init producer")
        .into_inner()
}

/// Every record value in every partition of `topic`.
async fn values_of(client: &Client, topic: &str) -> Vec<String> {
    let n = client.partition_count(topic).await.expect("partitions");
    let mut out = Vec::new();
    for p in 0..n {
        let mut offset = 0;
        loop {
            let r = client
                .fetch(pb::FetchRequest {
                    topic: topic.into(),
                    partition: p,
                    offset,
                    max_records: 100_000,
                    ..Default::default()
                })
                .await
                .expect("fetch");
            out.extend(r.records.iter().map(|r| {
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()
            }));
            if r.next_offset >= r.high_watermark {
                break;
            }
            offset = r.next_offset;
        }
    }
    out
}

fn error_code(r: &pb::ProduceResponse) -> Option<Code> {
    r.record_errors.first().map(|e| Code::from(e.code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_produce_deduplicates_refuses_gaps_and_fences_old_epochs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(dir.path(), &[]);
    let client = Client::connect(&server.url).await.expect("connect");
    client
        .create_topic("t", 2, Default::default())
        .await
        .expect("create");
    let a = init(&client, None).await;
    let b = init(&client, None).await;
    assert_ne!(a.producer_id, b.producer_id, "every init gets a new id");
    assert_eq!(a.producer_epoch, 0);

    let first = client
        .produce(idempotent_request(0, &a, 0, &["a0", "a1", "a2"]))
        .await
        .expect("produce");
    assert_eq!(first.partitions[0].base_offset, 0);
    assert!(!first.partitions[0].duplicate);
    // Another producer in between, then a's retry of the same request.
    client
        .produce(idempotent_request(0, &b, 0, &["b0"]))
        .await
        .expect("produce");
    let retry = client
        .produce(idempotent_request(0, &a, 0, &["a0", "a1", "a2"]))
        .await
        .expect("retry");
    assert!(retry.partitions[0].duplicate, "{retry:?}");
    assert_eq!(retry.partitions[0].base_offset, 0, "the original offsets");
    // Sequences are per partition: partition 1 starts at 0 too.
    let p1 = client
        .produce(idempotent_request(1, &a, 0, &["x"]))
        .await
        .expect("produce p1");
    assert!(p1.record_errors.is_empty(), "{p1:?}");

    // A gap: sequence 5 when 3 is next.
    let gap = client
        .produce(idempotent_request(0, &a, 5, &["a5"]))
        .await
        .expect("reply");
    assert_eq!(error_code(&gap), Some(Code::FailedPrecondition));
    assert!(
        gap.record_errors[0].message.contains("expected 3"),
        "{gap:?}"
    );

    // Bad requests: no partition, acks NONE.
    let mut no_partition = idempotent_request(0, &a, 3, &["a3"]);
    no_partition.partition = None;
    let e = client
        .produce(no_partition)
        .await
        .expect_err("no partition");
    assert!(e.to_string().contains("must name its partition"), "{e}");
    let mut none = idempotent_request(0, &a, 3, &["a3"]);
    none.acks = pb::Acks::None as i32;
    let e = client.produce(none).await.expect_err("acks none");
    assert!(e.to_string().contains("acks"), "{e}");

    // A bumped epoch fences the old one on the partitions it writes to.
    let a1 = init(&client, Some(&a)).await;
    assert_eq!((a1.producer_id, a1.producer_epoch), (a.producer_id, 1));
    let fresh = client
        .produce(idempotent_request(0, &a1, 0, &["new"]))
        .await
        .expect("new epoch");
    assert!(fresh.record_errors.is_empty(), "{fresh:?}");
    let old = client
        .produce(idempotent_request(0, &a, 3, &["stale"]))
        .await
        .expect("reply");
    assert_eq!(error_code(&old), Some(Code::Aborted), "{old:?}");

    // After a SIGKILL the broker rebuilds the state from the log: the
    // retry is still recognised.
    let addr = server.addr().to_string();
    drop(server);
    let _server = ChildServer::start_at(dir.path(), &addr, &[]);
    let retry = client
        .produce(idempotent_request(0, &a1, 0, &["new"]))
        .await
        .expect("retry after restart");
    assert!(retry.partitions[0].duplicate, "{retry:?}");
    assert_eq!(
        values_of(&client, "t").await,
        ["a0", "a1", "a2", "b0", "new", "x"]
    );
    // Ids are never handed out twice, even across restarts.
    let c = init(&client, None).await;
    assert!(c.producer_id > b.producer_id, "{c:?} after {b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_retries_through_broker_kills_and_lands_every_record_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ChildServer::start(dir.path(), &[]);
    let addr = server.addr().to_string();
    let client = Client::connect(&server.url).await.expect("connect");
    client
        .create_topic("t", 3, Default::default())
        .await
        .expect("create");
    const N: usize = 60_000;
    let producer = client.producer(
        "t",
        ProducerConfig {
            max_batch_bytes: 16 * 1024,
            linger: Duration::from_millis(2),
            ..ProducerConfig::default()
        },
    );
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let key = (i % 2 == 0).then(|| format!("k{}", i % 97));
            producer
                .send(sluice::client::record(key.as_deref(), format!("r{i}")))
                .await
                .expect("send");
            // Paced, so that the kills land mid-stream.
            if i % 1000 == 999 {
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
        producer.close().await.expect("close")
    });
    // Kill the broker twice while records flow, restarting it each time.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("wait");
        tokio::time::sleep(Duration::from_millis(200)).await;
        server = ChildServer::start_at(dir.path(), &addr, &[]);
    }
    let stats = tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .expect("producer finished")
        .expect("producer task");
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert!(stats.retries > 0, "the kills hit the stream: {stats:?}");
    assert_eq!(stats.acked, N as u64, "{stats:?}");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for v in values_of(&client, "t").await {
        *seen.entry(v).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicates: {dups:?} ({stats:?})");
    let missing: Vec<_> = (0..N)
        .map(|i| format!("r{i}"))
        .filter(|v| !seen.contains_key(v))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "missing: {missing:?} ({stats:?})");
    assert_eq!(seen.len(), N);
    println!("{stats:?}");
    drop(server);
}
