//! Consumer groups end to end: a real server (often a child process),
//! members over gRPC, `sluice consume --group` processes killed with
//! SIGKILL, broker restarts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::ChildServer;
use sluice::client::{pb, Client, ConsumerConfig, OffsetReset};
use tonic::Code;

/// Short timeouts so evictions happen within the test.
const GROUP_FLAGS: &[&str] = &[
    "--group-session-timeout-ms",
    "2000",
    "--group-min-session-timeout-ms",
    "500",
    "--group-heartbeat-interval-ms",
    "300",
];
const SESSION: Duration = Duration::from_millis(2000);
const INTERVAL: Duration = Duration::from_millis(300);

type Tp = (String, i32);

fn tps(a: &[pb::TopicPartitions]) -> BTreeSet<Tp> {
    a.iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
        .collect()
}

async fn produce_to(client: &Client, topic: &str, partition: i32, values: &[String]) {
    let r = client
        .produce(pb::ProduceRequest {
            topic: topic.into(),
            partition: Some(partition),
            records: values
                .iter()
                .map(|v| sluice::client::record(None, v.clone()))
                .collect(),
            acks: pb::Acks::Leader as i32,
            ..Default::default()
        })
        .await
        .expect("produce");
    assert!(r.record_errors.is_empty(), "{:?}", r.record_errors);
}

/// A member driven by hand over the raw gRPC API, as a client in another
/// language would: it applies each answer at once and confirms it with the
/// next heartbeat.
struct RawMember {
    id: String,
    epoch: i32,
    applied: BTreeSet<Tp>,
}

