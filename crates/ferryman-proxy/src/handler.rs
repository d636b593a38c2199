//! What happens to one request on the forward proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use ferryman_capture::{Capture, TlsFacts};
use ferryman_http::body::{self, Direction, Gate, GatedBody, Observed};
use ferryman_http::headers::{append_forwarded_for, strip_hop_by_hop, wants_upgrade, Via};
use ferryman_http::upstream::UpstreamBody;
use ferryman_http::{ProxyBody, Target, UpstreamClient, UpstreamError};
use http::header::{HeaderValue, EXPECT, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::activity::{Activity, RequestCounters};
use crate::auth::ProxyAuth;
use crate::closable::Closable;
use crate::intercept::Interception;
use crate::session::{SessionGuard, Sessions};
use crate::ProxyConfig;
use crate::{local, tunnel};

/// What every connection of the listener shares, on every thread.
pub(crate) struct Common {
    pub(crate) auth: Option<ProxyAuth>,
    /// This process's entry in `Via`; seeing it come back means a loop.
    pub(crate) via: Via,
    pub(crate) x_forwarded_for: bool,
    pub(crate) listen: SocketAddr,
    /// Connections and tunnels, which outlive the request that opened them.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when the shutdown grace period is over.
    pub(crate) hard_stop: CancellationToken,
    /// One permit per client connection being served.
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) interception: Option<Arc<Interception>>,
    pub(crate) config: Arc<ProxyConfig>,
    /// Cancelled when shutdown starts: connections finish what they are
    /// doing and close.
    pub(crate) stopping: CancellationToken,
    pub(crate) sessions: Sessions,
    pub(crate) capture: Option<Capture>,
    pub(crate) requests: Arc<RequestCounters>,
}

/// One worker thread's view: the common part plus its own upstream pool, so
/// an exchange never wakes a task on another thread.
pub(crate) struct Shared {
    pub(crate) common: Arc<Common>,
    pub(crate) upstream: UpstreamClient,
}

pub(crate) type HandleFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Response<Observed<Closable>>> + Send>>;

#[derive(Clone)]
pub(crate) struct Handler {
    pub(crate) shared: Arc<Shared>,
    /// What requests arrive on: a client connection or an intercepted tunnel.
    pub(crate) parent: Arc<SessionGuard>,
    /// Inside an intercepted tunnel, where every request goes.
    pub(crate) intercepted: Option<Target>,
    /// Inside intercepted TLS, what the handshake said.
    pub(crate) tls: Option<Arc<TlsFacts>>,
    /// Why the upstream connection made at CONNECT failed: the tunnel's
    /// first request is answered with it instead of failing a second time.
    pub(crate) upstream_failed: Arc<std::sync::Mutex<Option<UpstreamError>>>,
}

impl Handler {
    /// Boxed, with a name: requests inside an intercepted tunnel come back
    /// here from the tunnel this very function opened, and an unnamed
    /// recursive future cannot be shown to be `Send`.
    pub(crate) fn handle(self, req: Request<Incoming>) -> HandleFuture {
        Box::pin(async move {
            let target = match &self.intercepted {
                Some(inside) => (absolute(inside, req.uri()), Some(inside.authority.host())),
                None => (req.uri().to_string(), req.uri().host()),
            };
            let common = &self.shared.common;
            let log = Arc::new(Activity::new(
                common,
                &self.parent,
                req.method().clone(),
                target,
            ));
            let client_version = req.version();
            log.request(client_version, req.headers());
            if let Some(tls) = &self.tls {
                log.tls(tls);
            }
            let closed = log.session().cancelled().clone();
            // Biased: the route first, so an exchange that is answered at
            // once never registers to hear of its closing.
            let mut response = tokio::select! {
                biased;
                response = self.route(req, &log) => response,
                () = closed.cancelled() => {
                    log.abort();
                    local::text(StatusCode::SERVICE_UNAVAILABLE, "closed by the administrator")
                }
            };
            // What the client is answered in: HTTP/2 on an HTTP/2
            // connection, HTTP/1.1 on any other.
            *response.version_mut() = match client_version {
                Version::HTTP_2 => Version::HTTP_2,
                _ => Version::HTTP_11,
            };
            log.respond(&response);
            response.map(|b| Observed::new(Closable::new(b, closed), log, Direction::Down))
        })
    }

