//! The application's side of the broker: application destinations (`/app/...`), backends,
//! hooks and session events, Spring's `@MessageMapping` model for services in any language.
//!
//! A SEND to an application destination never reaches subscribers. The node removes the
//! `x-stampede-*` headers a client sent, stamps its own ([`SESSION_HEADER`], [`NODE_HEADER`],
//! [`USER_HEADER`], [`DESTINATION_HEADER`], [`MESSAGE_ID_HEADER`]) and hands the message to the application, by the
//! destination's [`Target`]:
//! - **STOMP workers** (the default): the message is stored in a queue of the same name, and
//!   sessions with the [`BACKEND_ROLE`] consume it like any queue (competing consumers, acks,
//!   redelivery, dead letters). Only backends may SUBSCRIBE there.
//! - **HTTP** (`app-http`): the node POSTs a JSON document ([`http`]) and carries out the answer:
//!   messages to publish, a reply to the sender, or an error for the sender.
//!
//! Backends answer one session through the hub ([`crate::hub::Hub::send_to_session`]): a
//! backend's SEND with `x-stampede-session`, an HTTP answer's `reply`, `error` and `session`
//! fields, and a SEND to a `/reply-queue/...` (what `reply-to:/temp-queue/<name>` becomes).
//!
//! [`hooks`] asks the application at CONNECT and SUBSCRIBE; [`events`] tells it of sessions.
//! Every call to the application is bounded by a timeout, and none is made on a path that other
//! clients wait on: a session waits for a backend only for its own receipt or CONNECT.
//!
//! Layout: `mod.rs` ([`Apps`], routing and stamping), `settings.rs`, `http.rs` (the backend
//! call, its documents and outcomes), `hooks.rs`, `events.rs`.

pub mod events;
pub mod hooks;
pub mod http;
pub mod settings;

use std::sync::Arc;

use tokio::sync::Semaphore;

pub use crate::auth::BACKEND_ROLE;
use crate::auth::{constant_time_eq, Identity};
use crate::config::Config;
use crate::destination::wildcard_match;
use crate::metrics::Metrics;
use settings::AppSettings;

/// Every header the node stamps starts with this; a client's own are removed.
pub const STAMP_PREFIX: &str = "x-stampede-";
/// The sender's session id; on a backend's SEND, the one session to deliver to.
pub const SESSION_HEADER: &str = "x-stampede-session";
/// The id of the sender's node.
pub const NODE_HEADER: &str = "x-stampede-node";
/// The sender's user, when it has one.
pub const USER_HEADER: &str = "x-stampede-user";
/// The application destination as the client sent it.
pub const DESTINATION_HEADER: &str = "x-stampede-destination";
/// The application message's own id, the same in every redelivery (a queue delivery's
/// `message-id` is per delivery): what a backend deduplicates by.
pub const MESSAGE_ID_HEADER: &str = "x-stampede-message-id";
/// What went wrong, on an error message to the sender and on its RECEIPT.
pub const ERROR_HEADER: &str = "x-stampede-error";
/// The kind of a session event.
pub const EVENT_HEADER: &str = "x-stampede-event";
/// Where errors for one session go, as the session subscribed (Spring's
/// `@MessageExceptionHandler` with `@SendToUser("/queue/errors")`).
pub const ERRORS_DESTINATION: &str = "/user/queue/errors";
/// Where an HTTP answer's `reply` goes when it names no destination.
pub const REPLY_DESTINATION: &str = "/user/queue/reply";

/// Who sent an application message.
#[derive(Clone, Debug)]
pub struct Sender {
    pub session: Arc<str>,
    pub node: String,
    pub user: Option<String>,
}

/// Where an application destination's messages go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// A queue consumed by sessions with the backend role.
    Workers,
    /// POSTed to this URL.
    Http(&'a str),
}

/// The node's application settings and the HTTP client its backends and hooks share.
pub struct Apps {
    settings: AppSettings,
    client: reqwest::Client,
    /// `app-http-concurrency` slots.
    slots: Arc<Semaphore>,
    /// `max-body-size`: the largest body an application may send, as a client may.
    max_body: usize,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Apps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apps").field("settings", &self.settings).finish()
    }
}

