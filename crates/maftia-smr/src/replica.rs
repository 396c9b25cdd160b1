//! The replication manager: executes the totally ordered client requests on a [`StateMachine`],
//! keeps the per-client table that makes execution exactly-once, signs reply shares and
//! checkpoint shares, and installs certified snapshots.
//!
//! # Guarantees
//! - **Determinism.** Every correct replica that processes the same ordered sequence of entries
//!   (from the same certified checkpoint, or from the start) returns the same
//!   [`Outcome`]s and the same reply *results*, and reaches the same client table, state,
//!   [`ReplicationManager::snapshot`] and [`ReplicationManager::digest`]. Every decision is a pure
//!   function of the ordered bytes and the current state: strict Ed25519 verification, a
//!   `BTreeMap` client table, a fixed-layout snapshot, no clocks or randomness.
//! - **Exactly-once execution per `(client, seq)`.** A client's requests execute only with
//!   strictly growing sequence numbers. An ordered retry of the last executed request is
//!   answered from the cache ([`Outcome::Duplicate`]) without executing again; an older sequence
//!   number gets a certified [`ServiceResult::StaleSequence`] and executes nothing. Requests that
//!   do not decode, exceed the size limit or carry a bad signature are skipped without a reply
//!   (they cannot be attributed to a client); a validly signed request of a client not on the
//!   [`ClientList`] gets a certified [`ServiceResult::UnknownClient`] and executes nothing.
//! - **Certified answers.** Each reply carries this replica's share of the service's Reply key
//!   set on [`reply_message`]; a client combines `f + 1` matching shares
//!   ([`crate::request::ReplyCollector`]), so one intruded replica can neither forge nor block a
//!   result. Checkpoints are certified the same way: [`CheckpointCollector`] combines `f + 1`
//!   shares on [`checkpoint_message`]`(service, executed, digest)` into a
//!   [`CheckpointCertificate`], and [`ReplicationManager::restore`] installs a snapshot only if
//!   the certificate verifies and the snapshot hashes to the certified digest. Reply and
//!   checkpoint messages are hashed under different contexts, so a share of one can never
//!   serve as the other although both use the Reply key set.
//! - **Bounded memory.** The client table holds one entry per *authorised* client (the list is
//!   fixed at construction): its last sequence number, its last result and the share on it —
//!   PBFT's "last reply" cache, nothing older. Memory is therefore at most
//!   `clients × (largest reply + ~100 bytes)` on top of the state; for the KV store a reply is at
//!   most [`crate::request::MAX_RESULT`]. Unknown clients, stale and invalid requests leave no
//!   trace except the position counter. [`CheckpointCollector`] keeps at most one share per
//!   replica of the group.
//!
//! # Assumptions
//! The entries handed to [`ReplicationManager::execute`] are the output of a total-order
//! broadcast (atomic broadcast in the asynchronous configuration, the wormhole ordering in the
//! hybrid one): every correct replica sees the same entries in the same order. Entries are not
//! trusted: a Byzantine replica may have proposed anything, so each is decoded with the size
//! limit and its signature and client are checked again at execution. At most `f` of `n`
//! replicas are Byzantine and the Reply key set has threshold `f + 1`. The node must check that a
//! [`CheckpointShare`]'s `replica` field names the peer it arrived from (channels are
//! authenticated) before calling [`CheckpointCollector::add`], so that culprits are attributable.
//! The state machine must follow the determinism rules of [`StateMachine`].
//!
//! # Complexity
//! Per ordered entry: one decode (O(size)), one Ed25519 verification (~50 µs), at most one
//! `StateMachine::execute`, and one BLS share signature (one hash to G1 and one G1 scalar
//! multiplication, ~0.2 ms in release, ~1 ms at opt-level 1) when a reply is due; a retry of
//! the last request reuses the cached share. Signing every reply individually is the simple
//! choice for now; batching replies under one signature (a Merkle root per ordered batch) would
//! cut it to one signature per batch. [`ReplicationManager::snapshot`] and
//! [`ReplicationManager::digest`] are O(state + client table); a checkpoint share adds one BLS
//! signature; [`ReplicationManager::restore`] costs one certificate verification (two pairings),
//! one hash of the snapshot, a linear parse and one BLS share signature per client in the
//! restored table (the cached reply shares are re-made with this replica's own key).
//!
//! # References
//! State machine replication after Schneider, "Implementing fault-tolerant services using the
//! state machine approach" (ACM Computing Surveys, 1990): deterministic replicas executing the
//! same ordered requests. The client table (last sequence number and last reply per client,
//! retries answered from it) follows Castro–Liskov, "Practical Byzantine Fault Tolerance" (OSDI
//! 1999, §4.1 and §4.6). Threshold-signed replies and checkpoints that a client checks against
//! the service's single public key follow COCA (Zhou–Schneider–van Renesse, ACM TOCS 2002).
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use maftia_crypto::bls::{
    BlsPublicKeySet, BlsSecretShare, BlsSignature, BlsSignatureShare, KeySetId,
};
use maftia_crypto::hash::hash;
use maftia_crypto::identity::IdentityPublicKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::request::{
    combine_verified, reply_message, ReplyShare, RequestError, ServiceId, ServiceResult,
    SignedRequest,
};
use crate::StateMachine;

