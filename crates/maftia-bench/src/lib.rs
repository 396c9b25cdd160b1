//! maftia-bench: the in-process benchmark harness of the ordering protocols.
//!
//! [`run`] builds a group of `n` nodes of one [`Workload`] with the real threshold key sets (BLS
//! coin, consistent-broadcast and quorum keys wrapped in [`TimedSigner`]), real Ed25519
//! identities and, for SC-ABC, a real TDH2 key, and drives them with no network delay. The
//! ordering runs in the CKPS01 mode or the high-throughput mode (`HtAbc`, `HtScabc`: lanes
//! ordered by MVBA epochs; a "round" below is then an epoch):
//!
//! - **steady state**: after every event at a node its pending queue is topped up with fresh,
//!   unique requests (`RunSpec::pending_target`, by default two batches), so every round is
//!   full;
//! - **like the network**: every message that leaves a node is encoded once with
//!   [`maftia_core::codec`] and decoded at each recipient (a node's copy to itself, which the
//!   runtime delivers locally, is not encoded), and the bytes and messages are counted per
//!   recipient; each thread delivers its messages first in, first out;
//! - **window**: the first `warmup_rounds` rounds (as completed at node 0) are not measured; the
//!   next `measure_rounds` rounds are. Throughput, per-request costs and latency are those of
//!   the window;
//! - **checked**: every node's output sequence is compared with the others' (same prefix, at
//!   every round boundary); any disagreement or recorded fault fails the run.
//!
//! With `threads = 1` (all nodes on the calling thread) a run is deterministic given the seed
//! except for the timings: the same requests, messages, rounds and delivered sequence
//! ([`RunReport::delivery_digest`]). With more threads the nodes are spread over them and the
//! interleaving depends on the scheduler.
//!
//! # Measures
//! - `requests_per_sec`: requests delivered at node 0 in the window / window wall time, less
//!   the client-side work of making requests (divided by the thread count when the nodes run
//!   on several threads: an approximation);
//! - latency: from a request's submission at its node to its delivery at node 0 (wall clock,
//!   in-process, so it is the protocols' own latency with zero network delay);
//! - `messages_per_request`, `bytes_per_request`: sent by one node, on average, per delivered
//!   request (encoded frame sizes, envelope included);
//! - `cpu_seconds_per_request`: the CPU time of the threads running the nodes in the window
//!   (each reads its own `/proc/thread-self/schedstat`, nanosecond resolution; if that is not
//!   available, the whole process's from `/proc/self/task/*/schedstat` or `/proc/self/stat`)
//!   per delivered request, minus the client-side work of making requests (TDH2 encryption for
//!   SC-ABC);
//! - `node_busy_seconds_per_request`: per node, the wall time spent handling its messages and
//!   inputs (decode, protocol, encode) per delivered request (wall clock: inflated on a loaded
//!   machine); the busiest node's share of the busy time, applied to the process CPU, gives
//!   `projected_per_host_requests_per_sec`, the throughput if every node ran on its own core —
//!   a projection, not a measurement;
//! - the crypto breakdown: time and calls of threshold-signature operations by key set, and of
//!   the codec; Ed25519 and hashing show in a profile (`docs/performance.md`).
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod driver;
mod setup;
pub mod timed;

pub use timed::{Op, SignerCounters, SignerOps, TimedSigner};
// The harness driving other protocols (crates/maftia-compare runs hbbft through it).
pub use driver::{drive, BenchNode, Group, RequestMaker};

pub use maftia_broadcast::htabc::HtParams;
use serde::Serialize;
use std::time::Duration;
use thiserror::Error;

