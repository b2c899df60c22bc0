//! The multi-node scenarios on the Redis deployments past one server, started for real from
//! Debian's binaries by the test kit: a Redis Cluster of 3 masters and 3 replicas
//! (`cluster-node-timeout 2000`), and Sentinel with 1 master, 1 replica and 3 Sentinels (quorum
//! 2, `down-after-milliseconds 1000`). Three `stampede` nodes on each.
//!
//! One test per deployment runs the scenarios in sequence on one start of it (starting a
//! deployment costs seconds; CI's time is counted): (a) per-publisher order across 20 topics,
//! (b) queue exactly-once across competing consumers, (c) history resume on another node, (d)
//! user destinations across nodes, then (they change the deployment) (e) kill -9 of the
//! master serving a queue under receipted traffic, and on the Cluster (f) one shard stuck
//! (SIGSTOP) and (g) one shard killed (kill -9), each while the others carry on. Each scenario runs in a task of its own, so
//! one that fails (its panic printed as it happens) does not hide the others' results; the test
//! fails at the end naming every scenario that failed, and prints every process's log.
//! `README.md` says what each scenario proves; the failover figures are printed (`--nocapture`).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stampede::stomp::{Command, Frame};
use stampede_testkit::client::{ack_frame, header, send_frame, show};
use stampede_testkit::cluster::RECLAIM_AFTER;
use stampede_testkit::http::{self, metric};
use stampede_testkit::{
    eventually, holds_within, Client, ClientError, Cluster, Endpoint, RedisCluster, RedisDeployment,
    RedisSentinel, Transport,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

mod common;
use common::*;

/// Scenario (a): topics, and messages per topic.
const TOPICS: usize = 20;
const PER_TOPIC: u64 = 500;

/// Scenario (e): every node's `/readyz` answers 200 again within this time of a master's kill.
const READY_AGAIN: Duration = Duration::from_secs(15);
/// Scenario (e): how long a receipted SEND may wait for its RECEIPT across the failover.
const RECEIPT_PATIENCE: Duration = Duration::from_secs(30);
/// Scenario (e): the queue, and the key that names its slot (every key of a destination shares
/// its hash tag: docs/cluster.md).
const FAILOVER_QUEUE: &str = "/queue/failover";
const FAILOVER_KEY: &str = "{/queue/failover}";

// === The tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_on_redis_cluster() {
    let started = Instant::now();
    let topology = Topology::Cluster(RedisCluster::start(3, 1).await);
    eprintln!("Redis Cluster of 3 masters and 3 replicas started in {:?}", started.elapsed());
    run_scenarios(topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_on_redis_sentinel() {
    let started = Instant::now();
    let topology = Topology::Sentinel(RedisSentinel::start().await);
    eprintln!("Sentinel deployment (1 master, 1 replica, 3 Sentinels) started in {:?}", started.elapsed());
    run_scenarios(topology).await;
}

/// Three nodes on `topology`, then every scenario in turn; fails at the end if any failed.
async fn run_scenarios(topology: Topology) {
    let topology = Arc::new(topology);
    // Declared after the topology, so dropped before it: the nodes go before Redis does.
    let cluster = Arc::new(Cluster::start(3, topology.as_ref(), &["--history", HISTORY]).await);
    let name = topology.name();
    let mut failed = Vec::new();
    scenario(
        &mut failed,
        name,
        "a. per-publisher order across 20 topics",
        order_across_topics(cluster.clone()),
    )
    .await;
    scenario(&mut failed, name, "b. queue exactly-once", queue_exactly_once(cluster.clone())).await;
    scenario(&mut failed, name, "c. history resume on another node", history_resume(cluster.clone())).await;
    scenario(&mut failed, name, "d. user destinations across nodes", user_destinations(cluster.clone()))
        .await;
    scenario(
        &mut failed,
        name,
        "e. kill -9 of the queue's master under receipted traffic",
        master_killed_under_receipted_traffic(cluster.clone(), topology.clone()),
    )
    .await;
    if matches!(topology.as_ref(), Topology::Cluster(_)) {
        let (f, g) = (one_shard_down(cluster.clone(), topology.clone(), Down::Stopped), {
            one_shard_down(cluster.clone(), topology.clone(), Down::Killed)
        });
        scenario(&mut failed, name, "f. one shard stopped (SIGSTOP)", f).await;
        scenario(&mut failed, name, "g. one shard killed (kill -9)", g).await;
    }
    assert!(failed.is_empty(), "on {name}, these scenarios failed (their panics are above): {failed:?}");
}

/// Runs one scenario in a task of its own; a panic is reported (the task prints it) and noted
/// in `failed`.
async fn scenario(
    failed: &mut Vec<&'static str>,
    on: &str,
    name: &'static str,
    run: impl Future<Output = ()> + Send + 'static,
) {
    let started = Instant::now();
    match tokio::spawn(run).await {
        Ok(()) => eprintln!("{on}: {name}: passed in {:?}", started.elapsed()),
        Err(e) => {
            eprintln!("{on}: {name}: FAILED after {:?}: {e}", started.elapsed());
            failed.push(name);
        }
    }
}

// === The deployments ===

enum Topology {
    Cluster(RedisCluster),
    Sentinel(RedisSentinel),
}

impl Topology {
    fn name(&self) -> &'static str {
        match self {
            Topology::Cluster(_) => "Redis Cluster",
            Topology::Sentinel(_) => "Sentinel",
        }
    }

    /// Kills (SIGKILL) the master serving `key`: on a Cluster the owner of its slot, on
    /// Sentinel the master. Returns its port.
    async fn kill_master_of(&self, key: &str) -> u16 {
        match self {
            Topology::Cluster(cluster) => {
                let port = cluster.master_for_key(key).await;
                cluster.kill(port);
                port
            }
            Topology::Sentinel(sentinel) => sentinel.kill_master().await,
        }
    }

    /// Waits until Redis has failed over from the killed master on `port`; returns how long
    /// that took from this call.
    async fn wait_failover(&self, port: u16) -> Duration {
        match self {
            Topology::Cluster(cluster) => cluster.wait_failover(port).await,
            Topology::Sentinel(sentinel) => sentinel.wait_new_master(port).await.1,
        }
    }
}

impl RedisDeployment for Topology {
    fn url(&self) -> String {
        match self {
            Topology::Cluster(cluster) => cluster.url(),
            Topology::Sentinel(sentinel) => sentinel.url(),
        }
    }
}

// === Helpers ===

/// What a consumer task saw: every delivery's seq, and each error that ended one of its
/// sessions.
#[derive(Default)]
struct Consumed {
    seqs: Vec<u64>,
    /// The deliveries that carried `redelivered:true`.
    redelivered: Vec<u64>,
    errors: Vec<String>,
}

/// Sessions a consumer or producer opens at most: after an error it opens a new one on the same
/// node, [`REOPEN_AFTER`] later (the error is recorded and fails the scenario; going on measures
/// what else went wrong, losses and duplicates).
const SESSIONS: usize = 100;
const REOPEN_AFTER: Duration = Duration::from_millis(200);

/// What ended a session, in short: an ERROR frame's `message`, else the client's error.
fn why(e: &ClientError) -> String {
    e.error_message().map(str::to_owned).unwrap_or_else(|| e.to_string())
}

/// `errors` counted by text, for a report that stays readable when a session ends many times.
fn summarize(errors: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for e in errors {
        *counts.entry(e.as_str()).or_insert(0) += 1;
    }
    counts
}

/// A queue consumer on `endpoint` (`client-individual`, `prefetch-count:10`): acknowledges each
/// message and records it in `consumed`, until `stop` is set and nothing came for [`QUIET`].
/// An error that ends its session is recorded, and it subscribes again on a new one.
fn spawn_consumer(
    endpoint: Endpoint,
    queue: &'static str,
    consumed: Arc<Mutex<Consumed>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        for _ in 0..SESSIONS {
            let subscribed = async {
                let mut client = Client::connect_to(&endpoint, None).await?;
                let headers = [("ack", "client-individual"), ("prefetch-count", "10")];
                client.try_subscribe(queue, "c", &headers).await?;
                Ok::<Client, ClientError>(client)
            };
            let mut client = match subscribed.await {
                Ok(client) => client,
                Err(e) => {
                    consumed.lock().unwrap().errors.push(format!("connect and SUBSCRIBE: {}", why(&e)));
                    tokio::time::sleep(REOPEN_AFTER).await;
                    continue;
                }
            };
            loop {
                match client.try_recv_message(QUIET).await {
                    Ok(frame) => {
                        {
                            let mut held = consumed.lock().unwrap();
                            held.seqs.push(seq(&frame));
                            if frame.get("redelivered") == Some("true") {
                                held.redelivered.push(seq(&frame));
                            }
                        }
                        if let Err(e) = client.send_frame(&ack_frame(&frame)).await {
                            consumed.lock().unwrap().errors.push(format!("ACK: {}", why(&e)));
                            break;
                        }
                    }
                    Err(e) if e.is_timeout() => {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                    }
                    Err(e) => {
                        consumed.lock().unwrap().errors.push(why(&e));
                        break;
                    }
                }
            }
            tokio::time::sleep(REOPEN_AFTER).await;
        }
    })
}

