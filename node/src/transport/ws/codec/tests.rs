//! Tests of `codec.rs`.

use super::*;
use proptest::prelude::*;

const LIMIT: usize = 1 << 20;

/// A client frame: masked with `mask`, FIN as given, any opcode.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_header(&mut out, opcode, payload.len());
    out[0] = (u8::from(fin) << 7) | opcode;
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask, 0);
    out.to_vec()
}

fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(fin, opcode, payload, [0x37, 0xfa, 0x21, 0x3d])
}

/// Decodes `wire` fed in `reads` pieces of at most `chunk` bytes; returns the bytes appended
/// and the control events, or the error.
fn decode_in(wire: &[u8], chunk: usize, limit: usize) -> Result<(Vec<u8>, Vec<Event>), DecodeError> {
    let mut decoder = Decoder::new(limit);
    let (mut raw, mut out, mut events) = (BytesMut::new(), BytesMut::new(), Vec::new());
    for piece in wire.chunks(chunk.max(1)) {
        raw.extend_from_slice(piece);
        while let Some(event) = decoder.decode(&mut raw, &mut out)? {
            if event != Event::Data {
                events.push(event);
            }
        }
    }
    Ok((out.to_vec(), events))
}

fn decode(wire: &[u8]) -> Result<(Vec<u8>, Vec<Event>), DecodeError> {
    decode_in(wire, wire.len(), LIMIT)
}

fn violation(wire: &[u8]) -> String {
    match decode(wire) {
        Err(DecodeError::Violation(why)) => why,
        other => panic!("expected a violation, got {other:?}"),
    }
}

fn invalid_utf8(wire: &[u8]) -> String {
    match decode(wire) {
        Err(DecodeError::InvalidUtf8(why)) => why,
        other => panic!("expected invalid UTF-8, got {other:?}"),
    }
}

/// A close frame's payload: `code`, then `reason`.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

#[test]
fn header_sizes_follow_the_payload_length() {
    for (len, size, second) in [(0, 2, 0), (125, 2, 125), (126, 4, 126), (65535, 4, 126), (65536, 10, 127)] {
        let mut out = BytesMut::new();
        put_header(&mut out, TEXT, len);
        assert_eq!(out.len(), size, "{len}");
        assert_eq!(out[0], 0x81, "FIN and text");
        assert_eq!(out[1], second, "{len}: not masked, length code");
        match size {
            4 => assert_eq!(u16::from_be_bytes([out[2], out[3]]) as usize, len),
            10 => assert_eq!(u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize, len),
            _ => {}
        }
    }
    let mut out = BytesMut::new();
    put_frame(&mut out, BINARY, b"ab");
    assert_eq!(&out[..], [0x82, 2, b'a', b'b']);
    out.clear();
    put_close(&mut out, 1008, "limit exceeded");
    assert_eq!(&out[..4], [0x88, 16, 0x03, 0xf0]);
    assert_eq!(&out[4..], b"limit exceeded");
}

#[test]
fn a_close_reason_is_cut_to_fit_a_control_frame() {
    let mut out = BytesMut::new();
    put_close(&mut out, 1000, &"é".repeat(100));
    assert_eq!(out[1] as usize, out.len() - 2);
    assert!(out.len() - 2 <= MAX_CONTROL_PAYLOAD);
    assert!(std::str::from_utf8(&out[4..]).is_ok(), "cut at a character boundary");
}

#[test]
fn server_frames_decode_with_tungstenite() {
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    for len in [0usize, 1, 125, 126, 65535, 65536] {
        let mut out = BytesMut::new();
        put_frame(&mut out, TEXT, &vec![b'x'; len]);
        let mut cursor = std::io::Cursor::new(&out[..]);
        let (header, parsed) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert_eq!(parsed as usize, len);
        assert!(header.is_final && header.mask.is_none());
        assert_eq!(cursor.position() as usize + len, out.len());
    }
}

#[test]
fn masking_works_at_every_phase_and_length() {
    let mask = [1, 2, 4, 8];
    let plain: Vec<u8> = (0..40u8).collect();
    let masked: Vec<u8> = plain.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
    for start in 0..plain.len() {
        for end in start..=plain.len() {
            let mut part = masked[start..end].to_vec();
            unmask(&mut part, mask, start);
            assert_eq!(part, &plain[start..end], "{start}..{end}");
        }
    }
}

