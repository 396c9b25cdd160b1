//! Pure wire codecs of the MN layer: records, link messages, chunked application frames and the
//! Noise handshake payload. No IO, no allocation beyond the bounded reassembly buffer; every
//! decoder is total (typed [`FrameError`], never a panic) and checks its size limits before it
//! allocates, so fuzz targets can drive them directly.
//!
//! **Records.** On the TCP stream every Noise message travels as a *record*: a `u32` big-endian
//! length followed by that many bytes. A record is 1..=[`NOISE_MAX_MESSAGE`] bytes (the Noise
//! limit, 65535); during the handshake at most [`MAX_HANDSHAKE_RECORD`].
//!
//! **Link messages** (the plaintext of one transport record; first byte = kind):
//!
//! | kind | message | direction | body |
//! |---|---|---|---|
//! | 1 | `Resume` | acceptor → dialer, first record after the handshake, once | `next_expected: u64` |
//! | 2 | `Ack` | acceptor → dialer | `next_expected: u64` (cumulative) |
//! | 3 | `Ping` | either (keepalive) | empty |
//! | 4 | `Data` chunk | dialer → acceptor | `seq: u64, total_len: u32, offset: u32, bytes` |
//!
//! An application frame (1 ..= `max_frame` bytes, at most [`MAX_FRAME_SIZE`]) larger than one
//! Noise message is split into chunks of at most [`MAX_CHUNK_PAYLOAD`] bytes, sent in order on
//! one connection; the [`Reassembler`] accepts exactly that order and nothing else.
//!
//! **Handshake payload** ([`HandshakePayload`], fixed [`HANDSHAKE_PAYLOAD_LEN`] bytes): version,
//! role, group tag, claimed node id, the id the dialer meant to reach, incarnation, the Ed25519
//! identity key and its signature over the sender's Noise static key and all the fields above.
use bytes::{Bytes, BytesMut};
use maftia_core::NodeId;
use thiserror::Error;

/// Largest Noise message (Noise specification, section 3).
pub const NOISE_MAX_MESSAGE: usize = 65535;
/// ChaCha20-Poly1305 authentication tag appended to every transport message.
pub const NOISE_TAG_LEN: usize = 16;
/// Largest plaintext of one transport record.
pub const MAX_RECORD_PLAINTEXT: usize = NOISE_MAX_MESSAGE - NOISE_TAG_LEN;
/// Bytes of the record length prefix.
pub const RECORD_HEADER_LEN: usize = 4;
/// Largest record accepted during the handshake (the XX messages are under 300 bytes).
pub const MAX_HANDSHAKE_RECORD: usize = 1024;
/// Header of a data chunk: kind, seq, total_len, offset.
pub const DATA_HEADER_LEN: usize = 1 + 8 + 4 + 4;
/// Largest application bytes in one data chunk.
pub const MAX_CHUNK_PAYLOAD: usize = MAX_RECORD_PLAINTEXT - DATA_HEADER_LEN;
/// Hard upper bound on an application frame: the wire codec's message limit.
pub const MAX_FRAME_SIZE: usize = maftia_core::codec::MAX_MESSAGE_SIZE;
/// Version byte of the handshake payload.
pub const HANDSHAKE_VERSION: u8 = 1;
/// Encoded size of a [`HandshakePayload`].
pub const HANDSHAKE_PAYLOAD_LEN: usize = 1 + 1 + 32 + 2 + 1 + 2 + 8 + 32 + 64;
/// Length of the control messages (`Resume`, `Ack`): kind + u64.
pub const CONTROL_LEN: usize = 9;

const KIND_RESUME: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_PING: u8 = 3;
const KIND_DATA: u8 = 4;

/// Why a record, link message, chunk or handshake payload was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("record length {len} outside 1..={max}")]
    RecordLength { len: usize, max: usize },
    #[error("empty link message")]
    Empty,
    #[error("unknown link message kind {0}")]
    UnknownKind(u8),
    #[error("link message of kind {kind} has length {len}, expected {expected}")]
    BadLength {
        kind: u8,
        len: usize,
        expected: usize,
    },
    #[error("data chunk shorter than its header ({0} bytes)")]
    ShortChunk(usize),
    #[error("application frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("data chunk out of order or inconsistent with the frame being reassembled")]
    ChunkOutOfOrder,
    #[error("data chunk overruns its frame (offset {offset} + {len} > {total})")]
    ChunkOverrun { offset: u32, len: usize, total: u32 },
    #[error("empty data chunk of a non-empty frame")]
    EmptyChunk,
    #[error("handshake payload has length {0}, expected {HANDSHAKE_PAYLOAD_LEN}")]
    PayloadLength(usize),
    #[error("handshake payload version {0} is not supported")]
    PayloadVersion(u8),
    #[error("handshake payload field {0} has an invalid value")]
    PayloadField(&'static str),
}

