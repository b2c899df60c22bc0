//! Fuzz targets that run on stable Rust, inside `cargo test`, with bounded case counts:
//!
//! - `decoder`: arbitrary bytes, STOMP-like token soup and mutated valid frames, fed to the
//!   frame decoder in arbitrary chunks under arbitrary limits. It must never panic, never
//!   buffer more than `max-frame-size` for an incomplete frame, decide the same whatever the
//!   chunking, and never yield a frame over its limits.
//! - `session_*`: arbitrary sequences of frames (valid, half-valid and junk, split at arbitrary
//!   points) sent to a real node over TCP and WebSocket. After each case the node must still
//!   serve a bystander (a publish and its delivery), and no task of the node may have panicked.
//!
//! `STAMPEDE_FUZZ_CASES=<n>` sets the number of cases of each target (default: a smoke run of
//! 256 for the decoder, 40 per transport for sessions); run long campaigns in release mode:
//! `STAMPEDE_FUZZ_CASES=200000 cargo test --release -p stampede --test fuzz`. See
//! docs/security.md for coverage-guided fuzzing.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use stampede::stomp::{encode, Command, Decoded, Decoder, Limits, Version};
use stampede_testkit::prelude::*;

fn cases(default: u32) -> u32 {
    std::env::var("STAMPEDE_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

// === the decoder ===

const TOKENS: &[&[u8]] = &[
    b"CONNECT",
    b"STOMP",
    b"SEND",
    b"SUBSCRIBE",
    b"ACK",
    b"NACK",
    b"BEGIN",
    b"MESSAGE",
    b"\n",
    b"\r\n",
    b"\r",
    b":",
    b"\\",
    b"\\c",
    b"\\n",
    b"\\r",
    b"\\t",
    b"\0",
    b"content-length:",
    b"content-length:0",
    b"content-length:5",
    b"content-length:99999999999999999999",
    b"destination:/topic/a",
    b"x",
    b"\xff",
    b"\xc3\xa9",
    b"\xf0\x9f",
];

fn stomp_soup() -> impl Strategy<Value = Vec<u8>> {
    vec(prop_oneof![vec(any::<u8>(), 0..6), select(TOKENS).prop_map(<[u8]>::to_vec)], 0..96)
        .prop_map(|parts| parts.concat())
}

/// A valid frame with a few bytes flipped, dropped or duplicated.
fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    let frame =
        (select(Command::ALL.to_vec()), vec(("[a-z-]{1,8}", "[ -~]{0,12}"), 0..6), vec(any::<u8>(), 0..64))
            .prop_map(|(command, headers, body)| {
                let mut frame = stampede::stomp::Frame::new(command);
                for (name, value) in headers {
                    frame = frame.with_header(name, value);
                }
                let mut out = BytesMut::new();
                encode(&frame.with_body(body), Some(Version::V1_2), &mut out);
                out.to_vec()
            });
    (frame, vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..4)).prop_map(|(mut bytes, edits)| {
        for (at, byte, kind) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, bytes[i]),
            }
        }
        bytes
    })
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        (16usize..256, 0usize..128, 0usize..8, 1usize..64).prop_map(|(frame, body, headers, line)| Limits {
            max_frame_bytes: frame,
            max_body_bytes: body.min(frame),
            max_headers: headers,
            max_header_line: line,
        }),
    ]
}

/// Feeds `input` in chunks (sizes cycled), checking the buffering bound after each chunk.
/// Returns the items and whether the stream was refused.
fn feed(limits: Limits, version: Option<Version>, input: &[u8], chunks: &[usize]) -> (Vec<Decoded>, bool) {
    let mut decoder = Decoder::new(limits);
    if let Some(v) = version {
        decoder.set_version(v);
    }
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut rest = input;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = sizes.next().copied().unwrap_or(1).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {
                    assert!(
                        buf.len() <= limits.max_frame_bytes.max(2),
                        "{} bytes buffered for an incomplete frame, max-frame-size is {}",
                        buf.len(),
                        limits.max_frame_bytes
                    );
                    break;
                }
                Err(_) => return (items, true),
            }
        }
    }
    (items, false)
}

