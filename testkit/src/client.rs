//! The one STOMP test client, on the broker's own codec (`stampede::stomp`): over plain TCP,
//! TLS, WebSocket or secure WebSocket (any byte stream, [`BoxStream`]), sending frames or raw
//! bytes (even hand-made WebSocket frames under the WebSocket layer), decoding what the server
//! sends.
//!
//! One set of helpers, in two forms: `try_x` returns a [`ClientError`] (for scenarios that
//! expect failures, such as a node going away), `x` panics with a description of what went
//! wrong (for everything else). Every wait has a deadline ([`WAIT`] unless given). Frames that
//! arrive while the client waits for something else (a RECEIPT) are kept, in order, for the next
//! receive. Heart-beats (bare EOLs) are counted and skipped.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use stampede::stomp::{encode, Command, Decoded, Decoder, Frame, Limits, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

pub use crate::variant::Transport;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(250);

/// Where a client connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `ws://host:port/ws`
    Ws(String),
    Tcp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Ws(url) => f.write_str(url),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// The server sent bytes that are not STOMP.
    #[error("invalid bytes from the server: {0}")]
    Invalid(String),
    /// The server closed the connection (or reset it).
    #[error("the server closed the connection ({0})")]
    Closed(String),
    #[error("no {what} within {after:?}")]
    Timeout { what: String, after: Duration },
    /// The server sent an ERROR frame (it closes the connection after it).
    #[error("ERROR frame: {}", show(.0))]
    Error(Frame),
    #[error("unexpected frame: {0}")]
    Unexpected(String),
}

