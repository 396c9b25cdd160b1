//! The narrow interface protocols use for threshold signatures, and robust combining.
//!
//! A *key set* is one sharing of one signing key among `n` nodes with threshold `k`: any `k`
//! valid shares on a message combine into the unique group signature on it; fewer reveal
//! nothing usable. Protocols only ever see the [`ThresholdSigner`] trait, so the simulator can
//! run big seed sweeps on a fast insecure backend (`maftia_sim::insecure_crypto`) while the
//! node runs the BLS implementation.
//!
//! Combining is *robust* and *optimistic* ([`robust_combine`]): combine the first `k` shares and
//! verify the result once; only if that fails, verify shares one by one, drop the invalid ones
//! (reporting their signers) and combine again from valid ones. An honest run pays one
//! signature verification instead of `k` share verifications.
use crate::shamir::InterpolationError;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use thiserror::Error;

/// Index of a signer in `0..n` (the same number as its `NodeId`).
pub type SignerIndex = usize;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CombineError {
    #[error("{valid} valid shares, {needed} needed (invalid shares from {invalid_signers:?})")]
    NotEnoughValidShares {
        valid: usize,
        needed: usize,
        invalid_signers: Vec<SignerIndex>,
    },
    #[error("share from signer {index}, outside a group of {n}")]
    IndexOutOfRange { index: SignerIndex, n: usize },
    #[error("interpolation failed: {0}")]
    Interpolation(#[from] InterpolationError),
}

/// A combined signature, and the signers whose shares were found invalid on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Combined<S> {
    pub signature: S,
    pub invalid_signers: Vec<SignerIndex>,
}

/// One threshold key set as seen by a node holding a secret share of it.
pub trait ThresholdSigner {
    type Share: Clone + Debug + PartialEq + Serialize + DeserializeOwned;
    type Signature: Clone + Debug + PartialEq + Serialize + DeserializeOwned;

    /// Number of share holders.
    fn n(&self) -> usize;
    /// Shares needed to combine (`k`).
    fn threshold(&self) -> usize;
    /// This node's index.
    fn our_index(&self) -> SignerIndex;

    /// This node's signature share on `message`.
    fn sign_share(&self, message: &[u8]) -> Self::Share;
    /// Whether `share` is `signer`'s valid share on `message`.
    fn verify_share(&self, signer: SignerIndex, message: &[u8], share: &Self::Share) -> bool;
    /// Whether `signature` is the group's signature on `message`.
    fn verify(&self, message: &[u8], signature: &Self::Signature) -> bool;
    /// Interpolate exactly the given shares (at least `k`, distinct, in range) without checking
    /// them. Use [`ThresholdSigner::combine`] unless the shares are already known valid.
    fn combine_unchecked(
        &self,
        shares: &[(SignerIndex, &Self::Share)],
    ) -> Result<Self::Signature, CombineError>;
    /// Canonical bytes of a signature (hashed to derive coin values).
    fn signature_bytes(&self, signature: &Self::Signature) -> Vec<u8>;

    /// Robustly combine shares on `message`; see [`robust_combine`].
    fn combine(
        &self,
        message: &[u8],
        shares: &BTreeMap<SignerIndex, Self::Share>,
    ) -> Result<Combined<Self::Signature>, CombineError> {
        robust_combine(self, message, shares)
    }
}

/// The optimistic robust combining rule shared by every [`ThresholdSigner`].
///
/// Returns a valid signature whenever at least `k` of the shares are valid, together with the
/// signers of every invalid share that had to be examined.
pub fn robust_combine<T: ThresholdSigner + ?Sized>(
    signer: &T,
    message: &[u8],
    shares: &BTreeMap<SignerIndex, T::Share>,
) -> Result<Combined<T::Signature>, CombineError> {
    let k = signer.threshold();
    if let Some((&index, _)) = shares.range(signer.n()..).next() {
        return Err(CombineError::IndexOutOfRange {
            index,
            n: signer.n(),
        });
    }
    if shares.len() < k {
        return Err(CombineError::NotEnoughValidShares {
            valid: shares.len(),
            needed: k,
            invalid_signers: Vec::new(),
        });
    }
    // Optimistic path: the first k shares, one verification.
    let first: Vec<_> = shares.iter().take(k).map(|(i, s)| (*i, s)).collect();
    let signature = signer.combine_unchecked(&first)?;
    if signer.verify(message, &signature) {
        return Ok(Combined {
            signature,
            invalid_signers: Vec::new(),
        });
    }
    // Pessimistic path: check every share, combine k valid ones.
    let (valid, invalid): (Vec<_>, Vec<_>) = shares
        .iter()
        .partition(|(i, s)| signer.verify_share(**i, message, s));
    let invalid_signers: Vec<SignerIndex> = invalid.into_iter().map(|(i, _)| *i).collect();
    if valid.len() < k {
        return Err(CombineError::NotEnoughValidShares {
            valid: valid.len(),
            needed: k,
            invalid_signers,
        });
    }
    let chosen: Vec<_> = valid.into_iter().take(k).map(|(i, s)| (*i, s)).collect();
    let signature = signer.combine_unchecked(&chosen)?;
    Ok(Combined {
        signature,
        invalid_signers,
    })
}
