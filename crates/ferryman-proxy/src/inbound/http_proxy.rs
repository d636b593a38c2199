//! The HTTP proxy inbound: what a request to the proxy port is. A request
//! in absolute form is forwarded, a CONNECT opens a tunnel, anything else
//! gets a short page about using the proxy; authentication and the loop
//! check come first, then the policy decides where it goes.

use std::net::SocketAddr;
use std::sync::Arc;

use ferryman_http::limit::Permit;
use ferryman_http::upstream::split_authority;
use ferryman_http::{ProxyBody, Target};
use http::uri::Scheme;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::debug;

use super::routing::{decide, follow, Origin};
use super::tunnels::{self, Plan};
use crate::context::{Settings, Worker};
use crate::exchange::connection::Route;
use crate::exchange::local;
use crate::exchange::tunnel::{self, ClientSide};
use crate::exchange::witness::{Entry, Witness};
use crate::outbound::Way;
use crate::session::{Kind, SessionGuard};

/// What rules call this inbound.
pub(crate) const INBOUND: &str = "http";

/// The route of a client connection to the proxy.
pub(crate) struct ProxyRoute {
    pub(crate) worker: Arc<Worker>,
    pub(crate) connection: Arc<SessionGuard>,
    /// The settings in force when the connection was accepted.
    pub(crate) settings: Arc<Settings>,
    /// The address the client reached the proxy at.
    pub(crate) local: SocketAddr,
    /// The connection's place under `proxy.max_connections`: a tunnel or an
    /// upgraded connection it turns into keeps it.
    pub(crate) place: Arc<Permit>,
}

impl Route for ProxyRoute {
    const ENTRY: Entry = Entry::Forward;

    fn target<'a>(&'a self, req: &'a Request<Incoming>) -> (String, Option<&'a str>) {
        (req.uri().to_string(), req.uri().host())
    }

    async fn route(&self, req: Request<Incoming>, witness: &Arc<Witness>) -> Response<ProxyBody> {
        witness.hold_place(&self.place);
        let is_proxy_request = req.method() == Method::CONNECT || req.uri().authority().is_some();
        if !is_proxy_request {
            return local::about(req.uri().path(), &self.local.to_string());
        }
        let user = match &self.settings.auth {
            Some(auth) => match auth.user(req.headers()) {
                Some(user) => Some(Arc::from(user)),
                None => return local::auth_required(),
            },
            None => None,
        };
        if self.worker.shared.via.seen_in(req.headers()) {
            return local::text(
                StatusCode::LOOP_DETECTED,
                "this request already went through this proxy",
            );
        }
        let origin = Origin {
            inbound: INBOUND,
            client: self.connection.client().ip(),
            user,
        };
        if req.method() == Method::CONNECT {
            return self.connect(origin, req, witness).await;
        }
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
        let (host, port) = match split_authority(&authority) {
            Ok(split) => split,
            Err(e) => return local::text(StatusCode::BAD_REQUEST, e),
        };
        let facts = origin.facts(
            host,
            port.unwrap_or(if https { 443 } else { 80 }),
            Some(req.method().as_str()),
            Some(req.uri().path()),
        );
        let verdict = decide(&self.settings, &self.worker, facts).await;
        let target = |connector| Target::new(authority.clone(), port, https, connector);
        follow(&self.worker, &self.settings, verdict, req, target, witness).await
    }
}

impl ProxyRoute {
    /// Answers CONNECT once the tunnel's upstream side is open (or says why
    /// it cannot be), then carries the tunnel in a task of its own.
    async fn connect(
        &self,
        origin: Origin,
        req: Request<Incoming>,
        witness: &Arc<Witness>,
    ) -> Response<ProxyBody> {
        let Some((authority, port)) = req.uri().authority().and_then(|a| {
            let (_, port) = split_authority(a).ok()?;
            Some((a.clone(), port?))
        }) else {
            return tunnel::refuse(local::text(
                StatusCode::BAD_REQUEST,
                "CONNECT needs a host:port target",
            ));
        };
        let facts = origin.facts(authority.host(), port, Some("CONNECT"), None);
        let verdict = decide(&self.settings, &self.worker, facts).await;
        let outbound = verdict.outbound;
        witness.routed(&outbound.name, verdict.rule);
        let connector = match &outbound.way {
            Way::Connect(connector) => connector.clone(),
            Way::Refuse(refusal) => {
                return tunnel::refuse(local::refused(refusal, &outbound.name, verdict.rule))
            }
            Way::Answer(_) => {
                let refusal = crate::outbound::Refusal {
                    status: StatusCode::FORBIDDEN,
                    message: Some("this outbound answers HTTP requests, not tunnels".into()),
                };
                return tunnel::refuse(local::refused(&refusal, &outbound.name, verdict.rule));
            }
        };
        let plan = Plan {
            settings: self.settings.clone(),
            origin,
            target: Target::new(authority, Some(port), false, connector),
            intercept: verdict.intercept,
        };
        let upstream = match tunnel::open(&self.worker, &plan.target, witness).await {
            Ok(upstream) => upstream,
            Err(e) => return tunnel::refuse(local::text(e.status(), e)),
        };
        let on_client = hyper::upgrade::on(req);
        let witness = witness.clone();
        witness.set_kind(Kind::Tunnel);
        let worker = self.worker.clone();
        let shared = &self.worker.shared;
        tunnel::spawn_until_stopped(shared, witness.clone(), async move {
            match on_client.await {
                Ok(upgraded) => {
                    let client = ClientSide::of(upgraded, &witness);
                    tunnels::run(worker, plan, client, upstream, witness).await
                }
                Err(e) => debug!(error = %e, "client left before the tunnel opened"),
            }
        });
        tunnel::established()
    }
}
