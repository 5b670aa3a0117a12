//! A consumer group member: heartbeats in the background, consumes the
//! partitions the coordinator assigns, and commits offsets.
//!
//! # Delivery: when to commit
//!
//! [`Consumer::poll`] returns records and advances the consumer's position
//! past them; a commit stores the positions, and a member that takes over a
//! partition starts at its committed offset.
//!
//! * **At least once** (the default, and the usual choice): process what
//!   `poll` returned, then commit, either by calling [`Consumer::commit`]
//!   after processing or with `auto_commit_interval`, which commits the
//!   positions at the start of a later `poll` (so only records already
//!   processed). A crash redelivers what was processed after the last
//!   commit.
//! * **At most once**: call [`Consumer::commit`] right after `poll`,
//!   before processing, with `auto_commit_interval: None`. A crash loses
//!   what was being processed; nothing is delivered twice.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice::client::ClientError> {
//! use std::time::Duration;
//! use sluice::client::{Client, ConsumerConfig};
//! let client = Client::connect("http://127.0.0.1:9400").await?;
//! let mut consumer = client.consumer(ConsumerConfig {
//!     auto_commit_interval: None,
//!     ..ConsumerConfig::new("billing", ["orders"])
//! });
//! loop {
//!     let records = consumer.poll(Duration::from_secs(1)).await?;
//!     for r in &records { /* process r.record */ }
//!     consumer.commit().await?; // at least once
//! #   break;
//! }
//! consumer.close().await?;
//! # Ok(()) }
//! ```
//!
//! When the coordinator takes partitions away, `poll` stops reading them
//! (auto-commit commits their positions first) and confirms at once, so the
//! new owner starts from the committed offsets. Records of a revoked
//! partition that `poll` had buffered are dropped, never returned.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{pb, Client, ClientError};

/// Where a member starts on a partition without a committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// The oldest record held.
    Earliest,
    /// Records appended from now on.
    #[default]
    Latest,
    /// `poll` fails with `FAILED_PRECONDITION`.
    None,
}

/// Settings of a [`Consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Group to join.
    pub group: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Start of partitions without a committed offset.
    pub auto_offset_reset: OffsetReset,
    /// Commit positions this often (at the start of `poll`); `None` to
    /// commit only by calling [`Consumer::commit`].
    pub auto_commit_interval: Option<Duration>,
    /// Session timeout asked for (`None`: the broker's default).
    pub session_timeout: Option<Duration>,
    /// Time allowed to confirm a revocation (`None`: the broker's
    /// default).
    pub rebalance_timeout: Option<Duration>,
    /// Shown by `describe`.
    pub client_id: String,
    /// Records one `poll` returns at most.
    pub max_poll_records: usize,
    /// Bytes per partition read, about.
    pub fetch_max_bytes: i32,
    /// How long a commit or committed-offset lookup keeps retrying while
    /// brokers are unreachable or a coordinator moves, before `poll` or
    /// `commit` returns the error.
    pub request_timeout: Duration,
}

