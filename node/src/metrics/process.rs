//! The standard `process_*` metrics (the names every Prometheus client library exports, so the
//! usual dashboards work), read from `/proc/self` at each scrape. Linux only: elsewhere the
//! files are missing and the family is simply absent.
//!
//! CPU and start times in `/proc` are in clock ticks of `USER_HZ`, which the kernel fixes at 100
//! for user space on every architecture (Prometheus's own `procfs` assumes the same), so no
//! `sysconf` call (and no libc) is needed. Resident memory comes from `VmRSS` in
//! `/proc/self/status`, already in kB, for the same reason (no page size).

use std::fs;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Clock ticks per second in `/proc` (`USER_HZ`).
const USER_HZ: f64 = 100.0;

/// A gauge's value: seconds, with their fraction, or a count (bytes, descriptors), written as
/// an integer.
enum Value {
    Seconds(f64),
    Count(u64),
}

/// Reads the process metrics at each scrape.
#[derive(Debug, Default)]
pub(super) struct ProcessCollector;

/// What one read of `/proc/self` found.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Sample {
    pub cpu_seconds: f64,
    pub start_time_seconds: Option<f64>,
    pub virtual_memory_bytes: u64,
    pub resident_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl Sample {
    /// This process now; `None` where there is no `/proc`.
    pub(super) fn read() -> Option<Sample> {
        let stat = fs::read_to_string("/proc/self/stat").ok()?;
        let mut sample = parse_stat(&stat)?;
        let boot = fs::read_to_string("/proc/stat").ok().as_deref().and_then(boot_time);
        sample.start_time_seconds = boot.zip(sample.start_time_seconds).map(|(boot, since)| boot + since);
        sample.resident_memory_bytes =
            fs::read_to_string("/proc/self/status").ok().as_deref().and_then(resident_bytes);
        sample.open_fds = fs::read_dir("/proc/self/fd").ok().map(|fds| fds.count() as u64);
        sample.max_fds = fs::read_to_string("/proc/self/limits").ok().as_deref().and_then(max_open_files);
        Some(sample)
    }
}

/// `/proc/self/stat`: CPU time, start time (seconds after boot, for now) and virtual size.
fn parse_stat(stat: &str) -> Option<Sample> {
    // The command name (field 2) is in parentheses and may hold spaces: fields count from after
    // its closing one, where field 3 (state) is the first.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let (utime, stime) = (field(14)?, field(15)?);
    Some(Sample {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        start_time_seconds: field(22).map(|ticks| ticks as f64 / USER_HZ),
        virtual_memory_bytes: field(23)?,
        ..Sample::default()
    })
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines().find_map(|line| line.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let kb = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|kb| kb * 1024)
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sample) = Sample::read() else { return Ok(()) };
        let cpu = ConstCounter::new(sample.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let mut gauge = |name: &str, help: &str, value: Option<Value>| -> Result<(), std::fmt::Error> {
            let Some(value) = value else { return Ok(()) };
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            match value {
                Value::Seconds(v) => ConstGauge::new(v).encode(metric),
                Value::Count(v) => ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(metric),
            }
        };
        gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            sample.start_time_seconds.map(Value::Seconds),
        )?;
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            sample.resident_memory_bytes.map(Value::Count),
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Some(Value::Count(sample.virtual_memory_bytes)),
        )?;
        gauge("process_open_fds", "Number of open file descriptors.", sample.open_fds.map(Value::Count))?;
        gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            sample.max_fds.map(Value::Count),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_field_by_field() {
        // A command name with a space and a parenthesis, as `/proc` allows.
        let stat = "4242 (stamp (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 130 0 0 20 0 9 0 \
                    1234567 104857600 5000 18446744073709551615";
        let sample = parse_stat(stat).expect("parsed");
        assert_eq!(sample.cpu_seconds, 3.8);
        assert_eq!(sample.start_time_seconds, Some(12_345.67));
        assert_eq!(sample.virtual_memory_bytes, 104_857_600);
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"), Some(1_700_000_000.0));
        assert_eq!(resident_bytes("Name:\tstampede\nVmRSS:\t   20480 kB\n"), Some(20_971_520));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
    }

    #[test]
    fn this_process_is_found() {
        let sample = Sample::read().expect("/proc/self on Linux");
        assert!(sample.resident_memory_bytes.is_some_and(|rss| rss > 1 << 20), "{sample:?}");
        assert!(sample.open_fds.is_some_and(|n| n >= 3), "{sample:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let started = sample.start_time_seconds.expect("start time");
        assert!(started <= now + 1.0 && started > now - 3600.0 * 24.0, "started {started}, now {now}");
    }
}
