//! Spring's `StompBrokerRelay`, reproduced on the wire against three `stampede` processes on
//! Redis: what a Spring application does when it is pointed at Stampede as its broker
//! (`registry.enableStompBrokerRelay("/topic", "/queue")`), per docs/spring.md.
//!
//! - The "system" session: one TCP connection with the relay's own login (`systemLogin`) and
//!   10 s heart-beats both ways, over which the application's `SimpMessagingTemplate` sends.
//! - One TCP connection per browser session, carrying the browser's CONNECT headers with the
//!   relay's `clientLogin`; `/user/queue/greetings` is resolved by Spring into
//!   `/queue/greetings-user<session>` for each browser session.
//! - A browser leaving: DISCONNECT with a receipt.
//! - One faulty application message on the system session (a destination Stampede refuses) must
//!   not cut the system session (the `relay` role), or Spring would call the broker unavailable
//!   and drop every browser session it relays; a browser session sending the same still gets
//!   STOMP's ERROR and close.

use std::time::Duration;

use stampede::stomp::{Command, Frame};
use stampede_testkit::client::header;
use stampede_testkit::keys::{argon2_hash, TempDir};
use stampede_testkit::{Client, Cluster, Redis, Transport};

/// Patience for one message that must come.
const RECV: Duration = Duration::from_secs(10);

async fn open(addr: std::net::SocketAddr) -> Client {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    Client::from_tcp(stream)
}

fn send(destination: &str, body: &str) -> Frame {
    Frame::new(Command::Send).with_header("destination", destination).with_body(body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_broker_relay_across_three_nodes() {
    let dir = TempDir::new();
    let users = format!("relay:{}:relay\nweb:{}\n", argon2_hash("relay-pw"), argon2_hash("web-pw"));
    let users_file = dir.write("users", &users);
    let redis = Redis::start().await;
    let args = ["--users-file", users_file.to_str().unwrap(), "--acl-default", "allow"];
    let cluster = Cluster::start(3, &redis, &args).await;
    let tcp = |i: usize| match cluster.node(i % 3).endpoint(Transport::Tcp) {
        stampede_testkit::Endpoint::Tcp(addr) => addr,
        other => panic!("{other}"),
    };

    // The system session, as the relay opens it.
    let mut system = open(tcp(0)).await;
    let connected = system
        .connect(
            Some("1.1,1.2"),
            &[("login", "relay"), ("passcode", "relay-pw"), ("heart-beat", "10000,10000")],
        )
        .await;
    assert_eq!(header(&connected, "heart-beat"), "10000,10000", "the relay's 10 s heart-beats are taken");

    // Six browser sessions over the three nodes, each with its user queue.
    let mut browsers = Vec::new();
    for i in 0..6 {
        let mut browser = open(tcp(i)).await;
        let connected = browser
            .connect(
                Some("1.1,1.2"),
                &[("login", "web"), ("passcode", "web-pw"), ("heart-beat", "10000,10000")],
            )
            .await;
        let session = header(&connected, "session").to_owned();
        browser.subscribe(&format!("/queue/greetings-user{session}"), "sub-0", &[]).await;
        browser.subscribe("/topic/greetings", "sub-1", &[]).await;
        browsers.push((session, browser));
    }
    // Subscriptions spread through Redis before the first send.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // convertAndSend("/topic/greetings", ...) and convertAndSendToUser(...) per session.
    system.send_frame(&send("/topic/greetings", "hello all")).await.unwrap();
    for (session, _) in &browsers {
        system
            .send_frame(&send(&format!("/queue/greetings-user{session}"), &format!("hello {session}")))
            .await
            .unwrap();
    }
    for (session, browser) in &mut browsers {
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let message = browser.try_recv_message(RECV).await.unwrap_or_else(|e| panic!("{session}: {e}"));
            bodies.push(String::from_utf8(message.body.to_vec()).unwrap());
        }
        bodies.sort();
        let mut expected = [format!("hello {session}"), "hello all".to_owned()];
        expected.sort();
        assert_eq!(bodies, expected, "each browser gets its own, and the broadcast");
    }

    // A faulty application message: an ERROR for it, and the system session carries on.
    let refused = system.request_refused(send("/nowhere/oops", "x")).await;
    assert!(refused.get("receipt-id").is_some(), "the ERROR answers the SEND's receipt");
    system.send_frame(&send("/topic/greetings", "still here")).await.unwrap();
    for (session, browser) in &mut browsers {
        let message = browser.try_recv_message(RECV).await.unwrap_or_else(|e| panic!("{session}: {e}"));
        assert_eq!(&message.body[..], b"still here");
    }
    // The same mistake on a browser session: STOMP's ERROR, then the close.
    let (_, mut careless) = browsers.pop().unwrap();
    careless.send_frame(&send("/nowhere/oops", "x")).await.unwrap();
    careless.expect_error().await;
    careless.expect_closed(RECV).await;

    // Browsers leave as the relay makes them: DISCONNECT with a receipt.
    for (_, browser) in &mut browsers {
        let receipt = browser.request(Frame::new(Command::Disconnect)).await;
        assert_eq!(receipt.command, Command::Receipt);
    }
    // The system session is still up and still delivers.
    let receipt = system.request(send("/topic/greetings", "last")).await;
    assert_eq!(receipt.command, Command::Receipt);
    drop(cluster);
}
