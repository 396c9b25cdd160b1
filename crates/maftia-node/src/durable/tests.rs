//! Kill-at-every-point tests of the durable driver: a 4-node in-memory ABC cluster (FIFO links,
//! no tokio) in which nodes are dropped and rebuilt from their redb files at random points.
use super::*;
use maftia_broadcast::abc::{Abc, AbcParams};
use maftia_broadcast::ThresholdKeys;
use maftia_core::{GroupConfig, NodeId};
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_sim::insecure_crypto::InsecureThresholdSigner;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

const N: usize = 4;
type TestAbc = Abc<InsecureThresholdSigner>;

struct Group {
    config: GroupConfig,
    keys: Vec<ThresholdKeys<InsecureThresholdSigner>>,
    identities: Vec<IdentityKey>,
    registry: Arc<Vec<IdentityPublicKey>>,
}

impl Group {
    fn new(rng: &mut ChaCha8Rng) -> Self {
        let config = GroupConfig::asynchronous(N, 1).unwrap();
        let coin = InsecureThresholdSigner::deal(N, config.one_honest(), "durable coin");
        let cbc = InsecureThresholdSigner::deal(N, config.echo_quorum(), "durable cbc");
        let quorum = InsecureThresholdSigner::deal(N, config.quorum(), "durable quorum");
        let keys = (0..N)
            .map(|i| {
                ThresholdKeys::new(
                    &config,
                    NodeId(i as u16),
                    Arc::new(coin[i].clone()),
                    Arc::new(cbc[i].clone()),
                    Arc::new(quorum[i].clone()),
                )
                .unwrap()
            })
            .collect();
        let identities: Vec<IdentityKey> = (0..N).map(|_| IdentityKey::generate(rng)).collect();
        let registry = Arc::new(identities.iter().map(IdentityKey::public).collect());
        Group {
            config,
            keys,
            identities,
            registry,
        }
    }

    fn protocol(&self, i: usize) -> TestAbc {
        let params = AbcParams {
            batch_size: 4,
            ..AbcParams::default()
        };
        Abc::new(
            self.config,
            NodeId(i as u16),
            b"durable test".to_vec(),
            self.keys[i].clone(),
            IdentityKey::from_bytes(&self.identities[i].to_bytes()),
            self.registry.clone(),
            params,
        )
        .unwrap()
    }
}

fn options() -> DurableOptions {
    DurableOptions {
        outbox_frames: usize::MAX,
        outbox_bytes: usize::MAX,
    }
}

fn open(group: &Group, path: &Path, i: usize) -> (DurableReplica<TestAbc>, Recovery<TestAbc>) {
    DurableReplica::open(path, group.protocol(i), N, [7; 32], options()).unwrap()
}

/// How a node is killed.
#[derive(Clone, Copy, Debug)]
enum Crash {
    /// Between batches.
    Idle,
    /// After the batch is logged and run, before anything it produced is sent.
    BeforeSend,
    /// While taking a batch: its events are lost (never logged); peers must re-send them.
    BeforeCommit,
}

/// (height, chain head, requests) of one delivery.
type Delivery = (u64, Digest, Vec<Vec<u8>>);

struct Cluster {
    group: Group,
    paths: Vec<PathBuf>,
    nodes: Vec<Option<DurableReplica<TestAbc>>>,
    queues: Vec<VecDeque<Event<Vec<u8>>>>,
    /// Every frame node i actually sent to node j, in order, across incarnations.
    sent: Vec<Vec<Vec<Bytes>>>,
    /// (height, chain) of every delivery each node made, across incarnations.
    deliveries: Vec<Vec<Delivery>>,
    faults: Vec<String>,
}

