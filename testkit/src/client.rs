//! A small STOMP 1.2 client over WebSocket or plain TCP, built on the broker's own codec
//! (`stampede::stomp`), for driving nodes from tests.
//!
//! It is strict where a test wants it: every wait has a deadline and fails with
//! [`ClientError::Timeout`]; an ERROR frame from the server is an error, never a message.
//! MESSAGE frames that arrive while the client waits for a receipt are kept, in order, for the
//! next [`Client::recv`]. Heart-beats are off (`heart-beat:0,0`), so a test that pauses
//! never loses its connection to a heart-beat timeout.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use stampede::stomp::{encode, Command, Decoded, Decoder, Frame, Limits, ProtocolError, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use crate::variant::Transport;

/// How long connecting (TCP, WebSocket handshake, CONNECT → CONNECTED) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a receipt may take.
pub const RECEIPT_TIMEOUT: Duration = Duration::from_secs(10);

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
    #[error("invalid frame from the server: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the server closed the connection ({0})")]
    Closed(String),
    #[error("no {what} within {after:?}")]
    Timeout { what: String, after: Duration },
    /// The server sent an ERROR frame (it closes the connection after it).
    #[error("ERROR frame: {message} (receipt-id {receipt_id:?}) {body:?}")]
    Error { message: String, receipt_id: Option<String>, body: String },
    #[error("unexpected frame: {0}")]
    Unexpected(String),
}

impl ClientError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Timeout { .. })
    }
}

type Result<T> = std::result::Result<T, ClientError>;

enum Connection {
    Ws(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
    Tcp(TcpStream),
}

/// One connected STOMP session.
pub struct Client {
    connection: Connection,
    endpoint: Endpoint,
    decoder: Decoder,
    input: BytesMut,
    /// MESSAGE frames read while waiting for something else, oldest first.
    pending: VecDeque<Frame>,
    /// Receipt ids read while waiting for something else.
    receipts: HashSet<String>,
    next_receipt: u64,
    session: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("endpoint", &self.endpoint).field("session", &self.session).finish()
    }
}

