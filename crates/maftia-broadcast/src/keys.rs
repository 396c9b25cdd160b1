//! The threshold key sets a node holds, bundled for the protocols that need several.
//!
//! PROTOCOLS.md ("Threshold key sets"): the coin and other "one honest node" proofs use a key set
//! with threshold `f+1`, consistent-broadcast certificates `⌈(n+f+1)/2⌉`, and quorum proofs
//! (ABA justifications, MVBA/ABC quorum certificates) `n−f`. Every protocol signs a message that
//! names the protocol, the instance, the round and the step, so a share made for one use can never
//! be combined for another even within one key set.
use maftia_core::{GroupConfig, NodeId};
use maftia_crypto::bls::{BlsPublicKeySet, BlsThresholdSigner, KeySetId};
use maftia_crypto::keygen::{GroupPublic, NodeSecret};
use maftia_crypto::threshold::ThresholdSigner;
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeysError {
    #[error("key set {name} has n = {found}, the group has n = {expected}")]
    GroupSize {
        name: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("key set {name} has threshold {found}, expected {expected}")]
    Threshold {
        name: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("key set {name} belongs to node {found}, expected {expected}")]
    Index {
        name: &'static str,
        found: usize,
        expected: NodeId,
    },
    #[error("key files: {0}")]
    KeyFiles(String),
}

/// One node's shares of the group's threshold key sets.
pub struct ThresholdKeys<S> {
    /// Threshold `f+1`: the common coin and "at least one honest node" proofs.
    pub coin: Arc<S>,
    /// Threshold `⌈(n+f+1)/2⌉`: consistent-broadcast certificates.
    pub cbc: Arc<S>,
    /// Threshold `n−f`: quorum certificates (ABA justifications, MVBA and ABC proofs).
    pub quorum: Arc<S>,
}

impl<S> Clone for ThresholdKeys<S> {
    fn clone(&self) -> Self {
        ThresholdKeys {
            coin: self.coin.clone(),
            cbc: self.cbc.clone(),
            quorum: self.quorum.clone(),
        }
    }
}

impl<S: ThresholdSigner> ThresholdKeys<S> {
    /// Bundle key sets, checking each has the group's size, its threshold and our index.
    pub fn new(
        config: &GroupConfig,
        our_id: NodeId,
        coin: Arc<S>,
        cbc: Arc<S>,
        quorum: Arc<S>,
    ) -> Result<Self, KeysError> {
        for (name, set, threshold) in [
            ("coin", &coin, config.one_honest()),
            ("cbc", &cbc, config.echo_quorum()),
            ("quorum", &quorum, config.quorum()),
        ] {
            if set.n() != config.n() {
                return Err(KeysError::GroupSize {
                    name,
                    found: set.n(),
                    expected: config.n(),
                });
            }
            if set.threshold() != threshold {
                return Err(KeysError::Threshold {
                    name,
                    found: set.threshold(),
                    expected: threshold,
                });
            }
            if set.our_index() != our_id.index() {
                return Err(KeysError::Index {
                    name,
                    found: set.our_index(),
                    expected: our_id,
                });
            }
        }
        Ok(ThresholdKeys { coin, cbc, quorum })
    }
}

impl ThresholdKeys<BlsThresholdSigner> {
    /// The BLS key sets of a node, from the files `maftia keygen` wrote.
    pub fn from_key_files(
        config: &GroupConfig,
        group: &GroupPublic,
        secret: &NodeSecret,
    ) -> Result<Self, KeysError> {
        let our_id = u16::try_from(secret.index)
            .map(NodeId)
            .map_err(|_| KeysError::KeyFiles(format!("node index {} too large", secret.index)))?;
        let signer =
            |id: KeySetId| -> Result<Arc<BlsThresholdSigner>, KeysError> {
                let public: &BlsPublicKeySet = group.bls.get(&id).ok_or_else(|| {
                    KeysError::KeyFiles(format!("group file lacks key set {id:?}"))
                })?;
                let share = secret.bls.get(&id).ok_or_else(|| {
                    KeysError::KeyFiles(format!("secret file lacks key set {id:?}"))
                })?;
                BlsThresholdSigner::new(Arc::new(public.clone()), share.clone())
                    .map(Arc::new)
                    .map_err(|e| KeysError::KeyFiles(e.to_string()))
            };
        Self::new(
            config,
            our_id,
            signer(KeySetId::Coin)?,
            signer(KeySetId::Cbc)?,
            signer(KeySetId::Quorum)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maftia_crypto::keygen::deal_group;
    use rand::SeedableRng;

    #[test]
    fn from_dealt_key_files() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let (group, secrets) = deal_group(4, 1, &mut rng).unwrap();
        let config = GroupConfig::asynchronous(4, 1).unwrap();
        let keys = ThresholdKeys::from_key_files(&config, &group, &secrets[2]).unwrap();
        assert_eq!(keys.cbc.threshold(), 3);
        assert_eq!(keys.quorum.our_index(), 2);
        // A node's keys do not fit a different group size.
        let wrong = GroupConfig::asynchronous(5, 1).unwrap();
        assert!(matches!(
            ThresholdKeys::from_key_files(&wrong, &group, &secrets[2]),
            Err(KeysError::GroupSize { .. })
        ));
    }
}
