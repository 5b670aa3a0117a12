//! A cluster of real `sluice serve` processes on loopback, each with its
//! own data directory and ports, and a fault-injecting TCP proxy between
//! every pair of nodes (each node's `--controller-voters` names the proxies
//! in front of its peers), so a test can cut one node off and heal it.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use sluice::client::{pb, Client};
use tokio::net::{TcpListener, TcpStream};

use super::server::ChildServer;

/// A TCP proxy that can drop every connection and refuse new ones.
pub struct Proxy {
    pub addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    /// Bumped on every block: open connections see it and close.
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    /// Listens on an ephemeral port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = l.local_addr().expect("addr");
        let blocked = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let (b, g) = (blocked.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = l.accept().await else {
                    return;
                };
                if b.load(Ordering::Acquire) {
                    drop(inbound);
                    continue;
                }
                let mut cut = g.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let a = tokio::io::copy(&mut ri, &mut wo);
                    let b = tokio::io::copy(&mut ro, &mut wi);
                    tokio::select! {
                        _ = a => {}
                        _ = b => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            blocked,
            generation,
        }
    }

    /// Cuts (or restores) the link.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Release);
        if blocked {
            self.generation.send_modify(|g| *g += 1);
        }
    }
}

/// Reserves a free loopback port (bound, then released for the child).
pub fn free_port() -> SocketAddr {
    reserve().local_addr().expect("addr")
}

/// A bound loopback listener on a free port, held until a child needs it.
pub fn reserve() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind")
}

/// One node of a [`TestCluster`].
pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    pub internal: SocketAddr,
    /// Its `/metrics` address.
    pub metrics: SocketAddr,
    /// Its Kafka listener.
    pub kafka: SocketAddr,
    /// Its `--controller-voters` value.
    pub voters: String,
    /// Client address of the first start (kept across restarts).
    pub client: String,
    pub server: Option<ChildServer>,
    pub extra: Vec<String>,
    /// Its ports, bound until its first start.
    reserved: Vec<std::net::TcpListener>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--node-id".to_string(),
            self.id.to_string(),
            "--internal-listen".into(),
            self.internal.to_string(),
            "--controller-voters".into(),
            self.voters.clone(),
            "--kafka-listen".into(),
            self.kafka.to_string(),
        ];
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Starts (or restarts) the process. Ports are reserved by binding
    /// and released for the child, so another process may take one in
    /// between: a start that fails on a taken port tries again with a new
    /// metrics port (the internal port is in every voter list, and a
    /// restart keeps its client address).
    pub fn start(&mut self) {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.reserved.clear();
        let mut last = String::new();
        for _ in 0..5 {
            match ChildServer::try_start_full(
                &self.dir,
                &self.client,
                &self.metrics.to_string(),
                &args,
            ) {
                Ok(s) => {
                    self.client = s.addr().to_string();
                    self.server = Some(s);
                    return;
                }
                Err(log) => {
                    let taken = log.contains("in use");
                    last = log;
                    if !taken {
                        break;
                    }
                    self.metrics = free_port();
                }
            }
        }
        panic!("node {} did not start; its log:\n{last}", self.id);
    }

    /// SIGTERMs the process (a clean, controlled shutdown) and waits.
    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.signal(15);
            s.wait(Duration::from_secs(30));
        }
    }

    /// SIGKILLs the process.
    pub fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.signal(9);
            s.wait(Duration::from_secs(10));
        }
    }

    pub fn running(&self) -> bool {
        self.server.is_some()
    }

    pub fn log(&self) -> String {
        self.server.as_ref().map(|s| s.log()).unwrap_or_default()
    }
}

