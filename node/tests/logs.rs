//! What the node logs for its operator (docs/operations.md): one `connected` and one
//! `disconnected` line per session, inside the session's span (its id on every line), with the
//! reason a session ended; a CONNECT that never comes as a refused connection; JSON lines whose
//! fields are plain values; no ANSI escapes when the output is not a terminal; and SIGHUP, which
//! reloads the users file and the TLS certificate instead of ending the node.
//!
//! In-process nodes (their lines captured into their [`Log`]) for the lines' content; the real
//! binary, started by the test kit, for the JSON format, the colours and the signal.

use std::io::BufRead;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stampede::transport::tls::TlsFiles;
use stampede_testkit::prelude::*;
use stampede_testkit::{Cluster, Endpoint, Log};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// The node's lines (not the harness's) that contain every one of `needles`.
fn lines(log: &Log, needles: &[&str]) -> Vec<String> {
    log.text()
        .lines()
        .filter(|line| !line.contains(" harness] "))
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// Waits until the node has logged a line with every one of `needles`; returns it.
async fn line(log: &Log, needles: &[&str]) -> String {
    eventually_some(WAIT, format!("a log line with {needles:?}"), || async {
        lines(log, needles).into_iter().next()
    })
    .await
}

// === sessions ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_logs_one_line_when_connected_and_one_when_it_ends_with_its_id_on_both() {
    let node = TestNode::start(|_| {}).await;
    let mut ws = node.connect(Transport::Ws, &[("login", "alice")]).await;
    let id = ws.session().to_owned();
    let span = format!("session{{session={id} peer=127.0.0.1:");
    let connected = line(node.log(), &[&span, "connected", "transport=ws"]).await;
    assert!(connected.contains(r#"user="alice""#), "{connected}");
    assert!(connected.contains(r#"version="1.2""#), "{connected}");
    assert!(connected.contains(" INFO "), "at info: {connected}");
    ws.disconnect().await;
    let ended = line(node.log(), &[&span, "disconnected"]).await;
    for field in [r#"user="alice""#, r#"version="1.2""#, "duration_ms=", r#"reason="client DISCONNECT""#] {
        assert!(ended.contains(field), "{field} in {ended}");
    }

    // No login: no user field at all (not `None`); a client that goes away: "peer closed".
    let tcp = node.connect(Transport::Tcp, &[]).await;
    let span = format!("session{{session={} peer=", tcp.session());
    let connected = line(node.log(), &[&span, "connected", "transport=tcp"]).await;
    assert!(!connected.contains("user="), "{connected}");
    tcp.drop_connection().await;
    line(node.log(), &[&span, "disconnected", r#"reason="peer closed""#]).await;

    // An ERROR ends a session with its message as the reason.
    let mut bad = node.connect(Transport::Ws, &[("login", "bob")]).await;
    let span = format!("session{{session={} peer=", bad.session());
    bad.send_raw(b"SUBSCRIBE\nid:1\n\n\0").await.expect("send");
    bad.expect_error().await;
    let ended = line(node.log(), &[&span, "disconnected"]).await;
    assert!(
        ended.contains(r#"reason="ERROR SUBSCRIBE frame lacks the required destination header""#),
        "{ended}"
    );
    assert!(lines(node.log(), &["refused client"]).is_empty(), "a connected session's end is one line");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_session_is_logged_as_drained_not_as_a_refused_client() {
    let mut node = TestNode::start(|c| c.drain_period = Duration::from_millis(200)).await;
    let mut client = node.connect(Transport::Ws, &[("login", "carol")]).await;
    let span = format!("session{{session={} peer=", client.session());
    node.begin_shutdown();
    assert_error(&client.expect_error().await, "shutting down");
    let ended = line(node.log(), &[&span, "disconnected"]).await;
    assert!(ended.contains(r#"reason="drained""#), "{ended}");
    assert!(lines(node.log(), &["refused client"]).is_empty(), "{}", node.log().text());
    node.shutdown().await;
}

// === refusals before a session ===

/// A client that never sends CONNECT is refused like a handshake that timed out: counted under
/// `timeout` and logged as a refused connection (sparingly), not as a refused client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_never_comes_is_a_refused_connection() {
    let node = TestNode::start(|c| c.limits.connect_timeout = Duration::from_millis(300)).await;
    let mut silent = node.open(Transport::Tcp).await;
    assert_error(&silent.expect_error().await, "connect-timeout");
    let refused = line(node.log(), &["connection refused", r#"reason="timeout""#]).await;
    assert!(refused.contains("peer=127.0.0.1:") && refused.contains("no CONNECT frame"), "{refused}");
    let counted = r#"stampede_connections_refused_total{reason="timeout"}"#;
    eventually_eq(WAIT, "timeout refusals", Some(1.0), || node.metric(counted)).await;
    assert!(lines(node.log(), &["refused client"]).is_empty(), "{}", node.log().text());
    node.shutdown().await;
}

// === the real binary ===

/// The JSON objects a node printed on standard output.
fn json_lines(log: &Log) -> Vec<Value> {
    log.text()
        .lines()
        .filter_map(|line| line.split_once(" out] "))
        .map(|(_, json)| serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}")))
        .collect()
}

/// The first JSON line whose message is `message` in the span of `session`.
async fn json_event(log: &Log, message: &str, session: &str) -> Value {
    eventually_some(WAIT, format!("a JSON {message:?} line of session {session}"), || async {
        json_lines(log)
            .into_iter()
            .find(|line| line["fields"]["message"] == message && line["span"]["session"] == session)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_fields_as_plain_values() {
    let cluster = Cluster::memory(&["--log-format", "json"]).await;
    let node = cluster.node(0);
    let mut alice = Client::connect_to(&node.endpoint(Transport::Ws), Some("alice")).await.expect("connect");
    let connected = json_event(node.log(), "connected", alice.session()).await;
    assert_eq!(connected["level"], "INFO");
    assert_eq!(connected["fields"]["user"], "alice", "a string, not Some(\"alice\"): {connected}");
    assert_eq!(connected["fields"]["version"], "1.2");
    assert_eq!(connected["span"]["transport"], "ws");
    assert!(connected["span"]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{connected}");
    alice.disconnect().await;
    let ended = json_event(node.log(), "disconnected", alice.session()).await;
    assert_eq!(ended["fields"]["reason"], "client DISCONNECT");
    assert_eq!(ended["fields"]["user"], "alice");
    assert!(ended["fields"]["duration_ms"].is_u64(), "a number: {ended}");

    let anonymous = Client::connect_to(&node.endpoint(Transport::Tcp), None).await.expect("connect");
    let session = anonymous.session().to_owned();
    let connected = json_event(node.log(), "connected", &session).await;
    assert!(connected["fields"].get("user").is_none(), "no user: absent, not null or None: {connected}");
    anonymous.drop_connection().await;
    json_event(node.log(), "disconnected", &session).await;
    for line in json_lines(node.log()) {
        let text = line.to_string();
        assert!(!text.contains("Some("), "a Debug-formatted value: {text}");
    }
}

#[test]
fn no_ansi_escapes_when_the_output_is_not_a_terminal() {
    let port = || stampede_testkit::process::free_port().to_string();
    let mut child = Process::new(env!("CARGO_BIN_EXE_stampede"))
        .args(["--listen", &format!("127.0.0.1:{}", port()), "--stomp-listen", "off"])
        .args(["--admin-listen", "off"])
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start stampede");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("node started")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.iter().any(|l| l.contains("node started")), "the node started: {seen:#?}");
    for line in &seen {
        assert!(!line.contains('\u{1b}'), "an ANSI escape in a piped log: {line:?}");
    }
}

/// Sends SIGHUP to the node.
fn hangup(node: &stampede_testkit::Node) {
    let pid = node.pid().expect("the node runs").to_string();
    node.log().note(&format!("SIGHUP pid {pid}"));
    let sent = std::process::Command::new("kill").args(["-HUP", &pid]).status().expect("kill");
    assert!(sent.success(), "kill -HUP {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_users_file_and_the_node_keeps_running() {
    let dir = TempDir::new();
    let users = dir.write("users", &format!("ann:{}\n", argon2_hash("ann-pw")));
    let cluster = Cluster::memory(&["--users-file", users.to_str().expect("a UTF-8 path")]).await;
    let node = cluster.node(0);
    let endpoint = node.endpoint(Transport::Tcp);
    let connect = |login: &'static str, passcode: &'static str| {
        let endpoint = endpoint.clone();
        async move {
            let mut client = Client::open(&endpoint).await?;
            client.try_connect(Some("1.2"), &[("login", login), ("passcode", passcode)]).await?;
            Ok::<_, ClientError>(client)
        }
    };
    let Err(refused) = connect("carol", "carol-pw").await else { panic!("carol is not in the file yet") };
    assert!(refused.error_message().is_some_and(|m| m.contains("authentication failed")), "{refused}");

    dir.write("users", &format!("ann:{}\ncarol:{}\n", argon2_hash("ann-pw"), argon2_hash("carol-pw")));
    hangup(node);
    line(node.log(), &["reloaded on SIGHUP", "users file (2 users)"]).await;
    connect("carol", "carol-pw").await.expect("carol, added to the file, connects after SIGHUP");
    assert!(node.is_running(), "SIGHUP did not stop the node");
    assert_eq!(node.readyz().await, Some(200));

    // A broken file is refused whole: the node says so and keeps the users it had.
    dir.write("users", "ann:plain-text-password\n");
    hangup(node);
    let failed = line(node.log(), &["reload on SIGHUP failed", "kept the old one"]).await;
    assert!(failed.contains("users-file"), "names the setting: {failed}");
    connect("carol", "carol-pw").await.expect("carol still connects with the old users");
    assert!(node.is_running());
}

/// A self-signed certificate for 127.0.0.1 and localhost, written as `cert.pem` and `key.pem` in
/// `dir`; returns a connector that trusts only it.
fn certificate(dir: &TempDir) -> tokio_rustls::TlsConnector {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("a certificate");
    let tls = TestTls {
        files: TlsFiles {
            cert: dir.write("cert.pem", &cert.cert.pem()),
            key: dir.write("key.pem", &cert.key_pair.serialize_pem()),
        },
        cert_der: cert.cert.der().clone(),
    };
    tls.connector()
}

/// Whether a TLS handshake with the node's STOMP port succeeds trusting only `connector`'s
/// certificate.
async fn handshake_trusting(connector: &tokio_rustls::TlsConnector, endpoint: &Endpoint) -> bool {
    let Endpoint::Tcp(addr) = endpoint else { panic!("a TCP endpoint") };
    let stream = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    tokio::time::timeout(WAIT, connector.connect(name, stream)).await.is_ok_and(|r| r.is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tls_certificate_for_new_connections() {
    let dir = TempDir::new();
    let old = certificate(&dir);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let args = ["--tls-cert", cert.to_str().expect("UTF-8"), "--tls-key", key.to_str().expect("UTF-8")];
    let cluster = Cluster::memory(&args).await;
    let node = cluster.node(0);
    let endpoint = node.endpoint(Transport::Tcp);
    assert!(handshake_trusting(&old, &endpoint).await, "the first certificate is served");

    let new = certificate(&dir);
    hangup(node);
    line(node.log(), &["reloaded on SIGHUP", "TLS certificate"]).await;
    assert!(handshake_trusting(&new, &endpoint).await, "the renewed certificate is served after SIGHUP");
    assert!(!handshake_trusting(&old, &endpoint).await, "the old one no longer");
}
