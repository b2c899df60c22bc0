//! The node registry: a heartbeat hash per node (its connections, subscriptions and message
//! counters) and a sorted set of node ids by last beat. Beside it, how the engine watches
//! Redis's health: the probes that decide readiness, and the log of why connecting fails.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::interfaces::{ClientLike, ClusterInterface};
use fred::types::config::Server;
use fred::types::{ClusterHash, CustomCommand, Value};
use tokio::sync::broadcast;

use super::Inner;
use crate::engine::{EngineError, NodeInfo};

/// How often a node writes its heartbeat.
pub(super) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A node is listed while its last heartbeat is this recent (its hash expires after it too).
pub(super) const NODE_TTL: Duration = Duration::from_secs(5);
/// Entries of the sorted set older than this are removed.
const FORGET_AFTER: Duration = Duration::from_secs(60);

pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// How long a probe PING may take before it counts as unanswered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Unanswered probes in a row after which Redis counts as unreachable.
const PROBE_FAILURES: u32 = 2;

/// Every [`HEARTBEAT_INTERVAL`]: probes both connections with PING, and writes the heartbeat
/// while Redis answers. A cut network leaves fred's connections "up" (it detects a dead peer only
/// when nothing is written for a while, and the heartbeat writes every second), so the probe is
/// what turns readiness off: after [`PROBE_FAILURES`] unanswered probes the node reports not
/// ready and forces both connections to reconnect.
pub(super) async fn heartbeat_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0;
    loop {
        tick.tick().await;
        // Readiness tells a reconnection from an outage by when the clients were last connected.
        inner.seen_connected();
        let answered = if inner.keys.sharded() {
            probe_primaries(&inner).await
        } else {
            let probe = tokio::time::timeout(PROBE_TIMEOUT, async {
                let (a, b) =
                    tokio::join!(inner.client.ping::<Value>(None), inner.subscriber.ping::<Value>(None));
                a.and(b)
            })
            .await;
            matches!(probe, Ok(Ok(_)))
        };
        if answered {
            failures = 0;
            if !inner.answering.swap(true, Ordering::AcqRel) {
                tracing::info!("Redis answers again");
            }
        } else {
            failures += 1;
            if failures >= PROBE_FAILURES && inner.answering.swap(false, Ordering::AcqRel) {
                tracing::warn!("Redis does not answer: not ready, reconnecting");
                let (client, subscriber) = (inner.client.clone(), inner.subscriber.clone());
                tokio::spawn(async move {
                    let _ = tokio::join!(client.force_reconnection(), subscriber.force_reconnection());
                });
            }
            continue;
        }
        // Boxed: the four joined commands make a 20 KB future, needed every few seconds only.
        if let Err(error) = Box::pin(heartbeat(&inner)).await {
            tracing::debug!(%error, "heartbeat failed");
        }
        // Presence: a reconcile if needed, and the members of nodes that died (see presence.rs).
        if let Err(error) = Box::pin(super::presence::tend(&inner)).await {
            tracing::debug!(%error, "presence upkeep failed");
        }
    }
}

/// On Redis Cluster: PINGs every primary (through the command client, each on a slot it owns)
/// and counts those that answer. True while at least one does: a primary that is down (a
/// failover under way, or a shard lost) fails the operations on its own slots, which every node
/// sees alike, so it does not make the node unready (docs/cluster.md, "Partial failures").
async fn probe_primaries(inner: &Inner) -> bool {
    let Some(state) = inner.client.cached_cluster_state() else {
        return false;
    };
    let mut primaries: Vec<(String, u16)> = Vec::new();
    for range in state.slots() {
        let primary = range.primary.to_string();
        if !primaries.iter().any(|(p, _)| *p == primary) {
            primaries.push((primary, range.start));
        }
    }
    let pings = primaries.iter().map(|(_, slot)| {
        let command = CustomCommand::new_static("PING", ClusterHash::Custom(*slot), false);
        tokio::time::timeout(PROBE_TIMEOUT, inner.client.custom::<Value, Value>(command, Vec::new()))
    });
    let replies = futures_util::future::join_all(pings).await;
    let down = replies.iter().filter(|reply| !matches!(reply, Ok(Ok(_)))).count();
    inner.metrics.redis_primaries(primaries.len(), down);
    if down > 0 {
        tracing::debug!(down, primaries = primaries.len(), "Redis Cluster primaries not answering");
    }
    down < primaries.len() && inner.subscriber.is_connected()
}

