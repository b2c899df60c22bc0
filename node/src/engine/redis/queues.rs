//! Queues on Redis Streams: fetch, ack, release, dead-lettering, lifetimes (join, leave,
//! declare, the sweep that deletes expired queues), and the periodic work that keeps a dead
//! node's entries flowing (refreshing this node's in-flight entries, reclaiming idle ones) and
//! the depth metrics.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::interfaces::ClientLike;
use fred::types::config::Server;
use fred::types::{ClusterHash, CustomCommand, Resp3Frame, Value};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::MissedTickBehavior;

use super::keys::GROUP;
use super::{
    envelope, lifetime_ms, losses, publisher, registry, scripts, unavailable, Inner, Watched, IDS_PER_CALL,
};
use crate::config::QueueLifetime;
use crate::engine::{EngineError, EntryId, QueueEntry};
use crate::metrics::DropReason;

/// Entries claimed per XAUTOCLAIM, and calls per queue per reclaim pass.
const RECLAIM_COUNT: u64 = 100;
const RECLAIM_CALLS: usize = 10;
/// How often queue depths are read for the metrics, and for how many queues at most.
const DEPTH_INTERVAL: Duration = Duration::from_secs(5);
const DEPTH_QUEUES: usize = 1000;
/// How often a node tries to sweep queues for expiry (one node at a time does): a queue goes at
/// most about this long after its `expires`.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Due queues one sweep looks at, at most; the rest wait for the next.
const SWEEP_MAX: usize = 500;

/// Appends an envelope to `queue`, trimming the oldest ready entries past the bound (dead
/// letters; clients' enqueues go through the pipelining publisher).
pub(super) async fn push(inner: &Inner, queue: &str, envelope: Vec<u8>) -> Result<(), EngineError> {
    let key = inner.keys.queue(queue);
    let args = vec![
        Value::Integer(inner.config.queues.max_length.try_into().unwrap_or(i64::MAX)),
        Value::from(inner.keys.channel(queue)),
        Value::from(""),
        Value::Bytes(envelope.into()),
    ];
    let sent = inner.keys.sent(queue);
    let reply = inner.script(&scripts::ENQUEUE, &[&key, &sent], args).await.map_err(unavailable)?;
    let (dropped, created) = publisher::enqueued(&reply).unwrap_or((0, false));
    if dropped > 0 {
        inner.metrics.dropped(DropReason::QueueFull, dropped);
    }
    if created {
        inner.created(&Arc::from(queue));
    } else {
        losses::found(inner, queue);
    }
    Ok(())
}

/// This node consumes `queue` now: records it in the queue's life hash, creates the consumer
/// group (and stream) unless it exists, and registers the queue.
pub(super) async fn join(inner: &Inner, queue: &str) -> Result<(), EngineError> {
    inner.unleft.lock().expect("unleft lock").remove(queue);
    let (key, life) = (inner.keys.queue(queue), inner.keys.life(queue));
    let mut args = vec![Value::from(inner.config.node_id.as_str())];
    args.extend(inner.rule_args(queue));
    let reply = scripts::JOIN.run(&inner.client, &[&key, &life], args).await.map_err(unavailable)?;
    let mut items = reply.into_array().into_iter();
    let created = items.next().and_then(|v| v.as_u64()) == Some(1);
    let has_lifetime = items.next().and_then(|v| v.as_u64()) == Some(1);
    if created {
        // Deleted by another node meanwhile, maybe: this node's record of it is stale.
        inner.known_queues.lock().expect("known queues lock").remove(queue);
        losses::created(inner, queue);
    }
    inner.register_queue(queue).await?;
    losses::seen(inner, queue);
    if has_lifetime {
        // Looked at again after `reclaim-after`, in case this node dies without leaving.
        inner.schedule(queue, inner.config.queues.reclaim_after, true).await?;
    }
    Ok(())
}

