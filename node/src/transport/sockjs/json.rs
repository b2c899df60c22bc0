//! SockJS's JSON, both ways. Out: each STOMP frame is one JSON string, escaped beyond JSON's own
//! rules as the SockJS protocol asks (characters that browsers or proxies mangle:
//! `U+200C..U+200F`, `U+2028..U+202F`, `U+2060..U+206F`, `U+FFF0..U+FFFF`). In: clients send
//! arrays of JSON strings (`["CONNECT\n...\u0000"]`); [`Strings`] decodes them incrementally into
//! the STOMP byte stream the reader decodes, so a WebSocket message may hold any part of an array
//! and no message is ever buffered whole.

use bytes::{BufMut, BytesMut};

/// Appends `text` as a JSON string literal, quotes included, with SockJS's escapes.
pub(super) fn put_string(out: &mut BytesMut, text: &str) {
    out.put_u8(b'"');
    put_escaped(out, text);
    out.put_u8(b'"');
}

/// Appends the inside of a JSON string literal for `text` (no quotes).
pub(super) fn put_escaped(out: &mut BytesMut, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    let mut plain = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (width, escape) = if b < 0x80 {
            (1, b < 0x20 || b == b'"' || b == b'\\')
        } else {
            let c = text[i..].chars().next().expect("a char starts at a non-continuation byte");
            (c.len_utf8(), escaped_by_server(c))
        };
        if escape {
            out.extend_from_slice(&bytes[plain..i]);
            let c = text[i..].chars().next().expect("char");
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c => put_unicode_escape(out, c as u32),
            }
            plain = i + width;
        }
        i += width;
    }
    out.extend_from_slice(&bytes[plain..]);
}

/// Appends one STOMP frame (`head` then `tail`) to `batch` as a JSON string, after a comma
/// when `batch` holds frames already: the inside of an `a[...]` frame. SockJS carries text only:
/// bytes that are not UTF-8 (a binary body's) arrive as U+FFFD (docs/protocol.md).
pub(super) fn push_frame(batch: &mut BytesMut, head: &[u8], tail: &[u8]) {
    if !batch.is_empty() {
        batch.extend_from_slice(b",");
    }
    batch.extend_from_slice(b"\"");
    for part in [head, tail] {
        match std::str::from_utf8(part) {
            Ok(text) => put_escaped(batch, text),
            Err(_) => put_escaped(batch, &String::from_utf8_lossy(part)),
        }
    }
    batch.extend_from_slice(b"\"");
}

fn put_unicode_escape(out: &mut BytesMut, code: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.put_u8(HEX[((code >> shift) & 0xf) as usize]);
    }
}

/// Characters above U+007F the SockJS protocol has servers escape.
fn escaped_by_server(c: char) -> bool {
    matches!(c, '\u{200c}'..='\u{200f}' | '\u{2028}'..='\u{202f}' | '\u{2060}'..='\u{206f}' | '\u{fff0}'..='\u{ffff}')
}

/// Why client input is not what SockJS allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("broken SockJS JSON encoding: {0}")]
pub(super) struct BrokenJson(pub(super) &'static str);

/// Where [`Strings`] is in its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages: an array (`[`) or a lone string (`"`) may start.
    Between,
    /// After `[`: a string or `]`.
    ArrayStart,
    /// After `,` in an array: a string.
    NextString,
    /// After a string in an array: `,` or `]`.
    AfterString,
    /// Inside a string; `top` when it is a lone string, not in an array.
    InString {
        top: bool,
    },
    Escape {
        top: bool,
    },
    /// `\u` and the hex digits so far.
    Unicode {
        top: bool,
        digits: u8,
        value: u16,
    },
}

/// Decodes a stream of SockJS client messages (JSON arrays of strings, or lone strings),
/// appending each string's text to the output: STOMP bytes.
#[derive(Debug)]
pub(super) struct Strings {
    state: State,
    /// A high surrogate waiting for its low half (`\ud83d\ude00`).
    high: Option<u16>,
}

