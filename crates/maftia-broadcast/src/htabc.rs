//! High-throughput atomic broadcast: certified broadcast lanes ordered by MVBA epochs.
//!
//! Follows Dumbo-NG (Gao, Lu, Lu, Tang, Xu, Zhang, "Dumbo-NG: Fast Asynchronous BFT Consensus
//! with Throughput-oblivious Latency", ACM CCS 2022): dissemination and agreement are decoupled,
//! so bandwidth, not the agreement's coin and round trips, limits throughput. Same interface as
//! the CKPS01 mode ([`crate::abc`]): requests go in, one [`AbcDelivery`] per agreement epoch
//! comes out. Every node `i` runs:
//!
//! 1. **Broadcast lane** (Dumbo-NG Alg. 1, "broadcast"). Node `i` proposes the slots `s = 1, 2,
//!    …` of its lane: `Proposal { slot: s, prev_digest, prev_certificate, requests }`. The batch
//!    digest ([`batch_digest`]) hashes the instance, the lane, `s`, the previous slot's digest and
//!    the requests, so the lane is a hash chain. `prev_certificate` is the quorum-key (`n − f`)
//!    threshold signature on [`slot_message`]`(instance, i, s − 1, prev_digest)`: it certifies
//!    batch `s − 1` (and, through the chain, every earlier one). A node *votes* — sends its
//!    `quorum` signature share on `(i, s, digest)` to `i` — on the first proposal it sees for
//!    `(i, s)` if the batch is within the limits, `prev_certificate` verifies (the node then
//!    keeps it as lane `i`'s latest certified slot), `s` is above every slot it voted for in lane
//!    `i` and above `ordered(i)`, and `s ≤ ordered(i) + lane_window` (backpressure: a lane cannot run unboundedly ahead
//!    of agreement; a proposal up to [`SLOT_HORIZON_EPOCHS`] windows ahead is kept — one per
//!    lane, the highest — and voted on once agreement catches up). The owner combines `n − f`
//!    shares (optimistic robust `combine`) and puts the certificate in its next proposal; it
//!    proposes slot `s + 1` only once slot `s` is certified (one outstanding slot per lane, as in
//!    the paper). With nothing left to propose it sends `Certified { slot, digest, certificate }`
//!    instead, so its last batch is known certified everywhere (quiescence). An honest owner puts
//!    each pending request into exactly one batch and never re-proposes it: a certified honest
//!    batch is always eventually ordered (step 2).
//! 2. **Agreement** (Dumbo-NG Alg. 2). Sequential MVBA epochs `e = 0, 1, …` ([`crate::mvba`],
//!    one at a time). A node proposes the vector, over all `n` lanes, of the latest `(slot,
//!    digest, certificate)` it knows certified. The predicate `Q_e` ([`LaneVector`]): exactly `n`
//!    entries; no entry below the heights ordered by epoch `e − 1` (an entry at that height must
//!    carry its digest); every certificate verifies; and **at least one** entry above them.
//!    Dumbo-NG asks for `n − f` lanes to advance, which assumes every node always has a batch to
//!    broadcast; with one, a single busy lane is ordered in a quiet group (validity) and an epoch
//!    that orders nothing new cannot be decided (so epochs stop when there is nothing to order:
//!    quiescence). The heights ordered by `e − 1` are the entries of epoch `e − 1`'s decided
//!    vector, the same at every honest node, so `Q_e` is deterministic as MVBA requires. An
//!    epoch starts (the node proposes) when the node knows a certified slot above them — from a
//!    lane, or from another node's valid epoch-`e` proposal, whose certificates it adopts (so
//!    once one honest node proposes, all do). A group with nothing to order sends nothing (the
//!    idle rule of [`crate::abc`]).
//! 3. **Delivery.** When epoch `e` has decided (and every earlier epoch is delivered), the node
//!    delivers, for each lane in id order, the batches `delivered + 1 ..= decided` in slot
//!    order, skipping a request whose digest ([`abc::request_digest`]) was delivered in this
//!    epoch or in the last [`AbcParams::dedup_rounds`] epochs (the dedup window of
//!    [`crate::abc`]), and outputs one [`AbcDelivery`] `{ round: e, requests }`. Missing batches
//!    are fetched: the decided entry gives the top slot's digest and each batch names its
//!    predecessor's, so `Fetch { lane, slot, digest }` goes to every other node and an answer
//!    `Batch { lane, slot, prev_digest, requests }` is accepted only for a slot asked for and
//!    only if it hashes to the digest asked for. Every certified batch was voted for by `n − f`
//!    nodes, `f + 1` of them honest, which hold it. (Dumbo-NG's answers carry the batch's
//!    certificate; the hash chain makes that unnecessary and spares a signature check per
//!    fetched batch.) Then epoch `e + 1` starts.
//!
//! # Output
//! One [`AbcDelivery`] per epoch, for epochs `0, 1, 2, …` in order and without gaps (an epoch
//! whose batches hold only duplicates is delivered with an empty request list), so the `i`-th
//! output of every honest node is its epoch-`i` delivery.
//!
//! # Guarantees
//! With at most `f` Byzantine nodes among `n > 3f`, an unforgeable quorum key set (threshold
//! `n − f`), a collision-resistant hash and the MVBA guarantees:
//! - **one batch per slot**: two different batches certified for one `(lane, slot)` would need
//!   `2(n − f)` votes, so `n − 2f ≥ f + 1` nodes voted for both — impossible for honest nodes,
//!   which vote once per slot. The hash chain makes a certified slot fix every earlier batch of
//!   its lane;
//! - **agreement and total order**: honest nodes decide the same vector in every epoch, and the
//!   delivery of epoch `e` is a deterministic function of the decided vectors of epochs `0..=e`
//!   and of the certified batches they name ([`epoch_requests_and_digests`]); so honest nodes output the
//!   same sequence of deliveries;
//! - **integrity**: as in [`crate::abc`] (dedup window of `dedup_rounds` epochs); a request is
//!   delivered only if it is in a certified batch, which `f + 1` honest nodes checked against
//!   the limits; a request of an honest lane was submitted to that lane's owner;
//! - **validity**: a request submitted at one honest node is delivered: the node puts it in a
//!   batch of its lane; honest voters catch up with agreement, so the batch gets certified; the
//!   owner sends the certificate to all; every honest node then keeps proposing vectors whose
//!   entry for that lane reaches the batch, and epochs keep running while it is unordered; MVBA
//!   decides an honest node's vector with positive probability in each epoch (and any decided
//!   vector that passes the lane carries it along), so it is ordered with probability 1;
//! - **quiescence**: once every pending request is batched, every batch certified and every
//!   certified slot ordered, no node knows a certified slot above the ordered heights and no
//!   epoch starts; owners send one `Certified` message per last batch.
//!
//! # Assumptions
//! Authenticated point-to-point links (the runtime vouches for `from`), asynchronous delivery,
//! `n > 3f`, the dealt threshold key sets of [`ThresholdKeys`] (lanes use the quorum key set;
//! MVBA all three). No identity keys are needed: lane proposals are authenticated by the link and
//! certified by threshold signatures. A node that falls more than [`EPOCH_WINDOW`] epochs behind
//! drops the messages of epochs it cannot hold yet ([`HtAbcFault::FutureEpoch`]); a node more
//! than [`HtParams::retained_slots`] slots behind may find no one to answer its fetches. Either
//! needs state transfer from the layer above, as in [`crate::abc`].
//!
//! # Complexity
//! Per batch of `B` bytes: `n` proposal messages (`O(n · B)` bits) and `n` votes to the owner,
//! one combine (one signature verification when all shares are valid) at the owner, one
//! certificate verification per node. Per epoch: one MVBA on a value of `n` entries of constant
//! size, so an expected `O(n²)` messages and `O(n³)` bits, whatever the batch sizes — the
//! payload crosses the network once per node, outside agreement. Each certificate is verified at
//! most once per node (a shared cache keyed by lane, slot, digest and signature; a proposal
//! value is judged at most once per epoch). Fetches: at most [`HtParams::max_fetches`]
//! outstanding, each answered by at most `n − 1` batch messages; a node answers every fetch
//! for a batch it holds, so a Byzantine peer can make it send one batch per fetch message
//! (bandwidth, not memory).
//!
//! # Bounded state
//! MVBA messages of epochs above `current + EPOCH_WINDOW` are dropped with a fault; of past
//! epochs, they reach the epoch's MVBA while it is kept ([`RETAINED_EPOCHS`] epochs after
//! delivery) and are dropped silently afterwards. A future epoch's MVBA runs (for commit sets,
//! coin shares and binary agreements) but its proposal and vote messages — those its predicate
//! must judge — wait until the previous epoch is decided and delivered, at most
//! [`gated_per_sender`]`(n)` per sender and epoch (an honest sender sends fewer; more is a
//! fault). A lane's proposals above `ordered + lane_window` are kept one per lane; above
//! `ordered + SLOT_HORIZON_EPOCHS · lane_window` they are dropped with a fault. A node holds,
//! per lane, the batches of slots `delivered − retained_slots + 1 ..= delivered + 2 ·
//! lane_window` (a decided height is at most `lane_window` above the previous one, since an
//! honest voter of the certified slot had ordered at most the previous epoch; a node votes up to
//! `lane_window` above its ordered height), the vote shares of its own outstanding slot, and at
//! most `max_fetches` outstanding fetches. [`HtAbc::stored_messages`] counts all of it and the
//! MVBA instances' own counts; [`HtAbc::stored_messages_bound`] states the bound.
use crate::abc::{self, AbcDelivery, AbcParams, DeliveredWindow, PendingQueue};
use crate::keys::ThresholdKeys;
use crate::mvba::{self, Mvba, MvbaError, MvbaFault, Validator};
use maftia_core::codec::{self, MAX_MESSAGE_SIZE};
use maftia_core::{GroupConfig, NodeId, Protocol, ProtocolStep, Step, Target};
use maftia_crypto::hash::{hash, hasher, Digest};
use maftia_crypto::threshold::{CombineError, SignerIndex, ThresholdSigner};
use rand_core::RngCore;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use thiserror::Error;

