//! The opening handshake (RFC 6455 section 4.2), server side, by hand: the HTTP/1.1 upgrade
//! request is read (16 KiB at most) and parsed with `httparse`, checked, and answered with
//! `101 Switching Protocols` or an error status with a short text body, after which the
//! connection is closed.
//!
//! Checks, in order: the request (GET, HTTP/1.1, one `Host`; else 400), the path (`/ws`; else
//! 404), the upgrade (`Upgrade: websocket`, `Connection: upgrade`, a valid `Sec-WebSocket-Key`;
//! else 400), `Sec-WebSocket-Version: 13` (else 426, naming version 13), then the node's own: its
//! and the client address's connection limits (503, 429) and the `Origin` allowlist (403). Bytes
//! the client sent after the request's blank line are the start of its WebSocket stream and are
//! handed on.

use std::io;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::BytesMut;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{PATH, SUBPROTOCOLS};
use crate::auth;
use crate::node::Refusal;
use crate::transport::sockjs::{self, Route, SockJsTuning};

/// Largest request head read.
pub(super) const MAX_REQUEST: usize = 16 * 1024;
/// Most header fields in a request.
const MAX_HEADERS: usize = 100;
/// Bytes read at a time.
const READ_CHUNK: usize = 2048;
/// RFC 6455's GUID, hashed with the client's key into `Sec-WebSocket-Accept`.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// An error status answered instead of the upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rejection {
    pub status: u16,
    /// The response body: a short reason.
    pub why: String,
}

impl Rejection {
    fn new(status: u16, why: impl Into<String>) -> Rejection {
        Rejection { status, why: why.into() }
    }

    fn bad(why: impl Into<String>) -> Rejection {
        Rejection::new(400, why)
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, reason_phrase(self.status), self.why)
    }
}

/// An upgrade the checks allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Upgrade {
    /// `Sec-WebSocket-Accept`.
    pub accept: String,
    /// The STOMP subprotocol chosen, if the client offered one.
    pub protocol: Option<&'static str>,
    /// A token from `Authorization: Bearer` or `?token=`, for CONNECT.
    pub bearer: Option<String>,
    /// SockJS's framing on top (`/ws/<server>/<session>/websocket`), or STOMP straight over.
    pub sockjs: bool,
}

/// How a handshake ended.
#[derive(Debug)]
pub(super) enum Outcome {
    /// `101` was sent; `rest` holds what the client sent after its request.
    Upgraded { bearer: Option<String>, rest: BytesMut, sockjs: bool },
    /// Not an upgrade but a SockJS HTTP request: nothing was answered; `request` holds all the
    /// client sent so far, its request head first.
    Http { request: BytesMut },
    /// The error status was sent and the connection shut down.
    Refused(Rejection),
}

/// Reads the upgrade request from `stream` and answers it. `refusal` is the admission's verdict;
/// `origin_allowed` the `Origin` policy. The caller bounds the time it may take.
pub(super) async fn handshake<S>(
    stream: &mut S,
    refusal: Option<&Refusal>,
    origin_allowed: impl Fn(Option<&str>) -> bool,
    sockjs: &SockJsTuning,
) -> io::Result<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut buf, head) = match read_request(stream).await? {
        Ok(request) => request,
        Err(rejection) => return refuse(stream, rejection).await,
    };
    if sockjs.enabled && is_sockjs_http(&buf[..head]) {
        return match refusal {
            Some(refusal) => refuse(stream, full(refusal)).await,
            None => Ok(Outcome::Http { request: buf }),
        };
    }
    match answer(&buf[..head], refusal, origin_allowed, sockjs) {
        Ok(upgrade) => {
            stream.write_all(switching_protocols(&upgrade).as_bytes()).await?;
            stream.flush().await?;
            // Keep only what followed the request, in a buffer of its own size.
            let rest = BytesMut::from(&buf.split_off(head)[..]);
            Ok(Outcome::Upgraded { bearer: upgrade.bearer, rest, sockjs: upgrade.sockjs })
        }
        Err(rejection) => refuse(stream, rejection).await,
    }
}

/// A request under the WebSocket path that asks for no upgrade: SockJS's to answer.
fn is_sockjs_http(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    let (path, _) = split_target(request.path.unwrap_or_default());
    let upgrade = request.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade"));
    !upgrade && sockjs::route(PATH, path) != Route::NotFound
}

