//! Unit tests of the share-group state machine.
use std::collections::HashSet;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn rec(offset: i64, key: Option<&str>) -> FetchedRecord {
    FetchedRecord {
        offset,
        timestamp: 0,
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: Some(Bytes::from(format!("v{offset}"))),
        headers: Vec::new(),
    }
}

fn group(n: i64, settings: Settings, keys: &[Option<&str>]) -> (ShareGroup, (Arc<str>, i32)) {
    let mut g = ShareGroup {
        settings,
        ..Default::default()
    };
    let tp: (Arc<str>, i32) = (Arc::from("t"), 0);
    let p = g.partitions.entry(tp.clone()).or_default();
    p.placed = true;
    p.load(
        (0..n)
            .map(|o| rec(o, keys.get(o as usize).copied().flatten()))
            .collect(),
        n,
    );
    (g, tp)
}

#[test]
fn prefetch_locks_accept_release_and_redelivery_counts() {
    let (mut g, tp) = group(10, Settings::default(), &[]);
    let a: Arc<str> = Arc::from("a");
    let b: Arc<str> = Arc::from("b");
    g.join(a.clone(), tp.0.clone(), 3, true, 0);
    g.join(b.clone(), tp.0.clone(), 100, true, 0);
    let mut id = 0;
    let mut fx = Effects::default();
    let got = g.acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx);
    assert_eq!(got.len(), 3, "prefetch caps the member");
    assert!(g
        .acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx)
        .is_empty());
    assert_eq!(fx.deltas[0].delivered, [(0, 1), (1, 1), (2, 1)]);
    g.ack("a", got[0].delivery_id, AckKind::Accept, None, 1, &mut fx)
        .expect("accept");
    assert_eq!(g.partitions[&tp].start, 1);
    // b may not acknowledge a's delivery.
    assert!(matches!(
        g.ack("b", got[1].delivery_id, AckKind::Accept, None, 1, &mut fx),
        Err(AckRefusal::Superseded(_))
    ));
    g.ack(
        "a",
        got[1].delivery_id,
        AckKind::Release { delay_ms: 0 },
        None,
        1,
        &mut fx,
    )
    .expect("release");
    // Lock expiry: offset 2 goes back with its count kept.
    g.tick(30_001, &mut fx);
    assert!(matches!(
        g.ack(
            "a",
            got[2].delivery_id,
            AckKind::Accept,
            None,
            30_002,
            &mut fx
        ),
        Err(AckRefusal::NotFound(_))
    ));
    let again = g.acquire(&b, 2, usize::MAX, 30_002, &mut id, &mut fx);
    assert_eq!(
        again
            .iter()
            .map(|d| (d.record.offset, d.deliveries))
            .collect::<Vec<_>>(),
        [(1, 2), (2, 2)]
    );
    assert_eq!(g.members["a"].held, 0);
}

#[test]
fn extend_keeps_the_lock_and_leave_releases() {
    let (mut g, tp) = group(2, Settings::default(), &[]);
    let a: Arc<str> = Arc::from("a");
    g.join(a.clone(), tp.0.clone(), 10, false, 0);
    let (mut id, mut fx) = (0, Effects::default());
    let got = g.acquire(&a, 1, usize::MAX, 0, &mut id, &mut fx);
    g.ack(
        "a",
        got[0].delivery_id,
        AckKind::Extend,
        None,
        20_000,
        &mut fx,
    )
    .expect("extend");
    g.tick(45_000 - 1, &mut fx);
    assert_eq!(
        g.partitions[&tp].in_flight(),
        1,
        "extended past the first deadline"
    );
    // The Pull session (45 s) ends: everything it held is released.
    g.tick(45_000, &mut fx);
    assert!(g.members.is_empty());
    assert_eq!(g.partitions[&tp].in_flight(), 0);
    assert_eq!(g.partitions[&tp].waiting(), 2);
}

