//! Noticing queues whose stream vanished with its messages, so that no queue goes silently empty:
//! Redis restarted without persistence (or was flushed), or someone deleted the key.
//!
//! The node remembers the queues whose stream it has seen ([`Inner::seen_queues`]: found by an
//! enqueue, or by a join once its consumer group is there, forgotten when this node deletes the
//! queue by its lifetime). Registering a queue (the `queues` set) is not seeing it: a node
//! registers a queue before its enqueue runs, and the stream may be gone by then. A loss
//! is noticed three ways:
//! - after every (re)connection, the node compares the store's *epoch* (a key set once, with
//!   `SET NX`, by whichever node connects first) with the one it saw before: a different one
//!   means Redis lost its data, and every remembered queue without a stream now is reported;
//! - a queue consumed here whose consumer group is gone when its entries are fetched, or whose
//!   stream a join or an enqueue had to create again: nothing deletes a queue that a live node
//!   consumes, so it was lost.
//!
//! Each loss is counted once (`stampede_engine_events_total{event="queue_lost"}`) and logged at
//! WARN with the queue's name. How many messages went with it cannot be known any more.
//!
//! The same epoch tells the pub/sub control task that every history topic's offsets restarted
//! ([`epoch_changed`], see `pubsub.rs`).

use std::sync::Arc;

use fred::types::Value;

use super::{Inner, Watched};
use crate::engine::EngineError;
use crate::metrics::EngineEvent;

/// Reports `queue` as lost if this node remembered its stream (once per loss), and forgets it.
pub(super) fn lost(inner: &Inner, queue: &str, why: &'static str) {
    if inner.seen_queues.lock().expect("seen queues lock").remove(queue) {
        tracing::warn!(
            %queue,
            why,
            "queue lost: its stream vanished with its messages (Redis restarted without \
             persistence or was flushed, or the key was deleted)"
        );
        inner.metrics.engine_event(EngineEvent::QueueLost, 1);
    }
}

/// A join or an enqueue created `queue`'s stream. Lost if this node consumes it and had seen it;
/// then it is seen again only once its consumer group is back (the join records it), so the
/// fetch that finds the group missing does not report the same loss again.
pub(super) fn created(inner: &Inner, queue: &str) {
    let consumed = inner.watched.lock().expect("watched lock").get(queue) == Some(&Watched::Queue);
    if consumed {
        lost(inner, queue, "its stream was created again while this node consumes it");
    } else {
        seen(inner, queue);
    }
}

/// An enqueue (or a check) found `queue`'s stream already there: seen, unless this node consumes
/// it. A consumed queue is seen again only by its join, once its consumer group is back: an
/// enqueue can find the stream of a lost queue re-created (by another enqueue) while its group is
/// still missing, and the fetch that then finds no group must not report that loss again.
pub(super) fn found(inner: &Inner, queue: &str) {
    if inner.seen_queues.lock().expect("seen queues lock").contains(queue) {
        return;
    }
    if inner.watched.lock().expect("watched lock").get(queue) != Some(&Watched::Queue) {
        seen(inner, queue);
    }
}

/// This node has seen `queue`'s stream, and its consumer group when it consumes it.
pub(super) fn seen(inner: &Inner, queue: &str) {
    inner.seen_queues.lock().expect("seen queues lock").insert(Arc::from(queue));
}

/// This node deleted `queue` (its lifetime ended): not a loss.
pub(super) fn deleted(inner: &Inner, queue: &str) {
    inner.seen_queues.lock().expect("seen queues lock").remove(queue);
}

/// After a (re)connection: reads the store's epoch, setting it if it has none. A different one
/// than this node saw before means Redis lost its data: every queue remembered here without a
/// stream now is reported.
pub(super) async fn check_epoch(inner: &Inner) -> Result<(), EngineError> {
    let mut seen = inner.epoch.lock().expect("epoch lock").clone();
    let changed = epoch_changed(inner, &mut seen).await?;
    *inner.epoch.lock().expect("epoch lock") = seen;
    if !changed {
        return Ok(());
    }
    let queues: Vec<Arc<str>> = inner.seen_queues.lock().expect("seen queues lock").iter().cloned().collect();
    tracing::warn!(queues = queues.len(), "Redis lost its data (restarted without persistence, or flushed)");
    for queue in queues {
        let stream = inner.keys.queue(&queue);
        let exists = inner.command("EXISTS", &stream, vec![Value::from(stream.as_str())]).await?;
        if exists.as_u64() == Some(0) {
            lost(inner, &queue, "Redis lost its data");
        }
    }
    Ok(())
}

/// Reads the store's epoch (`P:epoch`), setting it first if it has none (SET NX: the first node to
/// connect to an empty store names it). True when it differs from `seen`, the one read before:
/// the store lost its data since. `seen` becomes the one read now. Each task that must react to a
/// loss keeps its own `seen` (queues: [`Inner::epoch`]; history topics: the pub/sub control task).
pub(super) async fn epoch_changed(inner: &Inner, seen: &mut Option<String>) -> Result<bool, EngineError> {
    let key = inner.keys.epoch();
    let mine = format!("{}-{}", inner.config.node_id, super::registry::now_ms());
    let args = vec![Value::from(key.as_str()), Value::from(mine.as_str()), Value::from("NX")];
    inner.command("SET", &key, args).await?;
    let now = inner.command("GET", &key, vec![Value::from(key.as_str())]).await?;
    let Some(now) = now.as_string() else { return Ok(false) };
    let before = seen.replace(now.clone());
    Ok(before.is_some_and(|before| before != now))
}
