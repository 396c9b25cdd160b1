//! [`HbbftNode`]: HoneyBadgerBFT (the `hbbft` 0.1.1 crate's [`HoneyBadger`]) behind maftia's
//! sans-IO [`Protocol`] trait and the bench harness's [`BenchNode`] trait, so that maftia's
//! harness drives it exactly as it drives maftia's atomic broadcast.
//!
//! # What runs
//! HoneyBadgerBFT (Miller, Xia, Croman, Shi, Song, CCS 2016) as implemented by POA Network's
//! `hbbft` 0.1.1: per epoch, every node proposes a contribution; an asynchronous common subset
//! (ACS: one erasure-coded reliable broadcast (Bracha/AVID with Reed–Solomon shards and Merkle
//! proofs) per proposer, then one binary agreement (Mostéfaoui–Moumen–Raynal with a threshold
//! BLS coin) per proposer) fixes which `≥ n − f` contributions make the epoch's batch. With
//! [`Encryption::Always`] each contribution is threshold-encrypted (`threshold_crypto`, BLS12-381,
//! threshold `f + 1`) before the ACS and decrypted after it from `f + 1` verified decryption
//! shares (censorship resilience, the paper's Sec. 4.4); with [`Encryption::Never`] it is sent in
//! the clear. Guarantees are hbbft's (agreement, total order, censorship resilience) under its
//! assumptions: asynchronous network, `n > 3f` with `f = ⌊(n − 1)/3⌋` (hbbft derives `f` from `n`,
//! so the adapter refuses any other `f`), a trusted dealer for the threshold keys (here
//! [`NetworkInfo::generate_map`], seeded). Message complexity per epoch is hbbft's:
//! `O(n²)` RBC messages per proposer and `O(n²)` per BA round, so `O(n³)` in total.
//!
//! # How maftia's batching maps onto hbbft's
//! maftia's `batch_size` is per node: in every round each node sends the oldest `batch_size`
//! requests of its own pending queue, and a decided vector holds `n − f` to `n` such batches.
//! hbbft's [`HoneyBadger`] takes one contribution per node per epoch, any type; its
//! `QueueingHoneyBadger` instead takes a *total* batch size `B` and lets each node propose `B/n`
//! random transactions from a queue that all nodes share (clients send every transaction to
//! every node, and the random choice avoids duplicates). In this harness each node gets its own,
//! distinct requests (like maftia's ABC clients), so the adapter uses [`HoneyBadger`] directly
//! with maftia's queue discipline: the contribution of an epoch is the oldest `batch_size`
//! requests of the node's own queue (that is `QueueingHoneyBadger` with `B = n · batch_size`,
//! minus its random choice and its `DynamicHoneyBadger` membership layer, which this
//! static-membership comparison does not use and would only add cost to hbbft's side). Requests
//! stay queued until an epoch's batch contains the node's contribution; a node whose
//! contribution was left out of the subset proposes the same requests again, as maftia's ABC
//! does. A node proposes as soon as it has a request and no proposal for the current epoch, as
//! maftia's ABC starts a round, or (with a contribution that may be empty) once another node's
//! contribution to the epoch has arrived, as maftia's ABC answers a round others started. In the harness every
//! queue is kept full, so every contribution holds `batch_size` requests, except each node's
//! first (made at its first request, with that one request, as maftia's first batch is).
//!
//! # Costs kept equal
//! Everything the harness does to maftia's nodes it does to these: every message is encoded
//! with [`maftia_core::codec`] (postcard in maftia's versioned envelope) and decoded at each
//! recipient, the same request bytes and pending target, the same seed. hbbft's own internal
//! costs (bincode for contributions, Reed–Solomon shards, Merkle proofs, `pairing` 0.14
//! arithmetic) are its own and are part of what is measured. hbbft authenticates nothing itself
//! (it assumes authenticated channels); neither does the harness's transport, for either system.
//!
//! # Limits
//! hbbft handles messages at most `max_future_epochs` (3) epochs ahead of a node and records
//! later ones as faults (its `SenderQueue` would defer them). With `threads = 1` no node lags; with
//! several threads a node that fell that far behind would make the harness stop the run on the
//! fault rather than report a figure (not seen with 2 threads at n = 4 and 7).
use crate::rng::Rng04;
use hbbft::honey_badger::{self, HoneyBadger};
use hbbft::NetworkInfo;
use maftia_bench::{BenchError, BenchNode, Group, RequestMaker, RunSpec};
use maftia_core::{NodeId, Protocol, ProtocolStep, Step, Target};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;
use thiserror::Error;