impl Default for Strings {
    fn default() -> Strings {
        Strings { state: State::Between, high: None }
    }
}

impl Strings {
    /// True between messages: everything given so far was whole arrays or strings.
    pub(super) fn is_between(&self) -> bool {
        self.state == State::Between
    }

    /// Decodes `input`, appending string contents to `out`. The state carries over to the next
    /// call, so input may be cut anywhere.
    pub(super) fn decode(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), BrokenJson> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Between | State::ArrayStart | State::NextString | State::AfterString
                    if matches!(b, b' ' | b'\t' | b'\n' | b'\r') => {}
                State::Between => match b {
                    b'[' => self.state = State::ArrayStart,
                    b'"' => self.state = State::InString { top: true },
                    _ => return Err(BrokenJson("expected an array of strings")),
                },
                State::ArrayStart => match b {
                    b'"' => self.state = State::InString { top: false },
                    b']' => self.state = State::Between,
                    _ => return Err(BrokenJson("expected a string in the array")),
                },
                State::NextString => match b {
                    b'"' => self.state = State::InString { top: false },
                    _ => return Err(BrokenJson("expected a string after a comma")),
                },
                State::AfterString => match b {
                    b',' => self.state = State::NextString,
                    b']' => self.state = State::Between,
                    _ => return Err(BrokenJson("expected a comma or the array's end")),
                },
                State::InString { top } => {
                    if self.high.is_some() && b != b'\\' {
                        return Err(BrokenJson("a lone UTF-16 surrogate"));
                    }
                    match b {
                        b'"' => self.state = if top { State::Between } else { State::AfterString },
                        b'\\' => self.state = State::Escape { top },
                        0..0x20 => return Err(BrokenJson("a control character in a string")),
                        _ => {
                            // A run of plain bytes at once.
                            let run = input[i..]
                                .iter()
                                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                                .unwrap_or(input.len() - i);
                            out.extend_from_slice(&input[i..i + run]);
                            i += run;
                            continue;
                        }
                    }
                }
                State::Escape { top } => {
                    if self.high.is_some() && b != b'u' {
                        return Err(BrokenJson("a lone UTF-16 surrogate"));
                    }
                    let plain = match b {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            self.state = State::Unicode { top, digits: 0, value: 0 };
                            i += 1;
                            continue;
                        }
                        _ => return Err(BrokenJson("an unknown escape")),
                    };
                    out.put_u8(plain);
                    self.state = State::InString { top };
                }
                State::Unicode { top, digits, value } => {
                    let digit = (b as char).to_digit(16).ok_or(BrokenJson("a bad \\u escape"))? as u16;
                    let value = value << 4 | digit;
                    if digits < 3 {
                        self.state = State::Unicode { top, digits: digits + 1, value };
                    } else {
                        self.unicode(value, out)?;
                        self.state = State::InString { top };
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }

    /// A whole `\uXXXX`: a character, or half of a surrogate pair.
    fn unicode(&mut self, unit: u16, out: &mut BytesMut) -> Result<(), BrokenJson> {
        let code = match (self.high.take(), unit) {
            (None, 0xd800..=0xdbff) => {
                self.high = Some(unit);
                return Ok(());
            }
            (Some(high), 0xdc00..=0xdfff) => {
                0x10000 + ((u32::from(high) - 0xd800) << 10) + (u32::from(unit) - 0xdc00)
            }
            (None, 0xdc00..=0xdfff) | (Some(_), _) => return Err(BrokenJson("a lone UTF-16 surrogate")),
            (None, unit) => u32::from(unit),
        };
        let c = char::from_u32(code).ok_or(BrokenJson("not a character"))?;
        let mut utf8 = [0; 4];
        out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        Ok(())
    }
}

