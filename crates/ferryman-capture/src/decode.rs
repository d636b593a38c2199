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
    fn every_coding_is_undone() {
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
        // Node's zlib.brotliCompressSync("ferryman ".repeat(20)).
        let br = [
            0x1b, 0xb3, 0x00, 0xf8, 0xc5, 0x03, 0xae, 0x56, 0xaf, 0xe0, 0x08, 0x27, 0x74, 0x0b,
            0x06, 0x96, 0xd6, 0xf6, 0xb0, 0x00,
        ];
        assert_eq!(decode(&br, Some("br")).unwrap(), b"ferryman ".repeat(20));
        let zstd = ruzstd::encoding::compress_to_vec(
            &text[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(decode(&zstd, Some("zstd")).unwrap(), text);
        // Codings apply in order; undone last first.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&zstd).unwrap();
        assert_eq!(
            decode(&gz.finish().unwrap(), Some("zstd, gzip")).unwrap(),
            text
        );
        assert!(decode(&text, Some("compress")).is_err());
    }
}
