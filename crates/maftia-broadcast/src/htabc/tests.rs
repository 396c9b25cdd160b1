//! Delivery (step 3) is a deterministic function of the decided vectors and the certified
//! batches: whatever a node happens to hold (batches it voted for, an equivocating owner's other
//! batch, fetched ones), once it holds the certified chain it delivers the same requests as any
//! other node, equal to a straightforward reference computation.
use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const INSTANCE: &[u8] = b"htabc unit";

/// A lane's canonical (certified) chain: slot `s` at index `s − 1`.
fn chain(lane: NodeId, batches: &[Vec<Vec<u8>>]) -> Vec<HeldBatch> {
    let mut prev = GENESIS_DIGEST;
    batches
        .iter()
        .enumerate()
        .map(|(index, requests)| {
            let slot = index as u64 + 1;
            let digest = batch_digest(INSTANCE, lane, slot, &prev, requests);
            let batch = HeldBatch {
                digest,
                prev_digest: prev,
                requests: requests.clone(),
            };
            prev = digest;
            batch
        })
        .collect()
}

/// What a node holds of a lane, and how it got there.
#[derive(Clone, Debug)]
enum Holding {
    /// The canonical batch.
    Canonical,
    /// Nothing (must fetch).
    Nothing,
    /// Another batch for the slot (it voted for an equivocating owner's other proposal).
    Equivocation,
}

/// One node's view: delivers epoch after epoch, fetching from `canonical` whatever its walk
/// reports missing. Returns the deliveries and the number of fetch rounds.
fn run_node(
    canonical: &[Vec<HeldBatch>],
    holdings: &[Vec<Holding>],
    known_certified: bool,
    epochs: &[Vec<u64>],
    dedup: u64,
) -> (Vec<Vec<Vec<u8>>>, usize) {
    let n = canonical.len();
    let mut held: Vec<BTreeMap<u64, HeldBatch>> = vec![BTreeMap::new(); n];
    let mut certified: Vec<BTreeMap<u64, Digest>> = vec![BTreeMap::new(); n];
    for (lane, batches) in canonical.iter().enumerate() {
        for (index, batch) in batches.iter().enumerate() {
            let slot = index as u64 + 1;
            match holdings[lane][index] {
                Holding::Canonical => {
                    held[lane].insert(slot, batch.clone());
                }
                Holding::Nothing => {}
                Holding::Equivocation => {
                    let requests = vec![format!("equivocation {lane} {slot}").into_bytes()];
                    let digest = batch_digest(
                        INSTANCE,
                        NodeId(lane as u16),
                        slot,
                        &batch.prev_digest,
                        &requests,
                    );
                    held[lane].insert(
                        slot,
                        HeldBatch {
                            digest,
                            prev_digest: batch.prev_digest,
                            requests,
                        },
                    );
                }
            }
            if known_certified {
                certified[lane].insert(slot, batch.digest);
            }
        }
    }
    let mut window = DeliveredWindow::new(dedup);
    let mut delivered = vec![0u64; n];
    let mut outputs = Vec::new();
    let mut fetch_rounds = 0;
    for (epoch, heights) in epochs.iter().enumerate() {
        let targets: Vec<(u64, Digest)> = heights
            .iter()
            .enumerate()
            .map(|(lane, h)| {
                let digest = if *h == 0 {
                    GENESIS_DIGEST
                } else {
                    canonical[lane][*h as usize - 1].digest
                };
                (*h, digest)
            })
            .collect();
        loop {
            let mut missing = Vec::new();
            for lane in 0..n {
                if let Err(slots) = lane_chain(
                    &held[lane],
                    &certified[lane],
                    delivered[lane],
                    targets[lane],
                ) {
                    missing.extend(slots.into_iter().map(|(s, d)| (lane, s, d)));
                }
            }
            if missing.is_empty() {
                break;
            }
            fetch_rounds += 1;
            assert!(fetch_rounds < 10_000, "fetching does not converge");
            for (lane, slot, digest) in missing {
                let batch = &canonical[lane][slot as usize - 1];
                assert_eq!(batch.digest, digest, "a fetch asked for a wrong digest");
                held[lane].insert(slot, batch.clone());
            }
        }
        let chains: Vec<Vec<&HeldBatch>> = (0..n)
            .map(|lane| {
                lane_chain(
                    &held[lane],
                    &certified[lane],
                    delivered[lane],
                    targets[lane],
                )
                .unwrap()
            })
            .collect();
        let (requests, digests) = epoch_requests(
            chains.iter().flatten().map(|b| b.requests.as_slice()),
            &window,
        );
        window.record(epoch as u64, digests);
        for (lane, target) in targets.iter().enumerate() {
            delivered[lane] = target.0;
        }
        outputs.push(requests);
    }
    (outputs, fetch_rounds)
}

