//! Durability by deterministic replay: the [`DurableReplica`] driver.
//!
//! # What it guarantees
//! DESIGN.md rule 5, "durable before acknowledged": a replica never sends a message before the
//! events that made it send that message are on disk. A replica killed at any point (SIGKILL,
//! power loss after the fsync) restarts, replays its log and regenerates **byte for byte** the
//! messages it had sent, so it can never contradict (equivocate on) what it said before the
//! crash, and it delivers the same sequence it had delivered.
//!
//! # How
//! The protocols are deterministic sans-IO state machines ([`maftia_core::Protocol`]), so a
//! replica's state is a function of the ordered sequence of events it processed — local inputs
//! and `(from, message bytes)` pairs — and of its random number generator. The driver keeps a
//! [`redb`] database with three tables:
//! - `meta`: format version, a digest of the group and instance the data belongs to, our id, a
//!   32-byte RNG seed drawn from the OS on first start and persisted, an incarnation counter
//!   bumped at every start (the network layer uses it to tell a restarted peer from a resumed
//!   connection);
//! - `events`: `u64` index → encoded event (the write-ahead log);
//! - `delivered`: `u64` height → encoded delivery and the running digest chain
//!   `chain_h = H(chain_{h-1}, h, delivery_h)`.
//!
//! [`DurableReplica::process_batch`] handles events in batches (group commit):
//! 1. validate every event — a frame that does not decode with the wire codec, or that comes from
//!    a non-member or from ourselves, is evidence against its sender and is **not** logged;
//! 2. append the valid events to `events` and commit with `Durability::Immediate` (one fsync per
//!    batch);
//! 3. only then feed them, in order, to the protocol, with a ChaCha20 RNG seeded from the
//!    persisted seed (so a replay draws the same randomness); a message the protocol addresses to
//!    its own node is handled at once, before the next event, so self-delivery is a
//!    deterministic function of the log and is not logged;
//! 4. append the deliveries with their digest chain (committed without an fsync: they are a
//!    function of the log, and a replay rewrites any that were lost);
//! 5. return the produced messages, encoded once, for the caller to hand to the network.
//!
//! On [`DurableReplica::open`] the whole event log is replayed through a freshly built protocol
//! instance (progress is logged for long replays). Every delivery the replay produces must equal
//! the stored one at that height; a mismatch means the log, the database or the binary changed
//! underneath and is a fatal [`DurableError::Corruption`] — never silently "fixed".
//!
//! # Re-sending and catching up
//! The driver keeps a bounded per-peer *outbox* of the most recent frames it sent to each peer
//! ([`DurableOptions::outbox_frames`] / [`DurableOptions::outbox_bytes`]); a replay rebuilds it.
//! After a restart the runtime re-sends the outbox (frames the crash may have cut off in flight;
//! peers treat duplicates idempotently), and when a restarted peer asks for it
//! ([`DurableReplica::outbox_for`]) it re-sends what that peer may have lost. Older frames are of
//! no use anyway: the atomic broadcast keeps only a few delivered rounds alive for laggards
//! (`maftia_broadcast::abc::RETAINED_ROUNDS`); a replica further behind installs a certified
//! checkpoint instead.
//!
//! # State transfer
//! [`DurableReplica::skip`] logs a jump forward (the caller installed the service state of a
//! certified checkpoint; the protocol skips to the matching point, [`SkipForward`]) as an event
//! like any other, with an fsync before it is applied, so a replay repeats it at the same place;
//! the deliveries it skipped are simply absent from `delivered`. The latest skip is also kept in
//! `meta` ([`DurableReplica::read_base`]) so that the caller can rebuild its service state from
//! the certified snapshot before re-executing the deliveries after it.
//!
//! # Limits
//! The log is never truncated: the protocol instance is rebuilt by replaying it from the start,
//! and atomic broadcast has no snapshot of its own mid-round state. Replay time therefore grows
//! with the replica's age. Faults reported during a replay are returned for the metrics but were
//! already logged by the previous incarnation.
use bytes::Bytes;
use maftia_core::codec;
use maftia_core::{Fault, NodeId, Protocol};
use maftia_crypto::hash::{hash, Digest};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use thiserror::Error;

/// Version of the database layout; a database of another version is refused.
pub const FORMAT_VERSION: u32 = 1;
/// Hash context of the delivery digest chain.
pub const CHAIN_CONTEXT: &str = "maftia 2026-11 node delivery chain";
/// Replay progress is logged every this many events.
const REPLAY_LOG_EVERY: u64 = 10_000;
/// Events read from the log at a time during a replay.
const REPLAY_CHUNK: u64 = 4096;
/// Faults of a replay kept for the caller (the rest are dropped: they were reported before).
const MAX_REPLAY_FAULTS: usize = 10_000;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const DELIVERED: TableDefinition<u64, &[u8]> = TableDefinition::new("delivered");

