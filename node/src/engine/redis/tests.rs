//! Tests of what only the Redis engine has (several nodes on one Redis, scripts, the envelope,
//! failover, PUBLISH_MANY grouping) against a real `redis-server`: each test starts its own
//! server (the test kit's launcher) on a free port in a temporary directory, without
//! persistence, and kills it when done. What both engines promise is in `engine/contract.rs`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::types::Value;
use stampede_testkit::http::metric;
use stampede_testkit::{holds_within, Redis};

use super::{envelope, pubsub, scripts, RedisEngine, Tuning};
use crate::config::{Config, QueueLifetime, QueueRule};
use crate::engine::contract::{history, message};
use crate::engine::{Engine, EngineError, EntryId, Inbox, Message};
use crate::metrics::Metrics;

/// An inbox that records what it is handed.
#[derive(Default)]
struct Collect {
    messages: Mutex<Vec<Arc<Message>>>,
    ready: Mutex<Vec<String>>,
    /// How many messages each hand-over carried.
    batches: Mutex<Vec<usize>>,
    /// Time each hand-over takes (a slow consumer), if any.
    delay: Option<Duration>,
}

impl Inbox for Collect {
    fn deliver(&self, message: Arc<Message>) {
        self.deliver_all(std::slice::from_ref(&message));
    }

    fn deliver_all(&self, messages: &[Arc<Message>]) {
        self.batches.lock().expect("lock").push(messages.len());
        if let Some(delay) = self.delay {
            std::thread::sleep(delay);
        }
        self.messages.lock().expect("lock").extend(messages.iter().cloned());
    }

    fn queue_ready(&self, queue: &str) {
        self.ready.lock().expect("lock").push(queue.to_owned());
    }
}

impl Collect {
    fn count(&self) -> usize {
        self.messages.lock().expect("lock").len()
    }

    fn bodies(&self) -> Vec<String> {
        self.messages
            .lock()
            .expect("lock")
            .iter()
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect()
    }

    fn offsets(&self) -> Vec<u64> {
        self.messages.lock().expect("lock").iter().filter_map(|m| m.offset).collect()
    }

    fn was_woken(&self, queue: &str) -> bool {
        self.ready.lock().expect("lock").iter().any(|q| q == queue)
    }
}

struct Node {
    engine: RedisEngine,
    inbox: Arc<Collect>,
    metrics: Arc<Metrics>,
}

async fn node(server: &Redis, id: &str, edit: impl FnOnce(&mut Config)) -> Node {
    node_with(
        server,
        id,
        edit,
        Collect::default(),
        Tuning { connect_wait: Duration::from_secs(5), ..Tuning::default() },
    )
    .await
}

async fn node_with(
    server: &Redis,
    id: &str,
    edit: impl FnOnce(&mut Config),
    inbox: Collect,
    tuning: Tuning,
) -> Node {
    let mut config = Config { node_id: id.to_owned(), redis_url: Some(server.url()), ..Config::default() };
    edit(&mut config);
    let metrics = Arc::new(Metrics::new());
    let engine =
        RedisEngine::connect_with(Arc::new(config), metrics.clone(), tuning).await.expect("engine starts");
    let inbox = Arc::new(inbox);
    let dyn_inbox: Arc<dyn Inbox> = inbox.clone();
    let weak: Weak<dyn Inbox> = Arc::downgrade(&dyn_inbox);
    engine.attach(weak);
    Node { engine, inbox, metrics }
}

const WAIT: Duration = Duration::from_secs(10);

/// A counter's value in the rendered metrics, e.g. `messages_dropped_total{reason="queue_full"}`.
fn counter(metrics: &Metrics, name: &str) -> u64 {
    metric(&metrics.render(Vec::new()), &format!("stampede_{name}")).map_or(0, |v| v as u64)
}

async fn raw(node: &Node, command: &'static str, key: &str, args: &[&str]) -> Value {
    let args = args.iter().map(|a| Value::from(*a)).collect();
    node.engine.inner.command(command, key, args).await.expect("command succeeds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_messages_reach_other_nodes_once_in_order_until_unwatched() {
    let server = Redis::start_ephemeral().await;
    let a = node(&server, "node-a", |_| {}).await;
    let b = node(&server, "node-b", |_| {}).await;
    assert!(a.engine.is_ready() && b.engine.is_ready());

    b.engine.watch("/topic/t").wait().await.expect("watch");
    for i in 0..100 {
        assert_eq!(a.engine.publish(message("/topic/t", i.to_string())).await.outcome().await, Ok(None));
    }
    assert!(holds_within(WAIT, || async { b.inbox.count() >= 100 }).await, "got {}", b.inbox.count());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(b.inbox.bodies(), expected, "each message once, in publish order");
    assert_eq!(a.inbox.count(), 0, "node A does not watch the topic");
    let first = b.inbox.messages.lock().expect("lock")[0].clone();
    assert_eq!(&*first.destination, "/topic/t");
    assert_eq!(first.headers, vec![("content-type".to_owned(), "text/plain".to_owned())]);

    // The publisher's own node receives through Redis too once it watches.
    a.engine.watch("/topic/t").wait().await.expect("watch");
    a.engine.publish(message("/topic/t", "100")).await.outcome().await.expect("publish");
    assert!(holds_within(WAIT, || async { a.inbox.count() == 1 && b.inbox.count() == 101 }).await);

    // Unwatch is applied in call order: once a later watch is done, it is done too.
    b.engine.unwatch("/topic/t");
    b.engine.watch("/topic/other").wait().await.expect("watch");
    a.engine.publish(message("/topic/t", "101")).await.outcome().await.expect("publish");
    assert!(holds_within(WAIT, || async { a.inbox.count() == 2 }).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.inbox.count(), 101, "nothing after unwatch");
}

/// Publishes nobody waits for are pipelined, and still reach other nodes once each, in the order
/// they were taken, history publishes (a script each) interleaved with plain ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_taken_without_waiting_arrive_in_order() {
    let server = Redis::start_ephemeral().await;
    let rules = |c: &mut Config| c.history = vec![history("/topic/h", 100, None)];
    let a = node(&server, "node-a", rules).await;
    let b = node(&server, "node-b", rules).await;
    // EVALSHA names a script by the SHA-1 of its text, as Redis computes it.
    for script in [&*scripts::HISTORY_PUBLISH, &*scripts::ENQUEUE] {
        assert_eq!(
            script.load(&a.engine.inner.client).await.as_deref(),
            Ok(script.sha(false)),
            "{}",
            script.name
        );
    }
    publish_interleaved(&a, &b, 2000, 100).await;
}

