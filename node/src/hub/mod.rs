//! The hub: this node's local subscriptions and the fan-out to them.
//!
//! Sessions register [`Subscriber`]s here; the hub asks the engine to watch a destination on its
//! first local subscriber and to unwatch it after the last. The engine hands every message of a
//! watched destination to the hub (it is the engine's [`Inbox`]); the hub encodes it once
//! ([`Prepared`]) and pushes a [`Delivery`] into the [`Outbox`] of each local subscriber.
//!
//! Queues are pulled, not pushed: for each queue with local consumers a dispatcher task fetches
//! as many entries from the engine as the consumers have credit (`prefetch-count` minus what
//! they hold unacknowledged) and hands them out round-robin.
//!
//! Layout: `mod.rs` (hub, outbox, subscribers), `prepared.rs` (the shared MESSAGE tail).

pub mod prepared;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::Poll;

use futures_util::task::AtomicWaker;

use tokio::sync::Notify;

use crate::config::SlowConsumerPolicy;
use crate::destination::{Kind, Route};
use crate::engine::{AnyEngine, Engine, EngineError, EntryId, History, Inbox, Message, Pending, Published};
use crate::metrics::DropReason;
use crate::metrics::Metrics;
pub use prepared::Prepared;

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

/// One message for one subscription, queued in its connection's [`Outbox`].
#[derive(Debug)]
pub struct Delivery {
    pub subscriber: Arc<Subscriber>,
    pub message: Arc<Prepared>,
    /// Boxed: few deliveries are queue entries, and every slot of an outbox is this size.
    pub entry: Option<Box<EntryRef>>,
}

/// One client subscription as the hub sees it. Created by the session, shared with the hub.
#[derive(Debug)]
pub struct Subscriber {
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
}

impl Subscriber {
    fn credit(&self) -> u32 {
        if !self.active.load(Ordering::Acquire) {
            return 0;
        }
        self.prefetch.saturating_sub(self.in_flight.load(Ordering::Acquire))
    }
}

/// The outbound side of one connection: the deliveries queued for its session, whose size in
/// bytes is bounded by `limit`. When a push would pass the limit, the slow-consumer policy
/// applies: `Disconnect` marks the outbox overflowed (the session then sends ERROR and closes),
/// `Drop` drops the topic message and counts it. Queue entries are never dropped: the caller
/// releases them back to their queue.
///
/// A plain queue under a mutex rather than a channel: the session takes a whole batch under one
/// lock, the hub wakes the session only when the queue turns non-empty (not per delivery), and an
/// idle connection holds no preallocated slots (the queue's buffer is handed to the session with
/// each batch and freed after it).
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    /// The session's task, while it waits for deliveries.
    waker: AtomicWaker,
    limit: usize,
    policy: SlowConsumerPolicy,
    overflowed: AtomicBool,
    /// Notified once when the outbox overflows under the `Disconnect` policy.
    pub overflow: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    deliveries: VecDeque<Delivery>,
    /// The session has ended: pushes fail.
    closed: bool,
    /// Bytes counted against the limit: queued here, or taken and not yet written.
    bytes: usize,
    /// How many deliveries the session last took: the queue's next buffer is allocated that
    /// large at its first push (not before, so an idle connection holds none), instead of
    /// growing by doubling, a reallocation and a copy each time.
    last_batch: usize,
}

impl Queue {
    fn push(&mut self, delivery: Delivery) {
        if self.deliveries.capacity() == 0 {
            self.deliveries.reserve(self.last_batch.clamp(4, BATCH));
        }
        self.deliveries.push_back(delivery);
    }
}

/// Deliveries a session takes from its outbox at once, and so the most an outbox's queue is
/// allocated for up front.
pub const BATCH: usize = 128;

impl Outbox {
    pub fn new(limit: usize, policy: SlowConsumerPolicy) -> Arc<Outbox> {
        Arc::new(Outbox {
            queue: Mutex::new(Queue::default()),
            waker: AtomicWaker::new(),
            limit,
            policy,
            overflowed: AtomicBool::new(false),
            overflow: Notify::new(),
        })
    }

