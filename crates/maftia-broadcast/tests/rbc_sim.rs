//! Reliable broadcast in the deterministic simulator, under every Byzantine strategy.
//!
//! For n = 4, 7, 10 with f = ⌊(n−1)/3⌋ Byzantine nodes, each strategy of `Strategy::all()` runs
//! over 200 seeds (more with `MAFTIA_SIM_SEEDS`); each seed runs four simulations: Bracha-sized
//! and AVID-sized payloads, with an honest proposer and with the proposer among the Byzantine
//! nodes. Checked after every event: integrity (at most one output per honest node), agreement
//! (no two honest outputs differ) and, with an honest proposer, that the only possible output is
//! its payload. Checked at quiescence: totality (all honest nodes output or none), validity and
//! termination with an honest proposer, that evidence only ever names Byzantine nodes, and the
//! per-strategy expectations spelled out in `check_outcome`.
use maftia_broadcast::rbc::{
    erasure, merkle, FaultKind, Fragment, Message, Rbc, RbcOutput, RbcParams,
};
use maftia_core::{GroupConfig, NodeId, Protocol};
use maftia_sim::{
    byzantine_nodes, check_seeds, Adversary, Sim, SimConfig, SimFailure, SimState, Strategy,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use std::collections::{BTreeMap, BTreeSet};

/// Payloads of at least this many bytes take the AVID path (low, to keep the sweeps fast).
const AVID_THRESHOLD: usize = 64;
/// Small, so oversized payloads and fragments are cheap to forge.
const MAX_PAYLOAD: usize = 1024;
const SEEDS: u64 = 200;
const GROUP_SIZES: [usize; 3] = [4, 7, 10];

fn params() -> RbcParams {
    RbcParams {
        erasure_threshold: AVID_THRESHOLD,
        max_payload: MAX_PAYLOAD,
    }
}

fn faulty(n: usize) -> usize {
    (n - 1) / 3
}

/// Forges RBC-specific bad messages: tampered proofs, fragments, digests and indices
/// (`corrupt`), and out-of-range indices, oversized payloads and fragments, proofs of the
/// wrong length (`far_future`).
struct RbcAdversary {
    n: usize,
    byzantine: Vec<NodeId>,
    max_fragment_len: usize,
}

impl RbcAdversary {
    fn new(n: usize, byzantine: &BTreeMap<NodeId, Strategy>) -> Self {
        let k = n - 2 * faulty(n);
        RbcAdversary {
            n,
            byzantine: byzantine.keys().copied().collect(),
            max_fragment_len: erasure::shard_len(MAX_PAYLOAD, k),
        }
    }
}

fn flip(bytes: &mut [u8], rng: &mut dyn RngCore) {
    if !bytes.is_empty() {
        let at = rng.next_u32() as usize % bytes.len();
        bytes[at] ^= 1 << (rng.next_u32() % 8);
    }
}

impl Adversary<Rbc> for RbcAdversary {
    fn corrupt(&mut self, message: &Message, rng: &mut dyn RngCore) -> Option<Message> {
        let mut forged = message.clone();
        match &mut forged {
            Message::Send(payload) | Message::Echo(payload) => {
                if payload.is_empty() {
                    payload.push(0xff);
                } else {
                    flip(payload, rng);
                }
            }
            Message::Value { root, fragment } | Message::EchoFragment { root, fragment } => {
                match rng.next_u32() % 4 {
                    0 if !fragment.proof.is_empty() => {
                        let sibling = rng.next_u32() as usize % fragment.proof.len();
                        flip(&mut fragment.proof[sibling], rng);
                    }
                    0 | 1 => flip(&mut fragment.data, rng),
                    2 => flip(root, rng),
                    _ => fragment.index = ((usize::from(fragment.index) + 1) % self.n) as u16,
                }
            }
            Message::Ready(digest) => flip(digest, rng),
        }
        Some(forged)
    }

    fn far_future(&mut self, rng: &mut dyn RngCore) -> Vec<Message> {
        let depth = merkle::depth(self.n);
        let mut root = [0u8; 32];
        rng.fill_bytes(&mut root);
        let mut messages = vec![
            // An index beyond the group.
            Message::EchoFragment {
                root,
                fragment: Fragment {
                    index: (self.n + rng.next_u32() as usize % 1000) as u16,
                    data: vec![1; 8],
                    proof: vec![[2; 32]; depth],
                },
            },
            Message::Value {
                root,
                fragment: Fragment {
                    index: u16::MAX,
                    data: Vec::new(),
                    proof: vec![[3; 32]; 64],
                },
            },
            // Payloads above max_payload.
            Message::Echo(vec![0xab; MAX_PAYLOAD + 1]),
            Message::Send(vec![0xcd; MAX_PAYLOAD + 1 + rng.next_u32() as usize % 64]),
        ];
        for id in &self.byzantine {
            // The sender's own index, but an oversized fragment, or a proof of the wrong length.
            messages.push(Message::EchoFragment {
                root,
                fragment: Fragment {
                    index: id.0,
                    data: vec![4; self.max_fragment_len + 2],
                    proof: vec![[5; 32]; depth],
                },
            });
            messages.push(Message::EchoFragment {
                root,
                fragment: Fragment {
                    index: id.0,
                    data: vec![6; 8],
                    proof: vec![[7; 32]; depth + 3],
                },
            });
        }
        // The simulator sends only the first few per event: vary which.
        for i in (1..messages.len()).rev() {
            messages.swap(i, rng.next_u32() as usize % (i + 1));
        }
        messages
    }
}

struct Scenario<'a> {
    n: usize,
    strategy: Option<&'a Strategy>,
    proposer_byzantine: bool,
    large: bool,
    seed: u64,
}

