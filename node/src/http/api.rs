//! The server API, JSON under `/api/v1` on the admin port. `openapi.json` beside this file is its
//! contract, served at [`OPENAPI_PATH`] and checked against this code by schemathesis in the
//! suite (node/tests/admin_api.rs).
//!
//! Questions about sessions and subscribers go to every node of the cluster at once
//! ([`Engine::call_all`]: through Redis, or straight to this node's hub on the embedded engine);
//! each node answers from its own tables ([`crate::hub::sessions`]) and this module merges the
//! answers. A node that does not answer within the call's timeout is named in `missing_nodes`,
//! so a partial answer never passes for a whole one. Orders (disconnect, unsubscribe, send to
//! one session) go the same way and reach the node that holds the session.
//!
//! Bad input gets a 4xx and changes nothing: bodies that are not the documented JSON (400), an
//! unknown session (404), `limit` outside 1..=1000 (400), a body over `max-body-size` (413).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error;
use crate::destination;
use crate::engine::{Answers, Engine, EngineError, Message};
use crate::hub::sessions::{DestinationView, Reply, Request, SessionView};
use crate::hub::tail;
use crate::node::Node;

/// Where the OpenAPI document is served (without the admin token: it holds no data).
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// The OpenAPI 3.0 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Page size when `limit` is not given, and the largest one allowed.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The reason a disconnected client reads in its ERROR when the operator gave none.
const DEFAULT_REASON: &str = "disconnected by an operator";

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route(OPENAPI_PATH, get(openapi))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/sessions/{session}", get(session))
        .route("/api/v1/sessions/{session}/disconnect", post(disconnect_session))
        .route("/api/v1/sessions/{session}/unsubscribe", post(unsubscribe))
        .route("/api/v1/users", get(users))
        .route("/api/v1/users/{user}/disconnect", post(disconnect_user))
        .route("/api/v1/destinations", get(destinations))
        .route("/api/v1/presence", get(presence))
        .route("/api/v1/queues", get(queues))
        .route("/api/v1/queues/purge", post(purge))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// A JSON body, read by hand so every malformed one gets the same 400 (axum's extractor
/// answers 415 or 422 for some), whatever the Content-Type says.
fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// A JSON body that may be absent altogether (an empty body reads as `{}`).
fn optional_body<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        body(bytes)
    }
}

/// A refusal: its status and the `error` text of its JSON body.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

type Answer = Result<Response, ApiError>;

/// Asks every node, and decodes their answers.
async fn ask(node: &Node, request: Request) -> Result<(Vec<Reply>, Vec<String>), ApiError> {
    let Answers { replies, missing } = node.hub().engine().call_all(request.encode()).await?;
    Ok((replies.into_iter().map(|(_, reply)| Reply::decode(&reply)).collect(), missing))
}

/// How many sessions (or subscriptions, or deliveries) an order reached, on all nodes.
fn reached(replies: &[Reply]) -> u64 {
    replies.iter().map(|reply| if let Reply::Done(n) = reply { *n } else { 0 }).sum()
}

fn all_sessions(replies: Vec<Reply>) -> Vec<SessionView> {
    let mut sessions: Vec<SessionView> = replies
        .into_iter()
        .flat_map(|reply| if let Reply::Sessions(s) = reply { s } else { Vec::new() })
        .collect();
    sessions.sort_by(|a, b| a.session.cmp(&b.session));
    sessions
}

/// `limit` and `cursor` of a listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    user: Option<String>,
    node: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn limit(query: &PageQuery) -> Result<usize, ApiError> {
    match query.limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n @ 1..=MAX_LIMIT) => Ok(n),
        Some(n) => Err(ApiError(StatusCode::BAD_REQUEST, format!("limit must be 1 to {MAX_LIMIT}, not {n}"))),
    }
}

/// A query string as documented, else 400.
type QueryOf<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn query<T>(query: QueryOf<T>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))
}

#[derive(Debug, Serialize)]
struct Overview {
    node_id: String,
    engine: &'static str,
    ready: bool,
    draining: bool,
    nodes: Vec<crate::engine::NodeInfo>,
}

async fn overview(State(node): State<Arc<Node>>) -> Answer {
    let engine = node.hub().engine();
    let nodes = engine.nodes().await?;
    let kind = match engine {
        crate::engine::AnyEngine::Memory(_) => "memory",
        crate::engine::AnyEngine::Redis(_) => "redis",
    };
    let ready = !node.is_draining() && engine.is_ready();
    let overview = Overview {
        node_id: node.config().node_id.clone(),
        engine: kind,
        ready,
        draining: node.is_draining(),
        nodes,
    };
    Ok(Json(overview).into_response())
}

async fn nodes(State(node): State<Arc<Node>>) -> Answer {
    let nodes = node.hub().engine().nodes().await?;
    Ok(Json(serde_json::json!({ "nodes": nodes })).into_response())
}

#[derive(Debug, Serialize)]
struct SessionPage {
    sessions: Vec<SessionView>,
    next_cursor: Option<String>,
    missing_nodes: Vec<String>,
}

