//! **INSECURE** threshold "signatures" for fast simulation sweeps. ANYONE CAN FORGE THEM.
//!
//! # Never use this outside tests
//!
//! [`InsecureThresholdSigner`] implements [`ThresholdSigner`] with nothing but keyed-by-name
//! hashes: the group "signature" on a message is `hash(tag, message)`, where `tag` is derived
//! from the key set's *public name*. Anyone who knows the name — that is, everyone — can
//! compute every signature and every share. It provides **no unforgeability and no
//! threshold property at all**.
//!
//! It exists only so that seed sweeps of thousands of simulated runs are fast: a real BLS
//! share verification costs about 1.3 ms (DESIGN.md, "Costs to design around"), these cost a
//! BLAKE3 call. What it does keep is the *interface behaviour* protocols depend on, so the
//! protocol logic around it is exercised faithfully:
//! - shares are bound to signer, key set and message, so [`ThresholdSigner::verify_share`]
//!   rejects a share that an adversary's test hook garbled, moved to another signer or
//!   replayed on another message;
//! - [`ThresholdSigner::combine_unchecked`] enforces the threshold (at least `k` distinct,
//!   in-range signers), and the result fails [`ThresholdSigner::verify`] when shares disagree,
//!   so [`maftia_crypto::threshold::robust_combine`] takes its fallback path and reports the
//!   invalid signers exactly as with the real scheme;
//! - signatures are unique per (key set, message), like BLS signatures, so coin values derived
//!   from [`ThresholdSigner::signature_bytes`] agree at all nodes.
//!
//! How release builds exclude it: it lives in `maftia-sim`, which protocol crates take only as
//! a dev-dependency and which the `maftia` binary never depends on, so this code cannot be
//! linked into a node.
use maftia_crypto::hash::hash;
use maftia_crypto::threshold::{CombineError, SignerIndex, ThresholdSigner};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const CONTEXT_KEY_SET: &str = "maftia 2026-11 INSECURE sim threshold key set";
const CONTEXT_SIGNATURE: &str = "maftia 2026-11 INSECURE sim threshold signature";
const CONTEXT_SHARE_MAC: &str = "maftia 2026-11 INSECURE sim threshold share mac";
const CONTEXT_MIXED_SHARES: &str = "maftia 2026-11 INSECURE sim threshold mixed shares";

/// An insecure signature share: the would-be group signature plus a signer-bound tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsecureShare {
    /// `hash(tag, message)`: what the combined signature will be.
    pub value: [u8; 32],
    /// `hash(tag, signer index, message)`: binds the share to its signer.
    pub mac: [u8; 32],
}

/// An insecure group signature: `hash(tag, message)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsecureSignature(pub [u8; 32]);

/// One node's handle on an insecure key set. See the module documentation: **INSECURE**.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InsecureThresholdSigner {
    n: usize,
    threshold: usize,
    index: SignerIndex,
    key_set_tag: [u8; 32],
}

impl InsecureThresholdSigner {
    /// One signer per node of a group of `n`, any `threshold` of whose shares combine. Key sets
    /// with different names produce unrelated signatures.
    ///
    /// # Panics
    /// If `threshold` is 0 or above `n` (a test-setup misuse).
    pub fn deal(n: usize, threshold: usize, key_set: &str) -> Vec<Self> {
        assert!(
            (1..=n).contains(&threshold),
            "threshold {threshold} is not in 1..={n}"
        );
        let key_set_tag = hash(CONTEXT_KEY_SET, &[key_set.as_bytes()]);
        (0..n)
            .map(|index| InsecureThresholdSigner {
                n,
                threshold,
                index,
                key_set_tag,
            })
            .collect()
    }

    fn value(&self, message: &[u8]) -> [u8; 32] {
        hash(CONTEXT_SIGNATURE, &[&self.key_set_tag, message])
    }

    fn mac(&self, signer: SignerIndex, message: &[u8]) -> [u8; 32] {
        hash(
            CONTEXT_SHARE_MAC,
            &[&self.key_set_tag, &(signer as u64).to_le_bytes(), message],
        )
    }
}

impl ThresholdSigner for InsecureThresholdSigner {
    type Share = InsecureShare;
    type Signature = InsecureSignature;

    fn n(&self) -> usize {
        self.n
    }

    fn threshold(&self) -> usize {
        self.threshold
    }

    fn our_index(&self) -> SignerIndex {
        self.index
    }

    fn sign_share(&self, message: &[u8]) -> InsecureShare {
        InsecureShare {
            value: self.value(message),
            mac: self.mac(self.index, message),
        }
    }

    fn verify_share(&self, signer: SignerIndex, message: &[u8], share: &InsecureShare) -> bool {
        signer < self.n
            && share.value == self.value(message)
            && share.mac == self.mac(signer, message)
    }

    fn verify(&self, message: &[u8], signature: &InsecureSignature) -> bool {
        signature.0 == self.value(message)
    }

