//! Atomic broadcast (total-order broadcast) in rounds of multivalued validated agreement.
//!
//! Follows the atomic broadcast protocol of Cachin–Kursawe–Petzold–Shoup, "Secure and Efficient
//! Asynchronous Broadcast Protocols" (CRYPTO 2001), Sec. 4 ("CKPS01 mode"). Requests submitted
//! at a node wait in its *pending queue*; the group orders them in numbered rounds. Round `r`:
//!
//! 1. **Start.** A node starts round `r` when its pending queue is non-empty, or when it holds a
//!    validly signed round-`r` batch from another node (someone else needs the round). This is
//!    the idle rule: nodes with nothing to order and nobody asking stay idle, so a quiet group
//!    sends nothing at all.
//! 2. **Batch.** It takes the oldest pending requests (at most [`AbcParams::batch_size`] of them
//!    and [`AbcParams::max_batch_bytes`] bytes), signs `(instance, r, sender, requests)` with its
//!    Ed25519 identity key (context [`BATCH_SIGNATURE_CONTEXT`]) and sends the signed batch to
//!    every other node. It sends exactly one batch per round.
//! 3. **Propose.** Once it holds validly signed round-`r` batches from at least `n − f` distinct
//!    nodes (its own included), it proposes the vector of all the batches it holds, ordered by
//!    sender, to the round-`r` MVBA ([`crate::mvba`], CKPS01 Sec. 3) with the external predicate
//!    `Q_r` = "between `n − f` and `n` batches from distinct members, by increasing sender id,
//!    each within the batch limits and validly signed for round `r` by its sender".
//! 4. **Deliver.** When the round-`r` MVBA decides a vector (and every earlier round has been
//!    delivered), the node outputs one [`AbcDelivery`] for round `r`: the requests of the
//!    vector's batches in vector order (by sender id), each batch in its own order, skipping a
//!    request whose digest was already delivered in this round or in the dedup window. Delivered
//!    requests leave the pending queue; then round `r + 1` starts (step 1).
//!
//! A node keeps every pending request in its queue, and proposes the oldest ones again in every
//! round, until the request is delivered.
//!
//! # Output
//! One [`AbcDelivery`] `{ round, requests }` per round, for rounds `0, 1, 2, …` in order and
//! without gaps — a round whose requests were all duplicates (or, impossibly for `n > 3f`, whose
//! decided value does not decode) is delivered with an empty request list — so the `i`-th output
//! of every honest node is its round-`i` delivery.
//!
//! # Guarantees
//! With at most `f` Byzantine nodes among `n > 3f`, unforgeable Ed25519 identities and the
//! threshold key sets MVBA needs (`ThresholdKeys`), and the MVBA guarantees (agreement,
//! external validity, termination with probability 1):
//! - **agreement and total order**: every honest node decides the same vector in every round
//!   (MVBA agreement), and its delivery is a deterministic function of the decided vectors of
//!   rounds `0..=r` (the dedup window is itself such a function). Hence honest nodes output the
//!   same sequence of deliveries; any honest node's sequence is a prefix of another's;
//! - **integrity**: a request delivered in round `r` (identified by its digest,
//!   [`request_digest`]) is not delivered again in round `r` nor in the
//!   [`AbcParams::dedup_rounds`] rounds after it, and a request is delivered only if it is in a
//!   batch signed by its sender, so a request from an honest node's batch was submitted to that
//!   node. Honest nodes never propose a request again after delivering it and refuse to queue a
//!   request still in the dedup window, so a request is delivered twice only if a Byzantine node
//!   re-proposes it, or a client re-submits it, more than `dedup_rounds` rounds after its
//!   delivery (layers that need exactly-once over longer spans deduplicate by client sequence
//!   number);
//! - **validity**: a request submitted at `f + 1` honest nodes is delivered once it is among the
//!   oldest `batch_size` pending requests at those nodes: a decided vector holds `n − f` batches,
//!   so it includes one of those `f + 1` nodes' batches (CKPS01 Sec. 4). A request submitted at a
//!   single honest node is delivered if message delays are not adversarial (as in the
//!   simulator): the node proposes it in every round until it is delivered, and each round's
//!   decided vector includes that node's batch with positive probability — an adversarial
//!   scheduler could keep excluding one node, so clients submit to `f + 1` nodes;
//! - **quiescence**: once every honest pending queue is empty and every started round is
//!   delivered, honest nodes start no new round (step 1); their last MVBA instances finish and
//!   fall silent. A Byzantine node can keep the group busy with rounds by sending signed batches,
//!   exactly as it could by submitting requests; it cannot stop progress.
//!
//! **Signature checks.** `Q_r` must be deterministic (honest nodes must agree on it, or MVBA
//! loses agreement and termination), so it verifies batch signatures *strictly*
//! ([`IdentityPublicKey::verify`]). Ed25519 batch verification
//! ([`maftia_crypto::identity::verify_batch`]) is not used: it can accept a signature crafted by its own key owner that strict verification
//! rejects, so a node checking a subset and a node checking the whole list could disagree; the
//! one deterministic way to use it — always verifying a proposal's whole list — costs each node
//! `n − f` verifications per distinct proposal, about `n` times more than verifying each
//! signature once (measured: it doubled the run time of the `n = 10` simulator sweep). Every
//! signature a node accepts — received directly or inside a proposal — is verified once and
//! cached per round, sender and signature, so each node verifies about `n` signatures per round.
//!
//! # Assumptions
//! Authenticated point-to-point links (the runtime vouches for `from`), asynchronous delivery
//! with no timing assumption, `n > 3f`, a trusted dealer's (or DKG's) threshold key sets and a
//! registry of the members' Ed25519 identity keys. A node that falls more than [`ROUND_WINDOW`]
//! rounds behind drops the messages of rounds it cannot hold yet (and reports them as
//! [`AbcFault::FutureRound`]); it then needs state transfer from the layer above (the simulator's
//! schedules never get there): the layer installs a state snapshot taken after some round `r`
//! and restarts ordering at `r + 1` with [`Abc::resume`] (a fresh instance, after a restart) or
//! [`Abc::skip_to`] (the lagging live instance, which keeps what it holds for rounds `> r`),
//! given the dedup window of rounds `r − dedup_rounds + 1 ..= r` as a [`ResumePoint`] (built
//! with [`RecentWindow`]). A fresh instance resumed while the others are inside round `r + 1`
//! has missed that round's earlier messages and may not finish it (ABC does not retransmit);
//! a later [`Abc::skip_to`] gets it going again.
//!
//! # Complexity (per round)
//! `n²` batch messages of at most `max_batch_bytes` each, plus one MVBA on a value of up to `n`
//! batches: an expected `O(n²)` messages and `O(n³ · B)` bits for batches of `B` bytes (CKPS01
//! Sec. 4.2). Crypto: one Ed25519 signature and about `n` strict verifications per node (each
//! distinct signed batch once, whether received directly or inside a proposal; an equivocating
//! sender's extra batches are verified at most once each per proposal that carries them), on
//! top of the MVBA's threshold cryptography.
//!
//! # Bounded state
//! Messages for rounds above `current + ROUND_WINDOW` are dropped with a fault; batches for past
//! rounds are dropped silently; MVBA messages of a past round reach that round's instance only
//! while it is kept ([`RETAINED_ROUNDS`] rounds after delivery, so laggards can still finish),
//! and are dropped silently afterwards. A node holds at most one batch per sender for each of the
//! `ROUND_WINDOW + 1` rounds it accepts, at most `ROUND_WINDOW + 1 + RETAINED_ROUNDS` MVBA
//! instances (each bounded by [`crate::mvba`]), at most [`CACHED_SIGNATURES_PER_SENDER`] cached
//! signature checks per sender and round, `max_pending` pending requests, and the digests of the
//! requests delivered in the last `dedup_rounds` rounds. [`Abc::stored_messages`] counts the
//! stored batches, the decided values not yet delivered and every MVBA instance's own count, so
//! it is at most `(ROUND_WINDOW + 1) · (n + 1)` plus `ROUND_WINDOW + 1 + RETAINED_ROUNDS` times
//! the MVBA bound ([`Abc::stored_messages_bound`]); the signature cache holds at most
//! `(ROUND_WINDOW + 1 + RETAINED_ROUNDS) · n ·` [`CACHED_SIGNATURES_PER_SENDER`] entries and each
//! round's predicate at most [`VERDICTS_PER_MEMBER`]` · n` verdicts.
//!
//! The Dumbo-NG-style high-throughput mode (PROTOCOLS.md) is [`crate::htabc`]; [`crate::atomic`]
//! offers both behind one interface.
use crate::keys::ThresholdKeys;
use crate::mvba::{self, Mvba, MvbaError, MvbaFault, Validator};
use maftia_core::codec::{self, MAX_MESSAGE_SIZE};
use maftia_core::{GroupConfig, NodeId, Protocol, ProtocolStep, Step, Target};
use maftia_crypto::hash::{hash, hasher, Digest};
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey, IdentitySignature};
use maftia_crypto::threshold::ThresholdSigner;
use rand_core::RngCore;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use thiserror::Error;

