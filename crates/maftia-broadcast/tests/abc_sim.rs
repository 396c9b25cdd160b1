//! Atomic broadcast under the deterministic simulator.
//!
//! Every (n, strategy) pair runs over a seed sweep ([`check_seeds`]; `MAFTIA_SIM_SEEDS=k` for a
//! soak, `MAFTIA_SIM_SEED=s` to replay one seed). Each honest node submits a few requests of its
//! own up front, some requests are submitted at two honest nodes (deduplication), and the
//! Byzantine nodes submit requests of their own (twin copies different ones, so their batches
//! conflict). The run goes until the network is quiescent. Checked after every event:
//! - **total order and agreement**: every honest node's `i`-th delivery is the round-`i`
//!   delivery, and all honest nodes' deliveries agree (each sequence is a prefix of another);
//! - **integrity**: no request is delivered twice, and every delivered request was submitted
//!   at an honest node or comes from a Byzantine node (requests tagged `byz`);
//! - honest nodes never accuse honest nodes, and `stored_messages` stays within its documented
//!   bound (checked every 16 events in the sweeps, every event in the FloodFuture test).
//!
//! At quiescence: **validity** (every request submitted at an honest node is delivered by every
//! honest node, and every honest pending queue is empty) and **termination** (all honest nodes
//! delivered the same rounds), and an honest run records no fault at all. Quiescence itself
//! shows the idle rule: nodes with nothing pending start no further rounds.
//!
//! The big sweeps use the fast, insecure threshold signer of `maftia_sim::insecure_crypto` and
//! real Ed25519 identities dealt from the seed; a few seeds run with real BLS key sets.
mod support;

use maftia_broadcast::abc::{
    batch_message, Abc, AbcFault, AbcParams, Message, BATCH_SIGNATURE_CONTEXT, ROUND_WINDOW,
};
use maftia_broadcast::ThresholdKeys;
use maftia_broadcast::{cbc, mvba};
use maftia_core::NodeId;
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_crypto::threshold::ThresholdSigner;
use maftia_sim::{byzantine_nodes, check_seeds, Adversary, Sim, SimConfig, SimFailure, Strategy};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use support::{
    assert_evidence_seen, bls_keys, check_clean_evidence, config, fault_kinds, faulty_set,
    honest_requests, insecure_keys, submit_inputs, tally_evidence, DeliveryLog, FaultCursor,
    StoredCheck,
};

/// Seeds per (n, strategy) in the default run with the insecure signer.
const SEEDS: u64 = 200;
/// Seeds per configuration with real BLS key sets.
const BLS_SEEDS: u64 = 2;
/// Requests each honest node submits on its own.
const REQUESTS_PER_NODE: usize = 3;
/// Requests submitted at two honest nodes each.
const SHARED_REQUESTS: usize = 2;

/// Small batches: a node with its own and shared requests needs at least two rounds.
fn params() -> AbcParams {
    AbcParams {
        batch_size: 4,
        max_batch_bytes: 256,
        max_request_size: 64,
        max_pending: 16,
        dedup_rounds: 16,
    }
}

/// Real Ed25519 identities, dealt deterministically from the seed.
fn identities(n: usize, seed: u64) -> (Vec<IdentityKey>, Arc<Vec<IdentityPublicKey>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6964_656e_7469_7479);
    let keys: Vec<IdentityKey> = (0..n).map(|_| IdentityKey::generate(&mut rng)).collect();
    let registry = Arc::new(keys.iter().map(IdentityKey::public).collect());
    (keys, registry)
}

fn instance(n: usize, seed: u64) -> Vec<u8> {
    format!("abc-sim/n {n}/seed {seed}").into_bytes()
}

