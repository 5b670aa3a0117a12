//! Server settings with embedded defaults, readable from a TOML file.
//!
//! ```toml
//! data_dir = "./sluice-data"
//! listen = "127.0.0.1:9400"
//! metrics_listen = "127.0.0.1:9401"   # "off" disables the endpoint
//! kafka_listen = "127.0.0.1:9092"     # Kafka wire protocol; "off" disables it
//! kafka_advertise = "n1:9092"         # address Kafka clients are told; default: kafka_listen
//!
//! [storage]
//! segment_bytes = 1073741824
//! segment_ms = 604800000              # -1: roll by size only
//! retention_ms = 604800000            # -1: keep forever
//! retention_bytes = -1                # per partition; -1: no limit
//! max_message_bytes = 1060864        # 1 MiB + 12 KiB
//! flush = "interval"                  # interval | every-append | every-records | manual
//! flush_interval_ms = 1000
//! flush_records = 10000
//! index_interval_bytes = 4096
//! preallocate_bytes = 1048576
//! max_open_logs = 4096
//! retention_check_interval_ms = 300000
//! io_threads = 4                      # threads that run syncs, in parallel
//! timestamp_type = "create-time"      # or "log-append-time"
//! timestamp_before_max_ms = -1        # create-time records this far back: refused
//! timestamp_after_max_ms = 3600000    # ... this far ahead: refused
//! max_producers_per_partition = 10000 # idempotent producers remembered
//! producer_expiration_ms = 86400000   # forget a producer idle this long
//!
//! [groups]
//! session_timeout_ms = 10000          # members that ask for none
//! min_session_timeout_ms = 1000       # range members may ask for
//! max_session_timeout_ms = 300000
//! heartbeat_interval_ms = 3000
//! rebalance_timeout_ms = 60000        # to confirm a revocation
//! offsets_partitions = 4              # when __consumer_offsets is created
//! queue_state_partitions = 4          # shards of work-queue state (grows, never shrinks)
//! offsets_segment_bytes = 16777216
//! snapshot_min_records = 100000
//!
//! [limits]                            # what one client may take
//! max_connections = 10000             # open at once; more are closed at accept
//! max_concurrent_streams = 256        # HTTP/2 streams per connection
//! max_calls_per_connection = 256      # calls being answered per connection
//! max_request_bytes = 4194304         # largest produce request on the wire
//! max_reply_bytes_in_flight = 268435456  # fetch replies not yet sent, in all
//! keepalive_interval_ms = 30000       # HTTP/2 ping interval; 0: none
//! keepalive_timeout_ms = 10000        # close if a ping is not answered
//! idle_timeout_ms = 600000            # close connections without calls; 0: never
//! consume_open_timeout_ms = 10000     # a Consume stream must open within this
//! drain_timeout_ms = 10000            # shutdown waits this long for calls
//!
//! [cluster]                           # absent: a single node, no quorum
//! node_id = 1                         # --node-id
//! controller_voters = "1@n1:9500,2@n2:9500,3@n3:9500"  # --controller-voters
//! internal_listen = "0.0.0.0:9500"    # --internal-listen (Raft and forwarding)
//! internal_advertise = "n1:9500"      # default: this node's voter address
//! advertise = "n1:9400"               # --advertise (client address); default: listen
//! rack = "eu-1a"                      # --rack
//! default_replication_factor = 3      # default: min(3, live brokers)
//! session_timeout_ms = 6000           # a broker silent this long is fenced
//! broker_heartbeat_ms = 250
//! election_timeout_ms = 600           # Raft: elections after 0.6-1.2 s
//! raft_heartbeat_ms = 200             # also each Raft append's deadline
//! snapshot_every = 5000               # metadata entries between snapshots
//! leader_balance_interval_ms = 30000  # preferred leaders back this often; 0: never
//!
//! [security]                          # see README "Security"
//! tls_cert = "/etc/sluice/tls.crt"    # --tls-cert: TLS on the gRPC and Kafka listeners
//! tls_key = "/etc/sluice/tls.key"     # --tls-key
//! tls_ca = "/etc/sluice/ca.crt"       # --tls-ca: verify client certificates (mTLS principals)
//! internal_tls_cert = "/etc/sluice/node.crt"  # --internal-tls-cert: mTLS between brokers
//! internal_tls_key = "/etc/sluice/node.key"   # --internal-tls-key
//! internal_tls_ca = "/etc/sluice/ca.crt"      # --internal-tls-ca (required with the two above)
//! authorization = false               # --authorization on|off: enforce ACLs
//! super_users = ["User:admin"]        # --super-users User:a,User:b
//! tls_reload_interval_ms = 10000      # certificate files are checked this often
//!
//! [replication]                       # in a cluster
//! replica_lag_time_max_ms = 10000     # a follower behind this long leaves the ISR
//! ack_timeout_ms = 30000              # acks=ALL waits this long for the ISR
//! ack_requires_fsync = false          # acks=ALL also waits for every ISR member's sync
//! fetch_wait_ms = 500                 # a follower's fetch waits this long for records
//! fetch_max_bytes = 1048576           # per partition per fetch
//! ```

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