/// Identity-signature context of a round batch (the signed message is [`batch_message`]).
pub const BATCH_SIGNATURE_CONTEXT: &str = "maftia 2026-11 abc batch";
/// Hash context of [`batch_message`].
pub const BATCH_MESSAGE_CONTEXT: &str = "maftia 2026-11 abc batch message";
/// Hash context of [`request_digest`].
pub const REQUEST_DIGEST_CONTEXT: &str = "maftia 2026-11 abc request";
/// Hash context of the instance tag of a round's MVBA ([`mvba_instance`]).
pub const MVBA_INSTANCE_CONTEXT: &str = "maftia 2026-11 abc mvba instance";
/// Hash context of [`ResumePoint::digest`].
pub const RESUME_POINT_CONTEXT: &str = "maftia 2026-11 abc resume point";
/// Highest round a [`ResumePoint`] may name: rounds count up by one from there, so a resume point
/// from the network can never bring a round counter near overflow.
pub const MAX_RESUME_ROUND: u64 = 1 << 62;
/// Hash context of the signature-cache keys.
const CACHE_KEY_CONTEXT: &str = "maftia 2026-11 abc verified batch signature";
/// Hash context of the keys of `Q_r`'s verdict cache.
const VALUE_DIGEST_CONTEXT: &str = "maftia 2026-11 abc proposal value";

/// Rounds accepted ahead of the current one: messages for rounds up to `current + ROUND_WINDOW`
/// are kept, later ones dropped with [`AbcFault::FutureRound`]. Large enough that a replica
/// which installed a checkpoint (taken every few dozen rounds) can take the rounds it still
/// misses from its peers' re-sent frames in one go, instead of a few rounds per re-send; the
/// stored-message bounds below grow linearly with it.
pub const ROUND_WINDOW: u64 = 32;
/// Delivered rounds whose MVBA instance is kept (and keeps answering) so that slower nodes can
/// finish them.
pub const RETAINED_ROUNDS: u64 = 4;
/// Signature checks cached per (round, sender); an equivocating sender cannot grow the cache.
pub const CACHED_SIGNATURES_PER_SENDER: usize = 4;
/// Verdicts of `Q_r` cached per member (MVBA asks about each proposer's value, each newly
/// certified value and each voted value: a few distinct values per proposer).
pub const VERDICTS_PER_MEMBER: usize = 4;
/// Encoding overhead, beyond its requests' bytes, of one signed batch inside a proposal (sender,
/// request count, signature) — an upper bound for postcard's varints.
const BATCH_OVERHEAD: usize = 96;
/// Encoding overhead of one request (its length varint).
const REQUEST_OVERHEAD: usize = 10;
/// Encoding overhead of a whole proposal (codec header, batch count).
const VECTOR_OVERHEAD: usize = 16;

/// `H(request)`: the identity of a request for deduplication.
pub fn request_digest(request: &[u8]) -> Digest {
    // Equal to `hash(REQUEST_DIGEST_CONTEXT, &[request])`; the keyed hasher is derived once
    // (a pure constant, computed on first use) instead of once per request.
    static KEYED: OnceLock<blake3::Hasher> = OnceLock::new();
    let mut h = KEYED
        .get_or_init(|| hasher(REQUEST_DIGEST_CONTEXT, &[]))
        .clone();
    h.update(&(request.len() as u64).to_le_bytes());
    h.update(request);
    h.finalize().into()
}

/// Bytes staged before each BLAKE3 update in [`batch_message`]: fed many chunks at once,
/// BLAKE3 hashes them in parallel SIMD lanes; fed request by request it compresses one block
/// at a time, several times slower.
const BATCH_HASH_STAGING: usize = 64 * 1024;

/// The message a round batch's signature signs: `H(instance, round, sender, requests)`, with
/// every request length-prefixed, so a batch never counts for another instance, round, sender
/// or content.
pub fn batch_message(instance: &[u8], round: u64, sender: NodeId, requests: &[Vec<u8>]) -> Digest {
    let mut h = hasher(
        BATCH_MESSAGE_CONTEXT,
        &[instance, &round.to_le_bytes(), &sender.0.to_le_bytes()],
    );
    h.update(&(requests.len() as u64).to_le_bytes());
    // The same byte stream as updating with each length and request in turn, staged.
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

/// The instance tag of the round-`round` MVBA of the ABC instance `instance`.
pub fn mvba_instance(instance: &[u8], round: u64) -> Vec<u8> {
    hash(MVBA_INSTANCE_CONTEXT, &[instance, &round.to_le_bytes()]).to_vec()
}

/// Limits and sizes of an ABC instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbcParams {
    /// Most requests a node puts in one round's batch (and accepts in another's).
    pub batch_size: usize,
    /// Most bytes of requests in one batch.
    pub max_batch_bytes: usize,
    /// Largest request accepted (at most `max_batch_bytes`).
    pub max_request_size: usize,
    /// Most requests waiting in the local pending queue; input beyond it is refused.
    pub max_pending: usize,
    /// Rounds over which delivered requests are remembered for deduplication (at least 1): a
    /// request delivered in round `r` is skipped in rounds `r ..= r + dedup_rounds`.
    pub dedup_rounds: u64,
}

