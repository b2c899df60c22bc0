//! RFC 6455 framing, server side, without I/O: [`Decoder`] turns the bytes a client sent into
//! message payloads appended to a buffer (unmasked in place) and control events; the `put_*`
//! functions write server frames into an output buffer.
//!
//! No extension is ever negotiated, so the RSV bits must be 0. Client frames must be masked.
//! Control frames carry at most 125 bytes and are never fragmented, but may arrive between the
//! fragments of a data message. A frame, or a fragmented message as a whole, larger than the
//! decoder's limit is refused from its header, before any of its payload is buffered. Text
//! messages are checked to be UTF-8 as they arrive, across fragment boundaries. A close frame is
//! checked before it is reported: no payload, or a status code that may be sent (RFC 6455 §7.4)
//! followed by a UTF-8 reason.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub(super) const CONTINUATION: u8 = 0x0;
pub(super) const TEXT: u8 = 0x1;
pub(super) const BINARY: u8 = 0x2;
pub(super) const CLOSE: u8 = 0x8;
pub(super) const PING: u8 = 0x9;
pub(super) const PONG: u8 = 0xA;

/// Most payload bytes of a control frame.
pub(super) const MAX_CONTROL_PAYLOAD: usize = 125;

/// The header of a server frame and its size: FIN set, not masked, the shortest length
/// encoding.
pub(super) fn header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut header = [0; 10];
    header[0] = 0x80 | opcode;
    let size = match len {
        0..=125 => {
            header[1] = len as u8;
            2
        }
        126..=0xffff => {
            header[1] = 126;
            header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    (header, size)
}

/// Appends the header of a server frame.
pub(super) fn put_header(out: &mut BytesMut, opcode: u8, len: usize) {
    let (header, size) = header(opcode, len);
    out.extend_from_slice(&header[..size]);
}

/// Writes a whole server frame.
pub(super) fn put_frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    out.reserve(10 + payload.len());
    put_header(out, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// Writes a close frame with a status code and a reason (cut to fit a control frame).
pub(super) fn put_close(out: &mut BytesMut, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    put_header(out, CLOSE, 2 + end);
    out.put_u16(code);
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

/// Whether a close frame may carry `code` (RFC 6455 §7.4.1 and §7.4.2, and IANA's registry of
/// close codes): 1000-1003 and 1007-1011 are the RFC's, 1012-1014 were registered since, and
/// 3000-4999 belong to libraries and applications. The rest never appears on the wire: below
/// 1000 is unused, 1004 is reserved, 1005, 1006 and 1015 stand for "no close frame" states that
/// an endpoint must not send, 1016-2999 are for future extensions of the protocol (unassigned),
/// and 5000 and up are not close codes.
pub(super) fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A client's close frame, checked: its status code, if it carried one.
fn close_status(payload: &[u8]) -> Result<Option<u16>, DecodeError> {
    match payload {
        [] => Ok(None),
        [_] => Err(DecodeError::violation("Close frame with a 1-byte payload: a status code takes 2 bytes")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !close_code_allowed(code) {
                return Err(DecodeError::violation(format!(
                    "Invalid close code {code} (RFC 6455 section 7.4)"
                )));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(DecodeError::InvalidUtf8("Invalid UTF-8 in a close frame's reason".to_owned()));
            }
            Ok(Some(code))
        }
    }
}

/// XORs `bytes` with the masking key, `bytes` starting at offset `phase` of the payload.
pub(super) fn unmask(bytes: &mut [u8], mask: [u8; 4], phase: usize) {
    let mut key = mask;
    key.rotate_left(phase % 4);
    let wide = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut words = bytes.chunks_exact_mut(8);
    for word in &mut words {
        let value = u64::from_ne_bytes(word.try_into().expect("8 bytes")) ^ wide;
        word.copy_from_slice(&value.to_ne_bytes());
    }
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// What [`Decoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// Data frames: their payloads (all, part, or nothing when empty) were appended.
    Data,
    Ping(Bytes),
    Pong,
    /// A valid close frame, with its status code if it had one.
    Close(Option<u16>),
}

/// Why decoding stopped for good.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The client broke RFC 6455; says how. Closes with 1002.
    Violation(String),
    /// A text message, or a close frame's reason, is not UTF-8; says which. Closes with 1007
    /// (RFC 6455 §8.1).
    InvalidUtf8(String),
    /// A frame or a message larger than the limit; says which. Closes with 1009.
    TooLarge(String),
}

impl DecodeError {
    fn violation(why: impl Into<String>) -> DecodeError {
        DecodeError::Violation(why.into())
    }
}

/// A data message being received: from its first frame's header to the end of its FIN frame.
struct Message {
    text: bool,
    /// Payload bytes announced by its frames so far.
    len: usize,
    utf8: Utf8Check,
}

/// The frame whose payload is being received.
struct Frame {
    mask: [u8; 4],
    /// Payload bytes received so far: the masking key's phase.
    done: usize,
    remaining: usize,
    fin: bool,
    /// `None` for a data frame; a control frame's payload is collected here.
    control: Option<(u8, BytesMut)>,
}

/// Decodes client frames. One per connection; it holds a frame's state between reads.
pub(super) struct Decoder {
    /// Most payload bytes of a data frame, or of a fragmented message as a whole.
    limit: usize,
    frame: Option<Frame>,
    message: Option<Message>,
    closed: bool,
}

impl Decoder {
    pub(super) fn new(limit: usize) -> Decoder {
        Decoder { limit, frame: None, message: None, closed: false }
    }

    /// Decodes what `raw` holds: data payloads are appended to `out` and consumed from `raw`,
    /// until `raw` holds no whole frame header (`None`, or `Data` when payload was appended)
    /// or a control frame is complete. A control frame after data payloads is left for the next
    /// call, so `Data` comes first. After a close frame nothing more is decoded.
    pub(super) fn decode(
        &mut self,
        raw: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<Event>, DecodeError> {
        let mut data = false;
        loop {
            if self.closed {
                raw.clear();
                return Ok(data.then_some(Event::Data));
            }
            if self.frame.is_none() {
                let Some(header) = self.header(raw)? else { return Ok(data.then_some(Event::Data)) };
                if data && header.control.is_some() {
                    return Ok(Some(Event::Data));
                }
                raw.advance(header.size);
                self.start(header);
            }
            let frame = self.frame.as_mut().expect("a frame in progress");
            let n = frame.remaining.min(raw.len());
            if let Some((_, payload)) = &mut frame.control {
                payload.extend_from_slice(&raw[..n]);
                raw.advance(n);
                frame.remaining -= n;
                if frame.remaining > 0 {
                    return Ok(data.then_some(Event::Data));
                }
                let (mask, frame) = (frame.mask, self.frame.take().expect("a frame in progress"));
                let (opcode, mut payload) = frame.control.expect("a control frame");
                unmask(&mut payload, mask, 0);
                return Ok(Some(match opcode {
                    PING => Event::Ping(payload.freeze()),
                    PONG => Event::Pong,
                    _ => {
                        self.closed = true;
                        Event::Close(close_status(&payload)?)
                    }
                }));
            }
            if n == 0 && frame.remaining > 0 {
                return Ok(data.then_some(Event::Data));
            }
            data = true;
            let start = out.len();
            out.extend_from_slice(&raw[..n]);
            raw.advance(n);
            self.accept(&mut out[start..])?;
            if self.frame.is_some() {
                return Ok(Some(Event::Data));
            }
        }
    }

    /// Payload bytes of the current data frame still to come, while one is being received: they
    /// may be read straight into the output buffer and given to [`Decoder::accept`].
    pub(super) fn data_remaining(&self) -> Option<usize> {
        self.frame.as_ref().filter(|f| f.control.is_none()).map(|f| f.remaining)
    }

    /// Takes `bytes`, the next (masked) payload bytes of the current data frame, already in the
    /// output buffer: unmasks them in place and checks a text message's UTF-8.
    pub(super) fn accept(&mut self, bytes: &mut [u8]) -> Result<(), DecodeError> {
        let frame = self.frame.as_mut().expect("a data frame in progress");
        debug_assert!(frame.control.is_none() && bytes.len() <= frame.remaining);
        unmask(bytes, frame.mask, frame.done);
        frame.done += bytes.len();
        frame.remaining -= bytes.len();
        let message = self.message.as_mut().expect("a message in progress");
        if message.text && !message.utf8.feed(bytes) {
            return Err(DecodeError::InvalidUtf8("Invalid UTF-8 in a text message".to_owned()));
        }
        if frame.remaining == 0 {
            let fin = frame.fin;
            self.frame = None;
            if fin {
                let message = self.message.take().expect("a message in progress");
                if message.text && !message.utf8.is_complete() {
                    return Err(DecodeError::InvalidUtf8(
                        "Invalid UTF-8 in a text message: it ends mid-character".to_owned(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Parses the frame header at the start of `raw`, if it is all there. What the first two
    /// bytes say is checked as soon as they are there.
    fn header(&self, raw: &[u8]) -> Result<Option<Header>, DecodeError> {
        let [first, second, ..] = *raw else { return Ok(None) };
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0f;
        if first & 0x70 != 0 {
            return Err(DecodeError::violation("Reserved bits are non-zero"));
        }
        if second & 0x80 == 0 {
            return Err(DecodeError::violation("Received an unmasked frame from client"));
        }
        let control = opcode & 0x08 != 0;
        match opcode {
            CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG => {}
            _ => return Err(DecodeError::violation(format!("Encountered invalid opcode: {opcode}"))),
        }
        if control && !fin {
            return Err(DecodeError::violation("Fragmented control frame"));
        }
        match (opcode, &self.message) {
            (CONTINUATION, None) => {
                return Err(DecodeError::violation("Continue frame but nothing to continue"));
            }
            (TEXT | BINARY, Some(_)) => {
                let kind = if opcode == TEXT { "Text" } else { "Binary" };
                return Err(DecodeError::violation(format!(
                    "While waiting for more fragments received: {kind}"
                )));
            }
            _ => {}
        }
        let (extended, len) = match second & 0x7f {
            126 => match raw.get(2..4) {
                Some(bytes) => (2, u64::from(u16::from_be_bytes([bytes[0], bytes[1]]))),
                None => return Ok(None),
            },
            127 => match raw.get(2..10) {
                Some(bytes) => (8, u64::from_be_bytes(bytes.try_into().expect("8 bytes"))),
                None => return Ok(None),
            },
            len => (0, u64::from(len)),
        };
        if control && len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(DecodeError::violation("Control frame too big (payload must be 125 bytes or less)"));
        }
        let Some(mask) = raw.get(2 + extended..6 + extended) else { return Ok(None) };
        if !control {
            let so_far = self.message.as_ref().map_or(0, |m| m.len as u64);
            if len > self.limit as u64 {
                return Err(DecodeError::TooLarge(format!(
                    "WebSocket message refused: a frame of {len} bytes is over the limit of {} bytes \
                     (max-frame-size)",
                    self.limit
                )));
            }
            if so_far + len > self.limit as u64 {
                return Err(DecodeError::TooLarge(format!(
                    "WebSocket message refused: its fragments add up to more than {} bytes \
                     (max-frame-size)",
                    self.limit
                )));
            }
        }
        Ok(Some(Header {
            size: 6 + extended,
            fin,
            len: len as usize,
            mask: mask.try_into().expect("4 bytes"),
            control: control.then_some(opcode),
            text: opcode == TEXT,
            starts: opcode != CONTINUATION,
        }))
    }

    /// Starts receiving the frame a checked header announced.
    fn start(&mut self, header: Header) {
        let control = header.control.map(|opcode| (opcode, BytesMut::with_capacity(header.len)));
        if control.is_none() {
            if header.starts {
                self.message = Some(Message { text: header.text, len: 0, utf8: Utf8Check::default() });
            }
            self.message.as_mut().expect("a message in progress").len += header.len;
        }
        self.frame =
            Some(Frame { mask: header.mask, done: 0, remaining: header.len, fin: header.fin, control });
    }
}

/// A frame header, checked.
struct Header {
    /// Bytes of the header itself.
    size: usize,
    fin: bool,
    len: usize,
    mask: [u8; 4],
    /// The opcode of a control frame.
    control: Option<u8>,
    text: bool,
    /// A text or binary frame: the first of a message.
    starts: bool,
}

/// UTF-8 validation of a message received in pieces: a character cut between two pieces is
/// held (at most 3 bytes) until the rest arrives.
#[derive(Default)]
struct Utf8Check {
    pending: [u8; 4],
    held: usize,
}

impl Utf8Check {
    /// Checks the next piece; false when the message is not UTF-8.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while self.held > 0 {
            let Some((&next, rest)) = bytes.split_first() else { return true };
            self.pending[self.held] = next;
            self.held += 1;
            bytes = rest;
            match std::str::from_utf8(&self.pending[..self.held]) {
                Ok(_) => self.held = 0,
                Err(e) if e.error_len().is_some() => return false,
                Err(_) => {}
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                let tail = &bytes[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.held = tail.len();
                true
            }
        }
    }

    /// True when no character is left unfinished.
    fn is_complete(&self) -> bool {
        self.held == 0
    }
}

#[cfg(test)]
mod tests;
