//! The NATS client protocol (core NATS, text over WebSocket), written and read by hand like
//! [`crate::stomp`], for the same reason: the load generator spends as little CPU per message as
//! it can. Only what the fan-out, topics, idle and churn scenarios need: CONNECT, SUB, PUB,
//! PING/PONG going out; INFO, MSG, PING, PONG, +OK and -ERR coming in (no headers: CONNECT says
//! `"headers":false`, so the server never sends HMSG).
//!
//! A PING with its PONG stands in for STOMP's receipt: the server answers in order, so a PONG
//! read after `SUB …\r\nPING\r\n` means the subscription is in place.
//!
//! Writing: [`connect`], [`subscribe`], [`publish`], [`PONG`]. Reading: [`Parser`] takes the
//! payloads of WebSocket messages (the server cuts its stream into frames anywhere) and yields
//! borrowed [`Op`]s, copying only an incomplete tail.

use std::fmt::Write as _;

use bytes::{Buf, BytesMut};

/// CONNECT, then a PING whose PONG says the server took it. No echo suppression: a topics
/// connection reads its own messages back, as it does from a STOMP broker.
pub fn connect() -> String {
    concat!(
        "CONNECT {\"verbose\":false,\"pedantic\":false,\"lang\":\"rust\",\"version\":\"stampede-bench\",",
        "\"protocol\":1,\"echo\":true,\"headers\":false,\"no_responders\":false}\r\nPING\r\n"
    )
    .to_owned()
}

/// SUB, then a PING: its PONG is the receipt.
pub fn subscribe(subject: &str, sid: &str) -> String {
    format!("SUB {subject} {sid}\r\nPING\r\n")
}

/// PUB of a text payload, appended to `out` (cleared first).
pub fn publish(out: &mut String, subject: &str, body: &str) {
    out.clear();
    let _ = write!(out, "PUB {subject} {}\r\n{body}\r\n", body.len());
}

/// The answer to a server's PING (a server closes a client that leaves two unanswered).
pub const PONG: &str = "PONG\r\n";

/// The NATS subject for a STOMP-style destination: `/topic/bench-1-fanout` becomes
/// `topic.bench-1-fanout` (NATS separates tokens with dots; a subject has no spaces).
pub fn subject(destination: &str) -> String {
    destination.trim_start_matches('/').replace('/', ".")
}

/// One protocol message from the server, borrowed from the buffer it was read from.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Info(&'a [u8]),
    Msg { subject: &'a [u8], sid: &'a [u8], payload: &'a [u8] },
    Ping,
    Pong,
    Ok,
    Err(&'a [u8]),
}

/// Why bytes from the server are not NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadOp(pub String);

impl std::fmt::Display for BadOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad NATS protocol line from the server: {}", self.0)
    }
}

impl std::error::Error for BadOp {}

/// Parses the message at the start of `input`. Returns it and the bytes it took, or `None` when
/// it is not complete yet. Control lines end in CRLF (a bare LF is taken too); a MSG's payload
/// is its announced length, then CRLF.
pub fn parse(input: &[u8]) -> Result<Option<(Op<'_>, usize)>, BadOp> {
    let Some(eol) = memchr::memchr(b'\n', input) else {
        if input.len() > 4096 {
            return Err(BadOp(format!("no end of line in {} bytes", input.len())));
        }
        return Ok(None);
    };
    let line = input[..eol].strip_suffix(b"\r").unwrap_or(&input[..eol]);
    let after = eol + 1;
    let (verb, rest) = match memchr::memchr2(b' ', b'\t', line) {
        Some(at) => (&line[..at], line[at + 1..].trim_ascii_start()),
        None => (line, &line[line.len()..]),
    };
    let op = match verb {
        b"MSG" | b"msg" => {
            let mut fields = rest.split(|b| *b == b' ' || *b == b'\t').filter(|f| !f.is_empty());
            let (subject, sid) = match (fields.next(), fields.next()) {
                (Some(subject), Some(sid)) => (subject, sid),
                _ => return Err(BadOp(format!("MSG {:?}", String::from_utf8_lossy(rest)))),
            };
            // MSG <subject> <sid> [reply-to] <#bytes>: the length is the last field.
            let fields: Vec<&[u8]> = fields.collect();
            let len = match fields.as_slice() {
                [len] | [_, len] => parse_length(len),
                _ => None,
            }
            .ok_or_else(|| BadOp(format!("MSG {:?}", String::from_utf8_lossy(rest))))?;
            if input.len() < after + len + 2 {
                return Ok(None);
            }
            if &input[after + len..after + len + 2] != b"\r\n" {
                return Err(BadOp("no CRLF after a MSG payload".into()));
            }
            return Ok(Some((
                Op::Msg { subject, sid, payload: &input[after..after + len] },
                after + len + 2,
            )));
        }
        b"PING" | b"ping" => Op::Ping,
        b"PONG" | b"pong" => Op::Pong,
        b"+OK" | b"+ok" => Op::Ok,
        b"-ERR" | b"-err" => Op::Err(rest),
        b"INFO" | b"info" => Op::Info(rest),
        other => return Err(BadOp(format!("{:?}", String::from_utf8_lossy(other)))),
    };
    Ok(Some((op, after)))
}

