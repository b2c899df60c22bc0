//! Destination names and what kind of delivery each one gets.
//!
//! `/topic/<name>` broadcasts, `/queue/<name>` has competing consumers, and `/user/...` follows
//! Spring's convention: a client SUBSCRIBEs to `/user/<path>` and receives what anyone SENDs to
//! `/user/<its user name>/<path>`. Inside the node both become the user-qualified form
//! `/user/<name>/<path>`, which is delivered like a topic to every session of that user.
//!
//! `/presence<destination>` (`/presence/topic/chat`) carries the join and leave events of a
//! destination whose presence is kept (see [`crate::engine::presence`]): clients may SUBSCRIBE
//! to it, as a topic, when they may subscribe to the destination itself; nobody may SEND to it.

use std::borrow::Cow;
use std::fmt;

/// The longest destination accepted, in bytes.
pub const MAX_DESTINATION_LEN: usize = 1024;

/// The prefix of presence event destinations: `/presence/topic/chat` carries the join and leave
/// events of `/topic/chat`.
pub const PRESENCE_PREFIX: &str = "/presence";

/// The `reply-to` prefix of a private reply destination: a SEND carrying
/// `reply-to:/temp-queue/<name>` gets that header rewritten to a `/reply-queue/...` destination
/// only its session receives (RabbitMQ's convention).
pub const TEMP_QUEUE_PREFIX: &str = "/temp-queue/";

/// The prefix of the destinations `reply-to:/temp-queue/<name>` is rewritten to:
/// `/reply-queue/<session id>/<token>/<name>`. Anyone may SEND there; only that session receives,
/// with `subscription:/temp-queue/<name>`.
pub const REPLY_QUEUE_PREFIX: &str = "/reply-queue/";

/// The destination the presence events of `destination` (a routing name) are published on.
pub fn presence_events(destination: &str) -> String {
    format!("{PRESENCE_PREFIX}{destination}")
}

/// How a destination delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Topic,
    Queue,
    User,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Topic, Kind::Queue, Kind::User];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Topic => "topic",
            Kind::Queue => "queue",
            Kind::User => "user",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("unknown destination {0:?}: destinations start with /topic/, /queue/ or /user/")]
    Unknown(String),
    #[error("invalid destination {0:?}: {1}")]
    Invalid(String, &'static str),
    #[error("user destinations need a login: connect with a login to use {0:?}")]
    NoUser(String),
    #[error(
        "{0:?} is a presence destination: the broker publishes its join and leave events there; \
         clients may SUBSCRIBE to it, not SEND"
    )]
    PresenceReadOnly(String),
}

/// A destination resolved for routing: its kind and the name the engine uses for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub kind: Kind,
    /// `/topic/a`, `/queue/b`, or the user-qualified `/user/<name>/<path>`.
    pub name: String,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Checks what every destination must be: at most [`MAX_DESTINATION_LEN`] bytes, no control
/// characters.
pub fn check(dest: &str) -> Result<(), DestinationError> {
    if dest.len() > MAX_DESTINATION_LEN {
        return Err(DestinationError::Invalid(truncate(dest), "longer than 1024 bytes"));
    }
    if dest.chars().any(char::is_control) {
        return Err(DestinationError::Invalid(truncate(dest), "contains control characters"));
    }
    Ok(())
}

fn truncate(dest: &str) -> String {
    dest.chars().take(64).collect()
}

fn non_empty_tail<'a>(dest: &'a str, prefix: &str) -> Result<Option<&'a str>, DestinationError> {
    match dest.strip_prefix(prefix) {
        Some("") => Err(DestinationError::Invalid(truncate(dest), "the name is empty")),
        Some(tail) => Ok(Some(tail)),
        None => Ok(None),
    }
}

/// Resolves the destination of a SEND (or an admin publish). `/user/<name>/<path>` names the
/// receiving user.
pub fn for_send(dest: &str) -> Result<Route, DestinationError> {
    check(dest)?;
    if is_presence(dest) {
        return Err(DestinationError::PresenceReadOnly(truncate(dest)));
    }
    if non_empty_tail(dest, "/topic/")?.is_some() {
        return Ok(Route { kind: Kind::Topic, name: dest.to_owned() });
    }
    if non_empty_tail(dest, "/queue/")?.is_some() {
        return Ok(Route { kind: Kind::Queue, name: dest.to_owned() });
    }
    if let Some(tail) = non_empty_tail(dest, "/user/")? {
        match tail.split_once('/') {
            Some((user, path)) if !user.is_empty() && !path.is_empty() => {
                return Ok(Route { kind: Kind::User, name: dest.to_owned() })
            }
            _ => {
                return Err(DestinationError::Invalid(truncate(dest), "expected /user/<name>/<destination>"))
            }
        }
    }
    Err(DestinationError::Unknown(truncate(dest)))
}

