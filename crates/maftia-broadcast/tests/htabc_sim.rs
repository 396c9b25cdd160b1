//! High-throughput atomic broadcast (Dumbo-NG lanes + MVBA epochs) under the deterministic
//! simulator.
//!
//! Every (n, strategy) pair runs over a seed sweep ([`check_seeds`]; `MAFTIA_SIM_SEEDS=k` for a
//! soak, `MAFTIA_SIM_SEED=s` to replay one seed). Each honest node submits a few requests of its
//! own up front, some requests are submitted at two honest nodes (deduplication across lanes),
//! and the Byzantine nodes submit requests of their own (twin copies different ones, so their
//! lane proposals conflict). Small batches and a lane window of 2 make lanes run several slots
//! and hit the backpressure. The run goes until the network is quiescent. Checked after every
//! event:
//! - **total order and agreement**: every honest node's `i`-th delivery is the epoch-`i`
//!   delivery, and all honest nodes' deliveries agree;
//! - **integrity**: no request is delivered twice, and every delivered request was submitted at
//!   an honest node or comes from a Byzantine node (requests tagged `byz`);
//! - **one batch per slot**: no two honest nodes ever know different certified digests for one
//!   lane slot (equivocating owners included);
//! - honest nodes never accuse honest nodes, and `stored_messages` stays within its documented
//!   bound.
//!
//! At quiescence: **validity** (every request submitted at an honest node is delivered, every
//! honest pending count is zero), **termination** (all honest nodes delivered the same epochs),
//! and an honest run records no fault at all. Quiescence itself shows the idle rule.
//!
//! The big sweeps use the fast, insecure threshold signer of `maftia_sim::insecure_crypto`; a
//! few seeds run with real BLS key sets.
mod support;

use maftia_broadcast::abc::{AbcDelivery, AbcParams};
use maftia_broadcast::htabc::{
    batch_digest, slot_message, HtAbc, HtAbcFault, HtParams, HtStats, Message, EPOCH_WINDOW,
    GENESIS_DIGEST,
};
use maftia_broadcast::{cbc, mvba, ThresholdKeys};
use maftia_core::{NodeId, Protocol};
use maftia_crypto::hash::Digest;
use maftia_crypto::threshold::ThresholdSigner;
use maftia_sim::{byzantine_nodes, check_seeds, Adversary, Sim, SimConfig, SimFailure, Strategy};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
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
const REQUESTS_PER_NODE: usize = 4;
/// Requests submitted at two honest nodes each.
const SHARED_REQUESTS: usize = 2;

/// Batches of two: a node with 4–6 requests fills three slots of its lane.
fn params() -> AbcParams {
    AbcParams {
        batch_size: 2,
        max_batch_bytes: 256,
        max_request_size: 64,
        max_pending: 16,
        dedup_rounds: 16,
    }
}

/// A lane window of 2: lanes run into the backpressure.
fn ht() -> HtParams {
    HtParams {
        lane_window: 2,
        retained_slots: 16,
        max_fetches: 8,
    }
}

fn instance(n: usize, seed: u64) -> Vec<u8> {
    format!("htabc-sim/n {n}/seed {seed}").into_bytes()
}

type Msg<S> = Message<<S as ThresholdSigner>::Share, <S as ThresholdSigner>::Signature>;

/// A valid quorum signature on an unrelated message: a well-formed certificate that verifies
/// for no slot.
fn junk_certificate<S: ThresholdSigner>(keys: &[ThresholdKeys<S>]) -> S::Signature {
    let message = b"htabc sim junk certificate";
    let shares: BTreeMap<usize, S::Share> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i, k.quorum.sign_share(message)))
        .collect();
    keys[0].quorum.combine(message, &shares).unwrap().signature
}

/// The protocol-specific adversary.
///
/// `corrupt` (for [`Strategy::InvalidShares`] nodes): votes get a share on another message,
/// proposals an invalid predecessor certificate or too many requests, `Certified` messages a
/// wrong digest, fetch answers other requests, fetches an unknown lane, and MVBA messages move
/// to a neighbouring epoch. `far_future` (for [`Strategy::FloodFuture`] nodes): MVBA messages
/// for far epochs, proposals and certificates for far slots, junk fetch answers.
struct HtAdversary<S: ThresholdSigner> {
    instance: Vec<u8>,
    /// A Byzantine node's quorum signer (for shares on the wrong message).
    byzantine_quorum: Option<std::sync::Arc<S>>,
    certificate: S::Signature,
    junk: u64,
}

