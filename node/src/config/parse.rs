//! The parsers of the general settings. Each takes trimmed text and returns the value, or what it
//! expected, for [`ConfigError::Invalid`](super::ConfigError::Invalid) to name with the setting
//! and its origin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{HistoryRule, LogFormat, QueueRule, SlowConsumerPolicy};

pub(crate) const SIZE_EXPECTED: &str = "expected a size like 65536, 64KiB or 1MiB";

/// Bytes, or a whole number with KiB/MiB/GiB (1024-based) or KB/MB/GB (1000-based), any case.
pub(crate) fn size(text: &str) -> Result<usize, String> {
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    let number: u64 = digits.parse().map_err(|_| SIZE_EXPECTED.to_owned())?;
    let unit: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(SIZE_EXPECTED.to_owned()),
    };
    number
        .checked_mul(unit)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| "size is too large".to_owned())
}

/// Past this, a thread count is a mistake (a CPU count multiplied by something), not a choice.
const MAX_WORKER_THREADS: usize = 1024;

pub(crate) fn worker_threads(text: &str) -> Result<Option<usize>, String> {
    match count::<usize>(text)? {
        0 => Ok(None),
        n if n <= MAX_WORKER_THREADS => Ok(Some(n)),
        _ => Err(format!("at most {MAX_WORKER_THREADS}")),
    }
}

/// A whole number of the setting's type; a negative one is named as such (every count is
/// unsigned), as is one past the type's range.
pub(crate) fn count<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse().map_err(|_| {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if text.strip_prefix('-').is_some_and(digits) {
            "must not be negative".to_owned()
        } else if digits(text) {
            "is too large".to_owned()
        } else {
            "expected a whole number like 100".to_owned()
        }
    })
}

pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|_| "expected a duration with a unit, like 500ms, 10s or 1m".to_owned())
}

/// Rejects zero (`T::default()` is zero for every type used here).
pub(crate) fn nonzero<T: Default + PartialEq>(value: Result<T, String>) -> Result<T, String> {
    match value {
        Ok(value) if value == T::default() => Err("must be greater than 0".to_owned()),
        other => other,
    }
}

pub(crate) fn boolean(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

pub(crate) fn path(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("expected a file path".to_owned());
    }
    Ok(PathBuf::from(text))
}

/// Comma-separated, trimmed, empty items dropped; at least one item.
pub(crate) fn list(text: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> =
        text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    if items.is_empty() {
        return Err("expected one or more values separated by commas".to_owned());
    }
    Ok(items)
}

/// `presence`: comma-separated destination patterns, each under /topic/, /queue/ or /user/.
pub(crate) fn presence_patterns(text: &str) -> Result<Vec<String>, String> {
    let patterns = list(text)?;
    match patterns
        .iter()
        .find(|p| !["/topic/", "/queue/", "/user/"].iter().any(|prefix| p.starts_with(prefix)))
    {
        Some(bad) => Err(format!(
            "pattern {bad:?} must start with /topic/, /queue/ or /user/ (a user destination as \
             /user/<name>/..., e.g. /user/*/queue/chat)"
        )),
        None => Ok(patterns),
    }
}

pub(crate) fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| "expected an address like 0.0.0.0:8080 or [::]:8080".to_owned())
}

pub(crate) fn optional_socket_addr(text: &str) -> Result<Option<SocketAddr>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| "expected an address like 0.0.0.0:61613, or off".to_owned())
}

/// `off` means no Redis (the embedded engine); any other text must be a URL the engine can use
/// (its scheme, hosts, Sentinel service, database), checked by the engine's own reader.
pub(crate) fn redis_url(text: &str) -> Result<Option<String>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    crate::engine::redis::url_uses_tls(text)?;
    Ok(Some(text.to_owned()))
}

