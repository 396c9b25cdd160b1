//! Multivalued validated Byzantine agreement under the deterministic simulator.
//!
//! Every (n, strategy) pair runs over a seed sweep ([`check_seeds`]; `MAFTIA_SIM_SEEDS=k` for a
//! soak, `MAFTIA_SIM_SEED=s` to replay one seed). Every node proposes at the start (Byzantine
//! copies of equivocating and twin nodes propose different values; `InvalidShares` nodes turn
//! their proposals into values the validator rejects and garble shares, certificates, votes and
//! commit sets). The invariant, checked after every event: **agreement** (honest decisions are
//! equal), **integrity** (at most one decision per honest node), **external validity** (every
//! decision satisfies the validator `Q`: "starts with `ok`"), honest nodes never accuse honest
//! nodes, and every honest node's `stored_messages()` stays within the documented bound. At
//! quiescence: **termination** (every honest node decided and terminated) and **validity** (the
//! decision is one of the values some node was given as input). An honest run records no fault.
//!
//! The big sweeps use the fast, insecure signer of `maftia_sim::insecure_crypto`; a few seeds run
//! with real BLS threshold signatures for all three key sets.
mod support;

use maftia_broadcast::aba;
use maftia_broadcast::cbc::{self, echo_message, payload_digest};
use maftia_broadcast::mvba::{
    self, commit_bitmap_len, proposal_tag, Message, Mvba, MvbaFault, Validator, Vote,
};
use maftia_core::{NodeId, Protocol};
use maftia_crypto::bls::BlsThresholdSigner;
use maftia_crypto::threshold::ThresholdSigner;
use maftia_sim::insecure_crypto::InsecureThresholdSigner;
use maftia_sim::{
    byzantine_nodes, check_seeds, Adversary, Sim, SimConfig, SimFailure, SimState, Strategy,
};
use rand::seq::SliceRandom;
use rand_core::RngCore;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use support::{
    bls_key_sets, check_agreement, check_clean_evidence, check_no_honest_accused, config,
    faulty_set, insecure_key_sets, KeySets,
};

/// Largest proposal the simulated instances accept.
const MAX_VALUE: usize = 128;
/// Seeds per (n, strategy) in the default run with the insecure signer.
const SEEDS: u64 = 200;
/// Seeds per (n = 4, strategy) with real BLS signatures.
const BLS_SEEDS: u64 = 5;

/// The test predicate `Q`: a value is valid iff it starts with `ok`.
struct StartsWithOk;

/// The predicate Byzantine nodes run with: anything goes, so their honest logic proposes and
/// pushes values that honest nodes must refuse.
struct AcceptAll;

impl Validator for AcceptAll {
    fn is_valid(&self, _value: &[u8]) -> bool {
        true
    }
}

impl Validator for StartsWithOk {
    fn is_valid(&self, value: &[u8]) -> bool {
        value.starts_with(b"ok")
    }
}

fn insecure_keys(n: usize) -> KeySets<InsecureThresholdSigner> {
    insecure_key_sets(n, ["coin", "cbc", "quorum"])
}

fn bls_keys(n: usize) -> KeySets<BlsThresholdSigner> {
    bls_key_sets(n, 0x3b0a + n as u64)
}

type Msg<S> = Message<<S as ThresholdSigner>::Share, <S as ThresholdSigner>::Signature>;

/// A CBC certificate (a real group signature) on `payload` as `proposer`'s proposal of
/// `instance`: valid for that, and for nothing else.
fn certificate_on<S: ThresholdSigner>(
    signers: &[Arc<S>],
    instance: &[u8],
    proposer: NodeId,
    payload: &[u8],
) -> S::Signature {
    let message = echo_message(
        &proposal_tag(instance, proposer),
        proposer,
        &payload_digest(payload),
    );
    let shares: BTreeMap<_, _> = signers
        .iter()
        .take(signers[0].threshold())
        .map(|s| (s.our_index(), s.sign_share(&message)))
        .collect();
    signers[0].combine(&message, &shares).unwrap().signature
}

