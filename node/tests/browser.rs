//! STOMP over SockJS in a real browser: Debian's Chromium, headless, loads a page from a small
//! HTTP server of this test (another origin than the broker's, as an application's page is),
//! which runs Debian's sockjs-client with WebSocket left out, on each of the browser's HTTP
//! transports in turn, and POSTs what happened back to the test.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use stampede_testkit::prelude::*;
use stampede_testkit::system;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const PAGE: &str = include_str!("browser/sockjs.html");
const SOCKJS_CLIENT: &str = "/usr/share/nodejs/sockjs-client/dist/sockjs.min.js";

/// The browser transports sockjs-client has besides WebSocket: the plain ones, and the
/// iframe-based ones, which load the broker's `/ws/iframe.html` (which loads sockjs-client from
/// `sockjs-client-url`, here this test's server) and run inside it on the broker's origin.
const TRANSPORTS: &[&str] = &[
    "xhr-streaming",
    "xhr-polling",
    "eventsource",
    "jsonp-polling",
    "iframe-eventsource",
    "iframe-htmlfile",
    "iframe-xhr-polling",
];

/// Serves the page and sockjs-client, and hands each POSTed result to `results`.
async fn serve_page(listener: TcpListener, results: mpsc::Sender<String>) {
    let script = std::fs::read_to_string(SOCKJS_CLIENT).expect("sockjs-client's browser build");
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let (script, results) = (script.clone(), results.clone());
        tokio::spawn(async move { answer(stream, &script, &results).await });
    }
}

async fn answer(mut stream: TcpStream, script: &str, results: &mpsc::Sender<String>) {
    let mut request = Vec::new();
    let mut buf = [0; 8192];
    let (head, body_start) = loop {
        let Ok(n) = stream.read(&mut buf).await else { return };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&request[..end]).into_owned(), end + 4);
        }
    };
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0usize);
    while request.len() < body_start + length {
        let Ok(n) = stream.read(&mut buf).await else { return };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let target = head.split(' ').nth(1).unwrap_or("/");
    let (content_type, body) = match target.split('?').next().unwrap_or("/") {
        "/" => ("text/html; charset=utf-8", PAGE.to_owned()),
        "/sockjs.js" => ("application/javascript", script.to_owned()),
        "/result" => {
            let _ = results.send(String::from_utf8_lossy(&request[body_start..]).into_owned()).await;
            ("text/plain", "ok".to_owned())
        }
        _ => ("text/plain", String::new()),
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_speaks_stomp_over_sockjs_on_every_transport_but_websocket() {
    let chromium = system::require("chromium", "chromium");
    system::require_file(SOCKJS_CLIENT, "node-sockjs-client");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page: SocketAddr = listener.local_addr().unwrap();
    let (results_tx, mut results) = mpsc::channel(1);
    tokio::spawn(serve_page(listener, results_tx));

    let node = TestNode::start(|c| {
        c.sockjs.client_url = format!("http://{page}/sockjs.js");
        c.heartbeat.send = Duration::ZERO;
        c.heartbeat.receive = Duration::ZERO;
    })
    .await;
    let broker = format!("http://{}/ws", node.ws_addr());
    let mut bystander = node.connect_bystander(Transport::Ws).await;
    bystander.subscribe("/topic/browser-xhr-streaming", "b", &[]).await;

    let profile = tempdir();
    let address = format!("http://{page}/?url={broker}&transports={}", TRANSPORTS.join(","));
    let mut browser = tokio::process::Command::new(chromium)
        .args(system::CHROMIUM_HEADLESS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&address)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    let report = tokio::time::timeout(Duration::from_secs(120), results.recv())
        .await
        .expect("the page reports within two minutes")
        .expect("a report");
    let _ = browser.kill().await;
    let _ = std::fs::remove_dir_all(&profile);

    let report: Vec<serde_json::Value> = serde_json::from_str(&report).unwrap();
    let failed: Vec<&serde_json::Value> = report.iter().filter(|r| r["ok"] != true).collect();
    assert!(failed.is_empty(), "transports that failed in Chromium: {failed:#?}\nall: {report:#?}");
    assert_eq!(report.len(), TRANSPORTS.len());
    // The browser's message reached a WebSocket client of the same broker.
    assert_eq!(bystander.recv_message().await.body.as_ref(), "h\u{e9}llo \u{2603} \"q\" \\".as_bytes());
    node.shutdown().await;
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("stampede-chromium-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