/// Hash context of the message a checkpoint certificate signs.
pub const CHECKPOINT_CONTEXT: &str = "maftia 2026-11 checkpoint certificate";
/// Hash context of [`ReplicationManager::digest`].
pub const REPLICA_DIGEST_CONTEXT: &str = "maftia 2026-11 smr replica digest";
/// First bytes of a replica snapshot.
pub const REPLICA_SNAPSHOT_MAGIC: [u8; 4] = *b"MFRM";
/// Version of the replica snapshot encoding.
pub const REPLICA_SNAPSHOT_VERSION: u8 = 1;

/// A monotonic clock in nanoseconds, handed in by the node to time reply signing
/// ([`ReplicationManager::time_signing`]). The manager never reads a clock of its own, and what
/// it measures decides nothing: execution stays a pure function of the ordered entries.
pub type SigningClock = fn() -> u64;

/// The clients authorised to use the service (their Ed25519 public keys).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientList(BTreeSet<IdentityPublicKey>);

impl ClientList {
    pub fn new(clients: impl IntoIterator<Item = IdentityPublicKey>) -> ClientList {
        ClientList(clients.into_iter().collect())
    }

    pub fn contains(&self, client: &IdentityPublicKey) -> bool {
        self.0.contains(client)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The clients in key order.
    pub fn iter(&self) -> impl Iterator<Item = &IdentityPublicKey> {
        self.0.iter()
    }
}

impl FromIterator<IdentityPublicKey> for ClientList {
    fn from_iter<I: IntoIterator<Item = IdentityPublicKey>>(iter: I) -> Self {
        ClientList::new(iter)
    }
}

/// Why a [`ReplicationManager`] could not be built.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ReplicaError {
    #[error("the reply key is a share of key set {found:?}, not of the Reply key set")]
    WrongKeySet { found: KeySetId },
    #[error("the reply key is share {index}, but this is replica {replica}")]
    IndexMismatch { replica: u16, index: usize },
}

/// Why [`ReplicationManager::admit`] refused a client's bytes (nothing changed).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AdmitError {
    #[error("invalid request: {0}")]
    Request(#[from] RequestError),
    #[error("the client is not on the service's client list")]
    UnknownClient,
}

/// What to do with a request a client sent to this replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// New: propose it for ordering.
    Order(SignedRequest),
    /// Already executed (it is the client's last request): send this cached reply, do not order
    /// it again.
    Executed(ReplyShare),
    /// The client already executed a later request: send this certified
    /// [`ServiceResult::StaleSequence`] reply.
    Stale(ReplyShare),
}

/// What [`ReplicationManager::execute`] did with one ordered entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The state machine executed the request.
    Executed,
    /// A retry of the client's last executed request: answered from the cache.
    Duplicate,
    /// The client already executed sequence number `last`, above this one: refused.
    Stale { last: u64 },
    /// A validly signed request of a client not on the list: refused.
    UnknownClient,
    /// Undecodable, oversized or badly signed: skipped without a reply.
    Invalid(RequestError),
}

/// The result of executing one ordered entry: what happened and the reply share to send to the
/// client (none for an [`Outcome::Invalid`] entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    pub outcome: Outcome,
    pub reply: Option<ReplyShare>,
}

/// One client's entry in the table: its last executed request and the reply to it.
struct ClientRecord {
    last: u64,
    /// Always [`ServiceResult::Executed`] when built by [`ReplicationManager::execute`]; the
    /// snapshot encoding covers every variant so that no case is impossible to represent.
    result: ServiceResult,
    share: BlsSignatureShare,
}

/// The replica side of state machine replication (see the module documentation).
pub struct ReplicationManager<S: StateMachine> {
    service: ServiceId,
    replica: u16,
    reply_key: BlsSecretShare,
    clients: ClientList,
    table: BTreeMap<IdentityPublicKey, ClientRecord>,
    executed: u64,
    state: S,
    /// Instrumentation only (see [`Self::time_signing`]).
    signing_clock: Option<SigningClock>,
    signing_nanos: AtomicU64,
}

impl<S: StateMachine> ReplicationManager<S> {
    /// `reply_key` must be this replica's share of the Reply key set (KeySetId::Reply,
    /// index == replica). `state` is the initial state, the same at every replica.
    pub fn new(
        service: ServiceId,
        replica: u16,
        reply_key: BlsSecretShare,
        clients: ClientList,
        state: S,
    ) -> Result<Self, ReplicaError> {
        if reply_key.id != KeySetId::Reply {
            return Err(ReplicaError::WrongKeySet {
                found: reply_key.id,
            });
        }
        if reply_key.index != usize::from(replica) {
            return Err(ReplicaError::IndexMismatch {
                replica,
                index: reply_key.index,
            });
        }
        Ok(ReplicationManager {
            service,
            replica,
            reply_key,
            clients,
            table: BTreeMap::new(),
            executed: 0,
            state,
            signing_clock: None,
            signing_nanos: AtomicU64::new(0),
        })
    }

    /// Time every reply-share signature with `clock` from now on and add the time to
    /// [`Self::signing_nanos`] (instrumentation for the node's metrics; without it the manager
    /// reads no clock at all).
    pub fn time_signing(&mut self, clock: SigningClock) {
        self.signing_clock = Some(clock);
    }

    /// Nanoseconds spent signing reply shares since [`Self::time_signing`] (0 without it).
    pub fn signing_nanos(&self) -> u64 {
        self.signing_nanos.load(Ordering::Relaxed)
    }

    pub fn service(&self) -> &ServiceId {
        &self.service
    }

    /// This replica's index in the group.
    pub fn replica(&self) -> u16 {
        self.replica
    }

    pub fn clients(&self) -> &ClientList {
        &self.clients
    }

