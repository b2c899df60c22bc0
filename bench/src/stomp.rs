//! STOMP 1.2 frames written and read by hand, for speed: the load generator must spend as little
//! CPU per message as it can, because it shares the machine with the broker it measures.
//!
//! Writing: [`connect`], [`subscribe`], [`send`], [`ack`], [`disconnect`] return the frame text.
//! Reading: [`Parser`] takes the payloads of WebSocket messages (one frame, several frames, or a
//! part of one) and yields borrowed [`FrameRef`]s without allocating for the usual case of one
//! whole frame per message.

use std::fmt::Write as _;

use bytes::{Buf, BytesMut};

/// Frames of the load generator carry no heart-beats, so an idle connection stays silent.
pub fn connect(login: Option<(&str, &str)>) -> String {
    let mut frame = String::from("CONNECT\naccept-version:1.2,1.1,1.0\nhost:/\nheart-beat:0,0\n");
    if let Some((login, passcode)) = login {
        let _ = write!(frame, "login:{login}\npasscode:{passcode}\n");
    }
    frame.push_str("\n\0");
    frame
}

/// How a subscription acknowledges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    Auto,
    ClientIndividual,
}

/// SUBSCRIBE with a receipt; `prefetch` becomes `prefetch-count` (Stampede and RabbitMQ both
/// read it).
pub fn subscribe(id: &str, destination: &str, ack: Ack, prefetch: Option<u32>, receipt: &str) -> String {
    let mode = match ack {
        Ack::Auto => "auto",
        Ack::ClientIndividual => "client-individual",
    };
    let mut frame = format!("SUBSCRIBE\nid:{id}\ndestination:{destination}\nack:{mode}\n");
    if let Some(n) = prefetch {
        let _ = writeln!(frame, "prefetch-count:{n}");
    }
    let _ = write!(frame, "receipt:{receipt}\n\n\0");
    frame
}

/// SEND of a text body, with `content-length`, appended to `out` (cleared first).
pub fn send(out: &mut String, destination: &str, body: &str) {
    out.clear();
    let _ = write!(
        out,
        "SEND\ndestination:{destination}\ncontent-type:text/plain\ncontent-length:{}\n\n{body}\0",
        body.len()
    );
}

/// ACK of a MESSAGE by its `ack` header (STOMP 1.2).
pub fn ack(id: &[u8]) -> String {
    format!("ACK\nid:{}\n\n\0", String::from_utf8_lossy(id))
}

pub fn disconnect(receipt: &str) -> String {
    format!("DISCONNECT\nreceipt:{receipt}\n\n\0")
}

/// The commands the load generator tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Message,
    Receipt,
    Connected,
    Error,
    Other,
}

/// One frame, borrowed from the buffer it was read from.
#[derive(Debug)]
pub struct FrameRef<'a> {
    pub command: Command,
    /// The header lines, each ending in `\n` (a `\r` before it is kept).
    headers: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> FrameRef<'a> {
    /// The first value of header `name`, unescaped only as far as the load generator needs
    /// (it never sends values that need escaping).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        let name = name.as_bytes();
        for line in self.headers.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > name.len() && line.starts_with(name) && line[name.len()] == b':' {
                return Some(&line[name.len() + 1..]);
            }
        }
        None
    }

    /// The `message` header of an ERROR, or the body if it has none.
    pub fn error_text(&self) -> String {
        let text = self.header("message").unwrap_or(self.body);
        String::from_utf8_lossy(text).into_owned()
    }
}

/// Why bytes from the server are not STOMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame(pub String);

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad frame from the server: {}", self.0)
    }
}

impl std::error::Error for BadFrame {}

/// Parses the frame at the start of `input` (after any heart-beat EOLs). Returns it and the
/// number of bytes it took, or `None` when the frame is not complete yet.
///
/// On the load generator's hot path (every delivery of every scenario): one pass over the
/// header lines with SIMD `memchr`, picking up `content-length` on the way.
pub fn parse(input: &[u8]) -> Result<Option<(FrameRef<'_>, usize)>, BadFrame> {
    let start = input.iter().position(|b| *b != b'\n' && *b != b'\r').unwrap_or(input.len());
    let rest = &input[start..];
    if rest.is_empty() {
        return Ok(None);
    }
    let Some(command_end) = memchr::memchr(b'\n', rest) else { return Ok(None) };
    let command_line = rest[..command_end].strip_suffix(b"\r").unwrap_or(&rest[..command_end]);
    let command = match command_line {
        b"MESSAGE" => Command::Message,
        b"RECEIPT" => Command::Receipt,
        b"CONNECTED" => Command::Connected,
        b"ERROR" => Command::Error,
        _ => Command::Other,
    };
    // Header lines up to the blank line; the first content-length counts, as STOMP says.
    let headers_start = command_end + 1;
    let mut at = headers_start;
    let mut content_length = None;
    let headers_end = loop {
        let Some(eol) = memchr::memchr(b'\n', &rest[at..]) else { return Ok(None) };
        let line = &rest[at..at + eol];
        if line.is_empty() || line == b"\r" {
            let end = at;
            at += eol + 1;
            break end;
        }
        if content_length.is_none() {
            if let Some(value) = line.strip_prefix(b"content-length:") {
                content_length = Some(value.strip_suffix(b"\r").unwrap_or(value));
            }
        }
        at += eol + 1;
    };
    let body_start = at;
    let (body_end, next) = match content_length {
        Some(len) => {
            let len = parse_length(len)
                .ok_or_else(|| BadFrame(format!("content-length {:?}", String::from_utf8_lossy(len))))?;
            if rest.len() < body_start + len + 1 {
                return Ok(None);
            }
            if rest[body_start + len] != 0 {
                return Err(BadFrame("no NUL after content-length bytes".into()));
            }
            (body_start + len, body_start + len + 1)
        }
        None => match memchr::memchr(0, &rest[body_start..]) {
            Some(nul) => (body_start + nul, body_start + nul + 1),
            None => return Ok(None),
        },
    };
    let frame =
        FrameRef { command, headers: &rest[headers_start..headers_end], body: &rest[body_start..body_end] };
    Ok(Some((frame, start + next)))
}

