//! The one accept loop both client listeners run. Each accepted connection takes its place in
//! the node's connection limits (before any handshake, so a client that never finishes one still
//! counts), gets TCP_NODELAY, finishes its TLS handshake within `connect-timeout` when TLS is
//! configured, and is then handed to its [`Protocol`]: STOMP straight over the stream (`tcp.rs`)
//! or the WebSocket handshake first (`ws.rs`). A TLS handshake that fails or does not finish in
//! time is logged through the node's rate limit on refusals ([`crate::logs::Refusals`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::logs::Refused;
use crate::node::{Node, Permit, Refusal};

/// How long the loop pauses after a failed accept (out of file descriptors, say) before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// An accepted connection, as its protocol gets it.
pub(crate) struct Incoming {
    pub(crate) peer: SocketAddr,
    pub(crate) node: Arc<Node>,
    /// Its place in the node's connection limits, or which limit refused it: a refusal is the
    /// protocol's to tell the client about (an ERROR frame, an HTTP 503 or 429).
    pub(crate) admitted: Result<Permit, Refusal>,
    /// `connect-timeout` after the accept: handshakes and CONNECT must be done by then.
    pub(crate) deadline: Instant,
}

/// What a listener speaks over an accepted stream.
pub(crate) trait Protocol: Clone + Send + Sync + 'static {
    /// Serves one connection to its end. `stream` is plain or TLS with its handshake done;
    /// `split` parts it into the reading and the writing half.
    fn serve<S, R, W>(
        self,
        stream: S,
        split: impl FnOnce(S) -> (R, W) + Send,
        incoming: Incoming,
    ) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + Sync;
}

/// Accepts clients until the node starts draining, each on a task of its own.
pub(crate) async fn serve<P: Protocol>(listener: TcpListener, node: Arc<Node>, protocol: P) {
    let mut drain = node.drain();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.wait() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let node = node.clone();
                tokio::spawn(connection(stream, peer, node, protocol.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// One accepted connection, from its admission to its end.
pub(crate) async fn connection<P: Protocol>(
    stream: TcpStream,
    peer: SocketAddr,
    node: Arc<Node>,
    protocol: P,
) {
    let deadline = Instant::now() + node.config().limits.connect_timeout;
    let _ = stream.set_nodelay(true);
    // Taken before the handshakes, so a client that never finishes them still counts.
    let admitted = node.admit(peer);
    let tls = node.tls();
    let incoming = Incoming { peer, node, admitted, deadline };
    match tls {
        None => protocol.serve(stream, TcpStream::into_split, incoming).await,
        // Boxed: a TLS stream is large, and laid out inline it would size every connection's
        // future, plain ones included.
        Some(tls) => {
            Box::pin(async move {
                match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
                    Ok(Ok(stream)) => protocol.serve(stream, tokio::io::split, incoming).await,
                    Ok(Err(error)) => {
                        let why = format!("TLS handshake failed: {error}");
                        incoming.node.refusals().log(Refused::Tls, peer, &why)
                    }
                    Err(_) => incoming.node.refusals().log(
                        Refused::ConnectTimeout,
                        peer,
                        &"TLS handshake not done within connect-timeout",
                    ),
                }
            })
            .await
        }
    }
}
