//! Consistent broadcast under the deterministic simulator.
//!
//! Every (n, strategy) pair runs over a seed sweep ([`check_seeds`]; `MAFTIA_SIM_SEEDS=k` for a
//! soak, `MAFTIA_SIM_SEED=s` to replay one seed) twice per seed: once with an honest proposer
//! and once with a Byzantine one. The invariant, checked after every event, is consistency
//! (no two honest nodes deliver different payloads), integrity (at most one delivery per honest
//! node, only of a payload the proposer input) and that honest nodes never accuse honest nodes.
//! After quiescence: validity and termination when the proposer is honest, nobody delivers when
//! the proposer never runs the protocol, every delivered certificate verifies at another node.
//!
//! The big sweeps use the fast, insecure signer of `maftia_sim::insecure_crypto`; a few seeds
//! per configuration run with the real BLS threshold signatures (`KeySetId::Cbc`).
mod support;

use maftia_broadcast::cbc::{
    echo_message, payload_digest, verify_certificate, Cbc, CbcDelivery, CbcFault, Message,
};
use maftia_core::{NodeId, Protocol};
use maftia_crypto::bls::{BlsThresholdSigner, KeySetId};
use maftia_crypto::threshold::ThresholdSigner;
use maftia_sim::insecure_crypto::InsecureThresholdSigner;
use maftia_sim::{byzantine_nodes, check_seeds, Adversary, Sim, SimConfig, SimFailure, Strategy};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use support::{
    bls_key_set, check_agreement, check_clean_evidence, check_no_honest_accused, config,
    faulty_set, insecure_key_set,
};

/// Largest payload the simulated instances accept.
const MAX_PAYLOAD: usize = 256;
/// Seeds per (n, strategy) in the default run with the insecure signer.
const SEEDS: u64 = 200;
/// Seeds per (n, strategy) with real BLS signatures.
const BLS_SEEDS: u64 = 5;

fn insecure_signers(n: usize) -> Vec<Arc<InsecureThresholdSigner>> {
    insecure_key_set(n, config(n).echo_quorum(), "cbc")
}

fn bls_signers(n: usize) -> Vec<Arc<BlsThresholdSigner>> {
    bls_signers_with_seed(n, 0xcbc0 + n as u64)
}

/// A CBC key set from the trusted dealer, one handle per node.
fn bls_signers_with_seed(n: usize, seed: u64) -> Vec<Arc<BlsThresholdSigner>> {
    bls_key_set(KeySetId::Cbc, n, &mut ChaCha8Rng::seed_from_u64(seed))
}

/// A certificate (a real group signature) on the echo message of another instance or proposer:
/// well-formed, valid for *something*, but not for what it is attached to.
fn certificate_on<S: ThresholdSigner>(
    signers: &[Arc<S>],
    instance: &[u8],
    proposer: NodeId,
    payload: &[u8],
) -> S::Signature {
    let message = echo_message(instance, proposer, &payload_digest(payload));
    let shares: BTreeMap<_, _> = signers
        .iter()
        .take(signers[0].threshold())
        .map(|s| (s.our_index(), s.sign_share(&message)))
        .collect();
    signers[0].combine(&message, &shares).unwrap().signature
}

/// The protocol-specific adversary: wrong shares, misattached certificates, oversized content.
struct CbcAdversary<S: ThresholdSigner> {
    signers: Vec<Arc<S>>,
    /// Real certificates of other instances or proposers, made once (BLS combines are slow).
    foreign_certificates: Vec<(Vec<u8>, S::Signature)>,
}

impl<S: ThresholdSigner> CbcAdversary<S> {
    fn new(signers: Vec<Arc<S>>, instance: &[u8], proposer: NodeId) -> Self {
        let n = signers.len();
        let other_proposer = NodeId(((proposer.index() + 1) % n) as u16);
        let mut other_instance = instance.to_vec();
        other_instance.extend_from_slice(b"/other");
        let foreign_certificates = vec![
            (
                b"forged".to_vec(),
                certificate_on(&signers, &other_instance, proposer, b"forged"),
            ),
            (
                b"forged".to_vec(),
                certificate_on(&signers, instance, other_proposer, b"forged"),
            ),
        ];
        CbcAdversary {
            signers,
            foreign_certificates,
        }
    }

