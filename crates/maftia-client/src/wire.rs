//! The client port: how clients and replicas talk (plain TCP, length-prefixed frames).
//!
//! **Format.** A frame is a `u32` big-endian length followed by that many bytes, which are a
//! [`maftia_core::codec`] envelope (magic, wire version, postcard body) of a [`ClientMessage`]
//! (client → replica) or a [`ReplicaMessage`] (replica → client). A client sends
//! [`ClientMessage::Request`]s; a replica answers each with its [`ReplyShare`] or tells the
//! client why it did not take the request ([`ReplicaMessage::Refused`]).
//!
//! **Limits.** A client → replica frame is at most [`MAX_CLIENT_FRAME`] bytes
//! (`request::MAX_SIGNED_REQUEST + 1024`), a replica → client frame at most
//! [`MAX_REPLICA_FRAME`] (`request::MAX_RESULT + 1024`). [`read_frame`] rejects a longer length
//! prefix *before* reading the body, and grows its buffer only as bytes actually arrive, so a
//! peer that announces a large frame and stalls holds no more memory than it sent.
//!
//! **Security.** The link is neither authenticated nor encrypted, and needs no authentication
//! for integrity: requests are signed by the client's Ed25519 key (a forged or altered request
//! is refused by every correct replica) and replies count only through a reply certificate
//! that verifies under the service's single public key (a forged reply share is just an
//! invalid share). Two consequences to keep in mind:
//! - **Replies and requests are not confidential on the wire**: anyone on the path reads them
//!   (confidential requests go through secure causal atomic broadcast, issue 6 step 5).
//! - [`ReplicaMessage::Refused`] is *not* authenticated. A client treats refusals as hints: a
//!   network attacker can forge them, but can equally drop the traffic, so refusals cost at
//!   most availability, never correctness.
//!
//! **Costs.** Encoding and decoding are linear in the frame; decoding a [`ReplyShare`] checks
//! that its BLS share is a point of the right subgroup (one G1 scalar multiplication).
use maftia_core::codec::{self, DecodeError, EncodeError};
use maftia_smr::request::{ReplyShare, SignedRequest, MAX_RESULT, MAX_SIGNED_REQUEST};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest client → replica frame body (after the length prefix).
pub const MAX_CLIENT_FRAME: usize = MAX_SIGNED_REQUEST + 1024;
/// Largest replica → client frame body (after the length prefix).
pub const MAX_REPLICA_FRAME: usize = MAX_RESULT + 1024;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;
/// Buffer reserved up front for a frame body; the rest grows as bytes arrive.
const INITIAL_BODY_BUFFER: usize = 64 << 10;
/// Payloads up to this size are written with their prefix in one write.
const COALESCE_WRITE: usize = 64 << 10;

/// A message from a client to a replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Order and execute this request (or resend the cached reply if it was executed).
    Request(SignedRequest),
}

/// A message from a replica to a client.
// One message per frame, decoded and consumed at once: the size difference between the
// variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaMessage {
    /// The replica's signed answer to one request.
    Reply(ReplyShare),
    /// The replica did not take request `seq` (nothing was ordered or executed).
    Refused { seq: u64, reason: Refusal },
}

/// Why a replica did not take a request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Error)]
pub enum Refusal {
    /// The replica is overloaded; try again later.
    #[error("the replica is busy")]
    Busy,
    /// This client sent more than its share of requests; try again later.
    #[error("this client is over its request rate limit")]
    RateLimited,
    /// The request is over the size limit.
    #[error("the request is {size} bytes, over the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    /// The request's signature does not verify under the client's key for this service.
    #[error("the request's signature does not verify (wrong service, or a corrupted request)")]
    BadSignature,
    /// The client's key is not on the service's client list.
    #[error("this client's key is not on the service's client list")]
    UnknownClient,
    /// The request did not decode.
    #[error("the request is malformed: {0}")]
    Malformed(String),
}

impl Refusal {
    /// Whether retrying the same request later may succeed (the replica is busy or rate
    /// limiting), as opposed to a refusal every retry gets again.
    pub fn is_transient(&self) -> bool {
        matches!(self, Refusal::Busy | Refusal::RateLimited)
    }
}

