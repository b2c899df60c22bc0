//! SockJS sessions over HTTP: the state one STOMP session shares with the HTTP requests that
//! carry it, and the table of them on this node.
//!
//! A session is opened by its first receiving request (`xhr`, `xhr_streaming`, `eventsource`,
//! `htmlfile`, `jsonp`) and runs the same [`session::run`] as a WebSocket or TCP connection, over
//! two ends of its own:
//! - [`HttpSink`], its writing half: frames become JSON strings queued in [`Shared`]'s
//!   `pending`, bounded by `outbound-buffer`: a flush waits (at most `write-timeout`) while a
//!   client that does not poll leaves that much unread, as a socket write waits on a full socket,
//!   so the slow-consumer policy applies unchanged;
//! - [`ChannelSource`], its reading half: the STOMP bytes of `xhr_send`/`jsonp_send` bodies,
//!   over a bounded channel (a sender waits while the session has not taken the last ones).
//!
//! At most one receiving request is attached at a time ([`Receiver`]); another gets
//! `c[2010,"Another connection still open"]`. A session with no receiving request for
//! `sockjs-disconnect-delay` is over: its reader sees the end of input and the STOMP session
//! ends as for a closed socket. A session that ended keeps answering its close frame for that
//! long, then is forgotten ([`Sessions::reap`]).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_channel::mpsc;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::json;
use crate::session::{CloseReason, FrameSink};
use crate::transport::{ByteSource, ReadError, Received};

/// Client payloads queued for a session's reader at most; a sender waits beyond.
const INBOUND_PAYLOADS: usize = 16;

/// How a session ended, as its close frame says: `c[code,"reason"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Close {
    pub(super) code: u16,
    pub(super) reason: &'static str,
}

impl Close {
    pub(super) const ANOTHER_CONNECTION: Close =
        Close { code: 2010, reason: "Another connection still open" };

    /// The close frame of a session that ended for `reason`: the WebSocket close code and
    /// reason, but SockJS's own "Go away!" for a normal end.
    pub(super) fn of(reason: CloseReason) -> Close {
        match reason {
            CloseReason::Normal => Close { code: 3000, reason: "Go away!" },
            reason => Close { code: reason.code(), reason: reason.text() },
        }
    }

    /// The frame: `c[3000,"Go away!"]`.
    pub(super) fn frame(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(16 + self.reason.len());
        out.extend_from_slice(format!("c[{},", self.code).as_bytes());
        json::put_string(&mut out, self.reason);
        out.extend_from_slice(b"]");
        out
    }
}

/// What one session's STOMP side and its HTTP requests share.
pub(super) struct Shared {
    state: Mutex<State>,
    /// Woken when frames or the close frame wait for a receiver.
    ready: Notify,
    /// Woken when a receiver took the pending frames: a sink waiting for room goes on.
    taken: Notify,
}

struct State {
    /// Frames not yet sent, as JSON strings separated by commas (an `a[...]` frame's inside).
    pending: BytesMut,
    /// The session's close, once it has ended.
    close: Option<Close>,
    /// When the session ended: it is forgotten `sockjs-disconnect-delay` after.
    ended: Option<Instant>,
    /// A receiving request is attached.
    receiving: bool,
    /// When the last receiving request left (or the session opened).
    unattended_since: Instant,
    /// Client payloads to the reader (or why the client's input ends); `None` once the
    /// session timed out or ended.
    inbound: Option<mpsc::Sender<Result<Bytes, ReadError>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a client payload (STOMP bytes) to the session's reader; false when the session is
    /// over. Waits while the reader has not taken the earlier ones.
    pub(super) async fn send(&self, payload: Bytes) -> bool {
        let Some(mut inbound) = self.lock().inbound.clone() else { return false };
        payload.is_empty() || inbound.send(Ok(payload)).await.is_ok()
    }

    /// Ends the client's input with `error` (a send over the size limit): the reader reports
    /// it, and the session answers with an ERROR frame saying why, as on any transport.
    pub(super) async fn fail(&self, error: ReadError) {
        let inbound = self.lock().inbound.take();
        if let Some(mut inbound) = inbound {
            let _ = inbound.send(Err(error)).await;
        }
    }

