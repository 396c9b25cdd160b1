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
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod hash;
pub mod shamir;
pub mod threshold;
