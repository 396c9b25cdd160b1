//! `(k, n)` threshold BLS signatures on BLS12-381 (Boneh–Lynn–Shacham 2001; threshold form as in
//! Boldyreva, PKC 2003), over the group arithmetic and pairing of `blstrs`/`blst`.
//!
//! **Guarantees.** Any `k` valid signature shares on a message combine (Lagrange interpolation
//! in the exponent) into the *unique* group signature on it — the same for every choice of
//! shares, which is what makes it usable as a threshold coin (Cachin–Kursawe–Shoup 2000).
//! Fewer than `k` shares reveal nothing about it. Every share is individually verifiable against
//! its signer's public share, so invalid shares are attributable. Security holds under the
//! co-CDH assumption on BLS12-381 in the random-oracle model, against a static adversary
//! corrupting at most `k - 1` share holders; keys come from a trusted dealer ([`deal`]).
//!
//! **Variant.** Minimal-signature: signatures and shares in G1 (48 bytes compressed), public keys
//! in G2 (96 bytes), hashing with the RFC 9380 suite `BLS12381G1_XMD:SHA-256_SSWU_RO_`. The
//! domain-separation tag names the key set ([`KeySetId::dst`]), so a share made for one use can
//! never verify or combine under another (PROTOCOLS.md, "Threshold key sets"), even if two key
//! sets happened to share a secret.
//!
//! **Cost.** Share signing: one hash to G1 and one G1 scalar multiplication. Share and signature
//! verification: one hash to G1 and one product of two Miller loops with a single final
//! exponentiation, `e(σ, −g₂) · e(H(m), pk) = 1`, with the G2 line functions of `−g₂` and of the
//! keys precomputed ([`BlsVerifier`]). Combining `k` shares: `O(k²)` field operations for the
//! Lagrange coefficients and one `k`-point multi-exponentiation in G1 (blst's, which may run on
//! blst's internal thread pool; the result is deterministic). Robust combining (see
//! [`crate::threshold::robust_combine`]) verifies one signature when all shares are valid.
//!
//! **Encodings.** Points are serialized compressed (ZCash/IETF format); in human-readable serde
//! formats as lowercase hex, otherwise as raw bytes. Decoding validates: a point that is not on
//! the curve, not in the prime-order subgroup, or the identity is an error, never a panic.
use crate::shamir::{eval_point, lagrange_coefficients, Polynomial};
use crate::threshold::{CombineError, SignerIndex, ThresholdSigner};
use blstrs::{Bls12, G1Affine, G1Projective, G2Affine, G2Prepared, G2Projective, Scalar};
use ff::Field;
use group::prime::PrimeCurveAffine;
use group::{Curve, Group};
use pairing::{MillerLoopResult, MultiMillerLoop};
use rand_core::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::{Arc, LazyLock, OnceLock};
use thiserror::Error;

/// Largest group a key set may have (`NodeId` is a `u16`).
pub const MAX_SIGNERS: usize = 1 << 16;

/// Bytes of a compressed G1 point (signature or signature share).
pub const SIGNATURE_BYTES: usize = 48;
/// Bytes of a compressed G2 point (public key or public share).
pub const PUBLIC_KEY_BYTES: usize = 96;
/// Bytes of a secret scalar (big-endian).
pub const SECRET_BYTES: usize = 32;

macro_rules! dst {
    ($tag:literal) => {
        concat!("MAFTIA-V01-CS01-with-BLS12381G1_XMD:SHA-256_SSWU_RO_", $tag).as_bytes()
    };
}

/// The use a threshold key set is dealt for; it fixes the threshold and the hashing domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KeySetId {
    /// Threshold coin (`k = f + 1`).
    Coin,
    /// Reply and checkpoint certificates for clients (`k = f + 1`).
    Reply,
    /// Consistent-broadcast certificates (`k = ⌈(n + f + 1) / 2⌉`).
    Cbc,
    /// ABA justifications, MVBA/ABC quorum proofs (`k = n − f`).
    Quorum,
}

impl KeySetId {
    /// Every key set, in order.
    pub const ALL: [KeySetId; 4] = [
        KeySetId::Coin,
        KeySetId::Reply,
        KeySetId::Cbc,
        KeySetId::Quorum,
    ];

    /// Short tag naming the key set inside hashing domains.
    pub fn tag(&self) -> &'static str {
        match self {
            KeySetId::Coin => "COIN",
            KeySetId::Reply => "REPLY",
            KeySetId::Cbc => "CBC",
            KeySetId::Quorum => "QUORUM",
        }
    }

    /// The number of shares `k` needed to combine, for a group of `n` tolerating `f` faults
    /// (PROTOCOLS.md, "Threshold key sets").
    pub fn threshold(&self, n: usize, f: usize) -> usize {
        match self {
            KeySetId::Coin | KeySetId::Reply => f + 1,
            // ⌈(n + f + 1) / 2⌉ = ⌊(n + f + 2) / 2⌋
            KeySetId::Cbc => (n + f + 2) / 2,
            KeySetId::Quorum => n.saturating_sub(f),
        }
    }

    /// The RFC 9380 domain-separation tag of messages hashed to G1 for this key set:
    /// `"MAFTIA-V01-CS01-with-BLS12381G1_XMD:SHA-256_SSWU_RO_" ‖ tag`.
    pub fn dst(&self) -> &'static [u8] {
        match self {
            KeySetId::Coin => dst!("COIN"),
            KeySetId::Reply => dst!("REPLY"),
            KeySetId::Cbc => dst!("CBC"),
            KeySetId::Quorum => dst!("QUORUM"),
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BlsError {
    #[error("invalid point encoding (not on the curve, not in the subgroup, or the identity)")]
    InvalidPoint,
    #[error("invalid secret scalar encoding")]
    InvalidScalar,
    #[error("group size {0} outside 1..={MAX_SIGNERS}")]
    InvalidGroupSize(usize),
    #[error("threshold {threshold} outside 1..={n}")]
    InvalidThreshold { threshold: usize, n: usize },
    #[error("{got} public shares for a group of {expected}")]
    ShareCountMismatch { expected: usize, got: usize },
    #[error("the public shares do not interpolate to the public key")]
    PublicKeyMismatch,
    #[error("public share {index} is not on the polynomial of the first k shares")]
    ShareNotOnPolynomial { index: usize },
    #[error("share index {index} outside a group of {n}")]
    IndexOutOfRange { index: usize, n: usize },
    #[error("secret share is for key set {secret:?}, public key set is {public:?}")]
    KeySetMismatch { secret: KeySetId, public: KeySetId },
    #[error("secret share {index} does not match its public share")]
    SecretShareMismatch { index: usize },
}

// ---------------------------------------------------------------------------------------------
// Byte encodings
// ---------------------------------------------------------------------------------------------

/// Serde of fixed-size byte strings: lowercase hex in human-readable formats, raw bytes
/// otherwise. Shared with [`crate::identity`].
pub(crate) mod fixed_bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&hex::encode(bytes))
        } else {
            serializer.serialize_bytes(bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(FixedBytesVisitor::<N>)
        } else {
            deserializer.deserialize_bytes(FixedBytesVisitor::<N>)
        }
    }

    struct FixedBytesVisitor<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for FixedBytesVisitor<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "{N} bytes, or {} hex digits", 2 * N)
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<[u8; N], E> {
            let mut out = [0u8; N];
            hex::decode_to_slice(v, &mut out).map_err(E::custom)?;
            Ok(out)
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<[u8; N], E> {
            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
            let mut out = [0u8; N];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(i, &self))?;
            }
            if seq.next_element::<u8>()?.is_some() {
                return Err(A::Error::invalid_length(N + 1, &self));
            }
            Ok(out)
        }
    }
}

