//! The `sluice` binary: the server (`sluice serve`) and the command-line
//! client (`topic`, `group`, `produce`, `consume`, `bench`).

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sluice::cli::{
    self, queue::QueueCommand, BenchCommand, ConsumeArgs, GroupCommand, ProduceArgs, TopicCommand,
};
use sluice::config::{parse_metrics_listen, FlushMode, ServerConfig};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a partitioned, durable commit-log server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (embedded defaults; flags override --config, which
    /// overrides the defaults).
    Serve(Box<ServeArgs>),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// List, describe and delete consumer groups; reset their offsets.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Cluster status: nodes, controller, liveness.
    #[command(subcommand)]
    Cluster(cli::cluster::ClusterCommand),
    /// Work queues: run a command per record, describe queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Produce one record per line of standard input.
    Produce(ProduceArgs),
    /// Print records of a topic (alone, or as a member of a group).
    Consume(ConsumeArgs),
    /// Measure produce or consume throughput and latency.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// SCRAM users (for SASL on the Kafka listener).
    #[command(subcommand)]
    User(cli::security::UserCommand),
    /// Bearer tokens for the gRPC API.
    #[command(subcommand)]
    Token(cli::security::TokenCommand),
    /// Access control lists.
    #[command(subcommand)]
    Acl(cli::security::AclCommand),
    /// Produce, fetch and request-rate quotas.
    #[command(subcommand)]
    Quota(cli::security::QuotaCommand),
    /// Who the broker takes this client for.
    Whoami(cli::Conn),
    /// Make a private CA and certificates for brokers and clients.
    #[command(subcommand)]
    Cert(cli::cert::CertCommand),
    /// Exit 0 if the server is ready (its /readyz answers 200), for
    /// container health checks.
    Health(cli::health::HealthArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML file with settings (see docs in src/config/mod.rs and README).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory that holds topics and partition logs [default: ./sluice-data].
    #[arg(long, env = "SLUICE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the gRPC API [default: 127.0.0.1:9400].
    #[arg(long, env = "SLUICE_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Address of Prometheus /metrics and /healthz, or "off" [default: 127.0.0.1:9401].
    #[arg(long, env = "SLUICE_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Address of the Kafka wire protocol, or "off" [default: 127.0.0.1:9092].
    #[arg(long, env = "SLUICE_KAFKA_LISTEN")]
    kafka_listen: Option<String>,
    /// host:port Kafka clients are told to dial this broker at [default: the Kafka listen address].
    #[arg(long, env = "SLUICE_KAFKA_ADVERTISE")]
    kafka_advertise: Option<String>,
    /// Segment file size in bytes [default: 1073741824].
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// Default retention by age in ms; -1 keeps forever [default: 604800000].
    #[arg(long, allow_hyphen_values = true)]
    retention_ms: Option<i64>,
    /// Default retention by size per partition; -1 none [default: -1].
    #[arg(long, allow_hyphen_values = true)]
    retention_bytes: Option<i64>,
    /// Largest record batch in bytes [default: 1060864, 1 MiB + 12 KiB].
    #[arg(long)]
    max_message_bytes: Option<usize>,
    /// When appends are forced to disk [default: interval].
    #[arg(long, value_enum)]
    flush: Option<FlushMode>,
    /// Interval of --flush interval, ms [default: 1000].
    #[arg(long)]
    flush_interval_ms: Option<u64>,
    /// Records between flushes of --flush every-records [default: 10000].
    #[arg(long)]
    flush_records: Option<u64>,
    /// Partition logs kept open at most [default: 4096].
    #[arg(long)]
    max_open_logs: Option<usize>,
    /// Threads that run syncs, several partitions at a time [default: 4].
    #[arg(long)]
    io_threads: Option<usize>,
    /// Session timeout of group members that ask for none, ms [default: 10000].
    #[arg(long)]
    group_session_timeout_ms: Option<i32>,
    /// Smallest session timeout a group member may ask for, ms [default: 1000].
    #[arg(long)]
    group_min_session_timeout_ms: Option<i32>,
    /// Heartbeat interval told to group members, ms [default: 3000].
    #[arg(long)]
    group_heartbeat_interval_ms: Option<i32>,
    /// How often retention (and idle-producer expiry) runs, ms [default: 300000].
    #[arg(long)]
    retention_check_interval_ms: Option<u64>,
    /// Whose clock stamps records of topics that set none [default: create-time].
    #[arg(long, value_enum)]
    timestamp_type: Option<sluice::broker::TimestampType>,
    /// Refuse create-time records stamped more than this before the broker's clock, ms; -1 no limit [default: -1].
    #[arg(long, allow_hyphen_values = true)]
    timestamp_before_max_ms: Option<i64>,
    /// Refuse create-time records stamped more than this after the broker's clock, ms; -1 no limit [default: 3600000].
    #[arg(long, allow_hyphen_values = true)]
    timestamp_after_max_ms: Option<i64>,
    /// Idempotent producers one partition remembers at most [default: 10000].
    #[arg(long)]
    max_producers_per_partition: Option<usize>,
    /// Forget an idempotent producer idle this long, ms [default: 86400000].
    #[arg(long)]
    producer_expiration_ms: Option<u64>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    security: SecurityArgs,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long)]
    log_json: bool,
}

