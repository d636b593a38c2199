//! The upstream client: pooled HTTP/1 and HTTP/2 connections over any
//! [`Connect`]or, timeouts, and the one retry that is always safe. How a
//! connection is made (directly, through a proxy or an agent) is the
//! connector's business, never this module's.

mod connector;
mod error;
mod limits;
mod pool;
mod sent;

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::limit::Limit;
pub use connector::{Conn, Connect, Connecting, Connector, ForwardingProxy, Io};
pub use error::UpstreamError;
use limits::Limits;
use pool::{Checkout, Pool, PoolKey, Sender, Slot};
pub use sent::SentBody;

use crate::body::ProxyBody;
use crate::headers;
use crate::UpstreamConfig;

/// How upstream servers are talked to: timeouts and limits, and how their
/// TLS is checked. Shared by the clients of every worker thread and
/// replaced whole on reload; each exchange reads it once. The caps on
/// connections per host and per client hold across all of them.
pub struct UpstreamSettings {
    side: ArcSwap<ClientSide>,
    limits: Arc<Limits>,
    /// The sockets the process may hold: a connection kept idle takes a
    /// place, and is closed instead when there is none.
    places: Option<Arc<Limit>>,
}

struct ClientSide {
    config: UpstreamConfig,
    /// Offers HTTP/1.1 alone.
    tls: TlsConnector,
    /// Offers HTTP/2, then HTTP/1.1.
    tls_h2: TlsConnector,
    /// Changes with the TLS settings: connections checked under other
    /// settings are not reused.
    tls_generation: u64,
}

impl UpstreamSettings {
    /// `tls` says how to check servers reached over https; a connection
    /// kept idle takes one of `places`.
    pub fn new(
        config: UpstreamConfig,
        tls: Arc<rustls::ClientConfig>,
        places: Option<Arc<Limit>>,
    ) -> Arc<Self> {
        let limits = Limits::new(
            config.max_connections_per_host,
            config.max_connections_per_client,
        );
        Arc::new(Self {
            side: ArcSwap::from_pointee(ClientSide::new(config, tls, 0)),
            limits,
            places,
        })
    }

    /// New settings for the exchanges that start from now on; with new
    /// `tls`, pooled connections are no longer handed out.
    pub fn set(&self, config: UpstreamConfig, tls: Option<Arc<rustls::ClientConfig>>) {
        self.limits.resize(
            config.max_connections_per_host,
            config.max_connections_per_client,
        );
        let current = self.side.load();
        let side = match tls {
            Some(tls) => ClientSide::new(config, tls, current.tls_generation + 1),
            None => ClientSide {
                config,
                tls: current.tls.clone(),
                tls_h2: current.tls_h2.clone(),
                tls_generation: current.tls_generation,
            },
        };
        self.side.store(Arc::new(side));
    }

    pub fn config(&self) -> UpstreamConfig {
        self.side.load().config.clone()
    }
}

impl ClientSide {
    fn new(config: UpstreamConfig, tls: Arc<rustls::ClientConfig>, tls_generation: u64) -> Self {
        let mut h2 = (*tls).clone();
        h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self {
            config,
            tls: TlsConnector::from(tls),
            tls_h2: TlsConnector::from(Arc::new(h2)),
            tls_generation,
        }
    }
}

/// Sends requests to origin servers over pooled keep-alive connections.
#[derive(Clone)]
pub struct UpstreamClient {
    pool: Pool,
    settings: Arc<UpstreamSettings>,
    /// What every exchange records, registered once: finding a metric by
    /// name and labels cost ~1k instructions each time.
    pool_hits: metrics::Counter,
    ttfb: metrics::Histogram,
}

/// Where a request goes: a host and port, over TLS or not, and the way
/// out that reaches it.
#[derive(Clone)]
pub struct Target {
    pub authority: Authority,
    /// The port the authority names, or the scheme's default.
    pub port: u16,
    pub https: bool,
    /// The name to ask for and verify over TLS when it is not the host
    /// (a client that CONNECTs to an address and names the server in SNI).
    pub server_name: Option<Arc<str>>,
    /// The client speaks HTTP/2 too, so new TLS connections may offer it.
    pub offer_http2: bool,
    pub connector: Connector,
    /// Who the exchange is for: a client gets at most its share of a
    /// host's connections (`max_connections_per_client`).
    pub client: Option<IpAddr>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("authority", &self.authority)
            .field("port", &self.port)
            .field("https", &self.https)
            .field("server_name", &self.server_name)
            .field("offer_http2", &self.offer_http2)
            .field("connector", &self.connector.name())
            .field("client", &self.client)
            .finish()
    }
}

