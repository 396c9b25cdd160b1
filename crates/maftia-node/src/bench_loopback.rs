//! `maftia bench --layer loopback`: atomic broadcast alone over loopback — a cluster of real
//! `maftia node` processes (CKPS01, `maftia testnet` configurations with the batch size of the
//! run) ordering opaque requests — and, in the same run, the in-process harness with the same
//! n, batch size and request size, so that the ratio shows what processes, links and the durable
//! log cost.
//!
//! **Load path.** [`SUBMITTERS`] concurrent submitters in this process post requests to the
//! replicas' management endpoints (`POST /submit`, one HTTP/1.1 connection per request), each
//! request at exactly one replica, round robin, keeping at most a window of submitted but
//! undelivered requests. A monitor polls replica 0's `GET /status` every [`POLL`].
//!
//! **Measures** (over the window after the warm-up): *requests/s* = requests delivered at
//! replica 0 per second; *latency* = submission → delivered at replica 0, by rank (the k-th
//! accepted submission against the k-th delivered request: exact when requests are delivered in
//! submission order, a queueing estimate otherwise; resolution [`POLL`]); *CPU* = CPU time of
//! all replica processes per delivered request. At the end every replica must reach replica 0's
//! count with the same digest-chain head (`agreed`).
use crate::local_cluster::{temporary_dir, LocalCluster};
use crate::management::http_request;
use anyhow::{Context, Result};
use maftia_bench::{RunSpec, Workload};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Concurrent submitters.
pub const SUBMITTERS: usize = 64;
/// How often replica 0's status is polled.
pub const POLL: Duration = Duration::from_millis(5);

/// One loopback run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoopbackSpec {
    pub n: usize,
    pub f: usize,
    pub batch_size: usize,
    pub request_size: usize,
    pub warmup_secs: u64,
    pub measure_secs: u64,
}