/// Hash context of [`batch_digest`].
pub const BATCH_DIGEST_CONTEXT: &str = "maftia 2026-11 htabc batch";
/// Hash context of [`slot_message`], the message a lane certificate signs.
pub const SLOT_MESSAGE_CONTEXT: &str = "maftia 2026-11 htabc slot certificate";
/// Hash context of the instance tag of an epoch's MVBA ([`mvba_instance`]).
pub const MVBA_INSTANCE_CONTEXT: &str = "maftia 2026-11 htabc mvba instance";
/// Hash context of the keys of `Q_e`'s verdict cache.
const VALUE_DIGEST_CONTEXT: &str = "maftia 2026-11 htabc proposal value";
/// Hash context of the certificate cache keys.
const CERTIFICATE_KEY_CONTEXT: &str = "maftia 2026-11 htabc verified certificate";

/// Epochs accepted ahead of the current one (as [`abc::ROUND_WINDOW`]).
pub const EPOCH_WINDOW: u64 = abc::ROUND_WINDOW;
/// Delivered epochs whose MVBA is kept so that slower nodes can finish them.
pub const RETAINED_EPOCHS: u64 = abc::RETAINED_ROUNDS;
/// Lane proposals are accepted up to `ordered + SLOT_HORIZON_EPOCHS · lane_window` (the owner
/// may have ordered up to [`EPOCH_WINDOW`] epochs more than we have); beyond, they are faults.
pub const SLOT_HORIZON_EPOCHS: u64 = EPOCH_WINDOW + 1;
/// Verdicts of `Q_e` cached per member.
pub const VERDICTS_PER_MEMBER: usize = 4;
/// Verified certificates cached per lane.
pub const CACHED_CERTIFICATES_PER_LANE: usize = 64;
/// Upper bound on one encoded lane entry (option tag, slot, digest, signature).
const ENTRY_SIZE: usize = 512;
/// Encoding overhead of a lane vector (codec header, entry count).
const VECTOR_OVERHEAD: usize = 16;
/// The "previous digest" of slot 1.
pub const GENESIS_DIGEST: Digest = [0; 32];

/// Most proposal and vote messages of one not-yet-started epoch kept per sender: an honest
/// sender sends at most its own proposal's `Send` and `Final` and two votes per attempt before
/// it sees our proposal, `2n + 2`.
pub fn gated_per_sender(n: usize) -> usize {
    3 * n + 8
}

/// The digest of a lane batch: `H(instance, lane, slot, prev_digest, requests)`, every request
/// length-prefixed. Including `prev_digest` chains the lane.
pub fn batch_digest(
    instance: &[u8],
    lane: NodeId,
    slot: u64,
    prev_digest: &Digest,
    requests: &[Vec<u8>],
) -> Digest {
    let mut h = hasher(
        BATCH_DIGEST_CONTEXT,
        &[
            instance,
            &lane.0.to_le_bytes(),
            &slot.to_le_bytes(),
            prev_digest,
        ],
    );
    h.update(&(requests.len() as u64).to_le_bytes());
    // The same byte stream as updating with each length and request in turn, staged so that
    // BLAKE3 hashes many chunks at once (fed request by request it compresses one block at a
    // time, several times slower; pinned by a unit test).
    let mut staged = Vec::with_capacity(BATCH_HASH_STAGING);
    for request in requests {
        if staged.len() + 8 + request.len() > BATCH_HASH_STAGING {
            h.update(&staged);
            staged.clear();
        }
        staged.extend_from_slice(&(request.len() as u64).to_le_bytes());
        if request.len() > BATCH_HASH_STAGING {
            h.update(&staged);
            staged.clear();
            h.update(request);
        } else {
            staged.extend_from_slice(request);
        }
    }
    h.update(&staged);
    h.finalize().into()
}

/// Bytes staged before each BLAKE3 update in [`batch_digest`].
const BATCH_HASH_STAGING: usize = 64 * 1024;

/// What a lane certificate signs: `H(instance, lane, slot, digest)`.
pub fn slot_message(instance: &[u8], lane: NodeId, slot: u64, digest: &Digest) -> Digest {
    hash(
        SLOT_MESSAGE_CONTEXT,
        &[instance, &lane.0.to_le_bytes(), &slot.to_le_bytes(), digest],
    )
}

/// The instance tag of the epoch-`epoch` MVBA of the instance `instance`.
pub fn mvba_instance(instance: &[u8], epoch: u64) -> Vec<u8> {
    hash(MVBA_INSTANCE_CONTEXT, &[instance, &epoch.to_le_bytes()]).to_vec()
}

/// Parameters of the high-throughput mode (on top of [`AbcParams`], whose batch limits apply to
/// each lane batch and whose `dedup_rounds` counts epochs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HtParams {
    /// Certified-but-unordered slots a lane may run ahead of agreement (at least 1).
    pub lane_window: u64,
    /// Delivered slots per lane whose batches are kept to answer fetches (at least 1).
    pub retained_slots: u64,
    /// Most fetches outstanding at once (at least 1).
    pub max_fetches: usize,
}

impl Default for HtParams {
    /// A window of 16 slots, 64 retained slots per lane, 64 outstanding fetches.
    fn default() -> Self {
        HtParams {
            lane_window: 16,
            retained_slots: 64,
            max_fetches: 64,
        }
    }
}

/// A lane's certified slot: the value MVBA agrees on per lane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneEntry<Signature> {
    pub slot: u64,
    /// [`batch_digest`] of the slot's batch.
    pub digest: Digest,
    /// Quorum threshold signature on [`slot_message`]`(instance, lane, slot, digest)`.
    pub certificate: Signature,
}

/// The value an epoch's MVBA agrees on: one entry per lane, by lane id (`None`: nothing
/// certified yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "Signature: Serialize",
    deserialize = "Signature: DeserializeOwned"
))]
pub struct LaneVector<Signature> {
    pub entries: Vec<Option<LaneEntry<Signature>>>,
}

