//! The async shell over [`Groups`]: one lock, and a oneshot waiter per
//! call that waits (a join for its rebalance, a follower's sync for the
//! leader's assignment).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::{ClassicDescription, ClassicError, ClassicState, Event, Groups, Join, Joined};

type JoinReply = oneshot::Sender<Result<Joined, ClassicError>>;
type SyncReply = oneshot::Sender<Result<Bytes, ClassicError>>;

#[derive(Default)]
struct Shell {
    groups: Groups,
    joins: HashMap<(String, String), JoinReply>,
    syncs: HashMap<(String, String), SyncReply>,
}

impl Shell {
    fn deliver(&mut self) {
        for e in self.groups.take_events() {
            match e {
                Event::Joined(g, m, r) => {
                    if let Some(tx) = self.joins.remove(&(g, m)) {
                        let _ = tx.send(r);
                    }
                }
                Event::Synced(g, m, r) => {
                    if let Some(tx) = self.syncs.remove(&(g, m)) {
                        let _ = tx.send(r);
                    }
                }
            }
        }
    }
}

/// The async shell over [`Groups`]: calls that wait get a receiver.
pub struct ClassicGroups {
    /// Held only for one state-machine step and its deliveries; never
    /// across an await.
    inner: Mutex<Shell>,
    clock: crate::storage::Clock,
}

impl std::fmt::Debug for ClassicGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassicGroups").finish_non_exhaustive()
    }
}

impl ClassicGroups {
    /// Groups timed by `clock` (monotonic ms).
    pub fn new(clock: crate::storage::Clock) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Shell::default()),
            clock,
        })
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Joins; the receiver answers when the rebalance completes.
    pub fn join(
        &self,
        group: &str,
        j: Join,
    ) -> Result<oneshot::Receiver<Result<Joined, ClassicError>>, ClassicError> {
        let now = self.now();
        let mut s = self.inner.lock();
        let (tx, rx) = oneshot::channel();
        let id = s.groups.join(group, j, now)?;
        // A join replacing an earlier one of the same member answers the
        // earlier one as superseded.
        if let Some(old) = s.joins.insert((group.to_string(), id), tx) {
            let _ = old.send(Err(ClassicError::RebalanceInProgress));
        }
        s.deliver();
        Ok(rx)
    }

    /// Syncs; the receiver answers with the member's assignment.
    pub fn sync(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> oneshot::Receiver<Result<Bytes, ClassicError>> {
        let now = self.now();
        let mut s = self.inner.lock();
        let (tx, rx) = oneshot::channel();
        match s.groups.sync(group, member, generation, assignments, now) {
            Ok(Some(a)) => {
                let _ = tx.send(Ok(a));
            }
            Ok(None) => {
                s.syncs.insert((group.to_string(), member.to_string()), tx);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
        s.deliver();
        rx
    }

    /// A heartbeat.
    pub fn heartbeat(
        &self,
        group: &str,
        member: &str,
        generation: i32,
    ) -> Result<(), ClassicError> {
        let now = self.now();
        self.inner
            .lock()
            .groups
            .heartbeat(group, member, generation, now)
    }

    /// A member leaves.
    pub fn leave(&self, group: &str, member: &str) -> Result<(), ClassicError> {
        let now = self.now();
        let mut s = self.inner.lock();
        let r = s.groups.leave(group, member, now);
        s.deliver();
        r
    }

    /// Expires sessions and overdue rebalances.
    pub fn tick(&self) {
        let now = self.now();
        let mut s = self.inner.lock();
        s.groups.tick(now);
        s.deliver();
    }

    /// See [`Groups::check_commit`].
    pub fn check_commit(
        &self,
        group: &str,
        member: &str,
        generation: i32,
    ) -> Result<(), ClassicError> {
        self.inner
            .lock()
            .groups
            .check_commit(group, member, generation)
    }

    /// See [`Groups::has_members`].
    pub fn has_members(&self, group: &str) -> bool {
        self.inner.lock().groups.has_members(group)
    }

    /// See [`Groups::describe`].
    pub fn describe(&self, group: &str) -> Option<ClassicDescription> {
        self.inner.lock().groups.describe(group)
    }

    /// See [`Groups::list`].
    pub fn list(&self) -> Vec<(String, ClassicState, usize)> {
        self.inner.lock().groups.list()
    }
}
