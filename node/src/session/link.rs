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
    /// control frame); says how. The reader has stopped.
    WebSocket(String),
    /// A WebSocket ping: the session answers with a pong carrying this payload.
    Ping(Bytes),
    /// The peer closed the connection, or it failed (`Some` says how).
    Closed(Option<String>),
}

/// What the session settled at CONNECT, which the reader needs to go on.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    pub version: Version,
    /// Drop the peer when nothing arrives for this long.
    pub read_timeout: Option<Duration>,
}

/// How a connection ends, for transports that can say so (WebSocket close codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 1000: DISCONNECT, or the peer went away.
    Normal,
    /// 1002: the client broke the protocol.
    ProtocolError,
    /// 1008: a limit or policy (slow consumer, too many connections).
    Policy,
    /// 1012: the node is draining for a restart.
    Restart,
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
