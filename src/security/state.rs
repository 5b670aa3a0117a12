//! The security state every broker applies: SCRAM users, bearer tokens
//! (hashed), ACLs and quotas. A pure state machine: [`SecurityState::apply`]
//! takes a [`SecurityCommand`] and refuses it deterministically, so in a
//! cluster every node that applies the same metadata log holds the same
//! state, and a single node applies the same commands to its own file.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use ring::digest;
use serde::{Deserialize, Serialize};

use super::acl::{validate_principal, AclBinding};
use super::scram::{Mechanism, ScramCredential, MAX_ITERATIONS, MIN_ITERATIONS};

/// The longest user name.
pub const MAX_USER_BYTES: usize = 256;
/// At most this many tokens (bounds the state every broker holds).
pub const MAX_TOKENS: usize = 100_000;
/// At most this many ACLs.
pub const MAX_ACLS: usize = 200_000;

/// A user's stored SCRAM credentials (one per mechanism).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// SCRAM-SHA-256, if set.
    pub sha256: Option<ScramCredential>,
    /// SCRAM-SHA-512, if set.
    pub sha512: Option<ScramCredential>,
}

impl UserRecord {
    /// The credential for `m`.
    pub fn credential(&self, m: Mechanism) -> Option<&ScramCredential> {
        match m {
            Mechanism::Sha256 => self.sha256.as_ref(),
            Mechanism::Sha512 => self.sha512.as_ref(),
        }
    }
}

/// A bearer token as stored: its hash, never the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (part of the token; names it for listing and revoking).
    pub id: String,
    /// `User:NAME` the token authenticates as.
    pub principal: String,
    /// SHA-256 of the whole token, hex.
    pub sha256: String,
    /// When issued (ms since the epoch).
    pub created_ms: u64,
    /// When it stops working (ms since the epoch), if ever.
    pub expires_ms: Option<u64>,
    /// What it is for.
    pub description: String,
}

/// The prefix of every token.
pub const TOKEN_PREFIX: &str = "sluice_";

/// A new token for `principal`: the secret (shown once) and its record.
pub fn new_token(
    principal: &str,
    created_ms: u64,
    expires_ms: Option<u64>,
    description: &str,
) -> (String, TokenRecord) {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // The id is hex so that '_' separates it from the secret unambiguously.
    let id: String = super::scram::random_bytes::<6>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let secret = b64.encode(super::scram::random_bytes::<32>());
    let token = format!("{TOKEN_PREFIX}{id}_{secret}");
    let record = TokenRecord {
        id,
        principal: principal.to_string(),
        sha256: token_hash(&token),
        created_ms,
        expires_ms,
        description: description.to_string(),
    };
    (token, record)
}

/// SHA-256 of a token, hex: what is stored and looked up.
pub fn token_hash(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in d.as_ref() {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// Who a quota applies to: a principal, a client id, both, or the default
/// for either (Kafka's quota entities).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QuotaEntity {
    /// `User:NAME`, `<default>` for every principal without its own, or
    /// none (the quota is by client id only).
    pub user: Option<String>,
    /// A client id, `<default>`, or none.
    pub client_id: Option<String>,
}

/// The name that matches every principal or client id without a quota of
/// its own.
pub const QUOTA_DEFAULT: &str = "<default>";

impl std::fmt::Display for QuotaEntity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.user, &self.client_id) {
            (Some(u), Some(c)) => write!(f, "user={u} client-id={c}"),
            (Some(u), None) => write!(f, "user={u}"),
            (None, Some(c)) => write!(f, "client-id={c}"),
            (None, None) => f.write_str("(nobody)"),
        }
    }
}

/// Rates one entity may use; unset is unlimited.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaLimits {
    /// Bytes per second of produced record data.
    pub produce_bytes_per_sec: Option<u64>,
    /// Bytes per second of fetched record data.
    pub fetch_bytes_per_sec: Option<u64>,
    /// Requests per second (every call counts one).
    pub requests_per_sec: Option<f64>,
}

impl QuotaLimits {
    /// Whether every limit is unset.
    pub fn is_empty(&self) -> bool {
        self.produce_bytes_per_sec.is_none()
            && self.fetch_bytes_per_sec.is_none()
            && self.requests_per_sec.is_none()
    }
}

