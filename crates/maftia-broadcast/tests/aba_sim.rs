//! Binary agreement under the deterministic simulator, and the coin-attack regression test.
//!
//! Every (n, strategy) pair runs over a seed sweep ([`check_seeds`]; `MAFTIA_SIM_SEEDS=k` for a
//! soak, `MAFTIA_SIM_SEED=s` to replay one seed). Inputs rotate with the seed: all honest nodes
//! input 1, all input 0, or a random mix; equivocating and twin nodes give their two copies
//! opposite inputs. Checked after every event: agreement (honest outputs are equal), integrity
//! (at most one output per honest node), validity (with unanimous honest inputs `v`, only `v`
//! is output), the memory bound ([`stored_messages_bound`]) and that no honest node accuses an
//! honest node. After quiescence: every honest node decided and terminated, and an honest run
//! recorded no evidence at all. The rounds honest nodes needed are collected and bounded.
//!
//! The big sweeps use the fast, insecure signer of `maftia_sim::insecure_crypto`; a few seeds
//! per configuration run with the real BLS threshold signatures.
//!
//! `predictable_coin_attack` reproduces the adversarial schedule of HoneyBadgerBFT issue #59
//! (github.com/amiller/HoneyBadgerBFT/issues/59): a scheduler that knows the next coin keeps
//! the honest nodes split forever; against the threshold coin, released only after `n−f`
//! main-votes, it must guess, and agreement follows within a few rounds.
mod support;

use maftia_broadcast::aba::{
    coin_name, mainvote_message, prevote_message, stored_messages_bound, Aba, AbaFault, AbaMessage,
    MainVote, Message, PreVoteJustification, ROUND_WINDOW,
};
use maftia_core::{NodeId, Protocol, Target};
use maftia_crypto::bls::BlsThresholdSigner;
use maftia_crypto::coin::{coin_share, combine_coin};
use maftia_crypto::threshold::ThresholdSigner;
use maftia_sim::insecure_crypto::InsecureThresholdSigner;
use maftia_sim::{byzantine_nodes, check_seeds, Adversary, Sim, SimConfig, SimFailure, Strategy};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use support::{
    bls_key_sets, check_agreement, check_no_honest_accused, config, faulty, faulty_set,
    insecure_key_sets, KeySets,
};

/// Seeds per (n, strategy) in the default run with the insecure signer.
const SEEDS: u64 = 200;
/// Seeds per configuration with real BLS signatures.
const BLS_SEEDS: u64 = 3;
const INSTANCE: &[u8] = b"aba sim";

/// An ABA node of the group with `keys`.
fn node<S: ThresholdSigner>(keys: &KeySets<S>, id: NodeId, instance: &[u8]) -> Aba<S> {
    Aba::new(config(keys.n()), id, instance.to_vec(), keys.keys(id)).unwrap()
}

fn insecure_keys(n: usize) -> KeySets<InsecureThresholdSigner> {
    insecure_key_sets(n, ["aba coin", "aba cbc", "aba quorum"])
}

fn bls_keys(n: usize) -> KeySets<BlsThresholdSigner> {
    bls_key_sets(n, 0xaba0 + n as u64)
}

/// Real signatures, made once, on statements no honest node of [`INSTANCE`] ever signs: valid
/// for *something*, never for what an adversary attaches them to.
struct Forgeries<S: ThresholdSigner> {
    quorum_signatures: Vec<S::Signature>,
    coin_signatures: Vec<S::Signature>,
}

impl<S: ThresholdSigner> Clone for Forgeries<S> {
    fn clone(&self) -> Self {
        Forgeries {
            quorum_signatures: self.quorum_signatures.clone(),
            coin_signatures: self.coin_signatures.clone(),
        }
    }
}

fn group_signature<S: ThresholdSigner>(signers: &[Arc<S>], message: &[u8]) -> S::Signature {
    let shares: BTreeMap<_, _> = signers
        .iter()
        .take(signers[0].threshold())
        .map(|s| (s.our_index(), s.sign_share(message)))
        .collect();
    signers[0].combine(message, &shares).unwrap().signature
}

fn forgeries<S: ThresholdSigner>(keys: &KeySets<S>) -> Forgeries<S> {
    let other = b"another aba instance";
    Forgeries {
        quorum_signatures: vec![
            group_signature(&keys.quorum, &prevote_message(other, 1, true)),
            group_signature(&keys.quorum, &mainvote_message(other, 1, None)),
            group_signature(&keys.quorum, &mainvote_message(other, 2, Some(false))),
        ],
        coin_signatures: vec![group_signature(
            &keys.coin,
            &maftia_crypto::coin::coin_message(&coin_name(other, 1)),
        )],
    }
}

