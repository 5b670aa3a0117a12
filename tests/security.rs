//! Security over gRPC: TLS with certificates that are refused where they
//! must be, principals from tokens and client certificates, and an
//! authorization check on every method of every service.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use common::certs::{Ca, Use};
use common::server::{test_config, TestServer};
use prost::Message;
use sluice::client::raw::RawCodec;
use sluice::client::{pb, Client, ClientError, ConnectOptions};
use tonic::{Code, Status};

const ADMIN: &str = "User:admin";

/// Starts a server with authorization on and `User:admin` a super user;
/// returns it with an admin client (token from a bootstrap file).
async fn secured(
    dir: &std::path::Path,
    tune: impl FnOnce(&mut sluice::config::ServerConfig),
    dial: &ConnectOptions,
) -> (TestServer, Client, String) {
    secured_with_kafka(dir, tune, dial, false).await
}

/// [`secured`], with a Kafka listener when `kafka`.
async fn secured_with_kafka(
    dir: &std::path::Path,
    tune: impl FnOnce(&mut sluice::config::ServerConfig),
    dial: &ConnectOptions,
    kafka: bool,
) -> (TestServer, Client, String) {
    let mut config = test_config(dir);
    config.security.authorization = true;
    config.security.super_users = vec![ADMIN.into()];
    tune(&mut config);
    let (token, record) = sluice::security::state::new_token(ADMIN, 0, None, "test admin");
    std::fs::create_dir_all(dir).expect("dir");
    sluice::security::store::write_bootstrap_token(&sluice::storage::os_fs(), dir, &record)
        .expect("bootstrap token");
    let server = TestServer::start_secure(config, false, kafka, dial).await;
    let options = ConnectOptions {
        token: Some(token.clone()),
        ..dial.clone()
    };
    let admin = Client::connect_with(&server.url, &options)
        .await
        .expect("connect");
    // The bootstrap token is imported within moments of the start.
    for _ in 0..200 {
        let r = admin.security().who_am_i(pb::WhoAmIRequest {}).await;
        if r.is_ok() {
            return (server, admin, token);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the bootstrap token was not imported");
}

fn token_for(principal: &str) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        principal: principal.into(),
        description: "test".into(),
        ttl_ms: 0,
    }
}

async fn issue(admin: &Client, principal: &str) -> String {
    admin
        .security()
        .issue_token(token_for(principal))
        .await
        .expect("issue token")
        .into_inner()
        .token
}

fn acl(principal: &str, rt: &str, name: &str, op: &str) -> pb::Acl {
    pb::Acl {
        principal: principal.into(),
        resource_type: rt.into(),
        pattern_type: "literal".into(),
        name: name.into(),
        operation: op.into(),
        permission: "allow".into(),
    }
}

fn enc<M: Message>(m: M) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

/// How a method is called in the table.
enum Call {
    Unary(Bytes),
    /// A client or bidirectional stream: these messages.
    Stream(Vec<Bytes>),
}

