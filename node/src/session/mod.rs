//! One client's STOMP session: the state machine between a transport and the hub.
//!
//! A session task owns everything of its connection but the reading half: the negotiated
//! version, subscriptions, unacknowledged queue deliveries, open transactions, heart-beats and
//! the writing half ([`FrameSink`]). It waits on four things at once: frames from the reader
//! task, deliveries from the hub (its [`Outbox`]), its heart-beat timer, and the node's drain
//! signal. Deliveries are written in batches and flushed once per batch.
//!
//! Every refusal is a [`SessionError`]; [`Session::fail`] is the one place that turns it into
//! an ERROR frame and closes. The one exception is a relay's SEND refused for itself alone
//! ([`crate::auth::RELAY_ROLE`]): [`Session::report`] sends the ERROR and the session goes on.
//!
//! What an operator reads: a session runs inside an `info` span `session` (its id, the peer's
//! address, the transport), so every line logged while it runs names it. A session logs one
//! `connected` line at CONNECTED (user, STOMP version) and one `disconnected` line at its end
//! (user, version, `duration_ms`, and the `reason`: client DISCONNECT, peer closed, heart-beat
//! timeout, slow consumer, drained, `ERROR <message>`, ...). A client refused before CONNECTED
//! is logged as `refused client` instead, except a CONNECT that never came: that is counted and
//! logged sparingly as a refused connection (reason `timeout`), like a handshake that timed out.
//! Nothing is logged per frame.
//!
//! Security decisions are [`crate::auth`]'s: at CONNECT the session asks it who the client is
//! (an [`Identity`]), at each SEND and SUBSCRIBE whether that client may, and a token's expiry
//! becomes a timer that ends the session unless the client SENDs a fresh token to
//! [`REFRESH_DESTINATION`] first.
//!
//! Layout: one file per command group, as mini-redis's `cmd/`, each an `impl` block of
//! [`Session`] (the child modules see the state and the imports here: `use super::*`):
//! - `mod.rs`: the state, the event loop, and [`Session::on_frame`], the one dispatcher;
//! - `connect.rs`: CONNECT and the token refresh;
//! - `publish.rs`: SEND;
//! - `subscribe.rs`: SUBSCRIBE (with the history replay) and UNSUBSCRIBE;
//! - `presence.rs`: access to `/presence<destination>`, and the session's presence joins and leaves;
//! - `ack.rs`: ACK, NACK, and releasing unacknowledged deliveries;
//! - `transaction.rs`: BEGIN, COMMIT, ABORT;
//! - `output.rs`: writing batches and frames, the ERROR path, the end of a session;
//! - `link.rs`: the seam with the transport; `error.rs`: [`SessionError`].

mod ack;
mod application;
mod connect;
mod error;
pub mod link;
mod output;
mod presence;
mod publish;
mod subscribe;
#[cfg(test)]
pub(crate) mod tests;
mod transaction;

use ack::{Settle, Unacked, Window};
use publish::message;
use subscribe::Resume;

pub use error::SessionError;
pub use link::{CloseReason, FrameSink, Inbound, InboundReceiver, Negotiated};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::auth::{AuthError, Credentials, Identity, REFRESH_DESTINATION};
use crate::config::QueueLifetime;
use crate::destination::{self, Kind, Route};
use crate::engine::{EngineError, EntryId, Message, PendingPublish};
use crate::hub::{
    tail, AckMode, Command as Order, Delivery, EntryRef, MessageTail, Outbox, Subscription, TAKE_MAX,
};
use crate::metrics::RefusalReason;
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
/// SUBSCRIBE to a queue: `true` deletes the queue (and its messages) when its last consumer,
/// cluster-wide, leaves (RabbitMQ's STOMP header of the same name).
pub const AUTO_DELETE_HEADER: &str = "auto-delete";
/// SUBSCRIBE to a queue: milliseconds after which the queue is deleted once unused (no consumer,
/// no SEND, no SUBSCRIBE), as RabbitMQ's `x-expires`.
pub const EXPIRES_HEADER: &str = "x-expires";

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
    let session_id: Arc<str> = Arc::from(node.next_session_id());
    let span = tracing::info_span!("session", session = %session_id, %peer, transport = %transport.as_str());
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
        unconfirmed: Vec::new(),
        held: Vec::new(),
        subscriptions: HashMap::new(),
        next_sub_seq: 0,
        resumes: HashMap::new(),
        unacked: BTreeMap::new(),
        windows: HashMap::new(),
        auto_acks: Vec::new(),
        last_message_seq: 0,
        transactions: HashMap::new(),
        scratch: BytesMut::with_capacity(256),
        error_receipt: None,
        stashed: None,
        event_call: None,
    };
    // Listed (once CONNECTED) for the admin API, which gives it orders through its outbox.
    session.outbox.describe(transport, peer);
    node.hub().register_session(session.session_id.clone(), session.outbox.clone());
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
    sink.close(CloseReason::Limit).await
}

