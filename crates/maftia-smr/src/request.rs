//! Client requests, replies and reply certificates: the contract between clients and replicas.
//!
//! # Requests
//! A client holds an Ed25519 key; its public key is its **client id**. It numbers its requests
//! with a sequence number that only grows, and signs
//! `REQUEST_CONTEXT ‖ service ‖ seq ‖ operation` ([`SignedRequest::signing_bytes`]), where
//! `service` is the [`ServiceId`] of the cluster (a hash of the group's public keys and the
//! instance name), so a request signed for one service is worthless to another. Replicas check
//! the signature and that the client is on the service's client list twice: before proposing a
//! request for ordering (to refuse junk early) and again, deterministically, when the ordered
//! request is executed (a Byzantine replica may propose anything).
//!
//! # Replies and certificates (COCA-style)
//! Every replica that executes request `(client, seq)` with result `r` signs the 32-byte
//! [`reply_message`] `H(REPLY_CONTEXT, service, client, seq, encode(r))` with its share of the
//! service's **Reply** BLS key set (threshold `f + 1`) and sends a [`ReplyShare`]. The client
//! combines `f + 1` valid shares on the same message into a [`BlsSignature`] that verifies
//! against the service's single Reply public key: at least one of the signers is correct, so the
//! result is the one the correct replicas computed. A client never trusts one replica.
//!
//! Results are [`ServiceResult`]s: the state machine's reply bytes, or a deterministic refusal
//! (unknown client, stale sequence number, request over the size limit) that every correct
//! replica reaches alike and therefore also certifies.
use maftia_core::codec;
use maftia_crypto::bls::{BlsPublicKeySet, BlsSignature, BlsSignatureShare, KeySetId};
use maftia_crypto::hash::hash;
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey, IdentitySignature};
use maftia_crypto::keygen::GroupPublic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Signature context of client requests.
pub const REQUEST_CONTEXT: &str = "maftia 2026-11 client request";
/// Hash context of the message a reply certificate signs.
pub const REPLY_CONTEXT: &str = "maftia 2026-11 reply certificate";
/// Hash context of [`ServiceId`].
pub const SERVICE_CONTEXT: &str = "maftia 2026-11 service id";
/// Largest operation a request may carry (the KV store's own request limit).
pub const MAX_OPERATION: usize = crate::kv::MAX_REQUEST_SIZE;
/// Largest encoded [`SignedRequest`]: the operation plus the fixed fields.
pub const MAX_SIGNED_REQUEST: usize = MAX_OPERATION + 256;
/// Largest encoded [`ServiceResult`] (a range reply is capped at 4 MiB of entries).
pub const MAX_RESULT: usize = 6 << 20;

/// Names one replicated service: its group's public keys and its instance name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceId(pub [u8; 32]);

impl ServiceId {
    /// `H(SERVICE_CONTEXT, n, f, Reply public key, identities…, instance)`.
    pub fn new(group: &GroupPublic, instance: &str) -> ServiceId {
        let n = (group.n as u64).to_le_bytes();
        let f = (group.f as u64).to_le_bytes();
        let reply_key = group
            .bls
            .get(&KeySetId::Reply)
            .map(|set| set.public_key.to_compressed().to_vec())
            .unwrap_or_default();
        let identities: Vec<[u8; 32]> = group.identities.iter().map(|k| k.to_bytes()).collect();
        let mut parts: Vec<&[u8]> = vec![&n, &f, &reply_key];
        parts.extend(identities.iter().map(|k| k.as_slice()));
        parts.push(instance.as_bytes());
        ServiceId(hash(SERVICE_CONTEXT, &parts))
    }
}

/// A client's request as it travels to the replicas and through the order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRequest {
    /// The client's Ed25519 public key: its id.
    pub client: IdentityPublicKey,
    /// The client's sequence number (grows with every new request; a retry reuses it).
    pub seq: u64,
    /// The service operation (for the KV store, an encoded `KvRequest`).
    #[serde(with = "maftia_core::wire::bytes")]
    pub operation: Vec<u8>,
    pub signature: IdentitySignature,
}

/// Why a request was refused before or at execution.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("the request does not decode: {0}")]
    Malformed(String),
    #[error("the operation is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the request's signature does not verify under the client's key")]
    BadSignature,
}

