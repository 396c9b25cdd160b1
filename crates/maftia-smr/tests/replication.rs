//! Replication manager properties over real keys (n = 4, f = 1): determinism across replicas fed
//! the same ordered sequence (a seeded mix of valid requests, retries, stale sequence numbers,
//! forged signatures, an unauthorised client, oversized and garbage entries), exactly-once
//! execution against a reference model, reply certificates that never certify a wrong answer
//! from a Byzantine replica, and certified checkpoints that survive a round trip and refuse
//! forged snapshots.
//!
//! Seeds: `MAFTIA_SMR_SEEDS` (default 12) seeds run; `MAFTIA_SMR_SEED=<s>` replays one. A
//! failing seed is printed.
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use maftia_crypto::bls::{BlsPublicKeySet, BlsSignature, KeySetId};
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey, IdentitySignature};
use maftia_crypto::keygen::{deal_group, NodeSecret};
use maftia_smr::kv::{decode_reply, encode_request, KvReply, KvRequest, KvStore};
use maftia_smr::replica::{
    checkpoint_message, Admission, AdmitError, CheckpointCertificate, CheckpointCollector,
    CheckpointFault, ClientList, Execution, Outcome, ReplicationManager, RestoreError,
};
use maftia_smr::request::{
    reply_message, ReplyCertificate, ReplyCollector, ReplyShare, RequestError, ServiceId,
    ServiceResult, SignedRequest, MAX_OPERATION, MAX_SIGNED_REQUEST,
};
use maftia_smr::StateMachine;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

const N: usize = 4;
const F: usize = 1;

struct Cluster {
    service: ServiceId,
    keys: Arc<BlsPublicKeySet>,
    secrets: Vec<NodeSecret>,
    clients: Vec<IdentityKey>,
    outsider: IdentityKey,
    /// A validly signed request whose operation is one byte over the limit.
    too_large: Vec<u8>,
    /// A validly signed request whose encoding is over the decoder's size limit.
    over_frame: Vec<u8>,
}

fn cluster() -> Cluster {
    let mut rng = ChaCha20Rng::seed_from_u64(0x5eed);
    let (group, secrets) = deal_group(N, F, &mut rng).unwrap();
    let service = ServiceId::new(&group, "replication-test");
    let keys = Arc::new(group.bls[&KeySetId::Reply].clone());
    let clients: Vec<IdentityKey> = (0..3).map(|_| IdentityKey::generate(&mut rng)).collect();
    let outsider = IdentityKey::generate(&mut rng);
    let too_large =
        SignedRequest::sign(&clients[0], &service, 1_000_000, vec![7; MAX_OPERATION + 1]).encode();
    assert!(too_large.len() <= MAX_SIGNED_REQUEST);
    let over_frame = SignedRequest::sign(
        &clients[1],
        &service,
        1_000_000,
        vec![7; MAX_SIGNED_REQUEST],
    )
    .encode();
    Cluster {
        service,
        keys,
        secrets,
        clients,
        outsider,
        too_large,
        over_frame,
    }
}

impl Cluster {
    fn client_list(&self) -> ClientList {
        self.clients.iter().map(IdentityKey::public).collect()
    }

    fn manager(&self, replica: usize, state: KvStore) -> ReplicationManager<KvStore> {
        ReplicationManager::new(
            self.service,
            replica as u16,
            self.secrets[replica].bls[&KeySetId::Reply].clone(),
            self.client_list(),
            state,
        )
        .unwrap()
    }

    fn replicas(&self) -> Vec<ReplicationManager<KvStore>> {
        (0..N).map(|i| self.manager(i, KvStore::new())).collect()
    }

    fn request(&self, client: &IdentityKey, seq: u64, operation: &KvRequest) -> Vec<u8> {
        SignedRequest::sign(
            client,
            &self.service,
            seq,
            encode_request(operation).unwrap(),
        )
        .encode()
    }
}

/// What the reference model expects of one ordered entry.
#[derive(Clone, Debug)]
struct Expected {
    outcome: Outcome,
    /// The request's client, sequence number and certified result, when a reply is due.
    reply: Option<(IdentityPublicKey, u64, ServiceResult)>,
}

/// The reference model: the specification of exactly-once execution, written independently of
/// the replication manager, over its own key-value store.
#[derive(Default)]
struct Model {
    store: KvStore,
    last: BTreeMap<IdentityPublicKey, (u64, Vec<u8>)>,
}

