//! Prometheus metrics: the `metrics` facade with the Prometheus recorder, rendered as text by
//! the management endpoint's `GET /metrics` (no HTTP listener of the exporter's own).
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Install the process-wide recorder and return the handle that renders it. If a recorder is
/// already installed (a second replica in one process, as in tests), a detached recorder is
/// returned: its text is then empty of the replica's metrics, which go to the first one.
pub fn install() -> PrometheusHandle {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::debug!("a metrics recorder is already installed");
    }
    handle
}
