//! Delivery semantics of topics, queues, user destinations and history topics. Every scenario
//! runs over WebSocket and TCP.

#[macro_use]
mod support;

use std::collections::HashMap;

use stampede::config::HistoryRule;
use stampede::stomp::{Command, Frame};
use support::*;

both_transports!(
    topic_broadcast_to_every_subscriber,
    topic_keeps_order_per_publisher,
    queue_competing_consumers,
    ack_auto,
    ack_client_is_cumulative,
    ack_client_individual,
    nack_redelivers,
    closed_session_redelivers_to_another_consumer,
    redelivery_after_close_keeps_order,
    redelivery_after_unsubscribe_keeps_order,
    unsubscribe_returns_unacked_messages,
    unsubscribe_stops_delivery,
    dead_letter_after_max_deliveries,
    prefetch_limits_in_flight,
    queue_keeps_messages_until_subscribe,
    queue_bound_drops_oldest,
    user_destinations,
    user_subscription_needs_login,
    unknown_destination_prefix,
    history_offsets_and_resume,
    history_resume_races_live_publishing,
    history_window_too_small,
);

async fn topic_broadcast_to_every_subscriber(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let mut sub = node.connect(t).await;
        sub.subscribe("/topic/news", "s", &[]).await;
        subscribers.push(sub);
    }
    let mut publisher = node.connect(t).await;
    for i in 0..25 {
        publisher.send("/topic/news", &i.to_string()).await;
    }
    publisher.publish("/topic/news", "end", &[]).await;
    let expected: Vec<String> = (0..25).map(|i| i.to_string()).collect();
    for sub in &mut subscribers {
        assert_eq!(sub.bodies_until("end").await, expected);
    }
    // A topic message published with nobody subscribed is gone.
    publisher.publish("/topic/empty", "lost", &[]).await;
    let mut late = node.connect(t).await;
    late.subscribe("/topic/empty", "s", &[]).await;
    late.assert_quiet().await;
    node.shutdown().await;
}

