//! kcat (librdkafka inside), run as a child process.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs kcat with `args` (and `input` on stdin): whether it exited 0, its
/// stdout and its stderr.
pub async fn run(args: Vec<String>, input: Option<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("kcat")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kcat is needed for the Kafka tests (apt-get install kcat)");
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(i) = input {
            stdin.write_all(i.as_bytes()).expect("write stdin");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("kcat");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}
