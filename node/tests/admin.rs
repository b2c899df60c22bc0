//! The admin port: health, readiness, metrics and the publish API.
//!
//! The publish API hands messages to the engine like a SEND, so its scenarios run on every engine
//! variant (see `every_engine!` in the test kit's `variant` module), the message published through
//! one node's admin port and received on another's. The rest (health, readiness, the metrics of one
//! node, refused requests) is the node's own and runs on the memory engine only.

use std::time::Duration;

use stampede_testkit::prelude::*;

both_transports!(metrics_follow_activity);

every_engine!(publish_api_reaches_subscribers, history_publish_api_returns_the_offset);

#[tokio::test]
async fn healthz_answers_200() {
    let node = TestNode::start(|_| {}).await;
    let response = node.get("/healthz").await;
    assert_eq!((response.status, response.body.as_str()), (200, "ok\n"));
    assert_eq!(node.get("/nope").await.status, 404);
    node.shutdown().await;
}

#[tokio::test]
async fn readyz_turns_503_when_the_drain_starts() {
    let mut node = TestNode::start(|c| c.drain_period = Duration::from_secs(3)).await;
    let response = node.get("/readyz").await;
    assert_eq!((response.status, response.body.as_str()), (200, "ready\n"));
    // Connected clients keep the node (and its admin port) up while it drains.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(node.connect(Transport::Tcp, &[]).await);
    }
    node.begin_shutdown();
    let node = &node;
    assert!(
        holds_within(WAIT, move || async move { node.get("/readyz").await.status == 503 }).await,
        "readyz never turned 503"
    );
    assert_eq!(node.get("/readyz").await.body, "draining\n");
    assert_eq!(node.get("/healthz").await.status, 200, "still alive while draining");
}

#[tokio::test]
async fn metrics_name_every_family() {
    let node = TestNode::start(|_| {}).await;
    let initial = node.metrics().await;
    for sample in [
        "stampede_frames_received_total{command=\"SEND\"} 0",
        "stampede_messages_published_total{kind=\"queue\"} 0",
        "stampede_messages_dropped_total{reason=\"slow_consumer\"} 0",
        "stampede_messages_delivered_total 0",
        "stampede_subscriptions 0",
    ] {
        assert!(initial.lines().any(|l| l == sample), "{sample} missing:\n{initial}");
    }
    // Labelled gauges appear with their first label set: a connection and a queue.
    let mut client = node.connect(Transport::Tcp, &[]).await;
    client.publish("/queue/named", "x", &[]).await;
    let response = node.get("/metrics").await;
    assert_eq!(response.status, 200);
    let content_type = response.headers.iter().find(|(n, _)| n == "content-type").map(|(_, v)| v.as_str());
    assert!(content_type.is_some_and(|v| v.starts_with("text/plain")), "{content_type:?}");
    for name in [
        "stampede_connections",
        "stampede_frames_received_total",
        "stampede_frames_sent_total",
        "stampede_messages_published_total",
        "stampede_messages_delivered_total",
        "stampede_messages_dropped_total",
        "stampede_subscriptions",
        "stampede_queue_depth",
    ] {
        let family = name.trim_end_matches("_total");
        assert!(response.body.contains(&format!("# TYPE {family} ")), "{family} missing:\n{}", response.body);
        assert!(response.body.lines().any(|l| l.starts_with(name)), "no {name} sample:\n{}", response.body);
    }
    node.shutdown().await;
}

