//! maftia-core: the vocabulary every maftia protocol speaks.
//!
//! - [`NodeId`] names a replica; [`GroupConfig`] holds a validated `n`, `f` and the
//!   thresholds derived from them (PROTOCOLS.md, "Threshold key sets").
//! - [`Protocol`] is the sans-IO state-machine interface: inputs and messages go in, a
//!   [`Step`] (targeted messages, outputs, fault evidence) comes out. No clocks, sockets or
//!   randomness source live in a protocol; randomness is passed in by the caller.
//! - [`codec`] is the one wire encoding: a versioned envelope around postcard with a hard size
//!   limit; decoding is total and returns typed [`codec::DecodeError`]s; [`wire`] holds the fast
//!   serde paths for byte strings inside messages.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod codec;
pub mod config;
pub mod id;
pub mod protocol;
pub mod wire;

pub use config::{ConfigError, GroupConfig, Resilience};
pub use id::NodeId;
pub use protocol::{Fault, Protocol, ProtocolStep, Step, Target, TargetedMessage};
