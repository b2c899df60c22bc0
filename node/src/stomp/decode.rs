//! Incremental frame decoding: a per-connection [`Decoder`] that takes bytes
//! as they arrive and yields [`Decoded`] items (frames and heart-beats),
//! enforcing the configured [`Limits`] on partial input so a peer can never
//! make it buffer without bound, and reporting malformed input as a fatal
//! [`ProtocolError`].
//!
//! The decoder remembers how far it has scanned the current frame (and the
//! command and headers it has already parsed), so feeding data a few bytes at
//! a time costs linear, not quadratic, work. Those positions refer to the
//! caller's buffer: between calls the caller may only append to it.

use bytes::{Buf, BytesMut};

use super::frame::{Command, Frame, Version};

/// Size limits applied while decoding. Every limit is also enforced on
/// incomplete input, as soon as the buffered bytes prove it will be exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Whole frame, from the first byte of the command through the NUL.
    pub max_frame_bytes: usize,
    /// Body length (with or without `content-length`).
    pub max_body_bytes: usize,
    /// Number of header lines (repeats count).
    pub max_headers: usize,
    /// Length of the command line or of one header line, without its LF/CRLF.
    pub max_header_line: usize,
}

impl Default for Limits {
    /// 1 MiB + 64 KiB frames, 1 MiB bodies, 64 headers, 8192-byte lines.
    fn default() -> Limits {
        Limits {
            max_frame_bytes: 1024 * 1024 + 64 * 1024,
            max_body_bytes: 1024 * 1024,
            max_headers: 64,
            max_header_line: 8192,
        }
    }
}

/// One item decoded from the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    Frame(Frame),
    /// A bare LF or CRLF between frames.
    Heartbeat,
}

/// Why the byte stream is invalid. Every error is fatal for the connection:
/// the broker should send an ERROR frame (the `Display` text is suitable for
/// its `message` header) and close.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("frame exceeds max-frame-size ({max} bytes)")]
    FrameTooLarge { max: usize },
    #[error("body exceeds max-body-size ({max} bytes)")]
    BodyTooLarge { max: usize },
    #[error("too many headers (max-headers is {max})")]
    TooManyHeaders { max: usize },
    #[error("header line exceeds max-header-length ({max} bytes)")]
    HeaderLineTooLong { max: usize },
    /// The command as received (lossily decoded, debug-escaped, at most 32 characters).
    #[error("unknown command \"{0}\"")]
    UnknownCommand(String),
    /// The offending sequence, e.g. `\t`, or `\` alone when the value ends in a backslash.
    #[error("invalid escape sequence \"{0}\" in header")]
    InvalidEscape(String),
    #[error("header is not valid UTF-8")]
    InvalidUtf8,
    #[error("malformed header line (no ':')")]
    MissingColon,
    #[error("malformed header line (empty name)")]
    EmptyHeaderName,
    #[error("NUL byte in command or header line")]
    NulInHeaders,
    #[error("invalid content-length")]
    InvalidContentLength,
    #[error("frame body not terminated by NUL")]
    BodyNotTerminated,
    #[error("invalid heart-beat header")]
    InvalidHeartBeat,
}

/// Longest command name quoted back in [`ProtocolError::UnknownCommand`].
const MAX_QUOTED_COMMAND: usize = 32;

/// Progress through the frame at the start of the buffer. All offsets are
/// relative to the start of the caller's buffer, where the frame begins.
#[derive(Debug, Default)]
struct Scan {
    /// Next byte not yet examined. 0 means nothing of this item has been seen.
    pos: usize,
    /// Start of the command/header line being scanned.
    line_start: usize,
    /// Parsed command line; `None` while still on the command line.
    command: Option<Command>,
    /// Whether header values of this frame are unescaped.
    unescape: bool,
    headers: Vec<(String, String)>,
    /// First `content-length`, validated.
    content_length: Option<usize>,
    /// Set once the blank line ending the headers has been seen.
    body_start: Option<usize>,
}

/// Per-connection incremental STOMP decoder.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    version: Option<Version>,
    scan: Scan,
}

impl Decoder {
    /// A decoder with no negotiated version: header values are taken raw, as
    /// CONNECT/STOMP frames require.
    pub fn new(limits: Limits) -> Decoder {
        Decoder { limits, version: None, scan: Scan::default() }
    }

