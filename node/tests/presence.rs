//! Presence: join and leave events on `/presence<destination>` and the members read through the
//! admin API (`GET /api/v1/presence?destination=`, its `members`), on every engine variant (three Redis nodes: members and watchers on different
//! nodes); who may subscribe to the events, and that nobody may SEND to them.
//!
//! A kill -9 of a node (its members leave within the documented time) is in
//! `cluster-tests/tests/presence.rs`, with node processes.

use stampede::stomp::Frame;
use stampede_testkit::prelude::*;

const ROOM: &str = "/topic/chat.room1";
const EVENTS: &str = "/presence/topic/chat.room1";

every_engine!(join_and_leave_events_reach_every_watcher_once);
both_transports!(presence_destinations_are_read_only_and_exist_only_where_presence_is_kept);

fn presence_kept(c: &mut stampede::config::Config) {
    c.presence =
        vec!["/topic/chat.*".to_owned(), "/user/*/queue/status".to_owned(), "/queue/desk.*".to_owned()];
}

/// One event as a watcher sees it: `x-presence`, the user (empty when anonymous), the session.
fn event(frame: &Frame) -> (String, String, String) {
    assert_eq!(header(frame, "destination"), EVENTS, "{}", show(frame));
    assert_eq!(header(frame, "content-type"), "application/json", "{}", show(frame));
    let json: serde_json::Value = serde_json::from_str(&body(frame)).expect("a JSON body");
    let user = frame.get("x-presence-user").unwrap_or("").to_owned();
    assert_eq!(json["event"], header(frame, "x-presence"));
    assert_eq!(json["destination"], ROOM);
    assert_eq!(json["session"], header(frame, "x-presence-session"));
    assert_eq!(json["node"], header(frame, "x-presence-node"));
    assert_eq!(json["user"].as_str().unwrap_or(""), user, "null for an anonymous session");
    (header(frame, "x-presence").to_owned(), user, header(frame, "x-presence-session").to_owned())
}

/// The members of `destination` as `node` reads them through the admin API, as (user or "",
/// session); `None` where presence is not kept.
async fn read(node: &TestNode, destination: &str) -> Option<Vec<(String, String)>> {
    let response = node.get(&format!("/api/v1/presence?destination={destination}")).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let json = response.json();
    assert_eq!(json["destination"], destination);
    let members = json["members"].as_array()?;
    Some(
        members
            .iter()
            .map(|m| (m["user"].as_str().unwrap_or("").to_owned(), m["session"].as_str().unwrap().to_owned()))
            .collect(),
    )
}

/// The members of `ROOM` as node `i` reads them, and how many distinct users they are.
async fn members(cluster: &Cluster, i: usize) -> (Vec<(String, String)>, usize) {
    let members = read(cluster.node(i), ROOM).await.expect("presence is kept for the room");
    let users = members
        .iter()
        .filter(|(user, _)| !user.is_empty())
        .map(|(user, _)| user)
        .collect::<std::collections::BTreeSet<_>>();
    let users = users.len();
    (members, users)
}

/// Two watchers (on different nodes when there are several) see each join and each leave once,
/// in order: ann subscribing twice is one member and leaves at her last UNSUBSCRIBE; an
/// anonymous session leaves when it disconnects. Every node reads the same members meanwhile.
async fn join_and_leave_events_reach_every_watcher_once(v: Variant) {
    let cluster = Cluster::start(v, presence_kept).await;
    let mut watchers = Vec::new();
    for i in 0..2 {
        let mut watcher = cluster.connect_as(i, "ops").await;
        watcher.subscribe(EVENTS, "w", &[]).await;
        watchers.push(watcher);
    }
    let mut ann = cluster.connect_as(1, "ann").await;
    ann.subscribe(ROOM, "a", &[]).await;
    ann.subscribe(ROOM, "b", &[]).await;
    let mut anonymous = cluster.connect(2).await;
    anonymous.subscribe(ROOM, "x", &[]).await;
    let (ann_session, anonymous_session) = (ann.session().to_owned(), anonymous.session().to_owned());
    let mut both = vec![("".to_owned(), anonymous_session.clone()), ("ann".to_owned(), ann_session.clone())];
    both.sort();
    for i in 0..cluster.variant.nodes {
        assert_eq!(members(&cluster, i).await, (both.clone(), 1), "node {i}");
    }

    ann.unsubscribe("a").await;
    assert_eq!(members(&cluster, 0).await.0.len(), 2, "ann is still subscribed once");
    ann.unsubscribe("b").await;
    anonymous.disconnect().await;
    let expected = [
        ("join".to_owned(), "ann".to_owned(), ann_session.clone()),
        ("join".to_owned(), "".to_owned(), anonymous_session.clone()),
        ("leave".to_owned(), "ann".to_owned(), ann_session.clone()),
        ("leave".to_owned(), "".to_owned(), anonymous_session.clone()),
    ];
    for watcher in &mut watchers {
        let events: Vec<_> = watcher.recv_messages(4).await.iter().map(event).collect();
        assert_eq!(events, expected);
        watcher.assert_quiet().await;
    }
    assert_eq!(members(&cluster, 0).await, (vec![], 0));
    cluster.shutdown().await;
}

