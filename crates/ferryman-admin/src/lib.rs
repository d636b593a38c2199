//! The admin listener: a REST API, live WebSocket topics, Prometheus
//! metrics and the dashboard. It runs on its own thread and event loop, so
//! a busy dashboard never takes a proxy worker's time slice.

mod api;
mod assets;
mod auth;
pub mod config;
mod live;
mod logs;
mod metrics;
mod summary;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ferryman_capture::Capture;
use ferryman_proxy::Sessions;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::AdminConfig;
pub use logs::{LogFeed, LogLayer, LogLine};
pub use metrics::Metrics;

/// The configuration as the API shows and changes it; the binary owns it.
pub trait Settings: Send + Sync + 'static {
    /// The configuration in force, every secret replaced by a placeholder.
    fn effective(&self) -> serde_json::Value;
    /// Applies `key=value` settings (the `--set` form) when every one of
    /// them can change while ferryman runs, and returns the keys applied.
    /// Otherwise nothing changes and the error says which key and why.
    fn update(&self, settings: &[String]) -> Result<Vec<String>, String>;
    /// Reads the configuration file again and puts it in force if it is
    /// valid as a whole; otherwise the error says what is wrong and the
    /// configuration in force stays.
    fn reload(&self) -> Result<serde_json::Value, String>;
    /// The configuration in force (its hash, since when) and how the last
    /// reload went.
    fn status(&self) -> serde_json::Value;
    /// Where traffic to `query.target` would go, and why; nothing is sent.
    fn route(&self, query: &ferryman_proxy::Query) -> Result<serde_json::Value, String>;
}

/// What the admin listener shows and acts on.
pub struct Parts {
    pub sessions: Sessions,
    pub capture: Option<Capture>,
    pub ca: Arc<ferryman_tls::CertificateAuthority>,
    pub settings: Arc<dyn Settings>,
    pub logs: LogFeed,
    /// None when another recorder owns the process (tests).
    pub metrics: Option<Metrics>,
    pub proxy_listen: SocketAddr,
    /// The tunnel's agents, when this ferryman is a gateway.
    pub agents: Option<Arc<ferryman_tunnel::Registry>>,
}

pub(crate) struct Shared {
    gate: auth::Gate,
    sessions: Sessions,
    capture: Option<Capture>,
    ca: Arc<ferryman_tls::CertificateAuthority>,
    settings: Arc<dyn Settings>,
    logs: LogFeed,
    metrics: Option<Metrics>,
    agents: Option<Arc<ferryman_tunnel::Registry>>,
    agent_gauge: Option<metrics::AgentGauge>,
    hub: live::Hub,
    started: SystemTime,
    proxy_listen: SocketAddr,
    admin_listen: SocketAddr,
    shutdown: CancellationToken,
    /// How long a client may take to send a request head.
    header_timeout: Duration,
}

/// A bound admin listener, ready to serve.
pub struct Admin {
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
}

/// Kernel send buffer per admin connection: what a subscriber that stops
/// reading can hold in ferryman's kernel memory before its writes block
/// and the write deadline drops it.
const SEND_BUFFER: usize = 64 * 1024;

/// How often histogram samples are folded in when nobody scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// `{"error": "..."}` with the status.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