async fn topic_keeps_order_per_publisher(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut sub = node.connect(t).await;
    sub.subscribe("/topic/order", "s", &[]).await;
    let mut publishers = Vec::new();
    for p in 0..3 {
        let client = node.connect(t).await;
        publishers.push(tokio::spawn(async move {
            let mut client = client;
            for i in 0..50 {
                client.send("/topic/order", &format!("{p}:{i}")).await;
            }
            client.publish("/topic/order", "done", &[]).await;
            client
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let mut last: HashMap<String, i32> = HashMap::new();
    let mut total = 0;
    let mut done = 0;
    while done < 3 {
        let text = body(&sub.recv_message().await);
        if text == "done" {
            done += 1;
            continue;
        }
        let (p, i) = text.split_once(':').unwrap();
        let i: i32 = i.parse().unwrap();
        let previous = last.insert(p.to_owned(), i).unwrap_or(-1);
        assert_eq!(i, previous + 1, "publisher {p} out of order");
        total += 1;
    }
    assert_eq!(total, 150);
    node.shutdown().await;
}

async fn queue_competing_consumers(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut a = node.connect(t).await;
    let mut b = node.connect(t).await;
    a.subscribe("/queue/work", "s", &[]).await;
    b.subscribe("/queue/work", "s", &[]).await;
    let mut publisher = node.connect(t).await;
    for i in 0..40 {
        publisher.send("/queue/work", &i.to_string()).await;
    }
    publisher.publish("/queue/other", "sync", &[]).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let (mut from_a, mut from_b) = (0, 0);
    while from_a + from_b < 40 {
        tokio::select! {
            Ok(frame) = a.recv_frame(WAIT) => { from_a += 1; *seen.entry(body(&frame)).or_default() += 1; }
            Ok(frame) = b.recv_frame(WAIT) => { from_b += 1; *seen.entry(body(&frame)).or_default() += 1; }
            else => panic!("a consumer failed"),
        }
    }
    a.assert_quiet().await;
    b.assert_quiet().await;
    assert_eq!(seen.len(), 40, "each message once: {seen:?}");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert!(from_a > 0 && from_b > 0, "both consumers compete: a {from_a}, b {from_b}");
    assert_eq!(node.metric("stampede_queue_depth{queue=\"/queue/work\"}").await.unwrap_or(0.0), 0.0);
    node.shutdown().await;
}

async fn ack_auto(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut consumer = node.connect(t).await;
    // With one message in flight at most, the rest only flows if `auto` acknowledges.
    consumer.subscribe("/queue/auto", "s", &[("ack", "auto"), ("prefetch-count", "1")]).await;
    for i in 0..5 {
        consumer.send("/queue/auto", &i.to_string()).await;
    }
    let messages = consumer.recv_messages(5).await;
    assert_eq!(messages.iter().map(body).collect::<Vec<_>>(), ["0", "1", "2", "3", "4"]);
    assert!(messages.iter().all(|m| m.get("ack").is_none()), "auto mode needs no ack header");
    consumer.drop_connection().await;
    let mut next = node.connect(t).await;
    next.subscribe("/queue/auto", "s", &[]).await;
    next.publish("/queue/auto", "end", &[]).await;
    assert_eq!(next.bodies_until("end").await, Vec::<String>::new(), "nothing redelivered");
    node.shutdown().await;
}

async fn ack_client_is_cumulative(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut consumer = node.connect(t).await;
    consumer.subscribe("/queue/cum", "s", &[("ack", "client"), ("prefetch-count", "3")]).await;
    for i in 1..=4 {
        consumer.send("/queue/cum", &i.to_string()).await;
    }
    let first = consumer.recv_messages(3).await;
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), ["1", "2", "3"]);
    assert!(first.iter().all(|m| m.get("ack").is_some()));
    // The 4th waits for an acknowledgement.
    consumer.assert_quiet().await;
    consumer.ack(&first[2]).await;
    let fourth = consumer.recv_message().await;
    assert_eq!(body(&fourth), "4");
    consumer.drop_connection().await;
    // 1-3 were acknowledged by the ACK of 3; only 4 comes back.
    let mut next = node.connect(t).await;
    next.subscribe("/queue/cum", "s", &[]).await;
    next.publish("/queue/cum", "end", &[]).await;
    let again = next.recv_message().await;
    assert_eq!((body(&again).as_str(), again.get("redelivered")), ("4", Some("true")));
    assert_eq!(next.bodies_until("end").await, Vec::<String>::new());
    node.shutdown().await;
}

async fn ack_client_individual(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut consumer = node.connect(t).await;
    consumer.subscribe("/queue/ind", "s", &[("ack", "client-individual")]).await;
    for i in 1..=3 {
        consumer.send("/queue/ind", &i.to_string()).await;
    }
    let messages = consumer.recv_messages(3).await;
    consumer.ack(&messages[2]).await;
    consumer.drop_connection().await;
    // Only 3 was acknowledged: 1 and 2 come back, in order.
    let mut next = node.connect(t).await;
    next.subscribe("/queue/ind", "s", &[]).await;
    next.publish("/queue/ind", "end", &[]).await;
    let again = next.recv_messages(2).await;
    assert_eq!(sorted(again.iter().map(body)), ["1", "2"]);
    assert!(again.iter().all(|m| m.get("redelivered") == Some("true")));
    assert_eq!(next.bodies_until("end").await, Vec::<String>::new());
    node.shutdown().await;
}

async fn nack_redelivers(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut consumer = node.connect(t).await;
    consumer.subscribe("/queue/nack", "s", &[("ack", "client-individual"), ("prefetch-count", "1")]).await;
    consumer.publish("/queue/nack", "once more", &[("x-k", "v")]).await;
    let first = consumer.recv_message().await;
    assert_eq!(first.get("redelivered"), None);
    consumer.nack(&first).await;
    let again = consumer.recv_message().await;
    assert_eq!(body(&again), "once more");
    assert_eq!(header(&again, "x-k"), "v");
    assert_eq!(again.get("redelivered"), Some("true"));
    assert_ne!(header(&again, "message-id"), header(&first, "message-id"));
    consumer.ack(&again).await;
    consumer.assert_quiet().await;
    node.shutdown().await;
}

async fn closed_session_redelivers_to_another_consumer(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut a = node.connect(t).await;
    a.subscribe("/queue/handover", "s", &[("ack", "client")]).await;
    for i in 1..=3 {
        a.send("/queue/handover", &i.to_string()).await;
    }
    assert_eq!(a.recv_messages(3).await.iter().map(body).collect::<Vec<_>>(), ["1", "2", "3"]);
    let mut b = node.connect(t).await;
    b.subscribe("/queue/handover", "s", &[("ack", "client")]).await;
    b.assert_quiet().await;
    a.drop_connection().await;
    let again = b.recv_messages(3).await;
    assert_eq!(sorted(again.iter().map(body)), ["1", "2", "3"]);
    assert!(
        again.iter().all(|m| m.get("redelivered") == Some("true")),
        "{:?}",
        again.iter().map(show).collect::<Vec<_>>()
    );
    node.shutdown().await;
}

fn sorted(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut items: Vec<String> = items.collect();
    items.sort();
    items
}

/// Unacknowledged messages go back to the head of their queue in their original order (as
/// the engine's release promises), whether the session closes or unsubscribes.
async fn redelivery_after_close_keeps_order(t: Transport) {
    redelivery_keeps_queue_order(t, false).await
}

async fn redelivery_after_unsubscribe_keeps_order(t: Transport) {
    redelivery_keeps_queue_order(t, true).await
}

async fn redelivery_keeps_queue_order(t: Transport, unsubscribe: bool) {
    let node = TestNode::start(|_| {}).await;
    let queue = "/queue/order";
    {
        let mut a = node.connect(t).await;
        a.subscribe(queue, "s", &[("ack", "client-individual")]).await;
        for i in 1..=3 {
            a.send(queue, &i.to_string()).await;
        }
        a.publish(queue, "4", &[]).await;
        assert_eq!(a.recv_messages(4).await.iter().map(body).collect::<Vec<_>>(), ["1", "2", "3", "4"]);
        if unsubscribe {
            a.unsubscribe("s").await;
        } else {
            a.drop_connection().await;
        }
        let mut b = node.connect(t).await;
        b.subscribe(queue, "s", &[]).await;
        let again = b.recv_messages(4).await;
        assert_eq!(
            again.iter().map(body).collect::<Vec<_>>(),
            ["1", "2", "3", "4"],
            "order after {}",
            if unsubscribe { "UNSUBSCRIBE" } else { "the connection closed" }
        );
    }
    node.shutdown().await;
}

async fn unsubscribe_returns_unacked_messages(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut a = node.connect(t).await;
    a.subscribe("/queue/unsub", "s", &[("ack", "client-individual")]).await;
    a.publish("/queue/unsub", "held", &[]).await;
    a.recv_message().await;
    a.unsubscribe("s").await;
    a.subscribe("/queue/unsub", "s2", &[("ack", "client-individual")]).await;
    let again = a.recv_message().await;
    assert_eq!((body(&again).as_str(), header(&again, "subscription")), ("held", "s2"));
    assert_eq!(again.get("redelivered"), Some("true"));
    node.shutdown().await;
}

async fn unsubscribe_stops_delivery(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut client = node.connect(t).await;
    client.subscribe("/topic/u", "gone", &[]).await;
    client.subscribe("/topic/u", "kept", &[]).await;
    client.unsubscribe("gone").await;
    client.publish("/topic/u", "x", &[]).await;
    let message = client.recv_message().await;
    assert_eq!(header(&message, "subscription"), "kept");
    client.assert_quiet().await;
    // The id is free again.
    client.subscribe("/topic/u", "gone", &[]).await;
    node.shutdown().await;
}

async fn dead_letter_after_max_deliveries(t: Transport) {
    let node = TestNode::start(|c| c.queues.max_deliveries = 2).await;
    let mut consumer = node.connect(t).await;
    consumer.subscribe("/queue/poison", "s", &[("ack", "client-individual")]).await;
    consumer.publish("/queue/poison", "bad", &[("x-k", "v")]).await;
    let first = consumer.recv_message().await;
    consumer.nack(&first).await;
    let second = consumer.recv_message().await;
    assert_eq!(second.get("redelivered"), Some("true"));
    consumer.nack(&second).await;
    consumer.assert_quiet().await;
    assert_eq!(node.metric("stampede_messages_dropped_total{reason=\"dead_lettered\"}").await, Some(1.0));
    consumer.subscribe("/queue/poison.dlq", "dlq", &[]).await;
    let dead = consumer.recv_message().await;
    assert_eq!((body(&dead).as_str(), header(&dead, "x-k")), ("bad", "v"));
    assert_eq!(header(&dead, "destination"), "/queue/poison.dlq");
    node.shutdown().await;
}

async fn prefetch_limits_in_flight(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut consumer = node.connect(t).await;
    consumer.subscribe("/queue/pf", "s", &[("ack", "client-individual"), ("prefetch-count", "2")]).await;
    for i in 1..=5 {
        consumer.send("/queue/pf", &i.to_string()).await;
    }
    let first = consumer.recv_messages(2).await;
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), ["1", "2"]);
    consumer.assert_quiet().await;
    assert!(
        eventually(WAIT, || async {
            node.metric("stampede_queue_depth{queue=\"/queue/pf\"}").await == Some(3.0)
        })
        .await,
        "3 messages wait in the queue"
    );
    consumer.ack(&first[0]).await;
    assert_eq!(body(&consumer.recv_message().await), "3");
    consumer.assert_quiet().await;
    node.shutdown().await;
}

