//! Group configuration, threshold key dealing and invariant checks shared by the simulator
//! tests. Each test file uses a subset of it.
#![allow(dead_code)]

use maftia_broadcast::abc::AbcDelivery;
use maftia_broadcast::ThresholdKeys;
use maftia_core::{GroupConfig, NodeId, Protocol};
use maftia_crypto::bls::{self, BlsThresholdSigner, KeySetId};
use maftia_crypto::threshold::ThresholdSigner;
use maftia_sim::insecure_crypto::InsecureThresholdSigner;
use maftia_sim::{byzantine_nodes, Sim, SimFailure, SimState, Strategy};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;

/// The largest `f` a group of `n` tolerates.
pub fn faulty(n: usize) -> usize {
    (n - 1) / 3
}

pub fn config(n: usize) -> GroupConfig {
    GroupConfig::asynchronous(n, faulty(n)).unwrap()
}

/// The Byzantine nodes of a run — `faulty(n)` nodes following `strategy`, chosen by
/// [`byzantine_nodes`] from `seed`; none for an honest run (`strategy` is `None`) — and the
/// honest nodes, by increasing id.
pub fn faulty_set(
    n: usize,
    strategy: Option<&Strategy>,
    seed: u64,
) -> (BTreeMap<NodeId, Strategy>, Vec<NodeId>) {
    let byzantine = match strategy {
        Some(strategy) => byzantine_nodes(n, faulty(n), strategy, seed),
        None => BTreeMap::new(),
    };
    let honest = NodeId::all(n)
        .filter(|id| !byzantine.contains_key(id))
        .collect();
    (byzantine, honest)
}

/// One handle per node on each of the three key sets of a group.
pub struct KeySets<S> {
    pub coin: Vec<Arc<S>>,
    pub cbc: Vec<Arc<S>>,
    pub quorum: Vec<Arc<S>>,
}

impl<S> Clone for KeySets<S> {
    fn clone(&self) -> Self {
        KeySets {
            coin: self.coin.clone(),
            cbc: self.cbc.clone(),
            quorum: self.quorum.clone(),
        }
    }
}

impl<S: ThresholdSigner> KeySets<S> {
    /// The group size.
    pub fn n(&self) -> usize {
        self.coin.len()
    }

    /// Node `id`'s bundle of the three key sets.
    pub fn keys(&self, id: NodeId) -> ThresholdKeys<S> {
        let i = id.index();
        ThresholdKeys::new(
            &config(self.n()),
            id,
            self.coin[i].clone(),
            self.cbc[i].clone(),
            self.quorum[i].clone(),
        )
        .unwrap()
    }

    /// Every node's bundle, by node index.
    pub fn bundles(&self) -> Vec<ThresholdKeys<S>> {
        NodeId::all(self.n()).map(|id| self.keys(id)).collect()
    }
}

/// One insecure key set of threshold `threshold` named `name`, one handle per node.
pub fn insecure_key_set(
    n: usize,
    threshold: usize,
    name: &str,
) -> Vec<Arc<InsecureThresholdSigner>> {
    InsecureThresholdSigner::deal(n, threshold, name)
        .into_iter()
        .map(Arc::new)
        .collect()
}

/// The insecure coin, CBC and quorum key sets of a group, named `names` (in that order; the
/// names decide the signatures, so a test that keeps its names keeps its runs).
pub fn insecure_key_sets(n: usize, names: [&str; 3]) -> KeySets<InsecureThresholdSigner> {
    let group = config(n);
    let [coin, cbc, quorum] = names;
    KeySets {
        coin: insecure_key_set(n, group.one_honest(), coin),
        cbc: insecure_key_set(n, group.echo_quorum(), cbc),
        quorum: insecure_key_set(n, group.quorum(), quorum),
    }
}

/// The insecure threshold key sets of a group, one bundle per node; `tag` names the test so
/// key sets of different tests never coincide.
pub fn insecure_keys(n: usize, tag: &str) -> Vec<ThresholdKeys<InsecureThresholdSigner>> {
    insecure_key_sets(
        n,
        [
            &format!("{tag} coin"),
            &format!("{tag} cbc"),
            &format!("{tag} quorum"),
        ],
    )
    .bundles()
}