/// Encode the length prefix of a record of `len` bytes (`len` must already be within limits).
pub fn record_header(len: usize) -> [u8; RECORD_HEADER_LEN] {
    // Records are at most NOISE_MAX_MESSAGE bytes, far below u32::MAX.
    (len as u32).to_be_bytes()
}

/// Decode a record length prefix and check `1 <= len <= max`.
pub fn record_len(header: [u8; RECORD_HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 || len > max {
        return Err(FrameError::RecordLength { len, max });
    }
    Ok(len)
}

/// A decoded link message (the plaintext of one transport record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMessage<'a> {
    /// The acceptor's next expected sequence number of the dialer's stream; `0` means "no
    /// state for your incarnation: start with your oldest unacknowledged frame".
    Resume { next_expected: u64 },
    /// Cumulative acknowledgement: every frame below `next_expected` was delivered.
    Ack { next_expected: u64 },
    /// Keepalive.
    Ping,
    /// One chunk of an application frame.
    Data(DataChunk<'a>),
}

/// One chunk of application frame `seq` (`total_len` bytes), covering `offset..offset+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataChunk<'a> {
    pub seq: u64,
    pub total_len: u32,
    pub offset: u32,
    pub bytes: &'a [u8],
}

/// Encode a `Resume` or `Ack` (`resume` selects which).
pub fn encode_control(resume: bool, next_expected: u64) -> [u8; CONTROL_LEN] {
    let mut out = [0u8; CONTROL_LEN];
    out[0] = if resume { KIND_RESUME } else { KIND_ACK };
    out[1..].copy_from_slice(&next_expected.to_be_bytes());
    out
}

/// Encode a `Ping`.
pub fn encode_ping() -> [u8; 1] {
    [KIND_PING]
}

/// Encode the header of a data chunk; the chunk's bytes follow it in the same record.
pub fn encode_data_header(seq: u64, total_len: u32, offset: u32) -> [u8; DATA_HEADER_LEN] {
    let mut out = [0u8; DATA_HEADER_LEN];
    out[0] = KIND_DATA;
    out[1..9].copy_from_slice(&seq.to_be_bytes());
    out[9..13].copy_from_slice(&total_len.to_be_bytes());
    out[13..17].copy_from_slice(&offset.to_be_bytes());
    out
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(b)
}

/// Decode one link message. Checks every length; the data chunk's bytes borrow `plaintext`.
pub fn decode_link_message(plaintext: &[u8]) -> Result<LinkMessage<'_>, FrameError> {
    let Some(&kind) = plaintext.first() else {
        return Err(FrameError::Empty);
    };
    match kind {
        KIND_RESUME | KIND_ACK => {
            if plaintext.len() != CONTROL_LEN {
                return Err(FrameError::BadLength {
                    kind,
                    len: plaintext.len(),
                    expected: CONTROL_LEN,
                });
            }
            let next_expected = u64_at(plaintext, 1);
            Ok(if kind == KIND_RESUME {
                LinkMessage::Resume { next_expected }
            } else {
                LinkMessage::Ack { next_expected }
            })
        }
        KIND_PING => {
            if plaintext.len() != 1 {
                return Err(FrameError::BadLength {
                    kind,
                    len: plaintext.len(),
                    expected: 1,
                });
            }
            Ok(LinkMessage::Ping)
        }
        KIND_DATA => {
            if plaintext.len() < DATA_HEADER_LEN {
                return Err(FrameError::ShortChunk(plaintext.len()));
            }
            Ok(LinkMessage::Data(DataChunk {
                seq: u64_at(plaintext, 1),
                total_len: u32_at(plaintext, 9),
                offset: u32_at(plaintext, 13),
                bytes: &plaintext[DATA_HEADER_LEN..],
            }))
        }
        other => Err(FrameError::UnknownKind(other)),
    }
}

