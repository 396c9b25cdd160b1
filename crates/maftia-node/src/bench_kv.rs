//! `maftia bench --layer kv`: the replicated key-value service measured end to end, from the
//! clients' side, on a loopback cluster of real `maftia node` processes.
//!
//! For every `--n` × `--value-size` × `--kv-mode` ([`KvSpec`]) it creates a fresh testnet in a
//! temporary directory ([`crate::testnet::generate`]: real keys, redb on disk, Noise links,
//! CKPS01 ordering, the `[service]` client port), starts the `n` replicas, waits until they are
//! connected, runs `--clients` clients of [`maftia_client::Client`] in this process (every reply
//! a verified threshold certificate: `f + 1` BLS shares combined and checked), and measures a
//! window of `--duration` seconds after `--kv-warmup` seconds:
//! - **closed loop** ([`KvMode::Closed`]): each client keeps one request outstanding and sends
//!   the next as soon as the certified reply arrives; latency is send → certified reply;
//! - **open loop** ([`KvMode::Open`]): requests are scheduled at a fixed total rate `R`
//!   (`--open-loop-rate`, or by default [`OPEN_LOOP_DEFAULT_FRACTION`] of the closed loop's
//!   throughput at the same `n` and value size), spread evenly over the clients (client `c`'s
//!   `k`-th request at `(c + k·C)/R` s); a client sends at the scheduled time or, if it is still
//!   waiting for its previous reply, as soon as that arrives, and latency is measured **from the
//!   scheduled time**, so queueing behind a slow reply counts (no coordinated omission).
//!   Requests still unsent at the end of the window are reported as the backlog.
//!
//! The workload is 50 % `Put` of `value_size`-byte values and 50 % `Get`, over
//! `--kv-keys` keys chosen uniformly (seeded by `--seed`). A request counts if its certified
//! reply arrives inside the window: throughput is their number over the window's length, and
//! their latencies go into an HDR histogram (µs, 3 significant digits).
//!
//! **Where the time goes.** Before and after the window the bench reads every replica's
//! `GET /metrics` ([`crate::metrics::TIME_METRIC`], per part: persistence, ordering, admission,
//! execution, certification, checkpoint) and the CPU time (`utime + stime` in
//! `/proc/PID/stat`) of every replica process and of itself (the clients); it reports each part
//! per completed request, summed over the replicas. The parts are wall time of the replica
//! loop, which is single-threaded, so they add up to at most the loop's time; persistence is
//! mostly waiting for the fsync, not CPU.
//!
//! At the end the replicas get SIGTERM (SIGKILL after 10 s) and the directory is removed, also
//! when the run fails.
use crate::local_cluster::{temporary_dir, LocalCluster};
use crate::metrics::TIME_METRIC;
use crate::testnet;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use hdrhistogram::Histogram;
use maftia_bench::Latency;
use maftia_client::{Client, ClientConfig};
use maftia_smr::kv::{KvRequest, MAX_VALUE_SIZE};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

/// The parts of [`TIME_METRIC`], in the order tables show them.
pub const PARTS: [&str; 6] = [
    "persistence",
    "ordering",
    "admission",
    "execution",
    "certification",
    "checkpoint",
];
/// Without `--open-loop-rate`, the open loop offers this fraction of the closed loop's
/// throughput measured just before at the same `n` and value size.
pub const OPEN_LOOP_DEFAULT_FRACTION: f64 = 0.7;
/// A client gives up on one request after this long (counted as an error).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(8);
/// Latencies above this (µs) are clamped into the histogram's top bucket.
const MAX_LATENCY_US: u64 = 600_000_000;

/// How the clients load the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvMode {
    /// One request outstanding per client, the next sent when the reply arrives.
    Closed,
    /// A fixed request rate spread over the clients; latency from the scheduled send time.
    Open,
}

impl KvMode {
    pub fn name(self) -> &'static str {
        match self {
            KvMode::Closed => "closed",
            KvMode::Open => "open",
        }
    }
}

