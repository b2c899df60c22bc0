//! What the multi-node scenarios share: patience constants, connecting, the `seq` and
//! `x-offset` headers, sending numbered messages, receiving them in order, counting them, and
//! reading every node's readiness. Each test file that uses it declares `mod common;`; a file
//! uses only some of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use stampede::stomp::Frame;
use stampede_testkit::client::{header, show};
use stampede_testkit::{Client, Cluster, Node, Transport};

/// Patience for one message that must come.
pub(crate) const RECV: Duration = Duration::from_secs(10);
/// A window in which nothing more may arrive.
pub(crate) const QUIET: Duration = Duration::from_millis(500);
/// Patience for a state that spreads through the cluster (delivery of a batch, readiness).
pub(crate) const SPREAD: Duration = Duration::from_secs(30);

/// The history rule of the scenarios' history topics.
pub(crate) const HISTORY: &str = "/topic/hist.*=1000";

pub(crate) async fn connect(node: &Node, transport: Transport, login: Option<&str>) -> Client {
    Client::connect_to(&node.endpoint(transport), login)
        .await
        .unwrap_or_else(|e| panic!("connect to {} over {transport:?} as {login:?}: {e}", node.id()))
}

/// The `seq` header every scenario's publisher sets.
pub(crate) fn seq(frame: &Frame) -> u64 {
    header(frame, "seq").parse().unwrap_or_else(|_| panic!("bad seq in {}", show(frame)))
}

pub(crate) fn offset(frame: &Frame) -> u64 {
    header(frame, "x-offset").parse().unwrap_or_else(|_| panic!("bad x-offset in {}", show(frame)))
}

/// Sends `seqs` to `destination` (header `seq`); the last one with a receipt, so when this
/// returns the broker has accepted all of them (a session handles frames in order).
pub(crate) async fn publish(client: &mut Client, destination: &str, seqs: Range<u64>) {
    let last = seqs.end.saturating_sub(1);
    for n in seqs {
        let text = n.to_string();
        let body = format!("message {n}");
        let sent = if n == last {
            client.try_publish(destination, &body, &[("seq", &text)]).await.map(drop)
        } else {
            client.try_send(destination, &body, &[("seq", &text)]).await
        };
        sent.unwrap_or_else(|e| panic!("SEND seq {n} to {destination}: {e}"));
    }
}

/// Receives exactly `seqs`, in order, and returns the frames. `who` names the receiver.
pub(crate) async fn expect_in_order(client: &mut Client, who: &str, seqs: Range<u64>) -> Vec<Frame> {
    let mut frames = Vec::new();
    for expected in seqs.clone() {
        let frame = client
            .try_recv_message(RECV)
            .await
            .unwrap_or_else(|e| panic!("{who}: waiting for seq {expected} (of {seqs:?}): {e}"));
        assert_eq!(seq(&frame), expected, "{who}: out of order, duplicate or gap: {}", show(&frame));
        frames.push(frame);
    }
    frames
}

/// How often each seq occurs in `seqs`.
pub(crate) fn tally(seqs: impl IntoIterator<Item = u64>) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for n in seqs {
        *counts.entry(n).or_insert(0) += 1;
    }
    counts
}

/// Every node's `/readyz` status (`None`: no answer), in node order.
pub(crate) async fn readyz_everywhere(cluster: &Cluster) -> Vec<Option<u16>> {
    let mut statuses = Vec::new();
    for node in cluster.nodes() {
        statuses.push(node.readyz().await);
    }
    statuses
}

/// A SEND to `/user/ann/queue/inbox` on node-0 reaches both of ann's sessions (on node-1 and
/// node-2, subscribed to `/user/queue/inbox`), in order; bob's sessions get only bob's message,
/// sent after ann's.
pub(crate) async fn user_destinations_reach_their_users(cluster: &Cluster) {
    let sessions = [
        ("ann", 1, Transport::Ws),
        ("ann", 2, Transport::Tcp),
        ("bob", 1, Transport::Tcp),
        ("bob", 2, Transport::Ws),
    ];
    let mut clients = Vec::new();
    for (user, node, transport) in sessions {
        let mut client = connect(cluster.node(node), transport, Some(user)).await;
        client.try_subscribe("/user/queue/inbox", "inbox", &[]).await.expect("SUBSCRIBE /user/queue/inbox");
        clients.push((user, format!("{user} on node-{node} over {transport:?}"), client));
    }
    let mut sender = connect(cluster.node(0), Transport::Ws, Some("carl")).await;
    publish(&mut sender, "/user/ann/queue/inbox", 0..20).await;
    publish(&mut sender, "/user/bob/queue/inbox", 1000..1001).await;
    for (user, who, mut client) in clients {
        let expected = if user == "ann" { 0..20 } else { 1000..1001 };
        for frame in expect_in_order(&mut client, &who, expected).await {
            assert_eq!(header(&frame, "destination"), "/user/queue/inbox", "{who}");
        }
        client.try_quiet(QUIET).await.unwrap_or_else(|e| panic!("{who}: another user's message: {e}"));
    }
}
