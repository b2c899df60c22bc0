//! The Redis deployments users grow into, started for real from Debian's binaries: a Redis
//! Cluster ([`RedisCluster`]: masters, their replicas, `redis-cli --cluster create`) and a
//! Sentinel deployment ([`RedisSentinel`]: a master, a replica, three Sentinels), each process a
//! [`Redis`] of its own (its own port, directory and [`crate::Log`], printed when a test fails;
//! killed and removed when dropped). Both wait at start until the deployment is whole, so a
//! scenario starts on a healthy one, and both can kill a master and wait, measuring, until
//! Redis has failed over.
//!
//! [`RedisDeployment`] is what a [`crate::Cluster`] of `stampede` nodes needs of any of them,
//! the plain [`Redis`] included: the `--redis-url`.
//!
//! # Layout
//! - [`RedisCluster`]: `cluster-enabled yes`, `cluster-node-timeout 2000`, the append-only file
//!   as [`Redis::start`] has it ([`RedisCluster::start_unreplicated`]: no persistence, no
//!   replicas, any number of masters, for the benchmark); [`RedisCluster::master_for_key`] (by `CLUSTER KEYSLOT` and
//!   `CLUSTER SLOTS`), [`RedisCluster::kill`], [`RedisCluster::wait_failover`],
//!   [`RedisCluster::restart`], [`RedisCluster::cli`].
//! - [`RedisSentinel`]: service [`SERVICE`], quorum 2, `down-after-milliseconds 1000`;
//!   [`RedisSentinel::kill_master`], [`RedisSentinel::wait_new_master`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::process::free_port_with_bus;
use crate::redis::{try_call, Redis, Resp};
use crate::wait::poll_every;

/// How long a topology may take to become whole at start (cluster creation, replicas synced,
/// Sentinels finding each other) and after a restart.
const FORM_PATIENCE: Duration = Duration::from_secs(30);

/// How long Redis may take to fail over after a master's kill -9: detection (the node timeout
/// or `down-after-milliseconds`), election and promotion take a few seconds.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(30);

/// A master syncs a new replica at once: by default it waits 5 s for more replicas to share
/// one transfer, which only makes a test wait.
const NO_SYNC_DELAY: [&str; 2] = ["--repl-diskless-sync-delay", "0"];

/// Time between two looks at a topology's state.
const LOOK: Duration = Duration::from_millis(100);

/// A Redis Cluster node's failure detection time: short, so a failover fits in a test.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(2000);

/// The Sentinel service name of [`RedisSentinel`].
pub const SERVICE: &str = "stampede";

/// A Sentinel's `down-after-milliseconds`: how long a master may be silent before it is
/// considered down.
pub const SENTINEL_DOWN_AFTER: Duration = Duration::from_millis(1000);

/// What a [`crate::Cluster`] of `stampede` nodes needs of a Redis deployment: its URL.
pub trait RedisDeployment {
    /// The `--redis-url` of the nodes.
    fn url(&self) -> String;
}

impl RedisDeployment for Redis {
    fn url(&self) -> String {
        Redis::url(self)
    }
}

impl RedisDeployment for RedisCluster {
    fn url(&self) -> String {
        RedisCluster::url(self)
    }
}

impl RedisDeployment for RedisSentinel {
    fn url(&self) -> String {
        RedisSentinel::url(self)
    }
}

// === impl RedisCluster ===

/// A Redis Cluster on loopback: every process a [`Redis`] with `cluster-enabled yes`.
pub struct RedisCluster {
    nodes: Vec<Redis>,
}