/// The `(offset, len)` of each chunk of a frame of `total_len` bytes, in sending order (one
/// empty chunk for an empty frame). `max_chunk` must be positive.
pub fn chunk_ranges(total_len: usize, max_chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let max_chunk = max_chunk.max(1);
    let count = total_len.div_ceil(max_chunk).max(1);
    (0..count).map(move |i| {
        let offset = i * max_chunk;
        (offset, (total_len - offset).min(max_chunk))
    })
}

/// Reassembles chunked application frames of one connection. Holds at most one partial frame
/// of at most `max_frame` bytes; the buffer grows with the bytes actually received, so a peer
/// announcing a large frame costs only what it sends.
#[derive(Debug)]
pub struct Reassembler {
    max_frame: usize,
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    seq: u64,
    total_len: u32,
    buffer: BytesMut,
}

impl Reassembler {
    /// `max_frame` is clamped to [`MAX_FRAME_SIZE`].
    pub fn new(max_frame: usize) -> Self {
        Reassembler {
            max_frame: max_frame.min(MAX_FRAME_SIZE),
            partial: None,
        }
    }

    /// Bytes currently buffered for a partial frame.
    pub fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.buffer.len())
    }

    /// Add one chunk; returns `(seq, frame)` when it completes a frame. Chunks must arrive in
    /// order (offset 0 first, each continuing where the previous ended, same `seq` and
    /// `total_len`); any other chunk is an error.
    pub fn push(&mut self, chunk: DataChunk<'_>) -> Result<Option<(u64, Bytes)>, FrameError> {
        let total = chunk.total_len as usize;
        if total > self.max_frame {
            return Err(FrameError::FrameTooLarge {
                len: total,
                max: self.max_frame,
            });
        }
        let received = match &self.partial {
            None if chunk.offset == 0 => 0,
            None => return Err(FrameError::ChunkOutOfOrder),
            Some(p) => {
                if p.seq != chunk.seq
                    || p.total_len != chunk.total_len
                    || p.buffer.len() != chunk.offset as usize
                {
                    return Err(FrameError::ChunkOutOfOrder);
                }
                p.buffer.len()
            }
        };
        if received + chunk.bytes.len() > total {
            return Err(FrameError::ChunkOverrun {
                offset: chunk.offset,
                len: chunk.bytes.len(),
                total: chunk.total_len,
            });
        }
        if chunk.bytes.is_empty() && total != 0 {
            return Err(FrameError::EmptyChunk);
        }
        if received == 0 && chunk.bytes.len() == total {
            // Single-chunk frame: no reassembly buffer.
            return Ok(Some((chunk.seq, Bytes::copy_from_slice(chunk.bytes))));
        }
        let partial = self.partial.get_or_insert_with(|| Partial {
            seq: chunk.seq,
            total_len: chunk.total_len,
            buffer: BytesMut::with_capacity(chunk.bytes.len()),
        });
        partial.buffer.extend_from_slice(chunk.bytes);
        if partial.buffer.len() == total {
            let done = self.partial.take().map(|p| (p.seq, p.buffer.freeze()));
            return Ok(done);
        }
        Ok(None)
    }
}

/// Which side of a connection sent a handshake payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The Noise initiator: the node whose outgoing stream the connection carries.
    Dialer,
    /// The Noise responder: the node receiving that stream and sending acknowledgements.
    Acceptor,
}

/// What each side proves about itself during the handshake (sent encrypted inside the Noise
/// XX messages 2 and 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakePayload {
    pub role: Role,
    /// Identifies the group (derived from its public key file): nodes of different groups
    /// never talk.
    pub group_tag: [u8; 32],
    /// The node id the sender claims.
    pub node_id: NodeId,
    /// The dialer: the node it meant to reach; the acceptor: `None`.
    pub target: Option<NodeId>,
    /// The sender's incarnation (chosen at process start).
    pub incarnation: u64,
    /// The sender's Ed25519 identity public key (raw bytes, compared with the group registry).
    pub identity: [u8; 32],
    /// Ed25519 identity signature over [`HandshakePayload::signed_message`].
    pub signature: [u8; 64],
}

