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
//! Transports depend on sessions, never the reverse: what passes between the two (the sink trait,
//! the reader's events, the negotiated parameters) is [`crate::session::link`].
//!
//! Layout: `mod.rs` (the reader loop and the byte-source trait), `accept.rs` (the one accept
//! loop: admission, TLS), `writer.rs` (the buffered writer both sinks use), `tcp.rs`, `ws.rs`
//! (with `ws/handshake.rs` and `ws/codec.rs`), `sockjs/` (SockJS at the WebSocket path, beside
//! the WebSocket handshake), `tls.rs`.

mod accept;
pub(crate) mod sockjs;
pub mod tcp;
pub mod tls;
mod writer;
pub mod ws;

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_channel::mpsc;
use futures_util::SinkExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::node::Node;
use crate::session::link::{inbound_channel, CloseReason, Inbound, InboundReceiver, Negotiated};
use crate::stomp::{Command, Decoded, Decoder, Limits};

/// What one read from a transport produced.
#[derive(Debug)]
pub enum Received {
    /// STOMP bytes were appended to the buffer.
    Data,
    /// Transport-level traffic (a WebSocket pong) that proves the peer alive.
    Activity,
    /// A WebSocket ping, to be answered with a pong carrying its payload.
    Ping(Bytes),
    /// A valid WebSocket close frame, with its status code if it had one.
    Close(Option<u16>),
    Eof,
}

/// The reading half of a client connection.
pub trait ByteSource: Send + 'static {
    fn read(&mut self, buf: &mut BytesMut) -> impl Future<Output = Result<Received, ReadError>> + Send;
}

/// Why a [`ByteSource`] stopped reading.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The transport refused a message over its size limit; says which.
    #[error("{0}")]
    TooLarge(String),
    /// The client broke the WebSocket protocol (an unmasked frame, a bad opcode, an oversized
    /// control frame, a text message not UTF-8); says how, and how the connection closes.
    #[error("WebSocket protocol error: {why}")]
    WebSocket { why: String, close: CloseReason },
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What a reader enforces: the codec's limits and the frame rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    pub codec: Limits,
    /// Frames per second on average; 0 = unlimited.
    pub frame_rate: u32,
    /// Frames at once above the rate.
    pub frame_burst: u32,
}

impl ReadLimits {
    /// The limits the node's configuration sets.
    pub fn of(node: &Node) -> ReadLimits {
        let l = &node.config().limits;
        ReadLimits {
            codec: node.codec_limits(),
            frame_rate: l.max_frame_rate,
            frame_burst: l.frame_rate_burst,
        }
    }
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
    let (sender, receiver) = inbound_channel();
    let (events, mut stop) = (sender.events, sender.stopped);
    tokio::spawn(async move {
        let mut source = source;
        read_loop(&mut source, limits, negotiated, events, &mut stop).await;
        linger(&mut source, &mut stop).await;
    });
    receiver
}

/// How long a connection's socket stays open, reading and discarding, after its session ended.
const LINGER: Duration = Duration::from_secs(1);

/// After the reader stopped (the client broke a rule, went quiet, or its session ended): reads
/// and discards whatever the client still sends until it closes, or until the session has ended
/// and `LINGER` has passed. A socket closed with unread input is reset, and a reset throws
/// away what the session wrote last (its ERROR) before the client reads it, so a client still
/// sending (a flood refused for its rate) would never learn why it was cut off.
async fn linger<S: ByteSource>(source: &mut S, stop: &mut oneshot::Receiver<()>) {
    let mut discard = BytesMut::new();
    // The session's end is its receiver dropped (nothing is ever sent); `read_loop` may have
    // seen it already, and a finished receiver must not be polled again.
    let mut ended = stop.try_recv().is_err_and(|e| e == oneshot::error::TryRecvError::Closed);
    let deadline = tokio::time::sleep(if ended { LINGER } else { Duration::MAX });
    tokio::pin!(deadline);
    loop {
        discard.clear();
        tokio::select! {
            biased;
            _ = &mut *stop, if !ended => {
                ended = true;
                deadline.as_mut().reset(Instant::now() + LINGER);
            }
            _ = &mut deadline => return,
            read = source.read(&mut discard) => match read {
                Ok(Received::Data | Received::Activity | Received::Ping(_)) => {}
                Ok(Received::Close(_) | Received::Eof) | Err(_) => return,
            },
        }
    }
}

async fn read_loop<S: ByteSource>(
    source: &mut S,
    limits: ReadLimits,
    negotiated: oneshot::Receiver<Negotiated>,
    mut tx: mpsc::Sender<Inbound>,
    stop: &mut oneshot::Receiver<()>,
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
            // The session has ended: let go of the socket now (after `linger`), not when the
            // client next writes.
            _ = &mut *stop => return,
            read = read => read,
        };
        let Some(read) = read else {
            let _ = tx.send(Inbound::TimedOut).await;
            return;
        };
        match read {
            Ok(Received::Data) => {}
            Ok(Received::Activity) => {
                if !within_rate() {
                    let _ = tx.send(Inbound::RateLimited).await;
                    return;
                }
            }
            Ok(Received::Ping(payload)) => {
                if !within_rate() {
                    let _ = tx.send(Inbound::RateLimited).await;
                    return;
                }
                if tx.send(Inbound::Ping(payload)).await.is_err() {
                    return;
                }
            }
            Ok(Received::Close(code)) => {
                let _ = tx.send(Inbound::CloseFrame(code)).await;
                return;
            }
            Ok(Received::Eof) => {
                let _ = tx.send(Inbound::Closed(None)).await;
                return;
            }
            Err(error @ ReadError::TooLarge(_)) => {
                let _ = tx.send(Inbound::TooLarge(error.to_string())).await;
                return;
            }
            Err(error @ ReadError::WebSocket { close, .. }) => {
                let _ = tx.send(Inbound::WebSocket { why: error.to_string(), close }).await;
                return;
            }
            Err(ReadError::Io(error)) => {
                let _ = tx.send(Inbound::Closed(Some(error.to_string()))).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

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

    /// The session wrote its last frame and ended while the client was still sending: the
    /// client must still get that frame, so the socket is not closed (and reset) under unread
    /// input at once; it is let go after `LINGER`.
    #[tokio::test]
    async fn a_connection_lingers_after_its_session_so_the_last_frame_is_not_reset_away() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("address")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let (read, mut write) = server.into_split();
        let (_negotiated_tx, negotiated) = oneshot::channel();
        let limits = ReadLimits { codec: Limits::default(), frame_rate: 0, frame_burst: 1 };
        let inbound = spawn_reader(tcp::TcpSource::new(read), limits, negotiated);

        write.write_all(b"ERROR\nmessage:bye\n\n\0").await.expect("last frame");
        write.shutdown().await.expect("shutdown");
        drop(write);
        drop(inbound);
        let started = Instant::now();
        while started.elapsed() < LINGER / 2 {
            client.write_all(&[b'\n'; 1024]).await.expect("the server still takes what the client sends");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut last = Vec::new();
        client.read_to_end(&mut last).await.expect("the last frame, then the end of the stream");
        assert_eq!(last, b"ERROR\nmessage:bye\n\n\0");

        let mut released = false;
        while started.elapsed() < LINGER * 5 {
            if client.write_all(&[b'\n'; 1024]).await.is_err() {
                released = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(released, "the server let go of the socket after lingering");
        assert!(started.elapsed() >= LINGER, "not before LINGER: {:?}", started.elapsed());
    }
}
