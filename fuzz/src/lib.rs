//! Fixtures shared by the agreement fuzz targets (`aba_messages`, `mvba_messages`,
//! `abc_messages`, `scabc_messages`) and the seed-corpus generator.
//!
//! Every target works the same way ([`run`]): one group of [`N`] = 4 nodes (f = 1) with REAL key
//! material — BLS threshold key sets (coin, consistent broadcast, quorum), Ed25519 identities and
//! a TDH2 key, all dealt once per process from fixed seeds — and one *victim* node, [`VICTIM`].
//! Once per process, a whole honest group of the family is run to quiescence under a FIFO
//! scheduler ([`honest_trace`]), and everything the victim received is recorded. A fuzz input
//! then picks how far the victim gets before the attack (input or not, and a prefix of that
//! recorded trace replayed, so later rounds, attempts and decided instances are reachable at
//! once), and carries up to [`MAX_RECORDS`] records `[sender][len: u16 LE][frame]`: each frame
//! is decoded as the family's message (through `maftia_core::codec`, as the node does) and
//! handed to the victim as coming from the claimed sender — a member, a non-member or
//! `NodeId(u16::MAX)`. The victim's messages to itself are looped back, as the runtime does
//! (`Target::All` includes the sender).
//!
//! What must hold, for any input: nothing panics, and the victim's `stored_messages()` stays
//! within the bound its module documents.
use maftia_broadcast::aba::{self, Aba};
use maftia_broadcast::abc::{Abc, AbcParams};
use maftia_broadcast::mvba::{self, Mvba, Validator};
use maftia_broadcast::scabc::{self, Scabc, ScabcKeys};
use maftia_broadcast::ThresholdKeys;
use maftia_core::{codec, GroupConfig, NodeId, Protocol, ProtocolStep};
use maftia_crypto::bls::{self, BlsThresholdSigner, KeySetId};
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_crypto::tdh2::{self, Tdh2PublicKey, Tdh2SecretShare};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

/// Group size of every target.
pub const N: usize = 4;
/// Byzantine nodes tolerated.
pub const F: usize = 1;
/// The node under attack.
pub const VICTIM: NodeId = NodeId(0);
/// Most records (messages) one fuzz input delivers.
pub const MAX_RECORDS: usize = 16;
/// The recorded trace is cut at `trace.len() · k / CHECKPOINTS` for `k = 0 ..= CHECKPOINTS`.
pub const CHECKPOINTS: usize = 8;
/// Most messages the victim sends itself that are looped back per delivered record.
const MAX_SELF_DELIVERIES: usize = 512;
/// Most events of the recorded honest run (it reaches quiescence well before).
const MAX_HONEST_EVENTS: usize = 200_000;

pub fn config() -> GroupConfig {
    GroupConfig::asynchronous(N, F).expect("4 nodes tolerate 1 fault")
}

/// The group's real BLS threshold key sets, one bundle per node, dealt once.
pub fn threshold_keys() -> &'static [ThresholdKeys<BlsThresholdSigner>] {
    static KEYS: OnceLock<Vec<ThresholdKeys<BlsThresholdSigner>>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(0xb15);
        let mut deal = |id: KeySetId| -> Vec<Arc<BlsThresholdSigner>> {
            let (public, secrets) =
                bls::deal(id, N, id.threshold(N, F), &mut rng).expect("valid dealing");
            let public = Arc::new(public);
            secrets
                .into_iter()
                .map(|s| Arc::new(BlsThresholdSigner::new(public.clone(), s).expect("our share")))
                .collect()
        };
        let (coin, cbc, quorum) = (
            deal(KeySetId::Coin),
            deal(KeySetId::Cbc),
            deal(KeySetId::Quorum),
        );
        NodeId::all(N)
            .map(|id| {
                let i = id.index();
                ThresholdKeys::new(
                    &config(),
                    id,
                    coin[i].clone(),
                    cbc[i].clone(),
                    quorum[i].clone(),
                )
                .expect("key sets fit the group")
            })
            .collect()
    })
}

