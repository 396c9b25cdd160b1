//! `maftia bench`: runs the in-process benchmark harness ([`maftia_bench`]) over a matrix of
//! layers × n × batch sizes, prints a table, and writes the results so they can be reproduced
//! and plotted.
//!
//! For every combination of `--layer`, `--n` and `--batch` it builds a [`RunSpec`] (with `--f`,
//! default ⌊(n − 1)/3⌋, `--request-size`, `--warmup-rounds`, `--rounds`, `--threads` and
//! `--seed`), checks every spec before running any (so a bad matrix fails at once with a clear
//! [`BenchCliError::InvalidSpec`] and writes nothing), runs them one after the other with a
//! progress line per run on stderr, then
//! - prints a markdown table (throughput, latency p50/p90/p99/max, CPU µs per request, bytes and
//!   messages per request and node) on stdout;
//! - writes `DIR/results.json` ([`BenchResults`]: the parameters, and per run the system, the
//!   full [`RunSpec`] inside its [`RunReport`] and the one command that reproduces it),
//!   `DIR/results.csv` (one line per run) and two SVG charts, `DIR/throughput_latency.svg`
//!   (p50 latency against throughput, one line per system and n across batch sizes) and
//!   `DIR/throughput_vs_n.svg` (throughput against n, one line per system and batch size).
//!
//! With `--compare hbbft` (cargo feature `compare-hbbft`, which builds `maftia-compare` and
//! `hbbft` 0.1.1) every (n, batch) also runs HoneyBadgerBFT with encryption off and on through
//! the same harness in the same process (`maftia_compare::compare`); the table gains those
//! rows and one ratio line per (n, batch), and `results.json` the ratios. The comparison's own
//! maftia row stands for the `abc` layer (and its SC-ABC row for `scabc` when that layer is
//! asked), so those layers are not run twice. Built without the feature, `--compare hbbft` is
//! refused before anything runs with the command that builds it.
//!
//! `--layer kv` is different: it runs the replicated key-value service end to end on a loopback
//! cluster of real replica processes, closed and open loop, for every `--n` × `--value-size`
//! (see [`crate::bench_kv`]); its rows go to the `kv` section of `results.json`, to `kv.csv`
//! and to a second table on stdout.
//!
//! `--layer crypto` times every cryptographic operation the protocols use on its own, per `--n`
//! (see [`crate::bench_crypto`]): a third table on stdout, `crypto.csv`, and the `crypto` section
//! of `results.json`.
//!
//! Charts are drawn with `plotters` (SVG backend and line/point series only, no fonts or
//! bitmaps: three small crates), not by hand.
use crate::bench_kv::{self, KvFailure, KvMode, KvRecord, KvSpec};
use crate::bench_loopback::{LoopbackRecord, LoopbackSpec};
use clap::{Args, ValueEnum};
use maftia_bench::{RunReport, RunSpec, Workload};
use maftia_broadcast::abc::AbcParams;
use maftia_core::codec::MAX_MESSAGE_SIZE;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;
use thiserror::Error;

/// Every workload `--layer` can name, in the order they run: the one list to extend when the
/// harness gains a workload.
pub const LAYERS: &[Workload] = &[
    Workload::Abc,
    Workload::Scabc,
    Workload::HtAbc,
    Workload::HtScabc,
];

/// ABC refuses proposals, and the high-throughput mode batches, above half the message size
/// limit (each travels with a certificate and framing); [`check_spec`] applies the same bound
/// before running.
const PROPOSAL_LIMIT: usize = MAX_MESSAGE_SIZE / 2;

/// The command that builds `maftia bench --compare hbbft`.
pub const COMPARE_BUILD_HINT: &str =
    "cargo run --release --features compare-hbbft -- bench --compare hbbft";

/// What `--layer` names: a workload of the in-process harness, or the key-value service end
/// to end on a loopback cluster ([`crate::bench_kv`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Harness(Workload),
    Kv,
    /// Every cryptographic operation on its own ([`crate::bench_crypto`]).
    Crypto,
    /// Atomic broadcast alone over loopback, real processes ([`crate::bench_loopback`]).
    Loopback,
}

impl Layer {
    /// The harness workload, if this is one.
    pub fn workload(self) -> Option<Workload> {
        match self {
            Layer::Harness(workload) => Some(workload),
            Layer::Kv | Layer::Crypto | Layer::Loopback => None,
        }
    }
}

/// A harness layer serializes as its workload did before `kv` existed; `kv` as `"Kv"`.
impl Serialize for Layer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Layer::Harness(workload) => workload.serialize(serializer),
            Layer::Kv => serializer.serialize_str("Kv"),
            Layer::Crypto => serializer.serialize_str("Crypto"),
            Layer::Loopback => serializer.serialize_str("Loopback"),
        }
    }
}

/// A layer by name: `kv`, a workload's [`Workload::name`] (`abc`, `scabc`, ...) or that name
/// without its `abc` suffix (`sc`, `ht` for `htabc`).
pub fn parse_layer(name: &str) -> Result<Layer, String> {
    if name == "kv" {
        return Ok(Layer::Kv);
    }
    if name == "crypto" {
        return Ok(Layer::Crypto);
    }
    if name == "loopback" {
        return Ok(Layer::Loopback);
    }
    LAYERS
        .iter()
        .copied()
        .find(|w| {
            w.name() == name
                || w.name()
                    .strip_suffix("abc")
                    .is_some_and(|short| !short.is_empty() && short == name)
        })
        .map(Layer::Harness)
        .ok_or_else(|| format!("unknown layer `{name}`; available: {}", layer_names()))
}

/// The names `--layer` accepts, comma-separated.
pub fn layer_names() -> String {
    LAYERS
        .iter()
        .map(Workload::name)
        .chain(["kv", "crypto", "loopback"])
        .collect::<Vec<_>>()
        .join(", ")
}

/// A peer system `--compare` runs beside maftia.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// HoneyBadgerBFT (hbbft 0.1.1), threshold encryption off and on.
    Hbbft,
}

