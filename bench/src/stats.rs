//! What the load generator measures: timestamps in message bodies, latency histograms
//! (HdrHistogram, microseconds), shared counters, closed-loop flow control, and the broker's RSS
//! and CPU time read from `/proc`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Length of the timestamp at the start of every body: nanoseconds since the run's epoch as 16
/// hex digits. The rest of the body is padding up to the message size.
pub const STAMP_LEN: usize = 16;

/// The smallest message body: the timestamp and one byte of padding.
pub const MIN_BODY: usize = STAMP_LEN + 1;

/// Writes a body of `size` bytes (at least [`MIN_BODY`]) stamped with `now`.
pub fn stamp_body(out: &mut String, epoch: Instant, now: Instant, size: usize) {
    use std::fmt::Write as _;
    out.clear();
    let nanos = now.saturating_duration_since(epoch).as_nanos() as u64;
    let _ = write!(out, "{nanos:016x}");
    let pad = size.max(MIN_BODY) - STAMP_LEN;
    out.extend(std::iter::repeat_n('x', pad));
}

/// The timestamp of a body written by [`stamp_body`].
pub fn read_stamp(body: &[u8]) -> Option<u64> {
    let hex = body.get(..STAMP_LEN)?;
    let mut value = 0u64;
    for b in hex {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        value = (value << 4) | u64::from(digit);
    }
    Some(value)
}

/// A histogram of microseconds, 1 µs to 10 minutes, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Records the latency of a message stamped `stamp` (nanoseconds since `epoch`) received `now`.
pub fn record_latency(hist: &mut Histogram<u64>, epoch: Instant, now: Instant, stamp: u64) {
    let now_ns = now.saturating_duration_since(epoch).as_nanos() as u64;
    let micros = (now_ns.saturating_sub(stamp) / 1000).max(1);
    hist.saturating_record(micros);
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(hist: &Histogram<u64>) -> Option<Latency> {
        if hist.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(Latency {
            count: hist.len(),
            mean_ms: hist.mean() / 1000.0,
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p90_ms: ms(hist.value_at_quantile(0.90)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
        })
    }
}

/// The measured interval: setup before it, warm-up at its start excluded, drain after it.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Body timestamps count from here.
    pub epoch: Instant,
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn new(warmup: Duration, duration: Duration) -> Window {
        let epoch = Instant::now();
        let start = epoch + warmup;
        Window { epoch, start, end: start + duration }
    }

    pub fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

/// Counters every task of a run shares.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages published, in total and inside the window.
    pub sent: AtomicU64,
    pub sent_in_window: AtomicU64,
    /// Messages received by any client, in total and inside the window.
    pub received: AtomicU64,
    pub received_in_window: AtomicU64,
    /// Connections currently open.
    pub open: AtomicU64,
    pub errors: AtomicU64,
    /// Completed churn cycles (inside the window).
    pub cycles: AtomicU64,
    error_samples: std::sync::Mutex<Vec<String>>,
}

impl Counters {
    pub fn error(&self, what: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.error_samples.lock().expect("error samples");
        if samples.len() < 5 {
            samples.push(what.to_string());
        }
    }

