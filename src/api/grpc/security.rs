//! `sluice.v1.Security`: users, tokens, ACLs and quotas.
//!
//! The layer ([`super::auth`]) has already checked the cluster permission
//! each method needs; handlers validate, then change the state through the
//! metadata quorum (a cluster) or the node's own file (a single node), and
//! return once this node enforces the change.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::auth::caller;
use super::cluster::{cluster_status, ClusterLink};
use super::conn::ConnInfo;
use super::pb::{self, security_server::Security};
use crate::cluster::{Command, Outcome};
use crate::security::acl::{AclBinding, PatternType, Permission};
use crate::security::scram::{Mechanism, ScramCredential, DEFAULT_ITERATIONS};
use crate::security::state::{new_token, QuotaEntity, QuotaLimits};
use crate::security::store::LocalStore;
use crate::security::{Access, ResourceType, SecurityCommand, SecurityState};

/// How long a change waits for this node to apply it.
const SYNC_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest password accepted.
const MAX_PASSWORD_BYTES: usize = 1024;

/// Where the security state lives.
#[derive(Debug, Clone)]
pub enum SecurityBackend {
    /// A single node's `security.json`.
    Local(Arc<LocalStore>),
    /// The cluster's metadata.
    Cluster(ClusterLink),
}

/// Serves `sluice.v1.Security`.
#[derive(Debug, Clone)]
pub struct SecurityService {
    access: Arc<Access>,
    backend: SecurityBackend,
}

fn refusal_status(e: crate::security::SecurityRefusal) -> Status {
    Status::new(super::status::security_code(&e), e.to_string())
}

fn parse<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T, Status> {
    s.parse().map_err(Status::invalid_argument)
}

/// An ACL from its wire form, checked.
pub fn acl_from_pb(a: &pb::Acl) -> Result<AclBinding, Status> {
    let b = AclBinding {
        principal: a.principal.trim().to_string(),
        resource_type: parse(&a.resource_type)?,
        pattern: if a.pattern_type.is_empty() {
            PatternType::Literal
        } else {
            parse(&a.pattern_type)?
        },
        name: a.name.clone(),
        operation: parse(&a.operation)?,
        permission: if a.permission.is_empty() {
            Permission::Allow
        } else {
            parse(&a.permission)?
        },
    };
    b.validate().map_err(Status::invalid_argument)?;
    Ok(b)
}

/// ACLs from their wire form, each checked.
fn acls_from_pb(acls: &[pb::Acl]) -> Result<Vec<AclBinding>, Status> {
    acls.iter().map(acl_from_pb).collect()
}

/// An ACL's wire form.
pub fn acl_to_pb(b: &AclBinding) -> pb::Acl {
    pb::Acl {
        principal: b.principal.clone(),
        resource_type: b.resource_type.to_string(),
        pattern_type: b.pattern.to_string(),
        name: b.name.clone(),
        operation: b.operation.to_string(),
        permission: b.permission.to_string(),
    }
}

fn token_info(t: &crate::security::state::TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.clone(),
        principal: t.principal.clone(),
        created_ms: t.created_ms,
        expires_ms: t.expires_ms.unwrap_or(0),
        description: t.description.clone(),
    }
}

fn entity_from_pb(e: Option<pb::QuotaEntity>) -> QuotaEntity {
    let e = e.unwrap_or_default();
    let some = |s: String| (!s.is_empty()).then_some(s);
    QuotaEntity {
        user: some(e.user),
        client_id: some(e.client_id),
    }
}

fn quota_to_pb(e: &QuotaEntity, l: &QuotaLimits) -> pb::Quota {
    pb::Quota {
        entity: Some(pb::QuotaEntity {
            user: e.user.clone().unwrap_or_default(),
            client_id: e.client_id.clone().unwrap_or_default(),
        }),
        produce_bytes_per_sec: l.produce_bytes_per_sec,
        fetch_bytes_per_sec: l.fetch_bytes_per_sec,
        requests_per_sec: l.requests_per_sec,
    }
}

