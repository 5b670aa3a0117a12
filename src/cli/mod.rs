//! The client commands of the `sluice` binary, on top of [`crate::client`]:
//! `topic`, `produce`, `consume` and `bench`.

pub mod bench;

use std::{
    io::{BufRead, Write},
    time::Duration,
};

use base64::Engine;
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::client::{pb, Client, ClientError, ProducerConfig, DEFAULT_BROKER};
pub use bench::BenchCommand;

/// Where the broker is; every client command takes it.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Broker address.
    #[arg(long, env = "SLUICE_BROKER", default_value = DEFAULT_BROKER)]
    pub broker: String,
}

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

/// Durability levels on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// No acknowledgement.
    None,
    /// Appended on the broker.
    Leader,
    /// Flushed to disk.
    All,
}

impl From<AcksArg> for pb::Acks {
    fn from(a: AcksArg) -> Self {
        match a {
            AcksArg::None => pb::Acks::None,
            AcksArg::Leader => pb::Acks::Leader,
            AcksArg::All => pb::Acks::All,
        }
    }
}

/// `sluice produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic.
    pub topic: String,
    /// Send every record to this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Split each line at the first SEP into key and value.
    #[arg(long)]
    pub key_separator: Option<String>,
    /// Durability to wait for.
    #[arg(long, value_enum, default_value_t = AcksArg::Leader)]
    pub acks: AcksArg,
    /// How long a record may wait for its batch to fill (ms).
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Batch size (bytes of records per request).
    #[arg(long, default_value_t = 256 * 1024)]
    pub batch_bytes: usize,
    #[command(flatten)]
    pub conn: Conn,
}

/// Output format of `consume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The value as text.
    Value,
    /// One JSON object per record.
    Json,
}

/// `sluice consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic.
    pub topic: String,
    /// Read only this partition (default: all).
    #[arg(long)]
    pub partition: Option<i32>,
    /// Start at the oldest record.
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    pub from_beginning: bool,
    /// Start at this offset (needs one partition, or applies to each).
    #[arg(long, conflicts_with = "from_time")]
    pub offset: Option<i64>,
    /// Start at the first record at or after this time (RFC 3339).
    #[arg(long)]
    pub from_time: Option<String>,
    /// Exit after this many records.
    #[arg(long)]
    pub max_records: Option<u64>,
    /// Exit when no record arrives for this long (ms).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Value)]
    pub format: Format,
    #[command(flatten)]
    pub conn: Conn,
}

/// Runs a client command; returns the process exit code.
pub async fn topic(cmd: TopicCommand) -> Result<(), ClientError> {
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            retention_ms,
            retention_bytes,
            segment_bytes,
            max_message_bytes,
            conn,
            json,
        } => {
            let client = Client::connect(&conn.broker).await?;
            let t = client
                .create_topic(
                    &name,
                    partitions,
                    pb::TopicConfig {
                        retention_ms,
                        retention_bytes,
                        segment_bytes,
                        max_message_bytes,
                    },
                )
                .await?;
            if json {
                println!("{}", topic_json(&t));
            } else {
                println!(
                    "created topic {} with {} partitions",
                    t.name,
                    t.partitions.len()
                );
            }
        }
        TopicCommand::List { conn, json } => {
            let client = Client::connect(&conn.broker).await?;
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
            let client = Client::connect(&conn.broker).await?;
            let t = client.describe_topic(&name).await?;
            print_topic(&t, json);
        }
        TopicCommand::Delete { name, conn } => {
            let client = Client::connect(&conn.broker).await?;
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
        TopicCommand::AddPartitions {
            name,
            total,
            conn,
            json,
        } => {
            let client = Client::connect(&conn.broker).await?;
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
    println!("  partition\tstart\thigh_watermark\tsize_bytes\tsegments");
    for p in &t.partitions {
        println!(
            "  {}\t{}\t{}\t{}\t{}",
            p.partition, p.log_start_offset, p.high_watermark, p.size_bytes, p.segments
        );
    }
}

/// `sluice produce`: one record per stdin line.
pub async fn produce(args: ProduceArgs) -> Result<(), ClientError> {
    let client = Client::connect(&args.conn.broker).await?;
    // Fail fast on an unknown topic rather than after reading stdin.
    client.partition_count(&args.topic).await?;
    let producer = client.producer(
        &args.topic,
        ProducerConfig {
            acks: args.acks.into(),
            linger: Duration::from_millis(args.linger_ms),
            max_batch_bytes: args.batch_bytes.max(1),
            max_in_flight: 8,
            partition: args.partition,
        },
    );
    // Stdin is read on its own thread, in chunks, so that reading lines
    // never blocks the runtime.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<String>>(16);
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            let mut chunk = Vec::with_capacity(1024);
            for line in lines.by_ref().take(1024) {
                chunk.push(line?);
            }
            if chunk.is_empty() || tx.blocking_send(chunk).is_err() {
                return Ok(());
            }
        }
    });
    let sep = args.key_separator.clone();
    while let Some(chunk) = rx.recv().await {
        for line in chunk {
            let (key, value) = match &sep {
                Some(s) => match line.split_once(s.as_str()) {
                    Some((k, v)) => (Some(Bytes::copy_from_slice(k.as_bytes())), v.to_string()),
                    None => (None, line),
                },
                None => (None, line),
            };
            producer
                .send(pb::ProduceRecord {
                    key,
                    value: Some(Bytes::from(value)),
                    ..Default::default()
                })
                .await?;
        }
    }
    let read = reader.join();
    let stats = producer.close().await?;
    eprintln!("produced {} records", stats.acked);
    if let Ok(Err(e)) = read {
        return Err(ClientError::Closed(format!("reading stdin: {e}")));
    }
    if stats.failed > 0 {
        return Err(ClientError::Status(tonic::Status::aborted(format!(
            "{} records were refused; first error: {}",
            stats.failed,
            stats.first_error.unwrap_or_default()
        ))));
    }
    Ok(())
}

