//! The five scenarios. Each one connects its clients (bounded in count and time), runs for a
//! warm-up plus the measured window, drains for at most [`DRAIN`], and returns a [`Report`].
//!
//! - **fanout**: one topic, N subscribers, P publishers. Counts every subscriber's copy.
//! - **topics**: N connections, each subscribed to its own topic and publishing to it.
//! - **queue**: P producers and C consumers of one queue, `ack:client-individual`, every
//!   message ACKed.
//! - **idle**: N connections with one subscription each (each its own topic); reports the
//!   broker's RSS per connection.
//! - **churn**: K workers that connect, subscribe (receipt) and disconnect (receipt) in a loop.
//! - **connect**: N connections, K at a time, each CONNECT, one SUBSCRIBE (receipt) and
//!   DISCONNECT, timing the CONNECT and the SUBSCRIBE alone: what a node's connect and subscribe
//!   hooks add to a client's handshake.
//! - **app-http**: C clients SEND to an application destination that the node hands to an HTTP
//!   backend, each reading the backend's replies on `/user/queue/reply`.
//!
//! With `--app-listen` the run serves the application backend ([`crate::app`]) the node calls.
//!
//! Rate 0 means closed loop: publishers go as fast as the receivers keep up, never more than a
//! window of deliveries ahead (see [`Flow`]). A positive rate is an open loop at that many
//! messages per second in total, with a generous safety window.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::app::{AppCalls, AppServer};
use crate::conn::{self, ConnError, Decoder, Endpoint, Link, Protocol, Session};
use crate::nats;
use crate::report::{Memory, MemoryStep, Params, Report};
use crate::stats::{self, Counters, Flow, Latency, Window};
use crate::stomp::{self, Ack, Command};

/// How long receivers keep reading after the window closes, for messages still in flight.
pub const DRAIN: Duration = Duration::from_secs(2);

/// Messages a publisher writes before one flush, at most.
const BURST: u64 = 64;

/// Messages handled after a wake-up before acknowledgements are flushed, at most.
const READ_BATCH: usize = 128;

/// The idle scenario opens its connections in this many steps, sampling the broker's RSS after
/// each, once its allocations have settled for a moment.
const IDLE_STEPS: usize = 4;
const IDLE_STEP_SETTLE: Duration = Duration::from_millis(500);

/// What every scenario needs.
#[derive(Debug)]
pub struct Common {
    pub endpoint: Arc<Endpoint>,
    pub duration: Duration,
    pub warmup: Duration,
    /// Message body size in bytes (at least the 16-byte timestamp and one byte).
    pub size: usize,
    /// Messages per second in total; 0 = closed loop.
    pub rate: f64,
    /// Flow-control window; `None` = the scenario's default.
    pub window: Option<u64>,
    /// Connections opened at once during setup.
    pub connect_concurrency: usize,
    /// The setup phase stops opening connections after this long.
    pub setup_timeout: Duration,
    /// Destination names start with it, so runs never see each other's messages.
    pub prefix: String,
    /// Broker processes whose RSS and CPU time are sampled.
    pub broker_pids: Vec<u32>,
    pub progress: bool,
    pub label: String,
    pub source_ips: u8,
    /// Serve the application backend here while the scenario runs.
    pub app_listen: Option<std::net::SocketAddr>,
}

#[derive(Clone, Debug)]
pub enum Scenario {
    Fanout { subscribers: usize, publishers: usize },
    Topics { connections: usize },
    Queue { producers: usize, consumers: usize, prefetch: u32 },
    Idle { connections: usize, hold: Duration },
    Churn { concurrency: usize },
    Connect { connections: usize, concurrency: usize },
    AppHttp { clients: usize, destination: String },
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Fanout { .. } => "fanout",
            Scenario::Topics { .. } => "topics",
            Scenario::Queue { .. } => "queue",
            Scenario::Idle { .. } => "idle",
            Scenario::Churn { .. } => "churn",
            Scenario::Connect { .. } => "connect",
            Scenario::AppHttp { .. } => "app-http",
        }
    }

    /// The window when none is given: fan-out, messages ahead of the average subscriber; topics
    /// and app-http, messages in flight per connection; queue, messages in flight in total.
    fn default_window(&self) -> u64 {
        match self {
            Scenario::Fanout { .. } => 128,
            Scenario::Topics { .. } | Scenario::AppHttp { .. } => 4,
            Scenario::Queue { .. } => 1024,
            Scenario::Idle { .. } | Scenario::Churn { .. } | Scenario::Connect { .. } => 0,
        }
    }
}

