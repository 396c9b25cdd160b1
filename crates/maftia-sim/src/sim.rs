//! The simulator: nodes, the in-flight queue, the scheduler and the Byzantine strategies.
use crate::queue::AgeQueue;
use crate::strategy::{Adversary, Strategy, FLOOD_PER_EVENT, RANDOM_FRAME_MAX, REPLAY_ARCHIVE};
use crate::{replay_command, SimConfig, SimFailure};
use maftia_core::codec::{self, DecodeError, HEADER_LEN, MAGIC, WIRE_VERSION};
use maftia_core::{Fault, NodeId, Protocol, ProtocolStep, Target};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// One encoded message, shared by all its recipients.
type Frame = Arc<[u8]>;

/// One in 16 picks takes the oldest frame: every frame is delivered eventually.
const PICK_OLDEST: u32 = 1;
/// Four in 16 picks take the newest frame, which delays everything older.
const PICK_NEWEST: u32 = 4;
/// A partition starts on about one event in this many (when none is active).
const PARTITION_ODDS: u32 = 64;
/// Bounds, in events, on how long a partition lasts.
const PARTITION_EVENTS: std::ops::RangeInclusive<u64> = 4..=128;

/// Event kinds as hashed into the trace.
const TRACE_INPUT: u8 = 0;
const TRACE_DELIVER: u8 = 1;

/// A frame on its way from `from` to `to`.
struct InFlight {
    from: NodeId,
    to: NodeId,
    /// For a two-copy node's message to itself: the copy that sent it, the only one that gets
    /// it back. `None`: every copy of `to` receives the frame.
    to_copy: Option<u8>,
    frame: Frame,
    /// Duplicates are not duplicated again.
    duplicate: bool,
}

struct Partition {
    /// Which side of the cut each node is on.
    side: Vec<bool>,
    /// Delivery events until the partition heals.
    remaining: u64,
}

impl Partition {
    fn separates(&self, a: NodeId, b: NodeId) -> bool {
        self.side[a.index()] != self.side[b.index()]
    }
}

/// One node: its protocol copies (two for equivocating and twin nodes) and the adversary's
/// bookkeeping for it.
struct NodeSlot<P: Protocol> {
    copies: Vec<P>,
    outputs: Vec<Vec<P::Output>>,
    strategy: Option<Strategy>,
    /// Events (inputs and deliveries) the node handled, for [`Strategy::CrashAt`].
    handled: u64,
    frames_sent: u64,
    /// Injection events left ([`crate::SimConfig::byzantine_budget`]).
    budget: u64,
    /// For [`Strategy::Equivocate`]: the copy whose messages reach each node.
    copy_for_peer: Vec<u8>,
    /// Recent frames, for [`Strategy::Replay`] and [`Strategy::RandomBytes`] (mutations).
    archive: VecDeque<Frame>,
}

impl<P: Protocol> NodeSlot<P> {
    fn remember(&mut self, frame: &Frame) {
        if self.archive.len() == REPLAY_ARCHIVE {
            self.archive.pop_front();
        }
        self.archive.push_back(Arc::clone(frame));
    }
}

/// What a simulated group looks like between events: what invariants and tests inspect.
pub struct SimState<P: Protocol> {
    n: usize,
    nodes: Vec<NodeSlot<P>>,
    byzantine: BTreeMap<NodeId, Strategy>,
    faults: Vec<(NodeId, Fault<P::FaultKind>)>,
    decode_failures: Vec<(NodeId, NodeId, DecodeError)>,
    events: u64,
}

impl<P: Protocol> SimState<P> {
    pub fn n(&self) -> usize {
        self.n
    }

    /// Whether `id` is a member that follows the protocol (false for ids outside the group).
    pub fn is_honest(&self, id: NodeId) -> bool {
        self.nodes
            .get(id.index())
            .is_some_and(|slot| slot.strategy.is_none())
    }

