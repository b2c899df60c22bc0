//! The `stampede-bench` command line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::conn::{Endpoint, Protocol};
use crate::report::Report;
use crate::scenario::{self, Common, Scenario};

const AFTER_HELP: &str = "\
Every scenario connects its clients, runs a warm-up and then the measured window (--duration),
drains for 2 s, and prints a table (or JSON with --json FILE, '-' for stdout). Latency is
publish-to-delivery, from a timestamp at the start of every body, as HdrHistogram percentiles.
--rate 0 (the default) runs closed loop: publishers go as fast as receivers keep up, at most a
window of messages ahead. Connections come from 127.0.0.2, 127.0.0.3, ... (--source-ips), so more
connections than one address's ephemeral ports fit; only loopback targets are accepted. The NATS
mode runs fanout, topics, idle and churn (core NATS has no queues with acknowledgements).

Examples:
  stampede-bench fanout --url ws://127.0.0.1:8080/ws --subscribers 200 --size 128
  stampede-bench queue --url ws://127.0.0.1:15674/ws --login guest --passcode guest
  stampede-bench fanout --url tcp://127.0.0.1:61613               # STOMP over plain TCP
  stampede-bench fanout --url ws://127.0.0.1:8443/ --protocol nats # core NATS over WebSocket
  stampede-bench idle --connections 50000 --broker-pid $(pgrep -n stampede)

The application scenarios serve the node's hooks and HTTP backend from this process
(--app-listen; routes /connect, /subscribe, /echo), so the node is started pointing at it:
  stampede --connect-hook http://127.0.0.1:9100/connect \\
           --subscribe-hook http://127.0.0.1:9100/subscribe \\
           --app-http '/app/*=http://127.0.0.1:9100/echo'
  stampede-bench connect --app-listen 127.0.0.1:9100 --connections 2000
  stampede-bench app-http --app-listen 127.0.0.1:9100 --clients 16";

/// Load generator for STOMP over WebSocket: Stampede, RabbitMQ Web-STOMP, any STOMP broker.
#[derive(Parser, Debug)]
#[command(name = "stampede-bench", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: ScenarioArgs,
    /// Broker URL; repeat it to spread the connections over several nodes (round-robin).
    #[arg(long = "url", global = true, default_value = "ws://127.0.0.1:8080/ws")]
    pub urls: Vec<String>,
    /// stomp (ws:// or tcp:// URLs), nats (core NATS over WebSocket: fanout, topics, idle,
    /// churn), or raw for the ws-baseline server.
    #[arg(long, global = true, value_enum, default_value_t = Protocol::Stomp)]
    pub protocol: Protocol,
    /// STOMP login (RabbitMQ: guest).
    #[arg(long, global = true)]
    pub login: Option<String>,
    #[arg(long, global = true, default_value = "guest")]
    pub passcode: String,
    /// Length of the measured window.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Time before the window, not measured.
    #[arg(long, global = true, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Message body size in bytes (at least 17: a 16-digit timestamp and padding).
    #[arg(long, global = true, default_value_t = 256)]
    pub size: usize,
    /// Messages per second in total (churn: cycles per second); 0 = closed loop, as fast as
    /// the receivers keep up.
    #[arg(long, global = true, default_value_t = 0.0)]
    pub rate: f64,
    /// Flow-control window: fanout, messages ahead of the average subscriber (128); topics,
    /// messages in flight per connection (4); queue, messages in flight (1024).
    #[arg(long, global = true)]
    pub window: Option<u64>,
    /// Source addresses 127.0.0.2 ..= 127.0.0.(1+N), used round-robin; 0 = kernel's choice.
    #[arg(long, global = true, default_value_t = 32)]
    pub source_ips: u8,
    /// Connections opened at once while setting up.
    #[arg(long, global = true, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Limit for one connection's TCP + WebSocket + STOMP handshake (and each receipt).
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Limit for the whole connection phase; connections not opened by then are not tried.
    #[arg(long, global = true, default_value = "180s", value_parser = humantime::parse_duration)]
    pub setup_timeout: Duration,
    /// Broker process to sample (RSS, CPU time) from /proc; repeat for several nodes.
    #[arg(long = "broker-pid", global = true)]
    pub broker_pids: Vec<u32>,
    /// Write the report as JSON to this file ('-' = stdout, and no table).
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// No progress line.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Free text copied into the report (the suite names the target with it).
    #[arg(long, global = true, default_value = "")]
    pub label: String,
    /// Prefix of destination names; random by default, so runs never share destinations.
    #[arg(long, global = true)]
    pub prefix: Option<String>,
    /// Serve the application backend (connect and subscribe hooks, the /echo HTTP backend) on
    /// this address while the scenario runs, for a node started with --connect-hook,
    /// --subscribe-hook or --app-http pointing at it.
    #[arg(long, global = true)]
    pub app_listen: Option<std::net::SocketAddr>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ScenarioArgs {
    /// One topic, N subscribers, P publishers.
    Fanout {
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
    },
    /// N connections, each subscribed to its own topic and publishing to it.
    Topics {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
    /// P producers, C consumers of one queue with client-individual acks.
    Queue {
        #[arg(long, default_value_t = 4)]
        producers: usize,
        #[arg(long, default_value_t = 4)]
        consumers: usize,
        /// prefetch-count of each consumer.
        #[arg(long, default_value_t = 100)]
        prefetch: u32,
    },
    /// N connections with one subscription each, held idle; the broker's RSS per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// How long the connections are held before RSS is sampled.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        hold: Duration,
    },
    /// Workers that connect, subscribe and disconnect in a loop.
    Churn {
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// N connections, K at a time, each CONNECT, one SUBSCRIBE (receipt) and DISCONNECT; times
    /// CONNECT → CONNECTED and SUBSCRIBE → RECEIPT. Run it against a node with and without
    /// --connect-hook and --subscribe-hook to see what the hooks add (with --app-listen).
    Connect {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// C clients SEND to an application destination that the node POSTs to an HTTP backend
    /// (--app-http; with --app-listen, this process's /echo) and read the replies on
    /// /user/queue/reply, --window SENDs in flight each (4): replies per second, SEND → reply.
    AppHttp {
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value = "/app/echo")]
        destination: String,
    },
}

