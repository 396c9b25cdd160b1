//! Checkpoints and state transfer of the replicated service (CKPS01 ordering).
//!
//! **Checkpoints.** After every [`CHECKPOINT_INTERVAL`]-th delivery each replica signs, with its
//! share of the Reply key set, two statements about the state right after that delivery:
//! - the **state**: [`ReplicationManager::checkpoint`] — the position (ordered entries executed)
//!   and the digest of the canonical snapshot of the client table and the key-value store;
//! - the **ordering position** ([`Position`]): the round just delivered, the delivery height and
//!   digest-chain head, and the digest of atomic broadcast's deduplication window
//!   ([`ResumePoint`]) — what a replica needs to join the order right after that round and
//!   deliver exactly what the others deliver.
//!
//! Both are deterministic functions of the delivered sequence, so correct replicas sign the same
//! statements; `f + 1` matching shares form a certificate (at least one signer is correct). The
//! shares travel in control frames ([`CHECKPOINT_MAGIC`]); the newest certified checkpoint is
//! kept ([`Checkpointer::stable`]) with its snapshot, to serve laggards.
//!
//! **State transfer.** A replica in catch-up mode (restarted, rejuvenated or left behind by more
//! than atomic broadcast's round window) asks its peers for their stable checkpoint
//! ([`CheckpointMessage::Fetch`] with its height). A peer whose checkpoint is ahead sends a
//! [`Transfer`]: snapshot, window, position and both certificates. The receiver checks both
//! certificates against the service's public key, that the snapshot hashes to the certified
//! digest and the window to the certified position, and only then installs it: the service state
//! from the snapshot, a fresh atomic broadcast instance resuming at the next round, and a new
//! durable log based at that height ([`crate::durable::DurableReplica::rebase`]). A Byzantine
//! peer serving a forged or stale transfer is reported as evidence and ignored; the next correct
//! answer is used.
//!
//! **Limits.** A transfer travels in one frame, so the snapshot must fit the network's frame
//! limit (16 MiB by default; chunked transfer is future work). The high-throughput ordering mode
//! has no resume point yet: its replicas checkpoint but cannot install transfers. The log of a
//! running replica is not truncated at its own checkpoints (its atomic broadcast instance cannot
//! be rebuilt from a snapshot while it is mid-round); it is replaced only by an installed
//! transfer.
use maftia_broadcast::abc::{RecentWindow, ResumePoint};
use maftia_core::codec;
use maftia_crypto::bls::{BlsPublicKeySet, BlsSecretShare};
use maftia_crypto::hash::{hash, Digest};
use maftia_smr::kv::KvStore;
use maftia_smr::replica::{
    checkpoint_message, CheckpointCertificate, CheckpointCollector, CheckpointShare,
    ReplicationManager,
};
use maftia_smr::request::{reply_message, ReplyShare, ServiceId, ServiceResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use thiserror::Error;

/// First bytes of a checkpoint control frame (a replica-level control frame, see
/// [`crate::node::CONTROL_MAGIC`]).
pub const CHECKPOINT_MAGIC: &[u8] = b"MC ckpt v1 ";
/// Deliveries between checkpoints.
pub const CHECKPOINT_INTERVAL: u64 = 32;
/// Hash context of [`Position::digest`].
pub const POSITION_CONTEXT: &str = "maftia 2026-11 ordering position";
/// Largest checkpoint control frame accepted (a transfer carries a whole snapshot).
pub const MAX_CHECKPOINT_FRAME: usize = 16 << 20;
/// Checkpoints in progress kept at once (older ones are dropped).
const MAX_PENDING: usize = 2;

/// Where in the order a checkpoint was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Ordered entries executed (the state checkpoint's position).
    pub executed: u64,
    /// The atomic broadcast round delivered last.
    pub round: u64,
    /// Deliveries so far (the next delivery's height).
    pub height: u64,
    /// The delivery digest-chain head after that delivery.
    pub chain: Digest,
    /// [`ResumePoint::digest`] of the deduplication window after that round.
    pub window: Digest,
}

impl Position {
    /// The digest the position certificate signs (with [`checkpoint_message`] at `executed`).
    pub fn digest(&self) -> Digest {
        hash(
            POSITION_CONTEXT,
            &[
                &self.round.to_le_bytes(),
                &self.height.to_le_bytes(),
                &self.chain,
                &self.window,
            ],
        )
    }
}

/// Everything a lagging replica needs to resume from a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub position: Position,
    pub resume: ResumePoint,
    pub state_certificate: CheckpointCertificate,
    pub position_certificate: CheckpointCertificate,
    #[serde(with = "maftia_core::wire::bytes")]
    pub snapshot: Vec<u8>,
}

/// Why a transfer was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TransferError {
    #[error("the position certificate does not verify")]
    PositionCertificate,
    #[error("the deduplication window does not match the certified position")]
    Window,
    #[error("the certificates are for different positions")]
    Mismatch,
    #[error("the snapshot is refused: {0}")]
    Snapshot(String),
    #[error("the transfer does not decode: {0}")]
    Malformed(String),
}