/// The arguments of `maftia bench`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct BenchArgs {
    /// Layers to run, comma-separated: workloads of the in-process harness (abc, scabc, ...; an
    /// unknown name lists the available ones), `kv`: the key-value service end to end on a
    /// loopback cluster of real replica processes, or `crypto`: each cryptographic operation.
    #[arg(long = "layer", value_delimiter = ',', default_value = "abc", value_parser = parse_layer)]
    pub layers: Vec<Layer>,
    /// Group sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub n: Vec<usize>,
    /// Tolerated intrusions for every n (default: the largest, ⌊(n − 1)/3⌋ per n).
    #[arg(long)]
    pub f: Option<usize>,
    /// Requests per batch, comma-separated.
    #[arg(long = "batch", value_delimiter = ',', default_value = "100")]
    pub batches: Vec<usize>,
    /// Bytes per request (plaintext bytes for scabc); at least 8 (the request id).
    #[arg(long, default_value_t = 250)]
    pub request_size: usize,
    /// Rounds completed before the measurement window opens.
    #[arg(long, default_value_t = 2)]
    pub warmup_rounds: u64,
    /// Rounds measured (at least 1).
    #[arg(long, default_value_t = 10)]
    pub rounds: u64,
    /// Threads to spread the nodes over (1: every node on one core, deterministic order).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seeds keys, requests and the nodes' randomness.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory for results.json, results.csv and the SVG charts (created if missing).
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Also run a peer system with the same specs and print the ratios (needs the
    /// `compare-hbbft` cargo feature).
    #[arg(long)]
    pub compare: Option<Peer>,
    /// kv: bytes per value written, comma-separated.
    #[arg(long = "value-size", value_delimiter = ',', default_value = "128")]
    pub value_sizes: Vec<usize>,
    /// kv: concurrent clients, each with its own key (at most 8).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// kv and loopback: seconds measured per configuration.
    #[arg(long, default_value_t = 15)]
    pub duration: u64,
    /// kv and loopback: seconds of load before the measured window.
    #[arg(long, default_value_t = 3)]
    pub kv_warmup: u64,
    /// kv: load modes, comma-separated (closed: one outstanding request per client; open: a
    /// fixed rate, latency from the scheduled send time).
    #[arg(long = "kv-mode", value_delimiter = ',', default_value = "closed,open")]
    pub kv_modes: Vec<KvMode>,
    /// kv: the open loop's total rate, requests/s (default: 70 % of the closed loop's
    /// throughput at the same n and value size).
    #[arg(long)]
    pub open_loop_rate: Option<f64>,
    /// kv: distinct keys the workload uses.
    #[arg(long, default_value_t = 256)]
    pub kv_keys: usize,
}

#[derive(Debug, Error)]
pub enum BenchCliError {
    #[error("invalid benchmark: {0}")]
    InvalidSpec(String),
    #[error(
        "`--compare hbbft` needs the `compare-hbbft` feature, which this binary was built \
         without; build and run it with: {COMPARE_BUILD_HINT}"
    )]
    CompareNotBuilt,
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the results as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot draw a chart: {0}")]
    Chart(String),
    #[error("{failed} of {total} runs failed (see the table and results.json)")]
    RunsFailed { failed: usize, total: usize },
}

/// What `maftia bench` runs, every spec checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Harness runs, in order.
    pub runs: Vec<RunSpec>,
    /// Comparisons with the peer: the `abc` spec of every (n, batch).
    pub comparisons: Vec<RunSpec>,
    /// Whether the comparisons include maftia's SC-ABC row.
    pub compare_scabc: bool,
    /// Key-value configurations (`--layer kv`), in order.
    pub kv: Vec<KvSpec>,
    /// Loopback configurations (`--layer loopback`), in order.
    pub loopback: Vec<LoopbackSpec>,
}

impl Plan {
    /// Progress steps: one per run, comparison and key-value configuration.
    pub fn steps(&self) -> usize {
        self.runs.len() + self.comparisons.len() + self.kv.len() + self.loopback.len()
    }
}

/// The specs of `args` (layers × n × batch), each checked with [`check_spec`].
pub fn plan(args: &BenchArgs) -> Result<Plan, BenchCliError> {
    let invalid = |s: String| Err(BenchCliError::InvalidSpec(s));
    if args.layers.is_empty() || args.n.is_empty() || args.batches.is_empty() {
        return invalid("give at least one --layer, --n and --batch".into());
    }
    let spec = |workload: Workload, n: usize, batch_size: usize| RunSpec {
        n,
        f: args.f.unwrap_or(n.saturating_sub(1) / 3),
        batch_size,
        request_size: args.request_size,
        workload,
        warmup_rounds: args.warmup_rounds,
        measure_rounds: args.rounds,
        seed: args.seed,
        threads: args.threads,
        pending_target: 0,
    };
    let mut layers: Vec<Workload> = Vec::new();
    for layer in args.layers.iter().filter_map(|l| l.workload()) {
        if !layers.contains(&layer) {
            layers.push(layer);
        }
    }
    let compared =
        |w: &Workload| args.compare.is_some() && matches!(w, Workload::Abc | Workload::Scabc);
    let mut runs = Vec::new();
    for &workload in layers.iter().filter(|w| !compared(w)) {
        for &n in &args.n {
            for &batch in &args.batches {
                runs.push(spec(workload, n, batch));
            }
        }
    }
    let mut comparisons = Vec::new();
    if let Some(peer) = args.compare {
        for &n in &args.n {
            for &batch in &args.batches {
                let abc = spec(Workload::Abc, n, batch);
                check_peer_spec(peer, &abc)?;
                comparisons.push(abc);
            }
        }
    }
    let compare_scabc = args.compare.is_some() && layers.contains(&Workload::Scabc);
    for spec in runs.iter().chain(&comparisons) {
        check_spec(spec)?;
    }
    if compare_scabc {
        for abc in &comparisons {
            check_spec(&RunSpec {
                workload: Workload::Scabc,
                ..abc.clone()
            })?;
        }
    }
    let kv = if args.layers.contains(&Layer::Kv) {
        if args.value_sizes.is_empty() || args.kv_modes.is_empty() {
            return invalid("kv: give at least one --value-size and --kv-mode".into());
        }
        bench_kv::specs(
            &args.n,
            args.f,
            &args.value_sizes,
            &args.kv_modes,
            args.clients,
            args.open_loop_rate,
            args.kv_warmup,
            args.duration,
            args.kv_keys,
            args.seed,
        )
    } else {
        Vec::new()
    };
    for spec in &kv {
        bench_kv::check(spec).map_err(BenchCliError::InvalidSpec)?;
    }
    let mut loopback = Vec::new();
    if args.layers.contains(&Layer::Loopback) {
        for &n in &args.n {
            for &batch_size in &args.batches {
                let spec = LoopbackSpec {
                    n,
                    f: args.f.unwrap_or(n.saturating_sub(1) / 3),
                    batch_size,
                    request_size: args.request_size,
                    warmup_secs: args.kv_warmup,
                    measure_secs: args.duration,
                };
                check_spec(&RunSpec {
                    workload: Workload::Abc,
                    ..spec_for(&spec)
                })?;
                loopback.push(spec);
            }
        }
    }
    Ok(Plan {
        runs,
        comparisons,
        compare_scabc,
        kv,
        loopback,
    })
}

