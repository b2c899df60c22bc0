//! Opening connections: TCP from a chosen 127.0.0.x source address, the WebSocket handshake (or
//! none, for a `tcp://` URL: STOMP straight over TCP, see [`Link`]), and the protocol's own
//! handshake: STOMP's CONNECT/CONNECTED and receipted SUBSCRIBEs, or NATS's CONNECT and SUBs each
//! confirmed by a PING's PONG.
//!
//! Every wait is bounded by [`Endpoint::timeout`]. Only loopback targets (127.0.0.0/8) are
//! accepted: the benchmark never sends traffic off the machine.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::nats;
use crate::stomp::{self, Ack, Command};

pub type Ws = WebSocketStream<TcpStream>;

/// What the load generator speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// STOMP 1.2 over WebSocket (Stampede, RabbitMQ Web-STOMP, any STOMP broker).
    Stomp,
    /// The `ws-baseline` server's protocol: the path `/ws/<group>` picks a group, `?pub` marks a
    /// publisher; every payload a connection sends goes to the group's other members.
    Raw,
    /// Core NATS over WebSocket (nats-server's `websocket` block): topics become subjects, no
    /// queues and no acknowledgements.
    Nats,
}

/// Reads what a connection receives, by protocol: the scenarios hand it each WebSocket payload
/// (or each chunk read from a `tcp://` connection).
#[derive(Debug)]
pub enum Decoder {
    Raw,
    Stomp(stomp::Parser),
    Nats(nats::Parser),
}

impl Decoder {
    pub fn new(protocol: Protocol) -> Decoder {
        match protocol {
            Protocol::Raw => Decoder::Raw,
            Protocol::Stomp => Decoder::Stomp(stomp::Parser::new()),
            Protocol::Nats => Decoder::Nats(nats::Parser::new()),
        }
    }
}

/// The destination as `protocol` names it on the wire: a NATS subject for NATS.
pub fn wire_destination(protocol: Protocol, destination: &str) -> String {
    match protocol {
        Protocol::Nats => nats::subject(destination),
        Protocol::Stomp | Protocol::Raw => destination.to_owned(),
    }
}

/// One publish of `body` to `destination` (already in its wire form), written to `out`; for the
/// raw protocol the body alone.
pub fn publish_frame(protocol: Protocol, out: &mut String, destination: &str, body: &str) -> String {
    match protocol {
        Protocol::Raw => body.to_owned(),
        Protocol::Stomp => {
            stomp::send(out, destination, body);
            out.clone()
        }
        Protocol::Nats => {
            nats::publish(out, destination, body);
            out.clone()
        }
    }
}

// === impl Link ===

/// A connection as the scenarios use it: a WebSocket, or STOMP straight over TCP (`tcp://`
/// URLs: for a broker whose build has no WebSocket transport, like Debian's ActiveMQ). Both are
/// a stream of payloads and a sink of messages; over TCP a payload is whatever one read
/// returned (the parsers join frames across payloads) and a message's bytes go out as they are.
pub enum Link {
    Ws(Box<Ws>),
    Tcp(TcpLink),
}

/// STOMP over plain TCP, with a write buffer flushed by `flush` (as tungstenite's is).
pub struct TcpLink {
    io: TcpStream,
    write: BytesMut,
}

/// Bytes a TCP link buffers before `poll_ready` flushes them.
const TCP_WRITE_HIGH: usize = 64 * 1024;

impl Link {
    /// Closes the connection: a WebSocket close handshake, or a TCP shutdown.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), WsError> {
        match self {
            Link::Ws(ws) => WebSocketStream::close(&mut **ws, frame).await,
            Link::Tcp(_) => SinkExt::close(self).await,
        }
    }
}

impl TcpLink {
    fn poll_write_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.write.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl Stream for Link {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Link::Ws(ws) => ws.poll_next_unpin(cx),
            Link::Tcp(tcp) => {
                // On the stack: an idle connection holds no read buffer.
                let mut buf = [0u8; 16 * 1024];
                let mut read = ReadBuf::new(&mut buf);
                match ready!(Pin::new(&mut tcp.io).poll_read(cx, &mut read)) {
                    Err(e) => Poll::Ready(Some(Err(WsError::Io(e)))),
                    Ok(()) if read.filled().is_empty() => Poll::Ready(None),
                    Ok(()) => Poll::Ready(Some(Ok(Message::Binary(Bytes::copy_from_slice(read.filled()))))),
                }
            }
        }
    }
}

