//! SockJS 0.3.3 at the WebSocket path, as Spring's `withSockJS()` serves it, for clients behind
//! proxies and networks that block WebSocket: sockjs-client asks `/ws/info`, then opens a
//! session at `/ws/<server>/<session>/<transport>` on the best transport that works.
//!
//! | path under `/ws` | what |
//! | --- | --- |
//! | `` and `/` | the greeting, `Welcome to SockJS!` |
//! | `/info` | `{"websocket", "cookie_needed", "origins", "entropy"}` |
//! | `/iframe.html`, `/iframe-<version>.html` | the page iframe-based transports load (cacheable) |
//! | `/websocket` | raw WebSocket: STOMP straight over it, exactly as `/ws` |
//! | `/<server>/<session>/websocket` | WebSocket with SockJS framing (`websocket.rs`) |
//! | `/<server>/<session>/xhr`, `jsonp` | polling receivers |
//! | `/<server>/<session>/xhr_streaming`, `eventsource`, `htmlfile` | streaming receivers |
//! | `/<server>/<session>/xhr_send`, `jsonp_send` | the client's messages |
//!
//! Every transport runs the one STOMP session code ([`crate::session::run`]): the WebSocket one
//! over the WebSocket source and sink wrapped in SockJS's framing, the HTTP ones over the shared
//! state in `session.rs`. So authentication (a `?token=` on the SockJS URL, which sockjs-client
//! keeps on every request, or CONNECT headers), permissions, limits, the slow-consumer policy,
//! heart-beats and the drain are the same on every transport.
//!
//! The WebSocket listener reads each connection's first request head itself (`ws.rs`); an
//! upgrade goes to the WebSocket code, anything else under `/ws` comes here and is served by
//! `http.rs`, for this request and any that follow on the connection (keep-alive). The
//! connection holds its place in the node's connection limits; each HTTP session takes one more.
//!
//! Layout: `mod.rs` (routing, the HTTP answers), `http.rs` (HTTP/1.1 by hand, for memory),
//! `session.rs` (HTTP sessions and their table),
//! `websocket.rs` (the framed WebSocket transport), `json.rs` (SockJS's JSON both ways),
//! `settings.rs` (the `sockjs-*` settings).

mod http;
mod json;
mod session;
pub(crate) mod settings;
pub(super) mod websocket;

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use ::http::header::{self, HeaderMap, HeaderValue};
use ::http::{Method, Request, Response, StatusCode};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::metrics::Transport;
use crate::node::{Node, Permit};
use crate::session::Accepted;
use crate::transport::{spawn_reader, ReadError, ReadLimits};
use session::{ChannelSource, HttpSink, Next, Receiver, Sessions};
pub use settings::SockJsTuning;

use http::{Body, RequestBody};

/// What the xhr-streaming transport sends first: 2 KiB of `h`, so browsers start handing over
/// the response before it ends.
const XHR_PRELUDE: usize = 2048;
static XHR_PRELUDE_BYTES: [u8; XHR_PRELUDE + 1] = {
    let mut prelude = [b'h'; XHR_PRELUDE + 1];
    prelude[XHR_PRELUDE] = b'\n';
    prelude
};
/// Bytes the htmlfile transport's first chunk is padded to, for the same reason.
const HTMLFILE_PRELUDE: usize = 1024;
/// A year, the cache lifetime of preflight answers and the iframe page.
const YEAR: Duration = Duration::from_secs(31_536_000);
/// Bytes a SockJS send may hold beyond six times `max-frame-size` (the most JSON escaping can
/// make of a frame).
const SEND_SLACK: usize = 64 * 1024;
/// How often ended and unattended sessions are looked for.
const REAP_EVERY: Duration = Duration::from_millis(500);

/// The SockJS endpoint of one WebSocket listener: its settings and its HTTP sessions.
#[derive(Debug)]
pub(crate) struct SockJs {
    tuning: SockJsTuning,
    sessions: Arc<Sessions>,
}

