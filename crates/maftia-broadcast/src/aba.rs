//! Randomized binary Byzantine agreement with a threshold coin and signed justifications.
//!
//! Follows the binary agreement protocol ABBA of Cachin, Kursawe and Shoup, "Random Oracles in
//! Constantinople: Practical Asynchronous Byzantine Agreement Using Cryptography" (PODC 2000;
//! J. Cryptology 18(3), 2005). Every node inputs a bit; all honest nodes output the same bit,
//! exactly once.
//!
//! # The protocol (protocol ABBA of the paper: pre-processing, then rounds of steps 1–4)
//! Signed statements are domain-separated by protocol, instance, round and step
//! ([`preprocess_message`], [`prevote_message`], [`mainvote_message`], [`coin_name`]), so the
//! coin key set (threshold `f+1`) and the quorum key set (threshold `n−f`) of
//! [`ThresholdKeys`] can serve them all.
//!
//! 0. **Pre-processing.** On input `b`, send `PreProcess(b)` with a share of the
//!    `f+1`-threshold signature on `pre-process(b)`. Collect `n−f` of them.
//!
//! Then for rounds `r = 1, 2, …`:
//! 1. **Pre-vote.** Round 1: `b` is the majority of the collected pre-processing votes (a tie
//!    goes to our input; `n−f ≥ 2f+1` votes always give some value `f+1` of them), justified by
//!    the `f+1` signature on `pre-process(b)` combined from them. Round `r > 1`: from the `n−f`
//!    main-votes of round `r−1` (its step 3): if one is for `b`, pre-vote `b` (*hard* pre-vote,
//!    justified by that main-vote's justification, the `n−f` signature on `pre-vote(r−1, b)`);
//!    if all abstain, pre-vote the coin `c` of round `r−1` (*soft* pre-vote, justified by the
//!    `n−f` signature on `main-vote(r−1, abstain)`). Each pre-vote carries a share of the `n−f`
//!    signature on `pre-vote(r, b)`. *Deviation:* a soft pre-vote also carries the combined coin
//!    signature of round `r−1`, so any node checks `c` without holding that coin's shares (it
//!    costs one signature verification, cached like every other).
//! 2. **Main-vote.** After our pre-vote, collect `n−f` justified pre-votes of round `r`: if all
//!    are for `b`, main-vote `b`, justified by the `n−f` signature on `pre-vote(r, b)` combined
//!    from their shares; otherwise main-vote *abstain*, justified by the justifications of one
//!    pre-vote for 0 and one for 1. Each main-vote carries a share of the `n−f` signature on
//!    `main-vote(r, v)`.
//! 3. **Check for decision.** After our main-vote, collect `n−f` justified main-votes of round
//!    `r`: if all are for `b`, **decide** `b`; the shares of those main-votes combine into the
//!    *decision proof*, the `n−f` signature on `main-vote(r, b)`.
//! 4. **Coin.** Otherwise release our share of the round-`r` coin (threshold `f+1`, see
//!    [`maftia_crypto::coin`]) — *only now*, after `n−f` main-votes of round `r` were
//!    collected — and go to round `r+1` (the coin is combined only when all main-votes abstain).
//!
//! **Termination** (*deviation*: in the paper a party that decides goes on for one more round; here
//! a transferable proof ends the instance). A node that decides sends `Decide(r, b, proof)` to all
//! and terminates at once. A node receiving a valid proof decides `b`, forwards it once and
//! terminates. The proof is safe: `n−f` main-votes for `b` in round `r` mean no main-vote for `¬b`
//! in round `r` (two `n−f` sets of pre-vote signers share an honest node) and, as every honest
//! node's `n−f` main-votes of round `r` contain one for `b`, only `b` is justifiable in every later
//! round — the paper's agreement argument. Since every honest decider sends the proof to all, every
//! honest node decides; nobody runs rounds after deciding.
//!
//! **Catching up** (an addition to the paper). A node that learns a valid justification for a round
//! beyond its own (a pre-vote or an abstaining main-vote of round `R`, or a main-vote of round `R`
//! for `b`, which justifies pre-voting `b` in `R+1`) *jumps*: it leaves its round and pre-votes the
//! justified value in the later round. An honest node that skips rounds behaves like one that is
//! slow in them, so safety is unchanged (every vote it sends is justified, one per round and step);
//! it restores liveness after a node fell behind, since it never needs messages of rounds it
//! dropped. The adversary gains nothing: which justified value a late node pre-votes is already up
//! to the scheduler in CKS.
//!
//! **A node without input** cannot send a pre-processing vote (step 0 needs a value). It still
//! takes part in everything else: it pre-votes in round 1 from the `n−f` pre-processing votes
//! it receives (step 1 uses the received votes only) or, if a justified round-1 pre-vote comes
//! first, adopts that; it main-votes, releases coin shares and forwards decisions. An input that
//! arrives later is still pre-processed (it helps others), and one that arrives after the
//! decision is ignored.
//!
//! # Guarantees
//! With `n > 3f`, at most `f` Byzantine nodes, unforgeable threshold signatures and a coin that
//! is unpredictable until an honest node releases its share (random-oracle model; co-CDH for
//! the BLS backend):
//! - **agreement**: no two honest nodes decide differently;
//! - **validity**: if all honest nodes that input, input `b`, only `b` can be decided (a
//!   round-1 pre-vote for `¬b` needs `f+1` pre-processing shares on `¬b`, one of them honest).
//!   Equivalently, in the stronger form MVBA relies on: a decided value was the input of some
//!   honest node — every justified pre-vote and main-vote, in every round, traces back to a
//!   round-1 pre-vote, which needs an honest pre-processing share on its value;
//! - **integrity**: each honest node outputs exactly once;
//! - **termination**: with probability 1 if every honest node eventually gets an input or a
//!   decision proof; the expected number of rounds is constant (each round, with probability at
//!   least 1/2 the coin equals the only value that can be main-voted, after which all honest
//!   nodes pre-vote the same value and decide in the next round). Because the coin of round `r`
//!   is released only after `n−f` main-votes of round `r` were collected, the scheduler cannot
//!   arrange the main-votes against it (the attack of HoneyBadgerBFT issue #59 on coins released
//!   too early; see `tests/aba_sim.rs`).
//!
//! # Assumptions
//! Authenticated point-to-point links, asynchronous delivery, a trusted dealer's (or DKG's) coin
//! and quorum key sets, `instance` unique among all agreements run with those keys.
//!
//! # Complexity
//! Per round: `O(n²)` messages (pre-vote, main-vote and coin share from every node to every
//! node), each of constant size (a few signatures and one share). Per node and round: three
//! signature shares made, at most three robust combines (one signature verification each on the
//! optimistic path), and a handful of justification verifications — each distinct justification
//! is verified once and cached (combined threshold signatures are unique, so honest nodes send
//! byte-identical justifications). A node caught with an invalid share, justification or proof,
//! or voting twice in one step, is reported once and ignored from then on, so every Byzantine
//! node costs at most one failed verification of each kind.
//!
//! # Bounded state
//! Votes are kept for the current round only; coin shares for rounds
//! `current ..= current + ROUND_WINDOW` ([`ROUND_WINDOW`]) and, beyond that, only the
//! latest-round share of each sender; pre-processing votes only until our first pre-vote. One
//! vote per peer per (round, step). Messages of earlier rounds are dropped before any
//! verification; later-round votes either trigger a jump (after one verification) or convict
//! their sender. So [`Aba::stored_messages`] never exceeds
//! [`stored_messages_bound`]`(n) = (ROUND_WINDOW + 5)·n`.
//!
//! Why the latest far share is kept: a node far behind may get an honest node's coin share of
//! round `R` before it jumps to `R`. In the highest round `R` any honest node has reached, every
//! honest node's latest share is its share of `R`, so after jumping there a node holds all the
//! honest shares it needs; without them it could wait forever for the coin of `R`.
use crate::keys::ThresholdKeys;
use maftia_core::{GroupConfig, NodeId, Protocol, ProtocolStep, Step, Target};
use maftia_crypto::coin::{coin_message, CoinValue};
use maftia_crypto::hash::{hash, Digest};
use maftia_crypto::threshold::{CombineError, SignerIndex, ThresholdSigner};
use rand_core::RngCore;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use thiserror::Error;

