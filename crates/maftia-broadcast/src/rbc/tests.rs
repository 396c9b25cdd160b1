//! Unit tests of the reliable broadcast with a small in-module network (random delivery order,
//! silent nodes, hand-crafted Byzantine messages). The seeded simulator sweeps are in
//! `tests/rbc_sim.rs`.
use super::*;
use maftia_core::{codec, Fault};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;

const SMALL_THRESHOLD: usize = 64;

fn params(erasure_threshold: usize) -> RbcParams {
    RbcParams {
        erasure_threshold,
        ..RbcParams::default()
    }
}

/// A network of `n` nodes running one instance. Messages are delivered in random order;
/// `byzantine` nodes run no protocol: the test injects their messages and they drop what
/// they receive.
struct Net {
    config: GroupConfig,
    nodes: Vec<Rbc>,
    byzantine: BTreeSet<NodeId>,
    queue: Vec<(NodeId, NodeId, Message)>,
    outputs: BTreeMap<NodeId, Vec<RbcOutput>>,
    /// (reporter, fault) for every fault an honest node recorded.
    faults: Vec<(NodeId, Fault<FaultKind>)>,
    /// Encoded bytes each node sent to other nodes (copies to itself are not on the wire).
    bytes_sent: BTreeMap<NodeId, usize>,
    /// Every message an honest node sent, with its sender and target.
    sent: Vec<(NodeId, Target, Message)>,
    rng: ChaCha8Rng,
    /// Deliver in sending order instead of at random.
    fifo: bool,
}

impl Net {
    fn new(n: usize, f: usize, proposer: u16, params: RbcParams, seed: u64) -> Net {
        let config = GroupConfig::asynchronous(n, f).unwrap();
        let nodes = config
            .members()
            .map(|id| Rbc::new(config, id, NodeId(proposer), params).unwrap())
            .collect();
        Net {
            config,
            nodes,
            byzantine: BTreeSet::new(),
            queue: Vec::new(),
            outputs: BTreeMap::new(),
            faults: Vec::new(),
            bytes_sent: BTreeMap::new(),
            sent: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            fifo: false,
        }
    }

    fn with_byzantine(mut self, ids: &[u16]) -> Net {
        self.byzantine = ids.iter().map(|i| NodeId(*i)).collect();
        self
    }

    fn honest(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.config
            .members()
            .filter(|id| !self.byzantine.contains(id))
    }

    fn dispatch(&mut self, from: NodeId, step: ProtocolStep<Rbc>) {
        for tm in step.messages {
            self.sent
                .push((from, tm.target.clone(), tm.message.clone()));
            for to in tm.target.recipients(from, self.config.n()) {
                if to != from {
                    *self.bytes_sent.entry(from).or_default() +=
                        codec::encode(&tm.message).unwrap().len();
                }
                self.queue.push((from, to, tm.message.clone()));
            }
        }
        self.outputs.entry(from).or_default().extend(step.outputs);
        self.faults
            .extend(step.faults.into_iter().map(|f| (from, f)));
    }

    fn input(&mut self, id: u16, payload: Vec<u8>) {
        let step = self.nodes[usize::from(id)]
            .handle_input(payload, &mut self.rng)
            .unwrap();
        self.dispatch(NodeId(id), step);
    }

    /// Queue a message from a Byzantine node.
    fn inject(&mut self, from: u16, to: u16, message: Message) {
        self.queue.push((NodeId(from), NodeId(to), message));
    }

    fn inject_all(&mut self, from: u16, message: Message) {
        for to in 0..self.config.n() as u16 {
            self.inject(from, to, message.clone());
        }
    }

    fn run(&mut self) {
        while !self.queue.is_empty() {
            let (from, to, message) = if self.fifo {
                self.queue.remove(0)
            } else {
                let pick = self.rng.gen_range(0..self.queue.len());
                self.queue.swap_remove(pick)
            };
            if self.byzantine.contains(&to) {
                continue;
            }
            let step = self.nodes[to.index()].handle_message(from, message, &mut self.rng);
            self.dispatch(to, step);
        }
    }

    fn output(&self, id: NodeId) -> &[RbcOutput] {
        self.outputs.get(&id).map(Vec::as_slice).unwrap_or(&[])
    }

