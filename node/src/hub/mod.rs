//! The hub: this node's local subscriptions and the fan-out to them.
//!
//! Sessions register [`Subscription`]s here; the hub asks the engine to watch a destination on its
//! first local subscriber and to unwatch it after the last. The engine hands every message of a
//! watched destination to the hub (it is the engine's [`Inbox`]); the hub encodes it once
//! ([`MessageTail`]) and pushes a [`Delivery`] into the [`Outbox`] of each local subscriber.
//!
//! Queues are pulled, not pushed: for each queue with local consumers a dispatcher task fetches
//! as many entries from the engine as the consumers have credit (`prefetch-count` minus what
//! they hold unacknowledged) and hands them out round-robin. A SUBSCRIBE that sets the queue's
//! lifetime declares it to the engine before the watch; the engine deletes the queue when the
//! lifetime says, after the hub's unwatch or once it has been unused long enough.
//!
//! Layout: `mod.rs` (the hub, subscriptions, publishing), `topic.rs` (topic and user-destination
//! fan-out: the engine's [`Inbox`]), `queue.rs` (queue dispatch, acknowledgements, credit),
//! `outbox.rs` (a connection's bounded delivery queue and the orders it carries), `tail.rs` (the
//! shared MESSAGE tail), `sessions.rs` (connected sessions and the admin API's questions and orders),
//! `presence.rs` (joins, leaves and members of destinations whose presence is kept), `settle.rs`
//! (acknowledgements and watches kept while the store is unavailable, applied when it answers).

mod outbox;
mod presence;
mod queue;
pub mod sessions;
mod settle;
pub mod tail;
mod topic;

pub use outbox::{Command, Delivery, Outbox, SessionMeta, TAKE_MAX};
pub use tail::MessageTail;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use crate::config::QueueLifetime;
use crate::destination::{Kind, Route};
use crate::engine::{
    AnyEngine, Engine, EngineError, EntryId, History, Inbox, Message, Pending, PendingPublish,
};
use crate::metrics::{DropReason, Metrics};
use queue::QueueDispatch;
use topic::Topic;

/// Acknowledgement mode of a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    /// Cumulative: acknowledging one message acknowledges every earlier one of the subscription.
    Client,
    ClientIndividual,
}

impl AckMode {
    pub fn parse(value: &str) -> Option<AckMode> {
        match value {
            "auto" => Some(AckMode::Auto),
            "client" => Some(AckMode::Client),
            "client-individual" => Some(AckMode::ClientIndividual),
            _ => None,
        }
    }
}

/// One queue entry travelling to a client.
#[derive(Clone, Debug)]
pub struct EntryRef {
    pub queue: Arc<str>,
    pub id: EntryId,
    pub redeliveries: u32,
}

/// One client subscription as the hub sees it. Created by the session, shared with the hub.
#[derive(Debug)]
pub struct Subscription {
    /// Unique within its session, so a re-used subscription id never receives stale deliveries.
    pub seq: u64,
    /// The client's subscription id.
    pub id: String,
    /// Written before each delivery: `MESSAGE` and the `subscription` header, escaped for the
    /// session's protocol version.
    pub head: bytes::Bytes,
    pub ack: AckMode,
    pub route: Route,
    pub outbox: Arc<Outbox>,
    /// Cleared when the subscription ends; deliveries still queued for it are then dropped
    /// (or, for queue entries, released).
    pub active: AtomicBool,
    /// Queue subscriptions: how many entries it may hold unacknowledged.
    pub prefetch: u32,
    /// Queue subscriptions: how many entries it holds unacknowledged now.
    pub in_flight: AtomicU32,
    /// Queue subscriptions: the lifetime its SUBSCRIBE gave the queue (`auto-delete`,
    /// `x-expires`); `None` leaves the queue's as it is.
    pub lifetime: Option<QueueLifetime>,
}