impl Admin {
    /// Binds the listener and settles the token (see [`AdminConfig::token`]).
    pub fn bind(config: &AdminConfig, data_dir: &Path, parts: Parts) -> Result<Self, String> {
        let token = auth::token(config.token.as_ref(), data_dir)?;
        let listener = std::net::TcpListener::bind(config.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("cannot listen on {} (admin.listen): {e}", config.listen))?;
        let admin_listen = listener
            .local_addr()
            .map_err(|e| format!("admin.listen: {e}"))?;
        let shared = Arc::new(Shared {
            gate: auth::Gate::new(token, config.session_timeout),
            sessions: parts.sessions,
            capture: parts.capture,
            ca: parts.ca,
            settings: parts.settings,
            logs: parts.logs,
            metrics: parts.metrics,
            agent_gauge: parts.agents.clone().map(metrics::AgentGauge::new),
            agents: parts.agents,
            hub: live::Hub::default(),
            started: SystemTime::now(),
            proxy_listen: parts.proxy_listen,
            admin_listen,
            shutdown: CancellationToken::new(),
            header_timeout: config.header_timeout,
        });
        Ok(Self { listener, shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.admin_listen
    }

    /// Serves on a thread of its own until `shutdown`; join the handle to
    /// wait for it to stop.
    pub fn spawn(
        self,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<std::thread::JoinHandle<()>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the admin thread: {e}"))?;
        std::thread::Builder::new()
            .name("ferryman-admin".into())
            .spawn(move || runtime.block_on(self.serve(shutdown, grace)))
            .map_err(|e| format!("cannot start the admin thread: {e}"))
    }

    /// Serves until `shutdown`, then lets requests in flight finish for up
    /// to `grace`; the task returns after that whatever is left.
    pub async fn serve(self, shutdown: CancellationToken, grace: Duration) {
        let shared = self.shared;
        let listener = match tokio::net::TcpListener::from_std(self.listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "admin listener failed");
                return;
            }
        };
        tracing::info!(listen = %shared.admin_listen, "admin listening");
        live::spawn_producers(&shared);
        if shared.metrics.is_some() {
            let upkeep = shared.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(METRICS_UPKEEP);
                loop {
                    tokio::select! {
                        _ = every.tick() => {
                            if let Some(metrics) = &upkeep.metrics {
                                metrics.upkeep();
                            }
                        }
                        _ = upkeep.shutdown.cancelled() => return,
                    }
                }
            });
        }
        let head_timeout = shared.header_timeout;
        let router = router(shared.clone());
        let connections = TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Typically out of file descriptors: back off, not spin.
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // Best effort: the kernel default only means more buffering.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
            // The login's guess budget is per address.
            let router = router.clone();
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    tower_service::Service::call(&mut router.clone(), request)
                },
            );
            let stop = shared.shutdown.clone();
            connections.spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(head_timeout)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
        // Live subscribers end too, and requests in flight get the grace;
        // a client still sending its head gets nothing more.
        shared.shutdown.cancel();
        connections.close();
        if tokio::time::timeout(grace, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = connections.len(),
                "admin connections still open after the grace period; closing them"
            );
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let guarded = Router::new()
        .route("/", get(assets::index))
        .route("/index.html", get(assets::index))
        .route("/app.js", get(assets::app_js))
        .route("/metrics", get(api::metrics))
        .route("/api/openapi.json", get(assets::openapi))
        .route("/api/status", get(api::status))
        .route(
            "/api/connections",
            get(api::connections).delete(api::close_all),
        )
        .route("/api/connections/{id}", delete(api::close_connection))
        .route("/api/clients", get(api::clients))
        .route("/api/clients/{ip}/connections", delete(api::close_client))
        .route("/api/hosts", get(api::hosts))
        .route("/api/exchanges", get(api::exchanges))
        .route("/api/exchanges/{id}", get(api::exchange))
        .route("/api/exchanges/{id}/{part}/body", get(api::body))
        .route("/api/har", get(api::har))
        .route("/api/config", get(api::config).patch(api::update_config))
        .route("/api/config/reload", post(api::reload_config))
        .route("/api/route", get(api::route))
        .route("/api/agents", get(api::agents))
        .route("/api/agents/{id}", delete(api::disconnect_agent))
        .route("/api/live", get(live_stream))
        .route("/api/logout", post(auth::logout))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            auth::require,
        ));
    Router::new()
        .route("/login", get(assets::login))
        .route("/login.js", get(assets::login_js))
        .route("/app.css", get(assets::style))
        .route("/ca", get(assets::ca_page))
        .route("/api/login", post(auth::login))
        .route("/api/ca.pem", get(api::ca_pem))
        .route("/api/ca.der", get(api::ca_der))
        .merge(guarded)
        .with_state(shared)
}

/// The WebSocket endpoint. A page of another origin is refused even with a
/// cookie: the handshake is not covered by the browser's same-origin rules.
async fn live_stream(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let same = host.is_some_and(|host| {
            origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
        });
        if !same {
            return error(
                StatusCode::FORBIDDEN,
                "the live stream is only for pages of this origin",
            );
        }
    }
    upgrade.on_upgrade(move |socket| live::serve(socket, shared))
}