/// hbbft's threshold encryption schedule, as the comparison uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Encryption {
    /// `EncryptionSchedule::Never`: contributions in the clear.
    Never,
    /// `EncryptionSchedule::Always`: every contribution threshold-encrypted, every epoch.
    Always,
}

impl Encryption {
    fn schedule(self) -> honey_badger::EncryptionSchedule {
        match self {
            Encryption::Never => honey_badger::EncryptionSchedule::Never,
            Encryption::Always => honey_badger::EncryptionSchedule::Always,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encryption::Never => "hbbft",
            Encryption::Always => "hbbft+enc",
        }
    }
}

/// The message hbbft nodes exchange (a serde type: the harness encodes it with maftia's codec).
pub type HbbftMessage = honey_badger::Message<NodeId>;

/// What a node delivers per epoch: the requests of the epoch's batch, contributions in proposer
/// order, each contribution's requests in its order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HbbftDelivery {
    pub epoch: u64,
    pub requests: Vec<Vec<u8>>,
}

/// How a peer misbehaved, as hbbft saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum HbbftFault {
    /// A fault hbbft put in its fault log.
    Protocol(honey_badger::FaultKind),
    /// hbbft refused the peer's message with an error (e.g. a non-member sender, a message
    /// that breaks its subset or decryption state); the text is hbbft's.
    Rejected(String),
    /// hbbft refused this node's own proposal while it handled a message: a local failure, not
    /// the peer's, recorded against this node itself so that a run stops on it instead of
    /// stalling.
    OwnProposalFailed(String),
}

/// Local misuse of [`HbbftNode::handle_input`], or hbbft failing to take a proposal.
#[derive(Debug, Error)]
pub enum HbbftNodeError {
    #[error("invalid parameters: {0}")]
    InvalidParams(&'static str),
    #[error("request of {len} bytes exceeds the maximum of {max}")]
    RequestTooLarge { len: usize, max: usize },
    #[error("pending queue full ({max} requests)")]
    QueueFull { max: usize },
    #[error("hbbft refused our proposal: {0}")]
    Propose(String),
}

/// Batching parameters of an [`HbbftNode`] (maftia's `AbcParams` semantics, see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HbbftParams {
    /// Most requests this node contributes per epoch.
    pub batch_size: usize,
    /// Largest request accepted.
    pub max_request_size: usize,
    /// Most requests waiting in the pending queue; input beyond it is refused.
    pub max_pending: usize,
}

/// One HoneyBadgerBFT node with maftia's pending-queue discipline (see the module doc).
pub struct HbbftNode {
    our_id: NodeId,
    honey_badger: HoneyBadger<Vec<Vec<u8>>, NodeId>,
    params: HbbftParams,
    /// Requests not yet delivered, oldest first; the front `proposed.count` are this node's
    /// contribution to epoch `proposed.epoch`.
    pending: VecDeque<Vec<u8>>,
    proposed: Option<Proposed>,
}

#[derive(Clone, Copy, Debug)]
struct Proposed {
    epoch: u64,
    count: usize,
}

impl HbbftNode {
    pub fn new(
        netinfo: NetworkInfo<NodeId>,
        encryption: Encryption,
        params: HbbftParams,
    ) -> Result<Self, HbbftNodeError> {
        if params.batch_size == 0 || params.max_pending == 0 || params.max_request_size == 0 {
            return Err(HbbftNodeError::InvalidParams(
                "batch_size, max_request_size and max_pending must be positive",
            ));
        }
        let our_id = *netinfo.our_id();
        let honey_badger = HoneyBadger::builder(Arc::new(netinfo))
            .encryption_schedule(encryption.schedule())
            .build();
        Ok(HbbftNode {
            our_id,
            honey_badger,
            params,
            pending: VecDeque::new(),
            proposed: None,
        })
    }

