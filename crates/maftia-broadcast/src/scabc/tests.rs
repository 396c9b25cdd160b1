//! Unit tests: request encoding, key checks, input checks, and message handling driven by a
//! small first-in first-out network whose decryption-share messages can be held back.
use super::*;
use maftia_core::Fault;
use maftia_sim::insecure_crypto::InsecureThresholdSigner;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use std::collections::VecDeque;

type Node = Scabc<InsecureThresholdSigner>;
type Msg = ScabcMessage<InsecureThresholdSigner>;

fn params() -> AbcParams {
    AbcParams {
        batch_size: 4,
        max_batch_bytes: 4096,
        max_request_size: 1024,
        max_pending: 16,
        dedup_rounds: 16,
    }
}

struct Group {
    config: GroupConfig,
    public: Arc<Tdh2PublicKey>,
    secrets: Vec<Tdh2SecretShare>,
    keys: Vec<ScabcKeys<InsecureThresholdSigner>>,
}

fn group(n: usize, seed: u64) -> Group {
    let config = GroupConfig::asynchronous(n, (n - 1) / 3).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (public, secrets) = tdh2::deal(n, config.one_honest(), &mut rng).unwrap();
    let public = Arc::new(public);
    let coin = InsecureThresholdSigner::deal(n, config.one_honest(), "scabc unit coin");
    let cbc = InsecureThresholdSigner::deal(n, config.echo_quorum(), "scabc unit cbc");
    let quorum = InsecureThresholdSigner::deal(n, config.quorum(), "scabc unit quorum");
    let identities: Vec<IdentityKey> = (0..n).map(|_| IdentityKey::generate(&mut rng)).collect();
    let registry = Arc::new(
        identities
            .iter()
            .map(IdentityKey::public)
            .collect::<Vec<_>>(),
    );
    let keys = (0..n)
        .map(|i| ScabcKeys {
            tdh2_public: public.clone(),
            tdh2_secret: secrets[i].clone(),
            threshold: ThresholdKeys::new(
                &config,
                NodeId(i as u16),
                Arc::new(coin[i].clone()),
                Arc::new(cbc[i].clone()),
                Arc::new(quorum[i].clone()),
            )
            .unwrap(),
            identity: identities[i].clone(),
            identities: registry.clone(),
        })
        .collect();
    Group {
        config,
        public,
        secrets,
        keys,
    }
}

/// A first-in first-out network of honest nodes; `Shares` messages go to `held` while
/// `hold_shares` is set.
struct Net {
    nodes: Vec<Node>,
    queue: VecDeque<(NodeId, NodeId, Msg)>,
    held: Vec<(NodeId, NodeId, Msg)>,
    hold_shares: bool,
    outputs: Vec<Vec<ScabcOutput>>,
    faults: Vec<(NodeId, Fault<ScabcFault>)>,
    rng: ChaCha8Rng,
}

impl Net {
    fn new(group: &Group) -> Self {
        let n = group.config.n();
        Net {
            nodes: (0..n)
                .map(|i| {
                    Scabc::new(
                        group.config,
                        NodeId(i as u16),
                        b"unit".to_vec(),
                        group.keys[i].clone(),
                        params(),
                    )
                    .unwrap()
                })
                .collect(),
            queue: VecDeque::new(),
            held: Vec::new(),
            hold_shares: false,
            outputs: vec![Vec::new(); n],
            faults: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(99),
        }
    }

    fn execute(&mut self, id: NodeId, step: ProtocolStep<Node>) {
        let n = self.nodes.len();
        self.outputs[id.index()].extend(step.outputs);
        self.faults.extend(step.faults.into_iter().map(|f| (id, f)));
        for targeted in step.messages {
            for to in targeted.target.recipients(id, n) {
                self.queue.push_back((id, to, targeted.message.clone()));
            }
        }
    }

    fn input(&mut self, id: NodeId, request: Vec<u8>) {
        let step = self.nodes[id.index()]
            .handle_input(request, &mut self.rng)
            .unwrap();
        self.execute(id, step);
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, message: Msg) {
        let step = self.nodes[to.index()].handle_message(from, message, &mut self.rng);
        self.execute(to, step);
    }

    fn run(&mut self) {
        while let Some((from, to, message)) = self.queue.pop_front() {
            if self.hold_shares && matches!(message, Message::Shares { .. }) {
                self.held.push((from, to, message));
                continue;
            }
            self.deliver(from, to, message);
        }
    }

