//! A subscriber that stops reading is cut off once its outbound buffer fills, without holding
//! back the other subscribers.
//!
//! Memory engine only: the outbound buffer and the slow-consumer policy are one node's
//! connection mechanics; the engine only feeds the node's fan-out.

use std::time::Duration;

use stampede::config::SlowConsumerPolicy;
use stampede::stomp::Command;
use stampede_testkit::prelude::*;
use tokio::net::TcpSocket;

const TOPIC: &str = "/topic/firehose";
const MESSAGES: usize = 1600;
/// Messages published between two reads of the healthy subscriber.
const BURST: usize = 8;

/// A TCP client with a tiny receive buffer, so the server's writes block soon.
async fn stalled_client(node: &TestNode) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.tcp_addr()).await.unwrap();
    let mut client = Client::from_tcp(stream);
    client.connect(Some("1.2"), &[]).await;
    client.subscribe(TOPIC, "s", &[]).await;
    client
}

/// A subscriber that never reads, a healthy one that does, and a publisher sending `MESSAGES`
/// 4 KiB messages. Returns the node and the stalled client once all are published.
async fn firehose() -> (TestNode, Client, [Client; 2]) {
    let node = TestNode::start(|c| {
        c.limits.outbound_buffer = 64 * 1024;
        c.limits.slow_consumer = SlowConsumerPolicy::Disconnect;
    })
    .await;
    let slow = stalled_client(&node).await;

    // A healthy subscriber, reading in step with the publisher: it never holds more than one
    // burst (32 KiB), well under its outbound buffer.
    let mut healthy = node.connect(Transport::Tcp, &[]).await;
    healthy.subscribe(TOPIC, "s", &[]).await;
    let mut publisher = node.connect(Transport::Tcp, &[]).await;
    let payload = |n: usize| format!("{n:05}{}", "x".repeat(4091));
    let mut received = 0;
    for burst in 0..MESSAGES / BURST {
        for i in 1..BURST {
            publisher.send(TOPIC, &payload(burst * BURST + i), &[]).await;
        }
        publisher.publish(TOPIC, &payload(burst * BURST + BURST), &[]).await;
        for message in healthy.recv_messages(BURST).await {
            assert_eq!(message.body.len(), 4096);
            received += 1;
        }
    }
    assert_eq!(received, MESSAGES);
    healthy.assert_quiet().await;
    (node, slow, [healthy, publisher])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_tcp_consumer_is_disconnected() {
    let (node, mut slow, _others) = firehose().await;

    let dropped = node.metric("stampede_messages_dropped_total{reason=\"slow_consumer\"}").await.unwrap();
    assert!(dropped > 0.0, "slow_consumer drops counted: {dropped}");

    // The server closes the slow client: reading what is left ends in EOF, and its session
    // ends while the healthy subscriber and the publisher stay.
    let bytes = slow.read_raw_until_closed(Duration::from_secs(10)).await;
    assert!(bytes.len() < MESSAGES * 4096, "the slow client was cut off, yet got {} bytes", bytes.len());
    let n = &node;
    assert!(
        holds_within(WAIT, move || async move { n.connections().await == 2.0 }).await,
        "the session ended"
    );
    node.shutdown().await;
}

/// What the cut-off client does receive is a valid STOMP stream: whole MESSAGE frames, each
/// once and in order, then (if it fits) the ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_stream_stays_valid_until_the_cut() {
    let (node, mut slow, _others) = firehose().await;
    let frames = slow.expect_closed(Duration::from_secs(10)).await;
    let mut last = 0;
    for frame in &frames {
        if frame.command == Command::Error {
            assert_error(frame, "slow consumer");
            continue;
        }
        assert_eq!(frame.command, Command::Message, "{}", show(frame));
        let n: usize = body(frame)[..5].parse().unwrap();
        assert_eq!(n, last + 1, "MESSAGE {n} after {last}");
        last = n;
    }
    assert!(last < MESSAGES, "the slow client was cut off");
    node.shutdown().await;
}

