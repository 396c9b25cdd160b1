//! Fuzz the wire decoder and the protocols behind it: any bytes a peer can send are decoded as
//! each message family reachable from the network, and whatever decodes is handed to a live
//! protocol instance as if it came from an arbitrary sender. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maftia_broadcast::{cbc, rbc};
use maftia_core::{codec, GroupConfig, NodeId, Protocol};
use maftia_crypto::bls::{self, BlsSignature, BlsSignatureShare, BlsThresholdSigner, KeySetId};
use rand::SeedableRng;
use std::sync::{Arc, OnceLock};

const N: usize = 4;
const F: usize = 1;

fn cbc_signers() -> &'static Vec<Arc<BlsThresholdSigner>> {
    static SIGNERS: OnceLock<Vec<Arc<BlsThresholdSigner>>> = OnceLock::new();
    SIGNERS.get_or_init(|| {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let threshold = KeySetId::Cbc.threshold(N, F);
        let (public, secrets) = bls::deal(KeySetId::Cbc, N, threshold, &mut rng).unwrap();
        let public = Arc::new(public);
        secrets
            .into_iter()
            .map(|s| Arc::new(BlsThresholdSigner::new(public.clone(), s).unwrap()))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else { return };
    let config = GroupConfig::asynchronous(N, F).unwrap();
    // The claimed sender: any member, or a non-member id.
    let from = NodeId(u16::from(selector >> 2) % (N as u16 + 2));
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(selector));
    match selector & 1 {
        0 => {
            let Ok(message) = codec::decode::<rbc::Message>(frame) else { return };
            let mut node =
                rbc::Rbc::new(config, NodeId(1), NodeId(0), rbc::RbcParams::default()).unwrap();
            let _ = node.handle_message(from, message.clone(), &mut rng);
            let _ = node.handle_message(from, message, &mut rng);
        }
        _ => {
            let Ok(message) =
                codec::decode::<cbc::Message<BlsSignatureShare, BlsSignature>>(frame)
            else {
                return;
            };
            // Node 0 is the proposer, so shares sent to it are combined.
            let signer = cbc_signers()[0].clone();
            let mut node =
                cbc::Cbc::new(config, NodeId(0), NodeId(0), b"fuzz".to_vec(), signer, 1 << 20)
                    .unwrap();
            let _ = node.handle_message(from, message, &mut rng);
        }
    }
});
