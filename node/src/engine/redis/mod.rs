//! The cluster engine on Redis: nodes share topics, history, queues and a registry through one
//! Redis (standalone, Sentinel or Cluster), using [fred].
//!
//! Two connections per node: a command client (pipelined, never blocked: no BLPOP or XREAD BLOCK)
//! and a [`SubscriberClient`] for pub/sub. Both reconnect forever with exponential backoff; the
//! engine is ready ([`Engine::is_ready`]) only while both are connected, and the node starts and
//! keeps its sessions while Redis is away. Calls that need Redis fail at once with
//! [`EngineError::Unavailable`] while it is away.
//!
//! # Keys and channels
//! Everything of one destination shares the hash tag `{<destination>}`, so its keys live in one
//! Redis Cluster slot and one Lua script may use them together. `P` is `redis-prefix`.
//!
//! | key / channel | type | what |
//! | --- | --- | --- |
//! | `P:{/topic/t}:log` | stream | history of a history topic: id `0-<offset>`, fields `e` (envelope), `t` (publish time, ms) |
//! | `P:{/topic/t}:seq` | string | the history topic's last offset |
//! | `P:{/queue/q}:q` | stream | a queue: fields `e` (envelope), `r` (redeliveries; absent on a first enqueue, which costs Redis about 0.35 µs less per message without it); consumer group `stampede`, one consumer per node (its `node-id`) |
//! | `P:{/queue/q}:sent` | sorted set | markers of the queue's recent ENQUEUE calls, scored by time (kept 60 s, deleted with the queue): a call sent again after a lost connection is not run twice ([`publisher`]) |
//! | `P:{/queue/q}:life` | hash | a queue's lifetime and users: `expires`, `auto` (declared by a SUBSCRIBE), `used` (ms), `n:<node-id>` per node consuming it |
//! | `P:queues` | set | names of every queue enqueued to (for reclaiming and depth metrics) |
//! | `P:lifetimes` | sorted set | queues that have a lifetime, scored by when (ms) the sweep looks at them next |
//! | `P:sweeper` | string | the node sweeping queues now (SET NX PX) |
//! | `P:epoch` | string | the store's epoch: set once (SET NX) by the first node to connect to an empty Redis; another one after a reconnection means Redis lost its data (`losses.rs`, `pubsub.rs`) |
//! | `P:node:<id>` | hash | a node's heartbeat: `connections`, `subscriptions`, `last_seen_ms`, `published`, `delivered`; expires after 5 s |
//! | `P:nodes` | sorted set | node ids scored by their last heartbeat (ms) |
//! | `P:ch:/topic/t`, `P:ch:/user/u/...` | channel | live messages of a topic or user destination (envelopes); on Redis Cluster a shard channel `P:ch:{/topic/t}` |
//! | `P:ch:/queue/q` | channel | "entries ready" notifications of a queue (`r`) |
//! | `P:{/topic/t}:presence` | hash | presence of a destination: field `<node-id>\t<session>`, value the user |
//! | `P:node:<id>:presence` | set | destinations in which a node has presence members |
//! | `P:node:<id>:reaper:<ms>` | string | the node removing a dead node's presence members (SET NX PX) |
//! | `P:ch:/presence/topic/t` | channel | presence events of `/topic/t` (envelopes, as a topic's) |
//! | `P:calls`, `P:calls:<id>` | channel | the admin API's questions to every node, and the answers to node `<id>` ([`calls`]) |
//!
//! # Topics
//! A publish is one PUBLISH of the [`envelope`], sent by a [`publisher`] task, which pipelines
//! every publish of the node in the order the sessions handed them over (a burst on one channel
//! as one PUBLISH_MANY script call); a node SUBSCRIBEs to a destination's channel
//! while it watches it. On Redis Cluster the channels are shard channels (SPUBLISH/SSUBSCRIBE,
//! `P:ch:{/topic/t}`, in the destination's slot), each primary's writes have a publishing task of
//! their own, and a command refused because its slot moved is sent again ([`is_redirect`]). Watch and unwatch are applied in call order by one task; messages are
//! decoded and handed to the inbox in arrival order by another. A node's own publishes come back
//! through Redis like everyone else's, so per-publisher order holds on every node.
//!
//! History topics publish with one script: INCR the offset, XADD the envelope carrying it (exact
//! `MAXLEN size`), PEXPIRE both keys (3 × ttl) when the rule has a ttl, PUBLISH. Each node
//! remembers the last offset it delivered per watched history topic: live messages at or below it
//! are duplicates and dropped; a jump (a lost message) and every reconnect or pub/sub lag are
//! filled from the stream before going on, in the delivering task, so order holds. When Redis lost
//! its data (its epoch changed, read after every reconnection before subscribing again), every
//! remembered offset is forgotten and delivery follows the new offsets from 1; an offset below the
//! remembered one with the counter also below it means the topic restarted on its own (expired
//! counter): delivery restarts from the new offsets (`pubsub.rs`).
//!
//! # Queues
//! Streams with a consumer group: `fetch` is a non-blocking XREADGROUP of new entries; `ack` is
//! XDEL + XACK, handed to the [`publisher`] unawaited and sent with the node's other ACKs of the
//! queue as one of each (enqueues to one queue taken together are one call too); `release` re-adds entries **at the tail** (Redis cannot insert at a stream's head,
//! unlike the in-memory engine, which puts them back first) with redeliveries + 1 when a client saw
//! them, and moves them to `<queue>.dlq` once they reach `queue-max-deliveries`. The bound
//! `queue-max-length` counts ready entries only; the oldest ready ones are dropped past it. Every
//! `queue-reclaim-after / 3` a node refreshes the idle time of the entries it holds; every
//! `queue-reclaim-after` it claims entries idle longer than that (their node died) and re-adds them
//! as redeliveries, so they flow to consumers anywhere in the cluster.
//!
//! # Queue lifetimes
//! A queue's `life` hash records which nodes consume it (`n:<node-id>`, set by the JOIN script when
//! a node watches it, removed by LEAVE when it unwatches) and the lifetime a SUBSCRIBE declared;
//! undeclared queues take the configured rule's, which every call passes along. When a node's
//! last consumer leaves and no `n:` field is left, LEAVE deletes an auto-delete queue (stream,
//! consumer group, life hash) in the same script. Expiry needs a cluster-wide clock of the last
//! use without a command more per SEND: a SEND's append already stamps the stream's last id with
//! Redis's time, and JOIN, LEAVE and DECLARE stamp `used`. Queues with a lifetime are listed in
//! `P:lifetimes`; every 500 ms a node that wins the `P:sweeper` lock runs the SWEEP script on the
//! ones due, which forgets the `n:` fields of nodes missing from the registry (their auto-delete
//! queues then go too) and deletes a queue unused for its `expires`, or says when to look again.
//! Deciding and deleting happen in one script, so a SEND lands before (and is seen as use) or
//! after (and creates the queue again: ENQUEUE reports the new stream and the node registers it
//! again). After deleting, a node removes the name from `P:queues` and `P:lifetimes`, then checks
//! that the stream is still gone and registers it again if not.
//!
//! # Presence
//! See `presence.rs`: a hash per destination written by one task per node, reads that keep live
//! nodes' fields only, and a dead node's members removed (with leave events) by one live node.
//!
//! Layout: `mod.rs` (the engine), `envelope.rs`, `keys.rs` (names, URLs), `tls.rs` (TLS to
//! Redis), `scripts.rs` (Lua), `publisher.rs` (pipelined publishes), `pubsub.rs` (watching and
//! delivering), `queues.rs`, `losses.rs` (queues whose stream vanished), `registry.rs` (heartbeats, probes, why connecting fails), `calls.rs`
//! (questions to every node), `presence.rs`, `tests.rs`.

