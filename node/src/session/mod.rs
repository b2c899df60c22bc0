//! One client's STOMP session: the state machine between a transport and the hub.
//!
//! A session task owns everything of its connection but the reading half: the negotiated
//! version, subscriptions, unacknowledged queue deliveries, open transactions, heart-beats and
//! the writing half ([`FrameSink`]). It waits on four things at once: frames from the reader
//! task, deliveries from the hub (its [`Outbox`]), its heart-beat timer, and the node's drain
//! signal. Deliveries are written in batches and flushed once per batch.
//!
//! Every refusal is a [`SessionError`]; [`Session::fail`] is the one place that turns it into
//! an ERROR frame and closes.
//!
//! Security decisions are [`crate::auth`]'s: at CONNECT the session asks it who the client is
//! (an [`Identity`]), at each SEND and SUBSCRIBE whether that client may, and a token's expiry
//! becomes a timer that ends the session unless the client SENDs a fresh token to
//! [`REFRESH_DESTINATION`] first.
//!
//! Layout: `mod.rs` (the loop and frame handling), `io.rs` (the seam with the transport),
//! `error.rs`.

mod error;
pub mod io;
#[cfg(test)]
pub(crate) mod tests;

pub use error::SessionError;
pub use io::{CloseReason, FrameSink, Inbound, InboundReceiver, Negotiated};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::auth::{AuthError, Credentials, Identity, REFRESH_DESTINATION};
use crate::destination::{self, Kind, Route};
use crate::engine::{EntryId, Message, Published};
use crate::hub::{prepared, AckMode, Delivery, EntryRef, Outbox, Prepared, Subscriber, BATCH};
use crate::metrics::Transport;
use crate::node::{Node, Permit};
use crate::stomp::{self, escape_into, parse_heart_beat, Command, Frame, Version};

/// The product name and version sent in CONNECTED.
pub const SERVER: &str = concat!("Stampede/", env!("CARGO_PKG_VERSION"));

/// Versions this broker speaks, as listed in ERROR frames.
const SUPPORTED: &str = "1.0,1.1,1.2";

/// Frames one transaction may hold before COMMIT.
pub const MAX_TRANSACTION_FRAMES: usize = 1024;

/// Header a SUBSCRIBE carries to resume a history topic after an offset.
pub const SINCE_HEADER: &str = "x-since";
/// Header saying whether a resumed subscription got everything it missed.
pub const RECOVERED_HEADER: &str = "x-recovered";
/// Header limiting unacknowledged queue messages per subscription.
pub const PREFETCH_HEADER: &str = "prefetch-count";

/// A queue delivery waiting for the client's ACK or NACK.
struct Unacked {
    subscriber: Arc<Subscriber>,
    entry: EntryRef,
}

/// A subscription resuming a history topic: live messages up to `floor` were replayed already.
struct Resume {
    floor: u64,
    /// The history did not cover the gap: flag the next message with `x-recovered:false`.
    gap: bool,
}

/// A connection a transport accepted and hands to its session.
#[derive(Debug)]
pub struct Accepted {
    /// For metrics and logs.
    pub transport: Transport,
    pub peer: SocketAddr,
    /// The connection's place in the node's limits, held until the session ends.
    pub permit: Permit,
    /// `connect-timeout` after the accept: CONNECT must have arrived by then.
    pub deadline: tokio::time::Instant,
    /// A token from the WebSocket handshake (`Authorization: Bearer` or `?token=`).
    pub bearer: Option<String>,
}

/// Runs a session to its end.
pub async fn run<S: FrameSink>(
    node: Arc<Node>,
    sink: S,
    inbound: InboundReceiver,
    negotiated: oneshot::Sender<Negotiated>,
    accepted: Accepted,
) {
    let Accepted { transport, peer, permit, deadline, bearer } = accepted;
    node.metrics().connection_opened(transport);
    let config = node.config();
    let outbox = Outbox::new(config.limits.outbound_buffer, config.limits.slow_consumer);
    let session_id = node.next_session_id();
    let span = tracing::debug_span!("session", session = %session_id, %peer, transport = transport.as_str());
    let mut session = Session {
        node: node.clone(),
        sink,
        inbound,
        negotiated: Some(negotiated),
        outbox,
        session_id,
        version: None,
        user: None,
        identity: Identity::trusted(None),
        bearer,
        connect_deadline: deadline,
        token_deadline: None,
        heartbeat_out: None,
        last_write: Instant::now(),
        wrote: false,
        batch_messages: 0,
        unconfirmed: None,
        held: Vec::new(),
        subscriptions: HashMap::new(),
        next_sub_seq: 0,
        resumes: HashMap::new(),
        unacked: BTreeMap::new(),
        auto_acks: Vec::new(),
        last_message_seq: 0,
        transactions: HashMap::new(),
        scratch: BytesMut::with_capacity(256),
        error_receipt: None,
        stashed: None,
    };
    tracing::Instrument::instrument(session.run(), span).await;
    node.metrics().connection_closed(transport);
    drop(permit);
}