async fn queue_keeps_messages_until_subscribe(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut publisher = node.connect(t).await;
    for i in 0..5 {
        publisher.send("/queue/later", &i.to_string()).await;
    }
    publisher.publish("/queue/later", "end", &[]).await;
    assert_eq!(node.metric("stampede_queue_depth{queue=\"/queue/later\"}").await, Some(6.0));
    let mut consumer = node.connect(t).await;
    consumer.subscribe("/queue/later", "s", &[]).await;
    assert_eq!(consumer.bodies_until("end").await, ["0", "1", "2", "3", "4"]);
    node.shutdown().await;
}

async fn queue_bound_drops_oldest(t: Transport) {
    let node = TestNode::start(|c| c.queues.max_length = 3).await;
    let mut publisher = node.connect(t).await;
    for i in 1..=5 {
        publisher.publish("/queue/bounded", &i.to_string(), &[]).await;
    }
    let mut consumer = node.connect(t).await;
    consumer.subscribe("/queue/bounded", "s", &[]).await;
    assert_eq!(consumer.recv_messages(3).await.iter().map(body).collect::<Vec<_>>(), ["3", "4", "5"]);
    consumer.assert_quiet().await;
    assert_eq!(node.metric("stampede_messages_dropped_total{reason=\"queue_full\"}").await, Some(2.0));
    node.shutdown().await;
}

