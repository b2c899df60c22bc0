//! The STOMP protocol as a client sees it: connecting and version negotiation, header encoding,
//! bodies, receipts, heart-beats, MESSAGE headers and transactions.
//!
//! Scenarios whose frames travel through destinations run on every engine variant (memory over
//! WebSocket and TCP, one Redis node, three Redis nodes with the clients spread over them; see
//! `every_engine!` in the test kit): what the codec accepts must survive the engine's envelope and
//! other nodes. Scenarios about one connection's framing and timing, which never reach the engine
//! (version negotiation, refused escapes, DISCONNECT and ERROR receipts, heart-beats), run on the
//! memory engine only, over both transports.

use std::collections::HashSet;
use std::time::Duration;

use stampede::stomp::{Command, Frame};
use stampede_testkit::prelude::*;

every_engine!(
    connect_and_stomp_commands,
    header_escaping_round_trips_in_1_1_and_1_2,
    headers_are_raw_in_1_0,
    stomp_1_0_subscription_without_id,
    content_length_body_with_nuls,
    crlf_line_ends,
    repeated_headers_first_wins,
    receipts_for_every_command,
    receipts_for_frames_in_a_transaction,
    no_receipts_for_frames_of_an_aborted_transaction,
    user_headers_reach_message,
    message_ids_are_unique,
    subscription_header_names_the_subscription,
    send_in_transaction_waits_for_commit,
    abort_discards_transaction,
    closed_connection_aborts_transaction,
    ack_in_committed_transaction,
    ack_in_aborted_transaction,
    nack_in_transaction,
);

// One connection's framing and timing: memory engine only.
both_transports!(
    version_negotiation,
    unsupported_version_is_refused,
    unknown_escape_is_refused,
    disconnect_with_receipt,
    error_carries_receipt_id,
    server_heartbeats,
    a_frame_shortly_after_a_beat_does_not_stretch_the_silence,
    silent_client_is_dropped,
    heartbeating_client_is_kept,
);

async fn connect_and_stomp_commands(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    for (i, command) in [Command::Connect, Command::Stomp].into_iter().enumerate() {
        let mut client = cluster.open(i).await;
        let connected = client.connect_with(command, Some("1.2"), &[("login", "ann")]).await;
        assert_eq!(connected.command, Command::Connected, "{}", show(&connected));
        assert_eq!(header(&connected, "version"), "1.2");
        assert!(header(&connected, "server").starts_with("Stampede/"));
        assert!(!header(&connected, "session").is_empty());
        assert_eq!(header(&connected, "user-name"), "ann");
        // The session works.
        client.subscribe("/topic/c", "s", &[]).await;
        client.publish("/topic/c", "x", &[]).await;
        assert_eq!(body(&client.recv_message().await), "x");
    }
    cluster.shutdown().await;
}

async fn version_negotiation(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    for (offer, expected) in [
        (Some("1.1,1.2"), "1.2"),
        (Some("1.0"), "1.0"),
        (None, "1.0"),
        (Some("1.0,1.1"), "1.1"),
        (Some("1.1,3.0"), "1.1"),
    ] {
        let mut client = node.open(t).await;
        let connected = client.connect(offer, &[]).await;
        assert_eq!(header(&connected, "version"), expected, "offer {offer:?}");
    }
    node.shutdown().await;
}

async fn unsupported_version_is_refused(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut client = node.open(t).await;
    client.send_raw(b"CONNECT\naccept-version:2.0\nhost:x\n\n\0").await.unwrap();
    let error = client.expect_error().await;
    assert_error(&error, "2.0");
    assert_eq!(header(&error, "version"), "1.0,1.1,1.2");
    node.shutdown().await;
}