impl RedisCluster {
    /// Starts `masters × (1 + replicas_per_master)` servers, joins them with `redis-cli
    /// --cluster create --cluster-replicas <replicas_per_master>`, and waits until every node
    /// says `cluster_state:ok` with all 16384 slots covered, knows every other node, and every
    /// replica's link to its master is up. Panics, saying what it last saw, otherwise.
    pub async fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        assert!(masters >= 3, "redis-cli --cluster create wants at least 3 masters, not {masters}");
        crate::system::require("redis-cli", "redis-tools");
        let total = masters * (1 + replicas_per_master);
        let nodes: Vec<Redis> = (0..total)
            .map(|i| Redis::member(&format!("redis-cluster-{i}"), free_port_with_bus(), true, member_args()))
            .collect();
        // Owned before anything can fail, so every process is killed and its log printed.
        let cluster = RedisCluster { nodes };
        for node in &cluster.nodes {
            node.launch().await;
        }
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(cluster.nodes.iter().map(|n| n.addr().to_string()));
        create.extend(["--cluster-replicas".into(), replicas_per_master.to_string(), "--cluster-yes".into()]);
        let output = tokio::process::Command::new("redis-cli")
            .args(&create)
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        let said =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        cluster.nodes[0].log().note(&format!("redis-cli {}:\n{said}", create.join(" ")));
        assert!(output.status.success(), "redis-cli --cluster create failed ({}):\n{said}", output.status);
        cluster.wait_whole("the new Redis Cluster").await;
        cluster
    }

    /// `masters` servers without persistence (`appendonly no`) and without replicas, each
    /// owning an even share of the 16384 slots (`CLUSTER ADDSLOTSRANGE`, Redis 7.0), joined by
    /// `CLUSTER MEET`: the shape of a throughput benchmark per shard count. `redis-cli
    /// --cluster create` wants 3 masters at least; this takes 1 and 2 as well. Waits until the
    /// cluster is whole, as [`RedisCluster::start`]; panics, saying what it last saw, otherwise.
    pub async fn start_unreplicated(masters: usize) -> RedisCluster {
        assert!(masters >= 1, "a Redis Cluster has at least one master");
        // A node that has met no other does not know its own address, and names it "" in
        // CLUSTER SLOTS: announced, so a lone primary is reachable too.
        let args: Vec<String> =
            member_args().into_iter().chain(["--cluster-announce-ip".into(), "127.0.0.1".into()]).collect();
        let nodes: Vec<Redis> = (0..masters)
            .map(|i| Redis::member(&format!("redis-shard-{i}"), free_port_with_bus(), false, args.clone()))
            .collect();
        let cluster = RedisCluster { nodes };
        for (i, node) in cluster.nodes.iter().enumerate() {
            node.launch().await;
            let (first, last) = (i * SLOTS / masters, (i + 1) * SLOTS / masters - 1);
            // Distinct config epochs before the nodes meet, as redis-cli sets them.
            let epoch = (i + 1).to_string();
            expect_ok(node, &["CLUSTER", "SET-CONFIG-EPOCH", &epoch]).await;
            expect_ok(node, &["CLUSTER", "ADDSLOTSRANGE", &first.to_string(), &last.to_string()]).await;
        }
        let first = cluster.nodes[0].port().to_string();
        for node in &cluster.nodes[1..] {
            expect_ok(node, &["CLUSTER", "MEET", "127.0.0.1", &first]).await;
        }
        cluster.wait_whole("the new Redis Cluster").await;
        cluster
    }

    /// `redis-cluster://127.0.0.1:p1,127.0.0.1:p2,...`: every node, so a client finds the
    /// cluster whichever of them is down.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(|n| n.addr().to_string()).collect();
        format!("redis-cluster://{}", addrs.join(","))
    }

    /// Every server, in start order (`redis-cluster-<i>` in logs).
    pub fn nodes(&self) -> &[Redis] {
        &self.nodes
    }

    /// The server on `port`.
    pub fn node(&self, port: u16) -> &Redis {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node of this Redis Cluster on port {port}"))
    }

    /// The port of the master that serves `key`'s slot now, as the running nodes see it.
    pub async fn master_for_key(&self, key: &str) -> u16 {
        let node = self.running().next().expect("a running node");
        let slot = match try_call(node.addr(), &["CLUSTER", "KEYSLOT", key]).await {
            Ok(Resp::Int(slot)) => slot,
            other => panic!("CLUSTER KEYSLOT {key}: {other:?}"),
        };
        let owners = slot_owners(node.addr()).await.unwrap_or_else(|e| panic!("CLUSTER SLOTS: {e}"));
        owners
            .iter()
            .find(|(range, _)| range.contains(&slot))
            .map(|(_, port)| *port)
            .unwrap_or_else(|| panic!("no master serves slot {slot} (of {key}): {owners:?}"))
    }

    /// SIGKILL to the node on `port`: no goodbye, and only what its AOF and its replica hold
    /// survives.
    pub fn kill(&self, port: u16) {
        self.node(port).kill();
    }

    /// Waits until Redis has failed over from the killed master on `port`: every running node
    /// says `cluster_state:ok`, and none names `port` as the master of any slot. Returns how
    /// long that took from this call (make it right after [`RedisCluster::kill`]).
    pub async fn wait_failover(&self, port: u16) -> Duration {
        let started = Instant::now();
        let outcome = poll_every(FAILOVER_PATIENCE, LOOK, || async {
            for node in self.running() {
                let state = cluster_info(node.addr()).await?;
                if field(&state, "cluster_state") != Some("ok") {
                    return Err(format!(
                        "{}: cluster_state {:?}",
                        node.log().name(),
                        field(&state, "cluster_state")
                    ));
                }
                let owners = slot_owners(node.addr()).await?;
                if owners.iter().any(|(_, owner)| *owner == port) {
                    return Err(format!("{} still names {port} a master: {owners:?}", node.log().name()));
                }
            }
            Ok(())
        })
        .await;
        if let Err(last) = outcome {
            panic!(
                "no failover from the master on port {port} within {FAILOVER_PATIENCE:?}: last saw {last}"
            );
        }
        let took = started.elapsed();
        self.nodes[0].log().note(&format!("failed over from port {port} in {took:?}"));
        took
    }

    /// Starts the node on `port` again (same directory: its AOF and `nodes.conf`), and waits
    /// until the cluster is whole again: a killed master comes back as its successor's replica.
    pub async fn restart(&self, port: u16) {
        self.node(port).restart().await;
        self.wait_whole(&format!("the Redis Cluster after restarting port {port}")).await;
    }

    /// Runs `redis-cli` against the node on `port` (without `-c`: it talks to that node only)
    /// and returns what it printed, trimmed.
    pub async fn cli(&self, port: u16, args: &[&str]) -> String {
        self.node(port).cli(args).await
    }

    fn running(&self) -> impl Iterator<Item = &Redis> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// Waits until every running node has all slots covered and `cluster_state:ok`, knows every
    /// node, and (a replica) has its link to its master up.
    async fn wait_whole(&self, what: &str) {
        let total = self.nodes.len().to_string();
        let outcome = poll_every(FORM_PATIENCE, LOOK, || async {
            for node in self.running() {
                let name = node.log().name();
                let state = cluster_info(node.addr()).await?;
                let seen = (
                    field(&state, "cluster_state"),
                    field(&state, "cluster_slots_ok"),
                    field(&state, "cluster_known_nodes"),
                );
                if seen != (Some("ok"), Some("16384"), Some(total.as_str())) {
                    return Err(format!(
                        "{name}: (cluster_state, cluster_slots_ok, cluster_known_nodes) {seen:?}"
                    ));
                }
                let replication = info(node.addr(), "replication").await?;
                if field(&replication, "role") == Some("slave")
                    && field(&replication, "master_link_status") != Some("up")
                {
                    return Err(format!("{name}: a replica whose master link is not up"));
                }
                replicas_online(&replication).map_err(|e| format!("{name}: {e}"))?;
            }
            Ok(())
        })
        .await;
        if let Err(last) = outcome {
            panic!("{what} was not whole within {FORM_PATIENCE:?}: last saw {last}");
        }
    }
}

