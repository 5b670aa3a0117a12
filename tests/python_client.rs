//! A client in another language: the Python script in tests/python
//! generates stubs from proto/ with grpcio-tools and produces, fetches and
//! subscribes against a real server. The venv is made on first use (and by
//! .ci/run) in the target directory; SLUICE_PYTHON names another
//! interpreter that already has the requirements.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::server::TestServer;

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SLUICE_PYTHON") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join("pyvenv");
    let py = venv.join("bin").join("python");
    let ready = venv.join(".requirements-installed");
    if !ready.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 is needed for the cross-language test");
        assert!(status.success(), "python3 -m venv failed");
        let status = Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(root.join("tests/python/requirements.txt"))
            .status()
            .expect("pip");
        assert!(
            status.success(),
            "pip install of tests/python/requirements.txt failed"
        );
        std::fs::write(&ready, b"").expect("marker");
    }
    py
}

#[tokio::test]
async fn python_client_generated_from_the_protos() {
    let py = python();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(&py);
    cmd.arg(root.join("tests/python/client_test.py"))
        .args(["--broker", &server.addr.to_string(), "--proto-dir"])
        .arg(root.join("proto"));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
    server.stop().await;
}