impl<S: ThresholdSigner + Send + Sync + 'static> Adversary<HtAbc<S>> for HtAdversary<S> {
    fn corrupt(&mut self, message: &Msg<S>, rng: &mut dyn RngCore) -> Option<Msg<S>> {
        if rng.next_u32() % 4 == 0 {
            return None;
        }
        self.junk += 1;
        match message {
            Message::Vote { slot, digest, .. } => {
                let signer = self.byzantine_quorum.as_ref()?;
                Some(Message::Vote {
                    slot: *slot,
                    digest: *digest,
                    share: signer.sign_share(&self.junk.to_le_bytes()),
                })
            }
            Message::Proposal {
                slot,
                prev_digest,
                requests,
                ..
            } => Some(if rng.next_u32() & 1 == 0 {
                Message::Proposal {
                    slot: slot + 1,
                    prev_digest: *prev_digest,
                    prev_certificate: Some(self.certificate.clone()),
                    requests: requests.clone(),
                }
            } else {
                Message::Proposal {
                    slot: *slot,
                    prev_digest: *prev_digest,
                    prev_certificate: None,
                    requests: vec![b"byz oversized".to_vec(); params().batch_size + 1],
                }
            }),
            Message::Certified {
                slot, certificate, ..
            } => Some(Message::Certified {
                slot: *slot,
                digest: [self.junk as u8; 32],
                certificate: certificate.clone(),
            }),
            Message::Batch {
                lane,
                slot,
                prev_digest,
                ..
            } => Some(Message::Batch {
                lane: *lane,
                slot: *slot,
                prev_digest: *prev_digest,
                requests: vec![format!("byz forged {}", self.junk).into_bytes()],
            }),
            Message::Fetch { slot, digest, .. } => Some(Message::Fetch {
                lane: NodeId(u16::MAX - (self.junk % 8) as u16),
                slot: *slot,
                digest: *digest,
            }),
            Message::Mvba { epoch, message } => Some(Message::Mvba {
                epoch: if rng.next_u32() & 1 == 0 {
                    epoch.saturating_add(1)
                } else {
                    epoch.saturating_sub(1)
                },
                message: message.clone(),
            }),
        }
    }

    fn far_future(&mut self, rng: &mut dyn RngCore) -> Vec<Msg<S>> {
        self.junk += 1;
        let far = 1_000 + u64::from(rng.next_u32() % 1_000_000);
        let mut messages = vec![
            Message::Mvba {
                epoch: far,
                message: mvba::Message::Proposal(
                    NodeId(0),
                    cbc::Message::Send(b"byz far proposal".to_vec()),
                ),
            },
            Message::Mvba {
                epoch: u64::MAX - u64::from(rng.next_u32() % 8),
                message: mvba::Message::Vote {
                    attempt: rng.next_u32(),
                    vote: mvba::Vote::Zero,
                },
            },
            Message::Proposal {
                slot: far,
                prev_digest: [1; 32],
                prev_certificate: Some(self.certificate.clone()),
                requests: vec![format!("byz far {}", self.junk).into_bytes()],
            },
            Message::Certified {
                slot: far.saturating_mul(1 + u64::from(rng.next_u32() % 1000)),
                digest: [2; 32],
                certificate: self.certificate.clone(),
            },
            Message::Batch {
                lane: NodeId(0),
                slot: far,
                prev_digest: [3; 32],
                requests: vec![b"byz unsolicited".to_vec()],
            },
            // A not-yet-started epoch inside the window: these wait, at most a few per sender.
            Message::Mvba {
                epoch: 1 + u64::from(rng.next_u32()) % EPOCH_WINDOW,
                message: mvba::Message::Vote {
                    attempt: rng.next_u32() % 4,
                    vote: mvba::Vote::Zero,
                },
            },
        ];
        let _ = &self.instance;
        // Rotate: the simulator sends only the first FLOOD_PER_EVENT messages.
        let rotate = rng.next_u32() as usize % messages.len();
        messages.rotate_left(rotate);
        messages
    }
}

