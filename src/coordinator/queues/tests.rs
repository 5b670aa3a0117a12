//! The shell over a real broker in a temporary directory: groups spread
//! over the state topic's shards, survive a restart, and move to their
//! shard when an older single-shard topic grows.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::broker::{BrokerConfig, TopicConfig};
use crate::coordinator::share::AckKind;

fn open(dir: &Path, partitions: i32) -> (Arc<Broker>, Arc<Queues>) {
    open_with(dir, partitions, 100_000)
}

fn open_with(dir: &Path, partitions: i32, snapshot_min_records: u64) -> (Arc<Broker>, Arc<Queues>) {
    let broker = Broker::open(BrokerConfig::new(dir)).expect("broker");
    let config = QueueStateConfig {
        partitions,
        snapshot_min_records,
    };
    let queues =
        Queues::open_with(broker.clone(), crate::storage::system_clock(), config).expect("queues");
    (broker, queues)
}

/// A broker in a new directory with `shards` queue shards, and a topic
/// "jobs" (one partition) holding `records` records.
fn started(shards: i32, records: usize) -> (tempfile::TempDir, Arc<Broker>, Arc<Queues>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, q) = open(dir.path(), shards);
    broker
        .create_topic("jobs", 1, TopicConfig::default())
        .expect("topic");
    produce(&broker, records);
    (dir, broker, q)
}

/// An ACCEPT of each delivery.
fn accept_all(got: &[Delivery]) -> Vec<AckRequest> {
    got.iter()
        .map(|d| AckRequest {
            delivery_id: d.delivery_id,
            kind: AckKind::Accept,
            reason: None,
        })
        .collect()
}

/// Stops the broker and its queues.
fn close((broker, q): (Arc<Broker>, Arc<Queues>)) {
    drop(q);
    broker.close();
}

/// Stops, then opens again with `partitions` shards.
fn restart(
    dir: &Path,
    partitions: i32,
    old: (Arc<Broker>, Arc<Queues>),
) -> (Arc<Broker>, Arc<Queues>) {
    close(old);
    open(dir, partitions)
}

fn produce(broker: &Broker, n: usize) {
    let records = (0..n)
        .map(|i| NewRecord {
            value: Some(Bytes::from(format!("job-{i}"))),
            ..NewRecord::default()
        })
        .collect();
    let r = broker
        .append(ProduceRequest {
            topic: "jobs".into(),
            partition: Some(0),
            records,
            acks: Acks::Leader,
            producer: None,
        })
        .expect("append")
        .result();
    assert!(r.failures.is_empty());
}

/// Group `g{i}` accepts `i % 3 + 1` records (so each group's state differs).
fn work(q: &Queues, groups: usize) {
    for i in 0..groups {
        let group = format!("g{i}");
        let settings = SettingsUpdate {
            max_deliveries: Some(i as i32 % 7 + 2),
            ..SettingsUpdate::default()
        };
        let member = q
            .join(&group, "jobs", "", 100, Some(settings), false)
            .expect("join");
        let got = q
            .acquire(&group, &member, i as u32 % 3 + 1, usize::MAX)
            .expect("acquire");
        let acks = accept_all(&got);
        let out = q.ack(&group, &member, acks).expect("ack");
        assert!(out.refused.is_empty(), "{:?}", out.refused);
        q.leave(&group, &member);
    }
}

fn check(q: &Queues, groups: usize) {
    for i in 0..groups {
        let group = format!("g{i}");
        let d = q.describe(&group).expect("describe");
        assert_eq!(d.settings.max_deliveries, i as u32 % 7 + 2, "{group}");
        assert_eq!(d.partitions.len(), 1, "{group}");
        let p = &d.partitions[0];
        assert_eq!(p.accepted, i as i64 % 3 + 1, "{group}");
        assert_eq!(p.start, p.accepted, "{group}");
        // Every group is in the shard its name hashes to, and only there.
        for (s, shard) in q.shards.iter().enumerate() {
            let here = shard.peek(|st| st.groups.contains_key(&group));
            assert_eq!(here, s == q.shard_index(&group), "{group} in shard {s}");
        }
    }
}

fn state_partition_ends(broker: &Broker) -> Vec<i64> {
    let count = broker
        .topic(SHARE_STATE_TOPIC)
        .expect("state topic")
        .partitions()
        .len() as i32;
    let all: Vec<i32> = (0..count).collect();
    broker
        .list_offsets(SHARE_STATE_TOPIC, &all, None)
        .expect("offsets")
        .iter()
        .map(|o| o.latest)
        .collect()
}

