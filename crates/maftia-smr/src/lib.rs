//! maftia-smr: the deterministic state machine every replicated maftia service implements.
//!
//! The replication manager ([`replica::ReplicationManager`]) feeds requests to a
//! [`StateMachine`] in the order the agreement layer delivers them, in either configuration
//! (asynchronous atomic broadcast or the wormhole protocols); the service code does not know
//! which. State machine replication (Schneider 1990) is correct only if every correct replica,
//! starting from the same state and executing the same request sequence, produces the same
//! replies and the same state. An implementation must therefore be **deterministic**:
//!
//! - **No clocks.** No `Instant::now`, `SystemTime`, timers or timeouts in service logic; a
//!   service that needs time receives it inside the ordered request.
//! - **No randomness of its own.** No `thread_rng`, no OS entropy; randomness, if needed, comes
//!   inside the ordered request (for instance from the threshold coin).
//! - **No hash-map iteration order.** Anything that is iterated, serialized, hashed or decides a
//!   reply uses `BTreeMap`/`BTreeSet` or sorted vectors; `HashMap` iteration order differs between
//!   processes.
//! - **No floating point** in anything that affects replies or state (results can differ across
//!   platforms and compiler flags).
//! - **No IO, threads or global state**, and no panics on any request: a malformed or
//!   over-limit request yields an error *reply* (which is itself deterministic), never a panic,
//!   so a Byzantine client cannot crash correct replicas.
//!
//! Snapshots are canonical: two replicas in the same state produce byte-identical snapshots,
//! and [`StateMachine::digest`] is a domain-separated hash of that encoding, so replicas can
//! agree on (and threshold-sign) a checkpoint digest, and a replica receiving a snapshot during
//! state transfer can check it against the certified digest before installing it.
//!
//! [`kv::KvStore`] is the first service on the trait: get, put, delete, compare-and-set, range
//! scan and an all-or-nothing multi-key transaction with preconditions.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod kv;
pub mod lincheck;
pub mod replica;
pub mod request;

/// A deterministic replicated service (see the crate documentation for the determinism rules).
///
/// Requests and replies are opaque bytes at this interface: the replication manager orders,
/// logs and certifies bytes, and the service decodes them with its own size-limited codec.
pub trait StateMachine {
    /// Why a snapshot could not be restored.
    type Error;

    /// Execute one ordered request and return the reply bytes. A malformed or over-limit request
    /// gets an error reply (and changes nothing); this method never panics.
    fn execute(&mut self, request: &[u8]) -> Vec<u8>;

    /// The canonical encoding of the whole state: equal states give byte-identical snapshots.
    fn snapshot(&self) -> Vec<u8>;

    /// Replace the state with the one encoded in `snapshot`, after validating it completely. On
    /// error the state is unchanged.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), Self::Error>;

    /// A domain-separated hash of [`StateMachine::snapshot`]'s encoding.
    fn digest(&self) -> [u8; 32];
}
