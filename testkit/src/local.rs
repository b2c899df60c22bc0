//! Nodes inside the test process: `stampede::run` on listeners bound to port 0 of 127.0.0.1, for
//! the node suites (`node/tests`), which need a node's internals no faster than a process start.
//!
//! Each [`TestNode`] runs on its own runtime (two workers) in its own thread, so everything the
//! node logs goes to that node's [`Log`] (the threads of its runtime know their node), and the
//! log is printed when the test fails, like a process node's. `RUST_LOG` sets the level (default
//! `info`) and, when set, also prints every line live. A [`Cluster`] is the nodes of one
//! scenario on one engine ([`Variant`]); the Redis variants share the test binary's
//! [`crate::redis::shared`] server, each cluster under its own key prefix.
//!
//! Also here: the [`Bystander`] of the security suites, a subscriber that must receive every
//! message a publisher sends while another client attacks the node ([`under_attack`]).

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;
use std::thread::JoinHandle as ThreadHandle;
use std::time::Duration;

use stampede::config::{Config, Environment};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tracing_subscriber::fmt::MakeWriter;

use crate::client::{body, BoxStream, Client, WsResponse, WAIT};
use crate::http::{self, metric, Response};
use crate::keys::TestTls;
use crate::process::Log;
use crate::redis::{self, Resp};
use crate::variant::{EngineKind, Transport, Variant};
use crate::wait::holds_within;

// === tracing into the node's log ===

thread_local! {
    /// The log of the node whose runtime owns this thread.
    static NODE_LOG: RefCell<Option<Log>> = const { RefCell::new(None) };
}

/// Installs (once per test binary) the subscriber that routes each event to its node's log.
fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(NodeLogs)
            .try_init();
    });
}

/// Makes a [`LineWriter`] for the calling thread's node.
struct NodeLogs;

impl<'a> MakeWriter<'a> for NodeLogs {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { log: NODE_LOG.with(|log| log.borrow().clone()), text: Vec::new() }
    }
}

/// One formatted event, appended to its node's log when dropped.
struct LineWriter {
    log: Option<Log>,
    text: Vec<u8>,
}

impl io::Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.text);
        let live = std::env::var_os("RUST_LOG").is_some();
        for line in text.lines() {
            match &self.log {
                Some(log) => {
                    log.line("log", line);
                    if live {
                        eprintln!("[{}] {line}", log.name());
                    }
                }
                None if live => eprintln!("{line}"),
                None => {}
            }
        }
    }
}

// === the node ===

/// A node running on 127.0.0.1 with ephemeral ports for its three listeners, on its own runtime.
pub struct TestNode {
    ws: SocketAddr,
    tcp: SocketAddr,
    admin: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    /// CONNECT headers of a well-behaved client allowed on `/topic/bystander`.
    bystander_login: Vec<(String, String)>,
    admin_token: Option<String>,
    node_id: String,
    log: Log,
    /// Starts the drain.
    stop: Option<oneshot::Sender<()>>,
    /// Dropped to end the node at once (its runtime is shut down).
    kill: Option<oneshot::Sender<()>>,
    /// The node's thread: what `run` returned, or `None` if it was killed.
    thread: Option<ThreadHandle<Option<Result<(), stampede::Error>>>>,
}

