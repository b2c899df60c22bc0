//! Publishes and enqueues, pipelined: one task sends every one of the node's writes of messages
//! to Redis in the order the sessions handed them over, many per round trip.
//!
//! A session hands its message to [`publish_loop`] through a bounded channel and goes on reading
//! its client; it waits for Redis only when the client asked for a receipt. The task takes
//! everything queued (up to [`PIPELINE_MAX`]) and sends it as one fred pipeline: one write, one round
//! trip, PUBLISHes and script calls (history publishes, enqueues) in the order they came. Redis
//! runs a connection's commands in order, so per-publisher order holds on the wire as it did when
//! each publish was awaited, at a fraction of the round trips. A full channel (Redis slower than
//! the publishers) makes publishers wait, and with them their clients' TCP connections.
//!
//! Consecutive PUBLISHes on one channel (a publisher's burst to one topic) go as one call of
//! [`scripts::PUBLISH_MANY`]: fred flushes its socket after every command of a pipeline, so a
//! pipeline of N PUBLISHes is N writes and N replies, where the script is one of each.
//!
//! Queue writes ride the same pipelines. Consecutive enqueues to one queue (producers' SENDs
//! taken together) go as one [`scripts::ENQUEUE`] call: its appends, one trim, and one "entries
//! ready" PUBLISH, so consumers' nodes are woken once per run, not once per message. ACKs are
//! not awaited by their sessions ([`Request::Ack`]): the task gathers every ACK it takes, across
//! sessions, into one XDEL and one XACK per queue per pipeline ([`queues::delete_commands`]). An
//! ACK commutes with every other write (it only deletes entries this node holds), so it goes
//! after the pipeline's other writes; one that fails is logged and counted, and its entry, still pending in Redis but no
//! longer refreshed by this node, is redelivered after `queue-reclaim-after` (at-least-once). A
//! release waits for the ACKs taken before it ([`Request::Flush`]), so it never puts back an
//! entry whose ACK is still on its way.
//!
//! An enqueue whose connection is lost, or that times out, before Redis answers may have been
//! stored or not. Each ENQUEUE call carries a marker of its own (a process-random number and a
//! count), which the script records first and skips the call if recorded, so such a call is sent again,
//! with the same marker, until Redis answers or [`OUTAGE_PATIENCE`] runs out ([`resend`]): a
//! failover or a stall costs its SENDs a late RECEIPT, not an ERROR, and never a duplicate. Plain
//! and history publishes are sent again only when they are known not to have been sent (their
//! Redis Cluster shard unreachable, its failover under way): a PUBLISH sent twice may reach
//! subscribers twice.
//!
//! Scripts go as EVALSHA, loaded (SCRIPT LOAD) before the first pipeline that needs them on each
//! connection. Should Redis lose its script cache unnoticed (a failover the client has not seen
//! yet), those calls fail with NOSCRIPT and are run again, in their order, with EVAL: only then
//! can a script call land after a PUBLISH that was taken after it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use fred::error::{Error as RedisError, ErrorKind};
use fred::interfaces::{ClientLike, ClusterInterface, EventInterface, PubsubInterface};
use fred::types::Value;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use super::queues;
use super::scripts::{self, Script};
use super::{unavailable, Inner, IDS_PER_CALL, OUTAGE_PATIENCE};
use crate::engine::{EngineError, EntryId};
use crate::metrics::{DropReason, EngineEvent, RedisCommand};

/// Requests queued to the task at most; past that publishers wait.
pub(super) const CAPACITY: usize = 4096;
/// Requests sent per pipeline at most.
const PIPELINE_MAX: usize = 512;
/// PUBLISHes one [`scripts::PUBLISH_MANY`] call carries at least: a script call costs Redis more
/// than a PUBLISH, and below this many messages more than the PUBLISHes it replaces
/// (`redis-benchmark`, three subscribers: 514,000 plain PUBLISHes/s; through the script 345,000
/// messages/s two at a time, 421,000 four at a time, 585,000 eight at a time).
const GROUP_MIN: usize = 8;
/// PUBLISHes one [`scripts::PUBLISH_MANY`] call carries at most, and envelope bytes of any call
/// (a call is one command that Redis reads whole before running it).
const GROUP_MAX: usize = 64;
const GROUP_MAX_BYTES: usize = 1 << 20;
/// Enqueues one [`scripts::ENQUEUE`] call carries at most. Each call also pays for its marker, its
/// trim and its "entries ready" notification (which wakes every consuming node); Redis runs a
/// call of 256 in about 0.3 ms. Queue benchmark on Redis (bench/notes.md), 3 rounds each:
/// 118,000–127,000 deliveries/s at 64, 137,000–138,000 at 256, 129,000–133,000 at 512.
const ENQUEUE_MAX: usize = 256;

