//! `ferryman har` and `ferryman body`: reading what capture kept.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferryman_capture::{Capture, ExchangeId, Filter, Part};

use crate::cli::BodyPart;
use crate::config::Config;

/// An RFC 3339 time, or an age counted back from now.
fn parse_time(text: &str, flag: &str) -> Result<i64, String> {
    let time = match humantime::parse_duration(text) {
        Ok(age) => SystemTime::now()
            .checked_sub(age)
            .ok_or_else(|| format!("{flag} {text}: too far back"))?,
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| {
            format!(
                "{flag} {text}: expected an RFC 3339 time (2026-11-21T10:00:00Z) or an age (2h)"
            )
        })?,
    };
    Ok(time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64)
}

/// Runs `work` against the capture of `config`, once its index is ready.
fn with_capture<T>(
    config: &Config,
    work: impl AsyncFnOnce(&Capture) -> Result<T, String>,
) -> Result<T, String> {
    let capture = Capture::start(config.capture.clone(), &config.data_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start: {e}"))?;
    runtime.block_on(async {
        capture.settled().await;
        work(&capture).await
    })
}

fn write_out(bytes: &[u8], output: Option<&Path>) -> Result<(), String> {
    match output {
        Some(path) => {
            std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        None => std::io::Write::write_all(&mut std::io::stdout(), bytes)
            .map_err(|e| format!("cannot write to stdout: {e}")),
    }
}

pub struct HarRequest<'a> {
    pub since: Option<&'a str>,
    pub until: Option<&'a str>,
    pub host: Option<&'a str>,
    pub max_inline: u64,
    pub output: Option<&'a Path>,
}

pub fn har(config: &Config, request: HarRequest<'_>) -> Result<(), String> {
    let filter = Filter {
        since_ms: request
            .since
            .map(|t| parse_time(t, "--since"))
            .transpose()?,
        until_ms: request
            .until
            .map(|t| parse_time(t, "--until"))
            .transpose()?,
        host: request.host.map(str::to_owned),
        ..Filter::default()
    };
    let har = with_capture(config, async |capture| {
        capture.har(&filter, request.max_inline).await
    })?;
    let mut text = serde_json::to_vec_pretty(&har).map_err(|e| e.to_string())?;
    text.push(b'\n');
    write_out(&text, request.output)
}

/// Writes a stored body; with `decode`, its content coding undone, at
/// most `max_decoded` bytes (a body can be a decompression bomb).
pub fn body(
    config: &Config,
    id: &str,
    part: BodyPart,
    decode: Option<u64>,
    output: Option<&Path>,
) -> Result<(), String> {
    let id = ExchangeId::parse(id).ok_or_else(|| format!("{id:?} is not an exchange id"))?;
    let part = match part {
        BodyPart::Request => Part::Request,
        BodyPart::Response => Part::Response,
    };
    let bytes = with_capture(config, async |capture| {
        let record = capture
            .record(id)?
            .ok_or_else(|| format!("no exchange {id} in the index"))?;
        let (body, headers) = match part {
            Part::Request => (&record.request.body, &record.request.headers),
            Part::Response => {
                let response = record
                    .response
                    .as_ref()
                    .ok_or_else(|| format!("exchange {id} has no response"))?;
                (&response.body, &response.headers)
            }
        };
        if body.key.is_none() {
            if body.size == 0 {
                return Ok(Vec::new());
            }
            let why = body
                .reason
                .clone()
                .unwrap_or_else(|| format!("{:?}", body.capture).to_lowercase());
            return Err(format!(
                "the {} body of {id} was not kept: {why}",
                part.name()
            ));
        }
        let stored = capture
            .body(id, part)
            .await?
            .ok_or_else(|| format!("the {} body of {id} is gone from the store", part.name()))?;
        let Some(max_output) = decode else {
            return Ok(stored.to_vec());
        };
        let encoding = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-encoding"))
            .map(|(_, v)| v.as_str());
        let limits = ferryman_capture::decode::Limits {
            max_output,
            max_ratio: 1000,
        };
        let (decoded, stopped) = ferryman_capture::decode::decode(&stored, encoding, limits)?;
        if let Some(stopped) = stopped {
            eprintln!("warning: {stopped} (raise --max-decoded to get more)");
        }
        Ok(decoded)
    })?;
    write_out(&bytes, output)
}
