//! STOMP over WebSocket at `GET /ws`: RFC 6455, server side, written for this broker.
//!
//! The handshake (`ws/handshake.rs`) is read and answered by hand. It negotiates the STOMP
//! subprotocols `v12.stomp`, `v11.stomp` and `v10.stomp` (the best one offered is echoed; a
//! handshake offering none is accepted, as stomp.py sends none). It is where browser-facing
//! checks happen, before any STOMP byte: the request itself (a GET in HTTP/1.1 with one `Host`,
//! of 16 KiB at most: 400, 431), the path (404), the upgrade headers (400; 426 for a WebSocket
//! version other than 13), the node's and the client address's connection limits (503, 429), the `Origin`
//! allowlist (403), and the token a browser cannot put in a STOMP header (`Authorization:
//! Bearer`, or `?token=` on the URL), which is handed to the session to check at CONNECT. With
//! TLS configured the handshake runs inside the TLS stream (wss). The whole of it, TLS included,
//! must finish within `connect-timeout` of the accept, so a client that opens a connection and
//! sends nothing (or sends its request a byte at a time) holds a place only that long. Bytes the
//! client sends right behind its request are kept: they are its first WebSocket frames.
//!
//! No extension is negotiated: permessage-deflate is not offered, and an offer of it is ignored
//! (compression would let a small message cost much memory, and would leak secrets through
//! lengths, as in CRIME/BREACH).
//!
//! Reading ([`WsSource`], the framing in `ws/codec.rs`): STOMP bytes may arrive in text or binary
//! messages, several frames per message or one frame over several messages. Each payload is
//! appended to the reader's STOMP buffer and unmasked there, so the decoder sees one byte
//! stream. Large payloads are read from the socket straight into that buffer. A frame or
//! message over `max-frame-size` (plus 64 KiB of slack, so a frame just over the limit reaches
//! the STOMP codec and gets a precise ERROR) is refused from its header, before its payload is
//! buffered (close code 1009). Text messages must be UTF-8 (else close code 1007). A client that
//! breaks RFC 6455 (unmasked frames, RSV bits, unknown opcodes, oversized or fragmented control
//! frames, a continuation of nothing, a new message inside a fragmented one, a malformed close
//! frame) gets an ERROR and close code 1002. Pings are answered by the session with a pong,
//! pongs prove the client alive. A valid close frame ends the session, which answers with the
//! client's own code (RFC 6455 §5.5.1); one with a 1-byte payload or a code no endpoint may send
//! (§7.4) fails with 1002, one whose reason is not UTF-8 with 1007. The session's other closes
//! carry a code and a reason that say why ([`CloseReason`]). The socket is read `ws-read-buffer` bytes at most at a time into
//! a buffer that starts small, grows while data keeps coming and is released when it stops.
//!
//! Writing ([`WsSink`]): each outgoing STOMP frame is one WebSocket frame, text, or binary when
//! its body is not UTF-8 (decided once per message, when the hub prepares it). The frame header,
//! the session's head and the shared tail are appended to one output buffer, written once per
//! batch, or as soon as `ws-write-buffer` bytes are queued. The session owns the writing half
//! of the socket: a plain TCP stream is split with `into_split`, so nothing is locked per write;
//! a TLS stream with `tokio::io::split`.

mod codec;
mod handshake;

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;

use crate::metrics::{RefusalReason, Transport};
use crate::node::Node;
use crate::session::{self, Accepted, CloseReason, FrameSink};
use crate::transport::accept::{self, Incoming, Protocol};
use crate::transport::sockjs::websocket::{SockJsSink, SockJsSource};
use crate::transport::sockjs::{self, SockJs};
use crate::transport::writer::Writer;
use crate::transport::{spawn_reader, ByteSource, ReadError, ReadLimits, Received};
use codec::{DecodeError, Decoder, Event};
use handshake::Outcome;

/// The path clients connect to.
pub const PATH: &str = "/ws";

/// Bytes a WebSocket message may exceed max-frame-size by before it is refused unread.
const WS_SLACK: usize = 64 * 1024;

