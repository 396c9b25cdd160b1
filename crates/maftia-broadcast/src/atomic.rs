//! Atomic broadcast with the ordering mode chosen by configuration.
//!
//! DESIGN.md asks for one application interface whatever the ordering protocol underneath:
//! [`AtomicBroadcast`] is a [`Protocol`] with `Input = Vec<u8>` (a request) and `Output =`
//! [`AbcDelivery`] (one per round or epoch, numbered `0, 1, 2, …` without gaps), running either
//! - [`OrderingMode::Ckps01`]: rounds of signed batches ordered by MVBA ([`crate::abc`],
//!   Cachin–Kursawe–Petzold–Shoup 2001, Sec. 4) — low latency at low load; or
//! - [`OrderingMode::HighThroughput`]: certified broadcast lanes whose heights MVBA epochs order
//!   ([`crate::htabc`], Dumbo-NG, Gao et al. CCS 2022) — throughput bounded by bandwidth.
//!
//! Guarantees, assumptions, complexity and memory bounds are those of the chosen mode (see
//! each module). All nodes of a group must run the same mode: a message of the other mode is
//! reported as [`AtomicFault::WrongMode`] and dropped. State transfer
//! ([`AtomicBroadcast::resume`], [`AtomicBroadcast::skip_to`]) exists in the CKPS01 mode only.
use crate::abc::{self, Abc, AbcDelivery, AbcError, AbcFault, AbcParams, ResumePoint};
use crate::htabc::{self, HtAbc, HtAbcError, HtAbcFault, HtParams};
use crate::keys::ThresholdKeys;
use maftia_core::{GroupConfig, NodeId, Protocol, ProtocolStep, Step};
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_crypto::threshold::ThresholdSigner;
use rand_core::RngCore;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::sync::Arc;
use thiserror::Error;

/// Which ordering protocol a group runs (a configuration choice; every member must agree).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderingMode {
    /// Rounds of signed batches ordered by MVBA ([`crate::abc`]).
    #[default]
    Ckps01,
    /// Certified broadcast lanes ordered by MVBA epochs ([`crate::htabc`]).
    HighThroughput(HtParams),
}

/// What nodes send each other: the message of the mode they run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "Share: Serialize, Signature: Serialize",
    deserialize = "Share: DeserializeOwned, Signature: DeserializeOwned"
))]
pub enum AtomicMessage<Share, Signature> {
    Ckps01(abc::Message<Share, Signature>),
    HighThroughput(htabc::Message<Share, Signature>),
}

/// The message type of an [`AtomicBroadcast`] using signer `S`.
pub type AtomicBroadcastMessage<S> =
    AtomicMessage<<S as ThresholdSigner>::Share, <S as ThresholdSigner>::Signature>;

/// How a peer misbehaved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AtomicFault {
    /// A message of the mode this node does not run.
    WrongMode,
    Ckps01(AbcFault),
    HighThroughput(HtAbcFault),
}

/// Misconfiguration or local misuse.
#[derive(Debug, Error)]
pub enum AtomicError {
    #[error("abc: {0}")]
    Ckps01(#[from] AbcError),
    #[error("htabc: {0}")]
    HighThroughput(#[from] HtAbcError),
}

/// An atomic broadcast instance in either mode.
pub enum AtomicBroadcast<S: ThresholdSigner> {
    Ckps01(Abc<S>),
    HighThroughput(HtAbc<S>),
}

impl<S: ThresholdSigner + Send + Sync + 'static> AtomicBroadcast<S> {
    /// An instance in `mode`. The arguments are those of [`Abc::new`]; the high-throughput mode
    /// does not use the identity keys (its lanes are certified with threshold signatures).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: GroupConfig,
        our_id: NodeId,
        instance: Vec<u8>,
        keys: ThresholdKeys<S>,
        identity: IdentityKey,
        identities: Arc<Vec<IdentityPublicKey>>,
        params: AbcParams,
        mode: OrderingMode,
    ) -> Result<Self, AtomicError> {
        Ok(match mode {
            OrderingMode::Ckps01 => AtomicBroadcast::Ckps01(Abc::new(
                config, our_id, instance, keys, identity, identities, params,
            )?),
            OrderingMode::HighThroughput(ht) => AtomicBroadcast::HighThroughput(HtAbc::new(
                config, our_id, instance, keys, params, ht,
            )?),
        })
    }

    /// Like [`AtomicBroadcast::new`], but ordering starts at `resume.next_round` with its dedup
    /// window (state transfer, [`Abc::resume`]). CKPS01 mode only: the high-throughput mode
    /// refuses with [`HtAbcError::StateTransferUnsupported`].
    #[allow(clippy::too_many_arguments)]
    pub fn resume(
        config: GroupConfig,
        our_id: NodeId,
        instance: Vec<u8>,
        keys: ThresholdKeys<S>,
        identity: IdentityKey,
        identities: Arc<Vec<IdentityPublicKey>>,
        params: AbcParams,
        mode: OrderingMode,
        resume: &ResumePoint,
    ) -> Result<Self, AtomicError> {
        match mode {
            OrderingMode::Ckps01 => Ok(AtomicBroadcast::Ckps01(Abc::resume(
                config, our_id, instance, keys, identity, identities, params, resume,
            )?)),
            OrderingMode::HighThroughput(_) => Err(HtAbcError::StateTransferUnsupported.into()),
        }
    }

