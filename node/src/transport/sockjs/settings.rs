//! The `sockjs-*` settings: their type (the `sockjs` field of
//! [`Config`](crate::config::Config)) and their resolution, called by
//! [`Layers::resolve`](crate::config::layers::Layers::resolve), as each feature validates its own
//! options.

use std::time::Duration;

use crate::config::layers::Layers;
use crate::config::parse::{boolean, duration, nonzero, size};
use crate::config::settings::{
    SOCKJS, SOCKJS_CLIENT_URL, SOCKJS_COOKIE_NEEDED, SOCKJS_DISCONNECT_DELAY, SOCKJS_HEARTBEAT,
    SOCKJS_RESPONSE_LIMIT, SOCKJS_WEBSOCKET,
};
use crate::config::ConfigError;

/// How the SockJS endpoint behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockJsTuning {
    /// SockJS is served at the WebSocket path; off: only WebSocket handshakes are.
    pub enabled: bool,
    /// `/info` offers the websocket transport, and `/<server>/<session>/websocket` is served.
    pub websocket: bool,
    /// Interval of `h` frames on HTTP transports while nothing else is sent.
    pub heartbeat: Duration,
    /// A session with no receiving request for this long is over; an ended session answers its
    /// close frame for this long.
    pub disconnect_delay: Duration,
    /// Bytes a streaming response carries before it ends and the client opens the next.
    pub response_limit: usize,
    /// `/info` says `cookie_needed`, and session responses set `JSESSIONID`.
    pub cookie_needed: bool,
    /// The sockjs-client script the iframe page loads.
    pub client_url: String,
}

pub(crate) fn resolve(layers: &Layers<'_>) -> Result<SockJsTuning, ConfigError> {
    Ok(SockJsTuning {
        enabled: layers.value(&SOCKJS, boolean)?.value,
        websocket: layers.value(&SOCKJS_WEBSOCKET, boolean)?.value,
        heartbeat: layers.value(&SOCKJS_HEARTBEAT, |s| nonzero(duration(s)))?.value,
        disconnect_delay: layers.value(&SOCKJS_DISCONNECT_DELAY, |s| nonzero(duration(s)))?.value,
        response_limit: layers.value(&SOCKJS_RESPONSE_LIMIT, |s| nonzero(size(s)))?.value,
        cookie_needed: layers.value(&SOCKJS_COOKIE_NEEDED, boolean)?.value,
        client_url: layers.value(&SOCKJS_CLIENT_URL, client_url)?.value,
    })
}

/// An absolute `http(s)` URL or a path: it is written into the iframe page's `<script src>`.
fn client_url(text: &str) -> Result<String, String> {
    let plain = text.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b'\''));
    if plain && (text.starts_with("https://") || text.starts_with("http://") || text.starts_with('/')) {
        Ok(text.to_owned())
    } else {
        Err("an http(s) URL or an absolute path, without quotes or angle brackets".to_owned())
    }
}
