//! Clusters of real `sluice serve` processes on loopback: formation from a
//! static voter list, topic operations and data requests through any node,
//! controller kills (SIGKILL), restarts, a partitioned old leader, a
//! broker-only node, forwarding from a broker behind on metadata, and what
//! a single node reports.

mod common;

use std::{collections::BTreeSet, time::Duration};

use bytes::Bytes;
use common::cluster::TestCluster;
use sluice::client::{pb, Client};

fn keyed(topic: &str, n: usize, tag: &str) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: topic.into(),
        records: (0..n)
            .map(|i| pb::ProduceRecord {
                key: Some(Bytes::from(format!("{tag}-key-{i}"))),
                value: Some(Bytes::from(format!("{tag}-value-{i}"))),
                ..Default::default()
            })
            .collect(),
        acks: pb::Acks::All as i32,
        ..Default::default()
    }
}

/// Every value in every partition of `topic`, read through `c`.
async fn read_all(c: &Client, topic: &str) -> BTreeSet<String> {
    let n = c.partition_count(topic).await.expect("partitions");
    let mut out = BTreeSet::new();
    for partition in 0..n {
        for rec in common::api::fetch_all(c, topic, partition).await {
            out.insert(String::from_utf8_lossy(rec.value.as_deref().unwrap_or_default()).into());
        }
    }
    out
}

