//! `sluice.v1.ServerInfo`: version and format facts about the server.

use tonic::{Request, Response, Status};

use super::pb::{server_info_server::ServerInfo, GetInfoRequest, GetInfoResponse};
use crate::storage::batch::MAGIC;

/// Serves `sluice.v1.ServerInfo`.
#[derive(Debug, Default, Clone)]
pub struct InfoService;

#[tonic::async_trait]
impl ServerInfo for InfoService {
    async fn get_info(
        &self,
        _request: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        Ok(Response::new(GetInfoResponse {
            version: crate::VERSION.to_string(),
            batch_format_version: u32::from(MAGIC),
        }))
    }
}
