//! Delivery semantics of topics, queues, user destinations and history topics. Every scenario runs
//! on every engine variant (memory over WebSocket and TCP, one Redis node, three Redis nodes with
//! the clients spread over them; see `every_engine!` in the test kit). Where the engines differ by
//! design (where released queue messages go back, and what the bound does to them), the expectation
//! comes from `EngineKind`.
//!
//! An absence is checked with an end marker published after whatever must not arrive; where a
//! closed session's messages must be back in their queue before that marker, the scenario waits for
//! the session to end first (`Cluster::settle`).

use std::collections::HashMap;

use std::time::Duration;

use stampede::config::{HistoryRule, QueueLifetime, QueueRule};
use stampede::stomp::{Command, Frame};
use stampede_testkit::prelude::*;

every_engine!(
    topic_broadcast_to_every_subscriber,
    publish_right_after_the_subscribe_receipt_arrives,
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
    nothing_of_a_subscription_follows_its_unsubscribe_receipt,
    dead_letter_after_max_deliveries,
    nack_without_requeue_dead_letters,
    prefetch_limits_in_flight,
    prefetch_holds_back_topic_messages_in_client_modes,
    durable_topic_subscriptions_are_refused,
    queue_keeps_messages_until_subscribe,
    queue_bound_drops_oldest,
    queue_bound_and_released_messages,
    user_destinations,
    user_subscription_needs_login,
    unknown_destination_prefix,
    history_offsets_and_resume,
    history_resume_races_live_publishing,
    history_window_too_small,
    auto_delete_after_the_last_consumer_leaves,
    x_expires_after_idle,
    configured_queue_rule,
    per_session_queues_all_go,
    send_racing_an_expiry_is_kept_or_counted,
    queue_lifetime_headers_are_checked,
);

async fn topic_broadcast_to_every_subscriber(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut subscribers = Vec::new();
    for i in 0..3 {
        let mut sub = cluster.connect(i).await;
        sub.subscribe("/topic/news", "s", &[]).await;
        subscribers.push(sub);
    }
    let mut publisher = cluster.connect(3).await;
    for i in 0..25 {
        publisher.send("/topic/news", &i.to_string(), &[]).await;
    }
    publisher.publish("/topic/news", "end", &[]).await;
    let expected: Vec<String> = (0..25).map(|i| i.to_string()).collect();
    for sub in &mut subscribers {
        assert_eq!(sub.bodies_until("end").await, expected);
    }
    // A topic message published with nobody subscribed is gone.
    publisher.publish("/topic/empty", "lost", &[]).await;
    let mut late = cluster.connect(4).await;
    late.subscribe("/topic/empty", "s", &[]).await;
    late.assert_quiet().await;
    cluster.shutdown().await;
}

/// The RECEIPT of a SUBSCRIBE means the subscription is live: a message published the moment it
/// arrives is delivered. Each round a new client subscribes to the topic the previous round's
/// subscriber left by closing (so the node stops watching it and watches it again), and a
/// publisher (on another node, when there are three) publishes to it at once. A round that
/// misses its message costs a second; three misses end the test.
async fn publish_right_after_the_subscribe_receipt_arrives(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut publisher = cluster.connect(1).await;
    let mut missed = Vec::new();
    for round in 0..40 {
        let mut sub = cluster.connect(0).await;
        sub.subscribe("/topic/fresh", "s", &[]).await;
        publisher.publish("/topic/fresh", &round.to_string(), &[]).await;
        match sub.recv_frame(std::time::Duration::from_secs(1)).await {
            Ok(message) if body(&message) == round.to_string() => {}
            other => missed.push((round, other.map(|m| show(&m)))),
        }
        sub.drop_connection().await;
        if missed.len() == 3 {
            break;
        }
    }
    assert!(missed.is_empty(), "published right after the receipt, not delivered (round, got): {missed:?}");
    cluster.shutdown().await;
}