/// The protocol-specific adversary: invalid proposals and commit sets, wrong shares, misattached
/// certificates, unjustified votes, and far-future or out-of-range attempts and broadcasters.
struct MvbaAdversary<S: ThresholdSigner> {
    n: usize,
    keys: KeySets<S>,
    /// A real certificate of `b"ok forged"` as node 0's proposal of *another* MVBA instance.
    foreign_certificate: S::Signature,
}

impl<S: ThresholdSigner> MvbaAdversary<S> {
    fn new(keys: KeySets<S>, instance: &[u8]) -> Self {
        let mut other = instance.to_vec();
        other.extend_from_slice(b"/other");
        let foreign_certificate = certificate_on(&keys.cbc, &other, NodeId(0), b"ok forged");
        MvbaAdversary {
            n: keys.n(),
            keys,
            foreign_certificate,
        }
    }

    /// A real share of a random node of `set`, on a message nobody signs in this protocol.
    fn wrong_share(set: &[Arc<S>], rng: &mut dyn RngCore) -> S::Share {
        let signer = &set[rng.next_u32() as usize % set.len()];
        signer.sign_share(&rng.next_u64().to_le_bytes())
    }

    fn forged_vote(&self) -> Vote<S::Signature> {
        Vote::One {
            value: b"ok forged".to_vec(),
            certificate: self.foreign_certificate.clone(),
        }
    }

    fn corrupt_aba(
        &self,
        message: &aba::AbaMessage<S>,
        rng: &mut dyn RngCore,
    ) -> Option<aba::AbaMessage<S>> {
        let mut message = message.clone();
        match &mut message {
            aba::Message::PreProcess { share, .. } | aba::Message::Coin { share, .. } => {
                *share = Self::wrong_share(&self.keys.coin, rng)
            }
            aba::Message::PreVote { share, .. } | aba::Message::MainVote { share, .. } => {
                *share = Self::wrong_share(&self.keys.quorum, rng)
            }
            aba::Message::Decide { .. } => return None,
        }
        Some(message)
    }
}

impl<S: ThresholdSigner> Adversary<Mvba<S>> for MvbaAdversary<S> {
    fn corrupt(&mut self, message: &Msg<S>, rng: &mut dyn RngCore) -> Option<Msg<S>> {
        let flip = rng.next_u32() % 2 == 0;
        Some(match message {
            Message::Proposal(_, cbc::Message::Send(payload)) if !payload.starts_with(b"ok") => {
                return None; // already a value Q rejects
            }
            Message::Proposal(p, cbc::Message::Send(payload)) => {
                // A value Q rejects (it no longer starts with "ok").
                let mut bad = b"bad ".to_vec();
                bad.extend_from_slice(payload);
                bad.truncate(MAX_VALUE);
                Message::Proposal(*p, cbc::Message::Send(bad))
            }
            Message::Proposal(p, cbc::Message::Echo(_)) => Message::Proposal(
                *p,
                cbc::Message::Echo(Self::wrong_share(&self.keys.cbc, rng)),
            ),
            Message::Proposal(
                p,
                cbc::Message::Final {
                    payload,
                    certificate,
                },
            ) => {
                let mut payload = payload.clone();
                payload.push(b'!');
                Message::Proposal(
                    *p,
                    cbc::Message::Final {
                        payload,
                        certificate: certificate.clone(),
                    },
                )
            }
            Message::Commit(q, cbc::Message::Send(_)) => {
                // Too few members (or bits beyond n): an invalid commit set.
                let mut bitmap = vec![0u8; commit_bitmap_len(self.n)];
                if flip && self.n % 8 != 0 {
                    bitmap[self.n / 8] |= 0x80;
                }
                Message::Commit(*q, cbc::Message::Send(bitmap))
            }
            Message::Commit(q, cbc::Message::Echo(_)) => Message::Commit(
                *q,
                cbc::Message::Echo(Self::wrong_share(&self.keys.cbc, rng)),
            ),
            Message::Commit(_, cbc::Message::Final { .. }) => return None,
            Message::Coin(_) => Message::Coin(Self::wrong_share(&self.keys.coin, rng)),
            Message::Vote { attempt, vote } => Message::Vote {
                attempt: *attempt,
                vote: match vote {
                    // A 0-vote against its own commit set, or a misattached certificate.
                    Vote::One { .. } if flip => Vote::Zero,
                    _ => self.forged_vote(),
                },
            },
            Message::Aba { attempt, message } => Message::Aba {
                attempt: *attempt,
                message: self.corrupt_aba(message, rng)?,
            },
        })
    }

