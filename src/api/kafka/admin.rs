//! CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs and
//! DescribeCluster. Topic changes go through the admin service's own
//! logic (called in process, not over the network), so validation and, in
//! a cluster, the metadata quorum are the same as over gRPC.

use kafka_protocol::messages::{
    create_partitions_response::CreatePartitionsTopicResult,
    create_topics_response::CreatableTopicResult,
    delete_topics_response::DeletableTopicResult,
    describe_cluster_response::DescribeClusterBroker,
    describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult},
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeClusterRequest,
    DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse, TopicName,
};
use kafka_protocol::ResponseError;
use tonic::{Code, Request, Status};

use super::{text, Call, Kafka};
use crate::api::grpc::pb::{self, admin_server::Admin};
use crate::security::{Operation, ResourceType};

/// Kafka's resource types in DescribeConfigs.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Kafka's config source codes.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

/// A Kafka error code for an admin service status.
fn admin_error(s: &Status) -> ResponseError {
    let m = s.message();
    match s.code() {
        Code::AlreadyExists => ResponseError::TopicAlreadyExists,
        Code::NotFound => ResponseError::UnknownTopicOrPartition,
        Code::InvalidArgument if m.contains("replication") => {
            ResponseError::InvalidReplicationFactor
        }
        Code::InvalidArgument if m.contains("partition") => ResponseError::InvalidPartitions,
        Code::InvalidArgument if m.contains("topic name") || m.contains("characters") => {
            ResponseError::InvalidTopicException
        }
        Code::InvalidArgument => ResponseError::InvalidConfig,
        Code::Unavailable | Code::DeadlineExceeded => ResponseError::RequestTimedOut,
        Code::FailedPrecondition => ResponseError::InvalidRequest,
        Code::PermissionDenied => ResponseError::TopicAuthorizationFailed,
        _ => ResponseError::UnknownServerError,
    }
}

/// A topic setting, by its Kafka name, into Sluice's settings.
fn set_config(c: &mut pb::TopicConfig, name: &str, value: Option<&str>) -> Result<(), String> {
    let Some(v) = value else {
        return Ok(());
    };
    let int = |v: &str| {
        v.parse::<i64>()
            .map_err(|_| format!("{name} must be an integer, not '{v}'"))
    };
    match name {
        "retention.ms" => c.retention_ms = Some(int(v)?),
        "retention.bytes" => c.retention_bytes = Some(int(v)?),
        "segment.bytes" => c.segment_bytes = Some(int(v)?),
        "max.message.bytes" => {
            c.max_message_bytes = Some(
                i32::try_from(int(v)?).map_err(|_| format!("{name} {v} is out of range"))?,
            )
        }
        "message.timestamp.type" => {
            c.timestamp_type = Some(match v {
                "CreateTime" => pb::TimestampType::CreateTime as i32,
                "LogAppendTime" => pb::TimestampType::LogAppendTime as i32,
                _ => return Err(format!("{name} must be CreateTime or LogAppendTime, not '{v}'")),
            })
        }
        "message.timestamp.before.max.ms" => c.timestamp_before_max_ms = Some(int(v)?),
        "message.timestamp.after.max.ms" => c.timestamp_after_max_ms = Some(int(v)?),
        "min.insync.replicas" => {
            c.min_insync_replicas =
                Some(i32::try_from(int(v)?).map_err(|_| format!("{name} {v} is out of range"))?)
        }
        "unclean.leader.election.enable" => {
            c.unclean_leader_election = Some(match v {
                "true" => true,
                "false" => false,
                _ => return Err(format!("{name} must be true or false, not '{v}'")),
            })
        }
        "cleanup.policy" if v == "delete" => {}
        "cleanup.policy" => {
            return Err(format!("cleanup.policy '{v}' is not supported: only delete (no compaction)"))
        }
        _ => {
            return Err(format!(
                "config '{name}' is not supported; supported: retention.ms, retention.bytes, segment.bytes, max.message.bytes, message.timestamp.type, message.timestamp.before.max.ms, message.timestamp.after.max.ms, min.insync.replicas, unclean.leader.election.enable, cleanup.policy=delete"
            ))
        }
    }
    Ok(())
}

/// A topic's settings in force, by Kafka name.
fn config_entries(c: &pb::TopicConfig) -> Vec<(&'static str, String)> {
    let n = |v: Option<i64>| v.map_or_else(|| "-1".to_string(), |v| v.to_string());
    let stamp = match c.timestamp_type {
        Some(t) if t == pb::TimestampType::LogAppendTime as i32 => "LogAppendTime",
        _ => "CreateTime",
    };
    vec![
        ("cleanup.policy", "delete".into()),
        ("retention.ms", n(c.retention_ms)),
        ("retention.bytes", n(c.retention_bytes)),
        ("segment.bytes", n(c.segment_bytes)),
        ("max.message.bytes", n(c.max_message_bytes.map(i64::from))),
        ("message.timestamp.type", stamp.into()),
        (
            "message.timestamp.before.max.ms",
            n(c.timestamp_before_max_ms),
        ),
        (
            "message.timestamp.after.max.ms",
            n(c.timestamp_after_max_ms),
        ),
        (
            "min.insync.replicas",
            n(c.min_insync_replicas.map(i64::from)),
        ),
        (
            "unclean.leader.election.enable",
            c.unclean_leader_election.unwrap_or(false).to_string(),
        ),
    ]
}