/// Real Ed25519 identities of the group, and the registry of their public keys.
pub fn identities() -> &'static (Vec<IdentityKey>, Arc<Vec<IdentityPublicKey>>) {
    static IDENTITIES: OnceLock<(Vec<IdentityKey>, Arc<Vec<IdentityPublicKey>>)> = OnceLock::new();
    IDENTITIES.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(0x1d);
        let keys: Vec<IdentityKey> = (0..N).map(|_| IdentityKey::generate(&mut rng)).collect();
        let registry = Arc::new(keys.iter().map(IdentityKey::public).collect());
        (keys, registry)
    })
}

/// The group's real TDH2 key (threshold f + 1) and every node's share of it.
pub fn tdh2_keys() -> &'static (Arc<Tdh2PublicKey>, Vec<Tdh2SecretShare>) {
    static KEYS: OnceLock<(Arc<Tdh2PublicKey>, Vec<Tdh2SecretShare>)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(0x7d82);
        let (public, secrets) = tdh2::deal(N, F + 1, &mut rng).expect("valid dealing");
        (Arc::new(public), secrets)
    })
}

/// The RNG a node's handlers get; the same sequence in the recorded run and in the replay, so
/// the replayed victim goes through exactly the recorded states.
fn node_rng(id: NodeId) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(0xf022 + u64::from(id.0))
}

/// What the victim received in the recorded honest run: (sender, message), in order.
pub type Trace<P> = Vec<(NodeId, <P as Protocol>::Message)>;

/// One message family: how to build a node of the group, its input, and its memory bound.
pub trait Family: 'static {
    type P: Protocol;
    /// The fuzz target's name.
    const NAME: &'static str;
    /// Seed of the scheduler of the recorded honest run.
    const SCHEDULE_SEED: u64 = 1;
    /// Node `id` of the group, fresh.
    fn node(id: NodeId) -> Self::P;
    /// Node `id`'s input in the recorded honest run.
    fn input(id: NodeId) -> <Self::P as Protocol>::Input;
    /// `(stored_messages, documented bound)` of a node.
    fn stored(node: &Self::P) -> (usize, usize);
    /// The cell holding the recorded honest trace.
    fn trace_cell() -> &'static OnceLock<Trace<Self::P>>;
}

/// The recorded honest trace of `F` (run once per process).
pub fn honest_trace<Fam: Family>() -> &'static Trace<Fam::P> {
    Fam::trace_cell().get_or_init(record_honest_run::<Fam>)
}

/// Run every node of the group with its input until no message is left, delivering a message
/// picked by a scheduler seeded with [`Family::SCHEDULE_SEED`], and record what [`VICTIM`]
/// receives.
pub fn record_honest_run<Fam: Family>() -> Trace<Fam::P> {
    let mut nodes: Vec<Fam::P> = NodeId::all(N).map(Fam::node).collect();
    let mut rngs: Vec<ChaCha20Rng> = NodeId::all(N).map(node_rng).collect();
    let mut scheduler = ChaCha20Rng::seed_from_u64(Fam::SCHEDULE_SEED);
    let mut queue: Vec<(NodeId, NodeId, <Fam::P as Protocol>::Message)> = Vec::new();
    let enqueue = |queue: &mut Vec<_>, from: NodeId, step: ProtocolStep<Fam::P>| {
        for targeted in step.messages {
            for to in targeted.target.recipients(from, N) {
                queue.push((from, to, targeted.message.clone()));
            }
        }
    };
    for id in NodeId::all(N) {
        let step = nodes[id.index()]
            .handle_input(Fam::input(id), &mut rngs[id.index()])
            .expect("honest input is accepted");
        enqueue(&mut queue, id, step);
    }
    let mut trace = Vec::new();
    let mut events = 0;
    while !queue.is_empty() {
        let (from, to, message) = queue.swap_remove(scheduler.gen_range(0..queue.len()));
        events += 1;
        assert!(
            events <= MAX_HONEST_EVENTS,
            "{}: honest run never quiesced",
            Fam::NAME
        );
        if to == VICTIM {
            trace.push((from, message.clone()));
        }
        let step = nodes[to.index()].handle_message(from, message, &mut rngs[to.index()]);
        assert!(
            step.faults.is_empty(),
            "{}: honest run recorded a fault",
            Fam::NAME
        );
        enqueue(&mut queue, to, step);
    }
    trace
}

