//! The embedded in-memory engine: one node, no Redis.
//!
//! Topics are delivered straight to the node's inbox. History topics keep a bounded, optionally
//! expiring log per destination, with offsets from 1 upwards. Queues are FIFO lists with an
//! in-flight table: fetched entries wait there until acknowledged or released.
//!
//! A queue exists from its first SEND or SUBSCRIBE. Its lifetime is applied under the queues'
//! lock: an `auto_delete` queue goes at the hub's unwatch (the node's last consumer left), and a
//! sweeping task deletes every [`SWEEP_INTERVAL`] the queues unused for their `expires`. A SEND
//! takes the same lock, so it lands either before a deletion (and counts as use) or after it (and
//! creates the queue again).
//! A queue with no lifetime is forgotten once it has no entries, no consumer on this node
//! and nothing in flight (its depth series with it): per-session queues come and go by the
//! thousand. Entry ids are unique across queues, so one forgotten and made again never reuses one.
//!
//! Presence is a map per destination from session id to member, changed and read under one
//! lock; a join or leave publishes its event to the inbox like any topic message, after the lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::config::{Config, QueueLifetime};
use crate::engine::{
    presence, Answers, Engine, EngineError, EntryId, History, Inbox, Member, Message, NodeInfo, Pending,
    PendingPublish, QueueEntry,
};
use crate::metrics::DropReason;
use crate::metrics::Metrics;

/// The in-memory engine. Cheap to share behind an `Arc`; every lock is held for a few lines.
pub struct MemoryEngine {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    inbox: OnceLock<Weak<dyn Inbox>>,
    session_tag: String,
    logs: Mutex<HashMap<Arc<str>, TopicLog>>,
    queues: Arc<Mutex<HashMap<Arc<str>, MemQueue>>>,
    /// The last entry id given, over every queue: a queue created again after a deletion does
    /// not reuse the ids a session may still hold from the old one.
    last_id: AtomicU64,
    /// The task deleting expired queues, started by `attach`.
    sweeper: Mutex<Option<JoinHandle<()>>>,
    /// The members of each destination whose presence is kept, by session id.
    presence: Mutex<HashMap<Arc<str>, BTreeMap<String, Member>>>,
}

/// How often queues are checked for expiry: a queue goes at most this long after its
/// `expires`.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// The retained messages of one history topic.
struct TopicLog {
    last_offset: u64,
    /// (time appended, message), oldest first; bounded by the rule's size.
    entries: VecDeque<(Instant, Arc<Message>)>,
}

struct MemQueue {
    ready: VecDeque<Stored>,
    in_flight: HashMap<EntryId, Stored>,
    /// Between the hub's watch and unwatch: the node has consumers of it.
    consumed: bool,
    /// When it was last used: its last SEND or SUBSCRIBE, or its last consumer leaving.
    used: Instant,
    /// The lifetime a SUBSCRIBE gave it; `None`: the configured rule's.
    declared: Option<QueueLifetime>,
}

impl MemQueue {
    fn new() -> MemQueue {
        MemQueue {
            ready: VecDeque::new(),
            in_flight: HashMap::new(),
            consumed: false,
            used: Instant::now(),
            declared: None,
        }
    }

    fn lifetime(&self, config: &Config, name: &str) -> QueueLifetime {
        self.declared.unwrap_or_else(|| config.queue_lifetime(name))
    }

    /// A queue nothing would miss: no lifetime to keep time for, no consumer on this node, no
    /// entry ready or in flight.
    fn forgettable(&self, config: &Config, name: &str) -> bool {
        let lifetime = self.lifetime(config, name);
        !self.consumed
            && lifetime.expires.is_none()
            && !lifetime.auto_delete
            && self.ready.is_empty()
            && self.in_flight.is_empty()
    }

