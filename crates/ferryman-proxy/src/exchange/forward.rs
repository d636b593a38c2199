//! Forwards one exchange to its target and relays the answer: this hop's
//! header fields rewritten, `Expect: 100-continue` held until the upstream
//! asks for the body, and a `101` joining the two connections into a tunnel.

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ferryman_http::body::{self, Direction, Gate, GatedBody, Observed};
use ferryman_http::headers::{
    ambiguous_framing, append_forwarded_for, strip_hop_by_hop, wants_upgrade,
};
use ferryman_http::pace::{Pace, Paced};
use ferryman_http::upstream::UpstreamBody;
use ferryman_http::{ProxyBody, Target};
use http::header::{HeaderValue, EXPECT, HOST};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tracing::debug;

use super::local;
use super::tunnel;
use super::witness::Witness;
use crate::context::Worker;
use crate::ProxyConfig;

/// What forwarding takes from the settings in force.
pub(crate) struct Forwarding {
    /// The client, to add to `X-Forwarded-For`.
    pub(crate) forwarded_for: Option<IpAddr>,
    /// How fast the request body must come.
    pub(crate) pace: Pace,
    /// How long an upgraded connection may carry nothing.
    pub(crate) tunnel_idle: Duration,
}

impl Forwarding {
    pub(crate) fn new(config: &ProxyConfig, client: IpAddr) -> Self {
        Self {
            forwarded_for: config.x_forwarded_for.then_some(client),
            pace: config.body_pace(),
            tunnel_idle: config.tunnel_idle_timeout,
        }
    }
}

/// Sends `req` to `target` and relays the answer.
pub(crate) async fn exchange(
    worker: &Arc<Worker>,
    how: Forwarding,
    mut req: Request<Incoming>,
    target: Target,
    witness: &Arc<Witness>,
) -> Response<ProxyBody> {
    let upgrade = wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (upstream_req, gate, slow) =
        upstream_request(worker, &how, req, &target.authority, upgrade, witness);
    let result = worker.upstream.send(&target, upstream_req).await;
    if let Some(gate) = gate {
        gate.close();
        witness.hold_gate(gate);
    }
    match result {
        Err(_) if slow.load(std::sync::atomic::Ordering::Acquire) => {
            let reason = TooSlowAnswer(how.pace);
            witness.fail(&reason);
            local::text(StatusCode::REQUEST_TIMEOUT, reason)
        }
        Ok(response) if ambiguous_framing(response.headers()) => {
            // Dropping the body unread closes the connection: nothing more
            // is read from an upstream that framed a message two ways.
            let reason = "upstream sent both Transfer-Encoding and Content-Length";
            debug!(authority = %target.authority, "{reason}");
            witness.fail(reason);
            local::text(StatusCode::BAD_GATEWAY, reason)
        }
        Ok(response) => {
            downstream_response(worker, response, client_upgrade, witness, how.tunnel_idle)
        }
        Err(e) => {
            debug!(error = %e, authority = %target.authority, "upstream failed");
            witness.fail(&e);
            local::text(e.status(), e)
        }
    }
}

/// The request as the upstream gets it: origin form, this hop's fields
/// rewritten, the body observed and, with `Expect: 100-continue`, held
/// until the returned gate opens.
fn upstream_request(
    worker: &Worker,
    how: &Forwarding,
    req: Request<Incoming>,
    authority: &Authority,
    upgrade: bool,
    witness: &Arc<Witness>,
) -> (Request<ProxyBody>, Option<Gate>, Arc<AtomicBool>) {
    let (mut parts, incoming) = req.into_parts();
    let expects_continue = parts
        .headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    strip_hop_by_hop(&mut parts.headers, upgrade);
    // An absolute-form target (or HTTP/2's :authority) names the host
    // (RFC 9112 3.2.2); inside an intercepted tunnel the client's Host
    // stands, as it chose it.
    if let Some(named) = parts
        .uri
        .authority()
        .or_else(|| (!parts.headers.contains_key(HOST)).then_some(authority))
    {
        // The authority without any "user:password@", which must not leak.
        let host = named.as_str().rsplit('@').next().unwrap_or_default();
        if let Ok(value) = HeaderValue::from_str(host) {
            parts.headers.insert(HOST, value);
        }
    }
    worker.shared.via.append(&mut parts.headers, parts.version);
    if let Some(client) = how.forwarded_for {
        append_forwarded_for(&mut parts.headers, client);
    }
    parts.uri = origin_form(&parts.uri);
    parts.version = Version::HTTP_11;

    let (paced, slow) = Paced::new(incoming, how.pace);
    let observed = Observed::new(paced, witness.clone(), Direction::Up);
    if !expects_continue {
        return (
            Request::from_parts(parts, body::boxed(observed)),
            None,
            slow,
        );
    }
    let wait = worker.upstream.config().expect_continue_timeout;
    let (gated, gate) = GatedBody::new(observed, wait);
    let mut req = Request::from_parts(parts, body::boxed(gated));
    let opener = gate.clone();
    hyper::ext::on_informational(&mut req, move |informational| {
        if informational.status() == StatusCode::CONTINUE {
            opener.open();
        }
    });
    (req, Some(gate), slow)
}

/// Why a request got 408.
struct TooSlowAnswer(Pace);

impl std::fmt::Display for TooSlowAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body was too slow: nothing for {:?}, or under {} bytes/s on average",
            self.0.idle, self.0.min_rate
        )
    }
}

/// The upstream's answer as the client gets it; a 101 also joins the
/// two connections into a tunnel.
fn downstream_response(
    worker: &Arc<Worker>,
    mut response: Response<UpstreamBody>,
    client_upgrade: Option<OnUpgrade>,
    witness: &Arc<Witness>,
    tunnel_idle: Duration,
) -> Response<ProxyBody> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let Some(on_client) = client_upgrade else {
            witness.abort();
            return local::text(
                StatusCode::BAD_GATEWAY,
                "upstream switched protocols without being asked to",
            );
        };
        let on_upstream = hyper::upgrade::on(&mut response);
        let witness = witness.clone();
        tunnel::splice_upgrade(&worker.shared, on_client, on_upstream, witness, tunnel_idle);
    }
    strip_hop_by_hop(response.headers_mut(), switching);
    let version = response.version();
    worker.shared.via.append(response.headers_mut(), version);
    response.map(body::boxed)
}

/// The full URL of a request inside an intercepted tunnel, for the log.
pub(crate) fn absolute(target: &Target, uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    if !path.starts_with('/') {
        // `OPTIONS *`: no URL names it.
        return path.to_string();
    }
    let scheme = if target.https { "https://" } else { "http://" };
    let authority = target.authority.as_str();
    let mut url = String::with_capacity(scheme.len() + authority.len() + path.len());
    for part in [scheme, authority, path] {
        url.push_str(part);
    }
    url
}

fn origin_form(uri: &Uri) -> Uri {
    let path = match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => pq.clone(),
        // "http://host?q" has a query but no path: the origin form needs one.
        Some(pq) => PathAndQuery::try_from(format!("/{pq}"))
            .unwrap_or_else(|_| PathAndQuery::from_static("/")),
        None => PathAndQuery::from_static("/"),
    };
    Uri::from(path)
}