/// How many rounds past the current one coin shares are kept for (beyond it, only each
/// sender's latest share). Votes of later rounds are never stored: a valid one makes the node
/// jump to that round, an invalid one convicts its sender.
pub const ROUND_WINDOW: u32 = 4;

/// The most messages (votes and shares) an instance stores in a group of `n`: `n`
/// pre-processing votes, `n` pre-votes and `n` main-votes of the current round, `n` coin
/// shares for each of the `ROUND_WINDOW + 1` rounds of the window, and one later coin share
/// per sender.
pub const fn stored_messages_bound(n: usize) -> usize {
    (ROUND_WINDOW as usize + 5) * n
}

/// Hash context of the pre-processing statement (signed with the `f+1` coin key set).
pub const PREPROCESS_CONTEXT: &str = "maftia 2026-11 aba preprocess";
/// Hash context of the pre-vote statement (signed with the `n−f` quorum key set).
pub const PREVOTE_CONTEXT: &str = "maftia 2026-11 aba prevote";
/// Hash context of the main-vote statement (signed with the `n−f` quorum key set).
pub const MAINVOTE_CONTEXT: &str = "maftia 2026-11 aba mainvote";
/// Hash context of the name of a round's coin (tossed with the `f+1` coin key set).
pub const COIN_CONTEXT: &str = "maftia 2026-11 aba coin";

/// The statement a pre-processing share signs: `pre-process(instance, b)`.
pub fn preprocess_message(instance: &[u8], value: bool) -> Digest {
    hash(PREPROCESS_CONTEXT, &[instance, &[u8::from(value)]])
}

/// The statement a pre-vote share signs: `pre-vote(instance, round, b)`.
pub fn prevote_message(instance: &[u8], round: u32, value: bool) -> Digest {
    hash(
        PREVOTE_CONTEXT,
        &[instance, &round.to_le_bytes(), &[u8::from(value)]],
    )
}

/// The statement a main-vote share signs: `main-vote(instance, round, v)`, `v = None` for
/// abstain.
pub fn mainvote_message(instance: &[u8], round: u32, vote: Option<bool>) -> Digest {
    let encoded: u8 = match vote {
        Some(false) => 0,
        Some(true) => 1,
        None => 2,
    };
    hash(
        MAINVOTE_CONTEXT,
        &[instance, &round.to_le_bytes(), &[encoded]],
    )
}

/// The name of round `round`'s coin (see [`maftia_crypto::coin::coin_share`]).
pub fn coin_name(instance: &[u8], round: u32) -> Digest {
    hash(COIN_CONTEXT, &[instance, &round.to_le_bytes()])
}

/// Why a pre-vote's value is justified (ABBA step 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "Signature: Serialize",
    deserialize = "Signature: DeserializeOwned"
))]
pub enum PreVoteJustification<Signature> {
    /// Round 1: the `f+1` signature on `pre-process(b)`.
    Preprocess(Signature),
    /// Round `r > 1`, hard pre-vote: the `n−f` signature on `pre-vote(r−1, b)` (the
    /// justification of a main-vote for `b` in round `r−1`).
    Hard(Signature),
    /// Round `r > 1`, soft pre-vote for the coin: the `n−f` signature on
    /// `main-vote(r−1, abstain)` and the coin signature of round `r−1`, whose bit is `b`.
    Soft { abstain: Signature, coin: Signature },
}

/// A main-vote and its justification (ABBA step 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "Signature: Serialize",
    deserialize = "Signature: DeserializeOwned"
))]
pub enum MainVote<Signature> {
    /// For `value`, with the `n−f` signature on `pre-vote(r, value)`.
    Value { value: bool, proof: Signature },
    /// Abstain, with justifications of a pre-vote for 0 and of a pre-vote for 1 in round `r`.
    Abstain {
        zero: PreVoteJustification<Signature>,
        one: PreVoteJustification<Signature>,
    },
}

impl<Signature> MainVote<Signature> {
    /// The vote: `Some(b)` for `b`, `None` for abstain.
    pub fn vote(&self) -> Option<bool> {
        match self {
            MainVote::Value { value, .. } => Some(*value),
            MainVote::Abstain { .. } => None,
        }
    }
}

/// What ABA nodes send each other; generic over the signer's share and signature types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "Share: Serialize, Signature: Serialize",
    deserialize = "Share: DeserializeOwned, Signature: DeserializeOwned"
))]
pub enum Message<Share, Signature> {
    /// Pre-processing (step 0): our input, with a share (coin key set) on `pre-process(value)`.
    PreProcess { value: bool, share: Share },
    /// Step 1: a justified pre-vote, with a share (quorum key set) on `pre-vote(round, value)`.
    PreVote {
        round: u32,
        value: bool,
        justification: PreVoteJustification<Signature>,
        share: Share,
    },
    /// Step 2: a justified main-vote, with a share (quorum key set) on `main-vote(round, v)`.
    MainVote {
        round: u32,
        vote: MainVote<Signature>,
        share: Share,
    },
    /// Step 4: a share of the coin named [`coin_name`]`(instance, round)`.
    Coin { round: u32, share: Share },
    /// Step 3's outcome, transferable: the decision and its proof, the `n−f` signature on
    /// `main-vote(round, value)`.
    Decide {
        round: u32,
        value: bool,
        proof: Signature,
    },
}

/// The message type of an [`Aba`] instance using signer `S`.
pub type AbaMessage<S> = Message<<S as ThresholdSigner>::Share, <S as ThresholdSigner>::Signature>;

/// The step of the protocol a piece of evidence is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AbaStep {
    PreProcess,
    PreVote,
    MainVote,
    Coin,
    Decide,
}

/// How a peer misbehaved in an ABA instance. Each culprit is reported once; its later messages
/// are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AbaFault {
    /// A message from a node outside the group.
    NotAMember,
    /// A vote, coin share or proof for round 0 (rounds start at 1).
    RoundZero { step: AbaStep },
    /// A pre-vote or main-vote whose justification does not verify, or is of the wrong kind for
    /// its round.
    InvalidJustification { round: u32, step: AbaStep },
    /// A signature share found invalid when combining.
    InvalidShare { round: u32, step: AbaStep },
    /// Two different messages for the same round and step.
    Equivocation { round: u32, step: AbaStep },
    /// A decision proof that does not verify.
    InvalidDecisionProof { round: u32 },
}

/// Misconfiguration or local misuse of an ABA instance.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AbaError {
    #[error("{node} is not a member of a group of {n}")]
    NotAMember { node: NodeId, n: usize },
    #[error("the {key_set} key set has {signer_n} holders, the group has {group_n} members")]
    GroupSizeMismatch {
        key_set: &'static str,
        signer_n: usize,
        group_n: usize,
    },
    #[error("the {key_set} key set needs threshold {expected}, it has {actual}")]
    ThresholdMismatch {
        key_set: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("the {key_set} key set holds share {signer_index}, but this node is {our_id}")]
    SignerIndexMismatch {
        key_set: &'static str,
        signer_index: SignerIndex,
        our_id: NodeId,
    },
    #[error("this instance already has an input")]
    AlreadyInput,
}

/// A statement some threshold signature vouches for; the key of the verification cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Statement {
    Preprocess(bool),
    PreVote(u32, bool),
    MainVote(u32, Option<bool>),
    Coin(u32),
}

impl Statement {
    fn round(&self) -> u32 {
        match self {
            Statement::Preprocess(_) => 0,
            Statement::PreVote(r, _) | Statement::MainVote(r, _) | Statement::Coin(r) => *r,
        }
    }
}

/// Which shares of one combine target are known valid, so no share is verified twice.
#[derive(Default)]
struct ShareChecks {
    verified: BTreeSet<SignerIndex>,
    /// Set after a combine failed: from then on shares are checked one by one, once each.
    pessimistic: bool,
}

struct PreVoteRecord<S: ThresholdSigner> {
    value: bool,
    justification: PreVoteJustification<S::Signature>,
    share: S::Share,
}