/// What one run looked like, for checks across seeds.
#[derive(Debug, Default)]
struct RunReport {
    epochs: u64,
    delivered: usize,
    byzantine_delivered: usize,
    max_stored: usize,
    faults: usize,
    events: u64,
    frames: u64,
    fault_kinds: BTreeMap<&'static str, usize>,
    /// Honest nodes' counters, summed.
    stats: HtStats,
}

fn add(total: &mut HtStats, more: HtStats) {
    total.batches_proposed += more.batches_proposed;
    total.votes_sent += more.votes_sent;
    total.proposals_deferred += more.proposals_deferred;
    total.fetches_sent += more.fetches_sent;
    total.batches_fetched += more.batches_fetched;
    total.certificates_verified += more.certificates_verified;
}

fn fault_kind(fault: &HtAbcFault) -> &'static str {
    match fault {
        HtAbcFault::NotAMember => "NotAMember",
        HtAbcFault::UnknownLane { .. } => "UnknownLane",
        HtAbcFault::FutureEpoch { .. } => "FutureEpoch",
        HtAbcFault::FutureSlot { .. } => "FutureSlot",
        HtAbcFault::BatchOutOfLimits { .. } => "BatchOutOfLimits",
        HtAbcFault::MalformedProposal { .. } => "MalformedProposal",
        HtAbcFault::InvalidCertificate { .. } => "InvalidCertificate",
        HtAbcFault::EquivocatingProposal { .. } => "EquivocatingProposal",
        HtAbcFault::UnexpectedVote { .. } => "UnexpectedVote",
        HtAbcFault::InvalidVoteShare { .. } => "InvalidVoteShare",
        HtAbcFault::InvalidBatchAnswer { .. } => "InvalidBatchAnswer",
        HtAbcFault::TooManyEarlyMessages { .. } => "TooManyEarlyMessages",
        HtAbcFault::Mvba { .. } => "Mvba",
    }
}

/// One simulated group: `strategy` at `f` Byzantine nodes (none if `None`).
fn run_case<S: ThresholdSigner + Send + Sync + 'static>(
    keys: &[ThresholdKeys<S>],
    strategy: Option<&Strategy>,
    seed: u64,
    stored: StoredCheck,
) -> Result<RunReport, SimFailure> {
    let n = keys.len();
    let group = config(n);
    let (byzantine, honest) = faulty_set(n, strategy, seed);
    let instance = instance(n, seed);

    let (mut inputs, submitted_at_honest) =
        honest_requests(seed, &honest, REQUESTS_PER_NODE, SHARED_REQUESTS);
    // Twin copies get different requests, so their lane proposals conflict.
    for (id, strategy) in &byzantine {
        let copies = (0..strategy.copies())
            .map(|copy| {
                (0..3)
                    .map(|k| format!("byz {id} copy {copy} request {k}").into_bytes())
                    .collect()
            })
            .collect();
        inputs.insert(*id, copies);
    }

    let adversary = HtAdversary::<S> {
        instance: instance.clone(),
        byzantine_quorum: byzantine
            .keys()
            .next()
            .map(|id| keys[id.index()].quorum.clone()),
        certificate: junk_certificate(keys),
        junk: 0,
    };
    let factory_keys = keys.to_vec();
    let factory_instance = instance.clone();
    let mut sim = Sim::new(
        SimConfig::new(n, seed),
        byzantine.clone(),
        move |id: NodeId, _copy| {
            HtAbc::new(
                group,
                id,
                factory_instance.clone(),
                factory_keys[id.index()].clone(),
                params(),
                ht(),
            )
            .unwrap()
        },
        Box::new(adversary),
    );
    submit_inputs(&mut sim, &inputs, &byzantine)?;

    let mut log = DeliveryLog::new("epoch");
    let mut certified: BTreeMap<(NodeId, u64), Digest> = BTreeMap::new();
    let mut faults = FaultCursor::default();
    let mut max_stored = 0;
    sim.run(|state| {
        for id in state.honest() {
            log.check_node(id, state.outputs(id), &submitted_at_honest)?;
            let node = state.node(id);
            for lane in NodeId::all(n) {
                if let Some((slot, digest)) = node.latest_certified(lane) {
                    let first = *certified.entry((lane, slot)).or_insert(digest);
                    if first != digest {
                        return Err(format!(
                            "two batches certified for {lane}'s slot {slot}: {first:?}, {digest:?}"
                        ));
                    }
                }
            }
        }
        stored.check(state, HtAbc::stored_messages, &mut max_stored)?;
        faults.check_new(state)
    })?;

    log.check_quiescence(&sim, &submitted_at_honest, HtAbc::pending)?;
    check_clean_evidence(&sim, strategy.is_none())?;
    let state = sim.state();
    let fault_kinds = fault_kinds(state, fault_kind);
    let mut stats = HtStats::default();
    for id in state.honest() {
        add(&mut stats, state.node(id).stats());
    }
    Ok(RunReport {
        stats,
        epochs: log.agreed.len() as u64,
        delivered: log.delivered_once.len(),
        byzantine_delivered: log.byzantine_delivered(),
        max_stored,
        faults: state.faults().len(),
        events: state.event_count(),
        frames: NodeId::all(n).map(|id| state.frames_sent(id)).sum(),
        fault_kinds,
    })
}