async fn formation_and_routing(n: u64) {
    let cluster = TestCluster::start(n, 0, &[]).await;
    // Topic operations through different nodes.
    let rf = 3.min(n as i32);
    let created = cluster
        .client(2)
        .await
        .create_replicated_topic("orders", 2 * n as i32, Some(rf), Default::default())
        .await
        .expect("create through node 2");
    assert_eq!(created.partitions.len(), 2 * n as usize);
    cluster
        .client(n)
        .await
        .create_topic("audit", 3, Default::default())
        .await
        .expect("create through the last node");
    cluster
        .client(1)
        .await
        .create_partitions("audit", 5)
        .await
        .expect("add partitions through node 1");

    let meta = cluster.converged_metadata(Duration::from_secs(20)).await;
    assert_eq!(meta.brokers.len(), n as usize);
    let orders = meta
        .topics
        .iter()
        .find(|t| t.name == "orders")
        .expect("orders");
    let audit = meta
        .topics
        .iter()
        .find(|t| t.name == "audit")
        .expect("audit");
    assert_eq!(audit.partitions.len(), 5);
    assert_ne!(orders.topic_id, audit.topic_id);
    let mut leaders = std::collections::BTreeMap::<i32, usize>::new();
    for p in &orders.partitions {
        let distinct: BTreeSet<i32> = p.replicas.iter().copied().collect();
        assert_eq!(distinct.len(), rf as usize, "replicas distinct: {p:?}");
        assert_eq!(p.leader, p.replicas[0], "preferred leader leads");
        assert_eq!(p.isr, p.replicas, "every replica is in sync");
        *leaders.entry(p.leader).or_default() += 1;
    }
    // Leaders balanced: two partitions per broker.
    assert!(leaders.values().all(|&c| c == 2), "{leaders:?}");

    // Data through any node: each node produces, every node reads it all.
    let mut expected = BTreeSet::new();
    for id in 1..=n {
        let c = cluster.client(id).await;
        let reply = c
            .produce(keyed("orders", 40, &format!("via-{id}")))
            .await
            .expect("produce");
        assert!(reply.record_errors.is_empty(), "{:?}", reply.record_errors);
        let total: i32 = reply.partitions.iter().map(|p| p.record_count).sum();
        assert_eq!(total, 40);
        for i in 0..40 {
            expected.insert(format!("via-{id}-value-{i}"));
        }
    }
    for id in 1..=n {
        let got = read_all(&cluster.client(id).await, "orders").await;
        assert_eq!(got, expected, "node {id} reads every record");
    }
    // Describe from any node shows each partition's real high watermark.
    let sums: Vec<i64> = {
        let mut v = Vec::new();
        for id in 1..=n {
            let d = cluster
                .client(id)
                .await
                .describe_topic("orders")
                .await
                .expect("describe");
            v.push(d.partitions.iter().map(|p| p.high_watermark).sum());
        }
        v
    };
    assert!(sums.iter().all(|s| *s == 40 * n as i64), "{sums:?}");

    // Delete through one node: gone everywhere; the name can be reused
    // under a new id.
    cluster
        .client(1)
        .await
        .delete_topic("audit")
        .await
        .expect("delete");
    cluster
        .client(2)
        .await
        .create_topic("audit", 1, Default::default())
        .await
        .expect("recreate");
    let meta = cluster.converged_metadata(Duration::from_secs(20)).await;
    let again = meta
        .topics
        .iter()
        .find(|t| t.name == "audit")
        .expect("audit");
    assert_eq!(again.partitions.len(), 1);
    assert_ne!(
        again.topic_id, audit.topic_id,
        "a recreated topic has a new id"
    );

    // Refusals name the rule, from any node.
    let err = cluster
        .client(n)
        .await
        .create_replicated_topic("too-many", 1, Some(n as i32 + 1), Default::default())
        .await
        .expect_err("rf above the broker count");
    assert!(
        err.to_string().contains(&format!("must be in [1, {n}]")),
        "{err}"
    );
    let err = cluster
        .client(1)
        .await
        .create_topic("orders", 1, Default::default())
        .await
        .expect_err("exists");
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_node_cluster_forms_places_and_routes_from_any_node() {
    formation_and_routing(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_five_node_cluster_forms_from_the_same_voter_list() {
    formation_and_routing(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_controller_elects_another_and_restarts_catch_up() {
    let mut cluster = TestCluster::start(3, 0, &[]).await;
    let c = cluster.client(1).await;
    c.create_topic("before", 3, Default::default())
        .await
        .expect("create");
    let old = cluster.wait_stable(3, Duration::from_secs(20)).await;
    cluster.node(old).kill();
    let survivor = if old == 1 { 2 } else { 1 };
    // Topic operations continue through a survivor (the proposal waits
    // out the election).
    cluster
        .client(survivor)
        .await
        .create_topic("after", 2, Default::default())
        .await
        .expect("create after the controller died");
    let statuses = cluster.statuses().await;
    for (_, s) in &statuses {
        let s = s.as_ref().expect("status");
        assert_ne!(s.controller, old as i32, "a new controller");
        assert!(s.controller >= 0);
    }
    // The old controller restarts and catches up.
    cluster.node(old).start();
    let meta = cluster.converged_metadata(Duration::from_secs(30)).await;
    let names: BTreeSet<&str> = meta.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["before", "after"]));
    cluster.wait_stable(3, Duration::from_secs(30)).await;

    // The whole cluster SIGKILLed and restarted: the metadata is intact.
    let before_restart = meta.topics.clone();
    for id in 1..=3 {
        cluster.node(id).kill();
    }
    for id in 1..=3 {
        cluster.node(id).start();
    }
    cluster.wait_stable(3, Duration::from_secs(60)).await;
    let meta = cluster.converged_metadata(Duration::from_secs(30)).await;
    let ids = |ts: &[pb::TopicMetadata]| -> Vec<(String, u64, usize)> {
        ts.iter()
            .map(|t| (t.name.clone(), t.topic_id, t.partitions.len()))
            .collect()
    };
    assert_eq!(ids(&meta.topics), ids(&before_restart));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_old_leader_cannot_commit_and_heals_to_one_history() {
    let cluster = TestCluster::start(3, 0, &[]).await;
    let old = cluster.wait_stable(3, Duration::from_secs(20)).await;
    cluster.isolate(old, true);
    // The cut-off leader cannot commit: its proposal fails (the client
    // gives up; the server abandons it with the call).
    let lonely = cluster.client(old).await;
    let mut admin = lonely.admin();
    let mut req = tonic::Request::new(pb::CreateTopicRequest {
        name: "minority".into(),
        partitions: 1,
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(3));
    assert!(
        admin.create_topic(req).await.is_err(),
        "a leader without a quorum must not commit"
    );
    // The majority elects a new controller and commits.
    let other = (1..=3).find(|&i| i != old).expect("another node");
    cluster
        .client(other)
        .await
        .create_topic("majority", 1, Default::default())
        .await
        .expect("the majority commits");
    let mv = cluster
        .client(other)
        .await
        .metadata(&[])
        .await
        .expect("metadata");
    assert!(mv.controller >= 0 && mv.controller != old as i32);
    // Heal: one history, with the majority's topic and never the
    // minority's.
    cluster.isolate(old, false);
    let meta = cluster.converged_metadata(Duration::from_secs(30)).await;
    let names: Vec<&str> = meta.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["majority"]);
    cluster.wait_stable(3, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_only_node_joins_takes_partitions_and_leaves_once_they_moved() {
    let cluster = TestCluster::start(3, 1, &[]).await;
    let statuses = cluster.statuses().await;
    let view = statuses[0].1.as_ref().expect("status");
    let learner = view
        .nodes
        .iter()
        .find(|n| n.id == 4)
        .expect("node 4 listed");
    assert_eq!(learner.role, "learner");
    assert!(learner.live);
    assert_eq!(view.nodes.iter().filter(|n| n.role == "voter").count(), 3);
    // New partitions go to it too (8 partitions over 4 brokers).
    cluster
        .client(4)
        .await
        .create_replicated_topic("spread", 8, Some(1), Default::default())
        .await
        .expect("create through the broker-only node");
    let meta = cluster.converged_metadata(Duration::from_secs(20)).await;
    let spread = &meta.topics[0];
    assert_eq!(
        spread.partitions.iter().filter(|p| p.leader == 4).count(),
        2
    );
    // Data through a voter lands on node 4's partitions and reads back
    // through node 4.
    let c1 = cluster.client(1).await;
    // Right after placement a new leader may not serve yet (UNAVAILABLE,
    // retriable, as Kafka's LEADER_NOT_AVAILABLE): retry the request as
    // a client does (values are distinct, so a repeat is not counted).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = c1.produce(keyed("spread", 50, "x")).await.expect("produce");
        if r.record_errors.is_empty() {
            break;
        }
        let retriable = r
            .record_errors
            .iter()
            .all(|e| e.code == tonic::Code::Unavailable as i32);
        assert!(
            retriable && std::time::Instant::now() < deadline,
            "{:?}",
            r.record_errors
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read_all(&cluster.client(4).await, "spread").await.len(), 50);
    // Decommissioning it moves its replicas to the other brokers first
    // (each copied and in sync before it leaves), then removes it.
    cluster
        .client(1)
        .await
        .cluster()
        .decommission_broker(pb::DecommissionBrokerRequest { id: 4 })
        .await
        .expect("decommission moves its replicas");
    let meta = c1.metadata(&[]).await.expect("metadata");
    for t in &meta.topics {
        for p in &t.partitions {
            assert!(
                !p.replicas.contains(&4),
                "{} still on node 4: {p:?}",
                t.name
            );
        }
    }
    assert_eq!(read_all(&cluster.client(1).await, "spread").await.len(), 50);
    // Consumer groups work in a multi-broker cluster: a heartbeat through
    // any node reaches the group's coordinator (once the offsets topic
    // exists and has leaders).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let joined = loop {
        let r = c1
            .groups()
            .heartbeat(pb::HeartbeatRequest {
                group: "g".into(),
                topics: vec!["spread".into()],
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => break r.into_inner(),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                assert!(std::time::Instant::now() < deadline, "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(!joined.member_id.is_empty());
    assert_eq!(
        joined
            .assignment
            .iter()
            .map(|t| t.partitions.len())
            .sum::<usize>(),
        8
    );
}

/// A broker that missed a leader change still serves its clients: it
/// forwards to the leader it knows, which (knowing better) forwards once
/// more to the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_behind_on_metadata_reaches_a_moved_partition_in_two_hops() {
    let cluster = TestCluster::start(3, 0, &[]).await;
    let controller = cluster.wait_stable(3, Duration::from_secs(20)).await;
    let c = cluster.client(controller).await;
    c.create_replicated_topic("moved", 1, Some(1), Default::default())
        .await
        .expect("create");
    let meta = cluster.converged_metadata(Duration::from_secs(20)).await;
    let old = meta.topics[0].partitions[0].leader;
    assert!(old > 0, "{meta:?}");
    // The stale broker is neither the controller nor the old leader; the
    // new leader is the remaining node, or the controller.
    let stale = (1..=3u64)
        .find(|&i| i != controller && i as i32 != old)
        .expect("a third node");
    let new = (1..=3u64)
        .find(|&i| i != stale && i as i32 != old)
        .expect("a new leader");
    let r = c
        .produce(keyed("moved", 10, "before"))
        .await
        .expect("produce");
    assert!(r.record_errors.is_empty(), "{r:?}");
    // Cut the stale broker off the quorum (data links stay), then move
    // the partition.
    cluster.isolate(stale, true);
    c.cluster()
        .reassign_partition(pb::ReassignPartitionRequest {
            topic: "moved".into(),
            partition: 0,
            replicas: vec![new as i32],
        })
        .await
        .expect("reassign");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = c.metadata(&["moved"]).await.expect("metadata");
        let p = &m.topics[0].partitions[0];
        if p.leader == new as i32 && p.removing.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not moved: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stale broker still names the old leader...
    let lagging = cluster.client(stale).await;
    let view = lagging.metadata(&["moved"]).await.expect("stale metadata");
    assert_eq!(view.topics[0].partitions[0].leader, old);
    // ...and yet a produce and a fetch sent to it (not routed by the
    // client) reach the new leader.
    let mut direct = lagging.broker();
    let r = direct
        .produce(keyed("moved", 5, "after"))
        .await
        .expect("produce through the stale broker")
        .into_inner();
    assert!(r.record_errors.is_empty(), "{r:?}");
    let fetched = direct
        .fetch(pb::FetchRequest {
            topic: "moved".into(),
            partition: 0,
            offset: 0,
            ..Default::default()
        })
        .await
        .expect("fetch through the stale broker")
        .into_inner();
    let values: Vec<String> = fetched
        .records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into())
        .collect();
    assert_eq!(values.len(), 15, "{values:?}");
    assert!(values[10..].iter().all(|v| v.starts_with("after")));
    assert!(cluster.forwarded(stale, "Fetch").await >= 1);
    assert!(cluster.forwarded(old as u64, "Fetch").await >= 1);
    // The stored batches too (the zero-copy path hands a call for a
    // partition led elsewhere to the forwarding one).
    let raw = direct
        .fetch_batches(pb::FetchBatchesRequest {
            topic: "moved".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
            max_wait_ms: 0,
        })
        .await
        .expect("fetch batches through the stale broker")
        .into_inner();
    let records = sluice::client::batches::consumed_records(&raw, 0).expect("decode");
    assert_eq!(records, fetched.records);
    assert_eq!(raw.next_offset, 15);
    assert!(cluster.forwarded(stale, "FetchBatches").await >= 1);
    assert!(cluster.forwarded(old as u64, "FetchBatches").await >= 1);
    cluster.isolate(stale, false);
    cluster.converged_metadata(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_answers_as_a_one_broker_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::server::TestServer::start(dir.path()).await;
    let c = server.client().await;
    c.create_topic("t", 2, Default::default())
        .await
        .expect("create");
    let meta = c.metadata(&[]).await.expect("metadata");
    assert_eq!(meta.brokers.len(), 1);
    assert_eq!(meta.brokers[0].address, server.addr.to_string());
    let p = &meta.topics[0].partitions;
    assert_eq!(p.len(), 2);
    assert!(p
        .iter()
        .all(|p| p.leader == 1 && p.replicas == vec![1] && p.isr == vec![1]));
    let d = c.describe_topic("t").await.expect("describe");
    assert!(d
        .partitions
        .iter()
        .all(|p| p.leader == 1 && p.replicas == vec![1]));
    assert_eq!(d.topic_id, meta.topics[0].topic_id);
    let s = c.describe_cluster().await.expect("describe cluster");
    assert_eq!(s.mode, "standalone");
    let err = c
        .create_replicated_topic("t2", 1, Some(2), Default::default())
        .await
        .expect_err("rf 2 on one node");
    assert!(err.to_string().contains("[1, 1]"), "{err}");
    server.stop().await;

    // A data directory with a single node's topics is not silently
    // emptied by joining a cluster: the start is refused.
    let err = refused_cluster_start(dir.path(), "127.0.0.1:0");
    assert!(
        err.contains("holds topics created by a single-node server"),
        "{err}"
    );
    // A wildcard listen address is not an address to hand out.
    let empty = tempfile::tempdir().expect("tempdir");
    let err = refused_cluster_start(empty.path(), "0.0.0.0:0");
    assert!(err.contains("set --advertise"), "{err}");
}

/// Runs a one-voter cluster node on `dir` listening on `listen`, which must
/// refuse to start; returns what it printed.
fn refused_cluster_start(dir: &std::path::Path, listen: &str) -> String {
    let internal = common::cluster::free_port().to_string();
    let voters = format!("1@{internal}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--listen",
            listen,
            "--metrics-listen",
            "off",
            "--kafka-listen",
            "off",
            "--data-dir",
        ])
        .arg(dir)
        .args(["--node-id", "1", "--internal-listen", &internal])
        .args(["--controller-voters", &voters])
        .output()
        .expect("run");
    assert!(!out.status.success(), "the start must be refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rust_client_sends_each_partition_to_its_leader() {
    let cluster = TestCluster::start(3, 0, &[]).await;
    let c = cluster.client(1).await;
    c.create_replicated_topic("routed", 6, Some(1), Default::default())
        .await
        .expect("create");
    cluster.converged_metadata(Duration::from_secs(20)).await;
    // A thin client (generated stubs, one address) is forwarded.
    let raw = c.broker();
    let mut raw = raw;
    raw.produce(keyed("routed", 60, "thin"))
        .await
        .expect("thin produce");
    let thin = cluster.forwarded(1, "Produce").await;
    assert!(thin >= 1, "a thin client's produce is forwarded");
    // The batching producer and fetches go straight to each leader.
    let producer = c.producer(
        "routed",
        sluice::client::ProducerConfig {
            acks: pb::Acks::All,
            ..Default::default()
        },
    );
    for i in 0..300 {
        producer
            .send(pb::ProduceRecord {
                key: Some(Bytes::from(format!("smart-key-{i}"))),
                value: Some(Bytes::from(format!("smart-value-{i}"))),
                ..Default::default()
            })
            .await
            .expect("send");
    }
    let stats = producer.close().await.expect("close");
    assert_eq!(stats.acked, 300, "{stats:?}");
    let got = read_all(&c, "routed").await;
    assert_eq!(got.len(), 360);
    assert_eq!(
        cluster.forwarded(1, "Produce").await,
        thin,
        "the producer was not forwarded"
    );
    assert_eq!(
        cluster.forwarded(1, "Fetch").await,
        0,
        "fetches were not forwarded"
    );
}