mod calls;
mod envelope;
mod keys;
mod losses;
mod presence;
mod publisher;
mod pubsub;
mod queues;
mod registry;
mod scripts;
#[cfg(test)]
mod tests;
mod tls;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface};
use fred::types::config::{ConnectionConfig, PerformanceConfig, ReconnectPolicy};
use fred::types::{Builder, ClusterHash, CustomCommand, Resp3Frame, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::{Config, QueueLifetime};
use crate::engine::{
    Answers, Engine, EngineError, EntryId, History, Inbox, Member, Message, NodeInfo, Pending,
    PendingPublish, QueueEntry,
};
use crate::metrics::Metrics;
use crate::metrics::{EngineEvent, RedisCommand};
use crate::transport::tls::TlsError;
pub use envelope::Envelope;
use keys::Keys;
use publisher::{Op, ScriptReply};

/// Pub/sub messages fred buffers for the delivering task before it reports a lag (fred's
/// default of 32 would drop messages under any burst).
const BROADCAST_CAPACITY: usize = 1 << 16;
/// Timeout of every command; a command still unanswered then fails (and the publish with it).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write waits for a lost command connection to come back, counted from when writes
/// first found it down: a Sentinel or Cluster failover (2 to 7 s in `cluster-tests`) costs late
/// RECEIPTs instead of ERRORs.
const OUTAGE_PATIENCE: Duration = Duration::from_secs(8);
/// How long after the clients were last seen connected a node stays ready while they reconnect.
const RECONNECT_GRACE: Duration = Duration::from_secs(1);
/// `connected_at` before the clients first connected: not ready until they have.
const NEVER_CONNECTED: u64 = u64::MAX;
/// How long `connect` waits for Redis before returning a not-yet-ready engine.
const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// How often a command refused by a moved slot is sent again, and the pause before the n-th time
/// (n × this): a MOVED is answered at the first, an ASK (a slot migrating) when the slot is done.
const REDIRECTS: u32 = 10;
const REDIRECT_PAUSE: Duration = Duration::from_millis(20);
/// Entries handled per script call (Lua's `unpack` has a limit).
const IDS_PER_CALL: usize = 500;

/// Knobs tests turn; production uses [`Tuning::default`].
#[derive(Clone, Debug)]
struct Tuning {
    broadcast_capacity: usize,
    connect_wait: Duration,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning { broadcast_capacity: BROADCAST_CAPACITY, connect_wait: CONNECT_WAIT }
    }
}

