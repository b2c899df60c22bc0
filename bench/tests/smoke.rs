//! Smoke tests: `stampede-bench` against an in-process Stampede node, for about two seconds each,
//! so CI exercises the load generator end to end (CLI, STOMP over WebSocket, JSON report).

use std::process::Command;
use std::time::Duration;

use stampede::apps::settings::HttpRoute;
use stampede_bench::Report;
use stampede_testkit::local::TestNode;
use stampede_testkit::process::free_port;
use stampede_testkit::{Redis, RedisCluster};

/// Runs the `stampede-bench` binary with `args` and returns its JSON report.
async fn bench(args: &[&str]) -> Report {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_stampede-bench"))
            .args(&args)
            .args(["--json", "-", "--quiet", "--source-ips", "4"])
            .output()
            .expect("run stampede-bench")
    });
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("stampede-bench ends within a minute")
        .expect("join");
    assert!(
        output.status.success(),
        "stampede-bench failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("stampede-bench printed no JSON report ({e}):\n{}", String::from_utf8_lossy(&output.stdout))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_counts_deliveries() {
    // A node on the embedded engine, on free loopback ports (the test kit's in-process node).
    let node = TestNode::start(|_| {}).await;
    let url = node.ws_url();
    let report = bench(&[
        "fanout",
        "--url",
        &url,
        "--subscribers",
        "5",
        "--duration",
        "2s",
        "--warmup",
        "200ms",
        "--size",
        "64",
        "--broker-pid",
        &std::process::id().to_string(),
    ])
    .await;
    assert_eq!(report.scenario, "fanout");
    assert_eq!(report.connections_reached, 6, "{report:#?}");
    assert_eq!(report.errors, 0, "{report:#?}");
    assert!(report.sent > 0, "nothing published: {report:#?}");
    assert!(report.received > 0, "no deliveries counted: {report:#?}");
    // Every subscriber gets every message; only those straddling the window's edges may differ.
    assert!(report.received >= report.sent * 4, "{report:#?}");
    let latency = report.latency.expect("latency percentiles");
    assert!(latency.count > 0 && latency.p50_ms <= latency.p99_ms);
    assert!(report.broker_cpu_s.is_some() && report.memory.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_over_plain_tcp_counts_deliveries_and_acks() {
    // tcp:// URLs: STOMP straight over TCP (how the suite drives Debian's ActiveMQ, whose build
    // has no WebSocket transport), here against the node's own STOMP port.
    let node = TestNode::start(|_| {}).await;
    let url = format!("tcp://{}", node.tcp_addr());
    let common = ["--url", &url, "--duration", "1s", "--warmup", "200ms", "--size", "64"];
    let fanout = bench(&[&["fanout", "--subscribers", "4"][..], &common[..]].concat()).await;
    assert_eq!(fanout.connections_reached, 5, "{fanout:#?}");
    assert_eq!(fanout.errors, 0, "{fanout:#?}");
    assert!(fanout.sent > 0 && fanout.received >= fanout.sent * 3, "{fanout:#?}");
    let queue = bench(&[&["queue", "--producers", "1", "--consumers", "2"][..], &common[..]].concat()).await;
    assert_eq!(queue.errors, 0, "{queue:#?}");
    assert!(queue.received > 0, "no acked deliveries over TCP: {queue:#?}");
    let churn = bench(&[&["churn", "--concurrency", "2"][..], &common[..]].concat()).await;
    assert_eq!(churn.errors, 0, "{churn:#?}");
    assert!(churn.cycles > 0, "{churn:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_and_idle_run() {
    // A node on the embedded engine, on free loopback ports (the test kit's in-process node).
    let node = TestNode::start(|_| {}).await;
    let url = node.ws_url();
    let report = bench(&[
        "queue",
        "--url",
        &url,
        "--producers",
        "1",
        "--consumers",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ])
    .await;
    assert_eq!(report.errors, 0, "{report:#?}");
    assert!(report.received > 0, "no queue deliveries: {report:#?}");
    let report = bench(&["idle", "--url", &url, "--connections", "50", "--hold", "200ms"]).await;
    assert_eq!(report.connections_reached, 50, "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_times_each_handshake() {
    let node = TestNode::start(|_| {}).await;
    let url = node.ws_url();
    let report = bench(&["connect", "--url", &url, "--connections", "40", "--concurrency", "4"]).await;
    assert_eq!(report.errors, 0, "{report:#?}");
    assert_eq!(report.cycles, 40, "{report:#?}");
    let connect = report.connect_latency.expect("CONNECT → CONNECTED percentiles");
    let subscribe = report.subscribe_latency.expect("SUBSCRIBE → RECEIPT percentiles");
    assert_eq!((connect.count, subscribe.count), (40, 40), "the warm-up cycles are not counted");
    assert!(report.app.is_none(), "no backend was asked for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_scenarios_serve_the_nodes_hooks_and_backend() {
    // The node calls the backend that stampede-bench serves on this address while it runs.
    let backend = format!("127.0.0.1:{}", free_port());
    let node = TestNode::start(|config| {
        config.apps.connect_hook = Some(format!("http://{backend}/connect"));
        config.apps.subscribe_hook = Some(format!("http://{backend}/subscribe"));
        config.apps.http =
            vec![HttpRoute { pattern: "/app/*".into(), url: format!("http://{backend}/echo") }];
    })
    .await;
    let url = node.ws_url();
    let report = bench(&[
        "connect",
        "--url",
        &url,
        "--connections",
        "40",
        "--concurrency",
        "4",
        "--app-listen",
        &backend,
    ])
    .await;
    assert_eq!(report.errors, 0, "{report:#?}");
    let calls = report.app.clone().expect("the backend's calls");
    // 40 measured cycles and 16 of warm-up (4 per worker), each a CONNECT and a SUBSCRIBE.
    assert_eq!((calls.connect, calls.subscribe, calls.rejected), (56, 56, 0), "{report:#?}");
    assert!(
        report.notes.iter().any(|n| n.contains("40 of the measured CONNECTED frames named a user")),
        "the hook's user reaches CONNECTED: {report:#?}"
    );

    let report = bench(&[
        "app-http",
        "--url",
        &url,
        "--clients",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--app-listen",
        &backend,
    ])
    .await;
    assert_eq!(report.errors, 0, "{report:#?}");
    assert!(report.received > 0, "no replies: {report:#?}");
    assert_eq!(report.received_total, report.sent_total, "every SEND got its reply: {report:#?}");
    let calls = report.app.expect("the backend's calls");
    assert_eq!(calls.echo, report.sent_total, "one call per SEND: {calls:?}");
    assert_eq!(
        (calls.connect, calls.subscribe),
        (2, 2),
        "each client's CONNECT and SUBSCRIBE asked the hooks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_topics_on_a_sharded_cluster_use_every_primary_and_no_bus_pubsub() {
    // One and two primaries, formed by hand (`redis-cli --cluster create` wants three), as the
    // suite's cluster-sharded target forms them.
    for primaries in [1, 2] {
        let cluster = RedisCluster::start_unreplicated(primaries).await;
        let servers: Vec<&Redis> = cluster.nodes().iter().collect();
        let url = cluster.url();
        let node = TestNode::start(|c| c.redis_url = Some(url.clone())).await;
        let bus_before = stampede_bench::suite::targets::bus_stats(&servers).await;
        let report = bench(&[
            "topics",
            "--url",
            &node.ws_url(),
            "--connections",
            "40",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--size",
            "64",
        ])
        .await;
        assert_eq!(report.errors, 0, "{primaries} primaries: {report:#?}");
        assert!(report.received > 0, "no deliveries through {primaries} primaries: {report:#?}");
        // 40 topics, each in its own slot: every primary took some of the node's shard
        // subscriptions and of its publishes.
        for server in &servers {
            let calls = stampede_bench::suite::targets::command_stats(&[server]).await;
            for command in ["ssubscribe", "spublish"] {
                assert!(
                    calls.get(command).is_some_and(|n| *n > 0),
                    "no {command} on the primary on port {}: {calls:?}",
                    server.port()
                );
            }
        }
        // SPUBLISH goes to its own shard's replicas only (none here): no pub/sub on the bus.
        let bus_after = stampede_bench::suite::targets::bus_stats(&servers).await;
        for kind in ["publish", "publishshard"] {
            let sent = bus_after.get(kind).unwrap_or(&0) - bus_before.get(kind).unwrap_or(&0);
            assert_eq!(sent, 0, "{kind} messages on the cluster bus: {bus_before:?} -> {bus_after:?}");
        }
        if primaries > 1 {
            assert!(bus_after.get("ping").is_some_and(|n| *n > 0), "bus counters read: {bus_after:?}");
        }
    }
}