/// Aborts a task when dropped: a scenario that fails leaves nothing running (a task holding the
/// nodes would keep them alive past the test).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn guard<T>(task: &JoinHandle<T>) -> AbortOnDrop {
    AbortOnDrop(task.abort_handle())
}

// === (a) per-publisher order across 20 topics ===

/// One publisher on node-0 sends [`PER_TOPIC`] messages to each of [`TOPICS`] topics, in
/// bursts of 1 to 20 per topic, topic after topic; subscribers on node-1
/// (WebSocket) and node-2 (TCP) subscribed to all of them get every message of each topic
/// exactly once, in the publisher's order.
async fn order_across_topics(cluster: Arc<Cluster>) {
    let topics: Vec<String> = (0..TOPICS).map(|t| format!("/topic/order.{t}")).collect();
    let expected = TOPICS * PER_TOPIC as usize;
    let mut readers = Vec::new();
    for (node, transport) in [(1, Transport::Ws), (2, Transport::Tcp)] {
        let mut client = connect(cluster.node(node), transport, None).await;
        for (t, topic) in topics.iter().enumerate() {
            client.try_subscribe(topic, &format!("t{t}"), &[]).await.expect("SUBSCRIBE");
        }
        let who = format!("subscriber on node-{node} over {transport:?}");
        // Reading while the publisher sends: a reader that waited would be a slow consumer.
        readers.push(tokio::spawn(async move {
            let mut got: Vec<(String, u64)> = Vec::with_capacity(expected);
            let mut ended = None;
            while got.len() < expected {
                match client.try_recv_message(RECV).await {
                    Ok(frame) => got.push((header(&frame, "destination").to_owned(), seq(&frame))),
                    Err(e) => {
                        ended = Some(e.to_string());
                        break;
                    }
                }
            }
            if ended.is_none() {
                if let Err(e) = client.try_quiet(QUIET).await {
                    ended = Some(format!("more than {expected} messages: {e}"));
                }
            }
            (who, got, ended)
        }));
    }
    let mut publisher = connect(cluster.node(0), Transport::Tcp, None).await;
    // Bursts of 1 to 20 messages to one topic, topic after topic: the node sends a burst as
    // plain PUBLISHes or, from 8 on, as one publish-many script call, so one topic's messages
    // go both ways.
    let mut sent = [0u64; TOPICS];
    let mut round = 0u64;
    while sent.iter().any(|n| *n < PER_TOPIC) {
        for (t, topic) in topics.iter().enumerate() {
            let burst = 1 + (round * 7 + t as u64 * 3) % 20;
            for _ in 0..burst.min(PER_TOPIC - sent[t]) {
                let text = sent[t].to_string();
                publisher
                    .try_send(topic, "ordered", &[("seq", &text)])
                    .await
                    .unwrap_or_else(|e| panic!("SEND seq {text} to {topic}: {e}"));
                sent[t] += 1;
            }
        }
        round += 1;
    }
    // A session handles frames in order: this receipt (on a topic nobody reads) covers every
    // SEND before it.
    publisher.try_publish("/topic/order.done", "done", &[]).await.expect("a receipt after the SENDs");
    let mut faults = Vec::new();
    for reader in readers {
        let (who, got, ended) = reader.await.expect("reader task");
        let mut per_topic: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (destination, n) in &got {
            per_topic.entry(destination.as_str()).or_default().push(*n);
        }
        let (mut out_of_order, mut missing, mut duplicated) = (0, 0, 0);
        for topic in &topics {
            let seqs = per_topic.get(topic.as_str()).map(Vec::as_slice).unwrap_or_default();
            out_of_order += seqs.windows(2).filter(|w| w[1] < w[0]).count();
            let counts = tally(seqs.iter().copied());
            missing += (0..PER_TOPIC).filter(|n| !counts.contains_key(n)).count();
            duplicated += counts.values().filter(|c| **c > 1).count();
        }
        eprintln!(
            "{who}: {} of {expected} deliveries; {out_of_order} out of order, {missing} missing, \
             {duplicated} duplicated; ended: {ended:?}",
            got.len()
        );
        if out_of_order + missing + duplicated > 0 || ended.is_some() {
            faults.push(format!(
                "{who}: {out_of_order} deliveries out of order, {missing} missing, {duplicated} duplicated \
                 (of {expected}); ended: {ended:?}"
            ));
        }
    }
    assert!(faults.is_empty(), "per-publisher order across {TOPICS} topics: {faults:?}");
}