    /// The honest members, in id order.
    pub fn honest(&self) -> impl Iterator<Item = NodeId> + '_ {
        NodeId::all(self.n).filter(|id| self.is_honest(*id))
    }

    /// The Byzantine members and their strategies, in id order.
    pub fn byzantine(&self) -> impl Iterator<Item = (NodeId, &Strategy)> + '_ {
        self.byzantine.iter().map(|(id, strategy)| (*id, strategy))
    }

    /// The strategy of `id`, `None` for an honest node.
    pub fn strategy(&self, id: NodeId) -> Option<&Strategy> {
        self.byzantine.get(&id)
    }

    /// Outputs of `id`'s copy 0 (for an honest node: the node's), in order.
    ///
    /// # Panics
    /// If `id` is not a member.
    pub fn outputs(&self, id: NodeId) -> &[P::Output] {
        &self.nodes[id.index()].outputs[0]
    }

    /// `id`'s protocol instance (copy 0).
    ///
    /// # Panics
    /// If `id` is not a member.
    pub fn node(&self, id: NodeId) -> &P {
        &self.nodes[id.index()].copies[0]
    }

    /// Copy `copy` of `id`'s instance: copy 1 exists only for [`Strategy::Equivocate`] and
    /// [`Strategy::Twins`] nodes.
    pub fn node_copy(&self, id: NodeId, copy: usize) -> Option<&P> {
        self.nodes.get(id.index())?.copies.get(copy)
    }

    /// Outputs of copy `copy` of `id` (empty if there is no such copy).
    pub fn copy_outputs(&self, id: NodeId, copy: usize) -> &[P::Output] {
        self.nodes
            .get(id.index())
            .and_then(|slot| slot.outputs.get(copy))
            .map_or(&[], Vec::as_slice)
    }

    /// Evidence honest nodes recorded: (reporter, fault), in the order it was reported.
    pub fn faults(&self) -> &[(NodeId, Fault<P::FaultKind>)] {
        &self.faults
    }

    /// Frames honest nodes could not decode: (reporter, sender, error).
    pub fn decode_failures(&self) -> &[(NodeId, NodeId, DecodeError)] {
        &self.decode_failures
    }

    /// Frames `id` has sent so far, counted per recipient (duplicates made by the network not
    /// included). Zero for ids outside the group.
    pub fn frames_sent(&self, id: NodeId) -> u64 {
        self.nodes
            .get(id.index())
            .map_or(0, |slot| slot.frames_sent)
    }

    /// Events (inputs and deliveries) so far.
    pub fn event_count(&self) -> u64 {
        self.events
    }
}

/// A deterministic simulation of `n` nodes running protocol `P`.
pub struct Sim<P: Protocol> {
    config: SimConfig,
    state: SimState<P>,
    /// The one generator behind every random choice.
    rng: ChaCha8Rng,
    adversary: Box<dyn Adversary<P>>,
    /// Frames in flight, by age; those across a partition's cut are held.
    network: AgeQueue<InFlight>,
    partition: Option<Partition>,
    /// Partitions started so far.
    partitions_started: u64,
    next_seq: u64,
    trace: blake3::Hasher,
    /// A local failure (an unencodable message) found while executing a step.
    local_failure: Option<String>,
}

