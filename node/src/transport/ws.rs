//! STOMP over WebSocket at `GET /ws` (tokio-tungstenite).
//!
//! The handshake negotiates the STOMP subprotocols `v12.stomp`, `v11.stomp` and `v10.stomp`
//! (the best one offered is echoed; a handshake offering none is accepted, as stomp.py sends
//! none). STOMP bytes may arrive in text or binary messages, several frames per message or one
//! frame over several messages: the reader appends every payload to one buffer and decodes from
//! there. Each outgoing frame is one message: text, or binary when its body is not UTF-8.
//!
//! The handshake is where browser-facing checks happen, before any STOMP byte: the path, the
//! node's and the client address's connection limits (503, 429), the `Origin` allowlist (403),
//! and the token a browser cannot put in a STOMP header (`Authorization: Bearer`, or
//! `?token=` on the URL), which is handed to the session to check at CONNECT. With TLS
//! configured the handshake runs inside the TLS stream (wss). The whole of it, TLS included,
//! must finish within `connect-timeout` of the accept, so a client that opens a connection and
//! sends nothing (or sends its request a byte at a time) holds a place only that long.
//! permessage-deflate is not offered: tungstenite does not implement it, and an offer of it is
//! ignored (compression would let a small message cost much memory, and would leak secrets
//! through lengths, as in CRIME/BREACH).

// tungstenite's handshake callback returns its own `Result<Response, ErrorResponse>`; the large
// error type is its API, not ours.
#![allow(clippy::result_large_err)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::auth;
use crate::session::{self, Accepted, Context, Permit, Refusal};
use crate::transport::{spawn_reader, ByteSource, CloseReason, FrameSink, Read, WebSocketViolation};

/// The path clients connect to.
pub const PATH: &str = "/ws";

/// Bytes a WebSocket message may exceed max-frame-size by before tungstenite refuses it.
const WS_SLACK: usize = 64 * 1024;

/// STOMP subprotocols, best first.
const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// Accepts WebSocket clients until the node starts draining.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    let mut draining = ctx.draining();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = draining.wait_for(|d| *d) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move { connection(stream, peer, ctx).await });
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// tungstenite's settings from ours. Its defaults (128 KiB read buffer per connection, 64 MiB
/// messages) are wrong for a broker holding many mostly idle connections.
pub fn websocket_config(ctx: &Context) -> WebSocketConfig {
    let config = ctx.config();
    WebSocketConfig::default()
        .read_buffer_size(config.ws.read_buffer)
        .write_buffer_size(config.ws.write_buffer)
        .max_write_buffer_size(config.ws.write_buffer.saturating_mul(2).max(config.limits.max_frame_size * 2))
        // A little above our frame limit, so a frame just over it reaches the codec and gets a
        // precise ERROR; anything larger is refused by tungstenite before it is buffered.
        .max_message_size(Some(config.limits.max_frame_size + WS_SLACK))
        .max_frame_size(Some(config.limits.max_frame_size + WS_SLACK))
}

/// Picks the best STOMP subprotocol a client offered.
fn choose_subprotocol(request: &Request) -> Option<&'static str> {
    let offered: Vec<&str> = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    SUBPROTOCOLS.into_iter().find(|p| offered.contains(p))
}

fn reject(status: StatusCode, why: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why.to_owned()));
    *response.status_mut() = status;
    response
}

async fn connection(stream: TcpStream, peer: SocketAddr, ctx: Arc<Context>) {
    let deadline = Instant::now() + ctx.config().limits.connect_timeout;
    let _ = stream.set_nodelay(true);
    // Taken before the handshakes, so a client that never finishes them still counts.
    let admitted = ctx.admit(peer);
    match ctx.tls().cloned() {
        None => handshake(stream, peer, ctx, admitted, deadline).await,
        Some(tls) => match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
            Ok(Ok(stream)) => handshake(stream, peer, ctx, admitted, deadline).await,
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
    }
}