impl Default for AbcParams {
    /// 256 requests or 256 KiB per batch, requests up to 4 KiB, 10 000 pending, a dedup window
    /// of 64 rounds. Proposals then fit the message size limit for groups of up to 31 nodes
    /// (larger groups need smaller batches: [`Abc::new`] checks).
    fn default() -> Self {
        AbcParams {
            batch_size: 256,
            max_batch_bytes: 256 * 1024,
            max_request_size: 4096,
            max_pending: 10_000,
            dedup_rounds: 64,
        }
    }
}

impl AbcParams {
    /// The largest encoded proposal of a group of `n` within these limits, or `None` if it
    /// does not fit a `usize`.
    pub fn max_value_size(&self, n: usize) -> Option<usize> {
        let per_batch = self
            .batch_size
            .checked_mul(REQUEST_OVERHEAD)?
            .checked_add(self.max_batch_bytes)?
            .checked_add(BATCH_OVERHEAD)?;
        per_batch.checked_mul(n)?.checked_add(VECTOR_OVERHEAD)
    }

    /// Whether `requests` fit one batch; `Err((count, bytes))` if not.
    pub(crate) fn check_batch(&self, requests: &[Vec<u8>]) -> Result<(), (usize, usize)> {
        let bytes = requests
            .iter()
            .map(Vec::len)
            .fold(0usize, usize::saturating_add);
        if requests.len() > self.batch_size
            || bytes > self.max_batch_bytes
            || requests.iter().any(|r| r.len() > self.max_request_size)
        {
            return Err((requests.len(), bytes));
        }
        Ok(())
    }
}

/// One node's signed batch inside a proposal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBatch {
    pub sender: NodeId,
    #[serde(with = "crate::wire::byte_lists")]
    pub requests: Vec<Vec<u8>>,
    /// `sender`'s identity signature on [`batch_message`] (context [`BATCH_SIGNATURE_CONTEXT`]).
    pub signature: IdentitySignature,
}

/// The value proposed to, and decided by, a round's MVBA: signed batches by increasing sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchVector {
    pub batches: Vec<SignedBatch>,
}

/// What ABC nodes send each other; generic over the threshold signer's share and signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "Share: Serialize, Signature: Serialize",
    deserialize = "Share: DeserializeOwned, Signature: DeserializeOwned"
))]
pub enum Message<Share, Signature> {
    /// Step 2: the sender's signed batch for `round` (the sender is the link's `from`).
    Batch {
        round: u64,
        #[serde(with = "crate::wire::byte_lists")]
        requests: Vec<Vec<u8>>,
        signature: IdentitySignature,
    },
    /// Steps 3–4: a message of the round-`round` MVBA.
    Mvba {
        round: u64,
        message: mvba::Message<Share, Signature>,
    },
}

impl<Share, Signature> Message<Share, Signature> {
    /// The round the message belongs to.
    pub fn round(&self) -> u64 {
        match self {
            Message::Batch { round, .. } | Message::Mvba { round, .. } => *round,
        }
    }
}

/// The message type of an [`Abc`] instance using signer `S`.
pub type AbcMessage<S> = Message<<S as ThresholdSigner>::Share, <S as ThresholdSigner>::Signature>;

/// What ABC delivers: the requests ordered in `round`, in delivery order (possibly none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbcDelivery {
    pub round: u64,
    pub requests: Vec<Vec<u8>>,
}

/// How a peer misbehaved in ABC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AbcFault {
    /// A message from a node outside the group.
    NotAMember,
    /// A message for a round beyond `current + ROUND_WINDOW` (or this node lags that far).
    FutureRound { round: u64, current: u64 },
    /// A batch above the batch limits.
    BatchOutOfLimits {
        round: u64,
        requests: usize,
        bytes: usize,
    },
    /// A batch whose signature does not verify.
    InvalidBatchSignature { round: u64 },
    /// Two different validly signed batches for one round: digests of both signed messages.
    EquivocatingBatch {
        round: u64,
        first: Digest,
        second: Digest,
    },
    /// Misbehaviour inside a round's MVBA.
    Mvba { round: u64, fault: MvbaFault },
}