    /// A real share, but on a message no honest node signs for this instance.
    fn wrong_share(&self, rng: &mut dyn RngCore) -> S::Share {
        let signer = &self.signers[rng.next_u32() as usize % self.signers.len()];
        signer.sign_share(&rng.next_u64().to_le_bytes())
    }

    fn foreign_final(&self, rng: &mut dyn RngCore) -> Message<S::Share, S::Signature> {
        let pick = rng.next_u32() as usize % self.foreign_certificates.len();
        let (payload, certificate) = self.foreign_certificates[pick].clone();
        Message::Final {
            payload,
            certificate,
        }
    }
}

impl<S: ThresholdSigner> Adversary<Cbc<S>> for CbcAdversary<S> {
    fn corrupt(
        &mut self,
        message: &Message<S::Share, S::Signature>,
        rng: &mut dyn RngCore,
    ) -> Option<Message<S::Share, S::Signature>> {
        match message {
            Message::Send(_) => None,
            Message::Echo(_) => Some(Message::Echo(self.wrong_share(rng))),
            Message::Final {
                payload,
                certificate,
            } => Some(if rng.next_u32() % 2 == 0 {
                // The right certificate on a different payload.
                let mut payload = payload.clone();
                payload.push(b'!');
                Message::Final {
                    payload,
                    certificate: certificate.clone(),
                }
            } else {
                self.foreign_final(rng)
            }),
        }
    }

    fn far_future(&mut self, rng: &mut dyn RngCore) -> Vec<Message<S::Share, S::Signature>> {
        let oversized = vec![0xa5; MAX_PAYLOAD + 1 + (rng.next_u32() % 64) as usize];
        let (_, certificate) = self.foreign_certificates[0].clone();
        vec![
            Message::Send(oversized.clone()),
            Message::Final {
                payload: oversized,
                certificate,
            },
            self.foreign_final(rng),
            Message::Echo(self.wrong_share(rng)),
        ]
    }
}

/// Which node proposes in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProposerRole {
    Honest,
    Byzantine,
}

/// What a run showed, for checks across seeds.
#[derive(Debug, Default)]
struct RunReport {
    /// Honest nodes that delivered.
    deliveries: usize,
    /// InvalidShare evidence the (honest) proposer recorded against Byzantine nodes.
    invalid_share_evidence: usize,
}

fn payload_for(seed: u64, copy: usize) -> Vec<u8> {
    // Copies of an equivocating or twin proposer get different payloads (of different lengths).
    let mut payload = format!("cbc sim payload seed {seed} copy {copy}").into_bytes();
    payload.extend(std::iter::repeat_n(b'.', copy * 7));
    payload
}

