//! The embedded in-memory engine: one node, no Redis.
//!
//! Topics are delivered straight to the node's inbox. History topics keep a bounded, optionally
//! expiring log per destination, with offsets from 1 upwards. Queues are FIFO lists with an
//! in-flight table: fetched entries wait there until acknowledged or released. A queue left with
//! neither is forgotten (its depth series with it): per-session queues come and go by the
//! thousand. Entry ids are unique across queues, so one forgotten and made again never reuses one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use crate::config::Config;
use crate::engine::{
    Engine, EngineError, EntryId, History, Inbox, Message, NodeInfo, Pending, PendingPublish, QueueEntry,
};
use crate::metrics::DropReason;
use crate::metrics::Metrics;

/// The in-memory engine. Cheap to share behind an `Arc`; every lock is held for a few lines.
pub struct MemoryEngine {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    inbox: OnceLock<Weak<dyn Inbox>>,
    logs: Mutex<HashMap<Arc<str>, TopicLog>>,
    queues: Mutex<HashMap<Arc<str>, MemQueue>>,
    /// The last entry id given, in any queue.
    last_id: AtomicU64,
}

/// The retained messages of one history topic.
struct TopicLog {
    last_offset: u64,
    /// (time appended, message), oldest first; bounded by the rule's size.
    entries: VecDeque<(Instant, Arc<Message>)>,
}

#[derive(Default)]
struct MemQueue {
    ready: VecDeque<Stored>,
    in_flight: HashMap<EntryId, Stored>,
}

struct Stored {
    id: EntryId,
    message: Arc<Message>,
    /// Times a client has seen it.
    deliveries: u32,
}

impl MemoryEngine {
    /// Delivers at once: the publish is applied before the call returns.
    fn publish_now(&self, mut message: Message) -> Result<Option<u64>, EngineError> {
        let Some(inbox) = self.inbox() else {
            return Err(EngineError::Closed);
        };
        let Some(rule) = self.config.history_for(&message.destination) else {
            inbox.deliver(Arc::new(message));
            return Ok(None);
        };
        // History topic: the offset is assigned and the message delivered under the log's lock,
        // so subscribers see offsets in increasing order.
        let mut logs = self.logs.lock().expect("logs lock");
        let log = logs
            .entry(message.destination.clone())
            .or_insert_with(|| TopicLog { last_offset: 0, entries: VecDeque::new() });
        log.last_offset += 1;
        let offset = log.last_offset;
        message.offset = Some(offset);
        let message = Arc::new(message);
        log.entries.push_back((Instant::now(), message.clone()));
        while log.entries.len() > rule.size {
            log.entries.pop_front();
        }
        inbox.deliver(message);
        Ok(Some(offset))
    }

    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> MemoryEngine {
        MemoryEngine {
            config,
            metrics,
            inbox: OnceLock::new(),
            logs: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            last_id: AtomicU64::new(0),
        }
    }

    /// Puts in-flight entries back at the head of `queue`, in their original order, or moves
    /// those delivered `max_deliveries` times (0: no bound) to `<queue>.dlq`.
    fn requeue(&self, queue: &str, ids: &[EntryId], delivered: bool, max_deliveries: u32) {
        let mut dead = Vec::new();
        {
            let mut queues = self.queues.lock().expect("queues lock");
            let Some(q) = queues.get_mut(queue) else {
                return;
            };
            // Back to the head, in their original order.
            for id in ids.iter().rev() {
                let Some(mut stored) = q.in_flight.remove(id) else {
                    continue;
                };
                if !delivered {
                    stored.deliveries = stored.deliveries.saturating_sub(1);
                }
                if max_deliveries > 0 && stored.deliveries >= max_deliveries {
                    dead.push(stored.message);
                } else {
                    q.ready.push_front(stored);
                }
            }
        }
        for message in dead.into_iter().rev() {
            let dlq: Arc<str> = format!("{queue}.dlq").into();
            let mut moved = Message::clone(&message);
            moved.destination = dlq.clone();
            self.push_ready(&dlq, Arc::new(moved), 0);
            self.metrics.dropped(DropReason::DeadLettered, 1);
        }
        if let Some(inbox) = self.inbox() {
            inbox.queue_ready(queue);
        }
    }

    fn inbox(&self) -> Option<Arc<dyn Inbox>> {
        self.inbox.get().and_then(Weak::upgrade)
    }

    /// Appends to a queue's ready list, dropping the oldest entry past the configured bound.
    fn push_ready(&self, queue: &Arc<str>, message: Arc<Message>, deliveries: u32) {
        let max = self.config.queues.max_length;
        let mut dropped = 0;
        {
            let mut queues = self.queues.lock().expect("queues lock");
            let q = queues.entry(queue.clone()).or_default();
            let id: EntryId = (self.last_id.fetch_add(1, Ordering::Relaxed) + 1).to_string().into();
            q.ready.push_back(Stored { id, message, deliveries });
            while q.ready.len() > max {
                q.ready.pop_front();
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.metrics.dropped(DropReason::QueueFull, dropped);
        }
        if let Some(inbox) = self.inbox() {
            inbox.queue_ready(queue);
        }
    }
}

impl Engine for MemoryEngine {
    fn attach(&self, inbox: Weak<dyn Inbox>) {
        let _ = self.inbox.set(inbox);
    }

