//! The client commands of the `sluice` binary, on top of [`crate::client`]:
//! `topic`, `group`, `produce`, `consume` and `bench`.

pub mod bench;
mod bench_cluster;
mod bench_groups;
mod bench_hostile;
mod bench_queue;
mod bench_replication;
mod bench_scenario;
mod bench_soak;
pub mod cert;
pub mod cluster;
pub mod health;
pub mod queue;
pub mod security;
mod topic;

pub use topic::{topic, TopicCommand};

use std::{
    io::{BufRead, Write},
    time::Duration,
};

use base64::Engine;
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::client::{
    pb, Client, ClientError, ConsumerConfig, OffsetReset, ProducerConfig, DEFAULT_BROKER,
};
pub use bench::BenchCommand;

/// Where the broker is; every client command takes it.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Broker address, or several separated by commas: the first that
    /// answers is used, and the next when it stops answering.
    #[arg(long, env = "SLUICE_BROKER", default_value = DEFAULT_BROKER)]
    pub broker: String,
    /// Bearer token sent with every call (`sluice token issue` makes one).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signs the brokers' certificates: connect with TLS.
    #[arg(long, env = "SLUICE_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, env = "SLUICE_CLIENT_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Key (PEM) of --tls-cert.
    #[arg(long, env = "SLUICE_CLIENT_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Name to verify in the brokers' certificates [default: each address's host].
    #[arg(long, env = "SLUICE_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// Client id sent with every call (quotas may be set per client id;
    /// `group describe` shows a group member's).
    #[arg(long, env = "SLUICE_CLIENT_ID")]
    pub client_id: Option<String>,
}

impl Conn {
    /// The connection options these flags give.
    pub fn options(&self) -> crate::client::ConnectOptions {
        crate::client::ConnectOptions {
            token: self.token.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_server_name: self.tls_server_name.clone(),
            client_id: self.client_id.clone(),
        }
    }

    /// Connects to the broker (list) with these options.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect_with(&self.broker, &self.options()).await
    }

    /// Connects to `url` with these options (another broker of the same
    /// cluster).
    pub async fn connect_to(&self, url: &str) -> Result<Client, ClientError> {
        Client::connect_with(url, &self.options()).await
    }
}

