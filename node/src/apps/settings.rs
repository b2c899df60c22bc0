//! The application settings (`app-*`, the hooks, `session-events*`): their type (the `apps`
//! field of [`Config`](crate::config::Config)) and their resolution, called by
//! [`Layers::resolve`](crate::config::layers::Layers::resolve), as each feature validates its own
//! options.

use std::time::Duration;

use crate::auth::settings::Secret;
use crate::config::layers::Layers;
use crate::config::parse::{count, duration, list, nonzero, size};
use crate::config::settings::{
    APP_BACKEND_SECRET, APP_HTTP, APP_HTTP_CONCURRENCY, APP_HTTP_MAX_RESPONSE, APP_HTTP_TIMEOUT,
    APP_PREFIXES, CONNECT_HOOK, HOOK_TIMEOUT, SESSION_EVENTS, SESSION_EVENTS_SUBSCRIPTIONS, SUBSCRIBE_HOOK,
    SUBSCRIBE_HOOK_PATTERNS,
};
use crate::config::ConfigError;

/// Application destinations are POSTed to `url` when they match `pattern`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRoute {
    /// `*` matches any run of characters, `/` included.
    pub pattern: String,
    pub url: String,
}

/// How the node hands messages and decisions to the application.
#[derive(Clone, Debug, PartialEq)]
pub struct AppSettings {
    /// Application destination prefixes, each starting and ending with `/`; empty: none.
    pub prefixes: Vec<String>,
    /// A CONNECT passcode that makes the session a backend.
    pub backend_secret: Option<Secret>,
    /// In order; the first matching route applies. Unmatched application destinations go to
    /// STOMP workers.
    pub http: Vec<HttpRoute>,
    pub http_timeout: Duration,
    pub http_concurrency: usize,
    /// Largest answer read from a backend or hook.
    pub max_response: usize,
    pub connect_hook: Option<String>,
    pub subscribe_hook: Option<String>,
    pub subscribe_hook_patterns: Vec<String>,
    pub hook_timeout: Duration,
    /// An application destination receiving session events.
    pub session_events: Option<String>,
    /// Destinations whose SUBSCRIBE and UNSUBSCRIBE are session events.
    pub session_events_subscriptions: Vec<String>,
}

impl AppSettings {
    /// Whether `destination` is an application destination: under one of the prefixes.
    pub fn is_app(&self, destination: &str) -> bool {
        self.prefixes
            .iter()
            .any(|prefix| destination.len() > prefix.len() && destination.starts_with(prefix.as_str()))
    }
}

pub(crate) fn resolve(layers: &Layers<'_>) -> Result<AppSettings, ConfigError> {
    let prefixes = layers.value(&APP_PREFIXES, prefixes)?.value;
    let session_events = layers.optional(&SESSION_EVENTS, |text| {
        if prefixes.iter().any(|prefix| text.starts_with(prefix.as_str()) && text.len() > prefix.len()) {
            Ok(text.to_owned())
        } else {
            Err(format!("must be an application destination, under one of {}", prefixes.join(", ")))
        }
    })?;
    Ok(AppSettings {
        backend_secret: layers
            .optional(&APP_BACKEND_SECRET, |text| {
                if text.len() >= 16 {
                    Ok(Secret::new(text))
                } else {
                    Err("must be at least 16 characters".to_owned())
                }
            })?
            .map(|r| r.value),
        http: layers.optional(&APP_HTTP, http_routes)?.map(|r| r.value).unwrap_or_default(),
        http_timeout: layers.value(&APP_HTTP_TIMEOUT, |s| nonzero(duration(s)))?.value,
        http_concurrency: layers.value(&APP_HTTP_CONCURRENCY, |s| nonzero(count(s)))?.value,
        max_response: layers.value(&APP_HTTP_MAX_RESPONSE, |s| nonzero(size(s)))?.value,
        connect_hook: layers.optional(&CONNECT_HOOK, url)?.map(|r| r.value),
        subscribe_hook: layers.optional(&SUBSCRIBE_HOOK, url)?.map(|r| r.value),
        subscribe_hook_patterns: layers.value(&SUBSCRIBE_HOOK_PATTERNS, list)?.value,
        hook_timeout: layers.value(&HOOK_TIMEOUT, |s| nonzero(duration(s)))?.value,
        session_events: session_events.map(|r| r.value),
        session_events_subscriptions: layers
            .optional(&SESSION_EVENTS_SUBSCRIPTIONS, list)?
            .map(|r| r.value)
            .unwrap_or_default(),
        prefixes,
    })
}

/// `app-prefixes`: `off`, or prefixes that start and end with `/`.
fn prefixes(text: &str) -> Result<Vec<String>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Vec::new());
    }
    let prefixes = list(text)?;
    const TAKEN: [&str; 6] = ["/topic/", "/queue/", "/user/", "/presence/", "/temp-queue/", "/reply-queue/"];
    for prefix in &prefixes {
        if prefix.len() < 3 || !prefix.starts_with('/') || !prefix.ends_with('/') {
            return Err(format!(
                "prefix {prefix:?} must start and end with / and name something, like /app/"
            ));
        }
        if TAKEN.iter().any(|taken| prefix.starts_with(taken) || taken.starts_with(prefix.as_str())) {
            return Err(format!("prefix {prefix:?} overlaps the broker's own destinations"));
        }
    }
    Ok(prefixes)
}

/// An absolute `http://` or `https://` URL.
fn url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(text.to_owned()),
        _ => Err(format!("{text:?} is not an http:// or https:// URL")),
    }
}

/// `app-http`: `PATTERN=URL,...`.
fn http_routes(text: &str) -> Result<Vec<HttpRoute>, String> {
    list(text)?
        .into_iter()
        .map(|item| {
            let (pattern, target) =
                item.split_once('=').ok_or_else(|| format!("{item:?} is not PATTERN=URL"))?;
            let pattern = pattern.trim();
            if !pattern.starts_with('/') {
                return Err(format!("pattern {pattern:?} must be a destination pattern, like /app/orders/*"));
            }
            Ok(HttpRoute { pattern: pattern.to_owned(), url: url(target.trim())? })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert_eq!(prefixes("/app/, /rpc/").unwrap(), ["/app/", "/rpc/"]);
        assert!(prefixes("off").unwrap().is_empty());
        assert!(prefixes("app/").is_err());
        assert!(prefixes("/app").is_err());
        assert!(prefixes("/topic/app/").is_err());
        assert!(prefixes("/").is_err());
    }

    #[test]
    fn http_routes_pair_a_pattern_with_a_url() {
        let routes = http_routes("/app/rpc/*=http://127.0.0.1:8000/rpc, /app/x=https://h/x").unwrap();
        assert_eq!(
            routes[0],
            HttpRoute { pattern: "/app/rpc/*".into(), url: "http://127.0.0.1:8000/rpc".into() }
        );
        assert_eq!(routes[1].url, "https://h/x");
        assert!(http_routes("/app/x").is_err());
        assert!(http_routes("/app/x=ftp://h/").is_err());
        assert!(http_routes("app=http://h/").is_err());
    }
}
