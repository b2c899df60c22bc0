//! The adversarial suite: one test per bad input. In each, a node serves a bystander (a
//! subscriber receiving 30 messages from a publisher, 5 ms apart) while an attacker sends the
//! bad input. The attacker must get a clear refusal (an ERROR frame naming what was wrong, an
//! HTTP status, or, before any protocol is spoken, a closed connection); the bystander must get
//! exactly its 30 messages, in order; the node must still accept clients; and the attacker's
//! connections must be gone. STOMP-level inputs are sent over TCP and over WebSocket.

use std::time::Duration;

use serde_json::json;
use stampede::config::{AclDefault, Config};
use stampede::stomp::{Command, Frame};
use stampede_testkit::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};

const BOTH: [Transport; 2] = [Transport::Tcp, Transport::Ws];

/// A node without authentication, as configured.
async fn plain(configure: impl FnOnce(&mut Config), attack: impl for<'n> AsyncFnOnce(&'n TestNode)) {
    under_attack(None, configure, attack).await
}

/// Sends `bytes` on a fresh client over each transport (CONNECTed first when `connect`) and
/// expects an ERROR naming `needle`, then the close.
async fn stomp_refusal(configure: impl FnOnce(&mut Config), connect: bool, bytes: &[u8], needle: &str) {
    plain(configure, async |node: &TestNode| {
        for t in BOTH {
            let mut attacker = if connect { node.connect(t, &[]).await } else { node.open(t).await };
            let _ = attacker.send_raw(bytes).await;
            attacker.expect_refusal(needle).await;
        }
    })
    .await
}

fn small_frames(c: &mut Config) {
    c.limits.max_frame_size = 4096;
    c.limits.max_body_size = 2048;
}