/// This node's last consumer of `queue` left: an auto-delete queue nobody else consumes is
/// deleted; one that expires starts its unused time. Retried by the queue task when Redis is away.
pub(super) async fn leave(inner: &Inner, queue: &str) {
    let (key, life) = (inner.keys.queue(queue), inner.keys.life(queue));
    let mut args = vec![Value::from(inner.config.node_id.as_str())];
    args.extend(inner.rule_args(queue));
    let sent = inner.keys.sent(queue);
    let result = match scripts::LEAVE.run(&inner.client, &[&key, &life, &sent], args).await {
        Ok(reply) => {
            let mut items = reply.into_array().into_iter();
            let deleted = items.next().and_then(|v| v.as_i64()).unwrap_or(-1);
            let expires = items.next().and_then(|v| v.as_u64()).unwrap_or(0);
            if let Ok(messages) = u64::try_from(deleted) {
                deleted_queue(inner, queue, messages, "auto-deleted").await
            } else if expires > 0 {
                inner.schedule(queue, Duration::from_millis(expires), false).await
            } else {
                Ok(())
            }
        }
        Err(error) => Err(unavailable(error)),
    };
    if let Err(error) = result {
        tracing::warn!(%queue, %error, "could not record that this node stopped consuming a queue; retrying");
        inner.unleft.lock().expect("unleft lock").insert(Arc::from(queue));
    }
}

/// A SUBSCRIBE declared `queue`'s lifetime.
pub(super) async fn declare(inner: &Inner, queue: &str, lifetime: QueueLifetime) -> Result<(), EngineError> {
    inner.check_connected()?;
    let life = inner.keys.life(queue);
    let args = vec![
        Value::Integer(lifetime.expires.map_or(0, lifetime_ms)),
        Value::from(if lifetime.auto_delete { "1" } else { "0" }),
    ];
    scripts::DECLARE.run(&inner.client, &[&life], args).await.map_err(unavailable)?;
    if lifetime.is_some() {
        inner.schedule(queue, lifetime.expires.unwrap_or(inner.config.queues.reclaim_after), false).await?;
    }
    Ok(())
}

/// After a queue's deletion: counts its messages, forgets it here (known, depth) and in the
/// cluster's sets; if a SEND or SUBSCRIBE created it again meanwhile, registers it again.
async fn deleted_queue(
    inner: &Inner,
    queue: &str,
    messages: u64,
    why: &'static str,
) -> Result<(), EngineError> {
    if messages > 0 {
        inner.metrics.dropped(DropReason::QueueDeleted, messages);
    }
    tracing::info!(%queue, messages, why, "queue deleted");
    losses::deleted(inner, queue);
    inner.known_queues.lock().expect("known queues lock").remove(queue);
    inner.depths.lock().expect("depths lock").retain(|(q, _)| q != queue);
    let (set, lifetimes) = (inner.keys.queues(), inner.keys.lifetimes());
    inner.command("SREM", &set, vec![Value::from(set.as_str()), Value::from(queue)]).await?;
    inner.command("ZREM", &lifetimes, vec![Value::from(lifetimes.as_str()), Value::from(queue)]).await?;
    // Checked after the removals: a queue created again before this is seen here, one created
    // after it registers itself (its enqueue or join reports the new stream).
    let key = inner.keys.queue(queue);
    let exists = inner.command("EXISTS", &key, vec![Value::from(key.as_str())]).await?;
    if exists.as_u64() == Some(1) {
        inner.register_queue(queue).await?;
        losses::found(inner, queue);
        let watched = inner.watched.lock().expect("watched lock").get(queue) == Some(&Watched::Queue);
        if watched || inner.config.queue_lifetime(queue).is_some() {
            inner.schedule(queue, inner.config.queues.reclaim_after, true).await?;
        }
    }
    Ok(())
}

