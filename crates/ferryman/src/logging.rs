//! Logs to stderr without ever making a request wait or wake a thread.
//!
//! A log line is appended to an in-memory batch under a short lock; a flusher
//! thread writes the batch out every few milliseconds. The forwarding path
//! never does I/O for logging, and never wakes the flusher (one futex wake
//! per line measurably slowed proxying). If stderr cannot keep up and the
//! batch reaches its bound, lines are dropped and the next flush says how
//! many.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// How often the batch is written out; also the most a line waits.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// The most the batch holds before lines are dropped.
const MAX_BATCH: usize = 8 << 20;

#[derive(Default)]
struct Batch {
    bytes: Mutex<Vec<u8>>,
    dropped: AtomicU64,
}

impl Batch {
    fn push(&self, line: &[u8]) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        if bytes.len() + line.len() > MAX_BATCH {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            bytes.extend_from_slice(line);
        }
    }

    /// Writes out what is queued; the lock is held only to swap buffers.
    fn flush(&self, spare: &mut Vec<u8>) {
        {
            let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *bytes, spare);
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let mut stderr = std::io::stderr().lock();
        // Nowhere to report a failing stderr; the lines are lost either way.
        let _ = stderr.write_all(spare);
        if dropped > 0 {
            let _ = writeln!(
                stderr,
                "ferryman: {dropped} log lines dropped, stderr was too slow"
            );
        }
        let _ = stderr.flush();
        spare.clear();
    }
}

/// Hands each formatted event to the batch in one piece: tracing-subscriber
/// formats an event into a buffer of its own and writes it with one
/// `write_all`, so a line is never split between threads.
#[derive(Clone)]
struct BatchWriter(Arc<Batch>);

struct Line<'a>(&'a Batch);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(&self.0)
    }
}

/// Flushes what is queued when dropped: keep it until the process exits.
pub struct FlushOnDrop(Arc<Batch>);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.0.flush(&mut Vec::new());
    }
}

/// `RUST_LOG` wins over the default of `info`. Events also go to `feed`,
/// the admin listener's `logs` topic.
pub fn init(format: LogFormat, feed: &ferryman_admin::LogFeed) -> FlushOnDrop {
    let batch = Arc::new(Batch::default());
    let flusher = batch.clone();
    let started = std::thread::Builder::new()
        .name("ferryman-log".into())
        .spawn(move || {
            let mut spare = Vec::new();
            loop {
                std::thread::sleep(FLUSH_EVERY);
                flusher.flush(&mut spare);
            }
        });
    if let Err(e) = started {
        eprintln!("ferryman: no log flusher thread ({e}); logs appear only at exit");
    }
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_timer(crate::log_time::Utc)
        .with_writer(BatchWriter(batch.clone()));
    let lines = match format {
        LogFormat::Json => lines.json().boxed(),
        LogFormat::Text => lines.fmt_fields(crate::log_fields::TextFields).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(feed.layer())
        .init();
    FlushOnDrop(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_batch_drops_and_counts_instead_of_growing() {
        let batch = Batch::default();
        let line = vec![b'x'; 1 << 20];
        for _ in 0..10 {
            batch.push(&line);
        }
        assert_eq!(batch.bytes.lock().unwrap().len(), 8 << 20);
        assert_eq!(batch.dropped.load(Ordering::Relaxed), 2);
    }

    /// The writer pushes each `write` to the batch as it comes, trusting
    /// tracing-subscriber to hand over a whole event at once; threads
    /// logging long lines at the same time must never interleave.
    #[test]
    fn lines_from_many_threads_stay_whole() {
        let batch = Arc::new(Batch::default());
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(BatchWriter(batch.clone()))
            .finish();
        let dispatch = tracing::Dispatch::new(subscriber);
        let long = "x".repeat(4096);
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let (dispatch, long) = (dispatch.clone(), &long);
                scope.spawn(move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        for n in 0..200 {
                            tracing::info!(thread, n, long = %long, "end");
                        }
                    })
                });
            }
        });
        let bytes = batch.bytes.lock().unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 800);
        let whole = format!(" long={long}");
        assert!(lines
            .iter()
            .all(|l| l.contains("INFO") && l.ends_with(&whole)));
    }
}
