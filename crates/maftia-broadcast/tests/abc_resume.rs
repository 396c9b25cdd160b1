//! Atomic broadcast resumed at a later round (state transfer): [`Abc::resume`],
//! [`ResumePoint`] and [`RecentWindow`].
//!
//! The simulator runs n = 4 in three phases, each to quiescence, over a seed sweep
//! ([`check_seeds`]; `MAFTIA_SIM_SEEDS=k` for a soak, `MAFTIA_SIM_SEED=s` to replay one seed):
//! 1. all nodes order requests submitted at the honest nodes 0, 2 and 3, while the Byzantine
//!    node 1 re-proposes requests delivered earlier (re-signed into its batches, so they reach
//!    decided vectors and the dedup window decides their fate);
//! 2. node 3 crashes (it drops everything it receives); nodes 0 and 2 order more requests with
//!    node 1, which behaves in this phase (one fault at a time: the crash);
//! 3. node 3's old instance is discarded and a new one built with [`Abc::resume`] from the
//!    resume point of an honest node's deliveries ([`RecentWindow`]); requests delivered
//!    recently are submitted again at node 3 and at node 0, which must both refuse them (inside
//!    the window) or both take them; node 1 re-proposes again, and everybody orders more.
//!
//! Checked after every event: **agreement** (every honest node's delivery for round `r`,
//! node 3's resumed ones included, is the same), **total order** (each node's deliveries are for
//! consecutive rounds; node 3's resume at round `r + 1` after the snapshot of round `r`),
//! **window integrity** (a request is delivered again only more than `dedup_rounds` rounds after
//! its last delivery, and only if submitted at an honest node), every honest node's
//! [`RecentWindow`] built from its deliveries equals the instance's own window
//! ([`Abc::resume_point`], i.e. the `DeliveredWindow` that decides deduplication), and no honest
//! node is accused. At the end: validity, termination (node 3 caught up) and empty queues.
//!
//! The same run with node 3 resumed on an *empty* window diverges: node 3 takes a re-submitted
//! request the others refuse, or delivers a re-proposed one they skip.
//!
//! A third variant resumes node 3 in the middle of phase 3, while the others are inside rounds
//! whose earlier messages it never got, and then, at pauses, jumps the live instance forward
//! with [`Abc::skip_to`] to the leading honest node's resume point whenever it lags: node 3
//! never disagrees, and ends level with the others in most runs having ordered rounds itself.
//!
//! Unit tests cover resume-point validation, digests and encoding, stale-round messages at a
//! resumed node, [`Abc::skip_to`] on a live instance, the high-throughput mode's refusal, and a
//! property test of [`RecentWindow`] against a reference model and against the instance's own
//! window.
mod support;

use maftia_broadcast::abc::{
    batch_message, request_digest, Abc, AbcDelivery, AbcError, AbcFault, AbcMessage, AbcParams,
    Message, RecentWindow, ResumeError, ResumePoint, BATCH_SIGNATURE_CONTEXT, MAX_RESUME_ROUND,
    ROUND_WINDOW,
};
use maftia_broadcast::atomic::{AtomicBroadcast, AtomicError, OrderingMode};
use maftia_broadcast::htabc::{HtAbcError, HtParams};
use maftia_broadcast::{mvba, ThresholdKeys};
use maftia_core::codec;
use maftia_core::{NodeId, Protocol, ProtocolStep, Step};
use maftia_crypto::hash::Digest;
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_sim::insecure_crypto::InsecureThresholdSigner;
use maftia_sim::{check_seeds, Adversary, Sim, SimConfig, SimFailure, SimState, Strategy};
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use support::{config, insecure_keys};

type S = InsecureThresholdSigner;
type Msg = AbcMessage<S>;

const N: usize = 4;
/// The Byzantine re-proposer.
const BYZANTINE: NodeId = NodeId(1);
/// The node that crashes and resumes.
const RESUMED: NodeId = NodeId(3);
/// Seeds of the sweep with the right window, and of the one with an empty window.
const SEEDS: u64 = 120;
const WRONG_WINDOW_SEEDS: u64 = 40;

/// Small batches and a short dedup window, so that windows slide (and rounds expire) within a
/// run.
fn params() -> AbcParams {
    AbcParams {
        batch_size: 4,
        max_batch_bytes: 256,
        max_request_size: 64,
        max_pending: 32,
        dedup_rounds: 3,
    }
}

/// Most digests one round can deliver: `n · batch_size`.
fn max_per_round() -> usize {
    N * params().batch_size
}

fn identities(seed: u64) -> (Vec<IdentityKey>, Arc<Vec<IdentityPublicKey>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7265_7375_6d65);
    let keys: Vec<IdentityKey> = (0..N).map(|_| IdentityKey::generate(&mut rng)).collect();
    let registry = Arc::new(keys.iter().map(IdentityKey::public).collect());
    (keys, registry)
}

/// Builds node `id`'s ABC instance at a resume point.
type Factory = Arc<dyn Fn(NodeId, &ResumePoint) -> Result<Abc<S>, AbcError>>;

fn factory(keys: &[ThresholdKeys<S>], instance: &[u8], seed: u64) -> Factory {
    let keys = keys.to_vec();
    let instance = instance.to_vec();
    let (identity_keys, registry) = identities(seed);
    Arc::new(move |id: NodeId, resume: &ResumePoint| {
        Abc::resume(
            config(N),
            id,
            instance.clone(),
            keys[id.index()].clone(),
            identity_keys[id.index()].clone(),
            registry.clone(),
            params(),
            resume,
        )
    })
}

