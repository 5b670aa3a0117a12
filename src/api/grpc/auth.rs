//! Authentication and authorization of gRPC calls.
//!
//! [`AuthLayer`] runs before every service: it works out who is calling
//! (a bearer token in `authorization: Bearer TOKEN`, else the principal a
//! verified client certificate names, else nobody), refuses what the
//! method's [`Rule`] already decides (no identity, a cluster operation
//! without its ACL, a method with no rule at all), and puts a [`Caller`]
//! in the request's extensions. Handlers then check the resources their
//! request names with [`require`] before doing anything else, forwarding
//! included, and list methods keep only what [`Caller::allows`].
//!
//! Every method of every service has a rule in [`RULES`]; with
//! authorization on, a method without one is refused, so a new RPC cannot
//! go out unchecked (tests/security.rs calls every method in the API's
//! descriptor set).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::{Request, Status};

use super::conn::ConnInfo;
use crate::security::acl::CLUSTER_RESOURCE;
use crate::security::quota::QuotaKind;
pub use crate::security::Caller;
use crate::security::{Access, AuthError, Operation, Principal, ResourceType};

/// What the layer decides for a method before its handler runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// No identity needed (health checks, for orchestrators' probes).
    Public,
    /// Any authenticated caller.
    Authenticated,
    /// An operation on the cluster, checked by the layer.
    Cluster(Operation),
    /// The handler checks the topics, groups or queues the request names
    /// (list methods filter what they return).
    Resources,
}

/// Every method a client listener serves, with its rule.
pub const RULES: &[(&str, Rule)] = &[
    ("/grpc.health.v1.Health/Check", Rule::Public),
    ("/grpc.health.v1.Health/Watch", Rule::Public),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Rule::Authenticated,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Rule::Authenticated,
    ),
    ("/sluice.v1.ServerInfo/GetInfo", Rule::Authenticated),
    ("/sluice.v1.Admin/CreateTopic", Rule::Resources),
    ("/sluice.v1.Admin/DeleteTopic", Rule::Resources),
    ("/sluice.v1.Admin/ListTopics", Rule::Resources),
    ("/sluice.v1.Admin/DescribeTopic", Rule::Resources),
    ("/sluice.v1.Admin/CreatePartitions", Rule::Resources),
    ("/sluice.v1.Broker/Produce", Rule::Resources),
    ("/sluice.v1.Broker/ProduceStream", Rule::Resources),
    ("/sluice.v1.Broker/Fetch", Rule::Resources),
    ("/sluice.v1.Broker/Subscribe", Rule::Resources),
    ("/sluice.v1.Broker/FetchBatches", Rule::Resources),
    ("/sluice.v1.Broker/ListOffsets", Rule::Resources),
    ("/sluice.v1.Broker/InitProducer", Rule::Resources),
    ("/sluice.v1.Cluster/Metadata", Rule::Resources),
    (
        "/sluice.v1.Cluster/DescribeCluster",
        Rule::Cluster(Operation::Describe),
    ),
    (
        "/sluice.v1.Cluster/DecommissionBroker",
        Rule::Cluster(Operation::Alter),
    ),
    (
        "/sluice.v1.Cluster/ElectPreferredLeaders",
        Rule::Cluster(Operation::Alter),
    ),
    (
        "/sluice.v1.Cluster/ReassignPartition",
        Rule::Cluster(Operation::Alter),
    ),
    ("/sluice.v1.Groups/Heartbeat", Rule::Resources),
    ("/sluice.v1.Groups/CommitOffsets", Rule::Resources),
    ("/sluice.v1.Groups/FetchOffsets", Rule::Resources),
    ("/sluice.v1.GroupAdmin/ListGroups", Rule::Resources),
    ("/sluice.v1.GroupAdmin/DescribeGroup", Rule::Resources),
    ("/sluice.v1.GroupAdmin/DeleteGroup", Rule::Resources),
    ("/sluice.v1.GroupAdmin/ResetOffsets", Rule::Resources),
    ("/sluice.v1.Queues/Consume", Rule::Resources),
    ("/sluice.v1.Queues/Pull", Rule::Resources),
    ("/sluice.v1.Queues/Acknowledge", Rule::Resources),
    ("/sluice.v1.Queues/DescribeQueue", Rule::Resources),
    ("/sluice.v1.Queues/ListQueues", Rule::Resources),
    ("/sluice.v1.Queues/DeleteQueue", Rule::Resources),
    ("/sluice.v1.Queues/ResetQueue", Rule::Resources),
    ("/sluice.v1.Queues/AlterQueue", Rule::Resources),
    ("/sluice.v1.Security/WhoAmI", Rule::Authenticated),
    (
        "/sluice.v1.Security/CreateUser",
        Rule::Cluster(Operation::Alter),
    ),
    (
        "/sluice.v1.Security/DeleteUser",
        Rule::Cluster(Operation::Alter),
    ),
    (
        "/sluice.v1.Security/ListUsers",
        Rule::Cluster(Operation::Describe),
    ),
    (
        "/sluice.v1.Security/IssueToken",
        Rule::Cluster(Operation::Alter),
    ),
    (
        "/sluice.v1.Security/RevokeToken",
        Rule::Cluster(Operation::Alter),
    ),
    (
        "/sluice.v1.Security/ListTokens",
        Rule::Cluster(Operation::Describe),
    ),
    (
        "/sluice.v1.Security/AddAcls",
        Rule::Cluster(Operation::Alter),
    ),
    (
        "/sluice.v1.Security/RemoveAcls",
        Rule::Cluster(Operation::Alter),
    ),
    (
        "/sluice.v1.Security/ListAcls",
        Rule::Cluster(Operation::Describe),
    ),
    (
        "/sluice.v1.Security/SetQuota",
        Rule::Cluster(Operation::AlterConfigs),
    ),
    (
        "/sluice.v1.Security/ListQuotas",
        Rule::Cluster(Operation::DescribeConfigs),
    ),
];