async fn user_destinations(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut ann1 = node.connect_as(t, "ann").await;
    let mut ann2 = node.connect_as(t, "ann").await;
    let mut bob = node.connect_as(t, "bob").await;
    for client in [&mut ann1, &mut ann2, &mut bob] {
        client.subscribe("/user/queue/inbox", "s", &[]).await;
    }
    let mut sender = node.connect(t).await;
    sender.publish("/user/ann/queue/inbox", "for ann", &[("x-from", "sender")]).await;
    sender.publish("/user/bob/queue/inbox", "for bob", &[]).await;
    for ann in [&mut ann1, &mut ann2] {
        let message = ann.recv_message().await;
        assert_eq!(body(&message), "for ann");
        assert_eq!(header(&message, "destination"), "/user/queue/inbox");
        assert_eq!(header(&message, "x-from"), "sender");
        ann.assert_quiet().await;
    }
    let message = bob.recv_message().await;
    assert_eq!(body(&message), "for bob", "bob must not get ann's message");
    assert_eq!(header(&message, "destination"), "/user/queue/inbox");
    node.shutdown().await;
}

async fn user_subscription_needs_login(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut client = node.connect(t).await;
    client
        .send_frame(
            &Frame::new(Command::Subscribe)
                .with_header("destination", "/user/queue/inbox")
                .with_header("id", "s"),
        )
        .await
        .unwrap();
    assert_error(&client.expect_error().await, "login");
    node.shutdown().await;
}

async fn unknown_destination_prefix(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut client = node.connect(t).await;
    client.send("/exchange/x", "x").await;
    assert_error(&client.expect_error().await, "/exchange/x");
    let mut client = node.connect(t).await;
    client
        .send_frame(
            &Frame::new(Command::Subscribe).with_header("destination", "/exchange/x").with_header("id", "s"),
        )
        .await
        .unwrap();
    assert_error(&client.expect_error().await, "unknown destination");
    node.shutdown().await;
}