impl SignedRequest {
    /// Sign `operation` as request `seq` of `key`'s client for `service`.
    pub fn sign(
        key: &IdentityKey,
        service: &ServiceId,
        seq: u64,
        operation: Vec<u8>,
    ) -> SignedRequest {
        let signature = key.sign(
            REQUEST_CONTEXT,
            &Self::signing_bytes(service, seq, &operation),
        );
        SignedRequest {
            client: key.public(),
            seq,
            operation,
            signature,
        }
    }

    /// What the client signs: `service ‖ seq (u64 LE) ‖ operation`.
    pub fn signing_bytes(service: &ServiceId, seq: u64, operation: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + operation.len());
        out.extend_from_slice(&service.0);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(operation);
        out
    }

    /// Whether the signature is the client's on this request for `service` (strict Ed25519
    /// verification: deterministic across replicas).
    pub fn verify(&self, service: &ServiceId) -> bool {
        self.client.verify(
            REQUEST_CONTEXT,
            &Self::signing_bytes(service, self.seq, &self.operation),
            &self.signature,
        )
    }

    /// Canonical encoding (the bytes that are ordered).
    pub fn encode(&self) -> Vec<u8> {
        // A SignedRequest always encodes: its fields are plain data.
        codec::encode_with_limit(self, usize::MAX).unwrap_or_default()
    }

    /// Decode ordered or received bytes, with the size limit, and check the signature.
    pub fn decode_verified(
        bytes: &[u8],
        service: &ServiceId,
    ) -> Result<SignedRequest, RequestError> {
        let request: SignedRequest = codec::decode_with_limit(bytes, MAX_SIGNED_REQUEST)
            .map_err(|e| RequestError::Malformed(e.to_string()))?;
        if request.operation.len() > MAX_OPERATION {
            return Err(RequestError::TooLarge {
                size: request.operation.len(),
                limit: MAX_OPERATION,
            });
        }
        if !request.verify(service) {
            return Err(RequestError::BadSignature);
        }
        Ok(request)
    }
}

/// The certified outcome of one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceResult {
    /// The state machine executed the request; its reply bytes (for the KV store, an encoded
    /// `KvReply`).
    Executed(#[serde(with = "maftia_core::wire::bytes")] Vec<u8>),
    /// The client is not on the service's client list; nothing was executed.
    UnknownClient,
    /// The client already executed a later request (`last` is its highest executed sequence
    /// number); nothing was executed. A client that lost its counter resumes above `last`.
    StaleSequence { last: u64 },
}

/// The message a reply certificate signs: `H(REPLY_CONTEXT, service, client, seq LE, result)`.
pub fn reply_message(
    service: &ServiceId,
    client: &IdentityPublicKey,
    seq: u64,
    result: &ServiceResult,
) -> [u8; 32] {
    let encoded = codec::encode_with_limit(result, usize::MAX).unwrap_or_default();
    hash(
        REPLY_CONTEXT,
        &[&service.0, &client.to_bytes(), &seq.to_le_bytes(), &encoded],
    )
}

/// One replica's signed answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyShare {
    /// The replica (its index in the group, which is also its Reply share index).
    pub replica: u16,
    pub client: IdentityPublicKey,
    pub seq: u64,
    pub result: ServiceResult,
    /// The replica's Reply share on [`reply_message`].
    pub share: BlsSignatureShare,
}

/// A reply certificate: the result and the group's signature on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyCertificate {
    pub client: IdentityPublicKey,
    pub seq: u64,
    pub result: ServiceResult,
    pub signature: BlsSignature,
}

impl ReplyCertificate {
    /// Whether the certificate is valid for `service` under the Reply public key set.
    pub fn verify(&self, service: &ServiceId, reply_keys: &BlsPublicKeySet) -> bool {
        reply_keys.id == KeySetId::Reply
            && reply_keys.verify(
                &reply_message(service, &self.client, self.seq, &self.result),
                &self.signature,
            )
    }
}

/// Why collecting reply shares has not produced a certificate yet.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CollectError {
    #[error("share from replica {replica}, outside the group of {n}")]
    UnknownReplica { replica: u16, n: usize },
    #[error("share for another request (client or sequence number differs)")]
    OtherRequest,
    #[error("replica {replica} already answered")]
    Duplicate { replica: u16 },
}