fn g1_from_bytes(bytes: &[u8; SIGNATURE_BYTES]) -> Result<G1Affine, BlsError> {
    // `from_compressed` checks the curve equation and subgroup membership.
    Option::<G1Affine>::from(G1Affine::from_compressed(bytes))
        .filter(|p| !bool::from(p.is_identity()))
        .ok_or(BlsError::InvalidPoint)
}

fn g2_from_bytes(bytes: &[u8; PUBLIC_KEY_BYTES]) -> Result<G2Affine, BlsError> {
    Option::<G2Affine>::from(G2Affine::from_compressed(bytes))
        .filter(|p| !bool::from(p.is_identity()))
        .ok_or(BlsError::InvalidPoint)
}

macro_rules! g1_newtype {
    ($name:ident, $what:literal) => {
        #[doc = concat!("A ", $what, ": a point of G1, 48 bytes compressed.")]
        #[derive(Clone, Copy, PartialEq, Eq)]
        pub struct $name(pub G1Affine);

        impl $name {
            /// Compressed encoding.
            pub fn to_bytes(&self) -> [u8; SIGNATURE_BYTES] {
                self.0.to_compressed()
            }

            /// Decode and validate (on curve, in the subgroup, not the identity).
            pub fn from_bytes(bytes: &[u8; SIGNATURE_BYTES]) -> Result<Self, BlsError> {
                g1_from_bytes(bytes).map($name)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.to_bytes()))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                fixed_bytes::serialize(&self.to_bytes(), serializer)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let bytes = fixed_bytes::deserialize::<D, SIGNATURE_BYTES>(deserializer)?;
                Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
            }
        }
    };
}

g1_newtype!(BlsSignatureShare, "signature share `H(m)^{s_i}`");
g1_newtype!(BlsSignature, "combined threshold signature `H(m)^s`");

/// A validated G2 point in serde (compressed, hex when human-readable).
#[derive(Clone, Copy)]
struct G2Encoded(G2Affine);

impl Serialize for G2Encoded {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        fixed_bytes::serialize(&self.0.to_compressed(), serializer)
    }
}

impl<'de> Deserialize<'de> for G2Encoded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = fixed_bytes::deserialize::<D, PUBLIC_KEY_BYTES>(deserializer)?;
        g2_from_bytes(&bytes)
            .map(G2Encoded)
            .map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Hashing and pairing checks
// ---------------------------------------------------------------------------------------------

/// `H(m)`: `message` hashed to G1 in the domain of key set `id`.
pub fn hash_to_g1(id: KeySetId, message: &[u8]) -> G1Affine {
    G1Projective::hash_to_curve(message, id.dst(), &[]).to_affine()
}

/// Line functions of `−g₂`, shared by every verification.
static NEG_G2_LINES: LazyLock<G2Prepared> =
    LazyLock::new(|| G2Prepared::from(-G2Affine::generator()));

/// `e(σ, −g₂) · e(h, key) = 1`, i.e. `e(σ, g₂) = e(h, key)`: one two-term Miller loop, one final
/// exponentiation. The identity is never a valid signature (it would "verify" under an identity
/// key), so it is rejected up front.
fn pairing_check(signature: &G1Affine, hashed: &G1Affine, key_lines: &G2Prepared) -> bool {
    if bool::from(signature.is_identity()) || bool::from(key_lines.is_identity()) {
        return false;
    }
    let miller = Bls12::multi_miller_loop(&[(signature, &*NEG_G2_LINES), (hashed, key_lines)]);
    bool::from(miller.final_exponentiation().is_identity())
}

/// Below this many points, `Σ λ_i · P_i` is computed with one scalar multiplication per point;
/// from it on, with blst's multi-exponentiation (which may use blst's internal thread pool and
/// pays a fixed overhead for it). Measured on the 2-core reference machine: naive is faster for
/// 2–3 points, multi-exponentiation from about 6.
const MULTI_EXP_MIN_POINTS: usize = 5;

/// `Σ λ_i · P_i` in G1.
fn g1_linear_combination(points: &[G1Projective], scalars: &[Scalar]) -> G1Projective {
    if points.len() < MULTI_EXP_MIN_POINTS {
        points.iter().zip(scalars).map(|(p, s)| p * s).sum()
    } else {
        G1Projective::multi_exp(points, scalars)
    }
}

/// Lagrange basis for the evaluation points of distinct `indices`, evaluated at any `x`:
/// `λ_i(x) = Π_{m≠i} (x − x_m) / (x_i − x_m)`. The denominators are inverted once.
struct LagrangeBasis {
    xs: Vec<Scalar>,
    inverse_denominators: Vec<Scalar>,
}

impl LagrangeBasis {
    /// `None` if two indices coincide (a zero denominator).
    fn new(indices: &[usize]) -> Option<Self> {
        let xs: Vec<Scalar> = indices.iter().map(|&i| eval_point(i)).collect();
        let inverse_denominators = xs
            .iter()
            .enumerate()
            .map(|(i, xi)| {
                let den = xs
                    .iter()
                    .enumerate()
                    .filter(|(m, _)| *m != i)
                    .fold(Scalar::ONE, |acc, (_, xm)| acc * (*xi - xm));
                Option::<Scalar>::from(den.invert())
            })
            .collect::<Option<Vec<_>>>()?;
        Some(LagrangeBasis {
            xs,
            inverse_denominators,
        })
    }