/// What a run showed, for checks across seeds.
#[derive(Default)]
struct Outcome {
    /// Some honest node recorded evidence against a Byzantine node.
    evidence: bool,
    /// Kinds of evidence recorded.
    kinds: BTreeSet<String>,
}

fn random_payload(rng: &mut ChaCha8Rng, large: bool) -> Vec<u8> {
    let len = if large {
        rng.gen_range(AVID_THRESHOLD..=400)
    } else {
        rng.gen_range(0..AVID_THRESHOLD)
    };
    (0..len).map(|_| rng.gen()).collect()
}

/// An output for messages, without dumping whole payloads.
fn brief(output: &RbcOutput) -> String {
    match output {
        RbcOutput::Delivered(p) => format!(
            "Delivered({} bytes {:02x?}..)",
            p.len(),
            &p[..p.len().min(6)]
        ),
        RbcOutput::InvalidEncoding => "InvalidEncoding".into(),
    }
}

fn brief_all(outputs: &[RbcOutput]) -> String {
    format!(
        "[{}]",
        outputs.iter().map(brief).collect::<Vec<_>>().join(", ")
    )
}

/// Integrity, agreement and (honest proposer) validity of what has been output so far.
fn invariant(state: &SimState<Rbc>, expected: Option<&RbcOutput>) -> Result<(), String> {
    let mut first: Option<(NodeId, &RbcOutput)> = None;
    for id in state.honest() {
        let outputs = state.outputs(id);
        if outputs.len() > 1 {
            return Err(format!("integrity: {id} output {} times", outputs.len()));
        }
        let Some(output) = outputs.first() else {
            continue;
        };
        if let Some(expected) = expected {
            if output != expected {
                return Err(format!(
                    "integrity: {id} output something the honest proposer did not send: {}",
                    brief(output)
                ));
            }
        }
        match first {
            Some((other, theirs)) if theirs != output => {
                return Err(format!(
                    "agreement: {other} output {}, {id} output {}",
                    brief(theirs),
                    brief(output)
                ));
            }
            Some(_) => {}
            None => first = Some((id, output)),
        }
    }
    Ok(())
}