#[test]
fn dead_letter_after_max_deliveries_and_on_reject() {
    let settings = Settings {
        max_deliveries: 2,
        dead_letter_topic: Some("dlq".into()),
        ..Settings::default()
    };
    let (mut g, tp) = group(2, settings, &[]);
    let a: Arc<str> = Arc::from("a");
    g.join(a.clone(), tp.0.clone(), 1, true, 0);
    let (mut id, mut fx) = (0, Effects::default());
    for round in 0..2 {
        let d = g.acquire(&a, 1, usize::MAX, 0, &mut id, &mut fx);
        assert_eq!((d[0].record.offset, d[0].deliveries), (0, round + 1));
        g.ack(
            "a",
            d[0].delivery_id,
            AckKind::Release { delay_ms: 0 },
            Some("boom".into()),
            0,
            &mut fx,
        )
        .expect("release");
    }
    assert_eq!(fx.dead_letters.len(), 1);
    assert_eq!(fx.dead_letters[0].reason, "boom");
    assert_eq!(fx.dead_letters[0].deliveries, 2);
    let d = g.acquire(&a, 1, usize::MAX, 0, &mut id, &mut fx);
    assert_eq!(d[0].record.offset, 1);
    g.ack("a", d[0].delivery_id, AckKind::Reject, None, 0, &mut fx)
        .expect("reject");
    assert_eq!(fx.dead_letters.len(), 2);
    // Not finished until the dead letters are written.
    let p = &g.partitions[&tp];
    assert_eq!((p.start, p.dead_lettered, p.rejected), (0, 0, 0));
    let written = std::mem::take(&mut fx.dead_letters);
    for d in &written {
        g.dead_letter_written(d, &mut fx);
    }
    let p = &g.partitions[&tp];
    assert_eq!((p.start, p.dead_lettered, p.rejected), (2, 1, 1));
}

#[test]
fn a_dead_letter_that_fails_keeps_its_record_and_is_tried_again() {
    let settings = Settings {
        dead_letter_topic: Some("dlq".into()),
        ..Settings::default()
    };
    let (mut g, tp) = group(2, settings, &[]);
    let a: Arc<str> = Arc::from("a");
    g.join(a.clone(), tp.0.clone(), 10, true, 0);
    let (mut id, mut fx) = (0, Effects::default());
    let d = g.acquire(&a, 1, usize::MAX, 0, &mut id, &mut fx);
    g.ack("a", d[0].delivery_id, AckKind::Reject, None, 0, &mut fx)
        .expect("reject");
    let failed = std::mem::take(&mut fx.dead_letters);
    assert_eq!(failed.len(), 1);
    g.dead_letter_failed(&failed[0], 1_000);
    assert!(
        !fx.deltas.iter().any(|d| !d.finished.is_empty()),
        "nothing finished: {:?}",
        fx.deltas
    );
    assert_eq!(g.partitions[&tp].start, 0);
    // Before the retry time the rejected record is not delivered, and
    // it is never delivered to a worker again.
    let d = g.acquire(&a, 10, usize::MAX, 500, &mut id, &mut fx);
    assert_eq!(d.iter().map(|d| d.record.offset).collect::<Vec<_>>(), [1]);
    g.tick(1_000, &mut fx);
    let d = g.acquire(&a, 10, usize::MAX, 1_000, &mut id, &mut fx);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(fx.dead_letters.len(), 1, "the dead letter is tried again");
    assert_eq!(fx.dead_letters[0].how, Finished::Rejected);
    let retry = std::mem::take(&mut fx.dead_letters);
    g.dead_letter_written(&retry[0], &mut fx);
    assert_eq!(g.partitions[&tp].rejected, 1);
}

#[test]
fn delayed_release_waits() {
    let (mut g, tp) = group(1, Settings::default(), &[]);
    let a: Arc<str> = Arc::from("a");
    g.join(a.clone(), tp.0.clone(), 5, true, 0);
    let (mut id, mut fx) = (0, Effects::default());
    let d = g.acquire(&a, 1, usize::MAX, 0, &mut id, &mut fx);
    g.ack(
        "a",
        d[0].delivery_id,
        AckKind::Release { delay_ms: 500 },
        None,
        100,
        &mut fx,
    )
    .expect("release");
    assert!(g
        .acquire(&a, 1, usize::MAX, 200, &mut id, &mut fx)
        .is_empty());
    g.tick(600, &mut fx);
    assert_eq!(g.acquire(&a, 1, usize::MAX, 600, &mut id, &mut fx).len(), 1);
}

#[test]
fn key_ordered_never_has_two_of_a_key_in_flight() {
    let settings = Settings {
        key_ordered: true,
        ..Settings::default()
    };
    let keys = [Some("x"), Some("x"), Some("y"), None, None, Some("x")];
    let (mut g, _) = group(6, settings, &keys);
    let a: Arc<str> = Arc::from("a");
    g.join(a.clone(), Arc::from("t"), 100, true, 0);
    let (mut id, mut fx) = (0, Effects::default());
    let d = g.acquire(&a, 100, usize::MAX, 0, &mut id, &mut fx);
    let offsets: Vec<i64> = d.iter().map(|d| d.record.offset).collect();
    assert_eq!(offsets, [0, 2, 3, 4]);
    g.ack("a", d[0].delivery_id, AckKind::Accept, None, 0, &mut fx)
        .expect("accept");
    let d = g.acquire(&a, 100, usize::MAX, 0, &mut id, &mut fx);
    assert_eq!(d.iter().map(|d| d.record.offset).collect::<Vec<_>>(), [1]);
}