// === impl RedisSentinel ===

/// A master, its replica and three Sentinels (quorum 2) watching them as [`SERVICE`]; the two
/// servers swap roles on a failover.
pub struct RedisSentinel {
    /// The master and the replica it started as.
    servers: Vec<Redis>,
    sentinels: Vec<Redis>,
}

impl RedisSentinel {
    /// Starts the master and its replica (the append-only file on, as [`Redis::start`]), then
    /// three Sentinels, and waits until the replica is in sync and every Sentinel knows the
    /// replica and the two other Sentinels. Panics, saying what it last saw, otherwise.
    pub async fn start() -> RedisSentinel {
        let no_delay: Vec<String> = NO_SYNC_DELAY.iter().map(|a| a.to_string()).collect();
        let master = Redis::member("redis-master", crate::process::free_port(), true, no_delay.clone());
        let replicaof =
            ["--replicaof", "127.0.0.1"].map(str::to_owned).into_iter().chain([master.port().to_string()]);
        let replica = Redis::member(
            "redis-replica",
            crate::process::free_port(),
            true,
            no_delay.into_iter().chain(replicaof).collect(),
        );
        let monitor = format!(
            "sentinel monitor {SERVICE} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {SERVICE} {}\n\
             sentinel failover-timeout {SERVICE} 5000\n\
             sentinel parallel-syncs {SERVICE} 1\n",
            master.port(),
            SENTINEL_DOWN_AFTER.as_millis()
        );
        let sentinels = (0..3).map(|i| Redis::sentinel(&format!("sentinel-{i}"), &monitor)).collect();
        let deployment = RedisSentinel { servers: vec![master, replica], sentinels };
        for server in &deployment.servers {
            server.launch().await;
        }
        for sentinel in &deployment.sentinels {
            sentinel.launch().await;
        }
        let outcome = poll_every(FORM_PATIENCE, LOOK, || async {
            let replication = info(deployment.servers[1].addr(), "replication").await?;
            if field(&replication, "master_link_status") != Some("up") {
                return Err("the replica's master link is not up".to_owned());
            }
            let replication = info(deployment.servers[0].addr(), "replication").await?;
            if field(&replication, "connected_slaves") != Some("1") {
                return Err("the master does not list its replica".to_owned());
            }
            replicas_online(&replication).map_err(|e| format!("the master: {e}"))?;
            for sentinel in &deployment.sentinels {
                let name = sentinel.log().name();
                let seen = match try_call(sentinel.addr(), &["SENTINEL", "MASTER", SERVICE]).await? {
                    Resp::Array(Some(items)) => {
                        let items: Vec<String> = items.iter().map(text).collect();
                        let get = |key: &str| {
                            items.chunks(2).find(|kv| kv[0] == key).and_then(|kv| kv.get(1)).cloned()
                        };
                        (get("flags"), get("num-slaves"), get("num-other-sentinels"))
                    }
                    other => return Err(format!("{name}: SENTINEL MASTER: {other:?}")),
                };
                let whole = (Some("master".to_owned()), Some("1".to_owned()), Some("2".to_owned()));
                if seen != whole {
                    return Err(format!("{name}: (flags, num-slaves, num-other-sentinels) {seen:?}"));
                }
            }
            Ok(())
        })
        .await;
        if let Err(last) = outcome {
            panic!("the Sentinel deployment was not whole within {FORM_PATIENCE:?}: last saw {last}");
        }
        deployment
    }