/// Connection and request limits (`[limits]` in TOML).
#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Connections open at once; more are closed at accept [default: 10000].
    #[arg(long)]
    max_connections: Option<usize>,
    /// HTTP/2 streams (calls) per connection [default: 256].
    #[arg(long)]
    max_concurrent_streams: Option<u32>,
    /// Calls per connection waiting for their answer [default: 256].
    #[arg(long)]
    max_calls_per_connection: Option<usize>,
    /// Largest produce request on the wire, bytes [default: 4194304].
    #[arg(long)]
    max_request_bytes: Option<usize>,
    /// Fetch reply bytes encoded but not yet sent, server-wide [default: 268435456].
    #[arg(long)]
    max_reply_bytes_in_flight: Option<usize>,
    /// HTTP/2 keepalive ping interval, ms; 0 none [default: 30000].
    #[arg(long)]
    keepalive_interval_ms: Option<u64>,
    /// Close a connection whose ping is unanswered this long, ms [default: 10000].
    #[arg(long)]
    keepalive_timeout_ms: Option<u64>,
    /// Close a connection without calls for this long, ms; 0 never [default: 600000].
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
    /// A Consume stream must send its open request within this, ms [default: 10000].
    #[arg(long)]
    consume_open_timeout_ms: Option<u64>,
    /// On shutdown, wait this long for open calls, then exit anyway, ms [default: 10000].
    #[arg(long)]
    drain_timeout_ms: Option<u64>,
}

/// TLS and authorization flags (`[security]` in TOML).
#[derive(Debug, clap::Args)]
struct SecurityArgs {
    /// Certificate chain (PEM) of the gRPC and Kafka listeners: turns TLS on.
    #[arg(long, env = "SLUICE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SLUICE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that signs client certificates; clients may then authenticate with one.
    #[arg(long, env = "SLUICE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Certificate (PEM) of the internal listener and of this broker's calls to others.
    #[arg(long, env = "SLUICE_INTERNAL_TLS_CERT")]
    internal_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --internal-tls-cert.
    #[arg(long, env = "SLUICE_INTERNAL_TLS_KEY")]
    internal_tls_key: Option<PathBuf>,
    /// CA (PEM) that signs every broker's internal certificate.
    #[arg(long, env = "SLUICE_INTERNAL_TLS_CA")]
    internal_tls_ca: Option<PathBuf>,
    /// Enforce ACLs and require an identity on every listener [default: off].
    #[arg(long, env = "SLUICE_AUTHORIZATION", value_enum)]
    authorization: Option<OnOff>,
    /// Principals that may do anything: User:alice,User:bob.
    #[arg(long, env = "SLUICE_SUPER_USERS", value_delimiter = ',')]
    super_users: Option<Vec<String>>,
}

