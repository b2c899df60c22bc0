//! The broker's settings: what `stampede` reads at start-up and the rules each value must obey.
//! Every setting can come from a command-line flag, an environment variable `STAMPEDE_<NAME>`, a
//! key of the TOML file named by `--config`, or the built-in default, in that order of precedence.
//! [`Config::load`] resolves and validates all of them before any socket is opened, and every
//! error names the setting at fault and where its value came from, so a misconfigured node stops
//! at once with one line that says what to fix.
//!
//! # Layout
//! - `SETTINGS` is the one list of scalar settings: name (the flag, the TOML key and the
//!   environment variable's suffix), built-in value and help text. `--help` is built from it.
//! - `Layers` asks the flags, the environment and the file, highest first, for a setting's text.
//! - `Layers::resolve` turns each text into its typed value with a parser from the "Parsers"
//!   section, then checks the rules that span two settings.
//! - History rules (`--history`, `STAMPEDE_HISTORY`, `[[history]]`) and access rules (`--acl`,
//!   `STAMPEDE_ACL`, `[[acl]]`) are lists, each resolved as one setting: the highest layer that
//!   has any rules supplies all of them.
//! - Security settings (authentication, access rules, TLS, origins) are only read and checked
//!   for form here; the files they name are loaded by [`crate::auth`] and
//!   [`crate::transport::tls`] before the node binds.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};
use serde::Deserialize;

// === Public types ===

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
    /// Who may connect, and what they may publish and subscribe to.
    pub auth: AuthSettings,
    /// TLS for the client listeners (WebSocket and STOMP over TCP); `None` = plain text.
    pub tls: Option<TlsFiles>,
    /// Which browser origins may open a WebSocket.
    pub origins: OriginPolicy,
}

/// A secret setting (a key, a token). Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Authentication and authorization. With neither `users_file` nor a JWT key set, authentication
/// is off: every client may connect, its `login` is taken on trust, and it may do everything.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthSettings {
    /// `name:hash[:role,role]` lines; hashes in argon2 (PHC) or bcrypt form.
    pub users_file: Option<PathBuf>,
    pub jwt: JwtSettings,
    /// Allow rules, in order; see [`AclRule`].
    pub acl: Vec<AclRule>,
    /// What an authenticated client may do where no rule allows it.
    pub acl_default: AclDefault,
    /// Bearer token the admin API requires (all but `/healthz`, `/readyz`, and `/metrics` when
    /// `metrics_public`); `None` = the admin API is open.
    pub admin_token: Option<Secret>,
    /// Serve `/metrics` without the admin token.
    pub metrics_public: bool,
}

impl AuthSettings {
    /// Whether clients must authenticate.
    pub fn enabled(&self) -> bool {
        self.users_file.is_some() || self.jwt.enabled()
    }
}

/// JSON Web Token verification.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtSettings {
    /// HS256/384/512 shared key (at least 32 bytes).
    pub secret: Option<Secret>,
    /// PEM file with an RSA (RS*, PS*) or EC (ES256, ES384) public key.
    pub public_key: Option<PathBuf>,
    /// JWKS file (a JSON `{"keys": [...]}`); keys are chosen by the token's `kid`.
    pub jwks: Option<PathBuf>,
    /// Algorithms accepted; `None` = the default algorithm of each configured key.
    pub algorithms: Option<Vec<jsonwebtoken::Algorithm>>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Accepted `aud` values; `None` = not checked.
    pub audience: Option<Vec<String>>,
    /// Accepted `iss` values; `None` = not checked.
    pub issuer: Option<Vec<String>>,
    /// The claim naming the user.
    pub user_claim: String,
    /// The claim listing the roles; dots reach into objects (`realm_access.roles`).
    pub roles_claim: String,
}

impl JwtSettings {
    /// Whether any verification key is configured.
    pub fn enabled(&self) -> bool {
        self.secret.is_some() || self.public_key.is_some() || self.jwks.is_some()
    }
}

/// Who an access rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// Every authenticated client.
    Anyone,
    User(String),
    Role(String),
}

/// Allows `subject` to publish to destinations matching `publish` and subscribe to those matching
/// `subscribe` (patterns: `*` matches any run of characters, `/` included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclRule {
    pub subject: Subject,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// What an authenticated client may do where no rule allows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclDefault {
    Allow,
    Deny,
}

/// The certificate chain and private key of the client listeners, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which `Origin` a WebSocket handshake may carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Exact origins (`https://app.example.com`), lower-cased; `*` allows any. `None` = no check.
    pub allowed: Option<Vec<String>>,
    /// With `allowed` set, accept handshakes that carry no `Origin` (non-browser clients).
    pub allow_missing: bool,
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

/// Where a setting's value came from; errors name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag, e.g. `--max-frame-size`.
    Flag(String),
    /// An environment variable, e.g. `STAMPEDE_MAX_FRAME_SIZE`.
    Env(String),
    /// The TOML file given by `--config` or `STAMPEDE_CONFIG`.
    File(PathBuf),
    /// The built-in default.
    Default,
}

/// Why the configuration could not be loaded. The message names the setting and its origin.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--help`, `--version`, or a command line clap could not parse (unknown flag, missing
    /// value). Call [`clap::Error::exit`] (or [`ConfigError::exit`]) to print it as clap does.
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    ReadFile { path: PathBuf, source: std::io::Error },
    /// The config file is not valid TOML.
    #[error("invalid config file {}: {source}", .path.display())]
    ParseFile { path: PathBuf, source: toml::de::Error },
    /// The config file has a key that is not a setting (usually a typo).
    #[error(
        "unknown setting {key:?} in config file {}{}",
        .path.display(),
        .suggestion.map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default()
    )]
    UnknownKey { path: PathBuf, key: String, suggestion: Option<&'static str> },
    /// One setting's value is malformed or out of range.
    #[error("invalid value for {setting} from {origin}: {value:?}: {reason}")]
    Invalid { setting: &'static str, origin: Origin, value: String, reason: String },
    /// One `[[history]]` table of the config file is malformed (1-based `entry`).
    #[error("invalid [[history]] entry {entry} in config file {}: {reason}", .path.display())]
    FileHistory { path: PathBuf, entry: usize, reason: String },
    /// One `[[acl]]` table of the config file is malformed (1-based `entry`).
    #[error("invalid [[acl]] entry {entry} in config file {}: {reason}", .path.display())]
    FileAcl { path: PathBuf, entry: usize, reason: String },
    /// A setting needs another one that is not set.
    #[error("{setting} (from {origin}) {reason}")]
    Needs { setting: &'static str, origin: Origin, reason: &'static str },
    /// Two settings are each well-formed but cannot hold together.
    #[error("{0}")]
    Conflict(Box<Conflict>),
}

/// Two settings whose values cannot hold together, each with its text and origin.
#[derive(Debug)]
pub struct Conflict {
    pub setting: &'static str,
    pub origin: Origin,
    pub value: String,
    /// How `setting` relates to `other`, e.g. "must not exceed".
    pub reason: &'static str,
    pub other: &'static str,
    pub other_origin: Origin,
    pub other_value: String,
}

// === impl Config ===

impl Config {
    /// Reads the process's args and environment (and the file they name).
    pub fn load() -> Result<Config, ConfigError> {
        // A value that is not UTF-8 is passed on lossily, so it fails its parser visibly
        // instead of being ignored as if unset.
        Self::load_from(std::env::args_os(), &|name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// Same, from explicit args (`args[0]` = program name) and an explicit environment lookup, for
    /// tests. An environment variable set to the empty string counts as unset.
    pub fn load_from<I, T>(args: I, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let flags = command().try_get_matches_from(args)?;
        let env = |name: &str| env(name).filter(|value| !value.is_empty());
        let path = match flags.get_one::<PathBuf>("config") {
            Some(path) => Some(path.clone()),
            None => env(CONFIG_ENV).map(PathBuf::from),
        };
        let file = path.map(ConfigFile::read).transpose()?;
        Layers { flags: &flags, env: &env, file: file.as_ref() }.resolve()
    }

    /// First rule whose pattern matches `destination`.
    pub fn history_for(&self, destination: &str) -> Option<&HistoryRule> {
        self.history.iter().find(|rule| rule.matches(destination))
    }

    /// `redis_url` with any password replaced by `***`, for logs.
    pub fn redacted_redis_url(&self) -> Option<String> {
        self.redis_url.as_deref().map(redact_url)
    }
}

impl Default for Config {
    /// All built-in defaults, with a fresh random `node_id`.
    fn default() -> Self {
        Config::load_from(["stampede"], &|_| None).expect("the built-in defaults are valid")
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
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("origins", &self.origins)
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

impl AclRule {
    /// Checks a rule's parts; the error is the reason, for the caller to place.
    fn build(subject: Subject, publish: Vec<String>, subscribe: Vec<String>) -> Result<AclRule, String> {
        if publish.is_empty() && subscribe.is_empty() {
            return Err("a rule must allow publish or subscribe to at least one pattern".to_owned());
        }
        if let Subject::User(name) | Subject::Role(name) = &subject {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("name {name:?}: expected a non-empty name without spaces"));
            }
        }
        for pattern in publish.iter().chain(&subscribe) {
            if !pattern.starts_with('/') || pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "pattern {pattern:?}: expected a destination pattern starting with /, like /topic/chat.*"
                ));
            }
        }
        Ok(AclRule { subject, publish, subscribe })
    }

    /// Whether the rule applies to a client with this user name and these roles.
    pub fn applies_to(&self, user: &str, roles: &[String]) -> bool {
        match &self.subject {
            Subject::Anyone => true,
            Subject::User(name) => name == user,
            Subject::Role(role) => roles.iter().any(|r| r == role),
        }
    }
}

impl ConfigError {
    /// Prints the error and exits: clap's own output and exit code for [`ConfigError::Cli`]
    /// (so `--help` exits 0), otherwise `stampede: <message>` on stderr and exit code 2.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Cli(error) => error.exit(),
            other => {
                eprintln!("stampede: {other}");
                std::process::exit(2)
            }
        }
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {} (from {}) {} {} = {} (from {})",
            self.setting,
            self.value,
            self.origin,
            self.reason,
            self.other,
            self.other_value,
            self.other_origin
        )
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "command line {flag}"),
            Origin::Env(var) => write!(f, "environment {var}"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Default => f.write_str("built-in default"),
        }
    }
}

// === Settings table ===

const ENV_PREFIX: &str = "STAMPEDE_";
const CONFIG_ENV: &str = "STAMPEDE_CONFIG";
const HISTORY: &str = "history";
const HISTORY_ENV: &str = "STAMPEDE_HISTORY";
const ACL: &str = "acl";
const ACL_ENV: &str = "STAMPEDE_ACL";
const TOPIC_PREFIX: &str = "/topic/";

