//! The session's side of [`crate::apps`]: where a SEND goes (a destination, an application
//! destination, one session), the stamps and the `reply-to` temporary queues, the hooks at
//! CONNECT and SUBSCRIBE, and the session events.

use super::*;
use crate::apps::events::{self, Event as AppEvent, Routed};
use crate::apps::hooks::{self, ConnectDocument, SubscribeDocument};
use crate::apps::http::Call;
use crate::apps::{self, Sender, Target, ERROR_HEADER, SESSION_HEADER};
use crate::destination::{REPLY_QUEUE_PREFIX, TEMP_QUEUE_PREFIX};
use crate::hub::sessions::ToSession;

/// Where a SEND goes, decided (and allowed) before its message is made.
pub(super) enum SendTarget {
    /// A topic, queue or user destination.
    Route(Route),
    /// An application destination (routed as a queue of the same name).
    App(Route),
    /// One session's subscriptions: a backend's `x-stampede-session`, or a reply queue.
    Session(String),
}

/// A SEND's message, ready to go.
pub(super) enum Outgoing {
    Publish(Kind, Message),
    ToSession(ToSession),
    Http(Call),
}

impl<S: FrameSink> Session<S> {
    /// Who this session is, as application messages are stamped.
    pub(super) fn sender(&self) -> Sender {
        Sender {
            session: self.session_id.clone(),
            node: self.node.config().node_id.clone(),
            user: self.user.clone(),
        }
    }

    /// Where a SEND to its `destination` goes, and whether this client may send there.
    pub(super) fn send_target(&self, frame: &Frame) -> Result<SendTarget, SessionError> {
        let destination = required(frame, "destination")?;
        if self.node.apps().is_app(destination) {
            destination::check(destination)?;
            let route = Route { kind: Kind::Queue, name: destination.to_owned() };
            self.node.auth().may_publish(&self.identity, &route)?;
            return Ok(SendTarget::App(route));
        }
        if destination.starts_with(REPLY_QUEUE_PREFIX) {
            destination::check(destination)?;
            let session = destination::reply_queue_session(destination).ok_or_else(|| {
                SessionError::invalid(format!(
                    "invalid destination {:?}: a reply queue is /reply-queue/<session>/<token>/<name>, \
                     as a reply-to header names it",
                    destination.chars().take(64).collect::<String>()
                ))
            })?;
            return Ok(SendTarget::Session(session.to_owned()));
        }
        if let Some(session) = frame.get(SESSION_HEADER).filter(|_| self.identity.is_backend()) {
            destination::check(destination)?;
            return Ok(SendTarget::Session(session.to_owned()));
        }
        let route = destination::for_send(destination)?;
        self.node.auth().may_publish(&self.identity, &route)?;
        Ok(SendTarget::Route(route))
    }

    /// The SEND's message for `target`: the node's headers removed, a client's `x-stampede-*`
    /// too, a `reply-to:/temp-queue/<name>` rewritten to this session's reply queue, and an
    /// application message stamped with its sender.
    pub(super) fn outgoing(&mut self, target: SendTarget, frame: Frame) -> Result<Outgoing, SessionError> {
        let destination = required(&frame, "destination")?.to_owned();
        let route = match &target {
            SendTarget::Route(route) | SendTarget::App(route) => route.clone(),
            SendTarget::Session(_) => Route { kind: Kind::Topic, name: destination.clone() },
        };
        let mut message = message(&route, frame);
        if !self.identity.is_backend() {
            apps::strip_stamps(&mut message.headers);
        }
        if let Some(at) = message.headers.iter().position(|(name, _)| name == "reply-to") {
            if let Some(name) = message.headers[at].1.strip_prefix(TEMP_QUEUE_PREFIX) {
                let name = name.to_owned();
                message.headers[at].1 = self.temp_queue(&name)?;
            }
        }
        Ok(match target {
            SendTarget::Route(route) => Outgoing::Publish(route.kind, message),
            SendTarget::App(route) => match self.node.apps().target(&route.name) {
                Target::Workers => {
                    apps::stamp(&mut message.headers, &self.sender(), &route.name);
                    Outgoing::Publish(Kind::Queue, message)
                }
                Target::Http(url) => Outgoing::Http(Call {
                    url: url.to_owned(),
                    destination: route.name,
                    headers: message.headers,
                    body: message.body,
                    sender: self.sender(),
                    notify_sender: true,
                }),
            },
            SendTarget::Session(session) => {
                message.headers.retain(|(name, _)| name != SESSION_HEADER);
                Outgoing::ToSession(ToSession {
                    session,
                    destination,
                    headers: message.headers,
                    body: message.body.to_vec(),
                })
            }
        })
    }

