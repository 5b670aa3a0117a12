//! One node of the cluster: its Raft instance, static-voter bootstrap,
//! proposals (forwarded to the active controller), the broker's
//! registration and heartbeats, and the controller's session checks.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use openraft::{
    error::{ClientWriteError, InitializeError, RaftError},
    BasicNode, Raft, ServerState, SnapshotPolicy,
};
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{info, warn};

use super::store::{Applied, LogStore, StateMachine};
use super::transport::{
    Declined, Heartbeat, JoinAsLearner, Method, Network, Peers, ProposeReply, UnitReply,
};
use super::{ClusterError, Command, MetadataImage, NodeId, Outcome, TypeConfig};

/// How long a decommission waits for its broker's replicas to move.
const DECOMMISSION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a proposal keeps looking for an active controller.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(15);
/// One controller request's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the controller checks broker sessions.
const SESSION_CHECK: Duration = Duration::from_millis(200);

/// How one node takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// Where the metadata log and snapshot live.
    pub dir: PathBuf,
    /// The voters (controllers) and their internal addresses.
    pub voters: BTreeMap<NodeId, String>,
    /// The address other nodes dial for this node's internal service.
    pub internal_address: String,
    /// The client address other brokers hand out for this one.
    pub advertise: String,
    /// This broker's rack.
    pub rack: Option<String>,
    /// The Kafka address other brokers hand out for this one.
    pub kafka_advertise: Option<String>,
    /// A broker that does not heartbeat for this long is fenced.
    pub session_timeout: Duration,
    /// How often a broker heartbeats.
    pub broker_heartbeat: Duration,
    /// Raft leader heartbeat, and (openraft 0.9 ties them) how long an
    /// append to a follower may take, its sync included, before it is
    /// abandoned and sent again: too short a deadline on a busy disk and a
    /// lagging follower never catches up.
    pub raft_heartbeat: Duration,
    /// Raft election timeout range.
    pub election_timeout: (Duration, Duration),
    /// A snapshot is taken after this many entries since the last one.
    pub snapshot_every: u64,
    /// Replication factor of topics created without one (None: min(3,
    /// live brokers)).
    pub default_replication_factor: Option<i32>,
    /// How often the controller gives partitions back to their preferred
    /// leaders (live and in sync); `None`: never by itself.
    pub leader_balance_interval: Option<Duration>,
    /// Mutual TLS for this node's calls to the others (`None`: clear text).
    pub internal_tls: Option<std::sync::Arc<crate::dial::InternalTls>>,
}

impl ClusterConfig {
    /// Defaults for everything but identity and addresses.
    pub fn new(
        node_id: NodeId,
        dir: PathBuf,
        voters: BTreeMap<NodeId, String>,
        internal_address: String,
        advertise: String,
    ) -> Self {
        Self {
            node_id,
            dir,
            voters,
            internal_address,
            advertise,
            rack: None,
            kafka_advertise: None,
            session_timeout: Duration::from_secs(6),
            broker_heartbeat: Duration::from_millis(250),
            raft_heartbeat: Duration::from_millis(200),
            election_timeout: (Duration::from_millis(600), Duration::from_millis(1200)),
            snapshot_every: 5000,
            default_replication_factor: None,
            leader_balance_interval: Some(Duration::from_secs(30)),
            internal_tls: None,
        }
    }
}

/// Where a partition's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This broker leads it (or the topic is unknown to the metadata, so
    /// the local broker answers with its usual error).
    Local,
    /// Another broker leads it.
    Remote {
        /// Its id.
        id: NodeId,
        /// Its internal address (forwarding).
        internal: String,
        /// Its client address (smart clients).
        advertised: String,
    },
}

/// One node as `DescribeCluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Id.
    pub id: NodeId,
    /// Client address ("" if never registered as a broker).
    pub advertised: String,
    /// Internal address.
    pub internal: String,
    /// Rack.
    pub rack: Option<String>,
    /// "voter" or "learner".
    pub role: &'static str,
    /// Registered and not fenced.
    pub live: bool,
    /// Partitions led.
    pub leader_partitions: usize,
    /// Replicas held.
    pub replica_partitions: usize,
    /// Registration epoch.
    pub epoch: u64,
    /// Last metadata index it is known to hold (the leader's view).
    pub matched: Option<u64>,
}