#[test]
fn decoder() {
    let config = ProptestConfig { cases: cases(256), failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = TestRunner::new(config);
    let strategy = (
        prop_oneof![vec(any::<u8>(), 0..512), stomp_soup(), mutated_frame()],
        vec(0usize..32, 1..8),
        limits(),
        prop_oneof![
            Just(None),
            Just(Some(Version::V1_0)),
            Just(Some(Version::V1_1)),
            Just(Some(Version::V1_2))
        ],
    );
    runner
        .run(&strategy, |(input, chunks, limits, version)| {
            let whole = feed(limits, version, &input, &[input.len().max(1)]);
            let chunked = feed(limits, version, &input, &chunks);
            prop_assert_eq!(&whole, &chunked, "chunking changed the outcome");
            for item in whole.0 {
                if let Decoded::Frame(frame) = item {
                    prop_assert!(frame.body.len() <= limits.max_body_bytes, "a body over max-body-size");
                    prop_assert!(frame.headers.len() <= limits.max_headers, "more than max-headers");
                }
            }
            Ok(())
        })
        .unwrap();
}

// === sessions ===

/// Panics anywhere but in this test's own code (that is, in the node's tasks).
static NODE_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_node_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info.location().is_some_and(|l| l.file().contains("tests/"));
            if !in_tests {
                NODE_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

const DESTINATIONS: &[&str] = &[
    "/topic/f",
    "/queue/f",
    "/user/u/queue/f",
    "/user/queue/f",
    "/topic/",
    "/exchange/x",
    "",
    "/topic/a\\c",
    "/auth/refresh",
];
const HEADER_NAMES: &[&str] = &[
    "destination",
    "id",
    "ack",
    "receipt",
    "transaction",
    "content-length",
    "content-type",
    "accept-version",
    "heart-beat",
    "login",
    "passcode",
    "prefetch-count",
    "x-since",
    "message-id",
    "subscription",
    "host",
];

/// One chunk of what a fuzzed client sends.
fn client_frame() -> impl Strategy<Value = Vec<u8>> {
    let header = prop_oneof![
        (select(HEADER_NAMES), select(DESTINATIONS)).prop_map(|(n, v)| format!("{n}:{v}")),
        (select(HEADER_NAMES), "[0-9a-z,.-]{0,10}").prop_map(|(n, v)| format!("{n}:{v}")),
        "[ -~]{0,16}",
    ];
    let frame = (
        prop_oneof![select(Command::ALL.to_vec()).prop_map(|c| c.as_str().to_owned()), "[A-Z]{0,8}"],
        vec(header, 0..6),
        vec(any::<u8>(), 0..48),
        any::<bool>(),
    )
        .prop_map(|(command, headers, body, nul)| {
            let mut out = format!("{command}\n{}\n\n", headers.join("\n")).into_bytes();
            out.extend_from_slice(&body);
            if nul {
                out.push(0);
            }
            out
        });
    prop_oneof![
        6 => frame,
        1 => Just(b"CONNECT\naccept-version:1.2\nhost:x\n\n\0".to_vec()),
        1 => Just(b"\n".to_vec()),
        1 => vec(any::<u8>(), 0..64),
    ]
}

fn session_input() -> impl Strategy<Value = (bool, Vec<Vec<u8>>, Vec<usize>)> {
    (any::<bool>(), vec(client_frame(), 0..12), vec(1usize..64, 1..6))
}

/// Runs the session target over one transport.
fn fuzz_sessions(t: Transport) {
    count_node_panics();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (node, subscriber, publisher) = runtime.block_on(async {
        let node = TestNode::start(|c| {
            c.limits.connect_timeout = Duration::from_secs(2);
            c.limits.max_frame_size = 16 * 1024;
            c.limits.max_body_size = 8 * 1024;
        })
        .await;
        let mut subscriber = node.connect(Transport::Tcp, &[]).await;
        subscriber.subscribe("/topic/probe", "p", &[]).await;
        let publisher = node.connect(Transport::Ws, &[]).await;
        (node, RefCell::new(Some(subscriber)), RefCell::new(Some(publisher)))
    });
    let config = ProptestConfig { cases: cases(40), failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = TestRunner::new(config);
    let probe = Cell::new(0u64);
    runner
        .run(&session_input(), |(connect_first, frames, chunks)| {
            probe.set(probe.get() + 1);
            runtime.block_on(async {
                let mut client = node.open(t).await;
                if connect_first {
                    client.connect_with(Command::Connect, Some("1.2"), &[("login", "u")]).await;
                }
                let bytes = frames.concat();
                let mut rest = &bytes[..];
                let mut sizes = chunks.iter().cycle();
                while !rest.is_empty() {
                    let n = (*sizes.next().unwrap()).min(rest.len());
                    if client.send_raw(&rest[..n]).await.is_err() {
                        break;
                    }
                    rest = &rest[n..];
                }
                // Whatever the node answers, it answers in valid STOMP, then goes quiet or closes.
                loop {
                    match client.recv_frame(Duration::from_millis(60)).await {
                        Ok(_) => {}
                        Err(ClientError::Timeout { .. } | ClientError::Closed(_)) => break,
                        Err(ClientError::Invalid(e)) => panic!("the node sent invalid STOMP: {e}"),
                        Err(e) => panic!("{e}"),
                    }
                }
                drop(client);
                let text = probe.get().to_string();
                // Taken out for the awaits, put back after (a failed case leaves them out).
                let mut p = publisher.take().expect("the bystander's publisher");
                let mut s = subscriber.take().expect("the bystander's subscriber");
                p.publish("/topic/probe", &text, &[]).await;
                let message = s.recv_message().await;
                assert_eq!(body(&message), text, "the bystander missed a message");
                publisher.replace(Some(p));
                subscriber.replace(Some(s));
            });
            prop_assert_eq!(NODE_PANICS.load(Ordering::SeqCst), 0, "a task of the node panicked");
            Ok(())
        })
        .unwrap();
    runtime.block_on(async {
        assert!(!node.stopped());
        node.shutdown().await;
    });
}

#[test]
fn session_tcp() {
    fuzz_sessions(Transport::Tcp)
}

#[test]
fn session_ws() {
    fuzz_sessions(Transport::Ws)
}