/// The protocol-specific adversary: wrong shares, misattached justifications and proofs,
/// messages for round 0 and for far-future rounds.
struct AbaAdversary<S: ThresholdSigner> {
    keys: KeySets<S>,
    forged: Forgeries<S>,
    /// Rotates through the far-future catalogue (the simulator sends two per event).
    cursor: usize,
}

impl<S: ThresholdSigner> AbaAdversary<S> {
    fn new(keys: KeySets<S>, forged: Forgeries<S>) -> Self {
        AbaAdversary {
            keys,
            forged,
            cursor: 0,
        }
    }

    /// A real share, on a message nobody should sign.
    fn wrong_share(&self, rng: &mut dyn RngCore) -> S::Share {
        let signers = if rng.next_u32() % 2 == 0 {
            &self.keys.quorum
        } else {
            &self.keys.coin
        };
        let signer = &signers[rng.next_u32() as usize % signers.len()];
        signer.sign_share(&rng.next_u64().to_le_bytes())
    }

    fn forged_quorum(&self, rng: &mut dyn RngCore) -> S::Signature {
        let all = &self.forged.quorum_signatures;
        all[rng.next_u32() as usize % all.len()].clone()
    }

    fn forged_justification(&self, rng: &mut dyn RngCore) -> PreVoteJustification<S::Signature> {
        match rng.next_u32() % 3 {
            0 => PreVoteJustification::Preprocess(self.forged_quorum(rng)),
            1 => PreVoteJustification::Hard(self.forged_quorum(rng)),
            _ => PreVoteJustification::Soft {
                abstain: self.forged_quorum(rng),
                coin: self.forged.coin_signatures[0].clone(),
            },
        }
    }
}

impl<S: ThresholdSigner> Adversary<Aba<S>> for AbaAdversary<S> {
    fn corrupt(&mut self, message: &AbaMessage<S>, rng: &mut dyn RngCore) -> Option<AbaMessage<S>> {
        let corrupt_share = rng.next_u32() % 2 == 0;
        Some(match message.clone() {
            Message::PreProcess { value, .. } => Message::PreProcess {
                value,
                share: self.wrong_share(rng),
            },
            Message::PreVote {
                round,
                value,
                justification,
                share,
            } => {
                if corrupt_share {
                    Message::PreVote {
                        round,
                        value,
                        justification,
                        share: self.wrong_share(rng),
                    }
                } else {
                    Message::PreVote {
                        round,
                        value,
                        justification: self.forged_justification(rng),
                        share,
                    }
                }
            }
            Message::MainVote { round, vote, share } => {
                if corrupt_share {
                    Message::MainVote {
                        round,
                        vote,
                        share: self.wrong_share(rng),
                    }
                } else {
                    let vote = match vote {
                        MainVote::Value { value, .. } => MainVote::Value {
                            value,
                            proof: self.forged_quorum(rng),
                        },
                        MainVote::Abstain { one, .. } => MainVote::Abstain {
                            zero: self.forged_justification(rng),
                            one,
                        },
                    };
                    Message::MainVote { round, vote, share }
                }
            }
            Message::Coin { round, .. } => Message::Coin {
                round,
                share: self.wrong_share(rng),
            },
            Message::Decide { round, value, .. } => Message::Decide {
                round,
                value,
                proof: self.forged_quorum(rng),
            },
        })
    }

    fn far_future(&mut self, rng: &mut dyn RngCore) -> Vec<AbaMessage<S>> {
        let far = 1000 + rng.next_u32() % 1_000_000;
        let near = 1 + rng.next_u32() % (ROUND_WINDOW + 3);
        let mut catalogue = vec![
            // Within the window of an honest node early on: stored until judged.
            Message::Coin {
                round: near,
                share: self.wrong_share(rng),
            },
            Message::Coin {
                round: near + 1,
                share: self.wrong_share(rng),
            },
            Message::PreVote {
                round: far,
                value: rng.next_u32() % 2 == 0,
                justification: self.forged_justification(rng),
                share: self.wrong_share(rng),
            },
            Message::MainVote {
                round: u32::MAX - rng.next_u32() % 4,
                vote: MainVote::Value {
                    value: true,
                    proof: self.forged_quorum(rng),
                },
                share: self.wrong_share(rng),
            },
            Message::Coin {
                round: far,
                share: self.wrong_share(rng),
            },
            Message::Decide {
                round: far,
                value: false,
                proof: self.forged_quorum(rng),
            },
            Message::PreVote {
                round: 0,
                value: true,
                justification: self.forged_justification(rng),
                share: self.wrong_share(rng),
            },
        ];
        let start = self.cursor % catalogue.len();
        self.cursor += 2;
        catalogue.rotate_left(start);
        catalogue
    }
}

/// How honest inputs are chosen in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inputs {
    All(bool),
    Mixed,
}

