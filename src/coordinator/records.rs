//! The coordinator's records in the offsets topic: protobuf keys and values
//! (prost), so fields can be added without breaking older logs.
//!
//! Each record is an upsert of one key: a group's own record, a member, or
//! one committed offset; a null value deletes the key (a group's null
//! deletes the whole group). Replaying any suffix of the log that starts at
//! or before the last complete snapshot yields the current state, because a
//! snapshot rewrites every live key.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use super::assignor::{Assignment, Tp};
use super::group::{Committed, Group, Member, Pending};

/// Key format version written now.
pub const KEY_VERSION: u32 = 1;

/// What a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// The group's own record.
    Group = 1,
    /// A member.
    Member = 2,
    /// A committed offset.
    Offset = 3,
}

/// A record's key.
#[derive(Clone, PartialEq, Message)]
pub struct Key {
    /// Format version.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// [`Kind`].
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    /// Group.
    #[prost(string, tag = "3")]
    pub group: String,
    /// Member id (members).
    #[prost(string, tag = "4")]
    pub member: String,
    /// Topic (offsets).
    #[prost(string, tag = "5")]
    pub topic: String,
    /// Partition (offsets).
    #[prost(int32, tag = "6")]
    pub partition: i32,
}

/// A group's own record.
#[derive(Clone, PartialEq, Message)]
pub struct GroupValue {
    /// Target assignment version.
    #[prost(int32, tag = "1")]
    pub epoch: i32,
    /// Last member epoch handed out.
    #[prost(int32, tag = "2")]
    pub last_member_epoch: i32,
}

/// Partitions of one topic.
#[derive(Clone, PartialEq, Message)]
pub struct TopicPartitions {
    /// Topic.
    #[prost(string, tag = "1")]
    pub topic: String,
    /// Partitions.
    #[prost(int32, repeated, tag = "2")]
    pub partitions: Vec<i32>,
}

/// A member.
#[derive(Clone, PartialEq, Message)]
pub struct MemberValue {
    /// Client's self-description.
    #[prost(string, tag = "1")]
    pub client_id: String,
    /// Subscribed topics.
    #[prost(string, repeated, tag = "2")]
    pub subscriptions: Vec<String>,
    /// Session timeout.
    #[prost(int32, tag = "3")]
    pub session_timeout_ms: i32,
    /// Rebalance timeout.
    #[prost(int32, tag = "4")]
    pub rebalance_timeout_ms: i32,
    /// Confirmed epoch.
    #[prost(int32, tag = "5")]
    pub epoch: i32,
    /// Confirmed assignment.
    #[prost(message, repeated, tag = "6")]
    pub owned: Vec<TopicPartitions>,
    /// Pending epoch (0: none).
    #[prost(int32, tag = "7")]
    pub pending_epoch: i32,
    /// Pending assignment.
    #[prost(message, repeated, tag = "8")]
    pub pending: Vec<TopicPartitions>,
    /// Target.
    #[prost(message, repeated, tag = "9")]
    pub target: Vec<TopicPartitions>,
}

/// A committed offset.
#[derive(Clone, PartialEq, Message)]
pub struct OffsetValue {
    /// Next offset to consume.
    #[prost(int64, tag = "1")]
    pub offset: i64,
    /// Client's metadata.
    #[prost(string, tag = "2")]
    pub metadata: String,
    /// When committed (ms).
    #[prost(int64, tag = "3")]
    pub commit_ms: i64,
    /// The topic's id when committed (0: not recorded).
    #[prost(uint64, tag = "4")]
    pub topic_id: u64,
}

/// An encoded record: key and value (`None`: delete).
pub type Encoded = (Bytes, Option<Bytes>);

fn key(kind: Kind, group: &str, member: &str, topic: &str, partition: i32) -> Bytes {
    Key {
        version: KEY_VERSION,
        kind: kind as u32,
        group: group.to_string(),
        member: member.to_string(),
        topic: topic.to_string(),
        partition,
    }
    .encode_to_vec()
    .into()
}

