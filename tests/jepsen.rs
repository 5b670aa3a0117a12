//! A Jepsen-style check of a 3-broker cluster under faults. Producers write
//! uniquely identified records with acks=ALL (idempotent, retrying through
//! failovers), a consumer group and a work queue consume, and a reader
//! keeps fetching, while a nemesis SIGKILLs and restarts brokers, cuts one
//! off the others (the fault-injecting proxies between nodes) and pauses
//! one (SIGSTOP/SIGCONT, as a GC pause or a frozen VM looks). At the end:
//! every acknowledged record is readable exactly once, offsets per
//! partition are contiguous, no offset was ever read with two different
//! records, committed group offsets never went backwards, every queue task
//! was accepted, and all replicas hold the same bytes.
//!
//! `SLUICE_JEPSEN_ROUNDS` sets the number of faults (3 by default, for CI).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use common::cluster::TestCluster;
use parking_lot::Mutex;
use sluice::client::{pb, Client, ConsumerConfig, ProducerConfig, QueueConfig};

const TOPIC: &str = "ledger";
/// One cluster at a time: two would share the machine's cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const PARTITIONS: i32 = 3;
const PRODUCERS: u64 = 3;

/// Every (partition, offset) → record any reader saw, and contradictions.
#[derive(Default)]
struct History {
    seen: Mutex<BTreeMap<(i32, i64), String>>,
    conflicts: Mutex<Vec<String>>,
}

impl History {
    fn observe(&self, partition: i32, offset: i64, value: &str) {
        let mut seen = self.seen.lock();
        match seen.get(&(partition, offset)) {
            Some(v) if v != value => self
                .conflicts
                .lock()
                .push(format!("{partition}@{offset}: read as {v} and as {value}")),
            Some(_) => {}
            None => {
                seen.insert((partition, offset), value.to_string());
            }
        }
    }
}

fn value_of(r: &pb::ConsumedRecord) -> String {
    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()
}

/// A 3-broker cluster with the topic, fully replicated.
async fn ledger_cluster() -> TestCluster {
    let cluster = TestCluster::start(3, 0, &[]).await;
    cluster
        .client(1)
        .await
        .create_replicated_topic(TOPIC, PARTITIONS, Some(3), Default::default())
        .await
        .expect("create");
    cluster
        .wait_fully_replicated(TOPIC, Duration::from_secs(30))
        .await;
    cluster
}

type ProducerTask = tokio::task::JoinHandle<(u64, usize, sluice::client::ProducerStats)>;

/// One idempotent acks=ALL producer per node, bootstrapped there, writing
/// `p{k}-{n}` values until `stop`; each task ends with what it queued and
/// its totals.
async fn spawn_producers(cluster: &TestCluster, stop: &Arc<AtomicBool>) -> Vec<ProducerTask> {
    let mut producers = Vec::new();
    for k in 1..=PRODUCERS {
        let client = cluster.client(k).await;
        let stop = stop.clone();
        producers.push(tokio::spawn(async move {
            let p = client.producer(
                TOPIC,
                ProducerConfig {
                    acks: pb::Acks::All,
                    linger: Duration::from_millis(2),
                    delivery_timeout: Duration::from_secs(300),
                    ..Default::default()
                },
            );
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                p.send(pb::ProduceRecord {
                    key: Some(Bytes::from(format!("k{}", sent % 31))),
                    value: Some(Bytes::from(format!("p{k}-{sent}"))),
                    ..Default::default()
                })
                .await
                .expect("queue a record");
                sent += 1;
                if sent.is_multiple_of(10) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let stats = p.close().await.expect("close producer");
            (k, sent, stats)
        }));
    }
    producers
}

