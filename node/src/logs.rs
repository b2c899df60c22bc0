//! What the node logs for its operator, and how: the subscriber the binary installs (text or
//! JSON, ANSI colours only on a terminal) and [`Refusals`], the rate limit on lines about
//! connections refused before a session starts, so that a flood of them cannot flood the log.
//!
//! The lines themselves are written where things happen: `connected` and `disconnected` by the
//! session (inside its `session` span, so every line about a session carries its id), refusals
//! by the transports, reloads by [`crate::run`]. docs/operations.md lists them.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the process's subscriber: lines on standard output, as text or one JSON object each,
/// at the level `RUST_LOG` sets (default `info`). Colours only when standard output is a
/// terminal: escapes in a file or a log collector are noise.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// How often a line is logged for one kind of refusal at most.
pub const REFUSAL_EVERY: Duration = Duration::from_secs(1);

/// Why a connection was refused before its session started, as the log groups them: each kind
/// is logged at most once per [`REFUSAL_EVERY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refused {
    /// The WebSocket (or SockJS) handshake was answered with this HTTP status.
    Handshake(u16),
    /// `max-connections` or `max-connections-per-ip` was reached.
    Full,
    /// The TLS handshake failed.
    Tls,
    /// The TLS or WebSocket handshake, or the CONNECT frame, did not come within
    /// `connect-timeout`.
    ConnectTimeout,
}

/// Per kind of refusal, the second it is being logged in. The first refusal of a second is
/// logged at once; the others only counted, and at the end of the second one line describes the
/// last of them and says how many more it stands for (`suppressed`): every refusal is one line
/// or counted in one, and a flood costs two lines a second per kind.
#[derive(Debug, Default)]
pub struct Refusals {
    kinds: Mutex<HashMap<Refused, Window>>,
}

#[derive(Debug)]
struct Window {
    /// When its first refusal was logged.
    start: Instant,
    /// Refusals since then that were not logged.
    suppressed: u64,
    /// The last of them: its peer and its reason.
    last: Option<(SocketAddr, String)>,
}

/// What [`Refusals::admit`] decided for one refusal.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The first of its second: log it, after the summary of the second before if that is still
    /// due (its timer has not fired yet).
    Log { overdue: Option<Summary> },
    /// Counted; the first one counted in its second also schedules the summary at `summary_at`.
    Counted { summary_at: Option<Instant> },
}

/// The last refusal counted in a second, and how many more it stands for.
type Summary = (SocketAddr, String, u64);

impl Refusals {
    /// Logs a refusal of `peer`, or counts it if one of the same kind was logged less than
    /// [`REFUSAL_EVERY`] ago (see [`Refusals`]). A full node is a warning (the operator may need
    /// more nodes or a higher limit); the other kinds are information (clients' mistakes, probes,
    /// or clients that went away). Called on the runtime: it may start the summary's timer.
    pub fn log(self: &Arc<Self>, kind: Refused, peer: SocketAddr, why: &dyn std::fmt::Display) {
        match self.admit(kind, peer, why, Instant::now()) {
            Verdict::Log { overdue } => {
                if let Some((peer, why, suppressed)) = overdue {
                    line(kind, peer, &why, suppressed);
                }
                line(kind, peer, why, 0)
            }
            Verdict::Counted { summary_at: None } => {}
            Verdict::Counted { summary_at: Some(at) } => {
                let refusals = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    if let Some((peer, why, suppressed)) = refusals.summary(kind) {
                        line(kind, peer, &why, suppressed);
                    }
                });
            }
        }
    }

    fn admit(&self, kind: Refused, peer: SocketAddr, why: &dyn std::fmt::Display, now: Instant) -> Verdict {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let Some(window) = kinds.get_mut(&kind) else {
            kinds.insert(kind, Window { start: now, suppressed: 0, last: None });
            return Verdict::Log { overdue: None };
        };
        if now.saturating_duration_since(window.start) < REFUSAL_EVERY {
            window.suppressed += 1;
            let first = window.last.is_none();
            window.last = Some((peer, why.to_string()));
            return Verdict::Counted { summary_at: first.then(|| window.start + REFUSAL_EVERY) };
        }
        let overdue = take_summary(window);
        window.start = now;
        Verdict::Log { overdue }
    }

    /// The end of a second with refusals counted: the last one, and how many more it stands for.
    fn summary(&self, kind: Refused) -> Option<Summary> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        take_summary(kinds.get_mut(&kind)?)
    }
}

fn take_summary(window: &mut Window) -> Option<Summary> {
    let (peer, why) = window.last.take()?;
    let suppressed = std::mem::take(&mut window.suppressed);
    Some((peer, why, suppressed.saturating_sub(1)))
}

/// One line about a refusal of `kind`, standing for `suppressed` more not logged.
fn line(kind: Refused, peer: SocketAddr, why: &dyn std::fmt::Display, suppressed: u64) {
    match kind {
        Refused::Full => tracing::warn!(%peer, reason = %why, suppressed, "refused connection"),
        Refused::Handshake(status) => {
            tracing::info!(%peer, status, reason = %why, suppressed, "refused connection")
        }
        Refused::Tls | Refused::ConnectTimeout => {
            tracing::info!(%peer, reason = %why, suppressed, "refused connection")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_a_second_is_logged_and_the_rest_summed_up_at_its_end() {
        let refusals = Refusals::default();
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let other: SocketAddr = "192.0.2.2:4000".parse().unwrap();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let admit = |kind, peer, ms| refusals.admit(kind, peer, &"why", at(ms));
        assert_eq!(admit(Refused::Full, peer, 0), Verdict::Log { overdue: None }, "the first is logged");
        assert_eq!(admit(Refused::Full, peer, 10), Verdict::Counted { summary_at: Some(at(1000)) });
        assert_eq!(admit(Refused::Full, other, 999), Verdict::Counted { summary_at: None });
        assert_eq!(admit(Refused::Handshake(404), peer, 500), Verdict::Log { overdue: None }, "its own kind");
        assert_eq!(
            admit(Refused::Handshake(403), peer, 500),
            Verdict::Log { overdue: None },
            "its own status"
        );
        assert_eq!(
            refusals.summary(Refused::Full),
            Some((other, "why".to_owned(), 1)),
            "the last, and 1 more"
        );
        assert_eq!(refusals.summary(Refused::Full), None, "once");
        assert_eq!(admit(Refused::Full, peer, 1000), Verdict::Log { overdue: None }, "a new second");
        assert_eq!(admit(Refused::Full, other, 1500), Verdict::Counted { summary_at: Some(at(2000)) });
        // The summary's timer is late: the next second's first line brings it out first.
        let overdue = Some((other, "why".to_owned(), 0));
        assert_eq!(admit(Refused::Full, peer, 2001), Verdict::Log { overdue });
        assert_eq!(refusals.summary(Refused::Full), None, "not twice");
    }
}