    /// Queues a delivery unless that would pass the byte limit or the session has ended.
    pub fn push(&self, delivery: Delivery) -> Result<(), Delivery> {
        let mut queue = self.queue.lock().expect("outbox lock");
        if queue.closed || !self.admit(&mut queue, delivery.message.len()) {
            return Err(delivery);
        }
        let was_empty = queue.deliveries.is_empty();
        queue.push(delivery);
        drop(queue);
        // A session that has not taken the queue since it turned non-empty will: one wake is
        // enough.
        if was_empty {
            self.waker.wake();
        }
        Ok(())
    }

    /// Queues topic messages for `subscriber`, in order, under one lock and with at most one
    /// wake. Each message is subject to the byte limit as [`push`](Self::push) would apply it;
    /// returns how many were refused.
    pub fn push_messages(&self, subscriber: &Arc<Subscriber>, messages: &[Arc<Prepared>]) -> usize {
        let mut queue = self.queue.lock().expect("outbox lock");
        if queue.closed {
            return messages.len();
        }
        let was_empty = queue.deliveries.is_empty();
        let mut refused = 0;
        for message in messages {
            if self.admit(&mut queue, message.len()) {
                let delivery =
                    Delivery { subscriber: subscriber.clone(), message: message.clone(), entry: None };
                queue.push(delivery);
            } else {
                refused += 1;
            }
        }
        let woken = was_empty && !queue.deliveries.is_empty();
        drop(queue);
        if woken {
            self.waker.wake();
        }
        refused
    }

    /// Counts `size` bytes against the limit, under the queue's lock (which every push takes
    /// anyway: no second contended word per delivery). False, and the slow-consumer policy
    /// applied, when they do not fit; a delivery larger than the limit still goes into an empty
    /// outbox.
    fn admit(&self, queue: &mut Queue, size: usize) -> bool {
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        if queue.bytes + size > self.limit && queue.bytes > 0 {
            if self.policy == SlowConsumerPolicy::Disconnect && !self.overflowed.swap(true, Ordering::AcqRel)
            {
                self.overflow.notify_one();
            }
            return false;
        }
        queue.bytes += size;
        true
    }

    /// Resolves once deliveries are queued.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.queue.lock().expect("outbox lock").deliveries.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Takes up to `max` queued deliveries, oldest first.
    pub fn take(&self, max: usize) -> VecDeque<Delivery> {
        let mut queue = self.queue.lock().expect("outbox lock");
        let taken = if queue.deliveries.len() <= max {
            std::mem::take(&mut queue.deliveries)
        } else {
            queue.deliveries.drain(..max).collect()
        };
        queue.last_batch = taken.len();
        taken
    }

    /// The session has ended: later pushes fail. Returns what was still queued.
    pub fn close(&self) -> VecDeque<Delivery> {
        let mut queue = self.queue.lock().expect("outbox lock");
        queue.closed = true;
        std::mem::take(&mut queue.deliveries)
    }

    /// The session wrote (or discarded) deliveries of `size` bytes in all.
    pub fn written(&self, size: usize) {
        if size > 0 {
            let mut queue = self.queue.lock().expect("outbox lock");
            queue.bytes = queue.bytes.saturating_sub(size);
        }
    }

    pub fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }
}

/// Queues `messages` for every one of `subscribers`; returns how many deliveries were refused.
fn fan_out(subscribers: &[Arc<Subscriber>], messages: &[Arc<Prepared>]) -> usize {
    subscribers.iter().map(|subscriber| subscriber.outbox.push_messages(subscriber, messages)).sum()
}

/// Local consumers of one queue and the wake-up for its dispatcher task.
struct QueueDispatch {
    name: Arc<str>,
    consumers: Mutex<Vec<Arc<Subscriber>>>,
    wake: Notify,
    next: AtomicUsize,
}