    fn at(&self, x: Scalar) -> Vec<Scalar> {
        (0..self.xs.len())
            .map(|i| {
                let num = self
                    .xs
                    .iter()
                    .enumerate()
                    .filter(|(m, _)| *m != i)
                    .fold(Scalar::ONE, |acc, (_, xm)| acc * (x - xm));
                num * self.inverse_denominators[i]
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Key material
// ---------------------------------------------------------------------------------------------

/// The public side of a threshold key set: the group public key `g₂^s` and every node's public
/// share `g₂^{p(i+1)}`.
///
/// Deserializing runs [`BlsPublicKeySet::validate`]. The fields are public for key files and
/// tests; a value assembled by hand should be validated before use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BlsPublicKeySetEncoded", into = "BlsPublicKeySetEncoded")]
pub struct BlsPublicKeySet {
    pub id: KeySetId,
    pub n: usize,
    pub threshold: usize,
    pub public_key: G2Affine,
    pub public_shares: Vec<G2Affine>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename = "BlsPublicKeySet")]
struct BlsPublicKeySetEncoded {
    id: KeySetId,
    n: usize,
    threshold: usize,
    public_key: G2Encoded,
    public_shares: Vec<G2Encoded>,
}

impl From<BlsPublicKeySet> for BlsPublicKeySetEncoded {
    fn from(set: BlsPublicKeySet) -> Self {
        BlsPublicKeySetEncoded {
            id: set.id,
            n: set.n,
            threshold: set.threshold,
            public_key: G2Encoded(set.public_key),
            public_shares: set.public_shares.into_iter().map(G2Encoded).collect(),
        }
    }
}

impl TryFrom<BlsPublicKeySetEncoded> for BlsPublicKeySet {
    type Error = BlsError;

    fn try_from(encoded: BlsPublicKeySetEncoded) -> Result<Self, BlsError> {
        let set = BlsPublicKeySet {
            id: encoded.id,
            n: encoded.n,
            threshold: encoded.threshold,
            public_key: encoded.public_key.0,
            public_shares: encoded.public_shares.into_iter().map(|p| p.0).collect(),
        };
        set.validate()?;
        Ok(set)
    }
}

impl BlsPublicKeySet {
    /// Cheap structural checks: group size, threshold range, number of public shares, no
    /// identity point.
    pub fn check_shape(&self) -> Result<(), BlsError> {
        if self.n == 0 || self.n > MAX_SIGNERS {
            return Err(BlsError::InvalidGroupSize(self.n));
        }
        if self.threshold == 0 || self.threshold > self.n {
            return Err(BlsError::InvalidThreshold {
                threshold: self.threshold,
                n: self.n,
            });
        }
        if self.public_shares.len() != self.n {
            return Err(BlsError::ShareCountMismatch {
                expected: self.n,
                got: self.public_shares.len(),
            });
        }
        let identity = |p: &G2Affine| bool::from(p.is_identity());
        if identity(&self.public_key) || self.public_shares.iter().any(identity) {
            return Err(BlsError::InvalidPoint);
        }
        Ok(())
    }

    /// Full validation: [`BlsPublicKeySet::check_shape`], then that the public shares are the
    /// evaluations of one polynomial of degree `k − 1` in the exponent whose constant term is
    /// the public key. Checked exactly: the first `k` shares determine the polynomial; the
    /// public key must equal its Lagrange interpolation at 0 and every other share its
    /// interpolation at that share's point. Then any `k` shares interpolate to the public key,
    /// so any `k` valid signature shares combine to the group signature. Cost: `n − k + 1`
    /// multi-exponentiations of `k` points in G2 (tens of milliseconds at `n = 64`).
    pub fn validate(&self) -> Result<(), BlsError> {
        self.check_shape()?;
        let k = self.threshold;
        let base: Vec<usize> = (0..k).collect();
        // Distinct points 1..=k (k ≤ 2^16, far below the field order): never a zero denominator.
        let basis = LagrangeBasis::new(&base).ok_or(BlsError::InvalidThreshold {
            threshold: k,
            n: self.n,
        })?;
        let base_points: Vec<G2Projective> = self.public_shares[..k]
            .iter()
            .map(G2Projective::from)
            .collect();
        let interpolate_at = |x: Scalar| -> G2Projective {
            if k == 1 {
                base_points[0]
            } else {
                G2Projective::multi_exp(&base_points, &basis.at(x))
            }
        };
        if interpolate_at(Scalar::ZERO) != G2Projective::from(self.public_key) {
            return Err(BlsError::PublicKeyMismatch);
        }
        for index in k..self.n {
            if interpolate_at(eval_point(index)) != G2Projective::from(self.public_shares[index]) {
                return Err(BlsError::ShareNotOnPolynomial { index });
            }
        }
        Ok(())
    }

    /// Whether `signature` is the group's signature on `message`. Computes the G2 line
    /// functions of the public key on each call; [`BlsVerifier`] caches them.
    pub fn verify(&self, message: &[u8], signature: &BlsSignature) -> bool {
        let lines = G2Prepared::from(self.public_key);
        pairing_check(&signature.0, &hash_to_g1(self.id, message), &lines)
    }

    /// Whether `share` is signer `signer`'s valid share on `message` (false for a signer
    /// outside the group). Uncached, like [`BlsPublicKeySet::verify`].
    pub fn verify_share(
        &self,
        signer: SignerIndex,
        message: &[u8],
        share: &BlsSignatureShare,
    ) -> bool {
        if signer >= self.n {
            return false;
        }
        let Some(key) = self.public_shares.get(signer) else {
            return false;
        };
        pairing_check(
            &share.0,
            &hash_to_g1(self.id, message),
            &G2Prepared::from(*key),
        )
    }

    /// Interpolate the given shares in the exponent without checking them:
    /// `σ = Π σ_i^{λ_i}`. Indices must be distinct and in range. With at least `k` valid shares
    /// the result is the group signature; with fewer it is some other point, which does not
    /// verify.
    pub fn combine_unchecked(
        &self,
        shares: &[(SignerIndex, &BlsSignatureShare)],
    ) -> Result<BlsSignature, CombineError> {
        if let Some(&(index, _)) = shares.iter().find(|(i, _)| *i >= self.n) {
            return Err(CombineError::IndexOutOfRange { index, n: self.n });
        }
        let indices: Vec<usize> = shares.iter().map(|(i, _)| *i).collect();
        let lambdas = lagrange_coefficients::<Scalar>(&indices, self.n)?;
        let points: Vec<G1Projective> = shares
            .iter()
            .map(|(_, s)| G1Projective::from(s.0))
            .collect();
        Ok(BlsSignature(
            g1_linear_combination(&points, &lambdas).to_affine(),
        ))
    }
}

/// One node's secret share `s_i = p(i + 1)` of a key set. Overwritten on drop; `Debug` does not
/// show it. Serialized as `{ id, index, secret }` with the scalar big-endian (hex when
/// human-readable) — for key files only.
#[derive(Clone, PartialEq, Eq)]
pub struct BlsSecretShare {
    pub id: KeySetId,
    pub index: usize,
    pub secret: Scalar,
}

impl Drop for BlsSecretShare {
    fn drop(&mut self) {
        // `blstrs::Scalar` has no `Zeroize`; overwrite it and keep the write observable.
        self.secret = Scalar::ZERO;
        std::hint::black_box(&self.secret);
    }
}

impl fmt::Debug for BlsSecretShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlsSecretShare")
            .field("id", &self.id)
            .field("index", &self.index)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl BlsSecretShare {
    /// This share's signature share on `message`: `H(m)^{s_i}`.
    pub fn sign(&self, message: &[u8]) -> BlsSignatureShare {
        let hashed = G1Projective::hash_to_curve(message, self.id.dst(), &[]);
        BlsSignatureShare((hashed * self.secret).to_affine())
    }

    /// The public share `g₂^{s_i}` matching this secret share.
    pub fn public_share(&self) -> G2Affine {
        (G2Projective::generator() * self.secret).to_affine()
    }
}

/// Secret scalar bytes in serde, overwritten on drop.
struct SecretBytes([u8; SECRET_BYTES]);

impl Drop for SecretBytes {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            let text = zeroize::Zeroizing::new(hex::encode(self.0));
            serializer.serialize_str(&text)
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        fixed_bytes::deserialize::<D, SECRET_BYTES>(deserializer).map(SecretBytes)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename = "BlsSecretShare")]
struct BlsSecretShareEncoded {
    id: KeySetId,
    index: usize,
    secret: SecretBytes,
}

impl Serialize for BlsSecretShare {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        BlsSecretShareEncoded {
            id: self.id,
            index: self.index,
            secret: SecretBytes(self.secret.to_bytes_be()),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for BlsSecretShare {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let encoded = BlsSecretShareEncoded::deserialize(deserializer)?;
        if encoded.index >= MAX_SIGNERS {
            return Err(serde::de::Error::custom(BlsError::IndexOutOfRange {
                index: encoded.index,
                n: MAX_SIGNERS,
            }));
        }
        let secret = Option::<Scalar>::from(Scalar::from_bytes_be(&encoded.secret.0))
            .ok_or_else(|| serde::de::Error::custom(BlsError::InvalidScalar))?;
        Ok(BlsSecretShare {
            id: encoded.id,
            index: encoded.index,
            secret,
        })
    }
}

/// Trusted-dealer key generation: a random polynomial `p` of degree `threshold − 1`, secret
/// `s = p(0)`, node `i` gets `p(i + 1)`, public shares `g₂^{p(i+1)}` and public key `g₂^s`
/// (Shamir 1979; the public shares are Feldman's commitments evaluated at each node, computed
/// directly from the shares since the dealer knows them).
pub fn deal(
    id: KeySetId,
    n: usize,
    threshold: usize,
    rng: &mut impl RngCore,
) -> Result<(BlsPublicKeySet, Vec<BlsSecretShare>), BlsError> {
    if n == 0 || n > MAX_SIGNERS {
        return Err(BlsError::InvalidGroupSize(n));
    }
    if threshold == 0 || threshold > n {
        return Err(BlsError::InvalidThreshold { threshold, n });
    }
    let polynomial = Polynomial::<Scalar>::random(threshold - 1, rng);
    let g2 = G2Projective::generator();
    let secrets: Vec<BlsSecretShare> = (0..n)
        .map(|index| BlsSecretShare {
            id,
            index,
            secret: polynomial.share(index),
        })
        .collect();
    let mut public_shares = vec![G2Affine::identity(); n];
    let projective: Vec<G2Projective> = secrets.iter().map(|s| g2 * s.secret).collect();
    G2Projective::batch_normalize(&projective, &mut public_shares);
    let public_key = (g2 * polynomial.secret()).to_affine();
    let set = BlsPublicKeySet {
        id,
        n,
        threshold,
        public_key,
        public_shares,
    };
    // Rejects the (probability 2^-255) identity key; the interpolation checks hold by
    // construction and are not re-run here.
    set.check_shape()?;
    Ok((set, secrets))
}

// ---------------------------------------------------------------------------------------------
// Verifier with cached line functions, and the ThresholdSigner implementation
// ---------------------------------------------------------------------------------------------

/// A public key set with the G2 line functions (Miller-loop precomputation) of its public key
/// cached, and those of each public share computed on first use. About 20 KiB per cached key.
/// Use it wherever the same key set verifies many shares or signatures (clients checking reply
/// certificates, every node).
#[derive(Clone)]
pub struct BlsVerifier {
    public: Arc<BlsPublicKeySet>,
    key_lines: G2Prepared,
    share_lines: Vec<OnceLock<G2Prepared>>,
}

impl fmt::Debug for BlsVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlsVerifier")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl BlsVerifier {
    /// Wrap a key set after [`BlsPublicKeySet::check_shape`]. The polynomial consistency check
    /// ([`BlsPublicKeySet::validate`]) is run by deserialization and holds for [`deal`]'s
    /// output; a hand-assembled set should be validated first.
    pub fn new(public: Arc<BlsPublicKeySet>) -> Result<Self, BlsError> {
        public.check_shape()?;
        let key_lines = G2Prepared::from(public.public_key);
        let share_lines = (0..public.n).map(|_| OnceLock::new()).collect();
        Ok(BlsVerifier {
            public,
            key_lines,
            share_lines,
        })
    }

    pub fn public(&self) -> &Arc<BlsPublicKeySet> {
        &self.public
    }

    /// Whether `signature` is the group's signature on `message`.
    pub fn verify(&self, message: &[u8], signature: &BlsSignature) -> bool {
        pairing_check(
            &signature.0,
            &hash_to_g1(self.public.id, message),
            &self.key_lines,
        )
    }

    /// Whether `share` is signer `signer`'s valid share on `message` (false outside the group).
    pub fn verify_share(
        &self,
        signer: SignerIndex,
        message: &[u8],
        share: &BlsSignatureShare,
    ) -> bool {
        let (Some(cell), Some(key)) = (
            self.share_lines.get(signer),
            self.public.public_shares.get(signer),
        ) else {
            return false;
        };
        let lines = cell.get_or_init(|| G2Prepared::from(*key));
        pairing_check(&share.0, &hash_to_g1(self.public.id, message), lines)
    }
}

/// A node's view of one BLS key set: the public key set (with cached verification data) and
/// its own secret share. Implements [`ThresholdSigner`].
#[derive(Clone, Debug)]
pub struct BlsThresholdSigner {
    verifier: Arc<BlsVerifier>,
    secret: BlsSecretShare,
}

impl BlsThresholdSigner {
    /// Checks that the secret share belongs to the key set (same id, index in range, `g₂^{s_i}`
    /// equal to the public share).
    pub fn new(public: Arc<BlsPublicKeySet>, secret: BlsSecretShare) -> Result<Self, BlsError> {
        Self::with_verifier(Arc::new(BlsVerifier::new(public)?), secret)
    }

    /// As [`BlsThresholdSigner::new`], sharing an existing verifier (and its caches).
    pub fn with_verifier(
        verifier: Arc<BlsVerifier>,
        secret: BlsSecretShare,
    ) -> Result<Self, BlsError> {
        let public = verifier.public();
        if secret.id != public.id {
            return Err(BlsError::KeySetMismatch {
                secret: secret.id,
                public: public.id,
            });
        }
        let expected = public
            .public_shares
            .get(secret.index)
            .ok_or(BlsError::IndexOutOfRange {
                index: secret.index,
                n: public.n,
            })?;
        if secret.public_share() != *expected {
            return Err(BlsError::SecretShareMismatch {
                index: secret.index,
            });
        }
        Ok(BlsThresholdSigner { verifier, secret })
    }

    pub fn public(&self) -> &Arc<BlsPublicKeySet> {
        self.verifier.public()
    }

    pub fn verifier(&self) -> &Arc<BlsVerifier> {
        &self.verifier
    }

    pub fn key_set(&self) -> KeySetId {
        self.verifier.public.id
    }
}

impl ThresholdSigner for BlsThresholdSigner {
    type Share = BlsSignatureShare;
    type Signature = BlsSignature;

    fn n(&self) -> usize {
        self.verifier.public.n
    }

    fn threshold(&self) -> usize {
        self.verifier.public.threshold
    }

    fn our_index(&self) -> SignerIndex {
        self.secret.index
    }

    fn sign_share(&self, message: &[u8]) -> BlsSignatureShare {
        self.secret.sign(message)
    }

    fn verify_share(&self, signer: SignerIndex, message: &[u8], share: &BlsSignatureShare) -> bool {
        self.verifier.verify_share(signer, message, share)
    }

    fn verify(&self, message: &[u8], signature: &BlsSignature) -> bool {
        self.verifier.verify(message, signature)
    }

    fn combine_unchecked(
        &self,
        shares: &[(SignerIndex, &BlsSignatureShare)],
    ) -> Result<BlsSignature, CombineError> {
        self.verifier.public.combine_unchecked(shares)
    }

    fn signature_bytes(&self, signature: &BlsSignature) -> Vec<u8> {
        signature.to_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shamir::interpolate;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};
    use std::collections::BTreeMap;

    fn dealt(
        id: KeySetId,
        n: usize,
        k: usize,
        seed: u64,
    ) -> (Arc<BlsPublicKeySet>, Vec<BlsThresholdSigner>) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (public, secrets) = deal(id, n, k, &mut rng).unwrap();
        public.validate().unwrap();
        let public = Arc::new(public);
        let verifier = Arc::new(BlsVerifier::new(public.clone()).unwrap());
        let signers = secrets
            .into_iter()
            .map(|s| BlsThresholdSigner::with_verifier(verifier.clone(), s).unwrap())
            .collect();
        (public, signers)
    }

    /// The dealt secret, recovered from all secret shares.
    fn group_secret(signers: &[BlsThresholdSigner]) -> Scalar {
        let shares: Vec<(usize, Scalar)> = signers
            .iter()
            .map(|s| (s.secret.index, s.secret.secret))
            .collect();
        interpolate(&shares, signers.len()).unwrap()
    }

    fn random_subset(n: usize, size: usize, rng: &mut ChaCha20Rng) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..size {
            let j = i + (rng.next_u64() as usize) % (n - i);
            all.swap(i, j);
        }
        all.truncate(size);
        all
    }