    /// Ordered entries processed so far (the position in the log), valid or not.
    pub fn executed(&self) -> u64 {
        self.executed
    }

    pub fn state(&self) -> &S {
        &self.state
    }

    /// The client's highest executed sequence number, if it executed anything.
    pub fn client_last(&self, client: &IdentityPublicKey) -> Option<u64> {
        self.table.get(client).map(|record| record.last)
    }

    fn sign_reply(&self, client: IdentityPublicKey, seq: u64, result: ServiceResult) -> ReplyShare {
        let started = self.signing_clock.map(|clock| (clock, clock()));
        let share = self
            .reply_key
            .sign(&reply_message(&self.service, &client, seq, &result));
        if let Some((clock, started)) = started {
            self.signing_nanos
                .fetch_add(clock().saturating_sub(started), Ordering::Relaxed);
        }
        ReplyShare {
            replica: self.replica,
            client,
            seq,
            result,
            share,
        }
    }

    fn cached_reply(&self, client: IdentityPublicKey, record: &ClientRecord) -> ReplyShare {
        ReplyShare {
            replica: self.replica,
            client,
            seq: record.last,
            result: record.result.clone(),
            share: record.share,
        }
    }

    /// Pre-ordering check of bytes a client sent to this replica: decode (size limit), verify
    /// the signature, check the client list. A retry of the client's last executed request is
    /// answered from the cache ([`Admission::Executed`]) without being ordered again; an older
    /// sequence number gets a signed [`ServiceResult::StaleSequence`] ([`Admission::Stale`]);
    /// anything newer is to be ordered ([`Admission::Order`]). Changes nothing.
    pub fn admit(&self, bytes: &[u8]) -> Result<Admission, AdmitError> {
        let request = SignedRequest::decode_verified(bytes, &self.service)?;
        if !self.clients.contains(&request.client) {
            return Err(AdmitError::UnknownClient);
        }
        match self.table.get(&request.client) {
            Some(record) if request.seq == record.last => Ok(Admission::Executed(
                self.cached_reply(request.client, record),
            )),
            Some(record) if request.seq < record.last => Ok(Admission::Stale(self.sign_reply(
                request.client,
                request.seq,
                ServiceResult::StaleSequence { last: record.last },
            ))),
            _ => Ok(Admission::Order(request)),
        }
    }

    /// Execute one ordered entry deterministically (see [`Outcome`] for the cases). The position
    /// ([`Self::executed`]) advances for every entry, valid or not.
    pub fn execute(&mut self, ordered: &[u8]) -> Execution {
        self.executed = self.executed.saturating_add(1);
        let request = match SignedRequest::decode_verified(ordered, &self.service) {
            Ok(request) => request,
            Err(error) => {
                return Execution {
                    outcome: Outcome::Invalid(error),
                    reply: None,
                }
            }
        };
        let SignedRequest {
            client,
            seq,
            operation,
            ..
        } = request;
        if !self.clients.contains(&client) {
            return Execution {
                outcome: Outcome::UnknownClient,
                reply: Some(self.sign_reply(client, seq, ServiceResult::UnknownClient)),
            };
        }
        if let Some(record) = self.table.get(&client) {
            if seq == record.last {
                return Execution {
                    outcome: Outcome::Duplicate,
                    reply: Some(self.cached_reply(client, record)),
                };
            }
            if seq < record.last {
                let last = record.last;
                return Execution {
                    outcome: Outcome::Stale { last },
                    reply: Some(self.sign_reply(
                        client,
                        seq,
                        ServiceResult::StaleSequence { last },
                    )),
                };
            }
        }
        let result = ServiceResult::Executed(self.state.execute(&operation));
        let reply = self.sign_reply(client, seq, result);
        self.table.insert(
            client,
            ClientRecord {
                last: seq,
                result: reply.result.clone(),
                share: reply.share,
            },
        );
        Execution {
            outcome: Outcome::Executed,
            reply: Some(reply),
        }
    }

    /// The canonical encoding of the replica's whole state, all integers little-endian:
    /// `"MFRM" ‖ version (u8) ‖ executed (u64) ‖ clients (u64) ‖ per client in key order:
    /// [key (32 bytes) ‖ last seq (u64) ‖ last result] ‖ state length (u64) ‖ state snapshot`,
    /// where a result is `0 ‖ length (u64) ‖ reply bytes` for [`ServiceResult::Executed`],
    /// `1` for [`ServiceResult::UnknownClient`] and `2 ‖ last (u64)` for
    /// [`ServiceResult::StaleSequence`]. Equal replicas give byte-identical snapshots.
    pub fn snapshot(&self) -> Vec<u8> {
        let state = self.state.snapshot();
        let table_size: usize = self
            .table
            .values()
            .map(|record| 49usize.saturating_add(result_len(&record.result)))
            .sum();
        let mut out = Vec::with_capacity(29usize.saturating_add(table_size + state.len()));
        out.extend_from_slice(&REPLICA_SNAPSHOT_MAGIC);
        out.push(REPLICA_SNAPSHOT_VERSION);
        out.extend_from_slice(&self.executed.to_le_bytes());
        out.extend_from_slice(&(self.table.len() as u64).to_le_bytes());
        for (client, record) in &self.table {
            out.extend_from_slice(&client.to_bytes());
            out.extend_from_slice(&record.last.to_le_bytes());
            encode_result(&record.result, &mut out);
        }
        out.extend_from_slice(&(state.len() as u64).to_le_bytes());
        out.extend_from_slice(&state);
        out
    }

