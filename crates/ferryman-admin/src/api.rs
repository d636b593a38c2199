//! The REST API; documented in `assets/openapi.json`.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferryman_capture::{Capture, ExchangeId, Filter, Part};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::summary::Summary;
use crate::{error, Shared};

type Shard = State<Arc<Shared>>;

/// Exchanges listed at once when the client does not say.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

pub(crate) async fn status(State(shared): Shard) -> Response {
    let capture = shared.capture.as_ref().map(|c| {
        let stats = c.stats();
        let n = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
        json!({
            "bodies_stored": n(&stats.bodies_stored),
            "bodies_dropped": n(&stats.bodies_failed),
            "records_stored": n(&stats.records_stored),
            "records_dropped": n(&stats.records_failed),
        })
    });
    let uptime = shared.started.elapsed().unwrap_or_default();
    Json(json!({
        "name": "ferryman",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": uptime.as_secs(),
        "proxy_listen": shared.proxy_listen.to_string(),
        "admin_listen": shared.admin_listen.to_string(),
        "capture": capture,
        "config": shared.settings.status(),
        "sessions": shared.sessions.active_by_kind().into_iter().collect::<std::collections::HashMap<_, _>>(),
        "subscribers": shared.hub.count(),
    }))
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct ConnectionsQuery {
    #[serde(default)]
    history: bool,
}

pub(crate) async fn connections(
    State(shared): Shard,
    Query(query): Query<ConnectionsQuery>,
) -> Response {
    let history = query.history.then(|| shared.sessions.history());
    Json(json!({ "sessions": shared.sessions.list(), "history": history })).into_response()
}

pub(crate) async fn close_connection(State(shared): Shard, Path(id): Path<u64>) -> Response {
    if shared.sessions.close(id) {
        Json(json!({ "closed": 1 })).into_response()
    } else {
        error(StatusCode::NOT_FOUND, &format!("no open session {id}"))
    }
}

/// The tunnel's agents, with their groups; empty when this is no gateway.
pub(crate) async fn agents(State(shared): Shard) -> Response {
    let agents = shared
        .agents
        .as_ref()
        .map(|registry| registry.snapshot())
        .unwrap_or_default();
    let groups = shared
        .agents
        .as_ref()
        .map(|registry| registry.groups())
        .unwrap_or_default();
    Json(json!({ "agents": agents, "groups": groups })).into_response()
}

/// Closes an agent's carriers; it reconnects unless its token is revoked.
pub(crate) async fn disconnect_agent(State(shared): Shard, Path(id): Path<String>) -> Response {
    match &shared.agents {
        Some(registry) if registry.disconnect(&id) => {
            Json(json!({ "disconnected": id })).into_response()
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no connected agent {id:?}")),
    }
}

pub(crate) async fn close_all(State(shared): Shard) -> Response {
    Json(json!({ "closed": shared.sessions.close_all() })).into_response()
}

pub(crate) async fn close_client(State(shared): Shard, Path(ip): Path<String>) -> Response {
    match ip.parse::<IpAddr>() {
        Ok(ip) => Json(json!({ "closed": shared.sessions.close_client(ip) })).into_response(),
        Err(_) => error(
            StatusCode::BAD_REQUEST,
            &format!("{ip:?} is not an IP address"),
        ),
    }
}

#[derive(Deserialize)]
pub(crate) struct TopQuery {
    limit: Option<usize>,
}

fn by_total(mut rows: Vec<ferryman_proxy::KeyedBytes>, limit: Option<usize>) -> Response {
    rows.sort_unstable_by_key(|r| std::cmp::Reverse(r.bytes_up + r.bytes_down));
    rows.truncate(limit.unwrap_or(100));
    Json(rows).into_response()
}

pub(crate) async fn clients(State(shared): Shard, Query(q): Query<TopQuery>) -> Response {
    by_total(shared.sessions.clients(), q.limit)
}

pub(crate) async fn hosts(State(shared): Shard, Query(q): Query<TopQuery>) -> Response {
    by_total(shared.sessions.hosts(), q.limit)
}

/// An error answer, small enough to pass around in a `Result`.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

fn capture(shared: &Shared) -> Result<&Capture, Refused> {
    shared.capture.as_ref().ok_or_else(|| {
        Refused(
            StatusCode::NOT_FOUND,
            "capture is off (capture.enabled = false): there are no exchanges".into(),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExchangesQuery {
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    host: Option<String>,
    method: Option<String>,
    status: Option<u16>,
    content_type: Option<String>,
    text: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    offset: usize,
    /// HAR only: bodies up to this many bytes are inlined.
    max_inline: Option<u64>,
}

impl ExchangesQuery {
    fn filter(&self) -> Filter {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        Filter {
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            host: nonempty(&self.host),
            method: nonempty(&self.method),
            status: self.status,
            content_type: nonempty(&self.content_type),
            text: nonempty(&self.text),
            limit: Some(self.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE)),
            offset: self.offset,
        }
    }
}

pub(crate) async fn exchanges(
    State(shared): Shard,
    Query(query): Query<ExchangesQuery>,
) -> Response {
    let capture = match capture(&shared) {
        Ok(capture) => capture.clone(),
        Err(refused) => return refused.into_response(),
    };
    let filter = query.filter();
    let records = match blocking(move || capture.query(&filter)).await {
        Ok(records) => records,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let items: Vec<Summary<'_>> = records.iter().map(Summary::of).collect();
    Json(json!({ "exchanges": items, "offset": query.offset })).into_response()
}

/// The index is SQLite: its reads block, so they run off the event loop.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("index read failed: {e}"))?
}

fn parse_id(id: &str) -> Result<ExchangeId, Refused> {
    ExchangeId::parse(id).ok_or_else(|| {
        Refused(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an exchange id"),
        )
    })
}

async fn find(
    shared: &Shared,
    id: &str,
) -> Result<(Capture, ExchangeId, ferryman_capture::ExchangeRecord), Refused> {
    let capture = capture(shared)?.clone();
    let id = parse_id(id)?;
    let lookup = capture.clone();
    match blocking(move || lookup.record(id)).await {
        Ok(Some(record)) => Ok((capture, id, record)),
        Ok(None) => Err(Refused(StatusCode::NOT_FOUND, format!("no exchange {id}"))),
        Err(e) => Err(Refused(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

pub(crate) async fn exchange(State(shared): Shard, Path(id): Path<String>) -> Response {
    match find(&shared, &id).await {
        Ok((_, _, record)) => Json(record).into_response(),
        Err(refused) => refused.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BodyQuery {
    #[serde(default)]
    decode: bool,
    #[serde(default)]
    download: bool,
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub(crate) async fn body(
    State(shared): Shard,
    Path((id, part)): Path<(String, String)>,
    Query(query): Query<BodyQuery>,
) -> Response {
    let part = match part.as_str() {
        "request" => Part::Request,
        "response" => Part::Response,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("{other:?}: expected request or response"),
            )
        }
    };
    let (capture, id, record) = match find(&shared, &id).await {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let (headers, stored) = match (part, &record.response) {
        (Part::Request, _) => (&record.request.headers, &record.request.body),
        (Part::Response, Some(response)) => (&response.headers, &response.body),
        (Part::Response, None) => {
            return error(StatusCode::NOT_FOUND, "this exchange has no response")
        }
    };
    if stored.key.is_none() {
        let why = stored.reason.as_deref().unwrap_or("nothing was captured");
        return error(
            StatusCode::NOT_FOUND,
            &format!("no stored {} body: {why}", part.name()),
        );
    }
    let bytes = match capture.body(id, part).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "the stored body is gone (retention?)",
            )
        }
        Err(e) => return error(StatusCode::BAD_GATEWAY, &e),
    };
    let mut stopped = None;
    let bytes = if query.decode {
        // Off the admin's event loop, and capped: a body can be a bomb.
        let encoding = header_of(headers, "content-encoding").map(str::to_string);
        let decoding = tokio::task::spawn_blocking(move || {
            let limits = ferryman_capture::decode::Limits::VIEW;
            ferryman_capture::decode::decode(&bytes, encoding.as_deref(), limits)
        });
        match decoding.await {
            Ok(Ok((decoded, cut))) => {
                stopped = cut;
                bytes::Bytes::from(decoded)
            }
            Ok(Err(e)) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!("cannot decode: {e}"),
                )
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    } else {
        bytes
    };
    let content_type = header_of(headers, "content-type")
        .and_then(|v| HeaderValue::from_str(v).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut response = (StatusCode::OK, bytes).into_response();
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, content_type);
    // A captured page must never run as the dashboard's origin.
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(stopped) = stopped.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        out.insert("x-ferryman-decoding", stopped);
    }
    if query.download {
        if let Ok(value) = HeaderValue::from_str(&format!(
            "attachment; filename=\"{id}-{}.body\"",
            part.name()
        )) {
            out.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    response
}

pub(crate) async fn har(State(shared): Shard, Query(query): Query<ExchangesQuery>) -> Response {
    let capture = match capture(&shared) {
        Ok(capture) => capture.clone(),
        Err(refused) => return refused.into_response(),
    };
    let mut filter = query.filter();
    filter.limit = query.limit;
    match capture
        .har(&filter, query.max_inline.unwrap_or(1 << 20))
        .await
    {
        Ok(har) => (
            [(
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"ferryman.har\"",
            )],
            Json(har),
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

pub(crate) async fn config(State(shared): Shard) -> Response {
    Json(shared.settings.effective()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigUpdate {
    /// `key=value` settings, as with `--set`.
    set: Vec<String>,
}

#[derive(Serialize)]
struct Applied {
    applied: Vec<String>,
    config: serde_json::Value,
}

pub(crate) async fn update_config(
    State(shared): Shard,
    Json(update): Json<ConfigUpdate>,
) -> Response {
    match shared.settings.update(&update.set) {
        Ok(applied) => Json(Applied {
            applied,
            config: shared.settings.effective(),
        })
        .into_response(),
        Err(reason) => error(StatusCode::UNPROCESSABLE_ENTITY, &reason),
    }
}

pub(crate) async fn reload_config(State(shared): Shard) -> Response {
    let settings = shared.settings.clone();
    // Reading rule lists and binding listeners block: not on the event loop.
    let reloaded = tokio::task::spawn_blocking(move || settings.reload()).await;
    match reloaded {
        Ok(Ok(outcome)) => Json(outcome).into_response(),
        Ok(Err(reason)) => error(StatusCode::UNPROCESSABLE_ENTITY, &reason),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteQuery {
    /// A URL (`https://host/path`) or a tunnel's `host:port`.
    target: String,
    user: Option<String>,
    client: Option<std::net::IpAddr>,
    inbound: Option<String>,
    method: Option<String>,
}

pub(crate) async fn route(State(shared): Shard, Query(query): Query<RouteQuery>) -> Response {
    let query = ferryman_proxy::Query {
        target: query.target,
        inbound: query.inbound,
        client: query.client,
        user: query.user,
        method: query.method,
    };
    let settings = shared.settings.clone();
    // A rule on resolved addresses makes the answer wait for DNS.
    let decided = tokio::task::spawn_blocking(move || settings.route(&query)).await;
    match decided {
        Ok(Ok(explanation)) => Json(explanation).into_response(),
        Ok(Err(reason)) => error(StatusCode::BAD_REQUEST, &reason),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The CA certificate as a download, PEM or DER.
fn ca_file(shared: &Shared, pem: bool) -> Response {
    let (content_type, name, bytes) = if pem {
        (
            "application/x-pem-file",
            "ferryman-ca.pem",
            shared.ca.cert_pem().as_bytes(),
        )
    } else {
        (
            "application/x-x509-ca-cert",
            "ferryman-ca.crt",
            shared.ca.cert_der(),
        )
    };
    let disposition = format!("attachment; filename=\"{name}\"");
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes.to_vec(),
    )
        .into_response()
}

pub(crate) async fn ca_pem(State(shared): Shard) -> Response {
    ca_file(&shared, true)
}

pub(crate) async fn ca_der(State(shared): Shard) -> Response {
    ca_file(&shared, false)
}

pub(crate) async fn metrics(State(shared): Shard) -> Response {
    let Some(metrics) = &shared.metrics else {
        return error(
            StatusCode::NOT_FOUND,
            "metrics are not recorded in this process",
        );
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(
            &shared.sessions,
            shared.capture.as_ref(),
            shared.agent_gauge.as_ref(),
        ),
    )
        .into_response()
}

/// Random query strings: taken or refused, never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(ferryman_testkit::fuzz_cases(512)))]

        #[test]
        fn exchange_queries_parse_or_are_refused(
            pairs in prop::collection::vec((
                prop::sample::select(vec!["since_ms", "until_ms", "host", "method", "status", "content_type", "text", "limit", "offset", "max_inline", "other"]),
                "[ -~]{0,20}",
            ), 0..6)
        ) {
            let query = pairs.iter().map(|(k, v)| format!("{k}={}", v.replace(['&', '='], ""))).collect::<Vec<_>>().join("&");
            if let Ok(parsed) = serde_urlencoded::from_str::<ExchangesQuery>(&query) {
                let filter = parsed.filter();
                prop_assert!(filter.limit.is_some_and(|l| l <= MAX_PAGE));
            }
        }

        #[test]
        fn body_and_route_queries_parse_or_are_refused(query in "[ -~]{0,60}") {
            let _ = serde_urlencoded::from_str::<BodyQuery>(&query);
            let _ = serde_urlencoded::from_str::<RouteQuery>(&query);
        }
    }
}
