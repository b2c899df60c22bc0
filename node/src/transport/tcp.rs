//! STOMP over TCP (port 61613 by default): the byte stream is the frame stream. With TLS
//! configured, the stream is a TLS stream (stomp+ssl) and its handshake must finish within
//! `connect-timeout` of the accept, like the CONNECT that follows it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::session::{self, Accepted, Context, Permit, Refusal};
use crate::transport::writer::Writer;
use crate::transport::{spawn_reader, ByteSource, CloseReason, FrameSink, Read};

/// Bytes read from the socket at a time while data keeps coming.
const READ_CHUNK: usize = 4096;
/// Room for a read when the client was quiet: what an idle connection holds.
const IDLE_READ: usize = 512;
/// Queued output past which `feed` writes before the batch's flush.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Accepts STOMP-over-TCP clients until the node starts draining.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    let mut draining = ctx.draining();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = draining.wait_for(|d| *d) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move { connection(stream, peer, ctx).await });
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, ctx: Arc<Context>) {
    let deadline = Instant::now() + ctx.config().limits.connect_timeout;
    let _ = stream.set_nodelay(true);
    let admitted = ctx.admit(peer);
    match ctx.tls().cloned() {
        None => {
            let (read, write) = stream.into_split();
            stomp(read, write, peer, ctx, admitted, deadline).await;
        }
        // Boxed: a TLS stream is large, and laid out inline it would size every connection's
        // future, plain ones included.
        Some(tls) => {
            Box::pin(async move {
                match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let (read, write) = tokio::io::split(stream);
                        stomp(read, write, peer, ctx, admitted, deadline).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            })
            .await
        }
    }
}

/// Runs the session of a connection, or tells the client it cannot be served.
async fn stomp<R, W>(
    read: R,
    write: W,
    peer: SocketAddr,
    ctx: Arc<Context>,
    admitted: Result<Permit, Refusal>,
    deadline: Instant,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send,
{
    let mut sink = TcpSink::new(write).with_write_timeout(ctx.config().limits.write_timeout);
    let permit = match admitted {
        Ok(permit) => permit,
        Err(refusal) => {
            let _ = tokio::time::timeout_at(deadline, session::refuse(&mut sink, &refusal.to_string())).await;
            return;
        }
    };
    let (negotiated_tx, negotiated_rx) = tokio::sync::oneshot::channel();
    let inbound = spawn_reader(TcpSource::new(read), ctx.read_limits(), negotiated_rx);
    let accepted = Accepted { transport: "tcp", peer, permit, deadline, bearer: None };
    session::run(ctx, sink, inbound, negotiated_tx, accepted).await;
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
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<Read> {
        if !self.busy && buf.is_empty() && buf.try_reclaim(IDLE_READ + 1) {
            *buf = BytesMut::new();
        }
        buf.reserve(if self.busy { READ_CHUNK } else { IDLE_READ });
        let room = buf.capacity() - buf.len();
        let n = self.reader.read_buf(buf).await?;
        self.busy = n == room;
        Ok(if n == 0 { Read::Eof } else { Read::Data })
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
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn the_read_buffer_grows_for_a_burst_and_is_given_up_when_the_client_goes_quiet() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut source = TcpSource::new(server);
        client.write_all(&[b'x'; 20_000]).await.unwrap();
        let mut buf = BytesMut::new();
        let mut largest = 0;
        while buf.len() < 20_000 {
            assert!(matches!(source.read(&mut buf).await.unwrap(), Read::Data));
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
