//! `ws-baseline`: the smallest WebSocket broadcast server that does the job, as the ceiling of
//! this machine and stack (tokio, loopback TCP, WebSocket framing) for the fan-out the brokers
//! do. No STOMP, no routing beyond a group name, no acknowledgements.
//!
//! - `GET /ws/<group>` joins a group (`/ws` is the group ""); `?pub` joins as a publisher, which
//!   receives nothing.
//! - Every text or binary message a connection sends is framed once, as one shared buffer, and
//!   queued to every non-publisher member of its group, the sender included.
//! - Each member's writer task drains everything queued, copies it into one buffer and writes it
//!   with one `write_all`: batched writes, one syscall per batch.
//! - A member with more than [`MEMBER_QUEUE_LIMIT`] bytes queued misses messages (counted).
//!
//! The WebSocket handshake and framing are written by hand, so the write path is exactly "copy
//! shared bytes, write".

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Bytes queued for one member before it misses messages.
pub const MEMBER_QUEUE_LIMIT: usize = 8 << 20;

/// Largest client message accepted.
const MAX_MESSAGE: usize = 16 << 20;

/// Largest batch one write carries.
const WRITE_BATCH: usize = 256 * 1024;

/// Largest HTTP upgrade request.
const MAX_REQUEST: usize = 8 * 1024;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

struct Member {
    id: u64,
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Group {
    members: RwLock<Vec<Member>>,
}

/// The server's shared state.
#[derive(Default)]
pub struct Baseline {
    groups: Mutex<HashMap<String, Arc<Group>>>,
    next_id: AtomicU64,
    pub connections: AtomicU64,
    pub broadcasts: AtomicU64,
    pub dropped: AtomicU64,
}

impl Baseline {
    fn group(&self, name: &str) -> Arc<Group> {
        self.groups.lock().expect("groups").entry(name.to_owned()).or_default().clone()
    }

    fn leave(&self, name: &str, group: &Arc<Group>, id: u64) {
        let mut groups = self.groups.lock().expect("groups");
        let mut members = group.members.write().expect("members");
        members.retain(|m| m.id != id);
        if members.is_empty() && groups.get(name).is_some_and(|g| Arc::ptr_eq(g, group)) {
            groups.remove(name);
        }
    }

    fn broadcast(&self, group: &Group, frame: Bytes) {
        let members = group.members.read().expect("members");
        let mut dropped = 0;
        for member in members.iter() {
            let before = member.queued.fetch_add(frame.len(), Ordering::AcqRel);
            if before + frame.len() > MEMBER_QUEUE_LIMIT || member.tx.send(frame.clone()).is_err() {
                member.queued.fetch_sub(frame.len(), Ordering::AcqRel);
                dropped += 1;
            }
        }
        drop(members);
        self.broadcasts.fetch_add(1, Ordering::Relaxed);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }
}

/// Accepts connections forever.
pub async fn serve(listener: TcpListener, state: Arc<Baseline>) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = connection(stream, state).await;
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The path and query of an upgrade request, its key and the first subprotocol it offers.
#[derive(Debug, PartialEq, Eq)]
struct Upgrade {
    path: String,
    query: String,
    key: String,
    protocol: Option<String>,
}

fn parse_upgrade(request: &[u8]) -> Option<Upgrade> {
    let text = std::str::from_utf8(request).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    if first.next()? != "GET" {
        return None;
    }
    let target = first.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (mut key, mut protocol) = (None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            protocol = value.split(',').next().map(|p| p.trim().to_owned());
        }
    }
    Some(Upgrade { path: path.to_owned(), query: query.to_owned(), key: key?, protocol })
}

async fn read_request(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        request.extend_from_slice(&chunk[..n]);
        if request.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(request);
        }
        if request.len() > MAX_REQUEST {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request too large"));
        }
    }
}

async fn connection(mut stream: TcpStream, state: Arc<Baseline>) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let request = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_request(&mut stream))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let upgrade = parse_upgrade(&request);
    let group_name = upgrade.as_ref().and_then(|u| match u.path.as_str() {
        "/ws" | "/ws/" => Some(String::new()),
        path => path.strip_prefix("/ws/").map(str::to_owned),
    });
    let (Some(upgrade), Some(group_name)) = (upgrade, group_name) else {
        stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await?;
        return Ok(());
    };
    let publisher = upgrade.query.split('&').any(|p| p == "pub");
    let group = state.group(&group_name);
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    // Join before answering, so the client's first message after the handshake already
    // reaches everyone who joined before it.
    let writer = if publisher {
        None
    } else {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        group.members.write().expect("members").push(Member { id, tx, queued: queued.clone() });
        Some((rx, queued))
    };
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {}\r\n",
        derive_accept_key(upgrade.key.as_bytes())
    );
    if let Some(protocol) = &upgrade.protocol {
        response.push_str(&format!("sec-websocket-protocol: {protocol}\r\n"));
    }
    response.push_str("\r\n");
    if let Err(e) = stream.write_all(response.as_bytes()).await {
        state.leave(&group_name, &group, id);
        return Err(e);
    }
    state.connections.fetch_add(1, Ordering::Relaxed);
    let (read, write) = stream.into_split();
    // A publisher's write half is kept (never written): dropping it would shut the socket down.
    let (writer, _idle_write) = match writer {
        Some((rx, queued)) => (Some(tokio::spawn(write_loop(write, rx, queued))), None),
        None => (None, Some(write)),
    };
    let result = read_loop(read, &state, &group).await;
    if let Some(writer) = writer {
        writer.abort();
    }
    state.leave(&group_name, &group, id);
    state.connections.fetch_sub(1, Ordering::Relaxed);
    result
}

