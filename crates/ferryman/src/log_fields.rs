//! Text log fields, written as tracing-subscriber's default does
//! (`message name=value name="text"`) without going through its styling
//! and `Debug` formatting for every value: an access-log line per exchange
//! made that a quarter of the instructions ferryman spent on a request.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

pub(crate) struct TextFields;

impl<'writer> FormatFields<'writer> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    /// Writes ` name=` (no space before the first field); false if the
    /// writer has already failed.
    fn name(&mut self, field: &Field) -> bool {
        if self.result.is_err() {
            return false;
        }
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = self
            .writer
            .write_str(separator)
            .and_then(|()| self.writer.write_str(name))
            .and_then(|()| self.writer.write_char('='));
        self.result.is_ok()
    }

    fn message(&mut self, value: fmt::Arguments<'_>) {
        if self.result.is_ok() {
            let separator = if self.first { "" } else { " " };
            self.first = false;
            self.result = self
                .writer
                .write_str(separator)
                .and_then(|()| self.writer.write_fmt(value));
        }
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message(format_args!("{value}"));
        } else if self.name(field) {
            // Quoted as `Debug` quotes it; only text that needs escaping
            // pays for `Debug`.
            let plain = value
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
            self.result = if plain {
                self.writer
                    .write_char('"')
                    .and_then(|()| self.writer.write_str(value))
                    .and_then(|()| self.writer.write_char('"'))
            } else {
                write!(self.writer, "{value:?}")
            };
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.name(field) {
            self.result = write_u64(&mut self.writer, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.name(field) {
            let sign = if value < 0 { "-" } else { "" };
            self.result = self
                .writer
                .write_str(sign)
                .and_then(|()| write_u64(&mut self.writer, value.unsigned_abs()));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "message" {
            self.message(format_args!("{value:?}"));
        } else if self.name(field) {
            self.result = match thousandths(value) {
                Some(thousandths) => write_thousandths(&mut self.writer, thousandths),
                None => write!(self.writer, "{value:?}"),
            };
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.name(field) {
            self.result = self.writer.write_str(if value { "true" } else { "false" });
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message(format_args!("{value:?}"));
        } else if self.name(field) {
            self.result = write!(self.writer, "{value:?}");
        }
    }
}

fn write_u64(writer: &mut Writer<'_>, mut value: u64) -> fmt::Result {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    writer.write_str(std::str::from_utf8(&digits[start..]).map_err(|_| fmt::Error)?)
}

/// `value` as a whole number of thousandths, when it is exactly the
/// double nearest one (durations in milliseconds are microseconds / 1000)
/// and small enough that `Debug` writes it as those digits.
fn thousandths(value: f64) -> Option<u64> {
    let scaled = (value * 1000.0).round();
    // -0.0 passes the range and the comparison, but `Debug` writes "-0.0".
    let whole = value.is_sign_positive() && (0.0..1e12).contains(&scaled);
    (whole && scaled / 1000.0 == value).then_some(scaled as u64)
}

/// What `Debug` writes for thousandths / 1000: the shortest decimal that
/// reads back as the same double, which for such a value is its own
/// digits without trailing zeros, and at least one after the point.
fn write_thousandths(writer: &mut Writer<'_>, thousandths: u64) -> fmt::Result {
    write_u64(writer, thousandths / 1000)?;
    let fraction = thousandths % 1000;
    let digits = [
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ];
    let keep = match (fraction % 100, fraction % 10) {
        (0, _) => 2,
        (_, 0) => 3,
        _ => 4,
    };
    // Only ASCII was written.
    writer.write_str(std::str::from_utf8(&digits[..keep]).map_err(|_| fmt::Error)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::format::DefaultFields;
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// Every kind of field ferryman logs, and text that needs escaping.
    fn events() {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
        tracing::info!(
            target: "ferryman::access",
            kind = "exchange",
            session = 7u64,
            client = %addr,
            method = %http::Method::GET,
            status = 200u16,
            offset = -12i64,
            zero = 0u64,
            max = u64::MAX,
            duration_ms = 1.5f64,
            whole_ms = 2.0f64,
            tiny_ms = 0.007f64,
            odd = 0.1f64 + 0.2f64,
            negative = -3.25f64,
            negative_zero = -0.0f64,
            aborted = false,
            r#type = "t",
        );
        tracing::warn!(
            reason = "a \"quoted\"\tline\\ é",
            n = 3,
            "something {} happened",
            "odd"
        );
        tracing::info!("message only");
        tracing::info!(error = ?std::io::Error::other("boom"), "with debug");
    }

    fn lines<F>(fields: F) -> String
    where
        F: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .without_time()
            .with_ansi(false)
            .fmt_fields(fields)
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, events);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn durations_read_as_debug_writes_them() {
        let cases = (0..3_000_000u64)
            .chain((0..30).map(|shift| (1u64 << shift) * 999))
            .chain([999_999_999_999, 123_456_789_012]);
        for micros in cases {
            let value = micros as f64 / 1000.0;
            assert_eq!(thousandths(value), Some(micros));
            let mut text = String::new();
            write_thousandths(&mut Writer::new(&mut text), micros).unwrap();
            assert_eq!(text, format!("{value:?}"), "{micros} µs");
        }
        for odd in [
            -0.0,
            0.1 + 0.2,
            1e-7,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            1e15,
            2.0004999,
        ] {
            assert_eq!(thousandths(odd), None, "{odd}");
        }
    }

    #[test]
    fn fields_read_exactly_as_the_default_formatter_writes_them() {
        let ours = lines(TextFields);
        assert_eq!(ours, lines(DefaultFields::new()));
        assert!(
            ours.contains("max=18446744073709551615 duration_ms=1.5 whole_ms=2.0 tiny_ms=0.007")
        );
        assert!(ours.contains("offset=-12 zero=0"));
        assert!(ours.contains(r#"something odd happened reason="a \"quoted\"\tline\\ é" n=3"#));
    }
}
