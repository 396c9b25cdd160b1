//! State machine replication over CKPS01 atomic broadcast, under the deterministic simulator.
//!
//! Each simulated group has `n` replicas (n = 4 and n = 7) and [`CLIENTS`] clients, all nodes of
//! one [`Sim`]: every message between them — the atomic broadcast traffic, client requests and
//! reply shares — is a simulator frame, reordered, delayed, duplicated and partitioned by the
//! seeded adversarial scheduler. `f` replicas follow one of the simulator's Byzantine strategies
//! ([`Strategy::all`]); with [`Strategy::InvalidShares`] they also corrupt their atomic broadcast
//! messages and lie to clients (a wrong result signed with their real Reply share, or the right
//! result with a share on another message), and with [`Strategy::FloodFuture`] they flood
//! far-future rounds.
//!
//! A replica runs [`Abc`] (CKPS01 atomic broadcast; the fast insecure threshold signer of
//! `maftia_sim` for the big sweeps, real BLS key sets on a few seeds) and feeds every delivery to
//! a [`ReplicationManager<KvStore>`] with a real BLS Reply key share, exactly like
//! `maftia node`: a client's request is admitted ([`ReplicationManager::admit`]), ordered, then
//! executed in delivery order, and every execution's reply share goes to the request's client.
//! A client holds an Ed25519 key on the service's client list; it signs random KV requests
//! ([`SignedRequest`]) and sends each to a random honest replica, one outstanding request at a
//! time, after a random think time (self-addressed frames, so the scheduler decides when); a
//! request completes when its [`ReplyCollector`] certifies `f + 1` matching shares. Invocations
//! and completions are stamped with the simulator's event counter.
//!
//! Checked after every event: honest replicas execute the same entry at every log position with
//! the same outcome and result, and have the same replica digest after equal `executed` counts;
//! every completion's certificate verifies, at least `f + 1` replicas (one of them honest) had
//! executed the request when it completed, and its result is the honest replicas' result; no
//! honest node (replica or client) blames an honest replica. At quiescence: every client
//! completed every request, every honest replica executed the same entries and reached the same
//! digest, and [`lincheck::check`] finds the history linearizable against [`KvModel`].
//!
//! Replay one seed with `MAFTIA_SIM_SEED=s`; soak with `MAFTIA_SIM_SEEDS=k`.
// maftia-broadcast's simulator support (key sets, Byzantine assignment, evidence checks). Its
// crate keeps the workspace's older minimum Rust version, where `is_multiple_of` is not stable.
#[path = "../../maftia-broadcast/tests/support/mod.rs"]
#[allow(clippy::manual_is_multiple_of)]
mod abc_support;

use abc_support::{bls_keys, check_clean_evidence, config, faulty_set, insecure_keys, FaultCursor};
use maftia_broadcast::abc::{
    Abc, AbcDelivery, AbcError, AbcFault, AbcParams, Message as AbcWire, BATCH_SIGNATURE_CONTEXT,
};
use maftia_broadcast::{cbc, mvba, ThresholdKeys};
use maftia_core::{NodeId, Protocol, ProtocolStep, Step, Target};
use maftia_crypto::bls::{self, BlsPublicKeySet, BlsSecretShare, KeySetId};
use maftia_crypto::hash::hash;
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_crypto::threshold::ThresholdSigner;
use maftia_sim::{check_seeds, Adversary, Sim, SimConfig, SimFailure, SimState, Strategy};
use maftia_smr::kv::{decode_reply, encode_request, KvReply, KvRequest, KvStore};
use maftia_smr::lincheck::{self, KvModel, Operation, DEFAULT_SEARCH_BUDGET};
use maftia_smr::replica::{Admission, ClientList, Outcome, ReplicationManager};
use maftia_smr::request::{
    reply_message, ReplyCertificate, ReplyCollector, ReplyShare, ServiceId, ServiceResult,
    SignedRequest,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Simulated clients per group.
const CLIENTS: usize = 4;
/// Requests each client completes per run.
const REQUESTS_PER_CLIENT: u32 = 4;
/// Seeds per (n, strategy) with the insecure ABC signer, n = 4.
const SEEDS_N4: u64 = 12;
/// Seeds per (n, strategy) with the insecure ABC signer, n = 7.
const SEEDS_N7: u64 = 3;
/// Seeds of the honest runs.
const HONEST_SEEDS: u64 = 20;
/// Seeds with real BLS key sets for atomic broadcast too.
const BLS_SEEDS: u64 = 2;
/// Most self-addressed "think" frames before a client's next request.
const MAX_THINK: u32 = 4;
/// The keys clients touch: few, so that requests conflict.
const KEYS: [&[u8]; 4] = [b"a", b"b", b"c", b"d"];
/// The values clients write: few, so that compare-and-set and preconditions sometimes hold.
const VALUES: [&[u8]; 3] = [b"x", b"y", b"z"];

/// Small batches, so that the run needs several rounds.
fn params() -> AbcParams {
    AbcParams {
        batch_size: 4,
        max_batch_bytes: 4096,
        max_request_size: 1024,
        max_pending: 64,
        dedup_rounds: 16,
    }
}

// ---------------------------------------------------------------------------------------------
// Messages, outputs and evidence of the simulated nodes.

/// What the simulated nodes send each other.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "Sh: Serialize, Si: Serialize",
    deserialize = "Sh: DeserializeOwned, Si: DeserializeOwned"
))]
// Atomic broadcast messages dominate the traffic; boxing them would only add allocations.
#[allow(clippy::large_enum_variant)]
enum SmrMessage<Sh, Si> {
    /// Replica to replica: atomic broadcast.
    Abc(AbcWire<Sh, Si>),
    /// Client to replica: an encoded [`SignedRequest`].
    Request(Vec<u8>),
    /// Replica to client: a reply share.
    Reply(ReplyShare),
    /// Client to itself: `k` more frames of think time before its next request.
    Think(u32),
}

