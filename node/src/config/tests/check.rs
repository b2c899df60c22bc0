//! Tests of `stampede check-config` as the configuration sees it (the mode and the effective
//! configuration it prints), and of the checks issue #19 added: `outbound-buffer` against
//! `max-frame-size`, negative numbers on the command line, secrets kept out of messages.

use super::{err, load_all, ok, TempFile};
use crate::config::{Loaded, Mode};

/// The effective configuration `check-config` would print.
fn effective(args: &[&str], env: &[(&str, &str)]) -> String {
    let args: Vec<&str> = args.iter().copied().chain(["check-config"]).collect();
    match load_all(&args, env) {
        Ok(Loaded { mode: Mode::CheckConfig { effective }, .. }) => effective,
        Ok(loaded) => panic!("expected check-config, got {:?}", loaded.mode),
        Err(e) => panic!("expected a valid config: {e}"),
    }
}

/// The line of `effective` that sets or describes `name`.
fn line<'a>(effective: &'a str, name: &str) -> &'a str {
    effective
        .lines()
        .find(|line| {
            [format!("{name} = "), format!("# {name} = "), format!("# {name}: ")]
                .iter()
                .any(|start| line.starts_with(start))
        })
        .unwrap_or_else(|| panic!("no line for {name} in\n{effective}"))
}

#[test]
fn without_a_subcommand_the_node_runs() {
    assert_eq!(load_all(&[], &[]).unwrap().mode, Mode::Run);
}

#[test]
fn flags_apply_before_and_after_check_config() {
    for args in [&["--max-connections", "5", "check-config"][..], &["check-config", "--max-connections", "5"]]
    {
        let loaded = load_all(args, &[]).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(matches!(loaded.mode, Mode::CheckConfig { .. }), "{args:?}");
        assert_eq!(loaded.config.limits.max_connections, 5, "{args:?}");
    }
    // The checks are the node's: a bad value is the same error.
    let e = err(&["check-config", "--heartbeat-grace", "0.5"], &[]);
    assert!(e.starts_with("invalid value for heartbeat-grace from command line --heartbeat-grace"), "{e}");
}

#[test]
fn effective_configuration_names_each_value_and_its_layer() {
    let file = TempFile::new("drain-period = \"5s\"\nlisten = \"127.0.0.1:1000\"\nmax-connections = 50");
    let env = [("STAMPEDE_CONFIG", file.path()), ("STAMPEDE_DRAIN_PERIOD", "6s")];
    let out = effective(&["--max-connections", "7"], &env);
    assert!(line(&out, "max-connections").ends_with("# command line --max-connections"), "{out}");
    assert!(line(&out, "max-connections").starts_with("max-connections = \"7\""), "{out}");
    assert!(line(&out, "drain-period").ends_with("# environment STAMPEDE_DRAIN_PERIOD"), "{out}");
    assert!(line(&out, "listen").starts_with("listen = \"127.0.0.1:1000\""), "{out}");
    assert!(line(&out, "listen").ends_with(&format!("# file {}", file.path())), "{out}");
    assert!(line(&out, "max-headers").starts_with("# max-headers = \"64\""), "{out}");
    assert!(line(&out, "max-headers").ends_with("# built-in default"), "{out}");
    assert_eq!(line(&out, "redis-url"), "# redis-url: unset");
    assert_eq!(line(&out, "node-id"), "# node-id: random UUID");
    assert!(out.contains(&format!("# config file: {}", file.path())), "{out}");
    assert!(out.contains("\n# history: none\n") && out.contains("\n# acl: none\n"), "{out}");
}

#[test]
fn effective_configuration_never_shows_a_secret() {
    let secret = "jwt-shared-secret-0123456789abcdef-XYZ";
    let token = "admin-token-0123456789-XYZ";
    let out = effective(
        &["--jwt-secret", secret, "--redis-url", "redis://app:hunter2@redis:6379/0"],
        &[("STAMPEDE_ADMIN_TOKEN", token)],
    );
    assert!(!out.contains(secret) && !out.contains(token) && !out.contains("hunter2"), "{out}");
    assert!(line(&out, "jwt-secret").starts_with("jwt-secret = \"***\""), "{out}");
    assert!(line(&out, "admin-token").ends_with("# environment STAMPEDE_ADMIN_TOKEN"), "{out}");
    assert!(line(&out, "redis-url").starts_with("redis-url = \"redis://app:***@redis:6379/0\""), "{out}");
}