/// A switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// Cluster membership flags (all unset: a single node with no quorum).
#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// This node's id, in [0, 1023] (required in a cluster).
    #[arg(long, env = "SLUICE_NODE_ID")]
    node_id: Option<u64>,
    /// The metadata quorum's voters and their internal addresses:
    /// 1@host:port,2@host:port,3@host:port. Setting it makes this node a
    /// cluster member (a voter if its id is listed, else a broker only).
    #[arg(long, env = "SLUICE_CONTROLLER_VOTERS")]
    controller_voters: Option<String>,
    /// Address of the internal listener (Raft, forwarding between brokers).
    #[arg(long, env = "SLUICE_INTERNAL_LISTEN")]
    internal_listen: Option<std::net::SocketAddr>,
    /// Internal address other nodes dial [default: this node's voter
    /// address, else --internal-listen].
    #[arg(long, env = "SLUICE_INTERNAL_ADVERTISE")]
    internal_advertise: Option<String>,
    /// Client address other brokers hand out for this one [default: --listen].
    #[arg(long, env = "SLUICE_ADVERTISE")]
    advertise: Option<String>,
    /// This broker's rack (replicas spread over racks first).
    #[arg(long, env = "SLUICE_RACK")]
    rack: Option<String>,
    /// Replicas per partition when a create names none [default: min(3, live brokers)].
    #[arg(long, env = "SLUICE_DEFAULT_REPLICATION_FACTOR")]
    default_replication_factor: Option<i32>,
    /// A broker that sends no heartbeat for this long is fenced, ms [default: 6000].
    #[arg(long)]
    broker_session_timeout_ms: Option<u64>,
}

impl ServeArgs {
    fn config(&self) -> Result<ServerConfig, sluice::error::Error> {
        let mut c = match &self.config {
            Some(path) => ServerConfig::from_toml_file(path)?,
            None => ServerConfig::default(),
        };
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = &self.metrics_listen {
            c.metrics_listen = parse_metrics_listen(v).map_err(sluice::error::Error::Config)?;
        }
        if let Some(v) = &self.kafka_listen {
            c.kafka_listen = parse_metrics_listen(v).map_err(sluice::error::Error::Config)?;
        }
        if let Some(v) = &self.kafka_advertise {
            c.kafka_advertise = Some(v.clone());
        }
        let s = &mut c.storage;
        if let Some(v) = self.segment_bytes {
            s.segment_bytes = v;
        }
        if let Some(v) = self.retention_ms {
            s.retention_ms = v;
        }
        if let Some(v) = self.retention_bytes {
            s.retention_bytes = v;
        }
        if let Some(v) = self.max_message_bytes {
            s.max_message_bytes = v;
        }
        if let Some(v) = self.flush {
            s.flush = v;
        }
        if let Some(v) = self.flush_interval_ms {
            s.flush_interval_ms = v;
        }
        if let Some(v) = self.flush_records {
            s.flush_records = v;
        }
        if let Some(v) = self.max_open_logs {
            s.max_open_logs = v;
        }
        if let Some(v) = self.io_threads {
            s.io_threads = v;
        }
        if let Some(v) = self.retention_check_interval_ms {
            s.retention_check_interval_ms = v;
        }
        if let Some(v) = self.timestamp_type {
            s.timestamp_type = v;
        }
        if let Some(v) = self.timestamp_before_max_ms {
            s.timestamp_before_max_ms = v;
        }
        if let Some(v) = self.timestamp_after_max_ms {
            s.timestamp_after_max_ms = v;
        }
        if let Some(v) = self.max_producers_per_partition {
            s.max_producers_per_partition = v;
        }
        if let Some(v) = self.producer_expiration_ms {
            s.producer_expiration_ms = v;
        }
        let l = &mut c.limits;
        let a = &self.limits;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = a.$f { l.$f = v; } )* };
        }
        set!(
            max_connections,
            max_concurrent_streams,
            max_calls_per_connection,
            max_request_bytes,
            max_reply_bytes_in_flight,
            keepalive_interval_ms,
            keepalive_timeout_ms,
            idle_timeout_ms,
            consume_open_timeout_ms,
            drain_timeout_ms
        );
        let g = &mut c.groups;
        if let Some(v) = self.group_session_timeout_ms {
            g.session_timeout_ms = v;
        }
        if let Some(v) = self.group_min_session_timeout_ms {
            g.min_session_timeout_ms = v;
        }
        if let Some(v) = self.group_heartbeat_interval_ms {
            g.heartbeat_interval_ms = v;
        }
        let k = &mut c.cluster;
        let a = &self.cluster;
        if a.node_id.is_some() {
            k.node_id = a.node_id;
        }
        if a.controller_voters.is_some() {
            k.controller_voters = a.controller_voters.clone();
        }
        if a.internal_listen.is_some() {
            k.internal_listen = a.internal_listen;
        }
        if a.internal_advertise.is_some() {
            k.internal_advertise = a.internal_advertise.clone();
        }
        if a.advertise.is_some() {
            k.advertise = a.advertise.clone();
        }
        if a.rack.is_some() {
            k.rack = a.rack.clone();
        }
        if a.default_replication_factor.is_some() {
            k.default_replication_factor = a.default_replication_factor;
        }
        if let Some(v) = a.broker_session_timeout_ms {
            k.session_timeout_ms = v;
        }
        let sec = &mut c.security;
        let a = &self.security;
        for (from, to) in [
            (&a.tls_cert, &mut sec.tls_cert),
            (&a.tls_key, &mut sec.tls_key),
            (&a.tls_ca, &mut sec.tls_ca),
            (&a.internal_tls_cert, &mut sec.internal_tls_cert),
            (&a.internal_tls_key, &mut sec.internal_tls_key),
            (&a.internal_tls_ca, &mut sec.internal_tls_ca),
        ] {
            if from.is_some() {
                to.clone_from(from);
            }
        }
        if let Some(v) = a.authorization {
            sec.authorization = v == OnOff::On;
        }
        if let Some(v) = &a.super_users {
            sec.super_users = v.iter().map(|u| u.trim().to_string()).collect();
        }
        c.broker_config()?;
        c.coordinator_config()?;
        c.cluster_config()?;
        c.security.access_settings()?;
        c.security.client_tls()?;
        c.security.internal_tls()?;
        Ok(c)
    }
}