struct Session<S> {
    node: Arc<Node>,
    sink: S,
    inbound: InboundReceiver,
    /// Taken at CONNECT, when the reader learns the version.
    negotiated: Option<oneshot::Sender<Negotiated>>,
    outbox: Arc<Outbox>,
    /// Prefix of this session's message ids; also its `session` header and its key in the hub's
    /// table of sessions.
    session_id: Arc<str>,
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
    /// Per destination, the last publish of a SEND without receipt while the engine has not
    /// answered it: a DISCONNECT's receipt waits for them (and so, one destination's publishes
    /// being answered in order, for all before them; see [`Session::published_unconfirmed`]).
    unconfirmed: Vec<(Arc<str>, PendingPublish)>,
    /// Topic and user-destination messages of SENDs without receipt in the run being handled,
    /// published together when it ends ([`Session::publish_held`]).
    held: Vec<(Kind, Message)>,
    subscriptions: HashMap<String, Arc<Subscription>>,
    next_sub_seq: u64,
    resumes: HashMap<u64, Resume>,
    /// Queue deliveries in client modes, and topic deliveries counted against a `prefetch-count`
    /// window, by message sequence number.
    unacked: BTreeMap<u64, Unacked>,
    /// Topic subscriptions in a client ack mode that set `prefetch-count`, by subscription seq.
    windows: HashMap<u64, Window>,
    /// Queue deliveries in `auto` mode written in this batch, acknowledged after the flush.
    auto_acks: Vec<(Arc<Subscription>, EntryRef)>,
    last_message_seq: u64,
    transactions: HashMap<String, Vec<Frame>>,
    scratch: BytesMut,
    /// The `receipt` of the frame being refused, for the ERROR's `receipt-id`.
    error_receipt: Option<String>,
    /// An event taken from the reader while handling a run of frames, handled next.
    stashed: Option<Inbound>,
    /// The last session event sent to an HTTP backend, on a task of its own: the next one waits
    /// for it, so that a backend gets a session's events in the order they happened.
    event_call: Option<tokio::task::JoinHandle<()>>,
}

/// Frames handled in one run at most before their deliveries are written.
const COALESCE: usize = 32;

/// SEND, ACK and NACK without a receipt: frames whose handling writes nothing to the client
/// (unless it fails).
fn writes_nothing(frame: &Frame) -> bool {
    matches!(frame.command, Command::Send | Command::Ack | Command::Nack) && frame.get("receipt").is_none()
}

/// What queueing a delivery for writing left to do.
enum Written {
    /// Queued, or skipped (its subscription ended, or a resume had replayed it): nothing more.
    Done,
    /// Queued, and the output has reached its high-water mark: flush before the next.
    Full,
    /// A queue entry for a subscription that has ended: release it to its queue.
    Stale(Arc<Subscription>, EntryRef),
    /// A topic message held back behind its subscription's full `prefetch-count` window: its
    /// bytes still count against the outbox's bound.
    Held,
}

/// What the loop does after an event.
enum Flow {
    Continue,
    /// Close without ERROR: the peer went away (or sent a WebSocket close, which is echoed).
    Close(CloseReason),
    /// Close without ERROR after the client's DISCONNECT (and its receipt).
    Disconnect,
}