/// What the controller knows of broker sessions (on the Raft leader).
#[derive(Default)]
struct Sessions {
    /// The term this node became leader in, and when it noticed.
    leader_since: Option<(u64, Instant)>,
    /// Last heartbeat per broker.
    seen: HashMap<NodeId, Instant>,
    /// Fences proposed and not yet applied (never proposed twice).
    fencing: HashMap<NodeId, u64>,
    /// Brokers another broker reported unreachable, and when.
    suspected: HashMap<NodeId, Instant>,
}

/// How long a report that a broker is unreachable counts.
const SUSPICION_TTL: Duration = Duration::from_secs(2);
/// Heartbeats a suspected broker must have missed before it is fenced
/// (without a report, the whole session must lapse).
const SUSPECT_MISSED_HEARTBEATS: u32 = 3;

/// How long a restarted voter waits to hear from a controller before it
/// may start an election itself.
const RESTART_ELECTION_GRACE: Duration = Duration::from_secs(3);

/// A running cluster node.
pub struct Cluster {
    config: ClusterConfig,
    raft: Raft<TypeConfig>,
    sm: StateMachine,
    logs: LogStore,
    peers: Peers,
    /// Broker sessions; held only to read or update the maps, never across
    /// an await.
    sessions: Mutex<Sessions>,
    /// This broker's registration epoch (0 until registered).
    epoch: AtomicU64,
    /// The registration epoch, once this process has registered: the
    /// local broker takes partition roles only from then on.
    registered: watch::Sender<u64>,
    /// Brokers this one failed to reach lately (replica fetches), for its
    /// heartbeats. Held only to read or update the map.
    unreachable: Mutex<HashMap<NodeId, Instant>>,
    /// Metadata index the local broker has applied.
    synced: watch::Sender<u64>,
    /// Set when the node stops; background tasks end.
    stopping: watch::Sender<bool>,
    /// Set by [`Cluster::resign`]: the broker is leaving and does not
    /// register again.
    leaving: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// Opens the metadata storage (on the blocking pool), starts Raft and,
    /// on a voter with an empty log, bootstraps the static voter set.
    /// Background tasks (heartbeats, session checks, learner join) start
    /// with [`Cluster::start_tasks`].
    pub async fn open(config: ClusterConfig) -> Result<Arc<Self>, ClusterError> {
        let fatal = |e: String| ClusterError::Fatal(e);
        if config.node_id > super::metadata::MAX_NODE_ID {
            return Err(ClusterError::Unsupported(format!(
                "node id {} must be in [0, {}]",
                config.node_id,
                super::metadata::MAX_NODE_ID
            )));
        }
        let dir = config.dir.clone();
        let (logs, sm) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::storage::StorageError>((
                LogStore::open(&dir)?,
                StateMachine::open(&dir)?,
            ))
        })
        .await
        .map_err(|e| fatal(e.to_string()))?
        .map_err(|e| fatal(format!("opening the metadata log: {e}")))?;
        let raft_config = openraft::Config {
            cluster_name: "sluice".into(),
            heartbeat_interval: config.raft_heartbeat.as_millis() as u64,
            election_timeout_min: config.election_timeout.0.as_millis() as u64,
            election_timeout_max: config.election_timeout.1.as_millis() as u64,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.snapshot_every.min(1000),
            snapshot_max_chunk_size: 4 << 20,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Unsupported(format!("raft settings: {e}")))?;
        let peers = Peers::with_tls(config.internal_tls.clone());
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            Network::new(peers.clone()),
            logs.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| fatal(format!("starting raft: {e}")))?;
        let restarted = raft
            .is_initialized()
            .await
            .map_err(|e| fatal(e.to_string()))?;
        if restarted {
            // A node back from a restart has a stale log: its own election
            // cannot win, but its higher term would depose a healthy
            // controller (openraft 0.9 has no pre-vote). The controller's
            // first messages may be late (its connection to this node's old
            // address has to fail first), so hold elections until a
            // controller is heard from or the grace period ends.
            raft.runtime_config().elect(false);
            let r = raft.clone();
            let at_start = raft.metrics().borrow().last_applied;
            tokio::spawn(async move {
                let mut m = r.metrics();
                // Heard from: it has committed something new here (a stored
                // vote alone may name a controller that is gone).
                let heard = m.wait_for(|m| m.current_leader.is_some() && m.last_applied > at_start);
                let _ = tokio::time::timeout(RESTART_ELECTION_GRACE, heard).await;
                r.runtime_config().elect(true);
            });
        }
        if config.voters.contains_key(&config.node_id) && !restarted {
            // Every voter proposes the same initial membership; the log
            // entry is identical on each, so whichever wins the first
            // election, there is one history.
            let members: BTreeMap<NodeId, BasicNode> = config
                .voters
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => info!(voters = ?config.voters, "bootstrapped the metadata quorum"),
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(fatal(format!("bootstrapping: {e}"))),
            }
        }
        Ok(Arc::new(Self {
            config,
            raft,
            sm,
            logs,
            peers,
            sessions: Mutex::new(Sessions::default()),
            unreachable: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            registered: watch::Sender::new(0),
            synced: watch::Sender::new(0),
            stopping: watch::Sender::new(false),
            leaving: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Starts the broker's registration and heartbeats, the controller's
    /// session checks and, on a node that is not a voter, the request to
    /// follow the metadata log as a learner.
    pub fn start_tasks(self: &Arc<Self>) {
        if !self.config.voters.contains_key(&self.config.node_id) {
            let me = self.clone();
            tokio::spawn(async move { me.join_as_learner().await });
        }
        let me = self.clone();
        tokio::spawn(async move { me.broker_loop().await });
        let me = self.clone();
        tokio::spawn(async move { me.controller_loop().await });
    }

    /// Stops Raft and closes the metadata log.
    pub async fn shutdown(&self) {
        self.stopping.send_replace(true);
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "raft did not stop cleanly");
        }
        let logs = self.logs.clone();
        let _ = tokio::task::spawn_blocking(move || logs.close()).await;
    }

    /// The Raft instance (the internal service hands it messages).
    pub(crate) fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The settings this node runs with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The newest applied metadata image.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.sm.image()
    }

    /// Follows the applied metadata.
    pub fn subscribe(&self) -> watch::Receiver<Applied> {
        self.sm.subscribe()
    }

    /// Records that the local broker has applied the image up to `index`.
    pub fn mark_synced(&self, index: u64) {
        self.synced.send_if_modified(|s| {
            let raised = index > *s;
            *s = (*s).max(index);
            raised
        });
    }

    /// Metadata index the local broker has applied.
    pub fn synced_index(&self) -> u64 {
        *self.synced.borrow()
    }

    /// Waits until the local broker has applied the metadata up to
    /// `index`.
    pub async fn wait_synced(&self, index: u64, timeout: Duration) -> Result<(), ClusterError> {
        let mut rx = self.synced.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s >= index))
            .await
            .map_err(|_| ClusterError::NotCaughtUp(timeout.as_millis() as u64))?
            .map_err(|_| ClusterError::Fatal("the metadata follower stopped".into()))?;
        Ok(())
    }

    /// Ready to serve: a controller is known, this process has registered
    /// and is not fenced, and the local broker has applied everything this
    /// node knows to be committed.
    pub fn ready(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let applied = m.last_applied.map(|l| l.index);
        m.current_leader.is_some()
            && self.registered_in(&self.image())
            && applied.is_some_and(|a| *self.synced.borrow() >= a)
    }

    /// Whether `image` shows this process registered (in the epoch it
    /// registered with) and not fenced. Until then the image's view of
    /// this broker is a previous incarnation's: a restarted broker must
    /// not lead (or follow) by it, since the quorum has moved on without
    /// it and its unsynced tail may be gone.
    pub fn registered_in(&self, image: &MetadataImage) -> bool {
        let mine = *self.registered.borrow();
        mine != 0
            && image
                .brokers
                .get(&self.config.node_id)
                .is_some_and(|b| b.epoch == mine && !b.fenced)
    }

    /// Changes when this process registers (again).
    pub fn watch_registration(&self) -> watch::Receiver<u64> {
        self.registered.subscribe()
    }

    /// The active controller (the Raft leader), if known.
    pub fn controller(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Raft term, last applied index as this node sees them.
    pub fn raft_position(&self) -> (u64, Option<u64>) {
        let m = self.raft.metrics().borrow().clone();
        (m.current_term, m.last_applied.map(|l| l.index))
    }

    /// The internal address of node `id`.
    /// The internal address this node dials for node `id`: a voter's as
    /// configured, else a learner's or a registered broker's.
    pub fn address_of(&self, id: NodeId) -> Option<String> {
        if let Some(a) = self.config.voters.get(&id) {
            return Some(a.clone());
        }
        let m = self.raft.metrics().borrow().clone();
        if let Some(n) = m.membership_config.membership().get_node(&id) {
            return Some(n.addr.clone());
        }
        self.image().brokers.get(&id).map(|b| b.internal.clone())
    }

    /// Proposes `cmd` to the quorum, forwarding it to the active controller
    /// and waiting out elections; returns its outcome and log index.
    pub async fn propose(&self, cmd: Command) -> Result<(Outcome, u64), ClusterError> {
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        let mut target = self.controller();
        let mut last_problem = String::from("no leader elected yet");
        loop {
            let reply: ProposeReply = match target {
                None => Err(Declined::NotLeader(None)),
                Some(id) if id == self.config.node_id => self.propose_here(cmd.clone()).await,
                Some(id) => match self.address_of(id) {
                    None => Err(Declined::Failed(format!("no address known for node {id}"))),
                    Some(addr) => self
                        .peers
                        .call(id, &addr, Method::Propose, &cmd, CALL_TIMEOUT)
                        .await
                        .unwrap_or_else(|e| Err(Declined::Failed(e.to_string()))),
                },
            };
            match reply {
                Ok((Outcome::Refused(r), _)) => return Err(r.into()),
                Ok((outcome, index)) => return Ok((outcome, index)),
                Err(Declined::NotLeader(Some(l))) if Some(l) != target => {
                    target = Some(l);
                    continue;
                }
                Err(Declined::NotLeader(_)) => {}
                Err(Declined::Failed(why)) => last_problem = why,
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NoController(last_problem));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            target = self.controller();
        }
    }

    /// Proposes `cmd` through this node's Raft (only the leader accepts).
    pub(crate) async fn propose_here(&self, cmd: Command) -> ProposeReply {
        // Without a quorum the write never commits: give up rather than
        // wait forever (the entry is dropped when a new leader's log
        // replaces it).
        let written = tokio::time::timeout(PROPOSE_TIMEOUT, self.raft.client_write(cmd)).await;
        let Ok(written) = written else {
            return Err(Declined::Failed(format!(
                "not committed within {} s: no quorum reachable",
                PROPOSE_TIMEOUT.as_secs()
            )));
        };
        match written {
            Ok(resp) => Ok((resp.data, resp.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Declined::NotLeader(f.leader_id))
            }
            Err(e) => Err(Declined::Failed(e.to_string())),
        }
    }

    fn is_leader(&self) -> Result<(), Declined> {
        let m = self.raft.metrics().borrow().clone();
        if m.state == ServerState::Leader {
            Ok(())
        } else {
            Err(Declined::NotLeader(m.current_leader))
        }
    }

    /// Controlled shutdown: fences this broker in the metadata, so its
    /// partitions get new leaders from their ISRs before it stops (rather
    /// than after its session lapses), and stops registering it again.
    /// Waits at most `timeout`.
    pub async fn resign(&self, timeout: Duration) {
        self.leaving.store(true, Ordering::Release);
        let id = self.config.node_id;
        let epoch = self.epoch.load(Ordering::Acquire);
        if epoch == 0 {
            return;
        }
        match tokio::time::timeout(timeout, self.propose(Command::FenceBroker { id, epoch })).await
        {
            Ok(Ok((_, index))) => {
                let _ = self.wait_synced(index, timeout).await;
                info!(node = id, "leadership handed over for shutdown");
            }
            Ok(Err(e)) => warn!(error = %e, "controlled shutdown could not fence this broker"),
            Err(_) => warn!("controlled shutdown timed out"),
        }
    }

    /// Reports that this broker could not reach `id` (a replica fetch to
    /// it failed); carried by the next heartbeats for a while.
    pub fn report_unreachable(&self, id: NodeId) {
        self.unreachable.lock().insert(id, Instant::now());
    }

    /// Reports that this broker reached `id` again.
    pub fn report_reachable(&self, id: NodeId) {
        self.unreachable.lock().remove(&id);
    }

    /// A broker's heartbeat, on the controller.
    pub(crate) fn heartbeat_here(&self, hb: Heartbeat) -> UnitReply {
        self.is_leader()?;
        let now = Instant::now();
        let mut s = self.sessions.lock();
        s.seen.insert(hb.id, now);
        for id in hb.suspects {
            if id != hb.id {
                s.suspected.insert(id, now);
            }
        }
        Ok(())
    }

    /// A broker-only node joins as a learner, on the controller.
    pub(crate) async fn add_learner_here(&self, join: JoinAsLearner) -> UnitReply {
        self.is_leader()?;
        match self
            .raft
            .add_learner(join.id, BasicNode::new(&join.internal), false)
            .await
        {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Declined::NotLeader(f.leader_id))
            }
            Err(e) => Err(Declined::Failed(e.to_string())),
        }
    }

    async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Completes once the node stops.
    pub async fn stopped_signal(&self) {
        self.stopped().await
    }

    /// Until the membership lists this node, asks the controller to add it
    /// as a learner.
    async fn join_as_learner(self: Arc<Self>) {
        let me = self.config.node_id;
        let join = JoinAsLearner {
            id: me,
            internal: self.config.internal_address.clone(),
        };
        let voters: Vec<(NodeId, String)> = self
            .config
            .voters
            .iter()
            .map(|(i, a)| (*i, a.clone()))
            .collect();
        let mut i = 0usize;
        loop {
            let known = self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&me)
                .is_some();
            if known {
                info!(node = me, "following the metadata log as a learner");
                return;
            }
            let (id, addr) = &voters[i % voters.len().max(1)];
            i += 1;
            let reply: Result<UnitReply, ClusterError> = self
                .peers
                .call(*id, addr, Method::AddLearner, &join, CALL_TIMEOUT)
                .await;
            if let Ok(Err(Declined::Failed(why))) = &reply {
                warn!(error = %why, "joining as a learner failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = self.stopped() => return,
            }
        }
    }

    /// Registers this broker (again after a restart or a fence) and
    /// heartbeats to the controller.
    async fn broker_loop(self: Arc<Self>) {
        let me = self.config.node_id;
        loop {
            let image = self.image();
            let mine = self.epoch.load(Ordering::Acquire);
            let registered = image.brokers.get(&me).is_some_and(|b| {
                !b.fenced
                    && b.epoch == mine
                    && b.advertised == self.config.advertise
                    && b.internal == self.config.internal_address
                    && b.rack == self.config.rack
                    && b.kafka == self.config.kafka_advertise
            });
            // Registered, but not applied here yet (this node's copy of the
            // metadata lags): registering again would fence this broker
            // once more (a registration within the session is a new
            // incarnation), so wait for the image to catch up.
            let applying = mine != 0 && image.brokers.get(&me).is_none_or(|b| b.epoch < mine);
            let leaving = self.leaving.load(Ordering::Acquire);
            if !registered && !applying && !leaving && self.controller().is_some() {
                let cmd = Command::RegisterBroker {
                    id: me,
                    advertised: self.config.advertise.clone(),
                    internal: self.config.internal_address.clone(),
                    kafka: self.config.kafka_advertise.clone(),
                    rack: self.config.rack.clone(),
                };
                match self.propose(cmd).await {
                    Ok((Outcome::Registered { epoch }, _)) => {
                        self.epoch.store(epoch, Ordering::Release);
                        self.registered.send_replace(epoch);
                        info!(node = me, epoch, "broker registered");
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "broker registration failed; retrying"),
                }
            }
            if let Some(leader) = self.controller() {
                let suspects = {
                    let mut u = self.unreachable.lock();
                    u.retain(|_, at| at.elapsed() < SUSPICION_TTL);
                    u.keys().copied().collect()
                };
                let hb = Heartbeat {
                    id: me,
                    epoch: self.epoch.load(Ordering::Acquire),
                    suspects,
                };
                if leader == me {
                    let _ = self.heartbeat_here(hb);
                } else if let Some(addr) = self.address_of(leader) {
                    let _: Result<UnitReply, _> = self
                        .peers
                        .call(leader, &addr, Method::Heartbeat, &hb, CALL_TIMEOUT)
                        .await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.broker_heartbeat) => {}
                _ = self.stopped() => return,
            }
        }
    }

    /// On the controller: fences brokers whose session lapsed, and every
    /// `leader_balance_interval` moves partitions back to their preferred
    /// leaders.
    async fn controller_loop(self: Arc<Self>) {
        let mut next_balance = self
            .config
            .leader_balance_interval
            .map(|i| Instant::now() + i);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SESSION_CHECK) => {}
                _ = self.stopped() => return,
            }
            let m = self.raft.metrics().borrow().clone();
            let now = Instant::now();
            let due: Vec<(NodeId, u64)> = {
                let mut s = self.sessions.lock();
                if m.state != ServerState::Leader {
                    s.leader_since = None;
                    s.fencing.clear();
                    continue;
                }
                // A new controller gives every broker a full session
                // before judging it.
                let since = match s.leader_since {
                    Some((term, at)) if term == m.current_term => at,
                    _ => {
                        s.leader_since = Some((m.current_term, now));
                        s.seen.clear();
                        s.fencing.clear();
                        now
                    }
                };
                let image = self.image();
                let mut due = Vec::new();
                s.suspected
                    .retain(|_, at| now.duration_since(*at) < SUSPICION_TTL);
                let quick = self.config.broker_heartbeat * SUSPECT_MISSED_HEARTBEATS;
                for b in image.brokers.values().filter(|b| !b.fenced) {
                    let last = s.seen.get(&b.id).copied().unwrap_or(since).max(since);
                    let silent = now.duration_since(last);
                    // A lapsed session, or a broker others cannot reach
                    // that has also missed several heartbeats here.
                    let lapsed = silent > self.config.session_timeout
                        || (silent > quick && s.suspected.contains_key(&b.id));
                    if lapsed && s.fencing.get(&b.id) != Some(&b.epoch) {
                        s.fencing.insert(b.id, b.epoch);
                        due.push((b.id, b.epoch));
                    }
                }
                due
            };
            for (id, epoch) in due {
                warn!(broker = id, epoch, "broker session expired; fencing it");
                if let Err(e) = self.propose_here(Command::FenceBroker { id, epoch }).await {
                    warn!(broker = id, error = ?e, "fencing failed");
                    self.sessions.lock().fencing.remove(&id);
                }
            }
            if let (Some(at), Some(every)) = (next_balance, self.config.leader_balance_interval) {
                if now >= at {
                    next_balance = Some(now + every);
                    let imbalance = self.image().preferred_imbalance();
                    if imbalance > 0 {
                        info!(
                            partitions = imbalance,
                            "moving partitions back to their preferred leaders"
                        );
                        if let Err(e) = self
                            .propose_here(Command::ElectPreferredLeaders { topic: None })
                            .await
                        {
                            warn!(error = ?e, "preferred-leader election failed");
                        }
                    }
                }
            }
        }
    }

    /// Where requests for `topic`'s `partition` go, by the applied image.
    pub fn route(&self, topic: &str, partition: i32) -> Result<Route, ClusterError> {
        let image = self.image();
        let Some(t) = image.topics.get(topic) else {
            return Ok(Route::Local);
        };
        let Some(p) = usize::try_from(partition)
            .ok()
            .and_then(|i| t.partitions.get(i))
        else {
            return Ok(Route::Local);
        };
        match p.leader {
            Some(l) if l == self.config.node_id => Ok(Route::Local),
            Some(l) => {
                let b = image.brokers.get(&l);
                Ok(Route::Remote {
                    id: l,
                    internal: b
                        .map(|b| b.internal.clone())
                        .or_else(|| self.address_of(l))
                        .unwrap_or_default(),
                    advertised: b.map(|b| b.advertised.clone()).unwrap_or_default(),
                })
            }
            None => Err(ClusterError::NoLeader {
                topic: topic.to_string(),
                partition,
                isr: p.isr.clone(),
            }),
        }
    }

    /// The internal address of the active controller.
    pub fn controller_address(&self) -> Option<(NodeId, String)> {
        let id = self.controller()?;
        Some((id, self.address_of(id)?))
    }

    /// Every node: voters and learners from the Raft membership, brokers
    /// from the image.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let m = self.raft.metrics().borrow().clone();
        let image = self.image();
        let membership = m.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut ids: std::collections::BTreeSet<NodeId> =
            membership.nodes().map(|(id, _)| *id).collect();
        ids.extend(image.brokers.keys().copied());
        ids.into_iter()
            .map(|id| {
                let b = image.brokers.get(&id);
                NodeStatus {
                    id,
                    advertised: b.map(|b| b.advertised.clone()).unwrap_or_default(),
                    internal: b
                        .map(|b| b.internal.clone())
                        .or_else(|| membership.get_node(&id).map(|n| n.addr.clone()))
                        .unwrap_or_default(),
                    rack: b.and_then(|b| b.rack.clone()),
                    role: if voters.contains(&id) {
                        "voter"
                    } else {
                        "learner"
                    },
                    live: b.is_some_and(|b| !b.fenced),
                    leader_partitions: image.leader_count(id),
                    replica_partitions: image.replica_count(id),
                    epoch: b.map_or(0, |b| b.epoch),
                    matched: m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned())
                        .flatten()
                        .map(|l| l.index)
                        .or_else(|| {
                            (id == self.config.node_id)
                                .then_some(m.last_log_index)
                                .flatten()
                        }),
                }
            })
            .collect()
    }

    /// Live brokers now (registered and not fenced).
    pub fn live_brokers(&self) -> usize {
        self.image().brokers.values().filter(|b| !b.fenced).count()
    }

    /// Removes broker `id` from the metadata (refused while it holds
    /// replicas) and, if it is a learner, from the Raft membership.
    pub async fn decommission(&self, id: NodeId) -> Result<(), ClusterError> {
        if self.config.voters.contains_key(&id) {
            return Err(ClusterError::Unsupported(format!(
                "node {id} is a controller voter; voters are fixed by --controller-voters"
            )));
        }
        // Its replicas move first: each partition it holds is reassigned
        // to the live broker holding the fewest replicas among those it
        // does not use yet.
        let image = self.image();
        if !image.brokers.contains_key(&id) {
            return Err(ClusterError::Refused(
                crate::cluster::Refusal::UnknownBroker(id),
            ));
        }
        let mut load: BTreeMap<NodeId, usize> = image
            .brokers
            .values()
            .filter(|b| !b.fenced && b.id != id)
            .map(|b| (b.id, image.replica_count(b.id)))
            .collect();
        for t in image.topics.values() {
            for (i, p) in t.partitions.iter().enumerate() {
                if !p.replicas.contains(&id) || p.removing.contains(&id) {
                    continue;
                }
                let Some((&to, _)) = load
                    .iter()
                    .filter(|(b, _)| !p.replicas.contains(b))
                    .min_by_key(|(b, n)| (**n, **b))
                else {
                    return Err(ClusterError::Unsupported(format!(
                        "no live broker can take {}-{i} from broker {id}: every other live broker holds a replica already",
                        t.name
                    )));
                };
                *load.entry(to).or_default() += 1;
                let replicas = p
                    .replicas
                    .iter()
                    .map(|r| if *r == id { to } else { *r })
                    .collect();
                let (outcome, _) = self
                    .propose(Command::ReassignPartition {
                        topic: t.name.clone(),
                        partition: i as i32,
                        replicas,
                    })
                    .await?;
                if let Outcome::Refused(r) = outcome {
                    return Err(ClusterError::Refused(r));
                }
            }
        }
        // Then it goes, once the new replicas caught up and it holds none.
        let deadline = Instant::now() + DECOMMISSION_TIMEOUT;
        while self.image().replica_count(id) > 0 {
            if Instant::now() > deadline {
                return Err(ClusterError::Unsupported(format!(
                    "broker {id} still holds {} replicas after {} s: the reassignments go on; decommission again once they finish",
                    self.image().replica_count(id),
                    DECOMMISSION_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (outcome, _) = self.propose(Command::UnregisterBroker { id }).await?;
        if let Outcome::Refused(r) = outcome {
            return Err(ClusterError::Refused(r));
        }
        Ok(())
    }
}
