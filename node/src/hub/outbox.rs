//! A connection's outbox: the deliveries queued for its session, bounded in bytes, with the
//! slow-consumer policy applied when the bound is reached.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use super::{EntryRef, MessageTail, Subscription};
use crate::config::SlowConsumerPolicy;
use crate::metrics::Transport;
use std::net::SocketAddr;

/// One message for one subscription, queued in its connection's [`Outbox`].
#[derive(Debug)]
pub struct Delivery {
    pub subscription: Arc<Subscription>,
    pub message: Arc<MessageTail>,
    /// Boxed: few deliveries are queue entries, and every slot of an outbox is this size.
    pub entry: Option<Box<EntryRef>>,
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
    /// Set with each order queued in `commands`, cleared when the session takes them.
    ordered: AtomicBool,
    /// Who the session is, for the admin API: kept here, in the allocation every session has
    /// anyway, rather than in a table entry of its own (see [`super::sessions`]).
    meta: Mutex<SessionMeta>,
}

/// What the admin API shows of a session besides its subscriptions.
#[derive(Clone, Debug)]
pub struct SessionMeta {
    pub transport: Transport,
    pub peer: SocketAddr,
    pub user: Option<Arc<str>>,
    /// Unix time in milliseconds of its CONNECTED; 0 until then (not listed, given no orders).
    pub connected_ms: u64,
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
    /// Orders from the admin API for the session, taken with its next batch.
    commands: Vec<Command>,
}

/// An order for a session from outside it (the admin API, through the hub), carried out by the
/// session's own task the next time it takes its outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Send ERROR with this message and close.
    Disconnect(String),
    /// End every subscription of this destination, as UNSUBSCRIBE would (without a receipt).
    Unsubscribe(String),
}

impl Queue {
    fn push(&mut self, delivery: Delivery) {
        if self.deliveries.capacity() == 0 {
            self.deliveries.reserve(self.last_batch.clamp(4, TAKE_MAX));
        }
        self.deliveries.push_back(delivery);
    }
}

/// Deliveries a session takes from its outbox at once, and so the most an outbox's queue is
/// allocated for up front.
pub const TAKE_MAX: usize = 128;

impl Outbox {
    pub fn new(limit: usize, policy: SlowConsumerPolicy) -> Arc<Outbox> {
        Arc::new(Outbox {
            queue: Mutex::new(Queue::default()),
            waker: AtomicWaker::new(),
            limit,
            policy,
            overflowed: AtomicBool::new(false),
            overflow: Notify::new(),
            ordered: AtomicBool::new(false),
            meta: Mutex::new(SessionMeta {
                transport: Transport::Tcp,
                peer: SocketAddr::from(([0, 0, 0, 0], 0)),
                user: None,
                connected_ms: 0,
            }),
        })
    }

    /// Names the session's transport and peer (at its start).
    pub fn describe(&self, transport: Transport, peer: SocketAddr) {
        let mut meta = self.meta.lock().expect("meta lock");
        meta.transport = transport;
        meta.peer = peer;
    }

    /// The session is CONNECTED as `user`, at `now_ms`.
    pub fn connected(&self, user: Option<&str>, now_ms: u64) {
        let mut meta = self.meta.lock().expect("meta lock");
        meta.user = user.map(Arc::from);
        meta.connected_ms = now_ms;
    }

    pub fn meta(&self) -> SessionMeta {
        self.meta.lock().expect("meta lock").clone()
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
    pub fn push_messages(&self, subscription: &Arc<Subscription>, messages: &[Arc<MessageTail>]) -> usize {
        let mut queue = self.queue.lock().expect("outbox lock");
        if queue.closed {
            return messages.len();
        }
        let was_empty = queue.deliveries.is_empty();
        let mut refused = 0;
        for message in messages {
            if self.admit(&mut queue, message.len()) {
                let delivery =
                    Delivery { subscription: subscription.clone(), message: message.clone(), entry: None };
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

    /// Hands the session an order; false when the session has ended.
    pub fn command(&self, command: Command) -> bool {
        let mut queue = self.queue.lock().expect("outbox lock");
        if queue.closed {
            return false;
        }
        queue.commands.push(command);
        self.ordered.store(true, Ordering::Release);
        drop(queue);
        self.waker.wake();
        true
    }

    /// The orders queued since the last call. Called for every batch the session takes: the
    /// lock is taken only when an order is there.
    pub fn take_commands(&self) -> Vec<Command> {
        if !self.ordered.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut self.queue.lock().expect("outbox lock").commands)
    }

    /// Resolves once deliveries or commands are queued.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            let queue = self.queue.lock().expect("outbox lock");
            if queue.deliveries.is_empty() && queue.commands.is_empty() {
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicU32, AtomicUsize};
    use std::task::{Context, Wake, Waker};

    use super::*;
    use crate::destination::{Kind, Route};
    use crate::engine::Message;
    use crate::hub::AckMode;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn subscription(outbox: &Arc<Outbox>) -> Arc<Subscription> {
        Arc::new(Subscription {
            seq: 1,
            id: "s".to_owned(),
            head: bytes::Bytes::new(),
            ack: AckMode::Auto,
            route: Route { kind: Kind::Topic, name: "/topic/t".to_owned() },
            outbox: outbox.clone(),
            active: AtomicBool::new(true),
            prefetch: 0,
            in_flight: AtomicU32::new(0),
            lifetime: None,
        })
    }

    fn tail(body: &str) -> Arc<MessageTail> {
        let message = Message {
            destination: Arc::from("/topic/t"),
            headers: Vec::new(),
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            offset: None,
        };
        Arc::new(MessageTail::new(&message))
    }

    fn delivery(outbox: &Arc<Outbox>, body: &str) -> Delivery {
        Delivery { subscription: subscription(outbox), message: tail(body), entry: None }
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
        let size = tail("0").len();
        let outbox = Outbox::new(3 * size, SlowConsumerPolicy::Drop);
        let subscription = subscription(&outbox);
        let messages: Vec<Arc<MessageTail>> = (0..5).map(|i| tail(&i.to_string())).collect();
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Box::pin(outbox.ready()).as_mut().poll(&mut cx).is_pending());
        assert_eq!(outbox.push_messages(&subscription, &messages), 2, "two past the bound refused");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "one wake for the batch");
        assert_eq!(bodies(outbox.take(10)), ["0", "1", "2"]);
        outbox.close();
        assert_eq!(outbox.push_messages(&subscription, &messages[..1]), 1, "closed: refused");
    }

    #[test]
    fn the_next_queue_is_allocated_for_the_last_batch_taken() {
        let outbox = Outbox::new(1 << 20, SlowConsumerPolicy::Disconnect);
        let subscription = subscription(&outbox);
        let messages: Vec<Arc<MessageTail>> = (0..40).map(|i| tail(&i.to_string())).collect();
        outbox.push_messages(&subscription, &messages);
        assert_eq!(outbox.take(TAKE_MAX).len(), 40);
        assert_eq!(outbox.queue.lock().expect("lock").deliveries.capacity(), 0, "nothing held while empty");
        outbox.push_messages(&subscription, &messages[..1]);
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