/// Misconfiguration or local misuse of an ABC instance.
#[derive(Debug, Error)]
pub enum AbcError {
    #[error("{node} is not a member of a group of {n}")]
    NotAMember { node: NodeId, n: usize },
    #[error("{found} identity keys given for a group of {expected}")]
    IdentityCount { found: usize, expected: usize },
    #[error("our identity key does not match the registry's key for {our_id}")]
    IdentityMismatch { our_id: NodeId },
    #[error("invalid parameters: {0}")]
    InvalidParams(&'static str),
    #[error("proposals of up to {size} bytes do not fit a message (limit {limit})")]
    ProposalTooLarge { size: usize, limit: usize },
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
    #[error("invalid resume point: {0}")]
    InvalidResumePoint(#[from] ResumeError),
}

/// Strict signature checks already passed, shared by the node and its rounds' predicates.
#[derive(Default)]
struct SignatureCache {
    /// Rounds whose checks may be cached (the node's accepted and retained rounds).
    lowest: u64,
    highest: u64,
    /// Keys ([`SignatureCache::key`]) of strictly valid signatures, per (round, sender).
    entries: BTreeMap<(u64, NodeId), Vec<Digest>>,
}

impl SignatureCache {
    fn key(message: &Digest, signature: &IdentitySignature) -> Digest {
        hash(CACHE_KEY_CONTEXT, &[message, &signature.to_bytes()])
    }

    fn contains(&self, round: u64, sender: NodeId, key: &Digest) -> bool {
        self.entries
            .get(&(round, sender))
            .is_some_and(|keys| keys.contains(key))
    }

    fn insert(&mut self, round: u64, sender: NodeId, key: Digest) {
        if round < self.lowest || round > self.highest {
            return;
        }
        let keys = self.entries.entry((round, sender)).or_default();
        // A sender with more signed batches than this in one round is Byzantine: stop caching.
        if !keys.contains(&key) && keys.len() < CACHED_SIGNATURES_PER_SENDER {
            keys.push(key);
        }
    }

    fn set_rounds(&mut self, lowest: u64, highest: u64) {
        self.lowest = lowest;
        self.highest = highest;
        self.entries.retain(|(round, _), _| *round >= lowest);
    }

    fn len(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }
}

type SharedCache = Arc<Mutex<SignatureCache>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The mutexes hold only memoized verification results, each inserted whole; a panic while
    // holding one cannot leave a half-written entry, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The external predicate `Q_r` of the round-`r` MVBA (step 3).
///
/// `Q_r(v)` holds iff `v` decodes to between `n − f` and `n` batches of distinct members by
/// increasing sender id, each within the batch limits and with a signature that verifies
/// strictly on [`batch_message`]`(instance, r, sender, requests)`. Strict verification is a
/// deterministic function of its input, so `Q_r` is one too, as MVBA requires. Each signature is
/// verified at most once per node (the shared cache also holds the batches received directly),
/// and each distinct value is judged at most once (the verdict cache).
struct BatchVectorPredicate {
    config: GroupConfig,
    round: u64,
    instance: Arc<[u8]>,
    identities: Arc<Vec<IdentityPublicKey>>,
    params: AbcParams,
    max_value: usize,
    cache: SharedCache,
    /// Verdicts on values already judged, by `H(value)` (at most [`VERDICTS_PER_MEMBER`]·n).
    verdicts: Mutex<BTreeMap<Digest, bool>>,
}

impl BatchVectorPredicate {
    fn evaluate(&self, value: &[u8]) -> bool {
        let Ok(vector) = codec::decode_with_limit::<BatchVector>(value, self.max_value) else {
            return false;
        };
        let count = vector.batches.len();
        if count < self.config.quorum() || count > self.config.n() {
            return false;
        }
        let mut previous: Option<NodeId> = None;
        for batch in &vector.batches {
            if !self.config.contains(batch.sender)
                || previous.is_some_and(|p| p >= batch.sender)
                || self.params.check_batch(&batch.requests).is_err()
            {
                return false;
            }
            previous = Some(batch.sender);
        }
        vector.batches.iter().all(|batch| {
            let message = batch_message(&self.instance, self.round, batch.sender, &batch.requests);
            verify_batch_signature(
                &self.cache,
                &self.identities,
                self.round,
                batch.sender,
                &message,
                &batch.signature,
            )
        })
    }
}

/// Whether `sender`'s `signature` on the batch `message` of `round` verifies strictly; a
/// signature found valid is cached and never verified again.
fn verify_batch_signature(
    cache: &SharedCache,
    identities: &[IdentityPublicKey],
    round: u64,
    sender: NodeId,
    message: &Digest,
    signature: &IdentitySignature,
) -> bool {
    let key = SignatureCache::key(message, signature);
    if lock(cache).contains(round, sender, &key) {
        return true;
    }
    let Some(public) = identities.get(sender.index()) else {
        return false; // unreachable for members: the registry has n keys
    };
    let valid = public.verify(BATCH_SIGNATURE_CONTEXT, message, signature);
    if valid {
        lock(cache).insert(round, sender, key);
    }
    valid
}

impl Validator for BatchVectorPredicate {
    fn is_valid(&self, value: &[u8]) -> bool {
        let digest = hash(VALUE_DIGEST_CONTEXT, &[value]);
        if let Some(verdict) = lock(&self.verdicts).get(&digest) {
            return *verdict;
        }
        let verdict = self.evaluate(value);
        let mut verdicts = lock(&self.verdicts);
        if verdicts.len() < VERDICTS_PER_MEMBER * self.config.n() {
            verdicts.insert(digest, verdict);
        }
        verdict
    }
}

/// A batch held for a round.
struct StoredBatch {
    requests: Vec<Vec<u8>>,
    signature: IdentitySignature,
    /// [`batch_message`] of the batch.
    message: Digest,
}

/// One round's state.
struct Round<S: ThresholdSigner> {
    /// The first validly signed batch of each sender (ours included once sent).
    batches: BTreeMap<NodeId, StoredBatch>,
    /// Senders proven faulty in this round (invalid signature, equivocation): ignored.
    ignored: BTreeSet<NodeId>,
    batch_sent: bool,
    proposed: bool,
    mvba: Mvba<S>,
    /// The MVBA's decision, until the round is delivered.
    decided: Option<Vec<u8>>,
    /// Whether the round has been delivered (a retained past round).
    delivered: bool,
}

/// A set of request digests used for membership only: inserted, removed, looked up, never
/// iterated, so its answers — and everything decided from them — are the same at every node
/// whatever the hash table's layout (the "deterministic collections" rule is about iteration
/// order). A hash set, because the dedup window and the pending queue hold tens of thousands of
/// digests and a B-tree lookup of a 32-byte key cost several times as much (measured: about
/// 15 % of an ABC node's time at 1000-request batches). The table hashes with `RandomState`
/// (SipHash, random keys), so no peer can aim requests at one bucket.
type DigestSet = std::collections::HashSet<Digest>;

/// Requests waiting to be ordered, oldest first (shared with [`crate::htabc`]).
#[derive(Default)]
pub(crate) struct PendingQueue {
    queue: VecDeque<(Digest, Vec<u8>)>,
    /// Membership only, never iterated (see [`DigestSet`]).
    digests: DigestSet,
}

impl PendingQueue {
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.digests.contains(digest)
    }

    pub(crate) fn push(&mut self, digest: Digest, request: Vec<u8>) {
        self.digests.insert(digest);
        self.queue.push_back((digest, request));
    }

    /// The oldest requests that fit one batch (stops at the first that does not fit, so the
    /// queue stays first-in first-out).
    pub(crate) fn front_batch(&self, params: &AbcParams) -> Vec<Vec<u8>> {
        let mut bytes = 0usize;
        let mut batch = Vec::new();
        for (_, request) in &self.queue {
            if batch.len() == params.batch_size
                || bytes.saturating_add(request.len()) > params.max_batch_bytes
            {
                break;
            }
            bytes += request.len();
            batch.push(request.clone());
        }
        batch
    }

    /// Remove [`PendingQueue::front_batch`] from the queue and return it with its digests
    /// (without the scan of the whole queue that `remove_all` does).
    pub(crate) fn take_front_batch(&mut self, params: &AbcParams) -> (Vec<Vec<u8>>, Vec<Digest>) {
        let mut bytes = 0usize;
        let mut batch = Vec::new();
        let mut digests = Vec::new();
        while let Some((_, request)) = self.queue.front() {
            if batch.len() == params.batch_size
                || bytes.saturating_add(request.len()) > params.max_batch_bytes
            {
                break;
            }
            bytes += request.len();
            if let Some((digest, request)) = self.queue.pop_front() {
                self.digests.remove(&digest);
                digests.push(digest);
                batch.push(request);
            }
        }
        (batch, digests)
    }

    pub(crate) fn remove_all(&mut self, delivered: &[Digest]) {
        let mut removed = false;
        for digest in delivered {
            removed |= self.digests.remove(digest);
        }
        if removed {
            let digests = &self.digests;
            self.queue.retain(|(d, _)| digests.contains(d));
        }
    }
}

/// Digests of the requests delivered in the last `dedup_rounds` rounds (while round `r` is being
/// delivered: rounds `r − dedup_rounds ..= r − 1`). Shared with [`crate::htabc`], whose epochs
/// play the rounds' part.
#[derive(Clone)]
pub(crate) struct DeliveredWindow {
    dedup_rounds: u64,
    rounds: VecDeque<(u64, Vec<Digest>)>,
    /// Membership only, never iterated (see [`DigestSet`]).
    digests: DigestSet,
}

impl DeliveredWindow {
    pub(crate) fn new(dedup_rounds: u64) -> Self {
        DeliveredWindow {
            dedup_rounds,
            rounds: VecDeque::new(),
            digests: DigestSet::default(),
        }
    }

    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.digests.contains(digest)
    }

    /// Add `digest` to the round being delivered, unless the window holds it already (from an
    /// earlier round or this one): returns whether it was new. One lookup where `contains` then
    /// `record` take two; the round's new digests go to [`DeliveredWindow::close_round`].
    pub(crate) fn insert_new(&mut self, digest: Digest) -> bool {
        self.digests.insert(digest)
    }