/// The local subscribers of one topic or user destination.
struct Topic {
    subscribers: Vec<Arc<Subscriber>>,
    /// The engine's watch of this destination, shared by everyone who subscribes while it is
    /// under way: a subscription is live only once the watch is.
    watched: Pending,
}

/// Backoff between failed queue fetches while consumers wait.
const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Entries fetched in one engine call at most.
const FETCH_BATCH: u32 = 256;

/// This node's subscriptions and fan-out.
pub struct Hub {
    engine: AnyEngine,
    metrics: Arc<Metrics>,
    topics: RwLock<HashMap<Arc<str>, Topic>>,
    queues: Mutex<HashMap<Arc<str>, Arc<QueueDispatch>>>,
    me: Weak<Hub>,
}

impl Hub {
    pub fn new(engine: AnyEngine, metrics: Arc<Metrics>) -> Arc<Hub> {
        let hub = Arc::new_cyclic(|me| Hub {
            engine,
            metrics,
            topics: RwLock::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
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
    /// message (in call order); the [`Published`] tells the outcome to a caller that waits for it.
    pub async fn publish(&self, kind: Kind, message: Message) -> Published {
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
    /// [`Published`] per message, in order.
    pub async fn publish_all(&self, messages: Vec<(Kind, Message)>) -> Vec<Published> {
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

    /// Adds a subscriber. The returned [`Pending`] resolves once messages published from then on
    /// reach it.
    pub fn subscribe(&self, subscriber: Arc<Subscriber>) -> Pending {
        self.metrics.subscription_added();
        match subscriber.route.kind {
            Kind::Topic | Kind::User => {
                let name: Arc<str> = Arc::from(subscriber.route.name.as_str());
                let mut topics = self.topics.write().expect("topics lock");
                match topics.get_mut(&name) {
                    Some(topic) => {
                        topic.subscribers.push(subscriber);
                        // A watch that failed (the store was unreachable) is asked for again.
                        if matches!(topic.watched.outcome(), Some(Err(_))) {
                            topic.watched = self.engine.watch(&name);
                        }
                        topic.watched.clone()
                    }
                    None => {
                        // Ordered at call time, under the lock: a later unwatch cannot overtake it.
                        let watched = self.engine.watch(&name);
                        topics
                            .insert(name, Topic { subscribers: vec![subscriber], watched: watched.clone() });
                        watched
                    }
                }
            }
            Kind::Queue => {
                let name: Arc<str> = Arc::from(subscriber.route.name.as_str());
                let (dispatch, spawn) = {
                    let mut queues = self.queues.lock().expect("queues lock");
                    match queues.get(&name) {
                        Some(d) => (d.clone(), false),
                        None => {
                            let d = Arc::new(QueueDispatch {
                                name: name.clone(),
                                consumers: Mutex::new(Vec::new()),
                                wake: Notify::new(),
                                next: AtomicUsize::new(0),
                            });
                            queues.insert(name.clone(), d.clone());
                            (d, true)
                        }
                    }
                };
                dispatch.consumers.lock().expect("consumers lock").push(subscriber);
                let pending = if spawn { self.engine.watch(&name) } else { Pending::ready(Ok(())) };
                if spawn {
                    if let Some(hub) = self.me.upgrade() {
                        tokio::spawn(hub.dispatch_queue(dispatch.clone()));
                    }
                }
                dispatch.wake.notify_one();
                pending
            }
        }
    }

    /// Removes a subscriber. Its queue entries still unacknowledged are the session's to release.
    pub fn unsubscribe(&self, subscriber: &Arc<Subscriber>) {
        subscriber.active.store(false, Ordering::Release);
        self.metrics.subscription_removed();
        let name = subscriber.route.name.as_str();
        match subscriber.route.kind {
            Kind::Topic | Kind::User => {
                let mut topics = self.topics.write().expect("topics lock");
                if let Some(topic) = topics.get_mut(name) {
                    topic.subscribers.retain(|s| !Arc::ptr_eq(s, subscriber));
                    if topic.subscribers.is_empty() {
                        topics.remove(name);
                        self.engine.unwatch(name);
                    }
                }
            }
            Kind::Queue => {
                let queues = self.queues.lock().expect("queues lock");
                if let Some(dispatch) = queues.get(name) {
                    dispatch
                        .consumers
                        .lock()
                        .expect("consumers lock")
                        .retain(|s| !Arc::ptr_eq(s, subscriber));
                    dispatch.wake.notify_one();
                }
            }
        }
    }

    /// Acknowledges queue entries a subscriber consumed, returning its credit.
    pub async fn ack(
        &self,
        subscriber: &Subscriber,
        queue: &Arc<str>,
        ids: &[EntryId],
    ) -> Result<(), EngineError> {
        self.return_credit(subscriber, queue, ids.len());
        self.engine.ack(queue, ids).await
    }

    /// Puts queue entries back (NACK, unsubscribe, closed session).
    pub async fn release(
        &self,
        subscriber: &Subscriber,
        queue: &Arc<str>,
        ids: &[EntryId],
        delivered: bool,
    ) -> Result<(), EngineError> {
        self.return_credit(subscriber, queue, ids.len());
        self.engine.release(queue, ids, delivered).await
    }

    fn return_credit(&self, subscriber: &Subscriber, queue: &str, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let _ = subscriber
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(n)));
        if let Some(dispatch) = self.queues.lock().expect("queues lock").get(queue) {
            dispatch.wake.notify_one();
        }
    }

    /// Fetches and hands out entries of one queue while it has local consumers.
    async fn dispatch_queue(self: Arc<Hub>, dispatch: Arc<QueueDispatch>) {
        let mut backoff = RETRY_MIN;
        loop {
            dispatch.wake.notified().await;
            loop {
                let credit: u32 = {
                    let consumers = dispatch.consumers.lock().expect("consumers lock");
                    consumers.iter().map(|c| c.credit()).sum()
                };
                if credit == 0 {
                    break;
                }
                let entries = match self.engine.fetch(&dispatch.name, credit.min(FETCH_BATCH) as usize).await
                {
                    Ok(entries) => {
                        backoff = RETRY_MIN;
                        entries
                    }
                    Err(error) => {
                        // Consumers are waiting: retry with backoff until the engine is back.
                        tracing::warn!(queue = %dispatch.name, %error, retry_in = ?backoff, "queue fetch failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RETRY_MAX);
                        continue;
                    }
                };
                if entries.is_empty() {
                    break;
                }
                let mut refused = Vec::new();
                for entry in entries {
                    let message = Arc::new(Prepared::new(&entry.message));
                    let entry_ref = EntryRef {
                        queue: dispatch.name.clone(),
                        id: entry.id,
                        redeliveries: entry.redeliveries,
                    };
                    if !self.hand_out(&dispatch, message, entry_ref.clone()) {
                        refused.push(entry_ref.id);
                    }
                }
                if !refused.is_empty() {
                    if let Err(error) = self.engine.release(&dispatch.name, &refused, false).await {
                        tracing::warn!(queue = %dispatch.name, %error, "could not release queue entries");
                    }
                    // Those consumers are full or gone; wait for a change before trying again.
                    break;
                }
            }
            // Stop once nobody consumes here any more; the map entry goes with it.
            let mut queues = self.queues.lock().expect("queues lock");
            let idle = dispatch.consumers.lock().expect("consumers lock").is_empty();
            if idle {
                if queues.get(&dispatch.name).is_some_and(|d| Arc::ptr_eq(d, &dispatch)) {
                    queues.remove(&dispatch.name);
                    self.engine.unwatch(&dispatch.name);
                }
                return;
            }
        }
    }

    /// Gives one entry to the next consumer with credit; false when nobody could take it.
    fn hand_out(&self, dispatch: &QueueDispatch, message: Arc<Prepared>, entry: EntryRef) -> bool {
        let consumers = dispatch.consumers.lock().expect("consumers lock");
        let n = consumers.len();
        let start = dispatch.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let consumer = &consumers[(start + i) % n];
            if consumer.credit() == 0 {
                continue;
            }
            consumer.in_flight.fetch_add(1, Ordering::AcqRel);
            let delivery = Delivery {
                subscriber: consumer.clone(),
                message: message.clone(),
                entry: Some(Box::new(entry.clone())),
            };
            match consumer.outbox.push(delivery) {
                Ok(()) => return true,
                Err(_) => {
                    consumer.in_flight.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        false
    }

    fn count_dropped(&self, dropped: usize) {
        if dropped > 0 {
            self.metrics.dropped(DropReason::SlowConsumer, dropped as u64);
        }
    }

    /// Local subscriptions of destinations, for the admin API and tests.
    pub fn topic_subscriber_count(&self, destination: &str) -> usize {
        self.topics.read().expect("topics lock").get(destination).map_or(0, |t| t.subscribers.len())
    }
}

impl Inbox for Hub {
    fn deliver(&self, message: Arc<Message>) {
        // The in-memory engine's path: one message, no run to gather.
        let topics = self.topics.read().expect("topics lock");
        let Some(Topic { subscribers, .. }) = topics.get(&*message.destination) else {
            return;
        };
        let dropped = fan_out(subscribers, &[Arc::new(Prepared::new(&message))]);
        drop(topics);
        self.count_dropped(dropped);
    }

    fn deliver_all(&self, messages: &[Arc<Message>]) {
        let topics = self.topics.read().expect("topics lock");
        let mut prepared = Vec::new();
        let mut dropped = 0;
        // Consecutive messages of one destination go to each subscriber together; runs stay in
        // arrival order, so every subscriber sees the order they came in.
        for run in messages.chunk_by(|a, b| a.destination == b.destination) {
            let Some(Topic { subscribers, .. }) = topics.get(&*run[0].destination) else {
                continue;
            };
            prepared.clear();
            prepared.extend(run.iter().map(|message| Arc::new(Prepared::new(message))));
            dropped += fan_out(subscribers, &prepared);
        }
        drop(topics);
        self.count_dropped(dropped);
    }

    fn queue_ready(&self, queue: &str) {
        if let Some(dispatch) = self.queues.lock().expect("queues lock").get(queue) {
            dispatch.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Wake, Waker};

    use super::*;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn subscriber(outbox: &Arc<Outbox>) -> Arc<Subscriber> {
        Arc::new(Subscriber {
            seq: 1,
            id: "s".to_owned(),
            head: bytes::Bytes::new(),
            ack: AckMode::Auto,
            route: Route { kind: Kind::Topic, name: "/topic/t".to_owned() },
            outbox: outbox.clone(),
            active: AtomicBool::new(true),
            prefetch: 0,
            in_flight: AtomicU32::new(0),
        })
    }

    fn prepared(body: &str) -> Arc<Prepared> {
        let message = Message {
            destination: Arc::from("/topic/t"),
            headers: Vec::new(),
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            offset: None,
        };
        Arc::new(Prepared::new(&message))
    }

    fn delivery(outbox: &Arc<Outbox>, body: &str) -> Delivery {
        Delivery { subscriber: subscriber(outbox), message: prepared(body), entry: None }
    }

    fn bodies(deliveries: VecDeque<Delivery>) -> Vec<String> {
        deliveries
            .iter()
            .map(|d| {
                let tail = String::from_utf8_lossy(d.message.tail(crate::stomp::Version::V1_2)).into_owned();
                tail.trim_end_matches('\0').rsplit("\n\n").next().unwrap_or_default().to_owned()
            })
            .collect()
    }

    #[test]
    fn the_session_is_woken_once_per_empty_queue_and_takes_batches_in_order() {
        let outbox = Outbox::new(1 << 20, SlowConsumerPolicy::Disconnect);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut ready = Box::pin(outbox.ready());
        assert!(ready.as_mut().poll(&mut cx).is_pending(), "nothing queued");
        for i in 0..5 {
            outbox.push(delivery(&outbox, &i.to_string())).expect("push");
        }
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "one wake for five pushes");
        assert!(ready.as_mut().poll(&mut cx).is_ready());
        assert_eq!(bodies(outbox.take(3)), ["0", "1", "2"]);
        assert_eq!(bodies(outbox.take(3)), ["3", "4"]);
        assert!(Box::pin(outbox.ready()).as_mut().poll(&mut cx).is_pending(), "taken: empty again");
        outbox.push(delivery(&outbox, "5")).expect("push");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2, "empty again, so woken again");
    }

    #[test]
    fn messages_pushed_together_wake_once_keep_order_and_each_meets_the_bound() {
        let size = prepared("0").len();
        let outbox = Outbox::new(3 * size, SlowConsumerPolicy::Drop);
        let subscriber = subscriber(&outbox);
        let messages: Vec<Arc<Prepared>> = (0..5).map(|i| prepared(&i.to_string())).collect();
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Box::pin(outbox.ready()).as_mut().poll(&mut cx).is_pending());
        assert_eq!(outbox.push_messages(&subscriber, &messages), 2, "two past the bound refused");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "one wake for the batch");
        assert_eq!(bodies(outbox.take(10)), ["0", "1", "2"]);
        outbox.close();
        assert_eq!(outbox.push_messages(&subscriber, &messages[..1]), 1, "closed: refused");
    }

    #[test]
    fn the_next_queue_is_allocated_for_the_last_batch_taken() {
        let outbox = Outbox::new(1 << 20, SlowConsumerPolicy::Disconnect);
        let subscriber = subscriber(&outbox);
        let messages: Vec<Arc<Prepared>> = (0..40).map(|i| prepared(&i.to_string())).collect();
        outbox.push_messages(&subscriber, &messages);
        assert_eq!(outbox.take(BATCH).len(), 40);
        assert_eq!(outbox.queue.lock().expect("lock").deliveries.capacity(), 0, "nothing held while empty");
        outbox.push_messages(&subscriber, &messages[..1]);
        assert!(
            outbox.queue.lock().expect("lock").deliveries.capacity() >= 40,
            "room for the next batch at once"
        );
    }

    #[test]
    fn a_closed_outbox_hands_back_what_was_queued_and_refuses_more() {
        let outbox = Outbox::new(1 << 20, SlowConsumerPolicy::Disconnect);
        outbox.push(delivery(&outbox, "a")).expect("push");
        let left = outbox.close();
        assert_eq!(bodies(left), ["a"]);
        assert!(outbox.push(delivery(&outbox, "b")).is_err());
    }

    #[test]
    fn past_the_byte_bound_the_policy_applies() {
        let size = delivery(&Outbox::new(1, SlowConsumerPolicy::Drop), "x").message.len();
        let dropping = Outbox::new(2 * size, SlowConsumerPolicy::Drop);
        assert!(dropping.push(delivery(&dropping, "1")).is_ok());
        assert!(dropping.push(delivery(&dropping, "2")).is_ok());
        assert!(dropping.push(delivery(&dropping, "3")).is_err(), "over the bound: dropped");
        assert!(!dropping.is_overflowed(), "the drop policy keeps the session");
        dropping.written(bodies(dropping.take(10)).len() * size);
        assert!(dropping.push(delivery(&dropping, "4")).is_ok(), "room again once written");

        let cutting = Outbox::new(size, SlowConsumerPolicy::Disconnect);
        assert!(cutting.push(delivery(&cutting, "1")).is_ok());
        assert!(cutting.push(delivery(&cutting, "2")).is_err());
        assert!(cutting.is_overflowed(), "the disconnect policy ends the session");
    }
}