impl Model {
    fn valid(&mut self, request: &SignedRequest, authorised: bool) -> Expected {
        let reply = |result| Some((request.client, request.seq, result));
        if !authorised {
            return Expected {
                outcome: Outcome::UnknownClient,
                reply: reply(ServiceResult::UnknownClient),
            };
        }
        match self.last.get(&request.client) {
            Some((last, cached)) if *last == request.seq => Expected {
                outcome: Outcome::Duplicate,
                reply: reply(ServiceResult::Executed(cached.clone())),
            },
            Some((last, _)) if *last > request.seq => Expected {
                outcome: Outcome::Stale { last: *last },
                reply: reply(ServiceResult::StaleSequence { last: *last }),
            },
            _ => {
                let result = self.store.execute(&request.operation);
                self.last
                    .insert(request.client, (request.seq, result.clone()));
                Expected {
                    outcome: Outcome::Executed,
                    reply: reply(ServiceResult::Executed(result)),
                }
            }
        }
    }

    fn invalid(error: RequestError) -> Expected {
        Expected {
            outcome: Outcome::Invalid(error),
            reply: None,
        }
    }
}

fn small_key(rng: &mut impl Rng) -> Vec<u8> {
    vec![b'k', rng.gen_range(b'0'..b'4')]
}

fn operation(rng: &mut impl Rng) -> KvRequest {
    let value = |rng: &mut dyn RngCore| vec![rng.next_u32() as u8 % 4];
    match rng.gen_range(0..6) {
        0 => KvRequest::Get {
            key: small_key(rng),
        },
        1 => KvRequest::Put {
            key: small_key(rng),
            value: value(rng),
        },
        2 => KvRequest::Delete {
            key: small_key(rng),
        },
        3 => KvRequest::CompareAndSet {
            key: small_key(rng),
            expected: rng.gen_bool(0.5).then(|| value(rng)),
            new: rng.gen_bool(0.8).then(|| value(rng)),
        },
        4 => KvRequest::Range {
            start: small_key(rng),
            end: rng.gen_bool(0.5).then(|| small_key(rng)),
            limit: rng.gen_range(0..4),
        },
        _ => KvRequest::Transaction {
            preconditions: vec![(small_key(rng), rng.gen_bool(0.5).then(|| value(rng)))],
            writes: vec![(small_key(rng), Some(value(rng))), (small_key(rng), None)],
        },
    }
}

/// A seeded ordered sequence and what the model expects of each entry.
fn workload(cluster: &Cluster, seed: u64, len: usize) -> Vec<(Vec<u8>, Expected)> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut model = Model::default();
    let mut next_seq = [0u64; 3];
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut entries = Vec::with_capacity(len);
    let decode = |bytes: &[u8]| SignedRequest::decode_verified(bytes, &cluster.service).unwrap();
    while entries.len() < len {
        let c = rng.gen_range(0..3);
        let client = &cluster.clients[c];
        let roll = rng.gen_range(0..100);
        let (bytes, expected) = match roll {
            // A new request (sequence numbers grow, sometimes with a gap).
            0..=44 => {
                let seq = next_seq[c] + rng.gen_range(0..3);
                next_seq[c] = seq + 1;
                let bytes = cluster.request(client, seq, &operation(&mut rng));
                sent.push(bytes.clone());
                let expected = model.valid(&decode(&bytes), true);
                (bytes, expected)
            }
            // A retry: the same bytes again (the client's last request or an older one).
            45..=59 if !sent.is_empty() => {
                let bytes = sent.choose(&mut rng).unwrap().clone();
                let expected = model.valid(&decode(&bytes), true);
                (bytes, expected)
            }
            // A new request under an already used sequence number.
            60..=67 if next_seq[c] > 0 => {
                let seq = rng.gen_range(0..next_seq[c]);
                let bytes = cluster.request(client, seq, &operation(&mut rng));
                let expected = model.valid(&decode(&bytes), true);
                (bytes, expected)
            }
            // A forged signature: a flipped bit, a changed sequence number, another key.
            68..=75 => {
                let mut request = SignedRequest::sign(
                    client,
                    &cluster.service,
                    next_seq[c],
                    encode_request(&operation(&mut rng)).unwrap(),
                );
                match rng.gen_range(0..3) {
                    0 => {
                        let mut signature = request.signature.to_bytes();
                        signature[rng.gen_range(0..64)] ^= 1 << rng.gen_range(0..8);
                        request.signature = IdentitySignature::from_bytes(&signature);
                    }
                    1 => request.seq += 1,
                    _ => {
                        let other = &cluster.clients[(c + 1) % 3];
                        request.signature = SignedRequest::sign(
                            other,
                            &cluster.service,
                            request.seq,
                            request.operation.clone(),
                        )
                        .signature;
                    }
                }
                (request.encode(), Model::invalid(RequestError::BadSignature))
            }
            // A validly signed request of a client not on the list.
            76..=81 => {
                let bytes =
                    cluster.request(&cluster.outsider, rng.gen_range(0..4), &operation(&mut rng));
                let expected = model.valid(&decode(&bytes), false);
                (bytes, expected)
            }
            // Garbage: random bytes, or a truncated or extended valid request.
            82..=89 => {
                let valid = cluster.request(client, next_seq[c], &operation(&mut rng));
                let bytes = match rng.gen_range(0..3) {
                    0 => {
                        let mut bytes = vec![0; rng.gen_range(0..200)];
                        rng.fill_bytes(&mut bytes);
                        bytes
                    }
                    1 => valid[..rng.gen_range(0..valid.len())].to_vec(),
                    _ => [valid.as_slice(), &[0]].concat(),
                };
                (
                    bytes,
                    Model::invalid(RequestError::Malformed(String::new())),
                )
            }
            // A signed request whose operation the service cannot decode.
            90..=95 => {
                let seq = next_seq[c];
                next_seq[c] = seq + 1;
                let mut operation = vec![0; rng.gen_range(0..40)];
                rng.fill_bytes(&mut operation);
                let bytes = SignedRequest::sign(client, &cluster.service, seq, operation).encode();
                let expected = model.valid(&decode(&bytes), true);
                (bytes, expected)
            }
            // Oversized: an operation over the limit, or a request over the frame limit.
            96..=97 => (
                cluster.too_large.clone(),
                Model::invalid(RequestError::TooLarge {
                    size: MAX_OPERATION + 1,
                    limit: MAX_OPERATION,
                }),
            ),
            98..=99 => (
                cluster.over_frame.clone(),
                Model::invalid(RequestError::Malformed(String::new())),
            ),
            _ => continue,
        };
        entries.push((bytes, expected));
    }
    entries
}

