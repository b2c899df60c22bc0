//! How the node writes its log: the subscriber the binary installs, text or JSON, with ANSI
//! colours only on a terminal.
//!
//! The lines themselves are written where things happen: `connected` and `disconnected` by the
//! session (inside its `session` span, so every line about a session carries its id), refused
//! connections by the transports (counted and rate-limited with the metrics,
//! [`crate::metrics::Metrics::connection_refused`]), reloads by [`crate::reload`].
//! docs/operations.md lists them.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the process's subscriber: lines on standard output, as text or one JSON object each,
/// at the level `RUST_LOG` sets (default `info`). Colours only when standard output is a
/// terminal and `NO_COLOR` is unset: escapes in a file or a log collector are noise.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
