//! `sluice bench cluster`: starts a loopback cluster of `sluice serve`
//! processes (this binary) and measures the metadata quorum:
//!
//! * topic-create latency (one partition, through a follower, so each
//!   create is forwarded to the controller, committed, and applied here);
//! * controller failover: SIGKILL the controller, then time until a topic
//!   create through a survivor commits; the killed node restarts and the
//!   cluster settles before the next kill;
//! * a large image: topics with `--partitions` partitions in all, then a
//!   node restarted on an empty data directory and timed until its
//!   metadata matches (it is sent the controller's snapshot).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::client::{Client, ClientError};

/// Settings of `bench cluster`.
#[derive(Debug, Clone, Args)]
pub struct ClusterBenchArgs {
    /// Voters (all nodes are voters and brokers).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Controller kills.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Topic creates timed.
    #[arg(long, default_value_t = 200)]
    pub creates: usize,
    /// Partitions in the large image.
    #[arg(long, default_value_t = 10_000)]
    pub partitions: usize,
    /// Directory for the nodes' data (a temporary one if unset).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn closed(what: impl std::fmt::Display) -> ClientError {
    ClientError::Closed(what.to_string())
}

pub(super) fn free_port() -> Result<u16, ClientError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(closed)?;
    Ok(l.local_addr().map_err(closed)?.port())
}

pub(super) struct BenchNode {
    pub(super) id: u64,
    pub(super) dir: PathBuf,
    pub(super) client_port: u16,
    pub(super) internal_port: u16,
    /// `/metrics` port, if served.
    pub(super) metrics_port: Option<u16>,
    /// More TOML for the node's configuration file.
    pub(super) extra_config: String,
    pub(super) child: Option<Child>,
}

impl BenchNode {
    pub(super) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub(super) fn start(&mut self, voters: &str, snapshot_every: u64) -> Result<(), ClientError> {
        let exe = std::env::current_exe().map_err(closed)?;
        std::fs::create_dir_all(&self.dir).map_err(closed)?;
        let config = self.dir.with_extension("toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\nsnapshot_every = {snapshot_every}\n{}",
                self.extra_config
            ),
        )
        .map_err(closed)?;
        // Each node's log, kept beside its data (appended across restarts).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .map_err(closed)?;
        let metrics = self
            .metrics_port
            .map_or_else(|| "off".to_string(), |p| format!("127.0.0.1:{p}"));
        let child = Command::new(exe)
            .args([
                "serve",
                "--kafka-listen",
                "off",
                "--metrics-listen",
                &metrics,
                "--listen",
            ])
            .arg(format!("127.0.0.1:{}", self.client_port))
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--config")
            .arg(&config)
            .args(["--node-id", &self.id.to_string()])
            .arg("--internal-listen")
            .arg(format!("127.0.0.1:{}", self.internal_port))
            .args(["--controller-voters", voters])
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(closed)?;
        self.child = Some(child);
        Ok(())
    }

    pub(super) async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