impl Cluster {
    fn new(seed: u64, dir: &Path) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let group = Group::new(&mut rng);
        let paths: Vec<PathBuf> = (0..N).map(|i| dir.join(format!("node-{i}.redb"))).collect();
        let nodes = (0..N).map(|i| Some(open(&group, &paths[i], i).0)).collect();
        Cluster {
            group,
            paths,
            nodes,
            queues: vec![VecDeque::new(); N],
            sent: vec![vec![Vec::new(); N]; N],
            deliveries: vec![Vec::new(); N],
            faults: Vec::new(),
        }
    }

    fn route(&mut self, from: usize, outgoing: Vec<Outgoing>) {
        for item in outgoing {
            for to in item.to {
                self.sent[from][to.index()].push(item.frame.clone());
                self.queues[to.index()].push_back(Event::Message {
                    from: NodeId(from as u16),
                    frame: item.frame.clone(),
                });
            }
        }
    }

    fn record(&mut self, i: usize, outcome: &BatchOutcome<TestAbc>) {
        for d in &outcome.delivered {
            self.deliveries[i].push((d.height, d.chain, d.output.requests.clone()));
        }
        for f in &outcome.faults {
            self.faults.push(format!("node {i}: {f:?}"));
        }
        assert!(
            outcome.rejected.is_empty(),
            "honest frames rejected: {:?}",
            outcome.rejected
        );
    }

    /// Take up to `k` events from node i's queue and process them.
    fn step(&mut self, i: usize, k: usize, crash: Option<Crash>) {
        let take = k.min(self.queues[i].len());
        let batch: Vec<_> = self.queues[i].drain(..take).collect();
        if let Some(Crash::BeforeCommit) = crash {
            drop(batch);
            self.restart(i, true);
            return;
        }
        let node = self.nodes[i].as_mut().unwrap();
        let outcome = node.process_batch(batch).unwrap();
        self.record(i, &outcome);
        match crash {
            Some(Crash::BeforeSend) => self.restart(i, false),
            Some(Crash::Idle) => {
                self.route(i, outcome.outgoing);
                self.restart(i, false);
            }
            _ => self.route(i, outcome.outgoing),
        }
    }

    /// Drop node i's driver and rebuild it from its database. Its replayed messages must extend,
    /// byte for byte, what it sent before; the never-sent tail is sent now. If events were lost,
    /// the peers re-send their outbox to it (what the runtime's resync request does).
    fn restart(&mut self, i: usize, events_lost: bool) {
        let before = self.nodes[i].take().unwrap();
        let (height, chain) = (before.height(), before.chain_head());
        drop(before);
        let (node, recovery) = open(&self.group, &self.paths[i], i);
        assert!(node.height() >= height);
        if node.height() == height {
            assert_eq!(node.chain_head(), chain);
        }
        for (peer, frames) in recovery.resend {
            let already = &self.sent[i][peer.index()];
            assert!(
                frames.len() >= already.len() && frames[..already.len()] == already[..],
                "node {i} after restart regenerates different messages to {peer}"
            );
            let fresh: Vec<Bytes> = frames[already.len()..].to_vec();
            for frame in fresh {
                self.sent[i][peer.index()].push(frame.clone());
                self.queues[peer.index()].push_back(Event::Message {
                    from: NodeId(i as u16),
                    frame,
                });
            }
        }
        if events_lost {
            for j in (0..N).filter(|j| *j != i) {
                let frames = self.nodes[j].as_ref().unwrap().outbox_for(NodeId(i as u16));
                for frame in frames {
                    self.queues[i].push_back(Event::Message {
                        from: NodeId(j as u16),
                        frame,
                    });
                }
            }
        }
        self.nodes[i] = Some(node);
    }
}

fn run(seed: u64, requests: usize, crash_percent: u32) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(seed, dir.path());
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xdead);
    let all: BTreeSet<Vec<u8>> = (0..requests)
        .map(|r| format!("request {r}").into_bytes())
        .collect();
    for request in &all {
        // Each request at two nodes (f + 1), so it is in every decided vector's batches soon.
        let a = rng.gen_range(0..N);
        for i in [a, (a + 1) % N] {
            cluster.queues[i].push_back(Event::Input(request.clone()));
        }
    }
    let mut crashes = 0;
    for _ in 0..200_000 {
        let done = (0..N).all(|i| {
            let got: BTreeSet<Vec<u8>> = cluster.deliveries[i]
                .iter()
                .flat_map(|(_, _, r)| r.iter().cloned())
                .collect();
            got == all
        });
        if done && cluster.queues.iter().all(VecDeque::is_empty) {
            break;
        }
        let ready: Vec<usize> = (0..N).filter(|i| !cluster.queues[*i].is_empty()).collect();
        assert!(
            !ready.is_empty(),
            "seed {seed}: cluster stalled before delivering everything"
        );
        let i = ready[rng.gen_range(0..ready.len())];
        let crash = if rng.gen_ratio(crash_percent, 100) {
            crashes += 1;
            Some(match rng.gen_range(0..3) {
                0 => Crash::Idle,
                1 => Crash::BeforeSend,
                _ => Crash::BeforeCommit,
            })
        } else {
            None
        };
        let k = rng.gen_range(1..=8);
        cluster.step(i, k, crash);
    }
    assert!(crashes > 0 || crash_percent == 0);
    eprintln!(
        "seed {seed}: {crashes} crashes, heights {:?}, events logged {:?}",
        cluster.deliveries.iter().map(Vec::len).collect::<Vec<_>>(),
        cluster
            .nodes
            .iter()
            .map(|n| n.as_ref().map(|n| n.logged_events()))
            .collect::<Vec<_>>()
    );
    // Keep the tempdir alive until the end of the checks by moving the paths' parent check here.
    drop(dir);
    cluster
}

