//! What clients see when Redis loses its data or stops answering, with a real `redis-server`
//! of the node's own (restarted empty, or stopped with SIGSTOP and continued):
//! - a client resuming a history topic with an offset from before Redis restarted empty is told
//!   `x-recovered:false`, then gets everything published since the restart, in order, once;
//!   the same resume on the memory engine (whose offsets never restart, so the client's offset
//!   is simply ahead of the topic) behaves alike;
//! - a subscriber that stays connected through the restart gets every new offset, even when the
//!   topic was published past its old offset before its node reached Redis again;
//! - queues whose stream vanished are reported (metric and WARN log naming the queue);
//! - a queue lifetime a SUBSCRIBE declares while Redis is away is declared once it answers;
//! - ACK, NACK and SUBSCRIBE while Redis is stopped never end the session: the acknowledged
//!   messages are not delivered again once Redis is back (or carry `redelivered:true`), the
//!   subscription made during the stall receives what is published after Redis returns.

use std::time::Duration;

use stampede::config::{Config, HistoryRule};
use stampede_testkit::prelude::*;
use stampede_testkit::Redis;

/// Patience for a node to notice Redis is back (reconnect, re-subscribe) and for its logs.
const BACK: Duration = Duration::from_secs(20);
/// How long Redis is stopped in the stall scenarios, as in the issue.
const STALL: Duration = Duration::from_secs(5);
/// Patience for a RECEIPT asked during the stall (an engine call may wait out its timeout).
const RECEIPT_DURING_STALL: Duration = Duration::from_secs(15);

const TOPIC: &str = "/topic/resume/prices";

fn history(c: &mut Config) {
    c.history = vec![HistoryRule { pattern: "/topic/resume/*".into(), size: 100, ttl: None }];
}

/// A node on `redis` (its own server: the scenarios restart or stop it).
async fn node_on(redis: &Redis) -> TestNode {
    node_at(redis.url()).await
}

/// A node on the Redis at `url` (a [`Relay`] to the scenario's own server, or the server).
async fn node_at(url: String) -> TestNode {
    let node = TestNode::start(|c| {
        history(c);
        c.redis_url = Some(url);
        c.redis_prefix = "outage".into();
    })
    .await;
    ready(&node).await;
    node
}

async fn ready(node: &TestNode) {
    eventually(BACK, "/readyz answers 200", || async { node.get("/readyz").await.status == 200 }).await;
}

