//! `sluice bench replication`: a loopback cluster of `sluice serve`
//! processes (this binary) measuring partition replication:
//!
//! * produce throughput of 1 KiB records with replication factor 3 and
//!   acks=ALL against replication factor 1 and acks=LEADER, in one run;
//! * partition failover: SIGKILL a partition's leader, then time until an
//!   acks=ALL produce through a survivor is acknowledged; the killed node
//!   restarts and rejoins the ISR before the next kill;
//! * group and queue coordinator failover, measured the same way (until a
//!   commit, or a pull, through a survivor succeeds);
//! * replication traffic with many partitions: replica fetch requests per
//!   second between the brokers, idle and under load, with a few
//!   partitions and with `--partitions` partitions on every broker.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;

use super::bench_cluster::{closed, connect, ms, quantiles, settle, start_nodes, BenchNode};
use crate::client::{pb, Client, ClientError, ProducerConfig};

/// Settings of `bench replication`.
#[derive(Debug, Clone, Args)]
pub struct ReplicationBenchArgs {
    /// Brokers (all voters).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Records per throughput run.
    #[arg(long, default_value_t = 200_000)]
    pub records: usize,
    /// Value bytes per record.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// Partition-leader kills.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Coordinator kills (each of groups and queues).
    #[arg(long, default_value_t = 10)]
    pub coordinator_kills: usize,
    /// Partitions on every broker for the traffic measurement.
    #[arg(long, default_value_t = 1000)]
    pub partitions: i32,
    /// Directory for the nodes' data (a temporary one if unset).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Run the brokers with `[replication] ack_requires_fsync = true`
    /// (acks=ALL waits for every in-sync replica's sync).
    #[arg(long)]
    pub ack_requires_fsync: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

struct Bench {
    nodes: Vec<BenchNode>,
    voters: String,
    json: bool,
}

impl Bench {
    fn say(&self, line: String) {
        if !self.json {
            println!("{line}");
        }
    }

    fn index(&self, id: u64) -> Result<usize, ClientError> {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| closed(format!("no node {id}")))
    }

    async fn client_not(&self, avoid: u64) -> Result<(u64, Client), ClientError> {
        let n = self
            .nodes
            .iter()
            .find(|n| n.id != avoid && n.child.is_some())
            .ok_or_else(|| closed("no other node"))?;
        Ok((n.id, connect(&n.url()).await?))
    }