/// One method: how to call it, and the ACLs (resource type, name,
/// operation) it needs; `filtered` methods need none and show only what
/// the caller may see.
struct Method {
    path: &'static str,
    call: Call,
    needs: Vec<(&'static str, &'static str, &'static str)>,
    filtered: bool,
}

fn m(
    path: &'static str,
    call: Call,
    needs: &[(&'static str, &'static str, &'static str)],
) -> Method {
    Method {
        path,
        call,
        needs: needs.to_vec(),
        filtered: false,
    }
}

fn open(path: &'static str, call: Call) -> Method {
    Method {
        path,
        call,
        needs: Vec::new(),
        filtered: true,
    }
}

const CLUSTER: &str = "kafka-cluster";

/// Every method of the public API, with what it needs. The test below
/// fails when the API has a method this table does not name.
fn table() -> Vec<Method> {
    use Call::{Stream, Unary};
    let t = "t";
    vec![
        open(
            "/sluice.v1.ServerInfo/GetInfo",
            Unary(enc(pb::GetInfoRequest {})),
        ),
        m(
            "/sluice.v1.Admin/CreateTopic",
            Unary(enc(pb::CreateTopicRequest {
                name: "t-new".into(),
                partitions: 1,
                ..Default::default()
            })),
            &[("topic", "t-new", "create")],
        ),
        m(
            "/sluice.v1.Admin/DeleteTopic",
            Unary(enc(pb::DeleteTopicRequest {
                name: "t-gone".into(),
            })),
            &[("topic", "t-gone", "delete")],
        ),
        open(
            "/sluice.v1.Admin/ListTopics",
            Unary(enc(pb::ListTopicsRequest {})),
        ),
        m(
            "/sluice.v1.Admin/DescribeTopic",
            Unary(enc(pb::DescribeTopicRequest { name: t.into() })),
            &[("topic", "t", "describe")],
        ),
        m(
            "/sluice.v1.Admin/CreatePartitions",
            Unary(enc(pb::CreatePartitionsRequest {
                name: t.into(),
                total_partitions: 2,
            })),
            &[("topic", "t", "alter")],
        ),
        m(
            "/sluice.v1.Broker/Produce",
            Unary(enc(pb::ProduceRequest {
                topic: t.into(),
                records: vec![sluice::client::record(None, "v")],
                ..Default::default()
            })),
            &[("topic", "t", "write")],
        ),
        m(
            "/sluice.v1.Broker/ProduceStream",
            Stream(vec![enc(pb::ProduceRequest {
                topic: t.into(),
                records: vec![sluice::client::record(None, "v")],
                ..Default::default()
            })]),
            &[("topic", "t", "write")],
        ),
        m(
            "/sluice.v1.Broker/Fetch",
            Unary(enc(pb::FetchRequest {
                topic: t.into(),
                max_records: 1,
                ..Default::default()
            })),
            &[("topic", "t", "read")],
        ),
        m(
            "/sluice.v1.Broker/Subscribe",
            Stream(vec![enc(pb::SubscribeRequest {
                topic: t.into(),
                ..Default::default()
            })]),
            &[("topic", "t", "read")],
        ),
        m(
            "/sluice.v1.Broker/FetchBatches",
            Unary(enc(pb::FetchBatchesRequest {
                topic: t.into(),
                max_bytes: 1024,
                ..Default::default()
            })),
            &[("topic", "t", "read")],
        ),
        m(
            "/sluice.v1.Broker/ListOffsets",
            Unary(enc(pb::ListOffsetsRequest {
                topic: t.into(),
                partitions: vec![0],
                timestamp_ms: None,
            })),
            &[("topic", "t", "describe")],
        ),
        m(
            "/sluice.v1.Broker/InitProducer",
            Unary(enc(pb::InitProducerRequest::default())),
            &[("cluster", CLUSTER, "idempotent-write")],
        ),
        m(
            "/sluice.v1.Cluster/Metadata",
            Unary(enc(pb::MetadataRequest {
                topics: vec![t.into()],
            })),
            &[("topic", "t", "describe")],
        ),
        m(
            "/sluice.v1.Cluster/DescribeCluster",
            Unary(enc(pb::DescribeClusterRequest {})),
            &[("cluster", CLUSTER, "describe")],
        ),
        m(
            "/sluice.v1.Cluster/DecommissionBroker",
            Unary(enc(pb::DecommissionBrokerRequest { id: 7 })),
            &[("cluster", CLUSTER, "alter")],
        ),
        m(
            "/sluice.v1.Cluster/ElectPreferredLeaders",
            Unary(enc(pb::ElectPreferredLeadersRequest {
                topic: Some(t.into()),
            })),
            &[("cluster", CLUSTER, "alter")],
        ),
        m(
            "/sluice.v1.Cluster/ReassignPartition",
            Unary(enc(pb::ReassignPartitionRequest {
                topic: t.into(),
                partition: 0,
                replicas: vec![1],
            })),
            &[("cluster", CLUSTER, "alter")],
        ),
        m(
            "/sluice.v1.Groups/Heartbeat",
            Unary(enc(pb::HeartbeatRequest {
                group: "g".into(),
                topics: vec![t.into()],
                ..Default::default()
            })),
            &[("group", "g", "read"), ("topic", "t", "read")],
        ),
        m(
            "/sluice.v1.Groups/CommitOffsets",
            Unary(enc(pb::CommitOffsetsRequest {
                group: "g".into(),
                offsets: vec![pb::OffsetCommit {
                    topic: t.into(),
                    partition: 0,
                    offset: 0,
                    metadata: String::new(),
                }],
                ..Default::default()
            })),
            &[("group", "g", "read"), ("topic", "t", "read")],
        ),
        m(
            "/sluice.v1.Groups/FetchOffsets",
            Unary(enc(pb::FetchOffsetsRequest {
                group: "g".into(),
                topics: vec![t.into()],
            })),
            &[("group", "g", "describe")],
        ),
        open(
            "/sluice.v1.GroupAdmin/ListGroups",
            Unary(enc(pb::ListGroupsRequest {})),
        ),
        m(
            "/sluice.v1.GroupAdmin/DescribeGroup",
            Unary(enc(pb::DescribeGroupRequest { group: "g".into() })),
            &[("group", "g", "describe")],
        ),
        m(
            "/sluice.v1.GroupAdmin/DeleteGroup",
            Unary(enc(pb::DeleteGroupRequest { group: "g".into() })),
            &[("group", "g", "delete")],
        ),
        m(
            "/sluice.v1.GroupAdmin/ResetOffsets",
            Unary(enc(pb::ResetOffsetsRequest {
                group: "g".into(),
                topic: t.into(),
                ..Default::default()
            })),
            &[("group", "g", "read"), ("topic", "t", "read")],
        ),
        m(
            "/sluice.v1.Queues/Consume",
            Stream(vec![enc(pb::ConsumeRequest {
                request: Some(pb::consume_request::Request::Open(pb::OpenQueue {
                    group: "q".into(),
                    topic: t.into(),
                    prefetch: 1,
                    ..Default::default()
                })),
            })]),
            &[("queue", "q", "read"), ("topic", "t", "read")],
        ),
        m(
            "/sluice.v1.Queues/Pull",
            Unary(enc(pb::PullRequest {
                group: "q".into(),
                topic: t.into(),
                max_records: 1,
                ..Default::default()
            })),
            &[("queue", "q", "read"), ("topic", "t", "read")],
        ),
        m(
            "/sluice.v1.Queues/Acknowledge",
            Unary(enc(pb::AcknowledgeRequest {
                group: "q".into(),
                ..Default::default()
            })),
            &[("queue", "q", "read")],
        ),
        m(
            "/sluice.v1.Queues/DescribeQueue",
            Unary(enc(pb::DescribeQueueRequest { group: "q".into() })),
            &[("queue", "q", "describe")],
        ),
        open(
            "/sluice.v1.Queues/ListQueues",
            Unary(enc(pb::ListQueuesRequest {})),
        ),
        m(
            "/sluice.v1.Queues/DeleteQueue",
            Unary(enc(pb::DeleteQueueRequest { group: "q".into() })),
            &[("queue", "q", "delete")],
        ),
        m(
            "/sluice.v1.Queues/ResetQueue",
            Unary(enc(pb::ResetQueueRequest {
                group: "q".into(),
                topic: t.into(),
                ..Default::default()
            })),
            &[("queue", "q", "alter")],
        ),
        m(
            "/sluice.v1.Queues/AlterQueue",
            Unary(enc(pb::AlterQueueRequest {
                group: "q".into(),
                ..Default::default()
            })),
            &[("queue", "q", "alter-configs")],
        ),
        open(
            "/sluice.v1.Security/WhoAmI",
            Unary(enc(pb::WhoAmIRequest {})),
        ),
        m(
            "/sluice.v1.Security/CreateUser",
            Unary(enc(pb::CreateUserRequest {
                name: "zed".into(),
                password: "pw".into(),
                ..Default::default()
            })),
            &[("cluster", CLUSTER, "alter")],
        ),
        m(
            "/sluice.v1.Security/DeleteUser",
            Unary(enc(pb::DeleteUserRequest { name: "zed".into() })),
            &[("cluster", CLUSTER, "alter")],
        ),
        m(
            "/sluice.v1.Security/ListUsers",
            Unary(enc(pb::ListUsersRequest {})),
            &[("cluster", CLUSTER, "describe")],
        ),
        m(
            "/sluice.v1.Security/IssueToken",
            Unary(enc(token_for("User:zed"))),
            &[("cluster", CLUSTER, "alter")],
        ),
        m(
            "/sluice.v1.Security/RevokeToken",
            Unary(enc(pb::RevokeTokenRequest { id: "none".into() })),
            &[("cluster", CLUSTER, "alter")],
        ),
        m(
            "/sluice.v1.Security/ListTokens",
            Unary(enc(pb::ListTokensRequest {})),
            &[("cluster", CLUSTER, "describe")],
        ),
        m(
            "/sluice.v1.Security/AddAcls",
            Unary(enc(pb::AddAclsRequest {
                acls: vec![acl("User:zed", "topic", "z", "read")],
            })),
            &[("cluster", CLUSTER, "alter")],
        ),
        m(
            "/sluice.v1.Security/RemoveAcls",
            Unary(enc(pb::RemoveAclsRequest {
                acls: vec![acl("User:zed", "topic", "z", "read")],
            })),
            &[("cluster", CLUSTER, "alter")],
        ),
        m(
            "/sluice.v1.Security/ListAcls",
            Unary(enc(pb::ListAclsRequest::default())),
            &[("cluster", CLUSTER, "describe")],
        ),
        m(
            "/sluice.v1.Security/SetQuota",
            Unary(enc(pb::SetQuotaRequest {
                quota: Some(pb::Quota {
                    entity: Some(pb::QuotaEntity {
                        user: "User:zed".into(),
                        client_id: String::new(),
                    }),
                    produce_bytes_per_sec: Some(1_000_000),
                    ..Default::default()
                }),
            })),
            &[("cluster", CLUSTER, "alter-configs")],
        ),
        m(
            "/sluice.v1.Security/ListQuotas",
            Unary(enc(pb::ListQuotasRequest {})),
            &[("cluster", CLUSTER, "describe-configs")],
        ),
    ]
}

/// Every method of every `sluice.v1` service in the API's descriptor set.
fn api_methods() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(sluice::api::grpc::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut out = BTreeSet::new();
    for f in set.file {
        let package = f.package().to_string();
        if package != "sluice.v1" {
            continue;
        }
        for s in &f.service {
            for m in &s.method {
                out.insert(format!("/{package}.{}/{}", s.name(), m.name()));
            }
        }
    }
    out
}

/// Calls `method` with `token` (if any); the call's status (OK as code
/// Ok) and, for unary calls, the reply.
async fn call(url: &str, token: Option<&str>, method: &Method) -> (Status, Option<Bytes>) {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static(method.path);
    let with_token = |mut req: tonic::Request<Bytes>| {
        if let Some(t) = token {
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        req.set_timeout(Duration::from_secs(5));
        req
    };
    match &method.call {
        Call::Unary(body) => {
            let req = with_token(tonic::Request::new(body.clone()));
            match grpc.unary(req, path, RawCodec).await {
                Ok(r) => (Status::ok(""), Some(r.into_inner())),
                Err(s) => (s, None),
            }
        }
        Call::Stream(messages) => {
            let mut req = tonic::Request::new(tokio_stream::iter(messages.clone()));
            if let Some(t) = token {
                req.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {t}").parse().expect("ascii"),
                );
            }
            req.set_timeout(Duration::from_secs(5));
            let mut stream = match grpc.streaming(req, path, RawCodec).await {
                Ok(r) => r.into_inner(),
                Err(s) => return (s, None),
            };
            // The first answer (or the end) says whether it was refused.
            match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                Ok(Err(s)) => (s, None),
                _ => (Status::ok(""), None),
            }
        }
    }
}

fn refused(s: &Status) -> bool {
    matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied)
}

/// Every method, called three ways: with no identity (UNAUTHENTICATED),
/// as a principal with no ACLs (PERMISSION_DENIED, or for the listing
/// methods an answer that names nothing), and with exactly the ACLs the
/// method needs (not refused).
#[tokio::test]
async fn every_rpc_is_authenticated_and_authorized() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin, _) = secured(dir.path(), |_| {}, &ConnectOptions::default()).await;
    admin
        .create_topic("t", 1, pb::TopicConfig::default())
        .await
        .expect("create t");
    let table = table();
    let named: BTreeSet<String> = table.iter().map(|m| m.path.to_string()).collect();
    let missing: Vec<_> = api_methods().difference(&named).cloned().collect();
    assert!(
        missing.is_empty(),
        "methods without an authorization case here: {missing:?} (add each with the ACL it needs, and a rule in api/grpc/auth.rs)"
    );
    for m in &table {
        assert!(
            sluice::api::grpc::auth::rule(m.path).is_some(),
            "{} has no rule in api/grpc/auth.rs",
            m.path
        );
    }
    let nobody = issue(&admin, "User:nobody").await;
    let carol = issue(&admin, "User:carol").await;
    for m in &table {
        let (s, _) = call(&server.url, None, m).await;
        assert_eq!(
            s.code(),
            Code::Unauthenticated,
            "{} without identity: {s:?}",
            m.path
        );
        let (s, _) = call(&server.url, Some("sluice_0000_forged"), m).await;
        assert_eq!(
            s.code(),
            Code::Unauthenticated,
            "{} forged token: {s:?}",
            m.path
        );

        let (s, reply) = call(&server.url, Some(&nobody), m).await;
        if m.filtered {
            assert!(!refused(&s), "{} (listing) as nobody: {s:?}", m.path);
            // Nothing it may not see: the topic "t" exists.
            if let Some(r) = reply {
                if m.path.ends_with("/ListTopics") {
                    let r = pb::ListTopicsResponse::decode(r).expect("decode");
                    assert!(r.topics.is_empty(), "ListTopics revealed {:?}", r.topics);
                }
            }
        } else {
            assert_eq!(
                s.code(),
                Code::PermissionDenied,
                "{} as nobody: {s:?}",
                m.path
            );
        }

        let acls: Vec<pb::Acl> = m
            .needs
            .iter()
            .map(|(rt, name, op)| acl("User:carol", rt, name, op))
            .collect();
        if !acls.is_empty() {
            admin
                .security()
                .add_acls(pb::AddAclsRequest { acls: acls.clone() })
                .await
                .expect("add acls");
        }
        let (s, _) = call(&server.url, Some(&carol), m).await;
        assert!(!refused(&s), "{} with {:?}: {s:?}", m.path, m.needs);
        if !acls.is_empty() {
            admin
                .security()
                .remove_acls(pb::RemoveAclsRequest { acls })
                .await
                .expect("remove acls");
            // One ACL short is not enough.
            if m.needs.len() > 1 {
                let (rt, name, op) = m.needs[0];
                admin
                    .security()
                    .add_acls(pb::AddAclsRequest {
                        acls: vec![acl("User:carol", rt, name, op)],
                    })
                    .await
                    .expect("add");
                let (s, _) = call(&server.url, Some(&carol), m).await;
                assert_eq!(
                    s.code(),
                    Code::PermissionDenied,
                    "{} with one ACL: {s:?}",
                    m.path
                );
                admin
                    .security()
                    .remove_acls(pb::RemoveAclsRequest {
                        acls: vec![acl("User:carol", rt, name, op)],
                    })
                    .await
                    .expect("remove");
            }
        }
    }
    server.stop().await;
}