    /// `H(REPLICA_DIGEST_CONTEXT, snapshot())`.
    pub fn digest(&self) -> [u8; 32] {
        snapshot_digest(&self.snapshot())
    }

    /// This replica's share of the checkpoint certificate for the current position.
    pub fn checkpoint_share(&self) -> CheckpointShare {
        self.checkpoint().1
    }

    /// The snapshot at the current position together with this replica's checkpoint share on
    /// its digest (one snapshot encoding instead of two).
    pub fn checkpoint(&self) -> (Vec<u8>, CheckpointShare) {
        let snapshot = self.snapshot();
        let digest = snapshot_digest(&snapshot);
        let share = self
            .reply_key
            .sign(&checkpoint_message(&self.service, self.executed, &digest));
        (
            snapshot,
            CheckpointShare {
                replica: self.replica,
                executed: self.executed,
                digest,
                share,
            },
        )
    }

    /// Install a certified snapshot: verifies `certificate` under `reply_keys` for this service,
    /// that `snapshot` hashes to the certified digest and is at the certified position, decodes
    /// it completely (every client must be on this replica's list), and only then replaces the
    /// position, the client table and the state. On error nothing changed.
    pub fn restore(
        &mut self,
        certificate: &CheckpointCertificate,
        snapshot: &[u8],
        reply_keys: &BlsPublicKeySet,
    ) -> Result<(), RestoreError>
    where
        S::Error: fmt::Display,
    {
        if !certificate.verify(&self.service, reply_keys) {
            return Err(RestoreError::InvalidCertificate);
        }
        if snapshot_digest(snapshot) != certificate.digest {
            return Err(RestoreError::DigestMismatch);
        }
        let parsed = parse_snapshot(snapshot, &self.clients)?;
        if parsed.executed != certificate.executed {
            return Err(RestoreError::PositionMismatch {
                snapshot: parsed.executed,
                certified: certificate.executed,
            });
        }
        let table: BTreeMap<IdentityPublicKey, ClientRecord> = parsed
            .table
            .into_iter()
            .map(|(client, (last, result))| {
                let reply = self.sign_reply(client, last, result);
                (
                    client,
                    ClientRecord {
                        last,
                        result: reply.result,
                        share: reply.share,
                    },
                )
            })
            .collect();
        self.state
            .restore(parsed.state)
            .map_err(|error| RestoreError::State(error.to_string()))?;
        self.table = table;
        self.executed = parsed.executed;
        Ok(())
    }
}

const RESULT_EXECUTED: u8 = 0;
const RESULT_UNKNOWN_CLIENT: u8 = 1;
const RESULT_STALE: u8 = 2;

fn result_len(result: &ServiceResult) -> usize {
    match result {
        ServiceResult::Executed(bytes) => bytes.len().saturating_add(9),
        ServiceResult::UnknownClient => 1,
        ServiceResult::StaleSequence { .. } => 9,
    }
}

fn encode_result(result: &ServiceResult, out: &mut Vec<u8>) {
    match result {
        ServiceResult::Executed(bytes) => {
            out.push(RESULT_EXECUTED);
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        ServiceResult::UnknownClient => out.push(RESULT_UNKNOWN_CLIENT),
        ServiceResult::StaleSequence { last } => {
            out.push(RESULT_STALE);
            out.extend_from_slice(&last.to_le_bytes());
        }
    }
}

/// `H(REPLICA_DIGEST_CONTEXT, snapshot)`: the digest a state checkpoint certifies.
pub fn snapshot_digest(snapshot: &[u8]) -> [u8; 32] {
    hash(REPLICA_DIGEST_CONTEXT, &[snapshot])
}

/// The message a checkpoint certificate signs: `H(CHECKPOINT_CONTEXT, service, executed LE,
/// digest)`.
pub fn checkpoint_message(service: &ServiceId, executed: u64, digest: &[u8; 32]) -> [u8; 32] {
    hash(
        CHECKPOINT_CONTEXT,
        &[&service.0, &executed.to_le_bytes(), digest],
    )
}

/// Why a replica snapshot does not decode.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SnapshotFormatError {
    #[error("snapshot ended early")]
    Truncated,
    #[error("snapshot does not start with the replica magic bytes")]
    BadMagic,
    #[error("unsupported replica snapshot version {found} (this build reads {REPLICA_SNAPSHOT_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("client entry {index}: not a valid Ed25519 public key")]
    InvalidClientKey { index: u64 },
    #[error("client entry {index}: key not strictly greater than the previous one")]
    ClientsNotStrictlyIncreasing { index: u64 },
    #[error("client entry {index}: the client is not on this replica's client list")]
    ClientNotOnList { index: u64 },
    #[error("client entry {index}: unknown result tag {tag}")]
    UnknownResultTag { index: u64, tag: u8 },
    #[error("{extra} bytes left over after the state snapshot")]
    TrailingBytes { extra: usize },
}

/// Why [`ReplicationManager::restore`] refused a snapshot (nothing changed).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RestoreError {
    #[error("the checkpoint certificate does not verify for this service")]
    InvalidCertificate,
    #[error("the snapshot does not hash to the certified digest")]
    DigestMismatch,
    #[error("the snapshot is at position {snapshot}, the certificate at {certified}")]
    PositionMismatch { snapshot: u64, certified: u64 },
    #[error("malformed replica snapshot: {0}")]
    Snapshot(#[from] SnapshotFormatError),
    #[error("the state machine refused the snapshot: {0}")]
    State(String),
}

