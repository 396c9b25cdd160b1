//! Reliable broadcast: Bracha's protocol, and the erasure-coded AVID variant for large payloads.
//!
//! One [`Rbc`] value is one broadcast instance with a fixed proposer, run by one node.
//!
//! # Guarantees
//! With `n > 3f` nodes of which at most `f` are Byzantine ([`Rbc::new`] rejects smaller
//! groups, e.g. wormhole ones), authenticated point-to-point channels that eventually deliver
//! every message between honest nodes (no timing assumption) and a collision-resistant hash
//! (BLAKE3):
//! - **validity**: if the proposer is honest, every honest node delivers its payload;
//! - **agreement**: no two honest nodes output different [`RbcOutput`]s;
//! - **integrity**: every node outputs at most once, and if the proposer is honest, only what
//!   it proposed;
//! - **totality**: if one honest node outputs, every honest node eventually outputs.
//!
//! A Byzantine proposer can make honest nodes output [`RbcOutput::InvalidEncoding`] (its AVID
//! fragments are not one codeword) — then all of them do, consistently; it cannot make two
//! honest nodes deliver different payloads, nor some deliver and others never.
//!
//! # Protocol
//! **Bracha path** (payload shorter than [`RbcParams::erasure_threshold`]; Bracha 1987,
//! "Asynchronous Byzantine agreement protocols", Information and Computation 75(2), its
//! reliable broadcast primitive): the proposer sends `Send(m)` to all; on the proposer's first `Send`, a node
//! sends `Echo(m)` to all; on `⌈(n+f+1)/2⌉` echoes with the same digest `H(m)`, or on `f+1`
//! `Ready(H(m))`, it sends `Ready(H(m))` once; on `2f+1` `Ready(d)` it delivers the payload
//! whose digest is `d`. Echoes carry the payload itself (classic Bracha), which is how every
//! honest node gets the payload: the first honest `Ready(d)` anywhere was caused by an echo
//! quorum, which holds at least `⌈(n+f+1)/2⌉ − f ≥ f+1` honest echoers, and each of them sent
//! `Echo(m)` to everybody. So a node holding `2f+1` readies for `d` but no `Send` still receives
//! `m` from those honest echoes and delivers it (it keeps at most one echoed payload per peer
//! until it has sent its own `Ready`, then only the readied one).
//!
//! **AVID path** (payload of at least `erasure_threshold` bytes; Cachin–Tessaro 2005,
//! "Asynchronous verifiable information dispersal", SRDS 2005, with dispersal and retrieval
//! folded into one broadcast as in HoneyBadgerBFT's RBC, Miller et al., CCS 2016): the proposer Reed–Solomon-encodes the payload into `n` fragments,
//! any `k = n − 2f` of which reconstruct it ([`erasure`]), builds a Merkle tree over them
//! ([`merkle`]) and sends node `i` `Value{root, fragment_i, proof_i}`. Node `i`, on the
//! proposer's first `Value` with a valid proof for index `i`, sends
//! `EchoFragment{root, fragment_i, proof_i}` to all. It sends `Ready(root)` once on `n − f`
//! valid echoed fragments for `root` or `f+1` `Ready(root)`. On `2f+1` `Ready(root)` and `k`
//! valid fragments of `root` it decodes, **re-encodes** and recomputes the Merkle root: if it
//! matches, the fragments are one codeword and it delivers the payload; if not, no codeword has
//! that root and it outputs `InvalidEncoding` — every honest node reaches the same verdict from
//! whichever `k` fragments it holds (Cachin–Tessaro's ⊥). Two valid fragments of one root with
//! different lengths already prove there is no codeword, so that case outputs
//! `InvalidEncoding` without decoding.
//!
//! *Deviation*: Cachin–Tessaro state the protocol for `n = 3f+1`, where the echo quorum
//! `⌈(n+f+1)/2⌉` equals `n − f`. For `n > 3f+1` we keep `k = n − 2f` and send `Ready` on
//! `n − f` echoes (as HoneyBadgerBFT does): an echo quorum of `⌈(n+f+1)/2⌉` would only
//! guarantee `⌈(n−f+1)/2⌉ < k` honest echoed fragments, and a node holding `2f+1` readies could
//! then wait forever for its `k`-th fragment. `n − f` echoes hold `≥ n − 2f = k` honest ones,
//! which every honest node receives (totality), and two `(n−f)`-quorums still intersect in an
//! honest node (agreement).
//!
//! A node that delivers on the AVID path without ever getting the proposer's `Value` (a
//! Byzantine proposer may skip it) derives its own fragment and proof from the re-encoded
//! codeword and echoes it then, so [`Protocol::terminated`] (`output given, Ready sent, own
//! fragment echoed`) is reached by every honest node. After `InvalidEncoding` there is no
//! fragment worth echoing and the node terminates without one.
//!
//! The proposer picks the path; receivers accept either (the threshold is a cost choice, not a
//! validity rule), but only the first proposal message from the proposer counts.
//!
//! # Untrusted input
//! Every field is checked before use: payloads are at most [`RbcParams::max_payload`] bytes,
//! fragment indices must equal the echoer's id (and our id in a `Value`), Merkle proofs must
//! have exactly `⌈log2 n⌉` siblings and verify, fragments must be non-empty, of even length and
//! at most `⌈(max_payload + 8)/k⌉` (rounded up to even) bytes. A node's first echo (of either
//! kind) and first `Ready` count; a different second one is [`FaultKind::ConflictingEcho`] /
//! [`FaultKind::ConflictingReady`] evidence, an identical copy is dropped silently (a replayed
//! copy of an honest message is no evidence). The instance keeps at most one echo and one
//! ready per peer, so it stores at most `n + 1` payloads or `n` fragments. Once terminated it
//! drops every message without looking at it.
//!
//! # Complexity
//! `O(n²)` messages either way. Bits: Bracha sends `O(n²|m|)` (every node echoes `m` to all);
//! AVID sends `O(n|m| + n² log n · λ)` in total (`λ` = 256-bit digests) — each node echoes a
//! `|m|/k` fragment plus a `⌈log2 n⌉`-digest proof to all, so the payload crosses the network
//! about `n/(n−2f)` times per node (below 3 at `n = 3f+1`: 2 at `n = 4`, 2.5 at `n = 10`)
//! instead of `n` times (`rbc::tests::avid_sends_a_k_th_of_bracha_bytes` measures it). Computation: Bracha
//! hashes each received payload once; AVID costs the proposer one encode (`O(|m| log n)`) and a
//! Merkle tree, every node `n` proof checks (`O(|m|/k + log n)` hashing each) and one decode +
//! re-encode + tree.
use maftia_core::codec::MAX_MESSAGE_SIZE;
use maftia_core::{GroupConfig, NodeId, Protocol, ProtocolStep, Step, Target};
use maftia_crypto::hash::{hash, Digest};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

