//! Byzantine strategies and the protocol-specific hooks the adversary uses.
//!
//! A [`Strategy`] says how one corrupted node behaves in a [`crate::Sim`]. Strategies that need
//! to forge protocol messages (an invalid share, a message for a far-future round) ask the
//! protocol's test for them through the [`Adversary`] trait; everything else (silence, crashes,
//! equivocation, replays, garbage frames, twins) is generic over every protocol.
use maftia_core::{NodeId, Protocol};
use rand::seq::SliceRandom;
use rand_core::RngCore;
use std::collections::BTreeMap;

/// How a Byzantine node behaves. A simulation accepts at most
/// [`crate::SimConfig::max_faulty`] of them (by default `f = ⌊(n−1)/3⌋`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Never sends anything and ignores every input and message.
    Silent,
    /// Honest for its first `k` handled events (inputs and messages), then silent forever.
    CrashAt(u64),
    /// Runs two honest copies (copy 0 and copy 1) of the node, which may get different inputs.
    /// Copy 0's messages go only to one half of the other nodes (chosen once by the seeded rng),
    /// copy 1's to the other half; both copies receive every message addressed to the node.
    Equivocate,
    /// Honest logic, but every outgoing message passes through [`Adversary::corrupt`]; when that
    /// returns `Some`, the replacement is sent instead.
    InvalidShares,
    /// Honest logic is replaced: on each message it receives, the node sends 1–3 random frames
    /// (0..4096 bytes) to random peers. Half of them start with a valid codec header (`MAGIC ‖
    /// WIRE_VERSION`) so they reach the body parser; half of those are mutations of a frame the
    /// node received (bit flips, truncation, extension), which probes deeper into the parser.
    RandomBytes,
    /// Honest, plus: keeps an archive of the last [`REPLAY_ARCHIVE`] frames it sent and
    /// received, and on each event re-sends 1–2 random archived frames (as itself) to random
    /// peers.
    Replay,
    /// Honest, plus on each event sends [`Adversary::far_future`] messages (at most
    /// [`FLOOD_PER_EVENT`] of them) to all other nodes.
    FloodFuture,
    /// Two honest copies with the same id and keys (built by the same factory as copy 0 and
    /// copy 1, possibly with different inputs); both receive everything addressed to the node
    /// and both send to everyone.
    Twins,
}

/// Frames a [`Strategy::Replay`] node remembers.
pub const REPLAY_ARCHIVE: usize = 256;
/// Most messages a [`Strategy::FloodFuture`] node sends per event (each to every other node).
pub const FLOOD_PER_EVENT: usize = 2;
/// Longest frame a [`Strategy::RandomBytes`] node makes up.
pub const RANDOM_FRAME_MAX: usize = 4096;

impl Strategy {
    /// One of each strategy (`CrashAt(3)` for the crash), in a fixed order.
    pub fn all() -> Vec<Strategy> {
        vec![
            Strategy::Silent,
            Strategy::CrashAt(3),
            Strategy::Equivocate,
            Strategy::InvalidShares,
            Strategy::RandomBytes,
            Strategy::Replay,
            Strategy::FloodFuture,
            Strategy::Twins,
        ]
    }

    /// Whether the node runs two protocol copies ([`Strategy::Equivocate`], [`Strategy::Twins`]).
    pub fn copies(&self) -> usize {
        match self {
            Strategy::Equivocate | Strategy::Twins => 2,
            _ => 1,
        }
    }

    /// Whether the node's protocol instance is driven at all (false for [`Strategy::Silent`]
    /// and [`Strategy::RandomBytes`], whose honest logic never runs).
    pub fn runs_protocol(&self) -> bool {
        !matches!(self, Strategy::Silent | Strategy::RandomBytes)
    }

    /// Whether the node sends traffic beyond what its protocol logic produces (and so spends
    /// the injection budget, [`crate::SimConfig::byzantine_budget`]).
    pub fn injects(&self) -> bool {
        matches!(
            self,
            Strategy::RandomBytes | Strategy::Replay | Strategy::FloodFuture
        )
    }
}

/// `count` distinct nodes of a group of `n`, chosen deterministically from `seed`, all playing
/// `strategy`. Handy for sweeping strategies over seeds without always corrupting the same id.
///
/// # Panics
/// If `count > n` (a test-harness misuse).
pub fn byzantine_nodes(
    n: usize,
    count: usize,
    strategy: &Strategy,
    seed: u64,
) -> BTreeMap<NodeId, Strategy> {
    assert!(count <= n, "cannot corrupt {count} of {n} nodes");
    let mut rng = <rand_chacha::ChaCha8Rng as rand_core::SeedableRng>::seed_from_u64(
        seed ^ 0x6279_7a61_6e74_696e, // "byzantin": keeps this choice apart from the scheduler's
    );
    let mut ids: Vec<NodeId> = NodeId::all(n).collect();
    ids.shuffle(&mut rng);
    ids.into_iter()
        .take(count)
        .map(|id| (id, strategy.clone()))
        .collect()
}

/// Protocol-specific hooks for the adversary, implemented in each protocol's tests.
///
/// Both hooks default to "nothing": with [`NoHooks`], [`Strategy::InvalidShares`] and
/// [`Strategy::FloodFuture`] nodes behave honestly.
pub trait Adversary<P: Protocol> {
    /// A corrupted version of an outgoing `message` (e.g. with an invalid signature share), or
    /// `None` to send it unchanged.
    fn corrupt(&mut self, _message: &P::Message, _rng: &mut dyn RngCore) -> Option<P::Message> {
        None
    }

    /// Messages for rounds or instances far in the future, which an honest receiver must drop
    /// (and report) without keeping state for them.
    fn far_future(&mut self, _rng: &mut dyn RngCore) -> Vec<P::Message> {
        Vec::new()
    }
}

/// An adversary without protocol-specific hooks.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl<P: Protocol> Adversary<P> for NoHooks {}