    /// Requests waiting, this node's undelivered contribution included.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Epochs output so far (the next epoch's number).
    pub fn epoch(&self) -> u64 {
        self.honey_badger.next_epoch()
    }

    /// Whether to propose for the current epoch: not yet proposed in it, and either requests
    /// are waiting or another node's contribution to it has arrived — then ours may be empty.
    /// That is maftia's ABC rule (a round starts when a node has requests or another node has
    /// started it). `QueueingHoneyBadger` waits for more than `f` contributions instead, which
    /// relies on every node seeing every transaction: here, with each node's requests its own,
    /// a node left with requests after the others emptied their queues would wait forever for
    /// an epoch only it wants, since the subset needs `n − f` contributions.
    fn should_propose(&self) -> bool {
        !self.honey_badger.has_input()
            && (!self.pending.is_empty() || self.honey_badger.received_proposals() > 0)
    }

    /// Propose the oldest `batch_size` requests for the current epoch while
    /// [`Self::should_propose`] (a proposal can complete an epoch whose other contributions
    /// are already in, which starts the next one).
    fn propose_while_ready(
        &mut self,
        rng: &mut dyn RngCore,
        step: &mut ProtocolStep<Self>,
    ) -> Result<(), HbbftNodeError> {
        while self.should_propose() {
            let count = self.params.batch_size.min(self.pending.len());
            let contribution: Vec<Vec<u8>> = self.pending.iter().take(count).cloned().collect();
            let epoch = self.honey_badger.next_epoch();
            let hb_step = self
                .honey_badger
                .propose(&contribution, &mut Rng04(rng))
                .map_err(|e| HbbftNodeError::Propose(e.to_string()))?;
            self.proposed = Some(Proposed { epoch, count });
            self.absorb(hb_step, step);
        }
        Ok(())
    }

    /// Translate an hbbft step into ours: hbbft's `Target::All` means every *other* node (hbbft
    /// handles its own copy internally), so it becomes [`Target::Others`].
    fn absorb(
        &mut self,
        hb_step: honey_badger::Step<Vec<Vec<u8>>, NodeId>,
        step: &mut ProtocolStep<Self>,
    ) {
        for fault in hb_step.fault_log.0 {
            step.fault(fault.node_id, HbbftFault::Protocol(fault.kind));
        }
        for message in hb_step.messages {
            let target = match message.target {
                hbbft::Target::All => Target::Others,
                hbbft::Target::Node(id) => Target::Node(id),
            };
            step.send(target, message.message);
        }
        for batch in hb_step.output {
            let epoch = batch.epoch;
            if let Some(proposed) = self.proposed {
                if proposed.epoch == epoch {
                    // Our contribution made the batch: those requests are delivered. If it did
                    // not, they stay at the front of the queue and are proposed again.
                    if batch.contributions.contains_key(&self.our_id) {
                        let delivered = proposed.count.min(self.pending.len());
                        self.pending.drain(..delivered);
                    }
                    self.proposed = None;
                }
            }
            step.output(HbbftDelivery {
                epoch,
                requests: batch.into_tx_iter().collect(),
            });
        }
    }
}

impl Protocol for HbbftNode {
    type Message = HbbftMessage;
    type Input = Vec<u8>;
    type Output = HbbftDelivery;
    type FaultKind = HbbftFault;
    type Error = HbbftNodeError;

    fn our_id(&self) -> NodeId {
        self.our_id
    }

    fn handle_input(
        &mut self,
        request: Vec<u8>,
        rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, HbbftNodeError> {
        if request.len() > self.params.max_request_size {
            return Err(HbbftNodeError::RequestTooLarge {
                len: request.len(),
                max: self.params.max_request_size,
            });
        }
        if self.pending.len() >= self.params.max_pending {
            return Err(HbbftNodeError::QueueFull {
                max: self.params.max_pending,
            });
        }
        self.pending.push_back(request);
        let mut step = Step::new();
        self.propose_while_ready(rng, &mut step)?;
        Ok(step)
    }

    fn handle_message(
        &mut self,
        from: NodeId,
        message: HbbftMessage,
        rng: &mut dyn RngCore,
    ) -> ProtocolStep<Self> {
        let mut step = Step::new();
        match self.honey_badger.handle_message(&from, message) {
            Ok(hb_step) => self.absorb(hb_step, &mut step),
            Err(error) => step.fault(from, HbbftFault::Rejected(error.to_string())),
        }
        // A new epoch may have started: contribute to it.
        if let Err(error) = self.propose_while_ready(rng, &mut step) {
            step.fault(
                self.our_id,
                HbbftFault::OwnProposalFailed(error.to_string()),
            );
        }
        step
    }

    fn terminated(&self) -> bool {
        false
    }
}

impl BenchNode for HbbftNode {
    fn pending_requests(&self) -> usize {
        self.pending()
    }