/// Collects the [`ReplyShare`]s of one request until `f + 1` valid shares agree on a result.
///
/// Shares are grouped by the result they sign. A group reaching the threshold is combined and
/// the combination checked once; if it fails, every share of the group is checked and the
/// invalid ones are dropped and their replicas reported as culprits. Replicas whose valid
/// share signs a result other than the certified one are reported as culprits too.
pub struct ReplyCollector {
    service: ServiceId,
    keys: std::sync::Arc<BlsPublicKeySet>,
    client: IdentityPublicKey,
    seq: u64,
    by_message: BTreeMap<[u8; 32], (ServiceResult, BTreeMap<usize, BlsSignatureShare>)>,
    answered: BTreeMap<u16, [u8; 32]>,
    culprits: BTreeMap<u16, String>,
}

impl ReplyCollector {
    pub fn new(
        service: ServiceId,
        keys: std::sync::Arc<BlsPublicKeySet>,
        client: IdentityPublicKey,
        seq: u64,
    ) -> ReplyCollector {
        ReplyCollector {
            service,
            keys,
            client,
            seq,
            by_message: BTreeMap::new(),
            answered: BTreeMap::new(),
            culprits: BTreeMap::new(),
        }
    }

    /// Add one share; returns the certificate once `f + 1` valid shares agree.
    pub fn add(&mut self, share: ReplyShare) -> Result<Option<ReplyCertificate>, CollectError> {
        let n = self.keys.n;
        if usize::from(share.replica) >= n {
            return Err(CollectError::UnknownReplica {
                replica: share.replica,
                n,
            });
        }
        if share.client != self.client || share.seq != self.seq {
            return Err(CollectError::OtherRequest);
        }
        if self.answered.contains_key(&share.replica) {
            return Err(CollectError::Duplicate {
                replica: share.replica,
            });
        }
        let message = reply_message(&self.service, &self.client, self.seq, &share.result);
        self.answered.insert(share.replica, message);
        let (result, shares) = self
            .by_message
            .entry(message)
            .or_insert_with(|| (share.result.clone(), BTreeMap::new()));
        shares.insert(usize::from(share.replica), share.share);
        if shares.len() < self.keys.threshold {
            return Ok(None);
        }
        let result = result.clone();
        let (signature, invalid) = combine_verified(&self.keys, &message, shares);
        for index in invalid {
            shares.remove(&index);
            self.culprits
                .insert(index as u16, "invalid reply signature share".into());
        }
        let Some(signature) = signature else {
            return Ok(None);
        };
        // Every other replica that answered signed a different result.
        for (replica, other) in &self.answered {
            if *other != message && !self.culprits.contains_key(replica) {
                self.culprits
                    .insert(*replica, "reply differs from the certified one".into());
            }
        }
        Ok(Some(ReplyCertificate {
            client: self.client,
            seq: self.seq,
            result,
            signature,
        }))
    }

    /// Replicas caught sending an invalid share or a result other than the certified one.
    pub fn culprits(&self) -> &BTreeMap<u16, String> {
        &self.culprits
    }

    /// How many replicas answered.
    pub fn answered(&self) -> usize {
        self.answered.len()
    }
}

/// Combine `shares` (at least the threshold) on `message`: optimistically the first `k` with one
/// check, else every share checked and `k` valid ones combined. Returns the signature, if `k`
/// valid shares exist, and the signers of the invalid shares found. Shared with the checkpoint
/// collector of [`crate::replica`].
pub(crate) fn combine_verified(
    keys: &BlsPublicKeySet,
    message: &[u8],
    shares: &BTreeMap<usize, BlsSignatureShare>,
) -> (Option<BlsSignature>, Vec<usize>) {
    let k = keys.threshold;
    let first: Vec<(usize, &BlsSignatureShare)> =
        shares.iter().take(k).map(|(i, s)| (*i, s)).collect();
    if first.len() == k {
        if let Ok(signature) = keys.combine_unchecked(&first) {
            if keys.verify(message, &signature) {
                return (Some(signature), Vec::new());
            }
        }
    }
    let (valid, invalid): (Vec<_>, Vec<_>) = shares
        .iter()
        .partition(|(i, s)| keys.verify_share(**i, message, s));
    let invalid: Vec<usize> = invalid.into_iter().map(|(i, _)| *i).collect();
    if valid.len() < k {
        return (None, invalid);
    }
    let chosen: Vec<(usize, &BlsSignatureShare)> =
        valid.into_iter().take(k).map(|(i, s)| (*i, s)).collect();
    (keys.combine_unchecked(&chosen).ok(), invalid)
}