/// One real BLS key set `id` of a group of `n` (its threshold for `f = faulty(n)`) from the
/// trusted dealer, one handle per node.
pub fn bls_key_set(id: KeySetId, n: usize, rng: &mut impl RngCore) -> Vec<Arc<BlsThresholdSigner>> {
    let (public, secrets) = bls::deal(id, n, id.threshold(n, faulty(n)), rng).unwrap();
    let public = Arc::new(public);
    secrets
        .into_iter()
        .map(|s| Arc::new(BlsThresholdSigner::new(public.clone(), s).unwrap()))
        .collect()
}

/// Real BLS coin, CBC and quorum key sets of a group, dealt (in that order) from `seed`.
pub fn bls_key_sets(n: usize, seed: u64) -> KeySets<BlsThresholdSigner> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let coin = bls_key_set(KeySetId::Coin, n, &mut rng);
    let cbc = bls_key_set(KeySetId::Cbc, n, &mut rng);
    let quorum = bls_key_set(KeySetId::Quorum, n, &mut rng);
    KeySets { coin, cbc, quorum }
}

/// Real BLS threshold key sets of a group, dealt deterministically from `seed`.
pub fn bls_keys(n: usize, seed: u64) -> Vec<ThresholdKeys<BlsThresholdSigner>> {
    bls_key_sets(n, seed).bundles()
}

/// Agreement: the honest nodes' first outputs agree on `value(output)`.
pub fn check_agreement<'s, P: Protocol, V: PartialEq + Debug>(
    state: &'s SimState<P>,
    value: impl Fn(&'s P::Output) -> V,
) -> Result<(), String> {
    let mut first: Option<(NodeId, V)> = None;
    for id in state.honest() {
        let Some(output) = state.outputs(id).first() else {
            continue;
        };
        let output = value(output);
        match &first {
            Some((other, earlier)) if *earlier != output => {
                return Err(format!(
                    "agreement: {other} output {earlier:?}, {id} output {output:?}"
                ))
            }
            Some(_) => {}
            None => first = Some((id, output)),
        }
    }
    Ok(())
}

/// No honest node has accused an honest node.
pub fn check_no_honest_accused<P: Protocol>(state: &SimState<P>) -> Result<(), String> {
    match state
        .faults()
        .iter()
        .find(|(_, f)| state.is_honest(f.culprit))
    {
        Some((reporter, fault)) => Err(format!(
            "{reporter} accused honest {}: {:?}",
            fault.culprit, fault.kind
        )),
        None => Ok(()),
    }
}

/// At the end of a run: every frame an honest node sent decoded, and a run without Byzantine
/// nodes (`honest_run`) recorded no fault and no decode failure at all.
pub fn check_clean_evidence<P: Protocol>(sim: &Sim<P>, honest_run: bool) -> Result<(), SimFailure> {
    let state = sim.state();
    if let Some((reporter, sender, e)) = state
        .decode_failures()
        .iter()
        .find(|(_, from, _)| state.is_honest(*from))
    {
        return Err(sim.fail(format!(
            "{reporter} could not decode a frame from honest {sender}: {e}"
        )));
    }
    if honest_run && (!state.faults().is_empty() || !state.decode_failures().is_empty()) {
        return Err(sim.fail(format!(
            "an honest run recorded faults: {:?}",
            state.faults()
        )));
    }
    Ok(())
}

/// Prefix of every request (or label) a Byzantine node may get delivered.
pub const BYZANTINE_TAG: &[u8] = b"byz";

/// The requests of a run: node -> copy -> requests (a node without Byzantine copies has one).
pub type Inputs = BTreeMap<NodeId, Vec<Vec<Vec<u8>>>>;

/// The honest nodes' requests of a run of `seed`: `per_node` of each honest node's own, then
/// `shared` requests each submitted at two honest nodes (one if there is only one); and the set
/// of all of them.
pub fn honest_requests(
    seed: u64,
    honest: &[NodeId],
    per_node: usize,
    shared: usize,
) -> (Inputs, BTreeSet<Vec<u8>>) {
    let mut inputs = Inputs::new();
    for id in honest {
        let own: Vec<Vec<u8>> = (0..per_node)
            .map(|k| format!("seed {seed} {id} request {k}").into_bytes())
            .collect();
        inputs.insert(*id, vec![own]);
    }
    for j in 0..shared {
        let request = format!("seed {seed} shared {j}").into_bytes();
        let at: BTreeSet<NodeId> = [honest[j % honest.len()], honest[(j + 1) % honest.len()]]
            .into_iter()
            .collect();
        for id in at {
            inputs.get_mut(&id).unwrap()[0].push(request.clone());
        }
    }
    let mut submitted_at_honest = BTreeSet::new();
    for requests in inputs.values() {
        submitted_at_honest.extend(requests[0].iter().cloned());
    }
    (inputs, submitted_at_honest)
}

