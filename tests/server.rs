//! The server as a whole: health, reflection, metrics, draining on
//! shutdown, and the built binary as a child process (SIGTERM exits 0;
//! SIGKILL during acks=ALL loses no acknowledged record).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::server::{http_get, test_config, ChildServer, TestServer};
use sluice::api::grpc::pb::{server_info_client::ServerInfoClient, GetInfoRequest};
use sluice::client::{pb, record, Client};
use tokio_stream::StreamExt;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

#[tokio::test]
async fn health_reflection_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(test_config(dir.path()), true).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let reply = ServerInfoClient::new(channel.clone())
        .get_info(GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.version, sluice::VERSION);

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "sluice.v1.Broker", "sluice.v1.Admin"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service}");
    }

    // Reflection lists the services, so grpcurl works without the proto.
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection reply");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "sluice.v1.Broker",
        "sluice.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
    }

    let c = server.client().await;
    c.create_topic("metered", 2, Default::default())
        .await
        .unwrap();
    c.produce(pb::ProduceRequest {
        topic: "metered".into(),
        records: vec![record(None, "abc"); 3],
        ..Default::default()
    })
    .await
    .unwrap();
    let addr = server.metrics_addr.unwrap();
    let (status, body) = http_get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    for needle in [
        "sluice_produce_records_total{topic=\"metered\"} 3",
        "sluice_topic_size_bytes{topic=\"metered\"}",
        "sluice_topic_partitions{topic=\"metered\"} 2",
        "sluice_open_partition_logs",
        "sluice_request_duration_seconds_bucket{method=\"Produce\"",
    ] {
        assert!(body.contains(needle), "{needle} missing from:\n{body}");
    }
    let (status, body) = http_get(addr, "/healthz").await;
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("ok"));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_long_polls() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let c = server.client().await;
    c.create_topic("s", 1, Default::default()).await.unwrap();
    let mut sub = c
        .subscribe("s", 0, pb::position::Position::Latest(()))
        .await
        .unwrap();
    let c2 = c.clone();
    let poll = tokio::spawn(async move {
        c2.fetch(pb::FetchRequest {
            topic: "s".into(),
            partition: 0,
            offset: 0,
            max_wait_ms: 300_000,
            ..Default::default()
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Would hang for five minutes if shutdown did not end them.
    tokio::time::timeout(Duration::from_secs(60), server.stop())
        .await
        .expect("drained");
    let err = sub.message().await.expect_err("stream ends with a status");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let polled = poll.await.unwrap();
    assert!(polled.is_err());
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start(dir.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = server.url.clone();
    rt.block_on(async {
        let c = Client::connect(&url).await.unwrap();
        c.create_topic("t", 1, Default::default()).await.unwrap();
        c.produce(pb::ProduceRequest {
            topic: "t".into(),
            records: vec![record(None, "kept")],
            ..Default::default()
        })
        .await
        .unwrap();
        // An open subscription must not hold up the drain.
        let _sub = c
            .subscribe("t", 0, pb::position::Position::Latest(()))
            .await
            .unwrap();
        server.signal(15);
        let status = server.wait(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    });
    // The close was clean: the restart recovers nothing.
    let server = ChildServer::start(dir.path(), &[]);
    rt.block_on(async {
        let c = Client::connect(&server.url).await.unwrap();
        let r = c
            .fetch(pb::FetchRequest {
                topic: "t".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(r.records[0].value.as_deref(), Some(&b"kept"[..]));
    });
    assert!(!server.log().contains("unclean"), "{}", server.log());
}

#[test]
fn sigkill_during_acks_all_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut acked: Vec<(i32, i64, Bytes)> = Vec::new();
    for round in 0..3u64 {
        let server = ChildServer::start(dir.path(), &[]);
        let url = server.url.clone();
        let got = rt.block_on(async move {
            let c = Client::connect(&url).await.unwrap();
            if round == 0 {
                c.create_topic("d", 2, Default::default()).await.unwrap();
            }
            // Several concurrent producers, each recording what was acked.
            let mut tasks = Vec::new();
            for w in 0..4 {
                let c = c.clone();
                tasks.push(tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for i in 0u64.. {
                        let value = Bytes::from(format!("r{round}-w{w}-{i}"));
                        let r = c
                            .produce(pb::ProduceRequest {
                                topic: "d".into(),
                                partition: Some(w % 2),
                                records: vec![record(None, value.clone())],
                                acks: pb::Acks::All as i32,
                                ..Default::default()
                            })
                            .await;
                        match r {
                            Ok(r) if r.record_errors.is_empty() => {
                                mine.push((w % 2, r.partitions[0].base_offset, value))
                            }
                            _ => return mine,
                        }
                    }
                    mine
                }));
            }
            tasks
        });
        // Let them run, then kill the server mid-stream.
        std::thread::sleep(Duration::from_millis(300 + 150 * round));
        server.signal(9);
        drop(server);
        for t in got {
            acked.extend(rt.block_on(t).unwrap());
        }
    }
    assert!(
        acked.len() > 10,
        "only {} records were acknowledged",
        acked.len()
    );

    let server = ChildServer::start(dir.path(), &[]);
    rt.block_on(async {
        let c = Client::connect(&server.url).await.unwrap();
        let mut held = std::collections::HashMap::new();
        for p in 0..2 {
            let mut offset = 0;
            loop {
                let r = c
                    .fetch(pb::FetchRequest {
                        topic: "d".into(),
                        partition: p,
                        offset,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                if r.records.is_empty() {
                    break;
                }
                offset = r.next_offset;
                for rec in r.records {
                    held.insert((p, rec.offset), rec.value.unwrap_or_default());
                }
            }
        }
        for (p, offset, value) in &acked {
            assert_eq!(
                held.get(&(*p, *offset)),
                Some(value),
                "acknowledged record at {p}/{offset} lost"
            );
        }
    });
}

#[test]
fn serve_reads_a_toml_config_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "metrics_listen = \"off\"\n[storage]\nsegment_bytes = 65536\nretention_ms = 1234\nflush = \"every-append\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = ChildServer::start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--retention-ms",
            "5678",
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = Client::connect(&server.url).await.unwrap();
        let t = c.create_topic("cfg", 1, Default::default()).await.unwrap();
        let cfg = t.config.unwrap();
        assert_eq!(cfg.segment_bytes, Some(65536), "from the file");
        assert_eq!(cfg.retention_ms, Some(5678), "the flag wins");
        assert_eq!(
            cfg.max_message_bytes,
            Some(65536),
            "capped by the segment size"
        );
    });

    // A bad file stops the server with a message naming the key.
    std::fs::write(&config, "[storage]\nsegment_byte = 5\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "off",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("segment_byte"));
}

/// Every metric the Grafana dashboard in deploy/ charts is one the server
/// exports (a renamed metric would leave a panel silently empty), and
/// consumer lag is reported per group and topic.
#[tokio::test]
async fn the_grafana_dashboard_charts_only_exported_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(test_config(dir.path()), true).await;
    let c = server.client().await;
    c.create_topic("dash", 1, Default::default())
        .await
        .expect("create");
    c.produce(pb::ProduceRequest {
        topic: "dash".into(),
        partition: Some(0),
        records: (0..5).map(|i| record(None, format!("v{i}"))).collect(),
        ..Default::default()
    })
    .await
    .expect("produce");
    common::api::fetch_all(&c, "dash", 0).await;
    // A group committed at the log start: 5 records of lag.
    c.reset_offsets(
        "dash-group",
        "dash",
        Vec::new(),
        pb::reset_offsets_request::To::Earliest(()),
        false,
        true,
    )
    .await
    .expect("commit at the start");
    // A work queue with one record handed out.
    c.queues()
        .pull(pb::PullRequest {
            group: "dash-queue".into(),
            topic: "dash".into(),
            max_records: 1,
            ..Default::default()
        })
        .await
        .expect("pull");
    let (status, body) = http_get(server.metrics_addr.expect("metrics"), "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        body.contains("sluice_group_lag{group=\"dash-group\",topic=\"dash\"} 5"),
        "{body}"
    );
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/grafana/sluice-dashboard.json"),
    )
    .expect("dashboard");
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| !p.is_empty()));
    // Counted only in a cluster (replication).
    let cluster_only = [
        "sluice_isr_changes_total",
        "sluice_replica_fetch_bytes_total",
        "sluice_replica_fetch_errors_total",
    ];
    let mut named = std::collections::BTreeSet::new();
    for (i, _) in dashboard.match_indices("sluice_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
            .collect();
        named.insert(name.trim_end_matches("_bucket").to_string());
    }
    named.remove("sluice_"); // the uid/tag text, not a metric
    assert!(named.len() >= 10, "{named:?}");
    for name in named.iter().filter(|n| !cluster_only.contains(&n.as_str())) {
        assert!(
            body.lines().any(|l| l.starts_with(name.as_str())),
            "the dashboard charts {name}, which /metrics does not export"
        );
    }
    server.stop().await;
}