const META_FORMAT: &str = "format";
const META_GROUP: &str = "group";
const META_OUR_ID: &str = "our_id";
const META_SEED: &str = "rng_seed";
const META_INCARNATION: &str = "incarnation";
const META_BASE: &str = "base";

const EVENT_INPUT: u8 = 1;
const EVENT_MESSAGE: u8 = 2;
const EVENT_SKIP: u8 = 3;

/// What the driver needs from a protocol's outputs: a canonical encoding (stored and chained)
/// and how many client requests an output delivers (for status).
pub trait DurableOutput {
    fn encode_output(&self) -> Vec<u8>;
    fn request_count(&self) -> usize;
}

impl DurableOutput for maftia_broadcast::abc::AbcDelivery {
    /// `round (u64 LE) ‖ count (u64 LE) ‖ (len (u64 LE) ‖ request)*`.
    fn encode_output(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(16 + self.requests.iter().map(|r| r.len() + 8).sum::<usize>());
        out.extend_from_slice(&self.round.to_le_bytes());
        out.extend_from_slice(&(self.requests.len() as u64).to_le_bytes());
        for request in &self.requests {
            out.extend_from_slice(&(request.len() as u64).to_le_bytes());
            out.extend_from_slice(request);
        }
        out
    }
    fn request_count(&self) -> usize {
        self.requests.len()
    }
}

/// The round and requests of an [`maftia_broadcast::abc::AbcDelivery`] encoded by
/// [`DurableOutput::encode_output`]; `None` if the bytes are not such an encoding.
pub fn decode_abc_delivery(encoded: &[u8]) -> Option<(u64, Vec<Vec<u8>>)> {
    let read_u64 = |bytes: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    let round = read_u64(encoded, 0)?;
    let count = read_u64(encoded, 8)?;
    let mut at = 16usize;
    // Each request takes at least its 8-byte length, so `count` is bounded by the input size.
    let mut requests = Vec::with_capacity(usize::try_from(count).ok()?.min(encoded.len() / 8));
    for _ in 0..count {
        let len = usize::try_from(read_u64(encoded, at)?).ok()?;
        at = at.checked_add(8)?;
        let end = at.checked_add(len)?;
        requests.push(encoded.get(at..end)?.to_vec());
        at = end;
    }
    (at == encoded.len()).then_some((round, requests))
}

/// A jump forward of the log (state transfer, [`DurableReplica::skip`]): the height and chain head
/// of the first delivery after it, and the caller's payload (the certified snapshot) from which
/// it rebuilds its service state. The latest one is kept in the meta table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    pub height: u64,
    pub chain: Digest,
    pub payload: Vec<u8>,
}

impl Base {
    /// `height (u64 LE) ‖ chain ‖ payload`.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.payload.len());
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&self.chain);
        out.extend_from_slice(&self.payload);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Base, DurableError> {
        let corrupt = || DurableError::Corrupt("meta base is shorter than 40 bytes".into());
        let height = bytes.get(..8).ok_or_else(corrupt)?;
        let chain = bytes.get(8..40).ok_or_else(corrupt)?;
        Ok(Base {
            height: meta_u64(height, "base height")?,
            chain: chain.try_into().map_err(|_| corrupt())?,
            payload: bytes[40..].to_vec(),
        })
    }
}

/// A protocol that can jump forward to a later point of its run (state transfer): the caller
/// has installed the state at that point from elsewhere.
pub trait SkipForward: Protocol {
    /// Move the instance forward to `point` (the protocol's own encoding of where to resume),
    /// keeping what it holds for the rounds from there on.
    fn skip_forward(
        &mut self,
        point: &[u8],
        rng: &mut dyn RngCore,
    ) -> Result<maftia_core::ProtocolStep<Self>, String>;
}

impl<S: maftia_crypto::threshold::ThresholdSigner + Send + Sync + 'static> SkipForward
    for maftia_broadcast::atomic::AtomicBroadcast<S>
{
    /// `point` is a codec-encoded [`maftia_broadcast::abc::ResumePoint`].
    fn skip_forward(
        &mut self,
        point: &[u8],
        rng: &mut dyn RngCore,
    ) -> Result<maftia_core::ProtocolStep<Self>, String> {
        let point: maftia_broadcast::abc::ResumePoint =
            codec::decode(point).map_err(|e| e.to_string())?;
        self.skip_to(&point, rng).map_err(|e| e.to_string())
    }
}

