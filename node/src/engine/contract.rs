//! The engine contract: scenarios written once against the [`Engine`] trait and run on both
//! engines, the embedded memory engine and the Redis engine on a real `redis-server` (the test
//! kit's launcher, one server per test, no persistence). Each scenario is a test per engine:
//! `contract::<scenario>::memory` and `contract::<scenario>::redis`.
//!
//! Where the engines differ by design, the expectation comes from one place, the kit's
//! `EngineKind` methods (the node suites take theirs from there too). What only the Redis engine has (scripts, the envelope, failover, several nodes on
//! one Redis, PUBLISH_MANY grouping) stays in `redis/tests.rs`; the memory engine's hand-over
//! grouping stays in `memory.rs`.
//!
//! Here rather than in `node/tests/`: the scenarios drive the engine itself (no node, no hub),
//! which the crate's public API does not assemble; from inside the crate they reach it directly
//! and use only the kit's Redis launcher and waits, which involve no `stampede` types.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use stampede_testkit::http::metric;
use stampede_testkit::redis::{Resp, READY_ENTRIES};
use stampede_testkit::{holds_within, EngineKind as Kind, Redis};

use super::memory::MemoryEngine;
use super::redis::RedisEngine;
use super::{AnyEngine, Engine, EntryId, Inbox, Member, Message, QueueEntry};
use crate::config::{Config, HistoryRule};
use crate::metrics::Metrics;

const WAIT: Duration = Duration::from_secs(10);

stampede_testkit::variants! {
    topics_reach_a_watching_node_once_in_order: memory => Kind::Memory, redis => Kind::Redis;
    history_offsets_replay_and_completeness: memory => Kind::Memory, redis => Kind::Redis;
    queues_deliver_acknowledge_and_redeliver: memory => Kind::Memory, redis => Kind::Redis;
    queues_keep_a_bounded_backlog_and_dead_letter_after_max_deliveries:
        memory => Kind::Memory, redis => Kind::Redis;
    refused_entries_go_straight_to_the_dead_letter_queue: memory => Kind::Memory, redis => Kind::Redis;
    the_registry_lists_this_node: memory => Kind::Memory, redis => Kind::Redis;
    presence_records_members_and_publishes_each_join_and_leave_once: memory => Kind::Memory, redis => Kind::Redis;
}

// === the engines ===

/// An engine under test, attached to an inbox that records what it is handed.
struct Under {
    engine: AnyEngine,
    inbox: Arc<Record>,
    metrics: Arc<Metrics>,
    node_id: String,
    /// The Redis engine's server, stopped when the test ends.
    redis: Option<Redis>,
}

async fn start(kind: Kind, edit: impl FnOnce(&mut Config)) -> Under {
    let node_id = "contract-node".to_owned();
    let mut config = Config { node_id: node_id.clone(), ..Config::default() };
    edit(&mut config);
    let metrics = Arc::new(Metrics::new());
    let (engine, redis) = match kind {
        Kind::Memory => (AnyEngine::Memory(MemoryEngine::new(Arc::new(config), metrics.clone())), None),
        Kind::Redis => {
            let redis = Redis::start_ephemeral().await;
            config.redis_url = Some(redis.url());
            let engine =
                RedisEngine::connect(Arc::new(config), metrics.clone()).await.expect("the engine starts");
            (AnyEngine::Redis(engine), Some(redis))
        }
    };
    let inbox = Arc::new(Record::default());
    let dyn_inbox: Arc<dyn Inbox> = inbox.clone();
    let weak: Weak<dyn Inbox> = Arc::downgrade(&dyn_inbox);
    engine.attach(weak);
    assert!(holds_within(WAIT, || async { engine.is_ready() }).await, "{kind:?} engine not ready");
    Under { engine, inbox, metrics, node_id, redis }
}

impl Under {
    /// A counter of the node's metrics, e.g. `messages_dropped_total{reason="queue_full"}`.
    fn counter(&self, name: &str) -> u64 {
        let text = self.metrics.render(Vec::new());
        metric(&text, &format!("stampede_{name}")).map_or(0, |v| v as u64)
    }

