//! Undoing `Content-Encoding` for people who want to read a body. A body
//! can be a decompression bomb (kilobytes that inflate to gigabytes), so
//! decoding streams through the codings and stops at a cap on the output
//! and on its ratio to the input, saying so; callers run it off any event
//! loop that serves something else.

use std::io::{BufRead, BufReader, Read, Write};

/// How much decoding may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of output at most.
    pub max_output: u64,
    /// Output per input byte at most (beyond a first MiB).
    pub max_ratio: u64,
}

impl Limits {
    /// For showing a body: 16 MiB, 100 times the input.
    pub const VIEW: Limits = Limits {
        max_output: 16 << 20,
        max_ratio: 100,
    };

    /// The output cap for `input` bytes.
    fn cap(&self, input: usize) -> u64 {
        let by_ratio = (input as u64).saturating_mul(self.max_ratio).max(1 << 20);
        self.max_output.min(by_ratio)
    }
}

/// Where decoding stopped short, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub at: u64,
    pub reason: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "decoding stopped after {} bytes: {}",
            self.at, self.reason
        )
    }
}

/// Decodes `body` as `content_encoding` says (codings are undone last
/// first) within `limits`; identity and an absent header leave it as it
/// is. `Stopped` says the output was cut at the cap.
pub fn decode(
    body: &[u8],
    content_encoding: Option<&str>,
    limits: Limits,
) -> Result<(Vec<u8>, Option<Stopped>), String> {
    let mut out = Vec::new();
    let stopped = decode_to(body, content_encoding, limits, &mut out)?;
    Ok((out, stopped))
}

/// [`decode`], writing into `out` as it goes.
pub fn decode_to(
    body: &[u8],
    content_encoding: Option<&str>,
    limits: Limits,
    out: &mut impl Write,
) -> Result<Option<Stopped>, String> {
    let mut reader: Box<dyn Read + '_> = Box::new(body);
    for coding in content_encoding
        .unwrap_or("")
        .rsplit(',')
        .map(|c| c.trim().to_ascii_lowercase())
    {
        reader = match coding.as_str() {
            "" | "identity" => reader,
            "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            "deflate" => inflater(reader).map_err(|e| format!("deflate: {e}"))?,
            "br" => Box::new(brotli_decompressor::Decompressor::new(reader, 64 * 1024)),
            "zstd" => Box::new(
                ruzstd::decoding::StreamingDecoder::new(reader)
                    .map_err(|e| format!("zstd: {e}"))?,
            ),
            other => return Err(format!("unknown content coding {other:?}")),
        };
    }
    let cap = limits.cap(body.len());
    let mut written = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(format!(
                    "{content_encoding:?}: {e}",
                    content_encoding = content_encoding.unwrap_or("")
                ))
            }
        };
        let room = (cap - written).min(n as u64) as usize;
        out.write_all(&chunk[..room])
            .map_err(|e| format!("cannot write the decoded body: {e}"))?;
        written += room as u64;
        if room < n {
            let reason = if cap < limits.max_output {
                format!(
                    "more than {} times the {} bytes stored (a decompression bomb?)",
                    limits.max_ratio,
                    body.len()
                )
            } else {
                format!("the cap of {} bytes", limits.max_output)
            };
            return Ok(Some(Stopped {
                at: written,
                reason,
            }));
        }
    }
}

/// `deflate` is meant to be zlib-wrapped, but raw deflate is common: a
/// zlib header says which.
fn inflater<'a>(reader: Box<dyn Read + 'a>) -> std::io::Result<Box<dyn Read + 'a>> {
    let mut reader = BufReader::new(reader);
    let head = reader.fill_buf()?;
    let zlib = head.len() >= 2
        && head[0] & 0x0f == 8
        && (u16::from(head[0]) << 8 | u16::from(head[1])) % 31 == 0;
    Ok(if zlib {
        Box::new(flate2::read::ZlibDecoder::new(reader))
    } else {
        Box::new(flate2::read::DeflateDecoder::new(reader))
    })
}

#[cfg(test)]
mod tests {
    use super::{decode as decode_limited, Limits};
    use std::io::Write;

    fn decode(body: &[u8], coding: Option<&str>) -> Result<Vec<u8>, String> {
        let (out, stopped) = decode_limited(body, coding, Limits::VIEW)?;
        assert!(stopped.is_none(), "{stopped:?}");
        Ok(out)
    }

    #[test]
    fn a_bomb_stops_at_the_cap_and_says_so() {
        let zeros = vec![0u8; 64 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&zeros).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 128 << 10, "{}", bomb.len());
        let (out, stopped) = decode_limited(&bomb, Some("gzip"), Limits::VIEW).unwrap();
        let stopped = stopped.expect("stopped");
        // 100 times the ~64 KiB stored, under the 16 MiB cap.
        assert_eq!(out.len() as u64, stopped.at);
        assert_eq!(stopped.at, (bomb.len() as u64 * 100).max(1 << 20));
        assert!(stopped.reason.contains("decompression bomb"), "{stopped}");
        let generous = Limits {
            max_output: 4 << 20,
            max_ratio: 1_000_000,
        };
        let (out, stopped) = decode_limited(&bomb, Some("gzip"), generous).unwrap();
        assert_eq!(out.len(), 4 << 20);
        assert!(stopped.unwrap().reason.contains("cap of 4194304 bytes"));
    }

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
