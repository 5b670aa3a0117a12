//! Tests of the metadata state machine: placement, refusals, fencing and
//! elections, ISR changes, reassignment, producer ids.

use super::*;

fn register(img: &mut MetadataImage, index: u64, id: NodeId, rack: Option<&str>) -> u64 {
    match img.apply(
        index,
        &Command::RegisterBroker {
            id,
            advertised: format!("client-{id}:9400"),
            internal: format!("node-{id}:9500"),
            kafka: None,
            rack: rack.map(str::to_string),
        },
    ) {
        Outcome::Registered { epoch } => epoch,
        o => panic!("unexpected {o:?}"),
    }
}

fn create(img: &mut MetadataImage, name: &str, id: u64, partitions: i32, rf: i32) -> Outcome {
    img.apply(
        100,
        &Command::CreateTopic {
            name: name.into(),
            id,
            partitions,
            replication_factor: rf,
            at_most_live: false,
            config: serde_json::Value::Null,
        },
    )
}

#[test]
fn replicas_are_distinct_and_leaders_balanced() {
    let mut img = MetadataImage::default();
    for id in 1..=5 {
        register(&mut img, id, id, None);
    }
    assert_eq!(create(&mut img, "t", 7, 50, 3), Outcome::Done);
    let t = &img.topics["t"];
    let mut leaders = BTreeMap::<NodeId, usize>::new();
    let mut replicas = BTreeMap::<NodeId, usize>::new();
    for p in &t.partitions {
        let mut r = p.replicas.clone();
        r.sort_unstable();
        r.dedup();
        assert_eq!(r.len(), 3, "replicas must be distinct: {:?}", p.replicas);
        assert_eq!(p.leader, Some(p.replicas[0]));
        assert_eq!(p.isr, p.replicas, "every replica is in sync at creation");
        *leaders.entry(p.replicas[0]).or_default() += 1;
        for b in &p.replicas {
            *replicas.entry(*b).or_default() += 1;
        }
    }
    assert!(leaders.values().all(|&n| n == 10), "{leaders:?}");
    assert!(replicas.values().all(|&n| n == 30), "{replicas:?}");
}

#[test]
fn replicas_span_racks_first() {
    let mut img = MetadataImage::default();
    register(&mut img, 1, 1, Some("a"));
    register(&mut img, 2, 2, Some("a"));
    register(&mut img, 3, 3, Some("b"));
    register(&mut img, 4, 4, Some("b"));
    assert_eq!(create(&mut img, "t", 1, 8, 2), Outcome::Done);
    let rack = |id: &NodeId| img.brokers[id].rack.clone();
    for p in &img.topics["t"].partitions {
        assert_ne!(rack(&p.replicas[0]), rack(&p.replicas[1]), "{p:?}");
    }
}

#[test]
fn refusals_name_the_rule() {
    let mut img = MetadataImage::default();
    register(&mut img, 1, 1, None);
    register(&mut img, 2, 2, None);
    let Outcome::Refused(r) = create(&mut img, "t", 1, 3, 3) else {
        panic!("rf 3 on 2 brokers must be refused")
    };
    assert_eq!(
        r.to_string(),
        "replication factor 3 must be in [1, 2]: the cluster has 2 live (unfenced) brokers"
    );
    // A defaulted factor is at most the live brokers the controller sees
    // (the proposer may still count a broker it has just fenced).
    let defaulted = Command::CreateTopic {
        name: "d".into(),
        id: 9,
        partitions: 1,
        replication_factor: 3,
        at_most_live: true,
        config: serde_json::Value::Null,
    };
    assert_eq!(img.apply(4, &defaulted), Outcome::Done);
    assert_eq!(img.topics["d"].partitions[0].replicas.len(), 2);
    // An old log entry without the field is read as asked for.
    let old: Command = serde_json::from_value(serde_json::json!({"CreateTopic": {
        "name": "o", "id": 3, "partitions": 1, "replication_factor": 3, "config": null
    }}))
    .expect("decodes");
    assert!(matches!(
        old,
        Command::CreateTopic {
            at_most_live: false,
            ..
        }
    ));
    assert_eq!(create(&mut img, "t", 1, 3, 2), Outcome::Done);
    assert_eq!(
        create(&mut img, "t", 2, 3, 2),
        Outcome::Refused(Refusal::TopicExists("t".into()))
    );
    assert!(matches!(
        img.apply(
            5,
            &Command::CreatePartitions {
                name: "t".into(),
                total: 3
            }
        ),
        Outcome::Refused(Refusal::PartitionCount { min: 4, .. })
    ));
    assert!(matches!(
        img.apply(6, &Command::UnregisterBroker { id: 1 }),
        Outcome::Refused(Refusal::BrokerHasReplicas { id: 1, .. })
    ));
}

