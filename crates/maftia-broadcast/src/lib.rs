//! maftia-broadcast: the asynchronous configuration's broadcast and agreement protocols.
//!
//! Every protocol is a sans-IO [`maftia_core::Protocol`]: no clocks, sockets or randomness of
//! its own, so the simulator (`maftia-sim`) and the node run exactly the same code.
//!
//! - [`rbc`]: reliable broadcast — Bracha's protocol, and an erasure-coded AVID variant
//!   (Cachin–Tessaro 2005) for large payloads.
//! - [`cbc`]: consistent broadcast with a threshold-signature certificate (echo broadcast as in
//!   Cachin–Kursawe–Petzold–Shoup 2001).
//! - [`aba`]: randomized binary Byzantine agreement with a threshold coin and signed
//!   justifications (Cachin–Kursawe–Shoup 2000).
//! - [`mvba`]: multivalued validated Byzantine agreement with an external validity predicate
//!   (Cachin–Kursawe–Petzold–Shoup 2001): CBC proposals, commit sets, a coin-drawn candidate
//!   order and one binary agreement per candidate.
//! - [`abc`]: atomic broadcast in rounds of signed request batches ordered by MVBA
//!   (Cachin–Kursawe–Petzold–Shoup 2001, Sec. 4), with bounded deduplication.
//! - [`htabc`]: high-throughput atomic broadcast (Dumbo-NG, Gao et al. CCS 2022): per-node
//!   lanes of certified, hash-chained batches; MVBA epochs agree only on the lanes' certified
//!   heights.
//! - [`atomic`]: the atomic broadcast interface with the ordering mode chosen by configuration
//!   (CKPS01 rounds or the high-throughput lanes).
//! - [`scabc`]: secure causal atomic broadcast — ABC of TDH2-encrypted requests, decrypted with
//!   `f + 1` shares only after their position is fixed (Cachin–Kursawe–Petzold–Shoup 2001,
//!   Sec. 5).
//! - [`keys`]: the threshold key sets (coin, consistent broadcast, quorum) a node holds.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod aba;
pub mod abc;
pub mod atomic;
pub mod cbc;
pub mod htabc;
pub mod keys;
pub mod mvba;
pub mod rbc;
pub mod scabc;
use maftia_core::wire;

pub use keys::ThresholdKeys;