/// What high-throughput ABC nodes send each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "Share: Serialize, Signature: Serialize",
    deserialize = "Share: DeserializeOwned, Signature: DeserializeOwned"
))]
pub enum Message<Share, Signature> {
    /// Step 1: the sender's batch for `slot` of its own lane, with the certificate of `slot − 1`
    /// (`None` and [`GENESIS_DIGEST`] for slot 1).
    Proposal {
        slot: u64,
        prev_digest: Digest,
        prev_certificate: Option<Signature>,
        #[serde(with = "crate::wire::byte_lists")]
        requests: Vec<Vec<u8>>,
    },
    /// Step 1: a vote on the recipient's `slot` with digest `digest`.
    Vote {
        slot: u64,
        digest: Digest,
        share: Share,
    },
    /// Step 1: the certificate of the sender's last batch (sent when it has nothing more).
    Certified {
        slot: u64,
        digest: Digest,
        certificate: Signature,
    },
    /// Step 3: a request for `lane`'s batch at `slot`, whose digest is `digest`.
    Fetch {
        lane: NodeId,
        slot: u64,
        digest: Digest,
    },
    /// Step 3: the answer to a fetch.
    Batch {
        lane: NodeId,
        slot: u64,
        prev_digest: Digest,
        #[serde(with = "crate::wire::byte_lists")]
        requests: Vec<Vec<u8>>,
    },
    /// Step 2: a message of the epoch-`epoch` MVBA.
    Mvba {
        epoch: u64,
        message: mvba::Message<Share, Signature>,
    },
}

/// The message type of an [`HtAbc`] instance using signer `S`.
pub type HtAbcMessage<S> =
    Message<<S as ThresholdSigner>::Share, <S as ThresholdSigner>::Signature>;

/// How a peer misbehaved in high-throughput ABC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HtAbcFault {
    /// A message from a node outside the group.
    NotAMember,
    /// A message naming a lane outside the group.
    UnknownLane { index: u16 },
    /// An MVBA message for an epoch beyond `current + EPOCH_WINDOW` (or this node lags that far).
    FutureEpoch { epoch: u64, current: u64 },
    /// A lane slot beyond `ordered + SLOT_HORIZON_EPOCHS · lane_window`.
    FutureSlot {
        lane: NodeId,
        slot: u64,
        ordered: u64,
    },
    /// A batch above the batch limits.
    BatchOutOfLimits {
        slot: u64,
        requests: usize,
        bytes: usize,
    },
    /// Slot 0, or a predecessor certificate missing (slot > 1) or present (slot 1).
    MalformedProposal { slot: u64 },
    /// A lane certificate that does not verify.
    InvalidCertificate { lane: NodeId, slot: u64 },
    /// Two different proposals for one slot of the sender's lane.
    EquivocatingProposal {
        slot: u64,
        first: Digest,
        second: Digest,
    },
    /// A vote for a slot or digest this node never proposed.
    UnexpectedVote { slot: u64 },
    /// A vote share that failed verification when combining.
    InvalidVoteShare { slot: u64 },
    /// A fetch answer that does not hash to the digest asked for.
    InvalidBatchAnswer { lane: NodeId, slot: u64 },
    /// More proposal and vote messages for a not-yet-started epoch than an honest node sends.
    TooManyEarlyMessages { epoch: u64 },
    /// Misbehaviour inside an epoch's MVBA.
    Mvba { epoch: u64, fault: MvbaFault },
}

