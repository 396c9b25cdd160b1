//! Fuzz the MN layer's wire codecs and reliable-link bookkeeping (`maftia_net::frame`,
//! `maftia_net::link`) the way an acceptor's connection reader drives them: arbitrary bytes as
//! record length prefixes and as decrypted link messages, data chunks into the [`Reassembler`],
//! completed frames classified by the [`IncomingLink`], and `Resume`/`Ack` values applied to a
//! dialer's [`Outgoing`] queue. Nothing may panic, and:
//!
//! - every decoded message re-encodes to the bytes it came from (the codecs are canonical);
//! - the reassembler never buffers more than its frame limit, and a completed frame has its
//!   announced length and is exactly the bytes of the chunks that made it;
//! - a completed frame re-chunked with `chunk_ranges` reassembles to itself;
//! - the receiver position only moves forward, and only by delivering the next frame;
//! - the send queue never exceeds its frame and byte limits, and hands out exactly its queued
//!   frames, in increasing order.
//!
//! Input: `[limit selector] ([len: u16 LE] [link message: len bytes])*`. Any message the real
//! reader would reject ends the "connection": the reassembler starts afresh, the receiver
//! position survives (as it does across reconnections).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use maftia_net::frame::{
    chunk_ranges, decode_link_message, encode_control, encode_data_header, encode_ping, record_len,
    DataChunk, LinkMessage, Reassembler, DATA_HEADER_LEN, MAX_FRAME_SIZE, MAX_HANDSHAKE_RECORD,
    NOISE_MAX_MESSAGE, RECORD_HEADER_LEN,
};
use maftia_net::link::{Arrival, IncomingLink, Outgoing};

/// Frame limits the reader may run with (a `NetLimits::max_frame_size`).
const FRAME_LIMITS: [usize; 6] = [0, 1, 17, 1000, 70_000, MAX_FRAME_SIZE];
const QUEUE_FRAMES: usize = 8;
const QUEUE_BYTES: usize = 4096;