/// One end-to-end configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KvSpec {
    pub n: usize,
    pub f: usize,
    /// Bytes of each value written.
    pub value_size: usize,
    pub clients: usize,
    pub mode: KvMode,
    /// Open loop: requests per second over all clients (`None`: derived from the closed loop,
    /// see [`resolve_rate`]). Unused in the closed loop.
    pub rate: Option<f64>,
    pub warmup_secs: u64,
    pub duration_secs: u64,
    /// Distinct keys the workload uses.
    pub keys: usize,
    pub seed: u64,
}

/// What one configuration measured.
#[derive(Clone, Debug, Serialize)]
pub struct KvRecord {
    /// `maftia kv closed` or `maftia kv open`.
    pub system: String,
    /// The configuration, the open loop's rate resolved.
    pub spec: KvSpec,
    /// The command that runs this configuration again.
    pub reproduce: String,
    /// Certified replies received inside the window.
    pub completed: u64,
    /// Requests that failed (timeout, refusal, unverifiable) inside the window.
    pub errors: u64,
    /// Open loop: requests scheduled inside the window but not yet sent at its end.
    pub backlog: u64,
    pub window_seconds: f64,
    pub requests_per_sec: f64,
    pub latency: Latency,
    /// Per part of [`PARTS`]: replica-loop µs per completed request, summed over the replicas.
    pub time_us_per_request: BTreeMap<String, f64>,
    /// User + system CPU of all replica processes per completed request.
    pub replica_cpu_us_per_request: f64,
    /// User + system CPU of the bench process (the clients) per completed request.
    pub client_cpu_us_per_request: f64,
    /// Whether every replica exited with success within 10 s of SIGTERM.
    pub clean_stop: bool,
    /// The 1-minute load average when the run started, if readable.
    pub load_average: Option<f64>,
}

impl KvRecord {
    /// Each part's share of the parts' total (0 when nothing was measured).
    pub fn shares(&self) -> BTreeMap<String, f64> {
        let total: f64 = self.time_us_per_request.values().sum();
        self.time_us_per_request
            .iter()
            .map(|(part, us)| {
                let share = if total > 0.0 { us / total } else { 0.0 };
                (part.clone(), share)
            })
            .collect()
    }
}

/// A configuration that failed.
#[derive(Clone, Debug, Serialize)]
pub struct KvFailure {
    pub system: String,
    pub spec: KvSpec,
    pub reproduce: String,
    pub error: String,
}

/// `maftia kv closed` / `maftia kv open`.
pub fn system(spec: &KvSpec) -> String {
    format!("maftia kv {}", spec.mode.name())
}

/// The configurations of `--n` × `value_sizes` × `modes` (closed before open at each
/// (n, value size), so that an open loop without a rate can take it from the closed one).
#[allow(clippy::too_many_arguments)]
pub fn specs(
    ns: &[usize],
    f: Option<usize>,
    value_sizes: &[usize],
    modes: &[KvMode],
    clients: usize,
    rate: Option<f64>,
    warmup_secs: u64,
    duration_secs: u64,
    keys: usize,
    seed: u64,
) -> Vec<KvSpec> {
    let mut modes = modes.to_vec();
    modes.sort();
    modes.dedup();
    let mut out = Vec::new();
    for &n in ns {
        for &value_size in value_sizes {
            for &mode in &modes {
                out.push(KvSpec {
                    n,
                    f: f.unwrap_or(n.saturating_sub(1) / 3),
                    value_size,
                    clients,
                    mode,
                    rate: if mode == KvMode::Open { rate } else { None },
                    warmup_secs,
                    duration_secs,
                    keys,
                    seed,
                });
            }
        }
    }
    out
}