async fn sessions(State(node): State<Arc<Node>>, q: QueryOf<PageQuery>) -> Answer {
    let q = query(q)?;
    let limit = limit(&q)?;
    let (replies, missing_nodes) = ask(&node, Request::Sessions { user: q.user.clone() }).await?;
    let mut sessions: Vec<SessionView> = all_sessions(replies)
        .into_iter()
        .filter(|s| q.node.as_deref().is_none_or(|n| s.node == n))
        .filter(|s| q.cursor.as_deref().is_none_or(|c| s.session.as_str() > c))
        .take(limit + 1)
        .collect();
    let next_cursor = (sessions.len() > limit).then(|| {
        sessions.truncate(limit);
        sessions.last().map(|s| s.session.clone()).unwrap_or_default()
    });
    Ok(Json(SessionPage { sessions, next_cursor, missing_nodes }).into_response())
}

/// The session of that id, wherever it is connected.
async fn find_session(node: &Node, session: &str) -> Result<SessionView, ApiError> {
    let (replies, _) = ask(node, Request::Session { session: session.to_owned() }).await?;
    all_sessions(replies).into_iter().next().ok_or_else(|| no_session(session))
}

async fn session(State(node): State<Arc<Node>>, Path(session): Path<String>) -> Answer {
    Ok(Json(find_session(&node, &session).await?).into_response())
}

fn no_session(session: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no connected session {session:?} on any live node"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    reason: Option<String>,
}

/// The reason a client will read: the operator's, trimmed to one line of at most 200 chars.
fn reason(request: DisconnectRequest) -> String {
    let reason = request.reason.unwrap_or_default();
    let line: String = reason.lines().next().unwrap_or("").trim().chars().take(200).collect();
    if line.is_empty() {
        DEFAULT_REASON.to_owned()
    } else {
        line
    }
}

async fn disconnect_session(
    State(node): State<Arc<Node>>,
    Path(session): Path<String>,
    bytes: Bytes,
) -> Answer {
    let request: DisconnectRequest = optional_body(&bytes)?;
    let order = Request::Disconnect { session: Some(session.clone()), user: None, reason: reason(request) };
    match reached(&ask(&node, order).await?.0) {
        0 => Err(no_session(&session)),
        n => Ok(Json(serde_json::json!({ "disconnected": n })).into_response()),
    }
}

