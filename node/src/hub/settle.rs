//! Riding out a store outage without ending sessions: acknowledgements and releases the engine
//! could not apply, and watches it could not start.
//!
//! An ACK, NACK, auto-ack or release that fails because the store is unavailable (Redis
//! stopped, restarting, cut off) is kept here, in order, and applied by one background task
//! once the engine answers again: the caller is told it succeeded, so the session goes on. Until
//! then the entries stay pending in the store; if the outage outlasts `reclaim-after`, they are
//! reclaimed and delivered again with `redelivered:true`, which the at-least-once contract
//! allows, and the late acknowledgement of their old id does nothing. Applying one again is
//! harmless: acknowledging deletes, releasing re-adds only an entry still there. While anything
//! waits here, later settlements queue behind it instead of each waiting out the engine's
//! timeout.
//!
//! A watch that failed the same way (a SUBSCRIBE during the outage) is asked for again with a
//! backoff while the destination still has local subscribers, so the subscription takes effect
//! once the store answers, even when the connection to it never dropped (a stall).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::Hub;
use crate::destination::Kind;
use crate::engine::{Engine, EngineError, EntryId, Pending};
use crate::metrics::EngineEvent;

/// Settlements kept at most while the store is away. Past this a new one is not kept: its
/// entries stay pending and are reclaimed and redelivered after `reclaim-after`.
const DEFERRED_MAX: usize = 10_000;

/// Tries of one settlement (or watch) that fail while the engine says the store answers: past
/// this the failure is its own, not the outage's, and it is given up, so it cannot hold back the
/// others; a settlement's entries stay pending and are redelivered after `reclaim-after`.
const FAILURES_WHILE_READY: u32 = 5;

/// Backoff between tries while the store is away.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What is done with the entries of a settlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum How {
    Ack,
    /// Back to the queue (`delivered`: counted as a delivery, flagged as redelivered).
    Release {
        delivered: bool,
    },
    DeadLetter,
}

/// One engine call's worth of entries of one queue.
#[derive(Clone, Debug)]
pub(super) struct Settlement {
    pub(super) how: How,
    pub(super) queue: Arc<str>,
    pub(super) ids: Vec<EntryId>,
}

/// Settlements waiting for the store, and the destinations being watched again.
#[derive(Default)]
pub(super) struct Deferred {
    settlements: VecDeque<Settlement>,
    /// The task applying `settlements` runs.
    retrying: bool,
    rewatching: HashSet<Arc<str>>,
}

impl Hub {
    /// Applies a settlement now, or (the store unavailable, or earlier ones still waiting for it)
    /// keeps it for the background task. Errors other than the store's absence are returned.
    pub(super) async fn settle(&self, settlement: Settlement) -> Result<(), EngineError> {
        {
            let mut deferred = self.deferred.lock().expect("deferred lock");
            if deferred.retrying {
                self.keep(&mut deferred, settlement);
                return Ok(());
            }
        }
        match self.apply(&settlement).await {
            Err(EngineError::Unavailable(error)) => {
                tracing::warn!(
                    queue = %settlement.queue,
                    %error,
                    "acknowledgement deferred until the message store answers"
                );
                let mut deferred = self.deferred.lock().expect("deferred lock");
                self.keep(&mut deferred, settlement);
                Ok(())
            }
            other => other,
        }
    }

    async fn apply(&self, settlement: &Settlement) -> Result<(), EngineError> {
        let Settlement { how, queue, ids } = settlement;
        match *how {
            How::Ack => self.engine.ack(queue, ids).await,
            // Boxed: the Redis engine's release is a future of about 8 KiB, which every ACK
            // frame's future would otherwise carry, allocated per frame (bench/notes.md).
            How::Release { delivered } => Box::pin(self.engine.release(queue, ids, delivered)).await,
            How::DeadLetter => Box::pin(self.engine.dead_letter(queue, ids)).await,
        }
    }

