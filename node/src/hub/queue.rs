//! Queue dispatch. Queues are pulled, not pushed: for each queue with local consumers a
//! dispatcher task fetches as many entries from the engine as the consumers have credit
//! (`prefetch-count` minus what they hold unacknowledged) and hands them out round-robin.
//! Acknowledging or releasing entries gives the credit back and wakes the dispatcher.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::settle::{How, Settlement};
use super::{Delivery, EntryRef, Hub, MessageTail, Subscription};
use crate::engine::{Engine, EngineError, EntryId, Pending};

/// Local consumers of one queue and the wake-up for its dispatcher task.
pub(super) struct QueueDispatch {
    name: Arc<str>,
    consumers: Mutex<Vec<Arc<Subscription>>>,
    wake: Notify,
    next: AtomicUsize,
}

impl QueueDispatch {
    pub(super) fn consumers(&self) -> Vec<Arc<Subscription>> {
        self.consumers.lock().expect("consumers lock").clone()
    }
}

/// Backoff between failed queue fetches while consumers wait.
const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Entries fetched in one engine call at most.
const FETCH_MAX: u32 = 256;

impl Hub {
    pub(super) fn subscribe_queue(&self, subscription: Arc<Subscription>) -> Pending {
        let name: Arc<str> = Arc::from(subscription.route.name.as_str());
        // Before the watch, so the engine has the lifetime when this node's consumers leave.
        let declared = subscription.lifetime.map(|lifetime| self.engine.declare(&name, lifetime));
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
        dispatch.consumers.lock().expect("consumers lock").push(subscription);
        let pending = if spawn { self.engine.watch(&name) } else { Pending::ready(Ok(())) };
        if spawn {
            if let Some(hub) = self.me.upgrade() {
                tokio::spawn(hub.dispatch_queue(dispatch.clone()));
            }
        }
        dispatch.wake.notify_one();
        match declared {
            Some(declared) => declared.and(pending),
            None => pending,
        }
    }

    pub(super) fn unsubscribe_queue(&self, subscription: &Arc<Subscription>) {
        let name = subscription.route.name.as_str();
        let queues = self.queues.lock().expect("queues lock");
        if let Some(dispatch) = queues.get(name) {
            dispatch.consumers.lock().expect("consumers lock").retain(|s| !Arc::ptr_eq(s, subscription));
            dispatch.wake.notify_one();
        }
    }

    /// The depths of the queues that hold messages or have consumers on this node, for the
    /// metrics: a queue that is empty and consumed nowhere here (a per-session queue after its
    /// session, say) has no series, so none outlives its queue. A queue consumed here that the
    /// engine gives no depth for (the in-memory engine forgets a drained queue; the Redis engine
    /// reads depths every few seconds) is at 0.
    pub fn queue_depths(&self) -> Vec<(String, u64)> {
        let mut depths = self.engine.queue_depths();
        let queues = self.queues.lock().expect("queues lock");
        depths.retain(|(queue, depth)| *depth > 0 || queues.contains_key(queue.as_str()));
        let reported: HashSet<&str> = depths.iter().map(|(queue, _)| queue.as_str()).collect();
        let missing: Vec<(String, u64)> = queues
            .keys()
            .map(|queue| &**queue)
            .filter(|queue| !reported.contains(queue))
            .map(|queue| (queue.to_owned(), 0))
            .collect();
        depths.extend(missing);
        depths
    }

    /// Acknowledges queue entries a subscriber consumed, returning its credit. With the store
    /// away, the acknowledgement is kept and applied when it answers ([`settle`](super::settle)).
    pub async fn ack(
        &self,
        subscription: &Subscription,
        queue: &Arc<str>,
        ids: &[EntryId],
    ) -> Result<(), EngineError> {
        self.return_credit(subscription, queue, ids.len());
        self.settle(Settlement { how: How::Ack, queue: queue.clone(), ids: ids.to_vec() }).await
    }

    /// Puts queue entries back (NACK, unsubscribe, closed session); deferred as ACKs are. The
    /// credit comes back after the entries, so the dispatcher it wakes finds them in their place
    /// (the memory engine puts them back at the head) rather than fetch the next ones first.
    pub async fn release(
        &self,
        subscription: &Subscription,
        queue: &Arc<str>,
        ids: &[EntryId],
        delivered: bool,
    ) -> Result<(), EngineError> {
        let released = self
            .settle(Settlement { how: How::Release { delivered }, queue: queue.clone(), ids: ids.to_vec() })
            .await;
        self.return_credit(subscription, queue, ids.len());
        released
    }

    /// Moves queue entries a subscriber refused (NACK `requeue:false`) to the dead-letter queue.
    pub async fn dead_letter(
        &self,
        subscription: &Subscription,
        queue: &Arc<str>,
        ids: &[EntryId],
    ) -> Result<(), EngineError> {
        let moved =
            self.settle(Settlement { how: How::DeadLetter, queue: queue.clone(), ids: ids.to_vec() }).await;
        self.return_credit(subscription, queue, ids.len());
        moved
    }

    fn return_credit(&self, subscription: &Subscription, queue: &str, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let _ = subscription
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(n)));
        self.wake_dispatch(queue);
    }

    /// Wakes the dispatcher of `queue`, if it has local consumers.
    pub(super) fn wake_dispatch(&self, queue: &str) {
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
                let entries = match self.engine.fetch(&dispatch.name, credit.min(FETCH_MAX) as usize).await {
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
                    let message = Arc::new(MessageTail::new(&entry.message));
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
    fn hand_out(&self, dispatch: &QueueDispatch, message: Arc<MessageTail>, entry: EntryRef) -> bool {
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
                subscription: consumer.clone(),
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
}