#[derive(Debug, Error)]
pub enum WireError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {size} bytes announced, over the limit of {max}")]
    FrameTooLarge { size: u64, max: usize },
    #[error("connection closed inside a frame ({got} of {expected} bytes received)")]
    Truncated { expected: usize, got: usize },
    #[error("frame does not decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("message does not encode: {0}")]
    Encode(#[from] EncodeError),
}

/// Read one frame body of at most `max` bytes. `Ok(None)` on a clean end of stream (before the
/// first byte of a frame); a stream ending anywhere else is [`WireError::Truncated`]. A length
/// prefix above `max` is refused before any of the body is read.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, WireError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    let mut filled = 0;
    while filled < LENGTH_PREFIX {
        let read = r.read(&mut prefix[filled..]).await?;
        if read == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(WireError::Truncated {
                expected: LENGTH_PREFIX,
                got: filled,
            });
        }
        filled += read;
    }
    let announced = u32::from_be_bytes(prefix);
    let len = usize::try_from(announced)
        .ok()
        .filter(|len| *len <= max)
        .ok_or(WireError::FrameTooLarge {
            size: u64::from(announced),
            max,
        })?;
    let mut body = Vec::with_capacity(len.min(INITIAL_BODY_BUFFER));
    r.take(u64::from(announced)).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(WireError::Truncated {
            expected: len,
            got: body.len(),
        });
    }
    Ok(Some(body))
}

/// Write one frame (length prefix and `payload`) and flush.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> Result<(), WireError> {
    let len = u32::try_from(payload.len()).map_err(|_| WireError::FrameTooLarge {
        size: payload.len() as u64,
        max: u32::MAX as usize,
    })?;
    if payload.len() <= COALESCE_WRITE {
        let mut frame = Vec::with_capacity(LENGTH_PREFIX + payload.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(payload);
        w.write_all(&frame).await?;
    } else {
        w.write_all(&len.to_be_bytes()).await?;
        w.write_all(payload).await?;
    }
    w.flush().await?;
    Ok(())
}

/// Encode a client message (at most [`MAX_CLIENT_FRAME`] bytes).
pub fn encode_client(message: &ClientMessage) -> Result<Vec<u8>, WireError> {
    Ok(codec::encode_with_limit(message, MAX_CLIENT_FRAME)?)
}

/// Decode a client message (at most [`MAX_CLIENT_FRAME`] bytes). The request's signature is
/// *not* checked here: the replica checks it against its service id.
pub fn decode_client(frame: &[u8]) -> Result<ClientMessage, WireError> {
    Ok(codec::decode_with_limit(frame, MAX_CLIENT_FRAME)?)
}

/// Encode a replica message (at most [`MAX_REPLICA_FRAME`] bytes).
pub fn encode_replica(message: &ReplicaMessage) -> Result<Vec<u8>, WireError> {
    Ok(codec::encode_with_limit(message, MAX_REPLICA_FRAME)?)
}