// === (b) queue exactly-once ===

/// Competing consumers on all three nodes (`client-individual`, `prefetch-count:10`): each of
/// 300 messages sent on node-0 is delivered exactly once across them, and no session ends.
async fn queue_exactly_once(cluster: Arc<Cluster>) {
    const COUNT: u64 = 300;
    let queue = "/queue/work";
    let stop = Arc::new(AtomicBool::new(false));
    let (mut consumers, mut tasks, mut guards) = (Vec::new(), Vec::new(), Vec::new());
    for (node, transport) in [(0, Transport::Ws), (1, Transport::Tcp), (2, Transport::Ws)] {
        let consumed = Arc::new(Mutex::new(Consumed::default()));
        let task =
            spawn_consumer(cluster.node(node).endpoint(transport), queue, consumed.clone(), stop.clone());
        guards.push(guard(&task));
        tasks.push(task);
        consumers.push((format!("consumer on node-{node} over {transport:?}"), consumed));
    }
    let mut producer = connect(cluster.node(0), Transport::Tcp, None).await;
    publish(&mut producer, queue, 0..COUNT).await;
    let delivered = || consumers.iter().map(|(_, c)| c.lock().unwrap().seqs.len()).sum::<usize>();
    eventually(SPREAD, format!("{COUNT} queue messages delivered"), || async {
        delivered() >= COUNT as usize
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("consumer task");
    }
    let mut all = Vec::new();
    for (who, consumed) in consumers {
        let consumed = consumed.lock().unwrap();
        assert!(consumed.errors.is_empty(), "{who}: sessions ended: {:?}", summarize(&consumed.errors));
        eprintln!("{who}: {} messages", consumed.seqs.len());
        all.extend(consumed.seqs.iter().copied());
    }
    let counts = tally(all);
    let missing: Vec<u64> = (0..COUNT).filter(|n| !counts.contains_key(n)).collect();
    let duplicated: Vec<(&u64, &usize)> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        missing.is_empty() && duplicated.is_empty(),
        "queue deliveries: missing {missing:?}, duplicated (seq, times) {duplicated:?}"
    );
}

