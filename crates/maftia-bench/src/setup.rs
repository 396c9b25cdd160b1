//! Key dealing and node construction for each workload.
use crate::driver::{BenchNode, Group, RequestMaker};
use crate::timed::{SignerCounters, TimedSigner};
use crate::{BenchError, RunSpec, Workload};
use maftia_broadcast::abc::{Abc, AbcDelivery, AbcParams};
use maftia_broadcast::atomic::OrderingMode;
use maftia_broadcast::htabc::{HtAbc, HtParams};
use maftia_broadcast::scabc::{self, Scabc, ScabcKeys, ScabcOutput, ScabcResult};
use maftia_broadcast::ThresholdKeys;
use maftia_core::{GroupConfig, NodeId};
use maftia_crypto::bls::{self, BlsThresholdSigner, KeySetId};
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_crypto::tdh2::{self, Tdh2PublicKey};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use std::sync::Arc;

/// The signer every benchmarked node uses: real BLS, timed.
pub type BenchSigner = TimedSigner<BlsThresholdSigner>;

/// Hash-free tag of the ordering instance the bench runs.
const INSTANCE: &[u8] = b"maftia bench";

/// Keys of a group: threshold key sets (timed), identities, and the counters.
struct Keys {
    config: GroupConfig,
    threshold: Vec<ThresholdKeys<BenchSigner>>,
    identities: Vec<IdentityKey>,
    registry: Arc<Vec<IdentityPublicKey>>,
    counters: [Arc<SignerCounters>; 3],
}