async fn header_escaping_round_trips_in_1_1_and_1_2(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    for (i, version) in ["1.1", "1.2"].into_iter().enumerate() {
        let mut sub = cluster.open(i).await;
        sub.connect(Some(version), &[]).await;
        sub.subscribe("/topic/esc", "s", &[]).await;
        let mut publisher = cluster.open(i + 1).await;
        publisher.connect(Some(version), &[]).await;
        let value = "a:b\nc\\d";
        // Encoded by the client with escapes: a\cb\nc\\d.
        publisher.publish("/topic/esc", "x", &[("x-tricky", value), ("x:name", "v")]).await;
        let message = sub.recv_message().await;
        assert_eq!(header(&message, "x-tricky"), value, "version {version}");
        assert_eq!(header(&message, "x:name"), "v", "version {version}");
        // Raw bytes with an escape sequence, sent by hand.
        publisher.send_raw(b"SEND\ndestination:/topic/esc\nx-raw:one\\ctwo\\nthree\n\nraw\0").await.unwrap();
        let message = sub.recv_message().await;
        assert_eq!(header(&message, "x-raw"), "one:two\nthree");
    }
    cluster.shutdown().await;
}

async fn headers_are_raw_in_1_0(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut old = cluster.open(0).await;
    old.connect(Some("1.0"), &[]).await;
    old.subscribe("/topic/raw", "s", &[]).await;
    // In 1.0 a backslash is an ordinary character and a value may contain ':'.
    old.send_raw(b"SEND\ndestination:/topic/raw\nx-path:C:\\dir\\n\nreceipt:r\n\nx\0").await.unwrap();
    old.await_receipt("r").await;
    let message = old.recv_message().await;
    assert_eq!(header(&message, "x-path"), "C:\\dir\\n");

    // A 1.2 publisher's escaped value reaches a 1.0 subscriber unescaped.
    let mut new = cluster.connect(1).await;
    new.publish("/topic/raw", "y", &[("x-colon", "a:b")]).await;
    let message = old.recv_message().await;
    assert_eq!(header(&message, "x-colon"), "a:b");
    cluster.shutdown().await;
}

/// STOMP 1.0: SUBSCRIBE may omit `id` (the destination stands for it), ACK names the
/// `message-id`, UNSUBSCRIBE may name the destination.
async fn stomp_1_0_subscription_without_id(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut client = cluster.open(0).await;
    client.connect(None, &[]).await;
    client
        .request(
            Frame::new(Command::Subscribe)
                .with_header("destination", "/queue/old")
                .with_header("ack", "client"),
        )
        .await;
    let mut publisher = cluster.connect(1).await;
    publisher.publish("/queue/old", "hi", &[]).await;
    let message = client.recv_message().await;
    assert_eq!(header(&message, "subscription"), "/queue/old");
    client.request(Frame::new(Command::Ack).with_header("message-id", header(&message, "message-id"))).await;
    client.request(Frame::new(Command::Unsubscribe).with_header("destination", "/queue/old")).await;
    publisher.publish("/queue/old", "later", &[]).await;
    client.assert_quiet().await;
    assert_eq!(cluster.queue_depth("/queue/old").await, 1, "hi was acknowledged");
    cluster.shutdown().await;
}

async fn unknown_escape_is_refused(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut client = node.connect(t, &[]).await;
    client.send_raw(b"SEND\ndestination:/topic/a\nx:a\\tb\n\nx\0").await.unwrap();
    let error = client.expect_error().await;
    assert_error(&error, "invalid escape sequence \"\\t\"");
    node.shutdown().await;
}

async fn content_length_body_with_nuls(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut client = cluster.connect(0).await;
    client.subscribe("/queue/nul", "s", &[]).await;
    let mut publisher = cluster.connect(1).await;
    let payload = b"\0a\0\0b\0".to_vec();
    let send = Frame::new(Command::Send)
        .with_header("destination", "/queue/nul")
        .with_header("content-length", payload.len().to_string())
        .with_body(payload.clone());
    publisher.request(send).await;
    let message = client.recv_message().await;
    assert_eq!(&message.body[..], &payload[..]);
    assert_eq!(header(&message, "content-length"), "6");
    cluster.shutdown().await;
}

