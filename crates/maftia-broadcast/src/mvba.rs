//! Multivalued validated Byzantine agreement (MVBA).
//!
//! Every node proposes a value; all honest nodes decide the same value, and that value satisfies
//! an external, deterministic predicate `Q` (the [`Validator`]). This follows the validated
//! agreement protocol of Cachin–Kursawe–Petzold–Shoup, "Secure and Efficient Asynchronous
//! Broadcast Protocols" (CRYPTO 2001, Sec. 3), with the commit step as in its published
//! implementations (each node consistently broadcasts the set of proposals it holds):
//!
//! 1. **Proposal.** Every node c-broadcasts its proposal with a [`Cbc`] child (key set
//!    `keys.cbc`). An honest node echoes a proposal only if it satisfies `Q` (checked here,
//!    before the child sees the proposer's `Send`; a proposer whose proposal fails `Q` is
//!    reported). A node keeps every certified proposal it learns: from its own CBC children,
//!    or from a valid 1-vote (step 3).
//! 2. **Commit and coin.** Once `n − f` proposals are certified, a node c-broadcasts its
//!    *commit set*: a bitmap of the proposers whose certified proposal it holds (at least
//!    `n − f`). Once it has committed and holds `n − f` valid commit sets, it releases its
//!    share of the threshold coin named after the instance (key set `keys.coin`, threshold
//!    `f + 1`); the coin value gives a permutation `Π` of the nodes
//!    ([`CoinValue::permutation`]).
//! 3. **Candidates.** For attempts `a = 0, 1, …`, candidate `Π[a]`: a node sends a *v-vote* —
//!    1 with the candidate's value and CBC certificate if it holds them, else 0. A 1-vote counts
//!    once its certificate verifies (and the value satisfies `Q`); a 0-vote counts only once
//!    the voter's commit set is known and does *not* contain the candidate (a voter that
//!    committed to holding the candidate's proposal must vote 1). After `n − f` valid votes the
//!    node inputs to a binary agreement [`Aba`] child: 1 if it holds the candidate's certified
//!    value (from a 1-vote or its own CBC), else 0. A node whose earlier vote was 0 and that
//!    inputs 1 first re-sends its vote as a 1-vote with the value, so every value an honest node
//!    inputs 1 for reaches everyone. If the ABA decides 1, the node decides the candidate's
//!    value (waiting for it if needed: it arrives in some honest node's 1-vote); on 0 it moves
//!    to the next attempt.
//!
//! # Guarantees
//! With at most `f` Byzantine nodes among `n > 3f`, unforgeable threshold signatures for the CBC
//! key set (threshold `⌈(n+f+1)/2⌉`), an unpredictable coin (threshold `f + 1`) and an [`Aba`]
//! with agreement, termination and validity ("a decision was some honest node's input"):
//! - **agreement**: all honest nodes decide the same value. Honest nodes decide the candidate
//!   of the first attempt whose ABA decides 1 (every ABA of an earlier attempt decided 0: an
//!   honest node inputs to ABA `a` only after deciding 0 in all earlier ones), and by CBC
//!   consistency only one value of a candidate can be certified;
//! - **external validity**: the decided value satisfies `Q`: it carries a certificate, which
//!   needs an echo from an honest node, which checked `Q` (and every node checks `Q` again on
//!   what it accepts);
//! - **integrity**: a node decides at most once (the single output);
//! - **termination**: if every honest node eventually proposes (so `n − f` proposals get
//!   certified), every honest node decides, after an expected constant number of attempts.
//!   The coin is unpredictable until the first honest node releases its share, and by then
//!   that node holds `n − f` commit sets (fixed, by CBC consistency) with at least `(n − f)²`
//!   entries in all, so at least `g = ⌈(n² − 3nf + f²) / (n − 2f)⌉ ≥ f + 1` proposers appear
//!   in `f + 1` or more of them. Such a *good* candidate can never gather `n − f` valid 0-votes
//!   (at most `n − f − 1` nodes committed without it), so every honest node inputs 1 and the
//!   ABA decides 1 (it cannot decide 0: no honest node inputs 0). The random permutation
//!   reaches the first good candidate after at most `(n + 1) / (g + 1) < 3` attempts on
//!   average (below 2.9 for every `n > 3f`).
//!
//! **Validity in the weak sense**: the decided value is a proposal of some node — possibly a
//! Byzantine one that satisfies `Q`. `Q` must be deterministic: honest nodes must agree on it.
//!
//! # Assumptions
//! Authenticated point-to-point links, asynchronous delivery with eventual delivery and no timing
//! assumption, `n > 3f`, the three threshold key sets of [`ThresholdKeys`], a deterministic `Q`.
//!
//! # Complexity
//! Messages: `2n` consistent broadcasts (`O(n²)` messages, `O(n² · |v|)` bits), `n` coin shares
//! per node, and per attempt `n²` votes (a 1-vote carries the value: `O(n² · |v|)` bits) plus one
//! ABA; expected attempts below 3, so expected `O(n²)` messages and `O(n² · |v|)` bits overall.
//! Computation: every node verifies each proposal's certificate at most once (a certified value
//! is cached by proposer and value, and a proposal `Final` is not handed to its CBC child once
//! the value is known from a 1-vote; a voter whose certificate failed is not heard again in that
//! attempt), combines the coin once (optimistically: one signature verification unless shares
//! are invalid, each share verified at most once), and evaluates `Q` at most once per proposer
//! `Send` plus once per newly certified value.
//!
//! # Bounded state (documented bound: [`stored_messages_bound`])
//! - Exactly `n` proposal and `n` commit CBC children, made up front; a message naming a
//!   broadcaster outside the group is a fault.
//! - Attempts are indices into the permutation, so an attempt `≥ n` is a fault
//!   ([`MvbaFault::AttemptOutOfRange`]). Within `0..n` every attempt is accepted and its ABA child
//!   is made on demand: a smaller attempt window would drop honest messages for good (nothing is
//!   re-sent) whenever the honest nodes that progressed without us are more than the window
//!   ahead, and a lagging node needs exactly those messages to finish. `n` is itself a small,
//!   fixed window; each ABA child bounds its own rounds. After the decision no new ABA child is
//!   made. Votes of attempts whose ABA decided 0 are discarded, and later ones for them are
//!   dropped unexamined.
//! - One vote per voter per attempt (a 0-vote may be upgraded once to a 1-vote), one coin share
//!   per node, one certified value per proposer, one commit set per node. In bytes: before the
//!   coin is tossed a 1-vote cannot be checked and waits with its value, so up to `n² ·
//!   max_value` bytes of votes; afterwards every 1-vote is judged on arrival and only one value
//!   per candidate is kept (`n · max_value`).
//!
//! [`stored_messages`](Mvba::stored_messages) counts all of it, children included, and never
//! exceeds [`stored_messages_bound`]: `O(n²)` for a group of `n`.
use crate::aba::{Aba, AbaError, AbaFault};
use crate::cbc::{self, payload_digest, Cbc, CbcDelivery, CbcError, CbcFault};
use crate::keys::ThresholdKeys;
use maftia_core::{GroupConfig, NodeId, Protocol, ProtocolStep, Step, Target};
use maftia_crypto::coin::{coin_share, combine_coin, verify_coin_share, CoinValue};
use maftia_crypto::hash::{hash, Digest};
use maftia_crypto::threshold::{CombineError, SignerIndex, ThresholdSigner};
use rand_core::RngCore;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use thiserror::Error;

/// Hash context of the CBC instance tag of a proposal broadcast.
pub const PROPOSAL_TAG_CONTEXT: &str = "maftia 2026-11 mvba proposal";
/// Hash context of the CBC instance tag of a commit broadcast.
pub const COMMIT_TAG_CONTEXT: &str = "maftia 2026-11 mvba commit";
/// Hash context of the coin name (the coin of step 2).
pub const COIN_CONTEXT: &str = "maftia 2026-11 mvba coin";
/// Hash context of the instance tag of the binary agreement of one attempt.
pub const ABA_TAG_CONTEXT: &str = "maftia 2026-11 mvba aba";

/// The external validity predicate `Q`. Must be deterministic: every honest node must get the
/// same answer for the same value, or agreement and termination are lost.
pub trait Validator: Send + Sync {
    /// Whether `value` is acceptable as a decision.
    fn is_valid(&self, value: &[u8]) -> bool;
}

/// A node's v-vote on the candidate of one attempt (step 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "Signature: Serialize",
    deserialize = "Signature: DeserializeOwned"
))]
pub enum Vote<Signature> {
    /// 0: the voter holds no certified value of the candidate (and its commit set says so).
    Zero,
    /// 1: the candidate's value and its CBC certificate.
    One {
        #[serde(with = "crate::wire::bytes")]
        value: Vec<u8>,
        certificate: Signature,
    },
}

/// What MVBA nodes send each other; generic over the signer's share and signature types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "Share: Serialize, Signature: Serialize",
    deserialize = "Share: DeserializeOwned, Signature: DeserializeOwned"
))]
pub enum Message<Share, Signature> {
    /// Step 1: a message of the consistent broadcast of `proposer`'s proposal.
    Proposal(NodeId, cbc::Message<Share, Signature>),
    /// Step 2: a message of the consistent broadcast of `committer`'s commit set.
    Commit(NodeId, cbc::Message<Share, Signature>),
    /// Step 2: the sender's share of the permutation coin.
    Coin(Share),
    /// Step 3: the sender's v-vote on the candidate of `attempt`.
    Vote { attempt: u32, vote: Vote<Signature> },
    /// Step 3: a message of the binary agreement of `attempt`.
    Aba {
        attempt: u32,
        message: crate::aba::Message<Share, Signature>,
    },
}