impl<S: maftia_crypto::threshold::ThresholdSigner> SkipForward for maftia_broadcast::abc::Abc<S> {
    /// `point` is a codec-encoded [`maftia_broadcast::abc::ResumePoint`].
    fn skip_forward(
        &mut self,
        point: &[u8],
        rng: &mut dyn RngCore,
    ) -> Result<maftia_core::ProtocolStep<Self>, String> {
        let point: maftia_broadcast::abc::ResumePoint =
            codec::decode(point).map_err(|e| e.to_string())?;
        self.skip_to(&point, rng).map_err(|e| e.to_string())
    }
}

/// One event for the replica: a local input or a frame received from a peer.
#[derive(Clone, Debug)]
pub enum Event<I> {
    Input(I),
    Message { from: NodeId, frame: Bytes },
}

/// A message to send: the encoded frame (encoded once) and who it is for. Never addressed to
/// ourselves — the driver has already handled our own copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub to: Vec<NodeId>,
    pub frame: Bytes,
}

/// One delivered output with its height and digest-chain head.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivered<O> {
    pub height: u64,
    pub output: O,
    pub chain: Digest,
}

/// Why a received frame was refused before logging.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The frame does not decode as a protocol message.
    Undecodable(codec::DecodeError),
    /// The sender is not a member of the group.
    NotAMember,
    /// A frame claiming to come from ourselves over the network.
    FromSelf,
}

impl Rejection {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Undecodable(_) => "Undecodable",
            Rejection::NotAMember => "NotAMember",
            Rejection::FromSelf => "FromSelf",
        }
    }
}

/// What one batch produced.
pub struct BatchOutcome<P: Protocol> {
    /// Messages to hand to the network, in the order produced.
    pub outgoing: Vec<Outgoing>,
    /// New deliveries, by increasing height.
    pub delivered: Vec<Delivered<P::Output>>,
    /// Evidence reported by the protocol.
    pub faults: Vec<Fault<P::FaultKind>>,
    /// Frames refused before logging (evidence against the sender).
    pub rejected: Vec<(NodeId, Rejection)>,
    /// The result of each input event of the batch, in order.
    pub input_results: Vec<Result<(), P::Error>>,
}

impl<P: Protocol> Default for BatchOutcome<P> {
    fn default() -> Self {
        BatchOutcome {
            outgoing: Vec::new(),
            delivered: Vec::new(),
            faults: Vec::new(),
            rejected: Vec::new(),
            input_results: Vec::new(),
        }
    }
}

/// What opening (and replaying) the database found.
pub struct Recovery<P: Protocol> {
    /// This start's incarnation (1 on a fresh database).
    pub incarnation: u64,
    /// Events replayed.
    pub replayed_events: u64,
    /// Deliveries the replay produced (all checked against the stored ones).
    pub replayed_deliveries: u64,
    /// The outbox after the replay: the most recent frames to each peer, to re-send.
    pub resend: Vec<(NodeId, Vec<Bytes>)>,
    /// Evidence the replay reported again (at most 10 000 entries).
    pub faults: Vec<Fault<P::FaultKind>>,
}

/// Tuning of the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurableOptions {
    /// Most frames kept per peer in the outbox.
    pub outbox_frames: usize,
    /// Most bytes kept per peer in the outbox.
    pub outbox_bytes: usize,
}

impl Default for DurableOptions {
    /// 4096 frames or 32 MiB per peer.
    fn default() -> Self {
        DurableOptions {
            outbox_frames: 4096,
            outbox_bytes: 32 << 20,
        }
    }
}

#[derive(Debug, Error)]
pub enum DurableError {
    #[error("database: {0}")]
    Database(#[from] redb::Error),
    #[error("the data directory belongs to {what}; refusing to use it (choose another data_dir)")]
    WrongOwner { what: String },
    #[error("database format version {found}, this build reads version {FORMAT_VERSION}")]
    Format { found: u32 },
    #[error("corrupt database: {0}")]
    Corrupt(String),
    #[error(
        "replay diverged at delivery {height}: the stored delivery differs from the replayed one \
         (the log, the database or the protocol code changed); refusing to run"
    )]
    Corruption { height: u64 },
    #[error("cannot encode an event: {0}")]
    Encode(String),
}

fn db<T, E: Into<redb::Error>>(result: Result<T, E>) -> Result<T, DurableError> {
    result.map_err(|e| DurableError::Database(e.into()))
}

type Faults<P> = Vec<Fault<<P as Protocol>::FaultKind>>;
/// An event that passed validation, with its decoded message (for messages).
type Validated<P> = (
    Event<<P as Protocol>::Input>,
    Option<<P as Protocol>::Message>,
);

/// The durable driver of one replica's protocol instance. See the module documentation.
pub struct DurableReplica<P: Protocol> {
    database: Database,
    protocol: P,
    our_id: NodeId,
    n: usize,
    rng: ChaCha20Rng,
    incarnation: u64,
    next_event: u64,
    /// Height of the first delivery the log produces (0 unless a checkpoint was installed).
    base_height: u64,
    height: u64,
    chain: Digest,
    delivered_requests: u64,
    options: DurableOptions,
    outbox: BTreeMap<NodeId, Outbox>,
}