mod security;

pub use security::SecurityConfig;

use crate::broker::BrokerConfig;
use crate::coordinator::queues::QueueStateConfig;
use crate::coordinator::{CoordinatorConfig, Limits};
use crate::error::Error;
use crate::storage::{FlushPolicy, LogConfig};

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9400";
/// Default metrics listen address.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9401";
/// Default Kafka-protocol listen address.
pub const DEFAULT_KAFKA_LISTEN: &str = "127.0.0.1:9092";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./sluice-data";

/// Settings of one server process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where topics and partition logs live.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` and `/healthz` address; `off` disables it.
    #[serde(deserialize_with = "de_metrics_listen")]
    pub metrics_listen: Option<SocketAddr>,
    /// Kafka wire-protocol address; `off` disables the listener.
    #[serde(deserialize_with = "de_metrics_listen")]
    pub kafka_listen: Option<SocketAddr>,
    /// The `host:port` Kafka clients are told to dial this broker at
    /// (default: the bound Kafka address).
    pub kafka_advertise: Option<String>,
    /// Storage defaults for every topic.
    pub storage: StorageSettings,
    /// Consumer group settings.
    pub groups: GroupSettings,
    /// Connection and request limits.
    pub limits: LimitSettings,
    /// Cluster membership (off unless `controller_voters` is set).
    pub cluster: ClusterSettings,
    /// Partition replication (in a cluster).
    pub replication: ReplicationSettings,
    /// TLS, authentication and authorization.
    pub security: SecurityConfig,
}

/// Partition replication; see README ("Replication").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationSettings {
    /// A follower that has not caught up for this long leaves the ISR, ms.
    pub replica_lag_time_max_ms: u64,
    /// Longest an acks=ALL produce waits for the ISR, ms.
    pub ack_timeout_ms: u64,
    /// acks=ALL also waits until every ISR member synced the records.
    pub ack_requires_fsync: bool,
    /// Longest a follower's fetch waits for records, ms.
    pub fetch_wait_ms: u64,
    /// Record bytes per partition per follower fetch.
    pub fetch_max_bytes: usize,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        let d = crate::broker::ReplicationConfig::default();
        Self {
            replica_lag_time_max_ms: d.replica_lag_time_max.as_millis() as u64,
            ack_timeout_ms: d.ack_timeout.as_millis() as u64,
            ack_requires_fsync: d.ack_requires_fsync,
            fetch_wait_ms: d.fetch_wait.as_millis() as u64,
            fetch_max_bytes: d.fetch_max_bytes,
        }
    }
}

impl ReplicationSettings {
    fn to_config(&self) -> Result<crate::broker::ReplicationConfig, Error> {
        let check = |name: &str, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(Duration::from_millis(v))
            } else {
                Err(Error::Config(format!(
                    "replication.{name} {v} must be in [{min}, {max}]"
                )))
            }
        };
        if !(1024..=64 * 1024 * 1024).contains(&self.fetch_max_bytes) {
            return Err(Error::Config(format!(
                "replication.fetch_max_bytes {} must be in [1024, 67108864]",
                self.fetch_max_bytes
            )));
        }
        Ok(crate::broker::ReplicationConfig {
            replica_lag_time_max: check(
                "replica_lag_time_max_ms",
                self.replica_lag_time_max_ms,
                100,
                3_600_000,
            )?,
            ack_timeout: check("ack_timeout_ms", self.ack_timeout_ms, 100, 3_600_000)?,
            ack_requires_fsync: self.ack_requires_fsync,
            fetch_wait: check("fetch_wait_ms", self.fetch_wait_ms, 0, 5_000)?,
            fetch_max_bytes: self.fetch_max_bytes,
        })
    }
}