pub mod erasure;
pub mod merkle;
#[cfg(test)]
mod tests;

/// Hash context of a Bracha payload digest (what `Ready` names on the Bracha path).
const PAYLOAD_CONTEXT: &str = "maftia 2026-11 rbc bracha payload";

/// Room left below the codec's frame limit for the envelope and for parent protocols that wrap
/// an RBC message (`Message::Rbc(instance, ..)`).
pub const ENVELOPE_RESERVE: usize = 64 * 1024;

/// Tuning of one instance. All nodes of a group must use the same `max_payload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RbcParams {
    /// Payloads of at least this many bytes go the AVID (erasure-coded) path.
    pub erasure_threshold: usize,
    /// Largest payload accepted, in bytes (must leave [`ENVELOPE_RESERVE`] below the codec's
    /// `MAX_MESSAGE_SIZE`).
    pub max_payload: usize,
}

impl Default for RbcParams {
    fn default() -> Self {
        RbcParams {
            erasure_threshold: 1024,
            max_payload: 8 * 1024 * 1024,
        }
    }
}

/// What an instance delivers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RbcOutput {
    /// The proposer's payload.
    Delivered(Vec<u8>),
    /// The proposer's AVID fragments do not form one consistent codeword (Cachin–Tessaro's ⊥);
    /// every honest node outputs this for the same instance.
    InvalidEncoding,
}

