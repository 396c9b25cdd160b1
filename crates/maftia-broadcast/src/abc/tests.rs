use super::*;
use crate::cbc;
use maftia_core::Fault;
use maftia_sim::insecure_crypto::InsecureThresholdSigner;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

type Node = Abc<InsecureThresholdSigner>;
type Msg = AbcMessage<InsecureThresholdSigner>;

const INSTANCE: &[u8] = b"abc unit";

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(11)
}

fn params() -> AbcParams {
    AbcParams {
        batch_size: 3,
        max_batch_bytes: 64,
        max_request_size: 32,
        max_pending: 8,
        dedup_rounds: 3,
    }
}

struct Group {
    config: GroupConfig,
    keys: Vec<ThresholdKeys<InsecureThresholdSigner>>,
    identities: Vec<IdentityKey>,
    registry: Arc<Vec<IdentityPublicKey>>,
}

fn group(n: usize) -> Group {
    let f = (n - 1) / 3;
    let config = GroupConfig::asynchronous(n, f).unwrap();
    let deal = |k, name| InsecureThresholdSigner::deal(n, k, name);
    let (coin, cbc, quorum) = (
        deal(config.one_honest(), "unit coin"),
        deal(config.echo_quorum(), "unit cbc"),
        deal(config.quorum(), "unit quorum"),
    );
    let keys = (0..n)
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
    let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
    let identities: Vec<IdentityKey> = (0..n).map(|_| IdentityKey::generate(&mut rng)).collect();
    let registry = Arc::new(identities.iter().map(IdentityKey::public).collect());
    Group {
        config,
        keys,
        identities,
        registry,
    }
}

impl Group {
    fn node_with(&self, i: usize, params: AbcParams) -> Result<Node, AbcError> {
        Abc::new(
            self.config,
            NodeId(i as u16),
            INSTANCE.to_vec(),
            self.keys[i].clone(),
            self.identities[i].clone(),
            self.registry.clone(),
            params,
        )
    }

    fn node(&self, i: usize) -> Node {
        self.node_with(i, params()).unwrap()
    }

    fn nodes(&self) -> Vec<Node> {
        (0..self.config.n()).map(|i| self.node(i)).collect()
    }

    /// `sender`'s signed batch of `requests` for `round`.
    fn signed(&self, round: u64, sender: usize, requests: &[&[u8]]) -> SignedBatch {
        let requests: Vec<Vec<u8>> = requests.iter().map(|r| r.to_vec()).collect();
        let message = batch_message(INSTANCE, round, NodeId(sender as u16), &requests);
        SignedBatch {
            sender: NodeId(sender as u16),
            signature: self.identities[sender].sign(BATCH_SIGNATURE_CONTEXT, &message),
            requests,
        }
    }

    fn batch_message_from(&self, round: u64, sender: usize, requests: &[&[u8]]) -> Msg {
        let batch = self.signed(round, sender, requests);
        Message::Batch {
            round,
            requests: batch.requests,
            signature: batch.signature,
        }
    }

    fn predicate(&self, round: u64) -> BatchVectorPredicate {
        let cache: SharedCache = Arc::new(Mutex::new(SignatureCache::default()));
        lock(&cache).set_rounds(0, 100);
        BatchVectorPredicate {
            config: self.config,
            round,
            instance: INSTANCE.into(),
            identities: self.registry.clone(),
            params: params(),
            max_value: params().max_value_size(self.config.n()).unwrap(),
            cache,
            verdicts: Mutex::new(BTreeMap::new()),
        }
    }
}

fn encode_vector(batches: Vec<SignedBatch>) -> Vec<u8> {
    codec::encode(&BatchVector { batches }).unwrap()
}

