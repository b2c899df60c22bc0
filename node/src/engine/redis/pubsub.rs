//! Watching destinations and delivering what arrives on their channels.
//!
//! Two tasks. The control task owns SUBSCRIBE/UNSUBSCRIBE: it applies watch and unwatch in call
//! order and, after every (re)connection of the subscriber, subscribes again to everything
//! watched and asks the delivering task to catch up. The delivering task reads fred's message
//! stream in arrival order, decodes each envelope and hands it to the inbox; for history topics it
//! drops duplicates and fills gaps from the stream, in the same task, so deliveries stay in order.
//!
//! The delivering task hands over what fred has buffered in one batch ([`Batch`]): when messages
//! arrive faster than one at a time, the hub queues several per subscriber under one lock and
//! wakes each session once, so a session writes them with one socket write instead of one each.
//! Nothing waits to fill a batch: it holds what had already arrived.
//!
//! # When Redis lost its data
//! A history topic's offsets start again at 1 when Redis restarted empty (or was flushed), so the
//! last offset delivered, which the delivering task remembers per topic, means nothing any more:
//! kept, it would have the node drop every new offset up to it as a duplicate. The node learns of
//! the loss from the store's *epoch* (`P:epoch`, see `losses.rs`), and it learns it in time,
//! because of where it asks: after every (re)connection of the subscriber, and before it
//! subscribes again, the control task reads the epoch. No message of the new store can reach this
//! node before that subscription, so when the epoch changed, the delivering task ([`Refill::Restart`])
//! first delivers what had arrived from the old store, then sets every watched history topic's
//! last offset to 0, before any message of the new store exists for it; the catch-up that follows
//! the subscription then delivers offsets 1.. from the stream, in order, and live ones after them.
//! The loss is logged once at WARN and counted per topic
//! (`stampede_engine_events_total{event="history_restarted"}`).
//!
//! The epoch, rather than the offsets: a counter that restarted and was already published past
//! the last offset delivered looks like one that only moved on. The epoch could instead travel in
//! every envelope, but that is a new envelope version that nodes of the previous one cannot read,
//! and it is not needed: a new store is only ever heard through a new subscription.
//! Without the epoch (it could not be read), and for a counter that restarted on its own (its
//! rule's `ttl` expired it, or one Redis Cluster shard lost its data while the epoch's shard did
//! not), the offsets remain the signal: a counter below the last offset delivered means the topic
//! restarted. On Redis Cluster the epoch lives on one shard: losing that shard alone restarts every
//! topic this node follows, and subscribers of topics on other shards may get retained messages
//! again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::{ClientLike, ClusterInterface, EventInterface, PubsubInterface};
use fred::types::config::Server;
use fred::types::{Message as PubsubMessage, Value};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{calls, envelope, losses, queues, unavailable, Inner, Watched};
use crate::config::QueueLifetime;
use crate::engine::{EngineError, Message};
use crate::metrics::EngineEvent;

/// Channels per SUBSCRIBE when re-subscribing everything.
const CHANNELS_PER_CALL: usize = 1000;

/// Messages handed to the inbox in one call at most.
pub(super) const HAND_OVER_MAX: usize = 256;

/// Messages decoded and in order, not yet handed to the inbox. Everything the delivering task
/// delivers goes through here, live messages and history refills alike, so order holds.
#[derive(Default)]
struct Batch(Vec<Arc<Message>>);

impl Batch {
    fn push(&mut self, inner: &Inner, message: Message) {
        self.0.push(Arc::new(message));
        if self.0.len() >= HAND_OVER_MAX {
            self.flush(inner);
        }
    }

    fn flush(&mut self, inner: &Inner) {
        if self.0.is_empty() {
            return;
        }
        if let Some(inbox) = inner.inbox() {
            inbox.deliver_all(&self.0);
        }
        self.0.clear();
    }
}