#[test]
fn effective_configuration_is_toml_the_node_reads_back() {
    let secret = "s".repeat(32);
    let args = [
        "--max-frame-size",
        "2MiB",
        "--history",
        "/topic/prices/*=1000,10m",
        "--history",
        "/topic/chat=5",
        "--jwt-secret",
        &secret,
        "--acl",
        "role:traders publish,subscribe /queue/\"odd\"",
        "--ws-origins",
        "https://a.example,https://b.example",
    ];
    let first = ok(&args, &[]);
    let out = effective(&args, &[]);
    assert!(out.contains("# history: 2 from command line --history\n[[history]]\n"), "{out}");
    // Read back as a file, with the redacted secret given again: the same configuration, the
    // defaults still defaults.
    let text: String =
        out.lines().filter(|l| !l.starts_with("jwt-secret")).map(|l| format!("{l}\n")).collect();
    let file = TempFile::new(&text);
    let again = ok(&["--config", file.path(), "--jwt-secret", &secret], &[]);
    let (mut first, mut again) = (first, again);
    (first.node_id, again.node_id) = (String::new(), String::new());
    assert_eq!(again, first);
    let reread = effective(&["--config", file.path(), "--jwt-secret", &secret], &[]);
    assert!(line(&reread, "max-frame-size").ends_with(&format!("# file {}", file.path())), "{reread}");
    assert!(line(&reread, "jwt-user-claim").starts_with("# jwt-user-claim = \"sub\""), "{reread}");
    // Without a JWT key the defaults of the JWT settings read back as defaults too.
    let plain = TempFile::new(&effective(&[], &[]));
    ok(&["--config", plain.path()], &[]);
}

// --- outbound-buffer ---

#[test]
fn outbound_buffer_below_max_frame_size_is_refused_naming_both() {
    let e = err(&["--outbound-buffer", "1MiB"], &[]);
    assert_eq!(
        e,
        "outbound-buffer = 1MiB (from command line --outbound-buffer) must be at least \
         max-frame-size = 1088KiB (from built-in default)"
    );
    let e = err(&["--max-frame-size", "8MiB"], &[("STAMPEDE_OUTBOUND_BUFFER", "4MiB")]);
    assert!(e.starts_with("outbound-buffer = 4MiB (from environment STAMPEDE_OUTBOUND_BUFFER)"), "{e}");
    assert!(e.ends_with("max-frame-size = 8MiB (from command line --max-frame-size)"), "{e}");
    // Equal is fine, and so is a small buffer with small frames.
    ok(&["--outbound-buffer", "1088KiB"], &[]);
    ok(&["--outbound-buffer", "64KiB", "--max-frame-size", "64KiB", "--max-body-size", "60KiB"], &[]);
}

// --- negative numbers ---

#[test]
fn a_negative_count_names_the_setting_and_its_origin() {
    let e = err(&["--max-connections", "-1"], &[]);
    assert_eq!(
        e,
        "invalid value for max-connections from command line --max-connections: \"-1\": must not be negative"
    );
    let e = err(&[], &[("STAMPEDE_MAX_CONNECTIONS", "-1")]);
    assert!(
        e.starts_with("invalid value for max-connections from environment STAMPEDE_MAX_CONNECTIONS"),
        "{e}"
    );
    let file = TempFile::new("max-connections = -1");
    let e = err(&["--config", file.path()], &[]);
    assert!(e.starts_with(&format!("invalid value for max-connections from file {}", file.path())), "{e}");
    for flag in ["--worker-threads", "--prefetch-default", "--max-frame-rate", "--queue-max-deliveries"] {
        let e = err(&[flag, "-3"], &[]);
        assert!(e.contains(&format!("from command line {flag}: \"-3\"")), "{e}");
    }
    let e = err(&["--max-frame-size", "-1"], &[]);
    assert!(e.starts_with("invalid value for max-frame-size from command line --max-frame-size"), "{e}");
    let e = err(&["--heartbeat-grace", "-2.5"], &[]);
    assert!(e.contains("heartbeat-grace") && e.ends_with("must be at least 1.0"), "{e}");
    let e = err(&["--max-connections", "99999999999999999999999"], &[]);
    assert!(e.contains("max-connections") && e.ends_with("is too large"), "{e}");
    // A value that is not a number but starts with '-' is still taken for a flag.
    assert!(matches!(super::load(&["--node-id", "-x"], &[]), Err(crate::config::ConfigError::Cli(_))));
}

#[test]
fn a_secret_is_not_repeated_in_its_error() {
    let e = err(&["--jwt-secret", "too-short-secret"], &[]);
    assert!(e.starts_with("invalid value for jwt-secret from command line --jwt-secret: \"***\""), "{e}");
    let e = err(&[], &[("STAMPEDE_ADMIN_TOKEN", "short token")]);
    assert!(!e.contains("short token") && e.contains("\"***\""), "{e}");
}