/// Publishes `bodies` with receipts, retrying each one a few times while the node reconnects.
async fn publish_all(publisher: &mut Client, destination: &str, bodies: impl IntoIterator<Item = String>) {
    for body in bodies {
        let mut tries = 0;
        while let Err(error) = publisher.try_publish(destination, &body, &[]).await {
            tries += 1;
            assert!(tries < 3, "SEND {body} refused {tries} times: {error}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn bodies(n: std::ops::RangeInclusive<u32>, tag: &str) -> Vec<String> {
    n.map(|i| format!("{tag}-{i}")).collect()
}

/// The scenario of issue 18: the client saw offsets up to 50, Redis restarts empty, publishing
/// resumes from offset 1. Its resume with `x-since:50` gets `x-recovered:false`, the 10 messages
/// published since the restart, then every live one (offsets 11 to 55, below and above its old
/// offset), in order, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_redis_restarted_empty_misses_nothing_published_since() {
    let redis = Redis::start_ephemeral().await;
    let node = node_on(&redis).await;
    let mut publisher = node.connect(Transport::Tcp, &[]).await;
    let mut before = node.connect(Transport::Tcp, &[]).await;
    before.subscribe(TOPIC, "s", &[]).await;
    publish_all(&mut publisher, TOPIC, bodies(1..=50, "old")).await;
    let last = before.recv_messages(50).await.pop().expect("50 messages");
    assert_eq!(header(&last, "x-offset"), "50");

    redis.restart().await;
    ready(&node).await;
    // Publishing resumes at once, whether or not the node subscribed again yet.
    publish_all(&mut publisher, TOPIC, bodies(1..=10, "new")).await;

    let mut resumed = node.connect(Transport::Tcp, &[]).await;
    let receipt = resumed.subscribe(TOPIC, "s", &[("x-since", "50")]).await;
    assert_eq!(header(&receipt, "x-recovered"), "false", "the history cannot cover offsets from before");
    publish_all(&mut publisher, TOPIC, bodies(11..=55, "new")).await;
    let got: Vec<(String, String)> =
        resumed.recv_messages(55).await.iter().map(|m| (body(m), header(m, "x-offset").to_owned())).collect();
    let expected: Vec<(String, String)> = (1..=55).map(|i| (format!("new-{i}"), i.to_string())).collect();
    assert_eq!(got, expected);
    resumed.assert_quiet().await;
    // The subscriber that stayed on through the restart followed the new offsets too.
    let kept: Vec<String> = before.recv_messages(55).await.iter().map(body).collect();
    assert_eq!(kept, bodies(1..=55, "new"));
}

/// Issue 18's known limit: a subscriber stays connected to its node through Redis's empty restart,
/// and the topic is published past the offset it had (50) before its node reaches Redis again (the
/// node's own link to Redis is cut meanwhile, while another node publishes 60 messages). It still
/// receives every new offset, 1 to 60, in order, once; its node counts the topic's restart once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_kept_through_an_empty_restart_gets_every_new_offset() {
    let redis = Redis::start_ephemeral().await;
    let relay = Relay::start(redis.addr()).await;
    let kept = node_at(format!("redis://{}", relay.addr())).await;
    let publishing = node_on(&redis).await;
    let mut publisher = publishing.connect(Transport::Tcp, &[]).await;
    let mut subscriber = kept.connect(Transport::Tcp, &[]).await;
    subscriber.subscribe(TOPIC, "s", &[]).await;
    publish_all(&mut publisher, TOPIC, bodies(1..=50, "old")).await;
    let last = subscriber.recv_messages(50).await.pop().expect("50 messages");
    assert_eq!(header(&last, "x-offset"), "50");

    relay.cut();
    redis.restart().await;
    ready(&publishing).await;
    publish_all(&mut publisher, TOPIC, bodies(1..=60, "new")).await;
    relay.mend();
    ready(&kept).await;

    let mut got = Vec::new();
    while got.len() < 60 {
        match subscriber.try_recv_message(BACK).await {
            Ok(m) => got.push((body(&m), header(&m, "x-offset").to_owned())),
            Err(error) => panic!("after {} messages: {error}\n{:?}\n{}", got.len(), got, kept.log().text()),
        }
    }
    let expected: Vec<(String, String)> = (1..=60).map(|i| (format!("new-{i}"), i.to_string())).collect();
    assert_eq!(got, expected, "{}", kept.log().text());
    subscriber.assert_quiet().await;
    assert_eq!(kept.metric(RESTARTED).await, Some(1.0), "one history topic restarted");
}

const RESTARTED: &str = "stampede_engine_events_total{event=\"history_restarted\"}";

/// A queue SUBSCRIBE declaring a lifetime (`x-expires`) while its node cannot reach Redis (its
/// link cut): the session stays and gets its RECEIPT, and once Redis answers again the lifetime is
/// in Redis as the subscription takes effect (the declaration is retried with the watch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_lifetime_declared_while_redis_is_away_is_declared_once_it_answers() {
    let redis = Redis::start_ephemeral().await;
    let relay = Relay::start(redis.addr()).await;
    let node = node_at(format!("redis://{}", relay.addr())).await;
    let mut consumer = node.connect(Transport::Tcp, &[]).await;
    relay.cut();
    eventually(BACK, "/readyz answers 503", || async { node.get("/readyz").await.status == 503 }).await;
    let subscribe = subscribe_frame("/queue/declared", "q").with_header("x-expires", "600000");
    let receipt = consumer.try_send_with_receipt(subscribe).await.expect("SUBSCRIBE sent");
    let answered = consumer.try_await_receipt(&receipt, RECEIPT_DURING_STALL).await;
    assert!(answered.is_ok(), "RECEIPT {receipt}: {:?}\n{}", answered.err(), node.log().text());

    relay.mend();
    ready(&node).await;
    let expires = || async { redis.call(&["HGET", "outage:{/queue/declared}:life", "expires"]).await };
    eventually_eq(BACK, "the declared x-expires in Redis", Resp::Bulk(Some(b"600000".to_vec())), expires)
        .await;
    let mut publisher = node.connect(Transport::Tcp, &[]).await;
    publish_all(&mut publisher, "/queue/declared", bodies(1..=1, "after")).await;
    assert_eq!(body(&consumer.recv_message().await), "after-1");
}

