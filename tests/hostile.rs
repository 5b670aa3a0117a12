//! Hostile and heavy clients against a real server on real sockets:
//! requests over the count and size limits, garbage bytes and extreme
//! values on every RPC, connections over the cap, idle and slowloris
//! connections, streams that never open, and shutdown with all of them
//! still connected. After each, a well-behaved client is still served.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::server::{test_config, TestServer};
use proptest::prelude::*;
use sluice::client::raw::RawCodec;
use sluice::client::{pb, record, Client};
use sluice::config::ServerConfig;
use tokio::io::AsyncReadExt;
use tonic::{Code, Status};

/// Resident memory of this process (the server runs in it), bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// What the suite holds the server to after each attack (the test process
/// and its clients included).
const RSS_BOUND: u64 = 1 << 30;

async fn well_behaved(client: &Client, topic: &str) {
    let r = client
        .produce(pb::ProduceRequest {
            topic: topic.into(),
            partition: Some(0),
            records: vec![record(None, "ok")],
            ..Default::default()
        })
        .await
        .expect("a well-behaved produce is served");
    assert!(r.record_errors.is_empty(), "{:?}", r.record_errors);
    let rss = rss_bytes();
    assert!(rss < RSS_BOUND, "RSS {rss} bytes is over the bound");
}

async fn start(config: impl FnOnce(&mut ServerConfig)) -> (tempfile::TempDir, TestServer, Client) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    config(&mut c);
    let server = TestServer::start_with(c, false).await;
    let client = server.client().await;
    client
        .create_topic("t", 1, pb::TopicConfig::default())
        .await
        .expect("create");
    (dir, server, client)
}

fn produce_with(records: Vec<pb::ProduceRecord>) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: "t".into(),
        partition: Some(0),
        records,
        ..Default::default()
    }
}

#[tokio::test]
async fn over_count_requests_are_refused_before_they_are_decoded() {
    let (_dir, server, client) = start(|_| {}).await;
    let before = rss_bytes();
    // 100,001 empty records: 200 KB on the wire, ~11 MB decoded.
    let e = client
        .produce(produce_with(vec![pb::ProduceRecord::default(); 100_001]))
        .await
        .expect_err("too many records");
    let s = status_of(e);
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("at most 100000 records"), "{s:?}");

    let deep = pb::ProduceRecord {
        headers: vec![pb::Header::default(); 129],
        ..Default::default()
    };
    let s = status_of(client.produce(produce_with(vec![deep])).await.unwrap_err());
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("128 headers"), "{s:?}");

    let fat = pb::ProduceRecord {
        headers: vec![pb::Header {
            key: "k".into(),
            value: Some(vec![0u8; 70_000].into()),
        }],
        ..Default::default()
    };
    let s = status_of(client.produce(produce_with(vec![fat])).await.unwrap_err());
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    // Millions of tiny records in requests over the size limit: refused
    // by the decode limit (4 MiB) before they are decoded.
    for _ in 0..4 {
        let e = client
            .produce(produce_with(vec![pb::ProduceRecord::default(); 2_500_000]))
            .await
            .expect_err("over max_request_bytes");
        assert_ne!(status_of(e).code(), Code::Ok);
    }
    // Many requests at the record limit, at once.
    let mut calls = Vec::new();
    for _ in 0..16 {
        let c = client.clone();
        calls.push(tokio::spawn(async move {
            c.produce(produce_with(vec![pb::ProduceRecord::default(); 100_000]))
                .await
        }));
    }
    for c in calls {
        let r = c.await.expect("join").expect("at the limit is served");
        assert_eq!(r.partitions[0].record_count, 100_000);
    }
    well_behaved(&client, "t").await;
    println!("RSS {before} bytes before, {} after", rss_bytes());
    server.stop().await;
}

fn status_of(e: sluice::client::ClientError) -> Status {
    match e {
        sluice::client::ClientError::Status(s) => s,
        other => Status::unknown(other.to_string()),
    }
}

