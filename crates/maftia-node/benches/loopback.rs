//! Loopback benchmark: a real `maftia node` cluster (n processes on 127.0.0.1, CKPS01 mode,
//! `maftia testnet` configurations) ordering 250-byte requests, compared in the same run with
//! the in-process harness (`maftia_bench::run`, same n, batch size and request size).
//!
//! ```text
//! cargo bench -p maftia-node --bench loopback            # n = 4, 7; batch 100, 1000
//! cargo bench -p maftia-node --bench loopback -- quick   # n = 4, batch 100 only
//! ```
//!
//! **Load path.** Client threads in this process submit requests through the replicas'
//! management endpoints (`POST /submit`, one HTTP/1.1 connection per request, as `curl` would),
//! each request at exactly one replica, round robin, keeping at most a window of submitted but
//! undelivered requests. A monitor polls replica 0's `GET /status` every 5 ms.
//!
//! **Measures** (over a window after a warm-up): *requests/s* = requests delivered at replica 0
//! per second; *latency* = submit → delivered at replica 0, by rank: the k-th accepted
//! submission is matched with the k-th delivered request (exact when requests are delivered in
//! submission order, a queueing estimate otherwise; resolution 5 ms); *submit capacity* = the
//! rate of accepted `/submit` calls. The ratio column is loopback requests/s over in-process
//! requests/s.
#[path = "../tests/support/mod.rs"]
mod support;

use maftia_bench::{RunSpec, Workload};
use maftia_node::management::StatusSnapshot;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{field, http};

const REQUEST_SIZE: usize = 250;
/// Client threads (override with `MAFTIA_LOOPBACK_CLIENTS`).
const CLIENTS: usize = 64;
const POLL: Duration = Duration::from_millis(5);

/// CPU seconds of all replica processes so far.
fn cluster_cpu(cluster: &Cluster) -> f64 {
    let ticks = clock_ticks();
    cluster
        .children
        .iter()
        .map(|c| cpu_seconds(c.id(), ticks))
        .sum()
}

