//! One stream the gateway opened: its destination checked by name, resolved
//! here (the agent sees the private names), every address checked, and
//! only a checked one dialled; then the answer (200, or why not) and the
//! bytes relayed both ways with half-close.

use std::sync::Arc;

use bytes::Bytes;
use ferryman_http::dial::{self, Source};
use ferryman_http::UpstreamError;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Request, Response, StatusCode};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

use super::{udp, Serving};
use crate::stream::{relay_tcp, H2Stream};
use crate::wire::{self, Network, Refusal};

pub(crate) async fn stream(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    serving: Arc<Serving>,
) {
    let Some((host, port)) = destination(&request) else {
        let why = format!(
            "not a stream request: {} {}",
            request.method(),
            request.uri()
        );
        return refuse(&mut respond, Refusal::Failed, &why);
    };
    match Network::from_headers(request.headers()) {
        Some(Network::Tcp) => tcp(request, respond, &serving, &host, port).await,
        Some(Network::Udp) => {
            let Ok(send) = respond.send_response(answer(StatusCode::OK), false) else {
                return;
            };
            let stream = H2Stream::new(send, request.into_body());
            udp::serve(stream, serving).await
        }
        None => refuse(&mut respond, Refusal::Failed, "unknown network"),
    }
}

fn destination(request: &Request<RecvStream>) -> Option<(String, u16)> {
    if request.method() != http::Method::CONNECT {
        return None;
    }
    let authority = request.uri().authority()?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    Some((host.to_string(), authority.port_u16()?))
}

fn answer(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

fn refuse(respond: &mut SendResponse<Bytes>, refusal: Refusal, why: &str) {
    let mut response = answer(refusal.status());
    let headers = response.headers_mut();
    headers.insert(
        wire::REFUSAL,
        http::HeaderValue::from_static(refusal.as_str()),
    );
    headers.insert(wire::REASON, wire::header_text(why));
    let _ = respond.send_response(response, true);
}

/// What a failed lookup or dial tells the gateway.
fn refusal_of(e: &UpstreamError) -> Refusal {
    match e {
        UpstreamError::Resolve { .. } | UpstreamError::NoAddress(_) => Refusal::Unresolved,
        UpstreamError::Connect { source, .. } => Refusal::of_io(source),
        UpstreamError::ConnectTimeout(_) => Refusal::Timeout,
        UpstreamError::Loop(_) => Refusal::Denied,
        _ => Refusal::Failed,
    }
}

async fn tcp(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    serving: &Serving,
    host: &str,
    port: u16,
) {
    match dial_checked(serving, host, port).await {
        Ok(tcp) => {
            let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let mut response = answer(StatusCode::OK);
            response
                .headers_mut()
                .insert(wire::PEER, wire::header_text(&peer));
            let Ok(send) = respond.send_response(response, false) else {
                return;
            };
            if let Err(e) = relay_tcp(send, request.into_body(), tcp, &|_, _| {}).await {
                debug!(%host, port, error = %e, "stream ended abruptly");
            }
        }
        Err((refusal, why)) => {
            if refusal == Refusal::Denied {
                info!(%host, port, reason = %why, "refused a stream");
            } else {
                debug!(%host, port, %refusal, reason = %why, "could not reach a destination");
            }
            refuse(&mut respond, refusal, &why);
        }
    }
}

/// A connection to `host:port` at an address the list allows, or why not.
async fn dial_checked(
    serving: &Serving,
    host: &str,
    port: u16,
) -> Result<TcpStream, (Refusal, String)> {
    serving
        .acl
        .check_name(host)
        .map_err(|why| (Refusal::Denied, why))?;
    let deadline = Instant::now() + serving.connect_timeout;
    let failed = |e: UpstreamError| (refusal_of(&e), e.to_string());
    let found = (serving.resolver)(host.to_string(), port, deadline)
        .await
        .map_err(failed)?;
    let allowed = serving
        .acl
        .check(host, &found)
        .map_err(|why| (Refusal::Denied, why))?;
    dial::dial_addrs(
        host,
        port,
        allowed,
        deadline,
        &Source::default(),
        &serving.own,
    )
    .await
    .map_err(failed)
}
