//! Every process serves the standard gRPC health service and server
//! reflection, so stock tools and other languages can call it without the
//! .proto file.

mod common;

use common::*;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn check(addr: String, service: &str) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
    assert_eq!(status.status(), ServingStatus::Serving, "{service} at {addr}");

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}")
    };
    // Exactly what this process serves: its own service, health and
    // reflection; never the other role's service (which would answer
    // UNIMPLEMENTED here).
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    let mut want = vec![service, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"];
    want.sort();
    assert_eq!(names, want, "services listed at {addr}");

    // The other role's service is not described either.
    let other = if service == "twopc.v1.Coordinator" { "twopc.v1.Participant" } else { "twopc.v1.Coordinator" };
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(other.into())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    // tonic-reflection ends the stream with NOT_FOUND for an unknown symbol.
    let status = answers.message().await.expect_err("the other role's service is unknown here");
    assert_eq!(status.code(), tonic::Code::NotFound, "{other} at {addr}: {status:?}");

    // The full descriptor of the service is there too.
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(service.into())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    assert!(
        matches!(answer.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{answer:?}"
    );

    // Health is described as well as listed, so a stock tool can call it.
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    assert!(matches!(answer.message_response, Some(MessageResponse::FileDescriptorResponse(_))), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_on_every_process() {
    let tc = TestCluster::three().await;
    check(tc.cluster.coordinator_addr(), "twopc.v1.Coordinator").await;
    for p in &tc.cluster.participants {
        check(p.addr.to_string(), "twopc.v1.Participant").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_on_request() {
    let mut tc = TestCluster::three().await;
    tokio::task::block_in_place(|| {
        tc.cluster.restart_coordinator(&[("TWOPC_LOG_FORMAT".into(), "json".into())]).unwrap()
    });
    let log = std::fs::read_to_string(tc.cluster.dir.join("coordinator.log")).unwrap();
    let recovery: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("every JSON log line parses"))
        .filter(|v: &serde_json::Value| v["fields"]["message"] == "recovery: decision log read back")
        .collect();
    assert_eq!(recovery.len(), 1, "{log}");
    assert_eq!(recovery[0]["level"], "INFO");
}

/// Each protocol step runs in a span per transaction carrying its tid and
/// the participant (at debug level, so `info` pays nothing for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_carry_a_span_per_transaction() {
    let mut tc = TestCluster::three().await;
    let env = [("TWOPC_LOG_FORMAT".to_string(), "json".to_string()), ("RUST_LOG".to_string(), "debug".to_string())];
    tokio::task::block_in_place(|| tc.cluster.restart_coordinator(&env).unwrap());
    tokio::task::block_in_place(|| tc.cluster.restart_participant(1, &env).unwrap());
    tc.reconnect().await;
    let (k0, k1) = (tc.key_on(0, "span"), tc.key_on(1, "span"));
    let (tid, outcome) = tc.write_txn(&[(&k0, "v"), (&k1, "v")]).await;
    assert_eq!(outcome, twopc_client::Outcome::Committed);
    tc.wait_settled().await;
    let tid = tid.to_string();
    let in_span = |file: &str, partition: u64| -> Vec<serde_json::Value> {
        let log = std::fs::read_to_string(tc.cluster.dir.join(file)).unwrap();
        log.lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every JSON log line parses"))
            .filter(|v| v["span"]["name"] == "txn" && v["span"]["tid"] == tid.as_str())
            .filter(|v| v["span"]["partition"] == partition)
            .collect()
    };
    // The coordinator's steps for partition 1 (prepare, commit) and the
    // participant's own lines (prepared, applied) sit in the tid's span.
    let coordinator = in_span("coordinator.log", 1);
    let participant = in_span("p1.log", 1);
    assert!(!coordinator.is_empty(), "no coordinator line in the span of {tid}");
    assert!(
        participant.iter().any(|v| v["fields"]["message"] == "prepared, voting YES"),
        "no participant line in the span of {tid}: {participant:?}"
    );
}
