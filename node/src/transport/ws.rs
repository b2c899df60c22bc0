//! STOMP over WebSocket at `GET /ws` (tokio-tungstenite).
//!
//! The handshake negotiates the STOMP subprotocols `v12.stomp`, `v11.stomp` and `v10.stomp`
//! (the best one offered is echoed; a handshake offering none is accepted, as stomp.py sends
//! none). STOMP bytes may arrive in text or binary messages, several frames per message or one
//! frame over several messages: the reader appends every payload to one buffer and decodes from
//! there. Each outgoing frame is one message: text, or binary when its body is not UTF-8.

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
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::session::{self, Context};
use crate::transport::{spawn_reader, ByteSource, CloseReason, FrameSink, Read};

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
    let _ = stream.set_nodelay(true);
    let admitted = ctx.admit(peer);
    let full = admitted.is_none();
    let callback = move |request: &Request, mut response: Response| {
        if request.uri().path() != PATH {
            return Err(reject(StatusCode::NOT_FOUND, "not found: STOMP over WebSocket is at /ws"));
        }
        if full {
            return Err(reject(StatusCode::SERVICE_UNAVAILABLE, "too many connections"));
        }
        if let Some(protocol) = choose_subprotocol(request) {
            response.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
        }
        Ok(response)
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(websocket_config(&ctx)));
    let socket = match tokio::time::timeout(ctx.config().limits.connect_timeout, handshake).await {
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
    let Some(permit) = admitted else { return };
    let (sink, source) = socket.split();
    let (negotiated_tx, negotiated_rx) = tokio::sync::oneshot::channel();
    let inbound = spawn_reader(WsSource(source), ctx.codec_limits(), negotiated_rx);
    session::run(ctx, "ws", WsSink { sink }, inbound, negotiated_tx, peer, permit).await;
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