/// The Redis engine. Dropping it stops its tasks, removes the node from the registry and closes
/// its connections (best effort).
pub struct RedisEngine {
    inner: Arc<Inner>,
    control: mpsc::UnboundedSender<pubsub::Control>,
    publishes: publisher::Lanes,
    tasks: Vec<JoinHandle<()>>,
}

/// What a node watches, as the delivering task needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watched {
    Topic,
    /// A history topic and the last offset handed to the inbox (`None`: not known yet).
    History {
        last: Option<u64>,
    },
    Queue,
}

/// A queue's stream key and "entries ready" channel, built once per queue (every SEND to it
/// names both).
#[derive(Clone)]
struct QueueKeys {
    key: Arc<str>,
    channel: Arc<str>,
}

/// State shared by the engine and its tasks. Locks are held for a few lines, never across await.
struct Inner {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    keys: Keys,
    client: Client,
    subscriber: SubscriberClient,
    inbox: OnceLock<Weak<dyn Inbox>>,
    /// Written by the watching task only; read (and history offsets advanced) by the delivering one.
    watched: Mutex<HashMap<Arc<str>, Watched>>,
    /// Queue entries this node holds, from fetch until ack or release.
    in_flight: Mutex<HashMap<Arc<str>, HashSet<EntryId>>>,
    /// Queues this node has added to the `queues` set, with their keys.
    known_queues: Mutex<HashMap<Arc<str>, QueueKeys>>,
    /// Ready entries per queue, refreshed by the queue task.
    depths: Mutex<Vec<(String, u64)>>,
    /// Queues whose stream an enqueue created, to register (again) by the queue task: a queue
    /// deleted by another node may be in `known_queues` still.
    created: Mutex<Vec<Arc<str>>>,
    /// Since when writes have found the command connection down (see [`Inner::connected`]).
    down_since: Mutex<Option<tokio::time::Instant>>,
    /// Queues this node stopped consuming while Redis was away: their LEAVE is retried by the
    /// queue task (unless the node consumes them again by then).
    unleft: Mutex<HashSet<Arc<str>>>,
    /// Queue lifetimes a SUBSCRIBE declared while Redis was away: declared again before the
    /// queue's next watch and after each reconnection (`pubsub.rs`).
    undeclared: Mutex<HashMap<Arc<str>, QueueLifetime>>,
    /// Queues whose stream this node has seen, until it deletes them: a stream of
    /// one found missing was lost (`losses.rs`). Unlike `known_queues`, kept across reconnects.
    seen_queues: Mutex<HashSet<Arc<str>>>,
    /// The store's epoch as the queue task last read it (`losses.rs`; the pub/sub control task
    /// keeps its own).
    epoch: Mutex<Option<String>>,
    /// False once Redis stopped answering the registry's probes, even if the connection looks up
    /// (fred only notices a dead peer when it stops *writing*; a cut network keeps it "connected").
    answering: std::sync::atomic::AtomicBool,
    /// When both clients were last seen connected, in ms since `started` (see [`Inner::is_ready`]).
    connected_at: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
    /// Presence: the writer task's queue and the dead nodes looked at.
    presence: presence::Local,
    /// Questions to every node waiting for their answers.
    calls: calls::Calls,
    /// The prefix of this node's session ids; messages for them come on `P:to:<tag>`.
    session_tag: String,
}

/// Checks a `redis-url` as [`RedisEngine::connect`] reads it, so that the configuration refuses
/// what the engine could not use; `Ok(true)` when it asks for TLS (a `rediss` form).
pub(crate) fn url_uses_tls(url: &str) -> Result<bool, String> {
    keys::fred_config(url).map(|url| url.tls)
}

impl RedisEngine {
    /// Loads what [`RedisEngine::connect`] needs for TLS to Redis (the `redis-tls-ca` file or the
    /// system's roots), so that a node which could never verify Redis stops before it binds.
    /// Nothing to do without Redis or for a plain `redis-url`.
    pub fn check_tls(config: &Config) -> Result<(), TlsError> {
        match config.redis_url.as_deref().map(url_uses_tls) {
            Some(Ok(true)) => tls::connector(config.redis_tls_ca.as_deref()).map(drop),
            _ => Ok(()),
        }
    }

