//! The classic protocol's state machine, driven without sockets.

use super::*;

fn join(id: &str, protocols: &[&str]) -> Join {
    Join {
        member_id: id.to_string(),
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 30_000,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
            .collect(),
        id_round_trip: true,
    }
}

/// A member's id after the MEMBER_ID_REQUIRED round trip.
fn new_member(g: &mut Groups, now: i64) -> String {
    match g.join("g", join("", &["range"]), now) {
        Err(ClassicError::MemberIdRequired(id)) => id,
        other => panic!("expected MEMBER_ID_REQUIRED, got {other:?}"),
    }
}

/// A member that joined alone and synced: generation 1, stable.
fn lone_stable_member(g: &mut Groups) -> String {
    let a = new_member(g, 0);
    g.join("g", join(&a, &["range"]), 0).expect("join a");
    g.take_events();
    g.sync("g", &a, 1, vec![(a.clone(), Bytes::from_static(b"all"))], 0)
        .expect("sync");
    a
}

fn joined(events: &[Event]) -> Vec<Joined> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Joined(_, _, Ok(j)) => Some(j.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_lone_member_joins_leads_and_gets_its_assignment() {
    let mut g = Groups::default();
    let a = new_member(&mut g, 0);
    assert_eq!(g.join("g", join(&a, &["range"]), 1), Ok(a.clone()));
    let j = joined(&g.take_events());
    assert_eq!(j.len(), 1);
    assert_eq!((j[0].generation, j[0].leader.as_str()), (1, a.as_str()));
    assert_eq!(j[0].members.len(), 1, "the leader sees every member");
    let out = g.sync("g", &a, 1, vec![(a.clone(), Bytes::from_static(b"p0"))], 2);
    assert_eq!(out, Ok(Some(Bytes::from_static(b"p0"))));
    assert_eq!(g.heartbeat("g", &a, 1, 3), Ok(()));
    assert_eq!(g.check_commit("g", &a, 1), Ok(()));
    assert_eq!(
        g.check_commit("g", &a, 0),
        Err(ClassicError::IllegalGeneration(0))
    );
}

#[test]
fn a_second_member_makes_the_first_rejoin_and_both_get_shares() {
    let mut g = Groups::default();
    let a = lone_stable_member(&mut g);
    let b = new_member(&mut g, 10);
    g.join("g", join(&b, &["range"]), 10).expect("join b");
    assert!(joined(&g.take_events()).is_empty(), "waits for a to rejoin");
    assert_eq!(
        g.heartbeat("g", &a, 1, 20),
        Err(ClassicError::RebalanceInProgress)
    );
    assert_eq!(
        g.check_commit("g", &a, 1),
        Err(ClassicError::RebalanceInProgress)
    );
    g.join("g", join(&a, &["range"]), 30).expect("rejoin a");
    let j = joined(&g.take_events());
    assert_eq!(j.len(), 2);
    assert!(j.iter().all(|j| j.generation == 2 && j.leader == a));
    // The follower's sync waits for the leader's.
    assert_eq!(g.sync("g", &b, 2, vec![], 40), Ok(None));
    let given = vec![
        (a.clone(), Bytes::from_static(b"p0")),
        (b.clone(), Bytes::from_static(b"p1")),
    ];
    assert_eq!(
        g.sync("g", &a, 2, given, 50),
        Ok(Some(Bytes::from_static(b"p0")))
    );
    assert_eq!(
        g.take_events(),
        vec![Event::Synced(
            "g".into(),
            b.clone(),
            Ok(Bytes::from_static(b"p1"))
        )]
    );
}

#[test]
fn a_silent_member_is_expired_and_the_rest_rebalance() {
    let mut g = Groups::default();
    let a = new_member(&mut g, 0);
    let b = new_member(&mut g, 0);
    g.join("g", join(&a, &["range"]), 0).expect("a");
    g.join("g", join(&b, &["range"]), 0).expect("b");
    // a joined alone first (generation 1); b's join started generation 2.
    g.join("g", join(&a, &["range"]), 1).expect("a again");
    let j = joined(&g.take_events());
    let generation = j.last().expect("joined").generation;
    g.sync("g", &a, generation, vec![], 2).expect("sync a");
    // b stays silent past its session; a heartbeats.
    g.heartbeat("g", &a, generation, 9_000).expect("hb");
    g.tick(10_500);
    assert_eq!(g.describe("g").map(|d| d.members.len()), Some(1));
    assert_eq!(
        g.heartbeat("g", &a, generation, 10_600),
        Err(ClassicError::RebalanceInProgress)
    );
    g.join("g", join(&a, &["range"]), 10_700).expect("rejoin");
    let j = joined(&g.take_events());
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].generation, generation + 1);
}

#[test]
fn members_that_do_not_rejoin_by_the_deadline_are_dropped() {
    let mut g = Groups::default();
    let a = lone_stable_member(&mut g);
    let b = new_member(&mut g, 0);
    g.join("g", join(&b, &["range"]), 0).expect("b");
    // a keeps heartbeating (told to rejoin) but never does.
    for t in (1_000..31_000).step_by(1_000) {
        let _ = g.heartbeat("g", &a, 1, t);
        g.tick(t);
    }
    let j = joined(&g.take_events());
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].member_id, b);
    assert_eq!(j[0].leader, b, "the new leader is a member that rejoined");
}

#[test]
fn incompatible_members_and_unknown_ids_are_refused() {
    let mut g = Groups::default();
    let a = new_member(&mut g, 0);
    g.join("g", join(&a, &["range"]), 0).expect("a");
    assert_eq!(
        g.join("g", join("", &["cooperative-sticky"]), 0)
            .map(|_| ()),
        Err(ClassicError::InconsistentProtocol)
    );
    assert_eq!(
        g.join("g", join("made-up", &["range"]), 0),
        Err(ClassicError::UnknownMember)
    );
    let mut bad = join("", &["range"]);
    bad.session_timeout_ms = 10;
    assert_eq!(
        g.join("g", bad, 0),
        Err(ClassicError::InvalidSessionTimeout(10))
    );
}

#[test]
fn leaving_empties_the_group_and_allows_memberless_commits() {
    let mut g = Groups::default();
    let a = new_member(&mut g, 0);
    g.join("g", join(&a, &["range"]), 0).expect("a");
    g.take_events();
    assert_eq!(
        g.check_commit("g", "", -1),
        Err(ClassicError::IllegalGeneration(-1))
    );
    g.leave("g", &a, 1).expect("leave");
    assert!(!g.has_members("g"));
    assert_eq!(g.check_commit("g", "", -1), Ok(()));
    g.tick(2);
    assert!(g.list().is_empty(), "an empty group is forgotten");
}