async fn beat(
    client: &Client,
    group: &str,
    m: &mut RawMember,
    topics: &[&str],
) -> pb::HeartbeatResponse {
    let r = client
        .groups()
        .heartbeat(pb::HeartbeatRequest {
            group: group.into(),
            member_id: m.id.clone(),
            member_epoch: m.epoch,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            client_id: "raw".into(),
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    m.id = r.member_id.clone();
    m.epoch = r.member_epoch;
    m.applied = tps(&r.assignment);
    r
}

fn assert_no_two_owners(members: &[RawMember]) {
    let mut seen: BTreeMap<&Tp, &str> = BTreeMap::new();
    for m in members {
        for tp in &m.applied {
            if let Some(other) = seen.insert(tp, &m.id) {
                panic!("{tp:?} owned by {other} and {} at once", m.id);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_six_partitions_and_a_fourth_moves_the_minimum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(dir.path(), GROUP_FLAGS);
    let client = Client::connect(&server.url).await.expect("connect");
    client
        .create_topic("t", 6, Default::default())
        .await
        .expect("create");

    let mut members: Vec<RawMember> = Vec::new();
    for _ in 0..3 {
        members.push(RawMember {
            id: String::new(),
            epoch: 0,
            applied: BTreeSet::new(),
        });
    }
    // Heartbeat round-robin, checking ownership after every heartbeat,
    // until every member holds its share.
    let settle = |n: usize| {
        move |ms: &[RawMember]| {
            ms.iter().map(|m| m.applied.len()).sum::<usize>() == 6
                && ms.iter().all(|m| m.applied.len() >= 6 / n)
        }
    };
    let done = settle(3);
    for round in 0.. {
        assert!(round < 50, "three members did not settle");
        for i in 0..members.len() {
            beat(&client, "g", &mut members[i], &["t"]).await;
            assert_no_two_owners(&members);
        }
        if done(&members) {
            break;
        }
    }
    for m in &members {
        assert_eq!(m.applied.len(), 2, "each of three gets two");
    }
    let before: Vec<BTreeSet<Tp>> = members.iter().map(|m| m.applied.clone()).collect();

    members.push(RawMember {
        id: String::new(),
        epoch: 0,
        applied: BTreeSet::new(),
    });
    let mut heartbeats = 0;
    loop {
        for i in 0..members.len() {
            beat(&client, "g", &mut members[i], &["t"]).await;
            heartbeats += 1;
            assert_no_two_owners(&members);
        }
        let total: usize = members.iter().map(|m| m.applied.len()).sum();
        if total == 6 && !members[3].applied.is_empty() {
            // One more round so every confirmation is in.
            break;
        }
        assert!(heartbeats < 200, "fourth member never got a partition");
    }
    let moved: usize = before
        .iter()
        .zip(&members)
        .map(|(b, m)| b.difference(&m.applied).count())
        .sum();
    assert_eq!(moved, 1, "only one partition moves to the newcomer");
    let d = client.describe_group("g").await.expect("describe");
    assert_eq!(d.members.len(), 4);

    // A member leaves: its partitions go to the others at their next
    // heartbeats, still never to two at once.
    let gone = members.remove(0);
    client
        .groups()
        .heartbeat(pb::HeartbeatRequest {
            group: "g".into(),
            member_id: gone.id,
            member_epoch: -1,
            ..Default::default()
        })
        .await
        .expect("leave");
    for _ in 0..10 {
        for i in 0..members.len() {
            beat(&client, "g", &mut members[i], &["t"]).await;
            assert_no_two_owners(&members);
        }
    }
    let total: usize = members.iter().map(|m| m.applied.len()).sum();
    assert_eq!(total, 6);
    let d = client.describe_group("g").await.expect("describe");
    assert_eq!(d.state, pb::GroupState::Stable as i32);
}

/// A `sluice consume --group` process whose stdout lines are collected.
struct ConsumerProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ConsumerProcess {
    fn start(url: &str, topic: &str, group: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "consume",
                topic,
                "--group",
                group,
                "--from-beginning",
                "--format",
                "json",
                "--session-timeout-ms",
                "2000",
                "--broker",
                url,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn consumer");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let keep = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                keep.lock().expect("lock").push(line);
            }
        });
        Self {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// (partition, offset) of every printed record, in order.
    fn records(&self) -> Vec<(i32, i64)> {
        self.lines
            .lock()
            .expect("lock")
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json line");
                (
                    v["partition"].as_i64().expect("partition") as i32,
                    v["offset"].as_i64().expect("offset"),
                )
            })
            .collect()
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
        if let Some(r) = self.reader.take() {
            r.join().expect("reader");
        }
    }

    /// SIGTERM: the consumer commits, leaves and exits 0.
    fn stop(&mut self) {
        let ok = Command::new("kill")
            .args(["-15", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                assert!(s.success(), "consumer exited with {s}");
                break;
            }
            assert!(Instant::now() < deadline, "consumer did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(r) = self.reader.take() {
            r.join().expect("reader");
        }
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn committed(client: &Client, group: &str) -> BTreeMap<i32, i64> {
    client
        .fetch_offsets(group, vec![])
        .await
        .expect("fetch offsets")
        .into_iter()
        .map(|c| (c.partition, c.offset))
        .collect()
}

async fn owners(client: &Client, group: &str) -> BTreeMap<i32, String> {
    let Ok(d) = client.describe_group(group).await else {
        return BTreeMap::new(); // not created yet
    };
    d.partitions
        .into_iter()
        .filter(|p| !p.owner.is_empty())
        .map(|p| (p.partition, p.owner))
        .collect()
}

/// Produces `per_round` records to each partition every 40 ms until
/// stopped; returns how many each partition got.
fn spawn_producer(
    client: Client,
    topic: &'static str,
    partitions: i32,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<BTreeMap<i32, i64>> {
    tokio::spawn(async move {
        let mut counts: BTreeMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
        let mut round = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            for p in 0..partitions {
                let values: Vec<String> = (0..5).map(|i| format!("r{round}-{i}")).collect();
                produce_to(&client, topic, p, &values).await;
                *counts.get_mut(&p).expect("partition") += 5;
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        counts
    })
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_member_process_is_evicted_and_survivors_resume_from_its_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(dir.path(), GROUP_FLAGS);
    let client = Client::connect(&server.url).await.expect("connect");
    client
        .create_topic("events", 6, Default::default())
        .await
        .expect("create");
    let mut procs: Vec<ConsumerProcess> = (0..3)
        .map(|_| ConsumerProcess::start(&server.url, "events", "workers"))
        .collect();
    wait_for(
        "three members with two partitions each",
        Duration::from_secs(20),
        async || {
            let o = owners(&client, "workers").await;
            let mut per: BTreeMap<String, usize> = BTreeMap::new();
            for m in o.values() {
                *per.entry(m.clone()).or_default() += 1;
            }
            o.len() == 6 && per.len() == 3 && per.values().all(|&n| n == 2)
        },
    )
    .await;
    // Records flow only once the assignment is stable, so until the kill
    // each partition has had exactly one reader.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = spawn_producer(client.clone(), "events", 6, stop.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Process 0's partitions: its member is the one with its pid.
    let d = client.describe_group("workers").await.expect("describe");
    let victim_id = d
        .members
        .iter()
        .find(|m| m.client_id == format!("sluice-cli/{}", procs[0].child.id()))
        .expect("process 0 is a member")
        .member_id
        .clone();
    let victim_parts: BTreeSet<i32> = d
        .partitions
        .iter()
        .filter(|p| p.owner == victim_id)
        .map(|p| p.partition)
        .collect();
    assert_eq!(victim_parts.len(), 2);
    assert!(procs[0]
        .records()
        .iter()
        .all(|r| victim_parts.contains(&r.0)));
    procs[0].kill9();
    let killed_at = Instant::now();
    let at_kill = committed(&client, "workers").await;
    let victim_output = procs[0].records();

    let took = wait_for(
        "survivors own all six",
        Duration::from_secs(20),
        async || {
            let d = client.describe_group("workers").await.expect("describe");
            d.members.len() == 2 && d.partitions.iter().all(|p| !p.owner.is_empty())
        },
    )
    .await;
    let rebalance = killed_at.elapsed();
    assert!(took <= rebalance);
    // Generous bound for a shared machine; the README gives measured figures.
    assert!(
        rebalance < SESSION + INTERVAL + Duration::from_secs(3),
        "rebalance took {rebalance:?}"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let produced = producer.await.expect("producer");
    wait_for("group caught up", Duration::from_secs(30), async || {
        let d = client.describe_group("workers").await.expect("describe");
        d.partitions.iter().all(|p| p.lag == 0)
    })
    .await;
    for p in procs.iter_mut().skip(1) {
        p.stop();
    }

    // Every record was processed at least once.
    let mut seen: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for p in &procs {
        for r in p.records() {
            *seen.entry(r).or_default() += 1;
        }
    }
    for (&p, &n) in &produced {
        for o in 0..n {
            assert!(seen.contains_key(&(p, o)), "record {p}/{o} never processed");
        }
    }
    // Survivors started the victim's partitions exactly at its last commit;
    // the only duplicates are what it printed after that commit.
    for p in &victim_parts {
        let survivors_first = procs[1..]
            .iter()
            .flat_map(|c| c.records())
            .filter(|r| r.0 == *p)
            .map(|r| r.1)
            .min()
            .expect("survivors read the partition");
        let commit = at_kill.get(p).copied().unwrap_or(0);
        assert_eq!(
            survivors_first, commit,
            "partition {p} resumed at the commit"
        );
    }
    let dups: BTreeSet<(i32, i64)> = seen
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(k, _)| *k)
        .collect();
    let expected: BTreeSet<(i32, i64)> = victim_output
        .iter()
        .filter(|(p, o)| *o >= at_kill.get(p).copied().unwrap_or(0))
        .copied()
        .collect();
    assert_eq!(dups, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_member_killed_and_restarted_redelivers_exactly_after_its_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(dir.path(), GROUP_FLAGS);
    let client = Client::connect(&server.url).await.expect("connect");
    client
        .create_topic("jobs", 2, Default::default())
        .await
        .expect("create");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = spawn_producer(client.clone(), "jobs", 2, stop.clone());

    let mut first = ConsumerProcess::start(&server.url, "jobs", "once");
    wait_for(
        "some records processed",
        Duration::from_secs(20),
        async || first.records().len() > 100,
    )
    .await;
    first.kill9();
    let at_kill = committed(&client, "once").await;
    let first_out = first.records();

    let mut second = ConsumerProcess::start(&server.url, "jobs", "once");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let produced = producer.await.expect("producer");
    wait_for("caught up", Duration::from_secs(30), async || {
        let d = client.describe_group("once").await.expect("describe");
        d.members.len() == 1 && d.partitions.iter().all(|p| p.lag == 0)
    })
    .await;
    second.stop();
    let second_out = second.records();

    for (&p, &n) in &produced {
        let all: BTreeSet<i64> = first_out
            .iter()
            .chain(&second_out)
            .filter(|r| r.0 == p)
            .map(|r| r.1)
            .collect();
        assert_eq!(
            all,
            (0..n).collect(),
            "partition {p}: every record at least once"
        );
        let restart = second_out.iter().filter(|r| r.0 == p).map(|r| r.1).min();
        assert_eq!(restart, Some(at_kill.get(&p).copied().unwrap_or(0)));
    }
    let first_set: BTreeSet<(i32, i64)> = first_out.iter().copied().collect();
    let dups: BTreeSet<(i32, i64)> = second_out
        .iter()
        .filter(|r| first_set.contains(r))
        .copied()
        .collect();
    let after_commit: BTreeSet<(i32, i64)> = first_out
        .iter()
        .filter(|(p, o)| *o >= at_kill.get(p).copied().unwrap_or(0))
        .copied()
        .collect();
    assert_eq!(
        dups, after_commit,
        "duplicates are exactly those after the last commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_receive_every_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(dir.path(), GROUP_FLAGS);
    let client = Client::connect(&server.url).await.expect("connect");
    client
        .create_topic("news", 3, Default::default())
        .await
        .expect("create");
    for p in 0..3 {
        let values: Vec<String> = (0..50).map(|i| format!("{p}-{i}")).collect();
        produce_to(&client, "news", p, &values).await;
    }
    for group in ["audit", "search"] {
        let mut c = client.consumer(ConsumerConfig {
            auto_offset_reset: OffsetReset::Earliest,
            ..ConsumerConfig::new(group, ["news"])
        });
        let mut got = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < 150 {
            assert!(
                Instant::now() < deadline,
                "{group} got {} of 150",
                got.len()
            );
            for r in c.poll(Duration::from_millis(200)).await.expect("poll") {
                got.insert((r.partition, r.record.offset));
            }
        }
        c.close().await.expect("close");
        assert_eq!(got.len(), 150, "{group}");
        let lag: i64 = client
            .describe_group(group)
            .await
            .expect("describe")
            .partitions
            .iter()
            .map(|p| p.lag)
            .sum();
        assert_eq!(lag, 0, "{group} committed everything on close");
    }
    assert_eq!(client.list_groups().await.expect("list").len(), 2);
}

async fn raw_commit(
    client: &Client,
    group: &str,
    member: &str,
    epoch: i32,
    partition: i32,
    offset: i64,
) -> Result<(), tonic::Status> {
    client
        .groups()
        .commit_offsets(pb::CommitOffsetsRequest {
            group: group.into(),
            member_id: member.into(),
            member_epoch: epoch,
            offsets: vec![pb::OffsetCommit {
                topic: "t".into(),
                partition,
                offset,
                metadata: String::new(),
            }],
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_and_unowned_commits_and_bad_requests_get_precise_statuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(dir.path(), GROUP_FLAGS);
    let client = Client::connect(&server.url).await.expect("connect");
    client
        .create_topic("t", 2, Default::default())
        .await
        .expect("create");
    let mut a = RawMember {
        id: String::new(),
        epoch: 0,
        applied: BTreeSet::new(),
    };
    beat(&client, "g", &mut a, &["t"]).await;
    let first_epoch = a.epoch;
    beat(&client, "g", &mut a, &["t"]).await;
    assert_eq!(a.applied.len(), 2);
    raw_commit(&client, "g", &a.id, a.epoch, 1, 5)
        .await
        .expect("owner commits");

    // b joins; a is told to give up one partition (new epoch).
    let mut b = RawMember {
        id: String::new(),
        epoch: 0,
        applied: BTreeSet::new(),
    };
    beat(&client, "g", &mut b, &["t"]).await;
    beat(&client, "g", &mut a, &["t"]).await; // revocation arrives
    beat(&client, "g", &mut a, &["t"]).await; // confirmed
    let lost = 1 - a.applied.iter().next().expect("one left").1;
    let e = raw_commit(&client, "g", &a.id, a.epoch, lost, 9)
        .await
        .expect_err("unowned");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not assigned"), "{}", e.message());
    let e = raw_commit(&client, "g", &a.id, first_epoch, 0, 1)
        .await
        .expect_err("stale epoch");
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    assert!(e.message().contains("fenced"), "{}", e.message());
    let e = raw_commit(&client, "g", "zombie", 3, 0, 1)
        .await
        .expect_err("unknown member");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = raw_commit(&client, "g", "", -1, 0, 1)
        .await
        .expect_err("members are live");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // The zombie commits moved nothing.
    assert_eq!(committed(&client, "g").await.get(&1), Some(&5));

    let e = client.delete_group("g").await.expect_err("live members");
    assert!(e.to_string().contains("FAILED_PRECONDITION"), "{e}");
    let e = client
        .reset_offsets(
            "g",
            "t",
            vec![],
            pb::reset_offsets_request::To::Earliest(()),
            false,
            false,
        )
        .await
        .expect_err("live members");
    assert!(e.to_string().contains("FAILED_PRECONDITION"), "{e}");
    let e = client.describe_group("nope").await.expect_err("no group");
    assert!(e.to_string().contains("NOT_FOUND"), "{e}");

    let bad = |session: i32, group: &str, topics: Vec<String>| pb::HeartbeatRequest {
        group: group.into(),
        member_epoch: 0,
        topics,
        session_timeout_ms: session,
        ..Default::default()
    };
    let e = client
        .groups()
        .heartbeat(bad(10, "g2", vec!["t".into()]))
        .await
        .expect_err("session too short");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("[500, 300000]"), "{}", e.message());
    for (req, what) in [
        (bad(0, "", vec!["t".into()]), "empty group"),
        (bad(0, "g2", vec![]), "no topics"),
        (bad(0, "g2", vec!["bad/name".into()]), "bad topic"),
        (
            bad(0, "g2", vec!["__consumer_offsets".into()]),
            "internal topic",
        ),
    ] {
        let e = client.groups().heartbeat(req).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
    }
    let e = raw_commit(&client, "g", &a.id, a.epoch, 0, -4)
        .await
        .expect_err("negative");
    assert_eq!(e.code(), Code::InvalidArgument);
    // The internal topic is the broker's own.
    let e = client
        .produce(pb::ProduceRequest {
            topic: "__consumer_offsets".into(),
            records: vec![sluice::client::record(None, "x")],
            ..Default::default()
        })
        .await
        .expect_err("internal");
    assert!(e.to_string().contains("INVALID_ARGUMENT"), "{e}");
    let e = client
        .create_topic("__mine", 1, Default::default())
        .await
        .expect_err("reserved");
    assert!(e.to_string().contains("reserved"), "{e}");
    assert!(client
        .list_topics()
        .await
        .expect("list")
        .iter()
        .all(|t| t.name == "t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_keeps_offsets_and_members_carry_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ChildServer::start(dir.path(), GROUP_FLAGS);
    let addr = server.addr().to_string();
    let client = Client::connect(&server.url).await.expect("connect");
    client
        .create_topic("t", 2, Default::default())
        .await
        .expect("create");
    for p in 0..2 {
        let values: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
        produce_to(&client, "t", p, &values).await;
    }
    let mut c = client.consumer(ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        auto_commit_interval: None,
        ..ConsumerConfig::new("g", ["t"])
    });
    let mut got = 0;
    while got < 40 {
        got += c
            .poll(Duration::from_millis(500))
            .await
            .expect("poll")
            .len();
    }
    c.commit().await.expect("commit");
    // Let the member confirm its assignment (its next heartbeat).
    wait_for("stable group", Duration::from_secs(10), async || {
        let d = client.describe_group("g").await.expect("describe");
        d.state == pb::GroupState::Stable as i32
    })
    .await;
    let member = c.member_id();
    let epoch = c.member_epoch();
    let before = committed(&client, "g").await;
    assert_eq!(before, BTreeMap::from([(0, 20), (1, 20)]));

    // SIGKILL the broker, then start it again on the same address.
    server.child.kill().expect("kill");
    server.child.wait().expect("wait");
    drop(server);
    let _server = ChildServer::start_at(dir.path(), &addr, GROUP_FLAGS);
    assert_eq!(committed(&client, "g").await, before, "offsets survive");
    // The member keeps its id and epoch through the restart.
    let d = client.describe_group("g").await.expect("describe");
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.members[0].member_id, member);
    assert_eq!(d.members[0].member_epoch, epoch);

    for p in 0..2 {
        let values: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
        produce_to(&client, "t", p, &values).await;
    }
    let mut after = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while after.len() < 10 {
        assert!(Instant::now() < deadline, "got {after:?} after restart");
        for r in c
            .poll(Duration::from_millis(300))
            .await
            .expect("poll after restart")
        {
            after.push((r.partition, r.record.offset));
        }
    }
    after.sort();
    let expected: Vec<(i32, i64)> = (0..2).flat_map(|p| (20..25).map(move |o| (p, o))).collect();
    assert_eq!(
        after, expected,
        "resumes exactly after the committed offsets"
    );
    c.commit().await.expect("commit after restart");
    assert_eq!(c.member_id(), member, "no rejoin was needed");
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_offsets_replays_exactly_the_chosen_range_and_lag_is_right() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(dir.path(), GROUP_FLAGS);
    let client = Client::connect(&server.url).await.expect("connect");
    client
        .create_topic("t", 1, Default::default())
        .await
        .expect("create");
    let base = 1_700_000_000_000i64;
    let r = client
        .produce(pb::ProduceRequest {
            topic: "t".into(),
            partition: Some(0),
            records: (0..100)
                .map(|i| pb::ProduceRecord {
                    value: Some(format!("v{i}").into()),
                    timestamp_ms: Some(base + i * 1000),
                    ..Default::default()
                })
                .collect(),
            acks: pb::Acks::Leader as i32,
            ..Default::default()
        })
        .await
        .expect("produce");
    assert!(r.record_errors.is_empty());

    let consume_all = async |expect: usize| -> Vec<i64> {
        let mut c = client.consumer(ConsumerConfig {
            auto_offset_reset: OffsetReset::Earliest,
            ..ConsumerConfig::new("g", ["t"])
        });
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < expect {
            assert!(Instant::now() < deadline, "got {} of {expect}", got.len());
            for r in c.poll(Duration::from_millis(300)).await.expect("poll") {
                got.push(r.record.offset);
            }
        }
        // Nothing beyond what was expected.
        assert!(c
            .poll(Duration::from_millis(300))
            .await
            .expect("poll")
            .is_empty());
        c.close().await.expect("close");
        got
    };
    assert_eq!(consume_all(100).await, (0..100).collect::<Vec<_>>());
    let lag =
        |d: &pb::DescribeGroupResponse| (d.partitions[0].committed_offset, d.partitions[0].lag);
    assert_eq!(
        lag(&client.describe_group("g").await.expect("describe")),
        (100, 0)
    );
    produce_to(
        &client,
        "t",
        0,
        &(0..10).map(|i| format!("late{i}")).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(
        lag(&client.describe_group("g").await.expect("describe")),
        (100, 10)
    );

    use pb::reset_offsets_request::To;
    let reset = async |to: To| {
        wait_for("group empty", Duration::from_secs(10), async || {
            client
                .describe_group("g")
                .await
                .expect("describe")
                .members
                .is_empty()
        })
        .await;
        client
            .reset_offsets("g", "t", vec![], to, false, false)
            .await
            .expect("reset")
    };
    let r = reset(To::Offset(40)).await;
    assert_eq!((r[0].previous_offset, r[0].offset), (100, 40));
    assert_eq!(
        lag(&client.describe_group("g").await.expect("describe")),
        (40, 70)
    );
    assert_eq!(consume_all(70).await, (40..110).collect::<Vec<_>>());

    let r = reset(To::TimestampMs(base + 70_500)).await;
    assert_eq!(r[0].offset, 71, "first record at or after the time");
    assert_eq!(consume_all(39).await, (71..110).collect::<Vec<_>>());

    let r = reset(To::Earliest(())).await;
    assert_eq!(r[0].offset, 0);
    let r = reset(To::Offset(1_000_000)).await;
    assert_eq!(r[0].offset, 110, "clamped to the end");
    let dry = client
        .reset_offsets("g", "t", vec![0], To::Offset(3), true, false)
        .await
        .expect("dry run");
    assert_eq!(dry[0].offset, 3);
    assert_eq!(
        committed(&client, "g").await.get(&0),
        Some(&110),
        "dry run wrote nothing"
    );
    client.delete_group("g").await.expect("delete");
    assert!(client.list_groups().await.expect("list").is_empty());
    assert!(committed(&client, "g").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_topic_stays_bounded_under_many_commits_and_replays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = dir.path().join("sluice.toml");
    std::fs::write(
        &toml,
        "[groups]\noffsets_partitions = 1\noffsets_segment_bytes = 65536\nsnapshot_min_records = 1000\n",
    )
    .expect("write config");
    let data = dir.path().join("data");
    let mut args: Vec<&str> = vec!["--config", toml.to_str().expect("utf-8")];
    args.extend_from_slice(GROUP_FLAGS);
    let mut server = ChildServer::start(&data, &args);
    let addr = server.addr().to_string();
    let client = Client::connect(&server.url).await.expect("connect");
    client
        .create_topic("t", 4, Default::default())
        .await
        .expect("create");
    let mut groups = client.groups();
    let commits = 10_000;
    for i in 0..commits {
        groups
            .commit_offsets(pb::CommitOffsetsRequest {
                group: format!("g{}", i % 10),
                offsets: vec![pb::OffsetCommit {
                    topic: "t".into(),
                    partition: i % 4,
                    offset: i64::from(i),
                    metadata: "m".into(),
                }],
                ..Default::default()
            })
            .await
            .expect("commit");
    }
    let offsets_topic = client
        .describe_topic("__consumer_offsets")
        .await
        .expect("describe");
    let p = &offsets_topic.partitions[0];
    assert!(p.high_watermark >= commits as i64);
    assert!(
        p.high_watermark - p.log_start_offset < 5_000,
        "old commits were compacted away: [{}, {})",
        p.log_start_offset,
        p.high_watermark
    );
    assert!(p.size_bytes < 2 * 1024 * 1024, "{} bytes", p.size_bytes);

    let expected: BTreeMap<String, BTreeMap<i32, i64>> = {
        let mut m = BTreeMap::new();
        for g in 0..10 {
            m.insert(format!("g{g}"), committed(&client, &format!("g{g}")).await);
        }
        m
    };
    // Each group's last commit per partition survives a SIGKILL.
    assert_eq!(expected["g3"][&3], i64::from(commits - 17));
    server.child.kill().expect("kill");
    server.child.wait().expect("wait");
    drop(server);
    let _server = ChildServer::start_at(&data, &addr, &args);
    for (g, offsets) in &expected {
        assert_eq!(&committed(&client, g).await, offsets, "{g} after restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_of_a_deleted_topic_never_apply_to_a_new_topic_of_that_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::server::TestServer::start(dir.path()).await;
    let c = server.client().await;
    c.create_topic("reborn", 1, Default::default())
        .await
        .expect("create");
    let values: Vec<String> = (0..10).map(|i| format!("old-{i}")).collect();
    produce_to(&c, "reborn", 0, &values).await;
    c.reset_offsets(
        "g",
        "reborn",
        vec![],
        pb::reset_offsets_request::To::Latest(()),
        false,
        true,
    )
    .await
    .expect("commit the end");
    assert_eq!(committed(&c, "g").await, BTreeMap::from([(0, 10)]));
    c.delete_topic("reborn").await.expect("delete");
    c.create_topic("reborn", 1, Default::default())
        .await
        .expect("create again");
    let values: Vec<String> = (0..3).map(|i| format!("new-{i}")).collect();
    produce_to(&c, "reborn", 0, &values).await;
    // The old offset (10) would skip the new topic's records (and point
    // past its end): it is not served, so a resuming consumer starts from
    // its reset policy.
    assert_eq!(committed(&c, "g").await, BTreeMap::new());
    let d = c.describe_group("g").await.expect("describe");
    let lags: Vec<&pb::PartitionLag> = d
        .partitions
        .iter()
        .filter(|p| p.topic == "reborn")
        .collect();
    assert_eq!(lags.len(), 1, "{:?}", d.partitions);
    assert_eq!(lags[0].committed_offset, -1);
    assert_eq!(lags[0].lag, 3);
    server.stop().await;
}