fn deal_keys(spec: &RunSpec, rng: &mut ChaCha20Rng) -> Result<Keys, BenchError> {
    let config = GroupConfig::asynchronous(spec.n, spec.f)
        .map_err(|e| BenchError::InvalidSpec(e.to_string()))?;
    let counters: [Arc<SignerCounters>; 3] = Default::default();
    let mut deal = |id: KeySetId, counters: &Arc<SignerCounters>| {
        let (public, secrets) = bls::deal(id, spec.n, id.threshold(spec.n, spec.f), &mut *rng)
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let public = Arc::new(public);
        secrets
            .into_iter()
            .map(|s| {
                BlsThresholdSigner::new(public.clone(), s)
                    .map(|signer| Arc::new(TimedSigner::new(signer, counters.clone())))
                    .map_err(|e| BenchError::Setup(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let coin = deal(KeySetId::Coin, &counters[0])?;
    let cbc = deal(KeySetId::Cbc, &counters[1])?;
    let quorum = deal(KeySetId::Quorum, &counters[2])?;
    let threshold = (0..spec.n)
        .map(|i| {
            ThresholdKeys::new(
                &config,
                node(i),
                coin[i].clone(),
                cbc[i].clone(),
                quorum[i].clone(),
            )
            .map_err(|e| BenchError::Setup(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let identities: Vec<IdentityKey> = (0..spec.n)
        .map(|_| IdentityKey::generate(&mut *rng))
        .collect();
    let registry = Arc::new(identities.iter().map(IdentityKey::public).collect());
    Ok(Keys {
        config,
        threshold,
        identities,
        registry,
        counters,
    })
}

fn node(index: usize) -> NodeId {
    NodeId(u16::try_from(index).unwrap_or(u16::MAX))
}

fn params(spec: &RunSpec, request_size: usize) -> AbcParams {
    AbcParams {
        batch_size: spec.batch_size,
        max_batch_bytes: spec.batch_size.saturating_mul(request_size),
        max_request_size: request_size,
        max_pending: spec.pending().max(spec.batch_size),
        dedup_rounds: 8,
    }
}

/// A request template of `size` bytes from the seed (the id goes in the first 8 bytes).
fn template(size: usize, rng: &mut ChaCha20Rng) -> Vec<u8> {
    let mut bytes = vec![0u8; size];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// The request id in the first 8 bytes of `bytes`.
pub fn request_id(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

pub fn abc_group(spec: &RunSpec) -> Result<Group<Abc<BenchSigner>>, BenchError> {
    let mut rng = ChaCha20Rng::seed_from_u64(spec.seed);
    let keys = deal_keys(spec, &mut rng)?;
    let params = params(spec, spec.request_size);
    let nodes = (0..spec.n)
        .map(|i| {
            Abc::new(
                keys.config,
                node(i),
                INSTANCE.to_vec(),
                keys.threshold[i].clone(),
                keys.identities[i].clone(),
                keys.registry.clone(),
                params,
            )
            .map_err(|e| BenchError::Setup(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Group {
        nodes,
        requests: RequestMaker::Plain {
            template: template(spec.request_size, &mut rng),
        },
        counters: keys.counters,
    })
}

pub fn htabc_group(spec: &RunSpec) -> Result<Group<HtAbc<BenchSigner>>, BenchError> {
    let mut rng = ChaCha20Rng::seed_from_u64(spec.seed);
    let keys = deal_keys(spec, &mut rng)?;
    let params = params(spec, spec.request_size);
    let nodes = (0..spec.n)
        .map(|i| {
            HtAbc::new(
                keys.config,
                node(i),
                INSTANCE.to_vec(),
                keys.threshold[i].clone(),
                params,
                HtParams::default(),
            )
            .map_err(|e| BenchError::Setup(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Group {
        nodes,
        requests: RequestMaker::Plain {
            template: template(spec.request_size, &mut rng),
        },
        counters: keys.counters,
    })
}

/// SC-ABC in the mode of `spec.workload` ([`Workload::Scabc`] or [`Workload::HtScabc`]).
pub fn scabc_group(spec: &RunSpec) -> Result<Group<Scabc<BenchSigner>>, BenchError> {
    let mut rng = ChaCha20Rng::seed_from_u64(spec.seed);
    let keys = deal_keys(spec, &mut rng)?;
    let (public, secrets) =
        tdh2::deal(spec.n, spec.f + 1, &mut rng).map_err(|e| BenchError::Setup(e.to_string()))?;
    let public = Arc::new(public);
    let mut requests = RequestMaker::Encrypted {
        public: public.clone(),
        template: template(spec.request_size, &mut rng),
        rng: Box::new(ChaCha20Rng::seed_from_u64(spec.seed ^ 0x5ca6c)),
    };
    // Every request has the same size: measure one.
    let request_size = requests.make(0)?.len();
    let params = params(spec, request_size);
    let mode = if spec.workload == Workload::HtScabc {
        OrderingMode::HighThroughput(HtParams::default())
    } else {
        OrderingMode::Ckps01
    };
    let nodes = secrets
        .into_iter()
        .enumerate()
        .map(|(i, secret)| {
            Scabc::with_mode(
                keys.config,
                node(i),
                INSTANCE.to_vec(),
                ScabcKeys {
                    tdh2_public: public.clone(),
                    tdh2_secret: secret,
                    threshold: keys.threshold[i].clone(),
                    identity: keys.identities[i].clone(),
                    identities: keys.registry.clone(),
                },
                params,
                mode,
            )
            .map_err(|e| BenchError::Setup(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Group {
        nodes,
        requests,
        counters: keys.counters,
    })
}

/// The label a bench client encrypts request `id` under.
pub fn label(id: u64) -> Vec<u8> {
    let mut label = b"maftia bench client ".to_vec();
    label.extend_from_slice(&id.to_le_bytes());
    label
}

/// Encrypt a plaintext for SC-ABC.
pub fn encrypt(
    public: &Tdh2PublicKey,
    plaintext: &[u8],
    id: u64,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<u8>, BenchError> {
    scabc::encrypt_request(public, plaintext, &label(id), rng)
        .map_err(|e| BenchError::Input(e.to_string()))
}

/// Feed an [`AbcDelivery`] to the agreement chain: the round and the delivered request ids,
/// which name the requests' contents (template + id, fixed by the seed): hashing every
/// request's bytes at every node would make the harness itself a hotspot.
fn record_delivery(output: &AbcDelivery, ids: &mut Vec<u64>, chain: &mut blake3::Hasher) -> u64 {
    let before = ids.len();
    ids.extend(output.requests.iter().filter_map(|r| request_id(r)));
    let mut staged = Vec::with_capacity(16 + 8 * (ids.len() - before));
    staged.extend_from_slice(&output.round.to_le_bytes());
    staged.extend_from_slice(&(output.requests.len() as u64).to_le_bytes());
    for id in &ids[before..] {
        staged.extend_from_slice(&id.to_le_bytes());
    }
    chain.update(&staged);
    output.round
}

impl BenchNode for Abc<BenchSigner> {
    fn pending_requests(&self) -> usize {
        self.pending()
    }

    fn completed_rounds(&self, _last_output_round: Option<u64>) -> u64 {
        // One output per round, emitted as the round completes.
        self.round()
    }

    fn record_output(output: &AbcDelivery, ids: &mut Vec<u64>, chain: &mut blake3::Hasher) -> u64 {
        record_delivery(output, ids, chain)
    }
}

impl BenchNode for HtAbc<BenchSigner> {
    fn pending_requests(&self) -> usize {
        // Queued plus in lane batches not yet delivered.
        self.pending()
    }

    fn completed_rounds(&self, _last_output_round: Option<u64>) -> u64 {
        // One output per epoch, emitted as the epoch is delivered; `round` is the next epoch.
        self.round()
    }

    fn record_output(output: &AbcDelivery, ids: &mut Vec<u64>, chain: &mut blake3::Hasher) -> u64 {
        record_delivery(output, ids, chain)
    }
}

impl BenchNode for Scabc<BenchSigner> {
    fn pending_requests(&self) -> usize {
        self.abc().pending()
    }

    fn completed_rounds(&self, last_output_round: Option<u64>) -> u64 {
        // Entries are output after decryption, which trails ABC's ordering: every ordered
        // round is complete once no entry is pending; otherwise those before the round of the
        // latest output are (a round still decrypting counts once its last entry is out).
        if self.pending_entries() == 0 {
            self.ordered_rounds()
        } else {
            last_output_round.unwrap_or(0)
        }
    }

    fn record_output(output: &ScabcOutput, ids: &mut Vec<u64>, chain: &mut blake3::Hasher) -> u64 {
        // Position, ciphertext digest and plaintext id (the plaintext is the template with
        // that id, fixed by the seed), in one update.
        let mut staged = [0u8; 8 + 8 + 4 + 32 + 9];
        staged[..8].copy_from_slice(&output.sequence.to_le_bytes());
        staged[8..16].copy_from_slice(&output.round.to_le_bytes());
        staged[16..20].copy_from_slice(&output.index.to_le_bytes());
        staged[20..52].copy_from_slice(&output.request_digest);
        if let ScabcResult::Delivered { plaintext, .. } = &output.result {
            if let Some(id) = request_id(plaintext) {
                staged[52] = 1;
                staged[53..].copy_from_slice(&id.to_le_bytes());
                ids.push(id);
            }
        }
        chain.update(&staged);
        output.round
    }
}