/// How a node joins a cluster; see README ("Cluster").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's id, in [0, 1023].
    pub node_id: Option<u64>,
    /// The controller voters: `id@host:port,...` (their internal
    /// addresses). Set: cluster mode.
    pub controller_voters: Option<String>,
    /// Where the internal service listens.
    pub internal_listen: Option<SocketAddr>,
    /// The internal address other nodes dial (default: this node's entry
    /// in `controller_voters`, else `internal_listen`).
    pub internal_advertise: Option<String>,
    /// The client address handed to clients (default: `listen`).
    pub advertise: Option<String>,
    /// This broker's rack.
    pub rack: Option<String>,
    /// Replicas per partition when a create names none (default: min(3,
    /// live brokers)).
    pub default_replication_factor: Option<i32>,
    /// A broker that does not heartbeat for this long is fenced, ms.
    pub session_timeout_ms: u64,
    /// Broker heartbeat interval, ms.
    pub broker_heartbeat_ms: u64,
    /// Raft election timeout (the range is this to twice this), ms.
    pub election_timeout_ms: u64,
    /// Raft leader heartbeat, ms.
    pub raft_heartbeat_ms: u64,
    /// Metadata entries between snapshots.
    pub snapshot_every: u64,
    /// How often the controller moves partitions back to their preferred
    /// leaders, ms; 0: never by itself.
    pub leader_balance_interval_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            node_id: None,
            controller_voters: None,
            internal_listen: None,
            internal_advertise: None,
            advertise: None,
            rack: None,
            default_replication_factor: None,
            session_timeout_ms: 6000,
            broker_heartbeat_ms: 250,
            election_timeout_ms: 600,
            raft_heartbeat_ms: 200,
            snapshot_every: 5000,
            leader_balance_interval_ms: 30_000,
        }
    }
}

/// Largest node id in a cluster: producer ids are striped by node id.
pub const MAX_CLUSTER_NODE_ID: u64 = 1023;

/// Parses `--controller-voters`: `id@host:port` entries separated by commas.
pub fn parse_voters(s: &str) -> Result<std::collections::BTreeMap<u64, String>, String> {
    let mut out = std::collections::BTreeMap::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry.split_once('@').ok_or_else(|| {
            format!("controller voter '{entry}' must be id@host:port (e.g. 1@node-1:9500)")
        })?;
        let id: u64 = id
            .parse()
            .map_err(|_| format!("controller voter '{entry}': id '{id}' is not a number in [0, {MAX_CLUSTER_NODE_ID}]"))?;
        if id > MAX_CLUSTER_NODE_ID {
            return Err(format!(
                "controller voter '{entry}': id {id} must be in [0, {MAX_CLUSTER_NODE_ID}]"
            ));
        }
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!(
                "controller voter '{entry}': '{addr}' must be host:port"
            ));
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(format!("controller voter id {id} is listed twice"));
        }
    }
    if out.is_empty() {
        return Err("--controller-voters lists no voter".into());
    }
    Ok(out)
}