struct ParsedSnapshot<'a> {
    executed: u64,
    table: BTreeMap<IdentityPublicKey, (u64, ServiceResult)>,
    state: &'a [u8],
}

fn take<'a>(input: &mut &'a [u8], len: usize) -> Result<&'a [u8], SnapshotFormatError> {
    if input.len() < len {
        return Err(SnapshotFormatError::Truncated);
    }
    let (head, rest) = input.split_at(len);
    *input = rest;
    Ok(head)
}

fn take_u64(input: &mut &[u8]) -> Result<u64, SnapshotFormatError> {
    let (head, rest) = input
        .split_first_chunk::<8>()
        .ok_or(SnapshotFormatError::Truncated)?;
    *input = rest;
    Ok(u64::from_le_bytes(*head))
}

/// A length prefix followed by that many bytes; the length is checked against the remaining
/// input before anything is allocated.
fn take_prefixed<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], SnapshotFormatError> {
    let len = take_u64(input)?;
    let len = usize::try_from(len).map_err(|_| SnapshotFormatError::Truncated)?;
    take(input, len)
}

fn parse_snapshot<'a>(
    snapshot: &'a [u8],
    clients: &ClientList,
) -> Result<ParsedSnapshot<'a>, SnapshotFormatError> {
    let mut input = snapshot;
    if take(&mut input, REPLICA_SNAPSHOT_MAGIC.len())? != REPLICA_SNAPSHOT_MAGIC {
        return Err(SnapshotFormatError::BadMagic);
    }
    let version = take(&mut input, 1)?;
    if version != [REPLICA_SNAPSHOT_VERSION] {
        return Err(SnapshotFormatError::UnsupportedVersion {
            found: version.first().copied().unwrap_or_default(),
        });
    }
    let executed = take_u64(&mut input)?;
    let count = take_u64(&mut input)?;
    let mut table = BTreeMap::new();
    let mut previous: Option<IdentityPublicKey> = None;
    // Each entry consumes at least 41 bytes, so a huge `count` runs out of input first; and
    // every accepted entry is a distinct listed client, so the table stays within the list.
    for index in 0..count {
        let key: [u8; 32] = take(&mut input, 32)?
            .try_into()
            .map_err(|_| SnapshotFormatError::Truncated)?;
        let client = IdentityPublicKey::from_bytes(&key)
            .map_err(|_| SnapshotFormatError::InvalidClientKey { index })?;
        if previous.is_some_and(|previous| previous >= client) {
            return Err(SnapshotFormatError::ClientsNotStrictlyIncreasing { index });
        }
        if !clients.contains(&client) {
            return Err(SnapshotFormatError::ClientNotOnList { index });
        }
        let last = take_u64(&mut input)?;
        let tag = take(&mut input, 1)?.first().copied().unwrap_or_default();
        let result = match tag {
            RESULT_EXECUTED => ServiceResult::Executed(take_prefixed(&mut input)?.to_vec()),
            RESULT_UNKNOWN_CLIENT => ServiceResult::UnknownClient,
            RESULT_STALE => ServiceResult::StaleSequence {
                last: take_u64(&mut input)?,
            },
            tag => return Err(SnapshotFormatError::UnknownResultTag { index, tag }),
        };
        table.insert(client, (last, result));
        previous = Some(client);
    }
    let state = take_prefixed(&mut input)?;
    if !input.is_empty() {
        return Err(SnapshotFormatError::TrailingBytes { extra: input.len() });
    }
    Ok(ParsedSnapshot {
        executed,
        table,
        state,
    })
}

/// One replica's signed checkpoint: its position and state digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointShare {
    /// The replica (its index in the group, which is also its Reply share index).
    pub replica: u16,
    /// Ordered entries processed at the checkpoint.
    pub executed: u64,
    /// [`ReplicationManager::digest`] at that position.
    pub digest: [u8; 32],
    /// The replica's Reply share on [`checkpoint_message`].
    pub share: BlsSignatureShare,
}

/// A checkpoint certificate: `f + 1` replicas vouch that the state after `executed` ordered
/// entries has `digest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCertificate {
    pub executed: u64,
    pub digest: [u8; 32],
    pub signature: BlsSignature,
}

impl CheckpointCertificate {
    /// Whether the certificate is valid for `service` under the Reply public key set.
    pub fn verify(&self, service: &ServiceId, reply_keys: &BlsPublicKeySet) -> bool {
        reply_keys.id == KeySetId::Reply
            && reply_keys.verify(
                &checkpoint_message(service, self.executed, &self.digest),
                &self.signature,
            )
    }
}

/// Why [`CheckpointCollector::add`] did not take a share.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CheckpointCollectError {
    #[error("share from replica {replica}, outside the group of {n}")]
    UnknownReplica { replica: u16, n: usize },
    #[error("share for position {found}, this collector certifies position {expected}")]
    OtherPosition { expected: u64, found: u64 },
    #[error("replica {replica} already sent its checkpoint share")]
    Duplicate { replica: u16 },
}

/// What a replica was caught doing while checkpoint shares were collected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointFault {
    /// Its share does not verify on the digest it claims.
    InvalidShare,
    /// It claims a digest other than the certified one for the same position.
    DivergingDigest { digest: [u8; 32] },
}