    /// Messages deleted with it: the ready ones and those in flight (whose ack or release then
    /// finds nothing).
    fn messages(&self) -> u64 {
        (self.ready.len() + self.in_flight.len()) as u64
    }
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
            session_tag: super::new_session_tag(),
            logs: Mutex::new(HashMap::new()),
            queues: Arc::new(Mutex::new(HashMap::new())),
            last_id: AtomicU64::new(0),
            sweeper: Mutex::new(None),
            presence: Mutex::new(HashMap::new()),
        }
    }

    /// Deletes the queues unused for their `expires`, every [`SWEEP_INTERVAL`], until the
    /// engine is dropped.
    async fn sweep_loop(
        queues: Weak<Mutex<HashMap<Arc<str>, MemQueue>>>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(queues) = queues.upgrade() else { return };
            let now = Instant::now();
            let mut deleted = Vec::new();
            queues.lock().expect("queues lock").retain(|name, q| {
                let expired = !q.consumed
                    && q.lifetime(&config, name).expires.is_some_and(|e| now.duration_since(q.used) >= e);
                if expired {
                    deleted.push((name.clone(), q.messages()));
                }
                !expired
            });
            for (queue, messages) in deleted {
                deleted_queue(&metrics, &queue, messages, "expired");
            }
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
            let q = queues.entry(queue.clone()).or_insert_with(MemQueue::new);
            q.used = Instant::now();
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
    fn session_tag(&self) -> &str {
        &self.session_tag
    }

    /// One node: every session is this node's, whatever the tag says.
    async fn tell(&self, _tag: &str, order: Vec<u8>) -> Result<(), EngineError> {
        let inbox = self.inbox().ok_or(EngineError::Closed)?;
        inbox.to_session(&order);
        Ok(())
    }

    fn attach(&self, inbox: Weak<dyn Inbox>) {
        let _ = self.inbox.set(inbox);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let sweep =
                Self::sweep_loop(Arc::downgrade(&self.queues), self.config.clone(), self.metrics.clone());
            *self.sweeper.lock().expect("sweeper lock") = Some(runtime.spawn(sweep));
        }
    }

    /// Every publish reaches the hub, which knows its local subscribers; a queue is marked in
    /// use while the hub has consumers of it.
    fn watch(&self, destination: &str) -> Pending {
        if self.config.is_queue(destination) {
            let mut queues = self.queues.lock().expect("queues lock");
            let q = queues.entry(Arc::from(destination)).or_insert_with(MemQueue::new);
            q.consumed = true;
            q.used = Instant::now();
        }
        Pending::ready(Ok(()))
    }

    fn unwatch(&self, destination: &str) {
        if !self.config.is_queue(destination) {
            return;
        }
        let deleted = {
            let mut queues = self.queues.lock().expect("queues lock");
            let Some(q) = queues.get_mut(destination) else { return };
            q.consumed = false;
            q.used = Instant::now();
            if q.lifetime(&self.config, destination).auto_delete {
                queues.remove(destination).map(|q| q.messages())
            } else {
                if q.forgettable(&self.config, destination) {
                    queues.remove(destination);
                }
                None
            }
        };
        if let Some(messages) = deleted {
            deleted_queue(&self.metrics, destination, messages, "auto-deleted");
        }
    }

    fn declare(&self, queue: &str, lifetime: QueueLifetime) -> Pending {
        let mut queues = self.queues.lock().expect("queues lock");
        let q = queues.entry(Arc::from(queue)).or_insert_with(MemQueue::new);
        q.declared = Some(lifetime);
        q.used = Instant::now();
        Pending::ready(Ok(()))
    }

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
            return Ok(History { messages: Vec::new(), complete: false, last: 0 });
        };
        let mut logs = self.logs.lock().expect("logs lock");
        let Some(log) = logs.get_mut(destination) else {
            // Nothing was ever published here: nothing was missed unless the client claims
            // to have seen offsets that never existed.
            return Ok(History { messages: Vec::new(), complete: since == 0, last: 0 });
        };
        if let Some(ttl) = rule.ttl {
            let now = Instant::now();
            while log.entries.front().is_some_and(|(at, _)| now.duration_since(*at) > ttl) {
                log.entries.pop_front();
            }
        }
        let first_retained = log.entries.front().and_then(|(_, m)| m.offset).unwrap_or(log.last_offset + 1);
        let complete = since + 1 >= first_retained && since <= log.last_offset;
        // An offset past the last one is from before a restart: everything retained is new to it.
        let after = if since > log.last_offset { 0 } else { since };
        let messages = log
            .entries
            .iter()
            .filter(|(_, m)| m.offset.is_some_and(|o| o > after))
            .map(|(_, m)| m.clone())
            .collect();
        Ok(History { messages, complete, last: log.last_offset })
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
            if q.forgettable(&self.config, queue) {
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
            published: self.metrics.published_total(),
            delivered: self.metrics.delivered_total(),
        }])
    }

    async fn presence_join(&self, destination: &str, member: Member) -> Result<(), EngineError> {
        if !self.config.presence_for(destination) {
            return Ok(());
        }
        let joined = {
            let mut presence = self.presence.lock().expect("presence lock");
            let members = presence.entry(Arc::from(destination)).or_default();
            match members.entry(member.session.clone()) {
                std::collections::btree_map::Entry::Occupied(_) => false,
                std::collections::btree_map::Entry::Vacant(vacant) => {
                    vacant.insert(member.clone());
                    true
                }
            }
        };
        if joined {
            self.publish_now(presence::event(presence::Change::Join, destination, &member))?;
        }
        Ok(())
    }

    async fn presence_leave(&self, destination: &str, member: Member) -> Result<(), EngineError> {
        let left = {
            let mut presence = self.presence.lock().expect("presence lock");
            let Some(members) = presence.get_mut(destination) else {
                return Ok(());
            };
            let left = members.remove(&member.session);
            if members.is_empty() {
                presence.remove(destination);
            }
            left
        };
        if let Some(member) = left {
            self.publish_now(presence::event(presence::Change::Leave, destination, &member))?;
        }
        Ok(())
    }

    async fn presence(&self, destination: &str) -> Result<Option<Vec<Member>>, EngineError> {
        if !self.config.presence_for(destination) {
            return Ok(None);
        }
        let presence = self.presence.lock().expect("presence lock");
        let mut members: Vec<Member> =
            presence.get(destination).map(|m| m.values().cloned().collect()).unwrap_or_default();
        members.sort();
        Ok(Some(members))
    }

    async fn call_all(&self, request: Vec<u8>) -> Result<Answers, EngineError> {
        let inbox = self.inbox().ok_or(EngineError::Closed)?;
        let node_id = self.config.node_id.clone();
        let reply = inbox.answer(&request, &node_id);
        Ok(Answers { replies: vec![(node_id, reply)], missing: Vec::new() })
    }

    async fn queue_stats(&self) -> Result<Vec<(String, u64)>, EngineError> {
        Ok(self.queue_depths())
    }

    async fn purge(&self, queue: &str) -> Result<u64, EngineError> {
        let mut queues = self.queues.lock().expect("queues lock");
        let Some(q) = queues.get_mut(queue) else { return Ok(0) };
        let purged = q.ready.len() as u64;
        q.ready.clear();
        drop(queues);
        if purged > 0 {
            self.metrics.dropped(DropReason::Purged, purged);
        }
        Ok(purged)
    }
}

impl Drop for MemoryEngine {
    fn drop(&mut self) {
        if let Some(sweeper) = self.sweeper.lock().expect("sweeper lock").take() {
            sweeper.abort();
        }
    }
}

/// Counts and logs a deleted queue's messages.
fn deleted_queue(metrics: &Metrics, queue: &str, messages: u64, why: &'static str) {
    if messages > 0 {
        metrics.dropped(DropReason::QueueDeleted, messages);
    }
    tracing::info!(%queue, messages, why, "queue deleted");
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