/// One simulated CBC instance: `strategy` at `f` Byzantine nodes (none if `None`).
fn run_case<S: ThresholdSigner + 'static>(
    signers: &[Arc<S>],
    strategy: Option<&Strategy>,
    role: ProposerRole,
    seed: u64,
) -> Result<RunReport, SimFailure> {
    let n = signers.len();
    let group = config(n);
    let (byzantine, honest) = faulty_set(n, strategy, seed);
    let proposer = match role {
        ProposerRole::Byzantine => *byzantine.keys().next().expect("a Byzantine node"),
        ProposerRole::Honest => honest[(seed % honest.len() as u64) as usize],
    };
    let proposer_strategy = byzantine.get(&proposer).cloned();
    let instance = format!("cbc-sim/n {n}/seed {seed}/proposer {}", proposer.0).into_bytes();
    // The payloads the proposer's copies were given: the only ones anyone may deliver.
    let allowed: BTreeSet<Vec<u8>> = match &proposer_strategy {
        None => BTreeSet::from([payload_for(seed, 0)]),
        Some(s) if !s.runs_protocol() => BTreeSet::new(),
        Some(s) => (0..s.copies())
            .map(|copy| payload_for(seed, copy))
            .collect(),
    };

    let adversary = CbcAdversary::new(signers.to_vec(), &instance, proposer);
    let factory_signers = signers.to_vec();
    let factory_instance = instance.clone();
    let mut sim = Sim::new(
        SimConfig::new(n, seed),
        byzantine,
        move |id: NodeId, _copy| {
            Cbc::new(
                group,
                id,
                proposer,
                factory_instance.clone(),
                factory_signers[id.index()].clone(),
                MAX_PAYLOAD,
            )
            .unwrap()
        },
        Box::new(adversary),
    );
    sim.input(proposer, |copy| payload_for(seed, copy))
        .map_err(|e| sim.fail(format!("proposer input refused: {e}")))?;
    sim.run(|state| {
        for id in state.honest() {
            let outputs = state.outputs(id);
            if outputs.len() > 1 {
                return Err(format!("integrity: {id} delivered {} times", outputs.len()));
            }
            let Some(delivery) = outputs.first() else {
                continue;
            };
            if !allowed.contains(&delivery.payload) {
                return Err(format!(
                    "integrity: {id} delivered a payload the proposer never input"
                ));
            }
        }
        // Consistency: honest deliveries agree on the payload.
        check_agreement(state, |delivery| &delivery.payload)?;
        check_no_honest_accused(state)
    })?;

    let state = sim.state();
    let mut report = RunReport::default();
    for id in state.honest() {
        let Some(CbcDelivery {
            payload,
            certificate,
        }) = state.outputs(id).first()
        else {
            if proposer_strategy.is_none() {
                return Err(sim.fail(format!(
                    "validity: honest proposer, but {id} did not deliver"
                )));
            }
            continue;
        };
        report.deliveries += 1;
        // Transferable: another node's key-set handle accepts it.
        let verifier = &signers[(id.index() + 1) % n];
        if !verify_certificate(&**verifier, &instance, proposer, payload, certificate) {
            return Err(sim.fail(format!(
                "{id} delivered with a certificate that does not verify"
            )));
        }
        if !state.node(id).terminated() {
            return Err(sim.fail(format!("{id} delivered but has not terminated")));
        }
    }
    if proposer_strategy
        .as_ref()
        .is_some_and(|s| !s.runs_protocol())
        && report.deliveries > 0
    {
        return Err(sim.fail("a proposer that never ran the protocol got a payload delivered"));
    }
    check_clean_evidence(&sim, strategy.is_none())?;
    report.invalid_share_evidence = state
        .faults()
        .iter()
        .filter(|(reporter, f)| *reporter == proposer && f.kind == CbcFault::InvalidShare)
        .count();
    Ok(report)
}

/// Every strategy at `f` nodes, each seed with an honest and with a Byzantine proposer.
fn sweep<S: ThresholdSigner + 'static>(signers: &[Arc<S>], seeds: u64) {
    for strategy in Strategy::all() {
        check_seeds(seeds, |seed| {
            run_case(signers, Some(&strategy), ProposerRole::Honest, seed)?;
            run_case(signers, Some(&strategy), ProposerRole::Byzantine, seed)?;
            Ok(())
        });
    }
}

#[test]
fn sweep_n4_every_strategy() {
    sweep(&insecure_signers(4), SEEDS);
}

#[test]
fn sweep_n7_every_strategy() {
    sweep(&insecure_signers(7), SEEDS);
}

#[test]
fn sweep_n10_every_strategy() {
    sweep(&insecure_signers(10), SEEDS);
}

#[test]
fn honest_runs_deliver_everywhere_with_no_faults() {
    for n in [1, 2, 4, 5, 7, 10] {
        let signers = insecure_signers(n);
        check_seeds(50, |seed| {
            let report = run_case(&signers, None, ProposerRole::Honest, seed)?;
            assert_eq!(report.deliveries, n);
            Ok(())
        });
    }
}

/// An equivocating proposer's copies race for a certificate; at most one can win, and the sweep
/// must actually see deliveries from such proposers for the consistency check to mean anything.
/// (An [`Strategy::Equivocate`] proposer's halves reach `k` only for n = 4; twins, which both
/// send to everyone, get certificates for n = 7 and 10 too.)
#[test]
fn equivocating_proposers_never_split_honest_nodes() {
    for n in [4, 7, 10] {
        let signers = insecure_signers(n);
        let mut runs = 0;
        let mut runs_with_deliveries = BTreeMap::new();
        for strategy in [Strategy::Equivocate, Strategy::Twins] {
            check_seeds(SEEDS, |seed| {
                runs += 1;
                let report = run_case(&signers, Some(&strategy), ProposerRole::Byzantine, seed)?;
                *runs_with_deliveries
                    .entry(format!("{strategy:?}"))
                    .or_insert(0) += usize::from(report.deliveries > 0);
                Ok(())
            });
        }
        if runs >= 100 {
            assert!(
                runs_with_deliveries["Twins"] > 0,
                "n = {n}: no twin proposer got a delivery"
            );
            if n == 4 {
                assert!(
                    runs_with_deliveries["Equivocate"] > 0,
                    "n = 4: no equivocator got a delivery"
                );
            }
        }
    }
}

