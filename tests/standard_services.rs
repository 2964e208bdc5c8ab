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
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == service), "{service} missing from {names:?}");

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