    fn far_future(&mut self, rng: &mut dyn RngCore) -> Vec<Msg<S>> {
        let n = self.n;
        let beyond = n as u32 + rng.next_u32() % 1000;
        let outside = NodeId(n as u16 + (rng.next_u32() % 100) as u16);
        let mut messages = vec![
            Message::Vote {
                attempt: beyond,
                vote: Vote::Zero,
            },
            Message::Vote {
                attempt: u32::MAX,
                vote: self.forged_vote(),
            },
            Message::Aba {
                attempt: beyond,
                message: aba::Message::Coin {
                    round: 1,
                    share: Self::wrong_share(&self.keys.coin, rng),
                },
            },
            // A valid attempt, a far-future ABA round: the child must not keep it.
            Message::Aba {
                attempt: rng.next_u32() % n as u32,
                message: aba::Message::Coin {
                    round: 1_000 + rng.next_u32() % 1_000_000,
                    share: Self::wrong_share(&self.keys.coin, rng),
                },
            },
            Message::Proposal(outside, cbc::Message::Send(b"ok outside".to_vec())),
            Message::Commit(
                outside,
                cbc::Message::Send(vec![0xff; commit_bitmap_len(n)]),
            ),
            Message::Vote {
                attempt: rng.next_u32() % n as u32,
                vote: Vote::One {
                    value: vec![b'o'; MAX_VALUE + 1],
                    certificate: self.foreign_certificate.clone(),
                },
            },
            Message::Coin(Self::wrong_share(&self.keys.coin, rng)),
        ];
        // Only a couple are sent per event: vary which.
        messages.shuffle(rng);
        messages
    }
}

/// What a run showed, for checks across seeds.
#[derive(Debug, Default, Clone)]
struct RunReport {
    /// The deciding attempt + 1 (candidates tried), at the first honest node.
    attempts: u32,
    /// Largest `stored_messages()` of an honest node at any event.
    max_stored: usize,
    /// Whether the decision is an honest node's proposal.
    honest_value: bool,
    /// Evidence honest nodes recorded, by kind name.
    fault_kinds: BTreeSet<String>,
}

fn proposal_for(seed: u64, id: NodeId, copy: usize) -> Vec<u8> {
    // Copies of an equivocating or twin node propose different values.
    format!("ok mvba seed {seed} node {} copy {copy}", id.0).into_bytes()
}

/// What a Byzantine node proposes (with [`AcceptAll`] as its own predicate): on odd seeds its
/// copy 0, and always its copy 1, proposes a value `Q` rejects. Honest nodes must never echo it;
/// if they did, the node's honest logic would certify it and it could be decided.
fn byzantine_proposal_for(seed: u64, id: NodeId, copy: usize) -> Vec<u8> {
    let value = proposal_for(seed, id, copy);
    if copy == 1 || seed % 2 == 1 {
        [b"bad ".as_slice(), &value].concat()
    } else {
        value
    }
}

