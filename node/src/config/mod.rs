//! The broker's settings: what `stampede` reads at start-up and the rules each value must obey.
//! Every setting can come from a command-line flag, an environment variable `STAMPEDE_<NAME>`, a
//! key of the TOML file named by `--config`, or the built-in default, in that order of precedence.
//! [`Config::load`] resolves and validates all of them before any socket is opened, and every
//! error names the setting at fault and where its value came from, so a misconfigured node stops
//! at once with one line that says what to fix.
//!
//! # Layout
//! - `mod.rs`: [`Config`] and the general setting types it is made of.
//! - `settings.rs`: one constant per scalar setting (`MAX_FRAME_SIZE`, ...) holding its name (the
//!   flag, the TOML key and the environment variable's suffix), built-in value and help text, and
//!   `SETTINGS`, the list of them all that `--help` is built from. Code names a setting by its
//!   constant, so its name is written once and a typo does not compile.
//! - `layers.rs`: `Layers` asks the flags, the environment and the file, highest first, for a
//!   setting's text; `Layers::resolve` turns each text into its typed value with a parser, then
//!   checks the rules that span two settings.
//! - `parse.rs`: the parsers of the general settings, each from trimmed text to a value or what it
//!   expected.
//! - `environment.rs`: [`Environment`], the variables as the layers read them, and the check
//!   of `STAMPEDE_` variables that name no setting (refused when within two edits of one).
//! - `effective.rs`: the effective configuration as `stampede check-config` prints it: TOML,
//!   each value with the layer it came from, secrets redacted.
//! - `error.rs`: [`ConfigError`] and the [`Origin`] of a value that it names.
//! - `tests/`: the tests, with the history rules' in `tests/history.rs` and the queue rules' in
//!   `tests/queue.rs`.
//! - History rules (`--history`, `STAMPEDE_HISTORY`, `[[history]]`), queue rules (`--queue`,
//!   `STAMPEDE_QUEUE`, `[[queue]]`) and access rules (`--acl`, `STAMPEDE_ACL`, `[[acl]]`) are
//!   lists, each resolved as one setting: the highest layer that has any rules supplies all of
//!   them.
//! - Feature settings live with their feature, which reads and checks them through `Layers`:
//!   authentication, access rules and origins in [`crate::auth::settings`], TLS files in
//!   [`crate::transport::tls`]. Their types are re-exported here, as the types of `Config`'s
//!   fields. The files they name are loaded by those modules before the node binds.

pub(crate) mod layers;
pub(crate) mod parse;
pub(crate) mod settings;

mod effective;
mod environment;
mod error;
#[cfg(test)]
pub(crate) mod tests;

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::apps::settings::{AppSettings, HttpRoute};
pub use crate::auth::settings::{
    AclDefault, AclRule, AuthSettings, JwtSettings, OriginPolicy, Secret, Subject,
};
pub use crate::transport::sockjs::SockJsTuning;
pub use crate::transport::tls::TlsFiles;
pub use environment::Environment;
pub use error::{ConfigError, Conflict, Origin};

use crate::destination::wildcard_match;
use layers::{ConfigFile, Layers};
use parse::{duration, nonzero, redact_url};
use settings::{command, CHECK_CONFIG, CONFIG, CONFIG_ENV};

/// The prefix every history pattern starts with.
const TOPIC_PREFIX: &str = "/topic/";
/// The prefix every queue rule's pattern starts with.
const QUEUE_PREFIX: &str = "/queue/";

// === Public types ===

/// What the command line asked for, with the configuration to do it with.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub mode: Mode,
    /// What loading noticed without refusing it (a `STAMPEDE_` variable far from every
    /// setting's name), for the caller to report once it can log.
    pub warnings: Vec<String>,
}

/// What `stampede` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `stampede`: run the node.
    Run,
    /// `stampede check-config`: once the files the configuration names are checked too, print
    /// `effective` (TOML, each value with its origin, secrets redacted) and exit.
    CheckConfig { effective: String },
}

