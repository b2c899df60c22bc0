//! Test harness for the integration tests: a node on ephemeral ports ([`TestNode`]), a small
//! STOMP client over WebSocket or TCP ([`Client`]), a tiny HTTP/1.1 client for the admin port,
//! and [`eventually`] for conditions that become true asynchronously.
//!
//! Every scenario that concerns a session is written once as `async fn name(t: Transport)` and
//! run over both transports with [`both_transports!`], which makes `name::ws` and `name::tcp`.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use stampede::config::Config;
use stampede::stomp::{encode, Command, Decoded, Decoder, Frame, Limits, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(250);

/// Runs `async fn $name(t: Transport)` once per transport, as tests `$name::ws` and `$name::tcp`.
#[allow(unused_macros)]
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn ws() {
                    super::$name($crate::support::Transport::Ws).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn tcp() {
                    super::$name($crate::support::Transport::Tcp).await
                }
            }
        )*
    };
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

// === the node ===

/// A node running on 127.0.0.1 with ephemeral ports for its three listeners.
pub struct TestNode {
    ws: SocketAddr,
    tcp: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), stampede::Error>>>,
}

impl TestNode {
    /// Starts a node from the built-in defaults with test-friendly timings, then `configure`.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> TestNode {
        init_tracing();
        let mut config = Config { drain_period: Duration::from_millis(100), ..Config::default() };
        configure(&mut config);
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (ws, stomp, admin) = (bind().await.unwrap(), bind().await.unwrap(), bind().await.unwrap());
        let addrs = (ws.local_addr().unwrap(), stomp.local_addr().unwrap(), admin.local_addr().unwrap());
        let listeners = stampede::Listeners { ws, stomp: Some(stomp), admin: Some(admin) };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(stampede::run(config, listeners, async move {
            let _ = stopped.await;
        }));
        TestNode { ws: addrs.0, tcp: addrs.1, admin: addrs.2, stop: Some(stop), task: Some(task) }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Starts the drain without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Starts the drain and waits (at most 10 s) for `run` to return.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        let task = self.task.take().expect("not shut down yet");
        let result = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the node did not stop in time")
            .expect("the node task panicked");
        result.expect("run returned an error");
    }

    /// An open, not yet STOMP-connected client.
    pub async fn open(&self, t: Transport) -> Client {
        match t {
            Transport::Ws => Client::ws(&self.ws_url(), &["v12.stomp", "v11.stomp", "v10.stomp"]).await.0,
            Transport::Tcp => Client::tcp(self.tcp).await,
        }
    }

    /// A client connected with STOMP 1.2 and no login.
    pub async fn connect(&self, t: Transport) -> Client {
        let mut client = self.open(t).await;
        client.connect(Some("1.2"), &[]).await;
        client
    }

    /// A client connected with STOMP 1.2 as `login`.
    pub async fn connect_as(&self, t: Transport, login: &str) -> Client {
        let mut client = self.open(t).await;
        client.connect(Some("1.2"), &[("login", login), ("passcode", "x")]).await;
        client
    }

    /// A GET on the admin port.
    pub async fn get(&self, path: &str) -> HttpResponse {
        http(self.admin, "GET", path, None).await
    }

    /// A POST of JSON on the admin port.
    pub async fn post_json(&self, path: &str, json: &str) -> HttpResponse {
        http(self.admin, "POST", path, Some(("application/json", json.as_bytes()))).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status, 200, "/metrics: {}", response.body);
        response.body
    }

    /// Open client connections over both transports, as `/metrics` counts them.
    pub async fn connections(&self) -> f64 {
        let text = self.metrics().await;
        ["ws", "tcp"]
            .iter()
            .map(|t| metric(&text, &format!("stampede_connections{{transport=\"{t}\"}}")).unwrap_or(0.0))
            .sum()
    }

    /// One sample of `/metrics`, `key` being the name with its labels as rendered, e.g.
    /// `stampede_messages_dropped_total{reason="queue_full"}`.
    pub async fn metric(&self, key: &str) -> Option<f64> {
        metric(&self.metrics().await, key)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The value of the sample `key` (name and labels exactly as rendered) in Prometheus text.
pub fn metric(text: &str, key: &str) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == key).then(|| value.parse().ok()).flatten()
    })
}

