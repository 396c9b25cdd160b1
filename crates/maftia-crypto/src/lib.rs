//! maftia-crypto: every cryptographic operation maftia performs.
//!
//! Group arithmetic, pairings, Ed25519 and hashing come from vetted crates (`blstrs` on `blst`
//! for BLS12-381, `curve25519-dalek`, `ed25519-dalek`, `blake3`); this crate implements the
//! threshold *schemes* on top of them, with known-answer and adversarial tests:
//!
//! - [`hash`]: domain-separated hashing — every hash and signature names its use.
//! - [`shamir`]: Shamir secret sharing with Feldman commitments, Lagrange interpolation.
//! - [`threshold`]: the narrow [`threshold::ThresholdSigner`] trait protocols use, and the
//!   robust combining rule shared by every implementation.
//! - [`bls`]: `(k, n)` threshold BLS signatures on BLS12-381 (signatures in G1), one key set
//!   per use ([`bls::KeySetId`]), trusted-dealer key generation.
//! - [`coin`]: the threshold coin (Cachin–Kursawe–Shoup 2000) over any
//!   [`threshold::ThresholdSigner`]: coin values, bits, indices and permutations.
//! - [`identity`]: Ed25519 node and client identities, domain-separated, with batch verification.
//! - [`tdh2`]: TDH2 labeled CCA-secure threshold encryption over Ristretto255 (Shoup–Gennaro).
//! - [`keygen`]: trusted-dealer key generation for a group, and the versioned TOML key files.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod bls;
pub mod coin;
pub mod hash;
pub mod identity;
pub mod keyfile;
pub mod keygen;
pub mod shamir;
pub mod tdh2;
pub mod threshold;