/// Deliver every message (FIFO, each sent message to each recipient, the sender's own copy
/// included for `Target::All`) until none is left. Returns each node's outputs and all faults.
fn run(
    nodes: &mut [Node],
    initial: Vec<(NodeId, ProtocolStep<Node>)>,
) -> (Vec<Vec<AbcDelivery>>, Vec<Fault<AbcFault>>) {
    let n = nodes.len();
    let mut rng = rng();
    let mut queue = std::collections::VecDeque::new();
    let mut outputs = vec![Vec::new(); n];
    let mut faults = Vec::new();
    let mut absorb = |from: NodeId,
                      step: ProtocolStep<Node>,
                      queue: &mut std::collections::VecDeque<(NodeId, NodeId, Msg)>,
                      outputs: &mut Vec<Vec<AbcDelivery>>| {
        outputs[from.index()].extend(step.outputs);
        faults.extend(step.faults);
        for m in step.messages {
            for to in m.target.recipients(from, n) {
                queue.push_back((from, to, m.message.clone()));
            }
        }
    };
    for (from, step) in initial {
        absorb(from, step, &mut queue, &mut outputs);
    }
    let mut events = 0;
    while let Some((from, to, message)) = queue.pop_front() {
        events += 1;
        assert!(events < 1_000_000, "no quiescence");
        let step = nodes[to.index()].handle_message(from, message, &mut rng);
        absorb(to, step, &mut queue, &mut outputs);
    }
    (outputs, faults)
}

#[test]
fn batch_messages_bind_instance_round_sender_and_content() {
    let requests = vec![b"ab".to_vec(), b"c".to_vec()];
    let base = batch_message(b"i", 1, NodeId(2), &requests);
    assert_eq!(base, batch_message(b"i", 1, NodeId(2), &requests));
    assert_ne!(base, batch_message(b"j", 1, NodeId(2), &requests));
    assert_ne!(base, batch_message(b"i", 2, NodeId(2), &requests));
    assert_ne!(base, batch_message(b"i", 1, NodeId(3), &requests));
    // Moving bytes between requests, or splitting one, changes the message.
    assert_ne!(
        base,
        batch_message(b"i", 1, NodeId(2), &[b"a".to_vec(), b"bc".to_vec()])
    );
    assert_ne!(base, batch_message(b"i", 1, NodeId(2), &[b"abc".to_vec()]));
    assert_ne!(
        batch_message(b"i", 1, NodeId(2), &[]),
        batch_message(b"i", 1, NodeId(2), &[Vec::new()])
    );
    assert_ne!(mvba_instance(b"i", 1), mvba_instance(b"i", 2));
    assert_ne!(request_digest(b"x"), request_digest(b"y"));
}

#[test]
fn constructor_checks_membership_identities_and_params() {
    let g = group(4);
    assert!(g.node_with(0, AbcParams::default()).is_ok());
    assert!(matches!(
        Abc::new(
            g.config,
            NodeId(4),
            INSTANCE.to_vec(),
            g.keys[0].clone(),
            g.identities[0].clone(),
            g.registry.clone(),
            params()
        ),
        Err(AbcError::NotAMember { .. })
    ));
    let short = Arc::new(g.registry[..3].to_vec());
    assert!(matches!(
        Abc::new(
            g.config,
            NodeId(0),
            INSTANCE.to_vec(),
            g.keys[0].clone(),
            g.identities[0].clone(),
            short,
            params()
        ),
        Err(AbcError::IdentityCount {
            found: 3,
            expected: 4
        })
    ));
    assert!(matches!(
        Abc::new(
            g.config,
            NodeId(0),
            INSTANCE.to_vec(),
            g.keys[0].clone(),
            g.identities[1].clone(),
            g.registry.clone(),
            params()
        ),
        Err(AbcError::IdentityMismatch { our_id: NodeId(0) })
    ));
    // Key sets of another node are refused by the MVBA of round 0.
    assert!(matches!(
        Abc::new(
            g.config,
            NodeId(0),
            INSTANCE.to_vec(),
            g.keys[1].clone(),
            g.identities[0].clone(),
            g.registry.clone(),
            params()
        ),
        Err(AbcError::Mvba(_))
    ));
    for bad in [
        AbcParams {
            batch_size: 0,
            ..params()
        },
        AbcParams {
            max_pending: 0,
            ..params()
        },
        AbcParams {
            max_request_size: 65,
            ..params()
        },
        AbcParams {
            dedup_rounds: 0,
            ..params()
        },
    ] {
        assert!(matches!(
            g.node_with(0, bad),
            Err(AbcError::InvalidParams(_))
        ));
    }
    let huge = AbcParams {
        max_batch_bytes: MAX_MESSAGE_SIZE,
        ..params()
    };
    assert!(matches!(
        g.node_with(0, huge),
        Err(AbcError::ProposalTooLarge { .. })
    ));
}