/// Polls `condition` every 20 ms until it holds (true) or `within` passes (false).
pub async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === the STOMP client ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Tcp,
}

/// The kind of WebSocket message a frame arrived in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsKind {
    Text,
    Binary,
}

#[derive(Debug)]
pub enum RecvError {
    Timeout,
    /// The server closed the connection (or reset it).
    Closed,
    /// The server sent bytes that are not STOMP.
    Invalid(String),
}

enum Conn {
    Ws(Box<WebSocketStream<TcpStream>>),
    Tcp(TcpStream),
}

/// A STOMP client for tests: sends frames or raw bytes, decodes what the server sends.
pub struct Client {
    conn: Conn,
    decoder: Decoder,
    buf: BytesMut,
    /// Frames read while waiting for something else (a receipt), served first.
    stash: VecDeque<(Frame, Option<WsKind>)>,
    /// Kind of the WebSocket message that carried the latest payload.
    kind_of_last_read: Option<WsKind>,
    /// Negotiated version; header escaping of sent frames follows it.
    pub version: Option<Version>,
    /// WebSocket message kind of the frame most recently returned.
    pub last_kind: Option<WsKind>,
    /// Close code of the server's WebSocket close frame, once received.
    pub close_code: Option<u16>,
    /// Heart-beats (bare EOLs) received so far.
    pub heartbeats: usize,
    closed: bool,
}

static RECEIPTS: AtomicU64 = AtomicU64::new(0);

fn client_limits() -> Limits {
    Limits {
        max_frame_bytes: 64 << 20,
        max_body_bytes: 64 << 20,
        max_headers: 4096,
        max_header_line: 1 << 20,
    }
}

impl Client {
    fn new(conn: Conn) -> Client {
        Client {
            conn,
            decoder: Decoder::new(client_limits()),
            buf: BytesMut::new(),
            stash: VecDeque::new(),
            kind_of_last_read: None,
            version: None,
            last_kind: None,
            close_code: None,
            heartbeats: 0,
            closed: false,
        }
    }

    pub async fn tcp(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("TCP connect");
        stream.set_nodelay(true).unwrap();
        Client::new(Conn::Tcp(stream))
    }

    /// A TCP client whose socket stream is given (e.g. with a small receive buffer).
    pub fn from_tcp(stream: TcpStream) -> Client {
        Client::new(Conn::Tcp(stream))
    }

    /// Opens a WebSocket to `url` offering `protocols`; returns the handshake response too.
    pub async fn ws(url: &str, protocols: &[&str]) -> (Client, tungstenite::handshake::client::Response) {
        Client::try_ws(url, protocols).await.expect("WebSocket handshake")
    }

    pub async fn try_ws(
        url: &str,
        protocols: &[&str],
    ) -> Result<(Client, tungstenite::handshake::client::Response), tungstenite::Error> {
        let mut request = url.into_client_request()?;
        if !protocols.is_empty() {
            let offer = HeaderValue::from_str(&protocols.join(", ")).expect("header value");
            request.headers_mut().insert("sec-websocket-protocol", offer);
        }
        let authority = request.uri().authority().expect("authority").as_str().to_owned();
        let stream = TcpStream::connect(authority).await.map_err(tungstenite::Error::Io)?;
        stream.set_nodelay(true).unwrap();
        let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
        Ok((Client::new(Conn::Ws(Box::new(ws))), response))
    }

    // --- sending ---

