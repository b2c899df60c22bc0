//! Applications (issue #15): what a client SENDs to an application destination (`/app/...`)
//! reaches the application, through STOMP workers (backends consuming the destination as a
//! queue) or an HTTP backend; backends answer one session, a user, a topic; `reply-to`
//! temporary queues give request/response; the connect and subscribe hooks take part in those
//! decisions; session events tell the application who came and went.
//!
//! Every scenario about delivery runs on every engine variant (see `every_engine!` in the test
//! kit): on three Redis nodes the client, the backends and the other sessions sit on different
//! nodes. The hooks are the node's own decisions and run on one memory node, over both
//! transports. Settings are given as an operator writes them (`apply_flags`), by their
//! documented names.
//!
//! The HTTP side of the application (backends and hooks) is [`AppServer`], a real HTTP server on
//! 127.0.0.1 that records every request and answers as the scenario scripts it: well, badly
//! (not JSON, the wrong shape, 50 MB, too late, never) or not at all (nothing listening).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header::CONTENT_TYPE, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use stampede::stomp::{Command, Frame};
use stampede_testkit::prelude::*;
use stampede_testkit::process::free_port;
use tokio::task::JoinHandle;
use tokio::time::Instant;

every_engine!(
    workers_share_application_messages_stamped_by_the_node,
    app_prefixes_name_the_application_destinations,
    clients_cannot_consume_application_or_reply_destinations,
    messages_wait_for_a_worker_and_a_nack_redelivers,
    a_gone_workers_unacked_messages_go_to_the_other,
    backends_answer_one_session_on_whichever_node_holds_it,
    reply_to_a_temporary_queue_reaches_the_sender_only,
    http_backend_gets_the_documented_request_and_its_answer_is_delivered,
    bad_http_backends_fail_as_documented_and_block_nobody,
    session_events_reach_the_backend_once_each,
);
both_transports!(
    connect_hook_names_the_user_and_roles_or_refuses,
    subscribe_hook_allows_or_refuses_the_patterns_it_is_asked_for,
);

/// The passcode that makes a session a backend.
const SECRET: &str = "backend-secret-0123456789";
/// The application destination the workers consume.
const APP: &str = "/app/chat";
const NEWS: &str = "/topic/news";
/// The prefix of every failure's text, as the sender reads it.
const FAILED: &str = "application backend failed: ";
/// How long one HTTP backend call may take in these scenarios.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one hook call may take in these scenarios.
const HOOK_TIMEOUT: Duration = Duration::from_millis(500);

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Backends by the secret passcode; application destinations under the default `/app/`.
fn backends(c: &mut stampede::config::Config) {
    apply_flags(c, &[("app-backend-secret", SECRET)]);
}

/// A backend connected to client `i`'s node as `login`.
async fn backend(cluster: &Cluster, i: usize, login: &str) -> Client {
    cluster.node(i).connect(cluster.t(), &[("login", login), ("passcode", SECRET)]).await
}

/// Reads MESSAGE frames from `workers` until `n` arrived over all of them, then asserts none
/// gets more; returns each with the index of the worker that got it.
async fn take_from(workers: &mut [Client], n: usize) -> Vec<(usize, Frame)> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} messages reached the workers within {WAIT:?}",
            got.len()
        );
        for (i, worker) in workers.iter_mut().enumerate() {
            match worker.try_recv_message(Duration::from_millis(20)).await {
                Ok(message) => got.push((i, message)),
                Err(e) if e.is_timeout() => {}
                Err(e) => panic!("worker {i}: {e}"),
            }
        }
    }
    for worker in workers {
        worker.assert_quiet().await;
    }
    got
}

/// The `x-stampede-*` headers of `frame`, each as often as it came, sorted, but the message id
/// (a fresh UUID per application message: checked here to be there once on one, compared by
/// [`message_id`]).
fn stamped(frame: &Frame) -> Vec<(String, String)> {
    if frame.get("x-stampede-destination").is_some() {
        message_id(frame);
    }
    let mut headers: Vec<_> = frame
        .headers
        .iter()
        .filter(|(name, _)| name.starts_with("x-stampede-") && name != "x-stampede-message-id")
        .cloned()
        .collect();
    headers.sort();
    headers
}

/// The application message's own id: one `x-stampede-message-id`, a UUID.
fn message_id(frame: &Frame) -> String {
    let ids: Vec<&str> = frame
        .headers
        .iter()
        .filter(|(name, _)| name == "x-stampede-message-id")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(ids.len(), 1, "one x-stampede-message-id in {}", show(frame));
    assert!(uuid::Uuid::parse_str(ids[0]).is_ok(), "a UUID, not {:?}", ids[0]);
    ids[0].to_owned()
}

/// What the node stamps on a message `session` (of `user`, on `node`) sent to `destination`.
fn stamp(destination: &str, node: &str, session: &str, user: Option<&str>) -> Vec<(String, String)> {
    let mut headers = vec![
        ("x-stampede-destination".to_owned(), destination.to_owned()),
        ("x-stampede-node".to_owned(), node.to_owned()),
        ("x-stampede-session".to_owned(), session.to_owned()),
    ];
    headers.extend(user.map(|user| ("x-stampede-user".to_owned(), user.to_owned())));
    headers.sort();
    headers
}

/// The stamped headers a client tries to forge.
const FORGED: [(&str, &str); 5] = [
    ("x-stampede-user", "mallory"),
    ("x-stampede-session", "forged-session"),
    ("x-stampede-node", "forged-node"),
    ("x-stampede-destination", "/app/admin"),
    ("x-stampede-role", "backend"),
];

// === STOMP workers ===

/// Two workers on other nodes share a client's messages, each message once; what they get is
/// stamped by the sender's node (the client's forgeries replaced or gone), its other headers kept.
/// A message sent in a transaction reaches them at COMMIT.
async fn workers_share_application_messages_stamped_by_the_node(v: Variant) {
    let cluster = Cluster::start(v, backends).await;
    let mut workers = [backend(&cluster, 1, "worker-a").await, backend(&cluster, 2, "worker-b").await];
    for worker in &mut workers {
        worker.subscribe(APP, "app", &[]).await;
    }
    let mut ann = cluster.connect_as(0, "ann").await;
    for i in 0..6 {
        let mut headers = vec![("content-type", "text/plain"), ("x-custom", "kept")];
        headers.extend(FORGED);
        ann.publish(APP, &format!("m{i}"), &headers).await;
    }
    let got = take_from(&mut workers, 6).await;
    let mut bodies: Vec<String> = got.iter().map(|(_, m)| body(m)).collect();
    bodies.sort();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4", "m5"], "each message to exactly one worker");
    let node = cluster.node(0).node_id();
    for (_, message) in &got {
        assert_eq!(header(message, "destination"), APP, "{}", show(message));
        assert_eq!(stamped(message), stamp(APP, node, ann.session(), Some("ann")), "{}", show(message));
        assert_eq!((header(message, "content-type"), header(message, "x-custom")), ("text/plain", "kept"));
    }

    // Anonymous: no user is stamped, and a forged one is gone.
    let mut anonymous = cluster.connect(1).await;
    anonymous.publish(APP, "anonymous", &FORGED).await;
    let (_, message) = take_from(&mut workers, 1).await.remove(0);
    assert_eq!(body(&message), "anonymous");
    assert_eq!(stamped(&message), stamp(APP, cluster.node(1).node_id(), anonymous.session(), None));

    // A transaction: nothing before COMMIT.
    ann.request(Frame::new(Command::Begin).with_header("transaction", "t1")).await;
    ann.send(APP, "in a transaction", &[("transaction", "t1")]).await;
    for worker in &mut workers {
        worker.assert_quiet().await;
    }
    ann.request(Frame::new(Command::Commit).with_header("transaction", "t1")).await;
    let (_, message) = take_from(&mut workers, 1).await.remove(0);
    assert_eq!(body(&message), "in a transaction");
    assert_eq!(stamped(&message), stamp(APP, node, ann.session(), Some("ann")));

    // A backend without a login is user `backend`.
    let mut nameless = cluster.node(2).connect(cluster.t(), &[("passcode", SECRET)]).await;
    nameless.publish(APP, "from a backend", &[]).await;
    let (_, message) = take_from(&mut workers, 1).await.remove(0);
    assert_eq!(stamped(&message), stamp(APP, cluster.node(2).node_id(), nameless.session(), Some("backend")));
    cluster.shutdown().await;
}