    /// Take the held share list for `round` that `from` sent to `to`.
    fn take_held(&mut self, from: NodeId, to: NodeId, round: u64) -> Vec<IndexedShare> {
        let at = self
            .held
            .iter()
            .position(|(f, t, m)| {
                *f == from
                    && *t == to
                    && matches!(m, Message::Shares { round: r, .. } if *r == round)
            })
            .unwrap();
        match self.held.remove(at).2 {
            Message::Shares { shares, .. } => shares,
            Message::Abc(_) | Message::HtAbc(_) => unreachable!(),
        }
    }
}

fn encrypt(group: &Group, request: &[u8], label: &[u8], seed: u64) -> Vec<u8> {
    encrypt_request(
        &group.public,
        request,
        label,
        &mut ChaCha8Rng::seed_from_u64(seed),
    )
    .unwrap()
}

/// The same ciphertext under another label (same length): invalid.
fn relabel(request: &[u8]) -> Vec<u8> {
    let ciphertext = decode_request(request).unwrap();
    let mut label = ciphertext.label().to_vec();
    label[0] ^= 1;
    let moved = Ciphertext::from_parts(
        label,
        ciphertext.payload().to_vec(),
        ciphertext.u(),
        ciphertext.u_bar(),
        ciphertext.e(),
        ciphertext.f(),
    )
    .unwrap();
    codec::encode(&moved).unwrap()
}

fn delivered(plaintext: &[u8], label: &[u8]) -> ScabcResult {
    ScabcResult::Delivered {
        plaintext: plaintext.to_vec(),
        label: label.to_vec(),
    }
}

#[test]
fn requests_roundtrip_and_only_the_canonical_encoding_decodes() {
    let group = group(4, 1);
    let request = encrypt(&group, b"transfer 10", b"client 7 seq 1", 2);
    let ciphertext = decode_request(&request).unwrap();
    assert!(ciphertext.verify(&group.public));
    assert_eq!(ciphertext.label(), b"client 7 seq 1");
    // Trailing bytes, truncation, garbage.
    let mut longer = request.clone();
    longer.push(0);
    assert!(matches!(
        decode_request(&longer),
        Err(ScabcError::NotACiphertext(_))
    ));
    assert!(decode_request(&request[..request.len() - 1]).is_err());
    assert!(decode_request(b"not a ciphertext").is_err());
    // An overlong varint for the label length: postcard decodes it to the same ciphertext, in
    // other bytes, which must not pass (else a replay in new bytes would escape ABC's
    // deduplication).
    let header = codec::HEADER_LEN;
    assert_eq!(usize::from(request[header]), b"client 7 seq 1".len());
    let mut overlong = request[..header].to_vec();
    overlong.extend_from_slice(&[request[header] | 0x80, 0x00]);
    overlong.extend_from_slice(&request[header + 1..]);
    assert_eq!(codec::decode::<Ciphertext>(&overlong).unwrap(), ciphertext);
    assert!(matches!(
        decode_request(&overlong),
        Err(ScabcError::NonCanonicalCiphertext)
    ));
    // A relabelled copy decodes but is invalid.
    let moved = decode_request(&relabel(&request)).unwrap();
    assert!(!moved.verify(&group.public));
}

#[test]
fn new_checks_the_tdh2_key() {
    let g = group(4, 3);
    let make = |keys: ScabcKeys<InsecureThresholdSigner>, id: u16| {
        Scabc::new(g.config, NodeId(id), b"k".to_vec(), keys, params())
    };
    assert!(make(g.keys[1].clone(), 1).is_ok());
    // Another node's secret share.
    let mut keys = g.keys[1].clone();
    keys.tdh2_secret = g.secrets[2].clone();
    assert!(matches!(
        make(keys, 1),
        Err(ScabcError::Tdh2ShareMismatch { .. })
    ));
    // A share with our index but another key's secret.
    let other = group(4, 4);
    let mut keys = g.keys[1].clone();
    keys.tdh2_secret = other.secrets[1].clone();
    assert!(matches!(
        make(keys, 1),
        Err(ScabcError::Tdh2ShareMismatch { .. })
    ));
    // A key of the wrong threshold.
    let (public, secrets) = tdh2::deal(4, 3, &mut ChaCha8Rng::seed_from_u64(5)).unwrap();
    let mut keys = g.keys[0].clone();
    keys.tdh2_public = Arc::new(public);
    keys.tdh2_secret = secrets[0].clone();
    assert!(matches!(
        make(keys, 0),
        Err(ScabcError::Tdh2KeyMismatch { .. })
    ));
    // An inconsistent verification key.
    let mut public = (*g.public).clone();
    public.verification_keys.swap(2, 3);
    let mut keys = g.keys[0].clone();
    keys.tdh2_public = Arc::new(public);
    assert!(matches!(make(keys, 0), Err(ScabcError::Tdh2(_))));
    // Not a member.
    assert!(matches!(
        make(g.keys[0].clone(), 4),
        Err(ScabcError::NotAMember { .. })
    ));
}