fn check_reassembles(frame: &Bytes, seq: u64, max_frame: usize, max_chunk: usize) {
    let mut again = Reassembler::new(max_frame);
    let mut result = None;
    let ranges: Vec<(usize, usize)> = chunk_ranges(frame.len(), max_chunk).collect();
    let mut expected_offset = 0;
    for (i, (offset, len)) in ranges.iter().copied().enumerate() {
        assert_eq!(offset, expected_offset, "chunk ranges must be contiguous");
        assert!(len <= max_chunk.max(1));
        expected_offset += len;
        let chunk = DataChunk {
            seq,
            total_len: frame.len() as u32,
            offset: offset as u32,
            bytes: &frame[offset..offset + len],
        };
        let out = again
            .push(chunk)
            .expect("an honest chunk sequence is accepted");
        assert_eq!(out.is_some(), i + 1 == ranges.len());
        result = result.or(out);
    }
    assert_eq!(expected_offset, frame.len());
    assert_eq!(result, Some((seq, frame.clone())));
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let max_frame = FRAME_LIMITS[usize::from(selector) % FRAME_LIMITS.len()];
    let max_chunk = usize::from(selector >> 3) + 1;
    let mut reassembler = Reassembler::new(max_frame);
    // The bytes of the chunks of the frame being reassembled (the model).
    let mut partial: Vec<u8> = Vec::new();
    let mut incoming = IncomingLink::default();
    incoming.on_handshake(7);
    let mut outgoing = Outgoing::default();
    let mut pushed: u64 = 0;

    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let take = len.min(rest.len() - 2);
        let message = &rest[2..2 + take];
        rest = &rest[2 + take..];

        // Record length prefixes.
        if let Some(header) = message.get(..RECORD_HEADER_LEN) {
            let header: [u8; RECORD_HEADER_LEN] = header.try_into().unwrap();
            let announced = u32::from_be_bytes(header) as usize;
            for max in [MAX_HANDSHAKE_RECORD, NOISE_MAX_MESSAGE] {
                match record_len(header, max) {
                    Ok(l) => assert!(l == announced && (1..=max).contains(&l)),
                    Err(_) => assert!(announced == 0 || announced > max),
                }
            }
        }

        let decoded = decode_link_message(message);
        let ok = match decoded {
            Ok(LinkMessage::Ping) => {
                assert_eq!(message, encode_ping());
                true
            }
            Ok(LinkMessage::Resume { next_expected }) => {
                assert_eq!(message, encode_control(true, next_expected));
                let before = outgoing.frames();
                match outgoing.resume(next_expected) {
                    Ok(at) if next_expected != 0 => assert_eq!(at.seq(), next_expected),
                    Ok(_) => assert_eq!(outgoing.frames(), before),
                    Err(_) => assert_eq!(outgoing.frames(), before),
                }
                true
            }
            Ok(LinkMessage::Ack { next_expected }) => {
                assert_eq!(message, encode_control(false, next_expected));
                let before = outgoing.frames();
                match outgoing.ack(next_expected) {
                    Ok(released) => assert_eq!(released, before - outgoing.frames()),
                    Err(_) => assert_eq!(outgoing.frames(), before),
                }
                true
            }
            Ok(LinkMessage::Data(chunk)) => {
                let header = encode_data_header(chunk.seq, chunk.total_len, chunk.offset);
                assert_eq!(&message[..DATA_HEADER_LEN], header);
                assert_eq!(chunk.bytes, &message[DATA_HEADER_LEN..]);
                match reassembler.push(chunk) {
                    Ok(None) => {
                        partial.extend_from_slice(chunk.bytes);
                        assert_eq!(reassembler.buffered(), partial.len());
                        true
                    }
                    Ok(Some((seq, frame))) => {
                        partial.extend_from_slice(chunk.bytes);
                        assert_eq!(seq, chunk.seq);
                        assert_eq!(frame.len(), chunk.total_len as usize);
                        assert_eq!(frame.as_ref(), partial.as_slice());
                        assert!(frame.len() <= max_frame.min(MAX_FRAME_SIZE));
                        assert_eq!(reassembler.buffered(), 0);
                        partial.clear();
                        check_reassembles(&frame, seq, max_frame, max_chunk);
                        let before = incoming.next_expected();
                        match incoming.classify(seq) {
                            Arrival::Next => {
                                incoming.delivered(seq);
                                assert_eq!(incoming.next_expected(), seq.saturating_add(1));
                                assert!(before == 0 || incoming.next_expected() == before + 1);
                            }
                            Arrival::Duplicate => assert!(seq < before),
                            Arrival::Gap => assert!(seq == 0 || seq > before),
                        }
                        // The dialer side queues what it would send next.
                        if outgoing.push(frame, QUEUE_FRAMES, QUEUE_BYTES).is_some() {
                            pushed += 1;
                        }
                        true
                    }
                    Err(_) => false,
                }
            }
            Err(_) => false,
        };
        assert!(reassembler.buffered() <= max_frame.min(MAX_FRAME_SIZE));
        assert!(outgoing.frames() <= QUEUE_FRAMES && outgoing.bytes() <= QUEUE_BYTES);
        assert!(outgoing.frames() as u64 <= pushed);
        if !ok {
            // The reader closes the connection; the dialer reconnects with a new one.
            reassembler = Reassembler::new(max_frame);
            partial.clear();
            assert_eq!(incoming.on_handshake(7), incoming.next_expected());
        }
    }

    // The queue hands out exactly its frames, in increasing order.
    let mut cursor = 0;
    let mut handed = Vec::new();
    while let Some((seq, payload, _)) = outgoing.next_to_send(&mut cursor) {
        assert!(handed.last().is_none_or(|(last, _)| seq > *last));
        handed.push((seq, payload.len()));
        cursor = seq + 1;
    }
    assert_eq!(handed.len(), outgoing.frames());
    assert_eq!(
        handed.iter().map(|(_, l)| l).sum::<usize>(),
        outgoing.bytes()
    );
});