#[test]
fn groups_spread_over_shards_and_survive_a_restart() {
    let (dir, broker, q) = started(4, 10);
    work(&q, 40);
    check(&q, 40);
    let ends = state_partition_ends(&broker);
    assert_eq!(ends.len(), 4);
    assert!(ends.iter().all(|&e| e > 0), "every shard written: {ends:?}");
    let (_broker, q) = restart(dir.path(), 4, (broker, q));
    check(&q, 40);
}

#[test]
fn a_single_shard_topic_grows_and_its_groups_move_to_their_shards() {
    let (dir, broker, q) = started(1, 10);
    work(&q, 40);
    check(&q, 40);
    assert_eq!(state_partition_ends(&broker).len(), 1);
    // The topic grows; groups are copied to their shards, then deleted
    // from the old one.
    let (broker, q) = restart(dir.path(), 4, (broker, q));
    assert_eq!(state_partition_ends(&broker).len(), 4);
    check(&q, 40);
    // Work goes on where it was.
    let member = q.join("g0", "jobs", "", 100, None, false).expect("join");
    let got = q.acquire("g0", &member, 100, usize::MAX).expect("acquire");
    assert_eq!(got.first().map(|d| d.record.offset), Some(1));
    q.leave("g0", &member);
    // Nothing moves twice, nothing is lost.
    let (broker, q) = restart(dir.path(), 4, (broker, q));
    check(&q, 40);
    close((broker, q));
}

#[test]
fn expiry_visits_a_shard_only_when_something_is_due() {
    let (_dir, broker, q) = started(4, 10);
    let settings = SettingsUpdate {
        lock_timeout_ms: Some(60_000),
        ..SettingsUpdate::default()
    };
    // A stream member (no session deadline) holding records for a minute.
    let member = q
        .join("g", "jobs", "", 100, Some(settings), true)
        .expect("join");
    let before = q.now();
    let got = q.acquire("g", &member, 5, usize::MAX).expect("acquire");
    assert_eq!(got.len(), 5);
    q.tick();
    let shard = q.shard("g");
    let due = shard.peek(|st| st.next_due);
    assert!(
        due >= before + 60_000 && due <= q.now() + 60_000,
        "the shard is next due when the locks end: {due}"
    );
    // The other shards have nothing to do, ever.
    for (i, s) in q.shards.iter().enumerate() {
        if i != q.shard_index("g") {
            assert_eq!(s.peek(|st| st.next_due), i64::MAX, "shard {i}");
        }
    }
    // A release with a delay makes the shard due earlier.
    let out = q
        .ack(
            "g",
            &member,
            vec![AckRequest {
                delivery_id: got[0].delivery_id,
                kind: AckKind::Release { delay_ms: 1_000 },
                reason: None,
            }],
        )
        .expect("ack");
    assert!(out.refused.is_empty());
    let due = shard.peek(|st| st.next_due);
    assert!(due <= q.now() + 1_000, "due with the delay: {due}");
    drop(q);
    broker.close();
}

