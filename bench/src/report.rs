//! The result of one scenario run: serialised as JSON (`--json`) for the suite, printed as a
//! table for people.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::app::AppCalls;
use crate::stats::Latency;

/// The parameters a run used, as given (after defaults).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Params {
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Message body size in bytes.
    pub size: usize,
    /// Messages (or churn cycles) per second asked for; 0 = as fast as the closed loop allows.
    pub rate: f64,
    /// Flow-control window (its unit depends on the scenario).
    pub window: u64,
    pub subscribers: usize,
    pub publishers: usize,
    pub connections: usize,
    pub producers: usize,
    pub consumers: usize,
    pub prefetch: u32,
    pub concurrency: usize,
    pub source_ips: u8,
}

/// Broker memory around a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Memory {
    /// RSS of the broker process(es) before the clients connected.
    pub before_bytes: u64,
    /// RSS at the end of the measured window (idle: after the hold).
    pub after_bytes: u64,
    /// (after − before) / connections reached, for the idle scenario.
    pub per_connection_bytes: Option<f64>,
    /// Idle scenario: RSS as the connections ramp up in quarters, so a reader can see whether
    /// the cost per connection stays flat (what an extrapolation past the open-files limit
    /// rests on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<MemoryStep>,
}

/// The broker's RSS with this many idle connections open.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MemoryStep {
    pub connections: usize,
    pub rss_bytes: u64,
}

impl Memory {
    /// KiB per connection between consecutive steps (from `before` for the first).
    pub fn marginal_kib(&self) -> Vec<f64> {
        let mut last = (0usize, self.before_bytes);
        let mut out = Vec::new();
        for step in &self.steps {
            if step.connections > last.0 {
                let bytes = step.rss_bytes as f64 - last.1 as f64;
                out.push(bytes / (step.connections - last.0) as f64 / 1024.0);
            }
            last = (step.connections, step.rss_bytes);
        }
        out
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub scenario: String,
    pub protocol: String,
    pub label: String,
    pub urls: Vec<String>,
    pub params: Params,
    /// Connections asked for, and those that connected (and subscribed).
    pub connections_requested: usize,
    pub connections_reached: usize,
    /// Seconds the connection phase took.
    pub setup_s: f64,
    /// Messages published inside the measured window.
    pub sent: u64,
    /// Messages received inside the measured window (each subscriber's copy counts).
    pub received: u64,
    pub sent_per_s: f64,
    pub deliveries_per_s: f64,
    /// Messages published and received over the whole run (warm-up and drain included).
    pub sent_total: u64,
    pub received_total: u64,
    /// Publish-to-delivery latency of the messages received inside the window.
    pub latency: Option<Latency>,
    /// Churn: connect + subscribe + disconnect cycles completed inside the window.
    pub cycles: u64,
    pub cycles_per_s: f64,
    pub cycle_latency: Option<Latency>,
    /// Connect scenario: CONNECT written → CONNECTED read, per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_latency: Option<Latency>,
    /// Connect scenario: SUBSCRIBE written → its RECEIPT read, per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe_latency: Option<Latency>,
    /// Calls the in-process application backend answered (`--app-listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppCalls>,
    pub memory: Option<Memory>,
    /// CPU seconds the broker process(es) used inside the window.
    pub broker_cpu_s: Option<f64>,
    /// CPU seconds the load generator used inside the window.
    pub bench_cpu_s: Option<f64>,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    /// Deliveries per CPU-second of the broker: throughput independent of how much CPU the load
    /// generator left it.
    pub fn deliveries_per_broker_cpu_s(&self) -> Option<f64> {
        let cpu = self.broker_cpu_s?;
        (cpu > 0.0 && self.received > 0).then(|| self.received as f64 / cpu)
    }

    /// A plain two-column table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        row("scenario", format!("{} ({})", self.scenario, self.protocol));
        if !self.label.is_empty() {
            row("label", self.label.clone());
        }
        row("target", self.urls.join(", "));
        let p = &self.params;
        row(
            "parameters",
            format!(
                "duration {}s, warm-up {}s, size {} B, rate {}, window {}",
                p.duration_s,
                p.warmup_s,
                p.size,
                if p.rate > 0.0 { format!("{}/s", p.rate) } else { "max (closed loop)".into() },
                p.window
            ),
        );
        row(
            "connections",
            format!("{} of {} in {:.2}s", self.connections_reached, self.connections_requested, self.setup_s),
        );
        if self.sent > 0 || self.received > 0 {
            row("published", format!("{} ({:.0}/s)", self.sent, self.sent_per_s));
            row("delivered", format!("{} ({:.0}/s)", self.received, self.deliveries_per_s));
        }
        if let Some(l) = &self.latency {
            row("latency ms", latency_text(l));
        }
        if self.cycles > 0 {
            let what = if self.scenario == "connect" { "connect cycles" } else { "churn cycles" };
            row(what, format!("{} ({:.1}/s)", self.cycles, self.cycles_per_s));
        }
        if let Some(l) = &self.cycle_latency {
            row("cycle ms", latency_text(l));
        }
        if let Some(l) = &self.connect_latency {
            row("CONNECT → CONNECTED ms", latency_text(l));
        }
        if let Some(l) = &self.subscribe_latency {
            row("SUBSCRIBE → RECEIPT ms", latency_text(l));
        }
        if let Some(app) = &self.app {
            row(
                "backend calls",
                format!(
                    "connect hook {}, subscribe hook {}, messages {}, rejected {}",
                    app.connect, app.subscribe, app.echo, app.rejected
                ),
            );
        }
        if let Some(m) = &self.memory {
            let mut text = format!("{} → {}", mib(m.before_bytes), mib(m.after_bytes));
            if let Some(per) = m.per_connection_bytes {
                let _ = write!(text, ", {:.2} KiB per connection", per / 1024.0);
            }
            row("broker RSS", text);
        }
        if let Some(cpu) = self.broker_cpu_s {
            let mut text = format!("{cpu:.2} s");
            if let Some(per) = self.deliveries_per_broker_cpu_s() {
                let _ = write!(text, " ({per:.0} deliveries per CPU-second)");
            }
            row("broker CPU", text);
        }
        if let Some(cpu) = self.bench_cpu_s {
            row("load generator CPU", format!("{cpu:.2} s"));
        }
        row("errors", self.errors.to_string());
        for sample in &self.error_samples {
            row("  error", sample.clone());
        }
        for note in &self.notes {
            row("note", note.clone());
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<width$}  {v}");
        }
        out
    }
}

fn latency_text(l: &Latency) -> String {
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={})",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marginal_cost_per_connection_is_taken_between_steps() {
        let step = |connections, kib: u64| MemoryStep { connections, rss_bytes: kib * 1024 };
        let memory = Memory {
            before_bytes: 1000 * 1024,
            after_bytes: 1400 * 1024,
            per_connection_bytes: None,
            steps: vec![step(100, 1100), step(200, 1180), step(200, 1180), step(400, 1400)],
        };
        assert_eq!(memory.marginal_kib(), [1.0, 0.8, 1.1], "a step that added nothing is skipped");
    }
}