struct MainVoteRecord<S: ThresholdSigner> {
    vote: MainVote<S::Signature>,
    share: S::Share,
}

/// Votes of the current round.
struct RoundState<S: ThresholdSigner> {
    prevotes: BTreeMap<NodeId, PreVoteRecord<S>>,
    mainvotes: BTreeMap<NodeId, MainVoteRecord<S>>,
    our_prevote: Option<bool>,
    mainvoted: bool,
    coin_released: bool,
}

impl<S: ThresholdSigner> RoundState<S> {
    fn new() -> Self {
        RoundState {
            prevotes: BTreeMap::new(),
            mainvotes: BTreeMap::new(),
            our_prevote: None,
            mainvoted: false,
            coin_released: false,
        }
    }
}

/// The decision, once made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Decision {
    value: bool,
    round: u32,
}

/// One binary agreement instance at one node.
pub struct Aba<S: ThresholdSigner> {
    config: GroupConfig,
    our_id: NodeId,
    instance: Vec<u8>,
    keys: ThresholdKeys<S>,
    input: Option<bool>,
    /// Current round (1-based).
    round: u32,
    /// Pre-processing votes (value, share), kept until our round-1 pre-vote.
    preprocess: BTreeMap<NodeId, (bool, S::Share)>,
    current: RoundState<S>,
    /// Coin shares for rounds `round ..= round + ROUND_WINDOW`.
    coin_shares: BTreeMap<u32, BTreeMap<NodeId, S::Share>>,
    /// Per sender, its latest coin share for a round beyond the window.
    far_coin_shares: BTreeMap<NodeId, (u32, S::Share)>,
    /// Share bookkeeping per combine target (current round, and pre-processing).
    share_checks: BTreeMap<Statement, ShareChecks>,
    /// Signatures verified valid, by statement: a justification is verified once.
    verified: BTreeMap<Statement, S::Signature>,
    /// Nodes caught misbehaving: reported once, ignored afterwards.
    convicted: BTreeSet<NodeId>,
    decision: Option<Decision>,
}

impl<S: ThresholdSigner> Aba<S> {
    /// An ABA instance at `our_id`.
    ///
    /// `instance` is a caller-chosen tag unique to this agreement (e.g. `"mvba 7/candidate 3"`);
    /// it is signed into every share, so shares and proofs never carry over between
    /// instances. `keys.coin` must have threshold `f+1` and `keys.quorum` `n−f` (`keys.cbc` is
    /// not used).
    pub fn new(
        config: GroupConfig,
        our_id: NodeId,
        instance: Vec<u8>,
        keys: ThresholdKeys<S>,
    ) -> Result<Self, AbaError> {
        if !config.contains(our_id) {
            return Err(AbaError::NotAMember {
                node: our_id,
                n: config.n(),
            });
        }
        for (key_set, signer, threshold) in [
            ("coin", &keys.coin, config.one_honest()),
            ("quorum", &keys.quorum, config.quorum()),
        ] {
            if signer.n() != config.n() {
                return Err(AbaError::GroupSizeMismatch {
                    key_set,
                    signer_n: signer.n(),
                    group_n: config.n(),
                });
            }
            if signer.threshold() != threshold {
                return Err(AbaError::ThresholdMismatch {
                    key_set,
                    expected: threshold,
                    actual: signer.threshold(),
                });
            }
            if signer.our_index() != our_id.index() {
                return Err(AbaError::SignerIndexMismatch {
                    key_set,
                    signer_index: signer.our_index(),
                    our_id,
                });
            }
        }
        Ok(Aba {
            config,
            our_id,
            instance,
            keys,
            input: None,
            round: 1,
            preprocess: BTreeMap::new(),
            current: RoundState::new(),
            coin_shares: BTreeMap::new(),
            far_coin_shares: BTreeMap::new(),
            share_checks: BTreeMap::new(),
            verified: BTreeMap::new(),
            convicted: BTreeSet::new(),
            decision: None,
        })
    }

    /// The decided value, once decided.
    pub fn decision(&self) -> Option<bool> {
        self.decision.map(|d| d.value)
    }

    /// The round of the main-votes behind the decision (ours or a received proof's).
    pub fn decision_round(&self) -> Option<u32> {
        self.decision.map(|d| d.round)
    }

    /// The current round (1-based).
    pub fn round(&self) -> u32 {
        self.round
    }

    /// Our input, if given.
    pub fn input(&self) -> Option<bool> {
        self.input
    }

    pub fn instance(&self) -> &[u8] {
        &self.instance
    }

    /// Votes and shares held: never more than [`stored_messages_bound`]`(n)`.
    pub fn stored_messages(&self) -> usize {
        self.preprocess.len()
            + self.current.prevotes.len()
            + self.current.mainvotes.len()
            + self.coin_shares.values().map(BTreeMap::len).sum::<usize>()
            + self.far_coin_shares.len()
    }

    /// Nodes this instance caught misbehaving (and now ignores).
    pub fn convicted(&self) -> &BTreeSet<NodeId> {
        &self.convicted
    }

    fn n_minus_f(&self) -> usize {
        self.config.quorum()
    }

    // ----- signatures -----

    fn statement_message(&self, statement: Statement) -> Digest {
        match statement {
            Statement::Preprocess(b) => preprocess_message(&self.instance, b),
            Statement::PreVote(r, b) => prevote_message(&self.instance, r, b),
            Statement::MainVote(r, v) => mainvote_message(&self.instance, r, v),
            Statement::Coin(r) => coin_message(&coin_name(&self.instance, r)),
        }
    }

    fn statement_signer(&self, statement: Statement) -> &Arc<S> {
        match statement {
            Statement::Preprocess(_) | Statement::Coin(_) => &self.keys.coin,
            Statement::PreVote(..) | Statement::MainVote(..) => &self.keys.quorum,
        }
    }

    /// Whether `signature` is valid for `statement`; each valid signature is verified once.
    fn verify(&mut self, statement: Statement, signature: &S::Signature) -> bool {
        if self.verified.get(&statement) == Some(signature) {
            return true;
        }
        let message = self.statement_message(statement);
        let valid = self.statement_signer(statement).verify(&message, signature);
        if valid {
            self.verified
                .entry(statement)
                .or_insert_with(|| signature.clone());
        }
        valid
    }

    fn coin_bit(&self, signature: &S::Signature) -> bool {
        CoinValue::from_signature_bytes(&self.keys.coin.signature_bytes(signature)).bit()
    }

    /// Whether `justification` justifies pre-voting `value` in `round` (step 1).
    fn verify_prevote_justification(
        &mut self,
        round: u32,
        value: bool,
        justification: &PreVoteJustification<S::Signature>,
    ) -> bool {
        match justification {
            PreVoteJustification::Preprocess(signature) if round == 1 => {
                self.verify(Statement::Preprocess(value), signature)
            }
            PreVoteJustification::Hard(signature) if round > 1 => {
                self.verify(Statement::PreVote(round - 1, value), signature)
            }
            PreVoteJustification::Soft { abstain, coin } if round > 1 => {
                self.coin_bit(coin) == value
                    && self.verify(Statement::Coin(round - 1), coin)
                    && self.verify(Statement::MainVote(round - 1, None), abstain)
            }
            _ => false,
        }
    }

    /// Whether a main-vote of `round` is justified (step 2).
    fn verify_mainvote(&mut self, round: u32, vote: &MainVote<S::Signature>) -> bool {
        match vote {
            MainVote::Value { value, proof } => {
                self.verify(Statement::PreVote(round, *value), proof)
            }
            MainVote::Abstain { zero, one } => {
                self.verify_prevote_justification(round, false, zero)
                    && self.verify_prevote_justification(round, true, one)
            }
        }
    }

