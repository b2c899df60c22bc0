//! The head-to-head phase: the targets whose ratios carry the goals (the raw baseline, Stampede on
//! one node, Stampede as N nodes) run side by side, and the fan-out is measured in interleaved
//! rounds. Each round runs every target once, in an order that rotates from round to round, so a
//! machine that drifts over minutes moves all of them alike; a ratio is taken within each round
//! and the goal reads the median over the rounds.
//!
//! Two passes: the peak (closed loop), then latency in the open loop at half each target's median
//! peak, with the raw baseline also run at Stampede's half rate, so that the two tails are
//! compared at the same load. The peers (RabbitMQ, ActiveMQ, NATS) take part in the peak pass
//! only: Stampede's fan-out is compared with each of them round by round; their latency comes
//! from the half-rate run of the per-target phase.

use serde::{Deserialize, Serialize};

use super::targets::{self, Bins, Kind, Running};
use super::{invoke, Invocation, Plan};

/// What one run of a round measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pass {
    /// Closed loop: the most the target delivers.
    Peak,
    /// Open loop at half this target's median peak publish rate.
    Half,
    /// Open loop at half Stampede's (1 node) median peak publish rate: the same load for all.
    AtOneNodeHalf,
}

/// One run of one round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoundRun {
    pub round: usize,
    pub kind: Kind,
    pub pass: Pass,
    /// Publish rate asked for (0: closed loop).
    pub rate: f64,
    pub published_per_s: f64,
    pub deliveries_per_s: f64,
    pub p99_ms: Option<f64>,
    pub broker_cpu_s: Option<f64>,
    pub failure: Option<String>,
}

/// Every run of the phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HeadToHead {
    pub rounds: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub subscribers: usize,
    pub runs: Vec<RoundRun>,
}

/// The kinds that take part, in the suite's order.
pub const KINDS: [Kind; 6] =
    [Kind::Baseline, Kind::Memory, Kind::Cluster, Kind::Rabbitmq, Kind::Activemq, Kind::Nats];

impl HeadToHead {
    /// `kind`'s value of `pass` in `round`, unless that run failed.
    pub fn value(
        &self,
        round: usize,
        kind: Kind,
        pass: Pass,
        f: impl Fn(&RoundRun) -> Option<f64>,
    ) -> Option<f64> {
        self.runs
            .iter()
            .find(|r| r.round == round && r.kind == kind && r.pass == pass && r.failure.is_none())
            .and_then(f)
    }

    /// `kind`'s values of `pass`, one per round that measured it.
    pub fn series(&self, kind: Kind, pass: Pass, f: impl Fn(&RoundRun) -> Option<f64>) -> Vec<f64> {
        (0..self.rounds).filter_map(|round| self.value(round, kind, pass, &f)).collect()
    }

    /// a / b in `round`, when both were measured.
    pub fn ratio_in(
        &self,
        round: usize,
        a: Kind,
        b: Kind,
        pass: Pass,
        f: impl Fn(&RoundRun) -> Option<f64>,
    ) -> Option<f64> {
        let x = self.value(round, a, pass, &f)?;
        let y = self.value(round, b, pass, &f).filter(|y| *y > 0.0)?;
        Some(x / y)
    }

    /// a / b within each round where both were measured.
    pub fn ratios(&self, a: Kind, b: Kind, pass: Pass, f: impl Fn(&RoundRun) -> Option<f64>) -> Vec<f64> {
        (0..self.rounds).filter_map(|round| self.ratio_in(round, a, b, pass, &f)).collect()
    }
}

/// Peak deliveries per second of a run, when it delivered anything.
pub fn delivered(r: &RoundRun) -> Option<f64> {
    Some(r.deliveries_per_s).filter(|v| *v > 0.0)
}

/// p99 of a run, in ms.
pub fn p99(r: &RoundRun) -> Option<f64> {
    r.p99_ms
}

/// The median, the least and the greatest of `values` (None when empty).
pub fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    Some((median, sorted[0], sorted[n - 1]))
}

/// Round `round` runs the targets starting from a rotating offset.
fn order<T: Clone>(targets: &[T], round: usize) -> Vec<T> {
    let mut order = targets.to_vec();
    if !order.is_empty() {
        let by = round % order.len();
        order.rotate_left(by);
    }
    order
}

