//! The simulator's own tests, on a toy protocol: every node sends its input to all, and
//! outputs the collected values once it has `n − f` of them.
use maftia_core::codec::DecodeError;
use maftia_core::{NodeId, Protocol, ProtocolStep, Step, Target};
use maftia_sim::{
    byzantine_nodes, check_seeds, derived_seed, Adversary, NoHooks, Sim, SimConfig, SimFailure,
    SimState, Strategy,
};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// Values at or above this are invalid.
const VALUE_LIMIT: u64 = 1000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum ToyMessage {
    Value(u64),
    Future { round: u64 },
}

#[derive(Clone, Debug, PartialEq)]
enum ToyFault {
    Equivocation { first: u64, second: u64 },
    InvalidValue(u64),
    FarFuture(u64),
}

#[derive(Debug, thiserror::Error)]
enum ToyError {
    #[error("already proposed")]
    AlreadyProposed,
}

struct Toy {
    id: NodeId,
    n: usize,
    f: usize,
    proposed: bool,
    values: BTreeMap<NodeId, u64>,
    output_done: bool,
}

impl Toy {
    fn new(id: NodeId, n: usize) -> Self {
        Toy {
            id,
            n,
            f: (n - 1) / 3,
            proposed: false,
            values: BTreeMap::new(),
            output_done: false,
        }
    }
}

impl Protocol for Toy {
    type Message = ToyMessage;
    type Input = u64;
    type Output = BTreeMap<NodeId, u64>;
    type FaultKind = ToyFault;
    type Error = ToyError;

    fn our_id(&self) -> NodeId {
        self.id
    }

    fn handle_input(
        &mut self,
        value: u64,
        _rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, ToyError> {
        if self.proposed {
            return Err(ToyError::AlreadyProposed);
        }
        self.proposed = true;
        let mut step = Step::new();
        step.send(Target::All, ToyMessage::Value(value));
        Ok(step)
    }

    fn handle_message(
        &mut self,
        from: NodeId,
        message: ToyMessage,
        _rng: &mut dyn RngCore,
    ) -> ProtocolStep<Self> {
        let mut step = Step::new();
        match message {
            ToyMessage::Future { round } => step.fault(from, ToyFault::FarFuture(round)),
            ToyMessage::Value(value) if value >= VALUE_LIMIT => {
                step.fault(from, ToyFault::InvalidValue(value))
            }
            ToyMessage::Value(value) => match self.values.get(&from) {
                Some(&first) if first != value => step.fault(
                    from,
                    ToyFault::Equivocation {
                        first,
                        second: value,
                    },
                ),
                Some(_) => {}
                None => {
                    self.values.insert(from, value);
                    if !self.output_done && self.values.len() >= self.n - self.f {
                        self.output_done = true;
                        step.output(self.values.clone());
                    }
                }
            },
        }
        step
    }

    fn terminated(&self) -> bool {
        self.values.len() == self.n
    }
}

/// Corrupts every value and floods future rounds.
struct ToyAdversary;

impl Adversary<Toy> for ToyAdversary {
    fn corrupt(&mut self, message: &ToyMessage, rng: &mut dyn RngCore) -> Option<ToyMessage> {
        match message {
            ToyMessage::Value(_) => Some(ToyMessage::Value(
                VALUE_LIMIT + u64::from(rng.next_u32() % 100),
            )),
            ToyMessage::Future { .. } => None,
        }
    }

