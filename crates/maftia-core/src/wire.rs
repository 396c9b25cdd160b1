//! Fast serde paths for byte strings inside protocol messages, with the *same* encoding.
//!
//! serde serializes a `Vec<u8>` as a sequence of `u8`s and deserializes it element by element
//! (one visitor call and a capacity check per byte): decoding a 1 MB proposal cost about as
//! much as verifying a BLS signature. These helpers go through serde's byte-string methods
//! instead (`serialize_bytes`, `deserialize_byte_buf`): one length and one copy. In postcard
//! (our codec) a byte string and a sequence of `u8`s have the identical encoding — a varint
//! length followed by the raw bytes — so frames do not change (the tests pin this). For
//! self-describing formats the deserializers also accept a sequence of numbers.
//!
//! Use with `#[serde(with = "maftia_core::wire::bytes")]` on a `Vec<u8>` field and
//! `#[serde(with = "maftia_core::wire::byte_lists")]` on a `Vec<Vec<u8>>` field.
use serde::de::{Deserializer, Error, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Elements preallocated from an untrusted length hint (the codec checks the real length
/// against the remaining input as it reads).
const MAX_PREALLOCATED: usize = 4096;

struct ByteBufVisitor;

impl<'de> Visitor<'de> for ByteBufVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a byte string")
    }

    fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(bytes.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(bytes)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOCATED));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(bytes)
    }
}

/// `Vec<u8>` as a byte string.
pub mod bytes {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(ByteBufVisitor)
    }
}

/// One byte string, borrowed for serializing.
struct BytesRef<'a>(&'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// One byte string, owned after deserializing.
struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_byte_buf(ByteBufVisitor)
            .map(ByteBuf)
    }
}

/// `Vec<Vec<u8>>` as a sequence of byte strings.
pub mod byte_lists {
    use super::*;

    pub fn serialize<S: Serializer>(lists: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(lists.len()))?;
        for bytes in lists {
            seq.serialize_element(&BytesRef(bytes))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Vec<u8>>, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = Vec<Vec<u8>>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a sequence of byte strings")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Vec<u8>>, A::Error> {
                let mut lists =
                    Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOCATED));
                while let Some(ByteBuf(bytes)) = seq.next_element()? {
                    lists.push(bytes);
                }
                Ok(lists)
            }
        }

        deserializer.deserialize_seq(ListVisitor)
    }
}

#[cfg(test)]
mod tests {
    use crate::codec;
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        tag: u8,
        bytes: Vec<u8>,
        lists: Vec<Vec<u8>>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Fast {
        tag: u8,
        #[serde(with = "super::bytes")]
        bytes: Vec<u8>,
        #[serde(with = "super::byte_lists")]
        lists: Vec<Vec<u8>>,
    }

    proptest! {
        /// The helpers change the speed, never the frames: each format decodes the other's.
        #[test]
        fn same_encoding_as_plain_vectors(
            tag in any::<u8>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            lists in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
        ) {
            let plain = Plain { tag, bytes: bytes.clone(), lists: lists.clone() };
            let fast = Fast { tag, bytes, lists };
            let frame = codec::encode(&plain).unwrap();
            prop_assert_eq!(&codec::encode(&fast).unwrap(), &frame);
            prop_assert_eq!(codec::decode::<Fast>(&frame).unwrap(), fast);
            prop_assert_eq!(codec::decode::<Plain>(&frame).unwrap(), plain);
        }

        #[test]
        fn truncated_frames_are_errors(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            lists in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..16), 0..4),
        ) {
            let frame = codec::encode(&Fast { tag: 1, bytes, lists }).unwrap();
            for len in 0..frame.len() {
                prop_assert!(codec::decode::<Fast>(&frame[..len]).is_err());
            }
        }
    }

    #[test]
    fn a_huge_length_prefix_does_not_allocate_it() {
        // tag, then a byte string claiming u32::MAX bytes with 3 present: an error, no panic.
        let mut frame = codec::encode(&Fast {
            tag: 0,
            bytes: Vec::new(),
            lists: Vec::new(),
        })
        .unwrap();
        frame.truncate(codec::HEADER_LEN + 1);
        frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3]);
        assert!(codec::decode::<Fast>(&frame).is_err());
    }
}