/// Decodes one whole client payload (an `xhr_send` body): every string's text, or why not.
pub(super) fn decode_all(payload: &[u8]) -> Result<BytesMut, BrokenJson> {
    let mut strings = Strings::default();
    let mut out = BytesMut::with_capacity(payload.len());
    strings.decode(payload, &mut out)?;
    if !strings.is_between() {
        return Err(BrokenJson("the payload ends inside an array or string"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn encoded(text: &str) -> String {
        let mut out = BytesMut::new();
        put_string(&mut out, text);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn frames_are_json_strings_with_sockjs_escapes() {
        assert_eq!(
            encoded("MESSAGE\ndestination:/topic/a\n\nhi\0"),
            r#""MESSAGE\ndestination:/topic/a\n\nhi\u0000""#
        );
        assert_eq!(encoded("q\"b\\s\t\r"), r#""q\"b\\s\t\r""#);
        assert_eq!(encoded("é€😀"), "\"é€😀\"", "other non-ASCII goes as it is");
        assert_eq!(
            encoded("\u{2028}\u{200c}\u{206f}\u{fff0}\u{ffff}"),
            r#""\u2028\u200c\u206f\ufff0\uffff""#
        );
        assert_eq!(encoded("\u{1f}\u{7f}"), "\"\\u001f\u{7f}\"");
    }

    #[test]
    fn arrays_and_lone_strings_decode_to_their_text() {
        let mut out = BytesMut::new();
        let mut strings = Strings::default();
        strings.decode(br#" ["a\u0000", "b\n\"\\\/" ] "c" [] ["\ud83d\ude00\u00e9"]"#, &mut out).unwrap();
        assert!(strings.is_between());
        assert_eq!(&out[..], "a\0b\n\"\\/c😀é".as_bytes());
    }

    #[test]
    fn broken_input_is_refused() {
        for bad in [
            &b"x"[..],
            b"[1]",
            b"[\"a\" \"b\"]",
            b"[\"\\x\"]",
            b"[\"\\u12g4\"]",
            b"[\"\\udc00\"]",
            b"[\"\\ud800x\"]",
            b"[\"\\ud800\\n\"]",
            b"[\"\x01\"]",
            b"[,]",
            b"{}",
        ] {
            assert!(
                Strings::default().decode(bad, &mut BytesMut::new()).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            decode_all(b"[\"a").unwrap_err(),
            BrokenJson("the payload ends inside an array or string")
        );
        assert!(decode_all(b"[\"a\"]").is_ok());
    }

    proptest! {
        /// Whatever a frame holds, encoding then decoding gives it back, however the encoded
        /// bytes are cut into messages; and serde_json reads what we write.
        #[test]
        fn encoding_round_trips_in_any_pieces(text in any::<String>(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4)) {
            let mut wire = BytesMut::from(&b"["[..]);
            put_string(&mut wire, &text);
            wire.extend_from_slice(b",");
            put_string(&mut wire, "x");
            wire.extend_from_slice(b"]");
            let parsed: Vec<String> = serde_json::from_slice(&wire).unwrap();
            prop_assert_eq!(&parsed, &vec![text.clone(), "x".to_owned()]);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let mut strings = Strings::default();
            let mut out = BytesMut::new();
            let mut from = 0;
            for at in points.into_iter().chain([wire.len()]) {
                strings.decode(&wire[from..at], &mut out).unwrap();
                from = at;
            }
            prop_assert!(strings.is_between());
            let expected = format!("{text}x");
            prop_assert_eq!(&out[..], expected.as_bytes());
        }

        /// What serde_json writes (as sockjs-client's JSON.stringify would), we read.
        #[test]
        fn standard_json_decodes(texts in proptest::collection::vec(any::<String>(), 0..4)) {
            let wire = serde_json::to_vec(&texts).unwrap();
            let expected = texts.concat();
            prop_assert_eq!(&decode_all(&wire).unwrap()[..], expected.as_bytes());
        }
    }
}