/// Everything a node needs to know before it opens its first socket.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// Client HTTP address; WebSocket clients connect at `/ws`.
    pub listen: SocketAddr,
    /// STOMP over plain TCP; `None` when set to `off`.
    pub stomp_listen: Option<SocketAddr>,
    /// Health, metrics and admin API; `None` when set to `off`.
    pub admin_listen: Option<SocketAddr>,
    /// `None`: the embedded in-memory engine (one node). `Some`: the Redis cluster engine. Only
    /// the scheme is checked here; the engine parses the rest. May hold a password: log it with
    /// [`Config::redacted_redis_url`].
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel the cluster engine uses, so several clusters (or
    /// other applications) can share one Redis.
    pub redis_prefix: String,
    /// This node's name in the cluster (Redis keys, admin API, logs).
    pub node_id: String,
    /// Log line format; the level comes from `RUST_LOG`.
    pub log_format: LogFormat,
    /// Threads of the async runtime; `None`: one per CPU the process may use.
    pub worker_threads: Option<usize>,
    /// Per-frame and per-connection bounds.
    pub limits: Limits,
    /// What the server offers in CONNECTED's `heart-beat` header, and how late a peer may be.
    pub heartbeat: Heartbeat,
    /// Queue bounds and delivery policy.
    pub queues: Queues,
    /// WebSocket buffer sizes.
    pub ws: WsTuning,
    /// On SIGTERM, client sessions are closed spread over this period.
    pub drain_period: Duration,
    /// Topics that keep history, in order; the first rule matching a destination applies.
    pub history: Vec<HistoryRule>,
    /// Lifetimes of the queues a pattern matches, in order; the first matching rule applies to
    /// a queue whose SUBSCRIBE did not set its own.
    pub queue_rules: Vec<QueueRule>,
    /// Destination patterns (`*` matches anything) whose subscribers are kept as presence.
    pub presence: Vec<String>,
    /// Who may connect, and what they may publish and subscribe to.
    pub auth: AuthSettings,
    /// TLS for the client listeners (WebSocket and STOMP over TCP); `None` = plain text.
    pub tls: Option<TlsFiles>,
    /// Which browser origins may open a WebSocket (or use SockJS).
    pub origins: OriginPolicy,
    /// SockJS at the WebSocket path.
    pub sockjs: SockJsTuning,
    /// Application destinations, backends, hooks and session events.
    pub apps: AppSettings,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Bounds that keep one client from costing the node more than its share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole frame, command and headers included; also the WebSocket message and frame
    /// limit, so an oversize frame is refused before it is buffered.
    pub max_frame_size: usize,
    /// Largest frame body; never more than `max_frame_size`.
    pub max_body_size: usize,
    /// Most headers in one frame.
    pub max_headers: usize,
    /// Longest single header line, name and value included.
    pub max_header_length: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Most transactions one connection may have open at once.
    pub max_transactions: usize,
    /// Most client connections on this node; 0 = unlimited.
    pub max_connections: usize,
    /// Most client connections from one IP address; 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// Frames (heart-beats and WebSocket pings included) one connection may send per second on
    /// average; 0 = unlimited.
    pub max_frame_rate: u32,
    /// Frames one connection may send at once above `max_frame_rate` (the token bucket's size).
    pub frame_rate_burst: u32,
    /// Time from accept to a valid CONNECT frame (TLS and WebSocket handshakes included).
    pub connect_timeout: Duration,
    /// A connection whose peer takes no byte of its output for this long is closed; `None`:
    /// never.
    pub write_timeout: Option<Duration>,
    /// Bytes queued for one connection before `slow_consumer` applies.
    pub outbound_buffer: usize,
    /// What happens to a connection whose outbound buffer is full.
    pub slow_consumer: SlowConsumerPolicy,
}

/// What happens when a connection's outbound buffer is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Send ERROR "slow consumer" and close the connection.
    Disconnect,
    /// Drop new topic messages for that client (counted), keep the connection.
    Drop,
}

/// Heart-beating as STOMP negotiates it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heartbeat {
    /// How often the server offers to send heart-beats; zero = it offers none.
    pub send: Duration,
    /// How often the server wants to receive them; zero = it wants none.
    pub receive: Duration,
    /// A peer silent for `grace` × the negotiated interval is dropped; at least 1.0.
    pub grace: f64,
}

