//! Topic administration: create, delete (through the trash), list,
//! describe, add partitions.

use super::*;

/// A topic and its partitions' state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// This creation of the name (see [`Topic::incarnation`]); in a
    /// cluster, the metadata's topic id.
    pub topic_id: u64,
    /// Settings in force.
    pub config: TopicConfig,
    /// Per partition.
    pub partitions: Vec<PartitionInfo>,
}

/// State of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition.
    pub partition: i32,
    /// Log start offset.
    pub log_start_offset: i64,
    /// High watermark: the end of the committed records.
    pub high_watermark: i64,
    /// Log end offset: the next offset to append (above the high
    /// watermark while followers catch up).
    pub log_end_offset: i64,
    /// Data bytes.
    pub size_bytes: u64,
    /// Segment files.
    pub segments: usize,
}

impl Broker {
    pub(super) fn move_to_trash(&self, dir: &Path) -> Result<PathBuf> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let seq = self.trash_seq.fetch_add(1, Ordering::Relaxed);
        // A topic name may be 249 bytes: keep the trash name within the
        // file system's 255 (a prefix of the name is only for operators).
        let prefix: String = name.chars().take(200).collect();
        let to = self
            .trash_dir
            .join(format!("{prefix}.{}.{seq}", now_ms(&self.config.log)));
        self.fs()
            .rename(dir, &to)
            .map_err(|e| io_err("moving to trash", dir, e))?;
        crate::storage::sync_dir(self.fs(), &self.topics_dir)?;
        Ok(to)
    }

    /// Creates a topic. Blocking (file-system work): call it off the async
    /// runtime's worker threads.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        config: TopicConfig,
    ) -> Result<TopicInfo> {
        validate_topic_name(name)?;
        if is_internal_topic(name) {
            return Err(BrokerError::invalid(format!(
                "topic name '{name}' starts with '{INTERNAL_TOPIC_PREFIX}', which is reserved for the broker's internal topics"
            )));
        }
        self.create_topic_unchecked(name, partitions, config, None)
    }

    /// Checks what [`Broker::create_topic`] checks, creating nothing: a
    /// cluster validates a request before proposing it to the quorum.
    pub fn validate_new_topic(
        &self,
        name: &str,
        partitions: i32,
        config: &TopicConfig,
    ) -> Result<()> {
        validate_topic_name(name)?;
        if is_internal_topic(name) {
            return Err(BrokerError::invalid(format!(
                "topic name '{name}' starts with '{INTERNAL_TOPIC_PREFIX}', which is reserved for the broker's internal topics"
            )));
        }
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(BrokerError::invalid(format!(
                "partition count {partitions} must be in [1, {MAX_PARTITIONS}]"
            )));
        }
        config.validate(&self.config.log, self.config.max_message_limit)
    }

    /// Creates a topic the cluster metadata committed, under its id.
    /// Blocking.
    pub(crate) fn create_topic_as(
        &self,
        name: &str,
        partitions: i32,
        config: TopicConfig,
        id: u64,
    ) -> Result<TopicInfo> {
        validate_topic_name(name)?;
        self.create_topic_unchecked(name, partitions, config, Some(id))
    }

    /// Creates the internal topic `name` unless it exists; returns it.
    /// Blocking.
    pub(crate) fn ensure_internal_topic(
        &self,
        name: &str,
        partitions: i32,
        config: TopicConfig,
    ) -> Result<Arc<Topic>> {
        debug_assert!(is_internal_topic(name));
        if let Ok(t) = self.topic(name) {
            return Ok(t);
        }
        self.create_topic_unchecked(name, partitions, config, None)?;
        self.topic(name)
    }

    /// The partition count of a coordinator's internal topic: on a single
    /// node the topic is created here if needed (and its count returned);
    /// in a cluster it is a cluster topic, created through the metadata
    /// (see the server), so until it arrives the count is `partitions`,
    /// the one its creation asks for. Blocking.
    pub(crate) fn internal_partitions(
        &self,
        name: &str,
        partitions: i32,
        config: TopicConfig,
    ) -> Result<i32> {
        if !self.follows_metadata(name) {
            return Ok(self
                .ensure_internal_topic(name, partitions, config)?
                .partitions()
                .len() as i32);
        }
        Ok(self
            .topic(name)
            .map_or(partitions, |t| t.partitions().len() as i32))
    }

    pub(super) fn create_topic_unchecked(
        &self,
        name: &str,
        partitions: i32,
        config: TopicConfig,
        id: Option<u64>,
    ) -> Result<TopicInfo> {
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(BrokerError::invalid(format!(
                "partition count {partitions} must be in [1, {MAX_PARTITIONS}]"
            )));
        }
        config.validate(&self.config.log, self.config.max_message_limit)?;
        self.check_running()?;
        let _admin = self.admin.lock();
        if self.topics.read().contains_key(name) {
            return Err(BrokerError::TopicExists {
                topic: name.to_string(),
            });
        }
        let dir = self.topics_dir.join(name);
        if dir.exists() {
            self.move_to_trash(&dir)?;
        }
        for i in 0..partitions {
            let p = dir.join(i.to_string());
            self.fs()
                .create_dir_all(&p)
                .map_err(|e| io_err("creating", &p, e))?;
        }
        let meta = TopicMeta {
            name: name.to_string(),
            partitions,
            config,
            created_ms: now_ms(&self.config.log),
            incarnation: id.unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0 | 1),
        };
        meta.write(self.fs(), &dir)?;
        crate::storage::sync_dir(self.fs(), &self.topics_dir)?;
        let topic = Arc::new(self.topic_from_meta(meta, dir));
        self.topics.write().insert(name.to_string(), topic.clone());
        tracing::info!(topic = name, partitions, "topic created");
        self.new_topic_info(name)
    }

    /// Deletes a topic and its data. Blocking.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        Self::refuse_internal(name)?;
        self.delete_topic_unchecked(name)
    }

    /// Deletes a topic, internal ones too (a cluster's metadata may hold
    /// another incarnation of an internal topic). Blocking.
    pub(super) fn delete_topic_unchecked(&self, name: &str) -> Result<()> {
        let _admin = self.admin.lock();
        let topic = self
            .topics
            .write()
            .remove(name)
            .ok_or_else(|| BrokerError::TopicNotFound {
                topic: name.to_string(),
            })?;
        for p in topic.partitions().iter() {
            p.mark_deleted();
            if p.close() {
                self.open_logs.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let trash = match self.move_to_trash(&topic.dir) {
            Ok(t) => t,
            Err(e) => {
                // Nothing was removed: the topic stays, as it was on disk.
                tracing::error!(topic = name, error = %e, "deleting a topic failed; it is kept");
                match TopicMeta::read(&topic.dir) {
                    Ok(meta) => {
                        let fresh = Arc::new(self.topic_from_meta(meta, topic.dir.clone()));
                        self.topics.write().insert(name.to_string(), fresh);
                    }
                    Err(re) => {
                        tracing::error!(topic = name, error = %re, "the kept topic cannot be reloaded until a restart")
                    }
                }
                return Err(e);
            }
        };
        if let Err(e) = std::fs::remove_dir_all(&trash) {
            tracing::warn!(dir = %trash.display(), error = %e, "could not remove deleted topic's files; they go on the next start");
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Topics with their partition counts, sorted by name. Internal topics
    /// (the broker's own state) are left out.
    pub fn list_topics(&self) -> Vec<(String, i32)> {
        self.topics
            .read()
            .values()
            .filter(|t| !is_internal_topic(&t.name))
            .map(|t| (t.name.to_string(), t.partitions.read().len() as i32))
            .collect()
    }

    /// A topic's settings and partitions' state. Opens closed partition
    /// logs (blocking).
    pub fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let topic = self.topic(name)?;
        let mut partitions = Vec::new();
        for p in topic.partitions().iter() {
            let log = self.log_of(&topic, p)?;
            p.note_size(&log);
            let (start, end) = (log.start_offset(), log.end_offset());
            partitions.push(PartitionInfo {
                partition: p.id,
                log_start_offset: start,
                high_watermark: p.known_end().unwrap_or(start).clamp(start, end),
                log_end_offset: end,
                size_bytes: log.size_bytes(),
                segments: log.segment_count(),
            });
        }
        Ok(self.info_of(&topic, partitions))
    }

    /// `topic`'s description with `partitions`.
    fn info_of(&self, topic: &Topic, partitions: Vec<PartitionInfo>) -> TopicInfo {
        TopicInfo {
            name: topic.name.to_string(),
            topic_id: topic.incarnation(),
            config: topic
                .config
                .effective(&self.config.log, &self.config.timestamps),
            partitions,
        }
    }

    /// A topic just created: its settings, and empty partitions, without
    /// opening any log (a create of thousands of partitions opens none).
    pub fn new_topic_info(&self, name: &str) -> Result<TopicInfo> {
        let topic = self.topic(name)?;
        let partitions = topic.partitions().len() as i32;
        let empty = (0..partitions)
            .map(|partition| PartitionInfo {
                partition,
                log_start_offset: 0,
                high_watermark: 0,
                log_end_offset: 0,
                size_bytes: 0,
                segments: 1,
            })
            .collect();
        Ok(self.info_of(&topic, empty))
    }

    /// Raises a topic's partition count to `total`. Blocking.
    pub fn create_partitions(&self, name: &str, total: i32) -> Result<TopicInfo> {
        Self::refuse_internal(name)?;
        self.add_partitions(name, total)?;
        self.describe_topic(name)
    }

    /// Raises an internal topic's partition count to `total` (a
    /// coordinator that wants more shards). Blocking.
    pub(crate) fn grow_internal_topic(&self, name: &str, total: i32) -> Result<()> {
        debug_assert!(is_internal_topic(name));
        self.add_partitions(name, total)
    }

    pub(super) fn add_partitions(&self, name: &str, total: i32) -> Result<()> {
        {
            let _admin = self.admin.lock();
            let topic = self.topic(name)?;
            let current = topic.partitions();
            let count = current.len() as i32;
            if total <= count || total > MAX_PARTITIONS {
                return Err(BrokerError::invalid(format!(
                    "total_partitions {total} must be in [{}, {MAX_PARTITIONS}] (topic '{name}' has {count})",
                    count + 1
                )));
            }
            let mut parts = Vec::clone(&current);
            for i in count..total {
                let dir = topic.dir.join(i.to_string());
                if !dir.exists() {
                    self.fs()
                        .create_dir_all(&dir)
                        .map_err(|e| io_err("creating", &dir, e))?;
                }
                parts.push(Arc::new(Partition::new(
                    topic.name.clone(),
                    i,
                    dir,
                    self.initial_role(&topic.name),
                )));
            }
            let mut meta = topic.meta();
            meta.partitions = total;
            meta.write(self.fs(), &topic.dir)?;
            *topic.partitions.write() = Arc::new(parts);
            tracing::info!(topic = name, from = count, to = total, "partitions added");
        }
        Ok(())
    }
}