/// Deny wins, prefixes match, revoked tokens stop working at once, and
/// the state survives a restart.
#[tokio::test]
async fn acls_and_tokens_apply_at_once_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin, admin_token) =
        secured(dir.path(), |_| {}, &ConnectOptions::default()).await;
    for t in ["orders-eu", "orders-us", "payments"] {
        admin
            .create_topic(t, 1, pb::TopicConfig::default())
            .await
            .expect("create");
    }
    let token = issue(&admin, "User:dan").await;
    let mut prefixed = acl("User:dan", "topic", "orders-", "write");
    prefixed.pattern_type = "prefixed".into();
    let mut deny = acl("User:dan", "topic", "orders-us", "write");
    deny.permission = "deny".into();
    admin
        .security()
        .add_acls(pb::AddAclsRequest {
            acls: vec![prefixed, deny],
        })
        .await
        .expect("acls");
    let dan = Client::connect_with(
        &server.url,
        &ConnectOptions {
            token: Some(token.clone()),
            ..Default::default()
        },
    )
    .await
    .expect("connect");
    let produce = |topic: &str| {
        let dan = dan.clone();
        let topic = topic.to_string();
        async move {
            dan.produce(common::api::produce_req(
                &topic,
                None,
                vec![sluice::client::record(None, "x")],
            ))
            .await
            .map(|_| ())
        }
    };
    produce("orders-eu").await.expect("prefixed allow");
    let code = |r: Result<(), ClientError>| match r {
        Err(ClientError::Status(s)) => s.code(),
        Err(e) => panic!("{e}"),
        Ok(()) => Code::Ok,
    };
    assert_eq!(code(produce("orders-us").await), Code::PermissionDenied);
    assert_eq!(code(produce("payments").await), Code::PermissionDenied);
    let listed = dan.list_topics().await.expect("list");
    let names: Vec<_> = listed.iter().map(|t| t.name.as_str()).collect();
    // Writing implies describing (Kafka's rule), and the deny is of writes
    // only: both orders topics are visible, payments is not.
    assert_eq!(
        names,
        vec!["orders-eu", "orders-us"],
        "only what dan may describe"
    );

    // Restart: ACLs and tokens are durable.
    server.stop().await;
    let mut config = test_config(dir.path());
    config.security.authorization = true;
    config.security.super_users = vec![ADMIN.into()];
    let server = TestServer::start_full(config, false, false).await;
    let options = |t: &str| ConnectOptions {
        token: Some(t.to_string()),
        ..Default::default()
    };
    let dan = Client::connect_with(&server.url, &options(&token))
        .await
        .expect("connect");
    dan.produce(common::api::produce_req(
        "orders-eu",
        None,
        vec![sluice::client::record(None, "y")],
    ))
    .await
    .expect("still allowed after a restart");
    let admin = Client::connect_with(&server.url, &options(&admin_token))
        .await
        .expect("connect");
    let id = admin
        .security()
        .list_tokens(pb::ListTokensRequest {})
        .await
        .expect("list")
        .into_inner()
        .tokens
        .into_iter()
        .find(|t| t.principal == "User:dan")
        .expect("dan's token")
        .id;
    admin
        .security()
        .revoke_token(pb::RevokeTokenRequest { id })
        .await
        .expect("revoke");
    match dan.list_topics().await {
        Err(ClientError::Status(s)) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
        other => panic!("a revoked token still works: {other:?}"),
    }
    server.stop().await;
}