#[test]
fn replayed_state_skips_finished_and_keeps_counts() {
    let (mut g, tp) = group(0, Settings::default(), &[]);
    g.apply(
        tp.clone(),
        Some(0),
        &[(1, 3)],
        &[(0, Finished::Accepted), (2, Finished::Accepted)],
    );
    let p = g.partitions.get_mut(&tp).expect("partition");
    assert_eq!(p.start, 1);
    p.load((0..4).map(|o| rec(o, None)).collect(), 4);
    let a: Arc<str> = Arc::from("a");
    g.join(a.clone(), tp.0.clone(), 10, true, 0);
    let (mut id, mut fx) = (0, Effects::default());
    let d = g.acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx);
    assert_eq!(
        d.iter()
            .map(|d| (d.record.offset, d.deliveries))
            .collect::<Vec<_>>(),
        [(1, 4), (3, 1)]
    );
}

#[test]
fn a_record_at_its_last_delivery_after_a_restart_is_dead_lettered() {
    let settings = Settings {
        dead_letter_topic: Some("dlq".into()),
        ..Settings::default()
    };
    let max = settings.max_deliveries;
    let (mut g, tp) = group(0, settings, &[]);
    // Replayed: offset 1 was delivered `max` times, its lock lost.
    g.apply(tp.clone(), Some(0), &[(1, max)], &[]);
    let p = g.partitions.get_mut(&tp).expect("partition");
    p.load((0..3).map(|o| rec(o, None)).collect(), 3);
    let a: Arc<str> = Arc::from("a");
    g.join(a.clone(), tp.0.clone(), 10, true, 0);
    let (mut id, mut fx) = (0, Effects::default());
    let d = g.acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx);
    let offsets: Vec<i64> = d.iter().map(|d| d.record.offset).collect();
    assert_eq!(offsets, [0, 2], "offset 1 is not delivered a sixth time");
    assert_eq!(fx.dead_letters.len(), 1);
    assert_eq!(fx.dead_letters[0].record.offset, 1);
    assert!(fx.dead_letters[0].reason.contains("max_deliveries"));
    let written = std::mem::take(&mut fx.dead_letters);
    g.dead_letter_written(&written[0], &mut fx);
    assert!(fx
        .deltas
        .iter()
        .any(|d| d.finished.contains(&(1, Finished::DeadLettered))));
}

#[test]
fn deliveries_stop_at_the_byte_budget_but_take_at_least_one() {
    let (mut g, tp) = group(10, Settings::default(), &[]);
    let a: Arc<str> = Arc::from("a");
    g.join(a.clone(), tp.0.clone(), 100, true, 0);
    let (mut id, mut fx) = (0, Effects::default());
    // Each record here is 34 bytes as a delivery.
    let d = g.acquire(&a, 10, 100, 0, &mut id, &mut fx);
    assert_eq!(d.len(), 2);
    let d = g.acquire(&a, 10, 1, 0, &mut id, &mut fx);
    assert_eq!(d.len(), 1, "at least one record, whatever its size");
}

#[test]
fn records_skipped_by_retention_free_their_prefetch_slots() {
    let (mut g, tp) = group(10, Settings::default(), &[]);
    let a: Arc<str> = Arc::from("a");
    g.join(a.clone(), tp.0.clone(), 2, true, 0);
    let (mut id, mut fx) = (0, Effects::default());
    assert_eq!(g.acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx).len(), 2);
    assert!(g
        .acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx)
        .is_empty());
    // Retention deletes offsets 0-4, two of them held by `a`.
    let dropped = g.partitions.get_mut(&tp).expect("partition").skip_to(5);
    assert_eq!(dropped.len(), 2);
    g.forget_deliveries(dropped);
    assert_eq!(g.members[&a].held, 0);
    let d = g.acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx);
    let offsets: Vec<i64> = d.iter().map(|d| d.record.offset).collect();
    assert_eq!(offsets, [5, 6]);
}