fn parse_time(s: &str) -> Result<i64, ClientError> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            ClientError::Status(tonic::Status::invalid_argument(format!(
                "--from-time '{s}' is not an RFC 3339 time (e.g. 2026-11-23T10:00:00Z): {e}"
            )))
        })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn record_json(topic: &str, partition: i32, r: &pb::ConsumedRecord) -> serde_json::Value {
    let b64 = |b: &Bytes| base64::engine::general_purpose::STANDARD.encode(b);
    let mut o = serde_json::Map::new();
    o.insert("topic".into(), json!(topic));
    o.insert("partition".into(), json!(partition));
    o.insert("offset".into(), json!(r.offset));
    o.insert("timestamp".into(), json!(r.timestamp_ms));
    for (name, v) in [("key", &r.key), ("value", &r.value)] {
        match v {
            None => {
                o.insert(name.into(), serde_json::Value::Null);
            }
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) => {
                    o.insert(name.into(), json!(s));
                }
                Err(_) => {
                    o.insert(format!("{name}_b64"), json!(b64(b)));
                }
            },
        }
    }
    let headers: Vec<_> = r
        .headers
        .iter()
        .map(|h| match &h.value {
            None => json!({"key": h.key, "value": null}),
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) => json!({"key": h.key, "value": s}),
                Err(_) => json!({"key": h.key, "value_b64": b64(b)}),
            },
        })
        .collect();
    o.insert("headers".into(), serde_json::Value::Array(headers));
    serde_json::Value::Object(o)
}

/// `sluice consume`: prints records until `--max-records`, `--timeout-ms`
/// without a record, or interruption.
pub async fn consume(args: ConsumeArgs) -> Result<(), ClientError> {
    use pb::position::Position as P;
    let client = Client::connect(&args.conn.broker).await?;
    let partitions: Vec<i32> = match args.partition {
        Some(p) => vec![p],
        None => (0..client.partition_count(&args.topic).await?).collect(),
    };
    let start = if args.from_beginning {
        P::Earliest(())
    } else if let Some(o) = args.offset {
        P::Offset(o)
    } else if let Some(t) = &args.from_time {
        P::TimestampMs(parse_time(t)?)
    } else {
        P::Latest(())
    };
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<Result<(i32, pb::SubscribeResponse), ClientError>>(64);
    for p in partitions {
        // Open every stream before printing, so errors (unknown partition,
        // offset out of range) surface at once.
        let mut stream = client.subscribe(&args.topic, p, start).await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let msg = match stream.message().await {
                    Ok(Some(m)) => Ok((p, m)),
                    Ok(None) => break,
                    Err(s) => Err(ClientError::Status(s)),
                };
                let stop = msg.is_err();
                if tx.send(msg).await.is_err() || stop {
                    break;
                }
            }
        });
    }
    drop(tx);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut printed = 0u64;
    let max = args.max_records.unwrap_or(u64::MAX);
    if max == 0 {
        return Ok(());
    }
    let timeout = args.timeout_ms.map(Duration::from_millis);
    loop {
        let next = match timeout {
            Some(t) => match tokio::time::timeout(t, rx.recv()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => rx.recv().await,
        };
        let Some(msg) = next else { break };
        let (partition, m) = msg?;
        for r in &m.records {
            let written = match args.format {
                Format::Value => {
                    let v = r.value.as_deref().unwrap_or_default();
                    out.write_all(&String::from_utf8_lossy(v).into_owned().into_bytes())
                        .and_then(|_| out.write_all(b"\n"))
                }
                Format::Json => writeln!(out, "{}", record_json(&args.topic, partition, r)),
            };
            if written.is_err() {
                return Ok(()); // stdout closed (e.g. `| head`)
            }
            printed += 1;
            if printed >= max {
                let _ = out.flush();
                return Ok(());
            }
        }
        if rx.is_empty() && out.flush().is_err() {
            return Ok(());
        }
    }
    let _ = out.flush();
    Ok(())
}
