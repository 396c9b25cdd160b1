//! Consistent broadcast: Reiter's echo broadcast with a threshold-signature certificate.
//!
//! One instance carries one payload from a fixed *proposer* to the group, following the
//! consistent broadcast of Cachin–Kursawe–Petzold–Shoup, "Secure and Efficient Asynchronous
//! Broadcast Protocols" (CRYPTO 2001), Sec. 2.3, which adapts Reiter's echo broadcast (Rampart,
//! CCS 1994) to threshold signatures:
//!
//! 1. the proposer sends `Send(m)` to every node;
//! 2. every node, on the *first* `Send` from the proposer, answers the proposer alone with
//!    `Echo(share)`, a threshold-signature share on `(instance, proposer, H(m))`;
//! 3. the proposer collects one share per node; with `k = ⌈(n+f+1)/2⌉` of them it combines
//!    them robustly into the certificate `σ` and sends `Final(m, σ)` to every node;
//! 4. any node delivers `(m, σ)` on the first `Final` — from *any* sender, since the
//!    certificate is transferable — whose certificate verifies. The proposer delivers as soon
//!    as it has combined the certificate (its combine already verified it).
//!
//! # Guarantees
//! With at most `f` Byzantine nodes among `n > 3f`, and a threshold key set of threshold
//! `k = ⌈(n+f+1)/2⌉` (the [`GroupConfig::echo_quorum`]) that is unforgeable:
//! - **consistency**: no two honest nodes deliver different payloads. The `k`-sets of signers
//!   behind two certificates intersect in at least `2k − n ≥ f + 1` nodes, one of them honest,
//!   and an honest node echoes only once;
//! - **validity**: if the proposer is honest, every honest node eventually delivers its payload
//!   (`n − f ≥ k` honest nodes echo it, and the proposer's `Final` reaches everyone);
//! - **integrity**: every honest node delivers at most once, and only a payload the proposer
//!   sent (a certificate needs shares from `k − f ≥ 1` honest nodes, which sign only what the
//!   proposer sent them).
//!
//! There is **no totality**: if the proposer is faulty, some honest nodes may deliver and
//! others never do (a faulty proposer may send its `Final` to only a few). Protocols that need
//! totality use reliable broadcast ([`crate::rbc`]) or forward the transferable certificate,
//! which [`verify_certificate`] checks anywhere (MVBA does this).
//!
//! # Assumptions
//! Authenticated point-to-point links (the runtime vouches for `from`), asynchronous delivery
//! with no timing assumption, `n > 3f`, and a trusted dealer's (or DKG's) threshold key set for
//! consistent-broadcast certificates (PROTOCOLS.md: `KeySetId::Cbc`).
//!
//! # Complexity
//! `O(n)` messages (`n` sends, `n` echoes, `n` finals) and `O(n · |m|)` bits; one signature
//! share per node, one robust combine at the proposer (one signature verification on the
//! optimistic path; share-by-share checks, each share at most once, only when an invalid share
//! is present), one certificate verification per node (the proposer verifies none beyond its
//! combine). Memory per instance is `O(n)` shares plus one payload, whatever peers send.
use maftia_core::{GroupConfig, NodeId, Protocol, ProtocolStep, Step, Target};
use maftia_crypto::hash::{hash, Digest};
use maftia_crypto::threshold::{CombineError, SignerIndex, ThresholdSigner};
use rand_core::RngCore;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use thiserror::Error;

/// Hash context of a payload digest `H(m)`.
pub const PAYLOAD_CONTEXT: &str = "maftia 2026-11 cbc payload";
/// Hash context of the message every echo share signs (and the certificate certifies).
pub const ECHO_CONTEXT: &str = "maftia 2026-11 cbc echo";

/// `H(m)`: the digest of a payload that echo shares and certificates refer to.
pub fn payload_digest(payload: &[u8]) -> Digest {
    hash(PAYLOAD_CONTEXT, &[payload])
}

/// The bytes an echo share signs: `H_echo(instance, proposer, H(m))`, domain-separated so a
/// share or certificate for one instance, proposer or payload never counts for another.
pub fn echo_message(instance: &[u8], proposer: NodeId, digest: &Digest) -> Digest {
    hash(ECHO_CONTEXT, &[instance, &proposer.0.to_le_bytes(), digest])
}

/// Whether `certificate` proves that `payload` was consistently broadcast by `proposer` in the
/// instance tagged `instance`, under `signer`'s key set. Costs one signature verification.
pub fn verify_certificate<S: ThresholdSigner>(
    signer: &S,
    instance: &[u8],
    proposer: NodeId,
    payload: &[u8],
    certificate: &S::Signature,
) -> bool {
    signer.verify(
        &echo_message(instance, proposer, &payload_digest(payload)),
        certificate,
    )
}

/// What CBC nodes send each other; generic over the signer's share and signature types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "Share: Serialize, Signature: Serialize",
    deserialize = "Share: DeserializeOwned, Signature: DeserializeOwned"
))]
pub enum Message<Share, Signature> {
    /// Step 1, proposer to all: the payload.
    Send(#[serde(with = "crate::wire::bytes")] Vec<u8>),
    /// Step 2, node to proposer: a signature share on the echo message.
    Echo(Share),
    /// Step 3, anyone to all: the payload and its certificate.
    Final {
        #[serde(with = "crate::wire::bytes")]
        payload: Vec<u8>,
        certificate: Signature,
    },
}

/// The message type of a [`Cbc`] instance using signer `S`.
pub type CbcMessage<S> = Message<<S as ThresholdSigner>::Share, <S as ThresholdSigner>::Signature>;

/// What a CBC instance delivers: the payload and the transferable certificate on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CbcDelivery<Signature> {
    pub payload: Vec<u8>,
    pub certificate: Signature,
}