/// Which ordering protocol runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Workload {
    /// Atomic broadcast, CKPS01 mode ([`maftia_broadcast::abc`]): plain requests.
    Abc,
    /// Secure causal atomic broadcast ([`maftia_broadcast::scabc`]): every request is a TDH2
    /// ciphertext of `request_size` plaintext bytes, made by the harness as a client would
    /// (its cost is reported apart, not as node CPU).
    Scabc,
    /// Atomic broadcast, high-throughput mode ([`maftia_broadcast::htabc`], Dumbo-NG lanes
    /// ordered by MVBA epochs, default [`HtParams`]): plain requests; a "round" is an epoch.
    HtAbc,
    /// SC-ABC ordered by the high-throughput mode ([`maftia_broadcast::scabc::Scabc::with_mode`]).
    HtScabc,
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Abc => "abc",
            Workload::Scabc => "scabc",
            Workload::HtAbc => "htabc",
            Workload::HtScabc => "htscabc",
        }
    }

    /// Whether the workload orders with the high-throughput mode.
    pub fn high_throughput(&self) -> bool {
        matches!(self, Workload::HtAbc | Workload::HtScabc)
    }
}

/// What to run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSpec {
    pub n: usize,
    pub f: usize,
    /// Requests per batch ([`maftia_broadcast::abc::AbcParams::batch_size`]).
    pub batch_size: usize,
    /// Bytes per request (plaintext bytes for SC-ABC); at least 8 (the request id).
    pub request_size: usize,
    pub workload: Workload,
    /// Rounds completed at node 0 before the window opens.
    pub warmup_rounds: u64,
    /// Rounds completed at node 0 in the window (at least 1).
    pub measure_rounds: u64,
    /// Seeds keys, request contents and the nodes' randomness.
    pub seed: u64,
    /// Threads to spread the nodes over (node `i` on thread `i % threads`); 1 runs every node
    /// on the calling thread, deterministically.
    pub threads: usize,
    /// Requests kept pending at each node (queued or, in the high-throughput mode, in a lane
    /// batch not yet delivered); 0 means two batches, or [`HT_PENDING_BATCHES`] batches in the
    /// high-throughput mode.
    pub pending_target: usize,
}

/// Default pending load of the high-throughput workloads, in batches: a lane proposes its next
/// batch as soon as the previous one is certified, so it keeps several batches in flight per
/// agreement epoch (every request of a batch stays pending until its epoch is delivered).
pub const HT_PENDING_BATCHES: usize = 8;

impl RunSpec {
    /// `n` nodes with the largest `f`, 250-byte requests, 2 warm-up and 10 measured rounds,
    /// one thread.
    pub fn new(workload: Workload, n: usize, batch_size: usize) -> Self {
        RunSpec {
            n,
            f: n.saturating_sub(1) / 3,
            batch_size,
            request_size: 250,
            workload,
            warmup_rounds: 2,
            measure_rounds: 10,
            seed: 1,
            threads: 1,
            pending_target: 0,
        }
    }