/// The node a fuzz record claims to come from: a member, a non-member, or the largest id.
pub fn sender_of(byte: u8) -> NodeId {
    match byte {
        u8::MAX => NodeId(u16::MAX),
        b => NodeId(u16::from(b) % (N as u16 + 2)),
    }
}

/// The victim as selected by a fuzz input's mode byte: bit 0 gives it its input first, the
/// other bits pick how much of the honest trace it has received (see [`CHECKPOINTS`]).
pub fn victim<Fam: Family>(mode: u8) -> (Fam::P, ChaCha20Rng) {
    let mut node = Fam::node(VICTIM);
    let mut rng = node_rng(VICTIM);
    if mode & 1 == 1 {
        // A refused input (none are, for the fixtures) changes nothing.
        let _ = node.handle_input(Fam::input(VICTIM), &mut rng);
    }
    let trace = honest_trace::<Fam>();
    let checkpoint = usize::from(mode >> 1) % (CHECKPOINTS + 1);
    for (from, message) in &trace[..trace.len() * checkpoint / CHECKPOINTS] {
        let _ = node.handle_message(*from, message.clone(), &mut rng);
    }
    (node, rng)
}

/// Deliver `message` from `from` to the victim, then the victim's messages to itself.
fn deliver<P: Protocol>(node: &mut P, from: NodeId, message: P::Message, rng: &mut ChaCha20Rng) {
    let mut queue = VecDeque::from([(from, message)]);
    let mut delivered = 0;
    while let Some((from, message)) = queue.pop_front() {
        if delivered == MAX_SELF_DELIVERIES {
            break;
        }
        delivered += 1;
        let step = node.handle_message(from, message, rng);
        for targeted in step.messages {
            if targeted.target.contains(VICTIM, VICTIM) {
                queue.push_back((VICTIM, targeted.message));
            }
        }
    }
}

/// The fuzz body: `data` is `[mode]` followed by records `[sender][len: u16 LE][frame]`.
///
/// # Panics
/// If a protocol handler panics, or the victim stores more messages than its documented bound —
/// exactly what the fuzzer looks for.
pub fn run<Fam: Family>(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let (mut node, mut rng) = victim::<Fam>(mode);
    for _ in 0..MAX_RECORDS {
        let [sender, len_low, len_high, tail @ ..] = rest else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([*len_low, *len_high])).min(tail.len());
        let (frame, tail) = tail.split_at(len);
        rest = tail;
        let Ok(message) = codec::decode::<<Fam::P as Protocol>::Message>(frame) else {
            continue;
        };
        deliver(&mut node, sender_of(*sender), message, &mut rng);
        let (stored, bound) = Fam::stored(&node);
        assert!(
            stored <= bound,
            "{}: the victim stores {stored} messages, above its bound {bound}",
            Fam::NAME
        );
    }
}

/// One record of a fuzz input.
pub fn record(sender: NodeId, frame: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(frame.len()).ok()?;
    let sender = u8::try_from(sender.0).ok()?;
    let mut out = vec![sender];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(frame);
    Some(out)
}

/// Seed inputs of `F`: valid encoded messages of the honest trace, delivered to the victim at
/// several checkpoints (each seed continues the honest run from its checkpoint, or replays one
/// message from a spread of positions in the trace).
pub fn seed_inputs<Fam: Family>() -> Vec<Vec<u8>> {
    let trace = honest_trace::<Fam>();
    let encoded = |i: usize| -> Option<Vec<u8>> {
        let (from, message) = trace.get(i)?;
        record(*from, &codec::encode(message).ok()?)
    };
    let mut seeds = Vec::new();
    for checkpoint in [0, 1, CHECKPOINTS / 2, CHECKPOINTS - 1] {
        let start = trace.len() * checkpoint / CHECKPOINTS;
        let mode = 1 | (checkpoint as u8) << 1;
        let mut seed = vec![mode];
        for i in start..start + 4 {
            seed.extend(encoded(i).unwrap_or_default());
        }
        seeds.push(seed);
    }
    for k in 0..8 {
        let i = trace.len() * k / 8;
        if let Some(one) = encoded(i) {
            seeds.push([vec![1], one].concat());
        }
    }
    seeds
}