/// How a peer misbehaved in a CBC instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CbcFault {
    /// A message from a node outside the group.
    NotAMember,
    /// A `Send` from a node that is not this instance's proposer.
    SendFromNonProposer,
    /// A payload above the instance's `max_payload`.
    OversizedPayload { len: usize, max: usize },
    /// The proposer sent two different payloads (equivocation): digests of both.
    EquivocatingSend { first: Digest, second: Digest },
    /// An `Echo` sent to a node that is not the proposer.
    UnexpectedEcho,
    /// A second, different echo share from the same node.
    ConflictingEcho,
    /// An echo share that does not verify for the proposer's payload.
    InvalidShare,
    /// A `Final` whose certificate does not verify.
    InvalidCertificate,
}

/// Misconfiguration or local misuse of a CBC instance.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CbcError {
    #[error("{node} is not a member of a group of {n}")]
    NotAMember { node: NodeId, n: usize },
    #[error("the signer's key set has {signer_n} holders, the group has {group_n} members")]
    GroupSizeMismatch { signer_n: usize, group_n: usize },
    #[error("consistent broadcast needs a threshold of {expected} (⌈(n+f+1)/2⌉), the signer's is {actual}")]
    ThresholdMismatch { expected: usize, actual: usize },
    #[error("the signer holds share {signer_index}, but this node is {our_id}")]
    SignerIndexMismatch {
        signer_index: SignerIndex,
        our_id: NodeId,
    },
    #[error("only the proposer {proposer} can broadcast in this instance, not {our_id}")]
    NotProposer { proposer: NodeId, our_id: NodeId },
    #[error("this instance already broadcast a payload")]
    AlreadyProposed,
    #[error("payload of {len} bytes exceeds the instance's maximum of {max}")]
    PayloadTooLarge { len: usize, max: usize },
}

/// The proposer's own payload, from its input.
struct Proposal {
    payload: Vec<u8>,
    /// `echo_message(instance, proposer, H(payload))`: what the shares must sign.
    echo_message: Digest,
}

/// The proposer's echo collection (step 3).
struct ShareCollection<Share> {
    /// The first share each node sent (one per node, never replaced).
    received: BTreeMap<SignerIndex, Share>,
    /// Signers whose share was found invalid; never combined again.
    invalid: BTreeSet<SignerIndex>,
    /// Signers whose share was found valid.
    verified: BTreeSet<SignerIndex>,
    /// Set after a combine failed: from then on every new share is checked on arrival, so no
    /// share is ever verified twice.
    pessimistic: bool,
}

/// One consistent-broadcast instance at one node.
pub struct Cbc<S: ThresholdSigner> {
    config: GroupConfig,
    our_id: NodeId,
    proposer: NodeId,
    instance: Vec<u8>,
    signer: Arc<S>,
    max_payload: usize,
    /// Proposer only: the payload it broadcasts, once input.
    proposal: Option<Proposal>,
    /// Proposer only: echo shares collected so far.
    shares: ShareCollection<S::Share>,
    /// Proposer only: whether `Final` went out.
    final_sent: bool,
    /// Digest of the first `Send` we echoed (step 2 happens once).
    echoed: Option<Digest>,
    /// Whether the proposer's equivocation was already reported (one piece of evidence).
    equivocation_reported: bool,
    /// Nodes that sent an invalid certificate: their later `Final`s are not verified again.
    invalid_final_senders: BTreeSet<NodeId>,
    delivered: Option<CbcDelivery<S::Signature>>,
}

impl<S: ThresholdSigner> Cbc<S> {
    /// A CBC instance at `our_id` for payloads from `proposer`.
    ///
    /// `instance` is a caller-chosen tag unique to this broadcast (e.g. `"mvba/epoch 3/node 2"`);
    /// it is signed into every share, so shares and certificates never carry over between
    /// instances. `signer` must hold `our_id`'s share of a key set with `n` holders and
    /// threshold `⌈(n+f+1)/2⌉` (shared, since a node runs many instances over one key set).
    /// Payloads above `max_payload` bytes are refused.
    pub fn new(
        config: GroupConfig,
        our_id: NodeId,
        proposer: NodeId,
        instance: Vec<u8>,
        signer: Arc<S>,
        max_payload: usize,
    ) -> Result<Self, CbcError> {
        for node in [our_id, proposer] {
            if !config.contains(node) {
                return Err(CbcError::NotAMember {
                    node,
                    n: config.n(),
                });
            }
        }
        if signer.n() != config.n() {
            return Err(CbcError::GroupSizeMismatch {
                signer_n: signer.n(),
                group_n: config.n(),
            });
        }
        if signer.threshold() != config.echo_quorum() {
            return Err(CbcError::ThresholdMismatch {
                expected: config.echo_quorum(),
                actual: signer.threshold(),
            });
        }
        if signer.our_index() != our_id.index() {
            return Err(CbcError::SignerIndexMismatch {
                signer_index: signer.our_index(),
                our_id,
            });
        }
        Ok(Cbc {
            config,
            our_id,
            proposer,
            instance,
            signer,
            max_payload,
            proposal: None,
            shares: ShareCollection {
                received: BTreeMap::new(),
                invalid: BTreeSet::new(),
                verified: BTreeSet::new(),
                pessimistic: false,
            },
            final_sent: false,
            echoed: None,
            equivocation_reported: false,
            invalid_final_senders: BTreeSet::new(),
            delivered: None,
        })
    }

