//! Presence: who is subscribed, cluster-wide, to the destinations the `presence` setting names,
//! and the join and leave events clients receive on `/presence<destination>`.
//!
//! A member is one session of one node subscribed at least once to a destination: a session
//! subscribing twice is one member, and leaves at its last UNSUBSCRIBE or when it ends. An
//! anonymous session is a member whose `user` is `None` (`null` in JSON; its events carry no
//! `x-presence-user` header).
//!
//! Engines keep the members ([`super::Engine::presence_join`], [`super::Engine::presence_leave`],
//! [`super::Engine::presence`]) and publish the events as ordinary topic messages on
//! `/presence<destination>`, so they reach every node's subscribers through the topic machinery.
//! The Redis engine's side (a hash per destination, dead nodes' members removed) is in
//! `redis/presence.rs`.

use bytes::Bytes;

use crate::destination::presence_events;

/// Header of an event: `join` or `leave`.
pub const EVENT_HEADER: &str = "x-presence";
/// Header of an event: the member's user (absent for an anonymous session).
pub const USER_HEADER: &str = "x-presence-user";
/// Header of an event: the member's session id.
pub const SESSION_HEADER: &str = "x-presence-session";
/// Header of an event: the node the member's session is on.
pub const NODE_HEADER: &str = "x-presence-node";

/// One member of a destination's presence.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Member {
    /// The session's user; `None` for an anonymous session.
    pub user: Option<String>,
    /// The session id (the `session` header of its CONNECTED frame).
    pub session: String,
    /// The node the session is connected to.
    pub node: String,
}

/// What happened to a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Join,
    Leave,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Join => "join",
            Change::Leave => "leave",
        }
    }
}

/// The event message of `change` of `member` in `destination`: headers `x-presence`,
/// `x-presence-user` (when the member has a user), `x-presence-session`, `x-presence-node`,
/// `content-type: application/json`, and a JSON body with the same facts.
pub fn event(change: Change, destination: &str, member: &Member) -> super::Message {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        event: &'static str,
        destination: &'a str,
        user: Option<&'a str>,
        session: &'a str,
        node: &'a str,
    }
    let body = Body {
        event: change.as_str(),
        destination,
        user: member.user.as_deref(),
        session: &member.session,
        node: &member.node,
    };
    let body = serde_json::to_vec(&body).expect("a presence event serializes");
    let mut headers = vec![(EVENT_HEADER.to_owned(), change.as_str().to_owned())];
    if let Some(user) = &member.user {
        headers.push((USER_HEADER.to_owned(), user.clone()));
    }
    headers.extend([
        (SESSION_HEADER.to_owned(), member.session.clone()),
        (NODE_HEADER.to_owned(), member.node.clone()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ]);
    super::Message {
        destination: presence_events(destination).into(),
        headers,
        body: Bytes::from(body),
        offset: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_the_member_in_headers_and_json() {
        let member = Member { user: Some("ann".into()), session: "s1".into(), node: "n1".into() };
        let message = event(Change::Join, "/topic/chat.room1", &member);
        assert_eq!(&*message.destination, "/presence/topic/chat.room1");
        let header = |name: &str| message.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(header("x-presence"), Some("join"));
        assert_eq!(header("x-presence-user"), Some("ann"));
        assert_eq!(header("x-presence-session"), Some("s1"));
        assert_eq!(header("x-presence-node"), Some("n1"));
        assert_eq!(header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&message.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"event": "join", "destination": "/topic/chat.room1", "user": "ann",
                "session": "s1", "node": "n1"})
        );
        let anonymous = Member { user: None, ..member };
        let message = event(Change::Leave, "/topic/x", &anonymous);
        assert!(message.headers.iter().all(|(n, _)| n != "x-presence-user"));
        let body: serde_json::Value = serde_json::from_slice(&message.body).unwrap();
        assert_eq!(body["user"], serde_json::Value::Null);
        assert_eq!(body["event"], "leave");
    }
}
