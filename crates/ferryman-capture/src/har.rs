//! HAR 1.2 export of records, with bodies inline up to a size limit.

use base64::Engine;
use serde_json::{json, Value};

use crate::decode::decode;
use crate::record::{CaptureStatus, ExchangeRecord, Part};
use crate::{Capture, Filter};

impl Capture {
    /// A HAR 1.2 document of the HTTP exchanges matching `filter`, oldest first.
    /// Bodies of at most `inline_limit` stored bytes are inlined (text, or
    /// base64 when not UTF-8); larger ones are referenced by their key.
    pub async fn har(&self, filter: &Filter, inline_limit: u64) -> Result<Value, String> {
        // Tunnels are not HTTP exchanges; HAR has no place for them.
        let mut records: Vec<ExchangeRecord> = self
            .query(filter)?
            .into_iter()
            .filter(|r| r.request.method != "CONNECT")
            .collect();
        records.reverse();
        let mut entries = Vec::with_capacity(records.len());
        for record in &records {
            let request_body = self.inline_body(record, Part::Request, inline_limit).await;
            let response_body = self.inline_body(record, Part::Response, inline_limit).await;
            entries.push(entry(record, request_body, response_body));
        }
        Ok(json!({
            "log": {
                "version": "1.2",
                "creator": {"name": "ferryman", "version": env!("CARGO_PKG_VERSION")},
                "pages": [],
                "entries": entries,
            }
        }))
    }

    async fn inline_body(
        &self,
        record: &ExchangeRecord,
        part: Part,
        inline_limit: u64,
    ) -> Option<Vec<u8>> {
        let body = match part {
            Part::Request => &record.request.body,
            Part::Response => &record.response.as_ref()?.body,
        };
        let kept = matches!(
            body.capture,
            CaptureStatus::Stored | CaptureStatus::Truncated
        );
        if !kept || body.captured > inline_limit {
            return None;
        }
        let id = crate::ExchangeId::parse(&record.id)?;
        self.body(id, part).await.ok().flatten().map(|b| b.to_vec())
    }
}

fn entry(
    record: &ExchangeRecord,
    request_body: Option<Vec<u8>>,
    response_body: Option<Vec<u8>>,
) -> Value {
    let timings = &record.timings;
    let sent = timings.request_sent_ms.unwrap_or(0.0);
    let first = timings.first_byte_ms.unwrap_or(sent).max(sent);
    let end = timings.end_ms.unwrap_or(first).max(first);
    let request = &record.request;
    let mut har_request = json!({
        "method": request.method,
        "url": request.url,
        "httpVersion": request.version,
        "cookies": cookies(&request.headers, "cookie"),
        "headers": headers(&request.headers),
        "queryString": query_string(&request.url),
        "headersSize": -1,
        "bodySize": request.body.size,
    });
    if request.body.size > 0 {
        let mime = header(&request.headers, "content-type").unwrap_or("application/octet-stream");
        let mut post = json!({"mimeType": mime});
        match request_body {
            Some(bytes) => put_text(&mut post, &bytes),
            None => post["comment"] = json!(not_inline(&request.body)),
        }
        har_request["postData"] = post;
    }
    let har_response = match &record.response {
        Some(response) => {
            let mime = header(&response.headers, "content-type").unwrap_or("");
            let mut content = json!({"size": response.body.size, "mimeType": mime});
            match response_body {
                Some(bytes) => {
                    let encoding = header(&response.headers, "content-encoding");
                    match decode(&bytes, encoding, crate::decode::Limits::VIEW) {
                        Ok((decoded, None)) => {
                            content["size"] = json!(decoded.len());
                            content["compression"] =
                                json!(decoded.len() as i64 - bytes.len() as i64);
                            put_text(&mut content, &decoded);
                        }
                        // Too large decoded (or a bomb): the stored bytes, as they are.
                        Ok((_, Some(stopped))) => {
                            put_text(&mut content, &bytes);
                            content["comment"] = json!(format!("not decoded: {stopped}"));
                        }
                        Err(_) => put_text(&mut content, &bytes),
                    }
                }
                None if response.body.size > 0 => {
                    content["comment"] = json!(not_inline(&response.body));
                }
                None => {}
            }
            json!({
                "status": response.status,
                "statusText": http::StatusCode::from_u16(response.status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or(""),
                "httpVersion": response.version,
                "cookies": cookies(&response.headers, "set-cookie"),
                "headers": headers(&response.headers),
                "content": content,
                "redirectURL": header(&response.headers, "location").unwrap_or(""),
                "headersSize": -1,
                "bodySize": response.body.size,
                "_trailers": headers(&response.trailers),
            })
        }
        // HAR has no room for "no response": status 0, as browsers export it.
        None => json!({
            "status": 0,
            "statusText": "",
            "httpVersion": "",
            "cookies": [],
            "headers": [],
            "content": {"size": 0, "mimeType": ""},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": -1,
        }),
    };
    let started =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(record.started_ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
    let mut entry = json!({
        "startedDateTime": started,
        "time": end,
        "request": har_request,
        "response": har_response,
        "cache": {},
        "timings": {"send": sent, "wait": first - sent, "receive": end - first},
        "connection": record.parent_id.unwrap_or(record.session_id).to_string(),
        "_id": record.id,
    });
    if let Some(error) = &record.error {
        entry["_error"] = json!(error);
    }
    entry
}

fn put_text(target: &mut Value, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => target["text"] = json!(text),
        Err(_) => {
            target["text"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
            target["encoding"] = json!("base64");
        }
    }
}

fn not_inline(body: &crate::BodyRecord) -> String {
    match &body.key {
        Some(key) => format!("body not inline ({} bytes kept): {key}", body.captured),
        None => format!(
            "body not captured ({})",
            body.reason.as_deref().unwrap_or("capture off")
        ),
    }
}

fn headers(pairs: &[(String, String)]) -> Vec<Value> {
    pairs
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect()
}

fn header<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `Cookie: a=1; b=2` in a request, one `Set-Cookie` per cookie in a response.
fn cookies(pairs: &[(String, String)], field: &str) -> Vec<Value> {
    pairs
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(field))
        .flat_map(|(_, value)| {
            let crumbs: Vec<&str> = if field == "cookie" {
                value.split(';').collect()
            } else {
                value.split(';').take(1).collect()
            };
            crumbs
                .into_iter()
                .filter_map(|c| c.trim().split_once('='))
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn query_string(url: &str) -> Vec<Value> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            json!({"name": name, "value": value})
        })
        .collect()
}