/// One AVID fragment with its Merkle proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fragment {
    /// Position of the fragment in the codeword (`0..n`): the id of the node it belongs to.
    pub index: u16,
    /// The fragment's bytes.
    pub data: Vec<u8>,
    /// Sibling digests from the leaf up, exactly `⌈log2 n⌉` of them.
    pub proof: Vec<Digest>,
}

/// Messages of one instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Bracha: the proposer's payload.
    Send(Vec<u8>),
    /// Bracha: a node's echo of the proposer's payload.
    Echo(Vec<u8>),
    /// AVID: the proposer gives node `fragment.index` its fragment.
    Value { root: Digest, fragment: Fragment },
    /// AVID: a node echoes its own fragment to all.
    EchoFragment { root: Digest, fragment: Fragment },
    /// Either path: the sender is ready to deliver the payload with this digest / Merkle root.
    Ready(Digest),
}

/// How a peer misbehaved in this instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// The sender is not a member of the group.
    NonMember,
    /// `Send` or `Value` from a node that is not the proposer.
    NotProposer,
    /// The proposer sent this node two different proposals (`Send`/`Value`).
    ConflictingProposal,
    /// A payload above `max_payload`, or a fragment above the bound that follows from it.
    OversizedPayload,
    /// A fragment that cannot be a shard: empty or of odd length.
    MalformedFragment,
    /// A fragment index that is not the echoer's id (or, in a `Value`, not ours).
    WrongFragmentIndex,
    /// A Merkle proof of the wrong length or that does not lead to the claimed root.
    InvalidProof,
    /// A second, different echo from the same node.
    ConflictingEcho,
    /// A second, different `Ready` from the same node.
    ConflictingReady,
    /// The proposer's fragments do not form a codeword of a well-framed payload.
    InvalidEncoding,
}

/// Local misuse of an instance.
#[derive(Debug, Error, PartialEq)]
pub enum RbcError {
    #[error("{id} is not a member of this group of {n} nodes")]
    NotMember { id: NodeId, n: usize },
    #[error("only the proposer {proposer} may input to this broadcast")]
    NotProposer { proposer: NodeId },
    #[error("this broadcast already has its payload")]
    AlreadyProposed,
    #[error("payload of {size} bytes exceeds the maximum of {max}")]
    PayloadTooLarge { size: usize, max: usize },
    #[error("reliable broadcast needs n > 3f, but the group has n = {n}, f = {f}")]
    TooFewNodes { n: usize, f: usize },
    #[error(
        "max_payload of {max_payload} bytes leaves no room below the {limit}-byte frame limit"
    )]
    MaxPayloadTooLarge { max_payload: usize, limit: usize },
    #[error("erasure coding failed: {0}")]
    ErasureCoding(#[from] reed_solomon_simd::Error),
}

/// The digest `Ready` names on the Bracha path.
pub fn payload_digest(payload: &[u8]) -> Digest {
    hash(PAYLOAD_CONTEXT, &[payload])
}

/// What the proposer sent this node first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proposal {
    Bracha { digest: Digest },
    Avid { root: Digest, leaf: Digest },
}

/// A peer's first echo, kept to count it and to tell a repeat from a conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EchoRecord {
    Payload { digest: Digest },
    Fragment { root: Digest, leaf: Digest },
}

/// Fragments received for one Merkle root.
#[derive(Debug, Default)]
struct RootState {
    /// Length fixed by the first valid fragment for this root.
    fragment_len: Option<usize>,
    /// Valid fragments of that length, by index (at most one per echoing peer).
    fragments: BTreeMap<usize, Vec<u8>>,
    /// Two valid fragments of this root had different lengths: no codeword has this root.
    inconsistent: bool,
}