/// `app-prefixes` names the application destinations: a SEND there reaches the workers, on
/// whichever node; `/app/` is then no destination at all.
async fn app_prefixes_name_the_application_destinations(v: Variant) {
    let cluster = Cluster::start(v, |c| {
        apply_flags(c, &[("app-prefixes", "/svc/,/rpc/"), ("app-backend-secret", SECRET)]);
    })
    .await;
    let mut worker = backend(&cluster, 1, "worker").await;
    worker.subscribe("/svc/orders", "o", &[]).await;
    worker.subscribe("/rpc/quote", "q", &[]).await;
    let mut ann = cluster.connect_as(0, "ann").await;
    ann.publish("/svc/orders", "order", &[]).await;
    ann.publish("/rpc/quote", "quote", &[]).await;
    let mut got = worker.recv_messages(2).await;
    got.sort_by_key(body);
    for (message, (destination, text)) in got.iter().zip([("/svc/orders", "order"), ("/rpc/quote", "quote")])
    {
        assert_eq!(body(message), text);
        assert_eq!(
            stamped(message),
            stamp(destination, cluster.node(0).node_id(), ann.session(), Some("ann"))
        );
    }
    worker.assert_quiet().await;
    let error = ann.request_refused(send_frame(APP, "x", &[])).await;
    assert_error(&error, "unknown destination");
    cluster.shutdown().await;
}

/// A client without the backend role that SUBSCRIBEs to an application destination gets the
/// documented ERROR and is closed (a wrong backend passcode is no backend); so does one
/// subscribing to a temporary or reply queue. A bystander keeps receiving meanwhile.
async fn clients_cannot_consume_application_or_reply_destinations(v: Variant) {
    let cluster = Cluster::start(v, backends).await;
    let mut bystander = cluster.connect_as(1, "witness").await;
    bystander.subscribe(NEWS, "n", &[]).await;
    let mut publisher = cluster.connect(2).await;
    let refusal = format!(
        "not authorized to subscribe to {APP}: application destinations are consumed by backends (role backend)"
    );
    let mut ann = cluster.connect_as(0, "ann").await;
    let error = ann.request_refused(subscribe_frame(APP, "s")).await;
    assert_eq!(header(&error, "message"), refusal);
    ann.expect_closed(WAIT).await;
    let mut pretender =
        cluster.node(0).connect(cluster.t(), &[("login", "worker"), ("passcode", "not-the-secret")]).await;
    let error = pretender.request_refused(subscribe_frame(APP, "s")).await;
    assert_eq!(header(&error, "message"), refusal);
    pretender.expect_closed(WAIT).await;

    // The reply queue of a real session, and temporary queues: nobody subscribes to those.
    let mut asker = cluster.connect_as(2, "asker").await;
    let mut worker = backend(&cluster, 0, "worker").await;
    worker.subscribe(APP, "app", &[]).await;
    asker.publish(APP, "?", &[("reply-to", "/temp-queue/answers")]).await;
    let reply_to = header(&worker.recv_message().await, "reply-to").to_owned();
    for destination in ["/temp-queue/answers", reply_to.as_str()] {
        for login in ["asker", "other"] {
            let mut client = cluster.connect_as(1, login).await;
            client.request_refused(subscribe_frame(destination, "s")).await;
            client.expect_closed(WAIT).await;
        }
        worker.request_refused(subscribe_frame(destination, "t")).await;
        worker.expect_closed(WAIT).await;
        worker = backend(&cluster, 0, "worker").await;
    }

    publisher.publish(NEWS, "still here", &[]).await;
    assert_eq!(body(&bystander.recv_message().await), "still here");
    bystander.assert_quiet().await;
    cluster.shutdown().await;
}

/// Messages sent while no worker listens are kept and delivered, in order, to the first that
/// subscribes; a NACK redelivers, flagged; acknowledged messages are gone for good.
async fn messages_wait_for_a_worker_and_a_nack_redelivers(v: Variant) {
    let cluster = Cluster::start(v, backends).await;
    let mut ann = cluster.connect_as(0, "ann").await;
    for i in 1..=3 {
        ann.publish(APP, &i.to_string(), &[]).await;
    }
    let mut worker = backend(&cluster, 1, "worker").await;
    worker.subscribe(APP, "app", &[("ack", "client-individual"), ("prefetch-count", "3")]).await;
    let first = worker.recv_messages(3).await;
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), ["1", "2", "3"]);
    assert!(
        first.iter().all(|m| m.get("redelivered").is_none()),
        "{:?}",
        first.iter().map(show).collect::<Vec<_>>()
    );
    assert!(first.iter().all(|m| header(m, "x-stampede-session") == ann.session()));
    worker.nack(&first[1]).await;
    let again = worker.recv_message().await;
    assert_eq!((body(&again).as_str(), again.get("redelivered")), ("2", Some("true")), "{}", show(&again));
    assert_eq!(stamped(&again), stamped(&first[1]), "the stamp survives the redelivery");
    for message in [&first[0], &first[2], &again] {
        worker.ack(message).await;
    }
    worker.assert_quiet().await;
    worker.disconnect().await;

    let mut next = backend(&cluster, 2, "next").await;
    next.subscribe(APP, "app", &[]).await;
    ann.publish(APP, "end", &[]).await;
    assert_eq!(next.bodies_until("end").await, Vec::<String>::new(), "nothing acknowledged comes back");
    cluster.shutdown().await;
}