    /// Sets the negotiated version; 1.1 and 1.2 turn header unescaping on for
    /// all frames but CONNECT/STOMP/CONNECTED. Call it between items (it
    /// applies from the next frame whose command line has not been parsed yet).
    pub fn set_version(&mut self, v: Version) {
        self.version = Some(v);
    }

    /// The version set by [`Decoder::set_version`], if any.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Decodes at most one item from the front of `buf`.
    ///
    /// `Ok(None)` = need more bytes (buf left as is or partially consumed only
    /// of complete items); `Ok(Some(item))` = one item, its bytes removed from
    /// `buf`; `Err` = the stream is invalid (fatal). After an error the
    /// decoder forgets the partial frame and `buf` is left untouched.
    ///
    /// Between calls the caller may append to `buf` but must not otherwise
    /// change it (the decoder keeps its scan position in it).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        if self.scan.pos > buf.len() {
            // The caller dropped bytes we had scanned; start over rather than
            // index out of range.
            self.scan = Scan::default();
        }
        let result = self.step(buf);
        if result.is_err() {
            self.scan = Scan::default();
        }
        result
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        if self.scan.pos == 0 {
            // Between frames: a bare LF or CRLF is a heart-beat.
            match buf.first() {
                None => return Ok(None),
                Some(b'\n') => {
                    buf.advance(1);
                    return Ok(Some(Decoded::Heartbeat));
                }
                Some(b'\r') => match buf.get(1) {
                    None => return Ok(None),
                    Some(b'\n') => {
                        buf.advance(2);
                        return Ok(Some(Decoded::Heartbeat));
                    }
                    Some(_) => {}
                },
                Some(_) => {}
            }
        }

        while self.scan.body_start.is_none() {
            if !self.scan_line(buf)? {
                return Ok(None);
            }
        }
        self.scan_body(buf)
    }

    /// Scans for the end of the current command/header line and processes it.
    /// Returns `Ok(false)` when the line is still incomplete.
    fn scan_line(&mut self, buf: &BytesMut) -> Result<bool, ProtocolError> {
        let limits = self.limits;
        let from = self.scan.pos;
        let Some(offset) = buf[from..].iter().position(|&b| b == b'\n' || b == 0) else {
            self.scan.pos = buf.len();
            // The line is at least this long (a final CR may be its terminator).
            let pending = &buf[self.scan.line_start..];
            let min_line = pending.len() - usize::from(pending.last() == Some(&b'\r'));
            if min_line > limits.max_header_line {
                return Err(ProtocolError::HeaderLineTooLong { max: limits.max_header_line });
            }
            // At least the NUL is still to come.
            if buf.len() >= limits.max_frame_bytes {
                return Err(ProtocolError::FrameTooLarge { max: limits.max_frame_bytes });
            }
            return Ok(false);
        };
        let end = from + offset;
        if buf[end] == 0 {
            return Err(ProtocolError::NulInHeaders);
        }
        let raw = &buf[self.scan.line_start..end];
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.len() > limits.max_header_line {
            return Err(ProtocolError::HeaderLineTooLong { max: limits.max_header_line });
        }
        // The frame holds this line and at least a NUL after it.
        if end.saturating_add(2) > limits.max_frame_bytes {
            return Err(ProtocolError::FrameTooLarge { max: limits.max_frame_bytes });
        }
        self.scan.pos = end + 1;
        self.scan.line_start = end + 1;

        if self.scan.command.is_none() {
            let command = Command::parse(line).ok_or_else(|| unknown_command(line))?;
            self.scan.unescape =
                !command.is_escape_exempt() && matches!(self.version, Some(v) if v >= Version::V1_1);
            self.scan.command = Some(command);
        } else if line.is_empty() {
            let body_start = end + 1;
            if let Some(len) = self.scan.content_length {
                // Body, then NUL: the whole frame size is known now.
                if body_start.saturating_add(len).saturating_add(1) > limits.max_frame_bytes {
                    return Err(ProtocolError::FrameTooLarge { max: limits.max_frame_bytes });
                }
            }
            self.scan.body_start = Some(body_start);
        } else {
            if self.scan.headers.len() >= limits.max_headers {
                return Err(ProtocolError::TooManyHeaders { max: limits.max_headers });
            }
            let (name, value) = self.parse_header(line)?;
            if self.scan.content_length.is_none() && name == "content-length" {
                self.scan.content_length = Some(parse_content_length(&value, limits)?);
            }
            self.scan.headers.push((name, value));
        }
        Ok(true)
    }

    /// Splits a header line at its first `:` and decodes both halves.
    fn parse_header(&self, line: &[u8]) -> Result<(String, String), ProtocolError> {
        let colon = line.iter().position(|&b| b == b':').ok_or(ProtocolError::MissingColon)?;
        if colon == 0 {
            return Err(ProtocolError::EmptyHeaderName);
        }
        let name = std::str::from_utf8(&line[..colon]).map_err(|_| ProtocolError::InvalidUtf8)?;
        let value = std::str::from_utf8(&line[colon + 1..]).map_err(|_| ProtocolError::InvalidUtf8)?;
        if self.scan.unescape {
            Ok((unescape(name)?, unescape(value)?))
        } else {
            Ok((name.to_owned(), value.to_owned()))
        }
    }

    /// Looks for the end of the body; on success removes the frame from `buf`.
    fn scan_body(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        let limits = self.limits;
        let Some(body_start) = self.scan.body_start else {
            return Ok(None);
        };
        let nul_at = match self.scan.content_length {
            Some(len) => {
                let nul_at = body_start.saturating_add(len);
                match buf.get(nul_at) {
                    None => {
                        self.scan.pos = buf.len();
                        return Ok(None);
                    }
                    Some(0) => nul_at,
                    Some(_) => return Err(ProtocolError::BodyNotTerminated),
                }
            }
            None => {
                let from = self.scan.pos.max(body_start);
                match buf[from..].iter().position(|&b| b == 0) {
                    Some(offset) => {
                        let nul_at = from + offset;
                        if nul_at - body_start > limits.max_body_bytes {
                            return Err(ProtocolError::BodyTooLarge { max: limits.max_body_bytes });
                        }
                        if nul_at >= limits.max_frame_bytes {
                            return Err(ProtocolError::FrameTooLarge { max: limits.max_frame_bytes });
                        }
                        nul_at
                    }
                    None => {
                        self.scan.pos = buf.len();
                        if buf.len() - body_start > limits.max_body_bytes {
                            return Err(ProtocolError::BodyTooLarge { max: limits.max_body_bytes });
                        }
                        // At least the NUL is still to come.
                        if buf.len() >= limits.max_frame_bytes {
                            return Err(ProtocolError::FrameTooLarge { max: limits.max_frame_bytes });
                        }
                        return Ok(None);
                    }
                }
            }
        };

        let scan = std::mem::take(&mut self.scan);
        let Some(command) = scan.command else {
            // Unreachable: a body is only scanned after the command line.
            return Ok(None);
        };
        let mut frame_bytes = buf.split_to(nul_at + 1);
        frame_bytes.advance(body_start);
        frame_bytes.truncate(nul_at - body_start);
        Ok(Some(Decoded::Frame(Frame { command, headers: scan.headers, body: frame_bytes.freeze() })))
    }
}

