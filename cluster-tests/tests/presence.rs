//! Presence across three `stampede` processes on one Redis, and what a `kill -9` of one of them
//! does to it: its members drop out of every node's reads once its heartbeat is five seconds old
//! (the registry's `NODE_TTL`), and one live node publishes their leave events at its next
//! heartbeat, which every watcher receives once. A node drained with SIGTERM takes its members
//! out as its sessions close. `README.md` lists it as scenario 10.

use std::time::Duration;

use stampede::stomp::Frame;
use stampede_testkit::client::{header, show};
use stampede_testkit::{eventually_eq, http, Client, Cluster, Node, Redis, Transport};
use tokio::time::Instant;

/// Patience for one event that must come.
const RECV: Duration = Duration::from_secs(15);
/// A window in which nothing more may arrive.
const QUIET: Duration = Duration::from_millis(500);
/// Documented: a dead node's leave events come at the first heartbeat of a live node after the
/// registry's node TTL (5 s) since the dead node's last heartbeat, itself at most a heartbeat
/// (1 s) before the kill.
const EVENTS_WITHIN: Duration = Duration::from_secs(7);
/// Documented: its members leave the members a read returns at the same time (5 s after its last
/// heartbeat); but `GET /api/v1/presence` also asks every live node for its counts, and waits up
/// to its 2 s call timeout for the dead node while the registry still lists it.
const READS_WITHIN: Duration = Duration::from_secs(9);

const LOBBY: &str = "/topic/chat.lobby";
const EVENTS: &str = "/presence/topic/chat.lobby";

async fn connect(node: &Node, transport: Transport, login: &str) -> Client {
    Client::connect_to(&node.endpoint(transport), Some(login))
        .await
        .unwrap_or_else(|e| panic!("connect to {} as {login}: {e}", node.id()))
}

/// The sessions of the lobby as `node` reads them, sorted.
async fn sessions(node: &Node) -> Vec<String> {
    let response =
        http::get(node.admin_addr(), "/api/v1/presence?destination=/topic/chat.lobby").await.expect("GET");
    assert_eq!(response.status, 200, "{}", response.body);
    let mut sessions: Vec<String> = response.json()["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["session"].as_str().expect("session").to_owned())
        .collect();
    sessions.sort();
    sessions
}

/// (`x-presence`, `x-presence-session`) of an event.
fn event(frame: &Frame) -> (String, String) {
    assert_eq!(header(frame, "destination"), EVENTS, "{}", show(frame));
    (header(frame, "x-presence").to_owned(), header(frame, "x-presence-session").to_owned())
}

async fn events(watcher: &mut Client, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let frame =
            watcher.try_recv_message(RECV).await.unwrap_or_else(|e| panic!("event {}: {e}", out.len()));
        out.push(event(&frame));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_takes_its_members_out_of_presence() {
    let redis = Redis::start().await;
    let cluster = Cluster::start(3, &redis, &["--presence", "/topic/chat.*"]).await;
    let mut watchers = vec![
        connect(cluster.node(0), Transport::Ws, "ops").await,
        connect(cluster.node(2), Transport::Tcp, "ops").await,
    ];
    for watcher in &mut watchers {
        watcher.try_subscribe(EVENTS, "w", &[]).await.expect("watch the lobby");
    }
    // ann on node-0, bob and carl on node-1 (the one to die), dan on node-2.
    let mut members = Vec::new();
    for (node, login) in [(0, "ann"), (1, "bob"), (1, "carl"), (2, "dan")] {
        let mut client = connect(cluster.node(node), Transport::Tcp, login).await;
        client.try_subscribe(LOBBY, "l", &[]).await.expect("join the lobby");
        members.push(client);
    }
    let all: Vec<String> = members.iter().map(|c| c.session().to_owned()).collect();
    let on_node_1 = [all[1].clone(), all[2].clone()];
    let mut joins: Vec<(String, String)> = all.iter().map(|s| ("join".to_owned(), s.clone())).collect();
    joins.sort();
    for watcher in &mut watchers {
        assert_eq!(events(watcher, 4).await, joins);
        watcher.try_quiet(QUIET).await.expect("one join per member");
    }
    let mut sorted = all.clone();
    sorted.sort();
    for node in cluster.nodes() {
        assert_eq!(sessions(node).await, sorted, "{} reads every member", node.id());
    }

    cluster.node(1).kill();
    let killed = Instant::now();
    let mut leaves: Vec<(String, String)> =
        on_node_1.iter().map(|s| ("leave".to_owned(), s.clone())).collect();
    leaves.sort();
    for watcher in &mut watchers {
        assert_eq!(events(watcher, 2).await, leaves);
    }
    let left = killed.elapsed();
    let mut survivors: Vec<String> = all.iter().filter(|s| !on_node_1.contains(s)).cloned().collect();
    survivors.sort();
    for node in [cluster.node(0), cluster.node(2)] {
        eventually_eq(RECV, format!("the lobby as {} reads it", node.id()), survivors.clone(), || async {
            sessions(node).await
        })
        .await;
    }
    let reads = killed.elapsed();
    for watcher in &mut watchers {
        watcher.try_quiet(QUIET).await.expect("one leave per member of the dead node");
    }
    eprintln!("after the kill -9: leave events after {left:?}, reads without its members after {reads:?}");
    assert!(left <= EVENTS_WITHIN, "leave events took {left:?}");
    assert!(reads <= READS_WITHIN, "reads took {reads:?}");

    // A drained node (SIGTERM) takes its members out as its sessions close: dan leaves.
    cluster.node(2).stop().await;
    assert_eq!(events(&mut watchers[0], 1).await, [("leave".to_owned(), all[3].clone())]);
    watchers[0].try_quiet(QUIET).await.expect("one leave for dan");
    assert_eq!(sessions(cluster.node(0)).await, [all[0].clone()]);
}