/// Outcomes match, with any message inside `Malformed`.
fn same_outcome(actual: &Outcome, expected: &Outcome) -> bool {
    match (actual, expected) {
        (
            Outcome::Invalid(RequestError::Malformed(_)),
            Outcome::Invalid(RequestError::Malformed(_)),
        ) => true,
        _ => actual == expected,
    }
}

/// Certify `shares` in the given order; stops at the first certificate.
fn certify(cluster: &Cluster, shares: &[ReplyShare]) -> (ReplyCertificate, ReplyCollector) {
    let first = &shares[0];
    let mut collector = ReplyCollector::new(
        cluster.service,
        cluster.keys.clone(),
        first.client,
        first.seq,
    );
    for share in shares {
        if let Some(certificate) = collector.add(share.clone()).unwrap() {
            assert!(certificate.verify(&cluster.service, &cluster.keys));
            return (certificate, collector);
        }
    }
    panic!("no certificate from {} shares", shares.len());
}

/// Feed one entry to every replica (after checking admission at one of them); check that they
/// agree with each other and with the model, and that the shares certify the expected result.
fn step(
    cluster: &Cluster,
    replicas: &mut [ReplicationManager<KvStore>],
    bytes: &[u8],
    expected: &Expected,
    rng: &mut impl Rng,
) -> Vec<Execution> {
    let position = replicas[0].executed();
    let admitting = &replicas[rng.gen_range(0..replicas.len())];
    let digest = admitting.digest();
    let admission = admitting.admit(bytes);
    match (&admission, &expected.outcome) {
        (Ok(Admission::Order(request)), Outcome::Executed) => {
            assert_eq!(request.encode(), bytes)
        }
        (Ok(Admission::Executed(share)), Outcome::Duplicate)
        | (Ok(Admission::Stale(share)), Outcome::Stale { .. }) => {
            let (client, seq, result) = expected.reply.clone().unwrap();
            assert_eq!(
                (share.client, share.seq, &share.result),
                (client, seq, &result)
            );
            assert!(cluster.keys.verify_share(
                usize::from(share.replica),
                &reply_message(&cluster.service, &client, seq, &result),
                &share.share
            ));
        }
        (Err(AdmitError::UnknownClient), Outcome::UnknownClient) => {}
        (Err(AdmitError::Request(error)), Outcome::Invalid(expected_error)) => assert!(
            same_outcome(
                &Outcome::Invalid(error.clone()),
                &Outcome::Invalid(expected_error.clone())
            ),
            "{error:?}"
        ),
        other => panic!("admission {other:?} at position {position}, expected {expected:?}"),
    }
    assert_eq!(admitting.digest(), digest, "admission changed the replica");

    let executions: Vec<Execution> = replicas.iter_mut().map(|r| r.execute(bytes)).collect();
    for (replica, execution) in executions.iter().enumerate() {
        assert!(
            same_outcome(&execution.outcome, &expected.outcome),
            "replica {replica} at position {position}: {:?}, expected {:?}",
            execution.outcome,
            expected.outcome
        );
        assert_eq!(execution.outcome, executions[0].outcome);
        match (&execution.reply, &expected.reply) {
            (None, None) => {}
            (Some(share), Some((client, seq, result))) => {
                assert_eq!(usize::from(share.replica), replica);
                assert_eq!((&share.client, share.seq), (client, *seq));
                assert_eq!(&share.result, result, "replica {replica} at {position}");
            }
            other => panic!("replica {replica} at {position}: reply {other:?}"),
        }
        assert_eq!(replicas[replica].executed(), position + 1);
    }
    if let Some((_, _, result)) = &expected.reply {
        let mut shares: Vec<ReplyShare> =
            executions.iter().filter_map(|e| e.reply.clone()).collect();
        shares.shuffle(rng);
        let (certificate, collector) = certify(cluster, &shares);
        assert_eq!(&certificate.result, result);
        assert!(collector.culprits().is_empty());
    }
    executions
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("MAFTIA_SMR_SEED") {
        return vec![seed.parse().expect("MAFTIA_SMR_SEED is a u64")];
    }
    let count = std::env::var("MAFTIA_SMR_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12u64);
    (1..=count).collect()
}

fn for_each_seed(test: &str, mut run: impl FnMut(u64)) {
    for seed in seeds() {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(seed))) {
            eprintln!("{test} failed for seed {seed}; replay with MAFTIA_SMR_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn replicas_fed_the_same_order_agree_with_each_other_and_the_model() {
    let cluster = cluster();
    for_each_seed("replicas_agree", |seed| {
        let entries = workload(&cluster, seed, 40);
        let mut replicas = cluster.replicas();
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xa11ce);
        let mut model = Model::default();
        let mut outcomes = BTreeMap::<&str, usize>::new();
        for (bytes, expected) in &entries {
            let executions = step(&cluster, &mut replicas, bytes, expected, &mut rng);
            let name = match executions[0].outcome {
                Outcome::Executed => "executed",
                Outcome::Duplicate => "duplicate",
                Outcome::Stale { .. } => "stale",
                Outcome::UnknownClient => "unknown",
                Outcome::Invalid(_) => "invalid",
            };
            *outcomes.entry(name).or_default() += 1;
            // Keep an independent copy of the expected final state.
            if let Ok(request) = SignedRequest::decode_verified(bytes, &cluster.service) {
                let authorised = cluster.client_list().contains(&request.client);
                model.valid(&request, authorised);
            }
        }
        assert!(
            outcomes.get("executed").copied().unwrap_or(0) >= 5,
            "seed {seed}: too few executions {outcomes:?}"
        );
        let digest = replicas[0].digest();
        let snapshot = replicas[0].snapshot();
        for replica in &replicas {
            assert_eq!(replica.digest(), digest);
            assert_eq!(replica.snapshot(), snapshot);
            assert_eq!(replica.executed(), entries.len() as u64);
            assert_eq!(replica.state(), &model.store);
            for client in &cluster.clients {
                assert_eq!(
                    replica.client_last(&client.public()),
                    model.last.get(&client.public()).map(|(seq, _)| *seq)
                );
            }
            assert_eq!(replica.client_last(&cluster.outsider.public()), None);
        }
    });
}

#[test]
fn every_kind_of_entry_occurs_across_the_seeds() {
    // Guards the workload itself: the agreement test is only meaningful if it exercises every
    // outcome.
    let cluster = cluster();
    let mut seen = BTreeMap::<String, usize>::new();
    for seed in 1..=6 {
        for (_, expected) in workload(&cluster, seed, 40) {
            let name = match expected.outcome {
                Outcome::Invalid(RequestError::Malformed(_)) => "malformed".to_string(),
                Outcome::Invalid(error) => format!("{error:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap()
                    .to_string(),
                Outcome::Stale { .. } => "stale".into(),
                other => format!("{other:?}"),
            };
            *seen.entry(name).or_default() += 1;
        }
    }
    for kind in [
        "Executed",
        "Duplicate",
        "stale",
        "UnknownClient",
        "BadSignature",
        "TooLarge",
        "malformed",
    ] {
        assert!(seen.contains_key(kind), "{kind} never occurs: {seen:?}");
    }
}

/// A Byzantine replica 3 whose state was tampered with: it signs wrong results with its real
/// share, so its shares are valid but for the wrong message.
#[test]
fn a_byzantine_replica_never_makes_a_client_accept_a_wrong_result() {
    let cluster = cluster();
    for_each_seed("byzantine_replies", |seed| {
        let mut tampered = KvStore::new();
        for key in 0..4u8 {
            let put = KvRequest::Put {
                key: vec![b'k', b'0' + key],
                value: b"intruder".to_vec(),
            };
            tampered.execute(&encode_request(&put).unwrap());
        }
        let mut replicas = cluster.replicas();
        replicas[3] = cluster.manager(3, tampered);
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xb12);
        let mut wrong_answers = 0;
        for (bytes, expected) in workload(&cluster, seed, 30) {
            let executions: Vec<Execution> =
                replicas.iter_mut().map(|r| r.execute(&bytes)).collect();
            let Some((_, _, result)) = &expected.reply else {
                continue;
            };
            let mut shares: Vec<ReplyShare> =
                executions.iter().filter_map(|e| e.reply.clone()).collect();
            let byzantine_differs = &shares[3].result != result;
            wrong_answers += usize::from(byzantine_differs);
            shares.shuffle(&mut rng);
            let byzantine_position = shares.iter().position(|s| s.replica == 3).unwrap();
            // Add every share (also after the certificate) and keep the first certificate.
            let mut collector = ReplyCollector::new(
                cluster.service,
                cluster.keys.clone(),
                shares[0].client,
                shares[0].seq,
            );
            let mut first = None;
            let mut certified_after = 0;
            for (index, share) in shares.into_iter().enumerate() {
                if let Some(certificate) = collector.add(share).unwrap() {
                    if first.is_none() {
                        certified_after = index;
                        first = Some(certificate);
                    }
                }
            }
            let certificate = first.expect("three correct replicas always certify");
            assert_eq!(&certificate.result, result);
            assert!(certificate.verify(&cluster.service, &cluster.keys));
            let culprits: Vec<u16> = collector.culprits().keys().copied().collect();
            assert!(
                culprits.iter().all(|&r| r == 3),
                "a correct replica accused"
            );
            if byzantine_differs && byzantine_position < certified_after {
                assert_eq!(culprits, vec![3]);
            } else if !byzantine_differs {
                assert!(culprits.is_empty());
            }
        }
        assert!(wrong_answers > 0, "seed {seed}: the tampering never showed");
    });
}

#[test]
fn invalid_shares_and_forged_certificates_are_caught() {
    let cluster = cluster();
    let mut replicas = cluster.replicas();
    let client = &cluster.clients[0];
    let put = KvRequest::Put {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
    };
    let bytes = cluster.request(client, 0, &put);
    let shares: Vec<ReplyShare> = replicas
        .iter_mut()
        .map(|r| r.execute(&bytes).reply.unwrap())
        .collect();
    let right = shares[0].result.clone();
    let wrong = ServiceResult::Executed(encode_request(&put).unwrap());

    // Invalid shares from replica 3 on the right result: its own share on another message, and
    // replica 0's share passed off as its own.
    let other_message = reply_message(&cluster.service, &client.public(), 1, &right);
    let forged_shares = [
        cluster.secrets[3].bls[&KeySetId::Reply].sign(&other_message),
        shares[0].share,
    ];
    for forged in forged_shares {
        for order in [[3, 0, 1, 2], [0, 3, 1, 2], [0, 1, 3, 2]] {
            let mut collector =
                ReplyCollector::new(cluster.service, cluster.keys.clone(), client.public(), 0);
            let mut certificate = None;
            for replica in order {
                let mut share = shares[replica].clone();
                if replica == 3 {
                    share.share = forged;
                }
                if let Some(c) = collector.add(share).unwrap() {
                    certificate.get_or_insert(c);
                }
            }
            let certificate = certificate.unwrap();
            assert_eq!(certificate.result, right);
            assert!(certificate.verify(&cluster.service, &cluster.keys));
            // The invalid share is found whenever it was combined before the certificate.
            if order[..2].contains(&3) {
                assert_eq!(
                    collector.culprits().keys().copied().collect::<Vec<_>>(),
                    vec![3],
                    "order {order:?}"
                );
            }
        }
    }

    // The Byzantine replica alone can sign the wrong result but not certify it.
    let byzantine_share = ReplyShare {
        replica: 3,
        client: client.public(),
        seq: 0,
        result: wrong.clone(),
        share: cluster.secrets[3].bls[&KeySetId::Reply].sign(&reply_message(
            &cluster.service,
            &client.public(),
            0,
            &wrong,
        )),
    };
    let mut collector =
        ReplyCollector::new(cluster.service, cluster.keys.clone(), client.public(), 0);
    assert_eq!(collector.add(byzantine_share.clone()).unwrap(), None);
    assert!(
        collector.add(byzantine_share.clone()).is_err(),
        "one share per replica"
    );

    // Forged certificates: the Byzantine share as a signature, a valid signature moved to a
    // wrong result, another sequence number, or another service.
    let (valid, _) = certify(&cluster, &shares);
    let forgeries = [
        ReplyCertificate {
            result: wrong.clone(),
            signature: BlsSignature(byzantine_share.share.0),
            ..valid.clone()
        },
        ReplyCertificate {
            result: wrong,
            ..valid.clone()
        },
        ReplyCertificate {
            seq: 1,
            ..valid.clone()
        },
        ReplyCertificate {
            client: cluster.clients[1].public(),
            ..valid.clone()
        },
    ];
    for forged in &forgeries {
        assert!(
            !forged.verify(&cluster.service, &cluster.keys),
            "{forged:?}"
        );
    }
    assert!(valid.verify(&cluster.service, &cluster.keys));
    assert!(!valid.verify(&ServiceId([9; 32]), &cluster.keys));
}

fn checkpoint_certificate(
    cluster: &Cluster,
    replicas: &[ReplicationManager<KvStore>],
) -> (CheckpointCertificate, Vec<u8>) {
    let executed = replicas[0].executed();
    let mut collector = CheckpointCollector::new(cluster.service, cluster.keys.clone(), executed);
    let mut certificate = None;
    let mut snapshot = Vec::new();
    for replica in replicas {
        let (replica_snapshot, share) = replica.checkpoint();
        assert_eq!(share, replica.checkpoint_share());
        assert_eq!(share.digest, replica.digest());
        snapshot = replica_snapshot;
        if let Some(c) = collector.add(share).unwrap() {
            certificate.get_or_insert(c);
        }
    }
    let certificate = certificate.unwrap();
    assert!(collector.culprits().is_empty());
    assert_eq!(certificate.executed, executed);
    assert!(certificate.verify(&cluster.service, &cluster.keys));
    (certificate, snapshot)
}

#[test]
fn a_restored_replica_continues_identically() {
    let cluster = cluster();
    for_each_seed("checkpoint_roundtrip", |seed| {
        let entries = workload(&cluster, seed, 36);
        let (before, after) = entries.split_at(18);
        let mut replicas = cluster.replicas();
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xc4e);
        for (bytes, expected) in before {
            step(&cluster, &mut replicas, bytes, expected, &mut rng);
        }
        let (certificate, snapshot) = checkpoint_certificate(&cluster, &replicas[..3]);
        // Replica 3 lost everything and restarts from the certified snapshot of another.
        let mut fresh = cluster.manager(3, KvStore::new());
        fresh
            .restore(&certificate, &snapshot, &cluster.keys)
            .unwrap();
        assert_eq!(fresh.snapshot(), snapshot);
        assert_eq!(fresh.digest(), replicas[0].digest());
        assert_eq!(fresh.executed(), 18);
        assert_eq!(fresh.state(), replicas[0].state());
        replicas[3] = fresh;
        // Every entry after the checkpoint (retries answered from the restored cache with the
        // restored replica's own re-made shares included) gives the same results everywhere.
        for (bytes, expected) in after {
            let executions = step(&cluster, &mut replicas, bytes, expected, &mut rng);
            if let Some(share) = &executions[3].reply {
                assert!(cluster.keys.verify_share(
                    3,
                    &reply_message(&cluster.service, &share.client, share.seq, &share.result),
                    &share.share
                ));
            }
        }
        let digest = replicas[0].digest();
        assert!(replicas.iter().all(|r| r.digest() == digest));
    });
}