fn init_tracing(json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = &cli.command {
        init_tracing(args.log_json);
        return match args.config().and_then(serve) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("sluice: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Client commands log only when asked to (RUST_LOG), to stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        init_tracing(false);
    }
    if let Command::Health(a) = &cli.command {
        return match cli::health::health(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: not healthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Cert(c) = cli.command {
        return match cli::cert::cert(c) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(_) | Command::Health(_) | Command::Cert(_) => Ok(()),
            Command::Topic(c) => cli::topic(c).await,
            Command::Group(c) => cli::group(c).await,
            Command::Cluster(c) => cli::cluster::cluster(c).await,
            Command::Queue(c) => cli::queue::queue(c).await,
            Command::Produce(a) => cli::produce(a).await,
            Command::Consume(a) => cli::consume(a).await,
            Command::Bench(b) => cli::bench::run(b).await,
            Command::User(c) => cli::security::user(c).await,
            Command::Token(c) => cli::security::token(c).await,
            Command::Acl(c) => cli::security::acl(c).await,
            Command::Quota(c) => cli::security::quota(c).await,
            Command::Whoami(c) => cli::security::whoami(c).await,
        }
    });
    // Subscriptions may still be open: don't wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft open-file limit to the hard one: many partitions mean
/// many files.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
}

fn serve(config: ServerConfig) -> Result<(), sluice::error::Error> {
    raise_fd_limit();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let metrics = match config.metrics_listen {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await?),
            None => None,
        };
        let internal = match (
            &config.cluster.controller_voters,
            config.cluster.internal_listen,
        ) {
            (Some(_), Some(a)) => Some(tokio::net::TcpListener::bind(a).await?),
            _ => None,
        };
        let kafka = match config.kafka_listen {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| {
                sluice::error::Error::Config(format!(
                    "binding the Kafka listener {a}: {e} (set --kafka-listen to another address, or off)"
                ))
            })?),
            None => None,
        };
        let listeners = sluice::server::Listeners {
            client: listener,
            metrics,
            internal,
            kafka,
        };
        sluice::server::run_node(config, listeners, shutdown_signal()).await
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; draining");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand's flags are unique and well formed (clap checks
    /// this only when a command is parsed).
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