    /// True while the session runs (its reader takes payloads).
    pub(super) fn is_open(&self) -> bool {
        let state = self.lock();
        state.inbound.is_some() && state.close.is_none()
    }
}

/// What a receiving request is given next.
#[derive(Debug)]
pub(super) enum Next {
    /// Frames: the inside of `a[...]`.
    Frames(BytesMut),
    /// The session has ended: send its close frame, then end the response.
    Close(Close),
    /// Nothing for a heart-beat interval.
    Heartbeat,
}

/// A receiving request, attached to its session until dropped.
pub(super) struct Receiver {
    shared: Arc<Shared>,
}

impl Receiver {
    /// Attaches a receiving request, unless another is attached (`Err` with the close frame
    /// to answer) or the session has ended with nothing left to send (`Err` with its close).
    pub(super) fn attach(shared: &Arc<Shared>) -> Result<Receiver, Close> {
        let mut state = shared.lock();
        if let (Some(close), true) = (&state.close, state.pending.is_empty()) {
            return Err(close.clone());
        }
        if state.receiving {
            return Err(Close::ANOTHER_CONNECTION);
        }
        state.receiving = true;
        Ok(Receiver { shared: shared.clone() })
    }

    /// Waits for frames or the close, at most `heartbeat`.
    pub(super) async fn next(&mut self, heartbeat: Duration) -> Next {
        let deadline = Instant::now() + heartbeat;
        loop {
            let ready = self.shared.ready.notified();
            {
                let mut state = self.shared.lock();
                if !state.pending.is_empty() {
                    let frames = std::mem::take(&mut state.pending);
                    drop(state);
                    self.shared.taken.notify_one();
                    return Next::Frames(frames);
                }
                if let Some(close) = &state.close {
                    return Next::Close(close.clone());
                }
            }
            if tokio::time::timeout_at(deadline, ready).await.is_err() {
                return Next::Heartbeat;
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiving = false;
        state.unattended_since = Instant::now();
    }
}

/// The SockJS sessions of this node, by session id.
#[derive(Default)]
pub(crate) struct Sessions {
    table: Mutex<HashMap<Box<str>, Arc<Shared>>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("open", &self.lock().len()).finish()
    }
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Arc<Shared>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, id: &str) -> Option<Arc<Shared>> {
        self.lock().get(id).cloned()
    }

    /// The session `id`, or a new one made by `open` (given the new session's two ends) if
    /// there is none; `Ok((session, true))` when it is new. `open` runs outside the table's lock.
    pub(super) fn get_or_open<E>(
        &self,
        id: &str,
        open: impl FnOnce(HttpSink, ChannelSource) -> Result<(), E>,
        outbound_limit: usize,
        write_timeout: Option<Duration>,
    ) -> Result<(Arc<Shared>, bool), E> {
        if let Some(shared) = self.get(id) {
            return Ok((shared, false));
        }
        // A futures channel, not tokio's: it allocates per payload, not a block of slots up
        // front that every idle session would hold.
        let (inbound, payloads) = mpsc::channel(INBOUND_PAYLOADS);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: BytesMut::new(),
                close: None,
                ended: None,
                receiving: false,
                unattended_since: Instant::now(),
                inbound: Some(inbound),
            }),
            ready: Notify::new(),
            taken: Notify::new(),
        });
        {
            // Two first requests for one id at once: the first one in opens it.
            let mut table = self.lock();
            if let Some(existing) = table.get(id) {
                return Ok((existing.clone(), false));
            }
            table.insert(id.into(), shared.clone());
        }
        let sink = HttpSink {
            shared: shared.clone(),
            batch: BytesMut::new(),
            limit: outbound_limit,
            write_timeout,
            closed: false,
        };
        if let Err(error) = open(sink, ChannelSource { payloads, leftover: Bytes::new() }) {
            self.lock().remove(id);
            return Err(error);
        }
        Ok((shared, true))
    }

    /// Ends sessions with no receiving request for `delay` (their reader sees the end of
    /// input), and forgets sessions that ended `delay` ago.
    pub(super) fn reap(&self, delay: Duration) {
        let now = Instant::now();
        self.lock().retain(|_, shared| {
            let mut state = shared.lock();
            if let Some(ended) = state.ended {
                return now.duration_since(ended) < delay;
            }
            if !state.receiving && now.duration_since(state.unattended_since) >= delay {
                // Dropping the sender ends the reader: the session closes as for a closed socket.
                state.inbound = None;
            }
            true
        });
    }

    /// Sessions in the table (open or answering their close).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The writing half of an HTTP SockJS session: frames become JSON strings in [`Shared`].