#[test]
fn forged_snapshots_and_certificates_are_refused_and_change_nothing() {
    let cluster = cluster();
    let entries = workload(&cluster, 77, 30);
    let mut replicas = cluster.replicas();
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    for (bytes, expected) in &entries[..20] {
        step(&cluster, &mut replicas, bytes, expected, &mut rng);
    }
    let (certificate, snapshot) = checkpoint_certificate(&cluster, &replicas);
    let earlier = {
        let mut replica = cluster.manager(0, KvStore::new());
        for (bytes, _) in &entries[..19] {
            replica.execute(bytes);
        }
        replica.snapshot()
    };
    for (bytes, _) in &entries[20..] {
        for replica in &mut replicas {
            replica.execute(bytes);
        }
    }
    let later = replicas[0].snapshot();

    // The victim already executed a few entries of its own; nothing may change on refusal.
    let mut victim = cluster.manager(2, KvStore::new());
    for (bytes, _) in &entries[..5] {
        victim.execute(bytes);
    }
    let victim_snapshot = victim.snapshot();
    let mut refuse = |certificate: &CheckpointCertificate, snapshot: &[u8], error: RestoreError| {
        assert_eq!(
            victim.restore(certificate, snapshot, &cluster.keys),
            Err(error)
        );
        assert_eq!(victim.snapshot(), victim_snapshot);
        assert_eq!(victim.executed(), 5);
    };

    // One flipped bit anywhere in the snapshot (every header byte, then a sample of the rest).
    let positions: Vec<usize> = (0..64)
        .chain((64..snapshot.len()).step_by(snapshot.len() / 97 + 1))
        .chain([snapshot.len() - 1])
        .collect();
    for position in positions {
        let mut flipped = snapshot.clone();
        flipped[position] ^= 1 << (position % 8);
        refuse(&certificate, &flipped, RestoreError::DigestMismatch);
    }
    let mut truncated = snapshot.clone();
    truncated.pop();
    refuse(&certificate, &truncated, RestoreError::DigestMismatch);
    // Valid snapshots of other positions.
    refuse(&certificate, &earlier, RestoreError::DigestMismatch);
    refuse(&certificate, &later, RestoreError::DigestMismatch);
    refuse(&certificate, &victim_snapshot, RestoreError::DigestMismatch);
    // Forged certificates.
    let byzantine = cluster.secrets[3].bls[&KeySetId::Reply].sign(&checkpoint_message(
        &cluster.service,
        certificate.executed,
        &certificate.digest,
    ));
    let later_digest = replicas[0].digest();
    for forged in [
        CheckpointCertificate {
            signature: BlsSignature(byzantine.0),
            ..certificate.clone()
        },
        CheckpointCertificate {
            executed: certificate.executed + 10,
            ..certificate.clone()
        },
        CheckpointCertificate {
            digest: later_digest,
            ..certificate.clone()
        },
    ] {
        refuse(&forged, &snapshot, RestoreError::InvalidCertificate);
        refuse(&forged, &later, RestoreError::InvalidCertificate);
    }
    let coin_keys = {
        let mut keys = (*cluster.keys).clone();
        keys.id = KeySetId::Coin;
        keys
    };
    assert!(!certificate.verify(&cluster.service, &coin_keys));
    assert!(!certificate.verify(&ServiceId([1; 32]), &cluster.keys));
    // The genuine pair installs.
    victim
        .restore(&certificate, &snapshot, &cluster.keys)
        .unwrap();
    assert_eq!(victim.snapshot(), snapshot);
}

