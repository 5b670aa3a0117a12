//! Partition replication on clusters of real `sluice serve` processes:
//! acks=ALL records survive SIGKILL of their leader, idempotent retries
//! across a failover leave no duplicates, a restarted replica catches up
//! and rejoins the ISR, and every replica ends byte for byte the same.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use bytes::Bytes;
use common::cluster::TestCluster;
use sluice::client::{pb, Client, ProducerConfig};

/// Every record of `topic` as (value, partition, offset), read from the
/// partitions' leaders through `c`.
async fn read_everything(c: &Client, topic: &str) -> Vec<(String, i32, i64)> {
    let n = c.partition_count(topic).await.expect("partitions");
    let mut out = Vec::new();
    for partition in 0..n {
        for rec in common::api::fetch_all(c, topic, partition).await {
            let v = String::from_utf8_lossy(rec.value.as_deref().unwrap_or_default()).into_owned();
            out.push((v, partition, rec.offset));
        }
    }
    out
}

/// Three voters (and `brokers_only` more brokers) with `topic` created at
/// replication factor 3 and every replica in sync.
async fn replicated_cluster(
    brokers_only: u64,
    topic: &str,
    partitions: i32,
    config: pb::TopicConfig,
) -> (TestCluster, pb::MetadataResponse) {
    let cluster = TestCluster::start(3, brokers_only, &[]).await;
    cluster
        .client(1)
        .await
        .create_replicated_topic(topic, partitions, Some(3), config)
        .await
        .expect("create");
    let meta = cluster
        .wait_fully_replicated(topic, Duration::from_secs(30))
        .await;
    (cluster, meta)
}