#[test]
fn input_rules() {
    let g = group(4);
    let mut node = g.node(0);
    assert!(matches!(
        node.handle_input(vec![0; 33], &mut rng()),
        Err(AbcError::RequestTooLarge { len: 33, max: 32 })
    ));
    let _ = node.handle_input(b"a".to_vec(), &mut rng()).unwrap();
    assert!(matches!(
        node.handle_input(b"a".to_vec(), &mut rng()),
        Err(AbcError::AlreadyPending)
    ));
    for i in 1..8u8 {
        let _ = node.handle_input(vec![i], &mut rng()).unwrap();
    }
    assert_eq!(node.pending(), 8);
    assert!(matches!(
        node.handle_input(b"one too many".to_vec(), &mut rng()),
        Err(AbcError::QueueFull { max: 8 })
    ));
    // Once delivered (and within the dedup window), a request is refused.
    let value = encode_vector(vec![
        g.signed(0, 0, &[b"a"]),
        g.signed(0, 1, &[]),
        g.signed(0, 2, &[]),
    ]);
    let delivery = node.deliver_decided(0, &value);
    assert_eq!(delivery.requests, vec![b"a".to_vec()]);
    assert_eq!(node.pending(), 7);
    assert!(matches!(
        node.handle_input(b"a".to_vec(), &mut rng()),
        Err(AbcError::AlreadyDelivered)
    ));
}

#[test]
fn an_idle_node_sends_nothing_and_input_starts_the_round_once() {
    let g = group(4);
    let mut node = g.node(0);
    assert_eq!(node.round(), 0);
    assert!(!node.terminated());
    let step = node.handle_input(b"r1".to_vec(), &mut rng()).unwrap();
    assert!(step.faults.is_empty() && step.outputs.is_empty());
    assert_eq!(step.messages.len(), 1);
    assert_eq!(step.messages[0].target, Target::Others);
    let Message::Batch {
        round,
        requests,
        signature,
    } = &step.messages[0].message
    else {
        panic!("expected a batch, got {:?}", step.messages[0].message);
    };
    assert_eq!((*round, requests.clone()), (0, vec![b"r1".to_vec()]));
    let message = batch_message(INSTANCE, 0, NodeId(0), requests);
    assert!(g.registry[0].verify(BATCH_SIGNATURE_CONTEXT, &message, signature));
    // One batch per round: a later request waits for the next round.
    let step = node.handle_input(b"r2".to_vec(), &mut rng()).unwrap();
    assert!(step.is_empty());
    assert_eq!(node.pending(), 2);
}

#[test]
fn a_batch_from_another_node_starts_the_round() {
    let g = group(4);
    let mut node = g.node(1);
    let step = node.handle_message(NodeId(0), g.batch_message_from(0, 0, &[]), &mut rng());
    assert!(step.faults.is_empty());
    assert_eq!(step.messages.len(), 1);
    assert_eq!(
        step.messages[0].message,
        g.batch_message_from(0, 1, &[]),
        "an empty batch, deterministically signed"
    );
}

