//! `GET /api/v1/presence/<destination>`: the presence of one destination, cluster-wide.
//!
//! `GET /api/v1/presence/topic/chat.room1` answers 200 with
//! `{"destination": "/topic/chat.room1", "sessions": 2, "users": 1, "members": [{"user": "ann",
//! "session": "…", "node": "…"}, …]}` (members sorted by user, then session; an anonymous
//! session's user is `null` and counts as no user), 404 when the `presence` setting keeps no
//! presence for the destination, 503 when the engine cannot be read.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error;
use crate::engine::Member;
use crate::node::Node;

#[derive(Debug, Serialize)]
struct Presence {
    destination: String,
    /// Members (one per session).
    sessions: usize,
    /// Distinct users among the members.
    users: usize,
    members: Vec<Member>,
}

pub(super) async fn presence(State(node): State<Arc<Node>>, Path(rest): Path<String>) -> Response {
    let destination = format!("/{rest}");
    match node.hub().presence(&destination).await {
        Ok(Some(members)) => {
            let users = members.iter().filter_map(|m| m.user.as_deref()).collect::<BTreeSet<_>>().len();
            Json(Presence { destination, sessions: members.len(), users, members }).into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no presence is kept for {destination}: no pattern of the presence setting matches it"),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