impl SockJs {
    /// The endpoint, with a task that ends unattended sessions and forgets ended ones (it stops
    /// when the endpoint is dropped).
    pub(crate) fn start(tuning: SockJsTuning) -> Arc<SockJs> {
        let sessions = Arc::new(Sessions::default());
        tokio::spawn(reap(Arc::downgrade(&sessions), tuning.disconnect_delay));
        Arc::new(SockJs { tuning, sessions })
    }

    pub(crate) fn tuning(&self) -> &SockJsTuning {
        &self.tuning
    }
}

async fn reap(sessions: Weak<Sessions>, delay: Duration) {
    let mut tick = tokio::time::interval(REAP_EVERY.min(delay.max(Duration::from_millis(10))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(sessions) = sessions.upgrade() else { return };
        sessions.reap(delay);
    }
}

/// Where a path under the WebSocket path leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route<'a> {
    /// `/ws`, `/ws/`: the WebSocket endpoint, or the greeting without an upgrade.
    Root,
    /// `/ws/websocket`: raw WebSocket.
    RawWebSocket,
    Info,
    Iframe,
    /// `/ws/<server>/<session>/<transport>`.
    Session {
        id: &'a str,
        transport: &'a str,
    },
    NotFound,
}

/// Classifies `path` (without its query) under `base` (`/ws`).
pub(super) fn route<'a>(base: &str, path: &'a str) -> Route<'a> {
    let Some(rest) = path.strip_prefix(base) else { return Route::NotFound };
    match rest {
        "" | "/" => return Route::Root,
        "/websocket" => return Route::RawWebSocket,
        "/info" => return Route::Info,
        _ => {}
    }
    if let Some(name) = rest.strip_prefix('/').and_then(|r| r.strip_suffix(".html")) {
        if name == "iframe" || name.strip_prefix("iframe-").is_some_and(|v| !v.contains('/')) {
            return Route::Iframe;
        }
    }
    let mut parts = rest.strip_prefix('/').unwrap_or("/").split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(server), Some(id), Some(transport), None)
            if !transport.is_empty() && [server, id].iter().all(|p| !p.is_empty() && !p.contains('.')) =>
        {
            Route::Session { id, transport }
        }
        _ => Route::NotFound,
    }
}

/// Serves SockJS's HTTP requests on one connection, starting with the one whose bytes the
/// listener has read already (`first`), until the client closes it.
pub(super) async fn serve_http<S>(stream: S, first: BytesMut, endpoint: Endpoint)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let config = endpoint.node.config();
    let idle = config.limits.connect_timeout;
    let body_limit = config.limits.max_frame_size.saturating_mul(6).saturating_add(SEND_SLACK);
    http::serve(stream, first, idle, body_limit, |request| endpoint.answer(request)).await;
}

/// One HTTP connection's view of the endpoint.
pub(super) struct Endpoint {
    pub(super) node: Arc<Node>,
    pub(super) sockjs: Arc<SockJs>,
    pub(super) peer: SocketAddr,
    /// The connection's place in the node's limits, held while it is open.
    pub(super) _permit: Permit,
}

/// How a receiving transport frames what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `xhr`, `xhr_streaming`: one frame per line.
    Xhr,
    /// `eventsource`: `data: <frame>` events.
    EventSource,
    /// `htmlfile`: `<script>p("<frame>")</script>` chunks of an HTML page.
    HtmlFile,
    /// `jsonp`: `<callback>("<frame>");`.
    Jsonp,
}