impl Sink<Message> for Link {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.get_mut() {
            Link::Ws(ws) => ws.poll_ready_unpin(cx),
            Link::Tcp(tcp) if tcp.write.len() >= TCP_WRITE_HIGH => {
                Poll::Ready(ready!(tcp.poll_write_all(cx)).map_err(WsError::Io))
            }
            Link::Tcp(_) => Poll::Ready(Ok(())),
        }
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        match self.get_mut() {
            Link::Ws(ws) => ws.start_send_unpin(item),
            Link::Tcp(tcp) => {
                match &item {
                    Message::Text(text) => tcp.write.extend_from_slice(text.as_bytes()),
                    Message::Binary(bytes) => tcp.write.extend_from_slice(bytes),
                    // WebSocket control frames have no meaning over plain TCP.
                    _ => {}
                }
                Ok(())
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.get_mut() {
            Link::Ws(ws) => ws.poll_flush_unpin(cx),
            Link::Tcp(tcp) => {
                ready!(tcp.poll_write_all(cx)).map_err(WsError::Io)?;
                Pin::new(&mut tcp.io).poll_flush(cx).map_err(WsError::Io)
            }
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.get_mut() {
            Link::Ws(ws) => ws.poll_close_unpin(cx),
            Link::Tcp(tcp) => {
                ready!(tcp.poll_write_all(cx)).map_err(WsError::Io)?;
                Pin::new(&mut tcp.io).poll_shutdown(cx).map_err(WsError::Io)
            }
        }
    }
}

/// Why a connection step failed.
#[derive(Debug)]
pub struct ConnError(pub String);

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnError {}

fn err(what: impl Into<String>) -> ConnError {
    ConnError(what.into())
}

/// Where and how to connect: the broker's URLs (connections go round-robin over them) and the
/// source addresses to connect from.
#[derive(Debug)]
pub struct Endpoint {
    pub urls: Vec<String>,
    addrs: Vec<SocketAddr>,
    /// Per URL: `tcp://` (STOMP over plain TCP) rather than `ws://`.
    plain: Vec<bool>,
    pub protocol: Protocol,
    pub login: Option<(String, String)>,
    /// Source addresses, used round-robin; empty = let the kernel choose.
    sources: Vec<Ipv4Addr>,
    next_source: AtomicUsize,
    pub timeout: Duration,
    /// WebSocket read buffer per connection (tungstenite's default of 128 KiB is too much for
    /// tens of thousands of connections in one process).
    pub read_buffer: usize,
}

impl Endpoint {
    /// Checks every URL (`ws://127.x.y.z:port/path`, or `tcp://127.x.y.z:port` for STOMP over
    /// plain TCP) and builds the source list
    /// 127.0.0.2 ..= 127.0.0.(1 + source_ips).
    pub fn new(
        urls: Vec<String>,
        protocol: Protocol,
        login: Option<(String, String)>,
        source_ips: u8,
        timeout: Duration,
    ) -> Result<Endpoint, ConnError> {
        if urls.is_empty() {
            return Err(err("no --url given"));
        }
        let mut addrs = Vec::new();
        let mut plain = Vec::new();
        for url in &urls {
            let uri: Uri = url.parse().map_err(|e| err(format!("bad URL {url:?}: {e}")))?;
            match uri.scheme_str() {
                Some("ws") => plain.push(false),
                Some("tcp") if protocol == Protocol::Stomp => plain.push(true),
                Some("tcp") => return Err(err(format!("{url}: tcp:// URLs are for --protocol stomp"))),
                _ => return Err(err(format!("{url}: only ws:// and tcp:// URLs are supported"))),
            }
            let host = uri.host().unwrap_or_default();
            let ip: IpAddr = match host {
                "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
                other => other.parse().map_err(|_| err(format!("{url}: the host must be an IP address")))?,
            };
            if !ip.is_loopback() || !ip.is_ipv4() {
                return Err(err(format!("{url}: only loopback targets (127.0.0.0/8) are allowed")));
            }
            addrs.push(SocketAddr::new(ip, uri.port_u16().unwrap_or(80)));
        }
        let sources = (0..source_ips.min(250)).map(|i| Ipv4Addr::new(127, 0, 0, 2 + i)).collect();
        Ok(Endpoint {
            urls,
            addrs,
            plain,
            protocol,
            login,
            sources,
            next_source: AtomicUsize::new(0),
            timeout,
            read_buffer: 16 * 1024,
        })
    }

    /// How many URLs (nodes) there are.
    pub fn nodes(&self) -> usize {
        self.urls.len()
    }

    fn config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer)
            .write_buffer_size(64 * 1024)
            .max_write_buffer_size(64 << 20)
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20))
    }

    /// TCP + WebSocket handshake (none for a `tcp://` URL) to node `node % nodes`. `group` and
    /// `publisher` are for [`Protocol::Raw`] only.
    pub async fn open(&self, node: usize, group: &str, publisher: bool) -> Result<Link, ConnError> {
        let index = node % self.urls.len();
        let mut url = self.urls[index].clone();
        if self.protocol == Protocol::Raw {
            url = format!("{}/{group}{}", url.trim_end_matches('/'), if publisher { "?pub" } else { "" });
        }
        let mut request = url.as_str().into_client_request().map_err(|e| err(format!("{url}: {e}")))?;
        if self.protocol == Protocol::Stomp {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static("v12.stomp, v11.stomp, v10.stomp"),
            );
        }
        let addr = self.addrs[index];
        let open = async {
            let socket = TcpSocket::new_v4().map_err(|e| err(format!("socket: {e}")))?;
            if !self.sources.is_empty() {
                let n = self.next_source.fetch_add(1, Ordering::Relaxed);
                let source = self.sources[n % self.sources.len()];
                socket
                    .bind(SocketAddr::new(IpAddr::V4(source), 0))
                    .map_err(|e| err(format!("bind {source}: {e}")))?;
            }
            let stream = socket.connect(addr).await.map_err(|e| err(format!("connect {addr}: {e}")))?;
            let _ = stream.set_nodelay(true);
            if self.plain[index] {
                return Ok(Link::Tcp(TcpLink { io: stream, write: BytesMut::new() }));
            }
            let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(self.config()))
                .await
                .map_err(|e| err(format!("WebSocket handshake with {url}: {e}")))?;
            Ok(Link::Ws(Box::new(ws)))
        };
        tokio::time::timeout(self.timeout, open)
            .await
            .map_err(|_| err(format!("connect to {url}: timed out")))?
    }

    /// [`Endpoint::open`], then for STOMP the CONNECT → CONNECTED exchange, for NATS the
    /// CONNECT and a PING answered.
    pub async fn session(&self, node: usize, group: &str, publisher: bool) -> Result<Session, ConnError> {
        let login = self.login.as_ref().map(|(l, p)| (l.as_str(), p.as_str()));
        Ok(self.session_as(node, group, publisher, login).await?.session)
    }

    /// [`Endpoint::session`] with a login of its own (or none), timing the CONNECT alone: from
    /// writing it to reading the CONNECTED, the handshakes before it left out.
    pub async fn session_as(
        &self,
        node: usize,
        group: &str,
        publisher: bool,
        login: Option<(&str, &str)>,
    ) -> Result<Connected, ConnError> {
        let ws = self.open(node, group, publisher).await?;
        let mut session = Session { ws, parser: Decoder::new(self.protocol), receipts: 0 };
        let started = Instant::now();
        let mut user = None;
        match self.protocol {
            Protocol::Stomp => {
                session.send_text(stomp::connect(login)).await?;
                user = session.expect(Command::Connected, None, self.timeout).await?;
            }
            Protocol::Nats => {
                session.send_text(nats::connect()).await?;
                session.expect_pong(self.timeout).await?;
            }
            Protocol::Raw => {}
        }
        Ok(Connected { session, took: started.elapsed(), user })
    }
}