/// Misconfiguration or local misuse of a high-throughput ABC instance.
#[derive(Debug, Error)]
pub enum HtAbcError {
    #[error("{node} is not a member of a group of {n}")]
    NotAMember { node: NodeId, n: usize },
    /// [`crate::atomic::AtomicBroadcast::resume`] in this mode.
    #[error("state transfer is not supported in the high-throughput mode")]
    StateTransferUnsupported,
    #[error("invalid parameters: {0}")]
    InvalidParams(&'static str),
    #[error("batches of up to {size} bytes do not fit a message (limit {limit})")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("request of {len} bytes exceeds the maximum of {max}")]
    RequestTooLarge { len: usize, max: usize },
    #[error("the pending queue is full ({max} requests)")]
    QueueFull { max: usize },
    #[error("the request is already pending")]
    AlreadyPending,
    #[error("the request was delivered within the dedup window")]
    AlreadyDelivered,
    #[error("mvba: {0}")]
    Mvba(#[from] MvbaError),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The mutexes hold memoized verification results and a queue of judged values, each
    // inserted whole; a panic while holding one cannot leave a half-written entry.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the node and its epochs' predicates.
struct Shared {
    /// Keys of verified certificates, by (lane, slot).
    verified: BTreeMap<(NodeId, u64), Vec<Digest>>,
    /// Entries of `verified` per lane (at most [`CACHED_CERTIFICATES_PER_LANE`]).
    per_lane: Vec<usize>,
    /// Values a predicate found valid since the node last looked, with their slot per lane
    /// (0 for none): the node adopts their certificates (step 2). At most
    /// `VERDICTS_PER_MEMBER · n` between two looks.
    validated: Vec<(Vec<u8>, Vec<u64>)>,
    /// Verifications performed (cache misses).
    verifications: u64,
}

impl Shared {
    fn new(n: usize) -> Self {
        Shared {
            verified: BTreeMap::new(),
            per_lane: vec![0; n],
            validated: Vec::new(),
            verifications: 0,
        }
    }

    fn contains(&self, lane: NodeId, slot: u64, key: &Digest) -> bool {
        self.verified
            .get(&(lane, slot))
            .is_some_and(|keys| keys.contains(key))
    }

    fn insert(&mut self, lane: NodeId, slot: u64, key: Digest) {
        let Some(count) = self.per_lane.get_mut(lane.index()) else {
            return;
        };
        if *count >= CACHED_CERTIFICATES_PER_LANE {
            return;
        }
        let keys = self.verified.entry((lane, slot)).or_default();
        if !keys.contains(&key) {
            keys.push(key);
            *count += 1;
        }
    }

    /// Forget lane `lane`'s certificates below `slot`.
    fn prune(&mut self, lane: NodeId, slot: u64) {
        let mut kept = self.verified.split_off(&(lane, slot));
        let mut removed = 0;
        self.verified.retain(|(l, _), keys| {
            if *l == lane {
                removed += keys.len();
                false
            } else {
                true
            }
        });
        self.verified.append(&mut kept);
        if let Some(count) = self.per_lane.get_mut(lane.index()) {
            *count = count.saturating_sub(removed);
        }
    }

    fn len(&self) -> usize {
        self.per_lane.iter().sum()
    }
}

/// Verifies lane certificates, each at most once.
struct CertificateChecker<S> {
    instance: Arc<[u8]>,
    signer: Arc<S>,
    shared: Arc<Mutex<Shared>>,
}

impl<S> Clone for CertificateChecker<S> {
    fn clone(&self) -> Self {
        CertificateChecker {
            instance: self.instance.clone(),
            signer: self.signer.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: ThresholdSigner> CertificateChecker<S> {
    fn verify(&self, lane: NodeId, slot: u64, digest: &Digest, certificate: &S::Signature) -> bool {
        let message = slot_message(&self.instance, lane, slot, digest);
        let key = hash(
            CERTIFICATE_KEY_CONTEXT,
            &[&message, &self.signer.signature_bytes(certificate)],
        );
        if lock(&self.shared).contains(lane, slot, &key) {
            return true;
        }
        let valid = self.signer.verify(&message, certificate);
        let mut shared = lock(&self.shared);
        shared.verifications += 1;
        if valid {
            shared.insert(lane, slot, key);
        }
        valid
    }
}

/// The external predicate `Q_e` of the epoch-`e` MVBA (step 2).
///
/// `Q_e(v)` holds iff `v` decodes to a [`LaneVector`] of `n` entries where, for every lane, the
/// entry's slot is at least the height `b` ordered by epoch `e − 1` (the entry is `None` only if
/// `b = 0`; an entry at `b` carries the ordered digest), at least one entry is above its height,
/// and every certificate verifies. The heights come from epoch `e − 1`'s decision, so they are
/// the same at every honest node: `Q_e` is deterministic. They are set when the epoch becomes
/// current; the node hands the MVBA no message that makes it consult `Q_e` before that.
struct LanePredicate<S> {
    config: GroupConfig,
    checker: CertificateChecker<S>,
    max_value: usize,
    /// `(height, digest)` per lane ordered by the previous epoch.
    base: OnceLock<Vec<(u64, Digest)>>,
    /// Verdicts on values already judged, by `H(value)` (at most [`VERDICTS_PER_MEMBER`]·n).
    verdicts: Mutex<BTreeMap<Digest, bool>>,
}

impl<S: ThresholdSigner> LanePredicate<S> {
    /// `Q_e(value)`; if it holds, the slot of each lane's entry (0 for none).
    fn evaluate(&self, value: &[u8]) -> Option<Vec<u64>> {
        // Unset only before the epoch is current, when the node gates every message that
        // would reach this predicate: rejecting is then never consulted.
        let base = self.base.get()?;
        let vector =
            codec::decode_with_limit::<LaneVector<S::Signature>>(value, self.max_value).ok()?;
        if vector.entries.len() != self.config.n() || base.len() != self.config.n() {
            return None;
        }
        let mut above = false;
        for (entry, (height, digest)) in vector.entries.iter().zip(base) {
            match entry {
                None if *height == 0 => {}
                None => return None,
                Some(entry) => {
                    if entry.slot == 0
                        || entry.slot < *height
                        || (entry.slot == *height && entry.digest != *digest)
                    {
                        return None;
                    }
                    above |= entry.slot > *height;
                }
            }
        }
        let valid = above
            && vector
                .entries
                .iter()
                .zip(NodeId::all(self.config.n()))
                .all(|(entry, lane)| match entry {
                    None => true,
                    Some(e) => self.checker.verify(lane, e.slot, &e.digest, &e.certificate),
                });
        valid.then(|| {
            vector
                .entries
                .iter()
                .map(|e| e.as_ref().map_or(0, |e| e.slot))
                .collect()
        })
    }
}

impl<S: ThresholdSigner + Send + Sync> Validator for LanePredicate<S> {
    fn is_valid(&self, value: &[u8]) -> bool {
        let digest = hash(VALUE_DIGEST_CONTEXT, &[value]);
        if let Some(verdict) = lock(&self.verdicts).get(&digest) {
            return *verdict;
        }
        let slots = self.evaluate(value);
        let verdict = slots.is_some();
        let cap = VERDICTS_PER_MEMBER * self.config.n();
        {
            let mut verdicts = lock(&self.verdicts);
            if verdicts.len() < cap {
                verdicts.insert(digest, verdict);
            }
        }
        if let Some(slots) = slots {
            let mut shared = lock(&self.checker.shared);
            if shared.validated.len() < cap {
                shared.validated.push((value.to_vec(), slots));
            }
        }
        verdict
    }
}

/// A batch a node holds: one it voted for, or one it fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HeldBatch {
    digest: Digest,
    prev_digest: Digest,
    requests: Vec<Vec<u8>>,
}

/// A lane proposal waiting for agreement to catch up (step 1's backpressure).
struct DeferredProposal<Signature> {
    slot: u64,
    prev_digest: Digest,
    prev_certificate: Option<Signature>,
    requests: Vec<Vec<u8>>,
}

/// What a node knows of one lane.
struct Lane<Signature> {
    /// The highest slot this node voted for.
    voted: u64,
    /// Batches held by slot (voted for or fetched).
    batches: BTreeMap<u64, HeldBatch>,
    /// Certified digests known by slot, for slots above `delivered` (and at most `2 ·
    /// lane_window` above it).
    certified: BTreeMap<u64, Digest>,
    /// The latest certified slot known.
    latest: Option<LaneEntry<Signature>>,
    /// The highest proposal beyond the voting window.
    deferred: Option<DeferredProposal<Signature>>,
    /// Height and digest of the latest decided vector's entry.
    ordered: (u64, Digest),
    /// Height delivered.
    delivered: u64,
}

impl<Signature> Lane<Signature> {
    fn new() -> Self {
        Lane {
            voted: 0,
            batches: BTreeMap::new(),
            certified: BTreeMap::new(),
            latest: None,
            deferred: None,
            ordered: (0, GENESIS_DIGEST),
            delivered: 0,
        }
    }
}

/// The batches of one lane to deliver, bottom-up, for the target `(height, digest)`; or the
/// `(slot, digest)` pairs to fetch first. The top digest is the decided one; each batch names
/// its predecessor's, and `certified` fills in digests known from certificates, so missing
/// slots are found in one walk where possible.
fn lane_chain<'a>(
    batches: &'a BTreeMap<u64, HeldBatch>,
    certified: &BTreeMap<u64, Digest>,
    delivered: u64,
    target: (u64, Digest),
) -> Result<Vec<&'a HeldBatch>, Vec<(u64, Digest)>> {
    let (mut slot, mut digest) = target;
    let mut chain = Vec::new();
    let mut missing = Vec::new();
    let mut known = true;
    while slot > delivered {
        if !known {
            match certified.get(&slot) {
                Some(d) => digest = *d,
                None => {
                    slot -= 1;
                    continue;
                }
            }
        }
        match batches.get(&slot) {
            Some(batch) if batch.digest == digest => {
                chain.push(batch);
                digest = batch.prev_digest;
                known = true;
            }
            _ => {
                missing.push((slot, digest));
                known = false;
            }
        }
        slot -= 1;
    }
    if missing.is_empty() {
        chain.reverse();
        Ok(chain)
    } else {
        Err(missing)
    }
}

/// [`epoch_requests_and_digests`] without the digests of every request (for tests).
#[cfg(test)]
pub(crate) fn epoch_requests<'a>(
    chains: impl IntoIterator<Item = &'a [Vec<u8>]>,
    window: &DeliveredWindow,
) -> (Vec<Vec<u8>>, Vec<Digest>) {
    let (requests, digests, _) = epoch_requests_and_digests(chains, &mut window.clone());
    (requests, digests)
}

/// Step 3: the requests one epoch delivers, from its lanes' batch chains in lane order, each in
/// slot order, skipping requests in `window` or already taken in this epoch. Returns the
/// delivered requests and their digests. A deterministic function of its arguments.
/// Also returns the digests of every request of the chains (duplicates included), in order:
/// each request is hashed once. The delivered digests are added to `window` as they are taken
/// (one lookup finds both a request of an earlier epoch and a duplicate within this one); the
/// caller closes the epoch with [`DeliveredWindow::close_round`].
fn epoch_requests_and_digests<'a>(
    chains: impl IntoIterator<Item = &'a [Vec<u8>]>,
    window: &mut DeliveredWindow,
) -> (Vec<Vec<u8>>, Vec<Digest>, Vec<Digest>) {
    let chains: Vec<&[Vec<u8>]> = chains.into_iter().collect();
    // Sized once: an epoch delivers tens of thousands of requests at large batches.
    let total = chains.iter().map(|batch| batch.len()).sum();
    let mut requests = Vec::with_capacity(total);
    let mut digests = Vec::with_capacity(total);
    let mut all = Vec::with_capacity(total);
    for batch in chains {
        for request in batch {
            let digest = abc::request_digest(request);
            all.push(digest);
            if !window.insert_new(digest) {
                continue;
            }
            digests.push(digest);
            requests.push(request.clone());
        }
    }
    (requests, digests, all)
}

/// Counters of one node's lane and fetch activity since it started (for tests and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HtStats {
    /// Lane batches this node proposed.
    pub batches_proposed: u64,
    /// Votes this node sent.
    pub votes_sent: u64,
    /// Proposals kept back by the lane window (step 1's backpressure).
    pub proposals_deferred: u64,
    /// Fetches sent.
    pub fetches_sent: u64,
    /// Batches received in answer to a fetch.
    pub batches_fetched: u64,
    /// Certificate verifications actually performed (cache misses).
    pub certificates_verified: u64,
}

/// Our own lane's outstanding slot (proposed, not certified yet).
struct Outstanding<Share> {
    slot: u64,
    digest: Digest,
    /// Vote shares by signer.
    shares: BTreeMap<SignerIndex, Share>,
    /// Signers whose share failed.
    invalid: BTreeSet<SignerIndex>,
}

/// One epoch's state.
struct Epoch<S: ThresholdSigner> {
    mvba: Mvba<S>,
    predicate: Arc<LanePredicate<S>>,
    /// Proposal and vote messages received before the epoch became current, by sender.
    gated: BTreeMap<NodeId, Vec<mvba::MvbaMessage<S>>>,
    proposed: bool,
    /// The decided value, until the epoch is delivered.
    decided: Option<Vec<u8>>,
    delivered: bool,
}

impl<S: ThresholdSigner> Epoch<S> {
    fn stored_messages(&self) -> usize {
        self.gated.values().map(Vec::len).sum::<usize>()
            + usize::from(self.decided.is_some())
            + self.mvba.stored_messages()
    }
}