/// What the test asks of a node.
#[derive(Clone, Debug)]
enum Command {
    /// Submit a request.
    Request(Vec<u8>),
    /// Crash: from now on, drop every input and message.
    Crash,
    /// Replace the instance with a new one built at this resume point (a restart after state
    /// transfer); the old instance and everything it knew are gone.
    Resume(ResumePoint),
    /// Jump the live instance forward to this resume point ([`Abc::skip_to`]).
    SkipTo(ResumePoint),
}

/// A node whose ABC instance can crash and be rebuilt at a resume point.
struct Restartable {
    id: NodeId,
    abc: Abc<S>,
    crashed: bool,
    factory: Factory,
}

impl Protocol for Restartable {
    type Message = Msg;
    type Input = Command;
    type Output = AbcDelivery;
    type FaultKind = AbcFault;
    type Error = AbcError;

    fn our_id(&self) -> NodeId {
        self.id
    }

    fn handle_input(
        &mut self,
        command: Command,
        rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, AbcError> {
        match command {
            Command::Request(request) if !self.crashed => self.abc.handle_input(request, rng),
            Command::Request(_) => Ok(Step::new()),
            Command::Crash => {
                self.crashed = true;
                Ok(Step::new())
            }
            Command::Resume(point) => {
                self.abc = (self.factory)(self.id, &point)?;
                self.crashed = false;
                Ok(Step::new())
            }
            Command::SkipTo(point) => self.abc.skip_to(&point, rng),
        }
    }

    fn handle_message(
        &mut self,
        from: NodeId,
        message: Msg,
        rng: &mut dyn RngCore,
    ) -> Step<Msg, AbcDelivery, AbcFault> {
        if self.crashed {
            return Step::new();
        }
        self.abc.handle_message(from, message, rng)
    }

    fn terminated(&self) -> bool {
        false
    }
}

/// Node 1's adversary: while `active`, each of its batches carries a request delivered earlier
/// (one of the last few of `history`), validly signed with node 1's key.
struct Reproposer {
    active: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Vec<u8>>>>,
    instance: Vec<u8>,
    key: IdentityKey,
}

impl Adversary<Restartable> for Reproposer {
    fn corrupt(&mut self, message: &Msg, rng: &mut dyn RngCore) -> Option<Msg> {
        let Message::Batch {
            round, requests, ..
        } = message
        else {
            return None; // its MVBA messages stay honest: the group needs them in phase 2
        };
        if !self.active.load(Ordering::Relaxed) {
            return None;
        }
        let history = self.history.lock().unwrap();
        // Mostly recent requests (inside the window), sometimes any earlier one.
        let from = match rng.next_u32() % 4 {
            0 => 0,
            _ => history.len().saturating_sub(8),
        };
        let recent = &history[from..];
        if recent.is_empty() {
            return None;
        }
        let old = recent[rng.next_u32() as usize % recent.len()].clone();
        let mut requests = requests.clone();
        requests.truncate(params().batch_size - 1);
        if !requests.contains(&old) {
            requests.push(old);
        }
        let signed = batch_message(&self.instance, *round, BYZANTINE, &requests);
        Some(Message::Batch {
            round: *round,
            requests,
            signature: self.key.sign(BATCH_SIGNATURE_CONTEXT, &signed),
        })
    }
}

/// One honest node's checked prefix and its window built from its deliveries.
struct NodeCheck {
    checked: usize,
    /// Rounds delivered since the start or the last resume or skip.
    delivered_since_resume: u64,
    next_round: u64,
    window: RecentWindow,
}

/// The invariants of the module docs, checked event by event.
struct Checker {
    agreed: BTreeMap<u64, AbcDelivery>,
    /// Round of each request's last delivery.
    last_delivered: BTreeMap<Vec<u8>, u64>,
    submitted: BTreeSet<Vec<u8>>,
    nodes: BTreeMap<NodeId, NodeCheck>,
    history: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Deliveries of a request again, after its window expired.
    redelivered: usize,
}

impl Checker {
    fn new(honest: &[NodeId], history: Arc<Mutex<Vec<Vec<u8>>>>) -> Self {
        Checker {
            agreed: BTreeMap::new(),
            last_delivered: BTreeMap::new(),
            submitted: BTreeSet::new(),
            nodes: honest
                .iter()
                .map(|id| {
                    let check = NodeCheck {
                        checked: 0,
                        delivered_since_resume: 0,
                        next_round: 0,
                        window: RecentWindow::new(params().dedup_rounds),
                    };
                    (*id, check)
                })
                .collect(),
            history,
            redelivered: 0,
        }
    }