/// Collects the [`CheckpointShare`]s of one position until `f + 1` valid shares agree on a
/// digest.
///
/// Shares are grouped by digest. A group reaching the threshold is combined and the combination
/// checked once; if it fails, every share of the group is checked and the invalid ones are
/// dropped and their replicas reported. Once a certificate exists, every replica that claimed
/// another digest is reported (correct replicas at the same position have the same digest).
/// Memory: one share per replica of the group.
pub struct CheckpointCollector {
    service: ServiceId,
    keys: Arc<BlsPublicKeySet>,
    executed: u64,
    by_digest: BTreeMap<[u8; 32], BTreeMap<usize, BlsSignatureShare>>,
    answered: BTreeMap<u16, [u8; 32]>,
    culprits: BTreeMap<u16, CheckpointFault>,
    certificate: Option<CheckpointCertificate>,
}

impl CheckpointCollector {
    /// A collector for the checkpoint after `executed` ordered entries.
    pub fn new(service: ServiceId, keys: Arc<BlsPublicKeySet>, executed: u64) -> Self {
        CheckpointCollector {
            service,
            keys,
            executed,
            by_digest: BTreeMap::new(),
            answered: BTreeMap::new(),
            culprits: BTreeMap::new(),
            certificate: None,
        }
    }

    /// The position this collector certifies.
    pub fn executed(&self) -> u64 {
        self.executed
    }

    /// Add one share; returns the certificate once `f + 1` valid shares agree (and again on
    /// every later share).
    pub fn add(
        &mut self,
        share: CheckpointShare,
    ) -> Result<Option<CheckpointCertificate>, CheckpointCollectError> {
        let n = self.keys.n;
        if usize::from(share.replica) >= n {
            return Err(CheckpointCollectError::UnknownReplica {
                replica: share.replica,
                n,
            });
        }
        if share.executed != self.executed {
            return Err(CheckpointCollectError::OtherPosition {
                expected: self.executed,
                found: share.executed,
            });
        }
        if self.answered.contains_key(&share.replica) {
            return Err(CheckpointCollectError::Duplicate {
                replica: share.replica,
            });
        }
        self.answered.insert(share.replica, share.digest);
        if let Some(certificate) = &self.certificate {
            if share.digest != certificate.digest {
                self.culprits.insert(
                    share.replica,
                    CheckpointFault::DivergingDigest {
                        digest: share.digest,
                    },
                );
            }
            return Ok(Some(certificate.clone()));
        }
        let shares = self.by_digest.entry(share.digest).or_default();
        shares.insert(usize::from(share.replica), share.share);
        if shares.len() < self.keys.threshold {
            return Ok(None);
        }
        let message = checkpoint_message(&self.service, self.executed, &share.digest);
        let (signature, invalid) = combine_verified(&self.keys, &message, shares);
        for index in invalid {
            shares.remove(&index);
            // Indices come from `u16` replica numbers.
            if let Ok(replica) = u16::try_from(index) {
                self.culprits.insert(replica, CheckpointFault::InvalidShare);
            }
        }
        let Some(signature) = signature else {
            return Ok(None);
        };
        for (replica, digest) in &self.answered {
            if *digest != share.digest && !self.culprits.contains_key(replica) {
                self.culprits.insert(
                    *replica,
                    CheckpointFault::DivergingDigest { digest: *digest },
                );
            }
        }
        let certificate = CheckpointCertificate {
            executed: self.executed,
            digest: share.digest,
            signature,
        };
        self.by_digest.clear();
        self.certificate = Some(certificate.clone());
        Ok(Some(certificate))
    }

    /// The certificate, once formed.
    pub fn certificate(&self) -> Option<&CheckpointCertificate> {
        self.certificate.as_ref()
    }

    /// Replicas caught sending an invalid share or a digest other than the certified one.
    pub fn culprits(&self) -> &BTreeMap<u16, CheckpointFault> {
        &self.culprits
    }

    /// How many replicas sent a share.
    pub fn answered(&self) -> usize {
        self.answered.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{encode_request, KvRequest, KvStore};
    use maftia_crypto::identity::IdentityKey;
    use maftia_crypto::keygen::{deal_group, GroupPublic, NodeSecret};
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    struct Fixture {
        group: GroupPublic,
        secrets: Vec<NodeSecret>,
        service: ServiceId,
        clients: Vec<IdentityKey>,
    }

    fn fixture() -> Fixture {
        let mut rng = ChaCha20Rng::seed_from_u64(42);
        let (group, secrets) = deal_group(4, 1, &mut rng).unwrap();
        let service = ServiceId::new(&group, "replica-unit");
        let mut clients: Vec<IdentityKey> =
            (0..2).map(|_| IdentityKey::generate(&mut rng)).collect();
        clients.sort_by_key(|k| k.public());
        Fixture {
            group,
            secrets,
            service,
            clients,
        }
    }

    impl Fixture {
        fn reply_keys(&self) -> &BlsPublicKeySet {
            &self.group.bls[&KeySetId::Reply]
        }

        fn manager(&self, replica: usize) -> ReplicationManager<KvStore> {
            ReplicationManager::new(
                self.service,
                replica as u16,
                self.secrets[replica].bls[&KeySetId::Reply].clone(),
                self.clients.iter().map(IdentityKey::public).collect(),
                KvStore::new(),
            )
            .unwrap()
        }

        /// A genuine certificate (two honest shares) on whatever `snapshot` is.
        fn certify(&self, executed: u64, snapshot: &[u8]) -> CheckpointCertificate {
            let digest = snapshot_digest(snapshot);
            let message = checkpoint_message(&self.service, executed, &digest);
            let shares: Vec<BlsSignatureShare> = (0..2)
                .map(|i| self.secrets[i].bls[&KeySetId::Reply].sign(&message))
                .collect();
            let signature = self
                .reply_keys()
                .combine_unchecked(&[(0, &shares[0]), (1, &shares[1])])
                .unwrap();
            CheckpointCertificate {
                executed,
                digest,
                signature,
            }
        }
    }

    fn put(key: &[u8], value: &[u8]) -> Vec<u8> {
        encode_request(&KvRequest::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        })
        .unwrap()
    }