    #[test]
    fn thresholds_follow_protocols_md() {
        // n = 4, f = 1 and n = 64, f = 21.
        assert_eq!(KeySetId::Coin.threshold(4, 1), 2);
        assert_eq!(KeySetId::Reply.threshold(4, 1), 2);
        assert_eq!(KeySetId::Cbc.threshold(4, 1), 3); // ⌈6/2⌉
        assert_eq!(KeySetId::Quorum.threshold(4, 1), 3);
        assert_eq!(KeySetId::Cbc.threshold(7, 2), 5); // ⌈10/2⌉
        assert_eq!(KeySetId::Cbc.threshold(5, 1), 4); // ⌈7/2⌉
        assert_eq!(KeySetId::Cbc.threshold(64, 21), 43); // ⌈86/2⌉
        assert_eq!(KeySetId::Quorum.threshold(64, 21), 43);
        for n in 1..40 {
            for f in 0..=(n - 1) / 3 {
                assert_eq!(KeySetId::Cbc.threshold(n, f), (n + f + 1).div_ceil(2));
            }
        }
        let dsts: std::collections::BTreeSet<_> = KeySetId::ALL.iter().map(|id| id.dst()).collect();
        assert_eq!(dsts.len(), 4);
        assert!(KeySetId::ALL.iter().all(|id| id.dst().len() <= 255));
    }