/// The strongest split a Byzantine proposer can try, played directly against honest
/// instances: it sends payload A to some honest nodes, B to others and both (in either order)
/// to the rest, keeps every echo, adds the shares of all `f` Byzantine nodes on both payloads,
/// combines every certificate it can, and hands each honest node the certificates in a random
/// order. The simulator's equivocating copies run honest share collection and cannot play this.
/// Returns how many honest nodes delivered.
fn split_attack<S: ThresholdSigner>(signers: &[Arc<S>], seed: u64) -> Result<usize, SimFailure> {
    let n = signers.len();
    let group = config(n);
    let fail = |reason: String| SimFailure {
        seed,
        reason,
        replay: maftia_sim::replay_command(seed),
        n,
        event: 0,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let byzantine: BTreeSet<NodeId> = byzantine_nodes(n, group.f(), &Strategy::Equivocate, seed)
        .into_keys()
        .collect();
    let Some(&proposer) = byzantine.iter().next() else {
        return Ok(0);
    };
    let instance = format!("split attack {seed}").into_bytes();
    let payloads = [b"payload A".to_vec(), b"payload B".to_vec()];
    let messages = payloads
        .clone()
        .map(|p| echo_message(&instance, proposer, &payload_digest(&p)));
    let mut shares: [BTreeMap<usize, S::Share>; 2] = Default::default();
    for b in &byzantine {
        for (which, message) in messages.iter().enumerate() {
            shares[which].insert(b.index(), signers[b.index()].sign_share(message));
        }
    }
    let mut honest: BTreeMap<NodeId, Cbc<S>> = NodeId::all(n)
        .filter(|id| !byzantine.contains(id))
        .map(|id| {
            let node = Cbc::new(
                group,
                id,
                proposer,
                instance.clone(),
                signers[id.index()].clone(),
                MAX_PAYLOAD,
            );
            (id, node.unwrap())
        })
        .collect();
    let attacker = &signers[proposer.index()];
    for (id, node) in honest.iter_mut() {
        let order: &[usize] = match rng.next_u32() % 4 {
            0 => &[0],
            1 => &[1],
            2 => &[0, 1],
            _ => &[1, 0],
        };
        for &which in order {
            let step =
                node.handle_message(proposer, Message::Send(payloads[which].clone()), &mut rng);
            for sent in step.messages {
                let Message::Echo(share) = sent.message else {
                    return Err(fail(format!(
                        "{id} answered a Send with {:?}",
                        sent.message
                    )));
                };
                for (slot, message) in messages.iter().enumerate() {
                    if attacker.verify_share(id.index(), message, &share) {
                        shares[slot].insert(id.index(), share.clone());
                    }
                }
            }
        }
    }
    let mut finals = Vec::new();
    for which in 0..2 {
        if shares[which].len() >= group.echo_quorum() {
            if let Ok(combined) = attacker.combine(&messages[which], &shares[which]) {
                finals.push(Message::Final {
                    payload: payloads[which].clone(),
                    certificate: combined.signature,
                });
            }
        }
    }
    let mut delivered: Option<Vec<u8>> = None;
    let mut deliveries = 0;
    for (id, node) in honest.iter_mut() {
        if rng.next_u32() % 2 == 0 {
            finals.reverse();
        }
        for message in &finals {
            let step = node.handle_message(proposer, message.clone(), &mut rng);
            for output in step.outputs {
                deliveries += 1;
                match &delivered {
                    Some(first) if *first != output.payload => {
                        return Err(fail(format!("consistency: {id} delivered another payload")))
                    }
                    _ => delivered = Some(output.payload),
                }
            }
        }
    }
    Ok(deliveries)
}

#[test]
fn a_proposer_keeping_every_echo_still_certifies_at_most_one_payload() {
    for n in [4, 7, 10] {
        let signers = insecure_signers(n);
        let (mut runs, mut runs_with_deliveries) = (0, 0);
        check_seeds(SEEDS, |seed| {
            runs += 1;
            runs_with_deliveries += usize::from(split_attack(&signers, seed)? > 0);
            Ok(())
        });
        if runs >= 50 {
            assert!(
                runs_with_deliveries > 0,
                "n = {n}: the attacker never certified anything"
            );
        }
    }
    let signers = bls_signers(4);
    check_seeds(BLS_SEEDS, |seed| split_attack(&signers, seed).map(drop));
}

/// InvalidShares at non-proposers: the honest proposer still delivers (robust combine) and,
/// whenever a bad share arrives before the certificate is complete, names its sender.
#[test]
fn invalid_shares_are_reported_and_do_not_block() {
    for n in [4, 7, 10] {
        let signers = insecure_signers(n);
        let mut runs = 0;
        let mut runs_with_evidence = 0;
        check_seeds(SEEDS, |seed| {
            runs += 1;
            let report = run_case(
                &signers,
                Some(&Strategy::InvalidShares),
                ProposerRole::Honest,
                seed,
            )?;
            runs_with_evidence += usize::from(report.invalid_share_evidence > 0);
            Ok(())
        });
        if runs >= 50 {
            // The proposer combines as soon as it holds k shares, so a Byzantine share that
            // arrives after them is never looked at; most schedules let at least one in.
            assert!(
                runs_with_evidence * 2 > runs,
                "n = {n}: InvalidShare evidence in only {runs_with_evidence} of {runs} runs"
            );
        }
    }
}

/// Every strategy with the real BLS threshold signatures, on a few seeds.
#[test]
fn bls_sweep_n4_and_n7() {
    for n in [4, 7] {
        let signers = bls_signers(n);
        check_seeds(BLS_SEEDS, |seed| {
            run_case(&signers, None, ProposerRole::Honest, seed).map(drop)
        });
        sweep(&signers, BLS_SEEDS);
        let (mut runs, mut runs_with_evidence) = (0, 0);
        check_seeds(BLS_SEEDS, |seed| {
            runs += 1;
            let report = run_case(
                &signers,
                Some(&Strategy::InvalidShares),
                ProposerRole::Honest,
                seed,
            )?;
            runs_with_evidence += usize::from(report.invalid_share_evidence > 0);
            Ok(())
        });
        // Some run of the few must have had a bad share reach the combiner.
        assert!(
            runs_with_evidence > 0 || runs < 5,
            "BLS n = {n}: no InvalidShare evidence"
        );
    }
}

/// The sweeps above rely on the insecure signer behaving like a threshold scheme when shares
/// disagree: a combination that mixes shares on different messages must not verify (otherwise
/// a Byzantine combiner would get a certificate from one share of its own).
#[test]
fn insecure_signer_does_not_certify_mixed_shares() {
    let signers = insecure_signers(4);
    let (a, b) = (b"message a".as_slice(), b"message b".as_slice());
    let mixed: BTreeMap<usize, _> = [
        (0, signers[0].sign_share(a)),
        (1, signers[1].sign_share(b)),
        (2, signers[2].sign_share(b)),
    ]
    .into_iter()
    .collect();
    let shares: Vec<_> = mixed.iter().map(|(i, s)| (*i, s)).collect();
    let combined = signers[3].combine_unchecked(&shares).unwrap();
    assert!(!signers[3].verify(a, &combined) && !signers[3].verify(b, &combined));
    assert!(signers[3].combine(a, &mixed).is_err());
}

/// Run one honest instance to completion and return every node's delivery.
fn honest_deliveries<S: ThresholdSigner + 'static>(
    signers: &[Arc<S>],
    instance: &[u8],
    proposer: NodeId,
    payload: &[u8],
) -> Vec<CbcDelivery<S::Signature>> {
    let n = signers.len();
    let group = config(n);
    let factory_signers = signers.to_vec();
    let factory_instance = instance.to_vec();
    let mut sim = Sim::new(
        SimConfig::new(n, 7),
        BTreeMap::new(),
        move |id: NodeId, _| {
            Cbc::new(
                group,
                id,
                proposer,
                factory_instance.clone(),
                factory_signers[id.index()].clone(),
                MAX_PAYLOAD,
            )
            .unwrap()
        },
        Box::new(maftia_sim::NoHooks),
    );
    sim.input(proposer, |_| payload.to_vec()).unwrap();
    sim.run(|_| Ok(())).unwrap();
    NodeId::all(n)
        .map(|id| sim.state().outputs(id)[0].clone())
        .collect()
}

