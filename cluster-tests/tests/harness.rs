//! Checks of the harness itself, on the embedded engine, a bare Redis, a Redis Cluster and a
//! Sentinel deployment: what the scenarios rely on (signals, restarts on the same ports, Redis's
//! AOF, failovers) works before they rely on it.

use std::time::Duration;

use stampede_testkit::redis::{call_all, Resp};
use stampede_testkit::{http, Client, ClientError, Cluster, Redis, RedisCluster, RedisSentinel, Transport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keeps_acknowledged_writes_across_kill_9() {
    let redis = Redis::start().await;
    assert_eq!(redis.cli(&["SET", "greeting", "hello"]).await, "OK");
    redis.kill();
    assert!(!redis.ping().await, "redis answers PING after SIGKILL");
    redis.restart().await;
    assert_eq!(redis.cli(&["GET", "greeting"]).await, "hello", "the AOF was not replayed");
    assert!(redis.dir().join("appendonlydir").is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_drains_on_sigterm_and_restarts_on_the_same_ports() {
    let cluster = Cluster::memory(&[]).await;
    let node = cluster.node(0);
    for transport in Transport::ALL {
        let mut client = Client::connect_to(&node.endpoint(transport), None).await.expect("connect");
        client.try_disconnect().await.expect("DISCONNECT");
    }
    let mut client = Client::connect_to(&node.endpoint(Transport::Ws), None).await.expect("connect");
    let status = node.stop().await;
    assert!(status.is_some_and(|s| s.success()), "SIGTERM: {status:?}");
    assert!(!node.is_running());
    match client.try_recv_message(Duration::from_secs(5)).await {
        Err(ClientError::Error(frame)) => assert!(!frame.get("message").unwrap_or_default().is_empty()),
        Err(ClientError::Closed(_)) => {}
        other => panic!("a drained session ends with ERROR or a close, not {other:?}"),
    }
    assert_eq!(node.readyz().await, None, "the admin port is closed once the node exited");

    node.restart().await;
    let client =
        Client::connect_to(&node.endpoint(Transport::Tcp), None).await.expect("connect after restart");
    node.kill();
    assert!(!node.is_running());
    drop(client);
    node.restart().await;
    assert!(node.is_ready().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_answers_the_http_helpers() {
    let cluster = Cluster::memory(&[]).await;
    let node = cluster.node(0);
    assert_eq!(http::get(node.admin_addr(), "/healthz").await.expect("GET /healthz").status, 200);
    let mut subscriber = Client::connect_to(&node.endpoint(Transport::Tcp), None).await.expect("connect");
    subscriber.try_subscribe("/topic/admin", "s", &[]).await.expect("SUBSCRIBE");
    let request =
        serde_json::json!({"destination": "/topic/admin", "headers": {"seq": "7"}, "body": "from HTTP"});
    let response = http::post_json(node.admin_addr(), "/api/v1/publish", &request).await.expect("POST");
    assert_eq!(response.status, 202, "{}", response.body);
    let frame = subscriber.try_recv_message(Duration::from_secs(5)).await.expect("the published message");
    assert_eq!((frame.get("seq"), &frame.body[..]), (Some("7"), &b"from HTTP"[..]));
    let nodes = http::get(node.admin_addr(), "/api/v1/nodes").await.expect("GET /api/v1/nodes").json();
    assert_eq!(nodes["nodes"][0]["node_id"], "node-0", "{nodes}");
}

/// The runtime's worker threads, by the name tokio gives them.
fn tokio_workers(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the node's threads");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_sets_the_runtime_size() {
    for threads in [1, 3] {
        let cluster = Cluster::memory(&["--worker-threads", &threads.to_string()]).await;
        let pid = cluster.node(0).pid().expect("running");
        assert_eq!(tokio_workers(pid), threads, "--worker-threads {threads}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_covers_every_slot_and_fails_over_to_a_replica() {
    let cluster = RedisCluster::start(3, 1).await;
    assert_eq!(cluster.nodes().len(), 6);
    assert!(cluster.url().starts_with("redis-cluster://127.0.0.1:"), "{}", cluster.url());
    let key = "{/queue/harness}:q";
    let master = cluster.master_for_key(key).await;
    // Replicated before the kill: WAIT, on the SET's connection, for one replica to have it.
    let replies =
        call_all(cluster.node(master).addr(), &[&["SET", key, "kept"], &["WAIT", "1", "5000"]]).await;
    assert_eq!(replies, [Resp::Simple("OK".into()), Resp::Int(1)]);
    let moved = cluster.cli(master, &["CLUSTER", "KEYSLOT", "another key"]).await;
    assert!(moved.parse::<u16>().is_ok_and(|slot| slot < 16384), "{moved}");

    cluster.kill(master);
    let took = cluster.wait_failover(master).await;
    eprintln!("Redis Cluster failover after kill -9 of a master: {took:?}");
    let promoted = cluster.master_for_key(key).await;
    assert_ne!(promoted, master, "the killed master still serves the key's slot");
    assert_eq!(cluster.cli(promoted, &["GET", key]).await, "kept", "the replica lost the key");

    // The killed master comes back as its successor's replica.
    cluster.restart(master).await;
    assert_eq!(cluster.master_for_key(key).await, promoted);
    let role = cluster.cli(master, &["ROLE"]).await;
    assert!(role.starts_with("slave"), "the restarted master's ROLE: {role}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_promotes_the_replica_when_the_master_dies() {
    let sentinel = RedisSentinel::start().await;
    assert!(
        sentinel.url().starts_with("redis+sentinel://127.0.0.1:") && sentinel.url().ends_with("/stampede"),
        "{}",
        sentinel.url()
    );
    let master = sentinel.master_addr().await.port();
    assert_eq!(master, sentinel.servers()[0].port(), "the Sentinels name the master they were given");
    let server = sentinel.server(master);
    let replies = call_all(server.addr(), &[&["SET", "greeting", "hello"], &["WAIT", "1", "5000"]]).await;
    assert_eq!(replies, [Resp::Simple("OK".into()), Resp::Int(1)], "SET, then WAIT for the replica");

    assert_eq!(sentinel.kill_master().await, master);
    let (promoted, took) = sentinel.wait_new_master(master).await;
    eprintln!("Sentinel failover after kill -9 of the master: {took:?}");
    assert_eq!(promoted, sentinel.servers()[1].port(), "the replica is the new master");
    assert_eq!(sentinel.server(promoted).cli(&["GET", "greeting"]).await, "hello");
    assert_eq!(sentinel.master_addr().await.port(), promoted);
}
