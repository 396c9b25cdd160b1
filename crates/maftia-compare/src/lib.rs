//! maftia-compare: maftia's atomic broadcast side by side with HoneyBadgerBFT (`hbbft` 0.1.1) on
//! maftia's in-process bench harness ([`maftia_bench`]), in the same process and run, so that
//! every claim is a ratio measured under the same load rather than an absolute time.
//!
//! [`compare`] runs, for one [`CompareSpec`] (n, f, request size, batch size, rounds, seed):
//! 1. **maftia**: [`maftia_bench::run`] with [`Workload::Abc`] (CKPS01 atomic broadcast, real
//!    BLS threshold signatures and Ed25519);
//! 2. **hbbft**: hbbft's `HoneyBadger` with `EncryptionSchedule::Never`, through the same
//!    harness ([`hbbft_node::HbbftNode`], [`maftia_bench::drive`]);
//! 3. **hbbft+enc**: the same with `EncryptionSchedule::Always` (real `threshold_crypto`
//!    threshold encryption of every contribution; the mock-crypto feature is not enabled);
//! 4. optionally **maftia scabc**: maftia's secure causal atomic broadcast (TDH2-encrypted
//!    requests), the encrypted counterpart of row 3. Its client-side encryption is measured apart
//!    and excluded from node CPU and throughput by the harness, whereas hbbft's proposers encrypt
//!    their contributions themselves (one encryption per batch), which counts as node time.
//!
//! and reports the rows and their [`Ratios`]. What is equal between the rows: the harness (same
//! event loop, FIFO delivery with zero network delay, same pending target, same measurement
//! window and checks), the codec (every message of every system is encoded and decoded with
//! [`maftia_core::codec`]), the requests (`request_size` bytes, unique ids), `n` and `f`, the
//! per-node batch size (see [`hbbft_node`] for how hbbft's batching is mapped), the seed and the
//! thread layout. With `threads = 1` all nodes share one core, so throughput is that of the whole
//! group on one core; the harness's `projected_per_host_requests_per_sec` estimates one core per
//! node.
//!
//! Wiring: a front end needs one call, `compare(&CompareSpec::new(n, batch_size))`, then
//! [`ComparisonReport::table`] and `serde_json::to_string_pretty(&report)`; the
//! `maftia-compare` binary does that for a matrix of `n` and batch sizes.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod hbbft_node;
mod rng;

pub use hbbft_node::{
    hbbft_group, hbbft_nodes, run_hbbft, Encryption, HbbftDelivery, HbbftFault, HbbftMessage,
    HbbftNode, HbbftNodeError, HbbftParams,
};
pub use maftia_bench::{BenchError, RunReport, RunSpec, Workload};
pub use rng::Rng04;

use serde::Serialize;
use std::fmt::Write as _;

/// What to compare: the harness spec every row shares (its `workload` is set per row).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompareSpec {
    pub run: RunSpec,
    /// Also run maftia's SC-ABC (the encrypted counterpart of hbbft+enc).
    pub include_scabc: bool,
}

impl CompareSpec {
    /// `n` nodes with hbbft's `f = ⌊(n − 1)/3⌋`, 250-byte requests, `batch_size` requests per
    /// node per round, 1 warm-up and 5 measured rounds, seed 1, one thread, no SC-ABC row.
    pub fn new(n: usize, batch_size: usize) -> Self {
        CompareSpec {
            run: RunSpec {
                warmup_rounds: 1,
                measure_rounds: 5,
                ..RunSpec::new(Workload::Abc, n, batch_size)
            },
            include_scabc: false,
        }
    }
}

/// maftia's figures relative to hbbft's, from the same run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Ratios {
    /// maftia requests/s ÷ hbbft requests/s (> 1: maftia delivers more).
    pub throughput_vs_hbbft: f64,
    /// maftia requests/s ÷ hbbft+enc requests/s.
    pub throughput_vs_hbbft_encrypted: f64,
    /// maftia p50 latency ÷ hbbft p50 latency (< 1: maftia is faster).
    pub p50_latency_vs_hbbft: f64,
    /// maftia p50 latency ÷ hbbft+enc p50 latency.
    pub p50_latency_vs_hbbft_encrypted: f64,
    /// maftia process CPU per request ÷ hbbft's (< 1: maftia spends less).
    pub cpu_per_request_vs_hbbft: f64,
    /// maftia bytes sent per request and node ÷ hbbft's.
    pub bytes_per_request_vs_hbbft: f64,
    /// maftia SC-ABC requests/s ÷ hbbft+enc requests/s, if SC-ABC ran.
    pub scabc_throughput_vs_hbbft_encrypted: Option<f64>,
    /// maftia SC-ABC p50 latency ÷ hbbft+enc p50 latency, if SC-ABC ran.
    pub scabc_p50_latency_vs_hbbft_encrypted: Option<f64>,
}