impl Framing {
    fn content_type(self) -> &'static str {
        match self {
            Framing::Xhr | Framing::Jsonp => "application/javascript; charset=UTF-8",
            Framing::EventSource => "text/event-stream; charset=UTF-8",
            Framing::HtmlFile => "text/html; charset=UTF-8",
        }
    }

    /// What a streaming response starts with, before any frame.
    fn prelude(self, callback: &str) -> Bytes {
        match self {
            Framing::Xhr => Bytes::from_static(&XHR_PRELUDE_BYTES),
            Framing::EventSource => Bytes::from_static(b"\r\n"),
            Framing::HtmlFile => {
                let mut page = HTMLFILE_HEAD.replace("{callback}", callback);
                let padding = HTMLFILE_PRELUDE.saturating_sub(page.len());
                page.extend(std::iter::repeat_n(' ', padding));
                page.push_str("\r\n\r\n");
                page.into()
            }
            Framing::Jsonp => Bytes::new(),
        }
    }

    /// One SockJS frame (`o`, `h`, `a[...]`, `c[...]`) as this transport sends it.
    fn frame(self, frame: &[u8], callback: &str) -> Bytes {
        let frame = std::str::from_utf8(frame).expect("SockJS frames are JSON text");
        let mut out = BytesMut::with_capacity(frame.len() + 32);
        match self {
            Framing::Xhr => {
                out.extend_from_slice(frame.as_bytes());
                out.extend_from_slice(b"\n");
            }
            Framing::EventSource => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(frame.as_bytes());
                out.extend_from_slice(b"\r\n\r\n");
            }
            Framing::HtmlFile => {
                out.extend_from_slice(b"<script>\np(");
                json::put_string(&mut out, frame);
                out.extend_from_slice(b");\n</script>\r\n");
            }
            Framing::Jsonp => {
                out.extend_from_slice(callback.as_bytes());
                out.extend_from_slice(b"(");
                json::put_string(&mut out, frame);
                out.extend_from_slice(b");\r\n");
            }
        }
        out.freeze()
    }
}

/// The page the htmlfile transport streams into (SockJS 0.3.3's, verbatim).
const HTMLFILE_HEAD: &str = "<!doctype html>
<html><head>
  <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />
  <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.{callback};
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>";

/// The page iframe-based transports load, which loads sockjs-client from `sockjs-client-url`.
fn iframe_page(client_url: &str) -> String {
    format!(
        "<!DOCTYPE html>
<html>
<head>
  <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />
  <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />
  <script>
    document.domain = document.domain;
    _sockjs_onload = function(){{SockJS.bootstrap_iframe();}};
  </script>
  <script src=\"{client_url}\"></script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"
    )
}

/// A receiving request: polling answers once, streaming until the response limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Receive {
    Poll,
    Stream,
}