/// Resolves the destination of a SUBSCRIBE by the session of `user`. `/user/<path>` becomes
/// `/user/<user>/<path>`.
pub fn for_subscribe(dest: &str, user: Option<&str>) -> Result<Route, DestinationError> {
    check(dest)?;
    if dest.starts_with(TEMP_QUEUE_PREFIX) || dest.starts_with(REPLY_QUEUE_PREFIX) {
        return Err(DestinationError::Invalid(
            truncate(dest),
            "a temporary queue is made by a SEND's reply-to:/temp-queue/<name> and receives \
             without SUBSCRIBE",
        ));
    }
    if let Some(watched) = dest.strip_prefix(PRESENCE_PREFIX) {
        if watched.is_empty() || watched == "/" || is_presence(watched) {
            return Err(DestinationError::Invalid(truncate(dest), "expected /presence/<destination>"));
        }
        if let Some(watched) = for_watched(watched, user)? {
            let name = presence_events(&watched.name);
            return Ok(Route { kind: Kind::Topic, name });
        }
    }
    if let Some(path) = non_empty_tail(dest, "/user/")? {
        let Some(user) = user else {
            return Err(DestinationError::NoUser(truncate(dest)));
        };
        let path = path.trim_start_matches('/');
        if path.is_empty() {
            return Err(DestinationError::Invalid(truncate(dest), "the name is empty"));
        }
        return Ok(Route { kind: Kind::User, name: format!("/user/{user}/{path}") });
    }
    for_send(dest)
}

/// The destination of a `/presence<destination>` SUBSCRIBE, resolved; `None` when `dest` is not
/// one (it starts with `/presence` but not `/presence/`, like `/presences/x`).
fn for_watched(watched: &str, user: Option<&str>) -> Result<Option<Route>, DestinationError> {
    if !watched.starts_with('/') {
        return Ok(None);
    }
    for_subscribe(watched, user).map(Some)
}

/// The session a `/reply-queue/<session>/<token>/<name>` destination belongs to.
pub fn reply_queue_session(dest: &str) -> Option<&str> {
    let mut parts = dest.strip_prefix(REPLY_QUEUE_PREFIX)?.splitn(3, '/');
    let session = parts.next().filter(|s| !s.is_empty())?;
    parts.next().filter(|token| !token.is_empty())?;
    parts.next().filter(|name| !name.is_empty())?;
    Some(session)
}

/// Whether `dest` is a presence destination, `/presence/...`.
pub fn is_presence(dest: &str) -> bool {
    dest.strip_prefix(PRESENCE_PREFIX).is_some_and(|rest| rest.starts_with('/'))
}

/// The destination whose presence events `route` carries, for a route resolved by
/// [`for_subscribe`] from `/presence<destination>`: access to the events is access to it.
pub fn presence_target(route: &Route) -> Option<Route> {
    let watched = route.name.strip_prefix(PRESENCE_PREFIX)?;
    if !watched.starts_with('/') {
        return None;
    }
    for_send(watched).ok()
}

/// The destination header a subscriber sees for a message published to `name`: user
/// destinations show the `/user/<path>` form the client subscribed to (as Spring does).
pub fn as_seen_by_subscriber(name: &str) -> Cow<'_, str> {
    if let Some((_, path)) = name.strip_prefix("/user/").and_then(|tail| tail.split_once('/')) {
        return Cow::Owned(format!("/user/{path}"));
    }
    Cow::Borrowed(name)
}

