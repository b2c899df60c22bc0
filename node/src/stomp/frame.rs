//! The STOMP data model shared by the decoder and the encoder: protocol
//! [`Version`]s, frame [`Command`]s and the [`Frame`] itself (command, ordered
//! headers with repeats kept, and a zero-copy body).

use bytes::Bytes;

/// A STOMP protocol version, ordered oldest to newest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    /// The version as written in `accept-version` / `version` headers, e.g. `"1.2"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// Parses `"1.0"`, `"1.1"` or `"1.2"` exactly (no whitespace, no other forms).
    pub fn parse(s: &str) -> Option<Version> {
        match s {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }
}

/// A STOMP frame command, client and server frames alike.
///
/// The declaration order is the order of [`Command::ALL`], so
/// [`Command::index`] is the position in that array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Connect,
    Stomp,
    Connected,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Message,
    Receipt,
    Error,
}

impl Command {
    /// Every command, in declaration order (index `i` has `index() == i`).
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Connected,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as it appears on the wire, e.g. `"CONNECT"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Connected => "CONNECTED",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parses a command line (without its line ending). Exact and
    /// case-sensitive: `b"send"` and `b"SEND "` are not commands.
    pub fn parse(name: &[u8]) -> Option<Command> {
        Some(match name {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"CONNECTED" => Command::Connected,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            _ => return None,
        })
    }

    /// Position of this command in [`Command::ALL`], for per-command metric arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// True for the frames whose headers are never escaped (CONNECT, STOMP,
    /// CONNECTED), per the 1.1/1.2 specifications.
    pub(crate) fn is_escape_exempt(self) -> bool {
        matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

/// One STOMP frame. Headers keep wire order, repeats included; the body is
/// reference-counted and shares the receive buffer when decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and an empty body.
    pub fn new(command: Command) -> Frame {
        Frame { command, headers: Vec::new(), body: Bytes::new() }
    }

    /// Appends a header (an existing header of the same name is kept and
    /// still wins in [`Frame::get`]).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The value of the first header named `name` (STOMP: when a header is
    /// repeated, only the first occurrence counts).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_strings_round_trip() {
        for v in [Version::V1_0, Version::V1_1, Version::V1_2] {
            assert_eq!(Version::parse(v.as_str()), Some(v));
        }
        assert_eq!(Version::V1_0.as_str(), "1.0");
        assert_eq!(Version::parse("1.3"), None);
        assert_eq!(Version::parse(" 1.2"), None);
        assert_eq!(Version::parse(""), None);
        assert!(Version::V1_0 < Version::V1_1 && Version::V1_1 < Version::V1_2);
    }

    #[test]
    fn command_all_index_and_names() {
        assert_eq!(Command::ALL.len(), 15);
        for (i, c) in Command::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(Command::parse(c.as_str().as_bytes()), Some(*c));
        }
        assert_eq!(Command::Connect.as_str(), "CONNECT");
        assert_eq!(Command::parse(b"send"), None);
        assert_eq!(Command::parse(b"SEND "), None);
        assert_eq!(Command::parse(b""), None);
        assert_eq!(Command::parse(b"\xff"), None);
    }

    #[test]
    fn escape_exempt_commands() {
        let exempt: Vec<_> = Command::ALL.iter().filter(|c| c.is_escape_exempt()).collect();
        assert_eq!(exempt, [&Command::Connect, &Command::Stomp, &Command::Connected]);
    }

    #[test]
    fn frame_builders_and_first_header_wins() {
        let f = Frame::new(Command::Send)
            .with_header("destination", "/q/a")
            .with_header("x", "1")
            .with_header("x", "2")
            .with_body(&b"hi"[..]);
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.get("x"), Some("1"));
        assert_eq!(f.get("destination"), Some("/q/a"));
        assert_eq!(f.get("missing"), None);
        assert_eq!(f.headers.len(), 3);
        assert_eq!(&f.body[..], b"hi");
        assert!(Frame::new(Command::Ack).body.is_empty());
    }
}
