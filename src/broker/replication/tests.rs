//! Roles taken from metadata images, on a real broker in a temp dir.

use super::*;
use crate::broker::{BrokerConfig, NewRecord, ProduceRequest};
use crate::cluster::TopicMetadata;

const ME: NodeId = 1;
const OTHER: NodeId = 2;

/// One topic "t" with one partition on brokers 1 and 2, led by `leader`
/// in `epoch`, both in sync.
fn image(leader: NodeId, epoch: i32) -> MetadataImage {
    let mut image = MetadataImage::default();
    image.topics.insert(
        "t".into(),
        TopicMetadata {
            id: 7,
            name: "t".into(),
            config: serde_json::json!({}),
            partitions: vec![PartitionAssignment {
                replicas: vec![ME, OTHER],
                leader: Some(leader),
                leader_epoch: epoch,
                isr: vec![ME, OTHER],
                partition_epoch: epoch,
                adding: Vec::new(),
                removing: Vec::new(),
            }],
        },
    );
    image
}

fn record() -> ProduceRequest {
    ProduceRequest {
        topic: "t".into(),
        partition: Some(0),
        records: vec![NewRecord {
            key: None,
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: Vec::new(),
            timestamp: None,
            partition: None,
        }],
        acks: Acks::All,
        producer: None,
    }
}

/// An acks=ALL append made as leader is never acknowledged once
/// leadership has moved, even if it moved before the wait for the
/// in-sync replicas began: the new leader may never have received it.
#[tokio::test]
async fn an_append_is_not_acknowledged_after_leadership_moves_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig::new(dir.path());
    config.node_id = Some(ME);
    config.replication.ack_timeout = Duration::from_secs(5);
    let broker = Broker::open(config).expect("broker");
    broker.apply_metadata(&image(ME, 1), true).expect("lead");
    let appended = broker.append(record()).expect("append as leader");
    // The controller moves leadership (a controlled shutdown, say) before
    // the follower fetched the record.
    broker
        .apply_metadata(&image(OTHER, 2), true)
        .expect("follow");
    let result = appended.durable().await;
    assert_eq!(result.failures.len(), 1, "{result:?}");
    assert!(
        matches!(*result.failures[0].error, BrokerError::NotLeader { .. }),
        "{:?}",
        result.failures[0].error
    );
    broker.close();
}

/// The same append, still led here, waits for the follower and is
/// acknowledged once it has fetched past it.
#[tokio::test]
async fn an_append_is_acknowledged_once_the_follower_has_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig::new(dir.path());
    config.node_id = Some(ME);
    let broker = Broker::open(config).expect("broker");
    broker.apply_metadata(&image(ME, 1), true).expect("lead");
    let appended = broker.append(record()).expect("append as leader");
    let b = broker.clone();
    let follower = tokio::task::spawn_blocking(move || {
        let fetch = |offset: i64| ReplicaFetchPartition {
            topic: "t".into(),
            topic_id: 7,
            partition: 0,
            leader_epoch: 1,
            fetch_offset: offset,
            last_fetched_epoch: 1,
            durable_offset: offset,
        };
        // The follower reads the record, then reports that it holds it.
        let got = b.replica_fetch(OTHER, &[fetch(0)], 1 << 20, 1 << 20);
        assert!(got[0].outcome.is_ok());
        b.replica_fetch(OTHER, &[fetch(1)], 1 << 20, 1 << 20);
    });
    let result = appended.durable().await;
    follower.await.expect("follower");
    assert!(result.failures.is_empty(), "{result:?}");
    broker.close();
}

/// A restarted broker whose stored metadata still names it leader takes
/// no role until it has registered: it neither appends nor serves reads.
#[test]
fn an_unregistered_broker_takes_no_role_from_a_stale_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig::new(dir.path());
    config.node_id = Some(ME);
    let broker = Broker::open(config).expect("broker");
    broker.apply_metadata(&image(ME, 1), false).expect("apply");
    let refused = broker.append(record()).expect("request");
    assert_eq!(refused.result().failures.len(), 1);
    broker
        .apply_metadata(&image(ME, 1), true)
        .expect("registered");
    let appended = broker.append(record()).expect("request");
    assert!(appended.result().failures.is_empty());
    broker.close();
}