/// The documented bound on one node's stored messages ([`HtAbc::stored_messages_bound`]).
fn stored_check<S: ThresholdSigner + Send + Sync + 'static>(
    keys: &[ThresholdKeys<S>],
    every: u64,
) -> StoredCheck {
    let n = keys.len();
    let node = HtAbc::new(
        config(n),
        NodeId(0),
        b"bound".to_vec(),
        keys[0].clone(),
        params(),
        ht(),
    )
    .unwrap();
    StoredCheck {
        bound: node.stored_messages_bound(mvba::stored_messages_bound(&config(n))),
        every,
    }
}

fn sweep_strategies<S: ThresholdSigner + Send + Sync + 'static>(
    keys: &[ThresholdKeys<S>],
    strategies: &[Strategy],
    seeds: u64,
) {
    let stored = stored_check(keys, 16);
    for strategy in strategies {
        let (mut runs, mut epochs, mut events) = (0u64, 0u64, 0u64);
        let mut stats = HtStats::default();
        check_seeds(seeds, |seed| {
            let report = run_case(keys, Some(strategy), seed, stored)?;
            runs += 1;
            epochs += report.epochs;
            events += report.events;
            add(&mut stats, report.stats);
            Ok(())
        });
        if runs > 0 {
            eprintln!(
                "htabc n = {} {strategy:?}: {runs} runs, mean epochs {:.2}, mean events {:.0}, \
                 honest totals {stats:?}",
                keys.len(),
                epochs as f64 / runs as f64,
                events as f64 / runs as f64
            );
        }
    }
}

fn sweep<S: ThresholdSigner + Send + Sync + 'static>(keys: &[ThresholdKeys<S>], seeds: u64) {
    sweep_strategies(keys, &Strategy::all(), seeds);
}

#[test]
fn sweep_n4_every_strategy() {
    sweep(&insecure_keys(4, "htabc sim"), SEEDS);
}

#[test]
fn sweep_n7_every_strategy() {
    sweep(&insecure_keys(7, "htabc sim"), SEEDS);
}

#[test]
fn sweep_n10_first_half_of_the_strategies() {
    sweep_strategies(
        &insecure_keys(10, "htabc sim"),
        &Strategy::all()[..4],
        SEEDS,
    );
}

#[test]
fn sweep_n10_second_half_of_the_strategies() {
    sweep_strategies(
        &insecure_keys(10, "htabc sim"),
        &Strategy::all()[4..],
        SEEDS,
    );
}

#[test]
fn honest_runs_deliver_everything_with_no_faults() {
    for n in [1, 4, 7] {
        let keys = insecure_keys(n, "htabc sim");
        let stored = stored_check(&keys, 1);
        let (mut epochs, mut events, mut frames) = (Vec::new(), 0u64, 0u64);
        check_seeds(50, |seed| {
            let report = run_case(&keys, None, seed, stored)?;
            let expected = n * REQUESTS_PER_NODE + SHARED_REQUESTS;
            assert_eq!(report.delivered, expected, "seed {seed}");
            assert_eq!(report.faults, 0);
            epochs.push(report.epochs);
            events += report.events;
            frames += report.frames;
            Ok(())
        });
        if !epochs.is_empty() {
            let runs = epochs.len() as f64;
            eprintln!(
                "htabc honest n = {n}: mean epochs {:.2} (max {:?}), mean events {:.0}, mean \
                 frames {:.0}",
                epochs.iter().sum::<u64>() as f64 / runs,
                epochs.iter().max(),
                events as f64 / runs,
                frames as f64 / runs
            );
            assert!(epochs.iter().all(|e| *e >= 1));
        }
    }
}

