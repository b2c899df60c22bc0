//! Presence on Redis: a hash per destination, written by one task per node, read with the
//! registry's view of which nodes are alive, and cleaned of dead nodes by a live one.
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `P:{<dest>}:presence` | hash | field `<node-id>\t<session>`, value the user (empty: anonymous) |
//! | `P:node:<id>:presence` | set | the destinations in which node `<id>` has members |
//! | `P:node:<id>:reaper:<last-seen-ms>` | string | the node removing dead node `<id>`'s members (SET NX PX) |
//!
//! **Writes.** Joins and leaves go through one task per node ([`writer_loop`]), in the order the
//! sessions asked, many per round trip: first the HSET/HDEL (and the SADD of a destination's
//! first member on this node, the SREM of its last), then the PUBLISH of each event (a leave's
//! only when its HDEL removed the field). The task owns the node's own members; after a failure,
//! a reconnect and at start it *reconciles* the hashes with them: its fields for sessions no longer
//! here go (with their leave events: that is how the members of a previous process with the same
//! `node-id` leave), and members missing (Redis restarted empty, or another node took this one
//! for dead) are written again, with a join event.
//!
//! **Reads** ([`members`]) take the hash (HGETALL) and the live nodes (the registry's
//! ZRANGEBYSCORE) and keep the fields of live nodes only, so a node that died without cleaning up
//! drops out of every read once its heartbeat is [`NODE_TTL`] old.
//!
//! A node whose heartbeats stopped for the node TTL (a long pause, Redis slow to answer) may
//! have been taken for dead and its members removed: at its next heartbeat it reconciles, which
//! writes them again.
//!
//! **Dead nodes.** On each heartbeat, a node looks for nodes whose last heartbeat is older than
//! [`NODE_TTL`] (they stay in the registry's sorted set for a minute); the first node to take the
//! reaper key of one (SET NX, per node and last heartbeat, so a node reused by a restarted process
//! is reaped again when it dies again) removes its fields from every destination its set lists
//! and publishes their leave events, then deletes the set.
//!
//! **Shutdown.** The node's sessions leave as they close; whatever is left then is removed, with
//! leave events, before the engine stops.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fred::interfaces::{ClientLike, EventInterface};
use fred::types::Value;
use tokio::sync::{mpsc, oneshot};

use super::registry::{self, NODE_TTL};
use super::{envelope, Inner};
use crate::engine::presence::{event, Change};
use crate::engine::{EngineError, Member};

/// Requests a [`writer_loop`] takes at once at most.
const BATCH_MAX: usize = 256;
/// How long a reaper key is held: longer than a dead node stays in the registry's sorted set.
const REAPER_HOLD_MS: u64 = 120_000;

/// What the presence task is asked.
pub(super) enum Request {
    Join(Arc<str>, Member, oneshot::Sender<Result<(), EngineError>>),
    Leave(Arc<str>, Member, oneshot::Sender<Result<(), EngineError>>),
    /// The heartbeat's tick: reconcile if something failed since the last one, or (`true`) in any
    /// case.
    Tend(bool),
    /// The node stops: every member left here leaves.
    Close(oneshot::Sender<()>),
}

/// The node's side of presence, kept in the engine's shared state.
pub(super) struct Local {
    /// Unbounded: a session waits for the answer to its join or leave before asking another, so
    /// at most one request per session is queued, plus one `Tend` per heartbeat.
    pub(super) requests: mpsc::UnboundedSender<Request>,
    /// Dead nodes already looked at, with the heartbeat (ms) they were last seen at.
    reaped: Mutex<HashMap<String, u64>>,
    /// When this node last tended (after a heartbeat that Redis took).
    pub(super) tended: Mutex<Option<Instant>>,
}

impl Local {
    pub(super) fn new() -> (Local, mpsc::UnboundedReceiver<Request>) {
        let (requests, rx) = mpsc::unbounded_channel();
        (Local { requests, reaped: Mutex::new(HashMap::new()), tended: Mutex::new(None) }, rx)
    }
}