impl TestNode {
    /// Starts a node from the built-in defaults with test-friendly timings, then `configure`.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> TestNode {
        Self::start_with(None, configure).await
    }

    /// Same, with TLS from `tls` (whose connector the clients then use).
    pub async fn start_with(tls: Option<&TestTls>, configure: impl FnOnce(&mut Config)) -> TestNode {
        init_tracing();
        let mut config = Config { drain_period: Duration::from_millis(100), ..Config::default() };
        if let Some(tls) = tls {
            config.tls = Some(tls.files.clone());
        }
        configure(&mut config);
        let bystander_login = if config.auth.users_file.is_some() {
            vec![("login".to_owned(), "witness".to_owned()), ("passcode".to_owned(), "witness-pw".to_owned())]
        } else {
            Vec::new()
        };
        let admin_token = config.auth.admin_token.as_ref().map(|t| t.expose().to_owned());
        let node_id = config.node_id.clone();
        let bind = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            listener.set_nonblocking(true).expect("a non-blocking listener");
            listener
        };
        let (ws, stomp, admin) = (bind(), bind(), bind());
        let addrs = (ws.local_addr().unwrap(), stomp.local_addr().unwrap(), admin.local_addr().unwrap());
        static NODES: AtomicUsize = AtomicUsize::new(0);
        let name = format!("node-{}", NODES.fetch_add(1, Ordering::Relaxed));
        let log = Log::new(&name);
        let (stop, stopped) = oneshot::channel::<()>();
        let (kill, killed) = oneshot::channel::<()>();
        let (running, started) = oneshot::channel::<()>();
        let thread_log = log.clone();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let worker_log = thread_log.clone();
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .thread_name(format!("{name}-worker"))
                    .on_thread_start(move || {
                        NODE_LOG.with(|log| *log.borrow_mut() = Some(worker_log.clone()))
                    })
                    .build()
                    .expect("a runtime for the node");
                NODE_LOG.with(|log| *log.borrow_mut() = Some(thread_log));
                let outcome = runtime.block_on(async move {
                    let _ = running.send(());
                    let listen = |l| TcpListener::from_std(l).expect("a listener on the node's runtime");
                    let listeners = stampede::Listeners {
                        ws: listen(ws),
                        stomp: Some(listen(stomp)),
                        admin: Some(listen(admin)),
                    };
                    tokio::select! {
                        biased;
                        _ = killed => None,
                        result = stampede::run(config, listeners, async move {
                            let _ = stopped.await;
                        }) => Some(result),
                    }
                });
                runtime.shutdown_background();
                outcome
            })
            .expect("spawn the node's thread");
        // Its runtime (and what that holds open) exists before the test goes on.
        started.await.expect("the node's runtime started");
        log.note(&format!("started: ws {} tcp {} admin {}", addrs.0, addrs.1, addrs.2));
        TestNode {
            ws: addrs.0,
            tcp: addrs.1,
            admin: addrs.2,
            tls: tls.map(TestTls::connector),
            bystander_login,
            admin_token,
            node_id,
            log,
            stop: Some(stop),
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    /// `ws://127.0.0.1:<port>/ws`, or `wss://localhost:<port>/ws` with TLS.
    pub fn ws_url(&self) -> String {
        match self.tls {
            Some(_) => format!("wss://localhost:{}/ws", self.ws.port()),
            None => format!("ws://{}/ws", self.ws),
        }
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

    /// The node's `node-id`.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Everything the node logged so far.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Starts the drain without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            self.log.note("drain");
            let _ = stop.send(());
        }
    }

    /// Starts the drain and waits (at most 10 s) for `run` to return.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        let thread = self.thread.take().expect("not shut down yet");
        let joined =
            tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(move || thread.join()))
                .await
                .expect("the node did not stop in time")
                .expect("joined the node's thread");
        let result = joined.expect("the node panicked").expect("the node was not killed");
        self.log.note("stopped");
        result.expect("run returned an error");
    }

    /// Whether the node ended (it should not, while serving).
    pub fn stopped(&self) -> bool {
        self.thread.as_ref().is_none_or(ThreadHandle::is_finished)
    }

    /// A TCP (or TLS, when the node has it) stream to `addr`.
    pub async fn stream(&self, addr: SocketAddr) -> BoxStream {
        let stream = TcpStream::connect(addr).await.expect("TCP connect");
        stream.set_nodelay(true).unwrap();
        match &self.tls {
            None => Box::new(stream),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                Box::new(connector.connect(name, stream).await.expect("TLS handshake"))
            }
        }
    }

    /// A STOMP-over-TCP connection (TLS when the node has it), not yet STOMP-connected.
    pub async fn tcp(&self) -> Client {
        Client::from_stream(self.stream(self.tcp).await)
    }

    /// A WebSocket at `/ws` (`?query` when given) offering `protocols`, with extra handshake
    /// `headers`.
    pub async fn try_ws_offering(
        &self,
        protocols: &[&str],
        query: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(Client, WsResponse), tokio_tungstenite::tungstenite::Error> {
        let url = match query {
            Some(query) => format!("{}?{query}", self.ws_url()),
            None => self.ws_url(),
        };
        let mut request = url.into_client_request()?;
        let offer = HeaderValue::from_str(&protocols.join(", ")).expect("header value");
        request.headers_mut().insert("sec-websocket-protocol", offer);
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().insert(name, HeaderValue::from_str(value).unwrap());
        }
        Client::ws_over(self.stream(self.ws).await, request).await
    }

    /// A WebSocket at `/ws` offering `v12.stomp` (`?query` when given), with extra handshake
    /// `headers`.
    pub async fn try_ws(
        &self,
        query: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(Client, WsResponse), tokio_tungstenite::tungstenite::Error> {
        self.try_ws_offering(&["v12.stomp"], query, headers).await
    }

    /// A WebSocket client offering `v12.stomp`, not yet STOMP-connected.
    pub async fn ws(&self) -> Client {
        self.try_ws(None, &[]).await.expect("WebSocket handshake").0
    }

    /// An open, not yet STOMP-connected client (over WebSocket it offers every STOMP version).
    pub async fn open(&self, t: Transport) -> Client {
        match t {
            Transport::Ws => {
                let offer = ["v12.stomp", "v11.stomp", "v10.stomp"];
                self.try_ws_offering(&offer, None, &[]).await.expect("WebSocket handshake").0
            }
            Transport::Tcp => self.tcp().await,
        }
    }

    /// A client connected with STOMP 1.2 and `headers`; panics unless CONNECTED.
    pub async fn connect(&self, t: Transport, headers: &[(&str, &str)]) -> Client {
        let mut client = self.open(t).await;
        client.connect(Some("1.2"), headers).await;
        client
    }

    /// A client connected with STOMP 1.2 as `login`.
    pub async fn connect_as(&self, t: Transport, login: &str) -> Client {
        self.connect(t, &[("login", login), ("passcode", "x")]).await
    }

    /// A client connected as the bystander (`witness`, when there is a users file).
    pub async fn connect_bystander(&self, t: Transport) -> Client {
        let login: Vec<(&str, &str)> =
            self.bystander_login.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        self.connect(t, &login).await
    }

    /// A request to the admin port with an `Authorization` header and a JSON body if given.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        json: Option<&str>,
    ) -> Response {
        let headers: Vec<(&str, &str)> = authorization.map(|a| ("Authorization", a)).into_iter().collect();
        let body = json.map(|j| ("application/json", j.as_bytes()));
        http::request(self.admin, method, path, &headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A GET on the admin port, with the admin token when the node has one.
    pub async fn get(&self, path: &str) -> Response {
        let auth = self.admin_token.as_ref().map(|t| format!("Bearer {t}"));
        self.http("GET", path, auth.as_deref(), None).await
    }

    /// A POST of JSON on the admin port.
    pub async fn post_json(&self, path: &str, json: &str) -> Response {
        self.http("POST", path, None, Some(json)).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status, 200, "/metrics: {}", response.body);
        response.body
    }

    /// One sample of `/metrics`, `key` being the name with its labels as rendered, e.g.
    /// `stampede_messages_dropped_total{reason="queue_full"}`.
    pub async fn metric(&self, key: &str) -> Option<f64> {
        metric(&self.metrics().await, key)
    }

    /// Open client connections over both transports, as `/metrics` counts them.
    pub async fn connections(&self) -> f64 {
        let text = self.metrics().await;
        ["ws", "tcp", "sockjs"]
            .iter()
            .map(|t| metric(&text, &format!("stampede_connections{{transport=\"{t}\"}}")).unwrap_or(0.0))
            .sum()
    }

    /// Waits until the node counts `n` connections.
    pub async fn await_connections(&self, n: f64) {
        let ok = holds_within(WAIT, || async { self.connections().await == n }).await;
        assert!(ok, "expected {n} connections, the node counts {}", self.connections().await);
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        drop(self.kill.take());
        self.log.on_drop();
    }
}