impl Inputs {
    fn for_seed(seed: u64) -> Self {
        match seed % 3 {
            0 => Inputs::All(true),
            1 => Inputs::All(false),
            _ => Inputs::Mixed,
        }
    }
}

/// What a run showed, for checks across seeds.
#[derive(Debug, Default)]
struct Report {
    /// Round of the decision proof at each honest node.
    decision_rounds: Vec<u32>,
    /// Evidence honest nodes recorded (all against Byzantine nodes).
    faults: Vec<AbaFault>,
    /// Largest `stored_messages()` of an honest node at any event.
    max_stored: usize,
}

fn fail(seed: u64, n: usize, reason: String) -> SimFailure {
    SimFailure {
        seed,
        reason,
        replay: maftia_sim::replay_command(seed),
        n,
        event: 0,
    }
}

/// Run one agreement with `f` nodes following `strategy` (none: an honest run). Nodes in
/// `without_input` never get an input.
fn run_case<S: ThresholdSigner + 'static>(
    keys: &KeySets<S>,
    forged: &Forgeries<S>,
    strategy: Option<&Strategy>,
    inputs: Inputs,
    without_input: &BTreeSet<NodeId>,
    seed: u64,
) -> Result<Report, SimFailure> {
    let n = keys.n();
    let (byzantine, _) = faulty_set(n, strategy, seed);
    let factory_keys = keys.clone();
    let mut sim = Sim::new(
        SimConfig::new(n, seed),
        byzantine.clone(),
        move |id: NodeId, _copy| node(&factory_keys, id, INSTANCE),
        Box::new(AbaAdversary::new(keys.clone(), forged.clone())),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1a9u64);
    let input_of: Vec<bool> = (0..n)
        .map(|_| match inputs {
            Inputs::All(v) => v,
            Inputs::Mixed => rng.gen(),
        })
        .collect();
    let honest_inputs: BTreeSet<bool> = NodeId::all(n)
        .filter(|id| !byzantine.contains_key(id) && !without_input.contains(id))
        .map(|id| input_of[id.index()])
        .collect();
    let unanimous = (honest_inputs.len() == 1).then(|| *honest_inputs.iter().next().unwrap());
    // Inputs in a seed-dependent order; two-copy nodes give their copies opposite inputs.
    let mut order: Vec<NodeId> = NodeId::all(n)
        .filter(|id| !without_input.contains(id))
        .collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    for id in order {
        let v = input_of[id.index()];
        sim.input(id, |copy| if copy == 0 { v } else { !v })
            .map_err(|e| fail(seed, n, format!("input at {id}: {e}")))?;
    }
    let bound = stored_messages_bound(n);
    let mut max_stored = 0;
    sim.run(|state| {
        for id in state.honest() {
            let outputs = state.outputs(id);
            if outputs.len() > 1 {
                return Err(format!("integrity: {id} output {outputs:?}"));
            }
            if let Some(&value) = outputs.first() {
                if let Some(v) = unanimous {
                    if value != v {
                        return Err(format!(
                            "validity: all honest input {v}, {id} decided {value}"
                        ));
                    }
                }
            }
            let stored = state.node(id).stored_messages();
            if stored > bound {
                return Err(format!("{id} stores {stored} messages, bound {bound}"));
            }
            max_stored = max_stored.max(stored);
        }
        check_agreement(state, |value| value)?;
        check_no_honest_accused(state)
    })?;
    let state = sim.state();
    let mut report = Report {
        max_stored,
        ..Report::default()
    };
    for id in state.honest() {
        let node = state.node(id);
        if state.outputs(id).len() != 1 || !node.terminated() {
            return Err(sim.fail(format!(
                "termination: {id} output {:?} at quiescence (round {}, terminated {})",
                state.outputs(id),
                node.round(),
                node.terminated()
            )));
        }
        if node.stored_messages() != 0 {
            return Err(sim.fail(format!("{id} still stores messages after terminating")));
        }
        report
            .decision_rounds
            .push(node.decision_round().unwrap_or(u32::MAX));
    }
    if strategy.is_none() && !state.faults().is_empty() {
        return Err(sim.fail(format!("honest run recorded faults: {:?}", state.faults())));
    }
    report.faults = state.faults().iter().map(|(_, f)| f.kind.clone()).collect();
    Ok(report)
}

/// Decision rounds over a sweep: count, sum and max, for the statistics.
#[derive(Default)]
struct RoundStats {
    runs: u64,
    sum: u64,
    max: u32,
}

impl RoundStats {
    fn add(&mut self, report: &Report) {
        let worst = report.decision_rounds.iter().copied().max().unwrap_or(0);
        self.runs += 1;
        self.sum += u64::from(worst);
        self.max = self.max.max(worst);
    }

    fn mean(&self) -> f64 {
        self.sum as f64 / self.runs.max(1) as f64
    }
}