/// Why `spec` cannot run, if it cannot.
pub fn check(spec: &KvSpec) -> Result<(), String> {
    let (n, f) = (spec.n, spec.f);
    if n == 0 || n <= 3 * f {
        return Err(format!(
            "kv: n = {n} with f = {f}: the asynchronous configuration needs n > 3f"
        ));
    }
    if n > usize::from(u16::MAX) {
        return Err(format!("kv: n = {n} does not fit a node id"));
    }
    if spec.clients == 0 || spec.clients > testnet::TESTNET_CLIENTS {
        return Err(format!(
            "kv: --clients {} must be between 1 and {} (the client keys a testnet has)",
            spec.clients,
            testnet::TESTNET_CLIENTS
        ));
    }
    if spec.value_size == 0 || spec.value_size > MAX_VALUE_SIZE {
        return Err(format!(
            "kv: --value-size {} must be between 1 and the store's limit of {MAX_VALUE_SIZE} bytes",
            spec.value_size
        ));
    }
    if spec.duration_secs == 0 {
        return Err("kv: --duration 0: measure at least 1 s".into());
    }
    if spec.keys == 0 {
        return Err("kv: --kv-keys 0: the workload needs at least one key".into());
    }
    if let Some(rate) = spec.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("kv: --open-loop-rate {rate} must be positive"));
        }
    }
    Ok(())
}

/// The open loop's rate: the spec's own, or [`OPEN_LOOP_DEFAULT_FRACTION`] of the last closed
/// loop in `done` with the same n, f, value size and clients.
pub fn resolve_rate(spec: &KvSpec, done: &[KvRecord]) -> Result<KvSpec, String> {
    if spec.mode != KvMode::Open || spec.rate.is_some() {
        return Ok(spec.clone());
    }
    let closed = done.iter().rev().find(|r| {
        let s = &r.spec;
        s.mode == KvMode::Closed
            && (s.n, s.f, s.value_size, s.clients)
                == (spec.n, spec.f, spec.value_size, spec.clients)
    });
    match closed {
        Some(record) if record.requests_per_sec > 0.0 => Ok(KvSpec {
            rate: Some((record.requests_per_sec * OPEN_LOOP_DEFAULT_FRACTION).max(1.0)),
            ..spec.clone()
        }),
        _ => Err(
            "no closed-loop throughput at this n and value size to derive the open-loop rate \
             from; give --open-loop-rate"
                .into(),
        ),
    }
}

/// The `maftia bench` command line that runs `spec` alone.
pub fn reproduce_command(spec: &KvSpec) -> String {
    let mut command = format!(
        "maftia bench --layer kv --n {} --f {} --value-size {} --clients {} --kv-mode {} \
         --kv-warmup {} --duration {} --kv-keys {} --seed {}",
        spec.n,
        spec.f,
        spec.value_size,
        spec.clients,
        spec.mode.name(),
        spec.warmup_secs,
        spec.duration_secs,
        spec.keys,
        spec.seed
    );
    if let (KvMode::Open, Some(rate)) = (spec.mode, spec.rate) {
        let _ = write!(command, " --open-loop-rate {rate:.0}");
    }
    command
}

/// A short description for progress lines.
pub fn describe(spec: &KvSpec) -> String {
    let mut text = format!(
        "n={} f={} value={}B clients={} {}",
        spec.n,
        spec.f,
        spec.value_size,
        spec.clients,
        spec.mode.name()
    );
    if let (KvMode::Open, Some(rate)) = (spec.mode, spec.rate) {
        let _ = write!(text, " at {rate:.0} req/s");
    }
    text
}

