//! The nodes' internal channel: a gRPC service on the internal listener
//! carrying Raft messages, proposals forwarded to the active controller,
//! broker heartbeats and learner joins, and openraft's network built on
//! its client. Payloads are the JSON of openraft's (serde) messages: both
//! ends run the same build, and the volume is small (metadata only).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use openraft::{
    error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable},
    network::{RPCOption, RaftNetwork, RaftNetworkFactory},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
    BasicNode,
};
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tonic::{transport::Channel, Request, Response, Status};

use super::{Cluster, ClusterError, Command, NodeId, Outcome, TypeConfig};

/// Code generated from `proto/sluice/internal/v1/cluster.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("sluice.internal.v1");
}

use pb::cluster_internal_client::ClusterInternalClient;
use pb::cluster_internal_server::{ClusterInternal, ClusterInternalServer};

/// Largest internal message (a snapshot chunk, a batch of entries).
const MAX_INTERNAL_MESSAGE: usize = 64 << 20;

/// Why a controller-side request was not served here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Declined {
    /// This node is not the active controller; the one it knows of.
    NotLeader(Option<NodeId>),
    /// It failed; the message says why.
    Failed(String),
}

/// A broker's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub id: NodeId,
    pub epoch: u64,
    /// Brokers this one could not reach lately (its replica fetches to
    /// them failed): evidence that lets the controller fence a silent
    /// broker before its whole session lapses.
    #[serde(default)]
    pub suspects: Vec<NodeId>,
}

/// A broker-only node asking to follow the metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JoinAsLearner {
    pub id: NodeId,
    pub internal: String,
}

pub(crate) type ProposeReply = Result<(Outcome, u64), Declined>;
pub(crate) type UnitReply = Result<(), Declined>;

fn encode<T: Serialize>(v: &T) -> Result<pb::Payload, Status> {
    serde_json::to_vec(v)
        .map(|json| pb::Payload { json: json.into() })
        .map_err(|e| Status::internal(format!("encoding: {e}")))
}

fn decode<T: DeserializeOwned>(p: &pb::Payload) -> Result<T, Status> {
    serde_json::from_slice(&p.json)
        .map_err(|e| Status::invalid_argument(format!("undecodable internal message: {e}")))
}

/// Serves the internal service for one node.
pub struct InternalService {
    node: Arc<Cluster>,
}

impl InternalService {
    /// The tonic service.
    pub fn server(node: Arc<Cluster>) -> ClusterInternalServer<Self> {
        ClusterInternalServer::new(Self { node })
            .max_decoding_message_size(MAX_INTERNAL_MESSAGE)
            .max_encoding_message_size(MAX_INTERNAL_MESSAGE)
    }

    /// Remembers where node `id`'s call came from, to dial it there when
    /// its name does not resolve (see [`crate::dial`]).
    fn learn<T>(&self, request: &Request<T>, id: Option<NodeId>) {
        if let (Some(id), Some(from)) = (id, request.remote_addr()) {
            if let Some(address) = self.node.address_of(id) {
                crate::dial::learn(&address, from.ip());
            }
        }
    }
}

#[tonic::async_trait]
impl ClusterInternal for InternalService {
    async fn append_entries(
        &self,
        request: Request<pb::Payload>,
    ) -> Result<Response<pb::Payload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request.get_ref())?;
        self.learn(&request, rpc.vote.leader_id().voted_for());
        let reply = self.node.raft().append_entries(rpc).await;
        Ok(Response::new(encode(&reply)?))
    }

    async fn vote(&self, request: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        let rpc: VoteRequest<NodeId> = decode(request.get_ref())?;
        self.learn(&request, rpc.vote.leader_id().voted_for());
        let reply = self.node.raft().vote(rpc).await;
        Ok(Response::new(encode(&reply)?))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::Payload>,
    ) -> Result<Response<pb::Payload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request.get_ref())?;
        let reply = self.node.raft().install_snapshot(rpc).await;
        Ok(Response::new(encode(&reply)?))
    }

    async fn propose(
        &self,
        request: Request<pb::Payload>,
    ) -> Result<Response<pb::Payload>, Status> {
        let cmd: Command = decode(request.get_ref())?;
        let reply: ProposeReply = self.node.propose_here(cmd).await;
        Ok(Response::new(encode(&reply)?))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::Payload>,
    ) -> Result<Response<pb::Payload>, Status> {
        let hb: Heartbeat = decode(request.get_ref())?;
        self.learn(&request, Some(hb.id));
        let reply: UnitReply = self.node.heartbeat_here(hb);
        Ok(Response::new(encode(&reply)?))
    }

    async fn add_learner(
        &self,
        request: Request<pb::Payload>,
    ) -> Result<Response<pb::Payload>, Status> {
        let join: JoinAsLearner = decode(request.get_ref())?;
        let reply: UnitReply = self.node.add_learner_here(join).await;
        Ok(Response::new(encode(&reply)?))
    }
}

/// Clients of the other nodes' internal services, one lazily connected
/// channel per address (tonic multiplexes calls over it).
#[derive(Clone, Default)]
pub struct Peers {
    /// Address → client. Held only to look up, insert or stamp.
    clients: Arc<Mutex<HashMap<String, Peer>>>,
    /// Mutual TLS for the calls (`None`: clear text).
    tls: Option<Arc<crate::dial::InternalTls>>,
}

/// One address's client and how it has fared.
struct Peer {
    client: ClusterInternalClient<Channel>,
    /// When the client was made, or last answered a call.
    answered: Instant,
}

