//! The load generator's own application backend: a small HTTP server (axum) inside the
//! `stampede-bench` process, which the node under test is configured to call (`--connect-hook`,
//! `--subscribe-hook`, `--app-http`; docs/applications.md). It does what the cheapest real
//! backend would do, parse the node's JSON and answer JSON at once, so what the scenarios
//! measure is the node's side of a call: building the request, the HTTP round trip on loopback,
//! reading and acting on the answer.
//!
//! | route | answers |
//! | --- | --- |
//! | `POST /connect` | `{"allow":true,"user":"u<n>"}`, `n` counting the calls |
//! | `POST /subscribe` | `{"allow":true}` |
//! | `POST /echo` | `{"reply":{"body": <the message's body>}}` (`body_base64` for a binary one) |
//!
//! A request that is not the JSON the contract describes is answered 400 and counted as
//! rejected: the node then fails closed or tells the sender, and the scenario sees the errors.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// Calls the backend answered during a run (the report's `app`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AppCalls {
    /// `POST /connect`: connect hook calls, each allowed.
    pub connect: u64,
    /// `POST /subscribe`: subscribe hook calls, each allowed.
    pub subscribe: u64,
    /// `POST /echo`: application messages, each answered with a reply.
    pub echo: u64,
    /// Requests whose body was not the documented JSON (answered 400).
    pub rejected: u64,
}

#[derive(Debug, Default)]
struct Counts {
    connect: AtomicU64,
    subscribe: AtomicU64,
    echo: AtomicU64,
    rejected: AtomicU64,
}

/// Checks a hook request's shape as a backend would: a JSON object naming its `session`.
fn hook_call(body: &[u8]) -> Result<(), String> {
    let call: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    match call.get("session") {
        Some(Value::String(_)) => Ok(()),
        _ => Err("no \"session\" string".into()),
    }
}

/// The reply to an application message (a JSON object with its `destination` and a `body` or
/// `body_base64`): the same body back.
fn echo_reply(body: &[u8]) -> Result<Value, String> {
    let message: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if !message.get("destination").is_some_and(Value::is_string) {
        return Err("no \"destination\" string".into());
    }
    match (message.get("body"), message.get("body_base64")) {
        (Some(Value::String(text)), _) => Ok(json!({"body": text})),
        (_, Some(Value::String(base64))) => Ok(json!({"body_base64": base64})),
        _ => Err("neither \"body\" nor \"body_base64\" is a string".into()),
    }
}

/// The running backend; stops when dropped.
pub struct AppServer {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl AppServer {
    /// Binds `addr` and serves until dropped.
    pub async fn start(addr: SocketAddr) -> Result<AppServer, String> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("the application backend cannot listen on {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let counts = Arc::new(Counts::default());
        let router = Router::new()
            .route("/connect", post(connect))
            .route("/subscribe", post(subscribe))
            .route("/echo", post(echo))
            .with_state(counts.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                eprintln!("stampede-bench: the application backend stopped: {e}");
            }
        });
        Ok(AppServer { addr, counts, task })
    }

    /// The calls answered so far.
    pub fn calls(&self) -> AppCalls {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AppCalls {
            connect: get(&self.counts.connect),
            subscribe: get(&self.counts.subscribe),
            echo: get(&self.counts.echo),
            rejected: get(&self.counts.rejected),
        }
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rejected(counts: &Counts, what: &str, why: String) -> Response {
    counts.rejected.fetch_add(1, Ordering::Relaxed);
    (StatusCode::BAD_REQUEST, format!("not a {what} request: {why}")).into_response()
}

async fn connect(State(counts): State<Arc<Counts>>, body: Bytes) -> Response {
    if let Err(why) = hook_call(&body) {
        return rejected(&counts, "connect hook", why);
    }
    let n = counts.connect.fetch_add(1, Ordering::Relaxed);
    Json(json!({"allow": true, "user": format!("u{n}")})).into_response()
}

async fn subscribe(State(counts): State<Arc<Counts>>, body: Bytes) -> Response {
    if let Err(why) = hook_call(&body) {
        return rejected(&counts, "subscribe hook", why);
    }
    counts.subscribe.fetch_add(1, Ordering::Relaxed);
    Json(json!({"allow": true})).into_response()
}

async fn echo(State(counts): State<Arc<Counts>>, body: Bytes) -> Response {
    match echo_reply(&body) {
        Ok(reply) => {
            counts.echo.fetch_add(1, Ordering::Relaxed);
            Json(json!({"reply": reply})).into_response()
        }
        Err(why) => rejected(&counts, "application message", why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 POST over a fresh connection; returns the status line and the body.
    async fn post(addr: SocketAddr, path: &str, body: &str) -> (String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response.lines().next().unwrap_or_default().to_owned();
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn answers_the_hooks_and_echoes_messages() {
        let server = AppServer::start(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let hook = r#"{"session":"s1","node":"n","login":null,"headers":{}}"#;
        let (status, body) = post(server.addr, "/connect", hook).await;
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            json!({"allow": true, "user": "u0"})
        );
        let (_, body) = post(server.addr, "/connect", hook).await;
        assert!(body.contains(r#""user":"u1""#), "{body}");
        let (_, body) = post(server.addr, "/subscribe", hook).await;
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), json!({"allow": true}));
        let message =
            r#"{"destination":"/app/echo","headers":{},"body":"hi","body_base64":null,"session":"s1"}"#;
        let (_, body) = post(server.addr, "/echo", message).await;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            json!({"reply": {"body": "hi"}})
        );
        let binary = r#"{"destination":"/app/echo","body":null,"body_base64":"AAE="}"#;
        let (_, body) = post(server.addr, "/echo", binary).await;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            json!({"reply": {"body_base64": "AAE="}})
        );
        let (status, _) = post(server.addr, "/echo", "not json").await;
        assert!(status.contains(" 400 "), "{status}");
        assert_eq!(server.calls(), AppCalls { connect: 2, subscribe: 1, echo: 2, rejected: 1 });
    }
}