    /// Sends bytes as they are: written to the TCP stream, or as one WebSocket message (text
    /// when they are UTF-8, binary otherwise).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match std::str::from_utf8(bytes) {
            Ok(text) if matches!(self.conn, Conn::Ws(_)) => self.send_ws(Message::text(text)).await,
            _ => match &mut self.conn {
                Conn::Ws(_) => self.send_ws(Message::binary(bytes.to_vec())).await,
                Conn::Tcp(stream) => stream.write_all(bytes).await,
            },
        }
    }

    /// Sends one WebSocket message (panics on TCP).
    pub async fn send_ws(&mut self, message: Message) -> std::io::Result<()> {
        match &mut self.conn {
            Conn::Ws(ws) => ws.send(message).await.map_err(std::io::Error::other),
            Conn::Tcp(_) => panic!("send_ws on a TCP client"),
        }
    }

    /// Encodes `frame` for the negotiated version and sends it.
    pub async fn send_frame(&mut self, frame: &Frame) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        encode(frame, self.version, &mut out);
        self.send_raw(&out).await
    }

    /// CONNECT with `accept-version` (when given), `host` and `headers`; returns the server's
    /// answer (CONNECTED or ERROR) and adopts the version CONNECTED names.
    pub async fn connect_with(
        &mut self,
        command: Command,
        accept: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Frame {
        let mut frame = Frame::new(command);
        if let Some(accept) = accept {
            frame = frame.with_header("accept-version", accept);
        }
        frame = frame.with_header("host", "localhost");
        for (name, value) in headers {
            frame = frame.with_header(*name, *value);
        }
        self.send_frame(&frame).await.expect("send CONNECT");
        let answer = self.recv_frame(WAIT).await.expect("an answer to CONNECT");
        if answer.command == Command::Connected {
            let version = answer.get("version").unwrap_or("1.0");
            let version = Version::parse(version).expect("a known version");
            self.version = Some(version);
            self.decoder.set_version(version);
        }
        answer
    }

    /// CONNECT that must succeed; returns CONNECTED.
    pub async fn connect(&mut self, accept: Option<&str>, headers: &[(&str, &str)]) -> Frame {
        let answer = self.connect_with(Command::Connect, accept, headers).await;
        assert_eq!(answer.command, Command::Connected, "CONNECT refused: {}", show(&answer));
        answer
    }

    /// Sends `frame` with a fresh `receipt` header and waits for its RECEIPT (frames arriving
    /// meanwhile are kept for later `recv_frame` calls). Panics on an ERROR.
    pub async fn request(&mut self, frame: Frame) -> Frame {
        let id = format!("r{}", RECEIPTS.fetch_add(1, Ordering::Relaxed));
        self.send_frame(&frame.with_header("receipt", id.clone())).await.expect("send");
        self.await_receipt(&id).await
    }

    /// Waits for the RECEIPT `id`, keeping other frames for later. Panics on an ERROR.
    pub async fn await_receipt(&mut self, id: &str) -> Frame {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let (frame, kind) = match self.next_frame(deadline).await {
                Ok(item) => item,
                Err(e) => panic!("no RECEIPT {id}: {e:?}"),
            };
            match frame.command {
                Command::Receipt if frame.get("receipt-id") == Some(id) => {
                    for item in seen.into_iter().rev() {
                        self.stash.push_front(item);
                    }
                    return frame;
                }
                Command::Error => panic!("ERROR while waiting for RECEIPT {id}: {}", show(&frame)),
                _ => seen.push((frame, kind)),
            }
        }
    }

    /// SUBSCRIBE with `headers` (e.g. `ack`), waiting for the receipt; returns the RECEIPT.
    pub async fn subscribe(&mut self, destination: &str, id: &str, headers: &[(&str, &str)]) -> Frame {
        let mut frame =
            Frame::new(Command::Subscribe).with_header("destination", destination).with_header("id", id);
        for (name, value) in headers {
            frame = frame.with_header(*name, *value);
        }
        self.request(frame).await
    }

    pub async fn unsubscribe(&mut self, id: &str) -> Frame {
        self.request(Frame::new(Command::Unsubscribe).with_header("id", id)).await
    }

    /// SEND without a receipt.
    pub async fn send(&mut self, destination: &str, body: &str) {
        self.send_frame(&send_frame(destination, body, &[])).await.expect("send SEND");
    }

    /// SEND with headers, waiting for its receipt.
    pub async fn publish(&mut self, destination: &str, body: &str, headers: &[(&str, &str)]) -> Frame {
        self.request(send_frame(destination, body, headers)).await
    }

    /// ACK (1.2 style: `id` is the MESSAGE's `ack` header), waiting for its receipt.
    pub async fn ack(&mut self, message: &Frame) -> Frame {
        self.request(Frame::new(Command::Ack).with_header("id", ack_id(message))).await
    }

    pub async fn nack(&mut self, message: &Frame) -> Frame {
        self.request(Frame::new(Command::Nack).with_header("id", ack_id(message))).await
    }

    pub async fn disconnect(&mut self) {
        self.request(Frame::new(Command::Disconnect)).await;
        self.expect_closed(WAIT).await;
    }

    /// Closes the socket without DISCONNECT (a client that went away).
    pub async fn drop_connection(self) {
        match self.conn {
            Conn::Ws(mut ws) => {
                let _ = WebSocketStream::close(&mut ws, None).await;
            }
            Conn::Tcp(stream) => drop(stream),
        }
    }

    // --- receiving ---

    /// The next frame, skipping heart-beats.
    pub async fn recv_frame(&mut self, timeout: Duration) -> Result<Frame, RecvError> {
        let (frame, kind) = self.next_frame(Instant::now() + timeout).await?;
        self.last_kind = kind;
        Ok(frame)
    }

    /// The next frame, which must be a MESSAGE.
    pub async fn recv_message(&mut self) -> Frame {
        let frame = self.recv_frame(WAIT).await.unwrap_or_else(|e| panic!("expected a MESSAGE: {e:?}"));
        assert_eq!(frame.command, Command::Message, "expected a MESSAGE, got {}", show(&frame));
        frame
    }

    /// The next `n` MESSAGE frames.
    pub async fn recv_messages(&mut self, n: usize) -> Vec<Frame> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.recv_message().await);
        }
        out
    }

    /// MESSAGE bodies up to and excluding the one whose body is `end`.
    pub async fn bodies_until(&mut self, end: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let body = body(&self.recv_message().await);
            if body == end {
                return out;
            }
            out.push(body);
        }
    }

    /// Asserts nothing but heart-beats arrives for `QUIET`.
    pub async fn assert_quiet(&mut self) {
        match self.recv_frame(QUIET).await {
            Err(RecvError::Timeout) => {}
            Ok(frame) => panic!("expected nothing, got {}", show(&frame)),
            Err(e) => panic!("expected nothing, got {e:?}"),
        }
    }

    /// Reads until the server closes the connection; returns the frames that came first.
    /// Panics if it is still open after `timeout`.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match self.next_frame(deadline).await {
                Ok((frame, _)) => frames.push(frame),
                Err(RecvError::Closed) => return frames,
                Err(RecvError::Timeout) => {
                    panic!(
                        "the server did not close the connection; frames: {:?}",
                        frames.iter().map(show).collect::<Vec<_>>()
                    )
                }
                Err(RecvError::Invalid(e)) => panic!("invalid bytes from the server: {e}"),
            }
        }
    }

    /// Reads raw bytes, without decoding, until the server closes the connection; returns them
    /// (what was buffered and not yet decoded included). Panics if still open after `timeout`.
    pub async fn read_raw_until_closed(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => panic!("the server did not close the connection"),
                Ok(Ok(())) => {}
                Ok(Err(())) => self.closed = true,
            }
        }
        std::mem::take(&mut self.buf).to_vec()
    }

    /// Expects an ERROR frame (as the last frame) and the connection closed; returns the ERROR.
    pub async fn expect_error(&mut self) -> Frame {
        let frames = self.expect_closed(WAIT).await;
        let last = frames.last().unwrap_or_else(|| panic!("closed without an ERROR frame"));
        assert_eq!(
            last.command,
            Command::Error,
            "expected ERROR last, got {:?}",
            frames.iter().map(show).collect::<Vec<_>>()
        );
        last.clone()
    }

    /// Puts a frame back, to be returned by the next receive.
    pub fn unread(&mut self, frame: Frame) {
        self.stash.push_front((frame, self.last_kind));
    }

    /// Reads for `period`, stashing frames, and returns how many heart-beats arrived.
    pub async fn count_heartbeats(&mut self, period: Duration) -> usize {
        let before = self.heartbeats;
        let deadline = Instant::now() + period;
        loop {
            match self.next_item(deadline).await {
                Ok(Some((frame, kind))) => self.stash.push_back((frame, kind)),
                Ok(None) => {}
                Err(RecvError::Timeout) => return self.heartbeats - before,
                Err(e) => panic!("connection lost while counting heart-beats: {e:?}"),
            }
        }
    }

    async fn next_frame(&mut self, deadline: Instant) -> Result<(Frame, Option<WsKind>), RecvError> {
        if let Some(item) = self.stash.pop_front() {
            return Ok(item);
        }
        loop {
            if let Some(item) = self.next_item(deadline).await? {
                return Ok(item);
            }
        }
    }

    /// One decoded item: `Some(frame)` or `None` for a heart-beat (counted).
    async fn next_item(&mut self, deadline: Instant) -> Result<Option<(Frame, Option<WsKind>)>, RecvError> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Decoded::Frame(frame))) => return Ok(Some((frame, self.kind_of_last_read))),
                Ok(Some(Decoded::Heartbeat)) => {
                    self.heartbeats += 1;
                    return Ok(None);
                }
                Ok(None) => {}
                Err(e) => return Err(RecvError::Invalid(e.to_string())),
            }
            if self.closed {
                return Err(RecvError::Closed);
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => return Err(RecvError::Timeout),
                Ok(Ok(())) => {}
                Ok(Err(())) => self.closed = true,
            }
        }
    }

    /// Reads more bytes into the buffer; Err when the connection ended.
    async fn fill(&mut self) -> Result<(), ()> {
        match &mut self.conn {
            Conn::Tcp(stream) => {
                self.buf.reserve(64 * 1024);
                match stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => Err(()),
                    Ok(_) => Ok(()),
                }
            }
            Conn::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        self.buf.extend_from_slice(text.as_bytes());
                        self.kind_of_last_read = Some(WsKind::Text);
                        return Ok(());
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        self.buf.extend_from_slice(&bytes);
                        self.kind_of_last_read = Some(WsKind::Binary);
                        return Ok(());
                    }
                    Some(Ok(Message::Close(frame))) => {
                        self.close_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Err(()),
                }
            },
        }
    }
}