/// One sweep: registers the queues enqueues created, retries failed leaves, then, if this node
/// wins the sweeper lock, runs the SWEEP script on the queues due.
async fn sweep(inner: &Inner) -> Result<(), EngineError> {
    let created: Vec<Arc<str>> = std::mem::take(&mut *inner.created.lock().expect("created lock"));
    for queue in created {
        inner.known_queues.lock().expect("known queues lock").remove(&queue);
        inner.register_queue(&queue).await?;
    }
    let unleft: Vec<Arc<str>> = inner.unleft.lock().expect("unleft lock").drain().collect();
    for queue in unleft {
        let watched = inner.watched.lock().expect("watched lock").contains_key(&queue);
        if !watched {
            leave(inner, &queue).await;
        }
    }

    let lock = inner.keys.sweeper();
    let args = vec![
        Value::from(lock.as_str()),
        Value::from(inner.config.node_id.as_str()),
        Value::from("NX"),
        Value::from("PX"),
        Value::Integer(SWEEP_INTERVAL.as_millis() as i64),
    ];
    if inner.command("SET", &lock, args).await?.is_null() {
        return Ok(());
    }
    let set = inner.keys.lifetimes();
    let now = registry::now_ms();
    let args = ["-inf", &now.to_string(), "LIMIT", "0", &SWEEP_MAX.to_string()];
    let mut all = vec![Value::from(set.as_str())];
    all.extend(args.map(Value::from));
    let due: Vec<String> = inner
        .command("ZRANGEBYSCORE", &set, all)
        .await?
        .into_array()
        .iter()
        .filter_map(Value::as_string)
        .collect();
    if due.is_empty() {
        return Ok(());
    }
    let live = registry::live_ids(inner).await?;
    let recheck = lifetime_ms(inner.config.queues.reclaim_after);
    for queue in due {
        let (key, life) = (inner.keys.queue(&queue), inner.keys.life(&queue));
        let mut args = inner.rule_args(&queue).to_vec();
        args.push(Value::Integer(recheck));
        args.extend(live.iter().map(|id| Value::from(id.as_str())));
        let sent = inner.keys.sent(&queue);
        let reply =
            scripts::SWEEP.run(&inner.client, &[&key, &life, &sent], args).await.map_err(unavailable)?;
        let mut items = reply.into_array().into_iter();
        let deleted = items.next().and_then(|v| v.as_i64()).unwrap_or(-1);
        let next = items.next().and_then(|v| v.as_u64()).unwrap_or(0);
        if let Ok(messages) = u64::try_from(deleted) {
            deleted_queue(inner, &queue, messages, "expired").await?;
        } else if next == 0 {
            inner.command("ZREM", &set, vec![Value::from(set.as_str()), Value::from(queue.as_str())]).await?;
        } else {
            inner.schedule(&queue, Duration::from_millis(next), false).await?;
        }
    }
    Ok(())
}

/// Up to `max` entries no consumer has been given yet.
pub(super) async fn fetch(inner: &Inner, queue: &str, max: usize) -> Result<Vec<QueueEntry>, EngineError> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let key = inner.keys.queue(queue);
    let args = || {
        vec![
            Value::from("GROUP"),
            Value::from(GROUP),
            Value::from(inner.config.node_id.as_str()),
            Value::from("COUNT"),
            Value::Integer(max.try_into().unwrap_or(i64::MAX)),
            Value::from("STREAMS"),
            Value::from(key.as_str()),
            Value::from(">"),
        ]
    };
    let key = key.as_str();
    let read = |args| async move { inner.raw_command("XREADGROUP", key, args).await.map_err(unavailable) };
    let reply = match read(args()).await {
        // The group is gone (Redis restarted empty, the key was deleted): recreate it.
        Err(EngineError::Unavailable(e)) if e.contains("NOGROUP") => {
            losses::lost(inner, queue, "its consumer group is gone");
            join(inner, queue).await?;
            read(args()).await?
        }
        result => result?,
    };
    // Read from the frames as they came: converting each entry's fields into `Value`s (a UTF-8
    // check per envelope, then the conversion) was about 3% of a node's samples in the queue
    // benchmark on Redis (bench/notes.md).
    let mut entries = Vec::new();
    for stream in streams(reply) {
        for entry in items(stream).into_iter().nth(1).map(items).unwrap_or_default() {
            let mut parts = items(entry).into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else { continue };
            let Some(id) = blob(&id).and_then(|id| std::str::from_utf8(id).ok()) else { continue };
            let fields = items(fields);
            let redeliveries = field(&fields, b"r")
                .and_then(|r| std::str::from_utf8(r).ok())
                .and_then(|r| r.parse::<u64>().ok())
                .unwrap_or(0);
            match envelope::decode(field(&fields, b"e").unwrap_or_default()) {
                Ok(envelope) => entries.push(QueueEntry {
                    id: Arc::from(id),
                    message: Arc::new(envelope.into_message()),
                    redeliveries: u32::try_from(redeliveries).unwrap_or(u32::MAX),
                }),
                // Left pending: after `reclaim-after` it is re-added for another node (maybe a
                // newer one that can read it) rather than lost.
                Err(error) => inner.undecodable(queue, &error),
            }
        }
    }
    if !entries.is_empty() {
        let mut in_flight = inner.in_flight.lock().expect("in-flight lock");
        let held = in_flight.entry(Arc::from(queue)).or_default();
        held.extend(entries.iter().map(|e| e.id.clone()));
    }
    Ok(entries)
}