    /// Combine `shares` on `statement` robustly, never verifying a share twice. Invalid
    /// signers are convicted. `None` if too few valid shares remain.
    fn combine(
        &mut self,
        statement: Statement,
        step_kind: AbaStep,
        shares: BTreeMap<SignerIndex, S::Share>,
        step: &mut ProtocolStep<Self>,
    ) -> Option<S::Signature> {
        let message = self.statement_message(statement);
        let signer = Arc::clone(self.statement_signer(statement));
        let k = signer.threshold();
        let checks = self.share_checks.entry(statement).or_default();
        let mut invalid = Vec::new();
        let result = if checks.pessimistic {
            for (index, share) in &shares {
                if !checks.verified.contains(index) {
                    if signer.verify_share(*index, &message, share) {
                        checks.verified.insert(*index);
                    } else {
                        invalid.push(*index);
                    }
                }
            }
            let chosen: Vec<(SignerIndex, &S::Share)> = shares
                .iter()
                .filter(|(i, _)| checks.verified.contains(i))
                .take(k)
                .map(|(i, s)| (*i, s))
                .collect();
            if chosen.len() < k {
                None
            } else {
                match signer.combine_unchecked(&chosen) {
                    Ok(signature) => Some(signature),
                    Err(error) => {
                        // Distinct in-range indices of valid shares: only a broken signer fails.
                        tracing::error!(%error, "aba: combining verified shares failed");
                        None
                    }
                }
            }
        } else {
            match signer.combine(&message, &shares) {
                Ok(combined) => {
                    invalid.extend(combined.invalid_signers);
                    Some(combined.signature)
                }
                Err(CombineError::NotEnoughValidShares {
                    invalid_signers, ..
                }) => {
                    // The fallback checked every share: the ones not reported are valid.
                    checks.verified.extend(
                        shares
                            .keys()
                            .filter(|i| !invalid_signers.contains(i))
                            .copied(),
                    );
                    checks.pessimistic = true;
                    invalid.extend(invalid_signers);
                    None
                }
                Err(error) => {
                    tracing::error!(%error, "aba: combining shares failed");
                    checks.pessimistic = true;
                    None
                }
            }
        };
        let round = statement.round();
        for index in invalid {
            self.convict(
                node_of(index),
                AbaFault::InvalidShare {
                    round,
                    step: step_kind,
                },
                step,
            );
        }
        if let Some(signature) = &result {
            self.verified
                .entry(statement)
                .or_insert_with(|| signature.clone());
        }
        result
    }

    /// Report `culprit` once and forget everything it sent.
    fn convict(&mut self, culprit: NodeId, kind: AbaFault, step: &mut ProtocolStep<Self>) {
        if !self.convicted.insert(culprit) {
            return;
        }
        step.fault(culprit, kind);
        self.preprocess.remove(&culprit);
        self.current.prevotes.remove(&culprit);
        self.current.mainvotes.remove(&culprit);
        for shares in self.coin_shares.values_mut() {
            shares.remove(&culprit);
        }
        self.far_coin_shares.remove(&culprit);
    }

    // ----- sending -----

    fn send_prevote(
        &mut self,
        value: bool,
        justification: PreVoteJustification<S::Signature>,
        step: &mut ProtocolStep<Self>,
    ) {
        let share =
            self.keys
                .quorum
                .sign_share(&prevote_message(&self.instance, self.round, value));
        self.current.our_prevote = Some(value);
        // Pre-processing ends with our first pre-vote.
        self.preprocess.clear();
        step.send(
            Target::All,
            Message::PreVote {
                round: self.round,
                value,
                justification,
                share,
            },
        );
    }

    /// Enter round `round` (> the current one) and pre-vote `value` there.
    fn enter_round(
        &mut self,
        round: u32,
        value: bool,
        justification: PreVoteJustification<S::Signature>,
        step: &mut ProtocolStep<Self>,
    ) {
        self.round = round;
        self.current = RoundState::new();
        self.preprocess.clear();
        let last = round.saturating_add(ROUND_WINDOW);
        self.coin_shares.retain(|r, _| (round..=last).contains(r));
        // Later shares that the window now covers move into it; older ones are dropped.
        let far = std::mem::take(&mut self.far_coin_shares);
        for (sender, (share_round, share)) in far {
            if share_round > last {
                self.far_coin_shares.insert(sender, (share_round, share));
            } else if share_round >= round {
                self.coin_shares
                    .entry(share_round)
                    .or_default()
                    .entry(sender)
                    .or_insert(share);
            }
        }
        self.share_checks.clear();
        // Pre-votes of this round are checked against statements of the previous one.
        let keep_from = round.saturating_sub(1);
        self.verified.retain(|s, _| s.round() >= keep_from);
        self.send_prevote(value, justification, step);
    }

    fn decide(
        &mut self,
        value: bool,
        round: u32,
        proof: S::Signature,
        step: &mut ProtocolStep<Self>,
    ) {
        self.decision = Some(Decision { value, round });
        step.output(value);
        step.send(
            Target::Others,
            Message::Decide {
                round,
                value,
                proof,
            },
        );
        // Nothing more is needed: free every vote and share.
        self.preprocess.clear();
        self.current = RoundState::new();
        self.coin_shares.clear();
        self.far_coin_shares.clear();
        self.share_checks.clear();
        self.verified.clear();
    }

    // ----- progress (ABBA steps 1–4) -----

    fn progress(&mut self, step: &mut ProtocolStep<Self>) {
        while self.decision.is_none()
            && (self.try_round_one_prevote(step)
                || self.try_mainvote(step)
                || self.try_finish_round(step))
        {}
    }