/// How many jobs a run that starts with `op` may take.
fn group_max(op: &Op) -> usize {
    match op {
        Op::Enqueue { .. } => ENQUEUE_MAX,
        _ => GROUP_MAX,
    }
}

/// What the task is asked to do.
pub(super) enum Request {
    Write(Job),
    /// A publisher's run (of one lane's writes), sent in one pipeline (one request however long the run; a session's
    /// runs are bounded).
    Writes(Vec<Job>),
    /// Acknowledged entries of one queue: XACK and XDEL, with the other ACKs of the pipeline on
    /// that queue, nobody waiting for the reply.
    Ack(Arc<str>, Vec<EntryId>),
    /// Answered once every write taken before it has been answered (node shutdown; a release,
    /// which must not overtake an ACK).
    Flush(oneshot::Sender<()>),
}

/// One write of a message, encoded by the publisher's task.
pub(super) struct Job {
    pub destination: Arc<str>,
    pub op: Op,
    pub reply: oneshot::Sender<Result<Option<u64>, EngineError>>,
}

pub(super) enum Op {
    /// PUBLISH of an envelope on a channel.
    Publish { channel: String, envelope: Bytes },
    /// Append of an envelope to a queue (key: its stream), whose "entries ready" notifications
    /// go on `channel`.
    Enqueue { key: Arc<str>, channel: Arc<str>, envelope: Bytes },
    /// A script over one destination's keys.
    Script { script: &'static Script, keys: Vec<String>, args: Vec<Value>, reply: ScriptReply },
}

/// What a script's integer reply means.
#[derive(Clone, Copy)]
pub(super) enum ScriptReply {
    /// The history offset the publish was given.
    Offset,
}

// === impl Lanes ===

/// The publishing tasks ("lanes"): one on standalone Redis and Sentinel; on Redis Cluster one per
/// primary, each taking the writes of the slots that primary owns, so that a shard that stops
/// answering holds up the writes to its own slots only (their publishers wait once its lane is
/// full), never the others'. A destination's writes all go to the lane of its slot, in order;
/// only while a slot changes owner (a failover) may a write in the new owner's lane run before
/// one still in the old owner's.
pub(super) struct Lanes {
    inner: Arc<Inner>,
    /// By primary (`host:port`; empty: the one lane of a server that is not a cluster).
    lanes: std::sync::Mutex<HashMap<String, mpsc::Sender<Request>>>,
    /// The one lane of a server that is not a cluster, once started: taken without the lock,
    /// for every SEND and ACK.
    single: std::sync::OnceLock<mpsc::Sender<Request>>,
}

impl Lanes {
    pub(super) fn new(inner: Arc<Inner>) -> Lanes {
        Lanes { inner, lanes: std::sync::Mutex::new(HashMap::new()), single: std::sync::OnceLock::new() }
    }

    /// The owner of `key`'s slot, as the client last read the cluster's slots.
    fn owner(&self, key: &str) -> String {
        if !self.inner.keys.sharded() {
            return String::new();
        }
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let state = self.inner.client.cached_cluster_state();
        state.and_then(|state| state.get_server(slot).map(|server| server.to_string())).unwrap_or_default()
    }

    /// The owner of `queue`'s stream's slot ([`Lanes::owner`]), its key named only on a cluster.
    fn queue_owner(&self, queue: &str) -> String {
        if self.inner.keys.sharded() {
            self.owner(&self.inner.keys.queue(queue))
        } else {
            String::new()
        }
    }

