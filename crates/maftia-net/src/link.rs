//! The reliable-link state of one direction of one peer pair, without IO: the sender's numbered
//! retransmit queue ([`Outgoing`]) and the receiver's position in the peer's stream
//! ([`IncomingLink`]). The network tasks drive them under a mutex; [`LinkState`] snapshots both
//! for a restart that resumes the links.
//!
//! **Sender.** Frames are numbered 1, 2, … per (peer, our incarnation). Every frame stays in
//! the queue until the receiver's cumulative acknowledgement passes it; the queue is bounded in
//! frames and bytes (that bound *is* the per-peer memory bound). After a reconnect the sender
//! resumes at the receiver's next expected number, so exactly the unacknowledged suffix is
//! resent.
//!
//! **Receiver.** Keeps the peer's incarnation and the next expected number; a frame below it is
//! a duplicate (dropped), the next one is delivered, one above it is a gap (the sender violated
//! the protocol: frames are sent in order on one connection). A new peer incarnation resets the
//! position; with no position, the first frame received sets it.
use bytes::Bytes;
use maftia_core::NodeId;
use std::collections::{BTreeMap, VecDeque};
use thiserror::Error;

/// A peer acknowledged or asked to resume at a position that contradicts our queue.
/// No honest stream gets near this many frames (2^62); a larger resume position is refused, so
/// renumbering cannot overflow.
pub const MAX_PLAUSIBLE_SEQ: u64 = 1 << 62;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LinkError {
    #[error("resume position {0} is implausibly large")]
    ImplausibleResume(u64),
    #[error("acknowledgement up to {acked} but only frames below {next_seq} were ever queued")]
    AckBeyondSent { acked: u64, next_seq: u64 },
    #[error(
        "receiver expects frame {expected}, already dropped (oldest kept: {oldest}); \
         was it restarted from an older link state?"
    )]
    ResumeBehind { expected: u64, oldest: u64 },
}

/// The per-peer queue of numbered frames not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Number of the next frame queued.
    next_seq: u64,
    /// Number of `unacked[0]` (equals `next_seq` when the queue is empty).
    front_seq: u64,
    unacked: VecDeque<Bytes>,
    bytes: usize,
    /// Highest number ever written to a connection (frames at or below it are retransmits).
    highest_sent: u64,
}

impl Default for Outgoing {
    fn default() -> Self {
        Outgoing {
            next_seq: 1,
            front_seq: 1,
            unacked: VecDeque::new(),
            bytes: 0,
            highest_sent: 0,
        }
    }
}

impl Outgoing {
    /// Queue `payload` as the next frame unless that would exceed `max_frames` or `max_bytes`;
    /// returns its number.
    pub fn push(&mut self, payload: Bytes, max_frames: usize, max_bytes: usize) -> Option<u64> {
        if self.unacked.len() >= max_frames || self.bytes.saturating_add(payload.len()) > max_bytes
        {
            return None;
        }
        let seq = self.next_seq;
        self.bytes += payload.len();
        self.unacked.push_back(payload);
        self.next_seq += 1;
        Some(seq)
    }

    /// The receiver delivered every frame below `next_expected`: drop them. Returns how many
    /// frames were released.
    pub fn ack(&mut self, next_expected: u64) -> Result<usize, LinkError> {
        if next_expected > self.next_seq {
            return Err(LinkError::AckBeyondSent {
                acked: next_expected,
                next_seq: self.next_seq,
            });
        }
        let mut released = 0;
        while self.front_seq < next_expected {
            if let Some(frame) = self.unacked.pop_front() {
                self.bytes -= frame.len();
            }
            self.front_seq += 1;
            released += 1;
        }
        Ok(released)
    }

    /// Where to start sending on a new connection, given the receiver's `Resume` value
    /// (`0`: the receiver has no position for our incarnation; start at our oldest frame).
    ///
    /// A receiver *ahead* of everything we ever queued knows our incarnation from an earlier
    /// process (restarted with the same incarnation but without its [`LinkState`]); none of
    /// our frames can have reached it yet (it would have dropped them as duplicates, and this
    /// is the first resume where that can show), so our queue is renumbered to start at its
    /// position: [`Resume::Renumbered`]. Frames the earlier process had in flight are lost.
    pub fn resume(&mut self, receiver_next: u64) -> Result<Resume, LinkError> {
        if receiver_next == 0 {
            return Ok(Resume::At(self.front_seq));
        }
        if receiver_next > self.next_seq {
            if receiver_next > MAX_PLAUSIBLE_SEQ {
                return Err(LinkError::ImplausibleResume(receiver_next));
            }
            let queued = self.next_seq - self.front_seq;
            self.front_seq = receiver_next;
            self.next_seq = receiver_next + queued;
            self.highest_sent = 0;
            return Ok(Resume::Renumbered(receiver_next));
        }
        if receiver_next < self.front_seq {
            return Err(LinkError::ResumeBehind {
                expected: receiver_next,
                oldest: self.front_seq,
            });
        }
        self.ack(receiver_next)?;
        Ok(Resume::At(receiver_next))
    }