/// Run one configuration (a blocking call: it builds its own runtime). The open loop needs its
/// rate resolved ([`resolve_rate`]).
pub fn run(spec: &KvSpec) -> Result<KvRecord> {
    check(spec).map_err(anyhow::Error::msg)?;
    if spec.mode == KvMode::Open && spec.rate.is_none() {
        bail!("the open loop needs a rate");
    }
    let dir = temporary_dir("bench-kv");
    let generated = LocalCluster::generate(spec.n, Some(spec.f), &dir);
    let mut cluster = match generated {
        Ok(cluster) => cluster,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let measured = runtime.block_on(measure(spec, &mut cluster));
    let clean_stop = cluster.stop_all();
    let _ = std::fs::remove_dir_all(&dir);
    let mut record = measured?;
    record.clean_stop = clean_stop;
    Ok(record)
}

/// Every replica's [`TIME_METRIC`] (summed over the replicas, ns per part) and the CPU
/// seconds of the replica processes.
async fn sample(cluster: &LocalCluster) -> Result<Sample> {
    let mut parts = BTreeMap::new();
    for i in 0..cluster.n() {
        let addr = cluster.management(i);
        let (code, body) = tokio::time::timeout(
            Duration::from_secs(5),
            crate::management::http_request(addr, "GET", "/metrics", b""),
        )
        .await
        .map_err(|_| anyhow::anyhow!("replica {i}: /metrics timed out"))?
        .with_context(|| format!("replica {i}: /metrics"))?;
        if code != 200 {
            bail!("replica {i}: /metrics answered {code}");
        }
        for (part, nanos) in parse_time_metric(&String::from_utf8_lossy(&body)) {
            *parts.entry(part).or_insert(0.0) += nanos;
        }
    }
    let mut replica_cpu = 0.0;
    for pid in cluster.pids() {
        replica_cpu += process_cpu_seconds(&pid.to_string())
            .with_context(|| format!("cannot read the CPU time of replica process {pid}"))?;
    }
    Ok(Sample {
        parts,
        replica_cpu,
        client_cpu: process_cpu_seconds("self").unwrap_or(0.0),
    })
}

/// Counters read at one end of the window.
struct Sample {
    parts: BTreeMap<String, f64>,
    replica_cpu: f64,
    client_cpu: f64,
}

/// `(part, value)` of every [`TIME_METRIC`] sample in a Prometheus text exposition.
pub fn parse_time_metric(text: &str) -> BTreeMap<String, f64> {
    let mut parts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line
            .strip_prefix(TIME_METRIC)
            .and_then(|r| r.strip_prefix('{'))
        else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let part = labels.split(',').find_map(|label| {
            label
                .trim()
                .strip_prefix("part=\"")
                .and_then(|v| v.strip_suffix('"'))
        });
        let value = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let (Some(part), Some(value)) = (part, value) {
            *parts.entry(part.to_string()).or_insert(0.0) += value;
        }
    }
    parts
}

/// User + system CPU seconds of the processes `pids` so far (those that cannot be read count 0).
pub fn cpu_seconds_of(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| process_cpu_seconds(&pid.to_string()))
        .sum()
}

/// User + system CPU seconds of `/proc/PID/stat` (`pid` may be `self`).
fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses: state is
    // field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Clock ticks per second of `/proc` CPU times (`getconf CLK_TCK`, else Linux's usual 100).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What one client observed inside the window.
struct ClientTally {
    histogram: Histogram<u64>,
    completed: u64,
    errors: u64,
    backlog: u64,
}

/// The window: `[open, close)` on the clock `start` began.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    open: Instant,
    close: Instant,
}

impl Window {
    fn contains(&self, at: Instant) -> bool {
        at >= self.open && at < self.close
    }
}