    /// A fake clock that advances 1 000 ns per reading.
    fn ticking_clock() -> u64 {
        static NOW: AtomicU64 = AtomicU64::new(0);
        NOW.fetch_add(1_000, Ordering::Relaxed)
    }

    #[test]
    fn signing_is_timed_only_with_a_clock_and_only_when_a_share_is_signed() {
        let fx = fixture();
        let mut untimed = fx.manager(0);
        let mut timed = fx.manager(0);
        timed.time_signing(ticking_clock);
        let request = SignedRequest::sign(&fx.clients[0], &fx.service, 1, put(b"k", b"v")).encode();
        let (a, b) = (untimed.execute(&request), timed.execute(&request));
        // Timing changes nothing that is decided or signed.
        assert_eq!(a, b);
        assert_eq!(untimed.signing_nanos(), 0);
        // Two readings around the one signature (only this test reads the clock).
        let after_one = timed.signing_nanos();
        assert_eq!(after_one, 1_000);
        // A retry is answered from the cache: no signature, no time.
        assert_eq!(timed.execute(&request).outcome, Outcome::Duplicate);
        assert_eq!(timed.signing_nanos(), after_one);
        // Garbage is skipped without a reply: no time either.
        assert!(matches!(
            timed.execute(b"garbage").outcome,
            Outcome::Invalid(_)
        ));
        assert_eq!(timed.signing_nanos(), after_one);
        let next = SignedRequest::sign(&fx.clients[0], &fx.service, 2, put(b"k", b"w")).encode();
        timed.execute(&next);
        assert_eq!(timed.signing_nanos(), 2_000);
    }

    #[test]
    fn new_checks_the_reply_key() {
        let fx = fixture();
        let clients: ClientList = fx.clients.iter().map(IdentityKey::public).collect();
        let coin = fx.secrets[1].bls[&KeySetId::Coin].clone();
        assert_eq!(
            ReplicationManager::new(fx.service, 1, coin, clients.clone(), KvStore::new()).err(),
            Some(ReplicaError::WrongKeySet {
                found: KeySetId::Coin
            })
        );
        let other = fx.secrets[2].bls[&KeySetId::Reply].clone();
        assert_eq!(
            ReplicationManager::new(fx.service, 1, other, clients, KvStore::new()).err(),
            Some(ReplicaError::IndexMismatch {
                replica: 1,
                index: 2
            })
        );
    }

