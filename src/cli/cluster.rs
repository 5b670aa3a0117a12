//! `sluice cluster`: the cluster's nodes, controller and liveness.

use clap::Subcommand;
use serde_json::json;

use super::Conn;
use crate::client::{pb, ClientError};

/// Cluster status and membership.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes, roles, the metadata quorum's leader and term, liveness and
    /// each broker's partition counts.
    Status {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move a broker-only node's replicas to other brokers (each copied and
    /// in sync first), then remove it.
    Decommission {
        /// Broker (node) id.
        id: i32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Move a partition to other brokers: the new replicas catch up, then
    /// the partition switches to exactly these (the first leads).
    Reassign {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Target broker ids, comma-separated (the first is the preferred
        /// leader).
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<i32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Give partitions back to their preferred leaders (the first replica)
    /// where those are live and in sync.
    ElectLeaders {
        /// Only this topic's partitions.
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

fn status_json(s: &pb::DescribeClusterResponse) -> serde_json::Value {
    json!({
        "mode": s.mode,
        "answered_by": s.answered_by,
        "controller": s.controller,
        "term": s.term,
        "applied_index": s.applied_index,
        "nodes": s.nodes.iter().map(|n| json!({
            "id": n.id,
            "address": n.address,
            "internal_address": n.internal_address,
            "rack": n.rack,
            "role": n.role,
            "live": n.live,
            "broker_epoch": n.broker_epoch,
            "leader_partitions": n.leader_partitions,
            "replica_partitions": n.replica_partitions,
            "matched_index": n.matched_index,
        })).collect::<Vec<_>>(),
    })
}

/// Runs a `sluice cluster` command.
pub async fn cluster(cmd: ClusterCommand) -> Result<(), ClientError> {
    match cmd {
        ClusterCommand::Status { conn, json } => {
            let client = conn.connect().await?;
            let s = client.describe_cluster().await?;
            if json {
                println!("{}", status_json(&s));
                return Ok(());
            }
            let controller = if s.controller < 0 {
                "none".to_string()
            } else {
                s.controller.to_string()
            };
            println!(
                "mode {}  controller {}  term {}  applied {}  (answered by node {})",
                s.mode, controller, s.term, s.applied_index, s.answered_by
            );
            println!("  id\trole\tlive\tleaders\treplicas\tepoch\taddress\tinternal\track");
            for n in &s.nodes {
                println!(
                    "  {}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    n.id,
                    if n.id == s.controller {
                        format!("{}*", n.role)
                    } else {
                        n.role.clone()
                    },
                    if n.live { "yes" } else { "no" },
                    n.leader_partitions,
                    n.replica_partitions,
                    n.broker_epoch,
                    n.address,
                    n.internal_address,
                    n.rack.as_deref().unwrap_or("-")
                );
            }
        }
        ClusterCommand::Decommission { id, conn } => {
            let client = conn.connect().await?;
            client
                .cluster()
                .decommission_broker(pb::DecommissionBrokerRequest { id })
                .await?;
            println!("broker {id} removed from the cluster");
        }
        ClusterCommand::Reassign {
            topic,
            partition,
            replicas,
            conn,
        } => {
            let client = conn.connect().await?;
            client
                .cluster()
                .reassign_partition(pb::ReassignPartitionRequest {
                    topic: topic.clone(),
                    partition,
                    replicas: replicas.clone(),
                })
                .await?;
            println!(
                "{topic}-{partition} is moving to brokers {replicas:?}; `sluice topic describe {topic}` shows when the replicas are in sync"
            );
        }
        ClusterCommand::ElectLeaders { topic, conn } => {
            let client = conn.connect().await?;
            let r = client
                .cluster()
                .elect_preferred_leaders(pb::ElectPreferredLeadersRequest { topic })
                .await?
                .into_inner();
            println!(
                "{} partitions moved to their preferred leader",
                r.partitions
            );
        }
    }
    Ok(())
}