fn run(scenario: &Scenario) -> Result<Outcome, SimFailure> {
    let Scenario {
        n,
        strategy,
        proposer_byzantine,
        large,
        seed,
    } = *scenario;
    let f = faulty(n);
    let byzantine = match strategy {
        Some(strategy) => byzantine_nodes(n, f, strategy, seed),
        None => BTreeMap::new(),
    };
    let honest: Vec<NodeId> = NodeId::all(n)
        .filter(|id| !byzantine.contains_key(id))
        .collect();
    let proposer = if proposer_byzantine {
        *byzantine
            .keys()
            .next()
            .expect("f >= 1 in every swept group")
    } else {
        honest[seed as usize % honest.len()]
    };
    let equivocating =
        proposer_byzantine && matches!(strategy, Some(Strategy::Equivocate | Strategy::Twins));
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7262_635f_7061_796c);
    let payload = random_payload(&mut rng, large);
    // An equivocating proposer gives its two copies different payloads; on one seed in four,
    // one for each path.
    let other = if !equivocating {
        payload.clone()
    } else if seed % 4 == 0 {
        random_payload(&mut rng, !large)
    } else {
        let mut other = payload.clone();
        other.push(0x42);
        other
    };
    let config = GroupConfig::asynchronous(n, f).expect("n > 3f");
    let mut sim = Sim::new(
        SimConfig::new(n, seed),
        byzantine.clone(),
        |id, _copy| Rbc::new(config, id, proposer, params()).expect("members"),
        Box::new(RbcAdversary::new(n, &byzantine)),
    );
    let inputs = [payload.clone(), other];
    if let Err(e) = sim.input(proposer, |copy| inputs[copy].clone()) {
        return Err(sim.fail(format!("the proposer rejected its input: {e}")));
    }
    let expected = (!proposer_byzantine).then(|| RbcOutput::Delivered(payload.clone()));
    sim.run(|state| invariant(state, expected.as_ref()))?;
    check_outcome(&sim, scenario, proposer, &payload).map_err(|reason| sim.fail(reason))
}

/// The checks made at quiescence.
fn check_outcome(
    sim: &Sim<Rbc>,
    scenario: &Scenario,
    proposer: NodeId,
    payload: &[u8],
) -> Result<Outcome, String> {
    let state = sim.state();
    let honest: Vec<NodeId> = state.honest().collect();
    let delivered: Vec<NodeId> = honest
        .iter()
        .copied()
        .filter(|id| !state.outputs(*id).is_empty())
        .collect();
    if !delivered.is_empty() && delivered.len() != honest.len() {
        return Err(format!("totality: only {delivered:?} of {honest:?} output"));
    }
    for id in &delivered {
        if !state.node(*id).terminated() {
            return Err(format!("{id} output but did not terminate"));
        }
    }
    if let Some((reporter, fault)) = state
        .faults()
        .iter()
        .find(|(_, f)| state.is_honest(f.culprit))
    {
        return Err(format!(
            "{reporter} blamed honest {}: {:?}",
            fault.culprit, fault.kind
        ));
    }
    if let Some((reporter, from, e)) = state
        .decode_failures()
        .iter()
        .find(|(_, from, _)| state.is_honest(*from))
    {
        return Err(format!(
            "{reporter} could not decode a frame from honest {from}: {e}"
        ));
    }
    let all_delivered = |what: &RbcOutput| -> Result<(), String> {
        match honest
            .iter()
            .find(|id| state.outputs(**id) != std::slice::from_ref(what))
        {
            Some(id) => Err(format!(
                "{id} output {}, expected {}",
                brief_all(state.outputs(*id)),
                brief(what)
            )),
            None => Ok(()),
        }
    };
    let expected = RbcOutput::Delivered(payload.to_vec());
    let strategy = scenario.strategy;
    let require = |holds: bool, what: &str| if holds { Ok(()) } else { Err(what.to_string()) };
    match strategy {
        // Validity and termination.
        _ if !scenario.proposer_byzantine => all_delivered(&expected)?,
        Some(Strategy::Silent | Strategy::RandomBytes) => require(
            delivered.is_empty(),
            "a proposer that never proposed had its broadcast delivered",
        )?,
        // Its honest logic sent the whole proposal before anything else happened.
        Some(Strategy::CrashAt(_) | Strategy::Replay | Strategy::FloodFuture) => {
            all_delivered(&expected)?
        }
        Some(Strategy::InvalidShares) if scenario.large => {
            // Every Value it sent was tampered with: nobody echoes, nobody delivers, and every
            // honest node holds evidence against the proposer.
            require(delivered.is_empty(), "tampered fragments were delivered")?;
            for id in &honest {
                let blamed = state
                    .faults()
                    .iter()
                    .any(|(r, f)| r == id && f.culprit == proposer);
                require(
                    blamed,
                    &format!("{id} recorded no evidence against the proposer"),
                )?;
            }
        }
        // Bracha: the one (tampered) Send reached everyone alike.
        Some(Strategy::InvalidShares) => require(
            delivered.len() == honest.len(),
            "the proposer's single Send was not delivered everywhere",
        )?,
        // Equivocate and Twins: agreement and totality (checked above) are all there is.
        _ => {}
    }
    // Strategies whose misbehaviour no single honest node can observe leave no evidence.
    let undetectable = match strategy {
        None | Some(Strategy::Silent | Strategy::CrashAt(_) | Strategy::Equivocate) => true,
        Some(Strategy::Twins) => !scenario.proposer_byzantine,
        _ => false,
    };
    if undetectable && !state.faults().is_empty() {
        return Err(format!(
            "faults recorded in a run without detectable misbehaviour: {:?}",
            state.faults()
        ));
    }
    if strategy == Some(&Strategy::RandomBytes)
        && !scenario.proposer_byzantine
        && state.decode_failures().is_empty()
    {
        return Err("garbage frames were sent but no decode failure was recorded".into());
    }
    Ok(Outcome {
        evidence: !state.faults().is_empty(),
        kinds: state
            .faults()
            .iter()
            .map(|(_, f)| format!("{:?}", f.kind))
            .collect(),
    })
}

