//! STOMP over WebSocket: subprotocol negotiation, the `/ws` path, and how STOMP frames map to
//! WebSocket messages in both directions.
//!
//! Memory engine only: the handshake and the framing are the node's transport, not the engine.

use stampede::stomp::{Command, Frame};
use stampede_testkit::prelude::*;
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

    let mut publisher = node.connect(Transport::Tcp, &[]).await;
    publisher.publish("/topic/bytes", "plain text é", &[]).await;
    let raw = Frame::new(Command::Send)
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

// === the handshake and framing by hand ===

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// An upgrade request for `/ws` with `version` as `Sec-WebSocket-Version`.
fn upgrade_request(version: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\
         Sec-WebSocket-Protocol: v12.stomp\r\n\r\n"
    )
}

/// A masked client frame with FIN set.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x5a, 0x01, 0xc3, 0x7e];
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads an HTTP response head; returns it and the bytes that came after it.
async fn read_response_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = got.split_off(end + 4);
            return (String::from_utf8(got).expect("an ASCII head"), rest);
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("an answer").unwrap();
        assert!(n > 0, "closed before the end of the response head: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_ping_gets_a_pong_with_its_payload() {
    let node = TestNode::start(|_| {}).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(node.ws_url()).await.unwrap();
    for payload in [&b""[..], b"are you there?", &[0xa5; 125]] {
        ws.send(Message::Ping(payload.to_vec().into())).await.unwrap();
        let answer = tokio::time::timeout(WAIT, ws.next()).await.expect("a pong in time").unwrap().unwrap();
        assert_eq!(answer, Message::Pong(payload.to_vec().into()));
    }
    // The connection still speaks STOMP.
    ws.send(Message::text("CONNECT\naccept-version:1.2\nhost:x\n\n\0")).await.unwrap();
    let answer = tokio::time::timeout(WAIT, ws.next()).await.expect("CONNECTED in time").unwrap().unwrap();
    assert!(answer.to_text().unwrap().starts_with("CONNECTED\n"), "{answer:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn websocket_version_8_is_refused_with_426() {
    let node = TestNode::start(|_| {}).await;
    let mut stream = TcpStream::connect(node.ws_addr()).await.unwrap();
    stream.write_all(upgrade_request("8").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await.expect("closed in time").unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
    let head = answer.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.lines().any(|line| line == "sec-websocket-version: 13"), "{answer}");
    node.shutdown().await;
}

/// A client that sends its first frames right behind the upgrade request, in the same write,
/// before it has seen the 101: the frames are not lost.
#[tokio::test]
async fn frames_pipelined_behind_the_handshake_are_kept() {
    let node = TestNode::start(|_| {}).await;
    let mut stream = TcpStream::connect(node.ws_addr()).await.unwrap();
    let mut bytes = upgrade_request("13").into_bytes();
    bytes.extend(client_frame(0x1, b"CONNECT\naccept-version:1.2\nhost:x\n\n\0"));
    bytes.extend(client_frame(0x1, b"SUBSCRIBE\nid:s\ndestination:/topic/p\nreceipt:r\n\n\0"));
    stream.write_all(&bytes).await.unwrap();
    let (head, rest) = read_response_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    assert!(head.contains("Sec-WebSocket-Protocol: v12.stomp"), "{head}");
    let mut ws = WebSocketStream::from_partially_read(stream, rest, Role::Client, None).await;
    let mut next = async || {
        let message = tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time").unwrap().unwrap();
        message.into_text().unwrap().to_string()
    };
    assert!(next().await.starts_with("CONNECTED\n"));
    assert!(next().await.starts_with("RECEIPT\nreceipt-id:r\n"));
    node.shutdown().await;
}

#[tokio::test]
async fn a_handshake_without_host_is_refused_with_400() {
    let node = TestNode::start(|_| {}).await;
    let mut stream = TcpStream::connect(node.ws_addr()).await.unwrap();
    let request = upgrade_request("13").replace("Host: localhost\r\n", "");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await.expect("closed in time").unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.ends_with("exactly one Host header"), "{answer}");
    node.shutdown().await;
}

// === closing ===

/// A close frame with `payload`, written under a STOMP-connected WebSocket client; returns the
/// client after the server closed, and the frames that came before the close.
async fn close_with(node: &TestNode, payload: &[u8]) -> (Client, Vec<Frame>) {
    let mut client = node.connect(Transport::Ws, &[]).await;
    client.send_under_ws(&ws_frame(true, 0x8, payload, true)).await.unwrap();
    let frames = client.expect_closed(WAIT).await;
    (client, frames)
}