fn unknown_command(line: &[u8]) -> ProtocolError {
    let name: String =
        String::from_utf8_lossy(line).chars().take(MAX_QUOTED_COMMAND).flat_map(char::escape_debug).collect();
    ProtocolError::UnknownCommand(name)
}

/// Undoes 1.1/1.2 header escaping. `\r` is accepted for 1.1 as well.
fn unescape(s: &str) -> Result<String, ProtocolError> {
    if !s.contains('\\') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('\\') => '\\',
            Some('n') => '\n',
            Some('c') => ':',
            Some('r') => '\r',
            Some(other) => return Err(ProtocolError::InvalidEscape(format!("\\{}", other.escape_debug()))),
            None => return Err(ProtocolError::InvalidEscape("\\".to_owned())),
        });
    }
    Ok(out)
}

/// A decimal `content-length` within `max_body_bytes`.
fn parse_content_length(value: &str, limits: Limits) -> Result<usize, ProtocolError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProtocolError::InvalidContentLength);
    }
    let too_large = ProtocolError::BodyTooLarge { max: limits.max_body_bytes };
    // Digits only, so the parse can only fail by overflowing.
    let len: usize = value.parse().map_err(|_| too_large.clone())?;
    if len > limits.max_body_bytes {
        return Err(too_large);
    }
    Ok(len)
}

#[cfg(test)]
mod tests;