/// Requests to the delivering task.
pub(super) enum Refill {
    /// Deliver what each history topic's stream holds past the last offset delivered (after a
    /// reconnection or a change of subscriptions).
    CatchUp,
    /// Redis lost its data: forget every history topic's last offset (see the module's docs),
    /// then answer, before the control task subscribes again.
    Restart(oneshot::Sender<()>),
}

/// Requests to the control task, in call order.
pub(super) enum Control {
    Watch(Arc<str>, oneshot::Sender<Result<(), EngineError>>),
    Unwatch(Arc<str>),
    /// A SUBSCRIBE's lifetime for a queue, applied before the watch that follows it.
    Declare(Arc<str>, QueueLifetime, oneshot::Sender<Result<(), EngineError>>),
    /// Answered once everything asked before it is applied (node shutdown).
    Flush(oneshot::Sender<()>),
}

/// Applies watch and unwatch in order, and re-subscribes after reconnections.
pub(super) async fn control_loop(
    inner: Arc<Inner>,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut reconnects: broadcast::Receiver<Server>,
    refill: mpsc::UnboundedSender<Refill>,
) {
    let mut connections = 0u64;
    // The store's epoch as this task last read it (see the module's docs).
    let mut epoch = None;
    let mut work = Work::default();
    let mut slots = SlotCheck::default();
    let mut tick = tokio::time::interval(SLOT_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The command client learns of a moved slot first (a publish answered MOVED): check at once
    // rather than at the next tick, which shortens the time a shard channel goes unheard.
    let (mut moves, mut moves_open) = (inner.client.cluster_change_rx(), true);
    loop {
        tokio::select! {
            request = control.recv() => match request {
                Some(request) => work.take(&inner, request),
                None => return,
            },
            Some(done) = work.running.next() => work.done(&inner, done),
            event = reconnects.recv() => match event {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    connections += 1;
                    if connections > 1 {
                        inner.metrics.engine_event(EngineEvent::Reconnected, 1);
                    }
                    follow_epoch(&inner, &mut epoch, &refill).await;
                    slots.complete = resubscribe(&inner, &refill).await;
                }
                Err(RecvError::Closed) => return,
            },
            moved = moves.recv(), if inner.keys.sharded() && moves_open => {
                moves_open = !matches!(moved, Err(RecvError::Closed));
                tick.reset_immediately();
            }
            _ = tick.tick(), if inner.keys.sharded() => {
                if slots.changed(&inner).await {
                    tracing::info!("the cluster's primaries changed; subscribing again to every shard channel");
                    follow_epoch(&inner, &mut epoch, &refill).await;
                    slots.complete = resubscribe(&inner, &refill).await;
                }
            }
        }
    }
}

/// Requests applied at once at most, each on its own destination.
const CONCURRENT_REQUESTS: usize = 64;

/// The control task's requests under way: one at a time per destination, in call order (a watch,
/// then the unwatch that follows it), and up to [`CONCURRENT_REQUESTS`] destinations at once, so
/// a SUBSCRIBE whose Redis shard is slow (a Cluster primary failing over) does not hold up the
/// others.
#[derive(Default)]
struct Work {
    running: FuturesUnordered<BoxFuture<'static, Arc<str>>>,
    /// Destinations with a request running, and the requests for them waiting behind it.
    busy: HashMap<Arc<str>, VecDeque<Control>>,
    /// Requests waiting for room, in call order.
    backlog: VecDeque<Control>,
    /// Answered once nothing taken before them is left.
    flushes: Vec<oneshot::Sender<()>>,
}

impl Work {
    fn take(&mut self, inner: &Arc<Inner>, request: Control) {
        let Some(destination) = request.destination().cloned() else {
            if let Control::Flush(done) = request {
                self.flushes.push(done);
                self.answer_flushes();
            }
            return;
        };
        if let Some(waiting) = self.busy.get_mut(&destination) {
            waiting.push_back(request);
        } else if self.running.len() >= CONCURRENT_REQUESTS {
            self.backlog.push_back(request);
        } else {
            self.busy.insert(destination, VecDeque::new());
            self.running.push(apply(inner.clone(), request));
        }
    }