impl Transfer {
    /// Check everything except the snapshot itself (which [`ReplicationManager::restore`]
    /// checks against the state certificate).
    pub fn verify_position(
        &self,
        service: &ServiceId,
        reply_keys: &BlsPublicKeySet,
    ) -> Result<(), TransferError> {
        if self.resume.digest() != self.position.window
            || self.resume.next_round != self.position.round.saturating_add(1)
        {
            return Err(TransferError::Window);
        }
        let certificate = &self.position_certificate;
        if certificate.executed != self.position.executed
            || certificate.digest != self.position.digest()
            || !certificate.verify(service, reply_keys)
        {
            return Err(TransferError::PositionCertificate);
        }
        if self.state_certificate.executed != self.position.executed {
            return Err(TransferError::Mismatch);
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        codec::encode_with_limit(self, usize::MAX).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Transfer, TransferError> {
        codec::decode_with_limit(bytes, MAX_CHECKPOINT_FRAME)
            .map_err(|e| TransferError::Malformed(e.to_string()))
    }
}

/// Checkpoint control messages between replicas.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum CheckpointMessage {
    /// A replica's shares of the checkpoint at `position`.
    Shares {
        position: Position,
        state: Box<CheckpointShare>,
        ordering: Box<CheckpointShare>,
    },
    /// "I am at `height`; send me your stable checkpoint if it is ahead."
    Fetch { height: u64 },
    /// A stable checkpoint.
    Transfer(Box<Transfer>),
}

impl CheckpointMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = CHECKPOINT_MAGIC.to_vec();
        out.extend(codec::encode_with_limit(self, usize::MAX).unwrap_or_default());
        out
    }

    /// Decode a control frame that starts with [`CHECKPOINT_MAGIC`].
    pub fn decode(frame: &[u8]) -> Option<Result<CheckpointMessage, codec::DecodeError>> {
        let body = frame.strip_prefix(CHECKPOINT_MAGIC)?;
        Some(codec::decode_with_limit(body, MAX_CHECKPOINT_FRAME))
    }
}

/// Evidence from checkpoint messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointEvidence {
    /// A share signed by another replica than the sender, or malformed.
    Malformed,
    /// An invalid share or a share on a digest other than the certified one.
    BadShare,
    /// A transfer that does not verify.
    BadTransfer(String),
}

struct Pending {
    position: Position,
    resume: ResumePoint,
    snapshot: Vec<u8>,
    state: CheckpointCollector,
    ordering: CheckpointCollector,
}

/// A replica's checkpoint bookkeeping (see the module documentation).
pub struct Checkpointer {
    service: ServiceId,
    replica: u16,
    reply_key: BlsSecretShare,
    reply_keys: Arc<BlsPublicKeySet>,
    dedup_rounds: u64,
    /// The most requests one round delivers (`n · batch_size`), to check resume points.
    max_per_round: usize,
    window: RecentWindow,
    pending: BTreeMap<u64, Pending>,
    /// Shares for positions we have not reached: the latest per peer.
    early: BTreeMap<u16, (Position, CheckpointShare, CheckpointShare)>,
    stable: Option<Transfer>,
}

impl Checkpointer {
    pub fn new(
        service: ServiceId,
        replica: u16,
        reply_key: BlsSecretShare,
        reply_keys: Arc<BlsPublicKeySet>,
        dedup_rounds: u64,
        max_per_round: usize,
    ) -> Checkpointer {
        Checkpointer {
            service,
            replica,
            reply_key,
            reply_keys,
            dedup_rounds,
            max_per_round,
            window: RecentWindow::new(dedup_rounds),
            pending: BTreeMap::new(),
            early: BTreeMap::new(),
            stable: None,
        }
    }

    /// The newest certified checkpoint, with its snapshot.
    pub fn stable(&self) -> Option<&Transfer> {
        self.stable.as_ref()
    }