/// A change to the security state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SecurityCommand {
    /// Creates a user or replaces the credentials it has for the given
    /// mechanisms.
    UpsertUser {
        /// Name (without `User:`).
        name: String,
        /// New credentials (at least one).
        credentials: Vec<ScramCredential>,
    },
    /// Deletes a user's credentials (its ACLs and tokens stay, as Kafka's).
    DeleteUser {
        /// Name.
        name: String,
    },
    /// Adds a token.
    IssueToken {
        /// The stored form.
        record: TokenRecord,
    },
    /// Removes a token.
    RevokeToken {
        /// Its id.
        id: String,
    },
    /// Adds ACLs (present ones are kept once).
    AddAcls {
        /// Bindings.
        acls: Vec<AclBinding>,
    },
    /// Removes exactly these ACLs.
    RemoveAcls {
        /// Bindings.
        acls: Vec<AclBinding>,
    },
    /// Sets (or with no limits, removes) an entity's quota.
    SetQuota {
        /// Who.
        entity: QuotaEntity,
        /// Limits.
        limits: QuotaLimits,
    },
}

/// Why a command was not applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SecurityRefusal {
    /// No such user.
    #[error("user '{0}' does not exist")]
    UserNotFound(String),
    /// No such token.
    #[error("token '{0}' does not exist")]
    TokenNotFound(String),
    /// Breaks a rule (the message names it).
    #[error("{0}")]
    Invalid(String),
}

/// Users, tokens, ACLs and quotas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecurityState {
    /// Users by name (without `User:`).
    pub users: BTreeMap<String, UserRecord>,
    /// Tokens by id.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Every ACL.
    pub acls: BTreeSet<AclBinding>,
    /// Quotas by entity (a list in JSON: the keys are not strings).
    #[serde(with = "as_pairs")]
    pub quotas: BTreeMap<QuotaEntity, QuotaLimits>,
}

/// A map with structured keys as a list of pairs.
mod as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// Checks a user name: 1 to [`MAX_USER_BYTES`] bytes, no control
/// characters, not `*`.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_USER_BYTES {
        return Err(format!(
            "user name must be 1 to {MAX_USER_BYTES} bytes (got {})",
            name.len()
        ));
    }
    if name == "*" || name.chars().any(char::is_control) {
        return Err(format!(
            "user name '{}' must not be '*' or hold control characters",
            name.escape_default()
        ));
    }
    Ok(())
}