    /// Queues `settlement` behind the others and starts the task that applies them.
    fn keep(&self, deferred: &mut Deferred, settlement: Settlement) {
        if deferred.settlements.len() >= DEFERRED_MAX {
            tracing::warn!(
                queue = %settlement.queue,
                entries = settlement.ids.len(),
                "too many acknowledgements wait for the message store; these stay pending and are \
                 redelivered after reclaim-after"
            );
            return;
        }
        self.metrics.engine_event(EngineEvent::Deferred, 1);
        deferred.settlements.push_back(settlement);
        if !deferred.retrying {
            if let Some(hub) = self.me.upgrade() {
                deferred.retrying = true;
                tokio::spawn(hub.apply_deferred());
            }
        }
    }

    /// Applies the kept settlements in order, waiting with a backoff while the store is away.
    async fn apply_deferred(self: Arc<Hub>) {
        let mut backoff = RETRY_MIN;
        let mut failures_while_ready = 0;
        loop {
            let next = {
                let mut deferred = self.deferred.lock().expect("deferred lock");
                match deferred.settlements.front() {
                    Some(next) => next.clone(),
                    None => {
                        deferred.retrying = false;
                        return;
                    }
                }
            };
            match self.apply(&next).await {
                Err(EngineError::Unavailable(error)) => {
                    if self.engine.is_ready() {
                        failures_while_ready += 1;
                    }
                    if failures_while_ready < FAILURES_WHILE_READY {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RETRY_MAX);
                        continue;
                    }
                    tracing::warn!(
                        queue = %next.queue,
                        entries = next.ids.len(),
                        %error,
                        "a deferred acknowledgement keeps failing; given up (its entries are \
                         redelivered after reclaim-after)"
                    );
                }
                Err(EngineError::Closed) => {
                    // Shutting down: what is left stays pending, for another node to reclaim.
                    let mut deferred = self.deferred.lock().expect("deferred lock");
                    let left = deferred.settlements.len();
                    deferred.settlements.clear();
                    deferred.retrying = false;
                    tracing::warn!(left, "engine closed; deferred acknowledgements left pending");
                    return;
                }
                Ok(()) => {}
            }
            backoff = RETRY_MIN;
            failures_while_ready = 0;
            let mut deferred = self.deferred.lock().expect("deferred lock");
            deferred.settlements.pop_front();
            if deferred.settlements.is_empty() {
                tracing::info!(queue = %next.queue, "deferred acknowledgements applied");
            }
        }
    }

    /// A subscription's watch failed because the store is away: asks for it again with a backoff
    /// until it is applied, or until this node has no subscriber of the destination left.
    pub fn keep_watching(&self, destination: &str, kind: Kind) {
        let name: Arc<str> = Arc::from(destination);
        if !self.deferred.lock().expect("deferred lock").rewatching.insert(name.clone()) {
            return;
        }
        let Some(hub) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            let mut backoff = RETRY_MIN;
            let mut failures_while_ready = 0;
            loop {
                tokio::time::sleep(backoff).await;
                let Some(pending) = hub.watch_again(&name, kind) else { break };
                match pending.wait().await {
                    Err(EngineError::Unavailable(error)) => {
                        if hub.engine.is_ready() {
                            failures_while_ready += 1;
                        }
                        if failures_while_ready >= FAILURES_WHILE_READY {
                            tracing::warn!(destination = %name, %error, "a subscription's watch keeps failing; given up");
                            break;
                        }
                        tracing::debug!(destination = %name, %error, "watch still failing; retrying");
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                    Ok(()) => {
                        tracing::info!(destination = %name, "subscription applied after the message store came back");
                        break;
                    }
                    Err(EngineError::Closed) => break,
                }
            }
            hub.deferred.lock().expect("deferred lock").rewatching.remove(&name);
        });
    }

    /// Asks the engine to watch `name` again, if it still has local subscribers.
    fn watch_again(&self, name: &Arc<str>, kind: Kind) -> Option<Pending> {
        match kind {
            Kind::Queue => {
                let consumed = self.queues.lock().expect("queues lock").contains_key(name);
                consumed.then(|| self.engine.watch(name))
            }
            Kind::Topic | Kind::User => {
                let mut topics = self.topics.write().expect("topics lock");
                let topic = topics.get_mut(name)?;
                Some(topic.watch_again(|| self.engine.watch(name)))
            }
        }
    }
}
