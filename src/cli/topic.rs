//! `sluice topic`: create, list, describe, delete topics and add
//! partitions.

use clap::Subcommand;
use serde_json::json;

use super::Conn;
use crate::client::{pb, ClientError};

/// Topic administration.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name: 1-249 characters of [A-Za-z0-9._-].
        name: String,
        /// Number of partitions.
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: i32,
        /// Replicas per partition [default: the cluster's, min(3, live brokers)].
        #[arg(long, short = 'r')]
        replication_factor: Option<i32>,
        /// Delete data older than this (ms); -1 keeps it forever.
        #[arg(long, allow_hyphen_values = true)]
        retention_ms: Option<i64>,
        /// Per-partition size limit (bytes); -1 for none.
        #[arg(long, allow_hyphen_values = true)]
        retention_bytes: Option<i64>,
        /// Segment file size (bytes).
        #[arg(long)]
        segment_bytes: Option<i64>,
        /// Largest record batch (bytes).
        #[arg(long)]
        max_message_bytes: Option<i32>,
        #[command(flatten)]
        conn: Conn,
        /// Print the created topic as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List topics.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a topic's settings and partitions.
    Describe {
        /// Topic name.
        name: String,
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic and its records.
    Delete {
        /// Topic name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Raise a topic's partition count.
    AddPartitions {
        /// Topic name.
        name: String,
        /// The new total.
        #[arg(long)]
        total: i32,
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `sluice topic` command.
pub async fn topic(cmd: TopicCommand) -> Result<(), ClientError> {
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            retention_ms,
            retention_bytes,
            segment_bytes,
            max_message_bytes,
            conn,
            json,
        } => {
            let client = conn.connect().await?;
            let t = client
                .create_replicated_topic(
                    &name,
                    partitions,
                    replication_factor,
                    pb::TopicConfig {
                        retention_ms,
                        retention_bytes,
                        segment_bytes,
                        max_message_bytes,
                        ..Default::default()
                    },
                )
                .await?;
            if json {
                println!("{}", topic_json(&t));
            } else {
                println!(
                    "created topic {} with {} partitions, replication factor {}",
                    t.name,
                    t.partitions.len(),
                    t.partitions.first().map_or(0, |p| p.replicas.len())
                );
            }
        }
        TopicCommand::List { conn, json } => {
            let client = conn.connect().await?;
            let topics = client.list_topics().await?;
            if json {
                let v: Vec<_> = topics
                    .iter()
                    .map(|t| json!({"name": t.name, "partitions": t.partitions}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for t in topics {
                    println!("{}\t{}", t.name, t.partitions);
                }
            }
        }
        TopicCommand::Describe { name, conn, json } => {
            let client = conn.connect().await?;
            let t = client.describe_topic(&name).await?;
            print_topic(&t, json);
        }
        TopicCommand::Delete { name, conn } => {
            let client = conn.connect().await?;
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
        TopicCommand::AddPartitions {
            name,
            total,
            conn,
            json,
        } => {
            let client = conn.connect().await?;
            let t = client.create_partitions(&name, total).await?;
            print_topic(&t, json);
        }
    }
    Ok(())
}

fn topic_json(t: &pb::TopicDescription) -> serde_json::Value {
    let c = t.config.unwrap_or_default();
    json!({
        "name": t.name,
        "topic_id": t.topic_id,
        "config": {
            "retention_ms": c.retention_ms,
            "retention_bytes": c.retention_bytes,
            "segment_bytes": c.segment_bytes,
            "max_message_bytes": c.max_message_bytes,
        },
        "partitions": t.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "log_start_offset": p.log_start_offset,
            "high_watermark": p.high_watermark,
            "size_bytes": p.size_bytes,
            "segments": p.segments,
            "leader": p.leader,
            "leader_epoch": p.leader_epoch,
            "replicas": p.replicas,
            "isr": p.isr,
        })).collect::<Vec<_>>(),
    })
}

fn print_topic(t: &pb::TopicDescription, json: bool) {
    if json {
        println!("{}", topic_json(t));
        return;
    }
    let c = t.config.unwrap_or_default();
    println!("topic {}", t.name);
    println!(
        "  retention_ms={} retention_bytes={} segment_bytes={} max_message_bytes={}",
        c.retention_ms.unwrap_or(-1),
        c.retention_bytes.unwrap_or(-1),
        c.segment_bytes.unwrap_or(-1),
        c.max_message_bytes.unwrap_or(-1)
    );
    println!(
        "  partition\tstart\thigh_watermark\tsize_bytes\tsegments\tleader\tepoch\treplicas\tisr"
    );
    let ids = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    for p in &t.partitions {
        println!(
            "  {}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            p.partition,
            p.log_start_offset,
            p.high_watermark,
            p.size_bytes,
            p.segments,
            if p.leader < 0 {
                "none".to_string()
            } else {
                p.leader.to_string()
            },
            p.leader_epoch,
            ids(&p.replicas),
            ids(&p.isr)
        );
    }
}