/// Submits `inputs` in node order, the `k`-th request of every copy at once; a copy with fewer
/// requests re-submits its last one (refused as already pending). Only an honest node's refusal
/// fails the run.
pub fn submit_inputs<P: Protocol<Input = Vec<u8>>>(
    sim: &mut Sim<P>,
    inputs: &Inputs,
    byzantine: &BTreeMap<NodeId, Strategy>,
) -> Result<(), SimFailure> {
    for (id, copies) in inputs {
        let count = copies.iter().map(Vec::len).max().unwrap_or(0);
        for k in 0..count {
            let result = sim.input(*id, |copy| {
                let requests = &copies[copy.min(copies.len() - 1)];
                requests[k.min(requests.len() - 1)].clone()
            });
            if let Err(e) = result {
                if !byzantine.contains_key(id) {
                    return Err(sim.fail(format!("{id} refused a request: {e}")));
                }
            }
        }
    }
    Ok(())
}

/// Checks, event by event, that no honest node accuses an honest node; each fault is looked at
/// once.
#[derive(Debug, Default)]
pub struct FaultCursor {
    checked: usize,
}

impl FaultCursor {
    /// The faults recorded since the last call accuse no honest node.
    pub fn check_new<P: Protocol>(&mut self, state: &SimState<P>) -> Result<(), String> {
        for (reporter, fault) in &state.faults()[self.checked..] {
            if state.is_honest(fault.culprit) {
                return Err(format!(
                    "{reporter} accused honest {}: {:?}",
                    fault.culprit, fault.kind
                ));
            }
        }
        self.checked = state.faults().len();
        Ok(())
    }
}

/// How often (every `every` events) and against which bound a run checks every honest node's
/// `stored_messages`.
#[derive(Clone, Copy, Debug)]
pub struct StoredCheck {
    pub bound: usize,
    pub every: u64,
}

