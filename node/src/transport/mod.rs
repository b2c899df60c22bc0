//! Transports: the WebSocket and plain-TCP listeners that feed sessions.
//!
//! Each accepted connection is split in two. A reader task turns bytes into STOMP frames with the
//! codec and passes them to the session over a small bounded channel (so a client that floods us
//! is slowed by TCP back-pressure, not buffered). The session task owns the writing half, a
//! [`FrameSink`], which batches frames and flushes once per batch.
//!
//! Layout: `mod.rs` (the reader loop and the sink trait), `tcp.rs`, `ws.rs`.

pub mod tcp;
pub mod ws;

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{mpsc, oneshot};

use crate::stomp::{Command, Decoded, Decoder, Frame, Limits, ProtocolError, Version};

/// What the reader task tells its session.
#[derive(Debug)]
pub enum Inbound {
    Frame(Frame),
    /// The bytes were not valid STOMP; the reader has stopped.
    Invalid(ProtocolError),
    /// Nothing arrived within the negotiated heart-beat tolerance.
    TimedOut,
    /// The transport refused a message over its size limit; says which.
    TooLarge(String),
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
    /// Queues one whole STOMP frame, given as a head and a tail written back to back.
    fn feed(&mut self, head: &[u8], tail: &[u8], text: bool) -> impl Future<Output = io::Result<()>> + Send;
    /// Queues an EOL heart-beat.
    fn heartbeat(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Flushes and closes.
    fn close(&mut self, reason: CloseReason) -> impl Future<Output = io::Result<()>> + Send;
}

/// What one read from a transport produced.
pub enum Read {
    /// STOMP bytes were appended to the buffer.
    Data,
    /// Transport-level traffic (a WebSocket ping) that proves the peer alive.
    Activity,
    Eof,
}

/// The reading half of a client connection.
pub trait ByteSource: Send + 'static {
    fn read(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<Read>> + Send;
}

/// Frames queued from a reader to its session at most; past that the reader stops reading.
const INBOUND_CAPACITY: usize = 32;

/// Starts the reader task of a connection. Its first frame is decoded with CONNECT rules; after a
/// CONNECT or STOMP frame it waits for the session's [`Negotiated`] before decoding further.
pub fn spawn_reader<S: ByteSource>(
    source: S,
    limits: Limits,
    negotiated: oneshot::Receiver<Negotiated>,
) -> mpsc::Receiver<Inbound> {
    let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
    tokio::spawn(read_loop(source, limits, negotiated, tx));
    rx
}

async fn read_loop<S: ByteSource>(
    mut source: S,
    limits: Limits,
    negotiated: oneshot::Receiver<Negotiated>,
    tx: mpsc::Sender<Inbound>,
) {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut negotiated = Some(negotiated);
    let mut read_timeout = None;
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Decoded::Frame(frame))) => {
                    let connect = matches!(frame.command, Command::Connect | Command::Stomp);
                    if tx.send(Inbound::Frame(frame)).await.is_err() {
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
        let read = match read_timeout {
            Some(limit) => match tokio::time::timeout(limit, source.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => {
                    let _ = tx.send(Inbound::TimedOut).await;
                    return;
                }
            },
            None => source.read(&mut buf).await,
        };
        match read {
            Ok(Read::Data | Read::Activity) => {}
            Ok(Read::Eof) => {
                let _ = tx.send(Inbound::Closed(None)).await;
                return;
            }
            Err(error) if error.kind() == io::ErrorKind::FileTooLarge => {
                let _ = tx.send(Inbound::TooLarge(error.to_string())).await;
                return;
            }
            Err(error) => {
                let _ = tx.send(Inbound::Closed(Some(error.to_string()))).await;
                return;
            }
        }
    }
}