// === frames ===

/// A SEND frame with a `content-length`.
pub fn send_frame(destination: &str, body: &str, headers: &[(&str, &str)]) -> Frame {
    let mut frame = Frame::new(Command::Send).with_header("destination", destination);
    for (name, value) in headers {
        frame = frame.with_header(*name, *value);
    }
    frame.with_header("content-length", body.len().to_string()).with_body(body.as_bytes().to_vec())
}

/// The header `name`, which must be present.
pub fn header<'f>(frame: &'f Frame, name: &str) -> &'f str {
    frame.get(name).unwrap_or_else(|| panic!("no {name} header in {}", show(frame)))
}

/// The id to ACK a MESSAGE with (its `ack` header, else its `message-id`).
pub fn ack_id(message: &Frame) -> String {
    message.get("ack").or_else(|| message.get("message-id")).expect("an ack or message-id header").to_owned()
}

pub fn body(frame: &Frame) -> String {
    String::from_utf8(frame.body.to_vec()).expect("a UTF-8 body")
}

/// A one-line description of a frame for assertion messages.
pub fn show(frame: &Frame) -> String {
    let body = String::from_utf8_lossy(&frame.body);
    format!("{} {:?} {:?}", frame.command.as_str(), frame.headers, body.chars().take(200).collect::<String>())
}

/// Asserts `frame` is an ERROR whose `message` contains `needle`.
pub fn assert_error(frame: &Frame, needle: &str) {
    assert_eq!(frame.command, Command::Error, "expected ERROR, got {}", show(frame));
    let message = header(frame, "message");
    assert!(message.contains(needle), "ERROR message {message:?} does not mention {needle:?}");
}

// === HTTP ===

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// One HTTP/1.1 request with `Connection: close`; reads the answer to EOF.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<(&str, &[u8])>) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the admin port");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((content_type, bytes)) = body {
        request.push_str(&format!("Content-Type: {content_type}\r\nContent-Length: {}\r\n", bytes.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    if let Some((_, body)) = body {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.expect("HTTP answer in time").unwrap();
    let text = String::from_utf8(raw).expect("a UTF-8 HTTP answer");
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP head");
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_owned() };
    HttpResponse { status, headers, body }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&tail[..size]);
        rest = &tail[size + 2..];
    }
    out
}