async fn heartbeat(inner: &Inner) -> Result<(), EngineError> {
    let now = now_ms();
    let node = inner.keys.node(&inner.config.node_id);
    let nodes = inner.keys.nodes();
    let id = inner.config.node_id.as_str();
    let hset = vec![
        Value::from(node.as_str()),
        Value::from("connections"),
        Value::from(inner.metrics.connection_count().to_string()),
        Value::from("subscriptions"),
        Value::from(inner.metrics.subscription_count().to_string()),
        Value::from("last_seen_ms"),
        Value::from(now.to_string()),
        Value::from("published"),
        Value::from(inner.metrics.published_total().to_string()),
        Value::from("delivered"),
        Value::from(inner.metrics.delivered_total().to_string()),
    ];
    let expire = vec![Value::from(node.as_str()), Value::Integer(NODE_TTL.as_millis() as i64)];
    let zadd = vec![Value::from(nodes.as_str()), Value::from(now.to_string()), Value::from(id)];
    let forget = now.saturating_sub(FORGET_AFTER.as_millis() as u64);
    let prune = vec![Value::from(nodes.as_str()), Value::from("-inf"), Value::from(format!("({forget}"))];
    let (a, b, c, d) = tokio::join!(
        inner.command("HSET", &node, hset),
        inner.command("PEXPIRE", &node, expire),
        inner.command("ZADD", &nodes, zadd),
        inner.command("ZREMRANGEBYSCORE", &nodes, prune),
    );
    a.and(b).and(c).and(d).map(|_| ())
}

/// Removes this node's entry.
pub(super) async fn deregister(inner: &Inner) {
    let node = inner.keys.node(&inner.config.node_id);
    let nodes = inner.keys.nodes();
    let _ = tokio::join!(
        inner.command("DEL", &node, vec![Value::from(node.as_str())]),
        inner.command(
            "ZREM",
            &nodes,
            vec![Value::from(nodes.as_str()), Value::from(inner.config.node_id.as_str())]
        ),
    );
}

/// Ids of the nodes whose heartbeat is recent.
pub(super) async fn live_ids(inner: &Inner) -> Result<Vec<String>, EngineError> {
    let nodes = inner.keys.nodes();
    let since = now_ms().saturating_sub(NODE_TTL.as_millis() as u64);
    let args = vec![Value::from(nodes.as_str()), Value::from(since.to_string()), Value::from("+inf")];
    let ids = inner.command("ZRANGEBYSCORE", &nodes, args).await?;
    Ok(ids.into_array().iter().filter_map(Value::as_string).collect())
}

/// Nodes whose heartbeat is recent and whose hash still exists.
pub(super) async fn nodes(inner: &Inner) -> Result<Vec<NodeInfo>, EngineError> {
    let ids = live_ids(inner).await?;
    let reads = ids.iter().map(|id| async move {
        let key = inner.keys.node(id);
        let reply = inner.command("HGETALL", &key, vec![Value::from(key.as_str())]).await?;
        Ok::<_, EngineError>(parse_node(id, reply))
    });
    let mut out = Vec::with_capacity(ids.len());
    for read in futures_util::future::join_all(reads).await {
        if let Some(info) = read? {
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(out)
}

/// A heartbeat hash (flat `[field, value, ...]`, or a map) as a [`NodeInfo`]; `None` when gone.
fn parse_node(id: &str, reply: Value) -> Option<NodeInfo> {
    let fields = reply.into_array();
    if fields.is_empty() {
        return None;
    }
    let get = |name: &str| {
        fields
            .chunks_exact(2)
            .find(|pair| pair[0].as_str().is_some_and(|n| n == name))
            .and_then(|pair| pair[1].as_u64())
            .unwrap_or(0)
    };
    Some(NodeInfo {
        node_id: id.to_owned(),
        connections: get("connections"),
        subscriptions: get("subscriptions"),
        last_seen_ms: get("last_seen_ms"),
        published: get("published"),
        delivered: get("delivered"),
    })
}

// === connection failures ===

/// Logs why the command connection cannot be made: the first failure of an outage and each new
/// reason after it (a refused connection, a certificate the CA did not sign, a wrong password),
/// not every retry of the same one. A connection made ends the outage. Without it an operator
/// would see only "not ready".
pub(super) async fn connection_errors_loop(
    mut errors: broadcast::Receiver<(fred::error::Error, Option<Server>)>,
    mut connects: broadcast::Receiver<Server>,
) {
    use broadcast::error::RecvError;
    let mut last: Option<String> = None;
    loop {
        tokio::select! {
            error = errors.recv() => match error {
                Ok((error, server)) => {
                    let reason = error.to_string();
                    if last.as_deref() != Some(reason.as_str()) {
                        log_connection_error(&reason, server.as_ref());
                        last = Some(reason);
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            connect = connects.recv() => match connect {
                Ok(_) | Err(RecvError::Lagged(_)) => last = None,
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// One line about a failed connection. rustls's certificate errors reach fred as I/O errors
/// (`InvalidCertificate(UnknownIssuer)`, `...(NotValidForName)`): say what they mean.
fn log_connection_error(reason: &str, server: Option<&Server>) {
    let message = if reason.contains("InvalidCertificate") {
        "Redis's TLS certificate is refused: it must chain to redis-tls-ca (the system's roots \
         when unset) and name the host connected to; retrying"
    } else {
        "cannot connect to Redis; retrying"
    };
    match server {
        Some(server) => tracing::warn!(error = %reason, %server, "{message}"),
        None => tracing::warn!(error = %reason, "{message}"),
    }
}