/// A TCP relay to one Redis that a scenario can cut, as when the network between one node and
/// Redis is down: [`Relay::cut`] closes every connection through it and closes new ones at once,
/// until [`Relay::mend`].
struct Relay {
    addr: std::net::SocketAddr,
    /// Whether it relays, and the relaying tasks, under one lock (a cut leaves none behind).
    links: std::sync::Arc<std::sync::Mutex<(bool, Vec<tokio::task::AbortHandle>)>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let links = std::sync::Arc::new(std::sync::Mutex::new((true, Vec::new())));
        let accepting = tokio::spawn({
            let links = links.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let mut links = links.lock().expect("relay lock");
                    if !links.0 {
                        continue; // dropped: closed at once
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(to).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    links.1.push(link.abort_handle());
                }
            }
        });
        Relay { addr, links, accepting }
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    fn cut(&self) {
        let mut links = self.links.lock().expect("relay lock");
        links.0 = false;
        for link in links.1.drain(..) {
            link.abort();
        }
    }

    fn mend(&self) {
        self.links.lock().expect("relay lock").0 = true;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

/// The same resume on the embedded engine: an offset ahead of the topic's (as a client's is after
/// Redis restarted empty) gets `x-recovered:false`, what the topic holds, then every live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_an_offset_ahead_of_the_topic_misses_nothing_on_the_memory_engine() {
    let node = TestNode::start(history).await;
    let mut publisher = node.connect(Transport::Tcp, &[]).await;
    publish_all(&mut publisher, TOPIC, bodies(1..=10, "new")).await;
    let mut resumed = node.connect(Transport::Tcp, &[]).await;
    let receipt = resumed.subscribe(TOPIC, "s", &[("x-since", "50")]).await;
    assert_eq!(header(&receipt, "x-recovered"), "false");
    publish_all(&mut publisher, TOPIC, bodies(11..=55, "new")).await;
    let got: Vec<String> = resumed.recv_messages(55).await.iter().map(body).collect();
    assert_eq!(got, bodies(1..=55, "new"));
    resumed.assert_quiet().await;
}

const LOST: &str = "stampede_engine_events_total{event=\"queue_lost\"}";

/// Queues whose stream vanished are reported, once each, with the queue named: one holding 50
/// messages nobody consumed and one consumed here, when Redis restarts empty; then a consumed
/// queue whose key is deleted, when the next enqueue creates it again (the consumer goes on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_whose_stream_vanished_are_reported() {
    let redis = Redis::start_ephemeral().await;
    let node = node_on(&redis).await;
    let mut publisher = node.connect(Transport::Tcp, &[]).await;
    publish_all(&mut publisher, "/queue/stored", bodies(1..=50, "stored")).await;
    let mut consumer = node.connect(Transport::Tcp, &[]).await;
    consumer.subscribe("/queue/consumed", "q", &[("ack", "client-individual")]).await;
    assert_eq!(node.metric(LOST).await.unwrap_or(0.0), 0.0, "nothing lost yet");

    redis.restart().await;
    ready(&node).await;
    eventually_eq(BACK, "queues reported lost", 2.0, || async { node.metric(LOST).await.unwrap_or(0.0) })
        .await;
    let warned = |queue: &str| {
        node.log()
            .text()
            .lines()
            .any(|line| line.contains("WARN") && line.contains("queue lost") && line.contains(queue))
    };
    assert!(warned("/queue/stored") && warned("/queue/consumed"), "{}", node.log().text());

    // The consumer still consumes; the queue is seen again.
    publish_all(&mut publisher, "/queue/consumed", bodies(1..=1, "after-restart")).await;
    let message = consumer.recv_message().await;
    assert_eq!(body(&message), "after-restart-1");
    consumer.ack(&message).await;

    // Its key deleted by hand: the next enqueue creates the stream again, and says so.
    let deleted = redis.call(&["DEL", "outage:{/queue/consumed}:q"]).await;
    assert_eq!(deleted, Resp::Int(1), "the stream existed");
    publish_all(&mut publisher, "/queue/consumed", bodies(1..=1, "after-delete")).await;
    let message = consumer.recv_message().await;
    assert_eq!(body(&message), "after-delete-1");
    consumer.ack(&message).await;
    eventually_eq(BACK, "queues reported lost", 3.0, || async { node.metric(LOST).await.unwrap_or(0.0) })
        .await;
    // Once per loss, not once per way of noticing it.
    let stays = holds_within(Duration::from_secs(1), || async { node.metric(LOST).await != Some(3.0) }).await;
    assert!(!stays, "queue_lost went past 3: {:?}", node.metric(LOST).await);
}