/// Whether `kind` (possibly nested in a child) is of the given top-level variant name.
fn kind_name(kind: &MvbaFault) -> String {
    let debug = format!("{kind:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Which nodes get an input at the start; the others get theirs only after a first quiescence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inputs {
    /// Everyone proposes at the start.
    AllAtStart,
    /// One honest node proposes only after the others have run to quiescence.
    OneHonestLate,
}

/// One simulated MVBA instance: `strategy` at `f` Byzantine nodes (none if `None`).
fn run_case<S: ThresholdSigner + 'static>(
    keys: &KeySets<S>,
    strategy: Option<&Strategy>,
    seed: u64,
    inputs: Inputs,
) -> Result<RunReport, SimFailure> {
    let n = keys.n();
    let group = config(n);
    let (byzantine, honest) = faulty_set(n, strategy, seed);
    let late = match inputs {
        Inputs::OneHonestLate => Some(honest[(seed % honest.len() as u64) as usize]),
        Inputs::AllAtStart => None,
    };
    // The values nodes were given: the only ones anyone may decide.
    let mut allowed: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
    for id in NodeId::all(n) {
        match byzantine.get(&id) {
            None => {
                allowed.insert(proposal_for(seed, id, 0), true);
            }
            Some(s) if s.runs_protocol() => {
                for copy in 0..s.copies() {
                    allowed.insert(byzantine_proposal_for(seed, id, copy), false);
                }
            }
            Some(_) => {}
        }
    }
    let byzantine_ids: BTreeSet<NodeId> = byzantine.keys().copied().collect();
    let propose = move |id: NodeId, copy: usize| {
        if byzantine_ids.contains(&id) {
            byzantine_proposal_for(seed, id, copy)
        } else {
            proposal_for(seed, id, copy)
        }
    };
    let instance = format!("mvba-sim/n {n}/seed {seed}").into_bytes();
    let adversary = MvbaAdversary::new(keys.clone(), &instance);
    let factory_keys = keys.clone();
    let factory_instance = instance.clone();
    let factory_byzantine: BTreeSet<NodeId> = byzantine.keys().copied().collect();
    let mut sim = Sim::new(
        SimConfig::new(n, seed),
        byzantine,
        move |id: NodeId, _copy| {
            let validator: Arc<dyn Validator> = if factory_byzantine.contains(&id) {
                Arc::new(AcceptAll)
            } else {
                Arc::new(StartsWithOk)
            };
            Mvba::new(
                group,
                id,
                factory_instance.clone(),
                factory_keys.keys(id),
                validator,
                MAX_VALUE,
            )
            .unwrap()
        },
        Box::new(adversary),
    );
    let bound = mvba::stored_messages_bound(&config(n));
    let mut max_stored = 0;
    let mut invariant = |state: &SimState<Mvba<S>>| -> Result<(), String> {
        for id in state.honest() {
            let stored = state.node(id).stored_messages();
            max_stored = max_stored.max(stored);
            if stored > bound {
                return Err(format!("{id} stores {stored} messages, bound {bound}"));
            }
            let outputs = state.outputs(id);
            if outputs.len() > 1 {
                return Err(format!("integrity: {id} decided {} times", outputs.len()));
            }
            let Some(value) = outputs.first() else {
                continue;
            };
            if !StartsWithOk.is_valid(value) {
                return Err(format!("external validity: {id} decided an invalid value"));
            }
        }
        check_agreement(state, |value| value)?;
        check_no_honest_accused(state)
    };
    for id in NodeId::all(n).filter(|id| Some(*id) != late) {
        sim.input(id, |copy| propose(id, copy))
            .map_err(|e| sim.fail(format!("{id} refused its input: {e}")))?;
    }
    sim.run(&mut invariant)?;
    if let Some(id) = late {
        // Everything so far reached `id` before its input (it may even have decided).
        sim.input(id, |copy| propose(id, copy))
            .map_err(|e| sim.fail(format!("late {id} refused its input: {e}")))?;
        sim.run(&mut invariant)?;
    }

    let state = sim.state();
    let mut report = RunReport {
        max_stored,
        ..RunReport::default()
    };
    let mut decided = None;
    for id in state.honest() {
        let node = state.node(id);
        let Some(value) = node.decision() else {
            return Err(sim.fail(format!(
                "termination: {id} did not decide (attempt {}, permutation {:?})",
                node.attempt(),
                node.permutation()
            )));
        };
        if state.outputs(id) != [value.to_vec()] {
            return Err(sim.fail(format!("{id}'s decision() differs from its output")));
        }
        if !node.terminated() {
            return Err(sim.fail(format!("{id} decided but has not terminated")));
        }
        let Some(&honest_value) = allowed.get(value) else {
            return Err(sim.fail(format!(
                "validity: {id} decided {:?}, which no node proposed",
                String::from_utf8_lossy(value)
            )));
        };
        report.honest_value = honest_value;
        if decided.is_none() {
            decided = Some(value.to_vec());
            report.attempts = node.deciding_attempt().map_or(0, |a| a + 1);
        }
    }
    check_clean_evidence(&sim, strategy.is_none())?;
    report.fault_kinds = state
        .faults()
        .iter()
        .map(|(_, f)| kind_name(&f.kind))
        .collect();
    Ok(report)
}

