//! maftia-net: the MN (multipoint network) layer — authenticated, encrypted, reliable links
//! between the replicas of one group, with bounded non-blocking multipoint send.
//!
//! # What it guarantees
//!
//! Under the assumptions that Ed25519, X25519, ChaCha20-Poly1305 and BLAKE2s are secure and that
//! the group file's identity keys are authentic:
//!
//! - **Authentication and secrecy.** A frame delivered as `Incoming { from: j, .. }` was sent by
//!   the process holding node `j`'s identity key, in this group, on a channel nobody else can
//!   read or alter ([`handshake`]). Connections from unknown keys, from a known key claiming
//!   another id, from another group, to the wrong node, or from ourselves are refused, logged
//!   (`tracing` warn with the peer address) and counted per [`RefusalReason`].
//! - **Integrity and replay protection.** Each record is an AEAD message under a per-direction
//!   nonce counter: a replayed, reordered, truncated or altered record fails to decrypt and
//!   closes the connection; it is counted as a protocol violation of the authenticated peer.
//! - **Reliable links.** Per link (ordered pair of nodes) and while both processes live, every
//!   frame [`Network::send`] accepted for a correct peer is delivered to it **exactly once and in
//!   order**, despite connections dropping: the dialer reconnects (exponential backoff with
//!   jitter) and resends exactly the unacknowledged suffix; the receiver drops duplicates.
//!   Across a restart, [`Network::shutdown`] returns a [`LinkState`] that a new `Network` with
//!   the same incarnation resumes from (same guarantee). A restart *without* it (a crash, or a
//!   new incarnation) resets the links of that node: frames in flight to or from the old
//!   process may be lost, or — if the old process delivered them without acknowledging —
//!   delivered again to the new process; the links then work as before. (Reusing the old
//!   incarnation without its state is tolerated too: the peers tell the new process where its
//!   old streams stood and it renumbers its queue from there, see [`link::Outgoing::resume`].)
//!   The protocols above must catch up (state transfer) after a restart; this layer persists
//!   nothing.
//! - **Timeouts only affect liveness.** Deadlines (handshake, idle connection, backoff) close
//!   or delay connections; nothing a timer does can reorder, duplicate or forge a frame, as
//!   DESIGN.md requires of the asynchronous configuration.
//! - **Address claims.** A dialer states which node it meant to reach and the acceptor checks
//!   it; the dialer checks that the acceptor is the node it dialed. Source IP addresses are not
//!   checked (NAT, multi-homed hosts): the identity key is what authenticates.
//! - **Bounded memory, no head-of-line blocking between peers.** Each peer has a send queue
//!   bounded in frames and bytes ([`NetLimits`]); it holds every frame until acknowledged (it is
//!   also the retransmit buffer). [`Network::send`] never blocks: a frame for a peer whose
//!   queue is full is *refused for that peer* and reported in [`SendReport::refused`] (and in
//!   [`PeerStats::refused_sends`]) while the other recipients get it. **The caller applies
//!   backpressure upstream** (stops taking client requests while a correct quorum's queues are
//!   full); a frame refused for a peer is simply not sent to it, so protocols treat it like a
//!   message still in flight and rely on their own retransmission/catch-up if it matters.
//!   One connection task per direction per peer, so a peer that stops reading stalls only its
//!   own queue. Receive side: frames go into one channel bounded both in frames
//!   ([`NetLimits::incoming_capacity`]) and in payload bytes ([`NetLimits::incoming_max_bytes`],
//!   64 MiB by default). A connection task takes `payload.len()` bytes of that budget, then a
//!   slot, before it puts a frame on the channel, and the [`Incoming`] carries the bytes until
//!   the application drops it. When the application does not keep up, connection tasks wait for
//!   budget or a slot without reading their sockets (TCP backpressure), so the receive side
//!   holds at most `incoming_max_bytes` of delivered frames plus, per connection, one frame
//!   being reassembled or waiting for budget. Every frame fits the budget (`incoming_max_bytes`
//!   at least `max_frame_size` is checked at start). Tokio's semaphore (the budget) and bounded
//!   channel both serve waiting tasks in FIFO order without barging, and each connection task
//!   waits for one frame at a time, so each peer gets its turn: one flooding peer cannot starve
//!   the others. The budget is shared, not partitioned: one peer may fill all of it while nobody
//!   else sends (nothing is wasted when only one peer is busy), but a frame of another peer that
//!   starts waiting gets its budget as soon as the application has dropped enough frames for it
//!   and for at most one frame of each peer queued before it. It thus waits for at most the
//!   budget plus `n - 2` frames of `max_frame_size` bytes to be consumed, never indefinitely; a
//!   big frame is never overtaken by later small ones. Unauthenticated inbound connections are
//!   capped ([`NetLimits::max_pending_handshakes`], about 2 KB each) and must finish the handshake
//!   before a deadline; each authenticated peer has at most one inbound connection (a newer one
//!   replaces it), whose reassembly buffer is at most one frame ([`NetLimits::max_frame_size`]).
//!
//! # Design choices
//!
//! - **Noise `XX` via `snow`, not mutual TLS.** Replicas already have Ed25519 identities from
//!   `maftia keygen`; binding a fresh per-process X25519 Noise static key to them with one
//!   signature (the libp2p-noise construction) needs no certificates, no X.509 parsing and no
//!   CA, and `snow`'s pure-Rust resolver (X25519, ChaCha20-Poly1305, BLAKE2s) keeps the
//!   dependency tree small and free of C code. The fresh static key per start limits the damage
//!   of a leaked transport key to one process lifetime.
//! - **Two unidirectional streams per pair.** Node `i` dials `j` for *its* stream to `j`; the
//!   connection `j` dialed carries `j`'s stream to `i` and `i`'s acknowledgements back. Only the
//!   dialer reconnects, so there is no simultaneous-open race to resolve, and the resume point is
//!   simply the receiver's next expected number, sent as the first record after the handshake.
//! - **Caller-owned serialization.** `send` takes the already-encoded `Bytes` once and shares it
//!   among all recipients; only encryption is per peer. [`Recipients`] maps one-to-one onto
//!   `maftia_core::Target`, including self-delivery (a send that names our own id puts the
//!   payload straight on our incoming channel, refused like any peer when that channel or the
//!   byte budget is full).
//! - The wire codecs are pure functions in [`frame`] (fuzzable); the reliable-link bookkeeping
//!   is IO-free in [`link`].
//!
//! # Cost
//!
//! Per connection: one Noise `XX` handshake (4 X25519 operations) plus one Ed25519 signature and
//! verification per side. Per frame and recipient: one ChaCha20-Poly1305 pass over the payload
//! per 65 KB chunk, 4 + 17 + 16 bytes of overhead per chunk, and one copy into the socket buffer.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod frame;
pub mod handshake;
pub mod link;
mod network;

