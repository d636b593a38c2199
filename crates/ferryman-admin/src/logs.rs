//! Log events for the `logs` topic: a tracing layer that hands each event
//! to a broadcast channel, and does nothing at all while nobody watches.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Events a watcher may fall behind by before it misses some.
const QUEUE: usize = 4096;

/// One log event as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub time_ms: u64,
    pub level: &'static str,
    pub target: String,
    pub message: String,
    /// The event's other fields, `key=value` separated by spaces.
    pub fields: String,
    #[serde(skip)]
    pub(crate) severity: Severity,
}

/// Error is the most severe: a subscriber asking for `warn` gets error and warn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Severity {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Severity {
    pub(crate) const ALL: [Severity; 5] = [
        Severity::Trace,
        Severity::Debug,
        Severity::Info,
        Severity::Warn,
        Severity::Error,
    ];

    pub(crate) fn parse(name: &str) -> Option<Severity> {
        Severity::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Severity::Trace => "trace",
            Severity::Debug => "debug",
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }

    fn of(level: &Level) -> Severity {
        match *level {
            Level::TRACE => Severity::Trace,
            Level::DEBUG => Severity::Debug,
            Level::INFO => Severity::Info,
            Level::WARN => Severity::Warn,
            _ => Severity::Error,
        }
    }
}

/// Where log events go for the admin listener; clone it into the layer.
#[derive(Clone)]
pub struct LogFeed {
    events: broadcast::Sender<Arc<LogLine>>,
    /// Whether anyone may be watching. Asking the channel takes its lock,
    /// once per log line on every worker; this flag is one atomic load.
    watched: Arc<AtomicBool>,
}

impl Default for LogFeed {
    fn default() -> Self {
        Self {
            events: broadcast::channel(QUEUE).0,
            watched: Arc::default(),
        }
    }
}

impl LogFeed {
    /// The layer to add to the tracing subscriber.
    pub fn layer(&self) -> LogLayer {
        LogLayer { feed: self.clone() }
    }

    pub(crate) fn watch(&self) -> broadcast::Receiver<Arc<LogLine>> {
        let watch = self.events.subscribe();
        self.watched.store(true, Ordering::Release);
        watch
    }
}

pub struct LogLayer {
    feed: LogFeed,
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if !self.feed.watched.load(Ordering::Acquire) {
            return;
        }
        let metadata = event.metadata();
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        let severity = Severity::of(metadata.level());
        let line = LogLine {
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            level: severity.name(),
            target: metadata.target().to_owned(),
            message: visitor.message,
            fields: visitor.fields,
            severity,
        };
        if self.feed.events.send(Arc::new(line)).is_err() {
            // The last watcher left. One that subscribes meanwhile sets the
            // flag after subscribing, or is seen by the check below.
            self.feed.watched.store(false, Ordering::Release);
            if self.feed.events.receiver_count() > 0 {
                self.feed.watched.store(true, Ordering::Release);
            }
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.separate();
            let _ = write!(self.fields, "{}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.separate();
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }
}

impl Fields {
    fn separate(&mut self) {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_reach_a_watcher_and_cost_nothing_without_one() {
        let feed = LogFeed::default();
        let subscriber = tracing_subscriber::registry().with(feed.layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(unseen = 1, "nobody watches");
            let mut watch = feed.watch();
            tracing::warn!(host = "example.test", n = 3, "seen");
            let line = watch.try_recv().unwrap();
            assert_eq!((line.level, line.message.as_str()), ("warn", "seen"));
            assert_eq!(line.fields, "host=example.test n=3");
            assert!(
                watch.try_recv().is_err(),
                "the unwatched event was never queued"
            );
            drop(watch);
            tracing::info!("the last watcher has gone");
            assert!(
                !feed.watched.load(Ordering::Acquire),
                "back to one atomic load per event"
            );
            let mut again = feed.watch();
            tracing::info!("watched again");
            assert_eq!(again.try_recv().unwrap().message, "watched again");
        });
    }
}
