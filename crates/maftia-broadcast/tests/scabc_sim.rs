//! Secure causal atomic broadcast under the deterministic simulator.
//!
//! Every (n, strategy) pair runs over a seed sweep ([`check_seeds`]; `MAFTIA_SIM_SEEDS=k` for a
//! soak, `MAFTIA_SIM_SEED=s` to replay one seed). The TDH2 key is real and dealt from the seed;
//! ABC's threshold signatures use the fast insecure signer of `maftia_sim::insecure_crypto`
//! (real BLS on a few seeds). In each run one ciphertext is submitted at two honest nodes
//! (deduplication; in honest runs a few more honest requests join it), one honest node
//! submits a tampered ciphertext (another label, or a flipped bit in `c`, `u`, `e` or `f`), and
//! the two copies of one equivocating or twin node submit different requests (a valid and a
//! tampered ciphertext); InvalidShares
//! nodes get junk batches (tampered ciphertexts, garbage) ordered. Every valid ordered
//! ciphertext costs each node a decryption share, `f` share checks and `n − 1` share
//! decodings, which is why the sweeps order so few. Checked after every event:
//! - **total order and agreement**: every honest node's `i`-th output has sequence number `i`,
//!   positions `(round, index)` strictly increase, and all honest nodes' outputs agree (each
//!   sequence a prefix of another);
//! - **integrity**: an honest-submitted ciphertext is delivered as exactly its plaintext and
//!   label, a tampered one as `Invalid`; every delivered label was submitted, by an honest node
//!   or a Byzantine one (labels `byz…`), and is delivered once;
//! - **causality**: no honest node's decryption share reaches a Byzantine node before that
//!   honest node's ABC has ordered the share's round (checked on every share list a Byzantine
//!   node receives, against the event at which the sender ordered the round);
//! - honest nodes never accuse honest nodes; `stored_messages` stays within its bound and the
//!   early shares within their constant bound.
//!
//! At quiescence: **validity** (every honest-submitted request is output by every honest node),
//! **termination** (honest nodes output the same number of entries, none pending) and, in an
//! honest run, no faults at all.
mod support;

use maftia_broadcast::abc::{
    self, batch_message, AbcParams, BATCH_SIGNATURE_CONTEXT, ROUND_WINDOW,
};
use maftia_broadcast::mvba;
use maftia_broadcast::scabc::{
    abc_instance, decode_request, encrypt_request, IndexedShare, Message, Scabc, ScabcError,
    ScabcFault, ScabcKeys, ScabcMessage, ScabcOutput, ScabcResult,
};
use maftia_broadcast::ThresholdKeys;
use maftia_core::codec::{self, HEADER_LEN};
use maftia_core::{NodeId, Protocol, ProtocolStep};
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_crypto::tdh2::{self, Tdh2Error, Tdh2PublicKey, Tdh2SecretShare};
use maftia_crypto::threshold::ThresholdSigner;
use maftia_sim::{byzantine_nodes, check_seeds, Adversary, Sim, SimConfig, SimFailure, Strategy};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use support::{
    bls_keys, check_clean_evidence, config, faulty_set, insecure_keys, submit_inputs, FaultCursor,
    BYZANTINE_TAG,
};

/// Seeds per (n, strategy) in the default run.
const SEEDS: u64 = 200;
/// Seeds per configuration with real BLS key sets for ABC.
const BLS_SEEDS: u64 = 1;

fn params() -> AbcParams {
    AbcParams {
        batch_size: 4,
        max_batch_bytes: 2048,
        max_request_size: 512,
        max_pending: 16,
        dedup_rounds: 16,
    }
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// A run's TDH2 key (threshold f + 1) and Ed25519 identities, dealt from the seed.
#[derive(Clone)]
struct RunKeys {
    tdh2_public: Arc<Tdh2PublicKey>,
    tdh2_secrets: Vec<Tdh2SecretShare>,
    identities: Vec<IdentityKey>,
    registry: Arc<Vec<IdentityPublicKey>>,
}

fn run_keys(n: usize, seed: u64) -> RunKeys {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7464_6832_6b65_7973);
    let (public, secrets) = tdh2::deal(n, config(n).one_honest(), &mut rng).unwrap();
    let identities: Vec<IdentityKey> = (0..n).map(|_| IdentityKey::generate(&mut rng)).collect();
    let registry = Arc::new(identities.iter().map(IdentityKey::public).collect());
    RunKeys {
        tdh2_public: Arc::new(public),
        tdh2_secrets: secrets,
        identities,
        registry,
    }
}

