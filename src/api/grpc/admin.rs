//! `sluice.v1.Admin`: topic administration.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb::{self, admin_server::Admin};
use super::{convert, timed};
use crate::broker::{Broker, BrokerError};

/// Serves `sluice.v1.Admin`.
#[derive(Debug, Clone)]
pub struct AdminService {
    broker: Arc<Broker>,
}

impl AdminService {
    /// A service over `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }

    /// Runs blocking admin work (file-system calls) off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Broker) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, Status> {
        let broker = self.broker.clone();
        tokio::task::spawn_blocking(move || f(&broker))
            .await
            .map_err(|e| Status::internal(format!("admin task failed: {e}")))?
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let _t = timed("CreateTopic");
        let r = request.into_inner();
        let config = convert::topic_config_in(r.config)?;
        let info = self
            .blocking(move |b| b.create_topic(&r.name, r.partitions, config))
            .await?;
        Ok(Response::new(pb::CreateTopicResponse {
            topic: Some(convert::topic_out(info)),
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let _t = timed("DeleteTopic");
        let name = request.into_inner().name;
        self.blocking(move |b| b.delete_topic(&name)).await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let _t = timed("ListTopics");
        let topics = self
            .broker
            .list_topics()
            .into_iter()
            .map(|(name, partitions)| pb::TopicSummary { name, partitions })
            .collect();
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let _t = timed("DescribeTopic");
        let name = request.into_inner().name;
        let info = self.blocking(move |b| b.describe_topic(&name)).await?;
        Ok(Response::new(pb::DescribeTopicResponse {
            topic: Some(convert::topic_out(info)),
        }))
    }

    async fn create_partitions(
        &self,
        request: Request<pb::CreatePartitionsRequest>,
    ) -> Result<Response<pb::CreatePartitionsResponse>, Status> {
        let _t = timed("CreatePartitions");
        let r = request.into_inner();
        let info = self
            .blocking(move |b| b.create_partitions(&r.name, r.total_partitions))
            .await?;
        Ok(Response::new(pb::CreatePartitionsResponse {
            topic: Some(convert::topic_out(info)),
        }))
    }
}
