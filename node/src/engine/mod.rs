//! The engine: the one seam between "one node" and "a cluster".
//!
//! Everything above this module (sessions, the hub) talks to an [`Engine`] and never knows which
//! one runs. The engine knows destinations and bytes, never STOMP frames: it moves [`Message`]s
//! from publishers to the nodes that watch a destination, keeps history for history topics, and
//! holds queues from which nodes fetch entries as their subscribers have credit.
//!
//! The node hands the engine an [`Inbox`] (the hub) at start-up; the engine calls it for every
//! message of a watched destination and whenever a queue may have entries to fetch.
//!
//! Queues may go away by themselves ([`QueueLifetime`]): after their last consumer leaves
//! (`auto_delete`) or after being unused (no consumer, no SEND, no SUBSCRIBE) for `expires`.
//! Deleting a queue drops its stored messages (counted as `queue_deleted`) and its depth series.
//! A SEND never races a deletion: it counts as use, so it either reaches the queue before the
//! deletion is decided (and an expiry then waits again) or comes after it and creates the queue
//! anew, empty but for that message.
//!
//! The engines also keep presence ([`presence`]): the members of the destinations the `presence`
//! setting names, and their join and leave events, published like topic messages.
//!
//! Back ends are chosen by configuration and dispatched statically through [`AnyEngine`].

#[cfg(test)]
mod contract;
pub mod memory;
pub mod presence;
pub mod redis;

use std::future::Future;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::oneshot;

use crate::config::QueueLifetime;
pub use presence::Member;

/// One message as the engine stores and moves it: a destination, the user headers, the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The destination as the publisher named it (`/topic/a`, `/queue/b`, `/user/ann/queue/c`).
    pub destination: Arc<str>,
    /// Headers to pass through to subscribers, in order; STOMP's own headers already removed.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Position in the destination's history, set by the engine for history topics only.
    pub offset: Option<u64>,
}

/// The id of a queue entry, as its engine names it.
pub type EntryId = Arc<str>;

/// One queue entry handed to this node by [`Engine::fetch`]; it stays in flight on this node
/// until it is acknowledged or released.
#[derive(Clone, Debug)]
pub struct QueueEntry {
    pub id: EntryId,
    pub message: Arc<Message>,
    /// How many times it was handed out before this time (0 on the first delivery).
    pub redeliveries: u32,
}

/// What a history read found.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The retained messages with an offset greater than the one asked for, oldest first.
    pub messages: Vec<Arc<Message>>,
    /// False when messages after the asked offset are no longer retained (trimmed, expired,
    /// lost), or when the destination keeps no history: the subscriber missed something.
    pub complete: bool,
    /// The topic's newest offset when read (0 when it has none). A live message at or below it
    /// was published before the read (it is in `messages`, or lost); one above it is new. When
    /// the asked offset is above it, the topic restarted (Redis came back empty, its counter
    /// expired) or the client's offset never existed: `messages` is then everything retained.
    pub last: u64,
}

/// One live node of the cluster, as its registry entry says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub connections: u64,
    pub subscriptions: u64,
    /// Unix time in milliseconds of the node's last heartbeat.
    pub last_seen_ms: u64,
    /// Messages published from the node since it started (a reader samples it for a rate).
    #[serde(default)]
    pub published: u64,
    /// MESSAGE frames the node wrote to its clients since it started.
    #[serde(default)]
    pub delivered: u64,
}

/// What every node answered to [`Engine::call_all`].
#[derive(Clone, Debug, Default)]
pub struct Answers {
    /// (node id, its answer), this node's among them.
    pub replies: Vec<(String, Vec<u8>)>,
    /// Live nodes that did not answer in time.
    pub missing: Vec<String>,
}

/// Errors of the engine layer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EngineError {
    #[error("the message store is unavailable: {0}")]
    Unavailable(String),
    #[error("the engine is shutting down")]
    Closed,
}

