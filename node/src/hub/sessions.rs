//! This node's connected sessions, and the orders the admin API gives them from any node.
//!
//! A session registers here at its start and leaves at its end: its id (shared with the session)
//! and its [`Outbox`], which holds what the admin API shows of it ([`SessionMeta`]: transport,
//! peer, and once CONNECTED its user and when) and through which the hub hands it [`Command`]s
//! (disconnect, unsubscribe) and deliveries meant for it alone. A table entry is two pointers:
//! every idle connection pays for it (the metadata in the outbox costs less than an entry of its
//! own would, bench/notes.md). Its subscriptions are not copied here: the hub's destination
//! tables are the one record of them, read when an answer lists them. Sessions not yet CONNECTED
//! are neither listed nor given orders.
//!
//! The admin API asks every node of the cluster at once ([`crate::engine::Engine::call_all`]):
//! a [`Request`] goes to each node's hub ([`Hub::answer`]), which answers from this table and its
//! destination tables alone (locks only, no I/O), and the caller merges the [`Reply`]s. Both
//! travel as JSON: they are few, small and not on any message path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{AckMode, Command, Hub, MessageTail, Outbox, SessionMeta, Subscription};
use crate::destination::Kind;
use crate::engine::{Engine, EngineError, Message, SESSION_TAG_LEN};
use crate::metrics::DropReason;

/// One subscription of a session, as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionView {
    pub id: String,
    /// As the hub routes it: user destinations carry their user (`/user/ann/queue/a`).
    pub destination: String,
    pub ack: String,
}

/// One session, as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub session: String,
    pub user: Option<String>,
    pub node: String,
    pub transport: String,
    pub remote: String,
    pub connected_ms: u64,
    pub subscriptions: Vec<SubscriptionView>,
}

/// Subscribers of one destination on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationView {
    pub destination: String,
    pub subscribers: u64,
    /// Distinct users among them (anonymous sessions are not users).
    pub users: Vec<String>,
}

/// Consumers of one queue on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerView {
    pub queue: String,
    pub consumers: u64,
    /// Entries handed to them and not yet acknowledged.
    pub unacked: u64,
}

/// A question or an order for every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Sessions, all or of one user.
    Sessions { user: Option<String> },
    /// One session, on whichever node holds it.
    Session { session: String },
    /// Ends one session, or every session of a user, with an ERROR carrying `reason`.
    Disconnect { session: Option<String>, user: Option<String>, reason: String },
    /// Ends a session's subscriptions of a destination.
    Unsubscribe { session: String, destination: String },
    /// A message for one session's subscriptions of its destination only.
    SendToSession { session: String, destination: String, headers: Vec<(String, String)>, body: Vec<u8> },
    /// Subscribers per destination: of one, or of all (topics, user destinations and queues).
    Destinations { destination: Option<String> },
    /// Queue consumers and what they hold unacknowledged.
    Consumers,
}

/// A node's answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Sessions(Vec<SessionView>),
    /// How many sessions (or subscriptions, or deliveries) the order reached here.
    Done(u64),
    Destinations(Vec<DestinationView>),
    Consumers(Vec<ConsumerView>),
    /// The request could not be read (a node of another version).
    Unknown,
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("requests serialize")
    }
}

impl Reply {
    pub fn decode(bytes: &[u8]) -> Reply {
        serde_json::from_slice(bytes).unwrap_or(Reply::Unknown)
    }
}

fn ack_name(ack: AckMode) -> &'static str {
    match ack {
        AckMode::Auto => "auto",
        AckMode::Client => "client",
        AckMode::ClientIndividual => "client-individual",
    }
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A message for one session's subscriptions of `destination` (as [`Request::SendToSession`]),
/// sent to the session's node by [`Hub::send_to_session`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToSession {
    pub session: String,
    pub destination: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ToSession {
    fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).expect("orders encode")
    }

    /// `None` for bytes that are not an order (a node of another version).
    pub(super) fn decode(bytes: &[u8]) -> Option<ToSession> {
        let config = bincode::config::standard().with_limit::<{ 64 * 1024 * 1024 }>();
        bincode::serde::decode_from_slice(bytes, config).ok().map(|(order, _)| order)
    }
}

impl Hub {
    /// Delivers `order` to its session wherever it is: here, when the session id carries this
    /// node's tag; otherwise through the engine to the node whose tag it carries. Resolves once
    /// handed over; a session that is gone (or has no such subscription) is counted on its node
    /// as `messages_dropped{reason="no_session"}`.
    pub async fn send_to_session(&self, order: ToSession) -> Result<(), EngineError> {
        let Some(tag) = order.session.get(..SESSION_TAG_LEN) else {
            self.metrics.dropped(DropReason::NoSession, 1);
            return Ok(());
        };
        if tag == self.engine.session_tag() {
            self.deliver_to_session(order);
            return Ok(());
        }
        let tag = tag.to_owned();
        self.engine.tell(&tag, order.encode()).await
    }