    /// Step 1, round 1: pre-vote the majority of `n−f` pre-processing votes.
    fn try_round_one_prevote(&mut self, step: &mut ProtocolStep<Self>) -> bool {
        if self.round != 1 || self.current.our_prevote.is_some() {
            return false;
        }
        if self.preprocess.len() < self.n_minus_f() {
            return false;
        }
        let ones = self.preprocess.values().filter(|(b, _)| *b).count();
        let zeros = self.preprocess.len() - ones;
        let majority = match ones.cmp(&zeros) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => self.input.unwrap_or(true),
        };
        let k = self.keys.coin.threshold();
        for value in [majority, !majority] {
            let shares: BTreeMap<SignerIndex, S::Share> = self
                .preprocess
                .iter()
                .filter(|(_, (b, _))| *b == value)
                .map(|(id, (_, share))| (id.index(), share.clone()))
                .collect();
            if shares.len() < k {
                continue;
            }
            let before = self.convicted.len();
            match self.combine(
                Statement::Preprocess(value),
                AbaStep::PreProcess,
                shares,
                step,
            ) {
                Some(signature) => {
                    self.send_prevote(value, PreVoteJustification::Preprocess(signature), step);
                    return true;
                }
                None if self.convicted.len() > before => return true, // re-evaluate
                None => {}
            }
        }
        false
    }

    /// Step 2: main-vote after `n−f` justified pre-votes.
    fn try_mainvote(&mut self, step: &mut ProtocolStep<Self>) -> bool {
        if self.current.our_prevote.is_none() || self.current.mainvoted {
            return false;
        }
        let total = self.current.prevotes.len();
        if total < self.n_minus_f() {
            return false;
        }
        let ones = self.current.prevotes.values().filter(|p| p.value).count();
        let zeros = total - ones;
        let round = self.round;
        for (value, count) in [(false, zeros), (true, ones)] {
            if count < self.n_minus_f() {
                continue;
            }
            let shares: BTreeMap<SignerIndex, S::Share> = self
                .current
                .prevotes
                .iter()
                .filter(|(_, p)| p.value == value)
                .map(|(id, p)| (id.index(), p.share.clone()))
                .collect();
            let before = self.convicted.len();
            return match self.combine(
                Statement::PreVote(round, value),
                AbaStep::PreVote,
                shares,
                step,
            ) {
                Some(proof) => {
                    self.send_mainvote(MainVote::Value { value, proof }, step);
                    true
                }
                // Invalid shares were convicted (their votes dropped): re-evaluate.
                None => self.convicted.len() > before,
            };
        }
        // n−f pre-votes, not n−f for either value: both values are present.
        let pick = |b: bool| {
            self.current
                .prevotes
                .values()
                .find(|p| p.value == b)
                .map(|p| p.justification.clone())
        };
        match (pick(false), pick(true)) {
            (Some(zero), Some(one)) => {
                self.send_mainvote(MainVote::Abstain { zero, one }, step);
                true
            }
            _ => false,
        }
    }

    fn send_mainvote(&mut self, vote: MainVote<S::Signature>, step: &mut ProtocolStep<Self>) {
        let share =
            self.keys
                .quorum
                .sign_share(&mainvote_message(&self.instance, self.round, vote.vote()));
        self.current.mainvoted = true;
        step.send(
            Target::All,
            Message::MainVote {
                round: self.round,
                vote,
                share,
            },
        );
    }

    /// Steps 3 and 4: decide, or release the coin and move to the next round (where step 1
    /// pre-votes hard or soft).
    fn try_finish_round(&mut self, step: &mut ProtocolStep<Self>) -> bool {
        if !self.current.mainvoted || self.current.mainvotes.len() < self.n_minus_f() {
            return false;
        }
        let round = self.round;
        // Step 3: n−f main-votes for b decide b; their shares make the decision proof.
        for value in [false, true] {
            let shares: BTreeMap<SignerIndex, S::Share> = self
                .current
                .mainvotes
                .iter()
                .filter(|(_, m)| m.vote.vote() == Some(value))
                .map(|(id, m)| (id.index(), m.share.clone()))
                .collect();
            if shares.len() < self.n_minus_f() {
                continue;
            }
            let before = self.convicted.len();
            return match self.combine(
                Statement::MainVote(round, Some(value)),
                AbaStep::MainVote,
                shares,
                step,
            ) {
                Some(proof) => {
                    self.decide(value, round, proof, step);
                    true
                }
                None => self.convicted.len() > before,
            };
        }
        // Step 4: release our coin share, only now that n−f main-votes of this round are in.
        let mut changed = false;
        if !self.current.coin_released {
            self.current.coin_released = true;
            let share = self
                .keys
                .coin
                .sign_share(&coin_message(&coin_name(&self.instance, round)));
            step.send(Target::All, Message::Coin { round, share });
            changed = true;
        }
        // A main-vote for b: hard pre-vote b in the next round.
        let hard = self.current.mainvotes.values().find_map(|m| match &m.vote {
            MainVote::Value { value, proof } => Some((*value, proof.clone())),
            MainVote::Abstain { .. } => None,
        });
        let Some(next) = round.checked_add(1) else {
            return changed; // 2^32 rounds: unreachable with a working coin
        };
        if let Some((value, proof)) = hard {
            self.enter_round(next, value, PreVoteJustification::Hard(proof), step);
            return true;
        }
        // All abstain: the soft pre-vote needs the abstain signature and the coin.
        let abstain = match self.verified.get(&Statement::MainVote(round, None)) {
            Some(signature) => signature.clone(),
            None => {
                let shares: BTreeMap<SignerIndex, S::Share> = self
                    .current
                    .mainvotes
                    .iter()
                    .map(|(id, m)| (id.index(), m.share.clone()))
                    .collect();
                let before = self.convicted.len();
                match self.combine(
                    Statement::MainVote(round, None),
                    AbaStep::MainVote,
                    shares,
                    step,
                ) {
                    Some(signature) => signature,
                    // Invalid shares convicted: re-evaluate.
                    None => return changed || self.convicted.len() > before,
                }
            }
        };
        let coin = match self.verified.get(&Statement::Coin(round)) {
            Some(signature) => signature.clone(),
            None => {
                let shares: BTreeMap<SignerIndex, S::Share> = self
                    .coin_shares
                    .get(&round)
                    .map(|shares| {
                        shares
                            .iter()
                            .map(|(id, s)| (id.index(), s.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                if shares.len() < self.keys.coin.threshold() {
                    return changed;
                }
                let before = self.convicted.len();
                match self.combine(Statement::Coin(round), AbaStep::Coin, shares, step) {
                    Some(signature) => signature,
                    None => return changed || self.convicted.len() > before,
                }
            }
        };
        let value = self.coin_bit(&coin);
        self.enter_round(
            next,
            value,
            PreVoteJustification::Soft { abstain, coin },
            step,
        );
        true
    }

    // ----- receiving -----

    fn handle_preprocess(
        &mut self,
        from: NodeId,
        value: bool,
        share: S::Share,
        step: &mut ProtocolStep<Self>,
    ) {
        if self.round != 1 || self.current.our_prevote.is_some() {
            return; // pre-processing is over for us
        }
        match self.preprocess.get(&from) {
            Some((v, s)) if *v == value && *s == share => {}
            Some(_) => self.convict(
                from,
                AbaFault::Equivocation {
                    round: 0,
                    step: AbaStep::PreProcess,
                },
                step,
            ),
            None => {
                self.preprocess.insert(from, (value, share));
            }
        }
    }

    fn handle_prevote(
        &mut self,
        from: NodeId,
        round: u32,
        value: bool,
        justification: PreVoteJustification<S::Signature>,
        share: S::Share,
        step: &mut ProtocolStep<Self>,
    ) {
        if round < self.round {
            return; // an old round: dropped unverified
        }
        if round == self.round {
            if let Some(existing) = self.current.prevotes.get(&from) {
                if existing.value != value
                    || existing.justification != justification
                    || existing.share != share
                {
                    self.convict(
                        from,
                        AbaFault::Equivocation {
                            round,
                            step: AbaStep::PreVote,
                        },
                        step,
                    );
                }
                return;
            }
        }
        if !self.verify_prevote_justification(round, value, &justification) {
            self.convict(
                from,
                AbaFault::InvalidJustification {
                    round,
                    step: AbaStep::PreVote,
                },
                step,
            );
            return;
        }
        if round > self.round {
            // A later round is justified: catch up by pre-voting the same value there.
            self.enter_round(round, value, justification.clone(), step);
        } else if self.current.our_prevote.is_none() && self.input.is_none() {
            // Round 1 without input: adopt the first justified pre-vote.
            self.send_prevote(value, justification.clone(), step);
        }
        self.current.prevotes.insert(
            from,
            PreVoteRecord {
                value,
                justification,
                share,
            },
        );
    }

    fn handle_mainvote(
        &mut self,
        from: NodeId,
        round: u32,
        vote: MainVote<S::Signature>,
        share: S::Share,
        step: &mut ProtocolStep<Self>,
    ) {
        if round < self.round {
            return;
        }
        if round == self.round {
            if let Some(existing) = self.current.mainvotes.get(&from) {
                if existing.vote != vote || existing.share != share {
                    self.convict(
                        from,
                        AbaFault::Equivocation {
                            round,
                            step: AbaStep::MainVote,
                        },
                        step,
                    );
                }
                return;
            }
        }
        if !self.verify_mainvote(round, &vote) {
            self.convict(
                from,
                AbaFault::InvalidJustification {
                    round,
                    step: AbaStep::MainVote,
                },
                step,
            );
            return;
        }
        if round > self.round {
            match &vote {
                MainVote::Value { value, proof } => {
                    // Justifies a hard pre-vote for `value` in the round after it.
                    if let Some(next) = round.checked_add(1) {
                        self.enter_round(
                            next,
                            *value,
                            PreVoteJustification::Hard(proof.clone()),
                            step,
                        );
                    }
                    return; // the main-vote's own round is now behind us
                }
                MainVote::Abstain { zero, one } => {
                    let value = self.input.unwrap_or(true);
                    let justification = if value { one.clone() } else { zero.clone() };
                    self.enter_round(round, value, justification, step);
                }
            }
        }
        self.current
            .mainvotes
            .insert(from, MainVoteRecord { vote, share });
    }

    fn handle_coin(
        &mut self,
        from: NodeId,
        round: u32,
        share: S::Share,
        step: &mut ProtocolStep<Self>,
    ) {
        if round < self.round {
            return; // an old round: not needed any more
        }
        if round - self.round > ROUND_WINDOW {
            // Beyond the window: keep only the sender's latest share (see the module doc).
            match self.far_coin_shares.get(&from) {
                Some((kept, _)) if *kept >= round => {}
                _ => {
                    self.far_coin_shares.insert(from, (round, share));
                }
            }
            return;
        }
        let shares = self.coin_shares.entry(round).or_default();
        match shares.get(&from) {
            Some(existing) if *existing == share => {}
            Some(_) => self.convict(
                from,
                AbaFault::Equivocation {
                    round,
                    step: AbaStep::Coin,
                },
                step,
            ),
            None => {
                shares.insert(from, share);
            }
        }
    }

    fn handle_decide(
        &mut self,
        from: NodeId,
        round: u32,
        value: bool,
        proof: S::Signature,
        step: &mut ProtocolStep<Self>,
    ) {
        if self.verify(Statement::MainVote(round, Some(value)), &proof) {
            self.decide(value, round, proof, step);
        } else {
            self.convict(from, AbaFault::InvalidDecisionProof { round }, step);
        }
    }
}

/// The node holding signer index `index` (signer indices are node indices of group members,
/// and groups are capped well below `u16::MAX`).
fn node_of(index: SignerIndex) -> NodeId {
    NodeId(u16::try_from(index).unwrap_or(u16::MAX))
}

impl<S: ThresholdSigner> Protocol for Aba<S> {
    type Message = AbaMessage<S>;
    type Input = bool;
    type Output = bool;
    type FaultKind = AbaFault;
    type Error = AbaError;

    fn our_id(&self) -> NodeId {
        self.our_id
    }

    /// Step 0: pre-process our input (once). After the decision an input is accepted and
    /// ignored.
    fn handle_input(
        &mut self,
        value: bool,
        _rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, AbaError> {
        if self.input.is_some() {
            return Err(AbaError::AlreadyInput);
        }
        self.input = Some(value);
        let mut step = Step::new();
        if self.decision.is_some() {
            return Ok(step);
        }
        let share = self
            .keys
            .coin
            .sign_share(&preprocess_message(&self.instance, value));
        step.send(Target::All, Message::PreProcess { value, share });
        self.progress(&mut step);
        Ok(step)
    }

    fn handle_message(
        &mut self,
        from: NodeId,
        message: AbaMessage<S>,
        _rng: &mut dyn RngCore,
    ) -> ProtocolStep<Self> {
        let mut step = Step::new();
        if self.decision.is_some() {
            return step; // terminated: everything is dropped
        }
        if !self.config.contains(from) {
            step.fault(from, AbaFault::NotAMember);
            return step;
        }
        if self.convicted.contains(&from) {
            return step;
        }
        let round_zero = |step_kind| AbaFault::RoundZero { step: step_kind };
        match message {
            Message::PreProcess { value, share } => {
                self.handle_preprocess(from, value, share, &mut step)
            }
            Message::PreVote { round: 0, .. } => {
                self.convict(from, round_zero(AbaStep::PreVote), &mut step)
            }
            Message::MainVote { round: 0, .. } => {
                self.convict(from, round_zero(AbaStep::MainVote), &mut step)
            }
            Message::Coin { round: 0, .. } => {
                self.convict(from, round_zero(AbaStep::Coin), &mut step)
            }
            Message::Decide { round: 0, .. } => {
                self.convict(from, round_zero(AbaStep::Decide), &mut step)
            }
            Message::PreVote {
                round,
                value,
                justification,
                share,
            } => self.handle_prevote(from, round, value, justification, share, &mut step),
            Message::MainVote { round, vote, share } => {
                self.handle_mainvote(from, round, vote, share, &mut step)
            }
            Message::Coin { round, share } => self.handle_coin(from, round, share, &mut step),
            Message::Decide {
                round,
                value,
                proof,
            } => self.handle_decide(from, round, value, proof, &mut step),
        }
        self.progress(&mut step);
        step
    }

    /// True once decided: the decision proof went to every node, nothing else is needed.
    fn terminated(&self) -> bool {
        self.decision.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maftia_core::Fault;
    use maftia_crypto::threshold::Combined;
    use maftia_sim::insecure_crypto::{
        CountingSigner as Counting, InsecureSignature, InsecureThresholdSigner,
    };
    use rand::SeedableRng;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const INSTANCE: &[u8] = b"unit aba";

    type Msg = AbaMessage<Counting>;

    struct Group {
        config: GroupConfig,
        coin: Vec<Arc<Counting>>,
        quorum: Vec<Arc<Counting>>,
        verifies: Arc<AtomicUsize>,
        share_verifies: Arc<AtomicUsize>,
    }

    impl Group {
        fn new(n: usize, f: usize) -> Self {
            let config = GroupConfig::asynchronous(n, f).unwrap();
            let verifies = Arc::new(AtomicUsize::new(0));
            let share_verifies = Arc::new(AtomicUsize::new(0));
            let wrap = |k, name| -> Vec<Arc<Counting>> {
                InsecureThresholdSigner::deal(n, k, name)
                    .into_iter()
                    .map(|inner| {
                        Arc::new(Counting {
                            inner,
                            verifies: verifies.clone(),
                            share_verifies: share_verifies.clone(),
                        })
                    })
                    .collect()
            };
            Group {
                config,
                coin: wrap(config.one_honest(), "coin"),
                quorum: wrap(config.quorum(), "quorum"),
                verifies: verifies.clone(),
                share_verifies: share_verifies.clone(),
            }
        }

        fn keys(&self, i: usize) -> ThresholdKeys<Counting> {
            ThresholdKeys {
                coin: self.coin[i].clone(),
                cbc: self.coin[i].clone(), // unused by ABA
                quorum: self.quorum[i].clone(),
            }
        }

        fn node(&self, i: usize) -> Aba<Counting> {
            Aba::new(
                self.config,
                NodeId(i as u16),
                INSTANCE.to_vec(),
                self.keys(i),
            )
            .unwrap()
        }

        fn verifies(&self) -> usize {
            self.verifies.load(Ordering::Relaxed)
        }

        fn share_verifies(&self) -> usize {
            self.share_verifies.load(Ordering::Relaxed)
        }

        fn signature(&self, signers: &[Arc<Counting>], message: &[u8]) -> InsecureSignature {
            let shares: BTreeMap<_, _> = signers
                .iter()
                .map(|s| (s.our_index(), s.inner.sign_share(message)))
                .collect();
            let Combined { signature, .. } = signers[0].inner.combine(message, &shares).unwrap();
            signature
        }

        /// A valid pre-vote of `from` for `value` in round 1.
        fn round_one_prevote(&self, from: usize, value: bool) -> Msg {
            let justification = PreVoteJustification::Preprocess(
                self.signature(&self.coin, &preprocess_message(INSTANCE, value)),
            );
            self.prevote(from, 1, value, justification)
        }

        fn prevote(
            &self,
            from: usize,
            round: u32,
            value: bool,
            justification: PreVoteJustification<InsecureSignature>,
        ) -> Msg {
            Message::PreVote {
                round,
                value,
                justification,
                share: self.quorum[from]
                    .inner
                    .sign_share(&prevote_message(INSTANCE, round, value)),
            }
        }

        /// A valid main-vote of `from` for `value` in `round`.
        fn mainvote(&self, from: usize, round: u32, value: bool) -> Msg {
            Message::MainVote {
                round,
                vote: MainVote::Value {
                    value,
                    proof: self.signature(&self.quorum, &prevote_message(INSTANCE, round, value)),
                },
                share: self.quorum[from].inner.sign_share(&mainvote_message(
                    INSTANCE,
                    round,
                    Some(value),
                )),
            }
        }

        fn decision_proof(&self, round: u32, value: bool) -> InsecureSignature {
            self.signature(
                &self.quorum,
                &mainvote_message(INSTANCE, round, Some(value)),
            )
        }
    }

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(7)
    }

    fn deliver(node: &mut Aba<Counting>, from: usize, message: Msg) -> ProtocolStep<Aba<Counting>> {
        node.handle_message(NodeId(from as u16), message, &mut rng())
    }

    fn sent_prevotes(step: &ProtocolStep<Aba<Counting>>) -> Vec<(u32, bool)> {
        step.messages
            .iter()
            .filter_map(|m| match &m.message {
                Message::PreVote { round, value, .. } => Some((*round, *value)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn constructor_checks_the_key_sets() {
        let g = Group::new(4, 1);
        let config = g.config;
        assert!(Aba::new(config, NodeId(4), vec![], g.keys(0)).is_err());
        assert_eq!(
            Aba::new(config, NodeId(1), vec![], g.keys(0)).err(),
            Some(AbaError::SignerIndexMismatch {
                key_set: "coin",
                signer_index: 0,
                our_id: NodeId(1)
            })
        );
        let mut swapped = g.keys(0);
        swapped.coin = g.quorum[0].clone();
        assert_eq!(
            Aba::new(config, NodeId(0), vec![], swapped).err(),
            Some(AbaError::ThresholdMismatch {
                key_set: "coin",
                expected: 2,
                actual: 3
            })
        );
        let bigger = Group::new(5, 1);
        assert!(matches!(
            Aba::new(config, NodeId(0), vec![], bigger.keys(0)).err(),
            Some(AbaError::GroupSizeMismatch { .. })
        ));
    }

    #[test]
    fn second_input_is_an_error() {
        let g = Group::new(4, 1);
        let mut node = g.node(0);
        let step = node.handle_input(true, &mut rng()).unwrap();
        assert_eq!(step.messages.len(), 1);
        assert!(matches!(
            step.messages[0].message,
            Message::PreProcess { value: true, .. }
        ));
        assert_eq!(
            node.handle_input(false, &mut rng()).err(),
            Some(AbaError::AlreadyInput)
        );
    }

    #[test]
    fn a_justification_is_verified_once() {
        let g = Group::new(4, 1);
        let mut node = g.node(0);
        let _ = node.handle_input(true, &mut rng()).unwrap();
        let before = g.verifies();
        // Three round-1 pre-votes with the same (unique) justification: one verification.
        for from in 1..4 {
            let step = deliver(&mut node, from, g.round_one_prevote(from, true));
            assert!(step.faults.is_empty());
        }
        assert_eq!(g.verifies() - before, 1);
        assert_eq!(node.stored_messages(), 3);
    }

    #[test]
    fn a_node_without_input_adopts_a_justified_round_one_prevote() {
        let g = Group::new(4, 1);
        let mut node = g.node(2);
        let step = deliver(&mut node, 1, g.round_one_prevote(1, false));
        assert_eq!(sent_prevotes(&step), vec![(1, false)]);
        // Its main-vote follows n−f pre-votes as usual (its own comes back first).
        let own = step.messages[0].message.clone();
        assert!(deliver(&mut node, 2, own).messages.is_empty());
        let step = deliver(&mut node, 3, g.round_one_prevote(3, false));
        assert!(matches!(
            step.messages[0].message,
            Message::MainVote {
                round: 1,
                vote: MainVote::Value { value: false, .. },
                ..
            }
        ));
    }

    #[test]
    fn invalid_justification_convicts_once_and_silences_the_sender() {
        let g = Group::new(4, 1);
        let mut node = g.node(0);
        let forged = PreVoteJustification::Preprocess(
            g.signature(&g.coin, &preprocess_message(b"another instance", true)),
        );
        let step = deliver(&mut node, 3, g.prevote(3, 1, true, forged));
        assert_eq!(
            step.faults,
            vec![Fault::new(
                NodeId(3),
                AbaFault::InvalidJustification {
                    round: 1,
                    step: AbaStep::PreVote
                }
            )]
        );
        assert!(node.convicted().contains(&NodeId(3)));
        // Nothing from node 3 is looked at any more, valid or not.
        let before = g.verifies();
        assert!(deliver(&mut node, 3, g.round_one_prevote(3, true)).is_empty());
        assert!(deliver(&mut node, 3, g.mainvote(3, 40, true)).is_empty());
        assert_eq!(g.verifies(), before);
        assert_eq!(node.stored_messages(), 0);
    }

    #[test]
    fn messages_from_non_members_and_for_round_zero_are_evidence() {
        let g = Group::new(4, 1);
        let mut node = g.node(0);
        let step = deliver(&mut node, 9, g.round_one_prevote(1, true));
        assert_eq!(
            step.faults,
            vec![Fault::new(NodeId(9), AbaFault::NotAMember)]
        );
        let share = g.coin[1].sign_share(b"x");
        let step = deliver(&mut node, 1, Message::Coin { round: 0, share });
        assert_eq!(
            step.faults,
            vec![Fault::new(
                NodeId(1),
                AbaFault::RoundZero {
                    step: AbaStep::Coin
                }
            )]
        );
    }

    #[test]
    fn equivocation_is_evidence_and_duplicates_are_not() {
        let g = Group::new(4, 1);
        let mut node = g.node(0);
        let _ = node.handle_input(true, &mut rng()).unwrap();
        let vote = g.round_one_prevote(1, true);
        assert!(deliver(&mut node, 1, vote.clone()).faults.is_empty());
        assert!(deliver(&mut node, 1, vote).is_empty()); // a network duplicate
        let step = deliver(&mut node, 1, g.round_one_prevote(1, false));
        assert_eq!(
            step.faults,
            vec![Fault::new(
                NodeId(1),
                AbaFault::Equivocation {
                    round: 1,
                    step: AbaStep::PreVote
                }
            )]
        );
        assert_eq!(node.stored_messages(), 0); // node 1's pre-vote is forgotten too
    }

    #[test]
    fn a_later_round_justification_makes_the_node_jump() {
        let g = Group::new(4, 1);
        let mut node = g.node(0);
        let _ = node.handle_input(true, &mut rng()).unwrap();
        // A main-vote for 0 in round 9 justifies a hard pre-vote for 0 in round 10.
        let step = deliver(&mut node, 2, g.mainvote(2, 9, false));
        assert!(step.faults.is_empty());
        assert_eq!(node.round(), 10);
        assert_eq!(sent_prevotes(&step), vec![(10, false)]);
        let Message::PreVote { justification, .. } = &step.messages[0].message else {
            unreachable!()
        };
        assert!(matches!(justification, PreVoteJustification::Hard(_)));
        // Messages of earlier rounds are now dropped unverified, whatever they carry.
        let before = g.verifies();
        let garbage = PreVoteJustification::Hard(g.signature(&g.quorum, b"nothing"));
        assert!(deliver(&mut node, 1, g.prevote(1, 9, true, garbage)).is_empty());
        assert!(deliver(&mut node, 3, g.round_one_prevote(3, true)).is_empty());
        assert_eq!(g.verifies(), before);
        // A pre-vote of a later round: jump again, and it counts there.
        let hard = PreVoteJustification::Hard(
            g.signature(&g.quorum, &prevote_message(INSTANCE, 11, true)),
        );
        let step = deliver(&mut node, 3, g.prevote(3, 12, true, hard));
        assert_eq!(sent_prevotes(&step), vec![(12, true)]);
        assert_eq!(node.stored_messages(), 1);
    }

    #[test]
    fn coin_shares_are_kept_inside_the_window_and_one_later_per_sender() {
        let g = Group::new(4, 1);
        let mut node = g.node(0);
        for from in 1..4 {
            for round in 1..=ROUND_WINDOW + 5 {
                let share = g.coin[from].sign_share(b"anything");
                assert!(deliver(&mut node, from, Message::Coin { round, share }).is_empty());
            }
        }
        // Rounds 1 ..= 1 + ROUND_WINDOW, plus the latest share beyond, from three senders.
        assert_eq!(node.stored_messages(), 3 * (ROUND_WINDOW as usize + 2));
        assert!(node.stored_messages() <= stored_messages_bound(4));
    }

    /// A node far behind gets coin shares of round 20 before it jumps there; after the jump it
    /// tosses that coin with them (dropping them would leave it waiting for the coin forever).
    #[test]
    fn coin_shares_received_before_a_jump_are_used() {
        let g = Group::new(4, 1);
        let mut node = g.node(0);
        let _ = node.handle_input(true, &mut rng()).unwrap();
        let round = 20;
        let name = coin_name(INSTANCE, round);
        for from in [1, 2] {
            let share = maftia_crypto::coin::coin_share(&*g.coin[from], &name);
            assert!(deliver(&mut node, from, Message::Coin { round, share }).is_empty());
        }
        let hard = |value: bool| {
            PreVoteJustification::Hard(
                g.signature(&g.quorum, &prevote_message(INSTANCE, round - 1, value)),
            )
        };
        let step = deliver(&mut node, 1, g.prevote(1, round, true, hard(true)));
        assert_eq!(sent_prevotes(&step), vec![(round, true)]);
        let own = step.messages[0].message.clone();
        assert!(deliver(&mut node, 0, own).is_empty());
        // A pre-vote for the other value: n−f mixed pre-votes, so we abstain.
        let step = deliver(&mut node, 2, g.prevote(2, round, false, hard(false)));
        let own = step.messages[0].message.clone();
        assert!(matches!(
            own,
            Message::MainVote {
                vote: MainVote::Abstain { .. },
                ..
            }
        ));
        assert!(deliver(&mut node, 0, own).is_empty());
        let abstain = |from: usize| Message::MainVote {
            round,
            vote: MainVote::Abstain {
                zero: hard(false),
                one: hard(true),
            },
            share: g.quorum[from]
                .inner
                .sign_share(&mainvote_message(INSTANCE, round, None)),
        };
        assert!(deliver(&mut node, 1, abstain(1)).is_empty());
        // The third abstention: our coin share goes out, and the coin is tossed at once from
        // the two shares that arrived before the jump.
        let step = deliver(&mut node, 2, abstain(2));
        assert!(step.faults.is_empty());
        assert!(step
            .messages
            .iter()
            .any(|m| matches!(m.message, Message::Coin { round: 20, .. })));
        assert_eq!(sent_prevotes(&step).len(), 1);
        assert_eq!(sent_prevotes(&step)[0].0, round + 1);
        assert_eq!(node.round(), round + 1);
    }

    /// Drive four honest nodes by hand, with 2:2 split inputs and random delivery orders: no
    /// coin share of a round leaves a node before it holds n−f main-votes of that round.
    #[test]
    fn the_coin_is_released_only_after_n_minus_f_mainvotes() {
        use rand::Rng;
        let g = Group::new(4, 1);
        let mut releases = 0;
        for schedule in 0..50u64 {
            let mut order = rand_chacha::ChaCha8Rng::seed_from_u64(schedule);
            let mut nodes: Vec<_> = (0..4).map(|i| g.node(i)).collect();
            let mut queue: Vec<(usize, usize, Msg)> = Vec::new();
            let push = |queue: &mut Vec<(usize, usize, Msg)>,
                        from: usize,
                        step: ProtocolStep<Aba<Counting>>| {
                for m in step.messages {
                    for to in m.target.recipients(NodeId(from as u16), 4) {
                        queue.push((from, to.index(), m.message.clone()));
                    }
                }
            };
            for (i, node) in nodes.iter_mut().enumerate() {
                let step = node.handle_input(i < 2, &mut rng()).unwrap();
                push(&mut queue, i, step);
            }
            // Main-votes of each round each node has received.
            let mut mainvotes: BTreeMap<(usize, u32), usize> = BTreeMap::new();
            while !queue.is_empty() {
                let (from, to, message) = queue.swap_remove(order.gen_range(0..queue.len()));
                if let Message::MainVote { round, .. } = message {
                    *mainvotes.entry((to, round)).or_default() += 1;
                }
                let step = nodes[to].handle_message(NodeId(from as u16), message, &mut rng());
                assert!(step.faults.is_empty());
                for m in &step.messages {
                    if let Message::Coin { round, .. } = m.message {
                        releases += 1;
                        let seen = mainvotes.get(&(to, round)).copied().unwrap_or(0);
                        assert!(
                            seen >= 3,
                            "node {to} released coin {round} after {seen} main-votes"
                        );
                    }
                }
                push(&mut queue, to, step);
            }
            let decisions: BTreeSet<_> = nodes.iter().map(|n| n.decision()).collect();
            assert_eq!(decisions.len(), 1);
            assert!(nodes
                .iter()
                .all(|n| n.terminated() && n.stored_messages() == 0));
        }
        assert!(
            releases > 0,
            "no schedule needed a coin: the check above checked nothing"
        );
    }

    #[test]
    fn decision_proofs() {
        let g = Group::new(4, 1);
        let mut node = g.node(0);
        let _ = node.handle_input(true, &mut rng()).unwrap();
        // A proof for another round is rejected, with evidence.
        let wrong = g.decision_proof(2, true);
        let step = deliver(
            &mut node,
            1,
            Message::Decide {
                round: 3,
                value: true,
                proof: wrong,
            },
        );
        assert_eq!(
            step.faults,
            vec![Fault::new(
                NodeId(1),
                AbaFault::InvalidDecisionProof { round: 3 }
            )]
        );
        assert!(node.decision().is_none());
        // A valid proof, from any node and any round: decide, forward once, terminate.
        let proof = g.decision_proof(5, false);
        let step = deliver(
            &mut node,
            2,
            Message::Decide {
                round: 5,
                value: false,
                proof: proof.clone(),
            },
        );
        assert_eq!(step.outputs, vec![false]);
        assert_eq!(step.messages.len(), 1);
        assert_eq!(step.messages[0].target, Target::Others);
        assert!(node.terminated());
        assert_eq!(node.decision_round(), Some(5));
        assert_eq!(node.stored_messages(), 0);
        // After termination everything is dropped without work.
        let before = g.verifies();
        let again = Message::Decide {
            round: 5,
            value: false,
            proof,
        };
        assert!(deliver(&mut node, 3, again).is_empty());
        assert!(deliver(&mut node, 3, g.mainvote(3, 7, true)).is_empty());
        assert_eq!(g.verifies(), before);
        // A late input is accepted and ignored.
        let mut decided = g.node(1);
        let _ = deliver(
            &mut decided,
            0,
            Message::Decide {
                round: 5,
                value: false,
                proof: g.decision_proof(5, false),
            },
        );
        assert!(decided.handle_input(true, &mut rng()).unwrap().is_empty());
    }

    /// Pre-votes whose shares are partly invalid: the combine names the culprit, and no share is
    /// ever verified twice on the way to the main-vote.
    #[test]
    fn invalid_shares_are_found_and_each_share_checked_once() {
        let g = Group::new(7, 2); // n − f = 5
        let mut node = g.node(0);
        let _ = node.handle_input(true, &mut rng()).unwrap();
        // Our own pre-vote, so that we can main-vote: adopt via n−f pre-processing votes.
        for from in 0..5 {
            let share = g.coin[from].sign_share(&preprocess_message(INSTANCE, true));
            let step = deliver(&mut node, from, Message::PreProcess { value: true, share });
            assert!(step.faults.is_empty());
        }
        assert_eq!(node.stored_messages(), 0); // pre-processing is over
        let bad_share = |from: usize| {
            let Message::PreVote {
                round,
                value,
                justification,
                ..
            } = g.round_one_prevote(from, true)
            else {
                unreachable!()
            };
            Message::PreVote {
                round,
                value,
                justification,
                share: g.quorum[from].sign_share(b"not a pre-vote"),
            }
        };
        for from in [0, 1, 2] {
            assert!(deliver(&mut node, from, g.round_one_prevote(from, true)).is_empty());
        }
        assert!(deliver(&mut node, 3, bad_share(3)).is_empty());
        let shares_before = g.share_verifies();
        // The fifth pre-vote triggers the combine: it fails and checks all five shares.
        let step = deliver(&mut node, 4, g.round_one_prevote(4, true));
        assert_eq!(
            step.faults,
            vec![Fault::new(
                NodeId(3),
                AbaFault::InvalidShare {
                    round: 1,
                    step: AbaStep::PreVote
                }
            )]
        );
        assert!(step.messages.is_empty());
        assert_eq!(g.share_verifies() - shares_before, 5);
        // Node 5's share alone is checked, then the main-vote goes out.
        let step = deliver(&mut node, 5, g.round_one_prevote(5, true));
        assert_eq!(g.share_verifies() - shares_before, 6);
        assert!(matches!(
            step.messages[0].message,
            Message::MainVote {
                vote: MainVote::Value { value: true, .. },
                ..
            }
        ));
    }
}