#[test]
fn batch_rules_and_evidence() {
    let g = group(4);
    let mut node = g.node(2);
    let fault = |step: ProtocolStep<Node>| step.faults;
    // Non-member.
    assert_eq!(
        fault(node.handle_message(NodeId(9), g.batch_message_from(0, 0, &[]), &mut rng())),
        vec![Fault::new(NodeId(9), AbcFault::NotAMember)]
    );
    // Beyond the window: evidence, no state.
    let before = node.stored_messages();
    let far = g.batch_message_from(ROUND_WINDOW + 1, 0, &[b"x"]);
    assert_eq!(
        fault(node.handle_message(NodeId(0), far, &mut rng())),
        vec![Fault::new(
            NodeId(0),
            AbcFault::FutureRound {
                round: ROUND_WINDOW + 1,
                current: 0
            }
        )]
    );
    assert_eq!(node.stored_messages(), before);
    assert_eq!(node.rounds.len(), 1);
    // Out of limits: four requests, or too many bytes, or one oversized request.
    for requests in [
        vec![b"a".to_vec(); 4],
        vec![vec![0u8; 32], vec![0u8; 32], vec![0u8; 1]],
        vec![vec![0u8; 33]],
    ] {
        let message = Message::Batch {
            round: 1,
            requests: requests.clone(),
            signature: g.identities[0].sign(BATCH_SIGNATURE_CONTEXT, b"whatever"),
        };
        let faults = fault(node.handle_message(NodeId(0), message, &mut rng()));
        assert!(
            matches!(
                faults.as_slice(),
                [Fault {
                    culprit: NodeId(0),
                    kind: AbcFault::BatchOutOfLimits { round: 1, .. }
                }]
            ),
            "{faults:?}"
        );
    }
    // A batch signed by someone else: invalid signature; the sender is then ignored this round.
    let forged = Message::Batch {
        round: 1,
        requests: vec![b"f".to_vec()],
        signature: g.signed(1, 0, &[b"f"]).signature,
    };
    assert_eq!(
        fault(node.handle_message(NodeId(3), forged, &mut rng())),
        vec![Fault::new(
            NodeId(3),
            AbcFault::InvalidBatchSignature { round: 1 }
        )]
    );
    assert!(node
        .handle_message(NodeId(3), g.batch_message_from(1, 3, &[]), &mut rng())
        .is_empty());
    assert!(!node.rounds[&1].batches.contains_key(&NodeId(3)));
    // A valid future batch is stored (it does not start the current round); a duplicate is
    // ignored; a second, different one is equivocation, reported once.
    assert!(node
        .handle_message(NodeId(0), g.batch_message_from(1, 0, &[b"a"]), &mut rng())
        .is_empty());
    assert!(node
        .handle_message(NodeId(0), g.batch_message_from(1, 0, &[b"a"]), &mut rng())
        .is_empty());
    let faults =
        fault(node.handle_message(NodeId(0), g.batch_message_from(1, 0, &[b"b"]), &mut rng()));
    assert_eq!(
        faults,
        vec![Fault::new(
            NodeId(0),
            AbcFault::EquivocatingBatch {
                round: 1,
                first: batch_message(INSTANCE, 1, NodeId(0), &[b"a".to_vec()]),
                second: batch_message(INSTANCE, 1, NodeId(0), &[b"b".to_vec()]),
            }
        )]
    );
    assert!(node
        .handle_message(NodeId(0), g.batch_message_from(1, 0, &[b"c"]), &mut rng())
        .is_empty());
    assert_eq!(
        node.rounds[&1].batches[&NodeId(0)].requests,
        vec![b"a".to_vec()]
    );
    assert_eq!(node.round(), 0);
    assert!(
        !node.rounds[&0].batch_sent,
        "round 0 was not started by round-1 batches"
    );
}

