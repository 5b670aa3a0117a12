//! `sluice user`, `sluice token`, `sluice acl`, `sluice quota` and
//! `sluice whoami`: security administration over the `Security` service.

use clap::{Args, Subcommand};
use serde_json::json;

use super::Conn;
use crate::client::{pb, ClientError};
use crate::security::acl::{ResourceType, CLUSTER_RESOURCE};

/// SCRAM users (SASL on the Kafka listener).
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user, or set a new password.
    Create {
        /// Name (without "User:").
        name: String,
        /// Password (or set SLUICE_PASSWORD).
        #[arg(long, env = "SLUICE_PASSWORD", hide_env_values = true)]
        password: String,
        /// SCRAM-SHA-256 and/or SCRAM-SHA-512 [default: both].
        #[arg(long, value_delimiter = ',')]
        mechanism: Vec<String>,
        /// PBKDF2 iterations, in [4096, 16384] [default: 4096].
        #[arg(long)]
        iterations: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a user's credentials (its ACLs and tokens stay).
    Delete {
        /// Name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List users and their mechanisms.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Bearer tokens for the gRPC API.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token; it is printed once and only its hash is kept.
    Issue {
        /// The principal it authenticates as.
        #[arg(long, default_value = "User:admin")]
        principal: String,
        /// Lifetime in seconds; 0 never expires.
        #[arg(long, default_value_t = 0)]
        ttl_secs: u64,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Write the token into a node's data directory instead of calling
        /// a broker: the node imports it (at start, or within seconds).
        /// This is how the first super user of a secured cluster gets in.
        #[arg(long, requires = "data_dir")]
        bootstrap: bool,
        /// The node's data directory (with --bootstrap).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id.
    Revoke {
        /// Token id (`sluice token list`).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List tokens (ids, principals, expiry; never the tokens).
    List {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The resource and binding of an ACL, as flags.
#[derive(Debug, Clone, Args)]
pub struct AclArgs {
    /// User:NAME, or User:* for everyone.
    #[arg(long)]
    principal: String,
    /// read | write | create | delete | alter | describe | describe-configs |
    /// alter-configs | idempotent-write | cluster-action | all.
    #[arg(long, value_delimiter = ',', required = true)]
    operation: Vec<String>,
    /// A topic name (or prefix with --prefixed; * for every topic).
    #[arg(long, group = "resource")]
    topic: Option<String>,
    /// A consumer group name.
    #[arg(long, group = "resource")]
    group: Option<String>,
    /// A work queue name.
    #[arg(long, group = "resource")]
    queue: Option<String>,
    /// The cluster itself.
    #[arg(long, group = "resource")]
    cluster: bool,
    /// The name is a prefix.
    #[arg(long)]
    prefixed: bool,
    /// Deny instead of allow (a deny wins over any allow).
    #[arg(long)]
    deny: bool,
}

impl AclArgs {
    fn acls(&self) -> Result<Vec<pb::Acl>, ClientError> {
        let (rt, name) = if let Some(t) = &self.topic {
            (ResourceType::Topic, t.clone())
        } else if let Some(g) = &self.group {
            (ResourceType::Group, g.clone())
        } else if let Some(q) = &self.queue {
            (ResourceType::Queue, q.clone())
        } else if self.cluster {
            (ResourceType::Cluster, CLUSTER_RESOURCE.to_string())
        } else {
            return Err(ClientError::Address(
                "acl".into(),
                "name a resource: --topic, --group, --queue or --cluster".into(),
            ));
        };
        Ok(self
            .operation
            .iter()
            .map(|op| pb::Acl {
                principal: self.principal.clone(),
                resource_type: rt.to_string(),
                pattern_type: if self.prefixed { "prefixed" } else { "literal" }.into(),
                name: name.clone(),
                operation: op.clone(),
                permission: if self.deny { "deny" } else { "allow" }.into(),
            })
            .collect())
    }
}

/// Access control lists.
#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Add ACLs (one per --operation).
    Add {
        #[command(flatten)]
        acl: AclArgs,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove exactly these ACLs.
    Remove {
        #[command(flatten)]
        acl: AclArgs,
        #[command(flatten)]
        conn: Conn,
    },
    /// List ACLs, optionally only a principal's or a resource's.
    List {
        /// Only this principal's.
        #[arg(long)]
        principal: Option<String>,
        /// Only of this resource type.
        #[arg(long)]
        resource_type: Option<String>,
        /// Only on this name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Throughput quotas.
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set (or, with no rates, remove) a quota.
    Set {
        /// User:NAME, or <default>.
        #[arg(long)]
        user: Option<String>,
        /// A client id, or <default>.
        #[arg(long = "client")]
        client: Option<String>,
        /// Produced bytes per second.
        #[arg(long)]
        produce_bytes_per_sec: Option<u64>,
        /// Fetched bytes per second.
        #[arg(long)]
        fetch_bytes_per_sec: Option<u64>,
        /// Requests per second.
        #[arg(long)]
        requests_per_sec: Option<f64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List quotas.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn acl_line(a: &pb::Acl) -> String {
    format!(
        "{} {} {} {} {} ({})",
        a.permission, a.principal, a.operation, a.resource_type, a.name, a.pattern_type
    )
}

/// Runs a `sluice user` command.
pub async fn user(cmd: UserCommand) -> Result<(), ClientError> {
    match cmd {
        UserCommand::Create {
            name,
            password,
            mechanism,
            iterations,
            conn,
        } => {
            let c = conn.connect().await?;
            c.security()
                .create_user(pb::CreateUserRequest {
                    name: name.clone(),
                    password,
                    mechanisms: mechanism,
                    iterations: iterations.unwrap_or(0),
                })
                .await?;
            println!("user {name} set");
        }
        UserCommand::Delete { name, conn } => {
            let c = conn.connect().await?;
            c.security()
                .delete_user(pb::DeleteUserRequest { name: name.clone() })
                .await?;
            println!("user {name} deleted");
        }
        UserCommand::List { conn, json } => {
            let c = conn.connect().await?;
            let users = c
                .security()
                .list_users(pb::ListUsersRequest {})
                .await?
                .into_inner()
                .users;
            for u in users {
                if json {
                    println!("{}", json!({"name": u.name, "mechanisms": u.mechanisms}));
                } else {
                    println!("{}\t{}", u.name, u.mechanisms.join(","));
                }
            }
        }
    }
    Ok(())
}

fn token_json(t: &pb::TokenInfo) -> serde_json::Value {
    json!({
        "id": t.id,
        "principal": t.principal,
        "created_ms": t.created_ms,
        "expires_ms": (t.expires_ms > 0).then_some(t.expires_ms),
        "description": t.description,
    })
}

/// Runs a `sluice token` command.
pub async fn token(cmd: TokenCommand) -> Result<(), ClientError> {
    match cmd {
        TokenCommand::Issue {
            principal,
            ttl_secs,
            description,
            bootstrap,
            data_dir,
            conn,
            json,
        } => {
            crate::security::acl::validate_principal(&principal)
                .map_err(|e| ClientError::Address("principal".into(), e))?;
            let (token, info) = if let (true, Some(dir)) = (bootstrap, data_dir) {
                let now = crate::security::now_ms();
                let expires = (ttl_secs > 0).then(|| now + ttl_secs * 1000);
                let (token, record) =
                    crate::security::state::new_token(&principal, now, expires, &description);
                let path = crate::security::store::write_bootstrap_token(
                    &crate::storage::os_fs(),
                    &dir,
                    &record,
                )
                .map_err(|e| ClientError::Address(dir.display().to_string(), e.to_string()))?;
                eprintln!(
                    "wrote {}: the node imports it at start, or within seconds while it runs",
                    path.display()
                );
                (
                    token,
                    pb::TokenInfo {
                        id: record.id,
                        principal,
                        created_ms: now,
                        expires_ms: expires.unwrap_or(0),
                        description,
                    },
                )
            } else {
                let c = conn.connect().await?;
                let r = c
                    .security()
                    .issue_token(pb::IssueTokenRequest {
                        principal,
                        description,
                        ttl_ms: ttl_secs.saturating_mul(1000),
                    })
                    .await?
                    .into_inner();
                (r.token, r.info.unwrap_or_default())
            };
            if json {
                let mut v = token_json(&info);
                v["token"] = json!(token);
                println!("{v}");
            } else {
                eprintln!(
                    "token {} for {} (shown once; use it as --token or SLUICE_TOKEN):",
                    info.id, info.principal
                );
                println!("{token}");
            }
        }
        TokenCommand::Revoke { id, conn } => {
            let c = conn.connect().await?;
            c.security()
                .revoke_token(pb::RevokeTokenRequest { id: id.clone() })
                .await?;
            println!("token {id} revoked");
        }
        TokenCommand::List { conn, json } => {
            let c = conn.connect().await?;
            let tokens = c
                .security()
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            for t in tokens {
                if json {
                    println!("{}", token_json(&t));
                } else {
                    let expires = if t.expires_ms == 0 {
                        "never".to_string()
                    } else {
                        format!("{}", t.expires_ms)
                    };
                    println!(
                        "{}\t{}\texpires {}\t{}",
                        t.id, t.principal, expires, t.description
                    );
                }
            }
        }
    }
    Ok(())
}

/// Runs a `sluice acl` command.
pub async fn acl(cmd: AclCommand) -> Result<(), ClientError> {
    match cmd {
        AclCommand::Add { acl, conn } => {
            let acls = acl.acls()?;
            let c = conn.connect().await?;
            let added = c
                .security()
                .add_acls(pb::AddAclsRequest { acls: acls.clone() })
                .await?
                .into_inner()
                .added;
            for a in &acls {
                println!("{}", acl_line(a));
            }
            println!("{added} added");
        }
        AclCommand::Remove { acl, conn } => {
            let acls = acl.acls()?;
            let c = conn.connect().await?;
            let removed = c
                .security()
                .remove_acls(pb::RemoveAclsRequest { acls })
                .await?
                .into_inner()
                .removed;
            println!("{removed} removed");
        }
        AclCommand::List {
            principal,
            resource_type,
            name,
            conn,
            json,
        } => {
            let c = conn.connect().await?;
            let acls = c
                .security()
                .list_acls(pb::ListAclsRequest {
                    principal: principal.unwrap_or_default(),
                    resource_type: resource_type.unwrap_or_default(),
                    name: name.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .acls;
            for a in acls {
                if json {
                    println!(
                        "{}",
                        json!({
                            "principal": a.principal,
                            "resource_type": a.resource_type,
                            "pattern_type": a.pattern_type,
                            "name": a.name,
                            "operation": a.operation,
                            "permission": a.permission,
                        })
                    );
                } else {
                    println!("{}", acl_line(&a));
                }
            }
        }
    }
    Ok(())
}

/// Runs a `sluice quota` command.
pub async fn quota(cmd: QuotaCommand) -> Result<(), ClientError> {
    match cmd {
        QuotaCommand::Set {
            user,
            client,
            produce_bytes_per_sec,
            fetch_bytes_per_sec,
            requests_per_sec,
            conn,
        } => {
            let c = conn.connect().await?;
            c.security()
                .set_quota(pb::SetQuotaRequest {
                    quota: Some(pb::Quota {
                        entity: Some(pb::QuotaEntity {
                            user: user.unwrap_or_default(),
                            client_id: client.unwrap_or_default(),
                        }),
                        produce_bytes_per_sec,
                        fetch_bytes_per_sec,
                        requests_per_sec,
                    }),
                })
                .await?;
            println!("quota set");
        }
        QuotaCommand::List { conn, json } => {
            let c = conn.connect().await?;
            let quotas = c
                .security()
                .list_quotas(pb::ListQuotasRequest {})
                .await?
                .into_inner()
                .quotas;
            for q in quotas {
                let e = q.entity.unwrap_or_default();
                if json {
                    println!(
                        "{}",
                        json!({
                            "user": (!e.user.is_empty()).then_some(&e.user),
                            "client_id": (!e.client_id.is_empty()).then_some(&e.client_id),
                            "produce_bytes_per_sec": q.produce_bytes_per_sec,
                            "fetch_bytes_per_sec": q.fetch_bytes_per_sec,
                            "requests_per_sec": q.requests_per_sec,
                        })
                    );
                } else {
                    let rate = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                    println!(
                        "user={} client-id={}\tproduce={} B/s\tfetch={} B/s\trequests={}/s",
                        if e.user.is_empty() { "-" } else { &e.user },
                        if e.client_id.is_empty() {
                            "-"
                        } else {
                            &e.client_id
                        },
                        rate(q.produce_bytes_per_sec.map(|v| v.to_string())),
                        rate(q.fetch_bytes_per_sec.map(|v| v.to_string())),
                        rate(q.requests_per_sec.map(|v| v.to_string())),
                    );
                }
            }
        }
    }
    Ok(())
}

/// Runs `sluice whoami`.
pub async fn whoami(conn: Conn) -> Result<(), ClientError> {
    let c = conn.connect().await?;
    let r = c
        .security()
        .who_am_i(pb::WhoAmIRequest {})
        .await?
        .into_inner();
    println!(
        "{}",
        json!({
            "principal": r.principal,
            "super_user": r.super_user,
            "authorization": r.authorization,
            "tls": r.tls,
        })
    );
    Ok(())
}