/// A publisher's runs go to Redis with their plain publishes on one channel as one PUBLISH_MANY
/// call each, not a command (and a socket write) each; other nodes still get every message once,
/// in order, with the history publishes between them in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_one_channel_goes_as_few_commands() {
    let server = Redis::start_ephemeral().await;
    let rules = |c: &mut Config| c.history = vec![history("/topic/h", 100, None)];
    let a = node(&server, "node-a", rules).await;
    let b = node(&server, "node-b", rules).await;
    // Calls of `name` Redis has run, those run by scripts included.
    let calls = |name: &'static str| {
        let a = &a;
        async move {
            let info = raw(a, "INFO", "", &["commandstats"]).await;
            let info = info.as_string().expect("INFO is text");
            let prefix = format!("cmdstat_{name}:calls=");
            info.lines()
                .find_map(|line| line.strip_prefix(prefix.as_str()))
                .and_then(|rest| rest.split(',').next())
                .map_or(0, |n| n.parse::<u64>().expect("calls"))
        }
    };
    watch_plain_and_history(&b).await;
    let (evalsha, publish) = (calls("evalsha").await, calls("publish").await);
    // Runs of 32 as a session hands them over, every 100th message to the history topic.
    let n = 2000;
    let history = |i: usize| i % 100 == 99;
    let mut last = None;
    let mut stretches = 0;
    for run in (0..n).collect::<Vec<usize>>().chunks(32) {
        // Plain publishes between history ones: one PUBLISH_MANY each (a short one is PUBLISHes).
        stretches += run.split(|&i| history(i)).filter(|stretch| stretch.len() > 1).count() as u64;
        let messages =
            run.iter().map(|&i| message(if history(i) { "/topic/h" } else { "/topic/p" }, i.to_string()));
        last = a.engine.publish_all(messages.collect()).await.pop();
    }
    assert_eq!(last.expect("published").outcome().await, Ok(Some(20)), "the last history publish");
    assert!(holds_within(WAIT, || async { b.inbox.count() >= n }).await, "got {}", b.inbox.count());
    let expected: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(b.inbox.bodies(), expected, "each once, in the order published, across destinations");
    assert_eq!(b.inbox.offsets(), (1..=20).collect::<Vec<u64>>());
    // 20 history scripts, and for the 1,980 plain publishes at most one script per stretch (runs
    // taken together may join) and at least one between two history publishes (99 plain ones,
    // one run of 32 of them at least): a few dozen commands, where a PUBLISH each would be 1,980.
    assert_eq!(calls("publish").await - publish, 2000, "every message published once");
    let scripts = calls("evalsha").await - evalsha - 20;
    assert!((20..=stretches).contains(&scripts), "{scripts} calls for {stretches} stretches");
}

/// Redis losing its script cache under a running node (a restart or failover it has not seen)
/// costs no message: a run's PUBLISH_MANY and history scripts fail with NOSCRIPT and are run again
/// with their text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_a_lost_script_cache() {
    let server = Redis::start_ephemeral().await;
    let rules = |c: &mut Config| c.history = vec![history("/topic/h", 100, None)];
    let a = node(&server, "node-a", rules).await;
    let b = node(&server, "node-b", rules).await;
    watch_plain_and_history(&b).await;
    let run = |from: usize| {
        let messages = (from..from + 4)
            .map(|i| message(if i % 4 == 3 { "/topic/h" } else { "/topic/p" }, i.to_string()));
        a.engine.publish_all(messages.collect())
    };
    // The first run loads the scripts; then Redis forgets them.
    let first = run(0).await.pop().expect("published").outcome().await;
    assert_eq!(first, Ok(Some(1)));
    raw(&a, "SCRIPT", "", &["FLUSH"]).await;
    let mut outcomes = Vec::new();
    for published in run(4).await {
        outcomes.push(published.outcome().await);
    }
    assert_eq!(outcomes, [Ok(None), Ok(None), Ok(None), Ok(Some(2))]);
    assert!(holds_within(WAIT, || async { b.inbox.count() >= 8 }).await, "got {}", b.inbox.count());
    let expected: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    assert_eq!(b.inbox.bodies(), expected);
}

/// Has `node` watch `/topic/p` (plain) and `/topic/h` (history, in the tests that publish to both).
async fn watch_plain_and_history(node: &Node) {
    node.engine.watch("/topic/p").wait().await.expect("watch");
    node.engine.watch("/topic/h").wait().await.expect("watch");
}