impl ServerConfig {
    /// The cluster settings of this node, or `None` for a single node.
    pub fn cluster_config(&self) -> Result<Option<crate::cluster::ClusterConfig>, Error> {
        let c = &self.cluster;
        let Some(voters) = &c.controller_voters else {
            return Ok(None);
        };
        let voters = parse_voters(voters).map_err(Error::Config)?;
        let node_id = c.node_id.ok_or_else(|| {
            Error::Config("--node-id is required with --controller-voters".into())
        })?;
        if node_id > MAX_CLUSTER_NODE_ID {
            return Err(Error::Config(format!(
                "--node-id {node_id} must be in [0, {MAX_CLUSTER_NODE_ID}]"
            )));
        }
        let internal_listen = c.internal_listen.ok_or_else(|| {
            Error::Config("--internal-listen is required with --controller-voters".into())
        })?;
        let internal_address = match c
            .internal_advertise
            .clone()
            .or_else(|| voters.get(&node_id).cloned())
        {
            Some(a) => a,
            None if internal_listen.ip().is_unspecified() => {
                return Err(Error::Config(format!(
                    "node {node_id} is not a voter and --internal-listen {internal_listen} is a wildcard address: set --internal-advertise HOST:PORT (the address other nodes dial)"
                )))
            }
            None => internal_listen.to_string(),
        };
        let advertise = c
            .advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string());
        if c.session_timeout_ms < 2 * c.broker_heartbeat_ms.max(1) {
            return Err(Error::Config(format!(
                "cluster session_timeout_ms {} must be at least twice broker_heartbeat_ms {}",
                c.session_timeout_ms, c.broker_heartbeat_ms
            )));
        }
        if c.election_timeout_ms <= c.raft_heartbeat_ms {
            return Err(Error::Config(format!(
                "cluster election_timeout_ms {} must be above raft_heartbeat_ms {}",
                c.election_timeout_ms, c.raft_heartbeat_ms
            )));
        }
        if let Some(rf) = c.default_replication_factor {
            if rf < 1 {
                return Err(Error::Config(format!(
                    "default_replication_factor {rf} must be at least 1"
                )));
            }
        }
        let mut cc = crate::cluster::ClusterConfig::new(
            node_id,
            self.data_dir.join("__cluster_metadata"),
            voters,
            internal_address,
            advertise,
        );
        cc.rack = c.rack.clone();
        cc.default_replication_factor = c.default_replication_factor;
        cc.leader_balance_interval = (c.leader_balance_interval_ms > 0)
            .then(|| Duration::from_millis(c.leader_balance_interval_ms));
        cc.session_timeout = Duration::from_millis(c.session_timeout_ms);
        cc.broker_heartbeat = Duration::from_millis(c.broker_heartbeat_ms.max(1));
        cc.raft_heartbeat = Duration::from_millis(c.raft_heartbeat_ms.max(1));
        cc.election_timeout = (
            Duration::from_millis(c.election_timeout_ms),
            Duration::from_millis(c.election_timeout_ms * 2),
        );
        cc.snapshot_every = c.snapshot_every.max(1);
        Ok(Some(cc))
    }
}

/// What one client may take from the server; see README ("Limits").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Connections open at once; a connection over the cap is closed as
    /// soon as it is accepted.
    pub max_connections: usize,
    /// HTTP/2 streams (calls) one connection may have open.
    pub max_concurrent_streams: u32,
    /// Calls one connection may have waiting for their answer's headers
    /// (further calls queue until one is answered).
    pub max_calls_per_connection: usize,
    /// Largest `Produce` request (or `ProduceStream` message) on the wire;
    /// the other services take at most 1 MiB.
    pub max_request_bytes: usize,
    /// Bytes of fetch replies encoded but not yet sent, for the whole
    /// server; a reply waits for room (clients that do not read their
    /// replies cannot pin more).
    pub max_reply_bytes_in_flight: usize,
    /// Interval of HTTP/2 keepalive pings, ms; 0 sends none.
    pub keepalive_interval_ms: u64,
    /// A connection whose ping is not answered within this is closed, ms.
    pub keepalive_timeout_ms: u64,
    /// A connection with no call in flight for this long is closed, ms;
    /// 0 never.
    pub idle_timeout_ms: u64,
    /// A `Consume` stream that sends no `open` request within this ends
    /// with DEADLINE_EXCEEDED, ms.
    pub consume_open_timeout_ms: u64,
    /// After a shutdown signal, calls in flight get this long to finish;
    /// then the broker closes its logs cleanly and exits anyway, ms.
    pub drain_timeout_ms: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_concurrent_streams: 256,
            max_calls_per_connection: 256,
            max_request_bytes: 4 * 1024 * 1024,
            max_reply_bytes_in_flight: 256 * 1024 * 1024,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            idle_timeout_ms: 600_000,
            consume_open_timeout_ms: 10_000,
            drain_timeout_ms: 10_000,
        }
    }
}

/// Smallest `max_request_bytes`: a default-sized batch and its framing.
pub const MIN_REQUEST_BYTES: usize = 64 * 1024;
/// Room a produce request needs beyond its largest batch (request and
/// record framing).
pub const REQUEST_SLACK_BYTES: usize = 64 * 1024;