/// Sets `c` to what the command line `stampede --<name> <value> ...` configures (with no
/// `STAMPEDE_` variable), then puts back what [`TestNode::start`] set before its `configure` ran
/// (the drain period, TLS): for scenarios that name their settings as an operator writes them.
/// Call it first in `configure`. Panics with the configuration's error if the flags are refused.
pub fn apply_flags(c: &mut Config, flags: &[(&str, &str)]) {
    let mut args = vec!["stampede".to_owned()];
    for (name, value) in flags {
        args.extend([format!("--{name}"), (*value).to_owned()]);
    }
    let loaded = Config::load_from(&args, &Environment::default())
        .unwrap_or_else(|e| panic!("flags {flags:?} refused: {e}"));
    let (drain_period, tls) = (c.drain_period, c.tls.take());
    *c = loaded.config;
    c.drain_period = drain_period;
    c.tls = tls;
}

// === clusters ===

/// Clusters started by this process, for unique Redis prefixes and node ids.
static CLUSTERS: AtomicU64 = AtomicU64::new(0);

/// The nodes of one scenario, all on the variant's engine. Client `i` connects to node `i % n`.
pub struct Cluster {
    pub variant: Variant,
    nodes: Vec<TestNode>,
    /// `redis-prefix` of the Redis variants.
    prefix: Option<String>,
}