/// One node's high-throughput atomic broadcast instance.
pub struct HtAbc<S: ThresholdSigner> {
    config: GroupConfig,
    our_id: NodeId,
    instance: Arc<[u8]>,
    keys: ThresholdKeys<S>,
    params: AbcParams,
    ht: HtParams,
    max_value: usize,
    checker: CertificateChecker<S>,
    /// The epoch being ordered: every earlier one is delivered.
    epoch: u64,
    epochs: BTreeMap<u64, Epoch<S>>,
    lanes: Vec<Lane<S::Signature>>,
    outstanding: Option<Outstanding<S::Share>>,
    /// The highest own slot whose certificate we sent (in a proposal or `Certified`).
    announced: u64,
    pending: PendingQueue,
    /// Digests of our requests in batches not delivered yet. Membership only, never iterated
    /// (like [`abc`]'s digest sets: a hash set, since it holds up to `max_pending` digests and
    /// every delivered request is looked up in it).
    in_flight: HashSet<Digest>,
    delivered: DeliveredWindow,
    /// Outstanding fetches: (lane, slot) -> digest.
    fetches: BTreeMap<(NodeId, u64), Digest>,
    stats: HtStats,
}

impl<S: ThresholdSigner + Send + Sync + 'static> HtAbc<S> {
    /// A high-throughput ABC instance at `our_id`.
    ///
    /// `instance` is a caller-chosen tag unique to this ordering service; it is hashed into
    /// every batch digest, certificate and MVBA instance. `params` bound each lane batch (and
    /// `dedup_rounds` counts epochs); `ht` sets the lane window, retention and fetch limits.
    pub fn new(
        config: GroupConfig,
        our_id: NodeId,
        instance: Vec<u8>,
        keys: ThresholdKeys<S>,
        params: AbcParams,
        ht: HtParams,
    ) -> Result<Self, HtAbcError> {
        let n = config.n();
        if !config.contains(our_id) {
            return Err(HtAbcError::NotAMember { node: our_id, n });
        }
        if params.batch_size == 0 || params.max_request_size == 0 || params.max_pending == 0 {
            return Err(HtAbcError::InvalidParams(
                "batch_size, max_request_size and max_pending must be positive",
            ));
        }
        if params.max_request_size > params.max_batch_bytes {
            return Err(HtAbcError::InvalidParams(
                "max_request_size must not exceed max_batch_bytes",
            ));
        }
        if params.dedup_rounds == 0 {
            return Err(HtAbcError::InvalidParams("dedup_rounds must be at least 1"));
        }
        if ht.lane_window == 0 || ht.retained_slots == 0 || ht.max_fetches == 0 {
            return Err(HtAbcError::InvalidParams(
                "lane_window, retained_slots and max_fetches must be positive",
            ));
        }
        if ht.lane_window > u64::from(u32::MAX) || ht.retained_slots > u64::from(u32::MAX) {
            return Err(HtAbcError::InvalidParams(
                "lane_window and retained_slots must fit 32 bits",
            ));
        }
        // A proposal or fetch answer carries one batch (plus a certificate and framing).
        let limit = MAX_MESSAGE_SIZE / 2;
        let batch = params.max_value_size(1).unwrap_or(usize::MAX);
        if batch > limit {
            return Err(HtAbcError::BatchTooLarge { size: batch, limit });
        }
        let max_value = n.saturating_mul(ENTRY_SIZE).saturating_add(VECTOR_OVERHEAD);
        let instance: Arc<[u8]> = instance.into();
        let checker = CertificateChecker {
            instance: instance.clone(),
            signer: keys.quorum.clone(),
            shared: Arc::new(Mutex::new(Shared::new(n))),
        };
        let mut node = HtAbc {
            config,
            our_id,
            instance,
            keys,
            params,
            ht,
            max_value,
            checker,
            epoch: 0,
            epochs: BTreeMap::new(),
            lanes: (0..n).map(|_| Lane::new()).collect(),
            outstanding: None,
            announced: 0,
            pending: PendingQueue::default(),
            in_flight: HashSet::new(),
            delivered: DeliveredWindow::new(params.dedup_rounds),
            fetches: BTreeMap::new(),
            stats: HtStats::default(),
        };
        // Epoch 0 now: this also checks the key sets against the group (MVBA's constructor).
        let first = node.new_epoch(0)?;
        // Nothing is ordered before epoch 0.
        let _ = first.predicate.base.set(vec![(0, GENESIS_DIGEST); n]);
        node.epochs.insert(0, first);
        Ok(node)
    }

    /// The epoch being ordered (every earlier epoch has been delivered).
    pub fn round(&self) -> u64 {
        self.epoch
    }

    /// Requests submitted here and not delivered yet: queued, or in a batch of our lane.
    pub fn pending(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }

    pub fn params(&self) -> &AbcParams {
        &self.params
    }

    pub fn ht_params(&self) -> &HtParams {
        &self.ht
    }

    pub fn instance(&self) -> &[u8] {
        &self.instance
    }

    /// Per lane, the height ordered by the latest decided epoch.
    pub fn ordered_heights(&self) -> Vec<u64> {
        self.lanes.iter().map(|l| l.ordered.0).collect()
    }

    /// Per lane, the latest slot this node knows certified.
    pub fn certified_heights(&self) -> Vec<u64> {
        self.lanes
            .iter()
            .map(|l| l.latest.as_ref().map_or(0, |e| e.slot))
            .collect()
    }

    /// The latest slot of `lane` this node knows certified, with its batch digest.
    pub fn latest_certified(&self, lane: NodeId) -> Option<(u64, Digest)> {
        self.lanes
            .get(lane.index())
            .and_then(|l| l.latest.as_ref())
            .map(|e| (e.slot, e.digest))
    }

    /// Activity counters.
    pub fn stats(&self) -> HtStats {
        HtStats {
            certificates_verified: lock(&self.checker.shared).verifications,
            ..self.stats
        }
    }

    /// Fetches outstanding.
    pub fn outstanding_fetches(&self) -> usize {
        self.fetches.len()
    }

    /// Verified certificates cached (at most [`CACHED_CERTIFICATES_PER_LANE`] per lane).
    pub fn cached_certificates(&self) -> usize {
        lock(&self.checker.shared).len()
    }

    /// Held batches, deferred proposals, vote shares, outstanding fetches, early epoch messages,
    /// undelivered decisions and the MVBA instances' stored messages.
    pub fn stored_messages(&self) -> usize {
        let lanes: usize = self
            .lanes
            .iter()
            .map(|l| l.batches.len() + usize::from(l.deferred.is_some()))
            .sum();
        let shares = self.outstanding.as_ref().map_or(0, |o| o.shares.len());
        let epochs: usize = self.epochs.values().map(Epoch::stored_messages).sum();
        lanes + shares + self.fetches.len() + epochs
    }

    /// The most [`HtAbc::stored_messages`] can reach, given `mvba_bound`
    /// ([`mvba::stored_messages_bound`]): per lane `retained_slots + 2 · lane_window` batches
    /// and one deferred proposal; `n` vote shares; `max_fetches` fetches; for each of the
    /// `EPOCH_WINDOW` future epochs [`gated_per_sender`]`(n)` early messages per sender; one
    /// undelivered decision per accepted epoch; and `EPOCH_WINDOW + 1 + RETAINED_EPOCHS` MVBA
    /// instances.
    pub fn stored_messages_bound(&self, mvba_bound: usize) -> usize {
        let n = self.config.n();
        let per_lane = (self.ht.retained_slots + 2 * self.ht.lane_window + 1) as usize;
        let accepted = (EPOCH_WINDOW + 1) as usize;
        let instances = accepted + RETAINED_EPOCHS as usize;
        n.saturating_mul(per_lane)
            .saturating_add(n)
            .saturating_add(self.ht.max_fetches)
            .saturating_add(
                (EPOCH_WINDOW as usize)
                    .saturating_mul(n)
                    .saturating_mul(gated_per_sender(n)),
            )
            .saturating_add(accepted)
            .saturating_add(instances.saturating_mul(mvba_bound))
    }

    fn new_epoch(&self, epoch: u64) -> Result<Epoch<S>, MvbaError> {
        let predicate = Arc::new(LanePredicate {
            config: self.config,
            checker: self.checker.clone(),
            max_value: self.max_value,
            base: OnceLock::new(),
            verdicts: Mutex::new(BTreeMap::new()),
        });
        let mvba = Mvba::new(
            self.config,
            self.our_id,
            mvba_instance(&self.instance, epoch),
            self.keys.clone(),
            predicate.clone(),
            self.max_value,
        )?;
        Ok(Epoch {
            mvba,
            predicate,
            gated: BTreeMap::new(),
            proposed: false,
            decided: None,
            delivered: false,
        })
    }

    /// The state of an accepted epoch, created on first use. `None` only if the MVBA
    /// constructor fails, which `new` rules out by building epoch 0 with the same arguments.
    fn epoch_state(&mut self, epoch: u64) -> Option<&mut Epoch<S>> {
        if !self.epochs.contains_key(&epoch) {
            match self.new_epoch(epoch) {
                Ok(state) => {
                    self.epochs.insert(epoch, state);
                }
                Err(error) => {
                    tracing::error!(%error, epoch, "htabc: cannot create the epoch's MVBA");
                    return None;
                }
            }
        }
        self.epochs.get_mut(&epoch)
    }

    /// Record that `(lane, slot, digest)` is certified by `certificate` (already verified).
    fn learn_certificate(
        &mut self,
        lane: NodeId,
        slot: u64,
        digest: Digest,
        certificate: &S::Signature,
    ) {
        let span = 2 * self.ht.lane_window;
        let Some(state) = self.lanes.get_mut(lane.index()) else {
            return;
        };
        if slot > state.delivered && slot <= state.delivered.saturating_add(span) {
            state.certified.insert(slot, digest);
        }
        if state.latest.as_ref().is_none_or(|l| l.slot < slot) {
            state.latest = Some(LaneEntry {
                slot,
                digest,
                certificate: certificate.clone(),
            });
        }
    }

    /// Adopt the certificates of the values the predicates found valid (step 2: a node that
    /// sees a valid proposal learns a certified slot above the ordered heights).
    fn absorb_validated(&mut self) {
        let values = std::mem::take(&mut lock(&self.checker.shared).validated);
        let span = 2 * self.ht.lane_window;
        for (value, slots) in values {
            // Decode (decompressing every certificate) only if the value can teach us
            // something: learning a certificate already known changes nothing.
            let news = slots.iter().zip(&self.lanes).any(|(slot, lane)| {
                *slot > 0
                    && (lane.latest.as_ref().is_none_or(|l| l.slot < *slot)
                        || (*slot > lane.delivered
                            && *slot <= lane.delivered.saturating_add(span)
                            && !lane.certified.contains_key(slot)))
            });
            if !news {
                continue;
            }
            let Ok(vector) =
                codec::decode_with_limit::<LaneVector<S::Signature>>(&value, self.max_value)
            else {
                continue;
            };
            for (entry, lane) in vector.entries.iter().zip(NodeId::all(self.config.n())) {
                if let Some(entry) = entry {
                    self.learn_certificate(lane, entry.slot, entry.digest, &entry.certificate);
                }
            }
        }
    }

    /// Step 1 at a voter: `from`'s proposal for `slot` of its lane.
    fn handle_proposal(
        &mut self,
        from: NodeId,
        proposal: DeferredProposal<S::Signature>,
        step: &mut ProtocolStep<Self>,
    ) {
        let DeferredProposal {
            slot,
            prev_digest,
            ref prev_certificate,
            ref requests,
        } = proposal;
        if let Err((count, bytes)) = self.params.check_batch(requests) {
            step.fault(
                from,
                HtAbcFault::BatchOutOfLimits {
                    slot,
                    requests: count,
                    bytes,
                },
            );
            return;
        }
        if slot == 0
            || (slot == 1) != prev_certificate.is_none()
            || (slot == 1 && prev_digest != GENESIS_DIGEST)
        {
            step.fault(from, HtAbcFault::MalformedProposal { slot });
            return;
        }
        let digest = batch_digest(&self.instance, from, slot, &prev_digest, requests);
        let window = self.ht.lane_window;
        let Some(lane) = self.lanes.get(from.index()) else {
            return;
        };
        // A batch we hold for the slot is one the owner proposed to us or a certified one: an
        // honest owner proposes one batch per slot, so another one is evidence.
        if let Some(held) = lane.batches.get(&slot).filter(|h| h.digest != digest) {
            step.fault(
                from,
                HtAbcFault::EquivocatingProposal {
                    slot,
                    first: held.digest,
                    second: digest,
                },
            );
            return;
        }
        let ordered = lane.ordered.0;
        if slot <= lane.voted || slot <= ordered {
            return; // voted already, or a slot we skipped that is certified and ordered
        }
        if slot > ordered.saturating_add(SLOT_HORIZON_EPOCHS * window) {
            step.fault(
                from,
                HtAbcFault::FutureSlot {
                    lane: from,
                    slot,
                    ordered,
                },
            );
            return;
        }
        if let Some(certificate) = prev_certificate {
            if !self
                .checker
                .verify(from, slot - 1, &prev_digest, certificate)
            {
                step.fault(
                    from,
                    HtAbcFault::InvalidCertificate {
                        lane: from,
                        slot: slot - 1,
                    },
                );
                return;
            }
            let certificate = certificate.clone();
            self.learn_certificate(from, slot - 1, prev_digest, &certificate);
        }
        let Some(lane) = self.lanes.get_mut(from.index()) else {
            return;
        };
        if slot > ordered.saturating_add(window) {
            // Backpressure: wait for agreement to catch up; keep the highest such proposal.
            if lane.deferred.as_ref().is_none_or(|d| d.slot < slot) {
                lane.deferred = Some(proposal);
                self.stats.proposals_deferred += 1;
            }
            return;
        }
        lane.voted = slot;
        let requests = proposal.requests;
        lane.batches.insert(
            slot,
            HeldBatch {
                digest,
                prev_digest,
                requests,
            },
        );
        if lane.deferred.as_ref().is_some_and(|d| d.slot <= slot) {
            lane.deferred = None;
        }
        let share = self
            .keys
            .quorum
            .sign_share(&slot_message(&self.instance, from, slot, &digest));
        self.stats.votes_sent += 1;
        step.send(
            Target::Node(from),
            Message::Vote {
                slot,
                digest,
                share,
            },
        );
    }

    /// Re-examine the deferred proposals once agreement has moved on.
    fn resume_deferred(&mut self, step: &mut ProtocolStep<Self>) {
        let window = self.ht.lane_window;
        for index in 0..self.lanes.len() {
            let lane = &mut self.lanes[index];
            let ready = lane
                .deferred
                .as_ref()
                .is_some_and(|d| d.slot <= lane.ordered.0.saturating_add(window));
            if !ready {
                continue;
            }
            if let Some(proposal) = lane.deferred.take() {
                let owner = NodeId(index as u16);
                self.handle_proposal(owner, proposal, step);
            }
        }
    }

    /// Step 1 at the owner: a vote on our outstanding slot.
    fn handle_vote(
        &mut self,
        from: NodeId,
        slot: u64,
        digest: Digest,
        share: S::Share,
        step: &mut ProtocolStep<Self>,
    ) {
        let quorum = self.config.quorum();
        let proposed = self
            .outstanding
            .as_ref()
            .map_or(self.announced_or_latest(), |o| o.slot);
        let Some(outstanding) = self.outstanding.as_mut().filter(|o| o.slot == slot) else {
            if slot > proposed {
                step.fault(from, HtAbcFault::UnexpectedVote { slot });
            }
            return; // a late vote on a certified slot
        };
        if outstanding.digest != digest {
            step.fault(from, HtAbcFault::UnexpectedVote { slot });
            return;
        }
        let signer = from.index();
        if outstanding.invalid.contains(&signer) || outstanding.shares.contains_key(&signer) {
            return;
        }
        outstanding.shares.insert(signer, share);
        if outstanding.shares.len() < quorum {
            return;
        }
        let message = slot_message(&self.instance, self.our_id, slot, &digest);
        let result = self.keys.quorum.combine(&message, &outstanding.shares);
        let invalid_signers = match &result {
            Ok(combined) => combined.invalid_signers.clone(),
            Err(CombineError::NotEnoughValidShares {
                invalid_signers, ..
            }) => invalid_signers.clone(),
            Err(error) => {
                tracing::error!(%error, slot, "htabc: cannot combine vote shares");
                Vec::new()
            }
        };
        for signer in invalid_signers {
            outstanding.shares.remove(&signer);
            outstanding.invalid.insert(signer);
            step.fault(NodeId(signer as u16), HtAbcFault::InvalidVoteShare { slot });
        }
        if let Ok(combined) = result {
            self.outstanding = None;
            self.learn_certificate(self.our_id, slot, digest, &combined.signature);
        }
    }

    /// The highest slot of our lane proposed so far, when none is outstanding.
    fn announced_or_latest(&self) -> u64 {
        self.lanes
            .get(self.our_id.index())
            .and_then(|l| l.latest.as_ref())
            .map_or(0, |e| e.slot)
    }

    /// Step 1 at the owner: propose the next slot if the previous one is certified, we have
    /// requests and the window allows; otherwise announce the last certificate once.
    fn propose_batch(&mut self, step: &mut ProtocolStep<Self>) {
        if self.outstanding.is_some() {
            return;
        }
        let Some(lane) = self.lanes.get(self.our_id.index()) else {
            return;
        };
        let (last, prev_digest, prev_certificate) = match &lane.latest {
            Some(e) => (e.slot, e.digest, Some(e.certificate.clone())),
            None => (0, GENESIS_DIGEST, None),
        };
        let slot = last.saturating_add(1);
        if !self.pending.is_empty() && slot <= lane.ordered.0.saturating_add(self.ht.lane_window) {
            let (requests, digests) = self.pending.take_front_batch(&self.params);
            self.in_flight.extend(digests);
            let digest = batch_digest(&self.instance, self.our_id, slot, &prev_digest, &requests);
            self.outstanding = Some(Outstanding {
                slot,
                digest,
                shares: BTreeMap::new(),
                invalid: BTreeSet::new(),
            });
            self.announced = last;
            self.stats.batches_proposed += 1;
            step.send(
                Target::All,
                Message::Proposal {
                    slot,
                    prev_digest,
                    prev_certificate,
                    requests,
                },
            );
        } else if last > self.announced {
            if let Some(certificate) = prev_certificate {
                self.announced = last;
                step.send(
                    Target::Others,
                    Message::Certified {
                        slot: last,
                        digest: prev_digest,
                        certificate,
                    },
                );
            }
        }
    }

    /// A `Certified` message: `from`'s lane is certified up to `slot`.
    fn handle_certified(
        &mut self,
        from: NodeId,
        slot: u64,
        digest: Digest,
        certificate: S::Signature,
        step: &mut ProtocolStep<Self>,
    ) {
        let Some(lane) = self.lanes.get(from.index()) else {
            return;
        };
        if lane.latest.as_ref().is_some_and(|l| l.slot >= slot) {
            return; // known already
        }
        let ordered = lane.ordered.0;
        if slot > ordered.saturating_add(SLOT_HORIZON_EPOCHS * self.ht.lane_window) {
            step.fault(
                from,
                HtAbcFault::FutureSlot {
                    lane: from,
                    slot,
                    ordered,
                },
            );
            return;
        }
        if slot == 0 || !self.checker.verify(from, slot, &digest, &certificate) {
            step.fault(from, HtAbcFault::InvalidCertificate { lane: from, slot });
            return;
        }
        self.learn_certificate(from, slot, digest, &certificate);
    }

    /// Step 3: answer a fetch if we hold the batch.
    fn handle_fetch(
        &mut self,
        from: NodeId,
        lane: NodeId,
        slot: u64,
        digest: Digest,
        step: &mut ProtocolStep<Self>,
    ) {
        let Some(state) = self.lanes.get(lane.index()) else {
            step.fault(from, HtAbcFault::UnknownLane { index: lane.0 });
            return;
        };
        if let Some(batch) = state.batches.get(&slot).filter(|b| b.digest == digest) {
            step.send(
                Target::Node(from),
                Message::Batch {
                    lane,
                    slot,
                    prev_digest: batch.prev_digest,
                    requests: batch.requests.clone(),
                },
            );
        }
    }

    /// Step 3: a fetch answer, accepted only for a slot asked for and the digest asked for.
    fn handle_batch_answer(
        &mut self,
        from: NodeId,
        lane: NodeId,
        slot: u64,
        prev_digest: Digest,
        requests: Vec<Vec<u8>>,
        step: &mut ProtocolStep<Self>,
    ) {
        if !self.config.contains(lane) {
            step.fault(from, HtAbcFault::UnknownLane { index: lane.0 });
            return;
        }
        let Some(expected) = self.fetches.get(&(lane, slot)).copied() else {
            return; // not asked for, or answered already
        };
        if self.params.check_batch(&requests).is_err()
            || batch_digest(&self.instance, lane, slot, &prev_digest, &requests) != expected
        {
            step.fault(from, HtAbcFault::InvalidBatchAnswer { lane, slot });
            return;
        }
        self.fetches.remove(&(lane, slot));
        self.stats.batches_fetched += 1;
        if let Some(state) = self.lanes.get_mut(lane.index()) {
            state.batches.insert(
                slot,
                HeldBatch {
                    digest: expected,
                    prev_digest,
                    requests,
                },
            );
        }
    }

    /// Step 2: route an MVBA message to its epoch.
    fn handle_mvba(
        &mut self,
        from: NodeId,
        epoch: u64,
        message: mvba::MvbaMessage<S>,
        rng: &mut dyn RngCore,
        step: &mut ProtocolStep<Self>,
    ) {
        if epoch < self.epoch {
            if let Some(state) = self.epochs.get_mut(&epoch) {
                Self::route(state, epoch, from, message, rng, step);
            }
            return;
        }
        let current = self.epoch;
        let n = self.config.n();
        let Some(state) = self.epoch_state(epoch) else {
            return;
        };
        let judged = matches!(
            message,
            mvba::Message::Proposal(..) | mvba::Message::Vote { .. }
        );
        if epoch > current && judged && state.predicate.base.get().is_none() {
            let queue = state.gated.entry(from).or_default();
            if queue.len() >= gated_per_sender(n) {
                step.fault(from, HtAbcFault::TooManyEarlyMessages { epoch });
            } else {
                queue.push(message);
            }
            return;
        }
        Self::route(state, epoch, from, message, rng, step);
    }

    fn route(
        state: &mut Epoch<S>,
        epoch: u64,
        from: NodeId,
        message: mvba::MvbaMessage<S>,
        rng: &mut dyn RngCore,
        step: &mut ProtocolStep<Self>,
    ) {
        let child = state.mvba.handle_message(from, message, rng);
        let decisions = step.extend_with(
            child,
            |message| Message::Mvba { epoch, message },
            |fault| HtAbcFault::Mvba { epoch, fault },
        );
        if let Some(value) = decisions.into_iter().next() {
            if !state.delivered && state.decided.is_none() {
                state.decided = Some(value);
            }
        }
    }

    /// Step 2: propose our lane vector in the current epoch if we know a certified slot above
    /// the ordered heights.
    fn propose_epoch(&mut self, rng: &mut dyn RngCore, step: &mut ProtocolStep<Self>) {
        let epoch = self.epoch;
        let advanced = self
            .lanes
            .iter()
            .any(|l| l.latest.as_ref().is_some_and(|e| e.slot > l.ordered.0));
        let Some(state) = self.epochs.get_mut(&epoch) else {
            return;
        };
        if !advanced || state.proposed || state.decided.is_some() {
            return;
        }
        state.proposed = true;
        let vector = LaneVector {
            entries: self.lanes.iter().map(|l| l.latest.clone()).collect(),
        };
        let value = match codec::encode(&vector) {
            Ok(value) => value,
            Err(error) => {
                tracing::error!(%error, epoch, "htabc: cannot encode our lane vector");
                return;
            }
        };
        match state.mvba.handle_input(value, rng) {
            Ok(child) => {
                let decisions = step.extend_with(
                    child,
                    |message| Message::Mvba { epoch, message },
                    |fault| HtAbcFault::Mvba { epoch, fault },
                );
                if let Some(value) = decisions.into_iter().next() {
                    state.decided.get_or_insert(value);
                }
            }
            // Every entry is a verified certificate at or above the ordered height.
            Err(error) => tracing::error!(%error, epoch, "htabc: MVBA refused our vector"),
        }
    }

    /// The decided vector of the current epoch, as `(height, digest)` per lane (unchanged
    /// lanes keep the ordered height).
    fn decided_targets(&self, vector: Option<&LaneVector<S::Signature>>) -> Vec<(u64, Digest)> {
        self.lanes
            .iter()
            .enumerate()
            .map(|(index, lane)| {
                let entry = vector
                    .and_then(|v| v.entries.get(index))
                    .and_then(Option::as_ref);
                match entry {
                    Some(e) if e.slot >= lane.ordered.0 => (e.slot, e.digest),
                    _ => lane.ordered,
                }
            })
            .collect()
    }

    /// Step 3 for the current epoch once decided: fix the ordered heights, fetch what is
    /// missing, deliver when everything is held. Returns whether the epoch was delivered.
    fn try_deliver(&mut self, step: &mut ProtocolStep<Self>) -> bool {
        let epoch = self.epoch;
        let Some(value) = self.epochs.get(&epoch).and_then(|s| s.decided.clone()) else {
            return false;
        };
        // The value satisfies Q_e here (MVBA external validity): its certificates verified.
        // Decoded once (each certificate is a compressed curve point to decompress and check).
        let vector =
            codec::decode_with_limit::<LaneVector<S::Signature>>(&value, self.max_value).ok();
        let targets = self.decided_targets(vector.as_ref());
        if let Some(vector) = vector {
            for (entry, lane) in vector.entries.iter().zip(NodeId::all(self.config.n())) {
                if let Some(e) = entry {
                    self.learn_certificate(lane, e.slot, e.digest, &e.certificate);
                }
            }
        }
        for (lane, target) in self.lanes.iter_mut().zip(&targets) {
            lane.ordered = *target;
        }
        let mut chains: Vec<Vec<&HeldBatch>> = Vec::new();
        let mut missing: Vec<(NodeId, u64, Digest)> = Vec::new();
        for ((lane, target), id) in self
            .lanes
            .iter()
            .zip(&targets)
            .zip(NodeId::all(self.config.n()))
        {
            match lane_chain(&lane.batches, &lane.certified, lane.delivered, *target) {
                Ok(chain) => chains.push(chain),
                Err(slots) => missing.extend(slots.into_iter().map(|(s, d)| (id, s, d))),
            }
        }
        if !missing.is_empty() {
            for (lane, slot, digest) in missing {
                if self.fetches.len() >= self.ht.max_fetches {
                    break;
                }
                if self.fetches.insert((lane, slot), digest).is_none() {
                    self.stats.fetches_sent += 1;
                    step.send(Target::Others, Message::Fetch { lane, slot, digest });
                }
            }
            return false;
        }
        // Each request is hashed once: its digest serves the dedup and the removals below.
        let (requests, digests, all) = epoch_requests_and_digests(
            chains
                .iter()
                .flatten()
                .map(|batch| batch.requests.as_slice()),
            &mut self.delivered,
        );
        // Everything in the delivered batches leaves our queue and in-flight set, duplicates
        // included.
        self.pending.remove_all(&all);
        for digest in &all {
            self.in_flight.remove(digest);
        }
        self.delivered.close_round(epoch, digests);
        step.output(AbcDelivery {
            round: epoch,
            requests,
        });
        self.advance(&targets);
        true
    }

    /// Move to the next epoch after delivering the current one at `targets`.
    fn advance(&mut self, targets: &[(u64, Digest)]) {
        let retained = self.ht.retained_slots;
        let mut shared = lock(&self.checker.shared);
        for ((lane, target), id) in self
            .lanes
            .iter_mut()
            .zip(targets)
            .zip(NodeId::all(self.config.n()))
        {
            lane.delivered = target.0;
            let floor = target.0.saturating_sub(retained).saturating_add(1);
            lane.batches = lane.batches.split_off(&floor);
            lane.certified = lane.certified.split_off(&target.0.saturating_add(1));
            shared.prune(id, target.0);
        }
        drop(shared);
        self.fetches
            .retain(|(lane, slot), _| *slot > targets.get(lane.index()).map_or(0, |t| t.0));
        if let Some(state) = self.epochs.get_mut(&self.epoch) {
            state.delivered = true;
            state.decided = None;
        }
        self.epoch += 1;
        let lowest = self.epoch.saturating_sub(RETAINED_EPOCHS);
        self.epochs = self.epochs.split_off(&lowest);
    }

    /// Make the current epoch's predicate ready and hand it the messages that waited.
    fn activate_epoch(&mut self, rng: &mut dyn RngCore, step: &mut ProtocolStep<Self>) {
        let epoch = self.epoch;
        let base: Vec<(u64, Digest)> = self.lanes.iter().map(|l| l.ordered).collect();
        let Some(state) = self.epoch_state(epoch) else {
            return;
        };
        if state.predicate.base.set(base).is_err() {
            return; // active already
        }
        let gated = std::mem::take(&mut state.gated);
        for (from, messages) in gated {
            for message in messages {
                Self::route(state, epoch, from, message, rng, step);
            }
        }
    }

    /// Steps 1–3 as far as they go.
    fn progress(&mut self, rng: &mut dyn RngCore, step: &mut ProtocolStep<Self>) {
        loop {
            self.resume_deferred(step);
            self.absorb_validated();
            self.propose_batch(step);
            self.propose_epoch(rng, step);
            self.absorb_validated();
            if !self.try_deliver(step) {
                return;
            }
            self.activate_epoch(rng, step);
        }
    }
}

