//! The one accept loop both client listeners run. Each accepted connection takes its place in
//! the node's connection limits (before any handshake, so a client that never finishes one still
//! counts), gets TCP_NODELAY, finishes its TLS handshake within `connect-timeout` when TLS is
//! configured, and is then handed to its [`Protocol`]: STOMP straight over the stream (`tcp.rs`)
//! or the WebSocket handshake first (`ws.rs`).
//!
//! Every refusal before a session starts is counted by reason
//! (`stampede_connections_refused_total`) and logged through [`refused`], a line per reason every
//! few seconds at most. The connection's bytes are counted on the way by [`Counted`].

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::metrics::{RefusalReason, Transport};
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
    /// The transport its connections are counted under.
    const TRANSPORT: Transport;

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
    if let Err(refusal) = &admitted {
        let reason = match refusal {
            Refusal::NodeFull(_) => RefusalReason::NodeFull,
            Refusal::AddressFull(..) => RefusalReason::AddressFull,
        };
        refused(&node, peer, reason, refusal);
    }
    let (received, sent) = node.metrics().byte_counters(P::TRANSPORT);
    let stream = Counted { io: stream, received, sent };
    let tls = node.tls();
    let incoming = Incoming { peer, node, admitted, deadline };
    match tls {
        // Split into owned halves (nothing locked per read or write), each still counted.
        None => protocol.serve(stream, Counted::into_split, incoming).await,
        // Boxed: a TLS stream is large, and laid out inline it would size every connection's
        // future, plain ones included.
        Some(tls) => {
            Box::pin(async move {
                // Counted below TLS: the bytes on the wire.
                match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
                    Ok(Ok(stream)) => protocol.serve(stream, tokio::io::split, incoming).await,
                    Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                        tracing::debug!(%peer, %error, "closed during the TLS handshake");
                    }
                    // A refused admission was counted when it was decided.
                    _ if incoming.admitted.is_err() => {}
                    Ok(Err(error)) => refused(&incoming.node, peer, RefusalReason::Tls, &error),
                    Err(_) => {
                        refused(&incoming.node, peer, RefusalReason::Timeout, &"TLS handshake timed out")
                    }
                }
            })
            .await
        }
    }
}

/// Counts a connection refused before its session started and logs it, unless a line for
/// the same reason was logged a moment ago (the next line says how many went unlogged).
/// Refusals for the node's limits are warnings (the node is at capacity); the others are a
/// client's doing.
pub(crate) fn refused(node: &Node, peer: SocketAddr, reason: RefusalReason, why: &dyn fmt::Display) {
    let Some(unlogged) = node.metrics().connection_refused(reason) else { return };
    let label = reason.as_str();
    match reason {
        RefusalReason::NodeFull | RefusalReason::AddressFull => {
            tracing::warn!(%peer, reason = label, %why, unlogged, "connection refused");
        }
        _ => tracing::info!(%peer, reason = label, %why, unlogged, "connection refused"),
    }
}

/// A connection's stream, or one half of it, adding the bytes it reads and writes to its
/// transport's counters: one relaxed atomic add per read or write that moved bytes.
pub(crate) struct Counted<S> {
    io: S,
    received: Counter,
    sent: Counter,
}

impl Counted<TcpStream> {
    fn into_split(self) -> (Counted<OwnedReadHalf>, Counted<OwnedWriteHalf>) {
        let (read, write) = self.io.into_split();
        let read = Counted { io: read, received: self.received.clone(), sent: self.sent.clone() };
        (read, Counted { io: write, received: self.received, sent: self.sent })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.received.inc_by(n as u64);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.sent.inc_by(n as u64);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.sent.inc_by(n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
