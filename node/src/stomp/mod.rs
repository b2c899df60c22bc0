//! STOMP 1.0/1.1/1.2 frame codec: turns bytes into frames and frames into
//! bytes, with no I/O and no async runtime. The broker feeds received bytes
//! into a [`Decoder`] (one per connection) and writes the output of
//! [`encode()`] to the socket; negotiation, sessions and routing live elsewhere.
//!
//! # Layout
//!
//! - [`frame`](mod@self::frame): the data model — [`Version`], [`Command`], [`Frame`].
//! - [`decode`](mod@self::decode): the incremental, limit-enforcing [`Decoder`],
//!   its [`Limits`], its output [`Decoded`] and [`ProtocolError`].
//! - [`encode`](mod@self::encode): [`encode()`], header escaping ([`escape_into`],
//!   [`needs_escape`]) and the `heart-beat` header parser ([`parse_heart_beat`]).

pub mod decode;
pub mod encode;
pub mod frame;

pub use decode::{Decoded, Decoder, Limits, ProtocolError};
pub use encode::{encode, escape_into, needs_escape, parse_heart_beat};
pub use frame::{Command, Frame, Version};

#[cfg(test)]
mod proptests {
    //! Property tests across the encoder and decoder.

    use super::*;
    use bytes::BytesMut;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::select;

    /// How header text survives an encode/decode round trip.
    #[derive(Clone, Copy, Debug)]
    enum Mode {
        /// 1.0, no version, or CONNECT/STOMP/CONNECTED: written raw.
        Raw,
        /// 1.1 escaping (CR is not escaped, so it is left out).
        Esc11,
        /// 1.2 escaping: every special character round-trips.
        Esc12,
    }

    fn mode(command: Command, version: Option<Version>) -> Mode {
        match version {
            _ if command.is_escape_exempt() => Mode::Raw,
            Some(Version::V1_2) => Mode::Esc12,
            Some(Version::V1_1) => Mode::Esc11,
            _ => Mode::Raw,
        }
    }

