//! The cluster's metadata layer: a Raft quorum (openraft) that owns the
//! metadata image, as Kafka's KRaft controllers do.
//!
//! * [`metadata`]: the pure state machine (brokers, topics with ids and
//!   replica placement, producer-id blocks) and the commands that change it.
//! * [`store`]: openraft's log storage on Sluice's own partition log
//!   (`__cluster_metadata/`), and the state machine with its snapshots.
//! * [`transport`]: the internal gRPC service (Raft messages, forwarded
//!   proposals, broker heartbeats) and openraft's network on top of it.
//! * `node`: one node's Raft instance, static-voter bootstrap, proposals
//!   with forwarding to the active controller, the broker's registration and
//!   heartbeats, and the controller's session checks (fencing).
//!
//! This layer knows nothing of the broker: the broker follows the image
//! through [`Cluster::subscribe`] and reports how far it has applied it
//! with [`Cluster::mark_synced`].

pub mod metadata;
mod node;
pub mod store;
pub mod transport;

use std::io::Cursor;

pub use metadata::{
    BrokerRegistration, Command, MetadataImage, NodeId, Outcome, PartitionAssignment, Refusal,
    TopicMetadata,
};
pub use node::{Cluster, ClusterConfig, NodeStatus, Route};

openraft::declare_raft_types!(
    /// openraft's types for the metadata quorum.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Why a cluster operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// The quorum refused the command; the message names the rule.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// No active controller right now (an election is under way, or too
    /// few voters are reachable). Retriable.
    #[error("no active controller: the metadata quorum has no leader ({0}); retry shortly")]
    NoController(String),
    /// The metadata did not reach this node in time.
    #[error("this node has not caught up with the committed metadata within {0} ms; retry")]
    NotCaughtUp(u64),
    /// The request reached a broker that does not lead the partition.
    #[error("broker {here} does not lead partition {partition} of topic '{topic}'{}", leader_hint(.leader))]
    NotLeader {
        /// This broker.
        here: NodeId,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The leader as this broker knows it: id and client address.
        leader: Option<(NodeId, String)>,
    },
    /// The partition has no live leader (its only in-sync replica is down).
    #[error("partition {partition} of topic '{topic}' has no live leader (its in-sync replicas {isr:?} are down); retry when one returns")]
    NoLeader {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Its in-sync replicas.
        isr: Vec<NodeId>,
    },
    /// Another node could not be reached.
    #[error("node {node} at {address} is unreachable: {reason}")]
    Unreachable {
        /// Node.
        node: NodeId,
        /// Its internal address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The request is not valid in cluster mode; the message says why.
    #[error("{0}")]
    Unsupported(String),
    /// Raft or the metadata storage failed on this node.
    #[error("metadata quorum failure: {0}")]
    Fatal(String),
}

fn leader_hint(leader: &Option<(NodeId, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("; its leader is broker {id} at {addr}"),
        None => "; it has no leader now".into(),
    }
}