    /// The request of `destination` is applied: start the next one.
    fn done(&mut self, inner: &Arc<Inner>, destination: Arc<str>) {
        match self.busy.get_mut(&destination).and_then(VecDeque::pop_front) {
            Some(next) => self.running.push(apply(inner.clone(), next)),
            None => {
                self.busy.remove(&destination);
            }
        }
        while self.running.len() < CONCURRENT_REQUESTS {
            let Some(request) = self.backlog.pop_front() else { break };
            self.take(inner, request);
        }
        self.answer_flushes();
    }

    fn answer_flushes(&mut self) {
        if self.running.is_empty() && self.backlog.is_empty() {
            for done in self.flushes.drain(..) {
                let _ = done.send(());
            }
        }
    }
}

impl Control {
    fn destination(&self) -> Option<&Arc<str>> {
        match self {
            Control::Watch(destination, _) | Control::Unwatch(destination) => Some(destination),
            Control::Declare(queue, _, _) => Some(queue),
            Control::Flush(_) => None,
        }
    }
}

/// Applies one request; resolves to its destination.
fn apply(inner: Arc<Inner>, request: Control) -> BoxFuture<'static, Arc<str>> {
    Box::pin(async move {
        match request {
            Control::Watch(destination, reply) => {
                let result = watch(&inner, &destination).await;
                let _ = reply.send(result);
                destination
            }
            Control::Unwatch(destination) => {
                unwatch(&inner, &destination).await;
                destination
            }
            Control::Declare(queue, lifetime, reply) => {
                let result = declare(&inner, &queue, lifetime).await;
                let _ = reply.send(result);
                queue
            }
            Control::Flush(_) => unreachable!("a flush is answered by the control task"),
        }
    })
}

/// How often a node checks, with sharded pub/sub, which primaries own the slots.
const SLOT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Whether the shard channels are subscribed where they should be.
///
/// A shard channel's subscription lives on the primary that owns its slot. When that changes (a
/// failover, a slot migration), Redis drops the subscription with a SUNSUBSCRIBE push that fred
/// swallows, and the connection may stay up: nothing else tells the node. So the control task
/// asks the cluster for its slots every [`SLOT_CHECK_EVERY`] (one CLUSTER SLOTS) and subscribes
/// again to everything when the owners changed, or when the last attempt did not complete (a
/// primary was down), then refills history topics from their streams for what it missed.
#[derive(Default)]
struct SlotCheck {
    /// The owners of every slot range at the last complete subscription.
    owners: Option<Vec<(u16, u16, String)>>,
    complete: bool,
}

impl SlotCheck {
    async fn changed(&mut self, inner: &Inner) -> bool {
        if let Err(error) = inner.subscriber.sync_cluster().await {
            tracing::debug!(%error, "cannot read the cluster's slots");
            return false;
        }
        let owners: Option<Vec<(u16, u16, String)>> = inner.subscriber.cached_cluster_state().map(|state| {
            state.slots().iter().map(|range| (range.start, range.end, range.primary.to_string())).collect()
        });
        let changed = !self.complete || owners != self.owners;
        self.owners = owners;
        changed
    }
}

/// Declares a queue's lifetime. One that Redis could not take (it is away) is kept and declared
/// again before the queue's next watch (the session asks for the watch again until it succeeds,
/// see `hub/settle.rs`) and after each reconnection while the queue is watched, so that the
/// lifetime holds once Redis answers.
async fn declare(inner: &Inner, queue: &Arc<str>, lifetime: QueueLifetime) -> Result<(), EngineError> {
    let result = queues::declare(inner, queue, lifetime).await;
    let mut undeclared = inner.undeclared.lock().expect("undeclared lock");
    match &result {
        Err(EngineError::Unavailable(_)) => {
            undeclared.insert(queue.clone(), lifetime);
        }
        _ => {
            undeclared.remove(queue);
        }
    }
    result
}

