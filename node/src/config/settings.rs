//! The settings table: every scalar setting's name, value name, built-in value and help text,
//! and the `stampede` command line built from it, so `--help` lists exactly what the layers read.

use std::path::PathBuf;

use clap::{Arg, ArgAction, Command};

const ENV_PREFIX: &str = "STAMPEDE_";
pub(crate) const CONFIG_ENV: &str = "STAMPEDE_CONFIG";
pub(crate) const HISTORY: &str = "history";
pub(crate) const HISTORY_ENV: &str = "STAMPEDE_HISTORY";
pub(crate) const ACL: &str = "acl";
pub(crate) const ACL_ENV: &str = "STAMPEDE_ACL";

/// One scalar setting: `name` is the flag (`--name`), the TOML key, and, upper-cased with `-` as
/// `_`, the suffix of its environment variable.
pub(crate) struct Setting {
    pub(crate) name: &'static str,
    value_name: &'static str,
    pub(crate) builtin: Builtin,
    help: &'static str,
}

pub(crate) enum Builtin {
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
pub(crate) const SETTINGS: &[Setting] = &[
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
pub(crate) const LIST_SETTINGS: &[&str] = &["jwt-algorithms", "jwt-audience", "jwt-issuer", "ws-origins"];

const AFTER_HELP: &str = "\
Precedence: flags, then environment variables, then the --config file (same names as the flags, \
e.g. max-frame-size = \"1MiB\"), then the defaults shown.
Sizes: bytes, or with KiB, MiB, GiB (1024-based) or KB, MB, GB (1000-based).
Durations: 500ms, 10s, 1m, 1h30m.";

pub(crate) fn spec(name: &str) -> &'static Setting {
    SETTINGS.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name} is not in SETTINGS"))
}

pub(crate) fn env_var(name: &str) -> String {
    format!("{ENV_PREFIX}{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// The `stampede` command line. Values are plain strings: parsing happens in `Layers::resolve`,
/// so a flag, a variable and a file key go through the same parser and the same messages.
/// Environment variables are read there too, not by clap, so tests can pass a fake environment.
pub(crate) fn command() -> Command {
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

/// The setting a mistyped file key most likely meant: within two edits.
pub(crate) fn closest_setting(key: &str) -> Option<&'static str> {
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