fn check_agreement(cluster: &Cluster, seed: u64) {
    for i in 0..N {
        let heights: Vec<u64> = cluster.deliveries[i].iter().map(|d| d.0).collect();
        let expected: Vec<u64> = (0..heights.len() as u64).collect();
        assert_eq!(
            heights, expected,
            "seed {seed}: node {i} delivered with gaps or repeats"
        );
    }
    let reference = &cluster.deliveries[0];
    for i in 1..N {
        let common = reference.len().min(cluster.deliveries[i].len());
        assert_eq!(
            reference[..common],
            cluster.deliveries[i][..common],
            "seed {seed}: nodes 0 and {i} delivered different sequences"
        );
    }
    assert!(
        !cluster.faults.iter().any(|f| f.contains("Equivocat")),
        "seed {seed}: equivocation evidence among honest nodes: {:?}",
        cluster.faults
    );
}

#[test]
fn cluster_without_crashes_agrees() {
    let cluster = run(1, 12, 0);
    check_agreement(&cluster, 1);
    assert!(cluster.faults.is_empty(), "{:?}", cluster.faults);
}

#[test]
fn nodes_killed_at_random_points_never_contradict_themselves_and_agree() {
    for seed in 10..16 {
        let cluster = run(seed, 16, 4);
        check_agreement(&cluster, seed);
    }
}

#[test]
fn reopening_reports_the_same_state_and_bumps_the_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let group = Group::new(&mut rng);
    let path = dir.path().join("one.redb");
    let (mut node, recovery) = open(&group, &path, 0);
    assert_eq!(recovery.incarnation, 1);
    assert_eq!(recovery.replayed_events, 0);
    let outcome = node
        .process_batch(vec![Event::Input(b"hello".to_vec())])
        .unwrap();
    assert_eq!(outcome.input_results.len(), 1);
    assert!(outcome.input_results[0].is_ok());
    // The batch it signed went to the three others, once.
    assert_eq!(outcome.outgoing.len(), 1);
    assert_eq!(outcome.outgoing[0].to.len(), N - 1);
    let sent = outcome.outgoing[0].frame.clone();
    drop(node);
    let (node, recovery) = open(&group, &path, 0);
    assert_eq!(recovery.incarnation, 2);
    assert_eq!(recovery.replayed_events, 1);
    assert_eq!(node.logged_events(), 1);
    for (_, frames) in &recovery.resend {
        assert_eq!(frames, &vec![sent.clone()]);
    }
    drop(node);
    // Another node id, or another group, cannot use this database.
    let wrong_id = DurableReplica::open(&path, group.protocol(1), N, [7; 32], options());
    assert!(matches!(wrong_id, Err(DurableError::WrongOwner { .. })));
    let wrong_group = DurableReplica::open(&path, group.protocol(0), N, [8; 32], options());
    assert!(matches!(wrong_group, Err(DurableError::WrongOwner { .. })));
}