    /// Sends to one session or an HTTP backend (publishing is [`Session::on_send`]'s). With a
    /// receipt, answers once done: for a backend, once its answer is carried out, the RECEIPT
    /// carrying [`ERROR_HEADER`] when it failed. Without one, an HTTP call runs on its own task.
    pub(super) async fn send_elsewhere(
        &mut self,
        outgoing: Outgoing,
        receipt: Option<String>,
    ) -> Result<(), SessionError> {
        match outgoing {
            Outgoing::Publish(..) => unreachable!("published by on_send"),
            Outgoing::ToSession(order) => {
                let sent = self.node.hub().send_to_session(order).await;
                match receipt {
                    Some(_) => {
                        sent?;
                        self.send_receipt(receipt).await?;
                    }
                    None => {
                        if let Err(error) = sent {
                            tracing::warn!(%error, "a message for one session could not be sent");
                        }
                    }
                }
            }
            Outgoing::Http(call) => {
                let node = self.node.clone();
                let task = tokio::spawn(async move { node.apps().serve(node.hub(), call).await });
                if let Some(id) = receipt {
                    let error = task.await.unwrap_or_else(|_| {
                        Some("application backend failed: the call was cancelled".into())
                    });
                    let mut frame = Frame::new(Command::Receipt).with_header("receipt-id", id);
                    if let Some(error) = error {
                        frame = frame.with_header(ERROR_HEADER, error);
                    }
                    self.send_frame(&frame).await?;
                }
            }
        }
        Ok(())
    }

    /// This session's reply queue for `reply-to:/temp-queue/<name>`, made at its first use: a
    /// subscription with id `/temp-queue/<name>` that only this node's hub knows.
    fn temp_queue(&mut self, name: &str) -> Result<String, SessionError> {
        if name.is_empty() {
            return Err(SessionError::invalid("reply-to /temp-queue/ needs a name"));
        }
        let id = format!("{TEMP_QUEUE_PREFIX}{name}");
        if let Some(existing) = self.subscriptions.get(&id) {
            if existing.route.name.starts_with(REPLY_QUEUE_PREFIX) {
                return Ok(existing.route.name.clone());
            }
            return Err(SessionError::invalid(format!(
                "subscription id {id:?} is already in use on this connection"
            )));
        }
        let max = self.node.config().limits.max_subscriptions;
        if self.subscriptions.len() >= max {
            return Err(SessionError::limit(format!("too many subscriptions (max-subscriptions is {max})")));
        }
        let token = format!("{:016x}", rand::random::<u64>());
        let route = Route {
            kind: Kind::Topic,
            name: format!("{REPLY_QUEUE_PREFIX}{}/{token}/{name}", self.session_id),
        };
        destination::check(&route.name)?;
        let subscription = self.new_subscription(id.clone(), route, AckMode::Auto, 1, None);
        self.subscriptions.insert(id, subscription.clone());
        // Local only: nothing to wait for.
        let _ = self.node.hub().subscribe(subscription.clone());
        Ok(subscription.route.name.clone())
    }

    /// The connect hook's decision on `identity`, when one is configured.
    pub(super) async fn connect_hook(
        &self,
        frame: &Frame,
        identity: Identity,
        bearer: Option<&str>,
    ) -> Result<Identity, SessionError> {
        let meta = self.outbox.meta();
        let document = ConnectDocument {
            session: &self.session_id,
            node: &self.node.config().node_id,
            transport: meta.transport.as_str(),
            peer: meta.peer.to_string(),
            login: frame.get("login"),
            passcode: frame.get("passcode"),
            token: bearer,
            headers: hooks::frame_headers(&frame.headers),
            user: identity.user.as_deref(),
            roles: &identity.roles.clone(),
        };
        Ok(self.node.apps().on_connect(document, identity.clone()).await?)
    }

    /// The subscribe hook's decision, when it is asked about `destination`.
    pub(super) async fn subscribe_hook(&self, frame: &Frame, destination: &str) -> Result<(), SessionError> {
        if !self.node.apps().asks_about_subscribe(destination) {
            return Ok(());
        }
        let document = SubscribeDocument {
            destination,
            session: &self.session_id,
            node: &self.node.config().node_id,
            user: self.user.as_deref(),
            headers: hooks::frame_headers(&frame.headers),
        };
        Ok(self.node.apps().on_subscribe(document).await?)
    }

    /// Sends a session event, when `session-events` is set.
    pub(super) async fn emit(&mut self, event: AppEvent<'_>) {
        let meta = self.outbox.meta();
        let routed =
            events::message(self.node.apps(), &self.sender(), meta.transport.as_str(), meta.peer, event);
        match routed {
            None => {}
            Some(Routed::Enqueue(message)) => {
                let published = self.node.hub().publish(Kind::Queue, message).await;
                if let Some(error) = published.failed() {
                    tracing::warn!(%error, "a session event could not be stored");
                }
            }
            Some(Routed::Http(call)) => {
                let node = self.node.clone();
                let previous = self.event_call.take();
                self.event_call = Some(tokio::spawn(async move {
                    if let Some(previous) = previous {
                        let _ = previous.await;
                    }
                    node.apps().serve(node.hub(), call).await;
                }));
            }
        }
    }

    /// Whether this destination (as subscribed) sends subscription events.
    pub(super) fn subscription_events(&self, destination: &str) -> bool {
        self.node.apps().subscription_events(destination)
    }
}