/// The throughput ratio issue 7 asks maftia's atomic broadcast to reach against hbbft (same n,
/// same batch size), together with a lower p50 latency.
pub const TARGET_THROUGHPUT_RATIO: f64 = 5.0;

impl Ratios {
    fn of(
        maftia: &RunReport,
        hbbft: &RunReport,
        hbbft_encrypted: &RunReport,
        scabc: Option<&RunReport>,
    ) -> Self {
        let throughput =
            |a: &RunReport, b: &RunReport| ratio(a.requests_per_sec, b.requests_per_sec);
        let p50 = |a: &RunReport, b: &RunReport| ratio(a.latency.p50_ms, b.latency.p50_ms);
        Ratios {
            throughput_vs_hbbft: throughput(maftia, hbbft),
            throughput_vs_hbbft_encrypted: throughput(maftia, hbbft_encrypted),
            p50_latency_vs_hbbft: p50(maftia, hbbft),
            p50_latency_vs_hbbft_encrypted: p50(maftia, hbbft_encrypted),
            cpu_per_request_vs_hbbft: ratio(
                maftia.cpu_seconds_per_request,
                hbbft.cpu_seconds_per_request,
            ),
            bytes_per_request_vs_hbbft: ratio(maftia.bytes_per_request, hbbft.bytes_per_request),
            scabc_throughput_vs_hbbft_encrypted: scabc.map(|s| throughput(s, hbbft_encrypted)),
            scabc_p50_latency_vs_hbbft_encrypted: scabc.map(|s| p50(s, hbbft_encrypted)),
        }
    }

    /// Whether maftia meets issue 7's target against unencrypted hbbft (the like-for-like row:
    /// maftia's ABC does not encrypt either): at least [`TARGET_THROUGHPUT_RATIO`] times the
    /// throughput and a lower p50 latency.
    pub fn target_met(&self) -> bool {
        self.throughput_vs_hbbft >= TARGET_THROUGHPUT_RATIO && self.p50_latency_vs_hbbft < 1.0
    }
}

/// `a / b`, or NaN when `b` is not positive (a row that measured nothing).
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// The rows of one comparison and their ratios.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComparisonReport {
    pub spec: CompareSpec,
    /// maftia's atomic broadcast (CKPS01 mode).
    pub maftia: RunReport,
    /// hbbft's HoneyBadger, `EncryptionSchedule::Never`.
    pub hbbft: RunReport,
    /// hbbft's HoneyBadger, `EncryptionSchedule::Always`.
    pub hbbft_encrypted: RunReport,
    /// maftia's SC-ABC, if [`CompareSpec::include_scabc`].
    pub maftia_scabc: Option<RunReport>,
    pub ratios: Ratios,
}

/// The header of [`ComparisonReport::table`]'s rows.
pub const TABLE_HEADER: &str = "| system | n | f | batch | rounds | req/round | requests/s | latency p50 / p99 ms | CPU µs/req | msgs/req/node | bytes/req/node | projected per-host req/s | load avg |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|";

impl ComparisonReport {
    /// `(name, report)` of every row that ran, in run order.
    pub fn rows(&self) -> Vec<(&'static str, &RunReport)> {
        let mut rows = vec![
            ("maftia abc", &self.maftia),
            (Encryption::Never.name(), &self.hbbft),
            (Encryption::Always.name(), &self.hbbft_encrypted),
        ];
        if let Some(scabc) = &self.maftia_scabc {
            rows.push(("maftia scabc", scabc));
        }
        rows
    }