async fn measure(spec: &KvSpec, cluster: &mut LocalCluster) -> Result<KvRecord> {
    let load_average = load_average();
    cluster.spawn_all()?;
    cluster.wait_until_ready().await?;
    let mut clients = Vec::with_capacity(spec.clients);
    for c in 0..spec.clients {
        let mut config = ClientConfig::from_files(
            &testnet::cluster_path(cluster.dir()),
            &testnet::client_key_path(cluster.dir(), c),
        )?;
        config.timeout = CLIENT_TIMEOUT;
        clients.push(Client::connect(config).await?);
    }
    let start = Instant::now();
    let window = Window {
        start,
        open: start + Duration::from_secs(spec.warmup_secs),
        close: start + Duration::from_secs(spec.warmup_secs + spec.duration_secs),
    };
    let mut tasks = Vec::with_capacity(spec.clients);
    for (c, client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(client_loop(c, client, spec.clone(), window)));
    }
    tokio::time::sleep_until(window.open.into()).await;
    let before = sample(cluster).await?;
    let opened = Instant::now();
    tokio::time::sleep_until(window.close.into()).await;
    let after = sample(cluster).await?;
    let window_seconds = opened.elapsed().as_secs_f64();
    let mut histogram = new_histogram()?;
    let (mut completed, mut errors, mut backlog) = (0, 0, 0);
    for task in tasks {
        let tally = task.await.context("a client task failed")??;
        histogram
            .add(&tally.histogram)
            .map_err(|e| anyhow::anyhow!("cannot merge latency histograms: {e}"))?;
        completed += tally.completed;
        errors += tally.errors;
        backlog += tally.backlog;
    }
    let per_request = |seconds: f64| {
        if completed == 0 {
            0.0
        } else {
            seconds * 1e6 / completed as f64
        }
    };
    let time_us_per_request = PARTS
        .iter()
        .map(|part| {
            let nanos = after.parts.get(*part).copied().unwrap_or(0.0)
                - before.parts.get(*part).copied().unwrap_or(0.0);
            (part.to_string(), per_request(nanos.max(0.0) / 1e9))
        })
        .collect();
    let latency = if histogram.is_empty() {
        Latency::default()
    } else {
        Latency {
            samples: histogram.len(),
            p50_ms: histogram.value_at_quantile(0.50) as f64 / 1e3,
            p90_ms: histogram.value_at_quantile(0.90) as f64 / 1e3,
            p99_ms: histogram.value_at_quantile(0.99) as f64 / 1e3,
            max_ms: histogram.max() as f64 / 1e3,
        }
    };
    Ok(KvRecord {
        system: system(spec),
        spec: spec.clone(),
        reproduce: reproduce_command(spec),
        completed,
        errors,
        backlog,
        window_seconds,
        requests_per_sec: completed as f64 / window_seconds.max(1e-9),
        latency,
        time_us_per_request,
        replica_cpu_us_per_request: per_request(after.replica_cpu - before.replica_cpu),
        client_cpu_us_per_request: per_request(after.client_cpu - before.client_cpu),
        clean_stop: false,
        load_average,
    })
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| anyhow::anyhow!("cannot create a latency histogram: {e}"))
}

/// The workload's next request: a `Put` of a `value_size`-byte value or a `Get`, half each.
pub fn workload_request(
    rng: &mut impl Rng,
    spec: &KvSpec,
    client: usize,
    counter: u64,
) -> KvRequest {
    let key = format!("key-{}", rng.gen_range(0..spec.keys)).into_bytes();
    if rng.gen_bool(0.5) {
        let mut value = format!("c{client}-{counter}-").into_bytes();
        value.resize(spec.value_size, b'.');
        KvRequest::Put { key, value }
    } else {
        KvRequest::Get { key }
    }
}

/// Open loop: when client `c`'s `k`-th request is due.
fn scheduled(window: &Window, spec: &KvSpec, rate: f64, c: usize, k: u64) -> Instant {
    let slot = c as f64 + k as f64 * spec.clients as f64;
    window.start + Duration::from_secs_f64(slot / rate)
}

async fn client_loop(
    c: usize,
    mut client: Client,
    spec: KvSpec,
    window: Window,
) -> Result<ClientTally> {
    let mut tally = ClientTally {
        histogram: new_histogram()?,
        completed: 0,
        errors: 0,
        backlog: 0,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        spec.seed.wrapping_mul(1_000).wrapping_add(c as u64),
    );
    let rate = match spec.mode {
        KvMode::Closed => None,
        KvMode::Open => spec.rate,
    };
    let mut k = 0u64;
    loop {
        let now = Instant::now();
        let due = match rate {
            None => now,
            Some(rate) => scheduled(&window, &spec, rate, c, k),
        };
        if due >= window.close || now >= window.close {
            break;
        }
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        }
        let request = workload_request(&mut rng, &spec, c, k);
        k += 1;
        let result = tokio::select! {
            result = client.kv(&request) => result,
            () = tokio::time::sleep_until(window.close.into()) => break,
        };
        let done = Instant::now();
        if !window.contains(done) {
            continue;
        }
        match result {
            Ok(_) => {
                tally.completed += 1;
                let micros = u64::try_from(done.duration_since(due).as_micros())
                    .unwrap_or(u64::MAX)
                    .clamp(1, MAX_LATENCY_US);
                let _ = tally.histogram.record(micros);
            }
            Err(_) => tally.errors += 1,
        }
    }
    if let Some(rate) = rate {
        // Requests due inside the window that were never sent (`k` is the next one).
        let mut late = k;
        while scheduled(&window, &spec, rate, c, late) < window.close {
            if scheduled(&window, &spec, rate, c, late) >= window.open {
                tally.backlog += 1;
            }
            late += 1;
        }
    }
    Ok(tally)
}