/// The message type of an [`Mvba`] instance using signer `S`.
pub type MvbaMessage<S> = Message<<S as ThresholdSigner>::Share, <S as ThresholdSigner>::Signature>;

/// How a peer misbehaved in an MVBA instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MvbaFault {
    /// A message from a node outside the group.
    NotAMember,
    /// A proposal or commit broadcast attributed to a node outside the group.
    UnknownBroadcaster { index: u16 },
    /// A fault in the consistent broadcast of `proposer`'s proposal.
    Proposal { proposer: NodeId, fault: CbcFault },
    /// A fault in the consistent broadcast of `committer`'s commit set.
    Commit { committer: NodeId, fault: CbcFault },
    /// A fault in the binary agreement of `attempt`.
    Aba { attempt: u32, fault: AbaFault },
    /// The proposer sent a proposal that the validator rejects.
    InvalidProposal,
    /// The committer sent a commit set that is malformed or names fewer than `n − f` proposers.
    InvalidCommit,
    /// A coin share that does not verify.
    InvalidCoinShare,
    /// A second, different coin share from the same node.
    ConflictingCoinShare,
    /// A vote or ABA message for an attempt outside `0..n`.
    AttemptOutOfRange { attempt: u32, n: usize },
    /// A 1-vote whose value exceeds the instance's `max_value`.
    OversizedValue { len: usize, max: usize },
    /// A 1-vote whose certificate does not verify for the candidate.
    InvalidCertificate,
    /// A 1-vote whose certified value the validator rejects (impossible unless `f` is exceeded
    /// or `Q` is not deterministic).
    InvalidValue,
    /// A 0-vote from a node whose commit set contains the candidate.
    UnjustifiedZeroVote,
    /// Two different 1-votes from the same node in one attempt.
    ConflictingVote,
}

/// Misconfiguration or local misuse of an MVBA instance.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MvbaError {
    #[error("{node} is not a member of a group of {n}")]
    NotAMember { node: NodeId, n: usize },
    #[error("the coin key set has {signer_n} holders and threshold {threshold}; the group needs n = {n} and threshold f + 1 = {expected}")]
    CoinKeySet {
        signer_n: usize,
        threshold: usize,
        n: usize,
        expected: usize,
    },
    #[error("the coin key set holds share {signer_index}, but this node is {our_id}")]
    CoinSignerIndex {
        signer_index: SignerIndex,
        our_id: NodeId,
    },
    #[error("consistent broadcast: {0}")]
    Cbc(#[from] CbcError),
    #[error("binary agreement: {0}")]
    Aba(#[from] AbaError),
    #[error("this instance already has a proposal")]
    AlreadyProposed,
    #[error("value of {len} bytes exceeds the instance's maximum of {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("the validator rejects the proposal")]
    InvalidProposal,
}

/// An upper bound on [`Mvba::stored_messages`] in `config`'s group: `2n` CBC children of at
/// most `n + 2` messages each, `n` coin shares, `n` certified values, `n` commit sets, and `n`
/// attempts of at most `n` votes and one ABA child (at most
/// [`aba::stored_messages_bound`](crate::aba::stored_messages_bound)`(n)` each).
pub fn stored_messages_bound(config: &GroupConfig) -> usize {
    let n = config.n();
    2 * n * (n + 2) + 3 * n + n * (n + crate::aba::stored_messages_bound(n))
}

/// The CBC instance tag of `proposer`'s proposal broadcast in MVBA instance `instance`.
pub fn proposal_tag(instance: &[u8], proposer: NodeId) -> Vec<u8> {
    hash(PROPOSAL_TAG_CONTEXT, &[instance, &proposer.0.to_le_bytes()]).to_vec()
}

/// The CBC instance tag of `committer`'s commit broadcast in MVBA instance `instance`.
pub fn commit_tag(instance: &[u8], committer: NodeId) -> Vec<u8> {
    hash(COMMIT_TAG_CONTEXT, &[instance, &committer.0.to_le_bytes()]).to_vec()
}

/// The ABA instance tag of `attempt` in MVBA instance `instance`.
pub fn aba_tag(instance: &[u8], attempt: u32) -> Vec<u8> {
    hash(ABA_TAG_CONTEXT, &[instance, &attempt.to_le_bytes()]).to_vec()
}

/// The name of the permutation coin of MVBA instance `instance`.
pub fn coin_name(instance: &[u8]) -> Digest {
    hash(COIN_CONTEXT, &[instance])
}

/// Bytes of a commit bitmap for a group of `n`.
pub fn commit_bitmap_len(n: usize) -> usize {
    n.div_ceil(8)
}

/// Encode a commit set as a bitmap: bit `i % 8` of byte `i / 8` is set for node `i`.
pub fn encode_commit(n: usize, members: &BTreeSet<NodeId>) -> Vec<u8> {
    let mut bitmap = vec![0u8; commit_bitmap_len(n)];
    for id in members.iter().filter(|id| id.index() < n) {
        bitmap[id.index() / 8] |= 1 << (id.index() % 8);
    }
    bitmap
}

/// Decode a commit bitmap of a group of `n`: `None` unless it has the exact length, no bit
/// beyond `n`, and at least `min` members.
pub fn decode_commit(n: usize, min: usize, bitmap: &[u8]) -> Option<BTreeSet<NodeId>> {
    if bitmap.len() != commit_bitmap_len(n) {
        return None;
    }
    let mut members = BTreeSet::new();
    for (byte_index, byte) in bitmap.iter().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) == 0 {
                continue;
            }
            let index = byte_index * 8 + bit;
            if index >= n {
                return None;
            }
            members.insert(node_of(index));
        }
    }
    (members.len() >= min).then_some(members)
}

/// The node holding index `index` (callers pass indices below the group size, capped well below
/// `u16::MAX`).
fn node_of(index: usize) -> NodeId {
    NodeId(u16::try_from(index).unwrap_or(u16::MAX))
}

/// A certified proposal: the value and its CBC certificate.
struct Certified<Signature> {
    value: Vec<u8>,
    certificate: Signature,
}

/// What became of the first `Send` each broadcaster sent us (the `Q` check of step 1).
struct SendFilter {
    first: Vec<Option<(Digest, bool)>>,
}

/// Whether a broadcaster's `Send` may reach its CBC child.
enum Admission {
    /// Pass it on (valid, or a repeat the child handles).
    Pass,
    /// The first `Send` of this broadcaster, and it is invalid: report it.
    Reject,
    /// Drop silently (a repeat of an invalid `Send`, or any `Send` after one).
    Drop,
}

impl SendFilter {
    fn new(n: usize) -> Self {
        SendFilter {
            first: vec![None; n],
        }
    }

    /// Check `payload` from `broadcaster` once: later `Send`s with the same payload reuse the
    /// verdict; a different payload after a valid one passes (the child reports equivocation,
    /// and echoes only once anyway); anything after an invalid one is dropped.
    fn admit(
        &mut self,
        broadcaster: NodeId,
        payload: &[u8],
        digest: Digest,
        check: impl FnOnce(&[u8]) -> bool,
    ) -> Admission {
        let Some(slot) = self.first.get_mut(broadcaster.index()) else {
            return Admission::Drop;
        };
        match slot {
            None => {
                let valid = check(payload);
                *slot = Some((digest, valid));
                if valid {
                    Admission::Pass
                } else {
                    Admission::Reject
                }
            }
            Some((_, true)) => Admission::Pass,
            Some((_, false)) => Admission::Drop,
        }
    }

    /// Record a payload known valid (our own proposal).
    fn mark_valid(&mut self, broadcaster: NodeId, digest: Digest) {
        if let Some(slot) = self.first.get_mut(broadcaster.index()) {
            slot.get_or_insert((digest, true));
        }
    }

    /// Whether `digest` is the payload of `broadcaster` already found valid.
    fn validated(&self, broadcaster: NodeId, digest: &Digest) -> bool {
        matches!(self.first.get(broadcaster.index()), Some(Some((d, true))) if d == digest)
    }
}

/// The threshold coin of step 2 (lazy, robust combining; every share verified at most once).
struct CoinState<Share> {
    name: Digest,
    /// Whether our share went out.
    released: bool,
    /// The first share each node sent, minus those found invalid.
    shares: BTreeMap<SignerIndex, Share>,
    /// Nodes whose share was found invalid: later shares from them are ignored.
    invalid: BTreeSet<SignerIndex>,
    /// Nodes whose share was found valid.
    verified: BTreeSet<SignerIndex>,
    /// Set after a combine failed: from then on each share is verified on arrival.
    pessimistic: bool,
    value: Option<CoinValue>,
}

/// What we know of one voter in one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judged {
    Zero,
    One,
}

/// One attempt (one candidate) of step 3.
struct Attempt<S: ThresholdSigner> {
    /// Votes not judged yet: the permutation is unknown, or a 0-vote whose voter's commit set
    /// has not been delivered. A voter is in at most one of `pending` and `valid`.
    pending: BTreeMap<NodeId, Vote<S::Signature>>,
    /// Votes judged valid.
    valid: BTreeMap<NodeId, Judged>,
    /// Voters whose vote was invalid: nothing more is taken from them in this attempt.
    rejected: BTreeSet<NodeId>,
    /// The vote we sent: `true` for a 1-vote.
    our_vote: Option<bool>,
    /// Whether we sent a 1-vote after a 0-vote (the upgrade before inputting 1).
    upgraded: bool,
    /// Our ABA input, once given.
    aba_input: Option<bool>,
    aba: Option<Aba<S>>,
}

impl<S: ThresholdSigner> Attempt<S> {
    fn new() -> Self {
        Attempt {
            pending: BTreeMap::new(),
            valid: BTreeMap::new(),
            rejected: BTreeSet::new(),
            our_vote: None,
            upgraded: false,
            aba_input: None,
            aba: None,
        }
    }