/// The harness spec of a loopback run's in-process reference.
fn spec_for(spec: &LoopbackSpec) -> RunSpec {
    let mut run = RunSpec::new(Workload::Abc, spec.n, spec.batch_size);
    run.f = spec.f;
    run.request_size = spec.request_size;
    run
}

/// The harness's own checks ([`maftia_bench::run`] repeats them) with the reasons spelled out,
/// and the message size limit: what one message carries must fit half a message — a round's
/// proposal of n batches of `batch_size` requests in CKPS01 mode, one lane batch in the
/// high-throughput mode. The size is computed with the harness's ABC parameters from the request
/// size as given, which is exact for `abc` and `htabc` and a lower bound for workloads that wrap
/// requests (an SC-ABC request is a larger ciphertext); a run that still exceeds the limit fails
/// at setup with the protocol's own error.
pub fn check_spec(spec: &RunSpec) -> Result<(), BenchCliError> {
    let invalid = |s: String| Err(BenchCliError::InvalidSpec(s));
    let (n, f) = (spec.n, spec.f);
    if n == 0 {
        return invalid("n must be at least 1".into());
    }
    if n <= f.saturating_mul(3) {
        return invalid(format!(
            "n = {n} with f = {f}: the asynchronous configuration needs n > 3f (n = {n} \
             tolerates at most f = {})",
            (n - 1) / 3
        ));
    }
    if n > usize::from(u16::MAX) {
        return invalid(format!(
            "n = {n} does not fit a node id (at most {})",
            u16::MAX
        ));
    }
    if spec.batch_size == 0 {
        return invalid("batch size 0: a batch holds at least 1 request".into());
    }
    if spec.request_size < 8 {
        return invalid(format!(
            "request size {} B is too small: every request starts with its 8-byte id",
            spec.request_size
        ));
    }
    if spec.measure_rounds == 0 {
        return invalid("--rounds 0: measure at least 1 round".into());
    }
    if spec.threads == 0 {
        return invalid("--threads 0: run on at least 1 thread".into());
    }
    // Batches per message: the high-throughput mode sends each lane batch alone.
    let (batches, what) = if spec.workload.high_throughput() {
        (1, "a lane batch")
    } else {
        (n, "a proposal")
    };
    let proposal = |batch: usize| proposal_size(batches, batch, spec.request_size);
    if proposal(spec.batch_size) > PROPOSAL_LIMIT {
        let mut fits = 0;
        let (mut low, mut high) = (1usize, spec.batch_size);
        while low <= high {
            let mid = low + (high - low) / 2;
            if proposal(mid) <= PROPOSAL_LIMIT {
                fits = mid;
                low = mid + 1;
            } else {
                high = mid - 1;
            }
        }
        let hint = if fits == 0 {
            "no batch fits: use smaller requests".to_string()
        } else {
            format!("at most {fits} requests per batch fit at this n and request size")
        };
        return invalid(format!(
            "n = {n}, batch {} × {} B requests: {what} can reach {} bytes, above the limit \
             of {PROPOSAL_LIMIT} bytes (half the {MAX_MESSAGE_SIZE}-byte message limit); {hint}",
            spec.batch_size,
            spec.request_size,
            proposal(spec.batch_size)
        ));
    }
    Ok(())
}

/// The largest encoding of `batches` batches of `batch` requests of `request_size` bytes, as
/// the harness configures ABC (`max_batch_bytes = batch × request_size`); `usize::MAX` on
/// overflow.
fn proposal_size(batches: usize, batch: usize, request_size: usize) -> usize {
    AbcParams {
        batch_size: batch,
        max_batch_bytes: batch.saturating_mul(request_size),
        max_request_size: request_size,
        ..AbcParams::default()
    }
    .max_value_size(batches)
    .unwrap_or(usize::MAX)
}

fn check_peer_spec(peer: Peer, spec: &RunSpec) -> Result<(), BenchCliError> {
    match peer {
        Peer::Hbbft => {
            let hbbft_f = spec.n.saturating_sub(1) / 3;
            if spec.f != hbbft_f {
                return Err(BenchCliError::InvalidSpec(format!(
                    "--compare hbbft at n = {}: hbbft 0.1.1 always tolerates f = ⌊(n − 1)/3⌋ = \
                     {hbbft_f}, so the comparison needs that f, not {}",
                    spec.n, spec.f
                )));
            }
        }
    }
    Ok(())
}

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    /// `maftia abc`, `maftia scabc`, `hbbft`, `hbbft+enc`, ...
    pub system: String,
    /// The command that runs this configuration again.
    pub reproduce: String,
    /// The measurements; `report.spec` is the full spec of the run.
    pub report: RunReport,
}

/// A run (or comparison) that failed.
#[derive(Clone, Debug, Serialize)]
pub struct RunFailure {
    pub system: String,
    pub spec: RunSpec,
    pub reproduce: String,
    pub error: String,
}

/// The ratios of one comparison with a peer.
#[derive(Clone, Debug, Serialize)]
pub struct ComparisonRecord {
    pub peer: Peer,
    pub n: usize,
    pub batch_size: usize,
    /// The ratio line as printed.
    pub summary: String,
    /// `maftia_compare::Ratios`, as JSON.
    pub ratios: serde_json::Value,
    pub reproduce: String,
}