    pub fn proposer(&self) -> NodeId {
        self.proposer
    }

    pub fn instance(&self) -> &[u8] {
        &self.instance
    }

    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// What this node delivered, if anything.
    pub fn delivered(&self) -> Option<&CbcDelivery<S::Signature>> {
        self.delivered.as_ref()
    }

    /// Messages this instance holds: the echo shares collected (proposer only), its own
    /// proposal and its delivery. At most `n + 2`, whatever peers send.
    pub fn stored_messages(&self) -> usize {
        self.shares.received.len()
            + usize::from(self.proposal.is_some())
            + usize::from(self.delivered.is_some())
    }

    /// Whether `certificate` is this instance's certificate for `payload`.
    pub fn verify_certificate(&self, payload: &[u8], certificate: &S::Signature) -> bool {
        verify_certificate(
            &*self.signer,
            &self.instance,
            self.proposer,
            payload,
            certificate,
        )
    }

    fn is_proposer(&self) -> bool {
        self.our_id == self.proposer
    }

    /// [`Protocol::handle_message`] for a parent that has already hashed the payload of a
    /// `Send` or `Final`: `known_digest` must be [`payload_digest`] of that message's payload
    /// (it is ignored for an `Echo`). Saves hashing a large payload twice.
    pub(crate) fn handle_message_with_digest(
        &mut self,
        from: NodeId,
        message: CbcMessage<S>,
        known_digest: Option<Digest>,
    ) -> ProtocolStep<Self> {
        let mut step = Step::new();
        if !self.config.contains(from) {
            step.fault(from, CbcFault::NotAMember);
            return step;
        }
        match message {
            Message::Send(payload) => self.handle_send(from, payload, known_digest, &mut step),
            Message::Echo(share) => self.handle_echo(from, share, &mut step),
            Message::Final {
                payload,
                certificate,
            } => self.handle_final(from, payload, certificate, known_digest, &mut step),
        }
        step
    }

    /// Step 2: echo the first `Send` from the proposer. `known_digest`, if given, is
    /// [`payload_digest`]`(payload)` (see [`Cbc::handle_message_with_digest`]).
    fn handle_send(
        &mut self,
        from: NodeId,
        payload: Vec<u8>,
        known_digest: Option<Digest>,
        step: &mut ProtocolStep<Self>,
    ) {
        if from != self.proposer {
            step.fault(from, CbcFault::SendFromNonProposer);
            return;
        }
        if payload.len() > self.max_payload {
            step.fault(
                from,
                CbcFault::OversizedPayload {
                    len: payload.len(),
                    max: self.max_payload,
                },
            );
            return;
        }
        let digest = known_digest.unwrap_or_else(|| payload_digest(&payload));
        match self.echoed {
            Some(first) if first == digest => {} // a duplicate: already echoed
            Some(first) => {
                if !self.equivocation_reported {
                    self.equivocation_reported = true;
                    step.fault(
                        from,
                        CbcFault::EquivocatingSend {
                            first,
                            second: digest,
                        },
                    );
                }
            }
            None => {
                self.echoed = Some(digest);
                let share =
                    self.signer
                        .sign_share(&echo_message(&self.instance, self.proposer, &digest));
                step.send(Target::Node(self.proposer), Message::Echo(share));
            }
        }
    }

    /// Step 3, first half: collect one share per node.
    fn handle_echo(&mut self, from: NodeId, share: S::Share, step: &mut ProtocolStep<Self>) {
        if !self.is_proposer() {
            step.fault(from, CbcFault::UnexpectedEcho);
            return;
        }
        if self.final_sent {
            return; // the certificate exists; late shares are not needed
        }
        match self.shares.received.get(&from.index()) {
            Some(first) if *first == share => {} // a duplicate
            Some(_) => step.fault(from, CbcFault::ConflictingEcho),
            None => {
                self.shares.received.insert(from.index(), share);
                self.try_certify(step);
            }
        }
    }