/// Every unary method of the public API.
const UNARY: &[&str] = &[
    "/sluice.v1.Admin/CreateTopic",
    "/sluice.v1.Admin/DeleteTopic",
    "/sluice.v1.Admin/ListTopics",
    "/sluice.v1.Admin/DescribeTopic",
    "/sluice.v1.Admin/CreatePartitions",
    "/sluice.v1.Broker/Produce",
    "/sluice.v1.Broker/Fetch",
    "/sluice.v1.Broker/FetchBatches",
    "/sluice.v1.Broker/ListOffsets",
    "/sluice.v1.Broker/InitProducer",
    "/sluice.v1.Groups/Heartbeat",
    "/sluice.v1.Groups/CommitOffsets",
    "/sluice.v1.Groups/FetchOffsets",
    "/sluice.v1.GroupAdmin/ListGroups",
    "/sluice.v1.GroupAdmin/DescribeGroup",
    "/sluice.v1.GroupAdmin/DeleteGroup",
    "/sluice.v1.GroupAdmin/ResetOffsets",
    "/sluice.v1.Queues/Pull",
    "/sluice.v1.Queues/Acknowledge",
    "/sluice.v1.Queues/DescribeQueue",
];

async fn raw_call(channel: &tonic::transport::Channel, path: &'static str, body: Bytes) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    if let Err(e) = grpc.ready().await {
        return Status::unavailable(e.to_string());
    }
    let mut req = tonic::Request::new(body);
    req.set_timeout(Duration::from_secs(5));
    match grpc
        .unary(req, http::uri::PathAndQuery::from_static(path), RawCodec)
        .await
    {
        Ok(_) => Status::ok(""),
        Err(s) => s,
    }
}

/// FetchBatches is answered outside tonic's codec (zero-copy): its own
/// request limit and decoding refuse bad input with precise codes.
#[tokio::test]
async fn fetch_batches_refuses_oversized_and_malformed_requests() {
    let (_dir, server, client) = start(|_| {}).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let path = "/sluice.v1.Broker/FetchBatches";
    let s = raw_call(&channel, path, Bytes::from(vec![0u8; 100_000])).await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("65536"), "{s:?}");
    let s = raw_call(&channel, path, Bytes::from_static(&[0xff, 0xff])).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("FetchBatchesRequest"), "{s:?}");
    well_behaved(&client, "t").await;
    server.stop().await;
}

/// Codes a hostile request may get: anything but a server fault.
fn acceptable(s: &Status) -> bool {
    !matches!(s.code(), Code::Internal | Code::Unknown | Code::DataLoss)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Random bytes on every unary RPC: never a server fault, never a crash,
/// and the server goes on serving.
#[test]
fn garbage_bytes_on_every_rpc() {
    let rt = runtime();
    let (_dir, server, client) = rt.block_on(start(|_| {}));
    let channel = rt.block_on(async {
        tonic::transport::Endpoint::from_shared(server.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        0..UNARY.len(),
        proptest::collection::vec(any::<u8>(), 0..512),
    );
    runner
        .run(&strategy, |(method, bytes)| {
            let s = rt.block_on(raw_call(&channel, UNARY[method], Bytes::from(bytes)));
            prop_assert!(acceptable(&s), "{}: {s:?}", UNARY[method]);
            Ok(())
        })
        .expect("no server faults");
    rt.block_on(async {
        well_behaved(&client, "t").await;
        server.stop().await;
    });
}

/// Streaming methods: a server stream opened with random bytes, and
/// bidirectional streams fed random messages.
const STREAMING: &[&str] = &[
    "/sluice.v1.Broker/Subscribe",
    "/sluice.v1.Broker/ProduceStream",
    "/sluice.v1.Queues/Consume",
];

async fn raw_stream(
    channel: &tonic::transport::Channel,
    path: &'static str,
    messages: Vec<Bytes>,
) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    if let Err(e) = grpc.ready().await {
        return Status::unavailable(e.to_string());
    }
    let mut req = tonic::Request::new(tokio_stream::iter(messages));
    req.set_timeout(Duration::from_secs(5));
    let call = grpc
        .streaming(req, http::uri::PathAndQuery::from_static(path), RawCodec)
        .await;
    let mut stream = match call {
        Ok(r) => r.into_inner(),
        Err(s) => return s,
    };
    // Read what comes, for a moment (a valid Subscribe would go on).
    let read = tokio::time::timeout(Duration::from_millis(200), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Status::ok(""),
                Err(s) => return s,
            }
        }
    })
    .await;
    read.unwrap_or_else(|_| Status::ok(""))
}