    async fn route(&self, req: Request<Incoming>, log: &Arc<Activity>) -> Response<ProxyBody> {
        if let Some(target) = &self.intercepted {
            let failed = self
                .upstream_failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(e) = failed {
                log.fail(&e);
                return local::text(e.status(), e);
            }
            // Authenticated at CONNECT; everything inside goes to its target.
            return self.exchange(req, target.clone(), log).await;
        }
        let is_proxy_request = req.method() == Method::CONNECT || req.uri().authority().is_some();
        let common = &self.shared.common;
        if !is_proxy_request {
            return local::about(req.uri().path(), &common.listen.to_string());
        }
        if let Some(auth) = &common.auth {
            if !auth.allows(req.headers()) {
                return local::auth_required();
            }
        }
        if common.via.seen_in(req.headers()) {
            return local::text(
                StatusCode::LOOP_DETECTED,
                "this request already went through this proxy",
            );
        }
        if req.method() == Method::CONNECT {
            tunnel::connect(&self.shared, req, log).await
        } else {
            self.forward(req, log).await
        }
    }

    async fn forward(&self, req: Request<Incoming>, log: &Arc<Activity>) -> Response<ProxyBody> {
        let https = match req.uri().scheme() {
            Some(scheme) if *scheme == Scheme::HTTP => false,
            Some(scheme) if *scheme == Scheme::HTTPS => true,
            _ => {
                return local::text(
                    StatusCode::BAD_REQUEST,
                    "only http:// and https:// URLs can be proxied",
                )
            }
        };
        let Some(authority) = req.uri().authority().cloned() else {
            return local::text(StatusCode::BAD_REQUEST, "request target has no host");
        };
        let target = if https {
            Target::https(authority)
        } else {
            Target::http(authority)
        };
        self.exchange(req, target, log).await
    }

    /// Sends the request to `target` and relays the answer.
    async fn exchange(
        &self,
        mut req: Request<Incoming>,
        target: Target,
        log: &Arc<Activity>,
    ) -> Response<ProxyBody> {
        let upgrade = wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (upstream_req, gate) = self.upstream_request(req, &target.authority, upgrade, log);
        let result = self.shared.upstream.send(&target, upstream_req).await;
        if let Some(gate) = gate {
            gate.close();
            log.hold_gate(gate);
        }
        match result {
            Ok(response) => self.downstream_response(response, client_upgrade, log),
            Err(e) => {
                debug!(error = %e, authority = %target.authority, "upstream failed");
                log.fail(&e);
                local::text(e.status(), e)
            }
        }
    }

    /// The request as the upstream gets it: origin form, this hop's fields
    /// rewritten, the body observed and, with `Expect: 100-continue`, held
    /// until the returned gate opens.
    fn upstream_request(
        &self,
        req: Request<Incoming>,
        authority: &Authority,
        upgrade: bool,
        log: &Arc<Activity>,
    ) -> (Request<ProxyBody>, Option<Gate>) {
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
        let common = &self.shared.common;
        common.via.append(&mut parts.headers, parts.version);
        if common.x_forwarded_for {
            append_forwarded_for(&mut parts.headers, self.parent.client().ip());
        }
        parts.uri = origin_form(&parts.uri);
        parts.version = Version::HTTP_11;

        let observed = Observed::new(incoming, log.clone(), Direction::Up);
        if !expects_continue {
            return (Request::from_parts(parts, body::boxed(observed)), None);
        }
        let wait = self.shared.upstream.config().expect_continue_timeout;
        let (gated, gate) = GatedBody::new(observed, wait);
        let mut req = Request::from_parts(parts, body::boxed(gated));
        let opener = gate.clone();
        hyper::ext::on_informational(&mut req, move |informational| {
            if informational.status() == StatusCode::CONTINUE {
                opener.open();
            }
        });
        (req, Some(gate))
    }

    /// The upstream's answer as the client gets it; a 101 also joins the
    /// two connections into a tunnel.
    fn downstream_response(
        &self,
        mut response: Response<UpstreamBody>,
        client_upgrade: Option<OnUpgrade>,
        log: &Arc<Activity>,
    ) -> Response<ProxyBody> {
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            let Some(on_client) = client_upgrade else {
                log.abort();
                return local::text(
                    StatusCode::BAD_GATEWAY,
                    "upstream switched protocols without being asked to",
                );
            };
            let on_upstream = hyper::upgrade::on(&mut response);
            tunnel::splice_upgrade(&self.shared, on_client, on_upstream, log.clone());
        }
        strip_hop_by_hop(response.headers_mut(), switching);
        let version = response.version();
        self.shared
            .common
            .via
            .append(response.headers_mut(), version);
        response.map(body::boxed)
    }
}

/// The full URL of a request inside an intercepted tunnel, for the log.
fn absolute(target: &Target, uri: &Uri) -> String {
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
