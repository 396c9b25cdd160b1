//! Secure causal atomic broadcast: atomic broadcast of threshold-encrypted requests.
//!
//! Follows the secure causal atomic broadcast of Cachin–Kursawe–Petzold–Shoup, "Secure and
//! Efficient Asynchronous Broadcast Protocols" (CRYPTO 2001), Sec. 5, with the labeled
//! CCA-secure threshold cryptosystem TDH2 (Shoup–Gennaro 1998, [`maftia_crypto::tdh2`]) under
//! a key of threshold `f + 1`. A client (or a node on a client's behalf) encrypts its request
//! under a label — the client's id and sequence number, say — with [`encrypt_request`]; the
//! resulting bytes are this protocol's input. Then:
//!
//! 1. **Order.** The ciphertext is a request of the atomic broadcast underneath (CKPS01 Sec. 5
//!    a-broadcasts the ciphertext): [`crate::abc`] by default, or the high-throughput lanes of
//!    [`crate::htabc`] ([`Scabc::with_mode`], [`OrderingMode`]), whose epochs play the part of
//!    rounds below. Either way ABC delivers numbered batches of ordered requests.
//! 2. **Check.** When ABC delivers round `r`, the position of each of its requests in the total
//!    order is fixed: entry `(r, i)` is the `i`-th request of the round. Every node checks each
//!    entry: it must be the canonical encoding of a TDH2 ciphertext ([`decode_request`]) that
//!    passes the public validity check ([`Ciphertext::verify`], done inside
//!    [`tdh2::decrypt_share`]). Validity is a deterministic function of the ordered bytes, so
//!    every honest node classifies every entry alike; an invalid entry is never decrypted.
//! 3. **Release.** For the valid entries of round `r` the node computes its decryption shares
//!    (with their Chaum–Pedersen proofs) and sends them to every other node in one
//!    [`Message::Shares`] for the round — only now, after ABC fixed their positions.
//! 4. **Decrypt and deliver.** With `f + 1` valid shares of an entry (its own and `f` checked
//!    ones) a node recovers the plaintext. It delivers the entries strictly in ABC's order: an
//!    entry whose shares are complete waits for every earlier entry to be decrypted or found
//!    invalid.
//!
//! # Output
//! One [`ScabcOutput`] per ordered request, in the total order: `sequence` counts the entries
//! output before it (0, 1, 2, … without gaps); `(round, index)` is its ABC position (round, and
//! index within the round's delivery); `request_digest` is ABC's [`abc::request_digest`] of the
//! ciphertext bytes, by which a submitter recognises its request; `result` is
//! [`ScabcResult::Delivered`] with the plaintext and the ciphertext's label, or
//! [`ScabcResult::Invalid`] for bytes that are no valid ciphertext. Rounds whose ABC delivery is
//! empty produce no output.
//!
//! # Guarantees
//! With at most `f` Byzantine nodes among `n > 3f`, the assumptions and guarantees of
//! [`crate::abc`] (agreement, total order, integrity, validity), and a TDH2 key of threshold
//! `f + 1` that is IND-CCA2 secure (DDH in Ristretto255, random oracles):
//! - **agreement and total order**: honest nodes output the same sequence of outputs (each
//!   sequence a prefix of another's). ABC gives them the same entries in the same order; the
//!   validity check is deterministic; and `f + 1` valid shares of a valid ciphertext decrypt to
//!   the one plaintext it determines (TDH2 robustness, with the public key checked by
//!   [`Tdh2PublicKey::validate`]);
//! - **validity**: a ciphertext submitted at an honest node is delivered, as its plaintext, by
//!   every honest node: ABC delivers it, all `n − f ≥ f + 1` honest nodes release a valid
//!   share, and a share for a pending entry is never dropped — provided the node stays within
//!   `abc::ROUND_WINDOW` rounds of the others, the assumption ABC itself makes (see "Bounded
//!   state");
//! - **integrity**: ABC's integrity (each request delivered at most once per deduplication
//!   window, only if some node proposed it);
//! - **secrecy and causality (CKPS01 Sec. 5)**: no honest node releases a decryption share for
//!   an entry before ABC has fixed its position at that node, so before then at most the `f`
//!   Byzantine shares exist, and `f` shares reveal nothing (TDH2 threshold `f + 1`). The
//!   adversary sees only ciphertexts of requests not yet ordered, and by CCA security cannot
//!   get a request ordered whose content depends on theirs: a ciphertext copied under another
//!   label fails the validity check (the label is bound into the proof) and is delivered as
//!   `Invalid`; a *mauled* ciphertext is invalid for the same reason. An identical copy of a
//!   ciphertext (a replay) is the same request with the same label: ABC deduplicates equal
//!   request bytes within its [`AbcParams::dedup_rounds`] window, and since only the canonical
//!   encoding of a ciphertext is valid here, equal ciphertexts are equal bytes. So within the
//!   window a replay is never delivered twice, and whichever copy is ordered first is the one
//!   delivery (under the original label). *Consequence*: a replay ordered more than
//!   `dedup_rounds` rounds after the original is delivered again — the same plaintext under
//!   the same label, already public by then — so an application that needs exactly-once
//!   execution deduplicates by label (client id and sequence number), as CKPS01 assume.
//!   Labels should name the service too if one TDH2 key serves several ordering services.
//!
//! # Assumptions
//! Those of [`crate::abc`] (authenticated links, asynchrony, `n > 3f`, dealt threshold key sets
//! and Ed25519 identities), plus a trusted dealer's TDH2 key of threshold `f + 1` whose shares
//! match the node ids ([`ScabcKeys`]).
//!
//! # Complexity (per ABC round)
//! On top of the ABC round: `n·(n − 1)` [`Message::Shares`] messages, each with one 99-byte
//! share (and an index) per valid entry of the round. Crypto per node and valid entry: one
//! ciphertext check and one decryption share (2 variable-base and 1 fixed-base
//! multiplications), `f` share checks (2 double-scalar multiplications each) and one
//! `(f+1)`-term multi-scalar multiplication; per invalid entry one ciphertext check. Every
//! share is checked at most once, and only when enough shares are in to decrypt
//! (`f` others beside our own): a bad share costs one extra check and is reported, never
//! checked again ([`tdh2::combine_verified`] combines shares that were checked on arrival).
//!
//! # Bounded state
//! Shares are accepted for the rounds ABC has delivered whose entries are not all output yet
//! (*pending* rounds), and ahead of delivery for the rounds ABC accepts messages for,
//! `[current, current + abc::ROUND_WINDOW]` (*early* shares: a peer can deliver a round before
//! we do). Shares for rounds beyond that are dropped with [`ScabcFault::FutureShares`]; shares
//! for rounds already output are dropped silently. Each peer gets one [`Message::Shares`] per
//! round (a second, different one is [`ScabcFault::ConflictingShares`]), with at most
//! `n · batch_size` shares (a round's most entries) by strictly increasing index, so one share
//! per peer per entry. Hence a node holds at most `(ROUND_WINDOW + 1) · n · n · batch_size`
//! early shares ([`Scabc::early_shares_bound`]), whatever peers send; and at most `n` shares
//! per pending entry (one per node), with the entries' ciphertexts. The number of pending
//! entries is not a constant: it is the ordered requests whose decryption has not finished
//! yet, which no peer controls — each needs only the shares of `f + 1` honest nodes, which they
//! sent when they delivered the entry's round. [`Scabc::stored_messages`] counts ABC's stored
//! messages, every stored decryption share and every pending entry;
//! [`Scabc::stored_messages_bound`] states the bound.
use crate::abc::{self, AbcError, AbcFault, AbcParams};
use crate::atomic::{AtomicBroadcast, AtomicError, AtomicFault, AtomicMessage, OrderingMode};
use crate::htabc::{self, HtAbcError, HtAbcFault};
use crate::keys::ThresholdKeys;
use maftia_core::codec::{self, DecodeError, EncodeError};
use maftia_core::{GroupConfig, NodeId, Protocol, ProtocolStep, Step, Target};
use maftia_crypto::hash::{hash, hasher, Digest};
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_crypto::tdh2::{
    self, Ciphertext, DecryptionShare, Tdh2Error, Tdh2PublicKey, Tdh2SecretShare,
};
use maftia_crypto::threshold::ThresholdSigner;
use rand_core::RngCore;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use thiserror::Error;