impl ConsumerConfig {
    /// Defaults for `group` on `topics`: latest when nothing is committed,
    /// auto-commit every 5 s.
    pub fn new<S: Into<String>>(group: &str, topics: impl IntoIterator<Item = S>) -> Self {
        Self {
            group: group.to_string(),
            topics: topics.into_iter().map(Into::into).collect(),
            auto_offset_reset: OffsetReset::Latest,
            auto_commit_interval: Some(Duration::from_secs(5)),
            session_timeout: None,
            rebalance_timeout: None,
            client_id: format!("sluice-rust/{}", crate::VERSION),
            max_poll_records: 10_000,
            fetch_max_bytes: 0,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// A record and where it came from.
#[derive(Debug, Clone)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// The record.
    pub record: pb::ConsumedRecord,
}

type Tp = (Arc<str>, i32);
type Assignment = BTreeSet<Tp>;

/// State shared with the heartbeat task. Locked briefly, never across
/// `.await`.
#[derive(Default)]
struct Membership {
    member_id: String,
    /// Epoch the next heartbeat sends: the newest assignment the member is
    /// within (everything it consumes is in `acked`).
    ack_epoch: i32,
    acked: Assignment,
    /// A newer assignment that takes away partitions still being consumed;
    /// `poll` stops them, then acknowledges.
    revoking: Option<(i32, Assignment)>,
    /// Partitions `poll` reads now.
    consuming: Assignment,
    /// The coordinator no longer knows this member (or its epoch): stop
    /// everything; the heartbeat task rejoins once nothing is consumed.
    fenced: bool,
    /// A heartbeat error that retrying cannot fix.
    error: Option<tonic::Status>,
    /// Last heartbeat interval the coordinator asked for.
    interval_ms: i32,
}

struct Shared {
    state: Mutex<Membership>,
    /// The assignment changed (or the member was fenced): `poll` wakes.
    assignment_changed: Notify,
    /// Heartbeat now (a revocation was applied, or the member leaves).
    heartbeat_now: Notify,
}

struct Batch {
    tp: Tp,
    generation: u64,
    result: Result<Vec<pb::ConsumedRecord>, tonic::Status>,
}

struct Fetcher {
    generation: u64,
    task: JoinHandle<()>,
}

/// A member of a consumer group. Dropping it without [`Consumer::close`]
/// stops it like a crash: the group moves its partitions after the session
/// timeout.
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    shared: Arc<Shared>,
    heartbeat: JoinHandle<()>,
    tx: mpsc::Sender<Batch>,
    rx: mpsc::Receiver<Batch>,
    fetchers: HashMap<Tp, Fetcher>,
    next_generation: u64,
    /// Next offset to return, per consumed partition.
    positions: HashMap<Tp, i64>,
    /// Last committed (by this member), to skip unchanged commits.
    committed: HashMap<Tp, i64>,
    last_commit: Instant,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.heartbeat.abort();
        for f in self.fetchers.values() {
            f.task.abort();
        }
    }
}

/// How long one heartbeat or commit may take before it is given up and
/// retried (through the next broker): well inside the session timeout, so
/// a broker that stopped answering does not cost the membership.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// `msg` as a request that gives up after [`CALL_TIMEOUT`].
fn timed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

fn is_fenced(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::NotFound | tonic::Code::Aborted)
}

fn assignment_in(v: Vec<pb::TopicPartitions>) -> Assignment {
    v.into_iter()
        .flat_map(|t| {
            let topic: Arc<str> = Arc::from(t.topic.as_str());
            t.partitions.into_iter().map(move |p| (topic.clone(), p))
        })
        .collect()
}