impl StoredCheck {
    /// On every `every`-th event: every honest node's `stored(node)` is within the bound;
    /// `max_stored` keeps the largest count seen.
    pub fn check<P: Protocol>(
        &self,
        state: &SimState<P>,
        stored: impl Fn(&P) -> usize,
        max_stored: &mut usize,
    ) -> Result<(), String> {
        if state.event_count() % self.every == 0 {
            for id in state.honest() {
                let count = stored(state.node(id));
                *max_stored = (*max_stored).max(count);
                if count > self.bound {
                    return Err(format!(
                        "{id} stores {count} messages, above the bound {}",
                        self.bound
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The agreed sequence of an atomic broadcast run's deliveries (one per `unit`: round, epoch),
/// built from the honest nodes' deliveries as they appear, and the requests delivered so far.
#[derive(Debug)]
pub struct DeliveryLog {
    /// What a delivery is for: "round" or "epoch".
    unit: &'static str,
    pub agreed: Vec<AbcDelivery>,
    pub delivered_once: BTreeSet<Vec<u8>>,
    /// Each honest node's checked prefix.
    checked: BTreeMap<NodeId, usize>,
}

impl DeliveryLog {
    pub fn new(unit: &'static str) -> Self {
        DeliveryLog {
            unit,
            agreed: Vec::new(),
            delivered_once: BTreeSet::new(),
            checked: BTreeMap::new(),
        }
    }

    /// `id`'s deliveries not checked yet: **total order** (the `i`-th is for `unit` `i`),
    /// **agreement** (it equals every other honest node's `i`-th), and, for the first one at
    /// its position, **integrity** (every request was submitted at an honest node or is tagged
    /// [`BYZANTINE_TAG`], and none is delivered twice).
    pub fn check_node(
        &mut self,
        id: NodeId,
        outputs: &[AbcDelivery],
        submitted_at_honest: &BTreeSet<Vec<u8>>,
    ) -> Result<(), String> {
        let unit = self.unit;
        let done = self.checked.entry(id).or_insert(0);
        for (index, delivery) in outputs.iter().enumerate().skip(*done) {
            if delivery.round != index as u64 {
                return Err(format!(
                    "total order: {id}'s delivery #{index} is for {unit} {}",
                    delivery.round
                ));
            }
            match self.agreed.get(index) {
                Some(first) if first != delivery => {
                    return Err(format!(
                        "agreement: {id} delivered {delivery:?} in {unit} {index}, another \
                         honest node {first:?}"
                    ))
                }
                Some(_) => {}
                None => {
                    for request in &delivery.requests {
                        if !submitted_at_honest.contains(request)
                            && !request.starts_with(BYZANTINE_TAG)
                        {
                            return Err(format!(
                                "integrity: {id} delivered {:?}, which nobody submitted",
                                String::from_utf8_lossy(request)
                            ));
                        }
                        if !self.delivered_once.insert(request.clone()) {
                            return Err(format!(
                                "integrity: {:?} delivered twice",
                                String::from_utf8_lossy(request)
                            ));
                        }
                    }
                    self.agreed.push(delivery.clone());
                }
            }
        }
        *done = outputs.len();
        Ok(())
    }

    /// At quiescence: **validity** (no honest node has `pending(node)` requests left and every
    /// request submitted at an honest node was delivered) and **termination** (every honest node
    /// delivered the agreed sequence's length).
    pub fn check_quiescence<P: Protocol<Output = AbcDelivery>>(
        &self,
        sim: &Sim<P>,
        submitted_at_honest: &BTreeSet<Vec<u8>>,
        pending: impl Fn(&P) -> usize,
    ) -> Result<(), SimFailure> {
        let state = sim.state();
        for id in state.honest() {
            let pending = pending(state.node(id));
            if pending != 0 {
                return Err(sim.fail(format!(
                    "validity: {id} still has {pending} pending requests at quiescence"
                )));
            }
            if state.outputs(id).len() != self.agreed.len() {
                return Err(sim.fail(format!(
                    "termination: {id} delivered {} {}s, another honest node {}",
                    state.outputs(id).len(),
                    self.unit,
                    self.agreed.len()
                )));
            }
        }
        if let Some(missing) = submitted_at_honest
            .iter()
            .find(|r| !self.delivered_once.contains(*r))
        {
            return Err(sim.fail(format!(
                "validity: {:?} was never delivered",
                String::from_utf8_lossy(missing)
            )));
        }
        Ok(())
    }

    /// How many of the delivered requests are of Byzantine origin.
    pub fn byzantine_delivered(&self) -> usize {
        self.delivered_once
            .iter()
            .filter(|r| r.starts_with(BYZANTINE_TAG))
            .count()
    }
}

/// The faults of a run, counted by `kind(fault)`.
pub fn fault_kinds<P: Protocol>(
    state: &SimState<P>,
    kind: impl Fn(&P::FaultKind) -> &'static str,
) -> BTreeMap<&'static str, usize> {
    let mut kinds = BTreeMap::new();
    for (_, fault) in state.faults() {
        *kinds.entry(kind(&fault.kind)).or_insert(0) += 1;
    }
    kinds
}

/// Adds one run of `strategy` to `totals`: its faults by kind (keys "`{strategy:?} {kind}`")
/// and its delivered Byzantine requests (key "`{strategy:?} byzantine requests`").
pub fn tally_evidence(
    totals: &mut BTreeMap<String, usize>,
    strategy: &Strategy,
    fault_kinds: BTreeMap<&'static str, usize>,
    byzantine_delivered: usize,
) {
    for (kind, count) in fault_kinds {
        *totals.entry(format!("{strategy:?} {kind}")).or_insert(0) += count;
    }
    *totals
        .entry(format!("{strategy:?} byzantine requests"))
        .or_insert(0) += byzantine_delivered;
}

/// Prints `totals` under `label`, then asserts that each of `expected` was seen over the
/// seeds (nothing to assert when `totals` is empty: a single replayed seed of another test).
pub fn assert_evidence_seen(label: &str, totals: &BTreeMap<String, usize>, expected: &[&str]) {
    eprintln!("{label}: {totals:?}");
    if totals.is_empty() {
        return;
    }
    for key in expected {
        assert!(
            totals.get(*key).copied().unwrap_or(0) > 0,
            "no {key} over the seeds: {totals:?}"
        );
    }
}