    /// The leader of `topic`'s `partition` once every replica is in its
    /// ISR (as a node other than `avoid` sees it).
    async fn replicated_leader(&self, topic: &str, partition: usize) -> Result<u64, ClientError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, c) = self.client_not(0).await?;
            if let Ok(m) = c.metadata(&[topic]).await {
                if let Some(p) = m.topics.first().and_then(|t| t.partitions.get(partition)) {
                    if p.leader >= 0 && p.isr.len() == p.replicas.len() {
                        return Ok(p.leader as u64);
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(closed(format!("{topic}-{partition} never fully in sync")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn restart(&mut self, id: u64) -> Result<(), ClientError> {
        let i = self.index(id)?;
        self.nodes[i].start(&self.voters, 5000)?;
        let live = self.nodes.len();
        settle(&self.nodes, live).await?;
        Ok(())
    }

    /// Replica fetches per second over `secs`, all brokers together.
    async fn fetch_rate(&self, secs: u64) -> f64 {
        let before = self.fetches().await;
        tokio::time::sleep(Duration::from_secs(secs)).await;
        (self.fetches().await - before) / secs as f64
    }

    /// Replica fetches every node has sent so far.
    async fn fetches(&self) -> f64 {
        let mut total = 0.0;
        for n in &self.nodes {
            let Some(port) = n.metrics_port else { continue };
            total += metric(port, "sluice_replica_fetches_total").await;
        }
        total
    }
}

/// The sum of a counter on a node's `/metrics`.
async fn metric(port: u16, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return 0.0;
    };
    let req = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0.0;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Produces `n` records of `bytes` to `topic` with the batching producer;
/// returns records per second.
async fn throughput(
    c: &Client,
    topic: &str,
    acks: pb::Acks,
    n: usize,
    bytes: usize,
) -> Result<f64, ClientError> {
    let producer = c.producer(
        topic,
        ProducerConfig {
            acks,
            ..Default::default()
        },
    );
    let value = Bytes::from(vec![b'x'; bytes]);
    let t = Instant::now();
    for i in 0..n {
        producer
            .send(pb::ProduceRecord {
                key: Some(Bytes::from(i.to_string())),
                value: Some(value.clone()),
                ..Default::default()
            })
            .await?;
    }
    let stats = producer.close().await?;
    if stats.failed > 0 {
        return Err(closed(format!(
            "{} records failed: {:?}",
            stats.failed, stats.first_error
        )));
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Retries `f` until it succeeds; returns how long that took.
async fn until_ok<F, Fut, T>(started: Instant, mut f: F) -> Result<Duration, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    loop {
        match f().await {
            Ok(_) => return Ok(started.elapsed()),
            Err(e) if started.elapsed() > Duration::from_secs(60) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

fn one_record(topic: &str) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: topic.into(),
        partition: Some(0),
        records: vec![pb::ProduceRecord {
            value: Some(Bytes::from_static(b"probe")),
            ..Default::default()
        }],
        acks: pb::Acks::All as i32,
        ..Default::default()
    }
}

/// Runs the benchmark.
pub async fn replication_bench(a: ReplicationBenchArgs) -> Result<(), ClientError> {
    let temp;
    let root: &std::path::Path = match &a.dir {
        Some(d) => d,
        None => {
            temp = std::env::temp_dir()
                .join(format!("sluice-bench-replication-{}", std::process::id()));
            &temp
        }
    };
    let _ = std::fs::remove_dir_all(root);
    let extra = if a.ack_requires_fsync {
        "[replication]\nack_requires_fsync = true\n"
    } else {
        ""
    };
    let (nodes, voters) = start_nodes(root, a.nodes, true, 5000, extra)?;
    let live = nodes.len();
    settle(&nodes, live).await?;
    let mut b = Bench {
        nodes,
        voters,
        json: a.json,
    };
    let c = connect(&b.nodes[0].url()).await?;

    // Throughput.
    let parts = 6;
    c.create_replicated_topic("rf1", parts, Some(1), Default::default())
        .await?;
    c.create_replicated_topic("rf3", parts, Some(3), Default::default())
        .await?;
    for p in 0..parts as usize {
        b.replicated_leader("rf3", p).await?;
    }
    let rf1 = throughput(&c, "rf1", pb::Acks::Leader, a.records, a.record_bytes).await?;
    let rf3 = throughput(&c, "rf3", pb::Acks::All, a.records, a.record_bytes).await?;
    // Where the difference goes: the leader's sync (RF=1, acks=ALL) and
    // replication without waiting for it (RF=3, acks=LEADER).
    let rf1_all = throughput(&c, "rf1", pb::Acks::All, a.records, a.record_bytes).await?;
    let rf3_leader = throughput(&c, "rf3", pb::Acks::Leader, a.records, a.record_bytes).await?;
    let mib = |r: f64| r * a.record_bytes as f64 / (1024.0 * 1024.0);
    b.say(format!(
        "produce {} B: RF=1 acks=LEADER {:.0} rec/s ({:.1} MiB/s); RF=3 acks=ALL {:.0} rec/s ({:.1} MiB/s), {:.0}%; RF=1 acks=ALL {:.0} rec/s; RF=3 acks=LEADER {:.0} rec/s",
        a.record_bytes,
        rf1,
        mib(rf1),
        rf3,
        mib(rf3),
        100.0 * rf3 / rf1,
        rf1_all,
        rf3_leader,
    ));

    // Partition failover.
    c.create_replicated_topic("failover", 1, Some(3), Default::default())
        .await?;
    let mut failover = Histogram::<u64>::new(3).map_err(closed)?;
    for k in 0..a.kills {
        let leader = b.replicated_leader("failover", 0).await?;
        let (_, survivor) = b.client_not(leader).await?;
        let i = b.index(leader)?;
        let t = Instant::now();
        b.nodes[i].kill().await;
        let took = until_ok(t, || async {
            let r = survivor.produce(one_record("failover")).await?;
            match r.record_errors.first() {
                None => Ok(()),
                Some(e) => Err(closed(&e.message)),
            }
        })
        .await?;
        let _ = failover.record(took.as_micros() as u64);
        b.say(format!(
            "kill {}: leader {leader} → first acks=ALL produce acknowledged {:.0} ms",
            k + 1,
            ms(took)
        ));
        b.restart(leader).await?;
    }

    // Coordinator failover: groups, then queues.
    let mut groups = Histogram::<u64>::new(3).map_err(closed)?;
    let mut queues = Histogram::<u64>::new(3).map_err(closed)?;
    for k in 0..a.coordinator_kills {
        let group = format!("bench-group-{k}");
        let shard = (crate::broker::murmur2(group.as_bytes()) & 0x7fff_ffff) % 4;
        c.reset_offsets(
            &group,
            "rf3",
            vec![],
            pb::reset_offsets_request::To::Offset(0),
            false,
            true,
        )
        .await?;
        let leader = b
            .replicated_leader("__consumer_offsets", shard as usize)
            .await?;
        let (_, survivor) = b.client_not(leader).await?;
        let i = b.index(leader)?;
        let t = Instant::now();
        b.nodes[i].kill().await;
        let took = until_ok(t, || {
            survivor.reset_offsets(
                &group,
                "rf3",
                vec![],
                pb::reset_offsets_request::To::Offset(1),
                false,
                true,
            )
        })
        .await?;
        let _ = groups.record(took.as_micros() as u64);
        b.say(format!(
            "group coordinator kill {}: broker {leader} → first commit {:.0} ms",
            k + 1,
            ms(took)
        ));
        b.restart(leader).await?;

        let queue = format!("bench-queue-{k}");
        let shard = (crate::broker::murmur2(queue.as_bytes()) & 0x7fff_ffff) % 4;
        let pull = |c: Client| {
            let queue = queue.clone();
            async move {
                c.queues()
                    .pull(pb::PullRequest {
                        group: queue,
                        topic: "rf3".into(),
                        max_records: 1,
                        prefetch: 1,
                        ..Default::default()
                    })
                    .await
                    .map_err(ClientError::from)
            }
        };
        pull(c.clone()).await?;
        let leader = b
            .replicated_leader("__share_group_state", shard as usize)
            .await?;
        let (_, survivor) = b.client_not(leader).await?;
        let i = b.index(leader)?;
        let t = Instant::now();
        b.nodes[i].kill().await;
        let took = until_ok(t, || pull(survivor.clone())).await?;
        let _ = queues.record(took.as_micros() as u64);
        b.say(format!(
            "queue coordinator kill {}: broker {leader} → first pull {:.0} ms",
            k + 1,
            ms(took)
        ));
        b.restart(leader).await?;
    }

    // Replication traffic, few partitions and many.
    let c = connect(&b.nodes[0].url()).await?;
    let idle_few = b.fetch_rate(5).await;
    c.create_replicated_topic("many", a.partitions, Some(3), Default::default())
        .await?;
    for p in 0..a.partitions as usize {
        b.replicated_leader("many", p).await?;
    }
    let idle_many = b.fetch_rate(5).await;
    let load = {
        let c = c.clone();
        let n = a.records / 4;
        let bytes = a.record_bytes;
        tokio::spawn(async move { throughput(&c, "many", pb::Acks::All, n, bytes).await })
    };
    let busy_many = b.fetch_rate(5).await;
    let many_rate = load.await.map_err(closed)??;
    b.say(format!(
        "replica fetches/s (all brokers): {:.1} idle with {} partitions, {:.1} idle and {:.1} under acks=ALL load ({:.0} rec/s) with {} partitions per broker",
        idle_few,
        2 * parts + 1,
        idle_many,
        busy_many,
        many_rate,
        a.partitions
    ));

    for n in &mut b.nodes {
        n.kill().await;
    }
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(root);
    }
    let result = json!({
        "nodes": live,
        "record_bytes": a.record_bytes,
        "produce": {
            "rf1_acks_leader_records_per_s": rf1,
            "rf3_acks_all_records_per_s": rf3,
            "rf1_acks_all_records_per_s": rf1_all,
            "rf3_acks_leader_records_per_s": rf3_leader,
            "ratio": rf3 / rf1,
        },
        "partition_failover": quantiles(&failover),
        "group_coordinator_failover": quantiles(&groups),
        "queue_coordinator_failover": quantiles(&queues),
        "replica_fetches_per_s": {
            "idle_few_partitions": idle_few,
            "idle_many_partitions": idle_many,
            "loaded_many_partitions": busy_many,
            "partitions_per_broker": a.partitions,
        },
    });
    if a.json {
        println!("{result}");
    } else {
        for (name, h) in [
            ("partition failover", &failover),
            ("group coordinator failover", &groups),
            ("queue coordinator failover", &queues),
        ] {
            println!(
                "{name}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {}",
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0,
                h.len()
            );
        }
    }
    Ok(())
}