/// Reads client frames (masked), and broadcasts each complete data message, framed once.
async fn read_loop(mut read: OwnedReadHalf, state: &Baseline, group: &Group) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(512);
    let mut message = BytesMut::new();
    let mut opcode = 0x1;
    loop {
        while let Some(frame) = parse_client_frame(&mut buf)? {
            match frame.opcode {
                0x0..=0x2 => {
                    if frame.opcode != 0x0 {
                        opcode = frame.opcode;
                    }
                    if frame.fin && message.is_empty() {
                        state.broadcast(group, encode_frame(opcode, &frame.payload));
                    } else {
                        message.extend_from_slice(&frame.payload);
                        if message.len() > MAX_MESSAGE {
                            return Err(io::Error::new(io::ErrorKind::InvalidData, "message too large"));
                        }
                        if frame.fin {
                            state.broadcast(group, encode_frame(opcode, &message));
                            message.clear();
                        }
                    }
                }
                0x8 => return Ok(()),
                _ => {} // ping, pong: nothing to do for a benchmark client
            }
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(4096);
        }
        if read.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
) {
    let mut out = BytesMut::new();
    while let Some(first) = rx.recv().await {
        out.clear();
        out.extend_from_slice(&first);
        let mut taken = first.len();
        while out.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(frame) => {
                    taken += frame.len();
                    out.extend_from_slice(&frame);
                }
                Err(_) => break,
            }
        }
        queued.fetch_sub(taken, Ordering::AcqRel);
        if write.write_all(&out).await.is_err() {
            return;
        }
        if out.capacity() > 4 * WRITE_BATCH {
            out = BytesMut::new();
        }
    }
}

#[derive(Debug)]
struct ClientFrame {
    fin: bool,
    opcode: u8,
    payload: BytesMut,
}

/// Takes one complete client frame off `buf` and unmasks it.
fn parse_client_frame(buf: &mut BytesMut) -> io::Result<Option<ClientFrame>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")), 10),
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > MAX_MESSAGE as u64 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too large"));
    }
    let len = len as usize;
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(mask)
    } else {
        None
    };
    if buf.len() < at + len {
        return Ok(None);
    }
    buf.advance(at);
    let mut payload = buf.split_to(len);
    if let Some(mask) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
    }
    Ok(Some(ClientFrame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, payload }))
}

/// A server frame (unmasked, FIN), header and payload in one buffer.
pub fn encode_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.extend_from_slice(payload);
    out.freeze()
}

/// Binds and serves on `addr` until the process ends.
pub async fn run(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("ws-baseline listening on ws://{}/ws", listener.local_addr()?);
    serve(listener, Arc::new(Baseline::default())).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_upgrade_request() {
        let request =
            b"GET /ws/room?pub HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                        Sec-WebSocket-Protocol: v12.stomp, v11.stomp\r\n\r\n";
        let upgrade = parse_upgrade(request).unwrap();
        assert_eq!(upgrade.path, "/ws/room");
        assert_eq!(upgrade.query, "pub");
        assert_eq!(upgrade.protocol.as_deref(), Some("v12.stomp"));
        assert_eq!(derive_accept_key(upgrade.key.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn unmasks_client_frames_and_frames_server_messages() {
        let mask = [1u8, 2, 3, 4];
        let payload = b"hello";
        let mut buf = BytesMut::new();
        buf.put_u8(0x81);
        buf.put_u8(0x80 | payload.len() as u8);
        buf.extend_from_slice(&mask);
        buf.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        let frame = parse_client_frame(&mut buf).unwrap().unwrap();
        assert!(frame.fin);
        assert_eq!(frame.opcode, 1);
        assert_eq!(&frame.payload[..], payload);
        assert!(buf.is_empty());
        assert_eq!(&encode_frame(1, b"hi")[..], b"\x81\x02hi");
        assert_eq!(encode_frame(2, &[0; 300])[..4], [0x82, 126, 1, 44]);
    }
}
