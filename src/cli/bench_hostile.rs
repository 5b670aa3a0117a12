//! `sluice bench hostile`: well-behaved clients measure their latency
//! while hostile connections run beside them, and (optionally) while many
//! idle connections are held open; reports p50/p99/p999 and the server's
//! RSS and open files.
//!
//! Hostile connections cycle through what a careless or malicious client
//! does: produce requests over the record limit, random bytes on RPCs,
//! subscriptions that never read (slowloris), Consume streams that never
//! send their open request, and connections that never speak. Each repeats
//! its attack once a second: the point is many hostile connections, not
//! one client's bandwidth (which only quotas bound).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

use super::Conn;
use crate::client::raw::RawCodec;
use crate::client::{pb, record, ClientError};

/// `bench hostile`.
#[derive(Debug, Clone, Args)]
pub struct HostileArgs {
    /// Topic the well-behaved clients use (created if missing).
    #[arg(long, default_value = "bench-hostile")]
    pub topic: String,
    /// Hostile connections.
    #[arg(long, default_value_t = 100)]
    pub hostile: usize,
    /// Idle connections held open (connected, one call, then silent).
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// Well-behaved producers, each on its own connection, each sending one
    /// record at a time and measuring its latency.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Well-behaved fetchers, each on its own connection, each reading the
    /// topic behind the producers.
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Extra active connections that produce small batches steadily.
    #[arg(long, default_value_t = 0)]
    pub active: usize,
    /// How long to measure, seconds.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// The server's process id, to report its RSS and open files.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

async fn channel(url: &str) -> Result<Channel, ClientError> {
    Endpoint::from_shared(url.to_string())
        .map_err(|e| ClientError::Closed(e.to_string()))?
        .connect()
        .await
        .map_err(|e| ClientError::Closed(e.to_string()))
}

/// How often each hostile connection repeats its attack.
const PACE: Duration = Duration::from_secs(1);

/// A small xorshift for garbage bytes (no need for a crate).
fn garbage(seed: &mut u64, n: usize) -> Bytes {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        out.push(*seed as u8);
    }
    out.into()
}

/// One hostile connection, doing its kind of harm until `stop`.
async fn hostile(url: String, topic: String, kind: usize, stop: Arc<AtomicBool>) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ kind as u64;
    let mut held = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(ch) = channel(&url).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        match kind % 5 {
            // Over the record limit, once a second (encoded once, so the
            // attacker spends no CPU on it).
            0 => {
                use prost::Message;
                let req = Bytes::from(
                    pb::ProduceRequest {
                        topic: topic.clone(),
                        partition: Some(0),
                        records: vec![pb::ProduceRecord::default(); 100_001],
                        ..Default::default()
                    }
                    .encode_to_vec(),
                );
                let mut grpc = tonic::client::Grpc::new(ch);
                while !stop.load(Ordering::Relaxed) {
                    if grpc.ready().await.is_err() {
                        break;
                    }
                    let _ = grpc
                        .unary(
                            tonic::Request::new(req.clone()),
                            http::uri::PathAndQuery::from_static("/sluice.v1.Broker/Produce"),
                            RawCodec,
                        )
                        .await;
                    tokio::time::sleep(PACE).await;
                }
            }
            // Random bytes on random RPCs.
            1 => {
                const PATHS: [&str; 4] = [
                    "/sluice.v1.Broker/Produce",
                    "/sluice.v1.Broker/Fetch",
                    "/sluice.v1.Groups/Heartbeat",
                    "/sluice.v1.Queues/Pull",
                ];
                let mut grpc = tonic::client::Grpc::new(ch);
                while !stop.load(Ordering::Relaxed) {
                    if grpc.ready().await.is_err() {
                        break;
                    }
                    let path = PATHS[(seed % 4) as usize];
                    let body = garbage(&mut seed, 256);
                    let _ = grpc
                        .unary(
                            tonic::Request::new(body),
                            http::uri::PathAndQuery::from_static(path),
                            RawCodec,
                        )
                        .await;
                    tokio::time::sleep(PACE).await;
                }
            }
            // Slowloris: subscribe from the start and never read.
            2 => {
                let mut b = pb::broker_client::BrokerClient::new(ch);
                if let Ok(s) = b
                    .subscribe(pb::SubscribeRequest {
                        topic: topic.clone(),
                        partition: 0,
                        start: crate::client::position(pb::position::Position::Earliest(())),
                        ..Default::default()
                    })
                    .await
                {
                    held.push(s.into_inner());
                }
                wait(&stop).await;
            }
            // Consume streams that never open (the server times them out).
            3 => {
                let mut q = pb::queues_client::QueuesClient::new(ch);
                let (tx, rx) = tokio::sync::mpsc::channel::<pb::ConsumeRequest>(1);
                let _ = q
                    .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await;
                drop(tx);
            }
            // Connected, and silent.
            _ => {
                drop(ch);
                if let Some(addr) = url.strip_prefix("http://") {
                    if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                        wait(&stop).await;
                        drop(s);
                    }
                }
            }
        }
    }
    drop(held);
}

