//! `stampede check-config` and the start-up checks of the real binary: the effective
//! configuration printed with its origins and without secrets, the files the settings name
//! checked as the node checks them (Redis's URL and CA included), no socket bound, exit 0 or 2;
//! and a misspelt `STAMPEDE_` variable stopping the node itself, while Kubernetes' service links
//! do not.
//!
//! Each run is a child process started by the test kit's process harness (output captured,
//! `STAMPEDE_*` variables of the test's own environment removed), awaited to its exit.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use stampede_testkit::keys::{Keys, ADMIN_TOKEN, JWT_SECRET};
use stampede_testkit::process::Process;
use stampede_testkit::wait::eventually_some_blocking;
use stampede_testkit::Log;

/// What one run of the binary said, and how it ended.
struct Run {
    code: Option<i32>,
    out: String,
    err: String,
    log: String,
}

/// Runs `stampede ARGS` with `env` to its exit.
fn stampede(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stampede"));
    command.args(args).envs(env.iter().copied());
    let log = Log::new("stampede");
    let mut process = Process::spawn(command, &log);
    let status = eventually_some_blocking(
        Duration::from_secs(20),
        Duration::from_millis(20),
        format!("stampede {} exits", args.join(" ")),
        || process.exit_status(),
    );
    process.kill(); // reaped already: this waits for the last output to be read
    let text = log.text();
    let said = |source: &str| -> String {
        let tag = format!(" {source}] ");
        text.lines().filter_map(|line| line.split_once(&tag)).map(|(_, said)| format!("{said}\n")).collect()
    };
    Run { code: status.code(), out: said("out"), err: said("err"), log: text }
}

fn check_config(args: &[&str], env: &[(&str, &str)]) -> Run {
    let args: Vec<&str> = ["check-config"].iter().chain(args).copied().collect();
    stampede(&args, env)
}