/// TLS on the client listener: a client that trusts the CA connects and
/// authenticates with a token or a client certificate (CN → principal);
/// an expired certificate, one from another CA, and a client that does
/// not trust the server's CA are refused; rotated certificate files are
/// picked up without a restart.
#[tokio::test]
async fn tls_certificates_are_checked_and_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    let ca = Ca::new(&pki, "main");
    let other = Ca::new(&pki, "other");
    let server_pair = ca.issue("server", "broker", Use::Server, false);
    let alice = ca.issue("alice", "alice", Use::Client, false);
    let expired = ca.issue("expired", "old", Use::Client, true);
    let foreign = other.issue("foreign", "mallory", Use::Client, false);
    let data = dir.path().join("data");
    let trust = ConnectOptions {
        tls_ca: Some(ca.cert()),
        ..Default::default()
    };
    let (server, admin, _) = secured(
        &data,
        |c| {
            c.security.tls_cert = Some(server_pair.cert.clone());
            c.security.tls_key = Some(server_pair.key.clone());
            c.security.tls_ca = Some(ca.cert());
            c.security.tls_reload_interval_ms = 100;
        },
        &trust,
    )
    .await;
    let me = admin
        .security()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner();
    assert!(me.tls, "the token call came over TLS");
    assert_eq!(me.principal, ADMIN);

    let whoami = |options: ConnectOptions| {
        let url = server.url.clone();
        async move {
            let c = Client::connect_with(&url, &options).await?;
            Ok::<_, ClientError>(
                c.security()
                    .who_am_i(pb::WhoAmIRequest {})
                    .await?
                    .into_inner(),
            )
        }
    };
    let with_cert = |pair: &common::certs::Pair, ca_file| ConnectOptions {
        tls_ca: Some(ca_file),
        tls_cert: Some(pair.cert.clone()),
        tls_key: Some(pair.key.clone()),
        ..Default::default()
    };
    let r = whoami(with_cert(&alice, ca.cert())).await.expect("alice");
    assert_eq!(r.principal, "User:alice");
    assert!(
        whoami(with_cert(&expired, ca.cert())).await.is_err(),
        "expired certificate accepted"
    );
    assert!(
        whoami(with_cert(&foreign, ca.cert())).await.is_err(),
        "foreign CA's certificate accepted"
    );
    // A client that does not trust the server's CA.
    assert!(
        whoami(ConnectOptions {
            tls_ca: Some(other.cert()),
            ..Default::default()
        })
        .await
        .is_err(),
        "a server certificate from an untrusted CA was accepted"
    );
    // Clear text to a TLS listener.
    assert!(whoami(ConnectOptions::default()).await.is_err());

    // Rotation: new files signed by another CA replace the old ones; new
    // connections get them without a restart.
    let rotated = other.issue("rotated", "broker", Use::Server, false);
    std::fs::copy(&rotated.key, &server_pair.key).expect("key");
    std::fs::copy(&rotated.cert, &server_pair.cert).expect("cert");
    let mut picked_up = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let trusts_new = ConnectOptions {
            tls_ca: Some(other.cert()),
            ..Default::default()
        };
        if let Err(ClientError::Status(s)) = whoami(trusts_new).await {
            if s.code() == Code::Unauthenticated {
                picked_up = true;
                break;
            }
        }
    }
    assert!(picked_up, "the rotated certificate was not served");
    server.stop().await;
}