impl LimitSettings {
    /// Checks each value against its valid range.
    pub fn validate(&self) -> Result<(), Error> {
        let range = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "limits.{name} {v} must be in [{lo}, {hi}]"
                )))
            }
        };
        range("max_connections", self.max_connections as u64, 1, 1 << 20)?;
        range(
            "max_concurrent_streams",
            u64::from(self.max_concurrent_streams),
            1,
            1 << 16,
        )?;
        range(
            "max_calls_per_connection",
            self.max_calls_per_connection as u64,
            1,
            1 << 16,
        )?;
        range(
            "max_request_bytes",
            self.max_request_bytes as u64,
            MIN_REQUEST_BYTES as u64,
            1 << 30,
        )?;
        range(
            "keepalive_timeout_ms",
            self.keepalive_timeout_ms,
            1,
            3_600_000,
        )?;
        range(
            "consume_open_timeout_ms",
            self.consume_open_timeout_ms,
            1,
            3_600_000,
        )?;
        range("drain_timeout_ms", self.drain_timeout_ms, 0, 3_600_000)?;
        Ok(())
    }

    /// `ms` as a duration, or none for 0.
    pub fn optional(ms: u64) -> Option<Duration> {
        (ms > 0).then(|| Duration::from_millis(ms))
    }
}
/// Consumer group settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupSettings {
    /// Session timeout of members that ask for none, ms.
    pub session_timeout_ms: i32,
    /// Smallest session timeout a member may ask for, ms.
    pub min_session_timeout_ms: i32,
    /// Largest session timeout a member may ask for, ms.
    pub max_session_timeout_ms: i32,
    /// Heartbeat interval, ms (at most a third of a member's session).
    pub heartbeat_interval_ms: i32,
    /// Time a member has to confirm a revocation, ms.
    pub rebalance_timeout_ms: i32,
    /// Partitions of `__consumer_offsets` when it is created.
    pub offsets_partitions: i32,
    /// Segment size of `__consumer_offsets`.
    pub offsets_segment_bytes: i64,
    /// Partitions (shards) of `__share_group_state`, the work queues'
    /// state; a smaller existing topic grows to this many at start.
    pub queue_state_partitions: i32,
    /// Records a coordinator shard writes before it snapshots (and more
    /// than twice its live keys).
    pub snapshot_min_records: u64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        let c = CoordinatorConfig::default();
        Self {
            session_timeout_ms: c.limits.default_session_timeout_ms,
            min_session_timeout_ms: c.limits.min_session_timeout_ms,
            max_session_timeout_ms: c.limits.max_session_timeout_ms,
            heartbeat_interval_ms: c.limits.heartbeat_interval_ms,
            rebalance_timeout_ms: c.limits.default_rebalance_timeout_ms,
            offsets_partitions: c.offsets_partitions,
            offsets_segment_bytes: c.offsets_segment_bytes,
            queue_state_partitions: QueueStateConfig::default().partitions,
            snapshot_min_records: c.snapshot_min_records,
        }
    }
}

/// When appended records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FlushMode {
    /// Every `flush_interval_ms`.
    Interval,
    /// Before every append is acknowledged (shared syncs: group commit).
    EveryAppend,
    /// Every `flush_records` records.
    EveryRecords,
    /// Only for acks=ALL producers, and the operating system's write-back.
    Manual,
}

