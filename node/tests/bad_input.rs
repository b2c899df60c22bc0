//! Bad input: each offending client gets an ERROR frame with a clear `message` and is closed, while
//! a well-behaved subscriber on the same node keeps receiving every message published meanwhile.
//! Every scenario runs over WebSocket and TCP.
//!
//! Memory engine only: refusing bad input is the node's own business (the codec and the session
//! reject it before any engine is involved), so the Redis variants of the test kit's
//! `every_engine!` would test nothing more here.

use std::time::Duration;

use stampede::config::Config;
use stampede::stomp::Command;
use stampede_testkit::prelude::*;
use tokio_tungstenite::tungstenite::Message;

both_transports!(
    malformed_header_line,
    oversize_frame,
    oversize_frame_over_several_ws_messages,
    oversize_header_line,
    too_many_headers,
    unknown_command,
    send_without_destination,
    subscribe_without_id,
    subscription_id_reused,
    frame_before_connect,
    second_connect,
    ack_of_unknown_id,
    too_many_subscriptions,
    invalid_utf8_in_header,
    huge_content_length,
    connect_timeout,
    invalid_heart_beat_header,
    body_longer_than_content_length,
    subscribe_with_a_body,
    connect_with_a_body,
);

const WITNESS_TOPIC: &str = "/topic/witness";

/// Messages the publisher sends while the offender misbehaves.
const PUBLISHED: usize = 30;

