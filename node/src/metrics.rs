//! Prometheus metrics of one node.
//!
//! Counters on the hot path are resolved once at start-up (one per STOMP command, one per drop
//! reason), so counting a frame is one atomic add, never a label lookup.
//!
//! Every family is listed in `docs/metrics.md`. Besides the `stampede_*` families: the standard
//! `process_*` ones (`metrics/process.rs`). `/metrics` serves OpenMetrics to a scraper that asks
//! for it and the Prometheus text format 0.0.4 to everyone else (`metrics/format.rs`).
//!
//! Layout: `metrics.rs` (the families and their label enums), `metrics/format.rs` (content
//! negotiation, the 0.0.4 conversion), `metrics/process.rs` (`/proc/self`),
//! `metrics/latency.rs` (the batched delivery-latency histogram).

mod format;
mod latency;
mod process;

pub use format::Format;
pub use latency::{LatencyHistogram, Tally};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::destination::Kind;
use crate::stomp::Command;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabel {
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabel {
    hook: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedisCommandLabel {
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Declares a label enum: its variants with their label values, `ALL` in declaration order, and
/// `as_str`. The metric's counters are resolved once per variant at start-up, indexed by the
/// variant, so a reason that does not exist does not compile (a string label would count nothing).
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $label:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

label_enum! {
    /// How a client reached this node.
    Transport {
        Ws = "ws",
        Tcp = "tcp",
        /// SockJS, any of its transports.
        Sockjs = "sockjs",
    }
}

label_enum! {
    /// Why a message did not reach a client.
    DropReason {
        /// A subscriber's outbound buffer was full (`slow-consumer = drop`).
        SlowConsumer = "slow_consumer",
        /// A queue over `queue-max-length` dropped its oldest messages.
        QueueFull = "queue_full",
        NoSubscriber = "no_subscriber",
        /// A message delivered `queue-max-deliveries` times went to the dead-letter queue.
        DeadLettered = "dead_lettered",
        /// The engine could not publish it.
        PublishFailed = "publish_failed",
        /// Its queue was deleted (expired, or auto-deleted after its last consumer left).
        QueueDeleted = "queue_deleted",
        /// An operator purged its queue (admin API).
        Purged = "purged",
        /// Sent to one session (a backend's answer, a reply queue) that is gone or has no
        /// subscription of the destination.
        NoSession = "no_session",
    }
}

label_enum! {
    /// How a call to an HTTP backend ended.
    AppOutcome {
        /// A 2xx answer that was read and carried out.
        Ok = "ok",
        /// A 2xx answer carrying an `error` for the sender.
        Error = "error",
        /// No answer within `app-http-timeout` (waiting for a slot included).
        Timeout = "timeout",
        /// The connection failed (refused, reset, DNS).
        Unreachable = "unreachable",
        /// A status other than 2xx.
        Status = "status",
        /// Not JSON, or not the documented shape, or a message that cannot be sent.
        Invalid = "invalid",
        /// Larger than `app-http-max-response`.
        TooLarge = "too_large",
    }
}

label_enum! {
    /// Which application hook was asked.
    Hook {
        Connect = "connect",
        Subscribe = "subscribe",
    }
}

label_enum! {
    /// What an application hook decided.
    HookOutcome {
        Allow = "allow",
        Deny = "deny",
        /// Timed out, unreachable, or answered garbage: the client was refused (fail closed).
        Failed = "failed",
    }
}

label_enum! {
    /// Why a client's connection was refused before its session started. Counted once per
    /// connection, for the first reason that applied.
    RefusalReason {
        /// `max-connections` reached.
        NodeFull = "node_full",
        /// `max-connections-per-ip` reached for the client's address.
        AddressFull = "address_full",
        /// The WebSocket handshake's `Origin` is not in `ws-origins` (403).
        Origin = "origin",
        /// The WebSocket handshake was not one (400, 404, 426, 431).
        BadHandshake = "bad_handshake",
        /// The TLS handshake failed (a client that closes before sending anything, a load
        /// balancer's probe, is not counted).
        Tls = "tls",
        /// The TLS or WebSocket handshake, or the CONNECT frame, did not come within
        /// `connect-timeout`.
        Timeout = "timeout",
    }
}

label_enum! {
    /// What the cluster engine asked Redis, for its latency histogram: a command by name, one
    /// of the engine's Lua scripts by name, or a pipeline of the publisher (a batch of
    /// PUBLISHes, enqueues and history publishes, sent and answered together).
    RedisCommand {
        Pipeline = "pipeline",
        PublishMany = "publish_many",
        HistoryPublish = "history_publish",
        HistoryRead = "history_read",
        Enqueue = "enqueue",
        Ack = "ack",
        Release = "release",
        Reclaim = "reclaim",
        Depth = "depth",
        Xreadgroup = "xreadgroup",
        Xgroup = "xgroup",
        Xclaim = "xclaim",
        Sadd = "sadd",
        Smembers = "smembers",
        Get = "get",
        /// The registry's heartbeat and listing commands, and anything not named above.
        Other = "other",
    }
}

impl RedisCommand {
    /// The label of a command or script name (case does not matter); [`RedisCommand::Other`]
    /// for a name not in the list.
    pub fn of(name: &str) -> RedisCommand {
        RedisCommand::ALL
            .iter()
            .copied()
            .find(|c| c.as_str().eq_ignore_ascii_case(name))
            .unwrap_or(RedisCommand::Other)
    }
}

/// How often a refusal of one reason is logged at most; the others meanwhile are counted and
/// their number given with the next line.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Upper bounds of the Redis latency buckets: the same as the delivery latency's.
const REDIS_BUCKETS: [f64; 15] = latency::BUCKETS;

label_enum! {
    /// Events of the cluster engine worth counting.
    EngineEvent {
        /// Pub/sub messages lost because the delivering task fell behind.
        Lagged = "lagged",
        /// Envelopes no node version could read.
        Undecodable = "undecodable",
        /// Reconnections to Redis.
        Reconnected = "reconnected",
        /// History messages delivered from a stream after a gap.
        Recovered = "recovered",
        /// Queue entries whose acknowledgement could not be written to Redis (nobody waits for
        /// it): they are redelivered after `queue-reclaim-after`.
        AckFailed = "ack_failed",
        /// Queues whose stream vanished with its messages (Redis restarted empty or flushed,
        /// or the key was deleted), noticed by this node.
        QueueLost = "queue_lost",
        /// Acknowledgements and releases kept until the message store answers again.
        Deferred = "deferred",
        /// Enqueue calls sent again because their connection was lost (or they timed out)
        /// before Redis answered; each is stored once however often it is sent.
        Resent = "resent",
        /// History topics whose offsets started again at 1 (Redis lost its data, or the topic's
        /// counter expired) while this node followed them: it delivers the new offsets from 1.
        HistoryRestarted = "history_restarted",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

/// One metric of `family` per label set, created now: the hot path indexes into the result
/// instead of looking a label up.
fn resolve<S, M, C>(family: &Family<S, M, C>, labels: impl Iterator<Item = S>) -> Vec<M>
where
    S: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    labels.map(|label| family.get_or_create(&label).clone()).collect()
}

/// The node's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    connections: Vec<Gauge>,
    frames_in: Vec<Counter>,
    frames_out: Vec<Counter>,
    published: Vec<Counter>,
    delivered: Counter,
    dropped: Vec<Counter>,
    subscriptions: Gauge,
    /// Redis Cluster primaries known, and those not answering the last probe.
    redis_primaries: Gauge,
    redis_primaries_down: Gauge,
    queue_depth: Family<QueueLabel, Gauge<u64, AtomicU64>>,
    errors: Counter,
    auth_failures: Counter,
    access_denied: Counter,
    engine_events: Vec<Counter>,
    refused: Vec<Counter>,
    /// Per refusal reason: when its next log line may be written (ms after `started`), and how
    /// many refusals went unlogged since the last.
    refusal_log: Vec<(AtomicU64, AtomicU64)>,
    received_bytes: Vec<Counter>,
    sent_bytes: Vec<Counter>,
    delivery_latency: LatencyHistogram,
    redis_latency: Vec<Histogram>,
    app_http: Vec<Counter>,
    /// By hook, then by outcome.
    hooks: Vec<Vec<Counter>>,
    open_connections: AtomicU64,
    started: Instant,
    /// Held while a scrape sets the queue depths and encodes, so two scrapes at once cannot
    /// mix their depths.
    rendering: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // The root holds what every Prometheus client exports under its standard names; the
        // node's own families live under `stampede_`.
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("stampede");
        registry.register(
            "build",
            "The running build: 1, with its version as a label",
            Info::new(BuildLabels { version: env!("CARGO_PKG_VERSION") }),
        );
        let connections_family = Family::<TransportLabel, Gauge>::default();
        registry.register("connections", "Open client connections", connections_family.clone());
        let connections = resolve(
            &connections_family,
            Transport::ALL.iter().map(|t| TransportLabel { transport: t.as_str() }),
        );
        let refused_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Client connections refused before their session started, by reason",
            refused_family.clone(),
        );
        let refused =
            resolve(&refused_family, RefusalReason::ALL.iter().map(|r| ReasonLabel { reason: r.as_str() }));
        let refusal_log = RefusalReason::ALL.iter().map(|_| (AtomicU64::new(0), AtomicU64::new(0))).collect();
        let transports = || Transport::ALL.iter().map(|t| TransportLabel { transport: t.as_str() });
        let received_family = Family::<TransportLabel, Counter>::default();
        registry.register_with_unit(
            "received",
            "Bytes read from client connections (TLS and WebSocket framing included), by transport",
            Unit::Bytes,
            received_family.clone(),
        );
        let received_bytes = resolve(&received_family, transports());
        let sent_family = Family::<TransportLabel, Counter>::default();
        registry.register_with_unit(
            "sent",
            "Bytes written to client connections (TLS and WebSocket framing included), by transport",
            Unit::Bytes,
            sent_family.clone(),
        );
        let sent_bytes = resolve(&sent_family, transports());
        let frames_in_family = Family::<CommandLabel, Counter>::default();
        registry.register("frames_received", "STOMP frames received, by command", frames_in_family.clone());
        let frames_out_family = Family::<CommandLabel, Counter>::default();
        registry.register("frames_sent", "STOMP frames sent, by command", frames_out_family.clone());
        let commands = || Command::ALL.iter().map(|c| CommandLabel { command: c.as_str() });
        let frames_in = resolve(&frames_in_family, commands());
        let frames_out = resolve(&frames_out_family, commands());
        let published_family = Family::<KindLabel, Counter>::default();
        registry.register(
            "messages_published",
            "Messages accepted from publishers, by destination kind",
            published_family.clone(),
        );
        let published = resolve(&published_family, Kind::ALL.iter().map(|k| KindLabel { kind: k.as_str() }));
        let delivered = Counter::default();
        registry.register("messages_delivered", "MESSAGE frames written to clients", delivered.clone());
        let delivery_latency = LatencyHistogram::default();
        registry.register_with_unit(
            "delivery_latency",
            "Time from when this node's hub took a message from the engine (a topic message as it \
             arrived, a queue entry as it was fetched for a consumer) to when a session queued it \
             for its socket, the batch's write following at once",
            Unit::Seconds,
            delivery_latency.clone(),
        );
        let dropped_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "messages_dropped",
            "Messages that reached no client, by reason",
            dropped_family.clone(),
        );
        let dropped =
            resolve(&dropped_family, DropReason::ALL.iter().map(|r| ReasonLabel { reason: r.as_str() }));
        let subscriptions = Gauge::default();
        registry.register("subscriptions", "Active client subscriptions", subscriptions.clone());
        let redis_primaries = Gauge::default();
        registry.register(
            "redis_primaries",
            "Redis Cluster primaries (shards) the node knows of; 0 without a Redis Cluster",
            redis_primaries.clone(),
        );
        let redis_primaries_down = Gauge::default();
        registry.register(
            "redis_primaries_down",
            "Redis Cluster primaries that did not answer the node's last probe",
            redis_primaries_down.clone(),
        );
        let queue_depth = Family::<QueueLabel, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "queue_depth",
            "Messages waiting in a queue that holds messages or has consumers on this node",
            queue_depth.clone(),
        );
        let errors = Counter::default();
        registry.register("protocol_errors", "ERROR frames sent to clients", errors.clone());
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Clients refused by authentication (bad credentials or token, expired token)",
            auth_failures.clone(),
        );
        let access_denied = Counter::default();
        registry.register(
            "access_denied",
            "SEND or SUBSCRIBE frames refused by the access rules",
            access_denied.clone(),
        );
        let events_family = Family::<EventLabel, Counter>::default();
        registry.register("engine_events", "Cluster engine events, by kind", events_family.clone());
        let engine_events =
            resolve(&events_family, EngineEvent::ALL.iter().map(|e| EventLabel { event: e.as_str() }));
        let redis_family = Family::<RedisCommandLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(REDIS_BUCKETS)) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "redis_command_duration",
            "Time the cluster engine waited for Redis, by command or script (pipeline: a batch \
             of publishes and enqueues)",
            Unit::Seconds,
            redis_family.clone(),
        );
        let redis_latency = resolve(
            &redis_family,
            RedisCommand::ALL.iter().map(|c| RedisCommandLabel { command: c.as_str() }),
        );
        let app_http_family = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "app_http_requests",
            "Calls to HTTP application backends, by outcome",
            app_http_family.clone(),
        );
        let app_http =
            resolve(&app_http_family, AppOutcome::ALL.iter().map(|o| OutcomeLabel { outcome: o.as_str() }));
        let hooks_family = Family::<HookLabel, Counter>::default();
        registry.register(
            "hook_requests",
            "Calls to the application's connect and subscribe hooks, by hook and decision",
            hooks_family.clone(),
        );
        let hooks = Hook::ALL
            .iter()
            .map(|hook| {
                resolve(
                    &hooks_family,
                    HookOutcome::ALL.iter().map(|o| HookLabel { hook: hook.as_str(), outcome: o.as_str() }),
                )
            })
            .collect();
        Metrics {
            registry: root,
            app_http,
            hooks,
            connections,
            frames_in,
            frames_out,
            published,
            delivered,
            dropped,
            subscriptions,
            redis_primaries,
            redis_primaries_down,
            queue_depth,
            errors,
            auth_failures,
            access_denied,
            engine_events,
            refused,
            refusal_log,
            received_bytes,
            sent_bytes,
            delivery_latency,
            redis_latency,
            open_connections: AtomicU64::new(0),
            started: Instant::now(),
            rendering: Mutex::new(()),
        }
    }

    /// Counts a refused connection. `Some(n)` when this refusal is to be logged, `n` being how
    /// many of the same reason went unlogged since the last line: one line per reason per
    /// [`REFUSAL_LOG_EVERY`] at most, so a flood of refusals cannot flood the log.
    #[must_use = "the refusal is logged when this says so"]
    pub fn connection_refused(&self, reason: RefusalReason) -> Option<u64> {
        self.refused[reason as usize].inc();
        let (next, unlogged) = &self.refusal_log[reason as usize];
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = next.load(Ordering::Relaxed);
        let every = REFUSAL_LOG_EVERY.as_millis() as u64;
        if now >= due && next.compare_exchange(due, now + every, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            Some(unlogged.swap(0, Ordering::Relaxed))
        } else {
            unlogged.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// The counters of bytes read from and written to clients of one transport, for a
    /// connection to add to once per read or write.
    pub fn byte_counters(&self, transport: Transport) -> (Counter, Counter) {
        (self.received_bytes[transport as usize].clone(), self.sent_bytes[transport as usize].clone())
    }

    /// Adds a batch's publish-to-deliver latencies.
    pub fn delivery_latencies(&self, tally: &Tally) {
        self.delivery_latency.add(tally);
    }

    /// Observes one wait for Redis.
    pub fn redis_command(&self, command: RedisCommand, took: Duration) {
        self.redis_latency[command as usize].observe(took.as_secs_f64());
    }

    pub fn frame_in(&self, command: Command) {
        self.frames_in[command.index()].inc();
    }

    pub fn frame_out(&self, command: Command) {
        self.frames_out[command.index()].inc();
    }

    pub fn frames_out(&self, command: Command, n: u64) {
        self.frames_out[command.index()].inc_by(n);
    }

    pub fn connection_opened(&self, transport: Transport) {
        self.open_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.connections[transport as usize].inc();
    }

    pub fn connection_closed(&self, transport: Transport) {
        self.open_connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.connections[transport as usize].dec();
    }

    pub fn published(&self, kind: Kind) {
        self.published[kind.index()].inc();
    }

    pub fn delivered(&self, n: u64) {
        self.delivered.inc_by(n);
    }

    /// Counts `n` messages dropped for `reason`.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].inc_by(n);
    }

    pub fn app_http(&self, outcome: AppOutcome) {
        self.app_http[outcome as usize].inc();
    }

    pub fn hook(&self, hook: Hook, outcome: HookOutcome) {
        self.hooks[hook as usize][outcome as usize].inc();
    }

    pub fn subscription_added(&self) {
        self.subscriptions.inc();
    }

    pub fn subscription_removed(&self) {
        self.subscriptions.dec();
    }

    /// Open client connections on this node.
    pub fn connection_count(&self) -> u64 {
        self.open_connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The Redis Cluster primaries the last probe asked, and how many did not answer.
    pub fn redis_primaries(&self, known: usize, down: usize) {
        self.redis_primaries.set(i64::try_from(known).unwrap_or(i64::MAX));
        self.redis_primaries_down.set(i64::try_from(down).unwrap_or(i64::MAX));
    }

    /// Active subscriptions on this node.
    pub fn subscription_count(&self) -> u64 {
        self.subscriptions.get().max(0) as u64
    }

    /// Messages published from this node since it started, every kind together.
    pub fn published_total(&self) -> u64 {
        self.published.iter().map(|counter| counter.get()).sum()
    }

    /// MESSAGE frames written to this node's clients since it started.
    pub fn delivered_total(&self) -> u64 {
        self.delivered.get()
    }

    /// Counts `n` cluster engine events of one kind.
    pub fn engine_event(&self, event: EngineEvent, n: u64) {
        self.engine_events[event as usize].inc_by(n);
    }

    pub fn error_sent(&self) {
        self.errors.inc();
    }

    pub fn auth_failed(&self) {
        self.auth_failures.inc();
    }

    pub fn access_denied(&self) {
        self.access_denied.inc();
    }

    /// Renders the Prometheus text format 0.0.4, with queue depths read now.
    pub fn render(&self, queue_depths: Vec<(String, u64)>) -> String {
        self.render_as(Format::Prometheus, queue_depths)
    }

    /// Renders `format`, with queue depths read now: a queue missing from `queue_depths` has no
    /// series, so a queue that is gone takes its series with it.
    pub fn render_as(&self, format: Format, queue_depths: Vec<(String, u64)>) -> String {
        let mut out = String::new();
        {
            let _rendering = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
            self.queue_depth.clear();
            for (queue, depth) in queue_depths {
                self.queue_depth.get_or_create(&QueueLabel { queue }).set(depth);
            }
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        }
        match format {
            Format::OpenMetrics => out,
            Format::Prometheus => format::to_prometheus(&out),
        }
    }
}