#[test]
fn input_must_be_a_ciphertext_within_the_limits() {
    let g = group(4, 6);
    let mut net = Net::new(&g);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let node = &mut net.nodes[0];
    assert!(matches!(
        node.handle_input(b"plaintext".to_vec(), &mut rng),
        Err(ScabcError::NotACiphertext(_))
    ));
    let big = encrypt(&g, &[7; 1024], b"big", 1);
    assert!(matches!(
        node.handle_input(big, &mut rng),
        Err(ScabcError::RequestTooLarge { .. })
    ));
    let ok = encrypt(&g, b"hello", b"l", 1);
    assert!(node.handle_input(ok.clone(), &mut rng).is_ok());
    assert!(matches!(
        node.handle_input(ok, &mut rng),
        Err(ScabcError::Abc(AbcError::AlreadyPending))
    ));
    // A relabelled ciphertext is accepted for ordering; it is judged once ordered.
    assert!(node
        .handle_input(relabel(&encrypt(&g, b"x", b"l2", 2)), &mut rng)
        .is_ok());
}

#[test]
fn an_honest_group_delivers_plaintexts_and_invalid_entries_in_one_order() {
    let g = group(4, 7);
    let mut net = Net::new(&g);
    let first = encrypt(&g, b"first", b"c1/1", 1);
    let second = encrypt(&g, b"second", b"c2/1", 2);
    let tampered = relabel(&encrypt(&g, b"third", b"c3/1", 3));
    net.input(NodeId(0), first.clone());
    net.input(NodeId(1), second.clone());
    net.input(NodeId(2), tampered.clone());
    net.input(NodeId(3), first.clone()); // the same ciphertext at two nodes: delivered once
    net.run();
    assert!(net.faults.is_empty(), "{:?}", net.faults);
    let reference = net.outputs[0].clone();
    assert_eq!(reference.len(), 3);
    for outputs in &net.outputs {
        assert_eq!(outputs, &reference);
    }
    for (i, output) in reference.iter().enumerate() {
        assert_eq!(output.sequence, i as u64);
    }
    assert!(reference
        .windows(2)
        .all(|w| (w[0].round, w[0].index) < (w[1].round, w[1].index)));
    let result = |request: &[u8]| {
        let digest = abc::request_digest(request);
        reference
            .iter()
            .find(|o| o.request_digest == digest)
            .map(|o| o.result.clone())
    };
    assert_eq!(result(&first), Some(delivered(b"first", b"c1/1")));
    assert_eq!(result(&second), Some(delivered(b"second", b"c2/1")));
    assert_eq!(result(&tampered), Some(ScabcResult::Invalid));
    for node in &net.nodes {
        assert_eq!(node.pending_entries(), 0);
        assert_eq!(node.early_shares(), 0);
        assert_eq!(node.output_count(), 3);
    }
}

