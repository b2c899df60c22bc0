//! Prometheus metrics of one node.
//!
//! Counters on the hot path are resolved once at start-up (one per STOMP command, one per drop
//! reason), so counting a frame is one atomic add, never a label lookup.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

/// Why a message did not reach a client.
pub const DROP_REASONS: [&str; 5] =
    ["slow_consumer", "queue_full", "no_subscriber", "dead_lettered", "publish_failed"];

/// Events of the cluster engine worth counting: pub/sub messages lost because the delivering
/// task fell behind (`lagged`), envelopes no node version could read (`undecodable`),
/// reconnections to Redis (`reconnected`), history messages delivered from a stream after a gap
/// (`recovered`).
pub const ENGINE_EVENTS: [&str; 4] = ["lagged", "undecodable", "reconnected", "recovered"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

/// The node's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    connections: Family<TransportLabel, Gauge>,
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
        let connections = Family::<TransportLabel, Gauge>::default();
        registry.register("connections", "Open client connections", connections.clone());
        for transport in ["ws", "tcp"] {
            let _ = connections.get_or_create(&TransportLabel { transport });
        }
        let frames_in_family = Family::<CommandLabel, Counter>::default();
        registry.register("frames_received", "STOMP frames received, by command", frames_in_family.clone());
        let frames_out_family = Family::<CommandLabel, Counter>::default();
        registry.register("frames_sent", "STOMP frames sent, by command", frames_out_family.clone());
        let frames_in = Command::ALL
            .iter()
            .map(|c| frames_in_family.get_or_create(&CommandLabel { command: c.as_str() }).clone())
            .collect();
        let frames_out = Command::ALL
            .iter()
            .map(|c| frames_out_family.get_or_create(&CommandLabel { command: c.as_str() }).clone())
            .collect();
        let published_family = Family::<KindLabel, Counter>::default();
        registry.register(
            "messages_published",
            "Messages accepted from publishers, by destination kind",
            published_family.clone(),
        );
        let published = Kind::ALL
            .iter()
            .map(|k| published_family.get_or_create(&KindLabel { kind: k.as_str() }).clone())
            .collect();
        let delivered = Counter::default();
        registry.register("messages_delivered", "MESSAGE frames written to clients", delivered.clone());
        let dropped_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "messages_dropped",
            "Messages that reached no client, by reason",
            dropped_family.clone(),
        );
        let dropped = DROP_REASONS
            .iter()
            .map(|r| dropped_family.get_or_create(&ReasonLabel { reason: r }).clone())
            .collect();
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
        let engine_events = ENGINE_EVENTS
            .iter()
            .map(|e| events_family.get_or_create(&EventLabel { event: e }).clone())
            .collect();
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

    pub fn connection_opened(&self, transport: &'static str) {
        self.open_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.connections.get_or_create(&TransportLabel { transport }).inc();
    }

    pub fn connection_closed(&self, transport: &'static str) {
        self.open_connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.connections.get_or_create(&TransportLabel { transport }).dec();
    }

    pub fn published(&self, kind: Kind) {
        self.published[kind.index()].inc();
    }

    pub fn delivered(&self, n: u64) {
        self.delivered.inc_by(n);
    }

    /// Counts `n` messages dropped for `reason`, one of [`DROP_REASONS`].
    pub fn dropped(&self, reason: &'static str, n: u64) {
        if let Some(i) = DROP_REASONS.iter().position(|r| *r == reason) {
            self.dropped[i].inc_by(n);
        }
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

    /// Counts `n` cluster engine events of one kind, one of [`ENGINE_EVENTS`].
    pub fn engine_event(&self, event: &'static str, n: u64) {
        if let Some(i) = ENGINE_EVENTS.iter().position(|e| *e == event) {
            self.engine_events[i].inc_by(n);
        }
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