    fn assert_all_honest_output(&self, expected: &RbcOutput) {
        for id in self.honest() {
            let output = self.output(id);
            assert!(
                output == std::slice::from_ref(expected),
                "{id}: {}",
                summary(output)
            );
            assert!(self.nodes[id.index()].terminated(), "{id} not terminated");
        }
    }
}

/// Outputs without dumping whole payloads.
fn summary(outputs: &[RbcOutput]) -> String {
    let parts: Vec<String> = outputs
        .iter()
        .map(|o| match o {
            RbcOutput::Delivered(p) => format!(
                "Delivered({} bytes, {:02x?}..)",
                p.len(),
                &p[..p.len().min(8)]
            ),
            RbcOutput::InvalidEncoding => "InvalidEncoding".into(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    (0..len).map(|_| rng.gen()).collect()
}

#[test]
fn honest_runs_deliver_with_zero_faults() {
    for (n, f) in [
        (1, 0),
        (2, 0),
        (3, 0),
        (4, 1),
        (5, 1),
        (6, 1),
        (7, 2),
        (10, 3),
    ] {
        for len in [0, 5, SMALL_THRESHOLD - 1, SMALL_THRESHOLD, 200, 1000] {
            for seed in 0..4 {
                let proposer = (seed % n as u64) as u16;
                let mut net = Net::new(n, f, proposer, params(SMALL_THRESHOLD), seed);
                let m = payload(len, seed);
                net.input(proposer, m.clone());
                net.run();
                assert!(net.faults.is_empty(), "n={n} len={len}: {:?}", net.faults);
                net.assert_all_honest_output(&RbcOutput::Delivered(m));
                // The path taken is the one the threshold picks.
                let avid = net
                    .sent
                    .iter()
                    .any(|(_, _, m)| matches!(m, Message::Value { .. }));
                assert_eq!(avid, len >= SMALL_THRESHOLD);
            }
        }
    }
}

#[test]
fn f_silent_nodes_do_not_stop_delivery() {
    // n = 6, f = 1 exercises the AVID Ready threshold n − f > ⌈(n+f+1)/2⌉.
    for (n, f) in [(4, 1), (6, 1), (7, 2), (10, 3)] {
        for len in [10, 300] {
            for seed in 0..5 {
                let silent: Vec<u16> = (1..=f as u16).collect();
                let mut net =
                    Net::new(n, f, 0, params(SMALL_THRESHOLD), seed).with_byzantine(&silent);
                let m = payload(len, seed);
                net.input(0, m.clone());
                net.run();
                assert!(net.faults.is_empty());
                net.assert_all_honest_output(&RbcOutput::Delivered(m));
            }
        }
    }
}

#[test]
fn input_misuse_is_an_error() {
    let config = GroupConfig::asynchronous(4, 1).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    assert_eq!(
        Rbc::new(config, NodeId(4), NodeId(0), RbcParams::default()).unwrap_err(),
        RbcError::NotMember {
            id: NodeId(4),
            n: 4
        }
    );
    assert_eq!(
        Rbc::new(config, NodeId(0), NodeId(7), RbcParams::default()).unwrap_err(),
        RbcError::NotMember {
            id: NodeId(7),
            n: 4
        }
    );
    let wormhole = GroupConfig::new(3, 1, maftia_core::Resilience::Wormhole).unwrap();
    assert_eq!(
        Rbc::new(wormhole, NodeId(0), NodeId(0), RbcParams::default()).unwrap_err(),
        RbcError::TooFewNodes { n: 3, f: 1 }
    );
    let too_big = RbcParams {
        max_payload: MAX_MESSAGE_SIZE,
        ..RbcParams::default()
    };
    assert!(matches!(
        Rbc::new(config, NodeId(0), NodeId(0), too_big),
        Err(RbcError::MaxPayloadTooLarge { .. })
    ));
    let small = RbcParams {
        erasure_threshold: 10,
        max_payload: 100,
    };
    let mut other = Rbc::new(config, NodeId(1), NodeId(0), small).unwrap();
    assert_eq!(
        other.handle_input(vec![1], &mut rng).unwrap_err(),
        RbcError::NotProposer {
            proposer: NodeId(0)
        }
    );
    let mut proposer = Rbc::new(config, NodeId(0), NodeId(0), small).unwrap();
    assert_eq!(
        proposer.handle_input(vec![0; 101], &mut rng).unwrap_err(),
        RbcError::PayloadTooLarge {
            size: 101,
            max: 100
        }
    );
    let step = proposer.handle_input(vec![0; 100], &mut rng).unwrap();
    assert_eq!(step.messages.len(), 4, "one Value per node");
    assert_eq!(
        proposer.handle_input(vec![1], &mut rng).unwrap_err(),
        RbcError::AlreadyProposed
    );
}

/// The largest encoded message of an honest run stays within the codec limit at `max_payload`.
#[test]
fn default_max_payload_fits_the_codec_limit() {
    let config = GroupConfig::asynchronous(4, 1).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let max = RbcParams::default().max_payload;
    for threshold in [usize::MAX, 0] {
        let mut proposer = Rbc::new(config, NodeId(0), NodeId(0), params(threshold)).unwrap();
        let step = proposer.handle_input(vec![7; max], &mut rng).unwrap();
        for tm in &step.messages {
            let frame = codec::encode(&tm.message).unwrap();
            assert!(
                frame.len() <= MAX_MESSAGE_SIZE - ENVELOPE_RESERVE + 16,
                "{}",
                frame.len()
            );
        }
    }
}

/// Bytes on the wire for a 64 KiB payload: Bracha sends every payload byte n+1 times per node
/// (Send, then n echoes), AVID sends a 1/k fragment as often. Expected totals (excluding a
/// node's copies to itself): Bracha ≈ (n−1)(n+1)|m|, AVID ≈ (n−1)(n+1)|m|/k —
/// n = 4, k = 2: 15|m| vs 7.5|m|; n = 10, k = 4: 99|m| vs 24.75|m|. Delivery is in sending
/// order, so every node gets the proposal before it can terminate and everyone echoes (with
/// other orders a node may deliver and stop before the proposal reaches it, sending less).
#[test]
fn avid_sends_a_k_th_of_bracha_bytes() {
    let len = 64 * 1024;
    let m = payload(len, 3);
    for (n, f) in [(4usize, 1usize), (7, 2), (10, 3)] {
        let k = n - 2 * f;
        let total = |threshold: usize| {
            let mut net = Net::new(n, f, 0, params(threshold), 9);
            net.fifo = true;
            net.input(0, m.clone());
            net.run();
            net.assert_all_honest_output(&RbcOutput::Delivered(m.clone()));
            net.bytes_sent.values().sum::<usize>() as f64
        };
        let bracha = total(usize::MAX);
        let avid = total(0);
        let crossings = ((n - 1) * (n + 1)) as f64;
        let m_len = len as f64;
        assert!(bracha >= crossings * m_len, "n={n}: Bracha {bracha}");
        assert!(bracha <= crossings * m_len * 1.01, "n={n}: Bracha {bracha}");
        assert!(avid >= crossings * m_len / k as f64, "n={n}: AVID {avid}");
        assert!(
            avid <= crossings * m_len / k as f64 * 1.02,
            "n={n}: AVID {avid}"
        );
        // Per node, the payload crosses about n/(n−2f) times (the proposer: one more).
        let per_node = avid / n as f64 / m_len;
        assert!(
            per_node <= (n as f64 + 1.0) / k as f64 * 1.02,
            "n={n}: {per_node}"
        );
    }
}

/// A fresh node 1 of a 4-node group whose proposer is node 0.
fn lone_node(params: RbcParams) -> (Rbc, ChaCha8Rng) {
    let config = GroupConfig::asynchronous(4, 1).unwrap();
    (
        Rbc::new(config, NodeId(1), NodeId(0), params).unwrap(),
        ChaCha8Rng::seed_from_u64(5),
    )
}

fn faults_of(
    node: &mut Rbc,
    rng: &mut ChaCha8Rng,
    from: u16,
    message: Message,
) -> Vec<Fault<FaultKind>> {
    node.handle_message(NodeId(from), message, rng).faults
}

fn codeword(payload: &[u8], n: usize, k: usize) -> (Digest, Vec<Fragment>) {
    let data = erasure::encode(payload, n, k).unwrap();
    let tree = merkle::MerkleTree::new(&data);
    let fragments = data
        .into_iter()
        .enumerate()
        .map(|(i, data)| Fragment {
            index: i as u16,
            data,
            proof: tree.proof(i).unwrap(),
        })
        .collect();
    (tree.root(), fragments)
}

/// Build a Merkle tree over `data` (any bytes, codeword or not) and have Byzantine node 0 send
/// every other node its `Value`; returns the root.
fn inject_values(net: &mut Net, data: &[Vec<u8>]) -> Digest {
    let tree = merkle::MerkleTree::new(data);
    for (i, bytes) in data.iter().enumerate().skip(1) {
        let fragment = Fragment {
            index: i as u16,
            data: bytes.clone(),
            proof: tree.proof(i).unwrap(),
        };
        net.inject(
            0,
            i as u16,
            Message::Value {
                root: tree.root(),
                fragment,
            },
        );
    }
    tree.root()
}

#[test]
fn every_malformed_field_is_a_typed_fault() {
    let small = RbcParams {
        erasure_threshold: 10,
        max_payload: 100,
    };
    let fault = |culprit: u16, kind| vec![Fault::new(NodeId(culprit), kind)];
    let (root, frags) = codeword(&[3; 50], 4, 2);
    let (mut node, mut rng) = lone_node(small);

    assert_eq!(
        faults_of(&mut node, &mut rng, 2, Message::Send(vec![1])),
        fault(2, FaultKind::NotProposer)
    );
    assert_eq!(
        faults_of(&mut node, &mut rng, 9, Message::Ready([0; 32])),
        fault(9, FaultKind::NonMember)
    );
    assert_eq!(
        faults_of(&mut node, &mut rng, 0, Message::Send(vec![0; 101])),
        fault(0, FaultKind::OversizedPayload)
    );
    assert_eq!(
        faults_of(&mut node, &mut rng, 3, Message::Echo(vec![0; 101])),
        fault(3, FaultKind::OversizedPayload)
    );
    let value = |fragment: Fragment| Message::Value { root, fragment };
    assert_eq!(
        faults_of(&mut node, &mut rng, 2, value(frags[1].clone())),
        fault(2, FaultKind::NotProposer)
    );
    assert_eq!(
        faults_of(&mut node, &mut rng, 0, value(frags[2].clone())),
        fault(0, FaultKind::WrongFragmentIndex),
        "node 1 must get fragment 1"
    );
    let mut bad = frags[1].clone();
    bad.proof[0][3] ^= 1;
    assert_eq!(
        faults_of(&mut node, &mut rng, 0, value(bad)),
        fault(0, FaultKind::InvalidProof)
    );
    let mut short = frags[1].clone();
    short.proof.pop();
    assert_eq!(
        faults_of(&mut node, &mut rng, 0, value(short)),
        fault(0, FaultKind::InvalidProof)
    );
    let mut long = frags[1].clone();
    long.proof.push([0; 32]);
    assert_eq!(
        faults_of(&mut node, &mut rng, 0, value(long)),
        fault(0, FaultKind::InvalidProof)
    );
    let mut odd = frags[1].clone();
    odd.data.pop();
    assert_eq!(
        faults_of(&mut node, &mut rng, 0, value(odd)),
        fault(0, FaultKind::MalformedFragment)
    );
    let mut empty = frags[1].clone();
    empty.data.clear();
    assert_eq!(
        faults_of(&mut node, &mut rng, 0, value(empty)),
        fault(0, FaultKind::MalformedFragment)
    );
    let mut huge = frags[1].clone();
    huge.data = vec![0; node.max_fragment_len + 2];
    assert_eq!(
        faults_of(&mut node, &mut rng, 0, value(huge)),
        fault(0, FaultKind::OversizedPayload)
    );

    // Echoed fragments must be the echoer's own.
    let echo = |fragment: Fragment| Message::EchoFragment { root, fragment };
    assert_eq!(
        faults_of(&mut node, &mut rng, 2, echo(frags[3].clone())),
        fault(2, FaultKind::WrongFragmentIndex)
    );
    let mut far = frags[2].clone();
    far.index = u16::MAX;
    assert_eq!(
        faults_of(&mut node, &mut rng, 2, echo(far)),
        fault(2, FaultKind::WrongFragmentIndex)
    );
    let mut forged = frags[2].clone();
    forged.data[0] ^= 1;
    assert_eq!(
        faults_of(&mut node, &mut rng, 2, echo(forged)),
        fault(2, FaultKind::InvalidProof)
    );
    // A valid echo, its identical copy (silently dropped) and a conflicting one.
    assert!(faults_of(&mut node, &mut rng, 2, echo(frags[2].clone())).is_empty());
    assert!(faults_of(&mut node, &mut rng, 2, echo(frags[2].clone())).is_empty());
    assert_eq!(
        faults_of(&mut node, &mut rng, 2, Message::Echo(vec![1])),
        fault(2, FaultKind::ConflictingEcho)
    );

    // The proposer's first valid proposal counts; a repeat is dropped, a different one is evidence.
    let step = node.handle_message(NodeId(0), value(frags[1].clone()), &mut rng);
    assert!(step.faults.is_empty());
    assert_eq!(step.messages.len(), 1, "echoes its fragment");
    assert!(node
        .handle_message(NodeId(0), value(frags[1].clone()), &mut rng)
        .is_empty());
    assert_eq!(
        faults_of(&mut node, &mut rng, 0, Message::Send(vec![1])),
        fault(0, FaultKind::ConflictingProposal)
    );

    // Readies: first counts, an identical copy is dropped, a different one is evidence.
    assert!(faults_of(&mut node, &mut rng, 3, Message::Ready([1; 32])).is_empty());
    assert!(faults_of(&mut node, &mut rng, 3, Message::Ready([1; 32])).is_empty());
    assert_eq!(
        faults_of(&mut node, &mut rng, 3, Message::Ready([2; 32])),
        fault(3, FaultKind::ConflictingReady)
    );
}

#[test]
fn bracha_conflicting_send_is_evidence_and_first_one_counts() {
    let (mut node, mut rng) = lone_node(params(SMALL_THRESHOLD));
    let step = node.handle_message(NodeId(0), Message::Send(b"a".to_vec()), &mut rng);
    assert_eq!(step.messages.len(), 1);
    assert_eq!(step.messages[0].message, Message::Echo(b"a".to_vec()));
    assert!(node
        .handle_message(NodeId(0), Message::Send(b"a".to_vec()), &mut rng)
        .is_empty());
    let step = node.handle_message(NodeId(0), Message::Send(b"b".to_vec()), &mut rng);
    assert_eq!(
        step.faults,
        vec![Fault::new(NodeId(0), FaultKind::ConflictingProposal)]
    );
    assert!(step.messages.is_empty(), "echoes only once");
}

#[test]
fn messages_after_termination_are_dropped_without_evidence() {
    let (mut node, mut rng) = lone_node(params(SMALL_THRESHOLD));
    let m = b"late".to_vec();
    let d = payload_digest(&m);
    let _ = node.handle_message(NodeId(0), Message::Send(m.clone()), &mut rng);
    for from in [0, 2, 3] {
        let _ = node.handle_message(NodeId(from), Message::Ready(d), &mut rng);
    }
    assert_eq!(node.output(), Some(&RbcOutput::Delivered(m)));
    assert!(node.terminated());
    // Anything now — even a conflicting message — is dropped unseen.
    for message in [
        Message::Echo(b"x".to_vec()),
        Message::Ready([9; 32]),
        Message::Send(vec![0; 1000]),
    ] {
        assert!(node.handle_message(NodeId(3), message, &mut rng).is_empty());
    }
}

#[test]
fn ready_amplification_needs_f_plus_one() {
    let (mut node, mut rng) = lone_node(params(SMALL_THRESHOLD));
    let step = node.handle_message(NodeId(2), Message::Ready([4; 32]), &mut rng);
    assert!(step.messages.is_empty(), "one ready may be Byzantine");
    let step = node.handle_message(NodeId(3), Message::Ready([4; 32]), &mut rng);
    assert_eq!(step.messages.len(), 1);
    assert_eq!(step.messages[0].message, Message::Ready([4; 32]));
    // 2f+1 readies without the payload: no delivery yet.
    let step = node.handle_message(NodeId(0), Message::Ready([4; 32]), &mut rng);
    assert!(step.outputs.is_empty());
    assert!(!node.terminated());
}

/// Bracha totality: node 3 never gets `Send`, yet delivers from the honest echoes.
#[test]
fn bracha_node_without_send_delivers_from_echoes() {
    for seed in 0..20 {
        let mut net = Net::new(4, 1, 0, params(SMALL_THRESHOLD), seed).with_byzantine(&[0]);
        let m = b"totality".to_vec();
        net.inject(0, 1, Message::Send(m.clone()));
        net.inject(0, 2, Message::Send(m.clone()));
        net.inject_all(0, Message::Echo(m.clone()));
        net.inject_all(0, Message::Ready(payload_digest(&m)));
        net.run();
        assert!(net.faults.is_empty());
        net.assert_all_honest_output(&RbcOutput::Delivered(m));
    }
}

/// AVID totality: the proposer withholds node 3's `Value`; node 3 decodes from the others'
/// echoes, derives its own fragment and echoes it, and terminates.
#[test]
fn avid_node_without_value_delivers_and_echoes_its_derived_fragment() {
    for seed in 0..20 {
        let mut net = Net::new(4, 1, 0, params(SMALL_THRESHOLD), seed).with_byzantine(&[0]);
        let m = payload(500, seed);
        let (root, frags) = codeword(&m, 4, 2);
        for i in [1u16, 2] {
            net.inject(
                0,
                i,
                Message::Value {
                    root,
                    fragment: frags[usize::from(i)].clone(),
                },
            );
        }
        net.inject_all(
            0,
            Message::EchoFragment {
                root,
                fragment: frags[0].clone(),
            },
        );
        net.inject_all(0, Message::Ready(root));
        net.run();
        assert!(net.faults.is_empty(), "{:?}", net.faults);
        net.assert_all_honest_output(&RbcOutput::Delivered(m));
        let derived = net.sent.iter().any(|(from, _, msg)| {
            *from == NodeId(3)
                && *msg
                    == Message::EchoFragment {
                        root,
                        fragment: frags[3].clone(),
                    }
        });
        assert!(
            derived,
            "node 3 echoes fragment 3 of the committed codeword"
        );
    }
}

/// Cachin–Tessaro ⊥: a Byzantine proposer commits (valid Merkle proofs) to fragments that are
/// not one codeword; every honest node outputs InvalidEncoding, whatever the delivery order.
#[test]
fn fragments_that_are_not_a_codeword_give_invalid_encoding_everywhere() {
    for (n, f) in [(4usize, 1usize), (7, 2), (10, 3)] {
        for seed in 0..20 {
            let mut net = Net::new(n, f, 0, params(SMALL_THRESHOLD), seed).with_byzantine(&[0]);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let garbage: Vec<Vec<u8>> = (0..n)
                .map(|_| (0..40).map(|_| rng.gen()).collect())
                .collect();
            let tree = merkle::MerkleTree::new(&garbage);
            for (i, data) in garbage.iter().enumerate().skip(1) {
                let fragment = Fragment {
                    index: i as u16,
                    data: data.clone(),
                    proof: tree.proof(i).unwrap(),
                };
                net.inject(
                    0,
                    i as u16,
                    Message::Value {
                        root: tree.root(),
                        fragment,
                    },
                );
            }
            net.run();
            net.assert_all_honest_output(&RbcOutput::InvalidEncoding);
            for id in net.honest() {
                assert!(net
                    .faults
                    .contains(&(id, Fault::new(NodeId(0), FaultKind::InvalidEncoding))));
            }
            assert!(net
                .faults
                .iter()
                .all(|(_, fault)| fault.culprit == NodeId(0)));
        }
    }
}

/// Fragments of different lengths under one root: InvalidEncoding everywhere, whether a node
/// sees the mismatch or decodes k equal-length fragments first.
#[test]
fn fragments_of_different_lengths_give_invalid_encoding_everywhere() {
    for seed in 0..30 {
        let n = 7;
        let mut net = Net::new(n, 2, 0, params(SMALL_THRESHOLD), seed).with_byzantine(&[0]);
        let lens = [8, 8, 6, 8, 6, 8, 8];
        let frags: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, l)| vec![i as u8; *l])
            .collect();
        inject_values(&mut net, &frags);
        net.run();
        net.assert_all_honest_output(&RbcOutput::InvalidEncoding);
        assert!(net
            .faults
            .iter()
            .all(|(_, fault)| *fault == Fault::new(NodeId(0), FaultKind::InvalidEncoding)));
    }
}

/// A true codeword whose framing declares more bytes than it carries: InvalidEncoding.
#[test]
fn badly_framed_codeword_gives_invalid_encoding() {
    let (n, k) = (4, 2);
    let mut shards = vec![vec![0u8; 10]; k];
    shards[0][..8].copy_from_slice(&1000u64.to_le_bytes());
    let data = erasure::encode_data_shards(shards, n).unwrap();
    let mut net = Net::new(n, 1, 0, params(SMALL_THRESHOLD), 1).with_byzantine(&[0]);
    inject_values(&mut net, &data);
    net.run();
    net.assert_all_honest_output(&RbcOutput::InvalidEncoding);
}

/// An equivocating proposer (different payloads, or a payload and a fragment set, to different
/// nodes) never makes two honest nodes output differently.
#[test]
fn equivocating_proposer_cannot_break_agreement() {
    for seed in 0..200 {
        let (n, f) = if seed % 2 == 0 { (4, 1) } else { (7, 2) };
        let mut net = Net::new(n, f, 0, params(SMALL_THRESHOLD), seed).with_byzantine(&[0]);
        let a = payload(20, seed);
        let b = payload(300, seed + 1);
        let (root, frags) = codeword(&b, n, n - 2 * f);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in 1..n as u16 {
            if rng.gen_bool(0.5) {
                net.inject(0, i, Message::Send(a.clone()));
            } else {
                net.inject(
                    0,
                    i,
                    Message::Value {
                        root,
                        fragment: frags[usize::from(i)].clone(),
                    },
                );
            }
        }
        // It also echoes and readies both, to push both over their thresholds.
        net.inject_all(0, Message::Echo(a.clone()));
        for i in 0..n as u16 {
            let ready = if rng.gen_bool(0.5) {
                payload_digest(&a)
            } else {
                root
            };
            net.inject(0, i, Message::Ready(ready));
        }
        net.run();
        let outputs: BTreeSet<&[RbcOutput]> = net.honest().map(|id| net.output(id)).collect();
        let delivered: BTreeSet<&RbcOutput> = outputs.iter().flat_map(|o| o.iter()).collect();
        assert!(delivered.len() <= 1, "seed {seed}: {delivered:?}");
        assert!(outputs.iter().all(|o| o.len() <= 1));
        if !delivered.is_empty() {
            assert_eq!(outputs.len(), 1, "totality: all honest or none");
        }
        assert!(net
            .faults
            .iter()
            .all(|(_, fault)| fault.culprit == NodeId(0)));
    }
}

#[test]
fn messages_roundtrip_through_the_codec() {
    let (root, frags) = codeword(b"roundtrip", 4, 2);
    for message in [
        Message::Send(vec![1, 2, 3]),
        Message::Echo(vec![]),
        Message::Value {
            root,
            fragment: frags[1].clone(),
        },
        Message::EchoFragment {
            root,
            fragment: frags[2].clone(),
        },
        Message::Ready(root),
    ] {
        let frame = codec::encode(&message).unwrap();
        assert_eq!(codec::decode::<Message>(&frame).unwrap(), message);
    }
}

fn arbitrary_message() -> impl proptest::strategy::Strategy<Value = (u16, Message)> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..80);
    let digest = any::<[u8; 32]>();
    let fragment = (
        0u16..6,
        bytes.clone(),
        proptest::collection::vec(any::<[u8; 32]>(), 0..4),
    )
        .prop_map(|(index, data, proof)| Fragment { index, data, proof });
    let message = prop_oneof![
        bytes.clone().prop_map(Message::Send),
        bytes.prop_map(Message::Echo),
        (digest, fragment.clone()).prop_map(|(root, fragment)| Message::Value { root, fragment }),
        (digest, fragment).prop_map(|(root, fragment)| Message::EchoFragment { root, fragment }),
        digest.prop_map(Message::Ready),
    ];
    (0u16..6, message)
}