// === (c) history resume ===

/// A reader on node-0 of a history topic leaves after 30 messages; 30 more are published; it
/// resubscribes on node-1 with `x-since:<last offset seen>`: `x-recovered:true`, exactly the 30
/// missed ones, then live messages, offsets increasing throughout.
async fn history_resume(cluster: Arc<Cluster>) {
    let topic = "/topic/hist.resume";
    let mut publisher = connect(cluster.node(2), Transport::Tcp, None).await;
    let mut reader = connect(cluster.node(0), Transport::Ws, None).await;
    reader.try_subscribe(topic, "h", &[]).await.expect("SUBSCRIBE");
    publish(&mut publisher, topic, 0..30).await;
    let first = expect_in_order(&mut reader, "reader on node-0", 0..30).await;
    let last = offset(first.last().expect("30 frames"));
    reader.try_disconnect().await.expect("DISCONNECT");

    publish(&mut publisher, topic, 30..60).await;
    let mut reader = connect(cluster.node(1), Transport::Tcp, None).await;
    let receipt =
        reader.try_subscribe(topic, "h", &[("x-since", &last.to_string())]).await.expect("SUBSCRIBE");
    assert_eq!(receipt.get("x-recovered"), Some("true"), "{}", show(&receipt));
    let missed = expect_in_order(&mut reader, "reader resumed on node-1", 30..60).await;
    publish(&mut publisher, topic, 60..80).await;
    let live = expect_in_order(&mut reader, "reader resumed on node-1, live", 60..80).await;
    let mut previous = last;
    for frame in missed.iter().chain(&live) {
        let now = offset(frame);
        assert!(now > previous, "x-offset {now} after {previous}: {}", show(frame));
        previous = now;
    }
    reader.try_quiet(QUIET).await.expect("resumed reader: nothing more");
}

// === (d) user destinations ===

/// A SEND to `/user/ann/queue/inbox` on node-0 reaches both of ann's sessions (on node-1 and
/// node-2, subscribed to `/user/queue/inbox`), in order; bob's sessions get only bob's.
async fn user_destinations(cluster: Arc<Cluster>) {
    user_destinations_reach_their_users(&cluster).await;
}

// === (e) kill -9 of the queue's master under receipted traffic ===

/// What the producer of (e) saw.
#[derive(Default)]
struct Produced {
    /// Seqs whose RECEIPT arrived, and when.
    confirmed: Vec<(u64, Instant)>,
    /// Seqs sent whose RECEIPT did not arrive (within [`RECEIPT_PATIENCE`], or an ERROR came).
    unconfirmed: Vec<u64>,
    /// Each error that ended one of its sessions.
    errors: Vec<String>,
}

/// A producer on `endpoint`: receipted SENDs to [`FAILOVER_QUEUE`], one at a time, until
/// `stop`. An error that ends its session is recorded, and it goes on on a new one.
fn spawn_producer(
    endpoint: Endpoint,
    produced: Arc<Mutex<Produced>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut next = 0u64;
        for _ in 0..SESSIONS {
            let mut client = match Client::connect_to(&endpoint, None).await {
                Ok(client) => client,
                Err(e) => {
                    produced.lock().unwrap().errors.push(format!("connect: {}", why(&e)));
                    tokio::time::sleep(REOPEN_AFTER).await;
                    continue;
                }
            };
            while !stop.load(Ordering::SeqCst) {
                let frame = send_frame(FAILOVER_QUEUE, "work", &[("seq", &next.to_string())]);
                let outcome = match client.try_send_with_receipt(frame).await {
                    Ok(id) => client.try_await_receipt(&id, RECEIPT_PATIENCE).await.map(drop),
                    Err(e) => Err(e),
                };
                next += 1;
                match outcome {
                    Ok(()) => produced.lock().unwrap().confirmed.push((next - 1, Instant::now())),
                    Err(e) => {
                        let mut produced = produced.lock().unwrap();
                        produced.unconfirmed.push(next - 1);
                        if !e.is_timeout() {
                            produced.errors.push(format!("SEND: {}", why(&e)));
                            break;
                        }
                    }
                }
                // Steady traffic, not a flood.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if stop.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(REOPEN_AFTER).await;
        }
    })
}

