//! A client in another language: the Python script in tests/python
//! generates stubs from proto/ with grpcio-tools and produces, fetches and
//! subscribes against a real server. The venv is made on first use (and by
//! .ci/run) in the target directory; SLUICE_PYTHON names another
//! interpreter that already has the requirements.

mod common;

use std::{path::Path, process::Command};

use common::python::python;
use common::server::{ChildServer, TestServer};

/// Runs `tests/python/<script>` against `server` and returns its output;
/// it must succeed and end with "ok".
async fn run_script(py: &Path, script: &str, server: &TestServer) -> String {
    run_script_at(py, script, &server.addr.to_string()).await
}

/// Runs `tests/python/<script>` against the broker at `broker`.
async fn run_script_at(py: &Path, script: &str, broker: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(py);
    cmd.arg(root.join("tests/python").join(script))
        .args(["--broker", broker, "--proto-dir"])
        .arg(root.join("proto"));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
    stdout
}

#[tokio::test]
async fn python_client_generated_from_the_protos() {
    let py = python();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    run_script(&py, "client_test.py", &server).await;
    server.stop().await;
}

/// A Python service keeps its channel open between calls. SIGTERM must not
/// wait for it: the broker closes connections without calls at once, so
/// the drain ends long before its timeout (2 s here; an idle grpcio
/// channel used to hold it about 3 s, until grpcio closed it) and the
/// process exits 0.
#[test]
fn sigterm_does_not_wait_for_an_idle_python_channel() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let py = python();
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start(dir.path(), &["--drain-timeout-ms", "2000"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut idle = Command::new(&py)
        .arg(root.join("tests/python/idle_channel.py"))
        .arg(server.addr())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    let mut line = String::new();
    BufReader::new(idle.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "ready");
    // Idle for a while, as a service between calls.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let t = std::time::Instant::now();
    server.signal(15);
    let status = server.wait(std::time::Duration::from_secs(60));
    eprintln!("exit after {:?}", t.elapsed());
    assert!(status.success(), "{status:?}\n{}", server.log());
    // The log is read by a thread: let it catch up with the exit.
    for _ in 0..100 {
        if server.log().contains("sluice stopped") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = server.log();
    assert!(
        !log.contains("after the drain timeout"),
        "the idle channel held the drain until its timeout:\n{log}"
    );
    drop(idle.stdin.take());
    let _ = idle.wait();
}

/// A work-queue worker in Python: ACCEPT, RELEASE and REJECT over a Consume
/// stream, and a worker process killed mid-task whose record is delivered
/// again with delivery count 2.
#[tokio::test]
async fn python_queue_worker() {
    let py = python();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    run_script(&py, "queue_worker.py", &server).await;
    server.stop().await;
}

/// A thin Python client of a three-node cluster: plain stubs and one
/// address; its requests for partitions led elsewhere are forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_thin_client_of_a_cluster() {
    let py = python();
    let cluster = common::cluster::TestCluster::start(3, 0, &[]).await;
    run_script_at(&py, "thin_cluster_client.py", &cluster.nodes[1].client).await;
    assert!(cluster.forwarded(2, "Produce").await >= 1);
}