proptest! {
    /// Arbitrary message sequences from anyone never panic, never output more than once, and
    /// never blame the receiving node itself.
    #[test]
    fn arbitrary_messages_never_panic(messages in proptest::collection::vec(arbitrary_message(), 0..60)) {
        let config = GroupConfig::asynchronous(4, 1).unwrap();
        let mut node = Rbc::new(config, NodeId(1), NodeId(0), params(SMALL_THRESHOLD)).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut outputs = 0;
        for (from, message) in messages {
            let step = node.handle_message(NodeId(from), message, &mut rng);
            outputs += step.outputs.len();
            prop_assert!(step.faults.iter().all(|f| f.culprit != NodeId(1) || from == 1));
        }
        prop_assert!(outputs <= 1);
    }
}

/// Whatever peers send, the instance keeps at most one echo and one ready per peer, at most
/// n + 1 payloads and at most n roots of fragments.
#[test]
fn storage_is_bounded_per_peer() {
    let (n, f) = (7, 2);
    let config = GroupConfig::asynchronous(n, f).unwrap();
    let mut node = Rbc::new(config, NodeId(1), NodeId(0), params(SMALL_THRESHOLD)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for round in 0..50u32 {
        for from in 0..n as u16 {
            let mut bytes = round.to_le_bytes().to_vec();
            bytes.push(from as u8);
            let _ = node.handle_message(NodeId(from), Message::Echo(bytes.clone()), &mut rng);
            let _ = node.handle_message(NodeId(from), Message::Send(bytes.clone()), &mut rng);
            let (root, frags) = codeword(&bytes.repeat(20), n, n - 2 * f);
            let fragment = frags[usize::from(from)].clone();
            let _ = node.handle_message(
                NodeId(from),
                Message::EchoFragment { root, fragment },
                &mut rng,
            );
            let _ = node.handle_message(NodeId(from), Message::Ready(root), &mut rng);
        }
        assert!(node.echoes.len() <= n && node.readies.len() <= n);
        assert!(node.payloads.len() <= n + 1, "{}", node.payloads.len());
        assert!(node.roots.len() <= n);
        assert!(node.roots.values().all(|r| r.fragments.len() <= n));
    }
}

/// Why the AVID Ready threshold is n − f and not ⌈(n+f+1)/2⌉ when n > 3f+1 (module doc,
/// "Deviation"): with n = 6, f = 1 (k = 4) a proposer that gives fragments to nodes 1–3 only
/// and echoes its own fragment only to them would, with an echo quorum of 4, let nodes 1–3
/// deliver while nodes 4 and 5 hold 3 readies-worth of agreement but only 3 fragments forever.
/// With n − f = 5 nobody delivers, so totality holds.
#[test]
fn avid_ready_threshold_keeps_totality_above_3f_plus_1() {
    for seed in 0..20 {
        let (n, f) = (6, 1);
        let mut net = Net::new(n, f, 0, params(SMALL_THRESHOLD), seed).with_byzantine(&[0]);
        let m = payload(300, seed);
        let (root, frags) = codeword(&m, n, n - 2 * f);
        for i in 1..=3u16 {
            net.inject(
                0,
                i,
                Message::Value {
                    root,
                    fragment: frags[usize::from(i)].clone(),
                },
            );
            net.inject(
                0,
                i,
                Message::EchoFragment {
                    root,
                    fragment: frags[0].clone(),
                },
            );
        }
        net.inject_all(0, Message::Ready(root));
        net.run();
        let delivered = net
            .honest()
            .filter(|id| !net.output(*id).is_empty())
            .count();
        assert!(
            delivered == 0 || delivered == n - 1,
            "seed {seed}: only {delivered} delivered"
        );
        assert!(net.faults.is_empty());
    }
}

/// A true codeword with one fragment replaced by garbage of the same length (valid Merkle
/// proofs over the forged set): nodes decoding from different subsets would get different
/// payloads without the re-encoding check; with it, all output InvalidEncoding.
#[test]
fn one_forged_fragment_gives_invalid_encoding_everywhere() {
    for (n, f) in [(4usize, 1usize), (7, 2), (10, 3)] {
        let k = n - 2 * f;
        for forged_index in 0..n {
            for seed in 0..6 {
                let m = payload(300, seed);
                let mut data = erasure::encode(&m, n, k).unwrap();
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.fill(data[forged_index].as_mut_slice());
                let tree = merkle::MerkleTree::new(&data);
                let mut net = Net::new(n, f, 0, params(SMALL_THRESHOLD), seed).with_byzantine(&[0]);
                inject_values(&mut net, &data);
                let own = Fragment {
                    index: 0,
                    data: data[0].clone(),
                    proof: tree.proof(0).unwrap(),
                };
                net.inject_all(
                    0,
                    Message::EchoFragment {
                        root: tree.root(),
                        fragment: own,
                    },
                );
                net.run();
                net.assert_all_honest_output(&RbcOutput::InvalidEncoding);
            }
        }
    }
}