/// A producer on node-1 sends receipted SENDs to [`FAILOVER_QUEUE`], one at a time, and
/// consumers on all three nodes acknowledge (`client-individual`). Once 100 are confirmed, the
/// master serving the queue's slot gets kill -9. After Redis fails over: every node's
/// `/readyz` is 200 again within [`READY_AGAIN`] of the kill, traffic goes on, each message
/// whose RECEIPT arrived is delivered exactly once, none is delivered twice (but for
/// redeliveries marked `redelivered:true`), and no session got an ERROR, not even the
/// producer's whose SEND was in flight at the kill. Prints the measured times, and judges
/// everything before failing.
async fn master_killed_under_receipted_traffic(cluster: Arc<Cluster>, topology: Arc<Topology>) {
    let name = topology.name();
    let stop_producer = Arc::new(AtomicBool::new(false));
    let stop_consumers = Arc::new(AtomicBool::new(false));
    let (mut consumers, mut tasks, mut guards) = (Vec::new(), Vec::new(), Vec::new());
    for (node, transport) in [(0, Transport::Tcp), (1, Transport::Ws), (2, Transport::Tcp)] {
        let consumed = Arc::new(Mutex::new(Consumed::default()));
        let endpoint = cluster.node(node).endpoint(transport);
        let task = spawn_consumer(endpoint, FAILOVER_QUEUE, consumed.clone(), stop_consumers.clone());
        guards.push(guard(&task));
        tasks.push(task);
        consumers.push((format!("consumer on node-{node} over {transport:?}"), consumed));
    }
    let produced = Arc::new(Mutex::new(Produced::default()));
    let producer =
        spawn_producer(cluster.node(1).endpoint(Transport::Tcp), produced.clone(), stop_producer.clone());
    guards.push(guard(&producer));
    let confirmed = || produced.lock().unwrap().confirmed.len();
    eventually(SPREAD, "100 messages confirmed before the kill", || async { confirmed() >= 100 }).await;

    // Watches readiness from the kill on: when a node was last seen not ready, and how.
    let stop_watch = Arc::new(AtomicBool::new(false));
    let killed_at = Instant::now();
    let watcher = {
        let (cluster, stop) = (cluster.clone(), stop_watch.clone());
        tokio::spawn(async move {
            let mut last_unready: Option<(Duration, Vec<Option<u16>>)> = None;
            while !stop.load(Ordering::SeqCst) && killed_at.elapsed() < SPREAD * 2 {
                let statuses = readyz_everywhere(&cluster).await;
                if statuses.iter().any(|s| *s != Some(200)) {
                    last_unready = Some((killed_at.elapsed(), statuses));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            last_unready
        })
    };
    guards.push(guard(&watcher));
    let port = topology.kill_master_of(FAILOVER_KEY).await;
    let failover = topology.wait_failover(port).await;
    let mut faults = Vec::new();
    let all_ready = holds_within(READY_AGAIN.saturating_sub(killed_at.elapsed()), || async {
        readyz_everywhere(&cluster).await == vec![Some(200); 3]
    })
    .await;
    let ready_again = killed_at.elapsed();
    if !all_ready {
        let now = readyz_everywhere(&cluster).await;
        faults.push(format!("/readyz not 200 on every node {READY_AGAIN:?} after the kill: {now:?}"));
    }
    let before = confirmed();
    let resumed = holds_within(SPREAD, || async { confirmed() >= before + 50 }).await;
    if !resumed {
        faults.push(format!("fewer than 50 messages confirmed in the {SPREAD:?} after the failover"));
    }
    stop_watch.store(true, Ordering::SeqCst);
    let last_unready = watcher.await.expect("readiness watcher");
    stop_producer.store(true, Ordering::SeqCst);
    producer.await.expect("producer task");

    let produced = std::mem::take(&mut *produced.lock().unwrap());
    let confirmed: BTreeSet<u64> = produced.confirmed.iter().map(|(n, _)| *n).collect();
    let seen =
        || -> Vec<u64> { consumers.iter().flat_map(|(_, c)| c.lock().unwrap().seqs.clone()).collect() };
    let unseen = || -> Vec<u64> {
        let seen: BTreeSet<u64> = seen().into_iter().collect();
        confirmed.difference(&seen).copied().collect()
    };
    holds_within(SPREAD + RECLAIM_AFTER, || async { unseen().is_empty() }).await;
    // A redelivery of a message already delivered would come after the reclaim time.
    tokio::time::sleep(RECLAIM_AFTER + QUIET).await;
    stop_consumers.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("consumer task");
    }
    let mut errors = Vec::new();
    for (who, consumed) in &consumers {
        errors.extend(consumed.lock().unwrap().errors.iter().map(|e| format!("{who}: {e}")));
    }
    errors.extend(produced.errors.iter().map(|e| format!("producer on node-1: {e}")));
    let counts = tally(seen());
    let lost = unseen();
    // A delivery again of a message whose ACK the killed master took with it (Redis replicates
    // asynchronously) is at-least-once, and says so with `redelivered:true`; any other second
    // delivery is a duplicate.
    let redelivered: BTreeSet<u64> =
        consumers.iter().flat_map(|(_, c)| c.lock().unwrap().redelivered.clone()).collect();
    type Repeats<'a> = Vec<(&'a u64, &'a usize)>;
    let (redeliveries, duplicated): (Repeats, Repeats) =
        counts.iter().filter(|(_, c)| **c > 1).partition(|(seq, _)| redelivered.contains(seq));
    let times: Vec<Instant> = produced.confirmed.iter().map(|(_, at)| *at).collect();
    let longest_gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    eprintln!(
        "{name}: kill -9 of the master on port {port}: Redis failed over in {failover:?}; every node \
         ready again {ready_again:?} after the kill (last seen not ready: {last_unready:?}); longest \
         wait between two receipts {longest_gap:?}; {} confirmed, unconfirmed {:?}, {} deliveries, \
         {} lost, {} duplicated, {} delivered again with redelivered:true; sessions ended (why: \
         how often): {:?}",
        confirmed.len(),
        produced.unconfirmed,
        counts.values().sum::<usize>(),
        lost.len(),
        duplicated.len(),
        redeliveries.len(),
        summarize(&errors),
    );
    // No session ends, the producer's included: the SEND whose write was on its way to the
    // master when it died is sent again by the node once Redis answers, and stored once
    // (docs/cluster.md, failovers).
    if !errors.is_empty() {
        faults.push(format!("{} sessions ended (why: how often): {:?}", errors.len(), summarize(&errors)));
    }
    if !lost.is_empty() {
        faults.push(format!("confirmed messages never delivered: {lost:?}"));
    }
    if !duplicated.is_empty() {
        faults.push(format!("delivered more than once (seq, times): {duplicated:?}"));
    }
    if let Some((at, statuses)) = &last_unready {
        if *at > READY_AGAIN {
            faults.push(format!("a node was not ready {at:?} after the kill: {statuses:?}"));
        }
    }
    drop(guards);
    assert!(faults.is_empty(), "{name}: after kill -9 of the queue's master: {faults:?}");
}

// === (f) one shard stuck ===

/// Scenario (f): how long the stuck shard's master stays stopped.
const STALL: Duration = Duration::from_secs(10);
/// Scenario (f): a RECEIPT for a SEND to a healthy shard's topic comes within this, stall or not.
const HEALTHY_RECEIPT: Duration = Duration::from_secs(3);
/// Scenario (f): messages each node's publisher sends to each healthy topic during the stall.
const PER_HEALTHY_TOPIC: u64 = 20;

/// How scenarios (f) and (g) take a shard's master down.
#[derive(Clone, Copy, Debug)]
enum Down {
    /// (f) SIGSTOP: the master's connections stay open and nothing answers on them.
    Stopped,
    /// (g) kill -9: its connections are reset and new ones refused.
    Killed,
}

/// Scenarios (f) and (g), Redis Cluster only, run last: one shard's master down (stopped with
/// SIGSTOP, or killed with kill -9) for [`STALL`], its replica told not to take over, and
/// `cluster-require-full-coverage no`, so the other shards go on serving their slots
/// (docs/cluster.md, "Partial failures"). Throughout, every node stays ready; receipted SENDs
/// from every node to topics on the healthy shards are confirmed within [`HEALTHY_RECEIPT`] and
/// delivered, in order, to a subscriber on every node; a new SUBSCRIBE to one of them is
/// confirmed too. Once the master is continued (or started again), its shard's topic carries
/// messages again to the subscribers that were on it all along.
async fn one_shard_down(cluster: Arc<Cluster>, topology: Arc<Topology>, down: Down) {
    let Topology::Cluster(redis) = topology.as_ref() else {
        unreachable!("scenarios (f) and (g) run on a Redis Cluster")
    };
    for node in redis.nodes().iter().filter(|n| n.is_running()) {
        node.cli(&["CONFIG", "SET", "cluster-require-full-coverage", "no"]).await;
    }
    // Topics by the master that serves them, and a master that has a replica to stop with it.
    let mut by_master: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for i in 0..40 {
        let topic = format!("/topic/partial.{i}");
        by_master.entry(redis.master_for_key(&format!("{{{topic}}}")).await).or_default().push(topic);
    }
    let mut stuck = None;
    for port in by_master.keys() {
        if let Some(replica) = replica_of(redis, *port).await {
            stuck = Some((*port, replica));
            break;
        }
    }
    let (stuck, replica) = stuck.expect("a master with a replica");
    redis.cli(replica, &["CONFIG", "SET", "cluster-replica-no-failover", "yes"]).await;
    let stuck_topic = by_master[&stuck][0].clone();
    let healthy: Vec<String> = by_master
        .iter()
        .filter(|(port, _)| **port != stuck)
        .flat_map(|(_, t)| t.iter().take(2).cloned())
        .collect();
    assert!(healthy.len() >= 2, "topics on at least two healthy shards: {by_master:?}");

    let mut subscribers = Vec::new();
    for (node, transport) in [(0, Transport::Ws), (1, Transport::Tcp), (2, Transport::Ws)] {
        let mut client = connect(cluster.node(node), transport, None).await;
        for (i, topic) in healthy.iter().chain([&stuck_topic]).enumerate() {
            client.try_subscribe(topic, &format!("s{i}"), &[]).await.expect("SUBSCRIBE");
        }
        subscribers.push((format!("subscriber on node-{node} over {transport:?}"), client));
    }
    let mut publishers = Vec::new();
    for node in 0..3 {
        publishers.push(connect(cluster.node(node), Transport::Tcp, None).await);
    }

    // Watches readiness for the stall's whole length.
    let stopped_at = Instant::now();
    let watcher = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let mut unready = Vec::new();
            while stopped_at.elapsed() < STALL {
                let statuses = readyz_everywhere(&cluster).await;
                if statuses.iter().any(|s| *s != Some(200)) {
                    unready.push((stopped_at.elapsed(), statuses));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            unready
        })
    };
    let _watching = guard(&watcher);
    let _continue = ContinueOnDrop(redis.node(stuck));
    match down {
        Down::Stopped => redis.node(stuck).signal("STOP"),
        Down::Killed => redis.kill(stuck),
    }
    // Past the readiness probe's verdict (two unanswered probes) and the Cluster's node timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut faults = Vec::new();
    let mut slowest = Duration::ZERO;
    for n in 0..PER_HEALTHY_TOPIC {
        for (node, publisher) in publishers.iter_mut().enumerate() {
            for topic in &healthy {
                let text = (node as u64 * 1000 + n).to_string();
                let sent = Instant::now();
                let frame = send_frame(topic, "healthy", &[("seq", &text)]);
                let outcome = match publisher.try_send_with_receipt(frame).await {
                    Ok(id) => publisher.try_await_receipt(&id, HEALTHY_RECEIPT).await.map(drop),
                    Err(e) => Err(e),
                };
                slowest = slowest.max(sent.elapsed());
                if let Err(e) = outcome {
                    panic!("SEND seq {text} to {topic} on node-{node}, its shard healthy: {}", why(&e));
                }
            }
        }
    }
    // The stall is real: the stopped shard's topic takes no SEND, and every node counts one
    // primary down.
    let mut blocked = connect(cluster.node(2), Transport::Tcp, None).await;
    let sent = blocked.try_publish(&stuck_topic, "stuck", &[("seq", "8888")]);
    // Stopped, nothing answers; killed, the SEND is refused (an ERROR) or still waits.
    if let Ok(Ok(receipt)) = tokio::time::timeout(HEALTHY_RECEIPT, sent).await {
        faults.push(format!("a SEND to {stuck_topic}, on the {down:?} shard, was confirmed: {receipt:?}"));
    }
    drop(blocked);
    for node in cluster.nodes() {
        let metrics = http::get(node.admin_addr(), "/metrics").await.expect("/metrics").body;
        let down = metric(&metrics, "stampede_redis_primaries_down");
        if down != Some(1.0) {
            faults.push(format!("{}: stampede_redis_primaries_down {down:?} during the stall", node.id()));
        }
    }
    let mut late = connect(cluster.node(1), Transport::Ws, None).await;
    let subscribed =
        tokio::time::timeout(HEALTHY_RECEIPT, late.try_subscribe(&healthy[0], "late", &[])).await;
    if !matches!(subscribed, Ok(Ok(_))) {
        faults.push(format!("a SUBSCRIBE to {} during the stall: {subscribed:?}", healthy[0]));
    }
    let expected = 3 * healthy.len() * PER_HEALTHY_TOPIC as usize;
    for (who, client) in &mut subscribers {
        let mut per_topic: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for _ in 0..expected {
            match client.try_recv_message(RECV).await {
                Ok(frame) => {
                    per_topic.entry(header(&frame, "destination").to_owned()).or_default().push(seq(&frame))
                }
                Err(e) => {
                    faults.push(format!(
                        "{who}: {} of {expected} during the stall, then {e}",
                        per_topic.values().map(Vec::len).sum::<usize>()
                    ));
                    break;
                }
            }
        }
        for (topic, seqs) in &per_topic {
            for node in 0..3u64 {
                let from: Vec<u64> = seqs.iter().copied().filter(|s| s / 1000 == node).collect();
                if from != (node * 1000..node * 1000 + PER_HEALTHY_TOPIC).collect::<Vec<_>>() {
                    faults.push(format!("{who}: {topic} from node-{node}: {from:?}"));
                }
            }
        }
    }
    let unready = watcher.await.expect("readiness watcher");
    if !unready.is_empty() {
        faults.push(format!("not ready during the stall (at, statuses): {unready:?}"));
    }
    // A receipted SEND to the downed shard's topic, made just before its return, waits for it and
    // is confirmed: stopped, it is on its way; killed, it was never sent, and its node sends it
    // again while the shard is away (docs/cluster.md), for up to 8 s.
    let mut waiting = connect(cluster.node(1), Transport::Tcp, None).await;
    let late = waiting
        .try_send_with_receipt(send_frame(&stuck_topic, "late", &[("seq", "7777")]))
        .await
        .expect("SEND");
    // A DISCONNECT's RECEIPT says that everything the session sent was handled: after SENDs
    // without receipt to the downed shard's topic, then to a healthy one (no subscriber there), it
    // waits for the first
    // (each shard's writes are answered in order, different shards' are not).
    let mut leaving = connect(cluster.node(2), Transport::Ws, None).await;
    leaving.try_send(&stuck_topic, "unreceipted", &[("seq", "6666")]).await.expect("SEND");
    let unwatched = by_master
        .iter()
        .filter(|(port, _)| **port != stuck)
        .find_map(|(_, topics)| topics.get(2).cloned())
        .expect("a third topic on a healthy shard");
    leaving.try_send(&unwatched, "unreceipted", &[("seq", "6667")]).await.expect("SEND");
    let bye = leaving.try_send_with_receipt(Frame::new(Command::Disconnect)).await.expect("DISCONNECT");
    if let Ok(receipt) = leaving.try_await_receipt(&bye, Duration::from_millis(500)).await {
        faults.push(format!(
            "a DISCONNECT's RECEIPT came while a SEND before it waited for the {down:?} shard: {}",
            show(&receipt)
        ));
    }
    match down {
        Down::Stopped => redis.node(stuck).signal("CONT"),
        Down::Killed => redis.node(stuck).restart().await,
    }
    let stalled = stopped_at.elapsed();
    let late_sent = Instant::now();
    let late_outcome = waiting.try_await_receipt(&late, RECEIPT_PATIENCE).await;
    let late_waited = late_sent.elapsed();
    if let Err(e) = late_outcome {
        faults.push(format!("the SEND to {stuck_topic} made just before its return: {}", why(&e)));
    }
    if let Err(e) = leaving.try_await_receipt(&bye, RECEIPT_PATIENCE).await {
        faults.push(format!("the DISCONNECT made before the return: {}", why(&e)));
    }

    // The shard's topic works again, for the subscribers that were on it all along. Stopped, they
    // never left it; killed, each node subscribes again once it has reconnected, so a message
    // confirmed before that reaches only some: publish until each subscriber has had one.
    let back = Instant::now();
    let mut confirmed_after = None;
    let mut publisher = None;
    let mut waiting: Vec<usize> = (0..subscribers.len()).collect();
    while !waiting.is_empty() && back.elapsed() < SPREAD {
        let mut client = match publisher.take() {
            Some(client) => client,
            None => connect(cluster.node(0), Transport::Tcp, None).await,
        };
        let sent = client.try_publish(&stuck_topic, "back", &[("seq", "9999")]);
        if !matches!(tokio::time::timeout(RECV, sent).await, Ok(Ok(_))) {
            // Refused while the shard is away (the session ended), or no RECEIPT yet.
            tokio::time::sleep(REOPEN_AFTER).await;
            continue;
        }
        publisher = Some(client);
        confirmed_after.get_or_insert(back.elapsed());
        let mut still = Vec::new();
        for i in waiting {
            let (who, client) = &mut subscribers[i];
            match client.try_recv_message(REOPEN_AFTER).await {
                Ok(frame) if header(&frame, "destination") == stuck_topic => {}
                Ok(frame) => faults.push(format!("{who}: after the return, {}", show(&frame))),
                Err(ClientError::Timeout { .. }) => still.push(i),
                Err(e) => faults.push(format!("{who}: after the return: {e}")),
            }
        }
        waiting = still;
    }
    eprintln!(
        "Redis Cluster: master on port {stuck} {down:?} for {stalled:?}: {expected} SENDs to {} healthy \
         topics, slowest RECEIPT {slowest:?}; a SEND made before its return confirmed {late_waited:?} after \
         it; its own topic confirmed again {confirmed_after:?} after its return, and delivered on every \
         node {:?} after it",
        healthy.len(),
        back.elapsed()
    );
    if confirmed_after.is_none() {
        faults
            .push(format!("no RECEIPT for a SEND to {stuck_topic} within {SPREAD:?} of the master's return"));
    }
    for i in waiting {
        faults
            .push(format!("{}: nothing on {stuck_topic} within {SPREAD:?} of the return", subscribers[i].0));
    }
    assert!(faults.is_empty(), "one shard {down:?}: {faults:?}");
}

/// The port of the replica of the master on `port`, if it has one.
async fn replica_of(redis: &RedisCluster, port: u16) -> Option<u16> {
    let replication = redis.cli(port, &["INFO", "replication"]).await;
    let line = replication.lines().find(|l| l.starts_with("slave0:"))?;
    line.split(',').find_map(|f| f.strip_prefix("port=")).and_then(|p| p.trim().parse().ok())
}

/// Sends SIGCONT on drop, so a failed scenario leaves no server stopped for the next (a killed
/// one is not running: nothing happens).
struct ContinueOnDrop<'a>(&'a stampede_testkit::Redis);

impl Drop for ContinueOnDrop<'_> {
    fn drop(&mut self) {
        if self.0.is_running() {
            self.0.signal("CONT");
        }
    }
}