async fn metrics_follow_activity(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let label = match t {
        Transport::Ws => "ws",
        Transport::Tcp => "tcp",
    };
    let connections = format!("stampede_connections{{transport=\"{label}\"}}");
    let get = |key: &'static str| {
        let node = &node;
        async move { node.metric(key).await.unwrap_or(0.0) }
    };
    assert_eq!(node.metric(&connections).await.unwrap_or(0.0), 0.0);

    let mut client = node.connect(t, &[]).await;
    assert_eq!(node.metric(&connections).await, Some(1.0));
    client.subscribe("/topic/m", "a", &[]).await;
    client.subscribe("/topic/m", "b", &[]).await;
    assert_eq!(get("stampede_subscriptions").await, 2.0);

    client.publish("/topic/m", "x", &[]).await;
    client.recv_messages(2).await;
    client.publish("/queue/m", "1", &[]).await;
    client.publish("/queue/m", "2", &[]).await;
    assert_eq!(get("stampede_frames_received_total{command=\"CONNECT\"}").await, 1.0);
    assert_eq!(get("stampede_frames_received_total{command=\"SUBSCRIBE\"}").await, 2.0);
    assert_eq!(get("stampede_frames_received_total{command=\"SEND\"}").await, 3.0);
    assert_eq!(get("stampede_frames_sent_total{command=\"CONNECTED\"}").await, 1.0);
    assert_eq!(get("stampede_frames_sent_total{command=\"RECEIPT\"}").await, 5.0);
    assert_eq!(get("stampede_frames_sent_total{command=\"MESSAGE\"}").await, 2.0);
    assert_eq!(get("stampede_messages_published_total{kind=\"topic\"}").await, 1.0);
    assert_eq!(get("stampede_messages_published_total{kind=\"queue\"}").await, 2.0);
    assert_eq!(get("stampede_messages_delivered_total").await, 2.0);
    assert_eq!(get("stampede_queue_depth{queue=\"/queue/m\"}").await, 2.0);

    client.subscribe("/queue/m", "q", &[]).await;
    client.recv_messages(2).await;
    assert_eq!(get("stampede_messages_delivered_total").await, 4.0);
    assert_eq!(get("stampede_queue_depth{queue=\"/queue/m\"}").await, 0.0);
    client.unsubscribe("a").await;
    assert_eq!(get("stampede_subscriptions").await, 2.0);

    client.disconnect().await;
    let (n, key) = (&node, connections.as_str());
    assert!(holds_within(WAIT, move || async move { n.metric(key).await == Some(0.0) }).await);
    assert!(holds_within(WAIT, || async { get("stampede_subscriptions").await == 0.0 }).await);
    node.shutdown().await;
}

async fn publish_api_reaches_subscribers(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut sub = cluster.connect(0).await;
    sub.subscribe("/topic/api", "s", &[]).await;
    let response = cluster
        .node(1)
        .post_json(
            "/api/v1/publish",
            r#"{"destination":"/topic/api","headers":{"content-type":"application/json","x-origin":"admin","subscription":"forged"},"body":"{\"a\":1}"}"#,
        )
        .await;
    assert_eq!(response.status, 202, "{}", response.body);
    let message = sub.recv_message().await;
    assert_eq!(body(&message), r#"{"a":1}"#);
    assert_eq!(header(&message, "content-type"), "application/json");
    assert_eq!(header(&message, "x-origin"), "admin");
    assert_eq!(header(&message, "destination"), "/topic/api");
    assert_eq!(header(&message, "subscription"), "s", "reserved headers are the broker's");
    assert_eq!(message.headers.iter().filter(|(n, _)| n == "subscription").count(), 1);

    // A queue publish waits for a consumer.
    let response =
        cluster.node(2).post_json("/api/v1/publish", r#"{"destination":"/queue/api","body":"queued"}"#).await;
    assert_eq!(response.status, 202, "{}", response.body);
    sub.subscribe("/queue/api", "q", &[]).await;
    assert_eq!(body(&sub.recv_message().await), "queued");
    sub.assert_quiet().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn publish_api_refuses_bad_requests() {
    let node = TestNode::start(|c| c.limits.max_body_size = 16).await;
    for (json, status, needle) in [
        (r#"{"destination":"/exchange/x","body":"b"}"#, 400, "unknown destination"),
        (r#"{"destination":"/topic/","body":"b"}"#, 400, "empty"),
        (r#"{"body":"b"}"#, 400, "destination"),
        (r#"not json"#, 400, ""),
        (r#"{"destination":"/topic/a","body":"this body is far too long"}"#, 413, "max-body-size"),
    ] {
        let response = node.post_json("/api/v1/publish", json).await;
        assert_eq!(response.status, status, "{json}: {}", response.body);
        assert!(response.body.contains(needle), "{json}: {}", response.body);
    }
    node.shutdown().await;
}

/// Offsets count per topic across the cluster, whichever node's admin port publishes.
async fn history_publish_api_returns_the_offset(v: Variant) {
    let cluster = Cluster::start(v, |c| {
        c.history = vec![stampede::config::HistoryRule { pattern: "/topic/h".into(), size: 10, ttl: None }]
    })
    .await;
    for offset in 1..=3usize {
        let node = cluster.node(offset);
        let response = node.post_json("/api/v1/publish", r#"{"destination":"/topic/h","body":"x"}"#).await;
        assert_eq!((response.status, response.body), (202, format!("{{\"offset\":{offset}}}")));
    }
    cluster.shutdown().await;
}
