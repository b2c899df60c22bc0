//! What a session writes: batches of deliveries (one flush per batch, auto-mode queue
//! deliveries acknowledged after it), single frames and receipts, the one ERROR path
//! ([`Session::fail`], where every [`SessionError`] becomes an ERROR frame) and the clean-up
//! when the session ends.

use super::*;
use crate::metrics::Tally;

impl<S: FrameSink> Session<S> {
    /// Writes what the hub queued (up to a batch), flushes once, then acknowledges the `auto`
    /// queue deliveries it wrote.
    pub(super) async fn write_batch(&mut self) -> Result<(), SessionError> {
        // Bytes taken from the outbox, given back to its bound once per batch (the counter is
        // shared with the hub's pushes from other threads).
        let mut taken = 0;
        if self.version.is_some() {
            let batch = self.outbox.take(TAKE_MAX);
            // Room for the whole batch at once: each frame is its subscription's head, a
            // message-id, a WebSocket header and the shared tail.
            let bytes: usize = batch.iter().map(|d| d.message.len() + d.subscription.head.len() + 48).sum();
            self.sink.reserve(bytes);
            // Each message written is observed from its arrival in the hub to now: when the
            // batch is queued for the socket (read again after a flush within the batch).
            let mut now = std::time::Instant::now();
            let mut latencies = Tally::default();
            for delivery in batch {
                let size = delivery.message.len();
                taken += size;
                let received = delivery.message.received;
                let written = self.batch_messages;
                let outcome = self.write_delivery(delivery);
                if self.batch_messages > written {
                    latencies.observe(now.saturating_duration_since(received));
                }
                match outcome {
                    Written::Done => {}
                    // Given back to the bound when it is written, after an ACK.
                    Written::Held => taken -= size,
                    Written::Full => {
                        self.sink.flush().await.map_err(SessionError::io)?;
                        now = std::time::Instant::now();
                    }
                    Written::Stale(subscription, entry) => {
                        Box::pin(self.node.hub().release(&subscription, &entry.queue, &[entry.id], false))
                            .await?
                    }
                }
            }
            self.node.metrics().delivery_latencies(&latencies);
        }
        self.outbox.written(taken);
        // Counted before the flush, so a client that has its messages sees them counted.
        let messages = std::mem::take(&mut self.batch_messages);
        if messages > 0 {
            self.node.metrics().frames_out(Command::Message, messages);
            self.node.metrics().delivered(messages);
        }
        self.sink.flush().await.map_err(SessionError::io)?;
        if std::mem::take(&mut self.wrote) {
            self.last_write = Instant::now();
        }
        self.ack_written().await
    }

    pub(super) async fn ack_written(&mut self) -> Result<(), SessionError> {
        if self.auto_acks.is_empty() {
            return Ok(());
        }
        let acks = std::mem::take(&mut self.auto_acks);
        for (subscription, entry) in acks {
            Box::pin(self.node.hub().ack(&subscription, &entry.queue, std::slice::from_ref(&entry.id)))
                .await?;
        }
        Ok(())
    }

    /// Queues one delivery from the hub for writing, unless its subscription has ended
    /// meanwhile. Plain code, no future: this runs once per delivery.
    pub(super) fn write_delivery(&mut self, delivery: Delivery) -> Written {
        let Delivery { subscription, message, entry } = delivery;
        let entry = entry.map(|entry| *entry);
        // Unsubscribing clears `active` before the subscription id can be used again, so the flag
        // alone tells a stale delivery (no lookup per delivery).
        if !subscription.active.load(Ordering::Acquire) {
            return match entry {
                Some(entry) => Written::Stale(subscription, entry),
                None => Written::Done,
            };
        }
        let mut gap = false;
        if !self.resumes.is_empty() {
            if let (Some(resume), Some(offset)) = (self.resumes.get_mut(&subscription.seq), message.offset) {
                if offset <= resume.floor {
                    return Written::Done;
                }
                gap = resume.gap;
                self.resumes.remove(&subscription.seq);
            }
        }
        if !self.windows.is_empty() {
            if let Some(window) = self.windows.get_mut(&subscription.seq) {
                if window.full() {
                    window.backlog.push_back((message, gap));
                    return Written::Held;
                }
            }
        }
        self.write_message(&subscription, &message, entry, gap)
    }

    /// Queues a MESSAGE: this subscription's head, then the shared tail.
    pub(super) fn write_message(
        &mut self,
        subscription: &Arc<Subscription>,
        message: &MessageTail,
        entry: Option<EntryRef>,
        gap: bool,
    ) -> Written {
        let version = self.version.unwrap_or(Version::V1_2);
        self.last_message_seq += 1;
        let seq = self.last_message_seq;
        let mut seq_text = itoa::Buffer::new();
        let seq_text = seq_text.format(seq);
        let head = &mut self.scratch;
        head.clear();
        head.extend_from_slice(&subscription.head);
        head.extend_from_slice(b"message-id:");
        head.extend_from_slice(self.session_id.as_bytes());
        head.put_u8(b'-');
        head.extend_from_slice(seq_text.as_bytes());
        head.put_u8(b'\n');
        if subscription.ack != AckMode::Auto {
            head.extend_from_slice(b"ack:");
            head.extend_from_slice(self.session_id.as_bytes());
            head.put_u8(b'-');
            head.extend_from_slice(seq_text.as_bytes());
            head.put_u8(b'\n');
        }
        if entry.as_ref().is_some_and(|e| e.redeliveries > 0) {
            head.extend_from_slice(b"redelivered:true\n");
        }
        if gap {
            head.extend_from_slice(RECOVERED_HEADER.as_bytes());
            head.extend_from_slice(b":false\n");
        }
        let full = self.sink.feed(&self.scratch, message.tail(version), message.text);
        self.wrote = true;
        self.batch_messages += 1;
        if let Some(entry) = entry {
            if subscription.ack == AckMode::Auto {
                self.auto_acks.push((subscription.clone(), entry));
            } else {
                self.unacked.insert(seq, Unacked { subscription: subscription.clone(), entry: Some(entry) });
            }
        } else if let Some(window) = self.windows.get_mut(&subscription.seq) {
            window.outstanding += 1;
            self.unacked.insert(seq, Unacked { subscription: subscription.clone(), entry: None });
        }
        if full {
            Written::Full
        } else {
            Written::Done
        }
    }