/// Queue bounds and delivery policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queues {
    /// Messages kept per queue while nobody consumes; the oldest are dropped beyond it.
    pub max_length: usize,
    /// In-flight limit per subscription when SUBSCRIBE has no `prefetch-count`; at least 1.
    pub default_prefetch: u32,
    /// Idle time after which a dead node's pending queue messages are claimed (cluster engine).
    pub reclaim_after: Duration,
    /// Deliveries after which a message goes to the dead-letter queue; 0 = unlimited.
    pub max_deliveries: u32,
}

/// WebSocket buffer sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WsTuning {
    /// Most bytes read from a socket at once: the read buffer starts small, grows to this while
    /// data keeps coming, and is released when the connection goes quiet.
    pub read_buffer: usize,
    /// Write high-water mark: queued output is written to the socket once it holds this much,
    /// before the batch ends.
    pub write_buffer: usize,
}

/// Keep history for the topics a pattern matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRule {
    /// A `/topic/...` destination in which `*` matches any run of characters, `/` included.
    pub pattern: String,
    /// How many messages to keep (at least 1).
    pub size: usize,
    /// How long to keep each message; `None` = until pushed out by `size`.
    pub ttl: Option<Duration>,
}

/// When a queue goes away by itself, with its stored messages: set per queue by SUBSCRIBE's
/// `auto-delete` and `x-expires` headers (as RabbitMQ's STOMP plugin takes them), or for the
/// queues a pattern matches by a `[[queue]]` rule. The default keeps a queue forever.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueLifetime {
    /// Deleted once it has had no consumer, no SEND and no SUBSCRIBE for this long.
    pub expires: Option<Duration>,
    /// Deleted when its last consumer, cluster-wide, unsubscribes or disconnects (a queue that
    /// never had a consumer stays).
    pub auto_delete: bool,
}

impl QueueLifetime {
    /// Whether the queue ever goes away by itself.
    pub fn is_some(&self) -> bool {
        self.expires.is_some() || self.auto_delete
    }
}

/// A lifetime for the queues a pattern matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRule {
    /// A `/queue/...` destination in which `*` matches any run of characters, `/` included.
    pub pattern: String,
    pub lifetime: QueueLifetime,
}

// === impl Config ===

impl Config {
    /// Reads the process's args and environment (and the file they name).
    pub fn load() -> Result<Loaded, ConfigError> {
        Self::load_from(std::env::args_os(), &Environment::from_process())
    }

    /// Same, from explicit args (`args[0]` = program name) and an explicit environment, for
    /// tests. Clap's errors (`--help` included) come first, then the environment's unknown
    /// variables, then the file and every setting.
    pub fn load_from<I, T>(args: I, env: &Environment) -> Result<Loaded, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let flags = command().try_get_matches_from(args)?;
        let warnings = env.check_unknown()?;
        let env = |name: &str| env.get(name);
        let path = match flags.get_one::<PathBuf>(CONFIG) {
            Some(path) => Some(path.clone()),
            None => env(CONFIG_ENV).map(PathBuf::from),
        };
        let file = path.map(ConfigFile::read).transpose()?;
        let layers = Layers { flags: &flags, env: &env, file: file.as_ref() };
        let config = layers.resolve()?;
        let mode = match flags.subcommand_name() {
            Some(CHECK_CONFIG) => Mode::CheckConfig { effective: effective::render(&layers, &config)? },
            _ => Mode::Run,
        };
        Ok(Loaded { config, mode, warnings })
    }

    /// First rule whose pattern matches `destination`.
    pub fn history_for(&self, destination: &str) -> Option<&HistoryRule> {
        self.history.iter().find(|rule| rule.matches(destination))
    }

    /// Whether `destination` is a queue (competing consumers): a `/queue/` destination, or an
    /// application destination (the queue its STOMP workers consume).
    pub fn is_queue(&self, destination: &str) -> bool {
        destination.starts_with("/queue/") || self.apps.is_app(destination)
    }

    /// Whether presence is kept for `destination` (the user-qualified name of a user
    /// destination): some `presence` pattern matches it.
    pub fn presence_for(&self, destination: &str) -> bool {
        self.presence.iter().any(|pattern| wildcard_match(pattern.as_bytes(), destination.as_bytes()))
    }

    /// The lifetime the first matching `[[queue]]` rule gives `queue` (none when no rule
    /// matches).
    pub fn queue_lifetime(&self, queue: &str) -> QueueLifetime {
        self.queue_rules.iter().find(|rule| rule.matches(queue)).map(|rule| rule.lifetime).unwrap_or_default()
    }

    /// `redis_url` with any password replaced by `***`, for logs.
    pub fn redacted_redis_url(&self) -> Option<String> {
        self.redis_url.as_deref().map(redact_url)
    }
}