async fn crlf_line_ends(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut client = cluster.open(0).await;
    client.send_raw(b"CONNECT\r\naccept-version:1.2\r\nhost:x\r\n\r\n\0").await.unwrap();
    let connected = client.recv_frame(WAIT).await.unwrap();
    assert_eq!(connected.command, Command::Connected, "{}", show(&connected));
    client.version = Some(stampede::stomp::Version::V1_2);
    client.send_raw(b"SUBSCRIBE\r\ndestination:/topic/crlf\r\nid:s\r\nreceipt:r1\r\n\r\n\0").await.unwrap();
    client.await_receipt("r1").await;
    let mut publisher = cluster.connect(1).await;
    publisher.send_raw(b"SEND\r\ndestination:/topic/crlf\r\nx-k:v\r\n\r\nbody\0\r\n").await.unwrap();
    let message = client.recv_message().await;
    assert_eq!(header(&message, "x-k"), "v");
    assert_eq!(header(&message, "destination"), "/topic/crlf");
    assert_eq!(body(&message), "body");
    cluster.shutdown().await;
}

async fn repeated_headers_first_wins(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut client = cluster.connect(0).await;
    client.subscribe("/topic/rep", "s", &[]).await;
    let mut publisher = cluster.connect(1).await;
    publisher
        .send_raw(
            b"SEND\ndestination:/topic/rep\ndestination:/topic/other\nx-user:first\nx-user:second\n\nx\0",
        )
        .await
        .unwrap();
    let message = client.recv_message().await;
    assert_eq!(header(&message, "destination"), "/topic/rep");
    let users: Vec<&str> =
        message.headers.iter().filter(|(n, _)| n == "x-user").map(|(_, v)| v.as_str()).collect();
    assert_eq!(users, ["first"]);
    cluster.shutdown().await;
}

async fn receipts_for_every_command(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut client = cluster.connect(0).await;
    let receipted = |command, headers: &[(&str, &str)], receipt: &str| {
        let mut frame = Frame::new(command);
        for (n, v) in headers {
            frame = frame.with_header(*n, *v);
        }
        frame.with_header("receipt", receipt)
    };
    let steps: Vec<(Frame, &str)> = vec![
        (
            receipted(
                Command::Subscribe,
                &[("destination", "/queue/rc"), ("id", "s"), ("ack", "client")],
                "sub",
            ),
            "sub",
        ),
        (receipted(Command::Send, &[("destination", "/queue/rc")], "send"), "send"),
        (receipted(Command::Begin, &[("transaction", "t1")], "begin"), "begin"),
        (receipted(Command::Commit, &[("transaction", "t1")], "commit"), "commit"),
        (receipted(Command::Begin, &[("transaction", "t2")], "begin2"), "begin2"),
        (receipted(Command::Abort, &[("transaction", "t2")], "abort"), "abort"),
    ];
    for (frame, id) in steps {
        client.send_frame(&frame).await.unwrap();
        let receipt = client.await_receipt(id).await;
        assert_eq!(receipt.command, Command::Receipt);
    }
    let message = client.recv_message().await;
    client.send_frame(&receipted(Command::Ack, &[("id", &ack_id(&message))], "ack")).await.unwrap();
    client.await_receipt("ack").await;
    client.send_frame(&receipted(Command::Unsubscribe, &[("id", "s")], "unsub")).await.unwrap();
    client.await_receipt("unsub").await;
    cluster.shutdown().await;
}

