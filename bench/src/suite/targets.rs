//! The targets, started on loopback and stopped again: the raw baseline, Stampede on its
//! embedded engine, Stampede as N nodes on Redis (the test kit's process harness), and the peers
//! users would pick instead, each a private instance with its own directory and loopback ports:
//! RabbitMQ with Web-STOMP, ActiveMQ with STOMP, and nats-server with its WebSocket listener;
//! and, for the sharded phase, the same N nodes on a Redis Cluster of a given number of
//! primaries ([`start_sharded`]).
//!
//! ActiveMQ is driven over STOMP on plain TCP: Debian's build leaves out the `activemq-http`
//! module, and with it the `ws://` transport ("Transport scheme NOT recognized: [ws]"; see
//! `/usr/share/doc/libactivemq-java/README.Debian`). STOMP over TCP is its own fastest STOMP
//! path, so the comparison is not tilted against it.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stampede_testkit::process::{free_port, temp_dir, Process};
use stampede_testkit::{Cluster, Log, Redis, RedisCluster};

use crate::conn::Protocol;

/// Which target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Baseline,
    Memory,
    Cluster,
    Rabbitmq,
    Activemq,
    Nats,
}

impl Kind {
    pub const ALL: [Kind; 6] =
        [Kind::Baseline, Kind::Memory, Kind::Cluster, Kind::Rabbitmq, Kind::Activemq, Kind::Nats];

    /// The brokers users would pick instead of Stampede.
    pub const PEERS: [Kind; 3] = [Kind::Rabbitmq, Kind::Activemq, Kind::Nats];

    pub fn parse(name: &str) -> Option<Kind> {
        match name {
            "baseline" => Some(Kind::Baseline),
            "memory" | "stampede" => Some(Kind::Memory),
            "cluster" | "redis" => Some(Kind::Cluster),
            "rabbitmq" | "rabbit" => Some(Kind::Rabbitmq),
            "activemq" => Some(Kind::Activemq),
            "nats" | "nats-server" => Some(Kind::Nats),
            _ => None,
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Kind::Baseline => "baseline",
            Kind::Memory => "memory",
            Kind::Cluster => "cluster",
            Kind::Rabbitmq => "rabbitmq",
            Kind::Activemq => "activemq",
            Kind::Nats => "nats",
        }
    }

    pub fn title(self, nodes: usize) -> String {
        match self {
            Kind::Baseline => "raw WS baseline".into(),
            Kind::Memory => "Stampede, 1 node (memory)".into(),
            Kind::Cluster => format!("Stampede, {nodes} nodes + Redis"),
            Kind::Rabbitmq => "RabbitMQ Web-STOMP".into(),
            Kind::Activemq => "ActiveMQ STOMP (TCP)".into(),
            Kind::Nats => "NATS (WebSocket)".into(),
        }
    }
}

/// A running target.
pub struct Running {
    pub kind: Kind,
    pub urls: Vec<String>,
    pub protocol: Protocol,
    pub login: Option<(String, String)>,
    /// The broker processes (sampled for RSS and CPU).
    pub pids: Vec<u32>,
    /// The version the target reports, when known.
    pub version: String,
    pub redis: Option<Redis>,
    /// The Redis Cluster of the sharded phase (in place of `redis`).
    pub redis_cluster: Option<RedisCluster>,
    cluster: Option<Cluster>,
    process: Option<Process>,
    rabbit: Option<Rabbit>,
    /// The peer's directory (config, data), removed when it stops.
    dir: Option<PathBuf>,
}

impl Running {
    /// A target of `kind` speaking STOMP, with nothing started yet.
    fn new(kind: Kind, version: String) -> Running {
        Running {
            kind,
            urls: Vec::new(),
            protocol: Protocol::Stomp,
            login: None,
            pids: Vec::new(),
            version,
            redis: None,
            redis_cluster: None,
            cluster: None,
            process: None,
            rabbit: None,
            dir: None,
        }
    }