impl ClientError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Timeout { .. })
    }

    /// The `message` header of an ERROR frame.
    pub fn error_message(&self) -> Option<&str> {
        match self {
            ClientError::Error(frame) => frame.get("message"),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// The kind of WebSocket message a frame arrived in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsKind {
    Text,
    Binary,
}

/// Any byte stream: plain TCP or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
pub type BoxStream = Box<dyn Stream>;

enum Conn {
    Raw(BoxStream),
    Ws(Box<WebSocketStream<BoxStream>>),
}

/// The handshake response of a WebSocket client.
pub type WsResponse = tungstenite::handshake::client::Response;

/// A STOMP client for tests: sends frames or raw bytes, decodes what the server sends.
pub struct Client {
    conn: Conn,
    decoder: Decoder,
    buf: BytesMut,
    /// Frames read while waiting for something else (a receipt), served first.
    stash: VecDeque<(Frame, Option<WsKind>)>,
    /// Receipt ids skipped while waiting for a MESSAGE.
    receipts: HashSet<String>,
    /// Kind of the WebSocket message that carried the latest payload.
    kind_of_last_read: Option<WsKind>,
    /// Negotiated version; header escaping of sent frames follows it.
    pub version: Option<Version>,
    /// WebSocket message kind of the frame most recently returned.
    pub last_kind: Option<WsKind>,
    /// Close code of the server's WebSocket close frame, once received.
    pub close_code: Option<u16>,
    /// Reason text of the server's WebSocket close frame, once received ("" when it had none).
    pub close_reason: Option<String>,
    /// Heart-beats (bare EOLs) received so far.
    pub heartbeats: usize,
    closed: bool,
    /// The `session` header of CONNECTED.
    session: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("session", &self.session).field("version", &self.version).finish()
    }
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
            receipts: HashSet::new(),
            kind_of_last_read: None,
            version: None,
            last_kind: None,
            close_code: None,
            close_reason: None,
            heartbeats: 0,
            closed: false,
            session: String::new(),
        }
    }

    // --- opening ---

    /// A STOMP-over-TCP connection to `addr`, not yet STOMP-connected.
    pub async fn tcp(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("TCP connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Client::from_tcp(stream)
    }

    /// A TCP client whose socket is given (e.g. with a small receive buffer), as it is.
    pub fn from_tcp(stream: TcpStream) -> Client {
        Client::from_stream(Box::new(stream))
    }

    /// STOMP over any byte stream (e.g. TLS).
    pub fn from_stream(stream: BoxStream) -> Client {
        Client::new(Conn::Raw(stream))
    }

    /// Opens a WebSocket to `url` offering `protocols`; returns the handshake response too.
    pub async fn ws(url: &str, protocols: &[&str]) -> (Client, WsResponse) {
        Client::try_ws(url, protocols).await.expect("WebSocket handshake")
    }

    pub async fn try_ws(
        url: &str,
        protocols: &[&str],
    ) -> std::result::Result<(Client, WsResponse), tungstenite::Error> {
        let mut request = url.into_client_request()?;
        if !protocols.is_empty() {
            let offer = HeaderValue::from_str(&protocols.join(", ")).expect("header value");
            request.headers_mut().insert("sec-websocket-protocol", offer);
        }
        let authority = request.uri().authority().expect("authority").as_str().to_owned();
        let stream = TcpStream::connect(authority).await.map_err(tungstenite::Error::Io)?;
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Client::ws_over(Box::new(stream), request).await
    }

    /// The WebSocket handshake of `request` over `stream` (plain or TLS).
    pub async fn ws_over(
        stream: BoxStream,
        request: tungstenite::handshake::client::Request,
    ) -> std::result::Result<(Client, WsResponse), tungstenite::Error> {
        let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
        Ok((Client::new(Conn::Ws(Box::new(ws))), response))
    }

    /// Opens `endpoint` (WebSocket with subprotocol `v12.stomp`), not yet STOMP-connected.
    pub async fn open(endpoint: &Endpoint) -> Result<Client> {
        let opening = async {
            match endpoint {
                Endpoint::Ws(url) => Client::try_ws(url, &["v12.stomp"])
                    .await
                    .map(|(client, _)| client)
                    .map_err(|e| ClientError::WebSocket(format!("{url}: {e}"))),
                Endpoint::Tcp(addr) => {
                    let stream = TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    Ok(Client::from_tcp(stream))
                }
            }
        };
        tokio::time::timeout(WAIT, opening)
            .await
            .map_err(|_| ClientError::Timeout { what: format!("connection to {endpoint}"), after: WAIT })?
    }

    /// Opens `endpoint` and connects with STOMP 1.2, heart-beats off, as `login` when given.
    pub async fn connect_to(endpoint: &Endpoint, login: Option<&str>) -> Result<Client> {
        let mut client = Client::open(endpoint).await?;
        let mut headers = vec![("heart-beat", "0,0")];
        if let Some(login) = login {
            headers.extend([("login", login), ("passcode", "secret")]);
        }
        client.try_connect(Some("1.2"), &headers).await?;
        Ok(client)
    }

    pub fn is_ws(&self) -> bool {
        matches!(self.conn, Conn::Ws(_))
    }

    /// The `session` header of CONNECTED.
    pub fn session(&self) -> &str {
        &self.session
    }

    // --- sending ---

    /// Sends bytes as they are: written (and flushed) to the stream, or as one WebSocket message
    /// (text when they are UTF-8, binary otherwise).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.conn {
            Conn::Raw(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
            Conn::Ws(ws) => {
                let message = match std::str::from_utf8(bytes) {
                    Ok(text) => Message::text(text),
                    Err(_) => Message::binary(bytes.to_vec()),
                };
                ws.send(message).await.map_err(io::Error::other)
            }
        }
    }

    /// Sends one WebSocket message (panics on TCP).
    pub async fn send_ws(&mut self, message: Message) -> io::Result<()> {
        match &mut self.conn {
            Conn::Ws(ws) => ws.send(message).await.map_err(io::Error::other),
            Conn::Raw(_) => panic!("send_ws on a TCP client"),
        }
    }

    /// Writes bytes under the WebSocket layer, straight to the socket: hand-made (possibly
    /// invalid) WebSocket frames (see [`ws_frame`]).
    pub async fn send_under_ws(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.conn {
            Conn::Ws(ws) => {
                let stream = ws.get_mut();
                stream.write_all(bytes).await?;
                stream.flush().await
            }
            Conn::Raw(_) => panic!("send_under_ws on a TCP client"),
        }
    }

    /// Encodes `frame` for the negotiated version and sends it.
    pub async fn send_frame(&mut self, frame: &Frame) -> Result<()> {
        let mut out = BytesMut::new();
        encode(frame, self.version, &mut out);
        Ok(self.send_raw(&out).await?)
    }

    /// CONNECT (or STOMP) with `accept-version` (when given), `host` and `headers`; returns the
    /// server's answer (CONNECTED or ERROR) and adopts the version CONNECTED names.
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
        let answer = self.recv_frame(WAIT).await.unwrap_or_else(|e| panic!("no answer to CONNECT: {e}"));
        if answer.command == Command::Connected {
            let version = answer.get("version").unwrap_or("1.0");
            let version = Version::parse(version).expect("a known version");
            self.version = Some(version);
            self.decoder.set_version(version);
            self.session = answer.get("session").unwrap_or_default().to_owned();
        }
        answer
    }

    /// CONNECT that must succeed; returns CONNECTED, else the ERROR as an error.
    pub async fn try_connect(&mut self, accept: Option<&str>, headers: &[(&str, &str)]) -> Result<Frame> {
        let answer = self.connect_with(Command::Connect, accept, headers).await;
        match answer.command {
            Command::Connected => Ok(answer),
            Command::Error => Err(ClientError::Error(answer)),
            _ => Err(ClientError::Unexpected(show(&answer))),
        }
    }

    /// CONNECT that must succeed; returns CONNECTED.
    pub async fn connect(&mut self, accept: Option<&str>, headers: &[(&str, &str)]) -> Frame {
        self.try_connect(accept, headers).await.unwrap_or_else(|e| panic!("CONNECT refused: {e}"))
    }

    /// Sends `frame` with a fresh `receipt` header; returns the receipt id.
    pub async fn try_send_with_receipt(&mut self, frame: Frame) -> Result<String> {
        let id = format!("r{}", RECEIPTS.fetch_add(1, Ordering::Relaxed));
        self.send_frame(&frame.with_header("receipt", id.clone())).await?;
        Ok(id)
    }

    /// Sends `frame` with a fresh `receipt` header and waits for its RECEIPT (frames arriving
    /// meanwhile are kept for later). An ERROR is an error.
    pub async fn try_request(&mut self, frame: Frame) -> Result<Frame> {
        let id = self.try_send_with_receipt(frame).await?;
        self.try_await_receipt(&id, WAIT).await
    }

    /// Like [`Client::try_request`]; panics on an ERROR.
    pub async fn request(&mut self, frame: Frame) -> Frame {
        self.try_request(frame).await.unwrap_or_else(|e| panic!("no RECEIPT: {e}"))
    }

    /// Sends `frame` with a receipt and expects an ERROR instead; returns it.
    pub async fn request_refused(&mut self, frame: Frame) -> Frame {
        match self.try_request(frame).await {
            Err(ClientError::Error(error)) => error,
            Ok(receipt) => panic!("a RECEIPT instead of an ERROR: {}", show(&receipt)),
            Err(e) => panic!("no ERROR: {e}"),
        }
    }

    /// Waits up to `within` for the RECEIPT `id`, keeping other frames for later. An ERROR is
    /// an error.
    pub async fn try_await_receipt(&mut self, id: &str, within: Duration) -> Result<Frame> {
        if self.receipts.remove(id) {
            return Ok(Frame::new(Command::Receipt).with_header("receipt-id", id));
        }
        let deadline = Instant::now() + within;
        let what = format!("RECEIPT {id}");
        let mut seen = Vec::new();
        let result = loop {
            match self.next_frame(deadline, &what).await {
                Err(e) => break Err(e),
                Ok((frame, kind)) => match frame.command {
                    Command::Receipt if frame.get("receipt-id") == Some(id) => break Ok(frame),
                    Command::Error => break Err(ClientError::Error(frame)),
                    _ => seen.push((frame, kind)),
                },
            }
        };
        for item in seen.into_iter().rev() {
            self.stash.push_front(item);
        }
        result
    }

    /// Waits for the RECEIPT `id`, keeping other frames for later. Panics on an ERROR.
    pub async fn await_receipt(&mut self, id: &str) -> Frame {
        self.try_await_receipt(id, WAIT).await.unwrap_or_else(|e| panic!("no RECEIPT {id}: {e}"))
    }

    /// SUBSCRIBE with `headers` (e.g. `ack`), waiting for the receipt; returns the RECEIPT (it
    /// carries `x-recovered` when `headers` hold `x-since`).
    pub async fn try_subscribe(
        &mut self,
        destination: &str,
        id: &str,
        headers: &[(&str, &str)],
    ) -> Result<Frame> {
        let mut frame = subscribe_frame(destination, id);
        for (name, value) in headers {
            frame = frame.with_header(*name, *value);
        }
        self.try_request(frame).await
    }

    pub async fn subscribe(&mut self, destination: &str, id: &str, headers: &[(&str, &str)]) -> Frame {
        self.try_subscribe(destination, id, headers)
            .await
            .unwrap_or_else(|e| panic!("SUBSCRIBE {destination}: {e}"))
    }

    pub async fn try_unsubscribe(&mut self, id: &str) -> Result<Frame> {
        self.try_request(Frame::new(Command::Unsubscribe).with_header("id", id)).await
    }

    pub async fn unsubscribe(&mut self, id: &str) -> Frame {
        self.try_unsubscribe(id).await.unwrap_or_else(|e| panic!("UNSUBSCRIBE {id}: {e}"))
    }

    /// SEND without a receipt; `headers` are passed through to subscribers.
    pub async fn try_send(&mut self, destination: &str, body: &str, headers: &[(&str, &str)]) -> Result<()> {
        self.send_frame(&send_frame(destination, body, headers)).await
    }

    pub async fn send(&mut self, destination: &str, body: &str, headers: &[(&str, &str)]) {
        self.try_send(destination, body, headers).await.expect("send SEND")
    }

    /// SEND with headers, waiting for its receipt: the broker accepted the message.
    pub async fn try_publish(
        &mut self,
        destination: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Result<Frame> {
        self.try_request(send_frame(destination, body, headers)).await
    }

    pub async fn publish(&mut self, destination: &str, body: &str, headers: &[(&str, &str)]) -> Frame {
        self.try_publish(destination, body, headers)
            .await
            .unwrap_or_else(|e| panic!("SEND {destination}: {e}"))
    }

    /// ACK (1.2 style: `id` is the MESSAGE's `ack` header), waiting for its receipt.
    pub async fn try_ack(&mut self, message: &Frame) -> Result<Frame> {
        self.try_request(ack_frame(message)).await
    }

    pub async fn ack(&mut self, message: &Frame) -> Frame {
        self.try_ack(message).await.unwrap_or_else(|e| panic!("ACK: {e}"))
    }

    /// NACK, waiting for its receipt: the message goes back to its queue.
    pub async fn try_nack(&mut self, message: &Frame) -> Result<Frame> {
        self.try_request(nack_frame(message)).await
    }

    pub async fn nack(&mut self, message: &Frame) -> Frame {
        self.try_nack(message).await.unwrap_or_else(|e| panic!("NACK: {e}"))
    }

    /// DISCONNECT with a receipt, then waits for the server to close the connection.
    pub async fn try_disconnect(&mut self) -> Result<()> {
        self.try_request(Frame::new(Command::Disconnect)).await?;
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next_frame(deadline, "the close after DISCONNECT").await {
                Ok(_) => {}
                Err(ClientError::Closed(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn disconnect(&mut self) {
        self.try_disconnect().await.unwrap_or_else(|e| panic!("DISCONNECT: {e}"))
    }

    /// Closes the socket without DISCONNECT (a client that went away).
    pub async fn drop_connection(self) {
        match self.conn {
            Conn::Ws(mut ws) => {
                let _ = WebSocketStream::close(&mut ws, None).await;
            }
            Conn::Raw(stream) => drop(stream),
        }
    }

    // --- receiving ---

    /// The next frame, whatever it is (heart-beats skipped), waiting at most `timeout`.
    pub async fn recv_frame(&mut self, timeout: Duration) -> Result<Frame> {
        let (frame, kind) = self.next_frame(Instant::now() + timeout, "a frame").await?;
        self.last_kind = kind;
        Ok(frame)
    }

    /// The next MESSAGE, waiting at most `within`. An ERROR frame is an error; stray receipts
    /// are remembered (for [`Client::try_await_receipt`]) and skipped.
    pub async fn try_recv_message(&mut self, within: Duration) -> Result<Frame> {
        let deadline = Instant::now() + within;
        loop {
            let (frame, kind) = self.next_frame(deadline, "MESSAGE").await?;
            self.last_kind = kind;
            match frame.command {
                Command::Message => return Ok(frame),
                Command::Error => return Err(ClientError::Error(frame)),
                Command::Receipt => {
                    self.receipts.insert(frame.get("receipt-id").unwrap_or_default().to_owned());
                }
                _ => return Err(ClientError::Unexpected(show(&frame))),
            }
        }
    }

    /// The next MESSAGE.
    pub async fn recv_message(&mut self) -> Frame {
        self.try_recv_message(WAIT).await.unwrap_or_else(|e| panic!("expected a MESSAGE: {e}"))
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

    /// Succeeds if no frame but heart-beats arrives for `window`.
    pub async fn try_quiet(&mut self, window: Duration) -> Result<()> {
        match self.recv_frame(window).await {
            Err(e) if e.is_timeout() => Ok(()),
            Ok(frame) => Err(ClientError::Unexpected(show(&frame))),
            Err(e) => Err(e),
        }
    }

    /// Asserts nothing but heart-beats arrives for [`QUIET`].
    pub async fn assert_quiet(&mut self) {
        self.try_quiet(QUIET).await.unwrap_or_else(|e| panic!("expected nothing, got {e}"))
    }

    /// Reads until the server closes the connection; returns the frames that came first.
    /// Panics if it is still open after `timeout`.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match self.next_frame(deadline, "the close").await {
                Ok((frame, _)) => frames.push(frame),
                Err(ClientError::Closed(_)) => return frames,
                Err(ClientError::Timeout { .. }) => panic!(
                    "the server did not close the connection; frames: {:?}",
                    frames.iter().map(show).collect::<Vec<_>>()
                ),
                Err(e) => panic!("{e}"),
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

    /// Expects an ERROR whose `message` contains `needle`, then the close.
    pub async fn expect_refusal(&mut self, needle: &str) -> Frame {
        let error = self.expect_error().await;
        assert_error(&error, needle);
        error
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
            match self.next_item(deadline, "heart-beats").await {
                Ok(Some((frame, kind))) => self.stash.push_back((frame, kind)),
                Ok(None) => {}
                Err(ClientError::Timeout { .. }) => return self.heartbeats - before,
                Err(e) => panic!("connection lost while counting heart-beats: {e}"),
            }
        }
    }

    async fn next_frame(&mut self, deadline: Instant, what: &str) -> Result<(Frame, Option<WsKind>)> {
        if let Some(item) = self.stash.pop_front() {
            return Ok(item);
        }
        loop {
            if let Some(item) = self.next_item(deadline, what).await? {
                return Ok(item);
            }
        }
    }

    /// One decoded item: `Some(frame)` or `None` for a heart-beat (counted).
    async fn next_item(&mut self, deadline: Instant, what: &str) -> Result<Option<(Frame, Option<WsKind>)>> {
        let started = Instant::now();
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Decoded::Frame(frame))) => return Ok(Some((frame, self.kind_of_last_read))),
                Ok(Some(Decoded::Heartbeat)) => {
                    self.heartbeats += 1;
                    return Ok(None);
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Invalid(e.to_string())),
            }
            if self.closed {
                let why =
                    self.close_code.map_or_else(|| "end of stream".to_owned(), |c| format!("close {c}"));
                return Err(ClientError::Closed(why));
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => {
                    return Err(ClientError::Timeout { what: what.to_owned(), after: started.elapsed() })
                }
                Ok(Ok(())) => {}
                Ok(Err(())) => self.closed = true,
            }
        }
    }

    /// Reads more bytes into the buffer; Err when the connection ended. Cancel-safe.
    async fn fill(&mut self) -> std::result::Result<(), ()> {
        match &mut self.conn {
            Conn::Raw(stream) => {
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
                        self.close_code = Some(frame.as_ref().map_or(1005, |f| u16::from(f.code)));
                        self.close_reason = Some(frame.map(|f| f.reason.to_string()).unwrap_or_default());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Err(()),
                }
            },
        }
    }
}