    /// Requests kept pending at each node.
    pub fn pending(&self) -> usize {
        if self.pending_target == 0 {
            let batches = if self.workload.high_throughput() {
                HT_PENDING_BATCHES
            } else {
                2
            };
            self.batch_size.saturating_mul(batches)
        } else {
            self.pending_target
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Where the time went in the window (all nodes together).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CryptoBreakdown {
    /// Threshold coin key set (threshold `f + 1`).
    pub coin: SignerOps,
    /// Consistent-broadcast key set (threshold `⌈(n+f+1)/2⌉`).
    pub cbc: SignerOps,
    /// Quorum key set (threshold `n − f`).
    pub quorum: SignerOps,
    /// Message encodings (one per sent message, whatever its number of recipients).
    pub encode: Op,
    /// Message decodings (one per recipient).
    pub decode: Op,
    /// Client-side request making (TDH2 encryption for SC-ABC), not counted as node CPU.
    pub client_requests: Op,
}

impl CryptoBreakdown {
    /// Seconds in threshold-signature operations, all key sets.
    pub fn threshold_seconds(&self) -> f64 {
        self.coin.seconds() + self.cbc.seconds() + self.quorum.seconds()
    }
}

/// What a run measured (over the window; see the crate documentation).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunReport {
    pub spec: RunSpec,
    /// Requests delivered at node 0 in the window.
    pub delivered: u64,
    /// Rounds completed at node 0 in the window.
    pub rounds: u64,
    pub wall: Duration,
    pub requests_per_sec: f64,
    pub rounds_per_sec: f64,
    pub latency: Latency,
    /// Messages one node sends per delivered request (average over nodes).
    pub messages_per_request: f64,
    /// Encoded bytes one node sends per delivered request (average over nodes).
    pub bytes_per_request: f64,
    /// CPU seconds of the node threads per delivered request (all nodes), client request
    /// making excluded.
    pub cpu_seconds_per_request: f64,
    /// Per node: wall seconds spent handling its messages and inputs per delivered request.
    pub node_busy_seconds_per_request: Vec<f64>,
    /// Requests/s if each node had a core of its own (a projection, not a measurement): the
    /// inverse of the busiest node's CPU per request, estimated as the process CPU per request
    /// times that node's share of the busy time.
    pub projected_per_host_requests_per_sec: f64,
    pub crypto: CryptoBreakdown,
    /// Faults recorded by any node (an honest run records none: `run` fails otherwise).
    pub faults: u64,
    /// Outputs of node 0 whose position every other node's sequence was checked against.
    pub agreement_checked_outputs: u64,
    /// BLAKE3 chain over node 0's whole output sequence (warm-up included), hex.
    pub delivery_digest: String,
    /// The 1-minute load average when the run started (from `/proc/loadavg`), if readable.
    pub load_average: Option<f64>,
}

impl RunReport {
    /// `seconds` (wall time of some operation, summed over the nodes, like the breakdown's) as
    /// a share of the nodes' busy time. Both are wall clock and inflate alike on a loaded
    /// machine, so the share is meaningful where a share of process CPU would not be.
    pub fn share_of_node_time(&self, seconds: f64) -> f64 {
        let busy: f64 =
            self.node_busy_seconds_per_request.iter().sum::<f64>() * self.delivered as f64;
        if busy > 0.0 {
            seconds / busy
        } else {
            0.0
        }
    }
}

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("invalid run spec: {0}")]
    InvalidSpec(String),
    #[error("setup failed: {0}")]
    Setup(String),
    #[error("a node refused a request: {0}")]
    Input(String),
    #[error("a message failed to encode or decode: {0}")]
    Codec(String),
    #[error("the group stalled after {rounds} rounds at node 0 (no message in flight)")]
    Stalled { rounds: u64 },
    #[error("node {node} disagrees with node 0 at output {output}")]
    Disagreement { node: usize, output: u64 },
    #[error("node {node} recorded a fault against {culprit}: {kind}")]
    Fault {
        node: usize,
        culprit: usize,
        kind: String,
    },
    #[error("a worker thread panicked")]
    WorkerPanicked,
}

/// Run one benchmark; see the crate documentation.
pub fn run(spec: &RunSpec) -> Result<RunReport, BenchError> {
    check_spec(spec)?;
    match spec.workload {
        Workload::Abc => {
            let group = setup::abc_group(spec)?;
            driver::drive(spec, group)
        }
        Workload::Scabc | Workload::HtScabc => {
            let group = setup::scabc_group(spec)?;
            driver::drive(spec, group)
        }
        Workload::HtAbc => {
            let group = setup::htabc_group(spec)?;
            driver::drive(spec, group)
        }
    }
}

fn check_spec(spec: &RunSpec) -> Result<(), BenchError> {
    let invalid = |s: &str| Err(BenchError::InvalidSpec(s.to_string()));
    if spec.n == 0 || spec.n <= 3 * spec.f {
        return invalid("need n > 3f");
    }
    if spec.n > usize::from(u16::MAX) {
        return invalid("n must fit a node id");
    }
    if spec.batch_size == 0 {
        return invalid("batch_size must be positive");
    }
    if spec.request_size < 8 {
        return invalid("request_size must be at least 8 (the request id)");
    }
    if spec.measure_rounds == 0 {
        return invalid("measure_rounds must be at least 1");
    }
    if spec.threads == 0 {
        return invalid("threads must be at least 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
