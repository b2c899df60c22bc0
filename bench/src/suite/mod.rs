//! `bench-suite`: the one reproducible benchmark. In one run on one machine it starts each
//! target on loopback (the raw baseline, Stampede on its embedded engine, Stampede as N nodes on
//! Redis, RabbitMQ Web-STOMP), runs every scenario against it with the same parameters through
//! the `stampede-bench` binary, counts Redis commands per message from `INFO commandstats`, and
//! writes `docs/benchmarks.md` (and the raw results as JSON).
//!
//! Layout: `mod.rs` (arguments, the plan, the run), `targets.rs` (starting and stopping each
//! target), `rounds.rs` (the head-to-head phase), `apps.rs` (the applications phase: hooks and
//! HTTP backends), `sharded.rs` (the sharded phase: the nodes on a Redis Cluster, per number of
//! primaries), `markdown.rs` (the report and the goal checks).

pub mod apps;
pub mod markdown;
pub mod rounds;
pub mod sharded;
pub mod targets;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::report::Report;
use crate::stats;
use targets::{Bins, Kind, Running};

/// The benchmark: every target, every scenario, one report.
#[derive(Parser, Debug, Clone)]
#[command(name = "bench-suite", version)]
pub struct SuiteArgs {
    /// A smoke run: 2 s per scenario, few connections.
    #[arg(long)]
    pub short: bool,
    /// Targets to run, comma-separated: baseline, memory, cluster, rabbitmq, activemq, nats,
    /// cluster-sharded (the nodes on a Redis Cluster of each --shards count of primaries:
    /// sharded pub/sub), and apps (the applications phase: Stampede's connect and subscribe
    /// hooks and HTTP backend, on one node).
    #[arg(
        long,
        default_value = "baseline,memory,cluster,rabbitmq,activemq,nats,cluster-sharded,apps",
        value_delimiter = ','
    )]
    pub targets: Vec<String>,
    /// Primaries of the Redis Cluster of the cluster-sharded target, one cluster per count, in
    /// turn (no replicas, no persistence).
    #[arg(long, default_value = "1,2,3", value_delimiter = ',')]
    pub shards: Vec<usize>,
    /// Measured window per scenario (default 10 s, short 2 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Fan-out subscribers (default 100, short 20).
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Connections of the many-topics scenario (default 1000, short 100).
    #[arg(long)]
    pub topics: Option<usize>,
    /// Idle connections asked for (default 100000, short 1000); fewer if the open-files limit
    /// does not allow them.
    #[arg(long)]
    pub idle: Option<usize>,
    /// Interleaved rounds of the head-to-head phase (default 5, short 2; 0 leaves it out).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Stampede nodes of the cluster target.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Worker threads of each cluster node (`stampede --worker-threads`). Default: the cores
    /// shared out among the nodes, at least one each, as a container's CPU limit would; 0: the
    /// node's own default (one per core, in every node).
    #[arg(long)]
    pub node_workers: Option<usize>,
    /// Directory holding the release binaries stampede, stampede-bench and ws-baseline.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Use this running RabbitMQ Web-STOMP (ws://127.0.0.1:15674/ws) instead of starting one.
    #[arg(long)]
    pub rabbitmq_url: Option<String>,
    /// The Markdown report.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub out: PathBuf,
    /// The raw results.
    #[arg(long, default_value = "target/bench/results.json")]
    pub results: PathBuf,
    /// Skip targets whose prerequisites are missing instead of failing.
    #[arg(long)]
    pub skip_missing: bool,
    /// The command line to show in the report (run.sh passes its own).
    #[arg(long, default_value = "")]
    pub command_line: String,
    /// A Markdown file appended to the report (run.sh passes bench/notes.md: profiling notes).
    #[arg(long)]
    pub notes: Option<PathBuf>,
    /// Run nothing: write the report again from a results file of an earlier run (with the
    /// current --notes).
    #[arg(long)]
    pub render: Option<PathBuf>,
}

