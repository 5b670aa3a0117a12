//! Sluice: a partitioned, durable commit-log server.
//!
//! # Layout
//!
//! Each layer depends only on the ones above it in this list:
//!
//! * [`storage`]: the partition log. Segments of record batches in
//!   memory-mapped files, sparse offset and time indexes, crash recovery,
//!   retention and flushing, and idempotent producers' sequences.
//!   Synchronous; knows nothing of tokio or gRPC.
//! * [`security`]: who a caller is and what it may do: Kafka's ACL model
//!   and the compiled authorizer, SCRAM credentials and exchange, hashed
//!   bearer tokens, quotas, TLS settings that reload from their files; the
//!   state as a pure state machine (in the metadata quorum in a cluster, in
//!   `security.json` on a single node). No tokio, no gRPC.
//! * [`cluster`]: the metadata quorum (openraft): the pure metadata state
//!   machine (brokers, topics with ids and replica placement), Raft's log
//!   and snapshots on a [`storage`] log, the nodes' internal gRPC service,
//!   bootstrap, broker registration, heartbeats and fencing. Knows nothing
//!   of the broker.
//! * [`broker`]: topics and partitions, produce and fetch, waiting readers,
//!   the partitioner. The one domain facade every transport calls. In a
//!   cluster it follows the committed metadata (`apply_metadata`) and
//!   replicates partitions: leaders, followers, the high watermark, ISR
//!   changes (`replication`).
//! * [`coordinator`]: consumer groups (membership, server-side sticky
//!   assignment, fencing) and committed offsets, stored in the broker's own
//!   internal topic `__consumer_offsets`; work queues (share groups: locks,
//!   acknowledgements, redelivery, dead letters) in `__share_group_state`.
//!   In a cluster both topics replicate and each shard runs on the leader of
//!   its partition.
//! * [`api`]: transports. [`api::grpc`] holds the tonic services; each handler
//!   decodes, validates, calls the domain and encodes. Its codec checks
//!   request counts before decoding, and `conn` bounds connections. `reply`
//!   encodes Fetch and Subscribe replies straight from the stored batches,
//!   and `batches` sends FetchBatches replies without a copy; `auth`
//!   authenticates every call and holds every method's authorization
//!   rule, and `security` serves users, tokens, ACLs and quotas. In a
//!   cluster, `routing` forwards requests to partition leaders and admin
//!   changes to the quorum, `replication` carries followers' fetches and
//!   ISR proposals, and `remote` reads partitions led elsewhere.
//! * [`server`]: the composition root. Takes a bound listener and a shutdown
//!   future, so tests bind `127.0.0.1:0` and shut down on their own terms.
//! * [`config`] and [`error`]: server settings and the top-level error type.
//! * [`dial`]: how nodes and clients open connections: name lookups with a
//!   deadline, and fallbacks (the last address a name resolved to, the
//!   address a peer's own calls came from) for names that stop resolving.
//! * [`client`]: the Rust client (admin, batching idempotent producer,
//!   fetch, stored-batch reads and subscribe, group consumer, queue
//!   worker) that the CLI, tests
//!   and benches use; it sends each partition's requests to its leader
//!   (from the `Metadata` RPC).
//!
//! `src/main.rs` is the `sluice` binary: `sluice serve` runs the server, and
//! the client commands (`topic`, `produce`, `consume`, `group`, `queue`,
//! `cluster`, `user`, `token`, `acl`, `quota`, `cert`, `bench`) live in
//! `src/cli/` on top of [`client`].

pub mod api;
pub mod broker;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod dial;
pub mod error;
pub mod security;
pub mod server;
pub mod storage;

/// Version of this build, as reported by the server.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