/// Hash context of the tag of the ABC instance underneath ([`abc_instance`]).
pub const ABC_INSTANCE_CONTEXT: &str = "maftia 2026-11 scabc abc instance";
/// Hash context of the digest of a [`Message::Shares`] list (to tell a duplicate from a
/// conflicting second message).
const SHARES_DIGEST_CONTEXT: &str = "maftia 2026-11 scabc shares message";

/// The tag of the ABC instance that orders the ciphertexts of the SC-ABC instance `instance`
/// (so an SC-ABC and a plain ABC with the same tag never share batches).
pub fn abc_instance(instance: &[u8]) -> Vec<u8> {
    hash(ABC_INSTANCE_CONTEXT, &[instance]).to_vec()
}

/// Encrypt `request` under `label` with the group's TDH2 key and encode the ciphertext: the
/// bytes to submit to [`Scabc`] (at any node). The label binds the request to its submitter —
/// use the client's id and sequence number.
pub fn encrypt_request(
    public: &Tdh2PublicKey,
    request: &[u8],
    label: &[u8],
    rng: &mut dyn RngCore,
) -> Result<Vec<u8>, ScabcError> {
    let ciphertext = tdh2::encrypt(public, request, label, rng)?;
    Ok(codec::encode(&ciphertext)?)
}