fn check_transferability<S: ThresholdSigner + 'static>(signers: &[Arc<S>]) {
    let n = signers.len();
    let group = config(n);
    let instance = b"mvba/epoch 3/node 2".as_slice();
    let proposer = NodeId(2);
    let deliveries = honest_deliveries(signers, instance, proposer, b"certified");
    let certificate = &deliveries[0].certificate;
    assert!(deliveries
        .iter()
        .all(|d| d.payload == b"certified" && d.certificate == *certificate));
    // Any node's handle verifies it; another tag, proposer or payload does not.
    for signer in signers {
        assert!(verify_certificate(
            &**signer,
            instance,
            proposer,
            b"certified",
            certificate
        ));
        assert!(!verify_certificate(
            &**signer,
            b"mvba/epoch 3/node 3",
            proposer,
            b"certified",
            certificate
        ));
        assert!(!verify_certificate(
            &**signer,
            instance,
            NodeId(1),
            b"certified",
            certificate
        ));
        assert!(!verify_certificate(
            &**signer,
            instance,
            proposer,
            b"certifies",
            certificate
        ));
    }
    let relayed: Message<S::Share, S::Signature> = Message::Final {
        payload: b"certified".to_vec(),
        certificate: certificate.clone(),
    };
    let relayer = NodeId(0);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // A node that never heard from the proposer delivers from a relayed Final.
    let fresh = |tag: &[u8], proposer: NodeId| {
        Cbc::new(
            group,
            NodeId(3),
            proposer,
            tag.to_vec(),
            signers[3].clone(),
            MAX_PAYLOAD,
        )
        .unwrap()
    };
    let step = fresh(instance, proposer).handle_message(relayer, relayed.clone(), &mut rng);
    assert_eq!(step.outputs, vec![deliveries[0].clone()]);
    assert!(step.faults.is_empty());
    // The same Final is rejected, with evidence against the relayer, by another instance.
    for mut other in [
        fresh(b"mvba/epoch 4/node 2", proposer),
        fresh(instance, NodeId(1)),
    ] {
        let step = other.handle_message(relayer, relayed.clone(), &mut rng);
        assert!(step.outputs.is_empty());
        assert_eq!(step.faults.len(), 1);
        assert_eq!(step.faults[0].culprit, relayer);
        assert_eq!(step.faults[0].kind, CbcFault::InvalidCertificate);
    }
}