/// The sweeps exercise the lane machinery: the window of 2 defers proposals, nodes that did
/// not vote for a slot fetch its batch, and each certificate is verified about once per node.
#[test]
fn lanes_hit_backpressure_and_fetch() {
    let keys = insecure_keys(4, "htabc sim");
    let stored = stored_check(&keys, 16);
    let mut total = HtStats::default();
    let mut runs = 0u64;
    for strategy in [Strategy::Silent, Strategy::Equivocate, Strategy::Twins] {
        check_seeds(30, |seed| {
            let report = run_case(&keys, Some(&strategy), seed, stored)?;
            add(&mut total, report.stats);
            runs += 1;
            Ok(())
        });
    }
    eprintln!("htabc lanes over {runs} runs: {total:?}");
    if runs < 90 {
        return; // a single replayed seed of another test
    }
    assert!(total.proposals_deferred > 0, "{total:?}");
    assert!(total.fetches_sent > 0, "{total:?}");
    assert!(total.batches_fetched > 0, "{total:?}");
    // Three honest nodes learn each honest batch's certificate; verification is cached, so
    // they verify well under a few times per batch proposed.
    assert!(
        total.certificates_verified <= 4 * 3 * total.batches_proposed,
        "{total:?}"
    );
}

/// FloodFuture nodes send far-future epochs and slots on every event: the receivers keep no
/// state for them (the stored-message bound holds at every event) and report them.
#[test]
fn far_future_floods_are_reported_and_bounded() {
    for n in [4, 7] {
        let keys = insecure_keys(n, "htabc sim");
        let stored = stored_check(&keys, 1);
        let bound = stored.bound;
        let (mut runs, mut future_faults, mut max_stored) = (0, 0, 0);
        check_seeds(50, |seed| {
            let report = run_case(&keys, Some(&Strategy::FloodFuture), seed, stored)?;
            runs += 1;
            max_stored = max_stored.max(report.max_stored);
            future_faults += report.fault_kinds.get("FutureEpoch").copied().unwrap_or(0)
                + report.fault_kinds.get("FutureSlot").copied().unwrap_or(0);
            Ok(())
        });
        eprintln!(
            "htabc flood n = {n}: max stored {max_stored} (bound {bound}), {future_faults} \
             far-future messages reported"
        );
        assert!(max_stored <= bound);
        assert!(
            future_faults >= runs,
            "{future_faults} far-future faults in {runs} runs"
        );
    }
}

/// The adversary's corrupted messages are caught and reported.
#[test]
fn byzantine_messages_are_reported() {
    let keys = insecure_keys(4, "htabc sim");
    let stored = stored_check(&keys, 16);
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    for strategy in [Strategy::InvalidShares, Strategy::Twins] {
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
        "htabc byzantine messages",
        &totals,
        &[
            "InvalidShares InvalidVoteShare",
            "InvalidShares InvalidCertificate",
            "InvalidShares BatchOutOfLimits",
            "InvalidShares Mvba",
            "Twins EquivocatingProposal",
            "Twins byzantine requests",
        ],
    );
}

/// Every strategy with the real BLS threshold signatures, on a few seeds.
#[test]
fn bls_sweep_n4() {
    let keys = bls_keys(4, 0x47);
    let stored = stored_check(&keys, 1);
    check_seeds(BLS_SEEDS, |seed| {
        run_case(&keys, None, seed, stored).map(drop)
    });
    sweep(&keys, BLS_SEEDS);
}