    fn stored_messages(&self) -> usize {
        self.pending.len() + self.valid.len() + self.aba.as_ref().map_or(0, Aba::stored_messages)
    }
}

/// One multivalued validated agreement instance at one node.
pub struct Mvba<S: ThresholdSigner> {
    config: GroupConfig,
    our_id: NodeId,
    instance: Vec<u8>,
    keys: ThresholdKeys<S>,
    validator: Arc<dyn Validator>,
    max_value: usize,
    /// Whether we proposed (input given).
    proposed: bool,
    /// Step 1: one consistent broadcast per proposer.
    proposals: Vec<Cbc<S>>,
    proposal_filter: SendFilter,
    /// Certified proposals we hold, by proposer.
    certified: BTreeMap<NodeId, Certified<S::Signature>>,
    /// Step 2: one consistent broadcast per committer.
    commits: Vec<Cbc<S>>,
    commit_filter: SendFilter,
    /// Whether we c-broadcast our commit set.
    committed: bool,
    /// Valid commit sets delivered, by committer.
    commit_sets: BTreeMap<NodeId, BTreeSet<NodeId>>,
    coin: CoinState<S::Share>,
    /// `Π`, from the coin.
    permutation: Option<Vec<NodeId>>,
    /// Step 3: attempts, keyed by index `< n`.
    attempts: BTreeMap<u32, Attempt<S>>,
    /// The attempt we vote in: every ABA before it decided 0.
    current: u32,
    /// The attempt whose ABA decided 1.
    deciding_attempt: Option<u32>,
    decision: Option<Vec<u8>>,
}

impl<S: ThresholdSigner> Mvba<S> {
    /// An MVBA instance at `our_id`.
    ///
    /// `instance` is a tag unique to this agreement (e.g. `"abc/round 7"`); every child instance,
    /// share and certificate is bound to it. `keys` are the node's threshold key sets
    /// ([`ThresholdKeys`]); `validator` is the predicate `Q`; proposals above `max_value` bytes are
    /// refused.
    pub fn new(
        config: GroupConfig,
        our_id: NodeId,
        instance: Vec<u8>,
        keys: ThresholdKeys<S>,
        validator: Arc<dyn Validator>,
        max_value: usize,
    ) -> Result<Self, MvbaError> {
        let n = config.n();
        if !config.contains(our_id) {
            return Err(MvbaError::NotAMember { node: our_id, n });
        }
        let coin_signer = &keys.coin;
        if coin_signer.n() != n || coin_signer.threshold() != config.one_honest() {
            return Err(MvbaError::CoinKeySet {
                signer_n: coin_signer.n(),
                threshold: coin_signer.threshold(),
                n,
                expected: config.one_honest(),
            });
        }
        if coin_signer.our_index() != our_id.index() {
            return Err(MvbaError::CoinSignerIndex {
                signer_index: coin_signer.our_index(),
                our_id,
            });
        }
        let mut proposals = Vec::with_capacity(n);
        let mut commits = Vec::with_capacity(n);
        for node in config.members() {
            proposals.push(Cbc::new(
                config,
                our_id,
                node,
                proposal_tag(&instance, node),
                keys.cbc.clone(),
                max_value,
            )?);
            commits.push(Cbc::new(
                config,
                our_id,
                node,
                commit_tag(&instance, node),
                keys.cbc.clone(),
                commit_bitmap_len(n),
            )?);
        }
        // Attempt 0 always runs: making its ABA now checks the key sets the ABA needs.
        let mut first = Attempt::new();
        first.aba = Some(Aba::new(
            config,
            our_id,
            aba_tag(&instance, 0),
            keys.clone(),
        )?);
        let coin = CoinState {
            name: coin_name(&instance),
            released: false,
            shares: BTreeMap::new(),
            invalid: BTreeSet::new(),
            verified: BTreeSet::new(),
            pessimistic: false,
            value: None,
        };
        Ok(Mvba {
            config,
            our_id,
            instance,
            keys,
            validator,
            max_value,
            proposed: false,
            proposals,
            proposal_filter: SendFilter::new(n),
            certified: BTreeMap::new(),
            commits,
            commit_filter: SendFilter::new(n),
            committed: false,
            commit_sets: BTreeMap::new(),
            coin,
            permutation: None,
            attempts: BTreeMap::from([(0, first)]),
            current: 0,
            deciding_attempt: None,
            decision: None,
        })
    }

    /// The decided value, once decided.
    pub fn decision(&self) -> Option<&[u8]> {
        self.decision.as_deref()
    }

    /// The instance tag.
    pub fn instance(&self) -> &[u8] {
        &self.instance
    }

    /// The largest proposal accepted, in bytes.
    pub fn max_value(&self) -> usize {
        self.max_value
    }

    /// The attempt this node votes in (0-based index into the permutation).
    pub fn attempt(&self) -> u32 {
        self.current
    }

    /// The attempt whose binary agreement decided 1 (0-based; the decision follows once the
    /// candidate's value is held).
    pub fn deciding_attempt(&self) -> Option<u32> {
        self.deciding_attempt
    }

    /// The candidate order `Π`, once the coin is tossed.
    pub fn permutation(&self) -> Option<&[NodeId]> {
        self.permutation.as_deref()
    }

    /// How many ABA children exist (at most `n`).
    pub fn aba_instances(&self) -> usize {
        self.attempts.values().filter(|a| a.aba.is_some()).count()
    }

    /// Messages, votes, shares and values this instance holds, children included; at most
    /// [`stored_messages_bound`].
    pub fn stored_messages(&self) -> usize {
        self.proposals
            .iter()
            .chain(&self.commits)
            .map(Cbc::stored_messages)
            .sum::<usize>()
            + self.coin.shares.len()
            + self.certified.len()
            + self.commit_sets.len()
            + self
                .attempts
                .values()
                .map(Attempt::stored_messages)
                .sum::<usize>()
    }

    fn n(&self) -> usize {
        self.config.n()
    }

    fn quorum(&self) -> usize {
        self.config.quorum()
    }

    /// The candidate of `attempt`, once the permutation is known.
    fn candidate(&self, attempt: u32) -> Option<NodeId> {
        self.permutation
            .as_ref()
            .and_then(|p| p.get(usize::try_from(attempt).ok()?).copied())
    }

    fn attempt_in_range(&self, attempt: u32) -> bool {
        usize::try_from(attempt).is_ok_and(|a| a < self.n())
    }

    // ----- step 1: proposals -----

    fn handle_proposal_message(
        &mut self,
        from: NodeId,
        proposer: NodeId,
        message: cbc::CbcMessage<S>,
        _rng: &mut dyn RngCore,
        step: &mut ProtocolStep<Self>,
    ) {
        if !self.config.contains(proposer) {
            step.fault(from, MvbaFault::UnknownBroadcaster { index: proposer.0 });
            return;
        }
        // The payload digest of a `Send` or `Final` the child will hash: computed once here
        // and handed to the child (and to the delivery below) instead of three times.
        let mut known_digest = None;
        if let cbc::Message::Send(payload) = &message {
            // Step 1: echo only proposals that satisfy Q; the size check is the child's.
            if from == proposer && payload.len() <= self.max_value {
                let validator = &self.validator;
                let digest = payload_digest(payload);
                known_digest = Some(digest);
                match self
                    .proposal_filter
                    .admit(proposer, payload, digest, |v| validator.is_valid(v))
                {
                    Admission::Pass => {}
                    Admission::Reject => {
                        step.fault(from, MvbaFault::InvalidProposal);
                        return;
                    }
                    Admission::Drop => return,
                }
            }
        }
        if matches!(message, cbc::Message::Final { .. }) && self.certified.contains_key(&proposer) {
            // We verified this proposal's certificate already (from a 1-vote): the child's
            // delivery would only verify it again. Echoing (on `Send`) still goes on.
            return;
        }
        let Some(child) = self.proposals.get_mut(proposer.index()) else {
            return;
        };
        let mut final_digest = None;
        if let cbc::Message::Final { payload, .. } = &message {
            if child.delivered().is_none() && payload.len() <= self.max_value {
                final_digest = Some(payload_digest(payload));
                known_digest = final_digest;
            }
        }
        // CBC draws no randomness: the digest-taking entry point has no `rng`.
        let child_step = child.handle_message_with_digest(from, message, known_digest);
        let deliveries = step.extend_with(
            child_step,
            |m| Message::Proposal(proposer, m),
            |fault| MvbaFault::Proposal { proposer, fault },
        );
        for delivery in deliveries {
            // A delivery on a `Final` is that message's payload, whose digest we hold.
            self.on_proposal_delivered(proposer, delivery, final_digest, step);
        }
    }

    /// `known_digest`, if given, is [`payload_digest`] of the delivered payload.
    fn on_proposal_delivered(
        &mut self,
        proposer: NodeId,
        delivery: CbcDelivery<S::Signature>,
        known_digest: Option<Digest>,
        step: &mut ProtocolStep<Self>,
    ) {
        if self.certified.contains_key(&proposer) {
            return; // CBC consistency: the same value, already learned from a 1-vote
        }
        let digest = known_digest.unwrap_or_else(|| payload_digest(&delivery.payload));
        // A certificate needs an honest echo, and honest nodes echo only values satisfying Q;
        // check anyway unless we checked this very payload before echoing it.
        if !self.proposal_filter.validated(proposer, &digest)
            && !self.validator.is_valid(&delivery.payload)
        {
            tracing::warn!(%proposer, "mvba: a certified proposal fails the validator");
            return;
        }
        self.certified.insert(
            proposer,
            Certified {
                value: delivery.payload,
                certificate: delivery.certificate,
            },
        );
        self.try_decide(step);
    }

