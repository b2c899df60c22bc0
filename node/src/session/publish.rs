//! SEND: routing, access checks, and publishing. SENDs without a receipt in one run of frames
//! are held and published together when the run ends; a SEND with a receipt is answered only
//! once its message is stored or published.

use super::application::Outgoing;
use super::*;

/// The message a SEND publishes to `route`: its headers but those the broker sets (the first of
/// repeated ones), and its body.
pub(super) fn message(route: &Route, frame: Frame) -> Message {
    let Frame { headers, body, .. } = frame;
    let mut kept: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        if !tail::is_reserved(&name) && !kept.iter().any(|(n, _)| *n == name) {
            kept.push((name, value));
        }
    }
    Message { destination: Arc::from(route.name.as_str()), headers: kept, body, offset: None }
}

impl<S: FrameSink> Session<S> {
    pub(super) async fn on_send(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let destination = required(&frame, "destination")?;
        if destination == REFRESH_DESTINATION {
            return self.on_refresh(frame).await;
        }
        let target = self.send_target(&frame)?;
        let receipt = frame.get("receipt").map(str::to_owned);
        if let Some(frames) = self.transaction_of(&frame)? {
            // Its receipt comes once COMMIT has published it (none if the transaction aborts).
            frames.push(frame);
            return Ok(Flow::Continue);
        }
        let (kind, message) = match self.outgoing(target, frame)? {
            Outgoing::Publish(kind, message) => (kind, message),
            elsewhere => {
                // Ordered after the run's publishes so far.
                self.publish_held().await;
                Box::pin(self.send_elsewhere(elsewhere, receipt)).await?;
                return Ok(Flow::Continue);
            }
        };
        if receipt.is_none() && kind != Kind::Queue {
            // PendingPublish with the rest of the run (queue entries are not: an enqueue is not
            // delivered locally, so there is nothing to gather).
            self.held.push((kind, message));
            return Ok(Flow::Continue);
        }
        // Ordered after the run's publishes so far.
        self.publish_held().await;
        let destination = message.destination.clone();
        let published = self.node.hub().publish(kind, message).await;
        match receipt {
            // A receipt promises the message is published: wait for the engine's answer. A
            // failure becomes an ERROR carrying the receipt-id, never a RECEIPT for a lost message.
            Some(_) => {
                published.outcome().await?;
                self.send_receipt(receipt).await?;
            }
            // Without one the client asked for no confirmation: the session goes on reading while
            // the engine sends (on Redis, pipelined with the publishes before and after it). A
            // failure is counted (messages_dropped{reason="publish_failed"}) and logged.
            None => self.published_unconfirmed(destination, published),
        }
        Ok(Flow::Continue)
    }

    /// Publishes the messages held in this run, together and in order.
    pub(super) async fn publish_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let mut held = std::mem::take(&mut self.held);
        // Boxed: the engines' futures are large, and every idle session would carry them inline.
        if held.len() == 1 {
            // A run of one: the single-message path, nothing to gather.
            let (kind, message) = held.pop().expect("one held");
            let destination = message.destination.clone();
            let published = Box::pin(self.node.hub().publish(kind, message)).await;
            self.published_unconfirmed(destination, published);
        } else {
            let destinations: Vec<Arc<str>> = held.iter().map(|(_, m)| m.destination.clone()).collect();
            let published = Box::pin(self.node.hub().publish_all(held)).await;
            for (destination, published) in destinations.into_iter().zip(published) {
                self.published_unconfirmed(destination, published);
            }
        }
    }

    /// A publish no receipt waits for: a failure known now is logged (the hub has counted it);
    /// otherwise it is its destination's last one, which a DISCONNECT's receipt waits for. One
    /// per destination: an engine answers one destination's publishes in order, but not
    /// different destinations' (on Redis Cluster each shard's writes go in a lane of their own,
    /// and a shard that is away holds only its own).
    pub(super) fn published_unconfirmed(&mut self, destination: Arc<str>, published: PendingPublish) {
        if let Some(error) = published.failed() {
            tracing::warn!(%error, "publish failed");
            return;
        }
        if let Some(last) = self.unconfirmed.iter_mut().find(|(d, _)| *d == destination) {
            last.1 = published;
            return;
        }
        if self.unconfirmed.len() >= UNCONFIRMED_PRUNE_AT {
            self.unconfirmed.retain_mut(|(_, p)| !p.settled());
        }
        self.unconfirmed.push((destination, published));
    }
}

/// Destinations with a publish not yet answered that a session keeps before it drops those
/// answered since (kept small: a session usually publishes to a few destinations).
const UNCONFIRMED_PRUNE_AT: usize = 16;