#[test]
fn fencing_elects_only_in_sync_replicas_and_shrinks_the_isr() {
    let mut img = MetadataImage::default();
    let e1 = register(&mut img, 1, 1, None);
    let e2 = register(&mut img, 2, 2, None);
    assert_eq!(create(&mut img, "t", 0, 4, 2), Outcome::Done);
    let led_by_1: Vec<usize> = (0..4)
        .filter(|&p| img.topics["t"].partitions[p].leader == Some(1))
        .collect();
    assert_eq!(led_by_1.len(), 2);
    // A stale fence (older epoch) changes nothing.
    assert!(matches!(
        img.apply(
            9,
            &Command::FenceBroker {
                id: 1,
                epoch: e1 + 1
            }
        ),
        Outcome::Refused(Refusal::StaleBrokerEpoch { .. })
    ));
    assert_eq!(
        img.apply(10, &Command::FenceBroker { id: 1, epoch: e1 }),
        Outcome::Done
    );
    for p in &img.topics["t"].partitions {
        // Every partition is led by the in-sync survivor, and the
        // fenced broker left every ISR.
        assert_eq!(p.leader, Some(2));
        assert_eq!(p.isr, vec![2]);
    }
    for &p in &led_by_1 {
        assert_eq!(img.topics["t"].partitions[p].leader_epoch, 1);
    }
    // The last in-sync replica goes too: no leader, and the ISR keeps
    // it, the only broker known to hold every committed record.
    assert_eq!(
        img.apply(11, &Command::FenceBroker { id: 2, epoch: e2 }),
        Outcome::Done
    );
    for p in &img.topics["t"].partitions {
        assert_eq!(p.leader, None);
        assert_eq!(p.isr, vec![2]);
    }
    // Broker 1 comes back but may lack records: still no leader.
    register(&mut img, 12, 1, None);
    assert!(img.topics["t"]
        .partitions
        .iter()
        .all(|p| p.leader.is_none()));
    // Broker 2 comes back and leads again.
    register(&mut img, 13, 2, None);
    assert!(img.topics["t"]
        .partitions
        .iter()
        .all(|p| p.leader == Some(2)));
}

#[test]
fn unclean_election_is_an_explicit_opt_in() {
    let mut img = MetadataImage::default();
    register(&mut img, 1, 1, None);
    register(&mut img, 2, 2, None);
    img.apply(
        3,
        &Command::CreateTopic {
            name: "u".into(),
            id: 0,
            partitions: 1,
            replication_factor: 2,
            at_most_live: false,
            config: serde_json::json!({"unclean_leader_election": true}),
        },
    );
    let p = img.topics["u"].partitions[0].clone();
    let (leader, follower) = (p.replicas[0], p.replicas[1]);
    // The leader drops the follower from the ISR, then dies.
    assert_eq!(
        img.apply(
            4,
            &Command::AlterIsr {
                topic: "u".into(),
                topic_id: 0,
                partition: 0,
                leader,
                leader_epoch: 0,
                partition_epoch: 0,
                isr: vec![leader],
            }
        ),
        Outcome::Done
    );
    let epoch = img.brokers[&leader].epoch;
    img.apply(5, &Command::FenceBroker { id: leader, epoch });
    let p = &img.topics["u"].partitions[0];
    assert_eq!(
        p.leader,
        Some(follower),
        "unclean: an out-of-sync replica leads"
    );
    assert_eq!(p.isr, vec![follower]);
}

#[test]
fn isr_changes_come_only_from_the_current_leader_and_state() {
    let mut img = MetadataImage::default();
    for id in 1..=3 {
        register(&mut img, id, id, None);
    }
    create(&mut img, "t", 0, 1, 3);
    let p = img.topics["t"].partitions[0].clone();
    let leader = p.leader.expect("leader");
    let alter = |leader, leader_epoch, partition_epoch, isr: Vec<NodeId>| Command::AlterIsr {
        topic: "t".into(),
        topic_id: 0,
        partition: 0,
        leader,
        leader_epoch,
        partition_epoch,
        isr,
    };
    // Not the leader.
    let other = p.replicas[1];
    assert!(matches!(
        img.apply(10, &alter(other, 0, 0, vec![other])),
        Outcome::Refused(Refusal::StaleIsrChange { .. })
    ));
    // Without the leader, or with a non-replica.
    assert!(matches!(
        img.apply(11, &alter(leader, 0, 0, vec![other])),
        Outcome::Refused(Refusal::StaleIsrChange { .. })
    ));
    assert!(matches!(
        img.apply(11, &alter(leader, 0, 0, vec![leader, 9])),
        Outcome::Refused(Refusal::StaleIsrChange { .. })
    ));
    assert_eq!(
        img.apply(12, &alter(leader, 0, 0, vec![leader])),
        Outcome::Done
    );
    assert_eq!(img.topics["t"].partitions[0].isr, vec![leader]);
    // Based on the old partition epoch: refused.
    assert!(matches!(
        img.apply(13, &alter(leader, 0, 0, p.replicas.clone())),
        Outcome::Refused(Refusal::StaleIsrChange { .. })
    ));
    assert_eq!(
        img.apply(14, &alter(leader, 0, 1, p.replicas.clone())),
        Outcome::Done
    );
    assert_eq!(img.topics["t"].partitions[0].isr, p.replicas);
}

