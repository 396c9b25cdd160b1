//! maftia-sim: a deterministic network simulator and Byzantine adversary for sans-IO protocols.
//!
//! **What it guarantees.** Given the same [`SimConfig`] (above all its `seed`), the same
//! Byzantine assignment and deterministic protocol code, a run is bit-for-bit reproducible:
//! one seeded ChaCha generator drives every scheduling choice and every `rng` handed to a
//! protocol, nothing iterates a hash map, and [`Sim::trace_hash`] (BLAKE3 over every event in
//! order) lets a test check it. A failing run reports its seed and the one command that
//! replays it ([`SimFailure`]).
//!
//! **The network it models** (DESIGN.md, "Testing strategy"): asynchronous reliable links
//! under an adversarial but fair scheduler. Messages travel as bytes: each message a node sends
//! is encoded once with [`maftia_core::codec::encode`] and the frame is shared by every
//! recipient of its multipoint [`maftia_core::Target`] (`Target::All` includes the sender,
//! whose copy is delivered like any other). Each event the scheduler picks one in-flight frame —
//! usually uniformly at random (reordering), sometimes the newest (delaying everything older),
//! sometimes the oldest (so every frame is delivered eventually) — and may duplicate it. If
//! enabled, it occasionally splits the nodes in two groups: frames across the cut are held
//! back until the partition heals, a bounded number of events later. A receiver decodes the
//! frame with [`maftia_core::codec::decode`]; a frame an honest node cannot decode is recorded in
//! [`SimState::decode_failures`] and dropped. A run ends at quiescence: nothing in flight and
//! nothing held.
//!
//! **Assumptions.** At most [`SimConfig::max_faulty`] nodes are Byzantine; each follows one
//! [`Strategy`]. Protocol-specific forgeries come from the test through [`Adversary`]. Traffic
//! that a strategy injects beyond its protocol logic is bounded per event and per node
//! ([`SimConfig::byzantine_budget`]), so every run can reach quiescence.
//!
//! **Cost.** Per delivered frame: one decode, one protocol call per receiving copy, one encode
//! per message the call sends (not per recipient), O(recipients) queue pushes sharing one frame
//! buffer, and a BLAKE3 update over the frame. The invariant hook runs after every delivery.
//!
//! [`insecure_crypto`] holds a fast, deliberately insecure [`maftia_crypto::threshold::ThresholdSigner`]
//! for large seed sweeps; it lives here because the `maftia` binary never depends on this
//! crate.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod insecure_crypto;
mod queue;
mod seeds;
mod sim;
pub mod strategy;

pub use seeds::{
    check_seeds, derived_seed, replay_command, replay_command_for, seeds_to_run, SeedError,
};
pub use sim::{Sim, SimState};
pub use strategy::{byzantine_nodes, Adversary, NoHooks, Strategy};

use std::fmt;

/// Environment variable naming the one seed to replay.
pub const SEED_ENV: &str = "MAFTIA_SIM_SEED";
/// Environment variable giving the number of seeds for a soak run.
pub const SEEDS_ENV: &str = "MAFTIA_SIM_SEEDS";

/// Parameters of one simulation run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of nodes.
    pub n: usize,
    /// Seed of the one generator behind every random choice of the run.
    pub seed: u64,
    /// Safety bound on events (inputs and deliveries); reaching it is a failure ("no
    /// quiescence"). Default 200 000.
    pub max_events: u64,
    /// Probability that a delivered frame is also queued again (a duplicate is never
    /// duplicated itself). Default 0.05.
    pub duplicate_probability: f64,
    /// Whether the scheduler occasionally partitions the nodes (and heals later). Default true.
    pub partitions: bool,
    /// Most Byzantine nodes [`Sim::new`] accepts. Default `⌊(n−1)/3⌋` (the asynchronous bound);
    /// wormhole protocols may raise it to `⌊(n−1)/2⌋`.
    pub max_faulty: usize,
    /// Events on which each injecting Byzantine node ([`Strategy::RandomBytes`],
    /// [`Strategy::Replay`], [`Strategy::FloodFuture`]) adds traffic of its own; after that it
    /// only runs its protocol logic (if any). Default 32.
    pub byzantine_budget: u64,
}

impl SimConfig {
    /// Defaults for a group of `n` under `seed`.
    pub fn new(n: usize, seed: u64) -> Self {
        SimConfig {
            n,
            seed,
            max_events: 200_000,
            duplicate_probability: 0.05,
            partitions: true,
            max_faulty: n.saturating_sub(1) / 3,
            byzantine_budget: 32,
        }
    }
}

/// A failed run. `Display` prints the reason, the seed, `n`, the event number and the command
/// that replays exactly this run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFailure {
    pub seed: u64,
    pub reason: String,
    /// The shell command that re-runs this test with this seed only.
    pub replay: String,
    pub n: usize,
    /// Number of events handled when the failure was detected.
    pub event: u64,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulation failed: {}\n  seed {}, n = {}, at event {}\n  replay with: {}",
            self.reason, self.seed, self.n, self.event, self.replay
        )
    }
}

impl std::error::Error for SimFailure {}
