//! The multi-node scenarios: real Redis, real `stampede` processes, real sockets.
//!
//! Each scenario is written once as an `async fn` over a [`Cluster`] and run by one or more
//! tests: on three nodes, on one node with Redis, and (for the topic and queue basics) on one
//! node with the embedded engine, declared with the test kit's `variants!` (tests
//! `<scenario>::memory`, `::one_node`, `::three_nodes`), so "one node and three" are held to the
//! same guarantees.
//! Every count is exact, every wait has a deadline, and a failing test prints the log of every
//! process it started. `README.md` says what each scenario proves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stampede::stomp::Frame;
use stampede_testkit::client::{ack_frame, header, send_frame, show};
use stampede_testkit::cluster::RECLAIM_AFTER;
use stampede_testkit::{
    eventually, eventually_eq, http, variants, Client, Cluster, Endpoint, Redis, Transport, Variant,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

mod common;
use common::*;

// The topic and queue basics on one node with the embedded engine, one node with Redis and
// three nodes on one Redis (the variant's transport is unused: each scenario mixes both).
variants! {
    topic_in_order:
        memory => Variant::memory(Transport::Ws),
        one_node => Variant::redis(1, Transport::Ws),
        three_nodes => Variant::redis(3, Transport::Ws);
    queue_delivers_each_message_once:
        memory => Variant::memory(Transport::Ws),
        one_node => Variant::redis(1, Transport::Ws),
        three_nodes => Variant::redis(3, Transport::Ws);
}

// === Helpers ===

fn redelivered(frame: &Frame) -> bool {
    frame.get("redelivered") == Some("true")
}

/// Asserts the history offsets of `frames` strictly increase, after `after` if given.
fn assert_offsets_increase(who: &str, after: Option<u64>, frames: &[Frame]) {
    let mut last = after;
    for frame in frames {
        let now = offset(frame);
        if let Some(last) = last {
            assert!(now > last, "{who}: x-offset {now} after {last}: {}", show(frame));
        }
        last = Some(now);
    }
}

/// A consumer task: receives until told to stop and then quiet for [`QUIET`], acknowledging
/// each message (client-individual) and counting it in `total`. Returns what it received.
fn spawn_consumer(
    mut client: Client,
    who: String,
    total: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<Frame>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match client.try_recv_message(QUIET).await {
                Ok(frame) => {
                    client.send_frame(&ack_frame(&frame)).await.unwrap_or_else(|e| panic!("{who}: ACK: {e}"));
                    got.push(frame);
                    total.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) if e.is_timeout() => {
                    if stop.load(Ordering::SeqCst) {
                        return got;
                    }
                }
                Err(e) => panic!("{who}: {e}"),
            }
        }
    })
}

/// Asserts every seq of `0..count` occurs exactly once.
fn assert_exactly_once(what: &str, counts: &BTreeMap<u64, usize>, count: u64) {
    let missing: Vec<u64> = (0..count).filter(|n| !counts.contains_key(n)).collect();
    let duplicated: Vec<(u64, usize)> =
        counts.iter().filter(|(_, c)| **c > 1).map(|(n, c)| (*n, *c)).collect();
    let unknown: Vec<u64> = counts.keys().copied().filter(|n| *n >= count).collect();
    assert!(
        missing.is_empty() && duplicated.is_empty() && unknown.is_empty(),
        "{what}: missing {missing:?}, duplicated (seq, times) {duplicated:?}, unknown {unknown:?}"
    );
}

// === Scenario 1: topic fan-out ===