/// Groups partitions by topic for the wire and the log.
pub fn to_topic_partitions(a: &Assignment) -> Vec<TopicPartitions> {
    let mut out: Vec<TopicPartitions> = Vec::new();
    for tp in a {
        match out.last_mut() {
            Some(last) if *last.topic == *tp.topic => last.partitions.push(tp.partition),
            _ => out.push(TopicPartitions {
                topic: tp.topic.to_string(),
                partitions: vec![tp.partition],
            }),
        }
    }
    out
}

fn from_topic_partitions(v: &[TopicPartitions]) -> Assignment {
    v.iter()
        .flat_map(|t| {
            let topic: Arc<str> = Arc::from(t.topic.as_str());
            t.partitions.iter().map(move |&p| Tp {
                topic: topic.clone(),
                partition: p,
            })
        })
        .collect()
}

/// The group's own record.
pub fn group_record(g: &Group) -> Encoded {
    let v = GroupValue {
        epoch: g.epoch,
        last_member_epoch: g.last_member_epoch,
    };
    (
        key(Kind::Group, &g.name, "", "", 0),
        Some(v.encode_to_vec().into()),
    )
}

/// Deletes a group and everything in it.
pub fn group_tombstone(group: &str) -> Encoded {
    (key(Kind::Group, group, "", "", 0), None)
}

/// A member's record.
pub fn member_record(group: &str, m: &Member) -> Encoded {
    let v = MemberValue {
        client_id: m.client_id.clone(),
        subscriptions: m.subscriptions.iter().map(|s| s.to_string()).collect(),
        session_timeout_ms: m.session_timeout_ms,
        rebalance_timeout_ms: m.rebalance_timeout_ms,
        epoch: m.epoch,
        owned: to_topic_partitions(&m.owned),
        pending_epoch: m.pending.as_ref().map_or(0, |p| p.epoch),
        pending: m
            .pending
            .as_ref()
            .map(|p| to_topic_partitions(&p.assignment))
            .unwrap_or_default(),
        target: to_topic_partitions(&m.target),
    };
    (
        key(Kind::Member, group, &m.id, "", 0),
        Some(v.encode_to_vec().into()),
    )
}

/// Deletes a member.
pub fn member_tombstone(group: &str, member: &str) -> Encoded {
    (key(Kind::Member, group, member, "", 0), None)
}

/// A committed offset's record.
pub fn offset_record(group: &str, tp: &Tp, c: &Committed) -> Encoded {
    let v = OffsetValue {
        offset: c.offset,
        metadata: c.metadata.clone(),
        commit_ms: c.commit_ms,
        topic_id: c.topic_id,
    };
    (
        key(Kind::Offset, group, "", &tp.topic, tp.partition),
        Some(v.encode_to_vec().into()),
    )
}

/// Every record that rebuilds `g`.
pub fn snapshot_of(g: &Group, out: &mut Vec<Encoded>) {
    out.push(group_record(g));
    for m in g.members.values() {
        out.push(member_record(&g.name, m));
    }
    for (tp, c) in &g.offsets {
        out.push(offset_record(&g.name, tp, c));
    }
}

/// Why a record could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Key or value is not a record of ours.
    #[error("undecodable {0}")]
    Decode(&'static str),
    /// Written by a newer version.
    #[error("key version {0} is newer than this broker understands ({KEY_VERSION})")]
    Version(u32),
}