async fn wait(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn proc_stats(pid: Option<u32>) -> Option<(u64, usize)> {
    let pid = pid?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss * 1024, fds))
}

/// Runs the benchmark.
pub async fn hostile_bench(args: HostileArgs) -> Result<(), ClientError> {
    let client = args.conn.connect().await?;
    if client.describe_topic(&args.topic).await.is_err() {
        client
            .create_topic(&args.topic, 1, pb::TopicConfig::default())
            .await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for kind in 0..args.hostile {
        tasks.push(tokio::spawn(hostile(
            args.conn.broker.clone(),
            args.topic.clone(),
            kind,
            stop.clone(),
        )));
    }
    let mut idle = Vec::new();
    for _ in 0..args.idle {
        let c = args.conn.connect().await?;
        c.list_topics().await?;
        idle.push(c);
    }
    for _ in 0..args.active {
        let c = args.conn.connect().await?;
        let (topic, stop) = (args.topic.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = c
                    .produce(pb::ProduceRequest {
                        topic: topic.clone(),
                        partition: Some(0),
                        records: vec![record(None, vec![b'a'; 100]); 10],
                        ..Default::default()
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // Let the attack settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let produced = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut measured = Vec::new();
    for _ in 0..args.producers {
        let c = args.conn.connect().await?;
        let topic = args.topic.clone();
        let produced = produced.clone();
        measured.push(tokio::spawn(async move {
            let mut h = super::bench::latency_histogram()?;
            while Instant::now() < deadline {
                let t = Instant::now();
                c.produce(pb::ProduceRequest {
                    topic: topic.clone(),
                    partition: Some(0),
                    records: vec![record(None, vec![b'p'; 100])],
                    ..Default::default()
                })
                .await?;
                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                produced.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, ClientError>(("produce", h))
        }));
    }
    for _ in 0..args.consumers {
        let c = args.conn.connect().await?;
        let topic = args.topic.clone();
        measured.push(tokio::spawn(async move {
            let mut h = super::bench::latency_histogram()?;
            let mut offset = c
                .list_offsets(&topic, None)
                .await?
                .first()
                .map_or(0, |o| o.latest_offset);
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = c
                    .fetch(pb::FetchRequest {
                        topic: topic.clone(),
                        partition: 0,
                        offset,
                        max_records: 100,
                        max_wait_ms: 0,
                        ..Default::default()
                    })
                    .await?;
                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                offset = r.next_offset.max(offset);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok::<_, ClientError>(("fetch", h))
        }));
    }
    let mut peak = proc_stats(args.server_pid);
    let sampler = {
        let pid = args.server_pid;
        tokio::spawn(async move {
            let mut peak: Option<(u64, usize)> = None;
            while Instant::now() < deadline {
                if let Some((rss, fds)) = proc_stats(pid) {
                    let p = peak.get_or_insert((rss, fds));
                    *p = (p.0.max(rss), p.1.max(fds));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            peak
        })
    };
    let mut produce = super::bench::latency_histogram()?;
    let mut fetch = super::bench::latency_histogram()?;
    for m in measured {
        let (kind, h) = m
            .await
            .map_err(|e| ClientError::Closed(format!("bench task: {e}")))??;
        let target = if kind == "produce" {
            &mut produce
        } else {
            &mut fetch
        };
        let _ = target.add(&h);
    }
    if let Ok(Some(p)) = sampler.await {
        peak = Some(p);
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    drop(idle);
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let (rss, fds) = peak.unwrap_or((0, 0));
    if args.json {
        println!(
            "{}",
            json!({
                "hostile": args.hostile,
                "idle": args.idle,
                "active": args.active,
                "produce_requests": produce.len(),
                "produce_p50_ms": ms(&produce, 0.5),
                "produce_p99_ms": ms(&produce, 0.99),
                "produce_p999_ms": ms(&produce, 0.999),
                "fetch_p50_ms": ms(&fetch, 0.5),
                "fetch_p99_ms": ms(&fetch, 0.99),
                "fetch_p999_ms": ms(&fetch, 0.999),
                "server_peak_rss_bytes": rss,
                "server_peak_fds": fds,
            })
        );
    } else {
        println!(
            "hostile {} idle {} active {}: produce p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms ({} requests); fetch p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms; server peak RSS {} MiB, fds {}",
            args.hostile,
            args.idle,
            args.active,
            ms(&produce, 0.5),
            ms(&produce, 0.99),
            ms(&produce, 0.999),
            produce.len(),
            ms(&fetch, 0.5),
            ms(&fetch, 0.99),
            ms(&fetch, 0.999),
            rss >> 20,
            fds
        );
    }
    Ok(())
}