type SmrWire<S> = SmrMessage<<S as ThresholdSigner>::Share, <S as ThresholdSigner>::Signature>;

/// What replicas and clients output (what the checks look at).
#[derive(Clone, Debug, PartialEq)]
enum SmrOutput {
    /// A replica executed the entry at log `position` (1-based: its `executed` count after it).
    Executed {
        position: u64,
        request: Option<(IdentityPublicKey, u64)>,
        outcome: Outcome,
        result: Option<ServiceResult>,
    },
    /// A replica executed a whole delivery; its replica digest after it.
    Delivered {
        round: u64,
        executed: u64,
        digest: [u8; 32],
    },
    /// A client sent request `seq`.
    Invoked { seq: u64, call: KvRequest },
    /// A client's request `seq` is certified.
    Completed {
        seq: u64,
        certificate: ReplyCertificate,
    },
    /// A client caught `replica` lying or sending an invalid share.
    Culprit { replica: u16, reason: String },
}

/// Evidence the simulated nodes record.
#[derive(Clone, Debug, PartialEq)]
enum SmrFault {
    Abc(AbcFault),
    /// A message this kind of node never receives from this kind of sender.
    Unexpected(&'static str),
    /// A request that does not decode or verify, or from a client not on the list.
    InvalidRequest,
    /// A reply share whose `replica` field is not its sender.
    ImpersonatedReply,
}

#[derive(Debug, thiserror::Error)]
enum SmrError {
    #[error("replicas take no local input")]
    NotAClient,
    #[error("the client already started")]
    Started,
}

// ---------------------------------------------------------------------------------------------
// The nodes.

struct Replica<S: ThresholdSigner> {
    id: NodeId,
    /// Number of replicas (node ids `0..replicas`); clients follow.
    replicas: usize,
    abc: Abc<S>,
    manager: ReplicationManager<KvStore>,
    /// Each client's node.
    client_nodes: Arc<BTreeMap<IdentityPublicKey, NodeId>>,
}

struct Client {
    id: NodeId,
    key: IdentityKey,
    service: ServiceId,
    reply_keys: Arc<BlsPublicKeySet>,
    /// The replicas it may send a request to (the honest ones: a request given only to a
    /// Byzantine replica may never be ordered, and real clients send to every replica).
    honest: Arc<Vec<NodeId>>,
    started: bool,
    remaining: u32,
    seq: u64,
    collector: Option<ReplyCollector>,
}

enum SmrNode<S: ThresholdSigner> {
    Replica(Box<Replica<S>>),
    Client(Box<Client>),
}

type NodeStep<S> = ProtocolStep<SmrNode<S>>;

impl<S: ThresholdSigner> Replica<S> {
    fn replica_set(&self, except: Option<NodeId>) -> Target {
        Target::Nodes(
            NodeId::all(self.replicas)
                .filter(|id| Some(*id) != except)
                .collect(),
        )
    }