/// The hash field of `session` on `node`.
fn field(node: &str, session: &str) -> String {
    format!("{node}\t{session}")
}

/// A member's user as the hash keeps it, and back.
fn stored_user(member: &Member) -> &str {
    member.user.as_deref().unwrap_or("")
}

fn user_of(stored: &str) -> Option<String> {
    (!stored.is_empty()).then(|| stored.to_owned())
}

/// A reply of pairs (a hash's or `WITHSCORES`' flat `[a, b, ...]`, RESP3's nested pairs, or a
/// map) as pairs of strings.
fn pairs(reply: Value) -> Vec<(String, String)> {
    let mut flat = Vec::new();
    for item in reply.into_array() {
        match item {
            Value::Array(pair) => flat.extend(pair),
            other => flat.push(other),
        }
    }
    flat.chunks_exact(2)
        .filter_map(|pair| Some((pair[0].as_string()?, pair[1].as_string().unwrap_or_default())))
        .collect()
}

/// One member as read from a field and its value; `None` for a field of another shape.
fn member_of(field: &str, user: &str) -> Option<Member> {
    let (node, session) = field.split_once('\t')?;
    Some(Member { user: user_of(user), session: session.to_owned(), node: node.to_owned() })
}

/// The members of `destination` on live nodes, sorted.
pub(super) async fn members(inner: &Inner, destination: &str) -> Result<Vec<Member>, EngineError> {
    inner.check_connected()?;
    let key = inner.keys.presence(destination);
    let (hash, live) = tokio::join!(
        inner.command("HGETALL", &key, vec![Value::from(key.as_str())]),
        registry::live_ids(inner)
    );
    let live: HashSet<String> = live?.into_iter().collect();
    let mut members: Vec<Member> = pairs(hash?)
        .iter()
        .filter_map(|(field, user)| member_of(field, user))
        .filter(|member| live.contains(&member.node))
        .collect();
    members.sort();
    Ok(members)
}

/// Publishes the event of `change` of `member` in `destination`.
async fn publish(
    inner: &Inner,
    change: Change,
    destination: &str,
    member: &Member,
) -> Result<(), EngineError> {
    let message = event(change, destination, member);
    let channel = inner.keys.channel(&message.destination);
    let envelope = envelope::encode(&inner.config.node_id, &message);
    let args = vec![Value::from(channel.as_str()), Value::Bytes(envelope.into())];
    inner.command(inner.publish_command(), &channel, args).await.map(|_| ())
}

// === the writer ===

/// One member of this node, as the writer keeps it.
struct Here {
    member: Member,
    /// Its join event was published (it may not have been, if Redis was away at the join).
    announced: bool,
}

/// The writer's state: this node's members, by destination and session.
struct Writer {
    members: HashMap<Arc<str>, HashMap<String, Here>>,
    /// Something failed, or Redis reconnected, since the last reconcile (true at start).
    dirty: bool,
}

/// A write the batch sends, and what its reply decides.
enum Write {
    Join { destination: Arc<str>, member: Member, reply: oneshot::Sender<Result<(), EngineError>> },
    Leave { destination: Arc<str>, member: Member, reply: oneshot::Sender<Result<(), EngineError>> },
}