impl Consumer {
    pub(crate) fn start(client: Client, config: ConsumerConfig) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(Membership::default()),
            assignment_changed: Notify::new(),
            heartbeat_now: Notify::new(),
        });
        let heartbeat = tokio::spawn(heartbeat_loop(
            client.clone(),
            config.clone(),
            shared.clone(),
        ));
        let (tx, rx) = mpsc::channel(64);
        Self {
            client,
            config,
            shared,
            heartbeat,
            tx,
            rx,
            fetchers: HashMap::new(),
            next_generation: 0,
            positions: HashMap::new(),
            committed: HashMap::new(),
            last_commit: Instant::now(),
        }
    }

    /// Member id (empty until the first heartbeat answers).
    pub fn member_id(&self) -> String {
        self.shared.state.lock().member_id.clone()
    }

    /// Epoch the member heartbeats and commits with.
    pub fn member_epoch(&self) -> i32 {
        self.shared.state.lock().ack_epoch
    }

    /// Partitions being consumed now, sorted.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.shared
            .state
            .lock()
            .consuming
            .iter()
            .map(|(t, p)| (t.to_string(), *p))
            .collect()
    }

    /// Next offset `poll` returns per consumed partition.
    pub fn positions(&self) -> Vec<(String, i32, i64)> {
        let mut v: Vec<_> = self
            .positions
            .iter()
            .map(|((t, p), o)| (t.to_string(), *p, *o))
            .collect();
        v.sort();
        v
    }

    /// Waits up to `timeout` for records of the assigned partitions.
    /// Applies assignment changes and auto-commits first.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.reconcile().await?;
            if let Some(every) = self.config.auto_commit_interval {
                if self.last_commit.elapsed() >= every {
                    self.commit().await?;
                }
            }
            let batch = tokio::select! {
                b = self.rx.recv() => b,
                _ = self.shared.assignment_changed.notified() => continue,
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            };
            let Some(first) = batch else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            self.take(first, &mut out)?;
            while out.len() < self.config.max_poll_records {
                match self.rx.try_recv() {
                    Ok(b) => self.take(b, &mut out)?,
                    Err(_) => break,
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Keeps a batch if it is from a current fetcher.
    fn take(&mut self, b: Batch, out: &mut Vec<ConsumerRecord>) -> Result<(), ClientError> {
        let current = self
            .fetchers
            .get(&b.tp)
            .is_some_and(|f| f.generation == b.generation);
        if !current {
            return Ok(());
        }
        let records = match b.result {
            Ok(r) => r,
            Err(status) => {
                // The fetcher stopped for good (topic deleted, or no
                // committed offset with reset policy None).
                if let Some(f) = self.fetchers.remove(&b.tp) {
                    f.task.abort();
                }
                return Err(status.into());
            }
        };
        if let Some(last) = records.last() {
            self.positions.insert(b.tp.clone(), last.offset + 1);
        }
        out.extend(records.into_iter().map(|record| ConsumerRecord {
            topic: b.tp.0.clone(),
            partition: b.tp.1,
            record,
        }));
        Ok(())
    }

    /// Applies what the heartbeat task learned: stops revoked partitions
    /// (committing them first if auto-commit is on), acknowledges, and
    /// starts newly assigned ones.
    async fn reconcile(&mut self) -> Result<(), ClientError> {
        let (fenced, want, revoking, error) = {
            let st = self.shared.state.lock();
            let want = match &st.revoking {
                Some((_, a)) => a.clone(),
                None => st.acked.clone(),
            };
            (st.fenced, want, st.revoking.clone(), st.error.clone())
        };
        if let Some(e) = error {
            return Err(e.into());
        }
        if fenced {
            // Out of the group: commits would be refused; stop at once.
            for (_, f) in self.fetchers.drain() {
                f.task.abort();
            }
            self.positions.clear();
            self.committed.clear();
            self.shared.state.lock().consuming.clear();
            self.shared.heartbeat_now.notify_one();
            return Ok(());
        }
        let running: Assignment = self.fetchers.keys().cloned().collect();
        let revoked: Vec<Tp> = running.difference(&want).cloned().collect();
        if !revoked.is_empty() {
            if self.config.auto_commit_interval.is_some() {
                // Best effort: a fenced member's commit is refused, and the
                // new owner then starts from the last commit.
                let at = self.positions_of(&revoked);
                let _ = self.commit_partitions(at).await;
            }
            for tp in &revoked {
                if let Some(f) = self.fetchers.remove(tp) {
                    f.task.abort();
                }
                self.positions.remove(tp);
                self.committed.remove(tp);
            }
        }
        let added: Vec<Tp> = {
            let mut st = self.shared.state.lock();
            st.consuming = self.fetchers.keys().cloned().collect();
            if let (Some((e, a)), Some((ne, _))) = (&revoking, &st.revoking) {
                if e == ne && st.consuming.is_subset(a) {
                    st.ack_epoch = *e;
                    st.acked = a.clone();
                    st.revoking = None;
                    self.shared.heartbeat_now.notify_one();
                }
            }
            // Start what is acknowledged; mark it consumed before the
            // heartbeat task can acknowledge anything that lacks it.
            let added: Vec<Tp> = if st.revoking.is_none() {
                st.acked.difference(&st.consuming).cloned().collect()
            } else {
                Vec::new()
            };
            st.consuming.extend(added.iter().cloned());
            added
        };
        if !added.is_empty() {
            self.start_fetchers(added).await?;
        }
        Ok(())
    }

    async fn start_fetchers(&mut self, added: Vec<Tp>) -> Result<(), ClientError> {
        let topics: BTreeSet<String> = added.iter().map(|(t, _)| t.to_string()).collect();
        let topics: Vec<String> = topics.into_iter().collect();
        let group = &self.config.group;
        let committed: HashMap<Tp, i64> = self
            .client
            .retrying(self.config.request_timeout, || async {
                Ok(self
                    .client
                    .groups()
                    .fetch_offsets(timed(pb::FetchOffsetsRequest {
                        group: group.clone(),
                        topics: topics.clone(),
                    }))
                    .await?
                    .into_inner()
                    .offsets)
            })
            .await?
            .into_iter()
            .map(|c| ((Arc::from(c.topic.as_str()), c.partition), c.offset))
            .collect();
        for tp in added {
            let start = match committed.get(&tp) {
                Some(&o) => {
                    self.committed.insert(tp.clone(), o);
                    self.positions.insert(tp.clone(), o);
                    Start::Offset(o)
                }
                None => Start::Reset,
            };
            self.next_generation += 1;
            let generation = self.next_generation;
            let task = tokio::spawn(fetch_loop(
                self.client.clone(),
                tp.clone(),
                generation,
                start,
                self.config.auto_offset_reset,
                self.config.fetch_max_bytes,
                self.tx.clone(),
            ));
            self.fetchers.insert(tp, Fetcher { generation, task });
        }
        Ok(())
    }

    /// Commits the position of every consumed partition that moved since
    /// its last commit: everything `poll` has returned.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let at: Vec<(Tp, i64)> = self
            .positions
            .iter()
            .map(|(tp, o)| (tp.clone(), *o))
            .collect();
        self.commit_partitions(at).await?;
        self.last_commit = Instant::now();
        Ok(())
    }

    /// The positions of `tps` that `poll` has reached.
    fn positions_of(&self, tps: &[Tp]) -> Vec<(Tp, i64)> {
        tps.iter()
            .filter_map(|tp| Some((tp.clone(), *self.positions.get(tp)?)))
            .collect()
    }

    /// Commits the given next offsets, skipping those already committed.
    async fn commit_partitions(&mut self, at: Vec<(Tp, i64)>) -> Result<(), ClientError> {
        let offsets: Vec<pb::OffsetCommit> = at
            .iter()
            .filter(|(tp, o)| self.committed.get(tp) != Some(o))
            .map(|(tp, o)| pb::OffsetCommit {
                topic: tp.0.to_string(),
                partition: tp.1,
                offset: *o,
                metadata: String::new(),
            })
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        let (member_id, member_epoch) = {
            let st = self.shared.state.lock();
            (st.member_id.clone(), st.ack_epoch)
        };
        let done: Vec<(Tp, i64)> = offsets
            .iter()
            .map(|o| ((Arc::from(o.topic.as_str()), o.partition), o.offset))
            .collect();
        let request = pb::CommitOffsetsRequest {
            group: self.config.group.clone(),
            member_id,
            member_epoch,
            offsets,
        };
        self.client
            .retrying(self.config.request_timeout, || {
                let mut groups = self.client.groups();
                let request = timed(request.clone());
                async move { groups.commit_offsets(request).await }
            })
            .await
            .inspect_err(|s| {
                if is_fenced(s) {
                    // Out of the group: rejoin now rather than at the next
                    // heartbeat's refusal.
                    self.shared.heartbeat_now.notify_one();
                }
            })?;
        self.committed.extend(done);
        Ok(())
    }

    /// Commits the given next offsets (`topic`, `partition`, `offset`):
    /// for committing part of what `poll` returned.
    pub async fn commit_offsets(
        &mut self,
        offsets: &[(String, i32, i64)],
    ) -> Result<(), ClientError> {
        let at = offsets
            .iter()
            .map(|(t, p, o)| ((Arc::from(t.as_str()), *p), *o))
            .collect();
        self.commit_partitions(at).await
    }

    /// Commits (with auto-commit on), leaves the group so its partitions
    /// move at once, and stops.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let commit = if self.config.auto_commit_interval.is_some() {
            self.commit().await
        } else {
            Ok(())
        };
        self.heartbeat.abort();
        for (_, f) in self.fetchers.drain() {
            f.task.abort();
        }
        let member_id = self.member_id();
        if !member_id.is_empty() {
            self.client
                .groups()
                .heartbeat(pb::HeartbeatRequest {
                    group: self.config.group.clone(),
                    member_id,
                    member_epoch: -1,
                    ..Default::default()
                })
                .await?;
        }
        commit
    }
}