    #[test]
    fn snapshot_layout_is_the_documented_one() {
        let fx = fixture();
        let mut replica = fx.manager(0);
        let client = &fx.clients[0];
        let request = SignedRequest::sign(client, &fx.service, 7, put(b"a", b"1")).encode();
        let reply = replica.execute(&request).reply.unwrap();
        replica.execute(b"junk");
        let ServiceResult::Executed(result) = reply.result else {
            panic!("{:?}", reply.result)
        };
        let state = replica.state().snapshot();
        let mut expected = b"MFRM\x01".to_vec();
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&client.public().to_bytes());
        expected.extend_from_slice(&7u64.to_le_bytes());
        expected.push(0);
        expected.extend_from_slice(&(result.len() as u64).to_le_bytes());
        expected.extend_from_slice(&result);
        expected.extend_from_slice(&(state.len() as u64).to_le_bytes());
        expected.extend_from_slice(&state);
        assert_eq!(replica.snapshot(), expected);
        assert_eq!(replica.digest(), hash(REPLICA_DIGEST_CONTEXT, &[&expected]));
        // The other result tags round-trip through the parser.
        for result in [
            ServiceResult::UnknownClient,
            ServiceResult::StaleSequence { last: 9 },
            ServiceResult::Executed(vec![1, 2]),
        ] {
            let mut encoded = Vec::new();
            encode_result(&result, &mut encoded);
            assert_eq!(encoded.len(), result_len(&result));
            let mut snapshot = b"MFRM\x01".to_vec();
            snapshot.extend_from_slice(&0u64.to_le_bytes());
            snapshot.extend_from_slice(&1u64.to_le_bytes());
            snapshot.extend_from_slice(&client.public().to_bytes());
            snapshot.extend_from_slice(&3u64.to_le_bytes());
            snapshot.extend_from_slice(&encoded);
            snapshot.extend_from_slice(&0u64.to_le_bytes());
            let parsed = parse_snapshot(&snapshot, replica.clients()).unwrap();
            assert_eq!(parsed.table[&client.public()], (3, result));
        }
    }

    fn header(executed: u64, clients: u64) -> Vec<u8> {
        let mut out = b"MFRM\x01".to_vec();
        out.extend_from_slice(&executed.to_le_bytes());
        out.extend_from_slice(&clients.to_le_bytes());
        out
    }

    fn client_entry(key: &IdentityPublicKey, tail: &[u8]) -> Vec<u8> {
        let mut out = key.to_bytes().to_vec();
        out.extend_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(tail);
        out
    }

    #[test]
    fn certified_but_malformed_snapshots_are_refused_and_change_nothing() {
        // Defence in depth: a snapshot that somehow carries a valid certificate (f + 1 signers)
        // is still decoded completely before anything is installed.
        let fx = fixture();
        let mut replica = fx.manager(3);
        let request = SignedRequest::sign(&fx.clients[1], &fx.service, 1, put(b"x", b"y"));
        replica.execute(&request.encode());
        let before = replica.snapshot();
        let (a, b) = (fx.clients[0].public(), fx.clients[1].public());
        let outsider = IdentityKey::from_bytes(&[5; 32]).public();
        let empty_state = 0u64.to_le_bytes();
        let good_state = {
            let mut s = (KvStore::new().snapshot().len() as u64)
                .to_le_bytes()
                .to_vec();
            s.extend_from_slice(&KvStore::new().snapshot());
            s
        };
        let executed_tag = [0u8, 0, 0, 0, 0, 0, 0, 0, 0];
        let cases: Vec<(u64, Vec<u8>, RestoreError)> = vec![
            (0, b"MFR".to_vec(), SnapshotFormatError::Truncated.into()),
            (
                0,
                b"XXXX\x01".to_vec(),
                SnapshotFormatError::BadMagic.into(),
            ),
            (
                0,
                b"MFRM\x07".to_vec(),
                SnapshotFormatError::UnsupportedVersion { found: 7 }.into(),
            ),
            (
                0,
                [header(0, u64::MAX), client_entry(&a, &executed_tag)].concat(),
                SnapshotFormatError::Truncated.into(),
            ),
            (
                0,
                [
                    header(0, 2),
                    client_entry(&b, &executed_tag),
                    client_entry(&a, &executed_tag),
                    good_state.clone(),
                ]
                .concat(),
                SnapshotFormatError::ClientsNotStrictlyIncreasing { index: 1 }.into(),
            ),
            (
                0,
                [
                    header(0, 2),
                    client_entry(&a, &executed_tag),
                    client_entry(&a, &executed_tag),
                    good_state.clone(),
                ]
                .concat(),
                SnapshotFormatError::ClientsNotStrictlyIncreasing { index: 1 }.into(),
            ),
            (
                0,
                [
                    header(0, 1),
                    client_entry(&outsider, &executed_tag),
                    good_state.clone(),
                ]
                .concat(),
                SnapshotFormatError::ClientNotOnList { index: 0 }.into(),
            ),
            (
                0,
                [header(0, 1), vec![0xff; 32], 1u64.to_le_bytes().to_vec()].concat(),
                SnapshotFormatError::InvalidClientKey { index: 0 }.into(),
            ),
            (
                0,
                [header(0, 1), client_entry(&a, &[9]), good_state.clone()].concat(),
                SnapshotFormatError::UnknownResultTag { index: 0, tag: 9 }.into(),
            ),
            (
                0,
                // A result length far beyond the input is caught before any allocation.
                [
                    header(0, 1),
                    client_entry(&a, &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
                ]
                .concat(),
                SnapshotFormatError::Truncated.into(),
            ),
            (
                0,
                [header(0, 0), good_state.clone(), vec![0]].concat(),
                SnapshotFormatError::TrailingBytes { extra: 1 }.into(),
            ),
            (
                5,
                [header(4, 0), good_state.clone()].concat(),
                RestoreError::PositionMismatch {
                    snapshot: 4,
                    certified: 5,
                },
            ),
            (
                0,
                [header(0, 0), empty_state.to_vec()].concat(),
                RestoreError::State(crate::kv::SnapshotError::Truncated.to_string()),
            ),
        ];
        for (executed, snapshot, expected) in cases {
            let certificate = fx.certify(executed, &snapshot);
            assert_eq!(
                replica.restore(&certificate, &snapshot, fx.reply_keys()),
                Err(expected)
            );
            assert_eq!(replica.snapshot(), before);
            assert_eq!(replica.client_last(&b), Some(1));
        }
        // A well-formed certified snapshot installs, with re-made shares for the cached replies.
        let snapshot = [
            header(9, 1),
            client_entry(&a, &[0, 2, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd]),
            good_state,
        ]
        .concat();
        replica
            .restore(&fx.certify(9, &snapshot), &snapshot, fx.reply_keys())
            .unwrap();
        assert_eq!(replica.snapshot(), snapshot);
        assert_eq!(replica.executed(), 9);
        assert_eq!(replica.client_last(&b), None);
        let retry = SignedRequest::sign(&fx.clients[0], &fx.service, 1, put(b"q", b"r"));
        let Ok(Admission::Executed(share)) = replica.admit(&retry.encode()) else {
            panic!("the restored cache answers the retry")
        };
        assert_eq!(share.result, ServiceResult::Executed(vec![0xab, 0xcd]));
        assert!(fx.reply_keys().verify_share(
            3,
            &reply_message(&fx.service, &a, 1, &share.result),
            &share.share
        ));
    }

    #[test]
    fn checkpoint_and_reply_messages_never_coincide() {
        let fx = fixture();
        let digest = [4; 32];
        let client = fx.clients[0].public();
        let checkpoint = checkpoint_message(&fx.service, 1, &digest);
        assert_ne!(
            checkpoint,
            reply_message(
                &fx.service,
                &client,
                1,
                &ServiceResult::Executed(digest.to_vec())
            )
        );
        assert_ne!(checkpoint, checkpoint_message(&fx.service, 2, &digest));
        assert_ne!(
            checkpoint,
            checkpoint_message(&ServiceId([0; 32]), 1, &digest)
        );
        assert_ne!(checkpoint, checkpoint_message(&fx.service, 1, &[5; 32]));
    }
}
