//! Frame encoding: writes a [`Frame`] to wire bytes, escaping header names and
//! values as the negotiated version requires, plus the small header helpers the
//! broker needs when building frames ([`escape_into`], [`needs_escape`]) and
//! when negotiating ([`parse_heart_beat`]).
//!
//! The encoder does not validate: it writes exactly the headers it is given
//! (no implicit `content-length`), and in raw mode (1.0, or CONNECT/STOMP/
//! CONNECTED frames) a header containing LF, CR, `:` in a name, or NUL would
//! produce a frame that does not decode to the same headers. Callers that
//! forward untrusted values into raw frames must check them with
//! [`needs_escape`] first.

use bytes::{BufMut, BytesMut};

use super::decode::ProtocolError;
use super::frame::{Frame, Version};

/// Appends the whole frame to `out`: command line, each header as
/// `name:value\n` (escaped per `version` when `Some(V1_1 | V1_2)` and the
/// command is not CONNECT/STOMP/CONNECTED; `None` or `V1_0` = raw), a blank
/// line, the body and the terminating NUL.
///
/// Writes exactly the headers given; it does NOT add `content-length` (callers
/// do, and must when the body may contain NUL bytes).
pub fn encode(frame: &Frame, version: Option<Version>, out: &mut BytesMut) {
    let escape = match version {
        Some(v) if v >= Version::V1_1 && !frame.command.is_escape_exempt() => Some(v),
        _ => None,
    };
    let command = frame.command.as_str();
    let headers_len: usize = frame.headers.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    out.reserve(command.len() + headers_len + frame.body.len() + 3);

    out.put_slice(command.as_bytes());
    out.put_u8(b'\n');
    for (name, value) in &frame.headers {
        match escape {
            Some(v) => {
                escape_into(name, v, out);
                out.put_u8(b':');
                escape_into(value, v, out);
            }
            None => {
                out.put_slice(name.as_bytes());
                out.put_u8(b':');
                out.put_slice(value.as_bytes());
            }
        }
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.put_slice(&frame.body);
    out.put_u8(0);
}

/// Appends `value` escaped for `version`: 1.0 raw; 1.1: `\` → `\\`,
/// LF → `\n`, `:` → `\c`; 1.2 additionally CR → `\r`.
pub fn escape_into(value: &str, version: Version, out: &mut BytesMut) {
    let bytes = value.as_bytes();
    if version == Version::V1_0 {
        out.put_slice(bytes);
        return;
    }
    let escape_cr = version >= Version::V1_2;
    out.reserve(bytes.len());
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let replacement: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b':' => b"\\c",
            b'\r' if escape_cr => b"\\r",
            _ => continue,
        };
        out.put_slice(&bytes[run_start..i]);
        out.put_slice(replacement);
        run_start = i + 1;
    }
    out.put_slice(&bytes[run_start..]);
}

/// True when [`escape_into`] would change `value` for some version >= 1.1,
/// i.e. it contains any of `\`, LF, CR or `:`. Such a value cannot be sent
/// as-is in a raw (1.0 or CONNECT/CONNECTED) frame.
pub fn needs_escape(value: &str) -> bool {
    value.bytes().any(|b| matches!(b, b'\\' | b'\n' | b'\r' | b':'))
}

/// Parses a `heart-beat` header value `"cx,cy"`: two non-negative decimal
/// integers in milliseconds, digits only (no sign, no whitespace).
pub fn parse_heart_beat(value: &str) -> Result<(u64, u64), ProtocolError> {
    fn number(s: &str) -> Result<u64, ProtocolError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProtocolError::InvalidHeartBeat);
        }
        s.parse().map_err(|_| ProtocolError::InvalidHeartBeat)
    }
    let (cx, cy) = value.split_once(',').ok_or(ProtocolError::InvalidHeartBeat)?;
    Ok((number(cx)?, number(cy)?))
}

#[cfg(test)]
mod tests {
    use super::super::frame::Command;
    use super::*;

    fn escaped(value: &str, v: Version) -> String {
        let mut out = BytesMut::new();
        escape_into(value, v, &mut out);
        String::from_utf8(out.to_vec()).expect("escaping keeps UTF-8")
    }