/// Node 0 submits `a`, then `b` and an invalid ciphertext: round 0 orders `[a]` (the batch a
/// node signs when its first request arrives) and round 1 `[b, invalid]`. With decryption
/// shares held back, node 0 gets node 1's shares with `a`'s share broken: `b` is then
/// decryptable but must wait for `a`, which needs another node's share.
#[test]
fn a_decrypted_entry_waits_for_the_earlier_ones_and_bad_shares_are_evidence() {
    let g = group(4, 8);
    let mut net = Net::new(&g);
    let a = encrypt(&g, b"a", b"A", 1);
    let b = encrypt(&g, b"b", b"B", 2);
    let invalid = relabel(&encrypt(&g, b"c", b"C", 3));
    net.hold_shares = true;
    net.input(NodeId(0), a);
    net.input(NodeId(0), b);
    net.input(NodeId(0), invalid);
    net.run();
    let me = NodeId(0);
    assert_eq!(net.nodes[0].ordered_rounds(), 2);
    assert_eq!(net.nodes[0].pending_entries(), 3);
    assert!(
        net.outputs.iter().all(Vec::is_empty),
        "no shares, no outputs"
    );

    let mut round0 = net.take_held(NodeId(1), me, 0);
    let round1 = net.take_held(NodeId(1), me, 1);
    let indices = |list: &[IndexedShare]| list.iter().map(|s| s.index).collect::<Vec<_>>();
    assert_eq!(indices(&round0), vec![0]);
    assert_eq!(indices(&round1), vec![0], "no share for the invalid entry");
    // a's entry gets node 1's share of b: a valid proof, for another ciphertext.
    round0[0].share = round1[0].share.clone();
    let shares = |round, shares| Message::Shares { round, shares };
    net.deliver(NodeId(1), me, shares(0, round0));
    assert_eq!(
        net.faults,
        vec![(
            me,
            Fault::new(NodeId(1), ScabcFault::InvalidShare { round: 0, index: 0 })
        )]
    );
    net.deliver(NodeId(1), me, shares(1, round1.clone()));
    assert!(net.outputs[0].is_empty(), "b waits for a");
    assert_eq!(net.nodes[0].pending_entries(), 3);

    // A share for the invalid entry is evidence (the rest of the list still counts).
    let mut from_two = net.take_held(NodeId(2), me, 1);
    from_two.push(IndexedShare {
        index: 1,
        share: from_two[0].share.clone(),
    });
    net.deliver(NodeId(2), me, shares(1, from_two));
    assert_eq!(
        net.faults[1..],
        [(
            me,
            Fault::new(
                NodeId(2),
                ScabcFault::ShareForInvalidCiphertext { round: 1, index: 1 }
            )
        )]
    );
    assert!(net.outputs[0].is_empty());
    // Node 2's share of a releases all three, in order.
    let round0 = net.take_held(NodeId(2), me, 0);
    net.deliver(NodeId(2), me, shares(0, round0));
    let outputs: Vec<_> = net.outputs[0]
        .iter()
        .map(|o| (o.sequence, o.round, o.index, o.result.clone()))
        .collect();
    assert_eq!(
        outputs,
        vec![
            (0, 0, 0, delivered(b"a", b"A")),
            (1, 1, 0, delivered(b"b", b"B")),
            (2, 1, 1, ScabcResult::Invalid)
        ]
    );
    assert_eq!(net.faults.len(), 2);
    // Once a round is output, any list for it is dropped silently — even a conflicting one
    // with a share beyond the round.
    let mut late = round1;
    late.push(IndexedShare {
        index: 9,
        share: late[0].share.clone(),
    });
    let step = net.nodes[0].handle_message(
        NodeId(1),
        shares(1, late),
        &mut ChaCha8Rng::seed_from_u64(2),
    );
    assert!(step.is_empty());
    assert_eq!(
        net.nodes[0].stored_messages(),
        net.nodes[0].abc().stored_messages()
    );
}

