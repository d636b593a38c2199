//! The dashboard's files, compiled into the binary: it works offline and
//! needs nothing beside ferryman.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// Scripts and styles come only from ferryman itself; images may be
/// captured bodies shown as blob URLs.
const POLICY: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; \
                      connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

pub(crate) async fn index() -> Response {
    file(HTML, include_str!("../assets/index.html"))
}

pub(crate) async fn app_js() -> Response {
    file(JS, include_str!("../assets/app.js"))
}

pub(crate) async fn style() -> Response {
    file(CSS, include_str!("../assets/app.css"))
}

pub(crate) async fn login() -> Response {
    file(HTML, include_str!("../assets/login.html"))
}

pub(crate) async fn login_js() -> Response {
    file(JS, include_str!("../assets/login.js"))
}

pub(crate) async fn ca_page() -> Response {
    file(HTML, include_str!("../assets/ca.html"))
}

pub(crate) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../assets/openapi.json"),
    )
        .into_response()
}