/// A session just connected, with what its CONNECT exchange showed.
pub struct Connected {
    pub session: Session,
    /// CONNECT written → CONNECTED read.
    pub took: Duration,
    /// The CONNECTED frame's `user-name`: who the broker (or its connect hook) says the client is.
    pub user: Option<String>,
}

/// A connected STOMP, NATS or raw session during setup; scenarios take its `ws` for the hot loop.
pub struct Session {
    pub ws: Link,
    pub parser: Decoder,
    receipts: u64,
}

impl Session {
    pub async fn send_text(&mut self, text: String) -> Result<(), ConnError> {
        self.ws.send(Message::text(text)).await.map_err(|e| err(format!("send: {e}")))
    }

    /// SUBSCRIBE and wait for its RECEIPT (NATS: SUB and wait for the PONG of the PING after
    /// it; `ack` and `prefetch` have no meaning there). Nothing for the raw protocol.
    pub async fn subscribe(
        &mut self,
        id: &str,
        destination: &str,
        ack: Ack,
        prefetch: Option<u32>,
        timeout: Duration,
    ) -> Result<(), ConnError> {
        match self.parser {
            Decoder::Raw => return Ok(()),
            Decoder::Nats(_) => {
                self.send_text(nats::subscribe(&nats::subject(destination), id)).await?;
                return self.expect_pong(timeout).await;
            }
            Decoder::Stomp(_) => {}
        }
        self.receipts += 1;
        let receipt = format!("sub-{}", self.receipts);
        self.send_text(stomp::subscribe(id, destination, ack, prefetch, &receipt)).await?;
        self.expect(Command::Receipt, Some(&receipt), timeout).await.map(drop)
    }

