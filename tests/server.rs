//! The server on a real socket: binds an ephemeral port, answers the health
//! and info services, and stops cleanly when its shutdown future completes.

use sluice::api::grpc::pb::{server_info_client::ServerInfoClient, GetInfoRequest};
use tokio::net::TcpListener;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

#[tokio::test]
async fn serves_health_and_info_then_shuts_down() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sluice::server::run(listener, async {
        let _ = stopped.await;
    }));

    let url = format!("http://{addr}");
    let mut info = ServerInfoClient::connect(url.clone())
        .await
        .expect("connect");
    let reply = info
        .get_info(GetInfoRequest {})
        .await
        .expect("get_info")
        .into_inner();
    assert_eq!(reply.version, sluice::VERSION);
    assert_eq!(reply.batch_format_version, 2);

    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    let overall = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(overall.status(), ServingStatus::Serving);
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert_eq!(
        unknown.expect_err("unknown service").code(),
        tonic::Code::NotFound
    );

    stop.send(()).expect("signal");
    drop((info, health));
    server.await.expect("join").expect("server exits cleanly");
}