/// Storage defaults (topics may override retention, segment size and
/// message size).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// Segment file size.
    pub segment_bytes: u64,
    /// Roll segments this old, ms; -1 never.
    pub segment_ms: i64,
    /// Delete segments older than this, ms; -1 never.
    pub retention_ms: i64,
    /// Per-partition size limit; -1 none.
    pub retention_bytes: i64,
    /// Largest batch, bytes.
    pub max_message_bytes: usize,
    /// Flush policy.
    pub flush: FlushMode,
    /// Interval of `flush = "interval"`, ms.
    pub flush_interval_ms: u64,
    /// Records between flushes of `flush = "every-records"`.
    pub flush_records: u64,
    /// Bytes between sparse index entries.
    pub index_interval_bytes: u64,
    /// First preallocation of a new segment file.
    pub preallocate_bytes: u64,
    /// Partition logs open at most.
    pub max_open_logs: usize,
    /// How often retention runs, ms.
    pub retention_check_interval_ms: u64,
    /// Threads that run syncs (several partitions at a time).
    pub io_threads: usize,
    /// Whose clock stamps records of topics that set nothing.
    pub timestamp_type: crate::broker::TimestampType,
    /// Create-time records stamped more than this before the broker's
    /// clock are refused, ms; -1 no limit.
    pub timestamp_before_max_ms: i64,
    /// Create-time records stamped more than this after the broker's clock
    /// are refused, ms; -1 no limit.
    pub timestamp_after_max_ms: i64,
    /// Idempotent producers one partition remembers at most.
    pub max_producers_per_partition: usize,
    /// An idempotent producer's state is forgotten after it has not
    /// appended for this long, ms (Kafka's producer.id.expiration.ms).
    pub producer_expiration_ms: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        let log = BrokerConfig::new(DEFAULT_DATA_DIR);
        let opt = |v: Option<u64>| v.map_or(-1, |v| v as i64);
        Self {
            segment_bytes: log.log.segment_bytes,
            segment_ms: opt(log.log.segment_ms),
            retention_ms: opt(log.log.retention_ms),
            retention_bytes: opt(log.log.retention_bytes),
            max_message_bytes: log.log.max_batch_bytes,
            flush: FlushMode::Interval,
            flush_interval_ms: 1000,
            flush_records: 10_000,
            index_interval_bytes: log.log.index_interval_bytes,
            preallocate_bytes: log.log.initial_preallocate_bytes,
            max_open_logs: log.max_open_logs,
            retention_check_interval_ms: log.retention_check_interval.as_millis() as u64,
            io_threads: log.io_threads,
            timestamp_type: log.timestamps.kind,
            timestamp_before_max_ms: opt(log.timestamps.before_max_ms),
            timestamp_after_max_ms: opt(log.timestamps.after_max_ms),
            max_producers_per_partition: log.log.max_producers,
            producer_expiration_ms: log.log.producer_expiration_ms,
        }
    }
}

fn de_metrics_listen<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    parse_metrics_listen(&s).map_err(serde::de::Error::custom)
}