/// Runs one scenario to its end.
pub async fn run(common: &Common, scenario: &Scenario) -> Report {
    let window = common.window.unwrap_or_else(|| scenario.default_window());
    let mut report = Report {
        scenario: scenario.name().to_owned(),
        protocol: format!("{:?}", common.endpoint.protocol).to_lowercase(),
        label: common.label.clone(),
        urls: common.endpoint.urls.clone(),
        params: Params {
            duration_s: common.duration.as_secs_f64(),
            warmup_s: common.warmup.as_secs_f64(),
            size: common.size.max(stats::MIN_BODY),
            rate: common.rate,
            window,
            source_ips: common.source_ips,
            ..Params::default()
        },
        ..Report::default()
    };
    let counters = Arc::new(Counters::default());
    let backend = match common.app_listen {
        Some(addr) => match AppServer::start(addr).await {
            Ok(server) => Some(server),
            Err(e) => {
                counters.error(e);
                report.errors = 1;
                report.error_samples = counters.error_samples();
                return report;
            }
        },
        None => None,
    };
    let progress = Progress::start(scenario.name(), counters.clone(), common.progress);
    match scenario {
        Scenario::Fanout { subscribers, publishers } => {
            report.params.subscribers = *subscribers;
            report.params.publishers = *publishers;
            fanout(common, &counters, window, *subscribers, *publishers, &mut report).await;
        }
        Scenario::Topics { connections } => {
            report.params.connections = *connections;
            topics(common, &counters, window, *connections, &mut report).await;
        }
        Scenario::Queue { producers, consumers, prefetch } => {
            report.params.producers = *producers;
            report.params.consumers = *consumers;
            report.params.prefetch = *prefetch;
            if common.endpoint.protocol == Protocol::Raw {
                report.notes.push("queue: not applicable to the raw protocol (no queues, no acks)".into());
            } else if common.endpoint.protocol == Protocol::Nats {
                report.notes.push(
                    "queue: not applicable to core NATS (no stored queues, no acknowledgements; \
                     those are JetStream's)"
                        .into(),
                );
            } else {
                queue(common, &counters, window, (*producers, *consumers, *prefetch), &mut report).await;
            }
        }
        Scenario::Idle { connections, hold } => {
            report.params.connections = *connections;
            idle(common, &counters, *connections, *hold, &mut report).await;
        }
        Scenario::Churn { concurrency } => {
            report.params.concurrency = *concurrency;
            churn(common, &counters, *concurrency, &mut report).await;
        }
        Scenario::Connect { connections, concurrency } => {
            report.params.connections = *connections;
            report.params.concurrency = *concurrency;
            connect(common, &counters, *connections, *concurrency, &mut report).await;
        }
        Scenario::AppHttp { clients, destination } => {
            report.params.connections = *clients;
            if common.endpoint.protocol != Protocol::Stomp {
                report.notes.push("app-http: not applicable without STOMP (a Stampede scenario)".into());
            } else {
                app_http(common, &counters, window, *clients, destination, &mut report).await;
            }
        }
    }
    progress.stop();
    if let Some(backend) = backend {
        let calls = backend.calls();
        if calls == AppCalls::default() {
            report.notes.push(format!(
                "the application backend on {} was never called: is the node started with \
                 --connect-hook, --subscribe-hook or --app-http pointing at it?",
                backend.addr
            ));
        }
        report.app = Some(calls);
    }
    report.errors = Counters::get(&counters.errors);
    report.error_samples = counters.error_samples();
    if report.errors > 0 {
        report.notes.extend(stats::conntrack_note());
    }
    report
}

// === Setup ===

