//! The authenticated key exchange of a connection: Noise `XX` (X25519, ChaCha20-Poly1305,
//! BLAKE2s, via `snow`) with each side's Noise static key bound to its Ed25519 node identity.
//!
//! **Guarantees.** After [`initiate`] / [`respond`] succeed, both sides share fresh transport
//! keys (forward secret: ephemeral–ephemeral DH) and each knows that the other holds the
//! Ed25519 identity key registered for the node id it claims, in the same group, and that the
//! dialer meant to reach exactly this acceptor. The binding is the libp2p-noise construction:
//! each side's handshake payload ([`HandshakePayload`]) carries its identity key, claimed id,
//! group tag, incarnation and an identity signature (context [`NOISE_STATIC_CONTEXT`]) over its
//! *Noise static public key* and those fields; Noise proves possession of the static secret, the
//! signature ties that static key to the identity. The static key is fresh per process start,
//! so a stolen transcript or static key of an earlier run is useless.
//!
//! **Message flow** (`XX`): `-> e`, `<- e, ee, s, es, payload(acceptor)`,
//! `-> s, se, payload(dialer)`. The acceptor's identity is revealed to an unauthenticated
//! dialer (it is public: the group file lists it); the dialer's only to the authenticated
//! acceptor. Replaying recorded handshake messages fails: a replayed message 3 does not decrypt
//! under the acceptor's fresh ephemeral key.
//!
//! **Cost.** Four X25519 operations and one Ed25519 signature and verification per side
//! (≈ 0.3 ms), once per connection.
//!
//! **Transport.** [`Session`] splits into a [`SendCipher`] and a [`RecvCipher`] sharing the
//! stateless transport state; each keeps its own nonce counter, so a replayed, reordered or
//! dropped record never decrypts (the connection is then closed by the caller).
use crate::frame::{
    self, FrameError, HandshakePayload, Role, MAX_HANDSHAKE_RECORD, NOISE_MAX_MESSAGE,
    NOISE_TAG_LEN, RECORD_HEADER_LEN,
};
use maftia_core::NodeId;
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey, IdentitySignature};
use snow::{Builder, HandshakeState, StatelessTransportState};
use std::fmt;
use std::sync::Arc;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Signature context of the identity signature over the Noise static key.
pub const NOISE_STATIC_CONTEXT: &str = "maftia 2026-11 net noise static";
/// Noise prologue (mixed into the handshake hash: both sides must speak this protocol).
pub const PROLOGUE: &[u8] = b"maftia 2026-11 net v1";

/// Why a connection was refused (before or during authentication). Counted per reason in
/// [`crate::NetStats::refused_handshakes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalReason {
    /// The cap on concurrent unauthenticated inbound connections was reached.
    TooManyPending,
    /// The handshake did not complete before the deadline.
    Timeout,
    /// The peer closed the connection in the middle of the handshake.
    Closed,
    /// A socket error.
    Io,
    /// A record or handshake payload that does not decode (bad length, version, fields).
    Malformed,
    /// A Noise message that does not verify or decrypt.
    Noise,
    /// The peer belongs to another group (group tag differs).
    WrongGroup,
    /// The peer claims our own id.
    SelfConnection,
    /// The claimed id is not in the group or not one of our configured peers.
    NotAPeer,
    /// The identity key is not registered in the group.
    UnknownKey,
    /// The identity key is registered, but for another node id than the one claimed.
    WrongIdentity,
    /// The dialer meant to reach another node, or the acceptor is not the node we dialed.
    WrongTarget,
    /// The payload was sent with the wrong role (e.g. a dialer payload from the acceptor).
    WrongRole,
    /// The identity signature over the Noise static key does not verify.
    BadSignature,
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A failed handshake: its [`RefusalReason`] and a human-readable detail for the log.
#[derive(Debug, Error)]
#[error("handshake refused ({reason}): {detail}")]
pub struct HandshakeError {
    pub reason: RefusalReason,
    pub detail: String,
}

impl HandshakeError {
    pub fn new(reason: RefusalReason, detail: impl Into<String>) -> Self {
        HandshakeError {
            reason,
            detail: detail.into(),
        }
    }
}

impl From<RecordError> for HandshakeError {
    fn from(e: RecordError) -> Self {
        let reason = match &e {
            RecordError::Closed | RecordError::Truncated => RefusalReason::Closed,
            RecordError::Io(_) => RefusalReason::Io,
            RecordError::Frame(_) => RefusalReason::Malformed,
        };
        HandshakeError::new(reason, e.to_string())
    }
}