    /// Ready entries of `queue` (not in flight). Memory: its depth. Redis: read from Redis itself
    /// (the engine's own reading is refreshed only every few seconds); key layout and group name
    /// are in the module doc of `engine/redis`.
    async fn depth(&self, queue: &str) -> u64 {
        match &self.redis {
            None => self.engine.queue_depths().into_iter().find(|(q, _)| q == queue).map_or(0, |(_, n)| n),
            Some(redis) => {
                let key = format!("stampede:{{{queue}}}:q");
                match redis.call(&["EVAL", READY_ENTRIES, "1", &key]).await {
                    Resp::Int(n) => u64::try_from(n).expect("a depth"),
                    other => panic!("depth of {queue}: {other:?}"),
                }
            }
        }
    }
}

/// An inbox that records what it is handed.
#[derive(Default)]
struct Record {
    messages: Mutex<Vec<Arc<Message>>>,
    ready: Mutex<Vec<String>>,
}

impl Inbox for Record {
    fn deliver(&self, message: Arc<Message>) {
        self.messages.lock().expect("lock").push(message);
    }

    fn queue_ready(&self, queue: &str) {
        self.ready.lock().expect("lock").push(queue.to_owned());
    }
}

impl Record {
    fn bodies(&self) -> Vec<String> {
        self.messages.lock().expect("lock").iter().map(|m| body(&m.body)).collect()
    }

    fn offsets(&self) -> Vec<u64> {
        self.messages.lock().expect("lock").iter().filter_map(|m| m.offset).collect()
    }

    fn was_woken(&self, queue: &str) -> bool {
        self.ready.lock().expect("lock").iter().any(|q| q == queue)
    }
}

/// A message with a `content-type` header (shared with `redis/tests.rs`).
pub(super) fn message(destination: &str, body: impl Into<String>) -> Message {
    Message {
        destination: Arc::from(destination),
        headers: vec![("content-type".to_owned(), "text/plain".to_owned())],
        body: Bytes::from(body.into()),
        offset: None,
    }
}

/// A history rule (shared with `redis/tests.rs`).
pub(super) fn history(pattern: &str, size: usize, ttl: Option<Duration>) -> HistoryRule {
    HistoryRule { pattern: pattern.to_owned(), size, ttl }
}

