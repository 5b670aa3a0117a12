//! `sluice bench produce|consume`: load generators in the spirit of
//! kafka-producer-perf-test, with HDR latency histograms.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;

use super::{AcksArg, Conn};
use crate::client::{self, pb, Client, ClientError};

/// Which benchmark.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Produce records as fast as possible (or at `--rate`).
    Produce(BenchArgs),
    /// Read records back with Fetch (produces them first if the topic has
    /// fewer than `--records`).
    Consume(BenchArgs),
    /// The floor of a round trip: an empty unary call (ServerInfo
    /// GetInfo), one at a time on one connection.
    Ping(PingArgs),
    /// New connections per second: each worker connects (with TLS, the
    /// handshake), makes one call and closes, over and over.
    Connect(ConnectArgs),
    /// Read a topic with a consumer group of `--members` members.
    GroupConsume(super::bench_groups::GroupConsumeArgs),
    /// Time the takeover after one member of a group dies.
    Rebalance(super::bench_groups::GroupConsumeArgs),
    /// Many one-member groups heartbeating.
    Heartbeats(super::bench_groups::HeartbeatArgs),
    /// Offset commits per second.
    Commits(super::bench_groups::CommitArgs),
    /// A work queue: workers take 1 KiB tasks over Consume streams and
    /// accept each one.
    Queue(super::bench_queue::QueueBenchArgs),
    /// The work-queue scenario with worker processes, SIGKILLs of workers
    /// (and optionally of the broker), and the accounting of every task.
    FanOut(super::bench_scenario::FanOutArgs),
    /// One worker process of `fan-out` (started by it).
    #[command(hide = true)]
    FanOutWorker(super::bench_scenario::FanOutWorkerArgs),
    /// A loopback cluster: topic-create latency, controller failover over
    /// SIGKILLs, and catch-up of an empty node on a large image.
    Cluster(super::bench_cluster::ClusterBenchArgs),
    /// A loopback cluster: produce throughput with replication factor 3
    /// and acks=ALL against 1 and acks=LEADER, partition-leader and
    /// coordinator failover over SIGKILLs, replication traffic with many
    /// partitions.
    Replication(super::bench_replication::ReplicationBenchArgs),
    /// Well-behaved producers and fetchers measure latency while hostile
    /// (and idle) connections run beside them.
    Hostile(super::bench_hostile::HostileArgs),
    /// An application under faults: an idempotent acks=ALL producer and a
    /// consumer-group member run until stopped (SIGTERM); then checks that
    /// every acknowledged record was consumed exactly once and that no
    /// error reached the application.
    Soak(super::bench_soak::SoakArgs),
}

/// Settings of a benchmark run.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Topic (created if missing).
    pub topic: String,
    /// Records in total.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Records per request (produce) or per fetch (consume).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Parallel workers, each with its own connection.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Unanswered requests per worker: produce requests, or fetches (of
    /// different partitions) when consuming.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Requests per second in total (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Partitions if the topic is created (default: concurrency).
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Durability to wait for.
    #[arg(long, value_enum, default_value_t = AcksArg::Leader)]
    pub acks: AcksArg,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Produce as idempotent producers (one producer id per worker, with
    /// sequence numbers), to measure what idempotence costs.
    #[arg(long)]
    pub idempotent: bool,
    /// How consume reads: stored batches (FetchBatches, decoded here) or
    /// one message per record (Fetch).
    #[arg(long, value_enum, default_value_t = ReadForm::Batches)]
    pub read: ReadForm,
    #[command(flatten)]
    pub conn: Conn,
}

/// The two forms of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadForm {
    /// FetchBatches: the stored batches, decoded by the client.
    Batches,
    /// Fetch: one protobuf message per record.
    Records,
}

/// Settings of the round-trip benchmark.
#[derive(Debug, Clone, Args)]
pub struct PingArgs {
    /// Calls, one at a time.
    #[arg(long, default_value_t = 20_000)]
    pub calls: u64,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// Settings of the connection benchmark.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Connections in total.
    #[arg(long, default_value_t = 2_000)]
    pub connections: u64,
    /// Workers connecting at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: u64,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// Latencies in microseconds, merged from every worker.
type Hist = Arc<Mutex<Histogram<u64>>>;

/// A latency histogram: 1 µs to 60 s, 3 significant digits.
fn histogram() -> Result<Histogram<u64>, ClientError> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| ClientError::Closed(format!("histogram: {e}")))
}

/// The latency histogram every bench uses (µs).
pub(crate) fn latency_histogram() -> Result<Histogram<u64>, ClientError> {
    histogram()
}

fn new_hist() -> Result<Hist, ClientError> {
    histogram().map(|h| Arc::new(Mutex::new(h)))
}