    #[test]
    fn rfc9380_hash_to_g1_vectors() {
        // RFC 9380 appendix J.9.1, suite BLS12381G1_XMD:SHA-256_SSWU_RO_: pins the hashing
        // primitive our DSTs are fed to.
        const DST: &[u8] = b"QUUX-V01-CS02-with-BLS12381G1_XMD:SHA-256_SSWU_RO_";
        let cases: [(&[u8], &str, &str); 2] = [
            (
                b"",
                "052926add2207b76ca4fa57a8734416c8dc95e24501772c814278700eed6d1e4e8cf62d9c09db0fac349612b759e79a1",
                "08ba738453bfed09cb546dbb0783dbb3a5f1f566ed67bb6be0e8c67e2e81a4cc68ee29813bb7994998f3eae0c9c6a265",
            ),
            (
                b"abc",
                "03567bc5ef9c690c2ab2ecdf6a96ef1c139cc0b2f284dca0a9a7943388a49a3aee664ba5379a7655d3c68900be2f6903",
                "0b9c15f3fe6e5cf4211f346271d7b01c8f3b28be689c8429c85b67af215533311f0b8dfaaa154fa6b88176c229f2885d",
            ),
        ];
        for (msg, x, y) in cases {
            let p = G1Projective::hash_to_curve(msg, DST, &[]).to_affine();
            // Uncompressed encoding is x ‖ y, big-endian, flag bits clear for a finite point.
            assert_eq!(hex::encode(p.to_uncompressed()), format!("{x}{y}"));
        }
    }