/// One scalar setting: `name` is the flag (`--name`), the TOML key, and, upper-cased with `-` as
/// `_`, the suffix of its environment variable.
struct Setting {
    name: &'static str,
    value_name: &'static str,
    builtin: Builtin,
    help: &'static str,
}

enum Builtin {
    /// Parsed like any other value when no layer sets the setting.
    Value(&'static str),
    /// No text value; the resolver supplies the meaning shown here (unset, random).
    Computed(&'static str),
}

const fn setting(
    name: &'static str,
    value_name: &'static str,
    builtin: Builtin,
    help: &'static str,
) -> Setting {
    Setting { name, value_name, builtin, help }
}

/// Every scalar setting, in `--help` order: name, value name, built-in value, help.
#[rustfmt::skip]
const SETTINGS: &[Setting] = &[
    setting("listen", "ADDR", Builtin::Value("0.0.0.0:8080"),
        "Client HTTP address; WebSocket clients connect at /ws"),
    setting("stomp-listen", "ADDR|off", Builtin::Value("0.0.0.0:61613"),
        "STOMP over plain TCP; off disables it"),
    setting("admin-listen", "ADDR|off", Builtin::Value("0.0.0.0:9090"),
        "Health, metrics and admin API (/healthz, /readyz, /metrics, /api/v1); off disables it"),
    setting("redis-url", "URL|off", Builtin::Computed("unset"),
        "Redis for the cluster engine: redis://, rediss://, redis+sentinel://, redis-cluster:// \
         (also redis-sentinel://, redis+cluster:// and their rediss forms); unset or off: the \
         embedded in-memory engine, one node"),
    setting("redis-prefix", "PREFIX", Builtin::Value("stampede"),
        "Prefix of the cluster engine's Redis keys and channels: 1 to 64 printable characters, \
         no spaces, { or }"),
    setting("node-id", "ID", Builtin::Computed("random UUID"),
        "This node's name in the cluster: 1 to 64 of A-Z a-z 0-9 . _ -"),
    setting("log-format", "text|json", Builtin::Value("text"),
        "Log line format; the level comes from RUST_LOG"),
    setting("worker-threads", "N", Builtin::Value("0"),
        "Threads that run client sessions, at most 1024; 0 = one per CPU this process may use \
         (a container's CPU limit counts). Set it when nodes share cores with each other"),
    setting("max-frame-size", "SIZE", Builtin::Value("1088KiB"),
        "Largest frame, command and headers included (1MiB + 64KiB); also the WebSocket message \
         limit"),
    setting("max-body-size", "SIZE", Builtin::Value("1MiB"),
        "Largest frame body; at most max-frame-size"),
    setting("max-headers", "N", Builtin::Value("64"),
        "Most headers in one frame"),
    setting("max-header-length", "SIZE", Builtin::Value("8KiB"),
        "Longest header line, name and value included"),
    setting("max-subscriptions", "N", Builtin::Value("1024"),
        "Most subscriptions per connection"),
    setting("max-transactions", "N", Builtin::Value("16"),
        "Most open transactions per connection"),
    setting("max-connections", "N", Builtin::Value("0"),
        "Most client connections on this node; 0 = unlimited"),
    setting("max-connections-per-ip", "N", Builtin::Value("0"),
        "Most client connections from one IP address; 0 = unlimited"),
    setting("max-frame-rate", "N", Builtin::Value("0"),
        "Frames per second one connection may send on average (heart-beats and WebSocket pings \
         count); past it the connection gets an ERROR and is closed; 0 = unlimited"),
    setting("frame-rate-burst", "N", Builtin::Value("1000"),
        "Frames one connection may send at once above max-frame-rate"),
    setting("connect-timeout", "DURATION", Builtin::Value("10s"),
        "Time from accept to a valid CONNECT frame, TLS and WebSocket handshakes included"),
    setting("write-timeout", "DURATION", Builtin::Value("30s"),
        "A connection whose peer takes no byte of its output for this long is closed (a client \
         that stopped reading); 0 = never"),
    setting("outbound-buffer", "SIZE", Builtin::Value("4MiB"),
        "Bytes queued for one connection before the slow-consumer policy applies"),
    setting("slow-consumer", "disconnect|drop", Builtin::Value("disconnect"),
        "When a connection's outbound buffer is full: disconnect (ERROR, then close) or drop \
         (drop new topic messages for it, counted, and keep the connection)"),
    setting("heartbeat", "SEND_MS,RECV_MS", Builtin::Value("10000,10000"),
        "Heart-beats the server offers, as in STOMP's heart-beat header; 0 = none"),
    setting("heartbeat-grace", "FACTOR", Builtin::Value("2.0"),
        "A peer silent for this many negotiated heart-beat intervals is dropped; at least 1.0"),
    setting("queue-max-length", "N", Builtin::Value("100000"),
        "Messages kept per queue while nobody consumes; the oldest are dropped beyond it"),
    setting("prefetch-default", "N", Builtin::Value("100"),
        "In-flight messages per subscription when SUBSCRIBE has no prefetch-count; at least 1"),
    setting("queue-reclaim-after", "DURATION", Builtin::Value("30s"),
        "Idle time after which a dead node's pending queue messages go to live nodes (cluster \
         engine)"),
    setting("queue-max-deliveries", "N", Builtin::Value("0"),
        "Deliveries after which a message goes to the dead-letter queue; 0 = unlimited"),
    setting("ws-read-buffer", "SIZE", Builtin::Value("8KiB"),
        "Most bytes a WebSocket connection reads from its socket at once; its read buffer starts \
         at 512 bytes, grows to this while data keeps coming and is released when it stops"),
    setting("ws-write-buffer", "SIZE", Builtin::Value("64KiB"),
        "Bytes queued for a WebSocket connection at which they are written before the batch \
         ends (the write high-water mark)"),
    setting("drain-period", "DURATION", Builtin::Value("30s"),
        "On SIGTERM, client sessions are closed spread over this period"),
    setting("users-file", "PATH", Builtin::Computed("unset"),
        "Users who may CONNECT with login and passcode: one name:hash[:role,role] per line, the \
         hash in argon2 or bcrypt form; turns authentication on"),
    setting("jwt-secret", "SECRET", Builtin::Computed("unset"),
        "Shared key (at least 32 bytes) of HS256 JSON Web Tokens; turns authentication on"),
    setting("jwt-public-key", "PATH", Builtin::Computed("unset"),
        "PEM file with the RSA (RS256) or P-256 (ES256) public key of JSON Web Tokens; turns \
         authentication on"),
    setting("jwt-jwks", "PATH", Builtin::Computed("unset"),
        "JWKS file (JSON) of JSON Web Token keys, chosen by kid; turns authentication on"),
    setting("jwt-algorithms", "ALG,...", Builtin::Computed("those of the configured keys"),
        "JWT algorithms accepted, from HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 \
         ES256 ES384; none is never accepted"),
    setting("jwt-leeway", "DURATION", Builtin::Value("30s"),
        "Clock skew tolerated on a JWT's exp and nbf"),
    setting("jwt-audience", "AUD,...", Builtin::Computed("unset"),
        "A JWT's aud must name one of these; unset: aud is not checked"),
    setting("jwt-issuer", "ISS,...", Builtin::Computed("unset"),
        "A JWT's iss must be one of these; unset: iss is not checked"),
    setting("jwt-user-claim", "CLAIM", Builtin::Value("sub"),
        "The JWT claim naming the user"),
    setting("jwt-roles-claim", "CLAIM", Builtin::Value("roles"),
        "The JWT claim listing the user's roles; dots reach into objects (realm_access.roles)"),
    setting("acl-default", "allow|deny", Builtin::Value("deny"),
        "What an authenticated client may do where no acl rule allows it (its own /user/ \
         destinations are always allowed); ignored while authentication is off"),
    setting("admin-token", "TOKEN", Builtin::Computed("unset"),
        "Bearer token the admin API requires; /healthz and /readyz stay open; unset: open"),
    setting("metrics-public", "true|false", Builtin::Value("false"),
        "Serve /metrics without the admin token"),
    setting("ws-origins", "ORIGIN,...", Builtin::Computed("unset"),
        "Origins allowed to open a WebSocket, exact matches like https://app.example.com; * \
         allows any; unset: no Origin check"),
    setting("ws-allow-no-origin", "true|false", Builtin::Value("false"),
        "With ws-origins set, accept WebSocket handshakes without an Origin header (non-browser \
         clients)"),
    setting("tls-cert", "PATH", Builtin::Computed("unset"),
        "PEM certificate chain: the WebSocket and STOMP listeners speak TLS (wss, stomp+ssl); \
         needs tls-key"),
    setting("tls-key", "PATH", Builtin::Computed("unset"),
        "PEM private key (PKCS#8, PKCS#1 or SEC1) of tls-cert"),
];

/// Settings whose TOML value may also be an array of strings (joined with commas).
const LIST_SETTINGS: &[&str] = &["jwt-algorithms", "jwt-audience", "jwt-issuer", "ws-origins"];

const AFTER_HELP: &str = "\
Precedence: flags, then environment variables, then the --config file (same names as the flags, \
e.g. max-frame-size = \"1MiB\"), then the defaults shown.
Sizes: bytes, or with KiB, MiB, GiB (1024-based) or KB, MB, GB (1000-based).
Durations: 500ms, 10s, 1m, 1h30m.";

fn spec(name: &str) -> &'static Setting {
    SETTINGS.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name} is not in SETTINGS"))
}

fn env_var(name: &str) -> String {
    format!("{ENV_PREFIX}{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// The `stampede` command line. Values are plain strings: parsing happens in `Layers::resolve`,
/// so a flag, a variable and a file key go through the same parser and the same messages.
/// Environment variables are read there too, not by clap, so tests can pass a fake environment.
fn command() -> Command {
    let mut command = Command::new("stampede")
        .bin_name("stampede")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Stampede: a clustered STOMP broker")
        .after_help(AFTER_HELP)
        .args_override_self(true)
        .arg(
            Arg::new("config")
                .long("config")
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!(
                    "TOML file with settings, keyed like the flags; flags and environment \
                     variables override it [env: {CONFIG_ENV}=]"
                )),
        );
    for s in SETTINGS {
        let default = match s.builtin {
            Builtin::Value(value) | Builtin::Computed(value) => value,
        };
        command = command.arg(Arg::new(s.name).long(s.name).value_name(s.value_name).help(format!(
            "{} [default: {default}] [env: {}=]",
            s.help,
            env_var(s.name)
        )));
    }
    command
        .arg(Arg::new(HISTORY).long(HISTORY).value_name("PATTERN=SIZE[,TTL]").action(ArgAction::Append).help(
            format!(
                "Keep the last SIZE messages (each for at most TTL) of topics matching PATTERN, \
                 where * matches anything, / included; repeatable, the first match wins \
                 [default: none] [env: {HISTORY_ENV}=, rules separated by ;]"
            ),
        ))
        .arg(Arg::new(ACL).long(ACL).value_name("WHO ACTIONS PATTERN").action(ArgAction::Append).help(
            format!(
                "Allow WHO (user:NAME, role:NAME or * for anyone authenticated) to publish, subscribe or \
         publish,subscribe to destinations matching PATTERN (* matches anything); repeatable \
         [default: none] [env: {ACL_ENV}=, rules separated by ;]"
            ),
        ))
}

// === Layers ===

/// The config file, read and checked for unknown keys.
struct ConfigFile {
    path: PathBuf,
    table: toml::Table,
}

/// One `[[acl]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclTable {
    user: Option<String>,
    role: Option<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
}