fn body(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn bodies(entries: &[QueueEntry]) -> Vec<String> {
    entries.iter().map(|e| body(&e.message.body)).collect()
}

fn ids(entries: &[QueueEntry]) -> Vec<EntryId> {
    entries.iter().map(|e| e.id.clone()).collect()
}

// === the scenarios ===

/// A watched topic's messages reach the node once each, in publish order, single publishes and
/// runs alike, with their destination and headers; a history topic's carry their offsets.
/// After an unwatch, what the node is still handed is where the engines differ.
async fn topics_reach_a_watching_node_once_in_order(kind: Kind) {
    let under = start(kind, |c| c.history = vec![history("/topic/h", 100, None)]).await;
    let engine = &under.engine;
    engine.watch("/topic/t").wait().await.expect("watch");
    engine.watch("/topic/h").wait().await.expect("watch");
    for i in 0..50 {
        assert_eq!(engine.publish(message("/topic/t", i.to_string())).await.outcome().await, Ok(None));
    }
    let run = (50..60).map(|i| message(if i % 5 == 4 { "/topic/h" } else { "/topic/t" }, i.to_string()));
    let mut outcomes = Vec::new();
    for published in engine.publish_all(run.collect()).await {
        outcomes.push(published.outcome().await.expect("published"));
    }
    assert_eq!(outcomes, [None, None, None, None, Some(1), None, None, None, None, Some(2)]);
    let got = holds_within(WAIT, || async { under.inbox.bodies().len() >= 60 }).await;
    assert!(got, "{kind:?}: got {}", under.inbox.bodies().len());
    let expected: Vec<String> = (0..60).map(|i| i.to_string()).collect();
    assert_eq!(under.inbox.bodies(), expected, "each message once, in publish order");
    assert_eq!(under.inbox.offsets(), [1, 2]);
    let first = under.inbox.messages.lock().expect("lock")[0].clone();
    assert_eq!(&*first.destination, "/topic/t");
    assert_eq!(first.headers, vec![("content-type".to_owned(), "text/plain".to_owned())]);

    // Unwatch is applied in call order: once a later watch is done, it is done too. A message
    // to the other topic, published after, marks when the first one would have arrived.
    engine.unwatch("/topic/t");
    engine.watch("/topic/other").wait().await.expect("watch");
    engine.publish(message("/topic/t", "after unwatch")).await.outcome().await.expect("publish");
    engine.publish(message("/topic/other", "marker")).await.outcome().await.expect("publish");
    let marked = holds_within(WAIT, || async { under.inbox.bodies().iter().any(|b| b == "marker") }).await;
    assert!(marked, "{kind:?}: the watched topic delivers");
    let after = under.inbox.bodies().iter().any(|b| b == "after unwatch");
    assert_eq!(after, kind.delivers_unwatched(), "{kind:?}: a message of an unwatched topic");
}

/// History: offsets from 1, replay after an offset, and `complete` false exactly when the
/// subscriber missed something (trimmed by size, expired by TTL, never existed, no history).
async fn history_offsets_replay_and_completeness(kind: Kind) {
    let rules = |c: &mut Config| {
        c.history =
            vec![history("/topic/h*", 5, None), history("/topic/ttl", 10, Some(Duration::from_millis(300)))]
    };
    let under = start(kind, rules).await;
    let a = &under.engine;

    let mut offsets = Vec::new();
    for i in 1..=8 {
        offsets.push(a.publish(message("/topic/h", format!("m{i}"))).await.outcome().await.expect("publish"));
    }
    assert_eq!(offsets, (1..=8).map(Some).collect::<Vec<_>>());

    let h = a.history("/topic/h", 5).await.expect("history");
    assert!(h.complete);
    assert_eq!(h.messages.iter().map(|m| m.offset.unwrap_or(0)).collect::<Vec<_>>(), [6, 7, 8]);
    assert_eq!(&h.messages[0].body[..], b"m6");
    assert_eq!(&*h.messages[0].destination, "/topic/h");

    let h = a.history("/topic/h", 3).await.expect("history");
    assert!(h.complete, "4..8 retained: nothing missed after 3");
    assert_eq!(h.messages.len(), 5);
    let h = a.history("/topic/h", 0).await.expect("history");
    assert!(!h.complete, "1..3 were trimmed");
    assert_eq!(h.messages.iter().map(|m| m.offset.unwrap_or(0)).collect::<Vec<_>>(), [4, 5, 6, 7, 8]);
    let h = a.history("/topic/h", 8).await.expect("history");
    assert!(h.complete && h.messages.is_empty());
    assert_eq!(h.last, 8);
    let h = a.history("/topic/h", 9).await.expect("history");
    assert!(!h.complete, "a client cannot have seen offset 9");
    // An offset past the topic's (from before it restarted): everything retained is new to it.
    assert_eq!(h.messages.iter().map(|m| m.offset.unwrap_or(0)).collect::<Vec<_>>(), [4, 5, 6, 7, 8]);
    assert_eq!(h.last, 8, "live messages above 8 are new");

    let h = a.history("/topic/h-never", 0).await.expect("history");
    assert!(h.complete && h.messages.is_empty(), "nothing published, nothing missed");
    let h = a.history("/topic/h-never", 1).await.expect("history");
    assert!(!h.complete && h.messages.is_empty() && h.last == 0);
    assert!(!a.history("/topic/plain", 0).await.expect("history").complete, "no history rule");

    // TTL: entries older than it are skipped.
    a.publish(message("/topic/ttl", "t1")).await.outcome().await.expect("publish");
    a.publish(message("/topic/ttl", "t2")).await.outcome().await.expect("publish");
    let h = a.history("/topic/ttl", 0).await.expect("history");
    assert!(h.complete && h.messages.len() == 2);
    let expired = holds_within(WAIT, || async {
        a.history("/topic/ttl", 0).await.is_ok_and(|h| !h.complete && h.messages.is_empty())
    })
    .await;
    assert!(expired, "expired: missed");
    assert!(a.history("/topic/ttl", 2).await.expect("history").complete);
    a.publish(message("/topic/ttl", "t3")).await.outcome().await.expect("publish");
    let h = a.history("/topic/ttl", 2).await.expect("history");
    assert!(h.complete && h.messages.len() == 1 && h.messages[0].offset == Some(3));
}

/// Queues: entries are fetched in order, once; ACKed ones are gone; released ones come back,
/// flagged as redeliveries when a client saw them, in the order [`Kind::order_after_release`]
/// says.
async fn queues_deliver_acknowledge_and_redeliver(kind: Kind) {
    let under = start(kind, |_| {}).await;
    let engine = &under.engine;
    engine.watch("/queue/q").wait().await.expect("watch");
    for body in ["a", "b", "c", "d"] {
        assert_eq!(engine.enqueue(message("/queue/q", body)).await.outcome().await, Ok(None));
    }
    assert!(
        holds_within(WAIT, || async { under.inbox.was_woken("/queue/q") }).await,
        "told entries are ready"
    );
    assert_eq!(under.depth("/queue/q").await, 4);

    let first = engine.fetch("/queue/q", 2).await.expect("fetch");
    assert_eq!(bodies(&first), ["a", "b"]);
    assert!(first.iter().all(|e| e.redeliveries == 0 && &*e.message.destination == "/queue/q"));
    assert_eq!(under.depth("/queue/q").await, 2, "entries in flight are not ready");

    // Seen by a client, then released: they come back as redeliveries.
    engine.release("/queue/q", &ids(&first), true).await.expect("release");
    let all = engine.fetch("/queue/q", 10).await.expect("fetch");
    assert_eq!(bodies(&all), kind.order_after_release(&["a", "b"], &["c", "d"]));
    for entry in &all {
        let seen = matches!(&entry.message.body[..], b"a" | b"b");
        assert_eq!(entry.redeliveries, u32::from(seen), "{:?}", entry.message.body);
    }
    assert!(engine.fetch("/queue/q", 10).await.expect("fetch").is_empty(), "all in flight");

    // Released unseen (a subscriber went away before delivery): not a redelivery.
    let (seen, unseen): (Vec<QueueEntry>, Vec<QueueEntry>) =
        all.into_iter().partition(|e| e.redeliveries == 1);
    engine.release("/queue/q", &ids(&unseen), false).await.expect("release");
    let again = engine.fetch("/queue/q", 10).await.expect("fetch");
    assert_eq!(bodies(&again), ["c", "d"]);
    assert!(again.iter().all(|e| e.redeliveries == 0), "unseen releases are not redeliveries");

    engine.ack("/queue/q", &ids(&seen)).await.expect("ack");
    engine.ack("/queue/q", &ids(&again)).await.expect("ack");
    assert!(engine.fetch("/queue/q", 10).await.expect("fetch").is_empty());
    assert_eq!(under.depth("/queue/q").await, 0);
    // Releasing what was acknowledged brings nothing back.
    engine.release("/queue/q", &ids(&again), true).await.expect("release");
    assert!(engine.fetch("/queue/q", 10).await.expect("fetch").is_empty());
}

/// A queue keeps at most `queue-max-length` ready entries, dropping the oldest (entries in
/// flight do not count), and an entry that clients saw `queue-max-deliveries` times goes to
/// `<queue>.dlq`.
async fn queues_keep_a_bounded_backlog_and_dead_letter_after_max_deliveries(kind: Kind) {
    let under = start(kind, |c| {
        c.queues.max_length = 3;
        c.queues.max_deliveries = 2;
    })
    .await;
    let a = &under.engine;

    // Nobody consumes yet: the oldest ready entries go past the bound.
    for i in 0..5 {
        a.enqueue(message("/queue/b", i.to_string())).await.outcome().await.expect("enqueue");
    }
    assert_eq!(under.counter("messages_dropped_total{reason=\"queue_full\"}"), 2);
    assert_eq!(under.depth("/queue/b").await, 3);
    let held = a.fetch("/queue/b", 10).await.expect("fetch");
    assert_eq!(bodies(&held), ["2", "3", "4"]);
    // Entries in flight do not count against the bound.
    for i in 5..8 {
        a.enqueue(message("/queue/b", i.to_string())).await.outcome().await.expect("enqueue");
    }
    assert_eq!(under.counter("messages_dropped_total{reason=\"queue_full\"}"), 2);
    assert_eq!(under.depth("/queue/b").await, 3, "in-flight entries are not ready");

    // Dead letters: the second delivery that a client saw is the last.
    a.enqueue(message("/queue/d", "poison")).await.outcome().await.expect("enqueue");
    let first = a.fetch("/queue/d", 1).await.expect("fetch");
    assert_eq!(first[0].redeliveries, 0);
    a.release("/queue/d", &ids(&first), true).await.expect("release");
    let second = a.fetch("/queue/d", 1).await.expect("fetch");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].redeliveries, 1);
    a.release("/queue/d", &ids(&second), true).await.expect("release");
    assert!(a.fetch("/queue/d", 1).await.expect("fetch").is_empty());
    let dead = a.fetch("/queue/d.dlq", 10).await.expect("fetch");
    assert_eq!(dead.len(), 1);
    assert_eq!(&*dead[0].message.destination, "/queue/d.dlq");
    assert_eq!(&dead[0].message.body[..], b"poison");
    assert_eq!(dead[0].redeliveries, 0);
    assert_eq!(under.counter("messages_dropped_total{reason=\"dead_lettered\"}"), 1);
    assert_eq!(under.depth("/queue/d").await, 0);
}