fn sweep<S: ThresholdSigner + 'static>(keys: &KeySets<S>, seeds: u64) -> RoundStats {
    let forged = forgeries(keys);
    let mut stats = RoundStats::default();
    let none = BTreeSet::new();
    for strategy in std::iter::once(None).chain(Strategy::all().into_iter().map(Some)) {
        check_seeds(seeds, |seed| {
            let report = run_case(
                keys,
                &forged,
                strategy.as_ref(),
                Inputs::for_seed(seed),
                &none,
                seed,
            )?;
            stats.add(&report);
            Ok(())
        });
    }
    stats
}

fn sweep_and_bound_rounds(n: usize) {
    let stats = sweep(&insecure_keys(n), SEEDS);
    eprintln!(
        "aba n = {n}: {} runs, rounds to decide (slowest honest node): mean {:.2}, max {}",
        stats.runs,
        stats.mean(),
        stats.max
    );
    if stats.runs >= 100 {
        assert!(
            stats.mean() <= 4.0,
            "n = {n}: mean rounds {:.2}",
            stats.mean()
        );
        assert!(stats.max <= 20, "n = {n}: max rounds {}", stats.max);
    }
}

#[test]
fn sweep_n4_every_strategy() {
    sweep_and_bound_rounds(4);
}

#[test]
fn sweep_n7_every_strategy() {
    sweep_and_bound_rounds(7);
}

#[test]
fn sweep_n10_every_strategy() {
    sweep_and_bound_rounds(10);
}

/// Every strategy with the real BLS threshold signatures, on a few seeds.
#[test]
fn bls_sweep_n4_and_n7() {
    for n in [4, 7] {
        let stats = sweep(&bls_keys(n), BLS_SEEDS);
        eprintln!(
            "aba BLS n = {n}: {} runs, mean rounds {:.2}, max {}",
            stats.runs,
            stats.mean(),
            stats.max
        );
    }
}

/// Invalid shares and justifications are caught and named: most runs record evidence, and all
/// of it is of the kinds this strategy produces.
#[test]
fn invalid_shares_are_reported() {
    for n in [4, 7, 10] {
        let keys = insecure_keys(n);
        let forged = forgeries(&keys);
        let (mut runs, mut runs_with_evidence) = (0, 0);
        let mut kinds = BTreeSet::new();
        check_seeds(SEEDS, |seed| {
            runs += 1;
            let report = run_case(
                &keys,
                &forged,
                Some(&Strategy::InvalidShares),
                Inputs::for_seed(seed),
                &BTreeSet::new(),
                seed,
            )?;
            runs_with_evidence += usize::from(!report.faults.is_empty());
            for fault in report.faults {
                let kind = match fault {
                    AbaFault::InvalidShare { .. } => "share",
                    AbaFault::InvalidJustification { .. } => "justification",
                    AbaFault::InvalidDecisionProof { .. } => "proof",
                    other => return Err(fail(seed, n, format!("unexpected evidence {other:?}"))),
                };
                kinds.insert(kind);
            }
            Ok(())
        });
        if runs >= 50 {
            assert!(
                runs_with_evidence * 10 >= runs * 9,
                "n = {n}: evidence in only {runs_with_evidence} of {runs} runs"
            );
            assert!(
                kinds.contains("share") && kinds.contains("justification"),
                "n = {n}: evidence kinds {kinds:?}"
            );
        }
    }
}

/// With `f` FloodFuture nodes, honest memory stays within the documented bound (checked after
/// every event by `run_case`), and the flooders are convicted.
#[test]
fn flood_future_stays_bounded() {
    for n in [4, 7, 10] {
        let keys = insecure_keys(n);
        let forged = forgeries(&keys);
        let mut max_stored = 0;
        let (mut runs, mut runs_with_evidence) = (0, 0);
        check_seeds(SEEDS, |seed| {
            runs += 1;
            let report = run_case(
                &keys,
                &forged,
                Some(&Strategy::FloodFuture),
                Inputs::for_seed(seed),
                &BTreeSet::new(),
                seed,
            )?;
            max_stored = max_stored.max(report.max_stored);
            runs_with_evidence += usize::from(!report.faults.is_empty());
            Ok(())
        });
        eprintln!(
            "aba n = {n}: FloodFuture max stored messages {max_stored} (bound {})",
            stored_messages_bound(n)
        );
        assert!(max_stored <= stored_messages_bound(n));
        if runs >= 50 {
            assert!(
                runs_with_evidence * 2 > runs,
                "n = {n}: flooders rarely convicted"
            );
        }
    }
}