/// What the suite varies by mode.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Plan {
    pub duration_s: f64,
    pub warmup_s: f64,
    pub size: usize,
    pub subscribers: usize,
    pub topics: usize,
    pub producers: usize,
    pub consumers: usize,
    pub prefetch: u32,
    pub idle_requested: usize,
    pub idle: usize,
    pub idle_hold_s: f64,
    pub churn_concurrency: usize,
    pub nodes: usize,
    /// `--worker-threads` of each cluster node; 0: the node's own default.
    #[serde(default)]
    pub node_workers: usize,
    pub scaling_rate: f64,
    pub scaling_duration_s: f64,
    /// Head-to-head rounds, and the measured window of each of their runs.
    #[serde(default)]
    pub rounds: usize,
    #[serde(default)]
    pub round_duration_s: f64,
    /// Applications phase: connections per connect run and how many at a time; app-http
    /// clients and the SENDs each keeps in flight.
    #[serde(default)]
    pub app_connections: usize,
    #[serde(default)]
    pub app_concurrency: usize,
    #[serde(default)]
    pub app_clients: usize,
    #[serde(default)]
    pub app_window: u64,
    /// Primaries of each Redis Cluster of the sharded phase.
    #[serde(default)]
    pub shards: Vec<usize>,
}

impl Plan {
    fn new(args: &SuiteArgs, nofile: Option<(u64, u64)>) -> (Plan, Option<String>) {
        let short = args.short;
        let idle_requested = args.idle.unwrap_or(if short { 1000 } else { 100_000 });
        // The load generator holds one descriptor per connection, and so does a single broker.
        let fit = nofile.map(|(soft, _)| soft.saturating_sub(300) as usize).unwrap_or(usize::MAX);
        let idle = idle_requested.min(fit);
        let note = (idle < idle_requested).then(|| {
            let (soft, hard) = nofile.unwrap_or_default();
            format!(
                "{idle_requested} idle connections were asked for, but the open-files limit here is {soft} \
                 (hard limit {hard}, and this environment cannot raise it): the load generator and a \
                 single broker each need one descriptor per connection, so the idle scenario ran \
                 {idle} connections"
            )
        });
        let plan = Plan {
            duration_s: args.duration.map(|d| d.as_secs_f64()).unwrap_or(if short { 2.0 } else { 10.0 }),
            warmup_s: if short { 0.5 } else { 1.0 },
            size: args.size,
            subscribers: args.subscribers.unwrap_or(if short { 20 } else { 100 }),
            topics: args.topics.unwrap_or(if short { 100 } else { 1000 }),
            producers: 4,
            consumers: 4,
            prefetch: 100,
            idle_requested,
            idle,
            idle_hold_s: if short { 1.0 } else { 5.0 },
            churn_concurrency: 16,
            nodes: args.nodes.max(1),
            node_workers: args.node_workers.unwrap_or_else(|| {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                (cores / args.nodes.max(1)).max(1)
            }),
            scaling_rate: if short { 200.0 } else { 500.0 },
            scaling_duration_s: if short { 1.0 } else { 4.0 },
            rounds: args.rounds.unwrap_or(if short { 2 } else { 5 }),
            round_duration_s: if short { 1.0 } else { 5.0 },
            app_connections: if short { 200 } else { 2000 },
            app_concurrency: 8,
            app_clients: 16,
            app_window: 4,
            shards: args.shards.iter().copied().filter(|n| *n > 0).collect(),
        };
        (plan, note)
    }
}

/// Redis commands counted around one run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RedisDelta {
    /// Calls per command during the run.
    pub commands: BTreeMap<String, u64>,
    pub total: u64,
    /// Calls the nodes make anyway (heartbeats) over the same time, subtracted below.
    pub background: f64,
    pub seconds: f64,
    /// (total − background) / messages published.
    pub per_message: Option<f64>,
    /// PUBLISH and SPUBLISH calls / messages published.
    pub publish_per_message: Option<f64>,
    /// On a Redis Cluster: cluster-bus messages sent during the run, by type (`ping`, `pong`,
    /// `publish`, `publishshard`, ...), summed over the Redis nodes.
    #[serde(default)]
    pub bus: BTreeMap<String, u64>,
    /// On a Redis Cluster: (`publish` + `publishshard` bus messages) / messages published, the
    /// pub/sub traffic between Redis nodes per message.
    #[serde(default)]
    pub bus_pubsub_per_message: Option<f64>,
    /// Calls per Redis server during the run (heartbeats included), in the order of the
    /// target's servers: how a Redis Cluster's primaries shared the work.
    #[serde(default)]
    pub per_server: Vec<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub report: Option<Report>,
    pub redis: Option<RedisDelta>,
    pub failure: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetResult {
    pub kind: Kind,
    pub title: String,
    pub version: String,
    pub urls: Vec<String>,
    /// Run name (idle, fanout, fanout-half, topics, queue, churn) → result.
    pub runs: BTreeMap<String, RunResult>,
    pub skipped: Option<String>,
}