impl Target {
    /// `port` is the authority's (see [`split_authority`]), or None for
    /// the scheme's default.
    pub fn new(authority: Authority, port: Option<u16>, https: bool, connector: Connector) -> Self {
        Self {
            authority,
            port: port.unwrap_or(if https { 443 } else { 80 }),
            https,
            server_name: None,
            offer_http2: false,
            connector,
            client: None,
        }
    }

    /// An http:// target; an authority whose port is not a number gets
    /// the default (refuse such authorities first: [`split_authority`]).
    pub fn http(authority: Authority, connector: Connector) -> Self {
        let port = split_authority(&authority).ok().and_then(|(_, port)| port);
        Self::new(authority, port, false, connector)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// An HTTP proxy forwarding this request in absolute form, if that is
    /// how it travels: plain HTTP through a connector that offers it. An
    /// upgrade goes through a tunnel instead: few proxies relay a 101.
    fn forwarding_proxy(&self, upgrade: bool) -> Option<&dyn ForwardingProxy> {
        (!self.https && !upgrade)
            .then(|| self.connector.forwards_plain_http())
            .flatten()
    }
}

/// An authority's host (an IPv6 one in brackets) and the port it names:
/// None when it names none (or an empty one), an error when what follows
/// the colon is not a port number. Every request asks, so it is one pass
/// over the bytes rather than a search per separator.
pub fn split_authority(authority: &Authority) -> Result<(&str, Option<u16>), String> {
    let text = authority.as_str();
    let (mut at, mut colon, mut bracket) = (None, None, None);
    for (i, &b) in text.as_bytes().iter().enumerate() {
        match b {
            b'@' => at = Some(i),
            b':' => colon = Some(i),
            b']' => bracket = Some(i),
            _ => {}
        }
    }
    // Never "user:password@": a proxy's absolute-form target may carry it.
    let start = at.map_or(0, |at| at + 1);
    let Some(colon) = colon.filter(|&c| c >= start && bracket.is_none_or(|b| c > b)) else {
        return Ok((&text[start..], None));
    };
    let (host, port) = (&text[start..colon], &text[colon + 1..]);
    if port.is_empty() {
        return Ok((host, None));
    }
    let number = port.bytes().try_fold(0u16, |n, d| {
        let digit = d.is_ascii_digit().then(|| u16::from(d - b'0'))?;
        n.checked_mul(10)?.checked_add(digit)
    });
    match number {
        Some(port) if port > 0 => Ok((host, Some(port))),
        _ => Err(format!("{port:?} is not a port number (1-65535)")),
    }
}

/// What a new connection is for.
#[derive(Clone, Copy, PartialEq)]
enum Use {
    /// Any request: an idle or shared connection will do.
    Pooled,
    /// A second attempt, on a connection opened for it.
    Fresh,
    /// An upgrade, which takes the connection over: HTTP/1.1 only.
    Upgrade,
}

/// A connection for one exchange, and whether it had served one before.
struct Lease {
    sender: Sender,
    reused: bool,
}

enum Failure {
    /// hyper handed the request back: not a byte of it was written.
    Unsent(hyper::Error, Box<Request<SentBody>>),
    Sent(hyper::Error),
    TimedOut,
    Lease(UpstreamError),
}

impl UpstreamClient {
    /// `tls` says how to check servers reached over https.
    /// A client with a pool of its own, following `settings`. The pool's
    /// limits and idle timeout are those in force when it is made.
    pub fn new(settings: Arc<UpstreamSettings>) -> Self {
        let config = settings.config();
        Self {
            pool: Pool::new(
                settings.limits.clone(),
                settings.places.clone(),
                config.max_idle_per_host,
                config.idle_timeout,
            ),
            settings,
            pool_hits: metrics::counter!("ferryman_upstream_pool_total", "result" => "hit"),
            ttfb: metrics::histogram!("ferryman_upstream_ttfb_seconds"),
        }
    }