impl HandshakePayload {
    /// The bytes the identity key signs: the sender's Noise static public key followed by the
    /// payload without its signature. Binding the static key is what ties the encrypted channel
    /// to the identity (as libp2p-noise does).
    pub fn signed_message(&self, noise_static: &[u8]) -> Vec<u8> {
        let encoded = self.encode();
        let mut out = Vec::with_capacity(noise_static.len() + HANDSHAKE_PAYLOAD_LEN - 64);
        out.extend_from_slice(noise_static);
        out.extend_from_slice(&encoded[..HANDSHAKE_PAYLOAD_LEN - 64]);
        out
    }

    pub fn encode(&self) -> [u8; HANDSHAKE_PAYLOAD_LEN] {
        let mut out = [0u8; HANDSHAKE_PAYLOAD_LEN];
        out[0] = HANDSHAKE_VERSION;
        out[1] = match self.role {
            Role::Dialer => 0,
            Role::Acceptor => 1,
        };
        out[2..34].copy_from_slice(&self.group_tag);
        out[34..36].copy_from_slice(&self.node_id.0.to_be_bytes());
        if let Some(target) = self.target {
            out[36] = 1;
            out[37..39].copy_from_slice(&target.0.to_be_bytes());
        }
        out[39..47].copy_from_slice(&self.incarnation.to_be_bytes());
        out[47..79].copy_from_slice(&self.identity);
        out[79..143].copy_from_slice(&self.signature);
        out
    }