/// The header of [`table`].
pub const TABLE_HEADER: &str = "| system | n | f | value B | clients | offered req/s | requests/s | latency ms p50 / p90 / p99 / max | errors / backlog | replica-loop µs/req: persistence / ordering / admission / execution / certification / checkpoint | replica CPU µs/req | client CPU µs/req |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

/// The key-value rows as a markdown table (runs, then failures).
pub fn table(records: &[KvRecord], failures: &[KvFailure]) -> String {
    let mut out = format!("{TABLE_HEADER}\n");
    for r in records {
        let s = &r.spec;
        let l = &r.latency;
        let parts: Vec<String> = PARTS
            .iter()
            .map(|p| {
                format!(
                    "{:.0}",
                    r.time_us_per_request.get(*p).copied().unwrap_or(0.0)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.1} / {:.1} / {:.1} / {:.1} | {} / {} | {} | {:.0} | {:.0} |",
            r.system,
            s.n,
            s.f,
            s.value_size,
            s.clients,
            s.rate.map_or_else(|| "-".to_string(), |rate| format!("{rate:.0}")),
            r.requests_per_sec,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms,
            r.errors,
            r.backlog,
            parts.join(" / "),
            r.replica_cpu_us_per_request,
            r.client_cpu_us_per_request,
        );
    }
    for failure in failures {
        let s = &failure.spec;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | FAILED: {} | | | | | | |",
            failure.system,
            s.n,
            s.f,
            s.value_size,
            s.clients,
            failure.error.replace('|', "/")
        );
    }
    out
}

/// The columns of [`csv`].
pub fn csv_header() -> String {
    let mut header = String::from(
        "system,n,f,value_size,clients,mode,offered_per_sec,warmup_secs,duration_secs,keys,seed,\
         completed,errors,backlog,window_seconds,requests_per_sec,p50_ms,p90_ms,p99_ms,max_ms",
    );
    for part in PARTS {
        let _ = write!(header, ",{part}_us_per_request");
    }
    header
        .push_str(",replica_cpu_us_per_request,client_cpu_us_per_request,clean_stop,load_average");
    header
}

