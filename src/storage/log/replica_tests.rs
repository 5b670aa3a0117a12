//! Tests of the log's replica side: batches appended with the leader's
//! offsets and epochs, and a diverged tail found by epoch and cut.

use super::tests::{all_records, batch, small_config};
use super::*;

#[test]
fn replicated_batches_keep_offsets_and_epochs_byte_for_byte() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    let leader = Log::open(leader_dir.path(), small_config()).expect("open");
    let follower = Log::open(follower_dir.path(), small_config()).expect("open");
    leader.set_leader_epoch(1).expect("epoch");
    for i in 0..20 {
        leader.append(&batch("a", 3, 100, i)).expect("append");
    }
    leader.set_leader_epoch(4).expect("epoch");
    for i in 0..20 {
        leader.append(&batch("b", 2, 100, i)).expect("append");
    }
    // Copy in chunks, as a follower's fetches would.
    while follower.end_offset() < leader.end_offset() {
        let r = leader.read(follower.end_offset(), 700).expect("read");
        follower.append_replicated(&r.data).expect("replicate");
    }
    assert_eq!(follower.epochs(), leader.epochs());
    assert_eq!(follower.epochs(), vec![(1, 0), (4, 60)]);
    assert_eq!(all_records(&follower), all_records(&leader));
    let whole = |l: &Log| l.read(0, 1 << 20).expect("read").data;
    assert_eq!(whole(&follower), whole(&leader));
    // A batch that does not start at the end is refused.
    let r = leader.read(0, 1).expect("read");
    assert!(follower.append_replicated(&r.data).is_err());
    // A flipped bit is refused.
    let mut bad = leader
        .read(leader.end_offset() - 2, 1)
        .expect("read")
        .data
        .to_vec();
    let n = bad.len();
    bad[n - 1] ^= 1;
    follower.truncate_to(leader.end_offset() - 2).expect("cut");
    assert!(follower.append_replicated(&bad).is_err());
    assert_eq!(follower.end_offset(), leader.end_offset() - 2);
    // Producer state and the epoch cache survive a reopen.
    drop(follower);
    let follower = Log::open(follower_dir.path(), small_config()).expect("reopen");
    assert_eq!(follower.epochs(), vec![(1, 0), (4, 60)]);
    assert_eq!(follower.leader_epoch(), 4);
}

#[test]
fn a_diverged_tail_is_found_by_epoch_and_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old_leader = Log::open(dir.path().join("a"), small_config()).expect("open");
    let new_leader = Log::open(dir.path().join("b"), small_config()).expect("open");
    old_leader.set_leader_epoch(1).expect("epoch");
    for i in 0..5 {
        old_leader.append(&batch("x", 2, 50, i)).expect("append");
    }
    new_leader
        .append_replicated(&old_leader.read(0, 1 << 20).expect("read").data)
        .expect("replicate");
    // The old leader appends records nobody else has, then loses
    // leadership; the new one writes in epoch 2.
    for i in 0..3 {
        old_leader.append(&batch("lost", 2, 50, i)).expect("append");
    }
    new_leader.set_leader_epoch(2).expect("epoch");
    new_leader.append(&batch("y", 4, 50, 0)).expect("append");
    // The old leader, now a follower, asks where its last epoch ends.
    let last = old_leader.latest_epoch().expect("epoch");
    assert_eq!(last, 1);
    let (epoch, end) = new_leader.end_offset_for_epoch(last).expect("known");
    assert_eq!((epoch, end), (1, 10));
    let own = old_leader.end_offset_for_epoch(epoch).expect("own").1;
    old_leader.truncate_to(end.min(own)).expect("truncate");
    old_leader
        .append_replicated(&new_leader.read(10, 1 << 20).expect("read").data)
        .expect("catch up");
    assert_eq!(all_records(&old_leader), all_records(&new_leader));
    assert_eq!(old_leader.epochs(), vec![(1, 0), (2, 10)]);
}

#[test]
fn a_batch_of_an_older_epoch_is_refused_after_a_newer_one_began() {
    // A follower of the epoch-1 leader becomes leader in epoch 2 while a
    // fetch from the old leader is still in flight: the batch that fetch
    // brings must not land after epoch 2's start, or every follower of the
    // new leader would be told its log diverges at that start, forever.
    let dir = tempfile::tempdir().expect("tempdir");
    let old_leader = Log::open(dir.path().join("a"), small_config()).expect("open");
    let replica = Log::open(dir.path().join("b"), small_config()).expect("open");
    old_leader.set_leader_epoch(1).expect("epoch");
    old_leader.append(&batch("x", 2, 50, 0)).expect("append");
    replica
        .append_replicated(&old_leader.read(0, 1 << 20).expect("read").data)
        .expect("replicate");
    old_leader.append(&batch("late", 2, 50, 1)).expect("append");
    replica.set_leader_epoch(2).expect("leads now");
    let late = old_leader.read(2, 1 << 20).expect("read").data;
    assert!(replica.append_replicated(&late).is_err());
    assert_eq!(replica.end_offset(), 2);
    assert_eq!(replica.epochs(), vec![(1, 0), (2, 2)]);
    // Its own batches carry epoch 2 from there on.
    replica.append(&batch("y", 1, 50, 0)).expect("append");
    assert_eq!(replica.end_offset_for_epoch(1), Some((1, 2)));
}

#[test]
fn cutting_at_the_end_drops_an_epoch_without_batches() {
    // A replica led in epoch 3 without writing, then follows a leader
    // whose log has only epoch 0 up to here: after the cut its newest
    // epoch is its last batch's, so its next fetch is consistent.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    log.append(&batch("a", 2, 10, 0)).expect("append");
    log.set_leader_epoch(3).expect("epoch");
    assert_eq!(log.latest_epoch(), Some(3));
    assert_eq!(log.truncate_to(2).expect("cut"), 2);
    assert_eq!(log.latest_epoch(), Some(0));
    assert_eq!(log.epochs(), vec![(0, 0)]);
}
