//! Metrics of the reference implementation (seed `001_*` phase 4), recorded through the
//! `metrics` facade so an embedding service can route them to any backend, and exposed here
//! in Prometheus text format for the harness to read.
//!
//! Every series carries an `impl` label (the strategy or component), so several instances in
//! one process stay apart.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Publishes by outcome (`status`: notified, stored, stored_not_notified, failed).
pub const PUBLISHED: &str = "hybrid_chaos_published_total";
/// Pub/Sub messages received by a subscriber.
pub const RECEIVED: &str = "hybrid_chaos_received_total";
/// Responses obtained by waiters (`via`: immediate, after_subscribe, notified, polled, resync).
pub const OBTAINED: &str = "hybrid_chaos_obtained_total";
/// Duration of a publish (storage write + notification), in seconds.
pub const PUBLISH_DURATION: &str = "hybrid_chaos_publish_duration_seconds";
/// Channels currently subscribed.
pub const ACTIVE_SUBSCRIPTIONS: &str = "hybrid_chaos_active_subscriptions";
/// Subscriber reconnections (`reason`).
pub const RECONNECTIONS: &str = "hybrid_chaos_reconnections_total";
/// Fan-out consumer queue fill.
pub const BUFFER_SIZE: &str = "hybrid_chaos_buffer_size";
/// Fan-out messages dropped on a full queue.
pub const BUFFER_DROPPED: &str = "hybrid_chaos_buffer_dropped_total";
/// Publisher circuit breaker: 0 closed, 1 half-open, 2 open.
pub const CIRCUIT_STATE: &str = "hybrid_chaos_circuit_state";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs a Prometheus recorder as the process's global `metrics` recorder, once. Returns
/// `None` when another recorder was installed first (then metrics go there instead).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|_| handle)
        })
        .as_ref()
}

/// The current exposition text, or an empty string without a Prometheus recorder.
pub fn render() -> String {
    prometheus().map(PrometheusHandle::render).unwrap_or_default()
}
