//! Prometheus metrics of one node.
//!
//! Counters on the hot path are resolved once at start-up (one per STOMP command, one per drop
//! reason), so counting a frame is one atomic add, never a label lookup.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
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
    }
}

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
    queue_depth: Family<QueueLabel, Gauge<u64, AtomicU64>>,
    errors: Counter,
    auth_failures: Counter,
    access_denied: Counter,
    engine_events: Vec<Counter>,
    open_connections: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("stampede");
        let connections_family = Family::<TransportLabel, Gauge>::default();
        registry.register("connections", "Open client connections", connections_family.clone());
        let connections = resolve(
            &connections_family,
            Transport::ALL.iter().map(|t| TransportLabel { transport: t.as_str() }),
        );
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
        let queue_depth = Family::<QueueLabel, Gauge<u64, AtomicU64>>::default();
        registry.register("queue_depth", "Messages waiting in a queue", queue_depth.clone());
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
        Metrics {
            registry,
            connections,
            frames_in,
            frames_out,
            published,
            delivered,
            dropped,
            subscriptions,
            queue_depth,
            errors,
            auth_failures,
            access_denied,
            engine_events,
            open_connections: AtomicU64::new(0),
        }
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

    /// Active subscriptions on this node.
    pub fn subscription_count(&self) -> u64 {
        self.subscriptions.get().max(0) as u64
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

    /// Renders the Prometheus text format, with queue depths read now.
    pub fn render(&self, queue_depths: Vec<(String, u64)>) -> String {
        self.queue_depth.clear();
        for (queue, depth) in queue_depths {
            self.queue_depth.get_or_create(&QueueLabel { queue }).set(depth);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