impl ScenarioArgs {
    pub fn scenario(&self) -> Scenario {
        match self.clone() {
            ScenarioArgs::Fanout { subscribers, publishers } => Scenario::Fanout { subscribers, publishers },
            ScenarioArgs::Topics { connections } => Scenario::Topics { connections },
            ScenarioArgs::Queue { producers, consumers, prefetch } => {
                Scenario::Queue { producers, consumers, prefetch }
            }
            ScenarioArgs::Idle { connections, hold } => Scenario::Idle { connections, hold },
            ScenarioArgs::Churn { concurrency } => Scenario::Churn { concurrency },
            ScenarioArgs::Connect { connections, concurrency } => {
                Scenario::Connect { connections, concurrency }
            }
            ScenarioArgs::AppHttp { clients, destination } => Scenario::AppHttp { clients, destination },
        }
    }
}

/// Runs the scenario the command line names and returns its report.
pub async fn run(cli: &Cli) -> Result<Report, String> {
    let login = cli.login.clone().map(|l| (l, cli.passcode.clone()));
    let mut endpoint =
        Endpoint::new(cli.urls.clone(), cli.protocol, login, cli.source_ips, cli.connect_timeout)
            .map_err(|e| e.to_string())?;
    let scenario = cli.scenario.scenario();
    if matches!(scenario, Scenario::Idle { .. } | Scenario::Churn { .. } | Scenario::Connect { .. }) {
        endpoint.read_buffer = 4096;
    }
    let prefix = cli.prefix.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        format!("bench-{}-{nanos:x}", std::process::id())
    });
    let common = Common {
        endpoint: Arc::new(endpoint),
        duration: cli.duration,
        warmup: cli.warmup,
        size: cli.size,
        rate: cli.rate.max(0.0),
        window: cli.window,
        connect_concurrency: cli.connect_concurrency,
        setup_timeout: cli.setup_timeout,
        prefix,
        broker_pids: cli.broker_pids.clone(),
        progress: !cli.quiet,
        label: cli.label.clone(),
        source_ips: cli.source_ips,
        app_listen: cli.app_listen,
    };
    Ok(scenario::run(&common, &scenario).await)
}
