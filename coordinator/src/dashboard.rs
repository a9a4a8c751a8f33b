//! The web dashboard: static HTML, CSS and JavaScript compiled into the binary and served at `/` and
//! `/ui/…` without authentication (they hold no data). The page reads everything through the `/v1` API with
//! the token the user enters, kept in the browser tab's session storage. See `docs/dashboard.md`.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// The dashboard's routes, to merge into the API router (outside its authentication layer).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { page("text/html; charset=utf-8", INDEX) }))
        .route("/ui/app.js", get(|| async { page("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/style.css", get(|| async { page("text/css; charset=utf-8", STYLE) }))
}

fn page(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
}
