//! Errors of the coordinator layer.

use crate::broker::BrokerError;

/// What went wrong in a coordinator call.
///
/// Request errors leave the group as it was. [`CoordinatorError::is_fatal`]
/// picks out the ones that need an operator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A request field breaks a rule; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// No group of that name.
    #[error("group '{group}' does not exist")]
    GroupNotFound {
        /// The name asked for.
        group: String,
    },
    /// The member is not (or no longer) in the group: it must rejoin with
    /// member epoch 0.
    #[error("member '{member}' is not in group '{group}' (left, or evicted after its session timeout): rejoin with member_epoch 0")]
    UnknownMember {
        /// Group.
        group: String,
        /// Member id.
        member: String,
    },
    /// The member's epoch is not its current one: it is a zombie and must
    /// rejoin with member epoch 0.
    #[error("member '{member}' of group '{group}' is fenced: epoch {epoch} is stale, the current epoch is {current}; rejoin with member_epoch 0")]
    FencedEpoch {
        /// Group.
        group: String,
        /// Member id.
        member: String,
        /// Epoch given.
        epoch: i32,
        /// The member's current epoch.
        current: i32,
    },
    /// A member committed an offset for a partition it does not own.
    #[error("partition {partition} is not assigned to member '{member}' of group '{group}'")]
    NotOwned {
        /// Group.
        group: String,
        /// Member id.
        member: String,
        /// `topic/partition`.
        partition: String,
    },
    /// The call needs a group without live members.
    #[error("group '{group}' has {members} live member(s): {action} needs a group without live members (stop them, or wait for their session timeout)")]
    GroupNotEmpty {
        /// Group.
        group: String,
        /// Live members.
        members: usize,
        /// What was refused.
        action: &'static str,
    },
    /// A coordinator shard could not persist its state and refuses calls
    /// until the broker restarts and replays its log.
    #[error("group coordinator for partition {partition} of the offsets topic stopped after a write failure: {reason}")]
    Failed {
        /// Offsets topic partition.
        partition: i32,
        /// The write error.
        reason: String,
    },
    /// In a cluster: another broker coordinates this group now (it leads
    /// the state topic's partition); the request should go there.
    #[error("this broker does not coordinate the group: partition {partition} of {topic} is led by {}; retry there (any broker forwards it)", match leader { Some(l) => format!("broker {l}"), None => "no broker right now".to_string() })]
    NotCoordinator {
        /// The state topic.
        topic: &'static str,
        /// Its partition.
        partition: i32,
        /// The broker leading it, if known.
        leader: Option<u64>,
    },
    /// The broker refused or failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl CoordinatorError {
    /// The error of a journal that cannot take a call.
    pub(crate) fn from_journal(
        topic: &'static str,
        partition: i32,
        e: crate::broker::journal::JournalError,
    ) -> Self {
        match e {
            crate::broker::journal::JournalError::Failed(reason) => {
                CoordinatorError::Failed { partition, reason }
            }
            crate::broker::journal::JournalError::NotLeader(leader) => {
                CoordinatorError::NotCoordinator {
                    topic,
                    partition,
                    leader,
                }
            }
        }
    }
}

impl CoordinatorError {
    /// True for errors that need an operator.
    pub fn is_fatal(&self) -> bool {
        match self {
            CoordinatorError::Failed { .. } => true,
            CoordinatorError::Broker(e) => e.is_fatal(),
            _ => false,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        CoordinatorError::InvalidArgument(msg.into())
    }
}

/// Result of coordinator calls.
pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;
