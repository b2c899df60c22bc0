//! The sharded phase (`cluster-sharded` in `--targets`): Stampede's N nodes on a Redis Cluster
//! (`redis-cluster://`: SPUBLISH and SSUBSCRIBE, each destination's channel in its destination's
//! slot) of 1, 2 and 3 primaries in turn (`--shards`), each a fresh cluster without replicas and
//! without persistence. Per count it runs the scenarios where shards matter, with the plan's
//! parameters: fan-out (one topic: one slot on one primary), many topics (a topic per
//! connection, spread over the slots and so over every primary) and the queue (one stream, in
//! its slot). Counted as for the cluster target: every redis-server's CPU and memory with the
//! nodes', Redis commands per message summed over the primaries, and the cluster-bus messages
//! each published message caused (`CLUSTER INFO`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::targets::{self, Bins};
use super::{background_rate, invoke, Invocation, Plan, RunResult};

/// The scenarios run per number of primaries.
pub const SCENARIOS: [&str; 3] = ["fanout", "topics", "queue"];

/// Every count of primaries measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sharded {
    /// Stampede nodes on each cluster.
    pub nodes: usize,
    pub counts: Vec<ShardCount>,
}

/// One Redis Cluster and its runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShardCount {
    pub primaries: usize,
    pub version: String,
    pub urls: Vec<String>,
    /// Scenario (fanout, topics, queue) → result.
    pub runs: BTreeMap<String, RunResult>,
    /// Why this count has no runs (the cluster or the nodes did not start).
    pub failure: Option<String>,
}

/// Runs the phase: for each count of the plan's `shards`, a Redis Cluster and the nodes on it,
/// the [`SCENARIOS`], then everything stopped before the next count.
pub async fn run(bins: &Bins, plan: &Plan) -> Sharded {
    let mut sharded = Sharded { nodes: plan.nodes, counts: Vec::new() };
    for &primaries in &plan.shards {
        eprintln!("\n=== {} ===", targets::sharded_title(plan.nodes, primaries));
        let mut count = ShardCount { primaries, ..ShardCount::default() };
        match targets::start_sharded(bins, plan.nodes, plan.node_workers, primaries).await {
            Ok(running) => {
                count.version = running.version.clone();
                count.urls = running.urls.clone();
                let background = background_rate(plan, &running).await;
                for scenario in SCENARIOS {
                    let invocation = Invocation::closed_loop(plan, scenario, &running.urls);
                    let result = invoke(bins, &running, &invocation, background).await;
                    count.runs.insert(scenario.to_owned(), result);
                }
                running.stop().await;
            }
            Err(e) => {
                eprintln!("bench-suite: the Redis Cluster of {primaries} did not start: {e}");
                count.failure = Some(e);
            }
        }
        sharded.counts.push(count);
        // Let the machine calm down between clusters, as between targets.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    sharded
}