// === malformed frames ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_header_line() {
    stomp_refusal(
        |_| {},
        true,
        b"SEND\ndestination:/topic/a\nno colon\n\nx\0",
        "malformed header line (no ':')",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_escape_sequence() {
    stomp_refusal(
        |_| {},
        true,
        b"SEND\ndestination:/topic/a\nx-esc:a\\tb\n\nx\0",
        "invalid escape sequence \"\\t\"",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_header_name() {
    stomp_refusal(|_| {}, true, b"SEND\ndestination:/topic/a\n:v\n\nx\0", "empty name").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_header() {
    stomp_refusal(
        |_| {},
        true,
        b"SEND\ndestination:/topic/a\nx-bad:\xff\xfe\n\nx\0",
        "header is not valid UTF-8",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_command() {
    stomp_refusal(|_| {}, true, b"PUBLISH\ndestination:/topic/a\n\nx\0", "unknown command \"PUBLISH\"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_frame_from_a_client() {
    stomp_refusal(|_| {}, true, b"MESSAGE\ndestination:/topic/a\n\nx\0", "MESSAGE is a server frame").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_longer_than_its_content_length() {
    stomp_refusal(
        |_| {},
        true,
        b"SEND\ndestination:/topic/a\ncontent-length:2\n\nabc\0",
        "not terminated by NUL",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_content_length() {
    stomp_refusal(
        |_| {},
        true,
        b"SEND\ndestination:/topic/a\ncontent-length:-1\n\nx\0",
        "invalid content-length",
    )
    .await
}

// === size bombs ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_content_length() {
    let frame = b"SEND\ndestination:/topic/a\ncontent-length:99999999999999999999999\n\nx\0";
    stomp_refusal(|_| {}, true, frame, "body exceeds max-body-size").await
}

/// A content-length just over the limit is refused at the blank line, before any of the body
/// is sent (and so before anything is allocated for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_over_the_limit_without_its_body() {
    stomp_refusal(
        small_frames,
        true,
        b"SEND\ndestination:/topic/a\ncontent-length:2049\n\n",
        "max-body-size (2048",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_flood() {
    stomp_refusal(|_| {}, false, &[0u8; 64 * 1024], "NUL byte in command or header line").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_bomb() {
    let mut frame = String::from("SEND\ndestination:/topic/a\n");
    for i in 0..10_000 {
        frame.push_str(&format!("x-h{i}:v\n"));
    }
    frame.push_str("\nx\0");
    stomp_refusal(|_| {}, true, frame.as_bytes(), "too many headers (max-headers is 64)").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_line_too_long() {
    let frame = format!("SEND\ndestination:/topic/a\nx-long:{}\n\nx\0", "v".repeat(20_000));
    stomp_refusal(|_| {}, true, frame.as_bytes(), "max-header-length (8192 bytes)").await
}

/// A command line that never ends is cut at max-header-length, not buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_command_line() {
    stomp_refusal(|_| {}, false, "S".repeat(20_000).as_bytes(), "max-header-length").await
}

/// A body without content-length whose NUL never comes: the bytes buffered for the unterminated
/// frame are bounded by max-body-size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unterminated_frame() {
    plain(small_frames, async |node: &TestNode| {
        for t in BOTH {
            let mut attacker = node.connect(t, &[]).await;
            let _ = attacker.send_raw(b"SEND\ndestination:/topic/a\n\n").await;
            for _ in 0..16 {
                if attacker.send_raw(&[b'b'; 512]).await.is_err() {
                    break;
                }
            }
            attacker.expect_refusal("body exceeds max-body-size (2048 bytes)").await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame() {
    let frame = format!("SEND\ndestination:/topic/a\nx-pad:{}\n\n{}\0", "p".repeat(3000), "b".repeat(1500));
    stomp_refusal(small_frames, true, frame.as_bytes(), "frame exceeds max-frame-size (4096 bytes)").await
}

// === sequences a session refuses ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_before_connect() {
    stomp_refusal(
        |_| {},
        false,
        b"SEND\ndestination:/topic/a\n\nx\0",
        "expected CONNECT or STOMP as the first frame",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect() {
    stomp_refusal(|_| {}, true, b"CONNECT\naccept-version:1.2\nhost:x\n\n\0", "already connected").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_version() {
    stomp_refusal(
        |_| {},
        false,
        b"CONNECT\naccept-version:9.9\nhost:x\n\n\0",
        "no supported protocol version",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_of_an_unknown_id() {
    stomp_refusal(|_| {}, true, b"ACK\nid:forged-7\n\n\0", "unknown message id \"forged-7\"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_subscription_id() {
    let frames =
        b"SUBSCRIBE\ndestination:/topic/a\nid:dup\n\n\0SUBSCRIBE\ndestination:/topic/b\nid:dup\n\n\0";
    stomp_refusal(|_| {}, true, frames, "subscription id \"dup\" is already in use").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destination() {
    stomp_refusal(|_| {}, true, b"SEND\ndestination:/exchange/amq.topic\n\nx\0", "unknown destination").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_of_an_unknown_id() {
    stomp_refusal(|_| {}, true, b"UNSUBSCRIBE\nid:nope\n\n\0", "no subscription with id \"nope\"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_subscriptions() {
    let mut frames = String::new();
    for i in 0..5 {
        frames.push_str(&format!("SUBSCRIBE\ndestination:/topic/t{i}\nid:{i}\n\n\0"));
    }
    stomp_refusal(|c| c.limits.max_subscriptions = 4, true, frames.as_bytes(), "max-subscriptions is 4").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_transactions() {
    let mut frames = String::new();
    for i in 0..5 {
        frames.push_str(&format!("BEGIN\ntransaction:tx{i}\n\n\0"));
    }
    stomp_refusal(|c| c.limits.max_transactions = 4, true, frames.as_bytes(), "max-transactions is 4").await
}

// === floods ===

fn rate_limited(c: &mut Config) {
    c.limits.max_frame_rate = 50;
    c.limits.frame_rate_burst = 100;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_flood() {
    let mut frames = String::new();
    for i in 0..300 {
        frames.push_str(&format!("SEND\ndestination:/topic/flood\n\n{i}\0"));
    }
    stomp_refusal(rate_limited, true, frames.as_bytes(), "frame rate exceeded").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heart_beat_flood() {
    stomp_refusal(rate_limited, true, &[b'\n'; 4096], "frame rate exceeded: more than 50 frames per second")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_ping_flood() {
    plain(rate_limited, async |node: &TestNode| {
        let mut attacker = node.connect(Transport::Ws, &[]).await;
        for _ in 0..300 {
            if attacker.send_ws(Message::Ping(vec![1, 2, 3].into())).await.is_err() {
                break;
            }
        }
        attacker.expect_refusal("frame rate exceeded").await;
        assert_eq!(attacker.close_code, Some(1008));
    })
    .await
}

// === WebSocket protocol errors ===

/// Writes a hand-made WebSocket frame under a connected client and expects an ERROR naming
/// `needle`, then close code 1002.
async fn websocket_violation(frame: Vec<u8>, needle: &str) {
    plain(
        |_| {},
        async |node: &TestNode| {
            let mut attacker = node.connect(Transport::Ws, &[]).await;
            attacker.send_under_ws(&frame).await.unwrap();
            let error = attacker.expect_refusal("WebSocket protocol error").await;
            assert_error(&error, needle);
            assert_eq!(attacker.close_code, Some(1002));
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_client_frame() {
    websocket_violation(ws_frame(true, 0x1, b"SEND\ndestination:/topic/a\n\nx\0", false), "unmasked frame")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_opcode() {
    websocket_violation(ws_frame(true, 0x3, b"x", true), "invalid opcode: 3").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_control_frame() {
    websocket_violation(ws_frame(true, 0x9, &[7u8; 200], true), "Control frame too big").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_control_frame() {
    websocket_violation(ws_frame(false, 0x9, b"ping", true), "Fragmented control frame").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_without_a_start() {
    websocket_violation(ws_frame(true, 0x0, b"x", true), "Continue frame but nothing to continue").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_websocket_message() {
    plain(small_frames, async |node: &TestNode| {
        let mut attacker = node.connect(Transport::Ws, &[]).await;
        let _ = attacker.send_ws(Message::binary(vec![b'x'; 200 * 1024])).await;
        attacker.expect_refusal("WebSocket message refused").await;
        assert_eq!(attacker.close_code, Some(1009), "RFC 6455 7.4.1: message too big");
    })
    .await
}

// === half-open and slow connections ===

fn quick_timeouts(c: &mut Config) {
    c.limits.connect_timeout = Duration::from_millis(400);
}

/// Reads until EOF; returns what came and how long it took.
async fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await.expect("closed by the server");
    (out, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_stomp_connection() {
    plain(quick_timeouts, async |node: &TestNode| {
        let mut attacker = node.tcp().await;
        attacker.expect_refusal("no CONNECT frame within connect-timeout").await;
    })
    .await
}

/// A TCP connection to the WebSocket port that never starts its handshake is closed at the
/// connect-timeout (no protocol has been spoken, so there is nothing to answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_websocket_connection() {
    plain(quick_timeouts, async |node: &TestNode| {
        let mut stream = TcpStream::connect(node.ws_addr()).await.unwrap();
        let (bytes, took) = read_to_close(&mut stream).await;
        assert!(bytes.is_empty(), "{bytes:?}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "closed after {took:?}");
    })
    .await
}

/// Slowloris: a handshake request sent a byte at a time is cut at the connect-timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_handshake() {
    plain(quick_timeouts, async |node: &TestNode| {
        let mut stream = TcpStream::connect(node.ws_addr()).await.unwrap();
        let request = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
        let started = std::time::Instant::now();
        for byte in request.bytes() {
            if stream.write_all(&[byte]).await.is_err() {
                break;
            }
            let mut probe = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => panic!("the server answered a half-sent handshake"),
                Err(_) => {}
            }
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "still open after {took:?}");
    })
    .await
}

/// A CONNECTed client that promised heart-beats and went silent is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_after_connect() {
    plain(
        |c| c.heartbeat.receive = Duration::from_millis(200),
        async |node: &TestNode| {
            for t in BOTH {
                let mut attacker = node.connect(t, &[("heart-beat", "200,0")]).await;
                attacker.expect_refusal("heart-beat timeout").await;
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_from_one_address() {
    plain(
        |c| c.limits.max_connections_per_ip = 4,
        async |node: &TestNode| {
            // The bystander holds two places: two more are left.
            let _held = [node.connect(Transport::Tcp, &[]).await, node.connect(Transport::Tcp, &[]).await];
            let mut attacker = node.tcp().await;
            attacker
                .expect_refusal("too many connections from 127.0.0.1 (max-connections-per-ip is 4)")
                .await;
            match node.try_ws(None, &[]).await {
                Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
                Err(other) => panic!("unexpected error {other}"),
                Ok(_) => panic!("admitted past max-connections-per-ip"),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_to_a_tls_port() {
    let keys = Keys::new();
    under_attack(Some(&keys.tls), quick_timeouts, async |node: &TestNode| {
        for port in [node.tcp_addr(), node.ws_addr()] {
            let mut stream = TcpStream::connect(port).await.unwrap();
            stream.write_all(b"CONNECT\naccept-version:1.2\nhost:x\n\n\0").await.unwrap();
            let (bytes, _) = read_to_close(&mut stream).await;
            assert!(!bytes.starts_with(b"CONNECTED"), "a plain-text client was served on a TLS port");
        }
    })
    .await
}

// === authentication ===

/// The secure configuration (users file, JWT keys, access rules, origins).
async fn secure(attack: impl for<'n> AsyncFnOnce(&'n TestNode)) {
    let keys = Keys::new();
    under_attack(None, |c| keys.secure(c), attack).await
}

/// CONNECTs with `headers` over each transport and expects an ERROR naming `needle`.
async fn connect_refused(node: &TestNode, headers: &[(&str, &str)], needle: &str) {
    for t in BOTH {
        let mut attacker = node.open(t).await;
        let answer = attacker.connect_with(Command::Connect, Some("1.2"), headers).await;
        assert_error(&answer, needle);
        attacker.expect_closed(WAIT).await;
        if t == Transport::Ws {
            assert_eq!(attacker.close_code, Some(1008));
            assert_eq!(attacker.close_reason.as_deref(), Some("authentication failed"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_with_alg_none() {
    secure(async |node: &TestNode| {
        let token = Token::for_user("ops").unsigned("none");
        connect_refused(node, &[("passcode", &token)], "unsigned tokens (alg none) are never accepted").await;
        let token = Token::for_user("ops").unsigned("nOnE");
        connect_refused(node, &[("passcode", &token)], "alg none").await;
    })
    .await
}

/// HS/RS key confusion: an HS256 token "signed" with the server's RSA public key as the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_hs_rs_key_confusion() {
    let keys = Keys::new();
    let forged = Token::for_user("ops").hs256_with(RSA_PUBLIC_PEM.as_bytes());
    // Where only RS256 is configured, HS256 is not even on the allowlist...
    let rs_only = |c: &mut Config| {
        c.auth.jwt.public_key = Some(keys.rsa_public.clone());
        c.auth.jwt.audience = Some(vec![AUDIENCE.to_owned()]);
        c.auth.users_file = Some(keys.users_file.clone());
        c.auth.acl_default = AclDefault::Allow;
    };
    under_attack(None, rs_only, async |node: &TestNode| {
        connect_refused(node, &[("passcode", &forged)], "algorithm \"HS256\" is not accepted").await;
    })
    .await;
    // ...and where HS256 is allowed too, an HMAC is only ever checked with the HMAC secret.
    secure(async |node: &TestNode| {
        connect_refused(node, &[("passcode", &forged)], "token signature is invalid").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_expired() {
    secure(async |node: &TestNode| {
        let token = Token::for_user("ops").claim("exp", json!(now() - 120)).hs256();
        connect_refused(node, &[("passcode", &token)], "token expired").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_not_yet_valid() {
    secure(async |node: &TestNode| {
        let token = Token::for_user("ops").claim("nbf", json!(now() + 600)).hs256();
        connect_refused(node, &[("passcode", &token)], "token not valid yet").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_wrong_audience() {
    secure(async |node: &TestNode| {
        let token = Token::for_user("ops").claim("aud", json!("another-service")).rs256();
        connect_refused(node, &[("passcode", &token)], "token audience (aud) is not accepted").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_wrong_issuer() {
    secure(async |node: &TestNode| {
        let token = Token::for_user("ops").claim("iss", json!("https://evil.test")).hs256();
        connect_refused(node, &[("passcode", &token)], "token issuer (iss) is not accepted").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_without_exp() {
    secure(async |node: &TestNode| {
        let token = Token::for_user("ops").without("exp").hs256();
        connect_refused(node, &[("passcode", &token)], "token lacks the exp claim").await;
    })
    .await
}

/// A token whose payload was swapped for another user's, keeping the signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tampered_payload() {
    secure(async |node: &TestNode| {
        let signed = Token::for_user("bob").hs256();
        let forged = Token::for_user("ops").hs256();
        let parts: Vec<&str> = signed.split('.').collect();
        let token = format!("{}.{}.{}", parts[0], forged.split('.').nth(1).unwrap(), parts[2]);
        connect_refused(node, &[("passcode", &token)], "token signature is invalid").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_with_a_user_name_that_crosses_destinations() {
    secure(async |node: &TestNode| {
        let token = Token::for_user("bob/queue").hs256();
        connect_refused(node, &[("passcode", &token)], "the sub claim must name the user").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_in_the_handshake_that_is_forged() {
    secure(async |node: &TestNode| {
        let forged = Token::for_user("ops").hs256_with(b"not the server's secret, 32 bytes+");
        for (query, headers) in [
            (None, vec![("authorization", format!("Bearer {forged}"))]),
            (Some(format!("token={forged}")), vec![]),
        ] {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let (mut attacker, _) = node.try_ws(query.as_deref(), &headers).await.unwrap();
            assert_error(
                &attacker.connect_with(Command::Connect, Some("1.2"), &[]).await,
                "token signature is invalid",
            );
            attacker.expect_closed(WAIT).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password() {
    secure(async |node: &TestNode| {
        connect_refused(node, &[("login", "ann"), ("passcode", "bob-pw")], "unknown login or wrong passcode")
            .await;
        connect_refused(node, &[("login", "mallory"), ("passcode", "x")], "unknown login or wrong passcode")
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials() {
    secure(async |node: &TestNode| {
        connect_refused(node, &[], "authentication required").await;
        connect_refused(node, &[("login", "ann")], "authentication required").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_origin() {
    secure(async |node: &TestNode| {
        for origin in ["https://evil.example", "https://app.example.com.evil.example", "null"] {
            match node.try_ws(None, &[("origin", origin)]).await {
                Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403, "{origin}"),
                Err(other) => panic!("{origin}: unexpected error {other}"),
                Ok(_) => panic!("{origin}: the handshake succeeded"),
            }
        }
    })
    .await
}

// === authorization ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_destination() {
    secure(async |node: &TestNode| {
        let ann = [("login", "ann"), ("passcode", "ann-pw")];
        for t in BOTH {
            let mut attacker = node.connect(t, &ann).await;
            let refused = attacker.request_refused(send_frame("/user/bob/queue/inbox", "hi", &[])).await;
            assert_error(&refused, "not authorized to publish to /user/bob/queue/inbox");
            attacker.expect_closed(WAIT).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_beyond_the_rules() {
    secure(async |node: &TestNode| {
        let ann = [("login", "ann"), ("passcode", "ann-pw")];
        let mut attacker = node.connect(Transport::Tcp, &ann).await;
        let refused = attacker.request_refused(send_frame(BYSTANDER_TOPIC, "spoof", &[])).await;
        assert_error(&refused, "not authorized to publish to /topic/bystander");
        let mut attacker = node.connect(Transport::Ws, &ann).await;
        let refused = attacker.request_refused(subscribe_frame(BYSTANDER_TOPIC, "s")).await;
        assert_error(&refused, "not authorized to subscribe to /topic/bystander");
        attacker.expect_closed(WAIT).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refresh_as_another_user() {
    secure(async |node: &TestNode| {
        let token = Token::for_user("bob").hs256();
        let mut attacker = node.connect(Transport::Tcp, &[("passcode", &token)]).await;
        let other = Token::for_user("ops").hs256();
        let refused = attacker.request_refused(send_frame("/auth/refresh", &other, &[])).await;
        assert_error(&refused, "token refresh refused: the new token names another user");
        attacker.expect_closed(WAIT).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_token_refresh() {
    secure(async |node: &TestNode| {
        let token = Token::for_user("bob").hs256();
        let mut attacker = node.connect(Transport::Ws, &[("passcode", &token)]).await;
        let forged = Token::for_user("bob").unsigned("none");
        let refused = attacker.request_refused(send_frame("/auth/refresh", &forged, &[])).await;
        assert_error(&refused, "token refresh refused: unsigned tokens (alg none)");
        attacker.expect_closed(WAIT).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_without_the_token() {
    secure(async |node: &TestNode| {
        let publish = r#"{"destination": "/topic/bystander", "body": "spoof"}"#;
        for auth in [None, Some("Bearer wrong-token-0123456789"), Some("Basic YWRtaW46YWRtaW4=")] {
            let response = node.http("POST", "/api/v1/publish", auth, Some(publish)).await;
            assert_eq!(response.status, 401, "{auth:?}: {}", response.body);
            let response = node.http("GET", "/metrics", auth, None).await;
            assert_eq!(response.status, 401);
        }
    })
    .await
}

/// Not a bad input but its control: a frame that asks for a receipt while authorized gets one,
/// so the refusals above are about the rules, not the frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_frames_are_accepted_where_allowed() {
    secure(async |node: &TestNode| {
        let ops = Token::for_user("ops").claim("roles", json!(["operators"])).hs256();
        let mut client = node.connect(Transport::Tcp, &[("passcode", &ops)]).await;
        client.publish("/user/bob/queue/inbox", "hi", &[]).await;
        let receipt = client
            .request(
                Frame::new(Command::Subscribe).with_header("destination", "/topic/x").with_header("id", "1"),
            )
            .await;
        assert_eq!(receipt.command, Command::Receipt);
        client.disconnect().await;
    })
    .await
}