/// The reference: every epoch, the canonical batches between the old and new heights, lane by
/// lane, minus requests delivered in this epoch or the `dedup` epochs before.
fn reference(canonical: &[Vec<HeldBatch>], epochs: &[Vec<u64>], dedup: u64) -> Vec<Vec<Vec<u8>>> {
    let mut last: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut before = vec![0u64; canonical.len()];
    let mut outputs = Vec::new();
    for (epoch, heights) in epochs.iter().enumerate() {
        let epoch = epoch as u64;
        let mut out = Vec::new();
        for (lane, h) in heights.iter().enumerate() {
            for slot in before[lane] + 1..=*h {
                for request in &canonical[lane][slot as usize - 1].requests {
                    let recent = last
                        .get(request)
                        .is_some_and(|e| *e == epoch || e + dedup >= epoch);
                    if !recent {
                        last.insert(request.clone(), epoch);
                        out.push(request.clone());
                    }
                }
            }
            before[lane] = *h;
        }
        outputs.push(out);
    }
    outputs
}

fn holding() -> impl Strategy<Value = Holding> {
    prop_oneof![
        3 => Just(Holding::Canonical),
        1 => Just(Holding::Nothing),
        1 => Just(Holding::Equivocation),
    ]
}

/// `n` lanes of up to 6 slots, requests drawn from a small alphabet (so duplicates across
/// lanes and epochs are common), a random monotone sequence of decided heights, and two nodes'
/// random holdings.
#[allow(clippy::type_complexity)]
fn scenario() -> impl Strategy<
    Value = (
        Vec<Vec<Vec<Vec<u8>>>>,
        Vec<Vec<u64>>,
        Vec<Vec<Holding>>,
        Vec<Vec<Holding>>,
        u64,
        bool,
    ),
