//! Security: who a caller is, and what it may do.
//!
//! * [`acl`]: Kafka's ACL model and the compiled [`acl::Authorizer`].
//! * [`scram`]: salted SCRAM credentials and the SCRAM exchange (SASL on the
//!   Kafka listener; PLAIN checks against the same credential).
//! * [`state`]: users, hashed bearer tokens, ACLs and quotas as a pure state
//!   machine. In a cluster it is part of the metadata image (applied by
//!   every broker from the quorum's log); a single node keeps it in
//!   `security.json` ([`store`]).
//! * [`quota`]: produce, fetch and request-rate quotas (throttling).
//! * [`tls`]: TLS settings from certificate files, reloaded when the files
//!   change, and the principal a client certificate maps to.
//!
//! [`Access`] is what every listener consults per request: the compiled
//! view of the state plus the configured super users. It is swapped whole
//! when the state changes; a request clones one `Arc` under a read lock.

pub mod acl;
pub mod quota;
pub mod scram;
pub mod state;
pub mod store;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;

pub use acl::{AclBinding, Authorizer, Operation, PatternType, Permission, ResourceType};
pub use state::{SecurityCommand, SecurityRefusal, SecurityState};

/// An authenticated identity: `User:NAME` (Kafka's form).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(Arc<str>);

impl Principal {
    /// `User:name`.
    pub fn user(name: &str) -> Self {
        Principal(format!("User:{name}").into())
    }

    /// From the full form (`User:name`).
    pub fn from_full(full: &str) -> Self {
        Principal(full.into())
    }

    /// The identity of a caller that presented none (with authorization
    /// off).
    pub fn anonymous() -> Self {
        Principal::from_full("User:ANONYMOUS")
    }

    /// The full form, `User:name`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name after `User:`.
    pub fn name(&self) -> &str {
        self.0.strip_prefix("User:").unwrap_or(&self.0)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a node authenticates and authorizes.
#[derive(Clone, Debug, Default)]
pub struct SecuritySettings {
    /// Refuse what no ACL allows (and callers without an identity).
    pub authorization: bool,
    /// Principals that may do anything (`User:NAME`).
    pub super_users: Vec<String>,
}

/// A token as the view holds it.
#[derive(Clone, Debug)]
struct TokenEntry {
    principal: Principal,
    expires_ms: Option<u64>,
}

/// The compiled security state: what a request consults.
#[derive(Debug, Default)]
pub struct View {
    /// The ACLs and super users.
    pub authorizer: Authorizer,
    tokens: HashMap<String, TokenEntry>,
    users: BTreeMap<String, state::UserRecord>,
    /// Quotas by entity.
    pub quotas: BTreeMap<state::QuotaEntity, state::QuotaLimits>,
    /// Bumped on every change (quota trackers reset their limits on it).
    pub generation: u64,
}

impl View {
    /// The SCRAM credential of `user` for `m`.
    pub fn credential(&self, user: &str, m: scram::Mechanism) -> Option<scram::ScramCredential> {
        self.users.get(user)?.credential(m).cloned()
    }

    /// Any credential of `user` (a PLAIN login checks against it).
    pub fn any_credential(&self, user: &str) -> Option<scram::ScramCredential> {
        let u = self.users.get(user)?;
        u.sha256.clone().or_else(|| u.sha512.clone())
    }
}

/// Why a caller could not be authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a token this cluster issued (or it was revoked).
    #[error("the bearer token is not valid (unknown, revoked or malformed)")]
    BadToken,
    /// Past its expiry.
    #[error("the bearer token expired")]
    Expired,
}

/// The security state as every listener sees it, plus the node's settings.
#[derive(Debug)]
pub struct Access {
    settings: SecuritySettings,
    /// Swapped whole on each change; readers clone the `Arc` and let go.
    view: RwLock<Arc<View>>,
    /// Every client's quota meters.
    quotas: quota::Quotas,
}

impl Access {
    /// With an empty state.
    pub fn new(settings: SecuritySettings) -> Arc<Self> {
        let view = View {
            authorizer: Authorizer::new([], settings.super_users.iter().cloned()),
            ..Default::default()
        };
        Arc::new(Self {
            settings,
            view: RwLock::new(Arc::new(view)),
            quotas: quota::Quotas::default(),
        })
    }

    /// Open: no authorization (the embedded default).
    pub fn open() -> Arc<Self> {
        Self::new(SecuritySettings::default())
    }

    /// Whether authorization is on.
    pub fn enforcing(&self) -> bool {
        self.settings.authorization
    }

    /// The configured super users.
    pub fn super_users(&self) -> &[String] {
        &self.settings.super_users
    }

