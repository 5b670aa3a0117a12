//! `sluice bench queue`: work-queue throughput with per-record ACCEPTs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use serde_json::json;

use super::Conn;
use crate::client::{pb, ClientError, ProducerConfig, QueueConfig, Worker};

/// `bench queue`.
#[derive(Debug, Clone, Args)]
pub struct QueueBenchArgs {
    /// Topic (created with `--partitions` and filled with `--tasks` if it
    /// has fewer records).
    #[arg(long, default_value = "bench-queue")]
    pub topic: String,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Tasks to process.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: u64,
    /// Bytes of each task.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Workers, each with its own Consume stream.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
    /// Prefetch of each worker.
    #[arg(long, default_value_t = 500)]
    pub prefetch: i32,
    /// Connections to spread the workers over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Share group (a new one per run by default).
    #[arg(long)]
    pub group: Option<String>,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// Counts the confirmations a worker has received.
fn tally(worker: &mut Worker, done: &AtomicU64, refused: &AtomicU64) {
    for r in worker.take_results() {
        done.fetch_add(r.accepted.len() as u64, Ordering::Relaxed);
        refused.fetch_add(r.refused.len() as u64, Ordering::Relaxed);
    }
}

/// Runs the benchmark.
pub async fn queue(a: QueueBenchArgs) -> Result<(), ClientError> {
    let client = a.conn.connect().await?;
    if client.partition_count(&a.topic).await.is_err() {
        client
            .create_topic(&a.topic, a.partitions, Default::default())
            .await?;
    }
    let have: i64 = client
        .list_offsets(&a.topic, None)
        .await?
        .iter()
        .map(|p| p.latest_offset - p.earliest_offset)
        .sum();
    if (have as u64) < a.tasks {
        let producer = client.producer(&a.topic, ProducerConfig::default());
        let value = Bytes::from(vec![b'x'; a.size]);
        for _ in have as u64..a.tasks {
            producer
                .send(crate::client::record(None, value.clone()))
                .await?;
        }
        producer.close().await?;
    }
    let group = a
        .group
        .clone()
        .unwrap_or_else(|| format!("bench-{}", uuid::Uuid::new_v4().simple()));
    let mut clients = Vec::new();
    for _ in 0..a.connections.max(1) {
        clients.push(a.conn.connect().await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.workers {
        let client = clients[w % clients.len()].clone();
        let (done, refused, group, topic, total, prefetch) = (
            done.clone(),
            refused.clone(),
            group.clone(),
            a.topic.clone(),
            a.tasks,
            a.prefetch,
        );
        tasks.push(tokio::spawn(async move {
            let mut worker = client
                .worker(QueueConfig {
                    prefetch,
                    ..QueueConfig::new(&group, &topic)
                })
                .await?;
            while done.load(Ordering::Relaxed) < total {
                let Ok(next) =
                    tokio::time::timeout(Duration::from_millis(200), worker.next()).await
                else {
                    // Nothing new: count the confirmations still owed.
                    worker.confirm().await?;
                    tally(&mut worker, &done, &refused);
                    continue;
                };
                let Some(first) = next? else { break };
                let mut batch = vec![first];
                batch.extend(worker.ready());
                // One ACCEPT per record, sent together.
                let acks: Vec<pb::Ack> = batch
                    .iter()
                    .map(|d| QueueConfig::accept(d.delivery_id))
                    .collect();
                worker.ack(acks).await?;
                tally(&mut worker, &done, &refused);
            }
            worker.confirm().await?;
            tally(&mut worker, &done, &refused);
            Ok::<(), ClientError>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| ClientError::Closed(format!("worker failed: {e}")))??;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let rate = n as f64 / secs;
    if a.json {
        println!(
            "{}",
            json!({"bench": "queue", "accepted": n, "refused": refused.load(Ordering::Relaxed),
                   "seconds": secs, "tasks_per_sec": rate, "workers": a.workers,
                   "prefetch": a.prefetch, "size": a.size})
        );
    } else {
        println!(
            "queue: {n} tasks accepted by {} workers in {secs:.2} s = {rate:.0} tasks/s ({} refused)",
            a.workers,
            refused.load(Ordering::Relaxed)
        );
    }
    Ok(())
}