/// Up to `f` honest nodes never get an input (MVBA feeds inputs late): everyone still decides,
/// and an input after the decision is accepted and ignored.
#[test]
fn nodes_without_input_still_decide() {
    for n in [4, 7, 10] {
        let keys = insecure_keys(n);
        let forged = forgeries(&keys);
        check_seeds(SEEDS / 2, |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let count = 1 + rng.gen_range(0..faulty(n));
            let mut ids: Vec<NodeId> = NodeId::all(n).collect();
            for i in (1..n).rev() {
                ids.swap(i, rng.gen_range(0..=i));
            }
            let without: BTreeSet<NodeId> = ids.into_iter().take(count).collect();
            run_case(&keys, &forged, None, Inputs::for_seed(seed), &without, seed).map(drop)
        });
    }
    // Late input after the decision.
    let keys = insecure_keys(4);
    let mut nodes: Vec<Aba<_>> = NodeId::all(4).map(|id| node(&keys, id, INSTANCE)).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut queue = VecDeque::new();
    for (i, node) in nodes.iter_mut().enumerate().take(3) {
        let step = node.handle_input(i % 2 == 0, &mut rng).unwrap();
        enqueue(&mut queue, NodeId(i as u16), step.messages, 4);
    }
    deliver_all(&mut nodes, &mut queue, &mut rng);
    assert!(nodes.iter().all(|n| n.decision().is_some()));
    let step = nodes[3].handle_input(true, &mut rng).unwrap();
    assert!(step.is_empty());
    assert_eq!(
        nodes[3].handle_input(true, &mut rng).err(),
        Some(maftia_broadcast::aba::AbaError::AlreadyInput)
    );
}

type Queue<M> = VecDeque<(NodeId, NodeId, M)>;

fn enqueue<M: Clone>(
    queue: &mut Queue<M>,
    from: NodeId,
    messages: Vec<maftia_core::TargetedMessage<M>>,
    n: usize,
) {
    for m in messages {
        for to in m.target.recipients(from, n) {
            queue.push_back((from, to, m.message.clone()));
        }
    }
}

/// Deliver everything in FIFO order until nothing is left.
fn deliver_all<S: ThresholdSigner>(
    nodes: &mut [Aba<S>],
    queue: &mut Queue<AbaMessage<S>>,
    rng: &mut ChaCha8Rng,
) {
    let n = nodes.len();
    while let Some((from, to, message)) = queue.pop_front() {
        let step = nodes[to.index()].handle_message(from, message, rng);
        assert!(step.faults.is_empty(), "{:?}", step.faults);
        enqueue(queue, to, step.messages, n);
    }
}

// ----- the coin attack (HoneyBadgerBFT issue #59) -----

/// Whether the adversary may compute the coin of a round before the protocol releases it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CoinKnowledge {
    /// A deliberately predictable coin: the adversary computes every round's coin in advance.
    Predictable,
    /// The threshold coin: the adversary holds only its own share (`f < f+1`) and learns a
    /// coin when honest nodes release theirs — after `n−f` main-votes of that round.
    Threshold,
}

/// An adversary controlling node 3 of a group of 4 and the whole schedule, driving honest
/// nodes 0, 1 and 2 by hand.
struct CoinAttack<S: ThresholdSigner> {
    keys: KeySets<S>,
    nodes: Vec<Aba<S>>,
    /// Messages sent by honest nodes, not yet delivered: (from, to, message).
    pending: Vec<(NodeId, NodeId, AbaMessage<S>)>,
    /// Every message honest nodes ever sent (what the adversary observes).
    sent: Vec<(NodeId, AbaMessage<S>)>,
    rng: ChaCha8Rng,
}

const BYZ: NodeId = NodeId(3);
const HONEST: [NodeId; 3] = [NodeId(0), NodeId(1), NodeId(2)];