#[test]
fn certificates_transfer_and_bind_instance_and_proposer_insecure() {
    check_transferability(&insecure_signers(4));
    // Under another (insecure) key set of the same shape, the certificate does not verify.
    let signers = insecure_signers(4);
    let deliveries = honest_deliveries(&signers, b"tag", NodeId(0), b"m");
    let other = InsecureThresholdSigner::deal(4, 3, "another key set");
    assert!(!verify_certificate(
        &other[1],
        b"tag",
        NodeId(0),
        b"m",
        &deliveries[0].certificate
    ));
}

#[test]
fn certificates_transfer_and_bind_instance_and_proposer_bls() {
    let signers = bls_signers(4);
    check_transferability(&signers);
    // A certificate of an independently dealt CBC key set does not verify.
    let deliveries = honest_deliveries(&signers, b"tag", NodeId(0), b"m");
    let other = bls_signers_with_seed(4, 99);
    assert!(!verify_certificate(
        &*other[1],
        b"tag",
        NodeId(0),
        b"m",
        &deliveries[0].certificate
    ));
}

/// Same seed, same run: the simulation (and the protocol) are deterministic.
#[test]
fn runs_are_reproducible() {
    let signers = insecure_signers(7);
    let trace = |seed: u64| {
        let group = config(7);
        let factory_signers = signers.clone();
        let mut sim = Sim::new(
            SimConfig::new(7, seed),
            byzantine_nodes(7, 2, &Strategy::Replay, seed),
            move |id: NodeId, _| {
                Cbc::new(
                    group,
                    id,
                    NodeId(0),
                    b"repro".to_vec(),
                    factory_signers[id.index()].clone(),
                    MAX_PAYLOAD,
                )
                .unwrap()
            },
            Box::new(CbcAdversary::new(signers.clone(), b"repro", NodeId(0))),
        );
        let _ = sim.input(NodeId(0), |_| b"x".to_vec());
        sim.run(|_| Ok(())).unwrap();
        sim.trace_hash()
    };
    assert_eq!(trace(5), trace(5));
    assert_ne!(trace(5), trace(6));
}