#[test]
fn a_masked_text_frame_decodes() {
    let (out, events) = decode(&frame(true, TEXT, b"SEND\n\nhi\0")).unwrap();
    assert_eq!(out, b"SEND\n\nhi\0");
    assert!(events.is_empty());
    let (out, _) = decode(&frame(true, BINARY, &[0xff, 0, 0xfe])).unwrap();
    assert_eq!(out, [0xff, 0, 0xfe]);
}

#[test]
fn fragmented_text_with_a_character_split_between_fragments() {
    let text = "aé€😀z".as_bytes();
    for cut in 0..=text.len() {
        for second in cut..=text.len() {
            let mut wire = frame(false, TEXT, &text[..cut]);
            wire.extend(frame(false, CONTINUATION, &text[cut..second]));
            wire.extend(frame(true, CONTINUATION, &text[second..]));
            for chunk in [1, 3, wire.len()] {
                let (out, _) = decode_in(&wire, chunk, LIMIT).unwrap();
                assert_eq!(out, text, "cut at {cut} and {second}, read {chunk} at a time");
            }
        }
    }
}

#[test]
fn invalid_utf8_in_a_text_message_is_its_own_error() {
    assert!(invalid_utf8(&frame(true, TEXT, b"ok \xff")).contains("Invalid UTF-8"));
    // A character cut by the end of the message.
    let mut wire = frame(false, TEXT, b"a\xe2\x82");
    wire.extend(frame(true, CONTINUATION, b""));
    assert!(invalid_utf8(&wire).contains("ends mid-character"));
    // The second fragment does not finish the character the first began.
    let mut wire = frame(false, TEXT, b"a\xe2");
    wire.extend(frame(true, CONTINUATION, b"zz"));
    assert!(invalid_utf8(&wire).contains("Invalid UTF-8"));
    // Binary messages are not checked.
    assert!(decode(&frame(true, BINARY, b"\xff\xfe")).is_ok());
}

#[test]
fn each_violation_is_named() {
    let mut rsv = frame(true, TEXT, b"x");
    rsv[0] |= 0x40;
    assert_eq!(violation(&rsv), "Reserved bits are non-zero");
    let mut unmasked = frame(true, TEXT, b"x");
    unmasked[1] &= 0x7f;
    assert_eq!(violation(&unmasked), "Received an unmasked frame from client");
    for opcode in [3, 7, 0xb, 0xf] {
        assert_eq!(violation(&frame(true, opcode, b"x")), format!("Encountered invalid opcode: {opcode}"));
    }
    assert!(violation(&frame(true, PING, &[7; 126])).starts_with("Control frame too big"));
    assert!(decode(&frame(true, PING, &[7; 125])).is_ok(), "125 bytes is allowed");
    assert_eq!(violation(&frame(false, PING, b"p")), "Fragmented control frame");
    assert_eq!(violation(&frame(true, CONTINUATION, b"x")), "Continue frame but nothing to continue");
    let mut two_starts = frame(false, TEXT, b"a");
    two_starts.extend(frame(true, BINARY, b"b"));
    assert_eq!(violation(&two_starts), "While waiting for more fragments received: Binary");
}

#[test]
fn a_violation_is_seen_from_the_first_two_bytes() {
    let mut decoder = Decoder::new(LIMIT);
    let mut raw = BytesMut::from(&[0x83u8, 0x80][..]);
    let error = decoder.decode(&mut raw, &mut BytesMut::new()).unwrap_err();
    assert_eq!(error, DecodeError::Violation("Encountered invalid opcode: 3".into()));
}