/// Everything `results.json` holds.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResults {
    pub tool: &'static str,
    pub version: &'static str,
    /// `release`, or `debug` (see [`build_profile`]).
    pub build: &'static str,
    pub parameters: BenchArgs,
    pub runs: Vec<RunRecord>,
    pub comparisons: Vec<ComparisonRecord>,
    pub failures: Vec<RunFailure>,
    /// `--layer kv`: the key-value service end to end.
    pub kv: Vec<KvRecord>,
    pub kv_failures: Vec<KvFailure>,
    /// `--layer loopback`: atomic broadcast over loopback beside the in-process harness.
    pub loopback: Vec<LoopbackRecord>,
    pub loopback_failures: Vec<(LoopbackSpec, String)>,
    /// `--layer crypto`: every cryptographic operation on its own, per n.
    pub crypto: Vec<crate::bench_crypto::CryptoRecord>,
}

/// `debug` when this binary was built with debug assertions (the dev profile: the workspace's
/// crates at opt-level 1, dependencies such as hbbft at opt-level 3, so figures, and ratios
/// against hbbft above all, are skewed), `release` otherwise.
pub fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The `maftia bench` command line that runs `spec` alone (with `--compare` when given).
pub fn reproduce_command(spec: &RunSpec, compare: Option<Peer>) -> String {
    let mut command = format!(
        "maftia bench --layer {} --n {} --f {} --batch {} --request-size {} --warmup-rounds {} \
         --rounds {} --threads {} --seed {}",
        spec.workload.name(),
        spec.n,
        spec.f,
        spec.batch_size,
        spec.request_size,
        spec.warmup_rounds,
        spec.measure_rounds,
        spec.threads,
        spec.seed
    );
    if let Some(Peer::Hbbft) = compare {
        command.push_str(" --compare hbbft");
    }
    command
}

/// One progress line per step on stderr: `[i/k] what ... result (elapsed)`.
struct Progress {
    total: usize,
    done: usize,
    started: Instant,
}

impl Progress {
    fn begin(&mut self, what: &str) -> Instant {
        self.done += 1;
        eprint!("[{}/{}] {what} ... ", self.done, self.total);
        // Progress only: a failed flush loses nothing but the early display.
        let _ = std::io::stderr().flush();
        Instant::now()
    }

    fn end(&self, step_started: Instant, outcome: &str) {
        eprintln!(
            "{outcome} ({:.1} s, {:.1} s elapsed)",
            step_started.elapsed().as_secs_f64(),
            self.started.elapsed().as_secs_f64()
        );
    }
}

fn describe(spec: &RunSpec) -> String {
    format!(
        "n={} f={} batch={} request={}B",
        spec.n, spec.f, spec.batch_size, spec.request_size
    )
}

/// Run everything `args` asks, print the table, write the files; see the module documentation.
/// Fails before running anything on a bad spec; fails after writing the files if any run failed.
pub fn run(args: &BenchArgs) -> Result<BenchResults, BenchCliError> {
    let plan = plan(args)?;
    if args.compare.is_some() && !cfg!(feature = "compare-hbbft") {
        return Err(BenchCliError::CompareNotBuilt);
    }
    let mut results = BenchResults {
        tool: "maftia bench",
        version: env!("CARGO_PKG_VERSION"),
        build: build_profile(),
        parameters: args.clone(),
        runs: Vec::new(),
        comparisons: Vec::new(),
        failures: Vec::new(),
        kv: Vec::new(),
        kv_failures: Vec::new(),
        loopback: Vec::new(),
        loopback_failures: Vec::new(),
        crypto: Vec::new(),
    };
    if build_profile() == "debug" {
        eprintln!(
            "warning: a debug build (maftia's crates at opt-level 1, dependencies at 3): \
             figures are not representative; build with --release"
        );
    }
    let mut progress = Progress {
        total: plan.steps(),
        done: 0,
        started: Instant::now(),
    };
    if args.layers.contains(&Layer::Crypto) {
        results.crypto = crate::bench_crypto::run(&args.n, args.f, args.seed, &args.out)
            .map_err(|e| BenchCliError::InvalidSpec(format!("crypto layer: {e:#}")))?;
    }
    for spec in &plan.runs {
        let system = format!("maftia {}", spec.workload.name());
        let step = progress.begin(&format!("{system} {}", describe(spec)));
        match maftia_bench::run(spec) {
            Ok(report) => {
                progress.end(
                    step,
                    &format!(
                        "{:.0} requests/s, p50 {:.1} ms",
                        report.requests_per_sec, report.latency.p50_ms
                    ),
                );
                results.runs.push(RunRecord {
                    system,
                    reproduce: reproduce_command(spec, None),
                    report,
                });
            }
            Err(error) => {
                progress.end(step, &format!("FAILED: {error}"));
                results.failures.push(RunFailure {
                    system,
                    spec: spec.clone(),
                    reproduce: reproduce_command(spec, None),
                    error: error.to_string(),
                });
            }
        }
    }
    for spec in &plan.comparisons {
        let step = progress.begin(&format!(
            "maftia vs hbbft {} ({} runs)",
            describe(spec),
            if plan.compare_scabc { 4 } else { 3 }
        ));
        let outcome = compare_with_hbbft(spec, plan.compare_scabc, &mut results);
        progress.end(step, &outcome);
    }
    for spec in &plan.kv {
        // The open loop may take its rate from the closed loop just measured.
        let resolved = bench_kv::resolve_rate(spec, &results.kv);
        let spec = resolved.as_ref().unwrap_or(spec).clone();
        let system = bench_kv::system(&spec);
        let step = progress.begin(&format!("{system} {}", bench_kv::describe(&spec)));
        let outcome = resolved.and_then(|_| bench_kv::run(&spec).map_err(|e| format!("{e:#}")));
        match outcome {
            Ok(record) => {
                progress.end(
                    step,
                    &format!(
                        "{:.0} requests/s, p50 {:.1} ms, p99 {:.1} ms",
                        record.requests_per_sec, record.latency.p50_ms, record.latency.p99_ms
                    ),
                );
                results.kv.push(record);
            }
            Err(error) => {
                progress.end(step, &format!("FAILED: {error}"));
                results.kv_failures.push(KvFailure {
                    system,
                    reproduce: bench_kv::reproduce_command(&spec),
                    spec,
                    error,
                });
            }
        }
    }
    for spec in &plan.loopback {
        let step = progress.begin(&format!(
            "maftia abc over loopback n={} f={} batch={}",
            spec.n, spec.f, spec.batch_size
        ));
        match crate::bench_loopback::run(spec) {
            Ok(record) => {
                progress.end(
                    step,
                    &format!(
                        "{:.0} requests/s ({:.2} of in process), p50 {:.0} ms",
                        record.requests_per_sec, record.ratio, record.p50_ms
                    ),
                );
                results.loopback.push(record);
            }
            Err(error) => {
                progress.end(step, &format!("FAILED: {error:#}"));
                results
                    .loopback_failures
                    .push((spec.clone(), format!("{error:#}")));
            }
        }
    }
    print!("{}", table(&results));
    if !plan.kv.is_empty() {
        print!("\n{}", bench_kv::table(&results.kv, &results.kv_failures));
    }
    if !plan.loopback.is_empty() {
        print!("\n{}", crate::bench_loopback::table(&results.loopback));
    }
    let written = write_outputs(&args.out, &results)?;
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    let failed =
        results.failures.len() + results.kv_failures.len() + results.loopback_failures.len();
    if failed > 0 {
        return Err(BenchCliError::RunsFailed {
            failed,
            total: plan.steps(),
        });
    }
    Ok(results)
}