    /// `redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/stampede`.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self.sentinels.iter().map(|s| s.addr().to_string()).collect();
        format!("redis+sentinel://{}/{SERVICE}", addrs.join(","))
    }

    /// The master and the replica, in start order (`redis-master`, `redis-replica` in logs,
    /// whichever is master now).
    pub fn servers(&self) -> &[Redis] {
        &self.servers
    }

    pub fn sentinels(&self) -> &[Redis] {
        &self.sentinels
    }

    /// The server on `port`.
    pub fn server(&self, port: u16) -> &Redis {
        self.servers
            .iter()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no server of this Sentinel deployment on port {port}"))
    }

    /// The master's address as the first running Sentinel names it.
    pub async fn master_addr(&self) -> SocketAddr {
        let sentinel = self.sentinels.iter().find(|s| s.is_running()).expect("a running Sentinel");
        master_by_name(sentinel.addr()).await.unwrap_or_else(|e| panic!("{}: {e}", sentinel.log().name()))
    }

    /// SIGKILL to the current master; returns its port.
    pub async fn kill_master(&self) -> u16 {
        let port = self.master_addr().await.port();
        self.server(port).kill();
        port
    }

    /// Waits until every Sentinel names a master other than the one on `old` and that server
    /// says it is a master. Returns the new master's port and how long that took from this call
    /// (make it right after [`RedisSentinel::kill_master`]).
    pub async fn wait_new_master(&self, old: u16) -> (u16, Duration) {
        let started = Instant::now();
        let outcome = poll_every(FAILOVER_PATIENCE, LOOK, || async {
            let mut named = Vec::new();
            for sentinel in &self.sentinels {
                named.push(master_by_name(sentinel.addr()).await?.port());
            }
            let new = named[0];
            if new == old || named.iter().any(|p| *p != new) {
                return Err(format!("the Sentinels name {named:?} (the killed master: {old})"));
            }
            let replication = info(SocketAddr::from(([127, 0, 0, 1], new)), "replication").await?;
            match field(&replication, "role") {
                Some("master") => Ok(new),
                role => Err(format!("the Sentinels name {new}, whose role is {role:?}")),
            }
        })
        .await;
        let new = outcome.unwrap_or_else(|last| {
            panic!("no new master for the one on port {old} within {FAILOVER_PATIENCE:?}: last saw {last}")
        });
        let took = started.elapsed();
        self.sentinels[0].log().note(&format!("failed over from port {old} to {new} in {took:?}"));
        (new, took)
    }

    /// Starts the server on `port` again (same directory and arguments); the Sentinels make a
    /// former master a replica of the new one.
    pub async fn restart(&self, port: u16) {
        self.server(port).restart().await;
    }
}