    /// The frame at `*cursor` (moved up to the oldest kept frame if it fell behind), and
    /// whether it was sent before; `None` when everything queued was handed out.
    pub fn next_to_send(&mut self, cursor: &mut u64) -> Option<(u64, Bytes, bool)> {
        *cursor = (*cursor).max(self.front_seq);
        let index = usize::try_from(*cursor - self.front_seq).ok()?;
        let frame = self.unacked.get(index)?.clone();
        let seq = *cursor;
        let retransmit = seq <= self.highest_sent;
        self.highest_sent = self.highest_sent.max(seq);
        Some((seq, frame, retransmit))
    }

    /// Frames queued and not yet acknowledged.
    pub fn frames(&self) -> usize {
        self.unacked.len()
    }

    /// Bytes of the frames queued and not yet acknowledged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number the next queued frame will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// Where a new connection starts sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// At this frame number.
    At(u64),
    /// At this frame number, after renumbering the queue (see [`Outgoing::resume`]).
    Renumbered(u64),
}

impl Resume {
    pub fn seq(self) -> u64 {
        match self {
            Resume::At(seq) | Resume::Renumbered(seq) => seq,
        }
    }
}

/// How a complete frame relates to the receiver's position in the peer's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next frame: deliver it.
    Next,
    /// Already delivered: drop it.
    Duplicate,
    /// Beyond the next one (or number 0): the sender broke the protocol.
    Gap,
}

/// The receiver's position in one peer's stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IncomingLink {
    peer_incarnation: Option<u64>,
    /// Next expected number; 0 = no position yet.
    next_expected: u64,
}

impl IncomingLink {
    /// A connection from the peer's `incarnation` was authenticated: returns the `Resume` value
    /// (our next expected number, or 0 if a new incarnation reset the stream).
    pub fn on_handshake(&mut self, incarnation: u64) -> u64 {
        if self.peer_incarnation != Some(incarnation) {
            self.peer_incarnation = Some(incarnation);
            self.next_expected = 0;
        }
        self.next_expected
    }

    pub fn classify(&self, seq: u64) -> Arrival {
        if seq == 0 {
            Arrival::Gap
        } else if self.next_expected == 0 || seq == self.next_expected {
            Arrival::Next
        } else if seq < self.next_expected {
            Arrival::Duplicate
        } else {
            Arrival::Gap
        }
    }

    /// Frame `seq` (classified [`Arrival::Next`]) was delivered.
    pub fn delivered(&mut self, seq: u64) {
        self.next_expected = seq.saturating_add(1);
    }

    pub fn next_expected(&self) -> u64 {
        self.next_expected
    }

    pub fn peer_incarnation(&self) -> Option<u64> {
        self.peer_incarnation
    }
}

/// Everything a restarted [`crate::Network`] needs to resume its links where they stopped:
/// returned by [`crate::Network::shutdown`], passed back in [`crate::NetConfig::resume`] with
/// the same node id and incarnation. Frames still unacknowledged are resent; frames the
/// receivers already delivered are not delivered again.
#[derive(Debug, Clone)]
pub struct LinkState {
    pub(crate) our_id: NodeId,
    pub(crate) incarnation: u64,
    pub(crate) outgoing: BTreeMap<NodeId, Outgoing>,
    pub(crate) incoming: BTreeMap<NodeId, IncomingLink>,
}