/// One `[[history]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryTable {
    pattern: String,
    size: usize,
    ttl: Option<String>,
}

impl ConfigFile {
    fn read(path: PathBuf) -> Result<ConfigFile, ConfigError> {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(source) => return Err(ConfigError::ReadFile { path, source }),
        };
        let table = match toml::from_str::<toml::Table>(&text) {
            Ok(table) => table,
            Err(source) => return Err(ConfigError::ParseFile { path, source }),
        };
        let unknown = table.keys().find(|key| {
            key.as_str() != HISTORY && key.as_str() != ACL && SETTINGS.iter().all(|s| s.name != *key)
        });
        if let Some(key) = unknown {
            return Err(ConfigError::UnknownKey { suggestion: closest_setting(key), key: key.clone(), path });
        }
        Ok(ConfigFile { path, table })
    }

    fn origin(&self) -> Origin {
        Origin::File(self.path.clone())
    }

    /// The text of a scalar key; numbers and booleans are written out as they would be typed.
    fn scalar(&self, name: &'static str, value: &toml::Value) -> Result<String, ConfigError> {
        match value {
            toml::Value::String(text) => Ok(text.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Float(x) => Ok(x.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            toml::Value::Array(items)
                if LIST_SETTINGS.contains(&name) && items.iter().all(toml::Value::is_str) =>
            {
                Ok(items.iter().filter_map(toml::Value::as_str).collect::<Vec<_>>().join(","))
            }
            other => Err(ConfigError::Invalid {
                setting: name,
                origin: self.origin(),
                value: other.to_string(),
                reason: "expected a string or a number".to_owned(),
            }),
        }
    }

    fn acl(&self, value: &toml::Value) -> Result<Vec<AclRule>, ConfigError> {
        let fail = |entry: usize, reason: String| ConfigError::FileAcl {
            path: self.path.clone(),
            entry: entry + 1,
            reason,
        };
        self.tables(value, ACL, "user or role, publish and subscribe", fail, |table: AclTable| {
            let subject = match (table.user, table.role) {
                (Some(_), Some(_)) => return Err("give user or role, not both".to_owned()),
                (Some(user), None) => Subject::User(user),
                (None, Some(role)) => Subject::Role(role),
                (None, None) => Subject::Anyone,
            };
            AclRule::build(subject, table.publish, table.subscribe)
        })
    }

    fn history(&self, value: &toml::Value) -> Result<Vec<HistoryRule>, ConfigError> {
        let fail = |entry: usize, reason: String| ConfigError::FileHistory {
            path: self.path.clone(),
            entry: entry + 1,
            reason,
        };
        self.tables(value, HISTORY, "pattern, size and ttl", fail, |table: HistoryTable| {
            HistoryRule::build(&table.pattern, table.size, table.ttl.as_deref())
        })
    }

    /// An array of TOML tables (`[[acl]]`, `[[history]]`), each read as a `T` and turned into a
    /// rule by `build`; `fields` says what a table holds, for the errors, and `fail` names the
    /// entry that is wrong.
    fn tables<T: serde::de::DeserializeOwned, R>(
        &self,
        value: &toml::Value,
        setting: &'static str,
        fields: &str,
        fail: impl Fn(usize, String) -> ConfigError,
        build: impl Fn(T) -> Result<R, String>,
    ) -> Result<Vec<R>, ConfigError> {
        let Some(entries) = value.as_array() else {
            return Err(ConfigError::Invalid {
                setting,
                origin: self.origin(),
                value: value.to_string(),
                reason: format!("expected [[{setting}]] tables with {fields}"),
            });
        };
        entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                if !entry.is_table() {
                    return Err(fail(i, format!("expected a table with {fields}")));
                }
                let table: T = entry.clone().try_into().map_err(|e| fail(i, e.to_string()))?;
                build(table).map_err(|reason| fail(i, reason))
            })
            .collect()
    }
}

/// The places a setting can come from, highest precedence first.
struct Layers<'a> {
    flags: &'a ArgMatches,
    /// Already filtered: empty values are `None`.
    env: &'a dyn Fn(&str) -> Option<String>,
    file: Option<&'a ConfigFile>,
}

/// A typed value with the text it came from, for messages that compare two settings.
struct Resolved<T> {
    value: T,
    origin: Origin,
    text: String,
}

impl Layers<'_> {
    /// The text of `name` from the highest layer that sets it.
    fn text(&self, name: &'static str) -> Result<Option<(String, Origin)>, ConfigError> {
        if let Some(value) = self.flags.get_one::<String>(name) {
            return Ok(Some((value.clone(), Origin::Flag(format!("--{name}")))));
        }
        let var = env_var(name);
        if let Some(value) = (self.env)(&var) {
            return Ok(Some((value, Origin::Env(var))));
        }
        if let Some(file) = self.file {
            if let Some(value) = file.table.get(name) {
                return Ok(Some((file.scalar(name, value)?, file.origin())));
            }
        }
        Ok(None)
    }

    /// The parsed value of `name` if some layer sets it.
    fn optional<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<Resolved<T>>, ConfigError> {
        let Some((text, origin)) = self.text(name)? else {
            return Ok(None);
        };
        match parse(text.trim()) {
            Ok(value) => Ok(Some(Resolved { value, origin, text })),
            Err(reason) => Err(ConfigError::Invalid {
                setting: name,
                origin,
                value: if name == "redis-url" { redact_url(&text) } else { text },
                reason,
            }),
        }
    }

    /// The parsed value of `name`, falling back to its built-in value.
    fn value<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Resolved<T>, ConfigError> {
        if let Some(resolved) = self.optional(name, &parse)? {
            return Ok(resolved);
        }
        let Builtin::Value(text) = spec(name).builtin else {
            panic!("{name} has no built-in text value");
        };
        let value = parse(text).map_err(|reason| ConfigError::Invalid {
            setting: name,
            origin: Origin::Default,
            value: text.to_owned(),
            reason,
        })?;
        Ok(Resolved { value, origin: Origin::Default, text: text.to_owned() })
    }

    /// History rules from the highest layer that has any; layers are not merged.
    fn history(&self) -> Result<Vec<HistoryRule>, ConfigError> {
        let parse_all = |items: Vec<&str>, origin: Origin| {
            items
                .into_iter()
                .map(|item| {
                    parse_history_rule(item).map_err(|reason| ConfigError::Invalid {
                        setting: HISTORY,
                        origin: origin.clone(),
                        value: item.to_owned(),
                        reason,
                    })
                })
                .collect()
        };
        if let Some(items) = self.flags.get_many::<String>(HISTORY) {
            let items = items.map(String::as_str).collect();
            return parse_all(items, Origin::Flag(format!("--{HISTORY}")));
        }
        if let Some(list) = (self.env)(HISTORY_ENV) {
            let items = list.split(';').map(str::trim).filter(|s| !s.is_empty());
            return parse_all(items.collect(), Origin::Env(HISTORY_ENV.to_owned()));
        }
        match self.file {
            Some(file) => match file.table.get(HISTORY) {
                Some(value) => file.history(value),
                None => Ok(Vec::new()),
            },
            None => Ok(Vec::new()),
        }
    }

    /// Access rules from the highest layer that has any; layers are not merged.
    fn acl(&self) -> Result<Resolved<Vec<AclRule>>, ConfigError> {
        let parse_all = |items: Vec<&str>, origin: Origin| {
            let rules = items
                .iter()
                .map(|item| {
                    parse_acl_rule(item).map_err(|reason| ConfigError::Invalid {
                        setting: ACL,
                        origin: origin.clone(),
                        value: (*item).to_owned(),
                        reason,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Resolved { value: rules, origin, text: items.join("; ") })
        };
        if let Some(items) = self.flags.get_many::<String>(ACL) {
            let items = items.map(String::as_str).collect();
            return parse_all(items, Origin::Flag(format!("--{ACL}")));
        }
        if let Some(list) = (self.env)(ACL_ENV) {
            let items = list.split(';').map(str::trim).filter(|s| !s.is_empty());
            return parse_all(items.collect(), Origin::Env(ACL_ENV.to_owned()));
        }
        match self.file.and_then(|file| Some((file, file.table.get(ACL)?))) {
            Some((file, value)) => {
                Ok(Resolved { value: file.acl(value)?, origin: file.origin(), text: "[[acl]]".to_owned() })
            }
            None => Ok(Resolved { value: Vec::new(), origin: Origin::Default, text: String::new() }),
        }
    }

    /// Authentication, access rules and the admin token.
    fn auth(&self) -> Result<AuthSettings, ConfigError> {
        let secret = self.optional("jwt-secret", jwt_secret)?.map(|r| r.value);
        let jwt = JwtSettings {
            secret,
            public_key: self.optional("jwt-public-key", path)?.map(|r| r.value),
            jwks: self.optional("jwt-jwks", path)?.map(|r| r.value),
            algorithms: self.optional("jwt-algorithms", jwt_algorithms)?.map(|r| r.value),
            leeway: self.value("jwt-leeway", duration)?.value,
            audience: self.optional("jwt-audience", list)?.map(|r| r.value),
            issuer: self.optional("jwt-issuer", list)?.map(|r| r.value),
            user_claim: self.value("jwt-user-claim", claim)?.value,
            roles_claim: self.value("jwt-roles-claim", claim)?.value,
        };
        let users_file = self.optional("users-file", path)?.map(|r| r.value);
        let acl = self.acl()?;
        let auth = AuthSettings {
            users_file,
            jwt,
            acl: acl.value,
            acl_default: self.value("acl-default", acl_default)?.value,
            admin_token: self.optional("admin-token", admin_token)?.map(|r| r.value),
            metrics_public: self.value("metrics-public", boolean)?.value,
        };
        if !auth.enabled() && !auth.acl.is_empty() {
            return Err(ConfigError::Needs {
                setting: ACL,
                origin: acl.origin,
                reason: "needs authentication: set users-file, jwt-secret, jwt-public-key or jwt-jwks \
                         (without it a client's login is not checked, so rules on it mean nothing)",
            });
        }
        for name in ["jwt-algorithms", "jwt-audience", "jwt-issuer", "jwt-user-claim", "jwt-roles-claim"] {
            if !auth.jwt.enabled() {
                if let Some((_, origin)) = self.text(name)? {
                    return Err(ConfigError::Needs {
                        setting: name,
                        origin,
                        reason: "needs a JWT key: set jwt-secret, jwt-public-key or jwt-jwks",
                    });
                }
            }
        }
        Ok(auth)
    }

    fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        let cert = self.optional("tls-cert", path)?;
        let key = self.optional("tls-key", path)?;
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert: cert.value, key: key.value })),
            (None, None) => Ok(None),
            (Some(cert), None) => Err(ConfigError::Needs {
                setting: "tls-cert",
                origin: cert.origin,
                reason: "needs tls-key, the certificate's private key",
            }),
            (None, Some(key)) => Err(ConfigError::Needs {
                setting: "tls-key",
                origin: key.origin,
                reason: "needs tls-cert, the certificate it belongs to",
            }),
        }
    }

    fn resolve(&self) -> Result<Config, ConfigError> {
        let listen = self.value("listen", socket_addr)?;
        let stomp_listen = self.value("stomp-listen", optional_socket_addr)?;
        let admin_listen = self.value("admin-listen", optional_socket_addr)?;
        let redis_url = self.optional("redis-url", redis_url)?.and_then(|r| r.value);
        let redis_prefix = self.value("redis-prefix", redis_prefix)?.value;
        let node_id = match self.optional("node-id", node_id)? {
            Some(resolved) => resolved.value,
            None => uuid::Uuid::new_v4().to_string(),
        };
        let log_format = self.value("log-format", log_format)?.value;
        let worker_threads = self.value("worker-threads", worker_threads)?.value;

        let max_frame_size = self.value("max-frame-size", |s| nonzero(size(s)))?;
        let max_body_size = self.value("max-body-size", |s| nonzero(size(s)))?;
        check_at_most(("max-body-size", &max_body_size), ("max-frame-size", &max_frame_size))?;
        let limits = Limits {
            max_frame_size: max_frame_size.value,
            max_body_size: max_body_size.value,
            max_headers: self.value("max-headers", |s| nonzero(count(s)))?.value,
            max_header_length: self.value("max-header-length", |s| nonzero(size(s)))?.value,
            max_subscriptions: self.value("max-subscriptions", |s| nonzero(count(s)))?.value,
            max_transactions: self.value("max-transactions", |s| nonzero(count(s)))?.value,
            max_connections: self.value("max-connections", count)?.value,
            max_connections_per_ip: self.value("max-connections-per-ip", count)?.value,
            max_frame_rate: self.value("max-frame-rate", count)?.value,
            frame_rate_burst: self.value("frame-rate-burst", |s| nonzero(count(s)))?.value,
            connect_timeout: self.value("connect-timeout", |s| nonzero(duration(s)))?.value,
            write_timeout: Some(self.value("write-timeout", duration)?.value).filter(|t| !t.is_zero()),
            outbound_buffer: self.value("outbound-buffer", |s| nonzero(size(s)))?.value,
            slow_consumer: self.value("slow-consumer", slow_consumer)?.value,
        };

        let (send, receive) = self.value("heartbeat", heartbeat)?.value;
        let heartbeat = Heartbeat { send, receive, grace: self.value("heartbeat-grace", grace)?.value };

        let queues = Queues {
            max_length: self.value("queue-max-length", |s| nonzero(count(s)))?.value,
            default_prefetch: self.value("prefetch-default", |s| nonzero(count(s)))?.value,
            reclaim_after: self.value("queue-reclaim-after", |s| nonzero(duration(s)))?.value,
            max_deliveries: self.value("queue-max-deliveries", count)?.value,
        };

        let ws = WsTuning {
            read_buffer: self.value("ws-read-buffer", |s| nonzero(size(s)))?.value,
            write_buffer: self.value("ws-write-buffer", |s| nonzero(size(s)))?.value,
        };

        let drain_period = self.value("drain-period", duration)?.value;
        let history = self.history()?;
        let auth = self.auth()?;
        let tls = self.tls()?;
        let origins = OriginPolicy {
            allowed: self.optional("ws-origins", origins)?.map(|r| r.value),
            allow_missing: self.value("ws-allow-no-origin", boolean)?.value,
        };

        check_distinct_ports(&[
            ("listen", Some(listen.value), &listen.origin),
            ("stomp-listen", stomp_listen.value, &stomp_listen.origin),
            ("admin-listen", admin_listen.value, &admin_listen.origin),
        ])?;

        Ok(Config {
            listen: listen.value,
            stomp_listen: stomp_listen.value,
            admin_listen: admin_listen.value,
            redis_url,
            redis_prefix,
            node_id,
            log_format,
            worker_threads,
            limits,
            heartbeat,
            queues,
            ws,
            drain_period,
            history,
            auth,
            tls,
            origins,
        })
    }
}

