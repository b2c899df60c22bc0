//! HTTP backends: one POST per application message, its answer carried out.
//!
//! The request is a [`CallDocument`]; the answer, a 2xx with an empty body or an [`Answer`]:
//! messages to publish (to any destination, or to one session), a `reply` to the sender, an
//! `error` for the sender. Every call ends in one [`AppOutcome`], counted in
//! `stampede_app_http_requests_total`. Whatever the backend does (refuse, stall, answer garbage
//! or 50 MB), the cost is bounded: `app-http-concurrency` calls per node at once, each within
//! `app-http-timeout` (waiting for a slot included), reading at most `app-http-max-response`
//! bytes; the sender gets an error message on its `/user/queue/errors` and, when it asked for
//! one, a RECEIPT carrying [`ERROR_HEADER`]. Nothing is published unless the whole answer is
//! valid.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::{settable_header, Apps, Sender, ERRORS_DESTINATION, ERROR_HEADER, REPLY_DESTINATION};
use crate::destination::{self, Kind, Route};
use crate::engine::Message;
use crate::hub::sessions::ToSession;
use crate::hub::Hub;
use crate::metrics::AppOutcome;

/// Why a call to the application failed, and how it is counted.
#[derive(Debug)]
pub struct Failure {
    pub outcome: AppOutcome,
    pub why: String,
}

impl Failure {
    fn new(outcome: AppOutcome, why: impl Into<String>) -> Failure {
        Failure { outcome, why: why.into() }
    }

    fn unreachable(error: &reqwest::Error) -> Failure {
        // reqwest's own text names the URL only; the cause (refused, reset) is in its sources.
        let mut why = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            why.push_str(": ");
            why.push_str(&cause.to_string());
            source = cause.source();
        }
        Failure::new(AppOutcome::Unreachable, why)
    }
}

/// What is POSTed to an HTTP backend for one application message.
#[derive(Debug, Serialize)]
pub struct CallDocument<'a> {
    pub destination: &'a str,
    pub headers: BTreeMap<&'a str, &'a str>,
    /// The body, when it is UTF-8 text.
    pub body: Option<&'a str>,
    /// The body in standard base64, when it is not.
    pub body_base64: Option<String>,
    pub user: Option<&'a str>,
    pub session: &'a str,
    pub node: &'a str,
    pub message_id: &'a str,
}

/// A backend's answer. Unknown fields make it invalid: a typo must not pass for "nothing to do".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    #[serde(default)]
    publish: Vec<Publication>,
    #[serde(default)]
    reply: Option<Publication>,
    #[serde(default)]
    error: Option<String>,
}

/// One message of an answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Publication {
    #[serde(default)]
    destination: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_base64: Option<String>,
    /// Only this session's subscriptions of the destination.
    #[serde(default)]
    session: Option<String>,
}

/// One application message for an HTTP backend.
#[derive(Debug)]
pub struct Call {
    pub url: String,
    pub destination: String,
    /// The client's headers, without the node's stamps.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub sender: Sender,
    /// Send the sender an error message when the call fails (not for session events: the
    /// session sent nothing).
    pub notify_sender: bool,
}

/// A message an application (an HTTP answer, a backend's SEND) asked the node to send.
#[derive(Debug)]
pub enum Outgoing {
    /// To a topic, queue or user destination, or an application destination's workers.
    Publish(Kind, Message),
    /// To one session's subscriptions.
    ToSession(ToSession),
}

impl Outgoing {
    /// Sends it; resolves once published (or handed to the session's node).
    pub async fn send(self, hub: &Hub) -> Result<(), crate::engine::EngineError> {
        match self {
            Outgoing::Publish(kind, message) => hub.publish(kind, message).await.outcome().await.map(drop),
            Outgoing::ToSession(order) => hub.send_to_session(order).await,
        }
    }
}