    /// Starts the engine for `config.redis_url`. Fails only when the URL or its TLS cannot be
    /// used (both checked with the configuration already); when Redis is unreachable, or its
    /// certificate is refused, the engine starts anyway, not ready, and keeps reconnecting.
    pub async fn connect(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<RedisEngine, EngineError> {
        RedisEngine::connect_with(config, metrics, Tuning::default()).await
    }

    async fn connect_with(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        tuning: Tuning,
    ) -> Result<RedisEngine, EngineError> {
        let url = config
            .redis_url
            .as_deref()
            .ok_or_else(|| EngineError::Unavailable("redis-url is not set".to_owned()))?;
        let redacted = config.redacted_redis_url().unwrap_or_default();
        let parsed = keys::fred_config(url)
            .map_err(|e| EngineError::Unavailable(format!("cannot use redis-url {redacted}: {e}")))?;
        let mut fred_config = parsed.config;
        // Sharded pub/sub on Redis Cluster (see `pubsub.rs`), classic pub/sub elsewhere.
        let parsed_cluster = fred_config.server.is_clustered();
        if parsed.tls {
            let connector = tls::connector(config.redis_tls_ca.as_deref())
                .map_err(|e| EngineError::Unavailable(format!("no TLS to Redis: {e}")))?;
            fred_config.tls = Some(connector.into());
        }
        // Keep trying when Redis is down at start-up instead of failing.
        fred_config.fail_fast = false;

        let policy = ReconnectPolicy::new_exponential(0, 100, 5_000, 2);
        let mut connection = ConnectionConfig {
            connection_timeout: Duration::from_secs(3),
            internal_command_timeout: Duration::from_secs(3),
            // A command cut off by a disconnect fails rather than running twice after it.
            max_command_attempts: 1,
            ..ConnectionConfig::default()
        };
        connection.unresponsive.max_timeout = Some(Duration::from_secs(10));
        connection.tcp.nodelay = Some(true);
        let perf = |capacity: usize| PerformanceConfig {
            default_command_timeout: COMMAND_TIMEOUT,
            broadcast_channel_capacity: capacity,
            ..PerformanceConfig::default()
        };
        let builder = |capacity: usize, connection: ConnectionConfig| {
            let mut builder = Builder::from_config(fred_config.clone());
            builder
                .set_policy(policy.clone())
                .set_connection_config(connection)
                .set_performance_config(perf(capacity));
            builder
        };
        let fail = |e: fred::error::Error| EngineError::Unavailable(format!("redis client: {e}"));
        // The command client is refused a moved slot rather than follow it (see `is_redirect`).
        let commands = ConnectionConfig { max_redirections: 0, ..connection.clone() };
        let client = builder(PerformanceConfig::default().broadcast_channel_capacity, commands)
            .build()
            .map_err(fail)?;
        // The subscriber's commands may run twice (SSUBSCRIBE, PING), so it follows redirections.
        let subscriptions = ConnectionConfig { max_command_attempts: 3, ..connection };
        let subscriber =
            builder(tuning.broadcast_capacity, subscriptions).build_subscriber_client().map_err(fail)?;

        let (presence, presence_requests) = presence::Local::new();
        let inner = Arc::new(Inner {
            keys: Keys::new(&config.redis_prefix, parsed_cluster),
            config,
            metrics,
            client,
            subscriber,
            inbox: OnceLock::new(),
            watched: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            known_queues: Mutex::new(HashMap::new()),
            depths: Mutex::new(Vec::new()),
            created: Mutex::new(Vec::new()),
            unleft: Mutex::new(HashSet::new()),
            undeclared: Mutex::new(HashMap::new()),
            down_since: Mutex::new(None),
            seen_queues: Mutex::new(HashSet::new()),
            epoch: Mutex::new(None),
            answering: std::sync::atomic::AtomicBool::new(true),
            connected_at: std::sync::atomic::AtomicU64::new(NEVER_CONNECTED),
            started: std::time::Instant::now(),
            presence,
            calls: calls::Calls::default(),
            session_tag: crate::engine::new_session_tag(),
        });

        // Event streams first, so nothing sent after connecting is missed.
        let messages = inner.subscriber.message_rx();
        let subscriber_reconnects = inner.subscriber.reconnect_rx();
        let client_reconnects = inner.client.reconnect_rx();
        let (client_errors, client_connects) = (inner.client.error_rx(), inner.client.reconnect_rx());
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (refill_tx, refill_rx) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(pubsub::control_loop(inner.clone(), control_rx, subscriber_reconnects, refill_tx)),
            tokio::spawn(pubsub::delivery_loop(inner.clone(), messages, refill_rx)),
            tokio::spawn(queues::maintenance_loop(inner.clone(), client_reconnects)),
            tokio::spawn(registry::heartbeat_loop(inner.clone())),
            tokio::spawn(registry::connection_errors_loop(client_errors, client_connects)),
            tokio::spawn(presence::writer_loop(inner.clone(), presence_requests)),
        ];
        let _client_task = inner.client.connect();
        let _subscriber_task = inner.subscriber.connect();

        tracing::info!(url = %redacted, prefix = %inner.config.redis_prefix, "connecting to Redis");
        let deadline = tokio::time::Instant::now() + tuning.connect_wait;
        while !inner.is_ready() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if inner.is_ready() {
            tracing::info!(url = %redacted, "connected to Redis");
        } else {
            tracing::warn!(url = %redacted, "Redis is not reachable yet; the node starts not ready and keeps trying");
        }
        let publishes = publisher::Lanes::new(inner.clone());
        Ok(RedisEngine { inner, control: control_tx, publishes, tasks })
    }