    /// Decode (the exact length, a known version, canonical flag bytes); the signature and the
    /// fields' meaning are checked by the handshake, not here.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        if bytes.len() != HANDSHAKE_PAYLOAD_LEN {
            return Err(FrameError::PayloadLength(bytes.len()));
        }
        if bytes[0] != HANDSHAKE_VERSION {
            return Err(FrameError::PayloadVersion(bytes[0]));
        }
        let role = match bytes[1] {
            0 => Role::Dialer,
            1 => Role::Acceptor,
            _ => return Err(FrameError::PayloadField("role")),
        };
        let id_at = |at: usize| NodeId(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        let target = match bytes[36] {
            0 if bytes[37..39] == [0, 0] => None,
            1 => Some(id_at(37)),
            _ => return Err(FrameError::PayloadField("target")),
        };
        let mut group_tag = [0u8; 32];
        group_tag.copy_from_slice(&bytes[2..34]);
        let mut identity = [0u8; 32];
        identity.copy_from_slice(&bytes[47..79]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[79..143]);
        Ok(HandshakePayload {
            role,
            group_tag,
            node_id: id_at(34),
            target,
            incarnation: u64_at(bytes, 39),
            identity,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunks_of(seq: u64, frame: &[u8], max_chunk: usize) -> Vec<Vec<u8>> {
        chunk_ranges(frame.len(), max_chunk)
            .map(|(offset, len)| {
                let mut record =
                    encode_data_header(seq, frame.len() as u32, offset as u32).to_vec();
                record.extend_from_slice(&frame[offset..offset + len]);
                record
            })
            .collect()
    }

    fn reassemble(
        reassembler: &mut Reassembler,
        records: &[Vec<u8>],
    ) -> Result<Vec<(u64, Bytes)>, FrameError> {
        let mut out = Vec::new();
        for record in records {
            match decode_link_message(record)? {
                LinkMessage::Data(chunk) => {
                    if let Some(done) = reassembler.push(chunk)? {
                        out.push(done);
                    }
                }
                other => panic!("not data: {other:?}"),
            }
        }
        Ok(out)
    }

    fn payload_strategy() -> impl Strategy<Value = HandshakePayload> {
        (
            any::<bool>(),
            any::<[u8; 32]>(),
            any::<u16>(),
            proptest::option::of(any::<u16>()),
            any::<u64>(),
            any::<[u8; 32]>(),
            proptest::collection::vec(any::<u8>(), 64),
        )
            .prop_map(|(dialer, tag, id, target, inc, key, sig)| {
                let mut signature = [0u8; 64];
                signature.copy_from_slice(&sig);
                HandshakePayload {
                    role: if dialer { Role::Dialer } else { Role::Acceptor },
                    group_tag: tag,
                    node_id: NodeId(id),
                    target: target.map(NodeId),
                    incarnation: inc,
                    identity: key,
                    signature,
                }
            })
    }

    proptest! {
        #[test]
        fn chunked_frames_roundtrip(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 1..6),
            max_chunk in 1usize..300,
            first_seq in 1u64..1000,
        ) {
            let mut reassembler = Reassembler::new(1000);
            let mut records = Vec::new();
            for (i, frame) in frames.iter().enumerate() {
                records.extend(chunks_of(first_seq + i as u64, frame, max_chunk));
            }
            let out = reassemble(&mut reassembler, &records).unwrap();
            prop_assert_eq!(out.len(), frames.len());
            for (i, (seq, bytes)) in out.iter().enumerate() {
                prop_assert_eq!(*seq, first_seq + i as u64);
                prop_assert_eq!(&bytes[..], &frames[i][..]);
            }
            prop_assert_eq!(reassembler.buffered(), 0);
        }

        #[test]
        fn control_messages_roundtrip(next in any::<u64>(), resume in any::<bool>()) {
            let encoded = encode_control(resume, next);
            let expected = if resume {
                LinkMessage::Resume { next_expected: next }
            } else {
                LinkMessage::Ack { next_expected: next }
            };
            prop_assert_eq!(decode_link_message(&encoded), Ok(expected));
            // Every truncation and every extension is rejected.
            for cut in 0..encoded.len() {
                prop_assert!(decode_link_message(&encoded[..cut]).is_err());
            }
            let mut longer = encoded.to_vec();
            longer.push(0);
            prop_assert!(decode_link_message(&longer).is_err());
        }

        #[test]
        fn handshake_payload_roundtrip_and_truncations(payload in payload_strategy()) {
            let encoded = payload.encode();
            prop_assert_eq!(HandshakePayload::decode(&encoded), Ok(payload));
            for cut in 0..encoded.len() {
                prop_assert_eq!(
                    HandshakePayload::decode(&encoded[..cut]),
                    Err(FrameError::PayloadLength(cut))
                );
            }
            let mut longer = encoded.to_vec();
            longer.push(0);
            prop_assert!(HandshakePayload::decode(&longer).is_err());
            // The signed message covers everything but the signature.
            let signed = payload.signed_message(&[7u8; 32]);
            prop_assert_eq!(&signed[..32], &[7u8; 32][..]);
            prop_assert_eq!(&signed[32..], &encoded[..HANDSHAKE_PAYLOAD_LEN - 64]);
        }

        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = HandshakePayload::decode(&bytes);
            if let Ok(LinkMessage::Data(chunk)) = decode_link_message(&bytes) {
                let mut reassembler = Reassembler::new(100);
                match reassembler.push(chunk) {
                    Ok(Some((_, frame))) => prop_assert!(frame.len() <= 100),
                    Ok(None) => prop_assert!(reassembler.buffered() <= 100),
                    Err(_) => {}
                }
            }
        }

        #[test]
        fn record_len_accepts_exactly_1_to_max(len in any::<u32>(), max in 1usize..100_000) {
            let result = record_len(len.to_be_bytes(), max);
            let len = len as usize;
            prop_assert_eq!(result.is_ok(), len >= 1 && len <= max);
            if let Ok(decoded) = result {
                prop_assert_eq!(record_header(decoded), (len as u32).to_be_bytes());
            }
        }
    }

    #[test]
    fn every_truncated_data_chunk_header_is_rejected() {
        let record = chunks_of(5, b"hello", 100).remove(0);
        for cut in 0..DATA_HEADER_LEN {
            assert!(decode_link_message(&record[..cut]).is_err(), "cut {cut}");
        }
        // A chunk truncated inside its bytes decodes, but no longer completes its frame.
        let mut reassembler = Reassembler::new(100);
        let short = &record[..record.len() - 1];
        match decode_link_message(short).unwrap() {
            LinkMessage::Data(chunk) => assert_eq!(reassembler.push(chunk), Ok(None)),
            other => panic!("{other:?}"),
        }
        assert_eq!(reassembler.buffered(), 4);
    }

    #[test]
    fn oversized_frames_are_rejected() {
        let mut reassembler = Reassembler::new(10);
        let records = chunks_of(1, &[1u8; 11], 4);
        assert_eq!(
            reassemble(&mut reassembler, &records),
            Err(FrameError::FrameTooLarge { len: 11, max: 10 })
        );
        // Exactly the limit is fine.
        let mut reassembler = Reassembler::new(10);
        let records = chunks_of(1, &[1u8; 10], 4);
        assert_eq!(reassemble(&mut reassembler, &records).unwrap().len(), 1);
        // The limit never exceeds MAX_FRAME_SIZE.
        let mut reassembler = Reassembler::new(usize::MAX);
        let header = encode_data_header(1, (MAX_FRAME_SIZE + 1) as u32, 0);
        let mut record = header.to_vec();
        record.push(0);
        match decode_link_message(&record).unwrap() {
            LinkMessage::Data(chunk) => assert!(matches!(
                reassembler.push(chunk),
                Err(FrameError::FrameTooLarge { .. })
            )),
            other => panic!("{other:?}"),
        }
        // Records above the limit are rejected from their length prefix alone.
        assert!(record_len(
            ((NOISE_MAX_MESSAGE + 1) as u32).to_be_bytes(),
            NOISE_MAX_MESSAGE
        )
        .is_err());
        assert!(record_len([0; 4], NOISE_MAX_MESSAGE).is_err());
    }

    #[test]
    fn out_of_order_inconsistent_and_overrunning_chunks_are_rejected() {
        let frame = [9u8; 10];
        let records = chunks_of(3, &frame, 4); // offsets 0, 4, 8
        let push = |r: &mut Reassembler, record: &[u8]| match decode_link_message(record).unwrap() {
            LinkMessage::Data(chunk) => r.push(chunk),
            other => panic!("{other:?}"),
        };
        // Starting mid-frame.
        assert_eq!(
            push(&mut Reassembler::new(100), &records[1]),
            Err(FrameError::ChunkOutOfOrder)
        );
        // Skipping a chunk.
        let mut r = Reassembler::new(100);
        push(&mut r, &records[0]).unwrap();
        assert_eq!(push(&mut r, &records[2]), Err(FrameError::ChunkOutOfOrder));
        // Another frame's chunk in the middle.
        let mut r = Reassembler::new(100);
        push(&mut r, &records[0]).unwrap();
        let other = chunks_of(4, &frame, 4);
        assert_eq!(push(&mut r, &other[1]), Err(FrameError::ChunkOutOfOrder));
        // A chunk claiming more bytes than the frame has.
        let mut overrun = encode_data_header(3, 3, 0).to_vec();
        overrun.extend_from_slice(&[1, 2, 3, 4]);
        assert!(matches!(
            push(&mut Reassembler::new(100), &overrun),
            Err(FrameError::ChunkOverrun { .. })
        ));
        // An empty chunk of a non-empty frame.
        let empty = encode_data_header(3, 3, 0).to_vec();
        assert_eq!(
            push(&mut Reassembler::new(100), &empty),
            Err(FrameError::EmptyChunk)
        );
        // The empty frame is one empty chunk.
        assert_eq!(
            push(&mut Reassembler::new(100), &encode_data_header(8, 0, 0)),
            Ok(Some((8, Bytes::new())))
        );
    }

    #[test]
    fn unknown_kinds_and_bad_payload_flags_are_rejected() {
        assert_eq!(decode_link_message(&[]), Err(FrameError::Empty));
        assert_eq!(decode_link_message(&[0]), Err(FrameError::UnknownKind(0)));
        assert_eq!(
            decode_link_message(&[5, 1]),
            Err(FrameError::UnknownKind(5))
        );
        assert_eq!(decode_link_message(&encode_ping()), Ok(LinkMessage::Ping));
        assert!(decode_link_message(&[KIND_PING, 0]).is_err());
        let payload = HandshakePayload {
            role: Role::Dialer,
            group_tag: [1; 32],
            node_id: NodeId(2),
            target: None,
            incarnation: 3,
            identity: [4; 32],
            signature: [5; 64],
        };
        let good = payload.encode();
        let mut bad = good;
        bad[0] = 2;
        assert_eq!(
            HandshakePayload::decode(&bad),
            Err(FrameError::PayloadVersion(2))
        );
        let mut bad = good;
        bad[1] = 2;
        assert_eq!(
            HandshakePayload::decode(&bad),
            Err(FrameError::PayloadField("role"))
        );
        let mut bad = good;
        bad[36] = 2;
        assert_eq!(
            HandshakePayload::decode(&bad),
            Err(FrameError::PayloadField("target"))
        );
        // "No target" must not carry a target id (one encoding per payload).
        let mut bad = good;
        bad[38] = 1;
        assert_eq!(
            HandshakePayload::decode(&bad),
            Err(FrameError::PayloadField("target"))
        );
    }
}
