//! Byzantine behaviours of a replica for tests and the demo, applied to its outgoing frames
//! (feature `byzantine-test-modes`, on by default; without the feature the `--byzantine` flag
//! does not exist — build production binaries with `--no-default-features`).
//!
//! - `silent`: nothing leaves the replica;
//! - `garbage`: every frame is replaced by random bytes of the same length (the receivers refuse
//!   them as undecodable: evidence `Frame/Undecodable`);
//! - `equivocate`: every round batch is followed by a second, validly signed batch for the same
//!   round with different requests (the receivers report `EquivocatingBatch`); CKPS01 mode only
//!   (in the high-throughput mode it sends the real frames only);
//! - `invalid-shares`: every threshold signature share it sends (consistent-broadcast echoes,
//!   binary-agreement votes, coin shares) is replaced by a valid curve point that is not its
//!   share (the receivers report `InvalidShare` / `InvalidCoinShare` whenever their optimistic
//!   combination fails and they check shares one by one); CKPS01 mode only;
//! - `intruded` (what `maftia demo` uses): `invalid-shares` towards the other replicas, and
//!   towards clients wrong results signed with the replica's real reply key share, alternating
//!   with invalid shares on the real result ([`crate::service`]).
use crate::node::ByzantineMode;
use bytes::Bytes;
use maftia_broadcast::abc::{batch_message, Message, BATCH_SIGNATURE_CONTEXT};
use maftia_broadcast::atomic::{AtomicBroadcastMessage, AtomicMessage};
use maftia_broadcast::{aba, cbc, mvba};
use maftia_core::{codec, NodeId};
use maftia_crypto::bls::{hash_to_g1, BlsSignatureShare, BlsThresholdSigner, KeySetId};
use maftia_crypto::identity::IdentityKey;
use rand::RngCore;

/// The frames to send instead of `frame`.
pub fn transform(
    mode: ByzantineMode,
    frame: &Bytes,
    identity: &IdentityKey,
    instance: &[u8],
    our_id: NodeId,
) -> Vec<Bytes> {
    match mode {
        ByzantineMode::Silent => Vec::new(),
        ByzantineMode::Garbage => {
            let mut bytes = vec![0u8; frame.len().max(16)];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            vec![Bytes::from(bytes)]
        }
        ByzantineMode::InvalidShares | ByzantineMode::Intruded => {
            match codec::decode::<AtomicBroadcastMessage<BlsThresholdSigner>>(frame) {
                Ok(AtomicMessage::Ckps01(Message::Mvba { round, mut message })) => {
                    corrupt_mvba(&mut message);
                    let wrong: AtomicBroadcastMessage<BlsThresholdSigner> =
                        AtomicMessage::Ckps01(Message::Mvba { round, message });
                    match codec::encode(&wrong) {
                        Ok(encoded) => vec![Bytes::from(encoded)],
                        Err(_) => vec![frame.clone()],
                    }
                }
                _ => vec![frame.clone()],
            }
        }
        ByzantineMode::Equivocate => {
            let mut out = vec![frame.clone()];
            if let Ok(AtomicMessage::Ckps01(Message::Batch {
                round, requests, ..
            })) = codec::decode::<AtomicBroadcastMessage<BlsThresholdSigner>>(frame)
            {
                let mut other = requests;
                other.push(format!("equivocation of {our_id} in round {round}").into_bytes());
                let message = batch_message(instance, round, our_id, &other);
                let signature = identity.sign(BATCH_SIGNATURE_CONTEXT, &message);
                let twin: AtomicBroadcastMessage<BlsThresholdSigner> =
                    AtomicMessage::Ckps01(Message::Batch {
                        round,
                        requests: other,
                        signature,
                    });
                if let Ok(encoded) = codec::encode(&twin) {
                    out.push(Bytes::from(encoded));
                }
            }
            out
        }
    }
}

/// A point of G1 that is nobody's share of anything.
fn bad_share() -> BlsSignatureShare {
    BlsSignatureShare(hash_to_g1(
        KeySetId::Coin,
        b"maftia byzantine test: not a share",
    ))
}

fn corrupt_cbc(message: &mut cbc::Message<BlsSignatureShare, maftia_crypto::bls::BlsSignature>) {
    if let cbc::Message::Echo(share) = message {
        *share = bad_share();
    }
}

fn corrupt_mvba(message: &mut mvba::Message<BlsSignatureShare, maftia_crypto::bls::BlsSignature>) {
    match message {
        mvba::Message::Proposal(_, inner) | mvba::Message::Commit(_, inner) => corrupt_cbc(inner),
        mvba::Message::Coin(share) => *share = bad_share(),
        mvba::Message::Aba { message, .. } => match message {
            aba::Message::PreProcess { share, .. }
            | aba::Message::PreVote { share, .. }
            | aba::Message::MainVote { share, .. }
            | aba::Message::Coin { share, .. } => *share = bad_share(),
            aba::Message::Decide { .. } => {}
        },
        mvba::Message::Vote { .. } => {}
    }
}