    /// What publishing `message` sends: a PUBLISH, or on a history topic the script that stores
    /// and publishes it.
    fn publish_op(&self, message: &Message) -> Op {
        let inner = &self.inner;
        let node = &inner.config.node_id;
        let channel = inner.keys.channel(&message.destination);
        match inner.config.history_for(&message.destination) {
            None => Op::Publish { channel, envelope: envelope::encode(node, message).into() },
            Some(rule) => Op::Script {
                script: &scripts::HISTORY_PUBLISH,
                keys: vec![inner.keys.seq(&message.destination), inner.keys.log(&message.destination)],
                args: vec![
                    Value::Bytes(envelope::encode_without_offset(node, message).into()),
                    Value::Integer(rule.size as i64),
                    Value::Integer(rule.ttl.map_or(0, |ttl| ttl.as_millis().saturating_mul(3).max(1) as i64)),
                    Value::from(channel),
                ],
                reply: ScriptReply::Offset,
            },
        }
    }

    /// Hands a write to the publishing task, in call order.
    async fn write(&self, destination: Arc<str>, op: Op) -> PendingPublish {
        let (reply, rx) = oneshot::channel();
        let job = publisher::Job { destination, op, reply };
        match self.publishes.write(job).await {
            Ok(()) => PendingPublish::waiting(rx),
            Err(_) => PendingPublish::done(Err(EngineError::Closed)),
        }
    }

    /// Waits until the ACKs handed to the publishing task before are written (or failed), so
    /// that a release never overtakes the acknowledgement of an entry it names (it would put a
    /// consumed entry back). Releases are rare (NACK, a session's end); ACKs are not.
    async fn acks_applied(&self, queue: &str) {
        self.publishes.flush_queue(queue).await
    }

    /// Sends the writes already taken and applies the unwatches already asked (for at most a
    /// command timeout each), stops the tasks, leaves the registry and closes the connections.
    pub async fn shutdown(&self) {
        // Presence members still here leave, with their events, before the writes are flushed.
        let (done, closed) = oneshot::channel();
        if self.inner.presence.requests.send(presence::Request::Close(done)).is_ok() {
            let _ = tokio::time::timeout(COMMAND_TIMEOUT, closed).await;
        }
        let _ = tokio::time::timeout(COMMAND_TIMEOUT, self.publishes.flush()).await;
        // The unwatches of the sessions closed before: their queues' leaves (an auto-delete
        // queue goes now rather than at a sweep after this node left the registry).
        let (done, applied) = oneshot::channel();
        if self.control.send(pubsub::Control::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(COMMAND_TIMEOUT, applied).await;
        }
        for task in &self.tasks {
            task.abort();
        }
        self.inner.leave().await;
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            runtime.spawn(async move { inner.leave().await });
        }
    }
}

impl Inner {
    fn inbox(&self) -> Option<Arc<dyn Inbox>> {
        self.inbox.get().and_then(Weak::upgrade)
    }

    /// Ready while Redis answers the probes and both clients are connected, or were seen
    /// connected less than [`RECONNECT_GRACE`] ago: the client reconnects after losing any one
    /// connection (a Cluster primary's), and is "connecting" meanwhile, for 100 ms or more, while
    /// the other primaries serve on (docs/cluster.md, "Partial failures"). The registry's
    /// heartbeat looks every second ([`Inner::seen_connected`]), so a node that lost Redis is not
    /// ready within two seconds whether or not `/readyz` was asked meanwhile.
    fn is_ready(&self) -> bool {
        let answering = self.answering.load(std::sync::atomic::Ordering::Acquire);
        if self.seen_connected() {
            return answering;
        }
        let last = self.connected_at.load(std::sync::atomic::Ordering::Acquire);
        let now = self.started.elapsed().as_millis() as u64;
        answering && last != NEVER_CONNECTED && now.saturating_sub(last) < RECONNECT_GRACE.as_millis() as u64
    }

    /// Whether both clients are connected now; notes the time if so.
    fn seen_connected(&self) -> bool {
        let connected = self.client.is_connected() && self.subscriber.is_connected();
        if connected {
            let now = self.started.elapsed().as_millis() as u64;
            self.connected_at.store(now, std::sync::atomic::Ordering::Release);
        }
        connected
    }