/// One reliable-broadcast instance with a fixed proposer, run by one node.
#[derive(Debug)]
pub struct Rbc {
    config: GroupConfig,
    our_id: NodeId,
    proposer: NodeId,
    params: RbcParams,
    /// `k = n − 2f`: fragments needed to reconstruct an AVID payload.
    data_shards: usize,
    /// Largest fragment an honest proposer produces for a `max_payload` payload.
    max_fragment_len: usize,
    proposed: bool,
    proposal: Option<Proposal>,
    echo_sent: bool,
    ready_sent: Option<Digest>,
    echoes: BTreeMap<NodeId, EchoRecord>,
    readies: BTreeMap<NodeId, Digest>,
    /// Echoes per (digest or root, is-AVID) and readies per digest: at most `n` keys each,
    /// usually one.
    echo_counts: BTreeMap<(Digest, bool), usize>,
    ready_counts: BTreeMap<Digest, usize>,
    /// Bracha payloads by digest: from `Send` and at most one per echoing peer.
    payloads: BTreeMap<Digest, Vec<u8>>,
    /// AVID fragments by root: at most one root per echoing peer.
    roots: BTreeMap<Digest, RootState>,
    output: Option<RbcOutput>,
    /// The output is a payload decoded from AVID fragments.
    delivered_by_avid: bool,
}

impl Rbc {
    /// A new instance at `our_id` for the broadcast of `proposer`.
    pub fn new(
        config: GroupConfig,
        our_id: NodeId,
        proposer: NodeId,
        params: RbcParams,
    ) -> Result<Rbc, RbcError> {
        for id in [our_id, proposer] {
            if !config.contains(id) {
                return Err(RbcError::NotMember { id, n: config.n() });
            }
        }
        let limit = MAX_MESSAGE_SIZE - ENVELOPE_RESERVE;
        if params.max_payload > limit {
            return Err(RbcError::MaxPayloadTooLarge {
                max_payload: params.max_payload,
                limit,
            });
        }
        if config.n() <= 3 * config.f() {
            // A wormhole group (n > 2f) is valid, but Bracha's quorums need n > 3f.
            return Err(RbcError::TooFewNodes {
                n: config.n(),
                f: config.f(),
            });
        }
        // n > 3f, so k = n − 2f >= f + 1 >= 1.
        let data_shards = config.n() - 2 * config.f();
        Ok(Rbc {
            config,
            our_id,
            proposer,
            params,
            data_shards,
            max_fragment_len: erasure::shard_len(params.max_payload, data_shards),
            proposed: false,
            proposal: None,
            echo_sent: false,
            ready_sent: None,
            echoes: BTreeMap::new(),
            readies: BTreeMap::new(),
            echo_counts: BTreeMap::new(),
            ready_counts: BTreeMap::new(),
            payloads: BTreeMap::new(),
            roots: BTreeMap::new(),
            output: None,
            delivered_by_avid: false,
        })
    }

