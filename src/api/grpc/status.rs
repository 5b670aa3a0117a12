//! The one map from domain errors to gRPC status codes.

use tonic::{Code, Status};

use crate::broker::BrokerError;
use crate::coordinator::CoordinatorError;
use crate::storage::StorageError;

/// The status code for an error.
pub fn code(e: &BrokerError) -> Code {
    match e {
        BrokerError::TopicNotFound { .. }
        | BrokerError::PartitionNotFound { .. }
        | BrokerError::TopicDeleted { .. } => Code::NotFound,
        BrokerError::TopicExists { .. } => Code::AlreadyExists,
        BrokerError::InvalidArgument(_) => Code::InvalidArgument,
        BrokerError::RecordTooLarge { .. } => Code::ResourceExhausted,
        BrokerError::ShuttingDown
        | BrokerError::NotLeader { .. }
        | BrokerError::NotEnoughReplicas { .. }
        | BrokerError::NotEnoughReplicasAfterAppend { .. }
        | BrokerError::ReplicationTimeout { .. }
        | BrokerError::Remote { .. } => Code::Unavailable,
        BrokerError::Metadata { .. } | BrokerError::DataFormat { .. } => Code::Internal,
        BrokerError::DamagedRecords { .. } => Code::DataLoss,
        BrokerError::Storage(s) => match s {
            StorageError::OffsetOutOfRange { .. } => Code::OutOfRange,
            StorageError::BatchTooLarge { .. } | StorageError::DiskFull { .. } => {
                Code::ResourceExhausted
            }
            StorageError::InvalidBatch(_) | StorageError::InvalidConfig(_) => Code::InvalidArgument,
            StorageError::Closed => Code::Unavailable,
            StorageError::InvalidProducer(_) => Code::InvalidArgument,
            StorageError::OutOfOrderSequence { .. } => Code::FailedPrecondition,
            StorageError::DuplicateSequence { .. } => Code::AlreadyExists,
            StorageError::ProducerFenced { .. } => Code::Aborted,
            StorageError::TooManyProducers { .. } => Code::ResourceExhausted,
            _ => Code::Internal,
        },
    }
}

/// The status code for a coordinator error.
pub fn coordinator_code(e: &CoordinatorError) -> Code {
    match e {
        CoordinatorError::InvalidArgument(_) => Code::InvalidArgument,
        CoordinatorError::GroupNotFound { .. } | CoordinatorError::UnknownMember { .. } => {
            Code::NotFound
        }
        CoordinatorError::FencedEpoch { .. } => Code::Aborted,
        CoordinatorError::NotOwned { .. } | CoordinatorError::GroupNotEmpty { .. } => {
            Code::FailedPrecondition
        }
        CoordinatorError::Failed { .. } | CoordinatorError::NotCoordinator { .. } => {
            Code::Unavailable
        }
        CoordinatorError::Broker(b) => code(b),
    }
}

/// The status for an error; fatal errors are logged here, once, with the
/// files concerned. The client's message never names server paths.
pub fn status(e: &BrokerError) -> Status {
    if e.is_fatal() {
        tracing::error!(error = %e, "request failed on a server-side error");
    }
    Status::new(code(e), client_message(e))
}

/// What a client is told (see [`BrokerError::client_message`]).
pub fn client_message(e: &BrokerError) -> String {
    e.client_message()
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        status(&e)
    }
}

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Self {
        if e.is_fatal() {
            tracing::error!(error = %e, "request failed on a server-side error");
        }
        let message = match &e {
            CoordinatorError::Broker(b) => client_message(b),
            e => e.to_string(),
        };
        Status::new(coordinator_code(&e), message)
    }
}

/// The status code for a cluster error.
pub fn cluster_code(e: &crate::cluster::ClusterError) -> Code {
    use crate::cluster::{ClusterError as E, Refusal as R};
    match e {
        E::Refused(r) => match r {
            R::TopicExists(_) => Code::AlreadyExists,
            R::TopicNotFound(_) | R::UnknownBroker(_) | R::PartitionNotFound { .. } => {
                Code::NotFound
            }
            R::ReplicationFactor { .. } | R::PartitionCount { .. } => Code::InvalidArgument,
            R::BrokerHasReplicas { .. } | R::Reassignment { .. } => Code::FailedPrecondition,
            R::StaleBrokerEpoch { .. } | R::StaleIsrChange { .. } => Code::Aborted,
            R::ProducerIdsExhausted => Code::ResourceExhausted,
            R::Security(s) => security_code(s),
        },
        E::NoController(_)
        | E::NotCaughtUp(_)
        | E::NotLeader { .. }
        | E::NoLeader { .. }
        | E::Unreachable { .. } => Code::Unavailable,
        E::Unsupported(_) => Code::FailedPrecondition,
        E::Fatal(_) => Code::Internal,
    }
}

/// The status code for a refused security change.
pub fn security_code(e: &crate::security::SecurityRefusal) -> Code {
    use crate::security::SecurityRefusal as R;
    match e {
        R::UserNotFound(_) | R::TokenNotFound(_) => Code::NotFound,
        R::Invalid(_) => Code::InvalidArgument,
    }
}
