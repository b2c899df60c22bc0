//! The envelope: how one message travels between nodes and how it is stored in Redis.
//!
//! Every message on a pub/sub channel, in a history stream and in a queue stream is one
//! [`Envelope`], serialized with serde and bincode 2 (`config::standard()`: variable-length
//! integers, little endian). The enum's variant index is the version: a node must keep decoding
//! every variant it ever wrote, and a new layout is a new variant, never a change to `V1`.
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

/// The same layout as [`Envelope`], borrowing from a [`Message`]: encoding it gives the bytes the
/// owned form would, without copying the body first.
#[derive(Serialize)]
#[serde(rename = "Envelope")]
enum EnvelopeRef<'a> {
    V1 {
        origin: &'a str,
        destination: &'a str,
        headers: &'a [(String, String)],
        #[serde(serialize_with = "body::serialize")]
        body: &'a [u8],
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

/// Encoding never allocates beyond the output; decoding refuses any length prefix above this, so
/// a corrupt prefix cannot make the node allocate gigabytes.
const DECODE_LIMIT: usize = 1 << 30;

/// Encodes `message` as a V1 envelope from `origin`, with the offset the message carries.
pub(super) fn encode(origin: &str, message: &Message) -> Vec<u8> {
    encode_parts(origin, message, message.offset)
}

/// Encodes `message` with `offset: None`, the form a history script completes.
pub(super) fn encode_without_offset(origin: &str, message: &Message) -> Vec<u8> {
    encode_parts(origin, message, None)
}

fn encode_parts(origin: &str, message: &Message, offset: Option<u64>) -> Vec<u8> {
    let envelope = EnvelopeRef::V1 {
        origin,
        destination: &message.destination,
        headers: &message.headers,
        body: &message.body,
        offset,
    };
    // Writing into a Vec cannot fail; an empty envelope would only be refused when read.
    bincode::serde::encode_to_vec(&envelope, bincode::config::standard()).unwrap_or_default()
}

/// Reads an envelope of any version.
pub(super) fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let config = bincode::config::standard().with_limit::<DECODE_LIMIT>();
    bincode::serde::decode_from_slice::<Envelope, _>(bytes, config)
        .map(|(envelope, _)| envelope)
        .map_err(|e| DecodeError(e.to_string()))
}

#[cfg(test)]
/// What [`encode_without_offset`] gave, completed with `offset`: the last byte (`None`) becomes
/// `Some(offset)`. The history script does the same in Lua.
pub(super) fn with_offset(encoded: &[u8], offset: u64) -> Vec<u8> {
    let mut out = encoded[..encoded.len().saturating_sub(1)].to_vec();
    out.push(1);
    // bincode's varint: one byte below 251, else a marker byte and the value little endian.
    if offset < 251 {
        out.push(offset as u8);
    } else if let Ok(v) = u16::try_from(offset) {
        out.push(251);
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Ok(v) = u32::try_from(offset) {
        out.push(252);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&offset.to_le_bytes());
    }
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

    #[test]
    fn large_bodies_round_trip() {
        let mut message = sample(Some(7));
        message.body = Bytes::from(vec![0xab; 1 << 20]);
        let decoded = decode(&encode("n", &message)).expect("decodes").into_message();
        assert_eq!(decoded, message);
    }
}
