//! Topic and user-destination fan-out: the local subscriptions of each watched destination,
//! and the engine's [`Inbox`], through which every message of one arrives. A message is encoded
//! once ([`MessageTail`]) and queued in the [`Outbox`](super::Outbox) of each local subscription;
//! a run of messages of one destination goes to each subscription under one lock with one wake.

use std::sync::Arc;

use super::{Hub, MessageTail, Subscription};
use crate::destination::REPLY_QUEUE_PREFIX;
use crate::engine::{Engine, Inbox, Message, Pending};
use crate::metrics::DropReason;

/// The local subscribers of one topic or user destination.
pub(super) struct Topic {
    subscriptions: Vec<Arc<Subscription>>,
    /// The engine's watch of this destination, shared by everyone who subscribes while it is
    /// under way: a subscription is live only once the watch is.
    watched: Pending,
}

/// Queues `messages` for every one of `subscribers`; returns how many deliveries were refused.
fn fan_out(subscriptions: &[Arc<Subscription>], messages: &[Arc<MessageTail>]) -> usize {
    subscriptions.iter().map(|subscription| subscription.outbox.push_messages(subscription, messages)).sum()
}

impl Topic {
    pub(super) fn subscriptions(&self) -> &[Arc<Subscription>] {
        &self.subscriptions
    }

    /// Asks for the watch again (the last one failed: the store was away); subscribers joining
    /// meanwhile share the new one.
    pub(super) fn watch_again(&mut self, watch: impl FnOnce() -> Pending) -> Pending {
        self.watched = watch();
        self.watched.clone()
    }
}

impl Hub {
    pub(super) fn subscribe_topic(&self, subscription: Arc<Subscription>) -> Pending {
        let name: Arc<str> = Arc::from(subscription.route.name.as_str());
        // A reply queue is one session's, reached only through its node: nothing to watch.
        let local = name.starts_with(REPLY_QUEUE_PREFIX);
        let watch = |name: &str| if local { Pending::ready(Ok(())) } else { self.engine.watch(name) };
        let mut topics = self.topics.write().expect("topics lock");
        match topics.get_mut(&name) {
            Some(topic) => {
                topic.subscriptions.push(subscription);
                // A watch that failed (the store was unreachable) is asked for again.
                if matches!(topic.watched.outcome(), Some(Err(_))) {
                    topic.watched = watch(&name);
                }
                topic.watched.clone()
            }
            None => {
                // Ordered at call time, under the lock: a later unwatch cannot overtake it.
                let watched = watch(&name);
                topics.insert(name, Topic { subscriptions: vec![subscription], watched: watched.clone() });
                watched
            }
        }
    }

    pub(super) fn unsubscribe_topic(&self, subscription: &Arc<Subscription>) {
        let name = subscription.route.name.as_str();
        let mut topics = self.topics.write().expect("topics lock");
        if let Some(topic) = topics.get_mut(name) {
            topic.subscriptions.retain(|s| !Arc::ptr_eq(s, subscription));
            if topic.subscriptions.is_empty() {
                topics.remove(name);
                if !name.starts_with(REPLY_QUEUE_PREFIX) {
                    self.engine.unwatch(name);
                }
            }
        }
    }

    fn count_dropped(&self, dropped: usize) {
        if dropped > 0 {
            self.metrics.dropped(DropReason::SlowConsumer, dropped as u64);
        }
    }

    /// Local subscriptions of destinations, for the admin API and tests.
    pub fn topic_subscriber_count(&self, destination: &str) -> usize {
        self.topics.read().expect("topics lock").get(destination).map_or(0, |t| t.subscriptions.len())
    }
}

impl Inbox for Hub {
    fn to_session(&self, order: &[u8]) {
        match super::sessions::ToSession::decode(order) {
            Some(order) => {
                self.deliver_to_session(order);
            }
            None => tracing::debug!("a message for a session could not be read; dropped"),
        }
    }

    fn deliver(&self, message: Arc<Message>) {
        // The in-memory engine's path: one message, no run to gather.
        let topics = self.topics.read().expect("topics lock");
        let Some(Topic { subscriptions, .. }) = topics.get(&*message.destination) else {
            return;
        };
        let dropped = fan_out(subscriptions, &[Arc::new(MessageTail::new(&message))]);
        drop(topics);
        self.count_dropped(dropped);
    }

    fn deliver_all(&self, messages: &[Arc<Message>]) {
        let topics = self.topics.read().expect("topics lock");
        let mut tails = Vec::new();
        let mut dropped = 0;
        // Consecutive messages of one destination go to each subscriber together; runs stay in
        // arrival order, so every subscriber sees the order they came in.
        for run in messages.chunk_by(|a, b| a.destination == b.destination) {
            let Some(Topic { subscriptions, .. }) = topics.get(&*run[0].destination) else {
                continue;
            };
            tails.clear();
            tails.extend(run.iter().map(|message| Arc::new(MessageTail::new(message))));
            dropped += fan_out(subscriptions, &tails);
        }
        drop(topics);
        self.count_dropped(dropped);
    }

    fn queue_ready(&self, queue: &str) {
        self.wake_dispatch(queue);
    }

    fn answer(&self, request: &[u8], node_id: &str) -> Vec<u8> {
        Hub::answer(self, request, node_id)
    }
}