/// Decode a replica message (at most [`MAX_REPLICA_FRAME`] bytes). The share is *not* checked
/// here: the client's reply collector checks it.
pub fn decode_replica(frame: &[u8]) -> Result<ReplicaMessage, WireError> {
    Ok(codec::decode_with_limit(frame, MAX_REPLICA_FRAME)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use maftia_crypto::bls::KeySetId;
    use maftia_crypto::identity::IdentityKey;
    use maftia_crypto::keygen::deal_group;
    use maftia_smr::request::{reply_message, ServiceId, ServiceResult};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn sample_messages() -> (ClientMessage, Vec<ReplicaMessage>) {
        let mut rng = StdRng::seed_from_u64(1);
        let (group, secrets) = deal_group(4, 1, &mut rng).unwrap();
        let service = ServiceId::new(&group, "wire-test");
        let key = IdentityKey::generate(&mut rng);
        let request = SignedRequest::sign(&key, &service, 7, b"operation".to_vec());
        let result = ServiceResult::Executed(b"reply".to_vec());
        let share = secrets[2].bls[&KeySetId::Reply].sign(&reply_message(
            &service,
            &key.public(),
            7,
            &result,
        ));
        let reply = ReplicaMessage::Reply(ReplyShare {
            replica: 2,
            client: key.public(),
            seq: 7,
            result,
            share,
        });
        let refusals = [
            Refusal::Busy,
            Refusal::RateLimited,
            Refusal::TooLarge { size: 9, limit: 3 },
            Refusal::BadSignature,
            Refusal::UnknownClient,
            Refusal::Malformed("bad".into()),
        ];
        let mut replica = vec![reply];
        replica.extend(
            refusals
                .into_iter()
                .map(|reason| ReplicaMessage::Refused { seq: 7, reason }),
        );
        (ClientMessage::Request(request), replica)
    }

    #[test]
    fn messages_round_trip_and_truncations_fail() {
        let (client, replica) = sample_messages();
        let bytes = encode_client(&client).unwrap();
        assert_eq!(decode_client(&bytes).unwrap(), client);
        for message in replica {
            let bytes = encode_replica(&message).unwrap();
            assert_eq!(decode_replica(&bytes).unwrap(), message);
            // Every truncation fails to decode; none panics.
            for cut in 0..bytes.len() {
                assert!(decode_replica(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn oversized_messages_are_refused_both_ways() {
        let key = IdentityKey::from_bytes(&[3; 32]);
        let service = ServiceId([1; 32]);
        let big = SignedRequest::sign(&key, &service, 1, vec![0; MAX_CLIENT_FRAME]);
        let message = ClientMessage::Request(big);
        assert!(matches!(
            encode_client(&message),
            Err(WireError::Encode(EncodeError::TooLarge { .. }))
        ));
        let bytes = codec::encode(&message).unwrap();
        assert!(matches!(
            decode_client(&bytes),
            Err(WireError::Decode(DecodeError::TooLarge { .. }))
        ));
    }

    #[tokio::test]
    async fn frames_round_trip_over_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let payloads: Vec<Vec<u8>> = vec![vec![], vec![1, 2, 3], vec![7; 200_000]];
        let sent = payloads.clone();
        let writer = tokio::spawn(async move {
            for p in &sent {
                write_frame(&mut a, p).await.unwrap();
            }
        });
        for p in &payloads {
            assert_eq!(read_frame(&mut b, 300_000).await.unwrap().as_ref(), Some(p));
        }
        writer.await.unwrap();
        // The writer is dropped: a clean end of stream.
        assert!(read_frame(&mut b, 300_000).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_length_prefix_is_rejected_before_the_body() {
        let (mut a, mut b) = tokio::io::duplex(64);
        // Announce max + 1 bytes and send none of them: the reader must not wait for the body.
        let max = 1000usize;
        a.write_all(&((max + 1) as u32).to_be_bytes())
            .await
            .unwrap();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), read_frame(&mut b, max))
            .await
            .expect("rejected without waiting for the body");
        assert!(
            matches!(read, Err(WireError::FrameTooLarge { size, max: m }) if size == 1001 && m == max),
            "{read:?}"
        );
        // Exactly max is accepted.
        let (mut a, mut b) = tokio::io::duplex(4096);
        write_frame(&mut a, &vec![5; max]).await.unwrap();
        assert_eq!(read_frame(&mut b, max).await.unwrap().unwrap().len(), max);
        // The largest prefix possible.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_frame(&mut b, MAX_REPLICA_FRAME).await,
            Err(WireError::FrameTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn truncated_frames_are_errors_not_clean_ends() {
        // Inside the prefix.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b, 100).await,
            Err(WireError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        // Inside the body.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(&[1, 2, 3]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b, 100).await,
            Err(WireError::Truncated {
                expected: 10,
                got: 3
            })
        ));
    }

    #[test]
    fn transient_refusals_are_only_busy_and_rate_limited() {
        let (_, replica) = sample_messages();
        let transient: Vec<bool> = replica
            .iter()
            .filter_map(|m| match m {
                ReplicaMessage::Refused { reason, .. } => Some(reason.is_transient()),
                ReplicaMessage::Reply(_) => None,
            })
            .collect();
        assert_eq!(transient, [true, true, false, false, false, false]);
        assert_eq!(
            Refusal::UnknownClient.to_string(),
            "this client's key is not on the service's client list"
        );
    }
}
