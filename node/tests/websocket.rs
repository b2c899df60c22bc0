//! STOMP over WebSocket: subprotocol negotiation, the `/ws` path, and how STOMP frames map to
//! WebSocket messages in both directions.
//!
//! Memory engine only: the handshake and the framing are the node's transport, not the engine.

#[macro_use]
mod support;

use stampede::stomp::Command;
use support::*;
use tokio_tungstenite::tungstenite::{self, Message};

fn chosen_protocol(response: &tungstenite::handshake::client::Response) -> Option<String> {
    response.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn best_offered_subprotocol_is_echoed() {
    let node = TestNode::start(|_| {}).await;
    let (_, response) = Client::ws(&node.ws_url(), &["v10.stomp", "v11.stomp", "v12.stomp"]).await;
    assert_eq!(chosen_protocol(&response).as_deref(), Some("v12.stomp"));

    let (_, response) = Client::ws(&node.ws_url(), &["v11.stomp"]).await;
    assert_eq!(chosen_protocol(&response).as_deref(), Some("v11.stomp"));

    let (_, response) = Client::ws(&node.ws_url(), &["v10.stomp", "mqtt"]).await;
    assert_eq!(chosen_protocol(&response).as_deref(), Some("v10.stomp"));
    node.shutdown().await;
}

#[tokio::test]
async fn handshake_without_subprotocol_is_accepted() {
    let node = TestNode::start(|_| {}).await;
    let (mut client, response) = Client::ws(&node.ws_url(), &[]).await;
    assert_eq!(response.status(), 101);
    assert_eq!(chosen_protocol(&response), None);
    let connected = client.connect(Some("1.2"), &[]).await;
    assert_eq!(header(&connected, "version"), "1.2");
    node.shutdown().await;
}

#[tokio::test]
async fn other_paths_are_refused_with_404() {
    let node = TestNode::start(|_| {}).await;
    for path in ["/", "/stomp", "/ws/x"] {
        let url = format!("ws://{}{path}", node.ws_addr());
        match Client::try_ws(&url, &["v12.stomp"]).await {
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404, "{path}"),
            Err(other) => panic!("{path}: unexpected error {other}"),
            Ok(_) => panic!("{path}: the handshake succeeded"),
        }
    }
    node.shutdown().await;
}

#[tokio::test]
async fn several_frames_in_one_message() {
    let node = TestNode::start(|_| {}).await;
    let (mut client, _) = Client::ws(&node.ws_url(), &["v12.stomp"]).await;
    let frames = "CONNECT\naccept-version:1.2\nhost:x\n\n\0\
                  SUBSCRIBE\ndestination:/topic/multi\nid:s1\nreceipt:sub\n\n\0\
                  SEND\ndestination:/topic/multi\n\none\0\nSEND\ndestination:/topic/multi\n\ntwo\0";
    client.send_ws(Message::text(frames)).await.unwrap();
    let connected = client.recv_frame(WAIT).await.unwrap();
    assert_eq!(connected.command, Command::Connected, "{}", show(&connected));
    let receipt = client.recv_frame(WAIT).await.unwrap();
    assert_eq!((receipt.command, receipt.get("receipt-id")), (Command::Receipt, Some("sub")));
    let messages = client.recv_messages(2).await;
    assert_eq!(messages.iter().map(body).collect::<Vec<_>>(), ["one", "two"]);
    client.assert_quiet().await;
    node.shutdown().await;
}

#[tokio::test]
async fn one_frame_over_several_messages() {
    let node = TestNode::start(|_| {}).await;
    let (mut client, _) = Client::ws(&node.ws_url(), &["v12.stomp"]).await;
    client.connect(Some("1.2"), &[]).await;
    client.subscribe("/topic/split", "s1", &[]).await;
    for part in ["SE", "ND\ndestination:/top", "ic/split\ncontent-", "length:5\n\nhel", "lo", "\0"] {
        client.send_ws(Message::text(part)).await.unwrap();
    }
    let message = client.recv_message().await;
    assert_eq!(body(&message), "hello");
    assert_eq!(header(&message, "destination"), "/topic/split");
    node.shutdown().await;
}

#[tokio::test]
async fn text_and_binary_messages_are_both_accepted() {
    let node = TestNode::start(|_| {}).await;
    let (mut client, _) = Client::ws(&node.ws_url(), &["v12.stomp"]).await;
    client.send_ws(Message::binary(b"CONNECT\naccept-version:1.2\nhost:x\n\n\0".to_vec())).await.unwrap();
    assert_eq!(client.recv_frame(WAIT).await.unwrap().command, Command::Connected);
    client.subscribe("/topic/kinds", "s1", &[]).await;
    client.send_ws(Message::text("SEND\ndestination:/topic/kinds\n\nas text\0")).await.unwrap();
    client.send_ws(Message::binary(b"SEND\ndestination:/topic/kinds\n\nas binary\0".to_vec())).await.unwrap();
    let messages = client.recv_messages(2).await;
    assert_eq!(messages.iter().map(body).collect::<Vec<_>>(), ["as text", "as binary"]);
    node.shutdown().await;
}

#[tokio::test]
async fn replies_are_text_unless_the_body_is_not_utf8() {
    let node = TestNode::start(|_| {}).await;
    let (mut sub, _) = Client::ws(&node.ws_url(), &["v12.stomp"]).await;
    sub.connect(Some("1.2"), &[]).await;
    assert_eq!(sub.last_kind, Some(WsKind::Text), "CONNECTED");
    sub.subscribe("/topic/bytes", "s1", &[]).await;
    assert_eq!(sub.last_kind, Some(WsKind::Text), "RECEIPT");

    let mut publisher = node.connect(Transport::Tcp).await;
    publisher.publish("/topic/bytes", "plain text é", &[]).await;
    let raw = stampede::stomp::Frame::new(Command::Send)
        .with_header("destination", "/topic/bytes")
        .with_header("content-length", "4")
        .with_body(vec![0xff, 0x00, 0xfe, 0x01]);
    publisher.request(raw).await;

    let text = sub.recv_message().await;
    assert_eq!(body(&text), "plain text é");
    assert_eq!(sub.last_kind, Some(WsKind::Text));
    let binary = sub.recv_message().await;
    assert_eq!(&binary.body[..], &[0xff, 0x00, 0xfe, 0x01]);
    assert_eq!(sub.last_kind, Some(WsKind::Binary));
    node.shutdown().await;
}
