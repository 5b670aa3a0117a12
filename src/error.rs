//! Top-level error type of the server process.

use std::io;

use crate::broker::BrokerError;
use crate::storage::StorageError;

/// Errors that stop the server (as opposed to request errors, which are
/// answered with a gRPC status and leave the server running).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; the message names the rule broken.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The storage layer failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The broker could not start.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The group coordinator could not start.
    #[error(transparent)]
    Coordinator(#[from] crate::coordinator::CoordinatorError),
    /// The gRPC transport failed.
    #[error("gRPC transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Binding or using a socket failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}
