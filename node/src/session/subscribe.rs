//! SUBSCRIBE and UNSUBSCRIBE: access checks, registering with the hub, and the replay of a
//! history topic from `x-since` before the subscription goes live, with no gap and no duplicate.
//!
//! RabbitMQ's durable topic subscriptions (`durable:true` or `persistent:true`: messages kept
//! while the subscriber is away, resumed by subscription id) are refused with an ERROR naming
//! what Stampede offers instead: the node would have to keep every such subscriber's messages
//! (or offset) per subscription id across connections and nodes. A history topic with
//! `x-since` gives the same recovery with the offset kept by the client; a queue keeps
//! messages for one consumer. On a queue the headers are accepted (queues are durable).
//! `prefetch-count` on a topic subscription in a client ack mode opens a [`Window`].
//!
//! With the message store unavailable a SUBSCRIBE is still accepted (the hub asks for its watch
//! again until the store answers) and its RECEIPT sent; a resume (`x-since`) then gets
//! `x-recovered:false`, as nothing could be replayed.

use super::*;
use crate::apps::events::Event as AppEvent;

/// RabbitMQ's SUBSCRIBE headers asking for a durable topic subscription (`persistent` is its
/// older name), refused on topics: see [`Session::on_subscribe`].
const DURABLE_HEADERS: [&str; 2] = ["durable", "persistent"];

/// A subscription resuming a history topic: live messages up to `floor` were replayed already.
pub(super) struct Resume {
    pub(super) floor: u64,
    /// The history did not cover the gap: flag the next message with `x-recovered:false`.
    pub(super) gap: bool,
}