    // ----- step 2: commits and the coin -----

    fn handle_commit_message(
        &mut self,
        from: NodeId,
        committer: NodeId,
        message: cbc::CbcMessage<S>,
        rng: &mut dyn RngCore,
        step: &mut ProtocolStep<Self>,
    ) {
        if !self.config.contains(committer) {
            step.fault(from, MvbaFault::UnknownBroadcaster { index: committer.0 });
            return;
        }
        let (n, quorum) = (self.n(), self.quorum());
        if let cbc::Message::Send(payload) = &message {
            if from == committer && payload.len() <= commit_bitmap_len(n) {
                let digest = payload_digest(payload);
                match self
                    .commit_filter
                    .admit(committer, payload, digest, |bitmap| {
                        decode_commit(n, quorum, bitmap).is_some()
                    }) {
                    Admission::Pass => {}
                    Admission::Reject => {
                        step.fault(from, MvbaFault::InvalidCommit);
                        return;
                    }
                    Admission::Drop => return,
                }
            }
        }
        let Some(child) = self.commits.get_mut(committer.index()) else {
            return;
        };
        let child_step = child.handle_message(from, message, rng);
        let deliveries = step.extend_with(
            child_step,
            |m| Message::Commit(committer, m),
            |fault| MvbaFault::Commit { committer, fault },
        );
        for delivery in deliveries {
            self.on_commit_delivered(committer, &delivery.payload, step);
        }
    }

    fn on_commit_delivered(
        &mut self,
        committer: NodeId,
        bitmap: &[u8],
        step: &mut ProtocolStep<Self>,
    ) {
        if self.commit_sets.contains_key(&committer) {
            return;
        }
        let Some(members) = decode_commit(self.n(), self.quorum(), bitmap) else {
            // Certified, so an honest node checked it: only possible beyond f faults.
            tracing::warn!(%committer, "mvba: a certified commit set is malformed");
            return;
        };
        self.commit_sets.insert(committer, members);
        // The committer's 0-votes can be judged now.
        let attempts: Vec<u32> = self
            .attempts
            .iter()
            .filter(|(_, a)| a.pending.contains_key(&committer))
            .map(|(index, _)| *index)
            .collect();
        for attempt in attempts {
            self.judge(attempt, committer, step);
        }
    }

    /// Step 2: c-broadcast the set of proposers whose certified proposal we hold.
    fn commit(&mut self, step: &mut ProtocolStep<Self>, rng: &mut dyn RngCore) {
        self.committed = true;
        let members: BTreeSet<NodeId> = self.certified.keys().copied().collect();
        let bitmap = encode_commit(self.n(), &members);
        let our_id = self.our_id;
        let Some(child) = self.commits.get_mut(our_id.index()) else {
            return;
        };
        match child.handle_input(bitmap, rng) {
            Ok(child_step) => {
                let deliveries = step.extend_with(
                    child_step,
                    |m| Message::Commit(our_id, m),
                    |fault| MvbaFault::Commit {
                        committer: our_id,
                        fault,
                    },
                );
                for delivery in deliveries {
                    self.on_commit_delivered(our_id, &delivery.payload, step);
                }
            }
            // We are the proposer of our own commit CBC, input it once, and the bitmap has the
            // exact size the child was made for: an error here is a bug, not a peer's fault.
            Err(error) => tracing::error!(%error, "mvba: our commit broadcast refused its input"),
        }
    }

    fn handle_coin_share(&mut self, from: NodeId, share: S::Share, step: &mut ProtocolStep<Self>) {
        if self.coin.value.is_some() {
            return;
        }
        let index = from.index();
        if self.coin.invalid.contains(&index) {
            return;
        }
        match self.coin.shares.get(&index) {
            Some(first) if *first == share => return,
            Some(_) => {
                step.fault(from, MvbaFault::ConflictingCoinShare);
                return;
            }
            None => {}
        }
        if self.coin.pessimistic {
            // A combine failed before: check each new share once, on arrival.
            if !verify_coin_share(&*self.keys.coin, index, &self.coin.name, &share) {
                self.coin.invalid.insert(index);
                step.fault(from, MvbaFault::InvalidCoinShare);
                return;
            }
            self.coin.verified.insert(index);
        }
        self.coin.shares.insert(index, share);
    }

    /// Toss the coin once our share is out and `f + 1` shares are in.
    fn try_toss(&mut self, step: &mut ProtocolStep<Self>) {
        if self.coin.value.is_some() || !self.coin.released {
            return;
        }
        let signer = &*self.keys.coin;
        let k = signer.threshold();
        let coin = &mut self.coin;
        if coin.pessimistic {
            if coin.verified.len() < k {
                return;
            }
            let chosen: Vec<(SignerIndex, &S::Share)> = coin
                .shares
                .iter()
                .filter(|(i, _)| coin.verified.contains(i))
                .take(k)
                .map(|(i, s)| (*i, s))
                .collect();
            match signer.combine_unchecked(&chosen) {
                Ok(signature) => {
                    coin.value = Some(CoinValue::from_signature_bytes(
                        &signer.signature_bytes(&signature),
                    ));
                }
                Err(error) => {
                    tracing::error!(%error, "mvba: combining verified coin shares failed")
                }
            }
        } else {
            if coin.shares.len() < k {
                return;
            }
            match combine_coin(signer, &coin.name, &coin.shares) {
                Ok((value, invalid)) => {
                    for index in invalid {
                        coin.shares.remove(&index);
                        if coin.invalid.insert(index) {
                            step.fault(node_of(index), MvbaFault::InvalidCoinShare);
                        }
                    }
                    coin.value = Some(value);
                }
                Err(CombineError::NotEnoughValidShares {
                    invalid_signers, ..
                }) => {
                    // The robust combine checked every share: the rest are valid.
                    for index in invalid_signers {
                        coin.shares.remove(&index);
                        if coin.invalid.insert(index) {
                            step.fault(node_of(index), MvbaFault::InvalidCoinShare);
                        }
                    }
                    coin.verified.extend(coin.shares.keys().copied());
                    coin.pessimistic = true;
                }
                Err(error) => {
                    // Indices come from our own map of members: a broken signer, not a peer.
                    tracing::error!(%error, "mvba: combining coin shares failed");
                    coin.pessimistic = true;
                }
            }
        }
        if let Some(value) = self.coin.value {
            let order: Vec<NodeId> = value
                .permutation(self.n())
                .into_iter()
                .map(node_of)
                .collect();
            self.permutation = Some(order);
            self.on_permutation(step);
        }
    }

    fn on_permutation(&mut self, step: &mut ProtocolStep<Self>) {
        let pending: Vec<(u32, NodeId)> = self
            .attempts
            .iter()
            .flat_map(|(index, a)| a.pending.keys().map(move |voter| (*index, *voter)))
            .collect();
        for (attempt, voter) in pending {
            self.judge(attempt, voter, step);
        }
        self.try_decide(step);
    }

    // ----- step 3: votes and binary agreements -----

    fn handle_vote(
        &mut self,
        from: NodeId,
        attempt: u32,
        vote: Vote<S::Signature>,
        step: &mut ProtocolStep<Self>,
    ) {
        if !self.attempt_in_range(attempt) {
            step.fault(
                from,
                MvbaFault::AttemptOutOfRange {
                    attempt,
                    n: self.n(),
                },
            );
            return;
        }
        if self.decision.is_some() || attempt < self.current {
            return; // decided, or the attempt's ABA decided 0: its votes no longer matter
        }
        if let Vote::One { value, .. } = &vote {
            if value.len() > self.max_value {
                step.fault(
                    from,
                    MvbaFault::OversizedValue {
                        len: value.len(),
                        max: self.max_value,
                    },
                );
                return;
            }
        }
        let state = self.attempts.entry(attempt).or_insert_with(Attempt::new);
        if state.rejected.contains(&from) {
            return;
        }
        match (state.valid.get(&from), state.pending.get(&from)) {
            // A valid 1 stays; a late 0 (reordered before the upgrade) changes nothing.
            (Some(Judged::One), _) => return,
            (Some(Judged::Zero), _) => {
                if matches!(vote, Vote::Zero) {
                    return;
                }
                // The upgrade of a valid 0-vote: judged now (the permutation is known).
                state.pending.insert(from, vote);
            }
            (None, Some(Vote::One { value, .. })) => {
                match &vote {
                    Vote::One { value: other, .. } if other != value => {
                        step.fault(from, MvbaFault::ConflictingVote);
                    }
                    _ => {}
                }
                return;
            }
            (None, Some(Vote::Zero)) => {
                if matches!(vote, Vote::Zero) {
                    return;
                }
                state.pending.insert(from, vote);
            }
            (None, None) => {
                state.pending.insert(from, vote);
            }
        }
        self.judge(attempt, from, step);
    }

    /// Judge `voter`'s pending vote in `attempt`, if it can be judged yet.
    fn judge(&mut self, attempt: u32, voter: NodeId, step: &mut ProtocolStep<Self>) {
        let Some(candidate) = self.candidate(attempt) else {
            return; // the permutation is not known yet
        };
        let Some(state) = self.attempts.get_mut(&attempt) else {
            return;
        };
        let Some(vote) = state.pending.remove(&voter) else {
            return;
        };
        let verdict = match vote {
            Vote::Zero => match self.commit_sets.get(&voter) {
                None => {
                    state.pending.insert(voter, Vote::Zero);
                    return; // wait for the voter's commit set
                }
                Some(members) if members.contains(&candidate) => {
                    step.fault(voter, MvbaFault::UnjustifiedZeroVote);
                    None
                }
                Some(_) => Some(Judged::Zero),
            },
            Vote::One { value, certificate } => self
                .accept_certified(voter, candidate, value, certificate, step)
                .then_some(Judged::One),
        };
        let Some(state) = self.attempts.get_mut(&attempt) else {
            return;
        };
        match verdict {
            Some(judged) => {
                state.valid.insert(voter, judged);
            }
            // An invalid upgrade leaves a valid 0-vote counted; either way, no more from them.
            None => {
                state.rejected.insert(voter);
            }
        }
        self.try_decide(step);
    }