fn node_keys<S: ThresholdSigner>(
    threshold: &[ThresholdKeys<S>],
    run: &RunKeys,
    id: NodeId,
) -> ScabcKeys<S> {
    ScabcKeys {
        tdh2_public: run.tdh2_public.clone(),
        tdh2_secret: run.tdh2_secrets[id.index()].clone(),
        threshold: threshold[id.index()].clone(),
        identity: run.identities[id.index()].clone(),
        identities: run.registry.clone(),
    }
}

fn instance(n: usize, seed: u64) -> Vec<u8> {
    format!("scabc-sim/n {n}/seed {seed}").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Tampering
// ---------------------------------------------------------------------------------------------

/// Ways to tamper with an encoded ciphertext so that it still decodes but is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tamper {
    /// Another label (a copy under another client's name).
    Label,
    /// A flipped bit in the masked message `c`.
    Payload,
    /// `u` replaced by another valid point (a flipped bit that still decodes).
    U,
    /// A flipped low bit of the proof's challenge `e`.
    E,
    /// A flipped low bit of the proof's response `f`.
    F,
}

const TAMPERS: [Tamper; 5] = [
    Tamper::Label,
    Tamper::Payload,
    Tamper::U,
    Tamper::E,
    Tamper::F,
];

/// `request` (the canonical encoding of a valid ciphertext) tampered with: the result decodes
/// (so a node accepts it for ordering) and is invalid. Layout of the encoding: header, label
/// (length-prefixed), `c` (length-prefixed), then `u`, `ū`, `e`, `f` (32 bytes each).
fn tamper(request: &[u8], how: Tamper, public: &Tdh2PublicKey) -> Vec<u8> {
    let ciphertext = decode_request(request).unwrap();
    assert!(!ciphertext.label().is_empty() && !ciphertext.payload().is_empty());
    assert!(ciphertext.label().len() < 128, "one-byte length prefix");
    let end = request.len();
    let flip = |at: usize, bit: u8| {
        let mut bytes = request.to_vec();
        bytes[at] ^= 1 << bit;
        bytes
    };
    let tampered = match how {
        Tamper::Label => flip(HEADER_LEN + 1, 0),
        Tamper::Payload => flip(end - 128 - ciphertext.payload().len(), 3),
        Tamper::U => (1..256)
            .map(|bit| flip(end - 128 + bit / 8, (bit % 8) as u8))
            .find(|bytes| decode_request(bytes).is_ok())
            .unwrap(),
        Tamper::E => flip(end - 64, 0),
        Tamper::F => flip(end - 32, 0),
    };
    let decoded = decode_request(&tampered).unwrap();
    assert!(!decoded.verify(public), "{how:?} left the ciphertext valid");
    tampered
}

// ---------------------------------------------------------------------------------------------
// The observed node: an SC-ABC node whose inbox the test reads (for Byzantine nodes)
// ---------------------------------------------------------------------------------------------

/// Share lists a Byzantine node received, and (if watching) whether it received the watched
/// ciphertext's bytes, since the test last looked.
#[derive(Default)]
struct Inbox {
    /// (receiver, sender, round, shares).
    shares: Vec<(NodeId, NodeId, u64, Vec<IndexedShare>)>,
    /// Bytes to look for in every message a Byzantine node receives.
    watch: Option<Vec<u8>>,
    watched_seen: bool,
}

type SharedInbox = Arc<Mutex<Inbox>>;

/// An SC-ABC node; a Byzantine one also records what it receives into the shared inbox.
struct Observed<S: ThresholdSigner> {
    node: Scabc<S>,
    inbox: Option<SharedInbox>,
}

impl<S: ThresholdSigner + Send + Sync + 'static> Protocol for Observed<S> {
    type Message = ScabcMessage<S>;
    type Input = Vec<u8>;
    type Output = ScabcOutput;
    type FaultKind = ScabcFault;
    type Error = ScabcError;

    fn our_id(&self) -> NodeId {
        self.node.our_id()
    }

    fn handle_input(
        &mut self,
        input: Vec<u8>,
        rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, ScabcError> {
        self.node.handle_input(input, rng)
    }

    fn handle_message(
        &mut self,
        from: NodeId,
        message: ScabcMessage<S>,
        rng: &mut dyn RngCore,
    ) -> ProtocolStep<Self> {
        if let Some(inbox) = &self.inbox {
            let mut inbox = inbox.lock().unwrap();
            if let Some(watch) = &inbox.watch {
                let bytes = codec::encode(&message).unwrap();
                if bytes.windows(watch.len()).any(|w| w == watch.as_slice()) {
                    inbox.watched_seen = true;
                }
            }
            if let Message::Shares { round, shares } = &message {
                let record = if inbox.watch.is_some() {
                    shares.clone()
                } else {
                    Vec::new()
                };
                inbox
                    .shares
                    .push((self.node.our_id(), from, *round, record));
            }
        }
        self.node.handle_message(from, message, rng)
    }

    fn terminated(&self) -> bool {
        self.node.terminated()
    }
}