#[test]
fn frames_and_messages_over_the_limit_are_refused_from_their_header() {
    // Only the header is given: the refusal does not wait for (or buffer) the payload.
    let header = |fin: bool, opcode: u8, len: usize| {
        let wire = frame(fin, opcode, &vec![0; len]);
        wire[..wire.len() - len].to_vec()
    };
    match decode_in(&header(true, BINARY, 101), 1000, 100) {
        Err(DecodeError::TooLarge(why)) => {
            assert!(why.starts_with("WebSocket message refused: a frame of 101 bytes"), "{why}");
            assert!(why.ends_with("(max-frame-size)"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    let mut wire = frame(false, TEXT, &[b'a'; 60]);
    wire.extend(header(true, CONTINUATION, 41));
    match decode_in(&wire, 1000, 100) {
        Err(DecodeError::TooLarge(why)) => {
            assert!(why.contains("fragments add up to more than 100"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    let mut wire = frame(false, TEXT, &[b'a'; 60]);
    wire.extend(frame(true, CONTINUATION, &[b'a'; 40]));
    assert_eq!(decode_in(&wire, 1000, 100).unwrap().0.len(), 100, "exactly the limit is allowed");
    // A 64-bit length with its top bit set.
    let mut huge = vec![0x82, 0xff];
    huge.extend_from_slice(&u64::MAX.to_be_bytes());
    huge.extend_from_slice(&[0; 4]);
    assert!(matches!(decode(&huge), Err(DecodeError::TooLarge(_))));
}

#[test]
fn control_frames_between_fragments_are_allowed() {
    let mut wire = frame(false, TEXT, b"SE");
    wire.extend(frame(true, PING, b"are you there"));
    wire.extend(frame(false, CONTINUATION, b"N"));
    wire.extend(frame(true, PONG, b""));
    wire.extend(frame(true, CONTINUATION, b"D"));
    wire.extend(frame(true, CLOSE, &[0x03, 0xe8]));
    wire.extend(frame(true, TEXT, b"after the close"));
    let (out, events) = decode(&wire).unwrap();
    assert_eq!(out, b"SEND");
    assert_eq!(
        events,
        [Event::Ping(Bytes::from_static(b"are you there")), Event::Pong, Event::Close(Some(1000))]
    );
}

/// RFC 6455 §7.4.1 and §7.4.2, and IANA's registry (1012-1014).
#[test]
fn close_codes_that_may_be_sent_are_allowed_and_no_other() {
    let allowed: Vec<u16> = (0..=u16::MAX).filter(|&code| close_code_allowed(code)).collect();
    let expected: Vec<u16> = (1000..=1003).chain(1007..=1014).chain(3000..=4999).collect();
    assert_eq!(allowed, expected);
}

#[test]
fn a_valid_close_frame_reports_its_code() {
    let (_, events) = decode(&frame(true, CLOSE, b"")).unwrap();
    assert_eq!(events, [Event::Close(None)], "no payload: no code");
    for code in [1000, 1001, 1002, 1003, 1007, 1011, 1012, 1014, 3000, 3999, 4000, 4999] {
        let (_, events) = decode(&frame(true, CLOSE, &close_payload(code, b""))).unwrap();
        assert_eq!(events, [Event::Close(Some(code))], "{code}");
    }
    let reason = "au revoir, à bientôt".as_bytes();
    let (_, events) = decode(&frame(true, CLOSE, &close_payload(3000, reason))).unwrap();
    assert_eq!(events, [Event::Close(Some(3000))], "a UTF-8 reason");
    // The reason's UTF-8 is checked whole, however the frame arrives.
    let (_, events) = decode_in(&frame(true, CLOSE, &close_payload(1001, reason)), 3, LIMIT).unwrap();
    assert_eq!(events, [Event::Close(Some(1001))]);
}

#[test]
fn a_malformed_close_frame_is_refused() {
    assert_eq!(
        violation(&frame(true, CLOSE, &[0x03])),
        "Close frame with a 1-byte payload: a status code takes 2 bytes"
    );
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        assert_eq!(
            violation(&frame(true, CLOSE, &close_payload(code, b""))),
            format!("Invalid close code {code} (RFC 6455 section 7.4)"),
        );
    }
    for reason in [&b"\xff"[..], b"ok \xce", b"\xed\xa0\x80 (a surrogate)"] {
        assert_eq!(
            invalid_utf8(&frame(true, CLOSE, &close_payload(1000, reason))),
            "Invalid UTF-8 in a close frame's reason",
            "{reason:?}"
        );
    }
}

#[test]
fn data_comes_before_the_control_frame_that_follows_it() {
    let mut wire = frame(true, TEXT, b"one");
    wire.extend(frame(true, PING, b"p"));
    wire.extend(frame(true, TEXT, b"two"));
    let mut decoder = Decoder::new(LIMIT);
    let (mut raw, mut out) = (BytesMut::from(&wire[..]), BytesMut::new());
    assert_eq!(decoder.decode(&mut raw, &mut out), Ok(Some(Event::Data)));
    assert_eq!(&out[..], b"one");
    assert_eq!(decoder.decode(&mut raw, &mut out), Ok(Some(Event::Ping(Bytes::from_static(b"p")))));
    assert_eq!(decoder.decode(&mut raw, &mut out), Ok(Some(Event::Data)));
    assert_eq!(&out[..], b"onetwo");
    assert_eq!(decoder.decode(&mut raw, &mut out), Ok(None));
    assert!(raw.is_empty());
}

#[test]
fn a_payload_read_straight_into_the_output_is_accepted() {
    let payload: Vec<u8> = (0..100u8).collect();
    let wire = frame(true, BINARY, &payload);
    let mut decoder = Decoder::new(LIMIT);
    let (mut raw, mut out) = (BytesMut::from(&wire[..10]), BytesMut::new());
    assert_eq!(decoder.decode(&mut raw, &mut out), Ok(Some(Event::Data)));
    assert_eq!(decoder.data_remaining(), Some(96));
    out.extend_from_slice(&wire[10..50]);
    decoder.accept(&mut out[4..]).unwrap();
    assert_eq!(decoder.data_remaining(), Some(56));
    out.extend_from_slice(&wire[50..]);
    decoder.accept(&mut out[44..]).unwrap();
    assert_eq!(decoder.data_remaining(), None);
    assert_eq!(&out[..], &payload[..]);
}

/// One message of the property.
#[derive(Debug, Clone)]
struct Sent {
    text: bool,
    bytes: Vec<u8>,
    /// Where it is cut into frames (modulo its length).
    cuts: Vec<usize>,
    /// The masking key of each frame, and of the pings.
    masks: Vec<[u8; 4]>,
    /// Whether a ping follows each frame.
    pings: Vec<bool>,
}

fn sent() -> impl Strategy<Value = Sent> {
    let payload = prop_oneof![
        any::<String>().prop_map(|s| (true, s.into_bytes())),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| (false, b)),
    ];
    (
        payload,
        proptest::collection::vec(0usize..400, 0..5),
        proptest::collection::vec(any::<[u8; 4]>(), 6),
        proptest::collection::vec(any::<bool>(), 6),
    )
        .prop_map(|((text, bytes), cuts, masks, pings)| Sent { text, bytes, cuts, masks, pings })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Messages cut into frames at arbitrary points, with pings between fragments, masked
    /// with arbitrary keys and read in arbitrary pieces, decode to the bytes sent.
    #[test]
    fn fragmented_masked_messages_decode_to_what_was_sent(
        messages in proptest::collection::vec(sent(), 1..5),
        chunk in 1usize..200,
    ) {
        let (mut wire, mut sent, mut pings) = (Vec::new(), Vec::new(), Vec::new());
        for Sent { text, bytes, cuts, masks, pings: ping_after } in &messages {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut bounds = vec![0];
            bounds.extend(cuts);
            bounds.push(bytes.len());
            let pieces = bounds.len() - 1;
            for i in 0..pieces {
                let opcode = match (i, text) { (0, true) => TEXT, (0, false) => BINARY, _ => CONTINUATION };
                wire.extend(client_frame(i + 1 == pieces, opcode, &bytes[bounds[i]..bounds[i + 1]], masks[i]));
                if ping_after[i] {
                    let payload = format!("ping {}", pings.len()).into_bytes();
                    wire.extend(client_frame(true, PING, &payload, masks[5]));
                    pings.push(Event::Ping(Bytes::from(payload)));
                }
            }
            sent.extend_from_slice(bytes);
        }
        let (out, events) = decode_in(&wire, chunk, LIMIT).unwrap();
        prop_assert_eq!(out, sent);
        prop_assert_eq!(events, pings);
    }
}