fn leader_of(meta: &pb::MetadataResponse, topic: &str, partition: usize) -> u64 {
    let t = meta
        .topics
        .iter()
        .find(|t| t.name == topic)
        .expect("topic in metadata");
    t.partitions[partition].leader as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_survive_killing_their_leader_without_duplicates() {
    let topic = "replicated";
    let (mut cluster, meta) = replicated_cluster(0, topic, 3, Default::default()).await;
    // Kill a leader other than node 1, which the producer bootstraps from.
    let victim = (0..3)
        .map(|p| leader_of(&meta, topic, p))
        .find(|l| *l != 1)
        .expect("some partition led elsewhere");

    let client = cluster.client(1).await;
    let producer = client.producer(
        topic,
        ProducerConfig {
            acks: pb::Acks::All,
            linger: Duration::from_millis(2),
            ..Default::default()
        },
    );
    const N: usize = 6_000;
    let send = tokio::spawn(async move {
        for i in 0..N {
            producer
                .send(pb::ProduceRecord {
                    key: Some(Bytes::from(format!("k{}", i % 97))),
                    value: Some(Bytes::from(format!("id-{i}"))),
                    ..Default::default()
                })
                .await
                .expect("queue");
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        producer.close().await.expect("close")
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.node(victim).kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.node(victim).start();
    let stats = send.await.expect("producer task");
    assert_eq!(stats.failed, 0, "no record failed: {stats:?}");
    assert_eq!(stats.acked, N as u64, "{stats:?}");

    // Every acknowledged record is readable exactly once.
    let records = read_everything(&cluster.client(1).await, topic).await;
    let mut seen: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    for (v, p, o) in &records {
        if let Some(prev) = seen.insert(v.clone(), (*p, *o)) {
            panic!("{v} appears twice: at {prev:?} and at ({p}, {o})");
        }
    }
    let expected: BTreeSet<String> = (0..N).map(|i| format!("id-{i}")).collect();
    let got: BTreeSet<String> = seen.keys().cloned().collect();
    let missing: Vec<&String> = expected.difference(&got).take(10).collect();
    assert!(
        missing.is_empty(),
        "acknowledged records lost: {missing:?} ..."
    );
    // Offsets per partition are contiguous from 0.
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (_, p, o) in &records {
        per_partition.entry(*p).or_default().push(*o);
    }
    for (p, offsets) in &per_partition {
        let want: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, &want, "partition {p} offsets are contiguous");
    }

    // The restarted broker catches up and rejoins every ISR; then all
    // replicas hold the same bytes.
    cluster.wait_caught_up(topic, Duration::from_secs(60)).await;
    let counts = cluster.stop_and_compare_replicas(topic, 3);
    assert_eq!(counts.iter().sum::<i64>(), N as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_all_is_refused_below_min_insync_replicas_and_served_again_after() {
    let topic = "guarded";
    let (mut cluster, meta) = replicated_cluster(
        0,
        topic,
        1,
        pb::TopicConfig {
            min_insync_replicas: Some(3),
            ..Default::default()
        },
    )
    .await;
    let leader = leader_of(&meta, topic, 0);
    let followers: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    let produce = |acks: pb::Acks, tag: &str| pb::ProduceRequest {
        topic: topic.into(),
        partition: Some(0),
        records: vec![pb::ProduceRecord {
            value: Some(Bytes::from(tag.to_string())),
            ..Default::default()
        }],
        acks: acks as i32,
        ..Default::default()
    };
    // A follower dies: once it is fenced the ISR has 2 members, below the
    // topic's minimum of 3.
    cluster.node(followers[0]).kill();
    let c = cluster.client(leader).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // Until the ISR shrinks, an acks=ALL record is appended and waits;
    // once it has, the next one is refused before it is appended.
    let mut attempt = 0;
    let refused = loop {
        attempt += 1;
        let tag = format!("attempt-{attempt}");
        let reply = c
            .produce(produce(pb::Acks::All, &tag))
            .await
            .expect("produce");
        if let Some(e) = reply.record_errors.first() {
            assert_eq!(e.code, tonic::Code::Unavailable as i32, "{e:?}");
            if e.message.contains("nothing was appended") {
                break tag;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acks=ALL kept succeeding"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // acks=LEADER is still taken.
    let reply = c
        .produce(produce(pb::Acks::Leader, "leader-only"))
        .await
        .expect("acks=LEADER");
    assert!(reply.record_errors.is_empty(), "{:?}", reply.record_errors);
    // A follower returns, catches up, rejoins: acks=ALL works again.
    cluster.node(followers[0]).start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let reply = c.produce(produce(pb::Acks::All, "accepted")).await;
        if reply.is_ok_and(|r| r.record_errors.is_empty()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acks=ALL never recovered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing refused was appended, and the survivors agree.
    let records = read_everything(&c, topic).await;
    let values: Vec<&str> = records.iter().map(|r| r.0.as_str()).collect();
    assert!(!values.contains(&refused.as_str()), "{values:?}");
    assert!(values.contains(&"accepted"), "{values:?}");
}

/// The broker leading the partition of `state_topic` that holds `group`
/// (its coordinator), as every node's metadata says.
async fn coordinator_of(
    cluster: &TestCluster,
    state_topic: &str,
    partitions: i32,
    group: &str,
) -> u64 {
    let shard = (sluice::broker::murmur2(group.as_bytes()) & 0x7fff_ffff) % partitions;
    let meta = cluster
        .wait_fully_replicated(state_topic, Duration::from_secs(60))
        .await;
    leader_of(&meta, state_topic, shard as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_offsets_and_queue_progress_survive_killing_their_coordinator() {
    let topic = "jobs";
    let (mut cluster, _) = replicated_cluster(0, topic, 2, Default::default()).await;
    // Records to consume, through node 1.
    let c1 = cluster.client(1).await;
    let records: Vec<pb::ProduceRecord> = (0..200)
        .map(|i| pb::ProduceRecord {
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("task-{i}"))),
            ..Default::default()
        })
        .collect();
    let reply = c1
        .produce(pb::ProduceRequest {
            topic: topic.into(),
            records,
            acks: pb::Acks::All as i32,
            ..Default::default()
        })
        .await
        .expect("produce");
    assert!(reply.record_errors.is_empty(), "{:?}", reply.record_errors);

    // A group's committed offsets, set through any node.
    let group = "billing";
    let group_coordinator = coordinator_of(&cluster, "__consumer_offsets", 4, group).await;
    let via = (1..=3)
        .find(|n| *n != group_coordinator)
        .expect("another node");
    cluster
        .client(via)
        .await
        .reset_offsets(
            group,
            topic,
            vec![],
            pb::reset_offsets_request::To::Offset(42),
            false,
            true,
        )
        .await
        .expect("reset through a node that forwards to the coordinator");

    // A work queue: half the tasks accepted.
    let queue = "workers";
    let queue_coordinator = coordinator_of(&cluster, "__share_group_state", 4, queue).await;
    let qc = cluster.client(via).await;
    let pull = |member: String, max: i32| pb::PullRequest {
        group: queue.into(),
        topic: topic.into(),
        member_id: member,
        max_records: max,
        max_wait_ms: 1000,
        prefetch: 1000,
        ..Default::default()
    };
    let mut accepted: BTreeSet<String> = BTreeSet::new();
    let mut member = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while accepted.len() < 100 {
        // The queue-state topic's leaders may still be settling (as a
        // client would, retry UNAVAILABLE).
        let r = match qc
            .queues()
            .pull(pull(member.clone(), 100 - accepted.len() as i32))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e)
                if e.code() == tonic::Code::Unavailable && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => panic!("pull: {e:?}"),
        };
        member = r.member_id;
        let acks: Vec<pb::Ack> = r
            .deliveries
            .iter()
            .map(|d| sluice::client::QueueConfig::accept(d.delivery_id))
            .collect();
        for d in &r.deliveries {
            let v = d
                .record
                .as_ref()
                .and_then(|r| r.value.clone())
                .unwrap_or_default();
            accepted.insert(String::from_utf8_lossy(&v).into_owned());
        }
        qc.queues()
            .acknowledge(pb::AcknowledgeRequest {
                group: queue.into(),
                member_id: member.clone(),
                acks,
            })
            .await
            .expect("ack");
    }
    assert_eq!(accepted.len(), 100);

    // Kill both coordinators (one at a time if they are the same node).
    let victims: BTreeSet<u64> = [group_coordinator, queue_coordinator].into();
    let survivor = (1..=3).find(|n| !victims.contains(n)).expect("a survivor");
    for v in &victims {
        cluster.node(*v).kill();
    }
    // Two voters of three may be gone: bring one back for a quorum.
    if victims.len() == 2 {
        let first = *victims.iter().next().expect("one");
        cluster.node(first).start();
    }
    let c = cluster.client(survivor).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let offsets = loop {
        match c.fetch_offsets(group, vec![topic.into()]).await {
            Ok(o) if !o.is_empty() => break o,
            r => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "offsets never served again: {r:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(offsets.len(), 2, "{offsets:?}");
    assert!(offsets.iter().all(|o| o.offset == 42), "{offsets:?}");

    // The queue's new coordinator hands out only the tasks not accepted.
    let mut rest: BTreeSet<String> = BTreeSet::new();
    let mut member = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while accepted.len() + rest.len() < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue stalled at {} + {}",
            accepted.len(),
            rest.len()
        );
        let r = match c.queues().pull(pull(member.clone(), 100)).await {
            Ok(r) => r.into_inner(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        member = r.member_id;
        let mut acks = Vec::new();
        for d in &r.deliveries {
            let v = d
                .record
                .as_ref()
                .and_then(|r| r.value.clone())
                .unwrap_or_default();
            let v = String::from_utf8_lossy(&v).into_owned();
            assert!(
                !accepted.contains(&v),
                "{v} was accepted before the failover and delivered again"
            );
            rest.insert(v);
            acks.push(sluice::client::QueueConfig::accept(d.delivery_id));
        }
        if !acks.is_empty() {
            c.queues()
                .acknowledge(pb::AcknowledgeRequest {
                    group: queue.into(),
                    member_id: member.clone(),
                    acks,
                })
                .await
                .expect("ack");
        }
    }
    assert_eq!(accepted.len() + rest.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preferred_leaders_take_their_partitions_back_once_in_sync() {
    let topic = "balanced";
    let (mut cluster, meta) = replicated_cluster(0, topic, 3, Default::default()).await;
    let preferred = |m: &pb::MetadataResponse| -> usize {
        m.topics[0]
            .partitions
            .iter()
            .filter(|p| p.leader == p.replicas[0])
            .count()
    };
    assert_eq!(preferred(&meta), 3, "created with preferred leaders");
    // Node 2 dies: its partition moves; it returns and catches up, but
    // leadership stays where it went until an election.
    cluster.node(2).kill();
    let c = cluster.client(1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while preferred(&c.metadata(&[topic]).await.expect("metadata")) == 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "leadership never moved"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.node(2).start();
    cluster
        .wait_fully_replicated(topic, Duration::from_secs(60))
        .await;
    let r = c
        .cluster()
        .elect_preferred_leaders(pb::ElectPreferredLeadersRequest {
            topic: Some(topic.into()),
        })
        .await
        .expect("elect")
        .into_inner();
    assert_eq!(r.partitions, 1);
    let meta = cluster
        .converged_metadata_of(&[topic], Duration::from_secs(30))
        .await;
    assert_eq!(preferred(&meta), 3);
    // And the moved partition serves acks=ALL writes on its old leader.
    let reply = c
        .produce(pb::ProduceRequest {
            topic: topic.into(),
            records: (0..30)
                .map(|i| pb::ProduceRecord {
                    key: Some(Bytes::from(format!("k{i}"))),
                    value: Some(Bytes::from(format!("v{i}"))),
                    ..Default::default()
                })
                .collect(),
            acks: pb::Acks::All as i32,
            ..Default::default()
        })
        .await
        .expect("produce");
    assert!(reply.record_errors.is_empty(), "{:?}", reply.record_errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reassigned_partition_moves_its_records_and_its_leader() {
    let topic = "moving";
    let (cluster, meta) = replicated_cluster(1, topic, 1, Default::default()).await;
    let c = cluster.client(1).await;
    let p = meta.topics[0].partitions[0].clone();
    let produce = |tag: &'static str| pb::ProduceRequest {
        topic: topic.into(),
        partition: Some(0),
        records: (0..100)
            .map(|i| pb::ProduceRecord {
                value: Some(Bytes::from(format!("{tag}-{i}"))),
                ..Default::default()
            })
            .collect(),
        acks: pb::Acks::All as i32,
        ..Default::default()
    };
    let r = c.produce(produce("before")).await.expect("produce");
    assert!(r.record_errors.is_empty(), "{:?}", r.record_errors);
    // Replace the leader with broker 4, which holds no replica yet; it
    // leads afterwards.
    let spare = (1..=4)
        .find(|b| !p.replicas.contains(b))
        .expect("a broker without a replica");
    let mut target: Vec<i32> = p
        .replicas
        .iter()
        .copied()
        .filter(|r| *r != p.leader)
        .collect();
    target.insert(0, spare);
    c.cluster()
        .reassign_partition(pb::ReassignPartitionRequest {
            topic: topic.into(),
            partition: 0,
            replicas: target.clone(),
        })
        .await
        .expect("reassign");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = c.metadata(&[topic]).await.expect("metadata");
        let q = &m.topics[0].partitions[0];
        if q.replicas == target && q.adding.is_empty() && q.removing.is_empty() {
            assert!(!q.isr.contains(&p.leader), "{q:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reassignment stuck: {q:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = c
        .cluster()
        .elect_preferred_leaders(pb::ElectPreferredLeadersRequest {
            topic: Some(topic.into()),
        })
        .await
        .expect("elect");
    let moved = cluster
        .converged_metadata_of(&[topic], Duration::from_secs(30))
        .await;
    assert_eq!(
        moved.topics[0].partitions[0].leader,
        spare,
        "the new preferred leader leads ({} moved)",
        r.into_inner().partitions
    );
    let r = c.produce(produce("after")).await.expect("produce");
    assert!(r.record_errors.is_empty(), "{:?}", r.record_errors);
    let values: Vec<String> = read_everything(&cluster.client(spare as u64).await, topic)
        .await
        .into_iter()
        .map(|(v, _, _)| v)
        .collect();
    let want: Vec<String> = ["before", "after"]
        .iter()
        .flat_map(|t| (0..100).map(move |i| format!("{t}-{i}")))
        .collect();
    assert_eq!(values, want, "every record, in order, on the new replicas");
}