impl SecurityService {
    /// A service over `backend`, updating `access` (a single node).
    pub fn new(access: Arc<Access>, backend: SecurityBackend) -> Self {
        Self { access, backend }
    }

    /// The state now.
    async fn state(&self) -> Result<SecurityState, Status> {
        match &self.backend {
            SecurityBackend::Cluster(link) => Ok(link.cluster.image().security.clone()),
            SecurityBackend::Local(store) => Ok(store.state()),
        }
    }

    /// Applies `cmd` and returns how many entries changed, once this node
    /// enforces the change.
    pub async fn change(&self, cmd: SecurityCommand) -> Result<usize, Status> {
        SecurityState::validate(&cmd).map_err(refusal_status)?;
        match &self.backend {
            SecurityBackend::Cluster(link) => {
                let (outcome, index) = link
                    .cluster
                    .propose(Command::Security(cmd))
                    .await
                    .map_err(cluster_status)?;
                link.cluster
                    .wait_synced(index, SYNC_TIMEOUT)
                    .await
                    .map_err(cluster_status)?;
                Ok(match outcome {
                    Outcome::Changed { count } => count,
                    _ => 0,
                })
            }
            SecurityBackend::Local(store) => {
                let store = store.clone();
                let applied = tokio::task::spawn_blocking(move || store.apply(&cmd))
                    .await
                    .map_err(|e| Status::internal(format!("security change failed: {e}")))?;
                let (count, state) = applied
                    .map_err(|e| {
                        tracing::error!(error = %e, "writing the security state failed");
                        Status::internal("the security state could not be stored")
                    })?
                    .map_err(refusal_status)?;
                self.access.update(&state);
                Ok(count)
            }
        }
    }
}