struct Cluster {
    _dir: tempfile::TempDir,
    children: Vec<Child>,
    managements: Vec<SocketAddr>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn status(addr: SocketAddr) -> Option<StatusSnapshot> {
    match http(addr, "GET", "/status", b"") {
        Ok((200, body)) => serde_json::from_slice(&body).ok(),
        _ => None,
    }
}

fn start_cluster(n: usize, batch: usize) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_maftia"))
        .args(["testnet", "--n", &n.to_string(), "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut managements = Vec::new();
    let mut children = Vec::new();
    for i in 0..n {
        let path = dir.path().join(format!("node-{i}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("batch_size = 256") && text.contains("log = \"info\""));
        let text = text
            .replace("batch_size = 256", &format!("batch_size = {batch}"))
            .replace("log = \"info\"", "log = \"warn\"");
        std::fs::write(&path, &text).unwrap();
        managements.push(field(&text, "management").parse().unwrap());
        children.push(spawn(&path, &dir.path().join(format!("node-{i}.log"))));
    }
    let cluster = Cluster {
        _dir: dir,
        children,
        managements,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster
        .managements
        .iter()
        .all(|m| status(*m).is_some_and(|s| s.peers_connected == n - 1))
    {
        assert!(Instant::now() < deadline, "the cluster did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster
}

fn spawn(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_maftia"))
        .arg("node")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

struct Loopback {
    /// CPU time of all replica processes in the window per delivered request.
    cpu_us_per_request: f64,
    requests_per_sec: f64,
    submits_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    samples: usize,
    rejected_503: u64,
    /// Share of the clients' time spent waiting for the window (not in `/submit`).
    window_blocked: f64,
    agreed: bool,
}

/// CPU time (user + system) of a process so far, in seconds.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces): state is field 3, utime 14,
    // stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field(11) + field(12)) / ticks_per_second
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn run_loopback(
    n: usize,
    batch: usize,
    clients: usize,
    warmup: Duration,
    measure: Duration,
) -> Loopback {
    let cluster = start_cluster(n, batch);
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let submitted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    // Accepted submissions: (start of the POST, accepted), in acceptance order.
    let accepted: Arc<Mutex<Vec<Instant>>> = Arc::default();
    // At most this many submitted and not yet delivered: four batches per replica, at least
    // 1024 (the replicas' `max_pending` is 10 000 each).
    let window = (4 * n * batch).max(1024) as u64;
    // Milliseconds client threads spent waiting for the window (as opposed to in `/submit`).
    let window_waits = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, delivered, submitted, rejected, accepted, window_waits) = (
                stop.clone(),
                delivered.clone(),
                submitted.clone(),
                rejected.clone(),
                accepted.clone(),
                window_waits.clone(),
            );
            let managements = cluster.managements.clone();
            std::thread::spawn(move || {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if submitted.load(Ordering::Relaxed)
                        >= delivered.load(Ordering::Relaxed) + window
                    {
                        window_waits.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    let target = managements[(c + seq as usize) % managements.len()];
                    let mut request = format!("bench client {c} request {seq} ").into_bytes();
                    request.resize(REQUEST_SIZE, b'x');
                    seq += 1;
                    let started = Instant::now();
                    match http(target, "POST", "/submit", &request) {
                        Ok((200, _)) => {
                            let mut accepted = accepted.lock().unwrap();
                            submitted.fetch_add(1, Ordering::Relaxed);
                            accepted.push(started);
                        }
                        _ => {
                            rejected.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                }
            })
        })
        .collect();
    // Monitor replica 0: (time, delivered requests).
    let mut trace: Vec<(Instant, u64)> = Vec::new();
    let began = Instant::now();
    let window_start = began + warmup;
    let window_end = window_start + measure;
    let mut cpu_start = None;
    while Instant::now() < window_end {
        if cpu_start.is_none() && Instant::now() >= window_start {
            cpu_start = Some(cluster_cpu(&cluster));
        }
        if let Some(s) = status(cluster.managements[0]) {
            delivered.store(s.delivered_requests, Ordering::Relaxed);
            trace.push((Instant::now(), s.delivered_requests));
        }
        std::thread::sleep(POLL);
    }
    let cpu_end = cluster_cpu(&cluster);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let at = |t: Instant| -> (Instant, u64) {
        *trace
            .iter()
            .find(|(when, _)| *when >= t)
            .unwrap_or(trace.last().unwrap())
    };
    let (t0, d0) = at(window_start);
    let (t1, d1) = *trace.last().unwrap();
    let seconds = (t1 - t0).as_secs_f64();
    let requests_per_sec = (d1 - d0) as f64 / seconds;
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
        let (Some(&(delivered_at, _)), Some(&submitted_at)) =
            (trace.get(poll), accepted.get(k as usize - 1))
        else {
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
    // Agreement: every replica reaches replica 0's count with the same head.
    let deadline = Instant::now() + Duration::from_secs(30);
    let agreed = loop {
        let statuses: Vec<Option<StatusSnapshot>> =
            cluster.managements.iter().map(|m| status(*m)).collect();
        let heads: Vec<Option<(u64, String)>> = statuses
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|s| (s.delivered_requests, s.chain_head.clone()))
            })
            .collect();
        if heads.iter().all(|h| h.is_some()) && heads.windows(2).all(|w| w[0] == w[1]) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    Loopback {
        cpu_us_per_request: (cpu_end - cpu_start.unwrap_or(0.0)) * 1e6 / (d1 - d0).max(1) as f64,
        requests_per_sec,
        submits_per_sec: submits_in_window as f64 / measure.as_secs_f64(),
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        samples: latencies.len(),
        rejected_503: rejected.load(Ordering::Relaxed),
        window_blocked: window_waits.load(Ordering::Relaxed) as f64
            / 1e3
            / (clients as f64 * (began.elapsed().as_secs_f64())),
        agreed,
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let clients = std::env::var("MAFTIA_LOOPBACK_CLIENTS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(CLIENTS);
    let configs: &[(usize, usize)] = if quick {
        &[(4, 100)]
    } else {
        &[(4, 100), (4, 1000), (7, 100), (7, 1000)]
    };
    let (warmup, measure) = if quick {
        (Duration::from_secs(2), Duration::from_secs(5))
    } else {
        (Duration::from_secs(3), Duration::from_secs(10))
    };
    println!(
        "loopback benchmark: {clients} client threads, {REQUEST_SIZE}-byte requests, warm-up \
         {warmup:?}, window {measure:?}; load average at start: {}",
        load_average()
    );
    println!(
        "| n | batch | loopback req/s | /submit accepted/s | clients waiting for the window | latency p50 / p99 ms | 503s | \
         in-process req/s | in-process p50 / p99 ms | ratio (req/s) | CPU µs/req, loopback / in-process | load (1/5/15 min) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &(n, batch) in configs {
        let loopback = run_loopback(n, batch, clients, warmup, measure);
        assert!(
            loopback.agreed,
            "the replicas disagree (n = {n}, batch {batch})"
        );
        let mut spec = RunSpec::new(Workload::Abc, n, batch);
        spec.warmup_rounds = 1;
        spec.measure_rounds = if batch >= 1000 { 6 } else { 12 };
        let inproc = maftia_bench::run(&spec).unwrap();
        println!(
            "| {n} | {batch} | {:.0} | {:.0} | {:.0} % | {:.0} / {:.0} ({} samples) | {} | {:.0} | {:.0} / {:.0} | {:.2} | {:.0} / {:.0} | {} |",
            loopback.requests_per_sec,
            loopback.submits_per_sec,
            loopback.window_blocked * 100.0,
            loopback.p50_ms,
            loopback.p99_ms,
            loopback.samples,
            loopback.rejected_503,
            inproc.requests_per_sec,
            inproc.latency.p50_ms,
            inproc.latency.p99_ms,
            loopback.requests_per_sec / inproc.requests_per_sec,
            loopback.cpu_us_per_request,
            inproc.cpu_seconds_per_request * 1e6,
            load_average()
        );
    }
}