#[test]
fn garbage_messages_on_every_streaming_rpc() {
    let rt = runtime();
    let (_dir, server, client) = rt.block_on(start(|c| c.limits.consume_open_timeout_ms = 100));
    let channel = rt.block_on(async {
        tonic::transport::Endpoint::from_shared(server.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases() / 8,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        0..STREAMING.len(),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..256), 1..4),
    );
    runner
        .run(&strategy, |(method, messages)| {
            let messages = messages.into_iter().map(Bytes::from).collect();
            let s = rt.block_on(raw_stream(&channel, STREAMING[method], messages));
            prop_assert!(acceptable(&s), "{}: {s:?}", STREAMING[method]);
            Ok(())
        })
        .expect("no server faults");
    rt.block_on(async {
        well_behaved(&client, "t").await;
        server.stop().await;
    });
}

fn extreme_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-1i64),
        Just(0i64),
        any::<i64>()
    ]
}

fn extreme_i32() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(i32::MIN),
        Just(i32::MAX),
        Just(-1i32),
        Just(0i32),
        any::<i32>()
    ]
}

/// Well-formed messages with extreme values in every numeric field.
#[test]
fn extreme_values_in_every_numeric_field() {
    let rt = runtime();
    let (_dir, server, client) = rt.block_on(start(|_| {}));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases() / 4,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        proptest::collection::vec(extreme_i64(), 6),
        proptest::collection::vec(extreme_i32(), 8),
        0..6usize,
    );
    runner
        .run(&strategy, |(l, i, which)| {
            let c = client.clone();
            let s = rt.block_on(async move {
                let broker = c.broker();
                let r: Result<(), Status> = match which {
                    0 => broker
                        .clone()
                        .produce(pb::ProduceRequest {
                            topic: "t".into(),
                            partition: Some(i[0]),
                            records: vec![pb::ProduceRecord {
                                timestamp_ms: Some(l[0]),
                                partition: Some(i[1]),
                                ..Default::default()
                            }],
                            acks: i[2],
                            producer_id: Some(l[1]),
                            producer_epoch: i[3],
                            base_sequence: i[4],
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    1 => broker
                        .clone()
                        .fetch(pb::FetchRequest {
                            topic: "t".into(),
                            partition: i[0],
                            offset: l[0],
                            max_records: i[1],
                            max_bytes: i[2],
                            max_wait_ms: i[3].clamp(-5, 50),
                        })
                        .await
                        .map(drop),
                    2 => broker
                        .clone()
                        .list_offsets(pb::ListOffsetsRequest {
                            topic: "t".into(),
                            partitions: vec![i[0], i[1]],
                            timestamp_ms: Some(l[0]),
                        })
                        .await
                        .map(drop),
                    3 => broker
                        .clone()
                        .init_producer(pb::InitProducerRequest {
                            producer_id: Some(l[0]),
                            producer_epoch: i[0],
                        })
                        .await
                        .map(drop),
                    4 => c
                        .admin()
                        .create_topic(pb::CreateTopicRequest {
                            name: format!("x{}", l[5].rem_euclid(1000)),
                            partitions: i[0].clamp(-5, 4),
                            config: Some(pb::TopicConfig {
                                retention_ms: Some(l[0]),
                                retention_bytes: Some(l[1]),
                                segment_bytes: Some(l[2]),
                                max_message_bytes: Some(i[1]),
                                timestamp_type: Some(i[2]),
                                timestamp_before_max_ms: Some(l[3]),
                                timestamp_after_max_ms: Some(l[4]),
                                min_insync_replicas: Some(i[4]),
                                unclean_leader_election: Some(l[5] % 2 == 0),
                            }),
                            replication_factor: (i[3] % 3 != 0).then_some(i[3]),
                        })
                        .await
                        .map(drop),
                    _ => c
                        .queues()
                        .pull(pb::PullRequest {
                            group: "q".into(),
                            topic: "t".into(),
                            max_records: i[0],
                            max_wait_ms: i[1].clamp(-5, 50),
                            prefetch: i[2],
                            acks: vec![pb::Ack {
                                delivery_id: l[0] as u64,
                                r#type: i[3],
                                delay_ms: i[4],
                                ..Default::default()
                            }],
                            settings: Some(pb::QueueSettings {
                                lock_timeout_ms: Some(i[5]),
                                max_deliveries: Some(i[6]),
                                session_timeout_ms: Some(i[7]),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                };
                r.err().unwrap_or_else(|| Status::ok(""))
            });
            prop_assert!(acceptable(&s), "case {which}: {s:?}");
            Ok(())
        })
        .expect("no server faults");
    rt.block_on(async {
        well_behaved(&client, "t").await;
        server.stop().await;
    });
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_and_the_rest_are_served() {
    let (_dir, server, client) = start(|c| c.limits.max_connections = 3).await;
    // The setup client holds one connection; two more fill the cap.
    let a = server.client().await;
    let b = server.client().await;
    a.list_topics().await.expect("a within the cap");
    b.list_topics().await.expect("b within the cap");
    let over = Client::connect(&server.url).await;
    let refused = match over {
        Err(_) => true,
        Ok(c) => c.list_topics().await.is_err(),
    };
    assert!(refused, "a fourth connection is over the cap");
    // The connections within the cap are unaffected; one closing frees a
    // slot.
    well_behaved(&client, "t").await;
    drop(a);
    let mut served = false;
    for _ in 0..100 {
        if let Ok(c) = Client::connect(&server.url).await {
            if c.list_topics().await.is_ok() {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a slot freed by a closed connection is used again");
    drop(b);
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let (_dir, server, client) = start(|c| c.limits.idle_timeout_ms = 300).await;
    // A connection that never sends a byte (not even the HTTP/2 preface).
    let mut idle = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection was closed");

    // A subscription in flight keeps its connection open past the timeout.
    let sub_client = server.client().await;
    let mut sub = sub_client
        .subscribe("t", 0, pb::position::Position::Latest(()))
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(900)).await;
    well_behaved(&client, "t").await;
    let msg = tokio::time::timeout(Duration::from_secs(20), sub.message())
        .await
        .expect("a record arrives")
        .expect("the stream is alive")
        .expect("not ended");
    assert_eq!(msg.records.len(), 1);
    drop(sub);
    server.stop().await;
}

#[tokio::test]
async fn streams_per_connection_are_capped() {
    let (_dir, server, client) = start(|c| c.limits.max_concurrent_streams = 2).await;
    let held = server.client().await;
    let _s1 = held
        .subscribe("t", 0, pb::position::Position::Latest(()))
        .await
        .expect("first stream");
    let _s2 = held
        .subscribe("t", 0, pb::position::Position::Latest(()))
        .await
        .expect("second stream");
    // A third call on the same connection waits for a free stream.
    let mut req = tonic::Request::new(pb::ListTopicsRequest {});
    req.set_timeout(Duration::from_millis(500));
    let third = held.admin().list_topics(req).await;
    assert!(third.is_err(), "the third stream waits: {third:?}");
    // Other connections are served.
    well_behaved(&client, "t").await;
    server.stop().await;
}

#[tokio::test]
async fn a_consume_stream_that_never_opens_times_out() {
    let (_dir, server, client) = start(|c| c.limits.consume_open_timeout_ms = 300).await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::ConsumeRequest>(1);
        let q = client.queues();
        silent.push((
            tx,
            tokio::spawn(async move {
                let mut q = q;
                q.consume(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
            }),
        ));
    }
    for (_tx, call) in silent {
        let r = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("the call ends")
            .expect("join");
        let s = r.expect_err("no open request");
        assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
        assert!(s.message().contains("consume_open_timeout_ms"), "{s:?}");
    }
    well_behaved(&client, "t").await;
    server.stop().await;
}

#[tokio::test]
async fn a_long_poll_answers_before_the_client_deadline() {
    let (_dir, server, client) = start(|_| {}).await;
    let mut req = tonic::Request::new(pb::FetchRequest {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        max_wait_ms: 30_000,
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(400));
    let r = client
        .broker()
        .fetch(req)
        .await
        .expect("an empty answer, not DEADLINE_EXCEEDED");
    assert!(r.into_inner().records.is_empty());

    let mut req = tonic::Request::new(pb::PullRequest {
        group: "q".into(),
        topic: "t".into(),
        max_records: 1,
        max_wait_ms: 30_000,
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(400));
    let r = client.queues().pull(req).await.expect("an empty pull");
    assert!(r.into_inner().deliveries.is_empty());
    server.stop().await;
}

/// Shutdown with queue workers, long polls, silent streams and raw idle
/// connections attached: every call ends with UNAVAILABLE and the server
/// returns.
#[tokio::test]
async fn shutdown_ends_queue_workers_and_idle_connections() {
    // A drain timeout far beyond the test's patience: the calls and the
    // idle connections must end by themselves.
    let (_dir, server, client) = start(|c| {
        c.limits.idle_timeout_ms = 0;
        c.limits.drain_timeout_ms = 600_000;
    })
    .await;
    // A streaming worker with nothing to do.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ConsumeRequest>(4);
    tx.send(pb::ConsumeRequest {
        request: Some(pb::consume_request::Request::Open(pb::OpenQueue {
            group: "q".into(),
            topic: "t".into(),
            prefetch: 1,
            ..Default::default()
        })),
    })
    .await
    .expect("open");
    let mut worker = client
        .queues()
        .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("consume")
        .into_inner();
    let joined = worker.message().await.expect("joined").expect("message");
    assert!(!joined.member_id.is_empty());
    // A long Pull.
    let pull = {
        let q = client.queues();
        tokio::spawn(async move {
            let mut q = q;
            q.pull(pb::PullRequest {
                group: "q".into(),
                topic: "t".into(),
                max_records: 1,
                max_wait_ms: 60_000,
                ..Default::default()
            })
            .await
        })
    };
    // Raw HTTP/2 connections that open (preface and SETTINGS, as an idle
    // client channel does) and then never read or close, and raw TCP
    // connections that never speak at all.
    let mut raw = Vec::new();
    for i in 0..20 {
        let mut s = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        if i % 2 == 0 {
            use tokio::io::AsyncWriteExt;
            s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                .await
                .expect("preface");
        }
        raw.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(Duration::from_secs(60), server.stop())
        .await
        .expect("the server stops without waiting for the drain timeout");
    let end = worker.message().await;
    let s = end.expect_err("the worker's stream ends with an error");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    let s = pull
        .await
        .expect("join")
        .expect_err("the pull ends with an error");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    drop(tx);
    drop(raw);
}

/// Slowloris readers: subscriptions whose clients never read, so their
/// HTTP/2 windows fill and the server's streams stall. The server holds
/// little for them, serves others, and at shutdown the drain timeout ends
/// what cannot finish.
#[tokio::test]
async fn readers_that_never_read_are_bounded_and_cut_off_by_the_drain_timeout() {
    let (_dir, server, client) = start(|c| c.limits.drain_timeout_ms = 1_000).await;
    let chunk = vec![record(None, vec![b'z'; 16 * 1024]); 64];
    for _ in 0..4 {
        let r = client
            .produce(produce_with(chunk.clone()))
            .await
            .expect("fill");
        assert!(r.record_errors.is_empty());
    }
    let before = rss_bytes();
    let mut stalled = Vec::new();
    for _ in 0..50 {
        // Default client windows (64 KiB): the server stalls quickly.
        let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut b = pb::broker_client::BrokerClient::new(channel);
        let s = b
            .subscribe(pb::SubscribeRequest {
                topic: "t".into(),
                partition: 0,
                start: sluice::client::position(pb::position::Position::Earliest(())),
                ..Default::default()
            })
            .await
            .expect("subscribe")
            .into_inner();
        stalled.push((b, s));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // (Tests run in parallel in this process: only the absolute bound
    // is asserted, by `well_behaved`.)
    well_behaved(&client, "t").await;
    println!(
        "RSS {before} bytes before the stalled readers, {} after",
        rss_bytes()
    );
    tokio::time::timeout(Duration::from_secs(60), server.stop())
        .await
        .expect("the drain timeout ends the stalled streams");
    drop(stalled);
}

#[tokio::test]
async fn calls_waiting_per_connection_are_capped() {
    let (_dir, server, client) = start(|c| c.limits.max_calls_per_connection = 1).await;
    let held = server.client().await;
    // A long poll holds the connection's only slot.
    let poll = {
        let mut b = held.broker();
        tokio::spawn(async move {
            b.fetch(pb::FetchRequest {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                max_wait_ms: 3_000,
                ..Default::default()
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut req = tonic::Request::new(pb::ListTopicsRequest {});
    req.set_timeout(Duration::from_millis(500));
    let queued = held.admin().list_topics(req).await;
    assert!(queued.is_err(), "the second call waits: {queued:?}");
    // Other connections are served; the long poll ends normally.
    well_behaved(&client, "t").await;
    poll.await.expect("join").expect("long poll answered");
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_never_answers_keepalive_pings_is_closed() {
    let (_dir, server, _client) = start(|c| {
        c.limits.idle_timeout_ms = 0;
        c.limits.keepalive_interval_ms = 100;
        c.limits.keepalive_timeout_ms = 200;
    })
    .await;
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    // Preface, SETTINGS, and the ACK of the server's SETTINGS; then deaf.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\0\x04\x01\0\0\0\0")
        .await
        .expect("preface");
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // SETTINGS, PINGs: never answered
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent peer was closed");
    server.stop().await;
}