fn history(pattern: &str, size: usize) -> HistoryRule {
    HistoryRule { pattern: pattern.to_owned(), size, ttl: None }
}

fn offsets(messages: &[Frame]) -> Vec<u64> {
    messages.iter().map(|m| header(m, "x-offset").parse().unwrap()).collect()
}

async fn history_offsets_and_resume(t: Transport) {
    let node = TestNode::start(|c| c.history = vec![history("/topic/hist.*", 100)]).await;
    let mut publisher = node.connect(t).await;
    let mut sub = node.connect(t).await;
    sub.subscribe("/topic/hist.prices", "s", &[]).await;
    for i in 1..=3 {
        publisher.publish("/topic/hist.prices", &format!("p{i}"), &[]).await;
    }
    let seen = sub.recv_messages(3).await;
    assert_eq!(offsets(&seen), [1, 2, 3]);
    sub.drop_connection().await;
    for i in 4..=6 {
        publisher.publish("/topic/hist.prices", &format!("p{i}"), &[]).await;
    }
    let mut back = node.connect(t).await;
    let receipt = back.subscribe("/topic/hist.prices", "s", &[("x-since", "3")]).await;
    assert_eq!(receipt.get("x-recovered"), Some("true"));
    publisher.publish("/topic/hist.prices", "p7", &[]).await;
    let resumed = back.recv_messages(4).await;
    assert_eq!(offsets(&resumed), [4, 5, 6, 7]);
    assert_eq!(resumed.iter().map(body).collect::<Vec<_>>(), ["p4", "p5", "p6", "p7"]);
    assert!(resumed.iter().all(|m| m.get("x-recovered").is_none()));
    back.assert_quiet().await;
    // Topics without a history rule carry no offset.
    let mut plain = node.connect(t).await;
    plain.subscribe("/topic/plain", "s", &[]).await;
    plain.publish("/topic/plain", "x", &[]).await;
    assert_eq!(plain.recv_message().await.get("x-offset"), None);
    node.shutdown().await;
}

async fn history_resume_races_live_publishing(t: Transport) {
    let node = TestNode::start(|c| c.history = vec![history("/topic/hist.*", 1000)]).await;
    let publisher = node.connect(t).await;
    let publishing = tokio::spawn(async move {
        let mut publisher = publisher;
        for i in 1..=300 {
            publisher.send("/topic/hist.race", &i.to_string()).await;
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        publisher.publish("/topic/hist.race", "301", &[]).await;
    });
    // Subscribe while messages are flowing; ask for everything from the start.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let mut sub = node.connect(t).await;
    let receipt = sub.subscribe("/topic/hist.race", "s", &[("x-since", "0")]).await;
    assert_eq!(receipt.get("x-recovered"), Some("true"));
    publishing.await.unwrap();
    let seen = sub.recv_messages(301).await;
    assert_eq!(offsets(&seen), (1..=301).collect::<Vec<u64>>(), "no gap, no duplicate");
    sub.assert_quiet().await;
    node.shutdown().await;
}

async fn history_window_too_small(t: Transport) {
    let node = TestNode::start(|c| c.history = vec![history("/topic/small.*", 3)]).await;
    let mut publisher = node.connect(t).await;
    for i in 1..=10 {
        publisher.publish("/topic/small.x", &i.to_string(), &[]).await;
    }
    let mut sub = node.connect(t).await;
    let receipt = sub.subscribe("/topic/small.x", "s", &[("x-since", "1")]).await;
    assert_eq!(receipt.get("x-recovered"), Some("false"));
    let replayed = sub.recv_messages(3).await;
    assert_eq!(offsets(&replayed), [8, 9, 10]);
    assert_eq!(replayed[0].get("x-recovered"), Some("false"));
    assert_eq!(replayed[1].get("x-recovered"), None);
    assert_eq!(replayed[2].get("x-recovered"), None);
    publisher.publish("/topic/small.x", "11", &[]).await;
    let live = sub.recv_message().await;
    assert_eq!((offsets(std::slice::from_ref(&live)), live.get("x-recovered")), (vec![11], None));
    node.shutdown().await;
}