/// Starts the given kinds side by side and runs the rounds. A kind that does not start is left
/// out (with a message); fewer than two leaves nothing to compare.
pub async fn run(bins: &Bins, plan: &Plan, kinds: &[Kind]) -> Option<HeadToHead> {
    let mut running: Vec<Running> = Vec::new();
    for kind in kinds {
        match targets::start(*kind, bins, plan.nodes, plan.node_workers, None).await {
            Ok(target) => running.push(target),
            Err(e) => eprintln!("bench-suite: head to head: {} did not start: {e}", kind.title(plan.nodes)),
        }
    }
    if running.len() < 2 {
        for target in running {
            target.stop().await;
        }
        return None;
    }
    let mut h2h = HeadToHead {
        rounds: plan.rounds,
        duration_s: plan.round_duration_s,
        warmup_s: plan.warmup_s,
        subscribers: plan.subscribers,
        runs: Vec::new(),
    };
    let targets: Vec<&Running> = running.iter().collect();
    for round in 0..plan.rounds {
        eprintln!("\n=== head to head: peak, round {} of {} ===", round + 1, plan.rounds);
        for target in order(&targets, round) {
            h2h.runs.push(measure(bins, plan, target, round, Pass::Peak, 0.0).await);
        }
    }
    let half = |kind: Kind| {
        let peaks = h2h.series(kind, Pass::Peak, |r| Some(r.published_per_s).filter(|v| *v > 0.0));
        spread(&peaks).map(|(median, _, _)| (median / 2.0).max(1.0))
    };
    // Each target at half its own peak; the baseline also at Stampede's (1 node) half rate.
    let mut rates: Vec<(Kind, Pass, f64)> = targets
        .iter()
        .filter(|t| !Kind::PEERS.contains(&t.kind))
        .filter_map(|t| Some((t.kind, Pass::Half, half(t.kind)?)))
        .collect();
    if let (true, Some(rate)) = (targets.iter().any(|t| t.kind == Kind::Baseline), half(Kind::Memory)) {
        rates.push((Kind::Baseline, Pass::AtOneNodeHalf, rate));
    }
    for round in 0..plan.rounds {
        eprintln!("\n=== head to head: latency, round {} of {} ===", round + 1, plan.rounds);
        for target in order(&targets, round) {
            for (_, pass, rate) in rates.iter().filter(|(kind, _, _)| *kind == target.kind) {
                h2h.runs.push(measure(bins, plan, target, round, *pass, *rate).await);
            }
        }
    }
    for target in running {
        target.stop().await;
    }
    Some(h2h)
}

async fn measure(
    bins: &Bins,
    plan: &Plan,
    target: &Running,
    round: usize,
    pass: Pass,
    rate: f64,
) -> RoundRun {
    let extra = vec!["--subscribers".to_owned(), plan.subscribers.to_string()];
    let invocation = Invocation {
        scenario: "fanout",
        extra,
        urls: &target.urls,
        rate,
        duration_s: plan.round_duration_s,
        warmup_s: plan.warmup_s,
    };
    let result = invoke(bins, target, &invocation, 0.0).await;
    let report = result.report.as_ref();
    RoundRun {
        round,
        kind: target.kind,
        pass,
        rate,
        published_per_s: report.map(|r| r.sent_per_s).unwrap_or(0.0),
        deliveries_per_s: report.map(|r| r.deliveries_per_s).unwrap_or(0.0),
        p99_ms: report.and_then(|r| r.latency.as_ref()).map(|l| l.p99_ms),
        broker_cpu_s: report.and_then(|r| r.broker_cpu_s),
        failure: result.failure,
    }
}

#[cfg(test)]
impl RoundRun {
    /// A run that succeeded, for tests: a fan-out to 100 subscribers.
    pub(crate) fn sample(
        round: usize,
        kind: Kind,
        pass: Pass,
        deliveries_per_s: f64,
        p99_ms: f64,
    ) -> RoundRun {
        RoundRun {
            round,
            kind,
            pass,
            rate: 0.0,
            published_per_s: deliveries_per_s / 100.0,
            deliveries_per_s,
            p99_ms: Some(p99_ms),
            broker_cpu_s: None,
            failure: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use RoundRun as R;

    #[test]
    fn spread_is_median_least_greatest() {
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread(&[f64::NAN, 5.0]), Some((5.0, 5.0, 5.0)));
    }

    #[test]
    fn each_round_starts_with_the_next_target() {
        let kinds = [Kind::Baseline, Kind::Memory, Kind::Cluster];
        assert_eq!(order(&kinds, 0), vec![Kind::Baseline, Kind::Memory, Kind::Cluster]);
        assert_eq!(order(&kinds, 1), vec![Kind::Memory, Kind::Cluster, Kind::Baseline]);
        assert_eq!(order(&kinds, 2), vec![Kind::Cluster, Kind::Baseline, Kind::Memory]);
        assert_eq!(order(&kinds, 3), order(&kinds, 0));
        assert!(order::<Kind>(&[], 1).is_empty());
    }

    #[test]
    fn ratios_pair_runs_of_the_same_round_and_skip_failures() {
        let mut h2h = HeadToHead { rounds: 3, ..HeadToHead::default() };
        // The machine slows down from round to round; within a round the ratio is 0.8.
        for (round, base) in [(0, 2_000_000.0), (1, 1_000_000.0), (2, 1_500_000.0)] {
            h2h.runs.push(R::sample(round, Kind::Baseline, Pass::Peak, base, 1.0));
            h2h.runs.push(R::sample(round, Kind::Memory, Pass::Peak, base * 0.8, 2.0));
        }
        let ratios = h2h.ratios(Kind::Memory, Kind::Baseline, Pass::Peak, delivered);
        assert_eq!(ratios.len(), 3);
        assert!(ratios.iter().all(|r| (r - 0.8).abs() < 1e-9), "{ratios:?}");
        // A failed run leaves its round out instead of pairing with another round's value.
        h2h.runs[3].failure = Some("exited with 1".into());
        let ratios = h2h.ratios(Kind::Memory, Kind::Baseline, Pass::Peak, delivered);
        assert_eq!(ratios.len(), 2);
        assert_eq!(h2h.ratio_in(1, Kind::Memory, Kind::Baseline, Pass::Peak, delivered), None);
        assert_eq!(h2h.series(Kind::Memory, Pass::Peak, p99), vec![2.0, 2.0]);
        // Other passes are separate series.
        assert!(h2h.series(Kind::Memory, Pass::Half, p99).is_empty());
    }
}