/// Runs one comparison and records its rows, ratios or failure; returns the progress outcome.
#[cfg(feature = "compare-hbbft")]
fn compare_with_hbbft(spec: &RunSpec, include_scabc: bool, results: &mut BenchResults) -> String {
    let compare_spec = maftia_compare::CompareSpec {
        run: spec.clone(),
        include_scabc,
    };
    let reproduce = reproduce_command(spec, Some(Peer::Hbbft));
    match maftia_compare::compare(&compare_spec) {
        Ok(report) => {
            for (system, row) in report.rows() {
                results.runs.push(RunRecord {
                    system: system.to_string(),
                    reproduce: reproduce.clone(),
                    report: row.clone(),
                });
            }
            let summary = report.ratio_line();
            let ratios = match serde_json::to_value(report.ratios) {
                Ok(value) => value,
                Err(error) => serde_json::Value::String(format!("not encodable: {error}")),
            };
            results.comparisons.push(ComparisonRecord {
                peer: Peer::Hbbft,
                n: spec.n,
                batch_size: spec.batch_size,
                summary,
                ratios,
                reproduce,
            });
            format!(
                "maftia/hbbft throughput {:.2}x, p50 latency ratio {:.2}",
                report.ratios.throughput_vs_hbbft, report.ratios.p50_latency_vs_hbbft
            )
        }
        Err(error) => {
            results.failures.push(RunFailure {
                system: "maftia vs hbbft".into(),
                spec: spec.clone(),
                reproduce,
                error: error.to_string(),
            });
            format!("FAILED: {error}")
        }
    }
}

/// Without the `compare-hbbft` feature [`run`] refuses `--compare` before any step, so this is
/// never reached; it records the refusal rather than panicking.
#[cfg(not(feature = "compare-hbbft"))]
fn compare_with_hbbft(spec: &RunSpec, _include_scabc: bool, results: &mut BenchResults) -> String {
    let error = BenchCliError::CompareNotBuilt.to_string();
    results.failures.push(RunFailure {
        system: "maftia vs hbbft".into(),
        spec: spec.clone(),
        reproduce: reproduce_command(spec, Some(Peer::Hbbft)),
        error: error.clone(),
    });
    format!("FAILED: {error}")
}

/// The header of [`table`].
pub const TABLE_HEADER: &str = "| system | n | f | batch | request B | rounds | requests/s | latency ms p50 / p90 / p99 / max | CPU µs/req | bytes/req/node | msgs/req/node |\n|---|---|---|---|---|---|---|---|---|---|---|";

/// The results as a markdown table (runs, then failures), followed by the comparisons' ratio
/// lines.
pub fn table(results: &BenchResults) -> String {
    let mut out = format!("{TABLE_HEADER}\n");
    for record in &results.runs {
        let r = &record.report;
        let s = &r.spec;
        let l = &r.latency;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.1} / {:.1} / {:.1} / {:.1} | {:.1} | {:.0} | {:.2} |",
            record.system,
            s.n,
            s.f,
            s.batch_size,
            s.request_size,
            r.rounds,
            r.requests_per_sec,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms,
            r.cpu_seconds_per_request * 1e6,
            r.bytes_per_request,
            r.messages_per_request,
        );
    }
    for failure in &results.failures {
        let s = &failure.spec;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | FAILED: {} | | | | | |",
            failure.system,
            s.n,
            s.f,
            s.batch_size,
            s.request_size,
            failure.error.replace('|', "/")
        );
    }
    for comparison in &results.comparisons {
        let _ = writeln!(out, "- {}", comparison.summary);
    }
    out
}

/// The columns of [`csv`].
pub const CSV_HEADER: &str = "system,n,f,batch_size,request_size,warmup_rounds,measure_rounds,threads,seed,rounds,delivered,wall_seconds,requests_per_sec,p50_ms,p90_ms,p99_ms,max_ms,cpu_us_per_request,bytes_per_request,messages_per_request,projected_per_host_requests_per_sec,load_average";

/// One CSV line per run (RFC 4180 quoting where a field needs it).
pub fn csv(runs: &[RunRecord]) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = format!("{CSV_HEADER}\n");
    for record in runs {
        let r = &record.report;
        let s = &r.spec;
        let l = &r.latency;
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{:.6},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.1},{:.4},{:.1},{}",
            field(&record.system),
            s.n,
            s.f,
            s.batch_size,
            s.request_size,
            s.warmup_rounds,
            s.measure_rounds,
            s.threads,
            s.seed,
            r.rounds,
            r.delivered,
            r.wall.as_secs_f64(),
            r.requests_per_sec,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms,
            r.cpu_seconds_per_request * 1e6,
            r.bytes_per_request,
            r.messages_per_request,
            r.projected_per_host_requests_per_sec,
            r.load_average.map_or_else(String::new, |a| format!("{a:.2}")),
        );
    }
    out
}

/// A chart line: a label and its points, in drawing order.
type Series = (String, Vec<(f64, f64)>);