/// A publisher on one node, subscribers on others: each of `count` messages reaches every
/// subscriber exactly once, in the publisher's order.
async fn topic_reaches_every_subscriber_once_in_order(
    cluster: &Cluster,
    publisher: usize,
    subscribers: &[(usize, Transport)],
    count: u64,
) {
    let destination = "/topic/fanout";
    let mut clients = Vec::new();
    for (i, &(node, transport)) in subscribers.iter().enumerate() {
        let mut client = connect(cluster.node(node), transport, None).await;
        client.try_subscribe(destination, &format!("sub-{i}"), &[]).await.expect("SUBSCRIBE");
        clients.push((format!("subscriber {i} on node-{node} over {transport:?}"), client));
    }
    let mut publisher = connect(cluster.node(publisher), Transport::Tcp, None).await;
    publish(&mut publisher, destination, 0..count).await;
    for (who, mut client) in clients {
        for frame in expect_in_order(&mut client, &who, 0..count).await {
            assert_eq!(header(&frame, "destination"), destination, "{who}");
        }
        client.try_quiet(QUIET).await.unwrap_or_else(|e| panic!("{who}: more than {count}: {e}"));
    }
}

/// Scenario 1 on each variant: the publisher is client 0, subscriber `i` (over WebSocket, then
/// TCP) is client `i + 1`, and client `c` connects to node `c % n`: on three nodes the publisher
/// is on node-0 and the subscribers on node-1 and node-2.
async fn topic_in_order(variant: Variant) {
    let (_redis, cluster) = Cluster::of(variant, &[]).await;
    let n = cluster.len();
    topic_reaches_every_subscriber_once_in_order(
        &cluster,
        0,
        &[(1 % n, Transport::Ws), (2 % n, Transport::Tcp)],
        500,
    )
    .await;
}

// === Scenario 2: competing consumers ===

/// Consumers on the given nodes share a queue (client-individual acks): each of `count`
/// messages is delivered exactly once across all of them.
async fn queue_consumers_share_each_message_once(
    cluster: &Cluster,
    producer: usize,
    consumers: &[(usize, Transport)],
    count: u64,
) {
    let queue = "/queue/work";
    let total = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, &(node, transport)) in consumers.iter().enumerate() {
        let mut client = connect(cluster.node(node), transport, None).await;
        let headers = [("ack", "client-individual"), ("prefetch-count", "10")];
        client.try_subscribe(queue, "work", &headers).await.expect("SUBSCRIBE");
        let who = format!("consumer {i} on node-{node} over {transport:?}");
        tasks.push((who.clone(), spawn_consumer(client, who, total.clone(), stop.clone())));
    }
    let mut producer = connect(cluster.node(producer), Transport::Ws, None).await;
    publish(&mut producer, queue, 0..count).await;
    eventually_eq(SPREAD, "messages consumed", count as usize, || async { total.load(Ordering::SeqCst) })
        .await;
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for (who, task) in tasks {
        let got = task.await.expect("consumer task");
        eprintln!("{who}: {} messages", got.len());
        assert!(got.iter().all(|f| !redelivered(f)), "{who}: a redelivery while nothing failed");
        all.extend(got.iter().map(seq));
    }
    assert_exactly_once("queue deliveries", &tally(all), count);
}

/// Scenario 2 on each variant: consumer `i` (over WebSocket, TCP, WebSocket) connects to node
/// `i % n`, the producer to node-0.
async fn queue_delivers_each_message_once(variant: Variant) {
    let (_redis, cluster) = Cluster::of(variant, &[]).await;
    let n = cluster.len();
    let consumers = [(0, Transport::Ws), (1 % n, Transport::Tcp), (2 % n, Transport::Ws)];
    queue_consumers_share_each_message_once(&cluster, 0, &consumers, 300).await;
}