/// `*` matches any run of bytes, `/` included; everything else matches itself.
pub(crate) fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and where in `text` its current run ends.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if pattern.get(p) == Some(&b'*') {
            star = Some((p, t));
            p += 1;
        } else if pattern.get(p) == Some(&text[t]) {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            // Let the last `*` swallow one more byte and retry from there.
            star = Some((star_p, star_t + 1));
            p = star_p + 1;
            t = star_t + 1;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_resolve_by_prefix() {
        assert_eq!(for_send("/topic/a").unwrap().kind, Kind::Topic);
        assert_eq!(for_send("/queue/a.b").unwrap().kind, Kind::Queue);
        let user = for_send("/user/ann/queue/x").unwrap();
        assert_eq!((user.kind, user.name.as_str()), (Kind::User, "/user/ann/queue/x"));
        assert!(matches!(for_send("/exchange/x"), Err(DestinationError::Unknown(_))));
        assert!(matches!(for_send("/topic/"), Err(DestinationError::Invalid(..))));
        assert!(matches!(for_send("/user/ann"), Err(DestinationError::Invalid(..))));
        assert!(matches!(for_send("/topic/a\u{1}"), Err(DestinationError::Invalid(..))));
        assert!(for_send(&format!("/topic/{}", "x".repeat(2000))).is_err());
    }

    #[test]
    fn user_subscriptions_are_qualified_by_the_session_user() {
        let route = for_subscribe("/user/queue/x", Some("ann")).unwrap();
        assert_eq!(route.name, "/user/ann/queue/x");
        assert!(matches!(for_subscribe("/user/queue/x", None), Err(DestinationError::NoUser(_))));
        assert_eq!(for_subscribe("/topic/t", None).unwrap().kind, Kind::Topic);
    }

    #[test]
    fn presence_destinations_are_subscribed_as_topics_and_never_sent_to() {
        let route = for_subscribe("/presence/topic/chat.room1", None).unwrap();
        assert_eq!((route.kind, route.name.as_str()), (Kind::Topic, "/presence/topic/chat.room1"));
        let target = presence_target(&route).unwrap();
        assert_eq!((target.kind, target.name.as_str()), (Kind::Topic, "/topic/chat.room1"));
        let route = for_subscribe("/presence/user/queue/x", Some("ann")).unwrap();
        assert_eq!(route.name, "/presence/user/ann/queue/x");
        assert_eq!(presence_target(&route).unwrap().kind, Kind::User);
        assert_eq!(
            presence_target(&for_subscribe("/presence/queue/q", None).unwrap()).unwrap().kind,
            Kind::Queue
        );
        assert!(presence_target(&for_subscribe("/topic/t", None).unwrap()).is_none());
        assert!(matches!(for_send("/presence/topic/x"), Err(DestinationError::PresenceReadOnly(_))));
        assert!(matches!(for_subscribe("/presence", None), Err(DestinationError::Invalid(..))));
        assert!(matches!(for_subscribe("/presence/", None), Err(DestinationError::Invalid(..))));
        assert!(matches!(
            for_subscribe("/presence/presence/topic/x", None),
            Err(DestinationError::Invalid(..))
        ));
        assert!(matches!(for_subscribe("/presence/exchange/x", None), Err(DestinationError::Unknown(_))));
        assert!(matches!(for_subscribe("/presences/x", None), Err(DestinationError::Unknown(_))));
    }

    #[test]
    fn subscribers_see_the_unqualified_user_destination() {
        assert_eq!(as_seen_by_subscriber("/user/ann/queue/x"), "/user/queue/x");
        assert_eq!(as_seen_by_subscriber("/topic/a"), "/topic/a");
    }

    #[test]
    fn wildcards_match_any_run_of_characters() {
        let m = |p: &str, t: &str| wildcard_match(p.as_bytes(), t.as_bytes());
        assert!(m("/topic/prices", "/topic/prices"));
        assert!(!m("/topic/prices", "/topic/prices2"));
        assert!(m("/topic/prices/*", "/topic/prices/eur"));
        assert!(m("/topic/prices/*", "/topic/prices/eur/usd"), "* crosses /");
        assert!(m("/topic/prices/*", "/topic/prices/"), "* matches the empty run");
        assert!(!m("/topic/prices/*", "/topic/price"));
        assert!(m("/topic/*.trades", "/topic/a/b.trades"));
        assert!(!m("/topic/*.trades", "/topic/a.trades.x"));
        assert!(m("/topic/*a*b*", "/topic/xxaxxbxx"));
        assert!(m("/topic/*a*b", "/topic/abab"), "backtracks");
        assert!(!m("/topic/*a*b", "/topic/aba"));
        assert!(m("/topic/**", "/topic/"));
        assert!(m("/topic/*", "/topic/ünïcode"));
    }
}
