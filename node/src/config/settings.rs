//! The settings table: every scalar setting's name, value name, built-in value and help text,
//! and the `stampede` command line built from it, so `--help` lists exactly what the layers read.

use std::path::PathBuf;

use clap::{Arg, ArgAction, Command};

pub(crate) const ENV_PREFIX: &str = "STAMPEDE_";
/// The flag naming the config file.
pub(crate) const CONFIG: &str = "config";
/// The environment variable naming the config file (not `STAMPEDE_` + the flag: clap reads the
/// flag, `Config::load_from` the variable).
pub(crate) const CONFIG_ENV: &str = "STAMPEDE_CONFIG";
/// The subcommand that checks the configuration and prints it instead of running the node.
pub(crate) const CHECK_CONFIG: &str = "check-config";
/// The list setting of history rules: `--history`, `STAMPEDE_HISTORY`, `[[history]]`.
pub(crate) const HISTORY: &str = "history";
/// The list setting of queue lifetime rules: `--queue`, `STAMPEDE_QUEUE`, `[[queue]]`.
pub(crate) const QUEUE: &str = "queue";
/// The list setting of access rules: `--acl`, `STAMPEDE_ACL`, `[[acl]]`.
pub(crate) const ACL: &str = "acl";

/// One scalar setting: `name` is the flag (`--name`), the TOML key, and, upper-cased with `-` as
/// `_`, the suffix of its environment variable. `B` says what the setting is when no layer sets
/// it: a [`Value`] (text parsed like any other) or [`Computed`] (no text; the resolver decides).
/// Each setting is a constant made by `settings!`, so code names it by that constant and a typo
/// does not compile.
#[derive(Clone, Copy)]
pub(crate) struct Setting<B = Builtin> {
    pub(crate) name: &'static str,
    value_name: &'static str,
    pub(crate) builtin: B,
    help: &'static str,
    /// A key or token: never printed, neither by `check-config` nor in an error.
    pub(crate) secret: bool,
}