/// Applies joins and leaves in order, batched; reconciles on `Tend` when needed; removes
/// everything at `Close`.
pub(super) async fn writer_loop(inner: Arc<Inner>, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut writer = Writer { members: HashMap::new(), dirty: true };
    let mut reconnects = inner.client.reconnect_rx();
    let mut reconnects_open = true;
    let mut batch = Vec::with_capacity(BATCH_MAX);
    loop {
        tokio::select! {
            taken = requests.recv_many(&mut batch, BATCH_MAX) => {
                if taken == 0 {
                    return;
                }
            }
            reconnected = reconnects.recv(), if reconnects_open => {
                // A new connection may be to a server that restarted empty.
                writer.dirty = true;
                reconnects_open = !matches!(reconnected, Err(tokio::sync::broadcast::error::RecvError::Closed));
                continue;
            }
        }
        let mut writes = Vec::new();
        for request in batch.drain(..) {
            match request {
                Request::Join(destination, member, reply) => {
                    writes.push(Write::Join { destination, member, reply })
                }
                Request::Leave(destination, member, reply) => {
                    writes.push(Write::Leave { destination, member, reply })
                }
                Request::Tend(force) => {
                    writer.apply(&inner, std::mem::take(&mut writes)).await;
                    if (writer.dirty || force) && inner.client.is_connected() {
                        writer.dirty = Box::pin(writer.reconcile(&inner)).await.is_err();
                    }
                }
                Request::Close(done) => {
                    writer.apply(&inner, std::mem::take(&mut writes)).await;
                    Box::pin(writer.close(&inner)).await;
                    let _ = done.send(());
                }
            }
        }
        writer.apply(&inner, writes).await;
    }
}

