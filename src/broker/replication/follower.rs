//! The follower side of replication: which partitions to fetch from each
//! leader, and applying the leader's answers (append, cut a diverged tail,
//! restart below the leader's log start), plus reads of a follower's own
//! committed copy.

use super::*;

impl Broker {
    /// The leaders this broker follows partitions of.
    pub fn followed_leaders(&self) -> std::collections::BTreeSet<NodeId> {
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        let mut out = std::collections::BTreeSet::new();
        for topic in topics {
            for part in topic.partitions().iter() {
                if let Role::Follower { leader, .. } = &*part.replica.role.lock() {
                    out.insert(*leader);
                }
            }
        }
        out
    }

    /// The partitions this broker follows `leader` in, with where each
    /// stands. Blocking (opens logs).
    pub fn follower_fetches(&self, leader: NodeId) -> FollowerFetch {
        let mut out = FollowerFetch::new();
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        for topic in topics {
            for part in topic.partitions().iter() {
                let leader_epoch = match &*part.replica.role.lock() {
                    Role::Follower {
                        leader: l,
                        leader_epoch,
                    } if *l == leader => *leader_epoch,
                    _ => continue,
                };
                let log = match self.log_of(&topic, part) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(topic = %topic.name, partition = part.id, error = %e, "cannot open a follower's log");
                        continue;
                    }
                };
                out.push(ReplicaFetchPartition {
                    topic: topic.name.to_string(),
                    topic_id: topic.incarnation(),
                    partition: part.id,
                    leader_epoch,
                    fetch_offset: log.end_offset(),
                    last_fetched_epoch: log.latest_epoch().unwrap_or(-1),
                    durable_offset: log.flushed_offset(),
                });
            }
        }
        out
    }

    /// Applies a leader's answers on a follower: appends the batches, cuts
    /// a diverged tail, restarts a log that fell below the leader's start.
    /// Syncs the logs first when acks=ALL needs followers' syncs. Returns
    /// whether anything was appended or cut. Blocking.
    pub fn apply_replica_data(&self, leader: NodeId, data: Vec<ReplicaFetchData>) -> bool {
        let mut progressed = false;
        for d in data {
            match self.apply_replica_one(leader, &d) {
                Ok(p) => progressed |= p,
                Err(e) => {
                    tracing::warn!(topic = %d.topic, partition = d.partition, leader, error = %e, "replicating a partition failed");
                }
            }
        }
        progressed
    }

    fn apply_replica_one(&self, leader: NodeId, d: &ReplicaFetchData) -> Result<bool> {
        let topic = self.topic(&d.topic)?;
        let part = topic.partition(d.partition)?;
        match part.replica.role() {
            Role::Follower { leader: l, .. } if l == leader => {}
            // Leadership moved while the fetch ran.
            _ => return Ok(false),
        }
        let data = match &d.outcome {
            Ok(r) => r,
            Err(ReplicaRefusal::OffsetOutOfRange { start, .. }) => {
                self.restart_replica_at(&topic, &part, *start)?;
                return Ok(true);
            }
            Err(e) => {
                tracing::debug!(topic = %d.topic, partition = d.partition, leader, error = %e, "leader refused a fetch");
                return Ok(false);
            }
        };
        let log = self.log_of(&topic, &part)?;
        if let Some((epoch, end)) = data.diverging {
            let own = log.end_offset_for_epoch(epoch).map_or(end, |(_, e)| e);
            let cut = end.min(own).max(log.start_offset());
            tracing::info!(topic = %d.topic, partition = d.partition, epoch, leader_end = end, cut, "cutting a diverged tail");
            log.truncate_to(cut)?;
            return Ok(true);
        }
        let mut progressed = false;
        if !data.records.is_empty() {
            // The interval flusher syncs it like any open log (it was
            // registered when opened); acks needing followers' syncs sync
            // before the next fetch reports how far they are.
            let (end, _) = log.append_replicated(&data.records)?;
            if self.config.replication.ack_requires_fsync {
                log.flush_until(end)?;
            }
            progressed = true;
        }
        // A follower's high watermark: what it knows is committed (a new
        // leader starts from it).
        part.publish_end(data.high_watermark.min(log.end_offset()));
        Ok(progressed)
    }

    /// Empties a follower's log and restarts it at `start` (the leader's
    /// log start: retention removed what the follower lacks).
    fn restart_replica_at(&self, topic: &Topic, part: &Partition, start: i64) -> Result<()> {
        tracing::warn!(topic = %topic.name, partition = part.id, start, "follower log is below the leader's log start; restarting it there");
        blocking_section(|| {
            if part.close() {
                self.open_logs.fetch_sub(1, Ordering::Relaxed);
            }
            let aside = self.move_to_trash(&part.dir)?;
            let _ = std::fs::remove_dir_all(&aside);
            self.fs()
                .create_dir_all(&part.dir)
                .map_err(|e| io_err("creating", &part.dir, e))?;
            crate::storage::checkpoint::Checkpoint {
                recovery_point: start,
                clean: false,
                leader_epoch: 0,
            }
            .write(self.fs(), &part.dir)?;
            self.log_of(topic, part).map(|_| ())
        })
    }

    /// Reads a follower's own copy below its high watermark (committed).
    pub(crate) fn read_follower(
        &self,
        topic: &Topic,
        part: &Partition,
        offset: i64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<FetchResult> {
        let log = self.log_of(topic, part)?;
        blocking_section(|| {
            self.read_log(
                topic,
                part,
                &log,
                offset,
                super::fetch::ReadLimits::committed(max_records, max_bytes),
            )
        })
    }
}