impl SecurityState {
    /// Checks a command against the rules that do not depend on the state
    /// (so a proposer can refuse it before it reaches the log).
    pub fn validate(cmd: &SecurityCommand) -> Result<(), SecurityRefusal> {
        let invalid = SecurityRefusal::Invalid;
        match cmd {
            SecurityCommand::UpsertUser { name, credentials } => {
                validate_user_name(name).map_err(invalid)?;
                if credentials.is_empty() {
                    return Err(invalid("a user needs at least one credential".into()));
                }
                for c in credentials {
                    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&c.iterations) {
                        return Err(invalid(format!(
                            "SCRAM iterations must be in [{MIN_ITERATIONS}, {MAX_ITERATIONS}] (got {})",
                            c.iterations
                        )));
                    }
                }
            }
            SecurityCommand::DeleteUser { name } => {
                validate_user_name(name).map_err(invalid)?;
            }
            SecurityCommand::IssueToken { record } => {
                validate_principal(&record.principal).map_err(invalid)?;
                if record.principal.ends_with(":*") {
                    return Err(invalid("a token is for one principal, not 'User:*'".into()));
                }
                if record.sha256.len() != 64 || record.id.is_empty() || record.id.len() > 64 {
                    return Err(invalid("malformed token record".into()));
                }
                if record.description.len() > 1024 {
                    return Err(invalid("a token description is at most 1024 bytes".into()));
                }
            }
            SecurityCommand::RevokeToken { .. } => {}
            SecurityCommand::AddAcls { acls } | SecurityCommand::RemoveAcls { acls } => {
                if acls.is_empty() {
                    return Err(invalid("no ACLs given".into()));
                }
                for a in acls {
                    a.validate().map_err(invalid)?;
                }
            }
            SecurityCommand::SetQuota { entity, limits } => {
                if entity.user.is_none() && entity.client_id.is_none() {
                    return Err(invalid("a quota names a user, a client id, or both".into()));
                }
                if let Some(u) = &entity.user {
                    if u != QUOTA_DEFAULT {
                        validate_principal(u).map_err(invalid)?;
                    }
                }
                if let Some(c) = &entity.client_id {
                    if c.is_empty() || c.len() > 256 {
                        return Err(invalid("a client id is 1 to 256 bytes".into()));
                    }
                }
                let zero = limits.produce_bytes_per_sec == Some(0)
                    || limits.fetch_bytes_per_sec == Some(0)
                    || limits
                        .requests_per_sec
                        .is_some_and(|r| r.is_nan() || r <= 0.0);
                if zero {
                    return Err(invalid(
                        "a quota rate must be above 0 (remove the limit instead)".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Applies `cmd`; returns how many entries it changed.
    pub fn apply(&mut self, cmd: &SecurityCommand) -> Result<usize, SecurityRefusal> {
        Self::validate(cmd)?;
        match cmd {
            SecurityCommand::UpsertUser { name, credentials } => {
                let u = self.users.entry(name.clone()).or_default();
                for c in credentials {
                    match c.mechanism {
                        Mechanism::Sha256 => u.sha256 = Some(c.clone()),
                        Mechanism::Sha512 => u.sha512 = Some(c.clone()),
                    }
                }
                Ok(1)
            }
            SecurityCommand::DeleteUser { name } => self
                .users
                .remove(name)
                .map(|_| 1)
                .ok_or_else(|| SecurityRefusal::UserNotFound(name.clone())),
            SecurityCommand::IssueToken { record } => {
                if self.tokens.len() >= MAX_TOKENS {
                    return Err(SecurityRefusal::Invalid(format!(
                        "the cluster holds {MAX_TOKENS} tokens, the most it keeps: revoke some first"
                    )));
                }
                self.tokens.insert(record.id.clone(), record.clone());
                Ok(1)
            }
            SecurityCommand::RevokeToken { id } => self
                .tokens
                .remove(id)
                .map(|_| 1)
                .ok_or_else(|| SecurityRefusal::TokenNotFound(id.clone())),
            SecurityCommand::AddAcls { acls } => {
                let distinct: BTreeSet<&AclBinding> = acls.iter().collect();
                let new = distinct.iter().filter(|a| !self.acls.contains(**a)).count();
                if self.acls.len() + new > MAX_ACLS {
                    return Err(SecurityRefusal::Invalid(format!(
                        "the cluster holds at most {MAX_ACLS} ACLs"
                    )));
                }
                self.acls.extend(acls.iter().cloned());
                Ok(new)
            }
            SecurityCommand::RemoveAcls { acls } => {
                Ok(acls.iter().filter(|a| self.acls.remove(*a)).count())
            }
            SecurityCommand::SetQuota { entity, limits } => {
                if limits.is_empty() {
                    Ok(usize::from(self.quotas.remove(entity).is_some()))
                } else {
                    self.quotas.insert(entity.clone(), limits.clone());
                    Ok(1)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::acl::{Operation, PatternType, Permission, ResourceType};

    #[test]
    fn commands_apply_and_refuse_deterministically() {
        let mut s = SecurityState::default();
        let c = ScramCredential::new(Mechanism::Sha256, "pw", MIN_ITERATIONS);
        s.apply(&SecurityCommand::UpsertUser {
            name: "alice".into(),
            credentials: vec![c.clone()],
        })
        .unwrap();
        assert!(s.users["alice"].credential(Mechanism::Sha256).is_some());
        assert!(s.users["alice"].credential(Mechanism::Sha512).is_none());
        let mut weak = c.clone();
        weak.iterations = 1;
        assert!(matches!(
            s.apply(&SecurityCommand::UpsertUser {
                name: "bob".into(),
                credentials: vec![weak]
            }),
            Err(SecurityRefusal::Invalid(m)) if m.contains("4096")
        ));
        assert_eq!(
            s.apply(&SecurityCommand::DeleteUser { name: "bob".into() }),
            Err(SecurityRefusal::UserNotFound("bob".into()))
        );
        let (token, record) = new_token("User:alice", 1, None, "ci");
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(record.sha256, token_hash(&token));
        s.apply(&SecurityCommand::IssueToken {
            record: record.clone(),
        })
        .unwrap();
        assert_eq!(
            s.apply(&SecurityCommand::RevokeToken { id: record.id }),
            Ok(1)
        );
        let acl = AclBinding {
            principal: "User:alice".into(),
            resource_type: ResourceType::Topic,
            pattern: PatternType::Literal,
            name: "t".into(),
            operation: Operation::Read,
            permission: Permission::Allow,
        };
        let add = SecurityCommand::AddAcls {
            acls: vec![acl.clone(), acl.clone()],
        };
        assert_eq!(s.apply(&add), Ok(1));
        assert_eq!(s.apply(&add), Ok(0));
        assert_eq!(
            s.apply(&SecurityCommand::RemoveAcls { acls: vec![acl] }),
            Ok(1)
        );
        let entity = QuotaEntity {
            user: Some("User:alice".into()),
            client_id: None,
        };
        let limits = QuotaLimits {
            produce_bytes_per_sec: Some(1024),
            ..Default::default()
        };
        s.apply(&SecurityCommand::SetQuota {
            entity: entity.clone(),
            limits,
        })
        .unwrap();
        assert!(s.quotas.contains_key(&entity));
        assert!(s
            .apply(&SecurityCommand::SetQuota {
                entity: entity.clone(),
                limits: QuotaLimits {
                    fetch_bytes_per_sec: Some(0),
                    ..Default::default()
                }
            })
            .is_err());
        // The state survives serialization (it is stored as JSON).
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SecurityState>(&json).unwrap(), s);
    }
}
