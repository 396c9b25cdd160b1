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
use std::collections::{BTreeMap, BTreeSet};
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
/// Evidence entries kept between two [`Checkpointer::take_evidence`] calls.
const MAX_EVIDENCE: usize = 256;

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
    #[error(
        "the transfer (executed {offered}, next round {offered_round}) is behind this replica \
         (executed {current}, next round {current_round})"
    )]
    Stale {
        offered: u64,
        offered_round: u64,
        current: u64,
        current_round: u64,
    },
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
    /// Replicas already reported for this checkpoint.
    reported: BTreeSet<u16>,
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
    /// Evidence against replicas other than the sender of the share being handled (found when a
    /// certificate forms, or in shares that arrived early), for [`Checkpointer::take_evidence`].
    evidence: Vec<(u16, CheckpointEvidence)>,
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
            evidence: Vec::new(),
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
        let position_digest = position.digest();
        let ordering = CheckpointShare {
            replica: self.replica,
            executed: state.executed,
            digest: position_digest,
            share: self.reply_key.sign(&checkpoint_message(
                &self.service,
                state.executed,
                &position_digest,
            )),
        };
        let executed = state.executed;
        let pending = Pending {
            reported: BTreeSet::new(),
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
            if let Some(evidence) = self.add_shares(peer, s, o) {
                self.report(peer, evidence);
            }
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
            pending.reported.insert(from);
        }
        // Culprits found among the earlier senders (an invalid share or a diverging digest shows
        // only once enough shares are in).
        let others: Vec<u16> = pending
            .state
            .culprits()
            .keys()
            .chain(pending.ordering.culprits().keys())
            .copied()
            .filter(|r| *r != from)
            .collect();
        for replica in others {
            if pending.reported.insert(replica) && self.evidence.len() < MAX_EVIDENCE {
                self.evidence.push((replica, CheckpointEvidence::BadShare));
            }
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

    /// Evidence found against replicas other than the sender of the message just handled.
    pub fn take_evidence(&mut self) -> Vec<(u16, CheckpointEvidence)> {
        std::mem::take(&mut self.evidence)
    }

    fn report(&mut self, replica: u16, evidence: CheckpointEvidence) {
        if self.evidence.len() < MAX_EVIDENCE {
            self.evidence.push((replica, evidence));
        }
    }

    /// Verify a transfer and install its service state into `manager`; then continue from its
    /// window. A transfer behind `manager`'s position or this checkpointer's next round is
    /// refused as [`TransferError::Stale`]. On error nothing changed.
    pub fn install(
        &mut self,
        transfer: &Transfer,
        manager: &mut ReplicationManager<KvStore>,
    ) -> Result<(), TransferError> {
        // Installing a checkpoint behind what we executed would roll the state back.
        if transfer.position.executed < manager.executed()
            || transfer.resume.next_round < self.window.next_round()
        {
            return Err(TransferError::Stale {
                offered: transfer.position.executed,
                offered_round: transfer.resume.next_round,
                current: manager.executed(),
                current_round: self.window.next_round(),
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use maftia_crypto::bls::KeySetId;
    use maftia_crypto::identity::IdentityKey;
    use maftia_crypto::keygen::{deal_group, NodeSecret};
    use maftia_smr::kv::{encode_request, KvRequest};
    use maftia_smr::replica::{snapshot_digest, ClientList, RestoreError};
    use maftia_smr::request::SignedRequest;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const N: usize = 4;
    const F: usize = 1;
    const DEDUP_ROUNDS: u64 = 8;
    const BATCH_SIZE: usize = 4;

    struct Fixture {
        secrets: Vec<NodeSecret>,
        service: ServiceId,
        clients: Vec<IdentityKey>,
        reply_keys: Arc<BlsPublicKeySet>,
    }

    /// One replica's service state and checkpoints, fed deliveries by hand.
    struct Replica {
        manager: ReplicationManager<KvStore>,
        checkpointer: Checkpointer,
        height: u64,
        chain: Digest,
    }

    fn fixture() -> Fixture {
        let mut rng = ChaCha20Rng::seed_from_u64(0xc4e7);
        let (group, secrets) = deal_group(N, F, &mut rng).unwrap();
        let service = ServiceId::new(&group, "checkpoint-unit");
        let clients = (0..2).map(|_| IdentityKey::generate(&mut rng)).collect();
        let reply_keys = Arc::new(group.bls[&KeySetId::Reply].clone());
        Fixture {
            secrets,
            service,
            clients,
            reply_keys,
        }
    }

    impl Fixture {
        fn reply_key(&self, replica: usize) -> BlsSecretShare {
            self.secrets[replica].bls[&KeySetId::Reply].clone()
        }

        /// Replica `i` at the start of the log.
        fn replica(&self, i: usize) -> Replica {
            let clients: ClientList = self.clients.iter().map(IdentityKey::public).collect();
            Replica {
                manager: ReplicationManager::new(
                    self.service,
                    i as u16,
                    self.reply_key(i),
                    clients,
                    KvStore::new(),
                )
                .unwrap(),
                checkpointer: Checkpointer::new(
                    self.service,
                    i as u16,
                    self.reply_key(i),
                    self.reply_keys.clone(),
                    DEDUP_ROUNDS,
                    N * BATCH_SIZE,
                ),
                height: 0,
                chain: [0; 32],
            }
        }

        /// Delivery `k` of the test log: round `k` with 0 to 2 signed puts (every third round
        /// delivers nothing, so positions and heights differ).
        fn delivery(&self, k: u64) -> (u64, Vec<Vec<u8>>) {
            let requests = (0..k % 3)
                .map(|j| {
                    let client = &self.clients[(j % 2) as usize];
                    let operation = encode_request(&KvRequest::Put {
                        key: format!("key {}", (k + j) % 5).into_bytes(),
                        value: format!("delivery {k} request {j}").into_bytes(),
                    })
                    .unwrap();
                    SignedRequest::sign(client, &self.service, 10 * k + j + 1, operation).encode()
                })
                .collect();
            (k, requests)
        }
    }

    impl Replica {
        /// Execute one delivery; the checkpoint shares, at a checkpoint height.
        fn deliver(
            &mut self,
            (round, requests): &(u64, Vec<Vec<u8>>),
        ) -> Option<CheckpointMessage> {
            for request in requests {
                self.manager.execute(request);
            }
            self.height += 1;
            self.chain = hash(
                "checkpoint unit chain",
                &[&self.chain, &round.to_le_bytes()],
            );
            self.checkpointer.delivered(
                &self.manager,
                *round,
                requests,
                self.height,
                self.chain,
                true,
            )
        }

        /// Shares from `from`; the evidence, if any.
        fn receive(
            &mut self,
            from: u16,
            message: &CheckpointMessage,
        ) -> Option<CheckpointEvidence> {
            let CheckpointMessage::Shares {
                position,
                state,
                ordering,
            } = message.clone()
            else {
                panic!("not shares: {message:?}")
            };
            self.checkpointer.shares(from, position, *state, *ordering)
        }
    }

    fn shares_of(message: &CheckpointMessage) -> (&Position, &CheckpointShare, &CheckpointShare) {
        match message {
            CheckpointMessage::Shares {
                position,
                state,
                ordering,
            } => (position, state, ordering),
            other => panic!("not shares: {other:?}"),
        }
    }

    /// Deliveries `from..to` at every replica in lock step; every checkpoint message reaches
    /// every other replica right away and raises no evidence.
    fn run(fx: &Fixture, replicas: &mut [Replica], from: u64, to: u64) {
        for k in from..to {
            let delivery = fx.delivery(k);
            let outgoing: Vec<(usize, CheckpointMessage)> = replicas
                .iter_mut()
                .enumerate()
                .filter_map(|(i, replica)| replica.deliver(&delivery).map(|m| (i, m)))
                .collect();
            for (sender, message) in &outgoing {
                for (i, replica) in replicas.iter_mut().enumerate() {
                    if i != *sender {
                        assert_eq!(replica.receive(*sender as u16, message), None);
                    }
                }
            }
        }
    }

    /// The four replicas after `deliveries` deliveries.
    fn group(fx: &Fixture, deliveries: u64) -> Vec<Replica> {
        let mut replicas: Vec<Replica> = (0..N).map(|i| fx.replica(i)).collect();
        run(fx, &mut replicas, 0, deliveries);
        replicas
    }

    /// What a fresh replica looks like, to check that a refused install changed nothing.
    fn fingerprint(replica: &Replica) -> (Vec<u8>, u64, Option<Transfer>, u64) {
        (
            replica.manager.snapshot(),
            replica.manager.executed(),
            replica.checkpointer.stable().cloned(),
            replica.checkpointer.window.next_round(),
        )
    }

    #[test]
    fn honest_shares_make_a_stable_transfer_that_a_fresh_replica_installs() {
        let fx = fixture();
        let interval = CHECKPOINT_INTERVAL;
        let mut replicas = group(&fx, interval);
        let transfer = replicas[0].checkpointer.stable().cloned().unwrap();
        assert_eq!(transfer.position.height, interval);
        assert_eq!(transfer.position.round, interval - 1);
        assert_eq!(transfer.position.executed, replicas[0].manager.executed());
        assert_eq!(transfer.resume.next_round, interval);
        assert!(transfer.position.executed > 0 && transfer.position.executed < interval);
        assert_eq!(transfer.snapshot, replicas[0].manager.snapshot());
        assert_eq!(
            snapshot_digest(&transfer.snapshot),
            transfer.state_certificate.digest
        );
        transfer
            .verify_position(&fx.service, &fx.reply_keys)
            .unwrap();
        assert!(transfer
            .state_certificate
            .verify(&fx.service, &fx.reply_keys));
        for replica in &replicas[1..] {
            let other = replica.checkpointer.stable().unwrap();
            assert_eq!(other.position, transfer.position);
            assert_eq!(other.snapshot, transfer.snapshot);
            assert_eq!(other.resume, transfer.resume);
        }
        // The transfer survives the wire.
        assert_eq!(Transfer::decode(&transfer.encode()).unwrap(), transfer);

        // A fresh replica 3 installs it and has the source's state.
        let mut fresh = fx.replica(3);
        fresh
            .checkpointer
            .install(&transfer, &mut fresh.manager)
            .unwrap();
        fresh.height = transfer.position.height;
        fresh.chain = transfer.position.chain;
        assert_eq!(fresh.manager.snapshot(), replicas[0].manager.snapshot());
        assert_eq!(fresh.manager.digest(), replicas[3].manager.digest());
        assert_eq!(fresh.manager.executed(), transfer.position.executed);
        assert_eq!(fresh.checkpointer.stable(), Some(&transfer));

        // It goes on exactly like the replica it replaces: same state, and the same position
        // (window included) at the next checkpoint, which it certifies with the others.
        let mut with_fresh: Vec<Replica> = replicas.drain(..3).collect();
        with_fresh.push(fresh);
        let mut old = replicas.pop().unwrap();
        for k in interval..2 * interval - 1 {
            let delivery = fx.delivery(k);
            old.deliver(&delivery);
        }
        let last = old.deliver(&fx.delivery(2 * interval - 1)).unwrap();
        run(&fx, &mut with_fresh, interval, 2 * interval);
        let resumed = with_fresh[3].checkpointer.stable().unwrap();
        assert_eq!(&resumed.position, shares_of(&last).0);
        assert_eq!(resumed.position.height, 2 * interval);
        assert_eq!(resumed.snapshot, old.manager.snapshot());
    }

    #[test]
    fn forged_mismatched_and_stale_transfers_are_refused_and_change_nothing() {
        let fx = fixture();
        let interval = CHECKPOINT_INTERVAL;
        let mut replicas = group(&fx, interval);
        let first = replicas[0].checkpointer.stable().cloned().unwrap();
        run(&fx, &mut replicas, interval, 2 * interval);
        let second = replicas[0].checkpointer.stable().cloned().unwrap();
        assert_eq!(second.position.height, 2 * interval);
        assert_ne!(first.position.executed, second.position.executed);

        let mut flipped = first.clone();
        let last = flipped.snapshot.len() - 1;
        flipped.snapshot[last] ^= 1;
        let mut other_snapshot = first.clone();
        other_snapshot.snapshot = second.snapshot.clone();
        let mut swapped_position_certificate = first.clone();
        swapped_position_certificate.position_certificate = second.position_certificate.clone();
        let mut other_chain = first.clone();
        other_chain.position.chain[0] ^= 1;
        let mut dropped_round = first.clone();
        dropped_round.resume.recent.pop();
        let mut next_round = first.clone();
        next_round.resume.next_round += 1;
        // A consistent forgery of the window: the certificate does not cover it.
        let mut forged_window = dropped_round.clone();
        forged_window.position.window = forged_window.resume.digest();
        let mut other_state_certificate = first.clone();
        other_state_certificate.state_certificate = second.state_certificate.clone();
        let mut state_certificate_as_position = first.clone();
        state_certificate_as_position.position_certificate = first.state_certificate.clone();

        let cases: Vec<(&str, Transfer, TransferError)> = vec![
            (
                "flipped snapshot byte",
                flipped,
                TransferError::Snapshot(RestoreError::DigestMismatch.to_string()),
            ),
            (
                "the snapshot of another checkpoint",
                other_snapshot,
                TransferError::Snapshot(RestoreError::DigestMismatch.to_string()),
            ),
            (
                "a position certificate for another position",
                swapped_position_certificate,
                TransferError::PositionCertificate,
            ),
            (
                "a position whose chain head is not the certified one",
                other_chain,
                TransferError::PositionCertificate,
            ),
            (
                "the state certificate offered as position certificate",
                state_certificate_as_position,
                TransferError::PositionCertificate,
            ),
            (
                "a window missing a round",
                dropped_round,
                TransferError::Window,
            ),
            (
                "a window resuming at another round",
                next_round,
                TransferError::Window,
            ),
            (
                "a window and position forged together",
                forged_window,
                TransferError::PositionCertificate,
            ),
            (
                "certificates for different executed counts",
                other_state_certificate,
                TransferError::Mismatch,
            ),
        ];
        let mut fresh = fx.replica(2);
        let before = fingerprint(&fresh);
        for (name, transfer, expected) in cases {
            assert_eq!(
                fresh.checkpointer.install(&transfer, &mut fresh.manager),
                Err(expected),
                "{name}"
            );
            assert!(fingerprint(&fresh) == before, "{name} changed the replica");
        }

        // A stale transfer: the first checkpoint, offered to a replica past the second one.
        let behind = fingerprint(&replicas[1]);
        let replica = &mut replicas[1];
        assert_eq!(
            replica.checkpointer.install(&first, &mut replica.manager),
            Err(TransferError::Stale {
                offered: first.position.executed,
                offered_round: interval,
                current: second.position.executed,
                current_round: 2 * interval,
            })
        );
        assert!(fingerprint(&replicas[1]) == behind);
        // Also to a replica that installed the second one.
        fresh
            .checkpointer
            .install(&second, &mut fresh.manager)
            .unwrap();
        let installed = fingerprint(&fresh);
        assert!(matches!(
            fresh.checkpointer.install(&first, &mut fresh.manager),
            Err(TransferError::Stale { .. })
        ));
        assert!(fingerprint(&fresh) == installed);
        assert_eq!(fresh.manager.snapshot(), replicas[0].manager.snapshot());
        // Undecodable bytes are refused with a typed error.
        assert!(matches!(
            Transfer::decode(&first.encode()[..40]),
            Err(TransferError::Malformed(_))
        ));
    }

    #[test]
    fn byzantine_checkpoint_shares_are_reported_and_never_certified() {
        let fx = fixture();
        let mut replicas: Vec<Replica> = (0..N).map(|i| fx.replica(i)).collect();
        // Everyone reaches the checkpoint; nobody has heard from anyone yet.
        let mut messages = Vec::new();
        for k in 0..CHECKPOINT_INTERVAL {
            let delivery = fx.delivery(k);
            messages = replicas
                .iter_mut()
                .filter_map(|replica| replica.deliver(&delivery))
                .collect();
        }
        assert_eq!(messages.len(), N);
        assert!(replicas.iter().all(|r| r.checkpointer.stable().is_none()));
        // Replica 3 is Byzantine; these are what its honest shares would be.
        let (position, state, ordering) = shares_of(&messages[3]);
        let byzantine_key = fx.reply_key(3);
        let shares = |position: &Position, state: &CheckpointShare, ordering: &CheckpointShare| {
            CheckpointMessage::Shares {
                position: position.clone(),
                state: Box::new(state.clone()),
                ordering: Box::new(ordering.clone()),
            }
        };

        // Malformed: shares naming another replica, or another position than the one claimed.
        let target = &mut replicas[0];
        let mut impersonated = state.clone();
        impersonated.replica = 2;
        assert_eq!(
            target.receive(3, &shares(position, &impersonated, ordering)),
            Some(CheckpointEvidence::Malformed)
        );
        let mut elsewhere = ordering.clone();
        elsewhere.executed += 1;
        assert_eq!(
            target.receive(3, &shares(position, state, &elsewhere)),
            Some(CheckpointEvidence::Malformed)
        );
        assert!(target.checkpointer.stable().is_none());

        // An invalid state share (signed over another message) is caught when combined with
        // ours; no stable checkpoint comes of it.
        let mut invalid = state.clone();
        invalid.share = byzantine_key.sign(b"not the checkpoint message");
        assert_eq!(
            target.receive(3, &shares(position, &invalid, ordering)),
            Some(CheckpointEvidence::BadShare)
        );
        assert!(target.checkpointer.stable().is_none());
        // It cannot take its share back: a second one is refused, and reported again.
        assert_eq!(
            target.receive(3, &shares(position, state, ordering)),
            Some(CheckpointEvidence::BadShare)
        );
        assert!(target.checkpointer.stable().is_none());
        // One honest peer's shares complete the certificate.
        assert_eq!(target.receive(1, &messages[1]), None);
        let stable = target.checkpointer.stable().cloned().unwrap();
        assert_eq!(&stable.position, position);
        assert_eq!(stable.state_certificate.digest, state.digest);

        // Validly signed shares on a diverging state and position never become stable: the
        // Byzantine replica alone is below the threshold, and the honest pair certifies the
        // honest statements.
        let target = &mut replicas[1];
        let mut wrong_position = position.clone();
        wrong_position.chain = [9; 32];
        let wrong_state_digest = [7; 32];
        let executed = position.executed;
        let sign = |digest: &Digest| CheckpointShare {
            replica: 3,
            executed,
            digest: *digest,
            share: byzantine_key.sign(&checkpoint_message(&fx.service, executed, digest)),
        };
        let diverging = shares(
            &wrong_position,
            &sign(&wrong_state_digest),
            &sign(&wrong_position.digest()),
        );
        target.receive(3, &diverging);
        assert!(target.checkpointer.stable().is_none());
        assert!(target.checkpointer.take_evidence().is_empty());
        assert_eq!(target.receive(2, &messages[2]), None);
        let stable = target.checkpointer.stable().cloned().unwrap();
        assert_eq!(&stable.position, position);
        assert_eq!(stable.state_certificate.digest, state.digest);
        assert_eq!(stable.position_certificate.digest, position.digest());
        // The diverging replica is reported once the certificate shows its shares were wrong,
        // although it was not the sender of the share that formed it; and only once.
        assert_eq!(
            target.checkpointer.take_evidence(),
            vec![(3, CheckpointEvidence::BadShare)]
        );
        assert!(target.checkpointer.take_evidence().is_empty());
    }
}