/// A key prefix: printable ASCII without spaces or braces, so the engine's hash tags (`{...}`)
/// stay the only ones in a key.
pub(crate) fn redis_prefix(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
    if valid {
        Ok(text.to_owned())
    } else {
        Err("expected 1 to 64 printable characters without spaces, { or }".to_owned())
    }
}

pub(crate) fn node_id(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err("expected 1 to 64 characters from A-Z a-z 0-9 . _ -".to_owned())
    }
}

pub(crate) fn log_format(text: &str) -> Result<LogFormat, String> {
    match text.to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".to_owned()),
    }
}

pub(crate) fn slow_consumer(text: &str) -> Result<SlowConsumerPolicy, String> {
    match text.to_ascii_lowercase().as_str() {
        "disconnect" => Ok(SlowConsumerPolicy::Disconnect),
        "drop" => Ok(SlowConsumerPolicy::Drop),
        _ => Err("expected disconnect or drop".to_owned()),
    }
}

/// `SEND_MS,RECV_MS`, as in STOMP's `heart-beat` header.
pub(crate) fn heartbeat(text: &str) -> Result<(Duration, Duration), String> {
    let expected = || "expected SEND_MS,RECV_MS in milliseconds, like 10000,10000".to_owned();
    let (send, receive) = text.split_once(',').ok_or_else(expected)?;
    let millis = |part: &str| part.trim().parse::<u64>().map_err(|_| expected());
    Ok((Duration::from_millis(millis(send)?), Duration::from_millis(millis(receive)?)))
}

pub(crate) fn grace(text: &str) -> Result<f64, String> {
    let factor: f64 = text
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite())
        .ok_or_else(|| "expected a number like 2.0".to_owned())?;
    if factor < 1.0 {
        return Err("must be at least 1.0".to_owned());
    }
    Ok(factor)
}

/// `PATTERN=SIZE[,TTL]`, as `--history` and `STAMPEDE_HISTORY` take it.
pub(crate) fn parse_history_rule(text: &str) -> Result<HistoryRule, String> {
    let (pattern, rest) = text
        .rsplit_once('=')
        .ok_or_else(|| "expected PATTERN=SIZE[,TTL] like /topic/prices/*=1000,10m".to_owned())?;
    let (size, ttl) = match rest.split_once(',') {
        Some((size, ttl)) => (size.trim(), Some(ttl.trim())),
        None => (rest.trim(), None),
    };
    let size = size.parse().map_err(|_| format!("size {size:?}: expected a whole number of messages"))?;
    HistoryRule::build(pattern.trim(), size, ttl)
}

/// `PATTERN=OPTION[,OPTION]`, each option `auto-delete` or the `expires` duration, as `--queue`
/// and `STAMPEDE_QUEUE` take it.
pub(crate) fn parse_queue_rule(text: &str) -> Result<QueueRule, String> {
    const EXPECTED: &str = "expected PATTERN=EXPIRES[,auto-delete] like /queue/*-user*=10m,auto-delete";
    let (pattern, rest) = text.rsplit_once('=').ok_or_else(|| EXPECTED.to_owned())?;
    let (mut expires, mut auto_delete) = (None, false);
    for option in rest.split(',').map(str::trim) {
        match option {
            "" => return Err(EXPECTED.to_owned()),
            "auto-delete" if !auto_delete => auto_delete = true,
            _ if expires.is_none() && option != "auto-delete" => expires = Some(option),
            _ => return Err(format!("{option:?} is given twice")),
        }
    }
    QueueRule::build(pattern.trim(), expires, auto_delete)
}

/// Hides the password of a Redis URL: the userinfo's password, and any query parameter whose
/// name contains "password" (Sentinel credentials).
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    match before_query.rfind('@') {
        Some(at) if at > 0 => {
            match before_query[..at].split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:***")),
                None => out.push_str("***"),
            }
            out.push_str(&before_query[at..]);
        }
        _ => out.push_str(before_query),
    }
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                    format!("{key}=***")
                }
                _ => param.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}