    fn combine_unchecked(
        &self,
        shares: &[(SignerIndex, &InsecureShare)],
    ) -> Result<InsecureSignature, CombineError> {
        if let Some(&(index, _)) = shares.iter().find(|(index, _)| *index >= self.n) {
            return Err(CombineError::IndexOutOfRange { index, n: self.n });
        }
        let distinct: BTreeSet<SignerIndex> = shares.iter().map(|(index, _)| *index).collect();
        match shares.first() {
            Some((_, share)) if distinct.len() >= self.threshold => {
                if shares.iter().all(|(_, other)| other.value == share.value) {
                    Ok(InsecureSignature(share.value))
                } else {
                    // Shares on different messages combine to garbage, as real shares do: a
                    // value no message hashes to, so `verify` fails and robust combining falls
                    // back to checking shares one by one.
                    let values: Vec<&[u8]> =
                        shares.iter().map(|(_, s)| s.value.as_slice()).collect();
                    Ok(InsecureSignature(hash(CONTEXT_MIXED_SHARES, &values)))
                }
            }
            _ => Err(CombineError::NotEnoughValidShares {
                valid: distinct.len(),
                needed: self.threshold,
                invalid_signers: Vec::new(),
            }),
        }
    }

    fn signature_bytes(&self, signature: &InsecureSignature) -> Vec<u8> {
        signature.0.to_vec()
    }
}

/// An [`InsecureThresholdSigner`] that counts the verifications made through it, for tests that
/// check a protocol never verifies the same signature or share twice. **INSECURE** like the
/// signer it wraps.
///
/// Every [`ThresholdSigner::verify`] call adds one to `verifies`, every
/// [`ThresholdSigner::verify_share`] call one to `share_verifies`; everything else is the inner
/// signer's. Counters are shared handles: give several signers the same counter to count a
/// whole group's verifications, or each its own.
#[derive(Clone, Debug)]
pub struct CountingSigner {
    pub inner: InsecureThresholdSigner,
    /// Signature verifications ([`ThresholdSigner::verify`]) so far.
    pub verifies: Arc<AtomicUsize>,
    /// Share verifications ([`ThresholdSigner::verify_share`]) so far.
    pub share_verifies: Arc<AtomicUsize>,
}

impl CountingSigner {
    /// Wrap `inner`, counting into the given counters.
    pub fn new(
        inner: InsecureThresholdSigner,
        verifies: Arc<AtomicUsize>,
        share_verifies: Arc<AtomicUsize>,
    ) -> Self {
        CountingSigner {
            inner,
            verifies,
            share_verifies,
        }
    }
}

impl ThresholdSigner for CountingSigner {
    type Share = InsecureShare;
    type Signature = InsecureSignature;

    fn n(&self) -> usize {
        self.inner.n()
    }

    fn threshold(&self) -> usize {
        self.inner.threshold()
    }

    fn our_index(&self) -> SignerIndex {
        self.inner.our_index()
    }

    fn sign_share(&self, message: &[u8]) -> InsecureShare {
        self.inner.sign_share(message)
    }

    fn verify_share(&self, signer: SignerIndex, message: &[u8], share: &InsecureShare) -> bool {
        self.share_verifies.fetch_add(1, Ordering::Relaxed);
        self.inner.verify_share(signer, message, share)
    }

    fn verify(&self, message: &[u8], signature: &InsecureSignature) -> bool {
        self.verifies.fetch_add(1, Ordering::Relaxed);
        self.inner.verify(message, signature)
    }

    fn combine_unchecked(
        &self,
        shares: &[(SignerIndex, &InsecureShare)],
    ) -> Result<InsecureSignature, CombineError> {
        self.inner.combine_unchecked(shares)
    }

