//! The seam between a transport and its session: what the transport's reader tells the session
//! ([`Inbound`], over an [`InboundReceiver`]), what the session settled at CONNECT that the reader
//! needs ([`Negotiated`]), and the writing half the session owns ([`FrameSink`]).
//!
//! It lives on the session's side so that transports depend on sessions and never the reverse:
//! a transport implements [`FrameSink`] and feeds an [`InboundSender`]; a session sees only these
//! types.

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::mpsc;
use futures_util::StreamExt;
use tokio::sync::oneshot;

use crate::stomp::{Frame, ProtocolError, Version};

/// What the reader task tells its session.
#[derive(Debug)]
pub enum Inbound {
    /// Boxed: every slot of the channel to the session is this size.
    Frame(Box<Frame>),
    /// The bytes were not valid STOMP; the reader has stopped.
    Invalid(ProtocolError),
    /// Nothing arrived within the negotiated heart-beat tolerance.
    TimedOut,
    /// The transport refused a message over its size limit; says which.
    TooLarge(String),
    /// The client sent more than `max-frame-rate` allows; the reader has stopped.
    RateLimited,
    /// The client broke the WebSocket protocol (an unmasked frame, a bad opcode, an oversized
    /// control frame, a text message not UTF-8); says how, and how to close. The reader has
    /// stopped.
    WebSocket { why: String, close: CloseReason },
    /// A WebSocket ping: the session answers with a pong carrying this payload.
    Ping(Bytes),
    /// The peer closed the connection, or it failed (`Some` says how).
    Closed(Option<String>),
    /// The client sent a valid WebSocket close frame, with its status code if it had one: the
    /// session ends and answers with the same code.
    CloseFrame(Option<u16>),
}

/// What the session settled at CONNECT, which the reader needs to go on.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    pub version: Version,
    /// Drop the peer when nothing arrives for this long.
    pub read_timeout: Option<Duration>,
}

/// How a connection ends, for transports that can say so: a WebSocket close code and a short
/// reason text ([`code`](Self::code), [`text`](Self::text)). Each refusal has its own reason, so
/// a browser's `CloseEvent` says what happened even where the ERROR frame went unread. Plain TCP
/// ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 1000: DISCONNECT, a timeout, or the peer went away.
    Normal,
    /// The client's own close frame, answered with the status code it carried (RFC 6455
    /// §5.5.1: the endpoint typically echoes the code it received); the transport checked that
    /// the code may be sent (§7.4).
    Echo(u16),
    /// 1002: the client broke STOMP.
    StompError,
    /// 1002: the client broke RFC 6455 (framing, or a malformed close frame).
    WebSocketError,
    /// 1007: a text message, or a close frame's reason, is not UTF-8 (RFC 6455 §8.1).
    InvalidUtf8,
    /// 1008: CONNECT's credentials or token were missing or refused.
    AuthenticationFailed,
    /// 1008: the client's token expired while it was connected.
    TokenExpired,
    /// 1008: the access rules refused a SEND or SUBSCRIBE.
    PermissionDenied,
    /// 1008: the client did not read its messages fast enough.
    SlowConsumer,
    /// 1008: another configured limit (frame rate, subscriptions, transactions, connections).
    Limit,
    /// 1009: a message or STOMP frame over `max-frame-size` (or `max-body-size`).
    TooBig,
    /// 1012: the node is draining for a restart.
    Restart,
    /// 1008: an operator disconnected the session through the admin API.
    Disconnected,
}

impl CloseReason {
    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::Echo(code) => code,
            CloseReason::StompError | CloseReason::WebSocketError => 1002,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::AuthenticationFailed
            | CloseReason::TokenExpired
            | CloseReason::PermissionDenied
            | CloseReason::SlowConsumer
            | CloseReason::Limit
            | CloseReason::Disconnected => 1008,
            CloseReason::TooBig => 1009,
            CloseReason::Restart => 1012,
        }
    }

    /// The close frame's reason: short (a close frame has room for 123 bytes) and the same for
    /// every connection; the ERROR frame before it carries the details.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Normal | CloseReason::Echo(_) => "",
            CloseReason::StompError => "STOMP protocol error",
            CloseReason::WebSocketError => "WebSocket protocol error",
            CloseReason::InvalidUtf8 => "invalid UTF-8",
            CloseReason::AuthenticationFailed => "authentication failed",
            CloseReason::TokenExpired => "token expired",
            CloseReason::PermissionDenied => "permission denied",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Limit => "limit exceeded",
            CloseReason::TooBig => "message too big",
            CloseReason::Restart => "server restarting",
            CloseReason::Disconnected => "disconnected by the server",
        }
    }
}

/// The writing half of a client connection. `feed` queues, `flush` sends what was queued.
pub trait FrameSink: Send {
    /// Queues one whole STOMP frame, given as a head and a tail written back to back. True once
    /// the queued bytes have reached the high-water mark: flush before feeding more. Never
    /// waits, so writing a batch of deliveries is plain code with no future per frame.
    fn feed(&mut self, head: &[u8], tail: &[u8], text: bool) -> bool;
    /// Makes room for about `bytes` more of frames (a batch about to be fed), so the buffer is
    /// allocated once for it rather than grown frame by frame.
    fn reserve(&mut self, bytes: usize);
    /// Queues an EOL heart-beat.
    fn heartbeat(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Queues the answer to a WebSocket ping (nothing on transports without pings).
    fn pong(&mut self, payload: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Flushes and closes.
    fn close(&mut self, reason: CloseReason) -> impl Future<Output = io::Result<()>> + Send;
}

/// What a session receives from its reader. Dropping it (the session has ended) stops the
/// reader at once, so the socket is released even if the client never sends another byte.
///
/// A futures channel, not tokio's: it allocates per message instead of a block of 32 slots up
/// front, which every idle connection would hold.
pub struct InboundReceiver {
    frames: mpsc::Receiver<Inbound>,
    _stop: oneshot::Sender<()>,
}

impl InboundReceiver {
    /// The next event from the reader; `None` once the reader has stopped. Cancellation-safe.
    pub async fn recv(&mut self) -> Option<Inbound> {
        self.frames.next().await
    }

    /// The next event if the reader has already queued one; never waits. `None` also once the
    /// reader has stopped ([`recv`](Self::recv) then says so).
    pub fn try_recv(&mut self) -> Option<Inbound> {
        self.frames.try_recv().ok()
    }
}

/// Frames queued from a reader to its session at most; past that the reader stops reading.
const INBOUND_CAPACITY: usize = 32;

/// The reader's end of the channel to its session.
#[derive(Debug)]
pub struct InboundSender {
    pub events: mpsc::Sender<Inbound>,
    /// Resolves (with an error) once the session has dropped its [`InboundReceiver`].
    pub stopped: oneshot::Receiver<()>,
}

/// A channel from a connection's reader to its session.
pub fn inbound_channel() -> (InboundSender, InboundReceiver) {
    let (events, frames) = mpsc::channel(INBOUND_CAPACITY);
    let (stop, stopped) = oneshot::channel();
    (InboundSender { events, stopped }, InboundReceiver { frames, _stop: stop })
}