pub(super) struct HttpSink {
    shared: Arc<Shared>,
    /// This batch's frames, comma-separated JSON strings.
    batch: BytesMut,
    /// Pending bytes past which a flush waits for a receiver (`outbound-buffer`).
    limit: usize,
    write_timeout: Option<Duration>,
    closed: bool,
}

impl HttpSink {
    fn push(&mut self, head: &[u8], tail: &[u8]) {
        if !self.batch.is_empty() {
            self.batch.extend_from_slice(b",");
        }
        self.batch.extend_from_slice(b"\"");
        for part in [head, tail] {
            match std::str::from_utf8(part) {
                Ok(text) => json::put_escaped(&mut self.batch, text),
                // SockJS carries text only: a binary body's bytes that are not UTF-8 arrive as
                // U+FFFD (docs/protocol.md).
                Err(_) => json::put_escaped(&mut self.batch, &String::from_utf8_lossy(part)),
            }
        }
        self.batch.extend_from_slice(b"\"");
    }

    /// Moves this batch to the shared pending frames once there is room.
    async fn hand_over(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        loop {
            let taken = self.shared.taken.notified();
            {
                let mut state = self.shared.lock();
                if state.pending.is_empty() || state.pending.len() + self.batch.len() <= self.limit {
                    if !state.pending.is_empty() {
                        state.pending.extend_from_slice(b",");
                    }
                    state.pending.extend_from_slice(&self.batch);
                    drop(state);
                    // An idle session holds no batch buffer (a burst may have grown it).
                    self.batch = BytesMut::new();
                    self.shared.ready.notify_one();
                    return Ok(());
                }
            }
            match self.write_timeout {
                Some(limit) => {
                    if tokio::time::timeout_at(started + limit, taken).await.is_err() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no SockJS receiver took the frames",
                        ));
                    }
                }
                None => taken.await,
            }
        }
    }

    fn end(&mut self, close: Close) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut state = self.shared.lock();
        state.close = Some(close);
        state.ended = Some(Instant::now());
        state.inbound = None;
        drop(state);
        self.shared.ready.notify_one();
    }
}

impl FrameSink for HttpSink {
    fn feed(&mut self, head: &[u8], tail: &[u8], _text: bool) -> bool {
        self.push(head, tail);
        self.batch.len() >= self.limit
    }

    fn reserve(&mut self, bytes: usize) {
        self.batch.reserve(bytes.min(self.limit));
    }

    async fn heartbeat(&mut self) -> io::Result<()> {
        self.push(b"\n", b"");
        Ok(())
    }

    async fn pong(&mut self, _payload: &[u8]) -> io::Result<()> {
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.hand_over().await
    }

    async fn close(&mut self, reason: CloseReason) -> io::Result<()> {
        let flushed = self.hand_over().await;
        self.end(Close::of(reason));
        flushed
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        self.end(Close::of(CloseReason::Normal));
    }
}

/// The reading half of an HTTP SockJS session: the STOMP bytes of the client's sends.
pub(super) struct ChannelSource {
    payloads: mpsc::Receiver<Result<Bytes, ReadError>>,
    leftover: Bytes,
}

