//! The server API across three `stampede` processes on one Redis: sessions listed and
//! disconnected from any node, and what a `kill -9` of one node does to the answers. Its sessions
//! drop out at once (a dead node answers nothing); it is named in `missing_nodes` until the
//! registry forgets it (its heartbeat five seconds old), and then in nothing. `README.md` lists
//! it as scenario 11.

use std::time::Duration;

use stampede_testkit::{eventually_eq, http, Client, Cluster, Node, Redis, Transport};
use tokio::time::Instant;

/// Documented: a dead node leaves `missing_nodes` and `/api/v1/nodes` within the registry's node
/// TTL (5 s) after its last heartbeat, which was at most a heartbeat (1 s) before the kill; each
/// call that still expects it waits up to the call timeout (2 s) for it.
const FORGOTTEN_WITHIN: Duration = Duration::from_secs(9);

async fn connect(node: &Node, login: &str) -> Client {
    Client::connect_to(&node.endpoint(Transport::Tcp), Some(login))
        .await
        .unwrap_or_else(|e| panic!("connect to {} as {login}: {e}", node.id()))
}

/// (sorted session ids, missing nodes) as `node` answers `GET /api/v1/sessions`.
async fn sessions(node: &Node) -> (Vec<String>, Vec<String>) {
    let response = http::get(node.admin_addr(), "/api/v1/sessions").await.expect("GET /api/v1/sessions");
    assert_eq!(response.status, 200, "{}", response.body);
    let page = response.json();
    let mut ids: Vec<String> = page["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["session"].as_str().expect("a session id").to_owned())
        .collect();
    ids.sort();
    let missing = page["missing_nodes"]
        .as_array()
        .expect("missing_nodes")
        .iter()
        .map(|n| n.as_str().expect("a node id").to_owned())
        .collect();
    (ids, missing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_across_nodes_and_a_kill_9() {
    let redis = Redis::start().await;
    let cluster = Cluster::start(3, &redis, &[]).await;
    // ann on node-0, bob and carl on node-1 (the one to die), dan on node-2.
    let mut clients = Vec::new();
    for (node, login) in [(0, "ann"), (1, "bob"), (1, "carl"), (2, "dan")] {
        let mut client = connect(cluster.node(node), login).await;
        client.try_subscribe("/topic/lobby", "l", &[]).await.expect("subscribe");
        clients.push(client);
    }
    let ids: Vec<String> = clients.iter().map(|c| c.session().to_owned()).collect();
    let mut all = ids.clone();
    all.sort();
    for node in cluster.nodes() {
        assert_eq!(sessions(node).await, (all.clone(), Vec::new()), "{} lists every session", node.id());
    }
    let view =
        http::get(cluster.node(2).admin_addr(), &format!("/api/v1/sessions/{}", ids[1])).await.expect("GET");
    assert_eq!(view.json()["node"], cluster.node(1).id(), "{}", view.body);

    // Disconnected through node 0, on node 2.
    let path = format!("/api/v1/sessions/{}/disconnect", ids[3]);
    let response =
        http::post_json(cluster.node(0).admin_addr(), &path, &serde_json::json!({"reason": "bye dan"}))
            .await
            .expect("POST");
    assert_eq!((response.status, response.json()), (200, serde_json::json!({"disconnected": 1})));
    let mut dan = clients.pop().expect("dan");
    let error = dan.try_recv_message(Duration::from_secs(5)).await.expect_err("an ERROR, not a message");
    assert_eq!(error.error_message(), Some("bye dan"), "{error}");

    cluster.node(1).kill();
    let killed = Instant::now();
    // Its sessions are gone from the first answer after the kill.
    let (listed, _) = sessions(cluster.node(0)).await;
    assert_eq!(listed, [ids[0].clone()], "only ann is left");
    let node_0 = cluster.node(0);
    eventually_eq(
        Duration::from_secs(15),
        "missing nodes once the registry forgot node-1",
        Vec::<String>::new(),
        || async { sessions(node_0).await.1 },
    )
    .await;
    let forgotten = killed.elapsed();
    let nodes = http::get(node_0.admin_addr(), "/api/v1/nodes").await.expect("GET /api/v1/nodes").json();
    let live: Vec<&str> =
        nodes["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["node_id"].as_str()).collect();
    assert_eq!(live, [cluster.node(0).id(), cluster.node(2).id()]);
    eprintln!("after the kill -9: sessions gone at once, node forgotten after {forgotten:?}");
    assert!(forgotten <= FORGOTTEN_WITHIN, "node-1 forgotten after {forgotten:?}");
}