/// Opens `n` clients with `open`, `concurrency` at a time, until `deadline` or until too many
/// have failed. Returns the clients that succeeded; failures are counted.
async fn open_all<T, F, Fut>(
    n: usize,
    concurrency: usize,
    deadline: Instant,
    counters: &Arc<Counters>,
    open: F,
) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, ConnError>>,
{
    let give_up_after = (n / 10).max(50) as u64;
    let failed = AtomicU64::new(0);
    let results: Vec<Option<T>> = futures_util::stream::iter(0..n)
        .take_while(|_| {
            futures_util::future::ready(
                Instant::now() < deadline && failed.load(Ordering::Relaxed) < give_up_after,
            )
        })
        .map(|i| {
            let attempt = open(i);
            let failed = &failed;
            async move {
                match attempt.await {
                    Ok(client) => {
                        counters.open.fetch_add(1, Ordering::Relaxed);
                        Some(client)
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        counters.error(e);
                        None
                    }
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().flatten().collect()
}

/// A session subscribed to `destination` (STOMP, NATS), or a raw connection in group `group`.
async fn subscriber(
    endpoint: &Endpoint,
    node: usize,
    group: &str,
    destination: &str,
    ack: Ack,
    prefetch: Option<u32>,
) -> Result<Session, ConnError> {
    let mut session = endpoint.session(node, group, false).await?;
    session.subscribe("0", destination, ack, prefetch, endpoint.timeout).await?;
    Ok(session)
}

/// Samples broker and load-generator CPU time at the window's start and end, and RSS at its end.
fn spawn_sampler(pids: Vec<u32>, window: Window) -> JoinHandle<(Option<f64>, Option<f64>, Option<u64>)> {
    tokio::spawn(async move {
        tokio::time::sleep_until(window.start.into()).await;
        let (broker0, self0) = (stats::total_cpu(&pids), stats::cpu_seconds(0));
        tokio::time::sleep_until(window.end.into()).await;
        let (broker1, self1) = (stats::total_cpu(&pids), stats::cpu_seconds(0));
        let rss = stats::total_rss(&pids);
        let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        (diff(broker0, broker1), diff(self0, self1), rss)
    })
}

fn finish_rates(report: &mut Report, counters: &Counters, duration: Duration) {
    let secs = duration.as_secs_f64().max(1e-9);
    report.sent = Counters::get(&counters.sent_in_window);
    report.received = Counters::get(&counters.received_in_window);
    report.sent_per_s = report.sent as f64 / secs;
    report.sent_total = Counters::get(&counters.sent);
    report.received_total = Counters::get(&counters.received);
    report.deliveries_per_s = report.received as f64 / secs;
}

async fn merge(handles: Vec<JoinHandle<Histogram<u64>>>) -> Histogram<u64> {
    let mut total = stats::histogram();
    for handle in handles {
        if let Ok(hist) = handle.await {
            let _ = total.add(&hist);
        }
    }
    total
}

async fn apply_sampler(
    report: &mut Report,
    sampler: JoinHandle<(Option<f64>, Option<f64>, Option<u64>)>,
    rss_before: Option<u64>,
) {
    if let Ok((broker_cpu, bench_cpu, rss_after)) = sampler.await {
        report.broker_cpu_s = broker_cpu;
        report.bench_cpu_s = bench_cpu;
        if let (Some(before), Some(after)) = (rss_before, rss_after) {
            report.memory = Some(Memory {
                before_bytes: before,
                after_bytes: after,
                per_connection_bytes: None,
                steps: Vec::new(),
            });
        }
    }
}

// === Scenarios ===

async fn fanout(
    c: &Common,
    counters: &Arc<Counters>,
    window_msgs: u64,
    subscribers: usize,
    publishers: usize,
    report: &mut Report,
) {
    let ep = &*c.endpoint;
    let group = format!("{}-fanout", c.prefix);
    let destination = format!("/topic/{group}");
    let rss_before = stats::total_rss(&c.broker_pids);
    report.connections_requested = subscribers + publishers;
    let setup = Instant::now();
    let deadline = setup + c.setup_timeout;
    let subs = open_all(subscribers, c.connect_concurrency, deadline, counters, |i| {
        subscriber(ep, i, &group, &destination, Ack::Auto, None)
    })
    .await;
    let pubs =
        open_all(publishers, c.connect_concurrency, deadline, counters, |j| ep.session(j, &group, true))
            .await;
    report.setup_s = setup.elapsed().as_secs_f64();
    report.connections_reached = subs.len() + pubs.len();
    if subs.is_empty() || pubs.is_empty() {
        report.notes.push("no subscriber or no publisher could connect".into());
        return;
    }

    let window = Window::new(c.warmup, c.duration);
    let alive = Arc::new(AtomicU64::new(subs.len() as u64));
    let limit = window_msgs * subs.len() as u64 * if c.rate > 0.0 { 16 } else { 1 };
    let flow = Arc::new(Flow::new(limit));
    let until = window.end + DRAIN;
    let sampler = spawn_sampler(c.broker_pids.clone(), window);
    let protocol = ep.protocol;
    let receivers: Vec<_> = subs
        .into_iter()
        .map(|s| {
            let (counters, flow, alive) = (counters.clone(), flow.clone(), alive.clone());
            tokio::spawn(async move {
                let hist = receive_loop(s.ws, s.parser, &counters, Some(&flow), window, until, false).await;
                alive.fetch_sub(1, Ordering::AcqRel);
                hist
            })
        })
        .collect();
    let per_publisher = c.rate / pubs.len() as f64;
    let senders: Vec<_> = pubs
        .into_iter()
        .map(|p| {
            let publisher = Publisher {
                destination: conn::wire_destination(protocol, &destination),
                size: c.size,
                rate: per_publisher,
                flow: flow.clone(),
                deliveries_per_message: alive.clone(),
                counters: counters.clone(),
                window,
                protocol,
            };
            tokio::spawn(async move { publisher.run(p.ws).await })
        })
        .collect();
    for sender in senders {
        let _ = sender.await;
    }
    let hist = merge(receivers).await;
    finish_rates(report, counters, c.duration);
    report.latency = Latency::of(&hist);
    apply_sampler(report, sampler, rss_before).await;
}

async fn topics(
    c: &Common,
    counters: &Arc<Counters>,
    window_msgs: u64,
    connections: usize,
    report: &mut Report,
) {
    let ep = &*c.endpoint;
    let rss_before = stats::total_rss(&c.broker_pids);
    report.connections_requested = connections;
    let setup = Instant::now();
    let sessions =
        open_all(connections, c.connect_concurrency, setup + c.setup_timeout, counters, |i| async move {
            let group = format!("{}-t{i}", c.prefix);
            let destination = format!("/topic/{group}");
            subscriber(ep, i, &group, &destination, Ack::Auto, None).await.map(|s| (s, destination))
        })
        .await;
    report.setup_s = setup.elapsed().as_secs_f64();
    report.connections_reached = sessions.len();
    if sessions.is_empty() {
        return;
    }
    let window = Window::new(c.warmup, c.duration);
    let sampler = spawn_sampler(c.broker_pids.clone(), window);
    let per_connection = c.rate / sessions.len() as f64;
    let protocol = ep.protocol;
    let handles: Vec<_> = sessions
        .into_iter()
        .map(|(session, destination)| {
            let echo = Echo {
                destination: conn::wire_destination(protocol, &destination),
                size: c.size,
                rate: per_connection,
                in_flight_limit: if per_connection > 0.0 {
                    window_msgs.max(1) * 64
                } else {
                    window_msgs.max(1)
                },
                counters: counters.clone(),
                window,
                protocol,
            };
            tokio::spawn(async move { echo.run(session).await })
        })
        .collect();
    let hist = merge(handles).await;
    finish_rates(report, counters, c.duration);
    report.latency = Latency::of(&hist);
    apply_sampler(report, sampler, rss_before).await;
}

async fn queue(
    c: &Common,
    counters: &Arc<Counters>,
    window_msgs: u64,
    (producers, consumers, prefetch): (usize, usize, u32),
    report: &mut Report,
) {
    let ep = &*c.endpoint;
    let group = format!("{}-queue", c.prefix);
    let destination = format!("/queue/{group}");
    let rss_before = stats::total_rss(&c.broker_pids);
    report.connections_requested = producers + consumers;
    let setup = Instant::now();
    let deadline = setup + c.setup_timeout;
    let subs = open_all(consumers, c.connect_concurrency, deadline, counters, |i| {
        subscriber(ep, i, &group, &destination, Ack::ClientIndividual, Some(prefetch))
    })
    .await;
    let pubs =
        open_all(producers, c.connect_concurrency, deadline, counters, |j| ep.session(j, &group, true)).await;
    report.setup_s = setup.elapsed().as_secs_f64();
    report.connections_reached = subs.len() + pubs.len();
    if subs.is_empty() || pubs.is_empty() {
        report.notes.push("no consumer or no producer could connect".into());
        return;
    }
    let window = Window::new(c.warmup, c.duration);
    let limit = if c.rate > 0.0 { window_msgs * 16 } else { window_msgs };
    let flow = Arc::new(Flow::new(limit));
    let until = window.end + DRAIN;
    let sampler = spawn_sampler(c.broker_pids.clone(), window);
    let receivers: Vec<_> = subs
        .into_iter()
        .map(|s| {
            let (counters, flow) = (counters.clone(), flow.clone());
            tokio::spawn(async move {
                receive_loop(s.ws, s.parser, &counters, Some(&flow), window, until, true).await
            })
        })
        .collect();
    let one = Arc::new(AtomicU64::new(1));
    let per_producer = c.rate / pubs.len() as f64;
    let senders: Vec<_> = pubs
        .into_iter()
        .map(|p| {
            let publisher = Publisher {
                destination: destination.clone(),
                size: c.size,
                rate: per_producer,
                flow: flow.clone(),
                deliveries_per_message: one.clone(),
                counters: counters.clone(),
                window,
                protocol: Protocol::Stomp,
            };
            tokio::spawn(async move { publisher.run(p.ws).await })
        })
        .collect();
    for sender in senders {
        let _ = sender.await;
    }
    let hist = merge(receivers).await;
    finish_rates(report, counters, c.duration);
    report.latency = Latency::of(&hist);
    apply_sampler(report, sampler, rss_before).await;
}

async fn idle(c: &Common, counters: &Arc<Counters>, connections: usize, hold: Duration, report: &mut Report) {
    let ep = &*c.endpoint;
    report.connections_requested = connections;
    if let Some((soft, hard)) = stats::nofile_limit() {
        if connections as u64 + 64 > soft {
            report.notes.push(format!(
                "the load generator's open-files limit is {soft} (hard {hard}): at most about {} \
                 connections fit; raise it with `ulimit -n`",
                soft.saturating_sub(64)
            ));
        }
    }
    // Let the broker settle (memory returned by earlier runs, sockets closed) before sampling.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = stats::total_rss(&c.broker_pids);
    let setup = Instant::now();
    let deadline = setup + c.setup_timeout;
    // Opened in quarters, RSS sampled after each (the last sample is the one after the hold).
    let mut sessions = Vec::with_capacity(connections);
    let mut steps = Vec::new();
    let mut settling = Duration::ZERO;
    for quarter in 1..=IDLE_STEPS {
        let (from, to) = ((quarter - 1) * connections / IDLE_STEPS, quarter * connections / IDLE_STEPS);
        let opened = open_all(to - from, c.connect_concurrency, deadline, counters, |i| async move {
            let i = from + i;
            let group = format!("{}-idle{i}", c.prefix);
            let destination = format!("/topic/{group}");
            subscriber(ep, i, &group, &destination, Ack::Auto, None).await
        })
        .await;
        let complete = opened.len() == to - from;
        sessions.extend(opened);
        if quarter < IDLE_STEPS && complete {
            tokio::time::sleep(IDLE_STEP_SETTLE).await;
            settling += IDLE_STEP_SETTLE;
            if let Some(rss) = stats::total_rss(&c.broker_pids) {
                steps.push(MemoryStep { connections: sessions.len(), rss_bytes: rss });
            }
        }
        if !complete {
            break;
        }
    }
    report.setup_s = (setup.elapsed() - settling).as_secs_f64();
    report.connections_reached = sessions.len();
    let hold_start = Instant::now();
    tokio::time::sleep(hold).await;
    let rss_after = stats::total_rss(&c.broker_pids);
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let per = (!sessions.is_empty()).then(|| after.saturating_sub(before) as f64 / sessions.len() as f64);
        steps.push(MemoryStep { connections: sessions.len(), rss_bytes: after });
        report.memory =
            Some(Memory { before_bytes: before, after_bytes: after, per_connection_bytes: per, steps });
    }
    // Nothing should arrive on an idle connection; count what did.
    let mut stray = 0u64;
    let mut first: Option<String> = None;
    let mut sessions = sessions;
    for session in &mut sessions {
        while let Some(Some(Ok(message))) = session.ws.next().now_or_never() {
            let payload: &[u8] = match &message {
                Message::Text(text) => text.as_bytes(),
                Message::Binary(bytes) => bytes,
                _ => continue,
            };
            // nats-server PINGs a new client within seconds: a keep-alive, not a delivery.
            let keepalive =
                payload.split(|b| *b == b'\n').all(|line| matches!(line, b"PING\r" | b"PONG\r" | b""));
            if matches!(session.parser, Decoder::Nats(_)) && keepalive {
                continue;
            }
            stray += 1;
            if first.is_none() {
                let shown = &payload[..payload.len().min(80)];
                first = Some(String::from_utf8_lossy(shown).escape_debug().to_string());
            }
        }
    }
    if stray > 0 {
        report.notes.push(format!(
            "{stray} unexpected messages arrived on idle connections (the first began {:?})",
            first.unwrap_or_default()
        ));
    }
    report.params.duration_s = hold_start.elapsed().as_secs_f64();
    counters.open.store(0, Ordering::Relaxed);
    drop(sessions);
}

async fn churn(c: &Common, counters: &Arc<Counters>, concurrency: usize, report: &mut Report) {
    let ep = c.endpoint.clone();
    let window = Window::new(c.warmup, c.duration);
    report.connections_requested = concurrency;
    let sampler = spawn_sampler(c.broker_pids.clone(), window);
    let rss_before = stats::total_rss(&c.broker_pids);
    let tickets = Arc::new(AtomicU64::new(0));
    let rate = c.rate;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|w| {
            let (ep, counters, tickets, prefix) =
                (ep.clone(), counters.clone(), tickets.clone(), c.prefix.clone());
            tokio::spawn(async move {
                let mut hist = stats::histogram();
                let mut failures_in_a_row = 0u32;
                loop {
                    let ticket = tickets.fetch_add(1, Ordering::Relaxed);
                    if rate > 0.0 {
                        let due = window.epoch + Duration::from_secs_f64(ticket as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let started = Instant::now();
                    if started >= window.end {
                        break;
                    }
                    let group = format!("{prefix}-churn{}", ticket % 1000);
                    match cycle(&ep, w + ticket as usize, &group).await {
                        Ok(()) => {
                            failures_in_a_row = 0;
                            let done = Instant::now();
                            if window.contains(done) {
                                counters.cycles.fetch_add(1, Ordering::Relaxed);
                                let micros = done.duration_since(started).as_micros() as u64;
                                hist.saturating_record(micros.max(1));
                            }
                        }
                        Err(e) => {
                            counters.error(e);
                            failures_in_a_row += 1;
                            // A broker that refuses every connection is not hammered for the
                            // whole window.
                            tokio::time::sleep(Duration::from_millis(
                                10 * u64::from(failures_in_a_row.min(100)),
                            ))
                            .await;
                        }
                    }
                }
                hist
            })
        })
        .collect();
    let hist = merge(workers).await;
    report.cycles = Counters::get(&counters.cycles);
    report.cycles_per_s = report.cycles as f64 / c.duration.as_secs_f64().max(1e-9);
    report.cycle_latency = Latency::of(&hist);
    report.connections_reached = concurrency;
    apply_sampler(report, sampler, rss_before).await;
}

/// One churn cycle: connect, CONNECT, SUBSCRIBE (receipt), DISCONNECT (receipt), close.
async fn cycle(ep: &Endpoint, node: usize, group: &str) -> Result<(), ConnError> {
    let destination = format!("/topic/{group}");
    let mut session = ep.session(node, group, false).await?;
    // Nothing for the raw protocol; a PING's PONG for NATS; a receipt for STOMP.
    session.subscribe("0", &destination, Ack::Auto, None, ep.timeout).await?;
    session.disconnect(ep.timeout).await
}

/// Cycles of the connect scenario run before the measured ones, per worker: the first of a
/// node's hook calls also opens its connection to the backend.
pub const CONNECT_WARMUP_PER_WORKER: usize = 4;

async fn connect(
    c: &Common,
    counters: &Arc<Counters>,
    connections: usize,
    concurrency: usize,
    report: &mut Report,
) {
    let ep = c.endpoint.clone();
    let workers = concurrency.clamp(1, connections.max(1));
    let warmup = workers * CONNECT_WARMUP_PER_WORKER;
    let total = (connections + warmup) as u64;
    report.connections_requested = connections;
    let rss_before = stats::total_rss(&c.broker_pids);
    let tickets = Arc::new(AtomicU64::new(0));
    // A node that refuses every connection is not tried N times.
    let give_up_after = (connections / 10).max(50) as u64;
    let failed = Arc::new(AtomicU64::new(0));
    let named = Arc::new(AtomicU64::new(0));
    let mut started = None;
    let mut cpu0 = (None, None);
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (ep, counters, tickets, failed, named) =
                (ep.clone(), counters.clone(), tickets.clone(), failed.clone(), named.clone());
            let prefix = c.prefix.clone();
            tokio::spawn(async move {
                let (mut connected, mut subscribed) = (stats::histogram(), stats::histogram());
                loop {
                    let ticket = tickets.fetch_add(1, Ordering::Relaxed);
                    if ticket >= total || failed.load(Ordering::Relaxed) >= give_up_after {
                        break;
                    }
                    let measured = ticket >= warmup as u64;
                    let group = format!("{prefix}-c{ticket}");
                    match connect_cycle(&ep, w + ticket as usize, &group).await {
                        Ok((connect, subscribe, user)) => {
                            if measured {
                                counters.cycles.fetch_add(1, Ordering::Relaxed);
                                connected.saturating_record((connect.as_micros() as u64).max(1));
                                subscribed.saturating_record((subscribe.as_micros() as u64).max(1));
                                named.fetch_add(u64::from(user.is_some()), Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            counters.error(e);
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                (connected, subscribed)
            })
        })
        .collect();
    let (mut connected, mut subscribed) = (stats::histogram(), stats::histogram());
    for handle in handles {
        // The measured part starts when the warm-up tickets are taken; sampled from here.
        if started.is_none() {
            while tickets.load(Ordering::Relaxed) < warmup as u64 && !handle.is_finished() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            started = Some(Instant::now());
            cpu0 = (stats::total_cpu(&c.broker_pids), stats::cpu_seconds(0));
        }
        if let Ok((c, s)) = handle.await {
            let _ = connected.add(&c);
            let _ = subscribed.add(&s);
        }
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    report.broker_cpu_s = diff(cpu0.0, stats::total_cpu(&c.broker_pids));
    report.bench_cpu_s = diff(cpu0.1, stats::cpu_seconds(0));
    if let (Some(before), Some(after)) = (rss_before, stats::total_rss(&c.broker_pids)) {
        report.memory = Some(Memory {
            before_bytes: before,
            after_bytes: after,
            per_connection_bytes: None,
            steps: Vec::new(),
        });
    }
    report.params.duration_s = elapsed.as_secs_f64();
    report.params.warmup_s = 0.0;
    report.cycles = Counters::get(&counters.cycles);
    report.connections_reached = report.cycles as usize;
    report.cycles_per_s = report.cycles as f64 / elapsed.as_secs_f64().max(1e-9);
    report.connect_latency = Latency::of(&connected);
    report.subscribe_latency = Latency::of(&subscribed);
    report.notes.push(format!(
        "{warmup} connections before the {connections} measured were not counted; {} of the measured \
         CONNECTED frames named a user",
        Counters::get(&named)
    ));
}

/// One connect cycle: TCP and WebSocket handshakes, then CONNECT and a receipted SUBSCRIBE
/// (each timed), DISCONNECT (receipt), close. Returns the two times and the CONNECTED's user.
async fn connect_cycle(
    ep: &Endpoint,
    node: usize,
    group: &str,
) -> Result<(Duration, Duration, Option<String>), ConnError> {
    let login = ep.login.as_ref().map(|(l, p)| (l.as_str(), p.as_str()));
    let connected = ep.session_as(node, group, false, login).await?;
    let mut session = connected.session;
    if ep.protocol != Protocol::Stomp {
        let _ = tokio::time::timeout(ep.timeout, session.ws.close(None)).await;
        return Ok((connected.took, Duration::ZERO, None));
    }
    let destination = format!("/topic/{group}");
    let started = Instant::now();
    session.subscribe("0", &destination, Ack::Auto, None, ep.timeout).await?;
    let subscribe = started.elapsed();
    session.disconnect(ep.timeout).await?;
    Ok((connected.took, subscribe, connected.user))
}

async fn app_http(
    c: &Common,
    counters: &Arc<Counters>,
    window_msgs: u64,
    clients: usize,
    destination: &str,
    report: &mut Report,
) {
    let ep = &*c.endpoint;
    let rss_before = stats::total_rss(&c.broker_pids);
    report.connections_requested = clients;
    let setup = Instant::now();
    // Replies come on /user/queue/reply, which needs a user: the login given, else one per
    // client (taken on trust by a node without authentication; a connect hook names its own).
    let sessions =
        open_all(clients, c.connect_concurrency, setup + c.setup_timeout, counters, |i| async move {
            let own = format!("bench{i}");
            let login = match &ep.login {
                Some((l, p)) => Some((l.as_str(), p.as_str())),
                None => Some((own.as_str(), "")),
            };
            let group = format!("{}-app{i}", c.prefix);
            let mut session = ep.session_as(i, &group, false, login).await?.session;
            session.subscribe("0", "/user/queue/reply", Ack::Auto, None, ep.timeout).await?;
            Ok(session)
        })
        .await;
    report.setup_s = setup.elapsed().as_secs_f64();
    report.connections_reached = sessions.len();
    if sessions.is_empty() {
        report.notes.push("no client could connect".into());
        return;
    }
    let window = Window::new(c.warmup, c.duration);
    let sampler = spawn_sampler(c.broker_pids.clone(), window);
    let per_client = c.rate / sessions.len() as f64;
    let handles: Vec<_> = sessions
        .into_iter()
        .map(|session| {
            let echo = Echo {
                destination: destination.to_owned(),
                size: c.size,
                rate: per_client,
                in_flight_limit: window_msgs.max(1),
                counters: counters.clone(),
                window,
                protocol: Protocol::Stomp,
            };
            tokio::spawn(async move { echo.run(session).await })
        })
        .collect();
    let hist = merge(handles).await;
    finish_rates(report, counters, c.duration);
    report.latency = Latency::of(&hist);
    apply_sampler(report, sampler, rss_before).await;
    let lost = report.sent_total.saturating_sub(report.received_total);
    if lost > 0 {
        report.notes.push(format!(
            "{lost} SENDs got no reply (the node's HTTP calls failed or timed out: see \
             stampede_app_http_requests_total)"
        ));
    }
}

// === Hot loops ===

/// Handles one WebSocket message from the broker: counts and times every MESSAGE frame (NATS:
/// MSG) and queues an ACK for it when `acks` is given (NATS: a PONG for each PING, ACKs having
/// no meaning there). Returns (messages, messages inside the window), or an error for an ERROR
/// frame (NATS: -ERR) or a close.
fn on_message(
    message: &Message,
    decoder: &mut Decoder,
    window: &Window,
    hist: &mut Histogram<u64>,
    acks: Option<&mut Vec<String>>,
) -> Result<(u64, u64), String> {
    let payload: &[u8] = match message {
        Message::Text(text) => text.as_bytes(),
        Message::Binary(bytes) => bytes,
        Message::Close(frame) => return Err(format!("server closed the connection: {frame:?}")),
        _ => return Ok((0, 0)),
    };
    let now = Instant::now();
    let in_window = window.contains(now);
    let mut count = 0;
    let record = |hist: &mut Histogram<u64>, body: &[u8]| {
        if in_window {
            if let Some(stamp) = stats::read_stamp(body) {
                stats::record_latency(hist, window.epoch, now, stamp);
            }
        }
    };
    let mut error = None;
    let mut acks = acks;
    let parser = match decoder {
        Decoder::Raw => {
            record(hist, payload);
            return Ok((1, u64::from(in_window)));
        }
        Decoder::Stomp(parser) => parser,
        Decoder::Nats(parser) => {
            parser
                .feed(payload, |op| match op {
                    nats::Op::Msg { payload, .. } => {
                        count += 1;
                        record(hist, payload);
                    }
                    nats::Op::Ping => {
                        if let Some(acks) = acks.as_deref_mut() {
                            acks.push(nats::PONG.to_owned());
                        }
                    }
                    nats::Op::Err(text) => {
                        error = Some(format!("-ERR from the server: {}", String::from_utf8_lossy(text)))
                    }
                    _ => {}
                })
                .map_err(|e| e.to_string())?;
            return match error {
                Some(e) => Err(e),
                None => Ok((count, if in_window { count } else { 0 })),
            };
        }
    };
    parser
        .feed(payload, |frame| match frame.command {
            Command::Message => {
                count += 1;
                record(hist, frame.body);
                if let Some(acks) = acks.as_deref_mut() {
                    match frame.header("ack") {
                        Some(id) => acks.push(stomp::ack(id)),
                        None => error = Some("MESSAGE without an ack header in a client ack mode".to_owned()),
                    }
                }
            }
            Command::Error => error = Some(format!("ERROR from the server: {}", frame.error_text())),
            _ => {}
        })
        .map_err(|e| e.to_string())?;
    match error {
        Some(e) => Err(e),
        None => Ok((count, if in_window { count } else { 0 })),
    }
}

/// A subscriber or consumer: reads until `until` (or the connection ends), timing every message;
/// with `ack`, acknowledges each one (flushed once per read batch). A NATS subscriber answers the
/// server's PINGs the same way.
async fn receive_loop(
    mut ws: Link,
    mut parser: Decoder,
    counters: &Counters,
    flow: Option<&Flow>,
    window: Window,
    until: Instant,
    ack: bool,
) -> Histogram<u64> {
    let replies = ack || matches!(parser, Decoder::Nats(_));
    let mut hist = stats::histogram();
    let stop = tokio::time::sleep_until(until.into());
    tokio::pin!(stop);
    let mut acks: Vec<String> = Vec::new();
    'outer: loop {
        let first = tokio::select! {
            biased;
            message = ws.next() => message,
            _ = &mut stop => break,
        };
        let mut next = first;
        let (mut total, mut in_window) = (0, 0);
        for _ in 0..READ_BATCH {
            match next {
                Some(Ok(message)) => {
                    match on_message(&message, &mut parser, &window, &mut hist, replies.then_some(&mut acks))
                    {
                        Ok((n, w)) => {
                            total += n;
                            in_window += w;
                        }
                        Err(e) => {
                            counters.error(e);
                            break 'outer;
                        }
                    }
                }
                Some(Err(e)) => {
                    counters.error(format!("read: {e}"));
                    break 'outer;
                }
                None => {
                    counters.error("the server closed the connection");
                    break 'outer;
                }
            }
            match ws.next().now_or_never() {
                Some(more) => next = more,
                None => break,
            }
        }
        counters.received.fetch_add(total, Ordering::Relaxed);
        counters.received_in_window.fetch_add(in_window, Ordering::Relaxed);
        if !acks.is_empty() {
            for frame in acks.drain(..) {
                if let Err(e) = ws.feed(Message::text(frame)).await {
                    counters.error(format!("ACK: {e}"));
                    break 'outer;
                }
            }
            if let Err(e) = ws.flush().await {
                counters.error(format!("ACK: {e}"));
                break;
            }
        }
        if let Some(flow) = flow {
            flow.finished(total);
        }
    }
    counters.open.fetch_sub(1, Ordering::Relaxed);
    hist
}

/// A publisher of a fan-out topic or a queue.
struct Publisher {
    destination: String,
    size: usize,
    /// Messages per second for this publisher; 0 = closed loop.
    rate: f64,
    flow: Arc<Flow>,
    /// Deliveries one message makes (live subscribers for a topic, 1 for a queue).
    deliveries_per_message: Arc<AtomicU64>,
    counters: Arc<Counters>,
    window: Window,
    protocol: Protocol,
}

impl Publisher {
    async fn run(self, mut ws: Link) {
        let mut body = String::with_capacity(self.size + 1);
        let mut frame = String::new();
        let start = Instant::now();
        let mut sent: u64 = 0;
        let mut parser = Decoder::new(self.protocol);
        let mut ignored = stats::histogram();
        loop {
            let now = Instant::now();
            if now >= self.window.end {
                break;
            }
            let fan = self.deliveries_per_message.load(Ordering::Acquire).max(1);
            let mut budget = if self.rate > 0.0 {
                let due = ((now - start).as_secs_f64() * self.rate) as u64 + 1;
                due.saturating_sub(sent).min(BURST * 16)
            } else {
                BURST
            };
            budget = budget.min(self.flow.room() / fan);
            if budget == 0 {
                let flow_bound = self.flow.room() / fan == 0;
                let wake = if self.rate > 0.0 && !flow_bound {
                    start + Duration::from_secs_f64((sent + 1) as f64 / self.rate)
                } else {
                    now + Duration::from_millis(20)
                };
                let wake = wake.min(self.window.end);
                tokio::select! {
                    _ = self.flow.wait(wake.saturating_duration_since(now)), if flow_bound => {}
                    _ = tokio::time::sleep_until(wake.into()), if !flow_bound => {}
                    message = ws.next() => match message {
                        Some(Ok(message)) => {
                            if let Err(e) = on_message(&message, &mut parser, &self.window, &mut ignored, None) {
                                self.counters.error(format!("publisher: {e}"));
                                break;
                            }
                        }
                        Some(Err(e)) => {
                            self.counters.error(format!("publisher: {e}"));
                            break;
                        }
                        None => {
                            self.counters.error("publisher: the server closed the connection");
                            break;
                        }
                    },
                }
                continue;
            }
            let mut in_window = 0;
            for _ in 0..budget {
                let t = Instant::now();
                stats::stamp_body(&mut body, self.window.epoch, t, self.size);
                let payload = conn::publish_frame(self.protocol, &mut frame, &self.destination, &body);
                self.flow.started(fan);
                if let Err(e) = ws.feed(Message::text(payload)).await {
                    self.counters.error(format!("publish: {e}"));
                    return;
                }
                sent += 1;
                if self.window.contains(t) {
                    in_window += 1;
                }
            }
            self.counters.sent.fetch_add(budget, Ordering::Relaxed);
            self.counters.sent_in_window.fetch_add(in_window, Ordering::Relaxed);
            if let Err(e) = ws.flush().await {
                self.counters.error(format!("publish: {e}"));
                return;
            }
        }
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
        // Keep the connection until the receivers are done, so a broker that ties a message's
        // fate to its publisher's connection does not drop the last ones.
        tokio::time::sleep_until((self.window.end + DRAIN).into()).await;
    }
}

/// A connection subscribed to its own topic that publishes to it and times its own messages.
struct Echo {
    destination: String,
    size: usize,
    rate: f64,
    in_flight_limit: u64,
    counters: Arc<Counters>,
    window: Window,
    protocol: Protocol,
}

impl Echo {
    async fn run(self, session: Session) -> Histogram<u64> {
        let Session { mut ws, mut parser, .. } = session;
        let mut hist = stats::histogram();
        let mut body = String::with_capacity(self.size + 1);
        let mut frame = String::new();
        let start = Instant::now();
        let until = self.window.end + DRAIN;
        let stop = tokio::time::sleep_until(until.into());
        tokio::pin!(stop);
        let (mut sent, mut in_flight) = (0u64, 0u64);
        loop {
            let now = Instant::now();
            let publishing = now < self.window.end;
            if !publishing && in_flight == 0 {
                break;
            }
            let mut next_due = None;
            if publishing {
                let mut budget = self.in_flight_limit.saturating_sub(in_flight);
                if self.rate > 0.0 {
                    let due = ((now - start).as_secs_f64() * self.rate) as u64 + 1;
                    budget = budget.min(due.saturating_sub(sent));
                    next_due = Some(start + Duration::from_secs_f64((sent + budget + 1) as f64 / self.rate));
                }
                if budget > 0 {
                    let mut in_window = 0;
                    for _ in 0..budget.min(BURST) {
                        let t = Instant::now();
                        stats::stamp_body(&mut body, self.window.epoch, t, self.size);
                        let payload =
                            conn::publish_frame(self.protocol, &mut frame, &self.destination, &body);
                        if let Err(e) = ws.feed(Message::text(payload)).await {
                            self.counters.error(format!("publish: {e}"));
                            return hist;
                        }
                        sent += 1;
                        in_flight += 1;
                        in_window += u64::from(self.window.contains(t));
                    }
                    self.counters.sent.fetch_add(budget.min(BURST), Ordering::Relaxed);
                    self.counters.sent_in_window.fetch_add(in_window, Ordering::Relaxed);
                    if let Err(e) = ws.flush().await {
                        self.counters.error(format!("publish: {e}"));
                        return hist;
                    }
                }
            }
            let wake = next_due.unwrap_or(until).min(until);
            let message = tokio::select! {
                biased;
                message = ws.next() => message,
                _ = tokio::time::sleep_until(wake.into()), if next_due.is_some() => continue,
                _ = &mut stop => break,
            };
            let outcome = match message {
                Some(Ok(message)) => on_message(&message, &mut parser, &self.window, &mut hist, None),
                Some(Err(e)) => Err(format!("read: {e}")),
                None => Err("the server closed the connection".to_owned()),
            };
            match outcome {
                Ok((n, w)) => {
                    in_flight = in_flight.saturating_sub(n);
                    self.counters.received.fetch_add(n, Ordering::Relaxed);
                    self.counters.received_in_window.fetch_add(w, Ordering::Relaxed);
                }
                Err(e) => {
                    self.counters.error(e);
                    break;
                }
            }
        }
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
        hist
    }
}

// === Progress ===

/// Prints one line per second to stderr while a scenario runs.
struct Progress {
    running: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    fn start(name: &'static str, counters: Arc<Counters>, enabled: bool) -> Progress {
        let running = Arc::new(AtomicBool::new(true));
        if !enabled {
            return Progress { running, task: None };
        }
        let flag = running.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let (mut sent0, mut recv0, mut cycles0) = (0, 0, 0);
            while flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let sent = Counters::get(&counters.sent);
                let recv = Counters::get(&counters.received);
                let cycles = Counters::get(&counters.cycles);
                let mut line = format!(
                    "[{:6.1}s] {name}: open {} | sent {sent} (+{}/s) | received {recv} (+{}/s)",
                    started.elapsed().as_secs_f64(),
                    Counters::get(&counters.open),
                    sent - sent0,
                    recv - recv0,
                );
                if cycles > 0 {
                    line.push_str(&format!(" | cycles {cycles} (+{}/s)", cycles - cycles0));
                }
                line.push_str(&format!(" | errors {}", Counters::get(&counters.errors)));
                eprintln!("{line}");
                (sent0, recv0, cycles0) = (sent, recv, cycles);
            }
        });
        Progress { running, task: Some(task) }
    }

    fn stop(self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(task) = self.task {
            task.abort();
        }
    }
}