    fn far_future(&mut self, rng: &mut dyn RngCore) -> Vec<ToyMessage> {
        // More than the per-event cap, to check the cap.
        (0..20)
            .map(|_| ToyMessage::Future {
                round: 1_000_000 + rng.next_u64() % 1000,
            })
            .collect()
    }
}

fn input_of(id: NodeId) -> u64 {
    10 * u64::from(id.0) + 1
}

fn toy_sim(config: SimConfig, byzantine: BTreeMap<NodeId, Strategy>) -> Sim<Toy> {
    let n = config.n;
    Sim::new(
        config,
        byzantine,
        |id, _copy| Toy::new(id, n),
        Box::new(ToyAdversary),
    )
}

/// Every node gets its input (copy `c` of a two-copy node gets `input + 100·c`).
fn give_inputs(sim: &mut Sim<Toy>) {
    for id in NodeId::all(sim.state().n()) {
        sim.input(id, |copy| input_of(id) + 100 * copy as u64)
            .unwrap();
    }
}

/// Safety, checked after every event: honest nodes only hold honest nodes' true values, and
/// honest nodes never accuse each other. Evidence is checked once, as it arrives.
fn toy_invariant() -> impl FnMut(&SimState<Toy>) -> Result<(), String> {
    let mut faults_checked = 0;
    let mut failures_checked = 0;
    move |state| {
        for id in state.honest() {
            for (from, value) in &state.node(id).values {
                if state.is_honest(*from) && *value != input_of(*from) {
                    return Err(format!("{id} holds {value} from honest {from}"));
                }
            }
        }
        let new_faults = &state.faults()[faults_checked..];
        faults_checked = state.faults().len();
        if let Some((reporter, fault)) = new_faults.iter().find(|(_, f)| state.is_honest(f.culprit))
        {
            return Err(format!(
                "{reporter} accused honest {}: {fault:?}",
                fault.culprit
            ));
        }
        let new_failures = &state.decode_failures()[failures_checked..];
        failures_checked = state.decode_failures().len();
        if let Some((reporter, from, e)) = new_failures
            .iter()
            .find(|(_, from, _)| state.is_honest(*from))
        {
            return Err(format!(
                "{reporter} could not decode a frame from honest {from}: {e}"
            ));
        }
        Ok(())
    }
}

/// Liveness, checked at quiescence: every honest node has every honest value and output once.
fn check_honest_delivery(sim: &Sim<Toy>) -> Result<(), SimFailure> {
    let state = sim.state();
    for id in state.honest() {
        for from in state.honest() {
            if state.node(id).values.get(&from) != Some(&input_of(from)) {
                return Err(sim.fail(format!("{id} never got {from}'s value")));
            }
        }
        if state.outputs(id).len() != 1 {
            return Err(sim.fail(format!("{id} output {} times", state.outputs(id).len())));
        }
    }
    Ok(())
}

fn run_toy(
    n: usize,
    seed: u64,
    byzantine: BTreeMap<NodeId, Strategy>,
) -> Result<Sim<Toy>, SimFailure> {
    let mut sim = toy_sim(SimConfig::new(n, seed), byzantine);
    give_inputs(&mut sim);
    sim.run(toy_invariant())?;
    check_honest_delivery(&sim)?;
    Ok(sim)
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    for strategy in Strategy::all() {
        let byzantine = byzantine_nodes(7, 2, &strategy, 5);
        let a = run_toy(7, 5, byzantine.clone()).unwrap();
        let b = run_toy(7, 5, byzantine.clone()).unwrap();
        let c = run_toy(7, 6, byzantine).unwrap();
        assert_eq!(a.trace_hash(), b.trace_hash(), "{strategy:?}");
        assert_eq!(a.events(), b.events(), "{strategy:?}");
        assert_ne!(a.trace_hash(), c.trace_hash(), "{strategy:?}");
    }
}

#[test]
fn every_honest_value_reaches_every_honest_node_despite_partitions() {
    let (mut partitions, mut runs) = (0, 0);
    for n in [1, 2, 4, 7, 10] {
        check_seeds(100, |seed| {
            let sim = run_toy(n, seed, BTreeMap::new())?;
            partitions += sim.partitions_started();
            runs += 1;
            if !sim.is_quiescent() {
                return Err(sim.fail("run returned before quiescence"));
            }
            Ok(())
        });
    }
    // (A replay of one seed proves nothing about how often partitions happen.)
    if runs >= 100 {
        assert!(
            partitions > runs / 5,
            "only {partitions} partitions in {runs} runs: the test proves little"
        );
    }
}

#[test]
fn without_partitions_or_duplicates_every_frame_is_delivered_exactly_once() {
    for seed in 0..20 {
        let mut config = SimConfig::new(7, seed);
        config.partitions = false;
        config.duplicate_probability = 0.0;
        let mut sim = toy_sim(config, BTreeMap::new());
        give_inputs(&mut sim);
        sim.run(toy_invariant()).unwrap();
        assert_eq!(sim.partitions_started(), 0);
        let sent: u64 = NodeId::all(7).map(|id| sim.state().frames_sent(id)).sum();
        assert_eq!(sent, 49, "Target::All reaches all 7, the sender included");
        assert_eq!(
            sim.events(),
            7 + sent,
            "7 inputs and one delivery per frame"
        );
    }
}

#[test]
fn duplicates_are_delivered_and_not_duplicated_again() {
    let mut config = SimConfig::new(4, 3);
    config.duplicate_probability = 1.0;
    let mut sim = toy_sim(config, BTreeMap::new());
    give_inputs(&mut sim);
    sim.run(toy_invariant()).unwrap();
    assert_eq!(sim.events(), 4 + 2 * 16);
    check_honest_delivery(&sim).unwrap();
}

#[test]
fn every_strategy_runs_without_breaking_honest_nodes() {
    for strategy in Strategy::all() {
        for n in [4, 7] {
            let f = (n - 1) / 3;
            check_seeds(30, |seed| {
                let byzantine = byzantine_nodes(n, f, &strategy, seed);
                run_toy(n, seed, byzantine).map(|_| ())
            });
        }
    }
}

#[test]
fn mixed_strategies_at_n_10() {
    let strategies = Strategy::all();
    check_seeds(40, |seed| {
        let mut byzantine = BTreeMap::new();
        for (i, id) in byzantine_nodes(10, 3, &Strategy::Silent, seed)
            .into_keys()
            .enumerate()
        {
            let pick = (seed as usize + i) % strategies.len();
            byzantine.insert(id, strategies[pick].clone());
        }
        run_toy(10, seed, byzantine).map(|_| ())
    });
}

#[test]
fn silent_nodes_send_nothing_and_receive_nothing_useful() {
    for seed in 0..20 {
        let sim = run_toy(4, seed, BTreeMap::from([(NodeId(2), Strategy::Silent)])).unwrap();
        let state = sim.state();
        assert_eq!(state.frames_sent(NodeId(2)), 0);
        assert!(
            state.node(NodeId(2)).values.is_empty(),
            "a silent node does not run its protocol"
        );
        assert!(state.outputs(NodeId(2)).is_empty());
        for id in state.honest() {
            assert!(!state.node(id).values.contains_key(&NodeId(2)));
            assert_eq!(state.node(id).values.len(), 3);
        }
        assert_eq!(
            state.honest().collect::<Vec<_>>(),
            vec![NodeId(0), NodeId(1), NodeId(3)]
        );
        assert_eq!(
            state.byzantine().collect::<Vec<_>>(),
            vec![(NodeId(2), &Strategy::Silent)]
        );
    }
}

#[test]
fn crashed_nodes_stop_after_k_events() {
    for seed in 0..20 {
        // CrashAt(0): crashed before its input, it never sends.
        let sim = run_toy(4, seed, BTreeMap::from([(NodeId(0), Strategy::CrashAt(0))])).unwrap();
        assert_eq!(sim.state().frames_sent(NodeId(0)), 0);
        // CrashAt(3): its input and then two deliveries.
        let sim = run_toy(4, seed, BTreeMap::from([(NodeId(0), Strategy::CrashAt(3))])).unwrap();
        assert_eq!(sim.state().frames_sent(NodeId(0)), 4);
        assert!(sim.state().node(NodeId(0)).values.len() <= 2);
        for id in sim.state().honest() {
            assert_eq!(sim.state().node(id).values[&NodeId(0)], input_of(NodeId(0)));
        }
    }
}

#[test]
fn equivocating_copies_get_their_own_inputs_and_split_the_group() {
    let byzantine = NodeId(1);
    let mut saw = BTreeSet::new();
    for seed in 0..30 {
        let sim = run_toy(7, seed, BTreeMap::from([(byzantine, Strategy::Equivocate)])).unwrap();
        let state = sim.state();
        // Each copy got its own input and, addressed to itself, saw only its own value.
        assert_eq!(
            state.node_copy(byzantine, 0).unwrap().values[&byzantine],
            input_of(byzantine)
        );
        assert_eq!(
            state.node_copy(byzantine, 1).unwrap().values[&byzantine],
            input_of(byzantine) + 100
        );
        assert!(state.node_copy(byzantine, 2).is_none());
        assert!(state.node_copy(NodeId(0), 1).is_none());
        assert_eq!(state.copy_outputs(byzantine, 1).len(), 1);
        // The other nodes are split: each sees exactly one of the two values, both are seen,
        // and nobody can prove equivocation (no one gets both).
        let values: Vec<u64> = state
            .honest()
            .map(|id| state.node(id).values[&byzantine])
            .collect();
        let distinct: BTreeSet<u64> = values.iter().copied().collect();
        assert_eq!(
            distinct,
            BTreeSet::from([input_of(byzantine), input_of(byzantine) + 100])
        );
        assert!(state.faults().is_empty());
        assert_eq!(
            state.frames_sent(byzantine),
            8,
            "3 + 3 others, and each copy to itself"
        );
        saw.insert(values.iter().filter(|v| **v == input_of(byzantine)).count());
    }
    assert_eq!(
        saw,
        BTreeSet::from([3]),
        "copy 0 reaches half of the 6 others"
    );
}

#[test]
fn twins_both_reach_everyone_and_get_caught() {
    for seed in 0..20 {
        let twin = NodeId(3);
        let sim = run_toy(4, seed, BTreeMap::from([(twin, Strategy::Twins)])).unwrap();
        let state = sim.state();
        assert_eq!(state.frames_sent(twin), 8);
        assert_eq!(
            state.node_copy(twin, 1).unwrap().values[&twin],
            input_of(twin) + 100
        );
        for id in state.honest() {
            assert!(
                state
                    .faults()
                    .iter()
                    .any(|(reporter, fault)| *reporter == id
                        && fault.culprit == twin
                        && matches!(fault.kind, ToyFault::Equivocation { .. })),
                "{id} did not catch the twins"
            );
        }
    }
}

#[test]
fn invalid_shares_pass_through_the_corrupt_hook() {
    for seed in 0..20 {
        let bad = NodeId(0);
        let sim = run_toy(4, seed, BTreeMap::from([(bad, Strategy::InvalidShares)])).unwrap();
        let state = sim.state();
        for id in state.honest() {
            assert!(!state.node(id).values.contains_key(&bad));
            assert!(state.faults().iter().any(|(r, f)| *r == id
                && f.culprit == bad
                && matches!(f.kind, ToyFault::InvalidValue(v) if v >= VALUE_LIMIT)));
        }
        // Without hooks the strategy is harmless.
        let mut sim = Sim::new(
            SimConfig::new(4, seed),
            BTreeMap::from([(bad, Strategy::InvalidShares)]),
            |id, _| Toy::new(id, 4),
            Box::new(NoHooks),
        );
        give_inputs(&mut sim);
        sim.run(toy_invariant()).unwrap();
        assert!(sim.state().faults().is_empty());
        for id in sim.state().honest() {
            assert_eq!(sim.state().node(id).values.len(), 4);
        }
    }
}

#[test]
fn flooding_is_reported_and_bounded() {
    for seed in 0..10 {
        let flooder = NodeId(2);
        let sim = run_toy(4, seed, BTreeMap::from([(flooder, Strategy::FloodFuture)])).unwrap();
        let state = sim.state();
        let reports = state
            .faults()
            .iter()
            .filter(|(_, f)| {
                f.culprit == flooder && matches!(f.kind, ToyFault::FarFuture(r) if r >= 1_000_000)
            })
            .count() as u64;
        assert!(reports > 0);
        // The budget (32 events) times the per-event cap (2 messages) to 3 others, plus the
        // flooder's own 4 value frames.
        let sent = state.frames_sent(flooder);
        assert!(sent <= 32 * 2 * 3 + 4, "{sent} frames");
        assert!(
            reports >= sent - 4,
            "every future frame reaches an honest node and is reported"
        );
    }
}

#[test]
fn random_bytes_reach_the_body_parser_and_never_panic() {
    let mut body_errors = 0;
    let mut header_errors = 0;
    for seed in 0..100 {
        let sim = run_toy(
            4,
            seed,
            BTreeMap::from([(NodeId(1), Strategy::RandomBytes)]),
        )
        .unwrap();
        let state = sim.state();
        assert!(
            state.node(NodeId(1)).values.is_empty(),
            "its honest logic does not run"
        );
        for (reporter, from, error) in state.decode_failures() {
            assert!(state.is_honest(*reporter));
            assert_eq!(*from, NodeId(1));
            match error {
                DecodeError::BadMagic | DecodeError::Truncated { .. } => header_errors += 1,
                _ => body_errors += 1,
            }
        }
        assert!(state.frames_sent(NodeId(1)) <= 3 * 32);
    }
    assert!(
        body_errors > 100,
        "{body_errors} frames reached the body parser"
    );
    assert!(
        header_errors > 100,
        "{header_errors} frames failed in the header"
    );
}

#[test]
fn replayed_frames_are_attributed_to_the_replayer() {
    let replayer = NodeId(0);
    let mut caught = 0;
    for seed in 0..30 {
        let sim = run_toy(4, seed, BTreeMap::from([(replayer, Strategy::Replay)])).unwrap();
        let state = sim.state();
        assert!(
            state.frames_sent(replayer) > 4,
            "the replayer re-sends archived frames"
        );
        caught += state
            .faults()
            .iter()
            .filter(|(_, f)| {
                f.culprit == replayer && matches!(f.kind, ToyFault::Equivocation { .. })
            })
            .count();
    }
    assert!(
        caught > 0,
        "replaying another node's value as its own is an equivocation"
    );
}

#[test]
fn inputs_to_honest_nodes_report_local_errors() {
    let mut sim = toy_sim(
        SimConfig::new(4, 1),
        BTreeMap::from([(NodeId(3), Strategy::Silent)]),
    );
    sim.input(NodeId(0), |_| 5).unwrap();
    assert!(matches!(
        sim.input(NodeId(0), |_| 6),
        Err(ToyError::AlreadyProposed)
    ));
    // A silent node ignores inputs, so a second one is no error either.
    sim.input(NodeId(3), |_| 5).unwrap();
    sim.input(NodeId(3), |_| 5).unwrap();
}

#[test]
fn max_events_is_a_failure_with_a_replay_command() {
    let seed = 4242;
    let mut config = SimConfig::new(4, seed);
    config.max_events = 10;
    let mut sim = toy_sim(config, BTreeMap::new());
    give_inputs(&mut sim);
    let failure = sim.run(toy_invariant()).unwrap_err();
    assert_eq!(failure.seed, seed);
    assert_eq!(failure.event, 10);
    assert!(failure.reason.contains("no quiescence"), "{failure}");
    let shown = failure.to_string();
    assert!(shown.contains("seed 4242"), "{shown}");
    assert!(shown.contains("n = 4"), "{shown}");
    assert!(shown.contains("at event 10"), "{shown}");
    assert!(
        shown.contains(
            "MAFTIA_SIM_SEED=4242 cargo test --release -p maftia-sim --test sim -- \
             max_events_is_a_failure_with_a_replay_command --exact"
        ),
        "{shown}"
    );
}

#[test]
fn a_failing_invariant_stops_the_run_at_that_event() {
    let mut sim = toy_sim(SimConfig::new(4, 8), BTreeMap::new());
    give_inputs(&mut sim);
    let mut calls = 0;
    let failure = sim
        .run(|state| {
            calls += 1;
            if state.event_count() == 9 {
                Err("event nine".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert_eq!(
        calls, 5,
        "called after every delivery (4 inputs came first)"
    );
    assert_eq!(failure.event, 9);
    assert_eq!(failure.reason, "invariant violated: event nine");
    assert_eq!(sim.fail("later check").reason, "later check");
}

#[test]
#[should_panic(expected = "at most max_faulty = 1")]
fn too_many_byzantine_nodes_is_a_harness_error() {
    let byzantine = BTreeMap::from([(NodeId(0), Strategy::Silent), (NodeId(1), Strategy::Silent)]);
    toy_sim(SimConfig::new(4, 0), byzantine);
}

#[test]
#[should_panic(expected = "outside the group")]
fn byzantine_ids_must_be_members() {
    toy_sim(
        SimConfig::new(4, 0),
        BTreeMap::from([(NodeId(4), Strategy::Silent)]),
    );
}

#[test]
fn strategy_all_has_one_of_each() {
    let all = Strategy::all();
    assert_eq!(all.len(), 8);
    assert!(all.contains(&Strategy::CrashAt(3)));
    let picked = byzantine_nodes(10, 3, &Strategy::Replay, 7);
    assert_eq!(picked.len(), 3);
    assert_eq!(picked, byzantine_nodes(10, 3, &Strategy::Replay, 7));
    assert!(picked.values().all(|s| *s == Strategy::Replay));
}

/// Not a benchmark, a budget check: protocol crates run thousands of simulations per test run.
#[test]
fn a_thousand_small_runs_are_cheap() {
    let start = Instant::now();
    let mut events = 0;
    for i in 0..1000 {
        let seed = derived_seed(i);
        let byzantine = byzantine_nodes(10, 3, &Strategy::all()[i as usize % 8], seed);
        let sim = run_toy(10, seed, byzantine).unwrap();
        events += sim.events();
    }
    let elapsed = start.elapsed();
    eprintln!("1000 runs at n = 10: {events} events in {elapsed:?}");
}