pub use handshake::RefusalReason;
pub use link::LinkState;
pub use network::Network;

use bytes::Bytes;
use maftia_core::{NodeId, Target};
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_crypto::keygen::{GroupPublic, NodeSecret};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Hash context of the group tag derived by [`group_tag`].
pub const GROUP_TAG_CONTEXT: &str = "maftia 2026-11 net group tag";

/// The tag that identifies a group on the wire: a hash of its size, resilience and every node's
/// identity key. Nodes with different group files never accept each other.
pub fn group_tag(group: &GroupPublic) -> [u8; 32] {
    let n = (group.n as u64).to_be_bytes();
    let f = (group.f as u64).to_be_bytes();
    let keys: Vec<[u8; 32]> = group.identities.iter().map(|k| k.to_bytes()).collect();
    let mut parts: Vec<&[u8]> = vec![&n, &f];
    parts.extend(keys.iter().map(|k| k.as_slice()));
    maftia_crypto::hash::hash(GROUP_TAG_CONTEXT, &parts)
}

/// Limits and timers of the network layer. The defaults suit a LAN or WAN replica group.
#[derive(Debug, Clone)]
pub struct NetLimits {
    /// Largest application frame (at most [`frame::MAX_FRAME_SIZE`]).
    pub max_frame_size: usize,
    /// Per-peer send queue (unacknowledged frames), in frames.
    pub queue_max_frames: usize,
    /// Per-peer send queue (unacknowledged frames), in payload bytes.
    pub queue_max_bytes: usize,
    /// Capacity of the incoming channel (frames).
    pub incoming_capacity: usize,
    /// Byte budget of the receive side: the payload bytes of every received frame the
    /// application has not dropped yet (in the incoming channel, or held as an [`Incoming`])
    /// stay at or below this. Must be at least `max_frame_size` (so that every frame fits) and
    /// at most `tokio::sync::Semaphore::MAX_PERMITS`.
    pub incoming_max_bytes: usize,
    /// Deadline for TCP connect.
    pub connect_timeout: Duration,
    /// Deadline for the whole handshake (including the resume record).
    pub handshake_timeout: Duration,
    /// Most inbound connections allowed to be in the handshake at once; more are closed at once.
    pub max_pending_handshakes: usize,
    /// First reconnect delay; doubles after every failure up to `backoff_max`, with jitter
    /// (each delay is uniform in `[d/2, d]`).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Seed of the jitter RNG (`None`: from the OS).
    pub backoff_seed: Option<u64>,
    /// A link that sent nothing for this long sends a keepalive (the acceptor repeats its ack).
    pub keepalive_interval: Duration,
    /// A connection that received nothing for this long is closed (must exceed
    /// `keepalive_interval`).
    pub idle_timeout: Duration,
}

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            max_frame_size: frame::MAX_FRAME_SIZE,
            queue_max_frames: 8192,
            queue_max_bytes: 64 << 20,
            incoming_capacity: 4096,
            incoming_max_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            max_pending_handshakes: 32,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            backoff_seed: None,
            keepalive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything a [`Network`] needs.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub our_id: NodeId,
    /// Address to listen on (ignored by [`Network::start_on`]).
    pub listen: SocketAddr,
    /// The peers we exchange frames with and where to dial them (our own id must not be here).
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Every node's identity key, indexed by node id (the group file's `identities`).
    pub identities: Arc<Vec<IdentityPublicKey>>,
    /// Our identity secret key (must match `identities[our_id]`).
    pub identity: IdentityKey,
    /// See [`group_tag`].
    pub group_tag: [u8; 32],
    /// Chosen at process start; peers reset our streams when it changes. A restart that resumes
    /// a [`LinkState`] must keep it; any other start should use a fresh random value (the
    /// default of [`NetConfig::from_keys`]).
    pub incarnation: u64,
    pub limits: NetLimits,
    /// Link state of the previous run to resume (see [`Network::shutdown`]).
    pub resume: Option<LinkState>,
}

