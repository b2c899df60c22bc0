//! ACK and NACK of queue deliveries (cumulative in `client` mode, one message in
//! `client-individual`), and the release of what a session held unacknowledged when it ends.

use super::*;

/// A queue delivery waiting for the client's ACK or NACK.
pub(super) struct Unacked {
    pub(super) subscription: Arc<Subscription>,
    pub(super) entry: EntryRef,
}

impl<S: FrameSink> Session<S> {
    /// Returns the unacknowledged queue deliveries of the subscriptions `which` selects to their
    /// queues, flagged as redelivered.
    pub(super) async fn release_unacked(
        &mut self,
        which: impl Fn(&Arc<Subscription>) -> bool,
    ) -> Result<(), SessionError> {
        let seqs: Vec<u64> =
            self.unacked.iter().filter(|(_, u)| which(&u.subscription)).map(|(seq, _)| *seq).collect();
        let held = seqs
            .into_iter()
            .filter_map(|seq| self.unacked.remove(&seq))
            .map(|Unacked { subscription, entry }| (subscription, entry))
            .collect();
        self.release(held, true).await
    }

    /// Releases entries with one engine call per subscription and queue, keeping their order
    /// (the engine puts a batch back at the head of its queue as it was).
    pub(super) async fn release(
        &self,
        entries: Vec<(Arc<Subscription>, EntryRef)>,
        delivered: bool,
    ) -> Result<(), SessionError> {
        let mut batches: Vec<(Arc<Subscription>, Arc<str>, Vec<EntryId>)> = Vec::new();
        for (subscription, entry) in entries {
            match batches.iter_mut().find(|(s, q, _)| Arc::ptr_eq(s, &subscription) && *q == entry.queue) {
                Some((_, _, ids)) => ids.push(entry.id),
                None => batches.push((subscription, entry.queue, vec![entry.id])),
            }
        }
        for (subscription, queue, ids) in batches {
            self.node.hub().release(&subscription, &queue, &ids, delivered).await?;
        }
        Ok(())
    }

    // === frame handling ===

    /// The message sequence number an ACK or NACK names.
    pub(super) fn acked_seq(&self, frame: &Frame) -> Result<u64, SessionError> {
        let header = if self.version == Some(Version::V1_2) { "id" } else { "message-id" };
        let id = frame
            .get(header)
            .or_else(|| frame.get("id"))
            .or_else(|| frame.get("message-id"))
            .ok_or(SessionError::MissingHeader { command: frame.command.as_str(), header })?;
        id.strip_prefix(self.session_id.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|seq| seq.parse::<u64>().ok())
            .filter(|seq| *seq >= 1 && *seq <= self.last_message_seq)
            .ok_or_else(|| {
                SessionError::invalid(format!("unknown message id {:?} in {}", id, frame.command.as_str()))
            })
    }

    pub(super) async fn on_ack(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let seq = self.acked_seq(&frame)?;
        let receipt = frame.get("receipt").map(str::to_owned);
        if let Some(frames) = self.transaction_of(&frame)? {
            frames.push(frame);
            self.send_receipt(receipt).await?;
            return Ok(Flow::Continue);
        }
        self.settle(seq, frame.command == Command::Ack).await?;
        self.send_receipt(receipt).await?;
        Ok(Flow::Continue)
    }

    /// Acknowledges (or, with `ack == false`, returns to its queue) the delivery `seq` and, in
    /// `client` mode, every earlier one of the same subscription. A delivery no longer held
    /// (a topic message, or one settled already) is accepted and ignored.
    pub(super) async fn settle(&mut self, seq: u64, ack: bool) -> Result<(), SessionError> {
        let Some(target) = self.unacked.get(&seq) else { return Ok(()) };
        let subscription = target.subscription.clone();
        let seqs: Vec<u64> = if subscription.ack == AckMode::Client {
            self.unacked
                .range(..=seq)
                .filter(|(_, u)| Arc::ptr_eq(&u.subscription, &subscription))
                .map(|(s, _)| *s)
                .collect()
        } else {
            vec![seq]
        };
        let mut by_queue: HashMap<Arc<str>, Vec<EntryId>> = HashMap::new();
        for s in seqs {
            if let Some(Unacked { entry, .. }) = self.unacked.remove(&s) {
                by_queue.entry(entry.queue).or_default().push(entry.id);
            }
        }
        for (queue, ids) in by_queue {
            if ack {
                self.node.hub().ack(&subscription, &queue, &ids).await?;
            } else {
                self.node.hub().release(&subscription, &queue, &ids, true).await?;
            }
        }
        Ok(())
    }
}