/// A client of the first running node among `ids`.
async fn any_client(urls: &[String]) -> Option<Client> {
    for u in urls {
        if let Ok(c) = Client::connect(u).await {
            if c.describe_cluster().await.is_ok() {
                return Some(c);
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_survive_kills_cuts_and_pauses() {
    let _serial = SERIAL.lock().await;
    let rounds: usize = std::env::var("SLUICE_JEPSEN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut cluster = ledger_cluster().await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(History::default());

    // Producers, each bootstrapped from its own node.
    let producers = spawn_producers(&cluster, &stop).await;

    // A reader that keeps fetching every partition from its leader.
    let reader = {
        let (stop, history, urls) = (stop.clone(), history.clone(), urls.clone());
        tokio::spawn(async move {
            let mut next = [0i64; PARTITIONS as usize];
            while !stop.load(Ordering::Relaxed) {
                let Some(c) = any_client(&urls).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                for p in 0..PARTITIONS {
                    let r = c
                        .fetch(pb::FetchRequest {
                            topic: TOPIC.into(),
                            partition: p,
                            offset: next[p as usize],
                            max_wait_ms: 100,
                            ..Default::default()
                        })
                        .await;
                    if let Ok(r) = r {
                        for rec in &r.records {
                            history.observe(p, rec.offset, &value_of(rec));
                        }
                        next[p as usize] = r.next_offset;
                    }
                }
            }
        })
    };

    // A consumer group member that commits as it goes, and a monitor of
    // its committed offsets (which must never go backwards).
    let group = {
        let (stop, history, urls) = (stop.clone(), history.clone(), urls.clone());
        tokio::spawn(async move {
            let mut consumer: Option<sluice::client::Consumer> = None;
            while !stop.load(Ordering::Relaxed) {
                let c = match consumer.as_mut() {
                    Some(c) => c,
                    None => {
                        let Some(client) = any_client(&urls).await else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        let mut config = ConsumerConfig::new("audit", [TOPIC]);
                        config.auto_commit_interval = Some(Duration::from_millis(200));
                        consumer.insert(client.consumer(config))
                    }
                };
                match c.poll(Duration::from_millis(200)).await {
                    Ok(records) => {
                        for r in &records {
                            history.observe(r.partition, r.record.offset, &value_of(&r.record));
                        }
                    }
                    // Its broker went away: start over through another.
                    Err(_) => consumer = None,
                }
            }
            if let Some(c) = consumer {
                let _ = c.close().await;
            }
        })
    };
    let backwards = Arc::new(Mutex::new(Vec::<String>::new()));
    let monitor = {
        let (stop, urls, backwards) = (stop.clone(), urls.clone(), backwards.clone());
        tokio::spawn(async move {
            let mut last: BTreeMap<i32, i64> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(c) = any_client(&urls).await {
                    if let Ok(offsets) = c.fetch_offsets("audit", vec![TOPIC.into()]).await {
                        for o in offsets {
                            let prev = last.entry(o.partition).or_insert(o.offset);
                            if o.offset < *prev {
                                backwards.lock().push(format!(
                                    "partition {}: committed {} after {}",
                                    o.partition, o.offset, prev
                                ));
                            }
                            *prev = (*prev).max(o.offset);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    // A work queue worker that accepts what it gets.
    let accepted = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let worker = {
        let (stop, urls, accepted) = (stop.clone(), urls.clone(), accepted.clone());
        tokio::spawn(async move { work(&urls, &accepted, &stop).await })
    };

    // The nemesis.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for round in 0..rounds {
        let victim = 1 + (round as u64 * 7 + 1) % 3;
        match round % 3 {
            0 => {
                cluster.node(victim).kill();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                cluster.node(victim).start();
            }
            1 => {
                cluster.isolate(victim, true);
                tokio::time::sleep(Duration::from_secs(3)).await;
                cluster.isolate(victim, false);
            }
            _ => {
                if let Some(s) = cluster.node(victim).server.as_ref() {
                    s.signal(19);
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    s.signal(18);
                }
            }
        }
        cluster.wait_stable(3, Duration::from_secs(60)).await;
        cluster
            .wait_fully_replicated(TOPIC, Duration::from_secs(60))
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Stop writing; every record a producer queued must be acknowledged.
    stop.store(true, Ordering::Relaxed);
    let mut produced = BTreeSet::new();
    for p in producers {
        let (k, sent, stats) = p.await.expect("producer task");
        assert_eq!(stats.failed, 0, "producer {k}: {stats:?}");
        assert_eq!(stats.acked, sent as u64, "producer {k}: {stats:?}");
        produced.extend((0..sent).map(|i| format!("p{k}-{i}")));
    }
    for t in [reader, group, monitor] {
        t.await.expect("task");
    }
    worker.await.expect("worker");
    cluster.wait_caught_up(TOPIC, Duration::from_secs(60)).await;

    // Every acknowledged record exactly once, at contiguous offsets, and
    // where readers saw it during the run.
    let c = cluster.client(1).await;
    let mut at: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let records = common::api::fetch_all(&c, TOPIC, p).await;
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset, i as i64, "partition {p} offsets are contiguous");
            let v = value_of(r);
            history.observe(p, r.offset, &v);
            if let Some(prev) = at.insert(v.clone(), (p, r.offset)) {
                panic!(
                    "{v} is stored twice: at {prev:?} and at ({p}, {})",
                    r.offset
                );
            }
        }
    }
    let stored: BTreeSet<String> = at.keys().cloned().collect();
    let lost: Vec<&String> = produced.difference(&stored).take(10).collect();
    assert!(lost.is_empty(), "acknowledged records lost: {lost:?}");
    let conflicts = history.conflicts.lock().clone();
    assert!(
        conflicts.is_empty(),
        "offsets read with two records: {conflicts:?}"
    );
    let backwards = backwards.lock().clone();
    assert!(
        backwards.is_empty(),
        "committed offsets went back: {backwards:?}"
    );

    // The queue finishes every task: its state, as the coordinator tells
    // it, says every offset below each partition's end is finished, and
    // all of them were accepted. (A worker cannot know for sure: an ack
    // whose reply was lost to a fault may still have been applied.)
    let ends: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| (p, at.values().filter(|(q, _)| *q == p).count() as i64))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let finished = Arc::new(AtomicBool::new(false));
    loop {
        let d = c
            .queues()
            .describe_queue(pb::DescribeQueueRequest {
                group: "work".into(),
            })
            .await
            .map(|r| r.into_inner());
        if let Ok(d) = &d {
            let done = d.partitions.len() == PARTITIONS as usize
                && d.partitions
                    .iter()
                    .all(|p| ends.get(&p.partition) == Some(&p.start_offset));
            if done {
                let accepted_total: i64 = d.partitions.iter().map(|p| p.accepted).sum();
                let other: i64 = d
                    .partitions
                    .iter()
                    .map(|p| p.rejected + p.dead_lettered)
                    .sum();
                assert_eq!(other, 0, "only accepts were sent: {d:?}");
                assert!(accepted_total >= stored.len() as i64, "{d:?}");
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue tasks never all finished: {d:?}"
        );
        let (urls, accepted, finished) = (urls.clone(), accepted.clone(), finished.clone());
        let _ = tokio::time::timeout(Duration::from_secs(5), async move {
            work(&urls, &accepted, &finished).await
        })
        .await;
    }
    eprintln!(
        "jepsen: {rounds} faults, {} records, {} read during the run, {} queue tasks accepted",
        stored.len(),
        history.seen.lock().len(),
        accepted.lock().len()
    );
    let counts = cluster.stop_and_compare_replicas(TOPIC, PARTITIONS);
    assert_eq!(counts.iter().sum::<i64>(), stored.len() as i64);
}

/// Pulls from the queue and accepts everything, through whichever node
/// answers, until `stop` (or, when `stop` is already set, until a pull
/// comes back empty).
async fn work(urls: &[String], accepted: &Mutex<BTreeSet<String>>, stop: &AtomicBool) {
    let mut member = String::new();
    loop {
        let Some(c) = any_client(urls).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let r = c
            .queues()
            .pull(pb::PullRequest {
                group: "work".into(),
                topic: TOPIC.into(),
                member_id: member.clone(),
                max_records: 500,
                max_wait_ms: 200,
                prefetch: 1000,
                ..Default::default()
            })
            .await;
        let Ok(r) = r.map(|r| r.into_inner()) else {
            member.clear();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        member = r.member_id;
        let acks: Vec<pb::Ack> = r
            .deliveries
            .iter()
            .map(|d| QueueConfig::accept(d.delivery_id))
            .collect();
        let values: Vec<String> = r
            .deliveries
            .iter()
            .filter_map(|d| d.record.as_ref().map(value_of))
            .collect();
        let empty = acks.is_empty();
        if !empty {
            let ok = c
                .queues()
                .acknowledge(pb::AcknowledgeRequest {
                    group: "work".into(),
                    member_id: member.clone(),
                    acks,
                })
                .await;
            if let Ok(ack) = ok {
                let took: BTreeSet<u64> = ack
                    .into_inner()
                    .ack_result
                    .map(|a| a.accepted.into_iter().collect())
                    .unwrap_or_default();
                let mut set = accepted.lock();
                for (d, v) in r.deliveries.iter().zip(values) {
                    if took.contains(&d.delivery_id) {
                        set.insert(v);
                    }
                }
            }
        }
        if stop.load(Ordering::Relaxed) && empty {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = ledger_cluster().await;
    let stop = Arc::new(AtomicBool::new(false));
    let producers = spawn_producers(&cluster, &stop).await;
    // Each broker in turn: SIGTERM (controlled shutdown: its partitions
    // move first), restart, and back in every ISR before the next.
    for id in 1..=3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.node(id).stop();
        cluster.node(id).start();
        cluster.wait_stable(3, Duration::from_secs(60)).await;
        cluster
            .wait_fully_replicated(TOPIC, Duration::from_secs(60))
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut produced = BTreeSet::new();
    for p in producers {
        let (k, sent, stats) = p.await.expect("producer task");
        assert_eq!(stats.failed, 0, "producer {k}: {stats:?}");
        assert_eq!(stats.acked, sent as u64, "producer {k}: {stats:?}");
        produced.extend((0..sent).map(|i| format!("p{k}-{i}")));
    }
    let c = cluster.client(1).await;
    let mut stored = BTreeSet::new();
    for p in 0..PARTITIONS {
        for r in common::api::fetch_all(&c, TOPIC, p).await {
            let v = value_of(&r);
            assert!(stored.insert(v.clone()), "{v} is stored twice");
        }
    }
    assert_eq!(stored, produced, "every acknowledged record, once");
    cluster.wait_caught_up(TOPIC, Duration::from_secs(60)).await;
    cluster.stop_and_compare_replicas(TOPIC, PARTITIONS);
}
