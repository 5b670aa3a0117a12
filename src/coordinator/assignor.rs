//! The group assignor: a sticky, balanced assignment of partitions to
//! members. Pure: no time, no I/O.
//!
//! * Every partition of a subscribed topic goes to exactly one member
//!   subscribed to its topic (a topic nobody subscribes to is not assigned).
//! * Sticky: a member keeps what it had as long as that keeps the balance;
//!   partitions move only when they must.
//! * Equal subscriptions: counts differ by at most one, and the members that
//!   already held the most keep the larger shares.
//! * Different subscriptions: partitions are placed on the least loaded
//!   eligible member, then moved one at a time from a member to an eligible
//!   one holding at least two fewer, until no such move exists.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tp {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
}

impl Tp {
    /// `topic`/`partition`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for Tp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Partitions of one member.
pub type Assignment = BTreeSet<Tp>;

/// Computes the target assignment.
///
/// `subscriptions`: member id → topics it subscribes to. `counts`: partition
/// count of every subscribed topic (0 or absent: the topic does not exist).
/// `previous`: the last target, for stickiness.
pub fn assign(
    subscriptions: &BTreeMap<String, BTreeSet<Arc<str>>>,
    counts: &BTreeMap<Arc<str>, i32>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = subscriptions
        .keys()
        .map(|m| (m.clone(), Assignment::new()))
        .collect();
    if subscriptions.is_empty() {
        return out;
    }
    let count_of = |t: &str| counts.get(t).copied().unwrap_or(0).max(0);
    // Every partition some member subscribes to.
    let topics: BTreeSet<&Arc<str>> = subscriptions.values().flatten().collect();
    let all: Vec<Tp> = topics
        .iter()
        .flat_map(|t| (0..count_of(t)).map(|p| Tp::new((*t).clone(), p)))
        .collect();

    // Keep what each member had, if still valid and not claimed already.
    let mut taken: BTreeSet<Tp> = BTreeSet::new();
    for (member, subs) in subscriptions {
        if let Some(prev) = previous.get(member) {
            let mine = out.get_mut(member).expect("member present");
            for tp in prev {
                if subs.contains(&tp.topic)
                    && tp.partition < count_of(&tp.topic)
                    && taken.insert(tp.clone())
                {
                    mine.insert(tp.clone());
                }
            }
        }
    }

    let first = subscriptions.values().next().expect("non-empty");
    let uniform = subscriptions.values().all(|s| s == first);
    if uniform {
        assign_uniform(&mut out, &all, &mut taken);
    } else {
        assign_general(&mut out, subscriptions, &all, &mut taken);
    }
    out
}

fn assign_uniform(out: &mut BTreeMap<String, Assignment>, all: &[Tp], taken: &mut BTreeSet<Tp>) {
    let m = out.len();
    let (base, extra) = (all.len() / m, all.len() % m);
    // The members holding the most get the larger quotas: fewest moves.
    let mut order: Vec<(usize, String)> = out.iter().map(|(k, v)| (v.len(), k.clone())).collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let quota: BTreeMap<String, usize> = order
        .iter()
        .enumerate()
        .map(|(i, (_, id))| (id.clone(), base + usize::from(i < extra)))
        .collect();
    for (id, parts) in out.iter_mut() {
        while parts.len() > quota[id] {
            let tp = parts.pop_last().expect("non-empty");
            taken.remove(&tp);
        }
    }
    let mut free = all.iter().filter(|tp| !taken.contains(*tp));
    for (id, parts) in out.iter_mut() {
        while parts.len() < quota[id] {
            match free.next() {
                Some(tp) => {
                    parts.insert(tp.clone());
                }
                None => break,
            }
        }
    }
}

fn assign_general(
    out: &mut BTreeMap<String, Assignment>,
    subscriptions: &BTreeMap<String, BTreeSet<Arc<str>>>,
    all: &[Tp],
    taken: &mut BTreeSet<Tp>,
) {
    let eligible = |tp: &Tp| -> Vec<&String> {
        subscriptions
            .iter()
            .filter(|(_, s)| s.contains(&tp.topic))
            .map(|(m, _)| m)
            .collect()
    };
    // Most constrained partitions first.
    let mut free: Vec<(usize, &Tp)> = all
        .iter()
        .filter(|tp| !taken.contains(*tp))
        .map(|tp| (eligible(tp).len(), tp))
        .collect();
    free.sort();
    for (_, tp) in free {
        let best = eligible(tp)
            .into_iter()
            .min_by_key(|m| (out[*m].len(), (*m).clone()))
            .cloned();
        if let Some(m) = best {
            out.get_mut(&m).expect("member").insert(tp.clone());
        }
    }
    // Move single partitions from a member to an eligible one holding at
    // least two fewer. Each move lowers the sum of squared counts, so this
    // ends.
    loop {
        let mut order: Vec<(usize, String)> =
            out.iter().map(|(k, v)| (v.len(), k.clone())).collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut step: Option<(String, String, Tp)> = None;
        'search: for (count, from) in &order {
            for tp in out[from].iter().rev() {
                let to = eligible(tp)
                    .into_iter()
                    .filter(|m| *m != from)
                    .min_by_key(|m| (out[*m].len(), (*m).clone()));
                if let Some(to) = to {
                    if out[to].len() + 1 < *count {
                        step = Some((from.clone(), to.clone(), tp.clone()));
                        break 'search;
                    }
                }
            }
        }
        match step {
            Some((from, to, tp)) => {
                out.get_mut(&from).expect("member").remove(&tp);
                out.get_mut(&to).expect("member").insert(tp);
            }
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn subs(members: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<Arc<str>>> {
        members
            .iter()
            .map(|(m, ts)| (m.to_string(), ts.iter().map(|t| Arc::from(*t)).collect()))
            .collect()
    }

    fn counts(cs: &[(&str, i32)]) -> BTreeMap<Arc<str>, i32> {
        cs.iter().map(|(t, c)| (Arc::from(*t), *c)).collect()
    }

    fn check_complete(
        s: &BTreeMap<String, BTreeSet<Arc<str>>>,
        c: &BTreeMap<Arc<str>, i32>,
        out: &BTreeMap<String, Assignment>,
    ) {
        let mut seen = BTreeSet::new();
        for (m, parts) in out {
            for tp in parts {
                assert!(s[m].contains(&tp.topic), "{m} got {tp} without subscribing");
                assert!(seen.insert(tp.clone()), "{tp} assigned twice");
            }
        }
        let topics: BTreeSet<&Arc<str>> = s.values().flatten().collect();
        let expected: usize = topics
            .iter()
            .map(|t| c.get(*t).copied().unwrap_or(0).max(0) as usize)
            .sum();
        assert_eq!(seen.len(), expected, "every subscribed partition assigned");
    }

    #[test]
    fn three_members_six_partitions_then_a_fourth_moves_one() {
        let c = counts(&[("t", 6)]);
        let s3 = subs(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let first = assign(&s3, &c, &BTreeMap::new());
        assert!(first.values().all(|p| p.len() == 2), "{first:?}");
        let s4 = subs(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"]), ("d", &["t"])]);
        let second = assign(&s4, &c, &first);
        check_complete(&s4, &c, &second);
        let moved: usize = first
            .iter()
            .map(|(m, p)| p.difference(&second[m]).count())
            .sum();
        assert_eq!(moved, 1, "{first:?} -> {second:?}");
        let mut sizes: Vec<usize> = second.values().map(|p| p.len()).collect();
        sizes.sort();
        assert_eq!(sizes, vec![1, 1, 2, 2]);
    }

    #[test]
    fn leaving_member_partitions_spread_and_others_stay() {
        let c = counts(&[("t", 6)]);
        let s3 = subs(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let first = assign(&s3, &c, &BTreeMap::new());
        let s2 = subs(&[("a", &["t"]), ("c", &["t"])]);
        let second = assign(&s2, &c, &first);
        check_complete(&s2, &c, &second);
        for m in ["a", "c"] {
            assert!(first[m].is_subset(&second[m]), "{m} kept its partitions");
            assert_eq!(second[m].len(), 3);
        }
    }

    #[test]
    fn different_subscriptions_are_balanced_where_they_can_be() {
        let c = counts(&[("x", 4), ("y", 2)]);
        let s = subs(&[("a", &["x"]), ("b", &["x", "y"]), ("c", &["y"])]);
        let out = assign(&s, &c, &BTreeMap::new());
        check_complete(&s, &c, &out);
        let sizes: Vec<usize> = out.values().map(|p| p.len()).collect();
        assert_eq!(sizes, vec![2, 2, 2], "{out:?}");
        // A topic nobody else subscribes to stays with its one subscriber.
        let c = counts(&[("x", 6), ("only", 3)]);
        let s = subs(&[("a", &["x", "only"]), ("b", &["x"])]);
        let out = assign(&s, &c, &BTreeMap::new());
        check_complete(&s, &c, &out);
        assert_eq!(out["a"].iter().filter(|t| &*t.topic == "only").count(), 3);
        assert!(out["a"].len().abs_diff(out["b"].len()) <= 1, "{out:?}");
    }

    #[test]
    fn missing_topics_and_shrunken_previous_are_ignored() {
        let c = counts(&[("t", 2)]);
        let s = subs(&[("a", &["t", "gone"])]);
        let prev: BTreeMap<String, Assignment> = [(
            "a".to_string(),
            [Tp::new("t", 5), Tp::new("gone", 0), Tp::new("t", 1)].into(),
        )]
        .into();
        let out = assign(&s, &c, &prev);
        assert_eq!(out["a"], [Tp::new("t", 0), Tp::new("t", 1)].into());
    }

    type Case = (
        BTreeMap<String, BTreeSet<Arc<str>>>,
        BTreeMap<Arc<str>, i32>,
        BTreeMap<String, Assignment>,
    );

    fn arb_case() -> impl Strategy<Value = Case> {
        let topics = ["t0", "t1", "t2"];
        (
            prop::collection::vec(0i32..12, 3),
            prop::collection::vec(prop::collection::btree_set(0usize..3, 1..=3), 1..7),
            prop::collection::vec((0usize..7, 0usize..3, 0i32..12), 0..30),
            any::<bool>(),
        )
            .prop_map(move |(cs, members, prev, uniform)| {
                let counts: BTreeMap<Arc<str>, i32> = topics
                    .iter()
                    .zip(cs)
                    .map(|(t, c)| (Arc::from(*t), c))
                    .collect();
                let subs: BTreeMap<String, BTreeSet<Arc<str>>> = members
                    .iter()
                    .enumerate()
                    .map(|(i, ts)| {
                        let ts = if uniform { &members[0] } else { ts };
                        (
                            format!("m{i}"),
                            ts.iter().map(|t| Arc::from(topics[*t])).collect(),
                        )
                    })
                    .collect();
                let mut previous: BTreeMap<String, Assignment> = BTreeMap::new();
                let mut seen = BTreeSet::new();
                for (m, t, p) in prev {
                    if !seen.insert((t, p)) {
                        continue;
                    }
                    previous
                        .entry(format!("m{m}"))
                        .or_default()
                        .insert(Tp::new(topics[t], p));
                }
                (subs, counts, previous)
            })
    }

    proptest! {
        #[test]
        fn assignments_are_complete_balanced_and_sticky((s, c, prev) in arb_case()) {
            let out = assign(&s, &c, &prev);
            check_complete(&s, &c, &out);
            let first = s.values().next().expect("member");
            if s.values().all(|x| x == first) {
                let max = out.values().map(|p| p.len()).max().unwrap_or(0);
                let min = out.values().map(|p| p.len()).min().unwrap_or(0);
                prop_assert!(max - min <= 1, "unbalanced: {out:?}");
                // Sticky: nobody loses a valid partition while under its share.
                for (m, parts) in &out {
                    if let Some(p) = prev.get(m) {
                        let kept = p.intersection(parts).count();
                        let valid = p.iter().filter(|tp| first.contains(&tp.topic)
                            && tp.partition < c.get(&tp.topic).copied().unwrap_or(0)).count();
                        prop_assert!(kept >= valid.min(parts.len()) || kept == parts.len(),
                            "{m} kept {kept} of {valid} valid, holds {}", parts.len());
                    }
                }
            } else {
                // No single move to an eligible member improves the balance.
                for (m, parts) in &out {
                    for tp in parts {
                        for (o, osubs) in &s {
                            if o != m && osubs.contains(&tp.topic) {
                                prop_assert!(out[o].len() + 1 >= parts.len(),
                                    "{tp} could move from {m} to {o}: {out:?}");
                            }
                        }
                    }
                }
            }
        }
    }
}