impl Apps {
    /// POSTs `document` as JSON to `url` and reads a 2xx answer's body, all within `timeout`;
    /// with `slot`, one of the `app-http-concurrency` slots is taken first (within the timeout).
    pub(crate) async fn post<T: Serialize>(
        &self,
        url: &str,
        document: &T,
        timeout: Duration,
        slot: bool,
    ) -> Result<Bytes, Failure> {
        let body = serde_json::to_vec(document).expect("documents serialize");
        let max = self.settings.max_response;
        let work = async {
            let _slot = match slot {
                true => Some(
                    self.slots.acquire().await.map_err(|_| Failure::new(AppOutcome::Timeout, "closing"))?,
                ),
                false => None,
            };
            let mut response = self
                .client
                .post(url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| Failure::unreachable(&e))?;
            let status = response.status();
            if !status.is_success() {
                return Err(Failure::new(AppOutcome::Status, format!("answered {status}")));
            }
            let too_large = || Failure::new(AppOutcome::TooLarge, format!("answer over {max} bytes"));
            if response.content_length().is_some_and(|n| n > max as u64) {
                return Err(too_large());
            }
            let mut read = BytesMut::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| Failure::unreachable(&e))? {
                if read.len() + chunk.len() > max {
                    return Err(too_large());
                }
                read.extend_from_slice(&chunk);
            }
            Ok(read.freeze())
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(
                AppOutcome::Timeout,
                format!("no answer within {}", humantime::format_duration(timeout)),
            )),
        }
    }

    /// Calls the backend for one message and carries out its answer. `None` when all went
    /// well; otherwise the text the sender was sent on its errors destination (and its
    /// RECEIPT carries).
    pub async fn serve(&self, hub: &Hub, call: Call) -> Option<String> {
        let message_id = uuid::Uuid::new_v4().to_string();
        let text = std::str::from_utf8(&call.body).ok();
        let document = CallDocument {
            destination: &call.destination,
            headers: headers_map(&call.headers),
            body: text,
            body_base64: match text {
                Some(_) => None,
                None => Some(base64::engine::general_purpose::STANDARD.encode(&call.body)),
            },
            user: call.sender.user.as_deref(),
            session: &call.sender.session,
            node: &call.sender.node,
            message_id: &message_id,
        };
        let answered = self.post(&call.url, &document, self.settings.http_timeout, true).await;
        let carried = match answered {
            Ok(bytes) => self.carry_out(hub, &call.sender, &bytes).await,
            Err(failure) => Err(failure),
        };
        let error = match carried {
            Ok(None) => {
                self.metrics.app_http(AppOutcome::Ok);
                return None;
            }
            Ok(Some(error)) => {
                self.metrics.app_http(AppOutcome::Error);
                error
            }
            Err(Failure { outcome, why }) => {
                self.metrics.app_http(outcome);
                tracing::warn!(url = %call.url, destination = %call.destination, outcome = outcome.as_str(), %why, "application backend failed");
                format!("application backend failed: {why}")
            }
        };
        if !call.notify_sender {
            return Some(error);
        }
        let order = ToSession {
            session: call.sender.session.to_string(),
            destination: ERRORS_DESTINATION.to_owned(),
            headers: vec![
                (ERROR_HEADER.to_owned(), error.clone()),
                ("content-type".to_owned(), "text/plain;charset=utf-8".to_owned()),
            ],
            body: error.clone().into_bytes(),
        };
        if let Err(failed) = hub.send_to_session(order).await {
            tracing::debug!(%failed, "could not send a backend's error to its sender");
        }
        Some(error)
    }

    /// Checks a whole answer, then sends what it asks for. `Ok(Some(text))`: the answer's
    /// `error` for the sender.
    async fn carry_out(&self, hub: &Hub, sender: &Sender, bytes: &[u8]) -> Result<Option<String>, Failure> {
        let answer: Answer = if bytes.iter().all(u8::is_ascii_whitespace) {
            Answer::default()
        } else {
            serde_json::from_slice(bytes).map_err(|e| {
                Failure::new(AppOutcome::Invalid, format!("an answer that is not the documented JSON: {e}"))
            })?
        };
        let max_body = self.max_body;
        let mut outgoing = Vec::with_capacity(answer.publish.len() + 1);
        for publication in answer.publish {
            outgoing.push(self.outgoing(publication, None, max_body)?);
        }
        if let Some(reply) = answer.reply {
            outgoing.push(self.outgoing(reply, Some(&sender.session), max_body)?);
        }
        if let Some(error) = &answer.error {
            if error.chars().any(char::is_control) {
                return Err(Failure::new(AppOutcome::Invalid, "an error with control characters"));
            }
        }
        for message in outgoing {
            message.send(hub).await.map_err(|e| {
                Failure::new(AppOutcome::Unreachable, format!("publishing its answer failed: {e}"))
            })?;
        }
        Ok(answer.error)
    }

    /// A publication made a message, checked as a backend's SEND would be. `to_sender`: the
    /// `reply`, for the sender's session only.
    fn outgoing(
        &self,
        publication: Publication,
        to_sender: Option<&str>,
        max_body: usize,
    ) -> Result<Outgoing, Failure> {
        let invalid = |why: String| Failure::new(AppOutcome::Invalid, why);
        let Publication { destination, headers, body, body_base64, session } = publication;
        let body = match (body, body_base64) {
            (Some(_), Some(_)) => return Err(invalid("a message with both body and body_base64".into())),
            (Some(text), None) => Bytes::from(text),
            (None, Some(encoded)) => Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| invalid(format!("body_base64 is not base64: {e}")))?,
            ),
            (None, None) => Bytes::new(),
        };
        if body.len() > max_body {
            return Err(invalid(format!("a message body over max-body-size ({max_body} bytes)")));
        }
        if let Some((name, _)) = headers.iter().find(|(name, value)| !settable_header(name, value)) {
            return Err(invalid(format!("header {name:?} cannot be set")));
        }
        let headers: Vec<(String, String)> = headers.into_iter().collect();
        let session = to_sender.map(str::to_owned).or(session);
        let destination = match (destination, to_sender) {
            (Some(destination), _) => destination,
            (None, Some(_)) => REPLY_DESTINATION.to_owned(),
            (None, None) => return Err(invalid("a message to publish without a destination".into())),
        };
        match session {
            Some(session) => {
                destination::check(&destination).map_err(|e| invalid(e.to_string()))?;
                Ok(Outgoing::ToSession(ToSession { session, destination, headers, body: body.to_vec() }))
            }
            None => self.resolve(&destination, headers, body).map_err(invalid),
        }
    }

    /// A message to `destination` as a backend SENDs it: an application destination goes to its
    /// workers' queue, a reply queue to its session, anything else where it routes.
    pub fn resolve(
        &self,
        destination: &str,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Result<Outgoing, String> {
        if let Some(session) = destination::reply_queue_session(destination) {
            return Ok(Outgoing::ToSession(ToSession {
                session: session.to_owned(),
                destination: destination.to_owned(),
                headers,
                body: body.to_vec(),
            }));
        }
        let route = if self.is_app(destination) {
            Route { kind: Kind::Queue, name: destination.to_owned() }
        } else {
            destination::for_send(destination).map_err(|e| e.to_string())?
        };
        let message = Message { destination: Arc::from(route.name.as_str()), headers, body, offset: None };
        Ok(Outgoing::Publish(route.kind, message))
    }
}