/// `small` must not exceed `large`.
fn check_at_most(
    (name, small): (&'static str, &Resolved<usize>),
    (other, large): (&'static str, &Resolved<usize>),
) -> Result<(), ConfigError> {
    if small.value <= large.value {
        return Ok(());
    }
    Err(ConfigError::Conflict(Box::new(Conflict {
        setting: name,
        origin: small.origin.clone(),
        value: small.text.clone(),
        reason: "must not exceed",
        other,
        other_origin: large.origin.clone(),
        other_value: large.text.clone(),
    })))
}

/// Two enabled listeners on the same non-zero port and overlapping addresses would make the
/// second bind fail; say so before binding. Port 0 (chosen by the OS) never conflicts.
fn check_distinct_ports(
    listeners: &[(&'static str, Option<SocketAddr>, &Origin)],
) -> Result<(), ConfigError> {
    for (i, &(name, addr, origin)) in listeners.iter().enumerate() {
        for &(other, other_addr, other_origin) in &listeners[..i] {
            let (Some(a), Some(b)) = (addr, other_addr) else {
                continue;
            };
            let overlap = a.ip() == b.ip()
                || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified()));
            if a.port() != 0 && a.port() == b.port() && overlap {
                return Err(ConfigError::Conflict(Box::new(Conflict {
                    setting: name,
                    origin: origin.clone(),
                    value: a.to_string(),
                    reason: "must not share a port with",
                    other,
                    other_origin: other_origin.clone(),
                    other_value: b.to_string(),
                })));
            }
        }
    }
    Ok(())
}

/// The setting a mistyped file key most likely meant: within two edits.
fn closest_setting(key: &str) -> Option<&'static str> {
    SETTINGS
        .iter()
        .map(|s| s.name)
        .chain([HISTORY, ACL])
        .map(|name| (edit_distance(key, name), name))
        .filter(|&(distance, _)| distance <= 2)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, name)| name)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

// === Parsers ===
// Each takes trimmed text and returns the value, or what it expected.

const SIZE_EXPECTED: &str = "expected a size like 65536, 64KiB or 1MiB";

/// Bytes, or a whole number with KiB/MiB/GiB (1024-based) or KB/MB/GB (1000-based), any case.
fn size(text: &str) -> Result<usize, String> {
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

fn worker_threads(text: &str) -> Result<Option<usize>, String> {
    match count::<usize>(text)? {
        0 => Ok(None),
        n if n <= MAX_WORKER_THREADS => Ok(Some(n)),
        _ => Err(format!("at most {MAX_WORKER_THREADS}")),
    }
}

fn count<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse().map_err(|_| "expected a whole number like 100".to_owned())
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|_| "expected a duration with a unit, like 500ms, 10s or 1m".to_owned())
}

/// Rejects zero (`T::default()` is zero for every type used here).
fn nonzero<T: Default + PartialEq>(value: Result<T, String>) -> Result<T, String> {
    match value {
        Ok(value) if value == T::default() => Err("must be greater than 0".to_owned()),
        other => other,
    }
}

fn boolean(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

fn path(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("expected a file path".to_owned());
    }
    Ok(PathBuf::from(text))
}

/// Comma-separated, trimmed, empty items dropped; at least one item.
fn list(text: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> =
        text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    if items.is_empty() {
        return Err("expected one or more values separated by commas".to_owned());
    }
    Ok(items)
}

/// Shortest HMAC key accepted: RFC 7518 asks for a key at least as long as the hash (256 bits).
const MIN_JWT_SECRET: usize = 32;

fn jwt_secret(text: &str) -> Result<Secret, String> {
    if text.len() < MIN_JWT_SECRET {
        return Err(format!("must be at least {MIN_JWT_SECRET} bytes (RFC 7518: as long as the hash)"));
    }
    Ok(Secret::new(text))
}

fn admin_token(text: &str) -> Result<Secret, String> {
    if text.len() < 16 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("expected at least 16 characters without spaces".to_owned());
    }
    Ok(Secret::new(text))
}