    /// Delivers `order` to a session of this node; how many subscriptions it reached.
    pub(super) fn deliver_to_session(&self, order: ToSession) -> u64 {
        let ToSession { session, destination, headers, body } = order;
        let reached = match self.reply(Request::SendToSession { session, destination, headers, body }, "") {
            Reply::Done(n) => n,
            _ => 0,
        };
        if reached == 0 {
            self.metrics.dropped(DropReason::NoSession, 1);
        }
        reached
    }

    /// A session started; `id` is shared with the session.
    pub fn register_session(&self, id: Arc<str>, outbox: Arc<Outbox>) {
        self.sessions.lock().expect("sessions lock").insert(id, outbox);
    }

    /// A session ended.
    pub fn deregister_session(&self, id: &str) {
        self.sessions.lock().expect("sessions lock").remove(id);
    }

    /// The CONNECTED sessions `keep` selects, copied out of the table.
    fn connected(
        &self,
        keep: impl Fn(&str, &SessionMeta) -> bool,
    ) -> Vec<(Arc<str>, Arc<Outbox>, SessionMeta)> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .filter_map(|(id, outbox)| {
                let meta = outbox.meta();
                (meta.connected_ms > 0 && keep(id, &meta)).then(|| (id.clone(), outbox.clone(), meta))
            })
            .collect()
    }

    /// Connected sessions on this node.
    pub fn session_count(&self) -> usize {
        self.connected(|_, _| true).len()
    }

    /// Every local subscription, once.
    fn all_subscriptions(&self) -> Vec<Arc<Subscription>> {
        let mut all: Vec<Arc<Subscription>> = Vec::new();
        for topic in self.topics.read().expect("topics lock").values() {
            all.extend(topic.subscriptions().iter().cloned());
        }
        for dispatch in self.queues.lock().expect("queues lock").values() {
            all.extend(dispatch.consumers());
        }
        all
    }

    /// The local subscriptions of one destination (topics and user destinations, or queues).
    fn subscriptions_of(&self, destination: &str) -> Vec<Arc<Subscription>> {
        if let Some(topic) = self.topics.read().expect("topics lock").get(destination) {
            return topic.subscriptions().to_vec();
        }
        self.queues.lock().expect("queues lock").get(destination).map(|d| d.consumers()).unwrap_or_default()
    }

    /// Answers a request of the admin API (from this node or another) from this node's tables.
    pub fn answer(&self, request: &[u8], node_id: &str) -> Vec<u8> {
        let reply = match serde_json::from_slice::<Request>(request) {
            Ok(request) => self.reply(request, node_id),
            Err(_) => Reply::Unknown,
        };
        serde_json::to_vec(&reply).expect("replies serialize")
    }

    fn reply(&self, request: Request, node_id: &str) -> Reply {
        match request {
            Request::Sessions { user } => Reply::Sessions(self.session_views(node_id, |_, meta| {
                user.as_deref().is_none_or(|user| meta.user.as_deref() == Some(user))
            })),
            Request::Session { session } => {
                Reply::Sessions(self.session_views(node_id, |id, _| id == session.as_str()))
            }
            Request::Disconnect { session, user, reason } => {
                let chosen = self.connected(|id, meta| {
                    session.as_deref().is_some_and(|wanted| id == wanted)
                        || user.as_deref().is_some_and(|wanted| meta.user.as_deref() == Some(wanted))
                });
                let reached = chosen
                    .iter()
                    .filter(|(_, outbox, _)| outbox.command(Command::Disconnect(reason.clone())))
                    .count();
                Reply::Done(reached as u64)
            }
            Request::Unsubscribe { session, destination } => {
                let Some((outbox, found)) = self.session_subscriptions(&session, &destination) else {
                    return Reply::Done(0);
                };
                if let Some(first) = found.first() {
                    outbox.command(Command::Unsubscribe(first.route.name.clone()));
                }
                Reply::Done(found.len() as u64)
            }
            Request::SendToSession { session, destination, headers, body } => {
                let Some((outbox, found)) = self.session_subscriptions(&session, &destination) else {
                    return Reply::Done(0);
                };
                let mut reached = 0;
                // Queue subscriptions take entries from their queue only.
                for subscription in found.iter().filter(|s| s.route.kind != Kind::Queue) {
                    let message = Message {
                        destination: Arc::from(subscription.route.name.as_str()),
                        headers: headers.clone(),
                        body: body.clone().into(),
                        offset: None,
                    };
                    let refused = outbox.push_messages(subscription, &[Arc::new(MessageTail::new(&message))]);
                    reached += u64::from(refused == 0);
                }
                Reply::Done(reached)
            }
            Request::Destinations { destination } => Reply::Destinations(self.destination_views(destination)),
            Request::Consumers => {
                let queues = self.queues.lock().expect("queues lock");
                Reply::Consumers(
                    queues
                        .iter()
                        .map(|(name, dispatch)| {
                            let consumers = dispatch.consumers();
                            ConsumerView {
                                queue: name.to_string(),
                                consumers: consumers.len() as u64,
                                unacked: consumers
                                    .iter()
                                    .map(|s| {
                                        u64::from(s.in_flight.load(std::sync::atomic::Ordering::Acquire))
                                    })
                                    .sum(),
                            }
                        })
                        .collect(),
                )
            }
        }
    }

    /// The session's outbox and its subscriptions of `destination`: as the hub routes it, or as
    /// the client subscribed (`/user/queue/a`, which the hub routes as `/user/<user>/queue/a`).
    fn session_subscriptions(
        &self,
        session: &str,
        destination: &str,
    ) -> Option<(Arc<Outbox>, Vec<Arc<Subscription>>)> {
        let (_, outbox, meta) = self.connected(|id, _| id == session).pop()?;
        let user = meta.user;
        let mine = |destination: &str| -> Vec<Arc<Subscription>> {
            self.subscriptions_of(destination)
                .into_iter()
                .filter(|s| Arc::ptr_eq(&s.outbox, &outbox))
                .collect()
        };
        let mut found = mine(destination);
        if let (true, Some(user), Some(path)) = (found.is_empty(), user, destination.strip_prefix("/user/")) {
            found = mine(&format!("/user/{user}/{path}"));
        }
        Some((outbox, found))
    }

    /// The sessions `keep` selects, each with its subscriptions.
    fn session_views(&self, node_id: &str, keep: impl Fn(&str, &SessionMeta) -> bool) -> Vec<SessionView> {
        let mut views: Vec<(Arc<Outbox>, SessionView)> = self
            .connected(keep)
            .into_iter()
            .map(|(id, outbox, meta)| {
                let view = SessionView {
                    session: id.to_string(),
                    user: meta.user.as_deref().map(str::to_owned),
                    node: node_id.to_owned(),
                    transport: meta.transport.as_str().to_owned(),
                    remote: meta.peer.to_string(),
                    connected_ms: meta.connected_ms,
                    subscriptions: Vec::new(),
                };
                (outbox, view)
            })
            .collect();
        if views.is_empty() {
            return Vec::new();
        }
        let index: HashMap<*const Outbox, usize> =
            views.iter().enumerate().map(|(i, (outbox, _))| (Arc::as_ptr(outbox), i)).collect();
        for subscription in self.all_subscriptions() {
            if !subscription.active.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            if let Some(&i) = index.get(&Arc::as_ptr(&subscription.outbox)) {
                views[i].1.subscriptions.push(SubscriptionView {
                    id: subscription.id.clone(),
                    destination: subscription.route.name.clone(),
                    ack: ack_name(subscription.ack).to_owned(),
                });
            }
        }
        views
            .into_iter()
            .map(|(_, mut view)| {
                view.subscriptions.sort_by(|a, b| a.id.cmp(&b.id));
                view
            })
            .collect()
    }

    fn destination_views(&self, only: Option<String>) -> Vec<DestinationView> {
        let users_of: HashMap<*const Outbox, Arc<str>> = self
            .connected(|_, _| true)
            .into_iter()
            .filter_map(|(_, outbox, meta)| meta.user.map(|user| (Arc::as_ptr(&outbox), user)))
            .collect();
        let mut views: BTreeMap<String, (u64, std::collections::BTreeSet<String>)> = BTreeMap::new();
        let subscriptions = match &only {
            Some(destination) => self.subscriptions_of(destination),
            None => self.all_subscriptions(),
        };
        for subscription in subscriptions {
            let entry = views.entry(subscription.route.name.clone()).or_default();
            entry.0 += 1;
            if let Some(user) = users_of.get(&Arc::as_ptr(&subscription.outbox)) {
                entry.1.insert(user.to_string());
            }
        }
        views
            .into_iter()
            .map(|(destination, (subscribers, users))| DestinationView {
                destination,
                subscribers,
                users: users.into_iter().collect(),
            })
            .collect()
    }
}