#[test]
fn preferred_leaders_return_once_live_and_in_sync() {
    let mut img = MetadataImage::default();
    for id in 1..=3 {
        register(&mut img, id, id, None);
    }
    create(&mut img, "t", 0, 3, 3);
    let epoch1 = img.brokers[&1].epoch;
    img.apply(
        10,
        &Command::FenceBroker {
            id: 1,
            epoch: epoch1,
        },
    );
    let moved: Vec<usize> = (0..3)
        .filter(|&p| img.topics["t"].partitions[p].replicas[0] == 1)
        .collect();
    assert_eq!(moved.len(), 1);
    let p = moved[0];
    assert_ne!(img.topics["t"].partitions[p].leader, Some(1));
    // Back, but not in sync yet: nothing moves.
    register(&mut img, 11, 1, None);
    assert_eq!(img.preferred_imbalance(), 0);
    assert_eq!(
        img.apply(12, &Command::ElectPreferredLeaders { topic: None }),
        Outcome::Elected { partitions: 0 }
    );
    // In sync again (its leader added it): it leads again.
    let a = img.topics["t"].partitions[p].clone();
    let leader = a.leader.expect("leader");
    let mut isr = a.isr.clone();
    isr.push(1);
    assert_eq!(
        img.apply(
            13,
            &Command::AlterIsr {
                topic: "t".into(),
                topic_id: 0,
                partition: p as i32,
                leader,
                leader_epoch: a.leader_epoch,
                partition_epoch: a.partition_epoch,
                isr,
            }
        ),
        Outcome::Done
    );
    assert_eq!(img.preferred_imbalance(), 1);
    assert_eq!(
        img.apply(
            14,
            &Command::ElectPreferredLeaders {
                topic: Some("t".into())
            }
        ),
        Outcome::Elected { partitions: 1 }
    );
    let after = &img.topics["t"].partitions[p];
    assert_eq!(after.leader, Some(1));
    assert_eq!(after.leader_epoch, a.leader_epoch + 1);
    assert_eq!(img.preferred_imbalance(), 0);
}

#[test]
fn a_reassignment_switches_once_the_new_replicas_are_in_sync() {
    let mut img = MetadataImage::default();
    for id in 1..=4 {
        register(&mut img, id, id, None);
    }
    create(&mut img, "t", 0, 1, 3);
    let before = img.topics["t"].partitions[0].clone();
    let leader = before.leader.expect("leader");
    let spare = (1..=4)
        .find(|b| !before.replicas.contains(b))
        .expect("spare");
    // Replace the leader with the spare broker.
    let mut target: Vec<NodeId> = before
        .replicas
        .iter()
        .copied()
        .filter(|r| *r != leader)
        .collect();
    target.insert(0, spare);
    let reassign = |replicas: Vec<NodeId>| Command::ReassignPartition {
        topic: "t".into(),
        partition: 0,
        replicas,
    };
    assert_eq!(img.apply(10, &reassign(target.clone())), Outcome::Done);
    let p = img.topics["t"].partitions[0].clone();
    assert_eq!(p.adding, vec![spare]);
    assert_eq!(p.removing, vec![leader]);
    assert_eq!(p.replicas.len(), 4, "old and new replicas meanwhile");
    assert_eq!(
        p.leader,
        Some(leader),
        "the old leader leads until the switch"
    );
    // A second one waits for the first.
    assert!(matches!(
        img.apply(11, &reassign(before.replicas.clone())),
        Outcome::Refused(Refusal::Reassignment { .. })
    ));
    // The spare catches up and the leader adds it to the ISR: switch.
    let mut isr = p.isr.clone();
    isr.push(spare);
    assert_eq!(
        img.apply(
            12,
            &Command::AlterIsr {
                topic: "t".into(),
                topic_id: 0,
                partition: 0,
                leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                isr,
            }
        ),
        Outcome::Done
    );
    let after = &img.topics["t"].partitions[0];
    assert_eq!(after.replicas, target);
    assert!(after.adding.is_empty() && after.removing.is_empty());
    assert!(!after.isr.contains(&leader));
    assert!(after
        .leader
        .is_some_and(|l| l != leader && target.contains(&l)));
    assert_eq!(after.leader_epoch, p.leader_epoch + 1);
    // Unknown brokers and repeats are refused.
    assert_eq!(
        img.apply(13, &reassign(vec![1, 9])),
        Outcome::Refused(Refusal::UnknownBroker(9))
    );
    assert!(matches!(
        img.apply(14, &reassign(vec![1, 1])),
        Outcome::Refused(Refusal::Reassignment { .. })
    ));
}

#[test]
fn producer_id_blocks_never_overlap() {
    let mut img = MetadataImage::default();
    let a = img.apply(1, &Command::AllocateProducerIds { count: 1000 });
    let b = img.apply(2, &Command::AllocateProducerIds { count: 1000 });
    assert_eq!(a, Outcome::ProducerIds { first: 0 });
    assert_eq!(b, Outcome::ProducerIds { first: 1000 });
}

#[test]
fn image_round_trips_through_json() {
    let mut img = MetadataImage::default();
    register(&mut img, 1, 1, Some("r"));
    create(&mut img, "t", 3, 2, 1);
    let bytes = serde_json::to_vec(&img).unwrap();
    let back: MetadataImage = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back, img);
}