/// Sweep `strategy` (or no Byzantine node at all) over every group size, 200 seeds each, and
/// return per group size the kinds of evidence recorded and in how many seeds some was.
fn sweep(strategy: Option<Strategy>) -> Vec<(usize, u64, u64, BTreeSet<String>)> {
    let mut summary = Vec::new();
    for n in GROUP_SIZES {
        let (mut seeds, mut with_evidence) = (0, 0);
        let mut kinds = BTreeSet::new();
        check_seeds(SEEDS, |seed| {
            seeds += 1;
            let mut evidence = false;
            for proposer_byzantine in [false, true] {
                if strategy.is_none() && proposer_byzantine {
                    continue;
                }
                for large in [false, true] {
                    let scenario = Scenario {
                        n,
                        strategy: strategy.as_ref(),
                        proposer_byzantine,
                        large,
                        seed,
                    };
                    let outcome = run(&scenario)?;
                    evidence |= outcome.evidence;
                    kinds.extend(outcome.kinds);
                }
            }
            with_evidence += u64::from(evidence);
            Ok(())
        });
        summary.push((n, seeds, with_evidence, kinds));
    }
    summary
}

/// With a default-sized sweep, evidence of the expected kinds must show up.
fn expect_evidence(summary: &[(usize, u64, u64, BTreeSet<String>)], expected: &[&str]) {
    for (n, seeds, with_evidence, kinds) in summary {
        if *seeds < 20 {
            continue; // a single replayed seed need not show every kind
        }
        assert!(*with_evidence > 0, "n = {n}: no evidence in {seeds} seeds");
        for kind in expected {
            assert!(
                kinds.contains(*kind),
                "n = {n}: no {kind} evidence in {seeds} seeds: {kinds:?}"
            );
        }
    }
}

#[test]
fn all_strategies_are_swept() {
    // The per-strategy tests below must cover exactly Strategy::all().
    let covered = [
        Strategy::Silent,
        Strategy::CrashAt(3),
        Strategy::Equivocate,
        Strategy::InvalidShares,
        Strategy::RandomBytes,
        Strategy::Replay,
        Strategy::FloodFuture,
        Strategy::Twins,
    ];
    assert_eq!(Strategy::all(), covered);
}

#[test]
fn honest_group() {
    let summary = sweep(None);
    assert!(summary
        .iter()
        .all(|(_, _, with_evidence, _)| *with_evidence == 0));
}

#[test]
fn silent() {
    sweep(Some(Strategy::Silent));
}

#[test]
fn crash() {
    sweep(Some(Strategy::CrashAt(3)));
}

#[test]
fn equivocate() {
    sweep(Some(Strategy::Equivocate));
}

#[test]
fn invalid_shares() {
    let summary = sweep(Some(Strategy::InvalidShares));
    expect_evidence(&summary, &["InvalidProof", "WrongFragmentIndex"]);
}

#[test]
fn random_bytes() {
    sweep(Some(Strategy::RandomBytes));
}

#[test]
fn replay() {
    let summary = sweep(Some(Strategy::Replay));
    expect_evidence(&summary, &["NotProposer"]);
}

#[test]
fn flood_future() {
    let summary = sweep(Some(Strategy::FloodFuture));
    expect_evidence(
        &summary,
        &["WrongFragmentIndex", "OversizedPayload", "InvalidProof"],
    );
}