    /// DISCONNECT and wait for its RECEIPT, then close the WebSocket (NATS and raw: close).
    pub async fn disconnect(mut self, timeout: Duration) -> Result<(), ConnError> {
        if !matches!(self.parser, Decoder::Stomp(_)) {
            let _ = tokio::time::timeout(timeout, self.ws.close(None)).await;
            return Ok(());
        }
        self.receipts += 1;
        let receipt = format!("bye-{}", self.receipts);
        self.send_text(stomp::disconnect(&receipt)).await?;
        // RabbitMQ closes the WebSocket instead of sending the RECEIPT: a close counts as one.
        self.expect_or_close(Command::Receipt, Some(&receipt), timeout, true).await?;
        let _ = tokio::time::timeout(timeout, self.ws.close(None)).await;
        Ok(())
    }

    /// Reads frames until one with `command` (and `receipt-id` = `receipt`) arrives. MESSAGE
    /// frames before it are skipped; an ERROR frame is an error. Returns the frame's `user-name`
    /// header (a CONNECTED's).
    async fn expect(
        &mut self,
        command: Command,
        receipt: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<String>, ConnError> {
        self.expect_or_close(command, receipt, timeout, false).await
    }

    async fn expect_or_close(
        &mut self,
        command: Command,
        receipt: Option<&str>,
        timeout: Duration,
        close_is_fine: bool,
    ) -> Result<Option<String>, ConnError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(err(format!("no {command:?} within {timeout:?}"))),
                Ok(None) if close_is_fine => return Ok(None),
                Ok(None) => return Err(err("connection closed by the server")),
                Ok(Some(Err(e))) => return Err(err(format!("read: {e}"))),
                Ok(Some(Ok(message))) => message,
            };
            let payload: &[u8] = match &message {
                Message::Text(text) => text.as_bytes(),
                Message::Binary(bytes) => bytes,
                Message::Close(_) if close_is_fine => return Ok(None),
                Message::Close(frame) => return Err(err(format!("server closed: {frame:?}"))),
                _ => continue,
            };
            let Decoder::Stomp(parser) = &mut self.parser else {
                return Err(err("a STOMP reply awaited on a connection that does not speak STOMP"));
            };
            let mut outcome: Option<Result<Option<String>, ConnError>> = None;
            parser
                .feed(payload, |frame| {
                    if outcome.is_some() {
                        return;
                    }
                    if frame.command == Command::Error {
                        outcome = Some(Err(err(format!("ERROR from the server: {}", frame.error_text()))));
                    } else if frame.command == command
                        && receipt.is_none_or(|r| frame.header("receipt-id") == Some(r.as_bytes()))
                    {
                        let user = frame.header("user-name").map(|u| String::from_utf8_lossy(u).into_owned());
                        outcome = Some(Ok(user));
                    }
                })
                .map_err(|e| err(e.to_string()))?;
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
    }

    /// Reads NATS messages until a PONG arrives, answering the server's PINGs on the way; a
    /// `-ERR` or a close is an error.
    async fn expect_pong(&mut self, timeout: Duration) -> Result<(), ConnError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(err(format!("no PONG within {timeout:?}"))),
                Ok(None) => return Err(err("connection closed by the server")),
                Ok(Some(Err(e))) => return Err(err(format!("read: {e}"))),
                Ok(Some(Ok(message))) => message,
            };
            let payload: &[u8] = match &message {
                Message::Text(text) => text.as_bytes(),
                Message::Binary(bytes) => bytes,
                Message::Close(frame) => return Err(err(format!("server closed: {frame:?}"))),
                _ => continue,
            };
            let Decoder::Nats(parser) = &mut self.parser else {
                return Err(err("a NATS reply awaited on a connection that does not speak NATS"));
            };
            let (mut pong, mut pings, mut failure) = (false, 0, None);
            parser
                .feed(payload, |op| match op {
                    nats::Op::Pong => pong = true,
                    nats::Op::Ping => pings += 1,
                    nats::Op::Err(text) if failure.is_none() => {
                        failure = Some(format!("-ERR from the server: {}", String::from_utf8_lossy(text)))
                    }
                    _ => {}
                })
                .map_err(|e| err(e.to_string()))?;
            for _ in 0..pings {
                self.send_text(nats::PONG.to_owned()).await?;
            }
            if let Some(failure) = failure {
                return Err(err(failure));
            }
            if pong {
                return Ok(());
            }
        }
    }
}
