//! The configuration's tests: defaults, precedence of the layers, each general setting's values
//! and messages, the checks that span settings, and the command line. The helpers (`load`, `ok`,
//! `err`, `TempFile`) are shared with `history.rs` (the history rules), `environment.rs`
//! (`STAMPEDE_` variables that name no setting), `check.rs` (`check-config`, and the checks of
//! issue #19) and with the tests of the feature settings in [`crate::auth::settings`] and
//! [`crate::transport::tls`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::parse::{duration, node_id, redact_url, size, SIZE_EXPECTED};
use super::settings::{env_var, SETTINGS};
use super::*;

mod check;
mod environment;
mod history;
mod presence;
mod queue;

pub(crate) fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load_all(args, env).map(|loaded| loaded.config)
}

/// [`load`] with the mode and the warnings.
pub(crate) fn load_all(args: &[&str], env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let argv = std::iter::once("stampede").chain(args.iter().copied());
    Config::load_from(argv, &Environment::from_pairs(env.iter().copied()))
}

pub(crate) fn ok(args: &[&str], env: &[(&str, &str)]) -> Config {
    load(args, env).unwrap_or_else(|e| panic!("expected a valid config: {e}"))
}

pub(crate) fn err(args: &[&str], env: &[(&str, &str)]) -> String {
    match load(args, env) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(error) => error.to_string(),
    }
}

/// A file in the temp dir, removed when dropped.
pub(crate) struct TempFile(PathBuf);

impl TempFile {
    pub(crate) fn new(contents: &str) -> TempFile {
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

    pub(crate) fn path(&self) -> &str {
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
    let file =
        TempFile::new("outbound-buffer = \"2MB\"\nqueue-reclaim-after = \"2m 30s\"\nws-read-buffer = 4096");
    let c = ok(
        &["--config", file.path(), "--connect-timeout", "500ms", "--ws-write-buffer", "16KiB"],
        &[("STAMPEDE_DRAIN_PERIOD", "1m")],
    );
    assert_eq!(c.limits.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.drain_period, Duration::from_secs(60));
    assert_eq!(c.queues.reclaim_after, Duration::from_secs(150));
    assert_eq!(c.limits.outbound_buffer, 2_000_000);
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
fn redis_url_is_checked_as_the_engine_reads_it() {
    for good in [
        "redis://localhost:6379",
        "rediss://cache.example:6380/0",
        "redis+sentinel://s1:26379,s2:26379/mymaster",
        "rediss-sentinel://s1:26379#mymaster",
        "redis-cluster://n1:6379,n2:6379",
        "rediss+cluster://n1:6379,n2:6379",
        "REDIS://localhost",
    ] {
        assert_eq!(ok(&["--redis-url", good], &[]).redis_url.as_deref(), Some(good));
    }
    let e = err(&[], &[("STAMPEDE_REDIS_URL", "http://user:secret@localhost")]);
    assert_eq!(
        e,
        "invalid value for redis-url from environment STAMPEDE_REDIS_URL: \
         \"http://user:***@localhost\": expected a URL starting with redis://, rediss://, \
         redis+sentinel:// or redis-cluster://"
    );
    assert!(err(&["--redis-url", "localhost:6379"], &[]).contains("redis-url"));
    // Not only the scheme: what the engine could not use is refused before the node binds.
    let e = err(&["--redis-url", "rediss+sentinel://app:secret@s1:26379"], &[]);
    assert_eq!(
        e,
        "invalid value for redis-url from command line --redis-url: \
         \"rediss+sentinel://app:***@s1:26379\": name the Sentinel service: \
         redis+sentinel://host:26379/<service>"
    );
    let e = err(&["--redis-url", "rediss://a:6379,b:6379"], &[]);
    assert!(e.contains("takes one host"), "{e}");
}

#[test]
fn redis_tls_ca_needs_a_tls_redis_url() {
    let c = ok(&["--redis-url", "rediss://cache:6380", "--redis-tls-ca", "/etc/redis-ca.pem"], &[]);
    assert_eq!(c.redis_tls_ca, Some("/etc/redis-ca.pem".into()));
    assert_eq!(ok(&["--redis-url", "rediss://cache:6380"], &[]).redis_tls_ca, None);
    let needs = "redis-tls-ca (from environment STAMPEDE_REDIS_TLS_CA) needs a redis-url with TLS \
                 (rediss://, rediss+sentinel://, rediss-cluster://)";
    for url in [&["--redis-url", "redis://cache:6379"][..], &[]] {
        assert_eq!(err(url, &[("STAMPEDE_REDIS_TLS_CA", "/ca.pem")]), needs, "{url:?}");
    }
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
    ok(&["--listen", "127.0.0.1:0", "--stomp-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], &[]);
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
        let default = s.builtin.shown();
        assert!(help.contains(&format!("--{} <", s.name)), "{} missing", s.name);
        assert!(help.contains(&format!("[default: {default}]")), "{} default", s.name);
        assert!(help.contains(&format!("[env: {}=]", env_var(s.name))), "{} env", s.name);
    }
    for extra in
        ["--config <PATH>", "STAMPEDE_CONFIG", "--history <", "STAMPEDE_HISTORY", "--acl <", "STAMPEDE_ACL"]
    {
        assert!(help.contains(extra), "{extra} missing");
    }
}

#[test]
fn settings_have_unique_names_listed_by_help_in_table_order() {
    let mut names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), SETTINGS.len(), "a name is in SETTINGS twice");
    let Err(ConfigError::Cli(e)) = load(&["--help"], &[]) else {
        panic!("--help must be a clap error");
    };
    let help = e.to_string();
    let at = |flag: String| help.find(&flag).unwrap_or_else(|| panic!("{flag} missing"));
    let order: Vec<usize> = SETTINGS.iter().map(|s| at(format!("--{} <", s.name))).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "--help lists the settings in SETTINGS order");
    assert!(at("--config <".to_owned()) < order[0] && order[order.len() - 1] < at("--history <".to_owned()));
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