/// The streams of an XREADGROUP reply: `[[key, entries], ...]` (RESP2), `{key: entries}` (RESP3).
fn streams(reply: Resp3Frame) -> Vec<Resp3Frame> {
    match reply {
        Resp3Frame::Map { data, .. } => data
            .into_iter()
            .map(|(key, entries)| Resp3Frame::Array { data: vec![key, entries], attributes: None })
            .collect(),
        other => items(other),
    }
}

/// The members of an array frame; none for anything else (a null reply: nothing new).
fn items(frame: Resp3Frame) -> Vec<Resp3Frame> {
    match frame {
        Resp3Frame::Array { data, .. } => data,
        _ => Vec::new(),
    }
}

/// The bytes of a string frame.
fn blob(frame: &Resp3Frame) -> Option<&[u8]> {
    match frame {
        Resp3Frame::BlobString { data, .. } | Resp3Frame::SimpleString { data, .. } => Some(data),
        _ => None,
    }
}

/// The value of `name` in a stream entry's flat field list.
fn field<'a>(fields: &'a [Resp3Frame], name: &[u8]) -> Option<&'a [u8]> {
    fields.chunks_exact(2).find(|pair| blob(&pair[0]) == Some(name)).and_then(|pair| blob(&pair[1]))
}

fn forget(inner: &Inner, queue: &str, ids: &[EntryId]) {
    let mut in_flight = inner.in_flight.lock().expect("in-flight lock");
    if let Some(held) = in_flight.get_mut(queue) {
        for id in ids {
            held.remove(id);
        }
        if held.is_empty() {
            in_flight.remove(queue);
        }
    }
}

/// Consumed: no longer refreshed here; the caller hands the ids to the pipelining publisher,
/// which XACKs and XDELs them with the node's other ACKs of the queue ([`publisher::Request::Ack`]).
pub(super) fn acked(inner: &Inner, queue: &str, ids: &[EntryId]) {
    forget(inner, queue, ids);
}

async fn delete(inner: &Inner, queue: &str, ids: Vec<Value>) -> Result<(), EngineError> {
    let key = inner.keys.queue(queue);
    for chunk in ids.chunks(IDS_PER_CALL) {
        delete_entries(inner, &key, chunk).await.map_err(unavailable)?;
    }
    Ok(())
}

/// Deletes entries this node holds from the stream `key`, then acknowledges them: an XDEL and an
/// XACK, plain commands (through a script, the ids' trip into Lua and back cost Redis about 14%
/// more per entry). In this order a lost XACK leaves nothing behind: the entry is gone, and its
/// pending id is dropped by the next reclaim (XAUTOCLAIM forgets ids no longer in the stream)
/// or by a release (which only XACKs an id it cannot find). The other order would leave an
/// acknowledged entry in the stream, counted as ready.
pub(super) fn delete_commands(key: &str, ids: &[Value]) -> [(CustomCommand, Vec<Value>); 2] {
    let hash = ClusterHash::Custom(fred::util::redis_keyslot(key.as_bytes()));
    let mut xdel = Vec::with_capacity(1 + ids.len());
    xdel.push(Value::from(key));
    xdel.extend(ids.iter().cloned());
    let mut xack = Vec::with_capacity(2 + ids.len());
    xack.push(Value::from(key));
    xack.push(Value::from(GROUP));
    xack.extend(ids.iter().cloned());
    [
        (CustomCommand::new_static("XDEL", hash.clone(), false), xdel),
        (CustomCommand::new_static("XACK", hash, false), xack),
    ]
}