/// Decode a request as a ciphertext, requiring the canonical encoding (the one
/// [`encrypt_request`] produces), so that equal ciphertexts are equal request bytes and ABC's
/// deduplication catches replays. Does not check the ciphertext's validity.
pub fn decode_request(request: &[u8]) -> Result<Ciphertext, ScabcError> {
    let ciphertext: Ciphertext = codec::decode(request)?;
    if codec::encode(&ciphertext)? != request {
        return Err(ScabcError::NonCanonicalCiphertext);
    }
    Ok(ciphertext)
}

/// A digest of a share list that tells a duplicate from a different list: it covers every
/// entry index, share index and proof `(e_i, f_i)`. It leaves out `u_i` (whose encoding would
/// cost a field inversion per share) but the proof's challenge `e_i` hashes `u_i`, so two lists
/// with equal digests and different `u_i` hold at most one valid share between them for each
/// entry; keeping the first list and dropping the other loses nothing.
fn shares_digest(shares: &[IndexedShare]) -> Digest {
    let mut hasher = hasher(SHARES_DIGEST_CONTEXT, &[]);
    for IndexedShare { index, share } in shares {
        hasher.update(&index.to_le_bytes());
        hasher.update(&(share.index as u64).to_le_bytes());
        hasher.update(share.e_i.as_bytes());
        hasher.update(share.f_i.as_bytes());
    }
    hasher.finalize().into()
}

/// One node's keys: the TDH2 key (threshold `f + 1`) and everything [`crate::abc::Abc::new`] needs.
pub struct ScabcKeys<S> {
    pub tdh2_public: Arc<Tdh2PublicKey>,
    /// This node's share of the decryption key (index = node id).
    pub tdh2_secret: Tdh2SecretShare,
    /// The threshold signature key sets of ABC's agreement.
    pub threshold: ThresholdKeys<S>,
    /// This node's Ed25519 identity (it signs ABC batches).
    pub identity: IdentityKey,
    /// Every member's identity key, indexed by node id.
    pub identities: Arc<Vec<IdentityPublicKey>>,
}

impl<S> Clone for ScabcKeys<S> {
    fn clone(&self) -> Self {
        ScabcKeys {
            tdh2_public: self.tdh2_public.clone(),
            tdh2_secret: self.tdh2_secret.clone(),
            threshold: self.threshold.clone(),
            identity: self.identity.clone(),
            identities: self.identities.clone(),
        }
    }
}

/// One decryption share and the entry it is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedShare {
    /// The entry's index within its round's ABC delivery.
    pub index: u32,
    pub share: DecryptionShare,
}

/// What SC-ABC nodes send each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "Share: Serialize, Signature: Serialize",
    deserialize = "Share: DeserializeOwned, Signature: DeserializeOwned"
))]
pub enum Message<Share, Signature> {
    /// Step 1: a message of the atomic broadcast underneath.
    Abc(abc::Message<Share, Signature>),
    /// Step 3: the sender's decryption shares of the valid entries of `round`, by increasing
    /// index; sent once per round, after the sender's ABC delivered the round.
    Shares {
        round: u64,
        shares: Vec<IndexedShare>,
    },
    /// Step 1 in the high-throughput mode: a message of the [`crate::htabc`] underneath.
    HtAbc(htabc::Message<Share, Signature>),
}

/// The message type of a [`Scabc`] instance using signer `S`.
pub type ScabcMessage<S> =
    Message<<S as ThresholdSigner>::Share, <S as ThresholdSigner>::Signature>;

/// What became of one ordered request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScabcResult {
    /// A valid ciphertext: its plaintext and the label it was encrypted under.
    Delivered { plaintext: Vec<u8>, label: Vec<u8> },
    /// Bytes that are not the canonical encoding of a valid ciphertext; never decrypted.
    Invalid,
}