// ---------------------------------------------------------------------------------------------
// The adversary
// ---------------------------------------------------------------------------------------------

/// The protocol-specific adversary.
///
/// `corrupt` (for [`Strategy::InvalidShares`] nodes): breaks decryption shares (a changed
/// `u_i`, or another entry's share with a valid proof for the wrong ciphertext), moves share
/// lists to a neighbouring round, and replaces the node's ABC batches with batches it signs
/// itself full of tampered ciphertexts and garbage, which get ordered and must come out as
/// `Invalid`. `far_future` (for [`Strategy::FloodFuture`] nodes): share lists for far rounds,
/// full-length share lists for every round in the receivers' window (to fill the early-share
/// buffers), and ABC messages for far rounds.
struct ScabcAdversary {
    abc_instance: Vec<u8>,
    /// The Byzantine nodes' ids and identity keys.
    byzantine: Vec<(NodeId, IdentityKey)>,
    /// A real decryption share of some ciphertext by each Byzantine node.
    byzantine_shares: Vec<tdh2::DecryptionShare>,
    /// Tampered ciphertexts and garbage to order.
    junk: Vec<Vec<u8>>,
    /// Length of the share lists flooded for rounds in the receivers' window.
    flood_list: u32,
    flood: u64,
}

impl ScabcAdversary {
    fn new(n: usize, seed: u64, run: &RunKeys, byzantine: &[NodeId], full_flood: bool) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6164_7665_7273);
        let valid = encrypt_request(
            &run.tdh2_public,
            format!("byz secret {seed}").as_bytes(),
            b"byz label",
            &mut rng,
        )
        .unwrap();
        let ciphertext = decode_request(&valid).unwrap();
        let mut junk: Vec<Vec<u8>> = TAMPERS
            .iter()
            .map(|how| tamper(&valid, *how, &run.tdh2_public))
            .collect();
        junk.push(b"byz not a ciphertext".to_vec());
        ScabcAdversary {
            abc_instance: abc_instance(&instance(n, seed)),
            byzantine: byzantine
                .iter()
                .map(|id| (*id, run.identities[id.index()].clone()))
                .collect(),
            byzantine_shares: byzantine
                .iter()
                .map(|id| {
                    tdh2::decrypt_share(
                        &run.tdh2_public,
                        &run.tdh2_secrets[id.index()],
                        &ciphertext,
                        &mut rng,
                    )
                    .unwrap()
                })
                .collect(),
            junk,
            // Decoding a share costs a point decompression at every receiver: full-length lists
            // only where the early-share bound is the point.
            flood_list: if full_flood {
                (n * params().batch_size) as u32
            } else {
                2
            },
            flood: 0,
        }
    }

    /// A share list with `count` entries made of a Byzantine node's real share.
    fn share_list(&self, which: usize, count: u32) -> Vec<IndexedShare> {
        let share = &self.byzantine_shares[which % self.byzantine_shares.len()];
        (0..count)
            .map(|index| IndexedShare {
                index,
                share: share.clone(),
            })
            .collect()
    }
}