use common::kcat::run as kcat;

/// The Kafka listener with TLS and SASL: kcat and confluent-kafka produce
/// and consume with SCRAM (both hashes) and PLAIN over TLS; a wrong
/// password, clear text, and a topic without an ACL are refused.
#[tokio::test]
async fn kafka_clients_authenticate_with_scram_over_tls_and_are_authorized() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    let ca = Ca::new(&pki, "main");
    let server_pair = ca.issue("server", "broker", Use::Server, false);
    let data = dir.path().join("data");
    let trust = ConnectOptions {
        tls_ca: Some(ca.cert()),
        ..Default::default()
    };
    let (server, admin, _) = secured_with_kafka(
        &data,
        |c| {
            c.security.tls_cert = Some(server_pair.cert.clone());
            c.security.tls_key = Some(server_pair.key.clone());
        },
        &trust,
        true,
    )
    .await;
    for t in ["k", "secret"] {
        admin
            .create_topic(t, 2, pb::TopicConfig::default())
            .await
            .expect("create");
    }
    admin
        .security()
        .create_user(pb::CreateUserRequest {
            name: "alice".into(),
            password: "alice-secret".into(),
            ..Default::default()
        })
        .await
        .expect("user");
    let mut acls = vec![
        acl("User:alice", "topic", "k", "write"),
        acl("User:alice", "topic", "k", "read"),
        acl("User:alice", "group", "kg", "read"),
        acl("User:alice", "group", "pyg", "read"),
    ];
    acls.push(acl("User:alice", "cluster", CLUSTER, "idempotent-write"));
    admin
        .security()
        .add_acls(pb::AddAclsRequest { acls })
        .await
        .expect("acls");

    let kafka = server.kafka_addr.expect("kafka listener").to_string();
    let ca_file = ca.cert().display().to_string();
    let args = |mechanism: &str, password: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-b".into(),
            kafka.clone(),
            "-X".into(),
            "security.protocol=SASL_SSL".into(),
            "-X".into(),
            format!("sasl.mechanisms={mechanism}"),
            "-X".into(),
            "sasl.username=alice".into(),
            "-X".into(),
            format!("sasl.password={password}"),
            "-X".into(),
            format!("ssl.ca.location={ca_file}"),
            "-m".into(),
            "10".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (ok, _, err) = kcat(
        args(
            "SCRAM-SHA-256",
            "alice-secret",
            &["-P", "-t", "k", "-K", ":"],
        ),
        Some("a:1\nb:2\nc:3\n".into()),
    )
    .await;
    assert!(ok, "kcat SCRAM-SHA-256 produce failed: {err}");
    for mechanism in ["SCRAM-SHA-512", "PLAIN"] {
        let (ok, _, err) = kcat(
            args(mechanism, "alice-secret", &["-P", "-t", "k", "-K", ":"]),
            Some(format!("{mechanism}:x\n")),
        )
        .await;
        assert!(ok, "kcat {mechanism} produce failed: {err}");
    }
    let (ok, out, err) = kcat(
        args(
            "SCRAM-SHA-512",
            "alice-secret",
            &["-C", "-t", "k", "-o", "beginning", "-e", "-f", "%k=%s\\n"],
        ),
        None,
    )
    .await;
    assert!(ok, "kcat consume failed: {err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec!["PLAIN=x", "SCRAM-SHA-512=x", "a=1", "b=2", "c=3"],
        "{out}"
    );

    // A wrong password.
    let (ok, _, err) = kcat(args("SCRAM-SHA-256", "wrong", &["-L", "-t", "k"]), None).await;
    assert!(!ok, "a wrong password was accepted");
    assert!(
        err.to_lowercase().contains("authentication"),
        "no authentication error reported: {err}"
    );
    // A topic alice may not write.
    let (ok, _, err) = kcat(
        args("SCRAM-SHA-256", "alice-secret", &["-P", "-t", "secret"]),
        Some("x\n".into()),
    )
    .await;
    assert!(
        !ok || err.contains("authorization") || err.contains("Authorization"),
        "writing without an ACL succeeded: {err}"
    );
    assert!(
        err.to_lowercase().contains("authoriz"),
        "no authorization error reported: {err}"
    );
    // Metadata shows only what alice may describe.
    let (ok, out, err) = kcat(args("SCRAM-SHA-256", "alice-secret", &["-L", "-J"]), None).await;
    assert!(ok, "kcat -L failed: {err}");
    let meta: serde_json::Value = serde_json::from_str(&out).expect("kcat -J output");
    let names: Vec<&str> = meta["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .filter_map(|t| t["topic"].as_str())
        .collect();
    assert_eq!(names, vec!["k"], "metadata revealed topics: {names:?}");
    // Clear text to the TLS listener gets nowhere.
    let (ok, _, _) = kcat(
        vec![
            "-b".into(),
            kafka.clone(),
            "-X".into(),
            "security.protocol=SASL_PLAINTEXT".into(),
            "-X".into(),
            "sasl.mechanisms=SCRAM-SHA-256".into(),
            "-X".into(),
            "sasl.username=alice".into(),
            "-X".into(),
            "sasl.password=alice-secret".into(),
            "-m".into(),
            "5".into(),
            "-L".into(),
        ],
        None,
    )
    .await;
    assert!(!ok, "clear text reached the TLS Kafka listener");

    // confluent-kafka: idempotent producer, a group member, commits, and
    // a wrong password refused.
    let py = common::python::python();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/kafka_sasl.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(py)
            .arg(script)
            .args([
                kafka.as_str(),
                ca_file.as_str(),
                "alice",
                "alice-secret",
                "SCRAM-SHA-256",
                "k",
                "pyg",
            ])
            .output()
            .expect("python")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "kafka_sasl.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}

/// Brokers with mutual TLS on the internal listener form a cluster and
/// replicate; a broker whose certificate another CA signed cannot take part
/// (it stays out of the live brokers) until it has a certificate the CA
/// signed.
#[tokio::test]
async fn brokers_authenticate_each_other_with_mutual_tls() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(pki.path(), "internal");
    let other = Ca::new(pki.path(), "other");
    let good = ca.issue("broker", "broker", Use::Both, false);
    let foreign = other.issue("foreign", "broker", Use::Both, false);
    let tls_args = |pair: &common::certs::Pair, ca_file: &std::path::Path| -> Vec<String> {
        vec![
            "--internal-tls-cert".into(),
            pair.cert.display().to_string(),
            "--internal-tls-key".into(),
            pair.key.display().to_string(),
            "--internal-tls-ca".into(),
            ca_file.display().to_string(),
        ]
    };
    let args = tls_args(&good, &ca.cert());
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = common::cluster::TestCluster::start(3, 0, &args_ref).await;
    let client = cluster.client(1).await;
    client
        .create_replicated_topic("rep", 1, Some(3), pb::TopicConfig::default())
        .await
        .expect("create");
    cluster
        .wait_fully_replicated("rep", Duration::from_secs(30))
        .await;
    let mut req = common::api::produce_req("rep", Some(0), vec![sluice::client::record(None, "v")]);
    req.acks = pb::Acks::All as i32;
    client.produce(req).await.expect("acks=all over mutual TLS");

    // Node 3 comes back with a certificate from another CA.
    cluster.node(3).stop();
    cluster.node(3).extra = tls_args(&foreign, &ca.cert());
    cluster.node(3).start();
    let live =
        |s: &pb::DescribeClusterResponse, id: i32| s.nodes.iter().any(|n| n.id == id && n.live);
    // The others fence it and never see it live again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut fenced = false;
    while std::time::Instant::now() < deadline {
        let s = client.describe_cluster().await.expect("describe");
        if !live(&s, 3) {
            fenced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(fenced, "a broker with a foreign certificate stayed live");
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = client.describe_cluster().await.expect("describe");
        assert!(!live(&s, 3), "a broker with a foreign certificate joined");
    }
    // With the CA's certificate it joins again.
    cluster.node(3).stop();
    cluster.node(3).extra = tls_args(&good, &ca.cert());
    cluster.node(3).start();
    cluster.wait_stable(3, Duration::from_secs(60)).await;
}

/// A producer over its byte-rate quota is slowed to the quota (within 10%)
/// and loses nothing; the throttle is reported in the reply's metadata.
#[tokio::test]
async fn a_producer_over_its_quota_is_slowed_to_it_and_loses_nothing() {
    const QUOTA: u64 = 200_000; // bytes per second
    const RECORD: usize = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin, _) = secured(dir.path(), |_| {}, &ConnectOptions::default()).await;
    admin
        .create_topic("q", 1, pb::TopicConfig::default())
        .await
        .expect("create");
    let token = issue(&admin, "User:slow").await;
    admin
        .security()
        .add_acls(pb::AddAclsRequest {
            acls: vec![
                acl("User:slow", "topic", "q", "write"),
                acl("User:slow", "topic", "q", "read"),
            ],
        })
        .await
        .expect("acls");
    admin
        .security()
        .set_quota(pb::SetQuotaRequest {
            quota: Some(pb::Quota {
                entity: Some(pb::QuotaEntity {
                    user: "User:slow".into(),
                    client_id: String::new(),
                }),
                produce_bytes_per_sec: Some(QUOTA),
                ..Default::default()
            }),
        })
        .await
        .expect("quota");
    let slow = Client::connect_with(
        &server.url,
        &ConnectOptions {
            token: Some(token),
            client_id: Some("quota-test".into()),
            ..Default::default()
        },
    )
    .await
    .expect("connect");
    let produce = |i: usize| {
        let mut broker = slow.broker();
        async move {
            let value = vec![b'x'; RECORD - 8];
            let mut v = format!("{i:08}").into_bytes();
            v.extend_from_slice(&value);
            broker
                .produce(common::api::produce_req(
                    "q",
                    Some(0),
                    vec![sluice::client::record(None, v)],
                ))
                .await
                .expect("produce")
        }
    };
    // The first second's worth is the allowed burst.
    let burst = QUOTA as usize / RECORD;
    for i in 0..burst {
        produce(i).await;
    }
    let timed = 40;
    let start = std::time::Instant::now();
    let mut throttled = 0;
    for i in burst..burst + timed {
        let reply = produce(i).await;
        if reply.metadata().contains_key("sluice-throttle-ms") {
            throttled += 1;
        }
        assert!(reply.into_inner().record_errors.is_empty());
    }
    let rate = (timed * RECORD) as f64 / start.elapsed().as_secs_f64();
    let q = QUOTA as f64;
    assert!(
        rate <= q * 1.1 && rate >= q * 0.9,
        "produced at {rate:.0} B/s against a quota of {q} B/s"
    );
    assert!(
        throttled > timed / 2,
        "only {throttled} replies said they were throttled"
    );
    // Nothing lost: every record is there, in order.
    let records = common::api::fetch_all(&admin, "q", 0).await;
    assert_eq!(records.len(), burst + timed);
    for (i, r) in records.iter().enumerate() {
        let v = r.value.as_ref().expect("value");
        assert_eq!(&v[..8], format!("{i:08}").as_bytes());
    }
    server.stop().await;
}

