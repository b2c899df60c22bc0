//! A session that ends lets go of its socket at once, even when the client goes silent and never
//! closes its side: a connection's file descriptor does not outlive its session (a client could
//! otherwise hold sockets past `max-connections` by never sending another byte).
//!
//! A test binary of its own: it counts this process's open file descriptors, which tests running
//! beside it would disturb.

use std::time::Duration;

use stampede_testkit::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 50;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}

/// Reads until `needle` has arrived (or the connection ends); returns everything read.
async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_session_releases_its_socket_while_the_client_stays_silent() {
    let node = TestNode::start(|_| {}).await;
    let before = open_fds();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = TcpStream::connect(node.tcp_addr()).await.expect("connect");
        client.write_all(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0").await.expect("CONNECT");
        assert!(read_until(&mut client, "CONNECTED").await.contains("CONNECTED"));
        // A SEND without a destination: the session refuses it and ends; the client then says
        // nothing more and keeps its socket open.
        client.write_all(b"SEND\n\nbody\0").await.expect("SEND");
        let answer = read_until(&mut client, "\0").await;
        assert!(answer.starts_with("ERROR"), "{answer:?}");
        clients.push(client);
    }
    let released = holds_within(Duration::from_secs(10), || async { open_fds() <= before + CLIENTS }).await;
    assert!(
        released,
        "{} descriptors open after {CLIENTS} sessions ended; {} with only the clients' ends",
        open_fds(),
        before + CLIENTS
    );
    drop(clients);
}
