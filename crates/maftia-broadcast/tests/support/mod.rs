//! Group configuration and threshold key dealing shared by the simulator tests.
use maftia_broadcast::ThresholdKeys;
use maftia_core::{GroupConfig, NodeId};
use maftia_crypto::bls::{self, BlsThresholdSigner, KeySetId};
use maftia_sim::insecure_crypto::InsecureThresholdSigner;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

/// The largest `f` a group of `n` tolerates.
fn faulty(n: usize) -> usize {
    (n - 1) / 3
}

pub fn config(n: usize) -> GroupConfig {
    GroupConfig::asynchronous(n, faulty(n)).unwrap()
}

/// The insecure threshold key sets of a group, one bundle per node; `tag` names the test so
/// key sets of different tests never coincide.
pub fn insecure_keys(n: usize, tag: &str) -> Vec<ThresholdKeys<InsecureThresholdSigner>> {
    let group = config(n);
    let coin = InsecureThresholdSigner::deal(n, group.one_honest(), &format!("{tag} coin"));
    let cbc = InsecureThresholdSigner::deal(n, group.echo_quorum(), &format!("{tag} cbc"));
    let quorum = InsecureThresholdSigner::deal(n, group.quorum(), &format!("{tag} quorum"));
    (0..n)
        .map(|i| {
            ThresholdKeys::new(
                &group,
                NodeId(i as u16),
                Arc::new(coin[i].clone()),
                Arc::new(cbc[i].clone()),
                Arc::new(quorum[i].clone()),
            )
            .unwrap()
        })
        .collect()
}

/// Real BLS threshold key sets of a group, dealt deterministically from `seed`.
pub fn bls_keys(n: usize, seed: u64) -> Vec<ThresholdKeys<BlsThresholdSigner>> {
    let group = config(n);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut deal = |id: KeySetId| -> Vec<Arc<BlsThresholdSigner>> {
        let (public, secrets) = bls::deal(id, n, id.threshold(n, group.f()), &mut rng).unwrap();
        let public = Arc::new(public);
        secrets
            .into_iter()
            .map(|s| Arc::new(BlsThresholdSigner::new(public.clone(), s).unwrap()))
            .collect()
    };
    let (coin, cbc, quorum) = (
        deal(KeySetId::Coin),
        deal(KeySetId::Cbc),
        deal(KeySetId::Quorum),
    );
    (0..n)
        .map(|i| {
            ThresholdKeys::new(
                &group,
                NodeId(i as u16),
                coin[i].clone(),
                cbc[i].clone(),
                quorum[i].clone(),
            )
            .unwrap()
        })
        .collect()
}