    fn watch(&self, _destination: &str) -> Pending {
        // Every publish reaches the hub, which knows its local subscribers.
        Pending::ready(Ok(()))
    }

    fn unwatch(&self, _destination: &str) {}

    async fn publish(&self, message: Message) -> PendingPublish {
        PendingPublish::done(self.publish_now(message))
    }

    async fn publish_all(&self, messages: Vec<Message>) -> Vec<PendingPublish> {
        let Some(inbox) = self.inbox() else {
            return messages.iter().map(|_| PendingPublish::done(Err(EngineError::Closed))).collect();
        };
        let mut published = Vec::with_capacity(messages.len());
        // Messages of destinations without history go to the hub together; one with history
        // takes its offset under its log's lock, after the run before it is delivered.
        let mut run = Vec::with_capacity(messages.len());
        for message in messages {
            if self.config.history_for(&message.destination).is_none() {
                run.push(Arc::new(message));
                published.push(PendingPublish::done(Ok(None)));
            } else {
                if !run.is_empty() {
                    inbox.deliver_all(&run);
                    run.clear();
                }
                published.push(PendingPublish::done(self.publish_now(message)));
            }
        }
        if !run.is_empty() {
            inbox.deliver_all(&run);
        }
        published
    }

    async fn history(&self, destination: &str, since: u64) -> Result<History, EngineError> {
        let Some(rule) = self.config.history_for(destination) else {
            return Ok(History { messages: Vec::new(), complete: false });
        };
        let mut logs = self.logs.lock().expect("logs lock");
        let Some(log) = logs.get_mut(destination) else {
            // Nothing was ever published here: nothing was missed unless the client claims
            // to have seen offsets that never existed.
            return Ok(History { messages: Vec::new(), complete: since == 0 });
        };
        if let Some(ttl) = rule.ttl {
            let now = Instant::now();
            while log.entries.front().is_some_and(|(at, _)| now.duration_since(*at) > ttl) {
                log.entries.pop_front();
            }
        }
        let first_retained = log.entries.front().and_then(|(_, m)| m.offset).unwrap_or(log.last_offset + 1);
        let complete = since + 1 >= first_retained && since <= log.last_offset;
        let messages = log
            .entries
            .iter()
            .filter(|(_, m)| m.offset.is_some_and(|o| o > since))
            .map(|(_, m)| m.clone())
            .collect();
        Ok(History { messages, complete })
    }

    async fn enqueue(&self, message: Message) -> PendingPublish {
        let queue = message.destination.clone();
        self.push_ready(&queue, Arc::new(message), 0);
        PendingPublish::done(Ok(None))
    }

    async fn fetch(&self, queue: &str, max: usize) -> Result<Vec<QueueEntry>, EngineError> {
        let mut queues = self.queues.lock().expect("queues lock");
        let Some(q) = queues.get_mut(queue) else {
            return Ok(Vec::new());
        };
        let n = max.min(q.ready.len());
        let mut out = Vec::with_capacity(n);
        for mut stored in q.ready.drain(..n) {
            out.push(QueueEntry {
                id: stored.id.clone(),
                message: stored.message.clone(),
                redeliveries: stored.deliveries,
            });
            stored.deliveries += 1;
            q.in_flight.insert(stored.id.clone(), stored);
        }
        Ok(out)
    }

    async fn ack(&self, queue: &str, ids: &[EntryId]) -> Result<(), EngineError> {
        let mut queues = self.queues.lock().expect("queues lock");
        if let Some(q) = queues.get_mut(queue) {
            for id in ids {
                q.in_flight.remove(id);
            }
            if q.ready.is_empty() && q.in_flight.is_empty() {
                queues.remove(queue);
            }
        }
        Ok(())
    }

    async fn release(&self, queue: &str, ids: &[EntryId], delivered: bool) -> Result<(), EngineError> {
        self.requeue(queue, ids, delivered, self.config.queues.max_deliveries);
        Ok(())
    }

