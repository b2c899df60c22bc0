//! Test harness for the integration tests: a node on ephemeral ports ([`TestNode`]), a cluster of
//! them on one engine ([`Cluster`]), a small STOMP client over WebSocket or TCP ([`Client`]), a tiny
//! HTTP/1.1 client for the admin port, and [`eventually`] for conditions that become true
//! asynchronously.
//!
//! # Variants
//! A scenario about sessions and destinations is written once as `async fn name(v: Variant)` and
//! run by [`every_engine!`] on every engine variant:
//!
//! | test | engine | nodes | transport |
//! | --- | --- | --- | --- |
//! | `name::memory_ws`, `name::memory_tcp` | embedded memory engine | 1 | both |
//! | `name::redis1_ws` or `name::redis1_tcp` | Redis | 1 | one, alternating between scenarios |
//! | `name::redis3_tcp` or `name::redis3_ws` | Redis | 3, sharing one Redis | the other one |
//!
//! The scenario starts a [`Cluster`] and asks it for client `i`, which connects to node `i % n`:
//! on three nodes a scenario's clients are spread over the nodes, so messages cross nodes.
//!
//! The Redis variants share one `redis-server` per test binary ([`redis`]): started from PATH on a
//! free port, without persistence, and killed when the test process exits. Every cluster uses its
//! own key prefix (`redis-prefix`), so tests running at the same time do not see each other.
//!
//! Where the engines differ by design (where a released queue message goes back, and what the
//! queue bound does to it), the expectation comes from [`EngineKind`]'s methods, the one place
//! that states the difference.
//!
//! A scenario about one node's local mechanics (framing, handshakes, heart-beats, slow consumers,
//! the drain, the admin port) runs on the memory engine over both transports with
//! [`both_transports!`], as `name::memory_ws` and `name::memory_tcp`, or as a plain test.

#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;
pub use common::{eventually, http_request, init_tracing, metric, HttpResponse};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
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

/// Runs `async fn $name(t: Transport)` on one memory-engine node once per transport, as tests
/// `$name::memory_ws` and `$name::memory_tcp`: for scenarios about one node's local mechanics.
#[allow(unused_macros)]
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory_ws() {
                    super::$name($crate::support::Transport::Ws).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory_tcp() {
                    super::$name($crate::support::Transport::Tcp).await
                }
            }
        )*
    };
}