/// Declares again the lifetime of `queue` that Redis could not take before, if any.
async fn declare_again(inner: &Inner, queue: &Arc<str>) -> Result<(), EngineError> {
    let lifetime = inner.undeclared.lock().expect("undeclared lock").get(queue).copied();
    let Some(lifetime) = lifetime else { return Ok(()) };
    declare(inner, queue, lifetime).await?;
    tracing::info!(%queue, "queue lifetime declared after the message store came back");
    Ok(())
}

/// Starts receiving `destination`. It stays watched even when this fails (Redis away): the next
/// reconnection subscribes to it.
async fn watch(inner: &Inner, destination: &Arc<str>) -> Result<(), EngineError> {
    let kind = if inner.config.is_queue(destination) {
        Watched::Queue
    } else if inner.config.history_for(destination).is_some() {
        Watched::History { last: None }
    } else {
        Watched::Topic
    };
    inner.watched.lock().expect("watched lock").insert(destination.clone(), kind);
    if !inner.subscriber.is_connected() {
        return Err(EngineError::Unavailable("Redis is not connected".to_owned()));
    }
    match kind {
        // Offsets up to the current one were published before this watch: not for us.
        Watched::History { .. } => {
            let seq = current_offset(inner, destination).await?;
            set_last(inner, destination, seq);
        }
        Watched::Queue => {
            declare_again(inner, destination).await?;
            queues::join(inner, destination).await?;
        }
        Watched::Topic => {}
    }
    listen(inner, inner.keys.channel(destination)).await.map_err(unavailable)?;
    if kind == Watched::Queue {
        // Entries enqueued before the subscription took effect announced themselves to nobody.
        if let Some(inbox) = inner.inbox.get().and_then(std::sync::Weak::upgrade) {
            inbox.queue_ready(destination);
        }
    }
    Ok(())
}

async fn unwatch(inner: &Inner, destination: &str) {
    inner.watched.lock().expect("watched lock").remove(destination);
    if inner.subscriber.is_connected() {
        let channel = inner.keys.channel(destination);
        let result = if inner.keys.sharded() {
            inner.subscriber.sunsubscribe(channel).await
        } else {
            inner.subscriber.unsubscribe(channel).await
        };
        if let Err(error) = result {
            tracing::warn!(%destination, %error, "UNSUBSCRIBE failed");
        }
    }
    if inner.config.is_queue(destination) {
        // The lifetime a SUBSCRIBE declared decides what the leave does (an auto-delete queue).
        let queue: Arc<str> = Arc::from(destination);
        if let Err(error) = declare_again(inner, &queue).await {
            tracing::warn!(%destination, %error, "a queue's lifetime could not be declared before it was left");
        }
        inner.undeclared.lock().expect("undeclared lock").remove(destination);
        queues::leave(inner, destination).await;
    }
}

/// Starts receiving `channel`; once this returns, messages published on it from now on reach
/// this node (a SUBSCRIBE's RECEIPT depends on it).
///
/// Classic pub/sub: fred resolves SUBSCRIBE once it is queued on the connection, before Redis has
/// it; a PING on the same connection is answered after the SUBSCRIBE. Sharded pub/sub (Redis
/// Cluster): SSUBSCRIBE goes to the primary of the channel's slot and fred answers it with Redis's
/// confirmation (following a MOVED); one channel per call, as fred takes one confirmation per
/// SSUBSCRIBE.
async fn listen(inner: &Inner, channel: String) -> Result<(), fred::error::Error> {
    if inner.keys.sharded() {
        inner.subscriber.ssubscribe(channel).await
    } else {
        inner.subscriber.subscribe(channel).await?;
        inner.subscriber.ping::<Value>(None).await.map(drop)
    }
}

/// How long the control task waits for the command connection to read the store's epoch after
/// the subscriber reconnected (both come back together when Redis does).
const EPOCH_WAIT: Duration = Duration::from_secs(5);

