//! The admin web UI: one HTML page with its script and style sheet, embedded in the binary
//! (`ui/index.html`, `ui/app.js`, `ui/app.css`; plain files, no build step, nothing fetched from
//! elsewhere) and served on the admin port at `/`, `/ui/app.js` and `/ui/app.css`.
//!
//! The files hold no data, so they are served without the admin token; the page asks for the
//! token and sends it with every call of the JSON API (`/api/v1/...`), which is where the token
//! is checked. Each file is answered with `Cache-Control: no-cache` (a node upgraded in place
//! serves its new UI at the next load) and a Content-Security-Policy that lets the page load only
//! its own script and style and talk only to its own origin.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// What the page may load and where it may connect: its own origin only (the favicon is a
/// `data:` image), and no framing by other sites.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The UI's routes, for the admin router to merge outside its token check.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { file("text/html; charset=utf-8", INDEX) }))
        .route("/ui/app.js", get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/app.css", get(|| async { file("text/css; charset=utf-8", STYLE) }))
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        ],
        body,
    )
        .into_response()
}