/// Mappings of files under `dir` that were deleted, from /proc/self/maps.
fn deleted_mappings(dir: &Path) -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let dir = dir.to_string_lossy();
    maps.lines()
        .filter(|l| l.contains(&*dir) && l.ends_with("(deleted)"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_window_does_not_keep_deleted_segments_mapped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig::new(dir.path());
    config.retention_check_interval = std::time::Duration::from_millis(20);
    let broker = Broker::open(config).expect("broker");
    let q = Queues::open(broker.clone(), crate::storage::system_clock()).expect("queues");
    let topic = TopicConfig {
        segment_bytes: Some(4096),
        retention_bytes: Some(8192),
        ..TopicConfig::default()
    };
    broker.create_topic("jobs", 1, topic).expect("topic");
    let append = |i: usize| {
        let r = broker
            .append(ProduceRequest {
                topic: "jobs".into(),
                partition: Some(0),
                records: vec![NewRecord {
                    value: Some(Bytes::from(format!("{i:04}{}", "x".repeat(900)))),
                    ..NewRecord::default()
                }],
                acks: Acks::Leader,
                producer: None,
            })
            .expect("append")
            .result();
        assert!(r.failures.is_empty());
    };
    for i in 0..3 {
        append(i);
    }
    // The window reads the first segment's records; one stays locked.
    let member = q.join("g", "jobs", "", 10, None, true).expect("join");
    let got = q.acquire("g", &member, 1, usize::MAX).expect("acquire");
    assert_eq!(got.len(), 1);
    // Many more segments: retention deletes the first ones.
    for i in 3..60 {
        append(i);
    }
    let mut waited = 0;
    while broker.list_offsets("jobs", &[0], None).expect("offsets")[0].earliest == 0 {
        assert!(waited < 1000, "retention never ran");
        std::thread::sleep(std::time::Duration::from_millis(10));
        waited += 1;
    }
    // Segments being deleted right now may be mapped for a moment; a
    // window holding records keeps its segment mapped for good.
    let mut held = deleted_mappings(dir.path());
    for _ in 0..200 {
        if held.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        held = deleted_mappings(dir.path());
    }
    assert!(held.is_empty(), "deleted segments still mapped: {held:?}");
    // The locked record is still what it was.
    let value = got[0].record.value.clone().unwrap_or_default();
    assert!(value.starts_with(b"0000"));
    drop((got, q));
    broker.close();
}

/// Reads run outside the shard lock, so the window can move between a
/// read's plan and its load: a read is loaded only where the window still
/// ends where it began. Here an operator moves the cursor back while a
/// read from the old cursor is in flight; the stale read must not carry
/// the cursor past the records the reset brought back.
#[test]
fn a_read_planned_before_a_cursor_reset_is_not_loaded() {
    let (_dir, broker, q) = started(4, 10);
    let member = q.join("g", "jobs", "", 100, None, false).expect("join");
    let got = q.acquire("g", &member, 100, usize::MAX).expect("acquire");
    assert_eq!(got.len(), 10);
    let acks = accept_all(&got);
    assert!(q.ack("g", &member, acks).expect("ack").refused.is_empty());
    produce(&broker, 5);
    let topic: Arc<str> = Arc::from("jobs");
    // A read planned at the cursor (10) and done outside the lock ...
    let reads = {
        let mut st = q.lock("g").expect("lock");
        plan_reads(Queues::group_mut(&mut st, "g").expect("group"), &topic)
    };
    assert_eq!(reads.iter().map(|r| r.from).collect::<Vec<_>>(), vec![10]);
    let done: Vec<_> = reads
        .into_iter()
        .map(|r| {
            let o = read_partition(&broker, "jobs", &r);
            (r, o)
        })
        .collect();
    // ... while the cursor moves back to 2.
    let mut st = q.lock("g").expect("lock");
    let g = Queues::group_mut(&mut st, "g").expect("group");
    g.apply((topic.clone(), 0), Some(2), &[], &[]);
    assert!(load_reads(g, &topic, done).is_empty());
    drop(st);
    let got = q.acquire("g", &member, 100, usize::MAX).expect("acquire");
    let offsets: Vec<i64> = got.iter().map(|d| d.record.offset).collect();
    assert_eq!(offsets, (2..15).collect::<Vec<i64>>());
    drop(q);
    broker.close();
}

/// Joining places a group in every partition without opening a single
/// log (no offset lookups under the shard lock); the first reads do.
#[test]
fn joining_a_topic_of_many_partitions_opens_no_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, q) = open(dir.path(), 4);
    broker
        .create_topic("wide", 200, TopicConfig::default())
        .expect("topic");
    let opened = |b: &Broker| b.stats().open_logs;
    let before = opened(&broker);
    let member = q.join("g", "wide", "", 10, None, false).expect("join");
    assert_eq!(opened(&broker), before, "join opened partition logs");
    let d = q.describe("g").expect("describe");
    assert_eq!(d.partitions.len(), 200, "every partition placed");
    drop(d);
    q.acquire("g", &member, 10, usize::MAX).expect("acquire");
    drop(q);
    broker.close();
}

/// Shards snapshot their groups once they have written far more records
/// than live keys; a restart replays snapshot and later changes to the
/// same state.
#[test]
fn shards_snapshot_and_replay_to_the_same_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, q) = open_with(dir.path(), 2, 20);
    broker
        .create_topic("jobs", 1, TopicConfig::default())
        .expect("topic");
    produce(&broker, 500);
    for _ in 0..30 {
        work(&q, 10);
    }
    let state = |q: &Queues| -> Vec<(u32, i64, i64)> {
        (0..10)
            .map(|i| {
                let d = q.describe(&format!("g{i}")).expect("describe");
                let p = &d.partitions[0];
                (d.settings.max_deliveries, p.start, p.accepted)
            })
            .collect()
    };
    let before = state(&q);
    assert_eq!(before[0].2, 30, "g0 accepted one a round");
    assert_eq!(before[2].2, 90, "g2 accepted three a round");
    drop(q);
    broker.close();
    drop(broker);
    let (broker, q) = open_with(dir.path(), 2, 20);
    assert_eq!(state(&q), before);
    drop(q);
    broker.close();
}