/// The protocol-specific adversary.
///
/// `corrupt` (for [`Strategy::InvalidShares`] nodes): replaces a batch with junk signed by a
/// Byzantine identity (valid if it is the sender's, an invalid signature otherwise) or with an
/// oversized batch, and moves MVBA messages to a neighbouring round's instance, where no
/// share, certificate or proposal of theirs is valid. `far_future` (for
/// [`Strategy::FloodFuture`] nodes): batches and MVBA messages for rounds far beyond any
/// node's window, plus garbage-signed batches for early rounds.
struct AbcAdversary {
    instance: Vec<u8>,
    /// The Byzantine nodes' identity keys.
    byzantine_keys: Vec<(NodeId, IdentityKey)>,
    junk: u64,
}

impl AbcAdversary {
    fn junk_batch<Sh, Si>(&mut self, round: u64, rng: &mut dyn RngCore) -> Message<Sh, Si> {
        self.junk += 1;
        let requests = vec![format!("byz junk {} {}", self.junk, rng.next_u32()).into_bytes()];
        let (signer, key) =
            &self.byzantine_keys[rng.next_u32() as usize % self.byzantine_keys.len()];
        let message = batch_message(&self.instance, round, *signer, &requests);
        Message::Batch {
            round,
            requests,
            signature: key.sign(BATCH_SIGNATURE_CONTEXT, &message),
        }
    }
}

impl<S: ThresholdSigner> Adversary<Abc<S>> for AbcAdversary {
    fn corrupt(
        &mut self,
        message: &Message<S::Share, S::Signature>,
        rng: &mut dyn RngCore,
    ) -> Option<Message<S::Share, S::Signature>> {
        match message {
            Message::Batch { round, .. } => match rng.next_u32() % 4 {
                0 => None,
                1 => Some(Message::Batch {
                    round: *round,
                    requests: vec![b"byz oversized".to_vec(); params().batch_size + 1],
                    signature: self.byzantine_keys[0].1.sign(BATCH_SIGNATURE_CONTEXT, b"x"),
                }),
                _ => Some(self.junk_batch(*round, rng)),
            },
            Message::Mvba { round, message } => {
                if rng.next_u32() & 1 == 0 {
                    return None;
                }
                let shifted = if rng.next_u32() & 1 == 0 {
                    round.saturating_add(1)
                } else {
                    round.saturating_sub(1)
                };
                Some(Message::Mvba {
                    round: shifted,
                    message: message.clone(),
                })
            }
        }
    }

    fn far_future(&mut self, rng: &mut dyn RngCore) -> Vec<Message<S::Share, S::Signature>> {
        let far = 1_000 + u64::from(rng.next_u32() % 1_000_000);
        let mut messages = vec![
            self.junk_batch(far, rng),
            self.junk_batch(u64::MAX - u64::from(rng.next_u32() % 8), rng),
            // Inside the window of a node at round 0, but signed over the wrong message.
            Message::Batch {
                round: 1 + u64::from(rng.next_u32()) % ROUND_WINDOW,
                requests: vec![b"byz bad signature".to_vec()],
                signature: self.byzantine_keys[0]
                    .1
                    .sign(BATCH_SIGNATURE_CONTEXT, b"other"),
            },
            Message::Mvba {
                round: far,
                message: mvba::Message::Proposal(
                    NodeId(0),
                    cbc::Message::Send(b"byz far proposal".to_vec()),
                ),
            },
            Message::Mvba {
                round: far.saturating_mul(1 + u64::from(rng.next_u32() % 1000)),
                message: mvba::Message::Vote {
                    attempt: rng.next_u32(),
                    vote: mvba::Vote::Zero,
                },
            },
        ];
        // Rotate: the simulator sends only the first FLOOD_PER_EVENT messages.
        let rotate = rng.next_u32() as usize % messages.len();
        messages.rotate_left(rotate);
        messages
    }
}

/// What one run looked like, for checks across seeds.
#[derive(Debug, Default)]
struct RunReport {
    rounds: u64,
    delivered: usize,
    /// Requests of Byzantine origin among them.
    byzantine_delivered: usize,
    max_stored: usize,
    faults: usize,
    /// Evidence honest nodes recorded, by kind.
    fault_kinds: BTreeMap<&'static str, usize>,
}