    /// The lane of `owner`, started on first use.
    fn lane(&self, owner: String) -> mpsc::Sender<Request> {
        if owner.is_empty() {
            if let Some(lane) = self.single.get() {
                return lane.clone();
            }
        }
        let mut lanes = self.lanes.lock().expect("lanes lock");
        let single = owner.is_empty();
        let lane = lanes
            .entry(owner)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(CAPACITY);
                tokio::spawn(publish_loop(self.inner.clone(), rx));
                tx
            })
            .clone();
        if single {
            let _ = self.single.set(lane.clone());
        }
        lane
    }

    /// Hands one write to its lane; the job back when the lane is gone (the engine is closing).
    pub(super) async fn write(&self, job: Job) -> Result<(), Job> {
        let lane = self.lane(self.owner(job.op.key()));
        lane.send(Request::Write(job)).await.map_err(|error| match error.0 {
            Request::Write(job) => job,
            _ => unreachable!("a write comes back as it went"),
        })
    }

    /// Hands a publisher's run to the lanes, in order, one request per lane.
    pub(super) async fn write_all(&self, jobs: Vec<Job>) {
        let mut runs: Vec<(String, Vec<Job>)> = Vec::new();
        for job in jobs {
            let owner = self.owner(job.op.key());
            match runs.iter_mut().find(|(o, _)| *o == owner) {
                Some((_, run)) => run.push(job),
                None => runs.push((owner, vec![job])),
            }
        }
        for (owner, run) in runs {
            if let Err(error) = self.lane(owner).send(Request::Writes(run)).await {
                if let Request::Writes(run) = error.0 {
                    for job in run {
                        let _ = job.reply.send(Err(EngineError::Closed));
                    }
                }
            }
        }
    }

    /// Hands a queue's acknowledged entries to the lane of its slot (nobody waits for them).
    pub(super) async fn ack(&self, queue: Arc<str>, ids: Vec<EntryId>) -> Result<(), EngineError> {
        let lane = self.lane(self.queue_owner(&queue));
        lane.send(Request::Ack(queue, ids)).await.map_err(|_| EngineError::Closed)
    }

    /// Waits until the writes (and ACKs) taken before in the lane of `queue`'s slot are answered.
    pub(super) async fn flush_queue(&self, queue: &str) {
        let lane = self.lane(self.queue_owner(queue));
        let (done, flushed) = oneshot::channel();
        if lane.send(Request::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }

    /// Waits until every write taken before is answered, in every lane.
    pub(super) async fn flush(&self) {
        let lanes: Vec<mpsc::Sender<Request>> =
            self.lanes.lock().expect("lanes lock").values().cloned().collect();
        let flushed = lanes.into_iter().map(|lane| async move {
            let (done, flushed) = oneshot::channel();
            if lane.send(Request::Flush(done)).await.is_ok() {
                let _ = flushed.await;
            }
        });
        futures_util::future::join_all(flushed).await;
    }
}

impl Op {
    /// The key (or channel) whose slot the write goes to.
    fn key(&self) -> &str {
        match self {
            Op::Publish { channel, .. } => channel,
            Op::Enqueue { key, .. } => key,
            Op::Script { keys, .. } => keys.first().map_or("", String::as_str),
        }
    }
}

