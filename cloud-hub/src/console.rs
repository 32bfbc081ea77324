//! The operator console (`GET /console`): one page and its script and
//! styles, compiled in. They hold no data: the page reads everything from
//! the hub's operator routes (documents, replicas, divergence, placement,
//! history, versions, rollback) with the admin token the operator gives it,
//! so they are served on the operator listener without a token; the routes
//! they call are guarded as ever (`meridian_node::admin::protect`).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const PAGE: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");
const ICON: &str = include_str!("../console/favicon.svg");

/// Only this origin's script and styles, no frames, no inline code.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `/console` and its script, styles and icon.
pub fn router() -> Router {
    Router::new()
        .route("/console", get(|| async { file("text/html; charset=utf-8", PAGE) }))
        .route("/console/", get(|| async { file("text/html; charset=utf-8", PAGE) }))
        .route("/console/console.js", get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/console/console.css", get(|| async { file("text/css; charset=utf-8", STYLE) }))
        .route("/console/favicon.svg", get(|| async { file("image/svg+xml", ICON) }))
}