/// The `reason` of the `disconnected` line of a session that ended without an ERROR.
fn close_reason(flow: &Flow) -> String {
    match flow {
        Flow::Disconnect => "client DISCONNECT".to_owned(),
        Flow::Close(CloseReason::Echo(code)) => format!("peer closed (WebSocket close {code})"),
        Flow::Close(_) | Flow::Continue => "peer closed".to_owned(),
    }
}

/// The `reason` of the `disconnected` line of a session that ended on `error`.
fn error_reason(error: &SessionError) -> String {
    match error {
        SessionError::SlowConsumer => "slow consumer".to_owned(),
        SessionError::ShuttingDown => "drained".to_owned(),
        SessionError::Disconnected(why) => format!("disconnected by the admin API: {why}"),
        SessionError::HeartbeatTimeout => "heart-beat timeout".to_owned(),
        SessionError::ConnectTimeout => "connect timeout".to_owned(),
        SessionError::Transport(why) => format!("connection failed: {why}"),
        other => format!("ERROR {other}"),
    }
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
                    let tick = matches!(event, Event::Heartbeat);
                    // A write blocked on a client that stopped reading ends when it overflows.
                    let step = tokio::select! {
                        biased;
                        _ = outbox.overflow.notified() => Err(SessionError::SlowConsumer),
                        step = self.handle(event) => step,
                    };
                    if let (true, Some(every)) = (tick, self.heartbeat_out) {
                        // The next beat is due one interval after the last write, not one tick
                        // later: a frame written just after a tick would otherwise stretch the
                        // silence to nearly two intervals (STOMP: data at least every interval).
                        heartbeat.reset_at(tokio::time::Instant::from_std(self.last_write) + every);
                    }
                    step
                }
            };
            match step {
                Ok(Flow::Continue) => {}
                Ok(flow @ (Flow::Close(_) | Flow::Disconnect)) => break Ok(flow),
                Err(error) => break Err(error),
            }
        };
        // Boxed: the end's state (the reason, the close, the clean-up) is needed once; inline it
        // would size every idle session's future.
        Box::pin(self.end(result)).await;
    }

    /// Closes (with an ERROR if `result` is one), releases what the session held, and logs the
    /// `disconnected` line of a session that was CONNECTED.
    async fn end(&mut self, result: Result<Flow, SessionError>) {
        // Out of the admin API's sight before the client sees the end: an order or a listing
        // that comes after the client saw its connection close never finds the session.
        self.node.hub().deregister_session(&self.session_id);
        let reason = match result {
            Ok(flow) => {
                let close = if let Flow::Close(close) = flow { close } else { CloseReason::Normal };
                let _ = self.sink.close(close).await;
                close_reason(&flow)
            }
            Err(error) => {
                let reason = error_reason(&error);
                self.fail(error).await;
                reason
            }
        };
        self.finish().await;
        if self.version.is_some() {
            self.emit(crate::apps::events::Event::Disconnect { reason: reason.as_str() }).await;
        }
        if let Some(version) = self.version {
            // Since the accept, which `connect_deadline` is `connect-timeout` after (kept in no
            // field of its own: every idle session would carry it).
            let accepted = self.connect_deadline.checked_sub(self.node.config().limits.connect_timeout);
            let duration_ms =
                accepted.map_or(0, |at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX));
            tracing::info!(
                user = self.user.as_deref(),
                version = version.as_str(),
                duration_ms,
                reason = reason.as_str(),
                "disconnected"
            );
        }
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
            Event::Inbound(None) | Event::Inbound(Some(Inbound::Closed(None))) => {
                Ok(Flow::Close(CloseReason::Normal))
            }
            // The socket failed (reset, broken pipe): nothing more can be written.
            Event::Inbound(Some(Inbound::Closed(Some(why)))) => Err(SessionError::Transport(why)),
            Event::Inbound(Some(Inbound::CloseFrame(code))) => {
                Ok(Flow::Close(code.map_or(CloseReason::Normal, CloseReason::Echo)))
            }
            Event::Inbound(Some(Inbound::Invalid(error))) => Err(SessionError::Protocol(error)),
            Event::Inbound(Some(Inbound::TimedOut)) => Err(SessionError::HeartbeatTimeout),
            Event::Inbound(Some(Inbound::TooLarge(why))) => Err(SessionError::TooLarge(why)),
            Event::Inbound(Some(Inbound::RateLimited)) => {
                let limits = &self.node.config().limits;
                Err(SessionError::limit(format!(
                    "frame rate exceeded: more than {} frames per second (max-frame-rate), in bursts \
                     of {} (frame-rate-burst)",
                    limits.max_frame_rate, limits.frame_rate_burst
                )))
            }
            Event::Inbound(Some(Inbound::WebSocket { why, close })) => {
                Err(SessionError::WebSocket { why, close })
            }
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
                for order in self.outbox.take_commands() {
                    match order {
                        Order::Disconnect(reason) => return Err(SessionError::Disconnected(reason)),
                        // Boxed: rare, and inline it would size every idle session's future.
                        Order::Unsubscribe(destination) => {
                            Box::pin(self.unsubscribe_destination(&destination)).await?
                        }
                    }
                }
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

    /// Handles one frame from the client; on error, remembers its receipt for the ERROR. A
    /// relay's SEND refused for itself alone is reported and the session goes on.
    async fn on_inbound_frame(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        self.node.metrics().frame_in(frame.command);
        let command = frame.command;
        let receipt = frame.get("receipt").map(str::to_owned);
        // Boxed: frame handling is the session's largest state, and an idle session should not
        // carry it (see `tests::an_idle_session_is_small`).
        match Box::pin(self.on_frame(frame)).await {
            Err(error)
                if command == Command::Send && error.refuses_frame_only() && self.identity.is_relay() =>
            {
                // Boxed, as `on_frame`: rare, and not to be carried by every idle session.
                Box::pin(self.report(error, receipt)).await?;
                Ok(Flow::Continue)
            }
            result => result.inspect_err(|_| self.error_receipt = receipt),
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        // STOMP 1.1 and 1.2: only SEND, MESSAGE and ERROR may have a body.
        if !frame.body.is_empty()
            && !matches!(frame.command, Command::Send | Command::Message | Command::Error)
        {
            return Err(SessionError::invalid(format!(
                "{} frames may not have a body: of the client's frames only SEND carries one",
                frame.command.as_str()
            )));
        }
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
            Command::Ack | Command::Nack => self.on_ack(frame).await,
            // Boxed: each is a future of up to 8 KiB, and this future, allocated for every frame,
            // is as large as its largest branch; SEND and ACK stay inline (bench/notes.md).
            Command::Subscribe => Box::pin(self.on_subscribe(frame)).await,
            Command::Unsubscribe => Box::pin(self.on_unsubscribe(frame)).await,
            Command::Commit => Box::pin(self.on_commit(frame)).await,
            Command::Begin => self.on_begin(frame).await,
            Command::Abort => self.on_abort(frame).await,
            Command::Disconnect => {
                let receipt = frame.get("receipt").map(str::to_owned);
                if receipt.is_some() {
                    // The receipt tells the client everything it sent was handled: its publishes
                    // have reached the store, or failed (counted and logged).
                    for (_, published) in std::mem::take(&mut self.unconfirmed) {
                        if let Err(error) = published.outcome().await {
                            tracing::warn!(%error, "publish failed");
                        }
                    }
                }
                self.write_batch().await?;
                self.send_receipt(receipt).await?;
                self.sink.flush().await.map_err(SessionError::io)?;
                Ok(Flow::Disconnect)
            }
            other => Err(SessionError::invalid(format!(
                "{} is a server frame; clients may not send it",
                other.as_str()
            ))),
        }
    }
}

fn required<'f>(frame: &'f Frame, header: &'static str) -> Result<&'f str, SessionError> {
    frame.get(header).ok_or(SessionError::MissingHeader { command: frame.command.as_str(), header })
}