impl Client {
    /// Connects, sends CONNECT (`accept-version:1.2`, `login` when given) and waits for
    /// CONNECTED.
    pub async fn connect(endpoint: &Endpoint, login: Option<&str>) -> Result<Client> {
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, open(endpoint)).await.map_err(|_| {
            ClientError::Timeout { what: format!("connection to {endpoint}"), after: CONNECT_TIMEOUT }
        })??;
        let limits = Limits { max_frame_bytes: 64 << 20, max_body_bytes: 64 << 20, ..Limits::default() };
        let mut client = Client {
            connection,
            endpoint: endpoint.clone(),
            decoder: Decoder::new(limits),
            input: BytesMut::with_capacity(64 * 1024),
            pending: VecDeque::new(),
            receipts: HashSet::new(),
            next_receipt: 0,
            session: String::new(),
        };
        let mut connect = Frame::new(Command::Connect)
            .with_header("accept-version", "1.2")
            .with_header("host", "localhost")
            .with_header("heart-beat", "0,0");
        if let Some(login) = login {
            connect = connect.with_header("login", login).with_header("passcode", "secret");
        }
        client.write(&connect).await?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let frame = client.read_frame(deadline, "CONNECTED").await?;
        match frame.command {
            Command::Connected => {
                client.decoder.set_version(Version::V1_2);
                client.session = frame.get("session").unwrap_or_default().to_owned();
                Ok(client)
            }
            Command::Error => Err(error_of(&frame)),
            _ => Err(ClientError::Unexpected(describe(&frame))),
        }
    }

    /// The `session` header of CONNECTED.
    pub fn session(&self) -> &str {
        &self.session
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends any frame as it is.
    pub async fn send_frame(&mut self, frame: &Frame) -> Result<()> {
        self.write(frame).await
    }

    /// SEND without a receipt. `headers` are passed through to subscribers.
    pub async fn send(&mut self, destination: &str, body: &str, headers: &[(&str, &str)]) -> Result<()> {
        self.write(&send_frame(destination, body, headers)).await
    }

    /// SEND with a receipt, without waiting for it; returns the receipt id for
    /// [`Client::await_receipt`].
    pub async fn send_with_receipt(
        &mut self,
        destination: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Result<String> {
        let receipt = self.receipt_id();
        let frame = send_frame(destination, body, headers).with_header("receipt", receipt.clone());
        self.write(&frame).await?;
        Ok(receipt)
    }

    /// SEND with a receipt, and waits for it: the broker accepted the message.
    pub async fn send_confirmed(
        &mut self,
        destination: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Result<()> {
        let receipt = self.send_with_receipt(destination, body, headers).await?;
        self.await_receipt(&receipt, RECEIPT_TIMEOUT).await.map(drop)
    }

    /// SUBSCRIBE with a receipt, and waits for it; returns the RECEIPT (it carries
    /// `x-recovered` when `headers` hold `x-since`). Messages replayed before it are kept for
    /// [`Client::recv`].
    pub async fn subscribe(
        &mut self,
        id: &str,
        destination: &str,
        headers: &[(&str, &str)],
    ) -> Result<Frame> {
        let receipt = self.receipt_id();
        let mut frame =
            Frame::new(Command::Subscribe).with_header("id", id).with_header("destination", destination);
        for (name, value) in headers {
            frame = frame.with_header(*name, *value);
        }
        self.write(&frame.with_header("receipt", receipt.clone())).await?;
        self.await_receipt(&receipt, RECEIPT_TIMEOUT).await
    }

    /// UNSUBSCRIBE with a receipt, and waits for it.
    pub async fn unsubscribe(&mut self, id: &str) -> Result<()> {
        let receipt = self.receipt_id();
        let frame =
            Frame::new(Command::Unsubscribe).with_header("id", id).with_header("receipt", receipt.clone());
        self.write(&frame).await?;
        self.await_receipt(&receipt, RECEIPT_TIMEOUT).await.map(drop)
    }

    /// ACK of a MESSAGE received in a client ack mode (by its `ack` header).
    pub async fn ack(&mut self, message: &Frame) -> Result<()> {
        self.write(&settle(Command::Ack, message)?).await
    }

    /// ACK with a receipt, and waits for it: the broker has forgotten the message.
    pub async fn ack_confirmed(&mut self, message: &Frame) -> Result<()> {
        let receipt = self.receipt_id();
        self.write(&settle(Command::Ack, message)?.with_header("receipt", receipt.clone())).await?;
        self.await_receipt(&receipt, RECEIPT_TIMEOUT).await.map(drop)
    }

    /// NACK: the message goes back to its queue.
    pub async fn nack(&mut self, message: &Frame) -> Result<()> {
        self.write(&settle(Command::Nack, message)?).await
    }

    /// The next MESSAGE, waiting at most `within`. An ERROR frame is an error; stray
    /// receipts are remembered and skipped.
    pub async fn recv(&mut self, within: Duration) -> Result<Frame> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(frame);
        }
        let deadline = Instant::now() + within;
        loop {
            let frame = self.read_frame(deadline, "MESSAGE").await?;
            match frame.command {
                Command::Message => return Ok(frame),
                Command::Error => return Err(error_of(&frame)),
                Command::Receipt => {
                    self.receipts.insert(frame.get("receipt-id").unwrap_or_default().to_owned());
                }
                _ => return Err(ClientError::Unexpected(describe(&frame))),
            }
        }
    }

    /// Succeeds if no MESSAGE arrives within `window`.
    pub async fn expect_silence(&mut self, window: Duration) -> Result<()> {
        match self.recv(window).await {
            Ok(frame) => Err(ClientError::Unexpected(describe(&frame))),
            Err(e) if e.is_timeout() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits for the RECEIPT of `receipt`, keeping the MESSAGEs read meanwhile.
    pub async fn await_receipt(&mut self, receipt: &str, within: Duration) -> Result<Frame> {
        if self.receipts.remove(receipt) {
            return Ok(Frame::new(Command::Receipt).with_header("receipt-id", receipt));
        }
        let deadline = Instant::now() + within;
        let what = format!("RECEIPT {receipt}");
        loop {
            let frame = self.read_frame(deadline, &what).await?;
            match frame.command {
                Command::Receipt if frame.get("receipt-id") == Some(receipt) => return Ok(frame),
                Command::Receipt => {
                    self.receipts.insert(frame.get("receipt-id").unwrap_or_default().to_owned());
                }
                Command::Message => self.pending.push_back(frame),
                Command::Error => return Err(error_of(&frame)),
                _ => return Err(ClientError::Unexpected(describe(&frame))),
            }
        }
    }

    /// DISCONNECT with a receipt, waits for it, and closes.
    pub async fn disconnect(mut self) -> Result<()> {
        let receipt = self.receipt_id();
        self.write(&Frame::new(Command::Disconnect).with_header("receipt", receipt.clone())).await?;
        self.await_receipt(&receipt, RECEIPT_TIMEOUT).await?;
        match &mut self.connection {
            Connection::Ws(ws) => {
                let _ = WebSocketStream::close(&mut **ws, None).await;
            }
            Connection::Tcp(tcp) => {
                let _ = tcp.shutdown().await;
            }
        }
        Ok(())
    }

    fn receipt_id(&mut self) -> String {
        self.next_receipt += 1;
        format!("r-{}", self.next_receipt)
    }

    async fn write(&mut self, frame: &Frame) -> Result<()> {
        let mut out = BytesMut::new();
        encode(frame, Some(Version::V1_2), &mut out);
        match &mut self.connection {
            Connection::Ws(ws) => {
                let bytes = out.freeze();
                let message = match Utf8Bytes::try_from(bytes.clone()) {
                    Ok(text) => Message::Text(text),
                    Err(_) => Message::Binary(bytes),
                };
                ws.send(message).await.map_err(|e| ClientError::WebSocket(e.to_string()))
            }
            Connection::Tcp(tcp) => Ok(tcp.write_all(&out).await?),
        }
    }

    /// The next frame (heart-beats skipped), reading until `deadline`.
    async fn read_frame(&mut self, deadline: Instant, what: &str) -> Result<Frame> {
        let started = Instant::now();
        loop {
            match self.decoder.decode(&mut self.input)? {
                Some(Decoded::Frame(frame)) => return Ok(frame),
                Some(Decoded::Heartbeat) => continue,
                None => {}
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(filled) => filled?,
                Err(_) => {
                    return Err(ClientError::Timeout { what: what.to_owned(), after: started.elapsed() })
                }
            }
        }
    }

    /// Appends the next bytes from the connection to `input`. Cancel-safe.
    async fn fill(&mut self) -> Result<()> {
        match &mut self.connection {
            Connection::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        self.input.extend_from_slice(text.as_bytes());
                        return Ok(());
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        self.input.extend_from_slice(&bytes);
                        return Ok(());
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map(|f| format!("close {} {}", u16::from(f.code), f.reason));
                        return Err(ClientError::Closed(why.unwrap_or_else(|| "close".to_owned())));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(ClientError::WebSocket(e.to_string())),
                    None => return Err(ClientError::Closed("end of stream".to_owned())),
                }
            },
            Connection::Tcp(tcp) => {
                self.input.reserve(16 * 1024);
                match tcp.read_buf(&mut self.input).await? {
                    0 => Err(ClientError::Closed("end of stream".to_owned())),
                    _ => Ok(()),
                }
            }
        }
    }
}