fn noise_error(e: snow::Error) -> HandshakeError {
    HandshakeError::new(RefusalReason::Noise, e.to_string())
}

/// Reading or writing one record failed.
#[derive(Debug, Error)]
pub enum RecordError {
    #[error("connection closed")]
    Closed,
    #[error("connection closed in the middle of a record")]
    Truncated,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Read one record (length prefix + body, `1 <= len <= max`) into `buf`. A clean end of stream
/// before the prefix is [`RecordError::Closed`].
pub async fn read_record<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<(), RecordError> {
    let mut header = [0u8; RECORD_HEADER_LEN];
    let mut filled = 0;
    while filled < header.len() {
        let read = reader.read(&mut header[filled..]).await?;
        if read == 0 {
            return Err(if filled == 0 {
                RecordError::Closed
            } else {
                RecordError::Truncated
            });
        }
        filled += read;
    }
    let len = frame::record_len(header, max)?;
    buf.clear();
    buf.resize(len, 0);
    reader.read_exact(buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            RecordError::Truncated
        } else {
            RecordError::Io(e)
        }
    })?;
    Ok(())
}

/// Write one record (length prefix + `body`).
pub async fn write_record<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
) -> Result<(), RecordError> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + body.len());
    out.extend_from_slice(&frame::record_header(body.len()));
    out.extend_from_slice(body);
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

/// This node's side of every handshake: identity, group, incarnation and the Noise static key
/// of this process (fresh on every [`LocalIdentity::new`]).
pub struct LocalIdentity {
    node_id: NodeId,
    identity: IdentityKey,
    registry: Arc<Vec<IdentityPublicKey>>,
    group_tag: [u8; 32],
    incarnation: u64,
    static_private: Zeroizing<Vec<u8>>,
    static_public: Vec<u8>,
}

impl fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalIdentity")
            .field("node_id", &self.node_id)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

fn builder() -> Result<Builder<'static>, HandshakeError> {
    let params = NOISE_PARAMS.parse().map_err(noise_error)?;
    Ok(Builder::new(params))
}