/// A gRPC admin request made as the Kafka caller: the admin service
/// checks the same ACLs it checks for gRPC clients.
fn as_caller<T>(call: &Call, message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.extensions_mut().insert(call.caller.clone());
    r
}

impl Kafka {
    pub(crate) async fn create_topics(
        &self,
        call: &Call,
        r: CreateTopicsRequest,
    ) -> CreateTopicsResponse {
        let mut results = Vec::with_capacity(r.topics.len());
        for t in r.topics {
            let name = t.name.0.to_string();
            let result = CreatableTopicResult::default().with_name(t.name.clone());
            let fail = |code: ResponseError, why: String| {
                result
                    .clone()
                    .with_error_code(code.code())
                    .with_error_message(Some(text(why)))
            };
            if !t.assignments.is_empty() {
                results.push(fail(
                    ResponseError::InvalidReplicaAssignment,
                    "manual replica assignments are not supported: give num_partitions and replication_factor".into(),
                ));
                continue;
            }
            let mut config = pb::TopicConfig::default();
            if let Err(why) = t
                .configs
                .iter()
                .try_for_each(|c| set_config(&mut config, &c.name, c.value.as_deref()))
            {
                results.push(fail(ResponseError::InvalidConfig, why));
                continue;
            }
            let partitions = if t.num_partitions == -1 {
                1
            } else {
                t.num_partitions
            };
            if r.validate_only {
                let checked = crate::broker::validate_topic_name(&name)
                    .map_err(|e| (ResponseError::InvalidTopicException, e.to_string()))
                    .and_then(|_| {
                        if (1..=crate::broker::MAX_PARTITIONS).contains(&partitions) {
                            Ok(())
                        } else {
                            Err((
                                ResponseError::InvalidPartitions,
                                format!(
                                    "num_partitions {partitions} must be in [1, {}]",
                                    crate::broker::MAX_PARTITIONS
                                ),
                            ))
                        }
                    });
                results.push(match checked {
                    Ok(()) => result.with_num_partitions(partitions),
                    Err((code, why)) => fail(code, why),
                });
                continue;
            }
            let req = pb::CreateTopicRequest {
                name,
                partitions,
                config: Some(config),
                replication_factor: (t.replication_factor != -1)
                    .then_some(i32::from(t.replication_factor)),
            };
            match self.admin.create_topic(as_caller(call, req)).await {
                Ok(resp) => {
                    let d = resp.into_inner().topic.unwrap_or_default();
                    let rf = d.partitions.first().map_or(1, |p| p.replicas.len().max(1));
                    let mut ok = result
                        .with_num_partitions(d.partitions.len() as i32)
                        .with_replication_factor(rf as i16)
                        .with_topic_id(uuid::Uuid::from_u64_pair(d.topic_id, 0));
                    if call.version >= 5 {
                        ok.configs = Some(Vec::new());
                    }
                    results.push(ok);
                }
                Err(s) => results.push(fail(admin_error(&s), s.message().to_string())),
            }
        }
        CreateTopicsResponse::default().with_topics(results)
    }

    pub(crate) async fn delete_topics(
        &self,
        call: &Call,
        r: DeleteTopicsRequest,
    ) -> DeleteTopicsResponse {
        let mut names: Vec<TopicName> = r.topic_names;
        names.extend(r.topics.into_iter().filter_map(|t| t.name));
        let mut responses = Vec::with_capacity(names.len());
        for name in names {
            let resp = DeletableTopicResult::default().with_name(Some(name.clone()));
            let req = pb::DeleteTopicRequest {
                name: name.0.to_string(),
            };
            responses.push(match self.admin.delete_topic(as_caller(call, req)).await {
                Ok(_) => resp,
                Err(s) => resp
                    .with_error_code(admin_error(&s).code())
                    .with_error_message(Some(text(s.message()))),
            });
        }
        DeleteTopicsResponse::default().with_responses(responses)
    }

