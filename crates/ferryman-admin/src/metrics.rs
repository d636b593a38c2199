//! `/metrics`: the counters the traffic path records through the `metrics`
//! facade, plus figures read at scrape time from the connection table and
//! capture (so the hot path does not count them twice).

use std::sync::atomic::Ordering;

use ferryman_capture::Capture;
use ferryman_proxy::Sessions;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: loopback microseconds to slow origins.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The process-wide recorder; install it once, before traffic starts.
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    pub fn install() -> Result<Self, String> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .map_err(|e| format!("metrics: {e}"))?
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder)
            .map_err(|e| format!("metrics: a recorder is already installed: {e}"))?;
        describe();
        Ok(Self { handle })
    }

    /// Histograms keep samples until drained; drain them even when nobody
    /// scrapes, so memory stays flat.
    pub(crate) fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    pub(crate) fn render(
        &self,
        sessions: &Sessions,
        capture: Option<&Capture>,
        agents: Option<&AgentGauge>,
    ) -> String {
        if let Some(agents) = agents {
            agents.set();
        }
        let traffic = sessions.traffic();
        metrics::counter!("ferryman_bytes_total", "direction" => "up").absolute(traffic.bytes_up);
        metrics::counter!("ferryman_bytes_total", "direction" => "down")
            .absolute(traffic.bytes_down);
        for (kind, count) in sessions.active_by_kind() {
            metrics::gauge!("ferryman_sessions_active", "kind" => kind).set(count as f64);
        }
        if let Some(capture) = capture {
            let stats = capture.stats();
            for (name, result, counter) in [
                (
                    "ferryman_capture_bodies_total",
                    "stored",
                    &stats.bodies_stored,
                ),
                (
                    "ferryman_capture_bodies_total",
                    "dropped",
                    &stats.bodies_failed,
                ),
                (
                    "ferryman_capture_records_total",
                    "stored",
                    &stats.records_stored,
                ),
                (
                    "ferryman_capture_records_total",
                    "dropped",
                    &stats.records_failed,
                ),
            ] {
                metrics::counter!(name, "result" => result)
                    .absolute(counter.load(Ordering::Relaxed));
            }
            metrics::gauge!("ferryman_capture_queued_bytes").set(capture.queued_bytes() as f64);
        }
        self.handle.render()
    }
}

/// `ferryman_tunnel_agents` by group, read from the registry at scrape
/// time; a group seen once is reported (as 0) after its last agent left.
pub(crate) struct AgentGauge {
    registry: std::sync::Arc<ferryman_tunnel::Registry>,
    seen: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl AgentGauge {
    pub(crate) fn new(registry: std::sync::Arc<ferryman_tunnel::Registry>) -> Self {
        Self {
            registry,
            seen: Default::default(),
        }
    }

    fn set(&self) {
        let groups = self.registry.groups();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.extend(groups.keys().cloned());
        for group in seen.iter() {
            let count = groups.get(group).copied().unwrap_or(0);
            metrics::gauge!("ferryman_tunnel_agents", "group" => group.clone()).set(count as f64);
        }
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "ferryman_requests_total",
        "Exchanges answered, by inbound and status class"
    );
    describe_counter!(
        "ferryman_bytes_total",
        Unit::Bytes,
        "Bytes through client sockets, by direction"
    );
    describe_gauge!("ferryman_sessions_active", "Open sessions, by kind");
    describe_histogram!(
        "ferryman_upstream_connect_seconds",
        Unit::Seconds,
        "Time to open an upstream connection (TCP, and TLS where used)"
    );
    describe_histogram!(
        "ferryman_upstream_ttfb_seconds",
        Unit::Seconds,
        "From the request sent upstream to the response head"
    );
    describe_counter!(
        "ferryman_upstream_pool_total",
        "Upstream connections wanted: reused from the pool (hit) or opened (miss)"
    );
    describe_counter!(
        "ferryman_capture_bodies_total",
        "Captured bodies, stored or dropped"
    );
    describe_counter!(
        "ferryman_capture_records_total",
        "Exchange records, stored or dropped"
    );
    describe_gauge!(
        "ferryman_capture_queued_bytes",
        Unit::Bytes,
        "Bodies and records waiting for the capture store"
    );
    describe_counter!(
        "ferryman_leaf_cache_total",
        "Leaf certificates wanted: from the cache (hit) or minted (miss)"
    );
    describe_counter!(
        "ferryman_tls_handshake_failures_total",
        "TLS handshakes that failed, with the client or with the upstream"
    );
    describe_gauge!(
        "ferryman_worker_connections",
        "Client connections each worker thread serves"
    );
    describe_counter!(
        "ferryman_admin_subscribers_dropped_total",
        "Live-view subscribers dropped for not keeping up"
    );
    describe_gauge!(
        "ferryman_tunnel_agents",
        "Tunnel agents connected, by group"
    );
    describe_counter!(
        "ferryman_tunnel_streams_total",
        "Streams asked of agents, by group (or agent:id) and result: opened, or why not"
    );
    describe_counter!(
        "ferryman_tunnel_carriers_total",
        "Agents' carrier connections, accepted or refused"
    );
    describe_counter!(
        "ferryman_tunnel_bytes_total",
        Unit::Bytes,
        "Bytes through agents' streams, by group and direction (in: from the agent)"
    );
}