/// A decimal length.
fn parse_length(text: &[u8]) -> Option<usize> {
    if text.is_empty() || text.len() > 12 {
        return None;
    }
    text.iter().try_fold(0usize, |n, b| b.is_ascii_digit().then(|| n * 10 + usize::from(b - b'0')))
}

/// Splits a stream of WebSocket payloads into protocol messages. A payload that holds whole
/// messages is read in place; only an incomplete tail is copied and kept for the next payload.
#[derive(Debug, Default)]
pub struct Parser {
    partial: BytesMut,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Calls `each` for every complete message, in order, that `payload` completes or holds.
    pub fn feed(&mut self, payload: &[u8], mut each: impl FnMut(&Op<'_>)) -> Result<(), BadOp> {
        if self.partial.is_empty() {
            let mut input = payload;
            while let Some((op, used)) = parse(input)? {
                each(&op);
                input = &input[used..];
            }
            self.partial.extend_from_slice(input);
            return Ok(());
        }
        self.partial.extend_from_slice(payload);
        while let Some((op, used)) = parse(&self.partial)? {
            each(&op);
            self.partial.advance(used);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_server_op() {
        let input = b"INFO {\"server_id\":\"x\"}\r\n+OK\r\nMSG topic.a 1 5\r\nhe\r\no\r\nPING\r\nMSG topic.a 1 _INBOX.r 0\r\n\r\nPONG\r\n-ERR 'Unknown Protocol Operation'\r\n";
        let mut ops = Vec::new();
        let mut at = 0;
        while let Some((op, used)) = parse(&input[at..]).unwrap() {
            ops.push(format!("{op:?}"));
            at += used;
        }
        assert_eq!(at, input.len());
        let op = |o: Op<'_>| format!("{o:?}");
        assert_eq!(
            ops,
            vec![
                op(Op::Info(b"{\"server_id\":\"x\"}")),
                op(Op::Ok),
                op(Op::Msg { subject: b"topic.a", sid: b"1", payload: b"he\r\no" }),
                op(Op::Ping),
                op(Op::Msg { subject: b"topic.a", sid: b"1", payload: b"" }),
                op(Op::Pong),
                op(Op::Err(b"'Unknown Protocol Operation'")),
            ]
        );
    }

    #[test]
    fn refuses_what_is_not_nats() {
        assert!(parse(b"HELLO\r\n").is_err());
        assert!(parse(b"MSG topic.a 1 x\r\n").is_err(), "a length that is not a number");
        assert!(parse(b"MSG topic.a\r\n").is_err(), "no sid");
        assert!(parse(b"MSG a 1 2\r\nabXY").is_err(), "no CRLF after the payload");
        assert_eq!(parse(b"MSG a 1 2\r\nab\r").unwrap(), None, "the CRLF not complete yet");
        assert!(parse(&[b'x'; 5000]).is_err(), "a line that never ends");
    }

    #[test]
    fn parser_joins_split_messages() {
        let whole = b"MSG topic.a 7 5\r\nhello\r\nPING\r\nMSG topic.b 7 3\r\nbye\r\n";
        for split in 0..whole.len() {
            let mut parser = Parser::new();
            let mut seen = Vec::new();
            let mut each = |op: &Op<'_>| match op {
                Op::Msg { payload, .. } => seen.push(payload.to_vec()),
                Op::Ping => seen.push(b"PING".to_vec()),
                _ => {}
            };
            parser.feed(&whole[..split], &mut each).unwrap();
            parser.feed(&whole[split..], &mut each).unwrap();
            assert_eq!(seen, vec![b"hello".to_vec(), b"PING".to_vec(), b"bye".to_vec()], "split at {split}");
        }
    }

    #[test]
    fn writes_client_ops() {
        let mut out = String::from("left over");
        publish(&mut out, "topic.x", "hi");
        assert_eq!(out, "PUB topic.x 2\r\nhi\r\n");
        assert_eq!(subscribe("topic.x", "1"), "SUB topic.x 1\r\nPING\r\n");
        assert!(connect().starts_with("CONNECT {"));
        assert!(connect().ends_with("}\r\nPING\r\n"));
        assert!(connect().contains("\"verbose\":false") && connect().contains("\"headers\":false"));
        assert_eq!(subject("/topic/bench-1-fanout"), "topic.bench-1-fanout");
        assert_eq!(subject("/topic/a/b"), "topic.a.b");
    }
}