impl<P: Protocol> Sim<P>
where
    P::Message: Clone,
{
    /// Build the group: `factory(id, copy)` makes node `id`'s instance; `copy` is 0, or 1 for
    /// the second copy of an [`Strategy::Equivocate`] or [`Strategy::Twins`] node.
    ///
    /// # Panics
    /// On harness misuse: a Byzantine id outside the group, more than
    /// [`SimConfig::max_faulty`] Byzantine nodes, or a duplicate probability outside `[0, 1]`.
    pub fn new(
        config: SimConfig,
        byzantine: BTreeMap<NodeId, Strategy>,
        mut factory: impl FnMut(NodeId, usize) -> P,
        adversary: Box<dyn Adversary<P>>,
    ) -> Self {
        let n = config.n;
        assert!(n >= 1, "a simulation needs at least one node");
        assert!(
            byzantine.len() <= config.max_faulty,
            "{} Byzantine nodes, but at most max_faulty = {} are allowed with n = {n}",
            byzantine.len(),
            config.max_faulty
        );
        if let Some(id) = byzantine.keys().find(|id| id.index() >= n) {
            panic_misuse(format!("Byzantine node {id} is outside the group of {n}"));
        }
        assert!(
            (0.0..=1.0).contains(&config.duplicate_probability),
            "duplicate_probability {} is not a probability",
            config.duplicate_probability
        );
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let nodes = NodeId::all(n)
            .map(|id| {
                let strategy = byzantine.get(&id).cloned();
                let copies = strategy.as_ref().map_or(1, Strategy::copies);
                let mut copy_for_peer = Vec::new();
                if strategy == Some(Strategy::Equivocate) {
                    let mut others: Vec<NodeId> = NodeId::all(n).filter(|o| *o != id).collect();
                    others.shuffle(&mut rng);
                    copy_for_peer = vec![0; n];
                    for other in &others[others.len() / 2..] {
                        copy_for_peer[other.index()] = 1;
                    }
                }
                NodeSlot {
                    copies: (0..copies).map(|copy| factory(id, copy)).collect(),
                    outputs: (0..copies).map(|_| Vec::new()).collect(),
                    strategy,
                    handled: 0,
                    frames_sent: 0,
                    budget: config.byzantine_budget,
                    copy_for_peer,
                    archive: VecDeque::new(),
                }
            })
            .collect();
        let mut trace = blake3::Hasher::new_derive_key("maftia 2026-11 sim trace");
        trace.update(&config.seed.to_le_bytes());
        trace.update(&(n as u64).to_le_bytes());
        Sim {
            state: SimState {
                n,
                nodes,
                byzantine,
                faults: Vec::new(),
                decode_failures: Vec::new(),
                events: 0,
            },
            config,
            rng,
            adversary,
            network: AgeQueue::new(),
            partition: None,
            partitions_started: 0,
            next_seq: 0,
            trace,
            local_failure: None,
        }
    }

    /// Give node `id` a local input. `input(copy)` is called once per copy, so equivocating
    /// and twin nodes can get different inputs; [`Strategy::Silent`] and
    /// [`Strategy::RandomBytes`] nodes, and crashed nodes, ignore inputs. Messages the input
    /// produces are queued, not delivered (that is [`Sim::run`]'s job). Returns the first local
    /// error a copy reported (the other copy still gets its input).
    ///
    /// # Panics
    /// If `id` is not a member.
    pub fn input(&mut self, id: NodeId, input: impl Fn(usize) -> P::Input) -> Result<(), P::Error> {
        self.state.events += 1;
        self.trace_event(TRACE_INPUT, id, id, None, &[]);
        let slot = &mut self.state.nodes[id.index()];
        if !Self::handles_events(slot) {
            return Ok(());
        }
        slot.handled += 1;
        let mut first_error = None;
        for copy in 0..slot_copies(&self.state, id) {
            let mut call_rng = self.call_rng();
            let result =
                self.state.nodes[id.index()].copies[copy].handle_input(input(copy), &mut call_rng);
            match result {
                Ok(step) => self.execute(id, copy, step),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.inject(id);
        first_error.map_or(Ok(()), Err)
    }

    /// Deliver frames until the network is quiescent (nothing in flight, nothing held by a
    /// partition), calling `invariant` after every delivery. Fails when the invariant does,
    /// when a node produces a message that cannot be encoded, or when the event count reaches
    /// [`SimConfig::max_events`] first. May be called again after more inputs.
    pub fn run(
        &mut self,
        mut invariant: impl FnMut(&SimState<P>) -> Result<(), String>,
    ) -> Result<(), SimFailure> {
        loop {
            if let Some(reason) = self.local_failure.take() {
                return Err(self.fail(reason));
            }
            if self.network.deliverable() == 0 {
                if self.network.is_empty() {
                    return Ok(());
                }
                // Only frames across the cut are left: the partition heals now.
                self.heal();
                continue;
            }
            if self.state.events >= self.config.max_events {
                return Err(self.fail(format!(
                    "no quiescence after {} events ({} frames in flight, {} held by a partition)",
                    self.state.events,
                    self.network.deliverable(),
                    self.network.held()
                )));
            }
            let Some(message) = self.pick() else { continue };
            if !message.duplicate
                && self.config.duplicate_probability > 0.0
                && self.rng.gen_bool(self.config.duplicate_probability)
            {
                let duplicate = InFlight {
                    from: message.from,
                    to: message.to,
                    to_copy: message.to_copy,
                    frame: Arc::clone(&message.frame),
                    duplicate: true,
                };
                self.queue(duplicate, false);
            }
            self.deliver(message);
            if let Some(reason) = self.local_failure.take() {
                return Err(self.fail(reason));
            }
            if let Err(reason) = invariant(&self.state) {
                return Err(self.fail(format!("invariant violated: {reason}")));
            }
            self.partition_tick();
        }
    }

    pub fn state(&self) -> &SimState<P> {
        &self.state
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// BLAKE3 over every event so far (kind, from, to, receiving copy, frame bytes), in order.
    pub fn trace_hash(&self) -> [u8; 32] {
        self.trace.clone().finalize().into()
    }

    /// Events (inputs and deliveries) so far.
    pub fn events(&self) -> u64 {
        self.state.events
    }

    /// How many times the scheduler has partitioned the network so far.
    pub fn partitions_started(&self) -> u64 {
        self.partitions_started
    }

    /// Whether nothing is in flight or held.
    pub fn is_quiescent(&self) -> bool {
        self.network.is_empty()
    }

    /// A failure at the current event, for checks a test makes after [`Sim::run`].
    pub fn fail(&self, reason: impl Into<String>) -> SimFailure {
        SimFailure {
            seed: self.config.seed,
            reason: reason.into(),
            replay: replay_command(self.config.seed),
            n: self.config.n,
            event: self.state.events,
        }
    }

    // ----- internals -----

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// A fresh generator for one protocol call, seeded from the simulation's.
    fn call_rng(&mut self) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.rng.next_u64())
    }

    fn trace_event(&mut self, kind: u8, from: NodeId, to: NodeId, copy: Option<u8>, bytes: &[u8]) {
        let mut header = [0u8; 14];
        header[0] = kind;
        header[1..3].copy_from_slice(&from.0.to_le_bytes());
        header[3..5].copy_from_slice(&to.0.to_le_bytes());
        header[5] = copy.map_or(0xff, |c| c);
        header[6..14].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.trace.update(&header);
        self.trace.update(bytes);
    }

    /// Whether the node's protocol runs for the next event (and not silent or crashed).
    fn handles_events(slot: &NodeSlot<P>) -> bool {
        match &slot.strategy {
            Some(Strategy::Silent | Strategy::RandomBytes) => false,
            Some(Strategy::CrashAt(k)) => slot.handled < *k,
            _ => true,
        }
    }

    /// Take the next frame to deliver (`None` only if nothing is deliverable).
    fn pick(&mut self) -> Option<InFlight> {
        let deliverable = self.network.deliverable();
        if deliverable == 0 {
            return None;
        }
        let roll = self.rng.gen_range(0..16);
        let rank = if roll < PICK_OLDEST {
            0
        } else if roll < PICK_OLDEST + PICK_NEWEST {
            deliverable - 1
        } else {
            self.rng.gen_range(0..deliverable)
        };
        self.network.take_by_rank(rank)
    }

    /// Put a frame on the network, behind the partition if it crosses the cut. `fresh`: sent
    /// by a node (counted in [`SimState::frames_sent`]), not a network duplicate.
    fn queue(&mut self, message: InFlight, fresh: bool) {
        if fresh {
            self.state.nodes[message.from.index()].frames_sent += 1;
        }
        let deliverable = !self
            .partition
            .as_ref()
            .is_some_and(|p| p.separates(message.from, message.to));
        let seq = self.next_seq();
        self.network.push(seq, message, deliverable);
    }

    fn send_frame(&mut self, from: NodeId, to: NodeId, to_copy: Option<u8>, frame: &Frame) {
        let message = InFlight {
            from,
            to,
            to_copy,
            frame: Arc::clone(frame),
            duplicate: false,
        };
        self.queue(message, true);
    }

    /// Carry out what copy `copy` of node `id` asked for in `step`.
    fn execute(&mut self, id: NodeId, copy: usize, step: ProtocolStep<P>) {
        let n = self.state.n;
        let slot = &mut self.state.nodes[id.index()];
        slot.outputs[copy].extend(step.outputs);
        let strategy = slot.strategy.clone();
        if strategy.is_none() {
            self.state
                .faults
                .extend(step.faults.into_iter().map(|fault| (id, fault)));
        }
        let two_copies = self.state.nodes[id.index()].copies.len() > 1;
        for targeted in step.messages {
            let mut message = targeted.message;
            if strategy == Some(Strategy::InvalidShares) {
                if let Some(corrupted) = self.adversary.corrupt(&message, &mut self.rng) {
                    message = corrupted;
                }
            }
            let frame: Frame = match codec::encode(&message) {
                Ok(bytes) => bytes.into(),
                Err(e) => {
                    self.local_failure.get_or_insert(format!(
                        "{id} (copy {copy}) produced a message that cannot be encoded: {e}"
                    ));
                    continue;
                }
            };
            if strategy == Some(Strategy::Replay) {
                self.state.nodes[id.index()].remember(&frame);
            }
            for to in targeted.target.recipients(id, n) {
                let to_copy = if two_copies && to == id {
                    // A two-copy node's message to itself stays within that copy.
                    Some(copy as u8)
                } else {
                    if strategy == Some(Strategy::Equivocate)
                        && usize::from(self.state.nodes[id.index()].copy_for_peer[to.index()])
                            != copy
                    {
                        continue;
                    }
                    None
                };
                self.send_frame(id, to, to_copy, &frame);
            }
        }
    }

    fn deliver(&mut self, message: InFlight) {
        self.state.events += 1;
        self.trace_event(
            TRACE_DELIVER,
            message.from,
            message.to,
            message.to_copy,
            &message.frame,
        );
        let to = message.to;
        let slot = &mut self.state.nodes[to.index()];
        if slot.strategy == Some(Strategy::RandomBytes) {
            slot.handled += 1;
            slot.remember(&message.frame);
            self.inject(to);
            return;
        }
        if !Self::handles_events(slot) {
            return;
        }
        slot.handled += 1;
        let honest = slot.strategy.is_none();
        if slot.strategy == Some(Strategy::Replay) {
            slot.remember(&message.frame);
        }
        match codec::decode::<P::Message>(&message.frame) {
            Err(e) => {
                if honest {
                    self.state.decode_failures.push((to, message.from, e));
                }
            }
            Ok(decoded) => {
                let copies = slot_copies(&self.state, to);
                // Every copy receives the frame, unless it was a copy's message to itself.
                let only = message.to_copy.map(usize::from);
                let last = only.unwrap_or(copies - 1);
                let mut decoded = Some(decoded);
                for copy in (0..copies).filter(|c| only.is_none_or(|o| o == *c)) {
                    let this = if copy == last {
                        decoded.take()
                    } else {
                        decoded.clone()
                    };
                    let Some(this) = this else { break };
                    let mut call_rng = self.call_rng();
                    let step = self.state.nodes[to.index()].copies[copy].handle_message(
                        message.from,
                        this,
                        &mut call_rng,
                    );
                    self.execute(to, copy, step);
                }
            }
        }
        self.inject(to);
    }

    /// Extra traffic of an injecting Byzantine node after one of its events, within budget.
    fn inject(&mut self, id: NodeId) {
        let n = self.state.n;
        let slot = &mut self.state.nodes[id.index()];
        let Some(strategy) = slot.strategy.clone() else {
            return;
        };
        if !strategy.injects() || slot.budget == 0 || n < 2 {
            return;
        }
        slot.budget -= 1;
        match strategy {
            Strategy::RandomBytes => {
                for _ in 0..self.rng.gen_range(1..=3) {
                    let frame = self.random_frame(id);
                    let to = self.random_peer(id);
                    self.send_frame(id, to, None, &frame);
                }
            }
            Strategy::Replay => {
                for _ in 0..self.rng.gen_range(1..=2) {
                    let archive = &self.state.nodes[id.index()].archive;
                    if archive.is_empty() {
                        break;
                    }
                    let pick = self.rng.gen_range(0..archive.len());
                    let frame = Arc::clone(&archive[pick]);
                    let to = self.random_peer(id);
                    self.send_frame(id, to, None, &frame);
                }
            }
            Strategy::FloodFuture => {
                let mut hook_rng = self.call_rng();
                let messages = self.adversary.far_future(&mut hook_rng);
                for message in messages.into_iter().take(FLOOD_PER_EVENT) {
                    match codec::encode(&message) {
                        Ok(bytes) => {
                            let frame: Frame = bytes.into();
                            for to in Target::Others.recipients(id, n) {
                                self.send_frame(id, to, None, &frame);
                            }
                        }
                        Err(e) => {
                            self.local_failure.get_or_insert(format!(
                                "the adversary's far_future message cannot be encoded: {e}"
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// A node other than `id` (the group has at least two members).
    fn random_peer(&mut self, id: NodeId) -> NodeId {
        let n = self.state.n;
        let pick = self.rng.gen_range(0..n - 1);
        // Skip over `id` itself; `pick + 1 < n`, which fits a NodeId for any valid group.
        NodeId(if pick >= id.index() { pick + 1 } else { pick } as u16)
    }

    /// A garbage frame: raw random bytes, or a valid header followed by random bytes, or a
    /// mutation of a frame the node received.
    fn random_frame(&mut self, id: NodeId) -> Frame {
        let kind = self.rng.gen_range(0..4);
        let archive = &self.state.nodes[id.index()].archive;
        if kind == 3 && !archive.is_empty() {
            let mut bytes = archive[self.rng.gen_range(0..archive.len())].to_vec();
            match self.rng.gen_range(0..3) {
                0 if bytes.len() > HEADER_LEN => {
                    for _ in 0..self.rng.gen_range(1..=4) {
                        let at = self.rng.gen_range(HEADER_LEN..bytes.len());
                        bytes[at] ^= 1 << self.rng.gen_range(0..8);
                    }
                }
                1 => {
                    let keep = self
                        .rng
                        .gen_range(HEADER_LEN.min(bytes.len())..=bytes.len());
                    bytes.truncate(keep);
                }
                _ => {
                    let extra = self.rng.gen_range(1..=64);
                    bytes.extend((0..extra).map(|_| self.rng.gen::<u8>()));
                }
            }
            return bytes.into();
        }
        let len = self.rng.gen_range(0..RANDOM_FRAME_MAX);
        let mut bytes = vec![0u8; len];
        self.rng.fill_bytes(&mut bytes);
        if kind >= 2 && len >= HEADER_LEN {
            bytes[..MAGIC.len()].copy_from_slice(&MAGIC);
            bytes[MAGIC.len()] = WIRE_VERSION;
        }
        bytes.into()
    }

    /// After a delivery: count down the partition, or maybe start one.
    fn partition_tick(&mut self) {
        match &mut self.partition {
            Some(partition) => {
                partition.remaining = partition.remaining.saturating_sub(1);
                if partition.remaining == 0 {
                    self.heal();
                }
            }
            None => {
                if self.config.partitions
                    && self.state.n >= 2
                    && self.rng.gen_ratio(1, PARTITION_ODDS)
                {
                    self.start_partition();
                }
            }
        }
    }

    fn start_partition(&mut self) {
        let n = self.state.n;
        let mut side: Vec<bool> = (0..n).map(|_| self.rng.gen()).collect();
        // Make sure both sides are non-empty.
        let a = self.rng.gen_range(0..n);
        let b = (a + self.rng.gen_range(1..n)) % n;
        side[a] = true;
        side[b] = false;
        let partition = Partition {
            side,
            remaining: self.rng.gen_range(PARTITION_EVENTS),
        };
        self.network
            .hold_where(|m| partition.separates(m.from, m.to));
        self.partition = Some(partition);
        self.partitions_started += 1;
    }

    fn heal(&mut self) {
        self.partition = None;
        self.network.release_all();
    }
}

fn slot_copies<P: Protocol>(state: &SimState<P>, id: NodeId) -> usize {
    state.nodes[id.index()].copies.len()
}

#[allow(clippy::panic)] // harness misuse (documented on Sim::new), not a protocol fault
fn panic_misuse(message: String) -> ! {
    panic!("{message}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoHooks;
    use maftia_core::Step;

    /// Gossip: forward every new value to everyone. Lots of traffic, no faults.
    struct Gossip {
        id: NodeId,
        seen: std::collections::BTreeSet<u64>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl Protocol for Gossip {
        type Message = u64;
        type Input = u64;
        type Output = u64;
        type FaultKind = ();
        type Error = Never;

        fn our_id(&self) -> NodeId {
            self.id
        }

        fn handle_input(
            &mut self,
            value: u64,
            _: &mut dyn RngCore,
        ) -> Result<ProtocolStep<Self>, Never> {
            Ok(self.handle_message(self.id, value, &mut rand::rngs::mock::StepRng::new(0, 0)))
        }

        fn handle_message(
            &mut self,
            _: NodeId,
            value: u64,
            _: &mut dyn RngCore,
        ) -> ProtocolStep<Self> {
            let mut step = Step::new();
            if self.seen.insert(value) {
                step.send(Target::Others, value);
                step.output(value);
            }
            step
        }

        fn terminated(&self) -> bool {
            false
        }
    }

    #[test]
    fn partitions_hold_back_exactly_the_frames_across_the_cut() {
        let (mut crossings_held, mut partitions) = (0, 0);
        for seed in 0..20 {
            let n = 7;
            let mut sim = Sim::new(
                SimConfig::new(n, seed),
                BTreeMap::new(),
                |id, _| Gossip {
                    id,
                    seen: Default::default(),
                },
                Box::new(NoHooks),
            );
            for id in NodeId::all(n) {
                sim.input(id, |_| u64::from(id.0)).unwrap();
            }
            // The body of `run`, with a check before each delivery.
            while !sim.network.is_empty() {
                if sim.network.deliverable() == 0 {
                    sim.heal();
                    continue;
                }
                let sides = sim.partition.as_ref().map(|p| p.side.clone());
                crossings_held += sim.network.held();
                let message = sim.pick().unwrap();
                if let Some(side) = sides {
                    let (from, to) = (message.from.index(), message.to.index());
                    assert_eq!(
                        side[from], side[to],
                        "seed {seed}: delivered across the cut"
                    );
                }
                sim.deliver(message);
                sim.partition_tick();
            }
            partitions += sim.partitions_started();
            for id in NodeId::all(n) {
                assert_eq!(
                    sim.state().outputs(id).len(),
                    n,
                    "seed {seed}: {id} missed a value"
                );
            }
        }
        assert!(partitions > 20, "{partitions} partitions");
        assert!(crossings_held > 0);
    }
}