/// STOMP: any client frame but CONNECT may ask for a RECEIPT, transactional ones included. A
/// receipt says what the frame did, so a transactional frame's comes once COMMIT has done it: a
/// SEND's when its message is stored, an ACK's when it is settled, in order, and the COMMIT's
/// after them all.
async fn receipts_for_frames_in_a_transaction(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut client = cluster.connect(0).await;
    client.subscribe("/queue/rtx", "s", &[("ack", "client-individual"), ("prefetch-count", "1")]).await;
    client.publish("/queue/rtx", "m", &[]).await;
    let message = client.recv_message().await;
    client.request(Frame::new(Command::Begin).with_header("transaction", "t1")).await;
    client.send_frame(&tx_send("/queue/rtx", "in tx", "t1").with_header("receipt", "tx-send")).await.unwrap();
    let ack = Frame::new(Command::Ack)
        .with_header("id", ack_id(&message))
        .with_header("transaction", "t1")
        .with_header("receipt", "tx-ack");
    client.send_frame(&ack).await.unwrap();
    client
        .send_frame(&tx_send("/queue/rtx", "in tx 2", "t1").with_header("receipt", "tx-send-2"))
        .await
        .unwrap();
    // Nothing is published or settled before COMMIT, so nothing is confirmed either.
    client.assert_quiet().await;
    let commit =
        Frame::new(Command::Commit).with_header("transaction", "t1").with_header("receipt", "commit");
    client.send_frame(&commit).await.unwrap();
    let mut receipts = Vec::new();
    let mut bodies = Vec::new();
    while receipts.last().map(String::as_str) != Some("commit") {
        let frame = client.recv_frame(WAIT).await.expect("the receipts after COMMIT");
        match frame.command {
            Command::Receipt => receipts.push(header(&frame, "receipt-id").to_owned()),
            Command::Message => bodies.push(body(&frame)),
            _ => panic!("unexpected {}", show(&frame)),
        }
    }
    assert_eq!(receipts, ["tx-send", "tx-ack", "tx-send-2", "commit"]);
    // The committed SEND was stored: the consumer, its slot freed by the ACK, gets it.
    if bodies.is_empty() {
        bodies.push(body(&client.recv_message().await));
    }
    assert_eq!(bodies, ["in tx"]);
    cluster.shutdown().await;
}

/// ABORT discards a transaction's frames, and with them their receipts: no RECEIPT says a
/// discarded SEND was published; the ABORT's own RECEIPT answers for them.
async fn no_receipts_for_frames_of_an_aborted_transaction(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut sub = cluster.connect(0).await;
    sub.subscribe("/topic/rtxa", "s", &[]).await;
    let mut client = cluster.connect(1).await;
    client.request(Frame::new(Command::Begin).with_header("transaction", "t1")).await;
    client
        .send_frame(&tx_send("/topic/rtxa", "never", "t1").with_header("receipt", "tx-send"))
        .await
        .unwrap();
    client.assert_quiet().await;
    let abort = Frame::new(Command::Abort).with_header("transaction", "t1").with_header("receipt", "abort");
    client.send_frame(&abort).await.unwrap();
    let receipt = client.recv_frame(WAIT).await.expect("the ABORT's receipt");
    assert_eq!((receipt.command, header(&receipt, "receipt-id")), (Command::Receipt, "abort"));
    client.assert_quiet().await;
    client.publish("/topic/rtxa", "end", &[]).await;
    assert_eq!(sub.bodies_until("end").await, Vec::<String>::new());
    cluster.shutdown().await;
}

async fn disconnect_with_receipt(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut client = node.connect(t, &[]).await;
    client.send_raw(b"DISCONNECT\nreceipt:bye\n\n\0").await.unwrap();
    let frames = client.expect_closed(WAIT).await;
    assert_eq!(frames.len(), 1, "{:?}", frames.iter().map(show).collect::<Vec<_>>());
    assert_eq!(frames[0].command, Command::Receipt);
    assert_eq!(header(&frames[0], "receipt-id"), "bye");
    if t == Transport::Ws {
        assert_eq!(client.close_code, Some(1000));
    }
    node.shutdown().await;
}

async fn error_carries_receipt_id(t: Transport) {
    let node = TestNode::start(|_| {}).await;
    let mut client = node.connect(t, &[]).await;
    client.send_raw(b"SEND\nreceipt:oops-1\n\nno destination\0").await.unwrap();
    let error = client.expect_error().await;
    assert_error(&error, "destination");
    assert_eq!(header(&error, "receipt-id"), "oops-1");
    node.shutdown().await;
}

async fn server_heartbeats(t: Transport) {
    let node = TestNode::start(|c| {
        c.heartbeat.send = Duration::from_millis(100);
        c.heartbeat.receive = Duration::ZERO;
    })
    .await;
    let mut client = node.open(t).await;
    let connected = client.connect(Some("1.2"), &[("heart-beat", "0,100")]).await;
    assert_eq!(header(&connected, "heart-beat"), "100,0");
    let beats = client.count_heartbeats(Duration::from_millis(1000)).await;
    assert!((3..=15).contains(&beats), "{beats} heart-beats in 1s at 100ms");

    // A client that does not ask for heart-beats gets none.
    let mut quiet = node.open(t).await;
    quiet.connect(Some("1.2"), &[("heart-beat", "0,0")]).await;
    assert_eq!(quiet.count_heartbeats(Duration::from_millis(400)).await, 0);
    node.shutdown().await;
}