/// An entry a client refused (NACK `requeue:false`) moves to `<queue>.dlq` at once, on its
/// first delivery and without `queue-max-deliveries` set; the others stay where they were.
async fn refused_entries_go_straight_to_the_dead_letter_queue(kind: Kind) {
    let under = start(kind, |_| {}).await;
    let a = &under.engine;
    for body in ["keep", "refuse"] {
        a.enqueue(message("/queue/r", body)).await.outcome().await.expect("enqueue");
    }
    let held = a.fetch("/queue/r", 10).await.expect("fetch");
    assert_eq!(bodies(&held), ["keep", "refuse"]);
    a.dead_letter("/queue/r", &ids(&held[1..])).await.expect("dead letter");
    a.release("/queue/r", &ids(&held[..1]), true).await.expect("release");
    let back = a.fetch("/queue/r", 10).await.expect("fetch");
    assert_eq!(bodies(&back), ["keep"]);
    let dead = a.fetch("/queue/r.dlq", 10).await.expect("fetch");
    assert_eq!(bodies(&dead), ["refuse"]);
    assert_eq!(&*dead[0].message.destination, "/queue/r.dlq");
    assert_eq!(under.counter("messages_dropped_total{reason=\"dead_lettered\"}"), 1);
    // Refusing what is no longer held moves nothing.
    a.dead_letter("/queue/r", &ids(&held[1..])).await.expect("dead letter");
    assert!(a.fetch("/queue/r.dlq", 10).await.expect("fetch").is_empty());
}

