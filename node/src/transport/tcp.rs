//! STOMP over TCP (port 61613 by default): the byte stream is the frame stream. With TLS
//! configured, the stream is a TLS stream (stomp+ssl) and its handshake must finish within
//! `connect-timeout` of the accept, like the CONNECT that follows it.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;

use crate::metrics::Transport;
use crate::node::Node;
use crate::session::{self, Accepted, CloseReason, FrameSink};
use crate::transport::accept::{self, Incoming, Protocol};
use crate::transport::writer::Writer;
use crate::transport::{spawn_reader, ByteSource, ReadError, ReadLimits, Received};

/// Bytes read from the socket at a time while data keeps coming.
const READ_CHUNK: usize = 4096;
/// Room for a read when the client was quiet: what an idle connection holds.
const IDLE_READ: usize = 512;
/// Queued output past which `feed` writes before the batch's flush.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Accepts STOMP-over-TCP clients until the node starts draining.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    accept::serve(listener, node, Stomp).await
}

/// STOMP straight over the (plain or TLS) stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stomp;

impl Protocol for Stomp {
    const TRANSPORT: Transport = Transport::Tcp;

    /// Runs the session of a connection, or tells the client it cannot be served.
    async fn serve<S, R, W>(self, stream: S, split: impl FnOnce(S) -> (R, W) + Send, incoming: Incoming)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + Sync,
    {
        let Incoming { peer, node, admitted, deadline } = incoming;
        let (read, write) = split(stream);
        let mut sink = TcpSink::new(write).with_write_timeout(node.config().limits.write_timeout);
        let permit = match admitted {
            Ok(permit) => permit,
            Err(refusal) => {
                let _ =
                    tokio::time::timeout_at(deadline, session::refuse(&mut sink, &refusal.to_string())).await;
                return;
            }
        };
        let (negotiated_tx, negotiated_rx) = tokio::sync::oneshot::channel();
        let inbound = spawn_reader(TcpSource::new(read), ReadLimits::of(&node), negotiated_rx);
        let accepted = Accepted { transport: Transport::Tcp, peer, permit, deadline, bearer: None };
        session::run(node, sink, inbound, negotiated_tx, accepted).await;
    }
}

/// The reading half of a TCP connection. Reads a little while the client is quiet and a chunk
/// while data keeps coming; a buffer a burst grew is given up once the client is quiet again.
pub struct TcpSource<R> {
    reader: R,
    /// The last read filled the room it had: more is probably waiting.
    busy: bool,
}

impl<R> TcpSource<R> {
    pub fn new(reader: R) -> TcpSource<R> {
        TcpSource { reader, busy: false }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> ByteSource for TcpSource<R> {
    async fn read(&mut self, buf: &mut BytesMut) -> Result<Received, ReadError> {
        if !self.busy && buf.is_empty() && buf.try_reclaim(IDLE_READ + 1) {
            *buf = BytesMut::new();
        }
        buf.reserve(if self.busy { READ_CHUNK } else { IDLE_READ });
        let room = buf.capacity() - buf.len();
        let n = self.reader.read_buf(buf).await?;
        self.busy = n == room;
        Ok(if n == 0 { Received::Eof } else { Received::Data })
    }
}

/// The writing half of a TCP connection: frames are appended to one buffer and written with
/// one syscall per batch.
pub struct TcpSink<W> {
    out: Writer<W>,
}

impl<W: AsyncWrite + Unpin + Send> TcpSink<W> {
    pub fn new(writer: W) -> TcpSink<W> {
        TcpSink { out: Writer::new(writer, WRITE_HIGH_WATER) }
    }

    /// See [`Writer::with_write_timeout`].
    pub fn with_write_timeout(self, timeout: Option<std::time::Duration>) -> TcpSink<W> {
        TcpSink { out: self.out.with_write_timeout(timeout) }
    }
}

impl<W: AsyncWrite + Unpin + Send> FrameSink for TcpSink<W> {
    fn feed(&mut self, head: &[u8], tail: &[u8], _text: bool) -> bool {
        self.out.queue([head, tail, &[]])
    }

    fn reserve(&mut self, bytes: usize) {
        self.out.reserve(bytes);
    }

    async fn heartbeat(&mut self) -> io::Result<()> {
        self.out.buffer().extend_from_slice(b"\n");
        Ok(())
    }

    /// No pings reach a TCP session.
    async fn pong(&mut self, _payload: &[u8]) -> io::Result<()> {
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.out.flush().await
    }

    async fn close(&mut self, _reason: CloseReason) -> io::Result<()> {
        self.out.close().await
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::AsyncWriteExt;
    use tokio::sync::oneshot;

    use super::*;

    /// Bytes an idle connection's session task may hold for its own state (the future of
    /// [`session::run`]). Every connection pays this for its whole life, so the rare, large steps (CONNECT,
    /// SUBSCRIBE with a replay, a transaction's commit, the ERROR path) are boxed while they run
    /// instead of being laid out inline in every session (8,488 bytes before they were; 2,328 after).
    const SESSION_FUTURE_MAX: usize = 2560;

    #[tokio::test]
    async fn an_idle_session_is_small() {
        let node = crate::session::tests::node();
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("address");
        let permit = node.admit(peer).expect("admitted");
        let (_inbound_tx, inbound) = crate::session::link::inbound_channel();
        let (negotiated, _negotiated_rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now();
        let accepted = session::Accepted { transport: Transport::Tcp, peer, permit, deadline, bearer: None };
        let session = session::run(node, TcpSink::new(tokio::io::sink()), inbound, negotiated, accepted);
        let size = std::mem::size_of_val(&session);
        assert!(
            size <= SESSION_FUTURE_MAX,
            "the session future is {size} bytes (at most {SESSION_FUTURE_MAX})"
        );
    }

    #[tokio::test]
    async fn the_read_buffer_grows_for_a_burst_and_is_given_up_when_the_client_goes_quiet() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut source = TcpSource::new(server);
        client.write_all(&[b'x'; 20_000]).await.unwrap();
        let mut buf = BytesMut::new();
        let mut largest = 0;
        while buf.len() < 20_000 {
            assert!(matches!(source.read(&mut buf).await.unwrap(), Received::Data));
            largest = largest.max(buf.capacity());
        }
        assert!(largest > READ_CHUNK, "reads of a chunk during the burst ({largest})");
        buf.clear(); // the decoder took the frames
                     // A heart-beat: the read that takes it finds the client quiet; the next gives the
                     // burst's buffer up.
        for _ in 0..2 {
            client.write_all(b"\n").await.unwrap();
            source.read(&mut buf).await.unwrap();
            buf.clear();
        }
        client.write_all(b"\n").await.unwrap();
        source.read(&mut buf).await.unwrap();
        assert!(buf.capacity() <= IDLE_READ, "{} bytes held once quiet", buf.capacity());
    }
}
