//! Delivery guarantees end to end: idempotent producers (raw protocol and
//! the Rust producer through broker SIGKILLs), and work queues (share
//! groups) with real worker processes.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::server::ChildServer;
use sluice::client::{pb, Client, ProducerConfig, QueueConfig};
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

    // Even when `__producer_ids` is lost: the partition logs say which ids
    // live producers hold.
    drop(_server);
    std::fs::remove_dir_all(dir.path().join("topics/__producer_ids")).expect("lose the ids");
    let _server = ChildServer::start_at(dir.path(), &addr, &[]);
    let d = init(&client, None).await;
    assert!(
        d.producer_id > a1.producer_id.max(b.producer_id),
        "{d:?} would reuse a live producer's id"
    );
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

/// Kafka's KIP-360: one request refused for good (a record over the
/// topic's limit) leaves a gap in its partition's sequence. The producer
/// bumps its epoch and numbers the requests behind it afresh, instead of
/// failing every later record.
#[tokio::test]
async fn producer_recovers_from_a_refused_request_by_bumping_its_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(dir.path(), &[]);
    let client = Client::connect(&server.url).await.expect("connect");
    client
        .create_topic(
            "t",
            1,
            pb::TopicConfig {
                max_message_bytes: Some(1024),
                ..Default::default()
            },
        )
        .await
        .expect("create");
    let producer = client.producer(
        "t",
        ProducerConfig {
            max_batch_bytes: 256,
            linger: Duration::from_millis(20),
            ..ProducerConfig::default()
        },
    );
    producer
        .send(sluice::client::record(None, vec![b'x'; 4000]))
        .await
        .expect("send");
    for i in 0..200 {
        producer
            .send(sluice::client::record(None, format!("r{i}")))
            .await
            .expect("send");
    }
    let stats = producer.close().await.expect("close");
    assert_eq!(stats.failed, 1, "only the oversized record: {stats:?}");
    assert_eq!(stats.acked, 200, "{stats:?}");
    let values = values_of(&client, "t").await;
    let want: Vec<String> = (0..200).map(|i| format!("r{i}")).collect();
    assert_eq!(values, want, "every later record, once, in order");
    drop(server);
}

// ----- work queues -----

async fn produce_values(client: &Client, topic: &str, values: impl IntoIterator<Item = String>) {
    let producer = client.producer(topic, ProducerConfig::default());
    for v in values {
        producer
            .send(sluice::client::record(None, v))
            .await
            .expect("send");
    }
    let stats = producer.close().await.expect("close");
    assert_eq!(stats.failed, 0, "{stats:?}");
}

fn value(d: &pb::Delivery) -> String {
    let v = d
        .record
        .as_ref()
        .and_then(|r| r.value.clone())
        .unwrap_or_default();
    String::from_utf8_lossy(&v).into_owned()
}

fn settings(f: impl FnOnce(&mut pb::QueueSettings)) -> Option<pb::QueueSettings> {
    let mut s = pb::QueueSettings::default();
    f(&mut s);
    Some(s)
}

fn queue(group: &str, topic: &str, prefetch: i32) -> QueueConfig {
    QueueConfig {
        prefetch,
        ..QueueConfig::new(group, topic)
    }
}

/// Waits for `cond` (polling), failing with `what` after `limit`.
async fn eventually(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_task_is_redelivered_and_accepted_tasks_never_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(dir.path(), &[]);
    let client = Client::connect(&server.url).await.expect("connect");
    client
        .create_topic("tasks", 1, Default::default())
        .await
        .expect("create");
    produce_values(&client, "tasks", ["a", "b", "slow", "c"].map(String::from)).await;
    let out = dir.path().join("processed.txt");
    let script = format!(
        r#"v=$(cat); echo "$v $SLUICE_DELIVERY_COUNT $SLUICE_OFFSET" >> {out}; if [ "$v" = slow ] && [ "$SLUICE_DELIVERY_COUNT" = 1 ]; then exec sleep 60; fi"#,
        out = out.display()
    );
    let work = |n: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "queue",
                "work",
                "tasks",
                "--group",
                "jobs",
                "--broker",
                &server.url,
            ])
            .args(["--max-records", n, "--", "sh", "-c", &script])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn worker")
    };
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    let mut first = work("100");
    eventually(
        "the first worker to start the slow task",
        Duration::from_secs(20),
        async || read().contains("slow 1"),
    )
    .await;
    // SIGKILL mid-task: its stream closes and the task goes back at once.
    first.kill().expect("SIGKILL");
    first.wait().expect("wait");
    let mut second = work("2");
    let status = second.wait().expect("second worker");
    assert!(status.success());
    let lines: Vec<String> = read().lines().map(String::from).collect();
    assert_eq!(lines, ["a 1 0", "b 1 1", "slow 1 2", "slow 2 2", "c 1 3"]);
    let d = client.describe_queue("jobs").await.expect("describe");
    assert_eq!(d.partitions[0].start_offset, 4);
    assert_eq!(d.partitions[0].accepted, 4);
}