pub(super) async fn connect(url: &str) -> Result<Client, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Client::connect(url).await {
            Ok(c) if c.describe_cluster().await.is_ok() => return Ok(c),
            _ if Instant::now() > deadline => {
                return Err(closed(format!("{url} did not start within 60 s")))
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Waits until every running node names one controller, all `live`
/// brokers are live and every node has applied the same metadata (a
/// restarted node has caught up); returns the controller.
pub(super) async fn settle(nodes: &[BenchNode], live: usize) -> Result<u64, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut controllers = Vec::new();
        let mut applied = Vec::new();
        let mut ok = true;
        for n in nodes.iter().filter(|n| n.child.is_some()) {
            match connect(&n.url()).await?.describe_cluster().await {
                Ok(s) => {
                    ok &= s.nodes.iter().filter(|n| n.live).count() == live;
                    controllers.push(s.controller);
                    applied.push(s.applied_index);
                }
                Err(_) => ok = false,
            }
        }
        if ok
            && controllers[0] >= 0
            && controllers.iter().all(|c| *c == controllers[0])
            && applied.iter().all(|a| *a == applied[0])
        {
            return Ok(controllers[0] as u64);
        }
        if Instant::now() > deadline {
            return Err(closed("the cluster did not settle within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(super) fn quantiles(h: &Histogram<u64>) -> serde_json::Value {
    json!({
        "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
        "max_ms": h.max() as f64 / 1000.0,
        "samples": h.len(),
    })
}

/// Starts `n` (at least 3) voter-and-broker processes with data under
/// `root`, each with a `/metrics` port if asked; returns them and the
/// voter list.
pub(super) fn start_nodes(
    root: &Path,
    n: u64,
    metrics: bool,
    snapshot_every: u64,
    extra_config: &str,
) -> Result<(Vec<BenchNode>, String), ClientError> {
    let mut nodes = Vec::new();
    for id in 1..=n.max(3) {
        nodes.push(BenchNode {
            id,
            dir: root.join(format!("node-{id}")),
            client_port: free_port()?,
            internal_port: free_port()?,
            metrics_port: if metrics { Some(free_port()?) } else { None },
            extra_config: extra_config.to_string(),
            child: None,
        });
    }
    let voters = nodes
        .iter()
        .map(|n| format!("{}@127.0.0.1:{}", n.id, n.internal_port))
        .collect::<Vec<_>>()
        .join(",");
    for n in &mut nodes {
        n.start(&voters, snapshot_every)?;
    }
    Ok((nodes, voters))
}

/// Runs the benchmark.
pub async fn cluster_bench(a: ClusterBenchArgs) -> Result<(), ClientError> {
    let temp;
    let root: &Path = match &a.dir {
        Some(d) => d,
        None => {
            temp =
                std::env::temp_dir().join(format!("sluice-bench-cluster-{}", std::process::id()));
            &temp
        }
    };
    let _ = std::fs::remove_dir_all(root);
    // Snapshots often enough that the large image is sent as one.
    let snapshot_every = 100;
    let (mut nodes, voters) = start_nodes(root, a.nodes, false, snapshot_every, "")?;
    let live = nodes.len();
    let mut controller = settle(&nodes, live).await?;
    let mut seq = 0u64;
    let mut name = || {
        seq += 1;
        format!("bench-{seq}")
    };

    // Topic-create latency through a follower.
    let follower = nodes.iter().position(|n| n.id != controller).unwrap_or(0);
    let c = connect(&nodes[follower].url()).await?;
    let mut creates = Histogram::<u64>::new(3).map_err(closed)?;
    for _ in 0..a.creates {
        let t = Instant::now();
        c.create_replicated_topic(&name(), 1, Some(1), Default::default())
            .await?;
        let _ = creates.record(t.elapsed().as_micros() as u64);
    }
    if !a.json {
        println!(
            "topic create: p50 {:.2} ms, p99 {:.2} ms over {}",
            creates.value_at_quantile(0.5) as f64 / 1000.0,
            creates.value_at_quantile(0.99) as f64 / 1000.0,
            a.creates
        );
    }

    // Controller failover.
    let mut failover = Histogram::<u64>::new(3).map_err(closed)?;
    for k in 0..a.kills {
        let i = nodes
            .iter()
            .position(|n| n.id == controller)
            .ok_or_else(|| closed("controller not among the nodes"))?;
        let survivor = (i + 1) % nodes.len();
        let c = connect(&nodes[survivor].url()).await?;
        let topic = name();
        let t = Instant::now();
        nodes[i].kill().await;
        loop {
            match c
                .create_replicated_topic(&topic, 1, Some(1), Default::default())
                .await
            {
                Ok(_) => break,
                Err(e) if t.elapsed() > Duration::from_secs(60) => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        let took = t.elapsed();
        let _ = failover.record(took.as_micros() as u64);
        if !a.json {
            println!(
                "kill {}: controller {} → first committed create {:.0} ms",
                k + 1,
                controller,
                ms(took)
            );
        }
        nodes[i].start(&voters, snapshot_every)?;
        controller = settle(&nodes, live).await?;
    }

    // A large image, then a node that starts empty and catches up.
    let per_topic = 1000.min(a.partitions.max(1));
    let topics = a.partitions.div_ceil(per_topic);
    let c = connect(&nodes[0].url()).await?;
    let t = Instant::now();
    for _ in 0..topics {
        c.create_replicated_topic(&name(), per_topic as i32, None, Default::default())
            .await?;
    }
    let build = t.elapsed();
    let target = c.metadata(&[]).await?;
    let total: usize = target.topics.iter().map(|t| t.partitions.len()).sum();
    let i = nodes.iter().position(|n| n.id != controller).unwrap_or(0);
    nodes[i].kill().await;
    let _ = std::fs::remove_dir_all(&nodes[i].dir);
    let t = Instant::now();
    nodes[i].start(&voters, snapshot_every)?;
    let fresh = connect(&nodes[i].url()).await?;
    loop {
        let m = fresh.metadata(&[]).await?;
        if m.topics == target.topics {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err(closed("the restarted node did not catch up within 120 s"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let catch_up = t.elapsed();
    // The largest snapshot any node holds (the newest image's size).
    let snapshot_bytes = nodes
        .iter()
        .filter_map(|n| {
            std::fs::metadata(n.dir.join("__cluster_metadata").join("snapshot.json")).ok()
        })
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    for n in &mut nodes {
        n.kill().await;
    }
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(root);
    }
    let result = json!({
        "nodes": live,
        "topic_create": quantiles(&creates),
        "failover": quantiles(&failover),
        "large_image": {
            "partitions": total,
            "create_ms": ms(build),
            "empty_node_catch_up_ms": ms(catch_up),
            "snapshot_bytes": snapshot_bytes,
        },
    });
    if a.json {
        println!("{result}");
    } else {
        println!(
            "failover (kill → first committed create): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} kills",
            failover.value_at_quantile(0.5) as f64 / 1000.0,
            failover.value_at_quantile(0.99) as f64 / 1000.0,
            failover.max() as f64 / 1000.0,
            a.kills
        );
        println!(
            "large image: {total} partitions created in {:.0} ms; an empty node caught up in {:.0} ms (snapshot {} KiB)",
            ms(build),
            ms(catch_up),
            snapshot_bytes / 1024
        );
    }
    Ok(())
}