    fn signature_bytes(&self, signature: &InsecureSignature) -> Vec<u8> {
        self.inner.signature_bytes(signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn shares(
        signers: &[InsecureThresholdSigner],
        message: &[u8],
    ) -> BTreeMap<usize, InsecureShare> {
        signers
            .iter()
            .map(|s| (s.our_index(), s.sign_share(message)))
            .collect()
    }

    #[test]
    fn any_threshold_shares_combine_to_one_verifying_signature() {
        let signers = InsecureThresholdSigner::deal(4, 3, "cbc echo");
        let all = shares(&signers, b"hello");
        for s in &signers {
            assert!(s.verify_share(s.our_index(), b"hello", &all[&s.our_index()]));
        }
        let from_012: BTreeMap<_, _> = all
            .iter()
            .filter(|(i, _)| **i != 3)
            .map(|(i, s)| (*i, s.clone()))
            .collect();
        let from_123: BTreeMap<_, _> = all
            .iter()
            .filter(|(i, _)| **i != 0)
            .map(|(i, s)| (*i, s.clone()))
            .collect();
        let a = signers[0].combine(b"hello", &from_012).unwrap();
        let b = signers[2].combine(b"hello", &from_123).unwrap();
        assert_eq!(a, b);
        assert!(a.invalid_signers.is_empty());
        assert!(signers[1].verify(b"hello", &a.signature));
        assert!(!signers[1].verify(b"hellO", &a.signature));
        assert_eq!(
            signers[3].signature_bytes(&a.signature),
            a.signature.0.to_vec()
        );
        // Another key set signs differently.
        let other = InsecureThresholdSigner::deal(4, 3, "coin");
        assert!(!other[0].verify(b"hello", &a.signature));
    }

    #[test]
    fn shares_are_bound_to_signer_message_and_key_set() {
        let signers = InsecureThresholdSigner::deal(4, 2, "k");
        let share = signers[1].sign_share(b"m");
        assert!(signers[0].verify_share(1, b"m", &share));
        assert!(
            !signers[0].verify_share(2, b"m", &share),
            "moved to another signer"
        );
        assert!(
            !signers[0].verify_share(1, b"m2", &share),
            "replayed on another message"
        );
        assert!(
            !signers[0].verify_share(4, b"m", &share),
            "signer out of range"
        );
        let foreign = InsecureThresholdSigner::deal(4, 2, "other")[1].sign_share(b"m");
        assert!(
            !signers[0].verify_share(1, b"m", &foreign),
            "share of another key set"
        );
        let mut garbled = share;
        garbled.mac[0] ^= 1;
        assert!(!signers[0].verify_share(1, b"m", &garbled));
    }

    #[test]
    fn robust_combine_skips_and_reports_invalid_shares() {
        let signers = InsecureThresholdSigner::deal(4, 2, "k");
        let mut all = shares(&signers, b"m");
        // Signer 0's share carries a wrong value (the optimistic combine then fails to verify),
        // signer 1's a wrong mac.
        all.get_mut(&0).unwrap().value[5] ^= 0xff;
        all.get_mut(&1).unwrap().mac[5] ^= 0xff;
        let combined = signers[3].combine(b"m", &all).unwrap();
        assert!(signers[3].verify(b"m", &combined.signature));
        assert_eq!(combined.invalid_signers, vec![0, 1]);
        // With only one valid share left, combining fails and names the culprits.
        all.remove(&3);
        assert_eq!(
            signers[3].combine(b"m", &all),
            Err(CombineError::NotEnoughValidShares {
                valid: 1,
                needed: 2,
                invalid_signers: vec![0, 1]
            })
        );
    }

    #[test]
    fn threshold_is_enforced() {
        let signers = InsecureThresholdSigner::deal(4, 3, "k");
        let all = shares(&signers, b"m");
        let two: BTreeMap<_, _> = all.iter().take(2).map(|(i, s)| (*i, s.clone())).collect();
        assert!(matches!(
            signers[0].combine(b"m", &two),
            Err(CombineError::NotEnoughValidShares {
                valid: 2,
                needed: 3,
                ..
            })
        ));
        // The same signer three times is still one signer.
        let s = &all[&0];
        assert!(matches!(
            signers[0].combine_unchecked(&[(0, s), (0, s), (0, s)]),
            Err(CombineError::NotEnoughValidShares {
                valid: 1,
                needed: 3,
                ..
            })
        ));
        assert_eq!(
            signers[0].combine_unchecked(&[(0, s), (1, s), (9, s)]),
            Err(CombineError::IndexOutOfRange { index: 9, n: 4 })
        );
        assert!(signers[0]
            .combine_unchecked(&[(0, s), (1, &all[&1]), (2, &all[&2])])
            .is_ok());
    }

    #[test]
    fn counting_signer_counts_verifications_and_behaves_like_its_inner_signer() {
        let (verifies, share_verifies) = (Arc::new(AtomicUsize::new(0)), Arc::default());
        let signers: Vec<CountingSigner> = InsecureThresholdSigner::deal(4, 2, "k")
            .into_iter()
            .map(|s| CountingSigner::new(s, verifies.clone(), Arc::clone(&share_verifies)))
            .collect();
        let share = signers[1].sign_share(b"m");
        assert!(signers[0].verify_share(1, b"m", &share));
        assert!(!signers[2].verify_share(2, b"m", &share));
        let all: BTreeMap<_, _> = signers[..2]
            .iter()
            .map(|s| (s.our_index(), s.sign_share(b"m")))
            .collect();
        let combined = signers[3].combine(b"m", &all).unwrap();
        assert!(signers[0].verify(b"m", &combined.signature));
        assert_eq!(
            combined.signature,
            signers[3].inner.combine(b"m", &all).unwrap().signature
        );
        // Two explicit share checks; one optimistic combine verification plus one explicit
        // (the inner signer's own combine is not counted).
        assert_eq!(share_verifies.load(Ordering::Relaxed), 2);
        assert_eq!(verifies.load(Ordering::Relaxed), 2);
        assert_eq!((signers[2].n(), signers[2].threshold()), (4, 2));
    }

    #[test]
    #[should_panic(expected = "threshold 5 is not in 1..=4")]
    fn dealing_rejects_impossible_thresholds() {
        InsecureThresholdSigner::deal(4, 5, "k");
    }
}