fn fault_kind(fault: &AbcFault) -> &'static str {
    match fault {
        AbcFault::NotAMember => "NotAMember",
        AbcFault::FutureRound { .. } => "FutureRound",
        AbcFault::BatchOutOfLimits { .. } => "BatchOutOfLimits",
        AbcFault::InvalidBatchSignature { .. } => "InvalidBatchSignature",
        AbcFault::EquivocatingBatch { .. } => "EquivocatingBatch",
        AbcFault::Mvba { .. } => "Mvba",
    }
}

/// One simulated ABC group: `strategy` at `f` Byzantine nodes (none if `None`).
fn run_case<S: ThresholdSigner + 'static>(
    keys: &[ThresholdKeys<S>],
    strategy: Option<&Strategy>,
    seed: u64,
    stored: StoredCheck,
) -> Result<RunReport, SimFailure> {
    let n = keys.len();
    let group = config(n);
    let (byzantine, honest) = faulty_set(n, strategy, seed);
    let (identity_keys, registry) = identities(n, seed);
    let instance = instance(n, seed);

    // Requests: each honest node's own, shared ones at two honest nodes, Byzantine copies' own.
    let (mut inputs, submitted_at_honest) =
        honest_requests(seed, &honest, REQUESTS_PER_NODE, SHARED_REQUESTS);
    // Twin copies get different requests, so their batches conflict (equivocation evidence).
    // An equivocating node's copies talk to disjoint halves, where conflicting batches cannot be
    // noticed; they share one request (different ones would only add rounds).
    for (id, strategy) in &byzantine {
        let copies = (0..strategy.copies())
            .map(|copy| {
                let copy = if *strategy == Strategy::Twins {
                    copy
                } else {
                    0
                };
                vec![format!("byz {id} copy {copy}").into_bytes()]
            })
            .collect();
        inputs.insert(*id, copies);
    }

    let adversary = AbcAdversary {
        instance: instance.clone(),
        byzantine_keys: byzantine
            .keys()
            .map(|id| (*id, identity_keys[id.index()].clone()))
            .chain(std::iter::once((
                NodeId(0),
                IdentityKey::from_bytes(&[7; 32]), // a key nobody registered
            )))
            .collect(),
        junk: 0,
    };
    let factory_keys = keys.to_vec();
    let factory_instance = instance.clone();
    let factory_registry = registry.clone();
    let mut sim = Sim::new(
        SimConfig::new(n, seed),
        byzantine.clone(),
        move |id: NodeId, _copy| {
            Abc::new(
                group,
                id,
                factory_instance.clone(),
                factory_keys[id.index()].clone(),
                identity_keys[id.index()].clone(),
                factory_registry.clone(),
                params(),
            )
            .unwrap()
        },
        Box::new(adversary),
    );
    // A copy with fewer requests re-submits its last one (refused as AlreadyPending).
    submit_inputs(&mut sim, &inputs, &byzantine)?;

    // The agreed sequence of deliveries so far, and each honest node's checked prefix.
    let mut log = DeliveryLog::new("round");
    let mut faults = FaultCursor::default();
    let mut max_stored = 0;
    sim.run(|state| {
        for id in state.honest() {
            log.check_node(id, state.outputs(id), &submitted_at_honest)?;
        }
        stored.check(state, Abc::stored_messages, &mut max_stored)?;
        faults.check_new(state)
    })?;

    log.check_quiescence(&sim, &submitted_at_honest, Abc::pending)?;
    check_clean_evidence(&sim, strategy.is_none())?;
    let state = sim.state();
    Ok(RunReport {
        rounds: log.agreed.len() as u64,
        delivered: log.delivered_once.len(),
        byzantine_delivered: log.byzantine_delivered(),
        max_stored,
        faults: state.faults().len(),
        fault_kinds: fault_kinds(state, fault_kind),
    })
}