/// STOMP subprotocols, best first.
const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// The read buffer of a quiet connection, and the first read after a pause: most frames fit. A
/// read that fills it is followed by reads of `ws-read-buffer`; a larger buffer is swapped for
/// one this small when a read finds nothing to read.
const IDLE_READ: usize = 512;

/// Payload bytes still to come past which a frame's payload is read from the socket straight
/// into the STOMP buffer.
const DIRECT_READ: usize = 4096;

/// Accepts WebSocket (and SockJS) clients until the node starts draining.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    let sockjs = SockJs::start(node.config().sockjs.clone());
    accept::serve(listener, node, WebSocket { sockjs }).await
}

/// STOMP over WebSocket: the handshake, then frames inside WebSocket messages; or SockJS's
/// HTTP transports, for requests under the path that ask for no upgrade.
#[derive(Clone, Debug)]
pub(crate) struct WebSocket {
    pub(crate) sockjs: Arc<SockJs>,
}

impl Protocol for WebSocket {
    const TRANSPORT: Transport = Transport::Ws;

    /// The WebSocket handshake on a plain or TLS stream, then the session over the stream's two
    /// halves (`split`).
    async fn serve<S, R, W>(self, mut stream: S, split: impl FnOnce(S) -> (R, W) + Send, incoming: Incoming)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + Sync,
    {
        let Incoming { peer, node, admitted, deadline } = incoming;
        // Boxed: the handshake's state (its header table among it) is large and needed only now;
        // inline, it would size the connection's future, kept for the connection's whole life.
        let checks = Box::pin(handshake::handshake(
            &mut stream,
            admitted.as_ref().err(),
            |origin| node.auth().origin_allowed(origin),
            self.sockjs.tuning(),
        ));
        let (bearer, rest, framed) = match tokio::time::timeout_at(deadline, checks).await {
            Ok(Ok(Outcome::Upgraded { bearer, rest, sockjs })) => (bearer, rest, sockjs),
            Ok(Ok(Outcome::Http { request })) => {
                // A refused admission was answered above.
                let Ok(permit) = admitted else { return };
                let endpoint = sockjs::Endpoint { node, sockjs: self.sockjs, peer, _permit: permit };
                Box::pin(sockjs::serve_http(stream, request, endpoint)).await;
                return;
            }
            // A refused admission was counted when it was decided.
            Ok(Ok(Outcome::Refused(rejection))) => {
                let reason =
                    if rejection.status == 403 { RefusalReason::Origin } else { RefusalReason::BadHandshake };
                if admitted.is_ok() {
                    accept::refused(&node, peer, reason, &rejection);
                }
                return;
            }
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "WebSocket handshake failed");
                return;
            }
            Err(_) => {
                if admitted.is_ok() {
                    accept::refused(&node, peer, RefusalReason::Timeout, &"WebSocket handshake timed out");
                }
                return;
            }
        };
        // A refused admission was answered with 503 or 429 above.
        let Ok(permit) = admitted else { return };
        let config = node.config();
        let (read, write) = split(stream);
        let limit = config.limits.max_frame_size.saturating_add(WS_SLACK);
        let source = WsSource::new(read, rest, limit, config.ws.read_buffer);
        let sink = WsSink::new(write, config.ws.write_buffer).with_write_timeout(config.limits.write_timeout);
        let (negotiated_tx, negotiated_rx) = tokio::sync::oneshot::channel();
        if framed {
            // Boxed: laid out inline, SockJS's larger sink would size every WebSocket
            // connection's future.
            let high_water = config.ws.write_buffer;
            Box::pin(async move {
                let Ok(sink) = SockJsSink::open(sink, high_water).await else { return };
                let inbound = spawn_reader(SockJsSource::new(source), ReadLimits::of(&node), negotiated_rx);
                let accepted = Accepted { transport: Transport::Sockjs, peer, permit, deadline, bearer };
                session::run(node, sink, inbound, negotiated_tx, accepted).await;
            })
            .await;
        } else {
            let inbound = spawn_reader(source, ReadLimits::of(&node), negotiated_rx);
            let accepted = Accepted { transport: Transport::Ws, peer, permit, deadline, bearer };
            session::run(node, sink, inbound, negotiated_tx, accepted).await;
        }
    }
}