    /// Step 3, second half: combine `k` shares robustly into the certificate, then send
    /// `Final` and deliver.
    fn try_certify(&mut self, step: &mut ProtocolStep<Self>) {
        let Some(proposal) = &self.proposal else {
            return; // shares that arrived before our input wait for it
        };
        if self.final_sent {
            return;
        }
        let k = self.signer.threshold();
        let shares = &mut self.shares;
        let candidates: BTreeMap<SignerIndex, S::Share> = if shares.pessimistic {
            // An invalid share was seen: check each new share once, on arrival.
            let unchecked: Vec<SignerIndex> = shares
                .received
                .keys()
                .filter(|i| !shares.invalid.contains(i) && !shares.verified.contains(i))
                .copied()
                .collect();
            for index in unchecked {
                let valid = shares.received.get(&index).is_some_and(|share| {
                    self.signer
                        .verify_share(index, &proposal.echo_message, share)
                });
                if valid {
                    shares.verified.insert(index);
                } else {
                    shares.invalid.insert(index);
                    step.fault(node_of(index), CbcFault::InvalidShare);
                }
            }
            if shares.verified.len() < k {
                return;
            }
            shares
                .received
                .iter()
                .filter(|(i, _)| shares.verified.contains(i))
                .map(|(i, s)| (*i, s.clone()))
                .collect()
        } else {
            let candidates: BTreeMap<_, _> = shares
                .received
                .iter()
                .filter(|(i, _)| !shares.invalid.contains(i))
                .map(|(i, s)| (*i, s.clone()))
                .collect();
            if candidates.len() < k {
                return;
            }
            candidates
        };
        match self.signer.combine(&proposal.echo_message, &candidates) {
            Ok(combined) => {
                for index in combined.invalid_signers {
                    if shares.invalid.insert(index) {
                        step.fault(node_of(index), CbcFault::InvalidShare);
                    }
                }
                let payload = proposal.payload.clone();
                self.final_sent = true;
                step.send(
                    Target::All,
                    Message::Final {
                        payload: payload.clone(),
                        certificate: combined.signature.clone(),
                    },
                );
                // The proposer delivers at once: its combine already verified the certificate,
                // so its own copy of `Final` is not verified again.
                self.delivered = Some(CbcDelivery {
                    payload: payload.clone(),
                    certificate: combined.signature.clone(),
                });
                step.output(CbcDelivery {
                    payload,
                    certificate: combined.signature,
                });
            }
            Err(CombineError::NotEnoughValidShares {
                valid,
                invalid_signers,
                ..
            }) => {
                for &index in &invalid_signers {
                    if shares.invalid.insert(index) {
                        step.fault(node_of(index), CbcFault::InvalidShare);
                    }
                }
                // If the combiner judged every candidate, the ones not reported are valid.
                if valid + invalid_signers.len() == candidates.len() {
                    let valid_signers: Vec<SignerIndex> = candidates
                        .keys()
                        .filter(|i| !shares.invalid.contains(i))
                        .copied()
                        .collect();
                    shares.verified.extend(valid_signers);
                }
                shares.pessimistic = true;
            }
            Err(error) => {
                // Indices come from our own map (distinct, checked members), so this means a
                // broken signer; keep the shares and retry share by share on the next arrival.
                tracing::error!(%error, "cbc: combining echo shares failed");
                shares.pessimistic = true;
            }
        }
    }

    /// Step 4: deliver on the first valid `Final`, from any sender. `known_digest`, if given,
    /// is [`payload_digest`]`(payload)`.
    fn handle_final(
        &mut self,
        from: NodeId,
        payload: Vec<u8>,
        certificate: S::Signature,
        known_digest: Option<Digest>,
        step: &mut ProtocolStep<Self>,
    ) {
        if self.delivered.is_some() {
            return; // consistency makes any later valid certificate redundant: skip the cost
        }
        if payload.len() > self.max_payload {
            step.fault(
                from,
                CbcFault::OversizedPayload {
                    len: payload.len(),
                    max: self.max_payload,
                },
            );
            return;
        }
        if self.invalid_final_senders.contains(&from) {
            return; // already proven faulty: one verification per faulty sender at most
        }
        let digest = known_digest.unwrap_or_else(|| payload_digest(&payload));
        let echo = echo_message(&self.instance, self.proposer, &digest);
        if self.signer.verify(&echo, &certificate) {
            self.delivered = Some(CbcDelivery {
                payload: payload.clone(),
                certificate: certificate.clone(),
            });
            step.output(CbcDelivery {
                payload,
                certificate,
            });
        } else {
            self.invalid_final_senders.insert(from);
            step.fault(from, CbcFault::InvalidCertificate);
        }
    }
}

/// The node holding signer index `index` (signer indices are node indices; the caller only
/// passes indices of group members, and groups are capped well below `u16::MAX`).
fn node_of(index: SignerIndex) -> NodeId {
    NodeId(u16::try_from(index).unwrap_or(u16::MAX))
}

impl<S: ThresholdSigner> Protocol for Cbc<S> {
    type Message = CbcMessage<S>;
    type Input = Vec<u8>;
    type Output = CbcDelivery<S::Signature>;
    type FaultKind = CbcFault;
    type Error = CbcError;

    fn our_id(&self) -> NodeId {
        self.our_id
    }