    #[test]
    fn known_answer_signature_matches_raw_blst() {
        let secret = Scalar::from_bytes_be(
            &hex::decode("263dbd792f5b1be47ed85f8938c0f29586af0d3ac7b977f21c278fe1462040e3")
                .unwrap()
                .try_into()
                .unwrap(),
        )
        .unwrap();
        let share = BlsSecretShare {
            id: KeySetId::Coin,
            index: 0,
            secret,
        };
        let message = b"maftia known answer";
        let ours = share.sign(message);
        // Independent path: blst's own min-sig signing with the same key and DST.
        let raw_key = blst::min_sig::SecretKey::from_bytes(&secret.to_bytes_be()).unwrap();
        let raw = raw_key.sign(message, KeySetId::Coin.dst(), &[]);
        assert_eq!(ours.to_bytes(), raw.compress());
        assert_eq!(
            share.public_share().to_compressed(),
            raw_key.sk_to_pk().compress()
        );
        // Pinned (computed once, equal to blst's output above) so that any drift in hashing,
        // DST or encoding is caught.
        assert_eq!(
            hex::encode(ours.to_bytes()),
            "962265408b5453cbd50c2a9bed50b0b1ccb1e4fafbb10306d35c796f7270d3a4f926e5710c1ea1df7402ae963e9c3a90"
        );
        // A 1-of-1 key set verifies it and raw blst verifies ours.
        let public = BlsPublicKeySet {
            id: KeySetId::Coin,
            n: 1,
            threshold: 1,
            public_key: share.public_share(),
            public_shares: vec![share.public_share()],
        };
        public.validate().unwrap();
        let sig = public.combine_unchecked(&[(0, &ours)]).unwrap();
        assert!(public.verify(message, &sig));
        let raw_sig = blst::min_sig::Signature::from_bytes(&sig.to_bytes()).unwrap();
        assert_eq!(
            raw_sig.verify(
                true,
                message,
                KeySetId::Coin.dst(),
                &[],
                &raw_key.sk_to_pk(),
                true
            ),
            blst::BLST_ERROR::BLST_SUCCESS
        );
    }