/// The README's Python example: grpcio over TLS with a bearer token.
#[tokio::test]
async fn python_client_over_tls_with_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    let ca = Ca::new(&pki, "main");
    let server_pair = ca.issue("server", "broker", Use::Server, false);
    let trust = ConnectOptions {
        tls_ca: Some(ca.cert()),
        ..Default::default()
    };
    let (server, admin, _) = secured(
        &dir.path().join("data"),
        |c| {
            c.security.tls_cert = Some(server_pair.cert.clone());
            c.security.tls_key = Some(server_pair.key.clone());
        },
        &trust,
    )
    .await;
    for t in ["orders", "payroll"] {
        admin
            .create_topic(t, 1, pb::TopicConfig::default())
            .await
            .expect("create");
    }
    let token = issue(&admin, "User:app").await;
    admin
        .security()
        .add_acls(pb::AddAclsRequest {
            acls: vec![
                acl("User:app", "topic", "orders", "write"),
                acl("User:app", "topic", "orders", "read"),
            ],
        })
        .await
        .expect("acls");
    let py = common::python::python();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The certificate names localhost.
    let broker = format!("localhost:{}", server.addr.port());
    let mut cmd = std::process::Command::new(py);
    cmd.arg(root.join("tests/python/secure_client.py"))
        .args(["--broker", &broker, "--proto-dir"])
        .arg(root.join("proto"))
        .arg("--ca")
        .arg(ca.cert())
        .args([
            "--token",
            &token,
            "--topic",
            "orders",
            "--forbidden-topic",
            "payroll",
        ]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "secure_client.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}

/// In a cluster, users, tokens and ACLs are metadata: a change made through
/// one broker is enforced by every broker, and a revoked token stops
/// working everywhere.
#[tokio::test]
async fn a_cluster_enforces_every_change_on_every_broker() {
    let (admin_token, record) = sluice::security::state::new_token(ADMIN, 0, None, "test admin");
    let options = ConnectOptions {
        token: Some(admin_token),
        ..Default::default()
    };
    let cluster = common::cluster::TestCluster::start_with(
        3,
        0,
        &["--authorization", "on", "--super-users", ADMIN],
        options,
        |dir| {
            // Left with node 1 only: it proposes the token to the quorum.
            if dir.ends_with("node-1") {
                sluice::security::store::write_bootstrap_token(
                    &sluice::storage::os_fs(),
                    dir,
                    &record,
                )
                .expect("bootstrap");
            }
        },
    )
    .await;
    let admin = cluster.client(2).await;
    let anonymous = Client::connect(&cluster.nodes[1].url())
        .await
        .expect("connect");
    match anonymous.list_topics().await {
        Err(ClientError::Status(s)) => assert_eq!(s.code(), Code::Unauthenticated),
        other => panic!("a call without a token was answered: {other:?}"),
    }
    admin
        .create_replicated_topic("c", 1, Some(3), pb::TopicConfig::default())
        .await
        .expect("create");
    let token = issue(&admin, "User:eve").await;
    admin
        .security()
        .add_acls(pb::AddAclsRequest {
            acls: vec![acl("User:eve", "topic", "c", "write")],
        })
        .await
        .expect("acl");
    let as_eve = |node: usize| {
        let url = cluster.nodes[node - 1].url();
        let token = token.clone();
        async move {
            let c = Client::connect_with(
                &url,
                &ConnectOptions {
                    token: Some(token),
                    ..Default::default()
                },
            )
            .await
            .expect("connect");
            c.produce(common::api::produce_req(
                "c",
                Some(0),
                vec![sluice::client::record(None, "x")],
            ))
            .await
            .map(|_| ())
        }
    };
    let code = |r: Result<(), ClientError>| match r {
        Ok(()) => Code::Ok,
        Err(ClientError::Status(s)) => s.code(),
        Err(e) => panic!("{e}"),
    };
    // Every broker takes the token and the ACL (the change waited for the
    // broker that made it; the others apply it within moments).
    for node in 1..=3 {
        let mut last = Code::Unknown;
        for _ in 0..100 {
            last = code(as_eve(node).await);
            if last == Code::Ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(last, Code::Ok, "node {node}");
    }
    let id = admin
        .security()
        .list_tokens(pb::ListTokensRequest {})
        .await
        .expect("tokens")
        .into_inner()
        .tokens
        .into_iter()
        .find(|t| t.principal == "User:eve")
        .expect("eve's token")
        .id;
    cluster
        .client(3)
        .await
        .security()
        .revoke_token(pb::RevokeTokenRequest { id })
        .await
        .expect("revoke");
    for node in 1..=3 {
        let mut last = Code::Ok;
        for _ in 0..100 {
            last = code(as_eve(node).await);
            if last == Code::Unauthenticated {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            last,
            Code::Unauthenticated,
            "node {node} still takes a revoked token"
        );
    }
}

/// A broker on a non-loopback address without TLS or authorization says so
/// loudly at start; on loopback (the embedded default) it does not.
#[test]
fn an_exposed_broker_without_security_warns_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = common::server::ChildServer::start_at(dir.path(), "0.0.0.0:0", &[]);
    std::thread::sleep(Duration::from_millis(200));
    let log = s.log();
    assert!(
        log.contains("SECURITY:") && log.contains("WITHOUT TLS"),
        "{log}"
    );
    assert!(log.contains("WITHOUT authorization"), "{log}");
    drop(s);
    let dir = tempfile::tempdir().expect("tempdir");
    let s = common::server::ChildServer::start(dir.path(), &[]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!s.log().contains("SECURITY:"), "{}", s.log());
}

/// The Kafka listener applies produce quotas too: a kcat producer over its
/// quota is held to it (it takes at least as long as the quota allows) and
/// every record arrives.
#[tokio::test]
async fn a_kafka_producer_over_its_quota_is_slowed_and_loses_nothing() {
    const QUOTA: u64 = 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (server, admin, _) =
        secured_with_kafka(&data, |_| {}, &ConnectOptions::default(), true).await;
    admin
        .create_topic("kq", 1, pb::TopicConfig::default())
        .await
        .expect("create");
    admin
        .security()
        .create_user(pb::CreateUserRequest {
            name: "bulk".into(),
            password: "bulk-secret".into(),
            ..Default::default()
        })
        .await
        .expect("user");
    admin
        .security()
        .add_acls(pb::AddAclsRequest {
            acls: vec![acl("User:bulk", "topic", "kq", "write")],
        })
        .await
        .expect("acl");
    admin
        .security()
        .set_quota(pb::SetQuotaRequest {
            quota: Some(pb::Quota {
                entity: Some(pb::QuotaEntity {
                    user: "User:bulk".into(),
                    client_id: String::new(),
                }),
                produce_bytes_per_sec: Some(QUOTA),
                ..Default::default()
            }),
        })
        .await
        .expect("quota");
    // 400 records of 1,000 bytes: 400 KB, of which one second's worth is
    // the burst; at 100 KB/s the rest takes at least 3 s.
    let line = "y".repeat(999);
    let input: String = (0..400).map(|_| format!("{line}\n")).collect();
    let kafka = server.kafka_addr.expect("kafka").to_string();
    let start = std::time::Instant::now();
    let (ok, _, err) = kcat(
        vec![
            "-b".into(),
            kafka,
            "-X".into(),
            "security.protocol=SASL_PLAINTEXT".into(),
            "-X".into(),
            "sasl.mechanisms=SCRAM-SHA-256".into(),
            "-X".into(),
            "sasl.username=bulk".into(),
            "-X".into(),
            "sasl.password=bulk-secret".into(),
            "-X".into(),
            "batch.size=20000".into(),
            "-P".into(),
            "-t".into(),
            "kq".into(),
        ],
        Some(input),
    )
    .await;
    let elapsed = start.elapsed();
    assert!(ok, "kcat failed: {err}");
    assert!(
        elapsed >= Duration::from_millis(2_700),
        "400 KB went out in {elapsed:?} against a 100 KB/s quota"
    );
    let records = common::api::fetch_all(&admin, "kq", 0).await;
    assert_eq!(records.len(), 400, "records lost");
    server.stop().await;
}