#[test]
fn a_lost_tail_moves_the_cursor_back() {
    let (mut g, tp) = group(10, Settings::default(), &[]);
    let a: Arc<str> = Arc::from("a");
    g.join(a.clone(), tp.0.clone(), 20, true, 0);
    let (mut id, mut fx) = (0, Effects::default());
    assert_eq!(g.acquire(&a, 3, usize::MAX, 0, &mut id, &mut fx).len(), 3);
    // The log now ends at 6: offsets 6-9 are gone (none held).
    let p = g.partitions.get_mut(&tp).expect("partition");
    assert!(p.truncate_to(6).is_empty());
    assert_eq!(p.cursor, 6);
    // New records take offsets 6.. again and are delivered.
    p.load((6..8).map(|o| rec(o, None)).collect(), 8);
    let d = g.acquire(&a, 10, usize::MAX, 0, &mut id, &mut fx);
    let offsets: Vec<i64> = d.iter().map(|d| d.record.offset).collect();
    assert_eq!(offsets, [3, 4, 5, 6, 7]);
}

/// The key-ordered choice by scanning the whole window (what the index
/// replaced), as the oracle: in offset order, a ready record whose key has
/// no earlier unfinished record.
fn key_ordered_by_scan(p: &Partition) -> Vec<i64> {
    let mut blocked: HashSet<Option<&Bytes>> = HashSet::new();
    let mut out = Vec::new();
    for (&o, r) in &p.recs {
        let key = r.record.as_ref().and_then(|x| x.key.as_ref());
        match &r.state {
            State::Finished(_) => {}
            State::Locked { .. } => {
                blocked.insert(key);
            }
            State::Available => {
                if key.is_some() && !blocked.insert(key) {
                    continue;
                }
                if p.ready.contains(&o) {
                    out.push(o);
                }
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Op {
    Acquire(u32),
    /// Acknowledge the n-th live delivery: 0 accept, 1 release, 2 release
    /// with a delay, 3 reject.
    Ack(usize, u8),
    /// Time passes (ms): locks expire, delays end.
    Wait(i64),
    /// More records arrive.
    Load(Vec<Option<u8>>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..6).prop_map(Op::Acquire),
        (0usize..8, 0u8..4).prop_map(|(i, k)| Op::Ack(i, k)),
        (1i64..2_000).prop_map(Op::Wait),
        proptest::collection::vec(proptest::option::of(0u8..4), 1..6).prop_map(Op::Load),
    ]
}

proptest! {
    /// Whatever happens to the window, the key-ordered index offers
    /// exactly what a scan of the window would.
    #[test]
    fn key_ordered_index_matches_a_scan(
        first in proptest::collection::vec(proptest::option::of(0u8..4), 0..12),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let settings = Settings {
            key_ordered: true,
            lock_timeout_ms: 1_000,
            max_deliveries: 3,
            ..Settings::default()
        };
        let names: Vec<String> = first.iter().map(|k| k.map_or(String::new(), |k| format!("k{k}"))).collect();
        let keys: Vec<Option<&str>> = first
            .iter()
            .zip(&names)
            .map(|(k, n)| k.map(|_| n.as_str()))
            .collect();
        let (mut g, tp) = group(first.len() as i64, settings, &keys);
        let m: Arc<str> = Arc::from("m");
        g.join(m.clone(), tp.0.clone(), 1_000, true, 0);
        let (mut now, mut id, mut next) = (0i64, 0u64, first.len() as i64);
        let mut live: Vec<u64> = Vec::new();
        for op in ops {
            let mut fx = Effects::default();
            match op {
                Op::Acquire(n) => {
                    let got = g.acquire(&m, n, usize::MAX, now, &mut id, &mut fx);
                    live.extend(got.iter().map(|d| d.delivery_id));
                }
                Op::Ack(i, kind) if !live.is_empty() => {
                    let d = live.remove(i % live.len());
                    let kind = match kind {
                        0 => AckKind::Accept,
                        1 => AckKind::Release { delay_ms: 0 },
                        2 => AckKind::Release { delay_ms: 500 },
                        _ => AckKind::Reject,
                    };
                    let _ = g.ack("m", d, kind, None, now, &mut fx);
                }
                Op::Ack(..) => {}
                Op::Wait(ms) => {
                    now += ms;
                    g.tick(now, &mut fx);
                }
                Op::Load(ks) => {
                    let recs: Vec<FetchedRecord> = ks
                        .iter()
                        .enumerate()
                        .map(|(i, k)| rec(next + i as i64, k.map(|k| format!("k{k}")).as_deref()))
                        .collect();
                    let end = next + recs.len() as i64;
                    if let Some(p) = g.partitions.get_mut(&tp) {
                        p.load(recs, end);
                    }
                    next = end;
                }
            }
            let p = &g.partitions[&tp];
            prop_assert_eq!(key_ordered_pick(p, usize::MAX), key_ordered_by_scan(p));
        }
    }
}
