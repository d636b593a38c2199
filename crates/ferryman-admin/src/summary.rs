//! An exchange as a list row: what the list shows and filters on, without
//! the headers (the detail view fetches the whole record).

use ferryman_capture::ExchangeRecord;
use serde::Serialize;

#[derive(Serialize)]
pub(crate) struct Summary<'a> {
    id: &'a str,
    session_id: u64,
    parent_id: Option<u64>,
    started_ms: i64,
    client: &'a str,
    method: &'a str,
    url: &'a str,
    status: Option<u16>,
    content_type: Option<&'a str>,
    request_size: u64,
    response_size: Option<u64>,
    duration_ms: Option<f64>,
    intercepted: bool,
    error: Option<&'a str>,
}

impl<'a> Summary<'a> {
    pub(crate) fn of(record: &'a ExchangeRecord) -> Self {
        let response = record.response.as_ref();
        Summary {
            id: &record.id,
            session_id: record.session_id,
            parent_id: record.parent_id,
            started_ms: record.started_ms,
            client: &record.client,
            method: &record.request.method,
            url: &record.request.url,
            status: response.map(|r| r.status),
            content_type: response.and_then(|r| {
                r.headers
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
                    .map(|(_, value)| value.as_str())
            }),
            request_size: record.request.body.size,
            response_size: response.map(|r| r.body.size),
            duration_ms: record.timings.end_ms,
            intercepted: record.tls.as_ref().is_some_and(|t| t.intercepted),
            error: record.error.as_deref(),
        }
    }
}
