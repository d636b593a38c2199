//! Undoing `Content-Encoding` for people who want to read a body.

use std::io::Read;

/// Decodes `body` as `content_encoding` says (codings are undone last
/// first); identity and an absent header leave it as it is.
pub fn decode(body: &[u8], content_encoding: Option<&str>) -> Result<Vec<u8>, String> {
    let mut bytes = body.to_vec();
    let Some(codings) = content_encoding else {
        return Ok(bytes);
    };
    for coding in codings.rsplit(',').map(|c| c.trim().to_ascii_lowercase()) {
        bytes = match coding.as_str() {
            "" | "identity" => bytes,
            "gzip" | "x-gzip" => read_all(flate2::read::MultiGzDecoder::new(&bytes[..]), &coding)?,
            "deflate" => inflate(&bytes)?,
            "br" => read_all(
                brotli_decompressor::Decompressor::new(&bytes[..], 64 * 1024),
                &coding,
            )?,
            "zstd" => {
                let decoder = ruzstd::decoding::StreamingDecoder::new(&bytes[..])
                    .map_err(|e| format!("zstd: {e}"))?;
                read_all(decoder, &coding)?
            }
            other => return Err(format!("unknown content coding {other:?}")),
        };
    }
    Ok(bytes)
}

/// `deflate` is meant to be zlib-wrapped, but raw deflate is common.
fn inflate(bytes: &[u8]) -> Result<Vec<u8>, String> {
    read_all(flate2::read::ZlibDecoder::new(bytes), "deflate")
        .or_else(|_| read_all(flate2::read::DeflateDecoder::new(bytes), "deflate"))
}

fn read_all(mut reader: impl Read, coding: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    reader
        .read_to_end(&mut out)
        .map_err(|e| format!("{coding}: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::decode;
    use std::io::Write;

    #[test]
    fn gzip_and_deflate_round_trip() {
        let text = b"hello, ferryman".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decode(&gz, Some("gzip")).unwrap(), text);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        assert_eq!(decode(&z.finish().unwrap(), Some("deflate")).unwrap(), text);
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&text).unwrap();
        assert_eq!(
            decode(&raw.finish().unwrap(), Some("deflate")).unwrap(),
            text
        );
        assert_eq!(decode(&text, None).unwrap(), text);
        assert!(decode(b"not gzip", Some("gzip")).is_err());
        assert!(decode(&text, Some("compress")).is_err());
    }
}