/// The answer to a connection the node's limits refused.
fn full(refusal: &Refusal) -> Rejection {
    match refusal {
        Refusal::NodeFull(_) => Rejection::new(503, refusal.to_string()),
        Refusal::AddressFull(..) => Rejection::new(429, refusal.to_string()),
    }
}

/// Reads until the request head is complete: returns the bytes read and the head's length, or
/// the rejection of a head too large.
async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> io::Result<Result<(BytesMut, usize), Rejection>> {
    let mut buf = BytesMut::new();
    loop {
        let scanned = buf.len();
        buf.reserve(READ_CHUNK.min(MAX_REQUEST - scanned));
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during the handshake"));
        }
        if let Some(end) = head_end(&buf, scanned) {
            return Ok(Ok((buf, end)));
        }
        if buf.len() >= MAX_REQUEST {
            let why = format!("request too large: the handshake may have {} KiB at most", MAX_REQUEST / 1024);
            return Ok(Err(Rejection::new(431, why)));
        }
    }
}

/// Where the blank line ending a request head is, looking at bytes from `from` on; the head's
/// length (blank line included). Lines may end with CRLF or LF, as `httparse` accepts.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from.max(1)..buf.len().min(MAX_REQUEST))
        .find(|&i| {
            buf[i] == b'\n' && (buf[i - 1] == b'\n' || (i >= 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n'))
        })
        .map(|i| i + 1)
}

/// Writes the rejection, then closes.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, rejection: Rejection) -> io::Result<Outcome> {
    let version = if rejection.status == 426 { "Sec-WebSocket-Version: 13\r\n" } else { "" };
    let response = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n{version}\r\n{}",
        rejection.status,
        reason_phrase(rejection.status),
        rejection.why.len(),
        rejection.why
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await?;
    Ok(Outcome::Refused(rejection))
}

fn switching_protocols(upgrade: &Upgrade) -> String {
    let protocol = upgrade.protocol.map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n")).unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{protocol}\r\n",
        upgrade.accept
    )
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Checks a complete request head and decides.
pub(super) fn answer(
    head: &[u8],
    refusal: Option<&Refusal>,
    origin_allowed: impl Fn(Option<&str>) -> bool,
    sockjs: &SockJsTuning,
) -> Result<Upgrade, Rejection> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Rejection::bad("malformed HTTP request")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection::new(431, format!("too many header fields: {MAX_HEADERS} at most")));
        }
        Err(error) => return Err(Rejection::bad(format!("malformed HTTP request: {error}"))),
    }
    if request.method != Some("GET") {
        return Err(Rejection::bad("a WebSocket handshake is a GET request"));
    }
    if request.version != Some(1) {
        return Err(Rejection::bad("a WebSocket handshake needs HTTP/1.1"));
    }
    let headers = Headers(request.headers);
    // RFC 9112 section 3.2: an HTTP/1.1 request without a Host, or with two, gets 400.
    if headers.all_raw("host").count() != 1 {
        return Err(Rejection::bad("an HTTP/1.1 request needs exactly one Host header"));
    }
    let (path, query) = split_target(request.path.unwrap_or_default());
    let framed = match sockjs::route(PATH, path) {
        _ if path == PATH => false,
        Route::RawWebSocket if sockjs.enabled => false,
        Route::Session { transport: "websocket", .. } if sockjs.enabled && sockjs.websocket => true,
        _ => return Err(Rejection::new(404, "not found: STOMP over WebSocket is at /ws")),
    };
    if !headers.has_token("upgrade", "websocket") {
        return Err(Rejection::bad("not a WebSocket handshake: no \"Upgrade: websocket\" header"));
    }
    if !headers.has_token("connection", "upgrade") {
        return Err(Rejection::bad("not a WebSocket handshake: no \"Connection: upgrade\" header"));
    }
    if headers.first("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Rejection::new(426, "WebSocket version 13 is required (Sec-WebSocket-Version: 13)"));
    }
    let key = headers.first("sec-websocket-key").map(str::trim).unwrap_or_default();
    if !BASE64.decode(key).is_ok_and(|k| k.len() == 16) {
        return Err(Rejection::bad("missing or invalid Sec-WebSocket-Key header"));
    }
    if let Some(refusal) = refusal {
        return Err(full(refusal));
    }
    // A value that is not printable ASCII matches no allowed origin.
    let origin = headers.first_raw("origin").map(|v| text(v).unwrap_or("\u{0}"));
    if !origin_allowed(origin) {
        return Err(Rejection::new(403, "origin not allowed (ws-origins)"));
    }
    let bearer = headers
        .first("authorization")
        .and_then(auth::bearer)
        .map(str::to_owned)
        .or_else(|| query.and_then(auth::query_token));
    let offered: Vec<&str> =
        headers.all("sec-websocket-protocol").flat_map(|v| v.split(',')).map(str::trim).collect();
    let protocol = SUBPROTOCOLS.into_iter().find(|p| offered.contains(p));
    Ok(Upgrade { accept: accept_key(key), protocol, bearer, sockjs: framed })
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub(super) fn accept_key(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(GUID);
    BASE64.encode(sha1.finalize())
}

