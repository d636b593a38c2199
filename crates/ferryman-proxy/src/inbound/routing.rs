//! From what an inbound knows to what happens: the facts the policy is
//! asked about, and a request carried the way its verdict says. Shared by
//! every inbound and by the requests found inside their tunnels.

use std::net::IpAddr;
use std::sync::Arc;

use ferryman_http::upstream::Connector;
use ferryman_http::{ProxyBody, Target};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::context::{Settings, Worker};
use crate::exchange::forward::{self, Forwarding};
use crate::exchange::local;
use crate::exchange::witness::Witness;
use crate::outbound::Way;
use crate::policy::{Facts, Verdict};
use ferryman_http::dial::resolve;

/// Who a session is from: what the policy knows before any request.
#[derive(Clone)]
pub(crate) struct Origin {
    /// The inbound's name, as rules match it.
    pub(crate) inbound: &'static str,
    pub(crate) client: IpAddr,
    pub(crate) user: Option<Arc<str>>,
}

impl Origin {
    /// The facts about going to `host:port`, with `method` and `path` for
    /// an HTTP request.
    pub(crate) fn facts<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        method: Option<&'a str>,
        path: Option<&'a str>,
    ) -> Facts<'a> {
        Facts {
            inbound: self.inbound,
            client: self.client,
            user: self.user.as_deref(),
            host,
            port,
            method,
            path,
            addrs: &[],
        }
    }
}

/// Asks `settings`' policy about `facts`, resolving the name first when a
/// rule matches resolved addresses (a failed lookup decides without them).
pub(crate) async fn decide<'s>(
    settings: &'s Settings,
    worker: &Worker,
    facts: Facts<'_>,
) -> Verdict<'s> {
    let policy = settings.policy();
    if !policy.wants_addresses(&facts) {
        return policy.decide(&facts);
    }
    let deadline = tokio::time::Instant::now() + worker.upstream.config().connect_timeout;
    let addrs: Vec<IpAddr> = resolve(facts.host, facts.port, deadline)
        .await
        .map(|found| found.into_iter().map(|a| a.ip()).collect())
        .unwrap_or_default();
    policy.decide(&Facts {
        addrs: &addrs,
        ..facts
    })
}

/// Carries one HTTP request the way `verdict` says: refused, answered
/// here, or forwarded to the target `target` makes with its way out.
pub(crate) async fn follow(
    worker: &Arc<Worker>,
    settings: &Settings,
    verdict: Verdict<'_>,
    req: Request<Incoming>,
    target: impl FnOnce(Connector) -> Target,
    witness: &Arc<Witness>,
) -> Response<ProxyBody> {
    let outbound = verdict.outbound;
    witness.routed(&outbound.name, verdict.rule);
    match &outbound.way {
        Way::Refuse(refusal) => local::refused(refusal, &outbound.name, verdict.rule),
        Way::Answer(answer) => local::answered(answer),
        Way::Connect(connector) => {
            let client = witness.session().client().ip();
            let target = Target {
                client: Some(client),
                ..target(connector.clone())
            };
            let how = Forwarding::new(&settings.proxy, client);
            forward::exchange(worker, how, req, target, witness).await
        }
    }
}