/// The reading half of a WebSocket connection: client frames in, STOMP bytes out.
pub struct WsSource<R> {
    reader: R,
    /// Bytes read and not decoded yet (at most part of a frame header, or a control frame,
    /// while the reader waits).
    raw: BytesMut,
    decoder: Decoder,
    /// Most bytes read at once (`ws-read-buffer`).
    chunk: usize,
    /// The last read filled the room it had: more is probably waiting.
    busy: bool,
}

impl<R> WsSource<R> {
    /// `rest`: bytes that came with the handshake; `limit`: the largest message accepted.
    pub fn new(reader: R, rest: BytesMut, limit: usize, chunk: usize) -> WsSource<R> {
        WsSource { reader, raw: rest, decoder: Decoder::new(limit), chunk: chunk.max(1), busy: false }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> WsSource<R> {
    /// Reads more into `raw`: a little when the client was quiet, a chunk while data keeps
    /// coming. Returns the bytes read (0: the client closed).
    async fn fill(&mut self) -> io::Result<usize> {
        let room = if self.busy { self.chunk } else { IDLE_READ.min(self.chunk) };
        self.raw.reserve(room);
        let mut spare = self.raw.capacity() - self.raw.len();
        let n = match self.reader.read_buf(&mut self.raw).now_or_never() {
            Some(read) => read?,
            None => {
                // Nothing to read: the client went quiet. Wait with a small buffer, not with the
                // one a burst grew.
                if self.raw.is_empty() && self.raw.try_reclaim(IDLE_READ + 1) {
                    self.raw = BytesMut::with_capacity(IDLE_READ.min(self.chunk));
                    spare = self.raw.capacity();
                }
                self.reader.read_buf(&mut self.raw).await?
            }
        };
        self.busy = n == spare;
        Ok(n)
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> ByteSource for WsSource<R> {
    async fn read(&mut self, buf: &mut BytesMut) -> Result<Received, ReadError> {
        loop {
            match self.decoder.decode(&mut self.raw, buf)? {
                Some(Event::Data) => return Ok(Received::Data),
                Some(Event::Ping(payload)) => return Ok(Received::Ping(payload)),
                Some(Event::Pong) => return Ok(Received::Activity),
                Some(Event::Close(code)) => return Ok(Received::Close(code)),
                None => {}
            }
            let direct = self.decoder.data_remaining().filter(|&r| r >= DIRECT_READ && self.raw.is_empty());
            if let Some(remaining) = direct {
                // The middle of a large payload: read it where it goes, unmask it there.
                let start = buf.len();
                buf.reserve(remaining.min(self.chunk.max(DIRECT_READ)));
                let n = (&mut self.reader).take(remaining as u64).read_buf(buf).await?;
                if n == 0 {
                    return Ok(Received::Eof);
                }
                self.decoder.accept(&mut buf[start..])?;
                return Ok(Received::Data);
            }
            if self.fill().await? == 0 {
                return Ok(Received::Eof);
            }
        }
    }
}

impl From<DecodeError> for ReadError {
    fn from(error: DecodeError) -> ReadError {
        match error {
            DecodeError::Violation(why) => ReadError::WebSocket { why, close: CloseReason::WebSocketError },
            DecodeError::InvalidUtf8(why) => ReadError::WebSocket { why, close: CloseReason::InvalidUtf8 },
            DecodeError::TooLarge(why) => ReadError::TooLarge(why),
        }
    }
}

/// The writing half of a WebSocket connection: one WebSocket frame per STOMP frame, written
/// once per batch.
pub struct WsSink<W> {
    out: Writer<W>,
}

impl<W: AsyncWrite + Unpin + Send> WsSink<W> {
    /// `high_water`: queued bytes past which frames are written before the batch ends.
    pub fn new(writer: W, high_water: usize) -> WsSink<W> {
        WsSink { out: Writer::new(writer, high_water) }
    }

    /// See [`Writer::with_write_timeout`].
    pub fn with_write_timeout(self, timeout: Option<std::time::Duration>) -> WsSink<W> {
        WsSink { out: self.out.with_write_timeout(timeout) }
    }
}

impl<W: AsyncWrite + Unpin + Send> FrameSink for WsSink<W> {
    fn feed(&mut self, head: &[u8], tail: &[u8], text: bool) -> bool {
        let opcode = if text { codec::TEXT } else { codec::BINARY };
        let (header, size) = codec::header(opcode, head.len() + tail.len());
        self.out.queue([&header[..size], head, tail])
    }

    fn reserve(&mut self, bytes: usize) {
        self.out.reserve(bytes);
    }

    async fn heartbeat(&mut self) -> io::Result<()> {
        codec::put_frame(self.out.buffer(), codec::TEXT, b"\n");
        Ok(())
    }

    async fn pong(&mut self, payload: &[u8]) -> io::Result<()> {
        codec::put_frame(self.out.buffer(), codec::PONG, payload);
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.out.flush().await
    }

    async fn close(&mut self, reason: CloseReason) -> io::Result<()> {
        codec::put_close(self.out.buffer(), reason.code(), reason.text());
        self.out.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a connection's task holds for its whole life beyond the session's own state: the
    /// handshake's and TLS's states are boxed while they run, not laid out in every connection.
    #[tokio::test]
    async fn a_connection_future_is_little_more_than_its_session() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client =
            tokio::net::TcpStream::connect(listener.local_addr().expect("address")).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let node = crate::session::tests::node();
        let sockjs = SockJs::start(node.config().sockjs.clone());
        let size = std::mem::size_of_val(&accept::connection(stream, peer, node, WebSocket { sockjs }));
        assert!(size <= 3 * 1024, "a WebSocket connection's future is {size} bytes");
        drop(client);
    }

    /// A masked client frame.
    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        codec::put_header(&mut out, opcode, payload.len());
        out[1] |= 0x80;
        let mask = [9, 8, 7, 6];
        out.extend_from_slice(&mask);
        let start = out.len();
        out.extend_from_slice(payload);
        codec::unmask(&mut out[start..], mask, 0);
        out.to_vec()
    }

    #[tokio::test]
    async fn the_source_reads_handshake_leftovers_then_the_socket() {
        let (mut client, server) = tokio::io::duplex(64);
        let rest = BytesMut::from(&client_frame(codec::TEXT, b"CONNECT\n")[..]);
        let mut source = WsSource::new(server, rest, 1 << 20, 16);
        let mut buf = BytesMut::new();
        assert!(matches!(source.read(&mut buf).await.unwrap(), Received::Data));
        assert_eq!(&buf[..], b"CONNECT\n");
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = client_frame(codec::BINARY, &big);
        wire.extend(client_frame(codec::PING, b"p"));
        wire.extend(client_frame(codec::PONG, b""));
        wire.extend(client_frame(codec::CLOSE, b"\x0b\xb8bye"));
        let writer = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut client, &wire).await.unwrap();
            client
        });
        buf.clear();
        let mut reads = 0;
        while buf.len() < big.len() {
            assert!(matches!(source.read(&mut buf).await.unwrap(), Received::Data));
            reads += 1;
        }
        assert_eq!(&buf[..], &big[..]);
        assert!(reads > 1, "read in pieces");
        assert!(matches!(source.read(&mut buf).await.unwrap(), Received::Ping(p) if &p[..] == b"p"));
        assert!(matches!(source.read(&mut buf).await.unwrap(), Received::Activity));
        assert!(matches!(source.read(&mut buf).await.unwrap(), Received::Close(Some(3000))));
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn the_read_buffer_grows_for_a_burst_and_shrinks_when_the_client_goes_quiet() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut source = WsSource::new(server, BytesMut::new(), 1 << 20, 4096);
        let frame = client_frame(codec::TEXT, &[b'x'; 100]);
        let burst: Vec<u8> = (0..100).flat_map(|_| frame.clone()).collect();
        tokio::io::AsyncWriteExt::write_all(&mut client, &burst).await.unwrap();
        let mut buf = BytesMut::new();
        let mut grew = false;
        while buf.len() < 100 * 100 {
            assert!(matches!(source.read(&mut buf).await.unwrap(), Received::Data));
            grew |= source.raw.capacity() > IDLE_READ;
        }
        assert!(grew, "reads of ws-read-buffer during the burst");
        assert!(source.read(&mut buf).now_or_never().is_none(), "nothing more to read");
        assert!(source.raw.capacity() <= IDLE_READ, "{} bytes held while quiet", source.raw.capacity());
    }

