//! Mutual TLS toward a scheduler: dfgraph presents its client certificate
//! and verifies the scheduler's against the configured CA; without a
//! client certificate the scheduler refuses it.

use std::net::SocketAddr;

use dfgraph::config::Config;
use dfgraph::gateway::Gateway;
use dfgraph::proto::common::v2::Host;
use dfgraph::proto::scheduler::v2::scheduler_server::{Scheduler, SchedulerServer};
use dfgraph::proto::scheduler::v2::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// A scheduler that knows three hosts and nothing else.
struct ThreeHosts;

#[tonic::async_trait]
impl Scheduler for ThreeHosts {
    async fn stat_peer(
        &self,
        _: Request<StatPeerRequest>,
    ) -> Result<Response<dfgraph::proto::common::v2::Peer>, Status> {
        Err(Status::not_found("no peers here"))
    }
    async fn delete_peer(&self, _: Request<DeletePeerRequest>) -> Result<Response<()>, Status> {
        Err(Status::not_found("no peers here"))
    }
    async fn stat_task(
        &self,
        _: Request<StatTaskRequest>,
    ) -> Result<Response<dfgraph::proto::common::v2::Task>, Status> {
        Err(Status::not_found("no tasks here"))
    }
    async fn delete_task(&self, _: Request<DeleteTaskRequest>) -> Result<Response<()>, Status> {
        Err(Status::not_found("no tasks here"))
    }
    async fn list_hosts(
        &self,
        _: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        let hosts = (0..3)
            .map(|i| Host {
                id: format!("10.0.0.{i}-tls-host-{i}"),
                hostname: format!("tls-host-{i}"),
                ip: format!("10.0.0.{i}"),
                scheduler_cluster_id: 1,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(ListHostsResponse { hosts }))
    }
    async fn delete_host(&self, _: Request<DeleteHostRequest>) -> Result<Response<()>, Status> {
        Err(Status::not_found("no such host"))
    }
}

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf(vec!["localhost".into(), "127.0.0.1".into()]),
        client: leaf(vec!["dfgraph".into()]),
    }
}

async fn tls_scheduler(pki: &Pki) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&pki.server.0, &pki.server.1))
        .client_ca_root(Certificate::from_pem(&pki.ca));
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(SchedulerServer::new(ThreeHosts));
    tokio::spawn(server.serve_with_incoming(TcpListenerStream::new(listener)));
    addr
}

async fn host_stats(gateway: &Gateway) -> Value {
    reqwest::Client::new()
        .post(format!("{}/graphql", gateway.url()))
        .json(&json!({ "query": "{ hostStats { total } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn mutual_tls_to_a_scheduler() {
    let pki = pki();
    let addr = tls_scheduler(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        schedulers: vec![format!("1={addr}")],
        ..Config::default()
    };
    config.cache.enabled = false;
    // Its hosts carry 10.0.0.x addresses: never dialled.
    config.liveness.enabled = false;
    config.liveness.networks = vec!["127.0.0.0/8".into()];
    config.tls.ca_cert = Some(write("ca.pem", &pki.ca));
    config.tls.cert = Some(write("client.pem", &pki.client.0));
    config.tls.key = Some(write("client-key.pem", &pki.client.1));
    config.tls.domain = Some("localhost".into());

    let gateway = Gateway::start(config.clone()).await.unwrap();
    let body = host_stats(&gateway).await;
    assert_eq!(body["data"]["hostStats"]["total"], 3, "{body}");
    gateway.shutdown().await;

    // Server-verified TLS without a client certificate: refused.
    config.tls.cert = None;
    config.tls.key = None;
    let gateway = Gateway::start(config).await.unwrap();
    let body = host_stats(&gateway).await;
    assert_eq!(body["data"]["hostStats"]["total"], 0, "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "SCHEDULER_UNAVAILABLE",
        "{body}"
    );
    gateway.shutdown().await;
}