/// Statistics over a sweep.
#[derive(Debug, Default)]
struct SweepStats {
    runs: u64,
    attempts: u64,
    max_attempts: u32,
    max_stored: usize,
    honest_values: u64,
}

impl SweepStats {
    fn add(&mut self, report: &RunReport) {
        self.runs += 1;
        self.attempts += u64::from(report.attempts);
        self.max_attempts = self.max_attempts.max(report.attempts);
        self.max_stored = self.max_stored.max(report.max_stored);
        self.honest_values += u64::from(report.honest_value);
    }

    fn mean_attempts(&self) -> f64 {
        self.attempts as f64 / self.runs.max(1) as f64
    }
}

/// Every strategy at `f` nodes over `seeds` seeds.
fn sweep<S: ThresholdSigner + 'static>(keys: &KeySets<S>, seeds: u64) -> SweepStats {
    let n = keys.n();
    let mut total = SweepStats::default();
    for strategy in Strategy::all() {
        let mut stats = SweepStats::default();
        check_seeds(seeds, |seed| {
            let report = run_case(keys, Some(&strategy), seed, Inputs::AllAtStart)?;
            stats.add(&report);
            Ok(())
        });
        eprintln!(
            "mvba n = {n} {strategy:?}: {} runs, mean attempts {:.2}, max {}, max stored {}",
            stats.runs,
            stats.mean_attempts(),
            stats.max_attempts,
            stats.max_stored
        );
        total.runs += stats.runs;
        total.attempts += stats.attempts;
        total.max_attempts = total.max_attempts.max(stats.max_attempts);
        total.max_stored = total.max_stored.max(stats.max_stored);
        total.honest_values += stats.honest_values;
    }
    // Expected candidates tried is below (n + 1) / (f + 2) < 3 (module doc); with hundreds of
    // runs the mean stays far from this generous bound, and no run needs all n candidates.
    if total.runs >= 100 {
        assert!(
            total.mean_attempts() <= 3.0,
            "n = {n}: mean attempts {:.2}",
            total.mean_attempts()
        );
    }
    total
}

#[test]
fn sweep_n4_every_strategy() {
    sweep(&insecure_keys(4), SEEDS);
}

#[test]
fn sweep_n7_every_strategy() {
    sweep(&insecure_keys(7), SEEDS);
}

#[test]
fn sweep_n10_every_strategy() {
    sweep(&insecure_keys(10), SEEDS);
}

#[test]
fn honest_runs_decide_everywhere_with_no_faults() {
    for n in [1, 2, 3, 4, 5, 7, 10] {
        let keys = insecure_keys(n);
        let mut stats = SweepStats::default();
        check_seeds(50, |seed| {
            let report = run_case(&keys, None, seed, Inputs::AllAtStart)?;
            assert!(report.honest_value);
            stats.add(&report);
            Ok(())
        });
        eprintln!(
            "mvba honest n = {n}: mean attempts {:.2}, max {}",
            stats.mean_attempts(),
            stats.max_attempts
        );
    }
}

/// A node that gets its proposal late still takes part from the start: it echoes, commits and
/// votes on messages that arrived before its input, and a proposal after the decision changes
/// nothing. With silent or crashed Byzantine nodes, fewer than `n − f` proposals exist until the
/// late one arrives, so the run can only finish through it.
#[test]
fn a_late_proposer_is_not_left_behind() {
    for n in [4, 7] {
        let keys = insecure_keys(n);
        for strategy in [None, Some(Strategy::Silent), Some(Strategy::CrashAt(3))] {
            check_seeds(60, |seed| {
                run_case(&keys, strategy.as_ref(), seed, Inputs::OneHonestLate).map(drop)
            });
        }
    }
}

/// Byzantine proposals that fail `Q` are never echoed: never decided (checked in every run),
/// and reported against their proposer.
#[test]
fn invalid_proposals_are_reported() {
    for n in [4, 7] {
        let keys = insecure_keys(n);
        let (mut runs, mut with_evidence) = (0, 0);
        check_seeds(60, |seed| {
            let report = run_case(
                &keys,
                Some(&Strategy::InvalidShares),
                seed,
                Inputs::AllAtStart,
            )?;
            runs += 1;
            with_evidence += usize::from(report.fault_kinds.contains("InvalidProposal"));
            Ok(())
        });
        if runs >= 30 {
            // Every honest node sees the Byzantine proposer's first Send unless it decided
            // first; nearly every run must show the evidence.
            assert!(
                with_evidence * 10 >= runs * 9,
                "n = {n}: InvalidProposal evidence in {with_evidence} of {runs} runs"
            );
        }
    }
}