/// Sends the writes until every sender is gone.
async fn publish_loop(inner: Arc<Inner>, mut requests: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(PIPELINE_MAX);
    let mut jobs = Vec::with_capacity(PIPELINE_MAX);
    let mut acks = Acks::default();
    let mut reconnects = inner.client.reconnect_rx();
    // Whether the scripts are known to be in Redis's cache on this connection.
    let mut loaded = false;
    while requests.recv_many(&mut batch, PIPELINE_MAX).await > 0 {
        if !matches!(reconnects.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {
            // A new connection may be to a new (or restarted) server with an empty cache.
            while !matches!(reconnects.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
            loaded = false;
        }
        for request in batch.drain(..) {
            match request {
                Request::Write(job) => jobs.push(job),
                Request::Writes(run) => jobs.extend(run),
                Request::Ack(queue, ids) => acks.add(queue, ids),
                Request::Flush(done) => {
                    // Everything before the flush goes first.
                    send(&inner, std::mem::take(&mut jobs), std::mem::take(&mut acks), &mut loaded).await;
                    let _ = done.send(());
                }
            }
        }
        send(&inner, std::mem::take(&mut jobs), std::mem::take(&mut acks), &mut loaded).await;
    }
}

/// ACKs taken for one pipeline, by queue, in the order the queues came.
#[derive(Default)]
struct Acks(Vec<(Arc<str>, Vec<EntryId>)>);

impl Acks {
    fn add(&mut self, queue: Arc<str>, ids: Vec<EntryId>) {
        match self.0.iter_mut().find(|(q, _)| *q == queue) {
            Some((_, held)) => held.extend(ids),
            None => self.0.push((queue, ids)),
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One XDEL and XACK each: (queue, its stream's key, at most [`IDS_PER_CALL`] ids).
    fn calls(self, inner: &Inner) -> Vec<(Arc<str>, String, Vec<Value>)> {
        let mut calls = Vec::new();
        for (queue, ids) in self.0 {
            let key = inner.keys.queue(&queue);
            for chunk in ids.chunks(IDS_PER_CALL) {
                calls.push((queue.clone(), key.clone(), chunk.iter().map(|id| Value::from(&**id)).collect()));
            }
        }
        calls
    }
}

/// Sends `jobs`, then `acks`, as one pipeline and answers each job.
async fn send(inner: &Inner, jobs: Vec<Job>, acks: Acks, loaded: &mut bool) {
    if jobs.is_empty() && acks.is_empty() {
        return;
    }
    let groups = groups(&jobs);
    let scripted = groups.iter().any(|group| is_script(&jobs[group.clone()]));
    if !*loaded && scripted {
        // Load first, or the first EVALSHA of each script would fail and run late (out of order).
        *loaded = true;
        for script in [&*scripts::HISTORY_PUBLISH, &*scripts::ENQUEUE, &*scripts::PUBLISH_MANY] {
            if let Err(error) = script.load(&inner.client).await {
                tracing::debug!(script = script.name, %error, "cannot load a script");
                *loaded = false;
            }
        }
    }
    let sharded = inner.keys.sharded();
    // Each ENQUEUE call's marker (see `resend`).
    let markers: Vec<Option<String>> = groups
        .iter()
        .map(|group| match &jobs[group.start].op {
            Op::Enqueue { .. } => Some(batch_id()),
            _ => None,
        })
        .collect();
    let pipeline = inner.client.pipeline();
    for (group, marker) in groups.iter().zip(&markers) {
        // Queued in memory: only the pipeline's send can fail.
        let _: Result<(), RedisError> = match &jobs[group.start].op {
            Op::Publish { channel, envelope } if group.len() == 1 && sharded => {
                pipeline.spublish(channel.as_str(), envelope.clone()).await
            }
            Op::Publish { channel, envelope } if group.len() == 1 => {
                pipeline.publish(channel.as_str(), envelope.clone()).await
            }
            Op::Publish { channel, .. } => {
                let (command, args) = scripts::PUBLISH_MANY.evalsha(
                    sharded,
                    &publish_many_keys(sharded, channel),
                    &publish_many_args(&jobs[group.clone()]),
                );
                pipeline.custom(command, args).await
            }
            Op::Enqueue { key, .. } => {
                let sent = inner.keys.sent(&jobs[group.start].destination);
                let args = enqueue_args(inner, &jobs[group.clone()], marker.as_deref());
                let (command, args) = scripts::ENQUEUE.evalsha(sharded, &[&**key, &sent], &args);
                pipeline.custom(command, args).await
            }
            Op::Script { script, keys, args, .. } => {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                let (command, args) = script.evalsha(sharded, &keys, args);
                pipeline.custom(command, args).await
            }
        };
    }
    let acks = acks.calls(inner);
    for (_, key, ids) in &acks {
        for (command, args) in queues::delete_commands(key, ids) {
            let _: Result<(), RedisError> = pipeline.custom(command, args).await;
        }
    }
    let started = std::time::Instant::now();
    let results = pipeline.try_all::<Value>().await;
    inner.metrics.redis_command(RedisCommand::Pipeline, started.elapsed());
    let mut results = results.into_iter();
    let mut jobs = jobs.into_iter();
    let mut again = Vec::new();
    // ENQUEUE calls whose outcome is unknown, with their markers, and writes that were not sent
    // (their shard unreachable): sent again below.
    let mut resends = Vec::new();
    for (group, marker) in groups.into_iter().zip(markers) {
        let members: Vec<Job> = jobs.by_ref().take(group.len()).collect();
        match (results.next(), marker) {
            (Some(Err(error)), marker) if is_script(&members) && scripts::is_noscript(&error) => {
                // The cache was lost under us (a restart or failover not seen yet).
                *loaded = false;
                again.push((members, marker));
            }
            // The slot moved (Redis Cluster): not run; the client has read the new owners.
            (Some(Err(error)), marker) if super::is_redirect(&error) => again.push((members, marker)),
            (Some(Err(error)), marker) if may_send_again(&error, marker.is_some()) => {
                resends.push((members, marker, error))
            }
            (None, Some(marker)) => {
                resends.push((members, Some(marker), RedisError::new(ErrorKind::IO, "Redis gave no reply")))
            }
            (Some(result), _) => answer_all(inner, members, result),
            (None, None) => {
                for job in members {
                    answer(inner, job, Err(EngineError::Unavailable("Redis gave no reply".to_owned())));
                }
            }
        }
    }
    let mut acks_again = Vec::new();
    for (queue, key, ids) in acks {
        // The XDEL's reply, then the XACK's.
        let (xdel, xack) = (results.next(), results.next());
        match xdel.zip(xack).map(|(xdel, xack)| xdel.and(xack)) {
            Some(Err(error)) if super::is_redirect(&error) => acks_again.push((queue, key, ids)),
            Some(Err(error)) => acked(inner, &queue, ids.len(), Err(error)),
            Some(Ok(_)) => {}
            None => acked(inner, &queue, ids.len(), Err(RedisError::new(ErrorKind::IO, "no reply"))),
        }
    }
    // These run late, in their order: every command of a moved slot was refused, so each
    // channel's publishes stay in order among themselves.
    for (members, marker) in again {
        let result = write_alone(inner, &members, marker.as_deref()).await;
        match (result, marker) {
            (Err(error), marker) if may_send_again(&error, marker.is_some()) => {
                resends.push((members, marker, error))
            }
            (result, _) => answer_all(inner, members, result),
        }
    }
    for (queue, key, ids) in acks_again {
        let n = ids.len();
        if let Err(error) = queues::delete_entries(inner, &key, &ids).await {
            acked(inner, &queue, n, Err(error));
        }
    }
    resend(inner, resends).await;
}

/// One run of writes (one pipeline entry: a PUBLISH, a PUBLISH_MANY, an ENQUEUE call with its
/// marker, a script) sent on its own.
async fn write_alone(inner: &Inner, members: &[Job], marker: Option<&str>) -> Result<Value, RedisError> {
    let sharded = inner.keys.sharded();
    match &members[0].op {
        Op::Publish { channel, envelope } if members.len() == 1 => {
            let args = vec![Value::from(channel.as_str()), Value::Bytes(envelope.clone())];
            inner.redis_command(inner.publish_command(), channel, args).await
        }
        Op::Publish { channel, .. } => {
            let keys = publish_many_keys(sharded, channel);
            inner.script(&scripts::PUBLISH_MANY, &keys, publish_many_args(members)).await
        }
        Op::Enqueue { key, .. } => {
            let sent = inner.keys.sent(&members[0].destination);
            let args = enqueue_args(inner, members, marker);
            inner.script(&scripts::ENQUEUE, &[&**key, &sent], args).await
        }
        Op::Script { script, keys, args, .. } => {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            inner.script(script, &keys, args.clone()).await
        }
    }
}

/// Whether a failed write is sent again ([`resend`]): an ENQUEUE call (it has a marker) whose
/// outcome is unknown ([`is_cut_off`]), or any write that was never sent ([`not_sent`]).
fn may_send_again(error: &RedisError, marked: bool) -> bool {
    if marked {
        is_cut_off(error)
    } else {
        not_sent(error)
    }
}

/// Sends writes again, each run on its own, in order: ENQUEUE calls whose connection was lost (or
/// that timed out) before their reply came, which may have run or not, and writes of any kind
/// that were never sent (their Redis Cluster shard unreachable, its failover under way). An
/// ENQUEUE goes again with its marker, so a call that did run is not run twice (see
/// [`scripts::ENQUEUE`]); a PUBLISH or a history publish only while it is known not to have been
/// sent (a PUBLISH sent twice may reach subscribers twice). Each is tried again for
/// [`OUTAGE_PATIENCE`] from now (a failover: the SENDs get their RECEIPTs late), and only then do
/// its SENDs fail. The lane waits meanwhile: the writes taken after these go after them.
async fn resend(inner: &Inner, resends: Vec<(Vec<Job>, Option<String>, RedisError)>) {
    if resends.is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::now() + OUTAGE_PATIENCE;
    for (members, marker, error) in resends {
        if marker.is_some() {
            tracing::info!(queue = %members[0].destination, messages = members.len(), %error,
                "an enqueue's connection was lost before its reply; sending it again");
        } else {
            tracing::info!(destination = %members[0].destination, messages = members.len(), %error,
                "a write could not be sent (its Redis shard is unreachable); sending it again");
        }
        inner.metrics.engine_event(EngineEvent::Resent, 1);
        let mut pause = RESEND_PAUSE;
        let result = loop {
            while !inner.client.is_connected() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            match write_alone(inner, &members, marker.as_deref()).await {
                Err(error)
                    if may_send_again(&error, marker.is_some())
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RESEND_PAUSE_MAX);
                }
                result => break result,
            }
        };
        if let (Ok(reply), Some(_)) = (&result, &marker) {
            if already_stored(reply) {
                tracing::info!(queue = %members[0].destination, messages = members.len(),
                    "the enqueue sent again had been stored before its connection was lost: not stored twice");
            }
        }
        answer_all(inner, members, result);
    }
}

/// Whether a write failed without having been sent: the Redis client had no connection to the
/// primary of its slot (vendor/README.md: `Cluster node ... is unreachable.`), or none at all
/// (`Failed to route command.`). Sending it again cannot run it twice.
fn not_sent(error: &RedisError) -> bool {
    const NOT_SENT: [&str; 2] = ["is unreachable", "Failed to route command"];
    NOT_SENT.iter().any(|text| error.details().contains(text))
}

/// Whether a write failed before its reply came in a way that leaves its outcome unknown (the
/// connection was lost, or it timed out), or was refused by a server not ready to run it (a
/// Redis Cluster or Sentinel failover in progress); a script's own error is neither.
fn is_cut_off(error: &RedisError) -> bool {
    const NOT_RUN: [&str; 8] = [
        // fred had no connection to write it to (a Sentinel or Cluster reconnection under way).
        "Failed to route command",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "LOADING",
        "MASTERDOWN",
        "READONLY",
        "Too many failed write attempts",
        "Max attempts",
    ];
    matches!(error.kind(), ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Routing)
        || NOT_RUN.iter().any(|prefix| error.details().contains(prefix))
}

/// An ENQUEUE's reply saying that its marker was set: the call had run before.
fn already_stored(reply: &Value) -> bool {
    matches!(reply, Value::Array(items) if items.get(2).and_then(Value::as_u64) == Some(1))
}

/// The first pause between two sends of an ENQUEUE call again, doubled each time up to the max.
const RESEND_PAUSE: Duration = Duration::from_millis(50);
const RESEND_PAUSE_MAX: Duration = Duration::from_millis(800);

/// A new id for an ENQUEUE call: a number random to this process, and a count.
fn batch_id() -> String {
    static PROCESS: LazyLock<u64> = LazyLock::new(rand::random);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    format!("{:016x}.{:x}", *PROCESS, CALLS.fetch_add(1, Ordering::Relaxed))
}

/// pending in Redis and come back after `queue-reclaim-after`.
fn acked(inner: &Inner, queue: &str, n: usize, result: Result<(), RedisError>) {
    if let Err(error) = result {
        inner.metrics.engine_event(EngineEvent::AckFailed, n as u64);
        tracing::warn!(%queue, entries = n, %error, "could not acknowledge queue entries; they will be redelivered");
    }
}

/// Splits `jobs` into what goes as one command each: a run of consecutive PUBLISHes on one
/// channel (at least [`GROUP_MIN`], bounded by [`GROUP_MAX`] and [`GROUP_MAX_BYTES`]), a run of
/// consecutive enqueues to one queue (bounded by [`ENQUEUE_MAX`] and the bytes: one ENQUEUE call
/// costs less than two), or a single job.
fn groups(jobs: &[Job]) -> Vec<std::ops::Range<usize>> {
    /// The last run of PUBLISHes, if too short for the script, goes as its PUBLISHes.
    fn short(jobs: &[Job], groups: &mut Vec<std::ops::Range<usize>>) {
        if let Some(last) = groups.last().filter(|g| g.len() > 1 && g.len() < GROUP_MIN).cloned() {
            if matches!(jobs[last.start].op, Op::Publish { .. }) {
                groups.pop();
                groups.extend(last.map(|i| i..i + 1));
            }
        }
    }
    /// Whether `job` may join a run that started with `first`.
    fn joins(first: &Op, job: &Op) -> bool {
        match (first, job) {
            (Op::Publish { channel: a, .. }, Op::Publish { channel: b, .. }) => a == b,
            (Op::Enqueue { key: a, .. }, Op::Enqueue { key: b, .. }) => a == b,
            _ => false,
        }
    }
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, job) in jobs.iter().enumerate() {
        let size = match &job.op {
            Op::Publish { envelope, .. } | Op::Enqueue { envelope, .. } => envelope.len(),
            Op::Script { .. } => 0,
        };
        if let Some(last) = groups.last_mut() {
            if joins(&jobs[last.start].op, &job.op)
                && last.len() < group_max(&job.op)
                && bytes + size <= GROUP_MAX_BYTES
            {
                last.end = i + 1;
                bytes += size;
                continue;
            }
        }
        short(jobs, &mut groups);
        bytes = size;
        groups.push(i..i + 1);
    }
    short(jobs, &mut groups);
    groups
}

/// Whether the command of a group is a script call (EVALSHA): a script's, an enqueue, or
/// PUBLISH_MANY.
fn is_script(group: &[Job]) -> bool {
    group.len() > 1 || !matches!(group[0].op, Op::Publish { .. })
}

/// The arguments of [`scripts::ENQUEUE`] for a run of enqueues to one queue.
fn enqueue_args(inner: &Inner, jobs: &[Job], marker: Option<&str>) -> Vec<Value> {
    let mut args = Vec::with_capacity(jobs.len() + 3);
    args.push(Value::Integer(inner.config.queues.max_length.try_into().unwrap_or(i64::MAX)));
    for job in jobs {
        if let Op::Enqueue { channel, envelope, .. } = &job.op {
            if args.len() == 1 {
                args.push(Value::from(&**channel));
                args.push(Value::from(marker.unwrap_or("")));
            }
            args.push(Value::Bytes(envelope.clone()));
        }
    }
    args
}

/// The keys of [`scripts::PUBLISH_MANY`]: on Redis Cluster its channel, so that the call goes to
/// the channel's slot like a single SPUBLISH of it would, and one publisher's messages on one
/// channel all leave from one shard, in order.
fn publish_many_keys(sharded: bool, channel: &str) -> Vec<&str> {
    if sharded {
        vec![channel]
    } else {
        Vec::new()
    }
}

/// The arguments of [`scripts::PUBLISH_MANY`] for a run of PUBLISHes on one channel.
fn publish_many_args(jobs: &[Job]) -> Vec<Value> {
    let mut args = Vec::with_capacity(jobs.len() + 1);
    for job in jobs {
        if let Op::Publish { channel, envelope } = &job.op {
            if args.is_empty() {
                args.push(Value::from(channel.as_str()));
            }
            args.push(Value::Bytes(envelope.clone()));
        }
    }
    args
}

/// Answers every job of one command with its reply.
fn answer_all(inner: &Inner, jobs: Vec<Job>, result: Result<Value, RedisError>) {
    if let (Some(first), Ok(reply)) = (jobs.first(), &result) {
        if matches!(first.op, Op::Enqueue { .. }) {
            // One reply for the run: counted once, and every enqueue of it stored.
            let outcome = match enqueued(reply) {
                Some((dropped, created)) => {
                    if dropped > 0 {
                        inner.metrics.dropped(DropReason::QueueFull, dropped);
                    }
                    if created {
                        inner.created(&first.destination);
                    } else {
                        super::losses::found(inner, &first.destination);
                    }
                    Ok(None)
                }
                None => Err(EngineError::Unavailable(format!("unexpected reply to enqueue: {reply:?}"))),
            };
            for job in jobs {
                answer(inner, job, outcome.clone());
            }
            return;
        }
    }
    for job in jobs {
        let result = outcome(&job.op, result.clone());
        answer(inner, job, result);
    }
}

/// What a reply means for the publisher.
fn outcome(op: &Op, result: Result<Value, RedisError>) -> Result<Option<u64>, EngineError> {
    let reply = result.map_err(unavailable)?;
    match op {
        // A run of enqueues that succeeded is answered by `answer_all`.
        Op::Publish { .. } | Op::Enqueue { .. } => Ok(None),
        Op::Script { reply: kind, script, .. } => {
            let unexpected = |reply: &Value| {
                EngineError::Unavailable(format!("unexpected reply to {}: {reply:?}", script.name))
            };
            match kind {
                ScriptReply::Offset => Ok(Some(reply.as_u64().ok_or_else(|| unexpected(&reply))?)),
            }
        }
    }
}

/// The reply of [`scripts::ENQUEUE`]: (entries dropped, whether it created the stream).
pub(super) fn enqueued(reply: &Value) -> Option<(u64, bool)> {
    match reply {
        Value::Array(items) => Some((items.first()?.as_u64()?, items.get(1)?.as_u64()? == 1)),
        _ => None,
    }
}

/// Tells the publisher; a failure nobody waits for is logged here. Every failure is counted.
fn answer(inner: &Inner, job: Job, result: Result<Option<u64>, EngineError>) {
    if let Err(error) = &result {
        inner.metrics.dropped(DropReason::PublishFailed, 1);
        if job.reply.is_closed() {
            tracing::warn!(destination = %job.destination, %error, "publish failed");
        }
    }
    let _ = job.reply.send(result);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(channel: &str) -> Job {
        let op = Op::Publish { channel: channel.to_owned(), envelope: Bytes::from_static(b"e") };
        Job { destination: Arc::from(channel), op, reply: oneshot::channel().0 }
    }

    fn script() -> Job {
        let op = Op::Script {
            script: &scripts::HISTORY_PUBLISH,
            keys: Vec::new(),
            args: Vec::new(),
            reply: ScriptReply::Offset,
        };
        Job { destination: Arc::from("h"), op, reply: oneshot::channel().0 }
    }

    fn enqueue(queue: &str) -> Job {
        let op = Op::Enqueue {
            key: Arc::from(queue),
            channel: Arc::from(queue),
            envelope: Bytes::from_static(b"e"),
        };
        Job { destination: Arc::from(queue), op, reply: oneshot::channel().0 }
    }

    #[test]
    fn runs_of_enqueues_to_one_queue_are_grouped_up_to_their_bound() {
        let mut jobs: Vec<Job> = (0..300).map(|_| enqueue("q")).collect(); // 256, then 44
        jobs.push(publish("q")); // not an enqueue: a run of its own
        jobs.extend((0..2).map(|_| enqueue("r")));
        jobs.push(enqueue("q"));
        let lengths: Vec<usize> = groups(&jobs).iter().map(|g| g.len()).collect();
        assert_eq!(lengths, vec![ENQUEUE_MAX, 44, 1, 2, 1]);
    }

    #[test]
    fn runs_on_one_channel_are_grouped_between_the_bounds() {
        let mut jobs: Vec<Job> = (0..3).map(|_| publish("a")).collect(); // too short: 3 PUBLISHes
        jobs.extend((0..10).map(|_| publish("b"))); // one script call
        jobs.push(script());
        jobs.extend((0..70).map(|_| publish("b"))); // 64, then 6 PUBLISHes
        let lengths: Vec<usize> = groups(&jobs).iter().map(|g| g.len()).collect();
        let mut expected = vec![1, 1, 1, 10, 1, GROUP_MAX];
        expected.extend([1; 6]);
        assert_eq!(lengths, expected);
        let covered: usize = lengths.iter().sum();
        assert_eq!(covered, jobs.len(), "every job once, in order");
    }
}