/// A worker that goes away with unacknowledged messages: they go to the other worker, flagged.
async fn a_gone_workers_unacked_messages_go_to_the_other(v: Variant) {
    let cluster = Cluster::start(v, backends).await;
    let mut first = backend(&cluster, 1, "worker-a").await;
    first.subscribe(APP, "app", &[("ack", "client-individual"), ("prefetch-count", "10")]).await;
    let mut ann = cluster.connect_as(0, "ann").await;
    for i in 1..=3 {
        ann.publish(APP, &i.to_string(), &[]).await;
    }
    let held = first.recv_messages(3).await;
    assert_eq!(held.iter().map(body).collect::<Vec<_>>(), ["1", "2", "3"]);
    first.ack(&held[0]).await;
    let mut second = backend(&cluster, 2, "worker-b").await;
    second.subscribe(APP, "app", &[("ack", "client-individual")]).await;
    second.assert_quiet().await;
    first.drop_connection().await;
    let again = second.recv_messages(2).await;
    assert_eq!(again.iter().map(body).collect::<Vec<_>>(), ["2", "3"]);
    assert_eq!(
        again.iter().map(message_id).collect::<Vec<_>>(),
        held[1..].iter().map(message_id).collect::<Vec<_>>(),
        "a redelivery keeps the application message's id"
    );
    assert!(
        again.iter().all(|m| m.get("redelivered") == Some("true")),
        "{:?}",
        again.iter().map(show).collect::<Vec<_>>()
    );
    for message in &again {
        assert_eq!(stamped(message), stamp(APP, cluster.node(0).node_id(), ann.session(), Some("ann")));
        second.ack(message).await;
    }
    second.assert_quiet().await;
    cluster.shutdown().await;
}

// === backends publish ===

/// A backend's SEND with `x-stampede-session` reaches only that session's subscription, wherever
/// it is: not the user's other session, not another subscriber of the topic, not a queue; the
/// header is not delivered. A gone session: a RECEIPT, nothing delivered. A client's
/// `x-stampede-session` is no targeting: it is removed and the message goes to everyone.
async fn backends_answer_one_session_on_whichever_node_holds_it(v: Variant) {
    let cluster = Cluster::start(v, backends).await;
    let mut ann1 = cluster.connect_as(1, "ann").await;
    let mut ann2 = cluster.connect_as(2, "ann").await;
    for ann in [&mut ann1, &mut ann2] {
        ann.subscribe("/user/queue/reply", "u", &[]).await;
        ann.subscribe("/topic/room", "r", &[]).await;
    }
    ann1.subscribe("/queue/jobs", "q", &[]).await;
    let mut carl = cluster.connect_as(0, "carl").await;
    carl.subscribe("/topic/room", "r", &[]).await;
    let mut server = backend(&cluster, 0, "server").await;
    let (first, second) = (ann1.session().to_owned(), ann2.session().to_owned());

    // As the client subscribed, as routed, and a topic: only the session named.
    let cases = [
        ("/user/queue/reply", first.as_str(), "u"),
        ("/user/ann/queue/reply", second.as_str(), "u"),
        ("/topic/room", first.as_str(), "r"),
        ("/topic/room", second.as_str(), "r"),
    ];
    for (destination, session, subscription) in cases {
        let text = format!("{destination} for {session}");
        server.publish(destination, &text, &[("x-stampede-session", session), ("x-k", "v")]).await;
        let (to, others) = if session == first { (&mut ann1, &mut ann2) } else { (&mut ann2, &mut ann1) };
        let message = to.recv_message().await;
        assert_eq!(body(&message), text);
        assert_eq!(header(&message, "subscription"), subscription);
        assert_eq!(header(&message, "x-k"), "v");
        assert_eq!(message.get("x-stampede-session"), None, "{}", show(&message));
        others.assert_quiet().await;
        carl.assert_quiet().await;
    }
    // A queue subscription is not reached; a gone session gets nothing and the sender a RECEIPT.
    server.publish("/queue/jobs", "not for a queue", &[("x-stampede-session", first.as_str())]).await;
    server.publish("/user/queue/reply", "nobody", &[("x-stampede-session", "no-such-session")]).await;
    ann1.assert_quiet().await;
    ann2.assert_quiet().await;

    // Without the header: every session of the user.
    server.publish("/user/ann/queue/reply", "both", &[]).await;
    assert_eq!(body(&ann1.recv_message().await), "both");
    assert_eq!(body(&ann2.recv_message().await), "both");

    // A client naming a session targets nothing: everyone gets it, without the header.
    carl.publish(
        "/topic/room",
        "to the room",
        &[("x-stampede-session", first.as_str()), ("x-stampede-user", "x")],
    )
    .await;
    for client in [&mut ann1, &mut ann2, &mut carl] {
        let message = client.recv_message().await;
        assert_eq!(body(&message), "to the room");
        assert_eq!(stamped(&message), vec![], "{}", show(&message));
        client.assert_quiet().await;
    }
    cluster.shutdown().await;
}

// === request/response ===

/// `reply-to:/temp-queue/<name>` becomes the sender's private reply queue, the same for the
/// session and name, another for another session; whoever SENDs there reaches only that
/// session, as `subscription:/temp-queue/<name>`; once it is gone, SENDs there are dropped.
async fn reply_to_a_temporary_queue_reaches_the_sender_only(v: Variant) {
    let cluster = Cluster::start(v, backends).await;
    let mut worker = backend(&cluster, 2, "worker").await;
    worker.subscribe("/app/rpc", "rpc", &[]).await;
    let mut ann = cluster.connect_as(1, "ann").await;
    let mut ann_elsewhere = cluster.connect_as(0, "ann").await;
    let mut carl = cluster.connect_as(0, "carl").await;
    carl.subscribe("/topic/asks", "a", &[]).await;

    ann.publish("/app/rpc", "ping", &[("reply-to", "/temp-queue/answers")]).await;
    let request = worker.recv_message().await;
    let reply_to = header(&request, "reply-to").to_owned();
    let parts: Vec<&str> = reply_to.split('/').collect();
    assert_eq!(parts.len(), 5, "{reply_to}");
    assert_eq!((parts[0], parts[1], parts[2], parts[4]), ("", "reply-queue", ann.session(), "answers"));
    assert!(!parts[3].is_empty(), "a token: {reply_to}");

    worker.publish(&reply_to, "pong", &[("x-k", "v")]).await;
    let reply = ann.recv_message().await;
    assert_eq!(body(&reply), "pong");
    assert_eq!(header(&reply, "subscription"), "/temp-queue/answers");
    assert_eq!(header(&reply, "destination"), reply_to);
    assert_eq!(header(&reply, "x-k"), "v");

    // Fixed for the session and name, on any destination; another session's is its own.
    ann.publish("/topic/asks", "who?", &[("reply-to", "/temp-queue/answers")]).await;
    assert_eq!(header(&carl.recv_message().await, "reply-to"), reply_to);
    ann_elsewhere.publish("/app/rpc", "ping", &[("reply-to", "/temp-queue/answers")]).await;
    let other_reply_to = header(&worker.recv_message().await, "reply-to").to_owned();
    assert!(
        other_reply_to.starts_with(&format!("/reply-queue/{}/", ann_elsewhere.session())),
        "{other_reply_to}"
    );
    assert!(other_reply_to.ends_with("/answers"));
    worker.publish(&other_reply_to, "yours", &[]).await;
    assert_eq!(body(&ann_elsewhere.recv_message().await), "yours");

    // Anyone may answer there; it reaches ann's session alone.
    carl.publish(&reply_to, "me too", &[]).await;
    let reply = ann.recv_message().await;
    assert_eq!((body(&reply).as_str(), header(&reply, "subscription")), ("me too", "/temp-queue/answers"));
    ann.assert_quiet().await;
    ann_elsewhere.assert_quiet().await;
    carl.assert_quiet().await;

    // Gone with its session: the SEND is received, and dropped.
    ann.disconnect().await;
    worker.publish(&reply_to, "too late", &[]).await;
    for client in [&mut ann_elsewhere, &mut carl, &mut worker] {
        client.assert_quiet().await;
    }
    cluster.shutdown().await;
}

