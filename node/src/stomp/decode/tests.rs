//! Tests of `decode.rs`.

use super::*;

fn decoder(version: Option<Version>) -> Decoder {
    let mut d = Decoder::new(Limits::default());
    if let Some(v) = version {
        d.set_version(v);
    }
    d
}

/// Decodes everything in `input` (fed whole) until more bytes are needed.
fn decode_all(d: &mut Decoder, input: &[u8]) -> (Vec<Decoded>, Option<ProtocolError>, BytesMut) {
    let mut buf = BytesMut::from(input);
    let mut items = Vec::new();
    loop {
        match d.decode(&mut buf) {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, None, buf),
            Err(e) => return (items, Some(e), buf),
        }
    }
}

/// Feeds `input` one byte at a time.
fn decode_bytewise(d: &mut Decoder, input: &[u8]) -> (Vec<Decoded>, Option<ProtocolError>) {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for &b in input {
        buf.extend_from_slice(&[b]);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => return (items, Some(e)),
            }
        }
    }
    (items, None)
}

fn one_frame(version: Option<Version>, input: &[u8]) -> Frame {
    let (items, err, rest) = decode_all(&mut decoder(version), input);
    assert_eq!(err, None);
    assert!(rest.is_empty(), "left over: {rest:?}");
    match items.as_slice() {
        [Decoded::Frame(f)] => f.clone(),
        other => panic!("expected one frame, got {other:?}"),
    }
}

fn error_of(d: &mut Decoder, input: &[u8]) -> ProtocolError {
    let (_, err, _) = decode_all(d, input);
    err.expect("expected an error")
}

fn small_limits() -> Limits {
    Limits { max_frame_bytes: 64, max_body_bytes: 16, max_headers: 2, max_header_line: 12 }
}

#[test]
fn default_limits() {
    let l = Limits::default();
    assert_eq!(l.max_frame_bytes, 1_114_112);
    assert_eq!(l.max_body_bytes, 1_048_576);
    assert_eq!(l.max_headers, 64);
    assert_eq!(l.max_header_line, 8192);
}

#[test]
fn version_starts_unset() {
    let mut d = Decoder::new(Limits::default());
    assert_eq!(d.version(), None);
    d.set_version(Version::V1_1);
    assert_eq!(d.version(), Some(Version::V1_1));
}

#[test]
fn decodes_simple_send() {
    let f = one_frame(None, b"SEND\ndestination:/queue/a\n\nhello\0");
    assert_eq!(f, Frame::new(Command::Send).with_header("destination", "/queue/a").with_body(&b"hello"[..]));
}

#[test]
fn decodes_crlf_lines() {
    let f = one_frame(Some(Version::V1_2), b"SEND\r\ndestination:/queue/a\r\nx:y\r\n\r\nbody\r\n\0");
    assert_eq!(f.command, Command::Send);
    assert_eq!(f.headers, [("destination".into(), "/queue/a".into()), ("x".into(), "y".into())]);
    // The body is untouched, CRLF included.
    assert_eq!(&f.body[..], b"body\r\n");
}

#[test]
fn only_one_trailing_cr_is_stripped() {
    let f = one_frame(None, b"SEND\nx:y\r\r\n\n\0");
    assert_eq!(f.get("x"), Some("y\r"));
    let f = one_frame(Some(Version::V1_2), b"SEND\nx:a\rb\n\n\0");
    assert_eq!(f.get("x"), Some("a\rb"));
}

#[test]
fn heartbeats_between_frames() {
    let (items, err, rest) = decode_all(
        &mut decoder(Some(Version::V1_2)),
        b"\n\r\nSEND\n\nA\0\n\n\r\nRECEIPT\nreceipt-id:1\n\n\0\r\n",
    );
    assert_eq!(err, None);
    assert!(rest.is_empty());
    assert_eq!(
        items,
        [
            Decoded::Heartbeat,
            Decoded::Heartbeat,
            Decoded::Frame(Frame::new(Command::Send).with_body(&b"A"[..])),
            Decoded::Heartbeat,
            Decoded::Heartbeat,
            Decoded::Heartbeat,
            Decoded::Frame(Frame::new(Command::Receipt).with_header("receipt-id", "1")),
            Decoded::Heartbeat,
        ]
    );
}