    pub(crate) async fn create_partitions(
        &self,
        call: &Call,
        r: CreatePartitionsRequest,
    ) -> CreatePartitionsResponse {
        let mut results = Vec::with_capacity(r.topics.len());
        for t in r.topics {
            let resp = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            if t.assignments.is_some() {
                results.push(
                    resp.with_error_code(ResponseError::InvalidReplicaAssignment.code())
                        .with_error_message(Some(text(
                            "manual replica assignments are not supported",
                        ))),
                );
                continue;
            }
            if !call
                .caller
                .allows(Operation::Alter, ResourceType::Topic, &t.name)
            {
                results.push(
                    resp.with_error_code(ResponseError::TopicAuthorizationFailed.code())
                        .with_error_message(Some(text(format!(
                            "{} may not alter topic '{}'",
                            call.caller.principal, &*t.name
                        )))),
                );
                continue;
            }
            if r.validate_only {
                results.push(resp);
                continue;
            }
            let req = pb::CreatePartitionsRequest {
                name: t.name.0.to_string(),
                total_partitions: t.count,
            };
            results.push(
                match self.admin.create_partitions(as_caller(call, req)).await {
                    Ok(_) => resp,
                    Err(s) => resp
                        .with_error_code(admin_error(&s).code())
                        .with_error_message(Some(text(s.message()))),
                },
            );
        }
        CreatePartitionsResponse::default().with_results(results)
    }

    pub(crate) fn describe_configs(
        &self,
        call: &Call,
        r: DescribeConfigsRequest,
    ) -> DescribeConfigsResponse {
        let mut results = Vec::with_capacity(r.resources.len());
        for res in r.resources {
            let out = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let wanted = |name: &str| {
                res.configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| &**k == name))
            };
            let (allowed, code) = match res.resource_type {
                RESOURCE_TOPIC => (
                    call.caller.allows(
                        Operation::DescribeConfigs,
                        ResourceType::Topic,
                        &res.resource_name,
                    ),
                    ResponseError::TopicAuthorizationFailed,
                ),
                _ => (
                    call.caller.allows_cluster(Operation::DescribeConfigs),
                    ResponseError::ClusterAuthorizationFailed,
                ),
            };
            if !allowed {
                results.push(
                    out.with_error_code(code.code())
                        .with_error_message(Some(text(format!(
                            "{} may not describe the configs of '{}'",
                            call.caller.principal, &*res.resource_name
                        )))),
                );
                continue;
            }
            let entries: Vec<(&str, String, i8)> = match res.resource_type {
                RESOURCE_TOPIC => match self.broker.describe_topic(&res.resource_name) {
                    Ok(info) => {
                        let pb_config = crate::api::grpc::convert::topic_config_out(info.config);
                        config_entries(&pb_config)
                            .into_iter()
                            .map(|(k, v)| (k, v, SOURCE_TOPIC))
                            .collect()
                    }
                    Err(e) => {
                        let (code, why) = super::broker_error(&e);
                        results.push(
                            out.with_error_code(code.code())
                                .with_error_message(Some(text(why))),
                        );
                        continue;
                    }
                },
                RESOURCE_BROKER => vec![
                    ("broker.id", self.me.id.to_string(), SOURCE_DEFAULT),
                    ("auto.create.topics.enable", "false".into(), SOURCE_DEFAULT),
                    (
                        "transaction.state.log.replication.factor",
                        "0".into(),
                        SOURCE_DEFAULT,
                    ),
                ],
                t => {
                    results.push(
                        out.with_error_code(ResponseError::InvalidRequest.code())
                            .with_error_message(Some(text(format!(
                                "resource type {t} is not supported: 2 (topic) and 4 (broker) are"
                            )))),
                    );
                    continue;
                }
            };
            let configs = entries
                .into_iter()
                .filter(|(k, _, _)| wanted(k))
                .map(|(k, v, source)| {
                    DescribeConfigsResourceResult::default()
                        .with_name(text(k))
                        .with_value(Some(text(v)))
                        .with_read_only(res.resource_type == RESOURCE_BROKER)
                        .with_config_source(source)
                })
                .collect();
            results.push(out.with_configs(configs));
        }
        DescribeConfigsResponse::default().with_results(results)
    }

    pub(crate) fn describe_cluster(
        &self,
        call: &Call,
        _r: DescribeClusterRequest,
    ) -> DescribeClusterResponse {
        if !call.caller.allows_cluster(Operation::Describe) {
            return DescribeClusterResponse::default()
                .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
                .with_error_message(Some(text(format!(
                    "{} may not describe the cluster",
                    call.caller.principal
                ))));
        }
        let (cluster_id, controller) = self.cluster_identity();
        DescribeClusterResponse::default()
            .with_cluster_id(text(cluster_id))
            .with_controller_id(BrokerId(controller))
            .with_brokers(
                self.brokers()
                    .into_iter()
                    .map(|b| {
                        DescribeClusterBroker::default()
                            .with_broker_id(BrokerId(b.id))
                            .with_host(text(b.host))
                            .with_port(b.port)
                    })
                    .collect(),
            )
    }
}