/// The path and query of a request target, in origin form (`/ws?token=x`) or absolute form
/// (`http://host/ws?token=x`).
fn split_target(target: &str) -> (&str, Option<&str>) {
    let target = match target.split_once("://") {
        Some((_, rest)) if !target.starts_with('/') => rest.find('/').map_or("/", |at| &rest[at..]),
        _ => target,
    };
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

/// A header value as text: printable ASCII (and tabs) only, as `http` requires.
fn text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(value).expect("ASCII"))
}

struct Headers<'h, 'b>(&'h [httparse::Header<'b>]);

impl<'b> Headers<'_, 'b> {
    fn all_raw<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b [u8]> + 's {
        self.0.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    fn first_raw(&self, name: &str) -> Option<&'b [u8]> {
        self.all_raw(name).next()
    }

    /// The first value of `name`, if it is text.
    fn first(&self, name: &str) -> Option<&'b str> {
        self.first_raw(name).and_then(text)
    }

    /// Every value of `name` that is text.
    fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b str> + 's {
        self.all_raw(name).filter_map(text)
    }

    /// Whether a comma-separated header lists `token` (ASCII case-insensitive), in any of its
    /// fields.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(target: &str, extra: &str) -> String {
        format!(
            "GET {target} HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn check(head: &str) -> Result<Upgrade, Rejection> {
        answer(head.as_bytes(), None, |_| true, &sockjs())
    }

    fn sockjs() -> SockJsTuning {
        crate::config::Config::default().sockjs
    }

    fn status(head: &str) -> u16 {
        check(head).expect_err("refused").status
    }

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let key = "x3JJHMbDL1EzLkh9GBhXDw==";
        assert_eq!(
            accept_key(key),
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
        );
    }

    #[test]
    fn a_valid_request_is_upgraded() {
        let upgrade = check(&request("/ws", "Sec-WebSocket-Protocol: v10.stomp, v12.stomp\r\n")).unwrap();
        assert_eq!(upgrade.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(upgrade.protocol, Some("v12.stomp"));
        assert_eq!(upgrade.bearer, None);
        let upgrade = check(&request("/ws", "")).unwrap();
        assert_eq!(upgrade.protocol, None, "no subprotocol offered is accepted");
        let head = request("/ws", "sec-websocket-protocol: mqtt\r\nSEC-WEBSOCKET-PROTOCOL: v11.stomp\r\n");
        assert_eq!(check(&head).unwrap().protocol, Some("v11.stomp"), "names are case-insensitive");
        let lf = request("/ws", "").replace("\r\n", "\n");
        assert!(check(&lf).is_ok(), "bare LF line ends");
    }

    #[test]
    fn the_token_comes_from_the_authorization_header_or_the_query() {
        let upgrade = check(&request("/ws?token=a%2Eb", "")).unwrap();
        assert_eq!(upgrade.bearer.as_deref(), Some("a.b"));
        let upgrade = check(&request("/ws?token=q", "Authorization: Bearer h\r\n")).unwrap();
        assert_eq!(upgrade.bearer.as_deref(), Some("h"), "the header wins");
        let upgrade = check(&request("http://example.com/ws?x=1&token=t", "")).unwrap();
        assert_eq!(upgrade.bearer.as_deref(), Some("t"), "absolute form");
    }

    #[test]
    fn bad_requests_get_their_status() {
        assert_eq!(status(&request("/", "")), 404);
        assert_eq!(status(&request("/ws/x", "")), 404);
        assert_eq!(status(&request("/ws", "").replace("GET", "POST")), 400);
        assert_eq!(status(&request("/ws", "").replace("HTTP/1.1", "HTTP/1.0")), 400);
        let no_host = request("/ws", "").replace("Host: example.com\r\n", "");
        assert_eq!(
            check(&no_host).unwrap_err(),
            Rejection::bad("an HTTP/1.1 request needs exactly one Host header")
        );
        assert_eq!(status(&request("/ws", "Host: other.example\r\n")), 400, "two Host headers");
        assert_eq!(
            status(&request("/", "").replace("Host: example.com\r\n", "")),
            400,
            "told before the path"
        );
        assert_eq!(status(&request("/ws", "").replace("Upgrade: websocket", "Upgrade: h2c")), 400);
        assert_eq!(status(&request("/ws", "").replace("keep-alive, Upgrade", "keep-alive")), 400);
        assert_eq!(status(&request("/ws", "").replace("Version: 13", "Version: 8")), 426);
        assert_eq!(status(&request("/ws", "").replace("Sec-WebSocket-Version: 13\r\n", "")), 426);
        assert_eq!(status(&request("/ws", "").replace(KEY, "short")), 400);
        assert_eq!(status(&request("/ws", "").replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "")), 400);
        assert_eq!(status("GET /ws HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
        let many: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(status(&request("/ws", &many)), 431);
    }

    #[test]
    fn limits_and_origins_are_checked_after_the_request() {
        let head = request("/ws", "Origin: https://evil.example\r\n");
        let full = Refusal::NodeFull(10);
        assert_eq!(answer(head.as_bytes(), Some(&full), |_| true, &sockjs()).unwrap_err().status, 503);
        let address = Refusal::AddressFull("127.0.0.1".parse().unwrap(), 2);
        let rejection = answer(head.as_bytes(), Some(&address), |_| true, &sockjs()).unwrap_err();
        assert_eq!(rejection.status, 429);
        assert!(rejection.why.contains("max-connections-per-ip"), "{rejection}");
        let only = |origin: Option<&str>| origin == Some("https://app.example");
        assert_eq!(answer(head.as_bytes(), None, only, &sockjs()).unwrap_err().status, 403);
        let good = request("/ws", "Origin: https://app.example\r\n");
        assert!(answer(good.as_bytes(), None, only, &sockjs()).is_ok());
        let odd = request("/ws", "Origin: https://app.éxample\r\n");
        assert_eq!(answer(odd.as_bytes(), None, |o| o == Some("\u{0}"), &sockjs()).map(|_| ()), Ok(()));
        // A bad path is told before a full node.
        assert_eq!(
            answer(request("/", "").as_bytes(), Some(&full), |_| true, &sockjs()).unwrap_err().status,
            404
        );
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        let text = b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest";
        assert_eq!(head_end(text, 0), Some(text.len() - 4));
        for from in 0..text.len() - 4 {
            assert_eq!(head_end(text, from), Some(text.len() - 4), "scanning from {from}");
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\nA: b\n\nrest", 0), Some(21));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
    }

    #[tokio::test]
    async fn bytes_after_the_request_are_kept_and_errors_are_answered() {
        let mut input = request("/ws", "").into_bytes();
        input.extend_from_slice(b"\x81\x80abcd");
        let mut stream = stream_of(&input);
        match handshake(&mut stream, None, |_| true, &sockjs()).await.unwrap() {
            Outcome::Upgraded { rest, .. } => assert_eq!(&rest[..], b"\x81\x80abcd"),
            other => panic!("{other:?}"),
        }
        let written = String::from_utf8(stream.into_inner().1).unwrap();
        assert!(written.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{written}");
        assert!(written.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{written}");
        assert!(written.ends_with("\r\n\r\n"), "{written}");

        let old = request("/ws", "").replace("Version: 13", "Version: 8");
        let mut stream = stream_of(old.as_bytes());
        assert!(matches!(
            handshake(&mut stream, None, |_| true, &sockjs()).await.unwrap(),
            Outcome::Refused(_)
        ));
        let written = String::from_utf8(stream.into_inner().1).unwrap();
        assert!(written.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{written}");
        assert!(written.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{written}");
        assert!(written.ends_with("\r\n\r\nWebSocket version 13 is required (Sec-WebSocket-Version: 13)"));

        let mut stream = stream_of(&vec![b'x'; MAX_REQUEST + 10]);
        match handshake(&mut stream, None, |_| true, &sockjs()).await.unwrap() {
            Outcome::Refused(rejection) => assert_eq!(rejection.status, 431),
            other => panic!("{other:?}"),
        }
    }

    /// A stream that reads from `input` and records what is written.
    fn stream_of(input: &[u8]) -> tokio::io::Join<std::io::Cursor<Vec<u8>>, Vec<u8>> {
        tokio::io::join(std::io::Cursor::new(input.to_vec()), Vec::new())
    }
}