    /// Waits for the command connection while it has been down for less than
    /// [`OUTAGE_PATIENCE`] (a failover: the write goes out once Redis is back, and a SEND's
    /// RECEIPT comes late rather than an ERROR); past that, fails at once, so that client
    /// requests do not queue through a long outage.
    async fn connected(&self) -> Result<(), EngineError> {
        if self.client.is_connected() {
            *self.down_since.lock().expect("down lock") = None;
            return Ok(());
        }
        let since = *self.down_since.lock().expect("down lock").get_or_insert_with(tokio::time::Instant::now);
        let deadline = since + OUTAGE_PATIENCE;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.client.is_connected() {
                return Ok(());
            }
        }
        self.check_connected()
    }

    /// Fails at once while the command connection is down, so client requests do not queue.
    fn check_connected(&self) -> Result<(), EngineError> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(EngineError::Unavailable("Redis is not connected".to_owned()))
        }
    }

    /// Best effort on shutdown: leave the registry, then close both connections.
    async fn leave(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), registry::deregister(self)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.subscriber.quit()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.quit()).await;
    }

    /// The command that publishes on a channel: SPUBLISH with sharded pub/sub (Redis Cluster).
    fn publish_command(&self) -> &'static str {
        if self.keys.sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// One command routed by `key`'s slot (or anywhere when `key` is empty).
    async fn command(&self, name: &'static str, key: &str, args: Vec<Value>) -> Result<Value, EngineError> {
        self.redis_command(name, key, args).await.map_err(unavailable)
    }

    /// [`Inner::command`] with Redis's error; run again when its slot moved ([`is_redirect`]).
    async fn redis_command(
        &self,
        name: &'static str,
        key: &str,
        args: Vec<Value>,
    ) -> Result<Value, fred::error::Error> {
        self.raw_command(name, key, args).await.and_then(Value::try_from)
    }

    /// [`Inner::redis_command`]'s reply as the frame it came in, for replies too big to convert
    /// into [`Value`]s at a profit: a queue fetch (see `queues::fetch`). An error reply is an `Ok`
    /// frame; [`Value::try_from`] turns it into the error.
    async fn raw_command(
        &self,
        name: &'static str,
        key: &str,
        args: Vec<Value>,
    ) -> Result<Resp3Frame, fred::error::Error> {
        let hash = if key.is_empty() {
            ClusterHash::Random
        } else {
            ClusterHash::Custom(fred::util::redis_keyslot(key.as_bytes()))
        };
        let mut redirected = 0;
        loop {
            let started = std::time::Instant::now();
            let command = CustomCommand::new_static(name, hash.clone(), false);
            let reply = self.client.custom_raw::<Value>(command, args.clone()).await;
            self.metrics.redis_command(RedisCommand::of(name), started.elapsed());
            let reply = match reply {
                Ok(frame) if is_error_frame(&frame) => Value::try_from(frame).map(|_| Resp3Frame::Null),
                reply => reply,
            };
            match reply {
                Err(error) if is_redirect(&error) && redirected < REDIRECTS => {
                    redirected += 1;
                    tokio::time::sleep(REDIRECT_PAUSE * redirected).await;
                }
                reply => return reply,
            }
        }
    }

    /// Runs one of the engine's scripts (see [`scripts::Script::run`]), its wait observed like
    /// a command's; run again when its slot moved ([`is_redirect`]).
    async fn script(
        &self,
        script: &scripts::Script,
        keys: &[&str],
        args: Vec<Value>,
    ) -> Result<Value, fred::error::Error> {
        let mut redirected = 0;
        loop {
            let started = std::time::Instant::now();
            let reply = script.run(&self.client, keys, args.clone()).await;
            self.metrics.redis_command(RedisCommand::of(script.name), started.elapsed());
            match reply {
                Err(error) if is_redirect(&error) && redirected < REDIRECTS => {
                    redirected += 1;
                    tokio::time::sleep(REDIRECT_PAUSE * redirected).await;
                }
                reply => return reply,
            }
        }
    }

    /// Adds a queue to the `queues` set, and to `lifetimes` when a rule gives it one, once per
    /// process (again after each reconnect, see the queue task, and after the queue was created
    /// again).
    /// Registering says nothing of whether its stream exists: what the node has seen of it is
    /// recorded by the enqueue or join that found it (`losses.rs`).
    async fn register_queue(&self, queue: &str) -> Result<QueueKeys, EngineError> {
        if let Some(keys) = self.known_queues.lock().expect("known queues lock").get(queue) {
            return Ok(keys.clone());
        }
        // Boxed: its commands' futures are about 7 KiB, which every enqueue's future (and with
        // it every SEND frame's, allocated per frame) would otherwise carry.
        Box::pin(self.register_new_queue(queue)).await
    }

    async fn register_new_queue(&self, queue: &str) -> Result<QueueKeys, EngineError> {
        let set = self.keys.queues();
        self.command("SADD", &set, vec![Value::from(set.as_str()), Value::from(queue)]).await?;
        let rule = self.config.queue_lifetime(queue);
        if rule.is_some() {
            self.schedule(queue, rule.expires.unwrap_or(self.config.queues.reclaim_after), true).await?;
        }
        let keys = QueueKeys {
            key: Arc::from(self.keys.queue(queue)),
            channel: Arc::from(self.keys.channel(queue)),
        };
        self.known_queues.lock().expect("known queues lock").insert(Arc::from(queue), keys.clone());
        Ok(keys)
    }

    /// Has the sweep look at `queue` in `after` (only when it is not listed yet, with `new`).
    async fn schedule(&self, queue: &str, after: Duration, new: bool) -> Result<(), EngineError> {
        let set = self.keys.lifetimes();
        let at = registry::now_ms().saturating_add(after.as_millis() as u64);
        let mut args = vec![Value::from(set.as_str())];
        if new {
            args.push(Value::from("NX"));
        }
        args.extend([Value::from(at.to_string()), Value::from(queue)]);
        self.command("ZADD", &set, args).await.map(|_| ())
    }

    /// An enqueue created `queue`'s stream: register it again (the queue task does).
    fn created(&self, queue: &Arc<str>) {
        losses::created(self, queue);
        self.created.lock().expect("created lock").push(queue.clone());
    }

    /// The configured rule's lifetime of `queue` as the queue scripts take it: expires (ms, 0 =
    /// none) and auto-delete (0/1).
    fn rule_args(&self, queue: &str) -> [Value; 2] {
        let rule = self.config.queue_lifetime(queue);
        [
            Value::Integer(rule.expires.map_or(0, lifetime_ms)),
            Value::from(if rule.auto_delete { "1" } else { "0" }),
        ]
    }

    /// Reads a history topic after `since`: the counter and the retained entries, oldest first.
    async fn read_history(&self, destination: &str, since: u64) -> Result<(u64, Vec<Message>), EngineError> {
        let ttl_ms = self
            .config
            .history_for(destination)
            .and_then(|rule| rule.ttl)
            .map_or(0, |ttl| ttl.as_millis().max(1) as i64);
        let (seq_key, log_key) = (self.keys.seq(destination), self.keys.log(destination));
        let first = format!("0-{}", since.saturating_add(1));
        let reply = self
            .script(
                &scripts::HISTORY_READ,
                &[&seq_key, &log_key],
                vec![Value::from(first), Value::Integer(ttl_ms)],
            )
            .await
            .map_err(unavailable)?;
        let mut items = reply.into_array().into_iter();
        let seq = items.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let mut messages = Vec::new();
        while let (Some(offset), Some(bytes)) = (items.next(), items.next()) {
            let Some(bytes) = bytes.as_bytes() else { continue };
            match envelope::decode(bytes) {
                Ok(envelope) => {
                    let mut message = envelope.into_message();
                    message.offset = message.offset.or(offset.as_u64());
                    messages.push(message);
                }
                Err(error) => self.undecodable(destination, &error),
            }
        }
        Ok((seq, messages))
    }

    fn undecodable(&self, destination: &str, error: &envelope::DecodeError) {
        tracing::warn!(%destination, %error, "dropping a message this node cannot read");
        self.metrics.engine_event(EngineEvent::Undecodable, 1);
    }
}