    /// Whether `value` with `certificate` is `candidate`'s certified proposal (sent by `from`);
    /// records it if so. Each (proposer, value) is verified at most once.
    fn accept_certified(
        &mut self,
        from: NodeId,
        candidate: NodeId,
        value: Vec<u8>,
        certificate: S::Signature,
        step: &mut ProtocolStep<Self>,
    ) -> bool {
        if let Some(known) = self.certified.get(&candidate) {
            if known.value == value {
                // Verified before: skip the cost (a byte comparison is several times cheaper
                // than hashing a large value again).
                return true;
            }
        }
        let tag = proposal_tag(&self.instance, candidate);
        if !cbc::verify_certificate(&*self.keys.cbc, &tag, candidate, &value, &certificate) {
            step.fault(from, MvbaFault::InvalidCertificate);
            return false;
        }
        if self.certified.contains_key(&candidate) {
            // Two certified values for one broadcast: CBC consistency is broken (more than f
            // faults or a forged signature). Keep the first; the sender may only be relaying.
            tracing::error!(%candidate, "mvba: two certified proposals of one proposer");
            return false;
        }
        if !self.validator.is_valid(&value) {
            step.fault(from, MvbaFault::InvalidValue);
            return false;
        }
        self.certified
            .insert(candidate, Certified { value, certificate });
        true
    }

    fn handle_aba_message(
        &mut self,
        from: NodeId,
        attempt: u32,
        message: crate::aba::AbaMessage<S>,
        rng: &mut dyn RngCore,
        step: &mut ProtocolStep<Self>,
    ) {
        if !self.attempt_in_range(attempt) {
            step.fault(
                from,
                MvbaFault::AttemptOutOfRange {
                    attempt,
                    n: self.n(),
                },
            );
            return;
        }
        let decided = self.decision.is_some();
        let Some(aba) = self.aba_child(attempt, !decided) else {
            return; // after the decision, only existing ABA children still help others
        };
        let child_step = aba.handle_message(from, message, rng);
        self.route_aba(attempt, child_step, step);
    }

    /// The ABA child of `attempt`, made if missing and `create`.
    fn aba_child(&mut self, attempt: u32, create: bool) -> Option<&mut Aba<S>> {
        let (config, our_id) = (self.config, self.our_id);
        let tag = aba_tag(&self.instance, attempt);
        let keys = self.keys.clone();
        let state = if create {
            self.attempts.entry(attempt).or_insert_with(Attempt::new)
        } else {
            self.attempts.get_mut(&attempt)?
        };
        if state.aba.is_none() {
            if !create {
                return None;
            }
            match Aba::new(config, our_id, tag, keys) {
                Ok(aba) => state.aba = Some(aba),
                // The constructor already made attempt 0's ABA with the same keys, so this
                // cannot fail for a later attempt; if it does, the attempt stays without one.
                Err(error) => {
                    tracing::error!(%error, "mvba: could not make an ABA child");
                    return None;
                }
            }
        }
        state.aba.as_mut()
    }

    fn route_aba(
        &mut self,
        attempt: u32,
        child_step: ProtocolStep<Aba<S>>,
        step: &mut ProtocolStep<Self>,
    ) {
        let decisions = step.extend_with(
            child_step,
            |message| Message::Aba { attempt, message },
            |fault| MvbaFault::Aba { attempt, fault },
        );
        for decision in decisions {
            self.on_aba_decision(attempt, decision, step);
        }
    }

    fn on_aba_decision(&mut self, attempt: u32, decision: bool, step: &mut ProtocolStep<Self>) {
        if self.decision.is_some() {
            return;
        }
        if decision {
            // Some honest node input 1, so it had reached this attempt: every earlier ABA
            // decided 0 everywhere. Decide this candidate's value (once we hold it).
            if self.deciding_attempt.is_none() {
                self.deciding_attempt = Some(attempt);
            }
            self.try_decide(step);
        } else if attempt >= self.current {
            // Some honest node input 0 here, so every earlier ABA decided 0 as well: a lagging
            // node skips straight past this attempt.
            self.current = attempt.saturating_add(1);
            // The votes of finished attempts are not needed any more.
            for (_, finished) in self.attempts.range_mut(..self.current) {
                finished.pending.clear();
                finished.valid.clear();
                finished.rejected.clear();
            }
        }
    }

    /// Decide once an ABA decided 1 and we hold its candidate's certified value.
    fn try_decide(&mut self, step: &mut ProtocolStep<Self>) {
        if self.decision.is_some() {
            return;
        }
        let Some(attempt) = self.deciding_attempt else {
            return;
        };
        let Some(candidate) = self.candidate(attempt) else {
            return;
        };
        if let Some(certified) = self.certified.get(&candidate) {
            let value = certified.value.clone();
            self.decision = Some(value.clone());
            step.output(value);
        }
    }

    /// Run steps 2 and 3 as far as what we hold allows.
    fn progress(&mut self, step: &mut ProtocolStep<Self>, rng: &mut dyn RngCore) {
        loop {
            if self.decision.is_some() {
                return;
            }
            // Step 2: commit once n − f proposals are certified.
            if !self.committed && self.certified.len() >= self.quorum() {
                self.commit(step, rng);
            }
            // Step 2: release our coin share once n − f commit sets are in.
            if self.committed && !self.coin.released && self.commit_sets.len() >= self.quorum() {
                self.coin.released = true;
                let share = coin_share(&*self.keys.coin, &self.coin.name);
                step.send(Target::All, Message::Coin(share));
            }
            if self.permutation.is_none() {
                self.try_toss(step);
            }
            if self.decision.is_some() || self.permutation.is_none() || !self.committed {
                return;
            }
            // Step 3 at the current attempt.
            let attempt = self.current;
            let Some(candidate) = self.candidate(attempt) else {
                // Every candidate's ABA decided 0: impossible with at most f faults (see the
                // module doc, termination); nothing left to do.
                tracing::error!(attempt, "mvba: ran out of candidates");
                return;
            };
            let holds_value = self.certified.contains_key(&candidate);
            let quorum = self.quorum();
            let state = self.attempts.entry(attempt).or_insert_with(Attempt::new);
            if state.our_vote.is_none() {
                state.our_vote = Some(holds_value);
                let vote = self.our_vote(candidate);
                step.send(Target::All, Message::Vote { attempt, vote });
            }
            let Some(state) = self.attempts.get_mut(&attempt) else {
                return;
            };
            if state.aba_input.is_some() || state.valid.len() < quorum {
                return;
            }
            // n − f valid votes: input 1 iff we hold the candidate's certified value (from our
            // own broadcast child or a valid 1-vote).
            state.aba_input = Some(holds_value);
            if holds_value && state.our_vote == Some(false) && !state.upgraded {
                // Make sure everyone can get the value we vouch for with input 1.
                state.upgraded = true;
                let vote = self.our_vote(candidate);
                step.send(Target::All, Message::Vote { attempt, vote });
            }
            let Some(aba) = self.aba_child(attempt, true) else {
                return;
            };
            match aba.handle_input(holds_value, rng) {
                Ok(child_step) => self.route_aba(attempt, child_step, step),
                // A fresh ABA child gets exactly one input from us.
                Err(error) => {
                    tracing::error!(%error, attempt, "mvba: the ABA child refused our input");
                    return;
                }
            }
            if self.current == attempt {
                return; // the ABA has not decided 0 yet
            }
        }
    }

    /// Our vote on `candidate`: 1 with its certified value if we hold it, else 0.
    fn our_vote(&self, candidate: NodeId) -> Vote<S::Signature> {
        match self.certified.get(&candidate) {
            Some(certified) => Vote::One {
                value: certified.value.clone(),
                certificate: certified.certificate.clone(),
            },
            None => Vote::Zero,
        }
    }
}

impl<S: ThresholdSigner> Protocol for Mvba<S> {
    type Message = MvbaMessage<S>;
    type Input = Vec<u8>;
    type Output = Vec<u8>;
    type FaultKind = MvbaFault;
    type Error = MvbaError;

    fn our_id(&self) -> NodeId {
        self.our_id
    }