impl Writer {
    /// Sends one batch: the hash and set writes in order, then the events.
    async fn apply(&mut self, inner: &Inner, writes: Vec<Write>) {
        if writes.is_empty() {
            return;
        }
        let node = inner.config.node_id.as_str();
        let set = inner.keys.node_presence(node);
        // (command, key, args) in order; per write, the index of its hash command (None: nothing
        // to do: a second join, or a leave of a non-member).
        let mut commands: Vec<(&'static str, String, Vec<Value>)> = Vec::new();
        let mut index = Vec::with_capacity(writes.len());
        for write in &writes {
            match write {
                Write::Join { destination, member, .. } => {
                    let here = self.members.entry(destination.clone()).or_default();
                    if here.contains_key(&member.session) {
                        index.push(None);
                        continue;
                    }
                    if here.is_empty() {
                        commands.push((
                            "SADD",
                            set.clone(),
                            vec![set.as_str().into(), (&**destination).into()],
                        ));
                    }
                    here.insert(member.session.clone(), Here { member: member.clone(), announced: false });
                    let key = inner.keys.presence(destination);
                    let args = vec![
                        key.as_str().into(),
                        field(node, &member.session).into(),
                        stored_user(member).into(),
                    ];
                    index.push(Some(commands.len()));
                    commands.push(("HSET", key, args));
                }
                Write::Leave { destination, member, .. } => {
                    let Some(here) = self.members.get_mut(destination) else {
                        index.push(None);
                        continue;
                    };
                    if here.remove(&member.session).is_none() {
                        index.push(None);
                        continue;
                    }
                    let key = inner.keys.presence(destination);
                    let args = vec![key.as_str().into(), field(node, &member.session).into()];
                    index.push(Some(commands.len()));
                    commands.push(("HDEL", key, args));
                    if here.is_empty() {
                        self.members.remove(destination);
                        commands.push((
                            "SREM",
                            set.clone(),
                            vec![set.as_str().into(), (&**destination).into()],
                        ));
                    }
                }
            }
        }
        let replies: Vec<Result<Value, EngineError>> = if inner.client.is_connected() {
            // Polled in order, so written in order: one round trip for the whole batch.
            futures_util::future::join_all(
                commands
                    .into_iter()
                    .map(|(name, key, args)| async move { inner.command(name, &key, args).await }),
            )
            .await
        } else {
            commands
                .iter()
                .map(|_| Err(EngineError::Unavailable("Redis is not connected".to_owned())))
                .collect()
        };
        if replies.iter().any(Result::is_err) {
            self.dirty = true;
        }
        // The events, in order, for the writes that changed something.
        let mut events = Vec::new();
        for (write, at) in writes.into_iter().zip(index) {
            let (change, destination, member, reply) = match write {
                Write::Join { destination, member, reply } => (Change::Join, destination, member, reply),
                Write::Leave { destination, member, reply } => (Change::Leave, destination, member, reply),
            };
            let outcome = match at.map(|i| &replies[i]) {
                None => {
                    let _ = reply.send(Ok(()));
                    continue;
                }
                Some(Err(error)) => Err(error.clone()),
                Some(Ok(removed)) => Ok(change == Change::Join || removed.as_u64() == Some(1)),
            };
            match outcome {
                Ok(true) => events.push((change, destination, member, reply)),
                Ok(false) => {
                    let _ = reply.send(Ok(()));
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            }
        }
        let published = futures_util::future::join_all(
            events
                .iter()
                .map(|(change, destination, member, _)| publish(inner, *change, destination, member)),
        )
        .await;
        for ((change, destination, member, reply), outcome) in events.into_iter().zip(published) {
            if outcome.is_err() {
                self.dirty = true;
            } else if change == Change::Join {
                if let Some(here) =
                    self.members.get_mut(&destination).and_then(|h| h.get_mut(&member.session))
                {
                    here.announced = true;
                }
            }
            let _ = reply.send(outcome);
        }
    }

    /// Makes this node's fields match its members: fields of sessions no longer here are
    /// removed (with leave events), members missing are written with a join event (watchers may
    /// have seen them leave, or never seen them join), and the node's set lists exactly its
    /// destinations.
    async fn reconcile(&mut self, inner: &Inner) -> Result<(), EngineError> {
        let node = inner.config.node_id.as_str();
        let set = inner.keys.node_presence(node);
        let listed = inner.command("SMEMBERS", &set, vec![set.as_str().into()]).await?;
        let mut destinations: HashSet<Arc<str>> =
            listed.into_array().iter().filter_map(Value::as_string).map(Arc::from).collect();
        destinations.extend(self.members.keys().cloned());
        let prefix = format!("{node}\t");
        for destination in destinations {
            let key = inner.keys.presence(&destination);
            let hash = inner.command("HGETALL", &key, vec![key.as_str().into()]).await?;
            let mut stored: HashMap<String, String> = pairs(hash)
                .into_iter()
                .filter_map(|(field, user)| Some((field.strip_prefix(&prefix)?.to_owned(), user)))
                .collect();
            let here = self.members.get_mut(&destination);
            let mut gone = Vec::new();
            for (session, user) in &stored {
                if !here.as_ref().is_some_and(|h| h.contains_key(session)) {
                    gone.push(Member {
                        user: user_of(user),
                        session: session.clone(),
                        node: node.to_owned(),
                    });
                }
            }
            for member in gone {
                let args = vec![key.as_str().into(), field(node, &member.session).into()];
                if inner.command("HDEL", &key, args).await?.as_u64() == Some(1) {
                    publish(inner, Change::Leave, &destination, &member).await?;
                }
                stored.remove(&member.session);
            }
            match here {
                Some(here) => {
                    for (session, entry) in here.iter_mut() {
                        if !stored.contains_key(session) {
                            let args = vec![
                                key.as_str().into(),
                                field(node, session).into(),
                                stored_user(&entry.member).into(),
                            ];
                            inner.command("HSET", &key, args).await?;
                            // Announced again: its leave may have been published by a node that
                            // took this one for dead.
                            entry.announced = false;
                        }
                        if !entry.announced {
                            publish(inner, Change::Join, &destination, &entry.member).await?;
                            entry.announced = true;
                        }
                    }
                    inner.command("SADD", &set, vec![set.as_str().into(), (&*destination).into()]).await?;
                }
                None => {
                    inner.command("SREM", &set, vec![set.as_str().into(), (&*destination).into()]).await?;
                }
            }
        }
        Ok(())
    }

    /// Removes every member of this node, with leave events, and the node's set.
    async fn close(&mut self, inner: &Inner) {
        let node = inner.config.node_id.as_str();
        for (destination, here) in self.members.drain() {
            let key = inner.keys.presence(&destination);
            for (session, entry) in here {
                let args = vec![key.as_str().into(), field(node, &session).into()];
                if let Ok(removed) = inner.command("HDEL", &key, args).await {
                    if removed.as_u64() == Some(1) {
                        let _ = publish(inner, Change::Leave, &destination, &entry.member).await;
                    }
                }
            }
        }
        let set = inner.keys.node_presence(node);
        let _ = inner.command("DEL", &set, vec![set.as_str().into()]).await;
    }
}

// === dead nodes ===

/// Every heartbeat, with presence configured: asks the writer to reconcile if it needs to, and
/// removes the members of nodes that died (one live node per dead node does).
pub(super) async fn tend(inner: &Inner) -> Result<(), EngineError> {
    if inner.config.presence.is_empty() {
        return Ok(());
    }
    // A gap between heartbeats as long as the node TTL: others may have taken this node for
    // dead and removed its members; write them again.
    let now = Instant::now();
    let previous = inner.presence.tended.lock().expect("tended lock").replace(now);
    let gap = previous.is_some_and(|at| now.duration_since(at) >= NODE_TTL - registry::HEARTBEAT_INTERVAL);
    let _ = inner.presence.requests.send(Request::Tend(gap));
    let nodes = inner.keys.nodes();
    let before = registry::now_ms().saturating_sub(NODE_TTL.as_millis() as u64);
    let args = vec![
        nodes.as_str().into(),
        Value::from("-inf"),
        Value::from(format!("({before}")),
        Value::from("WITHSCORES"),
    ];
    let dead = pairs(inner.command("ZRANGEBYSCORE", &nodes, args).await?);
    // Forget the nodes no longer listed (the registry drops them after a minute).
    inner.presence.reaped.lock().expect("reaped lock").retain(|id, _| dead.iter().any(|(d, _)| d == id));
    for (id, seen) in dead {
        let seen = seen.parse::<f64>().map_or(0, |ms| ms as u64);
        if id == inner.config.node_id {
            continue;
        }
        if inner.presence.reaped.lock().expect("reaped lock").get(&id) == Some(&seen) {
            continue;
        }
        let guard = inner.keys.presence_reaper(&id, seen);
        let args = vec![
            guard.as_str().into(),
            inner.config.node_id.as_str().into(),
            Value::from("NX"),
            Value::from("PX"),
            Value::from(REAPER_HOLD_MS.to_string()),
        ];
        let won = !inner.command("SET", &guard, args).await?.is_null();
        if won {
            if let Err(error) = reap(inner, &id).await {
                // Let this node or another try again at the next heartbeat.
                let _ = inner.command("DEL", &guard, vec![guard.as_str().into()]).await;
                return Err(error);
            }
        }
        inner.presence.reaped.lock().expect("reaped lock").insert(id, seen);
    }
    Ok(())
}

/// Removes dead node `id`'s members from every destination it listed, with leave events.
async fn reap(inner: &Inner, id: &str) -> Result<(), EngineError> {
    let set = inner.keys.node_presence(id);
    let listed = inner.command("SMEMBERS", &set, vec![set.as_str().into()]).await?;
    let prefix = format!("{id}\t");
    let mut left = 0;
    for destination in listed.into_array().iter().filter_map(Value::as_string) {
        let key = inner.keys.presence(&destination);
        let hash = inner.command("HGETALL", &key, vec![key.as_str().into()]).await?;
        let gone: Vec<(String, String)> =
            pairs(hash).into_iter().filter(|(field, _)| field.starts_with(&prefix)).collect();
        if gone.is_empty() {
            continue;
        }
        let mut args: Vec<Value> = vec![key.as_str().into()];
        args.extend(gone.iter().map(|(field, _)| Value::from(field.as_str())));
        inner.command("HDEL", &key, args).await?;
        for (field, user) in &gone {
            if let Some(member) = member_of(field, user) {
                publish(inner, Change::Leave, &destination, &member).await?;
                left += 1;
            }
        }
    }
    inner.command("DEL", &set, vec![set.as_str().into()]).await?;
    tracing::info!(node = %id, members = left, "removed a dead node's presence");
    Ok(())
}