impl ByteSource for ChannelSource {
    async fn read(&mut self, buf: &mut BytesMut) -> Result<Received, ReadError> {
        if self.leftover.is_empty() {
            match self.payloads.next().await {
                Some(payload) => self.leftover = payload?,
                None => return Ok(Received::Eof),
            }
        }
        buf.extend_from_slice(&std::mem::take(&mut self.leftover));
        Ok(Received::Data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(sessions: &Sessions, id: &str, limit: usize) -> (Arc<Shared>, HttpSink, ChannelSource) {
        let mut ends = None;
        let (shared, new) = sessions
            .get_or_open::<()>(
                id,
                |sink, source| {
                    ends = Some((sink, source));
                    Ok(())
                },
                limit,
                Some(Duration::from_millis(200)),
            )
            .unwrap();
        assert!(new);
        let (sink, source) = ends.unwrap();
        (shared, sink, source)
    }

    #[tokio::test]
    async fn frames_reach_the_one_receiver_and_the_close_follows_them() {
        let sessions = Sessions::default();
        let (shared, mut sink, _source) = open(&sessions, "s1", 1 << 16);
        let mut receiver = Receiver::attach(&shared).unwrap();
        assert_eq!(Receiver::attach(&shared).err(), Some(Close::ANOTHER_CONNECTION));
        sink.feed(b"MESSAGE\n", b"\nhi\0", true);
        sink.heartbeat().await.unwrap();
        sink.flush().await.unwrap();
        match receiver.next(Duration::from_secs(5)).await {
            Next::Frames(frames) => assert_eq!(&frames[..], br#""MESSAGE\n\nhi\u0000","\n""#),
            other => panic!("{other:?}"),
        }
        assert!(matches!(receiver.next(Duration::from_millis(10)).await, Next::Heartbeat));
        sink.feed(b"ERROR\n\n", b"\0", true);
        sink.close(CloseReason::StompError).await.unwrap();
        assert!(matches!(receiver.next(Duration::from_secs(5)).await, Next::Frames(_)));
        assert_eq!(
            match receiver.next(Duration::from_secs(5)).await {
                Next::Close(close) => close,
                other => panic!("{other:?}"),
            },
            Close { code: 1002, reason: "STOMP protocol error" }
        );
        drop(receiver);
        assert_eq!(Receiver::attach(&shared).err().map(|c| c.code), Some(1002), "the close, again");
        assert!(!shared.send(Bytes::from_static(b"x")).await, "a closed session takes nothing");
    }

    #[tokio::test]
    async fn a_flush_waits_for_room_and_fails_after_the_write_timeout() {
        let sessions = Sessions::default();
        let (shared, mut sink, _source) = open(&sessions, "s2", 64);
        sink.feed(&[b'x'; 60], b"", true);
        sink.flush().await.unwrap();
        sink.feed(&[b'y'; 60], b"", true);
        let error = sink.flush().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let mut receiver = Receiver::attach(&shared).unwrap();
        let waiting = tokio::spawn(async move {
            sink.flush().await.unwrap();
            sink
        });
        assert!(matches!(receiver.next(Duration::from_secs(5)).await, Next::Frames(f) if f.len() == 62));
        let _sink = waiting.await.unwrap();
        assert!(matches!(receiver.next(Duration::from_secs(5)).await, Next::Frames(f) if f.len() == 62));
    }

    #[tokio::test]
    async fn an_unattended_session_ends_and_is_forgotten_after_the_delay() {
        let sessions = Sessions::default();
        let (shared, sink, mut source) = open(&sessions, "s3", 1 << 16);
        assert!(shared.send(Bytes::from_static(b"CONNECT\n\n\0")).await);
        let mut buf = BytesMut::new();
        assert!(matches!(source.read(&mut buf).await.unwrap(), Received::Data));
        assert_eq!(&buf[..], b"CONNECT\n\n\0");
        let receiver = Receiver::attach(&shared).unwrap();
        sessions.reap(Duration::ZERO);
        assert!(shared.is_open(), "a session with a receiver stays");
        drop(receiver);
        sessions.reap(Duration::from_secs(60));
        assert!(shared.is_open(), "not before the delay");
        sessions.reap(Duration::ZERO);
        assert!(matches!(source.read(&mut buf).await.unwrap(), Received::Eof), "the reader sees the end");
        drop(sink);
        assert_eq!(sessions.len(), 1, "the ended session answers its close for a while");
        sessions.reap(Duration::ZERO);
        assert_eq!(sessions.len(), 0);
        assert!(sessions.get("s3").is_none());
    }
}