impl NetConfig {
    /// Configuration from `maftia keygen` files (`maftia_crypto::keygen::load_node`), with a
    /// random incarnation and default limits.
    pub fn from_keys(
        group: &GroupPublic,
        secret: &NodeSecret,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> Self {
        // Node indices are below keygen::MAX_NODES (1024), so they fit a u16.
        let our_id = NodeId(secret.index as u16);
        NetConfig {
            our_id,
            listen,
            peers,
            identities: Arc::new(group.identities.clone()),
            identity: secret.identity.clone(),
            group_tag: group_tag(group),
            incarnation: rand::random(),
            limits: NetLimits::default(),
            resume: None,
        }
    }
}

/// Who a frame goes to; mirrors `maftia_core::Target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    /// Every configured peer and ourselves.
    All,
    /// Every configured peer.
    Others,
    One(NodeId),
    Many(BTreeSet<NodeId>),
}

impl From<&Target> for Recipients {
    fn from(target: &Target) -> Self {
        match target {
            Target::All => Recipients::All,
            Target::Others => Recipients::Others,
            Target::Node(id) => Recipients::One(*id),
            Target::Nodes(ids) => Recipients::Many(ids.clone()),
        }
    }
}

/// A frame received from an authenticated peer (or from ourselves).
///
/// It holds `payload.len()` bytes of the receive budget ([`NetLimits::incoming_max_bytes`])
/// until it is dropped, together with its clones, which share the hold (moving `payload` out
/// releases the budget when the rest of the value goes out of scope). Frames the application
/// keeps therefore slow the peers down: drop them, or copy what must be kept, promptly.
#[derive(Clone)]
pub struct Incoming {
    pub from: NodeId,
    pub payload: Bytes,
    /// The bytes of the receive budget this frame holds (released on drop).
    _budget: Arc<network::BudgetHold>,
}

