//! Where each partition's requests go: the client asks any broker for
//! `Metadata` and then talks to each partition's leader directly, so a
//! cluster does not forward its requests. On a NOT_LEADER reply
//! (`UNAVAILABLE`, with a `sluice-leader` trailer) or a broker it cannot
//! reach, the client refreshes the table; a broker whose advertised
//! address does not answer is skipped (the bootstrap broker forwards for
//! it). Against a single broker nothing changes.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::connect::{Conn, Prepared};
use parking_lot::RwLock;

use super::pb;

/// Refreshes of one topic's routes at most this often.
const MIN_REFRESH: Duration = Duration::from_millis(100);

/// The routing table. Read on every routed call, written on refreshes;
/// held only to read or swap entries, never across an await.
#[derive(Default)]
pub(crate) struct Routes {
    table: RwLock<Table>,
    /// How leaders are dialed (TLS, token).
    prepared: Prepared,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.table.read();
        f.debug_struct("Routes")
            .field("leaders", &t.leaders.len())
            .field("clustered", &t.clustered)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Table {
    /// Leader broker id per (topic, partition).
    leaders: HashMap<(String, i32), i32>,
    /// Client address per broker id.
    addresses: HashMap<i32, String>,
    /// Channels by address (lazily connected).
    channels: HashMap<String, Conn>,
    /// Addresses that did not answer: use the bootstrap broker instead.
    unreachable: HashSet<String>,
    /// When each topic was last refreshed.
    refreshed: HashMap<String, Instant>,
    /// More than one broker: routing matters.
    clustered: bool,
}

impl Routes {
    /// Routes whose leader channels use `prepared`.
    pub fn new(prepared: Prepared) -> Self {
        Self {
            table: Default::default(),
            prepared,
        }
    }

    /// Whether `topic` was refreshed recently enough.
    pub fn fresh(&self, topic: &str) -> bool {
        self.table
            .read()
            .refreshed
            .get(topic)
            .is_some_and(|t| t.elapsed() < MIN_REFRESH)
    }

    /// Whether `topic` was ever looked up.
    pub fn known(&self, topic: &str) -> bool {
        self.table.read().refreshed.contains_key(topic)
    }

    /// Records a `Metadata` answer for `topic`.
    pub fn update(&self, topic: &str, m: &pb::MetadataResponse) {
        let mut t = self.table.write();
        t.clustered = m.brokers.len() > 1;
        for b in &m.brokers {
            t.addresses.insert(b.id, b.address.clone());
        }
        t.leaders.retain(|(name, _), _| name != topic);
        for tm in m.topics.iter().filter(|tm| tm.name == topic) {
            for p in &tm.partitions {
                if p.leader >= 0 {
                    t.leaders.insert((tm.name.clone(), p.partition), p.leader);
                }
            }
        }
        t.refreshed.insert(topic.to_string(), Instant::now());
    }

    /// Records a lookup of `topic` that found nothing.
    pub fn mark_refreshed(&self, topic: &str) {
        let mut t = self.table.write();
        t.leaders.retain(|(name, _), _| name != topic);
        t.refreshed.insert(topic.to_string(), Instant::now());
    }

    /// The leader's address for a partition, if routing applies and it is
    /// known and reachable.
    pub fn leader_address(&self, topic: &str, partition: i32) -> Option<String> {
        let t = self.table.read();
        if !t.clustered {
            return None;
        }
        let id = t.leaders.get(&(topic.to_string(), partition))?;
        let addr = t.addresses.get(id)?;
        (!t.unreachable.contains(addr)).then(|| addr.clone())
    }

    /// A channel to `address` (cached).
    pub fn channel(&self, address: &str) -> Option<Conn> {
        if let Some(c) = self.table.read().channels.get(address) {
            return Some(c.clone());
        }
        let e = super::bootstrap::endpoint(&self.prepared.url(address)).ok()?;
        let c = self.prepared.conn(
            self.prepared
                .endpoint(e)
                .ok()?
                .connect_timeout(Duration::from_secs(2))
                .connect_with_connector_lazy(crate::dial::Dialer),
        );
        self.table
            .write()
            .channels
            .insert(address.to_string(), c.clone());
        Some(c)
    }

    /// `address` did not answer: route its partitions through the
    /// bootstrap broker until the next refresh names it again.
    pub fn mark_unreachable(&self, address: &str) {
        let mut t = self.table.write();
        t.unreachable.insert(address.to_string());
        t.channels.remove(address);
    }

    /// A refresh clears the unreachable marks (the broker may be back).
    pub fn clear_unreachable(&self) {
        self.table.write().unreachable.clear();
    }
}

/// Whether a failed call means the routes are stale: NOT_LEADER (the
/// `sluice-leader` trailer) or the leader unreachable.
pub(crate) fn is_stale_route(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable
}
