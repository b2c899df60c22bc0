//! Opening connections: TCP from a chosen 127.0.0.x source address, the WebSocket handshake, and
//! for STOMP the CONNECT/CONNECTED exchange and receipted SUBSCRIBEs.
//!
//! Every wait is bounded by [`Endpoint::timeout`]. Only loopback targets (127.0.0.0/8) are
//! accepted: the benchmark never sends traffic off the machine.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::stomp::{self, Ack, Command, Parser};

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
    /// Checks every URL (`ws://127.x.y.z:port/path`) and builds the source list
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
        for url in &urls {
            let uri: Uri = url.parse().map_err(|e| err(format!("bad URL {url:?}: {e}")))?;
            if uri.scheme_str() != Some("ws") {
                return Err(err(format!("{url}: only ws:// URLs are supported")));
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

    /// TCP + WebSocket handshake to node `node % nodes`. `group` and `publisher` are for
    /// [`Protocol::Raw`] only.
    pub async fn open(&self, node: usize, group: &str, publisher: bool) -> Result<Ws, ConnError> {
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
            let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(self.config()))
                .await
                .map_err(|e| err(format!("WebSocket handshake with {url}: {e}")))?;
            Ok(ws)
        };
        tokio::time::timeout(self.timeout, open)
            .await
            .map_err(|_| err(format!("connect to {url}: timed out")))?
    }

    /// [`Endpoint::open`], then for STOMP the CONNECT → CONNECTED exchange.
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
        let mut session = Session { ws, parser: Parser::new(), receipts: 0 };
        let started = Instant::now();
        let mut user = None;
        if self.protocol == Protocol::Stomp {
            session.send_text(stomp::connect(login)).await?;
            user = session.expect(Command::Connected, None, self.timeout).await?;
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

/// A connected STOMP (or raw) session during setup; scenarios take its `ws` for the hot loop.
pub struct Session {
    pub ws: Ws,
    pub parser: Parser,
    receipts: u64,
}

impl Session {
    pub async fn send_text(&mut self, text: String) -> Result<(), ConnError> {
        self.ws.send(Message::text(text)).await.map_err(|e| err(format!("send: {e}")))
    }

    /// SUBSCRIBE and wait for its RECEIPT.
    pub async fn subscribe(
        &mut self,
        id: &str,
        destination: &str,
        ack: Ack,
        prefetch: Option<u32>,
        timeout: Duration,
    ) -> Result<(), ConnError> {
        self.receipts += 1;
        let receipt = format!("sub-{}", self.receipts);
        self.send_text(stomp::subscribe(id, destination, ack, prefetch, &receipt)).await?;
        self.expect(Command::Receipt, Some(&receipt), timeout).await.map(drop)
    }

    /// DISCONNECT and wait for its RECEIPT, then close the WebSocket.
    pub async fn disconnect(mut self, timeout: Duration) -> Result<(), ConnError> {
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
            let mut outcome: Option<Result<Option<String>, ConnError>> = None;
            self.parser
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
}