    fn check(&mut self, state: &SimState<Restartable>) -> Result<(), String> {
        let dedup = params().dedup_rounds;
        for id in state.honest() {
            let node = state.node(id);
            let outputs = state.outputs(id);
            let check = self
                .nodes
                .get_mut(&id)
                .expect("every honest node is tracked");
            for delivery in &outputs[check.checked..] {
                let round = delivery.round;
                if round != check.next_round {
                    return Err(format!(
                        "total order: {id} delivered round {round}, expected {}",
                        check.next_round
                    ));
                }
                check.next_round += 1;
                check.delivered_since_resume += 1;
                check
                    .window
                    .push_delivery(delivery)
                    .map_err(|e| format!("{id}'s window refused round {round}: {e}"))?;
                match self.agreed.get(&round) {
                    Some(first) if first != delivery => {
                        return Err(format!(
                            "agreement: {id} delivered {delivery:?} in round {round}, another \
                             honest node {first:?}"
                        ))
                    }
                    Some(_) => {}
                    None => {
                        // Rounds are first delivered in order: whoever delivers round r first
                        // has delivered every earlier round.
                        let mut this_round = BTreeSet::new();
                        for request in &delivery.requests {
                            let text = String::from_utf8_lossy(request);
                            if !self.submitted.contains(request) {
                                return Err(format!("integrity: {text:?} was never submitted"));
                            }
                            if !this_round.insert(request) {
                                return Err(format!("integrity: {text:?} twice in round {round}"));
                            }
                            if let Some(last) = self.last_delivered.insert(request.clone(), round) {
                                if last + dedup >= round {
                                    return Err(format!(
                                        "integrity: {id} delivered {text:?} in round {round}, \
                                         inside the window of its delivery in round {last}"
                                    ));
                                }
                                self.redelivered += 1;
                            }
                            self.history.lock().unwrap().push(request.clone());
                        }
                        self.agreed.insert(round, delivery.clone());
                    }
                }
            }
            check.checked = outputs.len();
            if !node.crashed {
                let built = check.window.resume_point();
                let own = node.abc.resume_point();
                if built != own {
                    return Err(format!(
                        "{id}: the window built from its deliveries {built:?} differs from the \
                         instance's {own:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Node `id` was resumed at `point`: its next delivery is for `point.next_round`.
    fn resumed(&mut self, id: NodeId, point: &ResumePoint, outputs: usize) {
        let check = self.nodes.get_mut(&id).expect("a tracked node");
        check.checked = outputs;
        check.delivered_since_resume = 0;
        check.next_round = point.next_round;
        check.window =
            RecentWindow::resumed(point, params().dedup_rounds, max_per_round()).unwrap();
    }
}

/// What a run looked like.
#[derive(Debug, Default)]
struct Report {
    /// The round node 3 resumed at.
    resumed_at: u64,
    rounds: u64,
    /// Re-submissions refused at both node 0 and node 3 (inside the window).
    refused: usize,
    /// Deliveries of a request again after its window expired.
    redelivered: usize,
    /// Rounds listed in the resume point's window.
    window_rounds: usize,
    /// Whether node 3 delivered every round by the end.
    caught_up: bool,
    /// [`Mode::MidRun`]: jumps forward node 3 needed, and the rounds it delivered by itself
    /// after the last one.
    skips: usize,
    delivered_after_skip: u64,
}

/// Requests `count` of `node` in `phase`.
fn requests(seed: u64, phase: &str, node: NodeId, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|k| format!("{seed:x} {phase} {node} #{k}").into_bytes())
        .collect()
}

/// Submit `request` at `id`, recording it as submitted at an honest node.
fn submit(
    sim: &mut Sim<Restartable>,
    checker: &mut Checker,
    id: NodeId,
    request: &[u8],
) -> Result<(), AbcError> {
    checker.submitted.insert(request.to_vec());
    sim.input(id, |_| Command::Request(request.to_vec()))
}

/// How node 3 resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// With the donor's window, while the group is quiescent.
    Quiescent,
    /// With an empty window, while the group is quiescent.
    EmptyWindow,
    /// With the donor's window, in the middle of phase 3 (the group busy with rounds whose
    /// messages node 3 has partly missed), then, at pauses every few dozen events, jumped
    /// forward with [`Abc::skip_to`] to the leading honest node's resume point whenever it lags.
    MidRun,
}

/// Pauses a run: the reason an invariant gives to stop [`Sim::run`] on purpose.
const PAUSE: &str = "pause for the state transfer";

/// One three-phase run (module docs).
fn run_case(keys: &[ThresholdKeys<S>], seed: u64, mode: Mode) -> Result<Report, SimFailure> {
    let instance = format!("abc-resume/seed {seed}").into_bytes();
    let factory = factory(keys, &instance, seed);
    let (identity_keys, _) = identities(seed);
    let active = Arc::new(AtomicBool::new(true));
    let history = Arc::new(Mutex::new(Vec::new()));
    let adversary = Reproposer {
        active: active.clone(),
        history: history.clone(),
        instance,
        key: identity_keys[BYZANTINE.index()].clone(),
    };
    let node_factory = factory.clone();
    let mut sim = Sim::new(
        SimConfig::new(N, seed),
        [(BYZANTINE, Strategy::InvalidShares)].into_iter().collect(),
        move |id: NodeId, _copy| Restartable {
            id,
            abc: node_factory(id, &ResumePoint::default()).unwrap(),
            crashed: false,
            factory: node_factory.clone(),
        },
        Box::new(adversary),
    );
    let honest = [NodeId(0), NodeId(2), RESUMED];
    let mut checker = Checker::new(&honest, history);
    let mut report = Report::default();
    let refused = |sim: &Sim<Restartable>, id: NodeId, e: AbcError| {
        sim.fail(format!("honest {id} refused a fresh request: {e}"))
    };

    // Phase 1: everybody, node 1 re-proposing.
    for id in honest {
        for request in requests(seed, "one", id, 3) {
            submit(&mut sim, &mut checker, id, &request).map_err(|e| refused(&sim, id, e))?;
        }
    }
    let shared = format!("{seed:x} one shared").into_bytes();
    for id in [NodeId(0), RESUMED] {
        submit(&mut sim, &mut checker, id, &shared).map_err(|e| refused(&sim, id, e))?;
    }
    sim.run(|state| checker.check(state))?;

    // Phase 2: node 3 crashed, node 1 behaves.
    sim.input(RESUMED, |_| Command::Crash).unwrap();
    active.store(false, Ordering::Relaxed);
    for id in [NodeId(0), NodeId(2)] {
        for request in requests(seed, "two", id, 3 + (seed % 4) as usize) {
            submit(&mut sim, &mut checker, id, &request).map_err(|e| refused(&sim, id, e))?;
        }
    }
    sim.run(|state| checker.check(state))?;

    if mode == Mode::MidRun {
        // Phase 3 starts without node 3 and is paused after a seed-chosen number of events.
        active.store(true, Ordering::Relaxed);
        for id in [NodeId(0), NodeId(2)] {
            for request in requests(seed, "three", id, 2 + (seed % 3) as usize) {
                submit(&mut sim, &mut checker, id, &request).map_err(|e| refused(&sim, id, e))?;
            }
        }
        let pause_at = sim.events() + 5 + (seed >> 8) % 200;
        match sim.run(|state| {
            checker.check(state)?;
            match state.event_count() >= pause_at {
                true => Err(PAUSE.to_string()),
                false => Ok(()),
            }
        }) {
            Err(failure) if failure.reason.ends_with(PAUSE) => {}
            other => other?,
        }
    }

    // State transfer: the resume point after the last round an honest donor delivered.
    let donor = if seed % 2 == 0 { NodeId(0) } else { NodeId(2) };
    let mut point = checker.nodes[&donor].window.resume_point();
    if point != sim.state().node(donor).abc.resume_point() {
        return Err(sim.fail("the donor's window differs from its instance's"));
    }
    if mode != Mode::MidRun && point.next_round != checker.agreed.len() as u64 {
        return Err(sim.fail("the resume point is not after the last agreed round"));
    }
    report.resumed_at = point.next_round;
    report.window_rounds = point.recent.len();
    if mode == Mode::EmptyWindow {
        point.recent.clear();
    }
    sim.input(RESUMED, |_| Command::Resume(point.clone()))
        .map_err(|e| sim.fail(format!("resume refused: {e}")))?;
    checker.resumed(RESUMED, &point, sim.state().outputs(RESUMED).len());
    if sim.state().node(RESUMED).abc.round() != point.next_round {
        return Err(sim.fail("the resumed instance is not at the resume round"));
    }

    if mode == Mode::MidRun {
        let mut pauses = ChaCha8Rng::seed_from_u64(seed ^ 0x0070_6175_7365);
        loop {
            let pause_at = sim.events() + 10 + pauses.next_u64() % 60;
            match sim.run(|state| {
                checker.check(state)?;
                match state.event_count() >= pause_at {
                    true => Err(PAUSE.to_string()),
                    false => Ok(()),
                }
            }) {
                Err(failure) if failure.reason.ends_with(PAUSE) => {}
                Ok(()) => break,
                Err(failure) => return Err(failure),
            }
            let leader = [NodeId(0), NodeId(2)]
                .into_iter()
                .max_by_key(|id| checker.nodes[id].next_round)
                .unwrap();
            let point = checker.nodes[&leader].window.resume_point();
            if sim.state().node(RESUMED).abc.round() < point.next_round {
                let before = sim.state().outputs(RESUMED).len();
                sim.input(RESUMED, |_| Command::SkipTo(point.clone()))
                    .map_err(|e| sim.fail(format!("skip refused: {e}")))?;
                checker.resumed(RESUMED, &point, before);
                checker.check(sim.state()).map_err(|e| sim.fail(e))?;
                report.skips += 1;
            }
        }
        return finish_mid_run(&sim, &checker, report);
    }

    // Phase 3: re-submit recent deliveries at node 3 and node 0 (both refuse, inside the
    // window, or both take them), then new requests; node 1 re-proposes again.
    active.store(true, Ordering::Relaxed);
    let recent: Vec<Vec<u8>> = {
        let mut seen = BTreeSet::new();
        let mut recent = Vec::new();
        for delivery in checker.agreed.values().rev() {
            for request in &delivery.requests {
                if recent.len() < 4 && seen.insert(request.clone()) {
                    recent.push(request.clone());
                }
            }
        }
        recent
    };
    for request in &recent {
        let at_resumed = submit(&mut sim, &mut checker, RESUMED, request);
        if mode == Mode::EmptyWindow {
            continue;
        }
        let at_zero = submit(&mut sim, &mut checker, NodeId(0), request);
        match (at_resumed, at_zero) {
            (Err(AbcError::AlreadyDelivered), Err(AbcError::AlreadyDelivered)) => {
                report.refused += 1
            }
            (Ok(()), Ok(())) => {}
            (at_resumed, at_zero) => {
                return Err(sim.fail(format!(
                    "re-submitting {:?}: node 3 answered {at_resumed:?}, node 0 {at_zero:?}",
                    String::from_utf8_lossy(request)
                )))
            }
        }
    }
    for id in honest {
        for request in requests(seed, "three", id, 2) {
            submit(&mut sim, &mut checker, id, &request).map_err(|e| refused(&sim, id, e))?;
        }
    }
    sim.run(|state| checker.check(state))?;

    // Quiescence: everybody (node 3 included) delivered every round, every request.
    let rounds = checker.agreed.len() as u64;
    for id in honest {
        let node = sim.state().node(id);
        if checker.nodes[&id].next_round != rounds || node.abc.round() != rounds {
            return Err(sim.fail(format!(
                "termination: {id} is at round {} of {rounds}",
                checker.nodes[&id].next_round
            )));
        }
        if node.abc.pending() != 0 {
            return Err(sim.fail(format!("validity: {id} still has pending requests")));
        }
    }
    if let Some(missing) = checker
        .submitted
        .iter()
        .find(|r| !checker.last_delivered.contains_key(*r))
    {
        return Err(sim.fail(format!(
            "validity: {:?} was never delivered",
            String::from_utf8_lossy(missing)
        )));
    }
    if let Some((reporter, fault)) = sim
        .state()
        .faults()
        .iter()
        .find(|(_, f)| f.culprit != BYZANTINE)
    {
        return Err(sim.fail(format!(
            "{reporter} accused honest {}: {:?}",
            fault.culprit, fault.kind
        )));
    }
    report.rounds = rounds;
    report.redelivered = checker.redelivered;
    report.caught_up = true;
    Ok(report)
}

/// The end of a [`Mode::MidRun`] run: nodes 0 and 2 delivered everything (the checker has
/// verified node 3's deliveries against theirs all along); node 3 may have caught up or not.
/// Evidence: none against honest nodes, except node 3's reports of rounds beyond its window
/// while it lags.
fn finish_mid_run(
    sim: &Sim<Restartable>,
    checker: &Checker,
    mut report: Report,
) -> Result<Report, SimFailure> {
    let rounds = checker.agreed.len() as u64;
    for id in [NodeId(0), NodeId(2)] {
        let node = sim.state().node(id);
        if checker.nodes[&id].next_round != rounds || node.abc.pending() != 0 {
            return Err(sim.fail(format!("termination or validity failed at {id}")));
        }
    }
    if let Some(missing) = checker
        .submitted
        .iter()
        .find(|r| !checker.last_delivered.contains_key(*r))
    {
        return Err(sim.fail(format!(
            "validity: {:?} was never delivered",
            String::from_utf8_lossy(missing)
        )));
    }
    if let Some((reporter, fault)) = sim.state().faults().iter().find(|(reporter, f)| {
        f.culprit != BYZANTINE
            && !(*reporter == RESUMED && matches!(f.kind, AbcFault::FutureRound { .. }))
    }) {
        return Err(sim.fail(format!(
            "{reporter} accused honest {}: {:?}",
            fault.culprit, fault.kind
        )));
    }
    report.rounds = rounds;
    report.redelivered = checker.redelivered;
    report.caught_up = checker.nodes[&RESUMED].next_round == rounds;
    report.delivered_after_skip = checker.nodes[&RESUMED].delivered_since_resume;
    Ok(report)
}

#[test]
fn a_resumed_node_delivers_what_the_others_deliver() {
    let keys = insecure_keys(N, "abc resume");
    let (mut runs, mut refused, mut redelivered) = (0, 0, 0);
    let (mut late_resumes, mut full_windows) = (0, 0);
    check_seeds(SEEDS, |seed| {
        let report = run_case(&keys, seed, Mode::Quiescent)?;
        runs += 1;
        refused += report.refused;
        redelivered += report.redelivered;
        late_resumes += usize::from(report.resumed_at > params().dedup_rounds);
        full_windows += usize::from(report.window_rounds as u64 == params().dedup_rounds);
        Ok(())
    });
    eprintln!(
        "abc resume: {runs} runs, {refused} re-submissions refused by the resumed node, \
         {redelivered} re-proposals delivered again after their window, {late_resumes} resumes \
         past the first window, {full_windows} with a window of dedup_rounds rounds"
    );
    if runs >= 20 {
        // The window decided something in these runs: re-submissions were refused inside it and
        // re-proposals delivered again after it, and resumes happened with a full window.
        assert!(refused >= runs, "{refused} refusals in {runs} runs");
        assert!(redelivered > 0);
        assert!(late_resumes > runs / 2, "{late_resumes} of {runs}");
        assert!(full_windows > 0);
    }
}

/// Node 3 resumed while the others are in the middle of rounds whose messages it partly
/// missed: its deliveries still agree with theirs (checked event by event), whether or not it
/// catches up (a round whose messages it lost before resuming may stay undecided for it: ABC
/// does not retransmit; the state-transfer layer resumes it again later).
#[test]
fn a_node_resumed_mid_run_never_disagrees() {
    let keys = insecure_keys(N, "abc resume");
    let (mut runs, mut caught_up, mut skips, mut delivered_after_skip) = (0, 0, 0, 0);
    check_seeds(SEEDS, |seed| {
        let report = run_case(&keys, seed, Mode::MidRun)?;
        runs += 1;
        caught_up += usize::from(report.caught_up);
        skips += report.skips;
        delivered_after_skip += report.delivered_after_skip;
        Ok(())
    });
    eprintln!(
        "abc resume mid-run: node 3 caught up in {caught_up} of {runs} runs, after {skips} \
         jumps forward in all; {delivered_after_skip} rounds delivered by itself after its last \
         resume or jump"
    );
    if runs >= 20 {
        // Jumping forward works under load: node 3 ends level with the others in most runs,
        // having ordered rounds itself after its last jump.
        assert!(caught_up * 10 >= runs * 8, "{caught_up} of {runs}");
        assert!(skips > 0);
        assert!(
            delivered_after_skip >= runs as u64 / 2,
            "{delivered_after_skip}"
        );
    }
}

/// The same runs with node 3 resumed on an empty window: it takes a re-submitted request the
/// others refuse (or delivers a re-proposed one they skip), so its deliveries diverge.
#[test]
fn a_resumed_node_with_an_empty_window_diverges() {
    let keys = insecure_keys(N, "abc resume");
    let (mut runs, mut diverged) = (0, 0);
    check_seeds(WRONG_WINDOW_SEEDS, |seed| {
        runs += 1;
        match run_case(&keys, seed, Mode::EmptyWindow) {
            Ok(_) => {}
            // Node 3 delivers a round differently from the others (first or not).
            Err(failure)
                if failure.reason.contains("invariant violated: agreement")
                    || failure.reason.contains(&format!(
                        "invariant violated: integrity: {RESUMED} delivered"
                    )) =>
            {
                diverged += 1
            }
            Err(failure) => return Err(failure),
        }
        Ok(())
    });
    eprintln!("abc resume with an empty window: {diverged} of {runs} runs diverged");
    assert!(
        diverged * 10 >= runs * 9,
        "only {diverged} of {runs} runs diverged"
    );
}

// ----- resume points: validation, digests, the window builder -----

fn digest(k: u8) -> Digest {
    request_digest(&[k])
}

fn resume(keys: &[ThresholdKeys<S>], point: &ResumePoint) -> Result<Abc<S>, AbcError> {
    factory(keys, b"abc-resume/unit", 1)(NodeId(0), point)
}

fn invalid(keys: &[ThresholdKeys<S>], point: ResumePoint) -> ResumeError {
    match resume(keys, &point) {
        Err(AbcError::InvalidResumePoint(e)) => e,
        Err(e) => panic!("{point:?}: unexpected error {e}"),
        Ok(_) => panic!("{point:?} was accepted"),
    }
}

#[test]
fn malformed_resume_points_are_refused() {
    let keys = insecure_keys(N, "abc resume");
    let point = |next_round, recent: Vec<(u64, Vec<Digest>)>| ResumePoint { next_round, recent };
    // dedup_rounds = 3: resuming at 10 keeps rounds 7, 8 and 9.
    let good = point(
        10,
        vec![(7, vec![digest(1)]), (9, vec![digest(2), digest(3)])],
    );
    let node = resume(&keys, &good).unwrap();
    assert_eq!(node.round(), 10);
    assert_eq!(node.resume_point(), good);
    assert_eq!(
        invalid(
            &keys,
            point(10, vec![(8, vec![digest(1)]), (8, vec![digest(2)])])
        ),
        ResumeError::RoundsNotIncreasing {
            previous: 8,
            round: 8
        }
    );
    assert_eq!(
        invalid(
            &keys,
            point(10, vec![(9, vec![digest(1)]), (8, vec![digest(2)])])
        ),
        ResumeError::RoundsNotIncreasing {
            previous: 9,
            round: 8
        }
    );
    assert_eq!(
        invalid(&keys, point(10, vec![(10, vec![digest(1)])])),
        ResumeError::RoundNotBeforeNext {
            round: 10,
            next_round: 10
        }
    );
    assert_eq!(
        invalid(&keys, point(10, vec![(6, vec![digest(1)])])),
        ResumeError::OutsideWindow {
            round: 6,
            next_round: 10,
            dedup_rounds: 3
        }
    );
    let crowded: Vec<Digest> = (0..=max_per_round() as u8).map(digest).collect();
    assert_eq!(
        invalid(&keys, point(10, vec![(9, crowded)])),
        ResumeError::TooManyDigests {
            round: 9,
            count: max_per_round() + 1,
            max: max_per_round()
        }
    );
    assert_eq!(
        invalid(
            &keys,
            point(10, vec![(8, vec![digest(1)]), (9, vec![digest(1)])])
        ),
        ResumeError::DuplicateDigest { round: 9 }
    );
    assert_eq!(
        invalid(&keys, point(10, vec![(9, vec![digest(4), digest(4)])])),
        ResumeError::DuplicateDigest { round: 9 }
    );
    assert_eq!(
        invalid(&keys, point(u64::MAX, vec![])),
        ResumeError::RoundTooLarge {
            next_round: u64::MAX,
            max: MAX_RESUME_ROUND
        }
    );
    // The edges: round 0 with an empty window, the highest round, rounds that delivered
    // nothing listed or not.
    assert_eq!(resume(&keys, &point(0, vec![])).unwrap().round(), 0);
    assert_eq!(
        resume(&keys, &point(MAX_RESUME_ROUND, vec![]))
            .unwrap()
            .round(),
        MAX_RESUME_ROUND
    );
    let listed_empty = point(2, vec![(0, vec![]), (1, vec![digest(1)])]);
    assert_eq!(
        resume(&keys, &listed_empty).unwrap().resume_point(),
        point(2, vec![(1, vec![digest(1)])])
    );
}

#[test]
fn the_high_throughput_mode_refuses_state_transfer() {
    let keys = insecure_keys(N, "abc resume");
    let (identity_keys, registry) = identities(1);
    let build = |mode| {
        AtomicBroadcast::resume(
            config(N),
            NodeId(2),
            b"abc-resume/atomic".to_vec(),
            keys[2].clone(),
            identity_keys[2].clone(),
            registry.clone(),
            params(),
            mode,
            &ResumePoint {
                next_round: 5,
                recent: vec![(3, vec![digest(9)])],
            },
        )
    };
    let node = build(OrderingMode::Ckps01).unwrap();
    assert_eq!(node.round(), 5);
    assert!(matches!(
        build(OrderingMode::HighThroughput(HtParams::default())),
        Err(AtomicError::HighThroughput(
            HtAbcError::StateTransferUnsupported
        ))
    ));
    assert!(matches!(
        AtomicBroadcast::resume(
            config(N),
            NodeId(2),
            b"abc-resume/atomic".to_vec(),
            keys[2].clone(),
            identity_keys[2].clone(),
            registry.clone(),
            params(),
            OrderingMode::Ckps01,
            &ResumePoint {
                next_round: 5,
                recent: vec![(1, vec![digest(9)])],
            },
        ),
        Err(AtomicError::Ckps01(AbcError::InvalidResumePoint(
            ResumeError::OutsideWindow { round: 1, .. }
        )))
    ));
}

/// A resumed node ignores messages of the rounds before its resume round like any late
/// message (no state, no evidence), takes the current ones, and reports only those beyond its
/// window.
#[test]
fn messages_before_the_resume_round_are_ignored_without_evidence() {
    let keys = insecure_keys(N, "abc resume");
    let (identity_keys, _) = identities(1);
    let mut node = resume(
        &keys,
        &ResumePoint {
            next_round: 20,
            recent: vec![],
        },
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let batch = |round: u64| {
        let requests = vec![b"late".to_vec()];
        let signed = batch_message(b"abc-resume/unit", round, NodeId(1), &requests);
        Message::Batch {
            round,
            requests,
            signature: identity_keys[1].sign(BATCH_SIGNATURE_CONTEXT, &signed),
        }
    };
    let stored = node.stored_messages();
    for round in [0, 5, 19] {
        let step = node.handle_message(NodeId(1), batch(round), &mut rng);
        assert!(
            step.faults.is_empty() && step.messages.is_empty(),
            "round {round}"
        );
        let vote = Message::Mvba {
            round,
            message: mvba::Message::Vote {
                attempt: 0,
                vote: mvba::Vote::Zero,
            },
        };
        let step = node.handle_message(NodeId(1), vote, &mut rng);
        assert!(
            step.faults.is_empty() && step.messages.is_empty(),
            "round {round}"
        );
    }
    assert_eq!(node.stored_messages(), stored);
    // The resume round itself: node 1's batch is taken, and node 0 joins the round.
    let step = node.handle_message(NodeId(1), batch(20), &mut rng);
    assert!(step.faults.is_empty());
    assert!(
        !step.messages.is_empty(),
        "node 0 starts round 20 when asked"
    );
    assert_eq!(node.round(), 20);
    let far = 20 + ROUND_WINDOW + 1;
    let step = node.handle_message(NodeId(1), batch(far), &mut rng);
    assert_eq!(
        step.faults
            .iter()
            .map(|f| f.kind.clone())
            .collect::<Vec<_>>(),
        vec![AbcFault::FutureRound {
            round: far,
            current: 20
        }]
    );
}

/// A live instance jumps forward: the rounds before are dropped, pending requests in the new
/// window leave the queue, the others are proposed in the new round at once; it never jumps
/// back or in place.
#[test]
fn a_live_instance_skips_forward() {
    let keys = insecure_keys(N, "abc resume");
    let mut node = resume(&keys, &ResumePoint::default()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for request in [b"a".as_slice(), b"b", b"c"] {
        let _ = node.handle_input(request.to_vec(), &mut rng).unwrap();
    }
    assert_eq!(node.pending(), 3);
    let point = ResumePoint {
        next_round: 6,
        recent: vec![
            (3, vec![request_digest(b"a")]),
            (5, vec![request_digest(b"x"), request_digest(b"c")]),
        ],
    };
    let step = node.skip_to(&point, &mut rng).unwrap();
    assert_eq!(node.round(), 6);
    assert_eq!(
        node.pending(),
        1,
        "a and c were delivered in the skipped rounds"
    );
    assert_eq!(node.resume_point(), point);
    assert!(step.outputs.is_empty() && step.faults.is_empty());
    match &step.messages[..] {
        [sent] => assert_eq!(
            sent.message,
            Message::Batch {
                round: 6,
                requests: vec![b"b".to_vec()],
                signature: identities(1).0[0].sign(
                    BATCH_SIGNATURE_CONTEXT,
                    &batch_message(b"abc-resume/unit", 6, NodeId(0), &[b"b".to_vec()])
                ),
            }
        ),
        other => panic!("expected our round-6 batch, got {other:?}"),
    }
    assert!(matches!(
        node.handle_input(b"c".to_vec(), &mut rng),
        Err(AbcError::AlreadyDelivered)
    ));
    for next_round in [6, 2] {
        let back = ResumePoint {
            next_round,
            recent: vec![],
        };
        assert!(matches!(
            node.skip_to(&back, &mut rng),
            Err(AbcError::InvalidResumePoint(ResumeError::NotAhead {
                current: 6,
                ..
            }))
        ));
    }
    assert!(matches!(
        node.skip_to(
            &ResumePoint {
                next_round: 9,
                recent: vec![(1, vec![])],
            },
            &mut rng
        ),
        Err(AbcError::InvalidResumePoint(
            ResumeError::OutsideWindow { .. }
        ))
    ));
    assert_eq!(node.round(), 6, "a refused jump changes nothing");

    // The high-throughput mode has no state transfer.
    let (identity_keys, registry) = identities(1);
    let mut ht = AtomicBroadcast::new(
        config(N),
        NodeId(0),
        b"abc-resume/ht".to_vec(),
        keys[0].clone(),
        identity_keys[0].clone(),
        registry,
        params(),
        OrderingMode::HighThroughput(HtParams::default()),
    )
    .unwrap();
    assert!(matches!(
        ht.skip_to(&point, &mut rng),
        Err(AtomicError::HighThroughput(
            HtAbcError::StateTransferUnsupported
        ))
    ));
}

#[test]
fn resume_point_digests_are_canonical_and_points_travel() {
    let a = ResumePoint {
        next_round: 7,
        recent: vec![(5, vec![digest(1), digest(2)]), (6, vec![digest(3)])],
    };
    let mut variants = vec![a.clone()];
    let mut b = a.clone();
    b.next_round = 8;
    variants.push(b);
    let mut c = a.clone();
    c.recent[0].1.swap(0, 1); // delivery order counts
    variants.push(c);
    let mut d = a.clone();
    d.recent[0].0 = 4;
    variants.push(d);
    let mut e = a.clone();
    let moved = e.recent[0].1.pop().unwrap(); // the same digests split differently
    e.recent[1].1.insert(0, moved);
    variants.push(e);
    let digests: BTreeSet<Digest> = variants.iter().map(ResumePoint::digest).collect();
    assert_eq!(digests.len(), variants.len());
    assert_eq!(a.digest(), a.clone().digest());
    let bytes = codec::encode(&a).unwrap();
    assert_eq!(codec::decode::<ResumePoint>(&bytes).unwrap(), a);
}

#[test]
fn the_window_builder_takes_rounds_in_order_only() {
    let mut window = RecentWindow::new(3);
    window.push(0, &[b"a".to_vec()]).unwrap();
    window.push(4, &[b"b".to_vec()]).unwrap(); // rounds 1..=3 delivered nothing
    assert_eq!(window.next_round(), 5);
    assert_eq!(
        window.push(4, &[]),
        Err(ResumeError::RoundsNotIncreasing {
            previous: 4,
            round: 4
        })
    );
    assert_eq!(
        window.resume_point(),
        ResumePoint {
            next_round: 5,
            recent: vec![(4, vec![request_digest(b"b")])],
        }
    );
    assert!(matches!(
        window.push(MAX_RESUME_ROUND, &[]),
        Err(ResumeError::RoundTooLarge { .. })
    ));
}

/// The reference: the rounds `> last − dedup_rounds` that delivered something.
fn model(deliveries: &[(u64, Vec<Vec<u8>>)], dedup_rounds: u64) -> ResumePoint {
    let next_round = deliveries.last().map_or(0, |(round, _)| round + 1);
    ResumePoint {
        next_round,
        recent: deliveries
            .iter()
            .filter(|(round, requests)| round + dedup_rounds >= next_round && !requests.is_empty())
            .map(|(round, requests)| (*round, requests.iter().map(|r| request_digest(r)).collect()))
            .collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The builder keeps exactly the window's rounds, its points pass validation, an instance
    /// resumed at one has exactly that window (`DeliveredWindow` restored, then read back), and
    /// a builder resumed at one continues like the builder that made it.
    #[test]
    fn the_window_builder_keeps_the_window(
        dedup_rounds in 1u64..6,
        steps in proptest::collection::vec((0u64..3, 0usize..4), 0..24),
        split in 0usize..24,
    ) {
        let mut deliveries = Vec::new();
        let mut round = 0u64;
        let mut counter = 0u32;
        for (gap, count) in steps {
            round += gap;
            let requests: Vec<Vec<u8>> = (0..count)
                .map(|_| { counter += 1; counter.to_le_bytes().to_vec() })
                .collect();
            deliveries.push((round, requests));
            round += 1;
        }
        let mut window = RecentWindow::new(dedup_rounds);
        let mut resumed: Option<RecentWindow> = None;
        for (index, (round, requests)) in deliveries.iter().enumerate() {
            window.push(*round, requests).unwrap();
            if let Some(resumed) = resumed.as_mut() {
                resumed.push(*round, requests).unwrap();
                prop_assert_eq!(resumed.resume_point(), window.resume_point());
            }
            let point = window.resume_point();
            prop_assert_eq!(&point, &model(&deliveries[..=index], dedup_rounds));
            prop_assert!(point.recent.len() as u64 <= dedup_rounds);
            point.validate(dedup_rounds, 3).unwrap();
            if index == split {
                resumed = Some(RecentWindow::resumed(&point, dedup_rounds, 3).unwrap());
            }
        }
        let point = window.resume_point();
        let keys = insecure_keys(N, "abc resume");
        let (identity_keys, registry) = identities(2);
        let node = Abc::resume(
            config(N),
            NodeId(1),
            b"abc-resume/prop".to_vec(),
            keys[1].clone(),
            identity_keys[1].clone(),
            registry,
            AbcParams { dedup_rounds, ..params() },
            &point,
        )
        .unwrap();
        prop_assert_eq!(node.resume_point(), point);
    }
}