impl Apps {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Apps {
        let settings = config.apps.clone();
        let builder = || {
            reqwest::Client::builder()
                .pool_idle_timeout(std::time::Duration::from_secs(60))
                .pool_max_idle_per_host(settings.http_concurrency)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(crate::session::SERVER)
        };
        // Without usable system roots (a bare container), https backends fail per call, with
        // the reason; plain http ones still work.
        let client = builder().build().unwrap_or_else(|error| {
            tracing::warn!(%error, "HTTP client without the system's root certificates");
            builder().tls_built_in_root_certs(false).build().expect("an HTTP client without TLS roots")
        });
        Apps {
            slots: Arc::new(Semaphore::new(settings.http_concurrency)),
            settings,
            client,
            max_body: config.limits.max_body_size,
            metrics,
        }
    }

    pub fn settings(&self) -> &AppSettings {
        &self.settings
    }

    /// Whether `destination` is an application destination.
    pub fn is_app(&self, destination: &str) -> bool {
        self.settings.is_app(destination)
    }

    /// Where the messages of application destination `destination` go.
    pub fn target(&self, destination: &str) -> Target<'_> {
        self.settings
            .http
            .iter()
            .find(|route| wildcard_match(route.pattern.as_bytes(), destination.as_bytes()))
            .map_or(Target::Workers, |route| Target::Http(&route.url))
    }

    /// The backend identity of a CONNECT carrying the `app-backend-secret` as its passcode.
    pub fn backend_identity(&self, login: Option<&str>, passcode: Option<&str>) -> Option<Identity> {
        let secret = self.settings.backend_secret.as_ref()?;
        let offered = passcode?;
        constant_time_eq(offered.as_bytes(), secret.expose().as_bytes()).then(|| Identity::backend(login))
    }

    /// Backends can connect at all: the secret is set, or some users file or token may name the
    /// role. Used for the start-up warning only.
    pub fn backend_secret_set(&self) -> bool {
        self.settings.backend_secret.is_some()
    }
}

/// Removes the headers only the node may set (`x-stampede-*`): from every SEND of a session
/// that is not a backend.
pub fn strip_stamps(headers: &mut Vec<(String, String)>) {
    headers.retain(|(name, _)| !name.starts_with(STAMP_PREFIX));
}

/// Stamps an application message with its sender and destination, replacing any copies.
pub fn stamp(headers: &mut Vec<(String, String)>, sender: &Sender, destination: &str) {
    headers.retain(|(name, _)| {
        !matches!(
            name.as_str(),
            SESSION_HEADER | NODE_HEADER | USER_HEADER | DESTINATION_HEADER | MESSAGE_ID_HEADER
        )
    });
    headers.push((SESSION_HEADER.to_owned(), sender.session.to_string()));
    headers.push((NODE_HEADER.to_owned(), sender.node.clone()));
    if let Some(user) = &sender.user {
        headers.push((USER_HEADER.to_owned(), user.clone()));
    }
    headers.push((DESTINATION_HEADER.to_owned(), destination.to_owned()));
    headers.push((MESSAGE_ID_HEADER.to_owned(), uuid::Uuid::new_v4().to_string()));
}

/// A header the application may set on a message: a name and value a STOMP frame can carry
/// in every version (no control characters, no `:` in the name), and not one the node sets.
pub(crate) fn settable_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && !name.contains(':')
        && !name.chars().any(char::is_control)
        && !value.chars().any(char::is_control)
        && !crate::hub::tail::is_reserved(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_replace_whatever_the_client_sent() {
        let mut headers = vec![
            ("x-stampede-user".to_owned(), "mallory".to_owned()),
            ("x-stampede-other".to_owned(), "x".to_owned()),
            ("content-type".to_owned(), "text/plain".to_owned()),
        ];
        strip_stamps(&mut headers);
        assert_eq!(headers, [("content-type".to_owned(), "text/plain".to_owned())]);
        let sender = Sender { session: Arc::from("abc1"), node: "n1".into(), user: Some("ann".into()) };
        headers.push((USER_HEADER.to_owned(), "mallory".to_owned()));
        stamp(&mut headers, &sender, "/app/chat");
        let get =
            |n: &str| headers.iter().filter(|(k, _)| k == n).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!(get(USER_HEADER), ["ann"]);
        assert_eq!(get(SESSION_HEADER), ["abc1"]);
        assert_eq!(get(NODE_HEADER), ["n1"]);
        assert_eq!(get(DESTINATION_HEADER), ["/app/chat"]);
        assert_eq!(get(MESSAGE_ID_HEADER).len(), 1);
    }

    #[test]
    fn settable_headers_cannot_break_a_frame() {
        assert!(settable_header("x-a", "b c"));
        assert!(!settable_header("x:a", "b"));
        assert!(!settable_header("x-a", "b\nCONNECT"));
        assert!(!settable_header("", "b"));
        assert!(!settable_header("message-id", "1"));
    }
}