    /// The settings in force now.
    pub fn config(&self) -> UpstreamConfig {
        self.settings.config()
    }

    fn side(&self) -> Arc<ClientSide> {
        self.settings.side.load_full()
    }

    /// A connection to `host:port` through `connector`, for tunnels.
    pub async fn connect(
        &self,
        connector: &Connector,
        host: &str,
        port: u16,
    ) -> Result<Conn, UpstreamError> {
        let deadline = Instant::now() + self.side().config.connect_timeout;
        connector.connect(host, port, deadline).await
    }

    /// Takes over `stream`, a connection to `target` opened for a CONNECT:
    /// does the TLS handshake, offering HTTP/2 if the target says so, and
    /// pools the connection; unless an HTTP/2 connection to `target` is
    /// already shared. Tells whether the server chose HTTP/2.
    pub async fn adopt(&self, target: &Target, stream: Conn) -> Result<bool, UpstreamError> {
        let side = self.side();
        let key = PoolKey::new(target, side.tls_generation, false);
        // The server already chose HTTP/2 on the connection every exchange
        // to it shares: that answer stands, and `stream` is not needed.
        if self.pool.shares_http2(&key) {
            return Ok(true);
        }
        let deadline = Instant::now() + side.config.connect_timeout;
        let Some(Checkout::Open(slot)) = self.pool.checkout(&key, false, deadline).await else {
            let (host, port) = (target.authority.host(), target.port());
            return Err(UpstreamError::ConnectTimeout(format!("{host}:{port}")));
        };
        metrics::counter!("ferryman_upstream_pool_total", "result" => "miss").increment(1);
        let sender = self
            .start_tls(&side, &key, target, Use::Pooled, stream, slot, deadline)
            .await?;
        let http2 = sender.is_http2();
        self.pool.give_back(key, sender);
        Ok(http2)
    }

    /// Sends an origin-form request to `target`. Upgrade requests get a
    /// connection of their own that never returns to the pool.
    pub async fn send(
        &self,
        target: &Target,
        req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let side = self.side();
        let upgrade = headers::wants_upgrade(req.headers());
        let key = PoolKey::new(target, side.tls_generation, upgrade);
        let need = if upgrade { Use::Upgrade } else { Use::Pooled };
        let deadline = Instant::now() + side.config.connect_timeout;
        let place = self
            .settings
            .limits
            .client(target.client, &key, deadline)
            .await
            .ok_or_else(|| {
                UpstreamError::ClientShare(format!("{}:{}", target.authority.host(), target.port))
            })?;
        let mut lease = self.lease(&side, &key, target, need).await?;
        // Replayable: nothing to resend but the head, resending is harmless,
        // and only a reused connection can have been closed under us.
        let replay =
            (lease.reused && headers::is_idempotent(req.method()) && req.body().is_end_stream())
                .then(|| head_only(&req));
        let sending = Instant::now();
        let mut attempt = self
            .exchange(&side, &mut lease.sender, target, req.map(SentBody::new))
            .await;
        // A reused connection may have been closed by the server just as we
        // wrote to it; one fresh attempt is safe when the request was never
        // written, or when it is idempotent, bodiless and got no answer.
        attempt = match attempt {
            Err(Failure::Unsent(_, req)) if lease.reused => {
                Box::pin(self.retry(&side, &key, target, &mut lease, *req)).await
            }
            Err(Failure::Sent(e))
                if lease.reused && (e.is_incomplete_message() || e.is_canceled()) =>
            {
                match replay {
                    Some(head) => {
                        let req = head.map(|()| SentBody::new(crate::body::empty()));
                        Box::pin(self.retry(&side, &key, target, &mut lease, req)).await
                    }
                    None => Err(Failure::Sent(e)),
                }
            }
            other => other,
        };
        match attempt {
            Ok(response)
                if response.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED
                    && target.forwarding_proxy(upgrade).is_some() =>
            {
                // The forwarding proxy refused ferryman's credentials: not
                // the client's to answer, the configuration's to fix.
                Err(UpstreamError::Outbound {
                    outbound: target.connector.name().to_string(),
                    reason: "the proxy answered 407 Proxy Authentication Required: check the credentials in its url".into(),
                })
            }
            Ok(response) => {
                self.ttfb.record(sending.elapsed().as_secs_f64());
                let ticket = (!upgrade && response.status() != StatusCode::SWITCHING_PROTOCOLS)
                    .then(|| Ticket {
                        pool: self.pool.clone(),
                        key,
                        sender: lease.sender,
                        _place: place,
                    });
                Ok(response.map(|incoming| UpstreamBody::new(incoming, ticket)))
            }
            Err(Failure::Lease(e)) => Err(e),
            Err(Failure::TimedOut) => Err(UpstreamError::ResponseTimeout(
                side.config.response_header_timeout,
            )),
            Err(Failure::Unsent(e, _)) | Err(Failure::Sent(e)) => {
                if e.is_incomplete_message() {
                    Err(UpstreamError::Closed)
                } else {
                    Err(UpstreamError::Protocol(e))
                }
            }
        }
    }

