//! Slow consumers are cut without delaying anyone else: one subscriber stops reading while a
//! hundred others (half over TCP, half over WebSocket) receive every message of a publisher that
//! sends as fast as they read. The stalled subscriber also takes a large message on a topic of
//! its own after each burst, so that its backlog outgrows the kernel's socket buffers (up to
//! 4 MiB on Linux) and its outbound buffer early in the run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stampede::config::SlowConsumerPolicy;
use stampede::stomp::Command;
use stampede_testkit::prelude::*;
use tokio::net::TcpSocket;

const TOPIC: &str = "/topic/fanout";
const HEALTHY: usize = 100;
const MESSAGES: usize = 1000;
const SIZE: usize = 2048;
/// Messages published before waiting for the healthy subscribers to have them all.
const BURST: usize = 25;
/// Only the stalled subscriber listens here.
const FILLER_TOPIC: &str = "/topic/filler";
const FILLER_SIZE: usize = 512 * 1024;

fn payload(n: usize) -> String {
    format!("{n:06}{}", "x".repeat(SIZE - 6))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_subscriber_does_not_slow_a_hundred_others() {
    let node = TestNode::start(|c| {
        c.limits.outbound_buffer = 128 * 1024;
        c.limits.slow_consumer = SlowConsumerPolicy::Disconnect;
    })
    .await;

    // The stalled subscriber: a tiny receive buffer, and it never reads after subscribing.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.tcp_addr()).await.unwrap();
    let mut stalled = Client::from_tcp(stream);
    assert_eq!(stalled.connect_with(Command::Connect, Some("1.2"), &[]).await.command, Command::Connected);
    stalled.subscribe(TOPIC, "s", &[]).await;
    stalled.subscribe(FILLER_TOPIC, "f", &[]).await;
    let filler = "f".repeat(FILLER_SIZE);

    // A hundred healthy subscribers, each reading in its own task and counting.
    let mut progress = Vec::new();
    let mut readers = Vec::new();
    for i in 0..HEALTHY {
        let t = if i % 2 == 0 { Transport::Tcp } else { Transport::Ws };
        let mut client = node.connect(t, &[]).await;
        client.subscribe(TOPIC, "s", &[]).await;
        let count = Arc::new(AtomicUsize::new(0));
        progress.push(count.clone());
        readers.push(tokio::spawn(async move {
            loop {
                let message = client.recv_message().await;
                let n: usize = body(&message)[..6].parse().unwrap();
                if n == MESSAGES {
                    return (count.load(Ordering::Acquire), client);
                }
                assert_eq!(n, count.load(Ordering::Acquire), "subscriber {i}: out of order or missing");
                assert_eq!(message.body.len(), SIZE);
                count.fetch_add(1, Ordering::AcqRel);
            }
        }));
    }

    let mut publisher = node.connect(Transport::Tcp, &[]).await;
    let started = Instant::now();
    let mut slowest_burst = Duration::ZERO;
    for burst in 0..MESSAGES / BURST {
        let burst_started = Instant::now();
        for i in 0..BURST - 1 {
            publisher.send(TOPIC, &payload(burst * BURST + i), &[]).await;
        }
        publisher.publish(TOPIC, &payload(burst * BURST + BURST - 1), &[]).await;
        publisher.send(FILLER_TOPIC, &filler, &[]).await;
        let want = (burst + 1) * BURST;
        let progress = &progress;
        let all_have_it = holds_within(Duration::from_secs(10), move || async move {
            progress.iter().all(|c| c.load(Ordering::Acquire) >= want)
        })
        .await;
        assert!(all_have_it, "burst {burst}: the healthy subscribers were held back");
        slowest_burst = slowest_burst.max(burst_started.elapsed());
    }
    publisher.publish(TOPIC, &payload(MESSAGES), &[]).await;
    let mut healthy = Vec::new();
    for (i, reader) in readers.into_iter().enumerate() {
        let (received, client) = reader.await.expect("a healthy subscriber failed");
        assert_eq!(received, MESSAGES, "subscriber {i} got {received} of {MESSAGES}");
        healthy.push(client);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{HEALTHY} subscribers got {MESSAGES} messages of {SIZE} bytes each in {elapsed:?}; slowest \
         burst of {BURST}: {slowest_burst:?}"
    );

    // The stalled subscriber was cut off: what it can still read ends early, with the close.
    let dropped =
        node.metric("stampede_messages_dropped_total{reason=\"slow_consumer\"}").await.unwrap_or(0.0);
    assert!(dropped > 0.0, "slow_consumer drops counted: {dropped}");
    let frames = stalled.expect_closed(Duration::from_secs(10)).await;
    let messages = frames.iter().filter(|f| f.get("subscription") == Some("s")).count();
    assert!(messages < MESSAGES, "the stalled subscriber was not cut off ({messages} messages)");
    if let Some(last) = frames.last().filter(|f| f.command == Command::Error) {
        assert_error(last, "slow consumer");
    }
    // The hundred and the publisher are still connected; only the stalled one is gone.
    node.await_connections((HEALTHY + 1) as f64).await;
    node.shutdown().await;
}