    fn text(mode: Mode, is_name: bool) -> BoxedStrategy<String> {
        let specials: &'static [char] = match (mode, is_name) {
            (Mode::Raw, true) => &[' ', '\\', '-'],
            (Mode::Raw, false) => &[' ', '\\', ':'],
            (Mode::Esc11, _) => &[':', '\n', '\\', ' '],
            (Mode::Esc12, _) => &[':', '\n', '\r', '\\', ' '],
        };
        let ch = prop_oneof![
            4 => proptest::char::range('a', 'z'),
            3 => select(specials),
            1 => any::<char>().prop_filter("not special", |c| {
                !matches!(c, '\0' | '\n' | '\r' | ':' | '\\')
            }),
        ];
        let min = usize::from(is_name);
        vec(ch, min..10).prop_map(|chars| chars.into_iter().collect::<String>()).boxed()
    }

    /// A frame that survives encode(version) → decode(version) unchanged.
    fn frame_for(version: Option<Version>) -> impl Strategy<Value = Frame> {
        (select(Command::ALL.to_vec()), any::<bool>(), vec(any::<u8>(), 0..40))
            .prop_flat_map(move |(command, with_length, body)| {
                let m = mode(command, version);
                let headers = vec((text(m, true), text(m, false)), 0..5);
                (Just(command), Just(with_length), Just(body), headers)
            })
            .prop_map(|(command, with_length, mut body, headers)| {
                let mut frame = Frame::new(command);
                if with_length {
                    frame = frame.with_header("content-length", body.len().to_string());
                } else {
                    for b in &mut body {
                        if *b == 0 {
                            *b = 1;
                        }
                    }
                }
                for (name, value) in headers {
                    if name != "content-length" {
                        frame = frame.with_header(name, value);
                    }
                }
                frame.with_body(body)
            })
    }

    fn any_version() -> impl Strategy<Value = Option<Version>> {
        prop_oneof![
            Just(None),
            Just(Some(Version::V1_0)),
            Just(Some(Version::V1_1)),
            Just(Some(Version::V1_2)),
        ]
    }

    fn decoder(version: Option<Version>, limits: Limits) -> Decoder {
        let mut d = Decoder::new(limits);
        if let Some(v) = version {
            d.set_version(v);
        }
        d
    }

    /// Result of feeding input: the items, and whether it ended in an error.
    type Outcome = (Vec<Decoded>, bool);

    /// Feeds `input` in chunks of the given sizes (cycled; 0 is read as 1),
    /// draining the decoder after each chunk, until the input ends or it errors.
    fn feed(d: &mut Decoder, input: &[u8], chunks: &[usize]) -> (Outcome, BytesMut) {
        let mut buf = BytesMut::new();
        let mut items = Vec::new();
        let mut rest = input;
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let n = sizes.next().copied().unwrap_or(1).clamp(1, rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            buf.extend_from_slice(chunk);
            loop {
                match d.decode(&mut buf) {
                    Ok(Some(item)) => items.push(item),
                    Ok(None) => break,
                    Err(_) => return ((items, true), buf),
                }
            }
        }
        ((items, false), buf)
    }

    #[derive(Clone, Debug)]
    enum Item {
        Frame(Frame),
        Heartbeat { crlf: bool },
    }

    fn items(version: Option<Version>) -> impl Strategy<Value = Vec<Item>> {
        vec(
            prop_oneof![
                3 => frame_for(version).prop_map(Item::Frame),
                1 => any::<bool>().prop_map(|crlf| Item::Heartbeat { crlf }),
            ],
            0..8,
        )
    }

    /// Input that looks enough like STOMP to reach deep decoder states.
    fn noisy_bytes() -> impl Strategy<Value = Vec<u8>> {
        const TOKENS: &[&[u8]] = &[
            b"SEND",
            b"CONNECT",
            b"MESSAGE",
            b"\n",
            b"\r\n",
            b"\r",
            b":",
            b"\\",
            b"\\c",
            b"\\n",
            b"\\r",
            b"\\t",
            b"\0",
            b"content-length:",
            b"3",
            b"99999999999999999999999",
            b"x",
            b"\xff",
            b"\xc3\xa9",
        ];
        vec(prop_oneof![vec(any::<u8>(), 0..4), select(TOKENS).prop_map(<[u8]>::to_vec),], 0..64)
            .prop_map(|parts| parts.concat())
    }

    fn small_limits() -> impl Strategy<Value = Limits> {
        (0usize..96, 0usize..48, 0usize..6, 0usize..24).prop_map(
            |(max_frame_bytes, max_body_bytes, max_headers, max_header_line)| Limits {
                max_frame_bytes,
                max_body_bytes,
                max_headers,
                max_header_line,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn encode_decode_round_trip(
            (version, frame) in any_version().prop_flat_map(|v| (Just(v), frame_for(v)))
        ) {
            let mut buf = BytesMut::new();
            encode(&frame, version, &mut buf);
            let mut d = decoder(version, Limits::default());
            let decoded = d.decode(&mut buf);
            prop_assert_eq!(decoded, Ok(Some(Decoded::Frame(frame))));
            prop_assert!(buf.is_empty());
            prop_assert_eq!(d.decode(&mut buf), Ok(None));
        }

        #[test]
        fn chunked_feeding_matches_whole(
            (version, items) in any_version().prop_flat_map(|v| (Just(v), items(v))),
            chunks in vec(0usize..24, 1..12),
            bytewise in any::<bool>(),
        ) {
            let mut input = BytesMut::new();
            let mut expected = Vec::new();
            for item in items {
                match item {
                    Item::Frame(frame) => {
                        encode(&frame, version, &mut input);
                        expected.push(Decoded::Frame(frame));
                    }
                    Item::Heartbeat { crlf } => {
                        input.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
                        expected.push(Decoded::Heartbeat);
                    }
                }
            }
            let whole_size = [input.len().max(1)];
            let (whole, rest) = feed(&mut decoder(version, Limits::default()), &input, &whole_size);
            prop_assert_eq!(&whole, &(expected.clone(), false));
            prop_assert!(rest.is_empty());

            let sizes: &[usize] = if bytewise { &[1] } else { &chunks };
            let (chunked, rest) = feed(&mut decoder(version, Limits::default()), &input, sizes);
            prop_assert_eq!(&chunked, &(expected, false));
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn random_bytes_never_panic(
            input in prop_oneof![vec(any::<u8>(), 0..256), noisy_bytes()],
            chunks in vec(0usize..16, 1..8),
            version in any_version(),
            limits in prop_oneof![Just(Limits::default()), small_limits()],
        ) {
            let whole_size = [input.len().max(1)];
            let (whole, _) = feed(&mut decoder(version, limits), &input, &whole_size);
            let (chunked, _) = feed(&mut decoder(version, limits), &input, &chunks);
            // Limits are checked on lower bounds that whole input also
            // reaches, so chunking never changes what is decoded or whether
            // the stream is rejected (only, possibly, which error).
            prop_assert_eq!(whole, chunked);
        }
    }
}