#[test]
fn a_node_proposes_its_held_batches_once_it_has_n_minus_f() {
    let g = group(4);
    let mut node = g.node(0);
    let step = node.handle_input(b"mine".to_vec(), &mut rng()).unwrap();
    assert_eq!(step.messages.len(), 1);
    let step = node.handle_message(NodeId(2), g.batch_message_from(0, 2, &[b"two"]), &mut rng());
    assert!(step.is_empty(), "two batches are not a quorum of 3");
    let step = node.handle_message(NodeId(1), g.batch_message_from(0, 1, &[]), &mut rng());
    // The MVBA proposal: the CBC Send of our vector, to everyone.
    let proposals: Vec<Vec<u8>> = step
        .messages
        .iter()
        .filter_map(|m| match &m.message {
            Message::Mvba {
                round: 0,
                message: mvba::Message::Proposal(NodeId(0), cbc::Message::Send(value)),
            } => Some(value.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(proposals.len(), 1, "{:?}", step.messages);
    let vector: BatchVector = codec::decode(&proposals[0]).unwrap();
    let senders: Vec<NodeId> = vector.batches.iter().map(|b| b.sender).collect();
    assert_eq!(senders, vec![NodeId(0), NodeId(1), NodeId(2)]);
    assert_eq!(vector.batches[0].requests, vec![b"mine".to_vec()]);
    assert!(g.predicate(0).is_valid(&proposals[0]));
    // Late batches do not make a second proposal.
    let step = node.handle_message(NodeId(3), g.batch_message_from(0, 3, &[]), &mut rng());
    assert!(step.is_empty());
}

#[test]
fn the_predicate_accepts_exactly_well_formed_validly_signed_vectors() {
    let g = group(4);
    let q = g.predicate(5);
    let b = |sender, requests: &[&[u8]]| g.signed(5, sender, requests);
    assert!(q.is_valid(&encode_vector(vec![
        b(0, &[b"x"]),
        b(1, &[]),
        b(3, &[b"y", b"z"])
    ])));
    assert!(q.is_valid(&encode_vector(vec![
        b(0, &[]),
        b(1, &[]),
        b(2, &[]),
        b(3, &[])
    ])));
    let invalid = [
        // Too few batches.
        encode_vector(vec![b(0, &[]), b(1, &[])]),
        // A repeated or unordered sender.
        encode_vector(vec![b(0, &[]), b(0, &[]), b(1, &[])]),
        encode_vector(vec![b(1, &[]), b(0, &[]), b(2, &[])]),
        // A batch of another round.
        encode_vector(vec![b(0, &[]), b(1, &[]), g.signed(4, 2, &[])]),
        // A batch attributed to another sender.
        encode_vector(vec![
            b(0, &[]),
            b(1, &[]),
            SignedBatch {
                sender: NodeId(2),
                ..b(3, &[])
            },
        ]),
        // A tampered request.
        encode_vector(vec![
            b(0, &[]),
            b(1, &[]),
            SignedBatch {
                requests: vec![b"tampered".to_vec()],
                ..b(2, &[b"original"])
            },
        ]),
        // Over the limits (4 requests), properly signed.
        encode_vector(vec![b(0, &[]), b(1, &[]), b(2, &[b"1", b"2", b"3", b"4"])]),
        // Not a vector at all.
        b"garbage".to_vec(),
        Vec::new(),
    ];
    for (i, value) in invalid.iter().enumerate() {
        assert!(!q.is_valid(value), "case {i} accepted");
    }
    // A non-member sender is refused even with a well-formed entry.
    let mut outsider = b(3, &[]);
    outsider.sender = NodeId(4);
    assert!(!q.is_valid(&encode_vector(vec![b(0, &[]), b(1, &[]), outsider])));
}

#[test]
fn the_predicate_verifies_each_signature_once() {
    let g = group(4);
    let q = g.predicate(0);
    let batches = vec![
        g.signed(0, 0, &[]),
        g.signed(0, 1, &[]),
        g.signed(0, 2, &[]),
    ];
    let value = encode_vector(batches.clone());
    assert!(q.is_valid(&value));
    assert_eq!(lock(&q.cache).len(), 3, "each valid signature cached");
    // The cache is what Q consults: a cached (here: forged) entry is not verified again.
    let forged = SignedBatch {
        signature: IdentitySignature::from_bytes(&[1; 64]),
        ..g.signed(0, 3, &[])
    };
    let forged_message = batch_message(INSTANCE, 0, NodeId(3), &[]);
    let with_forged = encode_vector(vec![batches[0].clone(), batches[1].clone(), forged.clone()]);
    assert!(!q.is_valid(&with_forged));
    lock(&q.cache).insert(
        0,
        NodeId(3),
        SignatureCache::key(&forged_message, &forged.signature),
    );
    let other_value = encode_vector(vec![batches[1].clone(), batches[2].clone(), forged]);
    assert!(q.is_valid(&other_value), "served from the signature cache");
    // And a value's verdict is remembered, whatever the cache says later.
    assert!(!q.is_valid(&with_forged));
}

#[test]
fn the_signature_cache_is_bounded_per_sender_and_round() {
    let mut cache = SignatureCache::default();
    cache.set_rounds(2, 6);
    for i in 0..10u8 {
        cache.insert(3, NodeId(1), [i; 32]);
    }
    assert_eq!(cache.len(), CACHED_SIGNATURES_PER_SENDER);
    cache.insert(1, NodeId(1), [0; 32]);
    cache.insert(7, NodeId(1), [0; 32]);
    assert_eq!(
        cache.len(),
        CACHED_SIGNATURES_PER_SENDER,
        "rounds outside are not cached"
    );
    assert!(cache.contains(3, NodeId(1), &[0; 32]));
    cache.set_rounds(4, 8);
    assert_eq!(cache.len(), 0);
}

#[test]
fn delivery_order_dedup_window_and_pending_removal() {
    let g = group(4);
    let mut node = g.node(1);
    for r in [b"p".as_slice(), b"q", b"keep"] {
        let _ = node.handle_input(r.to_vec(), &mut rng()).unwrap();
    }
    let value = |round, batches: [&[&[u8]]; 3]| {
        encode_vector(
            batches
                .iter()
                .enumerate()
                .map(|(sender, requests)| g.signed(round, [0, 2, 3][sender], requests))
                .collect(),
        )
    };
    // Vector order (by sender), then batch order; a repeat within the round is skipped.
    let d0 = node.deliver_decided(0, &value(0, [&[b"b", b"a"], &[b"p", b"a"], &[b"c"]]));
    assert_eq!(d0.round, 0);
    assert_eq!(
        d0.requests,
        vec![b"b".to_vec(), b"a".to_vec(), b"p".to_vec(), b"c".to_vec()]
    );
    assert_eq!(node.pending(), 2, "p left the queue");
    // Within the dedup window (the 3 previous rounds) nothing is delivered twice.
    let d1 = node.deliver_decided(1, &value(1, [&[b"a"], &[b"q"], &[]]));
    assert_eq!(d1.requests, vec![b"q".to_vec()]);
    let d2 = node.deliver_decided(2, &value(2, [&[b"b"], &[], &[]]));
    assert!(d2.requests.is_empty());
    let d3 = node.deliver_decided(3, &value(3, [&[b"b"], &[b"q"], &[]]));
    assert!(
        d3.requests.is_empty(),
        "rounds 0–2 are remembered in round 3"
    );
    // Round 4 remembers rounds 1–3: b (round 0) may come again, q (round 1) may not.
    let d4 = node.deliver_decided(4, &value(4, [&[b"b"], &[b"q"], &[]]));
    assert_eq!(d4.requests, vec![b"b".to_vec()]);
    // An undecodable value (impossible for a real decision) delivers an empty round.
    let d5 = node.deliver_decided(5, b"not a vector");
    assert_eq!(
        d5,
        AbcDelivery {
            round: 5,
            requests: vec![]
        }
    );
    assert_eq!(node.pending(), 1);
}

/// The reference model of step 4: concatenate the batches in vector order, drop requests seen
/// in this round or in the `dedup_rounds` rounds before.
fn model(vectors: &[Vec<Vec<Vec<u8>>>], dedup_rounds: usize) -> Vec<Vec<Vec<u8>>> {
    let mut delivered: Vec<Vec<Vec<u8>>> = Vec::new();
    for vector in vectors {
        let start = delivered.len().saturating_sub(dedup_rounds);
        let window: Vec<&Vec<u8>> = delivered[start..].iter().flatten().collect();
        let mut round = Vec::new();
        for request in vector.iter().flatten() {
            if !window.contains(&request) && !round.contains(request) {
                round.push(request.clone());
            }
        }
        delivered.push(round);
    }
    delivered
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Step 4 is a deterministic function of the decided vectors: two nodes with different
    /// local state (pending queues, received batches) deliver exactly the same, which is the
    /// reference model's output.
    #[test]
    fn delivery_is_a_function_of_the_decided_vectors(
        rounds in prop::collection::vec(
            prop::collection::vec(prop::collection::vec(0u8..6, 0..4), 3..=4),
            1..8,
        ),
        local in prop::collection::vec(0u8..6, 0..6),
    ) {
        let g = group(4);
        let mut a = g.node(0);
        let mut b = g.node(3);
        for r in &local {
            let _ = a.handle_input(vec![b'r', *r], &mut rng());
        }
        let _ = b.handle_message(NodeId(1), g.batch_message_from(0, 1, &[b"noise"]), &mut rng());
        let mut vectors = Vec::new();
        for (round, batches) in rounds.iter().enumerate() {
            let requests: Vec<Vec<Vec<u8>>> = batches
                .iter()
                .map(|batch| batch.iter().map(|r| vec![b'r', *r]).collect())
                .collect();
            let signed: Vec<SignedBatch> = requests
                .iter()
                .enumerate()
                .map(|(sender, rs)| {
                    let rs: Vec<&[u8]> = rs.iter().map(Vec::as_slice).collect();
                    g.signed(round as u64, sender, &rs)
                })
                .collect();
            let value = encode_vector(signed);
            let da = a.deliver_decided(round as u64, &value);
            let db = b.deliver_decided(round as u64, &value);
            prop_assert_eq!(&da, &db);
            prop_assert_eq!(da.round, round as u64);
            vectors.push(requests);
        }
        let expected = model(&vectors, params().dedup_rounds as usize);
        let mut c = g.node(2);
        for (round, (requests, batches)) in expected.iter().zip(&vectors).enumerate() {
            let signed: Vec<SignedBatch> = batches
                .iter()
                .enumerate()
                .map(|(sender, rs)| {
                    let rs: Vec<&[u8]> = rs.iter().map(Vec::as_slice).collect();
                    g.signed(round as u64, sender, &rs)
                })
                .collect();
            let delivery = c.deliver_decided(round as u64, &encode_vector(signed));
            prop_assert_eq!(&delivery.requests, requests);
        }
    }
}

#[test]
fn a_group_orders_everything_and_goes_quiet() {
    for n in [1, 4, 7] {
        let g = group(n);
        let mut nodes = g.nodes();
        let mut initial = Vec::new();
        let mut submitted = BTreeSet::new();
        for (i, node) in nodes.iter_mut().enumerate() {
            for k in 0..4 {
                let request = format!("{i}/{k}").into_bytes();
                submitted.insert(request.clone());
                initial.push((
                    node.our_id(),
                    node.handle_input(request, &mut rng()).unwrap(),
                ));
            }
            // A request also submitted at the next node.
            let shared = format!("shared {i}").into_bytes();
            submitted.insert(shared.clone());
            initial.push((
                node.our_id(),
                node.handle_input(shared.clone(), &mut rng()).unwrap(),
            ));
            if i > 0 {
                let previous = format!("shared {}", i - 1).into_bytes();
                initial.push((
                    node.our_id(),
                    node.handle_input(previous, &mut rng()).unwrap(),
                ));
            }
        }
        let (outputs, faults) = run(&mut nodes, initial);
        assert!(faults.is_empty(), "{faults:?}");
        for (i, node) in nodes.iter().enumerate() {
            assert_eq!(outputs[i], outputs[0], "n = {n}: node {i} disagrees");
            assert_eq!(node.pending(), 0);
            assert_eq!(node.round(), outputs[0].len() as u64);
            assert!(node.rounds.len() as u64 <= RETAINED_ROUNDS + ROUND_WINDOW + 1);
            assert!(node.cached_signatures() <= n * CACHED_SIGNATURES_PER_SENDER * 9);
        }
        let delivered: Vec<Vec<u8>> = outputs[0].iter().flat_map(|d| d.requests.clone()).collect();
        let unique: BTreeSet<Vec<u8>> = delivered.iter().cloned().collect();
        assert_eq!(unique.len(), delivered.len(), "n = {n}: a duplicate");
        assert_eq!(unique, submitted, "n = {n}");
        // Batches of 3 with 5–6 requests per node: at least two rounds.
        assert!(outputs[0].len() >= 2);
        // Quiet: a message now changes nothing, and nobody starts a round by itself.
        let step = nodes[0].handle_input(b"late".to_vec(), &mut rng()).unwrap();
        let batches = step
            .messages
            .iter()
            .filter(|m| matches!(m.message, Message::Batch { .. }))
            .count();
        assert_eq!(batches, 1, "one batch for the new request");
    }
}

#[test]
fn messages_of_delivered_rounds_are_dropped_or_routed_to_retained_instances() {
    let g = group(4);
    let mut nodes = g.nodes();
    let initial: Vec<_> = nodes
        .iter_mut()
        .map(|node| {
            (
                node.our_id(),
                node.handle_input(b"only".to_vec(), &mut rng()).unwrap(),
            )
        })
        .collect();
    let (outputs, _) = run(&mut nodes, initial);
    assert_eq!(outputs[0].len(), 1);
    let node = &mut nodes[0];
    assert_eq!(node.round(), 1);
    // A batch of the delivered round is dropped without evidence or state.
    let stored = node.stored_messages();
    assert!(node
        .handle_message(
            NodeId(1),
            g.batch_message_from(0, 1, &[b"late"]),
            &mut rng()
        )
        .is_empty());
    assert_eq!(node.stored_messages(), stored);
    assert!(node.rounds[&0].delivered && node.rounds[&0].batches.is_empty());
}

#[test]
fn message_codec_roundtrip() {
    let g = group(4);
    let messages: Vec<Msg> = vec![
        g.batch_message_from(3, 1, &[b"a", b""]),
        Message::Mvba {
            round: 7,
            message: mvba::Message::Vote {
                attempt: 1,
                vote: mvba::Vote::Zero,
            },
        },
    ];
    for m in messages {
        let frame = codec::encode(&m).unwrap();
        assert_eq!(codec::decode::<Msg>(&frame).unwrap(), m);
    }
}

#[test]
fn max_value_size_bounds_every_valid_vector() {
    let p = params();
    let g = group(4);
    let full: Vec<&[u8]> = vec![&[0xff; 21], &[0xff; 21], &[0xff; 22]];
    let value = encode_vector((0..4).map(|s| g.signed(0, s, &full)).collect());
    assert!(value.len() <= p.max_value_size(4).unwrap());
    assert!(g.predicate(0).is_valid(&value));
    assert_eq!(
        AbcParams {
            batch_size: usize::MAX,
            ..p
        }
        .max_value_size(4),
        None
    );
}

/// A node that hears nothing while the others order several rounds catches up from the
/// messages of those rounds alone once its links deliver (fewer rounds than the window).
#[test]
fn a_node_behind_catches_up_from_the_rounds_messages() {
    let g = group(4);
    let mut nodes = g.nodes();
    let mut rng = rng();
    let mut live = std::collections::VecDeque::new();
    let mut held = std::collections::VecDeque::new();
    let mut outputs = vec![Vec::new(); 4];
    let mut faults = Vec::new();
    let late = NodeId(3);
    let mut route = |from: NodeId,
                     step: ProtocolStep<Node>,
                     live: &mut std::collections::VecDeque<(NodeId, NodeId, Msg)>,
                     held: &mut std::collections::VecDeque<(NodeId, NodeId, Msg)>,
                     outputs: &mut Vec<Vec<AbcDelivery>>| {
        outputs[from.index()].extend(step.outputs);
        faults.extend(step.faults);
        for m in step.messages {
            for to in m.target.recipients(from, 4) {
                let queue = if to == late { &mut *held } else { &mut *live };
                queue.push_back((from, to, m.message.clone()));
            }
        }
    };
    // Node 0 has eight requests (its first batch goes out with the first one, then batches of
    // three): several rounds, ordered by nodes 0–2 alone.
    for k in 0..8 {
        let step = nodes[0]
            .handle_input(format!("request {k}").into_bytes(), &mut rng)
            .unwrap();
        route(NodeId(0), step, &mut live, &mut held, &mut outputs);
    }
    while let Some((from, to, message)) = live.pop_front() {
        let step = nodes[to.index()].handle_message(from, message, &mut rng);
        route(to, step, &mut live, &mut held, &mut outputs);
    }
    let rounds = outputs[0].len();
    assert!(rounds >= 3, "{rounds} rounds");
    assert!(
        rounds as u64 <= ROUND_WINDOW,
        "the test stays within the window"
    );
    assert!(outputs[3].is_empty() && nodes[3].round() == 0);
    // Now node 3's links deliver: it goes through those rounds and agrees.
    while let Some((from, to, message)) = held.pop_front().or_else(|| live.pop_front()) {
        let step = nodes[to.index()].handle_message(from, message, &mut rng);
        route(to, step, &mut live, &mut held, &mut outputs);
    }
    assert!(faults.is_empty(), "{faults:?}");
    assert_eq!(outputs[3], outputs[0]);
    assert_eq!(nodes[3].round(), rounds as u64);
    assert_eq!(nodes[0].pending(), 0);
}

/// The streaming definition of [`batch_message`] and [`request_digest`] (every length and
/// request fed to the keyed hasher in turn), against which the staged, faster forms are pinned.
fn reference_batch_message(
    instance: &[u8],
    round: u64,
    sender: NodeId,
    requests: &[Vec<u8>],
) -> Digest {
    let mut h = hasher(
        BATCH_MESSAGE_CONTEXT,
        &[instance, &round.to_le_bytes(), &sender.0.to_le_bytes()],
    );
    h.update(&(requests.len() as u64).to_le_bytes());
    for request in requests {
        h.update(&(request.len() as u64).to_le_bytes());
        h.update(request);
    }
    h.finalize().into()
}

proptest! {
    #[test]
    fn staged_hashing_matches_the_streaming_definition(
        sizes in proptest::collection::vec(
            prop_oneof![0usize..300, 60_000usize..70_000, 140_000usize..150_000],
            0..12,
        ),
        fill in any::<u8>(),
        round in any::<u64>(),
    ) {
        let requests: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, size)| vec![fill.wrapping_add(i as u8); *size])
            .collect();
        prop_assert_eq!(
            batch_message(b"inst", round, NodeId(3), &requests),
            reference_batch_message(b"inst", round, NodeId(3), &requests)
        );
        for request in &requests {
            prop_assert_eq!(request_digest(request), hash(REQUEST_DIGEST_CONTEXT, &[request]));
        }
    }
}