impl LocalIdentity {
    /// `registry[i]` is node `i`'s identity key (the group file's `identities`). Generates a
    /// fresh X25519 static key from the OS RNG.
    pub fn new(
        node_id: NodeId,
        identity: IdentityKey,
        registry: Arc<Vec<IdentityPublicKey>>,
        group_tag: [u8; 32],
        incarnation: u64,
    ) -> Result<Self, HandshakeError> {
        let keypair = builder()?.generate_keypair().map_err(noise_error)?;
        Ok(LocalIdentity {
            node_id,
            identity,
            registry,
            group_tag,
            incarnation,
            static_private: Zeroizing::new(keypair.private),
            static_public: keypair.public,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Our signed handshake payload for `role` (and the node we dial, as dialer).
    fn payload(&self, role: Role, target: Option<NodeId>) -> HandshakePayload {
        let mut payload = HandshakePayload {
            role,
            group_tag: self.group_tag,
            node_id: self.node_id,
            target,
            incarnation: self.incarnation,
            identity: self.identity.public().to_bytes(),
            signature: [0u8; 64],
        };
        let message = payload.signed_message(&self.static_public);
        payload.signature = self
            .identity
            .sign(NOISE_STATIC_CONTEXT, &message)
            .to_bytes();
        payload
    }

    fn state(&self, initiator: bool) -> Result<HandshakeState, HandshakeError> {
        let builder = builder()?
            .local_private_key(&self.static_private)
            .map_err(noise_error)?
            .prologue(PROLOGUE)
            .map_err(noise_error)?;
        if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map_err(noise_error)
    }

    /// Check a peer's payload: `expected_role`, our group, not ourselves, a registered key
    /// matching the claimed id, the right target, and the signature over `remote_static`.
    /// `expected_peer` is the node we dialed (dialer side) or `None` (acceptor side: the dialer
    /// must have targeted us).
    pub fn verify_peer(
        &self,
        payload: &HandshakePayload,
        remote_static: &[u8],
        expected_role: Role,
        expected_peer: Option<NodeId>,
    ) -> Result<(), HandshakeError> {
        let refuse = |reason, detail: String| Err(HandshakeError::new(reason, detail));
        if payload.role != expected_role {
            return refuse(RefusalReason::WrongRole, format!("{:?}", payload.role));
        }
        if payload.group_tag != self.group_tag {
            return refuse(RefusalReason::WrongGroup, "group tag differs".into());
        }
        let claimed = payload.node_id;
        if claimed == self.node_id {
            return refuse(RefusalReason::SelfConnection, format!("claims {claimed}"));
        }
        let Some(registered) = self.registry.get(claimed.index()) else {
            return refuse(RefusalReason::NotAPeer, format!("no node {claimed}"));
        };
        if registered.to_bytes() != payload.identity {
            return match self
                .registry
                .iter()
                .position(|k| k.to_bytes() == payload.identity)
            {
                Some(owner) => refuse(
                    RefusalReason::WrongIdentity,
                    format!("key of node {owner} claims {claimed}"),
                ),
                None => refuse(
                    RefusalReason::UnknownKey,
                    format!("unregistered key claims {claimed}"),
                ),
            };
        }
        match expected_peer {
            Some(dialed) if dialed != claimed => {
                return refuse(
                    RefusalReason::WrongTarget,
                    format!("dialed {dialed}, reached {claimed}"),
                )
            }
            None if payload.target != Some(self.node_id) => {
                return refuse(
                    RefusalReason::WrongTarget,
                    format!("{claimed} dialed {:?}, not us", payload.target),
                )
            }
            _ => {}
        }
        let signature = IdentitySignature::from_bytes(&payload.signature);
        if !registered.verify(
            NOISE_STATIC_CONTEXT,
            &payload.signed_message(remote_static),
            &signature,
        ) {
            return refuse(RefusalReason::BadSignature, format!("claims {claimed}"));
        }
        Ok(())
    }
}

/// An authenticated connection's peer and transport ciphers.
pub struct Session {
    pub peer: NodeId,
    pub peer_incarnation: u64,
    pub sender: SendCipher,
    pub receiver: RecvCipher,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("peer_incarnation", &self.peer_incarnation)
            .finish_non_exhaustive()
    }
}

fn session(hs: HandshakeState, payload: &HandshakePayload) -> Result<Session, HandshakeError> {
    let state = Arc::new(hs.into_stateless_transport_mode().map_err(noise_error)?);
    Ok(Session {
        peer: payload.node_id,
        peer_incarnation: payload.incarnation,
        sender: SendCipher {
            state: state.clone(),
            nonce: 0,
            plaintext: Vec::new(),
        },
        receiver: RecvCipher {
            state,
            nonce: 0,
            plaintext: vec![0u8; NOISE_MAX_MESSAGE],
        },
    })
}

fn read_payload(
    hs: &mut HandshakeState,
    message: &[u8],
) -> Result<HandshakePayload, HandshakeError> {
    let mut plaintext = [0u8; MAX_HANDSHAKE_RECORD];
    let len = hs
        .read_message(message, &mut plaintext)
        .map_err(noise_error)?;
    HandshakePayload::decode(&plaintext[..len])
        .map_err(|e| HandshakeError::new(RefusalReason::Malformed, e.to_string()))
}

fn remote_static(hs: &HandshakeState) -> Result<Vec<u8>, HandshakeError> {
    hs.get_remote_static()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| HandshakeError::new(RefusalReason::Noise, "no remote static key"))
}

/// Run the dialer's side of the handshake with the node we mean to reach, `target`. The
/// caller bounds it with a deadline.
pub async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    local: &LocalIdentity,
    target: NodeId,
) -> Result<Session, HandshakeError> {
    let mut hs = local.state(true)?;
    let mut message = [0u8; MAX_HANDSHAKE_RECORD];
    let mut buf = Vec::new();
    // -> e
    let len = hs.write_message(&[], &mut message).map_err(noise_error)?;
    write_record(stream, &message[..len]).await?;
    // <- e, ee, s, es, payload
    read_record(stream, &mut buf, MAX_HANDSHAKE_RECORD).await?;
    let theirs = read_payload(&mut hs, &buf)?;
    local.verify_peer(&theirs, &remote_static(&hs)?, Role::Acceptor, Some(target))?;
    // -> s, se, payload
    let ours = local.payload(Role::Dialer, Some(target)).encode();
    let len = hs.write_message(&ours, &mut message).map_err(noise_error)?;
    write_record(stream, &message[..len]).await?;
    session(hs, &theirs)
}