/// p50 latency (ms) against throughput (requests/s): one series per system and n, its points
/// ordered by batch size. Points that are not positive and finite cannot go on the log axes
/// and are left out.
pub fn throughput_latency_series(runs: &[RunRecord]) -> Vec<Series> {
    // (system, n) -> (batch size, requests/s, p50 ms) of each run.
    type Points = Vec<(usize, f64, f64)>;
    let mut series: BTreeMap<(String, usize), Points> = BTreeMap::new();
    for record in runs {
        let r = &record.report;
        series
            .entry((record.system.clone(), r.spec.n))
            .or_default()
            .push((r.spec.batch_size, r.requests_per_sec, r.latency.p50_ms));
    }
    series
        .into_iter()
        .map(|((system, n), mut points)| {
            points.sort_by_key(|p| p.0);
            let points = points
                .into_iter()
                .map(|(_, x, y)| (x, y))
                .filter(|&(x, y)| plottable(x) && plottable(y))
                .collect();
            (format!("{system} n={n}"), points)
        })
        .collect()
}

/// Throughput (requests/s) against n: one series per system and batch size, ordered by n.
pub fn throughput_vs_n_series(runs: &[RunRecord]) -> Vec<Series> {
    let mut series: BTreeMap<(String, usize), Vec<(usize, f64)>> = BTreeMap::new();
    for record in runs {
        let r = &record.report;
        series
            .entry((record.system.clone(), r.spec.batch_size))
            .or_default()
            .push((r.spec.n, r.requests_per_sec));
    }
    series
        .into_iter()
        .map(|((system, batch), mut points)| {
            points.sort_by_key(|p| p.0);
            let points = points
                .into_iter()
                .map(|(n, y)| (n as f64, y))
                .filter(|&(_, y)| plottable(y))
                .collect();
            (format!("{system} batch={batch}"), points)
        })
        .collect()
}

fn plottable(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

/// `(low, high)` around `values` with a margin of a factor `1.5` (log axes), or `(1, 10)` when
/// there is nothing to show.
fn log_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if low.is_finite() && high > 0.0 {
        (low / 1.5, high * 1.5)
    } else {
        (1.0, 10.0)
    }
}

const CHART_SIZE: (u32, u32) = (900, 560);

/// An axis value as a label: whole numbers without decimals, small values with enough.
fn axis_label(value: &f64) -> String {
    if value.fract() == 0.0 || value.abs() >= 10.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Draws `series` as lines with points into an SVG document; `x_range` is the x axis (linear or
/// log) with about `x_labels` labels, the y axis is logarithmic over the series' values; the
/// legend goes in the corner where the data is least likely to be.
fn render_svg<X>(
    title: &str,
    (x_label, x_labels): (&str, usize),
    y_label: &str,
    x_range: X,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> Result<String, BenchCliError>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let chart_error = |e: &dyn std::fmt::Display| BenchCliError::Chart(e.to_string());
    let (y_low, y_high) = log_bounds(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| chart_error(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x_range, (y_low..y_high).log_scale())
            .map_err(|e| chart_error(&e))?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_labels(x_labels)
            .x_label_formatter(&axis_label)
            .y_label_formatter(&axis_label)
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| chart_error(&e))?;
        for (index, (label, points)) in series.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| chart_error(&e))?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&point| Circle::new(point, 4, color.filled())),
                )
                .map_err(|e| chart_error(&e))?;
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .position(legend)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| chart_error(&e))?;
        }
        root.present().map_err(|e| chart_error(&e))?;
    }
    Ok(svg)
}

/// The throughput–latency chart (log–log) as an SVG document.
pub fn throughput_latency_svg(runs: &[RunRecord]) -> Result<String, BenchCliError> {
    let series = throughput_latency_series(runs);
    let (low, high) = log_bounds(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)));
    render_svg(
        "maftia bench: p50 latency vs throughput (in-process, no network delay)",
        ("requests/s", 10),
        "p50 latency, ms",
        (low..high).log_scale(),
        &series,
        // High throughput at low latency: the corner every system would like to reach.
        SeriesLabelPosition::LowerRight,
    )
}

/// The scaling chart (throughput against n, log throughput) as an SVG document.
pub fn throughput_vs_n_svg(runs: &[RunRecord]) -> Result<String, BenchCliError> {
    let series = throughput_vs_n_series(runs);
    let (low, high) = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), n| {
            (lo.min(n), hi.max(n))
        });
    let (low, high) = if low.is_finite() && high.is_finite() {
        (low - 1.0, high + 1.0)
    } else {
        (0.0, 10.0)
    };
    render_svg(
        "maftia bench: throughput vs group size n",
        // One label per n while that stays readable.
        ("n (replicas)", ((high - low) as usize + 1).min(12)),
        "requests/s",
        low..high,
        &series,
        // Large groups at high throughput.
        SeriesLabelPosition::UpperRight,
    )
}