    /// Fold an atomic broadcast step in: its messages go to replicas only, its deliveries are
    /// executed and every reply share goes to its client.
    fn absorb(&mut self, abc: ProtocolStep<Abc<S>>, step: &mut NodeStep<S>) {
        let Step {
            messages,
            outputs,
            faults,
        } = abc;
        for message in messages {
            let target = match message.target {
                Target::All => self.replica_set(None),
                Target::Others => self.replica_set(Some(self.id)),
                other => other,
            };
            step.send(target, SmrMessage::Abc(message.message));
        }
        for fault in faults {
            step.fault(fault.culprit, SmrFault::Abc(fault.kind));
        }
        for AbcDelivery { round, requests } in outputs {
            for request in &requests {
                let execution = self.manager.execute(request);
                let reply = execution.reply;
                step.output(SmrOutput::Executed {
                    position: self.manager.executed(),
                    request: reply.as_ref().map(|r| (r.client, r.seq)),
                    outcome: execution.outcome,
                    result: reply.as_ref().map(|r| r.result.clone()),
                });
                if let Some(reply) = reply {
                    self.send_reply(reply, step);
                }
            }
            step.output(SmrOutput::Delivered {
                round,
                executed: self.manager.executed(),
                digest: self.manager.digest(),
            });
        }
    }

    fn send_reply(&self, reply: ReplyShare, step: &mut NodeStep<S>) {
        if let Some(client) = self.client_nodes.get(&reply.client) {
            step.send(Target::Node(*client), SmrMessage::Reply(reply));
        }
    }

    fn handle(&mut self, from: NodeId, message: SmrWire<S>, rng: &mut dyn RngCore) -> NodeStep<S> {
        let mut step = Step::new();
        match message {
            SmrMessage::Abc(message) => {
                let abc = self.abc.handle_message(from, message, rng);
                self.absorb(abc, &mut step);
            }
            // Like `maftia node`'s client port: admission first, then ordering.
            SmrMessage::Request(bytes) => match self.manager.admit(&bytes) {
                Ok(Admission::Order(_)) => match self.abc.handle_input(bytes, rng) {
                    Ok(abc) => self.absorb(abc, &mut step),
                    // A network duplicate (already pending or just delivered): nothing to do.
                    Err(AbcError::AlreadyPending | AbcError::AlreadyDelivered) => {}
                    Err(_) => step.fault(from, SmrFault::InvalidRequest),
                },
                Ok(Admission::Executed(reply) | Admission::Stale(reply)) => {
                    self.send_reply(reply, &mut step)
                }
                Err(_) => step.fault(from, SmrFault::InvalidRequest),
            },
            SmrMessage::Reply(_) => step.fault(from, SmrFault::Unexpected("reply to a replica")),
            SmrMessage::Think(_) => step.fault(from, SmrFault::Unexpected("think to a replica")),
        }
        step
    }
}

impl Client {
    /// Think for a random number of self-addressed frames, then send the next request.
    fn think<S: ThresholdSigner>(&mut self, rng: &mut dyn RngCore, step: &mut NodeStep<S>) {
        match rng.next_u32() % (MAX_THINK + 1) {
            0 => self.submit::<S>(rng, step),
            frames => step.send(Target::Node(self.id), SmrMessage::Think(frames)),
        }
    }

    fn submit<S: ThresholdSigner>(&mut self, rng: &mut dyn RngCore, step: &mut NodeStep<S>) {
        self.seq += 1;
        let call = random_call(rng);
        let operation = encode_request(&call).unwrap();
        let request = SignedRequest::sign(&self.key, &self.service, self.seq, operation);
        let to = self.honest[rng.next_u32() as usize % self.honest.len()];
        step.send(Target::Node(to), SmrMessage::Request(request.encode()));
        self.collector = Some(ReplyCollector::new(
            self.service,
            self.reply_keys.clone(),
            self.key.public(),
            self.seq,
        ));
        step.output(SmrOutput::Invoked {
            seq: self.seq,
            call,
        });
    }