    /// Record round `round`'s deliveries and forget rounds that left the window.
    pub(crate) fn record(&mut self, round: u64, delivered: Vec<Digest>) {
        self.digests.extend(delivered.iter().copied());
        self.close_round(round, delivered);
    }

    /// Record round `round`, whose deliveries `delivered` were each added with
    /// [`DeliveredWindow::insert_new`], and forget rounds that left the window.
    pub(crate) fn close_round(&mut self, round: u64, delivered: Vec<Digest>) {
        self.rounds.push_back((round, delivered));
        while let Some((oldest, _)) = self.rounds.front() {
            if oldest.saturating_add(self.dedup_rounds) > round {
                break;
            }
            if let Some((_, expired)) = self.rounds.pop_front() {
                for digest in expired {
                    self.digests.remove(&digest);
                }
            }
        }
    }
}

impl DeliveredWindow {
    /// The window as of the end of the round before `resume.next_round` (a validated resume
    /// point: rounds strictly increasing, inside the window, no digest twice).
    fn restore(dedup_rounds: u64, resume: &ResumePoint) -> Self {
        let mut window = DeliveredWindow::new(dedup_rounds);
        for (round, digests) in &resume.recent {
            window.digests.extend(digests.iter().copied());
            window.rounds.push_back((*round, digests.clone()));
        }
        window
    }

    /// The rounds in the window that delivered something, oldest first.
    fn nonempty_rounds(&self) -> Vec<(u64, Vec<Digest>)> {
        self.rounds
            .iter()
            .filter(|(_, digests)| !digests.is_empty())
            .cloned()
            .collect()
    }
}

/// Where an ABC instance resumes after state transfer: the next round to order and the dedup
/// window as of the end of the round before it.
///
/// `recent` holds, for the last `dedup_rounds` delivered rounds (those `≥ next_round −
/// dedup_rounds`), the round and the digests ([`request_digest`]) of the requests it
/// delivered, in delivery order, oldest round first. Rounds that delivered nothing may be
/// absent ([`RecentWindow`] leaves them out, which makes its resume points canonical). Since
/// an ABC delivery is a deterministic function of the decided values and of this window (module
/// docs, "agreement and total order"), a node resumed at `next_round` with the window of the
/// honest nodes' common delivery prefix delivers exactly what they deliver from `next_round` on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// The first round the resumed instance orders (every earlier round counts as delivered).
    pub next_round: u64,
    /// `(round, delivered request digests)` of the window's rounds, oldest first.
    pub recent: Vec<(u64, Vec<Digest>)>,
}

/// Why a [`ResumePoint`] (or a delivery pushed into a [`RecentWindow`]) is refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ResumeError {
    #[error("next round {next_round} is above the maximum {max}")]
    RoundTooLarge { next_round: u64, max: u64 },
    #[error("round {round} does not come after round {previous}")]
    RoundsNotIncreasing { previous: u64, round: u64 },
    #[error("round {round} is not before the next round {next_round}")]
    RoundNotBeforeNext { round: u64, next_round: u64 },
    #[error(
        "round {round} is outside the dedup window of {dedup_rounds} rounds before {next_round}"
    )]
    OutsideWindow {
        round: u64,
        next_round: u64,
        dedup_rounds: u64,
    },
    #[error("round {round} lists {count} digests, more than a round can deliver ({max})")]
    TooManyDigests {
        round: u64,
        count: usize,
        max: usize,
    },
    #[error("a digest of round {round} is already in the window")]
    DuplicateDigest { round: u64 },
    #[error("next round {next_round} is not ahead of the current round {current}")]
    NotAhead { next_round: u64, current: u64 },
}

impl ResumePoint {
    /// Checks a resume point (it comes from the network): `next_round ≤` [`MAX_RESUME_ROUND`];
    /// rounds strictly increasing, each `< next_round` and `≥ next_round − dedup_rounds`; at
    /// most `max_per_round` digests per round (a round delivers at most `n · batch_size`
    /// requests); no digest twice in the whole window (a delivery never repeats a digest of the
    /// window).
    pub fn validate(&self, dedup_rounds: u64, max_per_round: usize) -> Result<(), ResumeError> {
        if self.next_round > MAX_RESUME_ROUND {
            return Err(ResumeError::RoundTooLarge {
                next_round: self.next_round,
                max: MAX_RESUME_ROUND,
            });
        }
        let oldest = self.next_round.saturating_sub(dedup_rounds);
        let mut previous: Option<u64> = None;
        let mut seen = DigestSet::default();
        for (round, digests) in &self.recent {
            let round = *round;
            if let Some(previous) = previous.filter(|p| *p >= round) {
                return Err(ResumeError::RoundsNotIncreasing { previous, round });
            }
            previous = Some(round);
            if round >= self.next_round {
                return Err(ResumeError::RoundNotBeforeNext {
                    round,
                    next_round: self.next_round,
                });
            }
            if round < oldest {
                return Err(ResumeError::OutsideWindow {
                    round,
                    next_round: self.next_round,
                    dedup_rounds,
                });
            }
            if digests.len() > max_per_round {
                return Err(ResumeError::TooManyDigests {
                    round,
                    count: digests.len(),
                    max: max_per_round,
                });
            }
            for digest in digests {
                if !seen.insert(*digest) {
                    return Err(ResumeError::DuplicateDigest { round });
                }
            }
        }
        Ok(())
    }

    /// A canonical digest of the resume point (context [`RESUME_POINT_CONTEXT`]) for
    /// certificates: `next_round`, then every round with its digest count and digests, every
    /// number fixed-width little-endian, so distinct resume points hash differently.
    pub fn digest(&self) -> Digest {
        let mut h = hasher(
            RESUME_POINT_CONTEXT,
            &[
                &self.next_round.to_le_bytes(),
                &(self.recent.len() as u64).to_le_bytes(),
            ],
        );
        for (round, digests) in &self.recent {
            h.update(&round.to_le_bytes());
            h.update(&(digests.len() as u64).to_le_bytes());
            for digest in digests {
                h.update(digest);
            }
        }
        h.finalize().into()
    }
}

/// The dedup window of a node's deliveries, built one delivery at a time, from which the node
/// takes a [`ResumePoint`] whenever it snapshots its state (right after delivering a round).
///
/// It mirrors the instance's own window: after round `r` is pushed it holds the rounds
/// `r − dedup_rounds + 1 ..= r` that delivered something (at most `dedup_rounds` rounds), so
/// [`RecentWindow::resume_point`] is the window an instance has when it starts round `r + 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentWindow {
    dedup_rounds: u64,
    next_round: u64,
    rounds: VecDeque<(u64, Vec<Digest>)>,
}

impl RecentWindow {
    /// The window of an instance that has delivered nothing yet (next round 0).
    pub fn new(dedup_rounds: u64) -> Self {
        RecentWindow {
            dedup_rounds,
            next_round: 0,
            rounds: VecDeque::new(),
        }
    }