/// The slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// The arguments of every Redis Cluster member: cluster mode, the short node timeout.
fn member_args() -> Vec<String> {
    let timeout = CLUSTER_NODE_TIMEOUT.as_millis().to_string();
    ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout"]
        .into_iter()
        .map(str::to_owned)
        .chain([timeout])
        .chain(NO_SYNC_DELAY.map(str::to_owned))
        .collect()
}

/// Sends `args` to `node` and panics unless it answers `+OK`.
async fn expect_ok(node: &Redis, args: &[&str]) {
    match node.call(args).await {
        Resp::Simple(ok) if ok == "OK" => {}
        other => panic!("{}: {args:?} answered {other:?}", node.log().name()),
    }
}

// === Redis's answers ===

/// `CLUSTER INFO` of the node at `addr`.
async fn cluster_info(addr: SocketAddr) -> Result<String, String> {
    match try_call(addr, &["CLUSTER", "INFO"]).await? {
        Resp::Bulk(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        other => Err(format!("{addr}: CLUSTER INFO: {other:?}")),
    }
}

/// `INFO <section>` of the server at `addr`.
async fn info(addr: SocketAddr, section: &str) -> Result<String, String> {
    match try_call(addr, &["INFO", section]).await? {
        Resp::Bulk(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        other => Err(format!("{addr}: INFO {section}: {other:?}")),
    }
}

/// The value of `name` in an INFO-style answer (`name:value` lines).
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
}

/// Whether every replica a master's `INFO replication` lists is `state=online`, not still
/// waiting for or receiving its first copy of the data. (A replica may say its link is up a
/// moment before its master starts streaming writes to it: a test that needs a write on the
/// replica makes it and `WAIT`s on one connection, [`crate::redis::call_all`].)
fn replicas_online(replication: &str) -> Result<(), String> {
    let waiting: Vec<&str> = replication
        .lines()
        .filter(|line| line.starts_with("slave") && line.contains("state=") && !line.contains("state=online"))
        .collect();
    match waiting.as_slice() {
        [] => Ok(()),
        lines => Err(format!("replicas not online yet: {lines:?}")),
    }
}

/// Each slot range the node at `addr` knows of, with the port of its master (`CLUSTER SLOTS`).
async fn slot_owners(addr: SocketAddr) -> Result<Vec<(std::ops::RangeInclusive<i64>, u16)>, String> {
    let Resp::Array(Some(ranges)) = try_call(addr, &["CLUSTER", "SLOTS"]).await? else {
        return Err(format!("{addr}: CLUSTER SLOTS is not an array"));
    };
    let mut owners = Vec::new();
    for range in &ranges {
        let parsed = match range {
            Resp::Array(Some(items)) => match (items.first(), items.get(1), items.get(2)) {
                (Some(Resp::Int(start)), Some(Resp::Int(end)), Some(Resp::Array(Some(master)))) => {
                    match master.get(1) {
                        Some(Resp::Int(port)) => u16::try_from(*port).ok().map(|port| (*start..=*end, port)),
                        _ => None,
                    }
                }
                _ => None,
            },
            _ => None,
        };
        owners
            .push(parsed.ok_or_else(|| format!("{addr}: a CLUSTER SLOTS entry not understood: {range:?}"))?);
    }
    Ok(owners)
}

/// `SENTINEL get-master-addr-by-name` of the Sentinel at `sentinel`.
async fn master_by_name(sentinel: SocketAddr) -> Result<SocketAddr, String> {
    match try_call(sentinel, &["SENTINEL", "get-master-addr-by-name", SERVICE]).await? {
        Resp::Array(Some(items)) if items.len() == 2 => {
            let (ip, port) = (text(&items[0]), text(&items[1]));
            format!("{ip}:{port}").parse().map_err(|e| format!("{sentinel}: master {ip}:{port}: {e}"))
        }
        other => Err(format!("{sentinel}: get-master-addr-by-name {SERVICE}: {other:?}")),
    }
}

/// A bulk or simple string reply as text (anything else, shown).
fn text(reply: &Resp) -> String {
    match reply {
        Resp::Bulk(Some(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Resp::Simple(s) => s.clone(),
        other => format!("{other:?}"),
    }
}