/// [`delete_commands`], sent on their own.
pub(super) async fn delete_entries(
    inner: &Inner,
    key: &str,
    ids: &[Value],
) -> Result<(), fred::error::Error> {
    let [(_, xdel), (_, xack)] = delete_commands(key, ids);
    inner.redis_command("XDEL", key, xdel).await?;
    inner.redis_command("XACK", key, xack).await?;
    Ok(())
}

/// Back to the queue's tail (redeliveries + 1 when `delivered`), or to its dead-letter queue.
pub(super) async fn release(
    inner: &Inner,
    queue: &str,
    ids: &[EntryId],
    delivered: bool,
) -> Result<(), EngineError> {
    requeue(inner, queue, ids, delivered, inner.config.queues.max_deliveries).await
}

/// Straight to the dead-letter queue (a NACK with `requeue:false`): the release script with a
/// bound of one delivery, which every entry a client saw has reached.
pub(super) async fn dead_letter_now(inner: &Inner, queue: &str, ids: &[EntryId]) -> Result<(), EngineError> {
    requeue(inner, queue, ids, true, 1).await
}

/// [`release`] with the dead-letter bound given: `max_deliveries` deliveries (0: no bound).
async fn requeue(
    inner: &Inner,
    queue: &str,
    ids: &[EntryId],
    delivered: bool,
    max_deliveries: u32,
) -> Result<(), EngineError> {
    forget(inner, queue, ids);
    let key = inner.keys.queue(queue);
    for chunk in ids.chunks(IDS_PER_CALL) {
        let mut args = vec![
            Value::from(if delivered { "1" } else { "0" }),
            Value::Integer(max_deliveries.into()),
            Value::Integer(inner.config.queues.max_length.try_into().unwrap_or(i64::MAX)),
            Value::from(inner.keys.channel(queue)),
        ];
        args.extend(chunk.iter().map(|id| Value::from(&**id)));
        let reply = inner.script(&scripts::RELEASE, &[&key], args).await.map_err(unavailable)?;
        let mut items = reply.into_array().into_iter();
        let dropped = items.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let _moved = items.next();
        if dropped > 0 {
            inner.metrics.dropped(DropReason::QueueFull, dropped);
        }
        dead_letter(inner, queue, items.collect()).await?;
    }
    if let Some(inbox) = inner.inbox() {
        inbox.queue_ready(queue);
    }
    Ok(())
}

/// Moves entries a script left pending (`[id, envelope, id, envelope, ...]`) to `<queue>.dlq`,
/// then deletes them from `queue`.
async fn dead_letter(inner: &Inner, queue: &str, dead: Vec<Value>) -> Result<(), EngineError> {
    if dead.is_empty() {
        return Ok(());
    }
    let dlq = format!("{queue}.dlq");
    inner.register_queue(&dlq).await?;
    let mut ids = Vec::new();
    for pair in dead.chunks_exact(2) {
        let bytes = Bytes::copy_from_slice(pair[1].as_bytes().unwrap_or_default());
        let moved = match envelope::decode(&bytes) {
            Ok(envelope) => {
                let origin = envelope.origin().to_owned();
                let mut message = envelope.into_message();
                message.destination = Arc::from(dlq.as_str());
                envelope::encode(&origin, &message)
            }
            // Kept as it is: a node that can read it may still want it.
            Err(_) => bytes.to_vec(),
        };
        push(inner, &dlq, moved).await?;
        ids.push(pair[0].clone());
    }
    let n = ids.len() as u64;
    delete(inner, queue, ids).await?;
    tracing::info!(%queue, dead_lettered = n, "messages moved to the dead-letter queue");
    inner.metrics.dropped(DropReason::DeadLettered, n);
    Ok(())
}