/// Workers that each take tasks from a shared topic; `kill_after` makes a
/// worker drop its stream without acknowledging after that many tasks (a
/// crash), and a replacement starts.
async fn run_workers(
    client: &Client,
    group: &str,
    workers: usize,
    total: usize,
    kill_after: impl Fn(usize) -> Option<usize> + Send + Sync + 'static,
) -> (BTreeMap<String, usize>, usize) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, usize>::new()));
    let kill_after = std::sync::Arc::new(kill_after);
    let kills = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, seen, kill_after, kills) = (
            client.clone(),
            seen.clone(),
            kill_after.clone(),
            kills.clone(),
        );
        let group = group.to_string();
        tasks.push(tokio::spawn(async move {
            let mut life = 0;
            loop {
                let mut worker = client
                    .worker(queue(&group, "tasks", 20))
                    .await
                    .expect("worker");
                let limit = kill_after(w * 1000 + life);
                life += 1;
                let mut n = 0;
                loop {
                    if seen.lock().expect("lock").len() >= total {
                        return;
                    }
                    let next =
                        tokio::time::timeout(Duration::from_millis(500), worker.next()).await;
                    let Ok(Ok(Some(first))) = next else { continue };
                    let mut batch = vec![first];
                    batch.extend(worker.ready());
                    if limit.is_some_and(|l| n + batch.len() > l) {
                        // Crash: process some, acknowledge none.
                        let mut s = seen.lock().expect("lock");
                        for d in &batch[..batch.len() / 2] {
                            *s.entry(value(d)).or_default() += 1;
                        }
                        kills.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                    n += batch.len();
                    {
                        let mut s = seen.lock().expect("lock");
                        for d in &batch {
                            *s.entry(value(d)).or_default() += 1;
                        }
                    }
                    let acks = batch
                        .iter()
                        .map(|d| QueueConfig::accept(d.delivery_id))
                        .collect();
                    let r = worker.ack_confirmed(acks).await.expect("ack");
                    assert!(r.refused.is_empty(), "{:?}", r.refused);
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("workers finished")
            .expect("worker task");
    }
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    (seen, kills.load(std::sync::atomic::Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_workers_share_three_partitions_exactly_once_and_lose_nothing_when_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(dir.path(), &[]);
    let client = Client::connect(&server.url).await.expect("connect");
    client
        .create_topic("tasks", 3, Default::default())
        .await
        .expect("create");
    const N: usize = 20_000;
    produce_values(&client, "tasks", (0..N).map(|i| format!("t{i}"))).await;

    // No failures: every task exactly once.
    let (seen, _) = run_workers(&client, "clean", 50, N, |_| None).await;
    assert_eq!(seen.len(), N);
    let dups = seen.values().filter(|&&n| n > 1).count();
    assert_eq!(dups, 0, "no failures, no duplicates");

    // Workers crash at random (some lives end after a few dozen tasks):
    // nothing is lost; duplicates are the crashed workers' unacknowledged
    // tasks.
    let (seen, kills) = run_workers(&client, "crashy", 50, N, |life| {
        let h = (life as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
        (h < 24).then_some(10 + h as usize * 10)
    })
    .await;
    assert_eq!(seen.len(), N, "every task processed at least once");
    let dups: usize = seen.values().map(|n| n - 1).sum();
    println!("crashy run: {kills} worker crashes, {dups} duplicate deliveries of {N} tasks");
    assert!(kills > 0);
    let d = client.describe_queue("crashy").await.expect("describe");
    let accepted: i64 = d.partitions.iter().map(|p| p.accepted).sum();
    assert_eq!(accepted, N as i64, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_dead_letters_prefetch_holds_extension_keeps_and_restart_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ChildServer::start(dir.path(), &[]);
    let addr = server.addr().to_string();
    let client = Client::connect(&server.url).await.expect("connect");
    client
        .create_topic("tasks", 1, Default::default())
        .await
        .expect("create");
    client
        .create_topic("dlq", 1, Default::default())
        .await
        .expect("create");

    // Poison: released with a reason on every delivery; after 3 it goes
    // to the dead-letter topic with its provenance.
    produce_values(&client, "tasks", ["poison".to_string()]).await;
    let mut w = client
        .worker(QueueConfig {
            settings: settings(|s| {
                s.max_deliveries = Some(3);
                s.dead_letter_topic = Some("dlq".into());
            }),
            ..queue("poison", "tasks", 10)
        })
        .await
        .expect("worker");
    for count in 1..=3 {
        let d = w.next().await.expect("next").expect("delivery");
        assert_eq!((value(&d), d.delivery_count), ("poison".into(), count));
        let mut release = QueueConfig::ack(d.delivery_id, pb::AckType::Release);
        release.reason = "handler crashed".into();
        let r = w.ack_confirmed(vec![release]).await.expect("ack");
        assert_eq!(r.accepted, [d.delivery_id]);
    }
    let dead = client
        .fetch(pb::FetchRequest {
            topic: "dlq".into(),
            max_wait_ms: 5000,
            ..Default::default()
        })
        .await
        .expect("fetch dlq");
    assert_eq!(dead.records.len(), 1);
    let headers: BTreeMap<String, String> = dead.records[0]
        .headers
        .iter()
        .map(|h| {
            (
                h.key.clone(),
                String::from_utf8_lossy(h.value.as_deref().unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    assert_eq!(headers["sluice-dlq-topic"], "tasks");
    assert_eq!(headers["sluice-dlq-offset"], "0");
    assert_eq!(headers["sluice-dlq-delivery-count"], "3");
    assert_eq!(headers["sluice-dlq-reason"], "handler crashed");
    drop(w);

    // Prefetch over Pull: 5 at most, however many are asked for.
    produce_values(&client, "tasks", (0..100).map(|i| format!("t{i}"))).await;
    let mut queues = client.queues();
    let pull = |member: &str, max: i32, acks: Vec<pb::Ack>| pb::PullRequest {
        group: "work".into(),
        topic: "tasks".into(),
        member_id: member.into(),
        max_records: max,
        max_wait_ms: 200,
        prefetch: 5,
        acks,
        settings: settings(|s| s.lock_timeout_ms = Some(1500)),
    };
    let first = queues
        .pull(pull("", 100, vec![]))
        .await
        .expect("pull")
        .into_inner();
    assert_eq!(first.deliveries.len(), 5, "prefetch caps the pull");
    let member = first.member_id.clone();
    let more = queues
        .pull(pull(&member, 100, vec![]))
        .await
        .expect("pull")
        .into_inner();
    assert!(more.deliveries.is_empty(), "prefetch is never exceeded");

    // Lock extension: keep one record past its 1.5 s lock; nobody else
    // gets it; accept the other four.
    let kept = first.deliveries[0].delivery_id;
    let acks: Vec<pb::Ack> = first.deliveries[1..]
        .iter()
        .map(|d| QueueConfig::accept(d.delivery_id))
        .collect();
    let r = queues
        .pull(pull(&member, 1, acks))
        .await
        .expect("ack")
        .into_inner();
    assert_eq!(r.ack_result.expect("result").accepted.len(), 4);
    // Its pull took one more (offset 5): the member holds 2 of 5 now.
    assert_eq!(r.deliveries.len(), 1);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = queues
            .acknowledge(pb::AcknowledgeRequest {
                group: "work".into(),
                member_id: member.clone(),
                acks: vec![QueueConfig::ack(kept, pb::AckType::Extend)],
            })
            .await
            .expect("extend")
            .into_inner();
        assert_eq!(r.ack_result.expect("result").accepted, [kept]);
    }
    let d = client.describe_queue("work").await.expect("describe");
    // The group also reads "poison" at offset 0: that is the record kept.
    assert_eq!(
        (d.partitions[0].start_offset, d.partitions[0].in_flight),
        (0, 1),
        "offset 0 is still locked; offset 5's lock (not extended) expired: {d:?}"
    );
    let r = queues
        .acknowledge(pb::AcknowledgeRequest {
            group: "work".into(),
            member_id: member.clone(),
            acks: vec![QueueConfig::accept(kept)],
        })
        .await
        .expect("accept")
        .into_inner();
    assert_eq!(r.ack_result.expect("result").accepted, [kept]);
    // A stale receipt (already accepted) is refused, not applied twice.
    let r = queues
        .acknowledge(pb::AcknowledgeRequest {
            group: "work".into(),
            member_id: member.clone(),
            acks: vec![QueueConfig::accept(kept)],
        })
        .await
        .expect("accept again")
        .into_inner();
    assert_eq!(
        r.ack_result.expect("result").refused[0].code,
        Code::NotFound as i32
    );

    // Accept 40 in all, then SIGKILL the broker: after the restart the 61
    // others (offset 5 among them) come back; the accepted never do.
    let mut accepted: Vec<String> = first.deliveries.iter().map(value).collect();
    let mut w = client
        .worker(queue("work", "tasks", 1000))
        .await
        .expect("worker");
    while accepted.len() < 40 {
        let d = w.next().await.expect("next").expect("delivery");
        accepted.push(value(&d));
        w.ack_confirmed(vec![QueueConfig::accept(d.delivery_id)])
            .await
            .expect("ack");
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("wait");
    server = ChildServer::start_at(dir.path(), &addr, &[]);
    let mut w = client
        .worker(queue("work", "tasks", 1000))
        .await
        .expect("worker");
    let mut rest = Vec::new();
    while rest.len() < 61 {
        let d = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("redelivery after restart")
            .expect("next")
            .expect("delivery");
        rest.push(value(&d));
        w.ack(vec![QueueConfig::accept(d.delivery_id)])
            .await
            .expect("ack");
    }
    w.confirm().await.expect("confirm");
    let mut all: Vec<String> = accepted.iter().chain(&rest).cloned().collect();
    all.sort();
    let mut expected: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
    expected.push("poison".into());
    expected.sort();
    assert_eq!(all, expected, "none lost, none accepted twice");
    assert!(tokio::time::timeout(Duration::from_millis(500), w.next())
        .await
        .is_err());
    drop(server);
}