    fn handle<S: ThresholdSigner>(
        &mut self,
        from: NodeId,
        message: SmrWire<S>,
        rng: &mut dyn RngCore,
    ) -> NodeStep<S> {
        let mut step = Step::new();
        match message {
            SmrMessage::Think(frames) if from == self.id => {
                if frames > 1 {
                    step.send(Target::Node(self.id), SmrMessage::Think(frames - 1));
                } else {
                    self.submit::<S>(rng, &mut step);
                }
            }
            SmrMessage::Reply(share) => {
                // Channels are authenticated: a share is attributed to its sender.
                if usize::from(share.replica) != from.index() {
                    step.fault(from, SmrFault::ImpersonatedReply);
                    return step;
                }
                let Some(collector) = &mut self.collector else {
                    return step; // a late share of a completed request
                };
                // Network duplicates and shares of earlier requests are refused; fine.
                let Ok(Some(certificate)) = collector.add(share) else {
                    return step;
                };
                for (replica, reason) in collector.culprits() {
                    step.output(SmrOutput::Culprit {
                        replica: *replica,
                        reason: reason.clone(),
                    });
                }
                step.output(SmrOutput::Completed {
                    seq: self.seq,
                    certificate,
                });
                self.collector = None;
                self.remaining -= 1;
                if self.remaining > 0 {
                    self.think::<S>(rng, &mut step);
                }
            }
            _ => step.fault(from, SmrFault::Unexpected("message to a client")),
        }
        step
    }
}

/// A random KV request on [`KEYS`] and [`VALUES`].
fn random_call(rng: &mut dyn RngCore) -> KvRequest {
    let mut pick = |options: usize| rng.next_u32() as usize % options;
    let key = KEYS[pick(KEYS.len())].to_vec();
    let value = VALUES[pick(VALUES.len())].to_vec();
    let maybe = |choice: usize| (choice < VALUES.len()).then(|| VALUES[choice].to_vec());
    match pick(20) {
        0..=5 => KvRequest::Get { key },
        6..=10 => KvRequest::Put { key, value },
        11..=12 => KvRequest::Delete { key },
        13..=15 => KvRequest::CompareAndSet {
            key,
            expected: maybe(pick(VALUES.len() + 1)),
            new: maybe(pick(VALUES.len() + 1)),
        },
        16..=17 => {
            let start = pick(KEYS.len());
            KvRequest::Range {
                start: KEYS[start].to_vec(),
                end: (pick(2) == 0).then(|| KEYS[pick(KEYS.len())].to_vec()),
                limit: 1 + pick(3) as u32,
            }
        }
        _ => KvRequest::Transaction {
            preconditions: vec![(key, maybe(pick(VALUES.len() + 1)))],
            writes: vec![
                (KEYS[pick(KEYS.len())].to_vec(), Some(value)),
                (
                    KEYS[pick(KEYS.len())].to_vec(),
                    maybe(pick(VALUES.len() + 1)),
                ),
            ],
        },
    }
}

/// The one local input: a client starts its requests.
#[derive(Debug)]
struct Start;

impl<S: ThresholdSigner> Protocol for SmrNode<S> {
    type Message = SmrWire<S>;
    type Input = Start;
    type Output = SmrOutput;
    type FaultKind = SmrFault;
    type Error = SmrError;

    fn our_id(&self) -> NodeId {
        match self {
            SmrNode::Replica(replica) => replica.id,
            SmrNode::Client(client) => client.id,
        }
    }

    fn handle_input(&mut self, _: Start, rng: &mut dyn RngCore) -> Result<NodeStep<S>, SmrError> {
        let SmrNode::Client(client) = self else {
            return Err(SmrError::NotAClient);
        };
        if client.started {
            return Err(SmrError::Started);
        }
        client.started = true;
        let mut step = Step::new();
        client.think::<S>(rng, &mut step);
        Ok(step)
    }

    fn handle_message(
        &mut self,
        from: NodeId,
        message: SmrWire<S>,
        rng: &mut dyn RngCore,
    ) -> NodeStep<S> {
        match self {
            SmrNode::Replica(replica) => replica.handle(from, message, rng),
            SmrNode::Client(client) => client.handle::<S>(from, message, rng),
        }
    }

    fn terminated(&self) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------------------------
// The group.

/// Keys of one group of `n` replicas, dealt once and shared by every seed.
struct Group<S> {
    n: usize,
    f: usize,
    abc_keys: Vec<ThresholdKeys<S>>,
    identities: Vec<IdentityKey>,
    registry: Arc<Vec<IdentityPublicKey>>,
    reply_public: Arc<BlsPublicKeySet>,
    reply_secrets: Vec<BlsSecretShare>,
    service: ServiceId,
    clients: Vec<IdentityKey>,
    client_list: ClientList,
}

impl<S: ThresholdSigner> Group<S> {
    fn new(abc_keys: Vec<ThresholdKeys<S>>) -> Self {
        let n = abc_keys.len();
        let f = config(n).f();
        let mut rng = ChaCha8Rng::seed_from_u64(0x5352_5f73_696d ^ n as u64);
        let identities: Vec<IdentityKey> =
            (0..n).map(|_| IdentityKey::generate(&mut rng)).collect();
        let registry = Arc::new(identities.iter().map(IdentityKey::public).collect());
        let (reply_public, reply_secrets) = bls::deal(
            KeySetId::Reply,
            n,
            KeySetId::Reply.threshold(n, f),
            &mut rng,
        )
        .unwrap();
        assert_eq!(reply_public.threshold, f + 1);
        let service = ServiceId(hash(
            "maftia smr sim service",
            &[
                &reply_public.public_key.to_compressed(),
                &(n as u64).to_le_bytes(),
            ],
        ));
        let clients: Vec<IdentityKey> = (0..CLIENTS)
            .map(|_| IdentityKey::generate(&mut rng))
            .collect();
        let client_list = clients.iter().map(IdentityKey::public).collect();
        Group {
            n,
            f,
            abc_keys,
            identities,
            registry,
            reply_public: Arc::new(reply_public),
            reply_secrets,
            service,
            clients,
            client_list,
        }
    }

