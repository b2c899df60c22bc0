//! N `stampede` processes sharing one Redis deployment (one server, a Redis Cluster or a
//! Sentinel deployment: a [`RedisDeployment`]), each on its own free ports.
//!
//! The binary is the one cargo builds for this workspace: the first [`Cluster`] of a test
//! process runs `cargo build -p stampede` (once, behind a `OnceLock`) and takes
//! `target/<profile>/stampede`. Set [`BIN_ENV`] to use another binary instead.
//!
//! Every [`Node`] keeps its ports and arguments, so [`Node::restart`] brings back the same node
//! after a [`Node::kill`] or [`Node::stop`]. Dropping a node kills it; if the test is failing,
//! its captured log is printed first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::client::Endpoint;
use crate::http;
use crate::process::{free_port, Log, Process};
use crate::redis::Redis;
use crate::topology::RedisDeployment;
use crate::variant::{EngineKind, Transport, Variant};
use crate::wait::poll_every;

/// Environment variable: path of a `stampede` binary to test instead of building one.
pub const BIN_ENV: &str = "CLUSTER_TEST_STAMPEDE_BIN";

/// The drain period every node gets, so a SIGTERM ends quickly.
pub const DRAIN_PERIOD: Duration = Duration::from_secs(1);

/// The idle time after which live nodes claim a dead node's pending queue entries.
pub const RECLAIM_AFTER: Duration = Duration::from_secs(2);

/// How long a node may take from spawn to `/readyz` 200.
const READY_PATIENCE: Duration = Duration::from_secs(30);

/// The `stampede` binary, built on first use.
pub fn stampede_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os(BIN_ENV).filter(|b| !b.is_empty()) {
            return PathBuf::from(bin);
        }
        // Tests run from target/<profile>/deps/; the binary goes to target/<profile>/.
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(&cargo)
            .args(["build", "-p", "stampede", "--bin", "stampede", "--profile", profile])
            .current_dir(&workspace)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cargo:?} build: {e}"));
        assert!(
            output.status.success(),
            "cargo build -p stampede failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let bin = profile_dir.join("stampede");
        assert!(bin.is_file(), "cargo build -p stampede did not produce {}", bin.display());
        bin
    })
}

// === impl Cluster ===

/// The nodes of one test. Dropping it kills every node.
pub struct Cluster {
    nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `n` nodes on `redis` (the cluster engine: a [`Redis`], a
    /// [`crate::RedisCluster`] or a [`crate::RedisSentinel`]) and waits until every one is
    /// ready. `extra_args` go after the harness's own, so they override them.
    pub async fn start(n: usize, redis: &impl RedisDeployment, extra_args: &[&str]) -> Cluster {
        Cluster::launch(n, Some(redis.url()), extra_args).await
    }

    /// One node on the embedded in-memory engine (no Redis).
    pub async fn memory(extra_args: &[&str]) -> Cluster {
        Cluster::launch(1, None, extra_args).await
    }

    /// The processes of `variant`: for the Redis engine a fresh [`Redis`] (returned first, so
    /// that `let (_redis, cluster) = ...` drops the nodes before it) and its nodes; for the
    /// memory engine one node. The variant's transport is the scenario's to use.
    pub async fn of(variant: Variant, extra_args: &[&str]) -> (Option<Redis>, Cluster) {
        match variant.engine {
            EngineKind::Memory => {
                assert_eq!(variant.nodes, 1, "the memory engine runs one node");
                (None, Cluster::memory(extra_args).await)
            }
            EngineKind::Redis => {
                let redis = Redis::start().await;
                let cluster = Cluster::start(variant.nodes, &redis, extra_args).await;
                (Some(redis), cluster)
            }
        }
    }

    /// Starts `n` nodes on `redis` like [`Cluster::start`], without waiting until they are
    /// ready: for a node that must not become ready.
    pub fn spawn(n: usize, redis: &impl RedisDeployment, extra_args: &[&str]) -> Cluster {
        Cluster::spawn_with(n, Some(redis.url()), extra_args)
    }

    async fn launch(n: usize, redis_url: Option<String>, extra_args: &[&str]) -> Cluster {
        // Owned before waiting, so a node that never gets ready is still killed and its log
        // printed by the drop that follows the panic.
        let cluster = Cluster::spawn_with(n, redis_url, extra_args);
        for node in &cluster.nodes {
            node.wait_ready().await;
        }
        cluster
    }

    fn spawn_with(n: usize, redis_url: Option<String>, extra_args: &[&str]) -> Cluster {
        assert!(n > 0, "a cluster has at least one node");
        let bin = stampede_bin();
        let nodes: Vec<Node> = (0..n).map(|i| Node::new(bin, i, redis_url.clone(), extra_args)).collect();
        for node in &nodes {
            node.spawn();
        }
        Cluster { nodes }
    }

    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Each node's endpoint for `transport`, in node order: what a client that fails over
    /// from node to node needs.
    pub fn endpoints(&self, transport: Transport) -> Vec<Endpoint> {
        self.nodes.iter().map(|node| node.endpoint(transport)).collect()
    }
}

// === impl Node ===

/// One `stampede` process, stopped or running.
pub struct Node {
    index: usize,
    id: String,
    bin: PathBuf,
    listen: SocketAddr,
    stomp: SocketAddr,
    admin: SocketAddr,
    args: Vec<String>,
    log: Log,
    process: Mutex<Option<Process>>,
}

impl Node {
    fn new(bin: &Path, index: usize, redis_url: Option<String>, extra_args: &[&str]) -> Node {
        let id = format!("node-{index}");
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (listen, stomp, admin) = (local(free_port()), local(free_port()), local(free_port()));
        let mut args: Vec<String> = vec![
            "--listen".into(),
            listen.to_string(),
            "--stomp-listen".into(),
            stomp.to_string(),
            "--admin-listen".into(),
            admin.to_string(),
            "--node-id".into(),
            id.clone(),
            "--drain-period".into(),
            humantime(DRAIN_PERIOD),
            "--queue-reclaim-after".into(),
            humantime(RECLAIM_AFTER),
        ];
        if let Some(url) = redis_url {
            args.extend(["--redis-url".into(), url]);
        }
        args.extend(extra_args.iter().map(|a| a.to_string()));
        Node {
            index,
            log: Log::new(&id),
            id,
            bin: bin.to_owned(),
            listen,
            stomp,
            admin,
            args,
            process: Mutex::new(None),
        }
    }