/// The files [`run`] writes into `dir` (created if missing); returns their paths.
pub fn write_outputs(dir: &Path, results: &BenchResults) -> Result<Vec<PathBuf>, BenchCliError> {
    std::fs::create_dir_all(dir).map_err(|source| BenchCliError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = vec![
        (
            "results.json",
            serde_json::to_string_pretty(results)? + "\n",
        ),
        ("results.csv", csv(&results.runs)),
        (
            "throughput_latency.svg",
            throughput_latency_svg(&results.runs)?,
        ),
        ("throughput_vs_n.svg", throughput_vs_n_svg(&results.runs)?),
    ];
    if !results.kv.is_empty() || !results.kv_failures.is_empty() {
        files.push(("kv.csv", bench_kv::csv(&results.kv)));
    }
    let mut written = Vec::new();
    for (name, contents) in files {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|source| BenchCliError::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::sync::OnceLock;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn args(line: &str) -> BenchArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(line.split_whitespace()))
            .unwrap()
            .args
    }

    fn invalid(spec: RunSpec) -> String {
        match check_spec(&spec) {
            Err(BenchCliError::InvalidSpec(reason)) => reason,
            other => panic!("{spec:?} accepted: {other:?}"),
        }
    }

    /// One real (tiny) report, shared: n = 4, batch 2, 1 + 1 rounds.
    fn real_report() -> &'static RunReport {
        static REPORT: OnceLock<RunReport> = OnceLock::new();
        REPORT.get_or_init(|| {
            let spec = RunSpec {
                warmup_rounds: 1,
                measure_rounds: 1,
                ..RunSpec::new(Workload::Abc, 4, 2)
            };
            maftia_bench::run(&spec).unwrap()
        })
    }

    fn record(system: &str, n: usize, batch_size: usize, rps: f64, p50_ms: f64) -> RunRecord {
        let base = real_report();
        RunRecord {
            system: system.into(),
            reproduce: String::new(),
            report: RunReport {
                spec: RunSpec {
                    n,
                    f: (n - 1) / 3,
                    batch_size,
                    ..base.spec.clone()
                },
                requests_per_sec: rps,
                latency: maftia_bench::Latency {
                    p50_ms,
                    ..base.latency
                },
                ..base.clone()
            },
        }
    }

    #[test]
    fn every_layer_parses_by_its_name_and_unknown_names_list_the_available_ones() {
        for &layer in LAYERS {
            assert_eq!(parse_layer(layer.name()), Ok(Layer::Harness(layer)));
            if let Some(short) = layer.name().strip_suffix("abc").filter(|s| !s.is_empty()) {
                assert_eq!(parse_layer(short), Ok(Layer::Harness(layer)));
            }
        }
        assert_eq!(parse_layer("sc"), Ok(Layer::Harness(Workload::Scabc)));
        assert_eq!(parse_layer("ht"), Ok(Layer::Harness(Workload::HtAbc)));
        assert_eq!(parse_layer("kv"), Ok(Layer::Kv));
        assert_eq!(parse_layer("crypto"), Ok(Layer::Crypto));
        assert!(layer_names().ends_with(", kv, crypto, loopback"));
        assert_eq!(parse_layer("loopback"), Ok(Layer::Loopback));
        for bad in ["", "ABC", "abcd", "cryptography"] {
            let error = parse_layer(bad).unwrap_err();
            assert!(error.contains(&layer_names()), "{error}");
        }
        assert_eq!(
            args("--layer abc,scabc,kv").layers,
            vec![
                Layer::Harness(Workload::Abc),
                Layer::Harness(Workload::Scabc),
                Layer::Kv
            ]
        );
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let good = RunSpec::new(Workload::Abc, 4, 100);
        check_spec(&good).unwrap();
        let reason = invalid(RunSpec {
            f: 1,
            n: 3,
            ..good.clone()
        });
        assert!(
            reason.contains("n > 3f") && reason.contains("at most f = 0"),
            "{reason}"
        );
        assert!(invalid(RunSpec {
            n: 0,
            ..good.clone()
        })
        .contains("at least 1"));
        assert!(invalid(RunSpec {
            batch_size: 0,
            ..good.clone()
        })
        .contains("batch size 0"));
        assert!(invalid(RunSpec {
            request_size: 7,
            ..good.clone()
        })
        .contains("8-byte id"));
        check_spec(&RunSpec {
            request_size: 8,
            ..good.clone()
        })
        .unwrap();
        assert!(invalid(RunSpec {
            measure_rounds: 0,
            ..good.clone()
        })
        .contains("--rounds"));
        assert!(invalid(RunSpec { threads: 0, ..good }).contains("--threads"));
    }

    #[test]
    fn the_message_limit_check_names_the_largest_batch_that_fits_and_agrees_with_abc() {
        let too_big = RunSpec::new(Workload::Abc, 4, 10_000);
        let reason = invalid(too_big.clone());
        let fits: usize = reason
            .split("at most ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("no batch hint in: {reason}"));
        check_spec(&RunSpec {
            batch_size: fits,
            ..too_big.clone()
        })
        .unwrap();
        let over = RunSpec {
            batch_size: fits + 1,
            ..too_big.clone()
        };
        assert!(invalid(over.clone()).contains("above the limit"));
        // The protocol itself refuses the first batch the check refuses (at setup, before
        // running anything).
        assert!(matches!(
            maftia_bench::run(&over),
            Err(maftia_bench::BenchError::Setup(_))
        ));
        // The high-throughput mode sends lane batches alone: what a proposal of n = 4 batches
        // cannot carry, one batch can; and its own limit agrees with the protocol too.
        let ht = RunSpec {
            workload: Workload::HtAbc,
            ..too_big.clone()
        };
        check_spec(&ht).unwrap();
        let reason = invalid(RunSpec {
            batch_size: 100_000,
            ..ht.clone()
        });
        assert!(reason.contains("a lane batch can reach"), "{reason}");
        let ht_fits: usize = reason
            .split("at most ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("no batch hint in: {reason}"));
        assert!(ht_fits > 3 * fits, "{ht_fits} vs {fits}");
        check_spec(&RunSpec {
            batch_size: ht_fits,
            ..ht.clone()
        })
        .unwrap();
        assert!(matches!(
            maftia_bench::run(&RunSpec {
                batch_size: ht_fits + 1,
                ..ht
            }),
            Err(maftia_bench::BenchError::Setup(_))
        ));
        // Requests so large that not even one per batch fits.
        let reason = invalid(RunSpec {
            n: 100,
            f: 33,
            batch_size: 1,
            request_size: 200_000,
            ..too_big
        });
        assert!(reason.contains("no batch fits"), "{reason}");
    }

    #[test]
    fn the_plan_is_layers_by_n_by_batch_and_checks_every_spec_before_running() {
        let planned = plan(&args(
            "--layer abc,scabc,abc --n 4,7 --batch 1,10 --rounds 3",
        ))
        .unwrap();
        assert_eq!(planned.runs.len(), 2 * 2 * 2);
        assert!(planned.comparisons.is_empty());
        assert_eq!(planned.steps(), 8);
        let first = &planned.runs[0];
        assert_eq!(
            (
                first.workload,
                first.n,
                first.f,
                first.batch_size,
                first.measure_rounds
            ),
            (Workload::Abc, 4, 1, 1, 3)
        );
        let last = &planned.runs[7];
        assert_eq!(
            (last.workload, last.n, last.f, last.batch_size),
            (Workload::Scabc, 7, 2, 10)
        );
        // An explicit f applies to every n, and one bad n refuses the whole matrix.
        let error = plan_error("--n 4,7,3 --f 1");
        assert!(error.contains("n = 3 with f = 1"), "{error}");
        assert!(plan_error("--n 4 --batch 10,0").contains("batch size 0"));
    }

    fn plan_error(line: &str) -> String {
        match plan(&args(line)) {
            Err(BenchCliError::InvalidSpec(reason)) => reason,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn comparisons_stand_for_the_abc_and_scabc_layers_and_need_hbbfts_f() {
        let planned = plan(&args("--layer abc --n 4,7 --batch 5 --compare hbbft")).unwrap();
        assert!(planned.runs.is_empty());
        assert_eq!(planned.comparisons.len(), 2);
        assert!(planned
            .comparisons
            .iter()
            .all(|s| s.workload == Workload::Abc));
        assert!(!planned.compare_scabc);
        let with_scabc = plan(&args("--layer scabc --n 4 --batch 5 --compare hbbft")).unwrap();
        assert!(with_scabc.compare_scabc && with_scabc.runs.is_empty());
        assert_eq!(with_scabc.comparisons.len(), 1);
        // Layers the comparison does not cover run beside it.
        let with_ht = plan(&args("--layer abc,ht --n 4,7 --batch 5 --compare hbbft")).unwrap();
        assert_eq!(with_ht.comparisons.len(), 2);
        assert_eq!(with_ht.runs.len(), 2);
        assert!(with_ht.runs.iter().all(|s| s.workload == Workload::HtAbc));
        let error = plan_error("--n 7 --f 1 --compare hbbft");
        assert!(error.contains("f = ⌊(n − 1)/3⌋ = 2"), "{error}");
    }

    #[test]
    fn without_the_feature_compare_is_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let line = format!("--n 4 --batch 1 --compare hbbft --out {}", out.display());
        let result = run(&args(&line));
        if cfg!(feature = "compare-hbbft") {
            return;
        }
        let error = result.unwrap_err();
        assert!(matches!(error, BenchCliError::CompareNotBuilt));
        assert!(error.to_string().contains(COMPARE_BUILD_HINT));
        assert!(!out.exists());
    }

    #[test]
    fn the_reproduce_command_parses_back_to_the_same_spec() {
        let spec = RunSpec {
            f: 0,
            request_size: 64,
            warmup_rounds: 3,
            measure_rounds: 4,
            seed: 99,
            threads: 2,
            ..RunSpec::new(Workload::Scabc, 5, 17)
        };
        let command = reproduce_command(&spec, None);
        let line = command.strip_prefix("maftia bench ").unwrap();
        let planned = plan(&args(line)).unwrap();
        assert_eq!(planned.runs, vec![spec.clone()]);
        let abc = RunSpec {
            f: 1,
            workload: Workload::Abc,
            ..spec
        };
        let line = reproduce_command(&abc, Some(Peer::Hbbft));
        let planned = plan(&args(line.strip_prefix("maftia bench ").unwrap())).unwrap();
        assert_eq!(planned.comparisons, vec![abc]);
    }

    #[test]
    fn csv_has_one_line_per_run_with_every_column_and_quotes_what_needs_it() {
        let runs = vec![
            record("maftia abc", 4, 10, 1000.0, 5.0),
            record("odd, \"name\"", 7, 10, 500.0, 9.0),
        ];
        let text = csv(&runs);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let columns = CSV_HEADER.split(',').count();
        assert_eq!(lines[1].split(',').count(), columns);
        assert!(lines[1].starts_with("maftia abc,4,1,10,"));
        assert!(
            lines[2].starts_with("\"odd, \"\"name\"\"\",7,2,10,"),
            "{}",
            lines[2]
        );
        // Past the quoted name the fields are plain again.
        let rest = lines[2].rsplit_once("\",").unwrap().1;
        assert_eq!(rest.split(',').count(), columns - 1);
    }

    #[test]
    fn chart_series_group_by_system_and_order_their_points() {
        let runs = vec![
            record("maftia abc", 4, 100, 3000.0, 20.0),
            record("maftia abc", 4, 10, 1000.0, 5.0),
            record("maftia abc", 7, 10, 600.0, 8.0),
            record("hbbft", 4, 10, 100.0, 0.0),
        ];
        let latency = throughput_latency_series(&runs);
        let names: Vec<&str> = latency.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["hbbft n=4", "maftia abc n=4", "maftia abc n=7"]);
        // Latency 0 cannot go on a log axis.
        assert!(latency[0].1.is_empty());
        assert_eq!(latency[1].1, vec![(1000.0, 5.0), (3000.0, 20.0)]);
        let scaling = throughput_vs_n_series(&runs);
        let names: Vec<&str> = scaling.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "hbbft batch=10",
                "maftia abc batch=10",
                "maftia abc batch=100"
            ]
        );
        assert_eq!(scaling[1].1, vec![(4.0, 1000.0), (7.0, 600.0)]);
    }

    #[test]
    fn charts_are_svg_documents_with_a_marker_per_point() {
        let runs = vec![
            record("maftia abc", 4, 10, 1000.0, 5.0),
            record("maftia abc", 4, 100, 3000.0, 20.0),
            record("maftia abc", 7, 10, 600.0, 8.0),
        ];
        for (svg, points) in [
            (throughput_latency_svg(&runs).unwrap(), 3),
            (throughput_vs_n_svg(&runs).unwrap(), 3),
            (throughput_vs_n_svg(&[]).unwrap(), 0),
        ] {
            assert!(
                svg.trim_start().starts_with("<svg"),
                "{}",
                &svg[..80.min(svg.len())]
            );
            assert!(svg.trim_end().ends_with("</svg>"));
            assert_eq!(svg.matches("<circle").count(), points);
        }
        let svg = throughput_latency_svg(&runs).unwrap();
        assert!(svg.contains("maftia abc n=7") && svg.contains("requests/s"));
    }

    #[test]
    fn the_table_has_a_row_per_run_and_failure() {
        let mut results = BenchResults {
            tool: "maftia bench",
            version: "test",
            build: build_profile(),
            parameters: args(""),
            runs: vec![record("maftia abc", 4, 10, 1234.0, 5.5)],
            comparisons: Vec::new(),
            kv: Vec::new(),
            kv_failures: Vec::new(),
            loopback: Vec::new(),
            loopback_failures: Vec::new(),
            crypto: Vec::new(),
            failures: vec![RunFailure {
                system: "maftia scabc".into(),
                spec: RunSpec::new(Workload::Scabc, 4, 10),
                reproduce: String::new(),
                error: "a | b".into(),
            }],
        };
        let text = table(&results);
        assert!(text.starts_with(TABLE_HEADER));
        assert!(text.contains("| maftia abc | 4 | 1 | 10 | 250 | 1 | 1234 | 5.5 / "));
        assert!(text.contains("| maftia scabc | 4 | 1 | 10 | 250 | FAILED: a / b |"));
        results.failures.clear();
        assert_eq!(table(&results).lines().count(), 3);
    }
}