    /// Jump a lagging instance forward after state transfer ([`Abc::skip_to`]). CKPS01 mode
    /// only: the high-throughput mode refuses with [`HtAbcError::StateTransferUnsupported`].
    pub fn skip_to(
        &mut self,
        resume: &ResumePoint,
        rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, AtomicError> {
        match self {
            AtomicBroadcast::Ckps01(node) => Ok(wrap_ckps01::<S>(node.skip_to(resume, rng)?)),
            AtomicBroadcast::HighThroughput(_) => Err(HtAbcError::StateTransferUnsupported.into()),
        }
    }

    /// The mode this instance runs.
    pub fn mode(&self) -> OrderingMode {
        match self {
            AtomicBroadcast::Ckps01(_) => OrderingMode::Ckps01,
            AtomicBroadcast::HighThroughput(node) => {
                OrderingMode::HighThroughput(*node.ht_params())
            }
        }
    }

    /// The round (CKPS01) or epoch (high throughput) being ordered; every earlier one is
    /// delivered.
    pub fn round(&self) -> u64 {
        match self {
            AtomicBroadcast::Ckps01(node) => node.round(),
            AtomicBroadcast::HighThroughput(node) => node.round(),
        }
    }

    /// Requests submitted here and not delivered yet.
    pub fn pending(&self) -> usize {
        match self {
            AtomicBroadcast::Ckps01(node) => node.pending(),
            AtomicBroadcast::HighThroughput(node) => node.pending(),
        }
    }

    pub fn params(&self) -> &AbcParams {
        match self {
            AtomicBroadcast::Ckps01(node) => node.params(),
            AtomicBroadcast::HighThroughput(node) => node.params(),
        }
    }

    /// The mode's stored-message count ([`Abc::stored_messages`], [`HtAbc::stored_messages`]).
    pub fn stored_messages(&self) -> usize {
        match self {
            AtomicBroadcast::Ckps01(node) => node.stored_messages(),
            AtomicBroadcast::HighThroughput(node) => node.stored_messages(),
        }
    }

    /// The mode's bound on [`AtomicBroadcast::stored_messages`], given the MVBA bound.
    pub fn stored_messages_bound(&self, mvba_bound: usize) -> usize {
        match self {
            AtomicBroadcast::Ckps01(node) => node.stored_messages_bound(mvba_bound),
            AtomicBroadcast::HighThroughput(node) => node.stored_messages_bound(mvba_bound),
        }
    }
}

fn wrap_ckps01<S: ThresholdSigner + Send + Sync + 'static>(
    step: ProtocolStep<Abc<S>>,
) -> ProtocolStep<AtomicBroadcast<S>> {
    let mut out = Step::new();
    let outputs = out.extend_with(step, AtomicMessage::Ckps01, AtomicFault::Ckps01);
    out.outputs = outputs;
    out
}

fn wrap_ht<S: ThresholdSigner + Send + Sync + 'static>(
    step: ProtocolStep<HtAbc<S>>,
) -> ProtocolStep<AtomicBroadcast<S>> {
    let mut out = Step::new();
    let outputs = out.extend_with(
        step,
        AtomicMessage::HighThroughput,
        AtomicFault::HighThroughput,
    );
    out.outputs = outputs;
    out
}

impl<S: ThresholdSigner + Send + Sync + 'static> Protocol for AtomicBroadcast<S> {
    type Message = AtomicBroadcastMessage<S>;
    type Input = Vec<u8>;
    type Output = AbcDelivery;
    type FaultKind = AtomicFault;
    type Error = AtomicError;

    fn our_id(&self) -> NodeId {
        match self {
            AtomicBroadcast::Ckps01(node) => node.our_id(),
            AtomicBroadcast::HighThroughput(node) => node.our_id(),
        }
    }

    fn handle_input(
        &mut self,
        request: Vec<u8>,
        rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, AtomicError> {
        Ok(match self {
            AtomicBroadcast::Ckps01(node) => wrap_ckps01::<S>(node.handle_input(request, rng)?),
            AtomicBroadcast::HighThroughput(node) => wrap_ht::<S>(node.handle_input(request, rng)?),
        })
    }

    fn handle_message(
        &mut self,
        from: NodeId,
        message: AtomicBroadcastMessage<S>,
        rng: &mut dyn RngCore,
    ) -> ProtocolStep<Self> {
        match (self, message) {
            (AtomicBroadcast::Ckps01(node), AtomicMessage::Ckps01(message)) => {
                wrap_ckps01::<S>(node.handle_message(from, message, rng))
            }
            (AtomicBroadcast::HighThroughput(node), AtomicMessage::HighThroughput(message)) => {
                wrap_ht::<S>(node.handle_message(from, message, rng))
            }
            _ => {
                let mut step = Step::new();
                step.fault(from, AtomicFault::WrongMode);
                step
            }
        }
    }

    /// Atomic broadcast runs for as long as the service does.
    fn terminated(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_is_configuration() {
        assert_eq!(OrderingMode::default(), OrderingMode::Ckps01);
        let ht = OrderingMode::HighThroughput(HtParams {
            lane_window: 3,
            retained_slots: 9,
            max_fetches: 5,
        });
        for mode in [OrderingMode::Ckps01, ht] {
            let text = toml::to_string(&Config { mode }).unwrap();
            let back: Config = toml::from_str(&text).unwrap();
            assert_eq!(back.mode, mode, "{text}");
        }
        let parsed: Config = toml::from_str(
            "[mode.high_throughput]\nlane_window = 8\nretained_slots = 32\nmax_fetches = 16\n",
        )
        .unwrap();
        assert_eq!(
            parsed.mode,
            OrderingMode::HighThroughput(HtParams {
                lane_window: 8,
                retained_slots: 32,
                max_fetches: 16,
            })
        );
    }

    #[derive(Serialize, Deserialize)]
    struct Config {
        mode: OrderingMode,
    }
}