/// Waits for the next heart-beat; returns when it came, or panics after `within`.
async fn next_heartbeat(client: &mut Client, within: Duration) -> tokio::time::Instant {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if client.count_heartbeats(Duration::from_millis(5)).await > 0 {
            return tokio::time::Instant::now();
        }
    }
    panic!("no heart-beat within {within:?}");
}

/// STOMP: the server sends something at least every negotiated interval. A frame written shortly
/// after a beat must move the next beat to one interval after that frame, not skip it for a
/// whole tick (which left nearly two intervals of silence).
async fn a_frame_shortly_after_a_beat_does_not_stretch_the_silence(t: Transport) {
    const EVERY: Duration = Duration::from_millis(400);
    let node = TestNode::start(|c| {
        c.heartbeat.send = EVERY;
        c.heartbeat.receive = Duration::ZERO;
    })
    .await;
    let mut client = node.open(t).await;
    client.connect(Some("1.2"), &[("heart-beat", "0,400")]).await;
    client.subscribe("/topic/beats", "0", &[]).await;
    for round in 0..3 {
        next_heartbeat(&mut client, EVERY * 3).await;
        // Past the 10 ms of slack the beat timer allows, well inside the interval.
        tokio::time::sleep(EVERY / 8).await;
        client.send("/topic/beats", "shortly after a beat", &[]).await;
        client.recv_message().await;
        let written = tokio::time::Instant::now();
        let beat = next_heartbeat(&mut client, EVERY * 3).await;
        let silence = beat - written;
        assert!(
            silence <= EVERY * 3 / 2,
            "round {round}: {silence:?} without a byte from the server at a {EVERY:?} heart-beat"
        );
    }
    node.shutdown().await;
}

async fn silent_client_is_dropped(t: Transport) {
    let node = TestNode::start(|c| {
        c.heartbeat.send = Duration::ZERO;
        c.heartbeat.receive = Duration::from_millis(100);
        c.heartbeat.grace = 2.0;
    })
    .await;
    let mut client = node.open(t).await;
    let connected = client.connect(Some("1.2"), &[("heart-beat", "100,0")]).await;
    assert_eq!(header(&connected, "heart-beat"), "0,100");
    let started = std::time::Instant::now();
    let frames = client.expect_closed(Duration::from_secs(1)).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(150), "dropped after {elapsed:?}, before 2 × 100ms");
    // Whatever came before the close, it was no MESSAGE.
    assert!(
        frames.iter().all(|f| f.command == Command::Error),
        "{:?}",
        frames.iter().map(show).collect::<Vec<_>>()
    );
    node.shutdown().await;
}

async fn heartbeating_client_is_kept(t: Transport) {
    let node = TestNode::start(|c| {
        c.heartbeat.send = Duration::ZERO;
        c.heartbeat.receive = Duration::from_millis(100);
        c.heartbeat.grace = 2.0;
    })
    .await;
    let mut client = node.open(t).await;
    client.connect(Some("1.2"), &[("heart-beat", "100,0")]).await;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        client.send_raw(b"\n").await.unwrap();
    }
    client.subscribe("/topic/alive", "s", &[]).await;
    client.publish("/topic/alive", "still here", &[]).await;
    assert_eq!(body(&client.recv_message().await), "still here");
    node.shutdown().await;
}

async fn user_headers_reach_message(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut sub = cluster.connect(0).await;
    sub.subscribe("/topic/hdr", "s", &[]).await;
    let mut publisher = cluster.connect(1).await;
    publisher
        .publish(
            "/topic/hdr",
            "{}",
            &[("content-type", "application/json"), ("x-trace", "abc-123"), ("priority", "9")],
        )
        .await;
    let message = sub.recv_message().await;
    assert_eq!(header(&message, "content-type"), "application/json");
    assert_eq!(header(&message, "x-trace"), "abc-123");
    assert_eq!(header(&message, "priority"), "9");
    assert_eq!(header(&message, "destination"), "/topic/hdr");
    assert_eq!(header(&message, "content-length"), "2");
    // The publisher's receipt header is not passed on.
    assert_eq!(message.get("receipt"), None);
    cluster.shutdown().await;
}