impl<S: ThresholdSigner + Send + Sync + 'static> Adversary<Observed<S>> for ScabcAdversary {
    fn corrupt(
        &mut self,
        message: &ScabcMessage<S>,
        rng: &mut dyn RngCore,
    ) -> Option<ScabcMessage<S>> {
        match message {
            Message::Shares { round, shares } => {
                let mut shares = shares.clone();
                let at = rng.next_u32() as usize % shares.len();
                let round = match rng.next_u32() % 4 {
                    0 => return None,
                    1 => {
                        let share = &mut shares[at].share;
                        share.u_i = share.u_i + share.u_i;
                        *round
                    }
                    2 => {
                        // A valid proof, but for another entry's ciphertext (or, alone, for
                        // the same entry in a neighbouring round).
                        let other = shares[(at + 1) % shares.len()].share.clone();
                        shares[at].share = other;
                        if shares.len() == 1 {
                            round.saturating_add(1)
                        } else {
                            *round
                        }
                    }
                    _ => round.saturating_sub(1),
                };
                Some(Message::Shares { round, shares })
            }
            Message::Abc(abc::Message::Batch {
                round,
                requests,
                signature,
            }) => {
                if rng.next_u32() % 2 == 0 {
                    return None;
                }
                // Find the sender among the Byzantine nodes by its signature on the batch.
                let (sender, key) = self.byzantine.iter().find(|(id, key)| {
                    let message = batch_message(&self.abc_instance, *round, *id, requests);
                    key.public()
                        .verify(BATCH_SIGNATURE_CONTEXT, &message, signature)
                })?;
                let start = rng.next_u32() as usize % self.junk.len();
                let mut junk: Vec<Vec<u8>> = (0..params().batch_size)
                    .map(|k| self.junk[(start + k) % self.junk.len()].clone())
                    .collect();
                junk.dedup();
                let message = batch_message(&self.abc_instance, *round, *sender, &junk);
                Some(Message::Abc(abc::Message::Batch {
                    round: *round,
                    requests: junk,
                    signature: key.sign(BATCH_SIGNATURE_CONTEXT, &message),
                }))
            }
            Message::Abc(_) | Message::HtAbc(_) => None,
        }
    }

    fn far_future(&mut self, rng: &mut dyn RngCore) -> Vec<ScabcMessage<S>> {
        self.flood += 1;
        let which = self.flood as usize;
        let far = 1_000 + u64::from(rng.next_u32() % 1_000_000);
        let mut messages = vec![
            Message::Shares {
                round: far,
                shares: self.share_list(which, 1),
            },
            Message::Shares {
                round: u64::MAX - u64::from(rng.next_u32() % 8),
                shares: self.share_list(which, 2),
            },
            Message::Abc(abc::Message::Mvba {
                round: far,
                message: mvba::Message::Vote {
                    attempt: rng.next_u32(),
                    vote: mvba::Vote::Zero,
                },
            }),
        ];
        // Full lists for every round a receiver may accept early.
        for round in 0..=ROUND_WINDOW + 2 {
            messages.push(Message::Shares {
                round,
                shares: self.share_list(which, self.flood_list),
            });
        }
        // Rotate: the simulator sends only the first FLOOD_PER_EVENT messages.
        let rotate = rng.next_u32() as usize % messages.len();
        messages.rotate_left(rotate);
        messages
    }
}

// ---------------------------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------------------------

/// What an honest-submitted ciphertext must come out as.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expected {
    Plain { plaintext: Vec<u8>, label: Vec<u8> },
    Invalid,
}

/// Extra things a run does.
#[derive(Clone, Debug, Default)]
struct Options {
    /// Check `stored_messages` every this many events (0: never).
    stored_every: u64,
    /// Honest nodes that submit a request of their own besides the watched (shared) and the
    /// tampered one. Every ordered valid ciphertext costs each node a decryption share, `f`
    /// share checks and `n − 1` share decodings: the sweeps' time budget allows none.
    extra_requesters: usize,
    /// FloodFuture nodes flood full-length share lists (`n · batch_size` shares).
    full_flood: bool,
    /// Watch the shared ciphertext: return what the Byzantine nodes
    /// received before it was ordered.
    watch_secret: bool,
}

/// What one run looked like.
#[derive(Debug, Default)]
struct RunReport {
    outputs: usize,
    invalid: usize,
    faults: Vec<ScabcFault>,
    max_stored: usize,
    max_early: usize,
    secrecy: Option<SecrecyReport>,
}

/// What the Byzantine nodes had when the watched ciphertext was ordered.
#[derive(Debug)]
struct SecrecyReport {
    /// Whether some Byzantine node had received the ciphertext's bytes by then.
    saw_ciphertext: bool,
    /// Honest decryption shares of the watched entry any Byzantine node held by then.
    shares_before_ordering: usize,
    /// Honest shares of the watched entry the Byzantine nodes received after it was ordered.
    shares_after_ordering: usize,
    /// Whether the Byzantine nodes' own shares alone decrypt it.
    byzantine_shares_decrypt: bool,
    /// Whether they do together with one honest share received after ordering.
    with_one_honest_share_decrypt: bool,
}