async fn disconnect_user(State(node): State<Arc<Node>>, Path(user): Path<String>, bytes: Bytes) -> Answer {
    let request: DisconnectRequest = optional_body(&bytes)?;
    let order = Request::Disconnect { session: None, user: Some(user), reason: reason(request) };
    let disconnected = reached(&ask(&node, order).await?.0);
    Ok(Json(serde_json::json!({ "disconnected": disconnected })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeRequest {
    destination: String,
}

async fn unsubscribe(State(node): State<Arc<Node>>, Path(session): Path<String>, bytes: Bytes) -> Answer {
    let request: UnsubscribeRequest = body(&bytes)?;
    // Unknown sessions are told apart from sessions without that subscription.
    find_session(&node, &session).await?;
    let order = Request::Unsubscribe { session, destination: request.destination };
    let unsubscribed = reached(&ask(&node, order).await?.0);
    Ok(Json(serde_json::json!({ "unsubscribed": unsubscribed })).into_response())
}

#[derive(Debug, Serialize)]
struct UserView {
    user: String,
    sessions: u64,
}

async fn users(State(node): State<Arc<Node>>, q: QueryOf<PageQuery>) -> Answer {
    let q = query(q)?;
    let limit = limit(&q)?;
    let (replies, missing_nodes) = ask(&node, Request::Sessions { user: q.user.clone() }).await?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for session in all_sessions(replies) {
        if let Some(user) = session.user {
            *counts.entry(user).or_default() += 1;
        }
    }
    let mut users: Vec<UserView> = counts
        .into_iter()
        .filter(|(user, _)| q.cursor.as_deref().is_none_or(|c| user.as_str() > c))
        .take(limit + 1)
        .map(|(user, sessions)| UserView { user, sessions })
        .collect();
    let next_cursor = (users.len() > limit).then(|| {
        users.truncate(limit);
        users.last().map(|u| u.user.clone()).unwrap_or_default()
    });
    let page =
        serde_json::json!({ "users": users, "next_cursor": next_cursor, "missing_nodes": missing_nodes });
    Ok(Json(page).into_response())
}

/// Subscribers of one destination, merged over the nodes.
#[derive(Debug, Serialize)]
struct DestinationSummary {
    destination: String,
    subscribers: u64,
    users: u64,
    presence: bool,
}

fn merge_destinations(replies: Vec<Reply>) -> BTreeMap<String, (u64, BTreeSet<String>)> {
    let mut merged: BTreeMap<String, (u64, BTreeSet<String>)> = BTreeMap::new();
    for reply in replies {
        if let Reply::Destinations(views) = reply {
            for DestinationView { destination, subscribers, users } in views {
                let entry = merged.entry(destination).or_default();
                entry.0 += subscribers;
                entry.1.extend(users);
            }
        }
    }
    merged
}

async fn destinations(State(node): State<Arc<Node>>) -> Answer {
    let (replies, missing_nodes) = ask(&node, Request::Destinations { destination: None }).await?;
    let destinations: Vec<DestinationSummary> = merge_destinations(replies)
        .into_iter()
        .map(|(destination, (subscribers, users))| DestinationSummary {
            presence: presence_configured(&node, &destination),
            destination,
            subscribers,
            users: users.len() as u64,
        })
        .collect();
    Ok(Json(serde_json::json!({ "destinations": destinations, "missing_nodes": missing_nodes }))
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceQuery {
    destination: String,
}

async fn presence(State(node): State<Arc<Node>>, q: QueryOf<PresenceQuery>) -> Answer {
    let destination = query(q)?.destination;
    let request = Request::Destinations { destination: Some(destination.clone()) };
    let (replies, missing_nodes) = ask(&node, request).await?;
    let (subscribers, users) = merge_destinations(replies).remove(&destination).unwrap_or_default();
    let members = node.hub().presence(&destination).await?;
    Ok(Json(serde_json::json!({
        "destination": destination,
        "subscribers": subscribers,
        "users": users.len(),
        "members": members,
        "missing_nodes": missing_nodes,
    }))
    .into_response())
}

/// Whether presence is kept for `destination`: a pattern of the `presence` setting matches it.
fn presence_configured(node: &Node, destination: &str) -> bool {
    node.config().presence_for(destination)
}

/// The body of `POST /api/v1/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub destination: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
    /// Only this session's subscriptions of `destination`, on whichever node holds it.
    #[serde(default)]
    pub session: Option<String>,
}

async fn publish(State(node): State<Arc<Node>>, bytes: Bytes) -> Answer {
    let request: PublishRequest = body(&bytes)?;
    let route = destination::for_send(&request.destination)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let max = node.config().limits.max_body_size;
    if request.body.len() > max {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body exceeds max-body-size ({max} bytes)"),
        ));
    }
    let headers: Vec<(String, String)> =
        request.headers.into_iter().filter(|(name, _)| !tail::is_reserved(name)).collect();
    if let Some(session) = request.session {
        let order = Request::SendToSession {
            session: session.clone(),
            destination: request.destination,
            headers,
            body: request.body.into_bytes(),
        };
        return match reached(&ask(&node, order).await?.0) {
            0 => Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no connected session {session:?} subscribed to that destination"),
            )),
            n => Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "delivered": n }))).into_response()),
        };
    }
    let message = Message {
        destination: Arc::from(route.name.as_str()),
        headers,
        body: Bytes::from(request.body),
        offset: None,
    };
    let offset = node.hub().publish(route.kind, message).await.outcome().await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "offset": offset }))).into_response())
}

#[derive(Debug, Serialize)]
struct QueueView {
    queue: String,
    depth: u64,
    consumers: u64,
    unacked: u64,
    dead_letters: u64,
}

impl QueueView {
    fn new(queue: &str) -> QueueView {
        QueueView { queue: queue.to_owned(), depth: 0, consumers: 0, unacked: 0, dead_letters: 0 }
    }
}

async fn queues(State(node): State<Arc<Node>>) -> Answer {
    let depths = node.hub().engine().queue_stats().await?;
    let (replies, missing_nodes) = ask(&node, Request::Consumers).await?;
    let mut views: BTreeMap<String, QueueView> = BTreeMap::new();
    for (queue, depth) in &depths {
        views.entry(queue.clone()).or_insert_with(|| QueueView::new(queue)).depth = *depth;
    }
    for reply in replies {
        if let Reply::Consumers(consumers) = reply {
            for c in consumers {
                let entry = views.entry(c.queue.clone()).or_insert_with(|| QueueView::new(&c.queue));
                entry.consumers += c.consumers;
                entry.unacked += c.unacked;
            }
        }
    }
    let depths: BTreeMap<String, u64> = depths.into_iter().collect();
    for (name, entry) in views.iter_mut() {
        entry.dead_letters = depths.get(&format!("{name}.dlq")).copied().unwrap_or(0);
    }
    let queues: Vec<QueueView> = views.into_values().collect();
    Ok(Json(serde_json::json!({ "queues": queues, "missing_nodes": missing_nodes })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    queue: String,
}

async fn purge(State(node): State<Arc<Node>>, bytes: Bytes) -> Answer {
    let request: PurgeRequest = body(&bytes)?;
    match destination::for_send(&request.queue) {
        Ok(route) if route.kind == destination::Kind::Queue => {}
        _ => {
            let why = format!("not a queue: {:?} (queues are /queue/<name>)", request.queue);
            return Err(ApiError(StatusCode::BAD_REQUEST, why));
        }
    }
    let purged = node.hub().engine().purge(&request.queue).await?;
    tracing::info!(target: "stampede::admin", queue = %request.queue, purged, "queue purged");
    Ok(Json(serde_json::json!({ "purged": purged })).into_response())
}