/// A lifetime's duration in whole milliseconds, at least 1.
fn lifetime_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Whether a raw reply is Redis's error (`-ERR ...`), which [`Value::try_from`] turns into one.
fn is_error_frame(frame: &Resp3Frame) -> bool {
    matches!(frame, Resp3Frame::SimpleError { .. } | Resp3Frame::BlobError { .. })
}

/// Whether Redis Cluster refused a command because its slot is served elsewhere (MOVED, or ASK
/// while the slot migrates). The command client follows no redirection itself (see
/// [`RedisEngine::connect`]): fred counts a redirected command's second write as a second attempt,
/// and a command may be written once only, or one cut off by a disconnect could run twice. A
/// refused command did not run, so the engine sends it again (after fred read the new owners).
fn is_redirect(error: &fred::error::Error) -> bool {
    let details = error.details();
    details.contains("Too many redirections") || details.starts_with("MOVED") || details.starts_with("ASK")
}

fn unavailable(error: fred::error::Error) -> EngineError {
    EngineError::Unavailable(error.to_string())
}

impl Engine for RedisEngine {
    async fn close(&self) {
        self.shutdown().await
    }

    fn attach(&self, inbox: Weak<dyn Inbox>) {
        let _ = self.inner.inbox.set(inbox);
    }

    fn session_tag(&self) -> &str {
        &self.inner.session_tag
    }

    async fn tell(&self, tag: &str, order: Vec<u8>) -> Result<(), EngineError> {
        calls::tell(&self.inner, tag, order).await
    }

    fn watch(&self, destination: &str) -> Pending {
        let (tx, rx) = oneshot::channel();
        match self.control.send(pubsub::Control::Watch(Arc::from(destination), tx)) {
            Ok(()) => Pending::waiting(rx),
            Err(_) => Pending::ready(Err(EngineError::Closed)),
        }
    }

    fn unwatch(&self, destination: &str) {
        let _ = self.control.send(pubsub::Control::Unwatch(Arc::from(destination)));
    }

    fn declare(&self, queue: &str, lifetime: QueueLifetime) -> Pending {
        let (tx, rx) = oneshot::channel();
        match self.control.send(pubsub::Control::Declare(Arc::from(queue), lifetime, tx)) {
            Ok(()) => Pending::waiting(rx),
            Err(_) => Pending::ready(Err(EngineError::Closed)),
        }
    }

    async fn publish(&self, message: Message) -> PendingPublish {
        if let Err(error) = self.inner.connected().await {
            return PendingPublish::done(Err(error));
        }
        let op = self.publish_op(&message);
        self.write(message.destination, op).await
    }