/// The WebSocket handshake on a plain or TLS stream, then the session.
async fn handshake<S>(
    stream: S,
    peer: SocketAddr,
    ctx: Arc<Context>,
    admitted: Result<Permit, Refusal>,
    deadline: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let refusal = admitted.as_ref().err().cloned();
    let (bearer_tx, bearer_rx) = tokio::sync::oneshot::channel::<Option<String>>();
    let checks = ctx.clone();
    let callback = move |request: &Request, mut response: Response| {
        if request.uri().path() != PATH {
            return Err(reject(StatusCode::NOT_FOUND, "not found: STOMP over WebSocket is at /ws"));
        }
        match refusal {
            Some(refusal @ Refusal::NodeFull(_)) => {
                return Err(reject(StatusCode::SERVICE_UNAVAILABLE, &refusal.to_string()));
            }
            Some(refusal @ Refusal::AddressFull(..)) => {
                return Err(reject(StatusCode::TOO_MANY_REQUESTS, &refusal.to_string()));
            }
            None => {}
        }
        let origin = request.headers().get("origin").map(|v| v.to_str().unwrap_or("\u{0}"));
        if !checks.auth().origin_allowed(origin) {
            return Err(reject(StatusCode::FORBIDDEN, "origin not allowed (ws-origins)"));
        }
        let bearer = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(auth::bearer)
            .map(str::to_owned)
            .or_else(|| request.uri().query().and_then(auth::query_token));
        let _ = bearer_tx.send(bearer);
        if let Some(protocol) = choose_subprotocol(request) {
            response.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
        }
        Ok(response)
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(websocket_config(&ctx)));
    let socket = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "WebSocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "WebSocket handshake timed out");
            return;
        }
    };
    let Ok(permit) = admitted else { return };
    let bearer = bearer_rx.await.ok().flatten();
    let (sink, source) = socket.split();
    let (negotiated_tx, negotiated_rx) = tokio::sync::oneshot::channel();
    let inbound = spawn_reader(WsSource(source), ctx.read_limits(), negotiated_rx);
    let accepted = Accepted { transport: "ws", peer, permit, deadline, bearer };
    session::run(ctx, WsSink { sink }, inbound, negotiated_tx, accepted).await;
}

/// The reading half of a WebSocket connection.
pub struct WsSource<S>(pub SplitStream<WebSocketStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteSource for WsSource<S> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<Read> {
        match self.0.next().await {
            Some(Ok(Message::Text(text))) => {
                buf.extend_from_slice(text.as_bytes());
                Ok(Read::Data)
            }
            Some(Ok(Message::Binary(bytes))) => {
                buf.extend_from_slice(&bytes);
                Ok(Read::Data)
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(Read::Activity),
            Some(Ok(Message::Close(_))) | None => Ok(Read::Eof),
            Some(Err(WsError::Capacity(error))) => Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("WebSocket message refused: {error} (max-frame-size)"),
            )),
            Some(Err(WsError::Protocol(error))) => {
                Err(io::Error::new(io::ErrorKind::InvalidData, WebSocketViolation(error.to_string())))
            }
            Some(Err(error)) => Err(io::Error::other(error)),
        }
    }
}

/// The writing half of a WebSocket connection: one message per frame, flushed per batch.
pub struct WsSink<S> {
    pub sink: SplitSink<WebSocketStream<S>, Message>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> FrameSink for WsSink<S> {
    async fn feed(&mut self, head: &[u8], tail: &[u8], text: bool) -> io::Result<()> {
        let mut frame = BytesMut::with_capacity(head.len() + tail.len());
        frame.extend_from_slice(head);
        frame.extend_from_slice(tail);
        let frame = frame.freeze();
        let message = if text {
            match Utf8Bytes::try_from(frame) {
                Ok(text) => Message::Text(text),
                Err(_) => return Err(io::Error::other("text frame is not UTF-8")),
            }
        } else {
            Message::Binary(frame)
        };
        self.sink.feed(message).await.map_err(io::Error::other)
    }

    async fn heartbeat(&mut self) -> io::Result<()> {
        self.sink.feed(Message::Text(Utf8Bytes::from_static("\n"))).await.map_err(io::Error::other)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.sink.flush().await.map_err(io::Error::other)
    }

    async fn close(&mut self, reason: CloseReason) -> io::Result<()> {
        let (code, text) = match reason {
            CloseReason::Normal => (CloseCode::Normal, ""),
            CloseReason::ProtocolError => (CloseCode::Protocol, "STOMP protocol error"),
            CloseReason::Policy => (CloseCode::Policy, "limit exceeded"),
            CloseReason::Restart => (CloseCode::Restart, "server restarting"),
        };
        let frame = CloseFrame { code, reason: Utf8Bytes::from_static(text) };
        self.sink.send(Message::Close(Some(frame))).await.map_err(io::Error::other)?;
        let _ = self.sink.close().await;
        Ok(())
    }
}