impl Cluster {
    /// Starts the variant's nodes, each configured with `configure` (then, on Redis, the shared
    /// server's URL, this cluster's prefix and a node id of its own), and waits until every node
    /// is ready (its engine connected).
    pub async fn start(variant: Variant, configure: impl Fn(&mut Config)) -> Cluster {
        let mut nodes = Vec::with_capacity(variant.nodes);
        let prefix = match variant.engine {
            EngineKind::Memory => {
                assert_eq!(variant.nodes, 1, "the memory engine runs one node");
                nodes.push(TestNode::start(configure).await);
                None
            }
            EngineKind::Redis => {
                let url = redis::shared().await.url();
                let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
                let prefix = format!("test-{}-{n}", std::process::id());
                for i in 0..variant.nodes {
                    let node = TestNode::start(|c| {
                        configure(c);
                        c.redis_url = Some(url.clone());
                        c.redis_prefix = prefix.clone();
                        c.node_id = format!("{prefix}-node{i}");
                    })
                    .await;
                    nodes.push(node);
                }
                Some(prefix)
            }
        };
        for (i, node) in nodes.iter().enumerate() {
            let ready = holds_within(WAIT, || async { node.get("/readyz").await.status == 200 }).await;
            assert!(ready, "node {i} of {variant:?} did not get ready");
        }
        Cluster { variant, nodes, prefix }
    }

    /// `redis-prefix` of the Redis variants (every key of the cluster starts with it); `None` on
    /// memory.
    pub fn redis_prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// The transport of the variant.
    pub fn t(&self) -> Transport {
        self.variant.transport
    }

    pub fn engine(&self) -> EngineKind {
        self.variant.engine
    }

    /// The node client `i` uses: node `i % n`.
    pub fn node(&self, i: usize) -> &TestNode {
        &self.nodes[i % self.nodes.len()]
    }

    /// An open, not yet STOMP-connected client `i`.
    pub async fn open(&self, i: usize) -> Client {
        self.node(i).open(self.t()).await
    }

    /// Client `i`, connected with STOMP 1.2 and no login.
    pub async fn connect(&self, i: usize) -> Client {
        self.node(i).connect(self.t(), &[]).await
    }

    /// Client `i`, connected with STOMP 1.2 as `login`.
    pub async fn connect_as(&self, i: usize, login: &str) -> Client {
        self.node(i).connect_as(self.t(), login).await
    }

    /// The sum over the nodes of one `/metrics` sample (absent counts as 0).
    pub async fn metric(&self, key: &str) -> f64 {
        let mut sum = 0.0;
        for node in &self.nodes {
            sum += node.metric(key).await.unwrap_or(0.0);
        }
        sum
    }

    /// Open client connections over all nodes.
    pub async fn connections(&self) -> f64 {
        let mut sum = 0.0;
        for node in &self.nodes {
            sum += node.connections().await;
        }
        sum
    }