/// One ordered request, in the total order (see the module documentation, "Output").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScabcOutput {
    /// How many outputs came before this one.
    pub sequence: u64,
    /// The ABC round that ordered the request.
    pub round: u64,
    /// Its index within the round's ABC delivery.
    pub index: u32,
    /// [`abc::request_digest`] of the ordered bytes.
    pub request_digest: Digest,
    pub result: ScabcResult,
}

/// How a peer misbehaved in SC-ABC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScabcFault {
    /// A message from a node outside the group.
    NotAMember,
    /// Misbehaviour in the atomic broadcast underneath.
    Abc(AbcFault),
    /// Misbehaviour in the high-throughput atomic broadcast underneath.
    HtAbc(HtAbcFault),
    /// A message of the ordering mode this node does not run.
    WrongMode,
    /// Shares for a round beyond `current + ROUND_WINDOW` (or this node lags that far).
    FutureShares { round: u64, current: u64 },
    /// A share list that is empty, longer than a round can be, or not by increasing index.
    MalformedShares { round: u64 },
    /// A share made with another node's key share (its `index` is not the sender's).
    WrongShareIndex { round: u64, index: u32 },
    /// A second, different share list for the same round.
    ConflictingShares { round: u64 },
    /// A share for an index beyond the round's delivered entries.
    ShareOutOfRange { round: u64, index: u32 },
    /// A share for an invalid ciphertext (an honest node never makes one).
    ShareForInvalidCiphertext { round: u64, index: u32 },
    /// A decryption share whose proof does not verify.
    InvalidShare { round: u64, index: u32 },
}