    /// Compiles `state` into the view requests consult.
    pub fn update(&self, state: &SecurityState) {
        let authorizer = Authorizer::new(&state.acls, self.settings.super_users.iter().cloned());
        let tokens = state
            .tokens
            .values()
            .map(|t| {
                (
                    t.sha256.clone(),
                    TokenEntry {
                        principal: Principal::from_full(&t.principal),
                        expires_ms: t.expires_ms,
                    },
                )
            })
            .collect();
        let generation = self.view.read().generation + 1;
        let view = View {
            authorizer,
            tokens,
            users: state.users.clone(),
            quotas: state.quotas.clone(),
            generation,
        };
        *self.view.write() = Arc::new(view);
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        self.view.read().clone()
    }

    /// The principal a bearer token authenticates as.
    pub fn authenticate_token(&self, token: &str, now_ms: u64) -> Result<Principal, AuthError> {
        if !token.starts_with(state::TOKEN_PREFIX) || token.len() > 256 {
            return Err(AuthError::BadToken);
        }
        let hash = state::token_hash(token);
        let view = self.view();
        let entry = view.tokens.get(&hash).ok_or(AuthError::BadToken)?;
        if entry.expires_ms.is_some_and(|e| e <= now_ms) {
            return Err(AuthError::Expired);
        }
        Ok(entry.principal.clone())
    }

    /// Records `amount` of `kind` for the client; how long to throttle it.
    pub fn throttle(
        &self,
        principal: &Principal,
        client_id: &str,
        kind: quota::QuotaKind,
        amount: f64,
    ) -> std::time::Duration {
        let view = self.view();
        if view.quotas.is_empty() {
            return std::time::Duration::ZERO;
        }
        self.quotas.record(
            &view,
            principal,
            client_id,
            kind,
            amount,
            std::time::Instant::now(),
        )
    }

    /// Whether `principal` may do `op` on the resource (always, with
    /// authorization off).
    pub fn allows(
        &self,
        principal: &Principal,
        op: Operation,
        rt: ResourceType,
        name: &str,
    ) -> bool {
        !self.settings.authorization
            || self
                .view()
                .authorizer
                .allows(principal.as_str(), op, rt, name)
    }
}

/// Who is calling, as a listener established it, with what it checks
/// against.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The identity (`User:ANONYMOUS` without one, with authorization off).
    pub principal: Principal,
    /// The client id it gave (for quotas), or empty.
    pub client_id: Arc<str>,
    /// `None` for a trusted caller: another broker on the internal
    /// listener, whose request its first broker already authorized.
    access: Option<Arc<Access>>,
}

impl Caller {
    /// A caller checked against `access`.
    pub fn checked(principal: Principal, access: Arc<Access>) -> Self {
        Self {
            principal,
            client_id: Arc::from(""),
            access: Some(access),
        }
    }

    /// The same caller with a client id.
    pub fn with_client_id(mut self, client_id: &str) -> Self {
        self.client_id = Arc::from(client_id);
        self
    }

    /// Records `amount` of `kind` against the caller's quotas; how long to
    /// throttle it (zero for a trusted caller).
    pub fn throttle(&self, kind: quota::QuotaKind, amount: f64) -> std::time::Duration {
        match &self.access {
            Some(a) => a.throttle(&self.principal, &self.client_id, kind, amount),
            None => std::time::Duration::ZERO,
        }
    }

    /// A caller every check lets through (another broker).
    pub fn trusted() -> Self {
        Self {
            principal: Principal::from_full("User:sluice-broker"),
            client_id: Arc::from(""),
            access: None,
        }
    }

    /// Whether the caller may do `op` on the resource.
    pub fn allows(&self, op: Operation, rt: ResourceType, name: &str) -> bool {
        self.access
            .as_ref()
            .is_none_or(|a| a.allows(&self.principal, op, rt, name))
    }

    /// Whether the caller may produce idempotently: idempotent-write on the
    /// cluster, or (Kafka 3's rule) write on any topic.
    pub fn may_write_idempotently(&self) -> bool {
        self.allows_cluster(Operation::IdempotentWrite)
            || self.access.as_ref().is_none_or(|a| {
                !a.enforcing()
                    || a.view().authorizer.allows_any(
                        self.principal.as_str(),
                        Operation::Write,
                        ResourceType::Topic,
                    )
            })
    }

    /// Whether the caller may do `op` on the cluster.
    pub fn allows_cluster(&self, op: Operation) -> bool {
        self.allows(op, ResourceType::Cluster, acl::CLUSTER_RESOURCE)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
