//! Composition root: builds the services and runs them on a bound listener
//! until the shutdown future completes.

use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tracing::info;

use crate::api::grpc::{pb::server_info_server::ServerInfoServer, InfoService};
use crate::error::Error;

/// Serves the gRPC API on `listener` until `shutdown` completes, then stops
/// accepting connections and waits for in-flight requests to finish.
///
/// Taking a bound listener (instead of an address) lets callers bind port 0
/// and learn the real port before the server starts.
pub async fn run(listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let addr = listener.local_addr()?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ServerInfoServer<InfoService>>()
        .await;

    info!(%addr, version = crate::VERSION, "sluice listening");
    Server::builder()
        .add_service(health_service)
        .add_service(ServerInfoServer::new(InfoService))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    info!("sluice stopped");
    Ok(())
}
