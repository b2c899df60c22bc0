//! The envelope: how one message travels between nodes and how it is stored in Redis.
//!
//! Every message on a pub/sub channel, in a history stream and in a queue stream is one
//! [`Envelope`] in the layout serde and bincode 2 give it (`config::standard()`: variable-length
//! integers, little endian), encoded and decoded by hand for speed ([`encode_parts`], [`decode`])
//! and held to bincode's bytes by the tests. The enum's variant index is the version: a node must
//! keep decoding every variant it ever wrote, and a new layout is a new variant, never a change to
//! `V1`.
//!
//! `offset` is deliberately the last field of `V1`: a history publish encodes the envelope with
//! `offset: None` (last byte `0x00`) and the Lua script that assigns the offset replaces that byte
//! with `0x01` followed by the offset as a bincode varint ([`with_offset`] is the same operation in
//! Rust), so the stored and the published copies are byte for byte the same envelope.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::engine::Message;

/// The wire format of one message, versioned by variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Envelope {
    V1 {
        /// The node that published it.
        origin: String,
        /// The destination as the publisher named it.
        destination: String,
        /// Headers passed through to subscribers, in order.
        headers: Vec<(String, String)>,
        #[serde(with = "body")]
        body: Vec<u8>,
        /// Position in the destination's history (history topics only).
        offset: Option<u64>,
    },
}

/// Why bytes could not be read as an envelope.
#[derive(Debug)]
pub(super) struct DecodeError(String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "undecodable envelope: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Encodes `message` as a V1 envelope from `origin`, with the offset the message carries.
pub(super) fn encode(origin: &str, message: &Message) -> Vec<u8> {
    encode_parts(origin, message, message.offset)
}

/// Encodes `message` with `offset: None`, the form a history script completes.
pub(super) fn encode_without_offset(origin: &str, message: &Message) -> Vec<u8> {
    encode_parts(origin, message, None)
}

fn encode_parts(origin: &str, message: &Message, offset: Option<u64>) -> Vec<u8> {
    let headers: usize = message.headers.iter().map(|(k, v)| string_len(k.len()) + string_len(v.len())).sum();
    let size = 1
        + string_len(origin.len())
        + string_len(message.destination.len())
        + varint_len(message.headers.len() as u64)
        + headers
        + string_len(message.body.len())
        + offset.map_or(1, |o| 1 + varint_len(o));
    let mut out = Vec::with_capacity(size);
    out.push(0); // variant V1
    put_string(&mut out, origin.as_bytes());
    put_string(&mut out, message.destination.as_bytes());
    put_varint(&mut out, message.headers.len() as u64);
    for (name, value) in &message.headers {
        put_string(&mut out, name.as_bytes());
        put_string(&mut out, value.as_bytes());
    }
    put_string(&mut out, &message.body);
    match offset {
        None => out.push(0),
        Some(offset) => {
            out.push(1);
            put_varint(&mut out, offset);
        }
    }
    debug_assert_eq!(out.len(), size);
    out
}

/// Reads an envelope of any version.
pub(super) fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let mut reader = Reader { bytes };
    match reader.varint()? {
        0 => {}
        variant => return Err(DecodeError(format!("unknown variant {variant}"))),
    }
    let origin = reader.string()?;
    let destination = reader.string()?;
    let count = reader.varint()?;
    // A header takes two bytes at least: a count past that is corrupt, and must not allocate.
    if count > (reader.bytes.len() / 2) as u64 {
        return Err(DecodeError(format!("{count} headers in {} bytes", reader.bytes.len())));
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        headers.push((reader.string()?, reader.string()?));
    }
    let body = reader.blob()?.to_vec();
    let offset = match reader.byte()? {
        0 => None,
        1 => Some(reader.varint()?),
        tag => return Err(DecodeError(format!("invalid option tag {tag}"))),
    };
    Ok(Envelope::V1 { origin, destination, headers, body, offset })
}