impl TargetResult {
    pub fn report(&self, run: &str) -> Option<&Report> {
        self.runs.get(run)?.report.as_ref()
    }
}

/// Redis commands per message for one shape of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scaling {
    pub nodes: usize,
    pub subscribers: usize,
    pub messages: u64,
    pub deliveries: u64,
    pub redis: RedisDelta,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub os: String,
    pub nofile: String,
    pub port_range: String,
    pub somaxconn: String,
    /// Connection-tracking entries and limit at the start ("off" when not tracked).
    #[serde(default)]
    pub conntrack: String,
    pub load_at_start: String,
    #[serde(default)]
    pub load_at_end: String,
    pub rustc: String,
    pub commit: String,
    pub date: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub command_line: String,
    pub plan: Plan,
    pub notes: Vec<String>,
    pub targets: Vec<TargetResult>,
    pub scaling: Vec<Scaling>,
    /// The interleaved rounds the throughput and latency goals are read from.
    #[serde(default)]
    pub head_to_head: Option<rounds::HeadToHead>,
    /// The hooks' latency and the HTTP backend's throughput.
    #[serde(default)]
    pub applications: Option<apps::Applications>,
    /// The nodes on a Redis Cluster, per number of primaries.
    #[serde(default)]
    pub sharded: Option<sharded::Sharded>,
    pub elapsed_s: f64,
    /// Appended to the report as it is.
    #[serde(default)]
    pub appendix: String,
}