/// SEND to a presence destination is refused, and so is subscribing to the events of a
/// destination whose presence is not kept; the admin API says 404 for it and 400 to a publish.
async fn presence_destinations_are_read_only_and_exist_only_where_presence_is_kept(t: Transport) {
    let node = TestNode::start(presence_kept).await;
    let mut client = node.connect(t, &[]).await;
    client.send(EVENTS, "fake join", &[]).await;
    client.expect_refusal("\"/presence/topic/chat.room1\" is a presence destination").await;
    let mut client = node.connect(t, &[]).await;
    client.send_frame(&subscribe_frame("/presence/topic/news", "n")).await.unwrap();
    client.expect_refusal("no presence is kept for /topic/news").await;
    let mut client = node.connect(t, &[]).await;
    client.send_frame(&subscribe_frame("/presence/exchange/x", "n")).await.unwrap();
    client.expect_refusal("unknown destination").await;

    // A user destination's presence: the sessions of that user.
    let mut first = node.connect_as(t, "ann").await;
    first.subscribe("/presence/user/queue/status", "w", &[]).await;
    let mut second = node.connect_as(t, "ann").await;
    second.subscribe("/user/queue/status", "s", &[]).await;
    let join = first.recv_message().await;
    assert_eq!(header(&join, "destination"), "/presence/user/ann/queue/status");
    assert_eq!(
        (header(&join, "x-presence"), header(&join, "x-presence-session")),
        ("join", second.session())
    );

    // A queue's presence: its consumers, each session once.
    let mut consumer = node.connect_as(t, "bob").await;
    consumer.subscribe("/queue/desk.1", "a", &[]).await;
    consumer.subscribe("/queue/desk.1", "b", &[]).await;
    let consumers = read(&node, "/queue/desk.1").await.expect("kept");
    assert_eq!(consumers, [("bob".to_owned(), consumer.session().to_owned())]);
    assert_eq!(read(&node, "/topic/news").await, None, "no presence kept: members null");
    let own = read(&node, "/user/ann/queue/status").await.expect("kept");
    assert_eq!(own, [("ann".to_owned(), second.session().to_owned())]);
    let response = node
        .post_json("/api/v1/publish", r#"{"destination": "/presence/topic/chat.room1", "body": "x"}"#)
        .await;
    assert_eq!(response.status, 400, "{}", response.body);
    node.shutdown().await;
}

/// Subscribing to a destination's presence takes the right to subscribe to the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_events_need_permission_on_the_destination() {
    let keys = Keys::new();
    let node = TestNode::start(|c| {
        keys.secure(c);
        c.presence = vec!["/topic/prices/*".to_owned(), "/topic/public.*".to_owned()];
    })
    .await;
    for t in [Transport::Tcp, Transport::Ws] {
        // bob has no role: the public topics only.
        let mut bob = node.connect(t, &[("login", "bob"), ("passcode", "bob-pw")]).await;
        bob.subscribe("/presence/topic/public.news", "p", &[]).await;
        bob.send_frame(&subscribe_frame("/presence/topic/prices/usd", "q")).await.unwrap();
        bob.expect_refusal("not authorized to subscribe to /topic/prices/usd").await;
        // ann trades: she may watch who else watches the prices.
        let mut ann = node.connect(t, &[("login", "ann"), ("passcode", "ann-pw")]).await;
        ann.subscribe("/presence/topic/prices/usd", "q", &[]).await;
        let mut other = node.connect(t, &[("login", "ann"), ("passcode", "ann-pw")]).await;
        other.subscribe("/topic/prices/usd", "p", &[]).await;
        let join = ann.recv_message().await;
        assert_eq!((header(&join, "x-presence"), header(&join, "x-presence-user")), ("join", "ann"));
        other.disconnect().await;
        let leave = ann.recv_message().await;
        assert_eq!(header(&leave, "x-presence"), "leave");
    }
    node.shutdown().await;
}

/// An operator's orders through the admin API end presence as the client's own would: unsubscribing
/// a session from the destination, or disconnecting it, publishes its leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_unsubscribe_or_disconnect_is_a_leave() {
    let node = TestNode::start(presence_kept).await;
    let mut watcher = node.connect(Transport::Tcp, &[]).await;
    watcher.subscribe(EVENTS, "w", &[]).await;
    for (login, order) in [("ann", "unsubscribe"), ("bob", "disconnect")] {
        let mut member = node.connect_as(Transport::Ws, login).await;
        member.subscribe(ROOM, "r", &[]).await;
        let join = watcher.recv_message().await;
        assert_eq!(event(&join), ("join".to_owned(), login.to_owned(), member.session().to_owned()));
        let path = format!("/api/v1/sessions/{}/{order}", member.session());
        let body =
            if order == "unsubscribe" { format!(r#"{{"destination": "{ROOM}"}}"#) } else { "{}".to_owned() };
        let response = node.post_json(&path, &body).await;
        assert!(response.status < 300, "{order}: {} {}", response.status, response.body);
        let leave = watcher.recv_message().await;
        assert_eq!(event(&leave), ("leave".to_owned(), login.to_owned(), member.session().to_owned()));
    }
    watcher.assert_quiet().await;
    node.shutdown().await;
}