#[derive(Default)]
struct Outbox {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl Outbox {
    fn push(&mut self, frame: Bytes, options: &DurableOptions) {
        self.bytes = self.bytes.saturating_add(frame.len());
        self.frames.push_back(frame);
        while self.frames.len() > options.outbox_frames || self.bytes > options.outbox_bytes {
            match self.frames.pop_front() {
                Some(old) => self.bytes = self.bytes.saturating_sub(old.len()),
                None => break,
            }
        }
    }
}

/// Encode a stored event: `kind ‖ body`.
fn encode_event<I: Serialize>(event: &Event<I>) -> Result<Vec<u8>, DurableError> {
    match event {
        Event::Input(input) => postcard::to_extend(input, vec![EVENT_INPUT])
            .map_err(|e| DurableError::Encode(e.to_string())),
        Event::Message { from, frame } => {
            let mut out = Vec::with_capacity(3 + frame.len());
            out.push(EVENT_MESSAGE);
            out.extend_from_slice(&from.0.to_le_bytes());
            out.extend_from_slice(frame);
            Ok(out)
        }
    }
}

/// Encode a skip event: `EVENT_SKIP ‖ point length (u64 LE) ‖ point ‖ base`.
fn encode_skip(point: &[u8], base: &Base) -> Vec<u8> {
    let mut out = vec![EVENT_SKIP];
    out.extend_from_slice(&(point.len() as u64).to_le_bytes());
    out.extend_from_slice(point);
    out.extend_from_slice(&base.encode());
    out
}

fn decode_skip(index: u64, bytes: &[u8]) -> Result<(Vec<u8>, Base), DurableError> {
    let corrupt = || DurableError::Corrupt(format!("skip event {index} is truncated"));
    let len = bytes.get(1..9).ok_or_else(corrupt)?;
    let len = usize::try_from(meta_u64(len, "skip point length")?).map_err(|_| corrupt())?;
    let end = len.checked_add(9).ok_or_else(corrupt)?;
    let point = bytes.get(9..end).ok_or_else(corrupt)?.to_vec();
    Ok((point, Base::decode(&bytes[end..])?))
}

fn decode_event<I: DeserializeOwned>(index: u64, bytes: &[u8]) -> Result<Event<I>, DurableError> {
    let corrupt = |what: &str| DurableError::Corrupt(format!("event {index}: {what}"));
    match bytes.split_first() {
        Some((&EVENT_INPUT, body)) => postcard::from_bytes(body)
            .map(Event::Input)
            .map_err(|e| corrupt(&format!("input does not decode: {e}"))),
        Some((&EVENT_MESSAGE, rest)) if rest.len() >= 2 => Ok(Event::Message {
            from: NodeId(u16::from_le_bytes([rest[0], rest[1]])),
            frame: Bytes::copy_from_slice(&rest[2..]),
        }),
        _ => Err(corrupt("unknown event kind")),
    }
}

/// `chain_h = H(chain_{h-1}, h, delivery)`.
pub fn chain_step(previous: &Digest, height: u64, encoded: &[u8]) -> Digest {
    hash(CHAIN_CONTEXT, &[previous, &height.to_le_bytes(), encoded])
}

fn stored_delivery(encoded: &[u8], chain: &Digest) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + encoded.len());
    out.extend_from_slice(chain);
    out.extend_from_slice(encoded);
    out
}

fn meta_u64(value: &[u8], what: &str) -> Result<u64, DurableError> {
    <[u8; 8]>::try_from(value)
        .map(u64::from_le_bytes)
        .map_err(|_| DurableError::Corrupt(format!("meta {what} is not 8 bytes")))
}