/// Run the acceptor's side of the handshake. The caller bounds it with a deadline.
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    local: &LocalIdentity,
) -> Result<Session, HandshakeError> {
    let mut hs = local.state(false)?;
    let mut message = [0u8; MAX_HANDSHAKE_RECORD];
    let mut plaintext = [0u8; MAX_HANDSHAKE_RECORD];
    let mut buf = Vec::new();
    // -> e (no payload)
    read_record(stream, &mut buf, MAX_HANDSHAKE_RECORD).await?;
    let len = hs.read_message(&buf, &mut plaintext).map_err(noise_error)?;
    if len != 0 {
        return Err(HandshakeError::new(
            RefusalReason::Malformed,
            "payload in the first handshake message",
        ));
    }
    // <- e, ee, s, es, payload
    let ours = local.payload(Role::Acceptor, None).encode();
    let len = hs.write_message(&ours, &mut message).map_err(noise_error)?;
    write_record(stream, &message[..len]).await?;
    // -> s, se, payload
    read_record(stream, &mut buf, MAX_HANDSHAKE_RECORD).await?;
    let theirs = read_payload(&mut hs, &buf)?;
    local.verify_peer(&theirs, &remote_static(&hs)?, Role::Dialer, None)?;
    session(hs, &theirs)
}

/// A transport record failed to seal or open (nonce exhausted, bad tag, bad length).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("transport record failed: {0}")]
pub struct TransportError(pub String);

/// The sending half of an authenticated connection.
pub struct SendCipher {
    state: Arc<StatelessTransportState>,
    nonce: u64,
    plaintext: Vec<u8>,
}

impl SendCipher {
    /// Encrypt the concatenation of `parts` (at most [`frame::MAX_RECORD_PLAINTEXT`] bytes)
    /// as the next record and append it (length prefix included) to `out`.
    pub fn seal(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), TransportError> {
        self.plaintext.clear();
        for part in parts {
            self.plaintext.extend_from_slice(part);
        }
        let len = self.plaintext.len() + NOISE_TAG_LEN;
        if len > NOISE_MAX_MESSAGE {
            return Err(TransportError(format!("record of {len} bytes")));
        }
        let nonce = self.nonce;
        self.nonce = nonce
            .checked_add(1)
            .ok_or_else(|| TransportError("nonce exhausted".into()))?;
        let start = out.len();
        out.extend_from_slice(&frame::record_header(len));
        out.resize(start + RECORD_HEADER_LEN + len, 0);
        let written = self
            .state
            .write_message(
                nonce,
                &self.plaintext,
                &mut out[start + RECORD_HEADER_LEN..],
            )
            .map_err(|e| TransportError(e.to_string()))?;
        if written != len {
            out.truncate(start);
            return Err(TransportError(format!("sealed {written} of {len} bytes")));
        }
        Ok(())
    }
}

/// The receiving half of an authenticated connection.
pub struct RecvCipher {
    state: Arc<StatelessTransportState>,
    nonce: u64,
    plaintext: Vec<u8>,
}