/// Nodes `1..=n`, all voters, each with a proxy in front of every peer.
pub struct TestCluster {
    pub nodes: Vec<Node>,
    /// How the harness's own clients connect (a token, with authorization
    /// on).
    pub options: sluice::client::ConnectOptions,
    /// `(from, to)` → the proxy `from` dials to reach `to`.
    pub proxies: BTreeMap<(u64, u64), Proxy>,
    _dirs: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `n` voters (and `brokers_only` more nodes that are not
    /// voters) and waits until every node reports the same controller and
    /// all brokers are live.
    pub async fn start(n: u64, brokers_only: u64, extra: &[&str]) -> Self {
        Self::start_with(n, brokers_only, extra, Default::default(), |_| {}).await
    }

    /// Like [`TestCluster::start`]; `prepare` runs on each node's data
    /// directory before its first start (to leave a bootstrap token, say),
    /// and the harness's clients connect with `options`.
    pub async fn start_with(
        n: u64,
        brokers_only: u64,
        extra: &[&str],
        options: sluice::client::ConnectOptions,
        prepare: impl Fn(&std::path::Path),
    ) -> Self {
        let dirs = tempfile::tempdir().expect("tempdir");
        let total = n + brokers_only;
        // Every node's ports (internal, client, metrics, kafka) stay bound until
        // just before that node starts, so neither a proxy nor another
        // node lands on them.
        let mut held: BTreeMap<u64, Vec<std::net::TcpListener>> = (1..=total)
            .map(|i| (i, (0..4).map(|_| reserve()).collect()))
            .collect();
        let port = |held: &BTreeMap<u64, Vec<std::net::TcpListener>>, i: u64, k: usize| {
            held[&i][k].local_addr().expect("addr")
        };
        let internal: BTreeMap<u64, SocketAddr> =
            (1..=total).map(|i| (i, port(&held, i, 0))).collect();
        let mut proxies = BTreeMap::new();
        for from in 1..=total {
            for to in 1..=n {
                if from != to {
                    proxies.insert((from, to), Proxy::start(internal[&to]).await);
                }
            }
        }
        let mut nodes = Vec::new();
        for id in 1..=total {
            let voters = (1..=n)
                .map(|to| {
                    let addr = if to == id {
                        internal[&to]
                    } else {
                        proxies[&(id, to)].addr
                    };
                    format!("{to}@{addr}")
                })
                .collect::<Vec<_>>()
                .join(",");
            let mut node = Node {
                id,
                dir: dirs.path().join(format!("node-{id}")),
                internal: internal[&id],
                metrics: port(&held, id, 2),
                kafka: port(&held, id, 3),
                voters,
                client: port(&held, id, 1).to_string(),
                server: None,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                reserved: held.remove(&id).unwrap_or_default(),
            };
            if id > n {
                // A broker-only node is dialed at its own address.
                node.extra
                    .extend(["--internal-advertise".into(), internal[&id].to_string()]);
            }
            nodes.push(node);
        }
        for node in &mut nodes {
            std::fs::create_dir_all(&node.dir).expect("node dir");
            prepare(&node.dir);
            node.start();
        }
        let c = Self {
            nodes,
            options,
            proxies,
            _dirs: dirs,
        };
        c.wait_stable(total as usize, Duration::from_secs(60)).await;
        c
    }

    pub fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    pub async fn client(&self, id: u64) -> Client {
        Client::connect_with(&self.nodes[(id - 1) as usize].url(), &self.options)
            .await
            .expect("connect")
    }

    /// Every running node's view of the cluster.
    pub async fn statuses(&self) -> Vec<(u64, Option<pb::DescribeClusterResponse>)> {
        let mut out = Vec::new();
        for n in self.nodes.iter().filter(|n| n.running()) {
            let s = match Client::connect_with(&n.url(), &self.options).await {
                Ok(c) => c.describe_cluster().await.ok(),
                Err(_) => None,
            };
            out.push((n.id, s));
        }
        out
    }

    /// Waits until every running node names the same controller and sees
    /// `live` live brokers; returns the controller.
    pub async fn wait_stable(&self, live: usize, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let controllers: Vec<i32> = statuses
                .iter()
                .map(|(_, s)| s.as_ref().map_or(-2, |s| s.controller))
                .collect();
            let lives: Vec<usize> = statuses
                .iter()
                .map(|(_, s)| {
                    s.as_ref()
                        .map_or(0, |s| s.nodes.iter().filter(|n| n.live).count())
                })
                .collect();
            if controllers[0] >= 0
                && controllers.iter().all(|c| *c == controllers[0])
                && lives.iter().all(|l| *l == live)
            {
                return controllers[0] as u64;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- node {} ---\n{}", n.id, n.log()))
                    .collect();
                panic!(
                    "cluster not stable: controllers {controllers:?}, live {lives:?}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running node's metadata (topics with ids and
    /// placement) is the same; returns it.
    pub async fn converged_metadata(&self, timeout: Duration) -> pb::MetadataResponse {
        self.converged_metadata_of(&[], timeout).await
    }

    /// Like [`TestCluster::converged_metadata`], of the topics named (all
    /// user topics if none).
    pub async fn converged_metadata_of(
        &self,
        topics: &[&str],
        timeout: Duration,
    ) -> pb::MetadataResponse {
        let deadline = Instant::now() + timeout;
        loop {
            let mut views = Vec::new();
            for n in self.nodes.iter().filter(|n| n.running()) {
                let v = match Client::connect_with(&n.url(), &self.options).await {
                    Ok(c) => c.metadata(topics).await.ok(),
                    Err(_) => None,
                };
                views.push(v.map(|mut m| {
                    m.answered_by = 0;
                    m
                }));
            }
            if views.iter().all(|v| v.is_some() && *v == views[0]) {
                return views[0].clone().expect("some");
            }
            if Instant::now() > deadline {
                panic!("metadata did not converge: {views:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Requests node `id` forwarded to other brokers, by method.
    pub async fn forwarded(&self, id: u64, method: &str) -> u64 {
        let (_, body) =
            super::server::http_get(self.nodes[(id - 1) as usize].metrics, "/metrics").await;
        body.lines()
            .filter(|l| {
                l.starts_with("sluice_forwarded_requests_total")
                    && l.contains(&format!("method=\"{method}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Waits until every partition of `topic` has a leader and every
    /// replica in its ISR; returns the metadata.
    pub async fn wait_fully_replicated(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> pb::MetadataResponse {
        self.wait_replicated(topic, false, timeout).await
    }

    /// Like [`TestCluster::wait_fully_replicated`], and also every
    /// partition's high watermark at its log end (followers hold
    /// everything: only once writes have stopped).
    pub async fn wait_caught_up(&self, topic: &str, timeout: Duration) -> pb::MetadataResponse {
        self.wait_replicated(topic, true, timeout).await
    }

    async fn wait_replicated(
        &self,
        topic: &str,
        caught_up: bool,
        timeout: Duration,
    ) -> pb::MetadataResponse {
        let deadline = Instant::now() + timeout;
        loop {
            let meta = self.converged_metadata_of(&[topic], timeout).await;
            let mut done = false;
            if let Some(t) = meta.topics.iter().find(|t| t.name == topic) {
                done = t.partitions.iter().all(|p| {
                    let mut isr = p.isr.clone();
                    let mut replicas = p.replicas.clone();
                    isr.sort_unstable();
                    replicas.sort_unstable();
                    p.leader >= 0 && isr == replicas
                });
                if done && caught_up {
                    let first = self.nodes.iter().find(|n| n.running()).map(|n| n.id);
                    if let Some(id) = first {
                        match self.client(id).await.describe_topic(topic).await {
                            Ok(d) => {
                                done = d
                                    .partitions
                                    .iter()
                                    .all(|p| p.high_watermark == p.log_end_offset);
                            }
                            Err(_) => done = false,
                        }
                    }
                }
            }
            if done {
                return meta;
            }
            if Instant::now() > deadline {
                panic!("{topic} not fully replicated: {meta:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every node cleanly (SIGTERM) and checks that each partition
    /// of `topic` holds the same batches, byte for byte, on every replica
    /// that has it. Returns the record count per partition.
    pub fn stop_and_compare_replicas(&mut self, topic: &str, partitions: i32) -> Vec<i64> {
        for n in &mut self.nodes {
            if let Some(mut s) = n.server.take() {
                s.signal(15);
                s.wait(Duration::from_secs(30));
            }
        }
        let mut counts = Vec::new();
        for p in 0..partitions {
            let mut copies: Vec<(u64, Vec<u8>, i64)> = Vec::new();
            for n in &self.nodes {
                let dir = n.dir.join("topics").join(topic).join(p.to_string());
                if !dir.exists() {
                    continue;
                }
                let log = sluice::storage::Log::open(&dir, sluice::storage::LogConfig::default())
                    .expect("open replica log");
                let mut bytes = Vec::new();
                let mut offset = log.start_offset();
                while offset < log.end_offset() {
                    let r = log.read(offset, 1 << 20).expect("read replica");
                    let mut last = offset;
                    for b in sluice::storage::BatchIter::new(&r.data) {
                        let b = b.expect("batch");
                        if b.base_offset() >= offset {
                            bytes.extend_from_slice(b.as_bytes());
                        }
                        last = b.next_offset();
                    }
                    offset = last;
                }
                if log.end_offset() > 0 {
                    copies.push((n.id, bytes, log.end_offset()));
                }
            }
            assert!(
                copies.len() >= 2,
                "partition {p} has {} non-empty replicas",
                copies.len()
            );
            for c in &copies[1..] {
                assert_eq!(
                    (c.2, c.1.len()),
                    (copies[0].2, copies[0].1.len()),
                    "partition {p}: node {} and node {} differ in length",
                    c.0,
                    copies[0].0
                );
                assert!(
                    c.1 == copies[0].1,
                    "partition {p}: node {} and node {} differ in bytes",
                    c.0,
                    copies[0].0
                );
            }
            counts.push(copies[0].2);
        }
        counts
    }

    /// Cuts node `id` off from every other node (both ways).
    pub fn isolate(&self, id: u64, cut: bool) {
        for ((from, to), p) in &self.proxies {
            if *from == id || *to == id {
                p.set_blocked(cut);
            }
        }
    }
}