/// `f` nodes flood far-future and out-of-range attempts, foreign broadcasters and oversized
/// votes: honest nodes' stored messages stay within `stored_messages_bound` (checked after every
/// event in `run_case`) and far below it in practice.
#[test]
fn flooding_keeps_memory_bounded() {
    for n in [4, 7, 10] {
        let keys = insecure_keys(n);
        let bound = mvba::stored_messages_bound(&config(n));
        let mut stats = SweepStats::default();
        let mut kinds = BTreeSet::new();
        check_seeds(40, |seed| {
            let report = run_case(
                &keys,
                Some(&Strategy::FloodFuture),
                seed,
                Inputs::AllAtStart,
            )?;
            stats.add(&report);
            kinds.extend(report.fault_kinds);
            Ok(())
        });
        eprintln!(
            "mvba flood n = {n}: max stored {} (bound {bound}), evidence {kinds:?}",
            stats.max_stored
        );
        assert!(stats.max_stored <= bound);
        if stats.runs >= 20 {
            for kind in ["AttemptOutOfRange", "UnknownBroadcaster"] {
                assert!(kinds.contains(kind), "n = {n}: no {kind} evidence");
            }
        }
    }
}

/// Every strategy with real BLS threshold signatures (all three key sets) on a few seeds.
#[test]
fn bls_sweep_n4() {
    let keys = bls_keys(4);
    check_seeds(BLS_SEEDS, |seed| {
        run_case(&keys, None, seed, Inputs::AllAtStart).map(drop)
    });
    sweep(&keys, BLS_SEEDS);
}

/// n = 7 and 10 with BLS: every strategy at n = 7, honest runs at n = 10.
#[test]
fn bls_sweep_n7_and_honest_n10() {
    let keys = bls_keys(7);
    sweep(&keys, 2);
    let keys = bls_keys(10);
    check_seeds(2, |seed| {
        run_case(&keys, None, seed, Inputs::AllAtStart).map(drop)
    });
}

/// Same seed, same run: the simulation (and the protocol) are deterministic.
#[test]
fn runs_are_reproducible() {
    let keys = insecure_keys(4);
    let trace = |seed: u64| {
        let group = config(4);
        let factory_keys = keys.clone();
        let mut sim = Sim::new(
            SimConfig::new(4, seed),
            byzantine_nodes(4, 1, &Strategy::Replay, seed),
            move |id: NodeId, _| {
                Mvba::new(
                    group,
                    id,
                    b"repro".to_vec(),
                    factory_keys.keys(id),
                    Arc::new(StartsWithOk),
                    MAX_VALUE,
                )
                .unwrap()
            },
            Box::new(MvbaAdversary::new(keys.clone(), b"repro")),
        );
        for id in NodeId::all(4) {
            let _ = sim.input(id, |copy| proposal_for(seed, id, copy));
        }
        sim.run(|_| Ok(())).unwrap();
        sim.trace_hash()
    };
    assert_eq!(trace(5), trace(5));
    assert_ne!(trace(5), trace(6));
}

/// The MVBA instance tag separates everything: a certificate of one instance's proposal is not
/// one of another's.
#[test]
fn proposal_certificates_are_bound_to_the_instance() {
    let keys = insecure_keys(4);
    let certificate = certificate_on(&keys.cbc, b"instance a", NodeId(1), b"ok v");
    let verify = |instance: &[u8], proposer: NodeId| {
        cbc::verify_certificate(
            &*keys.cbc[2],
            &proposal_tag(instance, proposer),
            proposer,
            b"ok v",
            &certificate,
        )
    };
    assert!(verify(b"instance a", NodeId(1)));
    assert!(!verify(b"instance b", NodeId(1)));
    assert!(!verify(b"instance a", NodeId(2)));
    assert_ne!(
        mvba::commit_tag(b"instance a", NodeId(1)),
        proposal_tag(b"instance a", NodeId(1))
    );
}