async fn message_ids_are_unique(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut a = cluster.connect(0).await;
    let mut b = cluster.connect(1).await;
    let mut c = cluster.connect(2).await;
    a.subscribe("/topic/ids", "s1", &[]).await;
    a.subscribe("/topic/ids", "s2", &[]).await;
    b.subscribe("/topic/ids", "s1", &[]).await;
    c.subscribe("/topic/ids", "s1", &[]).await;
    for i in 0..20 {
        a.send("/topic/ids", &i.to_string(), &[]).await;
    }
    let mut messages = a.recv_messages(40).await;
    messages.extend(b.recv_messages(20).await);
    messages.extend(c.recv_messages(20).await);
    let mut ids = HashSet::new();
    for message in &messages {
        assert!(ids.insert(header(message, "message-id").to_owned()), "duplicate {}", show(message));
    }
    assert_eq!(ids.len(), 80);
    cluster.shutdown().await;
}

async fn subscription_header_names_the_subscription(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut client = cluster.connect(0).await;
    client.subscribe("/topic/one", "sub-one", &[]).await;
    client.subscribe("/topic/two", "sub:two", &[]).await;
    let mut publisher = cluster.connect(1).await;
    publisher.publish("/topic/two", "2", &[]).await;
    publisher.publish("/topic/one", "1", &[]).await;
    let two = client.recv_message().await;
    assert_eq!((header(&two, "subscription"), body(&two).as_str()), ("sub:two", "2"));
    let one = client.recv_message().await;
    assert_eq!((header(&one, "subscription"), body(&one).as_str()), ("sub-one", "1"));
    cluster.shutdown().await;
}

fn tx_send(destination: &str, body: &str, tx: &str) -> Frame {
    send_frame(destination, body, &[("transaction", tx)])
}

async fn send_in_transaction_waits_for_commit(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut sub = cluster.connect(0).await;
    sub.subscribe("/topic/tx", "s", &[]).await;
    let mut publisher = cluster.connect(1).await;
    publisher.request(Frame::new(Command::Begin).with_header("transaction", "t1")).await;
    publisher.send_frame(&tx_send("/topic/tx", "tx-1", "t1")).await.unwrap();
    publisher.send_frame(&tx_send("/topic/tx", "tx-2", "t1")).await.unwrap();
    // Published after the transactional SENDs and delivered first: they are held.
    publisher.publish("/topic/tx", "outside", &[]).await;
    assert_eq!(body(&sub.recv_message().await), "outside");
    publisher.request(Frame::new(Command::Commit).with_header("transaction", "t1")).await;
    let bodies: Vec<String> = sub.recv_messages(2).await.iter().map(body).collect();
    assert_eq!(bodies, ["tx-1", "tx-2"]);
    sub.assert_quiet().await;
    cluster.shutdown().await;
}

async fn abort_discards_transaction(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut sub = cluster.connect(0).await;
    sub.subscribe("/queue/txa", "s", &[]).await;
    let mut publisher = cluster.connect(1).await;
    publisher.request(Frame::new(Command::Begin).with_header("transaction", "t1")).await;
    publisher.send_frame(&tx_send("/queue/txa", "never", "t1")).await.unwrap();
    publisher.request(Frame::new(Command::Abort).with_header("transaction", "t1")).await;
    publisher.publish("/queue/txa", "end", &[]).await;
    assert_eq!(sub.bodies_until("end").await, Vec::<String>::new());
    // The transaction is gone: committing it now is an error.
    publisher.send_frame(&Frame::new(Command::Commit).with_header("transaction", "t1")).await.unwrap();
    assert_error(&publisher.expect_error().await, "unknown transaction");
    cluster.shutdown().await;
}

