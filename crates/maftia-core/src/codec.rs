//! The wire codec: one canonical encoding for every message maftia sends.
//!
//! A frame is `MAGIC (2 bytes) ‖ WIRE_VERSION (1 byte) ‖ postcard(message)`. Decoding is total:
//! it checks the size limit before touching the body, rejects unknown versions and trailing
//! bytes, and reports every failure as a [`DecodeError`] — it never panics and never allocates
//! more than the input's length (postcard reads lengths against the remaining input).
use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

/// First bytes of every maftia frame.
pub const MAGIC: [u8; 2] = *b"MF";
/// Version of the envelope and of the message encodings inside it.
pub const WIRE_VERSION: u8 = 1;
/// Bytes of envelope before the postcard body.
pub const HEADER_LEN: usize = MAGIC.len() + 1;
/// Hard upper bound on an encoded message, envelope included (16 MiB).
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("message encodes to {size} bytes, above the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("message cannot be serialized: {0}")]
    Serialize(String),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("frame of {size} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated { size: usize },
    #[error("frame does not start with the maftia magic bytes")]
    BadMagic,
    #[error("unsupported wire version {found} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("message body ended early")]
    UnexpectedEnd,
    #[error("malformed message body: {0}")]
    Malformed(String),
    #[error("{extra} bytes left over after the message")]
    TrailingBytes { extra: usize },
}

/// Encode `message` in a versioned envelope, refusing to produce a frame above
/// [`MAX_MESSAGE_SIZE`].
pub fn encode<M: Serialize>(message: &M) -> Result<Vec<u8>, EncodeError> {
    encode_with_limit(message, MAX_MESSAGE_SIZE)
}

pub fn encode_with_limit<M: Serialize>(message: &M, max: usize) -> Result<Vec<u8>, EncodeError> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&MAGIC);
    frame.push(WIRE_VERSION);
    let frame =
        postcard::to_extend(message, frame).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    if frame.len() > max {
        return Err(EncodeError::TooLarge {
            size: frame.len(),
            max,
        });
    }
    Ok(frame)
}

/// Decode a frame produced by [`encode`], with the default size limit.
pub fn decode<M: DeserializeOwned>(frame: &[u8]) -> Result<M, DecodeError> {
    decode_with_limit(frame, MAX_MESSAGE_SIZE)
}

/// Decode a frame no larger than `max` bytes.
pub fn decode_with_limit<M: DeserializeOwned>(frame: &[u8], max: usize) -> Result<M, DecodeError> {
    if frame.len() > max {
        return Err(DecodeError::TooLarge {
            size: frame.len(),
            max,
        });
    }
    if frame.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { size: frame.len() });
    }
    if frame[..MAGIC.len()] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = frame[MAGIC.len()];
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    let (message, rest) = postcard::take_from_bytes(&frame[HEADER_LEN..]).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::UnexpectedEnd,
        other => DecodeError::Malformed(other.to_string()),
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { extra: rest.len() });
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Sample {
        Echo { instance: u64, payload: Vec<u8> },
        Ready([u8; 32]),
        Votes(Vec<(u16, bool)>),
    }

    fn sample() -> impl Strategy<Value = Sample> {
        prop_oneof![
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..512))
                .prop_map(|(instance, payload)| Sample::Echo { instance, payload }),
            any::<[u8; 32]>().prop_map(Sample::Ready),
            proptest::collection::vec(any::<(u16, bool)>(), 0..64).prop_map(Sample::Votes),
        ]
    }

    proptest! {
        #[test]
        fn roundtrip(msg in sample()) {
            let frame = encode(&msg).unwrap();
            prop_assert_eq!(decode::<Sample>(&frame).unwrap(), msg);
        }

        #[test]
        fn every_truncation_is_an_error(msg in sample()) {
            let frame = encode(&msg).unwrap();
            for len in 0..frame.len() {
                prop_assert!(decode::<Sample>(&frame[..len]).is_err());
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode::<Sample>(&bytes);
            let mut framed = MAGIC.to_vec();
            framed.push(WIRE_VERSION);
            framed.extend_from_slice(&bytes);
            let _ = decode::<Sample>(&framed);
        }

        #[test]
        fn trailing_bytes_rejected(msg in sample(), extra in proptest::collection::vec(any::<u8>(), 1..16)) {
            let mut frame = encode(&msg).unwrap();
            frame.extend_from_slice(&extra);
            prop_assert!(decode::<Sample>(&frame).is_err());
        }
    }

    #[test]
    fn oversize_rejected_before_parsing() {
        let frame = vec![0u8; 100];
        assert_eq!(
            decode_with_limit::<Sample>(&frame, 99),
            Err(DecodeError::TooLarge { size: 100, max: 99 })
        );
        let big = Sample::Echo {
            instance: 1,
            payload: vec![0; 200],
        };
        assert!(matches!(
            encode_with_limit(&big, 100),
            Err(EncodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn header_checks() {
        let frame = encode(&Sample::Ready([1; 32])).unwrap();
        assert_eq!(
            decode::<Sample>(&frame[..2]),
            Err(DecodeError::Truncated { size: 2 })
        );
        let mut bad = frame.clone();
        bad[0] = b'X';
        assert_eq!(decode::<Sample>(&bad), Err(DecodeError::BadMagic));
        let mut bad = frame;
        bad[2] = WIRE_VERSION + 1;
        assert_eq!(
            decode::<Sample>(&bad),
            Err(DecodeError::UnsupportedVersion {
                found: WIRE_VERSION + 1
            })
        );
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // A vector claiming u32::MAX elements in a tiny frame must fail, not allocate 4 GiB.
        let mut frame = MAGIC.to_vec();
        frame.push(WIRE_VERSION);
        frame.push(2); // Sample::Votes
        frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode::<Sample>(&frame).is_err());
    }
}