impl<P> DurableReplica<P>
where
    P: SkipForward,
    P::Input: Serialize + DeserializeOwned + Clone,
    P::Output: DurableOutput,
{
    /// Open (or create) the database at `path` for `protocol` — a freshly constructed instance
    /// of node `protocol.our_id()` in a group of `n` — and replay its log.
    ///
    /// `group_digest` names the group and instance the data belongs to; a database created for
    /// another group, instance or node id is refused ([`DurableError::WrongOwner`]).
    pub fn open(
        path: &Path,
        protocol: P,
        n: usize,
        group_digest: Digest,
        options: DurableOptions,
    ) -> Result<(Self, Recovery<P>), DurableError> {
        let database = db(Database::create(path))?;
        let our_id = protocol.our_id();
        let (seed, incarnation) = Self::open_meta(&database, our_id, &group_digest)?;
        let mut replica = DurableReplica {
            database,
            protocol,
            our_id,
            n,
            rng: ChaCha20Rng::from_seed(seed),
            incarnation,
            next_event: 0,
            base_height: 0,
            height: 0,
            chain: [0; 32],
            delivered_requests: 0,
            options,
            outbox: BTreeMap::new(),
        };
        let (replayed_events, faults) = replica.replay()?;
        let resend = replica
            .outbox
            .iter()
            .map(|(peer, outbox)| (*peer, outbox.frames.iter().cloned().collect()))
            .collect();
        let recovery = Recovery {
            incarnation,
            replayed_events,
            replayed_deliveries: replica.height,
            resend,
            faults,
        };
        Ok((replica, recovery))
    }

    /// The base of the log at `path`, if the replica there installed a checkpoint; read before
    /// [`DurableReplica::open`] so that the caller can build the protocol instance that resumes
    /// from it. `None` for a missing or fresh database.
    pub fn read_base(path: &Path) -> Result<Option<Base>, DurableError> {
        if !path.exists() {
            return Ok(None);
        }
        let database = db(Database::create(path))?;
        Self::base_of(&database)
    }

    fn base_of(database: &Database) -> Result<Option<Base>, DurableError> {
        let txn = db(database.begin_read())?;
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(DurableError::Database(e.into())),
        };
        let stored = db(meta.get(META_BASE))?.map(|v| v.value().to_vec());
        stored.map(|bytes| Base::decode(&bytes)).transpose()
    }

    /// Jump forward (state transfer): the caller installed, from a certified checkpoint, the
    /// state after the delivery at `base.height − 1`; the protocol skips to `point` (its encoding
    /// of where to resume) and the next delivery gets height `base.height`, chained from
    /// `base.chain`. The skip is an event of the log (logged with an fsync before it is applied,
    /// like every event), so a replay repeats it at the same place; `base` also becomes the
    /// database's latest base ([`DurableReplica::read_base`]) in the same transaction.
    pub fn skip(&mut self, point: Vec<u8>, base: Base) -> Result<BatchOutcome<P>, DurableError> {
        if base.height < self.height {
            return Err(DurableError::Corrupt(format!(
                "skip back from height {} to {}",
                self.height, base.height
            )));
        }
        let event = encode_skip(&point, &base);
        {
            let mut txn = db(self.database.begin_write())?;
            db(txn.set_durability(Durability::Immediate))?;
            {
                let mut table = db(txn.open_table(EVENTS))?;
                db(table.insert(self.next_event, event.as_slice()))?;
                let mut meta = db(txn.open_table(META))?;
                db(meta.insert(META_BASE, base.encode().as_slice()))?;
            }
            db(txn.commit())?;
        }
        self.next_event += 1;
        let mut outcome = BatchOutcome::<P>::default();
        self.apply_skip(&point, &base, &mut outcome)?;
        self.store_deliveries(&outcome.delivered)?;
        self.remember_all(&outcome.outgoing);
        Ok(outcome)
    }

    fn apply_skip(
        &mut self,
        point: &[u8],
        base: &Base,
        outcome: &mut BatchOutcome<P>,
    ) -> Result<(), DurableError> {
        let step = self
            .protocol
            .skip_forward(point, &mut self.rng)
            .map_err(|e| DurableError::Corrupt(format!("the protocol refused to skip: {e}")))?;
        self.base_height = base.height;
        self.height = base.height;
        self.chain = base.chain;
        self.execute(step, outcome);
        Ok(())
    }

    /// Check (or write) the meta table and bump the incarnation.
    fn open_meta(
        database: &Database,
        our_id: NodeId,
        group_digest: &Digest,
    ) -> Result<([u8; 32], u64), DurableError> {
        let mut txn = db(database.begin_write())?;
        db(txn.set_durability(Durability::Immediate))?;
        let result = {
            let mut meta = db(txn.open_table(META))?;
            let get = |meta: &redb::Table<&str, &[u8]>,
                       key: &str|
             -> Result<Option<Vec<u8>>, DurableError> {
                Ok(db(meta.get(key))?.map(|v| v.value().to_vec()))
            };
            let seed: [u8; 32];
            let incarnation: u64;
            match get(&meta, META_FORMAT)? {
                None => {
                    let mut fresh = [0u8; 32];
                    rand::rngs::OsRng.fill_bytes(&mut fresh);
                    seed = fresh;
                    incarnation = 1;
                    db(meta.insert(META_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice()))?;
                    db(meta.insert(META_GROUP, group_digest.as_slice()))?;
                    db(meta.insert(META_OUR_ID, our_id.0.to_le_bytes().as_slice()))?;
                    db(meta.insert(META_SEED, seed.as_slice()))?;
                }
                Some(format) => {
                    let found = <[u8; 4]>::try_from(format.as_slice())
                        .map(u32::from_le_bytes)
                        .map_err(|_| DurableError::Corrupt("meta format is not 4 bytes".into()))?;
                    if found != FORMAT_VERSION {
                        return Err(DurableError::Format { found });
                    }
                    let stored_group = get(&meta, META_GROUP)?.unwrap_or_default();
                    if stored_group.as_slice() != group_digest.as_slice() {
                        return Err(DurableError::WrongOwner {
                            what: format!(
                                "another group or instance (group digest {})",
                                hex::encode(&stored_group)
                            ),
                        });
                    }
                    let stored_id = get(&meta, META_OUR_ID)?.unwrap_or_default();
                    if stored_id.as_slice() != our_id.0.to_le_bytes().as_slice() {
                        return Err(DurableError::WrongOwner {
                            what: format!("another node (id bytes {})", hex::encode(&stored_id)),
                        });
                    }
                    seed = get(&meta, META_SEED)?
                        .and_then(|s| <[u8; 32]>::try_from(s.as_slice()).ok())
                        .ok_or_else(|| DurableError::Corrupt("meta rng seed missing".into()))?;
                    let previous = match get(&meta, META_INCARNATION)? {
                        Some(v) => meta_u64(&v, "incarnation")?,
                        None => 0,
                    };
                    incarnation = previous.saturating_add(1);
                }
            }
            db(meta.insert(META_INCARNATION, incarnation.to_le_bytes().as_slice()))?;
            // Create the other tables so that read transactions find them.
            db(txn.open_table(EVENTS))?;
            db(txn.open_table(DELIVERED))?;
            Ok((seed, incarnation))
        };
        db(txn.commit())?;
        result
    }

    /// Replay the event log through the (fresh) protocol; check deliveries against the stored
    /// ones and append any the previous run had not written.
    fn replay(&mut self) -> Result<(u64, Faults<P>), DurableError> {
        let (stored_heights, total) = {
            let txn = db(self.database.begin_read())?;
            let table = db(txn.open_table(EVENTS))?;
            let delivered = db(txn.open_table(DELIVERED))?;
            // Skips leave gaps: the stored deliveries end at the last key.
            let end = db(delivered.last())?.map_or(0, |(height, _)| height.value() + 1);
            (end, db(table.len())?)
        };
        if total > 0 {
            tracing::info!(
                events = total,
                deliveries = stored_heights,
                "replaying the event log"
            );
        }
        let mut outcome = BatchOutcome::<P>::default();
        // Read the log in chunks so that a long log is never held in memory at once.
        while self.next_event < total {
            let start = self.next_event;
            let chunk: Vec<(u64, Vec<u8>)> = {
                let txn = db(self.database.begin_read())?;
                let table = db(txn.open_table(EVENTS))?;
                let end = start.saturating_add(REPLAY_CHUNK).min(total);
                db(table.range(start..end))?
                    .map(|entry| db(entry).map(|(k, v)| (k.value(), v.value().to_vec())))
                    .collect::<Result<_, _>>()?
            };
            if chunk.is_empty() {
                return Err(DurableError::Corrupt(format!(
                    "event log ends at {start}, expected {total} events"
                )));
            }
            for (index, bytes) in chunk {
                if index != self.next_event {
                    return Err(DurableError::Corrupt(format!(
                        "event log has a gap: index {index} where {} was expected",
                        self.next_event
                    )));
                }
                if bytes.first() == Some(&EVENT_SKIP) {
                    let (point, base) = decode_skip(index, &bytes)?;
                    self.apply_skip(&point, &base, &mut outcome)?;
                    self.next_event = index + 1;
                    for item in std::mem::take(&mut outcome.outgoing) {
                        self.remember(&item);
                    }
                    continue;
                }
                match decode_event::<P::Input>(index, &bytes)? {
                    Event::Input(input) => {
                        // A refused input was refused the first time too: nothing to report.
                        let _ = self.apply_input(input, &mut outcome);
                    }
                    Event::Message { from, frame } => {
                        let message = codec::decode::<P::Message>(&frame).map_err(|e| {
                            DurableError::Corrupt(format!(
                                "logged frame {index} does not decode: {e}"
                            ))
                        })?;
                        self.apply_message(from, message, &mut outcome);
                    }
                }
                self.next_event = index + 1;
                for item in std::mem::take(&mut outcome.outgoing) {
                    self.remember(&item);
                }
                if self.next_event.is_multiple_of(REPLAY_LOG_EVERY) {
                    tracing::info!(done = self.next_event, total, "replay progress");
                }
            }
            // Check this chunk's deliveries against the stored ones; store any missing.
            let delivered = std::mem::take(&mut outcome.delivered);
            self.check_and_store(&delivered, stored_heights)?;
            if outcome.faults.len() > MAX_REPLAY_FAULTS {
                outcome.faults.truncate(MAX_REPLAY_FAULTS);
            }
        }
        if self.height < stored_heights {
            return Err(DurableError::Corrupt(format!(
                "deliveries stored up to height {stored_heights} but the log replays only {}",
                self.height
            )));
        }
        if total > 0 {
            tracing::info!(
                events = total,
                height = self.height,
                "replay complete; state restored"
            );
        }
        Ok((total, outcome.faults))
    }

    fn check_and_store(
        &mut self,
        delivered: &[Delivered<P::Output>],
        stored_heights: u64,
    ) -> Result<(), DurableError> {
        let txn = db(self.database.begin_write())?;
        {
            let mut table = db(txn.open_table(DELIVERED))?;
            for item in delivered {
                let encoded = item.output.encode_output();
                let value = stored_delivery(&encoded, &item.chain);
                if item.height < stored_heights {
                    let stored = db(table.get(item.height))?.map(|v| v.value().to_vec());
                    if stored.as_deref() != Some(value.as_slice()) {
                        return Err(DurableError::Corruption {
                            height: item.height,
                        });
                    }
                } else {
                    db(table.insert(item.height, value.as_slice()))?;
                }
            }
        }
        db(txn.commit())?;
        Ok(())
    }

    fn store_deliveries(&mut self, delivered: &[Delivered<P::Output>]) -> Result<(), DurableError> {
        if delivered.is_empty() {
            return Ok(());
        }
        let mut txn = db(self.database.begin_write())?;
        db(txn.set_durability(Durability::None))?;
        {
            let mut table = db(txn.open_table(DELIVERED))?;
            for item in delivered {
                let value = stored_delivery(&item.output.encode_output(), &item.chain);
                db(table.insert(item.height, value.as_slice()))?;
            }
        }
        db(txn.commit())?;
        Ok(())
    }

    fn remember_all(&mut self, outgoing: &[Outgoing]) {
        for item in outgoing {
            self.remember(item);
        }
    }

    fn remember(&mut self, item: &Outgoing) {
        for peer in &item.to {
            self.outbox
                .entry(*peer)
                .or_default()
                .push(item.frame.clone(), &self.options);
        }
    }

    /// Process a batch of events: validate, log with one fsync, run, store deliveries, and
    /// return what to send. See the module documentation for the order of these steps.
    pub fn process_batch(
        &mut self,
        events: Vec<Event<P::Input>>,
    ) -> Result<BatchOutcome<P>, DurableError> {
        let mut outcome = BatchOutcome::<P>::default();
        // 1. Validate.
        let mut valid: Vec<Validated<P>> = Vec::with_capacity(events.len());
        for event in events {
            match event {
                Event::Input(input) => valid.push((Event::Input(input), None)),
                Event::Message { from, frame } => {
                    if from == self.our_id {
                        outcome.rejected.push((from, Rejection::FromSelf));
                    } else if from.index() >= self.n {
                        outcome.rejected.push((from, Rejection::NotAMember));
                    } else {
                        match codec::decode::<P::Message>(&frame) {
                            Ok(message) => {
                                valid.push((Event::Message { from, frame }, Some(message)))
                            }
                            Err(e) => outcome.rejected.push((from, Rejection::Undecodable(e))),
                        }
                    }
                }
            }
        }
        if valid.is_empty() {
            return Ok(outcome);
        }
        // 2. Log, one fsync.
        let persisting = crate::metrics::monotonic_nanos();
        {
            let mut txn = db(self.database.begin_write())?;
            db(txn.set_durability(Durability::Immediate))?;
            {
                let mut table = db(txn.open_table(EVENTS))?;
                for (offset, (event, _)) in valid.iter().enumerate() {
                    let bytes = encode_event(event)?;
                    db(table.insert(self.next_event + offset as u64, bytes.as_slice()))?;
                }
            }
            db(txn.commit())?;
        }
        self.next_event += valid.len() as u64;
        crate::metrics::add_time("persistence", persisting);
        // 3. Run.
        let ordering = crate::metrics::monotonic_nanos();
        for (event, decoded) in valid {
            match (event, decoded) {
                (Event::Input(input), _) => {
                    let result = self.apply_input(input, &mut outcome);
                    outcome.input_results.push(result);
                }
                (Event::Message { from, .. }, Some(message)) => {
                    self.apply_message(from, message, &mut outcome)
                }
                (Event::Message { .. }, None) => {} // never built: messages carry their decoding
            }
        }
        crate::metrics::add_time("ordering", ordering);
        // 4. Store deliveries (no fsync: a replay regenerates them).
        let storing = crate::metrics::monotonic_nanos();
        self.store_deliveries(&outcome.delivered)?;
        crate::metrics::add_time("persistence", storing);
        // 5. Remember and return what to send.
        self.remember_all(&outcome.outgoing);
        Ok(outcome)
    }

    fn apply_input(
        &mut self,
        input: P::Input,
        outcome: &mut BatchOutcome<P>,
    ) -> Result<(), P::Error> {
        let step = self.protocol.handle_input(input, &mut self.rng)?;
        self.execute(step, outcome);
        Ok(())
    }

    fn apply_message(&mut self, from: NodeId, message: P::Message, outcome: &mut BatchOutcome<P>) {
        let step = self.protocol.handle_message(from, message, &mut self.rng);
        self.execute(step, outcome);
    }

    /// Execute a step: our own copies are handled at once (FIFO, before the next event), the
    /// rest is encoded once and queued for the network.
    fn execute(&mut self, step: maftia_core::ProtocolStep<P>, outcome: &mut BatchOutcome<P>) {
        let mut local: VecDeque<P::Message> = VecDeque::new();
        let mut step = step;
        loop {
            self.collect(step, &mut local, outcome);
            let Some(message) = local.pop_front() else {
                break;
            };
            step = self
                .protocol
                .handle_message(self.our_id, message, &mut self.rng);
        }
    }

    fn collect(
        &mut self,
        step: maftia_core::ProtocolStep<P>,
        local: &mut VecDeque<P::Message>,
        outcome: &mut BatchOutcome<P>,
    ) {
        for targeted in step.messages {
            let to: Vec<NodeId> = targeted
                .target
                .recipients(self.our_id, self.n)
                .filter(|id| *id != self.our_id)
                .collect();
            if targeted.target.contains(self.our_id, self.our_id) {
                local.push_back(targeted.message.clone());
            }
            if to.is_empty() {
                continue;
            }
            match codec::encode(&targeted.message) {
                Ok(frame) => outcome.outgoing.push(Outgoing {
                    to,
                    frame: Bytes::from(frame),
                }),
                // A message above the size limit is a local bug (protocols bound their
                // messages); it is dropped with an error log rather than sent half-way.
                Err(e) => tracing::error!(error = %e, "protocol produced an unencodable message"),
            }
        }
        for output in step.outputs {
            let encoded = output.encode_output();
            self.chain = chain_step(&self.chain, self.height, &encoded);
            self.delivered_requests += output.request_count() as u64;
            outcome.delivered.push(Delivered {
                height: self.height,
                output,
                chain: self.chain,
            });
            self.height += 1;
        }
        outcome.faults.extend(step.faults);
    }

    /// The recent frames sent to `peer` (oldest first), to re-send when it restarted.
    pub fn outbox_for(&self, peer: NodeId) -> Vec<Bytes> {
        self.outbox
            .get(&peer)
            .map(|o| o.frames.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The stored deliveries with heights in `from..to`, as [`DurableOutput::encode_output`]
    /// wrote them, in height order (the service layer re-executes them after a restart).
    pub fn stored_deliveries(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, DurableError> {
        let txn = db(self.database.begin_read())?;
        let table = db(txn.open_table(DELIVERED))?;
        let mut out = Vec::new();
        for entry in db(table.range(from..to))? {
            let (height, value) = db(entry)?;
            let stored = value.value();
            let encoded = stored.get(32..).ok_or_else(|| {
                DurableError::Corrupt(format!(
                    "delivery {} is shorter than its chain digest",
                    height.value()
                ))
            })?;
            out.push((height.value(), encoded.to_vec()));
        }
        Ok(out)
    }

    /// Make the database durable (called on shutdown: the deliveries were written without fsync).
    pub fn flush(&mut self) -> Result<(), DurableError> {
        let mut txn = db(self.database.begin_write())?;
        db(txn.set_durability(Durability::Immediate))?;
        db(txn.commit())?;
        Ok(())
    }

    pub fn protocol(&self) -> &P {
        &self.protocol
    }
    pub fn our_id(&self) -> NodeId {
        self.our_id
    }
    /// This start's incarnation (bumped at every open).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }
    /// Height of the first delivery in the log (0 unless a checkpoint was installed; the
    /// deliveries below it are not stored).
    pub fn base_height(&self) -> u64 {
        self.base_height
    }
    /// Outputs delivered so far (the next delivery's height).
    pub fn height(&self) -> u64 {
        self.height
    }
    /// Head of the delivery digest chain (all zeros before the first delivery).
    pub fn chain_head(&self) -> Digest {
        self.chain
    }
    /// Requests delivered so far (sum of [`DurableOutput::request_count`]).
    pub fn delivered_requests(&self) -> u64 {
        self.delivered_requests
    }
    /// Events in the log.
    pub fn logged_events(&self) -> u64 {
        self.next_event
    }
}

#[cfg(test)]
mod tests;