    /// Encodes and queues a frame of the session's own (CONNECTED, RECEIPT, ERROR).
    pub(super) async fn send_frame(&mut self, frame: &Frame) -> Result<(), SessionError> {
        let mut out = BytesMut::new();
        stomp::encode(frame, self.version, &mut out);
        if self.sink.feed(&out, &[], true) {
            self.sink.flush().await.map_err(SessionError::io)?;
        }
        self.wrote = true;
        self.node.metrics().frame_out(frame.command);
        Ok(())
    }

    pub(super) async fn send_receipt(&mut self, receipt: Option<String>) -> Result<(), SessionError> {
        if let Some(id) = receipt {
            self.send_frame(&Frame::new(Command::Receipt).with_header("receipt-id", id)).await?;
        }
        Ok(())
    }

    /// The one place a refusal becomes an ERROR frame; the connection then closes.
    pub(super) async fn fail(&mut self, error: SessionError) {
        let receipt = self.error_receipt.take();
        let close = error.close_reason();
        if let SessionError::Transport(why) = &error {
            tracing::debug!(%why, "transport failed");
            return;
        }
        self.count_refusal(&error);
        // A connected session's end is its `disconnected` line (`Session::end`), whatever the
        // reason; before CONNECTED there is no such line, so the refusal is logged here.
        if self.version.is_none() {
            match &error {
                // As a TLS or WebSocket handshake that timed out: counted, and logged sparingly
                // (the session's span names the peer).
                SessionError::ConnectTimeout => {
                    if let Some(unlogged) = self.node.metrics().connection_refused(RefusalReason::Timeout) {
                        tracing::info!(reason = "timeout", why = %error, unlogged, "connection refused")
                    }
                }
                SessionError::ShuttingDown => tracing::debug!("closed by the drain before CONNECT"),
                _ => tracing::info!(%error, "refused client"),
            }
        }
        let frame = error_frame(&error, receipt);
        self.node.metrics().error_sent();
        let deadline = Duration::from_secs(2);
        let _ = tokio::time::timeout(deadline, async {
            if self.send_frame(&frame).await.is_ok() {
                let _ = self.sink.flush().await;
            }
            let _ = self.sink.close(close).await;
        })
        .await;
    }

    /// A refusal of one frame of a relay ([`crate::auth::RELAY_ROLE`]): the ERROR is sent and the
    /// session goes on. It is written with what the frame's run writes, flushed with it.
    pub(super) async fn report(
        &mut self,
        error: SessionError,
        receipt: Option<String>,
    ) -> Result<(), SessionError> {
        self.count_refusal(&error);
        tracing::info!(%error, user = self.user.as_deref(), "refused frame");
        self.node.metrics().error_sent();
        self.send_frame(&error_frame(&error, receipt)).await
    }

    /// Counts a refusal in the metrics of its kind.
    fn count_refusal(&self, error: &SessionError) {
        match error {
            SessionError::Auth(AuthError::Forbidden { .. }) => self.node.metrics().access_denied(),
            SessionError::Auth(_) => self.node.metrics().auth_failed(),
            _ => {}
        }
    }

    /// Releases everything the session held: subscriptions, unacknowledged and undelivered
    /// queue entries (back to their queues), open transactions (aborted).
    pub(super) async fn finish(&mut self) {
        // SENDs of a run the session stopped handling midway (a slow-consumer cut while a publish
        // waited) were taken without error: they are published, as they would have been.
        self.publish_held().await;
        let memberships = self.presence_memberships();
        for (_, subscription) in self.subscriptions.drain() {
            self.node.hub().unsubscribe(&subscription);
        }
        for name in memberships {
            self.leave_presence(&name).await;
        }
        self.transactions.clear();
        for (_, window) in self.windows.drain() {
            self.outbox.written(window.held_bytes());
        }
        let _ = self.release_unacked(|_| true).await;
        let _ = self.ack_written().await;
        let mut undelivered = Vec::new();
        for delivery in self.outbox.close() {
            self.outbox.written(delivery.message.len());
            if let Some(entry) = delivery.entry {
                undelivered.push((delivery.subscription, *entry));
            }
        }
        let _ = self.release(undelivered, false).await;
    }
}

/// The ERROR frame for a refusal: `message`, `receipt-id` when the refused frame asked for a
/// receipt, and a text body with the hint.
fn error_frame(error: &SessionError, receipt: Option<String>) -> Frame {
    let mut frame = Frame::new(Command::Error).with_header("message", error.to_string());
    if let SessionError::UnsupportedVersion(_) = error {
        frame = frame.with_header("version", SUPPORTED);
    }
    if let Some(id) = receipt {
        frame = frame.with_header("receipt-id", id);
    }
    let body = error.detail();
    frame
        .with_header("content-type", "text/plain")
        .with_header("content-length", body.len().to_string())
        .with_body(Bytes::from(body))
}