/// Issue 18's stall: Redis is stopped (SIGSTOP) for 5 s while a queue consumer ACKs, NACKs and
/// SUBSCRIBEs with receipts. Every receipt comes, no ERROR, the session stays; once Redis is
/// back the ACKed messages are gone from the queue (never delivered again), the NACKed one comes
/// back with `redelivered:true`, and the subscriptions made during the stall receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_nack_and_subscribe_during_a_redis_stall_keep_the_session() {
    let redis = Redis::start_ephemeral().await;
    let node = node_on(&redis).await;
    let mut publisher = node.connect(Transport::Tcp, &[]).await;
    publish_all(&mut publisher, "/queue/work", bodies(1..=6, "job")).await;
    let mut consumer = node.connect(Transport::Tcp, &[]).await;
    consumer.subscribe("/queue/work", "q", &[("ack", "client-individual"), ("prefetch-count", "6")]).await;
    let jobs = consumer.recv_messages(6).await;
    assert_eq!(jobs.iter().map(body).collect::<Vec<_>>(), bodies(1..=6, "job"));

    redis.signal("STOP");
    let mut receipts = Vec::new();
    for job in &jobs[..3] {
        receipts.push(consumer.try_send_with_receipt(ack_frame(job)).await.expect("ACK sent"));
    }
    receipts.push(consumer.try_send_with_receipt(nack_frame(&jobs[3])).await.expect("NACK sent"));
    receipts.push(
        consumer
            .try_send_with_receipt(subscribe_frame("/topic/after-stall", "t"))
            .await
            .expect("SUBSCRIBE sent"),
    );
    receipts.push(
        consumer.try_send_with_receipt(subscribe_frame("/queue/later", "l")).await.expect("SUBSCRIBE sent"),
    );
    // The stall lasts as long as in the issue, whatever the node does meanwhile.
    tokio::time::sleep(STALL).await;
    redis.signal("CONT");
    for id in &receipts {
        let answered = consumer.try_await_receipt(id, RECEIPT_DURING_STALL).await;
        assert!(answered.is_ok(), "RECEIPT {id}: {:?}\n{}", answered.err(), node.log().text());
    }

    // The NACKed job comes back, flagged; the two still held are ACKed now.
    let again = consumer.recv_message().await;
    assert_eq!((body(&again), header(&again, "redelivered")), ("job-4".to_owned(), "true"));
    for job in [&again, &jobs[4], &jobs[5]] {
        consumer.ack(job).await;
    }
    // Every ACK reached Redis: the queue is empty, nothing pending, nothing comes again.
    eventually_eq(BACK, "entries left in /queue/work", Resp::Int(0), || async {
        redis.call(&["XLEN", "outage:{/queue/work}:q"]).await
    })
    .await;

    // The subscriptions made during the stall took effect once Redis answered.
    publish_all(&mut publisher, "/queue/later", bodies(1..=1, "later")).await;
    let later = consumer.recv_message().await;
    assert_eq!((body(&later), header(&later, "subscription")), ("later-1".to_owned(), "l"));
    consumer.ack(&later).await;
    let mut reached = false;
    for i in 0..20 {
        publisher.send("/topic/after-stall", &format!("probe-{i}"), &[]).await;
        if let Ok(message) = consumer.try_recv_message(Duration::from_millis(500)).await {
            assert_eq!(header(&message, "subscription"), "t");
            reached = true;
            break;
        }
    }
    assert!(reached, "the topic subscribed during the stall never received\n{}", node.log().text());
    consumer.disconnect().await;
}
