//! The admin port: health, readiness, Prometheus metrics, the server API under `/api/v1`
//! ([`api`], described by its OpenAPI document at `/api/v1/openapi.json`) and the web UI.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 while the node accepts clients and its engine is reachable, else 503 |
//! | `GET /metrics` | OpenMetrics 1.0 when `Accept` prefers `application/openmetrics-text`, else the Prometheus text format 0.0.4 |
//! | `/api/v1/...` | the server API: see [`api`] and docs/admin.md |
//!
//! With `admin-token` set, every route but `/healthz` and `/readyz` (and `/metrics` with
//! `metrics-public`, and the OpenAPI document) needs `Authorization: Bearer <admin-token>`, else
//! 401; the check is [`crate::auth::Auth::admin_allows`]. Every call of the API is logged (target
//! `stampede::admin`): method, path, status, and whether the token was refused.

pub mod api;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::engine::Engine;
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
        .merge(api::routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route on the admin port".to_owned()) })
        .layer(axum::middleware::from_fn_with_state(node.clone(), guard))
        .with_state(node)
}

/// Lets a request through when the admin token allows it, and logs every API call.
async fn guard(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let audited = path.starts_with("/api/");
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let open = path == api::OPENAPI_PATH;
    if open || node.auth().admin_allows(&path, authorization) {
        let response = next.run(request).await;
        if audited {
            tracing::info!(target: "stampede::admin", %method, %path, status = response.status().as_u16(), "admin API call");
        }
        return response;
    }
    tracing::warn!(target: "stampede::admin", %method, %path, status = 401, "admin API call refused: missing or wrong admin token");
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

#[derive(Debug, Serialize)]
struct ErrorResponse {
    error: String,
}

/// A JSON error answer: `{"error": "<message>"}`.
pub(crate) fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorResponse { error: message })).into_response()
}