/// Headers as a JSON object: the first of repeated ones, as STOMP reads them.
pub(crate) fn headers_map(headers: &[(String, String)]) -> BTreeMap<&str, &str> {
    let mut map = BTreeMap::new();
    for (name, value) in headers {
        map.entry(name.as_str()).or_insert(value.as_str());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    fn apps() -> Apps {
        Apps::new(&Config::default(), Arc::new(Metrics::new()))
    }

    fn publication(json: &str) -> Publication {
        serde_json::from_str(json).expect("a publication")
    }

    #[test]
    fn answers_of_the_wrong_shape_are_refused_whole() {
        assert!(
            serde_json::from_str::<Answer>(r#"{"publish": [], "replies": []}"#).is_err(),
            "unknown field"
        );
        assert!(serde_json::from_str::<Answer>(r#"{"publish": {"destination": "/topic/a"}}"#).is_err());
        assert!(serde_json::from_str::<Answer>(
            r#"{"publish": [{"destination": "/topic/a", "headers": {"a": 1}}]}"#
        )
        .is_err());
        let answer: Answer = serde_json::from_str(r#"{"error": "no"}"#).expect("an answer");
        assert_eq!(answer.error.as_deref(), Some("no"));
    }

    #[test]
    fn publications_become_messages_where_a_backend_may_send() {
        let apps = apps();
        let max = 1024;
        match apps.outgoing(publication(r#"{"destination": "/topic/a", "body_base64": "AAE="}"#), None, max) {
            Ok(Outgoing::Publish(Kind::Topic, message)) => assert_eq!(&message.body[..], [0, 1]),
            other => panic!("a topic message, not {other:?}"),
        }
        match apps.outgoing(publication(r#"{"destination": "/app/next", "body": "x"}"#), None, max) {
            Ok(Outgoing::Publish(Kind::Queue, message)) => assert_eq!(&*message.destination, "/app/next"),
            other => panic!("an application message, not {other:?}"),
        }
        match apps.outgoing(publication(r#"{"body": "pong"}"#), Some("abc1"), max) {
            Ok(Outgoing::ToSession(order)) => {
                assert_eq!((order.session.as_str(), order.destination.as_str()), ("abc1", REPLY_DESTINATION))
            }
            other => panic!("a reply to the sender, not {other:?}"),
        }
        match apps.outgoing(
            publication(r#"{"destination": "/user/queue/x", "session": "s9", "body": ""}"#),
            None,
            max,
        ) {
            Ok(Outgoing::ToSession(order)) => assert_eq!(order.session, "s9"),
            other => panic!("a message for one session, not {other:?}"),
        }
        let refused = |json: &str| apps.outgoing(publication(json), None, max).unwrap_err().outcome;
        assert_eq!(refused(r#"{"body": "no destination"}"#), AppOutcome::Invalid);
        assert_eq!(refused(r#"{"destination": "/exchange/x"}"#), AppOutcome::Invalid);
        assert_eq!(
            refused(r#"{"destination": "/topic/a", "body": "a", "body_base64": "YQ=="}"#),
            AppOutcome::Invalid
        );
        assert_eq!(refused(r#"{"destination": "/topic/a", "body_base64": "%%%"}"#), AppOutcome::Invalid);
        assert_eq!(refused(r#"{"destination": "/topic/a", "headers": {"x": "a\nb"}}"#), AppOutcome::Invalid);
        assert_eq!(
            refused(r#"{"destination": "/topic/a", "headers": {"message-id": "1"}}"#),
            AppOutcome::Invalid
        );
        assert_eq!(
            refused(&format!(r#"{{"destination": "/topic/a", "body": "{}"}}"#, "x".repeat(max + 1))),
            AppOutcome::Invalid
        );
    }

    #[test]
    fn repeated_headers_give_the_first_as_stomp_reads_them() {
        let headers = vec![("a".to_owned(), "1".to_owned()), ("a".to_owned(), "2".to_owned())];
        let map = headers_map(&headers);
        assert_eq!(map.get("a"), Some(&"1"));
    }
}
