//! SockJS's websocket transport (`/ws/<server>/<session>/websocket`): the WebSocket connection
//! of `ws.rs`, with SockJS's framing on top. The server opens with `o`, sends each batch of STOMP
//! frames as one `a[...]` text message and ends with `c[code,"reason"]` before the WebSocket
//! close; the client sends arrays of JSON strings, decoded as they arrive ([`json::Strings`]).
//! A session lives exactly as long as its WebSocket, so two connections may use one session id.
//!
//! SockJS's `h` frame is not sent here: STOMP's heart-beats, when negotiated, keep the connection
//! busy, as on `/ws`.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::json::{self, Strings};
use super::session::Close;
use crate::session::{CloseReason, FrameSink};
use crate::transport::ws::{WsSink, WsSource};
use crate::transport::{ByteSource, ReadError, Received};

/// The reading half: WebSocket messages in, the STOMP bytes of their JSON strings out.
pub(crate) struct SockJsSource<R> {
    ws: WsSource<R>,
    strings: Strings,
    /// One read's WebSocket payload, before decoding.
    raw: BytesMut,
}

impl<R> SockJsSource<R> {
    pub(crate) fn new(ws: WsSource<R>) -> SockJsSource<R> {
        SockJsSource { ws, strings: Strings::default(), raw: BytesMut::new() }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> ByteSource for SockJsSource<R> {
    async fn read(&mut self, buf: &mut BytesMut) -> Result<Received, ReadError> {
        loop {
            self.raw.clear();
            match self.ws.read(&mut self.raw).await? {
                Received::Data => {
                    let before = buf.len();
                    self.strings.decode(&self.raw, buf).map_err(|e| ReadError::WebSocket {
                        why: e.to_string(),
                        close: CloseReason::WebSocketError,
                    })?;
                    if buf.len() > before {
                        return Ok(Received::Data);
                    }
                    // Only JSON punctuation so far (`[`, an empty message): read on.
                }
                other => return Ok(other),
            }
        }
    }
}

/// The writing half: `o` first, each batch one `a[...]` message, `c[...]` before the close.
pub(crate) struct SockJsSink<W> {
    ws: WsSink<W>,
    /// This batch's frames as comma-separated JSON strings.
    batch: BytesMut,
    /// Bytes past which `feed` asks for a flush (`ws-write-buffer`).
    high_water: usize,
}

impl<W: AsyncWrite + Unpin + Send> SockJsSink<W> {
    /// The sink, once the open frame is written: the client sends nothing before it.
    pub(crate) async fn open(mut ws: WsSink<W>, high_water: usize) -> io::Result<SockJsSink<W>> {
        ws.feed(b"o", b"", true);
        ws.flush().await?;
        Ok(SockJsSink { ws, batch: BytesMut::new(), high_water })
    }

    /// Queues this batch as one `a[...]` message.
    fn seal(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.batch.extend_from_slice(b"]");
        self.ws.feed(b"a[", &self.batch, true);
        self.batch.clear();
    }
}

impl<W: AsyncWrite + Unpin + Send> FrameSink for SockJsSink<W> {
    fn feed(&mut self, head: &[u8], tail: &[u8], _text: bool) -> bool {
        json::push_frame(&mut self.batch, head, tail);
        self.batch.len() >= self.high_water
    }

    fn reserve(&mut self, bytes: usize) {
        self.batch.reserve(bytes.min(self.high_water));
    }

    async fn heartbeat(&mut self) -> io::Result<()> {
        json::push_frame(&mut self.batch, b"\n", b"");
        Ok(())
    }

    async fn pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.ws.pong(payload).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.seal();
        self.ws.flush().await
    }

    async fn close(&mut self, reason: CloseReason) -> io::Result<()> {
        self.seal();
        let close = Close::of(reason);
        self.ws.feed(&close.frame(), b"", true);
        self.ws.close(reason).await
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn the_sink_opens_batches_and_closes_in_sockjs_frames() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut sink = SockJsSink::open(WsSink::new(server, 1 << 16), 1 << 16).await.unwrap();
        sink.feed(b"MESSAGE\n", b"\nhi\0", true);
        sink.feed(b"MESSAGE\n", b"\n\"\0", true);
        sink.flush().await.unwrap();
        sink.close(CloseReason::Normal).await.unwrap();
        drop(sink);
        let mut written = Vec::new();
        client.read_to_end(&mut written).await.unwrap();
        let text = String::from_utf8_lossy(&written);
        // Text frames: `o`, one array of both frames, then the close frame, then a WebSocket close.
        assert!(written.starts_with(b"\x81\x01o\x81"), "{text}");
        assert!(text.contains(r#"a["MESSAGE\n\nhi\u0000","MESSAGE\n\n\"\u0000"]"#), "{text}");
        assert!(text.contains(r#"c[3000,"Go away!"]"#), "{text}");
        assert_eq!(written[written.len() - 4], 0x88, "a WebSocket close ends it: {text}");
    }
}