    pub fn proposer(&self) -> NodeId {
        self.proposer
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    pub fn params(&self) -> &RbcParams {
        &self.params
    }

    /// `k`: how many fragments reconstruct an AVID payload.
    pub fn data_shards(&self) -> usize {
        self.data_shards
    }

    /// The output, once there is one.
    pub fn output(&self) -> Option<&RbcOutput> {
        self.output.as_ref()
    }

    /// Echoed fragments needed for `Ready` on the AVID path: `n − f` (see the module doc).
    fn avid_echo_threshold(&self) -> usize {
        (self.data_shards + self.config.f()).max(self.config.echo_quorum())
    }

    /// Stateless checks of a fragment for `root`, claimed to sit at `expected_index`; returns
    /// the fragment's leaf digest. Cheap checks first: the proof is hashed last.
    fn check_fragment(
        &self,
        root: &Digest,
        fragment: &Fragment,
        expected_index: NodeId,
    ) -> Result<Digest, FaultKind> {
        let index = usize::from(fragment.index);
        if index != expected_index.index() || index >= self.config.n() {
            return Err(FaultKind::WrongFragmentIndex);
        }
        if fragment.data.len() > self.max_fragment_len {
            return Err(FaultKind::OversizedPayload);
        }
        if fragment.data.is_empty() || fragment.data.len() % 2 != 0 {
            return Err(FaultKind::MalformedFragment);
        }
        if fragment.proof.len() != merkle::depth(self.config.n()) {
            return Err(FaultKind::InvalidProof);
        }
        let leaf = merkle::leaf_hash(index, &fragment.data);
        if !merkle::verify_leaf(root, self.config.n(), index, &leaf, &fragment.proof) {
            return Err(FaultKind::InvalidProof);
        }
        Ok(leaf)
    }

    fn handle_send(&mut self, from: NodeId, payload: Vec<u8>, step: &mut ProtocolStep<Self>) {
        if from != self.proposer {
            return step.fault(from, FaultKind::NotProposer);
        }
        if payload.len() > self.params.max_payload {
            return step.fault(from, FaultKind::OversizedPayload);
        }
        let digest = payload_digest(&payload);
        let proposal = Proposal::Bracha { digest };
        match self.proposal {
            Some(first) if first == proposal => return,
            Some(_) => return step.fault(from, FaultKind::ConflictingProposal),
            None => self.proposal = Some(proposal),
        }
        if !self.echo_sent {
            self.echo_sent = true;
            step.send(Target::All, Message::Echo(payload.clone()));
        }
        self.keep_payload(digest, payload);
    }

    fn handle_echo(&mut self, from: NodeId, payload: Vec<u8>, step: &mut ProtocolStep<Self>) {
        if payload.len() > self.params.max_payload {
            return step.fault(from, FaultKind::OversizedPayload);
        }
        let digest = payload_digest(&payload);
        if !self.record_echo(from, EchoRecord::Payload { digest }, step) {
            return;
        }
        self.keep_payload(digest, payload);
    }

    /// Store a Bracha payload unless it can no longer be the one delivered: once we are ready
    /// for `d`, only `d` can gather `2f+1` readies (see the module doc).
    fn keep_payload(&mut self, digest: Digest, payload: Vec<u8>) {
        if self.ready_sent.is_none_or(|ready| ready == digest) {
            self.payloads.entry(digest).or_insert(payload);
        }
    }

    fn handle_value(
        &mut self,
        from: NodeId,
        root: Digest,
        fragment: Fragment,
        step: &mut ProtocolStep<Self>,
    ) {
        if from != self.proposer {
            return step.fault(from, FaultKind::NotProposer);
        }
        let leaf = match self.check_fragment(&root, &fragment, self.our_id) {
            Ok(leaf) => leaf,
            Err(kind) => return step.fault(from, kind),
        };
        let proposal = Proposal::Avid { root, leaf };
        match self.proposal {
            Some(first) if first == proposal => return,
            Some(_) => return step.fault(from, FaultKind::ConflictingProposal),
            None => self.proposal = Some(proposal),
        }
        if !self.echo_sent {
            self.echo_sent = true;
            step.send(Target::All, Message::EchoFragment { root, fragment });
        }
    }

    fn handle_echo_fragment(
        &mut self,
        from: NodeId,
        root: Digest,
        fragment: Fragment,
        step: &mut ProtocolStep<Self>,
    ) {
        let leaf = match self.check_fragment(&root, &fragment, from) {
            Ok(leaf) => leaf,
            Err(kind) => return step.fault(from, kind),
        };
        let index = usize::from(fragment.index);
        if !self.record_echo(from, EchoRecord::Fragment { root, leaf }, step) {
            return;
        }
        if self.ready_sent.is_some_and(|ready| ready != root) {
            return; // counted, but it cannot be the root delivered
        }
        let state = self.roots.entry(root).or_default();
        match state.fragment_len {
            None => state.fragment_len = Some(fragment.data.len()),
            Some(len) if len == fragment.data.len() => {}
            Some(_) => {
                // Both fragments verified against `root`, so the proposer committed to leaves
                // of different lengths: no codeword has this root.
                if !state.inconsistent {
                    state.inconsistent = true;
                    state.fragments.clear();
                    step.fault(self.proposer, FaultKind::InvalidEncoding);
                }
                return;
            }
        }
        if !state.inconsistent {
            state.fragments.insert(index, fragment.data);
        }
    }

    fn handle_ready(&mut self, from: NodeId, digest: Digest, step: &mut ProtocolStep<Self>) {
        match self.readies.get(&from) {
            Some(first) if *first == digest => {}
            Some(_) => step.fault(from, FaultKind::ConflictingReady),
            None => {
                self.readies.insert(from, digest);
                *self.ready_counts.entry(digest).or_default() += 1;
            }
        }
    }

    /// Count `from`'s first echo; returns whether this echo is new.
    fn record_echo(
        &mut self,
        from: NodeId,
        record: EchoRecord,
        step: &mut ProtocolStep<Self>,
    ) -> bool {
        match self.echoes.get(&from) {
            Some(first) if *first == record => false,
            Some(_) => {
                step.fault(from, FaultKind::ConflictingEcho);
                false
            }
            None => {
                let key = match record {
                    EchoRecord::Payload { digest } => (digest, false),
                    EchoRecord::Fragment { root, .. } => (root, true),
                };
                *self.echo_counts.entry(key).or_default() += 1;
                self.echoes.insert(from, record);
                true
            }
        }
    }

    /// The digest to send `Ready` for, if any: an echo quorum, or `f+1` readies.
    fn ready_candidate(&self) -> Option<Digest> {
        let echoed = self.echo_counts.iter().find(|((_, avid), count)| {
            let threshold = if *avid {
                self.avid_echo_threshold()
            } else {
                self.config.echo_quorum()
            };
            **count >= threshold
        });
        if let Some(((digest, _), _)) = echoed {
            return Some(*digest);
        }
        self.ready_counts
            .iter()
            .find(|(_, count)| **count >= self.config.one_honest())
            .map(|(digest, _)| *digest)
    }

    /// Send `Ready` and deliver when their conditions hold.
    fn progress(&mut self, step: &mut ProtocolStep<Self>) {
        if self.ready_sent.is_none() {
            if let Some(digest) = self.ready_candidate() {
                self.ready_sent = Some(digest);
                step.send(Target::All, Message::Ready(digest));
                // Only `digest` can be delivered now: drop what was kept for other digests.
                self.payloads.retain(|d, _| *d == digest);
                self.roots.retain(|d, _| *d == digest);
            }
        }
        if self.output.is_some() {
            return;
        }
        let Some(digest) = self
            .ready_counts
            .iter()
            .find(|(_, count)| **count >= self.config.ready_quorum())
            .map(|(digest, _)| *digest)
        else {
            return;
        };
        if let Some(payload) = self.payloads.remove(&digest) {
            self.finish(RbcOutput::Delivered(payload), step);
        } else if let Some(state) = self.roots.get(&digest) {
            if state.inconsistent {
                // The fault was recorded when the conflicting lengths were seen.
                self.finish(RbcOutput::InvalidEncoding, step);
            } else if state.fragments.len() >= self.data_shards {
                self.decode(digest, step);
            }
        }
    }

    /// Cachin–Tessaro: decode from `k` fragments, re-encode, and accept only if the re-encoded
    /// codeword has the committed root.
    fn decode(&mut self, root: Digest, step: &mut ProtocolStep<Self>) {
        let n = self.config.n();
        let Some(state) = self.roots.get(&root) else {
            return;
        };
        let fragments: BTreeMap<usize, &[u8]> = state
            .fragments
            .iter()
            .map(|(i, data)| (*i, data.as_slice()))
            .collect();
        // The fragments are distinct, in range and of one even length, so coding cannot fail;
        // if it did, no payload could be recovered from them and ⊥ is the only answer.
        let codeword = erasure::reconstruct(&fragments, n, self.data_shards).and_then(|shards| {
            let payload = erasure::unframe(&shards, self.params.max_payload);
            erasure::encode_data_shards(shards, n).map(|codeword| (codeword, payload))
        });
        let Ok((codeword, payload)) = codeword else {
            step.fault(self.proposer, FaultKind::InvalidEncoding);
            return self.finish(RbcOutput::InvalidEncoding, step);
        };
        let tree = merkle::MerkleTree::new(&codeword);
        // A root mismatch means no codeword has this root; a bad framing means the codeword
        // does not carry a well-formed payload. Either way every honest node sees the same.
        let payload = match payload {
            Some(payload) if tree.root() == root => payload,
            _ => {
                step.fault(self.proposer, FaultKind::InvalidEncoding);
                return self.finish(RbcOutput::InvalidEncoding, step);
            }
        };
        if !self.echo_sent {
            // The proposer never gave us our fragment; the codeword it committed to is now
            // known, so echo our own fragment of it (it helps others, and lets us terminate).
            let index = self.our_id.index();
            if let (Some(data), Some(proof)) = (codeword.get(index), tree.proof(index)) {
                self.echo_sent = true;
                let fragment = Fragment {
                    index: self.our_id.0,
                    data: data.clone(),
                    proof,
                };
                step.send(Target::All, Message::EchoFragment { root, fragment });
            }
        }
        self.delivered_by_avid = true;
        self.finish(RbcOutput::Delivered(payload), step);
    }

    fn finish(&mut self, output: RbcOutput, step: &mut ProtocolStep<Self>) {
        self.output = Some(output.clone());
        step.output(output);
        // Terminated: nothing stored is needed any more.
        self.payloads.clear();
        self.roots.clear();
        self.echoes.clear();
        self.readies.clear();
        self.echo_counts.clear();
        self.ready_counts.clear();
    }
}

impl Protocol for Rbc {
    type Message = Message;
    type Input = Vec<u8>;
    type Output = RbcOutput;
    type FaultKind = FaultKind;
    type Error = RbcError;

