//! `sluice bench fan-out`: the work-queue scenario from the product pitch,
//! with real processes. The bench starts its own broker (`sluice serve` on
//! a fresh data directory), fills a topic with `--tasks` tasks, and runs
//! `--workers` worker processes (`sluice bench fan-out-worker`), each with
//! one Consume stream and its own prefetch. Every tenth task fails once
//! (RELEASE on its first delivery). During the run it SIGKILLs
//! `--kill-workers` workers at random moments and starts new ones in their
//! place, and with `--kill-broker` it SIGKILLs the broker once halfway and
//! restarts it on the same data directory.
//!
//! Workers report every delivery and every confirmed ACCEPT and RELEASE
//! on their standard output; the bench keeps the books per task and ends
//! when the broker says the queue is drained. The final accounting:
//! every task accepted exactly once (by the broker's count, and no task
//! confirmed accepted twice), none lost, and the duplicates delivered
//! next to what the killed processes held unacknowledged.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use parking_lot::Mutex;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::client::{pb, Client, ClientError, ProducerConfig, QueueConfig};

/// `bench fan-out`.
#[derive(Debug, Clone, Args)]
pub struct FanOutArgs {
    /// Tasks.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: u64,
    /// Bytes of each task.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Partitions of the task topic.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Worker processes, each with one Consume stream.
    #[arg(long, default_value_t = 50)]
    pub workers: usize,
    /// Prefetch of each worker.
    #[arg(long, default_value_t = 200)]
    pub prefetch: i32,
    /// Workers SIGKILLed (and replaced) at random moments.
    #[arg(long, default_value_t = 5)]
    pub kill_workers: usize,
    /// SIGKILL the broker once, halfway, and restart it.
    #[arg(long)]
    pub kill_broker: bool,
    /// Lock timeout of the queue, ms (what a killed worker's tasks wait
    /// for at most; the broker releases them at once when the stream
    /// ends).
    #[arg(long, default_value_t = 30_000)]
    pub lock_timeout_ms: i32,
    /// Data directory of the broker (default: a new temporary one).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// `bench fan-out-worker` (started by `bench fan-out`).
#[derive(Debug, Clone, Args)]
pub struct FanOutWorkerArgs {
    /// Broker address.
    #[arg(long)]
    pub broker: String,
    /// Share group.
    #[arg(long)]
    pub group: String,
    /// Topic.
    #[arg(long)]
    pub topic: String,
    /// Prefetch.
    #[arg(long)]
    pub prefetch: i32,
    /// Lock timeout of the queue, ms.
    #[arg(long)]
    pub lock_timeout_ms: i32,
}

/// A task's id: the first 8 bytes of its value.
fn task_id(d: &pb::Delivery) -> Option<u64> {
    let v = d.record.as_ref()?.value.as_ref()?;
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// Every tenth task fails on its first delivery.
fn fails_once(id: u64) -> bool {
    id.is_multiple_of(10)
}

/// A worker process: takes tasks, accepts them (or releases the ones that
/// fail once), and reports each delivery (`D`), confirmed ACCEPT (`A`) and
/// confirmed RELEASE (`R`) with its task id on standard output. Reconnects while the broker is
/// away.
pub async fn worker(a: FanOutWorkerArgs) -> Result<(), ClientError> {
    let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
    loop {
        match work(&a, &mut out).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                let _ = out.flush().await;
                tracing::debug!(error = %e, "worker stream failed; reconnecting");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn work(
    a: &FanOutWorkerArgs,
    out: &mut tokio::io::BufWriter<tokio::io::Stdout>,
) -> Result<(), ClientError> {
    let client = Client::connect(&a.broker).await?;
    let mut worker = client
        .worker(QueueConfig {
            prefetch: a.prefetch,
            settings: Some(pb::QueueSettings {
                lock_timeout_ms: Some(a.lock_timeout_ms),
                // Kills and restarts must never exhaust a task.
                max_deliveries: Some(100),
                ..Default::default()
            }),
            ..QueueConfig::new(&a.group, &a.topic)
        })
        .await?;
    // Delivery id → (task, accepted?) until confirmed.
    let mut pending: std::collections::HashMap<u64, (u64, bool)> = Default::default();
    let mut line = Vec::new();
    while let Some(first) = worker.next().await? {
        let mut batch = vec![first];
        batch.extend(worker.ready());
        let mut acks = Vec::with_capacity(batch.len());
        line.clear();
        for d in &batch {
            let Some(id) = task_id(d) else { continue };
            let accept = !(fails_once(id) && d.delivery_count == 1);
            event(&mut line, b'D', id);
            pending.insert(d.delivery_id, (id, accept));
            let t = if accept {
                pb::AckType::Accept
            } else {
                pb::AckType::Release
            };
            acks.push(QueueConfig::ack(d.delivery_id, t));
        }
        emit(out, &line).await;
        worker.ack(acks).await?;
        worker.confirm().await?;
        line.clear();
        for r in worker.take_results() {
            for id in r.accepted {
                if let Some((task, accept)) = pending.remove(&id) {
                    event(&mut line, if accept { b'A' } else { b'R' }, task);
                }
            }
            for e in r.refused {
                pending.remove(&e.delivery_id);
            }
        }
        emit(out, &line).await;
    }
    Ok(())
}

/// One report of a worker: a kind byte and a task id (little-endian).
const EVENT_LEN: usize = 9;

fn event(out: &mut Vec<u8>, kind: u8, task: u64) {
    out.push(kind);
    out.extend_from_slice(&task.to_le_bytes());
}

/// Writes a worker's report; a worker whose bench is gone exits.
async fn emit(out: &mut tokio::io::BufWriter<tokio::io::Stdout>, line: &[u8]) {
    let written = async {
        out.write_all(line).await?;
        out.flush().await
    };
    if written.await.is_err() {
        std::process::exit(1);
    }
}

/// The books, per task.
struct Books {
    deliveries: Vec<u8>,
    accepts: Vec<u8>,
    releases: Vec<u8>,
    /// Per worker slot: tasks delivered and not yet confirmed.
    holding: Vec<HashSet<u64>>,
    accepted: u64,
}

impl Books {
    fn event(&mut self, slot: usize, e: &[u8]) {
        let (&kind, id) = match e.split_first() {
            Some((k, rest)) if rest.len() == 8 => (k, rest),
            _ => return,
        };
        let id = u64::from_le_bytes(id.try_into().unwrap_or_default());
        let Some(i) = usize::try_from(id)
            .ok()
            .filter(|&i| i < self.deliveries.len())
        else {
            return;
        };
        match kind {
            b'D' => {
                self.deliveries[i] = self.deliveries[i].saturating_add(1);
                self.holding[slot].insert(id);
            }
            b'A' => {
                self.accepts[i] = self.accepts[i].saturating_add(1);
                self.accepted += 1;
                self.holding[slot].remove(&id);
            }
            b'R' => {
                self.releases[i] = self.releases[i].saturating_add(1);
                self.holding[slot].remove(&id);
            }
            _ => {}
        }
    }
}

/// A random number below `n` (the v4 uuid generator is the random source).
fn random_below(n: u64) -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0 % n.max(1)
}

/// The final accounting of the books.
struct Summary {
    /// Tasks confirmed accepted more than once.
    twice: usize,
    /// Tasks confirmed accepted once.
    confirmed: usize,
    never_delivered: usize,
    /// Deliveries beyond one per task, and beyond the second of a task
    /// that failed once on purpose.
    duplicates: u64,
    released_once: usize,
}

impl Books {
    fn summary(&self) -> Summary {
        let mut duplicates = 0u64;
        for (i, &d) in self.deliveries.iter().enumerate() {
            let planned = if fails_once(i as u64) && self.releases[i] > 0 {
                2
            } else {
                1
            };
            duplicates += u64::from(d).saturating_sub(planned);
        }
        Summary {
            twice: self.accepts.iter().filter(|&&c| c > 1).count(),
            confirmed: self.accepts.iter().filter(|&&c| c == 1).count(),
            never_delivered: self.deliveries.iter().filter(|&&c| c == 0).count(),
            duplicates,
            released_once: self.releases.iter().filter(|&&c| c > 0).count(),
        }
    }
}

fn closed(what: impl std::fmt::Display) -> ClientError {
    ClientError::Closed(what.to_string())
}

fn free_port() -> Result<u16, ClientError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(closed)?;
    Ok(l.local_addr().map_err(closed)?.port())
}

fn start_broker(dir: &std::path::Path, port: u16) -> Result<Child, ClientError> {
    let exe = std::env::current_exe().map_err(closed)?;
    Command::new(exe)
        .args([
            "serve",
            "--kafka-listen",
            "off",
            "--metrics-listen",
            "off",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(closed)
}

async fn wait_for_broker(addr: &str) -> Result<Client, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Client::connect(addr).await {
            Ok(c) if c.list_topics().await.is_ok() => return Ok(c),
            _ if Instant::now() > deadline => {
                return Err(closed("the broker did not start within 60 s"))
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn start_worker(
    books: &Arc<Mutex<Books>>,
    slot: usize,
    a: &FanOutWorkerArgs,
) -> Result<Child, ClientError> {
    let exe = std::env::current_exe().map_err(closed)?;
    let mut child = Command::new(exe)
        .args(["bench", "fan-out-worker", "--broker", &a.broker])
        .args(["--group", &a.group, "--topic", &a.topic])
        .args(["--prefetch", &a.prefetch.to_string()])
        .args(["--lock-timeout-ms", &a.lock_timeout_ms.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(closed)?;
    let stdout = child.stdout.take().ok_or_else(|| closed("worker stdout"))?;
    let books = books.clone();
    tokio::spawn(async move {
        let mut stdout = stdout;
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        while let Ok(n) = stdout.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let whole = buf.len() / EVENT_LEN * EVENT_LEN;
            let mut b = books.lock();
            for e in buf[..whole].chunks_exact(EVENT_LEN) {
                b.event(slot, e);
            }
            drop(b);
            buf.drain(..whole);
        }
    });
    Ok(child)
}

/// Sums over the queue's partitions: (accepted, dead-lettered, in flight,
/// available).
async fn queue_totals(client: &Client, group: &str) -> Result<[i64; 4], ClientError> {
    let d = client.describe_queue(group).await?;
    let mut t = [0i64; 4];
    for p in d.partitions {
        t[0] += p.accepted;
        t[1] += p.dead_lettered;
        t[2] += p.in_flight;
        t[3] += p.available;
    }
    Ok(t)
}

/// Runs the scenario and prints its accounting.
pub async fn fan_out(a: FanOutArgs) -> Result<(), ClientError> {
    if a.workers == 0 || a.tasks == 0 || a.kill_workers > a.workers * 10 {
        return Err(closed(
            "--workers and --tasks must be at least 1, --kill-workers at most ten per worker",
        ));
    }
    let temp =
        std::env::temp_dir().join(format!("sluice-fan-out-{}", uuid::Uuid::new_v4().simple()));
    let dir = a.data_dir.clone().unwrap_or_else(|| temp.clone());
    let port = free_port()?;
    let addr = format!("http://127.0.0.1:{port}");
    let mut broker = start_broker(&dir, port)?;
    let client = wait_for_broker(&addr).await?;
    let topic = format!("fan-out-{}", uuid::Uuid::new_v4().simple());
    let group = format!("{topic}-workers");
    client
        .create_topic(&topic, a.partitions, Default::default())
        .await?;
    let fill = Instant::now();
    let producer = client.producer(&topic, ProducerConfig::default());
    let mut value = vec![b'x'; a.size.max(8)];
    for id in 0..a.tasks {
        value[..8].copy_from_slice(&id.to_be_bytes());
        producer
            .send(crate::client::record(None, Bytes::copy_from_slice(&value)))
            .await?;
    }
    producer.close().await?;
    let fill_secs = fill.elapsed().as_secs_f64();
    let n = a.tasks as usize;
    let books = Arc::new(Mutex::new(Books {
        deliveries: vec![0; n],
        accepts: vec![0; n],
        releases: vec![0; n],
        holding: vec![HashSet::new(); a.workers],
        accepted: 0,
    }));
    let wargs = FanOutWorkerArgs {
        broker: addr.clone(),
        group: group.clone(),
        topic: topic.clone(),
        prefetch: a.prefetch,
        lock_timeout_ms: a.lock_timeout_ms,
    };
    let start = Instant::now();
    let mut workers = Vec::with_capacity(a.workers);
    for slot in 0..a.workers {
        workers.push(start_worker(&books, slot, &wargs)?);
    }
    // Kill moments: when this many tasks are confirmed accepted.
    let span = (a.tasks * 7 / 10).max(1);
    let mut kills: Vec<u64> = (0..a.kill_workers)
        .map(|_| a.tasks / 10 + random_below(span))
        .collect();
    kills.sort_unstable();
    let mut broker_kill = a.kill_broker.then_some(a.tasks / 2);
    let mut killed_holding = 0usize;
    let mut broker_killed_at: Option<(f64, f64)> = None;
    let mut kill_log = Vec::new();
    let mut client = client;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let accepted = books.lock().accepted;
        while kills.first().is_some_and(|&k| accepted >= k) {
            kills.remove(0);
            let slot = random_below(a.workers as u64) as usize;
            let _ = workers[slot].start_kill();
            let _ = workers[slot].wait().await;
            // What it held unacknowledged comes back.
            let held = {
                let mut b = books.lock();
                std::mem::take(&mut b.holding[slot]).len()
            };
            killed_holding += held;
            kill_log.push(json!({"at_accepted": accepted, "worker": slot, "held": held}));
            workers[slot] = start_worker(&books, slot, &wargs)?;
        }
        if broker_kill.is_some_and(|k| accepted >= k) {
            broker_kill = None;
            let t = start.elapsed().as_secs_f64();
            let _ = broker.start_kill();
            let _ = broker.wait().await;
            broker = start_broker(&dir, port)?;
            client = wait_for_broker(&addr).await?;
            broker_killed_at = Some((t, start.elapsed().as_secs_f64() - t));
        }
        if accepted * 10 < a.tasks * 9 && !kills.is_empty() {
            continue;
        }
        let Ok(t) = queue_totals(&client, &group).await else {
            continue;
        };
        if t[0] + t[1] >= a.tasks as i64 && t[2] == 0 && t[3] == 0 {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // Let the last confirmations reach the books.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for w in &mut workers {
        let _ = w.start_kill();
    }
    let totals = queue_totals(&client, &group).await?;
    let Summary {
        twice,
        confirmed,
        never_delivered,
        duplicates,
        released_once,
    } = books.lock().summary();
    let lost = (a.tasks as i64 - totals[0] - totals[1]).max(0);
    let rate = a.tasks as f64 / secs;
    let report = json!({
        "bench": "fan-out", "tasks": a.tasks, "size": a.size, "workers": a.workers,
        "prefetch": a.prefetch, "partitions": a.partitions,
        "fill_seconds": fill_secs, "drain_seconds": secs, "tasks_per_sec": rate,
        "broker_accepted": totals[0], "dead_lettered": totals[1], "lost": lost,
        "confirmed_accepted": confirmed, "confirmed_twice": twice,
        "accepted_unconfirmed": totals[0] - confirmed as i64,
        "never_delivered": never_delivered,
        "released_once": released_once,
        "duplicates_delivered": duplicates,
        "held_by_killed_workers": killed_holding,
        "worker_kills": kill_log,
        "broker_kill": broker_killed_at.map(|(at, down)| json!({"at_seconds": at, "restart_seconds": down})),
    });
    if a.json {
        println!("{report}");
    } else {
        println!(
            "fan-out: {} tasks of {} B, {} worker processes (prefetch {}), {} partitions",
            a.tasks, a.size, a.workers, a.prefetch, a.partitions
        );
        println!("  filled in {fill_secs:.2} s; drained in {secs:.2} s = {rate:.0} tasks/s");
        println!(
            "  accepted by the broker {} (confirmed to workers {}, accepted but unconfirmed when a process died {}), dead-lettered {}, lost {lost}",
            totals[0],
            confirmed,
            totals[0] - confirmed as i64,
            totals[1]
        );
        println!("  tasks confirmed accepted twice: {twice}");
        println!(
            "  duplicates delivered {duplicates}; held unacknowledged by killed workers {killed_holding}{}",
            broker_killed_at.map_or(String::new(), |(at, down)| format!(
                "; broker SIGKILLed at {at:.1} s, serving again {down:.2} s later"
            ))
        );
    }
    let _ = broker.start_kill();
    let _ = broker.wait().await;
    if a.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    if lost > 0 || twice > 0 {
        return Err(closed(format!("{lost} tasks lost, {twice} accepted twice")));
    }
    Ok(())
}
