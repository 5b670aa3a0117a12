//! `sluice queue`: run a command per record of a work queue; list,
//! describe, delete, reset and alter queues.

use std::process::Stdio;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use std::io::Write;

use super::Conn;
use crate::client::{pb, ClientError, QueueConfig};

/// Exit code of COMMAND that rejects the record (poison: never delivered
/// again, dead-lettered if the group has a dead-letter topic).
pub const REJECT_EXIT_CODE: i32 = 3;

/// Work queues (share groups).
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Run COMMAND once per record, with the value on stdin and
    /// SLUICE_TOPIC, SLUICE_PARTITION, SLUICE_OFFSET, SLUICE_KEY (if any)
    /// and SLUICE_DELIVERY_COUNT in its environment. Exit 0 accepts the
    /// record; exit 3 rejects it (never delivered again; dead-lettered if
    /// the group has a dead-letter topic); any other exit, or death by a
    /// signal, releases it for redelivery. The lock is extended while
    /// COMMAND runs. SIGTERM or Ctrl-C: finish the running COMMAND, then
    /// stop (records not started go back to the queue).
    Work(WorkArgs),
    /// Show a queue's settings, members, and per partition its start
    /// offset and in-flight, available, accepted, rejected and
    /// dead-lettered counts.
    Describe {
        /// Share group.
        group: String,
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List queues: topics, workers, in-flight, available, dead-lettered,
    /// and the age of the oldest unfinished record.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a queue's state (not its topic); only without workers.
    Delete {
        /// Share group.
        group: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Move a queue's cursor (only without workers): everything before the
    /// new position counts as done, everything from it is delivered again.
    #[command(group(clap::ArgGroup::new("to").required(true).multiple(false)))]
    Reset {
        /// Share group.
        group: String,
        /// Topic.
        #[arg(long)]
        topic: String,
        /// Partitions (comma-separated; default all).
        #[arg(long, value_delimiter = ',')]
        partitions: Vec<i32>,
        /// To the oldest record held.
        #[arg(long, group = "to")]
        to_earliest: bool,
        /// To the end (skip everything so far).
        #[arg(long, group = "to")]
        to_latest: bool,
        /// To this offset (clamped to each partition's range).
        #[arg(long, group = "to")]
        to_offset: Option<i64>,
        /// To the first record at or after this time (RFC 3339).
        #[arg(long, group = "to")]
        to_time: Option<String>,
        /// Show the new positions without applying them.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change a running queue's settings.
    Alter {
        /// Share group.
        group: String,
        /// Lock time of a delivery (e.g. 30s, 500ms, 2m).
        #[arg(long, value_parser = parse_duration)]
        lock_timeout: Option<Duration>,
        /// Deliveries after which a record is given up on.
        #[arg(long)]
        max_deliveries: Option<i32>,
        /// Topic for records given up on ("" for none).
        #[arg(long)]
        dead_letter_topic: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `sluice queue work`.
#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Topic consumed as a queue.
    pub topic: String,
    /// Share group.
    #[arg(long)]
    pub group: String,
    /// Records fetched ahead of the running COMMAND (locked meanwhile).
    #[arg(long, default_value_t = 1)]
    pub prefetch: i32,
    /// Lock time of a delivery for the group (e.g. 30s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub lock_timeout: Option<Duration>,
    /// Deliveries after which a record is given up on, for the group.
    #[arg(long)]
    pub max_deliveries: Option<i32>,
    /// Topic for records given up on, for the group ("" for none).
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
    /// One in-flight record per key, in order, for the group.
    #[arg(long)]
    pub key_ordered: bool,
    /// Stop after this many records (default: run until stopped).
    #[arg(long)]
    pub max_records: Option<u64>,
    #[command(flatten)]
    pub conn: Conn,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Parses `30s`, `500ms`, `2m`, `1h`, or a number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 30s, 500ms, 2m"))?;
    let ms = match unit {
        "" | "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(format!("unknown unit '{unit}' in '{s}': use ms, s, m or h")),
    };
    Ok(Duration::from_millis(ms))
}

/// Runs a queue command.
pub async fn queue(cmd: QueueCommand) -> Result<(), ClientError> {
    match cmd {
        QueueCommand::Work(a) => work(a).await,
        QueueCommand::Describe { group, conn, json } => {
            let client = conn.connect().await?;
            let d = client.describe_queue(&group).await?;
            print_description(&d, json);
            Ok(())
        }
        QueueCommand::List { conn, json } => {
            let client = conn.connect().await?;
            let l = client
                .queues()
                .list_queues(pb::ListQueuesRequest {})
                .await?
                .into_inner();
            if json {
                let v: Vec<_> = l
                    .queues
                    .iter()
                    .map(|q| {
                        json!({
                            "group": q.group, "topics": q.topics, "members": q.members,
                            "in_flight": q.in_flight, "available": q.available,
                            "dead_lettered": q.dead_lettered,
                            "oldest_unacked_age_ms": q.oldest_unacked_age_ms,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("GROUP\tTOPICS\tWORKERS\tIN_FLIGHT\tAVAILABLE\tDEAD_LETTERED\tOLDEST_UNACKED_MS");
                for q in &l.queues {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        q.group,
                        q.topics.join(","),
                        q.members,
                        q.in_flight,
                        q.available,
                        q.dead_lettered,
                        q.oldest_unacked_age_ms
                    );
                }
            }
            Ok(())
        }
        QueueCommand::Delete { group, conn } => {
            let client = conn.connect().await?;
            client
                .queues()
                .delete_queue(pb::DeleteQueueRequest {
                    group: group.clone(),
                })
                .await?;
            println!("deleted queue {group}");
            Ok(())
        }
        QueueCommand::Reset {
            group,
            topic,
            partitions,
            to_earliest,
            to_latest,
            to_offset,
            to_time,
            dry_run,
            conn,
        } => {
            use pb::reset_queue_request::To;
            let to = if to_earliest {
                To::Earliest(())
            } else if to_latest {
                To::Latest(())
            } else if let Some(o) = to_offset {
                To::Offset(o)
            } else if let Some(t) = to_time {
                To::TimestampMs(super::parse_time(&t)?)
            } else {
                return Err(ClientError::Status(tonic::Status::invalid_argument(
                    "one of --to-earliest, --to-latest, --to-offset, --to-time is required",
                )));
            };
            let client = conn.connect().await?;
            let r = client
                .queues()
                .reset_queue(pb::ResetQueueRequest {
                    group,
                    topic,
                    partitions,
                    to: Some(to),
                    dry_run,
                })
                .await?
                .into_inner();
            println!("TOPIC\tPARTITION\tPREVIOUS\tNEW");
            for p in &r.partitions {
                let prev = if p.previous_offset < 0 {
                    "-".to_string()
                } else {
                    p.previous_offset.to_string()
                };
                println!("{}\t{}\t{}\t{}", p.topic, p.partition, prev, p.offset);
            }
            if dry_run {
                println!("(dry run: nothing changed)");
            }
            Ok(())
        }
        QueueCommand::Alter {
            group,
            lock_timeout,
            max_deliveries,
            dead_letter_topic,
            conn,
        } => {
            let client = conn.connect().await?;
            let r = client
                .queues()
                .alter_queue(pb::AlterQueueRequest {
                    group,
                    settings: Some(pb::QueueSettings {
                        lock_timeout_ms: lock_timeout
                            .map(|d| d.as_millis().min(i32::MAX as u128) as i32),
                        max_deliveries,
                        dead_letter_topic,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            let s = r.settings.unwrap_or_default();
            println!(
                "lock_timeout_ms={} max_deliveries={} dead_letter_topic={}",
                s.lock_timeout_ms.unwrap_or_default(),
                s.max_deliveries.unwrap_or_default(),
                s.dead_letter_topic.unwrap_or_default()
            );
            Ok(())
        }
    }
}

fn print_description(d: &pb::DescribeQueueResponse, as_json: bool) {
    let s = d.settings.clone().unwrap_or_default();
    if as_json {
        let v = json!({
            "group": d.group,
            "settings": {
                "lock_timeout_ms": s.lock_timeout_ms,
                "max_deliveries": s.max_deliveries,
                "dead_letter_topic": s.dead_letter_topic,
                "key_ordered": s.key_ordered,
                "session_timeout_ms": s.session_timeout_ms,
                "start_at_latest": s.start_at_latest,
            },
            "partitions": d.partitions.iter().map(|p| json!({
                "topic": p.topic, "partition": p.partition,
                "start_offset": p.start_offset, "high_watermark": p.high_watermark,
                "in_flight": p.in_flight, "available": p.available,
                "accepted": p.accepted, "rejected": p.rejected,
                "dead_lettered": p.dead_lettered,
            })).collect::<Vec<_>>(),
            "members": d.members.iter().map(|m| json!({
                "member_id": m.member_id, "topic": m.topic, "prefetch": m.prefetch,
                "held": m.held, "streaming": m.streaming,
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
        return;
    }
    println!(
        "queue {}  lock_timeout_ms={} max_deliveries={} dead_letter_topic={} key_ordered={}",
        d.group,
        s.lock_timeout_ms.unwrap_or_default(),
        s.max_deliveries.unwrap_or_default(),
        s.dead_letter_topic
            .as_deref()
            .filter(|t| !t.is_empty())
            .unwrap_or("-"),
        s.key_ordered.unwrap_or_default(),
    );
    println!("  topic\tpartition\tstart\thigh_watermark\tin_flight\tavailable\taccepted\trejected\tdead_lettered");
    for p in &d.partitions {
        println!(
            "  {}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            p.topic,
            p.partition,
            p.start_offset,
            p.high_watermark,
            p.in_flight,
            p.available,
            p.accepted,
            p.rejected,
            p.dead_lettered
        );
    }
    println!("  members: {}", d.members.len());
    for m in &d.members {
        println!(
            "    {}\tprefetch={}\theld={}\t{}",
            m.member_id,
            m.prefetch,
            m.held,
            if m.streaming { "stream" } else { "pull" }
        );
    }
}

async fn work(a: WorkArgs) -> Result<(), ClientError> {
    let client = a.conn.connect().await?;
    let settings = pb::QueueSettings {
        lock_timeout_ms: a
            .lock_timeout
            .map(|d| d.as_millis().min(i32::MAX as u128) as i32),
        max_deliveries: a.max_deliveries,
        dead_letter_topic: a.dead_letter_topic.clone(),
        key_ordered: a.key_ordered.then_some(true),
        ..Default::default()
    };
    let mut worker = client
        .worker(QueueConfig {
            group: a.group.clone(),
            topic: a.topic.clone(),
            prefetch: a.prefetch,
            settings: Some(settings),
            member_id: String::new(),
        })
        .await?;
    let d = client.describe_queue(&a.group).await?;
    let lock_ms = d
        .settings
        .and_then(|s| s.lock_timeout_ms)
        .unwrap_or(30_000)
        .max(1000) as u64;
    let mut stop = Box::pin(super::interrupted());
    let mut done = 0u64;
    loop {
        if a.max_records.is_some_and(|m| done >= m) {
            break;
        }
        let d = tokio::select! {
            d = worker.next() => d?,
            _ = &mut stop => break,
        };
        let Some(d) = d else { break };
        let record = d.record.clone().unwrap_or_default();
        let mut cmd = std::process::Command::new(&a.command[0]);
        cmd.args(&a.command[1..])
            .env("SLUICE_TOPIC", &d.topic)
            .env("SLUICE_PARTITION", d.partition.to_string())
            .env("SLUICE_OFFSET", record.offset.to_string())
            .env("SLUICE_DELIVERY_COUNT", d.delivery_count.to_string())
            .stdin(Stdio::piped());
        if let Some(k) = &record.key {
            cmd.env("SLUICE_KEY", String::from_utf8_lossy(k).as_ref());
        }
        let ack = match cmd.spawn() {
            Err(e) => {
                eprintln!("cannot run {}: {e}", a.command[0]);
                // Give the record back before stopping.
                worker
                    .ack_confirmed(vec![QueueConfig::ack(d.delivery_id, pb::AckType::Release)])
                    .await?;
                return Err(ClientError::Closed(format!(
                    "cannot run {}: {e}",
                    a.command[0]
                )));
            }
            Ok(mut child) => {
                let stdin = child.stdin.take();
                let value = record.value.clone().unwrap_or_default();
                // The value goes in and the exit status comes back on a
                // blocking thread; this task keeps extending the lock.
                let mut waiting = tokio::task::spawn_blocking(move || {
                    if let Some(mut stdin) = stdin {
                        // A command that does not read its input is fine.
                        let _ = stdin.write_all(&value);
                    }
                    child.wait()
                });
                // Extend the lock at half its time while the command runs.
                let mut extend = tokio::time::interval(Duration::from_millis(lock_ms / 2));
                extend.tick().await;
                let status = loop {
                    tokio::select! {
                        s = &mut waiting => break s.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))),
                        _ = extend.tick() => {
                            worker
                                .ack(vec![QueueConfig::ack(d.delivery_id, pb::AckType::Extend)])
                                .await?;
                        }
                    }
                };
                let (t, reason) = match status.map(|s| s.code()) {
                    Ok(Some(0)) => (pb::AckType::Accept, String::new()),
                    Ok(Some(REJECT_EXIT_CODE)) => (
                        pb::AckType::Reject,
                        format!("{} exited with {REJECT_EXIT_CODE}", a.command[0]),
                    ),
                    Ok(Some(c)) => (
                        pb::AckType::Release,
                        format!("{} exited with {c}", a.command[0]),
                    ),
                    Ok(None) => (
                        pb::AckType::Release,
                        format!("{} was killed by a signal", a.command[0]),
                    ),
                    Err(e) => (
                        pb::AckType::Release,
                        format!("waiting for {}: {e}", a.command[0]),
                    ),
                };
                pb::Ack {
                    delivery_id: d.delivery_id,
                    r#type: t as i32,
                    delay_ms: 0,
                    reason,
                }
            }
        };
        let result = worker.ack_confirmed(vec![ack]).await?;
        if let Some(e) = result.refused.first() {
            eprintln!(
                "acknowledgement of {}/{} offset {} refused: {}",
                d.topic, d.partition, record.offset, e.message
            );
        }
        done += 1;
    }
    Ok(())
}