    pub fn error_samples(&self) -> Vec<String> {
        self.error_samples.lock().expect("error samples").clone()
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Closed-loop flow control: publishers stop while more than `limit` deliveries are
/// outstanding and go on once the receivers have brought it down to half.
#[derive(Debug)]
pub struct Flow {
    expected: AtomicU64,
    done: AtomicU64,
    limit: u64,
    waiting: AtomicUsize,
    notify: Notify,
}

impl Flow {
    pub fn new(limit: u64) -> Flow {
        Flow {
            expected: AtomicU64::new(0),
            done: AtomicU64::new(0),
            limit: limit.max(1),
            waiting: AtomicUsize::new(0),
            notify: Notify::new(),
        }
    }

    pub fn outstanding(&self) -> u64 {
        self.expected.load(Ordering::Acquire).saturating_sub(self.done.load(Ordering::Acquire))
    }

    /// How many more deliveries may be started now.
    pub fn room(&self) -> u64 {
        self.limit.saturating_sub(self.outstanding())
    }

    pub fn started(&self, deliveries: u64) {
        self.expected.fetch_add(deliveries, Ordering::AcqRel);
    }

    pub fn finished(&self, deliveries: u64) {
        self.done.fetch_add(deliveries, Ordering::AcqRel);
        if self.waiting.load(Ordering::Acquire) > 0 && self.outstanding() <= self.limit / 2 {
            self.notify.notify_waiters();
        }
    }

    /// Waits until at most half the limit is outstanding, or `patience` passes.
    pub async fn wait(&self, patience: Duration) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        self.waiting.fetch_add(1, Ordering::AcqRel);
        if self.outstanding() > self.limit / 2 {
            let _ = tokio::time::timeout(patience, notified).await;
        }
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

// === /proc ===

/// Resident set size of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The sum of [`rss_bytes`] over `pids`; `None` if any is unreadable or `pids` is empty.
pub fn total_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| rss_bytes(*pid)).sum()
}

/// User + system CPU time of a process (all threads), in seconds. `pid` 0 = this process.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let path = if pid == 0 { "/proc/self/stat".to_owned() } else { format!("/proc/{pid}/stat") };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces; fields count from after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// The sum of [`cpu_seconds`] over `pids`.
pub fn total_cpu(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| cpu_seconds(*pid)).sum()
}

/// `sysconf(_SC_CLK_TCK)`, asked of `getconf` once (100 on every Linux the benchmark targets).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// This process's open-files limit (soft, hard), from `/proc/self/limits`.
pub fn nofile_limit() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line["Max open files".len()..].split_whitespace();
    let parse =
        |s: Option<&str>| s.and_then(|s| if s == "unlimited" { Some(u64::MAX) } else { s.parse().ok() });
    Some((parse(numbers.next())?, parse(numbers.next())?))
}

/// The connection-tracking table, (entries, limit), when this network namespace tracks
/// connections (a firewall or NAT rule that uses conntrack turns it on; Docker's does). Loopback
/// connections count too: each one keeps its entry for `nf_conntrack_tcp_timeout_time_wait`
/// (120 s) after it closes, and a full table drops new connections' SYNs, which a client sees
/// as a connect timeout (bench/notes.md, "the idle run that stalled").
pub fn conntrack() -> Option<(u64, u64)> {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}")).ok()?.trim().parse::<u64>().ok()
    };
    Some((read("nf_conntrack_count")?, read("nf_conntrack_max")?))
}

/// A note for a report whose connections failed while the conntrack table was (nearly) full.
pub fn conntrack_note() -> Option<String> {
    let (count, max) = conntrack()?;
    (max > 0 && count * 100 >= max * 95).then(|| {
        format!(
            "the kernel's connection-tracking table is full ({count} of {max} entries): new connections' \
             SYNs are dropped and time out; entries of closed connections expire 120 s after they close \
             (bench/notes.md)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let epoch = Instant::now();
        let now = epoch + Duration::from_nanos(0x1234_5678_9abc);
        let mut body = String::new();
        stamp_body(&mut body, epoch, now, 64);
        assert_eq!(body.len(), 64);
        assert_eq!(read_stamp(body.as_bytes()), Some(0x1234_5678_9abc));
        stamp_body(&mut body, epoch, now, 1);
        assert_eq!(body.len(), MIN_BODY);
        assert_eq!(read_stamp(b"short"), None);
        assert_eq!(read_stamp(b"zzzzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn reads_proc() {
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
        assert!(cpu_seconds(0).is_some());
        assert!(nofile_limit().is_some_and(|(soft, hard)| soft <= hard));
    }
}
