//! The `sluice` command line, driving the built binary against a server
//! that also runs as the built binary.

mod common;

use assert_cmd::Command;
use bytes::Bytes;
use common::server::ChildServer;
use sluice::client::{pb, Client};

fn sluice(server: &ChildServer) -> Command {
    let mut c = Command::cargo_bin("sluice").unwrap();
    c.env("SLUICE_BROKER", &server.url);
    c
}

fn stdout(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn topic_commands_and_their_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &[]);
    let out = stdout(sluice(&server).args([
        "topic",
        "create",
        "orders",
        "--partitions",
        "3",
        "--retention-ms",
        "-1",
    ]));
    assert!(
        out.contains("created topic orders with 3 partitions"),
        "{out}"
    );
    stdout(sluice(&server).args(["topic", "create", "audit"]));

    let list: serde_json::Value =
        serde_json::from_str(&stdout(sluice(&server).args(["topic", "list", "--json"]))).unwrap();
    assert_eq!(
        list,
        serde_json::json!([{"name": "audit", "partitions": 1}, {"name": "orders", "partitions": 3}])
    );
    let text = stdout(sluice(&server).args(["topic", "list"]));
    assert_eq!(text, "audit\t1\norders\t3\n");

    let d: serde_json::Value = serde_json::from_str(&stdout(
        sluice(&server).args(["topic", "describe", "orders", "--json"]),
    ))
    .unwrap();
    assert_eq!(d["name"], "orders");
    assert_eq!(d["config"]["retention_ms"], -1);
    assert_eq!(d["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(d["partitions"][2]["high_watermark"], 0);

    let grown: serde_json::Value = serde_json::from_str(&stdout(sluice(&server).args([
        "topic",
        "add-partitions",
        "orders",
        "--total",
        "5",
        "--json",
    ])))
    .unwrap();
    assert_eq!(grown["partitions"].as_array().unwrap().len(), 5);

    stdout(sluice(&server).args(["topic", "delete", "audit"]));
    let missing = sluice(&server)
        .args(["topic", "describe", "audit"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("NOT_FOUND") && err.contains("audit"), "{err}");

    let bad = sluice(&server)
        .args(["topic", "create", "no/slash"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("INVALID_ARGUMENT"));
}

#[test]
fn produce_lines_then_consume_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &[]);
    stdout(sluice(&server).args(["topic", "create", "lines"]));
    let input: String = (0..5000)
        .map(|i| format!("key{}:line {i}\n", i % 7))
        .collect();
    let out = sluice(&server)
        .args(["produce", "lines", "--key-separator", ":", "--acks", "all"])
        .write_stdin(input.clone())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("produced 5000 records"));

    let values = stdout(sluice(&server).args([
        "consume",
        "lines",
        "--from-beginning",
        "--max-records",
        "5000",
    ]));
    let expected: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    assert_eq!(values, expected);

    let json = stdout(sluice(&server).args([
        "consume",
        "lines",
        "--offset",
        "10",
        "--max-records",
        "2",
        "--format",
        "json",
    ]));
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["topic"], "lines");
    assert_eq!(rows[0]["partition"], 0);
    assert_eq!(rows[0]["offset"], 10);
    assert_eq!(rows[0]["key"], "key3");
    assert_eq!(rows[0]["value"], "line 10");
    assert!(rows[0]["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(rows[1]["offset"], 11);

    // --timeout-ms: exits 0 once nothing new arrives.
    let tail = stdout(sluice(&server).args([
        "consume",
        "lines",
        "--offset",
        "4998",
        "--timeout-ms",
        "300",
    ]));
    assert_eq!(tail, "line 4998\nline 4999\n");
    let none = stdout(sluice(&server).args(["consume", "lines", "--timeout-ms", "200"]));
    assert_eq!(none, "");
    // --from-time far in the future: nothing; in the past: everything.
    let future = stdout(sluice(&server).args([
        "consume",
        "lines",
        "--from-time",
        "2999-01-01T00:00:00Z",
        "--timeout-ms",
        "200",
    ]));
    assert_eq!(future, "");
    let past = stdout(sluice(&server).args([
        "consume",
        "lines",
        "--from-time",
        "2001-01-01T00:00:00+02:00",
        "--max-records",
        "3",
    ]));
    assert_eq!(past, "line 0\nline 1\nline 2\n");
    let bad = sluice(&server)
        .args(["consume", "lines", "--from-time", "yesterday"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RFC 3339"));
}

#[test]
fn json_output_gives_non_utf8_bytes_as_base64() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &[]);
    let url = server.url.clone();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let c = Client::connect(&url).await.unwrap();
            c.create_topic("bin", 1, Default::default()).await.unwrap();
            c.produce(pb::ProduceRequest {
                topic: "bin".into(),
                records: vec![pb::ProduceRecord {
                    key: Some(Bytes::from_static(b"\xff\xfe")),
                    value: Some(Bytes::from_static(b"\x00\x80ok")),
                    headers: vec![pb::Header {
                        key: "h".into(),
                        value: Some(Bytes::from_static(b"\xc3")),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        });
    let out = stdout(sluice(&server).args([
        "consume",
        "bin",
        "--from-beginning",
        "--max-records",
        "1",
        "--format",
        "json",
    ]));
    let row: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(row["key_b64"], "//4=");
    assert_eq!(row["value_b64"], "AIBvaw==");
    assert_eq!(row["headers"][0]["value_b64"], "ww==");
    assert!(row.get("value").is_none());
}

#[test]
fn bench_prints_machine_readable_results() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &[]);
    for mode in ["produce", "consume"] {
        let out = stdout(sluice(&server).args([
            "bench",
            mode,
            "benched",
            "--records",
            "20000",
            "--record-size",
            "100",
            "--batch",
            "500",
            "--concurrency",
            "2",
            "--acks",
            "leader",
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["mode"], mode);
        assert_eq!(v["records"], 20000);
        for key in [
            "seconds",
            "records_per_s",
            "mb_per_s",
            "p50_ms",
            "p99_ms",
            "p999_ms",
        ] {
            assert!(v[key].as_f64().unwrap() > 0.0, "{key} in {v}");
        }
    }
    // The bench created the topic (with one partition per worker) and
    // produced exactly once: consume found enough records.
    let d: serde_json::Value = serde_json::from_str(&stdout(
        sluice(&server).args(["topic", "describe", "benched", "--json"]),
    ))
    .unwrap();
    let total: i64 = d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high_watermark"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 20000);
    let text = stdout(sluice(&server).args([
        "bench",
        "produce",
        "benched",
        "--records",
        "1000",
        "--batch",
        "1",
        "--concurrency",
        "1",
        "--acks",
        "all",
    ]));
    assert!(text.contains("records/s") && text.contains("p99"), "{text}");
}

/// The work-queue scenario end to end, small: real worker processes and
/// a real broker, SIGKILLed mid-run and replaced; every task accepted once
/// by the broker's count, none twice by the workers', none lost.
#[test]
fn bench_fan_out_accounts_for_every_task_through_kills() {
    let mut c = Command::cargo_bin("sluice").unwrap();
    let out = stdout(c.args([
        "bench",
        "fan-out",
        "--tasks",
        "5000",
        "--workers",
        "4",
        "--partitions",
        "2",
        "--prefetch",
        "50",
        "--kill-workers",
        "2",
        "--kill-broker",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["broker_accepted"], 5000, "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["confirmed_twice"], 0, "{v}");
    assert_eq!(v["worker_kills"].as_array().map(Vec::len), Some(2), "{v}");
    assert!(v["broker_kill"].is_object(), "{v}");
    // Tasks that fail once were released once each (one in ten), unless
    // a kill took their first delivery.
    assert!(v["released_once"].as_u64().unwrap() <= 500, "{v}");
}

#[test]
fn queue_admin_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &[]);
    stdout(sluice(&server).args(["topic", "create", "jobs", "--partitions", "2"]));
    let mut produce = sluice(&server);
    produce
        .args(["produce", "jobs"])
        .write_stdin("a\nb\nc\nd\n");
    stdout(&mut produce);
    // A worker that takes two records and exits (its stream closes, so
    // the queue has no worker afterwards).
    stdout(sluice(&server).args([
        "queue",
        "work",
        "jobs",
        "--group",
        "g",
        "--max-records",
        "2",
        "--",
        "true",
    ]));
    let list: serde_json::Value =
        serde_json::from_str(&stdout(sluice(&server).args(["queue", "list", "--json"]))).unwrap();
    assert_eq!(list[0]["group"], "g");
    assert_eq!(list[0]["available"], 2);
    assert_eq!(list[0]["members"], 0);
    let out = stdout(sluice(&server).args([
        "queue",
        "alter",
        "g",
        "--max-deliveries",
        "7",
        "--lock-timeout",
        "45s",
    ]));
    assert!(out.contains("max_deliveries=7"), "{out}");
    assert!(out.contains("lock_timeout_ms=45000"), "{out}");
    let out = stdout(sluice(&server).args([
        "queue",
        "reset",
        "g",
        "--topic",
        "jobs",
        "--to-latest",
        "--dry-run",
    ]));
    assert!(out.contains("dry run"), "{out}");
    stdout(sluice(&server).args(["queue", "reset", "g", "--topic", "jobs", "--to-latest"]));
    let list: serde_json::Value =
        serde_json::from_str(&stdout(sluice(&server).args(["queue", "list", "--json"]))).unwrap();
    assert_eq!(list[0]["available"], 0, "{list}");
    let out = stdout(sluice(&server).args(["queue", "delete", "g"]));
    assert!(out.contains("deleted queue g"), "{out}");
    let list: serde_json::Value =
        serde_json::from_str(&stdout(sluice(&server).args(["queue", "list", "--json"]))).unwrap();
    assert_eq!(list, serde_json::json!([]));
}

/// `sluice health` exits 0 against a ready server and non-zero with the
/// reason when nothing answers; `bench soak` runs an application (an
/// idempotent acks=ALL producer and a group member) through a broker list
/// whose first entry is dead, and checks every record arrived once.
#[test]
fn health_probe_and_a_soak_through_a_broker_list() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = common::cluster::free_port().to_string();
    let server = ChildServer::start_full(dir.path(), "127.0.0.1:0", &metrics, &[]);
    Command::cargo_bin("sluice")
        .unwrap()
        .args(["health", "--metrics", &metrics])
        .assert()
        .success();
    Command::cargo_bin("sluice")
        .unwrap()
        .args(["health", "--live", "--metrics", &metrics])
        .assert()
        .success();
    let dead = common::cluster::free_port();
    let out = Command::cargo_bin("sluice")
        .unwrap()
        .args(["health", "--metrics", &dead.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not healthy"),
        "{out:?}"
    );

    let list = format!("http://{dead},{}", server.url);
    let report = stdout(Command::cargo_bin("sluice").unwrap().args([
        "bench",
        "soak",
        "soaked",
        "--broker",
        &list,
        "--duration",
        "2",
        "--rate",
        "300",
        "--replication-factor",
        "1",
    ]));
    let r: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["sent"].as_u64().unwrap() >= 300, "{r}");
    assert_eq!(r["acknowledged"], r["sent"]);
    assert_eq!(r["consumed_distinct"], r["sent"]);
    assert_eq!(r["errors"], 0);
}