    #[tokio::test]
    async fn violations_and_oversized_messages_are_errors_the_reader_loop_knows() {
        let (_client, server) = tokio::io::duplex(64);
        let mut unmasked = client_frame(codec::TEXT, b"x");
        unmasked[1] &= 0x7f;
        let mut source = WsSource::new(server, BytesMut::from(&unmasked[..]), 1 << 20, 4096);
        let error = source.read(&mut BytesMut::new()).await.unwrap_err();
        assert!(
            matches!(error, ReadError::WebSocket { close: CloseReason::WebSocketError, .. }),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "WebSocket protocol error: Received an unmasked frame from client");

        let (_client, server) = tokio::io::duplex(64);
        let not_utf8 = client_frame(codec::TEXT, b"SEND\xff");
        let mut source = WsSource::new(server, BytesMut::from(&not_utf8[..]), 1 << 20, 4096);
        let error = source.read(&mut BytesMut::new()).await.unwrap_err();
        assert!(matches!(error, ReadError::WebSocket { close: CloseReason::InvalidUtf8, .. }), "{error:?}");
        assert_eq!(error.to_string(), "WebSocket protocol error: Invalid UTF-8 in a text message");

        let (_client, server) = tokio::io::duplex(64);
        let mut header = client_frame(codec::BINARY, &[0; 200]);
        header.truncate(8);
        let mut source = WsSource::new(server, BytesMut::from(&header[..]), 100, 4096);
        let error = source.read(&mut BytesMut::new()).await.unwrap_err();
        assert!(matches!(error, ReadError::TooLarge(_)), "{error:?}");
        assert!(error.to_string().starts_with("WebSocket message refused: "), "{error}");
    }