    /// Step 1: the proposer broadcasts its payload (once).
    fn handle_input(
        &mut self,
        payload: Vec<u8>,
        _rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, CbcError> {
        if !self.is_proposer() {
            return Err(CbcError::NotProposer {
                proposer: self.proposer,
                our_id: self.our_id,
            });
        }
        if self.proposal.is_some() {
            return Err(CbcError::AlreadyProposed);
        }
        if payload.len() > self.max_payload {
            return Err(CbcError::PayloadTooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        let echo_message = echo_message(&self.instance, self.proposer, &payload_digest(&payload));
        let mut step = Step::new();
        step.send(Target::All, Message::Send(payload.clone()));
        self.proposal = Some(Proposal {
            payload,
            echo_message,
        });
        // Shares that arrived before the input (only faulty nodes send those) are judged now.
        self.try_certify(&mut step);
        Ok(step)
    }

    fn handle_message(
        &mut self,
        from: NodeId,
        message: CbcMessage<S>,
        _rng: &mut dyn RngCore,
    ) -> ProtocolStep<Self> {
        self.handle_message_with_digest(from, message, None)
    }

    /// Delivered and, at the proposer, `Final` sent. A node that has delivered has seen a
    /// certificate, so an honest proposer no longer needs its echo.
    fn terminated(&self) -> bool {
        self.delivered.is_some() && (!self.is_proposer() || self.final_sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maftia_core::TargetedMessage;
    use rand::rngs::mock::StepRng;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A transparent (forgeable) threshold signer for unit tests: a share names its signer and
    /// carries the message digest; the signature is the message digest. It counts
    /// verifications so tests can check the "verify once" rules.
    struct ToySigner {
        n: usize,
        k: usize,
        index: usize,
        share_checks: Arc<AtomicUsize>,
        signature_checks: Arc<AtomicUsize>,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct ToyShare {
        signer: usize,
        digest: Digest,
    }

    fn toy_digest(message: &[u8]) -> Digest {
        hash("maftia 2026-11 cbc unit-test signer", &[message])
    }

    impl ThresholdSigner for ToySigner {
        type Share = ToyShare;
        type Signature = Digest;
        fn n(&self) -> usize {
            self.n
        }
        fn threshold(&self) -> usize {
            self.k
        }
        fn our_index(&self) -> SignerIndex {
            self.index
        }
        fn sign_share(&self, message: &[u8]) -> ToyShare {
            ToyShare {
                signer: self.index,
                digest: toy_digest(message),
            }
        }
        fn verify_share(&self, signer: SignerIndex, message: &[u8], share: &ToyShare) -> bool {
            self.share_checks.fetch_add(1, Ordering::Relaxed);
            share.signer == signer && share.digest == toy_digest(message)
        }
        fn verify(&self, message: &[u8], signature: &Digest) -> bool {
            self.signature_checks.fetch_add(1, Ordering::Relaxed);
            *signature == toy_digest(message)
        }
        fn combine_unchecked(
            &self,
            shares: &[(SignerIndex, &ToyShare)],
        ) -> Result<Digest, CombineError> {
            if shares.len() < self.k {
                return Err(CombineError::NotEnoughValidShares {
                    valid: shares.len(),
                    needed: self.k,
                    invalid_signers: Vec::new(),
                });
            }
            let first = shares[0].1.digest;
            let agree = shares
                .iter()
                .all(|(i, s)| s.digest == first && s.signer == *i);
            Ok(if agree { first } else { [0; 32] })
        }
        fn signature_bytes(&self, signature: &Digest) -> Vec<u8> {
            signature.to_vec()
        }
    }

    type ToyCbc = Cbc<ToySigner>;
    type ToyMessage = CbcMessage<ToySigner>;

    const INSTANCE: &[u8] = b"unit/instance 1";
    const MAX: usize = 64;

    struct Group {
        nodes: Vec<ToyCbc>,
        share_checks: Arc<AtomicUsize>,
        signature_checks: Arc<AtomicUsize>,
    }

    fn group(n: usize, f: usize, proposer: u16) -> Group {
        let config = GroupConfig::asynchronous(n, f).unwrap();
        let share_checks = Arc::new(AtomicUsize::new(0));
        let signature_checks = Arc::new(AtomicUsize::new(0));
        let nodes = NodeId::all(n)
            .map(|id| {
                let signer = ToySigner {
                    n,
                    k: config.echo_quorum(),
                    index: id.index(),
                    share_checks: share_checks.clone(),
                    signature_checks: signature_checks.clone(),
                };
                ToyCbc::new(
                    config,
                    id,
                    NodeId(proposer),
                    INSTANCE.to_vec(),
                    Arc::new(signer),
                    MAX,
                )
                .unwrap()
            })
            .collect();
        Group {
            nodes,
            share_checks,
            signature_checks,
        }
    }

    fn rng() -> StepRng {
        StepRng::new(0, 1)
    }

    /// Deliver messages FIFO until quiet; returns outputs and faults per node.
    #[allow(clippy::type_complexity)]
    fn run(
        nodes: &mut [ToyCbc],
        initial: Vec<(NodeId, TargetedMessage<ToyMessage>)>,
        drop_to: &dyn Fn(NodeId, NodeId, &ToyMessage) -> bool,
    ) -> (Vec<Vec<CbcDelivery<Digest>>>, Vec<Fault<CbcFault>>) {
        let n = nodes.len();
        let mut queue: VecDeque<(NodeId, NodeId, ToyMessage)> = VecDeque::new();
        let push = |queue: &mut VecDeque<_>, from: NodeId, tm: TargetedMessage<ToyMessage>| {
            for to in tm.target.recipients(from, n) {
                if !drop_to(from, to, &tm.message) {
                    queue.push_back((from, to, tm.message.clone()));
                }
            }
        };
        for (from, tm) in initial {
            push(&mut queue, from, tm);
        }
        let mut outputs = vec![Vec::new(); n];
        let mut faults = Vec::new();
        while let Some((from, to, message)) = queue.pop_front() {
            let step = nodes[to.index()].handle_message(from, message, &mut rng());
            outputs[to.index()].extend(step.outputs);
            faults.extend(step.faults);
            for tm in step.messages {
                push(&mut queue, to, tm);
            }
        }
        (outputs, faults)
    }

    use maftia_core::Fault;

    fn propose(node: &mut ToyCbc, payload: &[u8]) -> Vec<(NodeId, TargetedMessage<ToyMessage>)> {
        let id = node.our_id();
        let step = node.handle_input(payload.to_vec(), &mut rng()).unwrap();
        assert!(step.outputs.is_empty() && step.faults.is_empty());
        step.messages.into_iter().map(|m| (id, m)).collect()
    }

    #[test]
    fn honest_run_delivers_everywhere_without_faults() {
        for (n, f) in [(1, 0), (4, 1), (7, 2), (10, 3)] {
            let mut g = group(n, f, 1 % n as u16);
            let proposer = 1 % n;
            let initial = propose(&mut g.nodes[proposer], b"hello");
            let (outputs, faults) = run(&mut g.nodes, initial, &|_, _, _| false);
            assert!(faults.is_empty(), "n={n}: {faults:?}");
            // Optimistic combine: one verification at the proposer, none of any share, and one
            // certificate check per non-proposer (the proposer trusts its own combine).
            assert_eq!(g.share_checks.load(Ordering::Relaxed), 0, "n={n}");
            assert_eq!(
                g.signature_checks.load(Ordering::Relaxed),
                1 + (n - 1),
                "n={n}"
            );
            for (i, out) in outputs.iter().enumerate() {
                assert_eq!(out.len(), 1, "n={n} node {i}");
                assert_eq!(out[0].payload, b"hello");
                assert!(verify_certificate(
                    &*g.nodes[0].signer,
                    INSTANCE,
                    NodeId(proposer as u16),
                    b"hello",
                    &out[0].certificate
                ));
                assert!(g.nodes[i].terminated());
                assert_eq!(g.nodes[i].delivered(), Some(&out[0]));
            }
        }
    }

    #[test]
    fn constructor_checks_the_key_set() {
        let config = GroupConfig::asynchronous(4, 1).unwrap();
        let signer = |n, k, index| ToySigner {
            n,
            k,
            index,
            share_checks: Arc::default(),
            signature_checks: Arc::default(),
        };
        let new = |id: u16, proposer: u16, s: ToySigner| {
            ToyCbc::new(
                config,
                NodeId(id),
                NodeId(proposer),
                vec![],
                Arc::new(s),
                MAX,
            )
            .err()
        };
        assert_eq!(new(0, 0, signer(4, 3, 0)), None);
        assert_eq!(
            new(0, 0, signer(4, 2, 0)),
            Some(CbcError::ThresholdMismatch {
                expected: 3,
                actual: 2
            })
        );
        assert_eq!(
            new(0, 0, signer(5, 3, 0)),
            Some(CbcError::GroupSizeMismatch {
                signer_n: 5,
                group_n: 4
            })
        );
        assert_eq!(
            new(0, 0, signer(4, 3, 1)),
            Some(CbcError::SignerIndexMismatch {
                signer_index: 1,
                our_id: NodeId(0)
            })
        );
        assert_eq!(
            new(4, 0, signer(4, 3, 4)),
            Some(CbcError::NotAMember {
                node: NodeId(4),
                n: 4
            })
        );
        assert_eq!(
            new(0, 9, signer(4, 3, 0)),
            Some(CbcError::NotAMember {
                node: NodeId(9),
                n: 4
            })
        );
    }

    #[test]
    fn input_misuse_is_an_error() {
        let mut g = group(4, 1, 0);
        assert_eq!(
            g.nodes[1].handle_input(b"x".to_vec(), &mut rng()).err(),
            Some(CbcError::NotProposer {
                proposer: NodeId(0),
                our_id: NodeId(1)
            })
        );
        assert_eq!(
            g.nodes[0].handle_input(vec![0; MAX + 1], &mut rng()).err(),
            Some(CbcError::PayloadTooLarge {
                len: MAX + 1,
                max: MAX
            })
        );
        assert!(g.nodes[0].handle_input(vec![0; MAX], &mut rng()).is_ok());
        assert_eq!(
            g.nodes[0].handle_input(b"again".to_vec(), &mut rng()).err(),
            Some(CbcError::AlreadyProposed)
        );
    }

    fn single(node: &mut ToyCbc, from: u16, message: ToyMessage) -> ProtocolStep<ToyCbc> {
        node.handle_message(NodeId(from), message, &mut rng())
    }

    #[test]
    fn send_rules_echo_once_and_report_equivocation() {
        let mut g = group(4, 1, 0);
        let node = &mut g.nodes[2];
        // From a non-member, from a non-proposer, oversized: dropped with evidence.
        let step = single(node, 7, Message::Send(b"a".to_vec()));
        assert_eq!(
            step.faults,
            vec![Fault::new(NodeId(7), CbcFault::NotAMember)]
        );
        let step = single(node, 1, Message::Send(b"a".to_vec()));
        assert_eq!(
            step.faults,
            vec![Fault::new(NodeId(1), CbcFault::SendFromNonProposer)]
        );
        assert!(step.messages.is_empty());
        let step = single(node, 0, Message::Send(vec![0; MAX + 1]));
        assert_eq!(
            step.faults,
            vec![Fault::new(
                NodeId(0),
                CbcFault::OversizedPayload {
                    len: MAX + 1,
                    max: MAX
                }
            )]
        );
        assert!(step.messages.is_empty());
        // The first valid Send is echoed to the proposer only.
        let step = single(node, 0, Message::Send(b"a".to_vec()));
        assert!(step.faults.is_empty());
        assert_eq!(step.messages.len(), 1);
        assert_eq!(step.messages[0].target, Target::Node(NodeId(0)));
        let expected_share = ToyShare {
            signer: 2,
            digest: toy_digest(&echo_message(INSTANCE, NodeId(0), &payload_digest(b"a"))),
        };
        assert_eq!(step.messages[0].message, Message::Echo(expected_share));
        // A duplicate is ignored; a conflicting Send is evidence, reported once, never echoed.
        assert!(single(node, 0, Message::Send(b"a".to_vec())).is_empty());
        let step = single(node, 0, Message::Send(b"b".to_vec()));
        assert!(step.messages.is_empty());
        assert_eq!(
            step.faults,
            vec![Fault::new(
                NodeId(0),
                CbcFault::EquivocatingSend {
                    first: payload_digest(b"a"),
                    second: payload_digest(b"b")
                }
            )]
        );
        assert!(single(node, 0, Message::Send(b"c".to_vec())).is_empty());
        assert!(!node.terminated());
    }

    fn share_for(signer: usize, payload: &[u8]) -> ToyShare {
        ToyShare {
            signer,
            digest: toy_digest(&echo_message(INSTANCE, NodeId(0), &payload_digest(payload))),
        }
    }

    #[test]
    fn echo_at_non_proposer_is_evidence() {
        let mut g = group(4, 1, 0);
        let step = single(&mut g.nodes[1], 2, Message::Echo(share_for(2, b"a")));
        assert_eq!(
            step.faults,
            vec![Fault::new(NodeId(2), CbcFault::UnexpectedEcho)]
        );
    }

    #[test]
    fn invalid_shares_are_reported_and_each_share_verified_once() {
        let mut g = group(7, 2, 0); // k = 5
        let proposer = &mut g.nodes[0];
        let step = proposer.handle_input(b"p".to_vec(), &mut rng()).unwrap();
        assert_eq!(step.messages.len(), 1);
        // Shares of 0, 1, 2 valid; 3 signs another payload, 4 claims another signer.
        for i in 0..3 {
            assert!(single(proposer, i as u16, Message::Echo(share_for(i, b"p"))).is_empty());
        }
        assert!(single(proposer, 3, Message::Echo(share_for(3, b"other"))).is_empty());
        // The fifth share triggers the optimistic combine, which fails and finds 3 and 4 bad.
        let step = single(proposer, 4, Message::Echo(share_for(1, b"p")));
        let mut culprits: Vec<_> = step
            .faults
            .iter()
            .map(|f| (f.culprit, f.kind.clone()))
            .collect();
        culprits.sort_by_key(|(c, _)| *c);
        assert_eq!(
            culprits,
            vec![
                (NodeId(3), CbcFault::InvalidShare),
                (NodeId(4), CbcFault::InvalidShare)
            ]
        );
        assert!(step.messages.is_empty() && step.outputs.is_empty());
        assert_eq!(g.share_checks.load(Ordering::Relaxed), 5);
        // Node 4 cannot replace its share; the attempt is evidence too.
        let step = single(&mut g.nodes[0], 4, Message::Echo(share_for(4, b"p")));
        assert_eq!(
            step.faults,
            vec![Fault::new(NodeId(4), CbcFault::ConflictingEcho)]
        );
        // Node 5's valid share is checked alone (4 valid now), node 6's completes the certificate.
        assert!(single(&mut g.nodes[0], 5, Message::Echo(share_for(5, b"p"))).is_empty());
        assert_eq!(g.share_checks.load(Ordering::Relaxed), 6);
        let checks_before = g.signature_checks.load(Ordering::Relaxed);
        let step = single(&mut g.nodes[0], 6, Message::Echo(share_for(6, b"p")));
        assert_eq!(g.share_checks.load(Ordering::Relaxed), 7);
        assert!(step.faults.is_empty());
        assert_eq!(step.outputs.len(), 1);
        assert_eq!(step.outputs[0].payload, b"p");
        assert_eq!(
            g.signature_checks.load(Ordering::Relaxed),
            checks_before + 1
        ); // the final combine's check
        assert_eq!(step.messages.len(), 1);
        assert_eq!(step.messages[0].target, Target::All);
        assert_eq!(
            step.messages[0].message,
            Message::Final {
                payload: b"p".to_vec(),
                certificate: step.outputs[0].certificate
            }
        );
        assert!(g.nodes[0].terminated());
        // Late shares, and the proposer's own Final, change nothing.
        let final_message = step.messages[0].message.clone();
        assert!(single(&mut g.nodes[0], 0, final_message).is_empty());
        assert!(single(&mut g.nodes[0], 3, Message::Echo(share_for(3, b"p"))).is_empty());
    }

    #[test]
    fn duplicate_echo_is_ignored() {
        let mut g = group(4, 1, 0);
        let step = g.nodes[0].handle_input(b"p".to_vec(), &mut rng()).unwrap();
        assert_eq!(step.messages.len(), 1);
        assert!(single(&mut g.nodes[0], 1, Message::Echo(share_for(1, b"p"))).is_empty());
        assert!(single(&mut g.nodes[0], 1, Message::Echo(share_for(1, b"p"))).is_empty());
        // Two distinct shares are not enough for k = 3.
        assert!(single(&mut g.nodes[0], 2, Message::Echo(share_for(2, b"p"))).is_empty());
        let step = single(&mut g.nodes[0], 0, Message::Echo(share_for(0, b"p")));
        assert_eq!(step.outputs.len(), 1);
    }

    #[test]
    fn shares_before_input_wait_for_it() {
        let mut g = group(4, 1, 0);
        for i in 1..4 {
            assert!(
                single(&mut g.nodes[0], i as u16, Message::Echo(share_for(i, b"p"))).is_empty()
            );
        }
        let step = g.nodes[0].handle_input(b"p".to_vec(), &mut rng()).unwrap();
        assert_eq!(step.outputs.len(), 1);
        assert_eq!(step.messages.len(), 2); // Send and Final
        assert!(g.nodes[0].terminated());
    }

    #[test]
    fn final_rules() {
        let mut g = group(4, 1, 0);
        let certificate = toy_digest(&echo_message(INSTANCE, NodeId(0), &payload_digest(b"m")));
        let node = &mut g.nodes[2];
        // Invalid certificate: evidence, and that sender's Finals are not verified again.
        let step = single(
            node,
            1,
            Message::Final {
                payload: b"m".to_vec(),
                certificate: [7; 32],
            },
        );
        assert_eq!(
            step.faults,
            vec![Fault::new(NodeId(1), CbcFault::InvalidCertificate)]
        );
        let checks = g.signature_checks.load(Ordering::Relaxed);
        assert!(single(
            node,
            1,
            Message::Final {
                payload: b"m".to_vec(),
                certificate
            }
        )
        .is_empty());
        assert_eq!(g.signature_checks.load(Ordering::Relaxed), checks);
        // Oversized: evidence, no verification.
        let step = single(
            node,
            3,
            Message::Final {
                payload: vec![0; MAX + 1],
                certificate,
            },
        );
        assert_eq!(step.faults.len(), 1);
        assert_eq!(g.signature_checks.load(Ordering::Relaxed), checks);
        // A certificate for another payload does not verify.
        let step = single(
            node,
            3,
            Message::Final {
                payload: b"x".to_vec(),
                certificate,
            },
        );
        assert_eq!(
            step.faults,
            vec![Fault::new(NodeId(3), CbcFault::InvalidCertificate)]
        );
        // A valid Final from any node (not the proposer) delivers: certificates are transferable.
        let step = single(
            node,
            0,
            Message::Final {
                payload: b"m".to_vec(),
                certificate,
            },
        );
        assert!(step.faults.is_empty());
        assert_eq!(
            step.outputs,
            vec![CbcDelivery {
                payload: b"m".to_vec(),
                certificate
            }]
        );
        assert!(node.terminated());
        // After delivery nothing is verified or delivered again.
        let checks = g.signature_checks.load(Ordering::Relaxed);
        assert!(single(
            node,
            0,
            Message::Final {
                payload: b"m".to_vec(),
                certificate
            }
        )
        .is_empty());
        assert!(single(
            node,
            0,
            Message::Final {
                payload: b"q".to_vec(),
                certificate
            }
        )
        .is_empty());
        assert_eq!(g.signature_checks.load(Ordering::Relaxed), checks);
    }

    #[test]
    fn relayed_final_delivers_at_a_node_the_proposer_skipped() {
        let mut g = group(4, 1, 0);
        let initial = propose(&mut g.nodes[0], b"relay");
        // The proposer's Final never reaches node 3 (a faulty proposer may do this).
        let (outputs, faults) = run(&mut g.nodes, initial, &|from, to, m| {
            from == NodeId(0) && to == NodeId(3) && matches!(m, Message::Final { .. })
        });
        assert!(faults.is_empty());
        assert!(outputs[3].is_empty(), "no totality without a relay");
        let relayed = Message::Final {
            payload: outputs[1][0].payload.clone(),
            certificate: outputs[1][0].certificate,
        };
        let step = single(&mut g.nodes[3], 1, relayed);
        assert_eq!(step.outputs, outputs[1]);
    }

    #[test]
    fn certificates_bind_instance_proposer_and_payload() {
        let g = group(4, 1, 0);
        let signer = &*g.nodes[0].signer;
        let certificate = toy_digest(&echo_message(INSTANCE, NodeId(0), &payload_digest(b"m")));
        assert!(verify_certificate(
            signer,
            INSTANCE,
            NodeId(0),
            b"m",
            &certificate
        ));
        assert!(g.nodes[1].verify_certificate(b"m", &certificate));
        assert!(!verify_certificate(
            signer,
            b"unit/instance 2",
            NodeId(0),
            b"m",
            &certificate
        ));
        assert!(!verify_certificate(
            signer,
            INSTANCE,
            NodeId(1),
            b"m",
            &certificate
        ));
        assert!(!verify_certificate(
            signer,
            INSTANCE,
            NodeId(0),
            b"m2",
            &certificate
        ));
        // Length-prefixed hashing: moving bytes between instance and payload changes the message.
        assert_ne!(
            echo_message(b"ab", NodeId(0), &payload_digest(b"c")),
            echo_message(b"a", NodeId(0), &payload_digest(b"bc"))
        );
    }

    #[test]
    fn message_codec_roundtrip() {
        let messages: Vec<ToyMessage> = vec![
            Message::Send(b"abc".to_vec()),
            Message::Echo(share_for(1, b"abc")),
            Message::Final {
                payload: vec![1, 2],
                certificate: [9; 32],
            },
        ];
        for m in messages {
            let frame = maftia_core::codec::encode(&m).unwrap();
            assert_eq!(maftia_core::codec::decode::<ToyMessage>(&frame).unwrap(), m);
        }
    }
}
