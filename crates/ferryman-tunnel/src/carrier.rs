//! What both ends of a carrier agree on: h2's windows and frame size over
//! the WebSocket byte stream, and the heartbeat each end runs. Only the
//! gateway opens streams (it is h2's client, the agent its server, whoever
//! dialled), so an agent can never open a stream into the gateway's network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Flow control and liveness of carriers, set on each end.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CarrierConfig {
    /// Bytes one stream may have in flight toward this end before the
    /// sender waits: a reader that stalls holds back no more than this, and
    /// no other stream.
    pub stream_window: u32,
    /// Bytes all streams of a carrier may have in flight toward this end:
    /// with `stream_window`, what bounds memory per carrier however many
    /// streams are open.
    pub carrier_window: u32,
    /// A ping goes out this often...
    #[serde(with = "ferryman_http::config::humantime_serde")]
    pub heartbeat_interval: Duration,
    /// ...and a carrier whose pong is this late is dead: its streams are
    /// reset at once.
    #[serde(with = "ferryman_http::config::humantime_serde")]
    pub heartbeat_timeout: Duration,
}

impl Default for CarrierConfig {
    fn default() -> Self {
        Self {
            stream_window: 2 << 20,
            carrier_window: 64 << 20,
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(20),
        }
    }
}

/// h2 frames as large as this: fewer heads per byte, and a small share of
/// the carrier held by one frame.
const MAX_FRAME: u32 = 256 * 1024;

/// Streams one carrier may have open at once.
pub const MAX_STREAMS: u32 = 100_000;

impl CarrierConfig {
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        if self.stream_window < 65_535 || self.stream_window > (1 << 30) {
            return Err(format!(
                "{prefix}stream_window: must be between 65535 and 1073741824 bytes"
            ));
        }
        if self.carrier_window < self.stream_window || self.carrier_window > (1 << 30) {
            return Err(format!(
                "{prefix}carrier_window: must be at least stream_window and at most 1073741824 bytes"
            ));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_timeout.is_zero() {
            return Err(format!(
                "{prefix}heartbeat_interval and heartbeat_timeout must be greater than zero"
            ));
        }
        Ok(())
    }

    pub(crate) fn client(&self) -> h2::client::Builder {
        let mut builder = h2::client::Builder::new();
        builder
            .enable_push(false)
            .initial_window_size(self.stream_window)
            .initial_connection_window_size(self.carrier_window)
            .max_frame_size(MAX_FRAME)
            .max_send_buffer_size(MAX_FRAME as usize)
            .max_concurrent_reset_streams(4096);
        builder
    }

    pub(crate) fn server(&self) -> h2::server::Builder {
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(self.stream_window)
            .initial_connection_window_size(self.carrier_window)
            .max_frame_size(MAX_FRAME)
            .max_send_buffer_size(MAX_FRAME as usize)
            .max_concurrent_streams(MAX_STREAMS)
            .max_concurrent_reset_streams(4096);
        builder
    }
}

/// Pings the other end every interval and cancels `dead` when a pong is
/// late; the last round trip, in microseconds, goes to `rtt_us`.
pub(crate) async fn heartbeat(
    mut pings: h2::PingPong,
    config: CarrierConfig,
    rtt_us: Arc<AtomicU64>,
    dead: CancellationToken,
    peer: String,
) {
    let mut tick = tokio::time::interval(config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = dead.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sent = tokio::time::Instant::now();
        match tokio::time::timeout(config.heartbeat_timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {
                let micros = sent.elapsed().as_micros().min(u64::MAX as u128) as u64;
                rtt_us.store(micros, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "carrier closed under its heartbeat");
                dead.cancel();
                return;
            }
            Err(_) => {
                warn!(%peer, timeout = ?config.heartbeat_timeout, "no heartbeat from the other end; closing the carrier");
                dead.cancel();
                return;
            }
        }
    }
}