// === Scenario 3: kill -9 of a node holding unacknowledged messages ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_hands_unacknowledged_messages_to_other_nodes() {
    const COUNT: u64 = 30;
    const PREFETCH: u64 = 10;
    let redis = Redis::start().await;
    let cluster = Cluster::start(3, &redis, &[]).await;
    let queue = "/queue/reclaim";

    // node-1's consumer takes PREFETCH messages and never acknowledges them.
    let mut holder = connect(cluster.node(1), Transport::Tcp, None).await;
    let prefetch = PREFETCH.to_string();
    holder
        .try_subscribe(queue, "held", &[("ack", "client-individual"), ("prefetch-count", &prefetch)])
        .await
        .unwrap();
    let mut producer = connect(cluster.node(0), Transport::Ws, None).await;
    publish(&mut producer, queue, 0..COUNT).await;
    let mut held = BTreeSet::new();
    for _ in 0..PREFETCH {
        let frame = holder.try_recv_message(RECV).await.expect("node-1's consumer gets its prefetch");
        assert!(!redelivered(&frame), "first delivery flagged redelivered: {}", show(&frame));
        held.insert(seq(&frame));
    }
    holder.try_quiet(QUIET).await.expect("no more than prefetch-count unacknowledged messages");

    // Consumers on node-0 and node-2 take the rest.
    let total = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (node, transport) in [(0, Transport::Ws), (2, Transport::Tcp)] {
        let mut client = connect(cluster.node(node), transport, None).await;
        client
            .try_subscribe(queue, "rest", &[("ack", "client-individual"), ("prefetch-count", "100")])
            .await
            .unwrap();
        let who = format!("consumer on node-{node}");
        tasks.push((who.clone(), spawn_consumer(client, who, total.clone(), stop.clone())));
    }
    let rest = (COUNT - PREFETCH) as usize;
    eventually_eq(SPREAD, "messages not held by node-1 consumed", rest, || async {
        total.load(Ordering::SeqCst)
    })
    .await;

    // While node-1 lives, what its consumer holds stays with it, even past the reclaim time.
    let until = Instant::now() + RECLAIM_AFTER * 2;
    while Instant::now() < until {
        let now = total.load(Ordering::SeqCst);
        assert_eq!(now, rest, "a message held by a live node's consumer was handed to another consumer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    cluster.node(1).kill();
    let killed = Instant::now();
    eventually_eq(
        SPREAD + RECLAIM_AFTER,
        "messages consumed after node-1's kill -9",
        COUNT as usize,
        || async { total.load(Ordering::SeqCst) },
    )
    .await;
    eprintln!("node-1's {PREFETCH} messages were all redelivered {:?} after the kill", killed.elapsed());
    stop.store(true, Ordering::SeqCst);

    let mut all = Vec::new();
    let mut redelivered_seqs = BTreeSet::new();
    for (who, task) in tasks {
        let got = task.await.expect("consumer task");
        eprintln!("{who}: {} messages", got.len());
        for frame in &got {
            if redelivered(frame) {
                redelivered_seqs.insert(seq(frame));
            }
        }
        all.extend(got.iter().map(seq));
    }
    assert_exactly_once("deliveries to node-0 and node-2", &tally(all), COUNT);
    assert_eq!(redelivered_seqs, held, "redelivered:true must mark exactly the messages node-1 held");
}

// === Scenario 4: rolling restart ===

/// A producer with receipts that fails over to the next node when its node goes; retries the
/// unconfirmed message there. Returns how many connections it used.
fn spawn_roaming_producer(
    endpoints: Vec<Endpoint>,
    queue: &'static str,
    confirmed: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let mut at = 0;
        let mut connections = 0;
        let mut next = 0u64;
        let mut client: Option<Client> = None;
        while !stop.load(Ordering::SeqCst) {
            let Some(producer) = client.as_mut() else {
                match Client::connect_to(&endpoints[at % endpoints.len()], None).await {
                    Ok(c) => {
                        connections += 1;
                        client = Some(c);
                    }
                    Err(_) => {
                        at += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                continue;
            };
            let text = next.to_string();
            match producer.try_publish(queue, "work", &[("seq", &text)]).await {
                Ok(_) => {
                    confirmed.lock().unwrap().push(next);
                    next += 1;
                    // Steady traffic, not a flood.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(_) => {
                    client = None;
                    at += 1;
                }
            }
        }
        connections
    })
}

/// A consumer (client-individual, acks each message) that reconnects to the next node when
/// its connection ends. Records every delivery in `seen`. Returns how many connections it used.
fn spawn_roaming_consumer(
    endpoints: Vec<Endpoint>,
    start: usize,
    queue: &'static str,
    seen: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let mut at = start;
        let mut connections = 0;
        'connect: loop {
            if stop.load(Ordering::SeqCst) {
                return connections;
            }
            let mut client = match Client::connect_to(&endpoints[at % endpoints.len()], None).await {
                Ok(client) => client,
                Err(_) => {
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let headers = [("ack", "client-individual"), ("prefetch-count", "20")];
            if client.try_subscribe(queue, "work", &headers).await.is_err() {
                at += 1;
                continue;
            }
            connections += 1;
            loop {
                match client.try_recv_message(QUIET).await {
                    Ok(frame) => {
                        seen.lock().unwrap().push(seq(&frame));
                        if client.send_frame(&ack_frame(&frame)).await.is_err() {
                            at += 1;
                            continue 'connect;
                        }
                    }
                    Err(e) if e.is_timeout() => {
                        if stop.load(Ordering::SeqCst) {
                            return connections;
                        }
                    }
                    Err(_) => {
                        at += 1;
                        continue 'connect;
                    }
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_no_confirmed_message() {
    let redis = Redis::start().await;
    let cluster = Cluster::start(3, &redis, &[]).await;
    let queue = "/queue/rolling";
    let confirmed = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop_producer = Arc::new(AtomicBool::new(false));
    let stop_consumers = Arc::new(AtomicBool::new(false));

    let mut consumers = Vec::new();
    for (start, transport) in [(0, Transport::Ws), (1, Transport::Tcp), (2, Transport::Ws)] {
        let endpoints = cluster.endpoints(transport);
        consumers.push(spawn_roaming_consumer(endpoints, start, queue, seen.clone(), stop_consumers.clone()));
    }
    let producer = spawn_roaming_producer(
        cluster.endpoints(Transport::Tcp),
        queue,
        confirmed.clone(),
        stop_producer.clone(),
    );
    let confirmed_count = || confirmed.lock().unwrap().len();
    eventually(SPREAD, "50 messages confirmed before the restarts", || async { confirmed_count() >= 50 })
        .await;

    for node in cluster.nodes() {
        let before = confirmed_count();
        let status = node.stop().await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not drain and exit cleanly: {status:?}",
            node.id()
        );
        node.restart().await;
        eventually(SPREAD, format!("traffic goes on after {} restarted", node.id()), || async {
            confirmed_count() >= before + 50
        })
        .await;
    }
    stop_producer.store(true, Ordering::SeqCst);
    let producer_connections = producer.await.expect("producer task");
    let confirmed: Vec<u64> = confirmed.lock().unwrap().clone();

    let missing = || {
        let seen: BTreeSet<u64> = seen.lock().unwrap().iter().copied().collect();
        confirmed.iter().copied().filter(|n| !seen.contains(n)).collect::<Vec<u64>>()
    };
    eventually_eq(SPREAD + RECLAIM_AFTER, "confirmed messages never consumed", Vec::new(), || async {
        missing()
    })
    .await;
    stop_consumers.store(true, Ordering::SeqCst);
    let mut consumer_connections = Vec::new();
    for consumer in consumers {
        consumer_connections.push(consumer.await.expect("consumer task"));
    }
    let seen = seen.lock().unwrap().clone();
    let duplicates = tally(seen.iter().copied()).values().filter(|c| **c > 1).count();
    eprintln!(
        "rolling restart: {} confirmed, {} deliveries, {duplicates} messages delivered more than once; \
         producer used {producer_connections} connections, consumers {consumer_connections:?}",
        confirmed.len(),
        seen.len(),
    );
    assert_eq!(confirmed, (0..confirmed.len() as u64).collect::<Vec<_>>(), "the producer confirms in order");
}

// === Scenario 5: Redis killed and restarted ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_keeps_sessions_history_and_queues() {
    let redis = Redis::start().await;
    let cluster = Cluster::start(3, &redis, &["--history", HISTORY]).await;
    let (hist, live, durable) = ("/topic/hist.feed", "/topic/live", "/queue/durable");

    // Sessions that must live through the outage.
    let mut publisher = connect(cluster.node(0), Transport::Ws, None).await;
    let mut live_sub = connect(cluster.node(1), Transport::Tcp, None).await;
    live_sub.try_subscribe(live, "live", &[]).await.unwrap();
    let mut hist_sub = connect(cluster.node(2), Transport::Ws, None).await;
    hist_sub.try_subscribe(hist, "hist", &[]).await.unwrap();
    let mut probe = connect(cluster.node(0), Transport::Tcp, None).await;

    // Queue: 50 confirmed; the first 20 consumed and acknowledged (with receipts).
    let mut queue_producer = connect(cluster.node(0), Transport::Tcp, None).await;
    for n in 0..50u64 {
        queue_producer.try_publish(durable, "durable", &[("seq", &n.to_string())]).await.expect("queue SEND");
    }
    let mut early_consumer = connect(cluster.node(1), Transport::Tcp, None).await;
    early_consumer
        .try_subscribe(durable, "q", &[("ack", "client-individual"), ("prefetch-count", "1")])
        .await
        .unwrap();
    let mut acked = BTreeSet::new();
    for _ in 0..20 {
        let frame = early_consumer.try_recv_message(RECV).await.expect("queue message before the outage");
        early_consumer.try_ack(&frame).await.expect("ACK with receipt");
        acked.insert(seq(&frame));
    }
    early_consumer.try_unsubscribe("q").await.expect("UNSUBSCRIBE");
    early_consumer.try_disconnect().await.expect("DISCONNECT");

    // History: `early` sees 0..50 and leaves; the publisher goes on to 100.
    let mut early = connect(cluster.node(1), Transport::Ws, None).await;
    early.try_subscribe(hist, "hist", &[]).await.unwrap();
    publish(&mut publisher, hist, 0..50).await;
    let seen_early = expect_in_order(&mut early, "early history subscriber", 0..50).await;
    let resume_from = offset(seen_early.last().unwrap());
    early.try_disconnect().await.expect("DISCONNECT");
    publish(&mut publisher, hist, 50..100).await;
    let before = expect_in_order(&mut hist_sub, "history subscriber before the outage", 0..100).await;
    assert_offsets_increase("history subscriber before the outage", None, &before);
    publish(&mut publisher, live, 0..20).await;
    expect_in_order(&mut live_sub, "live subscriber before the outage", 0..20).await;

    // Outage.
    redis.kill();
    eventually_eq(SPREAD, "/readyz on each node while Redis is down", vec![Some(503); 3], || {
        readyz_everywhere(&cluster)
    })
    .await;
    let probe_receipt = probe
        .try_send_with_receipt(send_frame(durable, "sent while Redis is down", &[("seq", "1000")]))
        .await
        .expect("SEND");
    match probe.try_await_receipt(&probe_receipt, Duration::from_secs(2)).await {
        Ok(frame) => {
            panic!("RECEIPT while Redis was down, for a SEND nothing could store: {}", show(&frame))
        }
        Err(e) => eprintln!("SEND with receipt while Redis is down: {e}"),
    }
    assert_eq!(readyz_everywhere(&cluster).await, vec![Some(503); 3], "/readyz just before Redis returns");
    redis.restart().await;
    eventually_eq(SPREAD, "/readyz on each node after Redis is back", vec![Some(200); 3], || {
        readyz_everywhere(&cluster)
    })
    .await;

    // The same sessions work: the live topic flows again.
    let deadline = Instant::now() + SPREAD;
    loop {
        publisher
            .try_send(live, "probe", &[("seq", "1000000")])
            .await
            .expect("the publisher's session survives");
        match live_sub.try_recv_message(Duration::from_millis(300)).await {
            Ok(_) => break,
            Err(e) if e.is_timeout() => {
                assert!(
                    Instant::now() < deadline,
                    "no live topic message within {SPREAD:?} of Redis's restart"
                )
            }
            Err(e) => panic!("the live subscriber's session survives: {e}"),
        }
    }
    publish(&mut publisher, live, 20..40).await;
    let mut after = Vec::new();
    while after.len() < 20 {
        let frame = live_sub.try_recv_message(RECV).await.expect("live topic after the outage");
        if seq(&frame) != 1_000_000 {
            after.push(seq(&frame));
        }
    }
    assert_eq!(after, (20..40).collect::<Vec<_>>(), "live topic after the outage");

    // History: the subscriber that stayed goes on without gap or duplicate.
    publish(&mut publisher, hist, 100..150).await;
    let stayed = expect_in_order(&mut hist_sub, "history subscriber after the outage", 100..150).await;
    assert_offsets_increase(
        "history subscriber after the outage",
        Some(offset(before.last().unwrap())),
        &stayed,
    );

    // A subscriber resuming from the last offset `early` saw, on another node.
    let mut resumed = connect(cluster.node(0), Transport::Tcp, None).await;
    let since = resume_from.to_string();
    let receipt =
        resumed.try_subscribe(hist, "hist", &[("x-since", &since)]).await.expect("SUBSCRIBE with x-since");
    assert_eq!(receipt.get("x-recovered"), Some("true"), "resume after Redis restart: {}", show(&receipt));
    let replayed = expect_in_order(&mut resumed, "resumed history subscriber", 50..150).await;
    assert_offsets_increase("resumed history subscriber", Some(resume_from), &replayed);
    publish(&mut publisher, hist, 150..170).await;
    expect_in_order(&mut resumed, "resumed history subscriber, live", 150..170).await;
    expect_in_order(&mut hist_sub, "history subscriber, live", 150..170).await;
    resumed.try_quiet(QUIET).await.expect("resumed: nothing more");
    hist_sub.try_quiet(QUIET).await.expect("history subscriber: nothing more");

    // Queue: nothing acknowledged is lost and nothing acknowledged comes back.
    let mut expected: BTreeSet<u64> = (0..50).filter(|n| !acked.contains(n)).collect();
    match probe.try_await_receipt(&probe_receipt, Duration::from_millis(500)).await {
        Ok(_) => {
            eprintln!("the SEND made during the outage was confirmed after it");
            expected.insert(1000);
        }
        Err(e) => eprintln!("the SEND made during the outage: {e}"),
    }
    let mut consumer = connect(cluster.node(2), Transport::Tcp, None).await;
    consumer.try_subscribe(durable, "q", &[("ack", "client-individual")]).await.unwrap();
    let mut got = Vec::new();
    loop {
        match consumer.try_recv_message(RECV).await {
            Ok(frame) => {
                consumer.send_frame(&ack_frame(&frame)).await.expect("ACK");
                got.push(seq(&frame));
            }
            Err(e) if e.is_timeout() => break,
            Err(e) => panic!("queue consumer after the outage: {e}"),
        }
        if got.iter().copied().collect::<BTreeSet<_>>().is_superset(&expected) {
            consumer.try_quiet(QUIET).await.expect("queue: nothing more");
            break;
        }
    }
    let got_set: BTreeSet<u64> = got.iter().copied().collect();
    let lost: Vec<u64> = expected.difference(&got_set).copied().collect();
    let back: Vec<u64> = acked.intersection(&got_set).copied().collect();
    assert!(lost.is_empty(), "confirmed queue messages lost across the Redis restart: {lost:?}");
    assert!(back.is_empty(), "acknowledged queue messages delivered again after the restart: {back:?}");
    assert_eq!(got.len(), got_set.len(), "queue messages delivered twice after the restart: {got:?}");
}

// === Scenario 6: user destinations ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_destination_reaches_every_session_of_that_user_only() {
    let redis = Redis::start().await;
    let cluster = Cluster::start(3, &redis, &[]).await;
    user_destinations_reach_their_users(&cluster).await;
}

// === Scenario 7: resume on another node ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_to_another_node_resumes_history_without_gap() {
    let redis = Redis::start().await;
    let cluster = Cluster::start(3, &redis, &["--history", HISTORY]).await;
    let topic = "/topic/hist.chat";
    let mut publisher = connect(cluster.node(2), Transport::Tcp, None).await;

    let mut reader = connect(cluster.node(0), Transport::Ws, None).await;
    reader.try_subscribe(topic, "chat", &[]).await.unwrap();
    publish(&mut publisher, topic, 0..30).await;
    let first = expect_in_order(&mut reader, "reader on node-0", 0..30).await;
    assert_offsets_increase("reader on node-0", None, &first);
    let last_offset = offset(first.last().unwrap());
    reader.try_disconnect().await.expect("DISCONNECT");

    // Missed while away.
    publish(&mut publisher, topic, 30..60).await;
    // More is published while the reader resumes, so the replay races live traffic.
    let racing = tokio::spawn(async move {
        for n in 60..90u64 {
            publisher.try_publish(topic, "racing", &[("seq", &n.to_string())]).await.expect("SEND");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut reader = connect(cluster.node(1), Transport::Tcp, None).await;
    let receipt =
        reader.try_subscribe(topic, "chat", &[("x-since", &last_offset.to_string())]).await.unwrap();
    assert_eq!(receipt.get("x-recovered"), Some("true"), "{}", show(&receipt));
    let resumed = expect_in_order(&mut reader, "reader resumed on node-1", 30..90).await;
    assert_offsets_increase("reader resumed on node-1", Some(last_offset), &resumed);
    racing.await.expect("publisher task");
    reader.try_quiet(QUIET).await.expect("resumed reader: nothing more");
}

// === Scenario 8: the admin API lists the cluster ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_api_lists_every_node_with_its_connections() {
    let redis = Redis::start().await;
    let cluster = Cluster::start(3, &redis, &[]).await;
    let mut clients = Vec::new();
    for (node, connections) in [(0, 1), (1, 2), (2, 3)] {
        for i in 0..connections {
            clients.push(connect(cluster.node(node), Transport::ALL[i % 2], None).await);
        }
    }
    let expected: BTreeMap<String, u64> =
        [("node-0", 1), ("node-1", 2), ("node-2", 3)].into_iter().map(|(id, n)| (id.to_owned(), n)).collect();
    for node in cluster.nodes() {
        let _listed = eventually_eq(
            SPREAD,
            format!("GET /api/v1/nodes on {}", node.id()),
            Ok(expected.clone()),
            || async {
                let response =
                    http::get(node.admin_addr(), "/api/v1/nodes").await.map_err(|e| e.to_string())?;
                if response.status != 200 {
                    return Err(format!("HTTP {}: {}", response.status, response.body));
                }
                let json = response.json();
                let nodes = json["nodes"].as_array().ok_or_else(|| format!("no nodes array: {json}"))?;
                let mut listed = BTreeMap::new();
                for entry in nodes {
                    let id = entry["node_id"].as_str().ok_or_else(|| format!("no node_id: {entry}"))?;
                    let connections =
                        entry["connections"].as_u64().ok_or_else(|| format!("no connections: {entry}"))?;
                    listed.insert(id.to_owned(), connections);
                }
                Ok(listed)
            },
        )
        .await;
    }
    drop(clients);
}

// === Scenario 9: publishes are pipelined, and a DISCONNECT receipt still covers them ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_receipt_waits_for_pipelined_publishes() {
    let redis = Redis::start().await;
    let cluster = Cluster::start(1, &redis, &["--history", HISTORY]).await;
    let mut client = connect(cluster.node(0), Transport::Tcp, None).await;
    // Redis stalls every write for a while: the SENDs are taken by the node but cannot be stored.
    redis.cli(&["CLIENT", "PAUSE", "1500", "WRITE"]).await;
    for n in 0..200u64 {
        let text = n.to_string();
        client
            .try_send("/topic/hist.pipelined", &format!("message {n}"), &[("seq", &text)])
            .await
            .expect("send");
    }
    client.try_disconnect().await.expect("DISCONNECT receipt");
    // The receipt came only after every SEND before it reached Redis.
    let logs = redis.cli(&["KEYS", "*hist.pipelined*:log"]).await;
    let log = logs.lines().next().unwrap_or_else(|| panic!("no history stream in Redis: {logs:?}"));
    assert_eq!(redis.cli(&["XLEN", log]).await, "200", "history entries when the receipt arrived");
}