#[test]
fn check_config_prints_the_effective_configuration_and_binds_nothing() {
    let keys = Keys::new();
    // A port this test holds: a node would fail to bind it; check-config must not try.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let users = keys.users_file.to_str().unwrap();
    let (cert, key) = (keys.tls.files.cert.to_str().unwrap(), keys.tls.files.key.to_str().unwrap());
    let run = check_config(
        &["--listen", &listen, "--users-file", users, "--tls-cert", cert, "--tls-key", key],
        &[("STAMPEDE_JWT_SECRET", JWT_SECRET), ("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert_eq!(run.code, Some(0), "{}", run.log);
    let line = |start: &str| {
        run.out.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no {start} in\n{}", run.out))
    };
    assert!(line(&format!("listen = \"{listen}\"")).ends_with("# command line --listen"), "{}", run.out);
    assert!(line("users-file = ").contains(users), "{}", run.out);
    assert!(line("jwt-secret = \"***\"").ends_with("# environment STAMPEDE_JWT_SECRET"), "{}", run.out);
    assert!(line("admin-token = \"***\"").ends_with("# environment STAMPEDE_ADMIN_TOKEN"), "{}", run.out);
    assert!(line("# max-frame-size = \"1088KiB\"").ends_with("# built-in default"), "{}", run.out);
    // The harness logs the command line with its environment: look at what stampede said.
    let said = format!("{}{}", run.out, run.err);
    assert!(!said.contains(JWT_SECRET) && !said.contains(ADMIN_TOKEN), "a secret was printed:\n{}", run.log);
    assert!(run.err.is_empty(), "{}", run.log);
}

#[test]
fn check_config_refuses_what_the_node_refuses_with_status_2() {
    let refused = |args: &[&str], env: &[(&str, &str)], expected: &str| {
        let run = check_config(args, env);
        assert_eq!(run.code, Some(2), "{args:?} {env:?}\n{}", run.log);
        assert!(run.err.starts_with(expected), "expected {expected}\n{}", run.log);
        assert!(run.out.is_empty(), "nothing is printed for an invalid configuration:\n{}", run.log);
    };
    let keys = Keys::new();
    // The files the settings name are checked as the node checks them.
    let plain = keys.dir.write("plain-users", "ann:ann-pw\n");
    refused(
        &["--users-file", plain.to_str().unwrap()],
        &[],
        &format!("stampede: invalid users-file {}: line 1:", plain.display()),
    );
    let (cert, not_a_key) = (keys.tls.files.cert.to_str().unwrap(), keys.users_file.to_str().unwrap());
    refused(
        &["--tls-cert", cert, "--tls-key", not_a_key],
        &[],
        &format!("stampede: invalid tls-key {not_a_key}: expected a PKCS#8"),
    );
    refused(
        &["--outbound-buffer", "64KiB"],
        &[],
        "stampede: outbound-buffer = 64KiB (from command line --outbound-buffer) must be at least \
         max-frame-size = 1088KiB (from built-in default)",
    );
    refused(
        &["--max-connections", "-1"],
        &[],
        "stampede: invalid value for max-connections from command line --max-connections: \"-1\": \
         must not be negative",
    );
    refused(
        &[],
        &[("STAMPEDE_MAX_FRME_SIZE", "12x")],
        "stampede: environment variable STAMPEDE_MAX_FRME_SIZE names no setting \
         (did you mean STAMPEDE_MAX_FRAME_SIZE?)",
    );
}

#[test]
fn a_misspelt_variable_stops_the_node_before_it_binds() {
    let run = stampede(
        &["--listen", "127.0.0.1:0", "--stomp-listen", "off", "--admin-listen", "off"],
        &[("STAMPEDE_DRAIN_PERIDO", "1s")],
    );
    assert_eq!(run.code, Some(2), "{}", run.log);
    assert_eq!(
        run.err,
        "stampede: environment variable STAMPEDE_DRAIN_PERIDO names no setting \
         (did you mean STAMPEDE_DRAIN_PERIOD?)\n"
    );
}

#[test]
fn kubernetes_service_links_pass_and_strangers_are_a_warning() {
    // What Kubernetes sets for a Service named stampede (helm install stampede ...).
    let links = [
        ("STAMPEDE_SERVICE_HOST", "10.96.0.10"),
        ("STAMPEDE_SERVICE_PORT", "8080"),
        ("STAMPEDE_SERVICE_PORT_WS", "8080"),
        ("STAMPEDE_PORT", "tcp://10.96.0.10:8080"),
        ("STAMPEDE_PORT_8080_TCP", "tcp://10.96.0.10:8080"),
        ("STAMPEDE_PORT_8080_TCP_PROTO", "tcp"),
        ("STAMPEDE_PORT_8080_TCP_PORT", "8080"),
        ("STAMPEDE_PORT_8080_TCP_ADDR", "10.96.0.10"),
    ];
    let run = check_config(&[], &links);
    assert_eq!(run.code, Some(0), "{}", run.log);
    assert!(run.err.is_empty(), "{}", run.log);
    let run = check_config(&[], &[("STAMPEDE_GREETING", "hello")]);
    assert_eq!(run.code, Some(0), "{}", run.log);
    assert!(
        run.err.starts_with("stampede: warning: environment variable STAMPEDE_GREETING names no setting"),
        "{}",
        run.log
    );
}

/// Everything about TLS to Redis that the node could never use stops it before it binds, and
/// `check-config` the same way: the URL as the engine reads it, the CA file, a system without
/// roots. The node is given a port this test holds: had it bound first, it would fail there
/// (status 1, "cannot listen") instead.
#[test]
fn redis_tls_problems_stop_the_node_before_it_binds() {
    let keys = Keys::new();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let ca = keys.tls.files.cert.to_str().unwrap();
    let not_a_cert = keys.users_file.to_str().unwrap();
    // Where rustls-native-certs looks instead of the system's store when these are set.
    let no_roots_dir = keys.dir.path().join("no-roots");
    std::fs::create_dir(&no_roots_dir).unwrap();
    let no_roots_file = keys.dir.write("no-roots.pem", "");
    let no_roots = [
        ("SSL_CERT_FILE", no_roots_file.to_str().unwrap()),
        ("SSL_CERT_DIR", no_roots_dir.to_str().unwrap()),
    ];
    let refused = |args: &[&str], env: &[(&str, &str)], expected: &str| {
        let node: Vec<&str> = ["--listen", &listen, "--stomp-listen", "off", "--admin-listen", "off"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        for run in [stampede(&node, env), check_config(&node, env)] {
            assert_eq!(run.code, Some(2), "{args:?}\n{}", run.log);
            assert!(run.err.starts_with(expected), "expected {expected}\n{}", run.log);
            assert!(!run.log.contains("listening") && run.out.is_empty(), "{}", run.log);
        }
    };
    refused(
        &["--redis-url", "rediss+sentinel://app:secret@s1:26379"],
        &[],
        "stampede: invalid value for redis-url from command line --redis-url: \
         \"rediss+sentinel://app:***@s1:26379\": name the Sentinel service",
    );
    refused(
        &["--redis-url", "rediss://127.0.0.1:6380", "--redis-tls-ca", "/nonexistent/ca.pem"],
        &[],
        "stampede: cannot read redis-tls-ca /nonexistent/ca.pem: No such file or directory",
    );
    refused(
        &["--redis-url", "rediss://127.0.0.1:6380", "--redis-tls-ca", not_a_cert],
        &[],
        &format!("stampede: invalid redis-tls-ca {not_a_cert}: no certificate (BEGIN CERTIFICATE) found"),
    );
    refused(
        &["--redis-url", "redis://127.0.0.1:6379", "--redis-tls-ca", ca],
        &[],
        "stampede: redis-tls-ca (from command line --redis-tls-ca) needs a redis-url with TLS",
    );
    // Without redis-tls-ca the system's roots are used.
    refused(
        &["--redis-url", "rediss://127.0.0.1:6380"],
        &no_roots,
        "stampede: cannot verify Redis's certificate (rediss redis-url): this system has no \
         trusted root certificates; install them (Debian: ca-certificates) or set redis-tls-ca",
    );
    // The same with redis-tls-ca (a CA certificate) is a valid configuration.
    let run = check_config(&["--redis-url", "rediss://127.0.0.1:6380", "--redis-tls-ca", ca], &no_roots);
    assert_eq!(run.code, Some(0), "{}", run.log);
    assert!(run.out.contains(&format!("redis-tls-ca = \"{ca}\"")), "{}", run.out);
}