impl<S: FrameSink> Session<S> {
    pub(super) async fn on_subscribe(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let version = self.version.unwrap_or(Version::V1_2);
        let destination = required(&frame, "destination")?;
        let route = if self.node.apps().is_app(destination) {
            destination::check(destination)?;
            if !self.identity.is_backend() {
                return Err(AuthError::Refused(format!(
                    "not authorized to subscribe to {}: application destinations are consumed by \
                     backends (role {})",
                    destination.chars().take(128).collect::<String>(),
                    crate::apps::BACKEND_ROLE
                ))
                .into());
            }
            Route { kind: Kind::Queue, name: destination.to_owned() }
        } else {
            destination::for_subscribe(destination, self.user.as_deref())?
        };
        self.may_subscribe(&route)?;
        Box::pin(self.subscribe_hook(&frame, destination)).await?;
        let id = match (frame.get("id"), version) {
            (Some(id), _) => id.to_owned(),
            (None, Version::V1_0) => destination.to_owned(),
            (None, _) => return Err(SessionError::MissingHeader { command: "SUBSCRIBE", header: "id" }),
        };
        if self.subscriptions.contains_key(&id) {
            return Err(SessionError::invalid(format!(
                "subscription id {id:?} is already in use on this connection"
            )));
        }
        let max = self.node.config().limits.max_subscriptions;
        if self.subscriptions.len() >= max {
            return Err(SessionError::limit(format!("too many subscriptions (max-subscriptions is {max})")));
        }
        let ack = match frame.get("ack") {
            None => AckMode::Auto,
            Some(mode) => AckMode::parse(mode).ok_or_else(|| {
                SessionError::invalid(format!(
                    "unknown ack mode {mode:?}: expected auto, client or client-individual"
                ))
            })?,
        };
        let prefetch = match frame.get(PREFETCH_HEADER) {
            None => self.node.config().queues.default_prefetch,
            Some(n) => n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                SessionError::invalid(format!("{PREFETCH_HEADER} must be a positive integer, not {n:?}"))
            })?,
        };
        let since = match frame.get(SINCE_HEADER) {
            None => None,
            Some(s) => Some(s.parse::<u64>().map_err(|_| {
                SessionError::invalid(format!("{SINCE_HEADER} must be an offset (an integer), not {s:?}"))
            })?),
        };
        if since.is_some() && route.kind == Kind::Queue {
            return Err(SessionError::invalid(format!("{SINCE_HEADER} applies to topics, not queues")));
        }
        if route.kind != Kind::Queue {
            if let Some(asked) = DURABLE_HEADERS.into_iter().find(|h| frame.get(h) == Some("true")) {
                return Err(SessionError::invalid(format!(
                    "{asked}:true: durable topic subscriptions are not supported (a topic keeps \
                     nothing for an absent subscriber); resume a history topic with \
                     {SINCE_HEADER}:<last x-offset>, or use a /queue/ destination"
                )));
            }
        }
        let route_is_topic = route.kind != Kind::Queue;
        let lifetime = self.lifetime(&frame, &route)?;
        let subscription = self.new_subscription(id.clone(), route, ack, prefetch, lifetime);
        if route_is_topic && ack != AckMode::Auto && frame.get(PREFETCH_HEADER).is_some() {
            self.windows.insert(subscription.seq, Window::new(prefetch));
        }
        self.subscriptions.insert(id.clone(), subscription.clone());
        match self.node.hub().subscribe(subscription.clone()).wait().await {
            // The store is away: the subscription stays, and takes effect once it answers.
            Err(EngineError::Unavailable(error)) => {
                tracing::warn!(
                    destination = %subscription.route.name,
                    %error,
                    "subscription kept; it takes effect when the message store answers"
                );
                self.node.hub().keep_watching(&subscription.route.name, subscription.route.kind);
            }
            result => result?,
        }
        self.join_presence(&subscription.route.name).await;
        let mut receipt =
            frame.get("receipt").map(|r| Frame::new(Command::Receipt).with_header("receipt-id", r));
        if let Some(since) = since {
            let recovered = match self.replay(&subscription, since).await {
                Ok(recovered) => recovered,
                // No history to read: the client is told it missed something, and gets every
                // live message from now on.
                Err(SessionError::Engine(EngineError::Unavailable(error))) => {
                    tracing::warn!(destination = %subscription.route.name, %error, "history unreadable; resuming without it");
                    self.resumes.insert(subscription.seq, Resume { floor: 0, gap: true });
                    false
                }
                Err(error) => return Err(error),
            };
            receipt =
                receipt.map(|r| r.with_header(RECOVERED_HEADER, if recovered { "true" } else { "false" }));
        }
        if let Some(receipt) = receipt {
            self.send_frame(&receipt).await?;
        }
        if self.subscription_events(destination) {
            Box::pin(self.emit(AppEvent::Subscribe { destination, subscription: &id })).await;
        }
        Ok(Flow::Continue)
    }

    /// A subscription of this session, not yet registered with the hub.
    pub(super) fn new_subscription(
        &mut self,
        id: String,
        route: Route,
        ack: AckMode,
        prefetch: u32,
        lifetime: Option<QueueLifetime>,
    ) -> Arc<Subscription> {
        let version = self.version.unwrap_or(Version::V1_2);
        let mut head = BytesMut::with_capacity(32 + id.len());
        head.extend_from_slice(b"MESSAGE\nsubscription:");
        match version {
            Version::V1_0 => head.extend_from_slice(id.as_bytes()),
            v => escape_into(&id, v, &mut head),
        }
        head.put_u8(b'\n');
        self.next_sub_seq += 1;
        Arc::new(Subscription {
            seq: self.next_sub_seq,
            id,
            head: head.freeze(),
            ack,
            route,
            outbox: self.outbox.clone(),
            active: AtomicBool::new(true),
            prefetch,
            in_flight: AtomicU32::new(0),
            lifetime,
        })
    }

    /// The queue lifetime the SUBSCRIBE's `auto-delete` and `x-expires` headers ask for: the
    /// configured rule's, with each header given replacing its part; `None` without either.
    /// Checked on every destination, used on queues only (a topic keeps nothing to delete).
    fn lifetime(&self, frame: &Frame, route: &Route) -> Result<Option<QueueLifetime>, SessionError> {
        let auto_delete = match frame.get(AUTO_DELETE_HEADER) {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(SessionError::invalid(format!(
                    "{AUTO_DELETE_HEADER} must be true or false, not {other:?}"
                )))
            }
        };
        let expires = match frame.get(EXPIRES_HEADER) {
            None => None,
            Some(ms) => Some(ms.parse::<u64>().ok().filter(|ms| *ms > 0).ok_or_else(|| {
                SessionError::invalid(format!(
                    "{EXPIRES_HEADER} must be a positive number of milliseconds, not {ms:?}"
                ))
            })?),
        };
        if route.kind != Kind::Queue || (auto_delete.is_none() && expires.is_none()) {
            return Ok(None);
        }
        let mut lifetime = self.node.config().queue_lifetime(&route.name);
        if let Some(auto_delete) = auto_delete {
            lifetime.auto_delete = auto_delete;
        }
        if let Some(ms) = expires {
            lifetime.expires = Some(Duration::from_millis(ms));
        }
        Ok(Some(lifetime))
    }

    /// Writes what a resuming subscriber missed after `since`; live deliveries up to the topic's
    /// offset at the history read are then skipped (they are replayed, or lost), and every one
    /// above it is written. The floor is the topic's offset, not `since`: after the topic
    /// restarted (Redis came back empty) its new offsets start again at 1, below a client's old
    /// `since`, and are new messages all the same. Returns whether the history covered the
    /// whole gap.
    pub(super) async fn replay(
        &mut self,
        subscription: &Arc<Subscription>,
        since: u64,
    ) -> Result<bool, SessionError> {
        let history = self.node.hub().history(&subscription.route.name, since).await?;
        let mut floor = history.last;
        let mut gap = !history.complete;
        for message in &history.messages {
            let prepared = MessageTail::new(message);
            floor = floor.max(message.offset.unwrap_or(floor));
            if let Written::Full = self.write_message(subscription, &prepared, None, gap) {
                self.sink.flush().await.map_err(SessionError::io)?;
            }
            gap = false;
        }
        self.resumes.insert(subscription.seq, Resume { floor, gap });
        Ok(history.complete)
    }

    pub(super) async fn on_unsubscribe(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let id = match (frame.get("id"), self.version) {
            (Some(id), _) => id.to_owned(),
            (None, Some(Version::V1_0)) => required(&frame, "destination")?.to_owned(),
            (None, _) => return Err(SessionError::MissingHeader { command: "UNSUBSCRIBE", header: "id" }),
        };
        let Some(subscription) = self.subscriptions.remove(&id) else {
            return Err(SessionError::invalid(format!("no subscription with id {id:?}")));
        };
        self.end_subscription(&subscription).await?;
        self.send_receipt(frame.get("receipt").map(str::to_owned)).await?;
        let destination = destination::as_seen_by_subscriber(&subscription.route.name);
        if self.subscription_events(&destination) {
            Box::pin(self.emit(AppEvent::Unsubscribe { destination: &destination, subscription: &id })).await;
        }
        Ok(Flow::Continue)
    }

    /// Ends every subscription of the session to `destination` (as the hub routes it), as an
    /// UNSUBSCRIBE of each would: an operator's order through the admin API. The client is not
    /// told (STOMP has no frame for it); a later UNSUBSCRIBE of the id is refused as unknown.
    pub(super) async fn unsubscribe_destination(&mut self, destination: &str) -> Result<(), SessionError> {
        let ids: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.route.name == destination)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(subscription) = self.subscriptions.remove(&id) {
                self.end_subscription(&subscription).await?;
            }
        }
        Ok(())
    }

    async fn end_subscription(&mut self, subscription: &Arc<Subscription>) -> Result<(), SessionError> {
        self.node.hub().unsubscribe(subscription);
        self.leave_presence(&subscription.route.name).await;
        self.resumes.remove(&subscription.seq);
        if let Some(window) = self.windows.remove(&subscription.seq) {
            self.outbox.written(window.held_bytes());
        }
        self.release_unacked(|s| Arc::ptr_eq(s, subscription)).await
    }
}