/// Before subscribing again: when the store's epoch changed since `seen` (Redis lost its data),
/// has the delivering task restart every history topic, and waits until it did (see the module's
/// docs). When the epoch cannot be read, only the offsets tell a topic's restart.
async fn follow_epoch(inner: &Inner, seen: &mut Option<String>, refill: &mpsc::UnboundedSender<Refill>) {
    let deadline = tokio::time::Instant::now() + EPOCH_WAIT;
    while !inner.client.is_connected() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match losses::epoch_changed(inner, seen).await {
        Ok(false) => {}
        Ok(true) => {
            let (done, restarted) = oneshot::channel();
            if refill.send(Refill::Restart(done)).is_ok() {
                let _ = restarted.await;
            }
        }
        Err(error) => tracing::warn!(
            %error,
            "could not read whether Redis lost its data; history topics' restarts are noticed by their offsets only"
        ),
    }
}

/// After a (re)connection, or a change of the cluster's primaries: subscribe to the calls'
/// channels and to everything watched, recreate queue groups (Redis may have restarted empty),
/// have the delivering task catch up, and wake the queue dispatchers for notifications missed
/// meanwhile. False when a subscription failed (it is tried again at the next reconnection or
/// check of the cluster's slots).
async fn resubscribe(inner: &Inner, refill: &mpsc::UnboundedSender<Refill>) -> bool {
    let mut complete = true;
    let calls = calls::channels(inner).to_vec();
    let called = if inner.keys.sharded() {
        subscribe_each(inner, calls).await
    } else {
        inner.subscriber.subscribe(calls).await
    };
    if let Err(error) = called {
        complete = false;
        tracing::warn!(%error, "subscribing to the admin API's calls failed; retrying");
    }
    let watched: Vec<(Arc<str>, Watched)> =
        inner.watched.lock().expect("watched lock").iter().map(|(d, w)| (d.clone(), *w)).collect();
    if watched.is_empty() {
        return complete;
    }
    tracing::info!(destinations = watched.len(), "re-subscribing after connecting to Redis");
    let channels: Vec<String> = watched.iter().map(|(d, _)| inner.keys.channel(d)).collect();
    if inner.keys.sharded() {
        if let Err(error) = subscribe_each(inner, channels).await {
            complete = false;
            tracing::warn!(%error, "re-subscribing failed; retrying");
        }
    } else {
        for chunk in channels.chunks(CHANNELS_PER_CALL) {
            if let Err(error) = inner.subscriber.subscribe(chunk.to_vec()).await {
                complete = false;
                tracing::warn!(%error, "re-subscribing failed; retrying at the next reconnection");
            }
        }
    }
    for (destination, kind) in &watched {
        if *kind == Watched::Queue {
            if let Err(error) = declare_again(inner, destination).await {
                tracing::warn!(%destination, %error, "could not declare the queue's lifetime");
            }
            if let Err(error) = queues::join(inner, destination).await {
                tracing::warn!(%destination, %error, "could not recreate the queue's consumer group");
            }
        }
    }
    let _ = refill.send(Refill::CatchUp);
    queues::wake_watched(inner);
    complete
}