// === the application's HTTP server ===

/// What [`AppServer`] answers to one request.
enum Answer {
    /// 200 with this JSON document.
    Json(Value),
    /// 200 with an empty body: nothing to do.
    Empty,
    /// This status, with an empty body.
    Status(u16),
    /// 200 with this body, labelled JSON but not JSON.
    Text(&'static str),
    /// 200 with this (large) JSON document, made beforehand so that answering is only sending.
    Huge(Bytes),
    /// This JSON document, after this long.
    Late(Duration, Value),
    /// Nothing, ever: the request is held until the caller hangs up.
    Never,
}

/// How the scenario answers a request: from its path and its JSON body (`Null` if not JSON).
type Script = dyn Fn(&str, &Value) -> Answer + Send + Sync;

/// One request [`AppServer`] received.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    content_type: Option<String>,
    json: Value,
    at: Instant,
}

type Shared = (Arc<Mutex<Vec<Received>>>, Arc<Script>);

/// The application's HTTP server (HTTP backends and hooks) on 127.0.0.1: records every
/// request, in order, and answers as its script says. Stops when dropped.
struct AppServer {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    serving: JoinHandle<()>,
}

impl AppServer {
    async fn start(script: impl Fn(&str, &Value) -> Answer + Send + Sync + 'static) -> AppServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let shared: Shared = (received.clone(), Arc::new(script));
        let router = Router::new().fallback(serve_one).with_state(shared);
        let serving = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("the application's server");
        });
        AppServer { addr, received, serving }
    }

    /// `http://127.0.0.1:<port><path>`
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests received at `path` so far, in order.
    fn requests(&self, path: &str) -> Vec<Received> {
        self.received.lock().expect("requests").iter().filter(|r| r.path == path).cloned().collect()
    }

    /// The JSON documents POSTed to `path` whose `field` is `value`.
    fn documents(&self, path: &str, field: &str, value: &str) -> Vec<Value> {
        self.requests(path).into_iter().map(|r| r.json).filter(|json| json[field] == value).collect()
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

async fn serve_one(
    State((received, script)): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let answer = script(uri.path(), &json);
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    received.lock().expect("requests").push(Received {
        path: uri.path().to_owned(),
        content_type,
        json,
        at: Instant::now(),
    });
    let labelled_json = [(CONTENT_TYPE, "application/json")];
    match answer {
        Answer::Json(document) => (labelled_json, document.to_string()).into_response(),
        Answer::Empty => StatusCode::OK.into_response(),
        Answer::Status(code) => StatusCode::from_u16(code).expect("a status").into_response(),
        Answer::Text(text) => (labelled_json, text).into_response(),
        Answer::Huge(document) => (labelled_json, document).into_response(),
        Answer::Late(after, document) => {
            tokio::time::sleep(after).await;
            (labelled_json, document.to_string()).into_response()
        }
        Answer::Never => std::future::pending().await,
    }
}

/// The outcomes of `stampede_app_http_requests_total`, in the order [`http_outcomes`] counts them.
const OUTCOMES: [&str; 7] = ["ok", "error", "timeout", "unreachable", "status", "invalid", "too_large"];

/// `stampede_app_http_requests_total` per outcome ([`OUTCOMES`]), over the cluster's nodes.
async fn http_outcomes(cluster: &Cluster) -> BTreeMap<&'static str, f64> {
    let mut counts = BTreeMap::new();
    for outcome in OUTCOMES {
        let key = format!("stampede_app_http_requests_total{{outcome=\"{outcome}\"}}");
        counts.insert(outcome, cluster.metric(&key).await);
    }
    counts
}

