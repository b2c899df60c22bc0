//! What the session writes when, over a sink that records each write; and [`node`], a node on
//! the embedded engine for the unit tests of any part.

use std::net::SocketAddr;
use std::sync::Arc;

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use super::link::inbound_channel;
use super::{run, Accepted, CloseReason, FrameSink, Inbound};
use crate::config::Config;
use crate::engine::memory::MemoryEngine;
use crate::engine::AnyEngine;
use crate::hub::Hub;
use crate::metrics::{Metrics, Transport};
use crate::node::{Drain, Node};
use crate::stomp::{Command, Frame};

/// A node on the embedded engine with the default configuration, for tests of one part.
pub(crate) fn node() -> Arc<Node> {
    let config = Arc::new(Config::default());
    let metrics = Arc::new(Metrics::new());
    let hub =
        Hub::new(AnyEngine::Memory(MemoryEngine::new(config.clone(), metrics.clone())), metrics.clone());
    // The switch goes: this node never drains.
    let (_switch, drain) = Drain::new();
    Arc::new(Node::new(config, hub, metrics, drain))
}

/// A sink that keeps what each flush sent: one entry per socket write a real transport makes.
#[derive(Clone, Default)]
struct Writes {
    flushed: Arc<Mutex<Vec<Vec<u8>>>>,
    pending: Vec<u8>,
}

impl Writes {
    /// The commands of the frames each write carried (heart-beats left out).
    fn commands(&self) -> Vec<Vec<String>> {
        let flushed = self.flushed.lock().expect("writes");
        flushed
            .iter()
            .map(|write| {
                write
                    .split(|b| *b == 0)
                    .filter_map(|frame| {
                        let text = String::from_utf8_lossy(frame);
                        text.trim_start_matches(['\r', '\n']).lines().next().map(str::to_owned)
                    })
                    .filter(|command| !command.is_empty())
                    .collect()
            })
            .collect()
    }
}

impl FrameSink for Writes {
    fn feed(&mut self, head: &[u8], tail: &[u8], _text: bool) -> bool {
        self.pending.extend_from_slice(head);
        self.pending.extend_from_slice(tail);
        false
    }
    fn reserve(&mut self, _bytes: usize) {}
    async fn heartbeat(&mut self) -> std::io::Result<()> {
        self.pending.push(b'\n');
        Ok(())
    }
    async fn pong(&mut self, _payload: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let write = std::mem::take(&mut self.pending);
            self.flushed.lock().expect("writes").push(write);
        }
        Ok(())
    }
    async fn close(&mut self, _reason: CloseReason) -> std::io::Result<()> {
        self.flush().await
    }
}

/// Runs a session over `frames`, all queued before it starts (as a reader that read them in one
/// go would have them), and returns its writes.
async fn session_writes(frames: Vec<Frame>) -> Writes {
    let node = node();
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("address");
    let permit = node.admit(peer).expect("admitted");
    let (mut reader, inbound) = inbound_channel();
    for frame in frames {
        reader.events.try_send(Inbound::Frame(Box::new(frame))).expect("room in the inbound queue");
    }
    let (negotiated, _negotiated_rx) = oneshot::channel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let accepted = Accepted { transport: Transport::Tcp, peer, permit, deadline, bearer: None };
    let writes = Writes::default();
    let session = run(node, writes.clone(), inbound, negotiated, accepted);
    tokio::time::timeout(Duration::from_secs(10), session).await.expect("the session ends at DISCONNECT");
    writes
}

fn connect() -> Frame {
    Frame::new(Command::Connect).with_header("accept-version", "1.2").with_header("host", "/")
}

fn send(destination: &str, body: &'static str) -> Frame {
    Frame::new(Command::Send).with_header("destination", destination).with_body(body)
}

