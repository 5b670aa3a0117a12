//! Unchanged Kafka clients against a real server's Kafka listener: kcat
//! (librdkafka) for metadata, produce with keys and headers, consume by
//! offset, by time and as a group member; records crossing between the
//! Kafka and gRPC APIs unchanged; offsets committed over Kafka seen and
//! resumed over gRPC; malformed frames closing only their own connection.
//! The confluent-kafka (Python) tests are in `kafka_python.rs`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::server::TestServer;
use kafka_protocol::messages::{
    fetch_request::{FetchPartition, FetchTopic},
    produce_request::{PartitionProduceData, TopicProduceData},
    ApiKey, FetchRequest, FetchResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use proptest::prelude::*;
use serde_json::Value;
use sluice::client::{pb, ConsumerConfig, OffsetReset};

/// Runs kcat with `args` (and `input` on stdin); returns its stdout.
async fn kcat(args: Vec<String>, input: Option<String>) -> String {
    let shown = args.clone();
    let (ok, out, err) = common::kcat::run(args, input).await;
    assert!(ok, "kcat {shown:?} failed: {err}");
    out
}

fn broker_args(s: &TestServer) -> Vec<String> {
    vec![
        "-b".into(),
        s.kafka_addr.expect("kafka listener").to_string(),
    ]
}

/// kcat -J lines, as JSON.
fn messages(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

/// Consumes `topic` with kcat until the end of every partition.
async fn consume_all(s: &TestServer, topic: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = broker_args(s);
    args.extend(["-C", "-t", topic, "-e", "-J", "-q"].map(String::from));
    args.extend(extra.iter().map(|a| a.to_string()));
    messages(&kcat(args, None).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn kcat_lists_metadata_produces_and_consumes_by_offset_and_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_kafka(dir.path()).await;
    let c = s.client().await;
    c.create_topic("events", 3, Default::default())
        .await
        .expect("create");

    let mut args = broker_args(&s);
    args.extend(["-L", "-J"].map(String::from));
    let meta: Value = serde_json::from_str(kcat(args, None).await.trim()).expect("metadata json");
    let brokers = meta["brokers"].as_array().expect("brokers");
    assert_eq!(brokers.len(), 1);
    assert_eq!(
        brokers[0]["name"].as_str(),
        Some(s.kafka_addr.expect("addr").to_string().as_str())
    );
    let topic = meta["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .find(|t| t["topic"] == "events")
        .expect("events listed");
    assert_eq!(topic["partitions"].as_array().map(Vec::len), Some(3));
    assert!(
        !meta["topics"]
            .as_array()
            .expect("topics")
            .iter()
            .any(|t| t["topic"].as_str().is_some_and(|n| n.starts_with("__"))),
        "internal topics are not listed"
    );

    // Keys and headers, idempotent (librdkafka numbers the batches).
    let input: String = (0..30).map(|i| format!("key-{i}:value-{i}\n")).collect();
    let mut args = broker_args(&s);
    args.extend(
        [
            "-P",
            "-t",
            "events",
            "-K:",
            "-H",
            "origin=kcat",
            "-H",
            "n=1",
            "-X",
            "enable.idempotence=true",
            "-X",
            "partitioner=murmur2_random",
        ]
        .map(String::from),
    );
    kcat(args, Some(input)).await;

    let all = consume_all(&s, "events", &["-o", "beginning"]).await;
    assert_eq!(all.len(), 30);
    for m in &all {
        let key = m["key"].as_str().expect("key");
        let n = key.strip_prefix("key-").expect("key prefix");
        assert_eq!(m["payload"].as_str(), Some(format!("value-{n}").as_str()));
        assert_eq!(
            m["headers"],
            serde_json::json!(["origin", "kcat", "n", "1"])
        );
        // With the Java client's partitioner, a key lands where Sluice's
        // gRPC API puts it too.
        let want = sluice::broker::partition_for_key(key.as_bytes(), 3);
        assert_eq!(m["partition"].as_i64(), Some(i64::from(want)), "{key}");
    }
    // The same records over gRPC.
    let mut grpc_total = 0;
    for p in 0..3 {
        grpc_total += common::api::fetch_all(&c, "events", p).await.len();
    }
    assert_eq!(grpc_total, 30);

    // From an offset of one partition.
    let p0: Vec<&Value> = all.iter().filter(|m| m["partition"] == 0).collect();
    assert!(p0.len() >= 3, "partition 0 has {} records", p0.len());
    let from2 = consume_all(&s, "events", &["-p", "0", "-o", "2"]).await;
    assert_eq!(from2.len(), p0.len() - 2);
    assert_eq!(from2[0]["offset"].as_i64(), Some(2));

    // By time: only records stamped at or after it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut args = broker_args(&s);
    args.extend(["-P", "-t", "events", "-p", "0", "-K:"].map(String::from));
    kcat(args, Some("late:after-the-cut\n".into())).await;
    let later = consume_all(&s, "events", &["-p", "0", "-o", &format!("s@{cut}")]).await;
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0]["payload"].as_str(), Some("after-the-cut"));
    assert!(later[0]["ts"].as_i64().expect("ts") >= cut);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn records_cross_between_kafka_and_grpc_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_kafka(dir.path()).await;
    let c = s.client().await;
    c.create_topic("cross", 1, Default::default())
        .await
        .expect("create");
    // gRPC in, Kafka out.
    let records = (0..5)
        .map(|i| pb::ProduceRecord {
            key: Some(format!("k{i}").into()),
            value: Some(format!("v{i}").into()),
            headers: vec![pb::Header {
                key: "trace".into(),
                value: Some(format!("t{i}").into()),
            }],
            timestamp_ms: Some(1_700_000_000_000 + i),
            partition: None,
        })
        .collect();
    c.produce(common::api::produce_req("cross", Some(0), records))
        .await
        .expect("produce");
    let out = consume_all(&s, "cross", &["-o", "beginning"]).await;
    assert_eq!(out.len(), 5);
    for (i, m) in out.iter().enumerate() {
        assert_eq!(m["key"].as_str(), Some(format!("k{i}").as_str()));
        assert_eq!(m["payload"].as_str(), Some(format!("v{i}").as_str()));
        assert_eq!(m["headers"], serde_json::json!(["trace", format!("t{i}")]));
        assert_eq!(m["ts"].as_i64(), Some(1_700_000_000_000 + i as i64));
        assert_eq!(m["offset"].as_i64(), Some(i as i64));
    }
    // Kafka in, gRPC out.
    let mut args = broker_args(&s);
    args.extend(["-P", "-t", "cross", "-p", "0", "-K:", "-H", "h=x"].map(String::from));
    kcat(args, Some("kafka-key:kafka-value\n".into())).await;
    let got = common::api::fetch_all(&c, "cross", 0).await;
    assert_eq!(got.len(), 6);
    let last = &got[5];
    assert_eq!(last.key.as_deref(), Some(&b"kafka-key"[..]));
    assert_eq!(last.value.as_deref(), Some(&b"kafka-value"[..]));
    assert_eq!(last.headers.len(), 1);
    assert_eq!(last.headers[0].key, "h");
    assert_eq!(last.headers[0].value.as_deref(), Some(&b"x"[..]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_group_commits_offsets_that_grpc_sees_and_resumes_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_kafka(dir.path()).await;
    let c = s.client().await;
    c.create_topic("jobs", 2, Default::default())
        .await
        .expect("create");
    let input: String = (0..20).map(|i| format!("k{i}:job-{i}\n")).collect();
    let mut args = broker_args(&s);
    args.extend(["-P", "-t", "jobs", "-K:"].map(String::from));
    kcat(args, Some(input)).await;

    // A kcat group member (classic protocol) reads everything and commits.
    let mut args = broker_args(&s);
    args.extend(
        [
            "-G",
            "shared",
            "-o",
            "beginning",
            "-e",
            "-J",
            "-q",
            "-X",
            "enable.auto.commit=true",
            "jobs",
        ]
        .map(String::from),
    );
    let got = messages(&kcat(args, None).await);
    assert_eq!(got.len(), 20);

    let committed = c.fetch_offsets("shared", vec![]).await.expect("offsets");
    let mut by_partition: Vec<(i32, i64)> =
        committed.iter().map(|o| (o.partition, o.offset)).collect();
    by_partition.sort();
    let ends: Vec<(i32, i64)> = c
        .list_offsets("jobs", None)
        .await
        .expect("offsets")
        .iter()
        .map(|p| (p.partition, p.latest_offset))
        .collect();
    assert_eq!(by_partition, ends, "kcat committed each partition's end");
    let described = c.describe_group("shared").await.expect("describe");
    assert!(described.partitions.iter().all(|p| p.lag == 0));

    // While a Kafka member is in the group, `group describe` shows it with
    // its client id, subscription and partitions.
    let mut member = Command::new("kcat")
        .args(["-b", &s.kafka_addr.expect("kafka").to_string()])
        .args(["-G", "shared", "-q", "-X", "client.id=kcat-member"])
        .args(["-X", "session.timeout.ms=6000", "jobs"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kcat");
    let mut shown = None;
    for _ in 0..100 {
        let d = c.describe_group("shared").await.expect("describe");
        if let Some(m) = d.members.iter().find(|m| m.client_id == "kcat-member") {
            if m.assignment
                .iter()
                .map(|t| t.partitions.len())
                .sum::<usize>()
                == 2
            {
                shown = Some(m.clone());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One protocol per group: a gRPC member cannot join meanwhile.
    let refused = c
        .groups()
        .heartbeat(pb::HeartbeatRequest {
            group: "shared".into(),
            topics: vec!["jobs".into()],
            ..Default::default()
        })
        .await
        .expect_err("join refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    // SIGTERM: kcat leaves the group on its way out.
    let _ = Command::new("kill")
        .args(["-TERM", &member.id().to_string()])
        .status();
    let _ = member.wait();
    let shown = shown.expect("the kcat member is described with both partitions");
    assert_eq!(shown.topics, vec!["jobs".to_string()]);

    // A gRPC consumer of the same group resumes there: only new records.
    let mut args = broker_args(&s);
    args.extend(["-P", "-t", "jobs", "-K:"].map(String::from));
    kcat(args, Some("late:late-job\n".into())).await;
    let mut config = ConsumerConfig::new("shared", ["jobs"]);
    config.auto_offset_reset = OffsetReset::Earliest;
    let mut consumer = c.consumer(config);
    let mut seen = Vec::new();
    for _ in 0..50 {
        for r in consumer
            .poll(Duration::from_millis(200))
            .await
            .expect("poll")
        {
            seen.push(r.record.value.clone().unwrap_or_default());
        }
        if !seen.is_empty() {
            break;
        }
    }
    assert_eq!(seen, vec![bytes::Bytes::from_static(b"late-job")]);
    consumer.close().await.expect("close");
    s.stop().await;
}

/// Sends `frame` raw on a new connection; true if the server closed it
/// (or answered nothing) within a second.
fn closed_after(addr: SocketAddr, frame: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let _ = s.write_all(frame);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A well-formed ApiVersions v0 request and the size of its answer.
fn api_versions_answer(addr: SocketAddr) -> usize {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // key 18, version 0, correlation 7, client id "t".
    let body: &[u8] = &[0, 18, 0, 0, 0, 0, 0, 7, 0, 1, b't'];
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    s.write_all(&frame).expect("write");
    let mut size = [0u8; 4];
    s.read_exact(&mut size).expect("answer size");
    let n = i32::from_be_bytes(size) as usize;
    let mut rest = vec![0u8; n];
    s.read_exact(&mut rest).expect("answer");
    assert_eq!(&rest[..4], &7i32.to_be_bytes(), "correlation id echoed");
    n
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as i32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_close_only_their_own_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_kafka(dir.path()).await;
    let addr = s.kafka_addr.expect("kafka");
    let res = tokio::task::spawn_blocking(move || {
        // A connection that stays open and healthy throughout.
        let mut keeper = TcpStream::connect(addr).expect("connect");
        keeper
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let healthy = api_versions_answer(addr);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "unknown API key",
                framed(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0, 0]),
            ),
            (
                "unsupported Produce version",
                framed(&[0, 0, 0, 99, 0, 0, 0, 1, 0, 0]),
            ),
            ("negative size", (-5i32).to_be_bytes().to_vec()),
            ("oversized frame", (1i32 << 30).to_be_bytes().to_vec()),
            (
                "truncated Metadata",
                framed(&[0, 3, 0, 1, 0, 0, 0, 1, 0, 9, b'x']),
            ),
            (
                "array of 2^31 elements",
                framed(&[0, 3, 0, 1, 0, 0, 0, 1, 0, 0, 0x7f, 0xff, 0xff, 0xff]),
            ),
            ("garbage", framed(&[0xde; 64])),
        ];
        for (what, frame) in &cases {
            assert!(closed_after(addr, frame), "{what}: connection left open");
        }
        // An ApiVersions of a version too new is answered (KIP-511), in v0.
        let mut probe = TcpStream::connect(addr).expect("connect");
        probe
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        probe
            .write_all(&framed(&[0, 18, 0, 99, 0, 0, 0, 3, 0, 0]))
            .expect("write");
        let mut head = [0u8; 10];
        probe.read_exact(&mut head).expect("answer");
        assert_eq!(&head[4..8], &3i32.to_be_bytes());
        assert_eq!(
            i16::from_be_bytes([head[8], head[9]]),
            35,
            "UNSUPPORTED_VERSION"
        );
        // The healthy connection still works.
        let body: &[u8] = &[0, 18, 0, 0, 0, 0, 0, 9, 0, 0];
        keeper.write_all(&framed(body)).expect("write");
        let mut size = [0u8; 4];
        keeper.read_exact(&mut size).expect("keeper answered");
        assert_eq!(i32::from_be_bytes(size) as usize, healthy);
        addr
    })
    .await;
    let addr = res.expect("cases");
    // Random frames never take the server down.
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        ..ProptestConfig::default()
    });
    let strategy = (
        any::<i16>(),
        0i16..20,
        proptest::collection::vec(any::<u8>(), 0..300),
    );
    let checked = tokio::task::spawn_blocking(move || {
        runner
            .run(&strategy, |(key, version, tail)| {
                let mut body = key.to_be_bytes().to_vec();
                body.extend_from_slice(&version.to_be_bytes());
                body.extend_from_slice(&[0, 0, 0, 1]);
                body.extend_from_slice(&tail);
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .expect("timeout");
                let _ = s.write_all(&framed(&body));
                let mut buf = [0u8; 65536];
                let _ = s.read(&mut buf);
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        Ok::<usize, String>(api_versions_answer(addr))
    })
    .await
    .expect("join");
    assert!(
        checked.expect("random frames") > 0,
        "the server still answers"
    );
    s.stop().await;
}

/// confluent-kafka (librdkafka) in Python: admin, an idempotent acks=all
/// producer, a classic group of three with one member SIGKILLed, auto
/// commits. See tests/python/kafka_client.py.
#[tokio::test(flavor = "multi_thread")]
async fn confluent_kafka_admin_producer_and_a_group_that_loses_a_member() {
    let py = common::python::python();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_kafka(dir.path()).await;
    let bootstrap = s.kafka_addr.expect("kafka").to_string();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/kafka_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .args(["--bootstrap", &bootstrap])
            .output()
            .expect("run python")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "kafka_client.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    s.stop().await;
}

/// One request over a fresh connection with `kafka-protocol`'s codecs.
fn kafka_call<Req, Resp>(addr: SocketAddr, api: ApiKey, version: i16, req: &Req) -> Resp
where
    Req: Encodable,
    Resp: Decodable,
{
    let mut buf = bytes::BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(11)
        .with_client_id(Some(StrBytes::from_static_str("test")))
        .encode(&mut buf, api.request_header_version(version))
        .expect("header");
    req.encode(&mut buf, version).expect("encode");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&framed(&buf)).expect("write");
    let mut size = [0u8; 4];
    s.read_exact(&mut size).expect("answer size");
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).expect("answer");
    let mut body = bytes::Bytes::from(body);
    let h =
        ResponseHeader::decode(&mut body, api.response_header_version(version)).expect("header");
    assert_eq!(h.correlation_id, 11);
    Resp::decode(&mut body, version).expect("response")
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_cluster_kafka_clients_find_leaders_and_coordinators() {
    let cluster = common::cluster::TestCluster::start(3, 0, &[]).await;
    let c = cluster.client(1).await;
    c.create_replicated_topic("kc", 6, Some(3), Default::default())
        .await
        .expect("create");
    let meta = cluster.wait_caught_up("kc", Duration::from_secs(30)).await;
    let kafka_of = |id: i32| cluster.nodes[(id - 1) as usize].kafka;
    let boot = kafka_of(1).to_string();

    // Metadata from any broker: every broker's Kafka address, and the
    // leaders the cluster metadata names.
    let listed = kcat(
        vec![
            "-b".into(),
            kafka_of(2).to_string(),
            "-L".into(),
            "-J".into(),
            "-t".into(),
            "kc".into(),
        ],
        None,
    )
    .await;
    let listed: Value = serde_json::from_str(listed.trim()).expect("json");
    let mut brokers: Vec<String> = listed["brokers"]
        .as_array()
        .expect("brokers")
        .iter()
        .map(|b| b["name"].as_str().expect("name").to_string())
        .collect();
    brokers.sort();
    let mut want: Vec<String> = (1..=3).map(|i| kafka_of(i).to_string()).collect();
    want.sort();
    assert_eq!(brokers, want);
    let topic = meta.topics.iter().find(|t| t.name == "kc").expect("kc");
    for p in listed["topics"][0]["partitions"]
        .as_array()
        .expect("partitions")
    {
        let i = p["partition"].as_i64().expect("partition") as usize;
        assert_eq!(
            p["leader"].as_i64(),
            Some(i64::from(topic.partitions[i].leader))
        );
        assert_eq!(p["replicas"].as_array().map(Vec::len), Some(3));
    }

    // librdkafka routes each partition to its leader from one bootstrap.
    let input: String = (0..60).map(|i| format!("k{i}:v{i}\n")).collect();
    kcat(
        [
            "-b",
            &boot,
            "-P",
            "-t",
            "kc",
            "-K:",
            "-X",
            "acks=all",
            "-X",
            "enable.idempotence=true",
        ]
        .map(String::from)
        .to_vec(),
        Some(input),
    )
    .await;
    let read = messages(
        &kcat(
            [
                "-b",
                &boot,
                "-C",
                "-t",
                "kc",
                "-o",
                "beginning",
                "-e",
                "-J",
                "-q",
            ]
            .map(String::from)
            .to_vec(),
            None,
        )
        .await,
    );
    assert_eq!(read.len(), 60);

    // A produce or fetch sent to a broker that does not lead the
    // partition is refused with NOT_LEADER_OR_FOLLOWER.
    let p0 = &topic.partitions[0];
    let other = (1..=3).find(|&i| i != p0.leader).expect("a follower");
    let mut b = sluice::storage::BatchBuilder::default();
    b.push(1, Some(b"k"), Some(b"v"), &[]).expect("push");
    let batch = b.build().expect("batch").into_bytes();
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("kc")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(bytes::Bytes::from(batch)))])]);
    let addr = kafka_of(other);
    let answer: ProduceResponse =
        tokio::task::spawn_blocking(move || kafka_call(addr, ApiKey::Produce, 9, &produce))
            .await
            .expect("join");
    assert_eq!(
        answer.responses[0].partition_responses[0].error_code, 6,
        "NOT_LEADER_OR_FOLLOWER"
    );
    let fetch = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("kc")))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_partition_max_bytes(1 << 20)])]);
    let answer: FetchResponse =
        tokio::task::spawn_blocking(move || kafka_call(addr, ApiKey::Fetch, 12, &fetch))
            .await
            .expect("join");
    assert_eq!(
        answer.responses[0].partitions[0].error_code, 6,
        "NOT_LEADER_OR_FOLLOWER"
    );

    // Every broker names the same coordinator for a group, and a kcat
    // group member commits through it.
    // (Right after the cluster forms, the offsets topic may have no
    // leader yet: COORDINATOR_NOT_AVAILABLE, which clients retry.)
    let mut named = Vec::new();
    for i in 1..=3 {
        let addr = kafka_of(i);
        let mut found = None;
        for _ in 0..100 {
            let req = FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("kg"));
            let r: FindCoordinatorResponse = tokio::task::spawn_blocking(move || {
                kafka_call(addr, ApiKey::FindCoordinator, 3, &req)
            })
            .await
            .expect("join");
            if r.error_code == 0 {
                found = Some((r.node_id.0, r.port));
                break;
            }
            assert_eq!(
                r.error_code, 15,
                "only COORDINATOR_NOT_AVAILABLE is retried"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        named.push(found.expect("a coordinator within 10 s"));
    }
    assert!(named.windows(2).all(|w| w[0] == w[1]), "{named:?}");
    assert_eq!(named[0].1, i32::from(kafka_of(named[0].0).port()));
    let got = messages(
        &kcat(
            [
                "-b",
                &boot,
                "-G",
                "kg",
                "-o",
                "beginning",
                "-e",
                "-J",
                "-q",
                "kc",
            ]
            .map(String::from)
            .to_vec(),
            None,
        )
        .await,
    );
    assert_eq!(got.len(), 60);
    let committed: i64 = c
        .fetch_offsets("kg", vec![])
        .await
        .expect("offsets")
        .iter()
        .map(|o| o.offset)
        .sum();
    assert_eq!(committed, 60, "the group committed every partition's end");
}