/// Algorithms the broker verifies; `none` is refused by name.
fn jwt_algorithms(text: &str) -> Result<Vec<jsonwebtoken::Algorithm>, String> {
    use jsonwebtoken::Algorithm::*;
    const ACCEPTED: [jsonwebtoken::Algorithm; 11] =
        [HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384];
    let mut out = Vec::new();
    for item in list(text)? {
        if item.eq_ignore_ascii_case("none") {
            return Err("none (unsigned tokens) is never accepted".to_owned());
        }
        let alg = item
            .to_ascii_uppercase()
            .parse::<jsonwebtoken::Algorithm>()
            .ok()
            .filter(|alg| ACCEPTED.contains(alg))
            .ok_or_else(|| {
                format!(
                    "unknown algorithm {item:?}: expected HS256, HS384, HS512, RS256, RS384, RS512, \
                     PS256, PS384, PS512, ES256 or ES384"
                )
            })?;
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    Ok(out)
}

fn claim(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.split('.').all(|part| !part.is_empty())
        && text.chars().all(|c| !c.is_whitespace() && !c.is_control());
    if valid {
        Ok(text.to_owned())
    } else {
        Err("expected a claim name, dots separating nested names".to_owned())
    }
}

fn acl_default(text: &str) -> Result<AclDefault, String> {
    match text.to_ascii_lowercase().as_str() {
        "allow" => Ok(AclDefault::Allow),
        "deny" => Ok(AclDefault::Deny),
        _ => Err("expected allow or deny".to_owned()),
    }
}

/// `*`, or `scheme://host[:port]` without a path, as browsers send it; kept lower-cased.
fn origins(text: &str) -> Result<Vec<String>, String> {
    list(text)?
        .into_iter()
        .map(|origin| {
            if origin == "*" {
                return Ok(origin);
            }
            let valid = origin.split_once("://").is_some_and(|(scheme, rest)| {
                !scheme.is_empty()
                    && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
                    && !rest.is_empty()
                    && !rest.contains(['/', '?', '#', '*', ' '])
            });
            if valid {
                Ok(origin.to_ascii_lowercase())
            } else {
                Err(format!(
                    "origin {origin:?}: expected scheme://host[:port] like https://app.example.com, or *"
                ))
            }
        })
        .collect()
}

/// `WHO ACTIONS PATTERN`, as `--acl` and `STAMPEDE_ACL` take it.
fn parse_acl_rule(text: &str) -> Result<AclRule, String> {
    let expected =
        || "expected WHO ACTIONS PATTERN like \"role:traders publish,subscribe /topic/prices/*\"".to_owned();
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [who, actions, pattern] = parts[..] else { return Err(expected()) };
    let subject = match who.split_once(':') {
        None if who == "*" => Subject::Anyone,
        Some(("user", name)) if !name.is_empty() => Subject::User(name.to_owned()),
        Some(("role", name)) if !name.is_empty() => Subject::Role(name.to_owned()),
        _ => return Err(format!("who {who:?}: expected user:NAME, role:NAME or *")),
    };
    let (mut publish, mut subscribe) = (Vec::new(), Vec::new());
    for action in actions.split(',') {
        match action {
            "publish" => publish.push(pattern.to_owned()),
            "subscribe" => subscribe.push(pattern.to_owned()),
            other => {
                return Err(format!("action {other:?}: expected publish, subscribe or publish,subscribe"))
            }
        }
    }
    AclRule::build(subject, publish, subscribe)
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| "expected an address like 0.0.0.0:8080 or [::]:8080".to_owned())
}

fn optional_socket_addr(text: &str) -> Result<Option<SocketAddr>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| "expected an address like 0.0.0.0:61613, or off".to_owned())
}

/// Schemes fred understands for a server, a Sentinel group and a Cluster, plain and TLS.
const REDIS_SCHEMES: &[&str] = &[
    "redis://",
    "rediss://",
    "redis+sentinel://",
    "redis-sentinel://",
    "rediss+sentinel://",
    "rediss-sentinel://",
    "redis-cluster://",
    "redis+cluster://",
    "rediss-cluster://",
    "rediss+cluster://",
];

/// Checks the scheme only; `off` means no Redis (the embedded engine).
fn redis_url(text: &str) -> Result<Option<String>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let known = REDIS_SCHEMES
        .iter()
        .any(|scheme| text.get(..scheme.len()).is_some_and(|head| head.eq_ignore_ascii_case(scheme)));
    if known {
        Ok(Some(text.to_owned()))
    } else {
        Err("expected a URL starting with redis://, rediss://, redis+sentinel:// or \
             redis-cluster://, or off"
            .to_owned())
    }
}

/// A key prefix: printable ASCII without spaces or braces, so the engine's hash tags (`{...}`)
/// stay the only ones in a key.
fn redis_prefix(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
    if valid {
        Ok(text.to_owned())
    } else {
        Err("expected 1 to 64 printable characters without spaces, { or }".to_owned())
    }
}

fn node_id(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err("expected 1 to 64 characters from A-Z a-z 0-9 . _ -".to_owned())
    }
}

fn log_format(text: &str) -> Result<LogFormat, String> {
    match text.to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".to_owned()),
    }
}

fn slow_consumer(text: &str) -> Result<SlowConsumerPolicy, String> {
    match text.to_ascii_lowercase().as_str() {
        "disconnect" => Ok(SlowConsumerPolicy::Disconnect),
        "drop" => Ok(SlowConsumerPolicy::Drop),
        _ => Err("expected disconnect or drop".to_owned()),
    }
}

/// `SEND_MS,RECV_MS`, as in STOMP's `heart-beat` header.
fn heartbeat(text: &str) -> Result<(Duration, Duration), String> {
    let expected = || "expected SEND_MS,RECV_MS in milliseconds, like 10000,10000".to_owned();
    let (send, receive) = text.split_once(',').ok_or_else(expected)?;
    let millis = |part: &str| part.trim().parse::<u64>().map_err(|_| expected());
    Ok((Duration::from_millis(millis(send)?), Duration::from_millis(millis(receive)?)))
}