    #[tokio::test]
    async fn the_sink_writes_frames_and_closes_with_a_code() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut sink = WsSink::new(server, 64 * 1024);
        sink.feed(b"MESSAGE\n", b"\nhi\0", true);
        sink.feed(b"MESSAGE\n", b"\n\xff\0", false);
        sink.heartbeat().await.unwrap();
        sink.pong(b"p").await.unwrap();
        sink.flush().await.unwrap();
        sink.close(CloseReason::PermissionDenied).await.unwrap();
        drop(sink);
        let mut written = Vec::new();
        let mut client = client;
        client.read_to_end(&mut written).await.unwrap();
        let mut expected = b"\x81\x0cMESSAGE\n\nhi\0\x82\x0bMESSAGE\n\n\xff\0\x81\x01\n\x8a\x01p".to_vec();
        expected.extend_from_slice(b"\x88\x13\x03\xf0permission denied");
        assert_eq!(written, expected);
    }

    /// Every close the node sends has a code a client may receive (RFC 6455 §7.4) and a reason
    /// that fits a close frame uncut.
    #[test]
    fn close_reasons_are_valid_close_frames() {
        let reasons = [
            CloseReason::Normal,
            CloseReason::StompError,
            CloseReason::WebSocketError,
            CloseReason::InvalidUtf8,
            CloseReason::AuthenticationFailed,
            CloseReason::TokenExpired,
            CloseReason::PermissionDenied,
            CloseReason::SlowConsumer,
            CloseReason::Limit,
            CloseReason::TooBig,
            CloseReason::Restart,
        ];
        for reason in reasons {
            assert!(codec::close_code_allowed(reason.code()), "{reason:?}");
            assert!(reason.text().len() <= codec::MAX_CONTROL_PAYLOAD - 2, "{reason:?}");
        }
    }

    /// A client's close is answered with its own code, and no reason.
    #[tokio::test]
    async fn the_sink_echoes_a_close_code() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut sink = WsSink::new(server, 64 * 1024);
        sink.close(CloseReason::Echo(4001)).await.unwrap();
        drop(sink);
        let mut written = Vec::new();
        client.read_to_end(&mut written).await.unwrap();
        assert_eq!(written, b"\x88\x02\x0f\xa1");
    }
}
