//! Helpers for tests that speak the gRPC API.

use sluice::client::{pb, Client, ClientError};
use tonic::Code;

pub type P = pb::position::Position;

pub fn code(e: ClientError) -> (Code, String) {
    match e {
        ClientError::Status(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a status, got {other}"),
    }
}

pub fn produce_req(
    topic: &str,
    partition: Option<i32>,
    records: Vec<pb::ProduceRecord>,
) -> pb::ProduceRequest {
    pb::ProduceRequest {
        sequence: 7,
        topic: topic.into(),
        partition,
        records,
        acks: pb::Acks::Leader as i32,
        ..Default::default()
    }
}

pub async fn fetch_all(c: &Client, topic: &str, partition: i32) -> Vec<pb::ConsumedRecord> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = c
            .fetch(pb::FetchRequest {
                topic: topic.into(),
                partition,
                offset,
                ..Default::default()
            })
            .await
            .expect("fetch");
        if r.records.is_empty() {
            return out;
        }
        offset = r.next_offset;
        out.extend(r.records);
    }
}