async fn closed_connection_aborts_transaction(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let mut sub = cluster.connect(0).await;
    sub.subscribe("/topic/txc", "s", &[]).await;
    let mut publisher = cluster.connect(1).await;
    publisher.request(Frame::new(Command::Begin).with_header("transaction", "t1")).await;
    publisher.send_frame(&tx_send("/topic/txc", "never", "t1")).await.unwrap();
    publisher.drop_connection().await;
    // The publisher's session ended.
    cluster.settle(1).await;
    let mut other = cluster.connect(2).await;
    other.publish("/topic/txc", "end", &[]).await;
    assert_eq!(sub.bodies_until("end").await, Vec::<String>::new());
    cluster.shutdown().await;
}

/// Client `i`, a client-individual consumer of `queue` holding one unacknowledged message
/// another client published.
async fn holding_one(cluster: &Cluster, i: usize, queue: &str) -> (Client, Frame) {
    let mut consumer = cluster.connect(i).await;
    consumer.subscribe(queue, "s", &[("ack", "client-individual"), ("prefetch-count", "1")]).await;
    let mut publisher = cluster.connect(i + 1).await;
    publisher.publish(queue, "m1", &[]).await;
    publisher.disconnect().await;
    let message = consumer.recv_message().await;
    assert_eq!(body(&message), "m1");
    (consumer, message)
}

async fn ack_in_committed_transaction(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let (mut consumer, message) = holding_one(&cluster, 0, "/queue/txack").await;
    consumer.request(Frame::new(Command::Begin).with_header("transaction", "t1")).await;
    consumer
        .send_frame(
            &Frame::new(Command::Ack).with_header("id", ack_id(&message)).with_header("transaction", "t1"),
        )
        .await
        .unwrap();
    // Not yet acknowledged: the prefetch slot is still taken.
    consumer.publish("/queue/txack", "m2", &[]).await;
    consumer.assert_quiet().await;
    consumer.request(Frame::new(Command::Commit).with_header("transaction", "t1")).await;
    let m2 = consumer.recv_message().await;
    assert_eq!(body(&m2), "m2");
    consumer.ack(&m2).await;
    consumer.drop_connection().await;
    cluster.settle(0).await;
    // Nothing left to redeliver.
    let mut next = cluster.connect(2).await;
    next.subscribe("/queue/txack", "s", &[]).await;
    next.publish("/queue/txack", "end", &[]).await;
    assert_eq!(next.bodies_until("end").await, Vec::<String>::new());
    cluster.shutdown().await;
}

async fn ack_in_aborted_transaction(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let (mut consumer, message) = holding_one(&cluster, 0, "/queue/txab").await;
    consumer.request(Frame::new(Command::Begin).with_header("transaction", "t1")).await;
    consumer
        .send_frame(
            &Frame::new(Command::Ack).with_header("id", ack_id(&message)).with_header("transaction", "t1"),
        )
        .await
        .unwrap();
    consumer.request(Frame::new(Command::Abort).with_header("transaction", "t1")).await;
    consumer.drop_connection().await;
    // The ACK was aborted, so the message is still unacknowledged and comes back.
    let mut next = cluster.connect(2).await;
    next.subscribe("/queue/txab", "s", &[]).await;
    let again = next.recv_message().await;
    assert_eq!(body(&again), "m1");
    assert_eq!(again.get("redelivered"), Some("true"));
    cluster.shutdown().await;
}

async fn nack_in_transaction(v: Variant) {
    let cluster = Cluster::start(v, |_| {}).await;
    let (mut consumer, message) = holding_one(&cluster, 0, "/queue/txnack").await;
    consumer.request(Frame::new(Command::Begin).with_header("transaction", "t1")).await;
    consumer
        .send_frame(
            &Frame::new(Command::Nack).with_header("id", ack_id(&message)).with_header("transaction", "t1"),
        )
        .await
        .unwrap();
    consumer.assert_quiet().await;
    consumer.request(Frame::new(Command::Commit).with_header("transaction", "t1")).await;
    let again = consumer.recv_message().await;
    assert_eq!(body(&again), "m1");
    assert_eq!(again.get("redelivered"), Some("true"));
    cluster.shutdown().await;
}