    /// `node-<index>`, as passed to `--node-id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// `ws://127.0.0.1:<port>/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.listen)
    }

    /// The client HTTP port (WebSocket at `/ws`).
    pub fn ws_addr(&self) -> SocketAddr {
        self.listen
    }

    /// STOMP over plain TCP.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.stomp
    }

    /// `http://127.0.0.1:<port>`, the admin port.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn endpoint(&self, transport: Transport) -> Endpoint {
        match transport {
            Transport::Ws => Endpoint::Ws(self.ws_url()),
            Transport::Tcp => Endpoint::Tcp(self.stomp),
        }
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.lock().expect("node process").as_ref().map(Process::pid)
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.process.lock().expect("node process").as_mut().is_some_and(|p| p.exit_status().is_none())
    }

    /// SIGKILL (`kill -9`): no drain, nothing handed back.
    pub fn kill(&self) {
        if let Some(mut process) = self.process.lock().expect("node process").take() {
            process.kill();
        }
    }

    /// SIGTERM, then waits for the drain to end and the process to exit. Returns its exit
    /// status, or `None` if it had to be killed.
    pub async fn stop(&self) -> Option<ExitStatus> {
        let process = self.process.lock().expect("node process").take();
        let mut process = process?;
        process.terminate(DRAIN_PERIOD + Duration::from_secs(10)).await
    }

    /// Starts it again with the same ports and arguments and waits until it is ready.
    pub async fn restart(&self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    /// `GET /readyz` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        matches!(http::get(self.admin, "/readyz").await, Ok(r) if r.status == 200)
    }

    /// The status `GET /readyz` answers now, or `None` if the admin port does not answer.
    pub async fn readyz(&self) -> Option<u16> {
        http::get(self.admin, "/readyz").await.ok().map(|r| r.status)
    }

    fn spawn(&self) {
        let mut command = Command::new(&self.bin);
        command.args(&self.args);
        let process = Process::spawn(command, &self.log);
        *self.process.lock().expect("node process") = Some(process);
    }

    /// Waits until `/readyz` answers 200; panics if the process exits first or takes too long.
    pub async fn wait_ready(&self) {
        // Done (`Ok`) when `/readyz` answers 200 or the process is gone; polled again otherwise.
        let outcome = poll_every(READY_PATIENCE, Duration::from_millis(50), || async {
            let exited = self.process.lock().expect("node process").as_mut().map(Process::exit_status);
            match exited {
                None => Ok(Err(format!("{} is not running: nothing to wait for", self.id))),
                Some(Some(status)) => Ok(Err(format!("{} exited ({status}) before it was ready", self.id))),
                Some(None) if self.is_ready().await => Ok(Ok(())),
                Some(None) => Err(()),
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => self.log.note("ready"),
            Ok(Err(why)) => panic!("{why}"),
            Err(()) => panic!("{} was not ready within {READY_PATIENCE:?}", self.id),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        self.log.on_drop();
    }
}

fn humantime(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}