fn progress(total: u64, hidden: bool) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if hidden {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

async fn ensure_topic(client: &Client, args: &BenchArgs) -> Result<i32, ClientError> {
    let not_found =
        |e: &ClientError| matches!(e, ClientError::Status(s) if s.code() == tonic::Code::NotFound);
    match client.partition_count(&args.topic).await {
        Err(e) if not_found(&e) => {
            let n = args.partitions.unwrap_or(args.concurrency.max(1) as i32);
            match client
                .create_topic(&args.topic, n, Default::default())
                .await
            {
                Ok(_) => Ok(n),
                // Created meanwhile by another run.
                Err(ClientError::Status(s)) if s.code() == tonic::Code::AlreadyExists => {
                    client.partition_count(&args.topic).await
                }
                Err(e) => Err(e),
            }
        }
        other => other,
    }
}

/// Runs a benchmark and prints its report.
pub async fn run(cmd: BenchCommand) -> Result<(), ClientError> {
    let (mode, args) = match cmd {
        BenchCommand::Produce(a) => ("produce", a),
        BenchCommand::Consume(a) => ("consume", a),
        BenchCommand::GroupConsume(a) => return super::bench_groups::group_consume(a).await,
        BenchCommand::Rebalance(a) => return super::bench_groups::rebalance(a).await,
        BenchCommand::Heartbeats(a) => return super::bench_groups::heartbeats(a).await,
        BenchCommand::Commits(a) => return super::bench_groups::commits(a).await,
        BenchCommand::Queue(a) => return super::bench_queue::queue(a).await,
        BenchCommand::Hostile(a) => return super::bench_hostile::hostile_bench(a).await,
        BenchCommand::FanOut(a) => return super::bench_scenario::fan_out(a).await,
        BenchCommand::Cluster(a) => return super::bench_cluster::cluster_bench(a).await,
        BenchCommand::Replication(a) => {
            return super::bench_replication::replication_bench(a).await
        }
        BenchCommand::FanOutWorker(a) => return super::bench_scenario::worker(a).await,
        BenchCommand::Soak(a) => return super::bench_soak::soak(a).await,
        BenchCommand::Ping(a) => return ping(a).await,
        BenchCommand::Connect(a) => return connect_rate(a).await,
    };
    if args.batch == 0 || args.concurrency == 0 || args.records == 0 {
        return Err(ClientError::Status(tonic::Status::invalid_argument(
            "--records, --batch and --concurrency must be at least 1",
        )));
    }
    let client = args.conn.connect().await?;
    let partitions = ensure_topic(&client, &args).await?;
    let hist = new_hist()?;
    let (elapsed, records) = if mode == "produce" {
        let bar = progress(args.records, args.json);
        let r = produce(&args, partitions, args.records, hist.clone(), bar.clone()).await?;
        bar.finish_and_clear();
        r
    } else {
        let offsets = client.list_offsets(&args.topic, None).await?;
        let held: u64 = offsets
            .iter()
            .map(|p| (p.latest_offset - p.earliest_offset).max(0) as u64)
            .sum();
        if held < args.records {
            let missing = args.records - held;
            if !args.json {
                eprintln!("topic holds {held} records; producing {missing} more first");
            }
            let bar = progress(missing, args.json);
            produce(&args, partitions, missing, new_hist()?, bar.clone()).await?;
            bar.finish_and_clear();
        }
        let bar = progress(args.records, args.json);
        let r = consume(&args, &client, hist.clone(), bar.clone()).await?;
        bar.finish_and_clear();
        r
    };
    report(mode, &args, records, elapsed, &hist.lock());
    Ok(())
}

fn report(mode: &str, args: &BenchArgs, records: u64, elapsed: Duration, h: &Histogram<u64>) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let rps = records as f64 / secs;
    let mbps = records as f64 * args.record_size as f64 / secs / 1e6;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": mode,
                "records": records,
                "record_size": args.record_size,
                "batch": args.batch,
                "concurrency": args.concurrency,
                "acks": format!("{:?}", args.acks).to_lowercase(),
                "read": (mode == "consume").then(|| format!("{:?}", args.read).to_lowercase()),
                "seconds": secs,
                "records_per_s": rps,
                "mb_per_s": mbps,
                "p50_ms": ms(0.5),
                "p99_ms": ms(0.99),
                "p999_ms": ms(0.999),
                "max_ms": h.max() as f64 / 1000.0,
                "requests": h.len(),
            })
        );
    } else {
        println!(
            "{mode}: {records} records in {secs:.2} s: {rps:.0} records/s, {mbps:.1} MB/s; \
             latency per {} ms: p50 {:.3}, p99 {:.3}, p999 {:.3}, max {:.3} ({} requests)",
            if mode == "produce" {
                "request"
            } else {
                "fetch"
            },
            ms(0.5),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0,
            h.len()
        );
    }
}

