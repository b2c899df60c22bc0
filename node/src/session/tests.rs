//! What the session costs an idle connection.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::{run, Accepted, Context};
use crate::config::Config;
use crate::engine::memory::MemoryEngine;
use crate::engine::AnyEngine;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::transport::tcp::TcpSink;

/// Bytes an idle connection's session task may hold for its own state (the future of
/// [`run`]). Every connection pays this for its whole life, so the rare, large steps (CONNECT,
/// SUBSCRIBE with a replay, a transaction's commit, the ERROR path) are boxed while they run
/// instead of being laid out inline in every session (8,488 bytes before they were; 2,328 after).
const SESSION_FUTURE_MAX: usize = 2560;

/// A context on the embedded engine with the default configuration, for tests of one part.
pub(crate) fn context() -> Arc<Context> {
    let config = Arc::new(Config::default());
    let metrics = Arc::new(Metrics::new());
    let hub =
        Hub::new(AnyEngine::Memory(MemoryEngine::new(config.clone(), metrics.clone())), metrics.clone());
    // The sender goes: this node never drains.
    let (_draining, drain_rx) = watch::channel(false);
    Arc::new(Context::new(config, hub, metrics, drain_rx))
}

#[tokio::test]
async fn an_idle_session_is_small() {
    let ctx = context();
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("address");
    let permit = ctx.admit(peer).expect("admitted");
    let (_inbound_tx, inbound) = crate::transport::InboundReceiver::detached();
    let (negotiated, _negotiated_rx) = oneshot::channel();
    let deadline = tokio::time::Instant::now();
    let accepted = Accepted { transport: "tcp", peer, permit, deadline, bearer: None };
    let session = run(ctx, TcpSink::new(tokio::io::sink()), inbound, negotiated, accepted);
    let size = std::mem::size_of_val(&session);
    assert!(size <= SESSION_FUTURE_MAX, "the session future is {size} bytes (at most {SESSION_FUTURE_MAX})");
}