impl<S: ThresholdSigner + Send + Sync + 'static> Protocol for HtAbc<S> {
    type Message = HtAbcMessage<S>;
    type Input = Vec<u8>;
    type Output = AbcDelivery;
    type FaultKind = HtAbcFault;
    type Error = HtAbcError;

    fn our_id(&self) -> NodeId {
        self.our_id
    }

    /// Submit a request: it joins the pending queue and goes into our lane's next batch.
    fn handle_input(
        &mut self,
        request: Vec<u8>,
        rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, HtAbcError> {
        if request.len() > self.params.max_request_size {
            return Err(HtAbcError::RequestTooLarge {
                len: request.len(),
                max: self.params.max_request_size,
            });
        }
        let digest = abc::request_digest(&request);
        if self.delivered.contains(&digest) {
            return Err(HtAbcError::AlreadyDelivered);
        }
        if self.pending.contains(&digest) || self.in_flight.contains(&digest) {
            return Err(HtAbcError::AlreadyPending);
        }
        if self.pending() >= self.params.max_pending {
            return Err(HtAbcError::QueueFull {
                max: self.params.max_pending,
            });
        }
        self.pending.push(digest, request);
        let mut step = Step::new();
        self.progress(rng, &mut step);
        Ok(step)
    }

    fn handle_message(
        &mut self,
        from: NodeId,
        message: HtAbcMessage<S>,
        rng: &mut dyn RngCore,
    ) -> ProtocolStep<Self> {
        let mut step = Step::new();
        if !self.config.contains(from) {
            step.fault(from, HtAbcFault::NotAMember);
            return step;
        }
        match message {
            Message::Proposal {
                slot,
                prev_digest,
                prev_certificate,
                requests,
            } => {
                let proposal = DeferredProposal {
                    slot,
                    prev_digest,
                    prev_certificate,
                    requests,
                };
                self.handle_proposal(from, proposal, &mut step);
            }
            Message::Vote {
                slot,
                digest,
                share,
            } => self.handle_vote(from, slot, digest, share, &mut step),
            Message::Certified {
                slot,
                digest,
                certificate,
            } => self.handle_certified(from, slot, digest, certificate, &mut step),
            Message::Fetch { lane, slot, digest } => {
                self.handle_fetch(from, lane, slot, digest, &mut step);
            }
            Message::Batch {
                lane,
                slot,
                prev_digest,
                requests,
            } => self.handle_batch_answer(from, lane, slot, prev_digest, requests, &mut step),
            Message::Mvba { epoch, message } => {
                if epoch > self.epoch.saturating_add(EPOCH_WINDOW) {
                    step.fault(
                        from,
                        HtAbcFault::FutureEpoch {
                            epoch,
                            current: self.epoch,
                        },
                    );
                    return step;
                }
                self.handle_mvba(from, epoch, message, rng, &mut step);
            }
        }
        self.progress(rng, &mut step);
        step
    }

    /// Atomic broadcast runs for as long as the service does.
    fn terminated(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests;
