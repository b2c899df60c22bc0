//! SockJS at `/ws`: the protocol as sockjs-client and SockJS 0.3.3 lay it out, carrying real
//! STOMP sessions, and Debian's `node-sockjs-client` forced onto each transport it has in Node
//! (websocket, xhr-streaming, xhr-polling, eventsource) on both engines. The browser-only
//! transports (htmlfile, jsonp, the iframe ones) are driven in Chromium by `browser.rs`.
//!
//! Protocol answers are checked with raw HTTP: polling requests through the test kit's HTTP
//! client, streaming ones as HTTP/1.0, whose body is the bytes up to the connection's end.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use stampede_testkit::http::{request, Response};
use stampede_testkit::keys::{Keys, Token};
use stampede_testkit::prelude::*;
use stampede_testkit::system;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const CONNECT: &str = "CONNECT\naccept-version:1.2\nhost:localhost\n\n\0";

/// `frames` as the JSON array a client sends.
fn array(frames: &[&str]) -> String {
    serde_json::to_string(frames).unwrap()
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Response {
    request(addr, method, path, headers, body.map(|b| ("text/plain", b.as_bytes())))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// The STOMP frames of one polling answer (`a[...]\n`); heart-beat answers (`h\n`) hold none.
fn frames_of(answer: &str) -> Vec<String> {
    match answer.trim_end() {
        "h" => Vec::new(),
        a => serde_json::from_str(a.strip_prefix('a').unwrap_or_else(|| panic!("not an a-frame: {a:?}")))
            .unwrap(),
    }
}

/// A session on the xhr-polling transport.
struct Polling {
    addr: SocketAddr,
    base: String,
}

impl Polling {
    async fn open(addr: SocketAddr, query: &str) -> Polling {
        let base = format!("/ws/000/{}", uuid::Uuid::new_v4());
        let opened = http(addr, "POST", &format!("{base}/xhr{query}"), &[], None).await;
        assert_eq!((opened.status, opened.body.as_str()), (200, "o\n"), "{opened:?}");
        Polling { addr, base }
    }

    async fn send(&self, frames: &[&str]) -> Response {
        http(self.addr, "POST", &format!("{}/xhr_send", self.base), &[], Some(&array(frames))).await
    }

    async fn poll(&self) -> Response {
        http(self.addr, "POST", &format!("{}/xhr", self.base), &[], None).await
    }

    /// Polls until a STOMP frame starting with `command` arrives; every frame seen.
    async fn until(&self, command: &str) -> Vec<String> {
        let mut seen = Vec::new();
        for _ in 0..20 {
            let answer = self.poll().await;
            assert_eq!(answer.status, 200, "{answer:?}");
            seen.extend(frames_of(&answer.body).into_iter().filter(|f| f != "\n"));
            if seen.iter().any(|f| f.starts_with(command)) {
                return seen;
            }
        }
        panic!("no {command} frame in {seen:?}");
    }
}

/// A streaming response read as HTTP/1.0: its body is everything up to the connection's end.
struct Streaming {
    stream: TcpStream,
    seen: String,
}

impl Streaming {
    async fn open(addr: SocketAddr, method: &str, path: &str) -> Streaming {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        Streaming { stream, seen: String::new() }
    }

    /// Reads until what arrived contains `needle`; all that arrived.
    async fn until(&mut self, needle: &str) -> &str {
        let read = async {
            while !self.seen.contains(needle) {
                let mut buf = [0; 8192];
                let n = self.stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the response ended before {needle:?}: {:?}", self.seen);
                self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        };
        tokio::time::timeout(WAIT, read).await.unwrap_or_else(|_| panic!("no {needle:?} in {:?}", self.seen));
        &self.seen
    }

    /// True once the server ends the response.
    async fn ended(&mut self) -> bool {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, self.stream.read_to_end(&mut rest)).await;
        self.seen.push_str(&String::from_utf8_lossy(&rest));
        matches!(read, Ok(Ok(_)))
    }
}

#[tokio::test]
async fn greeting_info_and_iframe_are_served_as_sockjs_clients_expect() {
    let node = TestNode::start(|_| {}).await;
    let addr = node.ws_addr();
    let greeting = http(addr, "GET", "/ws", &[], None).await;
    assert_eq!((greeting.status, greeting.body.as_str()), (200, "Welcome to SockJS!\n"));
    assert_eq!(http(addr, "GET", "/ws/", &[], None).await.body, "Welcome to SockJS!\n");
    assert_eq!(http(addr, "GET", "/ws/a/a", &[], None).await.status, 404);
    assert_eq!(http(addr, "GET", "/elsewhere", &[], None).await.status, 404, "outside /ws as before");

    let info = http(addr, "GET", "/ws/info", &[("Origin", "https://app.example")], None).await;
    assert_eq!(info.status, 200);
    assert_eq!(info.header("content-type"), Some("application/json; charset=UTF-8"));
    assert_eq!(info.header("cache-control"), Some("no-store, no-cache, must-revalidate, max-age=0"));
    assert_eq!(info.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(info.header("access-control-allow-credentials"), Some("true"));
    let json = info.json();
    assert_eq!((json["websocket"].as_bool(), json["cookie_needed"].as_bool()), (Some(true), Some(false)));
    assert_eq!(json["origins"], serde_json::json!(["*:*"]));
    let again = http(addr, "GET", "/ws/info", &[], None).await.json();
    assert_ne!(json["entropy"], again["entropy"], "fresh entropy each time");

    let preflight = http(addr, "OPTIONS", "/ws/info", &[("Origin", "null")], None).await;
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"), "null origins get *");
    assert_eq!(preflight.header("access-control-allow-methods"), Some("OPTIONS, GET"));
    assert_eq!(preflight.header("access-control-max-age"), Some("31536000"));
    assert!(preflight.header("expires").is_some());
    let preflight =
        http(addr, "OPTIONS", "/ws/abc/abc/xhr_send", &[("Access-Control-Request-Headers", "a, b")], None)
            .await;
    assert_eq!(preflight.header("access-control-allow-methods"), Some("OPTIONS, POST"));
    assert_eq!(preflight.header("access-control-allow-headers"), Some("a, b"));

    let iframe = http(addr, "GET", "/ws/iframe-1.6.1.html?t=1", &[], None).await;
    assert_eq!(iframe.status, 200);
    assert!(iframe.body.contains("SockJS.bootstrap_iframe()"), "{}", iframe.body);
    assert!(iframe.body.contains("src=\"https://cdn.jsdelivr.net/npm/sockjs-client@1/dist/sockjs.min.js\""));
    let etag = iframe.header("etag").expect("an ETag").to_owned();
    let cached = http(addr, "GET", "/ws/iframe.html", &[("If-None-Match", &etag)], None).await;
    assert_eq!((cached.status, cached.body.as_str()), (304, ""));
    assert_eq!(http(addr, "GET", "/ws/iframe.htm", &[], None).await.status, 404);

    // Wrong methods, and a websocket path asked for without the upgrade.
    let wrong = http(addr, "GET", "/ws/000/abc/xhr", &[], None).await;
    assert_eq!((wrong.status, wrong.header("allow")), (405, Some("OPTIONS, POST")));
    let plain = http(addr, "GET", "/ws/000/abc/websocket", &[], None).await;
    assert_eq!(plain.status, 400);
    assert!(plain.body.contains("Can \"Upgrade\" only to \"WebSocket\"."), "{plain:?}");
    assert_eq!(http(addr, "POST", "/ws/000/abc/websocket", &[], None).await.status, 405);
    node.shutdown().await;
}

#[tokio::test]
async fn xhr_polling_carries_a_stomp_session() {
    let node = TestNode::start(|_| {}).await;
    let mut bystander = node.connect_bystander(Transport::Ws).await;
    bystander.subscribe("/topic/polled", "b", &[]).await;
    let session = Polling::open(node.ws_addr(), "").await;
    let sent = session.send(&[CONNECT]).await;
    assert_eq!(sent.status, 204, "{sent:?}");
    assert_eq!(sent.header("content-type"), Some("text/plain; charset=UTF-8"));
    let connected = session.until("CONNECTED").await;
    assert!(connected[0].contains("version:1.2"), "{connected:?}");

    let subscribe = "SUBSCRIBE\nid:0\ndestination:/topic/polled\nreceipt:r\n\n\0";
    let body = "h\u{e9}llo \u{2603} \u{2028} \"q\" \\";
    let send = format!("SEND\ndestination:/topic/polled\n\n{body}\0");
    assert_eq!(session.send(&[subscribe]).await.status, 204);
    session.until("RECEIPT").await;
    assert_eq!(session.send(&[&send]).await.status, 204);
    let message = session.until("MESSAGE").await;
    assert!(message.last().unwrap().ends_with(&format!("\n\n{body}\0")), "{message:?}");
    assert_eq!(body_of(&bystander.recv_message().await), body, "the same broker behind both");
    bystander.send("/topic/polled", "from ws", &[]).await;
    assert_eq!(body_of(&bystander.recv_message().await), "from ws");
    let message = session.until("MESSAGE").await;
    assert!(message.last().unwrap().ends_with("\n\nfrom ws\0"), "{message:?}");

    // Messages sent while nobody polls wait for the next poll, in order.
    for i in 0..5 {
        bystander.send("/topic/polled", &format!("m{i}"), &[]).await;
    }
    let mut bodies = Vec::new();
    while bodies.len() < 5 {
        for frame in frames_of(&session.poll().await.body) {
            bodies.push(frame.rsplit("\n\n").next().unwrap().trim_end_matches('\0').to_owned());
        }
    }
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(bystander.recv_messages(5).await.len(), 5);
    assert_eq!(session.send(&["DISCONNECT\nreceipt:bye\n\n\0"]).await.status, 204);
    session.until("RECEIPT").await;
    assert_eq!(session.poll().await.body, "c[3000,\"Go away!\"]\n", "then the close frame");
    assert_eq!(session.poll().await.body, "c[3000,\"Go away!\"]\n", "for as long as the session is kept");
    bystander.assert_quiet().await;
    node.shutdown().await;
}

fn body_of(frame: &stampede::stomp::Frame) -> String {
    String::from_utf8(frame.body.to_vec()).unwrap()
}

#[tokio::test]
async fn streaming_transports_frame_their_own_way_and_end_at_the_response_limit() {
    let node = TestNode::start(|c| c.sockjs.response_limit = 4096).await;
    let addr = node.ws_addr();

    let id = uuid::Uuid::new_v4();
    let mut xhr = Streaming::open(addr, "POST", &format!("/ws/000/{id}/xhr_streaming")).await;
    let seen = xhr.until("o\n").await;
    assert!(
        seen.contains(&format!("\r\n\r\n{}\no\n", "h".repeat(2048))),
        "the 2 KiB prelude, then o: {seen:?}"
    );
    let post = |frames: String| async move {
        http(addr, "POST", &format!("/ws/000/{id}/xhr_send"), &[], Some(&frames)).await.status
    };
    assert_eq!(post(array(&[CONNECT])).await, 204);
    xhr.until("a[\"CONNECTED\\n").await;
    let big = "x".repeat(1000);
    for _ in 0..5 {
        assert_eq!(post(array(&[&format!("SEND\ndestination:/topic/none\n\n{big}\0")])).await, 204);
    }
    let subscribe = "SUBSCRIBE\nid:0\ndestination:/topic/s\n\n\0";
    let send = format!("SEND\ndestination:/topic/s\n\n{big}\0");
    assert_eq!(post(array(&[subscribe, &send, &send, &send, &send, &send])).await, 204);
    assert!(
        xhr.ended().await,
        "the response ends past sockjs-response-limit: {:?}",
        &xhr.seen[xhr.seen.len() - 200..]
    );
    // The client opens the next one, which goes on with the session (no second `o`).
    let mut next = Streaming::open(addr, "POST", &format!("/ws/000/{id}/xhr_streaming")).await;
    next.until(&"h".repeat(2048)).await;
    assert_eq!(post(array(&[&send])).await, 204);
    let seen = next.until("MESSAGE").await.to_owned();
    assert!(!seen.contains("\no\n"), "{seen:?}");

    let id = uuid::Uuid::new_v4();
    let mut events = Streaming::open(addr, "GET", &format!("/ws/000/{id}/eventsource")).await;
    let seen = events.until("data: o\r\n\r\n").await;
    assert!(seen.contains("text/event-stream"), "{seen:?}");
    assert_eq!(
        http(addr, "POST", &format!("/ws/000/{id}/xhr_send"), &[], Some(&array(&[CONNECT]))).await.status,
        204
    );
    events.until("data: a[\"CONNECTED\\n").await;

    let id = uuid::Uuid::new_v4();
    let mut page = Streaming::open(addr, "GET", &format!("/ws/000/{id}/htmlfile?c=%63allback")).await;
    let seen = page.until("<script>\np(\"o\");\n</script>\r\n").await;
    assert!(seen.contains("var c = parent.callback;"), "{seen:?}");
    assert_eq!(
        http(addr, "POST", &format!("/ws/000/{id}/xhr_send"), &[], Some(&array(&[CONNECT]))).await.status,
        204
    );
    page.until("<script>\np(\"a[\\\"CONNECTED\\\\n").await;
    node.shutdown().await;
}

#[tokio::test]
async fn jsonp_polling_and_form_sends() {
    let node = TestNode::start(|_| {}).await;
    let addr = node.ws_addr();
    let base = format!("/ws/000/{}", uuid::Uuid::new_v4());
    let opened = http(addr, "GET", &format!("{base}/jsonp?c=cb"), &[], None).await;
    assert_eq!((opened.status, opened.body.as_str()), (200, "cb(\"o\");\r\n"));
    assert_eq!(opened.header("content-type"), Some("application/javascript; charset=UTF-8"));
    let form: String =
        form_urlencoded::Serializer::new(String::new()).append_pair("d", &array(&[CONNECT])).finish();
    let sent = request(
        addr,
        "POST",
        &format!("{base}/jsonp_send"),
        &[],
        Some(("application/x-www-form-urlencoded", form.as_bytes())),
    )
    .await
    .unwrap();
    assert_eq!((sent.status, sent.body.as_str()), (200, "ok"));
    let polled = http(addr, "GET", &format!("{base}/jsonp?c=cb"), &[], None).await;
    assert!(polled.body.starts_with("cb(\"a[\\\"CONNECTED\\\\n"), "{polled:?}");
    // A raw (not form) body works too.
    let raw = http(
        addr,
        "POST",
        &format!("{base}/jsonp_send"),
        &[],
        Some(&array(&["DISCONNECT\nreceipt:x\n\n\0"])),
    )
    .await;
    assert_eq!(raw.body, "ok");
    let polled = http(addr, "GET", &format!("{base}/jsonp?c=cb"), &[], None).await;
    assert!(polled.body.contains("RECEIPT"), "{polled:?}");
    node.shutdown().await;
}

/// Each kind of bad input gets the protocol's answer; the session it was aimed at carries on
/// where the protocol says so, and a client on another connection never notices.
#[tokio::test]
async fn bad_input_gets_the_protocols_answers_and_no_one_else_notices() {
    let node = TestNode::start(|c| c.limits.max_frame_size = 1024).await;
    let addr = node.ws_addr();
    let mut bystander = node.connect_bystander(Transport::Ws).await;
    bystander.subscribe("/topic/bystander", "b", &[]).await;

    let unknown = http(addr, "POST", "/ws/000/nobody/xhr_send", &[], Some("[\"x\"]")).await;
    assert_eq!(unknown.status, 404);

    let session = Polling::open(addr, "").await;
    let broken = http(addr, "POST", &format!("{}/xhr_send", session.base), &[], Some("[\"x")).await;
    assert_eq!((broken.status, broken.body.as_str()), (500, "Broken JSON encoding."));
    for empty in [None, Some("")] {
        let answer = http(addr, "POST", &format!("{}/xhr_send", session.base), &[], empty).await;
        assert_eq!((answer.status, answer.body.as_str()), (500, "Payload expected."));
    }
    for form in ["", "d=", "p=p"] {
        let answer = request(
            addr,
            "POST",
            &format!("{}/jsonp_send", session.base),
            &[],
            Some(("application/x-www-form-urlencoded", form.as_bytes())),
        )
        .await
        .unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (500, "Payload expected."), "{form:?}");
    }
    for callback in ["", "?c=", "?c=alert(1)%3B", "?c=%3Cscript%3E"] {
        let answer =
            http(addr, "GET", &format!("/ws/000/{}/jsonp{callback}", uuid::Uuid::new_v4()), &[], None).await;
        assert_eq!(answer.status, 500, "{callback}: {answer:?}");
        assert!(answer.body.contains("\"callback\" parameter"), "{answer:?}");
        let answer =
            http(addr, "GET", &format!("/ws/000/{}/htmlfile{callback}", uuid::Uuid::new_v4()), &[], None)
                .await;
        assert_eq!(answer.status, 500, "{callback}: {answer:?}");
    }
    // After all that, the session still works.
    assert_eq!(session.send(&[CONNECT]).await.status, 204);
    session.until("CONNECTED").await;

    // Two receiving requests at once: the second is told, the first carries on.
    let mut first = Streaming::open(addr, "POST", &format!("{}/xhr_streaming", session.base)).await;
    first.until(&"h".repeat(2048)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = session.poll().await;
    assert_eq!(second.body, "c[2010,\"Another connection still open\"]\n");
    let mut second = Streaming::open(addr, "POST", &format!("{}/xhr_streaming", session.base)).await;
    second.until("c[2010,\"Another connection still open\"]\n").await;
    assert!(second.ended().await);
    assert_eq!(session.send(&["SEND\ndestination:/topic/x\nreceipt:1\n\n\0"]).await.status, 204);
    first.until("RECEIPT").await;

    // An oversized send: 413, and the session ends with an ERROR saying why, like any transport.
    let huge = array(&[&format!("SEND\ndestination:/topic/x\n\n{}\0", "y".repeat(100 * 1024))]);
    let refused = http(addr, "POST", &format!("{}/xhr_send", session.base), &[], Some(&huge)).await;
    assert_eq!(refused.status, 413, "{refused:?}");
    let seen = first.until("c[1009,\"message too big\"]").await.to_owned();
    assert!(seen.contains("ERROR") && seen.contains("SockJS message refused"), "{seen:?}");
    // A frame over max-frame-size inside an allowed send gets STOMP's own refusal.
    let session = Polling::open(addr, "").await;
    let large = format!("SEND\ndestination:/topic/x\n\n{}\0", "z".repeat(2000));
    assert_eq!(session.send(&[CONNECT, &large]).await.status, 204);
    let frames = session.until("ERROR").await;
    assert!(frames.iter().any(|f| f.contains("max-frame-size")), "{frames:?}");

    bystander.send("/topic/bystander", "still here", &[]).await;
    assert_eq!(body_of(&bystander.recv_message().await), "still here");
    node.shutdown().await;
}

#[tokio::test]
async fn a_session_nobody_polls_ends_after_the_disconnect_delay() {
    let node = TestNode::start(|c| c.sockjs.disconnect_delay = Duration::from_millis(300)).await;
    let session = Polling::open(node.ws_addr(), "").await;
    assert_eq!(session.send(&[CONNECT]).await.status, 204);
    session.until("CONNECTED").await;
    assert_eq!(node.connections().await, 1.0);
    // No poll from here on: the session ends, its place in the limits is given back.
    node.await_connections(0.0).await;
    let after = session.poll().await;
    assert!(
        after.body.starts_with("c[") || after.body == "o\n",
        "the close frame, or a new session: {after:?}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn the_token_on_the_sockjs_url_authenticates_and_origins_are_checked() {
    let keys = Keys::new();
    let node = TestNode::start(|c| {
        keys.secure(c);
        c.origins.allowed = Some(vec!["https://app.example".to_owned()]);
    })
    .await;
    let addr = node.ws_addr();
    let origin = [("Origin", "https://app.example")];
    let evil = http(
        addr,
        "POST",
        &format!("/ws/000/{}/xhr", uuid::Uuid::new_v4()),
        &[("Origin", "https://evil.example")],
        None,
    )
    .await;
    assert_eq!(evil.status, 403);
    assert_eq!(http(addr, "GET", "/ws/info", &[("Origin", "https://evil.example")], None).await.status, 403);

    let token = Token::for_user("ops").hs256();
    let base = format!("/ws/000/{}", uuid::Uuid::new_v4());
    let opened = http(addr, "POST", &format!("{base}/xhr?token={token}"), &origin, None).await;
    assert_eq!(opened.body, "o\n");
    let session = Polling { addr, base };
    let sent =
        http(addr, "POST", &format!("{}/xhr_send", session.base), &origin, Some(&array(&[CONNECT]))).await;
    assert_eq!(sent.status, 204);
    let frames = session.until("CONNECTED").await;
    assert!(frames[0].contains("user-name:ops"), "{frames:?}");

    // Without a token or login, CONNECT is refused as on any transport.
    let base = format!("/ws/000/{}", uuid::Uuid::new_v4());
    assert_eq!(http(addr, "POST", &format!("{base}/xhr"), &origin, None).await.body, "o\n");
    let session = Polling { addr, base };
    http(addr, "POST", &format!("{}/xhr_send", session.base), &origin, Some(&array(&[CONNECT]))).await;
    let frames = session.until("ERROR").await;
    assert!(frames.last().unwrap().contains("message:"), "{frames:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn the_websocket_transport_frames_stomp_in_sockjs_messages() {
    let node = TestNode::start(|_| {}).await;
    let url = format!("ws://{}/ws/000/{}/websocket", node.ws_addr(), uuid::Uuid::new_v4());
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    let first = tokio::time::timeout(WAIT, ws.next()).await.expect("a message").expect("open").unwrap();
    assert_eq!(first, Message::text("o"));
    // A frame cut across messages, and an empty message, are fine.
    ws.send(Message::text("[\"CONNECT\\naccept-version:1.2\\n")).await.unwrap();
    ws.send(Message::text("")).await.unwrap();
    ws.send(Message::text("host:localhost\\n\\n\\u0000\"]")).await.unwrap();
    let reply = loop {
        if let Some(Ok(Message::Text(t))) = ws.next().await {
            break t.to_string();
        }
    };
    assert!(reply.starts_with("a[\"CONNECTED\\n"), "{reply}");
    ws.send(Message::text("[\"a")).await.unwrap();
    ws.send(Message::text("\\x\"]")).await.unwrap();
    let mut rest = Vec::new();
    while let Ok(Some(Ok(message))) = tokio::time::timeout(WAIT, ws.next()).await {
        rest.push(message);
    }
    assert!(
        rest.iter()
            .any(|m| matches!(m, Message::Text(t) if t.contains("ERROR") && t.contains("SockJS JSON"))),
        "broken JSON ends the session with an ERROR: {rest:?}"
    );
    assert!(rest.iter().any(|m| matches!(m, Message::Close(_))), "{rest:?}");
    node.shutdown().await;
}

/// Debian's sockjs-client in Node, on `transport`, against `url`: the script's JSON lines.
struct NodeClient {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl NodeClient {
    fn start(url: &str, transport: &str, topic: &str) -> NodeClient {
        let node = system::require("node", "nodejs");
        system::require_file("/usr/share/nodejs/sockjs-client/package.json", "node-sockjs-client");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sockjs/stomp_client.js");
        let mut child = tokio::process::Command::new(node)
            .arg(script)
            .args([url, transport, topic])
            .env("NODE_PATH", "/usr/share/nodejs:/usr/lib/nodejs")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        NodeClient { child, lines }
    }

    async fn event(&mut self, name: &str) -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no {name} event from sockjs-client"))
            .unwrap()
            .unwrap_or_else(|| panic!("sockjs-client ended before {name}"));
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}"));
        assert_eq!(event["event"], name, "{event}");
        event
    }
}

variants! {
    node_sockjs_client_on_each_of_its_transports:
        memory => Variant::memory(Transport::Ws),
        redis3 => Variant::redis(3, Transport::Ws);
}

/// For each transport sockjs-client has in Node: a STOMP session (CONNECT, SUBSCRIBE with a
/// receipt, SEND, its own message back, heart-beats both ways, DISCONNECT with a receipt) on
/// the first node, with a WebSocket client on the last node of the cluster publishing to it and
/// receiving from it.
async fn node_sockjs_client_on_each_of_its_transports(variant: Variant) {
    let cluster = stampede_testkit::local::Cluster::start(variant, |c| {
        c.heartbeat.send = Duration::from_millis(200);
        c.heartbeat.receive = Duration::from_millis(200);
    })
    .await;
    let url = format!("http://{}/ws", cluster.node(0).ws_addr());
    let last = cluster.node(cluster.variant.nodes - 1);
    for transport in ["websocket", "xhr-streaming", "xhr-polling", "eventsource"] {
        let topic = format!("/topic/sockjs-{transport}");
        let mut peer = last.connect(Transport::Ws, &[]).await;
        peer.subscribe(&topic, "p", &[]).await;
        cluster.settle(1).await;
        let mut client = NodeClient::start(&url, transport, &topic);
        client.event("echoed").await;
        let from_sockjs = body_of(&peer.recv_message().await);
        assert_eq!(from_sockjs, "h\u{e9}llo \u{2603} \u{2028} \"quoted\" \\ end", "{transport}");
        peer.send(&topic, "from the other side", &[]).await;
        let done = client.event("done").await;
        assert_eq!(done["transport"], transport, "{done}");
        assert_eq!(done["version"], "1.2", "{done}");
        assert_eq!(done["heartBeat"], "200,200", "{done}");
        assert_eq!(done["messages"][1], "from the other side", "{done}");
        assert!(
            done["heartbeats"].as_u64().unwrap() >= 2,
            "the server's heart-beats arrive over {transport}: {done}"
        );
        assert!(client.child.wait().await.unwrap().success(), "{transport}");
        peer.disconnect().await;
    }
    cluster.node(0).await_connections(0.0).await;
}

/// SIGTERM's drain reaches SockJS sessions as any other: an ERROR, then the close frame 1012.
#[tokio::test]
async fn a_drain_closes_sockjs_sessions_with_1012() {
    let mut node = TestNode::start(|c| c.drain_period = Duration::from_millis(200)).await;
    let addr = node.ws_addr();
    let id = uuid::Uuid::new_v4();
    let mut stream = Streaming::open(addr, "POST", &format!("/ws/000/{id}/xhr_streaming")).await;
    stream.until("o\n").await;
    assert_eq!(
        http(addr, "POST", &format!("/ws/000/{id}/xhr_send"), &[], Some(&array(&[CONNECT]))).await.status,
        204
    );
    stream.until("CONNECTED").await;
    node.begin_shutdown();
    let seen = stream.until("c[1012,\"server restarting\"]\n").await.to_owned();
    assert!(seen.contains("a[\"ERROR\\n"), "{seen:?}");
    assert!(stream.ended().await, "the response ends with the session");
    node.shutdown().await;
}

/// A SockJS client that stops polling is a slow consumer like a socket that stops reading: its
/// frames wait up to `outbound-buffer`, then the policy applies; the publisher and a bystander
/// never notice.
#[tokio::test]
async fn a_session_that_stops_polling_is_a_slow_consumer() {
    let node = TestNode::start(|c| {
        c.limits.max_frame_size = 4096;
        c.limits.outbound_buffer = 16 * 1024;
        c.limits.write_timeout = Some(Duration::from_millis(300));
        c.sockjs.disconnect_delay = Duration::from_secs(60);
    })
    .await;
    let mut bystander = node.connect_bystander(Transport::Ws).await;
    bystander.subscribe("/topic/bystander", "b", &[]).await;
    let session = Polling::open(node.ws_addr(), "").await;
    assert_eq!(
        session.send(&[CONNECT, "SUBSCRIBE\nid:0\ndestination:/topic/flood\nreceipt:r\n\n\0"]).await.status,
        204
    );
    session.until("RECEIPT").await;
    let mut publisher = node.connect(Transport::Tcp, &[]).await;
    let body = "x".repeat(1000);
    for _ in 0..200 {
        publisher.send("/topic/flood", &body, &[]).await;
    }
    publisher.publish("/topic/bystander", "after the flood", &[]).await;
    assert_eq!(body_of(&bystander.recv_message().await), "after the flood");
    // Only the bystander and the publisher are left: the SockJS session was cut.
    node.await_connections(2.0).await;
    let mut last = String::new();
    for _ in 0..50 {
        last = session.poll().await.body;
        if last.starts_with('c') {
            break;
        }
    }
    assert_eq!(last, "c[1008,\"slow consumer\"]\n");
    node.shutdown().await;
}

variants! {
    htmlfile_and_jsonp_carry_stomp:
        memory => Variant::memory(Transport::Ws),
        redis1 => Variant::redis(1, Transport::Ws);
}

/// The two browser-only transports (node-sockjs-client has neither), on each engine: a STOMP
/// session subscribes and gets its own message back through the engine.
async fn htmlfile_and_jsonp_carry_stomp(variant: Variant) {
    let cluster = stampede_testkit::local::Cluster::start(variant, |_| {}).await;
    let addr = cluster.node(0).ws_addr();
    let stomp = |topic: &str| {
        [
            CONNECT.to_owned(),
            format!("SUBSCRIBE\nid:0\ndestination:{topic}\nreceipt:r\n\n\0"),
            format!("SEND\ndestination:{topic}\n\nover {topic}\0"),
        ]
    };

    let id = uuid::Uuid::new_v4();
    let mut page = Streaming::open(addr, "GET", &format!("/ws/000/{id}/htmlfile?c=cb")).await;
    page.until("p(\"o\");").await;
    let frames = stomp("/topic/htmlfile");
    let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
    assert_eq!(
        http(addr, "POST", &format!("/ws/000/{id}/xhr_send"), &[], Some(&array(&frames))).await.status,
        204
    );
    page.until("over /topic/htmlfile").await;

    let base = format!("/ws/000/{}", uuid::Uuid::new_v4());
    assert_eq!(http(addr, "GET", &format!("{base}/jsonp?c=cb"), &[], None).await.body, "cb(\"o\");\r\n");
    let frames = stomp("/topic/jsonp");
    let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
    let form: String =
        form_urlencoded::Serializer::new(String::new()).append_pair("d", &array(&frames)).finish();
    let sent = request(
        addr,
        "POST",
        &format!("{base}/jsonp_send"),
        &[],
        Some(("application/x-www-form-urlencoded", form.as_bytes())),
    )
    .await
    .unwrap();
    assert_eq!(sent.body, "ok");
    let mut seen = String::new();
    for _ in 0..20 {
        seen.push_str(&http(addr, "GET", &format!("{base}/jsonp?c=cb"), &[], None).await.body);
        if seen.contains("over /topic/jsonp") {
            break;
        }
    }
    assert!(seen.contains("MESSAGE") && seen.contains("over /topic/jsonp"), "{seen}");
}
