//! Fuzz the MN layer's handshake (`maftia_net::handshake`): the handshake payload decoder
//! (`HandshakePayload::decode`), the identity check (`LocalIdentity::verify_peer`) and both
//! sides of the Noise `XX` exchange (`respond`, `initiate`) against a peer that sends arbitrary
//! bytes, or a peer that speaks valid Noise but puts an arbitrary or adversarially built payload
//! inside it. A group of 4 fixed Ed25519 identities plus one stranger key. Nothing may panic,
//! and:
//!
//! - a decoded payload re-encodes to the same bytes (the encoding is canonical);
//! - raw bytes never complete a handshake (they cannot carry a valid identity signature);
//! - a payload accepted by `verify_peer` (directly or inside Noise) carries the registered key
//!   of the id it claims, our group tag, another id than ours and the right target;
//! - for payloads the harness builds and signs itself, acceptance is *exactly* the model: right
//!   role, group, target, a registered id other than ours, that id's key, signed by that key
//!   over the sender's real Noise static key.
//!
//! Input: `[mode] [rest]`; `mode % 6` picks the scenario (see the match), bit 7 makes the Noise
//! scenarios send `rest` as the raw payload instead of a built one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maftia_core::NodeId;
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_net::frame::{HandshakePayload, Role, HANDSHAKE_PAYLOAD_LEN, MAX_HANDSHAKE_RECORD};
use maftia_net::handshake::{
    initiate, read_record, respond, write_record, LocalIdentity, NOISE_PARAMS,
    NOISE_STATIC_CONTEXT, PROLOGUE,
};
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncWriteExt, DuplexStream};

const N: usize = 4;
const TAG: [u8; 32] = [9; 32];

struct Fixture {
    keys: Vec<IdentityKey>,
    stranger: IdentityKey,
    registry: Arc<Vec<IdentityPublicKey>>,
    /// Node 0 (acceptor side) and node 1 (dialer side).
    node0: LocalIdentity,
    node1: LocalIdentity,
    /// The harness peer's Noise static key pair.
    static_private: Vec<u8>,
    static_public: Vec<u8>,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let keys: Vec<IdentityKey> = (0..N)
            .map(|i| IdentityKey::from_bytes(&[i as u8 + 1; 32]))
            .collect();
        let registry = Arc::new(keys.iter().map(IdentityKey::public).collect::<Vec<_>>());
        let local = |id: u16| {
            LocalIdentity::new(
                NodeId(id),
                keys[usize::from(id)].clone(),
                registry.clone(),
                TAG,
                100 + u64::from(id),
            )
            .unwrap()
        };
        let keypair = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
            .generate_keypair()
            .unwrap();
        Fixture {
            node0: local(0),
            node1: local(1),
            stranger: IdentityKey::from_bytes(&[0xee; 32]),
            keys,
            registry,
            static_private: keypair.private,
            static_public: keypair.public,
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        }
    })
}

/// A payload built from fuzz bytes, and whether the model says it must be accepted by `us`
/// expecting `role` from `expected_peer` (`None`: the dialer must target us).
struct Built {
    payload: HandshakePayload,
    signer: Option<usize>,
    right_static: bool,
}

fn byte(rest: &[u8], i: usize) -> u8 {
    rest.get(i).copied().unwrap_or(0)
}

fn build(rest: &[u8], fx: &Fixture) -> Built {
    let pick = |b: u8| -> ([u8; 32], Option<usize>) {
        match b % 6 {
            i @ 0..=3 => (
                fx.keys[usize::from(i)].public().to_bytes(),
                Some(usize::from(i)),
            ),
            4 => (fx.stranger.public().to_bytes(), None),
            _ => ([byte(rest, 9); 32], None),
        }
    };
    let mut group_tag = TAG;
    if byte(rest, 1) & 1 == 1 {
        group_tag[usize::from(byte(rest, 1) >> 3) % 32] ^= 1;
    }
    let target = match byte(rest, 3) % 3 {
        0 => None,
        1 => Some(NodeId(0)),
        _ => Some(NodeId(u16::from(byte(rest, 4) % 6))),
    };
    let (identity, _) = pick(byte(rest, 5));
    let mut payload = HandshakePayload {
        role: if byte(rest, 0) & 1 == 0 {
            Role::Dialer
        } else {
            Role::Acceptor
        },
        group_tag,
        node_id: NodeId(u16::from(byte(rest, 2) % 6)),
        target,
        incarnation: u64::from(byte(rest, 8)),
        identity,
        signature: [0; 64],
    };
    let right_static = byte(rest, 7) & 1 == 0;
    let static_key: &[u8] = if right_static {
        &fx.static_public
    } else {
        &[7u8; 32]
    };
    let signer_choice = byte(rest, 6) % 6;
    let signer = match signer_choice {
        i @ 0..=3 => Some(&fx.keys[usize::from(i)]),
        4 => Some(&fx.stranger),
        _ => None,
    };
    if let Some(key) = signer {
        payload.signature = key
            .sign(NOISE_STATIC_CONTEXT, &payload.signed_message(static_key))
            .to_bytes();
    }
    Built {
        payload,
        signer: (signer_choice < 4).then_some(usize::from(signer_choice)),
        right_static,
    }
}