    pub async fn stop(mut self) {
        if let Some(mut rabbit) = self.rabbit.take() {
            rabbit.stop();
        }
        drop(self.cluster.take());
        drop(self.process.take());
        drop(self.redis.take());
        drop(self.redis_cluster.take());
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Running {
    /// The redis-server processes the target runs on: none, the one, or every Cluster node.
    pub fn redis_servers(&self) -> Vec<&Redis> {
        match (&self.redis, &self.redis_cluster) {
            (Some(redis), _) => vec![redis],
            (None, Some(cluster)) => cluster.nodes().iter().collect(),
            (None, None) => Vec::new(),
        }
    }

    /// What the reports call it.
    pub fn title(&self) -> String {
        match &self.redis_cluster {
            Some(cluster) => sharded_title(self.urls.len(), cluster.nodes().len()),
            None => self.kind.title(self.urls.len()),
        }
    }
}

/// "Stampede, 3 nodes + Redis Cluster (2 primaries)".
pub fn sharded_title(nodes: usize, primaries: usize) -> String {
    let s = if primaries == 1 { "y" } else { "ies" };
    format!("Stampede, {nodes} nodes + Redis Cluster ({primaries} primar{s})")
}

/// Programs the suite needs; a missing one is reported with how to install it.
pub struct Bins {
    pub stampede: PathBuf,
    pub bench: PathBuf,
    pub baseline: PathBuf,
}

/// What is missing for `kind`, with install hints; empty when it can run.
pub fn missing(kind: Kind, bins: &Bins) -> Vec<String> {
    let mut out = Vec::new();
    let file = |path: &Path, hint: &str, out: &mut Vec<String>| {
        if !path.is_file() {
            out.push(format!("{} not found ({hint})", path.display()));
        }
    };
    file(&bins.bench, "cargo build --release -p stampede-bench", &mut out);
    match kind {
        Kind::Baseline => file(&bins.baseline, "cargo build --release -p stampede-bench", &mut out),
        Kind::Memory => file(&bins.stampede, "cargo build --release -p stampede", &mut out),
        Kind::Cluster => {
            file(&bins.stampede, "cargo build --release -p stampede", &mut out);
            for program in ["redis-server", "redis-cli"] {
                if which(program).is_none() {
                    out.push(format!("{program} not on PATH (apt-get install redis-server)"));
                }
            }
        }
        Kind::Rabbitmq => {
            if rabbitmq_server().is_none() {
                out.push(
                    "rabbitmq-server not found (apt-get install rabbitmq-server; the suite starts its own \
                     node with rabbitmq_web_stomp enabled, as `rabbitmq-plugins enable rabbitmq_web_stomp` \
                     would)"
                        .into(),
                );
            } else if !rabbitmq_has_web_stomp() {
                out.push(
                    "the rabbitmq_web_stomp plugin is not installed (it ships with rabbitmq-server)".into(),
                );
            }
        }
        Kind::Activemq => {
            if !Path::new(ACTIVEMQ_JAR).is_file() {
                out.push(format!(
                    "{ACTIVEMQ_JAR} not found (apt-get install activemq; the suite starts its own broker \
                     with a STOMP connector, not the packaged instance)"
                ));
            }
            if which("java").is_none() {
                out.push("java not on PATH (apt-get install default-jre-headless)".into());
            }
        }
        Kind::Nats => {
            if which("nats-server").is_none() {
                out.push(
                    "nats-server not on PATH (apt-get install nats-server; the suite starts its own \
                     server with its websocket block on, no_tls, on loopback)"
                        .into(),
                );
            }
        }
    }
    out
}

/// Debian's ActiveMQ launcher jar (`activemq` package).
const ACTIVEMQ_JAR: &str = "/usr/share/activemq/bin/activemq.jar";

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

fn rabbitmq_server() -> Option<PathBuf> {
    let direct = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if direct.is_file() {
        return Some(direct);
    }
    which("rabbitmq-server")
}

fn rabbitmq_has_web_stomp() -> bool {
    let Ok(versions) = std::fs::read_dir("/usr/lib/rabbitmq/lib") else { return true };
    versions.flatten().any(|v| {
        std::fs::read_dir(v.path().join("plugins"))
            .map(|plugins| {
                plugins.flatten().any(|p| p.file_name().to_string_lossy().starts_with("rabbitmq_web_stomp-"))
            })
            .unwrap_or(false)
    })
}

/// Starts `kind` and waits until it serves WebSocket clients.
pub async fn start(
    kind: Kind,
    bins: &Bins,
    nodes: usize,
    node_workers: usize,
    rabbitmq_url: Option<&str>,
) -> Result<Running, String> {
    start_with(kind, bins, nodes, node_workers, rabbitmq_url, &[]).await
}

/// [`start`], with settings of Stampede's own for each node (`--connect-hook ...`).
pub async fn start_with(
    kind: Kind,
    bins: &Bins,
    nodes: usize,
    node_workers: usize,
    rabbitmq_url: Option<&str>,
    extra_args: &[&str],
) -> Result<Running, String> {
    let mut running = Running::new(kind, String::new());
    match kind {
        Kind::Baseline => {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut command = Command::new(&bins.baseline);
            command.args(["--listen", &addr.to_string()]);
            let process = Process::spawn(command, &Log::new("ws-baseline"));
            wait_for_port(addr, Duration::from_secs(10)).await?;
            running.pids.push(process.pid());
            running.process = Some(process);
            running.urls.push(format!("ws://{addr}/ws"));
            running.protocol = Protocol::Raw;
            running.version = "this repository".into();
        }
        Kind::Memory | Kind::Cluster => {
            // The harness builds nothing when it is told which binary to run.
            std::env::set_var(stampede_testkit::cluster::BIN_ENV, &bins.stampede);
            let cluster = if kind == Kind::Memory {
                Cluster::memory(extra_args).await
            } else {
                // One standalone redis-server (classic pub/sub); the same nodes on a Redis
                // Cluster per number of primaries are the sharded phase's (`start_sharded`).
                let redis = Redis::start().await;
                // The harness's Redis fsyncs every write (for its crash tests); a benchmark wants
                // Redis as deployed for pub/sub: no append-only file.
                redis.cli(&["CONFIG", "SET", "appendonly", "no"]).await;
                let workers = node_workers.to_string();
                let mut args = vec!["--worker-threads", workers.as_str()];
                args.extend_from_slice(extra_args);
                let cluster = Cluster::start(nodes, &redis, &args).await;
                running.version = redis_version(&redis).await;
                // Redis is part of the cluster: its CPU and memory count with the nodes'.
                let port = format!(":{}", redis.addr().port());
                let redis_pid = find_pid(|args| {
                    let line = args.join(" ");
                    line.contains("redis-server") && line.contains(&port)
                });
                running.pids.extend(redis_pid);
                running.redis = Some(redis);
                cluster
            };
            adopt_nodes(&mut running, bins, cluster)?;
        }
        Kind::Rabbitmq => {
            running.login = Some(("guest".into(), "guest".into()));
            if let Some(url) = rabbitmq_url {
                running.urls.push(url.to_owned());
                running.version = "external instance".into();
                if let Some(pid) = find_pid(|args| args.first().is_some_and(|a| a.ends_with("beam.smp"))) {
                    running.pids.push(pid);
                }
            } else {
                let rabbit = Rabbit::start().await?;
                running.urls.push(format!("ws://{}/ws", rabbit.web_stomp));
                running.pids.push(rabbit.beam);
                running.version = rabbit.version.clone();
                running.rabbit = Some(rabbit);
            }
        }
        Kind::Activemq => start_activemq(&mut running).await?,
        Kind::Nats => start_nats(&mut running).await?,
    }
    Ok(running)
}

/// Takes `cluster`'s nodes into `running`: their pids (sampled), URLs and version.
fn adopt_nodes(running: &mut Running, bins: &Bins, cluster: Cluster) -> Result<(), String> {
    for node in cluster.nodes() {
        let listen = node.ws_url();
        let listen = listen.trim_start_matches("ws://").trim_end_matches("/ws").to_owned();
        let pid = find_pid(|args| args.windows(2).any(|w| w[0] == "--listen" && w[1] == listen))
            .ok_or_else(|| format!("cannot find the pid of {}", node.id()))?;
        running.pids.push(pid);
        running.urls.push(node.ws_url());
    }
    let version = Command::new(&bins.stampede).arg("--version").output().ok();
    let stampede = version.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    running.version =
        if running.version.is_empty() { stampede } else { format!("{stampede}; {}", running.version) };
    running.cluster = Some(cluster);
    Ok(())
}

/// Starts a Redis Cluster of `primaries` primaries (no replicas, no persistence: the test kit's
/// [`RedisCluster::start_unreplicated`]) and `nodes` Stampede nodes on it
/// (`redis-cluster://...`: sharded pub/sub), and waits until every node is ready. Every
/// redis-server's CPU and memory count with the nodes'.
pub async fn start_sharded(
    bins: &Bins,
    nodes: usize,
    node_workers: usize,
    primaries: usize,
) -> Result<Running, String> {
    std::env::set_var(stampede_testkit::cluster::BIN_ENV, &bins.stampede);
    // The test kit panics (after printing the servers' logs) when the cluster does not form.
    let redis = tokio::spawn(RedisCluster::start_unreplicated(primaries))
        .await
        .map_err(|e| format!("the Redis Cluster of {primaries} did not form: {e}"))?;
    let version = redis_version(&redis.nodes()[0]).await;
    let major = version.strip_prefix("Redis ").and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    if major.is_some_and(|m| m < 7) {
        return Err(format!("sharded pub/sub needs Redis 7.0 or later; this is {version}"));
    }
    let mut running = Running::new(Kind::Cluster, version);
    for server in redis.nodes() {
        let port = format!(":{}", server.port());
        let pid = find_pid(|args| {
            let line = args.join(" ");
            line.contains("redis-server") && line.contains(&port)
        })
        .ok_or_else(|| format!("cannot find the pid of the redis-server on port {}", server.port()))?;
        running.pids.push(pid);
    }
    // The test kit panics (after printing the nodes' logs) when a node does not get ready; the
    // task's panic becomes this count's failure, and the servers are stopped with it.
    let (redis, cluster) = tokio::spawn(async move {
        let workers = node_workers.to_string();
        let cluster = Cluster::start(nodes, &redis, &["--worker-threads", workers.as_str()]).await;
        (redis, cluster)
    })
    .await
    .map_err(|e| format!("the nodes on the Redis Cluster of {primaries} did not get ready: {e}"))?;
    running.redis_cluster = Some(redis);
    adopt_nodes(&mut running, bins, cluster)?;
    Ok(running)
}

// === ActiveMQ and NATS ===

/// A private ActiveMQ broker: no persistence (as Stampede's embedded engine and RabbitMQ's
/// non-durable queues), no JMX, one STOMP connector (NIO) on a loopback port; no login (the
/// broker has no authentication plugin configured).
async fn start_activemq(running: &mut Running) -> Result<(), String> {
    let dir = temp_dir("activemq");
    let port = free_port();
    let data = dir.join("data");
    let config = format!(
        r#"<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false" brokerName="stampede-bench"
          persistent="false" dataDirectory="{data}">
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp+nio://127.0.0.1:{port}?maximumConnections=200000"/>
    </transportConnectors>
  </broker>
</beans>
"#,
        data = data.display()
    );
    let file = dir.join("activemq.xml");
    std::fs::write(&file, config).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let mut command = Command::new("java");
    // The launcher's settings (/usr/bin/activemq, /usr/share/activemq/activemq-options), but
    // with pooled task runners, as ActiveMQ's guide to thousands of connections says: Debian's
    // `UseDedicatedTaskRunner=true` starts a thread per connection, and at 10,659 idle
    // connections the JVM failed with "unable to create native thread" (kernel.pid_max 32,768
    // here), taking the broker's later runs with it.
    command
        .args(["-Xms512M", "-Xmx512M", "-Dorg.apache.activemq.UseDedicatedTaskRunner=false"])
        .args(["--add-reads=java.xml=java.logging"])
        .args(["--add-opens", "java.base/java.lang=ALL-UNNAMED"])
        .args(["--add-opens", "java.base/java.util=ALL-UNNAMED"])
        .args(["--add-opens", "java.base/java.util.concurrent=ALL-UNNAMED"])
        .args(["--add-opens", "java.base/java.net=ALL-UNNAMED"])
        .arg("-Dactivemq.home=/usr/share/activemq")
        .arg(format!("-Dactivemq.base={}", dir.display()))
        .arg(format!("-Dactivemq.conf={}", dir.display()))
        .arg(format!("-Dactivemq.data={}", data.display()))
        .args(["-jar", ACTIVEMQ_JAR, "start"])
        .arg(format!("xbean:file:{}", file.display()))
        .current_dir(&dir);
    let log = Log::new("activemq");
    let mut process = Process::spawn(command, &log);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = process.exit_status() {
            log.dump();
            return Err(format!("ActiveMQ exited ({status}) before its STOMP port opened"));
        }
        if Instant::now() > deadline {
            log.dump();
            return Err("ActiveMQ did not open its STOMP port within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.urls.push(format!("tcp://{addr}"));
    running.pids.push(process.pid());
    running.version = jar_version("activemq-broker-")
        .map(|v| format!("ActiveMQ {v} (Debian; STOMP over TCP: no ws:// transport in this build)"))
        .unwrap_or_else(|| "ActiveMQ".into());
    running.process = Some(process);
    running.dir = Some(dir);
    Ok(())
}

/// The version in a jar's name under /usr/share/java (`activemq-broker-5.17.2.jar`).
fn jar_version(prefix: &str) -> Option<String> {
    std::fs::read_dir("/usr/share/java").ok()?.flatten().find_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        let version = name.strip_prefix(prefix)?.strip_suffix(".jar")?;
        version.starts_with(|c: char| c.is_ascii_digit()).then(|| version.to_owned())
    })
}

/// A private nats-server: client port and WebSocket listener on loopback, `no_tls` (the
/// benchmark's traffic never leaves the machine), no limit on connections below the machine's.
async fn start_nats(running: &mut Running) -> Result<(), String> {
    let dir = temp_dir("nats");
    let (client, ws) = (free_port(), free_port());
    let config = format!(
        "listen: 127.0.0.1:{client}\n\
         max_connections: 1000000\n\
         websocket {{\n  listen: \"127.0.0.1:{ws}\"\n  no_tls: true\n  compression: false\n}}\n"
    );
    let file = dir.join("nats.conf");
    std::fs::write(&file, config).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let mut command = Command::new("nats-server");
    command.arg("-c").arg(&file).current_dir(&dir);
    let log = Log::new("nats-server");
    let mut process = Process::spawn(command, &log);
    let addr = SocketAddr::from(([127, 0, 0, 1], ws));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = process.exit_status() {
            log.dump();
            return Err(format!("nats-server exited ({status}) before its WebSocket port opened"));
        }
        if Instant::now() > deadline {
            log.dump();
            return Err("nats-server did not open its WebSocket port within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let version = Command::new("nats-server").arg("--version").output().ok();
    running.version = version
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().replace("nats-server: v", "nats-server "))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "nats-server".into());
    running.urls.push(format!("ws://{addr}/"));
    running.protocol = Protocol::Nats;
    running.pids.push(process.pid());
    running.process = Some(process);
    running.dir = Some(dir);
    Ok(())
}

async fn redis_version(redis: &Redis) -> String {
    let info = redis.cli(&["INFO", "server"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| format!("Redis {}", v.trim()))
        .unwrap_or_default()
}

/// `INFO commandstats` as command → calls (the `info` command itself left out), summed over
/// `servers`.
pub async fn command_stats(servers: &[&Redis]) -> BTreeMap<String, u64> {
    let mut stats = BTreeMap::new();
    for each in command_stats_each(servers).await {
        for (name, calls) in each {
            *stats.entry(name).or_insert(0) += calls;
        }
    }
    stats
}

/// `INFO commandstats` of each of `servers`, in their order, as command → calls (the `info`
/// command itself left out).
pub async fn command_stats_each(servers: &[&Redis]) -> Vec<BTreeMap<String, u64>> {
    let mut all = Vec::with_capacity(servers.len());
    for redis in servers {
        let text = redis.cli(&["INFO", "commandstats"]).await;
        let mut stats = BTreeMap::new();
        for line in text.lines() {
            let Some((name, rest)) = line.trim().strip_prefix("cmdstat_").and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            if name != "info" {
                stats.insert(name.to_owned(), calls);
            }
        }
        all.push(stats);
    }
    all
}

/// The cluster-bus messages sent, by type (`ping`, `pong`, `publish`, `publishshard`, ...), from
/// `CLUSTER INFO`'s `cluster_stats_messages_<type>_sent`, summed over `servers` (Redis Cluster
/// nodes).
pub async fn bus_stats(servers: &[&Redis]) -> BTreeMap<String, u64> {
    let mut stats = BTreeMap::new();
    for redis in servers {
        let text = redis.cli(&["CLUSTER", "INFO"]).await;
        for line in text.lines() {
            let Some((name, value)) = line.trim().split_once(':') else { continue };
            let Some(kind) =
                name.strip_prefix("cluster_stats_messages_").and_then(|n| n.strip_suffix("_sent"))
            else {
                continue;
            };
            *stats.entry(kind.to_owned()).or_insert(0) += value.trim().parse::<u64>().unwrap_or(0);
        }
    }
    stats
}

async fn wait_for_port(addr: SocketAddr, patience: Duration) -> Result<(), String> {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("nothing listens on {addr} after {patience:?}"))
}

/// The first process whose command line (split on NULs) satisfies `matches`. Reads
/// `/proc/<pid>/cmdline` once per process: bounded by the number of processes.
pub fn find_pid(matches: impl Fn(&[String]) -> bool) -> Option<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if matches(&args) {
            found.push(pid);
        }
    }
    found.into_iter().max()
}