fn pacing(args: &BenchArgs) -> Option<tokio::time::Interval> {
    (args.rate > 0).then(|| {
        let per_worker = (args.rate as f64 / args.concurrency as f64).max(0.001);
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / per_worker));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    })
}

async fn produce(
    args: &BenchArgs,
    partitions: i32,
    total: u64,
    hist: Hist,
    bar: ProgressBar,
) -> Result<(Duration, u64), ClientError> {
    let value = Bytes::from(
        (0..args.record_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let records: Vec<pb::ProduceRecord> = (0..args.batch)
        .map(|_| pb::ProduceRecord {
            value: Some(value.clone()),
            ..Default::default()
        })
        .collect();
    let acks: pb::Acks = args.acks.into();
    let requests = total.div_ceil(args.batch as u64);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let client = args.conn.connect().await?;
        let (args, records, next, hist, bar) = (
            args.clone(),
            records.clone(),
            next.clone(),
            hist.clone(),
            bar.clone(),
        );
        workers.push(tokio::spawn(async move {
            // Straight to the partition's leader (in a cluster).
            let partition = (w as i32) % partitions.max(1);
            let (mut pipeline, _) = client
                .pipeline_for(&args.topic, partition, args.in_flight)
                .await?;
            let (tx, mut rx) =
                tokio::sync::mpsc::unbounded_channel::<(Instant, usize, crate::client::Reply)>();
            let collector = tokio::spawn(async move {
                let mut local = histogram()?;
                let mut acked = 0u64;
                while let Some((sent, n, reply)) = rx.recv().await {
                    let r = reply
                        .await
                        .map_err(|_| ClientError::Closed("reply lost".into()))??;
                    let _ = local.record(sent.elapsed().as_micros().max(1) as u64);
                    if let Some(e) = r.record_errors.first() {
                        return Err(ClientError::Closed(format!(
                            "{} records refused: {}",
                            r.record_errors.iter().map(|e| e.count.max(1)).sum::<i32>(),
                            e.message
                        )));
                    }
                    acked += n as u64;
                    bar.inc(n as u64);
                }
                let _ = hist.lock().add(&local);
                Ok::<u64, ClientError>(acked)
            });
            let mut pace = pacing(&args);
            let producer = if args.idempotent {
                Some(
                    client
                        .broker()
                        .init_producer(pb::InitProducerRequest::default())
                        .await?
                        .into_inner(),
                )
            } else {
                None
            };
            let mut sequence = 0i32;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let n = if i == requests - 1 {
                    (total - i * args.batch as u64) as usize
                } else {
                    args.batch
                };
                if let Some(p) = pace.as_mut() {
                    p.tick().await;
                }
                let sent = Instant::now();
                let reply = pipeline
                    .send(pb::ProduceRequest {
                        sequence: 0,
                        topic: args.topic.clone(),
                        partition: Some(partition),
                        records: records[..n].to_vec(),
                        acks: acks as i32,
                        producer_id: producer.as_ref().map(|p| p.producer_id),
                        producer_epoch: producer.as_ref().map_or(0, |p| p.producer_epoch),
                        base_sequence: sequence,
                    })
                    .await?;
                sequence = crate::storage::producer_state::seq_add(sequence, n as i64);
                let _ = tx.send((sent, n, reply));
            }
            drop(tx);
            collector
                .await
                .map_err(|e| ClientError::Closed(e.to_string()))?
        }));
    }
    let mut acked = 0;
    for w in workers {
        acked += w.await.map_err(|e| ClientError::Closed(e.to_string()))??;
    }
    Ok((start.elapsed(), acked))
}

