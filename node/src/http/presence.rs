//! `GET /api/v1/presence?destination=<destination>`: the presence of one destination,
//! cluster-wide, as [`crate::hub::Hub::presence`] reads it.
//!
//! 200 with `{"destination": "/topic/chat.room1", "members": [{"user": "ann", "session": "…",
//! "node": "…"}, …]}` (members sorted by user, then session; an anonymous session's user is
//! `null`), or `"members": null` when the `presence` setting keeps no presence for the
//! destination; 400 without a destination; 503 when the engine cannot be read.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error;
use crate::engine::Member;
use crate::node::Node;

#[derive(Debug, Serialize)]
struct Presence {
    destination: String,
    /// `None` where presence is not kept.
    members: Option<Vec<Member>>,
}

pub(super) async fn presence(State(node): State<Arc<Node>>, uri: Uri) -> Response {
    let destination = uri.query().unwrap_or("").split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "destination").then(|| decode(value)).flatten()
    });
    let Some(destination) = destination.filter(|d| !d.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "expected ?destination=<destination>".to_owned());
    };
    match node.hub().presence(&destination).await {
        Ok(members) => Json(Presence { destination, members }).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// A query value with `+` as space and `%XX` escapes decoded; `None` when not UTF-8 or badly
/// escaped.
fn decode(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(rest.get(..2)?).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &rest[2..];
            }
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_decoded() {
        assert_eq!(super::decode("%2Ftopic%2Fchat.room1").as_deref(), Some("/topic/chat.room1"));
        assert_eq!(super::decode("/topic/a+b").as_deref(), Some("/topic/a b"));
        assert_eq!(super::decode("%zz"), None);
        assert_eq!(super::decode("%2"), None);
    }
}