/// What one loopback run measured, beside the in-process harness.
#[derive(Clone, Debug, Serialize)]
pub struct LoopbackRecord {
    pub spec: LoopbackSpec,
    pub requests_per_sec: f64,
    pub submits_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub latency_samples: usize,
    /// Submissions refused (`503`: queue full or congested).
    pub refused: u64,
    pub cpu_us_per_request: f64,
    pub in_process_requests_per_sec: f64,
    pub in_process_p50_ms: f64,
    /// Loopback requests/s over in-process requests/s.
    pub ratio: f64,
    pub agreed: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Run one loopback configuration and its in-process reference.
pub fn run(spec: &LoopbackSpec) -> Result<LoopbackRecord> {
    let dir = temporary_dir("bench-loopback");
    let measured = (|| {
        let mut cluster = LocalCluster::generate(spec.n, Some(spec.f), &dir)?;
        cluster.edit_configs(|config| {
            config.ordering.batch_size = spec.batch_size;
            config.log = "warn".into();
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let record = runtime.block_on(measure(spec, &mut cluster));
        cluster.stop_all();
        record
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let mut record = measured?;
    let mut reference = RunSpec::new(Workload::Abc, spec.n, spec.batch_size);
    reference.f = spec.f;
    reference.request_size = spec.request_size;
    reference.warmup_rounds = 1;
    reference.measure_rounds = if spec.batch_size >= 1000 { 6 } else { 12 };
    let in_process = maftia_bench::run(&reference).context("the in-process reference run")?;
    record.in_process_requests_per_sec = in_process.requests_per_sec;
    record.in_process_p50_ms = in_process.latency.p50_ms;
    record.ratio = record.requests_per_sec / in_process.requests_per_sec.max(1e-9);
    Ok(record)
}

async fn measure(spec: &LoopbackSpec, cluster: &mut LocalCluster) -> Result<LoopbackRecord> {
    cluster.spawn_all()?;
    cluster.wait_until_ready().await?;
    let n = cluster.n();
    let managements: Vec<_> = (0..n).map(|i| cluster.management(i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let submitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let accepted: Arc<Mutex<Vec<Instant>>> = Arc::default();
    // At most this many submitted and not yet delivered: four batches per replica, at least 1024.
    let window = (4 * n * spec.batch_size).max(1024) as u64;
    let mut tasks = Vec::with_capacity(SUBMITTERS);
    for c in 0..SUBMITTERS {
        let (stop, delivered, submitted, refused, accepted, managements) = (
            stop.clone(),
            delivered.clone(),
            submitted.clone(),
            refused.clone(),
            accepted.clone(),
            managements.clone(),
        );
        let request_size = spec.request_size;
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if submitted.load(Ordering::Relaxed) >= delivered.load(Ordering::Relaxed) + window {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let target = managements[(c + seq as usize) % managements.len()];
                let mut request = format!("bench submitter {c} request {seq} ").into_bytes();
                request.resize(request_size.max(request.len()), b'x');
                seq += 1;
                let started = Instant::now();
                match http_request(target, "POST", "/submit", &request).await {
                    Ok((200, _)) => {
                        let mut accepted = accepted
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        submitted.fetch_add(1, Ordering::Relaxed);
                        accepted.push(started);
                    }
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
        }));
    }
    // Monitor replica 0: (time, delivered requests).
    let mut trace: Vec<(Instant, u64)> = Vec::new();
    let began = Instant::now();
    let window_start = began + Duration::from_secs(spec.warmup_secs);
    let window_end = window_start + Duration::from_secs(spec.measure_secs);
    let mut cpu_start = None;
    while Instant::now() < window_end {
        if cpu_start.is_none() && Instant::now() >= window_start {
            cpu_start = Some(crate::bench_kv::cpu_seconds_of(&cluster.pids()));
        }
        if let Some(s) = cluster.status(0).await {
            delivered.store(s.delivered_requests, Ordering::Relaxed);
            trace.push((Instant::now(), s.delivered_requests));
        }
        tokio::time::sleep(POLL).await;
    }
    let cpu_end = crate::bench_kv::cpu_seconds_of(&cluster.pids());
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let accepted = accepted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let first = trace
        .iter()
        .find(|(when, _)| *when >= window_start)
        .copied()
        .context("replica 0 answered no status in the window")?;
    let last = *trace.last().context("replica 0 answered no status")?;
    let (t0, d0) = first;
    let (t1, d1) = last;
    let seconds = (t1 - t0).as_secs_f64().max(1e-9);
    let submits_in_window = accepted
        .iter()
        .filter(|t| **t >= window_start && **t < window_end)
        .count();
    // Latency by rank: the k-th delivery (first poll showing >= k) against the k-th acceptance.
    let mut latencies = Vec::new();
    let mut poll = 0;
    for k in (d0 + 1)..=d1 {
        while poll < trace.len() && trace[poll].1 < k {
            poll += 1;
        }
        let (Some(&(delivered_at, _)), Some(&submitted_at)) = (
            trace.get(poll),
            usize::try_from(k - 1).ok().and_then(|i| accepted.get(i)),
        ) else {
            break;
        };
        latencies.push(
            delivered_at
                .saturating_duration_since(submitted_at)
                .as_secs_f64()
                * 1e3,
        );
    }
    latencies.sort_by(f64::total_cmp);
    // Agreement: every replica reaches the same delivered sequence.
    let (agreed, _) = cluster.converge(Duration::from_secs(30)).await;
    Ok(LoopbackRecord {
        spec: spec.clone(),
        requests_per_sec: (d1 - d0) as f64 / seconds,
        submits_per_sec: submits_in_window as f64 / spec.measure_secs.max(1) as f64,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        latency_samples: latencies.len(),
        refused: refused.load(Ordering::Relaxed),
        cpu_us_per_request: (cpu_end - cpu_start.unwrap_or(0.0)) * 1e6 / (d1 - d0).max(1) as f64,
        in_process_requests_per_sec: 0.0,
        in_process_p50_ms: 0.0,
        ratio: 0.0,
        agreed,
    })
}

/// The Markdown table of loopback runs.
pub fn table(records: &[LoopbackRecord]) -> String {
    let mut out = String::from(
        "| n | batch | loopback req/s | /submit accepted/s | latency p50 / p99 ms | refused | \
         in-process req/s | in-process p50 ms | ratio | CPU µs/req | agreed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in records {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} / {:.0} | {} | {:.0} | {:.1} | {:.2} | {:.0} | {} |\n",
            r.spec.n,
            r.spec.batch_size,
            r.requests_per_sec,
            r.submits_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.refused,
            r.in_process_requests_per_sec,
            r.in_process_p50_ms,
            r.ratio,
            r.cpu_us_per_request,
            if r.agreed { "yes" } else { "NO" }
        ));
    }
    out
}