/// A built-in text, parsed like any other value when no layer sets the setting.
#[derive(Clone, Copy)]
pub(crate) struct Value(pub(crate) &'static str);

/// No built-in text: the resolver supplies the meaning shown here (unset, random).
#[derive(Clone, Copy)]
pub(crate) struct Computed(&'static str);

/// Either kind of built-in, as `SETTINGS` lists it.
#[derive(Clone, Copy)]
pub(crate) enum Builtin {
    Value(Value),
    Computed(Computed),
}

impl Builtin {
    /// What `--help` shows as the default.
    pub(crate) fn shown(self) -> &'static str {
        match self {
            Builtin::Value(Value(text)) | Builtin::Computed(Computed(text)) => text,
        }
    }
}

/// Defines one constant per setting, `[#[secret]] IDENT: Kind(built-in), name, value name,
/// help;`, and `SETTINGS`, the list of all of them in the order written, which is `--help`'s
/// order. `#[secret]` marks a key or token, whose value is never printed.
macro_rules! settings {
    ($($(#[$secret:ident])? $id:ident: $kind:ident($builtin:literal), $name:literal, $value_name:literal, $help:literal;)*) => {
        $(
            pub(crate) const $id: Setting<$kind> = Setting {
                name: $name,
                value_name: $value_name,
                builtin: $kind($builtin),
                help: $help,
                secret: secret!($($secret)?),
            };
        )*

        /// Every scalar setting, in `--help` order.
        pub(crate) const SETTINGS: &[Setting] = &[$(
            Setting {
                name: $id.name,
                value_name: $id.value_name,
                builtin: Builtin::$kind($id.builtin),
                help: $id.help,
                secret: $id.secret,
            }
        ),*];
    };
}

/// `#[secret]` or nothing; any other attribute does not compile.
macro_rules! secret {
    () => {
        false
    };
    (secret) => {
        true
    };
}

settings! {
    LISTEN: Value("0.0.0.0:8080"), "listen", "ADDR",
        "Client HTTP address; WebSocket clients connect at /ws";
    STOMP_LISTEN: Value("0.0.0.0:61613"), "stomp-listen", "ADDR|off",
        "STOMP over plain TCP; off disables it";
    ADMIN_LISTEN: Value("0.0.0.0:9090"), "admin-listen", "ADDR|off",
        "Health, metrics and admin API (/healthz, /readyz, /metrics, /api/v1); off disables it";
    REDIS_URL: Computed("unset"), "redis-url", "URL|off",
        "Redis for the cluster engine: redis://, rediss://, redis+sentinel://, redis-cluster:// \
         (also redis-sentinel://, redis+cluster:// and their rediss forms); unset or off: the \
         embedded in-memory engine, one node";
    REDIS_PREFIX: Value("stampede"), "redis-prefix", "PREFIX",
        "Prefix of the cluster engine's Redis keys and channels: 1 to 64 printable characters, \
         no spaces, { or }";
    NODE_ID: Computed("random UUID"), "node-id", "ID",
        "This node's name in the cluster: 1 to 64 of A-Z a-z 0-9 . _ -";
    LOG_FORMAT: Value("text"), "log-format", "text|json",
        "Log line format; the level comes from RUST_LOG";
    WORKER_THREADS: Value("0"), "worker-threads", "N",
        "Threads that run client sessions, at most 1024; 0 = one per CPU this process may use \
         (a container's CPU limit counts). Set it when nodes share cores with each other";
    MAX_FRAME_SIZE: Value("1088KiB"), "max-frame-size", "SIZE",
        "Largest frame, command and headers included (1MiB + 64KiB); also the WebSocket message \
         limit";
    MAX_BODY_SIZE: Value("1MiB"), "max-body-size", "SIZE",
        "Largest frame body; at most max-frame-size";
    MAX_HEADERS: Value("64"), "max-headers", "N",
        "Most headers in one frame";
    MAX_HEADER_LENGTH: Value("8KiB"), "max-header-length", "SIZE",
        "Longest header line, name and value included";
    MAX_SUBSCRIPTIONS: Value("1024"), "max-subscriptions", "N",
        "Most subscriptions per connection";
    MAX_TRANSACTIONS: Value("16"), "max-transactions", "N",
        "Most open transactions per connection";
    MAX_CONNECTIONS: Value("0"), "max-connections", "N",
        "Most client connections on this node; 0 = unlimited";
    MAX_CONNECTIONS_PER_IP: Value("0"), "max-connections-per-ip", "N",
        "Most client connections from one IP address; 0 = unlimited";
    MAX_FRAME_RATE: Value("0"), "max-frame-rate", "N",
        "Frames per second one connection may send on average (heart-beats and WebSocket pings \
         count); past it the connection gets an ERROR and is closed; 0 = unlimited";
    FRAME_RATE_BURST: Value("1000"), "frame-rate-burst", "N",
        "Frames one connection may send at once above max-frame-rate";
    CONNECT_TIMEOUT: Value("10s"), "connect-timeout", "DURATION",
        "Time from accept to a valid CONNECT frame, TLS and WebSocket handshakes included";
    WRITE_TIMEOUT: Value("30s"), "write-timeout", "DURATION",
        "A connection whose peer takes no byte of its output for this long is closed (a client \
         that stopped reading); 0 = never";
    OUTBOUND_BUFFER: Value("4MiB"), "outbound-buffer", "SIZE",
        "Bytes queued for one connection before the slow-consumer policy applies";
    SLOW_CONSUMER: Value("disconnect"), "slow-consumer", "disconnect|drop",
        "When a connection's outbound buffer is full: disconnect (ERROR, then close) or drop \
         (drop new topic messages for it, counted, and keep the connection)";
    HEARTBEAT: Value("10000,10000"), "heartbeat", "SEND_MS,RECV_MS",
        "Heart-beats the server offers, as in STOMP's heart-beat header; 0 = none";
    HEARTBEAT_GRACE: Value("2.0"), "heartbeat-grace", "FACTOR",
        "A peer silent for this many negotiated heart-beat intervals is dropped; at least 1.0";
    QUEUE_MAX_LENGTH: Value("100000"), "queue-max-length", "N",
        "Messages kept per queue while nobody consumes; the oldest are dropped beyond it";
    PREFETCH_DEFAULT: Value("100"), "prefetch-default", "N",
        "In-flight messages per subscription when SUBSCRIBE has no prefetch-count; at least 1";
    QUEUE_RECLAIM_AFTER: Value("30s"), "queue-reclaim-after", "DURATION",
        "Idle time after which a dead node's pending queue messages go to live nodes (cluster \
         engine)";
    QUEUE_MAX_DELIVERIES: Value("0"), "queue-max-deliveries", "N",
        "Deliveries after which a message goes to the dead-letter queue; 0 = unlimited";
    PRESENCE: Computed("none"), "presence", "PATTERN,...",
        "Keep presence (who is subscribed, cluster-wide, with join and leave events on \
         /presence<destination>) for destinations matching these patterns, where * matches \
         anything, / included; each starts with /topic/, /queue/ or /user/";
    WS_READ_BUFFER: Value("8KiB"), "ws-read-buffer", "SIZE",
        "Most bytes a WebSocket connection reads from its socket at once; its read buffer starts \
         at 512 bytes, grows to this while data keeps coming and is released when it stops";
    WS_WRITE_BUFFER: Value("64KiB"), "ws-write-buffer", "SIZE",
        "Bytes queued for a WebSocket connection at which they are written before the batch \
         ends (the write high-water mark)";
    DRAIN_PERIOD: Value("30s"), "drain-period", "DURATION",
        "On SIGTERM, client sessions are closed spread over this period";
    USERS_FILE: Computed("unset"), "users-file", "PATH",
        "Users who may CONNECT with login and passcode: one name:hash[:role,role] per line, the \
         hash in argon2 or bcrypt form; turns authentication on";
    #[secret]
    JWT_SECRET: Computed("unset"), "jwt-secret", "SECRET",
        "Shared key (at least 32 bytes) of HS256 JSON Web Tokens; turns authentication on";
    JWT_PUBLIC_KEY: Computed("unset"), "jwt-public-key", "PATH",
        "PEM file with the RSA (RS256) or P-256 (ES256) public key of JSON Web Tokens; turns \
         authentication on";
    JWT_JWKS: Computed("unset"), "jwt-jwks", "PATH",
        "JWKS file (JSON) of JSON Web Token keys, chosen by kid; turns authentication on";
    JWT_ALGORITHMS: Computed("those of the configured keys"), "jwt-algorithms", "ALG,...",
        "JWT algorithms accepted, from HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 \
         ES256 ES384; none is never accepted";
    JWT_LEEWAY: Value("30s"), "jwt-leeway", "DURATION",
        "Clock skew tolerated on a JWT's exp and nbf";
    JWT_AUDIENCE: Computed("unset"), "jwt-audience", "AUD,...",
        "A JWT's aud must name one of these; unset: aud is not checked";
    JWT_ISSUER: Computed("unset"), "jwt-issuer", "ISS,...",
        "A JWT's iss must be one of these; unset: iss is not checked";
    JWT_USER_CLAIM: Value("sub"), "jwt-user-claim", "CLAIM",
        "The JWT claim naming the user";
    JWT_ROLES_CLAIM: Value("roles"), "jwt-roles-claim", "CLAIM",
        "The JWT claim listing the user's roles; dots reach into objects (realm_access.roles)";
    ACL_DEFAULT: Value("deny"), "acl-default", "allow|deny",
        "What an authenticated client may do where no acl rule allows it (its own /user/ \
         destinations are always allowed); ignored while authentication is off";
    #[secret]
    ADMIN_TOKEN: Computed("unset"), "admin-token", "TOKEN",
        "Bearer token the admin API requires; /healthz and /readyz stay open; unset: open";
    METRICS_PUBLIC: Value("false"), "metrics-public", "true|false",
        "Serve /metrics without the admin token";
    WS_ORIGINS: Computed("unset"), "ws-origins", "ORIGIN,...",
        "Origins allowed to open a WebSocket, exact matches like https://app.example.com; * \
         allows any; unset: no Origin check";
    WS_ALLOW_NO_ORIGIN: Value("false"), "ws-allow-no-origin", "true|false",
        "With ws-origins set, accept WebSocket handshakes without an Origin header (non-browser \
         clients)";
    SOCKJS: Value("true"), "sockjs", "true|false",
        "Serve SockJS at the WebSocket path (/ws/info, /ws/<server>/<session>/<transport>) for \
         clients behind proxies that block WebSocket";
    SOCKJS_WEBSOCKET: Value("true"), "sockjs-websocket", "true|false",
        "Offer SockJS's websocket transport; false when a proxy in front strips WebSocket \
         upgrades, so clients go straight to HTTP streaming";
    SOCKJS_HEARTBEAT: Value("25s"), "sockjs-heartbeat", "DURATION",
        "Interval of SockJS heartbeat frames on HTTP transports while nothing else is sent";
    SOCKJS_DISCONNECT_DELAY: Value("5s"), "sockjs-disconnect-delay", "DURATION",
        "A SockJS session with no receiving request for this long is closed";
    SOCKJS_RESPONSE_LIMIT: Value("128KiB"), "sockjs-response-limit", "SIZE",
        "Bytes a SockJS streaming response carries before it ends and the client opens the next";
    SOCKJS_COOKIE_NEEDED: Value("false"), "sockjs-cookie-needed", "true|false",
        "Set a JSESSIONID cookie on SockJS session requests, for load balancers that stick on it";
    SOCKJS_CLIENT_URL: Value("https://cdn.jsdelivr.net/npm/sockjs-client@1/dist/sockjs.min.js"), "sockjs-client-url", "URL",
        "The sockjs-client script SockJS's iframe page loads (iframe-based transports only)";
    APP_PREFIXES: Value("/app/"), "app-prefixes", "PREFIX,...|off",
        "Application destination prefixes: a SEND there is handed to the application (STOMP \
         workers with the backend role, or an app-http backend), never to subscribers; each \
         starts and ends with /";
    #[secret]
    APP_BACKEND_SECRET: Computed("unset"), "app-backend-secret", "SECRET",
        "A CONNECT whose passcode is this secret gets the backend role (consume application \
         destinations, send to one session), with authentication on or off";
    APP_HTTP: Computed("none"), "app-http", "PATTERN=URL,...",
        "Application destinations matching PATTERN (* matches anything) are POSTed as JSON to \
         URL (http:// or https://); the others go to STOMP workers";
    APP_HTTP_TIMEOUT: Value("5s"), "app-http-timeout", "DURATION",
        "Time one HTTP backend call may take, waiting for a free slot included";
    APP_HTTP_CONCURRENCY: Value("64"), "app-http-concurrency", "N",
        "HTTP backend calls in flight per node; further ones wait for a slot";
    APP_HTTP_MAX_RESPONSE: Value("1MiB"), "app-http-max-response", "SIZE",
        "Largest answer read from an HTTP backend or hook; a larger one is a failed call";
    CONNECT_HOOK: Computed("unset"), "connect-hook", "URL",
        "URL POSTed at every CONNECT: the application accepts (naming the user, roles and \
         grants) or refuses; a hook that fails or times out refuses (fail closed)";
    SUBSCRIBE_HOOK: Computed("unset"), "subscribe-hook", "URL",
        "URL POSTed at each SUBSCRIBE matching subscribe-hook-patterns: the application allows \
         or refuses; fail closed";
    SUBSCRIBE_HOOK_PATTERNS: Value("*"), "subscribe-hook-patterns", "PATTERN,...",
        "Destinations, as subscribed, the subscribe hook is asked about (* matches anything)";
    HOOK_TIMEOUT: Value("2s"), "hook-timeout", "DURATION",
        "Time a connect or subscribe hook call may take";
    SESSION_EVENTS: Computed("unset"), "session-events", "DESTINATION",
        "An application destination receiving session events (connect, disconnect, and \
         subscribe where configured) as JSON messages, routed like any application message";
    SESSION_EVENTS_SUBSCRIPTIONS: Computed("none"), "session-events-subscriptions", "PATTERN,...",
        "Destinations whose SUBSCRIBE and UNSUBSCRIBE are sent as session events";
    TLS_CERT: Computed("unset"), "tls-cert", "PATH",
        "PEM certificate chain: the WebSocket and STOMP listeners speak TLS (wss, stomp+ssl); \
         needs tls-key";
    TLS_KEY: Computed("unset"), "tls-key", "PATH",
        "PEM private key (PKCS#8, PKCS#1 or SEC1) of tls-cert";
}

/// Settings whose TOML value may also be an array of strings (joined with commas).
pub(crate) const LIST_SETTINGS: &[&str] = &[
    JWT_ALGORITHMS.name,
    JWT_AUDIENCE.name,
    JWT_ISSUER.name,
    WS_ORIGINS.name,
    PRESENCE.name,
    APP_PREFIXES.name,
    APP_HTTP.name,
    SUBSCRIBE_HOOK_PATTERNS.name,
    SESSION_EVENTS_SUBSCRIPTIONS.name,
];

const AFTER_HELP: &str = "\
Precedence: flags, then environment variables, then the --config file (same names as the flags, \
e.g. max-frame-size = \"1MiB\"), then the defaults shown.
Sizes: bytes, or with KiB, MiB, GiB (1024-based) or KB, MB, GB (1000-based).
Durations: 500ms, 10s, 1m, 1h30m.";

pub(crate) fn env_var(name: &str) -> String {
    format!("{ENV_PREFIX}{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// The `stampede` command line. Values are plain strings: parsing happens in `Layers::resolve`,
/// so a flag, a variable and a file key go through the same parser and the same messages.
/// Environment variables are read there too, not by clap, so tests can pass a fake environment.
/// Every flag is global, so it may come before or after `check-config`. A value may start with
/// `-` when it is a number (`--max-connections -1`), so the setting's own parser refuses it and
/// names the setting; any other value starting with `-` is taken for a flag, as usual.
pub(crate) fn command() -> Command {
    let mut command = Command::new("stampede")
        .bin_name("stampede")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Stampede: a clustered STOMP broker")
        .after_help(AFTER_HELP)
        .args_override_self(true)
        .disable_help_subcommand(true)
        .subcommand(Command::new(CHECK_CONFIG).about(
            "Check the configuration as the node would (the files it names included), print the \
             effective settings with their origins and secrets redacted, and exit: 0 when valid, \
             2 when not. Binds no socket",
        ))
        .arg(
            Arg::new(CONFIG)
                .long(CONFIG)
                .global(true)
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!(
                    "TOML file with settings, keyed like the flags; flags and environment \
                     variables override it [env: {CONFIG_ENV}=]"
                )),
        );
    for s in SETTINGS {
        let default = s.builtin.shown();
        command = command.arg(
            Arg::new(s.name)
                .long(s.name)
                .global(true)
                .allow_negative_numbers(true)
                .value_name(s.value_name)
                .help(format!("{} [default: {default}] [env: {}=]", s.help, env_var(s.name))),
        );
    }
    command
        .arg(
            Arg::new(HISTORY)
                .long(HISTORY)
                .global(true)
                .value_name("PATTERN=SIZE[,TTL]")
                .action(ArgAction::Append)
                .help(format!(
                    "Keep the last SIZE messages (each for at most TTL) of topics matching PATTERN, \
                     where * matches anything, / included; repeatable, the first match wins \
                     [default: none] [env: {}=, rules separated by ;]",
                    env_var(HISTORY)
                )),
        )
        .arg(
            Arg::new(QUEUE)
                .long(QUEUE)
                .global(true)
                .value_name("PATTERN=EXPIRES[,auto-delete]")
                .action(ArgAction::Append)
                .help(format!(
                    "Delete queues matching PATTERN (* matches anything) and their messages once \
                     unused (no consumer, SEND or SUBSCRIBE) for EXPIRES, and/or with auto-delete \
                     when their last consumer leaves; SUBSCRIBE's x-expires and auto-delete \
                     headers override it; repeatable, the first match wins [default: none] \
                     [env: {}=, rules separated by ;]",
                    env_var(QUEUE)
                )),
        )
        .arg(
            Arg::new(ACL)
                .long(ACL)
                .global(true)
                .value_name("WHO ACTIONS PATTERN")
                .action(ArgAction::Append)
                .help(format!(
                    "Allow WHO (user:NAME, role:NAME or * for anyone authenticated) to publish, \
                     subscribe or publish,subscribe to destinations matching PATTERN (* matches \
                     anything); repeatable [default: none] [env: {}=, rules separated by ;]",
                    env_var(ACL)
                )),
        )
}

/// The setting a mistyped file key most likely meant: within two edits.
pub(crate) fn closest_setting(key: &str) -> Option<&'static str> {
    closest(key, SETTINGS.iter().map(|s| s.name).chain([HISTORY, QUEUE, ACL]))
}

/// The variable a mistyped `STAMPEDE_` variable most likely meant: its name after the prefix,
/// lower-cased with `_` as `-`, within two edits of a setting's (`config` included), so
/// `STAMPEDE_MAX_FRME_SIZE` and `STAMPEDE_max_frame_size` both point at
/// `STAMPEDE_MAX_FRAME_SIZE`.
pub(crate) fn closest_env_var(var: &str) -> Option<String> {
    let key = var.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase().replace('_', "-");
    let names = SETTINGS.iter().map(|s| s.name).chain([HISTORY, QUEUE, ACL, CONFIG]);
    closest(&key, names).map(|name| if name == CONFIG { CONFIG_ENV.to_owned() } else { env_var(name) })
}

fn closest(key: &str, names: impl Iterator<Item = &'static str>) -> Option<&'static str> {
    names
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