/// One CSV line per key-value run.
pub fn csv(records: &[KvRecord]) -> String {
    let mut out = csv_header() + "\n";
    for r in records {
        let s = &r.spec;
        let l = &r.latency;
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3}",
            r.system,
            s.n,
            s.f,
            s.value_size,
            s.clients,
            s.mode.name(),
            s.rate.map_or_else(String::new, |rate| format!("{rate:.1}")),
            s.warmup_secs,
            s.duration_secs,
            s.keys,
            s.seed,
            r.completed,
            r.errors,
            r.backlog,
            r.window_seconds,
            r.requests_per_sec,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms,
        );
        for part in PARTS {
            let _ = write!(
                out,
                ",{:.1}",
                r.time_us_per_request.get(part).copied().unwrap_or(0.0)
            );
        }
        let _ = writeln!(
            out,
            ",{:.1},{:.1},{},{}",
            r.replica_cpu_us_per_request,
            r.client_cpu_us_per_request,
            r.clean_stop,
            r.load_average
                .map_or_else(String::new, |a| format!("{a:.2}"))
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: KvMode) -> KvSpec {
        specs(&[4], None, &[128], &[mode], 8, None, 3, 15, 256, 1)
            .pop()
            .unwrap()
    }

    #[test]
    fn the_time_metric_is_parsed_per_part_and_other_lines_are_ignored() {
        let text = "# TYPE maftia_time_nanoseconds_total counter\n\
            maftia_time_nanoseconds_total{part=\"ordering\"} 1500\n\
            maftia_time_nanoseconds_total{part=\"persistence\"} 2e3\n\
            maftia_time_nanoseconds_totalx{part=\"ordering\"} 7\n\
            maftia_delivered_requests_total 99\n\
            maftia_time_nanoseconds_total{peer=\"1\",part=\"execution\"} 10\n\
            maftia_time_nanoseconds_total{part=\"broken\"} notanumber\n";
        let parts = parse_time_metric(text);
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_eq!(parts["ordering"], 1500.0);
        assert_eq!(parts["persistence"], 2000.0);
        assert_eq!(parts["execution"], 10.0);
    }

    #[test]
    fn specs_put_closed_before_open_and_checks_name_the_problem() {
        let all = specs(
            &[4, 7],
            None,
            &[128, 1024],
            &[KvMode::Open, KvMode::Closed, KvMode::Open],
            8,
            Some(500.0),
            3,
            15,
            256,
            1,
        );
        assert_eq!(all.len(), 8);
        assert_eq!(
            all.iter()
                .map(|s| (s.n, s.f, s.value_size, s.mode))
                .collect::<Vec<_>>()[..2],
            [(4, 1, 128, KvMode::Closed), (4, 1, 128, KvMode::Open)]
        );
        assert!(all
            .iter()
            .all(|s| (s.mode == KvMode::Open) == s.rate.is_some()));
        assert_eq!(all[7].f, 2);
        let good = spec(KvMode::Closed);
        check(&good).unwrap();
        let bad = |s: KvSpec| check(&s).unwrap_err();
        assert!(bad(KvSpec {
            f: 1,
            n: 3,
            ..good.clone()
        })
        .contains("n > 3f"));
        assert!(bad(KvSpec {
            clients: 9,
            ..good.clone()
        })
        .contains("--clients 9"));
        assert!(bad(KvSpec {
            clients: 0,
            ..good.clone()
        })
        .contains("--clients 0"));
        assert!(bad(KvSpec {
            value_size: MAX_VALUE_SIZE + 1,
            ..good.clone()
        })
        .contains("limit"));
        assert!(bad(KvSpec {
            duration_secs: 0,
            ..good.clone()
        })
        .contains("--duration 0"));
        assert!(bad(KvSpec {
            keys: 0,
            ..good.clone()
        })
        .contains("--kv-keys 0"));
        assert!(bad(KvSpec {
            rate: Some(0.0),
            ..good
        })
        .contains("positive"));
    }

    fn record(spec: KvSpec, rps: f64) -> KvRecord {
        KvRecord {
            system: system(&spec),
            reproduce: reproduce_command(&spec),
            spec,
            completed: 10,
            errors: 0,
            backlog: 0,
            window_seconds: 1.0,
            requests_per_sec: rps,
            latency: Latency::default(),
            time_us_per_request: [("ordering".to_string(), 30.0), ("persistence".into(), 10.0)]
                .into_iter()
                .collect(),
            replica_cpu_us_per_request: 0.0,
            client_cpu_us_per_request: 0.0,
            clean_stop: true,
            load_average: None,
        }
    }

    #[test]
    fn the_open_loop_rate_comes_from_the_matching_closed_loop_unless_given() {
        let open = spec(KvMode::Open);
        assert!(resolve_rate(&open, &[])
            .unwrap_err()
            .contains("--open-loop-rate"));
        let other_size = record(
            KvSpec {
                value_size: 1024,
                ..spec(KvMode::Closed)
            },
            900.0,
        );
        assert!(resolve_rate(&open, std::slice::from_ref(&other_size)).is_err());
        let closed = record(spec(KvMode::Closed), 1000.0);
        let resolved = resolve_rate(&open, &[closed, other_size]).unwrap();
        assert_eq!(resolved.rate, Some(1000.0 * OPEN_LOOP_DEFAULT_FRACTION));
        let given = KvSpec {
            rate: Some(123.0),
            ..open
        };
        assert_eq!(resolve_rate(&given, &[]).unwrap(), given);
        // The closed loop needs no rate.
        let closed = spec(KvMode::Closed);
        assert_eq!(resolve_rate(&closed, &[]).unwrap(), closed);
    }

    #[test]
    fn shares_sum_to_one_and_the_table_and_csv_have_a_line_per_run() {
        let r = record(spec(KvMode::Closed), 1000.0);
        let shares = r.shares();
        assert!((shares.values().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(shares["ordering"], 0.75);
        let failure = KvFailure {
            system: "maftia kv open".into(),
            spec: spec(KvMode::Open),
            reproduce: String::new(),
            error: "a | b".into(),
        };
        let text = table(std::slice::from_ref(&r), &[failure]);
        assert!(text.starts_with(TABLE_HEADER));
        assert!(
            text.contains("| maftia kv closed | 4 | 1 | 128 | 8 | - | 1000 |"),
            "{text}"
        );
        assert!(text.contains("FAILED: a / b"));
        let csv_text = csv(&[r]);
        let lines: Vec<&str> = csv_text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0].split(',').count(),
            lines[1].split(',').count(),
            "{csv_text}"
        );
        assert!(lines[1].starts_with("maftia kv closed,4,1,128,8,closed,,3,15,256,1,10,"));
    }

    #[test]
    fn open_loop_schedules_spread_the_rate_over_the_clients() {
        let start = Instant::now();
        let window = Window {
            start,
            open: start,
            close: start + Duration::from_secs(1),
        };
        let s = spec(KvMode::Open);
        // 800 requests/s over 8 clients: client c at c/800 s, then every 10 ms.
        let at = |c, k| scheduled(&window, &s, 800.0, c, k).duration_since(start);
        assert_eq!(at(0, 0), Duration::ZERO);
        assert_eq!(at(3, 0), Duration::from_secs_f64(3.0 / 800.0));
        assert_eq!(at(3, 2), Duration::from_secs_f64(19.0 / 800.0));
        let mut all: Vec<Duration> = (0..8)
            .flat_map(|c| (0..100).map(move |k| at(c, k)))
            .collect();
        all.sort();
        assert!(all.windows(2).all(|w| w[1] > w[0]));
        assert!(all.iter().all(|d| *d < Duration::from_secs(1)));
    }

    #[test]
    fn the_workload_is_half_puts_of_the_value_size_over_the_keys() {
        let s = KvSpec {
            keys: 4,
            value_size: 100,
            ..spec(KvMode::Closed)
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut puts = 0;
        for counter in 0..1000 {
            match workload_request(&mut rng, &s, 3, counter) {
                KvRequest::Put { key, value } => {
                    puts += 1;
                    assert_eq!(value.len(), 100);
                    assert!(key.starts_with(b"key-") && key.len() == 5);
                }
                KvRequest::Get { key } => assert!(key.len() == 5 && key[4] < b'4'),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!((400..600).contains(&puts), "{puts}");
    }

    #[test]
    fn the_reproduce_command_names_every_parameter() {
        let open = KvSpec {
            rate: Some(700.4),
            ..spec(KvMode::Open)
        };
        let command = reproduce_command(&open);
        for part in [
            "--layer kv",
            "--n 4",
            "--f 1",
            "--value-size 128",
            "--clients 8",
            "--kv-mode open",
            "--kv-warmup 3",
            "--duration 15",
            "--kv-keys 256",
            "--seed 1",
            "--open-loop-rate 700",
        ] {
            assert!(command.contains(part), "{command} lacks {part}");
        }
        assert!(!reproduce_command(&spec(KvMode::Closed)).contains("rate"));
    }
}