/// Parses a listen address of an optional endpoint (metrics, Kafka);
/// `off` (or empty) disables it.
pub fn parse_metrics_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    match s.trim() {
        "" | "off" | "none" => Ok(None),
        a => a
            .parse()
            .map(Some)
            .map_err(|e| format!("listen address '{a}': {e} (use host:port or 'off')")),
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: SocketAddr::from(([127, 0, 0, 1], 9400)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9401))),
            kafka_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9092))),
            kafka_advertise: None,
            storage: StorageSettings::default(),
            groups: GroupSettings::default(),
            limits: LimitSettings::default(),
            cluster: ClusterSettings::default(),
            replication: ReplicationSettings::default(),
            security: SecurityConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Reads a TOML file; unset keys keep their defaults, unknown keys are
    /// errors.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The coordinator settings these describe, checked.
    pub fn coordinator_config(&self) -> Result<CoordinatorConfig, Error> {
        let g = &self.groups;
        if !(1..=g.max_session_timeout_ms).contains(&g.min_session_timeout_ms) {
            return Err(Error::Config(format!(
                "groups.min_session_timeout_ms {} must be in [1, max_session_timeout_ms {}]",
                g.min_session_timeout_ms, g.max_session_timeout_ms
            )));
        }
        if !(g.min_session_timeout_ms..=g.max_session_timeout_ms).contains(&g.session_timeout_ms) {
            return Err(Error::Config(format!(
                "groups.session_timeout_ms {} must be in [{}, {}]",
                g.session_timeout_ms, g.min_session_timeout_ms, g.max_session_timeout_ms
            )));
        }
        if g.heartbeat_interval_ms < 1 || g.rebalance_timeout_ms < 1 {
            return Err(Error::Config(
                "groups.heartbeat_interval_ms and rebalance_timeout_ms must be at least 1".into(),
            ));
        }
        if !(1..=1000).contains(&g.offsets_partitions) {
            return Err(Error::Config(format!(
                "groups.offsets_partitions {} must be in [1, 1000]",
                g.offsets_partitions
            )));
        }
        if !(1..=1000).contains(&g.queue_state_partitions) {
            return Err(Error::Config(format!(
                "groups.queue_state_partitions {} must be in [1, 1000]",
                g.queue_state_partitions
            )));
        }
        if g.offsets_segment_bytes < 64 * 1024
            || g.offsets_segment_bytes as u64 > crate::storage::MAX_SEGMENT_BYTES
        {
            return Err(Error::Config(format!(
                "groups.offsets_segment_bytes {} must be in [65536, {}]",
                g.offsets_segment_bytes,
                crate::storage::MAX_SEGMENT_BYTES
            )));
        }
        Ok(CoordinatorConfig {
            limits: Limits {
                default_session_timeout_ms: g.session_timeout_ms,
                min_session_timeout_ms: g.min_session_timeout_ms,
                max_session_timeout_ms: g.max_session_timeout_ms,
                heartbeat_interval_ms: g.heartbeat_interval_ms,
                default_rebalance_timeout_ms: g.rebalance_timeout_ms,
            },
            offsets_partitions: g.offsets_partitions,
            offsets_segment_bytes: g.offsets_segment_bytes,
            snapshot_min_records: g.snapshot_min_records,
            ..CoordinatorConfig::default()
        })
    }

    /// How work-queue state is kept (checked by
    /// [`Config::coordinator_config`]).
    pub fn queue_state_config(&self) -> QueueStateConfig {
        QueueStateConfig {
            partitions: self.groups.queue_state_partitions,
            snapshot_min_records: self.groups.snapshot_min_records,
        }
    }

    /// The broker settings these describe, checked.
    pub fn broker_config(&self) -> Result<BrokerConfig, Error> {
        let s = &self.storage;
        let pos = |name: &str, v: i64| -> Result<Option<u64>, Error> {
            match v {
                -1 => Ok(None),
                v if v > 0 => Ok(Some(v as u64)),
                v => Err(Error::Config(format!(
                    "{name} {v} must be -1 or at least 1"
                ))),
            }
        };
        let flush = match s.flush {
            FlushMode::Interval if s.flush_interval_ms > 0 => {
                FlushPolicy::Interval(Duration::from_millis(s.flush_interval_ms))
            }
            FlushMode::Interval => {
                return Err(Error::Config("flush_interval_ms must be at least 1".into()))
            }
            FlushMode::EveryAppend => FlushPolicy::EveryAppend,
            FlushMode::EveryRecords => FlushPolicy::EveryRecords(s.flush_records),
            FlushMode::Manual => FlushPolicy::Manual,
        };
        let mut b = BrokerConfig::new(&self.data_dir);
        b.log = LogConfig {
            segment_bytes: s.segment_bytes,
            segment_ms: pos("segment_ms", s.segment_ms)?,
            // A batch never spans segments: small segments cap it.
            max_batch_bytes: s.max_message_bytes.min(s.segment_bytes as usize),
            index_interval_bytes: s.index_interval_bytes,
            initial_preallocate_bytes: s.preallocate_bytes,
            retention_ms: pos("retention_ms", s.retention_ms)?,
            retention_bytes: pos("retention_bytes", s.retention_bytes)?,
            flush,
            ..b.log
        };
        b.log.validate().map_err(|e| Error::Config(e.to_string()))?;
        if s.max_open_logs == 0 {
            return Err(Error::Config("max_open_logs must be at least 1".into()));
        }
        b.max_open_logs = s.max_open_logs;
        if !(1..=256).contains(&s.io_threads) {
            return Err(Error::Config(format!(
                "io_threads {} must be in [1, 256]",
                s.io_threads
            )));
        }
        b.io_threads = s.io_threads;
        if s.retention_check_interval_ms == 0 {
            return Err(Error::Config(
                "retention_check_interval_ms must be at least 1".into(),
            ));
        }
        b.retention_check_interval = Duration::from_millis(s.retention_check_interval_ms);
        b.replication = self.replication.to_config()?;
        self.limits.validate()?;
        b.max_message_limit = self.limits.max_request_bytes - REQUEST_SLACK_BYTES;
        if s.max_message_bytes > b.max_message_limit {
            return Err(Error::Config(format!(
                "max_message_bytes {} must be at most limits.max_request_bytes less 64 KiB ({}): a batch must fit in one request",
                s.max_message_bytes, b.max_message_limit
            )));
        }
        let bound = |name: &str, v: i64| match v {
            -1 => Ok(None),
            v if v >= 0 => Ok(Some(v as u64)),
            v => Err(Error::Config(format!(
                "{name} {v} must be -1 (no limit) or at least 0"
            ))),
        };
        b.timestamps = crate::broker::TimestampPolicy {
            kind: s.timestamp_type,
            before_max_ms: bound("timestamp_before_max_ms", s.timestamp_before_max_ms)?,
            after_max_ms: bound("timestamp_after_max_ms", s.timestamp_after_max_ms)?,
        };
        if s.max_producers_per_partition == 0 {
            return Err(Error::Config(
                "max_producers_per_partition must be at least 1".into(),
            ));
        }
        b.log.max_producers = s.max_producers_per_partition;
        b.log.producer_expiration_ms = s.producer_expiration_ms;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Kubernetes ConfigMap's settings parse, and turn TLS, mutual TLS
    /// between brokers and authorization on.
    #[test]
    fn the_kubernetes_settings_parse_and_secure_every_listener() {
        let yaml = include_str!("../../deploy/kubernetes/configmap.yaml");
        let toml: String = yaml
            .lines()
            .skip_while(|l| !l.contains("sluice.toml: |"))
            .skip(1)
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let c: ServerConfig = toml::from_str(&toml).expect("the ConfigMap's TOML");
        assert!(c.security.authorization);
        assert!(c.security.client_tls().expect("tls").is_some());
        let internal = c.security.internal_tls().expect("internal tls");
        assert!(internal.is_some_and(|f| f.ca.is_some()));
        assert_eq!(
            c.security.access_settings().expect("settings").super_users,
            vec!["User:admin".to_string()]
        );
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c: ServerConfig = toml::from_str(
            "listen = \"0.0.0.0:9500\"\nmetrics_listen = \"off\"\n[storage]\nsegment_bytes = 1048576\nflush = \"every-append\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9500);
        assert_eq!(c.metrics_listen, None);
        let b = c.broker_config().unwrap();
        assert_eq!(b.log.segment_bytes, 1 << 20);
        assert_eq!(b.log.flush, FlushPolicy::EveryAppend);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));

        let e = toml::from_str::<ServerConfig>("[storage]\nsegment_byte = 5\n").unwrap_err();
        assert!(e.to_string().contains("segment_byte"), "{e}");
        let bad: ServerConfig = toml::from_str("[storage]\nsegment_bytes = 10\n").unwrap();
        assert!(bad.broker_config().is_err());
    }

    #[test]
    fn cluster_settings_name_the_rule_they_break() {
        let v = parse_voters("1@n1:9500, 2@n2:9500,3@n3:9500").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[&2], "n2:9500");
        for (bad, says) in [
            ("1@n1:9500,1@n2:9500", "listed twice"),
            ("n1:9500", "must be id@host:port"),
            ("x@n1:9500", "is not a number"),
            ("2000@n1:9500", "must be in [0, 1023]"),
            ("1@n1", "must be host:port"),
            ("", "lists no voter"),
        ] {
            let e = parse_voters(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let mut c = ServerConfig::default();
        assert!(c.cluster_config().unwrap().is_none(), "no voters: one node");
        c.cluster.controller_voters = Some("1@n1:9500,2@n2:9500".into());
        let e = c.cluster_config().unwrap_err().to_string();
        assert!(e.contains("--node-id is required"), "{e}");
        c.cluster.node_id = Some(3);
        c.cluster.internal_listen = Some("0.0.0.0:9500".parse().unwrap());
        let e = c.cluster_config().unwrap_err().to_string();
        assert!(e.contains("--internal-advertise"), "{e}");
        c.cluster.internal_advertise = Some("n3:9500".into());
        let cc = c.cluster_config().unwrap().expect("cluster");
        assert_eq!(cc.internal_address, "n3:9500");
        assert_eq!(cc.dir, c.data_dir.join("__cluster_metadata"));
        c.cluster.node_id = Some(1);
        c.cluster.internal_advertise = None;
        let cc = c.cluster_config().unwrap().expect("cluster");
        assert_eq!(cc.internal_address, "n1:9500", "a voter's own entry");
    }
}
