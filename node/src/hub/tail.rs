//! A message encoded once per node and shared by every local delivery of it.
//!
//! A MESSAGE frame is a per-delivery head (`MESSAGE`, `subscription`, `message-id`, `ack`,
//! `redelivered`) followed by a tail that is the same for every subscriber: the destination,
//! the publisher's headers, the offset, `content-length`, the blank line, the body and the NUL.
//! The tail is built here once; sessions only write their head in front of it.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use crate::destination;
use crate::engine::Message;
use crate::stomp::{escape_into, needs_escape, Version};

/// The header carrying a history topic's offset on MESSAGE frames.
pub const OFFSET_HEADER: &str = "x-offset";

/// Headers a publisher may not set: the broker writes its own.
pub fn is_reserved(name: &str) -> bool {
    matches!(
        name,
        "destination"
            | "content-length"
            | "transaction"
            | "receipt"
            | "message-id"
            | "subscription"
            | "ack"
            | "redelivered"
            | OFFSET_HEADER
    )
}

/// The shared part of a MESSAGE frame.
#[derive(Debug)]
pub struct MessageTail {
    /// Escaped as STOMP 1.1 and 1.2 want (CONNECT-style raw for 1.0 is `raw`).
    escaped: Bytes,
    /// Present only when some header needs escaping, so 1.0 clients get raw values.
    raw: Option<Bytes>,
    /// The body is UTF-8: WebSocket clients get a text message.
    pub text: bool,
    pub offset: Option<u64>,
    /// When this node's hub took the message from the engine: where the delivery latency
    /// (`stampede_delivery_latency_seconds`) starts.
    pub received: Instant,
}

impl MessageTail {
    pub fn new(message: &Message) -> MessageTail {
        let destination = destination::as_seen_by_subscriber(&message.destination);
        let escapes = needs_escape(&destination)
            || message.headers.iter().any(|(k, v)| needs_escape(k) || needs_escape(v));
        let escaped = encode_tail(&destination, message, Some(Version::V1_2));
        let raw = escapes.then(|| encode_tail(&destination, message, None));
        MessageTail {
            escaped,
            raw,
            text: std::str::from_utf8(&message.body).is_ok(),
            offset: message.offset,
            received: Instant::now(),
        }
    }

    /// The tail to write for a client speaking `version`.
    pub fn tail(&self, version: Version) -> &Bytes {
        match (&self.raw, version) {
            (Some(raw), Version::V1_0) => raw,
            _ => &self.escaped,
        }
    }

    /// Bytes this message adds to an outbound buffer (the head is small and not counted).
    pub fn len(&self) -> usize {
        self.escaped.len()
    }

    pub fn is_empty(&self) -> bool {
        self.escaped.is_empty()
    }
}

fn encode_tail(destination: &str, message: &Message, escape: Option<Version>) -> Bytes {
    let headers_len: usize = message.headers.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = BytesMut::with_capacity(destination.len() + headers_len + message.body.len() + 64);
    let header = |out: &mut BytesMut, name: &str, value: &str| {
        put_escaped(out, name, escape);
        out.put_u8(b':');
        put_escaped(out, value, escape);
        out.put_u8(b'\n');
    };
    header(&mut out, "destination", destination);
    for (name, value) in &message.headers {
        header(&mut out, name, value);
    }
    if let Some(offset) = message.offset {
        header(&mut out, OFFSET_HEADER, itoa::Buffer::new().format(offset));
    }
    header(&mut out, "content-length", itoa::Buffer::new().format(message.body.len()));
    out.put_u8(b'\n');
    out.extend_from_slice(&message.body);
    out.put_u8(0);
    out.freeze()
}

fn put_escaped(out: &mut BytesMut, value: &str, escape: Option<Version>) {
    match escape {
        Some(version) => escape_into(value, version, out),
        None => out.extend_from_slice(value.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn message(headers: Vec<(&str, &str)>, body: &[u8]) -> Message {
        Message {
            destination: Arc::from("/topic/a"),
            headers: headers.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            body: Bytes::copy_from_slice(body),
            offset: Some(7),
        }
    }

    #[test]
    fn tail_carries_destination_headers_offset_and_length() {
        let p = MessageTail::new(&message(vec![("content-type", "text/plain")], b"hi"));
        assert_eq!(
            &p.tail(Version::V1_2)[..],
            b"destination:/topic/a\ncontent-type:text/plain\nx-offset:7\ncontent-length:2\n\nhi\0"
        );
        assert!(p.text);
        assert!(p.raw.is_none());
    }

    #[test]
    fn escaping_differs_by_version_only_when_needed() {
        let p = MessageTail::new(&message(vec![("k", "a:b")], &[0xff, 0]));
        assert!(p.tail(Version::V1_2).starts_with(b"destination:/topic/a\nk:a\\cb\n"));
        assert!(p.tail(Version::V1_0).starts_with(b"destination:/topic/a\nk:a:b\n"));
        assert!(!p.text);
    }

    #[test]
    fn user_destinations_show_the_subscribed_form() {
        let mut m = message(vec![], b"");
        m.destination = Arc::from("/user/ann/queue/x");
        let p = MessageTail::new(&m);
        assert!(p.tail(Version::V1_2).starts_with(b"destination:/user/queue/x\n"));
    }
}
