//! Group configuration, threshold key dealing and invariant checks shared by the simulator
//! tests. Each test file uses a subset of it.
#![allow(dead_code)]

use maftia_broadcast::ThresholdKeys;
use maftia_core::{GroupConfig, NodeId, Protocol};
use maftia_crypto::bls::{self, BlsThresholdSigner, KeySetId};
use maftia_crypto::threshold::ThresholdSigner;
use maftia_sim::insecure_crypto::InsecureThresholdSigner;
use maftia_sim::{byzantine_nodes, Sim, SimFailure, SimState, Strategy};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use std::collections::BTreeMap;
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