/// Runs `async fn $name(v: Variant)` on every engine variant (see the module doc): `memory_ws`,
/// `memory_tcp`, then one Redis node and three Redis nodes on one transport each. The transports
/// of the Redis variants alternate from one scenario to the next (`redis1_ws` + `redis3_tcp`,
/// then `redis1_tcp` + `redis3_ws`), so both transports meet both Redis variants in every file.
#[allow(unused_macros)]
macro_rules! every_engine {
    (@variants $name:ident, $r1:ident, $t1:ident, $r3:ident, $t3:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory_ws() {
                super::$name($crate::support::Variant::memory($crate::support::Transport::Ws)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory_tcp() {
                super::$name($crate::support::Variant::memory($crate::support::Transport::Tcp)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $r1() {
                super::$name($crate::support::Variant::redis(1, $crate::support::Transport::$t1)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $r3() {
                super::$name($crate::support::Variant::redis(3, $crate::support::Transport::$t3)).await
            }
        }
    };
    () => {};
    ($a:ident $(,)?) => {
        every_engine!(@variants $a, redis1_ws, Ws, redis3_tcp, Tcp);
    };
    ($a:ident, $b:ident $(, $rest:ident)* $(,)?) => {
        every_engine!(@variants $a, redis1_ws, Ws, redis3_tcp, Tcp);
        every_engine!(@variants $b, redis1_tcp, Tcp, redis3_ws, Ws);
        every_engine!($($rest),*);
    };
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

// === engines, variants and clusters ===

/// The engine a [`Cluster`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// The embedded in-memory engine (one node).
    Memory,
    /// The Redis cluster engine, on the test binary's shared `redis-server`.
    Redis,
}

/// What the engines do differently, by design: the one place scenarios take engine-specific
/// expectations from. Both behaviours are documented by the engines themselves:
/// - memory (`engine/memory.rs`, `release`): released entries go "back to the head, in their
///   original order"; the bound (`queue-max-length`) is applied when a message is appended, so a
///   release is never trimmed;
/// - Redis (module doc of `engine/redis`, "Queues"): `release` "re-adds entries **at the tail**
///   (Redis cannot insert at a stream's head)", one by one, and the bound "counts ready entries
///   only; the oldest ready ones are dropped past it", at every re-add too.
impl EngineKind {
    /// The order in which a queue delivers after `released` (unacknowledged or NACKed entries,
    /// in the order they were delivered) went back while `waiting` were ready: memory puts them
    /// before the waiting ones, Redis after them.
    pub fn order_after_release(self, released: &[&str], waiting: &[&str]) -> Vec<String> {
        let (first, then) = match self {
            EngineKind::Memory => (released, waiting),
            EngineKind::Redis => (waiting, released),
        };
        first.iter().chain(then).map(|s| s.to_string()).collect()
    }

    /// What a queue bounded to `max_length` holds (in delivery order) after `released` went back
    /// while `waiting` (at most `max_length`) were ready, and how many messages that dropped.
    /// Memory: all of them, released first, none dropped (the queue is above its bound until the
    /// next message is appended). Redis: each re-add at the tail drops the oldest ready entry
    /// past the bound, so the newest `max_length` are kept.
    pub fn bounded_after_release(
        self,
        released: &[&str],
        waiting: &[&str],
        max_length: usize,
    ) -> (Vec<String>, usize) {
        let all = self.order_after_release(released, waiting);
        match self {
            EngineKind::Memory => (all, 0),
            EngineKind::Redis => {
                let dropped = all.len().saturating_sub(max_length);
                (all[dropped..].to_vec(), dropped)
            }
        }
    }
}

/// One way to run a scenario: an engine, a number of nodes, a transport for its clients.
#[derive(Clone, Copy, Debug)]
pub struct Variant {
    pub engine: EngineKind,
    pub nodes: usize,
    pub transport: Transport,
}

impl Variant {
    pub fn memory(transport: Transport) -> Variant {
        Variant { engine: EngineKind::Memory, nodes: 1, transport }
    }

    pub fn redis(nodes: usize, transport: Transport) -> Variant {
        Variant { engine: EngineKind::Redis, nodes, transport }
    }
}

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
                let url = redis().url();
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
            let ready = eventually(WAIT, || async { node.get("/readyz").await.status == 200 }).await;
            assert!(ready, "node {i} of {variant:?} did not get ready");
        }
        Cluster { variant, nodes, prefix }
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
        self.node(i).connect(self.t()).await
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
            eventually(WAIT, || async { self.connections().await == n }).await,
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
                let script = "local len = redis.call('XLEN', KEYS[1]) \
                              local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], 'stampede') \
                              local pending = 0 \
                              if ok then pending = tonumber(p[1]) or 0 end \
                              return len - pending";
                match redis().call(&["EVAL", script, "1", &key]).await {
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

// === the shared redis-server ===

/// The `redis-server` of this test binary, started on first use.
pub fn redis() -> &'static RedisServer {
    static REDIS: OnceLock<RedisServer> = OnceLock::new();
    REDIS.get_or_init(RedisServer::start)
}

/// A `redis-server` without persistence, for the whole test process. A shell runs it and kills
/// it when its standard input, a pipe this process holds open until it exits, reaches EOF: so it
/// ends with the test binary, passed, failed or killed.
pub struct RedisServer {
    port: u16,
    _child: std::process::Child,
    _lifeline: std::process::ChildStdin,
}

/// `$@`: redis-server's arguments. Exits when Redis does (so a failed start is seen).
const REDIS_WRAPPER: &str = r#"redis-server "$@" </dev/null & pid=$!
exec 3<&0
( cat <&3 >/dev/null; kill $pid 2>/dev/null ) &
wait $pid"#;

impl RedisServer {
    fn start() -> RedisServer {
        let found = std::process::Command::new("redis-server")
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "the Redis variants need `redis-server` on PATH");
        let dir = std::env::temp_dir();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut child = std::process::Command::new("sh")
                .arg("-c")
                .arg(REDIS_WRAPPER)
                .arg("sh")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .args(["--loglevel", "warning", "--logfile", ""])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("run sh");
            let lifeline = child.stdin.take().expect("a stdin pipe");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if ping(port) {
                    return RedisServer { port, _child: child, _lifeline: lifeline };
                }
                // Exited: most likely the port was taken meanwhile; try another one.
                if child.try_wait().expect("wait for sh").is_some() || std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One command on a fresh connection; returns the reply.
    pub async fn call(&self, args: &[&str]) -> Resp {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.expect("connect to Redis");
        stream.write_all(&resp_command(args)).await.expect("write to Redis");
        let mut buf = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((reply, _)) = parse_resp(&buf) {
                return reply;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                .await
                .expect("a Redis reply in time")
                .expect("read from Redis");
            assert!(n > 0, "Redis closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 16];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read(&mut reply).is_ok_and(|n| reply[..n].starts_with(b"+PONG"))
}

/// A Redis reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One reply from the start of `buf` and its length, or None when `buf` holds less.
fn parse_resp(buf: &[u8]) -> Option<(Resp, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..end]).expect("a UTF-8 reply line");
    let after = end + 2;
    match buf.first()? {
        b'+' => Some((Resp::Simple(line.to_owned()), after)),
        b'-' => Some((Resp::Error(line.to_owned()), after)),
        b':' => Some((Resp::Int(line.parse().expect("an integer")), after)),
        b'$' => {
            let Ok(len) = usize::try_from(line.parse::<i64>().expect("a length")) else {
                return Some((Resp::Bulk(None), after));
            };
            let bytes = buf.get(after..after + len)?.to_vec();
            buf.get(after + len..after + len + 2)?;
            Some((Resp::Bulk(Some(bytes)), after + len + 2))
        }
        b'*' => {
            let Ok(n) = usize::try_from(line.parse::<i64>().expect("a count")) else {
                return Some((Resp::Array(None), after));
            };
            let mut items = Vec::with_capacity(n);
            let mut at = after;
            for _ in 0..n {
                let (item, used) = parse_resp(&buf[at..])?;
                items.push(item);
                at += used;
            }
            Some((Resp::Array(Some(items)), at))
        }
        other => panic!("not a Redis reply: {:?}", *other as char),
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

/// One HTTP/1.1 request to the admin port, with an optional body (content type, bytes).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<(&str, &[u8])>) -> HttpResponse {
    http_request(addr, method, path, &[], body).await
}