    /// The window of an instance resumed at `resume` (to keep taking resume points after a
    /// state transfer). Checks `resume` like [`Abc::resume`], with `max_per_round` the most
    /// requests one round can deliver (`n · batch_size`).
    pub fn resumed(
        resume: &ResumePoint,
        dedup_rounds: u64,
        max_per_round: usize,
    ) -> Result<Self, ResumeError> {
        resume.validate(dedup_rounds, max_per_round)?;
        Ok(RecentWindow {
            dedup_rounds,
            next_round: resume.next_round,
            rounds: resume
                .recent
                .iter()
                .filter(|(_, digests)| !digests.is_empty())
                .cloned()
                .collect(),
        })
    }

    /// The round after the last one pushed.
    pub fn next_round(&self) -> u64 {
        self.next_round
    }

    /// Record that `round` delivered `requests` (in delivery order). Rounds must come in
    /// increasing order; a skipped round counts as having delivered nothing.
    pub fn push(&mut self, round: u64, requests: &[Vec<u8>]) -> Result<(), ResumeError> {
        if round < self.next_round {
            return Err(ResumeError::RoundsNotIncreasing {
                previous: self.next_round.saturating_sub(1),
                round,
            });
        }
        if round >= MAX_RESUME_ROUND {
            return Err(ResumeError::RoundTooLarge {
                next_round: round.saturating_add(1),
                max: MAX_RESUME_ROUND,
            });
        }
        if !requests.is_empty() {
            let digests = requests.iter().map(|r| request_digest(r)).collect();
            self.rounds.push_back((round, digests));
        }
        // The same expiry as `DeliveredWindow::close_round`: keep rounds > round − dedup_rounds.
        while let Some((oldest, _)) = self.rounds.front() {
            if oldest.saturating_add(self.dedup_rounds) > round {
                break;
            }
            self.rounds.pop_front();
        }
        self.next_round = round + 1;
        Ok(())
    }

    /// [`RecentWindow::push`] of one [`AbcDelivery`].
    pub fn push_delivery(&mut self, delivery: &AbcDelivery) -> Result<(), ResumeError> {
        self.push(delivery.round, &delivery.requests)
    }

    /// The resume point right after the last pushed round.
    pub fn resume_point(&self) -> ResumePoint {
        ResumePoint {
            next_round: self.next_round,
            recent: self.rounds.iter().cloned().collect(),
        }
    }
}

/// One node's atomic broadcast instance.
pub struct Abc<S: ThresholdSigner> {
    config: GroupConfig,
    our_id: NodeId,
    instance: Arc<[u8]>,
    keys: ThresholdKeys<S>,
    identity: IdentityKey,
    identities: Arc<Vec<IdentityPublicKey>>,
    params: AbcParams,
    /// The largest encoded proposal (the MVBA's `max_value`).
    max_value: usize,
    /// The round being ordered: every earlier round is delivered.
    round: u64,
    /// States of the accepted future rounds, the current round and the retained past rounds.
    rounds: BTreeMap<u64, Round<S>>,
    pending: PendingQueue,
    delivered: DeliveredWindow,
    cache: SharedCache,
}

impl<S: ThresholdSigner> Abc<S> {
    /// An ABC instance at `our_id`.
    ///
    /// `instance` is a caller-chosen tag unique to this ordering service (e.g. the group's name
    /// and epoch); it is signed into every batch and derives each round's MVBA instance tag.
    /// `keys` are the node's threshold key shares, `identity` its Ed25519 key and `identities`
    /// the registry of every member's public identity key, indexed by node id.
    pub fn new(
        config: GroupConfig,
        our_id: NodeId,
        instance: Vec<u8>,
        keys: ThresholdKeys<S>,
        identity: IdentityKey,
        identities: Arc<Vec<IdentityPublicKey>>,
        params: AbcParams,
    ) -> Result<Self, AbcError> {
        Self::resume(
            config,
            our_id,
            instance,
            keys,
            identity,
            identities,
            params,
            &ResumePoint::default(),
        )
    }

    /// Like [`Abc::new`], but ordering starts at `resume.next_round` with `resume`'s dedup
    /// window: the instance of a node that installed a state snapshot taken right after round
    /// `resume.next_round − 1` (state transfer, for a node that fell more than
    /// [`ROUND_WINDOW`] rounds behind or restarted after a long outage). Messages for earlier
    /// rounds are ignored like any late message, without evidence against their senders.
    ///
    /// `resume` comes from the network (certified by the caller): it is checked with
    /// [`ResumePoint::validate`] (at most `n · batch_size` digests a round) and refused with
    /// [`AbcError::InvalidResumePoint`]. The caller must resume past every round this node
    /// may have sent messages for before, or its new batch for such a round would equivocate
    /// with the old one (this instance keeps no record of its own past messages).
    #[allow(clippy::too_many_arguments)]
    pub fn resume(
        config: GroupConfig,
        our_id: NodeId,
        instance: Vec<u8>,
        keys: ThresholdKeys<S>,
        identity: IdentityKey,
        identities: Arc<Vec<IdentityPublicKey>>,
        params: AbcParams,
        resume: &ResumePoint,
    ) -> Result<Self, AbcError> {
        if !config.contains(our_id) {
            return Err(AbcError::NotAMember {
                node: our_id,
                n: config.n(),
            });
        }
        if identities.len() != config.n() {
            return Err(AbcError::IdentityCount {
                found: identities.len(),
                expected: config.n(),
            });
        }
        if identities[our_id.index()] != identity.public() {
            return Err(AbcError::IdentityMismatch { our_id });
        }
        if params.batch_size == 0 || params.max_request_size == 0 || params.max_pending == 0 {
            return Err(AbcError::InvalidParams(
                "batch_size, max_request_size and max_pending must be positive",
            ));
        }
        if params.max_request_size > params.max_batch_bytes {
            return Err(AbcError::InvalidParams(
                "max_request_size must not exceed max_batch_bytes",
            ));
        }
        if params.dedup_rounds == 0 {
            return Err(AbcError::InvalidParams("dedup_rounds must be at least 1"));
        }
        // An MVBA message may carry a proposal together with its certificate and framing.
        let limit = MAX_MESSAGE_SIZE / 2;
        let max_value = params.max_value_size(config.n()).unwrap_or(usize::MAX);
        if max_value > limit {
            return Err(AbcError::ProposalTooLarge {
                size: max_value,
                limit,
            });
        }
        resume.validate(
            params.dedup_rounds,
            config.n().saturating_mul(params.batch_size),
        )?;
        let first_round = resume.next_round;
        let mut abc = Abc {
            config,
            our_id,
            instance: instance.into(),
            keys,
            identity,
            identities,
            params,
            max_value,
            round: first_round,
            rounds: BTreeMap::new(),
            pending: PendingQueue::default(),
            delivered: DeliveredWindow::restore(params.dedup_rounds, resume),
            cache: Arc::new(Mutex::new(SignatureCache::default())),
        };
        lock(&abc.cache).set_rounds(first_round, first_round.saturating_add(ROUND_WINDOW));
        // The first round now: this also checks the key sets against the group (MVBA's
        // constructor).
        let first = abc.new_round(first_round)?;
        abc.rounds.insert(first_round, first);
        Ok(abc)
    }