impl Results {
    pub fn target(&self, kind: Kind) -> Option<&TargetResult> {
        self.targets.iter().find(|t| t.kind == kind && t.skipped.is_none())
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_else(|_| "?".into())
}

fn output_of(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

/// The commit measured: `BENCH_COMMIT` if set, else git's HEAD, flagged when the broker's
/// sources differ from it.
fn commit() -> String {
    if let Ok(commit) = std::env::var("BENCH_COMMIT") {
        return commit;
    }
    let head = output_of("git", &["rev-parse", "--short", "HEAD"]);
    let clean = std::process::Command::new("git")
        .args(["diff", "--quiet", "HEAD", "--", "node", "Cargo.lock"])
        .status()
        .is_ok_and(|s| s.success());
    if clean {
        head
    } else {
        format!("{head} with uncommitted changes in node/")
    }
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| format!("{:.1} GiB", kib / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "?".into());
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
        .unwrap_or_else(|| "?".into());
    let nofile = stats::nofile_limit().map(|(s, h)| format!("{s} (hard {h})")).unwrap_or_else(|| "?".into());
    Machine {
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu_model,
        memory,
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        os,
        nofile,
        port_range: read_trimmed("/proc/sys/net/ipv4/ip_local_port_range").replace('\t', "-"),
        somaxconn: read_trimmed("/proc/sys/net/core/somaxconn"),
        conntrack: stats::conntrack()
            .map(|(count, max)| format!("{count} of {max} entries"))
            .unwrap_or_else(|| "off".into()),
        load_at_start: read_trimmed("/proc/loadavg"),
        load_at_end: String::new(),
        rustc: output_of("rustc", &["--version"]),
        commit: commit(),
        date: output_of("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    }
}

/// Runs the whole suite and writes the report. Returns an error for a setup problem.
pub async fn run(args: SuiteArgs) -> Result<Results, String> {
    if let Some(path) = &args.render {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut results: Results = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a results file: {e}", path.display()))?;
        if let Some(notes) = &args.notes {
            results.appendix = std::fs::read_to_string(notes)
                .map_err(|e| format!("cannot read {}: {e}", notes.display()))?;
        }
        std::fs::write(&args.out, markdown::render(&results))
            .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
        return Ok(results);
    }
    let started = Instant::now();
    let bins = Bins {
        stampede: args.bin_dir.join("stampede"),
        bench: args.bin_dir.join("stampede-bench"),
        baseline: args.bin_dir.join("ws-baseline"),
    };
    let mut kinds = Vec::new();
    let mut applications = false;
    let mut sharded = false;
    for name in &args.targets {
        match name.trim() {
            "apps" => {
                applications = true;
                continue;
            }
            "cluster-sharded" | "sharded" => {
                sharded = true;
                continue;
            }
            _ => {}
        }
        let kind = Kind::parse(name.trim()).ok_or_else(|| format!("unknown target {name:?}"))?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds.sort();
    let mut skipped = BTreeMap::new();
    for kind in &kinds {
        if *kind == Kind::Rabbitmq && args.rabbitmq_url.is_some() {
            continue;
        }
        let missing = targets::missing(*kind, &bins);
        if !missing.is_empty() {
            let text = missing.join("; ");
            if !args.skip_missing {
                return Err(format!("{} cannot run: {text}\n(or pass --skip-missing)", kind.key()));
            }
            eprintln!("bench-suite: skipping {}: {text}", kind.key());
            skipped.insert(*kind, text);
        }
    }
    if applications {
        let missing = targets::missing(Kind::Memory, &bins);
        if !missing.is_empty() {
            let text = missing.join("; ");
            if !args.skip_missing {
                return Err(format!("apps cannot run: {text}\n(or pass --skip-missing)"));
            }
            eprintln!("bench-suite: skipping apps: {text}");
            applications = false;
        }
    }
    if sharded {
        let missing = targets::missing(Kind::Cluster, &bins);
        if !missing.is_empty() {
            let text = missing.join("; ");
            if !args.skip_missing {
                return Err(format!("cluster-sharded cannot run: {text}\n(or pass --skip-missing)"));
            }
            eprintln!("bench-suite: skipping cluster-sharded: {text}");
            sharded = false;
        }
    }
    let (plan, idle_note) = Plan::new(&args, stats::nofile_limit());
    let mut results = Results {
        machine: machine(),
        command_line: if args.command_line.is_empty() {
            std::env::args().collect::<Vec<_>>().join(" ")
        } else {
            args.command_line.clone()
        },
        plan: plan.clone(),
        notes: idle_note.into_iter().collect(),
        targets: Vec::new(),
        scaling: Vec::new(),
        head_to_head: None,
        applications: None,
        sharded: None,
        elapsed_s: 0.0,
        appendix: match &args.notes {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
            }
            None => String::new(),
        },
    };
    for kind in kinds.iter().copied() {
        let mut target = TargetResult {
            kind,
            title: kind.title(plan.nodes),
            version: String::new(),
            urls: Vec::new(),
            runs: BTreeMap::new(),
            skipped: skipped.get(&kind).cloned(),
        };
        if target.skipped.is_none() {
            eprintln!("\n=== {} ===", target.title);
            match targets::start(kind, &bins, plan.nodes, plan.node_workers, args.rabbitmq_url.as_deref())
                .await
            {
                Ok(running) => {
                    target.version = running.version.clone();
                    target.urls = running.urls.clone();
                    run_target(&bins, &plan, &running, &mut target, &mut results.scaling).await;
                    running.stop().await;
                }
                Err(e) => {
                    eprintln!("bench-suite: {} did not start: {e}", target.title);
                    target.skipped = Some(format!("did not start: {e}"));
                }
            }
        }
        results.targets.push(target);
        // Let the machine calm down between targets (sockets in TIME_WAIT, freed memory).
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if sharded {
        results.sharded = Some(sharded::run(&bins, &plan).await);
    }
    let contenders: Vec<Kind> =
        rounds::KINDS.into_iter().filter(|k| kinds.contains(k) && !skipped.contains_key(k)).collect();
    if plan.rounds > 0 && contenders.len() >= 2 {
        results.head_to_head = rounds::run(&bins, &plan, &contenders).await;
    }
    if applications {
        results.applications = apps::run(&bins, &plan).await;
    }
    results.elapsed_s = started.elapsed().as_secs_f64();
    results.machine.load_at_end = read_trimmed("/proc/loadavg");
    if let Some(dir) = args.results.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(&args.results, json)
        .map_err(|e| format!("cannot write {}: {e}", args.results.display()))?;
    if let Some(dir) = args.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&args.out, markdown::render(&results))
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    eprintln!(
        "\nbench-suite: wrote {} and {} in {:.0} s",
        args.out.display(),
        args.results.display(),
        results.elapsed_s
    );
    Ok(results)
}

/// One generator invocation.
struct Invocation<'a> {
    scenario: &'a str,
    extra: Vec<String>,
    urls: &'a [String],
    rate: f64,
    duration_s: f64,
    warmup_s: f64,
}

async fn run_target(
    bins: &Bins,
    plan: &Plan,
    running: &Running,
    target: &mut TargetResult,
    scaling: &mut Vec<Scaling>,
) {
    let background = background_rate(plan, running).await;
    let urls = &running.urls;
    let n = |x: usize| x.to_string();
    let mut names = vec!["idle", "fanout", "topics"];
    if running.protocol == crate::conn::Protocol::Stomp {
        names.push("queue");
    }
    names.push("churn");
    for name in names {
        let invocation = Invocation::closed_loop(plan, name, urls);
        let result = invoke(bins, running, &invocation, background).await;
        let peak = result.report.as_ref().filter(|_| name == "fanout").map(|r| r.sent_per_s);
        target.runs.insert(name.to_owned(), result);
        if let Some(peak) = peak.filter(|p| *p > 0.0) {
            // Latency at half the peak rate, open loop.
            let half =
                Invocation { rate: (peak / 2.0).max(1.0), ..Invocation::closed_loop(plan, "fanout", urls) };
            let result = invoke(bins, running, &half, background).await;
            target.runs.insert("fanout-half".to_owned(), result);
        }
    }
    if !running.redis_servers().is_empty() {
        let shapes =
            [(1, 1), (1, plan.subscribers), (plan.nodes, plan.nodes), (plan.nodes, plan.subscribers)];
        for (nodes, subscribers) in shapes {
            let nodes = nodes.min(urls.len());
            let invocation = Invocation {
                scenario: "fanout",
                extra: vec!["--subscribers".into(), n(subscribers)],
                urls: &urls[..nodes],
                rate: plan.scaling_rate,
                duration_s: plan.scaling_duration_s,
                warmup_s: 0.5,
            };
            let result = invoke(bins, running, &invocation, background).await;
            if let (Some(report), Some(redis)) = (result.report, result.redis) {
                scaling.push(Scaling {
                    nodes,
                    subscribers,
                    messages: report.sent_total,
                    deliveries: report.received_total,
                    redis,
                });
            }
        }
    }
}

impl<'a> Invocation<'a> {
    /// `scenario` (idle, fanout, topics, queue, churn) in the closed loop, with the plan's
    /// parameters: the same for every target.
    fn closed_loop(plan: &Plan, scenario: &'a str, urls: &'a [String]) -> Invocation<'a> {
        let n = |x: usize| x.to_string();
        let extra = match scenario {
            "idle" => vec![
                "--connections".into(),
                n(plan.idle),
                "--hold".into(),
                format!("{}ms", (plan.idle_hold_s * 1000.0) as u64),
                // A broker slow to accept thousands of connections at once is given time.
                "--connect-timeout".into(),
                "30s".into(),
            ],
            "fanout" => vec!["--subscribers".into(), n(plan.subscribers)],
            "topics" => vec!["--connections".into(), n(plan.topics)],
            "queue" => vec![
                "--producers".into(),
                n(plan.producers),
                "--consumers".into(),
                n(plan.consumers),
                "--prefetch".into(),
                plan.prefetch.to_string(),
            ],
            "churn" => vec!["--concurrency".into(), n(plan.churn_concurrency)],
            _ => Vec::new(),
        };
        Invocation { scenario, extra, urls, rate: 0.0, duration_s: plan.duration_s, warmup_s: plan.warmup_s }
    }
}

/// The Redis commands per second the target's nodes send while no client does anything
/// (heartbeats, probes), subtracted from each run's count; 0 without Redis.
async fn background_rate(plan: &Plan, running: &Running) -> f64 {
    let servers = running.redis_servers();
    if servers.is_empty() {
        return 0.0;
    }
    let seconds = if plan.duration_s < 5.0 { 1.0 } else { 3.0 };
    let before = targets::command_stats(&servers).await;
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let after = targets::command_stats(&servers).await;
    let calls: u64 = after.iter().map(|(k, v)| v.saturating_sub(*before.get(k).unwrap_or(&0))).sum();
    calls as f64 / seconds
}

/// `after − before`, per key, keeping what grew.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Entries kept free in the conntrack table beyond what a run asks for: the connections of the
/// throughput scenarios and of the other processes on the machine.
const CONNTRACK_MARGIN: u64 = 5_000;

/// The longest wait for room in the conntrack table: entries of closed connections expire after
/// `nf_conntrack_tcp_timeout_time_wait` (120 s by default).
const CONNTRACK_PATIENCE: Duration = Duration::from_secs(130);

/// Waits until `need` more connections fit in the conntrack table, at most
/// [`CONNTRACK_PATIENCE`]. Where loopback connections are tracked, the churn scenario fills the
/// table (each of its 100,000+ connections keeps an entry for 120 s after it closes) and the
/// next target's idle run then lost its SYNs to the full table: 4,669 of 19,700 connections and
/// 256 connect timeouts (bench/notes.md). Returns a note for the report when it had to wait or
/// gave up.
async fn conntrack_room(need: u64) -> Option<String> {
    let (count, max) = stats::conntrack()?;
    if count + need <= max {
        return None;
    }
    let started = Instant::now();
    eprintln!(
        "bench-suite: the conntrack table holds {count} of {max} entries and the next run opens up to \
         {need} connections; waiting (at most {CONNTRACK_PATIENCE:?}) for closed connections' entries to expire"
    );
    let mut last = count;
    while started.elapsed() < CONNTRACK_PATIENCE {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (count, max) = stats::conntrack()?;
        last = count;
        if count + need <= max {
            return Some(format!(
                "waited {:.0} s before this run for room in the kernel's connection-tracking table \
                 ({count} of {max} entries then; see bench/notes.md)",
                started.elapsed().as_secs_f64()
            ));
        }
    }
    Some(format!(
        "the kernel's connection-tracking table still held {last} of {max} entries after {:.0} s; \
         this run may have lost connections to it (bench/notes.md)",
        started.elapsed().as_secs_f64()
    ))
}

/// Runs `stampede-bench` once against `running` and collects its report and the Redis delta.
async fn invoke(bins: &Bins, running: &Running, inv: &Invocation<'_>, background: f64) -> RunResult {
    let json =
        std::env::temp_dir().join(format!("stampede-bench-{}-{}.json", std::process::id(), inv.scenario));
    let _ = std::fs::remove_file(&json);
    let mut command = tokio::process::Command::new(&bins.bench);
    command.arg(inv.scenario).args(&inv.extra);
    for url in inv.urls {
        command.args(["--url", url]);
    }
    command
        .args([
            "--protocol",
            match running.protocol {
                crate::conn::Protocol::Raw => "raw",
                crate::conn::Protocol::Stomp => "stomp",
                crate::conn::Protocol::Nats => "nats",
            },
        ])
        .args(["--duration", &format!("{}ms", (inv.duration_s * 1000.0) as u64)])
        .args(["--warmup", &format!("{}ms", (inv.warmup_s * 1000.0) as u64)])
        .args(["--rate", &format!("{:.1}", inv.rate)])
        .arg("--json")
        .arg(&json)
        .args(["--label", &running.title()]);
    if let Some((login, passcode)) = &running.login {
        command.args(["--login", login, "--passcode", passcode]);
    }
    for pid in &running.pids {
        command.args(["--broker-pid", &pid.to_string()]);
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
    eprintln!(
        "\n--- {}: {} {}{} ---",
        running.kind.key(),
        inv.scenario,
        inv.extra.join(" "),
        if inv.rate > 0.0 { format!(" --rate {:.0}", inv.rate) } else { String::new() }
    );
    let servers = running.redis_servers();
    let redis_before =
        if servers.is_empty() { None } else { Some(targets::command_stats_each(&servers).await) };
    let bus_before =
        if running.redis_cluster.is_some() { Some(targets::bus_stats(&servers).await) } else { None };
    // Room in the conntrack table for every connection the run opens, before it starts.
    let needs = match inv.scenario {
        "idle" => inv.extra.iter().skip_while(|a| *a != "--connections").nth(1).and_then(|n| n.parse().ok()),
        _ => None,
    };
    let waited = conntrack_room(needs.unwrap_or(0) + CONNTRACK_MARGIN).await;
    let started = Instant::now();
    // Setup (up to the generator's own limit), warm-up, window, drain, and a margin.
    let patience = Duration::from_secs_f64(inv.warmup_s + inv.duration_s) + Duration::from_secs(180 + 30);
    let output = match tokio::time::timeout(patience, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            return RunResult {
                failure: Some(format!("cannot run {}: {e}", bins.bench.display())),
                ..RunResult::default()
            }
        }
        Err(_) => {
            return RunResult {
                failure: Some(format!("stampede-bench ran longer than {patience:?}")),
                ..RunResult::default()
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    print!("{}", String::from_utf8_lossy(&output.stdout));
    let report: Option<Report> =
        std::fs::read_to_string(&json).ok().and_then(|text| serde_json::from_str(&text).ok());
    let _ = std::fs::remove_file(&json);
    let mut result = RunResult { report, redis: None, failure: None };
    if let (Some(report), Some(note)) = (result.report.as_mut(), waited) {
        report.notes.push(note);
    }
    if !output.status.success() || result.report.is_none() {
        result.failure = Some(format!("stampede-bench exited with {}", output.status));
    }
    if let Some(before) = redis_before {
        let after = targets::command_stats_each(&servers).await;
        let each: Vec<BTreeMap<String, u64>> = before.iter().zip(&after).map(|(b, a)| delta(b, a)).collect();
        let mut commands = BTreeMap::new();
        for (name, calls) in each.iter().flatten() {
            *commands.entry(name.clone()).or_insert(0) += calls;
        }
        let bus = match bus_before {
            Some(before) => delta(&before, &targets::bus_stats(&servers).await),
            None => BTreeMap::new(),
        };
        let total: u64 = commands.values().sum();
        let bg = background * seconds;
        let messages = result.report.as_ref().map(|r| r.sent_total).unwrap_or(0);
        let per = |calls: f64| (messages > 0).then(|| calls / messages as f64);
        let count = |map: &BTreeMap<String, u64>, names: &[&str]| {
            names.iter().map(|n| *map.get(*n).unwrap_or(&0)).sum::<u64>() as f64
        };
        result.redis = Some(RedisDelta {
            publish_per_message: per(count(&commands, &["publish", "spublish"])),
            per_message: per((total as f64 - bg).max(0.0)),
            bus_pubsub_per_message: running
                .redis_cluster
                .as_ref()
                .and_then(|_| per(count(&bus, &["publish", "publishshard"]))),
            commands,
            total,
            background: bg,
            seconds,
            bus,
            per_server: each.iter().map(|m| m.values().sum()).collect(),
        });
    }
    // Let the broker close what the generator left behind before the next run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    result
}

/// The `bench-suite` binary's main.
pub fn main_with(args: SuiteArgs) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench-suite: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // On SIGINT or SIGTERM the run is dropped: every target and generator it started is killed
    // by its owner's destructor (and kill_on_drop), so nothing is left running.
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(args) => outcome,
            _ = interrupted() => Err("interrupted; targets stopped".to_owned()),
        }
    });
    match outcome {
        Ok(results) => {
            print!("{}", markdown::summary(&results));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-suite: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