    async fn lease(
        &self,
        side: &ClientSide,
        key: &PoolKey,
        target: &Target,
        need: Use,
    ) -> Result<Lease, UpstreamError> {
        let deadline = Instant::now() + side.config.connect_timeout;
        loop {
            let checkout = self.pool.checkout(key, need == Use::Pooled, deadline).await;
            match checkout {
                None => {
                    return Err(UpstreamError::ConnectTimeout(format!(
                        "{}:{}",
                        target.authority.host(),
                        target.port()
                    )))
                }
                Some(Checkout::Idle(mut sender)) => {
                    if sender.ready().await.is_ok() {
                        self.pool_hits.increment(1);
                        return Ok(Lease {
                            sender,
                            reused: true,
                        });
                    }
                }
                Some(Checkout::Open(slot)) => {
                    // Boxed: connecting and handshaking take far more state
                    // than reusing a pooled connection, which every request
                    // would otherwise allocate and copy.
                    return Box::pin(self.open(side, key, target, need, slot, deadline)).await;
                }
            }
        }
    }

    /// A new connection to `target`, in `slot`.
    async fn open(
        &self,
        side: &ClientSide,
        key: &PoolKey,
        target: &Target,
        need: Use,
        slot: Slot,
        deadline: Instant,
    ) -> Result<Lease, UpstreamError> {
        metrics::counter!("ferryman_upstream_pool_total", "result" => "miss").increment(1);
        let started = Instant::now();
        let stream = match target.forwarding_proxy(need == Use::Upgrade) {
            Some(proxy) => proxy.connect_to_proxy(deadline).await?,
            None => {
                let (host, port) = (target.authority.host(), target.port());
                target.connector.connect(host, port, deadline).await?
            }
        };
        let sender = if target.https {
            self.start_tls(side, key, target, need, stream, slot, deadline)
                .await?
        } else {
            self.start(side, stream, slot, false).await?
        };
        metrics::histogram!("ferryman_upstream_connect_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(Lease {
            sender,
            reused: false,
        })
    }

    /// TLS, then HTTP/2 if the server chose it (the pool shares that
    /// connection from then on), else HTTP/1.1.
    #[allow(clippy::too_many_arguments)]
    async fn start_tls(
        &self,
        side: &ClientSide,
        key: &PoolKey,
        target: &Target,
        need: Use,
        stream: Conn,
        slot: Slot,
        deadline: Instant,
    ) -> Result<Sender, UpstreamError> {
        let name = target
            .server_name
            .as_deref()
            .unwrap_or(target.authority.host());
        let connector = match need {
            Use::Pooled | Use::Fresh if target.offer_http2 => &side.tls_h2,
            _ => &side.tls,
        };
        let tls = self
            .handshake_tls(connector, name, stream, deadline)
            .await?;
        let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let sender = self.start(side, tls, slot, http2).await?;
        if let Sender::Http2(shared) = &sender {
            self.pool.share(key, shared.clone());
        }
        Ok(sender)
    }

