//! Session events (`session-events`): Spring's `SessionConnectEvent`, `SessionSubscribeEvent`,
//! `SessionUnsubscribeEvent` and `SessionDisconnectEvent`, for backends in any language.
//!
//! Each event is an application message on the configured destination, routed like any other:
//! to STOMP workers (a queue, so events survive a backend restart and are shared by replicas)
//! or to an HTTP backend. Its headers are [`EVENT_HEADER`] and the node's stamps; its body, an
//! [`EventDocument`]. For workers, a session's events are enqueued in the order they happened
//! (the session hands each to the engine before going on); HTTP calls carry no order.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use super::http::Call;
use super::{stamp, Apps, Sender, Target, EVENT_HEADER};
use crate::destination::wildcard_match;
use crate::engine::Message;

/// What happened to a session.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// CONNECTED was sent.
    Connect,
    /// A SUBSCRIBE to a destination `session-events-subscriptions` names was accepted.
    Subscribe { destination: &'a str, subscription: &'a str },
    /// That subscription ended (UNSUBSCRIBE, or the session's end).
    Unsubscribe { destination: &'a str, subscription: &'a str },
    /// A connected session ended; `reason` as the `disconnected` log line says it.
    Disconnect { reason: &'a str },
}

/// The body of a session event.
#[derive(Debug, Serialize)]
pub struct EventDocument<'a> {
    pub event: &'a str,
    pub session: &'a str,
    pub node: &'a str,
    pub user: Option<&'a str>,
    pub transport: &'a str,
    pub peer: String,
    /// Unix time in milliseconds.
    pub at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

impl Event<'_> {
    fn name(self) -> &'static str {
        match self {
            Event::Connect => "connect",
            Event::Subscribe { .. } => "subscribe",
            Event::Unsubscribe { .. } => "unsubscribe",
            Event::Disconnect { .. } => "disconnect",
        }
    }
}

impl Apps {
    /// Whether SUBSCRIBE and UNSUBSCRIBE of `destination` (as subscribed) are events.
    pub fn subscription_events(&self, destination: &str) -> bool {
        self.settings.session_events.is_some()
            && self
                .settings
                .session_events_subscriptions
                .iter()
                .any(|p| wildcard_match(p.as_bytes(), destination.as_bytes()))
    }
}

/// The message of `event` of `sender`'s session, when `session-events` is set: an enqueue for
/// the workers, or a call for the HTTP backend. The session sends it (a worker event handed to
/// the engine before the session goes on, an HTTP call on a task of its own).
pub fn message(
    apps: &Apps,
    sender: &Sender,
    transport: &str,
    peer: SocketAddr,
    event: Event<'_>,
) -> Option<Routed> {
    let events = apps.settings().session_events.clone()?;
    let (destination, subscription, reason) = match event {
        Event::Subscribe { destination, subscription } | Event::Unsubscribe { destination, subscription } => {
            (Some(destination), Some(subscription), None)
        }
        Event::Disconnect { reason } => (None, None, Some(reason)),
        Event::Connect => (None, None, None),
    };
    let document = EventDocument {
        event: event.name(),
        session: &sender.session,
        node: &sender.node,
        user: sender.user.as_deref(),
        transport,
        peer: peer.to_string(),
        at_ms: crate::hub::sessions::now_ms(),
        destination,
        subscription,
        reason,
    };
    let body = Bytes::from(serde_json::to_vec(&document).expect("events serialize"));
    let mut headers = vec![
        (EVENT_HEADER.to_owned(), event.name().to_owned()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    Some(match apps.target(&events) {
        Target::Workers => {
            stamp(&mut headers, sender, &events);
            Routed::Enqueue(Message { destination: Arc::from(events.as_str()), headers, body, offset: None })
        }
        Target::Http(url) => Routed::Http(Call {
            url: url.to_owned(),
            destination: events,
            headers,
            body,
            sender: sender.clone(),
            notify_sender: false,
        }),
    })
}

/// A session event on its way.
#[derive(Debug)]
pub enum Routed {
    /// To the workers' queue.
    Enqueue(Message),
    /// To the HTTP backend.
    Http(Call),
}
