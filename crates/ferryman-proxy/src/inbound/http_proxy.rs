//! The HTTP proxy inbound: what a request to the proxy port is. A request
//! in absolute form is forwarded, a CONNECT opens a tunnel, anything else
//! gets a short page about using the proxy; authentication and loop checks
//! come first.

use std::sync::Arc;

use ferryman_http::{ProxyBody, Target};
use http::uri::Scheme;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::context::Worker;
use crate::exchange::connection::Route;
use crate::exchange::witness::Witness;
use crate::exchange::{forward, local, tunnel};
use crate::session::SessionGuard;

/// The route of a client connection to the proxy.
pub(crate) struct ProxyRoute {
    pub(crate) worker: Arc<Worker>,
    pub(crate) connection: Arc<SessionGuard>,
}

impl Route for ProxyRoute {
    fn target<'a>(&'a self, req: &'a Request<Incoming>) -> (String, Option<&'a str>) {
        (req.uri().to_string(), req.uri().host())
    }

    async fn route(&self, req: Request<Incoming>, witness: &Arc<Witness>) -> Response<ProxyBody> {
        let is_proxy_request = req.method() == Method::CONNECT || req.uri().authority().is_some();
        let shared = &self.worker.shared;
        if !is_proxy_request {
            return local::about(req.uri().path(), &shared.listen.to_string());
        }
        if let Some(auth) = &shared.auth {
            if !auth.allows(req.headers()) {
                return local::auth_required();
            }
        }
        if shared.via.seen_in(req.headers()) {
            return local::text(
                StatusCode::LOOP_DETECTED,
                "this request already went through this proxy",
            );
        }
        if req.method() == Method::CONNECT {
            return tunnel::connect(&self.worker, req, witness).await;
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
        let direct = shared.direct.clone();
        let target = if https {
            Target::https(authority, direct)
        } else {
            Target::http(authority, direct)
        };
        let client = self.connection.client().ip();
        forward::exchange(&self.worker, client, req, target, witness).await
    }
}