fn run_case<S: ThresholdSigner + Send + Sync + 'static>(
    threshold_keys: &[ThresholdKeys<S>],
    strategy: Option<&Strategy>,
    seed: u64,
    options: &Options,
) -> Result<RunReport, SimFailure> {
    let n = threshold_keys.len();
    let group = config(n);
    let (byzantine, honest) = faulty_set(n, strategy, seed);
    let run = run_keys(n, seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7265_7175_6573_7473);

    // Requests: the watched one, submitted at two honest nodes (deduplication); the extra
    // requesters' own; one tampered one; and (for equivocating and twin nodes) one Byzantine
    // node's copies' own.
    let mut expected: BTreeMap<[u8; 32], Expected> = BTreeMap::new();
    let mut inputs: BTreeMap<NodeId, Vec<Vec<Vec<u8>>>> = BTreeMap::new(); // node -> copy -> requests
    let mut submit = |at: &[NodeId], plaintext: Vec<u8>, label: Vec<u8>, rng: &mut ChaCha8Rng| {
        let request = encrypt_request(&run.tdh2_public, &plaintext, &label, rng).unwrap();
        expected.insert(
            abc::request_digest(&request),
            Expected::Plain { plaintext, label },
        );
        for id in at.iter().collect::<BTreeSet<_>>() {
            inputs.entry(*id).or_insert_with(|| vec![Vec::new()])[0].push(request.clone());
        }
        request
    };
    let watched = submit(
        &[honest[0], honest[honest.len() - 1]],
        format!("seed {seed} secret").into_bytes(),
        b"client 0 seq 0".to_vec(),
        &mut rng,
    );
    for (k, id) in honest.iter().take(options.extra_requesters).enumerate() {
        submit(
            &[*id],
            format!("seed {seed} request of {id}").into_bytes(),
            format!("client {id} seq {}", k + 1).into_bytes(),
            &mut rng,
        );
    }
    let how = TAMPERS[(seed % TAMPERS.len() as u64) as usize];
    let original =
        encrypt_request(&run.tdh2_public, b"to be tampered", b"client t", &mut rng).unwrap();
    let tampered = tamper(&original, how, &run.tdh2_public);
    expected.insert(abc::request_digest(&tampered), Expected::Invalid);
    let tamperer = honest[1 % honest.len()];
    inputs.entry(tamperer).or_insert_with(|| vec![Vec::new()])[0].push(tampered);
    // With two-copy strategies, one Byzantine node's copies submit requests of their own:
    // Copy 0 a valid ciphertext, copy 1 a tampered one: the copies' batches conflict, and
    // whichever is ordered, the other copy's view never decides what honest nodes output.
    for (id, _) in byzantine.iter().filter(|(_, s)| s.copies() > 1).take(1) {
        let label = format!("byz {id}");
        let valid =
            encrypt_request(&run.tdh2_public, b"byz request", label.as_bytes(), &mut rng).unwrap();
        let tampered = tamper(&valid, how, &run.tdh2_public);
        inputs.insert(*id, vec![vec![valid], vec![tampered]]);
    }

    let inbox: SharedInbox = Arc::new(Mutex::new(Inbox::default()));
    if options.watch_secret {
        inbox.lock().unwrap().watch = Some(watched.clone());
    }
    let adversary = ScabcAdversary::new(
        n,
        seed,
        &run,
        &byzantine.keys().copied().collect::<Vec<_>>(),
        options.full_flood,
    );
    let factory_keys = threshold_keys.to_vec();
    let factory_inbox = inbox.clone();
    let factory_byzantine = byzantine.clone();
    let factory_run = run.clone();
    let mut sim = Sim::new(
        SimConfig::new(n, seed),
        byzantine.clone(),
        move |id: NodeId, _copy| Observed {
            node: Scabc::new(
                group,
                id,
                instance(n, seed),
                node_keys(&factory_keys, &factory_run, id),
                params(),
            )
            .unwrap(),
            inbox: factory_byzantine
                .contains_key(&id)
                .then(|| factory_inbox.clone()),
        },
        Box::new(adversary),
    );
    submit_inputs(&mut sim, &inputs, &byzantine)?;

    let mvba_bound = mvba::stored_messages_bound(&group);
    let mut agreed: Vec<ScabcOutput> = Vec::new();
    let mut labels_delivered: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut checked: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut faults = FaultCursor::default();
    let mut report = RunReport::default();
    // (honest node, round) -> the event after which the node had ordered the round.
    let mut ordered_at: BTreeMap<(NodeId, u64), u64> = BTreeMap::new();
    let mut ordered: BTreeMap<NodeId, u64> = BTreeMap::new();
    let start = sim.events();
    for id in &honest {
        let rounds = sim.state().node(*id).node.ordered_rounds();
        for round in 0..rounds {
            ordered_at.insert((*id, round), start);
        }
        ordered.insert(*id, rounds);
    }
    // Share lists received by Byzantine nodes: (event, receiver, sender, round, shares).
    let mut received: Vec<(u64, NodeId, NodeId, u64, Vec<IndexedShare>)> = Vec::new();
    let mut watched_seen_at: Option<u64> = None;
    sim.run(|state| {
        let event = state.event_count();
        for id in state.honest() {
            let rounds = state.node(id).node.ordered_rounds();
            let before = ordered.insert(id, rounds).unwrap_or(0);
            for round in before..rounds {
                ordered_at.insert((id, round), event);
            }
        }
        {
            let mut inbox = inbox.lock().unwrap();
            for (to, from, round, shares) in inbox.shares.drain(..) {
                if state.is_honest(from) {
                    // Causality: the honest sender had ordered the round before this event.
                    match ordered_at.get(&(from, round)) {
                        Some(at) if *at < event => {}
                        _ => {
                            return Err(format!(
                                "honest {from} released shares of round {round} to {to} before \
                                 ordering it"
                            ))
                        }
                    }
                }
                received.push((event, to, from, round, shares));
            }
            if inbox.watched_seen && watched_seen_at.is_none() {
                watched_seen_at = Some(event);
            }
        }
        for id in state.honest() {
            let outputs = state.outputs(id);
            let done = checked.entry(id).or_insert(0);
            for (position, output) in outputs.iter().enumerate().skip(*done) {
                if output.sequence != position as u64 {
                    return Err(format!(
                        "total order: {id}'s output #{position} has sequence {}",
                        output.sequence
                    ));
                }
                match agreed.get(position) {
                    Some(first) if first != output => {
                        return Err(format!(
                            "agreement: {id} output {output:?} at {position}, another honest \
                             node {first:?}"
                        ))
                    }
                    Some(_) => {}
                    None => {
                        if let Some(previous) = agreed.last() {
                            if (previous.round, previous.index) >= (output.round, output.index) {
                                return Err(format!("total order: {output:?} after {previous:?}"));
                            }
                        }
                        match (expected.get(&output.request_digest), &output.result) {
                            (Some(Expected::Invalid), ScabcResult::Invalid) => {}
                            (
                                Some(Expected::Plain { plaintext, label }),
                                ScabcResult::Delivered {
                                    plaintext: p,
                                    label: l,
                                },
                            ) if p == plaintext && l == label => {}
                            (Some(want), got) => {
                                return Err(format!(
                                    "integrity: an honest-submitted ciphertext came out as \
                                     {got:?}, expected {want:?}"
                                ))
                            }
                            (None, ScabcResult::Delivered { label, .. })
                                if !label.starts_with(BYZANTINE_TAG) =>
                            {
                                return Err(format!(
                                    "integrity: label {:?} was never submitted",
                                    String::from_utf8_lossy(label)
                                ))
                            }
                            (None, _) => {}
                        }
                        if let ScabcResult::Delivered { label, .. } = &output.result {
                            if !labels_delivered.insert(label.clone()) {
                                return Err(format!(
                                    "integrity: label {:?} delivered twice",
                                    String::from_utf8_lossy(label)
                                ));
                            }
                        }
                        agreed.push(output.clone());
                    }
                }
            }
            *done = outputs.len();
        }
        if options.stored_every > 0 && event % options.stored_every == 0 {
            for id in state.honest() {
                let node = &state.node(id).node;
                let (stored, bound) = (
                    node.stored_messages(),
                    node.stored_messages_bound(mvba_bound),
                );
                report.max_stored = report.max_stored.max(stored);
                report.max_early = report.max_early.max(node.early_shares());
                if stored > bound || node.early_shares() > node.early_shares_bound() {
                    return Err(format!(
                        "{id} stores {stored} messages (bound {bound}), {} early shares \
                         (bound {})",
                        node.early_shares(),
                        node.early_shares_bound()
                    ));
                }
            }
        }
        faults.check_new(state)
    })?;

    let state = sim.state();
    for id in state.honest() {
        let node = &state.node(id).node;
        if state.outputs(id).len() != agreed.len() || node.pending_entries() != 0 {
            return Err(sim.fail(format!(
                "termination: {id} output {} entries ({} pending), another honest node {}",
                state.outputs(id).len(),
                node.pending_entries(),
                agreed.len()
            )));
        }
        if node.abc().pending() != 0 {
            return Err(sim.fail(format!("validity: {id} has requests pending in ABC")));
        }
    }
    let output_digests: BTreeSet<[u8; 32]> = agreed.iter().map(|o| o.request_digest).collect();
    if let Some((_, missing)) = expected
        .iter()
        .find(|(digest, _)| !output_digests.contains(*digest))
    {
        return Err(sim.fail(format!("validity: {missing:?} was never output")));
    }
    check_clean_evidence(&sim, strategy.is_none())?;
    report.outputs = agreed.len();
    report.invalid = agreed
        .iter()
        .filter(|o| o.result == ScabcResult::Invalid)
        .count();
    report.faults = state.faults().iter().map(|(_, f)| f.kind.clone()).collect();

    if options.watch_secret {
        let digest = abc::request_digest(&watched);
        let Some(output) = agreed.iter().find(|o| o.request_digest == digest) else {
            return Err(sim.fail("the watched request was not output"));
        };
        let (round, index) = (output.round, output.index);
        // The position is fixed once the first honest node's ABC ordered the round.
        let fixed = honest
            .iter()
            .filter_map(|id| ordered_at.get(&(*id, round)))
            .min()
            .copied()
            .unwrap();
        let shares_of_entry = |before: bool| -> Vec<(NodeId, tdh2::DecryptionShare)> {
            received
                .iter()
                .filter(|(event, _, _, r, _)| *r == round && (*event <= fixed) == before)
                .flat_map(|(_, _, from, _, shares)| {
                    shares
                        .iter()
                        .filter(|s| s.index == index)
                        .map(move |s| (*from, s.share.clone()))
                })
                .collect()
        };
        // Honest shares only: a Byzantine node may order the round (and pass its own share on)
        // before any honest node does, but the f Byzantine shares are the adversary's anyway.
        let honest_shares = |before: bool| -> Vec<(NodeId, tdh2::DecryptionShare)> {
            shares_of_entry(before)
                .into_iter()
                .filter(|(from, _)| state.is_honest(*from))
                .collect()
        };
        let before = honest_shares(true);
        let after = honest_shares(false);
        // What the adversary can do with its own shares (and, to show the check can succeed,
        // with one honest share received after ordering).
        let ciphertext = decode_request(&watched).unwrap();
        let mut share_rng = ChaCha8Rng::seed_from_u64(seed);
        let mut own: BTreeMap<usize, tdh2::DecryptionShare> = byzantine
            .keys()
            .map(|id| {
                let share = tdh2::decrypt_share(
                    &run.tdh2_public,
                    &run.tdh2_secrets[id.index()],
                    &ciphertext,
                    &mut share_rng,
                )
                .unwrap();
                (id.index(), share)
            })
            .collect();
        let byzantine_shares_decrypt = match tdh2::combine(&run.tdh2_public, &ciphertext, &own) {
            Ok(_) => true,
            Err(Tdh2Error::NotEnoughValidShares { .. }) => false,
            Err(e) => return Err(sim.fail(format!("unexpected combine error {e}"))),
        };
        let with_one_honest_share_decrypt = match after.first() {
            Some((from, share)) => {
                own.insert(from.index(), share.clone());
                tdh2::combine(&run.tdh2_public, &ciphertext, &own).is_ok_and(|(plaintext, _)| {
                    Some(&Expected::Plain {
                        plaintext,
                        label: ciphertext.label().to_vec(),
                    }) == expected.get(&digest)
                })
            }
            None => false,
        };
        report.secrecy = Some(SecrecyReport {
            saw_ciphertext: watched_seen_at.is_some_and(|at| at <= fixed),
            shares_before_ordering: before.len(),
            shares_after_ordering: after.len(),
            byzantine_shares_decrypt,
            with_one_honest_share_decrypt,
        });
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Every strategy at `f` nodes.
fn sweep<S: ThresholdSigner + Send + Sync + 'static>(keys: &[ThresholdKeys<S>], seeds: u64) {
    let options = Options {
        stored_every: 16,
        ..Options::default()
    };
    for strategy in Strategy::all() {
        let started = std::time::Instant::now();
        check_seeds(seeds, |seed| {
            run_case(keys, Some(&strategy), seed, &options).map(drop)
        });
        eprintln!(
            "scabc n = {}: {strategy:?} took {:.2?}",
            keys.len(),
            started.elapsed()
        );
    }
}

#[test]
fn sweep_n4_every_strategy() {
    sweep(&insecure_keys(4, "scabc sim"), SEEDS);
}

#[test]
fn sweep_n7_every_strategy() {
    sweep(&insecure_keys(7, "scabc sim"), SEEDS);
}

#[test]
fn sweep_n10_every_strategy() {
    sweep(&insecure_keys(10, "scabc sim"), SEEDS);
}

#[test]
fn honest_runs_deliver_everything_with_no_faults() {
    for n in [1, 4, 7] {
        let keys = insecure_keys(n, "scabc sim");
        let options = Options {
            stored_every: 1,
            extra_requesters: 3,
            ..Options::default()
        };
        check_seeds(30, |seed| {
            let report = run_case(&keys, None, seed, &options)?;
            // The watched one (once), the extra requesters' own, the tampered one.
            assert_eq!(report.outputs, 3.min(n) + 2, "n = {n}, seed {seed}");
            assert_eq!(report.invalid, 1);
            assert!(report.faults.is_empty());
            Ok(())
        });
    }
}

/// Byzantine nodes record everything they receive. Before the watched request's position is
/// fixed they hold its ciphertext but no decryption share of it (honest nodes release none),
/// and their own `f` shares cannot decrypt it; after ordering, one honest share suffices.
#[test]
fn byzantine_nodes_learn_nothing_before_ordering() {
    let mut runs = 0;
    let mut saw_ciphertext = 0;
    for n in [4, 7] {
        let keys = insecure_keys(n, "scabc sim");
        let options = Options {
            watch_secret: true,
            ..Options::default()
        };
        for strategy in [Strategy::Replay, Strategy::InvalidShares, Strategy::Twins] {
            check_seeds(12, |seed| {
                let report = run_case(&keys, Some(&strategy), seed, &options)?;
                let secrecy = report.secrecy.unwrap();
                assert_eq!(secrecy.shares_before_ordering, 0, "{secrecy:?}");
                assert!(!secrecy.byzantine_shares_decrypt, "{secrecy:?}");
                if secrecy.shares_after_ordering > 0 {
                    assert!(secrecy.with_one_honest_share_decrypt, "{secrecy:?}");
                }
                runs += 1;
                saw_ciphertext += usize::from(secrecy.saw_ciphertext);
                Ok(())
            });
        }
    }
    eprintln!("secrecy: the adversary saw the ciphertext before ordering in {saw_ciphertext} of {runs} runs");
    // The check is only meaningful if the adversary did see the ciphertext early.
    assert!(saw_ciphertext * 2 > runs, "{saw_ciphertext} of {runs}");
}

/// Every way of tampering, at every n: ordered, and `Invalid` at every honest node (checked in
/// `run_case` against the expected result); InvalidShares nodes' broken shares become
/// evidence and decryption still succeeds, and their junk batches come out `Invalid`.
#[test]
fn tampered_ciphertexts_and_invalid_shares() {
    let mut invalid_share_faults = 0;
    let mut junk_outputs = 0;
    for n in [4, 7] {
        let keys = insecure_keys(n, "scabc sim");
        let options = Options::default();
        check_seeds(TAMPERS.len() as u64 * 4, |seed| {
            let report = run_case(&keys, Some(&Strategy::InvalidShares), seed, &options)?;
            invalid_share_faults += report
                .faults
                .iter()
                .filter(|f| matches!(f, ScabcFault::InvalidShare { .. }))
                .count();
            // One tampered ciphertext is honest-submitted; the others came from junk batches.
            junk_outputs += report.invalid.saturating_sub(1);
            Ok(())
        });
    }
    eprintln!("tampering: {invalid_share_faults} invalid-share faults, {junk_outputs} junk entries ordered");
    assert!(invalid_share_faults > 0);
    assert!(junk_outputs > 0);
}

/// FloodFuture nodes send far-future share lists and full-length lists for every round in the
/// receivers' window: far ones are reported, early ones stay within the constant bound, and
/// every node's stored messages within theirs (checked at every event in `run_case`).
#[test]
fn far_future_floods_are_reported_and_bounded() {
    for n in [4, 7] {
        let keys = insecure_keys(n, "scabc sim");
        let options = Options {
            stored_every: 1,
            full_flood: true,
            ..Options::default()
        };
        let (mut max_early, mut future_faults) = (0, 0);
        check_seeds(30, |seed| {
            let report = run_case(&keys, Some(&Strategy::FloodFuture), seed, &options)?;
            max_early = max_early.max(report.max_early);
            future_faults += report
                .faults
                .iter()
                .filter(|f| matches!(f, ScabcFault::FutureShares { .. }))
                .count();
            Ok(())
        });
        eprintln!("scabc flood n = {n}: max early shares {max_early}, {future_faults} future-share faults");
        assert!(future_faults > 0);
        // The flood did fill early-share buffers (full lists of n · batch_size shares).
        assert!(
            max_early >= n * params().batch_size,
            "max early {max_early}"
        );
    }
}

/// Every strategy with real BLS key sets for ABC, on a few seeds.
#[test]
fn bls_sweep_n4() {
    let keys = bls_keys(4, 0x5cabc);
    let options = Options {
        stored_every: 1,
        ..Options::default()
    };
    check_seeds(BLS_SEEDS, |seed| {
        run_case(&keys, None, seed, &options).map(drop)
    });
    sweep(&keys, BLS_SEEDS);
}

/// Same seed, same run.
#[test]
fn runs_are_reproducible() {
    let keys = insecure_keys(4, "scabc sim");
    let trace = |seed: u64| {
        let run = run_keys(4, seed);
        let factory_keys = keys.clone();
        let public = run.tdh2_public.clone();
        let mut sim = Sim::new(
            SimConfig::new(4, seed),
            byzantine_nodes(4, 1, &Strategy::Replay, seed),
            move |id: NodeId, _| {
                Scabc::new(
                    config(4),
                    id,
                    b"repro".to_vec(),
                    node_keys(&factory_keys, &run, id),
                    params(),
                )
                .unwrap()
            },
            Box::new(maftia_sim::NoHooks),
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for id in NodeId::all(4) {
            let request =
                encrypt_request(&public, b"r", format!("{id}").as_bytes(), &mut rng).unwrap();
            let _ = sim.input(id, |_| request.clone());
        }
        sim.run(|_| Ok(())).unwrap();
        sim.trace_hash()
    };
    assert_eq!(trace(5), trace(5));
    assert_ne!(trace(5), trace(6));
}