/// Wakes the dispatcher of every queue this node watches (notifications may have been missed).
pub(super) fn wake_watched(inner: &Inner) {
    let Some(inbox) = inner.inbox() else { return };
    let queues: Vec<Arc<str>> = inner
        .watched
        .lock()
        .expect("watched lock")
        .iter()
        .filter(|(_, w)| **w == Watched::Queue)
        .map(|(d, _)| d.clone())
        .collect();
    for queue in queues {
        inbox.queue_ready(&queue);
    }
}

/// The periodic queue work: refresh in-flight entries every `reclaim_after / 3`, reclaim idle
/// entries every `reclaim_after`, read depths every few seconds; after the command connection
/// comes back, wake the local dispatchers.
pub(super) async fn maintenance_loop(inner: Arc<Inner>, mut reconnects: broadcast::Receiver<Server>) {
    let reclaim_after = inner.config.queues.reclaim_after.max(Duration::from_millis(3));
    let mut refresh_tick = tokio::time::interval(reclaim_after / 3);
    let mut reclaim_tick = tokio::time::interval(reclaim_after);
    let mut depth_tick = tokio::time::interval(DEPTH_INTERVAL);
    let mut sweep_tick = tokio::time::interval(SWEEP_INTERVAL);
    for tick in [&mut refresh_tick, &mut reclaim_tick, &mut depth_tick, &mut sweep_tick] {
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    }
    let mut events = true;
    loop {
        tokio::select! {
            _ = refresh_tick.tick() => {
                if inner.client.is_connected() {
                    if let Err(error) = refresh(&inner).await {
                        tracing::warn!(%error, "could not refresh in-flight queue entries");
                    }
                    wake_watched(&inner);
                }
            }
            _ = reclaim_tick.tick() => {
                if inner.client.is_connected() {
                    if let Err(error) = reclaim(&inner, reclaim_after).await {
                        tracing::warn!(%error, "could not reclaim idle queue entries");
                    }
                }
            }
            _ = depth_tick.tick() => {
                if inner.client.is_connected() {
                    read_depths(&inner).await;
                }
            }
            _ = sweep_tick.tick() => {
                if inner.client.is_connected() {
                    if let Err(error) = sweep(&inner).await {
                        tracing::warn!(%error, "could not sweep queues for expiry");
                    }
                }
            }
            event = reconnects.recv(), if events => match event {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    // Redis may have restarted empty: register the queues again.
                    inner.known_queues.lock().expect("known queues lock").clear();
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                    while !inner.client.is_connected() && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    wake_watched(&inner);
                    if let Err(error) = losses::check_epoch(&inner).await {
                        tracing::warn!(%error, "could not check whether Redis lost its data");
                    }
                }
                Err(RecvError::Closed) => events = false,
            },
        }
    }
}

/// Resets the idle time of the entries this node holds, so live nodes never reclaim them.
async fn refresh(inner: &Inner) -> Result<(), EngineError> {
    let held: Vec<(Arc<str>, Vec<EntryId>)> = inner
        .in_flight
        .lock()
        .expect("in-flight lock")
        .iter()
        .map(|(q, ids)| (q.clone(), ids.iter().cloned().collect()))
        .collect();
    for (queue, ids) in held {
        let key = inner.keys.queue(&queue);
        for chunk in ids.chunks(IDS_PER_CALL) {
            let mut args = vec![
                Value::from(key.as_str()),
                Value::from(GROUP),
                Value::from(inner.config.node_id.as_str()),
                Value::Integer(0),
            ];
            args.extend(chunk.iter().map(|id| Value::from(&**id)));
            args.push(Value::from("JUSTID"));
            inner.command("XCLAIM", &key, args).await?;
        }
    }
    Ok(())
}