/// A validator for the MVBA target: values must start with `b"ok"`.
pub struct StartsWithOk;

impl Validator for StartsWithOk {
    fn is_valid(&self, value: &[u8]) -> bool {
        value.starts_with(b"ok")
    }
}

/// Largest MVBA value of the MVBA target.
const MVBA_MAX_VALUE: usize = 1024;

/// ABC (and SC-ABC) parameters of the targets: small batches, requests big enough for a
/// ciphertext.
fn abc_params() -> AbcParams {
    AbcParams {
        batch_size: 4,
        max_batch_bytes: 4096,
        max_request_size: 1024,
        max_pending: 16,
        dedup_rounds: 8,
    }
}

/// Binary agreement; nodes input alternating bits, and the recorded run's schedule makes round 1
/// end without a decision, so the trace holds coin shares and round-2 (hard and soft) pre-votes.
pub struct AbaFamily;

impl Family for AbaFamily {
    type P = Aba<BlsThresholdSigner>;
    const NAME: &'static str = "aba_messages";
    const SCHEDULE_SEED: u64 = 4;
    fn node(id: NodeId) -> Self::P {
        Aba::new(
            config(),
            id,
            b"fuzz aba".to_vec(),
            threshold_keys()[id.index()].clone(),
        )
        .expect("valid ABA fixture")
    }
    fn input(id: NodeId) -> bool {
        id.0.is_multiple_of(2)
    }
    fn stored(node: &Self::P) -> (usize, usize) {
        (node.stored_messages(), aba::stored_messages_bound(N))
    }
    fn trace_cell() -> &'static OnceLock<Trace<Self::P>> {
        static TRACE: OnceLock<Trace<Aba<BlsThresholdSigner>>> = OnceLock::new();
        &TRACE
    }
}

/// Multivalued validated agreement with [`StartsWithOk`].
pub struct MvbaFamily;

impl Family for MvbaFamily {
    type P = Mvba<BlsThresholdSigner>;
    const NAME: &'static str = "mvba_messages";
    fn node(id: NodeId) -> Self::P {
        Mvba::new(
            config(),
            id,
            b"fuzz mvba".to_vec(),
            threshold_keys()[id.index()].clone(),
            Arc::new(StartsWithOk),
            MVBA_MAX_VALUE,
        )
        .expect("valid MVBA fixture")
    }
    fn input(id: NodeId) -> Vec<u8> {
        format!("ok proposal of {id}").into_bytes()
    }
    fn stored(node: &Self::P) -> (usize, usize) {
        (
            node.stored_messages(),
            mvba::stored_messages_bound(&config()),
        )
    }
    fn trace_cell() -> &'static OnceLock<Trace<Self::P>> {
        static TRACE: OnceLock<Trace<Mvba<BlsThresholdSigner>>> = OnceLock::new();
        &TRACE
    }
}

/// Atomic broadcast with real Ed25519 identities; each node submits one request.
pub struct AbcFamily;

impl Family for AbcFamily {
    type P = Abc<BlsThresholdSigner>;
    const NAME: &'static str = "abc_messages";
    fn node(id: NodeId) -> Self::P {
        let (keys, registry) = identities();
        Abc::new(
            config(),
            id,
            b"fuzz abc".to_vec(),
            threshold_keys()[id.index()].clone(),
            keys[id.index()].clone(),
            registry.clone(),
            abc_params(),
        )
        .expect("valid ABC fixture")
    }
    fn input(id: NodeId) -> Vec<u8> {
        format!("request of {id}").into_bytes()
    }
    fn stored(node: &Self::P) -> (usize, usize) {
        let bound = node.stored_messages_bound(mvba::stored_messages_bound(&config()));
        (node.stored_messages(), bound)
    }
    fn trace_cell() -> &'static OnceLock<Trace<Self::P>> {
        static TRACE: OnceLock<Trace<Abc<BlsThresholdSigner>>> = OnceLock::new();
        &TRACE
    }
}