/// One group, two protocols that are one: a Rust gRPC consumer and a
/// KIP-848 Kafka consumer (confluent-kafka) split the partitions.
#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_member_and_a_kip848_kafka_member_share_a_group() {
    let py = common::python::python();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_kafka(dir.path()).await;
    let c = s.client().await;
    c.create_topic("mixed", 4, Default::default())
        .await
        .expect("create");
    let mut config = ConsumerConfig::new("mixed-group", ["mixed"]);
    config.client_id = "rust-grpc".into();
    let mut grpc = c.consumer(config);
    grpc.poll(Duration::from_millis(200)).await.expect("join");

    let stop = dir.path().join("stop");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/kafka_client.py");
    let mut kafka = Command::new(py)
        .arg(script)
        .args(["--bootstrap", &s.kafka_addr.expect("kafka").to_string()])
        .args([
            "--mode",
            "share",
            "--group",
            "mixed-group",
            "--topic",
            "mixed",
            "--stop",
        ])
        .arg(&stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python");
    let out = kafka.stdout.take().expect("stdout");
    let owned = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i32>::new()));
    let seen = owned.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(list) = line.strip_prefix("owned ") {
                *seen.lock().expect("lock") =
                    list.split(',').filter_map(|p| p.parse().ok()).collect();
            }
        }
    });
    let mut split = None;
    for _ in 0..300 {
        grpc.poll(Duration::from_millis(100)).await.expect("poll");
        let mine: Vec<i32> = grpc.assignment().into_iter().map(|(_, p)| p).collect();
        let theirs = owned.lock().expect("lock").clone();
        let mut all: Vec<i32> = mine.iter().chain(theirs.iter()).copied().collect();
        all.sort();
        if !mine.is_empty() && !theirs.is_empty() && all == vec![0, 1, 2, 3] {
            split = Some((mine, theirs));
            break;
        }
    }
    let described = c.describe_group("mixed-group").await.expect("describe");
    std::fs::write(&stop, b"").expect("stop");
    let _ = tokio::task::spawn_blocking(move || kafka.wait()).await;
    let (mine, theirs) = split.expect("the gRPC and Kafka members split the 4 partitions");
    assert_eq!(mine.len() + theirs.len(), 4, "{mine:?} {theirs:?}");
    let mut clients: Vec<&str> = described
        .members
        .iter()
        .map(|m| m.client_id.as_str())
        .collect();
    clients.sort();
    assert_eq!(clients, vec!["py-848-shared", "rust-grpc"]);
    grpc.close().await.expect("close");
    s.stop().await;
}