impl Endpoint {
    async fn answer(&self, request: Request<RequestBody>) -> Response<Body> {
        let base = crate::transport::ws::PATH;
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        match route(base, &path) {
            Route::Root if method == Method::GET => text(StatusCode::OK, "Welcome to SockJS!\n"),
            Route::Iframe if method == Method::GET => self.iframe(request.headers()),
            Route::Info if method == Method::GET => {
                self.guarded(&request, |this, request| this.info(request))
            }
            Route::Info if method == Method::OPTIONS => {
                self.guarded(&request, |_, request| preflight(request, "OPTIONS, GET"))
            }
            Route::Root | Route::Iframe | Route::Info => not_allowed("GET"),
            Route::RawWebSocket => websocket_only(&method),
            Route::Session { transport: "websocket", .. } if !self.sockjs.tuning.websocket => {
                text(StatusCode::NOT_FOUND, "the websocket transport is off (sockjs-websocket)\n")
            }
            Route::Session { transport: "websocket", .. } => websocket_only(&method),
            Route::Session { id, transport } => {
                let id = id.to_owned();
                let transport = transport.to_owned();
                match self.check_origin(&request) {
                    Some(refused) => refused,
                    // Boxed: the session future is large, and the connection's future would
                    // carry its layout for the connection's whole life.
                    None => Box::pin(self.session(request, &id, &transport)).await,
                }
            }
            Route::NotFound => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// `answer` after the origin check.
    fn guarded(
        &self,
        request: &Request<RequestBody>,
        answer: impl FnOnce(&Self, &Request<RequestBody>) -> Response<Body>,
    ) -> Response<Body> {
        self.check_origin(request).unwrap_or_else(|| answer(self, request))
    }

    /// The `Origin` allowlist (`ws-origins`), as for WebSocket handshakes: 403 when refused.
    fn check_origin(&self, request: &Request<RequestBody>) -> Option<Response<Body>> {
        let origin = request.headers().get(header::ORIGIN).map(|v| v.to_str().unwrap_or("\u{0}"));
        (!self.node.auth().origin_allowed(origin))
            .then(|| text(StatusCode::FORBIDDEN, "origin not allowed (ws-origins)\n"))
    }

    fn info(&self, request: &Request<RequestBody>) -> Response<Body> {
        let info = serde_json::json!({
            "websocket": self.sockjs.tuning.websocket,
            "cookie_needed": self.sockjs.tuning.cookie_needed,
            "origins": ["*:*"],
            "entropy": rand::random::<u32>(),
        });
        let mut response = full(StatusCode::OK, "application/json; charset=UTF-8", info.to_string());
        not_cached(response.headers_mut());
        cors(request.headers(), response.headers_mut());
        response
    }

    fn iframe(&self, headers: &HeaderMap) -> Response<Body> {
        let page = iframe_page(&self.sockjs.tuning.client_url);
        let etag = format!("\"{:016x}\"", fnv1a(page.as_bytes()));
        let matches = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str());
        let mut response = if matches {
            empty(StatusCode::NOT_MODIFIED)
        } else {
            full(StatusCode::OK, "text/html; charset=UTF-8", page)
        };
        cache_for_a_year(response.headers_mut());
        response.headers_mut().insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
        response
    }

    async fn session(&self, request: Request<RequestBody>, id: &str, transport: &str) -> Response<Body> {
        let method = request.method().clone();
        let (receive, framing) = match transport {
            "xhr" => (Some(Receive::Poll), Framing::Xhr),
            "xhr_streaming" => (Some(Receive::Stream), Framing::Xhr),
            "eventsource" => (Some(Receive::Stream), Framing::EventSource),
            "htmlfile" => (Some(Receive::Stream), Framing::HtmlFile),
            "jsonp" => (Some(Receive::Poll), Framing::Jsonp),
            "xhr_send" | "jsonp_send" => (None, Framing::Xhr),
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        // xhr transports are POSTed (and preflighted); the others are GET (script tags, iframes,
        // EventSource) but for jsonp_send, a form POST.
        let expected = match transport {
            "eventsource" | "htmlfile" | "jsonp" => Method::GET,
            _ => Method::POST,
        };
        let xhr = transport.starts_with("xhr");
        if method == Method::OPTIONS && xhr {
            return preflight(&request, "OPTIONS, POST");
        }
        if method != expected {
            return not_allowed(if xhr {
                "OPTIONS, POST"
            } else if expected == Method::GET {
                "GET"
            } else {
                "POST"
            });
        }
        let jsessionid = self.sockjs.tuning.cookie_needed.then(|| jsessionid(request.headers()));
        let mut response = match receive {
            Some(receive) => self.receive(&request, id, receive, framing).await,
            None => self.send(request, id, transport == "jsonp_send").await,
        };
        if let Some(value) = jsessionid {
            let cookie =
                HeaderValue::from_str(&format!("JSESSIONID={value}; path=/")).expect("a cookie value");
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        response
    }

    async fn receive(
        &self,
        request: &Request<RequestBody>,
        id: &str,
        receive: Receive,
        framing: Framing,
    ) -> Response<Body> {
        let callback = match framing {
            Framing::HtmlFile | Framing::Jsonp => match callback(request.uri().query()) {
                Ok(callback) => callback,
                Err(refused) => return refused.response(),
            },
            Framing::Xhr | Framing::EventSource => String::new(),
        };
        let query = request.uri().query().unwrap_or("");
        let opened = self.sockjs.sessions.get_or_open(
            id,
            |sink, source| self.open(sink, source, crate::auth::query_token(query)),
            self.node.config().limits.outbound_buffer,
            self.node.config().limits.write_timeout,
        );
        let (shared, new) = match opened {
            Ok(opened) => opened,
            Err(refused) => return refused.response(),
        };
        let heartbeat = self.sockjs.tuning.heartbeat;
        let mut response = match receive {
            Receive::Poll => {
                let frame = if new {
                    framing.frame(b"o", &callback)
                } else {
                    match Receiver::attach(&shared) {
                        Ok(mut receiver) => {
                            framing.frame(&next_frame(receiver.next(heartbeat).await), &callback)
                        }
                        Err(close) => framing.frame(&close.frame(), &callback),
                    }
                };
                full(StatusCode::OK, framing.content_type(), frame)
            }
            Receive::Stream => {
                let prelude = framing.prelude(&callback);
                let stream = match Receiver::attach(&shared) {
                    Ok(receiver) => Streaming {
                        receiver: Some(receiver),
                        framing,
                        callback,
                        heartbeat,
                        left: self.sockjs.tuning.response_limit,
                        first: Some(prelude)
                            .into_iter()
                            .chain(new.then(|| framing.frame(b"o", "")))
                            .collect(),
                    },
                    Err(close) => Streaming {
                        receiver: None,
                        framing,
                        heartbeat,
                        left: 0,
                        first: vec![prelude, framing.frame(&close.frame(), &callback)],
                        callback,
                    },
                };
                let mut response = Response::new(Body::Stream(Box::pin(stream.into_stream())));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(framing.content_type()));
                response
            }
        };
        not_cached(response.headers_mut());
        cors(request.headers(), response.headers_mut());
        response
    }

    /// Starts a new session's STOMP side; refused while the node drains or is full.
    fn open(&self, sink: HttpSink, source: ChannelSource, bearer: Option<String>) -> Result<(), Refused> {
        if self.node.is_draining() {
            return Err(Refused(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down".to_owned()));
        }
        let permit = self.node.admit(self.peer).map_err(|refusal| {
            let status = match refusal {
                crate::node::Refusal::NodeFull(_) => StatusCode::SERVICE_UNAVAILABLE,
                crate::node::Refusal::AddressFull(..) => StatusCode::TOO_MANY_REQUESTS,
            };
            Refused(status, refusal.to_string())
        })?;
        let node = self.node.clone();
        let (negotiated_tx, negotiated_rx) = tokio::sync::oneshot::channel();
        let inbound = spawn_reader(source, ReadLimits::of(&node), negotiated_rx);
        let deadline = tokio::time::Instant::now() + node.config().limits.connect_timeout;
        let accepted = Accepted { transport: Transport::Sockjs, peer: self.peer, permit, deadline, bearer };
        tokio::spawn(crate::session::run(node, sink, inbound, negotiated_tx, accepted));
        Ok(())
    }

    /// `xhr_send` and `jsonp_send`: the client's messages, for its session's reader.
    async fn send(&self, request: Request<RequestBody>, id: &str, jsonp: bool) -> Response<Body> {
        let headers = request.headers().clone();
        let answer = |mut response: Response<Body>| {
            not_cached(response.headers_mut());
            cors(&headers, response.headers_mut());
            response
        };
        let Some(shared) = self.sockjs.sessions.get(id).filter(|s| s.is_open()) else {
            return answer(text(StatusCode::NOT_FOUND, "no such session\n"));
        };
        let form = jsonp
            && headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let body = match request.into_body() {
            Ok(body) => body,
            Err(http::TooLarge(limit)) => {
                let why = format!("SockJS message refused: over {limit} bytes");
                shared.fail(ReadError::TooLarge(why.clone())).await;
                return answer(text(StatusCode::PAYLOAD_TOO_LARGE, &format!("{why}\n")));
            }
        };
        let payload = if form {
            form_urlencoded::parse(&body)
                .find(|(name, _)| name == "d")
                .map(|(_, d)| Bytes::from(d.into_owned()))
        } else {
            Some(body)
        };
        let Some(payload) = payload.filter(|p| !p.is_empty()) else {
            return answer(text(StatusCode::INTERNAL_SERVER_ERROR, "Payload expected."));
        };
        let stomp = match json::decode_all(&payload) {
            Ok(stomp) => stomp,
            Err(_) => return answer(text(StatusCode::INTERNAL_SERVER_ERROR, "Broken JSON encoding.")),
        };
        if !shared.send(stomp.freeze()).await {
            return answer(text(StatusCode::NOT_FOUND, "no such session\n"));
        }
        if jsonp {
            answer(text(StatusCode::OK, "ok"))
        } else {
            let mut response = empty(StatusCode::NO_CONTENT);
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=UTF-8"));
            answer(response)
        }
    }
}

/// The `JSESSIONID` to set for load balancers that stick on it (`sockjs-cookie-needed`): the
/// client's own, or `dummy`.
fn jsessionid(headers: &HeaderMap) -> String {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| {
            *name == "JSESSIONID" && value.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        })
        .map_or_else(|| "dummy".to_owned(), |(_, value)| value.to_owned())
}

/// A receiving request's next frame: `a[...]`, `c[...]` or `h`.
fn next_frame(next: Next) -> BytesMut {
    match next {
        Next::Frames(frames) => {
            let mut out = BytesMut::with_capacity(frames.len() + 3);
            out.extend_from_slice(b"a[");
            out.extend_from_slice(&frames);
            out.extend_from_slice(b"]");
            out
        }
        Next::Close(close) => close.frame(),
        Next::Heartbeat => BytesMut::from(&b"h"[..]),
    }
}

/// A streaming response's body: frames until the close, or until `sockjs-response-limit`
/// bytes were sent (the client then opens another).
struct Streaming {
    /// `None` once the response is to end after `first`.
    receiver: Option<Receiver>,
    framing: Framing,
    callback: String,
    heartbeat: Duration,
    /// Bytes still to send before the response ends.
    left: usize,
    /// Chunks to send before waiting on the session.
    first: Vec<Bytes>,
}

impl Streaming {
    fn into_stream(self) -> impl futures_util::Stream<Item = Bytes> + Send {
        futures_util::stream::unfold(self, |mut streaming| async move {
            if !streaming.first.is_empty() {
                let chunk = streaming.first.remove(0);
                return Some((chunk, streaming));
            }
            let receiver = streaming.receiver.as_mut()?;
            let next = receiver.next(streaming.heartbeat).await;
            let closed = matches!(next, Next::Close(_));
            let chunk = streaming.framing.frame(&next_frame(next), &streaming.callback);
            streaming.left = streaming.left.saturating_sub(chunk.len());
            if closed || streaming.left == 0 {
                // Detach now: the next receiving request must not be told another is open.
                streaming.receiver = None;
            }
            Some((chunk, streaming))
        })
    }
}

/// The `c` parameter of htmlfile and jsonp: required, and only letters, digits, `_` and `.`
/// (it is written into a script).
fn callback(query: Option<&str>) -> Result<String, Refused> {
    let callback = query
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(name, _)| name == "c"))
        .map(|(_, value)| value.into_owned());
    let refused = |why: &str| Refused(StatusCode::INTERNAL_SERVER_ERROR, why.to_owned());
    match callback {
        None => Err(refused("\"callback\" parameter required")),
        Some(c)
            if c.is_empty()
                || c.len() > 64
                || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') =>
        {
            Err(refused("invalid \"callback\" parameter"))
        }
        Some(c) => Ok(c),
    }
}

/// A request refused with a status and a one-line reason.
#[derive(Debug)]
struct Refused(StatusCode, String);

impl Refused {
    fn response(self) -> Response<Body> {
        text(self.0, &self.1)
    }
}

/// A GET to a WebSocket-only path without the upgrade.
fn websocket_only(method: &Method) -> Response<Body> {
    if method == Method::GET {
        text(StatusCode::BAD_REQUEST, "Can \"Upgrade\" only to \"WebSocket\".")
    } else {
        not_allowed("GET")
    }
}

fn preflight(request: &Request<RequestBody>, methods: &'static str) -> Response<Body> {
    let mut response = empty(StatusCode::NO_CONTENT);
    let headers = response.headers_mut();
    cache_for_a_year(headers);
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(YEAR.as_secs()));
    cors(request.headers(), headers);
    response
}