/// A Raft call abandoned by openraft's own timeout (tens of
/// milliseconds) ends no call with an error, so a connection that stopped
/// working is never seen to fail: after this long without an answer the
/// next abandoned call dials afresh (and resolves the name again, since a
/// restarted container comes back at a new address).
const REDIAL_AFTER_SILENCE: Duration = Duration::from_secs(1);

impl Peers {
    /// Clients that dial with `tls`.
    pub fn with_tls(tls: Option<Arc<crate::dial::InternalTls>>) -> Self {
        Self {
            clients: Default::default(),
            tls,
        }
    }

    /// The client for `address`.
    pub fn client(&self, address: &str) -> Result<ClusterInternalClient<Channel>, String> {
        if let Some(p) = self.clients.lock().get(address) {
            return Ok(p.client.clone());
        }
        let channel = crate::dial::channel(address, self.tls.as_deref())?;
        let client = ClusterInternalClient::new(channel)
            .max_decoding_message_size(MAX_INTERNAL_MESSAGE)
            .max_encoding_message_size(MAX_INTERNAL_MESSAGE);
        self.clients.lock().insert(
            address.to_string(),
            Peer {
                client: client.clone(),
                answered: Instant::now(),
            },
        );
        Ok(client)
    }

    /// Notes that `address` answered a call.
    fn answered(&self, address: &str) {
        if let Some(p) = self.clients.lock().get_mut(address) {
            p.answered = Instant::now();
        }
    }

    /// A call to `address` was abandoned unanswered: forgets its client if
    /// nothing has come back on it for [`REDIAL_AFTER_SILENCE`].
    fn abandoned(&self, address: &str) {
        let mut clients = self.clients.lock();
        if clients
            .get(address)
            .is_some_and(|p| p.answered.elapsed() >= REDIAL_AFTER_SILENCE)
        {
            clients.remove(address);
        }
    }

    /// Forgets the connection to `address` after a call on it failed as
    /// unreachable: a peer whose host vanished (a restarted container gets
    /// a new address; the old one sends no reset) would otherwise keep
    /// every call on a dead connection until the pings give up. The next
    /// call dials (and resolves the name) afresh.
    pub fn forget(&self, address: &str) {
        self.clients.lock().remove(address);
    }

    /// Sends a controller request (`Propose`, `Heartbeat`, `AddLearner`)
    /// to `address` and decodes the reply.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        node: NodeId,
        address: &str,
        method: Method,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClusterError> {
        let unreachable = |reason: String| ClusterError::Unreachable {
            node,
            address: address.to_string(),
            reason,
        };
        let mut client = self.client(address).map_err(unreachable)?;
        let mut request = Request::new(encode(req).map_err(|s| unreachable(s.to_string()))?);
        request.set_timeout(timeout);
        let reply = match method {
            Method::Propose => client.propose(request).await,
            Method::Heartbeat => client.heartbeat(request).await,
            Method::AddLearner => client.add_learner(request).await,
        }
        .map_err(|s| {
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ) {
                self.forget(address);
            }
            unreachable(s.message().to_string())
        })?;
        self.answered(address);
        decode(reply.get_ref()).map_err(|s| unreachable(s.message().to_string()))
    }
}

/// The controller requests [`Peers::call`] sends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Method {
    Propose,
    Heartbeat,
    AddLearner,
}

/// openraft's network: one [`Connection`] per target node.
#[derive(Clone)]
pub struct Network {
    peers: Peers,
}

impl Network {
    /// A network over `peers`.
    pub fn new(peers: Peers) -> Self {
        Self { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        Connection {
            target,
            address: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// openraft's connection to one node.
pub struct Connection {
    target: NodeId,
    address: String,
    peers: Peers,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Connection {
    async fn send<Req, Resp, E>(
        &mut self,
        which: RaftMethod,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self
            .peers
            .client(&self.address)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        let mut request =
            Request::new(encode(req).map_err(|s| RPCError::Network(NetworkError::new(&s)))?);
        request.set_timeout(option.hard_ttl());
        // Dropped unfinished (openraft timed the call out): see
        // `Peers::abandoned`.
        let pending = Abandoned {
            peers: &self.peers,
            address: &self.address,
            armed: true,
        };
        let reply = match which {
            RaftMethod::Append => client.append_entries(request).await,
            RaftMethod::Vote => client.vote(request).await,
            RaftMethod::Snapshot => client.install_snapshot(request).await,
        };
        pending.disarm();
        if reply.is_ok() {
            self.peers.answered(&self.address);
        }
        let reply = reply.map_err(|s| match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                self.peers.forget(&self.address);
                RPCError::Unreachable(Unreachable::new(&s))
            }
            _ => RPCError::Network(NetworkError::new(&s)),
        })?;
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.get_ref().json)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Reports a call dropped before it finished (see [`Peers::abandoned`]).
struct Abandoned<'a> {
    peers: &'a Peers,
    address: &'a str,
    armed: bool,
}

impl Abandoned<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.peers.abandoned(self.address);
        }
    }
}

#[derive(Clone, Copy)]
enum RaftMethod {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.send(RaftMethod::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.send(RaftMethod::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.send(RaftMethod::Vote, &rpc, &option).await
    }

    /// After a failed send, retry soon: a restarted node must hear from
    /// the leader before its own election timer fires (openraft's default
    /// pause is 500 ms, longer than the election timeout).
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}