    /// The run goes to the publishing task as one request, so it reaches Redis in one pipeline
    /// whatever else the task is doing, and its PUBLISHes on one channel as one command.
    async fn publish_all(&self, messages: Vec<Message>) -> Vec<PendingPublish> {
        if let Err(error) = self.inner.connected().await {
            return messages.iter().map(|_| PendingPublish::done(Err(error.clone()))).collect();
        }
        let mut jobs = Vec::with_capacity(messages.len());
        let mut published = Vec::with_capacity(messages.len());
        for message in messages {
            let (reply, rx) = oneshot::channel();
            let op = self.publish_op(&message);
            jobs.push(publisher::Job { destination: message.destination, op, reply });
            published.push(PendingPublish::waiting(rx));
        }
        self.publishes.write_all(jobs).await;
        published
    }

    async fn history(&self, destination: &str, since: u64) -> Result<History, EngineError> {
        if self.inner.config.history_for(destination).is_none() {
            return Ok(History { messages: Vec::new(), complete: false, last: 0 });
        }
        self.inner.check_connected()?;
        let (mut last, mut messages) = self.inner.read_history(destination, since).await?;
        if since > last {
            // An offset from before the topic restarted (Redis came back empty, the counter
            // expired): everything retained now is new to this client.
            (last, messages) = self.inner.read_history(destination, 0).await?;
        }
        // Retained entries are a contiguous run ending at `last`: nothing was missed when the run
        // starts right after `since`, or, with nothing after `since`, when `since` is the end.
        let complete = match messages.first() {
            Some(first) => first.offset == Some(since.saturating_add(1)),
            None => since == last,
        };
        Ok(History { messages: messages.into_iter().map(Arc::new).collect(), complete, last })
    }

    async fn enqueue(&self, message: Message) -> PendingPublish {
        let inner = &self.inner;
        if let Err(error) = inner.connected().await {
            return PendingPublish::done(Err(error));
        }
        let keys = match inner.register_queue(&message.destination).await {
            Ok(keys) => keys,
            Err(error) => return PendingPublish::done(Err(error)),
        };
        let op = Op::Enqueue {
            key: keys.key,
            channel: keys.channel,
            envelope: envelope::encode(&inner.config.node_id, &message).into(),
        };
        self.write(message.destination, op).await
    }

    async fn fetch(&self, queue: &str, max: usize) -> Result<Vec<QueueEntry>, EngineError> {
        queues::fetch(&self.inner, queue, max).await
    }

    /// Handed to the publishing task and not waited for (see `publisher`): a session's run of
    /// ACKs costs no round trip, and the node's ACKs of a queue go as one call per pipeline.
    async fn ack(&self, queue: &str, ids: &[EntryId]) -> Result<(), EngineError> {
        if ids.is_empty() {
            return Ok(());
        }
        queues::acked(&self.inner, queue, ids);
        self.publishes.ack(Arc::from(queue), ids.to_vec()).await
    }

    async fn release(&self, queue: &str, ids: &[EntryId], delivered: bool) -> Result<(), EngineError> {
        self.acks_applied(queue).await;
        queues::release(&self.inner, queue, ids, delivered).await
    }

    async fn dead_letter(&self, queue: &str, ids: &[EntryId]) -> Result<(), EngineError> {
        self.acks_applied(queue).await;
        queues::dead_letter_now(&self.inner, queue, ids).await
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    fn queue_depths(&self) -> Vec<(String, u64)> {
        self.inner.depths.lock().expect("depths lock").clone()
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        self.inner.check_connected()?;
        registry::nodes(&self.inner).await
    }

    async fn presence_join(&self, destination: &str, member: Member) -> Result<(), EngineError> {
        if !self.inner.config.presence_for(destination) {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        let request = presence::Request::Join(Arc::from(destination), member, reply);
        self.inner.presence.requests.send(request).map_err(|_| EngineError::Closed)?;
        rx.await.unwrap_or(Err(EngineError::Closed))
    }

    async fn presence_leave(&self, destination: &str, member: Member) -> Result<(), EngineError> {
        if !self.inner.config.presence_for(destination) {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        let request = presence::Request::Leave(Arc::from(destination), member, reply);
        self.inner.presence.requests.send(request).map_err(|_| EngineError::Closed)?;
        rx.await.unwrap_or(Err(EngineError::Closed))
    }

    async fn presence(&self, destination: &str) -> Result<Option<Vec<Member>>, EngineError> {
        if !self.inner.config.presence_for(destination) {
            return Ok(None);
        }
        // Boxed: two commands joined make a large future, and callers (the admin API) hold it.
        Box::pin(presence::members(&self.inner, destination)).await.map(Some)
    }

    async fn call_all(&self, request: Vec<u8>) -> Result<Answers, EngineError> {
        calls::call_all(&self.inner, request).await
    }

    async fn queue_stats(&self) -> Result<Vec<(String, u64)>, EngineError> {
        self.inner.check_connected()?;
        queues::depths(&self.inner).await
    }

    async fn purge(&self, queue: &str) -> Result<u64, EngineError> {
        self.inner.check_connected()?;
        queues::purge(&self.inner, queue).await
    }
}
