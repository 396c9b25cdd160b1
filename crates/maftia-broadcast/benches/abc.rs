//! Atomic broadcast throughput: four in-process nodes with the real BLS threshold key sets and
//! Ed25519 identities, 250-byte requests, batch sizes 1, 100 and 1000.
//!
//! `cargo bench -p maftia-broadcast --bench abc` (add `-- --quick` for a shorter run). One
//! iteration submits `batch_size` fresh requests at every node and delivers every message
//! (first in, first out, no network and no encoding) until every node has delivered all
//! `4 · batch_size` of them — usually one round, sometimes two (a round's vector holds `n − f` or
//! more batches). Criterion's throughput line (`elem/s`) is delivered requests per second of
//! one core doing the work of all four nodes; a real deployment runs each node on its own host.
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use maftia_broadcast::abc::{Abc, AbcMessage, AbcParams};
use maftia_broadcast::ThresholdKeys;
use maftia_core::{GroupConfig, NodeId, Protocol, ProtocolStep};
use maftia_crypto::bls::{self, BlsThresholdSigner, KeySetId};
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

const N: usize = 4;
const F: usize = 1;
const REQUEST_SIZE: usize = 250;
const BATCH_SIZES: [usize; 3] = [1, 100, 1000];

type Signer = BlsThresholdSigner;
type Node = Abc<Signer>;
/// Messages in flight: (from, to, message).
type Queue = VecDeque<(NodeId, NodeId, AbcMessage<Signer>)>;

struct Setup {
    config: GroupConfig,
    keys: Vec<ThresholdKeys<Signer>>,
    identities: Vec<IdentityKey>,
    registry: Arc<Vec<IdentityPublicKey>>,
}

fn setup() -> Setup {
    let config = GroupConfig::asynchronous(N, F).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(0xabc);
    let mut deal = |id: KeySetId| -> Vec<Arc<Signer>> {
        let (public, secrets) = bls::deal(id, N, id.threshold(N, F), &mut rng).unwrap();
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
    let keys = (0..N)
        .map(|i| {
            ThresholdKeys::new(
                &config,
                NodeId(i as u16),
                coin[i].clone(),
                cbc[i].clone(),
                quorum[i].clone(),
            )
            .unwrap()
        })
        .collect();
    let identities: Vec<IdentityKey> = (0..N).map(|_| IdentityKey::generate(&mut rng)).collect();
    let registry = Arc::new(identities.iter().map(IdentityKey::public).collect());
    Setup {
        config,
        keys,
        identities,
        registry,
    }
}

fn params(batch_size: usize) -> AbcParams {
    AbcParams {
        batch_size,
        max_batch_bytes: batch_size * REQUEST_SIZE,
        max_request_size: REQUEST_SIZE,
        max_pending: 2 * batch_size,
        dedup_rounds: 8,
    }
}

/// Fresh nodes, each with `batch_size` requests submitted; returns the nodes and the messages
/// their inputs produced.
fn submitted(setup: &Setup, batch_size: usize) -> (Vec<Node>, Queue) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut nodes: Vec<Node> = (0..N)
        .map(|i| {
            Abc::new(
                setup.config,
                NodeId(i as u16),
                b"abc bench".to_vec(),
                setup.keys[i].clone(),
                setup.identities[i].clone(),
                setup.registry.clone(),
                params(batch_size),
            )
            .unwrap()
        })
        .collect();
    let mut queue = VecDeque::new();
    for (i, node) in nodes.iter_mut().enumerate() {
        for k in 0..batch_size {
            let mut request = vec![0u8; REQUEST_SIZE];
            request[..16].copy_from_slice(&(i as u64).to_le_bytes().repeat(2));
            request[16..24].copy_from_slice(&(k as u64).to_le_bytes());
            let step = node.handle_input(request, &mut rng).unwrap();
            enqueue(NodeId(i as u16), step, &mut queue);
        }
    }
    (nodes, queue)
}

fn enqueue(from: NodeId, step: ProtocolStep<Node>, queue: &mut Queue) -> usize {
    for message in step.messages {
        for to in message.target.recipients(from, N) {
            queue.push_back((from, to, message.message.clone()));
        }
    }
    step.outputs.iter().map(|d| d.requests.len()).sum()
}

/// Deliver every message until quiescence; returns the requests node 0 delivered.
fn run(mut nodes: Vec<Node>, mut queue: Queue) -> usize {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut delivered = 0;
    while let Some((from, to, message)) = queue.pop_front() {
        let step = nodes[to.index()].handle_message(from, message, &mut rng);
        let count = enqueue(to, step, &mut queue);
        if to == NodeId(0) {
            delivered += count;
        }
    }
    delivered
}

fn throughput(c: &mut Criterion) {
    let setup = setup();
    let mut group = c.benchmark_group("abc n=4 250-byte requests");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for batch_size in BATCH_SIZES {
        // Sanity: every request is delivered (at node 0) in an iteration.
        let (nodes, queue) = submitted(&setup, batch_size);
        assert_eq!(run(nodes, queue), N * batch_size);
        group.throughput(Throughput::Elements((N * batch_size) as u64));
        group.bench_with_input(
            BenchmarkId::new("delivered requests, batch size", batch_size),
            &batch_size,
            |b, &batch_size| {
                b.iter_batched(
                    || submitted(&setup, batch_size),
                    |(nodes, queue)| run(nodes, queue),
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