impl PartialEq for Incoming {
    /// Frames are equal when sender and payload are; the budget hold is not part of the value.
    fn eq(&self, other: &Self) -> bool {
        self.from == other.from && self.payload == other.payload
    }
}

impl Eq for Incoming {}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("from", &self.from)
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

/// The outcome of one [`Network::send`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendReport {
    /// Recipients whose queue (or, for ourselves, the incoming channel) was full: the frame was
    /// not queued for them.
    pub refused: Vec<NodeId>,
    /// Recipients that are neither us nor a configured peer.
    pub unknown: Vec<NodeId>,
}

impl SendReport {
    /// Whether every recipient got the frame queued.
    pub fn all_queued(&self) -> bool {
        self.refused.is_empty() && self.unknown.is_empty()
    }
}

/// Counters of one peer (monotonic unless noted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Our outgoing connection to the peer is authenticated and up (gauge).
    pub outbound_connected: bool,
    /// The peer's connection to us is authenticated and up (gauge).
    pub inbound_connected: bool,
    /// Frames handed to the peer's connection for writing (retransmissions included) and their
    /// payload bytes.
    pub frames_sent: u64,
    pub bytes_sent: u64,
    /// Frames written again after a reconnect.
    pub frames_retransmitted: u64,
    /// Frames the peer acknowledged.
    pub frames_acked: u64,
    /// Frames delivered from the peer and their payload bytes.
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Frames from the peer dropped as already delivered.
    pub duplicates_dropped: u64,
    /// Send queue depth (gauge): frames and bytes not yet acknowledged.
    pub queue_frames: usize,
    pub queue_bytes: usize,
    /// Frames refused because the queue was full.
    pub refused_sends: u64,
    /// Outgoing connections re-established after the first.
    pub reconnects: u64,
    /// Connections closed because the authenticated peer broke the protocol (undecryptable or
    /// malformed record, oversized frame, out-of-order data, impossible ack): evidence.
    pub protocol_violations: u64,
}

/// A snapshot of the network layer's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetStats {
    pub our_id: NodeId,
    pub incarnation: u64,
    pub peers: BTreeMap<NodeId, PeerStats>,
    /// Connections refused before or during authentication, per reason (inbound and outbound).
    pub refused_handshakes: BTreeMap<RefusalReason, u64>,
    /// Frames sent to ourselves and delivered, or refused (incoming channel full or byte
    /// budget exhausted).
    pub self_delivered: u64,
    pub self_refused: u64,
    /// Payload bytes of received frames holding the receive budget (gauge): in the incoming
    /// channel, or handed to the application and not dropped yet. Never above
    /// [`NetLimits::incoming_max_bytes`].
    pub incoming_bytes_queued: usize,
}

impl NetStats {
    pub fn refused_total(&self) -> u64 {
        self.refused_handshakes.values().sum()
    }

    pub fn refused(&self, reason: RefusalReason) -> u64 {
        self.refused_handshakes.get(&reason).copied().unwrap_or(0)
    }
}

/// The network could not start.
#[derive(Debug, Error)]
pub enum NetError {
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("invalid network configuration: {0}")]
    Config(String),
    #[error("cannot set up the Noise handshake: {0}")]
    Noise(#[from] handshake::HandshakeError),
}

/// A frame could not be sent at all.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SendError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
}

#[cfg(test)]
mod tests {
    use super::*;
    use maftia_crypto::keygen::deal_group;
    use rand::SeedableRng;

    #[test]
    fn config_from_keygen_files_matches_the_group() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let (group, secrets) = deal_group(4, 1, &mut rng).unwrap();
        let listen: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let config = NetConfig::from_keys(&group, &secrets[2], listen, BTreeMap::new());
        assert_eq!(config.our_id, NodeId(2));
        assert_eq!(config.identities[2], config.identity.public());
        assert_eq!(config.group_tag, group_tag(&group));
        // Incarnations are random per start; the tag is a function of the group only.
        let again = NetConfig::from_keys(&group, &secrets[2], listen, BTreeMap::new());
        assert_ne!(config.incarnation, again.incarnation);
        let (other, _) = deal_group(4, 1, &mut rng).unwrap();
        assert_ne!(group_tag(&other), group_tag(&group));
    }
}