/// Secure causal atomic broadcast with a real TDH2 key; each node submits one ciphertext.
pub struct ScabcFamily;

impl Family for ScabcFamily {
    type P = Scabc<BlsThresholdSigner>;
    const NAME: &'static str = "scabc_messages";
    fn node(id: NodeId) -> Self::P {
        let (identity_keys, registry) = identities();
        let (tdh2_public, tdh2_secrets) = tdh2_keys();
        let keys = ScabcKeys {
            tdh2_public: tdh2_public.clone(),
            tdh2_secret: tdh2_secrets[id.index()].clone(),
            threshold: threshold_keys()[id.index()].clone(),
            identity: identity_keys[id.index()].clone(),
            identities: registry.clone(),
        };
        Scabc::new(config(), id, b"fuzz scabc".to_vec(), keys, abc_params())
            .expect("valid SC-ABC fixture")
    }
    fn input(id: NodeId) -> Vec<u8> {
        static REQUESTS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        REQUESTS.get_or_init(|| {
            let mut rng = ChaCha20Rng::seed_from_u64(0xc1);
            NodeId::all(N)
                .map(|id| {
                    let label = format!("client {id}/1");
                    scabc::encrypt_request(
                        &tdh2_keys().0,
                        format!("secret request of {id}").as_bytes(),
                        label.as_bytes(),
                        &mut rng,
                    )
                    .expect("encryptable request")
                })
                .collect()
        })[id.index()]
        .clone()
    }
    fn stored(node: &Self::P) -> (usize, usize) {
        let bound = node.stored_messages_bound(mvba::stored_messages_bound(&config()));
        (node.stored_messages(), bound)
    }
    fn trace_cell() -> &'static OnceLock<Trace<Self::P>> {
        static TRACE: OnceLock<Trace<Scabc<BlsThresholdSigner>>> = OnceLock::new();
        &TRACE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The honest run decides or delivers (so the replayed checkpoints reach late states), and
    /// every seed decodes and runs through the harness.
    fn check<Fam: Family>(victim_output: impl Fn(&Fam::P) -> bool) {
        let trace = honest_trace::<Fam>();
        assert!(trace.len() > 8, "{}: trace of {}", Fam::NAME, trace.len());
        let start = std::time::Instant::now();
        let (full, _) = victim::<Fam>(1 | (CHECKPOINTS as u8) << 1);
        eprintln!(
            "{}: honest trace of {} messages, full replay {:?}",
            Fam::NAME,
            trace.len(),
            start.elapsed()
        );
        assert!(
            victim_output(&full),
            "{}: the replayed victim got nowhere",
            Fam::NAME
        );
        let seeds = seed_inputs::<Fam>();
        assert!(seeds.len() >= 8);
        for seed in &seeds {
            run::<Fam>(seed);
        }
        // Garbage and truncated records are harmless.
        run::<Fam>(&[3, 0xff, 9, 0, 1, 2, 3]);
        run::<Fam>(&seeds[0][..seeds[0].len() / 2]);
    }

    #[test]
    fn aba_fixture() {
        check::<AbaFamily>(|node| node.decision_round() == Some(2));
    }

    #[test]
    fn mvba_fixture() {
        check::<MvbaFamily>(|node| node.decision().is_some());
    }

    #[test]
    fn abc_fixture() {
        check::<AbcFamily>(|node| node.round() >= 1 && node.pending() == 0);
    }

    #[test]
    fn scabc_fixture() {
        check::<ScabcFamily>(|node| node.output_count() == N as u64);
    }

    #[test]
    fn senders_cover_members_and_outsiders() {
        let senders: std::collections::BTreeSet<NodeId> = (0..=u8::MAX).map(sender_of).collect();
        let expected: std::collections::BTreeSet<NodeId> = (0..N as u16 + 2)
            .map(NodeId)
            .chain([NodeId(u16::MAX)])
            .collect();
        assert_eq!(senders, expected);
    }
}