#[tonic::async_trait]
impl Security for SecurityService {
    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let c = caller(&request);
        let tls = request
            .extensions()
            .get::<ConnInfo>()
            .is_some_and(|c| c.tls);
        Ok(Response::new(pb::WhoAmIResponse {
            super_user: self
                .access
                .view()
                .authorizer
                .is_super_user(c.principal.as_str()),
            principal: c.principal.to_string(),
            authorization: self.access.enforcing(),
            tls,
        }))
    }

    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let r = request.into_inner();
        crate::security::state::validate_user_name(&r.name).map_err(Status::invalid_argument)?;
        if r.password.is_empty() || r.password.len() > MAX_PASSWORD_BYTES {
            return Err(Status::invalid_argument(format!(
                "a password is 1 to {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        let mechanisms = if r.mechanisms.is_empty() {
            vec![Mechanism::Sha256, Mechanism::Sha512]
        } else {
            r.mechanisms
                .iter()
                .map(|m| {
                    Mechanism::from_sasl_name(&m.to_ascii_uppercase()).ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "mechanism '{m}' is not one of: SCRAM-SHA-256, SCRAM-SHA-512"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?
        };
        let iterations = if r.iterations == 0 {
            DEFAULT_ITERATIONS
        } else {
            r.iterations
        };
        let password = r.password;
        // PBKDF2 is deliberately slow: not on a runtime worker.
        let credentials = tokio::task::spawn_blocking(move || {
            mechanisms
                .into_iter()
                .map(|m| ScramCredential::new(m, &password, iterations))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| Status::internal(format!("deriving credentials failed: {e}")))?;
        self.change(SecurityCommand::UpsertUser {
            name: r.name,
            credentials,
        })
        .await?;
        Ok(Response::new(pb::CreateUserResponse {}))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let name = request.into_inner().name;
        self.change(SecurityCommand::DeleteUser { name }).await?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn list_users(
        &self,
        _request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let state = self.state().await?;
        let users = state
            .users
            .iter()
            .map(|(name, u)| pb::User {
                name: name.clone(),
                mechanisms: [
                    u.sha256.as_ref().map(|_| Mechanism::Sha256),
                    u.sha512.as_ref().map(|_| Mechanism::Sha512),
                ]
                .into_iter()
                .flatten()
                .map(|m| m.sasl_name().to_string())
                .collect(),
            })
            .collect();
        Ok(Response::new(pb::ListUsersResponse { users }))
    }

    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let r = request.into_inner();
        crate::security::acl::validate_principal(&r.principal).map_err(Status::invalid_argument)?;
        let now = crate::security::now_ms();
        let expires = (r.ttl_ms > 0).then(|| now.saturating_add(r.ttl_ms));
        let (token, record) = new_token(&r.principal, now, expires, &r.description);
        let info = token_info(&record);
        self.change(SecurityCommand::IssueToken { record }).await?;
        Ok(Response::new(pb::IssueTokenResponse {
            token,
            info: Some(info),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let id = request.into_inner().id;
        self.change(SecurityCommand::RevokeToken { id }).await?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let state = self.state().await?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: state.tokens.values().map(token_info).collect(),
        }))
    }

    async fn add_acls(
        &self,
        request: Request<pb::AddAclsRequest>,
    ) -> Result<Response<pb::AddAclsResponse>, Status> {
        let acls = acls_from_pb(&request.into_inner().acls)?;
        let added = self.change(SecurityCommand::AddAcls { acls }).await?;
        Ok(Response::new(pb::AddAclsResponse {
            added: added as u32,
        }))
    }

    async fn remove_acls(
        &self,
        request: Request<pb::RemoveAclsRequest>,
    ) -> Result<Response<pb::RemoveAclsResponse>, Status> {
        let acls = acls_from_pb(&request.into_inner().acls)?;
        let removed = self.change(SecurityCommand::RemoveAcls { acls }).await?;
        Ok(Response::new(pb::RemoveAclsResponse {
            removed: removed as u32,
        }))
    }

    async fn list_acls(
        &self,
        request: Request<pb::ListAclsRequest>,
    ) -> Result<Response<pb::ListAclsResponse>, Status> {
        let r = request.into_inner();
        let rt: Option<ResourceType> = if r.resource_type.is_empty() {
            None
        } else {
            Some(parse(&r.resource_type)?)
        };
        let state = self.state().await?;
        let acls = state
            .acls
            .iter()
            .filter(|a| r.principal.is_empty() || a.principal == r.principal)
            .filter(|a| rt.is_none_or(|t| a.resource_type == t))
            .filter(|a| r.name.is_empty() || a.name == r.name)
            .map(acl_to_pb)
            .collect();
        Ok(Response::new(pb::ListAclsResponse { acls }))
    }

    async fn set_quota(
        &self,
        request: Request<pb::SetQuotaRequest>,
    ) -> Result<Response<pb::SetQuotaResponse>, Status> {
        let q = request
            .into_inner()
            .quota
            .ok_or_else(|| Status::invalid_argument("quota is required"))?;
        let entity = entity_from_pb(q.entity);
        let limits = QuotaLimits {
            produce_bytes_per_sec: q.produce_bytes_per_sec,
            fetch_bytes_per_sec: q.fetch_bytes_per_sec,
            requests_per_sec: q.requests_per_sec,
        };
        self.change(SecurityCommand::SetQuota { entity, limits })
            .await?;
        Ok(Response::new(pb::SetQuotaResponse {}))
    }

    async fn list_quotas(
        &self,
        _request: Request<pb::ListQuotasRequest>,
    ) -> Result<Response<pb::ListQuotasResponse>, Status> {
        let state = self.state().await?;
        Ok(Response::new(pb::ListQuotasResponse {
            quotas: state
                .quotas
                .iter()
                .map(|(e, l)| quota_to_pb(e, l))
                .collect(),
        }))
    }
}