/// SSUBSCRIBEs to each channel (one per call, see [`listen`]; up to [`CONCURRENT_REQUESTS`] at
/// once, so a primary that does not answer costs one command timeout, not one per channel), all
/// of them even when some fail; the first failure is returned.
async fn subscribe_each(inner: &Inner, channels: Vec<String>) -> Result<(), fred::error::Error> {
    let mut replies = futures_util::stream::iter(channels)
        .map(|channel| inner.subscriber.ssubscribe(channel))
        .buffer_unordered(CONCURRENT_REQUESTS);
    let mut first_error = None;
    while let Some(reply) = replies.next().await {
        if let Err(error) = reply {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Reads the channels' messages in arrival order and hands them to the inbox, each time with
/// whatever else fred had already buffered.
pub(super) async fn delivery_loop(
    inner: Arc<Inner>,
    mut messages: broadcast::Receiver<PubsubMessage>,
    mut refill: mpsc::UnboundedReceiver<Refill>,
) {
    let mut batch = Batch::default();
    loop {
        let mut received = tokio::select! {
            biased;
            Some(request) = refill.recv() => {
                // Catch-ups asked together are one; a restart is answered before catching up.
                let mut request = Some(request);
                while let Some(asked) = request {
                    if let Refill::Restart(done) = asked {
                        restart_all(&inner, &mut messages, &mut batch).await;
                        let _ = done.send(());
                    }
                    request = refill.try_recv().ok();
                }
                catch_up_all(&inner, &mut batch).await;
                batch.flush(&inner);
                continue;
            }
            received = messages.recv() => received.map_err(|e| match e {
                RecvError::Lagged(lost) => TryRecvError::Lagged(lost),
                RecvError::Closed => TryRecvError::Closed,
            }),
        };
        loop {
            match received {
                Ok(message) => on_message(&inner, message, &mut batch, false).await,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(lost)) => {
                    batch.flush(&inner);
                    tracing::warn!(lost, "pub/sub messages were lost to a lag; refilling history topics");
                    inner.metrics.engine_event(EngineEvent::Lagged, lost);
                    catch_up_all(&inner, &mut batch).await;
                    queues::wake_watched(&inner);
                    break;
                }
                Err(TryRecvError::Closed) => {
                    batch.flush(&inner);
                    return;
                }
            }
            received = messages.try_recv();
        }
        batch.flush(&inner);
    }
}

/// Hands over one message. `stale`: it came from a store that lost its data, so a gap before it
/// cannot be filled; it is delivered unless its offset was.
async fn on_message(inner: &Arc<Inner>, message: PubsubMessage, batch: &mut Batch, stale: bool) {
    let Some(destination) = inner.keys.destination_of(&message.channel) else {
        calls::on_message(inner, &message.channel, message.value.as_bytes().unwrap_or_default());
        return;
    };
    if inner.config.is_queue(destination) {
        if let Some(inbox) = inner.inbox() {
            inbox.queue_ready(destination);
        }
        return;
    }
    let message = match envelope::decode(message.value.as_bytes().unwrap_or_default()) {
        Ok(envelope) => envelope.into_message(),
        Err(error) => return inner.undecodable(destination, &error),
    };
    match (message.offset, cursor(inner, destination)) {
        (Some(offset), Some(last)) if stale => {
            if last.is_none_or(|last| offset > last) {
                set_last(inner, destination, offset);
                batch.push(inner, message);
            }
        }
        (Some(offset), Some(last)) => {
            deliver_in_order(inner, destination, message, offset, last, batch).await
        }
        _ => batch.push(inner, message),
    }
}

/// Redis lost its data (its epoch changed; the control task has not subscribed again yet, so
/// every message waiting here came from the old store): delivers those messages, then sets every
/// watched history topic's last offset to 0, so that the new offsets are delivered from 1.
async fn restart_all(
    inner: &Arc<Inner>,
    messages: &mut broadcast::Receiver<PubsubMessage>,
    batch: &mut Batch,
) {
    // Only what is waiting now: on Redis Cluster, shards that kept their connection go on sending.
    for _ in 0..messages.len() {
        match messages.try_recv() {
            Ok(message) => on_message(inner, message, batch, true).await,
            Err(TryRecvError::Lagged(lost)) => inner.metrics.engine_event(EngineEvent::Lagged, lost),
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    batch.flush(inner);
    let mut restarted = 0;
    for watched in inner.watched.lock().expect("watched lock").values_mut() {
        if let Watched::History { last } = watched {
            *last = Some(0);
            restarted += 1;
        }
    }
    if restarted > 0 {
        tracing::warn!(
            topics = restarted,
            "Redis lost its data (restarted without persistence, or flushed); following every \
             history topic's offsets from 1 again"
        );
        inner.metrics.engine_event(EngineEvent::HistoryRestarted, restarted);
    }
}

/// A history message: delivered when it is the next offset; a jump is filled from the stream
/// first; an offset already delivered is dropped unless the topic restarted.
async fn deliver_in_order(
    inner: &Inner,
    destination: &str,
    message: Message,
    offset: u64,
    last: Option<u64>,
    batch: &mut Batch,
) {
    let Some(last) = last else {
        set_last(inner, destination, offset);
        return batch.push(inner, message);
    };
    if offset == last.saturating_add(1) {
        set_last(inner, destination, offset);
        return batch.push(inner, message);
    }
    // What is batched goes first, rather than wait for the stream's read.
    batch.flush(inner);
    match catch_up(inner, destination, Some(offset), batch).await {
        Ok(reached) if offset <= reached => {} // a duplicate
        Ok(_) => {
            set_last(inner, destination, offset);
            batch.push(inner, message);
        }
        Err(error) => {
            tracing::warn!(%destination, %error, "could not read history to fill a gap");
            if offset > last {
                set_last(inner, destination, offset);
                batch.push(inner, message);
            }
        }
    }
}

/// Catches up every watched history topic (after a reconnection or a lag).
async fn catch_up_all(inner: &Inner, batch: &mut Batch) {
    let topics: Vec<Arc<str>> = inner
        .watched
        .lock()
        .expect("watched lock")
        .iter()
        .filter(|(_, w)| matches!(w, Watched::History { .. }))
        .map(|(d, _)| d.clone())
        .collect();
    for destination in topics {
        if let Err(error) = catch_up(inner, &destination, None, batch).await {
            tracing::warn!(%destination, %error, "could not refill history after a gap");
        }
    }
}

/// Delivers what the stream holds after the last delivered offset (and before `upto`), and
/// returns the offset delivery has now reached. When the topic's counter is below the last
/// delivered offset, the topic restarted (counter expired, Redis restarted empty): delivery
/// restarts from its first retained entry.
async fn catch_up(
    inner: &Inner,
    destination: &str,
    upto: Option<u64>,
    batch: &mut Batch,
) -> Result<u64, EngineError> {
    let Some(last) = cursor(inner, destination) else {
        return Ok(0);
    };
    let Some(last) = last else {
        let seq = current_offset(inner, destination).await?;
        set_last(inner, destination, seq);
        return Ok(seq);
    };
    let (seq, mut messages) = inner.read_history(destination, last).await?;
    let mut reached = last;
    if seq < last {
        tracing::info!(%destination, last, now = seq, "history topic restarted; following its new offsets");
        inner.metrics.engine_event(EngineEvent::HistoryRestarted, 1);
        reached = 0;
        messages = inner.read_history(destination, 0).await?.1;
    }
    let mut recovered = 0;
    for message in messages {
        let Some(offset) = message.offset else { continue };
        if upto.is_some_and(|upto| offset >= upto) {
            break;
        }
        if offset > reached {
            reached = offset;
            recovered += 1;
            batch.push(inner, message);
        }
    }
    if upto.is_none() {
        // Whatever is not retained up to the counter is lost; do not look for it again.
        reached = reached.max(seq);
    }
    if recovered > 0 {
        tracing::debug!(%destination, recovered, "delivered history messages missed live");
        inner.metrics.engine_event(EngineEvent::Recovered, recovered);
    }
    set_last(inner, destination, reached);
    Ok(reached)
}

/// The topic's current offset (0 when it has none).
async fn current_offset(inner: &Inner, destination: &str) -> Result<u64, EngineError> {
    let key = inner.keys.seq(destination);
    let reply = inner.command("GET", &key, vec![Value::from(key.as_str())]).await?;
    Ok(reply.as_u64().unwrap_or(0))
}

/// `Some(last)` for a watched history topic.
fn cursor(inner: &Inner, destination: &str) -> Option<Option<u64>> {
    match inner.watched.lock().expect("watched lock").get(destination) {
        Some(Watched::History { last }) => Some(*last),
        _ => None,
    }
}

fn set_last(inner: &Inner, destination: &str, offset: u64) {
    if let Some(Watched::History { last }) = inner.watched.lock().expect("watched lock").get_mut(destination)
    {
        *last = Some(offset);
    }
}