fn grace(text: &str) -> Result<f64, String> {
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
fn parse_history_rule(text: &str) -> Result<HistoryRule, String> {
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

/// `*` matches any run of bytes, `/` included; everything else matches itself.
pub(crate) fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and where in `text` its current run ends.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if pattern.get(p) == Some(&b'*') {
            star = Some((p, t));
            p += 1;
        } else if pattern.get(p) == Some(&text[t]) {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            // Let the last `*` swallow one more byte and retry from there.
            star = Some((star_p, star_t + 1));
            p = star_p + 1;
            t = star_t + 1;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Hides the password of a Redis URL: the userinfo's password, and any query parameter whose
/// name contains "password" (Sentinel credentials).
fn redact_url(url: &str) -> String {
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

// === Tests ===

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let argv = std::iter::once("stampede").chain(args.iter().copied());
        Config::load_from(argv, &|name| env.get(name).cloned())
    }

    fn ok(args: &[&str], env: &[(&str, &str)]) -> Config {
        load(args, env).unwrap_or_else(|e| panic!("expected a valid config: {e}"))
    }

    fn err(args: &[&str], env: &[(&str, &str)]) -> String {
        match load(args, env) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(error) => error.to_string(),
        }
    }

    /// A file in the temp dir, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &str) -> TempFile {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "stampede-config-test-{}-{}.toml",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    // --- defaults ---

    #[test]
    fn defaults_are_the_documented_values() {
        let c = ok(&[], &[]);
        assert_eq!(c.listen, addr("0.0.0.0:8080"));
        assert_eq!(c.stomp_listen, Some(addr("0.0.0.0:61613")));
        assert_eq!(c.admin_listen, Some(addr("0.0.0.0:9090")));
        assert_eq!(c.redis_url, None);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(
            c.limits,
            Limits {
                max_frame_size: 1_114_112,
                max_body_size: 1 << 20,
                max_headers: 64,
                max_header_length: 8 * 1024,
                max_subscriptions: 1024,
                max_transactions: 16,
                max_connections: 0,
                max_connections_per_ip: 0,
                max_frame_rate: 0,
                frame_rate_burst: 1000,
                connect_timeout: Duration::from_secs(10),
                write_timeout: Some(Duration::from_secs(30)),
                outbound_buffer: 4 << 20,
                slow_consumer: SlowConsumerPolicy::Disconnect,
            }
        );
        assert_eq!(
            c.heartbeat,
            Heartbeat { send: Duration::from_secs(10), receive: Duration::from_secs(10), grace: 2.0 }
        );
        assert_eq!(
            c.queues,
            Queues {
                max_length: 100_000,
                default_prefetch: 100,
                reclaim_after: Duration::from_secs(30),
                max_deliveries: 0,
            }
        );
        assert_eq!(c.ws, WsTuning { read_buffer: 8 * 1024, write_buffer: 64 * 1024 });
        assert_eq!(c.drain_period, Duration::from_secs(30));
        assert!(c.history.is_empty());
        assert_eq!(
            c.auth,
            AuthSettings {
                users_file: None,
                jwt: JwtSettings {
                    secret: None,
                    public_key: None,
                    jwks: None,
                    algorithms: None,
                    leeway: Duration::from_secs(30),
                    audience: None,
                    issuer: None,
                    user_claim: "sub".into(),
                    roles_claim: "roles".into(),
                },
                acl: Vec::new(),
                acl_default: AclDefault::Deny,
                admin_token: None,
                metrics_public: false,
            }
        );
        assert!(!c.auth.enabled(), "authentication is off by default");
        assert_eq!(c.tls, None);
        assert_eq!(c.origins, OriginPolicy { allowed: None, allow_missing: false });
    }

    #[test]
    fn default_node_id_is_a_fresh_uuid_v4() {
        let a = Config::default();
        let b = Config::default();
        let uuid = uuid::Uuid::parse_str(&a.node_id).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert_ne!(a.node_id, b.node_id);
        assert!(node_id(&a.node_id).is_ok());
    }

    #[test]
    fn default_impls_agree_with_load() {
        let loaded = ok(&[], &[]);
        let default = Config::default();
        assert_eq!(default.limits, loaded.limits);
        assert_eq!(Limits::default(), loaded.limits);
        assert_eq!(Heartbeat::default(), loaded.heartbeat);
        assert_eq!(Queues::default(), loaded.queues);
        assert_eq!(WsTuning::default(), loaded.ws);
    }

    // --- precedence ---

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let file = TempFile::new(
            r#"
            max-frame-size = "2MiB"
            max-body-size = "1KiB"
            drain-period = "5s"
            listen = "127.0.0.1:1000"
            "#,
        );
        let env = [
            ("STAMPEDE_CONFIG", file.path()),
            ("STAMPEDE_MAX_FRAME_SIZE", "3MiB"),
            ("STAMPEDE_DRAIN_PERIOD", "6s"),
        ];
        let c = ok(&["--max-frame-size", "4MiB"], &env);
        assert_eq!(c.limits.max_frame_size, 4 << 20, "flag beats env and file");
        assert_eq!(c.drain_period, Duration::from_secs(6), "env beats file");
        assert_eq!(c.listen, addr("127.0.0.1:1000"), "file beats default");
        assert_eq!(c.limits.max_body_size, 1024, "file beats default");
        assert_eq!(c.limits.max_headers, 64, "default when nothing sets it");

        let c = ok(&[], &env);
        assert_eq!(c.limits.max_frame_size, 3 << 20, "env beats file");
        let c = ok(&["--config", file.path()], &[]);
        assert_eq!(c.limits.max_frame_size, 2 << 20, "file beats default");
    }

    #[test]
    fn config_flag_beats_config_env() {
        let from_env = TempFile::new("node-id = \"from-env\"");
        let from_flag = TempFile::new("node-id = \"from-flag\"");
        let c = ok(&["--config", from_flag.path()], &[("STAMPEDE_CONFIG", from_env.path())]);
        assert_eq!(c.node_id, "from-flag");
        let c = ok(&[], &[("STAMPEDE_CONFIG", from_env.path())]);
        assert_eq!(c.node_id, "from-env");
    }

    #[test]
    fn empty_environment_value_counts_as_unset() {
        let c = ok(&[], &[("STAMPEDE_NODE_ID", ""), ("STAMPEDE_REDIS_URL", "")]);
        assert_eq!(c.redis_url, None);
        assert!(uuid::Uuid::parse_str(&c.node_id).is_ok());
    }

    #[test]
    fn a_repeated_flag_keeps_the_last_value() {
        let c = ok(&["--node-id", "a", "--node-id", "b"], &[]);
        assert_eq!(c.node_id, "b");
    }

    // --- values ---

    #[test]
    fn off_disables_listeners_and_redis() {
        let file = TempFile::new("redis-url = \"off\"");
        let c = ok(
            &["--config", file.path(), "--stomp-listen", "off"],
            &[("STAMPEDE_ADMIN_LISTEN", "OFF"), ("STAMPEDE_REDIS_URL", "off")],
        );
        assert_eq!(c.stomp_listen, None);
        assert_eq!(c.admin_listen, None);
        assert_eq!(c.redis_url, None);
        // A flag can turn off a listener the file enables, and the other way round.
        let file = TempFile::new("stomp-listen = \"off\"");
        let c = ok(&["--config", file.path(), "--stomp-listen", "127.0.0.1:6161"], &[]);
        assert_eq!(c.stomp_listen, Some(addr("127.0.0.1:6161")));
    }

    #[test]
    fn listen_cannot_be_off() {
        let e = err(&["--listen", "off"], &[]);
        assert!(e.starts_with("invalid value for listen from command line --listen: \"off\""), "{e}");
    }

    #[test]
    fn sizes_accept_bytes_and_suffixes() {
        assert_eq!(size("65536"), Ok(65536));
        assert_eq!(size("0"), Ok(0));
        assert_eq!(size("64KiB"), Ok(64 * 1024));
        assert_eq!(size("64kib"), Ok(64 * 1024));
        assert_eq!(size("1MiB"), Ok(1 << 20));
        assert_eq!(size("1 MiB"), Ok(1 << 20));
        assert_eq!(size("2GiB"), Ok(2 << 30));
        assert_eq!(size("64KB"), Ok(64_000));
        assert_eq!(size("1mb"), Ok(1_000_000));
        assert_eq!(size("1GB"), Ok(1_000_000_000));
        assert_eq!(size("100B"), Ok(100));
        for bad in ["", "12x", "KiB", "1.5MiB", "-1", "1 MiB 2", "1KiBs"] {
            assert_eq!(size(bad), Err(SIZE_EXPECTED.to_owned()), "{bad:?}");
        }
        assert!(size("99999999999999999999GiB").is_err());
        assert!(size("18446744073709551615GiB").is_err());
    }

    #[test]
    fn bad_size_names_setting_and_environment_variable() {
        let e = err(&[], &[("STAMPEDE_MAX_FRAME_SIZE", "12x")]);
        assert_eq!(
            e,
            "invalid value for max-frame-size from environment STAMPEDE_MAX_FRAME_SIZE: \
             \"12x\": expected a size like 65536, 64KiB or 1MiB"
        );
    }

    #[test]
    fn sizes_and_durations_from_every_layer() {
        let file = TempFile::new(
            "outbound-buffer = \"1MB\"\nqueue-reclaim-after = \"2m 30s\"\nws-read-buffer = 4096",
        );
        let c = ok(
            &["--config", file.path(), "--connect-timeout", "500ms", "--ws-write-buffer", "16KiB"],
            &[("STAMPEDE_DRAIN_PERIOD", "1m")],
        );
        assert_eq!(c.limits.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.drain_period, Duration::from_secs(60));
        assert_eq!(c.queues.reclaim_after, Duration::from_secs(150));
        assert_eq!(c.limits.outbound_buffer, 1_000_000);
        assert_eq!(c.ws.read_buffer, 4096);
        assert_eq!(c.ws.write_buffer, 16 * 1024);
    }

    #[test]
    fn malformed_rule_tables_name_the_entry_and_what_a_table_holds() {
        let both = TempFile::new("[[acl]]\nuser = \"ann\"\nrole = \"ops\"\npublish = []\nsubscribe = []");
        let e = err(&["--config", both.path()], &[]);
        assert!(e.contains("[[acl]] entry 1") && e.contains("give user or role, not both"), "{e}");
        let scalar = TempFile::new("history = 5");
        let e = err(&["--config", scalar.path()], &[]);
        assert!(e.contains("expected [[history]] tables with pattern, size and ttl"), "{e}");
        let not_a_table = TempFile::new("history = [{ pattern = \"/topic/a\", size = 1 }, 3]");
        let e = err(&["--config", not_a_table.path()], &[]);
        assert!(
            e.contains("[[history]] entry 2") && e.contains("expected a table with pattern, size and ttl"),
            "{e}"
        );
    }

    #[test]
    fn worker_threads_are_automatic_unless_set() {
        assert_eq!(ok(&[], &[]).worker_threads, None);
        assert_eq!(ok(&["--worker-threads", "0"], &[]).worker_threads, None);
        assert_eq!(ok(&[], &[("STAMPEDE_WORKER_THREADS", "1")]).worker_threads, Some(1));
        let e = err(&["--worker-threads", "5000"], &[]);
        assert!(e.contains("worker-threads") && e.contains("at most 1024"), "{e}");
        let e = err(&["--worker-threads", "two"], &[]);
        assert!(e.contains("expected a whole number"), "{e}");
    }

    #[test]
    fn a_zero_write_timeout_means_never() {
        assert_eq!(ok(&["--write-timeout", "0s"], &[]).limits.write_timeout, None);
        assert_eq!(
            ok(&[], &[("STAMPEDE_WRITE_TIMEOUT", "5s")]).limits.write_timeout,
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        let e = err(&["--drain-period", "30"], &[]);
        assert_eq!(
            e,
            "invalid value for drain-period from command line --drain-period: \"30\": \
             expected a duration with a unit, like 500ms, 10s or 1m"
        );
        // Zero is a valid drain period but not a valid connect timeout.
        assert_eq!(ok(&["--drain-period", "0s"], &[]).drain_period, Duration::ZERO);
        let e = err(&["--connect-timeout", "0s"], &[]);
        assert!(e.contains("connect-timeout") && e.contains("must be greater than 0"), "{e}");
    }

    #[test]
    fn file_accepts_numbers_for_numeric_settings() {
        let file = TempFile::new(
            "max-frame-size = 65536\nmax-body-size = 1000\nheartbeat-grace = 3\n\
             prefetch-default = 10\nqueue-max-deliveries = 5\nmax-connections = 0",
        );
        let c = ok(&["--config", file.path()], &[]);
        assert_eq!(c.limits.max_frame_size, 65536);
        assert_eq!(c.limits.max_body_size, 1000);
        assert_eq!(c.heartbeat.grace, 3.0);
        assert_eq!(c.queues.default_prefetch, 10);
        assert_eq!(c.queues.max_deliveries, 5);
        assert_eq!(c.limits.max_connections, 0);
    }

    #[test]
    fn enumerations_parse_case_insensitively() {
        let c = ok(&["--log-format", "JSON", "--slow-consumer", "drop"], &[]);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.limits.slow_consumer, SlowConsumerPolicy::Drop);
        let e = err(&[], &[("STAMPEDE_SLOW_CONSUMER", "block")]);
        assert!(e.contains("slow-consumer") && e.contains("expected disconnect or drop"), "{e}");
        let e = err(&["--log-format", "xml"], &[]);
        assert!(e.contains("log-format") && e.contains("expected text or json"), "{e}");
    }

    #[test]
    fn heartbeat_parses_send_and_receive() {
        let c = ok(&["--heartbeat", "5000, 0"], &[]);
        assert_eq!(c.heartbeat.send, Duration::from_secs(5));
        assert_eq!(c.heartbeat.receive, Duration::ZERO);
    }

    // --- history ---

    #[test]
    fn history_from_file() {
        let file = TempFile::new(
            r#"
            [[history]]
            pattern = "/topic/prices/*"
            size = 1000
            ttl = "10m"

            [[history]]
            pattern = "/topic/chat.*"
            size = 50
            "#,
        );
        let c = ok(&["--config", file.path()], &[]);
        assert_eq!(
            c.history,
            vec![
                HistoryRule {
                    pattern: "/topic/prices/*".into(),
                    size: 1000,
                    ttl: Some(Duration::from_secs(600)),
                },
                HistoryRule { pattern: "/topic/chat.*".into(), size: 50, ttl: None },
            ]
        );
    }

    #[test]
    fn history_from_flags_and_environment() {
        let c = ok(&["--history", "/topic/a/*=10,1m", "--history", "/topic/b=5"], &[]);
        assert_eq!(
            c.history,
            vec![
                HistoryRule { pattern: "/topic/a/*".into(), size: 10, ttl: Some(Duration::from_secs(60)) },
                HistoryRule { pattern: "/topic/b".into(), size: 5, ttl: None },
            ]
        );
        let c = ok(&[], &[("STAMPEDE_HISTORY", " /topic/x.*=3,30s ; /topic/y=7;")]);
        assert_eq!(c.history.len(), 2);
        assert_eq!(c.history[0].pattern, "/topic/x.*");
        assert_eq!(c.history[0].ttl, Some(Duration::from_secs(30)));
        assert_eq!(c.history[1].pattern, "/topic/y");
        assert_eq!(c.history[1].size, 7);
    }

    #[test]
    fn history_layers_replace_rather_than_merge() {
        let file = TempFile::new("[[history]]\npattern = \"/topic/file\"\nsize = 1");
        let env = [("STAMPEDE_CONFIG", file.path()), ("STAMPEDE_HISTORY", "/topic/env=2")];
        let patterns = |c: Config| c.history.into_iter().map(|r| r.pattern).collect::<Vec<_>>();
        assert_eq!(patterns(ok(&["--history", "/topic/flag=3"], &env)), ["/topic/flag"]);
        assert_eq!(patterns(ok(&[], &env)), ["/topic/env"]);
        assert_eq!(patterns(ok(&[], &env[..1])), ["/topic/file"]);
    }

    #[test]
    fn bad_history_rules_are_named() {
        let e = err(&["--history", "/queue/a=10"], &[]);
        assert_eq!(
            e,
            "invalid value for history from command line --history: \"/queue/a=10\": \
             pattern \"/queue/a\" must start with \"/topic/\" and name a topic"
        );
        let e = err(&[], &[("STAMPEDE_HISTORY", "/topic/a=0")]);
        assert!(e.contains("environment STAMPEDE_HISTORY") && e.contains("size must be at least 1"), "{e}");
        let e = err(&["--history", "/topic/a"], &[]);
        assert!(e.contains("expected PATTERN=SIZE[,TTL]"), "{e}");
        let e = err(&["--history", "/topic/a=ten"], &[]);
        assert!(e.contains("size \"ten\""), "{e}");
        let e = err(&["--history", "/topic/a=1,forever"], &[]);
        assert!(e.contains("ttl \"forever\""), "{e}");
        let e = err(&["--history", "/topic/=1"], &[]);
        assert!(e.contains("must start with"), "{e}");
    }

    #[test]
    fn bad_history_tables_in_file_are_named() {
        let file = TempFile::new(
            "[[history]]\npattern = \"/topic/a\"\nsize = 1\n\
             [[history]]\npattern = \"/topic/b\"\nsise = 1",
        );
        let e = err(&["--config", file.path()], &[]);
        assert!(e.starts_with("invalid [[history]] entry 2 in config file ") && e.contains("sise"), "{e}");
        let file = TempFile::new("[[history]]\npattern = \"/topic/a\"\nsize = 1\nttl = \"0s\"");
        let e = err(&["--config", file.path()], &[]);
        assert!(e.contains("entry 1") && e.contains("ttl \"0s\""), "{e}");
        let file = TempFile::new("history = \"/topic/a=1\"");
        let e = err(&["--config", file.path()], &[]);
        assert!(e.starts_with("invalid value for history from file "), "{e}");
    }

    #[test]
    fn wildcards_match_any_run_of_characters() {
        let m = |p: &str, t: &str| wildcard_match(p.as_bytes(), t.as_bytes());
        assert!(m("/topic/prices", "/topic/prices"));
        assert!(!m("/topic/prices", "/topic/prices2"));
        assert!(m("/topic/prices/*", "/topic/prices/eur"));
        assert!(m("/topic/prices/*", "/topic/prices/eur/usd"), "* crosses /");
        assert!(m("/topic/prices/*", "/topic/prices/"), "* matches the empty run");
        assert!(!m("/topic/prices/*", "/topic/price"));
        assert!(m("/topic/*.trades", "/topic/a/b.trades"));
        assert!(!m("/topic/*.trades", "/topic/a.trades.x"));
        assert!(m("/topic/*a*b*", "/topic/xxaxxbxx"));
        assert!(m("/topic/*a*b", "/topic/abab"), "backtracks");
        assert!(!m("/topic/*a*b", "/topic/aba"));
        assert!(m("/topic/**", "/topic/"));
        assert!(m("/topic/*", "/topic/ünïcode"));
    }

    #[test]
    fn history_for_returns_the_first_matching_rule() {
        let c = ok(
            &[
                "--history",
                "/topic/prices/eur=1",
                "--history",
                "/topic/prices/*=2",
                "--history",
                "/topic/*=3",
            ],
            &[],
        );
        let size = |d: &str| c.history_for(d).map(|r| r.size);
        assert_eq!(size("/topic/prices/eur"), Some(1));
        assert_eq!(size("/topic/prices/usd"), Some(2));
        assert_eq!(size("/topic/chat"), Some(3));
        assert_eq!(size("/queue/jobs"), None);
        assert_eq!(Config::default().history_for("/topic/chat"), None);
    }

    // --- security ---

    #[test]
    fn security_settings_from_every_layer() {
        let file = TempFile::new(
            r#"
            users-file = "/etc/stampede/users"
            jwt-public-key = "/etc/stampede/jwt.pem"
            jwt-algorithms = ["RS256", "es256"]
            jwt-audience = ["stampede", "chat"]
            ws-origins = ["https://App.example.com", "http://localhost:3000"]
            ws-allow-no-origin = true
            max-connections-per-ip = 20
            "#,
        );
        let c = ok(
            &["--config", file.path(), "--jwt-leeway", "5s", "--max-frame-rate", "100"],
            &[("STAMPEDE_JWT_ISSUER", "https://idp"), ("STAMPEDE_ACL_DEFAULT", "allow")],
        );
        assert_eq!(c.auth.users_file, Some(PathBuf::from("/etc/stampede/users")));
        assert_eq!(c.auth.jwt.public_key, Some(PathBuf::from("/etc/stampede/jwt.pem")));
        assert_eq!(
            c.auth.jwt.algorithms,
            Some(vec![jsonwebtoken::Algorithm::RS256, jsonwebtoken::Algorithm::ES256])
        );
        assert_eq!(c.auth.jwt.audience, Some(vec!["stampede".to_owned(), "chat".to_owned()]));
        assert_eq!(c.auth.jwt.issuer, Some(vec!["https://idp".to_owned()]));
        assert_eq!(c.auth.jwt.leeway, Duration::from_secs(5));
        assert_eq!(c.auth.acl_default, AclDefault::Allow);
        assert_eq!(
            c.origins,
            OriginPolicy {
                allowed: Some(vec!["https://app.example.com".into(), "http://localhost:3000".into()]),
                allow_missing: true,
            }
        );
        assert_eq!((c.limits.max_connections_per_ip, c.limits.max_frame_rate), (20, 100));
        assert!(c.auth.enabled());
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        let secret = "s".repeat(32);
        let token = "admin-token-0123456789";
        let c = ok(&["--jwt-secret", &secret, "--admin-token", token], &[]);
        assert_eq!(c.auth.jwt.secret.as_ref().map(Secret::expose), Some(secret.as_str()));
        let debug = format!("{c:?}");
        assert!(!debug.contains(&secret) && !debug.contains(token), "{debug}");
        let e = err(&["--jwt-secret", "short"], &[]);
        assert!(e.starts_with("invalid value for jwt-secret") && e.contains("at least 32 bytes"), "{e}");
        let e = err(&[], &[("STAMPEDE_ADMIN_TOKEN", "short")]);
        assert!(e.contains("admin-token") && e.contains("at least 16 characters"), "{e}");
    }

    #[test]
    fn unsigned_and_unknown_algorithms_are_refused() {
        let secret = "s".repeat(32);
        let e = err(&["--jwt-secret", &secret, "--jwt-algorithms", "HS256,none"], &[]);
        assert!(e.contains("none (unsigned tokens) is never accepted"), "{e}");
        let e = err(&["--jwt-secret", &secret, "--jwt-algorithms", "HS1"], &[]);
        assert!(e.contains("unknown algorithm \"HS1\""), "{e}");
        let e = err(&["--jwt-secret", &secret, "--jwt-algorithms", "EdDSA"], &[]);
        assert!(e.contains("unknown algorithm"), "{e}");
    }

    #[test]
    fn jwt_rules_without_a_key_are_refused() {
        let e = err(&["--jwt-audience", "x"], &[]);
        assert_eq!(
            e,
            "jwt-audience (from command line --jwt-audience) needs a JWT key: set jwt-secret, \
             jwt-public-key or jwt-jwks"
        );
    }

    #[test]
    fn tls_needs_both_files() {
        let e = err(&["--tls-cert", "/c.pem"], &[]);
        assert_eq!(e, "tls-cert (from command line --tls-cert) needs tls-key, the certificate's private key");
        let e = err(&[], &[("STAMPEDE_TLS_KEY", "/k.pem")]);
        assert!(e.starts_with("tls-key (from environment STAMPEDE_TLS_KEY) needs tls-cert"), "{e}");
        let c = ok(&["--tls-cert", "/c.pem", "--tls-key", "/k.pem"], &[]);
        assert_eq!(c.tls, Some(TlsFiles { cert: "/c.pem".into(), key: "/k.pem".into() }));
    }

    #[test]
    fn origins_are_exact_or_star() {
        let c = ok(&["--ws-origins", "*"], &[]);
        assert_eq!(c.origins.allowed, Some(vec!["*".to_owned()]));
        for bad in ["app.example.com", "https://app.example.com/", "https://*.example.com", "https://"] {
            let e = err(&["--ws-origins", bad], &[]);
            assert!(e.contains("expected scheme://host[:port]"), "{bad}: {e}");
        }
        let e = err(&["--ws-allow-no-origin", "maybe"], &[]);
        assert!(e.contains("expected true or false"), "{e}");
    }

    #[test]
    fn acl_rules_from_every_layer() {
        let secret = "s".repeat(32);
        let file = TempFile::new(
            r#"
            [[acl]]
            role = "traders"
            publish = ["/queue/orders"]
            subscribe = ["/topic/prices/*"]

            [[acl]]
            subscribe = ["/topic/public.*"]
            "#,
        );
        let c = ok(&["--config", file.path(), "--jwt-secret", &secret], &[]);
        assert_eq!(
            c.auth.acl,
            vec![
                AclRule {
                    subject: Subject::Role("traders".into()),
                    publish: vec!["/queue/orders".into()],
                    subscribe: vec!["/topic/prices/*".into()],
                },
                AclRule {
                    subject: Subject::Anyone,
                    publish: vec![],
                    subscribe: vec!["/topic/public.*".into()]
                },
            ]
        );
        let env = [
            ("STAMPEDE_CONFIG", file.path()),
            ("STAMPEDE_ACL", "user:ann publish /user/*; * subscribe /topic/x"),
        ];
        let c = ok(&["--jwt-secret", &secret], &env);
        assert_eq!(c.auth.acl.len(), 2, "the environment replaces the file");
        assert_eq!(c.auth.acl[0].subject, Subject::User("ann".into()));
        let c = ok(&["--jwt-secret", &secret, "--acl", "role:ops publish,subscribe /queue/*"], &env);
        assert_eq!(c.auth.acl.len(), 1, "flags replace the environment");
        assert_eq!((c.auth.acl[0].publish.len(), c.auth.acl[0].subscribe.len()), (1, 1));
    }

    #[test]
    fn bad_acl_rules_are_named() {
        let secret = "s".repeat(32);
        let e = err(&["--jwt-secret", &secret, "--acl", "role:x read /topic/a"], &[]);
        assert!(
            e.starts_with("invalid value for acl from command line --acl") && e.contains("action \"read\""),
            "{e}"
        );
        let e = err(&["--jwt-secret", &secret, "--acl", "group:x publish /topic/a"], &[]);
        assert!(e.contains("expected user:NAME, role:NAME or *"), "{e}");
        let e = err(&["--jwt-secret", &secret, "--acl", "* publish topic/a"], &[]);
        assert!(e.contains("starting with /"), "{e}");
        let e = err(&["--jwt-secret", &secret, "--acl", "* publish"], &[]);
        assert!(e.contains("expected WHO ACTIONS PATTERN"), "{e}");
        let file = TempFile::new("[[acl]]\nuser = \"a\"\nrole = \"b\"\npublish = [\"/topic/a\"]");
        let e = err(&["--config", file.path(), "--jwt-secret", &secret], &[]);
        assert!(e.contains("invalid [[acl]] entry 1") && e.contains("not both"), "{e}");
        let file = TempFile::new("[[acl]]\nrole = \"b\"");
        let e = err(&["--config", file.path(), "--jwt-secret", &secret], &[]);
        assert!(e.contains("at least one pattern"), "{e}");
        let file = TempFile::new("[[acl]]\nrole = \"b\"\npublsh = [\"/topic/a\"]");
        let e = err(&["--config", file.path(), "--jwt-secret", &secret], &[]);
        assert!(e.contains("entry 1") && e.contains("publsh"), "{e}");
    }

    #[test]
    fn acl_rules_without_authentication_are_refused() {
        let e = err(&["--acl", "* publish /topic/a"], &[]);
        assert!(e.starts_with("acl (from command line --acl) needs authentication"), "{e}");
    }

    #[test]
    fn frame_rate_burst_must_be_positive() {
        let e = err(&["--frame-rate-burst", "0"], &[]);
        assert!(e.contains("frame-rate-burst") && e.ends_with("must be greater than 0"), "{e}");
    }

    // --- validation ---

    #[test]
    fn body_larger_than_frame_is_rejected_naming_both() {
        let e = err(&["--max-frame-size", "1000"], &[]);
        assert_eq!(
            e,
            "max-body-size = 1MiB (from built-in default) must not exceed \
             max-frame-size = 1000 (from command line --max-frame-size)"
        );
        let e = err(&[], &[("STAMPEDE_MAX_BODY_SIZE", "2MiB")]);
        assert!(e.starts_with("max-body-size = 2MiB (from environment STAMPEDE_MAX_BODY_SIZE)"), "{e}");
        // Equal is fine.
        ok(&["--max-frame-size", "1MiB", "--max-body-size", "1MiB"], &[]);
    }

    #[test]
    fn heartbeat_grace_below_one_is_rejected() {
        let e = err(&["--heartbeat-grace", "0.5"], &[]);
        assert_eq!(
            e,
            "invalid value for heartbeat-grace from command line --heartbeat-grace: \
             \"0.5\": must be at least 1.0"
        );
        let e = err(&[], &[("STAMPEDE_HEARTBEAT_GRACE", "NaN")]);
        assert!(e.contains("heartbeat-grace") && e.contains("expected a number"), "{e}");
        assert_eq!(ok(&["--heartbeat-grace", "1"], &[]).heartbeat.grace, 1.0);
    }

    #[test]
    fn bad_node_ids_are_rejected() {
        assert_eq!(ok(&["--node-id", "node-1.eu_west"], &[]).node_id, "node-1.eu_west");
        let sixty_four = "a".repeat(64);
        assert_eq!(ok(&["--node-id", &sixty_four], &[]).node_id, sixty_four);
        for bad in ["", "has space", "slash/y", "ünï", &"a".repeat(65)] {
            let arg = format!("--node-id={bad}");
            let e = err(&[&arg], &[]);
            assert!(
                e.starts_with("invalid value for node-id from command line --node-id")
                    && e.contains("expected 1 to 64 characters"),
                "{e}"
            );
        }
    }

    #[test]
    fn redis_url_scheme_is_checked() {
        for good in [
            "redis://localhost:6379",
            "rediss://cache.example:6380/0",
            "redis+sentinel://s1:26379,s2:26379/mymaster",
            "redis-sentinel://s1:26379",
            "redis-cluster://n1:6379,n2:6379",
            "REDIS://localhost",
        ] {
            assert_eq!(ok(&["--redis-url", good], &[]).redis_url.as_deref(), Some(good));
        }
        let e = err(&[], &[("STAMPEDE_REDIS_URL", "http://user:secret@localhost")]);
        assert_eq!(
            e,
            "invalid value for redis-url from environment STAMPEDE_REDIS_URL: \
             \"http://user:***@localhost\": expected a URL starting with redis://, rediss://, \
             redis+sentinel:// or redis-cluster://, or off"
        );
        assert!(err(&["--redis-url", "localhost:6379"], &[]).contains("redis-url"));
    }

    #[test]
    fn redis_prefix_defaults_and_is_checked() {
        assert_eq!(ok(&[], &[]).redis_prefix, "stampede");
        assert_eq!(ok(&["--redis-prefix", "app1:stomp"], &[]).redis_prefix, "app1:stomp");
        assert_eq!(ok(&[], &[("STAMPEDE_REDIS_PREFIX", "blue")]).redis_prefix, "blue");
        let file = TempFile::new("redis-prefix = \"green\"");
        assert_eq!(ok(&["--config", file.path()], &[]).redis_prefix, "green");
        for bad in ["", "has space", "a{b}", "x}", &"p".repeat(65)] {
            let arg = format!("--redis-prefix={bad}");
            let e = err(&[&arg], &[]);
            assert!(
                e.starts_with("invalid value for redis-prefix from command line --redis-prefix")
                    && e.contains("expected 1 to 64 printable characters"),
                "{e}"
            );
        }
    }

    #[test]
    fn passwords_never_reach_debug_output() {
        let c = ok(&["--redis-url", "redis://app:hunter2@redis:6379/0?sentinel_password=s3cret&x=1"], &[]);
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("s3cret"), "{debug}");
        assert_eq!(
            c.redacted_redis_url().as_deref(),
            Some("redis://app:***@redis:6379/0?sentinel_password=***&x=1")
        );
        assert_eq!(redact_url("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn unknown_file_key_is_named() {
        let file = TempFile::new("max-frme-size = \"1MiB\"");
        let e = err(&["--config", file.path()], &[]);
        assert_eq!(
            e,
            format!(
                "unknown setting \"max-frme-size\" in config file {} \
                 (did you mean \"max-frame-size\"?)",
                file.path()
            )
        );
        let file = TempFile::new("[limits]\nmax-frame-size = 1");
        let e = err(&["--config", file.path()], &[]);
        assert!(e.starts_with("unknown setting \"limits\""), "{e}");
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn non_scalar_file_value_is_rejected() {
        let file = TempFile::new("max-headers = [1, 2]");
        let e = err(&["--config", file.path()], &[]);
        assert!(
            e.starts_with("invalid value for max-headers from file ")
                && e.ends_with("expected a string or a number"),
            "{e}"
        );
    }

    #[test]
    fn bad_heartbeat_is_rejected() {
        for bad in ["10000", "a,b", "1,2,3", "-1,0", ","] {
            let e = err(&[], &[("STAMPEDE_HEARTBEAT", bad)]).replace(&format!("{bad:?}"), "<v>");
            assert_eq!(
                e,
                "invalid value for heartbeat from environment STAMPEDE_HEARTBEAT: <v>: \
                 expected SEND_MS,RECV_MS in milliseconds, like 10000,10000"
            );
        }
    }

    #[test]
    fn zero_is_refused_where_it_means_nothing() {
        for flag in [
            "--max-frame-size",
            "--max-headers",
            "--max-subscriptions",
            "--queue-max-length",
            "--prefetch-default",
            "--ws-read-buffer",
        ] {
            let e = err(&[flag, "0"], &[]);
            assert!(e.contains(flag) && e.ends_with("must be greater than 0"), "{e}");
        }
        let c = ok(&["--max-connections", "0", "--queue-max-deliveries", "0"], &[]);
        assert_eq!((c.limits.max_connections, c.queues.max_deliveries), (0, 0));
        let e = err(&["--prefetch-default", "4294967296"], &[]);
        assert!(e.contains("prefetch-default"), "{e}");
    }

    #[test]
    fn listeners_sharing_a_port_are_rejected() {
        let e = err(&["--stomp-listen", "127.0.0.1:8080"], &[]);
        assert_eq!(
            e,
            "stomp-listen = 127.0.0.1:8080 (from command line --stomp-listen) must not share a \
             port with listen = 0.0.0.0:8080 (from built-in default)"
        );
        // Port 0 is chosen by the OS, and distinct addresses may share a port.
        ok(
            &["--listen", "127.0.0.1:0", "--stomp-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
            &[],
        );
        ok(&["--listen", "127.0.0.1:7000", "--admin-listen", "127.0.0.2:7000"], &[]);
        ok(&["--admin-listen", "off", "--stomp-listen", "off"], &[]);
    }

    // --- file errors ---

    #[test]
    fn missing_config_file_is_named() {
        let path = std::env::temp_dir().join("stampede-config-test-does-not-exist.toml");
        let path = path.to_str().unwrap();
        let e = err(&[], &[("STAMPEDE_CONFIG", path)]);
        assert!(e.starts_with(&format!("cannot read config file {path}: ")), "{e}");
    }

    #[test]
    fn invalid_toml_is_named() {
        let file = TempFile::new("listen = 0.0.0.0:8080\n");
        let e = err(&["--config", file.path()], &[]);
        assert!(e.starts_with(&format!("invalid config file {}: ", file.path())), "{e}");
        assert!(matches!(load(&["--config", file.path()], &[]), Err(ConfigError::ParseFile { .. })));
    }

    // --- command line ---

    #[test]
    fn help_lists_every_setting_with_default_and_env() {
        let Err(ConfigError::Cli(e)) = load(&["--help"], &[]) else {
            panic!("--help must be a clap error");
        };
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        let help = e.to_string();
        for s in SETTINGS {
            let default = match s.builtin {
                Builtin::Value(v) | Builtin::Computed(v) => v,
            };
            assert!(help.contains(&format!("--{} <", s.name)), "{} missing", s.name);
            assert!(help.contains(&format!("[default: {default}]")), "{} default", s.name);
            assert!(help.contains(&format!("[env: {}=]", env_var(s.name))), "{} env", s.name);
        }
        for extra in [
            "--config <PATH>",
            "STAMPEDE_CONFIG",
            "--history <",
            "STAMPEDE_HISTORY",
            "--acl <",
            "STAMPEDE_ACL",
        ] {
            assert!(help.contains(extra), "{extra} missing");
        }
    }

    #[test]
    fn version_and_unknown_flags_are_clap_errors() {
        let Err(ConfigError::Cli(e)) = load(&["--version"], &[]) else {
            panic!("--version must be a clap error");
        };
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        let Err(ConfigError::Cli(e)) = load(&["--max-frme-size", "1"], &[]) else {
            panic!("an unknown flag must be a clap error");
        };
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn env_names_follow_flag_names() {
        assert_eq!(env_var("max-frame-size"), "STAMPEDE_MAX_FRAME_SIZE");
        assert_eq!(env_var("listen"), "STAMPEDE_LISTEN");
        let c = ok(&[], &[("STAMPEDE_QUEUE_RECLAIM_AFTER", "1m")]);
        assert_eq!(c.queues.reclaim_after, Duration::from_secs(60));
    }
}