/// The model of `verify_peer` for a built payload.
fn model_accepts(
    built: &Built,
    fx: &Fixture,
    role: Role,
    us: NodeId,
    expected_peer: Option<NodeId>,
) -> bool {
    let p = &built.payload;
    let id = p.node_id.index();
    p.role == role
        && p.group_tag == TAG
        && p.node_id != us
        && id < N
        && p.identity == fx.registry[id].to_bytes()
        && match expected_peer {
            Some(dialed) => dialed == p.node_id,
            None => p.target == Some(us),
        }
        && built.signer == Some(id)
        && built.right_static
}

/// What any accepted payload must satisfy, however it was made.
fn check_sound(p: &HandshakePayload, fx: &Fixture, us: NodeId, expected_peer: Option<NodeId>) {
    assert_eq!(p.group_tag, TAG);
    assert_ne!(p.node_id, us);
    assert_eq!(fx.registry[p.node_id.index()].to_bytes(), p.identity);
    match expected_peer {
        Some(dialed) => assert_eq!(p.node_id, dialed),
        None => assert_eq!(p.target, Some(us)),
    }
}

fn noise(fx: &Fixture, initiator: bool) -> snow::HandshakeState {
    let builder = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
        .local_private_key(&fx.static_private)
        .unwrap()
        .prologue(PROLOGUE)
        .unwrap();
    if initiator {
        builder.build_initiator().unwrap()
    } else {
        builder.build_responder().unwrap()
    }
}

/// A Noise-valid dialer whose message 3 carries `payload`.
async fn harness_dialer(stream: &mut DuplexStream, fx: &Fixture, payload: &[u8]) {
    let mut hs = noise(fx, true);
    let mut message = [0u8; MAX_HANDSHAKE_RECORD];
    let mut plaintext = [0u8; MAX_HANDSHAKE_RECORD];
    let mut buf = Vec::new();
    let len = hs.write_message(&[], &mut message).unwrap();
    if write_record(stream, &message[..len]).await.is_err()
        || read_record(stream, &mut buf, MAX_HANDSHAKE_RECORD)
            .await
            .is_err()
        || hs.read_message(&buf, &mut plaintext).is_err()
    {
        return;
    }
    if let Ok(len) = hs.write_message(payload, &mut message) {
        let _ = write_record(stream, &message[..len]).await;
    }
    let _ = stream.shutdown().await;
}