#[tokio::test]
async fn sends_read_together_have_their_deliveries_written_together() {
    let mut frames = vec![
        connect(),
        Frame::new(Command::Subscribe)
            .with_header("destination", "/topic/t")
            .with_header("id", "0")
            .with_header("receipt", "subscribed"),
    ];
    frames.extend((0..10).map(|_| send("/topic/t", "x")));
    frames.push(Frame::new(Command::Disconnect).with_header("receipt", "bye"));
    let writes = session_writes(frames).await.commands();
    // CONNECTED; the SUBSCRIBE's RECEIPT; the ten MESSAGEs in one write, not one write each;
    // and the DISCONNECT's RECEIPT after them.
    let messages: Vec<&Vec<String>> = writes.iter().filter(|w| w.iter().any(|c| c == "MESSAGE")).collect();
    assert_eq!(messages.len(), 1, "the deliveries of ten queued SENDs took these writes: {writes:?}");
    assert_eq!(messages[0].iter().filter(|c| *c == "MESSAGE").count(), 10, "{writes:?}");
    let flat: Vec<&String> = writes.iter().flatten().collect();
    assert_eq!(flat.first().map(|c| c.as_str()), Some("CONNECTED"), "{writes:?}");
    assert_eq!(flat[1], "RECEIPT", "{writes:?}");
    assert_eq!(flat.last().map(|c| c.as_str()), Some("RECEIPT"), "{writes:?}");
    assert_eq!(flat.len(), 13, "{writes:?}");
}

#[tokio::test]
async fn a_failing_frame_in_a_run_comes_after_the_deliveries_before_it() {
    let frames = vec![
        connect(),
        Frame::new(Command::Subscribe).with_header("destination", "/topic/t").with_header("id", "0"),
        send("/topic/t", "one"),
        send("/topic/t", "two"),
        // No such destination prefix: the session answers with ERROR and closes.
        send("/nowhere/t", "three"),
        send("/topic/t", "four"),
    ];
    let writes = session_writes(frames).await.commands();
    let flat: Vec<&str> = writes.iter().flatten().map(String::as_str).collect();
    assert_eq!(flat, ["CONNECTED", "MESSAGE", "MESSAGE", "ERROR"], "{writes:?}");
}

/// Each kind of refusal closes with its own reason, so a WebSocket client's close event says
/// which it was.
#[test]
fn refusals_close_with_their_own_reason() {
    use super::SessionError;
    use crate::auth::AuthError;
    use crate::stomp::ProtocolError;
    let forbidden = AuthError::Forbidden { action: "publish to", destination: "/topic/a".into() };
    for (error, reason) in [
        (SessionError::Auth(AuthError::BadPassword), CloseReason::AuthenticationFailed),
        (SessionError::Auth(AuthError::Required), CloseReason::AuthenticationFailed),
        (SessionError::Auth(AuthError::BadToken("bad".into())), CloseReason::AuthenticationFailed),
        (SessionError::Auth(AuthError::Expired), CloseReason::TokenExpired),
        (SessionError::Auth(forbidden), CloseReason::PermissionDenied),
        (SessionError::SlowConsumer, CloseReason::SlowConsumer),
        (SessionError::limit("frame rate exceeded"), CloseReason::Limit),
        (SessionError::TooLarge("WebSocket message refused".into()), CloseReason::TooBig),
        (SessionError::Protocol(ProtocolError::BodyTooLarge { max: 1 }), CloseReason::TooBig),
        (SessionError::Protocol(ProtocolError::MissingColon), CloseReason::StompError),
        (SessionError::invalid("no body here"), CloseReason::StompError),
        (SessionError::HeartbeatTimeout, CloseReason::Normal),
        (SessionError::ShuttingDown, CloseReason::Restart),
    ] {
        assert_eq!(error.close_reason(), reason, "{error}");
    }
    assert_eq!(CloseReason::PermissionDenied.code(), 1008);
    assert_eq!(CloseReason::PermissionDenied.text(), "permission denied");
    assert_eq!((CloseReason::Echo(4000).code(), CloseReason::Echo(4000).text()), (4000, ""));
}
