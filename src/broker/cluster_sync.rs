//! Following the cluster's metadata: in a cluster, the broker's topics are
//! what the committed [`MetadataImage`] says, under the image's topic ids.
//! The broker never creates or deletes a user topic on its own there.

use super::*;
use crate::cluster::MetadataImage;

impl Broker {
    /// Makes the local topics match `image`: creates the topics it holds
    /// (under their ids), deletes local ones it does not hold or holds
    /// under another id (deleted and created again), and adds partitions;
    /// then sets each partition's role (leader, follower), or takes every
    /// partition offline while this broker is not `registered` (a process
    /// that has not registered yet, or a fenced one, must not act on the
    /// image's view of it). The broker's own producer-id journal is left
    /// alone. Blocking.
    ///
    /// Every topic is tried; the first failure is returned after the rest
    /// were applied, and the caller tries again.
    pub fn apply_metadata(&self, image: &MetadataImage, registered: bool) -> Result<()> {
        let mut first: Option<BrokerError> = None;
        let mut note = |e: BrokerError| {
            tracing::error!(error = %e, "applying the cluster metadata failed");
            first.get_or_insert(e);
        };
        let local: Vec<String> = self
            .topics
            .read()
            .keys()
            .filter(|n| self.follows_metadata(n))
            .cloned()
            .collect();
        for name in local {
            // An internal topic the metadata does not have yet (created
            // through it soon) stays.
            if is_internal_topic(&name) && !image.topics.contains_key(&name) {
                continue;
            }
            let keep = match (image.topics.get(&name), self.topic(&name)) {
                (Some(t), Ok(local)) => local.incarnation() == t.id,
                (_, Err(_)) => true,
                (None, Ok(_)) => false,
            };
            if !keep {
                match self.delete_topic_unchecked(&name) {
                    Ok(()) | Err(BrokerError::TopicNotFound { .. }) => {}
                    Err(e) => note(e),
                }
            }
        }
        for t in image.topics.values() {
            let count = t.partitions.len() as i32;
            match self.topic(&t.name) {
                Err(_) => {
                    let config: TopicConfig = match serde_json::from_value(t.config.clone()) {
                        Ok(c) => c,
                        Err(e) => {
                            note(BrokerError::invalid(format!(
                                "topic '{}' has settings this broker cannot read: {e}",
                                t.name
                            )));
                            continue;
                        }
                    };
                    if let Err(e) = self.create_topic_as(&t.name, count, config, t.id) {
                        note(e);
                    }
                }
                Ok(local) => {
                    if (local.partitions().len() as i32) < count {
                        if let Err(e) = self.add_partitions(&t.name, count) {
                            note(e);
                        }
                    }
                }
            }
        }
        if let Err(e) = self.apply_roles(image, registered) {
            first.get_or_insert(e);
        }
        match first {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// User topics on disk (a data directory that holds some cannot join
    /// a cluster as if it were empty).
    pub fn has_user_topics(&self) -> bool {
        !self.list_topics().is_empty()
    }
}