impl<S: ThresholdSigner> CoinAttack<S> {
    fn new(keys: KeySets<S>, instance: &[u8], seed: u64) -> Self {
        let nodes = HONEST.iter().map(|id| node(&keys, *id, instance)).collect();
        CoinAttack {
            keys,
            nodes,
            pending: Vec::new(),
            sent: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn record(&mut self, from: NodeId, messages: Vec<maftia_core::TargetedMessage<AbaMessage<S>>>) {
        for m in messages {
            self.sent.push((from, m.message.clone()));
            for to in m.target.recipients(from, 4) {
                if to != BYZ {
                    self.pending.push((from, to, m.message.clone()));
                }
            }
        }
    }

    fn input(&mut self, id: NodeId, value: bool) {
        let step = self.nodes[id.index()]
            .handle_input(value, &mut self.rng)
            .unwrap();
        self.record(id, step.messages);
    }

    /// Hand `message` from `from` to honest `to`, and collect what it sends.
    fn hand(&mut self, from: NodeId, to: NodeId, message: AbaMessage<S>) {
        let step = self.nodes[to.index()].handle_message(from, message, &mut self.rng);
        assert!(step.faults.is_empty(), "{to}: {:?}", step.faults);
        self.record(to, step.messages);
    }

    /// Deliver the pending message from `from` to `to` that `pick` selects.
    fn deliver(&mut self, from: NodeId, to: NodeId, pick: impl Fn(&AbaMessage<S>) -> bool) {
        let position = self
            .pending
            .iter()
            .position(|(f, t, m)| *f == from && *t == to && pick(m))
            .unwrap_or_else(|| panic!("no pending message {from} -> {to} of that kind"));
        let (_, _, message) = self.pending.remove(position);
        self.hand(from, to, message);
    }

    /// The pre-vote honest node `id` sent for `round`.
    fn prevote_of(
        &self,
        id: NodeId,
        round: u32,
    ) -> Option<(bool, PreVoteJustification<S::Signature>)> {
        self.sent.iter().find_map(|(from, m)| match m {
            Message::PreVote {
                round: r,
                value,
                justification,
                ..
            } if *from == id && *r == round => Some((*value, justification.clone())),
            _ => None,
        })
    }

    /// The coin of `round`, computed from every node's share (only a predictable coin allows
    /// this before honest shares are out).
    fn coin(&self, instance: &[u8], round: u32) -> bool {
        let name = coin_name(instance, round);
        let shares: BTreeMap<_, _> = self
            .keys
            .coin
            .iter()
            .map(|s| (s.our_index(), coin_share(&**s, &name)))
            .collect();
        combine_coin(&*self.keys.coin[0], &name, &shares)
            .unwrap()
            .0
            .bit()
    }

    fn byz_prevote(
        &self,
        instance: &[u8],
        round: u32,
        value: bool,
        justification: PreVoteJustification<S::Signature>,
    ) -> AbaMessage<S> {
        Message::PreVote {
            round,
            value,
            justification,
            share: self.keys.quorum[BYZ.index()]
                .sign_share(&prevote_message(instance, round, value)),
        }
    }

    fn honest_coin_shares_released(&self, round: u32) -> usize {
        self.sent
            .iter()
            .filter(|(_, m)| matches!(m, Message::Coin { round: r, .. } if *r == round))
            .count()
    }

    /// Fair delivery of everything pending (oldest first) until nothing is left.
    fn flush(&mut self) {
        while !self.pending.is_empty() {
            let (from, to, message) = self.pending.remove(0);
            self.hand(from, to, message);
        }
    }
}

fn is_prevote<A, B>(round: u32) -> impl Fn(&Message<A, B>) -> bool {
    move |m| matches!(m, Message::PreVote { round: r, .. } if *r == round)
}

fn is_mainvote<A, B>(round: u32) -> impl Fn(&Message<A, B>) -> bool {
    move |m| matches!(m, Message::MainVote { round: r, .. } if *r == round)
}

fn is_coin<A, B>(round: u32) -> impl Fn(&Message<A, B>) -> bool {
    move |m| matches!(m, Message::Coin { round: r, .. } if *r == round)
}

/// Play the split schedule for up to `max_rounds` rounds; returns the round in which the
/// honest nodes decided (`None` if the adversary kept them split throughout).
///
/// The schedule (n = 4, f = 1, Byzantine node 3), for round r with honest pre-votes split 2:1,
/// majority m: node 3 pre-votes m to a majority node A and ¬m to the others, so A alone sees
/// n−f pre-votes for m and main-votes m while B and C abstain. Then, to make the majority of
/// round r+1 the opposite of that round's coin, it shows A's main-vote to some honest nodes
/// (they hard-pre-vote m) and only abstentions (B's, C's and its own) to the others (they
/// soft-pre-vote the coin of round r). This keeps the split as long as the coin of round r is
/// ¬m and the adversary picks the next majority against the next coin: with a predictable coin
/// it always can; with the threshold coin it must choose before any honest coin share of round
/// r+1 exists, i.e. it guesses, and is right only half the time.
fn coin_attack<S: ThresholdSigner>(
    keys: &KeySets<S>,
    knowledge: CoinKnowledge,
    seed: u64,
    max_rounds: u32,
) -> Option<u32> {
    let instance = format!("coin attack {seed}").into_bytes();
    let mut attack = CoinAttack::new(keys.clone(), &instance, seed);
    let mut guess_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let [a, b, c] = HONEST;
    // Pre-processing: the adversary wants round-1 pre-votes split 2:1 with majority ¬coin(1).
    let m = match knowledge {
        CoinKnowledge::Predictable => !attack.coin(&instance, 1),
        CoinKnowledge::Threshold => guess_rng.gen(),
    };
    attack.input(a, m);
    attack.input(b, m);
    attack.input(c, !m);
    let preprocess = |value: bool| -> AbaMessage<S> {
        Message::PreProcess {
            value,
            share: keys.coin[BYZ.index()]
                .sign_share(&maftia_broadcast::aba::preprocess_message(&instance, value)),
        }
    };
    let is_pp = |m: &AbaMessage<S>| matches!(m, Message::PreProcess { .. });
    for to in [a, b] {
        for from in [a, b, c] {
            attack.deliver(from, to, is_pp);
        }
    }
    attack.deliver(c, c, is_pp);
    attack.deliver(a, c, is_pp);
    attack.hand(BYZ, c, preprocess(!m));

    for round in 1..=max_rounds {
        let votes: Vec<(NodeId, bool, PreVoteJustification<S::Signature>)> = HONEST
            .iter()
            .map(|id| {
                let (v, j) = attack
                    .prevote_of(*id, round)
                    .unwrap_or_else(|| panic!("{id} did not pre-vote in round {round}"));
                (*id, v, j)
            })
            .collect();
        let ones = votes.iter().filter(|(_, v, _)| *v).count();
        if ones == 0 || ones == 3 {
            // Not split: the attack is over. Deliver everything; all decide.
            attack.flush();
            let decided: BTreeSet<Option<bool>> =
                attack.nodes.iter().map(|n| n.decision()).collect();
            assert_eq!(decided.len(), 1, "agreement: {decided:?}");
            assert!(
                decided.iter().all(Option::is_some),
                "no decision after the split ended"
            );
            return attack.nodes.iter().filter_map(|n| n.decision_round()).max();
        }
        let m = ones >= 2;
        let majority: Vec<NodeId> = votes
            .iter()
            .filter(|(_, v, _)| *v == m)
            .map(|x| x.0)
            .collect();
        let minority = votes.iter().find(|(_, v, _)| *v != m).map(|x| x.0).unwrap();
        let (a, b, c) = (majority[0], majority[1], minority);
        let just = |id: NodeId| votes.iter().find(|x| x.0 == id).unwrap().2.clone();
        // Pre-votes: A sees m, m, m (main-votes m); B and C see both values (abstain).
        attack.deliver(a, a, is_prevote(round));
        attack.deliver(b, a, is_prevote(round));
        let to_a = attack.byz_prevote(&instance, round, m, just(a));
        attack.hand(BYZ, a, to_a);
        attack.deliver(b, b, is_prevote(round));
        attack.deliver(c, b, is_prevote(round));
        let to_b = attack.byz_prevote(&instance, round, !m, just(c));
        attack.hand(BYZ, b, to_b.clone());
        attack.deliver(c, c, is_prevote(round));
        attack.deliver(a, c, is_prevote(round));
        attack.hand(BYZ, c, to_b);
        // The adversary now fixes the majority of round r+1. It must do so before any honest
        // share of coin r+1 exists: none does (honest nodes are still in round r).
        assert_eq!(attack.honest_coin_shares_released(round + 1), 0);
        let next_majority = match knowledge {
            CoinKnowledge::Predictable => !attack.coin(&instance, round + 1),
            CoinKnowledge::Threshold => guess_rng.gen(),
        };
        let (zero, one) = if m {
            (just(c), just(a))
        } else {
            (just(a), just(c))
        };
        let byz_abstain: AbaMessage<S> = Message::MainVote {
            round,
            vote: MainVote::Abstain { zero, one },
            share: keys.quorum[BYZ.index()].sign_share(&mainvote_message(&instance, round, None)),
        };
        let byz_coin: AbaMessage<S> = Message::Coin {
            round,
            share: coin_share(&*keys.coin[BYZ.index()], &coin_name(&instance, round)),
        };
        // Who sees A's main-vote for m (hard pre-vote m) and who sees only abstentions (soft
        // pre-vote for the coin): A always sees its own.
        let soft: Vec<NodeId> = if next_majority == m {
            vec![c]
        } else {
            vec![b, c]
        };
        attack.deliver(a, a, is_mainvote(round));
        attack.deliver(b, a, is_mainvote(round));
        attack.deliver(c, a, is_mainvote(round));
        for &x in &[b, c] {
            if soft.contains(&x) {
                let y = if x == b { c } else { b };
                attack.deliver(x, x, is_mainvote(round));
                attack.deliver(y, x, is_mainvote(round));
                attack.hand(BYZ, x, byz_abstain.clone());
                // The coin: x's own share (released now) and the adversary's.
                attack.deliver(x, x, is_coin(round));
                attack.hand(BYZ, x, byz_coin.clone());
            } else {
                let y = if x == b { c } else { b };
                attack.deliver(x, x, is_mainvote(round));
                attack.deliver(y, x, is_mainvote(round));
                attack.deliver(a, x, is_mainvote(round));
            }
        }
        // Old-round messages still pending are dropped by their receivers when delivered
        // later; the adversary keeps them back.
        attack.pending.retain(|(_, _, m)| match m {
            Message::PreVote { round: r, .. }
            | Message::MainVote { round: r, .. }
            | Message::Coin { round: r, .. } => *r > round,
            _ => true,
        });
        if attack.nodes.iter().any(|n| n.decision().is_some()) {
            attack.flush();
            return attack.nodes.iter().filter_map(|n| n.decision_round()).max();
        }
    }
    None
}

/// HoneyBadgerBFT issue #59: a coin the adversary knows in advance lets it stall agreement for
/// as long as it likes; the threshold coin, released only after `n−f` main-votes, does not.
#[test]
fn predictable_coin_attack() {
    let keys = insecure_keys(4);
    const STALL: u32 = 30;
    // Contrast: with a predictable coin the split survives every round, for every seed.
    check_seeds(20, |seed| {
        match coin_attack(&keys, CoinKnowledge::Predictable, seed, STALL) {
            None => Ok(()),
            Some(r) => Err(fail(
                seed,
                4,
                format!("predictable coin: decided in round {r}"),
            )),
        }
    });
    // The threshold coin: the same schedule ends within a few rounds.
    let mut stats = RoundStats::default();
    check_seeds(SEEDS, |seed| {
        match coin_attack(&keys, CoinKnowledge::Threshold, seed, STALL) {
            Some(round) => {
                stats.add(&Report {
                    decision_rounds: vec![round],
                    ..Report::default()
                });
                Ok(())
            }
            None => Err(fail(
                seed,
                4,
                format!("threshold coin: no decision in {STALL} rounds"),
            )),
        }
    });
    eprintln!(
        "coin attack against the threshold coin: {} runs, decided in round mean {:.2}, max {}",
        stats.runs,
        stats.mean(),
        stats.max
    );
    if stats.runs >= 100 {
        // Each round the guess fails with probability 1/2, and the decision follows one
        // round later: mean ≈ 3, and 20 rounds has probability ≈ 2^-18 per run.
        assert!(stats.mean() <= 4.5, "mean {:.2}", stats.mean());
        assert!(stats.max <= 20, "max {}", stats.max);
    }
    // The same with real BLS keys, where the adversary cannot compute the coin at all.
    let bls = bls_keys(4);
    check_seeds(BLS_SEEDS, |seed| {
        match coin_attack(&bls, CoinKnowledge::Threshold, seed, STALL) {
            Some(_) => Ok(()),
            None => Err(fail(seed, 4, "BLS: no decision".into())),
        }
    });
}

/// Same seed, same run: the simulation and the protocol are deterministic.
#[test]
fn runs_are_reproducible() {
    let keys = insecure_keys(7);
    let forged = forgeries(&keys);
    let trace = |seed: u64| {
        let factory_keys = keys.clone();
        let mut sim = Sim::new(
            SimConfig::new(7, seed),
            byzantine_nodes(7, 2, &Strategy::Replay, seed),
            move |id: NodeId, _| node(&factory_keys, id, INSTANCE),
            Box::new(AbaAdversary::new(keys.clone(), forged.clone())),
        );
        for id in NodeId::all(7) {
            let _ = sim.input(id, |_| id.0 % 2 == 0);
        }
        sim.run(|_| Ok(())).unwrap();
        sim.trace_hash()
    };
    assert_eq!(trace(5), trace(5));
    assert_ne!(trace(5), trace(6));
}

/// Messages round-trip through the wire codec.
#[test]
fn message_codec_roundtrip() {
    let keys = insecure_keys(4);
    let forged = forgeries(&keys);
    let sig = forged.quorum_signatures[0].clone();
    let share = keys.quorum[0].sign_share(b"x");
    let messages: Vec<AbaMessage<InsecureThresholdSigner>> = vec![
        Message::PreProcess {
            value: true,
            share: share.clone(),
        },
        Message::PreVote {
            round: 3,
            value: false,
            justification: PreVoteJustification::Soft {
                abstain: sig.clone(),
                coin: sig.clone(),
            },
            share: share.clone(),
        },
        Message::MainVote {
            round: 2,
            vote: MainVote::Abstain {
                zero: PreVoteJustification::Hard(sig.clone()),
                one: PreVoteJustification::Preprocess(sig.clone()),
            },
            share: share.clone(),
        },
        Message::Coin { round: 9, share },
        Message::Decide {
            round: 4,
            value: true,
            proof: sig,
        },
    ];
    for m in messages {
        let frame = maftia_core::codec::encode(&m).unwrap();
        assert_eq!(
            maftia_core::codec::decode::<AbaMessage<InsecureThresholdSigner>>(&frame).unwrap(),
            m
        );
    }
    let _ = Target::All; // (Target is used through TargetedMessage in the helpers)
}
