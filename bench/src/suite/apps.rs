//! The applications phase: what a node's connect and subscribe hooks add to a client's
//! handshake, and what an HTTP backend carries (docs/applications.md).
//!
//! Two single nodes on the embedded engine run side by side: one plain, one whose
//! `--connect-hook`, `--subscribe-hook` and `--app-http` point at the load generator's own
//! backend (`stampede-bench --app-listen`, [`crate::app`]), which each run of `stampede-bench`
//! serves on the same port while it runs. The connect scenario runs on each in alternating
//! rounds, so the difference (a fraction of a millisecond) is read within a round on a machine
//! that drifts; then the app-http scenario runs on the hooked node.

use serde::{Deserialize, Serialize};
use stampede_testkit::process::free_port;

use super::targets::{self, Bins, Kind, Running};
use super::{invoke, Invocation, Plan, RunResult};
use crate::report::Report;
use crate::stats::Latency;

/// Every run of the phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applications {
    /// Connect scenario: connections measured per run, and how many at a time.
    pub connections: usize,
    pub concurrency: usize,
    /// App-http scenario: clients, SENDs in flight each, measured window and warm-up.
    pub clients: usize,
    pub window: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// The hooked node's own settings, as run.
    pub node_args: Vec<String>,
    pub rounds: Vec<ConnectRound>,
    pub http: RunResult,
}

/// One round of the connect scenario: the plain node, then the hooked one.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnectRound {
    pub plain: RunResult,
    pub hooked: RunResult,
}

/// Which of a connect run's two latencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    Connect,
    Subscribe,
}

impl Applications {
    /// The latencies of `handshake` over the rounds, on the hooked node or the plain one.
    pub fn series(&self, hooked: bool, handshake: Handshake) -> Vec<&Latency> {
        self.rounds
            .iter()
            .filter_map(|round| {
                let report = if hooked { &round.hooked } else { &round.plain }.report.as_ref()?;
                match handshake {
                    Handshake::Connect => report.connect_latency.as_ref(),
                    Handshake::Subscribe => report.subscribe_latency.as_ref(),
                }
            })
            .collect()
    }

    /// The connect runs' reports, on the hooked node or the plain one.
    pub fn reports(&self, hooked: bool) -> Vec<&Report> {
        self.rounds.iter().filter_map(|r| if hooked { &r.hooked } else { &r.plain }.report.as_ref()).collect()
    }
}

/// Starts the two nodes, runs the rounds and the app-http scenario, stops the nodes. `None` when
/// a node does not start (said on stderr).
pub async fn run(bins: &Bins, plan: &Plan) -> Option<Applications> {
    let backend = format!("127.0.0.1:{}", free_port());
    let node_args = vec![
        "--connect-hook".to_owned(),
        format!("http://{backend}/connect"),
        "--subscribe-hook".to_owned(),
        format!("http://{backend}/subscribe"),
        "--app-http".to_owned(),
        format!("/app/*=http://{backend}/echo"),
    ];
    let args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let plain = match targets::start_with(Kind::Memory, bins, 1, 0, None, &[]).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("bench-suite: applications: the plain node did not start: {e}");
            return None;
        }
    };
    let hooked = match targets::start_with(Kind::Memory, bins, 1, 0, None, &args).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("bench-suite: applications: the node with hooks did not start: {e}");
            plain.stop().await;
            return None;
        }
    };
    let mut apps = Applications {
        connections: plan.app_connections,
        concurrency: plan.app_concurrency,
        clients: plan.app_clients,
        window: plan.app_window,
        duration_s: plan.duration_s,
        warmup_s: plan.warmup_s,
        node_args: node_args.clone(),
        rounds: Vec::new(),
        http: RunResult::default(),
    };
    let rounds = plan.rounds.max(1);
    for round in 0..rounds {
        eprintln!("\n=== applications: connect, round {} of {rounds} ===", round + 1);
        let plain_run = connect(bins, plan, &plain, None).await;
        let hooked_run = connect(bins, plan, &hooked, Some(&backend)).await;
        apps.rounds.push(ConnectRound { plain: plain_run, hooked: hooked_run });
    }
    eprintln!("\n=== applications: HTTP backend ===");
    let extra = vec![
        "--clients".to_owned(),
        plan.app_clients.to_string(),
        "--window".to_owned(),
        plan.app_window.to_string(),
        "--app-listen".to_owned(),
        backend.clone(),
    ];
    let invocation = Invocation {
        scenario: "app-http",
        extra,
        urls: &hooked.urls,
        rate: 0.0,
        duration_s: plan.duration_s,
        warmup_s: plan.warmup_s,
    };
    apps.http = invoke(bins, &hooked, &invocation, 0.0).await;
    plain.stop().await;
    hooked.stop().await;
    Some(apps)
}

/// One connect run on `node`, serving the backend on `backend` when given.
async fn connect(bins: &Bins, plan: &Plan, node: &Running, backend: Option<&str>) -> RunResult {
    let mut extra = vec![
        "--connections".to_owned(),
        plan.app_connections.to_string(),
        "--concurrency".to_owned(),
        plan.app_concurrency.to_string(),
    ];
    if let Some(addr) = backend {
        extra.extend(["--app-listen".to_owned(), addr.to_owned()]);
    }
    let invocation = Invocation {
        scenario: "connect",
        extra,
        urls: &node.urls,
        rate: 0.0,
        duration_s: plan.duration_s,
        warmup_s: plan.warmup_s,
    };
    invoke(bins, node, &invocation, 0.0).await
}