/// The rule of a method path.
pub fn rule(path: &str) -> Option<Rule> {
    static BY_PATH: std::sync::OnceLock<std::collections::HashMap<&'static str, Rule>> =
        std::sync::OnceLock::new();
    BY_PATH
        .get_or_init(|| RULES.iter().copied().collect())
        .get(path)
        .copied()
}

/// The PERMISSION_DENIED status for a refused operation.
pub fn denied(principal: &Principal, op: Operation, rt: ResourceType, name: &str) -> Status {
    metrics::counter!("sluice_authorization_denied_total").increment(1);
    Status::permission_denied(format!(
        "{principal} may not {op} {rt} '{name}': no ACL allows it (sluice acl add --principal {principal} --operation {op} --{rt} {name})"
    ))
}

/// The caller of a request (trusted if no layer ran: the request did not
/// come over a listener).
pub fn caller<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::trusted)
}

/// PERMISSION_DENIED unless the request's caller may do `op` on the
/// resource.
pub fn require<T>(
    request: &Request<T>,
    op: Operation,
    rt: ResourceType,
    name: &str,
) -> Result<(), Status> {
    match request.extensions().get::<Caller>() {
        Some(c) => c.require(op, rt, name),
        None => Ok(()),
    }
}

/// [`Caller::allows`] as a gRPC status.
pub trait Require {
    /// PERMISSION_DENIED unless the caller may do `op` on the resource.
    fn require(&self, op: Operation, rt: ResourceType, name: &str) -> Result<(), Status>;
}

impl Require for Caller {
    fn require(&self, op: Operation, rt: ResourceType, name: &str) -> Result<(), Status> {
        if self.allows(op, rt, name) {
            Ok(())
        } else {
            Err(denied(&self.principal, op, rt, name))
        }
    }
}

/// The request header naming the client (Kafka's client id), for quotas.
pub const CLIENT_ID_HEADER: &str = "sluice-client-id";
/// The response header saying how long the call was throttled, in ms.
pub const THROTTLE_HEADER: &str = "sluice-throttle-ms";

/// Records `amount` of `kind` against the caller's quota and, when it is
/// over, waits out the throttle before the reply goes, saying so in the
/// reply's metadata. Nothing is refused or dropped.
pub async fn throttled<T>(
    caller: &Caller,
    kind: QuotaKind,
    amount: usize,
    mut response: tonic::Response<T>,
) -> tonic::Response<T> {
    let d = caller.throttle(kind, amount as f64);
    if !d.is_zero() {
        tokio::time::sleep(d).await;
        if let Ok(v) = d.as_millis().to_string().parse() {
            response.metadata_mut().insert(THROTTLE_HEADER, v);
        }
    }
    response
}