/// CORS for SockJS's cross-origin transports: the request's origin (or `*` without one, or for
/// `null`, which browsers send from `file:` pages), with credentials, so cookies flow.
fn cors(request: &HeaderMap, response: &mut HeaderMap) {
    let origin = request.get(header::ORIGIN).filter(|o| o.as_bytes() != b"null");
    response.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        origin.cloned().unwrap_or(HeaderValue::from_static("*")),
    );
    response.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    if origin.is_some() {
        response.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS).filter(|h| !h.is_empty()) {
        response.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
}

fn not_cached(headers: &mut HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, must-revalidate, max-age=0"),
    );
}

fn cache_for_a_year(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000"));
    let expires = httpdate::fmt_http_date(SystemTime::now() + YEAR);
    headers.insert(header::EXPIRES, HeaderValue::from_str(&expires).expect("an HTTP date"));
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::Full(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    full(status, "text/plain; charset=UTF-8", body.to_owned())
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = status;
    response
}

/// 405, with the methods that are allowed and no body.
fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = empty(StatusCode::METHOD_NOT_ALLOWED);
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// FNV-1a, for the iframe page's ETag (stable across runs and nodes, unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_as_sockjs_lays_them_out() {
        assert_eq!(route("/ws", "/ws"), Route::Root);
        assert_eq!(route("/ws", "/ws/"), Route::Root);
        assert_eq!(route("/ws", "/ws/info"), Route::Info);
        assert_eq!(route("/ws", "/ws/websocket"), Route::RawWebSocket);
        for iframe in [
            "/ws/iframe.html",
            "/ws/iframe-a.html",
            "/ws/iframe-.html",
            "/ws/iframe-0.1.2abc-dirty.2144.html",
        ] {
            assert_eq!(route("/ws", iframe), Route::Iframe, "{iframe}");
        }
        for not in [
            "/ws/iframe.htm",
            "/ws/iframe",
            "/ws/IFRAME.HTML",
            "/ws/iframe.HTML",
            "/ws/iframe-/.html",
            "/wsx",
            "/w",
            "/ws/a",
            "/ws//",
            "/ws///",
            "/ws/a/a/",
            "/ws/a./a/xhr",
            "/ws/a/a./xhr",
            "/ws/./././xhr",
            "/ws//a/xhr",
            "/ws/a/b/c/d",
        ] {
            assert_eq!(route("/ws", not), Route::NotFound, "{not}");
        }
        assert_eq!(route("/ws", "/ws/000/abc/xhr"), Route::Session { id: "abc", transport: "xhr" });
        assert_eq!(
            route("/ws", "/ws/a/_-j%20/websocket"),
            Route::Session { id: "_-j%20", transport: "websocket" }
        );
        assert_eq!(route("/ws", "/ws/a/a/"), Route::NotFound);
    }

    #[test]
    fn transports_frame_as_the_protocol_says() {
        assert_eq!(&Framing::Xhr.frame(b"o", "")[..], b"o\n");
        assert_eq!(&Framing::EventSource.frame(b"a[\"x\"]", "")[..], b"data: a[\"x\"]\r\n\r\n");
        assert_eq!(
            &Framing::HtmlFile.frame(b"a[\"x\"]", "cb")[..],
            b"<script>\np(\"a[\\\"x\\\"]\");\n</script>\r\n"
        );
        assert_eq!(
            &Framing::Jsonp.frame(b"c[3000,\"Go away!\"]", "x")[..],
            b"x(\"c[3000,\\\"Go away!\\\"]\");\r\n"
        );
        let prelude = Framing::Xhr.prelude("");
        assert_eq!(prelude.len(), 2049);
        assert!(prelude[..2048].iter().all(|&b| b == b'h'));
        let page = Framing::HtmlFile.prelude("callback");
        assert!(page.len() > 1024);
        assert!(std::str::from_utf8(&page).unwrap().contains("var c = parent.callback;"));
        assert_eq!(&next_frame(Next::Heartbeat)[..], b"h");
    }

    #[test]
    fn callbacks_are_required_and_plain() {
        assert_eq!(callback(Some("c=%63allback")).unwrap(), "callback");
        assert_eq!(callback(Some("t=1&c=a.b_c9")).unwrap(), "a.b_c9");
        for bad in [None, Some(""), Some("c="), Some("c=alert(1)"), Some("c=a%3Bb"), Some("c=%3Cscript%3E")] {
            assert_eq!(callback(bad).unwrap_err().0, StatusCode::INTERNAL_SERVER_ERROR, "{bad:?}");
        }
    }
}