    fn encoded(frame: &Frame, v: Option<Version>) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(frame, v, &mut out);
        out.to_vec()
    }

    #[test]
    fn escape_per_version() {
        let s = "a\\b\nc:d\re";
        assert_eq!(escaped(s, Version::V1_0), s);
        assert_eq!(escaped(s, Version::V1_1), "a\\\\b\\nc\\cd\re");
        assert_eq!(escaped(s, Version::V1_2), "a\\\\b\\nc\\cd\\re");
        assert_eq!(escaped("plain", Version::V1_2), "plain");
        assert_eq!(escaped("", Version::V1_2), "");
        assert_eq!(escaped("::", Version::V1_1), "\\c\\c");
        assert_eq!(escaped("é:ü", Version::V1_2), "é\\cü");
    }

    #[test]
    fn escape_appends() {
        let mut out = BytesMut::from(&b"x="[..]);
        escape_into("a:b", Version::V1_2, &mut out);
        assert_eq!(&out[..], b"x=a\\cb");
    }

    #[test]
    fn needs_escape_detects_each_special() {
        assert!(!needs_escape("plain value with spaces/é"));
        assert!(!needs_escape(""));
        for s in ["\\", "\n", "\r", ":", "a:b"] {
            assert!(needs_escape(s), "{s:?}");
        }
    }

    #[test]
    fn encode_layout_raw() {
        let f = Frame::new(Command::Send)
            .with_header("destination", "/q/a")
            .with_header("content-type", "text/plain")
            .with_body(&b"hello"[..]);
        assert_eq!(encoded(&f, None), b"SEND\ndestination:/q/a\ncontent-type:text/plain\n\nhello\0");
        assert_eq!(encoded(&f, Some(Version::V1_0)), encoded(&f, None));
    }

    #[test]
    fn encode_no_headers_no_body() {
        assert_eq!(encoded(&Frame::new(Command::Disconnect), Some(Version::V1_2)), b"DISCONNECT\n\n\0");
    }

    #[test]
    fn encode_escapes_for_1_1_and_1_2() {
        let f = Frame::new(Command::Message).with_header("k:ey", "v\r\n\\");
        assert_eq!(encoded(&f, Some(Version::V1_2)), b"MESSAGE\nk\\cey:v\\r\\n\\\\\n\n\0");
        assert_eq!(encoded(&f, Some(Version::V1_1)), b"MESSAGE\nk\\cey:v\r\\n\\\\\n\n\0");
        assert_eq!(encoded(&f, Some(Version::V1_0)), b"MESSAGE\nk:ey:v\r\n\\\n\n\0");
    }

    #[test]
    fn encode_connect_frames_are_never_escaped() {
        for cmd in [Command::Connect, Command::Stomp, Command::Connected] {
            let f = Frame::new(cmd).with_header("host", "a:b\\c");
            let mut expected = cmd.as_str().as_bytes().to_vec();
            expected.extend_from_slice(b"\nhost:a:b\\c\n\n\0");
            assert_eq!(encoded(&f, Some(Version::V1_2)), expected);
        }
    }

    #[test]
    fn encode_does_not_add_content_length() {
        let f = Frame::new(Command::Send).with_body(&b"a\0b"[..]);
        assert_eq!(encoded(&f, Some(Version::V1_2)), b"SEND\n\na\0b\0");
    }

    #[test]
    fn encode_appends_to_existing_output() {
        let mut out = BytesMut::from(&b"\n"[..]);
        encode(&Frame::new(Command::Receipt), None, &mut out);
        assert_eq!(&out[..], b"\nRECEIPT\n\n\0");
    }

    #[test]
    fn heart_beat_parsing() {
        assert_eq!(parse_heart_beat("0,0"), Ok((0, 0)));
        assert_eq!(parse_heart_beat("10000,250"), Ok((10000, 250)));
        assert_eq!(parse_heart_beat("18446744073709551615,1"), Ok((u64::MAX, 1)));
        for bad in [
            "",
            ",",
            "1,",
            ",1",
            "1",
            "1,2,3",
            "-1,0",
            "+1,0",
            " 1,0",
            "1, 0",
            "a,b",
            "1.5,0",
            "18446744073709551616,0",
        ] {
            assert_eq!(parse_heart_beat(bad), Err(ProtocolError::InvalidHeartBeat), "{bad:?}");
        }
        assert_eq!(ProtocolError::InvalidHeartBeat.to_string(), "invalid heart-beat header");
    }
}
