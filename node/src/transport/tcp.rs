//! STOMP over plain TCP (port 61613 by default): the byte stream is the frame stream.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::session::{self, Context};
use crate::transport::{spawn_reader, ByteSource, CloseReason, FrameSink, Read};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 4096;
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
    let _ = stream.set_nodelay(true);
    let Some(permit) = ctx.admit(peer) else {
        let mut sink = TcpSink::new(stream);
        let _ = session::refuse(&mut sink, "too many connections").await;
        return;
    };
    let (read, write) = stream.into_split();
    let (negotiated_tx, negotiated_rx) = tokio::sync::oneshot::channel();
    let inbound = spawn_reader(TcpSource(read), ctx.codec_limits(), negotiated_rx);
    session::run(ctx, "tcp", TcpSink::new(write), inbound, negotiated_tx, peer, permit).await;
}

/// The reading half of a TCP connection.
pub struct TcpSource<R>(pub R);

impl<R: AsyncRead + Unpin + Send + 'static> ByteSource for TcpSource<R> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<Read> {
        buf.reserve(READ_CHUNK);
        match self.0.read_buf(buf).await? {
            0 => Ok(Read::Eof),
            _ => Ok(Read::Data),
        }
    }
}

/// The writing half of a TCP connection: frames are appended to one buffer and written with
/// one syscall per batch.
pub struct TcpSink<W> {
    writer: W,
    out: BytesMut,
}

impl<W: AsyncWrite + Unpin + Send> TcpSink<W> {
    pub fn new(writer: W) -> TcpSink<W> {
        TcpSink { writer, out: BytesMut::new() }
    }
}

impl<W: AsyncWrite + Unpin + Send> FrameSink for TcpSink<W> {
    async fn feed(&mut self, head: &[u8], tail: &[u8], _text: bool) -> io::Result<()> {
        self.out.extend_from_slice(head);
        self.out.extend_from_slice(tail);
        if self.out.len() >= WRITE_HIGH_WATER {
            self.flush().await?;
        }
        Ok(())
    }

    async fn heartbeat(&mut self) -> io::Result<()> {
        self.out.extend_from_slice(b"\n");
        Ok(())
    }

    /// Cancellation-safe: bytes leave `out` as they are written, so a flush interrupted (a slow
    /// consumer cut off mid-write) never writes the same bytes twice.
    async fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let n = self.writer.write(&self.out).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.out.advance(n);
        }
        if self.out.capacity() > WRITE_HIGH_WATER {
            // A burst is over: do not keep its buffer for an idle connection.
            self.out = BytesMut::new();
        }
        self.writer.flush().await
    }

    async fn close(&mut self, _reason: CloseReason) -> io::Result<()> {
        self.flush().await?;
        self.writer.shutdown().await
    }
}