impl RecvCipher {
    /// Decrypt the next record (its body, without the length prefix). Any record that is not
    /// exactly the next one the peer sealed (replayed, reordered, altered) fails.
    pub fn open(&mut self, record: &[u8]) -> Result<&[u8], TransportError> {
        let len = self
            .state
            .read_message(self.nonce, record, &mut self.plaintext)
            .map_err(|e| TransportError(e.to_string()))?;
        self.nonce = self
            .nonce
            .checked_add(1)
            .ok_or_else(|| TransportError("nonce exhausted".into()))?;
        Ok(&self.plaintext[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    struct Group {
        keys: Vec<IdentityKey>,
        registry: Arc<Vec<IdentityPublicKey>>,
    }

    fn group(n: usize) -> Group {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let keys: Vec<IdentityKey> = (0..n).map(|_| IdentityKey::generate(&mut rng)).collect();
        let registry = Arc::new(keys.iter().map(IdentityKey::public).collect());
        Group { keys, registry }
    }

    fn local(g: &Group, id: u16, key: &IdentityKey, tag: u8) -> LocalIdentity {
        LocalIdentity::new(
            NodeId(id),
            key.clone(),
            g.registry.clone(),
            [tag; 32],
            100 + id as u64,
        )
        .unwrap()
    }

    async fn run(
        dialer: &LocalIdentity,
        acceptor: &LocalIdentity,
        target: NodeId,
    ) -> (
        Result<Session, HandshakeError>,
        Result<Session, HandshakeError>,
    ) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        // Each side closes its end when done, so a side refusing early unblocks the other.
        let (d, r) = tokio::join!(
            async move { initiate(&mut a, dialer, target).await },
            async move { respond(&mut b, acceptor).await }
        );
        (d, r)
    }

    #[tokio::test]
    async fn honest_handshake_authenticates_both_sides_and_transport_works() {
        let g = group(4);
        let (d, r) = run(
            &local(&g, 1, &g.keys[1], 9),
            &local(&g, 2, &g.keys[2], 9),
            NodeId(2),
        )
        .await;
        let (mut d, mut r) = (d.unwrap(), r.unwrap());
        assert_eq!((d.peer, d.peer_incarnation), (NodeId(2), 102));
        assert_eq!((r.peer, r.peer_incarnation), (NodeId(1), 101));
        let mut out = Vec::new();
        d.sender.seal(&[b"hel", b"lo"], &mut out).unwrap();
        d.sender.seal(&[b"again"], &mut out).unwrap();
        let first_len = RECORD_HEADER_LEN + 5 + NOISE_TAG_LEN;
        let (first, second) = out.split_at(first_len);
        // Out of order and replayed records fail.
        assert!(r.receiver.open(&second[RECORD_HEADER_LEN..]).is_err());
        assert_eq!(
            r.receiver.open(&first[RECORD_HEADER_LEN..]).unwrap(),
            b"hello"
        );
        assert!(r.receiver.open(&first[RECORD_HEADER_LEN..]).is_err());
    }

    #[tokio::test]
    async fn each_identity_failure_has_its_reason() {
        let g = group(4);
        let mut rng = ChaCha20Rng::seed_from_u64(99);
        let stranger = IdentityKey::generate(&mut rng);
        let acceptor = local(&g, 0, &g.keys[0], 9);
        let cases = [
            (
                local(&g, 1, &stranger, 9),
                NodeId(0),
                RefusalReason::UnknownKey,
            ),
            (
                local(&g, 1, &g.keys[2], 9),
                NodeId(0),
                RefusalReason::WrongIdentity,
            ),
            (
                local(&g, 7, &g.keys[1], 9),
                NodeId(0),
                RefusalReason::NotAPeer,
            ),
        ];
        for (dialer, target, reason) in cases {
            let (_, r) = run(&dialer, &acceptor, target).await;
            assert_eq!(r.unwrap_err().reason, reason);
        }
        // Dialing ourselves: the dialer sees its own id in message 2.
        let (d, _) = run(&local(&g, 0, &g.keys[0], 9), &acceptor, NodeId(0)).await;
        assert_eq!(d.unwrap_err().reason, RefusalReason::SelfConnection);
        // Another group: the dialer sees it first (message 2) and gives up.
        let other_group = local(&g, 1, &g.keys[1], 8);
        let (d, r) = run(&other_group, &acceptor, NodeId(0)).await;
        assert_eq!(d.unwrap_err().reason, RefusalReason::WrongGroup);
        assert_eq!(r.unwrap_err().reason, RefusalReason::Closed);
        // A dialer of another group that goes on anyway is refused by the acceptor.
        let payload = other_group.payload(Role::Dialer, Some(NodeId(0)));
        assert_eq!(
            acceptor
                .verify_peer(&payload, &other_group.static_public, Role::Dialer, None)
                .unwrap_err()
                .reason,
            RefusalReason::WrongGroup
        );
        // The dialer checks the acceptor: dialing node 3 but reaching node 0.
        let (d, _) = run(&local(&g, 1, &g.keys[1], 9), &acceptor, NodeId(3)).await;
        assert_eq!(d.unwrap_err().reason, RefusalReason::WrongTarget);
        // A payload whose signature covers another static key.
        let dialer = local(&g, 1, &g.keys[1], 9);
        let mut payload = dialer.payload(Role::Dialer, Some(NodeId(0)));
        let other_static = [5u8; 32];
        assert_eq!(
            acceptor
                .verify_peer(&payload, &other_static, Role::Dialer, None)
                .unwrap_err()
                .reason,
            RefusalReason::BadSignature
        );
        assert!(acceptor
            .verify_peer(&payload, &dialer.static_public, Role::Dialer, None)
            .is_ok());
        assert_eq!(
            acceptor
                .verify_peer(&payload, &dialer.static_public, Role::Acceptor, None)
                .unwrap_err()
                .reason,
            RefusalReason::WrongRole
        );
        payload.incarnation += 1;
        assert_eq!(
            acceptor
                .verify_peer(&payload, &dialer.static_public, Role::Dialer, None)
                .unwrap_err()
                .reason,
            RefusalReason::BadSignature
        );
    }
}
