//! The admin port: health, readiness, Prometheus metrics and the publish API.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 while the node accepts clients and its engine is reachable, else 503 |
//! | `GET /metrics` | OpenMetrics 1.0 when `Accept` prefers `application/openmetrics-text`, else the Prometheus text format 0.0.4 |
//! | `POST /api/v1/publish` | publishes `{"destination", "headers", "body"}` without STOMP |
//! | `GET /api/v1/nodes` | the live nodes of the cluster with their connection and subscription counts |
//! | `GET /api/v1/presence?destination=` | the members of a destination whose presence is kept (`http/presence.rs`) |
//!
//! With `admin-token` set, every route but `/healthz` and `/readyz` (and `/metrics` with
//! `metrics-public`) needs `Authorization: Bearer <admin-token>`, else 401; the check is
//! [`crate::auth::Auth::admin_allows`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

mod presence;

use crate::destination;
use crate::engine::{Engine, Message};
use crate::hub::tail;
use crate::metrics::Format;
use crate::node::Node;

/// Serves the admin API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, node: Arc<Node>) -> std::io::Result<()> {
    axum::serve(listener, router(node)).await
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/presence", get(presence::presence))
        .layer(axum::middleware::from_fn_with_state(node.clone(), guard))
        .with_state(node)
}

/// Lets a request through when the admin token allows it.
async fn guard(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if node.auth().admin_allows(request.uri().path(), authorization) {
        return next.run(request).await;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "admin token required: Authorization: Bearer <admin-token>".to_owned(),
    );
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    response
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if !node.hub().engine().is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "engine unreachable\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(node): State<Arc<Node>>, headers: header::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let body = node.metrics().render_as(format, node.hub().queue_depths());
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

async fn nodes(State(node): State<Arc<Node>>) -> Response {
    match node.hub().engine().nodes().await {
        Ok(nodes) => Json(serde_json::json!({ "nodes": nodes })).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
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
}

#[derive(Debug, Serialize)]
struct PublishResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

#[derive(Debug, Serialize)]
struct ErrorResponse {
    error: String,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorResponse { error: message })).into_response()
}

async fn publish(
    State(node): State<Arc<Node>>,
    request: Result<Json<PublishRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match request {
        Ok(request) => request,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let route = match destination::for_send(&request.destination) {
        Ok(route) => route,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if request.body.len() > node.config().limits.max_body_size {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body exceeds max-body-size ({} bytes)", node.config().limits.max_body_size),
        );
    }
    let headers = request.headers.into_iter().filter(|(name, _)| !tail::is_reserved(name)).collect();
    let message = Message {
        destination: Arc::from(route.name.as_str()),
        headers,
        body: Bytes::from(request.body),
        offset: None,
    };
    match node.hub().publish(route.kind, message).await.outcome().await {
        Ok(offset) => (StatusCode::ACCEPTED, Json(PublishResponse { offset })).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