#[test]
fn undecodable_and_misaddressed_frames_are_evidence_not_log_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let group = Group::new(&mut rng);
    let (mut node, _) = open(&group, &dir.path().join("x.redb"), 0);
    let outcome = node
        .process_batch(vec![
            Event::Message {
                from: NodeId(1),
                frame: Bytes::from_static(b"garbage"),
            },
            Event::Message {
                from: NodeId(9),
                frame: Bytes::from_static(b"MF\x01\x00"),
            },
            Event::Message {
                from: NodeId(0),
                frame: Bytes::from_static(b"MF\x01\x00"),
            },
        ])
        .unwrap();
    assert_eq!(outcome.rejected.len(), 3);
    assert!(matches!(
        outcome.rejected[0],
        (NodeId(1), Rejection::Undecodable(_))
    ));
    assert_eq!(outcome.rejected[1], (NodeId(9), Rejection::NotAMember));
    assert_eq!(outcome.rejected[2], (NodeId(0), Rejection::FromSelf));
    assert_eq!(node.logged_events(), 0);
}

#[test]
fn a_tampered_delivery_is_detected_as_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(5, dir.path());
    for (i, q) in cluster.queues.iter_mut().enumerate() {
        q.push_back(Event::Input(format!("r{i}").into_bytes()));
    }
    for _ in 0..5000 {
        if cluster.deliveries.iter().all(|d| !d.is_empty()) {
            break;
        }
        let ready: Vec<usize> = (0..N).filter(|i| !cluster.queues[*i].is_empty()).collect();
        cluster.step(ready[0], 8, None);
    }
    assert!(!cluster.deliveries[0].is_empty());
    let node = cluster.nodes[0].take().unwrap();
    drop(node);
    {
        let database = Database::create(&cluster.paths[0]).unwrap();
        let txn = database.begin_write().unwrap();
        {
            let mut table = txn.open_table(DELIVERED).unwrap();
            let mut value = table.get(0).unwrap().unwrap().value().to_vec();
            let last = value.len() - 1;
            value[last] ^= 1;
            table.insert(0, value.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let reopened = DurableReplica::open(
        &cluster.paths[0],
        cluster.group.protocol(0),
        N,
        [7; 32],
        options(),
    );
    assert!(matches!(
        reopened,
        Err(DurableError::Corruption { height: 0 })
    ));
}

/// A toy protocol that draws randomness: each input is sent on with a fresh random nonce, each
/// message received is delivered. Replays must draw the same nonces (the persisted seed).
struct RandomRelay {
    id: NodeId,
}

#[derive(Clone, Debug, PartialEq)]
struct Relayed(u64, Vec<u8>);

impl DurableOutput for Relayed {
    fn encode_output(&self) -> Vec<u8> {
        let mut out = self.0.to_le_bytes().to_vec();
        out.extend_from_slice(&self.1);
        out
    }
    fn request_count(&self) -> usize {
        1
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Protocol for RandomRelay {
    type Message = (u64, Vec<u8>);
    type Input = Vec<u8>;
    type Output = Relayed;
    type FaultKind = ();
    type Error = Never;

    fn our_id(&self) -> NodeId {
        self.id
    }
    fn handle_input(
        &mut self,
        input: Vec<u8>,
        rng: &mut dyn RngCore,
    ) -> Result<maftia_core::ProtocolStep<Self>, Never> {
        let mut step = maftia_core::Step::new();
        step.send(maftia_core::Target::All, (rng.next_u64(), input));
        Ok(step)
    }
    fn handle_message(
        &mut self,
        _from: NodeId,
        (nonce, payload): (u64, Vec<u8>),
        _rng: &mut dyn RngCore,
    ) -> maftia_core::ProtocolStep<Self> {
        let mut step = maftia_core::Step::new();
        step.output(Relayed(nonce, payload));
        step
    }
    fn terminated(&self) -> bool {
        false
    }
}

#[test]
fn replays_draw_the_same_randomness_and_self_delivery_is_immediate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.redb");
    let relay = || RandomRelay { id: NodeId(0) };
    let (mut node, _) = DurableReplica::open(&path, relay(), 3, [1; 32], options()).unwrap();
    let mut sent = Vec::new();
    for i in 0..20u8 {
        let outcome = node.process_batch(vec![Event::Input(vec![i])]).unwrap();
        // Target::All: our own copy was delivered at once, the others' copies go out.
        assert_eq!(outcome.delivered.len(), 1);
        assert_eq!(outcome.outgoing.len(), 1);
        assert_eq!(outcome.outgoing[0].to, vec![NodeId(1), NodeId(2)]);
        sent.push(outcome.outgoing[0].frame.clone());
    }
    let nonces: BTreeSet<Bytes> = sent.iter().cloned().collect();
    assert_eq!(nonces.len(), 20, "nonces repeat: the RNG is not advancing");
    let (height, chain) = (node.height(), node.chain_head());
    drop(node);
    let (node, recovery) = DurableReplica::open(&path, relay(), 3, [1; 32], options()).unwrap();
    assert_eq!((node.height(), node.chain_head()), (height, chain));
    for (peer, frames) in recovery.resend {
        assert!(peer == NodeId(1) || peer == NodeId(2));
        assert_eq!(frames, sent, "a replay drew different randomness");
    }
}

#[test]
fn abc_deliveries_decode_back_to_their_requests() {
    let delivery = maftia_broadcast::abc::AbcDelivery {
        round: 7,
        requests: vec![vec![], vec![1, 2, 3], vec![9; 300]],
    };
    let encoded = delivery.encode_output();
    assert_eq!(decode_abc_delivery(&encoded), Some((7, delivery.requests)));
    // Truncated, extended or lying about a length: refused, never a panic.
    assert_eq!(decode_abc_delivery(&encoded[..encoded.len() - 1]), None);
    let mut longer = encoded.clone();
    longer.push(0);
    assert_eq!(decode_abc_delivery(&longer), None);
    let mut huge = encoded.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(decode_abc_delivery(&huge), None);
    assert_eq!(decode_abc_delivery(&[]), None);
}

impl SkipForward for RandomRelay {
    /// A relay has no rounds: skipping only moves the delivery height.
    fn skip_forward(
        &mut self,
        _point: &[u8],
        _rng: &mut dyn RngCore,
    ) -> Result<maftia_core::ProtocolStep<Self>, String> {
        Ok(maftia_core::Step::new())
    }
}

#[test]
fn a_skip_is_logged_moves_the_height_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("skip.redb");
    let relay = || RandomRelay { id: NodeId(0) };
    assert_eq!(
        DurableReplica::<RandomRelay>::read_base(&path).unwrap(),
        None
    );
    let (mut node, _) = DurableReplica::open(&path, relay(), 3, [1; 32], options()).unwrap();
    for i in 0..5u8 {
        node.process_batch(vec![Event::Input(vec![i])]).unwrap();
    }
    assert_eq!(node.height(), 5);
    let base = Base {
        height: 100,
        chain: [7; 32],
        payload: b"certified snapshot".to_vec(),
    };
    let low = Base {
        height: 3,
        ..base.clone()
    };
    assert!(
        node.skip(Vec::new(), low).is_err(),
        "a skip backwards is refused"
    );
    node.skip(b"point".to_vec(), base.clone()).unwrap();
    assert_eq!(
        (node.height(), node.base_height(), node.chain_head()),
        (100, 100, [7; 32])
    );
    let mut sent = Vec::new();
    for i in 0..3u8 {
        let outcome = node.process_batch(vec![Event::Input(vec![i])]).unwrap();
        assert_eq!(outcome.delivered[0].height, 100 + u64::from(i));
        sent.push(outcome.outgoing[0].frame.clone());
    }
    let chain = node.chain_head();
    let stored = node.stored_deliveries(0, 200).unwrap();
    let heights: Vec<u64> = stored.iter().map(|(h, _)| *h).collect();
    assert_eq!(heights, vec![0, 1, 2, 3, 4, 100, 101, 102]);
    drop(node);
    // A restart replays the whole log, the skip included, and regenerates the same frames.
    assert_eq!(
        DurableReplica::<RandomRelay>::read_base(&path).unwrap(),
        Some(base)
    );
    let (node, recovery) = DurableReplica::open(&path, relay(), 3, [1; 32], options()).unwrap();
    assert_eq!(
        (node.height(), node.chain_head(), node.base_height()),
        (103, chain, 100)
    );
    assert_eq!(recovery.replayed_events, 9);
    let resent: Vec<Bytes> = recovery
        .resend
        .into_iter()
        .find(|(peer, _)| *peer == NodeId(1))
        .unwrap()
        .1;
    assert_eq!(&resent[resent.len() - 3..], sent.as_slice());
}