> {
    (1usize..5, 1usize..7).prop_flat_map(|(n, slots)| {
        let request = (0u8..12).prop_map(|r| vec![b'r', r]);
        let batch = prop::collection::vec(request, 0..4);
        let lanes = prop::collection::vec(prop::collection::vec(batch, slots), n);
        // Per epoch and lane, a step of 0..=2 slots, clamped to the lane's length.
        let steps = prop::collection::vec(prop::collection::vec(0u64..3, n), 1..6);
        let holds = || prop::collection::vec(prop::collection::vec(holding(), slots), n);
        (lanes, steps, holds(), holds(), 1u64..4, any::<bool>()).prop_map(
            move |(lanes, steps, a, b, dedup, certified)| {
                let mut heights = vec![0u64; n];
                let epochs = steps
                    .into_iter()
                    .map(|step| {
                        for (h, s) in heights.iter_mut().zip(step) {
                            *h = (*h + s).min(slots as u64);
                        }
                        heights.clone()
                    })
                    .collect();
                (lanes, epochs, a, b, dedup, certified)
            },
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn delivery_is_a_function_of_decisions_and_certified_batches(
        (lanes, epochs, a, b, dedup, certified) in scenario()
    ) {
        let canonical: Vec<Vec<HeldBatch>> = lanes
            .iter()
            .enumerate()
            .map(|(lane, batches)| chain(NodeId(lane as u16), batches))
            .collect();
        let (first, _) = run_node(&canonical, &a, certified, &epochs, dedup);
        let (second, _) = run_node(&canonical, &b, !certified, &epochs, dedup);
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(first, reference(&canonical, &epochs, dedup));
    }
}

#[test]
fn a_walk_reports_the_missing_slots_it_can_name() {
    let lane = NodeId(1);
    let batches: Vec<Vec<Vec<u8>>> = (0..5).map(|s| vec![vec![s as u8]]).collect();
    let canonical = chain(lane, &batches);
    let top = (5, canonical[4].digest);
    // Holding slots 1, 2 and 5: slot 4 is named by slot 5, slot 3 is unknown until 4 arrives.
    let mut held: BTreeMap<u64, HeldBatch> = [1u64, 2, 5]
        .iter()
        .map(|s| (*s, canonical[*s as usize - 1].clone()))
        .collect();
    let none = BTreeMap::new();
    assert_eq!(
        lane_chain(&held, &none, 0, top).unwrap_err(),
        vec![(4, canonical[3].digest)]
    );
    // Knowing slot 3's certified digest, both are named in one walk.
    let certified: BTreeMap<u64, Digest> = [(3, canonical[2].digest)].into_iter().collect();
    assert_eq!(
        lane_chain(&held, &certified, 0, top).unwrap_err(),
        vec![(4, canonical[3].digest), (3, canonical[2].digest)]
    );
    held.insert(4, canonical[3].clone());
    held.insert(3, canonical[2].clone());
    let chain = lane_chain(&held, &none, 0, top).unwrap();
    assert_eq!(chain.len(), 5);
    assert!(chain.iter().zip(&canonical).all(|(a, b)| *a == b));
    // Delivered up to 2: only slots 3..=5.
    assert_eq!(lane_chain(&held, &none, 2, top).unwrap().len(), 3);
    // A target at the delivered height delivers nothing.
    assert!(lane_chain(&held, &none, 5, top).unwrap().is_empty());
}

#[test]
fn batch_digests_chain_and_separate_lanes_and_slots() {
    let requests = vec![b"a".to_vec()];
    let d1 = batch_digest(INSTANCE, NodeId(0), 1, &GENESIS_DIGEST, &requests);
    assert_ne!(
        d1,
        batch_digest(INSTANCE, NodeId(1), 1, &GENESIS_DIGEST, &requests)
    );
    assert_ne!(
        d1,
        batch_digest(INSTANCE, NodeId(0), 2, &GENESIS_DIGEST, &requests)
    );
    assert_ne!(d1, batch_digest(INSTANCE, NodeId(0), 1, &d1, &requests));
    assert_ne!(
        d1,
        batch_digest(b"other", NodeId(0), 1, &GENESIS_DIGEST, &requests)
    );
    // Length prefixes: ["ab"] and ["a", "b"] differ.
    assert_ne!(
        batch_digest(INSTANCE, NodeId(0), 1, &GENESIS_DIGEST, &[b"ab".to_vec()]),
        batch_digest(
            INSTANCE,
            NodeId(0),
            1,
            &GENESIS_DIGEST,
            &[b"a".to_vec(), b"b".to_vec()]
        )
    );
    assert_ne!(
        slot_message(INSTANCE, NodeId(0), 1, &d1),
        slot_message(INSTANCE, NodeId(0), 2, &d1)
    );
}

/// The byte-string serde paths of `Proposal` and `Batch` (crate::wire) change the decoding
/// speed, never the frames: a mirror with plain `Vec<Vec<u8>>` fields encodes identically and
/// each decodes the other's frames.
mod wire_pin {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Plain {
        Proposal {
            slot: u64,
            prev_digest: Digest,
            prev_certificate: Option<Vec<u8>>,
            requests: Vec<Vec<u8>>,
        },
        Vote {
            slot: u64,
            digest: Digest,
            share: u8,
        },
        Certified {
            slot: u64,
            digest: Digest,
            certificate: Vec<u8>,
        },
        Fetch {
            lane: NodeId,
            slot: u64,
            digest: Digest,
        },
        Batch {
            lane: NodeId,
            slot: u64,
            prev_digest: Digest,
            requests: Vec<Vec<u8>>,
        },
    }

    type Fast = Message<u8, Vec<u8>>;

    fn both_ways(plain: Plain, fast: Fast) -> Result<(), TestCaseError> {
        let frame = codec::encode(&plain).unwrap();
        prop_assert_eq!(&codec::encode(&fast).unwrap(), &frame);
        prop_assert_eq!(codec::decode::<Fast>(&frame).unwrap(), fast);
        prop_assert_eq!(codec::decode::<Plain>(&frame).unwrap(), plain);
        Ok(())
    }

    proptest! {
        #[test]
        fn proposal_and_batch_frames_are_unchanged(
            slot in any::<u64>(),
            lane in any::<u16>(),
            prev_digest in any::<[u8; 32]>(),
            certificate in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100)),
            requests in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12),
        ) {
            both_ways(
                Plain::Proposal {
                    slot,
                    prev_digest,
                    prev_certificate: certificate.clone(),
                    requests: requests.clone(),
                },
                Message::Proposal {
                    slot,
                    prev_digest,
                    prev_certificate: certificate,
                    requests: requests.clone(),
                },
            )?;
            both_ways(
                Plain::Batch {
                    lane: NodeId(lane),
                    slot,
                    prev_digest,
                    requests: requests.clone(),
                },
                Message::Batch {
                    lane: NodeId(lane),
                    slot,
                    prev_digest,
                    requests,
                },
            )?;
        }
    }
}

/// The staged hashing of [`batch_digest`] feeds BLAKE3 the same byte stream as hashing each
/// length and request in turn: the digest does not depend on the staging (batches that cross
/// the staging size, and a request larger than it, included).
#[test]
fn staged_batch_digest_equals_the_plain_stream() {
    fn plain(prev: &Digest, requests: &[Vec<u8>]) -> Digest {
        let mut h = hasher(
            BATCH_DIGEST_CONTEXT,
            &[INSTANCE, &3u16.to_le_bytes(), &7u64.to_le_bytes(), prev],
        );
        h.update(&(requests.len() as u64).to_le_bytes());
        for request in requests {
            h.update(&(request.len() as u64).to_le_bytes());
            h.update(request);
        }
        h.finalize().into()
    }
    let prev = [9u8; 32];
    let cases: Vec<Vec<Vec<u8>>> = vec![
        Vec::new(),
        vec![Vec::new()],
        (0..1000u32).map(|i| vec![i as u8; 250]).collect(),
        (0..300u32)
            .map(|i| vec![i as u8; (i as usize * 37) % 700])
            .collect(),
        vec![vec![1; 10], vec![2; 3 * BATCH_HASH_STAGING], vec![3; 10]],
        vec![vec![4; BATCH_HASH_STAGING - 8], vec![5; 1]],
    ];
    for requests in cases {
        assert_eq!(
            batch_digest(INSTANCE, NodeId(3), 7, &prev, &requests),
            plain(&prev, &requests)
        );
    }
}
