//! TLS to Redis (`rediss://`), end to end: real `stampede` processes and a `redis-server` that
//! speaks TLS only (no plain port), serving a certificate of a private CA made here
//! ([`TestCa`]). Two nodes trusting that CA (`--redis-tls-ca`) share a topic and a queue through
//! it; a node trusting another CA keeps running, never becomes ready and logs why. The
//! refusals before any socket is bound (a URL the engine cannot use, a missing or invalid CA
//! file, no roots at all) are in `check_config.rs`.

use std::time::Duration;

use stampede_testkit::client::body;
use stampede_testkit::keys::TestCa;
use stampede_testkit::{eventually, holds_within, Client, Cluster, Node, Redis, Transport};

/// Patience for a node to try Redis and log the outcome, and for `/readyz` to answer.
const SPREAD: Duration = Duration::from_secs(20);

async fn connect(node: &Node) -> Client {
    Client::connect_to(&node.endpoint(Transport::Tcp), None)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", node.id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_topic_and_a_queue_through_a_tls_redis() {
    let ca = TestCa::new();
    let redis = Redis::start_tls(&ca).await;
    assert!(redis.url().starts_with("rediss://127.0.0.1:"), "{}", redis.url());
    // Ready means both connections to Redis are up: over TLS, the only way this Redis speaks.
    let cluster = Cluster::start(2, &redis, &["--redis-tls-ca", ca.ca.to_str().unwrap()]).await;
    let (a, b) = (cluster.node(0), cluster.node(1));

    let mut subscriber = connect(a).await;
    subscriber.subscribe("/topic/tls", "t", &[]).await;
    let mut publisher = connect(b).await;
    publisher.publish("/topic/tls", "across nodes", &[]).await;
    let message = subscriber.recv_message().await;
    assert_eq!(body(&message), "across nodes");

    // Receipted once Redis holds it; consumed on the other node.
    publisher.publish("/queue/tls", "queued", &[]).await;
    let mut consumer = connect(a).await;
    consumer.subscribe("/queue/tls", "q", &[("ack", "client-individual")]).await;
    let message = consumer.recv_message().await;
    assert_eq!(body(&message), "queued");
    consumer.ack(&message).await;
    consumer.assert_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_redis_whose_certificate_its_ca_did_not_sign() {
    let (ours, theirs) = (TestCa::new(), TestCa::new());
    let redis = Redis::start_tls(&theirs).await;
    let cluster = Cluster::spawn(1, &redis, &["--redis-tls-ca", ours.ca.to_str().unwrap()]);
    let node = cluster.node(0);

    let why = |log: &str| {
        log.lines().any(|line| {
            line.contains("Redis's TLS certificate is refused: it must chain to redis-tls-ca")
                && line.contains("UnknownIssuer")
        })
    };
    eventually(SPREAD, "a log line saying the certificate's issuer is unknown", || async {
        why(&node.log().text())
    })
    .await;
    eventually(SPREAD, "/readyz answers 503", || async { node.readyz().await == Some(503) }).await;
    // It keeps trying (a renewed certificate may come) and keeps refusing.
    let ready = holds_within(Duration::from_secs(3), || async { node.readyz().await != Some(503) }).await;
    assert!(!ready && node.is_running(), "{}", node.log().text());
    // One line per reason, not one per retry.
    let lines = node.log().text().lines().filter(|&line| why(line)).count();
    assert_eq!(lines, 1, "{}", node.log().text());
}