impl LinkState {
    pub fn our_id(&self) -> NodeId {
        self.our_id
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Frames queued for `peer` and not yet acknowledged.
    pub fn unacked_frames(&self, peer: NodeId) -> usize {
        self.outgoing.get(&peer).map_or(0, Outgoing::frames)
    }

    /// Our next expected frame number from `peer` (0: no position).
    pub fn next_expected_from(&self, peer: NodeId) -> u64 {
        self.incoming
            .get(&peer)
            .map_or(0, IncomingLink::next_expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(i: u8) -> Bytes {
        Bytes::from(vec![i; usize::from(i)])
    }

    #[test]
    fn queue_is_bounded_in_frames_and_bytes() {
        let mut out = Outgoing::default();
        assert_eq!(out.push(frame(4), 3, 10), Some(1));
        assert_eq!(out.push(frame(5), 3, 10), Some(2));
        // 4 + 5 + 2 > 10 bytes.
        assert_eq!(out.push(frame(2), 3, 10), None);
        assert_eq!(out.push(frame(1), 3, 10), Some(3));
        // Three frames: full.
        assert_eq!(out.push(frame(0), 3, 10), None);
        assert_eq!((out.frames(), out.bytes()), (3, 10));
        // Acknowledging frees room.
        assert_eq!(out.ack(2), Ok(1));
        assert_eq!((out.frames(), out.bytes()), (2, 6));
        assert_eq!(out.push(frame(0), 3, 10), Some(4));
        assert_eq!(
            out.ack(6),
            Err(LinkError::AckBeyondSent {
                acked: 6,
                next_seq: 5
            })
        );
        // Acks are cumulative and idempotent.
        assert_eq!(out.ack(1), Ok(0));
        assert_eq!(out.ack(5), Ok(3));
        assert_eq!((out.frames(), out.bytes()), (0, 0));
    }

    #[test]
    fn resume_resends_exactly_the_unacknowledged_suffix() {
        let mut out = Outgoing::default();
        for i in 1..=5 {
            out.push(frame(i), 100, 1000);
        }
        let mut cursor = out.resume(0).unwrap().seq();
        let mut sent = Vec::new();
        while let Some((seq, bytes, retransmit)) = out.next_to_send(&mut cursor) {
            assert!(!retransmit);
            assert_eq!(bytes, frame(seq as u8));
            sent.push(seq);
            cursor += 1;
        }
        assert_eq!(sent, vec![1, 2, 3, 4, 5]);
        out.ack(2).unwrap();
        // Reconnect: the receiver got 1..=3.
        let mut cursor = out.resume(4).unwrap().seq();
        assert_eq!(cursor, 4);
        assert_eq!(out.frames(), 2);
        let (seq, _, retransmit) = out.next_to_send(&mut cursor).unwrap();
        assert_eq!((seq, retransmit), (4, true));
        // A receiver without a position restarts at our oldest frame.
        assert_eq!(out.resume(0), Ok(Resume::At(4)));
        // A receiver behind what it acknowledged is refused.
        assert_eq!(
            out.resume(2),
            Err(LinkError::ResumeBehind {
                expected: 2,
                oldest: 4
            })
        );
        // A cursor behind the oldest kept frame moves up.
        let mut cursor = 1;
        assert_eq!(out.next_to_send(&mut cursor).unwrap().0, 4);
        cursor = 6;
        assert!(out.next_to_send(&mut cursor).is_none());
        // Exactly at our next number: nothing to resend.
        assert_eq!(out.clone().resume(6), Ok(Resume::At(6)));
        // A receiver ahead of us (we restarted with a reused incarnation): the queue (frames 4
        // and 5) is renumbered to 9 and 10, and new frames continue from 11.
        assert_eq!(
            out.clone().resume(u64::MAX),
            Err(LinkError::ImplausibleResume(u64::MAX))
        );
        assert_eq!(out.resume(9), Ok(Resume::Renumbered(9)));
        let mut cursor = 9;
        let (seq, bytes, retransmit) = out.next_to_send(&mut cursor).unwrap();
        assert_eq!((seq, bytes, retransmit), (9, frame(4), false));
        assert_eq!(out.push(frame(6), 100, 1000), Some(11));
        assert_eq!(out.ack(11), Ok(2));
        assert_eq!(out.frames(), 1);
    }

    #[test]
    fn receiver_delivers_in_order_drops_duplicates_and_resets_on_new_incarnation() {
        let mut link = IncomingLink::default();
        assert_eq!(link.on_handshake(7), 0);
        // No position: the first frame sets it.
        assert_eq!(link.classify(4), Arrival::Next);
        link.delivered(4);
        assert_eq!(link.classify(4), Arrival::Duplicate);
        assert_eq!(link.classify(6), Arrival::Gap);
        assert_eq!(link.classify(0), Arrival::Gap);
        assert_eq!(link.classify(5), Arrival::Next);
        link.delivered(5);
        // Same incarnation reconnects: resume at 6.
        assert_eq!(link.on_handshake(7), 6);
        // New incarnation: reset.
        assert_eq!(link.on_handshake(8), 0);
        assert_eq!(link.classify(1), Arrival::Next);
        assert_eq!(link.peer_incarnation(), Some(8));
    }
}