/// Same seed, same run.
#[test]
fn runs_are_reproducible() {
    let keys = insecure_keys(4, "htabc sim");
    let trace = |seed: u64| {
        let factory_keys = keys.clone();
        let mut sim = Sim::new(
            SimConfig::new(4, seed),
            byzantine_nodes(4, 1, &Strategy::Replay, seed),
            move |id: NodeId, _| {
                HtAbc::new(
                    config(4),
                    id,
                    b"repro".to_vec(),
                    factory_keys[id.index()].clone(),
                    params(),
                    ht(),
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

// ---------------------------------------------------------------------------------------------
// A hand-driven group: a Byzantine lane owner equivocates, and a node that voted for the
// other batch fetches the certified one.

type InsecureNode = HtAbc<maftia_sim::insecure_crypto::InsecureThresholdSigner>;
type InsecureMsg = Msg<maftia_sim::insecure_crypto::InsecureThresholdSigner>;

/// Delivers every queued message (FIFO) among the honest nodes; messages to the Byzantine node
/// are handed to `to_byzantine`. Returns every message sent, for inspection.
fn pump(
    nodes: &mut BTreeMap<NodeId, InsecureNode>,
    queue: &mut VecDeque<(NodeId, NodeId, InsecureMsg)>,
    faults: &mut Vec<(NodeId, NodeId, HtAbcFault)>,
    outputs: &mut BTreeMap<NodeId, Vec<AbcDelivery>>,
    to_byzantine: &mut Vec<(NodeId, InsecureMsg)>,
    rng: &mut ChaCha8Rng,
) -> Vec<(NodeId, InsecureMsg)> {
    let n = 4;
    let mut sent = Vec::new();
    while let Some((from, to, message)) = queue.pop_front() {
        let Some(node) = nodes.get_mut(&to) else {
            to_byzantine.push((from, message));
            continue;
        };
        let step = node.handle_message(from, message, rng);
        outputs.entry(to).or_default().extend(step.outputs);
        faults.extend(step.faults.into_iter().map(|f| (to, f.culprit, f.kind)));
        for targeted in step.messages {
            sent.push((to, targeted.message.clone()));
            for recipient in targeted.target.recipients(to, n) {
                queue.push_back((to, recipient, targeted.message.clone()));
            }
        }
    }
    sent
}

#[test]
fn an_equivocating_owner_certifies_one_batch_per_slot_and_laggards_fetch_it() {
    let keys = insecure_keys(4, "htabc equivocation");
    let group = config(4);
    let byzantine = NodeId(3);
    let instance = b"htabc equivocation".to_vec();
    let mut nodes: BTreeMap<NodeId, InsecureNode> = (0..3)
        .map(|i| {
            let id = NodeId(i);
            let node = HtAbc::new(
                group,
                id,
                instance.clone(),
                keys[i as usize].clone(),
                params(),
                ht(),
            )
            .unwrap();
            (id, node)
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut queue = VecDeque::new();
    let mut faults = Vec::new();
    let mut outputs = BTreeMap::new();
    let mut to_byzantine = Vec::new();

    // Slot 1 of lane 3: batch A to nodes 0 and 1, batch B to node 2.
    let batch_a = vec![b"byz A".to_vec()];
    let batch_b = vec![b"byz B".to_vec()];
    let proposal = |requests: &Vec<Vec<u8>>| Message::Proposal {
        slot: 1,
        prev_digest: GENESIS_DIGEST,
        prev_certificate: None,
        requests: requests.clone(),
    };
    queue.push_back((byzantine, NodeId(0), proposal(&batch_a)));
    queue.push_back((byzantine, NodeId(1), proposal(&batch_a)));
    queue.push_back((byzantine, NodeId(2), proposal(&batch_b)));
    // Then B to node 0 as well: it voted for A, so it refuses and reports the equivocation.
    queue.push_back((byzantine, NodeId(0), proposal(&batch_b)));
    pump(
        &mut nodes,
        &mut queue,
        &mut faults,
        &mut outputs,
        &mut to_byzantine,
        &mut rng,
    );
    let votes: Vec<(NodeId, Digest, _)> = to_byzantine
        .drain(..)
        .filter_map(|(from, m)| match m {
            Message::Vote {
                slot: 1,
                digest,
                share,
            } => Some((from, digest, share)),
            _ => None,
        })
        .collect();
    let digest_a = batch_digest(&instance, byzantine, 1, &GENESIS_DIGEST, &batch_a);
    let digest_b = batch_digest(&instance, byzantine, 1, &GENESIS_DIGEST, &batch_b);
    let voters = |digest: Digest| -> Vec<NodeId> {
        votes
            .iter()
            .filter(|(_, d, _)| *d == digest)
            .map(|(from, _, _)| *from)
            .collect()
    };
    assert_eq!(voters(digest_a), vec![NodeId(0), NodeId(1)]);
    assert_eq!(voters(digest_b), vec![NodeId(2)]);
    assert!(faults.iter().any(|(reporter, culprit, kind)| {
        *reporter == NodeId(0)
            && *culprit == byzantine
            && matches!(kind, HtAbcFault::EquivocatingProposal { slot: 1, .. })
    }));
    // With its own share, the owner reaches n − f = 3 shares for A only: B has 2 (node 2 and
    // its own), which do not combine.
    let quorum = &keys[byzantine.index()].quorum;
    let shares_for = |digest: Digest| -> BTreeMap<usize, _> {
        let message = slot_message(&instance, byzantine, 1, &digest);
        votes
            .iter()
            .filter(|(_, d, _)| *d == digest)
            .map(|(from, _, share)| (from.index(), share.clone()))
            .chain(std::iter::once((
                byzantine.index(),
                quorum.sign_share(&message),
            )))
            .collect()
    };
    let message_b = slot_message(&instance, byzantine, 1, &digest_b);
    assert!(quorum.combine(&message_b, &shares_for(digest_b)).is_err());
    let message_a = slot_message(&instance, byzantine, 1, &digest_a);
    let certificate = quorum
        .combine(&message_a, &shares_for(digest_a))
        .unwrap()
        .signature;

    // The owner announces A's certificate; the honest nodes order lane 3 up to slot 1. Node 2
    // holds B, so it must fetch A.
    for to in 0..3 {
        queue.push_back((
            byzantine,
            NodeId(to),
            Message::Certified {
                slot: 1,
                digest: digest_a,
                certificate: certificate.clone(),
            },
        ));
    }
    let sent = pump(
        &mut nodes,
        &mut queue,
        &mut faults,
        &mut outputs,
        &mut to_byzantine,
        &mut rng,
    );
    assert!(sent.iter().any(|(from, m)| *from == NodeId(2)
        && matches!(m, Message::Fetch { lane, slot: 1, digest } if *lane == byzantine && *digest == digest_a)));
    assert!(sent
        .iter()
        .any(|(_, m)| matches!(m, Message::Batch { slot: 1, .. })));
    for id in 0..3 {
        let delivered = &outputs[&NodeId(id)];
        assert_eq!(
            delivered,
            &vec![AbcDelivery {
                round: 0,
                requests: batch_a.clone()
            }],
            "node {id}"
        );
        assert_eq!(
            nodes[&NodeId(id)].latest_certified(byzantine),
            Some((1, digest_a))
        );
        assert_eq!(nodes[&NodeId(id)].outstanding_fetches(), 0);
    }
    // Only the equivocation was reported, only against the Byzantine owner.
    assert!(faults.iter().all(|(_, culprit, _)| *culprit == byzantine));
    // A forged fetch answer (B for A's slot) would have been refused: node 2 asked for A's
    // digest, and B does not hash to it.
    assert_ne!(digest_a, digest_b);
}

// ---------------------------------------------------------------------------------------------
// SC-ABC over the high-throughput mode.

mod scabc_over_lanes {
    use super::*;
    use maftia_broadcast::atomic::OrderingMode;
    use maftia_broadcast::scabc::{encrypt_request, Scabc, ScabcKeys, ScabcOutput, ScabcResult};
    use maftia_crypto::identity::IdentityKey;
    use maftia_crypto::tdh2;
    use std::sync::Arc;

    fn scabc_params() -> AbcParams {
        AbcParams {
            batch_size: 2,
            max_batch_bytes: 2048,
            max_request_size: 512,
            max_pending: 16,
            dedup_rounds: 16,
        }
    }

    /// One SC-ABC group in the high-throughput mode: every honest node submits two encrypted
    /// requests; checks agreement on the output sequence, that every honest request comes out
    /// decrypted under its label at every honest node, and no faults in an honest run.
    fn run<S: ThresholdSigner + Send + Sync + 'static>(
        keys: &[ThresholdKeys<S>],
        strategy: Option<&Strategy>,
        seed: u64,
    ) -> Result<u64, SimFailure> {
        let n = keys.len();
        let group = config(n);
        let byzantine = match strategy {
            Some(strategy) => byzantine_nodes(n, group.f(), strategy, seed),
            None => BTreeMap::new(),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5343_4142_4348_5421);
        let (public, secrets) = tdh2::deal(n, group.one_honest(), &mut rng).unwrap();
        let public = Arc::new(public);
        let identities: Vec<IdentityKey> =
            (0..n).map(|_| IdentityKey::generate(&mut rng)).collect();
        let registry = Arc::new(
            identities
                .iter()
                .map(IdentityKey::public)
                .collect::<Vec<_>>(),
        );
        // Per node: (ciphertext bytes, plaintext, label) of each request.
        type Submitted = Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>;
        let mut requests: BTreeMap<NodeId, Submitted> = BTreeMap::new();
        for id in NodeId::all(n) {
            let list = (0..2)
                .map(|k| {
                    let label = format!("client {id}/{k}").into_bytes();
                    let plaintext = format!("seed {seed} secret {id} {k}").into_bytes();
                    let bytes = encrypt_request(&public, &plaintext, &label, &mut rng).unwrap();
                    (bytes, plaintext, label)
                })
                .collect();
            requests.insert(id, list);
        }
        let factory_keys = keys.to_vec();
        let mut sim = Sim::new(
            SimConfig::new(n, seed),
            byzantine.clone(),
            move |id: NodeId, _copy| {
                Scabc::with_mode(
                    group,
                    id,
                    format!("scabc over lanes {seed}").into_bytes(),
                    ScabcKeys {
                        tdh2_public: public.clone(),
                        tdh2_secret: secrets[id.index()].clone(),
                        threshold: factory_keys[id.index()].clone(),
                        identity: identities[id.index()].clone(),
                        identities: registry.clone(),
                    },
                    scabc_params(),
                    OrderingMode::HighThroughput(ht()),
                )
                .unwrap()
            },
            Box::new(maftia_sim::NoHooks),
        );
        for (id, list) in &requests {
            for (bytes, _, _) in list {
                if let Err(e) = sim.input(*id, |_| bytes.clone()) {
                    if !byzantine.contains_key(id) {
                        return Err(sim.fail(format!("{id} refused a request: {e}")));
                    }
                }
            }
        }
        let mut agreed: Vec<ScabcOutput> = Vec::new();
        let mut faults_checked = 0;
        sim.run(|state| {
            for id in state.honest() {
                for (i, output) in state.outputs(id).iter().enumerate() {
                    match agreed.get(i) {
                        Some(first) if first != output => {
                            return Err(format!("agreement: {id} output {output:?}, not {first:?}"))
                        }
                        Some(_) => {}
                        None => agreed.push(output.clone()),
                    }
                }
            }
            for (reporter, fault) in &state.faults()[faults_checked..] {
                if state.is_honest(fault.culprit) {
                    return Err(format!(
                        "{reporter} accused honest {}: {fault:?}",
                        fault.culprit
                    ));
                }
            }
            faults_checked = state.faults().len();
            Ok(())
        })?;
        let state = sim.state();
        for id in state.honest() {
            if state.outputs(id).len() != agreed.len() {
                return Err(sim.fail(format!("termination: {id} output fewer entries")));
            }
        }
        for id in state.honest() {
            for (_, plaintext, label) in &requests[&id] {
                let found = agreed.iter().any(|o| {
                    o.result
                        == ScabcResult::Delivered {
                            plaintext: plaintext.clone(),
                            label: label.clone(),
                        }
                });
                if !found {
                    return Err(sim.fail(format!("validity: {id}'s {label:?} not delivered")));
                }
            }
        }
        if strategy.is_none() && !state.faults().is_empty() {
            return Err(sim.fail(format!("honest run faults: {:?}", state.faults())));
        }
        Ok(agreed.len() as u64)
    }

    #[test]
    fn scabc_runs_over_the_high_throughput_mode() {
        for n in [4, 7] {
            let keys = insecure_keys(n, "htabc scabc");
            let mut outputs = 0;
            check_seeds(8, |seed| {
                outputs += run(&keys, None, seed)?;
                Ok(())
            });
            for strategy in [
                Strategy::Silent,
                Strategy::Equivocate,
                Strategy::Twins,
                Strategy::Replay,
            ] {
                check_seeds(4, |seed| run(&keys, Some(&strategy), seed).map(drop));
            }
            eprintln!("scabc over lanes n = {n}: {outputs} outputs over the honest seeds");
        }
    }
}