// The layout of bincode 2 with `config::standard()`, written by hand: a node encodes an envelope
// for every message it sends through Redis and decodes one for every message it receives, and
// bincode's serde path (an output grown as it is written, a zeroed buffer for the body, serde's
// visitors) was 8.6% of a node's samples in the queue benchmark on Redis (bench/notes.md). The
// tests hold it to bincode's bytes.

/// An integer: below 251 one byte; else a marker (251, 252, 253) and the value as u16, u32 or
/// u64, little endian.
fn put_varint(out: &mut Vec<u8>, n: u64) {
    if n < 251 {
        out.push(n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(251);
        out.extend_from_slice(&n.to_le_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        out.push(252);
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

fn varint_len(n: u64) -> usize {
    match n {
        0..251 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// A string or a byte string: its length, then its bytes.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn string_len(len: usize) -> usize {
    varint_len(len as u64) + len
}

/// What is left of an envelope being read.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let left = self.bytes.len();
        match usize::try_from(n) {
            Ok(n) if n <= left => {
                let (taken, rest) = self.bytes.split_at(n);
                self.bytes = rest;
                Ok(taken)
            }
            _ => Err(DecodeError(format!("{n} bytes wanted, {left} left"))),
        }
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        fn le<const N: usize>(bytes: &[u8]) -> [u8; N] {
            bytes.try_into().expect("took N bytes")
        }
        match self.byte()? {
            n @ 0..251 => Ok(u64::from(n)),
            251 => Ok(u64::from(u16::from_le_bytes(le(self.take(2)?)))),
            252 => Ok(u64::from(u32::from_le_bytes(le(self.take(4)?)))),
            253 => Ok(u64::from_le_bytes(le(self.take(8)?))),
            marker => Err(DecodeError(format!("invalid integer marker {marker}"))),
        }
    }

    fn blob(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.blob()?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| DecodeError(e.to_string()))
    }
}

#[cfg(test)]
/// What [`encode_without_offset`] gave, completed with `offset`: the last byte (`None`) becomes
/// `Some(offset)`. The history script does the same in Lua.
pub(super) fn with_offset(encoded: &[u8], offset: u64) -> Vec<u8> {
    let mut out = encoded[..encoded.len().saturating_sub(1)].to_vec();
    out.push(1);
    put_varint(&mut out, offset);
    out
}

impl Envelope {
    pub fn origin(&self) -> &str {
        match self {
            Envelope::V1 { origin, .. } => origin,
        }
    }

    pub fn destination(&self) -> &str {
        match self {
            Envelope::V1 { destination, .. } => destination,
        }
    }

    pub fn offset(&self) -> Option<u64> {
        match self {
            Envelope::V1 { offset, .. } => *offset,
        }
    }

    /// The message it carries.
    pub fn into_message(self) -> Message {
        match self {
            Envelope::V1 { destination, headers, body, offset, .. } => {
                Message { destination: Arc::from(destination), headers, body: Bytes::from(body), offset }
            }
        }
    }
}

/// The body as one length-prefixed byte string (what serde's `bytes` is in bincode), rather than
/// a sequence of separately serialized `u8`s. Both give the same bytes; this is just faster.
mod body {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<T: AsRef<[u8]>, S: Serializer>(
        body: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(body.as_ref())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BodyVisitor)
    }

    struct BodyVisitor;

    impl<'de> Visitor<'de> for BodyVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(offset: Option<u64>) -> Message {
        Message {
            destination: Arc::from("/topic/a"),
            headers: vec![("k".to_owned(), "v".to_owned())],
            body: Bytes::from_static(b"hi"),
            offset,
        }
    }

    /// The V1 layout is frozen: a node of any later version must read these bytes.
    const PINNED_V1: &[u8] = &[
        0x00, // variant V1
        0x02, b'n', b'1', // origin
        0x08, b'/', b't', b'o', b'p', b'i', b'c', b'/', b'a', // destination
        0x01, 0x01, b'k', 0x01, b'v', // headers
        0x02, b'h', b'i', // body
        0x01, 0xfb, 0x2c, 0x01, // offset Some(300)
    ];

    #[test]
    fn v1_encoding_is_pinned() {
        assert_eq!(encode("n1", &sample(Some(300))), PINNED_V1);
        let owned = Envelope::V1 {
            origin: "n1".to_owned(),
            destination: "/topic/a".to_owned(),
            headers: vec![("k".to_owned(), "v".to_owned())],
            body: b"hi".to_vec(),
            offset: Some(300),
        };
        let encoded = bincode::serde::encode_to_vec(&owned, bincode::config::standard()).expect("encodes");
        assert_eq!(encoded, PINNED_V1, "owned and borrowed forms must agree");
        let decoded = decode(PINNED_V1).expect("pinned bytes decode");
        assert_eq!(decoded, owned);
        assert_eq!(decoded.origin(), "n1");
        assert_eq!(decoded.into_message(), sample(Some(300)));
    }

    #[test]
    fn offset_patch_matches_bincode_for_every_width() {
        let without = encode_without_offset("node-a", &sample(None));
        assert_eq!(without.last(), Some(&0));
        for offset in [0, 1, 250, 251, 255, 65_535, 65_536, u32::MAX as u64, u32::MAX as u64 + 1, u64::MAX] {
            assert_eq!(with_offset(&without, offset), encode("node-a", &sample(Some(offset))), "{offset}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            &[0x07],
            &[0x00, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &PINNED_V1[..10],
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        // A length prefix far past the data must fail without allocating it.
        let mut huge = vec![0x00, 0xfd];
        huge.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(decode(&huge).is_err());
    }

    /// Every message, encoded by hand, is what bincode makes of it, and decodes back from it.
    fn matches_bincode(origin: &str, message: &Message) {
        let owned = Envelope::V1 {
            origin: origin.to_owned(),
            destination: message.destination.to_string(),
            headers: message.headers.clone(),
            body: message.body.to_vec(),
            offset: message.offset,
        };
        let by_bincode = bincode::serde::encode_to_vec(&owned, bincode::config::standard()).expect("encodes");
        let encoded = encode(origin, message);
        assert_eq!(encoded, by_bincode);
        assert_eq!(decode(&encoded).expect("decodes"), owned);
        let (by_bincode, _) =
            bincode::serde::decode_from_slice::<Envelope, _>(&encoded, bincode::config::standard())
                .expect("decodes");
        assert_eq!(by_bincode, owned);
        for cut in 0..encoded.len() {
            assert!(decode(&encoded[..cut]).is_err(), "{cut} of {} bytes", encoded.len());
        }
    }

    #[test]
    fn every_integer_width_matches_bincode() {
        for n in [0usize, 1, 250, 251, 255, 65_535, 65_536, 70_000] {
            let message = Message {
                destination: Arc::from("d".repeat(n % 300)),
                headers: (0..n % 260).map(|i| (format!("k{i}"), "v".repeat(i))).collect(),
                body: Bytes::from(vec![7; n]),
                offset: Some(n as u64 * 65_537),
            };
            matches_bincode("node", &message);
        }
        let message = Message { offset: Some(u64::MAX), ..sample(None) };
        matches_bincode("", &message);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn any_message_matches_bincode(
            origin in ".{0,20}",
            destination in ".{0,40}",
            headers in proptest::collection::vec((".{0,12}", ".{0,300}"), 0..6),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            offset in proptest::option::of(proptest::num::u64::ANY),
        ) {
            let message = Message { destination: Arc::from(destination), headers, body: Bytes::from(body), offset };
            matches_bincode(&origin, &message);
        }
    }

    #[test]
    fn large_bodies_round_trip() {
        let mut message = sample(Some(7));
        message.body = Bytes::from(vec![0xab; 1 << 20]);
        let decoded = decode(&encode("n", &message)).expect("decodes").into_message();
        assert_eq!(decoded, message);
    }
}