    async fn dead_letter(&self, queue: &str, ids: &[EntryId]) -> Result<(), EngineError> {
        // Every fetched entry has been delivered at least once: a bound of one takes them all.
        self.requeue(queue, ids, true, 1);
        Ok(())
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn queue_depths(&self) -> Vec<(String, u64)> {
        let queues = self.queues.lock().expect("queues lock");
        queues.iter().map(|(name, q)| (name.to_string(), q.ready.len() as u64)).collect()
    }

    async fn close(&self) {}

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok(vec![NodeInfo {
            node_id: self.config.node_id.clone(),
            connections: self.metrics.connection_count(),
            subscriptions: self.metrics.subscription_count(),
            last_seen_ms: now.as_millis() as u64,
        }])
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::config::HistoryRule;

    /// An inbox that records each hand-over: (how many messages, their bodies and offsets).
    #[derive(Default)]
    struct Handovers(Mutex<Vec<Run>>);

    /// The bodies and offsets of one hand-over.
    type Run = Vec<(String, Option<u64>)>;

    impl Inbox for Handovers {
        fn deliver(&self, message: Arc<Message>) {
            self.deliver_all(std::slice::from_ref(&message));
        }

        fn deliver_all(&self, messages: &[Arc<Message>]) {
            let run = messages.iter().map(|m| (String::from_utf8_lossy(&m.body).into_owned(), m.offset));
            self.0.lock().expect("lock").push(run.collect());
        }

        fn queue_ready(&self, _queue: &str) {}
    }

    fn message(destination: &str, body: &str) -> Message {
        Message {
            destination: Arc::from(destination),
            headers: Vec::new(),
            body: Bytes::from(body.to_owned()),
            offset: None,
        }
    }

    /// A publisher's run reaches the hub as one hand-over (each subscriber then gets it under one
    /// lock with one wake), except that a message of a history topic takes its offset alone,
    /// after the messages before it: the order is the order published.
    #[tokio::test]
    async fn a_run_of_publishes_reaches_the_hub_together_in_order() {
        let history = vec![HistoryRule { pattern: "/topic/h".into(), size: 10, ttl: None }];
        let config = Config { history, ..Config::default() };
        let engine = MemoryEngine::new(Arc::new(config), Arc::new(Metrics::new()));
        let inbox = Arc::new(Handovers::default());
        let weak: Weak<dyn Inbox> = Arc::downgrade(&(inbox.clone() as Arc<dyn Inbox>));
        engine.attach(weak);
        let run = vec![
            message("/topic/a", "1"),
            message("/topic/b", "2"),
            message("/topic/a", "3"),
            message("/topic/h", "4"),
            message("/topic/a", "5"),
            message("/topic/h", "6"),
        ];
        let published = engine.publish_all(run).await;
        let mut offsets = Vec::new();
        for p in published {
            offsets.push(p.outcome().await.expect("published"));
        }
        assert_eq!(offsets, [None, None, None, Some(1), None, Some(2)]);
        let handovers = inbox.0.lock().expect("lock").clone();
        let owned =
            |run: &[(&str, Option<u64>)]| run.iter().map(|(b, o)| (b.to_string(), *o)).collect::<Vec<_>>();
        assert_eq!(
            handovers,
            [
                owned(&[("1", None), ("2", None), ("3", None)]),
                owned(&[("4", Some(1))]),
                owned(&[("5", None)]),
                owned(&[("6", Some(2))]),
            ]
        );
    }

    #[tokio::test]
    async fn a_run_published_without_a_hub_fails_every_message() {
        let engine = MemoryEngine::new(Arc::new(Config::default()), Arc::new(Metrics::new()));
        let published = engine.publish_all(vec![message("/topic/a", "1"), message("/topic/a", "2")]).await;
        assert_eq!(published.len(), 2);
        assert!(published.iter().all(|p| matches!(p.failed(), Some(EngineError::Closed))));
    }

    /// A queue whose every entry was acknowledged is forgotten, and its depth with it; made
    /// again, it gives new ids.
    #[tokio::test]
    async fn a_drained_queue_is_forgotten() {
        let engine = MemoryEngine::new(Arc::new(Config::default()), Arc::new(Metrics::new()));
        engine.enqueue(message("/queue/a", "1")).await.outcome().await.expect("enqueued");
        engine.enqueue(message("/queue/b", "2")).await.outcome().await.expect("enqueued");
        let first = engine.fetch("/queue/a", 10).await.expect("fetched");
        let ids: Vec<EntryId> = first.iter().map(|e| e.id.clone()).collect();
        let depths = || {
            let mut depths = engine.queue_depths();
            depths.sort();
            depths
        };
        assert_eq!(
            depths(),
            [("/queue/a".to_owned(), 0), ("/queue/b".to_owned(), 1)],
            "kept while in flight"
        );
        engine.ack("/queue/a", &ids).await.expect("acknowledged");
        assert_eq!(depths(), [("/queue/b".to_owned(), 1)]);
        engine.enqueue(message("/queue/a", "3")).await.outcome().await.expect("enqueued");
        let again = engine.fetch("/queue/a", 10).await.expect("fetched");
        assert_eq!(again.len(), 1);
        assert!(!ids.contains(&again[0].id), "a new id, not {:?} again", again[0].id);
    }
}