/// With the `drop` policy the slow client keeps its connection and loses messages instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_drop_policy_keeps_the_connection() {
    let node = TestNode::start(|c| {
        c.limits.outbound_buffer = 64 * 1024;
        c.limits.slow_consumer = SlowConsumerPolicy::Drop;
    })
    .await;
    let mut slow = stalled_client(&node).await;
    let mut publisher = node.connect(Transport::Tcp, &[]).await;
    let payload = "x".repeat(4096);
    for i in 0..MESSAGES {
        publisher.send(TOPIC, &payload, &[]).await;
        if i % 100 == 99 {
            publisher.publish("/topic/sync", "", &[]).await;
        }
    }
    let dropped = node.metric("stampede_messages_dropped_total{reason=\"slow_consumer\"}").await.unwrap();
    assert!(dropped > 0.0, "slow_consumer drops counted: {dropped}");

    // Now it reads again: it gets what was not dropped.
    let mut received = 0;
    loop {
        match slow.recv_frame(Duration::from_millis(500)).await {
            Ok(frame) => {
                assert_eq!(frame.command, Command::Message, "{}", show(&frame));
                assert_eq!(frame.body.len(), 4096);
                received += 1;
            }
            Err(ClientError::Timeout { .. }) => break,
            Err(e) => panic!("the slow client lost its connection: {e:?}"),
        }
    }
    assert_eq!(received + dropped as usize, MESSAGES, "every message was delivered or counted as dropped");
    publisher.publish(TOPIC, "after", &[]).await;
    assert_eq!(body(&slow.recv_message().await), "after");
    node.shutdown().await;
}

/// A client that stops reading altogether is closed after `write-timeout` without progress,
/// whatever the slow-consumer policy (here `drop`, which alone would keep it forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_nothing_for_the_write_timeout_is_closed() {
    // An outbound buffer large enough that nothing is dropped: everything published reaches
    // the socket, whose buffers (4 MiB at most by default) it overfills.
    let node = TestNode::start(|c| {
        c.limits.outbound_buffer = 64 << 20;
        c.limits.slow_consumer = SlowConsumerPolicy::Drop;
        c.limits.write_timeout = Some(Duration::from_millis(500));
    })
    .await;
    let mut slow = stalled_client(&node).await;
    let mut publisher = node.connect(Transport::Tcp, &[]).await;
    let payload = "x".repeat(4096);
    for _ in 0..4 * MESSAGES {
        publisher.send(TOPIC, &payload, &[]).await;
    }
    publisher.publish("/topic/sync", "", &[]).await;
    let cut = holds_within(Duration::from_secs(10), || async { node.connections().await == 1.0 }).await;
    assert!(cut, "the stalled client is still connected: {} connections", node.connections().await);
    // What the kernel had buffered still arrives, then the connection ends.
    let ended = loop {
        match slow.recv_frame(Duration::from_secs(5)).await {
            Ok(frame) => assert_eq!(frame.command, Command::Message, "{}", show(&frame)),
            Err(ClientError::Timeout { .. }) => break false,
            Err(_) => break true,
        }
    };
    assert!(ended, "the stalled client's connection was closed");
    node.shutdown().await;
}

/// A topic subscriber that holds its `prefetch-count` window full without acknowledging, while
/// reading everything it is sent: the messages waiting behind the window count against its
/// outbound buffer, so it meets the slow-consumer policy as a subscriber that stops reading does,
/// and the node holds no more than the buffer for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_topic_prefetch_window_meets_the_slow_consumer_policy() {
    let node = TestNode::start(|c| {
        c.limits.outbound_buffer = 64 * 1024;
        c.limits.slow_consumer = SlowConsumerPolicy::Disconnect;
    })
    .await;
    let mut holder = node.connect(Transport::Tcp, &[]).await;
    holder.subscribe(TOPIC, "s", &[("ack", "client-individual"), ("prefetch-count", "2")]).await;
    let mut publisher = node.connect(Transport::Tcp, &[]).await;
    let payload = "x".repeat(4096);
    // One at a time, each confirmed: a holder that is not held back has every one written long
    // before the next, and its buffer never fills.
    for _ in 0..32 {
        publisher.publish(TOPIC, &payload, &[]).await;
    }
    // 32 messages of 4 KiB: two written, the rest held until they pass the 64 KiB buffer.
    let frames = holder.expect_closed(WAIT).await;
    let commands: Vec<Command> = frames.iter().map(|f| f.command).collect();
    assert_eq!(commands, [Command::Message, Command::Message, Command::Error], "{commands:?}");
    assert_error(&frames[2], "slow consumer");
    node.shutdown().await;
}