/// The documented bound on one node's stored messages, checked every `every` events (a full
/// check costs a walk over every MVBA child of every node).
fn stored_check<S: ThresholdSigner>(keys: &[ThresholdKeys<S>], every: u64) -> StoredCheck {
    StoredCheck {
        bound: stored_bound(keys),
        every,
    }
}

/// The bound on one node's stored messages ([`Abc::stored_messages_bound`]).
fn stored_bound<S: ThresholdSigner>(keys: &[ThresholdKeys<S>]) -> usize {
    let n = keys.len();
    let (identity_keys, registry) = identities(n, 0);
    let node = Abc::new(
        config(n),
        NodeId(0),
        b"bound".to_vec(),
        keys[0].clone(),
        identity_keys[0].clone(),
        registry,
        params(),
    )
    .unwrap();
    node.stored_messages_bound(maftia_broadcast::mvba::stored_messages_bound(&config(n)))
}

/// Each of `strategies` at `f` nodes.
fn sweep_strategies<S: ThresholdSigner + 'static>(
    keys: &[ThresholdKeys<S>],
    strategies: &[Strategy],
    seeds: u64,
) {
    let stored = stored_check(keys, 16);
    for strategy in strategies {
        check_seeds(seeds, |seed| {
            run_case(keys, Some(strategy), seed, stored).map(drop)
        });
    }
}

/// Every strategy at `f` nodes.
fn sweep<S: ThresholdSigner + 'static>(keys: &[ThresholdKeys<S>], seeds: u64) {
    sweep_strategies(keys, &Strategy::all(), seeds);
}

#[test]
fn sweep_n4_every_strategy() {
    sweep(&insecure_keys(4, "abc sim"), SEEDS);
}

#[test]
fn sweep_n7_every_strategy() {
    sweep(&insecure_keys(7, "abc sim"), SEEDS);
}

// n = 10 is the slowest sweep (Ed25519 verification dominates): split in two tests so that
// the test harness runs the halves in parallel.
#[test]
fn sweep_n10_first_half_of_the_strategies() {
    sweep_strategies(&insecure_keys(10, "abc sim"), &Strategy::all()[..4], SEEDS);
}

#[test]
fn sweep_n10_second_half_of_the_strategies() {
    sweep_strategies(&insecure_keys(10, "abc sim"), &Strategy::all()[4..], SEEDS);
}

/// Seeds per strategy of the n = 16 sweep in the default run: a cheap smoke test of the largest
/// group (about 0.65 s of CPU per seed for all strategies, release). `MAFTIA_SIM_SEEDS=k` turns
/// it into a soak of `k` seeds per strategy:
/// `MAFTIA_SIM_SEEDS=1500 cargo test --release -p maftia-broadcast --test abc_sim --
/// sweep_n16_every_strategy --exact`.
const N16_SEEDS: u64 = 4;

/// n = 16, f = 5: every strategy at five nodes.
#[test]
fn sweep_n16_every_strategy() {
    sweep(&insecure_keys(16, "abc sim"), N16_SEEDS);
}

#[test]
fn honest_runs_deliver_everything_with_no_faults() {
    for n in [1, 4, 7] {
        let keys = insecure_keys(n, "abc sim");
        let stored = stored_check(&keys, 1);
        let mut rounds = Vec::new();
        check_seeds(50, |seed| {
            let report = run_case(&keys, None, seed, stored)?;
            let expected = n * REQUESTS_PER_NODE + SHARED_REQUESTS;
            assert_eq!(report.delivered, expected, "seed {seed}");
            assert_eq!(report.faults, 0);
            rounds.push(report.rounds);
            Ok(())
        });
        // A node with 3 + 2 requests and batches of 4: at least two rounds, and not endless ones.
        if !rounds.is_empty() {
            assert!(rounds.iter().all(|r| *r >= 2), "n = {n}: rounds {rounds:?}");
            let mean = rounds.iter().sum::<u64>() as f64 / rounds.len() as f64;
            eprintln!(
                "abc honest n = {n}: mean rounds {mean:.2}, max {:?}",
                rounds.iter().max()
            );
        }
    }
}