    /// Jump this (lagging) instance forward to `resume.next_round`, after the layer above
    /// installed a state snapshot taken right after round `resume.next_round − 1`: the rounds
    /// before it are dropped unordered, the dedup window becomes `resume`'s, and what the
    /// instance holds for `resume.next_round` and later rounds (batches, MVBA instances, its
    /// own messages) is kept. Unlike a fresh [`Abc::resume`], the instance keeps the messages it
    /// received while lagging and remembers what it sent, so it neither misses the first round
    /// nor equivocates in it. Pending requests in the new window leave the queue; pending
    /// requests delivered in a skipped round before the window cannot be told apart and are
    /// proposed again (and delivered again, as a client's late re-submission would be).
    ///
    /// `resume` is checked like in [`Abc::resume`] and must be ahead of the current round
    /// ([`ResumeError::NotAhead`]). The step holds whatever the jump lets the instance do at
    /// once (start the round, deliver it if it was already decided).
    pub fn skip_to(
        &mut self,
        resume: &ResumePoint,
        rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, AbcError> {
        resume.validate(
            self.params.dedup_rounds,
            self.config.n().saturating_mul(self.params.batch_size),
        )?;
        if resume.next_round <= self.round {
            return Err(ResumeError::NotAhead {
                next_round: resume.next_round,
                current: self.round,
            }
            .into());
        }
        let next_round = resume.next_round;
        self.rounds = self.rounds.split_off(&next_round);
        self.round = next_round;
        self.delivered = DeliveredWindow::restore(self.params.dedup_rounds, resume);
        let in_window: Vec<Digest> = resume
            .recent
            .iter()
            .flat_map(|(_, digests)| digests.iter().copied())
            .collect();
        self.pending.remove_all(&in_window);
        lock(&self.cache).set_rounds(next_round, next_round.saturating_add(ROUND_WINDOW));
        let mut step = Step::new();
        self.progress(rng, &mut step);
        Ok(step)
    }

    /// The resume point of this instance as it stands: its current round and its dedup window
    /// (rounds that delivered nothing left out), i.e. what [`RecentWindow::resume_point`] gives
    /// after all of this instance's deliveries.
    pub fn resume_point(&self) -> ResumePoint {
        ResumePoint {
            next_round: self.round,
            recent: self.delivered.nonempty_rounds(),
        }
    }

    /// The round being ordered (every earlier round has been delivered).
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Requests waiting in the local queue.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn params(&self) -> &AbcParams {
        &self.params
    }

    pub fn instance(&self) -> &[u8] {
        &self.instance
    }

    /// Stored batches, undelivered decisions and the MVBA instances' stored messages.
    pub fn stored_messages(&self) -> usize {
        self.rounds
            .values()
            .map(|r| r.batches.len() + usize::from(r.decided.is_some()) + r.mvba.stored_messages())
            .sum()
    }

    /// The most [`Abc::stored_messages`] can reach, given `mvba_bound`, the most one MVBA
    /// instance of this group stores ([`mvba::stored_messages_bound`]): `(ROUND_WINDOW + 1) ·
    /// (n + 1)` batches and undelivered decisions, plus `ROUND_WINDOW + 1 + RETAINED_ROUNDS` MVBA
    /// instances.
    pub fn stored_messages_bound(&self, mvba_bound: usize) -> usize {
        let accepted = (ROUND_WINDOW + 1) as usize;
        let instances = accepted + RETAINED_ROUNDS as usize;
        accepted
            .saturating_mul(self.config.n() + 1)
            .saturating_add(instances.saturating_mul(mvba_bound))
    }

    /// Signature checks cached (bounded by [`CACHED_SIGNATURES_PER_SENDER`] per sender and
    /// round).
    pub fn cached_signatures(&self) -> usize {
        lock(&self.cache).len()
    }

    fn new_round(&self, round: u64) -> Result<Round<S>, MvbaError> {
        let validator = Arc::new(BatchVectorPredicate {
            config: self.config,
            round,
            instance: self.instance.clone(),
            identities: self.identities.clone(),
            params: self.params,
            max_value: self.max_value,
            cache: self.cache.clone(),
            verdicts: Mutex::new(BTreeMap::new()),
        });
        let mvba = Mvba::new(
            self.config,
            self.our_id,
            mvba_instance(&self.instance, round),
            self.keys.clone(),
            validator,
            self.max_value,
        )?;
        Ok(Round {
            batches: BTreeMap::new(),
            ignored: BTreeSet::new(),
            batch_sent: false,
            proposed: false,
            mvba,
            decided: None,
            delivered: false,
        })
    }

    /// Whether `round` is within `[current, current + ROUND_WINDOW]`.
    fn accepts(&self, round: u64) -> bool {
        round >= self.round && round - self.round <= ROUND_WINDOW
    }

    /// The state of an accepted round, created on first use. `None` only if the MVBA
    /// constructor fails, which `new` rules out by building round 0 with the same arguments.
    fn round_state(&mut self, round: u64) -> Option<&mut Round<S>> {
        if !self.rounds.contains_key(&round) {
            match self.new_round(round) {
                Ok(state) => {
                    self.rounds.insert(round, state);
                }
                Err(error) => {
                    tracing::error!(%error, round, "abc: cannot create the round's MVBA");
                    return None;
                }
            }
        }
        self.rounds.get_mut(&round)
    }

    /// Step 2 at the receiver: keep the first validly signed batch of each sender.
    fn handle_batch(
        &mut self,
        from: NodeId,
        round: u64,
        requests: Vec<Vec<u8>>,
        signature: IdentitySignature,
        step: &mut ProtocolStep<Self>,
    ) {
        if let Err((count, bytes)) = self.params.check_batch(&requests) {
            step.fault(
                from,
                AbcFault::BatchOutOfLimits {
                    round,
                    requests: count,
                    bytes,
                },
            );
            return;
        }
        let message = batch_message(&self.instance, round, from, &requests);
        let Some(state) = self.round_state(round) else {
            return;
        };
        if state.ignored.contains(&from) {
            return;
        }
        let first = state.batches.get(&from).map(|b| b.message);
        if first == Some(message) {
            return; // a duplicate
        }
        let valid = verify_batch_signature(
            &self.cache,
            &self.identities,
            round,
            from,
            &message,
            &signature,
        );
        let Some(state) = self.rounds.get_mut(&round) else {
            return;
        };
        match (first, valid) {
            (None, true) => {
                state.batches.insert(
                    from,
                    StoredBatch {
                        requests,
                        signature,
                        message,
                    },
                );
            }
            (Some(first), true) => {
                state.ignored.insert(from);
                step.fault(
                    from,
                    AbcFault::EquivocatingBatch {
                        round,
                        first,
                        second: message,
                    },
                );
            }
            (_, false) => {
                state.ignored.insert(from);
                step.fault(from, AbcFault::InvalidBatchSignature { round });
            }
        }
    }

    /// Route a message to the round's MVBA and keep its decision.
    fn handle_mvba(
        &mut self,
        from: NodeId,
        round: u64,
        message: mvba::Message<S::Share, S::Signature>,
        rng: &mut dyn RngCore,
        step: &mut ProtocolStep<Self>,
    ) {
        let state = if self.accepts(round) {
            self.round_state(round)
        } else {
            self.rounds.get_mut(&round) // a retained past round, if still kept
        };
        let Some(state) = state else {
            return;
        };
        let child = state.mvba.handle_message(from, message, rng);
        let decisions = step.extend_with(
            child,
            |message| Message::Mvba { round, message },
            |fault| AbcFault::Mvba { round, fault },
        );
        if let Some(value) = decisions.into_iter().next() {
            if !state.delivered && state.decided.is_none() {
                state.decided = Some(value);
            }
        }
    }

    /// Steps 1–4 for the current round, as far as they go; repeats for the following rounds
    /// while rounds get delivered.
    fn progress(&mut self, rng: &mut dyn RngCore, step: &mut ProtocolStep<Self>) {
        loop {
            let round = self.round;
            self.start_round(round, step);
            self.propose(round, rng, step);
            let Some(value) = self.rounds.get_mut(&round).and_then(|s| s.decided.take()) else {
                return;
            };
            let delivery = self.deliver_decided(round, &value);
            step.output(delivery);
            self.advance();
        }
    }

    /// Steps 1–2: start the round (sign and send our batch) if we have requests or another
    /// node has started it.
    fn start_round(&mut self, round: u64, step: &mut ProtocolStep<Self>) {
        let our_id = self.our_id;
        let has_requests = !self.pending.is_empty();
        let Some(state) = self.round_state(round) else {
            return;
        };
        if state.batch_sent || state.decided.is_some() {
            return;
        }
        let asked = state.batches.keys().any(|sender| *sender != our_id);
        if !has_requests && !asked {
            return; // idle: nothing to order and nobody needs this round
        }
        let requests = self.pending.front_batch(&self.params);
        let message = batch_message(&self.instance, round, our_id, &requests);
        let signature = self.identity.sign(BATCH_SIGNATURE_CONTEXT, &message);
        lock(&self.cache).insert(round, our_id, SignatureCache::key(&message, &signature));
        let Some(state) = self.rounds.get_mut(&round) else {
            return;
        };
        state.batch_sent = true;
        state.batches.insert(
            our_id,
            StoredBatch {
                requests: requests.clone(),
                signature,
                message,
            },
        );
        step.send(
            Target::Others,
            Message::Batch {
                round,
                requests,
                signature,
            },
        );
    }

    /// Step 3: propose the held batches once there are `n − f` of them.
    fn propose(&mut self, round: u64, rng: &mut dyn RngCore, step: &mut ProtocolStep<Self>) {
        let quorum = self.config.quorum();
        let Some(state) = self.rounds.get_mut(&round) else {
            return;
        };
        if !state.batch_sent || state.proposed || state.batches.len() < quorum {
            return;
        }
        let vector = BatchVector {
            batches: state
                .batches
                .iter()
                .map(|(sender, batch)| SignedBatch {
                    sender: *sender,
                    requests: batch.requests.clone(),
                    signature: batch.signature,
                })
                .collect(),
        };
        state.proposed = true;
        let value = match codec::encode(&vector) {
            Ok(value) => value,
            Err(error) => {
                // Every batch is within the limits that `new` checked against the size limit.
                tracing::error!(%error, round, "abc: cannot encode our proposal");
                return;
            }
        };
        match state.mvba.handle_input(value, rng) {
            Ok(child) => {
                let decisions = step.extend_with(
                    child,
                    |message| Message::Mvba { round, message },
                    |fault| AbcFault::Mvba { round, fault },
                );
                if let Some(value) = decisions.into_iter().next() {
                    state.decided.get_or_insert(value);
                }
            }
            // Our batches were all strictly verified, so our own predicate accepts the vector.
            Err(error) => tracing::error!(%error, round, "abc: MVBA refused our proposal"),
        }
    }

    /// Step 4: the delivery of `round` from its decided value (a deterministic function of the
    /// value and of the dedup window, i.e. of the decided values of earlier rounds).
    fn deliver_decided(&mut self, round: u64, value: &[u8]) -> AbcDelivery {
        let mut requests = Vec::new();
        let mut digests = Vec::new();
        let mut this_round = DigestSet::default();
        // The value satisfies Q_r at an honest node (MVBA external validity); should it not
        // decode anyway, every honest node delivers the same empty round.
        if let Ok(vector) = codec::decode_with_limit::<BatchVector>(value, self.max_value) {
            for batch in vector.batches {
                for request in batch.requests {
                    let digest = request_digest(&request);
                    if self.delivered.contains(&digest) || !this_round.insert(digest) {
                        continue;
                    }
                    digests.push(digest);
                    requests.push(request);
                }
            }
        }
        self.pending.remove_all(&digests);
        self.delivered.record(round, digests);
        AbcDelivery { round, requests }
    }

    /// Move to the next round: keep the delivered round's MVBA for [`RETAINED_ROUNDS`] rounds
    /// (without its batches), drop older ones.
    fn advance(&mut self) {
        if let Some(state) = self.rounds.get_mut(&self.round) {
            state.delivered = true;
            state.batches.clear();
            state.ignored.clear();
        }
        self.round += 1;
        let lowest = self.round.saturating_sub(RETAINED_ROUNDS);
        self.rounds = self.rounds.split_off(&lowest);
        lock(&self.cache).set_rounds(lowest, self.round.saturating_add(ROUND_WINDOW));
    }
}

impl<S: ThresholdSigner> Protocol for Abc<S> {
    type Message = AbcMessage<S>;
    type Input = Vec<u8>;
    type Output = AbcDelivery;
    type FaultKind = AbcFault;
    type Error = AbcError;

