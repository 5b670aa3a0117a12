//! Transports. Every transport calls the same domain facade; none holds
//! domain logic of its own.

pub mod grpc;
pub mod kafka;
