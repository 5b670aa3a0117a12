//! A real server on an ephemeral port: in-process ([`TestServer`]) or as a
//! child process of the built binary ([`ChildServer`]).

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use sluice::client::{Client, ConnectOptions};
use sluice::config::ServerConfig;
use tokio::net::TcpListener;

/// Settings for tests: data in `dir`, small preallocation, no metrics
/// endpoint unless asked for.
pub fn test_config(dir: &Path) -> ServerConfig {
    let mut c = ServerConfig {
        data_dir: dir.to_path_buf(),
        metrics_listen: None,
        ..ServerConfig::default()
    };
    c.storage.preallocate_bytes = 64 * 1024;
    c
}

/// The server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub metrics_addr: Option<SocketAddr>,
    /// The Kafka listener's address, if started with one.
    pub kafka_addr: Option<SocketAddr>,
    pub dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), sluice::error::Error>>>,
}

impl TestServer {
    /// Starts a server with `config` on 127.0.0.1:0 (and metrics on another
    /// ephemeral port if `metrics`).
    pub async fn start_with(config: ServerConfig, metrics: bool) -> Self {
        Self::start_full(config, metrics, false).await
    }

    /// Starts a server on `dir` with a Kafka listener on another ephemeral
    /// port.
    pub async fn start_kafka(dir: &Path) -> Self {
        Self::start_full(test_config(dir), false, true).await
    }

    /// Starts a server with `config`, optionally with metrics and Kafka
    /// listeners on ephemeral ports.
    pub async fn start_full(config: ServerConfig, metrics: bool, kafka: bool) -> Self {
        Self::start_secure(config, metrics, kafka, &ConnectOptions::default()).await
    }

    /// Like [`TestServer::start_full`], dialing with `options` (TLS) to
    /// see it up; with authorization on, a refusal counts as up.
    pub async fn start_secure(
        config: ServerConfig,
        metrics: bool,
        kafka: bool,
        options: &ConnectOptions,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (metrics_listener, metrics_addr) = if metrics {
            let l = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind metrics");
            let a = l.local_addr().expect("addr");
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        let (kafka_listener, kafka_addr) = if kafka {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind kafka");
            let a = l.local_addr().expect("addr");
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let dir = config.data_dir.clone();
        let listeners = sluice::server::Listeners {
            client: listener,
            metrics: metrics_listener,
            internal: None,
            kafka: kafka_listener,
        };
        let task = tokio::spawn(sluice::server::run_node(config, listeners, async {
            let _ = stopped.await;
        }));
        let server = Self {
            addr,
            url: format!("http://{addr}"),
            metrics_addr,
            kafka_addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        };
        // Ready once a call is answered (the broker opens before serving).
        let mut last = String::new();
        for _ in 0..200 {
            match Client::connect_with(&server.url, options).await {
                Err(e) => last = e.to_string(),
                Ok(c) => match c.list_topics().await {
                    Ok(_) => return server,
                    Err(sluice::client::ClientError::Status(s))
                        if matches!(
                            s.code(),
                            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                        ) =>
                    {
                        return server
                    }
                    Err(e) => last = e.to_string(),
                },
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server did not come up: {last}");
    }

    /// Starts a server on `dir` with the test settings.
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(test_config(dir), false).await
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url).await.expect("connect")
    }

    /// Stops the server and waits for its drain; panics if it failed.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("join").expect("server exits cleanly");
        }
    }
}

/// The built `sluice` binary running as a child process.
pub struct ChildServer {
    pub child: Child,
    pub url: String,
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ChildServer {
    /// Starts `sluice serve` on `dir`, on an ephemeral port, and waits for
    /// its "listening" line.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_at(dir, "127.0.0.1:0", extra)
    }

    /// Starts `sluice serve` on `dir` listening on `listen` (a restart
    /// passes the address the first run printed).
    pub fn start_at(dir: &Path, listen: &str, extra: &[&str]) -> Self {
        Self::start_full(dir, listen, "off", extra)
    }

    /// Starts `sluice serve` on `dir` listening on `listen`, with metrics
    /// on `metrics` (an address or "off").
    pub fn start_full(dir: &Path, listen: &str, metrics: &str, extra: &[&str]) -> Self {
        Self::try_start_full(dir, listen, metrics, extra)
            .unwrap_or_else(|log| panic!("server did not print its address; its log:\n{log}"))
    }

    /// As [`ChildServer::start_full`]; a server that exits (or stays
    /// silent for 30 s) before listening gives its log.
    pub fn try_start_full(
        dir: &Path,
        listen: &str,
        metrics: &str,
        extra: &[&str],
    ) -> Result<Self, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "serve",
                "--listen",
                listen,
                "--metrics-listen",
                metrics,
                "--data-dir",
            ])
            .arg(dir)
            // Tests run side by side: no Kafka listener on the default
            // port unless a test asks for one.
            .args(if extra.contains(&"--kafka-listen") {
                &[][..]
            } else {
                &["--kafka-listen", "off"][..]
            })
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("SLUICE_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("addr=").nth(1) {
                    if line.contains("sluice listening") {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(addr);
                    }
                }
                keep.lock().expect("lock").push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // The reader thread ends with the process: wait for it.
                std::thread::sleep(Duration::from_millis(100));
                return Err(lines.lock().expect("lock").join("\n"));
            }
        };
        Ok(Self {
            child,
            url: format!("http://{addr}"),
            stderr: lines,
        })
    }

    /// Sends a signal (by number) to the child.
    pub fn signal(&self, sig: i32) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the child to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `host:port` the server listens on.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    pub fn log(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs `path` from an HTTP/1 server; returns (status line, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}