#[derive(Clone, Copy)]
enum Start {
    Offset(i64),
    Reset,
}

async fn heartbeat_loop(client: Client, config: ConsumerConfig, shared: Arc<Shared>) {
    let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis().min(i32::MAX as u128) as i32);
    loop {
        let (member_id, epoch, fenced, consuming_empty) = {
            let st = shared.state.lock();
            (
                st.member_id.clone(),
                st.ack_epoch,
                st.fenced,
                st.consuming.is_empty(),
            )
        };
        if fenced && !consuming_empty {
            // Rejoin only once nothing from the old membership is read.
            tokio::select! {
                _ = shared.heartbeat_now.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            continue;
        }
        let req = pb::HeartbeatRequest {
            group: config.group.clone(),
            member_id,
            member_epoch: if fenced { 0 } else { epoch },
            topics: config.topics.clone(),
            client_id: config.client_id.clone(),
            session_timeout_ms: ms(config.session_timeout),
            rebalance_timeout_ms: ms(config.rebalance_timeout),
        };
        let wait = match client.groups().heartbeat(timed(req)).await {
            Ok(r) => {
                let r = r.into_inner();
                let assignment = assignment_in(r.assignment);
                let mut st = shared.state.lock();
                st.fenced = false;
                st.member_id = r.member_id;
                st.interval_ms = r.heartbeat_interval_ms;
                let mut wait = Duration::from_millis(r.heartbeat_interval_ms.max(1) as u64);
                if r.member_epoch != st.ack_epoch {
                    if st.consuming.is_subset(&assignment) {
                        // Nothing to give up: confirm at once (so the group
                        // is stable sooner); poll starts the new partitions.
                        st.ack_epoch = r.member_epoch;
                        st.acked = assignment;
                        st.revoking = None;
                        wait = Duration::ZERO;
                    } else {
                        st.revoking = Some((r.member_epoch, assignment));
                    }
                    shared.assignment_changed.notify_one();
                }
                wait
            }
            Err(s) if is_fenced(&s) => {
                tracing::info!(group = %config.group, error = %s.message(), "fenced by the group coordinator; rejoining");
                let mut st = shared.state.lock();
                st.fenced = true;
                st.ack_epoch = 0;
                st.acked.clear();
                st.revoking = None;
                shared.assignment_changed.notify_one();
                Duration::ZERO
            }
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::InvalidArgument
                        | tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                ) =>
            {
                shared.state.lock().error = Some(s);
                shared.assignment_changed.notify_one();
                return;
            }
            Err(s) => {
                // Broker restarting or unreachable: retry soon (through
                // the next broker if this one is gone); the session on the
                // coordinator outlives short outages.
                tracing::debug!(group = %config.group, error = %s, "heartbeat failed; retrying");
                client.broker_failed(&s);
                let interval = shared.state.lock().interval_ms;
                Duration::from_millis(interval.clamp(100, 1000) as u64)
            }
        };
        tokio::select! {
            _ = shared.heartbeat_now.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Reads one partition into the consumer's channel until aborted.
async fn fetch_loop(
    client: Client,
    tp: Tp,
    generation: u64,
    start: Start,
    reset: OffsetReset,
    max_bytes: i32,
    tx: mpsc::Sender<Batch>,
) {
    use pb::position::Position as P;
    let mut next: Option<i64> = match start {
        Start::Offset(o) => Some(o),
        Start::Reset => None,
    };
    let reset_position = || match reset {
        OffsetReset::Earliest => Some(P::Earliest(())),
        OffsetReset::Latest => Some(P::Latest(())),
        OffsetReset::None => None,
    };
    let fail = |status: tonic::Status| Batch {
        tp: tp.clone(),
        generation,
        result: Err(status),
    };
    loop {
        let position = match next {
            Some(o) => P::Offset(o),
            None => match reset_position() {
                Some(p) => p,
                None => {
                    let _ = tx
                        .send(fail(tonic::Status::failed_precondition(format!(
                            "no committed offset for {}/{} and auto_offset_reset is none",
                            tp.0, tp.1
                        ))))
                        .await;
                    return;
                }
            },
        };
        // From the partition's leader (or through the broker in use).
        let (mut broker, leader) = client.broker_for(&tp.0, tp.1).await;
        let stream = broker
            .subscribe(pb::SubscribeRequest {
                topic: tp.0.to_string(),
                partition: tp.1,
                start: super::position(position),
                max_records: 0,
                max_bytes,
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::OutOfRange => {
                // The committed offset fell out of retention.
                tracing::warn!(topic = %tp.0, partition = tp.1, error = %s.message(), "offset out of range; applying auto_offset_reset");
                next = None;
                if reset_position().is_none() {
                    let _ = tx.send(fail(s)).await;
                    return;
                }
                continue;
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                let _ = tx.send(fail(s)).await;
                return;
            }
            Err(s) => {
                if !client.route_failed(&tp.0, leader.as_deref(), &s).await {
                    client.broker_failed(&s);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    next = Some(m.next_offset);
                    if m.records.is_empty() {
                        continue;
                    }
                    let b = Batch {
                        tp: tp.clone(),
                        generation,
                        result: Ok(m.records),
                    };
                    if tx.send(b).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    // Stream ended (broker stopping): resubscribe from
                    // the next offset, wherever the partition leads now.
                    client.refresh_routes(&tp.0).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                Err(s) => {
                    if !client.route_failed(&tp.0, leader.as_deref(), &s).await {
                        client.broker_failed(&s);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
            }
        }
    }
}
