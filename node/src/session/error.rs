//! Why a session refuses a client. Each variant becomes one ERROR frame in `Session::fail` (or,
//! for a relay's refused SEND, in `Session::report`, which keeps the connection).

use crate::auth::AuthError;
use crate::destination::DestinationError;
use crate::engine::EngineError;
use crate::session::link::CloseReason;
use crate::stomp::ProtocolError;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Destination(#[from] DestinationError),
    #[error("{0}")]
    Engine(#[from] EngineError),
    /// Authentication or authorization refused the client.
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// The client broke the WebSocket protocol; the transport said how to close.
    #[error("{why}")]
    WebSocket { why: String, close: CloseReason },
    /// The transport refused a message over its size limit.
    #[error("{0}")]
    TooLarge(String),
    #[error("{command} frame lacks the required {header} header")]
    MissingHeader { command: &'static str, header: &'static str },
    /// A frame that is well formed but not acceptable here.
    #[error("{0}")]
    Invalid(String),
    /// A configured limit was reached.
    #[error("{0}")]
    Limit(String),
    #[error("expected CONNECT or STOMP as the first frame, got {0}")]
    NotConnected(&'static str),
    #[error("no supported protocol version in accept-version {0:?}: supported versions are 1.0,1.1,1.2")]
    UnsupportedVersion(String),
    #[error("no CONNECT frame within connect-timeout")]
    ConnectTimeout,
    #[error("heart-beat timeout: nothing received within the negotiated interval")]
    HeartbeatTimeout,
    #[error("slow consumer: the connection's outbound buffer (outbound-buffer) is full")]
    SlowConsumer,
    #[error("server shutting down: reconnect to another node")]
    ShuttingDown,
    /// An operator ended the session (admin API); the text is the reason they gave.
    #[error("{0}")]
    Disconnected(String),
    /// The connection itself failed; no ERROR can be sent.
    #[error("transport error: {0}")]
    Transport(String),
}

impl SessionError {
    pub fn io(error: std::io::Error) -> SessionError {
        SessionError::Transport(error.to_string())
    }

    pub fn invalid(why: impl Into<String>) -> SessionError {
        SessionError::Invalid(why.into())
    }

    pub fn limit(why: impl Into<String>) -> SessionError {
        SessionError::Limit(why.into())
    }

    /// Whether the refusal concerns the refused frame alone: a bad or forbidden destination, a
    /// missing header, a frame not acceptable here. The stream is intact and the connection could
    /// go on; a relay's does ([`crate::auth::RELAY_ROLE`]). Malformed or oversize input, limits,
    /// authentication, engine failures and timeouts are not: they close for everyone.
    pub fn refuses_frame_only(&self) -> bool {
        matches!(
            self,
            SessionError::Destination(_)
                | SessionError::Auth(AuthError::Forbidden { .. })
                | SessionError::MissingHeader { .. }
                | SessionError::Invalid(_)
        )
    }

    /// How the transport closes after the ERROR: the close code and reason say which kind of
    /// refusal it was.
    pub fn close_reason(&self) -> CloseReason {
        match self {
            SessionError::ShuttingDown | SessionError::Engine(_) => CloseReason::Restart,
            SessionError::SlowConsumer => CloseReason::SlowConsumer,
            SessionError::Disconnected(_) => CloseReason::Disconnected,
            SessionError::Limit(_) => CloseReason::Limit,
            SessionError::TooLarge(_)
            | SessionError::Protocol(
                ProtocolError::FrameTooLarge { .. } | ProtocolError::BodyTooLarge { .. },
            ) => CloseReason::TooBig,
            SessionError::Auth(AuthError::Forbidden { .. }) => CloseReason::PermissionDenied,
            SessionError::Auth(AuthError::Expired) => CloseReason::TokenExpired,
            SessionError::Auth(_) => CloseReason::AuthenticationFailed,
            SessionError::WebSocket { close, .. } => *close,
            SessionError::HeartbeatTimeout | SessionError::ConnectTimeout | SessionError::Transport(_) => {
                CloseReason::Normal
            }
            _ => CloseReason::StompError,
        }
    }

    /// The ERROR frame's body: the message again, with what the client can do about it.
    pub fn detail(&self) -> String {
        let hint = match self {
            SessionError::Protocol(_) => "The frame could not be parsed; see the STOMP specification.",
            SessionError::Destination(_) => "Use /topic/<name>, /queue/<name> or /user/<name>/<destination>.",
            SessionError::Engine(_) => "The broker could not store or publish the message; retry later.",
            SessionError::SlowConsumer => "The client did not read its messages fast enough.",
            SessionError::ShuttingDown => "This node is draining for a restart.",
            SessionError::Disconnected(_) => "An operator of this broker disconnected the session.",
            SessionError::Auth(AuthError::Forbidden { .. }) => {
                "The access rules (acl) do not allow this for your user or roles."
            }
            SessionError::Auth(AuthError::Expired) => {
                "Connect again with a fresh token, or SEND one to /auth/refresh before exp."
            }
            SessionError::Auth(_) => "Check the credentials; see docs/security.md.",
            SessionError::WebSocket { .. } => "The WebSocket frames were not valid (RFC 6455).",
            _ => "",
        };
        if hint.is_empty() {
            format!("{self}\n")
        } else {
            format!("{self}\n{hint}\n")
        }
    }
}