/// Resolves once the engine has applied a request that it ordered when the call was made
/// (for example: this node now receives a destination it asked to watch). Clones share the
/// outcome, so every subscriber that joins while a watch is under way waits for the same one.
#[derive(Clone)]
pub struct Pending(Shared<BoxFuture<'static, Result<(), EngineError>>>);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl Pending {
    /// Already applied.
    pub fn ready(result: Result<(), EngineError>) -> Pending {
        Pending(futures_util::future::ready(result).boxed().shared())
    }

    /// Applied when the sender side answers.
    pub fn waiting(rx: oneshot::Receiver<Result<(), EngineError>>) -> Pending {
        Pending(async move { rx.await.unwrap_or(Err(EngineError::Closed)) }.boxed().shared())
    }

    /// Applied once both are: the first failure, if any.
    pub fn and(self, other: Pending) -> Pending {
        Pending(async move { self.wait().await.and(other.wait().await) }.boxed().shared())
    }

    pub async fn wait(self) -> Result<(), EngineError> {
        self.0.await
    }

    /// The outcome, once there is one.
    pub fn outcome(&self) -> Option<Result<(), EngineError>> {
        self.0.peek().cloned()
    }
}

/// A publish an engine has taken: see [`Engine::publish`].
#[derive(Debug)]
pub struct PendingPublish(Taken);

#[derive(Debug)]
enum Taken {
    Done(Result<Option<u64>, EngineError>),
    Waiting(oneshot::Receiver<Result<Option<u64>, EngineError>>),
}

impl PendingPublish {
    /// Already applied (or refused).
    pub fn done(result: Result<Option<u64>, EngineError>) -> PendingPublish {
        PendingPublish(Taken::Done(result))
    }

    /// Applied when the sender side answers.
    pub fn waiting(rx: oneshot::Receiver<Result<Option<u64>, EngineError>>) -> PendingPublish {
        PendingPublish(Taken::Waiting(rx))
    }

    /// The failure, when it is already known.
    pub fn failed(&self) -> Option<&EngineError> {
        match &self.0 {
            Taken::Done(Err(error)) => Some(error),
            _ => None,
        }
    }

    /// Whether the outcome is known (taken in, if it just came).
    pub fn settled(&mut self) -> bool {
        match &mut self.0 {
            Taken::Done(_) => true,
            Taken::Waiting(rx) => match rx.try_recv() {
                Ok(result) => {
                    self.0 = Taken::Done(result);
                    true
                }
                Err(oneshot::error::TryRecvError::Empty) => false,
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.0 = Taken::Done(Err(EngineError::Closed));
                    true
                }
            },
        }
    }

    /// Waits for the outcome: the history offset, if the destination keeps history.
    pub async fn outcome(self) -> Result<Option<u64>, EngineError> {
        match self.0 {
            Taken::Done(result) => result,
            Taken::Waiting(rx) => rx.await.unwrap_or(Err(EngineError::Closed)),
        }
    }
}

/// Where an engine hands what reaches this node. Implemented by the hub.
pub trait Inbox: Send + Sync + 'static {
    /// A message for a destination this node watches (topics and user destinations).
    fn deliver(&self, message: Arc<Message>);
    /// Messages in the order they arrived, handed over together so that each subscriber gets
    /// them queued at once.
    fn deliver_all(&self, messages: &[Arc<Message>]) {
        for message in messages {
            self.deliver(message.clone());
        }
    }
    /// `queue` may have entries ready to fetch.
    fn queue_ready(&self, queue: &str);
    /// Answers a question of [`Engine::call_all`] asked by any node; `node_id` is this node's.
    /// Called on the engine's own tasks: it must not block.
    fn answer(&self, request: &[u8], node_id: &str) -> Vec<u8> {
        let _ = (request, node_id);
        Vec::new()
    }
    /// A message for one session of this node, sent by any node with [`Engine::tell`] (the
    /// hub's encoding). Called on the engine's own tasks: it must not block.
    fn to_session(&self, order: &[u8]) {
        let _ = order;
    }
}

/// Length of a node's session tag: the first characters of every session id it gives.
pub const SESSION_TAG_LEN: usize = 6;

