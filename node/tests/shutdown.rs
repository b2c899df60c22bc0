//! Graceful shutdown: the drain closes every session with an ERROR (and WebSocket close 1012)
//! spread over the drain period, stops accepting, and returns unacknowledged queue messages.
//!
//! Memory engine only: the drain is one node's mechanics. That a closed session's messages go
//! back to their queue on every engine is covered by `destinations` (redelivery after close),
//! which runs on every variant.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stampede::config::Config;
use stampede::engine::memory::MemoryEngine;
use stampede::engine::{AnyEngine, Engine};
use stampede::hub::Hub;
use stampede::metrics::Metrics;
use stampede::node::{Drain, DrainSwitch, Node};
use stampede::stomp::Command;
use stampede_testkit::prelude::*;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_error_and_close_1012() {
    let mut node = TestNode::start(|c| c.drain_period = Duration::from_millis(500)).await;
    let mut ws_clients = Vec::new();
    for i in 0..3 {
        let mut client = node.connect(Transport::Ws, &[]).await;
        client.subscribe(&format!("/topic/d{i}"), "s", &[]).await;
        ws_clients.push(client);
    }
    let mut tcp_client = node.connect(Transport::Tcp, &[]).await;
    let started = Instant::now();
    node.begin_shutdown();

    for client in &mut ws_clients {
        let error = client.expect_error().await;
        assert_error(&error, "shutting down");
        assert_eq!(client.close_code, Some(1012), "WebSocket close code");
    }
    assert_error(&tcp_client.expect_error().await, "shutting down");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(1000),
        "clients closed within the 500ms drain, not after {elapsed:?}"
    );
    tokio::time::timeout(Duration::from_secs(2), node.shutdown())
        .await
        .expect("run returns once all are closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_clients_is_prompt() {
    let node = TestNode::start(|c| c.drain_period = Duration::from_secs(30)).await;
    let started = Instant::now();
    node.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_stop_accepting_during_drain() {
    let mut node = TestNode::start(|c| c.drain_period = Duration::from_secs(3)).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(node.connect(Transport::Tcp, &[]).await);
    }
    node.begin_shutdown();
    let (tcp, ws) = (node.tcp_addr(), node.ws_addr());
    let refused = holds_within(WAIT, move || async move {
        tokio::net::TcpStream::connect(tcp).await.is_err()
            && tokio::net::TcpStream::connect(ws).await.is_err()
    })
    .await;
    assert!(refused, "new connections are refused while draining");
    assert!(node.connections().await >= 1.0, "the drain is still in progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconnected_sessions_close_at_once() {
    let mut node = TestNode::start(|c| c.drain_period = Duration::from_secs(3)).await;
    let _connected = node.connect(Transport::Tcp, &[]).await;
    let mut idle = node.open(Transport::Tcp).await;
    // The session exists once the node counts it.
    let n = &node;
    assert!(holds_within(WAIT, move || async move { n.connections().await == 2.0 }).await);
    let started = Instant::now();
    node.begin_shutdown();
    assert_error(&idle.expect_error().await, "shutting down");
    assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
}

/// A node assembled from its parts, so the test can look at the engine after the drain.
struct Parts {
    node: Arc<Node>,
    drain: DrainSwitch,
    tcp: std::net::SocketAddr,
}

async fn assemble(configure: impl FnOnce(&mut Config)) -> Parts {
    let mut config = Config { drain_period: Duration::from_millis(200), ..Config::default() };
    configure(&mut config);
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let engine = AnyEngine::Memory(MemoryEngine::new(config.clone(), metrics.clone()));
    let hub = Hub::new(engine, metrics.clone());
    let (drain, draining) = Drain::new();
    let node = Arc::new(Node::new(config, hub, metrics, draining));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = listener.local_addr().unwrap();
    tokio::spawn(stampede::transport::tcp::serve(listener, node.clone()));
    Parts { node, drain, tcp }
}

fn depth(node: &Node, queue: &str) -> u64 {
    node.hub().engine().queue_depths().into_iter().find(|(q, _)| q == queue).map_or(0, |(_, d)| d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_returns_unacked_messages_to_their_queue() {
    let parts = assemble(|_| {}).await;
    let mut consumer = Client::tcp(parts.tcp).await;
    consumer.connect(Some("1.2"), &[]).await;
    consumer.subscribe("/queue/jobs", "s", &[("ack", "client"), ("prefetch-count", "3")]).await;
    for i in 1..=5 {
        consumer.publish("/queue/jobs", &i.to_string(), &[]).await;
    }
    let held = consumer.recv_messages(3).await;
    assert_eq!(held.iter().map(body).collect::<Vec<_>>(), ["1", "2", "3"]);
    assert_eq!(depth(&parts.node, "/queue/jobs"), 2, "two wait, three are in flight");

    parts.drain.start();
    let frames = consumer.expect_closed(WAIT).await;
    assert_eq!(frames.last().map(|f| f.command), Some(Command::Error));
    let node = parts.node.clone();
    assert!(
        holds_within(WAIT, move || {
            let c = node.clone();
            async move { c.connections() == 0 }
        })
        .await
    );
    assert_eq!(depth(&parts.node, "/queue/jobs"), 5, "the three unacknowledged messages are back");

    // They come back first, flagged as redelivered.
    let entries = parts.node.hub().engine().fetch("/queue/jobs", 10).await.unwrap();
    let bodies: Vec<String> =
        entries.iter().map(|e| String::from_utf8(e.message.body.to_vec()).unwrap()).collect();
    let mut first_three = bodies[..3].to_vec();
    first_three.sort();
    assert_eq!(first_three, ["1", "2", "3"]);
    assert_eq!(bodies[3..], ["4", "5"]);
    assert!(entries[..3].iter().all(|e| e.redeliveries == 1));
    assert!(entries[3..].iter().all(|e| e.redeliveries == 0));
}