    #[test]
    fn sign_verify_roundtrip() {
        let (public, signers) = dealt(KeySetId::Reply, 4, 2, 1);
        let msg = b"reply 17";
        let shares: BTreeMap<_, _> = signers
            .iter()
            .map(|s| (s.our_index(), s.sign_share(msg)))
            .collect();
        for (i, share) in &shares {
            assert!(signers[0].verify_share(*i, msg, share));
            assert!(public.verify_share(*i, msg, share));
        }
        let combined = signers[3].combine(msg, &shares).unwrap();
        assert!(combined.invalid_signers.is_empty());
        assert!(signers[1].verify(msg, &combined.signature));
        assert!(public.verify(msg, &combined.signature));
        assert!(!public.verify(b"reply 18", &combined.signature));
        // The group signature is H(m)^s for the dealt secret s.
        let expected = (G1Projective::from(hash_to_g1(KeySetId::Reply, msg))
            * group_secret(&signers))
        .to_affine();
        assert_eq!(combined.signature.0, expected);
        assert_eq!(
            public.public_key,
            (G2Projective::generator() * group_secret(&signers)).to_affine()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn any_k_shares_give_the_unique_signature(seed in any::<u64>(), n in 1usize..=7, k_frac in 0.0f64..1.0) {
            let k = 1 + ((n - 1) as f64 * k_frac) as usize;
            let (public, signers) = dealt(KeySetId::Quorum, n, k, seed);
            let msg = seed.to_le_bytes();
            let shares: Vec<BlsSignatureShare> = signers.iter().map(|s| s.sign_share(&msg)).collect();
            let expected = BlsSignature(
                (G1Projective::from(hash_to_g1(KeySetId::Quorum, &msg)) * group_secret(&signers)).to_affine(),
            );
            prop_assert!(public.verify(&msg, &expected));
            let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
            for _ in 0..3 {
                let subset = random_subset(n, k, &mut rng);
                let chosen: Vec<_> = subset.iter().map(|&i| (i, &shares[i])).collect();
                let sig = signers[0].combine_unchecked(&chosen).unwrap();
                prop_assert_eq!(sig, expected);
                // Through the robust path, with more than k shares.
                let extra = random_subset(n, (k + 1).min(n), &mut rng);
                let map: BTreeMap<_, _> = extra.iter().map(|&i| (i, shares[i])).collect();
                let combined = signers[n - 1].combine(&msg, &map).unwrap();
                prop_assert_eq!(combined.signature, expected);
                prop_assert!(combined.invalid_signers.is_empty());
            }
            // Public shares are the Feldman commitment evaluated at each node.
            let poly_check = G2Projective::from(public.public_shares[n - 1]);
            prop_assert_eq!(poly_check, G2Projective::generator() * signers[n - 1].secret.secret);
        }
    }

    #[test]
    fn fewer_than_k_shares_do_not_verify() {
        let (public, signers) = dealt(KeySetId::Cbc, 7, 5, 2);
        let msg = b"cbc echo";
        let shares: Vec<_> = signers.iter().map(|s| s.sign_share(msg)).collect();
        let chosen: Vec<_> = (1..5).map(|i| (i, &shares[i])).collect();
        let sig = public.combine_unchecked(&chosen).unwrap();
        assert!(!public.verify(msg, &sig));
        let map: BTreeMap<_, _> = (1..5).map(|i| (i, shares[i])).collect();
        assert_eq!(
            signers[0].combine(msg, &map),
            Err(CombineError::NotEnoughValidShares {
                valid: 4,
                needed: 5,
                invalid_signers: vec![]
            })
        );
    }

    #[test]
    fn robust_combine_reports_exactly_the_bad_signers() {
        let (_, signers) = dealt(KeySetId::Quorum, 7, 5, 3);
        let msg = b"aba main-vote";
        let mut shares: BTreeMap<_, _> = signers
            .iter()
            .map(|s| (s.our_index(), s.sign_share(msg)))
            .collect();
        // Signer 1: share on another message; signer 4: signer 5's share.
        shares.insert(1, signers[1].sign_share(b"other"));
        shares.insert(4, shares[&5]);
        let combined = signers[0].combine(msg, &shares).unwrap();
        assert_eq!(combined.invalid_signers, vec![1, 4]);
        assert!(signers[0].verify(msg, &combined.signature));
        // Two more bad shares: only 3 valid of 5 needed.
        shares.insert(0, signers[2].sign_share(msg));
        shares.insert(6, signers[6].sign_share(b"x"));
        assert_eq!(
            signers[0].combine(msg, &shares),
            Err(CombineError::NotEnoughValidShares {
                valid: 3,
                needed: 5,
                invalid_signers: vec![0, 1, 4, 6]
            })
        );
    }

    #[test]
    fn wrong_index_duplicates_and_foreign_shares_are_rejected() {
        let (public, signers) = dealt(KeySetId::Coin, 4, 2, 4);
        let msg = b"m";
        let s0 = signers[0].sign_share(msg);
        let s1 = signers[1].sign_share(msg);
        assert!(!signers[2].verify_share(1, msg, &s0));
        assert!(!signers[2].verify_share(4, msg, &s0));
        assert!(!public.verify_share(usize::MAX, msg, &s0));
        assert!(!signers[2].verify_share(0, b"n", &s0));
        assert_eq!(
            public.combine_unchecked(&[(0, &s0), (0, &s1)]),
            Err(CombineError::Interpolation(
                crate::shamir::InterpolationError::DuplicateIndex(0)
            ))
        );
        assert_eq!(
            public.combine_unchecked(&[(0, &s0), (4, &s1)]),
            Err(CombineError::IndexOutOfRange { index: 4, n: 4 })
        );
        assert_eq!(
            public.combine_unchecked(&[]),
            Err(CombineError::Interpolation(
                crate::shamir::InterpolationError::Empty
            ))
        );
        let out_of_range: BTreeMap<_, _> = [(0, s0), (1, s1), (9, s1)].into_iter().collect();
        assert_eq!(
            signers[0].combine(msg, &out_of_range),
            Err(CombineError::IndexOutOfRange { index: 9, n: 4 })
        );

        // Another key set with the same n (another deal, and another use).
        let (_, other) = dealt(KeySetId::Coin, 4, 2, 5);
        assert!(!signers[0].verify_share(0, msg, &other[0].sign_share(msg)));
        let (_, reply) = dealt(KeySetId::Reply, 4, 2, 4);
        assert!(!signers[0].verify_share(0, msg, &reply[0].sign_share(msg)));
        // Same secrets, different key-set id: the hashing domain alone separates them.
        let renamed = BlsPublicKeySet {
            id: KeySetId::Reply,
            ..(*public).clone()
        };
        let foreign = BlsSecretShare {
            id: KeySetId::Reply,
            index: 0,
            secret: signers[0].secret.secret,
        };
        assert!(renamed.verify_share(0, msg, &foreign.sign(msg)));
        assert!(!public.verify_share(0, msg, &foreign.sign(msg)));
        assert!(!renamed.verify_share(0, msg, &s0));

        // A signer cannot be built from a mismatched share.
        let mut wrong = signers[1].secret.clone();
        wrong.index = 0;
        assert_eq!(
            BlsThresholdSigner::new(public.clone(), wrong).unwrap_err(),
            BlsError::SecretShareMismatch { index: 0 }
        );
        assert!(matches!(
            BlsThresholdSigner::new(public.clone(), foreign.clone()),
            Err(BlsError::KeySetMismatch { .. })
        ));
    }

    #[test]
    fn tampered_signature_bytes_are_rejected() {
        let (public, signers) = dealt(KeySetId::Reply, 4, 2, 6);
        let msg = b"m";
        let map: BTreeMap<_, _> = (0..2).map(|i| (i, signers[i].sign_share(msg))).collect();
        let sig = signers[0].combine(msg, &map).unwrap().signature;
        let bytes = sig.to_bytes();
        for position in [0usize, 1, 20, 47] {
            for bit in [0u8, 3, 7] {
                let mut tampered = bytes;
                tampered[position] ^= 1 << bit;
                match BlsSignature::from_bytes(&tampered) {
                    Ok(t) => assert!(!public.verify(msg, &t)),
                    Err(e) => assert_eq!(e, BlsError::InvalidPoint),
                }
            }
        }
        // Flipping the sign bit (bit 5 of byte 0) gives −σ, a valid point that must not verify.
        let mut negated = bytes;
        negated[0] ^= 0x20;
        assert!(!public.verify(msg, &BlsSignature::from_bytes(&negated).unwrap()));
    }

    #[test]
    fn serde_roundtrips_and_garbage_is_an_error() {
        let (public, signers) = dealt(KeySetId::Cbc, 4, 3, 7);
        let share = signers[2].sign_share(b"m");
        // Binary (postcard).
        let bytes = postcard::to_allocvec(&*public).unwrap();
        assert_eq!(
            postcard::from_bytes::<BlsPublicKeySet>(&bytes).unwrap(),
            *public
        );
        let bytes = postcard::to_allocvec(&share).unwrap();
        assert_eq!(bytes.len(), 1 + SIGNATURE_BYTES);
        assert_eq!(
            postcard::from_bytes::<BlsSignatureShare>(&bytes).unwrap(),
            share
        );
        let secret_bytes = postcard::to_allocvec(&signers[2].secret).unwrap();
        assert_eq!(
            postcard::from_bytes::<BlsSecretShare>(&secret_bytes).unwrap(),
            signers[2].secret
        );
        // Human-readable (TOML): hex strings.
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct KeyFile {
            public: BlsPublicKeySet,
            secret: BlsSecretShare,
            share: BlsSignatureShare,
        }
        let file = KeyFile {
            public: (*public).clone(),
            secret: signers[2].secret.clone(),
            share,
        };
        let text = toml::to_string(&file).unwrap();
        assert!(text.contains(&hex::encode(public.public_key.to_compressed())));
        assert!(text.contains(&hex::encode(signers[2].secret.secret.to_bytes_be())));
        assert_eq!(toml::from_str::<KeyFile>(&text).unwrap(), file);
        // Debug never shows the secret.
        let debug = format!("{:?} {:?}", signers[2].secret, signers[2]);
        assert!(!debug.contains(&hex::encode(signers[2].secret.secret.to_bytes_be())));
        assert!(debug.contains("redacted"));

        // Garbage: short input, all zeros (no compression flag), the identity, random bytes,
        // and an on-curve point outside the prime-order subgroup.
        assert!(postcard::from_bytes::<BlsSignature>(&[48, 1, 2, 3]).is_err());
        assert_eq!(
            BlsSignature::from_bytes(&[0u8; 48]),
            Err(BlsError::InvalidPoint)
        );
        let mut identity = [0u8; 48];
        identity[0] = 0xc0;
        assert!(bool::from(
            G1Affine::from_compressed(&identity).unwrap().is_identity()
        ));
        assert_eq!(
            BlsSignatureShare::from_bytes(&identity),
            Err(BlsError::InvalidPoint)
        );
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let mut found_off_subgroup = false;
        for _ in 0..200 {
            let mut garbage = [0u8; 48];
            rng.fill_bytes(&mut garbage);
            garbage[0] = (garbage[0] & 0x1f) | 0x80; // compressed, finite, x < 2^381
            assert!(
                BlsSignature::from_bytes(&garbage).is_err(),
                "random bytes decoded"
            );
            let unchecked = Option::<G1Affine>::from(G1Affine::from_compressed_unchecked(&garbage));
            if let Some(p) = unchecked {
                if !bool::from(p.is_torsion_free()) {
                    found_off_subgroup = true;
                }
            }
        }
        assert!(found_off_subgroup);
        let mut hex_text = text.clone();
        hex_text = hex_text.replacen(&hex::encode(share.to_bytes())[..2], "zz", 1);
        assert!(toml::from_str::<KeyFile>(&hex_text).is_err());
        // Out-of-range secret scalar (≥ r): all 0xff.
        let mut bad_secret = secret_bytes.clone();
        let len = bad_secret.len();
        bad_secret[len - 32..].fill(0xff);
        assert!(postcard::from_bytes::<BlsSecretShare>(&bad_secret).is_err());
    }

    #[test]
    fn lagrange_basis_matches_shamir_and_interpolates_anywhere() {
        let indices = [3usize, 0, 5, 1];
        let basis = LagrangeBasis::new(&indices).unwrap();
        assert_eq!(
            basis.at(Scalar::ZERO),
            lagrange_coefficients::<Scalar>(&indices, 6).unwrap()
        );
        // p(x) = 2 + 3x + 5x^2 + 7x^3 through 4 points is recovered at x = 9 (node 8).
        let p = |x: Scalar| {
            Scalar::from(2u64)
                + x * (Scalar::from(3u64) + x * (Scalar::from(5u64) + x * Scalar::from(7u64)))
        };
        let at = basis.at(eval_point(8));
        let value: Scalar = indices
            .iter()
            .zip(&at)
            .map(|(&i, l)| p(eval_point(i)) * l)
            .sum();
        assert_eq!(value, p(Scalar::from(9u64)));
        assert!(LagrangeBasis::new(&[1, 1]).is_none());
    }

    #[test]
    fn larger_key_sets_validate_and_roundtrip() {
        for (id, n, k) in [
            (KeySetId::Cbc, 16, 11),
            (KeySetId::Coin, 31, 11),
            (KeySetId::Quorum, 10, 10),
        ] {
            let (public, signers) = dealt(id, n, k, n as u64);
            let bytes = postcard::to_allocvec(&*public).unwrap();
            assert_eq!(
                postcard::from_bytes::<BlsPublicKeySet>(&bytes).unwrap(),
                *public
            );
            let msg = b"large";
            let shares: BTreeMap<_, _> = signers
                .iter()
                .rev()
                .take(k)
                .map(|s| (s.our_index(), s.sign_share(msg)))
                .collect();
            assert!(public.verify(msg, &signers[0].combine(msg, &shares).unwrap().signature));
        }
    }

    #[test]
    fn invalid_public_key_sets_fail_validation_and_decoding() {
        let (public, _) = dealt(KeySetId::Quorum, 5, 3, 9);
        let public = (*public).clone();
        let g2 = G2Affine::generator();
        let mut bad_key = public.clone();
        bad_key.public_key = (G2Projective::from(bad_key.public_key) + g2).to_affine();
        assert_eq!(bad_key.validate(), Err(BlsError::PublicKeyMismatch));
        let mut bad_share = public.clone();
        bad_share.public_shares[4] =
            (G2Projective::from(bad_share.public_shares[4]) + g2).to_affine();
        assert_eq!(
            bad_share.validate(),
            Err(BlsError::ShareNotOnPolynomial { index: 4 })
        );
        // A wrong share among the first k also breaks the public-key interpolation.
        let mut bad_first = public.clone();
        bad_first.public_shares[0] = g2;
        assert!(bad_first.validate().is_err());
        let mut short = public.clone();
        short.public_shares.pop();
        assert_eq!(
            short.validate(),
            Err(BlsError::ShareCountMismatch {
                expected: 5,
                got: 4
            })
        );
        let mut threshold = public.clone();
        threshold.threshold = 6;
        assert_eq!(
            threshold.validate(),
            Err(BlsError::InvalidThreshold { threshold: 6, n: 5 })
        );
        threshold.threshold = 0;
        assert!(threshold.validate().is_err());
        // Lowering the threshold of a valid set is caught too: the shares are on a degree-2
        // polynomial, not degree 1.
        let mut lowered = public.clone();
        lowered.threshold = 2;
        assert!(lowered.validate().is_err());
        for bad in [bad_key, bad_share, short, lowered] {
            let bytes = postcard::to_allocvec(&bad).unwrap();
            assert!(postcard::from_bytes::<BlsPublicKeySet>(&bytes).is_err());
        }
        assert!(deal(KeySetId::Coin, 0, 1, &mut ChaCha20Rng::seed_from_u64(0)).is_err());
        assert!(deal(KeySetId::Coin, 3, 4, &mut ChaCha20Rng::seed_from_u64(0)).is_err());
    }
}
