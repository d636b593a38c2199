//! Responses ferryman makes itself.

use ferryman_http::{body, ProxyBody};
use http::header::{HeaderValue, CONTENT_TYPE, PROXY_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::outbound::{Answer, Refusal};

/// A short plain-text answer with a one-line reason.
pub(crate) fn text(status: StatusCode, reason: impl std::fmt::Display) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(format!("{reason}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub(crate) fn auth_required() -> Response<ProxyBody> {
    let mut response = text(
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        "proxy authentication required",
    );
    response.headers_mut().insert(
        PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"ferryman\""),
    );
    response
}

/// What a browser or curl sees when it talks to the proxy port as if it
/// were a web server.
pub(crate) fn about(path: &str, proxy_host: &str) -> Response<ProxyBody> {
    let status = if path == "/" {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    text(
        status,
        format_args!(
            "ferryman {} is an HTTP proxy, not a web server.\n\
             Use it as a proxy, for example:\n  \
             curl -x http://{proxy_host} http://example.org/\n  \
             export https_proxy=http://{proxy_host}",
            env!("CARGO_PKG_VERSION")
        ),
    )
}

/// A request refused by the policy: the status, and a short page naming
/// the rule so the person who sees it knows what to change.
pub(crate) fn refused(refusal: &Refusal, outbound: &str, rule: &str) -> Response<ProxyBody> {
    let reason = refusal
        .message
        .as_deref()
        .unwrap_or("refused by ferryman's rules");
    text(
        refusal.status,
        format_args!("{reason}\n(rule {rule}, outbound {outbound})"),
    )
}

/// A response configured to be given instead of forwarding.
pub(crate) fn answered(answer: &Answer) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(answer.body.clone()));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers.clone();
    response
}