#[test]
fn checkpoint_collector_names_byzantine_replicas() {
    let cluster = cluster();
    let mut replicas = cluster.replicas();
    for (bytes, _) in workload(&cluster, 5, 10) {
        for replica in &mut replicas {
            replica.execute(&bytes);
        }
    }
    let executed = replicas[0].executed();
    let shares: Vec<_> = replicas.iter().map(|r| r.checkpoint_share()).collect();
    let wrong_digest = [0xee; 32];
    let diverging = maftia_smr::replica::CheckpointShare {
        digest: wrong_digest,
        share: cluster.secrets[3].bls[&KeySetId::Reply].sign(&checkpoint_message(
            &cluster.service,
            executed,
            &wrong_digest,
        )),
        ..shares[3].clone()
    };
    let invalid = maftia_smr::replica::CheckpointShare {
        share: shares[0].share,
        ..shares[3].clone()
    };
    let cases = [
        (
            diverging.clone(),
            CheckpointFault::DivergingDigest {
                digest: wrong_digest,
            },
        ),
        (invalid, CheckpointFault::InvalidShare),
    ];
    for (byzantine, fault) in cases {
        for order in [[3, 0, 1, 2], [0, 3, 1, 2], [0, 1, 3, 2], [0, 1, 2, 3]] {
            let mut collector =
                CheckpointCollector::new(cluster.service, cluster.keys.clone(), executed);
            let mut certificate = None;
            for replica in order {
                let share = if replica == 3 {
                    byzantine.clone()
                } else {
                    shares[replica].clone()
                };
                if let Some(c) = collector.add(share).unwrap() {
                    certificate.get_or_insert(c);
                }
            }
            let certificate = certificate.unwrap();
            assert_eq!(certificate.digest, replicas[0].digest());
            assert!(certificate.verify(&cluster.service, &cluster.keys));
            assert_eq!(collector.certificate(), Some(&certificate));
            assert_eq!(collector.answered(), 4);
            // A diverging digest is always named; an invalid share when it was combined, that
            // is, when it came before the certificate (a later share is not needed or checked).
            let combined = order[..2].contains(&3);
            let expected: BTreeMap<u16, CheckpointFault> =
                if fault == CheckpointFault::InvalidShare && !combined {
                    BTreeMap::new()
                } else {
                    BTreeMap::from([(3, fault.clone())])
                };
            assert_eq!(collector.culprits(), &expected, "order {order:?}");
        }
    }
    // Malformed submissions are refused without effect.
    let mut collector = CheckpointCollector::new(cluster.service, cluster.keys.clone(), executed);
    assert!(collector.add(shares[0].clone()).unwrap().is_none());
    assert!(collector.add(shares[0].clone()).is_err());
    let mut elsewhere = shares[1].clone();
    elsewhere.executed += 1;
    assert!(collector.add(elsewhere).is_err());
    let mut outsider = shares[1].clone();
    outsider.replica = N as u16;
    assert!(collector.add(outsider).is_err());
    assert_eq!(collector.answered(), 1);
    assert!(collector.add(shares[1].clone()).unwrap().is_some());
}

