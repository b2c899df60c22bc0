//! ACK and NACK of queue deliveries (cumulative in `client` mode, one message in
//! `client-individual`), NACK's `requeue:false` (to the dead-letter queue), the `prefetch-count`
//! window of topic subscriptions in client modes, and the release of what a session held
//! unacknowledged when it ends.

use std::collections::VecDeque;

use super::*;

/// A delivery waiting for the client's ACK or NACK: a queue entry, or (`entry: None`) a topic
/// message counted against its subscription's [`Window`].
pub(super) struct Unacked {
    pub(super) subscription: Arc<Subscription>,
    pub(super) entry: Option<EntryRef>,
}

/// A topic subscription's `prefetch-count` in a client ack mode: at most `prefetch` messages
/// written and not yet acknowledged; later ones wait in `backlog`, in order, until ACKs (or
/// NACKs) make room. Topics are at-most-once, so an acknowledgement only makes room: nothing is
/// redelivered. The backlog's bytes stay counted against the connection's outbound buffer, so a
/// subscriber that stops acknowledging meets the slow-consumer policy, as one that stops reading
/// does. A resume's replay (`x-since`) is written whole, and counts against the window.
pub(super) struct Window {
    pub(super) prefetch: u32,
    pub(super) outstanding: u32,
    /// Messages held back, each with whether it is the first after an incomplete resume.
    pub(super) backlog: VecDeque<(Arc<MessageTail>, bool)>,
}

impl Window {
    pub(super) fn new(prefetch: u32) -> Window {
        Window { prefetch, outstanding: 0, backlog: VecDeque::new() }
    }

    /// Whether the next message must wait (behind the window, or behind those already waiting).
    pub(super) fn full(&self) -> bool {
        self.outstanding >= self.prefetch || !self.backlog.is_empty()
    }

    /// Bytes of the held messages, still counted against the outbound buffer.
    pub(super) fn held_bytes(&self) -> usize {
        self.backlog.iter().map(|(message, _)| message.len()).sum()
    }
}

/// What an ACK or NACK does with the deliveries it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Settle {
    Ack,
    /// NACK: back to the queue, redelivered.
    Requeue,
    /// NACK with `requeue:false` (RabbitMQ's header): to the queue's dead-letter queue.
    DeadLetter,
}

impl Settle {
    pub(super) fn of(frame: &Frame) -> Result<Settle, SessionError> {
        if frame.command == Command::Ack {
            return Ok(Settle::Ack);
        }
        match frame.get("requeue") {
            None | Some("true") => Ok(Settle::Requeue),
            Some("false") => Ok(Settle::DeadLetter),
            Some(other) => {
                Err(SessionError::invalid(format!("requeue must be true or false, not {other:?}")))
            }
        }
    }
}

impl<S: FrameSink> Session<S> {
    /// Returns the unacknowledged queue deliveries of the subscriptions `which` selects to their
    /// queues, flagged as redelivered (their topic deliveries are forgotten).
    pub(super) async fn release_unacked(
        &mut self,
        which: impl Fn(&Arc<Subscription>) -> bool,
    ) -> Result<(), SessionError> {
        let seqs: Vec<u64> =
            self.unacked.iter().filter(|(_, u)| which(&u.subscription)).map(|(seq, _)| *seq).collect();
        let held = seqs
            .into_iter()
            .filter_map(|seq| self.unacked.remove(&seq))
            .filter_map(|Unacked { subscription, entry }| entry.map(|entry| (subscription, entry)))
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
        id.strip_prefix(&*self.session_id)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|seq| seq.parse::<u64>().ok())
            .filter(|seq| *seq >= 1 && *seq <= self.last_message_seq)
            .ok_or_else(|| {
                SessionError::invalid(format!("unknown message id {:?} in {}", id, frame.command.as_str()))
            })
    }

    pub(super) async fn on_ack(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let seq = self.acked_seq(&frame)?;
        let how = Settle::of(&frame)?;
        if let Some(frames) = self.transaction_of(&frame)? {
            // Its receipt comes after the COMMIT settles it (none if the transaction aborts).
            frames.push(frame);
            return Ok(Flow::Continue);
        }
        self.settle(seq, how).await?;
        self.send_receipt(frame.get("receipt").map(str::to_owned)).await?;
        Ok(Flow::Continue)
    }

    /// Settles the delivery `seq` and, in `client` mode, every earlier one of the same
    /// subscription: queue entries are acknowledged, returned to their queue or dead-lettered;
    /// topic messages make room in their window. A delivery no longer held (a topic message
    /// without a window, or one settled already) is accepted and ignored.
    pub(super) async fn settle(&mut self, seq: u64, how: Settle) -> Result<(), SessionError> {
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
        let mut topic: u32 = 0;
        for s in seqs {
            match self.unacked.remove(&s) {
                Some(Unacked { entry: Some(entry), .. }) => {
                    by_queue.entry(entry.queue).or_default().push(entry.id)
                }
                Some(Unacked { entry: None, .. }) => topic += 1,
                None => {}
            }
        }
        for (queue, ids) in by_queue {
            let hub = self.node.hub();
            match how {
                Settle::Ack => hub.ack(&subscription, &queue, &ids).await?,
                Settle::Requeue => hub.release(&subscription, &queue, &ids, true).await?,
                Settle::DeadLetter => hub.dead_letter(&subscription, &queue, &ids).await?,
            }
        }
        if topic > 0 {
            self.make_room(&subscription, topic).await?;
        }
        Ok(())
    }

    /// `settled` topic messages of `subscription`'s window were acknowledged: writes as many held
    /// ones as now fit (flushed with the batch that follows the frame).
    async fn make_room(
        &mut self,
        subscription: &Arc<Subscription>,
        settled: u32,
    ) -> Result<(), SessionError> {
        if let Some(window) = self.windows.get_mut(&subscription.seq) {
            window.outstanding = window.outstanding.saturating_sub(settled);
        }
        loop {
            let Some(window) = self.windows.get_mut(&subscription.seq) else { return Ok(()) };
            if window.outstanding >= window.prefetch {
                return Ok(());
            }
            let Some((message, gap)) = window.backlog.pop_front() else { return Ok(()) };
            self.outbox.written(message.len());
            if let Written::Full = self.write_message(subscription, &message, None, gap) {
                self.sink.flush().await.map_err(SessionError::io)?;
            }
        }
    }
}