async fn open(endpoint: &Endpoint) -> Result<Connection> {
    match endpoint {
        Endpoint::Ws(url) => {
            let mut request =
                url.as_str().into_client_request().map_err(|e| ClientError::WebSocket(e.to_string()))?;
            request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("v12.stomp"));
            let (ws, _) = tokio_tungstenite::connect_async(request)
                .await
                .map_err(|e| ClientError::WebSocket(format!("{url}: {e}")))?;
            Ok(Connection::Ws(Box::new(ws)))
        }
        Endpoint::Tcp(addr) => {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok(Connection::Tcp(tcp))
        }
    }
}

fn send_frame(destination: &str, body: &str, headers: &[(&str, &str)]) -> Frame {
    let mut frame = Frame::new(Command::Send).with_header("destination", destination);
    for (name, value) in headers {
        frame = frame.with_header(*name, *value);
    }
    frame.with_header("content-length", body.len().to_string()).with_body(body.as_bytes().to_vec())
}

fn settle(command: Command, message: &Frame) -> Result<Frame> {
    let id = message.get("ack").ok_or_else(|| {
        ClientError::Unexpected(format!(
            "no ack header to {} (auto mode?): {}",
            command.as_str(),
            describe(message)
        ))
    })?;
    Ok(Frame::new(command).with_header("id", id))
}

fn error_of(frame: &Frame) -> ClientError {
    ClientError::Error {
        message: frame.get("message").unwrap_or_default().to_owned(),
        receipt_id: frame.get("receipt-id").map(str::to_owned),
        body: String::from_utf8_lossy(&frame.body).into_owned(),
    }
}

/// A one-line picture of a frame for failure messages: command, headers, start of the body.
pub fn describe(frame: &Frame) -> String {
    let headers: Vec<String> = frame.headers.iter().map(|(n, v)| format!("{n}:{v}")).collect();
    let body = String::from_utf8_lossy(&frame.body);
    let body: String = body.chars().take(80).collect();
    format!("{} [{}] {body:?}", frame.command.as_str(), headers.join(", "))
}

/// The value of header `name`; panics, describing the frame, when it is missing.
pub fn header<'f>(frame: &'f Frame, name: &str) -> &'f str {
    frame.get(name).unwrap_or_else(|| panic!("no {name} header in {}", describe(frame)))
}

/// The body as text.
pub fn body(frame: &Frame) -> String {
    String::from_utf8_lossy(&frame.body).into_owned()
}