/// Claims entries idle past `reclaim_after` in every queue and re-adds them as redeliveries.
async fn reclaim(inner: &Inner, reclaim_after: Duration) -> Result<(), EngineError> {
    let set = inner.keys.queues();
    // Only those consumed here: one known from an earlier enqueue may have been deleted since.
    let consumed: Vec<Arc<str>> = inner
        .watched
        .lock()
        .expect("watched lock")
        .iter()
        .filter(|(_, w)| **w == Watched::Queue)
        .map(|(q, _)| q.clone())
        .collect();
    let known: Vec<Value> = {
        let known = inner.known_queues.lock().expect("known queues lock");
        consumed.iter().filter(|q| known.contains_key(*q)).map(|q| Value::from(&**q)).collect()
    };
    if !known.is_empty() {
        let mut args = vec![Value::from(set.as_str())];
        args.extend(known);
        inner.command("SADD", &set, args).await?;
    }
    let queues = inner.command("SMEMBERS", &set, vec![Value::from(set.as_str())]).await?;
    let min_idle = i64::try_from(reclaim_after.as_millis()).unwrap_or(i64::MAX);
    for queue in queues.into_array().iter().filter_map(Value::as_string) {
        let key = inner.keys.queue(&queue);
        let mut cursor = Value::from("0-0");
        let mut moved_total = 0;
        for _ in 0..RECLAIM_CALLS {
            let args = vec![
                Value::from(inner.config.node_id.as_str()),
                Value::Integer(min_idle),
                Value::Integer(RECLAIM_COUNT as i64),
                Value::Integer(inner.config.queues.max_deliveries.into()),
                Value::Integer(inner.config.queues.max_length.try_into().unwrap_or(i64::MAX)),
                Value::from(inner.keys.channel(&queue)),
                cursor.clone(),
            ];
            let reply = inner.script(&scripts::RECLAIM, &[&key], args).await.map_err(unavailable)?;
            let mut items = reply.into_array().into_iter();
            let next = items.next().unwrap_or(Value::Null);
            let claimed = items.next().and_then(|v| v.as_u64()).unwrap_or(0);
            let dropped = items.next().and_then(|v| v.as_u64()).unwrap_or(0);
            moved_total += items.next().and_then(|v| v.as_u64()).unwrap_or(0);
            if dropped > 0 {
                inner.metrics.dropped(DropReason::QueueFull, dropped);
            }
            dead_letter(inner, &queue, items.collect()).await?;
            let done = next.as_str().is_none_or(|n| n == "0-0");
            if done || claimed == 0 {
                break;
            }
            cursor = next;
        }
        if moved_total > 0 {
            tracing::info!(%queue, reclaimed = moved_total, "re-queued entries left idle by another node");
            let local =
                inner.watched.lock().expect("watched lock").get(queue.as_str()) == Some(&Watched::Queue);
            if local {
                if let Some(inbox) = inner.inbox() {
                    inbox.queue_ready(&queue);
                }
            }
        }
    }
    Ok(())
}

/// Reads the ready entries of (up to [`DEPTH_QUEUES`]) known queues.
pub(super) async fn read_depths(inner: &Inner) {
    if let Ok(depths) = depths(inner).await {
        *inner.depths.lock().expect("depths lock") = depths;
    }
}

/// Ready entries of every queue listed in `P:queues` (at most [`DEPTH_QUEUES`]), read now.
pub(super) async fn depths(inner: &Inner) -> Result<Vec<(String, u64)>, EngineError> {
    let set = inner.keys.queues();
    let queues = inner.command("SMEMBERS", &set, vec![Value::from(set.as_str())]).await?;
    let names: Vec<String> =
        queues.into_array().iter().filter_map(Value::as_string).take(DEPTH_QUEUES).collect();
    let reads = names.iter().map(|queue| async move {
        let key = inner.keys.queue(queue);
        let depth = inner.script(&scripts::DEPTH, &[&key], Vec::new()).await.ok()?.as_u64()?;
        Some((queue.clone(), depth))
    });
    let mut depths: Vec<(String, u64)> =
        futures_util::future::join_all(reads).await.into_iter().flatten().collect();
    depths.sort();
    Ok(depths)
}

/// Deletes the ready entries of `queue` (those after the group's last-delivered id: entries in
/// flight stay, to be acknowledged or released by their node).
pub(super) async fn purge(inner: &Inner, queue: &str) -> Result<u64, EngineError> {
    let key = inner.keys.queue(queue);
    let purged = inner.script(&scripts::PURGE, &[&key], Vec::new()).await.map_err(unavailable)?;
    let purged = purged.as_u64().unwrap_or(0);
    if purged > 0 {
        inner.metrics.dropped(DropReason::Purged, purged);
    }
    Ok(purged)
}