/// A port below the ephemeral range that nothing listens on, for servers (like Erlang's) that bind
/// without `SO_REUSEADDR`: a port in the ephemeral range may be held in TIME_WAIT by the load
/// generator's earlier client sockets. `preferred` first; `taken` collects what was handed out.
fn quiet_port(preferred: Option<u16>, taken: &mut Vec<u16>) -> Result<u16, String> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (first, last) = (10_000u16, low.saturating_sub(1).max(10_001));
    let span = u32::from(last - first);
    let start = std::process::id() % span;
    let candidates =
        preferred.into_iter().chain((0..span).map(|i| first + ((start + i * 7919) % span) as u16));
    for port in candidates.take(4000) {
        if !taken.contains(&port) && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            taken.push(port);
            return Ok(port);
        }
    }
    Err("no free port below the ephemeral range".into())
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()
}

// === RabbitMQ ===

/// A private RabbitMQ node: its own directory, node name and ports, in its own process group.
struct Rabbit {
    process: Option<Process>,
    group: u32,
    beam: u32,
    web_stomp: SocketAddr,
    dir: PathBuf,
    started_epmd: bool,
    version: String,
    log: Log,
}

impl Rabbit {
    async fn start() -> Result<Rabbit, String> {
        let server = rabbitmq_server().ok_or("rabbitmq-server not found")?;
        let dir = temp_dir("rabbitmq");
        let mut taken = Vec::new();
        let web_stomp = SocketAddr::from(([127, 0, 0, 1], quiet_port(Some(15674), &mut taken)?));
        let amqp = quiet_port(None, &mut taken)?;
        let stomp = quiet_port(None, &mut taken)?;
        let dist = quiet_port(None, &mut taken)?;
        let config = format!(
            "listeners.tcp.default = 127.0.0.1:{amqp}\n\
             stomp.listeners.tcp.1 = 127.0.0.1:{stomp}\n\
             web_stomp.tcp.ip = 127.0.0.1\n\
             web_stomp.tcp.port = {}\n\
             loopback_users = none\n\
             log.console = true\n\
             log.console.level = warning\n\
             log.file = false\n",
            web_stomp.port()
        );
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).map_err(|e| format!("cannot write {name}: {e}"))
        };
        write("rabbitmq.conf", &config)?;
        write("enabled_plugins", "[rabbitmq_web_stomp].\n")?;
        let started_epmd =
            TcpStream::connect_timeout(&"127.0.0.1:4369".parse().expect("addr"), Duration::from_millis(200))
                .is_err();
        let mut command = Command::new(&server);
        command
            .current_dir(&dir)
            .env("HOME", &dir)
            .env("RABBITMQ_NODENAME", format!("stampede-bench-{}@localhost", std::process::id()))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins-expand"))
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .process_group(0);
        let log = Log::new("rabbitmq");
        let process = Process::spawn(command, &log);
        let group = process.pid();
        let mut rabbit = Rabbit {
            process: Some(process),
            group,
            beam: 0,
            web_stomp,
            dir,
            started_epmd,
            version: String::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if rabbit.beam == 0 {
                rabbit.beam = find_pid(|args| args.first().is_some_and(|a| a.ends_with("beam.smp")))
                    .filter(|pid| parent_of(*pid) == Some(group))
                    .unwrap_or(0);
            }
            if rabbit.beam != 0 && TcpStream::connect_timeout(&web_stomp, Duration::from_millis(200)).is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                rabbit.log.dump();
                rabbit.stop();
                return Err("RabbitMQ did not open its Web-STOMP port within 120 s".into());
            }
            let exited = rabbit.process.as_mut().and_then(Process::exit_status);
            if let Some(status) = exited {
                rabbit.log.dump();
                rabbit.stop();
                return Err(format!("rabbitmq-server exited ({status}) before it was ready"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        rabbit.version = rabbit
            .log
            .text()
            .lines()
            .find_map(|l| {
                l.split("RabbitMQ ").nth(1).map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
            })
            .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
            .map(|v| format!("RabbitMQ {v}"))
            .unwrap_or_else(|| "RabbitMQ".into());
        Ok(rabbit)
    }

    fn stop(&mut self) {
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &format!("-{}", self.group)])
                .stderr(std::process::Stdio::null())
                .status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline
            && self.beam != 0
            && Path::new(&format!("/proc/{}", self.beam)).exists()
        {
            if std::fs::read_to_string(format!("/proc/{}/stat", self.beam)).is_ok_and(|s| s.contains(") Z "))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        signal("-KILL");
        drop(self.process.take());
        if self.started_epmd {
            let _ = Command::new("epmd").arg("-kill").env("ERL_EPMD_ADDRESS", "127.0.0.1").output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        if self.process.is_some() {
            self.stop();
        }
    }
}