fn counts(pairs: &[(&'static str, f64)]) -> BTreeMap<&'static str, f64> {
    let mut counts: BTreeMap<_, _> = OUTCOMES.iter().map(|o| (*o, 0.0)).collect();
    counts.extend(pairs.iter().copied());
    counts
}

// === HTTP backends ===

/// The POST is the documented document (stripped headers, text or base64 body, the stamp, a
/// message id); the answer's `publish` (a topic for all, a user destination for one session) and
/// `reply` reach exactly those sessions; an empty answer does nothing; `error` reaches the
/// sender's `/user/queue/errors` alone and its RECEIPT. Destinations no pattern matches go to
/// STOMP workers, not to HTTP.
async fn http_backend_gets_the_documented_request_and_its_answer_is_delivered(v: Variant) {
    let app = AppServer::start(|_, request| match request["destination"].as_str() {
        Some("/app/rpc/echo") => Answer::Json(json!({
            "publish": [
                {"destination": NEWS, "headers": {"k": "v"}, "body": "to all"},
                {"destination": "/user/queue/reply", "session": request["session"], "body_base64": "AAE="},
            ],
            "reply": {"headers": {"x-r": "1"}, "body": "pong"},
        })),
        Some("/app/rpc/refuse") => Answer::Json(json!({"error": "bad input"})),
        _ => Answer::Empty,
    })
    .await;
    let app_http = format!("/app/rpc/*={}", app.url("/rpc"));
    let cluster =
        Cluster::start(v, |c| apply_flags(c, &[("app-backend-secret", SECRET), ("app-http", &app_http)]))
            .await;
    let mut ann = cluster.connect_as(1, "ann").await;
    let mut ann_elsewhere = cluster.connect_as(2, "ann").await;
    for client in [&mut ann, &mut ann_elsewhere] {
        client.subscribe("/user/queue/reply", "reply", &[]).await;
        client.subscribe("/user/queue/errors", "errors", &[]).await;
        client.subscribe(NEWS, "news", &[]).await;
    }
    let mut bob = cluster.connect_as(0, "bob").await;
    bob.subscribe(NEWS, "news", &[]).await;

    let mut headers = vec![("content-type", "text/plain"), ("x-custom", "1"), ("reply-to", "/temp-queue/r")];
    headers.extend(FORGED);
    let receipt = ann.publish("/app/rpc/echo", "hello", &headers).await;
    assert_eq!(receipt.get("x-stampede-error"), None, "{}", show(&receipt));
    let documents = app.requests("/rpc");
    assert_eq!(documents.len(), 1, "{documents:?}");
    assert_eq!(documents[0].content_type.as_deref(), Some("application/json"));
    let document = documents[0].json.clone();
    let message_id = document["message_id"].as_str().unwrap_or_else(|| panic!("a message_id: {document}"));
    assert!(uuid::Uuid::parse_str(message_id).is_ok(), "{document}");
    let reply_to = document["headers"]["reply-to"].as_str().unwrap_or_default();
    assert!(reply_to.starts_with(&format!("/reply-queue/{}/", ann.session())), "{document}");
    assert_eq!(
        document,
        json!({
            "destination": "/app/rpc/echo",
            "headers": {"content-type": "text/plain", "x-custom": "1", "reply-to": reply_to},
            "body": "hello",
            "body_base64": null,
            "user": "ann",
            "session": ann.session(),
            "node": cluster.node(1).node_id(),
            "message_id": message_id,
        })
    );
    for client in [&mut bob, &mut ann_elsewhere] {
        let message = client.recv_message().await;
        assert_eq!((body(&message).as_str(), header(&message, "k")), ("to all", "v"));
        client.assert_quiet().await;
    }
    let mut to_ann = ann.recv_messages(3).await;
    ann.assert_quiet().await;
    to_ann.sort_by_key(|m| (header(m, "subscription").to_owned(), m.body.to_vec()));
    let seen: Vec<(&str, &[u8])> = to_ann.iter().map(|m| (header(m, "subscription"), &m.body[..])).collect();
    assert_eq!(seen, [("news", &b"to all"[..]), ("reply", &[0, 1][..]), ("reply", &b"pong"[..])]);
    assert_eq!(header(&to_ann[2], "x-r"), "1");
    assert_eq!(header(&to_ann[2], "destination"), "/user/queue/reply");

    // A binary body goes as base64; an empty answer does nothing.
    let binary = Frame::new(Command::Send)
        .with_header("destination", "/app/rpc/quiet")
        .with_header("content-length", "3")
        .with_body(vec![0xff, 0x00, 0x80]);
    let receipt = ann.request(binary).await;
    assert_eq!(receipt.get("x-stampede-error"), None, "{}", show(&receipt));
    let document = app.documents("/rpc", "destination", "/app/rpc/quiet").remove(0);
    assert_eq!((&document["body"], &document["body_base64"]), (&Value::Null, &json!("/wCA")), "{document}");

    // An error: the sender's errors subscription, and its RECEIPT.
    let receipt = ann.publish("/app/rpc/refuse", "x", &[]).await;
    assert_eq!(receipt.get("x-stampede-error"), Some("bad input"), "{}", show(&receipt));
    let error = ann.recv_message().await;
    assert_eq!(
        (header(&error, "subscription"), body(&error).as_str(), header(&error, "x-stampede-error")),
        ("errors", "bad input", "bad input")
    );
    for client in [&mut ann, &mut ann_elsewhere, &mut bob] {
        client.assert_quiet().await;
    }

    // No pattern matches /app/chat: a STOMP worker gets it, the HTTP backend nothing more.
    ann.publish(APP, "for a worker", &[]).await;
    let mut worker = backend(&cluster, 0, "worker").await;
    worker.subscribe(APP, "app", &[]).await;
    assert_eq!(body(&worker.recv_message().await), "for a worker");
    assert_eq!(app.requests("/rpc").len(), 3);
    eventually_eq(WAIT, "HTTP backend calls by outcome", counts(&[("ok", 2.0), ("error", 1.0)]), || {
        http_outcomes(&cluster)
    })
    .await;
    cluster.shutdown().await;
}

/// Every way an HTTP backend can fail: each gives the sender a RECEIPT and an errors MESSAGE
/// carrying `application backend failed: <why>`, keeps it connected, is counted under its
/// outcome; a late answer is not delivered; and meanwhile other clients' calls and topic
/// messages flow.
async fn bad_http_backends_fail_as_documented_and_block_nobody(v: Variant) {
    let late = HTTP_TIMEOUT + Duration::from_millis(300);
    let mut huge = br#"{"error": ""#.to_vec();
    huge.resize((50 << 20) - 2, b'x');
    huge.extend_from_slice(br#""}"#);
    let huge = Bytes::from(huge);
    let app = AppServer::start(move |path, _| match path {
        "/garbage" => Answer::Text("this is not JSON"),
        "/shape" => Answer::Json(json!({"publish": "not a list", "reply": 7})),
        "/huge" => Answer::Huge(huge.clone()),
        "/late" => Answer::Late(late, json!({"publish": [{"destination": NEWS, "body": "late"}]})),
        "/never" => Answer::Never,
        "/status" => Answer::Status(500),
        _ => Answer::Json(json!({"reply": {"body": "fine"}})),
    })
    .await;
    let nobody = format!("http://127.0.0.1:{}/down", free_port());
    let mut routes: Vec<String> = ["garbage", "shape", "huge", "late", "never", "status"]
        .iter()
        .map(|p| format!("/app/bad/{p}={}", app.url(&format!("/{p}"))))
        .collect();
    routes.push(format!("/app/bad/down={nobody}"));
    routes.push(format!("/app/ok={}", app.url("/ok")));
    let app_http = routes.join(",");
    let timeout = millis(HTTP_TIMEOUT);
    let cluster = Cluster::start(v, |c| {
        apply_flags(c, &[("app-http", &app_http), ("app-http-timeout", &timeout)]);
    })
    .await;
    let mut ann = cluster.connect_as(1, "ann").await;
    ann.subscribe("/user/queue/errors", "errors", &[]).await;
    let mut bob = cluster.connect_as(2, "bob").await;
    bob.subscribe("/user/queue/reply", "reply", &[]).await;
    let mut bystander = cluster.connect_as(0, "witness").await;
    bystander.subscribe(NEWS, "n", &[]).await;
    let mut publisher = cluster.connect(2).await;

    for name in ["garbage", "shape", "huge", "status", "down", "late"] {
        let destination = format!("/app/bad/{name}");
        let receipt = ann.publish(&destination, "x", &[]).await;
        let why =
            receipt.get("x-stampede-error").unwrap_or_else(|| panic!("{destination}: {}", show(&receipt)));
        assert!(why.starts_with(FAILED), "{destination}: {why:?}");
        let error = ann.recv_message().await;
        assert_eq!((body(&error).as_str(), header(&error, "x-stampede-error")), (why, why), "{destination}");
        publisher.publish(NEWS, &format!("after {name}"), &[]).await;
        assert_eq!(body(&bystander.recv_message().await), format!("after {name}"));
    }

    // While a call hangs, another client's call and the topic go on.
    let pending = ann.try_send_with_receipt(send_frame("/app/bad/never", "x", &[])).await.expect("SEND");
    let started = Instant::now();
    let receipt = bob.publish("/app/ok", "x", &[]).await;
    assert_eq!(receipt.get("x-stampede-error"), None, "{}", show(&receipt));
    assert_eq!(body(&bob.recv_message().await), "fine");
    publisher.publish(NEWS, "meanwhile", &[]).await;
    assert_eq!(body(&bystander.recv_message().await), "meanwhile");
    assert!(started.elapsed() < HTTP_TIMEOUT, "the other call waited for the hanging one");
    let receipt = ann.try_await_receipt(&pending, WAIT).await.expect("the RECEIPT of the hanging call");
    let why = header(&receipt, "x-stampede-error").to_owned();
    assert!(why.starts_with(FAILED), "{why:?}");
    assert_eq!(header(&ann.recv_message().await, "x-stampede-error"), why);

    // The late answer came after its call was over: nothing of it is delivered.
    let late_request = app.requests("/late").remove(0);
    assert!(late_request.at.elapsed() > late, "the late answer is due before the end marker");
    publisher.publish(NEWS, "end", &[]).await;
    assert_eq!(bystander.bodies_until("end").await, Vec::<String>::new());
    ann.publish(NEWS, "ann is still connected", &[]).await;
    ann.assert_quiet().await;
    eventually_eq(
        WAIT,
        "HTTP backend calls by outcome",
        counts(&[
            ("ok", 1.0),
            ("invalid", 2.0),
            ("too_large", 1.0),
            ("status", 1.0),
            ("unreachable", 1.0),
            ("timeout", 2.0),
        ]),
        || http_outcomes(&cluster),
    )
    .await;
    cluster.shutdown().await;
}

/// At most `app-http-concurrency` calls are in flight per node: a call waits for a slot, and
/// is made when one frees. A SEND without a receipt does not hold its session up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_backend_calls_wait_for_a_slot_and_a_send_without_receipt_does_not() {
    let slow = Duration::from_millis(1500);
    let app = AppServer::start(move |path, _| match path {
        "/slow" => Answer::Late(slow, json!({"reply": {"body": "slow done"}})),
        _ => Answer::Json(json!({"reply": {"body": "fine"}})),
    })
    .await;
    let app_http = format!("/app/slow={},/app/ok={}", app.url("/slow"), app.url("/ok"));
    let node =
        TestNode::start(|c| apply_flags(c, &[("app-http", &app_http), ("app-http-concurrency", "1")])).await;
    let mut ann = node.connect_as(Transport::Tcp, "ann").await;
    ann.subscribe("/user/queue/reply", "reply", &[]).await;
    let mut bob = node.connect_as(Transport::Ws, "bob").await;
    bob.subscribe("/user/queue/reply", "reply", &[]).await;

    let started = Instant::now();
    ann.send("/app/slow", "no receipt", &[]).await;
    ann.publish(NEWS, "right away", &[]).await;
    assert!(started.elapsed() < slow, "the session waited for the call: {:?}", started.elapsed());
    assert_eq!(body(&ann.recv_message().await), "slow done");

    let pending = ann.try_send_with_receipt(send_frame("/app/slow", "x", &[])).await.expect("SEND");
    let app_ref = &app;
    let first = eventually_some(WAIT, "the second slow call made", || async move {
        app_ref.requests("/slow").get(1).cloned()
    })
    .await;
    let receipt = bob.publish("/app/ok", "x", &[]).await;
    assert_eq!(receipt.get("x-stampede-error"), None, "{}", show(&receipt));
    assert_eq!(body(&bob.recv_message().await), "fine");
    let second = app.requests("/ok").remove(0);
    assert!(second.at >= first.at + slow, "the call did not wait for the slot: {:?}", second.at - first.at);
    let receipt = ann.await_receipt(&pending).await;
    assert_eq!(receipt.get("x-stampede-error"), None, "{}", show(&receipt));
    assert_eq!(body(&ann.recv_message().await), "slow done");
    node.shutdown().await;
}

// === hooks ===

/// The connect hook is asked at every CONNECT but a backend's with the documented document; it
/// names the user and adds roles (the backend role lets the session consume an application
/// destination), or refuses with its reason; a timeout, a failing status and garbage refuse
/// (fail closed), each counted; a bystander is not disturbed.
async fn connect_hook_names_the_user_and_roles_or_refuses(t: Transport) {
    let app = AppServer::start(|_, request| match request["login"].as_str().unwrap_or("") {
        "alice" => Answer::Json(json!({"allow": true, "user": "alice-from-hook", "roles": ["backend"]})),
        "deny" => Answer::Json(json!({"allow": false, "reason": "go away"})),
        "slow" => Answer::Late(Duration::from_millis(1500), json!({"allow": true})),
        "garbage" => Answer::Text("{allow"),
        "status" => Answer::Status(503),
        _ => Answer::Json(json!({"allow": true})),
    })
    .await;
    let hook = app.url("/connect");
    let node = TestNode::start(|c| {
        apply_flags(
            c,
            &[
                ("app-backend-secret", SECRET),
                ("connect-hook", &hook),
                ("hook-timeout", &millis(HOOK_TIMEOUT)),
            ],
        )
    })
    .await;
    let mut bystander = node.connect_as(Transport::Tcp, "witness").await;
    bystander.subscribe(NEWS, "n", &[]).await;

    // The document: the CONNECT headers but the passcode, the WebSocket handshake's token.
    let mut plain = match t {
        Transport::Ws => {
            node.try_ws(Some("token=opaque-app-token"), &[]).await.expect("WebSocket handshake").0
        }
        Transport::Tcp => node.open(t).await,
    };
    let connected = plain
        .connect(
            Some("1.2"),
            &[("login", "plain"), ("passcode", "pw-plain"), ("x-app", "1"), ("heart-beat", "0,0")],
        )
        .await;
    assert_eq!(connected.get("user-name"), Some("plain"), "{}", show(&connected));
    let documents = app.documents("/connect", "login", "plain");
    assert_eq!(documents.len(), 1);
    let document = &documents[0];
    assert_eq!(document["session"], plain.session(), "{document}");
    assert_eq!(document["node"], node.node_id());
    assert_eq!(document["transport"], if t == Transport::Ws { "ws" } else { "tcp" });
    assert!(document["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{document}");
    assert_eq!(document["passcode"], "pw-plain");
    let token = if t == Transport::Ws { json!("opaque-app-token") } else { Value::Null };
    assert_eq!(document["token"], token, "{document}");
    assert_eq!(
        document["headers"],
        json!({"accept-version": "1.2", "host": "localhost", "login": "plain", "x-app": "1", "heart-beat": "0,0"})
    );
    assert!(document["roles"].is_array(), "{document}");

    // Named by the hook, with the backend role: alice consumes an application destination.
    let mut alice = node.connect(t, &[("login", "alice"), ("passcode", "x")]).await;
    alice.subscribe(APP, "app", &[]).await;
    plain.publish(APP, "to the application", &[]).await;
    let message = alice.recv_message().await;
    assert_eq!(stamped(&message), stamp(APP, node.node_id(), plain.session(), Some("plain")));
    let mut alice_again = node.open(t).await;
    let connected = alice_again.connect(Some("1.2"), &[("login", "alice"), ("passcode", "x")]).await;
    assert_eq!(connected.get("user-name"), Some("alice-from-hook"), "{}", show(&connected));

    // Refusals: the application's reason, or its failure; the connection is closed.
    let refused = |login: &'static str| {
        let node = &node;
        async move {
            let mut client = node.open(t).await;
            let answer = client
                .connect_with(Command::Connect, Some("1.2"), &[("login", login), ("passcode", "x")])
                .await;
            assert_eq!(answer.command, Command::Error, "{login}: {}", show(&answer));
            client.expect_closed(WAIT).await;
            header(&answer, "message").to_owned()
        }
    };
    assert_eq!(refused("deny").await, "connection refused: go away");
    for login in ["slow", "garbage", "status"] {
        let message = refused(login).await;
        assert!(
            message.starts_with("connection refused: the application's connect hook failed ("),
            "{login}: {message:?}"
        );
    }

    // A backend by the secret: the hook is not asked.
    let mut worker = node.connect(t, &[("login", "worker"), ("passcode", SECRET)]).await;
    worker.subscribe("/app/other", "o", &[]).await;
    assert_eq!(app.documents("/connect", "login", "worker").len(), 0);
    for login in ["plain", "alice", "deny", "slow", "garbage", "status", "witness"] {
        let expected = if login == "alice" { 2 } else { 1 };
        assert_eq!(app.documents("/connect", "login", login).len(), expected, "hook calls for {login}");
    }
    let mut publisher = node.connect_as(Transport::Tcp, "witness").await;
    publisher.publish(NEWS, "still here", &[]).await;
    assert_eq!(body(&bystander.recv_message().await), "still here");
    for (outcome, expected) in [("allow", 5.0), ("deny", 1.0), ("failed", 3.0)] {
        let key = format!("stampede_hook_requests_total{{hook=\"connect\",outcome=\"{outcome}\"}}");
        eventually_eq(WAIT, &key, Some(expected), || node.metric(&key)).await;
    }
    node.shutdown().await;
}

/// With a users file, a CONNECT it refuses never reaches the hook; one it accepts does, with
/// its user and roles, and the hook's patterns add to the access rules, its refusal ends it. A
/// backend by the secret needs no users-file entry and no hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_hook_comes_after_the_users_file() {
    let app = AppServer::start(|_, request| match request["user"].as_str().unwrap_or("") {
        "ann" => Answer::Json(
            json!({"allow": true, "subscribe": ["/topic/hooked.*"], "publish": ["/topic/hooked.*"]}),
        ),
        _ => Answer::Json(json!({"allow": false, "reason": "not today"})),
    })
    .await;
    let keys = Keys::new();
    let hook = app.url("/connect");
    let node = TestNode::start(|c| {
        apply_flags(c, &[("app-backend-secret", SECRET), ("connect-hook", &hook)]);
        keys.secure(c);
    })
    .await;
    let t = Transport::Tcp;
    let mut wrong = node.open(t).await;
    let answer =
        wrong.connect_with(Command::Connect, Some("1.2"), &[("login", "bob"), ("passcode", "wrong")]).await;
    assert_eq!(answer.command, Command::Error, "{}", show(&answer));
    assert!(app.requests("/connect").is_empty(), "the users file refused: the hook is not asked");

    let mut bob = node.open(t).await;
    let answer =
        bob.connect_with(Command::Connect, Some("1.2"), &[("login", "bob"), ("passcode", "bob-pw")]).await;
    assert_eq!(header(&answer, "message"), "connection refused: not today", "{}", show(&answer));

    let mut ann = node.connect(t, &[("login", "ann"), ("passcode", "ann-pw")]).await;
    let document = app.documents("/connect", "login", "ann").remove(0);
    assert_eq!((&document["user"], &document["roles"]), (&json!("ann"), &json!(["traders"])), "{document}");
    assert_eq!(document["session"], ann.session());
    ann.subscribe("/topic/hooked.x", "h", &[]).await;
    ann.publish("/topic/hooked.x", "allowed by the hook", &[]).await;
    assert_eq!(body(&ann.recv_message().await), "allowed by the hook");
    let error = ann.request_refused(subscribe_frame("/topic/elsewhere", "e")).await;
    assert_error(&error, "not authorized");

    let mut worker = node.connect(t, &[("login", "worker"), ("passcode", SECRET)]).await;
    worker.subscribe(APP, "app", &[]).await;
    assert_eq!(app.requests("/connect").len(), 2, "bob with his password, and ann");
    node.shutdown().await;
}

/// The subscribe hook is asked for the destinations its patterns match (as subscribed), with
/// the documented document; it allows or refuses with its reason; a failure or a timeout
/// refuses; other destinations never reach it.
async fn subscribe_hook_allows_or_refuses_the_patterns_it_is_asked_for(t: Transport) {
    let app = AppServer::start(|_, request| match request["destination"].as_str().unwrap_or("") {
        "/topic/private.no" => Answer::Json(json!({"allow": false, "reason": "members only"})),
        "/topic/private.bad" => Answer::Text("yes"),
        "/topic/private.slow" => Answer::Late(Duration::from_millis(1500), json!({"allow": true})),
        _ => Answer::Json(json!({"allow": true})),
    })
    .await;
    let hook = app.url("/subscribe");
    let node = TestNode::start(|c| {
        apply_flags(
            c,
            &[
                ("subscribe-hook", &hook),
                ("subscribe-hook-patterns", "/topic/private.*,/user/queue/private.*"),
                ("hook-timeout", &millis(HOOK_TIMEOUT)),
            ],
        )
    })
    .await;
    let mut ann = node.connect_as(t, "ann").await;
    ann.subscribe("/topic/public", "p", &[]).await;
    ann.subscribe("/user/queue/other", "o", &[]).await;
    assert!(app.requests("/subscribe").is_empty(), "no pattern matches: the hook is not asked");
    ann.subscribe("/topic/private.ok", "k", &[("x-sub", "1")]).await;
    ann.subscribe("/user/queue/private.inbox", "i", &[]).await;
    let documents = app.requests("/subscribe");
    assert_eq!(documents.len(), 2);
    let document = &documents[0].json;
    assert_eq!(document["destination"], "/topic/private.ok");
    assert_eq!(document["session"], ann.session());
    assert_eq!(document["node"], node.node_id());
    assert_eq!(document["user"], "ann");
    assert_eq!(document["headers"]["id"], "k", "{document}");
    assert_eq!(document["headers"]["x-sub"], "1", "{document}");
    assert_eq!(documents[1].json["destination"], "/user/queue/private.inbox", "as subscribed");
    let mut publisher = node.connect(t, &[]).await;
    publisher.publish("/topic/private.ok", "for members", &[]).await;
    assert_eq!(body(&ann.recv_message().await), "for members");

    let refused = |destination: &'static str| {
        let node = &node;
        async move {
            let mut client = node.connect_as(t, "bob").await;
            let error = client.request_refused(subscribe_frame(destination, "s")).await;
            client.expect_closed(WAIT).await;
            header(&error, "message").to_owned()
        }
    };
    assert_eq!(
        refused("/topic/private.no").await,
        "not authorized to subscribe to /topic/private.no: members only"
    );
    for destination in ["/topic/private.bad", "/topic/private.slow"] {
        let message = refused(destination).await;
        let failed = format!(
            "not authorized to subscribe to {destination}: the application's subscribe hook failed ("
        );
        assert!(message.starts_with(&failed), "{message:?}");
    }
    assert_eq!(app.requests("/subscribe").len(), 5);
    ann.assert_quiet().await;
    for (outcome, expected) in [("allow", 2.0), ("deny", 1.0), ("failed", 2.0)] {
        let key = format!("stampede_hook_requests_total{{hook=\"subscribe\",outcome=\"{outcome}\"}}");
        eventually_eq(WAIT, &key, Some(expected), || node.metric(&key)).await;
    }
    node.shutdown().await;
}

// === session events ===

const EVENTS: &str = "/app/session-events";

/// One session event as the backend sees it: checks its headers against its body and returns
/// (session, event, destination, subscription), the last two empty where they do not apply.
fn event(cluster: &Cluster, frame: &Frame, users: &BTreeMap<String, (Option<&str>, usize)>) -> [String; 4] {
    assert_eq!(header(frame, "destination"), EVENTS, "{}", show(frame));
    assert_eq!(header(frame, "content-type"), "application/json", "{}", show(frame));
    let json: Value = serde_json::from_slice(&frame.body).expect("a JSON body");
    let session = header(frame, "x-stampede-session").to_owned();
    let (user, node) =
        users.get(&session).unwrap_or_else(|| panic!("an event of an unknown session: {json}"));
    let node = cluster.node(*node).node_id();
    // The documented stamp of an event; `x-stampede-destination`, if there, is the events'.
    let mut seen = stamped(frame);
    seen.retain(|(name, value)| name != "x-stampede-destination" || value != EVENTS);
    let mut expected = stamp(EVENTS, node, &session, *user);
    expected.retain(|(name, _)| name != "x-stampede-destination");
    expected.push(("x-stampede-event".to_owned(), json["event"].as_str().unwrap_or("?").to_owned()));
    expected.sort();
    assert_eq!(seen, expected, "{}", show(frame));
    assert_eq!((&json["session"], &json["node"]), (&json!(session), &json!(node)), "{json}");
    assert_eq!(json["user"], user.map_or(Value::Null, |u| json!(u)), "{json}");
    let transport = if cluster.t() == Transport::Ws { "ws" } else { "tcp" };
    assert_eq!(json["transport"], transport, "{json}");
    assert!(json["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{json}");
    assert!(json["at_ms"].as_u64().is_some_and(|ms| ms > 1_600_000_000_000), "{json}");
    let kind = json["event"].as_str().expect("an event").to_owned();
    match kind.as_str() {
        "disconnect" => assert!(json["reason"].as_str().is_some_and(|r| !r.is_empty()), "a reason: {json}"),
        "subscribe" | "unsubscribe" => {}
        _ => assert_eq!(kind, "connect", "{json}"),
    }
    let text = |field: &str| json[field].as_str().unwrap_or_default().to_owned();
    [session, kind, text("destination"), text("subscription")]
}

/// A backend consuming the session-events destination sees every session's connect, its
/// SUBSCRIBEs and UNSUBSCRIBEs of the configured patterns only, and its disconnect with a
/// reason, whatever ended it: each once, each session's in order, from every node.
async fn session_events_reach_the_backend_once_each(v: Variant) {
    let cluster = Cluster::start(v, |c| {
        apply_flags(
            c,
            &[
                ("app-backend-secret", SECRET),
                ("session-events", EVENTS),
                ("session-events-subscriptions", "/topic/watched.*"),
            ],
        )
    })
    .await;
    let mut backend = backend(&cluster, 0, "events").await;
    backend.subscribe(EVENTS, "ev", &[]).await;
    let mut ann = cluster.connect_as(1, "ann").await;
    ann.subscribe("/topic/watched.a", "w", &[]).await;
    ann.subscribe("/topic/other", "o", &[]).await;
    ann.unsubscribe("w").await;
    ann.unsubscribe("o").await;
    ann.disconnect().await;
    let mut bob = cluster.connect_as(2, "bob").await;
    bob.subscribe("/topic/other", "o", &[]).await;
    let bob_session = bob.session().to_owned();
    bob.drop_connection().await;
    let mut anonymous = cluster.connect(0).await;
    let anonymous_session = anonymous.session().to_owned();
    anonymous.disconnect().await;

    let users: BTreeMap<String, (Option<&str>, usize)> = [
        (backend.session().to_owned(), (Some("events"), 0)),
        (ann.session().to_owned(), (Some("ann"), 1)),
        (bob_session.clone(), (Some("bob"), 2)),
        (anonymous_session.clone(), (None, 0)),
    ]
    .into();
    let events: Vec<[String; 4]> =
        backend.recv_messages(9).await.iter().map(|m| event(&cluster, m, &users)).collect();
    backend.assert_quiet().await;
    let of = |session: &str| -> Vec<[String; 3]> {
        events
            .iter()
            .filter(|e| e[0] == session)
            .map(|e| [e[1].clone(), e[2].clone(), e[3].clone()])
            .collect()
    };
    let plain = |kind: &str| [kind.to_owned(), String::new(), String::new()];
    let watched = |kind: &str| [kind.to_owned(), "/topic/watched.a".to_owned(), "w".to_owned()];
    assert_eq!(of(backend.session()), [plain("connect")]);
    assert_eq!(
        of(ann.session()),
        [plain("connect"), watched("subscribe"), watched("unsubscribe"), plain("disconnect")]
    );
    assert_eq!(of(&bob_session), [plain("connect"), plain("disconnect")]);
    assert_eq!(of(&anonymous_session), [plain("connect"), plain("disconnect")]);
    cluster.shutdown().await;
}

/// Session events go to an HTTP backend when an `app-http` pattern matches their destination,
/// one session's in order: the `disconnect` is sent once the (slow) `connect` was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_events_go_to_an_http_backend_when_a_pattern_matches() {
    const SLOW: Duration = Duration::from_millis(500);
    let app = AppServer::start(|_, request| {
        if request["headers"]["x-stampede-event"] == "connect" {
            Answer::Late(SLOW, json!({}))
        } else {
            Answer::Empty
        }
    })
    .await;
    let app_http = format!("{EVENTS}={}", app.url("/events"));
    let node =
        TestNode::start(|c| apply_flags(c, &[("session-events", EVENTS), ("app-http", &app_http)])).await;
    let mut ann = node.connect_as(Transport::Ws, "ann").await;
    let session = ann.session().to_owned();
    ann.disconnect().await;
    let app = &app;
    let documents = eventually_some(WAIT, "two events POSTed", || async move {
        let documents = app.requests("/events");
        (documents.len() >= 2).then_some(documents)
    })
    .await;
    let events: Vec<(Value, Value, Value)> = documents
        .iter()
        .map(|r| {
            let body: Value =
                serde_json::from_str(r.json["body"].as_str().expect("a JSON text body")).expect("JSON");
            (r.json["destination"].clone(), r.json["session"].clone(), body["event"].clone())
        })
        .collect();
    let expected = |kind: &str| (json!(EVENTS), json!(session), json!(kind));
    assert_eq!(events, [expected("connect"), expected("disconnect")]);
    assert_eq!(documents[0].json["headers"]["x-stampede-event"], "connect", "{}", documents[0].json);
    let waited = documents[1].at - documents[0].at;
    assert!(waited >= SLOW, "the disconnect was sent {waited:?} after the connect, before its answer");
    node.shutdown().await;
}