impl Subscription {
    /// Queue subscriptions: how many more entries it may be handed now.
    fn credit(&self) -> u32 {
        if !self.active.load(Ordering::Acquire) {
            return 0;
        }
        self.prefetch.saturating_sub(self.in_flight.load(Ordering::Acquire))
    }
}

/// This node's subscriptions and fan-out.
pub struct Hub {
    engine: AnyEngine,
    metrics: Arc<Metrics>,
    topics: RwLock<HashMap<Arc<str>, Topic>>,
    queues: Mutex<HashMap<Arc<str>, Arc<QueueDispatch>>>,
    /// Every session by id, with its outbox ([`sessions`]).
    sessions: Mutex<HashMap<Arc<str>, Arc<Outbox>>>,
    /// Settlements and watches waiting for the store to answer ([`settle`]).
    deferred: Mutex<settle::Deferred>,
    me: Weak<Hub>,
}

impl Hub {
    pub fn new(engine: AnyEngine, metrics: Arc<Metrics>) -> Arc<Hub> {
        let hub = Arc::new_cyclic(|me| Hub {
            engine,
            metrics,
            topics: RwLock::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            deferred: Mutex::new(settle::Deferred::default()),
            me: me.clone(),
        });
        let inbox: Weak<dyn Inbox> = hub.me.clone();
        hub.engine.attach(inbox);
        hub
    }

    pub fn engine(&self) -> &AnyEngine {
        &self.engine
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Publishes to a topic, queue or user destination. Resolves once the engine has taken the
    /// message (in call order); the [`PendingPublish`] tells the outcome to a caller that waits for it.
    pub async fn publish(&self, kind: Kind, message: Message) -> PendingPublish {
        let published = match kind {
            Kind::Queue => self.engine.enqueue(message).await,
            Kind::Topic | Kind::User => self.engine.publish(message).await,
        };
        // A failure known now is counted here; one found later by the engine, by the engine.
        match published.failed() {
            None => self.metrics.published(kind),
            Some(_) => self.metrics.dropped(DropReason::PublishFailed, 1),
        }
        published
    }

    /// Publishes a run of topic and user-destination messages (never queue entries), in order,
    /// handed to the engine together: on the in-memory engine each local subscriber gets the
    /// whole run queued under one lock with one wake, instead of one each per message. One
    /// [`PendingPublish`] per message, in order.
    pub async fn publish_all(&self, messages: Vec<(Kind, Message)>) -> Vec<PendingPublish> {
        let mut kinds = Vec::with_capacity(messages.len());
        let messages = messages
            .into_iter()
            .map(|(kind, message)| {
                debug_assert!(kind != Kind::Queue, "queue entries are enqueued one by one");
                kinds.push(kind);
                message
            })
            .collect();
        let published = self.engine.publish_all(messages).await;
        for (kind, published) in kinds.into_iter().zip(&published) {
            match published.failed() {
                None => self.metrics.published(kind),
                Some(_) => self.metrics.dropped(DropReason::PublishFailed, 1),
            }
        }
        published
    }

    pub async fn history(&self, destination: &str, since: u64) -> Result<History, EngineError> {
        self.engine.history(destination, since).await
    }

    /// Adds a subscription. The returned [`Pending`] resolves once messages published from then
    /// on reach it.
    pub fn subscribe(&self, subscription: Arc<Subscription>) -> Pending {
        self.metrics.subscription_added();
        match subscription.route.kind {
            Kind::Topic | Kind::User => self.subscribe_topic(subscription),
            Kind::Queue => self.subscribe_queue(subscription),
        }
    }

    /// Removes a subscription. Its queue entries still unacknowledged are the session's to
    /// release.
    pub fn unsubscribe(&self, subscription: &Arc<Subscription>) {
        subscription.active.store(false, Ordering::Release);
        self.metrics.subscription_removed();
        match subscription.route.kind {
            Kind::Topic | Kind::User => self.unsubscribe_topic(subscription),
            Kind::Queue => self.unsubscribe_queue(subscription),
        }
    }
}