/// Starts a node with `configure`, connects a witness subscriber, and starts a publisher
/// sending `PUBLISHED` messages, 5 ms apart. Meanwhile `misbehave` runs on a fresh client
/// (connected with 1.2 when `connect`), which must get an ERROR whose `message` contains
/// `needle`, then be closed. The witness must get every message, in order.
async fn refused<F>(
    t: Transport,
    configure: impl FnOnce(&mut Config),
    connect: bool,
    needle: &str,
    misbehave: F,
) where
    F: for<'c> AsyncFnOnce(&'c mut Client),
{
    let node = TestNode::start(configure).await;
    let mut witness = node.connect(t, &[]).await;
    witness.subscribe(WITNESS_TOPIC, "w", &[]).await;
    let mut publisher = node.connect(t, &[]).await;
    let publishing = tokio::spawn(async move {
        for i in 0..PUBLISHED {
            publisher.send(WITNESS_TOPIC, &i.to_string(), &[]).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        publisher.publish(WITNESS_TOPIC, "end", &[]).await;
        publisher
    });

    let mut offender = if connect { node.connect(t, &[]).await } else { node.open(t).await };
    misbehave(&mut offender).await;
    let error = offender.expect_error().await;
    assert_error(&error, needle);
    assert!(error.body.len() > 1, "the ERROR body explains: {}", show(&error));

    let _publisher = publishing.await.expect("the publisher ran");
    let expected: Vec<String> = (0..PUBLISHED).map(|i| i.to_string()).collect();
    assert_eq!(witness.bodies_until("end").await, expected);
    let n = &node;
    assert!(
        holds_within(WAIT, move || async move { n.connections().await == 2.0 }).await,
        "the offender is gone"
    );
    node.shutdown().await;
}

async fn malformed_header_line(t: Transport) {
    refused(
        t,
        |_| {},
        true,
        "malformed header line (no ':')",
        async |c: &mut Client| {
            c.send_raw(b"SEND\ndestination:/topic/a\nno colon here\n\nx\0").await.unwrap();
        },
    )
    .await
}

fn small_frames(c: &mut Config) {
    c.limits.max_frame_size = 4096;
    c.limits.max_body_size = 4096;
}

async fn oversize_frame(t: Transport) {
    refused(t, small_frames, true, "frame exceeds max-frame-size (4096 bytes)", async |c: &mut Client| {
        let frame =
            format!("SEND\ndestination:/topic/a\nx-pad:{}\n\n{}\0", "p".repeat(200), "b".repeat(4000));
        let _ = c.send_raw(frame.as_bytes()).await;
    })
    .await
}

/// The same oversize frame, cut into WebSocket messages that are each under the limit (on TCP
/// this is the same byte stream in pieces).
async fn oversize_frame_over_several_ws_messages(t: Transport) {
    refused(t, small_frames, true, "frame exceeds max-frame-size (4096 bytes)", async |c: &mut Client| {
        let frame =
            format!("SEND\ndestination:/topic/a\nx-pad:{}\n\n{}\0", "p".repeat(200), "b".repeat(4000));
        for chunk in frame.as_bytes().chunks(1000) {
            if c.send_raw(chunk).await.is_err() {
                break;
            }
        }
    })
    .await
}

async fn oversize_header_line(t: Transport) {
    refused(
        t,
        |c| c.limits.max_header_length = 1024,
        true,
        "max-header-length",
        async |c: &mut Client| {
            let frame = format!("SEND\ndestination:/topic/a\nx-long:{}\n\nx\0", "v".repeat(2000));
            let _ = c.send_raw(frame.as_bytes()).await;
        },
    )
    .await
}

async fn too_many_headers(t: Transport) {
    refused(
        t,
        |c| c.limits.max_headers = 8,
        true,
        "too many headers (max-headers is 8)",
        async |c: &mut Client| {
            let mut frame = String::from("SEND\ndestination:/topic/a\n");
            for i in 0..10 {
                frame.push_str(&format!("x-h{i}:v\n"));
            }
            frame.push_str("\nx\0");
            let _ = c.send_raw(frame.as_bytes()).await;
        },
    )
    .await
}

async fn unknown_command(t: Transport) {
    refused(
        t,
        |_| {},
        true,
        "unknown command \"PUBLISH\"",
        async |c: &mut Client| {
            c.send_raw(b"PUBLISH\ndestination:/topic/a\n\nx\0").await.unwrap();
        },
    )
    .await
}

async fn send_without_destination(t: Transport) {
    refused(
        t,
        |_| {},
        true,
        "SEND frame lacks the required destination header",
        async |c: &mut Client| {
            c.send_raw(b"SEND\ncontent-type:text/plain\n\nx\0").await.unwrap();
        },
    )
    .await
}

async fn subscribe_without_id(t: Transport) {
    refused(
        t,
        |_| {},
        true,
        "SUBSCRIBE frame lacks the required id header",
        async |c: &mut Client| {
            c.send_raw(b"SUBSCRIBE\ndestination:/topic/a\n\n\0").await.unwrap();
        },
    )
    .await
}

async fn subscription_id_reused(t: Transport) {
    refused(
        t,
        |_| {},
        true,
        "subscription id \"dup\" is already in use",
        async |c: &mut Client| {
            c.subscribe("/topic/a", "dup", &[]).await;
            c.send_raw(b"SUBSCRIBE\ndestination:/topic/b\nid:dup\n\n\0").await.unwrap();
        },
    )
    .await
}

async fn frame_before_connect(t: Transport) {
    refused(
        t,
        |_| {},
        false,
        "expected CONNECT or STOMP as the first frame, got SEND",
        async |c: &mut Client| {
            c.send_raw(b"SEND\ndestination:/topic/a\n\nx\0").await.unwrap();
        },
    )
    .await
}

async fn second_connect(t: Transport) {
    refused(
        t,
        |_| {},
        true,
        "already connected",
        async |c: &mut Client| {
            c.send_raw(b"CONNECT\naccept-version:1.2\nhost:x\n\n\0").await.unwrap();
        },
    )
    .await
}

async fn ack_of_unknown_id(t: Transport) {
    refused(
        t,
        |_| {},
        true,
        "unknown message id \"no-such-id\"",
        async |c: &mut Client| {
            c.send_raw(b"ACK\nid:no-such-id\n\n\0").await.unwrap();
        },
    )
    .await
}

async fn too_many_subscriptions(t: Transport) {
    refused(
        t,
        |c| c.limits.max_subscriptions = 2,
        true,
        "too many subscriptions (max-subscriptions is 2)",
        async |c: &mut Client| {
            c.subscribe("/topic/a", "1", &[]).await;
            c.subscribe("/topic/b", "2", &[]).await;
            c.send_raw(b"SUBSCRIBE\ndestination:/topic/c\nid:3\n\n\0").await.unwrap();
        },
    )
    .await
}

async fn invalid_utf8_in_header(t: Transport) {
    refused(
        t,
        |_| {},
        true,
        "header is not valid UTF-8",
        async |c: &mut Client| {
            c.send_raw(b"SEND\ndestination:/topic/a\nx-bad:\xff\xfe\n\nx\0").await.unwrap();
        },
    )
    .await
}

async fn huge_content_length(t: Transport) {
    refused(
        t,
        |_| {},
        true,
        "body exceeds max-body-size",
        async |c: &mut Client| {
            c.send_raw(b"SEND\ndestination:/topic/a\ncontent-length:99999999999999999999999\n\nx\0")
                .await
                .unwrap();
        },
    )
    .await;
}

async fn connect_timeout(t: Transport) {
    let configure = |c: &mut Config| c.limits.connect_timeout = Duration::from_millis(300);
    refused(t, configure, false, "no CONNECT frame within connect-timeout", async |c: &mut Client| {
        let started = std::time::Instant::now();
        match c.recv_frame(Duration::from_secs(2)).await {
            Ok(frame) => {
                assert_eq!(frame.command, Command::Error);
                let elapsed = started.elapsed();
                assert!(
                    elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(1500),
                    "ERROR after {elapsed:?}"
                );
                // Put it back for `refused` to check: it is the only frame before the close.
                let frames = c.expect_closed(WAIT).await;
                assert!(frames.is_empty());
                c.unread(frame);
            }
            Err(e) => panic!("no ERROR within 2s: {e:?}"),
        }
    })
    .await;
}

async fn invalid_heart_beat_header(t: Transport) {
    refused(
        t,
        |_| {},
        false,
        "invalid heart-beat header",
        async |c: &mut Client| {
            c.send_raw(b"CONNECT\naccept-version:1.2\nhost:x\nheart-beat:soon,never\n\n\0").await.unwrap();
        },
    )
    .await
}

async fn body_longer_than_content_length(t: Transport) {
    refused(
        t,
        |_| {},
        true,
        "frame body not terminated by NUL",
        async |c: &mut Client| {
            c.send_raw(b"SEND\ndestination:/topic/a\ncontent-length:2\n\nabc\0").await.unwrap();
        },
    )
    .await
}

/// Past `max-connections`, TCP clients get an ERROR and WebSocket handshakes a 503.
#[tokio::test]
async fn max_connections_refuses_extra_clients() {
    let node = TestNode::start(|c| c.limits.max_connections = 2).await;
    let mut first = node.connect(Transport::Tcp, &[]).await;
    let _second = node.connect(Transport::Ws, &[]).await;
    let mut extra = node.open(Transport::Tcp).await;
    assert_error(&extra.expect_error().await, "too many connections");
    match Client::try_ws(&node.ws_url(), &["v12.stomp"]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("the handshake succeeded past max-connections"),
    }
    // A place frees up when a client leaves.
    first.disconnect().await;
    let n = &node;
    assert!(holds_within(WAIT, move || async move { n.connections().await == 1.0 }).await);
    node.connect(Transport::Tcp, &[]).await;
    node.shutdown().await;
}

/// A CONNECT that is still incomplete when the timeout hits is refused the same way.
#[tokio::test]
async fn partial_connect_times_out() {
    let node = TestNode::start(|c| c.limits.connect_timeout = Duration::from_millis(300)).await;
    for t in [Transport::Tcp, Transport::Ws] {
        let mut client = node.open(t).await;
        client.send_raw(b"CONNECT\naccept-version:1.2\n").await.unwrap();
        let error = client.expect_error().await;
        assert_error(&error, "connect-timeout");
        if t == Transport::Ws {
            assert_eq!(client.close_code, Some(1000));
        }
    }
    node.shutdown().await;
}

/// The WebSocket close code says why: 1002 for a protocol error, 1008 for a limit.
#[tokio::test]
async fn websocket_close_codes() {
    let node = TestNode::start(|c| c.limits.max_subscriptions = 1).await;
    let mut client = node.connect(Transport::Ws, &[]).await;
    client.send_ws(Message::text("BOGUS\n\n\0")).await.unwrap();
    client.expect_error().await;
    assert_eq!(client.close_code, Some(1002));

    let mut client = node.connect(Transport::Ws, &[]).await;
    client.subscribe("/topic/a", "1", &[]).await;
    client.send_ws(Message::text("SUBSCRIBE\ndestination:/topic/b\nid:2\n\n\0")).await.unwrap();
    client.expect_error().await;
    assert_eq!(client.close_code, Some(1008));
    node.shutdown().await;
}

async fn subscribe_with_a_body(t: Transport) {
    refused(
        t,
        |_| {},
        true,
        "SUBSCRIBE frames may not have a body",
        async |c: &mut Client| {
            c.send_raw(b"SUBSCRIBE\nid:0\ndestination:/topic/x\n\nnot allowed\0").await.unwrap();
        },
    )
    .await
}

async fn connect_with_a_body(t: Transport) {
    refused(
        t,
        |_| {},
        false,
        "CONNECT frames may not have a body",
        async |c: &mut Client| {
            c.send_raw(b"CONNECT\naccept-version:1.2\nhost:localhost\n\nhello\0").await.unwrap();
        },
    )
    .await
}
