//! Tunnels an inbound opened (a CONNECT; a SOCKS5 CONNECT): what each
//! carries is found out, HTTP inside is served with every request decided
//! again by the policy the tunnel started with, anything else is relayed.
//! This is the one place a tunnel's contents are dispatched; detection
//! itself (`exchange::intercept`) only reports what it found.

use std::sync::{Arc, Mutex};

use ferryman_http::upstream::Conn;
use ferryman_http::{ProxyBody, Target, UpstreamError};
use http::{Request, Response};
use hyper::body::Incoming;

use super::routing::{decide, follow, Origin};
use crate::context::{Settings, Worker};
use crate::exchange::connection::{self, Route};
use crate::exchange::intercept::{self, LookInside};
use crate::exchange::tunnel::{self, ClientSide};
use crate::exchange::witness::{Entry, Witness};
use crate::exchange::{forward, local, Contents, InsideIo};

/// What was decided when a tunnel opened; it holds for the tunnel's life.
pub(crate) struct Plan {
    pub(crate) settings: Arc<Settings>,
    pub(crate) origin: Origin,
    /// The CONNECT target, as plain HTTP, through the way out chosen.
    pub(crate) target: Target,
    pub(crate) intercept: bool,
}

/// Carries a tunnel whose upstream side is open until it ends.
pub(crate) async fn run(
    worker: Arc<Worker>,
    plan: Plan,
    client: ClientSide,
    upstream: Conn,
    witness: Arc<Witness>,
) {
    let (socket, early) = match client {
        ClientSide::Socket(socket, early) => (socket, early),
        ClientSide::Other(upgraded) => {
            let idle = plan.settings.proxy.tunnel_idle_timeout;
            return tunnel::relay_upgraded(upgraded, upstream, &witness, idle).await;
        }
    };
    let host = plan.target.authority.host();
    let contents = match &worker.shared.interception {
        Some(interception) if plan.intercept && !interception.learnt_passthrough(host) => {
            let policy = plan.settings.policy();
            let port = plan.target.port();
            let intercepts = |name: &str| {
                policy
                    .decide(&plan.origin.facts(name, port, None, None))
                    .intercept
            };
            let look = LookInside {
                intercepts: &intercepts,
                auto_passthrough: policy.auto_passthrough(),
                hello_wait: plan.settings.proxy.client_idle_timeout,
                handshake_wait: plan.settings.proxy.tls_handshake_timeout,
            };
            let tunnel = (socket, early, upstream, plan.target.clone());
            intercept::detect(&worker, interception, look, tunnel, &witness).await
        }
        _ => Contents::Bytes {
            client: socket,
            early,
            upstream,
        },
    };
    match contents {
        Contents::Http(inside) => {
            let session = witness.session().clone();
            let route = InsideRoute {
                worker: worker.clone(),
                settings: plan.settings,
                origin: plan.origin,
                target: inside.target,
                upstream_failed: Mutex::new(inside.upstream_failed),
            };
            let (protocol, tls) = (inside.protocol, inside.tls);
            let limits = route.settings.proxy.clone();
            match inside.io {
                InsideIo::Plain(io) => {
                    connection::serve(io, protocol, &limits, worker, session, tls, route).await
                }
                InsideIo::Tls(io) => {
                    connection::serve(*io, protocol, &limits, worker, session, tls, route).await
                }
            }
        }
        Contents::Bytes {
            client,
            early,
            upstream,
        } => {
            let idle = plan.settings.proxy.tunnel_idle_timeout;
            let session = witness.session();
            let relayed = tunnel::relay_bytes(client, upstream, &early, session, idle).await;
            tunnel::record(relayed, &witness);
        }
        Contents::Ended => {}
    }
}

/// Requests inside a tunnel: authenticated when it opened, each decided
/// again with what it shows (method, path) and sent to the tunnel's target.
struct InsideRoute {
    worker: Arc<Worker>,
    settings: Arc<Settings>,
    origin: Origin,
    target: Target,
    /// Why the upstream connection opened for the tunnel failed: its first
    /// request is answered with that instead of failing a second time.
    upstream_failed: Mutex<Option<UpstreamError>>,
}

impl Route for InsideRoute {
    const ENTRY: Entry = Entry::Intercepted;

    fn target<'a>(&'a self, req: &'a Request<Incoming>) -> (String, Option<&'a str>) {
        (
            forward::absolute(&self.target, req.uri()),
            Some(self.target.authority.host()),
        )
    }

    async fn route(&self, req: Request<Incoming>, witness: &Arc<Witness>) -> Response<ProxyBody> {
        let failed = self
            .upstream_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(e) = failed {
            witness.fail(&e);
            return local::text(e.status(), e);
        }
        let target = &self.target;
        let facts = self.origin.facts(
            target.authority.host(),
            target.port(),
            Some(req.method().as_str()),
            Some(req.uri().path()),
        );
        let verdict = decide(&self.settings, &self.worker, facts).await;
        let template = |connector| Target {
            connector,
            ..target.clone()
        };
        follow(
            &self.worker,
            &self.settings,
            verdict,
            req,
            template,
            witness,
        )
        .await
    }
}