/// A decimal length, surrounding spaces allowed.
fn parse_length(text: &[u8]) -> Option<usize> {
    let text = text.trim_ascii();
    if text.is_empty() || text.len() > 12 {
        return None;
    }
    text.iter().try_fold(0usize, |n, b| b.is_ascii_digit().then(|| n * 10 + usize::from(b - b'0')))
}

/// Splits a stream of WebSocket payloads into frames. A payload that holds whole frames is read
/// in place; only an incomplete tail is copied and kept for the next payload.
#[derive(Debug, Default)]
pub struct Parser {
    partial: BytesMut,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Calls `each` for every complete frame, in order, that `payload` completes or holds.
    pub fn feed(&mut self, payload: &[u8], mut each: impl FnMut(&FrameRef<'_>)) -> Result<(), BadFrame> {
        if self.partial.is_empty() {
            let mut input = payload;
            while let Some((frame, used)) = parse(input)? {
                each(&frame);
                input = &input[used..];
            }
            if input.iter().any(|b| *b != b'\n' && *b != b'\r') {
                self.partial.extend_from_slice(input);
            }
            return Ok(());
        }
        self.partial.extend_from_slice(payload);
        while let Some((frame, used)) = parse(&self.partial)? {
            each(&frame);
            self.partial.advance(used);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_with_and_without_content_length() {
        let input = b"\nMESSAGE\nsubscription:0\nack:a-1\ncontent-length:3\n\na\0b\0RECEIPT\r\nreceipt-id:r1\r\n\r\n\0";
        let (frame, used) = parse(input).unwrap().unwrap();
        assert_eq!(frame.command, Command::Message);
        assert_eq!(frame.body, b"a\0b");
        assert_eq!(frame.header("ack"), Some(&b"a-1"[..]));
        assert_eq!(frame.header("subscription"), Some(&b"0"[..]));
        assert_eq!(frame.header("sub"), None);
        let (frame, used2) = parse(&input[used..]).unwrap().unwrap();
        assert_eq!(frame.command, Command::Receipt);
        assert_eq!(frame.header("receipt-id"), Some(&b"r1"[..]));
        assert_eq!(used + used2, input.len());
        let (frame, _) = parse(b"MESSAGE\ncontent-length: 2\ncontent-length:9\n\nab\0").unwrap().unwrap();
        assert_eq!(frame.body, b"ab", "the first content-length counts");
        assert!(parse(b"MESSAGE\ncontent-length:x\n\n\0").is_err());
        assert!(parse(b"MESSAGE\ncontent-length:1\n\nab\0").is_err(), "no NUL after the body");
    }

    #[test]
    fn parser_joins_split_frames() {
        let whole = b"MESSAGE\ndestination:/topic/a\n\nhello\0MESSAGE\n\nbye\0";
        for split in 0..whole.len() {
            let mut parser = Parser::new();
            let mut bodies = Vec::new();
            parser.feed(&whole[..split], |f| bodies.push(f.body.to_vec())).unwrap();
            parser.feed(&whole[split..], |f| bodies.push(f.body.to_vec())).unwrap();
            assert_eq!(bodies, vec![b"hello".to_vec(), b"bye".to_vec()], "split at {split}");
        }
    }

    #[test]
    fn writes_frames() {
        let mut out = String::new();
        send(&mut out, "/topic/x", "hi");
        assert_eq!(out, "SEND\ndestination:/topic/x\ncontent-type:text/plain\ncontent-length:2\n\nhi\0");
        assert!(connect(Some(("guest", "guest"))).contains("login:guest\npasscode:guest\n\n\0"));
        assert_eq!(
            subscribe("0", "/queue/q", Ack::ClientIndividual, Some(10), "r"),
            "SUBSCRIBE\nid:0\ndestination:/queue/q\nack:client-individual\nprefetch-count:10\nreceipt:r\n\n\0"
        );
        assert_eq!(ack(b"m-1"), "ACK\nid:m-1\n\n\0");
    }
}