async fn topic_keeps_order_per_publisher(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut sub = cluster.connect(0).await;
    sub.subscribe("/topic/order", "s", &[]).await;
    let mut publishers = Vec::new();
    for p in 0..3 {
        let client = cluster.connect(p + 1).await;
        publishers.push(tokio::spawn(async move {
            let mut client = client;
            for i in 0..50 {
                client.send("/topic/order", &format!("{p}:{i}"), &[]).await;
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
    sub.assert_quiet().await;
    cluster.shutdown().await;
}

/// Two consumers (on two nodes when there are three) that each may hold 20 unacknowledged
/// messages share 40: each gets 20, none twice.
async fn queue_competing_consumers(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut a = cluster.connect(0).await;
    let mut b = cluster.connect(1).await;
    let held = [("ack", "client-individual"), ("prefetch-count", "20")];
    a.subscribe("/queue/work", "s", &held).await;
    b.subscribe("/queue/work", "s", &held).await;
    let mut publisher = cluster.connect(2).await;
    for i in 0..39 {
        publisher.send("/queue/work", &i.to_string(), &[]).await;
    }
    publisher.publish("/queue/work", "39", &[]).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    while from_a.len() + from_b.len() < 40 {
        tokio::select! {
            Ok(frame) = a.recv_frame(WAIT) => { *seen.entry(body(&frame)).or_default() += 1; from_a.push(frame); }
            Ok(frame) = b.recv_frame(WAIT) => { *seen.entry(body(&frame)).or_default() += 1; from_b.push(frame); }
            else => panic!("a consumer failed"),
        }
    }
    a.assert_quiet().await;
    b.assert_quiet().await;
    assert_eq!(seen.len(), 40, "each message once: {seen:?}");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert_eq!((from_a.len(), from_b.len()), (20, 20), "both consumers compete, up to their prefetch");
    for message in &from_a {
        a.ack(message).await;
    }
    for message in &from_b {
        b.ack(message).await;
    }
    a.assert_quiet().await;
    b.assert_quiet().await;
    assert_eq!(cluster.queue_depth("/queue/work").await, 0);
    cluster.shutdown().await;
}

async fn ack_auto(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut consumer = cluster.connect(0).await;
    // With one message in flight at most, the rest only flows if `auto` acknowledges.
    consumer.subscribe("/queue/auto", "s", &[("ack", "auto"), ("prefetch-count", "1")]).await;
    for i in 0..5 {
        consumer.send("/queue/auto", &i.to_string(), &[]).await;
    }
    let messages = consumer.recv_messages(5).await;
    assert_eq!(messages.iter().map(body).collect::<Vec<_>>(), ["0", "1", "2", "3", "4"]);
    assert!(messages.iter().all(|m| m.get("ack").is_none()), "auto mode needs no ack header");
    consumer.drop_connection().await;
    cluster.settle(0).await;
    let mut next = cluster.connect(1).await;
    next.subscribe("/queue/auto", "s", &[]).await;
    next.publish("/queue/auto", "end", &[]).await;
    assert_eq!(next.bodies_until("end").await, Vec::<String>::new(), "nothing redelivered");
    cluster.shutdown().await;
}

async fn ack_client_is_cumulative(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut consumer = cluster.connect(0).await;
    consumer.subscribe("/queue/cum", "s", &[("ack", "client"), ("prefetch-count", "3")]).await;
    for i in 1..=4 {
        consumer.send("/queue/cum", &i.to_string(), &[]).await;
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
    cluster.settle(0).await;
    // 1-3 were acknowledged by the ACK of 3; only 4 comes back.
    let mut next = cluster.connect(1).await;
    next.subscribe("/queue/cum", "s", &[]).await;
    next.publish("/queue/cum", "end", &[]).await;
    let again = next.recv_message().await;
    assert_eq!((body(&again).as_str(), again.get("redelivered")), ("4", Some("true")));
    assert_eq!(next.bodies_until("end").await, Vec::<String>::new());
    cluster.shutdown().await;
}

async fn ack_client_individual(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut consumer = cluster.connect(0).await;
    consumer.subscribe("/queue/ind", "s", &[("ack", "client-individual")]).await;
    for i in 1..=3 {
        consumer.send("/queue/ind", &i.to_string(), &[]).await;
    }
    let messages = consumer.recv_messages(3).await;
    consumer.ack(&messages[2]).await;
    consumer.drop_connection().await;
    cluster.settle(0).await;
    // Only 3 was acknowledged: 1 and 2 come back, in order.
    let mut next = cluster.connect(1).await;
    next.subscribe("/queue/ind", "s", &[]).await;
    next.publish("/queue/ind", "end", &[]).await;
    let again = next.recv_messages(2).await;
    assert_eq!(again.iter().map(body).collect::<Vec<_>>(), ["1", "2"]);
    assert!(again.iter().all(|m| m.get("redelivered") == Some("true")));
    assert_eq!(next.bodies_until("end").await, Vec::<String>::new());
    cluster.shutdown().await;
}

/// A NACKed message comes again, flagged, with its headers and a new message-id; where it goes
/// relative to a message waiting behind it is the engine's (`EngineKind::order_after_release`).
async fn nack_redelivers(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut consumer = cluster.connect(0).await;
    consumer.subscribe("/queue/nack", "s", &[("ack", "client-individual"), ("prefetch-count", "1")]).await;
    let mut publisher = cluster.connect(1).await;
    publisher.publish("/queue/nack", "once more", &[("x-k", "v")]).await;
    publisher.publish("/queue/nack", "next", &[]).await;
    let first = consumer.recv_message().await;
    assert_eq!((body(&first).as_str(), first.get("redelivered")), ("once more", None));
    consumer.nack(&first).await;
    for expected in cluster.engine().order_after_release(&["once more"], &["next"]) {
        let message = consumer.recv_message().await;
        assert_eq!(body(&message), expected, "{:?}", cluster.engine());
        if expected == "once more" {
            assert_eq!(header(&message, "x-k"), "v");
            assert_eq!(message.get("redelivered"), Some("true"));
            assert_ne!(header(&message, "message-id"), header(&first, "message-id"));
        } else {
            assert_eq!(message.get("redelivered"), None);
        }
        consumer.ack(&message).await;
    }
    consumer.assert_quiet().await;
    cluster.shutdown().await;
}

async fn closed_session_redelivers_to_another_consumer(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut a = cluster.connect(0).await;
    a.subscribe("/queue/handover", "s", &[("ack", "client")]).await;
    for i in 1..=3 {
        a.send("/queue/handover", &i.to_string(), &[]).await;
    }
    assert_eq!(a.recv_messages(3).await.iter().map(body).collect::<Vec<_>>(), ["1", "2", "3"]);
    let mut b = cluster.connect(1).await;
    b.subscribe("/queue/handover", "s", &[("ack", "client")]).await;
    b.assert_quiet().await;
    a.drop_connection().await;
    let again = b.recv_messages(3).await;
    assert_eq!(again.iter().map(body).collect::<Vec<_>>(), ["1", "2", "3"]);
    assert!(
        again.iter().all(|m| m.get("redelivered") == Some("true")),
        "{:?}",
        again.iter().map(show).collect::<Vec<_>>()
    );
    b.assert_quiet().await;
    cluster.shutdown().await;
}

/// Unacknowledged messages go back to their queue in their original order, whether the session
/// closes or unsubscribes; where they go relative to the messages still waiting is the engine's
/// (`EngineKind::order_after_release`).
async fn redelivery_after_close_keeps_order(v: Variant) {
    redelivery_keeps_queue_order(v, false).await
}

async fn redelivery_after_unsubscribe_keeps_order(v: Variant) {
    redelivery_keeps_queue_order(v, true).await
}

async fn redelivery_keeps_queue_order(v: Variant, unsubscribe: bool) {
    let cluster = Cluster::start(v, |_| {}).await;
    let queue = "/queue/order";
    let mut a = cluster.connect(0).await;
    a.subscribe(queue, "s", &[("ack", "client-individual"), ("prefetch-count", "4")]).await;
    for i in 1..=5 {
        a.send(queue, &i.to_string(), &[]).await;
    }
    a.publish(queue, "6", &[]).await;
    assert_eq!(a.recv_messages(4).await.iter().map(body).collect::<Vec<_>>(), ["1", "2", "3", "4"]);
    a.assert_quiet().await;
    if unsubscribe {
        a.unsubscribe("s").await;
    } else {
        a.drop_connection().await;
        cluster.settle(0).await;
    }
    let mut b = cluster.connect(1).await;
    b.subscribe(queue, "s", &[]).await;
    let again = b.recv_messages(6).await;
    let expected = cluster.engine().order_after_release(&["1", "2", "3", "4"], &["5", "6"]);
    assert_eq!(
        again.iter().map(body).collect::<Vec<_>>(),
        expected,
        "order after {} on {:?}",
        if unsubscribe { "UNSUBSCRIBE" } else { "the connection closed" },
        cluster.engine()
    );
    for message in &again {
        let released = ["1", "2", "3", "4"].contains(&body(message).as_str());
        assert_eq!(message.get("redelivered"), released.then_some("true"), "{}", show(message));
    }
    b.assert_quiet().await;
    cluster.shutdown().await;
}

async fn unsubscribe_returns_unacked_messages(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut a = cluster.connect(0).await;
    a.subscribe("/queue/unsub", "s", &[("ack", "client-individual")]).await;
    let mut publisher = cluster.connect(1).await;
    publisher.publish("/queue/unsub", "held", &[]).await;
    a.recv_message().await;
    a.unsubscribe("s").await;
    a.subscribe("/queue/unsub", "s2", &[("ack", "client-individual")]).await;
    let again = a.recv_message().await;
    assert_eq!((body(&again).as_str(), header(&again, "subscription")), ("held", "s2"));
    assert_eq!(again.get("redelivered"), Some("true"));
    cluster.shutdown().await;
}

async fn unsubscribe_stops_delivery(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut client = cluster.connect(0).await;
    let mut publisher = cluster.connect(1).await;
    client.subscribe("/topic/u", "gone", &[]).await;
    client.subscribe("/topic/u", "kept", &[]).await;
    client.unsubscribe("gone").await;
    publisher.publish("/topic/u", "x", &[]).await;
    let message = client.recv_message().await;
    assert_eq!(header(&message, "subscription"), "kept");
    client.assert_quiet().await;
    // The id is free again, and the last UNSUBSCRIBE stops the destination.
    client.subscribe("/topic/u", "gone", &[]).await;
    client.unsubscribe("gone").await;
    client.unsubscribe("kept").await;
    client.subscribe("/topic/marker", "m", &[]).await;
    publisher.publish("/topic/u", "not for anyone", &[]).await;
    publisher.publish("/topic/marker", "end", &[]).await;
    assert_eq!(client.bodies_until("end").await, Vec::<String>::new());
    cluster.shutdown().await;
}

/// Unsubscribing while messages stream in: whatever was already on its way for the
/// subscription arrives before the RECEIPT, nothing after it.
async fn nothing_of_a_subscription_follows_its_unsubscribe_receipt(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut client = cluster.connect(0).await;
    client.subscribe("/topic/stream", "a", &[]).await;
    client.subscribe("/topic/marker", "m", &[]).await;
    let mut publisher = cluster.connect(1).await;
    for i in 0..2000 {
        publisher.send("/topic/stream", &i.to_string(), &[]).await;
    }
    assert_eq!(header(&client.recv_message().await, "subscription"), "a");
    let unsubscribe = Frame::new(Command::Unsubscribe).with_header("id", "a").with_header("receipt", "gone");
    client.send_frame(&unsubscribe).await.expect("send UNSUBSCRIBE");
    let mut before = 0;
    loop {
        let frame = client.recv_frame(WAIT).await.expect("the RECEIPT");
        match frame.command {
            Command::Receipt => break,
            Command::Message => before += 1,
            _ => panic!("unexpected {frame:?}"),
        }
    }
    publisher.publish("/topic/marker", "end", &[]).await;
    loop {
        let message = client.recv_message().await;
        assert_eq!(header(&message, "subscription"), "m", "a MESSAGE of 'a' after its RECEIPT");
        if message.body == "end".as_bytes() {
            break;
        }
    }
    assert!(before < 2000, "unsubscribed mid-stream ({before} arrived before the RECEIPT)");
    cluster.shutdown().await;
}

async fn dead_letter_after_max_deliveries(v: Variant) {
    let cluster = Cluster::start(v, |c| c.queues.max_deliveries = 2).await;
    let mut consumer = cluster.connect(0).await;
    consumer.subscribe("/queue/poison", "s", &[("ack", "client-individual")]).await;
    let mut publisher = cluster.connect(1).await;
    publisher.publish("/queue/poison", "bad", &[("x-k", "v")]).await;
    let first = consumer.recv_message().await;
    consumer.nack(&first).await;
    let second = consumer.recv_message().await;
    assert_eq!(second.get("redelivered"), Some("true"));
    consumer.nack(&second).await;
    consumer.assert_quiet().await;
    assert_eq!(cluster.metric("stampede_messages_dropped_total{reason=\"dead_lettered\"}").await, 1.0);
    let mut dlq = cluster.connect(2).await;
    dlq.subscribe("/queue/poison.dlq", "dlq", &[]).await;
    let dead = dlq.recv_message().await;
    assert_eq!((body(&dead).as_str(), header(&dead, "x-k")), ("bad", "v"));
    assert_eq!(header(&dead, "destination"), "/queue/poison.dlq");
    dlq.assert_quiet().await;
    cluster.shutdown().await;
}

/// RabbitMQ's `requeue:false` on NACK: the message goes to `<queue>.dlq` at once (no
/// `queue-max-deliveries` set), and is not delivered again; a NACK without it redelivers.
async fn nack_without_requeue_dead_letters(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut consumer = cluster.connect(0).await;
    consumer.subscribe("/queue/rq", "s", &[("ack", "client-individual"), ("prefetch-count", "1")]).await;
    let mut publisher = cluster.connect(1).await;
    publisher.publish("/queue/rq", "poison", &[("x-k", "v")]).await;
    publisher.publish("/queue/rq", "again", &[]).await;
    let poison = consumer.recv_message().await;
    assert_eq!(body(&poison), "poison");
    consumer.request(nack_frame(&poison).with_header("requeue", "false")).await;
    let again = consumer.recv_message().await;
    assert_eq!(body(&again), "again");
    consumer.request(nack_frame(&again).with_header("requeue", "true")).await;
    let redelivered = consumer.recv_message().await;
    assert_eq!((body(&redelivered).as_str(), redelivered.get("redelivered")), ("again", Some("true")));
    consumer.ack(&redelivered).await;
    consumer.assert_quiet().await;
    assert_eq!(cluster.metric("stampede_messages_dropped_total{reason=\"dead_lettered\"}").await, 1.0);
    let mut dlq = cluster.connect(2).await;
    dlq.subscribe("/queue/rq.dlq", "dlq", &[]).await;
    let dead = dlq.recv_message().await;
    assert_eq!((body(&dead).as_str(), header(&dead, "x-k")), ("poison", "v"));
    assert_eq!(header(&dead, "destination"), "/queue/rq.dlq");
    dlq.assert_quiet().await;
    // Anything but true or false is refused.
    let refused = consumer.request_refused(nack_frame(&redelivered).with_header("requeue", "no")).await;
    assert_error(&refused, "requeue must be true or false");
    cluster.shutdown().await;
}

/// `prefetch-count` on a topic subscription in a client mode: at most that many messages
/// unacknowledged; the next wait (in order) until an ACK or NACK makes room. Without the header
/// a topic subscription is not held back, as before.
async fn prefetch_holds_back_topic_messages_in_client_modes(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut windowed = cluster.connect(0).await;
    windowed.subscribe("/topic/pf", "w", &[("ack", "client-individual"), ("prefetch-count", "2")]).await;
    let mut cumulative = cluster.connect(1).await;
    cumulative.subscribe("/topic/pf", "c", &[("ack", "client"), ("prefetch-count", "2")]).await;
    let mut free = cluster.connect(2).await;
    free.subscribe("/topic/pf", "f", &[("ack", "client")]).await;
    let mut publisher = cluster.connect(3).await;
    for i in 1..=5 {
        publisher.publish("/topic/pf", &i.to_string(), &[]).await;
    }
    let free_bodies: Vec<String> = free.recv_messages(5).await.iter().map(body).collect();
    assert_eq!(free_bodies, ["1", "2", "3", "4", "5"]);

    let first = windowed.recv_messages(2).await;
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), ["1", "2"]);
    windowed.assert_quiet().await;
    windowed.ack(&first[1]).await;
    assert_eq!(body(&windowed.recv_message().await), "3");
    windowed.assert_quiet().await;
    // A NACK makes room too; topic messages are not redelivered.
    windowed.nack(&first[0]).await;
    assert_eq!(body(&windowed.recv_message().await), "4");
    windowed.assert_quiet().await;

    // In client mode an ACK covers every earlier message of the subscription.
    let held = cumulative.recv_messages(2).await;
    assert_eq!(held.iter().map(body).collect::<Vec<_>>(), ["1", "2"]);
    cumulative.assert_quiet().await;
    cumulative.ack(&held[1]).await;
    let rest: Vec<String> = cumulative.recv_messages(2).await.iter().map(body).collect();
    assert_eq!(rest, ["3", "4"]);
    cumulative.assert_quiet().await;
    cluster.shutdown().await;
}

/// RabbitMQ's durable topic subscriptions are refused with an ERROR that names what to use
/// instead; on a queue the headers are harmless (queues keep their messages anyway).
async fn durable_topic_subscriptions_are_refused(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    for (i, header_name) in ["durable", "persistent"].into_iter().enumerate() {
        let mut client = cluster.connect(i).await;
        client.subscribe("/queue/kept", "q", &[(header_name, "true")]).await;
        client.subscribe("/topic/live", "t0", &[(header_name, "false")]).await;
        let refused = client
            .request_refused(
                subscribe_frame("/topic/live", "t")
                    .with_header(header_name, "true")
                    .with_header("ack", "client"),
            )
            .await;
        assert_error(&refused, &format!("{header_name}:true: durable topic subscriptions are not supported"));
        assert_error(&refused, "x-since");
        assert_error(&refused, "/queue/");
        client.expect_closed(WAIT).await;
    }
    cluster.shutdown().await;
}

async fn prefetch_limits_in_flight(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut consumer = cluster.connect(0).await;
    consumer.subscribe("/queue/pf", "s", &[("ack", "client-individual"), ("prefetch-count", "2")]).await;
    let mut publisher = cluster.connect(1).await;
    for i in 1..=4 {
        publisher.send("/queue/pf", &i.to_string(), &[]).await;
    }
    publisher.publish("/queue/pf", "5", &[]).await;
    let first = consumer.recv_messages(2).await;
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), ["1", "2"]);
    consumer.assert_quiet().await;
    let c = &cluster;
    assert!(
        holds_within(WAIT, || async { c.queue_depth("/queue/pf").await == 3 }).await,
        "3 messages wait in the queue, not {}",
        c.queue_depth("/queue/pf").await
    );
    consumer.ack(&first[0]).await;
    assert_eq!(body(&consumer.recv_message().await), "3");
    consumer.assert_quiet().await;
    cluster.shutdown().await;
}

async fn queue_keeps_messages_until_subscribe(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut publisher = cluster.connect(0).await;
    for i in 0..5 {
        publisher.send("/queue/later", &i.to_string(), &[]).await;
    }
    publisher.publish("/queue/later", "end", &[]).await;
    assert_eq!(cluster.queue_depth("/queue/later").await, 6);
    let mut consumer = cluster.connect(1).await;
    consumer.subscribe("/queue/later", "s", &[]).await;
    assert_eq!(consumer.bodies_until("end").await, ["0", "1", "2", "3", "4"]);
    cluster.shutdown().await;
}

async fn queue_bound_drops_oldest(v: Variant) {
    let cluster = Cluster::start(v, |c| c.queues.max_length = 3).await;
    let mut publisher = cluster.connect(0).await;
    for i in 1..=5 {
        publisher.publish("/queue/bounded", &i.to_string(), &[]).await;
    }
    assert_eq!(cluster.queue_depth("/queue/bounded").await, 3);
    let mut consumer = cluster.connect(1).await;
    consumer.subscribe("/queue/bounded", "s", &[]).await;
    assert_eq!(consumer.recv_messages(3).await.iter().map(body).collect::<Vec<_>>(), ["3", "4", "5"]);
    consumer.assert_quiet().await;
    assert_eq!(cluster.metric("stampede_messages_dropped_total{reason=\"queue_full\"}").await, 2.0);
    cluster.shutdown().await;
}

/// Messages in flight do not count towards the bound on either engine; what happens when they
/// come back to a full queue is the engine's (`EngineKind::bounded_after_release`).
async fn queue_bound_and_released_messages(v: Variant) {
    let cluster = Cluster::start(v, |c| c.queues.max_length = 3).await;
    let queue = "/queue/full";
    let mut holder = cluster.connect(0).await;
    holder.subscribe(queue, "s", &[("ack", "client-individual"), ("prefetch-count", "2")]).await;
    let mut publisher = cluster.connect(1).await;
    // 1 and 2 are in flight before the others arrive (the queue's dispatcher runs on its own
    // task: with all five sent at once it may find the queue full of 3, 4 and 5 already).
    for i in 1..=2 {
        publisher.publish(queue, &i.to_string(), &[]).await;
    }
    assert_eq!(holder.recv_messages(2).await.iter().map(body).collect::<Vec<_>>(), ["1", "2"]);
    for i in 3..=5 {
        publisher.publish(queue, &i.to_string(), &[]).await;
    }
    holder.assert_quiet().await;
    assert_eq!(cluster.queue_depth(queue).await, 3, "3, 4 and 5 wait");
    assert_eq!(cluster.metric("stampede_messages_dropped_total{reason=\"queue_full\"}").await, 0.0);

    holder.drop_connection().await;
    cluster.settle(1).await;
    let (expected, dropped) = cluster.engine().bounded_after_release(&["1", "2"], &["3", "4", "5"], 3);
    assert_eq!(
        cluster.metric("stampede_messages_dropped_total{reason=\"queue_full\"}").await,
        dropped as f64,
        "{:?}",
        cluster.engine()
    );
    assert_eq!(cluster.queue_depth(queue).await, expected.len() as u64, "{:?}", cluster.engine());
    let mut consumer = cluster.connect(2).await;
    consumer.subscribe(queue, "s", &[]).await;
    let mut seen = Vec::new();
    for message in consumer.recv_messages(expected.len()).await {
        let released = ["1", "2"].contains(&body(&message).as_str());
        assert_eq!(message.get("redelivered"), released.then_some("true"), "{}", show(&message));
        seen.push(body(&message));
    }
    assert_eq!(seen, expected, "{:?}", cluster.engine());
    // Published only now: appended to a full queue it would push the oldest out.
    publisher.publish(queue, "end", &[]).await;
    assert_eq!(consumer.bodies_until("end").await, Vec::<String>::new());
    cluster.shutdown().await;
}

async fn user_destinations(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut ann1 = cluster.connect_as(0, "ann").await;
    let mut ann2 = cluster.connect_as(1, "ann").await;
    let mut bob = cluster.connect_as(2, "bob").await;
    for client in [&mut ann1, &mut ann2, &mut bob] {
        client.subscribe("/user/queue/inbox", "s", &[]).await;
    }
    let mut sender = cluster.connect(3).await;
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
    bob.assert_quiet().await;
    cluster.shutdown().await;
}

async fn user_subscription_needs_login(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut client = cluster.connect(0).await;
    client
        .send_frame(
            &Frame::new(Command::Subscribe)
                .with_header("destination", "/user/queue/inbox")
                .with_header("id", "s"),
        )
        .await
        .unwrap();
    assert_error(&client.expect_error().await, "login");
    cluster.shutdown().await;
}

async fn unknown_destination_prefix(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut client = cluster.connect(0).await;
    client.send("/exchange/x", "x", &[]).await;
    assert_error(&client.expect_error().await, "/exchange/x");
    let mut client = cluster.connect(1).await;
    client
        .send_frame(
            &Frame::new(Command::Subscribe).with_header("destination", "/exchange/x").with_header("id", "s"),
        )
        .await
        .unwrap();
    assert_error(&client.expect_error().await, "unknown destination");
    cluster.shutdown().await;
}

fn history(pattern: &str, size: usize) -> HistoryRule {
    HistoryRule { pattern: pattern.to_owned(), size, ttl: None }
}

fn offsets(messages: &[Frame]) -> Vec<u64> {
    messages.iter().map(|m| header(m, "x-offset").parse().unwrap()).collect()
}

async fn history_offsets_and_resume(v: Variant) {
    let cluster = Cluster::start(v, |c| c.history = vec![history("/topic/hist.*", 100)]).await;
    let mut publisher = cluster.connect(0).await;
    let mut sub = cluster.connect(1).await;
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
    let mut back = cluster.connect(2).await;
    let receipt = back.subscribe("/topic/hist.prices", "s", &[("x-since", "3")]).await;
    assert_eq!(receipt.get("x-recovered"), Some("true"));
    publisher.publish("/topic/hist.prices", "p7", &[]).await;
    let resumed = back.recv_messages(4).await;
    assert_eq!(offsets(&resumed), [4, 5, 6, 7]);
    assert_eq!(resumed.iter().map(body).collect::<Vec<_>>(), ["p4", "p5", "p6", "p7"]);
    assert!(resumed.iter().all(|m| m.get("x-recovered").is_none()));
    back.assert_quiet().await;
    // Topics without a history rule carry no offset.
    let mut plain = cluster.connect(3).await;
    plain.subscribe("/topic/plain", "s", &[]).await;
    publisher.publish("/topic/plain", "x", &[]).await;
    assert_eq!(plain.recv_message().await.get("x-offset"), None);
    cluster.shutdown().await;
}

async fn history_resume_races_live_publishing(v: Variant) {
    let cluster = Cluster::start(v, |c| c.history = vec![history("/topic/hist.*", 1000)]).await;
    let publisher = cluster.connect(0).await;
    let publishing = tokio::spawn(async move {
        let mut publisher = publisher;
        for i in 1..=300 {
            publisher.send("/topic/hist.race", &i.to_string(), &[]).await;
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        publisher.publish("/topic/hist.race", "301", &[]).await;
    });
    // Subscribe while messages are flowing; ask for everything from the start.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let mut sub = cluster.connect(1).await;
    let receipt = sub.subscribe("/topic/hist.race", "s", &[("x-since", "0")]).await;
    assert_eq!(receipt.get("x-recovered"), Some("true"));
    publishing.await.unwrap();
    let seen = sub.recv_messages(301).await;
    assert_eq!(offsets(&seen), (1..=301).collect::<Vec<u64>>(), "no gap, no duplicate");
    sub.assert_quiet().await;
    cluster.shutdown().await;
}

async fn history_window_too_small(v: Variant) {
    let cluster = Cluster::start(v, |c| c.history = vec![history("/topic/small.*", 3)]).await;
    let mut publisher = cluster.connect(0).await;
    for i in 1..=10 {
        publisher.publish("/topic/small.x", &i.to_string(), &[]).await;
    }
    let mut sub = cluster.connect(1).await;
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
    sub.assert_quiet().await;
    cluster.shutdown().await;
}

// === queue lifetimes ===

/// The messages dropped with deleted queues, over all nodes.
const QUEUE_DELETED: &str = "stampede_messages_dropped_total{reason=\"queue_deleted\"}";

/// Redis variants: the cluster's keys matching `pattern` after its prefix (`*` wildcards), and
/// the members of its `queues` set and `lifetimes` sorted set that match it too; memory: none.
async fn redis_traces(cluster: &Cluster, pattern: &str) -> Vec<String> {
    let Some(prefix) = cluster.redis_prefix() else { return Vec::new() };
    let strings = |reply: Resp| match reply {
        Resp::Array(Some(items)) => items
            .into_iter()
            .filter_map(|item| match item {
                Resp::Bulk(Some(bytes)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                _ => None,
            })
            .collect::<Vec<_>>(),
        other => panic!("unexpected reply {other:?}"),
    };
    let redis = redis().await;
    // `{` starts a hash tag in the key but is no glob character: it matches itself.
    let mut found = strings(redis.call(&["KEYS", &format!("{prefix}:{{{pattern}}}:*")]).await);
    let matches = |name: &String| glob(pattern, name);
    found.extend(
        strings(redis.call(&["SMEMBERS", &format!("{prefix}:queues")]).await).into_iter().filter(matches),
    );
    found.extend(
        strings(redis.call(&["ZRANGE", &format!("{prefix}:lifetimes"), "0", "-1"]).await)
            .into_iter()
            .filter(matches),
    );
    found.sort();
    found
}

/// `*` matches any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            name.starts_with(head)
                && (0..=name.len() - head.len()).any(|i| glob(rest, &name[head.len() + i..]))
        }
    }
}

/// Depth series of queues matching `pattern` on any node's `/metrics`.
async fn depth_series(cluster: &Cluster, nodes: usize, pattern: &str) -> Vec<String> {
    let mut series = Vec::new();
    for i in 0..nodes {
        for line in cluster.node(i).metrics().await.lines() {
            if let Some(rest) = line.strip_prefix("stampede_queue_depth{queue=\"") {
                let queue = rest.split('"').next().unwrap_or_default();
                if glob(pattern, queue) {
                    series.push(line.to_owned());
                }
            }
        }
    }
    series
}

/// `auto-delete:true`: the queue lives while anyone on any node consumes it, and goes with its
/// messages when the last consumer leaves; a new SUBSCRIBE then finds it empty.
async fn auto_delete_after_the_last_consumer_leaves(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let queue = "/queue/ad";
    let held = [("auto-delete", "true"), ("ack", "client-individual"), ("prefetch-count", "1")];
    let mut a = cluster.connect(0).await;
    let mut b = cluster.connect(1).await;
    a.subscribe(queue, "s", &held).await;
    b.subscribe(queue, "s", &held).await;
    let mut publisher = cluster.connect(2).await;
    for i in 1..=4 {
        publisher.publish(queue, &i.to_string(), &[]).await;
    }
    let (_held_by_a, first_b) = (a.recv_message().await, b.recv_message().await);
    // One consumer leaving keeps the queue: the other still gets what waits.
    a.unsubscribe("s").await;
    b.ack(&first_b).await;
    let next = b.recv_message().await;
    assert!(["1", "2", "3", "4"].contains(&body(&next).as_str()), "{}", show(&next));
    assert!(cluster.queue_depth(queue).await > 0, "messages wait for b");
    // The last one leaving deletes it, with what was still in it.
    b.disconnect().await;
    eventually_eq(WAIT, "the queue's depth once deleted", 0, || cluster.queue_depth(queue)).await;
    eventually_eq(WAIT, "Redis keys of the deleted queue", Vec::<String>::new(), || {
        redis_traces(&cluster, queue)
    })
    .await;
    eventually(WAIT, "its messages counted as dropped", || async {
        cluster.metric(QUEUE_DELETED).await >= 2.0
    })
    .await;
    let mut later = cluster.connect(3).await;
    later.subscribe(queue, "s", &[]).await;
    publisher.publish(queue, "end", &[]).await;
    assert_eq!(later.bodies_until("end").await, Vec::<String>::new(), "a new SUBSCRIBE sees an empty queue");
    a.disconnect().await;
    cluster.shutdown().await;
}

/// `x-expires`: a queue is deleted once unused (no consumer, no SEND, no SUBSCRIBE) for that
/// long, and not before while SENDs keep coming.
async fn x_expires_after_idle(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let queue = "/queue/xe";
    let mut consumer = cluster.connect(0).await;
    consumer.subscribe(queue, "s", &[("x-expires", "1000")]).await;
    consumer.unsubscribe("s").await;
    let mut publisher = cluster.connect(1).await;
    // Used every 300 ms for 2.4 s: more than twice its expiry, and kept throughout.
    for i in 1..=8 {
        publisher.publish(queue, &i.to_string(), &[]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(cluster.queue_depth(queue).await, 8, "not expired while used");
    let quiet_since = std::time::Instant::now() - Duration::from_millis(300);
    eventually_eq(WAIT, "the depth of the expired queue", 0, || cluster.queue_depth(queue)).await;
    let idle = quiet_since.elapsed();
    assert!(idle >= Duration::from_millis(900), "expired after {idle:?} unused, before its 1 s");
    eventually_eq(WAIT, "Redis keys of the expired queue", Vec::<String>::new(), || {
        redis_traces(&cluster, queue)
    })
    .await;
    assert_eq!(cluster.metric(QUEUE_DELETED).await, 8.0);
    consumer.subscribe(queue, "s", &[]).await;
    publisher.publish(queue, "end", &[]).await;
    assert_eq!(consumer.bodies_until("end").await, Vec::<String>::new());
    cluster.shutdown().await;
}

/// A `[[queue]]` rule gives the queues it matches their lifetime without any header; others keep
/// theirs forever.
async fn configured_queue_rule(v: Variant) {
    let cluster = Cluster::start(v, |c| {
        let lifetime = QueueLifetime { expires: Some(Duration::from_secs(1)), auto_delete: true };
        c.queue_rules = vec![QueueRule { pattern: "/queue/*-user*".into(), lifetime }];
    })
    .await;
    let mut consumer = cluster.connect(0).await;
    consumer.subscribe("/queue/reply-userab12", "s", &[("ack", "client"), ("prefetch-count", "1")]).await;
    let mut publisher = cluster.connect(1).await;
    for queue in ["/queue/reply-userab12", "/queue/reply-usercd34", "/queue/kept"] {
        publisher.publish(queue, "1", &[]).await;
        publisher.publish(queue, "2", &[]).await;
    }
    consumer.recv_message().await;
    // auto-delete: the consumer leaves with a message unacknowledged and one waiting.
    consumer.disconnect().await;
    // expires: never consumed, unused for 1 s.
    eventually_eq(WAIT, "queues left", (0, 0), || async {
        (
            cluster.queue_depth("/queue/reply-userab12").await,
            cluster.queue_depth("/queue/reply-usercd34").await,
        )
    })
    .await;
    eventually_eq(WAIT, "Redis keys of the rule's queues", Vec::<String>::new(), || {
        redis_traces(&cluster, "/queue/*-user*")
    })
    .await;
    assert_eq!(cluster.metric(QUEUE_DELETED).await, 4.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(cluster.queue_depth("/queue/kept").await, 2, "no rule matches: kept");
    cluster.shutdown().await;
}

/// Spring's relay makes one queue per browser session: with a rule, 200 of them leave nothing
/// behind, neither their messages nor Redis keys nor metrics series. Half are consumed
/// (auto-deleted when their session goes), half only sent to (expired).
async fn per_session_queues_all_go(v: Variant) {
    let cluster = Cluster::start(v, |c| {
        let lifetime = QueueLifetime { expires: Some(Duration::from_secs(1)), auto_delete: true };
        c.queue_rules = vec![QueueRule { pattern: "/queue/*-user*".into(), lifetime }];
    })
    .await;
    let nodes = v.nodes;
    let mut sessions = Vec::new();
    for s in 0..10 {
        let mut client = cluster.connect(s).await;
        for q in 0..10 {
            client.subscribe(&format!("/queue/updates-user{s}x{q}"), &q.to_string(), &[]).await;
        }
        sessions.push(client);
    }
    let mut publisher = cluster.connect(0).await;
    for s in 0..10 {
        for q in 0..10 {
            publisher.send(&format!("/queue/updates-user{s}x{q}"), "to a session", &[]).await;
            publisher.send(&format!("/queue/gone-user{s}x{q}"), "to nobody", &[]).await;
        }
    }
    publisher.publish("/queue/updates-user0x0", "last", &[]).await;
    for (s, client) in sessions.iter_mut().enumerate() {
        assert_eq!(client.recv_messages(10 + usize::from(s == 0)).await.len(), 10 + usize::from(s == 0));
    }
    for client in sessions {
        client.drop_connection().await;
    }
    eventually_eq(WAIT * 2, "Redis keys of per-session queues", Vec::<String>::new(), || {
        redis_traces(&cluster, "/queue/*-user*")
    })
    .await;
    eventually_eq(WAIT * 3, "depth series of per-session queues", Vec::<String>::new(), || {
        depth_series(&cluster, nodes, "/queue/*-user*")
    })
    .await;
    assert_eq!(cluster.metric(QUEUE_DELETED).await, 100.0, "the messages nobody consumed");
    cluster.shutdown().await;
}

/// A SEND racing an expiry is never lost silently: it either reaches the queue before the
/// deletion (and counts as use) or creates it again after; a message is only ever lost with a
/// queue left unused past its expiry, and then it is counted as dropped. Every message is
/// delivered or counted, none twice.
async fn send_racing_an_expiry_is_kept_or_counted(v: Variant) {
    let cluster = Cluster::start(v, |c| {
        let lifetime = QueueLifetime { expires: Some(Duration::from_millis(300)), auto_delete: false };
        c.queue_rules = vec![QueueRule { pattern: "/queue/race".into(), lifetime }];
    })
    .await;
    let queue = "/queue/race";
    let mut publishers = [cluster.connect(0).await, cluster.connect(1).await];
    // First one certain deletion, then SENDs spaced around the expiry (and the sweep), from two
    // nodes, so some land just before a deletion and some just after.
    publishers[0].publish(queue, "0", &[]).await;
    eventually_eq(WAIT, "the first deletion", 1.0, || cluster.metric(QUEUE_DELETED)).await;
    let sent = 25;
    for i in 1..sent {
        let gap = 150 + (i * 97) % 500;
        tokio::time::sleep(Duration::from_millis(gap as u64)).await;
        publishers[i % 2].publish(queue, &i.to_string(), &[]).await;
    }
    let mut consumer = cluster.connect(2).await;
    consumer.subscribe(queue, "s", &[]).await;
    publishers[0].publish(queue, "end", &[]).await;
    let delivered = consumer.bodies_until("end").await;
    let dropped = cluster.metric(QUEUE_DELETED).await as usize;
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), delivered.len(), "none twice: {delivered:?}");
    assert_eq!(delivered.len() + dropped, sent, "delivered {delivered:?}, {dropped} counted as dropped");
    assert!(dropped >= 2, "queues expired between SENDs: {dropped}");
    assert!(
        delivered.contains(&(sent - 1).to_string()),
        "the last SEND created the queue again: {delivered:?}"
    );
    cluster.shutdown().await;
}

/// The headers are checked: a bad value is refused with a clear message.
async fn queue_lifetime_headers_are_checked(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    for (header, value, needle) in [
        ("auto-delete", "yes", "auto-delete must be true or false"),
        ("x-expires", "0", "x-expires must be a positive number of milliseconds"),
        ("x-expires", "soon", "x-expires must be a positive number of milliseconds"),
    ] {
        let mut client = cluster.connect(0).await;
        client.send_frame(&subscribe_frame("/queue/h", "s").with_header(header, value)).await.expect("sent");
        client.expect_refusal(needle).await;
    }
    cluster.shutdown().await;
}
