//! Authentication, authorization, token refresh and expiry, the admin token, origins, connection
//! limits per address, TLS and the WebSocket handshake, seen from clients. The refusals of bad
//! input are in `adversarial.rs`; these tests are mostly about what is allowed.

use std::time::Duration;

use serde_json::json;
use stampede::config::{AclDefault, Config, OriginPolicy, Secret};
use stampede::stomp::{Command, Frame};
use stampede_testkit::prelude::*;
use tokio_tungstenite::tungstenite;

const BOTH: [Transport; 2] = [Transport::Tcp, Transport::Ws];

fn header<'f>(frame: &'f stampede::stomp::Frame, name: &str) -> &'f str {
    frame.get(name).unwrap_or_else(|| panic!("no {name} in {}", show(frame)))
}

// === authentication ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_authentication_the_login_is_trusted() {
    let node = TestNode::start(|_| {}).await;
    for t in BOTH {
        let mut client = node.open(t).await;
        let connected = client.connect_with(Command::Connect, Some("1.2"), &[("login", "ann")]).await;
        assert_eq!(header(&connected, "user-name"), "ann");
        client.publish("/user/bob/queue/x", "anyone may, as before", &[]).await;
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_file_logins_with_argon2_and_bcrypt() {
    let keys = Keys::new();
    let node = TestNode::start(|c| keys.secure(c)).await;
    for t in BOTH {
        for (user, password) in [("ann", "ann-pw"), ("bob", "bob-pw")] {
            let mut client = node.open(t).await;
            let connected = client
                .connect_with(Command::Connect, Some("1.2"), &[("login", user), ("passcode", password)])
                .await;
            assert_eq!(connected.command, Command::Connected, "{}", show(&connected));
            assert_eq!(header(&connected, "user-name"), user);
        }
    }
    assert_eq!(node.metric("stampede_auth_failures_total").await.unwrap_or(0.0), 0.0);
    let mut client = node.tcp().await;
    assert_error(
        &client.connect_with(Command::Connect, Some("1.2"), &[("login", "ann"), ("passcode", "nope")]).await,
        "wrong passcode",
    );
    let node_ref = &node;
    assert!(
        holds_within(WAIT, move || async move {
            node_ref.metric("stampede_auth_failures_total").await.unwrap_or(0.0) == 1.0
        })
        .await
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_signed_with_hs256_rs256_and_es256() {
    let keys = Keys::new();
    let node = TestNode::start(|c| {
        keys.secure(c);
        c.auth.jwt.jwks = Some(keys.jwks.clone());
    })
    .await;
    let tokens = [
        ("hs256", Token::for_user("u-hs").hs256()),
        ("rs256", Token::for_user("u-rs").rs256()),
        ("es256 by kid from the JWKS", Token::for_user("u-es").kid("ec-1").es256(&keys.ec_private_pem)),
        ("hs256 by kid from the JWKS", Token::for_user("u-oct").kid("oct-1").hs256_with(&keys.jwks_hmac)),
    ];
    for (what, token) in &tokens {
        for t in BOTH {
            let mut client = node.open(t).await;
            let connected = client.connect_with(Command::Connect, Some("1.2"), &[("passcode", token)]).await;
            assert_eq!(connected.command, Command::Connected, "{what}: {}", show(&connected));
        }
    }
    // A kid the JWKS does not have.
    let mut client = node.tcp().await;
    let token = Token::for_user("u").kid("ec-9").es256(&keys.ec_private_pem);
    assert_error(
        &client.connect_with(Command::Connect, Some("1.2"), &[("passcode", &token)]).await,
        "no ES256 key with kid \"ec-9\"",
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_from_a_pem_public_key() {
    let keys = Keys::new();
    let node = TestNode::start(|c| c.auth.jwt.public_key = Some(keys.ec_public.clone())).await;
    let mut client = node.tcp().await;
    let token = Token::for_user("ann").es256(&keys.ec_private_pem);
    let connected = client.connect_with(Command::Connect, Some("1.2"), &[("passcode", &token)]).await;
    assert_eq!(header(&connected, "user-name"), "ann");
    let mut client = node.tcp().await;
    assert_error(
        &client
            .connect_with(Command::Connect, Some("1.2"), &[("passcode", &Token::for_user("ann").hs256())])
            .await,
        "HS256",
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_websocket_handshake() {
    let keys = Keys::new();
    let node = TestNode::start(|c| keys.secure(c)).await;
    let token = Token::for_user("ann").hs256();
    let bearer = format!("Bearer {token}");
    let (mut client, _) = node.try_ws(None, &[("authorization", &bearer)]).await.unwrap();
    assert_eq!(header(&client.connect_with(Command::Connect, Some("1.2"), &[]).await, "user-name"), "ann");
    let (mut client, _) = node.try_ws(Some(&format!("x=1&token={token}")), &[]).await.unwrap();
    assert_eq!(header(&client.connect_with(Command::Connect, Some("1.2"), &[]).await, "user-name"), "ann");
    // A token in passcode wins over the handshake's.
    let other = Token::for_user("bob").hs256();
    let (mut client, _) = node.try_ws(Some(&format!("token={token}")), &[]).await.unwrap();
    assert_eq!(
        header(
            &client.connect_with(Command::Connect, Some("1.2"), &[("passcode", &other)]).await,
            "user-name"
        ),
        "bob"
    );
    node.shutdown().await;
}

// === token expiry and refresh ===

/// A trader's token that expires in `seconds`.
fn short_lived(user: &str, seconds: u64) -> String {
    Token::for_user(user).claim("roles", json!(["traders"])).claim("exp", json!(now() + seconds)).hs256()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaching_the_token_expiry_ends_the_connection() {
    let keys = Keys::new();
    let node = TestNode::start(|c| keys.secure(c)).await;
    let started = std::time::Instant::now();
    let token = short_lived("ann", 2);
    let mut clients = Vec::new();
    for t in BOTH {
        clients.push(node.connect(t, &[("passcode", &token)]).await);
    }
    for mut client in clients {
        let frames = client.expect_closed(Duration::from_secs(8)).await;
        let error = frames.last().expect("an ERROR before the close");
        assert_error(error, "token expired: SEND a fresh token to /auth/refresh");
        if client.is_ws() {
            assert_eq!(client.close_code, Some(1008));
            assert_eq!(client.close_reason.as_deref(), Some("token expired"));
        }
    }
    // exp is whole seconds and the leeway is 1 s: between 1 and 3.x seconds after connecting.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "ended after {took:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_keeps_the_connection() {
    let keys = Keys::new();
    let node = TestNode::start(|c| keys.secure(c)).await;
    let mut clients = Vec::new();
    for t in BOTH {
        let mut client = node.connect(t, &[("passcode", &short_lived("ann", 2))]).await;
        client.subscribe("/topic/prices/eur", "p", &[]).await;
        clients.push(client);
    }
    for client in &mut clients {
        let fresh = Token::for_user("ann").claim("roles", json!(["traders"])).hs256();
        let receipt = client.request(send_frame("/auth/refresh", &fresh, &[])).await;
        assert_eq!(receipt.command, Command::Receipt);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ops = Token::for_user("ops").claim("roles", json!(["operators"])).hs256();
    let mut publisher = node.connect(Transport::Tcp, &[("passcode", &ops)]).await;
    publisher.publish("/topic/prices/eur", "1.08", &[]).await;
    for client in &mut clients {
        assert_eq!(body(&client.recv_message().await), "1.08", "still connected past the first exp");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_may_not_take_away_a_subscription() {
    let keys = Keys::new();
    let node = TestNode::start(|c| keys.secure(c)).await;
    let trader = Token::for_user("ann").claim("roles", json!(["traders"])).hs256();
    let mut client = node.connect(Transport::Tcp, &[("passcode", &trader)]).await;
    client.subscribe("/topic/prices/eur", "p", &[]).await;
    let plain = Token::for_user("ann").hs256();
    let refused = client.request_refused(send_frame("/auth/refresh", &plain, &[])).await;
    assert_error(&refused, "the new token does not keep subscription \"p\"");
    client.expect_closed(WAIT).await;

    // Refreshing a connection that logged in with a password is refused too.
    let mut client = node.connect(Transport::Tcp, &[("login", "bob"), ("passcode", "bob-pw")]).await;
    let refused = client.request_refused(send_frame("/auth/refresh", &plain, &[])).await;
    assert_error(&refused, "did not authenticate with a token");
    node.shutdown().await;
}

// === authorization ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_for_roles_from_the_users_file_and_from_tokens() {
    let keys = Keys::new();
    let node = TestNode::start(|c| keys.secure(c)).await;
    let by_password = node.connect(Transport::Tcp, &[("login", "ann"), ("passcode", "ann-pw")]).await;
    let token = Token::for_user("carol").claim("roles", json!(["traders"])).rs256();
    let by_token = node.connect(Transport::Ws, &[("passcode", &token)]).await;
    for mut trader in [by_password, by_token] {
        trader.subscribe("/topic/prices/usd", "p", &[]).await;
        trader.subscribe("/topic/public.news", "n", &[]).await;
        trader.publish("/queue/orders", "buy", &[]).await;
        let refused = trader.request_refused(send_frame("/topic/prices/usd", "x", &[])).await;
        assert_error(&refused, "not authorized to publish to /topic/prices/usd");
    }
    assert_eq!(node.metric("stampede_access_denied_total").await.unwrap_or(0.0), 2.0);
    node.shutdown().await;
}

/// The relay case (Spring's `StompBrokerRelay`: one system session carries every application
/// SEND): a SEND refused on a session with the `relay` role gets an ERROR, with the receipt-id
/// it asked for, and the connection stays open, so one faulty message does not cut every
/// session behind the relay. Everyone else keeps STOMP's ERROR and close, and input that leaves
/// the stream unusable closes a relay too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relays_refused_send_keeps_its_connection() {
    let keys = Keys::new();
    let node = TestNode::start(|c| keys.secure(c)).await;
    let relay_token = Token::for_user("spring").claim("roles", json!(["relay", "traders"])).rs256();
    for t in BOTH {
        let mut relay = node.connect(t, &[("passcode", &relay_token)]).await;
        let mut watcher = node.connect(t, &[("login", "ops"), ("passcode", "ops-pw")]).await;
        watcher.subscribe("/topic/prices/usd", "p", &[]).await;
        let long = format!("/queue/{}", "x".repeat(1100));
        let refusals = [
            (send_frame("/exchange/amq.topic/x", "a", &[]), "unknown destination"),
            (send_frame(&long, "b", &[]), "longer than 1024 bytes"),
            (send_frame("/topic/prices/usd", "c", &[]), "not authorized to publish to /topic/prices/usd"),
            (Frame::new(Command::Send).with_body("d"), "lacks the required destination header"),
        ];
        for (frame, reason) in refusals {
            // With a receipt: the ERROR carries its id.
            let refused = relay.request_refused(frame.clone()).await;
            assert_error(&refused, reason);
            assert!(refused.get("receipt-id").is_some(), "{}", show(&refused));
            // Without one: the ERROR alone.
            relay.send_frame(&frame).await.unwrap();
            let refused = relay.recv_frame(WAIT).await.expect("an ERROR");
            assert_error(&refused, reason);
            assert_eq!(refused.get("receipt-id"), None);
        }
        // The connection carries on: a good SEND is confirmed, a SUBSCRIBE too and its messages
        // arrive; the refused SEND reached nobody.
        relay.publish("/queue/orders", "buy", &[]).await;
        relay.subscribe("/topic/prices/usd", "p", &[]).await;
        watcher.publish("/topic/prices/usd", "1.08", &[]).await;
        assert_eq!(body(&relay.recv_message().await), "1.08");
        assert_eq!(body(&watcher.recv_message().await), "1.08");
        watcher.assert_quiet().await;

        // Without the role: the same SEND ends the connection, as STOMP says.
        let mut trader = node.connect(t, &[("login", "ann"), ("passcode", "ann-pw")]).await;
        trader.send("/exchange/amq.topic/x", "a", &[]).await;
        assert_error(&trader.expect_error().await, "unknown destination");

        // A relay's broken stream still closes it.
        relay.send_raw(b"SEND\ndestination:/topic/public.news\nbad\n\n\0").await.unwrap();
        relay.expect_error().await;
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_own_grants() {
    let keys = Keys::new();
    let node = TestNode::start(|c| keys.secure(c)).await;
    let token = Token::for_user("dave")
        .claim("stampede", json!({"publish": ["/topic/chat.*"], "subscribe": ["/topic/chat.*"]}))
        .hs256();
    let mut client = node.connect(Transport::Tcp, &[("passcode", &token)]).await;
    client.subscribe("/topic/chat.room1", "c", &[]).await;
    client.publish("/topic/chat.room1", "hello", &[]).await;
    assert_eq!(body(&client.recv_message().await), "hello");
    let refused = client.request_refused(send_frame("/topic/other", "x", &[])).await;
    assert_error(&refused, "not authorized to publish to /topic/other");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_default_allow_opens_everything_but_other_users() {
    let keys = Keys::new();
    let node = TestNode::start(|c| {
        keys.secure(c);
        c.auth.acl_default = AclDefault::Allow;
    })
    .await;
    let mut bob = node.connect(Transport::Tcp, &[("login", "bob"), ("passcode", "bob-pw")]).await;
    bob.subscribe("/topic/anything", "a", &[]).await;
    bob.publish("/queue/anything", "x", &[]).await;
    let refused = bob.request_refused(send_frame("/user/ann/queue/inbox", "x", &[])).await;
    assert_error(&refused, "not authorized to publish to /user/ann/queue/inbox");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_destinations_are_private() {
    let keys = Keys::new();
    let node = TestNode::start(|c| keys.secure(c)).await;
    let mut bob = node.connect(Transport::Ws, &[("login", "bob"), ("passcode", "bob-pw")]).await;
    bob.subscribe("/user/queue/inbox", "in", &[]).await;
    // Ann subscribes to what looks like bob's destination: it is her own namespace.
    let mut ann = node.connect(Transport::Tcp, &[("login", "ann"), ("passcode", "ann-pw")]).await;
    ann.subscribe("/user/bob/queue/inbox", "spy", &[]).await;
    // Bob may send to himself; ops, whose role has a rule for /user/*, to anyone.
    bob.publish("/user/bob/queue/inbox", "note to self", &[]).await;
    let mut ops = node.connect(Transport::Tcp, &[("login", "ops"), ("passcode", "ops-pw")]).await;
    ops.publish("/user/bob/queue/inbox", "from ops", &[]).await;
    let first = bob.recv_message().await;
    assert_eq!(body(&first), "note to self");
    assert_eq!(header(&first, "destination"), "/user/queue/inbox");
    assert_eq!(body(&bob.recv_message().await), "from ops");
    ann.assert_quiet().await;
    node.shutdown().await;
}

// === the admin API ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token_but_probes_do_not() {
    let keys = Keys::new();
    let node = TestNode::start(|c| keys.secure(c)).await;
    for path in ["/healthz", "/readyz"] {
        assert_eq!(node.http("GET", path, None, None).await.status, 200, "{path}");
    }
    let response = node.http("GET", "/metrics", None, None).await;
    assert_eq!(response.status, 401);
    assert!(response.headers.iter().any(|(n, v)| n == "www-authenticate" && v == "Bearer"));
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    assert_eq!(node.http("GET", "/metrics", Some(&bearer), None).await.status, 200);
    assert_eq!(node.http("GET", "/api/v1/nodes", Some(&bearer), None).await.status, 200);
    let publish = r#"{"destination": "/topic/public.news", "body": "hi"}"#;
    let response = node.http("POST", "/api/v1/publish", Some(&bearer), Some(publish)).await;
    assert_eq!(response.status, 202, "{}", response.body);
    node.shutdown().await;

    let node = TestNode::start(|c| {
        c.auth.admin_token = Some(Secret::new(ADMIN_TOKEN));
        c.auth.metrics_public = true;
    })
    .await;
    assert_eq!(node.http("GET", "/metrics", None, None).await.status, 200);
    assert_eq!(node.http("GET", "/api/v1/nodes", None, None).await.status, 401);
    node.shutdown().await;
}

// === WebSocket handshake ===

async fn handshake_status(node: &TestNode, headers: &[(&str, &str)]) -> u16 {
    match node.try_ws(None, headers).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_are_checked_exactly() {
    let policy = |allowed: &[&str], allow_missing| OriginPolicy {
        allowed: Some(allowed.iter().map(|s| s.to_string()).collect()),
        allow_missing,
    };
    let node = TestNode::start(|c| c.origins = policy(&[ORIGIN, "http://localhost:3000"], false)).await;
    assert_eq!(handshake_status(&node, &[("origin", ORIGIN)]).await, 101);
    assert_eq!(handshake_status(&node, &[("origin", "http://localhost:3000")]).await, 101);
    assert_eq!(handshake_status(&node, &[("origin", "http://localhost:3001")]).await, 403);
    assert_eq!(handshake_status(&node, &[]).await, 403, "no Origin, not allowed");
    node.shutdown().await;

    let node = TestNode::start(|c| c.origins = policy(&["*"], false)).await;
    assert_eq!(handshake_status(&node, &[("origin", "https://anything.example")]).await, 101);
    assert_eq!(
        handshake_status(&node, &[]).await,
        403,
        "* is for browsers; no Origin needs ws-allow-no-origin"
    );
    node.shutdown().await;

    let node = TestNode::start(|_| {}).await;
    assert_eq!(
        handshake_status(&node, &[("origin", "https://anything.example")]).await,
        101,
        "no check by default"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_is_not_negotiated() {
    let node = TestNode::start(|_| {}).await;
    let offer = [("sec-websocket-extensions", "permessage-deflate; client_max_window_bits")];
    let (mut client, response) = node.try_ws(None, &offer).await.unwrap();
    assert!(response.headers().get("sec-websocket-extensions").is_none(), "{:?}", response.headers());
    client.connect_with(Command::Connect, Some("1.2"), &[]).await;
    client.subscribe("/topic/z", "z", &[]).await;
    client.publish("/topic/z", &"z".repeat(10_000), &[]).await;
    assert_eq!(client.recv_message().await.body.len(), 10_000);
    node.shutdown().await;
}

// === connection limits and deadlines ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_limited() {
    let node = TestNode::start(|c| c.limits.max_connections_per_ip = 3).await;
    let mut clients = Vec::new();
    for t in [Transport::Tcp, Transport::Ws, Transport::Tcp] {
        clients.push(node.connect(t, &[]).await);
    }
    let mut extra = node.tcp().await;
    extra.expect_refusal("too many connections from 127.0.0.1").await;
    let mut first = clients.remove(0);
    first.disconnect().await;
    let node_ref = &node;
    assert!(holds_within(WAIT, move || async move { node_ref.connections().await == 2.0 }).await);
    let _again = node.connect(Transport::Ws, &[]).await;
    node.shutdown().await;
}

/// connect-timeout runs from the accept: the TLS and WebSocket handshakes count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_deadline_covers_the_handshakes() {
    let node = TestNode::start(|c| c.limits.connect_timeout = Duration::from_millis(600)).await;
    let (mut client, _) = node.try_ws(None, &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    client.expect_refusal("no CONNECT frame within connect-timeout").await;
    assert!(started.elapsed() < Duration::from_millis(500), "the deadline restarted after the handshake");
    node.shutdown().await;
}

// === TLS ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_for_websocket_and_tcp() {
    let keys = Keys::new();
    let node = TestNode::start_with(Some(&keys.tls), |c| keys.secure(c)).await;
    assert!(node.ws_url().starts_with("wss://"));
    let token = Token::for_user("ops").claim("roles", json!(["operators"])).hs256();
    let mut over_wss = node.connect(Transport::Ws, &[("passcode", &token)]).await;
    over_wss.subscribe("/topic/secure", "s", &[]).await;
    let mut over_tls = node.connect(Transport::Tcp, &[("login", "ops"), ("passcode", "ops-pw")]).await;
    over_tls.publish("/topic/secure", "encrypted", &[]).await;
    assert_eq!(body(&over_wss.recv_message().await), "encrypted");
    over_tls.disconnect().await;
    node.shutdown().await;
}

// === start-up ===

#[test]
fn bad_security_files_stop_the_node_with_the_setting_named() {
    let keys = Keys::new();
    let error = |configure: &dyn Fn(&mut Config)| {
        let mut config = Config::default();
        configure(&mut config);
        match stampede::Security::load(&config) {
            Ok(_) => panic!("loaded"),
            Err(e) => e.to_string(),
        }
    };
    let missing = keys.dir.path().join("missing");
    let e = error(&|c| c.auth.users_file = Some(missing.clone()));
    assert!(e.starts_with("cannot read users-file "), "{e}");
    let bad_users = keys.dir.write("bad-users", "ann:password\n");
    let e = error(&|c| c.auth.users_file = Some(bad_users.clone()));
    assert!(e.contains("line 1") && e.contains("never a plain password"), "{e}");
    let private = keys.dir.write("private.pem", RSA_PRIVATE_PEM);
    let e = error(&|c| c.auth.jwt.public_key = Some(private.clone()));
    assert!(e.contains("jwt-public-key") && e.contains("private key"), "{e}");
    let bad_jwks = keys.dir.write("bad.json", "{\"keys\": 1}");
    let e = error(&|c| c.auth.jwt.jwks = Some(bad_jwks.clone()));
    assert!(e.starts_with("invalid jwt-jwks "), "{e}");
    let e = error(&|c| {
        c.tls = Some(stampede::config::TlsFiles { cert: keys.tls.files.cert.clone(), key: missing.clone() })
    });
    assert!(e.starts_with("cannot read tls-key "), "{e}");
    let e = error(&|c| {
        c.tls = Some(stampede::config::TlsFiles {
            cert: keys.tls.files.key.clone(),
            key: keys.tls.files.key.clone(),
        })
    });
    assert!(e.contains("tls-cert") && e.contains("no certificate"), "{e}");
    keys.secure(&mut Config::default());
}