/// The engine lists the live nodes of its cluster: this one at least.
async fn the_registry_lists_this_node(kind: Kind) {
    let under = start(kind, |_| {}).await;
    let listed = holds_within(WAIT, || async {
        under.engine.nodes().await.is_ok_and(|nodes| nodes.iter().any(|n| n.node_id == under.node_id))
    })
    .await;
    assert!(listed, "{kind:?}: {:?}", under.engine.nodes().await);
    let nodes = under.engine.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!((nodes[0].connections, nodes[0].subscriptions), (0, 0));
}

/// Presence: a member joins once however often it is reported, leaves once, and each change
/// is one event on `/presence<destination>` with the member in its headers; destinations the
/// `presence` setting does not name keep none and publish nothing.
async fn presence_records_members_and_publishes_each_join_and_leave_once(kind: Kind) {
    let under = start(kind, |c| c.presence = vec!["/topic/room.*".to_owned()]).await;
    let engine = &under.engine;
    engine.watch("/presence/topic/room.1").wait().await.expect("watch");
    engine.watch("/presence/topic/other").wait().await.expect("watch");
    let member = |user: Option<&str>, session: &str| Member {
        user: user.map(str::to_owned),
        session: session.to_owned(),
        node: under.node_id.clone(),
    };
    let (ann, anonymous) = (member(Some("ann"), "s1"), member(None, "s2"));
    engine.presence_join("/topic/room.1", ann.clone()).await.expect("join");
    engine.presence_join("/topic/room.1", ann.clone()).await.expect("a second join is nothing");
    engine.presence_join("/topic/room.1", anonymous.clone()).await.expect("join");
    engine.presence_join("/topic/other", ann.clone()).await.expect("not kept: nothing");
    assert_eq!(engine.presence("/topic/room.1").await, Ok(Some(vec![anonymous.clone(), ann.clone()])));
    assert_eq!(engine.presence("/topic/room.2").await, Ok(Some(vec![])));
    assert_eq!(engine.presence("/topic/other").await, Ok(None));

    engine.presence_leave("/topic/room.1", ann.clone()).await.expect("leave");
    engine.presence_leave("/topic/room.1", ann.clone()).await.expect("a second leave is nothing");
    engine.presence_leave("/topic/room.2", anonymous.clone()).await.expect("not a member: nothing");
    assert_eq!(engine.presence("/topic/room.1").await, Ok(Some(vec![anonymous.clone()])));
    engine.presence_leave("/topic/room.1", anonymous.clone()).await.expect("leave");
    assert_eq!(engine.presence("/topic/room.1").await, Ok(Some(vec![])));

    let events = || {
        under
            .inbox
            .messages
            .lock()
            .expect("lock")
            .iter()
            .map(|m| {
                let header = |name: &str| m.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
                (
                    m.destination.to_string(),
                    header("x-presence"),
                    header("x-presence-user"),
                    header("x-presence-session"),
                )
            })
            .collect::<Vec<_>>()
    };
    let got = holds_within(WAIT, || async { events().len() >= 4 }).await;
    assert!(got, "{kind:?}: {:?}", events());
    // Nothing more comes: a marker published after them is the next message.
    engine.publish(message("/presence/topic/room.1", "marker")).await.outcome().await.expect("publish");
    let marked = holds_within(WAIT, || async { under.inbox.bodies().iter().any(|b| b == "marker") }).await;
    assert!(marked, "{kind:?}: the marker arrives");
    let room = "/presence/topic/room.1".to_owned();
    let (join, leave) = (Some("join".to_owned()), Some("leave".to_owned()));
    let (s1, s2, ann_name) = (Some("s1".to_owned()), Some("s2".to_owned()), Some("ann".to_owned()));
    assert_eq!(
        events()[..4],
        [
            (room.clone(), join.clone(), ann_name.clone(), s1.clone()),
            (room.clone(), join, None, s2.clone()),
            (room.clone(), leave.clone(), ann_name, s1),
            (room.clone(), leave, None, s2),
        ],
        "{kind:?}"
    );
    assert_eq!(events().len(), 5, "{kind:?}: four events and the marker");
    let first = under.inbox.messages.lock().expect("lock")[0].clone();
    let body: serde_json::Value = serde_json::from_slice(&first.body).expect("JSON");
    assert_eq!(
        body,
        serde_json::json!({"event": "join", "destination": "/topic/room.1", "user": "ann", "session": "s1",
            "node": under.node_id})
    );
}