/// Consumer group administration.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List groups with their state and member count.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a group's members and, per partition, owner, committed offset,
    /// end offset and lag.
    Describe {
        /// Group name.
        group: String,
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a group without live members, with its committed offsets.
    Delete {
        /// Group name.
        group: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Move a group's committed offsets (the group must have no live
    /// members): replay history, or skip ahead.
    #[command(group(clap::ArgGroup::new("to").required(true).multiple(false)))]
    ResetOffsets {
        /// Group name.
        group: String,
        /// Topic.
        #[arg(long)]
        topic: String,
        /// Partitions to reset (comma-separated; default all).
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
        /// Show the new offsets without writing them.
        #[arg(long)]
        dry_run: bool,
        /// Create the group if it does not exist (else: not found).
        #[arg(long)]
        create: bool,
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
    /// Turn off idempotent producing: no producer id, no sequence numbers,
    /// and no retries (a failed request's records are reported, not
    /// resent). Idempotence is also off with --acks none.
    #[arg(long)]
    pub no_idempotence: bool,
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
    #[arg(long, conflicts_with = "group")]
    pub partition: Option<i32>,
    /// Join this consumer group: the group's members share the partitions,
    /// and each resumes from the group's committed offsets. Offsets are
    /// committed after each batch is printed (at least once).
    #[arg(long)]
    pub group: Option<String>,
    /// Start at the oldest record (with --group: where the group has no
    /// committed offset).
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    pub from_beginning: bool,
    /// Start at this offset (needs one partition, or applies to each).
    #[arg(long, conflicts_with_all = ["from_time", "group"])]
    pub offset: Option<i64>,
    /// Start at the first record at or after this time (RFC 3339).
    #[arg(long, conflicts_with = "group")]
    pub from_time: Option<String>,
    /// With --group: commit before printing each batch (at most once)
    /// instead of after (at least once).
    #[arg(long, requires = "group")]
    pub at_most_once: bool,
    /// With --group: session timeout to ask for (ms; default the broker's).
    #[arg(long, requires = "group")]
    pub session_timeout_ms: Option<u64>,
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

/// `sluice produce`: one record per stdin line.
pub async fn produce(args: ProduceArgs) -> Result<(), ClientError> {
    let client = args.conn.connect().await?;
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
            idempotent: !args.no_idempotence,
            ..ProducerConfig::default()
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

pub(crate) fn parse_time(s: &str) -> Result<i64, ClientError> {
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
    let client = args.conn.connect().await?;
    if let Some(group) = args.group.clone() {
        return consume_group(client, group, args).await;
    }
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

fn write_record(
    out: &mut impl Write,
    format: Format,
    topic: &str,
    partition: i32,
    r: &pb::ConsumedRecord,
) -> std::io::Result<()> {
    match format {
        Format::Value => {
            let v = r.value.as_deref().unwrap_or_default();
            out.write_all(&String::from_utf8_lossy(v).into_owned().into_bytes())?;
            out.write_all(b"\n")
        }
        Format::Json => writeln!(out, "{}", record_json(topic, partition, r)),
    }
}

/// Ends on ctrl-c or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `sluice consume --group`: a group member that prints and commits.
async fn consume_group(
    client: Client,
    group: String,
    args: ConsumeArgs,
) -> Result<(), ClientError> {
    client.partition_count(&args.topic).await?;
    let mut consumer = client.consumer(ConsumerConfig {
        auto_offset_reset: if args.from_beginning {
            OffsetReset::Earliest
        } else {
            OffsetReset::Latest
        },
        auto_commit_interval: None,
        session_timeout: args.session_timeout_ms.map(Duration::from_millis),
        client_id: args
            .conn
            .client_id
            .clone()
            .unwrap_or_else(|| format!("sluice-cli/{}", std::process::id())),
        ..ConsumerConfig::new(&group, [args.topic.clone()])
    });
    let max = args.max_records.unwrap_or(u64::MAX);
    let idle = args.timeout_ms.map(Duration::from_millis);
    let mut printed = 0u64;
    let mut last_record = tokio::time::Instant::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let stop = interrupted();
    tokio::pin!(stop);
    let result = loop {
        if printed >= max {
            break Ok(());
        }
        let wait = Duration::from_millis(500);
        let records = tokio::select! {
            r = consumer.poll(wait) => r,
            _ = &mut stop => break Ok(()),
        };
        let records = match records {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        if records.is_empty() {
            if idle.is_some_and(|t| last_record.elapsed() >= t) {
                break Ok(());
            }
            continue;
        }
        last_record = tokio::time::Instant::now();
        let take = records.len().min((max - printed) as usize);
        let batch = &records[..take];
        // Next offset per partition of what this batch hands over.
        let mut next: std::collections::BTreeMap<(String, i32), i64> = Default::default();
        for r in batch {
            next.insert((r.topic.to_string(), r.partition), r.record.offset + 1);
        }
        let offsets: Vec<(String, i32, i64)> =
            next.into_iter().map(|((t, p), o)| (t, p, o)).collect();
        if args.at_most_once {
            if let Err(e) = consumer.commit_offsets(&offsets).await {
                break Err(e);
            }
        }
        let mut closed = false;
        for r in batch {
            if write_record(&mut out, args.format, &r.topic, r.partition, &r.record).is_err() {
                closed = true;
                break;
            }
        }
        if closed || out.flush().is_err() {
            break Ok(()); // stdout closed (e.g. `| head`)
        }
        printed += take as u64;
        if !args.at_most_once {
            if let Err(e) = consumer.commit_offsets(&offsets).await {
                break Err(e);
            }
        }
    };
    let _ = out.flush();
    let closed = consumer.close().await;
    result.and(closed)
}

fn state_name(s: i32) -> &'static str {
    match pb::GroupState::try_from(s) {
        Ok(pb::GroupState::Empty) => "empty",
        Ok(pb::GroupState::Reconciling) => "reconciling",
        Ok(pb::GroupState::Stable) => "stable",
        _ => "unknown",
    }
}

fn partitions_text(a: &[pb::TopicPartitions]) -> String {
    a.iter()
        .map(|t| {
            let ps: Vec<String> = t.partitions.iter().map(|p| p.to_string()).collect();
            format!("{}[{}]", t.topic, ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn partitions_json(a: &[pb::TopicPartitions]) -> serde_json::Value {
    json!(a
        .iter()
        .map(|t| json!({"topic": t.topic, "partitions": t.partitions}))
        .collect::<Vec<_>>())
}

/// Runs a `group` command.
pub async fn group(cmd: GroupCommand) -> Result<(), ClientError> {
    match cmd {
        GroupCommand::List { conn, json } => {
            let client = conn.connect().await?;
            let groups = client.list_groups().await?;
            if json {
                let v: Vec<_> = groups
                    .iter()
                    .map(|g| json!({"group": g.group, "state": state_name(g.state), "members": g.members}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for g in groups {
                    println!("{}\t{}\t{}", g.group, state_name(g.state), g.members);
                }
            }
        }
        GroupCommand::Describe { group, conn, json } => {
            let client = conn.connect().await?;
            let d = client.describe_group(&group).await?;
            if json {
                let v = json!({
                    "group": d.group,
                    "state": state_name(d.state),
                    "group_epoch": d.group_epoch,
                    "members": d.members.iter().map(|m| json!({
                        "member_id": m.member_id,
                        "client_id": m.client_id,
                        "member_epoch": m.member_epoch,
                        "topics": m.topics,
                        "assignment": partitions_json(&m.assignment),
                        "pending": partitions_json(&m.pending),
                        "target": partitions_json(&m.target),
                    })).collect::<Vec<_>>(),
                    "partitions": d.partitions.iter().map(|p| json!({
                        "topic": p.topic,
                        "partition": p.partition,
                        "owner": p.owner,
                        "committed": p.committed_offset,
                        "log_start": p.log_start_offset,
                        "end": p.high_watermark,
                        "lag": p.lag,
                    })).collect::<Vec<_>>(),
                });
                println!("{v}");
            } else {
                println!(
                    "group {} ({}, {} members, epoch {})",
                    d.group,
                    state_name(d.state),
                    d.members.len(),
                    d.group_epoch
                );
                for m in &d.members {
                    println!(
                        "  member {} ({}) epoch {}: {}",
                        m.member_id,
                        m.client_id,
                        m.member_epoch,
                        partitions_text(&m.assignment)
                    );
                }
                println!("TOPIC\tPARTITION\tOWNER\tCOMMITTED\tEND\tLAG");
                for p in &d.partitions {
                    let committed = if p.committed_offset < 0 {
                        "-".to_string()
                    } else {
                        p.committed_offset.to_string()
                    };
                    let owner = if p.owner.is_empty() { "-" } else { &p.owner };
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        p.topic, p.partition, owner, committed, p.high_watermark, p.lag
                    );
                }
            }
        }
        GroupCommand::Delete { group, conn } => {
            let client = conn.connect().await?;
            client.delete_group(&group).await?;
            println!("deleted group {group}");
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            partitions,
            to_earliest,
            to_latest,
            to_offset,
            to_time,
            dry_run,
            create,
            conn,
            json,
        } => {
            use pb::reset_offsets_request::To;
            let to = if to_earliest {
                To::Earliest(())
            } else if to_latest {
                To::Latest(())
            } else if let Some(o) = to_offset {
                To::Offset(o)
            } else if let Some(t) = to_time {
                To::TimestampMs(parse_time(&t)?)
            } else {
                return Err(ClientError::Status(tonic::Status::invalid_argument(
                    "one of --to-earliest, --to-latest, --to-offset, --to-time is required",
                )));
            };
            let client = conn.connect().await?;
            let offsets = client
                .reset_offsets(&group, &topic, partitions, to, dry_run, create)
                .await?;
            if json {
                let v: Vec<_> = offsets
                    .iter()
                    .map(|o| json!({"topic": o.topic, "partition": o.partition, "previous": o.previous_offset, "offset": o.offset}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("TOPIC\tPARTITION\tPREVIOUS\tNEW");
                for o in &offsets {
                    let prev = if o.previous_offset < 0 {
                        "-".to_string()
                    } else {
                        o.previous_offset.to_string()
                    };
                    println!("{}\t{}\t{}\t{}", o.topic, o.partition, prev, o.offset);
                }
                if dry_run {
                    println!("(dry run: nothing written)");
                }
            }
        }
    }
    Ok(())
}