/// A Noise-valid acceptor whose message 2 carries `payload`.
async fn harness_acceptor(stream: &mut DuplexStream, fx: &Fixture, payload: &[u8]) {
    let mut hs = noise(fx, false);
    let mut message = [0u8; MAX_HANDSHAKE_RECORD];
    let mut plaintext = [0u8; MAX_HANDSHAKE_RECORD];
    let mut buf = Vec::new();
    if read_record(stream, &mut buf, MAX_HANDSHAKE_RECORD)
        .await
        .is_err()
        || hs.read_message(&buf, &mut plaintext).is_err()
    {
        return;
    }
    if let Ok(len) = hs.write_message(payload, &mut message) {
        if write_record(stream, &message[..len]).await.is_ok()
            && read_record(stream, &mut buf, MAX_HANDSHAKE_RECORD)
                .await
                .is_ok()
        {
            let _ = hs.read_message(&buf, &mut plaintext);
        }
    }
    let _ = stream.shutdown().await;
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fx = fixture();
    let raw_payload = mode & 0x80 != 0;
    match mode % 6 {
        // The decoder, then the identity check as acceptor.
        0 => {
            if let Ok(payload) = HandshakePayload::decode(rest) {
                assert_eq!(rest.len(), HANDSHAKE_PAYLOAD_LEN);
                assert_eq!(payload.encode().as_slice(), rest);
                if fx
                    .node0
                    .verify_peer(&payload, &fx.static_public, Role::Dialer, None)
                    .is_ok()
                {
                    check_sound(&payload, fx, NodeId(0), None);
                }
            }
        }
        // The identity check against the model, both sides.
        1 => {
            let built = build(rest, fx);
            let decoded = HandshakePayload::decode(&built.payload.encode()).unwrap();
            assert_eq!(decoded, built.payload);
            let static_key = &fx.static_public;
            let acceptor = fx
                .node0
                .verify_peer(&built.payload, static_key, Role::Dialer, None);
            assert_eq!(
                acceptor.is_ok(),
                model_accepts(&built, fx, Role::Dialer, NodeId(0), None),
                "{acceptor:?}"
            );
            let dialer =
                fx.node1
                    .verify_peer(&built.payload, static_key, Role::Acceptor, Some(NodeId(0)));
            assert_eq!(
                dialer.is_ok(),
                model_accepts(&built, fx, Role::Acceptor, NodeId(1), Some(NodeId(0))),
                "{dialer:?}"
            );
        }
        // Raw bytes at the acceptor, or at the dialer: never a session.
        2 | 3 => fx.runtime.block_on(async {
            let (mut ours, mut theirs) = tokio::io::duplex(rest.len() + 4096);
            let _ = theirs.write_all(rest).await;
            let _ = theirs.shutdown().await;
            let result = if mode % 6 == 2 {
                respond(&mut ours, &fx.node0).await
            } else {
                initiate(&mut ours, &fx.node1, NodeId(0)).await
            };
            assert!(result.is_err(), "raw bytes completed a handshake");
        }),
        // A Noise-valid dialer with a built or raw payload in message 3.
        4 => fx.runtime.block_on(async {
            let built = build(rest, fx);
            let encoded = built.payload.encode();
            let payload: &[u8] = if raw_payload {
                &rest[..rest.len().min(512)]
            } else {
                &encoded
            };
            let (mut ours, mut theirs) = tokio::io::duplex(4096);
            // Each side closes its end when done, so a side giving up early unblocks the other.
            let (result, ()) = tokio::join!(
                async {
                    let result = respond(&mut ours, &fx.node0).await;
                    let _ = ours.shutdown().await;
                    result
                },
                harness_dialer(&mut theirs, fx, payload)
            );
            if let Ok(session) = &result {
                assert_eq!(
                    session.peer,
                    HandshakePayload::decode(payload).unwrap().node_id
                );
            }
            if raw_payload {
                if let Ok(p) = HandshakePayload::decode(payload) {
                    if result.is_ok() {
                        check_sound(&p, fx, NodeId(0), None);
                    }
                }
            } else {
                assert_eq!(
                    result.is_ok(),
                    model_accepts(&built, fx, Role::Dialer, NodeId(0), None),
                    "{result:?}"
                );
            }
        }),
        // A Noise-valid acceptor with a built or raw payload in message 2.
        _ => fx.runtime.block_on(async {
            let built = build(rest, fx);
            let encoded = built.payload.encode();
            let payload: &[u8] = if raw_payload {
                &rest[..rest.len().min(512)]
            } else {
                &encoded
            };
            let (mut ours, mut theirs) = tokio::io::duplex(4096);
            let (result, ()) = tokio::join!(
                async {
                    let result = initiate(&mut ours, &fx.node1, NodeId(0)).await;
                    let _ = ours.shutdown().await;
                    result
                },
                harness_acceptor(&mut theirs, fx, payload)
            );
            if raw_payload {
                if let (Ok(p), true) = (HandshakePayload::decode(payload), result.is_ok()) {
                    check_sound(&p, fx, NodeId(1), Some(NodeId(0)));
                }
            } else {
                assert_eq!(
                    result.is_ok(),
                    model_accepts(&built, fx, Role::Acceptor, NodeId(1), Some(NodeId(0))),
                    "{result:?}"
                );
            }
        }),
    }
});