/// A fresh session tag: random, so a restarted node does not give the ids of its past sessions
/// again (a late answer to an old session must not reach a new one).
pub fn new_session_tag() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// The operations every back end provides. Methods that take effect in call order are
/// synchronous and return a [`Pending`]; the rest are async.
pub trait Engine: Send + Sync {
    /// Sets where deliveries go. Called once, before anything else.
    fn attach(&self, inbox: Weak<dyn Inbox>);
    /// The prefix of this node's session ids ([`SESSION_TAG_LEN`] characters), by which a
    /// message for one session finds its node ([`Engine::tell`]).
    fn session_tag(&self) -> &str;
    /// Hands `order` to [`Inbox::to_session`] on the node whose session tag is `tag` (none, if
    /// no node has it). Resolves once the engine has sent it.
    fn tell(&self, tag: &str, order: Vec<u8>) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// This node has its first local subscriber of `destination`: start receiving it.
    fn watch(&self, destination: &str) -> Pending;
    /// This node's last local subscriber of `destination` left: stop receiving it. A queue whose
    /// lifetime says `auto_delete` is deleted, with its messages, once no node consumes it.
    fn unwatch(&self, destination: &str);
    /// A SUBSCRIBE gave `queue` its own lifetime (its `auto-delete` and `x-expires` headers): from
    /// now until the queue is deleted it replaces the configured rule's, cluster-wide. Applied in
    /// call order with [`Engine::watch`] and [`Engine::unwatch`]. Queues also expire by the rule
    /// alone: the engine asks the configuration for queues nobody declared.
    fn declare(&self, queue: &str, lifetime: QueueLifetime) -> Pending;
    /// Publishes to a topic or user destination. Resolves once the engine has *taken* the
    /// message, ordered after everything the caller published before; the [`PendingPublish`] it
    /// returns tells the outcome (the history offset, when the destination keeps one) for callers
    /// that need it (receipts). Dropping it is how a caller publishes without waiting; the engine
    /// then counts and logs a failure itself.
    fn publish(&self, message: Message) -> impl Future<Output = PendingPublish> + Send;
    /// Publishes `messages` in order, as one [`Engine::publish`] each would, and returns their
    /// [`PendingPublish`] in the same order. An engine that delivers locally hands the run to the
    /// inbox together ([`Inbox::deliver_all`]), so each subscriber gets it under one lock.
    fn publish_all(&self, messages: Vec<Message>) -> impl Future<Output = Vec<PendingPublish>> + Send {
        async move {
            let mut published = Vec::with_capacity(messages.len());
            for message in messages {
                published.push(self.publish(message).await);
            }
            published
        }
    }
    /// Retained messages of `destination` after `since` (exclusive).
    fn history(
        &self,
        destination: &str,
        since: u64,
    ) -> impl Future<Output = Result<History, EngineError>> + Send;
    /// Appends to a queue; taken and answered like [`Engine::publish`].
    fn enqueue(&self, message: Message) -> impl Future<Output = PendingPublish> + Send;
    /// Takes up to `max` ready entries of `queue` for this node.
    fn fetch(
        &self,
        queue: &str,
        max: usize,
    ) -> impl Future<Output = Result<Vec<QueueEntry>, EngineError>> + Send;
    /// The entries were consumed: forget them. Resolves once taken (the Redis engine writes it
    /// with the node's other ACKs, unawaited; a failure there means a redelivery after
    /// `queue-reclaim-after`); a later `release` or `dead_letter` never overtakes it.
    fn ack(&self, queue: &str, ids: &[EntryId]) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// The entries go back to the queue. `delivered` says whether a client saw them (then
    /// their next delivery is flagged as a redelivery).
    fn release(
        &self,
        queue: &str,
        ids: &[EntryId],
        delivered: bool,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// The entries were refused by a client (NACK with `requeue:false`): they move to the
    /// queue's dead-letter queue, `<queue>.dlq`, as entries that reach `queue-max-deliveries` do.
    fn dead_letter(
        &self,
        queue: &str,
        ids: &[EntryId],
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// True while the engine can serve (its store is reachable).
    fn is_ready(&self) -> bool;
    /// Ready entries per queue, for metrics.
    fn queue_depths(&self) -> Vec<(String, u64)>;
    /// Leaves the cluster (registry entry, background tasks). Called once, at shutdown.
    fn close(&self) -> impl Future<Output = ()> + Send;
    /// The live nodes of the cluster (just this one on a single-node engine).
    fn nodes(&self) -> impl Future<Output = Result<Vec<NodeInfo>, EngineError>> + Send;
    /// `member` (a session of this node) joined `destination`: recorded, and its join event
    /// published on `/presence<destination>`. Nothing when the `presence` setting does not name
    /// the destination, or when the member is there already.
    fn presence_join(
        &self,
        destination: &str,
        member: Member,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// `member` (a session of this node) left `destination`: removed, and its leave event
    /// published. Nothing when it was not a member.
    fn presence_leave(
        &self,
        destination: &str,
        member: Member,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// The members of `destination` on every live node, sorted; `None` when the `presence`
    /// setting does not name it.
    fn presence(
        &self,
        destination: &str,
    ) -> impl Future<Output = Result<Option<Vec<Member>>, EngineError>> + Send;
    /// Asks every live node (this one too) the same question, answered by its inbox
    /// ([`Inbox::answer`]), and gathers the answers that come within a short time.
    fn call_all(&self, request: Vec<u8>) -> impl Future<Output = Result<Answers, EngineError>> + Send;
    /// Ready entries of every queue, read now (not the metrics' periodic reading).
    fn queue_stats(&self) -> impl Future<Output = Result<Vec<(String, u64)>, EngineError>> + Send;
    /// Deletes a queue's ready entries (not those in flight); returns how many.
    fn purge(&self, queue: &str) -> impl Future<Output = Result<u64, EngineError>> + Send;
}

/// The configured back end, dispatched statically.
pub enum AnyEngine {
    Memory(memory::MemoryEngine),
    Redis(redis::RedisEngine),
}

macro_rules! dispatch {
    ($self:ident, $engine:ident => $call:expr) => {
        match $self {
            AnyEngine::Memory($engine) => $call,
            AnyEngine::Redis($engine) => $call,
        }
    };
}

impl Engine for AnyEngine {
    fn session_tag(&self) -> &str {
        dispatch!(self, e => e.session_tag())
    }

    async fn tell(&self, tag: &str, order: Vec<u8>) -> Result<(), EngineError> {
        dispatch!(self, e => e.tell(tag, order).await)
    }

    fn attach(&self, inbox: Weak<dyn Inbox>) {
        dispatch!(self, e => e.attach(inbox))
    }
    fn watch(&self, destination: &str) -> Pending {
        dispatch!(self, e => e.watch(destination))
    }
    fn unwatch(&self, destination: &str) {
        dispatch!(self, e => e.unwatch(destination))
    }
    fn declare(&self, queue: &str, lifetime: QueueLifetime) -> Pending {
        dispatch!(self, e => e.declare(queue, lifetime))
    }
    async fn publish(&self, message: Message) -> PendingPublish {
        dispatch!(self, e => e.publish(message).await)
    }
    async fn publish_all(&self, messages: Vec<Message>) -> Vec<PendingPublish> {
        dispatch!(self, e => e.publish_all(messages).await)
    }
    async fn history(&self, destination: &str, since: u64) -> Result<History, EngineError> {
        dispatch!(self, e => e.history(destination, since).await)
    }
    async fn enqueue(&self, message: Message) -> PendingPublish {
        dispatch!(self, e => e.enqueue(message).await)
    }
    async fn fetch(&self, queue: &str, max: usize) -> Result<Vec<QueueEntry>, EngineError> {
        dispatch!(self, e => e.fetch(queue, max).await)
    }
    async fn ack(&self, queue: &str, ids: &[EntryId]) -> Result<(), EngineError> {
        dispatch!(self, e => e.ack(queue, ids).await)
    }
    async fn release(&self, queue: &str, ids: &[EntryId], delivered: bool) -> Result<(), EngineError> {
        dispatch!(self, e => e.release(queue, ids, delivered).await)
    }
    async fn dead_letter(&self, queue: &str, ids: &[EntryId]) -> Result<(), EngineError> {
        dispatch!(self, e => e.dead_letter(queue, ids).await)
    }
    fn is_ready(&self) -> bool {
        dispatch!(self, e => e.is_ready())
    }
    fn queue_depths(&self) -> Vec<(String, u64)> {
        dispatch!(self, e => e.queue_depths())
    }
    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        dispatch!(self, e => e.nodes().await)
    }
    async fn close(&self) {
        dispatch!(self, e => e.close().await)
    }
    async fn presence_join(&self, destination: &str, member: Member) -> Result<(), EngineError> {
        dispatch!(self, e => e.presence_join(destination, member).await)
    }
    async fn presence_leave(&self, destination: &str, member: Member) -> Result<(), EngineError> {
        dispatch!(self, e => e.presence_leave(destination, member).await)
    }
    async fn presence(&self, destination: &str) -> Result<Option<Vec<Member>>, EngineError> {
        dispatch!(self, e => e.presence(destination).await)
    }
    async fn call_all(&self, request: Vec<u8>) -> Result<Answers, EngineError> {
        dispatch!(self, e => e.call_all(request).await)
    }
    async fn queue_stats(&self) -> Result<Vec<(String, u64)>, EngineError> {
        dispatch!(self, e => e.queue_stats().await)
    }
    async fn purge(&self, queue: &str) -> Result<u64, EngineError> {
        dispatch!(self, e => e.purge(queue).await)
    }
}