    fn our_id(&self) -> NodeId {
        self.our_id
    }

    /// Submit a request: it joins the pending queue and is proposed from the next batch on.
    fn handle_input(
        &mut self,
        request: Vec<u8>,
        rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, AbcError> {
        if request.len() > self.params.max_request_size {
            return Err(AbcError::RequestTooLarge {
                len: request.len(),
                max: self.params.max_request_size,
            });
        }
        let digest = request_digest(&request);
        if self.delivered.contains(&digest) {
            return Err(AbcError::AlreadyDelivered);
        }
        if self.pending.contains(&digest) {
            return Err(AbcError::AlreadyPending);
        }
        if self.pending.len() >= self.params.max_pending {
            return Err(AbcError::QueueFull {
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
        message: AbcMessage<S>,
        rng: &mut dyn RngCore,
    ) -> ProtocolStep<Self> {
        let mut step = Step::new();
        if !self.config.contains(from) {
            step.fault(from, AbcFault::NotAMember);
            return step;
        }
        let round = message.round();
        if round > self.round.saturating_add(ROUND_WINDOW) {
            step.fault(
                from,
                AbcFault::FutureRound {
                    round,
                    current: self.round,
                },
            );
            return step;
        }
        match message {
            Message::Batch {
                round,
                requests,
                signature,
            } => {
                if round < self.round {
                    return step; // the round is delivered: a late batch changes nothing
                }
                self.handle_batch(from, round, requests, signature, &mut step);
            }
            Message::Mvba { round, message } => {
                self.handle_mvba(from, round, message, rng, &mut step);
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