/// Misconfiguration or local misuse of an SC-ABC instance.
#[derive(Debug, Error)]
pub enum ScabcError {
    #[error("{node} is not a member of a group of {n}")]
    NotAMember { node: NodeId, n: usize },
    #[error(
        "the TDH2 key has n = {key_n} and threshold {key_threshold}; \
         the group needs n = {n} and threshold f + 1 = {threshold}"
    )]
    Tdh2KeyMismatch {
        key_n: usize,
        key_threshold: usize,
        n: usize,
        threshold: usize,
    },
    #[error("the TDH2 secret share does not belong to {our_id} in this key")]
    Tdh2ShareMismatch { our_id: NodeId },
    #[error("tdh2: {0}")]
    Tdh2(#[from] Tdh2Error),
    #[error("request of {len} bytes exceeds the maximum of {max}")]
    RequestTooLarge { len: usize, max: usize },
    #[error("the request is not an encoded ciphertext: {0}")]
    NotACiphertext(#[from] DecodeError),
    #[error("the request is not the canonical encoding of its ciphertext")]
    NonCanonicalCiphertext,
    #[error("encoding: {0}")]
    Encode(#[from] EncodeError),
    #[error("abc: {0}")]
    Abc(#[from] AbcError),
    #[error("htabc: {0}")]
    HtAbc(#[from] HtAbcError),
    #[error("an epoch of up to {entries} entries has share lists above the message limit")]
    EpochTooLarge { entries: usize },
}

impl From<AtomicError> for ScabcError {
    fn from(error: AtomicError) -> Self {
        match error {
            AtomicError::Ckps01(error) => ScabcError::Abc(error),
            AtomicError::HighThroughput(error) => ScabcError::HtAbc(error),
        }
    }
}

/// Our ABC message as an SC-ABC message.
fn wrap_message<Share, Signature>(
    message: AtomicMessage<Share, Signature>,
) -> Message<Share, Signature> {
    match message {
        AtomicMessage::Ckps01(message) => Message::Abc(message),
        AtomicMessage::HighThroughput(message) => Message::HtAbc(message),
    }
}

fn wrap_fault(fault: AtomicFault) -> ScabcFault {
    match fault {
        AtomicFault::Ckps01(fault) => ScabcFault::Abc(fault),
        AtomicFault::HighThroughput(fault) => ScabcFault::HtAbc(fault),
        AtomicFault::WrongMode => ScabcFault::WrongMode,
    }
}

/// Upper bound on one encoded [`IndexedShare`] in a share list.
const INDEXED_SHARE_BYTES: usize = 112;

/// Where one ordered entry stands.
enum EntryState {
    /// Not a valid ciphertext: output as [`ScabcResult::Invalid`].
    Invalid,
    /// A valid ciphertext being decrypted.
    Decrypting(Box<Decryption>),
    /// Decrypted, waiting for the earlier entries.
    Decrypted { plaintext: Vec<u8>, label: Vec<u8> },
    /// Output already.
    Done,
}

/// A valid ciphertext and its decryption shares so far.
struct Decryption {
    ciphertext: Ciphertext,
    /// Shares received and not checked yet, by sender.
    unchecked: BTreeMap<NodeId, DecryptionShare>,
    /// Checked (or our own) shares, by share index = node index.
    valid: BTreeMap<usize, DecryptionShare>,
}

struct Entry {
    request_digest: Digest,
    state: EntryState,
}

/// A round ABC has delivered whose entries are not all output.
struct PendingRound {
    entries: Vec<Entry>,
    /// The first entry not output yet.
    next: usize,
    /// Who sent their shares for this round, with the digest of their list.
    senders: BTreeMap<NodeId, Digest>,
}

/// A share list received for a round ABC has not delivered yet.
struct EarlyShares {
    digest: Digest,
    shares: Vec<IndexedShare>,
}

/// One node's secure causal atomic broadcast instance.
pub struct Scabc<S: ThresholdSigner> {
    config: GroupConfig,
    our_id: NodeId,
    abc: AtomicBroadcast<S>,
    tdh2_public: Arc<Tdh2PublicKey>,
    tdh2_secret: Tdh2SecretShare,
    /// Most entries one round can deliver: `n · batch_size` (times `lane_window` for an epoch
    /// of the high-throughput mode, whose decided heights advance at most `lane_window` slots).
    max_entries_per_round: usize,
    /// Every round below this one is fully output.
    output_round: u64,
    /// The delivered rounds `output_round..abc.round()` (all of them, none fully output).
    pending: BTreeMap<u64, PendingRound>,
    /// Share lists for rounds in `abc.round()..=abc.round() + ROUND_WINDOW`, by round and sender.
    early: BTreeMap<u64, BTreeMap<NodeId, EarlyShares>>,
    /// Outputs so far.
    sequence: u64,
}

impl<S: ThresholdSigner + Send + Sync + 'static> Scabc<S> {
    /// An SC-ABC instance at `our_id`.
    ///
    /// `instance` is a caller-chosen tag unique to this ordering service; the ABC underneath
    /// runs under [`abc_instance`]`(instance)`. Checks that the TDH2 key fits the group
    /// (`n` shares, threshold `f + 1`, consistent verification keys) and that the secret share
    /// is this node's.
    pub fn new(
        config: GroupConfig,
        our_id: NodeId,
        instance: Vec<u8>,
        keys: ScabcKeys<S>,
        params: AbcParams,
    ) -> Result<Self, ScabcError> {
        Self::with_mode(config, our_id, instance, keys, params, OrderingMode::Ckps01)
    }

    /// An SC-ABC instance ordering with the atomic broadcast of `mode` (every member must run
    /// the same mode; [`Scabc::new`] is the CKPS01 mode).
    pub fn with_mode(
        config: GroupConfig,
        our_id: NodeId,
        instance: Vec<u8>,
        keys: ScabcKeys<S>,
        params: AbcParams,
        mode: OrderingMode,
    ) -> Result<Self, ScabcError> {
        if !config.contains(our_id) {
            return Err(ScabcError::NotAMember {
                node: our_id,
                n: config.n(),
            });
        }
        let public = &keys.tdh2_public;
        if public.n != config.n() || public.threshold != config.one_honest() {
            return Err(ScabcError::Tdh2KeyMismatch {
                key_n: public.n,
                key_threshold: public.threshold,
                n: config.n(),
                threshold: config.one_honest(),
            });
        }
        public.validate()?;
        let ours = public.verification_keys.get(our_id.index());
        if keys.tdh2_secret.index != our_id.index()
            || ours != Some(&keys.tdh2_secret.verification_key())
        {
            return Err(ScabcError::Tdh2ShareMismatch { our_id });
        }
        let abc = AtomicBroadcast::new(
            config,
            our_id,
            abc_instance(&instance),
            keys.threshold,
            keys.identity,
            keys.identities,
            params,
            mode,
        )?;
        let max_entries_per_round = match mode {
            OrderingMode::Ckps01 => config.n().saturating_mul(params.batch_size),
            OrderingMode::HighThroughput(ht) => config
                .n()
                .saturating_mul(params.batch_size)
                .saturating_mul(usize::try_from(ht.lane_window).unwrap_or(usize::MAX)),
        };
        // CKPS01: a round's shares always fit a message: each valid entry is a ciphertext of at
        // least 128 bytes in a decided value that ABC keeps below MAX_MESSAGE_SIZE / 2, and its
        // share takes at most 104 bytes. An epoch of the high-throughput mode is not one
        // message, so check its share list against the limit.
        if max_entries_per_round.saturating_mul(INDEXED_SHARE_BYTES)
            > maftia_core::codec::MAX_MESSAGE_SIZE / 2
        {
            return Err(ScabcError::EpochTooLarge {
                entries: max_entries_per_round,
            });
        }
        Ok(Scabc {
            config,
            our_id,
            abc,
            tdh2_public: keys.tdh2_public,
            tdh2_secret: keys.tdh2_secret,
            max_entries_per_round,
            output_round: 0,
            pending: BTreeMap::new(),
            early: BTreeMap::new(),
            sequence: 0,
        })
    }

    /// The atomic broadcast underneath.
    pub fn abc(&self) -> &AtomicBroadcast<S> {
        &self.abc
    }

    /// Rounds ABC has delivered here (each entry's position in them is fixed).
    pub fn ordered_rounds(&self) -> u64 {
        self.abc.round()
    }

    /// Outputs so far.
    pub fn output_count(&self) -> u64 {
        self.sequence
    }

    /// Ordered entries not output yet.
    pub fn pending_entries(&self) -> usize {
        self.pending
            .values()
            .map(|r| r.entries.len() - r.next)
            .sum()
    }

    /// Shares held for rounds ABC has not delivered yet.
    pub fn early_shares(&self) -> usize {
        self.early
            .values()
            .flat_map(BTreeMap::values)
            .map(|e| e.shares.len())
            .sum()
    }

    /// The most early shares a node can hold: `(ROUND_WINDOW + 1) · n · n · batch_size`.
    pub fn early_shares_bound(&self) -> usize {
        (abc::ROUND_WINDOW as usize + 1)
            .saturating_mul(self.config.n())
            .saturating_mul(self.max_entries_per_round)
    }

    /// ABC's stored messages, every stored decryption share (early and pending) and every
    /// pending entry.
    pub fn stored_messages(&self) -> usize {
        let pending_shares: usize = self
            .pending
            .values()
            .flat_map(|r| &r.entries[r.next..])
            .map(|entry| match &entry.state {
                EntryState::Decrypting(decryption) => {
                    decryption.unchecked.len() + decryption.valid.len()
                }
                _ => 0,
            })
            .sum();
        self.abc.stored_messages() + self.early_shares() + pending_shares + self.pending_entries()
    }

    /// The most [`Scabc::stored_messages`] can be now, given `mvba_bound` (the most one MVBA
    /// instance stores, [`crate::mvba::stored_messages_bound`]): ABC's bound, plus the early
    /// shares' bound, plus `n + 1` per pending entry (its shares and itself).
    pub fn stored_messages_bound(&self, mvba_bound: usize) -> usize {
        self.abc
            .stored_messages_bound(mvba_bound)
            .saturating_add(self.early_shares_bound())
            .saturating_add(
                self.pending_entries()
                    .saturating_mul(self.config.n().saturating_add(1)),
            )
    }

    /// Fold an ABC step into ours and handle the rounds it delivered.
    fn absorb_abc(
        &mut self,
        child: ProtocolStep<AtomicBroadcast<S>>,
        rng: &mut dyn RngCore,
        step: &mut ProtocolStep<Self>,
    ) {
        let deliveries = step.extend_with(child, wrap_message, wrap_fault);
        for delivery in deliveries {
            self.on_round_ordered(delivery, rng, step);
        }
        self.flush(step);
    }

    /// Steps 2–3 for a round ABC delivered: classify its entries, release our shares, and
    /// take in the shares that arrived early.
    fn on_round_ordered(
        &mut self,
        delivery: abc::AbcDelivery,
        rng: &mut dyn RngCore,
        step: &mut ProtocolStep<Self>,
    ) {
        let round = delivery.round;
        let mut ours = Vec::new();
        let mut entries = Vec::with_capacity(delivery.requests.len());
        for (index, request) in delivery.requests.iter().enumerate() {
            let request_digest = abc::request_digest(request);
            let state = match self.check_and_share(request, rng) {
                Some((ciphertext, share)) => {
                    // ABC delivers at most n · batch_size requests a round, far below u32::MAX.
                    ours.push(IndexedShare {
                        index: index as u32,
                        share: share.clone(),
                    });
                    EntryState::Decrypting(Box::new(Decryption {
                        ciphertext,
                        unchecked: BTreeMap::new(),
                        valid: BTreeMap::from([(self.tdh2_secret.index, share)]),
                    }))
                }
                None => EntryState::Invalid,
            };
            entries.push(Entry {
                request_digest,
                state,
            });
        }
        if !ours.is_empty() {
            step.send(
                Target::Others,
                Message::Shares {
                    round,
                    shares: ours,
                },
            );
        }
        let mut state = PendingRound {
            entries,
            next: 0,
            senders: BTreeMap::new(),
        };
        for index in 0..state.entries.len() {
            self.try_decrypt(round, index, &mut state.entries[index], step);
        }
        for (sender, early) in self.early.remove(&round).unwrap_or_default() {
            state.senders.insert(sender, early.digest);
            self.take_shares(round, &mut state, sender, early.shares, step);
        }
        self.pending.insert(round, state);
        // Rounds are delivered in order: no early shares are kept for this round or before.
        self.early.retain(|r, _| *r > round);
    }

    /// Step 2: the ciphertext of a valid entry and our share of it, `None` for an invalid one.
    fn check_and_share(
        &self,
        request: &[u8],
        rng: &mut dyn RngCore,
    ) -> Option<(Ciphertext, DecryptionShare)> {
        let ciphertext = decode_request(request).ok()?;
        // D1 inside decrypt_share is the validity check (V1–V2); it runs once per entry.
        match tdh2::decrypt_share(&self.tdh2_public, &self.tdh2_secret, &ciphertext, rng) {
            Ok(share) => Some((ciphertext, share)),
            Err(Tdh2Error::InvalidCiphertext) => None,
            Err(error) => {
                // `new` checked that our share's index is in range, the only other error.
                tracing::error!(%error, "scabc: cannot make our decryption share");
                None
            }
        }
    }

    /// Step 4 for one entry: with enough shares in, check unchecked ones (each once, in sender
    /// order) until `f + 1` are valid, then combine.
    fn try_decrypt(
        &self,
        round: u64,
        index: usize,
        entry: &mut Entry,
        step: &mut ProtocolStep<Self>,
    ) {
        let EntryState::Decrypting(decryption) = &mut entry.state else {
            return;
        };
        let Decryption {
            ciphertext,
            unchecked,
            valid,
        } = &mut **decryption;
        let threshold = self.tdh2_public.threshold;
        while valid.len() < threshold && valid.len() + unchecked.len() >= threshold {
            let Some((sender, share)) = unchecked.pop_first() else {
                break;
            };
            if tdh2::verify_share(&self.tdh2_public, ciphertext, &share) {
                valid.insert(share.index, share);
            } else {
                step.fault(
                    sender,
                    ScabcFault::InvalidShare {
                        round,
                        index: index as u32,
                    },
                );
            }
        }
        if valid.len() < threshold {
            return;
        }
        // Every share in `valid` is ours or passed verify_share, keyed by its in-range index,
        // and the ciphertext passed its check in decrypt_share.
        match tdh2::combine_verified(&self.tdh2_public, ciphertext, valid) {
            Ok(plaintext) => {
                let label = ciphertext.label().to_vec();
                entry.state = EntryState::Decrypted { plaintext, label };
            }
            Err(error) => tracing::error!(%error, round, index, "scabc: combining failed"),
        }
    }

    /// File `sender`'s checked-for-shape share list under the entries of a delivered round.
    fn take_shares(
        &self,
        round: u64,
        state: &mut PendingRound,
        sender: NodeId,
        shares: Vec<IndexedShare>,
        step: &mut ProtocolStep<Self>,
    ) {
        let mut reported = false;
        for IndexedShare { index, share } in shares {
            let position = index as usize;
            let Some(entry) = state.entries.get_mut(position) else {
                if !reported {
                    step.fault(sender, ScabcFault::ShareOutOfRange { round, index });
                    reported = true;
                }
                continue;
            };
            match &mut entry.state {
                EntryState::Invalid => {
                    if !reported {
                        step.fault(
                            sender,
                            ScabcFault::ShareForInvalidCiphertext { round, index },
                        );
                        reported = true;
                    }
                }
                EntryState::Decrypting(decryption) => {
                    if !decryption.valid.contains_key(&sender.index()) {
                        decryption.unchecked.entry(sender).or_insert(share);
                        self.try_decrypt(round, position, entry, step);
                    }
                }
                EntryState::Decrypted { .. } | EntryState::Done => {}
            }
        }
    }

    /// Output the entries at the head of the order that are ready, strictly in order.
    fn flush(&mut self, step: &mut ProtocolStep<Self>) {
        while let Some(state) = self.pending.get_mut(&self.output_round) {
            while let Some(entry) = state.entries.get_mut(state.next) {
                let result = match std::mem::replace(&mut entry.state, EntryState::Done) {
                    EntryState::Invalid => ScabcResult::Invalid,
                    EntryState::Decrypted { plaintext, label } => {
                        ScabcResult::Delivered { plaintext, label }
                    }
                    waiting => {
                        entry.state = waiting;
                        return;
                    }
                };
                step.output(ScabcOutput {
                    sequence: self.sequence,
                    round: self.output_round,
                    index: state.next as u32,
                    request_digest: entry.request_digest,
                    result,
                });
                self.sequence += 1;
                state.next += 1;
            }
            self.pending.remove(&self.output_round);
            self.output_round += 1;
        }
    }

    /// Step 3 at the receiver: a share list for `round`.
    fn handle_shares(
        &mut self,
        from: NodeId,
        round: u64,
        shares: Vec<IndexedShare>,
        step: &mut ProtocolStep<Self>,
    ) {
        if round < self.output_round {
            return; // every entry of the round is output: late shares change nothing
        }
        let current = self.abc.round();
        if round > current.saturating_add(abc::ROUND_WINDOW) {
            step.fault(from, ScabcFault::FutureShares { round, current });
            return;
        }
        if shares.is_empty()
            || shares.len() > self.max_entries_per_round
            || shares.windows(2).any(|w| w[0].index >= w[1].index)
        {
            step.fault(from, ScabcFault::MalformedShares { round });
            return;
        }
        if let Some(wrong) = shares.iter().find(|s| s.share.index != from.index()) {
            step.fault(
                from,
                ScabcFault::WrongShareIndex {
                    round,
                    index: wrong.index,
                },
            );
            return;
        }
        let digest = shares_digest(&shares);
        if round < current {
            // A pending round (every delivered round from output_round on is pending).
            let Some(mut state) = self.pending.remove(&round) else {
                return;
            };
            match state.senders.get(&from) {
                Some(first) if *first == digest => {} // a duplicate
                Some(_) => step.fault(from, ScabcFault::ConflictingShares { round }),
                None => {
                    state.senders.insert(from, digest);
                    self.take_shares(round, &mut state, from, shares, step);
                }
            }
            self.pending.insert(round, state);
            self.flush(step);
        } else {
            let senders = self.early.entry(round).or_default();
            match senders.get(&from) {
                Some(first) if first.digest == digest => {}
                Some(_) => step.fault(from, ScabcFault::ConflictingShares { round }),
                None => {
                    senders.insert(from, EarlyShares { digest, shares });
                }
            }
        }
    }
}

impl<S: ThresholdSigner + Send + Sync + 'static> Protocol for Scabc<S> {
    type Message = ScabcMessage<S>;
    /// An encoded ciphertext ([`encrypt_request`]).
    type Input = Vec<u8>;
    type Output = ScabcOutput;
    type FaultKind = ScabcFault;
    type Error = ScabcError;

    fn our_id(&self) -> NodeId {
        self.our_id
    }

    /// Submit an encoded ciphertext for ordering. Refused if it exceeds ABC's request size or
    /// is not the canonical encoding of a ciphertext; its validity is checked once it is
    /// ordered (an invalid one is delivered as [`ScabcResult::Invalid`]).
    fn handle_input(
        &mut self,
        request: Vec<u8>,
        rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, ScabcError> {
        let max = self.abc.params().max_request_size;
        if request.len() > max {
            return Err(ScabcError::RequestTooLarge {
                len: request.len(),
                max,
            });
        }
        decode_request(&request)?;
        let child = self.abc.handle_input(request, rng)?;
        let mut step = Step::new();
        self.absorb_abc(child, rng, &mut step);
        Ok(step)
    }

    fn handle_message(
        &mut self,
        from: NodeId,
        message: ScabcMessage<S>,
        rng: &mut dyn RngCore,
    ) -> ProtocolStep<Self> {
        let mut step = Step::new();
        if !self.config.contains(from) {
            step.fault(from, ScabcFault::NotAMember);
            return step;
        }
        match message {
            Message::Abc(message) => {
                let child = self
                    .abc
                    .handle_message(from, AtomicMessage::Ckps01(message), rng);
                self.absorb_abc(child, rng, &mut step);
            }
            Message::HtAbc(message) => {
                let child =
                    self.abc
                        .handle_message(from, AtomicMessage::HighThroughput(message), rng);
                self.absorb_abc(child, rng, &mut step);
            }
            Message::Shares { round, shares } => {
                self.handle_shares(from, round, shares, &mut step);
            }
        }
        step
    }

    /// Secure causal atomic broadcast runs for as long as the service does.
    fn terminated(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests;