/// FloodFuture nodes send far-future rounds on every event: the receivers keep no state for
/// them (the stored-message bound holds at every event, checked in `run_case`) and report them.
#[test]
fn far_future_floods_are_reported_and_bounded() {
    for n in [4, 7] {
        let keys = insecure_keys(n, "abc sim");
        let stored = stored_check(&keys, 1);
        let bound = stored.bound;
        let (mut runs, mut future_faults, mut max_stored) = (0, 0, 0);
        check_seeds(50, |seed| {
            let report = run_case(&keys, Some(&Strategy::FloodFuture), seed, stored)?;
            runs += 1;
            max_stored = max_stored.max(report.max_stored);
            future_faults += report.fault_kinds.get("FutureRound").copied().unwrap_or(0);
            Ok(())
        });
        eprintln!(
            "abc flood n = {n}: max stored {max_stored} (bound {bound}), {future_faults} \
             far-future messages reported"
        );
        assert!(max_stored <= bound);
        // Every FloodFuture node floods on its first events: the flood did reach honest nodes.
        assert!(
            future_faults >= runs,
            "{future_faults} FutureRound faults in {runs} runs"
        );
    }
}

/// The adversary's batches are caught (out of limits, bad signatures, equivocating twins) and
/// its validly signed junk is ordered like any request (integrity allows it; `run_case` checks
/// total order and agreement on it).
#[test]
fn byzantine_batches_are_reported_or_ordered() {
    let keys = insecure_keys(4, "abc sim");
    let stored = stored_check(&keys, 16);
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    for strategy in [
        Strategy::InvalidShares,
        Strategy::Equivocate,
        Strategy::Twins,
    ] {
        check_seeds(50, |seed| {
            let report = run_case(&keys, Some(&strategy), seed, stored)?;
            tally_evidence(
                &mut totals,
                &strategy,
                report.fault_kinds,
                report.byzantine_delivered,
            );
            Ok(())
        });
    }
    assert_evidence_seen(
        "abc byzantine batches",
        &totals,
        &[
            "InvalidShares BatchOutOfLimits",
            "InvalidShares InvalidBatchSignature",
            "InvalidShares Mvba",
            "InvalidShares byzantine requests",
            "Equivocate byzantine requests",
            "Twins EquivocatingBatch",
            "Twins byzantine requests",
        ],
    );
}

/// Every strategy with the real BLS threshold signatures, on a few seeds.
#[test]
fn bls_sweep_n4() {
    let keys = bls_keys(4, 0xabc);
    let stored = stored_check(&keys, 1);
    check_seeds(BLS_SEEDS, |seed| {
        run_case(&keys, None, seed, stored).map(drop)
    });
    sweep(&keys, BLS_SEEDS);
}

/// Same seed, same run.
#[test]
fn runs_are_reproducible() {
    let keys = insecure_keys(4, "abc sim");
    let trace = |seed: u64| {
        let (identity_keys, registry) = identities(4, seed);
        let factory_keys = keys.clone();
        let mut sim = Sim::new(
            SimConfig::new(4, seed),
            byzantine_nodes(4, 1, &Strategy::Replay, seed),
            move |id: NodeId, _| {
                Abc::new(
                    config(4),
                    id,
                    b"repro".to_vec(),
                    factory_keys[id.index()].clone(),
                    identity_keys[id.index()].clone(),
                    registry.clone(),
                    params(),
                )
                .unwrap()
            },
            Box::new(maftia_sim::NoHooks),
        );
        for id in NodeId::all(4) {
            let _ = sim.input(id, |_| format!("r{id}").into_bytes());
        }
        sim.run(|_| Ok(())).unwrap();
        sim.trace_hash()
    };
    assert_eq!(trace(5), trace(5));
    assert_ne!(trace(5), trace(6));
}