    fn client_node(&self, index: usize) -> NodeId {
        NodeId((self.n + index) as u16)
    }
}

/// The adversary's protocol-specific hooks (see the module documentation).
struct SmrAdversary {
    /// The Byzantine replicas' Reply shares, by replica index.
    reply_keys: BTreeMap<u16, BlsSecretShare>,
    service: ServiceId,
}

impl<S: ThresholdSigner> Adversary<SmrNode<S>> for SmrAdversary {
    fn corrupt(&mut self, message: &SmrWire<S>, rng: &mut dyn RngCore) -> Option<SmrWire<S>> {
        match message {
            SmrMessage::Reply(share) => {
                let key = self.reply_keys.get(&share.replica)?;
                let mut lie = share.clone();
                match rng.next_u32() % 3 {
                    0 => return None,
                    // A wrong result, validly signed with the replica's real share.
                    1 => {
                        lie.result = ServiceResult::Executed(b"the intruder says hello".to_vec());
                        lie.share = key.sign(&reply_message(
                            &self.service,
                            &lie.client,
                            lie.seq,
                            &lie.result,
                        ));
                    }
                    // The right result with a share on another message.
                    _ => {
                        lie.share = key.sign(&reply_message(
                            &self.service,
                            &lie.client,
                            lie.seq ^ 2,
                            &lie.result,
                        ))
                    }
                }
                Some(SmrMessage::Reply(lie))
            }
            SmrMessage::Abc(AbcWire::Batch {
                round, requests, ..
            }) if rng.next_u32().is_multiple_of(3) => Some(SmrMessage::Abc(AbcWire::Batch {
                round: *round,
                requests: requests.clone(),
                signature: IdentityKey::from_bytes(&[7; 32]).sign(BATCH_SIGNATURE_CONTEXT, b"x"),
            })),
            SmrMessage::Abc(AbcWire::Mvba { round, message })
                if rng.next_u32().is_multiple_of(2) =>
            {
                Some(SmrMessage::Abc(AbcWire::Mvba {
                    round: round.saturating_add(1),
                    message: message.clone(),
                }))
            }
            _ => None,
        }
    }

