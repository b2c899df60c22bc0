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
    let version = format!("stampede_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    assert!(initial.lines().any(|l| l == version), "{version} missing:\n{initial}");
    for process in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(metric(&initial, process).is_some_and(|v| v > 0.0), "{process} missing:\n{initial}");
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
        // The 0.0.4 format types a counter under its samples' name, `_total` included.
        assert!(response.body.contains(&format!("# TYPE {name} ")), "{name} missing:\n{}", response.body);
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
    assert_eq!(get("stampede_delivery_latency_seconds_count").await, 4.0, "each delivery's latency");
    assert!(get("stampede_delivery_latency_seconds_bucket{le=\"+Inf\"}").await == 4.0);
    assert_eq!(get("stampede_queue_depth{queue=\"/queue/m\"}").await, 0.0);
    let bytes = |direction: &str| format!("stampede_{direction}_bytes_total{{transport=\"{label}\"}}");
    let (received, sent) = (node.metric(&bytes("received")).await, node.metric(&bytes("sent")).await);
    // At least the frames themselves: CONNECT, 3 SUBSCRIBEs and 3 SENDs in; CONNECTED, 5
    // RECEIPTs and 4 MESSAGEs out.
    assert!(received.is_some_and(|n| n > 200.0), "{received:?}");
    assert!(sent.is_some_and(|n| n > 300.0), "{sent:?}");
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

/// `promtool`, Prometheus's own checker, from Debian's `prometheus` package (the test kit
/// installs it when missing).
fn promtool() -> std::path::PathBuf {
    stampede_testkit::system::require("promtool", "prometheus")
}

/// Runs `promtool` with `args` and `input` on its standard input; panics with its output unless
/// it exits 0.
fn run_promtool(args: &[&str], input: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(promtool())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("promtool reads");
    let output = child.wait_with_output().expect("promtool ends");
    assert!(
        output.status.success(),
        "promtool {args:?} exited {}:\n{}{}\n--- input ---\n{input}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A scrape that asks for OpenMetrics (as Prometheus does) gets it, with its content type and
/// `# EOF`; any other gets the 0.0.4 text format, in which counters are typed under their
/// `_total` names. Both are checked by Prometheus's own parsers: `promtool check metrics` (the
/// 0.0.4 parser and its lints) and `promtool tsdb create-blocks-from openmetrics` (the
/// OpenMetrics parser; it imports samples, so each gets a timestamp first).
#[tokio::test]
async fn metrics_are_served_in_the_format_asked_for_and_pass_promtool() {
    let node = TestNode::start(|_| {}).await;
    let mut client = node.connect(Transport::Tcp, &[]).await;
    client.subscribe("/topic/p", "t", &[]).await;
    client.publish("/topic/p", "x", &[]).await;
    client.recv_message().await;
    client.publish("/queue/p", "x", &[]).await;

    let text = node.get("/metrics").await;
    assert_eq!(text.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    for line in [
        "# TYPE stampede_frames_received_total counter",
        "# TYPE stampede_build_info gauge",
        "# TYPE stampede_delivery_latency_seconds histogram",
        "# TYPE process_cpu_seconds_total counter",
    ] {
        assert!(text.body.lines().any(|l| l == line), "{line} missing:\n{}", text.body);
    }
    assert!(!text.body.contains("# EOF") && !text.body.contains("# UNIT"), "{}", text.body);

    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;\
                      q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let open = stampede_testkit::http::request(
        node.admin_addr(),
        "GET",
        "/metrics",
        &[("Accept", prometheus)],
        None,
    )
    .await
    .expect("/metrics");
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
    assert!(open.body.lines().any(|l| l == "# TYPE stampede_frames_received counter"), "{}", open.body);

    run_promtool(&["check", "metrics"], &text.body);
    // The OpenMetrics parser of `create-blocks-from`, on a copy with a timestamp on each sample.
    let stamped: String = open
        .body
        .lines()
        .map(|line| if line.starts_with('#') { format!("{line}\n") } else { format!("{line} 1700000000\n") })
        .collect();
    let dir = std::env::temp_dir().join(format!("stampede-openmetrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let input = dir.join("metrics.om");
    std::fs::write(&input, &stamped).expect("written");
    let blocks = dir.join("blocks");
    let args =
        ["tsdb", "create-blocks-from", "openmetrics", input.to_str().unwrap(), blocks.to_str().unwrap()];
    run_promtool(&args, "");
    let _ = std::fs::remove_dir_all(&dir);
    node.shutdown().await;
}

/// Connections refused before their session are counted by reason, and logged, but not once per
/// refusal: a second refusal for the same reason moments later is counted only.
#[tokio::test]
async fn refused_connections_are_counted_by_reason_and_logged_sparingly() {
    let node = TestNode::start(|c| c.limits.max_connections = 2).await;
    let refused = |reason: &'static str| {
        let node = &node;
        async move { node.metric(&format!("stampede_connections_refused_total{{reason=\"{reason}\"}}")).await }
    };
    assert_eq!(refused("node_full").await, Some(0.0), "every reason has its series from the start");
    // Outside /ws (where a plain GET is SockJS's greeting): neither WebSocket nor SockJS.
    let not_websocket = "GET /elsewhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut raw = tokio::net::TcpStream::connect(node.ws_addr()).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut raw, not_websocket.as_bytes()).await.expect("request");
    let mut answer = String::new();
    let _ = tokio::io::AsyncReadExt::read_to_string(&mut raw, &mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    // Counted once the answer is written, so maybe a moment after the client has read it.
    eventually_eq(WAIT, "bad_handshake refusals", Some(1.0), || refused("bad_handshake")).await;

    let _first = node.connect(Transport::Tcp, &[]).await;
    let _second = node.connect(Transport::Ws, &[]).await;
    let mut third = node.open(Transport::Tcp).await;
    assert!(third.expect_error().await.headers.iter().any(|(_, v)| v.contains("too many connections")));
    assert!(Client::try_ws(&node.ws_url(), &["v12.stomp"]).await.is_err(), "503 past max-connections");
    eventually_eq(WAIT, "node_full refusals", Some(2.0), || refused("node_full")).await;
    assert_eq!(refused("origin").await, Some(0.0));
    let log = node.log().text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("connection refused")).collect();
    assert_eq!(lines.len(), 2, "one line for each reason, not for each refusal:\n{log}");
    assert!(lines.iter().any(|l| l.contains("node_full") && l.contains("max-connections")), "{log}");
    node.shutdown().await;
}

/// No per-queue series outlives its queue: 200 per-session queues (as Spring's user
/// destinations make), each consumed, then unsubscribed, leave no `stampede_queue_depth` series.
#[tokio::test]
async fn queue_series_go_with_their_queues() {
    let node = TestNode::start(|_| {}).await;
    let mut client = node.connect(Transport::Tcp, &[]).await;
    const QUEUES: usize = 200;
    for i in 0..QUEUES {
        client.publish(&format!("/queue/reply-session{i}"), "x", &[]).await;
    }
    let text = node.metrics().await;
    let series = |text: &str| {
        text.lines().filter(|l| l.starts_with("stampede_queue_depth{queue=\"/queue/reply-")).count()
    };
    assert_eq!(series(&text), QUEUES, "a queue holding messages has its series");
    for i in 0..QUEUES {
        client.subscribe(&format!("/queue/reply-session{i}"), &format!("s{i}"), &[]).await;
    }
    client.recv_messages(QUEUES).await;
    assert_eq!(
        node.metric("stampede_queue_depth{queue=\"/queue/reply-session7\"}").await,
        Some(0.0),
        "an empty queue with a consumer here keeps its series"
    );
    for i in 0..QUEUES {
        client.unsubscribe(&format!("s{i}")).await;
    }
    let n = &node;
    assert!(
        holds_within(WAIT, move || async move { series(&n.metrics().await) == 0 }).await,
        "series left behind:\n{}",
        node.metrics().await
    );
    node.shutdown().await;
}