    /// Waits until `n` client connections are open over all nodes: a session counts until it
    /// has released what it held, so after this its queue entries are back in their queues.
    pub async fn settle(&self, n: usize) {
        let n = n as f64;
        assert!(
            holds_within(WAIT, || async { self.connections().await == n }).await,
            "still {} connections, expected {n}",
            self.connections().await
        );
    }

    /// Ready messages of `queue` (not in flight). Memory: the node's `stampede_queue_depth`.
    /// Redis: read from Redis itself, as the engine's own depth script does (the node's gauge
    /// is refreshed only every few seconds, a local mechanic the memory variants cover).
    pub async fn queue_depth(&self, queue: &str) -> u64 {
        match &self.prefix {
            None => {
                let key = format!("stampede_queue_depth{{queue=\"{queue}\"}}");
                self.nodes[0].metric(&key).await.unwrap_or(0.0) as u64
            }
            Some(prefix) => {
                // Key layout and group name: the module doc of engine/redis.
                let key = format!("{prefix}:{{{queue}}}:q");
                match redis::shared().await.call(&["EVAL", redis::READY_ENTRIES, "1", &key]).await {
                    Resp::Int(n) => u64::try_from(n).expect("a depth"),
                    other => panic!("depth of {queue}: {other:?}"),
                }
            }
        }
    }

    /// Shuts every node down (at the same time) and waits for them.
    pub async fn shutdown(self) {
        futures_util::future::join_all(self.nodes.into_iter().map(TestNode::shutdown)).await;
    }
}

// === the bystander ===

pub const BYSTANDER_TOPIC: &str = "/topic/bystander";
/// Messages the bystander's publisher sends while the attack runs.
pub const PUBLISHED: usize = 30;

/// A subscriber and a publisher on `/topic/bystander`: the publisher sends [`PUBLISHED`]
/// messages 5 ms apart, then `end`; [`Bystander::finish`] asserts the subscriber got exactly
/// those, in order.
pub struct Bystander {
    subscriber: Client,
    publishing: JoinHandle<Client>,
}

impl Bystander {
    pub async fn start(node: &TestNode) -> Bystander {
        let mut subscriber = node.connect_bystander(Transport::Ws).await;
        subscriber.subscribe(BYSTANDER_TOPIC, "b", &[]).await;
        let mut publisher = node.connect_bystander(Transport::Tcp).await;
        let publishing = tokio::spawn(async move {
            for i in 0..PUBLISHED {
                publisher.send(BYSTANDER_TOPIC, &i.to_string(), &[]).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            publisher.publish(BYSTANDER_TOPIC, "end", &[]).await;
            publisher
        });
        Bystander { subscriber, publishing }
    }

    /// Asserts the subscriber received every message, exactly once and in order; returns the
    /// two clients (still connected).
    pub async fn finish(mut self) -> (Client, Client) {
        let publisher = self.publishing.await.expect("the publisher ran");
        let expected: Vec<String> = (0..PUBLISHED).map(|i| i.to_string()).collect();
        let mut got = Vec::new();
        loop {
            let message = self.subscriber.recv_message().await;
            let body = body(&message);
            if body == "end" {
                break;
            }
            got.push(body);
        }
        assert_eq!(got, expected, "the bystander missed or reordered messages");
        (self.subscriber, publisher)
    }
}

/// Starts a node with `configure` and a bystander, runs `attack`, then asserts the bystander got
/// every message, the node still serves (a new client connects and gets a receipt), and only
/// the bystander's two connections are left.
pub async fn under_attack<F>(tls: Option<&TestTls>, configure: impl FnOnce(&mut Config), attack: F)
where
    F: for<'n> AsyncFnOnce(&'n TestNode),
{
    let node = TestNode::start_with(tls, configure).await;
    let bystander = Bystander::start(&node).await;
    attack(&node).await;
    let (_subscriber, _publisher) = bystander.finish().await;
    assert!(!node.stopped(), "the node stopped");
    let mut late = node.connect_bystander(Transport::Tcp).await;
    late.publish(BYSTANDER_TOPIC, "still serving", &[]).await;
    late.disconnect().await;
    node.await_connections(2.0).await;
    node.shutdown().await;
}