    fn far_future(&mut self, rng: &mut dyn RngCore) -> Vec<SmrWire<S>> {
        let far = 1_000 + u64::from(rng.next_u32() % 1_000_000);
        vec![
            SmrMessage::Abc(AbcWire::Mvba {
                round: far,
                message: mvba::Message::Proposal(
                    NodeId(0),
                    cbc::Message::Send(b"byz far proposal".to_vec()),
                ),
            }),
            SmrMessage::Abc(AbcWire::Batch {
                round: u64::MAX - u64::from(rng.next_u32() % 8),
                requests: vec![b"byz far batch".to_vec()],
                signature: IdentityKey::from_bytes(&[7; 32]).sign(BATCH_SIGNATURE_CONTEXT, b"x"),
            }),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// One client operation of the history.
#[derive(Debug)]
struct Op {
    invoke: u64,
    call: KvRequest,
    complete: Option<(u64, ServiceResult)>,
}

/// Reads every node's new outputs after each event, stamps client operations with the event
/// counter and checks the per-event properties (see the module documentation).
struct Recorder {
    replicas: usize,
    f: usize,
    service: ServiceId,
    reply_public: Arc<BlsPublicKeySet>,
    client_keys: Vec<IdentityPublicKey>,
    /// Outputs already read, per node and copy.
    seen: BTreeMap<(NodeId, usize), usize>,
    /// The first honest execution at each log position.
    positions: BTreeMap<u64, (NodeId, SmrOutput)>,
    /// The first honest digest after each `executed` count.
    digests: BTreeMap<u64, (NodeId, [u8; 32])>,
    /// Replicas (honest or not) that executed each request, and the honest result.
    executed_by: BTreeMap<(IdentityPublicKey, u64), BTreeSet<NodeId>>,
    honest_result: BTreeMap<(IdentityPublicKey, u64), ServiceResult>,
    ops: BTreeMap<(usize, u64), Op>,
    culprits: usize,
}

impl Recorder {
    fn new<S>(group: &Group<S>) -> Self {
        Recorder {
            replicas: group.n,
            f: group.f,
            service: group.service,
            reply_public: group.reply_public.clone(),
            client_keys: group.clients.iter().map(IdentityKey::public).collect(),
            seen: BTreeMap::new(),
            positions: BTreeMap::new(),
            digests: BTreeMap::new(),
            executed_by: BTreeMap::new(),
            honest_result: BTreeMap::new(),
            ops: BTreeMap::new(),
            culprits: 0,
        }
    }

    fn absorb<S: ThresholdSigner>(&mut self, state: &SimState<SmrNode<S>>) -> Result<(), String> {
        let now = state.event_count();
        for id in NodeId::all(state.n()) {
            for copy in 0..2 {
                let outputs = state.copy_outputs(id, copy);
                let seen = self.seen.entry((id, copy)).or_insert(0);
                let fresh = outputs[*seen..].to_vec();
                *seen = outputs.len();
                for output in fresh {
                    self.record(state, id, now, output)?;
                }
            }
        }
        Ok(())
    }

    fn record<S: ThresholdSigner>(
        &mut self,
        state: &SimState<SmrNode<S>>,
        id: NodeId,
        now: u64,
        output: SmrOutput,
    ) -> Result<(), String> {
        let honest = state.is_honest(id);
        match &output {
            SmrOutput::Executed {
                position,
                request,
                outcome,
                result,
            } => {
                if let Some(request) = request {
                    self.executed_by.entry(*request).or_default().insert(id);
                }
                if !honest {
                    return Ok(());
                }
                match self.positions.get(position) {
                    Some((other, first)) if *first != output => {
                        return Err(format!(
                            "replicas diverge at position {position}: {other} {first:?}, {id} \
                             {output:?}"
                        ))
                    }
                    Some(_) => {}
                    None => {
                        self.positions.insert(*position, (id, output.clone()));
                    }
                }
                if let (Some(request), Outcome::Executed, Some(result)) = (request, outcome, result)
                {
                    if let Some(earlier) = self.honest_result.insert(*request, result.clone()) {
                        if earlier != *result {
                            return Err(format!("{request:?} executed twice with other results"));
                        }
                    }
                }
            }
            SmrOutput::Delivered {
                executed, digest, ..
            } => {
                if !honest {
                    return Ok(());
                }
                match self.digests.get(executed) {
                    Some((other, first)) if first != digest => {
                        return Err(format!(
                            "replica digests diverge after {executed} entries: {other} and {id}"
                        ))
                    }
                    Some(_) => {}
                    None => {
                        self.digests.insert(*executed, (id, *digest));
                    }
                }
            }
            SmrOutput::Invoked { seq, call } => {
                let client = id.index() - self.replicas;
                let op = Op {
                    invoke: now,
                    call: call.clone(),
                    complete: None,
                };
                if self.ops.insert((client, *seq), op).is_some() {
                    return Err(format!("client {client} invoked seq {seq} twice"));
                }
            }
            SmrOutput::Completed { seq, certificate } => {
                let client = id.index() - self.replicas;
                let key = (self.client_keys[client], *seq);
                if certificate.client != key.0 || certificate.seq != *seq {
                    return Err(format!(
                        "client {client} got a certificate for another request"
                    ));
                }
                if !certificate.verify(&self.service, &self.reply_public) {
                    return Err(format!(
                        "client {client} seq {seq}: certificate does not verify"
                    ));
                }
                let executed = self.executed_by.get(&key).map_or(0, BTreeSet::len);
                if executed < self.f + 1 {
                    return Err(format!(
                        "client {client} seq {seq} completed after {executed} executions"
                    ));
                }
                match self.honest_result.get(&key) {
                    Some(result) if *result == certificate.result => {}
                    other => {
                        return Err(format!(
                            "client {client} seq {seq}: certified {:?}, honest replicas {other:?}",
                            certificate.result
                        ))
                    }
                }
                let Some(op) = self.ops.get_mut(&(client, *seq)) else {
                    return Err(format!(
                        "client {client} completed seq {seq} before invoking it"
                    ));
                };
                if op.complete.is_some() {
                    return Err(format!("client {client} completed seq {seq} twice"));
                }
                op.complete = Some((now, certificate.result.clone()));
            }
            SmrOutput::Culprit { replica, reason } => {
                if state.is_honest(NodeId(*replica)) {
                    return Err(format!("{id} blamed honest replica {replica}: {reason}"));
                }
                self.culprits += 1;
            }
        }
        Ok(())
    }

    /// The recorded history, for the linearizability checker.
    fn history(&self) -> Result<Vec<Operation<KvRequest, KvReply>>, String> {
        self.ops
            .iter()
            .map(|((client, seq), op)| match &op.complete {
                Some((complete, ServiceResult::Executed(bytes))) => {
                    let reply = decode_reply(bytes)
                        .map_err(|e| format!("client {client} seq {seq}: reply: {e}"))?;
                    Ok(Operation::completed(
                        *client as u64,
                        op.invoke,
                        *complete,
                        op.call.clone(),
                        reply,
                    ))
                }
                Some((_, other)) => Err(format!("client {client} seq {seq}: refused: {other:?}")),
                None => Ok(Operation::pending(
                    *client as u64,
                    op.invoke,
                    op.call.clone(),
                )),
            })
            .collect()
    }
}

/// What one run looked like.
#[derive(Debug, Default)]
struct RunReport {
    completed: usize,
    executed: u64,
    events: u64,
    culprits: usize,
    /// Abc faults honest replicas recorded.
    faults: usize,
    /// Pairs of operations of different clients whose intervals overlap.
    overlapping: usize,
}

fn replica_of<S: ThresholdSigner>(state: &SimState<SmrNode<S>>, id: NodeId) -> &Replica<S> {
    match state.node(id) {
        SmrNode::Replica(replica) => replica,
        SmrNode::Client(_) => panic!("{id} is a client"),
    }
}

/// One simulated group under `strategy` (at `f` replicas; none if `None`) and `seed`.
fn run_case<S: ThresholdSigner + 'static>(
    group: &Group<S>,
    strategy: Option<&Strategy>,
    seed: u64,
) -> Result<RunReport, SimFailure> {
    let n = group.n;
    let (byzantine, honest) = faulty_set(n, strategy, seed);
    let honest = Arc::new(honest);
    let client_nodes: Arc<BTreeMap<IdentityPublicKey, NodeId>> = Arc::new(
        group
            .clients
            .iter()
            .enumerate()
            .map(|(i, key)| (key.public(), group.client_node(i)))
            .collect(),
    );
    let instance = format!("smr-sim/n {n}/seed {seed}").into_bytes();
    let adversary = SmrAdversary {
        reply_keys: byzantine
            .keys()
            .map(|id| (id.0, group.reply_secrets[id.index()].clone()))
            .collect(),
        service: group.service,
    };
    let mut sim_config = SimConfig::new(n + CLIENTS, seed);
    sim_config.max_faulty = group.f;
    sim_config.max_events = 1_000_000;
    let factory = |id: NodeId, _copy: usize| {
        if id.index() < n {
            let manager = ReplicationManager::new(
                group.service,
                id.0,
                group.reply_secrets[id.index()].clone(),
                group.client_list.clone(),
                KvStore::new(),
            )
            .unwrap();
            let abc = Abc::new(
                config(n),
                id,
                instance.clone(),
                group.abc_keys[id.index()].clone(),
                group.identities[id.index()].clone(),
                group.registry.clone(),
                params(),
            )
            .unwrap();
            SmrNode::Replica(Box::new(Replica {
                id,
                replicas: n,
                abc,
                manager,
                client_nodes: client_nodes.clone(),
            }))
        } else {
            SmrNode::Client(Box::new(Client {
                id,
                key: group.clients[id.index() - n].clone(),
                service: group.service,
                reply_keys: group.reply_public.clone(),
                honest: honest.clone(),
                started: false,
                remaining: REQUESTS_PER_CLIENT,
                seq: 0,
                collector: None,
            }))
        }
    };
    let mut sim = Sim::new(sim_config, byzantine, factory, Box::new(adversary));
    let mut recorder = Recorder::new(group);
    for client in 0..CLIENTS {
        sim.input(group.client_node(client), |_| Start)
            .map_err(|e| sim.fail(format!("client {client} did not start: {e}")))?;
        recorder
            .absorb(sim.state())
            .map_err(|reason| sim.fail(reason))?;
    }
    let mut faults = FaultCursor::default();
    sim.run(|state| {
        recorder.absorb(state)?;
        faults.check_new(state)
    })?;
    check_clean_evidence(&sim, strategy.is_none())?;

    // Termination: every request completed.
    let history = recorder.history().map_err(|reason| sim.fail(reason))?;
    let completed = history.iter().filter(|op| !op.is_pending()).count();
    let expected = CLIENTS * REQUESTS_PER_CLIENT as usize;
    if completed != expected {
        return Err(sim.fail(format!(
            "{completed} of {expected} requests completed at quiescence"
        )));
    }
    // Every honest replica executed the same log to the same state.
    let state = sim.state();
    let first = replica_of(state, honest[0]);
    let (executed, digest) = (first.manager.executed(), first.manager.digest());
    for id in honest.iter() {
        let replica = replica_of(state, *id);
        if replica.manager.executed() != executed || replica.manager.digest() != digest {
            return Err(sim.fail(format!(
                "{id} ended at {} entries, {} at {executed}, or their states differ",
                replica.manager.executed(),
                honest[0]
            )));
        }
    }
    if recorder.positions.keys().next_back().copied().unwrap_or(0) != executed {
        return Err(sim.fail("the recorded log and the replicas' position differ"));
    }
    // Linearizability of what the clients saw.
    let verdict = lincheck::check(&KvModel::new(), &history, DEFAULT_SEARCH_BUDGET);
    if verdict != lincheck::Verdict::Linearizable {
        return Err(sim.fail(format!("history: {verdict}\n{history:#?}")));
    }
    let faults = state
        .faults()
        .iter()
        .filter(|(_, fault)| matches!(fault.kind, SmrFault::Abc(_)))
        .count();
    let interval =
        |op: &Operation<KvRequest, KvReply>| (op.invoke, op.complete.unwrap_or(u64::MAX));
    let mut overlapping = 0;
    for (i, a) in history.iter().enumerate() {
        for b in &history[i + 1..] {
            let ((a0, a1), (b0, b1)) = (interval(a), interval(b));
            if a.client != b.client && a0 <= b1 && b0 <= a1 {
                overlapping += 1;
            }
        }
    }
    Ok(RunReport {
        completed,
        executed,
        events: sim.events(),
        culprits: recorder.culprits,
        faults,
        overlapping,
    })
}

/// Every strategy at `f` replicas over `seeds` seeds; returns the culprits clients caught per
/// strategy.
fn sweep<S: ThresholdSigner + 'static>(group: &Group<S>, seeds: u64) -> BTreeMap<String, usize> {
    let mut culprits = BTreeMap::new();
    for strategy in Strategy::all() {
        let (mut runs, mut events) = (0u64, 0u64);
        check_seeds(seeds, |seed| {
            let report = run_case(group, Some(&strategy), seed)?;
            runs += 1;
            events += report.events;
            *culprits.entry(format!("{strategy:?}")).or_insert(0) += report.culprits;
            Ok(())
        });
        eprintln!(
            "smr sim n = {} {strategy:?}: {runs} runs, mean {} events",
            group.n,
            events / runs.max(1)
        );
    }
    culprits
}

#[test]
fn honest_groups_execute_linearizably() {
    for n in [4, 7] {
        let group = Group::new(insecure_keys(n, "smr sim"));
        let seeds = if n == 4 { HONEST_SEEDS } else { SEEDS_N7 };
        let mut overlapping = 0;
        check_seeds(seeds, |seed| {
            let report = run_case(&group, None, seed)?;
            overlapping += report.overlapping;
            assert_eq!(report.completed, CLIENTS * REQUESTS_PER_CLIENT as usize);
            assert!(report.executed >= report.completed as u64);
            assert_eq!(report.culprits, 0);
            assert_eq!(report.faults, 0);
            Ok(())
        });
        // The clients' requests do run concurrently: the checker has orders to choose from.
        eprintln!("smr sim honest n = {n}: {overlapping} overlapping pairs of operations");
        assert!(overlapping > 0);
    }
}

#[test]
fn sweep_n4_every_strategy() {
    let group = Group::new(insecure_keys(4, "smr sim"));
    let culprits = sweep(&group, SEEDS_N4);
    eprintln!("smr sim n = 4: culprits caught by clients {culprits:?}");
    // A lying replica is caught whenever its share reached a client before the certificate.
    if std::env::var(maftia_sim::SEED_ENV).is_err() {
        assert!(culprits["InvalidShares"] > 0, "{culprits:?}");
    }
}

#[test]
fn sweep_n7_every_strategy() {
    let group = Group::new(insecure_keys(7, "smr sim"));
    sweep(&group, SEEDS_N7);
}

/// Real BLS key sets for atomic broadcast as well, on a few seeds.
#[test]
fn bls_n4_every_strategy() {
    let group = Group::new(bls_keys(4, 0x5352));
    check_seeds(BLS_SEEDS, |seed| run_case(&group, None, seed).map(drop));
    sweep(&group, BLS_SEEDS);
}