    /// Record one executed delivery (`round`'s `requests`; `height` and `chain` after it). At a
    /// checkpoint height, returns our shares to send to every peer.
    pub fn delivered(
        &mut self,
        manager: &ReplicationManager<KvStore>,
        round: u64,
        requests: &[Vec<u8>],
        height: u64,
        chain: Digest,
        checkpoint: bool,
    ) -> Option<CheckpointMessage> {
        if let Err(e) = self.window.push(round, requests) {
            // Deliveries come in round order; this would be a bug, not an attack.
            tracing::error!(error = %e, round, "delivery out of order for the checkpoint window");
            return None;
        }
        if !checkpoint || height == 0 || !height.is_multiple_of(CHECKPOINT_INTERVAL) {
            return None;
        }
        let resume = self.window.resume_point();
        let (snapshot, state) = manager.checkpoint();
        let position = Position {
            executed: state.executed,
            round,
            height,
            chain,
            window: resume.digest(),
        };
        let ordering = CheckpointShare {
            replica: self.replica,
            executed: state.executed,
            digest: position.digest(),
            share: self.reply_key.sign(&checkpoint_message(
                &self.service,
                state.executed,
                &position.digest(),
            )),
        };
        let executed = state.executed;
        let pending = Pending {
            position: position.clone(),
            resume,
            snapshot,
            state: CheckpointCollector::new(self.service, self.reply_keys.clone(), executed),
            ordering: CheckpointCollector::new(self.service, self.reply_keys.clone(), executed),
        };
        self.pending.insert(executed, pending);
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_first();
        }
        self.add_shares(self.replica, state.clone(), ordering.clone());
        // Shares that arrived before we got here.
        let early: Vec<_> = self
            .early
            .iter()
            .filter(|(_, (p, _, _))| p.executed == executed)
            .map(|(peer, (_, s, o))| (*peer, s.clone(), o.clone()))
            .collect();
        for (peer, s, o) in early {
            self.early.remove(&peer);
            self.add_shares(peer, s, o);
        }
        Some(CheckpointMessage::Shares {
            position,
            state: Box::new(state),
            ordering: Box::new(ordering),
        })
    }

    /// Shares from `from`; returns evidence against it, if any.
    pub fn shares(
        &mut self,
        from: u16,
        position: Position,
        state: CheckpointShare,
        ordering: CheckpointShare,
    ) -> Option<CheckpointEvidence> {
        if state.replica != from
            || ordering.replica != from
            || state.executed != position.executed
            || ordering.executed != position.executed
        {
            return Some(CheckpointEvidence::Malformed);
        }
        let newest = self.pending.keys().next_back().copied().unwrap_or(0);
        if !self.pending.contains_key(&position.executed) {
            if position.executed > newest {
                self.early.insert(from, (position, state, ordering));
            }
            return None;
        }
        self.add_shares(from, state, ordering)
    }

    fn add_shares(
        &mut self,
        from: u16,
        state: CheckpointShare,
        ordering: CheckpointShare,
    ) -> Option<CheckpointEvidence> {
        let executed = state.executed;
        let pending = self.pending.get_mut(&executed)?;
        let state_result = pending.state.add(state);
        let ordering_result = pending.ordering.add(ordering);
        let mut evidence = None;
        if state_result.is_err() || ordering_result.is_err() {
            evidence = Some(CheckpointEvidence::Malformed);
        }
        if pending.state.culprits().contains_key(&from)
            || pending.ordering.culprits().contains_key(&from)
        {
            evidence = Some(CheckpointEvidence::BadShare);
        }
        if let (Some(state_cert), Some(ordering_cert)) =
            (pending.state.certificate(), pending.ordering.certificate())
        {
            // Our own statements are what got certified only if the digests match ours.
            let ours = state_cert.digest == pending.state_digest()
                && ordering_cert.digest == pending.position.digest();
            let newer = self
                .stable
                .as_ref()
                .is_none_or(|s| s.position.executed < executed);
            if ours && newer {
                let transfer = Transfer {
                    position: pending.position.clone(),
                    resume: pending.resume.clone(),
                    state_certificate: state_cert.clone(),
                    position_certificate: ordering_cert.clone(),
                    snapshot: std::mem::take(&mut pending.snapshot),
                };
                tracing::debug!(
                    executed,
                    height = transfer.position.height,
                    "checkpoint stable"
                );
                self.stable = Some(transfer);
                self.pending.retain(|e, _| *e > executed);
            }
        }
        evidence
    }

    /// Byzantine mode `intruded` (tests and the demo): a wrong result signed with our real reply
    /// share (odd sequence numbers), or the real result with a share on another message (even).
    pub fn lie(&self, mut reply: ReplyShare) -> ReplyShare {
        let wrong = ServiceResult::Executed(b"the intruder says hello".to_vec());
        if reply.seq % 2 == 1 {
            reply.share = self.reply_key.sign(&reply_message(
                &self.service,
                &reply.client,
                reply.seq,
                &wrong,
            ));
            reply.result = wrong;
        } else {
            let other = reply_message(&self.service, &reply.client, reply.seq ^ 2, &reply.result);
            reply.share = self.reply_key.sign(&other);
        }
        reply
    }

    /// Verify a transfer and install its service state into `manager`; then continue from its
    /// window. On error nothing changed.
    pub fn install(
        &mut self,
        transfer: &Transfer,
        manager: &mut ReplicationManager<KvStore>,
    ) -> Result<(), TransferError> {
        transfer.verify_position(&self.service, &self.reply_keys)?;
        let window = RecentWindow::resumed(&transfer.resume, self.dedup_rounds, self.max_per_round)
            .map_err(|_| TransferError::Window)?;
        manager
            .restore(
                &transfer.state_certificate,
                &transfer.snapshot,
                &self.reply_keys,
            )
            .map_err(|e| TransferError::Snapshot(e.to_string()))?;
        self.window = window;
        self.pending.clear();
        self.early.clear();
        self.stable = Some(transfer.clone());
        Ok(())
    }
}

impl Pending {
    fn state_digest(&self) -> Digest {
        maftia_smr::replica::snapshot_digest(&self.snapshot)
    }
}