#[test]
fn malformed_unknown_and_oversized_client_bytes_get_clear_errors_and_change_nothing() {
    let cluster = cluster();
    let mut replica = cluster.manager(1, KvStore::new());
    let client = &cluster.clients[2];
    let put = KvRequest::Put {
        key: b"a".to_vec(),
        value: b"1".to_vec(),
    };
    replica.execute(&cluster.request(client, 3, &put));
    let valid = cluster.request(client, 4, &put);
    let mut bad_signature = SignedRequest::decode_verified(&valid, &cluster.service).unwrap();
    bad_signature.operation.push(0);
    let other_service = SignedRequest::sign(
        client,
        &ServiceId([3; 32]),
        4,
        encode_request(&put).unwrap(),
    )
    .encode();
    type IsExpected = fn(&AdmitError) -> bool;
    let cases: Vec<(Vec<u8>, IsExpected)> = vec![
        (Vec::new(), |e| {
            matches!(e, AdmitError::Request(RequestError::Malformed(_)))
        }),
        (b"MF\x01garbage".to_vec(), |e| {
            matches!(e, AdmitError::Request(RequestError::Malformed(_)))
        }),
        (valid[..valid.len() - 1].to_vec(), |e| {
            matches!(e, AdmitError::Request(RequestError::Malformed(_)))
        }),
        (bad_signature.encode(), |e| {
            *e == AdmitError::Request(RequestError::BadSignature)
        }),
        (other_service, |e| {
            *e == AdmitError::Request(RequestError::BadSignature)
        }),
        (cluster.request(&cluster.outsider, 0, &put), |e| {
            matches!(e, AdmitError::UnknownClient)
        }),
        (cluster.too_large.clone(), |e| {
            matches!(
                e,
                AdmitError::Request(RequestError::TooLarge {
                    size,
                    limit: MAX_OPERATION
                }) if *size == MAX_OPERATION + 1
            )
        }),
        (
            cluster.over_frame.clone(),
            |e| matches!(e, AdmitError::Request(RequestError::Malformed(m)) if m.contains("exceeds")),
        ),
    ];
    for (bytes, is_expected) in &cases {
        let digest = replica.digest();
        let error = replica.admit(bytes).unwrap_err();
        assert!(is_expected(&error), "{error:?}");
        assert!(!error.to_string().is_empty());
        assert_eq!(replica.digest(), digest);

        // Ordered anyway (a Byzantine replica may propose anything): only the position moves.
        let state = replica.state().digest();
        let position = replica.executed();
        let execution = replica.execute(bytes);
        match &error {
            AdmitError::UnknownClient => {
                assert_eq!(execution.outcome, Outcome::UnknownClient);
                assert_eq!(
                    execution.reply.map(|r| r.result),
                    Some(ServiceResult::UnknownClient)
                );
            }
            AdmitError::Request(error) => {
                assert_eq!(execution.outcome, Outcome::Invalid(error.clone()));
                assert_eq!(execution.reply, None);
            }
        }
        assert_eq!(replica.state().digest(), state);
        assert_eq!(replica.executed(), position + 1);
        assert_eq!(replica.client_last(&client.public()), Some(3));
        assert_eq!(replica.client_last(&cluster.outsider.public()), None);
    }
    // The valid request is still admitted and executes once.
    assert!(matches!(replica.admit(&valid), Ok(Admission::Order(_))));
    let reply = replica.execute(&valid).reply.unwrap();
    assert_eq!(
        decode_reply(match &reply.result {
            ServiceResult::Executed(bytes) => bytes,
            other => panic!("{other:?}"),
        })
        .unwrap(),
        KvReply::Written {
            previous: Some(b"1".to_vec())
        }
    );
    assert_eq!(replica.admit(&valid), Ok(Admission::Executed(reply)));
}
