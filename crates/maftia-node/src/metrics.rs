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

/// Cumulative time the replica loop spends in each part of its work, in nanoseconds, labelled
/// `part`: `persistence` (the fsync'd event-log commit and the delivery table write of
/// [`crate::durable::DurableReplica::process_batch`]), `ordering` (the protocol handling the
/// batch's events), `admission` (decoding and verifying client requests before ordering),
/// `execution` (executing delivered requests, reply-share signing excluded), `certification`
/// (BLS reply-share signing) and `checkpoint` (checkpoint snapshots and shares). `maftia bench
/// --layer kv` reads it before and after its window.
pub const TIME_METRIC: &str = "maftia_time_nanoseconds_total";

/// Nanoseconds since the first call in this process (monotonic): the clock the instrumented
/// parts and [`maftia_smr::replica::ReplicationManager::time_signing`] use.
pub fn monotonic_nanos() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let nanos = EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

/// Add the time since `started` (a [`monotonic_nanos`] reading) to `part` of [`TIME_METRIC`].
pub fn add_time(part: &'static str, started: u64) {
    add_nanos(part, monotonic_nanos().saturating_sub(started));
}

/// Add `nanos` to `part` of [`TIME_METRIC`].
pub fn add_nanos(part: &'static str, nanos: u64) {
    metrics::counter!(TIME_METRIC, "part" => part).increment(nanos);
}