/// Applies one record to `groups`. Members come back with a deadline of
/// `now` + their session timeout and pending assignments sent at `now`.
pub fn apply(
    groups: &mut BTreeMap<String, Group>,
    key: &[u8],
    value: Option<&[u8]>,
    now: i64,
) -> Result<(), ApplyError> {
    let k = Key::decode(key).map_err(|_| ApplyError::Decode("key"))?;
    if k.version > KEY_VERSION {
        return Err(ApplyError::Version(k.version));
    }
    let group = || Group::new(k.group.clone());
    match (k.kind, value) {
        (1, None) => {
            groups.remove(&k.group);
        }
        (1, Some(v)) => {
            let v = GroupValue::decode(v).map_err(|_| ApplyError::Decode("group value"))?;
            let g = groups.entry(k.group.clone()).or_insert_with(group);
            g.epoch = v.epoch;
            g.last_member_epoch = v.last_member_epoch;
        }
        (2, None) => {
            if let Some(g) = groups.get_mut(&k.group) {
                g.members.remove(&k.member);
            }
        }
        (2, Some(v)) => {
            let v = MemberValue::decode(v).map_err(|_| ApplyError::Decode("member value"))?;
            let g = groups.entry(k.group.clone()).or_insert_with(group);
            let pending = (v.pending_epoch != 0).then(|| Pending {
                epoch: v.pending_epoch,
                assignment: from_topic_partitions(&v.pending),
                sent_ms: now,
            });
            g.members.insert(
                k.member.clone(),
                Member {
                    id: k.member.clone(),
                    client_id: v.client_id,
                    subscriptions: v
                        .subscriptions
                        .iter()
                        .map(|s| Arc::from(s.as_str()))
                        .collect(),
                    session_timeout_ms: v.session_timeout_ms,
                    rebalance_timeout_ms: v.rebalance_timeout_ms,
                    epoch: v.epoch,
                    owned: from_topic_partitions(&v.owned),
                    pending,
                    target: from_topic_partitions(&v.target),
                    deadline_ms: now.saturating_add(i64::from(v.session_timeout_ms)),
                },
            );
        }
        (3, None) => {
            if let Some(g) = groups.get_mut(&k.group) {
                g.offsets.remove(&Tp::new(k.topic.as_str(), k.partition));
            }
        }
        (3, Some(v)) => {
            let v = OffsetValue::decode(v).map_err(|_| ApplyError::Decode("offset value"))?;
            let g = groups.entry(k.group.clone()).or_insert_with(group);
            g.offsets.insert(
                Tp::new(k.topic.as_str(), k.partition),
                Committed {
                    offset: v.offset,
                    metadata: v.metadata,
                    commit_ms: v.commit_ms,
                    topic_id: v.topic_id,
                },
            );
        }
        _ => return Err(ApplyError::Decode("key kind")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn sample() -> Group {
        let mut g = Group::new("g");
        g.epoch = 4;
        g.last_member_epoch = 9;
        let a: Assignment = [Tp::new("t", 0), Tp::new("t", 1), Tp::new("u", 3)].into();
        g.members.insert(
            "m".into(),
            Member {
                id: "m".into(),
                client_id: "c".into(),
                subscriptions: BTreeSet::from([Arc::from("t"), Arc::from("u")]),
                session_timeout_ms: 5000,
                rebalance_timeout_ms: 7000,
                epoch: 8,
                owned: a.clone(),
                pending: Some(Pending {
                    epoch: 9,
                    assignment: [Tp::new("t", 0)].into(),
                    sent_ms: 100,
                }),
                target: [Tp::new("t", 0)].into(),
                deadline_ms: 100 + 5000,
            },
        );
        g.offsets.insert(
            Tp::new("t", 0),
            Committed {
                offset: 42,
                metadata: "meta".into(),
                commit_ms: 5,
                topic_id: 7,
            },
        );
        g
    }

    #[test]
    fn snapshot_replays_to_the_same_group_and_tombstones_delete() {
        let g = sample();
        let mut recs = Vec::new();
        snapshot_of(&g, &mut recs);
        let mut groups = BTreeMap::new();
        for (k, v) in &recs {
            apply(&mut groups, k, v.as_deref(), 100).expect("apply");
        }
        assert_eq!(groups["g"], g);

        let (k, v) = member_tombstone("g", "m");
        apply(&mut groups, &k, v.as_deref(), 0).expect("apply");
        assert!(groups["g"].members.is_empty());
        let (k, v) = group_tombstone("g");
        apply(&mut groups, &k, v.as_deref(), 0).expect("apply");
        assert!(groups.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut groups = BTreeMap::new();
        assert!(apply(&mut groups, b"\xff\xff\xff", None, 0).is_err());
        let (k, _) = group_record(&sample());
        assert!(apply(&mut groups, &k, Some(b"\xff\xff"), 0).is_err());
        let newer = Key {
            version: KEY_VERSION + 1,
            kind: 1,
            group: "g".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(matches!(
            apply(&mut groups, &newer, None, 0),
            Err(ApplyError::Version(_))
        ));
        assert!(groups.is_empty());
    }
}
