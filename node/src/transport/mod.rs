//! Transports: the WebSocket and plain-TCP listeners that feed sessions.
//!
//! Each accepted connection is split in two. A reader task turns bytes into STOMP frames with the
//! codec and passes them to the session over a small bounded channel (so a client that floods us
//! is slowed by TCP back-pressure, not buffered). The session task owns the writing half, a
//! [`FrameSink`], which batches frames and flushes once per batch.
//!
//! The reader also enforces the per-connection frame rate (`max-frame-rate`, a token bucket of
//! `frame-rate-burst` frames): every frame, heart-beat and WebSocket ping takes a token, and a
//! client that runs out is reported to its session, which refuses it.
//!
//! WebSocket pings travel the same way: the reader decodes a ping, takes a token for it and hands
//! its payload to the session, which owns the writing half and answers with the pong.
//!
//! Layout: `mod.rs` (the reader loop and the sink trait), `writer.rs` (the buffered writer both
//! sinks use), `tcp.rs`, `ws.rs` (with `ws/handshake.rs` and `ws/codec.rs`), `tls.rs`.

pub mod tcp;
pub mod tls;
mod writer;
pub mod ws;

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_channel::mpsc;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::stomp::{Command, Decoded, Decoder, Frame, Limits, ProtocolError, Version};

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

/// What one read from a transport produced.
#[derive(Debug)]
pub enum Read {
    /// STOMP bytes were appended to the buffer.
    Data,
    /// Transport-level traffic (a WebSocket pong) that proves the peer alive.
    Activity,
    /// A WebSocket ping, to be answered with a pong carrying its payload.
    Ping(Bytes),
    Eof,
}

/// The reading half of a client connection.
pub trait ByteSource: Send + 'static {
    fn read(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<Read>> + Send;
}

/// An error a [`ByteSource`] returns when the client broke the WebSocket protocol.
#[derive(Debug, thiserror::Error)]
#[error("WebSocket protocol error: {0}")]
pub struct WebSocketViolation(pub String);

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

    /// A receiver with no reader task behind it, and the sender to feed it.
    #[cfg(test)]
    pub fn detached() -> (mpsc::Sender<Inbound>, InboundReceiver) {
        let (tx, frames) = mpsc::channel(INBOUND_CAPACITY);
        (tx, InboundReceiver { frames, _stop: oneshot::channel().0 })
    }
}

/// Frames queued from a reader to its session at most; past that the reader stops reading.
const INBOUND_CAPACITY: usize = 32;

/// What a reader enforces: the codec's limits and the frame rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    pub codec: Limits,
    /// Frames per second on average; 0 = unlimited.
    pub frame_rate: u32,
    /// Frames at once above the rate.
    pub frame_burst: u32,
}

/// A token bucket: `burst` tokens, refilled at `rate` per second.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(limits: &ReadLimits) -> Option<Bucket> {
        (limits.frame_rate > 0).then(|| Bucket {
            rate: f64::from(limits.frame_rate),
            burst: f64::from(limits.frame_burst.max(1)),
            tokens: f64::from(limits.frame_burst.max(1)),
            last: Instant::now(),
        })
    }

    /// Takes one token; false when none is left.
    fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        if self.tokens < 1.0 {
            let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
            self.last = now;
        }
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Starts the reader task of a connection. Its first frame is decoded with CONNECT rules; after a
/// CONNECT or STOMP frame it waits for the session's [`Negotiated`] before decoding further.
pub fn spawn_reader<S: ByteSource>(
    source: S,
    limits: ReadLimits,
    negotiated: oneshot::Receiver<Negotiated>,
) -> InboundReceiver {
    let (tx, frames) = mpsc::channel(INBOUND_CAPACITY);
    let (stop_tx, stop) = oneshot::channel();
    tokio::spawn(read_loop(source, limits, negotiated, tx, stop));
    InboundReceiver { frames, _stop: stop_tx }
}

async fn read_loop<S: ByteSource>(
    mut source: S,
    limits: ReadLimits,
    negotiated: oneshot::Receiver<Negotiated>,
    mut tx: mpsc::Sender<Inbound>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut decoder = Decoder::new(limits.codec);
    let mut bucket = Bucket::new(&limits);
    let mut within_rate = move || bucket.as_mut().is_none_or(Bucket::take);
    let mut buf = BytesMut::new();
    let mut negotiated = Some(negotiated);
    let mut read_timeout = None;
    loop {
        loop {
            let decoded = decoder.decode(&mut buf);
            if matches!(decoded, Ok(Some(_))) && !within_rate() {
                let _ = tx.send(Inbound::RateLimited).await;
                return;
            }
            match decoded {
                Ok(Some(Decoded::Frame(frame))) => {
                    let connect = matches!(frame.command, Command::Connect | Command::Stomp);
                    if tx.send(Inbound::Frame(Box::new(frame))).await.is_err() {
                        return;
                    }
                    if connect {
                        // Only the first CONNECT is negotiated; the session refuses a second.
                        if let Some(rx) = negotiated.take() {
                            let Ok(n) = rx.await else { return };
                            decoder.set_version(n.version);
                            read_timeout = n.read_timeout;
                        }
                    }
                }
                Ok(Some(Decoded::Heartbeat)) => {}
                Ok(None) => break,
                Err(error) => {
                    let _ = tx.send(Inbound::Invalid(error)).await;
                    return;
                }
            }
        }
        let read = async {
            match read_timeout {
                Some(limit) => tokio::time::timeout(limit, source.read(&mut buf)).await.ok(),
                None => Some(source.read(&mut buf).await),
            }
        };
        let read = tokio::select! {
            biased;
            // The session has ended: let go of the socket now, not when the client next writes.
            _ = &mut stop => return,
            read = read => read,
        };
        let Some(read) = read else {
            let _ = tx.send(Inbound::TimedOut).await;
            return;
        };
        match read {
            Ok(Read::Data) => {}
            Ok(Read::Activity) => {
                if !within_rate() {
                    let _ = tx.send(Inbound::RateLimited).await;
                    return;
                }
            }
            Ok(Read::Ping(payload)) => {
                if !within_rate() {
                    let _ = tx.send(Inbound::RateLimited).await;
                    return;
                }
                if tx.send(Inbound::Ping(payload)).await.is_err() {
                    return;
                }
            }
            Ok(Read::Eof) => {
                let _ = tx.send(Inbound::Closed(None)).await;
                return;
            }
            Err(error) if error.kind() == io::ErrorKind::FileTooLarge => {
                let _ = tx.send(Inbound::TooLarge(error.to_string())).await;
                return;
            }
            Err(error) if error.get_ref().is_some_and(|e| e.is::<WebSocketViolation>()) => {
                let _ = tx.send(Inbound::WebSocket(error.to_string())).await;
                return;
            }
            Err(error) => {
                let _ = tx.send(Inbound::Closed(Some(error.to_string()))).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let limits = ReadLimits { codec: Limits::default(), frame_rate: 10, frame_burst: 5 };
        let mut bucket = Bucket::new(&limits).unwrap();
        let start = bucket.last;
        assert!((0..5).all(|_| bucket.take_at(start)), "a burst of 5");
        assert!(!bucket.take_at(start), "then nothing");
        let later = start + Duration::from_millis(100);
        assert!(bucket.take_at(later), "one token per 100 ms");
        assert!(!bucket.take_at(later));
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.take_at(much_later)).count(), 5, "refills up to the burst only");
        let off = ReadLimits { frame_rate: 0, ..limits };
        assert!(Bucket::new(&off).is_none());
    }
}