#[test]
fn twins() {
    let summary = sweep(Some(Strategy::Twins));
    expect_evidence(&summary, &["ConflictingProposal"]);
}

/// A Byzantine proposer commits (valid Merkle proofs) to fragments that are not a codeword:
/// every honest node outputs InvalidEncoding and holds InvalidEncoding evidence against it.
/// The forged fragments are, by seed: all garbage; a true codeword with one data fragment
/// replaced (nodes decoding from different subsets would otherwise get different payloads);
/// a true codeword with one recovery fragment replaced (a node holding all data fragments
/// would otherwise deliver the payload while others decode garbage). Only re-encoding and
/// comparing the Merkle root makes these agree.
#[test]
fn non_codeword_fragments_give_invalid_encoding_everywhere() {
    for n in GROUP_SIZES {
        check_seeds(SEEDS, |seed| {
            let f = faulty(n);
            let k = n - 2 * f;
            let proposer = NodeId((seed % n as u64) as u16);
            let config = GroupConfig::asynchronous(n, f).expect("n > 3f");
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let payload = random_payload(&mut rng, true);
            let mut forged = erasure::encode(&payload, n, k).expect("encodable");
            let mut garble = |fragment: &mut Vec<u8>| rng.fill(fragment.as_mut_slice());
            match seed % 3 {
                0 => forged.iter_mut().for_each(&mut garble),
                1 => garble(&mut forged[(seed / 3) as usize % k]),
                _ => garble(&mut forged[k + (seed / 3) as usize % (n - k)]),
            }
            let byzantine: BTreeMap<NodeId, Strategy> =
                [(proposer, Strategy::InvalidShares)].into_iter().collect();
            let mut sim = Sim::new(
                SimConfig::new(n, seed),
                byzantine,
                |id, _| Rbc::new(config, id, proposer, params()).expect("members"),
                Box::new(GarbageCodeword::new(&forged)),
            );
            // The proposer's honest logic proposes the payload; `corrupt` swaps every fragment
            // it sends for the same leaf of the forged tree.
            if let Err(e) = sim.input(proposer, |_| payload.clone()) {
                return Err(sim.fail(format!("input: {e}")));
            }
            sim.run(|state| invariant(state, None))?;
            let state = sim.state();
            for id in state.honest() {
                if state.outputs(id) != [RbcOutput::InvalidEncoding] {
                    return Err(sim.fail(format!("{id} output {}", brief_all(state.outputs(id)))));
                }
                let blamed = state.faults().iter().any(|(r, f)| {
                    *r == id && f.culprit == proposer && f.kind == FaultKind::InvalidEncoding
                });
                if !blamed {
                    return Err(sim.fail(format!("{id} holds no InvalidEncoding evidence")));
                }
            }
            if let Some((_, fault)) = state.faults().iter().find(|(_, f)| f.culprit != proposer) {
                return Err(sim.fail(format!("evidence against an honest node: {fault:?}")));
            }
            Ok(())
        });
    }
}

/// Replaces every fragment the proposer sends (in `Value` and in its own echo) with the same
/// index of a Merkle tree over garbage — valid proofs, no codeword.
struct GarbageCodeword {
    root: [u8; 32],
    fragments: Vec<Fragment>,
}

impl GarbageCodeword {
    fn new(garbage: &[Vec<u8>]) -> Self {
        let tree = merkle::MerkleTree::new(garbage);
        let fragments = garbage
            .iter()
            .enumerate()
            .map(|(i, data)| Fragment {
                index: i as u16,
                data: data.clone(),
                proof: tree.proof(i).expect("in range"),
            })
            .collect();
        GarbageCodeword {
            root: tree.root(),
            fragments,
        }
    }

    fn swap(&self, fragment: &Fragment) -> Fragment {
        self.fragments[usize::from(fragment.index)].clone()
    }
}

impl Adversary<Rbc> for GarbageCodeword {
    fn corrupt(&mut self, message: &Message, _rng: &mut dyn RngCore) -> Option<Message> {
        match message {
            Message::Value { fragment, .. } => Some(Message::Value {
                root: self.root,
                fragment: self.swap(fragment),
            }),
            Message::EchoFragment { fragment, .. } => Some(Message::EchoFragment {
                root: self.root,
                fragment: self.swap(fragment),
            }),
            Message::Ready(_) => Some(Message::Ready(self.root)),
            _ => None,
        }
    }
}