impl Default for Config {
    /// All built-in defaults, with a fresh random `node_id`.
    fn default() -> Self {
        Config::load_from(["stampede"], &Environment::default())
            .expect("the built-in defaults are valid")
            .config
    }
}

/// Like the derived form, but never prints a Redis password.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("stomp_listen", &self.stomp_listen)
            .field("admin_listen", &self.admin_listen)
            .field("redis_url", &self.redacted_redis_url())
            .field("redis_prefix", &self.redis_prefix)
            .field("node_id", &self.node_id)
            .field("log_format", &self.log_format)
            .field("worker_threads", &self.worker_threads)
            .field("limits", &self.limits)
            .field("heartbeat", &self.heartbeat)
            .field("queues", &self.queues)
            .field("ws", &self.ws)
            .field("drain_period", &self.drain_period)
            .field("history", &self.history)
            .field("queue_rules", &self.queue_rules)
            .field("presence", &self.presence)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("origins", &self.origins)
            .field("sockjs", &self.sockjs)
            .field("apps", &self.apps)
            .finish()
    }
}

impl Default for Limits {
    fn default() -> Self {
        Config::default().limits
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Config::default().heartbeat
    }
}

impl Default for Queues {
    fn default() -> Self {
        Config::default().queues
    }
}

impl Default for WsTuning {
    fn default() -> Self {
        Config::default().ws
    }
}

impl HistoryRule {
    /// Whether `destination` matches this rule's pattern.
    pub fn matches(&self, destination: &str) -> bool {
        wildcard_match(self.pattern.as_bytes(), destination.as_bytes())
    }

    /// Checks a rule's parts; the error is the reason, for the caller to place.
    fn build(pattern: &str, size: usize, ttl: Option<&str>) -> Result<HistoryRule, String> {
        if !pattern.starts_with(TOPIC_PREFIX) || pattern.len() == TOPIC_PREFIX.len() {
            return Err(format!("pattern {pattern:?} must start with {TOPIC_PREFIX:?} and name a topic"));
        }
        if size == 0 {
            return Err("size must be at least 1 message".to_owned());
        }
        let ttl = ttl
            .map(|ttl| nonzero(duration(ttl)).map_err(|reason| format!("ttl {ttl:?}: {reason}")))
            .transpose()?;
        Ok(HistoryRule { pattern: pattern.to_owned(), size, ttl })
    }
}

impl QueueRule {
    /// Whether `queue` matches this rule's pattern.
    pub fn matches(&self, queue: &str) -> bool {
        wildcard_match(self.pattern.as_bytes(), queue.as_bytes())
    }

    /// Checks a rule's parts; the error is the reason, for the caller to place.
    fn build(pattern: &str, expires: Option<&str>, auto_delete: bool) -> Result<QueueRule, String> {
        if !pattern.starts_with(QUEUE_PREFIX) || pattern.len() == QUEUE_PREFIX.len() {
            return Err(format!("pattern {pattern:?} must start with {QUEUE_PREFIX:?} and name a queue"));
        }
        let expires = expires
            .map(|text| nonzero(duration(text)).map_err(|reason| format!("expires {text:?}: {reason}")))
            .transpose()?;
        let lifetime = QueueLifetime { expires, auto_delete };
        if !lifetime.is_some() {
            return Err("a queue rule needs expires, auto-delete or both".to_owned());
        }
        Ok(QueueRule { pattern: pattern.to_owned(), lifetime })
    }
}