    async fn handshake_tls(
        &self,
        connector: &TlsConnector,
        host: &str,
        stream: Conn,
        deadline: Instant,
    ) -> Result<TlsStream<Conn>, UpstreamError> {
        let name = host.trim_start_matches('[').trim_end_matches(']');
        let failed = |reason: String| UpstreamError::Tls {
            host: name.to_string(),
            reason,
        };
        let server_name =
            ServerName::try_from(name.to_string()).map_err(|e| failed(e.to_string()))?;
        match timeout_at(deadline, connector.connect(server_name, stream)).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => {
                metrics::counter!("ferryman_tls_handshake_failures_total", "side" => "upstream")
                    .increment(1);
                Err(failed(e.to_string()))
            }
            Err(_) => Err(UpstreamError::ConnectTimeout(name.to_string())),
        }
    }

    /// Speaks HTTP/2 or HTTP/1.1 over `io`; the connection lives in its own
    /// task, and frees its slot at the host's cap when it ends.
    async fn start<I>(
        &self,
        side: &ClientSide,
        io: I,
        slot: Slot,
        http2: bool,
    ) -> Result<Sender, UpstreamError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if http2 {
            let header_list = u32::try_from(side.config.max_response_header_bytes);
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(header_list.unwrap_or(u32::MAX))
                .handshake(TokioIo::new(io))
                .await
                .map_err(UpstreamError::Protocol)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "upstream HTTP/2 connection ended");
                }
                drop(slot);
            });
            return Ok(Sender::Http2(sender));
        }
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_headers(200)
            .max_header_size(side.config.max_response_header_bytes)
            .handshake(TokioIo::new(io))
            .await
            .map_err(UpstreamError::Protocol)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream connection ended");
            }
            drop(slot);
        });
        Ok(Sender::Http1(sender))
    }

    async fn retry(
        &self,
        side: &ClientSide,
        key: &PoolKey,
        target: &Target,
        lease: &mut Lease,
        req: Request<SentBody>,
    ) -> Result<Response<Incoming>, Failure> {
        debug!(authority = %target.authority, "retrying on a fresh connection");
        match self.lease(side, key, target, Use::Fresh).await {
            Ok(fresh) => *lease = fresh,
            Err(e) => return Err(Failure::Lease(e)),
        }
        self.exchange(side, &mut lease.sender, target, req).await
    }

    async fn exchange(
        &self,
        side: &ClientSide,
        sender: &mut Sender,
        target: &Target,
        mut req: Request<SentBody>,
    ) -> Result<Response<Incoming>, Failure> {
        if sender.is_http2() {
            to_http2(&mut req, target);
        } else if let Some(proxy) = target.forwarding_proxy(headers::wants_upgrade(req.headers())) {
            to_absolute(&mut req, target, proxy);
        } else {
            to_http1(&mut req);
        }
        let sent = req.body_mut().arm();
        let limit = side.config.response_header_timeout;
        let response = sender.try_send(req);
        tokio::select! {
            result = response => result.map_err(|mut e| match e.take_message() {
                Some(req) => Failure::Unsent(e.into_error(), Box::new(req)),
                None => Failure::Sent(e.into_error()),
            }),
            _ = async {
                let _ = sent.await;
                tokio::time::sleep(limit).await;
            } => Err(Failure::TimedOut),
        }
    }
}