async fn consume(
    args: &BenchArgs,
    client: &Client,
    hist: Hist,
    bar: ProgressBar,
) -> Result<(Duration, u64), ClientError> {
    let offsets = client.list_offsets(&args.topic, None).await?;
    // Each reader reads whole partitions, in turn, one fetch at a time,
    // until the total is read; a worker (a connection) runs --in-flight
    // readers, so that many fetches (of different partitions) are out at
    // once.
    let remaining = Arc::new(AtomicU64::new(args.records));
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        clients.push(args.conn.connect().await?);
    }
    let readers = args.concurrency * args.in_flight.max(1);
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..readers {
        let mine: Vec<pb::PartitionOffsets> = offsets
            .iter()
            .enumerate()
            .filter(|(i, _)| i % readers == w)
            .map(|(_, p)| *p)
            .collect();
        let client = clients[w % args.concurrency].clone();
        let (args, remaining, hist, bar) =
            (args.clone(), remaining.clone(), hist.clone(), bar.clone());
        workers.push(tokio::spawn(async move {
            let mut local = histogram()?;
            let mut read = 0u64;
            let mut pace = pacing(&args);
            'parts: for p in mine {
                let mut offset = p.earliest_offset;
                while offset < p.latest_offset {
                    if remaining.load(Ordering::Relaxed) == 0 {
                        break 'parts;
                    }
                    if let Some(t) = pace.as_mut() {
                        t.tick().await;
                    }
                    let sent = Instant::now();
                    let (n, next) = match args.read {
                        ReadForm::Records => {
                            let r = client
                                .fetch(pb::FetchRequest {
                                    topic: args.topic.clone(),
                                    partition: p.partition,
                                    offset,
                                    max_records: args.batch.min(100_000) as i32,
                                    max_bytes: 64 * 1024 * 1024,
                                    max_wait_ms: 0,
                                })
                                .await?;
                            (r.records.len() as u64, r.next_offset)
                        }
                        ReadForm::Batches => {
                            // Whole batches: --batch records of
                            // --record-size each, about.
                            let bytes = args.batch.saturating_mul(args.record_size + 20);
                            let r = client
                                .fetch_batches(pb::FetchBatchesRequest {
                                    topic: args.topic.clone(),
                                    partition: p.partition,
                                    offset,
                                    max_bytes: bytes.clamp(1, 64 * 1024 * 1024) as i32,
                                    max_wait_ms: 0,
                                })
                                .await?;
                            // Decoded as a consumer would: every record,
                            // checksums checked.
                            let mut n = 0u64;
                            for rec in client::batches::records(&r.batches, offset) {
                                let rec = rec?;
                                n += 1;
                                std::hint::black_box(rec.value);
                            }
                            (n, r.next_offset)
                        }
                    };
                    let _ = local.record(sent.elapsed().as_micros().max(1) as u64);
                    if n == 0 {
                        break;
                    }
                    offset = next;
                    let before = remaining
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                            Some(r.saturating_sub(n))
                        })
                        .unwrap_or(0);
                    let counted = n.min(before);
                    read += counted;
                    bar.inc(counted);
                }
            }
            let _ = hist.lock().add(&local);
            Ok::<u64, ClientError>(read)
        }));
    }
    let mut read = 0;
    for w in workers {
        read += w.await.map_err(|e| ClientError::Closed(e.to_string()))??;
    }
    Ok((start.elapsed(), read))
}

/// New connections, each with one call: what a handshake costs.
async fn connect_rate(args: ConnectArgs) -> Result<(), ClientError> {
    let workers = args.concurrency.max(1);
    let h: Hist = Arc::new(Mutex::new(histogram()?));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let conn = args.conn.clone();
        let h = h.clone();
        let n = args.connections / workers + u64::from(w < args.connections % workers);
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                let t = Instant::now();
                let c = conn.connect().await?;
                c.server_info().get_info(pb::GetInfoRequest {}).await?;
                drop(c);
                let _ = h.lock().record(t.elapsed().as_micros().max(1) as u64);
            }
            Ok::<_, ClientError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| ClientError::Closed(e.to_string()))??;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let h = h.lock();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let rate = args.connections as f64 / secs;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "connect",
                "connections": args.connections,
                "seconds": secs,
                "connections_per_s": rate,
                "p50_ms": ms(0.5),
                "p99_ms": ms(0.99),
            })
        );
    } else {
        println!(
            "connect: {} connections in {secs:.2} s: {rate:.0}/s; connect + first call ms: p50 {:.3}, p99 {:.3}",
            args.connections,
            ms(0.5),
            ms(0.99)
        );
    }
    Ok(())
}

/// Empty unary calls, one at a time: the round trip every call pays.
async fn ping(args: PingArgs) -> Result<(), ClientError> {
    let client = args.conn.connect().await?;
    let mut info = client.server_info();
    let mut h = histogram()?;
    // Warm the connection first.
    for _ in 0..100 {
        info.get_info(pb::GetInfoRequest {}).await?;
    }
    let start = Instant::now();
    for _ in 0..args.calls {
        let sent = Instant::now();
        info.get_info(pb::GetInfoRequest {}).await?;
        let _ = h.record(sent.elapsed().as_nanos().max(1) as u64 / 1000);
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "ping",
                "calls": args.calls,
                "seconds": secs,
                "calls_per_s": args.calls as f64 / secs,
                "p50_ms": ms(0.5),
                "p99_ms": ms(0.99),
                "p999_ms": ms(0.999),
                "max_ms": h.max() as f64 / 1000.0,
            })
        );
    } else {
        println!(
            "ping: {} calls in {secs:.2} s: {:.0} calls/s; latency ms: p50 {:.3}, p99 {:.3}, p999 {:.3}, max {:.3}",
            args.calls,
            args.calls as f64 / secs,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0
        );
    }
    Ok(())
}