    /// The rows as markdown table lines (no header: see [`TABLE_HEADER`]).
    pub fn table_rows(&self) -> String {
        let mut out = String::new();
        for (name, r) in self.rows() {
            let s = &r.spec;
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {:.0} | {:.0} | {:.1} / {:.1} | {:.1} | {:.2} | {:.0} | {:.0} | {} |",
                s.n,
                s.f,
                s.batch_size,
                r.rounds,
                r.delivered as f64 / r.rounds.max(1) as f64,
                r.requests_per_sec,
                r.latency.p50_ms,
                r.latency.p99_ms,
                r.cpu_seconds_per_request * 1e6,
                r.messages_per_request,
                r.bytes_per_request,
                r.projected_per_host_requests_per_sec,
                r.load_average.map_or_else(|| "?".to_string(), |l| format!("{l:.2}")),
            );
        }
        out
    }

    /// One line of ratios.
    pub fn ratio_line(&self) -> String {
        let r = &self.ratios;
        let mut line = format!(
            "n = {}, batch {}: maftia/hbbft throughput {:.2}x (vs hbbft+enc {:.2}x), p50 latency ratio {:.2} (vs hbbft+enc {:.2}), CPU/request ratio {:.2}, bytes/request ratio {:.2}; target (≥ {TARGET_THROUGHPUT_RATIO}x and lower p50 vs hbbft) {}",
            self.spec.run.n,
            self.spec.run.batch_size,
            r.throughput_vs_hbbft,
            r.throughput_vs_hbbft_encrypted,
            r.p50_latency_vs_hbbft,
            r.p50_latency_vs_hbbft_encrypted,
            r.cpu_per_request_vs_hbbft,
            r.bytes_per_request_vs_hbbft,
            if r.target_met() { "met" } else { "NOT met" },
        );
        if let (Some(t), Some(l)) = (
            r.scabc_throughput_vs_hbbft_encrypted,
            r.scabc_p50_latency_vs_hbbft_encrypted,
        ) {
            let _ = write!(
                line,
                "; scabc/hbbft+enc throughput {t:.2}x, p50 ratio {l:.2}"
            );
        }
        line
    }

    /// The whole comparison as markdown: header, rows, ratio line.
    pub fn table(&self) -> String {
        format!(
            "{TABLE_HEADER}\n{}\n{}\n",
            self.table_rows(),
            self.ratio_line()
        )
    }
}

/// Run maftia and hbbft (unencrypted and encrypted) with the same spec, one after the other in
/// this process, and report the rows and ratios (see the crate documentation).
pub fn compare(spec: &CompareSpec) -> Result<ComparisonReport, BenchError> {
    let abc = RunSpec {
        workload: Workload::Abc,
        ..spec.run.clone()
    };
    check_spec(&abc)?;
    let maftia = maftia_bench::run(&abc)?;
    let hbbft = run_hbbft(&abc, Encryption::Never)?;
    let hbbft_encrypted = run_hbbft(&abc, Encryption::Always)?;
    let maftia_scabc = if spec.include_scabc {
        Some(maftia_bench::run(&RunSpec {
            workload: Workload::Scabc,
            ..abc.clone()
        })?)
    } else {
        None
    };
    let ratios = Ratios::of(&maftia, &hbbft, &hbbft_encrypted, maftia_scabc.as_ref());
    Ok(ComparisonReport {
        spec: spec.clone(),
        maftia,
        hbbft,
        hbbft_encrypted,
        maftia_scabc,
        ratios,
    })
}

/// The harness's spec checks (it applies them in [`maftia_bench::run`]; hbbft rows go through
/// [`maftia_bench::drive`] directly), plus hbbft's fixed `f`.
pub(crate) fn check_spec(spec: &RunSpec) -> Result<(), BenchError> {
    let invalid = |s: String| Err(BenchError::InvalidSpec(s));
    if spec.n == 0 || spec.n <= 3 * spec.f {
        return invalid("need n > 3f".into());
    }
    if spec.n > usize::from(u16::MAX) {
        return invalid("n must fit a node id".into());
    }
    if spec.f != (spec.n - 1) / 3 {
        return invalid(format!(
            "hbbft 0.1.1 always tolerates f = ⌊(n − 1)/3⌋ = {}; the comparison needs that f, not {}",
            (spec.n - 1) / 3,
            spec.f
        ));
    }
    if spec.batch_size == 0 {
        return invalid("batch_size must be positive".into());
    }
    if spec.request_size < 8 {
        return invalid("request_size must be at least 8 (the request id)".into());
    }
    if spec.measure_rounds == 0 {
        return invalid("measure_rounds must be at least 1".into());
    }
    if spec.threads == 0 {
        return invalid("threads must be at least 1".into());
    }
    Ok(())
}