/// Has `to` watch `/topic/p` and `/topic/h`, publishes `n` messages from `from` (every
/// `every`-th to the history topic, the last one included) without waiting for Redis, and checks
/// that `to` got each once, in the order taken.
async fn publish_interleaved(from: &Node, to: &Node, n: usize, every: usize) {
    watch_plain_and_history(to).await;
    let mut last = None;
    for i in 0..n {
        let destination = if i % every == every - 1 { "/topic/h" } else { "/topic/p" };
        // Dropped at once but the last: the engine has taken each in order.
        last = Some(from.engine.publish(message(destination, i.to_string())).await);
    }
    let history = (n / every) as u64;
    assert_eq!(last.expect("published").outcome().await, Ok(Some(history)), "the last history publish");
    assert!(holds_within(WAIT, || async { to.inbox.count() >= n }).await, "got {}", to.inbox.count());
    let expected: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(to.inbox.bodies(), expected, "each once, in the order taken, across destinations");
    assert_eq!(to.inbox.offsets(), (1..=history).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_arrive_together_are_handed_over_together_in_order() {
    let server = Redis::start_ephemeral().await;
    let rules = |c: &mut Config| c.history = vec![history("/topic/h", 1000, None)];
    let a = node(&server, "node-a", rules).await;
    // Each hand-over takes 2 ms: whatever arrives meanwhile waits in fred's buffer, and the
    // next hand-over must take all of it rather than one message at a time.
    let slow = Collect { delay: Some(Duration::from_millis(2)), ..Collect::default() };
    let b =
        node_with(&server, "node-b", rules, slow, Tuning { connect_wait: WAIT, ..Tuning::default() }).await;
    publish_interleaved(&a, &b, 500, 50).await;
    let batches = b.inbox.batches.lock().expect("lock").clone();
    assert!(batches.len() < 100, "500 messages in {} hand-overs: {batches:?}", batches.len());
    assert!(batches.iter().all(|&n| n <= pubsub::HAND_OVER_MAX), "hand-overs are bounded: {batches:?}");
}

/// Redis only: a history topic's keys expire after three times its TTL (what both engines do
/// with history is in `engine/contract.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keys_expire_after_three_times_their_ttl() {
    let server = Redis::start_ephemeral().await;
    let rules =
        |c: &mut Config| c.history = vec![history("/topic/ttl", 10, Some(Duration::from_millis(300)))];
    let a = node(&server, "node-a", rules).await;
    a.engine.publish(message("/topic/ttl", "t1")).await.outcome().await.expect("publish");
    let pttl = raw(&a, "PTTL", "stampede:{/topic/ttl}:log", &["stampede:{/topic/ttl}:log"]).await;
    assert!(pttl.as_i64().is_some_and(|ms| ms > 300 && ms <= 900), "{pttl:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_of_every_varint_width_survive_the_lua_script() {
    let server = Redis::start_ephemeral().await;
    let rules = |c: &mut Config| c.history = vec![history("/topic/*", 100, None)];
    let a = node(&server, "node-a", rules).await;
    let b = node(&server, "node-b", rules).await;
    b.engine.watch("/topic/w").wait().await.expect("watch");
    let seq = "stampede:{/topic/w}:seq";
    let mut expected = Vec::new();
    for start in [0u64, 249, 250, 65_534, 65_535, 4_294_967_294, 4_294_967_295, 1 << 40] {
        raw(&a, "SET", seq, &[seq, &start.to_string()]).await;
        let offset =
            a.engine.publish(message("/topic/w", start.to_string())).await.outcome().await.expect("publish");
        assert_eq!(offset, Some(start + 1));
        expected.push(start + 1);
    }
    assert!(
        holds_within(WAIT, || async { b.inbox.count() == expected.len() }).await,
        "{:?}",
        b.inbox.offsets()
    );
    assert_eq!(b.inbox.offsets(), expected, "live envelopes carry the script's offsets");
    let h = a.engine.history("/topic/w", 0).await.expect("history");
    assert_eq!(h.messages.iter().filter_map(|m| m.offset).collect::<Vec<_>>(), expected);
    // The stored envelope is the Rust encoding with the offset patched in, byte for byte.
    let stored =
        raw(&a, "XRANGE", "stampede:{/topic/w}:log", &["stampede:{/topic/w}:log", "-", "+", "COUNT", "1"])
            .await;
    let fields = stored.into_array().remove(0).into_array().remove(1).into_array();
    let mut sent = message("/topic/w", "0");
    sent.offset = None;
    let patched = envelope::with_offset(&envelope::encode_without_offset("node-a", &sent), 1);
    assert_eq!(fields[1].as_bytes(), Some(&patched[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_live_delivery_drops_duplicates_and_fills_gaps_in_order() {
    let server = Redis::start_ephemeral().await;
    let rules = |c: &mut Config| c.history = vec![history("/topic/h", 100, None)];
    let a = node(&server, "node-a", rules).await;
    let b = node(&server, "node-b", rules).await;
    a.engine.publish(message("/topic/h", "before")).await.outcome().await.expect("publish");
    b.engine.watch("/topic/h").wait().await.expect("watch");
    for i in 2..=3 {
        a.engine.publish(message("/topic/h", i.to_string())).await.outcome().await.expect("publish");
    }
    assert!(holds_within(WAIT, || async { b.inbox.count() == 2 }).await);

    // Offset 4 is stored but its live copy is lost (published on a channel nobody hears).
    let lost = envelope::encode_without_offset("node-a", &message("/topic/h", "4"));
    let keys = &a.engine.inner.keys;
    let (seq, log) = (keys.seq("/topic/h"), keys.log("/topic/h"));
    let args =
        vec![Value::Bytes(lost.into()), Value::Integer(100), Value::Integer(0), Value::from("nowhere")];
    scripts::HISTORY_PUBLISH.run(&a.engine.inner.client, &[&seq, &log], args).await.expect("script");
    a.engine.publish(message("/topic/h", "5")).await.outcome().await.expect("publish");
    assert!(holds_within(WAIT, || async { b.inbox.count() == 4 }).await, "{:?}", b.inbox.bodies());
    assert_eq!(b.inbox.offsets(), [2, 3, 4, 5], "the gap is filled before 5 is delivered");

    // A copy of an envelope already delivered is dropped.
    let mut again = message("/topic/h", "5");
    again.offset = Some(5);
    let channel = keys.channel("/topic/h");
    raw(&a, "PUBLISH", "", &[&channel, &String::from_utf8_lossy(&envelope::encode("x", &again))]).await;
    a.engine.publish(message("/topic/h", "6")).await.outcome().await.expect("publish");
    assert!(holds_within(WAIT, || async { b.inbox.count() >= 5 }).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.inbox.offsets(), [2, 3, 4, 5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_refills_history_from_the_stream() {
    let server = Redis::start_ephemeral().await;
    let rules = |c: &mut Config| c.history = vec![history("/topic/fast", 1000, None)];
    let a = node(&server, "node-a", rules).await;
    let slow = Collect { delay: Some(Duration::from_millis(2)), ..Collect::default() };
    let tuning = Tuning { broadcast_capacity: 16, connect_wait: Duration::from_secs(5) };
    let b = node_with(&server, "node-b", rules, slow, tuning).await;
    b.engine.watch("/topic/fast").wait().await.expect("watch");
    let publishes = (0..300).map(|i| a.engine.publish(message("/topic/fast", i.to_string())));
    for published in futures_util::future::join_all(publishes).await {
        published.outcome().await.expect("publish");
    }
    assert!(
        holds_within(Duration::from_secs(20), || async { b.inbox.count() >= 300 }).await,
        "{}",
        b.inbox.count()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.inbox.offsets(), (1..=300).collect::<Vec<_>>(), "every offset once, in order");
    assert!(counter(&b.metrics, "engine_events_total{event=\"lagged\"}") > 0, "the small buffer lagged");
    assert!(counter(&b.metrics, "engine_events_total{event=\"recovered\"}") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_entries_go_to_exactly_one_node_and_come_back_when_released() {
    let server = Redis::start_ephemeral().await;
    let a = node(&server, "node-a", |_| {}).await;
    let b = node(&server, "node-b", |_| {}).await;
    a.engine.watch("/queue/q").wait().await.expect("watch");
    b.engine.watch("/queue/q").wait().await.expect("watch");
    for i in 0..10 {
        a.engine.enqueue(message("/queue/q", i.to_string())).await.outcome().await.expect("enqueue");
    }
    assert!(
        holds_within(WAIT, || async { b.inbox.was_woken("/queue/q") }).await,
        "B is told entries are ready"
    );

    let (got_a, got_b) = tokio::join!(a.engine.fetch("/queue/q", 10), b.engine.fetch("/queue/q", 10));
    let (got_a, got_b) = (got_a.expect("fetch"), got_b.expect("fetch"));
    assert_eq!(got_a.len() + got_b.len(), 10, "A {} + B {}", got_a.len(), got_b.len());
    let ids: HashSet<EntryId> = got_a.iter().chain(&got_b).map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 10, "no entry went to both nodes");
    let bodies: HashSet<String> =
        got_a.iter().chain(&got_b).map(|e| String::from_utf8_lossy(&e.message.body).into_owned()).collect();
    assert_eq!(bodies, (0..10).map(|i| i.to_string()).collect());
    assert!(got_a.iter().chain(&got_b).all(|e| e.redeliveries == 0 && &*e.message.destination == "/queue/q"));
    assert!(a.engine.fetch("/queue/q", 10).await.expect("fetch").is_empty());

    // A's entries were seen by a client; B's were not.
    let a_ids: Vec<EntryId> = got_a.iter().map(|e| e.id.clone()).collect();
    let b_ids: Vec<EntryId> = got_b.iter().map(|e| e.id.clone()).collect();
    a.engine.release("/queue/q", &a_ids, true).await.expect("release");
    b.engine.release("/queue/q", &b_ids, false).await.expect("release");
    let again = b.engine.fetch("/queue/q", 100).await.expect("fetch");
    assert_eq!(again.len(), 10);
    let a_bodies: HashSet<Bytes> = got_a.iter().map(|e| e.message.body.clone()).collect();
    for entry in &again {
        let expected = if a_bodies.contains(&entry.message.body) { 1 } else { 0 };
        assert_eq!(entry.redeliveries, expected, "{:?}", entry.message.body);
    }

    let all: Vec<EntryId> = again.iter().map(|e| e.id.clone()).collect();
    b.engine.ack("/queue/q", &all).await.expect("ack");
    assert!(b.engine.fetch("/queue/q", 100).await.expect("fetch").is_empty());
    // An ACK is written by the publishing task, not waited for: deleted soon after.
    let key = "stampede:{/queue/q}:q";
    let deleted =
        holds_within(WAIT, || async { raw(&b, "XLEN", key, &[key]).await.as_u64() == Some(0) }).await;
    assert!(deleted, "acknowledged entries are deleted");
    assert!(b.engine.inner.in_flight.lock().expect("lock").is_empty());

    // Every wait for Redis is observed, under the command's or the script's name.
    let observed = |node: &Node, command: &str| {
        counter(&node.metrics, &format!("redis_command_duration_seconds_count{{command=\"{command}\"}}"))
    };
    assert!(observed(&a, "pipeline") >= 1, "the enqueues went as pipelines");
    assert!(observed(&b, "xreadgroup") >= 3, "each fetch is an XREADGROUP");
    assert!(observed(&a, "release") + observed(&b, "release") >= 1, "one of them held entries");
    assert!(observed(&b, "pipeline") >= 1, "the ACKs went as pipelines");
    assert_eq!(observed(&b, "ack"), 0, "no ACK waited on its own");
    assert_eq!(observed(&b, "publish_many"), 0, "no topic was published to");
}

/// Redis only: the engine reads queue depths from Redis (ready entries, not those in flight),
/// and settled entries (dead-lettered ones included) leave the stream. What both engines do
/// with the bound and dead letters is in `engine/contract.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depths_are_read_from_redis_and_settled_entries_leave_the_stream() {
    let server = Redis::start_ephemeral().await;
    let a = node(&server, "node-a", |c| {
        c.queues.max_length = 3;
        c.queues.max_deliveries = 2;
    })
    .await;
    for i in 0..5 {
        a.engine.enqueue(message("/queue/b", i.to_string())).await.outcome().await.expect("enqueue");
    }
    super::queues::read_depths(&a.engine.inner).await;
    assert_eq!(a.engine.queue_depths(), [("/queue/b".to_owned(), 3)]);
    assert_eq!(a.engine.fetch("/queue/b", 10).await.expect("fetch").len(), 3);
    for i in 5..8 {
        a.engine.enqueue(message("/queue/b", i.to_string())).await.outcome().await.expect("enqueue");
    }
    super::queues::read_depths(&a.engine.inner).await;
    assert_eq!(a.engine.queue_depths(), [("/queue/b".to_owned(), 3)], "in-flight entries are not ready");

    a.engine.enqueue(message("/queue/d", "poison")).await.outcome().await.expect("enqueue");
    for _ in 0..2 {
        let entry = a.engine.fetch("/queue/d", 1).await.expect("fetch");
        a.engine.release("/queue/d", &[entry[0].id.clone()], true).await.expect("release");
    }
    assert_eq!(a.engine.fetch("/queue/d.dlq", 10).await.expect("fetch").len(), 1, "dead-lettered");
    let len = raw(&a, "XLEN", "stampede:{/queue/d}:q", &["stampede:{/queue/d}:q"]).await;
    assert_eq!(len.as_u64(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_dead_node_are_reclaimed_as_redeliveries_but_a_live_nodes_are_not() {
    let server = Redis::start_ephemeral().await;
    let a = node(&server, "node-a", |_| {}).await;
    let fast = |c: &mut Config| c.queues.reclaim_after = Duration::from_millis(600);
    let b = node(&server, "node-b", fast).await;
    b.engine.watch("/queue/r").wait().await.expect("watch");
    for i in 0..3 {
        b.engine.enqueue(message("/queue/r", i.to_string())).await.outcome().await.expect("enqueue");
    }
    let taken = a.engine.fetch("/queue/r", 10).await.expect("fetch");
    assert_eq!(taken.len(), 3);
    drop(a); // dies holding them: no refresh, no ack

    let mut reclaimed = Vec::new();
    let deadline = Instant::now() + WAIT;
    while reclaimed.len() < 3 && Instant::now() < deadline {
        reclaimed.extend(b.engine.fetch("/queue/r", 10).await.expect("fetch"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reclaimed.len(), 3, "B reclaimed A's entries");
    assert!(reclaimed.iter().all(|e| e.redeliveries == 1));
    assert!(b.inbox.was_woken("/queue/r"));
    let key = "stampede:{/queue/r}:q";
    let deadline = Instant::now() + WAIT;
    let mut consumers = Vec::new();
    while Instant::now() < deadline {
        let reply = raw(&b, "XINFO", key, &["CONSUMERS", key, "stampede"]).await;
        consumers = reply
            .into_array()
            .into_iter()
            .filter_map(|c| c.into_array().get(1).and_then(Value::as_string))
            .collect::<Vec<_>>();
        if consumers == ["node-b"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(consumers, ["node-b"], "the dead node's consumer is forgotten");

    // B is alive: it refreshes what it holds, so neither it nor C takes them back.
    let c = node(&server, "node-c", fast).await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(c.engine.fetch("/queue/r", 10).await.expect("fetch").is_empty());
    assert!(b.engine.fetch("/queue/r", 10).await.expect("fetch").is_empty());
    let ids: Vec<EntryId> = reclaimed.iter().map(|e| e.id.clone()).collect();
    b.engine.ack("/queue/r", &ids).await.expect("ack");
    let deleted =
        holds_within(WAIT, || async { raw(&b, "XLEN", key, &[key]).await.as_u64() == Some(0) }).await;
    assert!(deleted, "acknowledged entries are deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_lists_live_nodes() {
    let server = Redis::start_ephemeral().await;
    let a = node(&server, "node-a", |_| {}).await;
    let b = node(&server, "node-b", |c| c.redis_prefix = "stampede".to_owned()).await;
    let mut nodes = Vec::new();
    let deadline = Instant::now() + WAIT;
    while nodes.len() < 2 && Instant::now() < deadline {
        nodes = a.engine.nodes().await.expect("nodes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(ids, ["node-a", "node-b"]);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    assert!(nodes.iter().all(|n| n.last_seen_ms + 5_000 >= now && n.connections == 0));

    b.engine.close().await;
    let ids: Vec<String> = a.engine.nodes().await.expect("nodes").into_iter().map(|n| n.node_id).collect();
    assert_eq!(ids, ["node-a"], "a closed node leaves the registry");

    // Another prefix is another cluster.
    let other = node(&server, "node-x", |c| c.redis_prefix = "other".to_owned()).await;
    let mut ids = Vec::new();
    let deadline = Instant::now() + WAIT;
    while ids.is_empty() && Instant::now() < deadline {
        ids = other.engine.nodes().await.expect("nodes").into_iter().map(|n| n.node_id).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ids, ["node-x"]);
    let keys = raw(&other, "KEYS", "", &["other:*"]).await.into_array();
    assert!(keys.iter().all(|k| k.as_str().is_some_and(|k| k.starts_with("other:"))) && !keys.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_and_watches_survive_a_restart() {
    let server = Redis::start_ephemeral().await;
    let rules = |c: &mut Config| c.history = vec![history("/topic/h", 100, None)];
    let a = node(&server, "node-a", rules).await;
    let b = node(&server, "node-b", rules).await;
    b.engine.watch("/topic/t").wait().await.expect("watch");
    b.engine.watch("/topic/h").wait().await.expect("watch");
    a.engine.publish(message("/topic/h", "h1")).await.outcome().await.expect("publish");
    a.engine.publish(message("/topic/h", "h2")).await.outcome().await.expect("publish");
    assert!(holds_within(WAIT, || async { b.inbox.count() == 2 }).await);

    server.kill();
    assert!(holds_within(WAIT, || async { !a.engine.is_ready() && !b.engine.is_ready() }).await);
    assert!(matches!(
        a.engine.publish(message("/topic/t", "lost")).await.outcome().await,
        Err(EngineError::Unavailable(_))
    ));
    assert!(matches!(b.engine.watch("/topic/later").wait().await, Err(EngineError::Unavailable(_))));

    server.restart().await; // same port, empty
    assert!(
        holds_within(Duration::from_secs(15), || async { a.engine.is_ready() && b.engine.is_ready() }).await
    );
    // Re-subscribing follows the reconnection; publish until the first one arrives.
    let deadline = Instant::now() + WAIT;
    while !b.inbox.bodies().iter().any(|m| m == "t-again") && Instant::now() < deadline {
        a.engine.publish(message("/topic/t", "t-again")).await.outcome().await.expect("publish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.inbox.bodies().iter().any(|m| m == "t-again"), "the watched topic delivers again");
    // Redis came back empty: the history topic restarts at offset 1 and is still delivered.
    assert_eq!(a.engine.publish(message("/topic/h", "h-new")).await.outcome().await, Ok(Some(1)));
    assert!(
        holds_within(WAIT, || async { b.inbox.bodies().iter().any(|m| m == "h-new") }).await,
        "{:?}",
        b.inbox.bodies()
    );
    // The watch that failed while Redis was away was kept and is live now.
    a.engine.publish(message("/topic/later", "l")).await.outcome().await.expect("publish");
    assert!(holds_within(WAIT, || async { b.inbox.bodies().iter().any(|m| m == "l") }).await);
    assert!(counter(&b.metrics, "engine_events_total{event=\"reconnected\"}") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_without_redis_and_becomes_ready_when_it_appears() {
    let server = Redis::reserve();
    let tuning = Tuning { connect_wait: Duration::from_millis(300), ..Tuning::default() };
    let started = Instant::now();
    let a = node_with(&server, "node-a", |_| {}, Collect::default(), tuning.clone()).await;
    assert!(started.elapsed() < Duration::from_secs(2), "start-up does not wait for Redis");
    assert!(!a.engine.is_ready());
    assert!(matches!(
        a.engine.publish(message("/topic/t", "x")).await.outcome().await,
        Err(EngineError::Unavailable(_))
    ));
    assert!(matches!(
        a.engine.enqueue(message("/queue/q", "x")).await.outcome().await,
        Err(EngineError::Unavailable(_))
    ));
    assert!(matches!(a.engine.history("/topic/t", 0).await, Ok(h) if !h.complete));
    assert!(matches!(a.engine.watch("/topic/t").wait().await, Err(EngineError::Unavailable(_))));

    server.restart().await;
    assert!(holds_within(Duration::from_secs(15), || async { a.engine.is_ready() }).await);
    let b = node(&server, "node-b", |_| {}).await;
    let deadline = Instant::now() + WAIT;
    while a.inbox.count() == 0 && Instant::now() < deadline {
        b.engine.publish(message("/topic/t", "hello")).await.outcome().await.expect("publish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.inbox.count() > 0, "the watch asked for while Redis was away is live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_is_a_clear_start_up_error() {
    // The configuration refuses it first; a Config made in code meets the engine's own check.
    let url = "rediss+sentinel://user:secret@s1:26379";
    let config = Config { redis_url: Some(url.to_owned()), ..Config::default() };
    let error =
        RedisEngine::connect(Arc::new(config), Arc::new(Metrics::new())).await.err().expect("refused");
    let text = error.to_string();
    assert!(text.contains("name the Sentinel service") && !text.contains("secret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_makes_the_node_unready_until_it_answers_again() {
    let server = Redis::start_ephemeral().await;
    let a = node(&server, "node-a", |_| {}).await;
    assert!(holds_within(WAIT, || async { a.engine.is_ready() }).await);
    // Connections stay open but nothing answers: only the probes can tell.
    server.signal("STOP");
    let unready = holds_within(Duration::from_secs(10), || async { !a.engine.is_ready() }).await;
    server.signal("CONT");
    assert!(unready, "a silent Redis must make the node unready");
    assert!(
        holds_within(Duration::from_secs(15), || async { a.engine.is_ready() }).await,
        "ready again once Redis answers"
    );
    a.engine.watch("/topic/t").wait().await.expect("watch after recovery");
    a.engine.publish(message("/topic/t", "back")).await.outcome().await.expect("publish after recovery");
    assert!(holds_within(WAIT, || async { a.inbox.count() == 1 }).await, "delivery works after recovery");
}

/// Lifetimes cost no command per message: a SEND to a queue with a lifetime is the same one
/// ENQUEUE call as to a queue without (its last use is the stream's last id), an ACK the same ACK
/// call, and the sweep only looks at queues that are due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_lifetimes_add_no_command_per_message() {
    let server = Redis::start_ephemeral().await;
    let rules = |c: &mut Config| {
        let lifetime = QueueLifetime { expires: Some(Duration::from_secs(60)), auto_delete: true };
        c.queue_rules = vec![QueueRule { pattern: "/queue/life".into(), lifetime }];
    };
    let a = &node(&server, "node-a", rules).await;
    let commands = move || async move {
        let info = raw(a, "INFO", "", &["stats"]).await;
        let info = info.as_string().expect("INFO is text");
        info.lines()
            .find_map(|line| line.strip_prefix("total_commands_processed:"))
            .map_or(0, |n| n.trim().parse::<u64>().expect("a count"))
    };
    // Sends, then fetches and acknowledges everything; the commands Redis ran meanwhile.
    let round = move |queue: &'static str, n: usize| async move {
        let before = commands().await;
        for i in 0..n {
            a.engine.enqueue(message(queue, i.to_string())).await.outcome().await.expect("enqueue");
        }
        let mut got = 0;
        while got < n {
            let entries = a.engine.fetch(queue, 100).await.expect("fetch");
            let ids: Vec<EntryId> = entries.iter().map(|e| e.id.clone()).collect();
            a.engine.ack(queue, &ids).await.expect("ack");
            got += ids.len();
        }
        commands().await - before
    };
    for queue in ["/queue/plain", "/queue/life"] {
        a.engine.watch(queue).wait().await.expect("watch");
        // The first message creates and registers the queue: not counted.
        round(queue, 1).await;
    }
    let n = 500;
    let plain = round("/queue/plain", n).await;
    let life = round("/queue/life", n).await;
    eprintln!("Redis commands for {n} messages: {plain} without a lifetime, {life} with one");
    assert!(plain >= n as u64, "one ENQUEUE each at least: {plain}");
    // Heartbeats and sweeps may land in either window: a handful of commands, not one a message.
    assert!(life <= plain + 20, "{life} commands with a lifetime, {plain} without");
}

/// Queue writes are batched across messages and sessions: enqueues taken together go as one
/// ENQUEUE call (one notification each call), ACKs as one XDEL and one XACK per queue per pipeline, and
/// nothing is lost, duplicated or reordered on the way; a release waits for the ACKs before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_enqueues_and_acks_go_as_few_calls_in_order() {
    let server = Redis::start_ephemeral().await;
    let a = node(&server, "node-a", |_| {}).await;
    let b = node(&server, "node-b", |_| {}).await;
    // Calls of `name` Redis has run, those run by scripts included.
    let calls = |name: &'static str| {
        let a = &a;
        async move {
            let info = raw(a, "INFO", "", &["commandstats"]).await;
            let info = info.as_string().expect("INFO is text");
            let prefix = format!("cmdstat_{name}:calls=");
            info.lines()
                .find_map(|line| line.strip_prefix(prefix.as_str()))
                .and_then(|rest| rest.split(',').next())
                .map_or(0, |n| n.parse::<u64>().expect("calls"))
        }
    };
    b.engine.watch("/queue/batch").wait().await.expect("watch");
    a.engine.enqueue(message("/queue/batch", "first")).await.outcome().await.expect("enqueue");
    let first = b.engine.fetch("/queue/batch", 1).await.expect("fetch");
    b.engine.ack("/queue/batch", &first.iter().map(|e| e.id.clone()).collect::<Vec<_>>()).await.expect("ack");
    let (xadd, publish, xack) = (calls("xadd").await, calls("publish").await, calls("xack").await);
    let scripts = calls("evalsha").await;

    // Enqueues nobody waits for, one at a time as sessions hand them over.
    let n = 2000;
    let mut sent = Vec::new();
    for i in 0..n {
        sent.push(a.engine.enqueue(message("/queue/batch", i.to_string())).await);
    }
    for pending in sent {
        assert_eq!(pending.outcome().await, Ok(None), "stored");
    }
    assert_eq!(calls("xadd").await - xadd, n as u64, "each appended once");
    // Script calls include the odd heartbeat's; PUBLISHes are the ENQUEUE calls' notifications.
    let enqueues = calls("evalsha").await - scripts;
    let notices = calls("publish").await - publish;
    eprintln!("{n} enqueues: {enqueues} script calls, {notices} notifications");
    assert!(enqueues <= n as u64 / 4, "{enqueues} script calls for {n} enqueues");
    assert!((1..=enqueues).contains(&notices), "one notification per ENQUEUE call: {notices}");

    // Fetched in order, then acknowledged one ACK per entry, as a consumer does.
    let mut got = Vec::new();
    for _ in 0..100 {
        let entries = b.engine.fetch("/queue/batch", 100).await.expect("fetch");
        if entries.is_empty() {
            break;
        }
        for entry in &entries {
            b.engine.ack("/queue/batch", std::slice::from_ref(&entry.id)).await.expect("ack");
        }
        got.extend(entries.iter().map(|e| String::from_utf8_lossy(&e.message.body).into_owned()));
    }
    let expected: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(got, expected, "each once, in the order enqueued");
    let key = "stampede:{/queue/batch}:q";
    let deleted =
        holds_within(WAIT, || async { raw(&b, "XLEN", key, &[key]).await.as_u64() == Some(0) }).await;
    assert!(deleted, "acknowledged entries are deleted");
    let acks = calls("xack").await - xack;
    eprintln!("{n} ACKs: {acks} XACKs");
    assert!(acks <= n as u64 / 4, "{acks} XACKs for {n} ACKs");

    // An ACK then a release of the same entry (a release never overtakes an ACK): nothing back.
    a.engine.enqueue(message("/queue/batch", "last")).await.outcome().await.expect("enqueue");
    let last = b.engine.fetch("/queue/batch", 1).await.expect("fetch");
    let ids: Vec<EntryId> = last.iter().map(|e| e.id.clone()).collect();
    b.engine.ack("/queue/batch", &ids).await.expect("ack");
    b.engine.release("/queue/batch", &ids, true).await.expect("release");
    assert!(b.engine.fetch("/queue/batch", 10).await.expect("fetch").is_empty(), "acknowledged stays so");
}

/// An ENQUEUE call with a marker runs once: called again with the same marker (what the
/// publisher does when the first call's reply was lost), it stores nothing and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_call_with_the_same_marker_stores_once() {
    let server = Redis::start_ephemeral().await;
    let a = node(&server, "node-a", |_| {}).await;
    let inner = &a.engine.inner;
    let (queue, key) = ("/queue/twice", "stampede:{/queue/twice}:q");
    let sent = inner.keys.sent(queue);
    let call = |marker: &'static str, bodies: &[&'static str]| {
        let mut args = vec![Value::Integer(1000), Value::from(inner.keys.channel(queue)), marker.into()];
        args.extend(bodies.iter().map(|b| Value::from(*b)));
        let keys = [key, sent.as_str()];
        async move { inner.script(&scripts::ENQUEUE, &keys, args).await.expect("ENQUEUE runs").into_array() }
    };
    let first = call("test.1", &["a", "b"]).await;
    assert_eq!(first.len(), 2, "the first call stores: {first:?}");
    let again = call("test.1", &["a", "b"]).await;
    assert_eq!(again.get(2).and_then(Value::as_u64), Some(1), "the second says it ran before: {again:?}");
    assert_eq!(raw(&a, "XLEN", key, &[key]).await.as_u64(), Some(2), "each envelope stored once");
    let ttl = raw(&a, "PTTL", &sent, &[&sent]).await.as_i64().expect("a ttl");
    let marked = scripts::ENQUEUE_MARKED_FOR.as_millis() as i64;
    assert!((marked - 5_000..=marked).contains(&ttl), "the markers expire on their own: {ttl} ms");
    // Another marker is another call; no marker, no check.
    call("test.2", &["c"]).await;
    call("", &["d"]).await;
    call("", &["d"]).await;
    assert_eq!(raw(&a, "XLEN", key, &[key]).await.as_u64(), Some(5));
    assert_eq!(raw(&a, "ZCARD", &sent, &[&sent]).await.as_u64(), Some(2), "one marker a call");
}

/// An enqueue whose reply does not come in time (Redis stalled past the command timeout: the
/// call may have run or not) is sent again with its marker, and once Redis answers, it is stored
/// once and its SENDs succeed: the stall costs a late RECEIPT, not an ERROR nor a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_cut_off_by_a_stall_is_sent_again_and_stored_once() {
    let server = Redis::start_ephemeral().await;
    let a = node(&server, "node-a", |_| {}).await;
    let (queue, key) = ("/queue/once", "stampede:{/queue/once}:q");
    // Creates and registers the queue, and loads the scripts.
    a.engine.enqueue(message(queue, "first")).await.outcome().await.expect("enqueue");
    server.signal("STOP");
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(a.engine.enqueue(message(queue, i.to_string())).await);
    }
    // The calls time out (the first send's bytes wait in the stopped server's socket), and are
    // sent again behind them.
    tokio::time::sleep(super::COMMAND_TIMEOUT + Duration::from_millis(1500)).await;
    server.signal("CONT");
    for pending in sent {
        assert_eq!(pending.outcome().await, Ok(None), "stored, late");
    }
    let resent = counter(&a.metrics, "engine_events_total{event=\"resent\"}");
    assert!(resent >= 1, "the enqueue was sent again: {resent}");
    assert_eq!(raw(&a, "XLEN", key, &[key]).await.as_u64(), Some(4), "each message stored once");
    a.engine.watch(queue).wait().await.expect("watch");
    let bodies: Vec<String> = a
        .engine
        .fetch(queue, 10)
        .await
        .expect("fetch")
        .iter()
        .map(|e| String::from_utf8_lossy(&e.message.body).into_owned())
        .collect();
    assert_eq!(bodies, ["first", "0", "1", "2"], "in order, once each");
}

// === presence ===

/// The presence events (`x-presence`, session) a node was handed, in order.
fn presence_events(node: &Node) -> Vec<(String, String)> {
    node.inbox
        .messages
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|m| {
            let header = |name: &str| m.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
            Some((header("x-presence")?, header("x-presence-session")?))
        })
        .collect()
}

fn presence_rule(c: &mut Config) {
    c.presence = vec!["/topic/room".to_owned()];
}

fn member(user: Option<&str>, session: &str, node: &str) -> crate::engine::Member {
    crate::engine::Member {
        user: user.map(str::to_owned),
        session: session.to_owned(),
        node: node.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reads_keep_live_nodes_and_a_dead_nodes_members_leave_once() {
    let server = Redis::start_ephemeral().await;
    let a = node(&server, "node-a", presence_rule).await;
    let b = node(&server, "node-b", presence_rule).await;
    for n in [&a, &b] {
        n.engine.watch("/presence/topic/room").wait().await.expect("watch");
    }
    let (ann, bob) = (member(Some("ann"), "s1", "node-a"), member(Some("bob"), "s2", "node-b"));
    a.engine.presence_join("/topic/room", ann.clone()).await.expect("join");
    b.engine.presence_join("/topic/room", bob.clone()).await.expect("join");

    // node-x beats once, now, holding carl, then dies without a word (as kill -9 leaves it).
    let now = super::registry::now_ms().to_string();
    raw(
        &a,
        "HSET",
        "stampede:{/topic/room}:presence",
        &["stampede:{/topic/room}:presence", "node-x\ts9", "carl"],
    )
    .await;
    raw(&a, "SADD", "stampede:node:node-x:presence", &["stampede:node:node-x:presence", "/topic/room"]).await;
    raw(&a, "ZADD", "stampede:nodes", &["stampede:nodes", &now, "node-x"]).await;
    let died = Instant::now();
    let carl = member(Some("carl"), "s9", "node-x");
    let everyone = vec![ann.clone(), bob.clone(), carl];
    assert_eq!(a.engine.presence("/topic/room").await, Ok(Some(everyone)), "node-x is live for now");

    // Reads drop it once its heartbeat is NODE_TTL old; its leave event follows at a heartbeat.
    let dropped = holds_within(WAIT, || async {
        b.engine.presence("/topic/room").await.is_ok_and(|m| m.is_some_and(|m| m.len() == 2))
    })
    .await;
    let read_gone = died.elapsed();
    assert!(dropped, "{:?}", b.engine.presence("/topic/room").await);
    assert!(read_gone >= super::registry::NODE_TTL - Duration::from_millis(100), "{read_gone:?}");
    assert_eq!(a.engine.presence("/topic/room").await, Ok(Some(vec![ann.clone(), bob.clone()])));
    let leave = ("leave".to_owned(), "s9".to_owned());
    let left = holds_within(WAIT, || async {
        presence_events(&a).contains(&leave) && presence_events(&b).contains(&leave)
    })
    .await;
    let event_after = died.elapsed();
    assert!(left, "a: {:?}, b: {:?}", presence_events(&a), presence_events(&b));
    assert!(event_after < super::registry::NODE_TTL + Duration::from_secs(3), "{event_after:?}");
    // One node reaped it: one leave event each node was handed, its field and set gone.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for n in [&a, &b] {
        assert_eq!(presence_events(n).iter().filter(|e| **e == leave).count(), 1, "{:?}", presence_events(n));
    }
    let fields =
        raw(&a, "HKEYS", "stampede:{/topic/room}:presence", &["stampede:{/topic/room}:presence"]).await;
    let mut fields: Vec<String> = fields.into_array().iter().filter_map(Value::as_string).collect();
    fields.sort();
    assert_eq!(fields, ["node-a\ts1", "node-b\ts2"]);
    let set = raw(&a, "EXISTS", "stampede:node:node-x:presence", &["stampede:node:node-x:presence"]).await;
    assert_eq!(set.as_u64(), Some(0));
    eprintln!("a dead node left reads after {read_gone:?} and its leave events came after {event_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_node_and_a_restarted_one_leave_no_presence_behind() {
    let server = Redis::start_ephemeral().await;
    let a = node(&server, "node-a", presence_rule).await;
    a.engine.watch("/presence/topic/room").wait().await.expect("watch");
    let b = node(&server, "node-b", presence_rule).await;
    let bob = member(Some("bob"), "s2", "node-b");
    b.engine.presence_join("/topic/room", bob.clone()).await.expect("join");
    assert_eq!(a.engine.presence("/topic/room").await, Ok(Some(vec![bob])));
    b.engine.close().await;
    assert_eq!(a.engine.presence("/topic/room").await, Ok(Some(vec![])), "a closed node leaves");
    let left =
        holds_within(WAIT, || async { presence_events(&a).contains(&("leave".to_owned(), "s2".to_owned())) });
    assert!(left.await, "{:?}", presence_events(&a));

    // node-c's previous process left a member behind; the new one removes it when it starts.
    raw(
        &a,
        "HSET",
        "stampede:{/topic/room}:presence",
        &["stampede:{/topic/room}:presence", "node-c\told", ""],
    )
    .await;
    raw(&a, "SADD", "stampede:node:node-c:presence", &["stampede:node:node-c:presence", "/topic/room"]).await;
    let c = node(&server, "node-c", presence_rule).await;
    let left = holds_within(WAIT, || async {
        presence_events(&a).contains(&("leave".to_owned(), "old".to_owned()))
    });
    assert!(left.await, "{:?}", presence_events(&a));
    let anonymous = member(None, "new", "node-c");
    c.engine.presence_join("/topic/room", anonymous.clone()).await.expect("join");
    assert_eq!(a.engine.presence("/topic/room").await, Ok(Some(vec![anonymous])));
    let fields =
        raw(&a, "HGETALL", "stampede:{/topic/room}:presence", &["stampede:{/topic/room}:presence"]).await;
    let fields: Vec<String> = fields.into_array().iter().filter_map(Value::as_string).collect();
    assert_eq!(fields, ["node-c\tnew", ""], "an anonymous member is stored with an empty user");
}

/// Calls of each command since the last `CONFIG RESETSTAT`, from `INFO commandstats`.
async fn command_calls(node: &Node) -> std::collections::HashMap<String, u64> {
    let info = raw(node, "INFO", "", &["commandstats"]).await.as_string().expect("INFO text");
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// What docs/admin.md says presence costs: per join one HSET and one PUBLISH, per leave one HDEL
/// and one PUBLISH, one SADD and one SREM per destination and node, nothing for a destination no
/// pattern names. (The heartbeat's own HSET, one per ZADD, is subtracted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_costs_one_write_and_one_publish_per_join_and_leave() {
    let server = Redis::start_ephemeral().await;
    let a = node(&server, "node-a", presence_rule).await;
    // Past the start-up reconcile, which runs at the first heartbeat.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    raw(&a, "CONFIG", "", &["RESETSTAT"]).await;
    let members: Vec<_> = (0..200).map(|i| member(Some("ann"), &format!("s{i}"), "node-a")).collect();
    let joins = members.iter().map(|m| a.engine.presence_join("/topic/room", m.clone()));
    assert!(futures_util::future::join_all(joins).await.iter().all(Result::is_ok));
    assert_eq!(a.engine.presence("/topic/room").await.map(|m| m.map(|m| m.len())), Ok(Some(200)));
    let leaves = members.iter().map(|m| a.engine.presence_leave("/topic/room", m.clone()));
    assert!(futures_util::future::join_all(leaves).await.iter().all(Result::is_ok));
    // Not a presence destination: nothing.
    a.engine.presence_join("/topic/elsewhere", members[0].clone()).await.expect("join");
    let calls = command_calls(&a).await;
    let n = |name: &str| calls.get(name).copied().unwrap_or(0);
    assert_eq!(n("hset") - n("zadd"), 200, "{calls:?}");
    assert_eq!((n("hdel"), n("publish"), n("sadd"), n("srem")), (200, 400, 1, 1), "{calls:?}");
    assert_eq!(n("hgetall"), 1, "the one read: {calls:?}");
}

/// A node whose heartbeats stopped for the node TTL may have been taken for dead, its members
/// removed and their leaves published: at its next heartbeat it writes them again, with a join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_taken_for_dead_writes_its_members_again() {
    let server = Redis::start_ephemeral().await;
    let a = node(&server, "node-a", presence_rule).await;
    a.engine.watch("/presence/topic/room").wait().await.expect("watch");
    let ann = member(Some("ann"), "s1", "node-a");
    a.engine.presence_join("/topic/room", ann.clone()).await.expect("join");
    // As a reaper would after a long pause of node-a's heartbeats.
    raw(&a, "HDEL", "stampede:{/topic/room}:presence", &["stampede:{/topic/room}:presence", "node-a\ts1"])
        .await;
    let paused = std::time::Instant::now() - super::registry::NODE_TTL;
    *a.engine.inner.presence.tended.lock().expect("lock") = Some(paused);
    let back = holds_within(WAIT, || async {
        a.engine.presence("/topic/room").await == Ok(Some(vec![ann.clone()]))
    });
    assert!(back.await, "{:?}", a.engine.presence("/topic/room").await);
    let joined_again = holds_within(WAIT, || async {
        presence_events(&a).iter().filter(|e| **e == ("join".to_owned(), "s1".to_owned())).count() == 2
    });
    assert!(joined_again.await, "{:?}", presence_events(&a));
}

/// Redis restarted empty: once the node is connected again, its members are written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_written_again_after_redis_restarts_empty() {
    let server = Redis::start_ephemeral().await;
    let a = node(&server, "node-a", presence_rule).await;
    let ann = member(Some("ann"), "s1", "node-a");
    a.engine.presence_join("/topic/room", ann.clone()).await.expect("join");
    server.restart().await;
    let back = holds_within(WAIT, || async {
        a.engine.presence("/topic/room").await == Ok(Some(vec![ann.clone()]))
    });
    assert!(back.await, "{:?}", a.engine.presence("/topic/room").await);
}
