//! Queue dispatch. Queues are pulled, not pushed: for each queue with local consumers a
//! dispatcher task fetches as many entries from the engine as the consumers have credit
//! (`prefetch-count` minus what they hold unacknowledged) and hands them out round-robin.
//! Acknowledging or releasing entries gives the credit back and wakes the dispatcher.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::settle::{How, Settlement};
use super::{Delivery, EntryRef, Hub, MessageTail, Subscription};
use crate::engine::{Engine, EngineError, EntryId, Pending, QueueEntry};

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
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Entries fetched in one engine call at most.
const FETCH_MAX: usize = 256;

/// Read-ahead: besides its consumers' credit, a dispatcher fetches as many entries as they took
/// in about the last window (at most their total prefetch and the engine's
/// [`Engine::read_ahead`]), so a busy consumer's returned credit is met at once and an idle or
/// slow one makes the node hold nothing beyond its credit.
const READ_AHEAD_WINDOW: Duration = Duration::from_millis(100);

/// Held entries nobody took for this long go back to the queue, for other nodes' consumers.
const HOLD_MAX: Duration = Duration::from_secs(1);

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
    ///
    /// One fetch is on its way at a time, asking for the consumers' credit plus the read-ahead
    /// (see [`READ_AHEAD_WINDOW`]); what comes back is held here, in fetch order, and handed out
    /// as credit comes back, so a consumer's ACK is answered from the node while the next fetch
    /// is still out. Entries held [`HOLD_MAX`] without a hand-out, and those held when the last
    /// consumer leaves, go back to the queue.
    async fn dispatch_queue(self: Arc<Hub>, dispatch: Arc<QueueDispatch>) {
        let read_ahead_max = self.engine.read_ahead();
        // Bounded: at most the consumers' credit plus the read-ahead (≤ their prefetch) when
        // fetched; nothing is fetched while it holds that much.
        let mut held: VecDeque<(Arc<MessageTail>, EntryRef)> = VecDeque::new();
        let mut pace = Pace::new();
        let mut fetching: Option<Fetching<'_>> = None;
        // The last fetch got fewer entries than it asked for: none until a wake (new entries
        // notified, credit back).
        let mut drained = false;
        let mut backoff = RETRY_MIN;
        let mut retry_at: Option<Instant> = None;
        loop {
            pace.handed(self.hand_out_held(&dispatch, &mut held));
            if dispatch.consumers.lock().expect("consumers lock").is_empty() {
                // Nobody consumes here any more: give back what is held, then stop (the map
                // entry goes with the task) unless a consumer came back meanwhile.
                if let Some(fetch) = fetching.take() {
                    if let Ok(entries) = fetch.future.await {
                        held.extend(entries.into_iter().map(|entry| tail_and_ref(&dispatch.name, entry)));
                    }
                }
                self.give_back(&dispatch.name, &mut held).await;
                let mut queues = self.queues.lock().expect("queues lock");
                if dispatch.consumers.lock().expect("consumers lock").is_empty() {
                    if queues.get(&dispatch.name).is_some_and(|d| Arc::ptr_eq(d, &dispatch)) {
                        queues.remove(&dispatch.name);
                        self.engine.unwatch(&dispatch.name);
                    }
                    return;
                }
                continue;
            }
            if !held.is_empty() && pace.last_hand_out.elapsed() >= HOLD_MAX {
                // Local consumers stopped taking: other nodes' consumers may.
                self.give_back(&dispatch.name, &mut held).await;
            }
            let (credit, prefetch) = {
                let consumers = dispatch.consumers.lock().expect("consumers lock");
                consumers
                    .iter()
                    .fold((0usize, 0usize), |(c, p), s| (c + s.credit() as usize, p + s.prefetch as usize))
            };
            let read_ahead = read_ahead_max.min(prefetch).min(pace.recent());
            let wanted = (credit + read_ahead).saturating_sub(held.len());
            // Consumers waiting for entries, or the read-ahead down to its low-water mark.
            let low = held.len() < credit || held.len() <= credit + read_ahead / 2;
            let retry_due = retry_at.is_none_or(|at| Instant::now() >= at);
            if fetching.is_none() && !drained && retry_due && wanted > 0 && low {
                let max = wanted.min(FETCH_MAX);
                fetching = Some(Fetching { max, future: Box::pin(self.engine.fetch(&dispatch.name, max)) });
            }

            let deadline = match (held.is_empty(), retry_at) {
                (false, _) => Some(pace.last_hand_out + HOLD_MAX),
                (true, Some(at)) => Some(at),
                (true, None) => None,
            };
            let event = tokio::select! {
                result = async {
                    match fetching.as_mut() {
                        Some(fetch) => fetch.future.as_mut().await,
                        None => std::future::pending().await,
                    }
                } => Event::Fetched(result),
                () = dispatch.wake.notified() => Event::Woken,
                () = tokio::time::sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => Event::Timer,
            };
            match event {
                Event::Fetched(result) => {
                    let asked = fetching.take().map_or(0, |f| f.max);
                    match result {
                        Ok(entries) => {
                            backoff = RETRY_MIN;
                            retry_at = None;
                            drained = entries.len() < asked;
                            held.extend(entries.into_iter().map(|entry| tail_and_ref(&dispatch.name, entry)));
                        }
                        Err(error) => {
                            // Consumers are waiting: retry with backoff until the engine is back.
                            tracing::warn!(queue = %dispatch.name, %error, retry_in = ?backoff, "queue fetch failed");
                            retry_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(RETRY_MAX);
                        }
                    }
                }
                Event::Woken => drained = false,
                Event::Timer => {
                    if retry_at.is_some_and(|at| Instant::now() >= at) {
                        retry_at = None;
                    }
                }
            }
        }
    }

    /// Hands out held entries, oldest first, while some consumer takes them; returns how many.
    fn hand_out_held(
        &self,
        dispatch: &QueueDispatch,
        held: &mut VecDeque<(Arc<MessageTail>, EntryRef)>,
    ) -> usize {
        let mut handed = 0;
        while let Some((message, entry)) = held.front() {
            if !self.hand_out(dispatch, message.clone(), entry.clone()) {
                break;
            }
            held.pop_front();
            handed += 1;
        }
        handed
    }

    /// Puts every held entry back in the queue (no client saw them: not redeliveries).
    async fn give_back(&self, queue: &Arc<str>, held: &mut VecDeque<(Arc<MessageTail>, EntryRef)>) {
        if held.is_empty() {
            return;
        }
        let ids: Vec<EntryId> = held.drain(..).map(|(_, entry)| entry.id).collect();
        if let Err(error) = self.engine.release(queue, &ids, false).await {
            // Still pending for this node: `queue-reclaim-after` after the node's end they are
            // redelivered; until then they wait, as entries of a failed ACK do.
            tracing::warn!(%queue, %error, "could not release queue entries");
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

/// A fetch on its way, and how many entries it asked for.
struct Fetching<'a> {
    max: usize,
    future: Pin<Box<dyn Future<Output = Result<Vec<QueueEntry>, EngineError>> + Send + 'a>>,
}

/// What ended a dispatcher's wait.
enum Event {
    Fetched(Result<Vec<QueueEntry>, EngineError>),
    Woken,
    Timer,
}

/// How fast local consumers take entries: hand-outs in the current and the previous
/// [`READ_AHEAD_WINDOW`], and when the last one was.
struct Pace {
    window_start: Instant,
    current: usize,
    previous: usize,
    last_hand_out: Instant,
}

impl Pace {
    fn new() -> Pace {
        let now = Instant::now();
        Pace { window_start: now, current: 0, previous: 0, last_hand_out: now }
    }

    fn roll(&mut self) {
        let elapsed = self.window_start.elapsed();
        if elapsed >= READ_AHEAD_WINDOW {
            self.previous = if elapsed >= READ_AHEAD_WINDOW * 2 { 0 } else { self.current };
            self.current = 0;
            self.window_start = Instant::now();
        }
    }

    fn handed(&mut self, n: usize) {
        if n > 0 {
            self.roll();
            self.current += n;
            self.last_hand_out = Instant::now();
        }
    }

    /// Entries handed out in about the last window.
    fn recent(&mut self) -> usize {
        self.roll();
        self.current.max(self.previous)
    }
}

fn tail_and_ref(queue: &Arc<str>, entry: QueueEntry) -> (Arc<MessageTail>, EntryRef) {
    let message = Arc::new(MessageTail::new(&entry.message));
    (message, EntryRef { queue: queue.clone(), id: entry.id, redeliveries: entry.redeliveries })
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}
