//! `sluice bench group-consume|rebalance|heartbeats|commits`: consumer
//! group load generators.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use super::Conn;
use crate::client::{pb, Client, ClientError, ConsumerConfig, OffsetReset};

/// `bench group-consume` and `bench rebalance`.
#[derive(Debug, Clone, Args)]
pub struct GroupConsumeArgs {
    /// Topic (must exist and hold the records; `bench produce` fills it).
    pub topic: String,
    /// Members in the group.
    #[arg(long, default_value_t = 8)]
    pub members: usize,
    /// Records to read in total (group-consume).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Group name (default: a fresh one, so it starts at the earliest).
    #[arg(long)]
    pub group: Option<String>,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// `bench heartbeats`.
#[derive(Debug, Clone, Args)]
pub struct HeartbeatArgs {
    /// Topic the members subscribe to (created with one partition).
    #[arg(long, default_value = "bench-heartbeats")]
    pub topic: String,
    /// Groups, one member each.
    #[arg(long, default_value_t = 10_000)]
    pub groups: usize,
    /// How long to keep heartbeating after everyone joined (s).
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Connections to spread the members over.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// The server's pid, to report its CPU use over the run (Linux).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// `bench commits`.
#[derive(Debug, Clone, Args)]
pub struct CommitArgs {
    /// Topic to commit offsets for (created with `--partitions`).
    #[arg(long, default_value = "bench-commits")]
    pub topic: String,
    /// Partitions of the topic; each commit names one.
    #[arg(long, default_value_t = 64)]
    pub partitions: i32,
    /// Offsets per commit request.
    #[arg(long, default_value_t = 1)]
    pub per_request: usize,
    /// Concurrent committers (each its own group).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Connections to spread them over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Duration (s).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// The server's pid, to report its CPU use over the run (Linux).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((utime + stime) / 100.0)
}

fn fresh_group(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn emit(json: bool, value: serde_json::Value, text: String) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

/// `members` consumers in one group read `records` records from the
/// earliest offset; the rate counts from the first record to the last.
pub async fn group_consume(args: GroupConsumeArgs) -> Result<(), ClientError> {
    let group = args.group.clone().unwrap_or_else(|| fresh_group("bench"));
    let read = Arc::new(AtomicU64::new(0));
    let first = Arc::new(parking_lot::Mutex::new(None::<Instant>));
    let joined = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.members {
        let client = args.conn.connect().await?;
        let (read, first, group, topic, total) = (
            read.clone(),
            first.clone(),
            group.clone(),
            args.topic.clone(),
            args.records,
        );
        tasks.push(tokio::spawn(async move {
            let mut c = client.consumer(ConsumerConfig {
                auto_offset_reset: OffsetReset::Earliest,
                ..ConsumerConfig::new(&group, [topic])
            });
            while read.load(Ordering::Relaxed) < total {
                let batch = c.poll(Duration::from_millis(200)).await?;
                if !batch.is_empty() {
                    first.lock().get_or_insert_with(Instant::now);
                    read.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            }
            c.close().await
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| ClientError::Closed(format!("member task: {e}")))??;
    }
    let done = Instant::now();
    let start = first.lock().unwrap_or(joined);
    let secs = (done - start).as_secs_f64().max(1e-9);
    let n = read.load(Ordering::Relaxed);
    let rate = n as f64 / secs;
    emit(
        args.json,
        serde_json::json!({"mode": "group-consume", "members": args.members, "records": n,
            "seconds": secs, "records_per_s": rate, "join_to_first_record_s": (start - joined).as_secs_f64()}),
        format!(
            "group-consume: {} members read {n} records in {secs:.2} s: {rate:.0} records/s (join to first record {:.2} s)",
            args.members,
            (start - joined).as_secs_f64()
        ),
    );
    Ok(())
}

/// Starts `members` consumers, waits until the group is stable, kills one
/// (no leave, as a crash), and times until the survivors own everything.
pub async fn rebalance(args: GroupConsumeArgs) -> Result<(), ClientError> {
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| fresh_group("rebalance"));
    let admin = args.conn.connect().await?;
    let mut consumers = Vec::new();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..args.members {
        let client = args.conn.connect().await?;
        consumers.push(client.consumer(ConsumerConfig {
            auto_offset_reset: OffsetReset::Latest,
            ..ConsumerConfig::new(&group, [args.topic.clone()])
        }));
    }
    // Keep every member polling (it applies assignments in poll).
    let victim = consumers.remove(0);
    let victim_task = tokio::spawn(async move {
        let mut victim = victim;
        loop {
            let _ = victim.poll(Duration::from_millis(100)).await;
        }
    });
    for mut c in consumers {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = c.poll(Duration::from_millis(100)).await;
            }
            c.close().await
        }));
    }
    let stable = |d: &pb::DescribeGroupResponse, members: usize| {
        d.state == pb::GroupState::Stable as i32
            && d.members.len() == members
            && d.partitions.iter().all(|p| !p.owner.is_empty())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stable(&admin.describe_group(&group).await?, args.members) {
        if Instant::now() > deadline {
            return Err(ClientError::Closed("group never became stable".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The crash: heartbeats and fetches stop, nobody leaves.
    victim_task.abort();
    let _ = victim_task.await;
    let killed = Instant::now();
    // Taken over: every partition is in a survivor's assignment (it may be
    // consuming it); stable: every survivor has also confirmed.
    let mut took_over = None;
    loop {
        let d = admin.describe_group(&group).await?;
        if took_over.is_none()
            && d.members.len() == args.members - 1
            && d.partitions.iter().all(|p| !p.owner.is_empty())
        {
            took_over = Some(killed.elapsed().as_secs_f64());
        }
        if stable(&d, args.members - 1) {
            break;
        }
        if killed.elapsed() > Duration::from_secs(120) {
            return Err(ClientError::Closed("survivors never took over".into()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stable_after = killed.elapsed().as_secs_f64();
    let took = took_over.unwrap_or(stable_after);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await
            .map_err(|e| ClientError::Closed(format!("member task: {e}")))??;
    }
    emit(
        args.json,
        serde_json::json!({"mode": "rebalance", "members": args.members, "seconds": took,
            "stable_seconds": stable_after}),
        format!(
            "rebalance: {} members; after one died the survivors owned every partition in {took:.2} s (all confirmed: {stable_after:.2} s)",
            args.members
        ),
    );
    Ok(())
}

async fn ensure_topic(client: &Client, topic: &str, partitions: i32) -> Result<(), ClientError> {
    match client
        .create_topic(topic, partitions, Default::default())
        .await
    {
        Err(ClientError::Status(s)) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        other => other.map(|_| ()),
    }
}

/// `groups` single-member groups heartbeat at the interval the coordinator
/// gives.
pub async fn heartbeats(args: HeartbeatArgs) -> Result<(), ClientError> {
    let first = args.conn.connect().await?;
    ensure_topic(&first, &args.topic, 1).await?;
    let mut clients = vec![first];
    for _ in 1..args.connections.max(1) {
        clients.push(args.conn.connect().await?);
    }
    let beats = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(parking_lot::Mutex::new(super::bench::latency_histogram()?));
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let end = Instant::now() + Duration::from_secs(args.seconds) + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for g in 0..args.groups {
        let mut groups = clients[g % clients.len()].groups();
        let (beats, errors, lat, topic) = (
            beats.clone(),
            errors.clone(),
            lat.clone(),
            args.topic.clone(),
        );
        let group = format!("hb-{run_id}-{g}");
        tasks.push(tokio::spawn(async move {
            // Spread the joins over the first few seconds.
            tokio::time::sleep(Duration::from_millis((g as u64 * 7) % 5000)).await;
            let (mut id, mut epoch) = (String::new(), 0);
            while Instant::now() < end {
                let sent = Instant::now();
                let r = groups
                    .heartbeat(pb::HeartbeatRequest {
                        group: group.clone(),
                        member_id: id.clone(),
                        member_epoch: epoch,
                        topics: vec![topic.clone()],
                        ..Default::default()
                    })
                    .await;
                let wait = match r {
                    Ok(r) => {
                        let r = r.into_inner();
                        let _ = lat.lock().record(sent.elapsed().as_micros().max(1) as u64);
                        beats.fetch_add(1, Ordering::Relaxed);
                        id = r.member_id;
                        epoch = r.member_epoch;
                        r.heartbeat_interval_ms.max(1) as u64
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        1000
                    }
                };
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            let _ = groups
                .heartbeat(pb::HeartbeatRequest {
                    group: group.clone(),
                    member_id: id,
                    member_epoch: -1,
                    ..Default::default()
                })
                .await;
        }));
    }
    // Measure after the joins settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (b0, cpu0, t0) = (
        beats.load(Ordering::Relaxed),
        args.server_pid.and_then(cpu_seconds),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (b1, cpu1, secs) = (
        beats.load(Ordering::Relaxed),
        args.server_pid.and_then(cpu_seconds),
        t0.elapsed().as_secs_f64(),
    );
    for t in tasks {
        let _ = t.await;
    }
    let rate = (b1 - b0) as f64 / secs;
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some((b - a) / secs * 100.0),
        _ => None,
    };
    let h = lat.lock();
    let p99 = h.value_at_quantile(0.99) as f64 / 1000.0;
    emit(
        args.json,
        serde_json::json!({"mode": "heartbeats", "groups": args.groups, "heartbeats_per_s": rate,
            "p99_ms": p99, "errors": errors.load(Ordering::Relaxed), "server_cpu_percent_of_one_core": cpu}),
        format!(
            "heartbeats: {} one-member groups, {rate:.0} heartbeats/s, p99 {p99:.2} ms, {} errors; server CPU {}",
            args.groups,
            errors.load(Ordering::Relaxed),
            cpu.map_or("not measured (give --server-pid)".into(), |c| format!("{c:.1}% of one core"))
        ),
    );
    Ok(())
}

/// Committers hammer CommitOffsets (standalone commits, one group each).
pub async fn commits(args: CommitArgs) -> Result<(), ClientError> {
    let first = args.conn.connect().await?;
    ensure_topic(&first, &args.topic, args.partitions.max(1)).await?;
    let mut clients = vec![first];
    for _ in 1..args.connections.max(1) {
        clients.push(args.conn.connect().await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(parking_lot::Mutex::new(super::bench::latency_histogram()?));
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let (cpu0, t0) = (args.server_pid.and_then(cpu_seconds), Instant::now());
    let mut tasks = Vec::new();
    for w in 0..args.concurrency.max(1) {
        let mut groups = clients[w % clients.len()].groups();
        let (done, lat, topic, partitions, per) = (
            done.clone(),
            lat.clone(),
            args.topic.clone(),
            args.partitions.max(1),
            args.per_request.max(1),
        );
        let group = format!("commit-{run_id}-{w}");
        tasks.push(tokio::spawn(async move {
            let mut local = super::bench::latency_histogram()?;
            let mut i: i64 = 0;
            while Instant::now() < end {
                let offsets = (0..per)
                    .map(|k| pb::OffsetCommit {
                        topic: topic.clone(),
                        partition: ((i as usize + k) % partitions as usize) as i32,
                        offset: i,
                        metadata: String::new(),
                    })
                    .collect();
                let sent = Instant::now();
                groups
                    .commit_offsets(pb::CommitOffsetsRequest {
                        group: group.clone(),
                        offsets,
                        ..Default::default()
                    })
                    .await?;
                let _ = local.record(sent.elapsed().as_micros().max(1) as u64);
                done.fetch_add(per as u64, Ordering::Relaxed);
                i += 1;
            }
            let _ = lat.lock().add(&local);
            Ok::<(), ClientError>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| ClientError::Closed(format!("committer: {e}")))??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let rate = n as f64 / secs;
    let cpu = match (cpu0, args.server_pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some((b - a) / secs * 100.0),
        _ => None,
    };
    let h = lat.lock();
    let p99 = h.value_at_quantile(0.99) as f64 / 1000.0;
    emit(
        args.json,
        serde_json::json!({"mode": "commits", "offsets": n, "per_request": args.per_request,
            "concurrency": args.concurrency, "seconds": secs, "offsets_per_s": rate,
            "requests_per_s": rate / args.per_request.max(1) as f64, "p99_ms": p99,
            "server_cpu_percent_of_one_core": cpu}),
        format!(
            "commits: {n} offsets in {secs:.2} s: {rate:.0} offsets/s ({:.0} requests/s of {} offsets), p99 {p99:.2} ms; server CPU {}",
            rate / args.per_request.max(1) as f64,
            args.per_request,
            cpu.map_or("not measured (give --server-pid)".into(), |c| format!("{c:.0}% of one core"))
        ),
    );
    Ok(())
}