/// Tells a client it cannot be served (before any session starts) and closes.
pub async fn refuse<S: FrameSink>(sink: &mut S, why: &str) -> std::io::Result<()> {
    let frame = Frame::new(Command::Error).with_header("message", why);
    let mut out = BytesMut::new();
    stomp::encode(&frame, None, &mut out);
    sink.feed(&out, &[], true);
    sink.close(CloseReason::Policy).await
}

struct Session<S> {
    node: Arc<Node>,
    sink: S,
    inbound: InboundReceiver,
    /// Taken at CONNECT, when the reader learns the version.
    negotiated: Option<oneshot::Sender<Negotiated>>,
    outbox: Arc<Outbox>,
    /// Prefix of this session's message ids; also its `session` header.
    session_id: String,
    /// Set once CONNECTED.
    version: Option<Version>,
    /// The identity's user name, for `/user/` destinations.
    user: Option<String>,
    /// Who the client is; trusted and anonymous until CONNECT.
    identity: Identity,
    /// A token from the WebSocket handshake, used at CONNECT.
    bearer: Option<String>,
    connect_deadline: tokio::time::Instant,
    /// When the token the client authenticated with runs out (`exp` + `jwt-leeway`).
    token_deadline: Option<tokio::time::Instant>,
    heartbeat_out: Option<Duration>,
    last_write: Instant,
    /// Something was fed to the sink since the last flush.
    wrote: bool,
    /// MESSAGE frames written in the current batch (counted in the metrics once per batch).
    batch_messages: u64,
    /// The last publish of a SEND without receipt, while the engine has not answered it: a
    /// DISCONNECT's receipt waits for it (and so, publishes being ordered, for all before it).
    unconfirmed: Option<Published>,
    /// Topic and user-destination messages of SENDs without receipt in the run being handled,
    /// published together when it ends ([`Session::publish_held`]).
    held: Vec<(Kind, Message)>,
    subscriptions: HashMap<String, Arc<Subscriber>>,
    next_sub_seq: u64,
    resumes: HashMap<u64, Resume>,
    /// Queue deliveries in client modes, by message sequence number.
    unacked: BTreeMap<u64, Unacked>,
    /// Queue deliveries in `auto` mode written in this batch, acknowledged after the flush.
    auto_acks: Vec<(Arc<Subscriber>, EntryRef)>,
    last_message_seq: u64,
    transactions: HashMap<String, Vec<Frame>>,
    scratch: BytesMut,
    /// The `receipt` of the frame being refused, for the ERROR's `receipt-id`.
    error_receipt: Option<String>,
    /// An event taken from the reader while handling a run of frames, handled next.
    stashed: Option<Inbound>,
}

/// Frames handled in one run at most before their deliveries are written.
const COALESCE: usize = 32;

/// SEND, ACK and NACK without a receipt: frames whose handling writes nothing to the client
/// (unless it fails).
fn writes_nothing(frame: &Frame) -> bool {
    matches!(frame.command, Command::Send | Command::Ack | Command::Nack) && frame.get("receipt").is_none()
}

/// The message a SEND publishes to `route`: its headers but those the broker sets (the first of
/// repeated ones), and its body.
fn message(route: &Route, frame: Frame) -> Message {
    let Frame { headers, body, .. } = frame;
    let mut kept: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        if !prepared::is_reserved(&name) && !kept.iter().any(|(n, _)| *n == name) {
            kept.push((name, value));
        }
    }
    Message { destination: Arc::from(route.name.as_str()), headers: kept, body, offset: None }
}

/// What queueing a delivery for writing left to do.
enum Written {
    /// Queued, or skipped (its subscription ended, or a resume had replayed it): nothing more.
    Done,
    /// Queued, and the output has reached its high-water mark: flush before the next.
    Full,
    /// A queue entry for a subscription that has ended: release it to its queue.
    Stale(Arc<Subscriber>, EntryRef),
}

/// What the loop does after an event.
enum Flow {
    Continue,
    /// Close without ERROR (DISCONNECT done, peer gone).
    Close(CloseReason),
}

enum Event {
    Inbound(Option<Inbound>),
    Deliveries,
    Heartbeat,
    DrainStarted,
    Drain,
    ConnectTimeout,
    TokenExpired,
    SlowConsumer,
}