#[test]
fn lone_cr_waits_for_next_byte() {
    let mut d = decoder(None);
    let mut buf = BytesMut::from(&b"\r"[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(&buf[..], b"\r");
    buf.extend_from_slice(b"\n");
    assert_eq!(d.decode(&mut buf), Ok(Some(Decoded::Heartbeat)));
    assert!(buf.is_empty());
}

#[test]
fn cr_not_followed_by_lf_starts_a_frame() {
    let mut d = decoder(None);
    assert_eq!(error_of(&mut d, b"\rSEND\n\n\0"), ProtocolError::UnknownCommand("\\rSEND".into()));
}

#[test]
fn bytes_after_nul_are_left_in_buffer() {
    let mut d = decoder(None);
    let mut buf = BytesMut::from(&b"SEND\n\nabc\0SUBSCR"[..]);
    let item = d.decode(&mut buf).unwrap();
    assert_eq!(item, Some(Decoded::Frame(Frame::new(Command::Send).with_body(&b"abc"[..]))));
    assert_eq!(&buf[..], b"SUBSCR");
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(&buf[..], b"SUBSCR");
    buf.extend_from_slice(b"IBE\nid:1\n\n\0");
    let f = d.decode(&mut buf).unwrap();
    assert_eq!(f, Some(Decoded::Frame(Frame::new(Command::Subscribe).with_header("id", "1"))));
    assert!(buf.is_empty());
}

#[test]
fn incomplete_frame_is_not_consumed() {
    let mut d = decoder(None);
    let input = b"SEND\ndestination:/q\n\npartial";
    let mut buf = BytesMut::from(&input[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(&buf[..], input);
}

#[test]
fn content_length_body_may_contain_nuls() {
    let f = one_frame(Some(Version::V1_2), b"SEND\ncontent-length:5\ndestination:/q\n\na\0b\0c\0");
    assert_eq!(&f.body[..], b"a\0b\0c");
    assert_eq!(f.get("content-length"), Some("5"));
}

#[test]
fn content_length_zero_and_bytewise() {
    let input = b"SEND\ncontent-length:0\n\n\0SEND\ncontent-length:3\n\n\0\0\0\0";
    let (whole, err, _) = decode_all(&mut decoder(None), input);
    assert_eq!(err, None);
    let (bytewise, err) = decode_bytewise(&mut decoder(None), input);
    assert_eq!(err, None);
    assert_eq!(whole, bytewise);
    assert_eq!(whole.len(), 2);
    let Decoded::Frame(f) = &whole[1] else { panic!("not a frame") };
    assert_eq!(&f.body[..], b"\0\0\0");
}

#[test]
fn content_length_must_be_followed_by_nul() {
    let mut d = decoder(None);
    assert_eq!(error_of(&mut d, b"SEND\ncontent-length:2\n\nabc\0"), ProtocolError::BodyNotTerminated);
    assert_eq!(ProtocolError::BodyNotTerminated.to_string(), "frame body not terminated by NUL");
}

#[test]
fn content_length_must_be_decimal() {
    for bad in ["", "abc", "-1", "+5", " 5", "5 ", "0x10", "1.0", "５"] {
        let input = format!("SEND\ncontent-length:{bad}\n\n\0");
        assert_eq!(
            error_of(&mut decoder(None), input.as_bytes()),
            ProtocolError::InvalidContentLength,
            "{bad:?}"
        );
    }
    assert_eq!(ProtocolError::InvalidContentLength.to_string(), "invalid content-length");
}

#[test]
fn content_length_overflow_is_too_large() {
    let mut d = decoder(None);
    assert_eq!(
        error_of(&mut d, b"SEND\ncontent-length:99999999999999999999999999999\n"),
        ProtocolError::BodyTooLarge { max: 1_048_576 }
    );
}

#[test]
fn first_content_length_wins() {
    let f = one_frame(None, b"SEND\ncontent-length:1\ncontent-length:bogus\n\n\0\0");
    assert_eq!(&f.body[..], b"\0");
    assert_eq!(f.get("content-length"), Some("1"));
    assert_eq!(f.headers.len(), 2);
}

#[test]
fn content_length_over_limit_fails_before_body_arrives() {
    let limits = Limits { max_header_line: 100, ..small_limits() };
    let mut d = Decoder::new(limits);
    // Only the header line is buffered: the error comes at once.
    assert_eq!(error_of(&mut d, b"SEND\ncontent-length:17\n"), ProtocolError::BodyTooLarge { max: 16 });
    // At the limit is fine.
    let (items, err, _) =
        decode_all(&mut Decoder::new(limits), b"SEND\ncontent-length:16\n\n0123456789abcdef\0");
    assert_eq!(err, None);
    assert_eq!(items.len(), 1);
}

#[test]
fn content_length_over_frame_limit_fails_at_blank_line() {
    let limits = Limits { max_frame_bytes: 40, max_body_bytes: 100, max_headers: 8, max_header_line: 100 };
    // 24 bytes of head + 16 body + NUL = 41 > 40.
    let head = b"SEND\ncontent-length:16\n\n";
    assert_eq!(head.len(), 24);
    assert_eq!(error_of(&mut Decoder::new(limits), head), ProtocolError::FrameTooLarge { max: 40 });
    // 15 bytes of body: exactly 40, accepted.
    let mut ok = b"SEND\ncontent-length:15\n\n".to_vec();
    ok.extend_from_slice(&[b'x'; 15]);
    ok.push(0);
    assert_eq!(ok.len(), 40);
    let (items, err, _) = decode_all(&mut Decoder::new(limits), &ok);
    assert_eq!(err, None);
    assert_eq!(items.len(), 1);
}

#[test]
fn unescaping_in_1_2() {
    let f = one_frame(Some(Version::V1_2), b"MESSAGE\nk\\cey:a\\\\b\\nc\\cd\\re\n\n\0");
    assert_eq!(f.headers, [("k:ey".into(), "a\\b\nc:d\re".into())]);
}

#[test]
fn unescaping_in_1_1_accepts_cr_escape() {
    let f = one_frame(Some(Version::V1_1), b"SEND\nx:a\\nb\\cc\\\\d\\re\n\n\0");
    assert_eq!(f.get("x"), Some("a\nb:c\\d\re"));
}

#[test]
fn no_unescaping_in_1_0_or_before_negotiation() {
    for v in [None, Some(Version::V1_0)] {
        let f = one_frame(v, b"SEND\nx:a\\nb\\tc\\\n\n\0");
        assert_eq!(f.get("x"), Some("a\\nb\\tc\\"));
    }
}

#[test]
fn connect_frames_are_never_unescaped() {
    for cmd in ["CONNECT", "STOMP", "CONNECTED"] {
        let input = format!("{cmd}\nlogin:a\\tb\\c\n\n\0");
        let f = one_frame(Some(Version::V1_2), input.as_bytes());
        assert_eq!(f.get("login"), Some("a\\tb\\c"), "{cmd}");
    }
}

#[test]
fn unknown_escape_is_an_error() {
    let mut d = decoder(Some(Version::V1_2));
    let err = error_of(&mut d, b"SEND\nx:a\\tb\n\n\0");
    assert_eq!(err, ProtocolError::InvalidEscape("\\t".into()));
    assert_eq!(err.to_string(), "invalid escape sequence \"\\t\" in header");
    // In a header name too.
    assert_eq!(error_of(&mut d, b"SEND\n\\x:1\n\n\0"), ProtocolError::InvalidEscape("\\x".into()));
}

#[test]
fn trailing_backslash_is_an_error() {
    let mut d = decoder(Some(Version::V1_1));
    assert_eq!(error_of(&mut d, b"SEND\nx:ab\\\n\n\0"), ProtocolError::InvalidEscape("\\".into()));
}

#[test]
fn escape_error_quotes_non_ascii_and_controls_safely() {
    let mut d = decoder(Some(Version::V1_2));
    assert_eq!(error_of(&mut d, "SEND\nx:\\é\n\n\0".as_bytes()), ProtocolError::InvalidEscape("\\é".into()));
    assert_eq!(error_of(&mut d, b"SEND\nx:\\\x01\n\n\0"), ProtocolError::InvalidEscape("\\\\u{1}".into()));
}

#[test]
fn unknown_command_is_quoted_and_truncated() {
    let mut d = decoder(None);
    let err = error_of(&mut d, b"FOO\n\n\0");
    assert_eq!(err, ProtocolError::UnknownCommand("FOO".into()));
    assert_eq!(err.to_string(), "unknown command \"FOO\"");
    assert_eq!(error_of(&mut d, b"send\n\n\0"), ProtocolError::UnknownCommand("send".into()));
    let long = "X".repeat(100);
    assert_eq!(
        error_of(&mut d, format!("{long}\n\n\0").as_bytes()),
        ProtocolError::UnknownCommand("X".repeat(32))
    );
    // Not UTF-8: still an unknown command, quoted lossily.
    assert_eq!(error_of(&mut d, b"\xffSEND\n\n\0"), ProtocolError::UnknownCommand("\u{fffd}SEND".into()));
}

#[test]
fn unknown_command_fails_before_headers() {
    let mut d = decoder(None);
    assert_eq!(error_of(&mut d, b"GET / HTTP/1.1\n"), ProtocolError::UnknownCommand("GET / HTTP/1.1".into()));
}

#[test]
fn header_without_colon_is_an_error() {
    let mut d = decoder(None);
    let err = error_of(&mut d, b"SEND\nnocolon\n\n\0");
    assert_eq!(err, ProtocolError::MissingColon);
    assert_eq!(err.to_string(), "malformed header line (no ':')");
}

#[test]
fn header_with_empty_name_is_an_error() {
    let mut d = decoder(None);
    let err = error_of(&mut d, b"SEND\n:value\n\n\0");
    assert_eq!(err, ProtocolError::EmptyHeaderName);
    assert_eq!(err.to_string(), "malformed header line (empty name)");
}

#[test]
fn header_split_at_first_colon_and_not_trimmed() {
    let f = one_frame(None, b"SEND\nurl:http://x:80/\n spaced : v \nempty:\n\n\0");
    assert_eq!(
        f.headers,
        [
            ("url".into(), "http://x:80/".into()),
            (" spaced ".into(), " v ".into()),
            ("empty".into(), "".into()),
        ]
    );
}

#[test]
fn invalid_utf8_is_an_error() {
    for input in [&b"SEND\nx\xff:1\n\n\0"[..], &b"SEND\nx:\xc3\n\n\0"[..]] {
        for v in [None, Some(Version::V1_2)] {
            let err = error_of(&mut decoder(v), input);
            assert_eq!(err, ProtocolError::InvalidUtf8);
        }
    }
    assert_eq!(ProtocolError::InvalidUtf8.to_string(), "header is not valid UTF-8");
    // Non-ASCII UTF-8 is fine.
    let f = one_frame(None, "SEND\nnäme:välue\n\n\0".as_bytes());
    assert_eq!(f.get("näme"), Some("välue"));
}

#[test]
fn body_need_not_be_utf8() {
    let f = one_frame(None, b"SEND\n\n\xff\xfe\0");
    assert_eq!(&f.body[..], b"\xff\xfe");
}

#[test]
fn nul_in_headers_is_an_error() {
    let mut d = decoder(None);
    assert_eq!(error_of(&mut d, b"DISCONNECT\0"), ProtocolError::NulInHeaders);
    assert_eq!(error_of(&mut d, b"SEND\nx:a\0b\n\n\0"), ProtocolError::NulInHeaders);
}

#[test]
fn repeated_headers_kept_first_wins() {
    let f = one_frame(Some(Version::V1_2), b"MESSAGE\nfoo:World\nfoo:Hello\nbar:1\n\n\0");
    assert_eq!(f.get("foo"), Some("World"));
    assert_eq!(
        f.headers,
        [("foo".into(), "World".into()), ("foo".into(), "Hello".into()), ("bar".into(), "1".into()),]
    );
}

#[test]
fn server_frames_decode() {
    let input: &[u8] = b"CONNECTED\nversion:1.2\nheart-beat:0,0\nserver:stampede/0.1\n\n\0\
MESSAGE\nsubscription:0\nmessage-id:7\ndestination:/queue/a\ncontent-type:text/plain\n\nhi\0\
RECEIPT\nreceipt-id:77\n\n\0\
ERROR\nmessage:malformed frame received\ncontent-length:3\n\nbad\0";
    let (items, err, rest) = decode_all(&mut decoder(Some(Version::V1_2)), input);
    assert_eq!(err, None);
    assert!(rest.is_empty());
    let frames: Vec<Frame> = items
        .into_iter()
        .map(|i| match i {
            Decoded::Frame(f) => f,
            Decoded::Heartbeat => panic!("unexpected heart-beat"),
        })
        .collect();
    let commands: Vec<Command> = frames.iter().map(|f| f.command).collect();
    assert_eq!(commands, [Command::Connected, Command::Message, Command::Receipt, Command::Error]);
    assert_eq!(frames[0].get("version"), Some("1.2"));
    assert_eq!(frames[1].get("message-id"), Some("7"));
    assert_eq!(&frames[1].body[..], b"hi");
    assert_eq!(frames[2].get("receipt-id"), Some("77"));
    assert_eq!(frames[3].get("message"), Some("malformed frame received"));
    assert_eq!(&frames[3].body[..], b"bad");
}

#[test]
fn every_command_decodes() {
    for cmd in Command::ALL {
        let input = format!("{}\n\n\0", cmd.as_str());
        assert_eq!(one_frame(Some(Version::V1_2), input.as_bytes()).command, cmd);
    }
}

#[test]
fn too_many_headers_complete_and_incomplete() {
    let complete = b"SEND\na:1\nb:2\nc:3\n\n\0";
    let incomplete = b"SEND\na:1\nb:2\nc:3\n";
    for input in [&complete[..], &incomplete[..]] {
        let mut d = Decoder::new(small_limits());
        let err = error_of(&mut d, input);
        assert_eq!(err, ProtocolError::TooManyHeaders { max: 2 });
        assert_eq!(err.to_string(), "too many headers (max-headers is 2)");
    }
    let (items, err, _) = decode_all(&mut Decoder::new(small_limits()), b"SEND\na:1\nb:2\n\n\0");
    assert_eq!(err, None);
    assert_eq!(items.len(), 1);
    // Repeats count.
    let mut d = Decoder::new(small_limits());
    assert_eq!(error_of(&mut d, b"SEND\na:1\na:1\na:1\n"), ProtocolError::TooManyHeaders { max: 2 });
}

#[test]
fn header_line_too_long_complete() {
    // max_header_line = 12
    let mut d = Decoder::new(small_limits());
    let err = error_of(&mut d, b"SEND\nabcdef:123456\n\n\0");
    assert_eq!(err, ProtocolError::HeaderLineTooLong { max: 12 });
    assert_eq!(err.to_string(), "header line exceeds max-header-length (12 bytes)");
    // Exactly 12, with either line ending, is accepted.
    for input in [&b"SEND\nabcdef:12345\n\n\0"[..], b"SEND\r\nabcdef:12345\r\n\r\n\0"] {
        let (items, err, _) = decode_all(&mut Decoder::new(small_limits()), input);
        assert_eq!(err, None);
        assert_eq!(items.len(), 1);
    }
    // The command line is limited too.
    let mut d = Decoder::new(Limits { max_header_line: 3, ..small_limits() });
    assert_eq!(error_of(&mut d, b"SEND\n\n\0"), ProtocolError::HeaderLineTooLong { max: 3 });
}

#[test]
fn header_line_too_long_incomplete() {
    // 13 bytes of one line, no LF yet.
    let mut d = Decoder::new(small_limits());
    assert_eq!(error_of(&mut d, b"SEND\nabcdef:123456"), ProtocolError::HeaderLineTooLong { max: 12 });
    // 12 bytes + CR might still be a CRLF-terminated 12-byte line: wait.
    let mut d = Decoder::new(small_limits());
    let mut buf = BytesMut::from(&b"SEND\nabcdef:12345\r"[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"x");
    assert_eq!(d.decode(&mut buf), Err(ProtocolError::HeaderLineTooLong { max: 12 }));
    // An overlong command line without LF.
    let mut d = Decoder::new(small_limits());
    assert_eq!(error_of(&mut d, b"AAAAAAAAAAAAAAAAAAAA"), ProtocolError::HeaderLineTooLong { max: 12 });
}

#[test]
fn body_too_large_complete_and_incomplete() {
    // max_body_bytes = 16, no content-length.
    let mut input = b"SEND\n\n".to_vec();
    input.extend_from_slice(&[b'x'; 17]);
    let incomplete = input.clone();
    input.push(0);
    for bytes in [&input, &incomplete] {
        let mut d = Decoder::new(small_limits());
        let err = error_of(&mut d, bytes);
        assert_eq!(err, ProtocolError::BodyTooLarge { max: 16 });
        assert_eq!(err.to_string(), "body exceeds max-body-size (16 bytes)");
    }
    // 16 bytes buffered without a NUL: still waiting.
    let mut d = Decoder::new(small_limits());
    let mut buf = BytesMut::from(&incomplete[..incomplete.len() - 1]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"\0");
    assert!(matches!(d.decode(&mut buf), Ok(Some(Decoded::Frame(_)))));
}

#[test]
fn frame_too_large_complete_and_incomplete() {
    let limits = Limits { max_frame_bytes: 32, max_body_bytes: 100, max_headers: 100, max_header_line: 100 };
    // Headers alone exceed the frame limit, no blank line yet.
    let mut d = Decoder::new(limits);
    let err = error_of(&mut d, b"SEND\nh1:aaaaaaaa\nh2:bbbbbbbb\nh3:c");
    assert_eq!(err, ProtocolError::FrameTooLarge { max: 32 });
    assert_eq!(err.to_string(), "frame exceeds max-frame-size (32 bytes)");
    // One long unterminated header line.
    let mut d = Decoder::new(limits);
    assert_eq!(
        error_of(&mut d, b"SEND\nh:0123456789012345678901234567"),
        ProtocolError::FrameTooLarge { max: 32 }
    );
    // Body without content-length, incomplete: 6 + 26 = 32 buffered, NUL still due.
    let mut input = b"SEND\n\n".to_vec();
    input.extend_from_slice(&[b'x'; 26]);
    assert_eq!(error_of(&mut Decoder::new(limits), &input), ProtocolError::FrameTooLarge { max: 32 });
    // Complete frame of 33 bytes.
    input.push(0);
    assert_eq!(error_of(&mut Decoder::new(limits), &input), ProtocolError::FrameTooLarge { max: 32 });
    // Exactly 32 bytes is fine.
    input.truncate(31);
    input.push(0);
    assert_eq!(input.len(), 32);
    let (items, err, _) = decode_all(&mut Decoder::new(limits), &input);
    assert_eq!(err, None);
    assert_eq!(items.len(), 1);
}

#[test]
fn error_names_default_limits() {
    let l = Limits::default();
    assert_eq!(
        ProtocolError::FrameTooLarge { max: l.max_frame_bytes }.to_string(),
        "frame exceeds max-frame-size (1114112 bytes)"
    );
    assert_eq!(
        ProtocolError::BodyTooLarge { max: l.max_body_bytes }.to_string(),
        "body exceeds max-body-size (1048576 bytes)"
    );
    assert_eq!(
        ProtocolError::TooManyHeaders { max: l.max_headers }.to_string(),
        "too many headers (max-headers is 64)"
    );
    assert_eq!(
        ProtocolError::HeaderLineTooLong { max: l.max_header_line }.to_string(),
        "header line exceeds max-header-length (8192 bytes)"
    );
}

#[test]
fn bytewise_equals_whole() {
    let input: &[u8] = b"\r\nCONNECT\r\naccept-version:1.2\r\nhost:x\r\n\r\n\0\n\
SEND\ndestination:/q\\c1\ncontent-length:4\n\n\0\0\0\0\0\n\
SEND\nx:y\n\nbody\0";
    let (whole, err, rest) = decode_all(&mut decoder(Some(Version::V1_2)), input);
    assert_eq!(err, None);
    assert!(rest.is_empty());
    let (bytewise, err) = decode_bytewise(&mut decoder(Some(Version::V1_2)), input);
    assert_eq!(err, None);
    assert_eq!(whole, bytewise);
    assert_eq!(whole.len(), 6);
}

#[test]
fn error_resets_state_and_repeats() {
    let mut d = decoder(None);
    let mut buf = BytesMut::from(&b"SEND\nbad\n\n\0"[..]);
    assert_eq!(d.decode(&mut buf), Err(ProtocolError::MissingColon));
    assert_eq!(buf.len(), 11, "nothing consumed on error");
    assert_eq!(d.decode(&mut buf), Err(ProtocolError::MissingColon));
}

#[test]
fn caller_shrinking_buffer_does_not_panic() {
    let mut d = decoder(None);
    let mut buf = BytesMut::from(&b"SEND\nheader:value"[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    buf.clear();
    assert_eq!(d.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"ACK\nid:1\n\n\0");
    assert_eq!(d.decode(&mut buf), Ok(Some(Decoded::Frame(Frame::new(Command::Ack).with_header("id", "1")))));
}

#[test]
fn body_is_not_copied() {
    let mut d = decoder(None);
    let mut buf = BytesMut::from(&b"SEND\n\nthe body\0"[..]);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let Ok(Some(Decoded::Frame(f))) = d.decode(&mut buf) else { panic!("expected a frame") };
    let body = f.body.as_ptr() as usize;
    assert!(body >= start && body < end, "body shares the receive buffer");
    assert_eq!(&f.body[..], b"the body");
}

#[test]
fn large_body_byte_at_a_time_is_linear() {
    // Quadratic rescanning would take ~10^10 steps here.
    const N: usize = 200_000;
    let mut d = decoder(None);
    let mut buf = BytesMut::with_capacity(N + 16);
    buf.extend_from_slice(b"SEND\n\n");
    for _ in 0..N {
        buf.extend_from_slice(b"x");
        assert_eq!(d.decode(&mut buf), Ok(None));
    }
    buf.extend_from_slice(b"\0");
    let Ok(Some(Decoded::Frame(f))) = d.decode(&mut buf) else { panic!("expected a frame") };
    assert_eq!(f.body.len(), N);
}