    /// Step 1: propose `value` (once). It must satisfy the validator. A proposal that arrives
    /// after the decision is accepted and changes nothing.
    fn handle_input(
        &mut self,
        value: Vec<u8>,
        rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, MvbaError> {
        if self.proposed {
            return Err(MvbaError::AlreadyProposed);
        }
        if value.len() > self.max_value {
            return Err(MvbaError::ValueTooLarge {
                len: value.len(),
                max: self.max_value,
            });
        }
        if !self.validator.is_valid(&value) {
            return Err(MvbaError::InvalidProposal);
        }
        self.proposed = true;
        let mut step = Step::new();
        if self.decision.is_some() {
            return Ok(step);
        }
        let our_id = self.our_id;
        self.proposal_filter
            .mark_valid(our_id, payload_digest(&value));
        let Some(child) = self.proposals.get_mut(our_id.index()) else {
            return Ok(step);
        };
        let child_step = child.handle_input(value, rng)?;
        let deliveries = step.extend_with(
            child_step,
            |m| Message::Proposal(our_id, m),
            |fault| MvbaFault::Proposal {
                proposer: our_id,
                fault,
            },
        );
        for delivery in deliveries {
            self.on_proposal_delivered(our_id, delivery, None, &mut step);
        }
        self.progress(&mut step, rng);
        Ok(step)
    }

    fn handle_message(
        &mut self,
        from: NodeId,
        message: MvbaMessage<S>,
        rng: &mut dyn RngCore,
    ) -> ProtocolStep<Self> {
        let mut step = Step::new();
        if !self.config.contains(from) {
            step.fault(from, MvbaFault::NotAMember);
            return step;
        }
        match message {
            Message::Proposal(proposer, m) => {
                self.handle_proposal_message(from, proposer, m, rng, &mut step)
            }
            Message::Commit(committer, m) => {
                self.handle_commit_message(from, committer, m, rng, &mut step)
            }
            Message::Coin(share) => self.handle_coin_share(from, share, &mut step),
            Message::Vote { attempt, vote } => self.handle_vote(from, attempt, vote, &mut step),
            Message::Aba { attempt, message } => {
                self.handle_aba_message(from, attempt, message, rng, &mut step)
            }
        }
        self.progress(&mut step, rng);
        step
    }

    /// Decided, and the deciding attempt's ABA child has terminated (it has sent what laggards
    /// need to decide too).
    fn terminated(&self) -> bool {
        self.decision.is_some()
            && self.deciding_attempt.is_some_and(|attempt| {
                self.attempts
                    .get(&attempt)
                    .and_then(|a| a.aba.as_ref())
                    .is_some_and(Aba::terminated)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maftia_core::{Fault, TargetedMessage};
    use maftia_crypto::threshold::Combined;
    use maftia_sim::insecure_crypto::{
        CountingSigner as Counting, InsecureSignature, InsecureThresholdSigner,
    };
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type TestMvba = Mvba<Counting>;
    type TestMessage = MvbaMessage<Counting>;

    struct StartsWithOk;

    impl Validator for StartsWithOk {
        fn is_valid(&self, value: &[u8]) -> bool {
            value.starts_with(b"ok")
        }
    }

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    const MAX: usize = 64;

    struct Group {
        nodes: Vec<TestMvba>,
        /// Certificate verifications made by each node's CBC key-set handle.
        cbc_checks: Vec<Arc<AtomicUsize>>,
        cbc: Vec<InsecureThresholdSigner>,
        coin: Vec<InsecureThresholdSigner>,
        instance: Vec<u8>,
    }

    fn keys_of(
        config: &GroupConfig,
        id: NodeId,
        coin: &[InsecureThresholdSigner],
        cbc: &[InsecureThresholdSigner],
        quorum: &[InsecureThresholdSigner],
        cbc_checks: Arc<AtomicUsize>,
    ) -> ThresholdKeys<Counting> {
        let wrap = |s: &InsecureThresholdSigner, counter: Arc<AtomicUsize>| {
            Arc::new(Counting::new(s.clone(), counter, Arc::default()))
        };
        let i = id.index();
        ThresholdKeys::new(
            config,
            id,
            wrap(&coin[i], Arc::default()),
            wrap(&cbc[i], cbc_checks),
            wrap(&quorum[i], Arc::default()),
        )
        .unwrap()
    }

    fn group(n: usize, f: usize, instance: &[u8]) -> Group {
        let config = GroupConfig::asynchronous(n, f).unwrap();
        let coin = InsecureThresholdSigner::deal(n, config.one_honest(), "coin");
        let cbc = InsecureThresholdSigner::deal(n, config.echo_quorum(), "cbc");
        let quorum = InsecureThresholdSigner::deal(n, config.quorum(), "quorum");
        let cbc_checks: Vec<Arc<AtomicUsize>> = (0..n).map(|_| Arc::default()).collect();
        let nodes = config
            .members()
            .map(|id| {
                Mvba::new(
                    config,
                    id,
                    instance.to_vec(),
                    keys_of(
                        &config,
                        id,
                        &coin,
                        &cbc,
                        &quorum,
                        cbc_checks[id.index()].clone(),
                    ),
                    Arc::new(StartsWithOk),
                    MAX,
                )
                .unwrap()
            })
            .collect();
        Group {
            nodes,
            cbc_checks,
            cbc,
            coin,
            instance: instance.to_vec(),
        }
    }

    /// The permutation the coin of `instance` yields (computed from `f + 1` shares directly).
    fn permutation_of(coin: &[InsecureThresholdSigner], instance: &[u8]) -> Vec<usize> {
        let name = coin_name(instance);
        let shares: BTreeMap<_, _> = coin
            .iter()
            .take(coin[0].threshold())
            .map(|s| (s.our_index(), coin_share(s, &name)))
            .collect();
        combine_coin(&coin[0], &name, &shares)
            .unwrap()
            .0
            .permutation(coin.len())
    }

    /// `v`'s certificate as `proposer`'s proposal in `g`'s instance.
    fn certificate(g: &Group, proposer: NodeId, value: &[u8]) -> InsecureSignature {
        let message = cbc::echo_message(
            &proposal_tag(&g.instance, proposer),
            proposer,
            &payload_digest(value),
        );
        let shares: BTreeMap<_, _> = g
            .cbc
            .iter()
            .map(|s| (s.our_index(), s.sign_share(&message)))
            .collect();
        let Combined { signature, .. } = g.cbc[0].combine(&message, &shares).unwrap();
        signature
    }

    type Envelope = (NodeId, NodeId, TestMessage);

    /// A FIFO network; `hold` decides which messages are kept back (in `held`) instead.
    struct Net {
        queue: VecDeque<Envelope>,
        held: Vec<Envelope>,
        outputs: Vec<Vec<Vec<u8>>>,
        faults: Vec<(NodeId, Fault<MvbaFault>)>,
        /// Every message each node sent, in order.
        sent: Vec<Vec<TestMessage>>,
    }

    impl Net {
        fn new(n: usize) -> Self {
            Net {
                queue: VecDeque::new(),
                held: Vec::new(),
                outputs: vec![Vec::new(); n],
                faults: Vec::new(),
                sent: vec![Vec::new(); n],
            }
        }

        fn absorb(
            &mut self,
            from: NodeId,
            step: ProtocolStep<TestMvba>,
            hold: &dyn Fn(NodeId, NodeId, &TestMessage) -> bool,
        ) {
            let n = self.outputs.len();
            self.outputs[from.index()].extend(step.outputs);
            self.faults
                .extend(step.faults.into_iter().map(|fault| (from, fault)));
            for TargetedMessage { target, message } in step.messages {
                self.sent[from.index()].push(message.clone());
                for to in target.recipients(from, n) {
                    let envelope = (from, to, message.clone());
                    if hold(from, to, &message) {
                        self.held.push(envelope);
                    } else {
                        self.queue.push_back(envelope);
                    }
                }
            }
        }

        fn run(
            &mut self,
            nodes: &mut [TestMvba],
            hold: &dyn Fn(NodeId, NodeId, &TestMessage) -> bool,
        ) {
            while let Some((from, to, message)) = self.queue.pop_front() {
                let step = nodes[to.index()].handle_message(from, message, &mut rng());
                self.absorb(to, step, hold);
            }
        }

        /// Move the held messages matching `pick` back onto the network.
        fn release(&mut self, pick: &dyn Fn(NodeId, NodeId, &TestMessage) -> bool) {
            let (released, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
                .into_iter()
                .partition(|(from, to, m)| pick(*from, *to, m));
            self.held = kept;
            self.queue.extend(released);
        }
    }

    fn value_of(i: usize) -> Vec<u8> {
        format!("ok value of node {i}").into_bytes()
    }

    fn propose_all(
        g: &mut Group,
        net: &mut Net,
        hold: &dyn Fn(NodeId, NodeId, &TestMessage) -> bool,
    ) {
        for i in 0..g.nodes.len() {
            let step = g.nodes[i].handle_input(value_of(i), &mut rng()).unwrap();
            net.absorb(node_of(i), step, hold);
        }
    }

    #[test]
    fn honest_groups_decide_one_proposal_without_faults() {
        for (n, f) in [(1, 0), (4, 1), (7, 2), (10, 3)] {
            let mut g = group(n, f, b"unit/honest");
            let mut net = Net::new(n);
            let never = |_: NodeId, _: NodeId, _: &TestMessage| false;
            propose_all(&mut g, &mut net, &never);
            net.run(&mut g.nodes, &never);
            assert!(net.faults.is_empty(), "n = {n}: {:?}", net.faults);
            let decided = &net.outputs[0];
            assert_eq!(decided.len(), 1, "n = {n}");
            assert!((0..n).any(|i| decided[0] == value_of(i)));
            for (i, node) in g.nodes.iter().enumerate() {
                assert_eq!(&net.outputs[i], decided, "n = {n}, node {i}");
                assert_eq!(node.decision(), Some(decided[0].as_slice()));
                assert!(node.terminated(), "n = {n}, node {i}");
                assert!(node.stored_messages() <= stored_messages_bound(&g.nodes[0].config));
                // At most one certificate check per proposal and per commit broadcast.
                assert!(g.cbc_checks[i].load(Ordering::Relaxed) <= 2 * n, "n = {n}");
            }
            // An input after the decision is accepted and changes nothing.
            let mut late = group(n, f, b"unit/honest");
            let step = late.nodes[0].handle_input(value_of(0), &mut rng()).unwrap();
            assert!(!step.messages.is_empty());
            let again = g.nodes[0].handle_input(value_of(0), &mut rng());
            assert_eq!(again.err(), Some(MvbaError::AlreadyProposed));
        }
    }

    #[test]
    fn input_misuse_is_an_error() {
        let mut g = group(4, 1, b"unit/input");
        let node = &mut g.nodes[0];
        assert_eq!(
            node.handle_input(b"not ok".to_vec(), &mut rng()).err(),
            Some(MvbaError::InvalidProposal)
        );
        assert_eq!(
            node.handle_input(vec![b'o'; MAX + 1], &mut rng()).err(),
            Some(MvbaError::ValueTooLarge {
                len: MAX + 1,
                max: MAX
            })
        );
        assert!(node.handle_input(b"ok".to_vec(), &mut rng()).is_ok());
        assert_eq!(
            node.handle_input(b"ok 2".to_vec(), &mut rng()).err(),
            Some(MvbaError::AlreadyProposed)
        );
    }

    #[test]
    fn constructor_checks_the_key_sets() {
        let config = GroupConfig::asynchronous(4, 1).unwrap();
        let coin = InsecureThresholdSigner::deal(4, 2, "coin");
        let cbc = InsecureThresholdSigner::deal(4, 3, "cbc");
        let quorum = InsecureThresholdSigner::deal(4, 3, "quorum");
        let make = |id: NodeId, keys: ThresholdKeys<Counting>| {
            Mvba::new(config, id, b"x".to_vec(), keys, Arc::new(StartsWithOk), MAX).err()
        };
        let wrap = |s: &InsecureThresholdSigner| {
            Arc::new(Counting::new(s.clone(), Arc::default(), Arc::default()))
        };
        let keys = |coin: &InsecureThresholdSigner,
                    cbc: &InsecureThresholdSigner,
                    quorum: &InsecureThresholdSigner| ThresholdKeys {
            coin: wrap(coin),
            cbc: wrap(cbc),
            quorum: wrap(quorum),
        };
        assert_eq!(make(NodeId(1), keys(&coin[1], &cbc[1], &quorum[1])), None);
        assert!(matches!(
            make(NodeId(1), keys(&cbc[1], &cbc[1], &quorum[1])),
            Some(MvbaError::CoinKeySet { .. })
        ));
        assert!(matches!(
            make(NodeId(1), keys(&coin[2], &cbc[1], &quorum[1])),
            Some(MvbaError::CoinSignerIndex { .. })
        ));
        assert!(matches!(
            make(NodeId(1), keys(&coin[1], &coin[1], &quorum[1])),
            Some(MvbaError::Cbc(CbcError::ThresholdMismatch { .. }))
        ));
        assert!(matches!(
            make(NodeId(1), keys(&coin[1], &cbc[1], &coin[1])),
            Some(MvbaError::Aba(AbaError::ThresholdMismatch { .. }))
        ));
        assert!(matches!(
            make(NodeId(4), keys(&coin[1], &cbc[1], &quorum[1])),
            Some(MvbaError::NotAMember { .. })
        ));
    }

    #[test]
    fn commit_bitmaps_round_trip_and_reject_malformed_sets() {
        for n in [1usize, 4, 7, 8, 9, 10, 16, 17] {
            let all: BTreeSet<NodeId> = NodeId::all(n).collect();
            let bitmap = encode_commit(n, &all);
            assert_eq!(bitmap.len(), commit_bitmap_len(n));
            assert_eq!(decode_commit(n, n, &bitmap), Some(all.clone()));
            let some: BTreeSet<NodeId> = NodeId::all(n).step_by(2).collect();
            assert_eq!(
                decode_commit(n, 0, &encode_commit(n, &some)),
                Some(some.clone())
            );
            // Too few members, wrong length, bits beyond n.
            assert_eq!(
                decode_commit(n, some.len() + 1, &encode_commit(n, &some)),
                None
            );
            assert_eq!(
                decode_commit(n, 0, &[bitmap.as_slice(), &[0]].concat()),
                None
            );
            assert_eq!(decode_commit(n, 0, &bitmap[1..]), None);
            if n % 8 != 0 {
                let mut stray = bitmap.clone();
                if let Some(last) = stray.last_mut() {
                    *last |= 0x80;
                }
                assert_eq!(decode_commit(n, 0, &stray), None);
            }
        }
    }

    #[test]
    fn proposals_failing_the_validator_are_not_echoed() {
        let mut g = group(4, 1, b"unit/q");
        let node = &mut g.nodes[2];
        let send =
            |payload: &[u8]| Message::Proposal(NodeId(0), cbc::Message::Send(payload.to_vec()));
        let step = node.handle_message(NodeId(0), send(b"bad"), &mut rng());
        assert!(step.messages.is_empty());
        assert_eq!(
            step.faults,
            vec![Fault::new(NodeId(0), MvbaFault::InvalidProposal)]
        );
        // Repeats, and anything later from that proposer, are dropped without evidence.
        assert!(node
            .handle_message(NodeId(0), send(b"bad"), &mut rng())
            .is_empty());
        assert!(node
            .handle_message(NodeId(0), send(b"ok late"), &mut rng())
            .is_empty());
        // A valid proposal is echoed to its proposer only.
        let step = node.handle_message(
            NodeId(1),
            Message::Proposal(NodeId(1), cbc::Message::Send(b"ok".to_vec())),
            &mut rng(),
        );
        assert!(step.faults.is_empty());
        assert_eq!(step.messages.len(), 1);
        assert_eq!(step.messages[0].target, Target::Node(NodeId(1)));
        assert!(matches!(
            step.messages[0].message,
            Message::Proposal(NodeId(1), cbc::Message::Echo(_))
        ));
        // A commit set naming fewer than n − f proposers is not echoed either.
        let step = node.handle_message(
            NodeId(3),
            Message::Commit(NodeId(3), cbc::Message::Send(vec![0b0011])),
            &mut rng(),
        );
        assert_eq!(
            step.faults,
            vec![Fault::new(NodeId(3), MvbaFault::InvalidCommit)]
        );
        assert!(step.messages.is_empty());
        // Broadcasts of non-members and messages from non-members are evidence.
        let step = node.handle_message(NodeId(1), send(b"ok").clone(), &mut rng());
        assert_eq!(step.faults.len(), 1); // the CBC child: Send from a non-proposer
        let step = node.handle_message(
            NodeId(1),
            Message::Proposal(NodeId(9), cbc::Message::Send(b"ok".to_vec())),
            &mut rng(),
        );
        assert_eq!(
            step.faults,
            vec![Fault::new(
                NodeId(1),
                MvbaFault::UnknownBroadcaster { index: 9 }
            )]
        );
        let step = node.handle_message(NodeId(4), send(b"ok"), &mut rng());
        assert_eq!(
            step.faults,
            vec![Fault::new(NodeId(4), MvbaFault::NotAMember)]
        );
    }

    #[test]
    fn coin_shares_one_per_node() {
        let mut g = group(4, 1, b"unit/coin");
        let name = coin_name(&g.instance);
        let good = coin_share(&g.coin[1], &name);
        let other = coin_share(&g.coin[1], b"another coin");
        let node = &mut g.nodes[0];
        assert!(node
            .handle_message(NodeId(1), Message::Coin(good.clone()), &mut rng())
            .is_empty());
        assert!(node
            .handle_message(NodeId(1), Message::Coin(good), &mut rng())
            .is_empty());
        let step = node.handle_message(NodeId(1), Message::Coin(other), &mut rng());
        assert_eq!(
            step.faults,
            vec![Fault::new(NodeId(1), MvbaFault::ConflictingCoinShare)]
        );
        assert_eq!(node.stored_messages(), 1);
    }

    /// Setup for the vote tests: n = 4, node 0 never gets node `missing`'s proposal broadcast,
    /// and the instance is chosen so that `missing` is the first candidate. Votes and ABA
    /// messages are held back. Returns the group, the network and the candidate.
    fn candidate_unknown_to_node_0() -> (Group, Net, NodeId) {
        let missing = NodeId(3);
        let instance = (0u32..)
            .map(|i| format!("unit/votes/{i}").into_bytes())
            .find(|instance| {
                let coin = InsecureThresholdSigner::deal(4, 2, "coin");
                permutation_of(&coin, instance)[0] == missing.index()
            })
            .unwrap();
        let mut g = group(4, 1, &instance);
        let mut net = Net::new(4);
        let hold = move |from: NodeId, to: NodeId, m: &TestMessage| match m {
            Message::Proposal(p, _) => *p == missing && to == NodeId(0) && from != to,
            Message::Vote { .. } | Message::Aba { .. } => from != to,
            _ => false,
        };
        propose_all(&mut g, &mut net, &hold);
        net.run(&mut g.nodes, &hold);
        assert!(net.faults.is_empty(), "{:?}", net.faults);
        assert_eq!(g.nodes[0].permutation().map(|p| p[0]), Some(missing));
        // Node 0 committed without the candidate and voted 0; the others voted 1.
        assert_eq!(
            net.sent[0]
                .iter()
                .filter(|m| matches!(m, Message::Vote { .. }))
                .count(),
            1
        );
        assert!(net.sent[0].contains(&Message::Vote {
            attempt: 0,
            vote: Vote::Zero
        }));
        for i in 1..4 {
            assert!(net.sent[i].iter().any(|m| matches!(
                m,
                Message::Vote {
                    attempt: 0,
                    vote: Vote::One { .. }
                }
            )));
        }
        (g, net, missing)
    }

    fn is_vote_to(to: NodeId) -> impl Fn(NodeId, NodeId, &TestMessage) -> bool {
        move |_, t, m| t == to && matches!(m, Message::Vote { .. })
    }

    #[test]
    fn a_node_that_voted_0_upgrades_its_vote_before_inputting_1() {
        let (mut g, mut net, missing) = candidate_unknown_to_node_0();
        let value = value_of(missing.index());
        // Node 0 gets the votes (1-votes with the certified value) but no ABA message yet.
        let hold_aba = |from: NodeId, to: NodeId, m: &TestMessage| {
            from != to && matches!(m, Message::Aba { .. })
        };
        net.release(&is_vote_to(NodeId(0)));
        let checks_before = g.cbc_checks[0].load(Ordering::Relaxed);
        net.run(&mut g.nodes, &hold_aba);
        // One certificate check for three 1-votes with the same value.
        assert_eq!(g.cbc_checks[0].load(Ordering::Relaxed), checks_before + 1);
        let upgrade = Message::Vote {
            attempt: 0,
            vote: Vote::One {
                value: value.clone(),
                certificate: certificate(&g, missing, &value),
            },
        };
        assert!(
            net.sent[0].contains(&upgrade),
            "node 0 did not upgrade its vote"
        );
        // Everything else flows: everyone decides the candidate's value, nobody is accused.
        net.release(&|_, _, _| true);
        net.run(&mut g.nodes, &|_, _, _| false);
        assert!(net.faults.is_empty(), "{:?}", net.faults);
        for i in 0..4 {
            assert_eq!(net.outputs[i], vec![value.clone()], "node {i}");
        }
    }

    #[test]
    fn a_node_decides_once_the_value_arrives_after_the_aba() {
        let (mut g, mut net, missing) = candidate_unknown_to_node_0();
        let value = value_of(missing.index());
        // Votes flow among nodes 1..3 and ABA messages everywhere; node 0 gets no 1-vote.
        let hold_ones_to_0 = |_: NodeId, to: NodeId, m: &TestMessage| {
            to == NodeId(0)
                && matches!(
                    m,
                    Message::Vote {
                        vote: Vote::One { .. },
                        ..
                    }
                )
        };
        net.release(&|_, to, m| {
            matches!(m, Message::Vote { .. } | Message::Aba { .. })
                && !hold_ones_to_0(NodeId(0), to, m)
        });
        net.run(&mut g.nodes, &hold_ones_to_0);
        assert!(net.faults.is_empty(), "{:?}", net.faults);
        for i in 1..4 {
            assert_eq!(net.outputs[i], vec![value.clone()]);
        }
        // Node 0's ABA decided 1 from the others' decision proof, but it lacks the value.
        assert_eq!(g.nodes[0].deciding_attempt(), Some(0));
        assert_eq!(g.nodes[0].decision(), None);
        assert!(!g.nodes[0].terminated());
        // One 1-vote brings it; the rest cost no further certificate check.
        let checks_before = g.cbc_checks[0].load(Ordering::Relaxed);
        let first_one = net
            .held
            .iter()
            .position(|(from, to, m)| hold_ones_to_0(*from, *to, m))
            .unwrap();
        let envelope = net.held.remove(first_one);
        net.queue.push_back(envelope);
        net.run(&mut g.nodes, &|_, _, _| false);
        assert_eq!(net.outputs[0], vec![value.clone()]);
        assert_eq!(g.nodes[0].decision(), Some(value.as_slice()));
        net.release(&|_, _, _| true);
        net.run(&mut g.nodes, &|_, _, _| false);
        assert_eq!(g.cbc_checks[0].load(Ordering::Relaxed), checks_before + 1);
        assert_eq!(net.outputs[0].len(), 1);
        assert!(net.faults.is_empty(), "{:?}", net.faults);
        assert!(g.nodes.iter().all(|n| n.terminated()));
    }

    #[test]
    fn vote_rules() {
        let (mut g, _net, missing) = candidate_unknown_to_node_0();
        let value = value_of(missing.index());
        let good = certificate(&g, missing, &value);
        let wrong = certificate(&g, NodeId(1), &value); // another proposer's instance
        let checks = |g: &Group| g.cbc_checks[0].load(Ordering::Relaxed);
        let vote = |attempt, vote| Message::Vote { attempt, vote };
        // A node that committed to holding the candidate's proposal: its 0-vote is unjustified.
        let committed = g.nodes[0]
            .commit_sets
            .iter()
            .find(|(id, members)| **id != NodeId(0) && members.contains(&missing))
            .map(|(id, _)| *id)
            .unwrap();
        let others: Vec<NodeId> = (1..4u16)
            .map(NodeId)
            .filter(|id| *id != committed)
            .collect();
        let node = &mut g.nodes[0];
        let step = node.handle_message(committed, vote(0, Vote::Zero), &mut rng());
        assert_eq!(
            step.faults,
            vec![Fault::new(committed, MvbaFault::UnjustifiedZeroVote)]
        );
        // Nothing more is taken from it in this attempt, not even a valid 1-vote.
        let one = Vote::One {
            value: value.clone(),
            certificate: good.clone(),
        };
        assert!(node
            .handle_message(committed, vote(0, one.clone()), &mut rng())
            .is_empty());
        // A misattached certificate: evidence, verified once per voter.
        let forged = Vote::One {
            value: value.clone(),
            certificate: wrong,
        };
        let before = checks(&g);
        let node = &mut g.nodes[0];
        let step = node.handle_message(others[0], vote(0, forged.clone()), &mut rng());
        assert_eq!(
            step.faults,
            vec![Fault::new(others[0], MvbaFault::InvalidCertificate)]
        );
        assert!(node
            .handle_message(others[0], vote(0, forged), &mut rng())
            .is_empty());
        assert_eq!(checks(&g), before + 1);
        // Oversized values and attempts outside 0..n.
        let node = &mut g.nodes[0];
        let big = Vote::One {
            value: vec![b'o'; MAX + 1],
            certificate: good.clone(),
        };
        let step = node.handle_message(others[1], vote(0, big), &mut rng());
        assert_eq!(
            step.faults,
            vec![Fault::new(
                others[1],
                MvbaFault::OversizedValue {
                    len: MAX + 1,
                    max: MAX
                }
            )]
        );
        for attempt in [4, u32::MAX] {
            let step = node.handle_message(NodeId(3), vote(attempt, Vote::Zero), &mut rng());
            assert_eq!(
                step.faults,
                vec![Fault::new(
                    NodeId(3),
                    MvbaFault::AttemptOutOfRange { attempt, n: 4 }
                )]
            );
            let step = node.handle_message(
                NodeId(3),
                Message::Aba {
                    attempt,
                    message: crate::aba::Message::Coin {
                        round: 1,
                        share: coin_share(&g.coin[3], b"x"),
                    },
                },
                &mut rng(),
            );
            assert_eq!(step.faults.len(), 1);
            assert_eq!(node.aba_instances(), 1);
        }
        // A valid 1-vote counts (one certificate check), and a later 0-vote from the same
        // voter (reordered before it) changes nothing.
        let before = checks(&g);
        let node = &mut g.nodes[0];
        let node_step = node.handle_message(others[1], vote(0, one.clone()), &mut rng());
        assert!(node_step.faults.is_empty());
        assert!(node
            .handle_message(others[1], vote(0, Vote::Zero), &mut rng())
            .faults
            .is_empty());
        assert_eq!(node.attempts[&0].valid.get(&others[1]), Some(&Judged::One));
        assert_eq!(checks(&g), before + 1);

        // Before the permutation: votes wait; two different 1-votes are a conflict.
        let mut fresh = group(4, 1, b"unit/pending");
        let node = &mut fresh.nodes[0];
        let a = Vote::One {
            value: b"ok a".to_vec(),
            certificate: good.clone(),
        };
        let b = Vote::One {
            value: b"ok b".to_vec(),
            certificate: good,
        };
        assert!(node
            .handle_message(NodeId(1), vote(2, Vote::Zero), &mut rng())
            .is_empty());
        assert!(node
            .handle_message(NodeId(1), vote(2, a.clone()), &mut rng())
            .is_empty());
        assert!(node
            .handle_message(NodeId(1), vote(2, a), &mut rng())
            .is_empty());
        let step = node.handle_message(NodeId(1), vote(2, b), &mut rng());
        assert_eq!(
            step.faults,
            vec![Fault::new(NodeId(1), MvbaFault::ConflictingVote)]
        );
        assert_eq!(node.stored_messages(), 1);
    }

    #[test]
    fn message_codec_roundtrip() {
        let g = group(4, 1, b"unit/codec");
        let certificate = certificate(&g, NodeId(1), b"ok");
        let share = coin_share(&g.coin[0], b"c");
        let messages: Vec<TestMessage> = vec![
            Message::Proposal(NodeId(1), cbc::Message::Send(b"ok".to_vec())),
            Message::Commit(
                NodeId(2),
                cbc::Message::Final {
                    payload: vec![0b1111],
                    certificate: certificate.clone(),
                },
            ),
            Message::Coin(share.clone()),
            Message::Vote {
                attempt: 3,
                vote: Vote::One {
                    value: b"ok".to_vec(),
                    certificate,
                },
            },
            Message::Vote {
                attempt: 0,
                vote: Vote::Zero,
            },
            Message::Aba {
                attempt: 1,
                message: crate::aba::Message::Coin { round: 2, share },
            },
        ];
        for m in messages {
            let frame = maftia_core::codec::encode(&m).unwrap();
            assert_eq!(
                maftia_core::codec::decode::<TestMessage>(&frame).unwrap(),
                m
            );
        }
    }

    #[test]
    fn tags_separate_instances_roles_and_nodes() {
        let tags = [
            proposal_tag(b"a", NodeId(0)),
            proposal_tag(b"a", NodeId(1)),
            proposal_tag(b"b", NodeId(0)),
            commit_tag(b"a", NodeId(0)),
            aba_tag(b"a", 0),
            aba_tag(b"a", 1),
            coin_name(b"a").to_vec(),
        ];
        let distinct: BTreeSet<_> = tags.iter().collect();
        assert_eq!(distinct.len(), tags.len());
    }
}