impl<S: FrameSink> Session<S> {
    async fn run(&mut self) {
        let mut drain = self.node.drain();
        let connect_deadline = tokio::time::sleep_until(self.connect_deadline);
        tokio::pin!(connect_deadline);
        let mut token_expiry: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let mut token_armed: Option<tokio::time::Instant> = None;
        let mut drain_at: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        if drain.started() {
            drain_at = Some(Box::pin(tokio::time::sleep(Duration::ZERO)));
        }
        let mut heartbeat = tokio::time::interval(Duration::from_secs(3600));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat_armed = false;
        let outbox = self.outbox.clone();
        let result = loop {
            if !heartbeat_armed {
                if let Some(every) = self.heartbeat_out {
                    heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    heartbeat_armed = true;
                }
            }
            if self.token_deadline != token_armed {
                token_armed = self.token_deadline;
                token_expiry = token_armed.map(|at| Box::pin(tokio::time::sleep_until(at)));
            }
            let connected = self.version.is_some();
            let event = if let Some(inbound) = self.stashed.take() {
                Event::Inbound(Some(inbound))
            } else {
                tokio::select! {
                    biased;
                    _ = outbox.overflow.notified() => Event::SlowConsumer,
                    _ = async { drain_at.as_mut().expect("armed").await }, if drain_at.is_some() => Event::Drain,
                    _ = drain.wait(), if drain_at.is_none() => Event::DrainStarted,
                    _ = &mut connect_deadline, if !connected => Event::ConnectTimeout,
                    _ = async { token_expiry.as_mut().expect("armed").await }, if token_expiry.is_some() => {
                        Event::TokenExpired
                    }
                    inbound = self.inbound.recv() => Event::Inbound(inbound),
                    _ = outbox.ready(), if connected => Event::Deliveries,
                    _ = heartbeat.tick(), if heartbeat_armed => Event::Heartbeat,
                }
            };
            let step = match event {
                Event::SlowConsumer => Err(SessionError::SlowConsumer),
                Event::Drain => Err(SessionError::ShuttingDown),
                Event::ConnectTimeout => Err(SessionError::ConnectTimeout),
                Event::TokenExpired => Err(SessionError::Auth(AuthError::Expired)),
                Event::DrainStarted => {
                    drain_at = Some(Box::pin(tokio::time::sleep(self.drain_delay())));
                    Ok(Flow::Continue)
                }
                event => {
                    // A write blocked on a client that stopped reading ends when it overflows.
                    tokio::select! {
                        biased;
                        _ = outbox.overflow.notified() => Err(SessionError::SlowConsumer),
                        step = self.handle(event) => step,
                    }
                }
            };
            match step {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close(reason)) => break Ok(reason),
                Err(error) => break Err(error),
            }
        };
        match result {
            Ok(reason) => {
                let _ = self.sink.close(reason).await;
            }
            Err(error) => Box::pin(self.fail(error)).await,
        }
        Box::pin(self.finish()).await;
    }

    /// When this session closes in a drain: spread over the drain period, so clients do not all
    /// reconnect at once. Sessions not yet connected go at once.
    fn drain_delay(&self) -> Duration {
        if self.version.is_none() {
            return Duration::ZERO;
        }
        let period = self.node.config().drain_period;
        period.mul_f64(rand::random::<f64>())
    }

    async fn handle(&mut self, event: Event) -> Result<Flow, SessionError> {
        match event {
            Event::Inbound(None) => Ok(Flow::Close(CloseReason::Normal)),
            Event::Inbound(Some(Inbound::Closed(why))) => {
                if let Some(why) = why {
                    tracing::debug!(%why, "connection failed");
                }
                Ok(Flow::Close(CloseReason::Normal))
            }
            Event::Inbound(Some(Inbound::Invalid(error))) => Err(SessionError::Protocol(error)),
            Event::Inbound(Some(Inbound::TimedOut)) => Err(SessionError::HeartbeatTimeout),
            Event::Inbound(Some(Inbound::TooLarge(why))) => Err(SessionError::Limit(why)),
            Event::Inbound(Some(Inbound::RateLimited)) => {
                let limits = &self.node.config().limits;
                Err(SessionError::limit(format!(
                    "frame rate exceeded: more than {} frames per second (max-frame-rate), in bursts \
                     of {} (frame-rate-burst)",
                    limits.max_frame_rate, limits.frame_rate_burst
                )))
            }
            Event::Inbound(Some(Inbound::WebSocket(why))) => Err(SessionError::WebSocket(why)),
            Event::Inbound(Some(Inbound::Ping(payload))) => {
                // A pong is not a STOMP heart-beat: `last_write` stays as it is.
                self.sink.pong(&payload).await.map_err(SessionError::io)?;
                self.sink.flush().await.map_err(SessionError::io)?;
                Ok(Flow::Continue)
            }
            Event::Inbound(Some(Inbound::Frame(frame))) => {
                let mut frame = *frame;
                let mut handled = 0;
                // A run of SEND, ACK and NACK frames without receipt that the reader has already
                // queued is handled before anything is written: they write nothing themselves, so
                // the bytes on the wire are the same, and the deliveries they cause go out in one
                // write instead of one each. Any other frame (and any frame with a receipt) is
                // handled alone, after what came before it has been written.
                // Only the first frame can be one that writes; those taken after it never do.
                let quiet = writes_nothing(&frame);
                // The run's publishes are handed over together at its end, before its deliveries
                // are written (and before the ERROR of a frame that fails in it).
                let flow = loop {
                    let flow = match self.on_inbound_frame(frame).await {
                        Ok(flow) => flow,
                        Err(error) => {
                            if handled > 0 {
                                self.publish_held().await;
                                self.write_batch().await?;
                            }
                            return Err(error);
                        }
                    };
                    handled += 1;
                    if !quiet || handled == COALESCE || !matches!(flow, Flow::Continue) {
                        break flow;
                    }
                    match self.inbound.try_recv() {
                        Some(Inbound::Frame(next)) if writes_nothing(&next) => frame = *next,
                        Some(other) => {
                            self.stashed = Some(other);
                            break flow;
                        }
                        None => break flow,
                    }
                };
                self.publish_held().await;
                self.write_batch().await?;
                Ok(flow)
            }
            Event::Deliveries => {
                self.write_batch().await?;
                Ok(Flow::Continue)
            }
            Event::Heartbeat => {
                if let Some(every) = self.heartbeat_out {
                    if self.last_write.elapsed() + Duration::from_millis(10) >= every {
                        self.sink.heartbeat().await.map_err(SessionError::io)?;
                        self.sink.flush().await.map_err(SessionError::io)?;
                        self.last_write = Instant::now();
                    }
                }
                Ok(Flow::Continue)
            }
            Event::DrainStarted
            | Event::Drain
            | Event::ConnectTimeout
            | Event::TokenExpired
            | Event::SlowConsumer => Ok(Flow::Continue),
        }
    }

    /// Writes what the hub queued (up to a batch), flushes once, then acknowledges the `auto`
    /// queue deliveries it wrote.
    async fn write_batch(&mut self) -> Result<(), SessionError> {
        // Bytes taken from the outbox, given back to its bound once per batch (the counter is
        // shared with the hub's pushes from other threads).
        let mut taken = 0;
        if self.version.is_some() {
            let batch = self.outbox.take(BATCH);
            // Room for the whole batch at once: each frame is its subscription's head, a
            // message-id, a WebSocket header and the shared tail.
            let bytes: usize = batch.iter().map(|d| d.message.len() + d.subscriber.head.len() + 48).sum();
            self.sink.reserve(bytes);
            for delivery in batch {
                taken += delivery.message.len();
                match self.write_delivery(delivery) {
                    Written::Done => {}
                    Written::Full => self.sink.flush().await.map_err(SessionError::io)?,
                    Written::Stale(subscriber, entry) => {
                        Box::pin(self.node.hub().release(&subscriber, &entry.queue, &[entry.id], false))
                            .await?
                    }
                }
            }
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

    /// Handles one frame from the client; on error, remembers its receipt for the ERROR.
    async fn on_inbound_frame(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        self.node.metrics().frame_in(frame.command);
        let receipt = frame.get("receipt").map(str::to_owned);
        // Boxed: frame handling is the session's largest state, and an idle session should not
        // carry it (see `tests::an_idle_session_is_small`).
        Box::pin(self.on_frame(frame)).await.inspect_err(|_| self.error_receipt = receipt)
    }

    async fn ack_written(&mut self) -> Result<(), SessionError> {
        if self.auto_acks.is_empty() {
            return Ok(());
        }
        let acks = std::mem::take(&mut self.auto_acks);
        for (subscriber, entry) in acks {
            Box::pin(self.node.hub().ack(&subscriber, &entry.queue, std::slice::from_ref(&entry.id))).await?;
        }
        Ok(())
    }

    /// Queues one delivery from the hub for writing, unless its subscription has ended
    /// meanwhile. Plain code, no future: this runs once per delivery.
    fn write_delivery(&mut self, delivery: Delivery) -> Written {
        let Delivery { subscriber, message, entry } = delivery;
        let entry = entry.map(|entry| *entry);
        // Unsubscribing clears `active` before the subscription id can be used again, so the flag
        // alone tells a stale delivery (no lookup per delivery).
        if !subscriber.active.load(Ordering::Acquire) {
            return match entry {
                Some(entry) => Written::Stale(subscriber, entry),
                None => Written::Done,
            };
        }
        let mut gap = false;
        if !self.resumes.is_empty() {
            if let (Some(resume), Some(offset)) = (self.resumes.get_mut(&subscriber.seq), message.offset) {
                if offset <= resume.floor {
                    return Written::Done;
                }
                gap = resume.gap;
                self.resumes.remove(&subscriber.seq);
            }
        }
        self.write_message(&subscriber, &message, entry, gap)
    }

    /// Queues a MESSAGE: this subscription's head, then the shared tail.
    fn write_message(
        &mut self,
        subscriber: &Arc<Subscriber>,
        message: &Prepared,
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
        head.extend_from_slice(&subscriber.head);
        head.extend_from_slice(b"message-id:");
        head.extend_from_slice(self.session_id.as_bytes());
        head.put_u8(b'-');
        head.extend_from_slice(seq_text.as_bytes());
        head.put_u8(b'\n');
        if subscriber.ack != AckMode::Auto {
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
            if subscriber.ack == AckMode::Auto {
                self.auto_acks.push((subscriber.clone(), entry));
            } else {
                self.unacked.insert(seq, Unacked { subscriber: subscriber.clone(), entry });
            }
        }
        if full {
            Written::Full
        } else {
            Written::Done
        }
    }

    /// Encodes and queues a frame of the session's own (CONNECTED, RECEIPT, ERROR).
    async fn send_frame(&mut self, frame: &Frame) -> Result<(), SessionError> {
        let mut out = BytesMut::new();
        stomp::encode(frame, self.version, &mut out);
        if self.sink.feed(&out, &[], true) {
            self.sink.flush().await.map_err(SessionError::io)?;
        }
        self.wrote = true;
        self.node.metrics().frame_out(frame.command);
        Ok(())
    }

    async fn send_receipt(&mut self, receipt: Option<String>) -> Result<(), SessionError> {
        if let Some(id) = receipt {
            self.send_frame(&Frame::new(Command::Receipt).with_header("receipt-id", id)).await?;
        }
        Ok(())
    }

    /// The one place a refusal becomes an ERROR frame; the connection then closes.
    async fn fail(&mut self, error: SessionError) {
        let receipt = self.error_receipt.take();
        let close = error.close_reason();
        match &error {
            SessionError::Transport(why) => {
                tracing::debug!(%why, "transport failed");
                return;
            }
            SessionError::HeartbeatTimeout | SessionError::ConnectTimeout => {
                tracing::debug!(%error, "closing session")
            }
            SessionError::Auth(AuthError::Forbidden { .. }) => {
                self.node.metrics().access_denied();
                tracing::info!(%error, user = ?self.user, "refused client")
            }
            SessionError::Auth(_) => {
                self.node.metrics().auth_failed();
                tracing::info!(%error, "refused client")
            }
            _ => tracing::info!(%error, "refused client"),
        }
        let mut frame = Frame::new(Command::Error).with_header("message", error.to_string());
        if let SessionError::UnsupportedVersion(_) = error {
            frame = frame.with_header("version", SUPPORTED);
        }
        if let Some(id) = receipt {
            frame = frame.with_header("receipt-id", id);
        }
        let body = error.detail();
        frame = frame
            .with_header("content-type", "text/plain")
            .with_header("content-length", body.len().to_string())
            .with_body(Bytes::from(body));
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

    /// Releases everything the session held: subscriptions, unacknowledged and undelivered
    /// queue entries (back to their queues), open transactions (aborted).
    async fn finish(&mut self) {
        // SENDs of a run the session stopped handling midway (a slow-consumer cut while a publish
        // waited) were taken without error: they are published, as they would have been.
        self.publish_held().await;
        for (_, subscriber) in self.subscriptions.drain() {
            self.node.hub().unsubscribe(&subscriber);
        }
        self.transactions.clear();
        let _ = self.release_unacked(|_| true).await;
        let _ = self.ack_written().await;
        let mut undelivered = Vec::new();
        for delivery in self.outbox.close() {
            self.outbox.written(delivery.message.len());
            if let Some(entry) = delivery.entry {
                undelivered.push((delivery.subscriber, *entry));
            }
        }
        let _ = self.release(undelivered, false).await;
    }

    /// Returns the unacknowledged queue deliveries of the subscriptions `which` selects to their
    /// queues, flagged as redelivered.
    async fn release_unacked(
        &mut self,
        which: impl Fn(&Arc<Subscriber>) -> bool,
    ) -> Result<(), SessionError> {
        let seqs: Vec<u64> =
            self.unacked.iter().filter(|(_, u)| which(&u.subscriber)).map(|(seq, _)| *seq).collect();
        let held = seqs
            .into_iter()
            .filter_map(|seq| self.unacked.remove(&seq))
            .map(|Unacked { subscriber, entry }| (subscriber, entry))
            .collect();
        self.release(held, true).await
    }

    /// Releases entries with one engine call per subscription and queue, keeping their order
    /// (the engine puts a batch back at the head of its queue as it was).
    async fn release(
        &self,
        entries: Vec<(Arc<Subscriber>, EntryRef)>,
        delivered: bool,
    ) -> Result<(), SessionError> {
        let mut batches: Vec<(Arc<Subscriber>, Arc<str>, Vec<EntryId>)> = Vec::new();
        for (subscriber, entry) in entries {
            match batches.iter_mut().find(|(s, q, _)| Arc::ptr_eq(s, &subscriber) && *q == entry.queue) {
                Some((_, _, ids)) => ids.push(entry.id),
                None => batches.push((subscriber, entry.queue, vec![entry.id])),
            }
        }
        for (subscriber, queue, ids) in batches {
            self.node.hub().release(&subscriber, &queue, &ids, delivered).await?;
        }
        Ok(())
    }

    // === frame handling ===

    async fn on_frame(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        if self.version.is_none() {
            return match frame.command {
                Command::Connect | Command::Stomp => self.on_connect(frame).await,
                other => Err(SessionError::NotConnected(other.as_str())),
            };
        }
        match frame.command {
            Command::Connect | Command::Stomp => {
                Err(SessionError::invalid("already connected: CONNECT may be sent once"))
            }
            Command::Send => self.on_send(frame).await,
            Command::Subscribe => self.on_subscribe(frame).await,
            Command::Unsubscribe => self.on_unsubscribe(frame).await,
            Command::Ack | Command::Nack => self.on_ack(frame).await,
            Command::Begin => self.on_begin(frame).await,
            Command::Commit => self.on_commit(frame).await,
            Command::Abort => self.on_abort(frame).await,
            Command::Disconnect => {
                let receipt = frame.get("receipt").map(str::to_owned);
                if let (Some(_), Some(published)) = (&receipt, self.unconfirmed.take()) {
                    // The receipt tells the client everything it sent was handled: its publishes
                    // have reached the store, or failed (counted and logged).
                    if let Err(error) = published.outcome().await {
                        tracing::warn!(%error, "publish failed");
                    }
                }
                self.write_batch().await?;
                self.send_receipt(receipt).await?;
                self.sink.flush().await.map_err(SessionError::io)?;
                Ok(Flow::Close(CloseReason::Normal))
            }
            other => Err(SessionError::invalid(format!(
                "{} is a server frame; clients may not send it",
                other.as_str()
            ))),
        }
    }

    async fn on_connect(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let version = match frame.get("accept-version") {
            None => Version::V1_0,
            Some(accepted) => accepted
                .split(',')
                .filter_map(|v| Version::parse(v.trim()))
                .max()
                .ok_or_else(|| SessionError::UnsupportedVersion(accepted.chars().take(64).collect()))?,
        };
        let (client_send, client_receive) = match frame.get("heart-beat") {
            Some(value) => parse_heart_beat(value)?,
            None => (0, 0),
        };
        let hb = &self.node.config().heartbeat;
        let server_send = hb.send.as_millis() as u64;
        let server_receive = hb.receive.as_millis() as u64;
        let outgoing = (server_send > 0 && client_receive > 0).then(|| server_send.max(client_receive));
        let incoming = (client_send > 0 && server_receive > 0).then(|| client_send.max(server_receive));
        self.heartbeat_out = outgoing.map(Duration::from_millis);
        let read_timeout = incoming.map(|ms| Duration::from_millis(ms).mul_f64(hb.grace));
        let bearer = self.bearer.take();
        let credentials = Credentials {
            login: frame.get("login"),
            passcode: frame.get("passcode"),
            bearer: bearer.as_deref(),
        };
        let identity = self.node.auth().authenticate(credentials).await?;
        self.adopt(identity);
        self.version = Some(version);
        if let Some(tx) = self.negotiated.take() {
            let _ = tx.send(Negotiated { version, read_timeout });
        }
        let connected = Frame::new(Command::Connected)
            .with_header("version", version.as_str())
            .with_header("heart-beat", format!("{server_send},{server_receive}"))
            .with_header("server", SERVER)
            .with_header("session", self.session_id.clone());
        let connected = match &self.user {
            Some(user) => connected.with_header("user-name", user.clone()),
            None => connected,
        };
        self.send_frame(&connected).await?;
        tracing::debug!(version = version.as_str(), user = ?self.user, "connected");
        Ok(Flow::Continue)
    }

    /// Takes on who the client now is, and when that runs out.
    fn adopt(&mut self, identity: Identity) {
        self.user = identity.user.clone();
        self.token_deadline = identity.expires.and_then(|exp| {
            let left = exp.duration_since(SystemTime::now()).unwrap_or_default() + self.node.auth().leeway();
            tokio::time::Instant::now().checked_add(left)
        });
        self.identity = identity;
    }

    /// A SEND to [`REFRESH_DESTINATION`]: the body is a fresh token for the same user. Its
    /// roles and grants replace the old ones, so every subscription must still be allowed.
    async fn on_refresh(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        if frame.get("transaction").is_some() {
            return Err(SessionError::invalid("a token refresh cannot be part of a transaction"));
        }
        let token =
            std::str::from_utf8(&frame.body).ok().map(str::trim).filter(|t| !t.is_empty()).ok_or_else(
                || {
                    AuthError::Refresh(format!(
                        "the body of a SEND to {REFRESH_DESTINATION} must be the new token"
                    ))
                },
            )?;
        let fresh = self.node.auth().refresh(&self.identity, token)?;
        for (id, subscriber) in &self.subscriptions {
            if let Err(denied) = self.node.auth().may_subscribe(&fresh, &subscriber.route) {
                return Err(AuthError::Refresh(format!(
                    "the new token does not keep subscription {id:?}: {denied}"
                ))
                .into());
            }
        }
        self.adopt(fresh);
        tracing::debug!(user = ?self.user, "token refreshed");
        self.send_receipt(frame.get("receipt").map(str::to_owned)).await?;
        Ok(Flow::Continue)
    }

    fn transaction_of(&mut self, frame: &Frame) -> Result<Option<&mut Vec<Frame>>, SessionError> {
        let Some(tx) = frame.get("transaction") else { return Ok(None) };
        match self.transactions.get_mut(tx) {
            Some(frames) if frames.len() >= MAX_TRANSACTION_FRAMES => Err(SessionError::limit(format!(
                "transaction {tx:?} holds too many frames (at most {MAX_TRANSACTION_FRAMES})"
            ))),
            Some(frames) => Ok(Some(frames)),
            None => Err(SessionError::invalid(format!("unknown transaction {tx:?}"))),
        }
    }

    async fn on_send(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let destination = required(&frame, "destination")?;
        if destination == REFRESH_DESTINATION {
            return self.on_refresh(frame).await;
        }
        let route = destination::for_send(destination)?;
        self.node.auth().may_publish(&self.identity, &route)?;
        let receipt = frame.get("receipt").map(str::to_owned);
        if let Some(frames) = self.transaction_of(&frame)? {
            frames.push(frame);
            self.send_receipt(receipt).await?;
            return Ok(Flow::Continue);
        }
        if receipt.is_none() && route.kind != Kind::Queue {
            // Published with the rest of the run (queue entries are not: an enqueue is not
            // delivered locally, so there is nothing to gather).
            self.held.push((route.kind, message(&route, frame)));
            return Ok(Flow::Continue);
        }
        // Ordered after the run's publishes so far.
        self.publish_held().await;
        let published = self.node.hub().publish(route.kind, message(&route, frame)).await;
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
            None => self.published_unconfirmed(published),
        }
        Ok(Flow::Continue)
    }

    /// Publishes the messages held in this run, together and in order.
    async fn publish_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let mut held = std::mem::take(&mut self.held);
        // Boxed: the engines' futures are large, and every idle session would carry them inline.
        if held.len() == 1 {
            // A run of one: the single-message path, nothing to gather.
            let (kind, message) = held.pop().expect("one held");
            let published = Box::pin(self.node.hub().publish(kind, message)).await;
            self.published_unconfirmed(published);
        } else {
            for published in Box::pin(self.node.hub().publish_all(held)).await {
                self.published_unconfirmed(published);
            }
        }
    }

    /// A publish no receipt waits for: a failure known now is logged (the hub has counted it);
    /// otherwise it is the last one a DISCONNECT's receipt waits for.
    fn published_unconfirmed(&mut self, published: Published) {
        match published.failed() {
            Some(error) => tracing::warn!(%error, "publish failed"),
            None => self.unconfirmed = Some(published),
        }
    }

    async fn on_subscribe(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let version = self.version.unwrap_or(Version::V1_2);
        let destination = required(&frame, "destination")?;
        let route = destination::for_subscribe(destination, self.user.as_deref())?;
        self.node.auth().may_subscribe(&self.identity, &route)?;
        let id = match (frame.get("id"), version) {
            (Some(id), _) => id.to_owned(),
            (None, Version::V1_0) => destination.to_owned(),
            (None, _) => return Err(SessionError::MissingHeader { command: "SUBSCRIBE", header: "id" }),
        };
        if self.subscriptions.contains_key(&id) {
            return Err(SessionError::invalid(format!(
                "subscription id {id:?} is already in use on this connection"
            )));
        }
        let max = self.node.config().limits.max_subscriptions;
        if self.subscriptions.len() >= max {
            return Err(SessionError::limit(format!("too many subscriptions (max-subscriptions is {max})")));
        }
        let ack = match frame.get("ack") {
            None => AckMode::Auto,
            Some(mode) => AckMode::parse(mode).ok_or_else(|| {
                SessionError::invalid(format!(
                    "unknown ack mode {mode:?}: expected auto, client or client-individual"
                ))
            })?,
        };
        let prefetch = match frame.get(PREFETCH_HEADER) {
            None => self.node.config().queues.default_prefetch,
            Some(n) => n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                SessionError::invalid(format!("{PREFETCH_HEADER} must be a positive integer, not {n:?}"))
            })?,
        };
        let since = match frame.get(SINCE_HEADER) {
            None => None,
            Some(s) => Some(s.parse::<u64>().map_err(|_| {
                SessionError::invalid(format!("{SINCE_HEADER} must be an offset (an integer), not {s:?}"))
            })?),
        };
        if since.is_some() && route.kind == Kind::Queue {
            return Err(SessionError::invalid(format!("{SINCE_HEADER} applies to topics, not queues")));
        }
        let mut head = BytesMut::with_capacity(32 + id.len());
        head.extend_from_slice(b"MESSAGE\nsubscription:");
        match version {
            Version::V1_0 => head.extend_from_slice(id.as_bytes()),
            v => escape_into(&id, v, &mut head),
        }
        head.put_u8(b'\n');
        self.next_sub_seq += 1;
        let subscriber = Arc::new(Subscriber {
            seq: self.next_sub_seq,
            id: id.clone(),
            head: head.freeze(),
            ack,
            route,
            outbox: self.outbox.clone(),
            active: AtomicBool::new(true),
            prefetch,
            in_flight: AtomicU32::new(0),
        });
        self.subscriptions.insert(id, subscriber.clone());
        self.node.hub().subscribe(subscriber.clone()).wait().await?;
        let mut receipt =
            frame.get("receipt").map(|r| Frame::new(Command::Receipt).with_header("receipt-id", r));
        if let Some(since) = since {
            let recovered = self.replay(&subscriber, since).await?;
            receipt =
                receipt.map(|r| r.with_header(RECOVERED_HEADER, if recovered { "true" } else { "false" }));
        }
        if let Some(receipt) = receipt {
            self.send_frame(&receipt).await?;
        }
        Ok(Flow::Continue)
    }

    /// Writes what a resuming subscriber missed after `since`; live deliveries up to the last
    /// replayed offset are then skipped. Returns whether the history covered the whole gap.
    async fn replay(&mut self, subscriber: &Arc<Subscriber>, since: u64) -> Result<bool, SessionError> {
        let history = self.node.hub().history(&subscriber.route.name, since).await?;
        let mut floor = since;
        let mut gap = !history.complete;
        for message in &history.messages {
            let prepared = Prepared::new(message);
            floor = floor.max(message.offset.unwrap_or(floor));
            if let Written::Full = self.write_message(subscriber, &prepared, None, gap) {
                self.sink.flush().await.map_err(SessionError::io)?;
            }
            gap = false;
        }
        self.resumes.insert(subscriber.seq, Resume { floor, gap });
        Ok(history.complete)
    }

    async fn on_unsubscribe(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let id = match (frame.get("id"), self.version) {
            (Some(id), _) => id.to_owned(),
            (None, Some(Version::V1_0)) => required(&frame, "destination")?.to_owned(),
            (None, _) => return Err(SessionError::MissingHeader { command: "UNSUBSCRIBE", header: "id" }),
        };
        let Some(subscriber) = self.subscriptions.remove(&id) else {
            return Err(SessionError::invalid(format!("no subscription with id {id:?}")));
        };
        self.node.hub().unsubscribe(&subscriber);
        self.resumes.remove(&subscriber.seq);
        self.release_unacked(|s| Arc::ptr_eq(s, &subscriber)).await?;
        self.send_receipt(frame.get("receipt").map(str::to_owned)).await?;
        Ok(Flow::Continue)
    }

    /// The message sequence number an ACK or NACK names.
    fn acked_seq(&self, frame: &Frame) -> Result<u64, SessionError> {
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

    async fn on_ack(&mut self, frame: Frame) -> Result<Flow, SessionError> {
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
    async fn settle(&mut self, seq: u64, ack: bool) -> Result<(), SessionError> {
        let Some(target) = self.unacked.get(&seq) else { return Ok(()) };
        let subscriber = target.subscriber.clone();
        let seqs: Vec<u64> = if subscriber.ack == AckMode::Client {
            self.unacked
                .range(..=seq)
                .filter(|(_, u)| Arc::ptr_eq(&u.subscriber, &subscriber))
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
                self.node.hub().ack(&subscriber, &queue, &ids).await?;
            } else {
                self.node.hub().release(&subscriber, &queue, &ids, true).await?;
            }
        }
        Ok(())
    }

    async fn on_begin(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let tx = required(&frame, "transaction")?;
        if self.transactions.contains_key(tx) {
            return Err(SessionError::invalid(format!("transaction {tx:?} is already open")));
        }
        let max = self.node.config().limits.max_transactions;
        if self.transactions.len() >= max {
            return Err(SessionError::limit(format!(
                "too many open transactions (max-transactions is {max})"
            )));
        }
        self.transactions.insert(tx.to_owned(), Vec::new());
        self.send_receipt(frame.get("receipt").map(str::to_owned)).await?;
        Ok(Flow::Continue)
    }

    async fn on_commit(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let tx = required(&frame, "transaction")?;
        let frames = self
            .transactions
            .remove(tx)
            .ok_or_else(|| SessionError::invalid(format!("unknown transaction {tx:?}")))?;
        // The publishes go out pipelined; the commit's receipt waits for all of them.
        let mut published = Vec::new();
        for held in frames {
            match held.command {
                Command::Send => {
                    let route = destination::for_send(required(&held, "destination")?)?;
                    published.push(self.node.hub().publish(route.kind, message(&route, held)).await);
                }
                Command::Ack | Command::Nack => {
                    let seq = self.acked_seq(&held)?;
                    self.settle(seq, held.command == Command::Ack).await?;
                }
                _ => {}
            }
        }
        for published in published {
            published.outcome().await?;
        }
        self.send_receipt(frame.get("receipt").map(str::to_owned)).await?;
        Ok(Flow::Continue)
    }

    async fn on_abort(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let tx = required(&frame, "transaction")?;
        if self.transactions.remove(tx).is_none() {
            return Err(SessionError::invalid(format!("unknown transaction {tx:?}")));
        }
        self.send_receipt(frame.get("receipt").map(str::to_owned)).await?;
        Ok(Flow::Continue)
    }
}

fn required<'f>(frame: &'f Frame, header: &'static str) -> Result<&'f str, SessionError> {
    frame.get(header).ok_or(SessionError::MissingHeader { command: frame.command.as_str(), header })
}
