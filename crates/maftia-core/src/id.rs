//! Replica identities.
use serde::{Deserialize, Serialize};
use std::fmt;

/// The identity of a replica in the group: its index in `0..n`.
///
/// The index is also the replica's share index in every threshold key set (the dealer evaluates
/// the sharing polynomial at `index + 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u16);

impl NodeId {
    /// The replica's index in `0..n`, for indexing per-node arrays and key shares.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// All ids of a group of `n` replicas, in order.
    pub fn all(n: usize) -> impl Iterator<Item = NodeId> + Clone {
        // GroupConfig caps n at u16::MAX, so the conversion cannot truncate for a valid group.
        (0..n).map(|i| NodeId(i as u16))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node{}", self.0)
    }
}