#[test]
fn share_lists_are_checked_and_bounded_before_delivery() {
    let g = group(4, 9);
    let mut net = Net::new(&g);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let ciphertext = decode_request(&encrypt(&g, b"m", b"L", 4)).unwrap();
    let share_of = |node: usize, rng: &mut ChaCha8Rng| {
        tdh2::decrypt_share(&g.public, &g.secrets[node], &ciphertext, rng).unwrap()
    };
    let list = |node: usize, indices: &[u32], rng: &mut ChaCha8Rng| -> Vec<IndexedShare> {
        let share = share_of(node, rng);
        indices
            .iter()
            .map(|&index| IndexedShare {
                index,
                share: share.clone(),
            })
            .collect()
    };
    let one = NodeId(1);
    let mut send = |node: &mut Node, from: NodeId, round: u64, shares: Vec<IndexedShare>| {
        node.handle_message(from, Message::Shares { round, shares }, &mut rng)
            .faults
    };
    let node = &mut net.nodes[0];
    let mut r = ChaCha8Rng::seed_from_u64(4);
    let far = abc::ROUND_WINDOW + 1;
    assert_eq!(
        send(node, one, far, list(1, &[0], &mut r)),
        vec![Fault::new(
            one,
            ScabcFault::FutureShares {
                round: far,
                current: 0
            }
        )]
    );
    let malformed = |round| vec![Fault::new(one, ScabcFault::MalformedShares { round })];
    assert_eq!(send(node, one, 1, Vec::new()), malformed(1));
    assert_eq!(send(node, one, 1, list(1, &[3, 2], &mut r)), malformed(1));
    assert_eq!(send(node, one, 1, list(1, &[2, 2], &mut r)), malformed(1));
    let too_many: Vec<u32> = (0..=(4 * params().batch_size) as u32).collect();
    assert_eq!(send(node, one, 1, list(1, &too_many, &mut r)), malformed(1));
    assert_eq!(
        send(node, one, 1, list(2, &[0, 1], &mut r)),
        vec![Fault::new(
            one,
            ScabcFault::WrongShareIndex { round: 1, index: 0 }
        )]
    );
    assert_eq!(node.early_shares(), 0, "nothing malformed is kept");
    // A well-formed early list is kept once; a duplicate is ignored, a different one reported.
    let full: Vec<u32> = (0..(4 * params().batch_size) as u32).collect();
    let early = list(1, &full, &mut r);
    assert!(send(node, one, abc::ROUND_WINDOW, early.clone()).is_empty());
    assert!(send(node, one, abc::ROUND_WINDOW, early).is_empty());
    assert_eq!(node.early_shares(), full.len());
    assert_eq!(
        send(node, one, abc::ROUND_WINDOW, list(1, &[0], &mut r)),
        vec![Fault::new(
            one,
            ScabcFault::ConflictingShares {
                round: abc::ROUND_WINDOW
            }
        )]
    );
    assert_eq!(node.early_shares(), full.len());
    // Every member filling every round of the window reaches the documented bound, no more.
    for round in 0..=abc::ROUND_WINDOW {
        for sender in 0..4usize {
            let shares = list(sender, &full, &mut r);
            let _ = send(node, NodeId(sender as u16), round, shares);
        }
    }
    assert_eq!(node.early_shares(), node.early_shares_bound());
    assert!(node.stored_messages() <= node.stored_messages_bound(0));
    // Non-members are reported.
    assert_eq!(
        node.handle_message(
            NodeId(4),
            Message::Shares {
                round: 0,
                shares: list(1, &[0], &mut r)
            },
            &mut ChaCha8Rng::seed_from_u64(5)
        )
        .faults,
        vec![Fault::new(NodeId(4), ScabcFault::NotAMember)]
    );
}

/// Shares that arrived before the round was ordered are used once it is, and the round's
/// entries decrypt even though every other node's shares came early.
#[test]
fn early_shares_are_used_when_the_round_is_ordered() {
    let g = group(4, 10);
    let mut net = Net::new(&g);
    let request = encrypt(&g, b"early", b"E", 1);
    net.input(NodeId(1), request);
    // Run everything except what goes to node 0, then give node 0 the shares first.
    let mut to_zero = Vec::new();
    while let Some((from, to, message)) = net.queue.pop_front() {
        if to == NodeId(0) {
            to_zero.push((from, message));
        } else {
            net.deliver(from, to, message);
        }
    }
    for i in 1..4 {
        assert_eq!(net.outputs[i].len(), 1);
    }
    let (shares, rest): (Vec<_>, Vec<_>) = to_zero
        .into_iter()
        .partition(|(_, m)| matches!(m, Message::Shares { .. }));
    assert_eq!(shares.len(), 3);
    for (from, message) in shares {
        net.deliver(from, NodeId(0), message);
    }
    assert_eq!(net.nodes[0].early_shares(), 3);
    assert!(net.outputs[0].is_empty());
    for (from, message) in rest {
        net.queue.push_back((from, NodeId(0), message));
    }
    net.run();
    assert!(net.faults.is_empty(), "{:?}", net.faults);
    assert_eq!(net.outputs[0], net.outputs[1]);
    assert_eq!(net.outputs[0][0].result, delivered(b"early", b"E"));
    assert_eq!(net.nodes[0].early_shares(), 0);
}