/// Bytes of record data in a produce request (keys, values, headers).
pub fn produce_bytes(r: &super::pb::ProduceRequest) -> usize {
    r.records
        .iter()
        .map(|rec| {
            rec.key.as_ref().map_or(0, |k| k.len())
                + rec.value.as_ref().map_or(0, |v| v.len())
                + rec
                    .headers
                    .iter()
                    .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
                    .sum::<usize>()
        })
        .sum()
}

/// Puts a [`Caller`] into every request (see the module documentation).
#[derive(Clone, Debug)]
pub struct AuthLayer {
    access: Arc<Access>,
    /// The internal listener: every caller is a broker.
    trusted: bool,
}

impl AuthLayer {
    /// For a client listener.
    pub fn new(access: Arc<Access>) -> Self {
        Self {
            access,
            trusted: false,
        }
    }

    /// For the internal listener, whose callers are brokers (verified by
    /// mutual TLS when it is on).
    pub fn trusted(access: Arc<Access>) -> Self {
        Self {
            access,
            trusted: true,
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The bearer token of a request, if it sent an `authorization` header.
fn bearer(headers: &http::HeaderMap) -> Option<Result<&str, AuthError>> {
    let v = headers.get(http::header::AUTHORIZATION)?;
    Some(
        v.to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(AuthError::BadToken),
    )
}

impl AuthLayer {
    /// Who is calling, or the status that refuses the call.
    fn decide<B>(&self, req: &http::Request<B>) -> Result<Caller, Status> {
        if self.trusted {
            return Ok(Caller::trusted());
        }
        let access = &self.access;
        let enforcing = access.enforcing();
        let path = req.uri().path();
        // Only enforcement needs the method's rule.
        let rule = if enforcing { rule(path) } else { None };
        let identity = match bearer(req.headers()) {
            Some(Ok(token)) => Some(
                access
                    .authenticate_token(token, crate::security::now_ms())
                    .map_err(|e| {
                        metrics::counter!("sluice_authentication_failures_total").increment(1);
                        Status::unauthenticated(e.to_string())
                    })?,
            ),
            Some(Err(e)) => {
                return Err(Status::unauthenticated(format!(
                    "{e}: send 'authorization: Bearer TOKEN'"
                )))
            }
            None => req
                .extensions()
                .get::<ConnInfo>()
                .and_then(|c| c.peer.clone()),
        };
        let client_id = req
            .headers()
            .get(CLIENT_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .take(256)
            .collect::<String>();
        let caller =
            |principal| Caller::checked(principal, access.clone()).with_client_id(&client_id);
        if rule == Some(Rule::Public) || !enforcing {
            return Ok(caller(identity.unwrap_or_else(Principal::anonymous)));
        }
        let Some(principal) = identity else {
            metrics::counter!("sluice_authentication_failures_total").increment(1);
            return Err(Status::unauthenticated(
                "this server requires an identity: a bearer token ('authorization: Bearer TOKEN', sluice --token) or a client certificate signed by its CA",
            ));
        };
        let c = caller(principal);
        match rule {
            None => {
                if access.view().authorizer.is_super_user(c.principal.as_str()) {
                    Ok(c)
                } else {
                    Err(Status::permission_denied(format!(
                        "{path} has no authorization rule; only super users may call it"
                    )))
                }
            }
            Some(Rule::Cluster(op)) => {
                c.require(op, ResourceType::Cluster, CLUSTER_RESOURCE)?;
                Ok(c)
            }
            Some(_) => Ok(c),
        }
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for Auth<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.layer.decide(&req) {
            Ok(caller) => {
                // The request-rate quota: an answer over it waits out the
                // throttle before it goes.
                let throttle = caller.throttle(QuotaKind::Request, 1.0);
                req.extensions_mut().insert(caller);
                let fut = self.inner.call(req);
                if throttle.is_zero() {
                    return Box::pin(fut);
                }
                Box::pin(async move {
                    let mut response = fut.await?;
                    tokio::time::sleep(throttle).await;
                    if let Ok(v) = throttle.as_millis().to_string().parse() {
                        response.headers_mut().insert(THROTTLE_HEADER, v);
                    }
                    Ok(response)
                })
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}
