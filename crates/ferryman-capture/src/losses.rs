//! Tells the log when capture loses records or bodies. Dropping them keeps
//! the traffic at full speed; nobody should find out only from exchanges
//! missing in the dashboard.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::Inner;

/// How often the counters are looked at; the first loss is told at once.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// After a warning, losses are added up for this long before the next one.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Runs until the capture is dropped.
pub(crate) async fn watch(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut told = (0, 0);
    let mut last_warning: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let now = (
            inner.stats.records_failed.load(Ordering::Relaxed),
            inner.stats.bodies_failed.load(Ordering::Relaxed),
        );
        drop(inner);
        let (records, bodies) = (now.0 - told.0, now.1 - told.1);
        if records + bodies == 0 || last_warning.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            continue;
        }
        tracing::warn!(
            records,
            bodies,
            "capture lost exchanges: the store is failing or slower than the traffic"
        );
        told = now;
        last_warning = Some(Instant::now());
    }
}