    /// An epoch's batch is one output, emitted when the epoch completes.
    fn completed_rounds(&self, _last_output_round: Option<u64>) -> u64 {
        self.epoch()
    }

    fn record_output(
        output: &HbbftDelivery,
        ids: &mut Vec<u64>,
        chain: &mut blake3::Hasher,
    ) -> u64 {
        // The same chain as maftia's ABC rows: the round (epoch), the request count and the
        // delivered request ids (the id names the request's content, fixed by the seed).
        let before = ids.len();
        ids.extend(output.requests.iter().filter_map(|r| request_id(r)));
        let mut staged = Vec::with_capacity(16 + 8 * (ids.len() - before));
        staged.extend_from_slice(&output.epoch.to_le_bytes());
        staged.extend_from_slice(&(output.requests.len() as u64).to_le_bytes());
        for id in &ids[before..] {
            staged.extend_from_slice(&id.to_le_bytes());
        }
        chain.update(&staged);
        output.epoch
    }
}

/// The request id the harness puts in the first 8 bytes of each request.
fn request_id(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// The batching parameters the harness's maftia ABC nodes get for `spec`.
pub fn params_for(spec: &RunSpec) -> HbbftParams {
    HbbftParams {
        batch_size: spec.batch_size,
        max_request_size: spec.request_size,
        max_pending: spec.pending().max(spec.batch_size),
    }
}

/// Deal hbbft's keys for `spec` (seeded) and build its nodes, in id order.
pub fn hbbft_nodes(spec: &RunSpec, encryption: Encryption) -> Result<Vec<HbbftNode>, BenchError> {
    let n = spec.n;
    if n == 0 || n > usize::from(u16::MAX) {
        return Err(BenchError::InvalidSpec("n must be in 1..=65535".into()));
    }
    if spec.f != (n - 1) / 3 {
        return Err(BenchError::InvalidSpec(format!(
            "hbbft 0.1.1 always tolerates f = ⌊(n − 1)/3⌋ = {}, not f = {}",
            (n - 1) / 3,
            spec.f
        )));
    }
    let mut rng = ChaCha20Rng::seed_from_u64(spec.seed);
    let ids = (0..n).filter_map(|i| u16::try_from(i).ok().map(NodeId));
    let netinfos = NetworkInfo::generate_map(ids, &mut Rng04(&mut rng))
        .map_err(|e| BenchError::Setup(format!("hbbft key generation: {e}")))?;
    let params = params_for(spec);
    netinfos
        .into_values()
        .map(|netinfo| {
            HbbftNode::new(netinfo, encryption, params)
                .map_err(|e| BenchError::Setup(e.to_string()))
        })
        .collect()
}

/// The harness group of `spec`'s hbbft nodes: plain requests made from a seeded template, no
/// maftia threshold key sets (their counters stay at zero).
pub fn hbbft_group(spec: &RunSpec, encryption: Encryption) -> Result<Group<HbbftNode>, BenchError> {
    let nodes = hbbft_nodes(spec, encryption)?;
    let mut template = vec![0u8; spec.request_size];
    ChaCha20Rng::seed_from_u64(spec.seed ^ 0x4b42_7465_6d70).fill_bytes(&mut template);
    Ok(Group {
        nodes,
        requests: RequestMaker::Plain { template },
        counters: Default::default(),
    })
}

/// Run hbbft through maftia's harness (see the crate documentation); `spec.workload` is ignored.
pub fn run_hbbft(
    spec: &RunSpec,
    encryption: Encryption,
) -> Result<maftia_bench::RunReport, BenchError> {
    crate::check_spec(spec)?;
    let group = hbbft_group(spec, encryption)?;
    maftia_bench::drive(spec, group)
}