/// A close frame's payload: `code`, then `reason`.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// RFC 6455 §5.5.1: a close is answered with a close, typically echoing the code; the session
/// ends as after DISCONNECT, with no ERROR.
#[tokio::test]
async fn a_valid_close_is_answered_with_its_own_code() {
    let node = TestNode::start(|_| {}).await;
    for (code, reason) in [(1000, &b""[..]), (1001, b"going away"), (3000, b""), (4999, "ciao é".as_bytes())]
    {
        let (client, frames) = close_with(&node, &close_payload(code, reason)).await;
        assert!(frames.is_empty(), "{code}: {:?}", frames.iter().map(show).collect::<Vec<_>>());
        assert_eq!(client.close_code, Some(code));
    }
    // No code at all (also valid) is answered with 1000.
    let (client, frames) = close_with(&node, b"").await;
    assert!(frames.is_empty());
    assert_eq!(client.close_code, Some(1000));
    let n = &node;
    assert!(holds_within(WAIT, move || async move { n.connections().await == 0.0 }).await, "sessions ended");
    node.shutdown().await;
}

/// RFC 6455 §7.4: codes an endpoint must not send, and a 1-byte payload, fail the connection with
/// 1002; §5.5.1 and §8.1: a reason that is not UTF-8 fails it with 1007.
#[tokio::test]
async fn a_malformed_close_is_answered_with_1002_or_1007() {
    let node = TestNode::start(|_| {}).await;
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        let (client, frames) = close_with(&node, &close_payload(code, b"")).await;
        let error = frames.last().unwrap_or_else(|| panic!("{code}: no ERROR"));
        assert_error(error, &format!("WebSocket protocol error: Invalid close code {code}"));
        assert_eq!(client.close_code, Some(1002), "{code}");
        assert_eq!(client.close_reason.as_deref(), Some("WebSocket protocol error"), "{code}");
    }
    let (client, frames) = close_with(&node, &[0x03]).await;
    assert_error(frames.last().expect("an ERROR"), "a 1-byte payload");
    assert_eq!(client.close_code, Some(1002));

    let (client, frames) = close_with(&node, &close_payload(1000, b"bye \xff")).await;
    assert_error(frames.last().expect("an ERROR"), "Invalid UTF-8 in a close frame's reason");
    assert_eq!((client.close_code, client.close_reason.as_deref()), (Some(1007), Some("invalid UTF-8")));
    node.shutdown().await;
}

/// RFC 6455 §7.4.1: 1007 for a text message that is not UTF-8, 1009 for a message too big.
#[tokio::test]
async fn bad_text_closes_with_1007_and_a_message_too_big_with_1009() {
    let node = TestNode::start(|c| {
        c.limits.max_frame_size = 4096;
        c.limits.max_body_size = 2048;
    })
    .await;
    let mut client = node.connect(Transport::Ws, &[]).await;
    client.send_under_ws(&ws_frame(true, 0x1, b"SEND\ndestination:/topic/a\n\n\xff\0", true)).await.unwrap();
    client.expect_refusal("WebSocket protocol error: Invalid UTF-8 in a text message").await;
    assert_eq!((client.close_code, client.close_reason.as_deref()), (Some(1007), Some("invalid UTF-8")));

    // Refused from its header: over max-frame-size and its 64 KiB of slack.
    let mut client = node.connect(Transport::Ws, &[]).await;
    let _ = client.send_ws(Message::binary(vec![b'x'; 100 * 1024])).await;
    client.expect_refusal("WebSocket message refused").await;
    assert_eq!((client.close_code, client.close_reason.as_deref()), (Some(1009), Some("message too big")));

    // Within the slack: the STOMP codec refuses the frame itself, with the same close.
    let mut client = node.connect(Transport::Ws, &[]).await;
    let body = "x".repeat(3000);
    let _ = client.send_raw(format!("SEND\ndestination:/topic/a\n\n{body}\0").as_bytes()).await;
    client.expect_refusal("body exceeds max-body-size").await;
    assert_eq!((client.close_code, client.close_reason.as_deref()), (Some(1009), Some("message too big")));
    node.shutdown().await;
}

/// A refusal's close reason says which it was, not just "limit exceeded".
#[tokio::test]
async fn refusals_close_with_a_reason_that_says_why() {
    let keys = Keys::new();
    let node = TestNode::start(|c| keys.secure(c)).await;
    let mut client = node.open(Transport::Ws).await;
    let answer =
        client.connect_with(Command::Connect, Some("1.2"), &[("login", "ann"), ("passcode", "nope")]).await;
    assert_error(&answer, "authentication failed");
    client.expect_closed(WAIT).await;
    assert_eq!(
        (client.close_code, client.close_reason.as_deref()),
        (Some(1008), Some("authentication failed"))
    );

    let mut client = node.open(Transport::Ws).await;
    let answer = client.connect_with(Command::Connect, Some("1.2"), &[]).await;
    assert_error(&answer, "authentication required");
    client.expect_closed(WAIT).await;
    assert_eq!(
        (client.close_code, client.close_reason.as_deref()),
        (Some(1008), Some("authentication failed"))
    );

    let mut client = node.connect(Transport::Ws, &[("login", "ann"), ("passcode", "ann-pw")]).await;
    client.send_raw(b"SEND\ndestination:/topic/prices/usd\n\nx\0").await.unwrap();
    client.expect_refusal("not authorized to publish to /topic/prices/usd").await;
    assert_eq!((client.close_code, client.close_reason.as_deref()), (Some(1008), Some("permission denied")));
    node.shutdown().await;
}