    fn our_id(&self) -> NodeId {
        self.our_id
    }

    fn handle_input(
        &mut self,
        payload: Vec<u8>,
        _rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, RbcError> {
        if self.our_id != self.proposer {
            return Err(RbcError::NotProposer {
                proposer: self.proposer,
            });
        }
        if self.proposed {
            return Err(RbcError::AlreadyProposed);
        }
        if payload.len() > self.params.max_payload {
            return Err(RbcError::PayloadTooLarge {
                size: payload.len(),
                max: self.params.max_payload,
            });
        }
        let mut step = Step::new();
        if payload.len() < self.params.erasure_threshold {
            step.send(Target::All, Message::Send(payload));
        } else {
            let n = self.config.n();
            let codeword = erasure::encode(&payload, n, self.data_shards)?;
            let tree = merkle::MerkleTree::new(&codeword);
            let root = tree.root();
            for (id, data) in self.config.members().zip(codeword) {
                // `tree` has one leaf per member, so every member's proof exists.
                let Some(proof) = tree.proof(id.index()) else {
                    continue;
                };
                let fragment = Fragment {
                    index: id.0,
                    data,
                    proof,
                };
                step.send(Target::Node(id), Message::Value { root, fragment });
            }
        }
        self.proposed = true;
        Ok(step)
    }

    fn handle_message(
        &mut self,
        from: NodeId,
        message: Message,
        _rng: &mut dyn RngCore,
    ) -> ProtocolStep<Self> {
        let mut step = Step::new();
        if self.terminated() {
            return step; // late messages are expected from honest nodes: drop, no evidence
        }
        if !self.config.contains(from) {
            step.fault(from, FaultKind::NonMember);
            return step;
        }
        match message {
            Message::Send(payload) => self.handle_send(from, payload, &mut step),
            Message::Echo(payload) => self.handle_echo(from, payload, &mut step),
            Message::Value { root, fragment } => self.handle_value(from, root, fragment, &mut step),
            Message::EchoFragment { root, fragment } => {
                self.handle_echo_fragment(from, root, fragment, &mut step)
            }
            Message::Ready(digest) => self.handle_ready(from, digest, &mut step),
        }
        self.progress(&mut step);
        step
    }

    /// Output given and `Ready` sent (always together: `2f+1` readies include `f+1`), and on
    /// the AVID path with a payload delivered, our own fragment echoed.
    fn terminated(&self) -> bool {
        match &self.output {
            None => false,
            Some(RbcOutput::InvalidEncoding) => self.ready_sent.is_some(),
            Some(RbcOutput::Delivered(_)) => {
                self.ready_sent.is_some() && (self.echo_sent || !self.delivered_by_avid)
            }
        }
    }
}