/// HTTP/2 names the host in the target (`:scheme`, `:authority`), not in Host.
fn to_http2<B>(req: &mut Request<B>, target: &Target) {
    let authority = req
        .headers_mut()
        .remove(HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
        .unwrap_or_else(|| target.authority.clone());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(if target.https {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
    *req.version_mut() = Version::HTTP_2;
}

/// Back to origin form and Host, for a request first meant for HTTP/2 that
/// is retried on an HTTP/1.1 connection.
fn to_http1<B>(req: &mut Request<B>) {
    if let Some(authority) = req.uri().authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(HOST, host);
        }
        let path = req.uri().path_and_query().cloned();
        *req.uri_mut() = Uri::from(path.unwrap_or_else(|| PathAndQuery::from_static("/")));
    }
    *req.version_mut() = Version::HTTP_11;
}

/// Absolute form, for an HTTP proxy that forwards the request itself; the
/// Host field stays as the client set it.
fn to_absolute<B>(req: &mut Request<B>, target: &Target, proxy: &dyn ForwardingProxy) {
    if req.uri().authority().is_none() {
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(target.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
    }
    if let Some(authorization) = proxy.authorization() {
        req.headers_mut()
            .insert(http::header::PROXY_AUTHORIZATION, authorization.clone());
    }
    *req.version_mut() = Version::HTTP_11;
}

fn head_only<B>(req: &Request<B>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Returns a connection to the pool once its response has been read to the
/// end; until then the exchange holds its client's place.
struct Ticket {
    pool: Pool,
    key: PoolKey,
    sender: Sender,
    _place: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A response body from upstream. Read to its end, it frees its connection
/// for the next request; dropped early, it closes it.
pub struct UpstreamBody {
    incoming: Incoming,
    ticket: Option<Ticket>,
}

impl UpstreamBody {
    fn new(incoming: Incoming, ticket: Option<Ticket>) -> Self {
        let mut body = Self { incoming, ticket };
        if body.incoming.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(t) = self.ticket.take() {
            t.pool.give_back(t.key, t.sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = ready!(Pin::new(&mut self.incoming).poll_frame(cx));
        match &polled {
            None => self.release(),
            Some(Ok(_)) if self.incoming.is_end_stream() => self.release(),
            Some(Err(_)) => self.ticket = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// A target through a way out no test takes.
#[cfg(test)]
pub(crate) fn test_target(authority: &'static str) -> Target {
    struct Nowhere;

    impl Connect for Nowhere {
        fn name(&self) -> &str {
            "nowhere"
        }

        fn pool_key(&self) -> u64 {
            7
        }

        fn connect<'a>(&'a self, _: &'a str, _: u16, _: Instant) -> Connecting<'a> {
            Box::pin(async { Err(UpstreamError::Closed) })
        }
    }

    Target::http(Authority::from_static(authority), Arc::new(Nowhere))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_host_and_port() {
        let split = |a: &'static str| {
            split_authority(&Authority::from_static(a)).map(|(host, port)| (host.to_string(), port))
        };
        let ok = |host: &str, port| Ok((host.to_string(), port));
        assert_eq!(split("h:8080"), ok("h", Some(8080)));
        assert_eq!(split("h"), ok("h", None));
        assert_eq!(split("h:"), ok("h", None));
        assert_eq!(split("[::1]"), ok("[::1]", None));
        assert_eq!(split("[::1]:443"), ok("[::1]", Some(443)));
        assert_eq!(split("me:pw@h:81"), ok("h", Some(81)));
        assert_eq!(split("h:65535"), ok("h", Some(65535)));
        assert!(split("127.0.0.1:65616").is_err());
        assert!(split("h:0").is_err());
        assert!(split("h:123456").is_err());
        assert!(split("h:8a").is_err());
        // The same host and port as http's own parsing, where it succeeds.
        for a in ["h:1", "[::1]:2", "a.b.c:65535", "[fe80::1]"] {
            let authority = Authority::from_static(a);
            let (host, port) = split_authority(&authority).unwrap();
            assert_eq!(
                (host, port),
                (authority.host(), authority.port_u16()),
                "{a}"
            );
        }
    }
}

/// Random authorities against http's own parsing.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(ferryman_testkit::fuzz_cases(512)))]

        #[test]
        fn an_authority_splits_as_http_reads_it(text in "([a-z0-9.-]{0,12}|\\[[0-9a-f:]{2,12}\\])(:[0-9a-z]{0,7})?(@[a-z.]{1,6}(:[0-9]{1,6})?)?") {
            let Ok(authority) = text.parse::<Authority>() else {
                return Ok(());
            };
            match split_authority(&authority) {
                Ok((host, port)) => {
                    prop_assert_eq!(host, authority.host());
                    // A port http reads that is 0 or missing digits is ours to refuse.
                    if let Some(port) = port {
                        prop_assert_eq!(Some(port), authority.port_u16());
                    }
                }
                Err(_) => {
                    let port = authority.port_u16();
                    prop_assert!(port.is_none() || port == Some(0), "{} refused, http reads port {:?}", text, port);
                }
            }
        }
    }
}