// === frames ===

/// A SEND frame with `headers` and a `content-length`.
pub fn send_frame(destination: &str, body: &str, headers: &[(&str, &str)]) -> Frame {
    let mut frame = Frame::new(Command::Send).with_header("destination", destination);
    for (name, value) in headers {
        frame = frame.with_header(*name, *value);
    }
    frame.with_header("content-length", body.len().to_string()).with_body(body.as_bytes().to_vec())
}

pub fn subscribe_frame(destination: &str, id: &str) -> Frame {
    Frame::new(Command::Subscribe).with_header("destination", destination).with_header("id", id)
}

/// An ACK of `message` (without a receipt).
pub fn ack_frame(message: &Frame) -> Frame {
    Frame::new(Command::Ack).with_header("id", ack_id(message))
}

/// A NACK of `message` (without a receipt).
pub fn nack_frame(message: &Frame) -> Frame {
    Frame::new(Command::Nack).with_header("id", ack_id(message))
}

/// The id to ACK a MESSAGE with (its `ack` header, else its `message-id`).
pub fn ack_id(message: &Frame) -> String {
    message.get("ack").or_else(|| message.get("message-id")).expect("an ack or message-id header").to_owned()
}

/// The header `name`, which must be present.
pub fn header<'f>(frame: &'f Frame, name: &str) -> &'f str {
    frame.get(name).unwrap_or_else(|| panic!("no {name} header in {}", show(frame)))
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

/// A client-to-server WebSocket frame, built by hand: `fin`, `opcode`, masked or not.
pub fn ws_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}
