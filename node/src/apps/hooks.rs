//! The connect and subscribe hooks: the application's `ChannelInterceptor`, over HTTP.
//!
//! At CONNECT, after the users file or JWT (when configured) accepted the client, the node POSTs
//! a [`ConnectDocument`] to `connect-hook`; the answer accepts (its `user` replaces the user, its
//! `roles`, `publish` and `subscribe` add to the session's) or refuses with a reason. At
//! SUBSCRIBE to a destination matching `subscribe-hook-patterns`, after the access rules, it
//! POSTs a [`SubscribeDocument`] to `subscribe-hook`. Both fail closed: a hook that times out
//! (`hook-timeout`), is unreachable, answers other than 2xx, or answers anything but the
//! documented JSON refuses the client. Counted in `stampede_hook_requests_total`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::http::{headers_map, Failure};
use super::Apps;
use crate::auth::{AuthError, Identity};
use crate::destination::wildcard_match;
use crate::metrics::{Hook, HookOutcome};

/// What the connect hook is sent.
#[derive(Debug, Serialize)]
pub struct ConnectDocument<'a> {
    pub session: &'a str,
    pub node: &'a str,
    pub transport: &'a str,
    pub peer: String,
    pub login: Option<&'a str>,
    pub passcode: Option<&'a str>,
    /// From the WebSocket handshake (`Authorization: Bearer` or `?token=`).
    pub token: Option<&'a str>,
    /// CONNECT's headers but `passcode`.
    pub headers: BTreeMap<&'a str, &'a str>,
    /// The user the users file or JWT named, or the login taken on trust without them.
    pub user: Option<&'a str>,
    pub roles: &'a [String],
}

/// What the subscribe hook is sent.
#[derive(Debug, Serialize)]
pub struct SubscribeDocument<'a> {
    /// As the client subscribed.
    pub destination: &'a str,
    pub session: &'a str,
    pub node: &'a str,
    pub user: Option<&'a str>,
    pub headers: BTreeMap<&'a str, &'a str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
}

impl Apps {
    /// Asks `url` and reads its decision; counted. `Err`: refused, with the text for the client.
    async fn decide<T: Serialize>(
        &self,
        hook: Hook,
        url: &str,
        document: &T,
    ) -> Result<Decision, Result<String, Failure>> {
        let answered = self.post(url, document, self.settings.hook_timeout, false).await;
        let decision = answered.and_then(|bytes| {
            serde_json::from_slice::<Decision>(&bytes).map_err(|e| Failure {
                outcome: crate::metrics::AppOutcome::Invalid,
                why: format!("an answer that is not the documented JSON: {e}"),
            })
        });
        match decision {
            Ok(decision) if decision.allow => {
                self.metrics.hook(hook, HookOutcome::Allow);
                Ok(decision)
            }
            Ok(decision) => {
                self.metrics.hook(hook, HookOutcome::Deny);
                Err(Ok(decision.reason.unwrap_or_else(|| "refused by the application".to_owned())))
            }
            Err(failure) => {
                self.metrics.hook(hook, HookOutcome::Failed);
                tracing::warn!(hook = hook.as_str(), %url, why = %failure.why, "application hook failed; refusing");
                Err(Err(failure))
            }
        }
    }

    /// The connect hook's decision on `identity` (what the users file or JWT said); the
    /// identity unchanged when no hook is configured.
    pub async fn on_connect(
        &self,
        document: ConnectDocument<'_>,
        mut identity: Identity,
    ) -> Result<Identity, AuthError> {
        let Some(url) = &self.settings.connect_hook else { return Ok(identity) };
        match self.decide(Hook::Connect, url, &document).await {
            Ok(decision) => {
                if let Some(user) = decision.user.filter(|u| !u.is_empty()) {
                    identity.user = Some(user);
                }
                identity.roles.extend(decision.roles);
                identity.grants.publish.extend(decision.publish);
                identity.grants.subscribe.extend(decision.subscribe);
                Ok(identity)
            }
            Err(Ok(reason)) => Err(AuthError::Refused(format!("connection refused: {reason}"))),
            Err(Err(failure)) => Err(AuthError::Refused(format!(
                "connection refused: the application's connect hook failed ({})",
                failure.why
            ))),
        }
    }

    /// Whether the subscribe hook is asked about `destination` (as subscribed).
    pub fn asks_about_subscribe(&self, destination: &str) -> bool {
        self.settings.subscribe_hook.is_some()
            && self
                .settings
                .subscribe_hook_patterns
                .iter()
                .any(|p| wildcard_match(p.as_bytes(), destination.as_bytes()))
    }

    /// The subscribe hook's decision; allowed when the hook is not asked about it.
    pub async fn on_subscribe(&self, document: SubscribeDocument<'_>) -> Result<(), AuthError> {
        let Some(url) = self
            .settings
            .subscribe_hook
            .as_deref()
            .filter(|_| self.asks_about_subscribe(document.destination))
        else {
            return Ok(());
        };
        let destination = document.destination.chars().take(128).collect::<String>();
        match self.decide(Hook::Subscribe, url, &document).await {
            Ok(_) => Ok(()),
            Err(Ok(reason)) => {
                Err(AuthError::Refused(format!("not authorized to subscribe to {destination}: {reason}")))
            }
            Err(Err(failure)) => Err(AuthError::Refused(format!(
                "not authorized to subscribe to {destination}: the application's subscribe hook failed ({})",
                failure.why
            ))),
        }
    }
}

/// A frame's headers for a hook, without the passcode.
pub fn frame_headers(headers: &[(String, String)]) -> BTreeMap<&str, &str> {
    let mut map = headers_map(headers);
    map.remove("passcode");
    map
}
